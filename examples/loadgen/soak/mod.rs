//! Soak mode (`--soak-config`): verification of memroute under backend faults.
//!
//! Key k belongs to connection k % connections, which alone reads and writes it, so the
//! exact history of every key is known to one task: the versions it sent, the last one
//! acknowledged (STORED) and the newest one a get returned. Replies are checked in
//! pipeline order, so when a get's reply is checked, every set sent before it on that
//! connection has been answered. The owner of each key comes from the memroute config,
//! through memroute's own ring.
//!
//! Failures (exit 1): wrong values (a value of another key, bad flags, corrupted filler,
//! a version never written or not yet sent, a malformed or misordered reply); lost writes
//! on stable keys (a miss, or a version older than one acknowledged or already seen);
//! any error reply for a stable key; keys found on a backend that does not own them, or
//! acknowledged versions missing from their owner when it is read directly at the end.
//! Connection errors (the client connection broke or hung) exit 3.
//! Volatile keys (owned by --volatile) may miss and may get SERVER_ERROR; a value returned
//! for one must still be of the right key and a version that was sent before the get.
//! An older version than one acknowledged is counted (`volatile_stale`), not failed: a
//! write that timed out may still land late.
//!
//! Replicated: when the target is a replicated route's listener, every key has an owner in
//! each copy (pool) of the route, and its volatile keys are those with a copy on
//! --volatile. Only their writes may fail (the route answers a write with the worst of
//! the copies' replies; a write answered with an error may have landed on the live copy,
//! and either version is fine until the next one acknowledged). Their reads are held to
//! the stable keys' rules: an error (`volatile_read_errors`), a miss after a version was
//! acknowledged or seen, or an older version are failures — the other copy holds the key
//! (with `read = "miss_failover"`; plain failover answers the restarted copy's misses).
//! At the end each copy is checked on its own owner (see `final_check`), against the
//! backends' restarts as `watch` saw them.
//!
//! `ownership` computes who owns each key, `conn` drives one connection and checks its
//! replies with `bookkeeping`, `final_check` reads every backend directly at the end,
//! `watch` dates the backends' restarts (replicated) and `report` prints and writes the
//! result.

mod bookkeeping;
mod conn;
mod final_check;
mod ownership;
mod report;
mod watch;

use self::bookkeeping::{load, ReplicaCounters, Soak, SoakCounters, Track};
use self::conn::soak_conn;
use self::final_check::soak_final_check;
use self::ownership::{soak_plan, SoakPlan};
use self::report::soak_report;
use self::watch::{watch_backend, Watch};
use crate::cli::Args;
use crate::report::new_hist;
use crate::shared::{build_shared, lock};
use crate::values::format_hex8;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{sleep_until, Instant};

/// A host stall worth recording, ms (see `Soak::stalls`).
const STALL_MS: u64 = 100;

/// Records host stalls until the run ends: a thread outside the runtime sleeps 10 ms at a
/// time and notes how late it wakes.
fn stall_watch(sk: Arc<Soak>) {
    let start = sk.start.into_std();
    let end = sk.end.into_std();
    let tick = Duration::from_millis(10);
    loop {
        let before = std::time::Instant::now();
        if before >= end {
            break;
        }
        std::thread::sleep(tick);
        let late = before.elapsed().saturating_sub(tick).as_millis() as u64;
        if late > STALL_MS {
            let at = before.duration_since(start).as_secs_f64();
            lock(&sk.stalls).push((at, late));
        }
    }
}

pub async fn soak_mode(args: Args, path: PathBuf) -> i32 {
    let SoakPlan {
        servers,
        copies,
        volatile,
        replication,
    } = match soak_plan(&args, &path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("loadgen: soak: {e}");
            return 2;
        }
    };
    let mut per_server = vec![0u64; servers.len()];
    for &o in copies.iter().flat_map(|c| &c.owners) {
        per_server[o as usize] += 1;
    }
    let watch = match replication {
        Some(_) => servers.iter().map(|_| Watch::default()).collect(),
        None => Vec::new(),
    };
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let sk = Arc::new(Soak {
        sh: build_shared(&args, start, end),
        servers,
        copies,
        volatile,
        replication,
        c: SoakCounters::default(),
        rc: ReplicaCounters::default(),
        watch,
        samples: Mutex::new(Vec::new()),
        failure_seconds: Mutex::new(Default::default()),
        stalls: Mutex::new(Vec::new()),
        start,
        end,
        batch_timeout: Duration::from_secs_f64(args.batch_timeout),
        volatile_error_last_ms: AtomicU64::new(0),
    });
    if !args.quiet {
        println!(
            "soak: target {}  {} conns  depth {}  rate {}  get-ratio {}  multiget 1..={}  {} keys  {:.0} s  run id {}",
            args.target,
            args.connections,
            args.depth,
            if args.rate > 0.0 { format!("{} ops/s", args.rate) } else { "unpaced".into() },
            args.get_ratio,
            args.multiget,
            args.keys,
            args.duration,
            String::from_utf8_lossy(&format_hex8(sk.sh.run_id))
        );
        if let Some(r) = &sk.replication {
            let pools: Vec<&str> = sk.copies.iter().map(|c| c.pool.as_str()).collect();
            println!(
                "soak: replicated route {} over copies {} (write = {}, read = {})",
                r.route,
                pools.join(", "),
                r.write,
                r.read
            );
        }
        for (i, s) in sk.servers.iter().enumerate() {
            let copy = match sk.replication {
                Some(_) => format!(" (copy {})", sk.copies[s.copy].pool),
                None => String::new(),
            };
            println!(
                "soak: backend {} {}{}{}: {} keys",
                i + 1,
                s.address,
                copy,
                if sk.volatile == Some(i) {
                    " (volatile)"
                } else {
                    ""
                },
                per_server[i]
            );
        }
        let _ = io::stdout().flush();
    }
    let progress = (args.progress > 0.0 && !args.quiet).then(|| {
        let sk = sk.clone();
        let every = Duration::from_secs_f64(args.progress);
        tokio::spawn(async move {
            let c = &sk.c;
            let (mut ops0, mut vm0, mut ve0) = (0, 0, 0);
            let mut at = sk.start + every;
            while at < sk.end {
                sleep_until(at).await;
                let (ops, vm) = (load(&c.ops), load(&c.volatile_misses));
                let ve = load(&c.volatile_get_errors) + load(&c.volatile_set_errors);
                println!(
                    "soak: {:>5.0}s  {:>8.0} ops/s  volatile misses +{}  errors +{}  failures {}  connection errors {}",
                    sk.start.elapsed().as_secs_f64(),
                    (ops - ops0) as f64 / every.as_secs_f64(),
                    vm - vm0,
                    ve - ve0,
                    sk.failures(),
                    load(&c.connection_errors)
                );
                let _ = io::stdout().flush();
                (ops0, vm0, ve0) = (ops, vm, ve);
                at += every;
            }
        })
    });
    let watch = {
        let sk = sk.clone();
        std::thread::spawn(move || stall_watch(sk))
    };
    let restarts: Vec<_> = (0..sk.watch.len())
        .map(|i| tokio::spawn(watch_backend(sk.clone(), i)))
        .collect();
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| tokio::spawn(soak_conn(sk.clone(), i)))
        .collect();
    let mut tracks = vec![Track::default(); args.keys as usize];
    let mut hist = new_hist();
    for t in tasks {
        match t.await {
            Ok((mine, h)) => {
                for (k, t) in mine {
                    tracks[k as usize] = t;
                }
                let _ = hist.add(&h);
            }
            Err(e) => sk.note(&sk.c.connection_errors, "connection task", e.to_string()),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
    }
    let _ = watch.join();
    for r in restarts {
        if let Err(e) = r.await {
            sk.note(&sk.c.connection_errors, "restart watch", e.to_string());
        }
    }
    soak_final_check(&sk, &tracks).await;
    soak_report(&args, &sk, &per_server, &hist, elapsed)
}
