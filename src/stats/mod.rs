//! Counters: per-worker client statistics and per-backend statistics, summed on demand.
//!
//! Client-side counters belong to one worker thread each. Backend counters are shared by the
//! workers that use the backend (relaxed atomics; with several workers they share cache
//! lines).
//!
//! - [`reply`]: memroute's answers to `stats`, `stats backends`, `stats settings` and
//!   `stats conns`, in memcached's format.
//! - [`merge`]: the backend-facing subcommands' answers combined over a pool.
//! - [`conns`]: the registry of client connections `stats conns` lists.

pub mod conns;
pub mod merge;
mod reply;

pub use reply::stats_reply;

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter (or, with `dec`, a gauge).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero (usable in statics).
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts one (gauges).
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Configuration reloads that took effect.
pub static RELOADS_OK: Counter = Counter::new();
/// Configuration reloads rejected (the running configuration stayed).
pub static RELOADS_FAILED: Counter = Counter::new();

/// Copies the reload counters into the `metrics` registry.
pub fn export_reload_metrics() {
    metrics::counter!("memroute_reloads_total", "result" => "ok").absolute(RELOADS_OK.get());
    metrics::counter!("memroute_reloads_total", "result" => "error").absolute(RELOADS_FAILED.get());
}

/// Client-side counters of one worker, named as memcached names them.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Open client connections.
    pub curr_connections: Counter,
    /// Signalled whenever a client connection ends (shutdown waits on it).
    pub client_left: tokio::sync::Notify,
    /// Client connections accepted.
    pub total_connections: Counter,
    /// Connections refused because `max_clients` or a listener's `max_client_connections`
    /// was reached.
    pub rejected_connections: Counter,
    /// Connections refused by a listener's `client_allow` / `client_deny`.
    pub denied_connections: Counter,
    /// Idle connections closed by `client_timeout` (memcached's name).
    pub idle_kicks: Counter,
    /// Keys requested by retrieval commands.
    pub cmd_get: Counter,
    /// Storage commands.
    pub cmd_set: Counter,
    /// Other keyed commands (delete, incr, decr, touch).
    pub cmd_other: Counter,
    /// flush_all commands.
    pub cmd_flush: Counter,
    /// Requests answered with a protocol error by memroute itself.
    pub protocol_errors: Counter,
    /// Multi-key retrievals split over several backends.
    pub split_retrievals: Counter,
    /// Bytes read from clients.
    pub bytes_read: Counter,
    /// Bytes written to clients.
    pub bytes_written: Counter,
}

/// Counters of one backend, shared by every worker.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Requests sent.
    pub requests: Counter,
    /// Replies received.
    pub replies: Counter,
    /// Requests answered with an error because the backend failed.
    pub errors: Counter,
    /// Deadlines missed.
    pub timeouts: Counter,
    /// Upstream connections that broke.
    pub connection_failures: Counter,
    /// Connection attempts that failed.
    pub connect_failures: Counter,
    /// `noreply` requests whose (dropped) answer was an error.
    pub noreply_errors: Counter,
    /// Times the backend was taken off the ring.
    pub ejections: Counter,
    /// Requests in flight (gauge).
    pub in_flight: Counter,
    /// Sum of reply latencies, microseconds (with `replies`, the mean).
    pub latency_us_total: Counter,
    /// Warm-up: misses on the new owner answered by the previous owner.
    pub warmup_hits: Counter,
    /// `VALUE` items returned by retrievals.
    pub get_hits: Counter,
}
