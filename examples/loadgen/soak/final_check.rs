//! The soak run's final check: every backend is read directly, to find keys on a backend
//! that does not own them and acknowledged writes missing from their owner.

use super::bookkeeping::{bump, Soak, Track};
use crate::protocol::{connect, frame_get, get_hits, lossy, parse_num, RBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::sleep;

/// After the run: reads every key from every backend directly. A key of this run found
/// on a backend that does not own it is misplaced; a stable key must hold, on its owner,
/// a version no older than the last one acknowledged (and not newer than the last sent).
pub async fn soak_final_check(sk: &Soak, tracks: &[Track]) {
    let c = &sk.c;
    let nkeys = sk.sh.args.keys;
    // Per key: the version of this run found on its owner, and whether the owner was read.
    let mut found: Vec<Option<u32>> = vec![None; nkeys as usize];
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
                    let owner = sk.owners[k as usize] as usize;
                    match sk.decode(k, flags, data) {
                        Err(e) => {
                            let msg = format!("key {k} on {} (read directly): {e}", srv.address);
                            sk.note(&c.wrong_values, "wrong value", msg);
                        }
                        Ok(Some(v)) if owner != bi => {
                            let msg = format!(
                                "key {k} (version {v}) found on {}, but its owner is {}",
                                srv.address,
                                sk.owner_name(k)
                            );
                            sk.note(&c.misplaced, "misplaced key", msg);
                        }
                        Ok(Some(v)) => found[k as usize] = Some(v),
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
        let owner = sk.owners[k as usize] as usize;
        if !read_ok[owner] {
            continue;
        }
        bump(&c.final_keys_checked);
        let t = tracks[k as usize];
        let f = found[k as usize];
        if let Some(v) = f.filter(|&v| v > t.sent) {
            let msg = format!(
                "key {k} on {}: version {v} but only {} sent",
                sk.owner_name(k),
                t.sent
            );
            sk.note(&c.wrong_values, "wrong value", msg);
        } else if sk.volatile == Some(owner) {
            match f {
                Some(v) if v < t.floor() => bump(&c.final_volatile_stale),
                Some(_) => bump(&c.final_volatile_present),
                None => bump(&c.final_volatile_missing),
            }
        } else if t.floor() > 0 && f.is_none_or(|v| v < t.floor()) {
            let msg = format!(
                "key {k} on {}: holds {} after version {} acknowledged and {} seen",
                sk.owner_name(k),
                f.map_or("nothing".to_string(), |v| format!("version {v}")),
                t.acked,
                t.seen
            );
            sk.note(&c.final_lost, "lost write (final)", msg);
        }
    }
}
