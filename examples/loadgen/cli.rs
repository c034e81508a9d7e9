//! Command-line options (`Args`) and their validation.

use crate::values::MIN_VALUE_SIZE;
use clap::{Parser, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "Verifying memcached load generator, text, meta or binary protocol (memroute benchmarks)"
)]
pub struct Args {
    /// Server or proxy to load, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:11211")]
    pub target: String,
    /// Client connections.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Requests kept outstanding per connection (pipeline depth, closed loop).
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Tokio runtime worker threads (1 = current-thread runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Measured duration in seconds (0 with --prefill: prefill only).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured warm-up in seconds before the measured window.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Fraction of requests that are gets; the rest are sets.
    #[arg(long, default_value_t = 0.9)]
    pub get_ratio: f64,
    /// Key space size.
    #[arg(long, default_value_t = 10000)]
    pub keys: u32,
    /// Key length in bytes.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value length in bytes for sets.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Key popularity distribution.
    #[arg(long, value_enum, default_value_t = Dist::Uniform)]
    pub dist: Dist,
    /// Zipf exponent for --dist zipf.
    #[arg(long, default_value_t = 0.99)]
    pub zipf_s: f64,
    /// Distinct keys per get request (>1 sends `get k1 k2 ...`; text protocol only).
    #[arg(long, default_value_t = 1)]
    pub multiget: usize,
    /// Request protocol: text (`get`/`set`), meta (`mg <key> v` reads, answered
    /// `VA`/`EN`, and `ms <key> <len> T0 F<flags>` writes, answered `HD`) or binary (Get and
    /// Set packets, each with an opaque its response must echo).
    #[arg(long, value_enum, default_value_t = Protocol::Text)]
    pub protocol: Protocol,
    /// Meta: send reads as quiet `mg <key> v q k` (a miss is not answered) and end every
    /// batch (--depth requests) with `mn`: a hit is matched to its request by the key its
    /// `VA` returns, the requests skipped before it and before `MN` were misses.
    #[arg(long)]
    pub meta_quiet: bool,
    /// Meta: tag every request with `O<n>` (a per-connection sequence number) and check
    /// that each reply echoes the opaque of the request it answers.
    #[arg(long)]
    pub meta_opaque: bool,
    /// Binary: send reads as GetKQ (a miss is not answered) and end every batch (--depth
    /// requests) with a Noop: a hit is matched to its request by the opaque it echoes (and
    /// must carry its key), the reads passed over before it and the Noop's response missed.
    #[arg(long)]
    pub binary_quiet: bool,
    /// Connect with TLS, trusting the CA certificate(s) in this PEM file (the handshake is
    /// done before the measured window). Not with --soak-config.
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// With --tls-ca: the name the server's certificate must carry (DNS name or IP).
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub tls_name: String,
    /// Closed loop: a new connection for every batch of --depth requests (short-lived
    /// clients, PHP-style); the connect is part of the measured time.
    #[arg(long)]
    pub reconnect: bool,
    /// Set every key once before measuring, so gets should hit.
    #[arg(long)]
    pub prefill: bool,
    /// Keys were prefilled by an earlier run: count misses as unexpected.
    #[arg(long)]
    pub expect_hits: bool,
    /// Open-loop request rate in ops/s over all connections (0 = closed loop).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Do not print the human-readable summary.
    #[arg(long)]
    pub quiet: bool,
    /// Special mode: hold N idle (verified) connections for --duration, then exit.
    #[arg(long, default_value_t = 0)]
    pub idle_connections: usize,
    /// Soak mode: the memroute config the target runs with; key owners are computed from
    /// it with memroute's own ring. Each connection reads and writes only its own keys and
    /// checks every reply against their exact history; at the end every backend is read
    /// directly to check placement. Uses --connections, --depth, --duration, --get-ratio,
    /// --keys, --key-size, --value-size, --rate (paces batches of --depth; 0: as fast as
    /// replies come); --multiget is the largest key count of a get (each asks 1..=N keys).
    #[arg(long, value_name = "FILE")]
    pub soak_config: Option<PathBuf>,
    /// Soak mode: the backend being killed and restarted (its address host:port or its
    /// name in the config). Its keys may miss or get SERVER_ERROR; all others may not.
    #[arg(long, value_name = "SERVER")]
    pub volatile: Option<String>,
    /// Soak mode: seconds a pipelined batch may wait for its replies before the
    /// connection counts as hung (a connection error).
    #[arg(long, default_value_t = 10.0)]
    pub batch_timeout: f64,
    /// Soak mode: print a progress line every this many seconds (0: never).
    #[arg(long, default_value_t = 10.0)]
    pub progress: f64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq)]
pub enum Protocol {
    Text,
    Meta,
    Binary,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    Uniform,
    Zipf,
}

pub fn validate(a: &Args) -> Result<(), String> {
    let digits = a.keys.saturating_sub(1).max(1).ilog10() as usize + 1;
    if a.keys == 0 {
        return Err("--keys must be > 0".into());
    }
    if a.key_size < 2 + digits || a.key_size > 250 {
        return Err(format!(
            "--key-size must be in {}..=250 for {} keys",
            2 + digits,
            a.keys
        ));
    }
    if a.value_size < MIN_VALUE_SIZE {
        return Err(format!("--value-size must be >= {MIN_VALUE_SIZE}"));
    }
    if a.connections == 0 || a.depth == 0 || a.threads == 0 {
        return Err("--connections, --depth and --threads must be > 0".into());
    }
    if a.multiget == 0 || a.multiget > a.keys as usize {
        return Err("--multiget must be in 1..=keys".into());
    }
    if !(0.0..=1.0).contains(&a.get_ratio) {
        return Err("--get-ratio must be in [0, 1]".into());
    }
    if a.rate < 0.0 || a.duration < 0.0 || a.warmup < 0.0 {
        return Err("--rate, --duration and --warmup must be >= 0".into());
    }
    if a.protocol != Protocol::Text {
        if a.multiget > 1 {
            return Err("--multiget needs --protocol text (mg and Get read one key)".into());
        }
        if a.soak_config.is_some() {
            return Err("--soak-config needs --protocol text".into());
        }
    }
    if a.protocol != Protocol::Meta && (a.meta_quiet || a.meta_opaque) {
        return Err("--meta-quiet and --meta-opaque need --protocol meta".into());
    }
    if a.protocol != Protocol::Binary && a.binary_quiet {
        return Err("--binary-quiet needs --protocol binary".into());
    }
    if a.soak_config.is_some() {
        if a.prefill || a.expect_hits || a.idle_connections > 0 {
            return Err(
                "--soak-config does not combine with --prefill, --expect-hits or --idle-connections"
                    .into(),
            );
        }
        if a.tls_ca.is_some() {
            return Err("--soak-config does not support --tls-ca".into());
        }
        if a.keys as usize / a.connections < a.multiget.max(1) {
            return Err("soak mode needs at least --multiget keys per connection".into());
        }
        if a.batch_timeout.is_nan() || a.batch_timeout <= 0.0 || a.progress < 0.0 {
            return Err("--batch-timeout must be > 0 and --progress >= 0".into());
        }
    } else if a.volatile.is_some() {
        return Err("--volatile needs --soak-config".into());
    }
    Ok(())
}
