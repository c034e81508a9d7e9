//! The `memroute` command: parse flags or a config file, then run the proxy.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::sync::{mpsc, watch};

use memroute::admin::Admin;
use memroute::config::{
    parse_name, BackendProtocol, Config, RawConfig, RawDuration, RawPool, RawSize, RetrievalFailure,
};
use memroute::generation::Generation;
use memroute::ring::{Distribution, HashFunction};
use memroute::server::Server;
use memroute::shared::Shared;

/// A key-routing memcached proxy.
///
/// Either give a config file (`--config`), or describe one pool with flags that mirror the
/// pool keys: `--listen 127.0.0.1:22121 --server 127.0.0.1:11211:1 --server …`. With
/// neither, memroute serves memcached clients on 127.0.0.1:11211 from an embedded cache.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration, print each pool's ring, and exit.
    #[arg(long)]
    check: bool,
    /// Log level — error, warn, info, debug, trace or off (warning, notice, critical are
    /// read as warn, info, error) — or filters such as `info,memroute=debug`. Overrides
    /// RUST_LOG, which applies when this is not given; the default is info. The last given wins.
    #[arg(long, value_name = "LEVEL", value_parser = log_filter, overrides_with = "log_level")]
    log_level: Option<String>,
    /// Log format: text (ANSI colours only on a terminal) or json (one object per line).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Client connections accepted at most.
    #[arg(long)]
    max_clients: Option<usize>,
    /// Admin HTTP listener (`/metrics`, `/health`, `/route?key=`).
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,

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
    #[arg(long, value_parser = parse_name::<HashFunction>)]
    hash: Option<HashFunction>,
    /// Flag-defined pool: two characters delimiting the hashed part of keys, e.g. "{}".
    #[arg(long)]
    hash_tag: Option<String>,
    /// Flag-defined pool: ketama, modula or random.
    #[arg(long, value_parser = parse_name::<Distribution>)]
    distribution: Option<Distribution>,
    /// Flag-defined pool: upstream request timeout (milliseconds, or e.g. 2s).
    #[arg(long, value_name = "DURATION", value_parser = raw_duration)]
    timeout: Option<RawDuration>,
    /// Flag-defined pool: upstream connect timeout (milliseconds, or e.g. 2s).
    #[arg(long, value_name = "DURATION", value_parser = raw_duration)]
    connect_timeout: Option<RawDuration>,
    /// Flag-defined pool: how often each backend is health-checked (e.g. 2s; 0s: never).
    #[arg(long, value_name = "DURATION", value_parser = raw_duration)]
    health_check_interval: Option<RawDuration>,
    /// Flag-defined pool: connections per backend per worker thread.
    #[arg(long)]
    server_connections: Option<usize>,
    /// Flag-defined pool: largest value accepted (bytes, or e.g. 1m).
    #[arg(long, value_name = "SIZE")]
    item_size_max: Option<String>,
    /// Flag-defined pool: answer a failed backend's part of a retrieval as `miss` or `error`.
    #[arg(long, value_name = "POLICY", value_parser = parse_name::<RetrievalFailure>)]
    retrieval_failure: Option<RetrievalFailure>,
    /// Flag-defined pool: what the servers speak: memcached or tokyotyrant.
    #[arg(long, value_parser = parse_name::<BackendProtocol>)]
    protocol: Option<BackendProtocol>,
    /// Flag-defined pool (tokyotyrant): keep client flags by storing them in values.
    #[arg(long)]
    preserve_flags: bool,
}

/// A log level (with the common aliases syslog and other tools use), or comma-separated
/// `target=level` filters, normalised for tracing; anything else is refused rather than
/// silently read as a target name (which would turn every log line off).
fn log_filter(s: &str) -> Result<String, String> {
    let level = |w: &str| -> Result<&'static str, String> {
        Ok(match w.trim().to_ascii_lowercase().as_str() {
            "trace" => "trace",
            "debug" => "debug",
            "info" | "notice" => "info",
            "warn" | "warning" => "warn",
            "error" | "err" | "critical" | "crit" | "fatal" => "error",
            "off" | "none" => "off",
            other => {
                return Err(format!(
                    "unknown log level '{other}' (error, warn, info, debug, trace, off)"
                ))
            }
        })
    };
    let mut out = Vec::new();
    for directive in s.split(',').filter(|d| !d.trim().is_empty()) {
        match directive.split_once('=') {
            Some((target, l)) if !target.trim().is_empty() => {
                out.push(format!("{}={}", target.trim(), level(l)?))
            }
            Some(_) => return Err(format!("'{directive}': a filter is target=level")),
            None => out.push(level(directive)?.to_string()),
        }
    }
    match out.is_empty() {
        true => Err("empty log level".into()),
        false => Ok(out.join(",")),
    }
}

/// A duration flag: a number of milliseconds, or a number with its unit.
fn raw_duration(s: &str) -> Result<RawDuration, String> {
    match s.parse::<u64>() {
        Ok(ms) => Ok(RawDuration::Number(ms)),
        Err(_) => Ok(RawDuration::Text(s.to_owned())),
    }
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Print which backend owns each key (and, asked of a running proxy during warm-up, the
    /// previous owner).
    Route {
        /// The configuration to compute from.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Ask the running proxy's admin listener instead.
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// Keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

impl Cli {
    /// The raw configuration: the config file's `text` when a file is given, else the
    /// flag-defined pool; flags that apply to both override the file.
    fn raw_config(&self, text: Option<&str>) -> Result<RawConfig> {
        let mut raw = match (&self.config, text) {
            (Some(_), Some(text)) => {
                if self.listen.is_some() || !self.servers.is_empty() || self.embedded {
                    bail!("--listen/--server describe a pool without a file; do not combine them with --config");
                }
                RawConfig::parse(text)?
            }
            _ => {
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
                    hash: self.hash,
                    hash_tag: self.hash_tag.clone(),
                    distribution: self.distribution,
                    timeout: self.timeout.clone(),
                    connect_timeout: self.connect_timeout.clone(),
                    health_check_interval: self.health_check_interval.clone(),
                    server_connections: self.server_connections,
                    servers,
                    item_size_max: self.item_size_max.clone().map(RawSize::Text),
                    retrieval_failure: self.retrieval_failure,
                    protocol: self.protocol,
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
        if self.admin.is_some() {
            raw.admin = self.admin.clone();
        }
        Ok(raw)
    }
}

fn print_rings(config: &Config) -> Result<()> {
    // The same rings the server would build (every backend live at start).
    let generation = Generation::build(config.clone(), None)?;
    // Written, not printed: a reader that leaves (`| head`) ends the output, not a panic.
    let mut out = std::io::stdout().lock();
    for (pool, state) in config.pools.iter().zip(&generation.pools) {
        let ring = &state.ring;
        writeln!(
            out,
            "pool {}: listen {}, hash {}, distribution {}, hash_tag {}, {} servers",
            pool.name,
            pool.listen
                .map_or("none (a route target)".to_string(), |l| l.to_string()),
            pool.hash,
            pool.distribution,
            pool.hash_tag.map_or("none".to_string(), |t| t.to_string()),
            pool.servers.len()
        )?;
        for (server, points) in pool.servers.iter().zip(ring.points_per_server()) {
            writeln!(
                out,
                "  {:<28} weight {:<4} name {:<28} points {}",
                server.address(),
                server.weight,
                server.identity(),
                points
            )?;
        }
    }
    write!(out, "{}", memroute::route::describe(config))?;
    Ok(())
}

/// Re-reads the config file and switches to it; an invalid file changes nothing.
/// Applies config file changes to the running proxy.
struct Reloader<'a> {
    cli: &'a Cli,
    shared: Arc<Shared>,
    /// The file's text when last applied (the file watch skips events that change nothing).
    last: String,
    admin: Option<Admin>,
    metrics: Option<PrometheusHandle>,
    /// The file watch, told which TLS files the configuration in use reads.
    watch: Option<FileWatch>,
}

impl Reloader<'_> {
    /// Re-reads the file and applies it, all or nothing: a file that does not validate, a
    /// listen or admin address that cannot be bound, or a ring that cannot be built keeps
    /// the running configuration (counted in `memroute_reloads_total{result="error"}`).
    /// `always`: SIGHUP re-applies an unchanged file (re-resolving host names).
    fn reload(&mut self, why: &str, always: bool) {
        let Some(path) = &self.cli.config else {
            tracing::warn!("{why}: no config file to reload (pool given by flags)");
            return;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                memroute::counters::RELOADS_FAILED.inc();
                tracing::error!(
                    "{why}: cannot read {}: {e}; keeping the running configuration",
                    path.display()
                );
                return;
            }
        };
        if text == self.last && !always {
            return;
        }
        match self.apply(&text) {
            Ok((id, changes)) => {
                memroute::counters::RELOADS_OK.inc();
                self.last = text;
                if let Some(w) = &mut self.watch {
                    w.set_tls_files(self.shared.generation().config.tls_files());
                }
                if changes.is_empty() {
                    tracing::info!(
                        "{why}: configuration reloaded, nothing changed (generation {id})"
                    );
                } else {
                    tracing::info!(
                        "{why}: configuration reloaded (generation {id}), {} changes",
                        changes.len()
                    );
                }
                for change in changes {
                    tracing::info!("reload: {change}");
                }
            }
            Err(e) => {
                memroute::counters::RELOADS_FAILED.inc();
                tracing::error!("{why}: configuration rejected, keeping the running one: {e}");
            }
        }
    }

    fn apply(&mut self, text: &str) -> Result<(u64, Vec<String>)> {
        let mut raw = RawConfig::parse(text)?;
        raw.threads = self.cli.threads.or(raw.threads);
        raw.max_clients = self.cli.max_clients.or(raw.max_clients);
        let config = raw.validate()?;
        let current = self.admin.as_ref().map(Admin::addr);
        // The new admin listener is bound before anything changes: if it cannot be, nothing does.
        let admin = match config.admin {
            Some(addr) if Some(addr) != current => {
                let admin = Admin::start(addr, self.shared.clone(), self.metrics.clone())
                    .with_context(|| format!("admin: cannot listen on {addr}"))?;
                Some(Some(admin))
            }
            Some(_) => None,
            None => Some(None),
        };
        let applied = self.shared.reload(config)?;
        if let Some(admin) = admin {
            if admin.is_none() && self.admin.is_some() {
                tracing::info!("admin listener closed");
            }
            self.admin = admin;
        }
        Ok(applied)
    }
}

/// What changed on disk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Changed {
    /// The config file.
    Config,
    /// A certificate, key or CA file the config names.
    Tls,
}

/// Watches the config file and the TLS files it names (their folders, since editors and
/// certificate tools replace files) for changes.
struct FileWatch {
    watcher: notify::RecommendedWatcher,
    dirs: std::collections::HashSet<PathBuf>,
    tls: Arc<std::sync::Mutex<Vec<PathBuf>>>,
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

impl FileWatch {
    fn start(config: &Path, tx: mpsc::Sender<Changed>) -> notify::Result<FileWatch> {
        use notify::Watcher;
        let target = config.file_name().map(|n| n.to_owned());
        let tls: Arc<std::sync::Mutex<Vec<PathBuf>>> = Arc::default();
        let files = tls.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if !(event.kind.is_modify() || event.kind.is_create()) {
                    return;
                }
                let files = files.lock().unwrap_or_else(|e| e.into_inner());
                for p in &event.paths {
                    let changed = match files.iter().any(|f| f == p) {
                        true => Changed::Tls,
                        false if p.file_name() == target.as_deref() => Changed::Config,
                        false => continue,
                    };
                    let _ = tx.try_send(changed);
                }
            })?;
        let dir = parent(config);
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        Ok(FileWatch {
            watcher,
            dirs: [dir].into(),
            tls,
        })
    }

    /// Watches `files` from now on (the TLS files of the configuration in use).
    fn set_tls_files(&mut self, files: Vec<PathBuf>) {
        use notify::Watcher;
        for f in &files {
            let dir = parent(f);
            if !self.dirs.contains(&dir) {
                match self
                    .watcher
                    .watch(&dir, notify::RecursiveMode::NonRecursive)
                {
                    Ok(()) => {
                        self.dirs.insert(dir);
                    }
                    Err(e) => tracing::warn!("not watching {} for changes: {e}", f.display()),
                }
            }
        }
        *self.tls.lock().unwrap_or_else(|e| e.into_inner()) = files;
    }
}

/// Starts the proxy and runs until SIGTERM/SIGINT, reloading on SIGHUP and when the config
/// file changes. Signal handlers and the file watch are in place before the file is read,
/// so neither a SIGHUP nor an edit during start-up is lost.
async fn run(cli: &Cli) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, mut changes) = mpsc::channel(16);
    let mut watch = match &cli.config {
        Some(path) => match FileWatch::start(path, tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("not watching {} for changes: {e}", path.display());
                None
            }
        },
        None => None,
    };
    let last = match &cli.config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => String::new(),
    };
    let config = cli.raw_config(Some(&last))?.validate()?;
    // Before the backends exist, so their latency histograms register with it.
    let metrics = config
        .admin
        .and_then(|_| memroute::admin::install_metrics());
    if let Some(w) = &mut watch {
        w.set_tls_files(config.tls_files());
    }
    let server = Server::bind(config.clone())?;
    for (l, addr) in config.listeners.iter().zip(server.local_addrs()) {
        let tls = if l.client.tls.is_some() { " (TLS)" } else { "" };
        tracing::info!(
            "{} listening on {addr}{tls}, {} worker threads",
            l.target,
            config.threads
        );
    }
    let shared = server.shared();
    let admin = match config.admin {
        Some(addr) => Some(
            Admin::start(addr, shared.clone(), metrics.clone())
                .with_context(|| format!("admin: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let mut reloader = Reloader {
        cli,
        shared,
        last,
        admin,
        metrics,
        watch,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let running = std::thread::spawn(move || server.run(stop_rx));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => reloader.reload("SIGHUP", true),
            Some(first) = changes.recv() => {
                // Editors write in several steps: let the burst settle, then read once. A
                // certificate and its key are replaced one after the other: give the pair
                // longer, so the reload does not see a new key with the old certificate.
                let settle = match first {
                    Changed::Config => 100,
                    Changed::Tls => 1000,
                };
                tokio::time::sleep(std::time::Duration::from_millis(settle)).await;
                let mut tls = first == Changed::Tls;
                while let Ok(c) = changes.try_recv() {
                    tls |= c == Changed::Tls;
                }
                match tls {
                    // Same file text, new certificates: apply it all the same.
                    true => reloader.reload("TLS file changed", true),
                    false => reloader.reload("config file changed", false),
                }
            }
        }
    }
    tracing::info!("shutting down: finishing requests in flight");
    let _ = stop_tx.send(true);
    tokio::task::spawn_blocking(move || running.join())
        .await?
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    Ok(())
}

/// `memroute route`: where keys go.
fn route(config: Option<&Path>, admin: Option<&str>, keys: &[String]) -> Result<()> {
    if let Some(addr) = admin {
        // Ask the running proxy, which also knows the previous owner during warm-up.
        for key in keys {
            let mut s =
                std::net::TcpStream::connect(addr).with_context(|| format!("admin {addr}"))?;
            let encoded: String = key
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            write!(s, "GET /route?key={encoded} HTTP/1.0\r\n\r\n")?;
            let mut response = String::new();
            s.read_to_string(&mut response)?;
            print!("{}", response.split("\r\n\r\n").nth(1).unwrap_or(""));
        }
        return Ok(());
    }
    let path = config.context("route needs --config FILE or --admin ADDR")?;
    let config = RawConfig::load(path)?.validate()?;
    let generation = Generation::build(config, None)?;
    for key in keys {
        print!(
            "{}",
            memroute::admin::route_text(&generation, key.as_bytes())
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `memroute --check | head -1`: the reader left; nothing more to say.
        Err(e) if broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memroute: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether `e` comes from writing to a closed pipe.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// An error and its causes on one line, each cause once (an error that already quotes its
/// source is not followed by it again).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}

/// Sets up logging: `--log-level`, else RUST_LOG, else info; text (colours only on a
/// terminal) or JSON, to standard error.
fn init_logging(cli: &Cli) -> Result<()> {
    use std::io::IsTerminal;
    let filter = match &cli.log_level {
        Some(level) => tracing_subscriber::EnvFilter::try_new(level)?,
        None => match std::env::var("RUST_LOG") {
            Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::try_new(
                log_filter(&v).map_err(|e| anyhow::anyhow!("RUST_LOG: {e}"))?,
            )?,
            _ => tracing_subscriber::EnvFilter::new("info"),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match cli.log_format.as_str() {
        "json" => builder.json().init(),
        _ => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    Ok(())
}

fn run_cli() -> Result<()> {
    let cli = Cli::parse();
    init_logging(&cli)?;

    if let Some(Cmd::Route {
        config,
        admin,
        keys,
    }) = &cli.command
    {
        return route(config.as_deref(), admin.as_deref(), keys);
    }
    if cli.check {
        let text = match &cli.config {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            ),
            None => None,
        };
        let config = cli.raw_config(text.as_deref())?.validate()?;
        print_rings(&config)?;
        writeln!(std::io::stdout(), "configuration ok")?;
        return Ok(());
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(&cli))?;
    Ok(())
}
