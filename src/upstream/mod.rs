//! The upstream side: per-backend pools of pipelined connections.

pub mod connection;
pub mod pool;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    /// Whether the last connection attempt (from any worker) succeeded.
    up: AtomicBool,
}

impl BackendState {
    /// A backend assumed up until a connection attempt says otherwise.
    pub fn new(name: String, kind: BackendKind) -> Self {
        BackendState {
            name,
            kind,
            stats: BackendStats::default(),
            up: AtomicBool::new(true),
        }
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
