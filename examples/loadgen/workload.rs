//! The benchmark workload: building pipelined get/set requests, reading and verifying
//! their replies in order, and the per-connection drivers (closed loop, open loop,
//! prefill). The meta protocol's requests and replies are in `meta`, the binary
//! protocol's in `binary`.

use crate::batch::Batch;
use crate::binary::{opaque, read_binary_batch};
use crate::cli::Protocol;
use crate::meta::read_meta_batch;
use crate::protocol::{frame_get, frame_line, line, lossy, Frame, RBuf, ReadError};
use crate::report::Stats;
use crate::shared::Shared;
use crate::tls::{open, Stream, TlsClient};
use rand::rngs::StdRng;
use rand::Rng;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep, sleep_until, Instant, Sleep};

/// How long to wait for outstanding replies after the run ends before a
/// connection is declared hung (a lost reply would otherwise hang forever).
const GRACE: Duration = Duration::from_secs(5);
/// Tokio timer lag: 1 ms wheel ticks plus rounding of the poll timeout.
const TICK: Duration = Duration::from_millis(2);

impl Shared {
    fn push_get(&self, rng: &mut StdRng, b: &mut Batch, w: &mut Vec<u8>, t0: Instant) {
        let ks = b.keys.len();
        if self.args.protocol != Protocol::Text {
            let k = self.pick(rng);
            b.keys.push(k);
            b.floors.push(self.state(k).floor());
            match self.args.protocol {
                Protocol::Meta => self.push_mg_command(w, k, b.seq + b.ops.len() as u64),
                _ => self.push_binary_get(w, k, opaque(b.seq, b.ops.len())),
            }
            b.add_get(ks, t0);
            return;
        }
        w.extend_from_slice(b"get");
        for _ in 0..self.args.multiget {
            // Multi-get keys are distinct so replies map 1:1 to requested keys.
            let k = loop {
                let k = self.pick(rng);
                if !b.keys[ks..].contains(&k) {
                    break k;
                }
            };
            b.keys.push(k);
            b.floors.push(self.state(k).floor());
            w.push(b' ');
            w.extend_from_slice(self.key(k));
        }
        w.extend_from_slice(b"\r\n");
        b.add_get(ks, t0);
    }

    fn push_set(&self, k: u32, b: &mut Batch, w: &mut Vec<u8>, t0: Instant) {
        let ver = {
            let now = self.tick();
            self.state(k).begin_set(now)
        };
        match self.args.protocol {
            Protocol::Text => self.push_set_command(w, k, ver),
            Protocol::Meta => self.push_ms_command(w, k, ver, b.seq + b.ops.len() as u64),
            Protocol::Binary => self.push_binary_set(w, k, ver, opaque(b.seq, b.ops.len())),
        }
        b.add_set(k, ver, t0);
    }

    /// Ends a batch: `mn` after quiet meta reads, a Noop after quiet binary reads.
    fn end_batch(&self, b: &mut Batch, w: &mut Vec<u8>) {
        match self.args.protocol {
            Protocol::Text => {}
            Protocol::Meta => self.end_meta_batch(b, w),
            Protocol::Binary => self.end_binary_batch(b, w),
        }
    }

    fn push_op(&self, rng: &mut StdRng, b: &mut Batch, w: &mut Vec<u8>, t0: Instant) {
        if rng.gen::<f64>() < self.args.get_ratio {
            self.push_get(rng, b, w, t0);
        } else {
            let k = self.pick(rng);
            self.push_set(k, b, w, t0);
        }
    }
}

/// Verifies a complete get reply against the requested keys.
fn check_get(sh: &Shared, b: &[u8], keys: &[u32], floors: &[u32], st: &mut Stats, counted: bool) {
    let (mut hits, mut misses, mut unexpected) = (0u64, 0u64, 0u64);
    let res = sh.match_hits(b, keys, |i, hit| match hit {
        None => {
            misses += 1;
            // A miss is expected only while no write of ours is known to have
            // landed and nobody told us the keys were prefilled.
            if floors[i] > 0 || sh.args.expect_hits {
                unexpected += 1;
            }
        }
        Some((flags, data)) => {
            let k = keys[i];
            if flags != (k & 0xffff) as u64 {
                st.verr(format!("key {k}: flags {flags}, expected {}", k & 0xffff));
            } else if let Err(e) = sh.check_value(k, floors[i], data) {
                st.verr(e);
            }
            hits += 1;
        }
    });
    if let Err(key) = res {
        st.verr(format!(
            "unexpected or out-of-order key in reply: {}",
            lossy(key)
        ));
        return;
    }
    if counted {
        st.hits += hits;
        st.misses += misses;
    }
    st.unexpected_misses += unexpected;
}

/// Writes one batch's requests and reads and verifies its replies; false when the
/// connection failed (the batch's unanswered operations are abandoned).
async fn run_batch(
    sh: &Shared,
    s: &mut Stream,
    w: &[u8],
    rb: &mut RBuf,
    b: &Batch,
    st: &mut Stats,
    deadline: &mut Pin<Box<Sleep>>,
) -> bool {
    if let Err(e) = s.send(w).await {
        st.cerr(format!("write {}: {e}", sh.target));
        abandon(sh, b, 0);
        return false;
    }
    read_batch(sh, s, rb, b, st, deadline).await.is_ok()
}

/// Reading one batch's replies: the run state, the batch, the stream (or its read half),
/// the read buffer and the deadline for replies still owed, and the connection's counters.
pub struct Replies<'a, R> {
    pub sh: &'a Shared,
    pub b: &'a Batch,
    r: &'a mut R,
    pub rb: &'a mut RBuf,
    deadline: &'a mut Pin<Box<Sleep>>,
    pub st: &'a mut Stats,
}

impl<R: AsyncRead + Unpin> Replies<'_, R> {
    /// The length of the next reply (as `frame` finds it) at the front of the read buffer,
    /// read as needed. None when the connection failed or a reply does not parse: that is
    /// counted and the batch's sets from request `from` on are abandoned.
    pub async fn next(&mut self, frame: impl Fn(&[u8]) -> Frame, from: usize) -> Option<usize> {
        match self.rb.next_frame(self.r, self.deadline, frame).await {
            Ok(n) => Some(n),
            Err(e) => {
                match e {
                    ReadError::Io(e) => self.st.cerr(format!("{}: {e}", self.sh.target)),
                    ReadError::Desync(msg) => self.st.verr(msg),
                }
                abandon(self.sh, self.b, from);
                None
            }
        }
    }
}

/// Reads and verifies the replies for one batch, in order.
async fn read_batch<R: AsyncRead + Unpin>(
    sh: &Shared,
    r: &mut R,
    rb: &mut RBuf,
    b: &Batch,
    st: &mut Stats,
    deadline: &mut Pin<Box<Sleep>>,
) -> Result<(), ()> {
    let replies = Replies {
        sh,
        b,
        r,
        rb,
        deadline,
        st,
    };
    match sh.args.protocol {
        Protocol::Text => read_text_batch(replies).await,
        Protocol::Meta => read_meta_batch(replies).await,
        Protocol::Binary => read_binary_batch(replies).await,
    }
}

/// Reads and verifies the replies for one batch of text requests, in order.
async fn read_text_batch<R: AsyncRead + Unpin>(mut rx: Replies<'_, R>) -> Result<(), ()> {
    let (sh, b) = (rx.sh, rx.b);
    for (i, op) in b.ops.iter().enumerate() {
        let framer = if op.get { frame_get } else { frame_line };
        let Some(len) = rx.next(framer, i).await else {
            return Err(());
        };
        let counted = sh.counted(op.t0);
        let reply = &rx.rb.data()[..len];
        let keys = &b.keys[op.first..op.first + op.n];
        if op.get {
            check_get(
                sh,
                reply,
                keys,
                &b.floors[op.first..op.first + op.n],
                rx.st,
                counted,
            );
        } else {
            let l = line(reply).map(|x| x.0).unwrap_or_default();
            let ok = l == b"STORED";
            let now = sh.tick();
            sh.state(keys[0]).end_set(op.ver, now, ok);
            if !ok {
                rx.st.verr(format!("set {}: reply {}", keys[0], lossy(l)));
                if l.starts_with(b"VALUE") || l == b"END" {
                    // A get reply where a set reply belongs: stream is off.
                    rx.rb.consume(len);
                    abandon(sh, b, i + 1);
                    return Err(());
                }
            }
        }
        rx.rb.consume(len);
        if counted {
            rx.st.count_op(op);
        }
    }
    Ok(())
}

/// Marks sets from `from` on as finished with unknown outcome.
pub fn abandon(sh: &Shared, b: &Batch, from: usize) {
    for op in b.ops.iter().skip(from).filter(|o| !o.get) {
        let now = sh.tick();
        sh.state(b.keys[op.first]).end_set(op.ver, now, false);
    }
}

/// Opens `n` connections to the target (TLS handshakes included), at most 200 at a time,
/// so that the measured window starts with all of them ready.
pub async fn preconnect(
    target: &str,
    tls: Option<&TlsClient>,
    n: usize,
) -> Vec<io::Result<Stream>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (target, tls, sem) = (target.to_string(), tls.cloned(), sem.clone());
            tokio::spawn(async move {
                let _permit = sem.acquire().await.map_err(io::Error::other)?;
                open(&target, tls.as_ref()).await
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await.unwrap_or_else(|e| Err(io::Error::other(e))));
    }
    conns
}

/// Closed loop: keep `depth` requests outstanding, one write per batch. `conn` is the
/// connection opened before the run (`preconnect`); a failed one is opened again.
pub async fn closed_loop(sh: Arc<Shared>, id: usize, conn: io::Result<Stream>) -> Stats {
    let mut st = Stats::new();
    let mut rng = sh.rng_for(id);
    let mut b = Batch::default();
    let mut w = Vec::with_capacity(sh.args.depth * (sh.args.value_size + 64));
    let mut rb = RBuf::new();
    let mut deadline = Box::pin(sleep_until(sh.end + GRACE));
    // Meta opaques: one per request, never reused on this connection's lifetime.
    let mut seq = 0u64;
    let mut first = Some(conn);
    while Instant::now() < sh.end {
        let conn = match first.take() {
            Some(c) => c,
            None => open(&sh.target, sh.tls.as_ref()).await,
        };
        let mut s = match conn {
            Ok(s) => s,
            Err(e) => {
                st.cerr(format!("connect {}: {e}", sh.target));
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        rb.clear();
        loop {
            b.clear();
            w.clear();
            let now = Instant::now();
            if now >= sh.end {
                break;
            }
            b.seq = seq;
            for _ in 0..sh.args.depth {
                sh.push_op(&mut rng, &mut b, &mut w, now);
            }
            sh.end_batch(&mut b, &mut w);
            seq += b.ops.len() as u64;
            let t0 = Instant::now();
            for op in &mut b.ops {
                op.t0 = t0;
            }
            if !run_batch(&sh, &mut s, &w, &mut rb, &b, &mut st, &mut deadline).await {
                break;
            }
            if sh.args.reconnect {
                break;
            }
        }
        s.close().await;
    }
    st
}

/// Open loop: requests are scheduled at a fixed rate and latency is taken
/// from the scheduled time, so a stalled server is charged for the requests
/// it delayed (no coordinated omission). Overdue requests go out together.
/// `conn` is the connection opened before the run (`preconnect`).
pub async fn open_loop(sh: Arc<Shared>, id: usize, conn: io::Result<Stream>) -> Stats {
    match conn {
        Ok(Stream::Plain(s)) => {
            let (rd, wr) = s.into_split();
            open_loop_io(sh, id, rd, wr).await
        }
        Ok(Stream::Tls(s)) => {
            let (rd, wr) = tokio::io::split(*s);
            open_loop_io(sh, id, rd, wr).await
        }
        Err(e) => {
            let mut st = Stats::new();
            st.cerr(format!("connect {}: {e}", sh.target));
            st
        }
    }
}

/// The open loop over a connection's read and write halves.
async fn open_loop_io<R, W>(sh: Arc<Shared>, id: usize, mut rd: R, mut wr: W) -> Stats
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut st = Stats::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Batch>();
    let per_conn = sh.args.rate / sh.args.connections as f64;
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let start = Instant::now();
    let sh2 = sh.clone();
    // The writer borrows the write half, which is shut down once both are done.
    let out = &mut wr;
    let writer = async move {
        let sh = sh2;
        let mut rng = sh.rng_for(id);
        // Spread connections over one interval so they do not fire together.
        let mut next = start + interval.mul_f64(id as f64 / sh.args.connections as f64);
        let mut w = Vec::new();
        let mut seq = 0u64;
        while next < sh.end {
            // Tokio timers fire up to ~2 ms late: wake that much early
            // and send what is due by then, else the timer lag
            // would be charged to the server as latency.
            sleep_until(next.checked_sub(TICK).unwrap_or(next)).await;
            let now = Instant::now();
            let mut b = Batch {
                seq,
                ..Batch::default()
            };
            w.clear();
            while next <= now + TICK && next < sh.end && b.ops.len() < 256 {
                // Late: measure from the schedule (no coordinated omission);
                // early: from the actual send, so latency is never understated.
                sh.push_op(&mut rng, &mut b, &mut w, next.min(now));
                next += interval;
            }
            sh.end_batch(&mut b, &mut w);
            seq += b.ops.len() as u64;
            // The flush sends what TLS still holds (a no-op on plain TCP).
            if let Err(e) = async {
                out.write_all(&w).await?;
                out.flush().await
            }
            .await
            {
                abandon(&sh, &b, 0);
                return Some(format!("write {}: {e}", sh.target));
            }
            if tx.send(b).is_err() {
                return None;
            }
        }
        None
    };
    let reader = async {
        let mut rb = RBuf::new();
        let mut deadline = Box::pin(sleep_until(sh.end + GRACE));
        while let Some(b) = rx.recv().await {
            if read_batch(&sh, &mut rd, &mut rb, &b, &mut st, &mut deadline)
                .await
                .is_err()
            {
                while let Ok(b) = rx.try_recv() {
                    abandon(&sh, &b, 0);
                }
                break;
            }
        }
        rx.close();
    };
    let (werr, ()) = tokio::join!(writer, reader);
    if let Some(e) = werr {
        st.cerr(e);
    }
    // TLS: send close_notify (plain TCP: a FIN, as dropping would).
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    st
}

/// Sets every key once (keys striped over the connections), pipelined.
pub async fn prefill(sh: Arc<Shared>, id: usize) -> Stats {
    let mut st = Stats::new();
    let mut deadline = Box::pin(sleep_until(Instant::now() + Duration::from_secs(120)));
    let mut s = match open(&sh.target, sh.tls.as_ref()).await {
        Ok(s) => s,
        Err(e) => {
            st.cerr(format!("connect {}: {e}", sh.target));
            return st;
        }
    };
    let mut b = Batch::default();
    let mut w = Vec::new();
    let mut rb = RBuf::new();
    let mut keys = (id as u32..sh.args.keys)
        .step_by(sh.args.connections)
        .peekable();
    let mut seq = 0u64;
    while keys.peek().is_some() {
        b.clear();
        w.clear();
        b.seq = seq;
        let now = Instant::now();
        for k in keys.by_ref().take(32) {
            sh.push_set(k, &mut b, &mut w, now);
        }
        sh.end_batch(&mut b, &mut w);
        seq += b.ops.len() as u64;
        if !run_batch(&sh, &mut s, &w, &mut rb, &b, &mut st, &mut deadline).await {
            break;
        }
    }
    s.close().await;
    st
}
