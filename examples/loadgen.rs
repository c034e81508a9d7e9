//! `loadgen`: a verifying load generator for the memcached text protocol.
//!
//! It drives `get`/`set` traffic (optionally pipelined, multi-get, zipfian,
//! closed or fixed-rate open loop) at a memcached-compatible endpoint, records
//! latency in an HDR histogram and checks every reply: each value encodes its
//! key index, this run's id and a per-key version, and the flags carry the key
//! index, so misrouted, reordered, stale or corrupted replies are counted as
//! verification errors (exit code 1). Connection errors exit with code 3.
//!
//! Run it with `cargo run --release --example loadgen -- --help`, e.g.
//! `cargo run --release --example loadgen -- --target 127.0.0.1:22122 --prefill --depth 16`.
//! `scripts/bench.sh` uses it to compare memcached, twemproxy and memroute.
//!
//! Soak mode (`--soak-config FILE [--volatile SERVER]`) checks memroute under backend
//! faults instead: every key's owner is computed from memroute's config with memroute's
//! own ring, each connection owns its keys, and every reply is checked against their exact
//! history (no wrong values, no lost acknowledged writes on backends that stay up, no key
//! on a backend that does not own it). `scripts/soak.sh` runs it while killing a backend.

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, Instant, Sleep};

/// How long to wait for outstanding replies after the run ends before a
/// connection is declared hung (a lost reply would otherwise hang forever).
const GRACE: Duration = Duration::from_secs(5);
/// Largest header `<idx>:<runid>:<version>:` can get (10 + 1 + 8 + 1 + 10 + 1).
const MIN_VALUE_SIZE: usize = 32;
/// Cap on error messages kept for printing; the counters stay exact.
const MAX_SAMPLES: usize = 10;
/// Tokio timer lag: 1 ms wheel ticks plus rounding of the poll timeout.
const TICK: Duration = Duration::from_millis(2);

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "Verifying memcached text-protocol load generator (memroute benchmarks)"
)]
struct Args {
    /// Server or proxy to load, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:11211")]
    target: String,
    /// Client connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests kept outstanding per connection (pipeline depth, closed loop).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Tokio runtime worker threads (1 = current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Measured duration in seconds (0 with --prefill: prefill only).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured warm-up in seconds before the measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Fraction of requests that are gets; the rest are sets.
    #[arg(long, default_value_t = 0.9)]
    get_ratio: f64,
    /// Key space size.
    #[arg(long, default_value_t = 10000)]
    keys: u32,
    /// Key length in bytes.
    #[arg(long, default_value_t = 32)]
    key_size: usize,
    /// Value length in bytes for sets.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Key popularity distribution.
    #[arg(long, value_enum, default_value_t = Dist::Uniform)]
    dist: Dist,
    /// Zipf exponent for --dist zipf.
    #[arg(long, default_value_t = 0.99)]
    zipf_s: f64,
    /// Distinct keys per get request (>1 sends `get k1 k2 ...`).
    #[arg(long, default_value_t = 1)]
    multiget: usize,
    /// Set every key once before measuring, so gets should hit.
    #[arg(long)]
    prefill: bool,
    /// Keys were prefilled by an earlier run: count misses as unexpected.
    #[arg(long)]
    expect_hits: bool,
    /// Open-loop request rate in ops/s over all connections (0 = closed loop).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Do not print the human-readable summary.
    #[arg(long)]
    quiet: bool,
    /// Special mode: hold N idle (verified) connections for --duration, then exit.
    #[arg(long, default_value_t = 0)]
    idle_connections: usize,
    /// Soak mode: the memroute config the target runs with; key owners are computed from
    /// it with memroute's own ring. Each connection reads and writes only its own keys and
    /// checks every reply against their exact history; at the end every backend is read
    /// directly to check placement. Uses --connections, --depth, --duration, --get-ratio,
    /// --keys, --key-size, --value-size, --rate (paces batches of --depth; 0: as fast as
    /// replies come); --multiget is the largest key count of a get (each asks 1..=N keys).
    #[arg(long, value_name = "FILE")]
    soak_config: Option<PathBuf>,
    /// Soak mode: the backend being killed and restarted (its address host:port or its
    /// name in the config). Its keys may miss or get SERVER_ERROR; all others may not.
    #[arg(long, value_name = "SERVER")]
    volatile: Option<String>,
    /// Soak mode: seconds a pipelined batch may wait for its replies before the
    /// connection counts as hung (a connection error).
    #[arg(long, default_value_t = 10.0)]
    batch_timeout: f64,
    /// Soak mode: print a progress line every this many seconds (0: never).
    #[arg(long, default_value_t = 10.0)]
    progress: f64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq)]
enum Dist {
    Uniform,
    Zipf,
}

// ---------------------------------------------------------------------------
// Per-key version bookkeeping.
//
// Writes to one key may be in flight on several connections at once and the
// server may apply them in any order, so "the last version written" is not
// well defined. What is sound: version v cannot be returned by a get sent at
// time S if some write w was acknowledged before S and w was sent after v was
// acknowledged (w is ordered after v on the server and visible at S). Times
// are ticks of one logical clock. `live` keeps the versions not yet proven
// stale in send order; a get remembers the oldest live version (its floor)
// when it is sent and accepts any version in [floor, next) when it returns.
// Version 0 stands for "whatever was stored before this run".

const UNACKED: u64 = u64::MAX;

struct Ver {
    v: u32,
    sent: u64,
    ack: u64,
}

struct KeyState {
    next: u32,
    /// Largest send time of an acknowledged write.
    max_acked_sent: u64,
    live: VecDeque<Ver>,
}

impl KeyState {
    fn new() -> Self {
        let mut live = VecDeque::new();
        live.push_back(Ver {
            v: 0,
            sent: 0,
            ack: 0,
        });
        KeyState {
            next: 1,
            max_acked_sent: 0,
            live,
        }
    }

    fn begin_set(&mut self, now: u64) -> u32 {
        let v = self.next;
        self.next += 1;
        self.live.push_back(Ver {
            v,
            sent: now,
            ack: UNACKED,
        });
        v
    }

    /// `stored` is false for a write whose outcome is unknown (connection
    /// lost): it must not make older versions stale, but should stop
    /// blocking pruning.
    fn end_set(&mut self, v: u32, now: u64, stored: bool) {
        if let Some(e) = self.live.iter_mut().rev().find(|e| e.v == v) {
            e.ack = now;
            if stored && e.sent > self.max_acked_sent {
                self.max_acked_sent = e.sent;
            }
        }
        while let Some(f) = self.live.front() {
            if f.ack != UNACKED && f.ack < self.max_acked_sent {
                self.live.pop_front();
            } else {
                break;
            }
        }
    }

    fn floor(&self) -> u32 {
        self.live.front().map_or(self.next, |e| e.v)
    }
}

// ---------------------------------------------------------------------------
// Shared, read-mostly run state.

struct Shared {
    target: String,
    args: Args,
    run_id: u32,
    /// All keys, `key_size` bytes each, so building a request is a memcpy.
    key_bytes: Vec<u8>,
    /// Filler source: value filler for key i is `pattern[i % 26..]`.
    pattern: Vec<u8>,
    zipf_cdf: Vec<f64>,
    keys: Vec<Mutex<KeyState>>,
    clock: AtomicU64,
    /// Ops whose send (or scheduled) time falls in [measure_start, end) count.
    measure_start: Instant,
    end: Instant,
}

impl Shared {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn key(&self, idx: u32) -> &[u8] {
        let ks = self.args.key_size;
        &self.key_bytes[idx as usize * ks..(idx as usize + 1) * ks]
    }

    fn state(&self, idx: u32) -> std::sync::MutexGuard<'_, KeyState> {
        // A poisoned lock only means another task panicked; the data is fine.
        self.keys[idx as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn pick(&self, rng: &mut StdRng) -> u32 {
        match self.args.dist {
            Dist::Uniform => rng.gen_range(0..self.args.keys),
            Dist::Zipf => {
                let u: f64 = rng.gen();
                let i = self.zipf_cdf.partition_point(|&c| c < u);
                i.min(self.args.keys as usize - 1) as u32
            }
        }
    }

    fn counted(&self, t0: Instant) -> bool {
        t0 >= self.measure_start && t0 < self.end
    }

    fn push_get(&self, rng: &mut StdRng, b: &mut Batch, w: &mut Vec<u8>, t0: Instant) {
        let ks = b.keys.len();
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
        b.ops.push(Op {
            get: true,
            first: ks,
            n: self.args.multiget,
            ver: 0,
            t0,
        });
    }

    fn push_set(&self, k: u32, b: &mut Batch, w: &mut Vec<u8>, t0: Instant) {
        let ver = {
            let now = self.tick();
            self.state(k).begin_set(now)
        };
        self.push_set_command(w, k, ver);
        b.ops.push(Op {
            get: false,
            first: b.keys.len(),
            n: 1,
            ver,
            t0,
        });
        b.keys.push(k);
        b.floors.push(0);
    }

    fn push_op(&self, rng: &mut StdRng, b: &mut Batch, w: &mut Vec<u8>, t0: Instant) {
        if rng.gen::<f64>() < self.args.get_ratio {
            self.push_get(rng, b, w, t0);
        } else {
            let k = self.pick(rng);
            self.push_set(k, b, w, t0);
        }
    }

    /// `set <key> <flags = key idx & 0xffff> 0 <bytes>` and the value of version `ver`.
    fn push_set_command(&self, w: &mut Vec<u8>, k: u32, ver: u32) {
        w.extend_from_slice(b"set ");
        w.extend_from_slice(self.key(k));
        w.push(b' ');
        push_num(w, (k & 0xffff) as u64);
        w.extend_from_slice(b" 0 ");
        push_num(w, self.args.value_size as u64);
        w.extend_from_slice(b"\r\n");
        self.push_value(w, k, ver);
        w.extend_from_slice(b"\r\n");
    }

    /// Value layout: `<key idx>:<run id, 8 hex>:<version>:` + filler.
    fn push_value(&self, w: &mut Vec<u8>, k: u32, ver: u32) {
        let start = w.len();
        push_num(w, k as u64);
        w.push(b':');
        w.extend_from_slice(format_hex8(self.run_id).as_slice());
        w.push(b':');
        push_num(w, ver as u64);
        w.push(b':');
        let fill = self.args.value_size - (w.len() - start);
        let off = (k % 26) as usize;
        w.extend_from_slice(&self.pattern[off..off + fill]);
    }

    /// Checks one returned value; `floor` is the oldest version that was
    /// still possible when the get was sent.
    fn check_value(&self, k: u32, floor: u32, data: &[u8]) -> Result<(), String> {
        let mut parts = data.splitn(4, |&c| c == b':');
        let (Some(idx), Some(run), Some(ver), Some(fill)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("key {k}: value does not decode: {}", lossy(data)));
        };
        if parse_num(idx) != Some(k as u64) {
            return Err(format!("key {k}: value belongs to key {}", lossy(idx)));
        }
        let off = (k % 26) as usize;
        if fill.len() > self.pattern.len() - off || fill != &self.pattern[off..off + fill.len()] {
            return Err(format!("key {k}: corrupted value filler"));
        }
        if run != format_hex8(self.run_id).as_slice() {
            // Written before this run: only possible while no write of ours
            // is known to have landed.
            return if floor == 0 {
                Ok(())
            } else {
                Err(format!("key {k}: stale value from another run"))
            };
        }
        if data.len() != self.args.value_size {
            return Err(format!("key {k}: value length {}", data.len()));
        }
        let ver = parse_num(ver).ok_or_else(|| format!("key {k}: bad version"))?;
        let next = self.state(k).next as u64;
        if ver < floor.max(1) as u64 || ver >= next {
            return Err(format!(
                "key {k}: version {ver} outside legitimate range [{}, {next})",
                floor.max(1)
            ));
        }
        Ok(())
    }
}

fn format_hex8(v: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, o) in out.iter_mut().enumerate() {
        *o = b"0123456789abcdef"[((v >> (28 - 4 * i)) & 0xf) as usize];
    }
    out
}

fn push_num(w: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    w.extend_from_slice(&tmp[i..]);
}

fn parse_num(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as u64)
    })
}

fn lossy(b: &[u8]) -> String {
    let b = &b[..b.len().min(80)];
    String::from_utf8_lossy(b).escape_debug().to_string()
}

// ---------------------------------------------------------------------------
// Requests in flight and reply parsing.

struct Op {
    get: bool,
    /// Index of the first key in `Batch::keys`.
    first: usize,
    n: usize,
    /// Version written (sets).
    ver: u32,
    /// Latency origin: send time (closed loop) or scheduled time (open loop).
    t0: Instant,
}

/// One write's worth of requests; the vectors are reused between batches.
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    keys: Vec<u32>,
    floors: Vec<u32>,
}

impl Batch {
    fn clear(&mut self) {
        self.ops.clear();
        self.keys.clear();
        self.floors.clear();
    }
}

#[derive(Default)]
struct Stats {
    ops: u64,
    gets: u64,
    sets: u64,
    get_keys: u64,
    hits: u64,
    misses: u64,
    unexpected_misses: u64,
    verification_errors: u64,
    connection_errors: u64,
    samples: Vec<String>,
    hist: Option<Histogram<u64>>,
}

impl Stats {
    fn new() -> Self {
        Stats {
            hist: Some(new_hist()),
            ..Default::default()
        }
    }

    fn verr(&mut self, msg: String) {
        self.verification_errors += 1;
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(format!("verification: {msg}"));
        }
    }

    fn cerr(&mut self, msg: String) {
        self.connection_errors += 1;
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(format!("connection: {msg}"));
        }
    }

    fn merge(&mut self, o: Stats) {
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

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Read buffer that replies are parsed from in place.
struct RBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RBuf {
    fn new() -> Self {
        RBuf {
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        deadline: &mut Pin<Box<Sleep>>,
    ) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= 256 << 20 {
                return Err(io::Error::other("reply larger than 256 MiB"));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = tokio::select! {
            r = r.read(&mut self.buf[self.end..]) => r?,
            _ = deadline.as_mut() => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply before deadline"))
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed connection",
            ));
        }
        self.end += n;
        Ok(())
    }
}

/// Returns the line (without CRLF) and the length consumed, if complete.
fn line(b: &[u8]) -> Option<(&[u8], usize)> {
    let nl = b.iter().position(|&c| c == b'\n')?;
    let l = &b[..nl];
    Some((l.strip_suffix(b"\r").unwrap_or(l), nl + 1))
}

/// `VALUE <key> <flags> <bytes> [<cas>]` -> (key, flags, bytes).
fn value_header(l: &[u8]) -> Option<(&[u8], u64, usize)> {
    let mut it = l.split(|&c| c == b' ');
    if it.next()? != b"VALUE" {
        return None;
    }
    let key = it.next()?;
    let flags = parse_num(it.next()?)?;
    let bytes = parse_num(it.next()?)? as usize;
    Some((key, flags, bytes))
}

enum Frame {
    Incomplete,
    Complete(usize),
    /// The stream cannot be trusted any more; reconnect.
    Desync(String),
}

/// Finds the end of one get reply (hits then `END`).
fn frame_get(b: &[u8]) -> Frame {
    let mut p = 0;
    loop {
        let Some((l, n)) = line(&b[p..]) else {
            return Frame::Incomplete;
        };
        if l == b"END" {
            return Frame::Complete(p + n);
        }
        let Some((_, _, bytes)) = value_header(l) else {
            return Frame::Desync(format!("unexpected reply line to get: {}", lossy(l)));
        };
        let need = p + n + bytes + 2;
        if b.len() < need {
            return Frame::Incomplete;
        }
        if &b[need - 2..need] != b"\r\n" {
            return Frame::Desync("value data not terminated by CRLF".into());
        }
        p = need;
    }
}

/// Verifies a complete get reply against the requested keys.
fn check_get(sh: &Shared, b: &[u8], keys: &[u32], floors: &[u32], st: &mut Stats, counted: bool) {
    let (mut hits, mut misses, mut unexpected) = (0u64, 0u64, 0u64);
    let mut miss = |floor: u32| {
        misses += 1;
        // A miss is expected only while no write of ours is known to have
        // landed and nobody told us the keys were prefilled.
        if floor > 0 || sh.args.expect_hits {
            unexpected += 1;
        }
    };
    let mut j = 0;
    let mut p = 0;
    loop {
        let (l, n) = line(&b[p..]).expect("framed");
        if l == b"END" {
            break;
        }
        let (key, flags, bytes) = value_header(l).expect("framed");
        let data = &b[p + n..p + n + bytes];
        p += n + bytes + 2;
        // Hits come in request order with misses left out.
        let Some(off) = keys[j..].iter().position(|&k| sh.key(k) == key) else {
            st.verr(format!(
                "unexpected or out-of-order key in reply: {}",
                lossy(key)
            ));
            return;
        };
        for &f in &floors[j..j + off] {
            miss(f);
        }
        let k = keys[j + off];
        if flags != (k & 0xffff) as u64 {
            st.verr(format!("key {k}: flags {flags}, expected {}", k & 0xffff));
        } else if let Err(e) = sh.check_value(k, floors[j + off], data) {
            st.verr(e);
        }
        hits += 1;
        j += off + 1;
    }
    for &f in &floors[j..] {
        miss(f);
    }
    if counted {
        st.hits += hits;
        st.misses += misses;
    }
    st.unexpected_misses += unexpected;
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
    for (i, op) in b.ops.iter().enumerate() {
        let frame = loop {
            let f = if op.get {
                frame_get(rb.data())
            } else {
                match line(rb.data()) {
                    Some((_, n)) => Frame::Complete(n),
                    None => Frame::Incomplete,
                }
            };
            match f {
                Frame::Incomplete => {
                    if let Err(e) = rb.fill(r, deadline).await {
                        st.cerr(format!("{}: {e}", sh.target));
                        abandon(sh, b, i);
                        return Err(());
                    }
                }
                f => break f,
            }
        };
        let len = match frame {
            Frame::Complete(n) => n,
            Frame::Desync(msg) => {
                st.verr(msg);
                abandon(sh, b, i);
                return Err(());
            }
            Frame::Incomplete => unreachable!(),
        };
        let counted = sh.counted(op.t0);
        let reply = &rb.data()[..len];
        let keys = &b.keys[op.first..op.first + op.n];
        if op.get {
            check_get(
                sh,
                reply,
                keys,
                &b.floors[op.first..op.first + op.n],
                st,
                counted,
            );
        } else {
            let l = line(reply).map(|x| x.0).unwrap_or_default();
            let ok = l == b"STORED";
            let now = sh.tick();
            sh.state(keys[0]).end_set(op.ver, now, ok);
            if !ok {
                st.verr(format!("set {}: reply {}", keys[0], lossy(l)));
                if l.starts_with(b"VALUE") || l == b"END" {
                    // A get reply where a set reply belongs: stream is off.
                    rb.consume(len);
                    abandon(sh, b, i + 1);
                    return Err(());
                }
            }
        }
        rb.consume(len);
        if counted {
            st.ops += 1;
            if op.get {
                st.gets += 1;
                st.get_keys += op.n as u64;
            } else {
                st.sets += 1;
            }
            let us = op.t0.elapsed().as_micros() as u64;
            if let Some(h) = st.hist.as_mut() {
                h.saturating_record(us.clamp(1, 60_000_000));
            }
        }
    }
    Ok(())
}

/// Marks sets from `from` on as finished with unknown outcome.
fn abandon(sh: &Shared, b: &Batch, from: usize) {
    for op in b.ops.iter().skip(from).filter(|o| !o.get) {
        let now = sh.tick();
        sh.state(b.keys[op.first]).end_set(op.ver, now, false);
    }
}

async fn connect(target: &str) -> io::Result<TcpStream> {
    let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    // Requests are written whole; Nagle would only add delay.
    s.set_nodelay(true)?;
    Ok(s)
}

// ---------------------------------------------------------------------------
// Connection drivers.

/// Closed loop: keep `depth` requests outstanding, one write per batch.
async fn closed_loop(sh: Arc<Shared>, id: usize) -> Stats {
    let mut st = Stats::new();
    let mut rng = StdRng::seed_from_u64(sh.run_id as u64 ^ (id as u64).wrapping_mul(0x9e37_79b9));
    let mut b = Batch::default();
    let mut w = Vec::with_capacity(sh.args.depth * (sh.args.value_size + 64));
    let mut rb = RBuf::new();
    let mut deadline = Box::pin(sleep_until(sh.end + GRACE));
    while Instant::now() < sh.end {
        let mut s = match connect(&sh.target).await {
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
            for _ in 0..sh.args.depth {
                sh.push_op(&mut rng, &mut b, &mut w, now);
            }
            let t0 = Instant::now();
            for op in &mut b.ops {
                op.t0 = t0;
            }
            if let Err(e) = s.write_all(&w).await {
                st.cerr(format!("write {}: {e}", sh.target));
                abandon(&sh, &b, 0);
                break;
            }
            if read_batch(&sh, &mut s, &mut rb, &b, &mut st, &mut deadline)
                .await
                .is_err()
            {
                break;
            }
        }
    }
    st
}

/// Open loop: requests are scheduled at a fixed rate and latency is taken
/// from the scheduled time, so a stalled server is charged for the requests
/// it delayed (no coordinated omission). Overdue requests go out together.
async fn open_loop(sh: Arc<Shared>, id: usize) -> Stats {
    let mut st = Stats::new();
    let s = match connect(&sh.target).await {
        Ok(s) => s,
        Err(e) => {
            st.cerr(format!("connect {}: {e}", sh.target));
            return st;
        }
    };
    let (mut rd, mut wr) = s.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Batch>();
    let per_conn = sh.args.rate / sh.args.connections as f64;
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let start = Instant::now();
    let sh2 = sh.clone();
    let writer = async move {
        let sh = sh2;
        let mut rng =
            StdRng::seed_from_u64(sh.run_id as u64 ^ (id as u64).wrapping_mul(0x9e37_79b9));
        // Spread connections over one interval so they do not fire together.
        let mut next = start + interval.mul_f64(id as f64 / sh.args.connections as f64);
        let mut w = Vec::new();
        while next < sh.end {
            // Tokio timers fire up to ~2 ms late: wake that much early
            // and send what is due by then, else the timer lag
            // would be charged to the server as latency.
            sleep_until(next.checked_sub(TICK).unwrap_or(next)).await;
            let now = Instant::now();
            let mut b = Batch::default();
            w.clear();
            while next <= now + TICK && next < sh.end && b.ops.len() < 256 {
                // Late: measure from the schedule (no coordinated omission);
                // early: from the actual send, so latency is never understated.
                sh.push_op(&mut rng, &mut b, &mut w, next.min(now));
                next += interval;
            }
            if let Err(e) = wr.write_all(&w).await {
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
    st
}

/// Sets every key once (keys striped over the connections), pipelined.
async fn prefill(sh: Arc<Shared>, id: usize) -> Stats {
    let mut st = Stats::new();
    let mut deadline = Box::pin(sleep_until(Instant::now() + Duration::from_secs(120)));
    let mut s = match connect(&sh.target).await {
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
    while keys.peek().is_some() {
        b.clear();
        w.clear();
        let now = Instant::now();
        for k in keys.by_ref().take(32) {
            sh.push_set(k, &mut b, &mut w, now);
        }
        if let Err(e) = s.write_all(&w).await {
            st.cerr(format!("write {}: {e}", sh.target));
            abandon(&sh, &b, 0);
            break;
        }
        if read_batch(&sh, &mut s, &mut rb, &b, &mut st, &mut deadline)
            .await
            .is_err()
        {
            break;
        }
    }
    st
}

// ---------------------------------------------------------------------------
// Idle-connection mode (proxy memory per connection).

async fn idle_mode(args: &Args) -> i32 {
    let n = args.idle_connections;
    // Bounded concurrency keeps the listener's accept backlog from overflowing.
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let sem = sem.clone();
        let target = args.target.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
            let mut s = connect(&target).await.map_err(|e| e.to_string())?;
            s.write_all(b"version\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut rb = RBuf::new();
            let mut deadline = Box::pin(sleep(Duration::from_secs(10)));
            loop {
                if let Some((l, _)) = line(rb.data()) {
                    if l.starts_with(b"VERSION ") {
                        return Ok(s);
                    }
                    return Err(format!("unexpected reply to version: {}", lossy(l)));
                }
                rb.fill(&mut s, &mut deadline)
                    .await
                    .map_err(|e| e.to_string())?;
            }
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
        "idle_connections": n,
        "idle_ok": n - errors.len(),
        "connection_errors": errors.len(),
        "verification_errors": 0,
    });
    if let Some(p) = &args.json {
        if let Err(e) = std::fs::write(p, serde_json::to_string_pretty(&report).unwrap_or_default())
        {
            eprintln!("cannot write {}: {e}", p.display());
            return 2;
        }
    }
    if errors.is_empty() {
        0
    } else {
        3
    }
}

// ---------------------------------------------------------------------------
// Soak mode: verification under backend faults (`--soak-config`).
//
// Key k belongs to connection k % connections, which alone reads and writes it, so the
// exact history of every key is known to one task: the versions it sent, the last one
// acknowledged (STORED) and the newest one a get returned. Replies are checked in
// pipeline order, so when a get's reply is checked, every set sent before it on that
// connection has been answered. The owner of each key comes from the memroute config,
// through memroute's own ring.
//
// Failures (exit 1): wrong values (a value of another key, bad flags, corrupted filler,
// a version never written or not yet sent, a malformed or misordered reply); lost writes
// on stable keys (a miss, or a version older than one acknowledged or already seen);
// any error reply for a stable key; keys found on a backend that does not own them, or
// acknowledged versions missing from their owner when it is read directly at the end.
// Connection errors (the client connection broke or hung) exit 3.
// Volatile keys (owned by --volatile) may miss and may get SERVER_ERROR; a value returned
// for one must still be of the right key and a version that was sent before the get.
// An older version than one acknowledged is counted (`volatile_stale`), not failed: a
// write that timed out may still land late.

/// What one connection knows of one of its keys.
#[derive(Clone, Copy, Default)]
struct Track {
    /// Highest version sent (versions run 1, 2, ... per key).
    sent: u32,
    /// Last version answered STORED (0: none).
    acked: u32,
    /// Newest version a get returned (0: none).
    seen: u32,
}

impl Track {
    /// The oldest version a get may return now.
    fn floor(&self) -> u32 {
        self.acked.max(self.seen)
    }
}

macro_rules! soak_counters {
    ($($name:ident),* $(,)?) => {
        /// Soak counters, shared by all connections.
        #[derive(Default)]
        struct SoakCounters {
            $($name: AtomicU64,)*
        }

        impl SoakCounters {
            fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
                let mut m = serde_json::Map::new();
                $(m.insert(stringify!($name).into(), self.$name.load(Ordering::Relaxed).into());)*
                m
            }
        }
    };
}

soak_counters!(
    ops,
    gets,
    sets,
    get_keys,
    stable_get_keys,
    stable_hits,
    stable_initial_misses,
    stable_sets_stored,
    volatile_get_keys,
    volatile_hits,
    volatile_misses,
    volatile_get_errors,
    volatile_sets_stored,
    volatile_set_errors,
    volatile_stale,
    volatile_timeouts,
    foreign_values,
    reconnects,
    // Failures.
    wrong_values,
    lost_writes,
    stable_errors,
    misplaced,
    // Parts of the failures above: lost writes that were misses and stale reads,
    // stable errors that were `SERVER_ERROR backend timeout`.
    stable_misses_after_write,
    stable_stale_reads,
    stable_timeouts,
    final_lost,
    connection_errors,
    // The final direct read of every backend.
    final_keys_checked,
    final_volatile_present,
    final_volatile_missing,
    final_volatile_stale,
    final_volatile_unreachable,
);

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

struct SoakServer {
    /// `host:port` or `memory:<size>`.
    address: String,
    /// Its ring name if it has one.
    name: Option<String>,
    /// Where to read it directly at the end (none for embedded caches).
    addr: Option<std::net::SocketAddr>,
}

struct Soak {
    sh: Shared,
    servers: Vec<SoakServer>,
    /// Owner of each key (index into `servers`).
    owners: Vec<u16>,
    volatile: Option<usize>,
    c: SoakCounters,
    samples: Mutex<Vec<String>>,
    /// Failures per second of the run, to line them up with the faults.
    failure_seconds: Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Host stalls: (second of the run, ms) when a plain thread's 10 ms sleep came back
    /// more than `STALL_MS` late. A stall of the whole host, not of memroute alone, explains
    /// timeouts on healthy backends.
    stalls: Mutex<Vec<(f64, u64)>>,
    start: Instant,
    end: Instant,
    batch_timeout: Duration,
    /// Milliseconds after `start` of the last error reply for a volatile key other than a
    /// timeout (0: none): when memroute last found the backend down.
    volatile_error_last_ms: AtomicU64,
}

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
            sk.stalls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((at, late));
        }
    }
}

/// memroute's reply when a backend missed the request deadline.
const BACKEND_TIMEOUT: &[u8] = b"SERVER_ERROR backend timeout";

/// Error samples kept in soak mode (the counters stay exact).
const SOAK_SAMPLES: usize = 30;

impl Soak {
    fn is_volatile(&self, k: u32) -> bool {
        self.volatile == Some(self.owners[k as usize] as usize)
    }

    fn owner_name(&self, k: u32) -> &str {
        &self.servers[self.owners[k as usize] as usize].address
    }

    /// Counts a failure (or connection error) and keeps a sample of it.
    fn note(&self, c: &AtomicU64, what: &str, msg: String) {
        bump(c);
        let t = self.start.elapsed().as_secs_f64();
        *self
            .failure_seconds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(t as u64)
            .or_default() += 1;
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < SOAK_SAMPLES {
            s.push(format!("{what} at {t:.1}s: {msg}"));
        }
    }

    /// An error line for a volatile key. Timeouts are counted apart: they are not the
    /// backend being down, and they can hit any backend of a loaded host.
    fn volatile_error(&self, line: &[u8]) {
        if line == BACKEND_TIMEOUT {
            bump(&self.c.volatile_timeouts);
        } else {
            let ms = self.start.elapsed().as_millis() as u64;
            self.volatile_error_last_ms
                .fetch_max(ms.max(1), Ordering::Relaxed);
        }
    }

    /// An error line for stable keys: always a failure.
    fn stable_error(&self, line: &[u8], msg: String) {
        if line == BACKEND_TIMEOUT {
            bump(&self.c.stable_timeouts);
        }
        self.note(&self.c.stable_errors, "stable error", msg);
    }

    fn failures(&self) -> u64 {
        let c = &self.c;
        load(&c.wrong_values)
            + load(&c.lost_writes)
            + load(&c.stable_errors)
            + load(&c.misplaced)
            + load(&c.final_lost)
    }

    /// Decodes a value returned for key `k`: `Ok(Some(version))` for this run's values,
    /// `Ok(None)` for a value of this key written by another run.
    fn decode(&self, k: u32, flags: u64, data: &[u8]) -> Result<Option<u32>, String> {
        if flags != (k & 0xffff) as u64 {
            return Err(format!("flags {flags}, expected {}", k & 0xffff));
        }
        let mut parts = data.splitn(4, |&c| c == b':');
        let (Some(idx), Some(run), Some(ver), Some(fill)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("value does not decode: {}", lossy(data)));
        };
        if parse_num(idx) != Some(k as u64) {
            return Err(format!("value belongs to key {}", lossy(idx)));
        }
        let pattern = &self.sh.pattern;
        let off = (k % 26) as usize;
        if fill.len() > pattern.len() - off || fill != &pattern[off..off + fill.len()] {
            return Err("corrupted value filler".into());
        }
        if run != format_hex8(self.sh.run_id).as_slice() {
            return Ok(None);
        }
        if data.len() != self.sh.args.value_size {
            return Err(format!("value length {}", data.len()));
        }
        match parse_num(ver) {
            Some(v) if v >= 1 && v <= u32::MAX as u64 => Ok(Some(v as u32)),
            _ => Err(format!("bad version {}", lossy(ver))),
        }
    }

    /// A get returned a value for `k`; `sent` is the highest version sent before the get.
    fn hit(&self, k: u32, sent: u32, t: &mut Track, flags: u64, data: &[u8]) {
        let vol = self.is_volatile(k);
        let c = &self.c;
        let ver = match self.decode(k, flags, data) {
            Err(e) => {
                let msg = format!("key {k} (on {}): {e}", self.owner_name(k));
                return self.note(&c.wrong_values, "wrong value", msg);
            }
            Ok(None) if t.floor() == 0 => {
                bump(&c.foreign_values);
                bump(if vol {
                    &c.volatile_hits
                } else {
                    &c.stable_hits
                });
                return;
            }
            Ok(None) => 0,
            Ok(Some(v)) => v,
        };
        if ver > sent {
            let msg = format!(
                "key {k} (on {}): version {ver} returned, but only {sent} sent before the get",
                self.owner_name(k)
            );
            return self.note(&c.wrong_values, "wrong value", msg);
        }
        if ver < t.floor() {
            if vol {
                bump(&c.volatile_stale);
            } else {
                let what = match ver {
                    0 => "a value of another run".to_string(),
                    v => format!("version {v}"),
                };
                let msg = format!(
                    "key {k} (on {}): {what} returned after version {} acknowledged and {} seen",
                    self.owner_name(k),
                    t.acked,
                    t.seen
                );
                bump(&c.stable_stale_reads);
                self.note(&c.lost_writes, "lost write", msg);
            }
        } else {
            t.seen = ver;
        }
        bump(if vol {
            &c.volatile_hits
        } else {
            &c.stable_hits
        });
    }

    fn miss(&self, k: u32, t: &Track) {
        let c = &self.c;
        if self.is_volatile(k) {
            bump(&c.volatile_misses);
        } else if t.floor() > 0 {
            let msg = format!(
                "key {k} (on {}): miss after version {} acknowledged and {} seen",
                self.owner_name(k),
                t.acked,
                t.seen
            );
            bump(&c.stable_misses_after_write);
            self.note(&c.lost_writes, "lost write", msg);
        } else {
            bump(&c.stable_initial_misses);
        }
    }
}

/// The backends and who owns which key.
struct SoakPlan {
    servers: Vec<SoakServer>,
    owners: Vec<u16>,
    volatile: Option<usize>,
}

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

/// Loads the config, picks the pool, computes every key's owner with memroute's ring.
fn soak_plan(args: &Args, path: &std::path::Path) -> Result<SoakPlan, String> {
    use memroute::config::{Endpoint, RawConfig};
    use memroute::generation::Generation;
    use memroute::ring::Distribution;

    let config = RawConfig::load(path)
        .and_then(|raw| raw.validate())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let target: Option<std::net::SocketAddr> = args.target.parse().ok();
    let generation = Generation::build(config, None).map_err(|e| e.to_string())?;
    let pool = match generation.pools.as_slice() {
        [one] => one,
        pools => pools
            .iter()
            .find(|p| Some(p.config.listen) == target)
            .ok_or_else(|| format!("no pool of {} listens on {}", path.display(), args.target))?,
    };
    if pool.config.distribution == Distribution::Random {
        return Err("soak mode needs a deterministic distribution (ketama or modula)".into());
    }
    if pool.config.servers.len() > u16::MAX as usize {
        return Err("too many servers".into());
    }
    let servers: Vec<SoakServer> = pool
        .config
        .servers
        .iter()
        .map(|s| SoakServer {
            address: s.address(),
            name: s.name.clone(),
            addr: match &s.endpoint {
                Endpoint::Tcp { addr, .. } => Some(*addr),
                Endpoint::Memory { .. } => None,
            },
        })
        .collect();
    let volatile = match &args.volatile {
        None => None,
        Some(v) => Some(
            servers
                .iter()
                .position(|s| &s.address == v || s.name.as_ref() == Some(v))
                .ok_or_else(|| {
                    let all: Vec<&str> = servers.iter().map(|s| s.address.as_str()).collect();
                    format!(
                        "--volatile {v}: not a server of the pool ({})",
                        all.join(", ")
                    )
                })?,
        ),
    };
    // Keys are built exactly as build_shared builds them.
    let sh = build_shared(args, Instant::now(), Instant::now());
    let owners = (0..args.keys)
        .map(|k| pool.ring_backends[pool.ring.server_for(sh.key(k))] as u16)
        .collect();
    Ok(SoakPlan {
        servers,
        owners,
        volatile,
    })
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
        let frame = loop {
            let data = rb.data();
            let f = match line(data) {
                None => Frame::Incomplete,
                // One line answers a set, and a get that failed as a whole.
                Some((l, n)) if !op.get || !(l == b"END" || l.starts_with(b"VALUE ")) => {
                    Frame::Complete(n)
                }
                Some(_) => frame_get(data),
            };
            match f {
                Frame::Incomplete => {
                    if let Err(e) = rb.fill(r, deadline).await {
                        let msg = format!("{}: {e}", sk.sh.target);
                        sk.note(&c.connection_errors, "connection error", msg);
                        return Err(());
                    }
                }
                f => break f,
            }
        };
        let len = match frame {
            Frame::Complete(n) => n,
            Frame::Desync(msg) => {
                sk.note(&c.wrong_values, "malformed reply", msg);
                return Err(());
            }
            Frame::Incomplete => unreachable!(),
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
                bump(&c.volatile_get_errors);
                sk.volatile_error(first);
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
                own.track(k).acked = op.ver;
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
        let us = op.t0.elapsed().as_micros() as u64;
        hist.saturating_record(us.clamp(1, 60_000_000));
    }
    Ok(())
}

/// Checks a `VALUE ... END` reply: hits in request order, misses left out.
fn soak_check_get(sk: &Soak, reply: &[u8], keys: &[u32], sents: &[u32], own: &mut OwnKeys) {
    let mut j = 0;
    let mut p = 0;
    loop {
        let (l, n) = line(&reply[p..]).expect("framed");
        if l == b"END" {
            break;
        }
        let (key, flags, bytes) = value_header(l).expect("framed");
        let data = &reply[p + n..p + n + bytes];
        p += n + bytes + 2;
        let Some(off) = keys[j..].iter().position(|&k| sk.sh.key(k) == key) else {
            let msg = format!(
                "get {keys:?}: unexpected or out-of-order key {} in reply",
                lossy(key)
            );
            return sk.note(&sk.c.wrong_values, "misordered reply", msg);
        };
        for &k in &keys[j..j + off] {
            sk.miss(k, own.track(k));
        }
        let k = keys[j + off];
        sk.hit(k, sents[j + off], own.track(k), flags, data);
        j += off + 1;
    }
    for &k in &keys[j..] {
        sk.miss(k, own.track(k));
    }
}

/// One soak connection: its own keys only, pipelined batches of `depth`, reconnecting
/// (counted as a connection error) if the connection breaks. Returns each key's history.
async fn soak_conn(sk: Arc<Soak>, id: usize) -> (Vec<(u32, Track)>, Histogram<u64>) {
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
    let mut rng = StdRng::seed_from_u64(sh.run_id as u64 ^ (id as u64).wrapping_mul(0x9e37_79b9));
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
                    b.ops.push(Op {
                        get: true,
                        first,
                        n,
                        ver: 0,
                        t0: now,
                    });
                } else {
                    let j = rng.gen_range(0..mine.len());
                    own.tracks[j].sent += 1;
                    let ver = own.tracks[j].sent;
                    sh.push_set_command(&mut w, mine[j], ver);
                    b.ops.push(Op {
                        get: false,
                        first: b.keys.len(),
                        n: 1,
                        ver,
                        t0: now,
                    });
                    b.keys.push(mine[j]);
                    b.floors.push(0);
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

/// After the run: reads every key from every backend directly. A key of this run found
/// on a backend that does not own it is misplaced; a stable key must hold, on its owner,
/// a version no older than the last one acknowledged (and not newer than the last sent).
async fn soak_final_check(sk: &Soak, tracks: &[Track]) {
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
                let len = loop {
                    match frame_get(rb.data()) {
                        Frame::Complete(n) => break n,
                        Frame::Desync(m) => return Err(m),
                        Frame::Incomplete => rb
                            .fill(&mut s, &mut deadline)
                            .await
                            .map_err(|e| e.to_string())?,
                    }
                };
                let reply = &rb.data()[..len];
                let mut p = 0;
                while let Some((l, n)) = line(&reply[p..]) {
                    if l == b"END" {
                        break;
                    }
                    let (key, flags, bytes) = value_header(l).ok_or("bad VALUE line")?;
                    let data = &reply[p + n..p + n + bytes];
                    p += n + bytes + 2;
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

async fn soak_mode(args: Args, path: PathBuf) -> i32 {
    let SoakPlan {
        servers,
        owners,
        volatile,
    } = match soak_plan(&args, &path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("loadgen: soak: {e}");
            return 2;
        }
    };
    let mut per_server = vec![0u64; servers.len()];
    for &o in &owners {
        per_server[o as usize] += 1;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let sk = Arc::new(Soak {
        sh: build_shared(&args, start, end),
        servers,
        owners,
        volatile,
        c: SoakCounters::default(),
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
        for (i, s) in sk.servers.iter().enumerate() {
            println!(
                "soak: backend {} {}{}: {} keys",
                i + 1,
                s.address,
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
    soak_final_check(&sk, &tracks).await;
    soak_report(&args, &sk, &per_server, &hist, elapsed)
}

fn soak_report(
    args: &Args,
    sk: &Soak,
    per_server: &[u64],
    h: &Histogram<u64>,
    elapsed: f64,
) -> i32 {
    let c = &sk.c;
    let failures = sk.failures();
    let conn_errors = load(&c.connection_errors);
    let samples = sk.samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let result = if failures > 0 {
        "fail"
    } else if conn_errors > 0 {
        "fail (connection errors)"
    } else {
        "pass"
    };
    let q = |x: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
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
    let failure_seconds = sk
        .failure_seconds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let stalls = sk.stalls.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
        println!(
            "  final direct read: {} keys checked; volatile: {} present, {} missing, {} stale, unreachable {}",
            g(&c.final_keys_checked),
            g(&c.final_volatile_present),
            g(&c.final_volatile_missing),
            g(&c.final_volatile_stale),
            g(&c.final_volatile_unreachable)
        );
        println!(
            "  FAILURES (must be 0): wrong values {}  lost writes {} (misses {}, stale {})  stable-key errors {} (timeouts {})  misplaced keys {}  lost in final read {}  connection errors {} (reconnects {})",
            g(&c.wrong_values),
            g(&c.lost_writes),
            g(&c.stable_misses_after_write),
            g(&c.stable_stale_reads),
            g(&c.stable_errors),
            g(&c.stable_timeouts),
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
        if let Err(e) = std::fs::write(p, text + "\n") {
            eprintln!("cannot write {}: {e}", p.display());
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

// ---------------------------------------------------------------------------
// Reporting.

#[derive(Serialize)]
struct Report {
    target: String,
    mode: &'static str,
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

fn validate(a: &Args) -> Result<(), String> {
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
    if a.soak_config.is_some() {
        if a.prefill || a.expect_hits || a.idle_connections > 0 {
            return Err(
                "--soak-config does not combine with --prefill, --expect-hits or --idle-connections"
                    .into(),
            );
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

fn build_shared(args: &Args, measure_start: Instant, end: Instant) -> Shared {
    let ks = args.key_size;
    let mut key_bytes = Vec::with_capacity(args.keys as usize * ks);
    for i in 0..args.keys {
        let mut num = Vec::new();
        push_num(&mut num, i as u64);
        key_bytes.extend_from_slice(b"k:");
        key_bytes.resize(key_bytes.len() + ks - 2 - num.len(), b'0');
        key_bytes.extend_from_slice(&num);
    }
    let pattern = (0..args.value_size + 26)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let zipf_cdf = if args.dist == Dist::Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..args.keys)
            .map(|i| {
                acc += 1.0 / ((i + 1) as f64).powf(args.zipf_s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        cdf
    } else {
        Vec::new()
    };
    Shared {
        target: args.target.clone(),
        args: args.clone(),
        run_id: rand::random(),
        key_bytes,
        pattern,
        zipf_cdf,
        keys: (0..args.keys)
            .map(|_| Mutex::new(KeyState::new()))
            .collect(),
        clock: AtomicU64::new(0),
        measure_start,
        end,
    }
}

async fn run(args: Args) -> i32 {
    if args.idle_connections > 0 {
        return idle_mode(&args).await;
    }
    if let Some(path) = args.soak_config.clone() {
        return soak_mode(args, path).await;
    }
    // Placeholder window; the real one is set once prefill is done.
    let now = Instant::now();
    let mut shared = Arc::new(build_shared(&args, now, now));
    let mut total = Stats::new();
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
    let measure_start = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = measure_start + Duration::from_secs_f64(args.duration);
    if args.duration > 0.0 {
        {
            // Only the window changes; key state (versions) carries over.
            let sh = Arc::get_mut(&mut shared).expect("no other owners after prefill");
            sh.measure_start = measure_start;
            sh.end = end;
        }
        let tasks: Vec<_> = (0..args.connections)
            .map(|i| {
                if args.rate > 0.0 {
                    tokio::spawn(open_loop(shared.clone(), i))
                } else {
                    tokio::spawn(closed_loop(shared.clone(), i))
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
    report(&args, &total)
}

fn report(args: &Args, t: &Stats) -> i32 {
    let h = t.hist.as_ref().expect("total has a histogram");
    let secs = args.duration.max(1e-9);
    let q = |x: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    let r = Report {
        target: args.target.clone(),
        mode: if args.rate > 0.0 { "open" } else { "closed" },
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
        println!(
            "target {}  {} loop  conns {}  depth {}  threads {}  get-ratio {}  multiget {}  dist {}  value {} B",
            r.target, r.mode, r.connections, r.depth, r.threads, r.get_ratio, r.multiget, r.dist, r.value_size
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
        if let Err(e) = std::fs::write(p, text + "\n") {
            eprintln!("cannot write {}: {e}", p.display());
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

fn main() {
    let args = Args::parse();
    if let Err(e) = validate(&args) {
        eprintln!("loadgen: {e}");
        std::process::exit(2);
    }
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
    let code = rt.block_on(run(args));
    std::process::exit(code);
}
