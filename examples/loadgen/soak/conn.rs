//! One soak connection: it reads and writes only its own keys (key k belongs to
//! connection k % connections), in pipelined batches, and checks every reply against
//! those keys' exact history.

use super::bookkeeping::{bump, Soak, Track};
use crate::batch::Batch;
use crate::protocol::{connect, frame_get, line, lossy, Frame, RBuf, ReadError};
use crate::report::{new_hist, record_latency};
use hdrhistogram::Histogram;
use rand::Rng;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::time::{sleep, sleep_until, Instant, Sleep};

/// One connection's keys (k = id + i * conns) and their histories.
struct OwnKeys {
    id: usize,
    conns: usize,
    tracks: Vec<Track>,
}

impl OwnKeys {
    fn track(&mut self, k: u32) -> &mut Track {
        &mut self.tracks[(k as usize - self.id) / self.conns]
    }
}

/// Reads one batch's replies in order and checks them against the connection's history.
async fn soak_read<R: AsyncRead + Unpin>(
    sk: &Soak,
    r: &mut R,
    rb: &mut RBuf,
    b: &Batch,
    own: &mut OwnKeys,
    deadline: &mut Pin<Box<Sleep>>,
    hist: &mut Histogram<u64>,
) -> Result<(), ()> {
    let c = &sk.c;
    for op in &b.ops {
        let framer = |data: &[u8]| match line(data) {
            None => Frame::Incomplete,
            // One line answers a set, and a get that failed as a whole.
            Some((l, n)) if !op.get || !(l == b"END" || l.starts_with(b"VALUE ")) => {
                Frame::Complete(n)
            }
            Some(_) => frame_get(data),
        };
        let len = match rb.next_frame(r, deadline, framer).await {
            Ok(n) => n,
            Err(ReadError::Io(e)) => {
                let msg = format!("{}: {e}", sk.sh.target);
                sk.note(&c.connection_errors, "connection error", msg);
                return Err(());
            }
            Err(ReadError::Desync(msg)) => {
                sk.note(&c.wrong_values, "malformed reply", msg);
                return Err(());
            }
        };
        let reply = &rb.data()[..len];
        let keys = &b.keys[op.first..op.first + op.n];
        let first = line(reply).map(|x| x.0).unwrap_or_default();
        if op.get {
            bump(&c.gets);
            c.get_keys.fetch_add(op.n as u64, Ordering::Relaxed);
            for &k in keys {
                bump(if sk.is_volatile(k) {
                    &c.volatile_get_keys
                } else {
                    &c.stable_get_keys
                });
            }
            if first == b"END" || first.starts_with(b"VALUE ") {
                soak_check_get(sk, reply, keys, &b.floors[op.first..op.first + op.n], own);
            } else if first.starts_with(b"SERVER_ERROR ") && keys.iter().any(|&k| sk.is_volatile(k))
            {
                sk.volatile_get_error(first, || {
                    format!("get {keys:?} (volatile keys): {}", lossy(first))
                });
            } else if first.starts_with(b"SERVER_ERROR ") {
                let msg = format!("get {keys:?} (stable keys): {}", lossy(first));
                sk.stable_error(first, msg);
            } else {
                let msg = format!("get {keys:?}: reply {}", lossy(first));
                sk.note(&c.wrong_values, "malformed reply", msg);
                return Err(());
            }
        } else {
            bump(&c.sets);
            let k = keys[0];
            let vol = sk.is_volatile(k);
            if first == b"STORED" {
                let t = own.track(k);
                t.acked = op.ver;
                t.acked_at = Some(op.t0);
                bump(if vol {
                    &c.volatile_sets_stored
                } else {
                    &c.stable_sets_stored
                });
            } else if first.starts_with(b"SERVER_ERROR ") && vol {
                bump(&c.volatile_set_errors);
                sk.volatile_error(first);
            } else if first.starts_with(b"SERVER_ERROR ") {
                let msg = format!("set {k} (on {}): {}", sk.owner_name(k), lossy(first));
                sk.stable_error(first, msg);
            } else {
                let msg = format!("set {k}: reply {}", lossy(first));
                sk.note(&c.wrong_values, "malformed reply", msg);
                // Anything but an error line means the replies are off by one or more.
                if !first.ends_with(b"ERROR") && !first.starts_with(b"CLIENT_ERROR ") {
                    return Err(());
                }
            }
        }
        rb.consume(len);
        bump(&c.ops);
        record_latency(hist, op.t0);
    }
    Ok(())
}

/// Checks a `VALUE ... END` reply: hits in request order, misses left out.
fn soak_check_get(sk: &Soak, reply: &[u8], keys: &[u32], sents: &[u32], own: &mut OwnKeys) {
    let res = sk.sh.match_hits(reply, keys, |i, hit| {
        let k = keys[i];
        match hit {
            None => sk.miss(k, own.track(k)),
            Some((flags, data)) => sk.hit(k, sents[i], own.track(k), flags, data),
        }
    });
    if let Err(key) = res {
        let msg = format!(
            "get {keys:?}: unexpected or out-of-order key {} in reply",
            lossy(key)
        );
        sk.note(&sk.c.wrong_values, "misordered reply", msg);
    }
}

/// One soak connection: its own keys only, pipelined batches of `depth`, reconnecting
/// (counted as a connection error) if the connection breaks. Returns each key's history.
pub async fn soak_conn(sk: Arc<Soak>, id: usize) -> (Vec<(u32, Track)>, Histogram<u64>) {
    let sh = &sk.sh;
    let args = &sh.args;
    let conns = args.connections;
    let mine: Vec<u32> = (id as u32..args.keys).step_by(conns).collect();
    let mut own = OwnKeys {
        id,
        conns,
        tracks: vec![Track::default(); mine.len()],
    };
    let mut hist = new_hist();
    let mut rng = sh.rng_for(id);
    // Recently written keys: a share of gets reads them back soon after the write.
    let mut recent: VecDeque<usize> = VecDeque::with_capacity(64);
    let mut b = Batch::default();
    let mut w = Vec::with_capacity(args.depth * (args.value_size + 64));
    let mut rb = RBuf::new();
    let mut deadline = Box::pin(sleep(sk.batch_timeout));
    let mut first_connect = true;
    // With --rate, batches leave at a fixed pace (spread over the connections), so the
    // host keeps CPU to spare and latency reflects memroute, not a saturated machine.
    let pace = (args.rate > 0.0)
        .then(|| Duration::from_secs_f64(args.depth as f64 * conns as f64 / args.rate));
    let mut next_batch =
        sk.start + pace.map_or(Duration::ZERO, |p| p.mul_f64(id as f64 / conns as f64));
    'conn: while Instant::now() < sk.end {
        if !first_connect {
            bump(&sk.c.reconnects);
            sleep(Duration::from_millis(100)).await;
        }
        first_connect = false;
        let mut s = match connect(&sh.target).await {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("connect {}: {e}", sh.target);
                sk.note(&sk.c.connection_errors, "connection error", msg);
                continue;
            }
        };
        rb.clear();
        loop {
            if let Some(p) = pace {
                sleep_until(next_batch).await;
                // Behind schedule: go on from now rather than bursting to catch up.
                next_batch = (next_batch + p).max(Instant::now());
            }
            let now = Instant::now();
            if now >= sk.end {
                break 'conn;
            }
            b.clear();
            w.clear();
            for _ in 0..args.depth {
                if rng.gen::<f64>() < args.get_ratio {
                    let n = rng.gen_range(1..=args.multiget.min(mine.len()));
                    let first = b.keys.len();
                    w.extend_from_slice(b"get");
                    for _ in 0..n {
                        let j = loop {
                            let j = if !recent.is_empty() && rng.gen_bool(0.3) {
                                recent[rng.gen_range(0..recent.len())]
                            } else {
                                rng.gen_range(0..mine.len())
                            };
                            if !b.keys[first..].contains(&mine[j]) {
                                break j;
                            }
                        };
                        b.keys.push(mine[j]);
                        b.floors.push(own.tracks[j].sent);
                        w.push(b' ');
                        w.extend_from_slice(sh.key(mine[j]));
                    }
                    w.extend_from_slice(b"\r\n");
                    b.add_get(first, now);
                } else {
                    let j = rng.gen_range(0..mine.len());
                    own.tracks[j].sent += 1;
                    let ver = own.tracks[j].sent;
                    sh.push_set_command(&mut w, mine[j], ver);
                    b.add_set(mine[j], ver, now);
                    if recent.len() == recent.capacity() {
                        recent.pop_front();
                    }
                    recent.push_back(j);
                }
            }
            deadline.as_mut().reset(now + sk.batch_timeout);
            if let Err(e) = s.write_all(&w).await {
                let msg = format!("write {}: {e}", sh.target);
                sk.note(&sk.c.connection_errors, "connection error", msg);
                break;
            }
            let res = soak_read(&sk, &mut s, &mut rb, &b, &mut own, &mut deadline, &mut hist).await;
            if res.is_err() {
                break;
            }
        }
    }
    (mine.into_iter().zip(own.tracks).collect(), hist)
}
