//! The server: binds every pool's listener, starts the worker threads, and owns what they
//! share — counters, the client count, and the current routing [`Generation`] behind one
//! `ArcSwap`, which [`Shared::reload`] replaces while clients keep talking.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::admission::ClientCount;
use crate::budget::Budget;
use crate::config::Config;
use crate::generation::{Generation, GenerationError};
use crate::stats::conns::Connections;
use crate::stats::WorkerStats;

/// Starting the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} (pool {pool}): {source}")]
    Bind {
        /// The pool.
        pool: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A pool's ring could not be built.
    #[error(transparent)]
    Generation(#[from] GenerationError),
    /// A worker thread could not be started.
    #[error("cannot start worker: {0}")]
    Worker(io::Error),
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
    /// Client connections, for `stats conns`.
    connections: Arc<Connections>,
}

impl Shared {
    /// The current routing generation.
    pub fn generation(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// Reply memory of all clients.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// The open client connections.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
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
    pub fn reload(&self, mut config: Config) -> Result<u64, GenerationError> {
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
        let next = Generation::build(config, Some(&current))?;
        self.budget.set_limit(next.config.max_client_memory);
        Ok(self.publish(next))
    }

    /// Rebuilds the rings over the backends live now (after an ejection or a return).
    pub fn rebuild(&self) {
        let _guard = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        match self.generation().rebuild() {
            Ok(next) => {
                self.publish(next);
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

/// A bound server, ready to run.
pub struct Server {
    shared: Arc<Shared>,
    /// Per worker, per pool: its listening socket.
    listeners: Vec<Vec<std::net::TcpListener>>,
    addrs: Vec<SocketAddr>,
}

/// A listening socket that other workers may bind too (`SO_REUSEPORT`), so the kernel
/// spreads connections over workers.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

impl Server {
    /// Builds the first generation and binds every pool's address once per worker (the
    /// first bind fixes a port of 0 for the others).
    pub fn bind(mut config: Config) -> Result<Server, ServerError> {
        let mut addrs = Vec::new();
        let mut listeners: Vec<Vec<std::net::TcpListener>> =
            (0..config.threads).map(|_| Vec::new()).collect();
        for pool in &mut config.pools {
            // SO_REUSEPORT would let this process share a port another process already
            // listens on, splitting its clients silently: claim the port alone first.
            let mut addr = std::net::TcpListener::bind(pool.listen)
                .and_then(|l| l.local_addr())
                .map_err(|source| ServerError::Bind {
                    pool: pool.name.clone(),
                    addr: pool.listen,
                    source,
                })?;
            for worker in listeners.iter_mut() {
                let l = bind_reuseport(addr).map_err(|source| ServerError::Bind {
                    pool: pool.name.clone(),
                    addr,
                    source,
                })?;
                addr = l.local_addr().map_err(ServerError::Worker)?;
                worker.push(l);
            }
            // Later generations compare listen addresses: record the one actually bound.
            pool.listen = addr;
            addrs.push(addr);
        }
        let generation = Generation::build(config, None)?;
        let workers = (0..generation.config.threads)
            .map(|_| Arc::new(WorkerStats::default()))
            .collect();
        let (changes, _) = watch::channel(generation.id);
        let budget = Arc::new(Budget::new(generation.config.max_client_memory));
        Ok(Server {
            shared: Arc::new(Shared {
                started: std::time::Instant::now(),
                workers,
                clients: Arc::default(),
                listener_clients: Mutex::default(),
                generation: ArcSwap::from_pointee(generation),
                changes,
                reloading: Mutex::new(()),
                budget,
                connections: Arc::default(),
            }),
            listeners,
            addrs,
        })
    }

    /// The address each pool listens on, in config order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// What the workers share: use it to reload.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Runs until `stop` is signalled, then lets clients' in-flight requests finish (within
    /// the configured shutdown timeout) and returns.
    pub fn run(self, stop: watch::Receiver<bool>) -> Result<(), ServerError> {
        let mut threads = Vec::new();
        for (i, listeners) in self.listeners.into_iter().enumerate() {
            let shared = self.shared.clone();
            let stop = stop.clone();
            let t = std::thread::Builder::new()
                .name(format!("memroute-worker-{i}"))
                .spawn(move || crate::worker::run(i, shared, listeners, stop))
                .map_err(ServerError::Worker)?;
            threads.push(t);
        }
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }
}
