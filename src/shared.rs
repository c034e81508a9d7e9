//! What every worker shares: the current routing [`Generation`] behind one `ArcSwap` (which
//! [`Shared::reload`] replaces while clients keep talking), the counters, the client counts,
//! the process's reply memory budget and the registry of open client connections.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::admission::ClientCount;
use crate::budget::Budget;
use crate::clients::Clients;
use crate::config::Config;
use crate::counters::WorkerStats;
use crate::generation::{Generation, GenerationError};

/// A reload that was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A pool's ring could not be built.
    #[error(transparent)]
    Ring(#[from] GenerationError),
    /// A new listen address is taken (by another process, most likely).
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Bind {
        /// The pool or route.
        listener: String,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What all workers share.
pub struct Shared {
    started: std::time::Instant,
    workers: Vec<Arc<WorkerStats>>,
    /// Clients of the whole process (`max_clients`).
    clients: Arc<ClientCount>,
    /// Clients per pool (listener), by pool name; kept across reloads.
    listener_clients: Mutex<std::collections::HashMap<String, Arc<ClientCount>>>,
    generation: ArcSwap<Generation>,
    /// Tells workers a new generation is in place (its id).
    changes: watch::Sender<u64>,
    /// Serialises reloads and rebuilds.
    reloading: Mutex<()>,
    /// Reply memory of all clients (`max_client_memory`).
    budget: Arc<Budget>,
    /// The open client connections, for `stats conns`.
    registry: Arc<Clients>,
}

impl Shared {
    /// What `workers` workers share, starting from `generation`.
    pub fn new(generation: Generation, workers: usize) -> Shared {
        let (changes, _) = watch::channel(generation.id);
        Shared {
            started: std::time::Instant::now(),
            workers: (0..workers)
                .map(|_| Arc::new(WorkerStats::default()))
                .collect(),
            clients: Arc::default(),
            listener_clients: Mutex::default(),
            budget: Arc::new(Budget::new(generation.config.max_client_memory)),
            registry: Arc::default(),
            generation: ArcSwap::from_pointee(generation),
            changes,
            reloading: Mutex::new(()),
        }
    }

    /// The current routing generation.
    pub fn generation(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// Reply memory of all clients.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// The registry of open client connections.
    pub fn registry(&self) -> &Arc<Clients> {
        &self.registry
    }

    /// Per-worker counters.
    pub fn workers(&self) -> &[Arc<WorkerStats>] {
        &self.workers
    }

    /// Seconds since start.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Client connections open now, over all workers.
    pub fn clients(&self) -> usize {
        self.clients.get()
    }

    /// The process-wide client count.
    pub(crate) fn process_clients(&self) -> &Arc<ClientCount> {
        &self.clients
    }

    /// The client count of a pool's listener (one per pool name, shared by every worker).
    pub(crate) fn listener_clients(&self, pool: &str) -> Arc<ClientCount> {
        let mut map = self
            .listener_clients
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(pool.to_owned()).or_default().clone()
    }

    /// Subscribes to generation changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Switches to a new configuration: builds the next generation beside the current one
    /// (reusing backends present in both) and swaps it in; workers follow. The worker count
    /// cannot change without a restart; a different `threads` is ignored with a warning.
    ///
    /// All or nothing: every new listen address is claimed first (alone, as at start), and
    /// if one cannot be, nothing changes. Returns the new generation's id and what changed.
    pub fn reload(&self, mut config: Config) -> Result<(u64, Vec<String>), ReloadError> {
        let _guard = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.generation();
        if config.threads != current.config.threads {
            tracing::warn!(
                "reload: threads = {} needs a restart; keeping {}",
                config.threads,
                current.config.threads
            );
            config.threads = current.config.threads;
        }
        for l in &config.listeners {
            let ours = current
                .config
                .listeners
                .iter()
                .any(|o| o.listen == l.listen);
            if !ours {
                // Dropped at once: each worker binds its own (SO_REUSEPORT) socket next.
                std::net::TcpListener::bind(l.listen).map_err(|source| ReloadError::Bind {
                    listener: l.name.clone(),
                    addr: l.listen,
                    source,
                })?;
            }
        }
        let changes = crate::config::changes(&current.config, &config);
        let next = Generation::build(config, Some(&current))?;
        self.budget.set_limit(next.config.max_client_memory);
        Ok((self.publish(next), changes))
    }

    /// Rebuilds the rings over the backends live now (after an ejection or a return).
    pub fn rebuild(&self) {
        let _guard = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        match self.generation().rebuild() {
            Ok(next) => {
                let id = self.publish(next);
                tracing::info!("rings rebuilt over the live backends (generation {id})");
            }
            Err(e) => tracing::error!("ring rebuild failed: {e}"),
        }
    }

    fn publish(&self, next: Generation) -> u64 {
        let id = next.id;
        self.generation.store(Arc::new(next));
        self.changes.send_replace(id);
        id
    }
}
