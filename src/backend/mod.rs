//! The upstream side: per-backend pools of pipelined connections.

pub mod connection;
pub mod pool;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Ejection;

use crate::embedded::Store;

use crate::stats::BackendStats;

pub use connection::{ConnHandle, ConnSettings, ReplyTarget, UpstreamRequest};
pub use pool::BackendPool;

/// What kind of backend it is.
#[derive(Debug)]
pub enum BackendKind {
    /// A memcached (or ttserver) reached over TCP at this address.
    Remote(SocketAddr),
    /// memroute's in-process cache, shared by every worker.
    Embedded(Arc<Store>),
}

/// What every worker shares about one backend: its identity, health and counters.
#[derive(Debug)]
pub struct BackendState {
    /// The server as written in the config (`host:port`), for logs and stats.
    pub name: String,
    /// Where it is.
    pub kind: BackendKind,
    /// Counters.
    pub stats: BackendStats,
    /// The largest values it was recently seen to store or return (reply room estimates).
    pub value_sizes: crate::budget::ValueSizes,
    /// Whether the last connection attempt (from any worker) succeeded.
    up: AtomicBool,
    /// Consecutive failures (for ejection).
    failures: AtomicU32,
    /// Taken off the ring (twemproxy's auto_eject_hosts) until this time.
    ejected_until: Mutex<Option<Instant>>,
    /// The pool's ejection policy.
    ejection: Mutex<Option<Ejection>>,
    /// Reply latency, exported to Prometheus (a no-op without a recorder).
    pub latency: metrics::Histogram,
}

impl BackendState {
    /// A backend assumed up until a connection attempt says otherwise.
    pub fn new(name: String, kind: BackendKind) -> Self {
        BackendState {
            latency: metrics::histogram!("memroute_backend_latency_seconds", "backend" => name.clone()),
            name,
            kind,
            stats: BackendStats::default(),
            value_sizes: Default::default(),
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            ejection: Mutex::new(None),
        }
    }

    /// Whether the backend is off the ring now.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// When an ejected backend may be probed again.
    pub fn ejected_until(&self) -> Option<Instant> {
        *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a failed request or connection; returns true when this ejects the backend
    /// (`limit` consecutive failures), so the caller rebuilds the ring.
    pub fn record_failure(&self) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(ej) = self.ejection() else {
            return false;
        };
        if n < ej.failure_limit {
            return false;
        }
        let mut until = self.ejected_until.lock().unwrap_or_else(|e| e.into_inner());
        if until.is_some() {
            return false;
        }
        *until = Some(Instant::now() + ej.retry_timeout);
        self.stats.ejections.inc();
        tracing::warn!(backend = %self.name, "backend ejected after {n} consecutive failures");
        true
    }

    /// Keeps an ejected backend out for another retry timeout (its probe failed).
    pub fn extend_ejection(&self) {
        let retry = self
            .ejection()
            .map_or(Duration::from_secs(30), |e| e.retry_timeout);
        let mut until = self.ejected_until.lock().unwrap_or_else(|e| e.into_inner());
        if until.is_some() {
            *until = Some(Instant::now() + retry);
        }
    }

    /// The ejection policy of the pool this backend belongs to (set by each generation).
    pub fn ejection(&self) -> Option<Ejection> {
        *self.ejection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the ejection policy.
    pub fn set_ejection(&self, ejection: Option<Ejection>) {
        *self.ejection.lock().unwrap_or_else(|e| e.into_inner()) = ejection;
    }

    /// Counts a success: resets the failure count.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Puts an ejected backend back on the ring (after a successful probe); returns whether
    /// it was ejected.
    pub fn readmit(&self) -> bool {
        let was = self
            .ejected_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some();
        if was {
            self.failures.store(0, Ordering::Relaxed);
            tracing::info!(backend = %self.name, "backend back on the ring");
            // Its probe just answered: it is reachable.
            self.up.store(true, Ordering::Relaxed);
        }
        was
    }

    /// Whether the backend is believed reachable.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records the outcome of a connection attempt, logging only state changes.
    pub fn set_up(&self, up: bool, why: &dyn std::fmt::Display) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(backend = %self.name, "backend up");
            } else {
                tracing::warn!(backend = %self.name, "backend down: {why}");
            }
        }
    }
}
