//! The soak run's final check: every backend is read directly, to find keys on a backend
//! that does not own them and acknowledged writes missing from their owner (replicated:
//! from their owner in each copy).

use super::bookkeeping::{bump, Soak, Track};
use crate::protocol::{connect, frame_get, get_hits, lossy, parse_num, RBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::sleep;

/// After the run: reads every key from every backend directly. A key of this run found
/// on a backend that does not own it (in the backend's copy) is misplaced; a stable key
/// must hold, on its owner, a version no older than the last one acknowledged (and not
/// newer than the last sent). Replicated, see `replicated_copy` for each copy of a key.
pub async fn soak_final_check(sk: &Soak, tracks: &[Track]) {
    let c = &sk.c;
    let nkeys = sk.sh.args.keys;
    // Per copy and key: the version of this run found on the key's owner in that copy; and
    // whether each backend was read.
    let mut found: Vec<Vec<Option<u32>>> = vec![vec![None; nkeys as usize]; sk.copies.len()];
    let mut read_ok = vec![false; sk.servers.len()];
    let prefix = b"k:";
    for (bi, srv) in sk.servers.iter().enumerate() {
        let Some(addr) = srv.addr else { continue };
        let vol = sk.volatile == Some(bi);
        let res: Result<(), String> = async {
            let mut s = connect(&addr.to_string())
                .await
                .map_err(|e| e.to_string())?;
            let mut rb = RBuf::new();
            let mut deadline = Box::pin(sleep(Duration::from_secs(30)));
            let mut w = Vec::new();
            for chunk in (0..nkeys).collect::<Vec<_>>().chunks(50) {
                w.clear();
                w.extend_from_slice(b"get");
                for &k in chunk {
                    w.push(b' ');
                    w.extend_from_slice(sk.sh.key(k));
                }
                w.extend_from_slice(b"\r\n");
                s.write_all(&w).await.map_err(|e| e.to_string())?;
                let len = rb
                    .next_frame(&mut s, &mut deadline, frame_get)
                    .await
                    .map_err(|e| e.to_string())?;
                let reply = &rb.data()[..len];
                for (key, flags, data) in get_hits(reply) {
                    let k = key
                        .strip_prefix(prefix)
                        .map(|d| {
                            // Zero-padded: keep at most 19 digits for parse_num.
                            let z = d.iter().take_while(|&&c| c == b'0').count();
                            &d[z.min(d.len().saturating_sub(1))..]
                        })
                        .and_then(parse_num)
                        .filter(|&k| k < nkeys as u64 && sk.sh.key(k as u32) == key)
                        .ok_or_else(|| format!("unrequested key {}", lossy(key)))?
                        as u32;
                    let owner = sk.owner(srv.copy, k);
                    match sk.decode(k, flags, data) {
                        Err(e) => {
                            let msg = format!("key {k} on {} (read directly): {e}", srv.address);
                            sk.note(&c.wrong_values, "wrong value", msg);
                        }
                        Ok(Some(v)) if owner != bi => {
                            let msg = format!(
                                "key {k} (version {v}) found on {}, but its owner is {}",
                                srv.address, sk.servers[owner].address
                            );
                            sk.note(&c.misplaced, "misplaced key", msg);
                        }
                        Ok(Some(v)) => found[srv.copy][k as usize] = Some(v),
                        Ok(None) => {}
                    }
                }
                rb.consume(len);
            }
            Ok(())
        }
        .await;
        match res {
            Ok(()) => read_ok[bi] = true,
            Err(e) if vol => {
                bump(&c.final_volatile_unreachable);
                eprintln!(
                    "soak: final check: volatile backend {} not readable: {e}",
                    srv.address
                );
            }
            Err(e) => {
                let msg = format!("final check: reading {} directly: {e}", srv.address);
                sk.stable_error(b"", msg);
            }
        }
    }
    for k in 0..nkeys {
        let mut checked = false;
        for (copy, found) in found.iter().enumerate() {
            let owner = sk.owner(copy, k);
            if !read_ok[owner] {
                continue;
            }
            checked = true;
            let t = tracks[k as usize];
            let f = found[k as usize];
            let name = &sk.servers[owner].address;
            if let Some(v) = f.filter(|&v| v > t.sent) {
                let msg = format!("key {k} on {name}: version {v} but only {} sent", t.sent);
                sk.note(&c.wrong_values, "wrong value", msg);
            } else if sk.replication.is_some() {
                replicated_copy(sk, k, owner, &t, f);
            } else if sk.volatile == Some(owner) {
                match f {
                    Some(v) if v < t.floor() => bump(&c.final_volatile_stale),
                    Some(_) => bump(&c.final_volatile_present),
                    None => bump(&c.final_volatile_missing),
                }
            } else if t.floor() > 0 && f.is_none_or(|v| v < t.floor()) {
                let msg = format!(
                    "key {k} on {name}: holds {} after version {} acknowledged and {} seen",
                    holds(f),
                    t.acked,
                    t.seen
                );
                sk.note(&c.final_lost, "lost write (final)", msg);
            }
        }
        if checked {
            bump(&c.final_keys_checked);
        }
    }
}

fn holds(f: Option<u32>) -> String {
    f.map_or("nothing".to_string(), |v| format!("version {v}"))
}

/// One copy of key `k` (on `owner`, holding version `f`), replicated. On a backend that did
/// not restart it must hold every version acknowledged or seen, as a single pool's owner. On
/// a restarted one it must hold the version last acknowledged if that write was sent after
/// the restart; an older one came back empty, so the key may be missing (reported), but a
/// version it holds was written since, so it cannot be older than the acknowledged one.
fn replicated_copy(sk: &Soak, k: u32, owner: usize, t: &Track, f: Option<u32>) {
    let (c, rc) = (&sk.c, &sk.rc);
    bump(&rc.final_copies_checked);
    let name = &sk.servers[owner].address;
    let secs = |at: tokio::time::Instant| at.duration_since(sk.start).as_secs_f64();
    let Some(restart) = sk.watch[owner].last_restart() else {
        bump(&rc.final_copies_on_steady_backends);
        if t.floor() > 0 && f.is_none_or(|v| v < t.floor()) {
            let msg = format!(
                "key {k} on {name} (never restarted): holds {} after version {} acknowledged and {} seen",
                holds(f),
                t.acked,
                t.seen
            );
            sk.note(&c.final_lost, "lost write (final)", msg);
        }
        return;
    };
    let since = t.acked_at.filter(|&at| at > restart);
    if let Some(at) = since {
        bump(&rc.final_since_restart);
        if f.is_none_or(|v| v < t.acked) {
            let msg = format!(
                "key {k} on {name}: holds {} after version {} was acknowledged (sent at {:.3}s, \
                 after the backend's last restart at {:.3}s)",
                holds(f),
                t.acked,
                secs(at),
                secs(restart)
            );
            sk.note(&c.final_lost, "lost write (final)", msg);
        }
        return;
    }
    match f {
        Some(v) if v < t.acked => {
            let msg = format!(
                "key {k} on {name}: version {v}, older than version {} acknowledged before the \
                 backend's last restart at {:.3}s (it came back empty)",
                t.acked,
                secs(restart)
            );
            sk.note(&c.final_lost, "stale copy (final)", msg);
        }
        Some(_) => bump(&rc.final_before_restart_present),
        None => bump(&rc.final_before_restart_missing),
    }
}
