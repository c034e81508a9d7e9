//! The server: binds every listener (pools' and routes') and starts the worker threads,
//! which share a [`Shared`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{Config, Target};
use crate::generation::{Generation, GenerationError};
use crate::shared::Shared;
use crate::socket::bind_reuseport;

/// Starting the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Bind {
        /// The pool or route.
        listener: String,
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

/// A bound server, ready to run.
pub struct Server {
    shared: Arc<Shared>,
    /// Per worker, per listener: its listening socket.
    listeners: Vec<Vec<std::net::TcpListener>>,
    addrs: Vec<SocketAddr>,
}

impl Server {
    /// Builds the first generation and binds every pool's address once per worker (the
    /// first bind fixes a port of 0 for the others).
    pub fn bind(mut config: Config) -> Result<Server, ServerError> {
        let mut addrs = Vec::new();
        let mut listeners: Vec<Vec<std::net::TcpListener>> =
            (0..config.threads).map(|_| Vec::new()).collect();
        for listener in &mut config.listeners {
            let name = listener.target.to_string();
            // SO_REUSEPORT would let this process share a port another process already
            // listens on, splitting its clients silently: claim the port alone first.
            let mut addr = std::net::TcpListener::bind(listener.listen)
                .and_then(|l| l.local_addr())
                .map_err(|source| ServerError::Bind {
                    listener: name.clone(),
                    addr: listener.listen,
                    source,
                })?;
            for worker in listeners.iter_mut() {
                let l = bind_reuseport(addr).map_err(|source| ServerError::Bind {
                    listener: name.clone(),
                    addr,
                    source,
                })?;
                addr = l.local_addr().map_err(ServerError::Worker)?;
                worker.push(l);
            }
            // Later generations compare listen addresses: record the one actually bound.
            listener.listen = addr;
            addrs.push(addr);
        }
        for pool in &mut config.pools {
            if let Some(l) = config
                .listeners
                .iter()
                .find(|l| l.target == Target::Pool(pool.name.clone()))
            {
                pool.listen = Some(l.listen);
            }
        }
        let generation = Generation::build(config, None)?;
        let workers = generation.config.threads;
        Ok(Server {
            shared: Arc::new(Shared::new(generation, workers)),
            listeners,
            addrs,
        })
    }

    /// The address each listener listens on, in config order (pools' first, then routes').
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
