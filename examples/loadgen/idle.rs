//! Idle-connection mode (`--idle-connections N`): opens N connections, checks each with a
//! `version` request, prints `READY ...` and holds them for `--duration`, so a script can
//! measure the server's memory per idle connection.

use crate::cli::Args;
use crate::protocol::{frame_line, line, lossy, RBuf};
use crate::report::write_json;
use crate::tls::{open, TlsClient};
use std::io::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::sleep;

pub async fn idle_mode(args: &Args, tls: Option<TlsClient>) -> i32 {
    let n = args.idle_connections;
    // Bounded concurrency keeps the listener's accept backlog from overflowing.
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let sem = sem.clone();
        let target = args.target.clone();
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
            let mut s = open(&target, tls.as_ref())
                .await
                .map_err(|e| e.to_string())?;
            s.send(b"version\r\n").await.map_err(|e| e.to_string())?;
            let mut rb = RBuf::new();
            let mut deadline = Box::pin(sleep(Duration::from_secs(10)));
            rb.next_frame(&mut s, &mut deadline, frame_line)
                .await
                .map_err(|e| e.to_string())?;
            let (l, _) = line(rb.data()).expect("framed");
            if l.starts_with(b"VERSION ") {
                return Ok(s);
            }
            Err(format!("unexpected reply to version: {}", lossy(l)))
        }));
    }
    let mut conns = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => conns.push(s),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    // Scripts wait for this line before sampling the server's memory.
    println!(
        "READY {} idle connections live, {} failed",
        conns.len(),
        errors.len()
    );
    let _ = io::stdout().flush();
    for e in errors.iter().take(5) {
        eprintln!("idle connection error: {e}");
    }
    sleep(Duration::from_secs_f64(args.duration.max(0.0))).await;
    drop(conns);
    let report = serde_json::json!({
        "target": args.target,
        "tls": args.tls_ca.is_some(),
        "idle_connections": n,
        "idle_ok": n - errors.len(),
        "connection_errors": errors.len(),
        "verification_errors": 0,
    });
    if let Some(p) = &args.json {
        if !write_json(p, serde_json::to_string_pretty(&report).unwrap_or_default()) {
            return 2;
        }
    }
    if errors.is_empty() {
        0
    } else {
        3
    }
}
