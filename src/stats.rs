//! Counters: per-worker client statistics and per-backend statistics, summed on demand.
//!
//! Client-side counters belong to one worker thread each. Backend counters are shared by the
//! workers that use the backend (relaxed atomics; with several workers they share cache
//! lines). [`stats_reply`] renders them as memcached's `stats` reply.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::protocol::reply;
use crate::reply_queue::Reply;
use crate::server::Shared;
use crate::upstream::BackendKind;

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

/// The reply to `stats [args]`, in memcached's `STAT name value` format.
pub fn stats_reply(shared: &Shared, args: &[u8]) -> Reply {
    let generation = shared.generation();
    let sum =
        |f: &dyn Fn(&WorkerStats) -> u64| -> u64 { shared.workers().iter().map(|w| f(w)).sum() };
    let mut out = String::new();
    let mut stat = |name: &str, value: &dyn std::fmt::Display| {
        let _ = write!(out, "STAT {name} {value}\r\n");
    };
    match args {
        b"" => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            stat("pid", &std::process::id());
            stat("uptime", &shared.uptime().as_secs());
            stat("time", &now.as_secs());
            stat("version", &env!("CARGO_PKG_VERSION"));
            stat("threads", &shared.workers().len());
            stat("curr_connections", &sum(&|w| w.curr_connections.get()));
            stat("total_connections", &sum(&|w| w.total_connections.get()));
            stat(
                "rejected_connections",
                &sum(&|w| w.rejected_connections.get()),
            );
            stat("denied_connections", &sum(&|w| w.denied_connections.get()));
            stat("idle_kicks", &sum(&|w| w.idle_kicks.get()));
            let cmd_get = sum(&|w| w.cmd_get.get());
            stat("cmd_get", &cmd_get);
            // Hits as counted where replies arrive: remote backends' VALUE items, and the
            // embedded stores' own hits (over every backend, retained ones included).
            let hits: u64 = generation
                .pools
                .iter()
                .flat_map(|p| p.all_backends())
                .map(|(b, _)| match &b.kind {
                    BackendKind::Remote(_) => b.stats.get_hits.get(),
                    BackendKind::Embedded(store) => store.stats().get_hits,
                })
                .sum();
            stat("get_hits", &hits);
            stat("get_misses", &cmd_get.saturating_sub(hits));
            stat("cmd_set", &sum(&|w| w.cmd_set.get()));
            stat("cmd_flush", &sum(&|w| w.cmd_flush.get()));
            stat("cmd_other", &sum(&|w| w.cmd_other.get()));
            stat("split_retrievals", &sum(&|w| w.split_retrievals.get()));
            stat("protocol_errors", &sum(&|w| w.protocol_errors.get()));
            stat("bytes_read", &sum(&|w| w.bytes_read.get()));
            stat("bytes_written", &sum(&|w| w.bytes_written.get()));
            stat("generation", &generation.id);
            let n: usize = generation.pools.iter().map(|p| p.backends.len()).sum();
            stat("backends", &n);
            let stores = generation
                .pools
                .iter()
                .flat_map(|p| p.backends.iter())
                .filter_map(|b| match &b.kind {
                    BackendKind::Embedded(store) => Some(store.stats()),
                    BackendKind::Remote(_) => None,
                });
            let mut total = crate::embedded::StoreStats::default();
            let mut any = false;
            for st in stores {
                any = true;
                total.curr_items += st.curr_items;
                total.bytes += st.bytes;
                total.limit_maxbytes += st.limit_maxbytes;
                total.evictions += st.evictions;
                total.get_hits += st.get_hits;
                total.get_misses += st.get_misses;
                total.get_expired += st.get_expired;
                total.total_items += st.total_items;
            }
            if any {
                stat("embedded_curr_items", &total.curr_items);
                stat("embedded_bytes", &total.bytes);
                stat("embedded_limit_maxbytes", &total.limit_maxbytes);
                stat("embedded_evictions", &total.evictions);
                stat("embedded_get_hits", &total.get_hits);
                stat("embedded_get_misses", &total.get_misses);
                stat("embedded_get_expired", &total.get_expired);
                stat("embedded_total_items", &total.total_items);
            }
        }
        b"backends" => {
            for pool_state in &generation.pools {
                let pool = &pool_state.config;
                for (s, retained) in pool_state.all_backends() {
                    let p = format!("{}:{}", pool.name, s.name);
                    let st = &s.stats;
                    let state = match (retained, s.is_ejected(), s.is_up()) {
                        // Removed from the pool, still read during warm-up.
                        (true, _, _) => "retained",
                        (false, true, _) => "ejected",
                        (false, false, true) => "up",
                        (false, false, false) => "down",
                    };
                    stat(&format!("{p}:state"), &state);
                    stat(&format!("{p}:requests"), &st.requests.get());
                    stat(&format!("{p}:replies"), &st.replies.get());
                    stat(&format!("{p}:errors"), &st.errors.get());
                    stat(&format!("{p}:timeouts"), &st.timeouts.get());
                    stat(
                        &format!("{p}:connection_failures"),
                        &st.connection_failures.get(),
                    );
                    stat(&format!("{p}:connect_failures"), &st.connect_failures.get());
                    stat(&format!("{p}:noreply_errors"), &st.noreply_errors.get());
                    stat(&format!("{p}:ejections"), &st.ejections.get());
                    stat(&format!("{p}:in_flight"), &st.in_flight.get());
                    let replies = st.replies.get().max(1);
                    stat(
                        &format!("{p}:latency_us_mean"),
                        &(st.latency_us_total.get() / replies),
                    );
                    stat(&format!("{p}:warmup_hits"), &st.warmup_hits.get());
                }
            }
        }
        _ => return Reply::Static(reply::ERROR),
    }
    out.push_str("END\r\n");
    Reply::Data(Bytes::from(out))
}
