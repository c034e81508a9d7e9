//! One worker thread: a single-threaded runtime that accepts clients on its own listeners,
//! serves them with its own upstream connections, and follows generation changes — building
//! its routers anew (keeping connections to unchanged backends), opening listeners for new or
//! moved pools before closing old ones — and, at shutdown, lets in-flight requests finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admission::{admit, ClientCount, Refusal, DENIED_LOG, FULL_LOG};
use crate::counters::WorkerStats;
use crate::generation::Generation;
use crate::protocol::reply;
use crate::router::{Router, RouterSlot};
use crate::shared::Shared;
use crate::socket::bind_reuseport;

struct PoolEntry {
    slot: RouterSlot,
    listen: SocketAddr,
    accept: JoinHandle<()>,
}

/// Runs worker `index` until `stop`, on the listeners bound for it (one per pool).
pub fn run(
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
    rt.block_on(serve(index, shared, listeners, stop));
}

async fn serve(
    index: usize,
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    mut stop: watch::Receiver<bool>,
) {
    let stats = shared.workers()[index].clone();
    let mut changes = shared.subscribe();
    let mut generation = shared.generation();
    let mut pools: HashMap<String, PoolEntry> = HashMap::new();
    for (pool, listener) in generation.pools.iter().zip(listeners) {
        let slot: RouterSlot = Arc::new(ArcSwap::from_pointee(Router::new(pool, index)));
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("pool {}: {e}", pool.config.name);
                continue;
            }
        };
        let accept = spawn_accept(listener, &slot, &pool.config.name, &shared, &stats, &stop);
        pools.insert(
            pool.config.name.clone(),
            PoolEntry {
                slot,
                listen: pool.config.listen,
                accept,
            },
        );
    }
    let ejection = tokio::spawn(crate::health::watch(shared.clone(), index, stop.clone()));
    let stop_for_new = stop.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = changes.changed() => {
                if r.is_err() {
                    break;
                }
                let next = shared.generation();
                if next.id != generation.id {
                    apply(index, &next, &mut pools, &shared, &stats, &stop_for_new);
                    generation = next;
                }
            }
        }
    }
    // Shutdown: no new clients; those connected finish what is in flight and close.
    for entry in pools.values() {
        entry.accept.abort();
    }
    ejection.abort();
    let grace = generation.config.shutdown_timeout;
    let deadline = tokio::time::Instant::now() + grace;
    while stats.curr_connections.get() > 0 {
        let left = stats.client_left.notified();
        if tokio::time::timeout_at(deadline, left).await.is_err() {
            break;
        }
    }
}

/// Brings worker `index` to generation `next`.
fn apply(
    index: usize,
    next: &Generation,
    pools: &mut HashMap<String, PoolEntry>,
    shared: &Arc<Shared>,
    stats: &Arc<WorkerStats>,
    stop: &watch::Receiver<bool>,
) {
    for pool in &next.pools {
        let name = &pool.config.name;
        match pools.get_mut(name) {
            Some(entry) => {
                let old = entry.slot.load_full();
                let router = Router::new(pool, index);
                // Backends this worker no longer routes to (not even for warm-up): their
                // connections here finish what is in flight and close.
                for b in old.backends() {
                    if !router.backends().iter().any(|n| Arc::ptr_eq(n, b)) {
                        b.retire(index);
                    }
                }
                entry.slot.store(Arc::new(router));
                if entry.listen != pool.config.listen {
                    // Open the new listener before closing the old one.
                    match listen(pool.config.listen) {
                        Ok(l) => {
                            let accept = spawn_accept(l, &entry.slot, name, shared, stats, stop);
                            std::mem::replace(&mut entry.accept, accept).abort();
                            entry.listen = pool.config.listen;
                        }
                        Err(e) => tracing::error!(
                            "pool {name}: cannot listen on {}: {e}; keeping {}",
                            pool.config.listen,
                            entry.listen
                        ),
                    }
                }
            }
            None => match listen(pool.config.listen) {
                Ok(l) => {
                    let slot: RouterSlot =
                        Arc::new(ArcSwap::from_pointee(Router::new(pool, index)));
                    let accept = spawn_accept(l, &slot, name, shared, stats, stop);
                    pools.insert(
                        name.clone(),
                        PoolEntry {
                            slot,
                            listen: pool.config.listen,
                            accept,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!("pool {name}: cannot listen on {}: {e}", pool.config.listen)
                }
            },
        }
    }
    // Pools no longer configured stop accepting; their clients keep their last router.
    pools.retain(|name, entry| {
        let keep = next.pools.iter().any(|p| &p.config.name == name);
        if !keep {
            entry.accept.abort();
        }
        keep
    });
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_reuseport(addr)?)
}

/// Starts accepting clients of pool `name` on `listener`.
fn spawn_accept(
    listener: TcpListener,
    slot: &RouterSlot,
    name: &str,
    shared: &Arc<Shared>,
    stats: &Arc<WorkerStats>,
    stop: &watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(accept_loop(
        listener,
        slot.clone(),
        shared.listener_clients(name),
        shared.clone(),
        stats.clone(),
        stop.clone(),
    ))
}

async fn accept_loop(
    listener: TcpListener,
    slot: RouterSlot,
    clients: Arc<ClientCount>,
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
    mut stop: watch::Receiver<bool>,
) {
    // Where clients of this listener come in, for `stats conns`.
    let listen = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = {
            let router = slot.load();
            let pool = &router.config;
            let max_clients = shared.generation().config.max_clients;
            let process = (shared.process_clients(), max_clients);
            match admit(
                peer.ip(),
                &pool.access,
                (&clients, pool.max_client_connections),
                process,
            ) {
                Ok(admitted) => admitted,
                Err(refusal) => {
                    refuse(refusal, &stream, peer, &pool.name, &stats);
                    continue;
                }
            }
        };
        stats.curr_connections.inc();
        stats.total_connections.inc();
        let registration = shared.registry().register(peer, listen.unwrap_or(peer));
        let (slot, stats, stop) = (slot.clone(), stats.clone(), stop.clone());
        let shared = shared.clone();
        tokio::spawn(async move {
            crate::client::serve(stream, slot, shared, stats.clone(), stop, &registration).await;
            drop(registration);
            drop(admitted);
            stats.curr_connections.dec();
            stats.client_left.notify_one();
        });
    }
}

/// Counts and logs (at a bounded rate) a refused connection, and tells the client why when
/// it was a limit. A client refused by the access list is closed without a word.
fn refuse(
    refusal: Refusal,
    stream: &tokio::net::TcpStream,
    peer: SocketAddr,
    pool: &str,
    stats: &WorkerStats,
) {
    let limit = match refusal {
        Refusal::Denied => {
            stats.denied_connections.inc();
            DENIED_LOG.warn(format_args!(
                "pool {pool}: refused client {peer}: not permitted by client_allow/client_deny"
            ));
            return;
        }
        Refusal::ListenerFull => "max_client_connections",
        Refusal::ProcessFull => "max_clients",
    };
    stats.rejected_connections.inc();
    FULL_LOG.warn(format_args!(
        "pool {pool}: refused client {peer}: {limit} reached"
    ));
    let _ = stream.try_write(reply::TOO_MANY_CONNECTIONS);
}
