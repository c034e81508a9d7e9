//! The soak run's result: a text summary, the JSON report read by `scripts/soak.sh`
//! (`--json`), and the exit code (1: failures, 3: connection errors).

use super::bookkeeping::{load, Soak};
use super::STALL_MS;
use crate::cli::Args;
use crate::report::{quantile, write_json};
use crate::shared::lock;
use hdrhistogram::Histogram;
use std::sync::atomic::AtomicU64;

pub fn soak_report(
    args: &Args,
    sk: &Soak,
    per_server: &[u64],
    h: &Histogram<u64>,
    elapsed: f64,
) -> i32 {
    let c = &sk.c;
    let failures = sk.failures();
    let conn_errors = load(&c.connection_errors);
    let samples = lock(&sk.samples).clone();
    let result = if failures > 0 {
        "fail"
    } else if conn_errors > 0 {
        "fail (connection errors)"
    } else {
        "pass"
    };
    let q = |x: f64| quantile(h, x);
    let mut m = serde_json::Map::new();
    m.insert("mode".into(), "soak".into());
    m.insert("result".into(), result.into());
    m.insert("target".into(), args.target.clone().into());
    m.insert(
        "config".into(),
        args.soak_config
            .as_ref()
            .map(|p| p.display().to_string())
            .into(),
    );
    m.insert(
        "volatile".into(),
        sk.volatile.map(|i| sk.servers[i].address.clone()).into(),
    );
    m.insert(
        "keys_per_backend".into(),
        sk.servers
            .iter()
            .zip(per_server)
            .map(|(s, &n)| (s.address.clone(), n.into()))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    );
    m.insert("connections".into(), args.connections.into());
    m.insert("depth".into(), args.depth.into());
    m.insert("rate".into(), args.rate.into());
    m.insert("get_ratio".into(), args.get_ratio.into());
    m.insert("multiget_max".into(), args.multiget.into());
    m.insert("keys".into(), args.keys.into());
    m.insert("value_size".into(), args.value_size.into());
    m.insert("duration_s".into(), elapsed.into());
    m.insert("failures".into(), failures.into());
    m.extend(c.to_json());
    if let Some(r) = &sk.replication {
        let copies: Vec<serde_json::Value> = sk
            .copies
            .iter()
            .enumerate()
            .map(|(i, copy)| {
                let servers: Vec<&str> = sk
                    .servers
                    .iter()
                    .filter(|s| s.copy == i)
                    .map(|s| s.address.as_str())
                    .collect();
                serde_json::json!({"pool": copy.pool, "servers": servers})
            })
            .collect();
        m.insert(
            "replicated".into(),
            serde_json::json!({
                "route": r.route,
                "write": r.write.to_string(),
                "read": r.read.to_string(),
                "copies": copies,
            }),
        );
        m.extend(sk.rc.to_json());
        let mut restarts = serde_json::Map::new();
        let mut last = serde_json::Map::new();
        for (s, w) in sk.servers.iter().zip(&sk.watch) {
            restarts.insert(s.address.clone(), load(&w.restarts).into());
            let at = w
                .last_restart()
                .map(|t| (t.duration_since(sk.start).as_secs_f64() * 1000.0).round() / 1000.0);
            last.insert(s.address.clone(), at.into());
        }
        m.insert("restarts_detected".into(), restarts.into());
        m.insert("last_restart_detected_s".into(), last.into());
    }
    m.insert(
        "ops_per_sec".into(),
        (load(&c.ops) as f64 / elapsed.max(1e-9)).into(),
    );
    m.insert("p50_us".into(), q(0.5).into());
    m.insert("p99_us".into(), q(0.99).into());
    m.insert("p999_us".into(), q(0.999).into());
    m.insert("max_us".into(), h.max().into());
    let last = load(&sk.volatile_error_last_ms);
    m.insert(
        "volatile_unavailable_last_s".into(),
        (last > 0).then(|| last as f64 / 1000.0).into(),
    );
    let failure_seconds = lock(&sk.failure_seconds).clone();
    let stalls = lock(&sk.stalls).clone();
    m.insert(
        "failure_seconds".into(),
        failure_seconds
            .iter()
            .map(|(s, n)| (s.to_string(), (*n).into()))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    );
    m.insert(
        "host_stalls".into(),
        stalls
            .iter()
            .map(|&(at, ms)| serde_json::json!({"at_s": (at * 10.0).round() / 10.0, "ms": ms}))
            .collect::<Vec<_>>()
            .into(),
    );
    m.insert("error_samples".into(), samples.clone().into());
    if !args.quiet {
        let g = |x: &AtomicU64| load(x);
        println!(
            "soak: {:.1} s, {} ops ({:.0} ops/s; p50 {} us, p99 {} us, max {} us), {} gets ({} keys), {} sets",
            elapsed,
            g(&c.ops),
            g(&c.ops) as f64 / elapsed.max(1e-9),
            q(0.5),
            q(0.99),
            h.max(),
            g(&c.gets),
            g(&c.get_keys),
            g(&c.sets)
        );
        println!(
            "  stable keys:   {} get keys, {} hits, {} misses before any write; {} sets stored",
            g(&c.stable_get_keys),
            g(&c.stable_hits),
            g(&c.stable_initial_misses),
            g(&c.stable_sets_stored)
        );
        println!(
            "  volatile keys: {} get keys, {} hits, {} misses, {} get errors; {} sets stored, {} set errors; {} timeouts among the errors; {} stale (older than acknowledged)",
            g(&c.volatile_get_keys),
            g(&c.volatile_hits),
            g(&c.volatile_misses),
            g(&c.volatile_get_errors),
            g(&c.volatile_sets_stored),
            g(&c.volatile_set_errors),
            g(&c.volatile_timeouts),
            g(&c.volatile_stale)
        );
        let rc = &sk.rc;
        if sk.replication.is_none() {
            println!(
                "  final direct read: {} keys checked; volatile: {} present, {} missing, {} stale, unreachable {}",
                g(&c.final_keys_checked),
                g(&c.final_volatile_present),
                g(&c.final_volatile_missing),
                g(&c.final_volatile_stale),
                g(&c.final_volatile_unreachable)
            );
        } else {
            println!(
                "  replicated: reads of volatile keys: {} errors, {} misses after a write, {} stale (all failures); {} versions whose write was answered with an error were read (they landed on the live copy); {} reads returned a write pipelined after them (a read failing over to the next copy)",
                g(&rc.volatile_read_errors),
                g(&rc.volatile_misses_after_write),
                g(&rc.volatile_stale_reads),
                g(&rc.errored_writes_read),
                g(&rc.later_writes_read)
            );
            let restarts: Vec<String> = sk
                .servers
                .iter()
                .zip(&sk.watch)
                .filter(|(_, w)| load(&w.restarts) > 0 || w.last_restart().is_some())
                .map(|(s, w)| {
                    format!(
                        "{} {} times, last at {}",
                        s.address,
                        load(&w.restarts),
                        w.last_restart().map_or("-".into(), |t| format!(
                            "{:.1}s",
                            t.duration_since(sk.start).as_secs_f64()
                        ))
                    )
                })
                .collect();
            println!(
                "  restarts seen by the probes: {}",
                if restarts.is_empty() {
                    "none".to_string()
                } else {
                    restarts.join("; ")
                }
            );
            println!(
                "  final direct read: {} keys, {} copies checked ({} on backends that never restarted); on restarted backends: {} acknowledged since the restart (held), {} others present, {} missing (it came back empty: allowed); volatile unreachable {}",
                g(&c.final_keys_checked),
                g(&rc.final_copies_checked),
                g(&rc.final_copies_on_steady_backends),
                g(&rc.final_since_restart),
                g(&rc.final_before_restart_present),
                g(&rc.final_before_restart_missing),
                g(&c.final_volatile_unreachable)
            );
        }
        let read_errors = match sk.replication {
            Some(_) => format!("  volatile-key read errors {}", g(&rc.volatile_read_errors)),
            None => String::new(),
        };
        println!(
            "  FAILURES (must be 0): wrong values {}  lost writes {} (misses {}, stale {})  stable-key errors {} (timeouts {}){}  misplaced keys {}  lost in final read {}  connection errors {} (reconnects {})",
            g(&c.wrong_values),
            g(&c.lost_writes),
            g(&c.stable_misses_after_write) + g(&rc.volatile_misses_after_write),
            g(&c.stable_stale_reads) + g(&rc.volatile_stale_reads),
            g(&c.stable_errors),
            g(&c.stable_timeouts),
            read_errors,
            g(&c.misplaced),
            g(&c.final_lost),
            conn_errors,
            g(&c.reconnects)
        );
        let worst = stalls.iter().max_by_key(|s| s.1);
        println!(
            "  host stalls (a 10 ms sleep over {STALL_MS} ms late): {}{}",
            stalls.len(),
            worst.map_or(String::new(), |&(at, ms)| format!(
                ", worst {ms} ms at {at:.1}s; over 400 ms at: {}",
                stalls
                    .iter()
                    .filter(|s| s.1 > 400)
                    .map(|&(at, ms)| format!("{at:.1}s ({ms} ms)"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        );
        if !failure_seconds.is_empty() {
            let list: Vec<String> = failure_seconds
                .iter()
                .map(|(s, n)| format!("{s}s: {n}"))
                .collect();
            println!("  failures by second of the run: {}", list.join(", "));
        }
        println!("soak result: {result}");
    }
    for s in &samples {
        eprintln!("  {s}");
    }
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(m)).unwrap_or_default();
        if !write_json(p, text + "\n") {
            return 2;
        }
    }
    if failures > 0 {
        eprintln!("FAIL: {failures} soak failures");
        1
    } else if conn_errors > 0 {
        eprintln!("FAIL: {conn_errors} connection errors");
        3
    } else {
        0
    }
}
