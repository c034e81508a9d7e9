//! Counters: per-worker client counters and per-backend counters, and the one table of each
//! that both the `stats` reply and the Prometheus exporter render, so the two always agree.
//!
//! Client-side counters belong to one worker thread each and are summed when read. Backend
//! counters are shared by the workers that use the backend (relaxed atomics).

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
    /// Meta-protocol requests (also counted as gets, sets or others by what they do).
    pub meta_requests: Counter,
    /// Binary-protocol requests (also counted as gets, sets or others by what they do).
    pub binary_requests: Counter,
    /// Requests answered with a protocol error by memroute itself.
    pub protocol_errors: Counter,
    /// Multi-key retrievals split over several backends.
    pub split_retrievals: Counter,
    /// Bytes read from clients.
    pub bytes_read: Counter,
    /// Bytes written to clients.
    pub bytes_written: Counter,
    /// TLS handshakes completed with clients.
    pub tls_handshakes: Counter,
    /// TLS handshakes that failed (a protocol error, a refused certificate, a plaintext
    /// client on a TLS port).
    pub tls_handshake_failures: Counter,
    /// TLS handshakes not finished within `tls_handshake_timeout`.
    pub tls_handshake_timeouts: Counter,
    /// Verified clients whose identity is not in `tls_client_names`.
    pub tls_clients_refused: Counter,
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
    /// Active health checks answered.
    pub checks_ok: Counter,
    /// Active health checks failed (refused, timed out, or a wrong answer).
    pub checks_failed: Counter,
}

/// Counters of one route, kept across reloads while the route keeps its name.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Keys or requests moved on to another copy or the gutter pool (after a failure, or
    /// with miss-failover a miss).
    pub failovers: Counter,
    /// Writes to every copy whose copies answered differently.
    pub disagreements: Counter,
    /// Copies handed to the shadow pool.
    pub shadow_sends: Counter,
    /// Copies dropped because the shadow pool was behind.
    pub shadow_drops: Counter,
    /// Copies the shadow pool failed (down, timed out, an error line).
    pub shadow_errors: Counter,
}

/// Route counters, as `stats routes` lists them (`<route>:<stat>`) and as `/metrics` exports
/// them (label `route`).
pub const ROUTE_ROWS: &[Row<RouteStats>] = &[
    Row {
        stat: "failovers",
        metric: "memroute_route_failovers_total",
        labels: &[],
        kind: Kind::Counter,
        get: |r| r.failovers.get(),
    },
    Row {
        stat: "disagreements",
        metric: "memroute_route_replica_disagreements_total",
        labels: &[],
        kind: Kind::Counter,
        get: |r| r.disagreements.get(),
    },
    Row {
        stat: "shadow_sends",
        metric: "memroute_route_shadow_sends_total",
        labels: &[],
        kind: Kind::Counter,
        get: |r| r.shadow_sends.get(),
    },
    Row {
        stat: "shadow_drops",
        metric: "memroute_route_shadow_drops_total",
        labels: &[],
        kind: Kind::Counter,
        get: |r| r.shadow_drops.get(),
    },
    Row {
        stat: "shadow_errors",
        metric: "memroute_route_shadow_errors_total",
        labels: &[],
        kind: Kind::Counter,
        get: |r| r.shadow_errors.get(),
    },
];

/// Whether a row only grows (a Prometheus counter) or goes up and down (a gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One counter as both renderings name it.
pub struct Row<T: 'static> {
    /// The name in memcached's `stats` reply.
    pub stat: &'static str,
    /// The Prometheus metric.
    pub metric: &'static str,
    /// Labels of its own (besides a backend's `pool` and `backend`).
    pub labels: &'static [(&'static str, &'static str)],
    /// Counter or gauge.
    pub kind: Kind,
    /// Its value.
    pub get: fn(&T) -> u64,
}

/// Client counters, as `stats` lists them and as `/metrics` exports them (summed over the
/// workers).
pub const CLIENT_ROWS: &[Row<WorkerStats>] = &[
    Row {
        stat: "curr_connections",
        metric: "memroute_client_connections",
        labels: &[],
        kind: Kind::Gauge,
        get: |w| w.curr_connections.get(),
    },
    Row {
        stat: "total_connections",
        metric: "memroute_client_connections_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.total_connections.get(),
    },
    Row {
        stat: "rejected_connections",
        metric: "memroute_client_refused_total",
        labels: &[("reason", "limit")],
        kind: Kind::Counter,
        get: |w| w.rejected_connections.get(),
    },
    Row {
        stat: "denied_connections",
        metric: "memroute_client_refused_total",
        labels: &[("reason", "denied")],
        kind: Kind::Counter,
        get: |w| w.denied_connections.get(),
    },
    Row {
        stat: "idle_kicks",
        metric: "memroute_client_idle_kicks_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.idle_kicks.get(),
    },
    Row {
        stat: "cmd_get",
        metric: "memroute_cmd_get_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.cmd_get.get(),
    },
    Row {
        stat: "cmd_set",
        metric: "memroute_cmd_set_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.cmd_set.get(),
    },
    Row {
        stat: "cmd_flush",
        metric: "memroute_cmd_flush_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.cmd_flush.get(),
    },
    Row {
        stat: "cmd_other",
        metric: "memroute_cmd_other_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.cmd_other.get(),
    },
    Row {
        stat: "meta_requests",
        metric: "memroute_meta_requests_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.meta_requests.get(),
    },
    Row {
        stat: "binary_requests",
        metric: "memroute_binary_requests_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.binary_requests.get(),
    },
    Row {
        stat: "split_retrievals",
        metric: "memroute_split_retrievals_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.split_retrievals.get(),
    },
    Row {
        stat: "protocol_errors",
        metric: "memroute_protocol_errors_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.protocol_errors.get(),
    },
    Row {
        stat: "bytes_read",
        metric: "memroute_client_read_bytes_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.bytes_read.get(),
    },
    Row {
        stat: "bytes_written",
        metric: "memroute_client_written_bytes_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.bytes_written.get(),
    },
    Row {
        stat: "tls_handshakes",
        metric: "memroute_tls_handshakes_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.tls_handshakes.get(),
    },
    Row {
        stat: "tls_handshake_failures",
        metric: "memroute_tls_handshake_failures_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.tls_handshake_failures.get(),
    },
    Row {
        stat: "tls_handshake_timeouts",
        metric: "memroute_tls_handshake_timeouts_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.tls_handshake_timeouts.get(),
    },
    Row {
        stat: "tls_clients_refused",
        metric: "memroute_tls_clients_refused_total",
        labels: &[],
        kind: Kind::Counter,
        get: |w| w.tls_clients_refused.get(),
    },
];

/// Backend counters, as `stats backends` lists them (`<pool>:<backend>:<stat>`) and as
/// `/metrics` exports them (labels `pool`, `backend`).
pub const BACKEND_ROWS: &[Row<BackendStats>] = &[
    Row {
        stat: "requests",
        metric: "memroute_backend_requests_total",
        labels: &[],
        kind: Kind::Counter,
        get: |b| b.requests.get(),
    },
    Row {
        stat: "replies",
        metric: "memroute_backend_replies_total",
        labels: &[],
        kind: Kind::Counter,
        get: |b| b.replies.get(),
    },
    Row {
        stat: "errors",
        metric: "memroute_backend_errors_total",
        labels: &[],
        kind: Kind::Counter,
        get: |b| b.errors.get(),
    },
    Row {
        stat: "timeouts",
        metric: "memroute_backend_timeouts_total",
        labels: &[],
        kind: Kind::Counter,
        get: |b| b.timeouts.get(),
    },
    Row {
        stat: "connection_failures",
        metric: "memroute_backend_connection_failures_total",
        labels: &[],
        kind: Kind::Counter,
        get: |b| b.connection_failures.get(),
    },
    Row {
        stat: "connect_failures",
        metric: "memroute_backend_connect_failures_total",
        labels: &[],
        kind: Kind::Counter,
        get: |b| b.connect_failures.get(),
    },
    Row {
        stat: "noreply_errors",
        metric: "memroute_backend_noreply_errors_total",
        labels: &[],
        kind: Kind::Counter,
        get: |b| b.noreply_errors.get(),
    },
    Row {
        stat: "ejections",
        metric: "memroute_backend_ejections_total",
        labels: &[],
        kind: Kind::Counter,
        get: |b| b.ejections.get(),
    },
    Row {
        stat: "in_flight",
        metric: "memroute_backend_in_flight",
        labels: &[],
        kind: Kind::Gauge,
        get: |b| b.in_flight.get(),
    },
    Row {
        stat: "warmup_hits",
        metric: "memroute_backend_warmup_hits_total",
        labels: &[],
        kind: Kind::Counter,
        get: |b| b.warmup_hits.get(),
    },
    Row {
        stat: "get_hits",
        metric: "memroute_backend_get_hits_total",
        labels: &[],
        kind: Kind::Counter,
        get: |b| b.get_hits.get(),
    },
    Row {
        stat: "health_checks_ok",
        metric: "memroute_backend_health_checks_ok_total",
        labels: &[],
        kind: Kind::Counter,
        get: |b| b.checks_ok.get(),
    },
    Row {
        stat: "health_checks_failed",
        metric: "memroute_backend_health_checks_failed_total",
        labels: &[],
        kind: Kind::Counter,
        get: |b| b.checks_failed.get(),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_a_distinct_name_and_a_prometheus_suffix_that_fits_its_kind() {
        for (stats, metrics) in [
            (
                CLIENT_ROWS.iter().map(|r| r.stat).collect::<Vec<_>>(),
                CLIENT_ROWS
                    .iter()
                    .map(|r| (r.metric, r.kind))
                    .collect::<Vec<_>>(),
            ),
            (
                BACKEND_ROWS.iter().map(|r| r.stat).collect(),
                BACKEND_ROWS.iter().map(|r| (r.metric, r.kind)).collect(),
            ),
            (
                ROUTE_ROWS.iter().map(|r| r.stat).collect(),
                ROUTE_ROWS.iter().map(|r| (r.metric, r.kind)).collect(),
            ),
        ] {
            let mut unique = stats.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), stats.len());
            for (metric, kind) in metrics {
                assert!(metric.starts_with("memroute_"));
                assert_eq!(
                    metric.ends_with("_total"),
                    kind == Kind::Counter,
                    "{metric}"
                );
            }
        }
        let w = WorkerStats::default();
        w.cmd_get.add(3);
        let row = CLIENT_ROWS.iter().find(|r| r.stat == "cmd_get").unwrap();
        assert_eq!((row.get)(&w), 3);
    }
}
