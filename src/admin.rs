//! The admin HTTP listener: `/metrics` (Prometheus text), `/health` (= `/health/ready`:
//! readiness), `/health/live` (liveness) and `/route?key=K`
//! (where a key goes now, and where it went before the last ring change during warm-up).
//!
//! memroute's counters are plain atomics on the hot path; they are copied into the `metrics`
//! registry when scraped. Backend latency histograms are recorded per reply.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::counters::{
    Kind, WorkerStats, BACKEND_ROWS, CLIENT_ROWS, RELOADS_FAILED, RELOADS_OK, ROUTE_ROWS,
};
use crate::generation::Generation;
use crate::shared::Shared;

/// Installs the Prometheus recorder; call before building the server so backend latency
/// histograms register with it.
pub fn install_metrics() -> Option<PrometheusHandle> {
    let buckets = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0,
    ];
    let builder = PrometheusBuilder::new().set_buckets(&buckets).ok()?;
    builder.install_recorder().ok()
}

/// The admin listener, serving until dropped.
pub struct Admin {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Admin {
    /// Binds `addr` (an error if it is taken: at start that is fatal, on reload the reload
    /// is refused) and serves the admin endpoints on it. Needs a Tokio runtime.
    pub fn start(
        addr: SocketAddr,
        shared: Arc<Shared>,
        metrics: Option<PrometheusHandle>,
    ) -> std::io::Result<Admin> {
        let std = std::net::TcpListener::bind(addr)?;
        std.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std)?;
        let addr = listener.local_addr()?;
        tracing::info!("admin listening on {addr} (/metrics, /health, /health/live, /route?key=)");
        let task = tokio::spawn(serve(listener, shared, metrics));
        Ok(Admin { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, metrics: Option<PrometheusHandle>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: pause rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (shared, metrics) = (shared.clone(), metrics.clone());
        // The current generation's certificate: a reload that replaces it applies to the
        // next connection.
        let tls = shared.generation().config.admin_tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    let _ = answer(stream, &shared, metrics.as_ref()).await;
                }
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
                    let handshake =
                        tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        let _ = answer(stream, &shared, metrics.as_ref()).await;
                    }
                }
            }
        });
    }
}

async fn answer(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    shared: &Shared,
    metrics: Option<&PrometheusHandle>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let target = line.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = match path {
        "/metrics" => ("200 OK", render_metrics(shared, metrics)),
        "/health" | "/health/ready" => health(&shared.generation()),
        // Liveness: the process answers (restart it only when this fails).
        "/health/live" => ("200 OK", "live\n".to_string()),
        "/route" => {
            let key = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("key="))
                .unwrap_or("");
            (
                "200 OK",
                route_text(&shared.generation(), &percent_decode(key)),
            )
        }
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn percent_decode(s: &str) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Decoded on bytes: a `%` next to a multi-byte character must not split it.
        let escaped = match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => Some(hi << 4 | lo),
            _ => None,
        };
        match (escaped, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    out
}

/// `/health` and `/health/ready`: 200 when every listener can reach a live backend, 503
/// otherwise (take the instance out of a load balancer); the body says which is not.
fn health(generation: &Generation) -> (&'static str, String) {
    let r = crate::health::readiness(generation);
    let status = match r.ready {
        true => "200 OK",
        false => "503 Service Unavailable",
    };
    (status, r.text)
}

/// Where `key` goes in each pool, and during warm-up where it went before.
pub fn route_text(generation: &Generation, key: &[u8]) -> String {
    let mut out = String::new();
    for pool in &generation.pools {
        let owner = &pool.backends[pool.ring_backends[pool.ring.server_for(key)]];
        let _ = write!(
            out,
            "pool {}: {} -> {}",
            pool.config.name,
            String::from_utf8_lossy(key),
            owner.name
        );
        if let Some(p) = &pool.previous {
            if p.until > tokio::time::Instant::now() {
                let before = &p.backends[p.ring.server_for(key)];
                if !Arc::ptr_eq(before, owner) {
                    let _ = write!(out, " (previously {}, warming up)", before.name);
                }
            }
        }
        out.push('\n');
    }
    out.push_str(&crate::route::explain(generation, key));
    out
}

fn render_metrics(shared: &Shared, handle: Option<&PrometheusHandle>) -> String {
    let Some(handle) = handle else {
        return "# metrics recorder not installed\n".into();
    };
    let generation = shared.generation();
    let sum =
        |f: &dyn Fn(&WorkerStats) -> u64| -> u64 { shared.workers().iter().map(|w| f(w)).sum() };
    metrics::gauge!("memroute_config_generation").set(generation.id as f64);
    for row in CLIENT_ROWS {
        let value = sum(&|w| (row.get)(w));
        export(
            row.metric,
            row.kind,
            row.labels.iter().map(|(k, v)| (*k, v.to_string())),
            value,
        );
    }
    for pool in &generation.pools {
        for (b, _) in pool.all_backends() {
            let labels = || {
                [
                    ("pool", pool.config.name.clone()),
                    ("backend", b.name.clone()),
                ]
                .into_iter()
            };
            for row in BACKEND_ROWS {
                let labels = labels().chain(row.labels.iter().map(|(k, v)| (*k, v.to_string())));
                export(row.metric, row.kind, labels, (row.get)(&b.stats));
            }
            let up = b.is_up() && !b.is_ejected();
            metrics::gauge!("memroute_backend_up", &labels().collect::<Vec<_>>()).set(if up {
                1.0
            } else {
                0.0
            });
        }
    }
    for (route, st) in generation.all_route_stats() {
        for row in ROUTE_ROWS {
            let labels = [("route", route.clone())]
                .into_iter()
                .chain(row.labels.iter().map(|(k, v)| (*k, v.to_string())));
            export(row.metric, row.kind, labels, (row.get)(st));
        }
    }
    for pool in &generation.pools {
        for (b, _) in pool.all_backends() {
            let Some(store) = b.store() else {
                continue;
            };
            let st = store.stats();
            let labels = [
                ("pool", pool.config.name.clone()),
                ("backend", b.name.clone()),
            ];
            metrics::gauge!("memroute_embedded_items", &labels).set(st.curr_items as f64);
            metrics::gauge!("memroute_embedded_bytes", &labels).set(st.bytes as f64);
            metrics::gauge!("memroute_embedded_limit_bytes", &labels).set(st.limit_maxbytes as f64);
            metrics::counter!("memroute_embedded_evictions_total", &labels).absolute(st.evictions);
            metrics::counter!("memroute_embedded_get_hits_total", &labels).absolute(st.get_hits);
            metrics::counter!("memroute_embedded_get_misses_total", &labels)
                .absolute(st.get_misses);
            metrics::counter!("memroute_embedded_get_expired_total", &labels)
                .absolute(st.get_expired);
        }
    }
    let expiry = generation
        .config
        .listeners
        .iter()
        .filter_map(|l| Some((l.name.as_str(), l.client.tls.as_ref()?)))
        .chain(generation.config.admin_tls.as_ref().map(|t| ("admin", t)));
    for (listener, tls) in expiry {
        metrics::gauge!("memroute_tls_cert_expiry_timestamp_seconds", "listener" => listener.to_string())
            .set(tls.not_after as f64);
    }
    metrics::counter!("memroute_reloads_total", "result" => "ok").absolute(RELOADS_OK.get());
    metrics::counter!("memroute_reloads_total", "result" => "error").absolute(RELOADS_FAILED.get());
    handle.run_upkeep();
    handle.render()
}

/// Sets one metric from a counters table row.
fn export(
    name: &'static str,
    kind: Kind,
    labels: impl Iterator<Item = (&'static str, String)>,
    value: u64,
) {
    let labels: Vec<(&'static str, String)> = labels.collect();
    match kind {
        Kind::Counter => metrics::counter!(name, &labels).absolute(value),
        Kind::Gauge => metrics::gauge!(name, &labels).set(value as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_escapes_and_leaves_the_rest() {
        assert_eq!(percent_decode("user%3A1+x"), b"user:1 x");
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
        assert_eq!(percent_decode("%é"), "%é".as_bytes());
    }
}
