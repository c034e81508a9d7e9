//! The `memroute` command: parse flags or a config file, then run the proxy.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::sync::watch;

use memroute::config::{Config, RawConfig, RawPool, RawSize};
use memroute::router::build_ring;
use memroute::server::Server;

/// A key-routing memcached proxy.
///
/// Either give a config file (`--config`), or describe one pool with flags that mirror the
/// pool keys: `--listen 127.0.0.1:22121 --server 127.0.0.1:11211:1 --server …`. With
/// neither, memroute serves memcached clients on 127.0.0.1:11211 from an embedded cache.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration, print each pool's ring, and exit.
    #[arg(long)]
    check: bool,
    /// Log level or filter (e.g. info, debug, memroute=trace); RUST_LOG also works.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log_level: String,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Client connections accepted at most.
    #[arg(long)]
    max_clients: Option<usize>,

    /// Add an embedded cache to the flag-defined pool (the default when no --server is given:
    /// then memroute listens on 127.0.0.1:11211 and serves from memory alone).
    #[arg(long)]
    embedded: bool,
    /// Size of that embedded cache.
    #[arg(long, value_name = "SIZE", default_value = "64mb")]
    memory: String,

    /// Flag-defined pool: address to listen on.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Flag-defined pool: a backend `host:port:weight [name]` (repeat for each).
    #[arg(long = "server", value_name = "SERVER")]
    servers: Vec<String>,
    /// Flag-defined pool: key hash (fnv1a_64, md5, crc32, murmur, …).
    #[arg(long)]
    hash: Option<String>,
    /// Flag-defined pool: two characters delimiting the hashed part of keys, e.g. "{}".
    #[arg(long)]
    hash_tag: Option<String>,
    /// Flag-defined pool: ketama, modula or random.
    #[arg(long)]
    distribution: Option<String>,
    /// Flag-defined pool: upstream request timeout (ms).
    #[arg(long, value_name = "MS")]
    timeout: Option<u64>,
    /// Flag-defined pool: upstream connect timeout (ms).
    #[arg(long, value_name = "MS")]
    connect_timeout: Option<u64>,
    /// Flag-defined pool: connections per backend per worker thread.
    #[arg(long)]
    server_connections: Option<usize>,
    /// Flag-defined pool: largest value accepted (bytes, or e.g. 1m).
    #[arg(long, value_name = "SIZE")]
    item_size_max: Option<String>,
    /// Flag-defined pool: answer a failed backend's part of a retrieval as `miss` or `error`.
    #[arg(long, value_name = "POLICY")]
    retrieval_failure: Option<String>,
    /// Flag-defined pool: what the servers speak: memcached or tokyotyrant.
    #[arg(long)]
    protocol: Option<String>,
    /// Flag-defined pool (tokyotyrant): keep client flags by storing them in values.
    #[arg(long)]
    preserve_flags: bool,
}

impl Cli {
    fn raw_config(&self) -> Result<RawConfig> {
        let mut raw = match &self.config {
            Some(path) => {
                if self.listen.is_some() || !self.servers.is_empty() || self.embedded {
                    bail!("--listen/--server describe a pool without a file; do not combine them with --config");
                }
                RawConfig::load(path)?
            }
            None => {
                let servers = if self.servers.is_empty() || self.embedded {
                    // Nothing to front: serve from the embedded cache, so memroute is a
                    // working memcached on a fresh machine.
                    let mut s = self.servers.clone();
                    s.push(format!("memory:{}", self.memory));
                    s
                } else {
                    self.servers.clone()
                };
                let default_listen = match self.servers.is_empty() {
                    true => "127.0.0.1:11211",
                    false => "127.0.0.1:22121",
                };
                let pool = RawPool {
                    listen: Some(self.listen.clone().unwrap_or_else(|| default_listen.into())),
                    hash: self.hash.clone(),
                    hash_tag: self.hash_tag.clone(),
                    distribution: self.distribution.clone(),
                    timeout: self.timeout,
                    connect_timeout: self.connect_timeout,
                    server_connections: self.server_connections,
                    servers,
                    item_size_max: self.item_size_max.clone().map(RawSize::Text),
                    retrieval_failure: self.retrieval_failure.clone(),
                    protocol: self.protocol.clone(),
                    preserve_flags: self.preserve_flags.then_some(true),
                    ..RawPool::default()
                };
                let mut raw = RawConfig::default();
                raw.pools.insert("default".into(), pool);
                raw
            }
        };
        if self.threads.is_some() {
            raw.threads = self.threads;
        }
        if self.max_clients.is_some() {
            raw.max_clients = self.max_clients;
        }
        Ok(raw)
    }
}

fn print_rings(config: &Config) -> Result<()> {
    for pool in &config.pools {
        let ring = build_ring(pool).with_context(|| format!("pool {}", pool.name))?;
        println!(
            "pool {}: listen {}, hash {}, distribution {}, hash_tag {}, {} servers",
            pool.name,
            pool.listen,
            pool.hash,
            pool.distribution,
            pool.hash_tag.map_or("none".to_string(), |t| t.to_string()),
            pool.servers.len()
        );
        for (server, points) in pool.servers.iter().zip(ring.points_per_server()) {
            println!(
                "  {:<28} weight {:<4} name {:<28} points {}",
                server.address(),
                server.weight,
                server.identity(),
                points
            );
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log_level))
        .context("--log-level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();

    let config = cli.raw_config()?.validate()?;
    if cli.check {
        print_rings(&config)?;
        println!("configuration ok");
        return Ok(());
    }
    let server = Server::bind(config.clone())?;
    for (pool, addr) in config.pools.iter().zip(server.local_addrs()) {
        tracing::info!(
            "pool {} listening on {addr}: {} servers, {} {}, {} worker threads",
            pool.name,
            pool.servers.len(),
            pool.hash,
            pool.distribution,
            config.threads
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let running = std::thread::spawn(move || server.run(stop_rx));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(shutdown_signal());
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    running
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    Ok(())
}
