//! A backend: one memcached (or ttserver) server, or memroute's embedded cache. [`Backend`]
//! owns everything about it: its identity, its health (up or down, ejection), its counters,
//! the value sizes reply room is estimated from, and its connections in each worker.
//!
//! - [`connection`]: one pipelined connection: a task writing many clients' requests in
//!   batches and handing each reply to the slot waiting for it.
//! - [`connections`]: one worker's connections to a backend (created, replaced, backed off).
//! - [`message`]: what memroute sends a backend, and how each kind of backend gets it.

pub mod connection;
pub mod connections;
pub mod message;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::budget::ValueSizes;
use crate::config::{Ejection, ServerConfig};
use crate::counters::BackendStats;
use crate::embedded::Store;

pub use connection::{tls_connect, ConnHandle, ConnSettings, ReplyTarget, UpstreamRequest};
pub use connections::Connections;
pub use message::Message;

/// Where a backend is.
#[derive(Debug)]
pub enum Kind {
    /// A memcached (or ttserver) reached over TCP at this address.
    Remote(SocketAddr),
    /// memroute's in-process cache, shared by every worker.
    Embedded(Arc<Store>),
}

/// Whether a backend is believed reachable, and whether it is ejected.
#[derive(Debug)]
struct Health {
    /// Whether the last connection attempt (from any worker) succeeded.
    up: AtomicBool,
    /// Consecutive failures (for ejection).
    failures: AtomicU32,
    /// Taken off the ring (twemproxy's auto_eject_hosts) until this time.
    ejected_until: Mutex<Option<Instant>>,
    /// The pool's ejection policy.
    ejection: Mutex<Option<Ejection>>,
    /// Consecutive failed active health checks.
    check_failures: AtomicU32,
    /// An active health check is in flight (they never overlap).
    checking: AtomicBool,
    /// When the next active health check is due.
    next_check: Mutex<Option<Instant>>,
}

/// One backend, shared by every worker.
#[derive(Debug)]
pub struct Backend {
    /// The server as written in the config (`host:port`, `memory:<size>`), for logs and stats.
    pub name: String,
    /// Where it is.
    pub kind: Kind,
    /// Counters.
    pub stats: BackendStats,
    /// The largest values it was recently seen to store or return (reply room estimates).
    pub value_sizes: ValueSizes,
    /// Reply latency, exported to Prometheus (a no-op without a recorder).
    pub latency: metrics::Histogram,
    health: Health,
    /// Its connections in each worker, opened when the worker first needs them.
    connections: Box<[OnceLock<Connections>]>,
}

impl Backend {
    /// Whether this is memroute's in-process cache.
    pub fn is_embedded(&self) -> bool {
        matches!(self.kind, Kind::Embedded(_))
    }

    /// A backend for `server` (an embedded one gets its store), used by `workers` workers,
    /// assumed up until a connection attempt says otherwise.
    pub fn new(server: &ServerConfig, store: Option<Arc<Store>>, workers: usize) -> Backend {
        let name = server.address();
        let kind = match (server.endpoint.addr(), store) {
            (_, Some(store)) => Kind::Embedded(store),
            (Some(addr), None) => Kind::Remote(addr),
            (None, None) => unreachable!("an embedded server comes with its store"),
        };
        Backend {
            latency: metrics::histogram!("memroute_backend_latency_seconds", "backend" => name.clone()),
            name,
            kind,
            stats: BackendStats::default(),
            value_sizes: ValueSizes::default(),
            health: Health {
                up: AtomicBool::new(true),
                failures: AtomicU32::new(0),
                ejected_until: Mutex::new(None),
                ejection: Mutex::new(None),
                check_failures: AtomicU32::new(0),
                checking: AtomicBool::new(false),
                next_check: Mutex::new(None),
            },
            connections: (0..workers.max(1)).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The embedded store, for an embedded backend.
    pub fn store(&self) -> Option<&Arc<Store>> {
        match &self.kind {
            Kind::Embedded(store) => Some(store),
            Kind::Remote(_) => None,
        }
    }

    /// Worker `worker`'s connections to this (remote) backend, made on first use with
    /// `settings`.
    pub fn connections(
        self: &Arc<Self>,
        worker: usize,
        settings: impl FnOnce() -> (SocketAddr, ConnSettings, usize),
    ) -> &Connections {
        let slot = &self.connections[worker.min(self.connections.len() - 1)];
        slot.get_or_init(|| {
            let (addr, settings, size) = settings();
            Connections::new(addr, self.clone(), settings, size)
        })
    }

    /// The backend left worker `worker`'s routing: its connections there finish what is in
    /// flight and close.
    pub fn retire(&self, worker: usize) {
        if let Some(c) = self.connections.get(worker).and_then(OnceLock::get) {
            c.retire();
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the backend is off the ring now.
    pub fn is_ejected(&self) -> bool {
        Self::lock(&self.health.ejected_until).is_some()
    }

    /// When an ejected backend may be probed again.
    pub fn ejected_until(&self) -> Option<Instant> {
        *Self::lock(&self.health.ejected_until)
    }

    /// Counts a failed request or connection; returns true when this ejects the backend
    /// (`failure_limit` consecutive failures), so the caller rebuilds the ring.
    pub fn record_failure(&self) -> bool {
        let n = self.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(ej) = self.ejection() else {
            return false;
        };
        if n < ej.failure_limit {
            return false;
        }
        let mut until = Self::lock(&self.health.ejected_until);
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
        let mut until = Self::lock(&self.health.ejected_until);
        if until.is_some() {
            *until = Some(Instant::now() + retry);
        }
    }

    /// The ejection policy of the pool this backend belongs to (set by each generation).
    pub fn ejection(&self) -> Option<Ejection> {
        *Self::lock(&self.health.ejection)
    }

    /// Sets the ejection policy.
    pub fn set_ejection(&self, ejection: Option<Ejection>) {
        *Self::lock(&self.health.ejection) = ejection;
    }

    /// Counts a success: resets the failure count.
    pub fn record_success(&self) {
        if self.health.failures.load(Ordering::Relaxed) != 0 {
            self.health.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Puts an ejected backend back on the ring (after a successful probe); returns whether
    /// it was ejected.
    pub fn readmit(&self) -> bool {
        let was = Self::lock(&self.health.ejected_until).take().is_some();
        if was {
            self.health.failures.store(0, Ordering::Relaxed);
            tracing::info!(backend = %self.name, "backend back on the ring");
            // Its probe just answered: it is reachable.
            self.health.up.store(true, Ordering::Relaxed);
        }
        was
    }

    /// Whether the backend is believed reachable.
    pub fn is_up(&self) -> bool {
        self.health.up.load(Ordering::Relaxed)
    }

    /// Starts an active health check if one is due at `now` (and none is in flight),
    /// scheduling the next one `interval` later; the caller runs it and reports with
    /// [`Backend::checked`].
    pub fn begin_check(&self, now: Instant, interval: Duration) -> bool {
        let mut next = Self::lock(&self.health.next_check);
        if next.is_some_and(|t| t > now) || self.health.checking.swap(true, Ordering::AcqRel) {
            return false;
        }
        *next = Some(now + interval);
        true
    }

    /// The outcome of an active health check. `failures` consecutive failures mark the
    /// backend down (and each counts toward ejection, like a failed request); one success
    /// marks it up. Returns true when the failure ejected the backend (rebuild the rings).
    pub fn checked(&self, result: Result<(), String>, failures: u32) -> bool {
        self.health.checking.store(false, Ordering::Release);
        match result {
            Ok(()) => {
                self.health.check_failures.store(0, Ordering::Relaxed);
                self.stats.checks_ok.inc();
                self.set_up(true, &"");
                false
            }
            Err(why) => {
                let n = self.health.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
                self.stats.checks_failed.inc();
                if n >= failures {
                    let why = format!("{n} consecutive health checks failed, the last: {why}");
                    self.set_up(false, &why);
                }
                self.record_failure()
            }
        }
    }

    /// Records the outcome of a connection attempt, logging only state changes.
    pub fn set_up(&self, up: bool, why: &dyn std::fmt::Display) {
        if self.health.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(backend = %self.name, "backend up");
            } else {
                tracing::warn!(backend = %self.name, "backend down: {why}");
            }
        }
    }
}
