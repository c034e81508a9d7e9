//! Results of a benchmark run: per-connection counters and latency histograms (`Stats`,
//! merged at the end), and the summary printed as text and written as JSON (`--json`).
//! The JSON field names are read by `scripts/bench.sh`.

use crate::batch::Op;
use crate::cli::{Args, Protocol};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::path::Path;
use tokio::time::Instant;

/// Cap on error messages kept for printing; the counters stay exact.
const MAX_SAMPLES: usize = 10;

/// One connection's counters and latency histogram, merged into the run's total at the
/// end. Errors and unexpected misses count always; the rest only in the measured window.
#[derive(Default)]
pub struct Stats {
    pub ops: u64,
    pub gets: u64,
    pub sets: u64,
    pub get_keys: u64,
    pub hits: u64,
    pub misses: u64,
    pub unexpected_misses: u64,
    pub verification_errors: u64,
    pub connection_errors: u64,
    pub samples: Vec<String>,
    pub hist: Option<Histogram<u64>>,
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            hist: Some(new_hist()),
            ..Default::default()
        }
    }

    pub fn verr(&mut self, msg: String) {
        self.verification_errors += 1;
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(format!("verification: {msg}"));
        }
    }

    pub fn cerr(&mut self, msg: String) {
        self.connection_errors += 1;
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(format!("connection: {msg}"));
        }
    }

    /// Counts an answered request (one in the measured window): its kind, its keys and its
    /// latency.
    pub fn count_op(&mut self, op: &Op) {
        self.ops += 1;
        if op.get {
            self.gets += 1;
            self.get_keys += op.n as u64;
        } else {
            self.sets += 1;
        }
        if let Some(h) = self.hist.as_mut() {
            record_latency(h, op.t0);
        }
    }

    pub fn merge(&mut self, o: Stats) {
        self.ops += o.ops;
        self.gets += o.gets;
        self.sets += o.sets;
        self.get_keys += o.get_keys;
        self.hits += o.hits;
        self.misses += o.misses;
        self.unexpected_misses += o.unexpected_misses;
        self.verification_errors += o.verification_errors;
        self.connection_errors += o.connection_errors;
        for s in o.samples {
            if self.samples.len() < MAX_SAMPLES {
                self.samples.push(s);
            }
        }
        if let (Some(h), Some(oh)) = (self.hist.as_mut(), o.hist.as_ref()) {
            // Both share bounds, so adding cannot fail.
            let _ = h.add(oh);
        }
    }
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Records the latency of a request sent (or scheduled) at `t0`, in microseconds.
pub fn record_latency(h: &mut Histogram<u64>, t0: Instant) {
    let us = t0.elapsed().as_micros() as u64;
    h.saturating_record(us.clamp(1, 60_000_000));
}

/// The latency at quantile `q`, 0 if nothing was recorded.
pub fn quantile(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

/// Writes a JSON report; says so if it cannot (the caller then exits with code 2).
pub fn write_json(p: &Path, text: String) -> bool {
    if let Err(e) = std::fs::write(p, text) {
        eprintln!("cannot write {}: {e}", p.display());
        return false;
    }
    true
}

#[derive(Serialize)]
struct Report {
    target: String,
    mode: &'static str,
    /// `text`, `meta` (loud `mg`/`ms`), `meta-quiet` (`mg ... q k` batches ended by `mn`),
    /// `binary` (Get/Set) or `binary-quiet` (GetKQ batches ended by a Noop).
    protocol: &'static str,
    meta_opaque: bool,
    /// Connected with TLS (`--tls-ca`).
    tls: bool,
    /// The TLS version and cipher suite negotiated (on the first connection).
    tls_session: Option<String>,
    connections: usize,
    depth: usize,
    threads: usize,
    duration_s: f64,
    warmup_s: f64,
    get_ratio: f64,
    keys: u32,
    key_size: usize,
    value_size: usize,
    dist: String,
    multiget: usize,
    rate: f64,
    prefill: bool,
    ops: u64,
    gets: u64,
    sets: u64,
    get_keys: u64,
    hits: u64,
    misses: u64,
    unexpected_misses: u64,
    verification_errors: u64,
    connection_errors: u64,
    ops_per_sec: f64,
    keys_per_sec: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    mean_us: f64,
    error_samples: Vec<String>,
}

/// Prints and writes the run's results; `tls_session` is what `Stream::tls_session` told.
pub fn report(args: &Args, t: &Stats, tls_session: Option<String>) -> i32 {
    let h = t.hist.as_ref().expect("total has a histogram");
    let secs = args.duration.max(1e-9);
    let q = |x: f64| quantile(h, x);
    let r = Report {
        target: args.target.clone(),
        mode: if args.rate > 0.0 { "open" } else { "closed" },
        protocol: match args.protocol {
            Protocol::Text => "text",
            Protocol::Meta if args.meta_quiet => "meta-quiet",
            Protocol::Meta => "meta",
            Protocol::Binary if args.binary_quiet => "binary-quiet",
            Protocol::Binary => "binary",
        },
        meta_opaque: args.meta_opaque,
        tls: args.tls_ca.is_some(),
        tls_session,
        connections: args.connections,
        depth: args.depth,
        threads: args.threads,
        duration_s: args.duration,
        warmup_s: args.warmup,
        get_ratio: args.get_ratio,
        keys: args.keys,
        key_size: args.key_size,
        value_size: args.value_size,
        dist: format!("{:?}", args.dist).to_lowercase(),
        multiget: args.multiget,
        rate: args.rate,
        prefill: args.prefill,
        ops: t.ops,
        gets: t.gets,
        sets: t.sets,
        get_keys: t.get_keys,
        hits: t.hits,
        misses: t.misses,
        unexpected_misses: t.unexpected_misses,
        verification_errors: t.verification_errors,
        connection_errors: t.connection_errors,
        ops_per_sec: t.ops as f64 / secs,
        keys_per_sec: t.get_keys as f64 / secs,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: h.max(),
        mean_us: h.mean(),
        error_samples: t.samples.clone(),
    };
    if !args.quiet {
        let tls = match (&r.tls_session, r.tls) {
            (Some(s), _) => format!(" ({s})"),
            (None, true) => " (TLS)".into(),
            (None, false) => String::new(),
        };
        println!(
            "target {}{}  {}  {} loop  conns {}  depth {}  threads {}  get-ratio {}  multiget {}  dist {}  value {} B",
            r.target, tls, r.protocol, r.mode, r.connections, r.depth, r.threads, r.get_ratio, r.multiget, r.dist, r.value_size
        );
        println!(
            "{:.2} s measured: {} ops, {:.0} ops/s{}",
            secs,
            r.ops,
            r.ops_per_sec,
            if args.multiget > 1 {
                format!(", {:.0} keys/s", r.keys_per_sec)
            } else {
                String::new()
            }
        );
        println!(
            "latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.1}",
            r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.max_us, r.mean_us
        );
        println!(
            "gets {} (keys {})  hits {}  misses {} (unexpected {})  sets {}",
            r.gets, r.get_keys, r.hits, r.misses, r.unexpected_misses, r.sets
        );
        println!(
            "verification errors {}  connection errors {}",
            r.verification_errors, r.connection_errors
        );
    }
    // Errors are printed even with --quiet: they are the point of the check.
    for s in &r.error_samples {
        eprintln!("  {s}");
    }
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&r).unwrap_or_default();
        if !write_json(p, text + "\n") {
            return 2;
        }
    }
    if r.verification_errors > 0 {
        eprintln!("FAIL: {} verification errors", r.verification_errors);
        1
    } else if r.connection_errors > 0 {
        eprintln!("FAIL: {} connection errors", r.connection_errors);
        3
    } else {
        0
    }
}
