//! `loadgen`: a verifying load generator for the memcached text, meta and binary protocols.
//!
//! It drives `get`/`set` traffic (optionally pipelined, multi-get, zipfian, closed or
//! fixed-rate open loop) at a memcached-compatible endpoint, records latency in an HDR
//! histogram and checks every reply: each value encodes its key index, this run's id and a
//! per-key version, and the flags carry the key index, so misrouted, reordered, stale or
//! corrupted replies are counted as verification errors (exit code 1). Connection errors
//! exit with code 3. `--protocol meta` sends `mg <key> v` / `ms <key> <len> T0 F<flags>`
//! instead, with `--meta-quiet` as pipelined quiet `mg <key> v q k` batches ended by `mn`
//! (a hit is matched to its request by the key it returns, misses are the requests passed
//! over), and checks the same values. `--protocol binary` sends Get and Set packets (with
//! `--binary-quiet`, GetKQ batches ended by a Noop), each tagged with an opaque its response
//! must echo, and checks the same values and flags.
//!
//! Run it with `cargo run --release --example loadgen -- --help`, e.g.
//! `cargo run --release --example loadgen -- --target 127.0.0.1:22122 --prefill --depth 16`.
//! `--tls-ca ca.pem [--tls-name NAME]` connects with TLS (every mode but soak); all
//! connections are open, handshakes done, before the warm-up and measured window begin.
//! `scripts/bench.sh` uses it to compare memcached, twemproxy and memroute.
//!
//! Soak mode (`--soak-config FILE [--volatile SERVER]`) checks memroute under backend
//! faults instead: every key's owner is computed from memroute's config with memroute's
//! own ring, each connection owns its keys, and every reply is checked against their exact
//! history (no wrong values, no lost acknowledged writes on backends that stay up, no key
//! on a backend that does not own it). `scripts/soak.sh` runs it while killing a backend.
//!
//! Layout: `cli` (options), `shared` (run-wide state and key names), `values` (the value
//! encoding and its verification), `versions` (which versions a get may return),
//! `protocol` (connections, read buffer, reply framing), `batch` (requests in flight),
//! `workload` (request building, reply checking, closed/open loop and prefill drivers),
//! `meta` (the meta protocol's requests, and matching and checking its replies), `binary`
//! (the binary protocol's packets, and matching and checking its responses),
//! `report` (counters, latency, text and JSON output), `tls` (TLS settings and the plain or
//! TLS connection), `idle` (idle-connection mode) and
//! `soak` (soak mode).

mod batch;
mod binary;
mod cli;
mod idle;
mod meta;
mod protocol;
mod report;
mod shared;
mod soak;
mod tls;
mod values;
mod versions;
mod workload;

use clap::Parser;
use cli::{validate, Args};
use report::{report, Stats};
use shared::build_shared;
use std::sync::Arc;
use std::time::Duration;
use tls::TlsClient;
use tokio::time::Instant;
use workload::{closed_loop, open_loop, preconnect, prefill};

/// Runs the mode the options ask for; returns the exit code.
async fn run(args: Args, tls: Option<TlsClient>) -> i32 {
    if args.idle_connections > 0 {
        return idle::idle_mode(&args, tls).await;
    }
    if let Some(path) = args.soak_config.clone() {
        return soak::soak_mode(args, path).await;
    }
    // Placeholder window; the real one is set once prefill is done.
    let now = Instant::now();
    let mut shared = build_shared(&args, now, now);
    shared.tls = tls;
    let mut shared = Arc::new(shared);
    let mut total = Stats::new();
    let mut tls_session = None;
    if args.prefill {
        let t = Instant::now();
        let tasks: Vec<_> = (0..args.connections.min(args.keys as usize))
            .map(|i| tokio::spawn(prefill(shared.clone(), i)))
            .collect();
        for t in tasks {
            match t.await {
                Ok(s) => total.merge(Stats { hist: None, ..s }),
                Err(e) => total.cerr(format!("prefill task: {e}")),
            }
        }
        if !args.quiet {
            println!("prefilled {} keys in {:.2?}", args.keys, t.elapsed());
        }
    }
    if args.duration > 0.0 {
        // Every connection is open (and its TLS handshake done) before the window is set.
        let conns = preconnect(&args.target, shared.tls.as_ref(), args.connections).await;
        tls_session = conns.iter().flatten().find_map(|s| s.tls_session());
        let measure_start = Instant::now() + Duration::from_secs_f64(args.warmup);
        let end = measure_start + Duration::from_secs_f64(args.duration);
        {
            // Only the window changes; key state (versions) carries over.
            let sh = Arc::get_mut(&mut shared).expect("no other owners after prefill");
            sh.measure_start = measure_start;
            sh.end = end;
        }
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if args.rate > 0.0 {
                    tokio::spawn(open_loop(shared.clone(), i, c))
                } else {
                    tokio::spawn(closed_loop(shared.clone(), i, c))
                }
            })
            .collect();
        for t in tasks {
            match t.await {
                Ok(s) => total.merge(s),
                Err(e) => total.cerr(format!("connection task: {e}")),
            }
        }
    }
    report(&args, &total, tls_session)
}

fn main() {
    let args = Args::parse();
    if let Err(e) = validate(&args) {
        eprintln!("loadgen: {e}");
        std::process::exit(2);
    }
    let tls = TlsClient::from_args(&args).unwrap_or_else(|e| {
        eprintln!("loadgen: {e}");
        std::process::exit(2);
    });
    let rt = if args.threads == 1 {
        // One thread avoids cross-thread wakeups: the generator must stay cheap.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = rt.unwrap_or_else(|e| {
        eprintln!("loadgen: runtime: {e}");
        std::process::exit(2);
    });
    let code = rt.block_on(run(args, tls));
    std::process::exit(code);
}
