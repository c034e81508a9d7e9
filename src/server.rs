//! The server: binds every pool's listener, and runs one single-threaded runtime per worker
//! thread (thread per core). Each worker accepts on its own `SO_REUSEPORT` socket and owns
//! its upstream connections, so a request never hops between threads.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, Endpoint};
use crate::embedded::{Store, StoreConfig, SystemClock};
use crate::protocol::reply;
use crate::reply_queue::Reply;
use crate::router::Router;
use crate::stats::WorkerStats;
use crate::upstream::{BackendKind, BackendState};

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
    #[error("pool {pool}: {source}")]
    Ring {
        /// The pool.
        pool: String,
        /// Why.
        source: crate::ring::RingError,
    },
    /// A worker thread could not be started.
    #[error("cannot start worker: {0}")]
    Worker(io::Error),
}

/// What all workers share: the config, counters and backend states.
pub struct Shared {
    /// The running configuration.
    pub config: Config,
    started: std::time::Instant,
    workers: Vec<Arc<WorkerStats>>,
    /// Per pool (in config order), the state of each backend.
    pub backends: Vec<Vec<Arc<BackendState>>>,
    clients: AtomicUsize,
}

impl Shared {
    fn sum(&self, f: impl Fn(&WorkerStats) -> u64) -> u64 {
        self.workers.iter().map(|w| f(w)).sum()
    }

    /// The reply to `stats [args]`, in memcached's `STAT name value` format.
    pub fn stats_reply(&self, args: &[u8]) -> Reply {
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
                stat("uptime", &self.started.elapsed().as_secs());
                stat("time", &now.as_secs());
                stat("version", &env!("CARGO_PKG_VERSION"));
                stat("threads", &self.workers.len());
                stat("curr_connections", &self.sum(|w| w.curr_connections.get()));
                stat(
                    "total_connections",
                    &self.sum(|w| w.total_connections.get()),
                );
                stat(
                    "rejected_connections",
                    &self.sum(|w| w.rejected_connections.get()),
                );
                stat("cmd_get", &self.sum(|w| w.cmd_get.get()));
                stat("cmd_set", &self.sum(|w| w.cmd_set.get()));
                stat("cmd_flush", &self.sum(|w| w.cmd_flush.get()));
                stat("cmd_other", &self.sum(|w| w.cmd_other.get()));
                stat("split_retrievals", &self.sum(|w| w.split_retrievals.get()));
                stat("protocol_errors", &self.sum(|w| w.protocol_errors.get()));
                stat("bytes_read", &self.sum(|w| w.bytes_read.get()));
                stat("bytes_written", &self.sum(|w| w.bytes_written.get()));
                let n: usize = self.backends.iter().map(Vec::len).sum();
                stat("backends", &n);
                let stores = self
                    .backends
                    .iter()
                    .flatten()
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
                for (pool, states) in self.config.pools.iter().zip(&self.backends) {
                    for s in states {
                        let p = format!("{}:{}", pool.name, s.name);
                        let st = &s.stats;
                        stat(
                            &format!("{p}:state"),
                            &if s.is_up() { "up" } else { "down" },
                        );
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
                    }
                }
            }
            _ => return Reply::Static(reply::ERROR),
        }
        out.push_str("END\r\n");
        Reply::Data(Bytes::from(out))
    }
}

/// A bound server, ready to run.
pub struct Server {
    shared: Arc<Shared>,
    /// Per worker, per pool: its listening socket.
    listeners: Vec<Vec<std::net::TcpListener>>,
    addrs: Vec<SocketAddr>,
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

impl Server {
    /// Binds every pool's address once per worker (the first bind fixes a port of 0).
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        let mut backends = Vec::new();
        for pool in &config.pools {
            // Validate the ring now so a bad pool fails at start, not in a worker.
            crate::router::build_ring(pool).map_err(|source| ServerError::Ring {
                pool: pool.name.clone(),
                source,
            })?;
            backends.push(
                pool.servers
                    .iter()
                    .map(|s| {
                        let kind = match &s.endpoint {
                            Endpoint::Tcp { addr, .. } => BackendKind::Remote(*addr),
                            Endpoint::Memory { limit, .. } => {
                                BackendKind::Embedded(Arc::new(Store::new(
                                    StoreConfig {
                                        memory_limit: *limit,
                                        evict: true,
                                        item_size_max: pool.item_size_max,
                                    },
                                    Arc::new(SystemClock),
                                )))
                            }
                        };
                        Arc::new(BackendState::new(s.address(), kind))
                    })
                    .collect(),
            );
        }
        let mut addrs = Vec::new();
        let mut listeners: Vec<Vec<std::net::TcpListener>> =
            (0..config.threads).map(|_| Vec::new()).collect();
        for pool in &config.pools {
            let mut addr = pool.listen;
            for worker in listeners.iter_mut() {
                let l = bind_reuseport(addr).map_err(|source| ServerError::Bind {
                    pool: pool.name.clone(),
                    addr,
                    source,
                })?;
                addr = l.local_addr().map_err(ServerError::Worker)?;
                worker.push(l);
            }
            addrs.push(addr);
        }
        let workers = (0..config.threads)
            .map(|_| Arc::new(WorkerStats::default()))
            .collect();
        Ok(Server {
            shared: Arc::new(Shared {
                config,
                started: std::time::Instant::now(),
                workers,
                backends,
                clients: AtomicUsize::new(0),
            }),
            listeners,
            addrs,
        })
    }

    /// The address each pool listens on, in config order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Runs until `stop` is signalled: starts the workers and waits for them.
    pub fn run(self, stop: watch::Receiver<bool>) -> Result<(), ServerError> {
        let mut threads = Vec::new();
        for (i, listeners) in self.listeners.into_iter().enumerate() {
            let shared = self.shared.clone();
            let stop = stop.clone();
            let t = std::thread::Builder::new()
                .name(format!("memroute-worker-{i}"))
                .spawn(move || worker(i, shared, listeners, stop))
                .map_err(ServerError::Worker)?;
            threads.push(t);
        }
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }
}

fn worker(
    index: usize,
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    stop: watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("worker {index}: cannot build runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let stats = shared.workers[index].clone();
        let mut accepts = Vec::new();
        for ((pool, states), listener) in shared
            .config
            .pools
            .iter()
            .zip(&shared.backends)
            .zip(listeners)
        {
            let router = match Router::new(pool.clone(), states) {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    tracing::error!("pool {}: {e}", pool.name);
                    continue;
                }
            };
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("pool {}: {e}", pool.name);
                    continue;
                }
            };
            accepts.push(tokio::spawn(accept_loop(
                listener,
                router,
                shared.clone(),
                stats.clone(),
                stop.clone(),
            )));
        }
        for a in accepts {
            let _ = a.await;
        }
    });
}

async fn accept_loop(
    listener: TcpListener,
    router: Arc<Router>,
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
    mut stop: watch::Receiver<bool>,
) {
    let max_clients = shared.config.max_clients;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if shared.clients.fetch_add(1, Ordering::Relaxed) >= max_clients {
            shared.clients.fetch_sub(1, Ordering::Relaxed);
            stats.rejected_connections.inc();
            let _ = stream.try_write(reply::TOO_MANY_CONNECTIONS);
            continue;
        }
        stats.curr_connections.inc();
        stats.total_connections.inc();
        let (router, shared, stats) = (router.clone(), shared.clone(), stats.clone());
        tokio::spawn(async move {
            crate::client::serve(stream, router, shared.clone(), stats.clone()).await;
            stats.curr_connections.dec();
            shared.clients.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
