//! Backend health. Failures are counted passively where they happen (upstream connections)
//! and, with `health_check_interval`, actively: every remote backend is asked `version` on a
//! connection of its own, so a backend that dies while idle is marked down (and `/health`
//! says so) without a client request failing first. Both signals feed twemproxy's ejection
//! (`auto_eject_hosts`, `server_failure_limit`, `server_retry_timeout`).
//!
//! This watcher keeps the rings in step with who is ejected and, once an ejected backend's
//! retry timeout has passed, probes it and brings it back when it answers. It ages the
//! value sizes reply room is estimated from, and rebuilds the generation when a warm-up
//! period ends, so the connections kept only for warm-up are closed.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use crate::backend::{tls_connect, Backend, Kind};
use crate::config::{Config, Target};
use crate::generation::{Generation, EJECTION_CHECK};
use crate::shared::Shared;
use crate::socket::Socket;
use crate::tls::BackendTls;
use crate::write_queue::WriteQueue;

/// How long a large value keeps raising reply room estimates after it was last seen (one
/// to two periods).
const VALUE_SIZE_PERIOD: Duration = Duration::from_secs(60);

/// Runs in worker 0 until `stop`.
pub async fn watch(shared: Arc<Shared>, worker: usize, mut stop: watch::Receiver<bool>) {
    if worker != 0 {
        return;
    }
    let mut sizes_rotated = Instant::now();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(EJECTION_CHECK) => {}
        }
        let generation = shared.generation();
        if sizes_rotated.elapsed() >= VALUE_SIZE_PERIOD {
            sizes_rotated = Instant::now();
            for pool in &generation.pools {
                for (backend, _) in pool.all_backends() {
                    backend.value_sizes.rotate();
                }
            }
        }
        // A finished warm-up: a rebuild drops the previous ring, and workers close the
        // connections kept only for it.
        let mut warm_up_over = false;
        for p in &generation.pools {
            if p.previous
                .as_ref()
                .is_some_and(|w| w.until <= Instant::now())
            {
                tracing::info!("pool {}: warm-up ended", p.config.name);
                warm_up_over = true;
            }
        }
        let mut changed = rings_out_of_date(&generation) || warm_up_over;
        for pool in &generation.pools {
            for backend in &pool.backends {
                let due = backend.ejected_until().is_some_and(|t| t <= Instant::now());
                let tls = pool.config.server_tls.as_deref();
                let (connect, reply) = (pool.config.connect_timeout, pool.config.timeout);
                if due && probe(backend, connect, reply, tls).await.is_ok() {
                    changed |= backend.readmit();
                } else if due {
                    backend.extend_ejection();
                }
            }
        }
        start_checks(&shared, &generation);
        if changed {
            shared.rebuild();
        }
    }
}

/// Starts the active health checks that are due, each in a task of its own so a backend
/// that does not answer delays no other. Ejected backends are left to their retry probe.
fn start_checks(shared: &Arc<Shared>, generation: &Generation) {
    let now = Instant::now();
    for pool in &generation.pools {
        let Some(check) = pool.config.health_check else {
            continue;
        };
        for backend in &pool.backends {
            if !matches!(backend.kind, Kind::Remote(_))
                || backend.is_ejected()
                || !backend.begin_check(now, check.interval)
            {
                continue;
            }
            let (backend, shared) = (backend.clone(), shared.clone());
            // A probe may take as long as the interval, never longer: the next is due then.
            let connect = pool.config.connect_timeout.min(check.interval);
            let reply = pool.config.timeout.min(check.interval);
            let tls = pool.config.server_tls.clone();
            tokio::spawn(async move {
                let result = probe(&backend, connect, reply, tls.as_deref()).await;
                if backend.checked(result, check.failures) {
                    shared.rebuild();
                }
            });
        }
    }
}

/// Whether some ring includes an ejected backend or leaves out a live one.
fn rings_out_of_date(generation: &Generation) -> bool {
    generation.pools.iter().any(|pool| {
        let on_ring = |i: usize| pool.ring_backends.contains(&i);
        let all_ejected = pool.backends.iter().all(|b| b.is_ejected());
        !all_ejected
            && pool
                .backends
                .iter()
                .enumerate()
                .any(|(i, b)| b.is_ejected() == on_ring(i))
    })
}

/// Connects (with TLS when the pool's servers speak it), sends `version` (memcached and
/// ttserver both answer it) and expects a `VERSION …` line back; the error says what went
/// wrong.
async fn probe(
    backend: &Backend,
    connect: Duration,
    reply: Duration,
    tls: Option<&BackendTls>,
) -> Result<(), String> {
    let Kind::Remote(addr) = backend.kind else {
        return Ok(());
    };
    let stream = match timeout(connect, TcpStream::connect(addr)).await {
        Err(_) => return Err(format!("connect timed out after {connect:?}")),
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Ok(Ok(s)) => s,
    };
    let mut sock = Socket::new(stream).map_err(|e| format!("socket: {e}"))?;
    if let Some(tls) = tls {
        sock = match timeout(connect, tls_connect(sock, tls, &backend.name)).await {
            Err(_) => return Err(format!("TLS handshake timed out after {connect:?}")),
            Ok(Err(e)) => return Err(format!("TLS: {e}")),
            Ok(Ok(s)) => s,
        };
    }
    let exchange = async {
        let mut wq = WriteQueue::new();
        wq.push(Bytes::from_static(b"version\r\n"));
        while !sock.write(&mut wq).await? {}
        let mut line = BytesMut::new();
        while !line.ends_with(b"\n") && line.len() < 256 {
            if sock.read(&mut line).await? == 0 {
                break;
            }
        }
        Ok::<_, std::io::Error>(line)
    };
    match timeout(reply, exchange).await {
        Err(_) => Err(format!("no answer to version within {reply:?}")),
        Ok(Err(e)) => Err(format!("version: {e}")),
        Ok(Ok(line)) if line.starts_with(b"VERSION ") && line.ends_with(b"\r\n") => Ok(()),
        Ok(Ok(line)) if line.is_empty() => Err("closed without answering version".into()),
        Ok(Ok(line)) => Err(format!(
            "unexpected answer to version: {:?}",
            String::from_utf8_lossy(&line[..line.len().min(64)])
        )),
    }
}

/// What `/health` reports: whether every listener can serve, and why not.
pub struct Readiness {
    /// Every listener has backends to serve from.
    pub ready: bool,
    /// One line per listener and per pool.
    pub text: String,
}

/// Readiness: a listener is ready when the requests it takes can reach a live backend (up
/// and not ejected): its pool has one; a prefix route's targets all are; a replicated
/// route has a live copy; a gutter route a live primary or gutter; a shadow route's primary
/// is (the shadow never answers clients, so it does not count).
pub fn readiness(generation: &Generation) -> Readiness {
    use std::fmt::Write as _;
    let live = |pool: &str| {
        generation.pools.iter().any(|p| {
            p.config.name == pool && p.backends.iter().any(|b| b.is_up() && !b.is_ejected())
        })
    };
    let mut text = String::new();
    let mut ready = true;
    for l in &generation.config.listeners {
        let ok = serves(&generation.config, &l.target, &live, 0);
        ready &= ok;
        let state = if ok { "ready" } else { "NOT READY" };
        let _ = writeln!(
            text,
            "listener {} ({}, {}): {state}",
            l.listen, l.name, l.target
        );
    }
    for pool in &generation.pools {
        let n = pool.backends.len();
        let up = pool.backends.iter().filter(|b| b.is_up()).count();
        let ejected = pool.backends.iter().filter(|b| b.is_ejected()).count();
        let _ = writeln!(
            text,
            "pool {}: {up}/{n} backends up, {ejected} ejected",
            pool.config.name
        );
    }
    let _ = writeln!(text, "generation {}", generation.id);
    Readiness { ready, text }
}

/// Whether requests handed to `target` can reach a live backend.
fn serves(config: &Config, target: &Target, live: &dyn Fn(&str) -> bool, depth: usize) -> bool {
    use crate::config::RouteKind;
    let route = match target {
        Target::Pool(p) => return live(p),
        // Validation refuses route cycles; the depth cap only keeps this total.
        Target::Route(_) if depth > 16 => return false,
        Target::Route(r) => match config.route(r) {
            Some(route) => route,
            None => return false,
        },
    };
    let serves = |t: &Target| serves(config, t, live, depth + 1);
    match &route.kind {
        RouteKind::Prefix { prefixes, default } => {
            prefixes.iter().all(|(_, t)| serves(t)) && serves(default)
        }
        RouteKind::Replicated { copies, .. } => copies.iter().any(|c| live(c)),
        RouteKind::Gutter {
            primary, gutter, ..
        } => live(primary) || live(gutter),
        RouteKind::Shadow { primary, .. } => serves(primary),
    }
}
