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
use crate::route::{Routes, RoutesSlot};
use crate::shadow::ShadowSender;
use crate::shared::Shared;
use crate::socket::bind_reuseport;

/// A listener this worker accepts on.
struct ListenerEntry {
    listen: SocketAddr,
    accept: JoinHandle<()>,
}

/// Runs worker `index` until `stop`, on the listeners bound for it (one per configured
/// listener, in config order).
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
    let shadow = ShadowSender::start();
    let slot: RoutesSlot = Arc::new(ArcSwap::from_pointee(Routes::new(
        &generation,
        index,
        shadow.clone(),
    )));
    let mut entries: HashMap<String, ListenerEntry> = HashMap::new();
    for (config, listener) in generation.config.listeners.iter().zip(listeners) {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("listener {}: {e}", config.name);
                continue;
            }
        };
        let accept = spawn_accept(listener, &slot, &config.name, &shared, &stats, &stop);
        entries.insert(
            config.name.clone(),
            ListenerEntry {
                listen: config.listen,
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
                    let routes = Routes::new(&next, index, shadow.clone());
                    apply(index, &next, routes, &slot, &mut entries, &shared, &stats, &stop_for_new);
                    generation = next;
                }
            }
        }
    }
    // Shutdown: no new clients; those connected finish what is in flight and close.
    for entry in entries.values() {
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

/// Brings worker `index` to generation `next`, whose routes for this worker are `routes`:
/// swaps them in, retires connections to backends no longer used, and opens listeners for
/// new or moved ones before closing the old.
#[allow(clippy::too_many_arguments)]
fn apply(
    index: usize,
    next: &Generation,
    routes: Routes,
    slot: &RoutesSlot,
    entries: &mut HashMap<String, ListenerEntry>,
    shared: &Arc<Shared>,
    stats: &Arc<WorkerStats>,
    stop: &watch::Receiver<bool>,
) {
    let old = slot.load_full();
    // Backends this worker no longer routes to (not even for warm-up): their connections
    // here finish what is in flight and close.
    for r in &old.routers {
        for b in r.backends() {
            let kept = routes
                .routers
                .iter()
                .any(|n| n.backends().iter().any(|x| Arc::ptr_eq(x, b)));
            if !kept {
                b.retire(index);
            }
        }
    }
    slot.store(Arc::new(routes));
    for config in &next.config.listeners {
        let name = &config.name;
        match entries.get_mut(name) {
            Some(entry) if entry.listen == config.listen => {}
            Some(entry) => match listen(config.listen) {
                // Open the new listener before closing the old one.
                Ok(l) => {
                    let accept = spawn_accept(l, slot, name, shared, stats, stop);
                    std::mem::replace(&mut entry.accept, accept).abort();
                    entry.listen = config.listen;
                }
                Err(e) => tracing::error!(
                    "{name}: cannot listen on {}: {e}; keeping {}",
                    config.listen,
                    entry.listen
                ),
            },
            None => match listen(config.listen) {
                Ok(l) => {
                    let accept = spawn_accept(l, slot, name, shared, stats, stop);
                    entries.insert(
                        name.clone(),
                        ListenerEntry {
                            listen: config.listen,
                            accept,
                        },
                    );
                }
                Err(e) => tracing::error!("{name}: cannot listen on {}: {e}", config.listen),
            },
        }
    }
    // Listeners no longer configured stop accepting; their clients keep their last routes.
    entries.retain(|name, entry| {
        let keep = next.config.listeners.iter().any(|l| &l.name == name);
        if !keep {
            entry.accept.abort();
        }
        keep
    });
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_reuseport(addr)?)
}

/// Starts accepting clients of listener `name` on `listener`.
fn spawn_accept(
    listener: TcpListener,
    slot: &RoutesSlot,
    name: &str,
    shared: &Arc<Shared>,
    stats: &Arc<WorkerStats>,
    stop: &watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(accept_loop(
        listener,
        name.to_owned(),
        slot.clone(),
        shared.listener_clients(name),
        shared.clone(),
        stats.clone(),
        stop.clone(),
    ))
}

async fn accept_loop(
    listener: TcpListener,
    name: String,
    slot: RoutesSlot,
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
        let routes = slot.load_full();
        let Some(this) = routes.listener(&name).cloned() else {
            // Removed by a reload an instant ago: this loop is being stopped.
            continue;
        };
        let admitted = {
            let client = &this.config.client;
            let max_clients = shared.generation().config.max_clients;
            let process = (shared.process_clients(), max_clients);
            match admit(
                peer.ip(),
                &client.access,
                (&clients, client.max_client_connections),
                process,
            ) {
                Ok(admitted) => admitted,
                Err(refusal) => {
                    refuse(refusal, &stream, peer, &name, &stats);
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
            crate::client::serve(
                stream,
                slot,
                this,
                shared,
                stats.clone(),
                stop,
                &registration,
            )
            .await;
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
    listener: &str,
    stats: &WorkerStats,
) {
    let limit = match refusal {
        Refusal::Denied => {
            stats.denied_connections.inc();
            DENIED_LOG.warn(format_args!(
                "{listener}: refused client {peer}: not permitted by client_allow/client_deny"
            ));
            return;
        }
        Refusal::ListenerFull => "max_client_connections",
        Refusal::ProcessFull => "max_clients",
    };
    stats.rejected_connections.inc();
    FULL_LOG.warn(format_args!(
        "{listener}: refused client {peer}: {limit} reached"
    ));
    let _ = stream.try_write(reply::TOO_MANY_CONNECTIONS);
}
