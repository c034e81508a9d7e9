//! Counters: per-worker client statistics and per-backend statistics, summed on demand.
//!
//! Each worker thread owns its counters, so the hot path only touches its own cache lines.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter (or, with `dec`, a gauge).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
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

/// Client-side counters of one worker, named as memcached names them.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Open client connections.
    pub curr_connections: Counter,
    /// Client connections accepted.
    pub total_connections: Counter,
    /// Connections refused because `max_clients` was reached.
    pub rejected_connections: Counter,
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
}
