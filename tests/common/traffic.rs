//! Checked traffic: well-behaved clients that talk to memroute in the background while a test
//! does something to it (reloads its config, kills or misbehaves a backend, attacks it with
//! hostile clients). Each client keeps one connection for its whole life and sends pipelined
//! batches; every reply is compared byte for byte, in request order. A reply that differs is
//! tallied and the client goes on; a connection that is closed, reset or silent for 10 s ends
//! that client. Any of either fails the test at the next wait and at [`CheckedTraffic::finish`].
//!
//! A client's batch (round `r`), all in one write:
//! - `set` of up to 6 of its own keys (cycling through them round by round): one value of
//!   30–36 KB (it spans several socket reads), the others 1–2000 bytes, flags varying;
//! - a `get` of each, each followed by a `get` of one pre-written shared key (if any);
//! - one multi-get of the written keys in reverse order, a key never written (a miss) among
//!   them, then up to 6 shared keys (usually spread over the backends);
//! - `delete` of the never-written key (`NOT_FOUND`), and `version`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::panic;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{
    describe_difference, mix, pattern, set_request_bytes, text, truncate, value_item,
    value_item_bytes, value_len, Client, Proxy, VERSION_REPLY,
};

/// Own keys a client writes per batch, at most.
const WRITES: usize = 6;
/// Shared keys in a batch's multi-get, at most.
const SHARED_IN_MULTI_GET: u64 = 6;
/// How long a wait for progress may take.
const PROGRESS_WITHIN: Duration = Duration::from_secs(20);
/// Messages kept of the first errors.
const FIRST_ERRORS: usize = 20;

/// What checked traffic to run: one client per list of own keys, pre-written shared keys to
/// read, and a pause between batches. Started with [`Traffic::start`].
pub struct Traffic {
    own: Vec<Vec<String>>,
    shared: Arc<Vec<(String, String)>>,
    pause: Duration,
}

impl Traffic {
    /// One client per list: each writes and reads back its own keys, all but the last; the
    /// last is never written (it is the batch's miss and its `delete`).
    pub fn clients(own: Vec<Vec<String>>) -> Traffic {
        assert!(!own.is_empty(), "checked traffic needs a client");
        for keys in &own {
            assert!(
                keys.len() >= 2,
                "a checked client needs 2 keys or more: {keys:?}"
            );
        }
        Traffic {
            own,
            shared: Arc::new(Vec::new()),
            pause: Duration::ZERO,
        }
    }

    /// One client on the keys `name:0` … `name:6` (`name:6` never written).
    pub fn named(name: &str) -> Traffic {
        Self::clients(vec![(0..=WRITES).map(|i| format!("{name}:{i}")).collect()])
    }

    /// The clients also read `shared`, keys already written that must always read back with
    /// their value (and are never written by the traffic).
    pub fn reading(mut self, shared: Arc<Vec<(String, String)>>) -> Traffic {
        self.shared = shared;
        self
    }

    /// Each client waits `pause` after each batch.
    pub fn pause(mut self, pause: Duration) -> Traffic {
        self.pause = pause;
        self
    }

    /// Connects every client (so every connection exists before the caller changes anything),
    /// starts them, and waits until each has checked 2 batches.
    pub fn start(self, proxy: &Proxy) -> CheckedTraffic {
        let (port, pid) = (proxy.port, proxy.pid());
        let state = Arc::new(State {
            stop: AtomicBool::new(false),
            hold: AtomicBool::new(false),
            clients: self.own.iter().map(|_| ClientState::default()).collect(),
            batches: Arc::new(AtomicU64::new(0)),
            replies: AtomicU64::new(0),
            keys_read: AtomicU64::new(0),
            sets: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            broken: AtomicU64::new(0),
            first_errors: Mutex::new(Vec::new()),
            started: Instant::now(),
            worst: Mutex::new((Duration::ZERO, Duration::ZERO)),
        });
        let threads = self
            .own
            .into_iter()
            .enumerate()
            .map(|(n, own)| {
                let stream = Client::connect(port).stream;
                let run = ClientRun {
                    n,
                    own,
                    shared: self.shared.clone(),
                    pause: self.pause,
                    state: state.clone(),
                    port,
                    pid,
                };
                thread::spawn(move || run.run(Conn::new(stream)))
            })
            .collect();
        let traffic = CheckedTraffic { state, threads };
        let deadline = Instant::now() + PROGRESS_WITHIN;
        while traffic
            .state
            .clients
            .iter()
            .any(|c| c.batches.load(Ordering::Relaxed) < 2)
        {
            traffic.fail_if_failed("the checked traffic to start");
            assert!(
                Instant::now() < deadline,
                "checked traffic did not start: {:#?}",
                traffic.report()
            );
            thread::sleep(Duration::from_millis(2));
        }
        traffic
    }
}

/// Checked traffic running in the background (see the module docs). Dropping it stops it.
pub struct CheckedTraffic {
    state: Arc<State>,
    threads: Vec<JoinHandle<()>>,
}

/// What the traffic did, when it finished.
#[derive(Debug, Clone)]
pub struct TrafficReport {
    /// Clients (connections).
    pub clients: usize,
    /// Batches checked whole.
    pub batches: u64,
    /// Replies that were as expected.
    pub replies: u64,
    /// Keys asked for by the checked batches' retrievals (memcached's `cmd_get` counts keys).
    pub keys_read: u64,
    /// Storage commands in the checked batches.
    pub sets: u64,
    /// The slowest batch, from its write to its last reply.
    pub worst: Duration,
    /// When the slowest batch finished, from the start.
    pub worst_at: Duration,
    /// Replies that differed from what was expected.
    pub errors: u64,
    /// Connections lost (closed, reset, timed out).
    pub broken: u64,
    /// The first errors, described.
    pub first_errors: Vec<String>,
}

impl TrafficReport {
    /// Prints the report under `what`, and asserts no batch took `limit` or longer.
    pub fn assert_served(&self, what: &str, limit: Duration) {
        eprintln!(
            "{what}: checked traffic ran {} batches ({} replies) on {} connections, slowest \
             {:?} at {:?}",
            self.batches, self.replies, self.clients, self.worst, self.worst_at
        );
        assert!(
            self.worst < limit,
            "{what}: a checked batch took {:?} (limit {limit:?})",
            self.worst
        );
    }

    /// Asserts the traffic checked at least `min` replies.
    pub fn assert_replies(&self, min: u64) {
        assert!(
            self.replies >= min,
            "checked traffic checked only {} replies, expected {min} or more: {self:#?}",
            self.replies
        );
    }
}

impl CheckedTraffic {
    /// Batches checked whole so far, over all clients.
    pub fn batches(&self) -> u64 {
        self.state.batches.load(Ordering::Relaxed)
    }

    /// The count of checked batches, to read from another thread.
    pub fn batch_counter(&self) -> Arc<AtomicU64> {
        self.state.batches.clone()
    }

    /// Replies checked so far, over all clients.
    pub fn replies(&self) -> u64 {
        self.state.replies.load(Ordering::Relaxed)
    }

    /// Keys the checked batches asked for in retrievals (exact while parked).
    pub fn keys_read(&self) -> u64 {
        self.state.keys_read.load(Ordering::Relaxed)
    }

    /// Storage commands in the checked batches (exact while parked).
    pub fn sets(&self) -> u64 {
        self.state.sets.load(Ordering::Relaxed)
    }

    /// Waits until `n` more batches are checked; fails on any error so far, or if that takes
    /// longer than 20 s.
    pub fn wait_batches(&self, n: u64, what: &str) {
        self.wait(&self.state.batches, n, "batches", what);
    }

    /// Waits until `n` more replies are checked; fails on any error so far, or if that takes
    /// longer than 20 s.
    pub fn wait_replies(&self, n: u64, what: &str) {
        self.wait(&self.state.replies, n, "replies", what);
    }

    fn wait(&self, counter: &AtomicU64, n: u64, unit: &str, what: &str) {
        let target = counter.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + PROGRESS_WITHIN;
        while counter.load(Ordering::Relaxed) < target {
            self.fail_if_failed(what);
            assert!(
                Instant::now() < deadline,
                "checked traffic made no progress ({n} more {unit}) {what}: {:#?}",
                self.report()
            );
            thread::sleep(Duration::from_millis(2));
        }
        self.fail_if_failed(what);
    }

    /// Holds every client between batches (so counters only the test moves can be read);
    /// returns once all are held.
    pub fn park(&self) {
        self.state.hold.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + PROGRESS_WITHIN;
        while !self
            .state
            .clients
            .iter()
            .all(|c| c.parked.load(Ordering::Relaxed) || c.done.load(Ordering::Relaxed))
        {
            self.fail_if_failed("while parking");
            assert!(Instant::now() < deadline, "checked traffic did not park");
            thread::sleep(Duration::from_millis(2));
        }
        self.fail_if_failed("while parking");
    }

    /// Lets the clients go on after [`CheckedTraffic::park`].
    pub fn unpark(&self) {
        self.state.hold.store(false, Ordering::Relaxed);
    }

    /// Stops the clients (each checks one more `version` on its connection) and returns what
    /// they did; fails the test if any reply differed or any connection was lost.
    pub fn finish(mut self) -> TrafficReport {
        self.unpark();
        self.state.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if let Err(e) = t.join() {
                panic::resume_unwind(e);
            }
        }
        let report = self.report();
        assert_eq!(
            (report.errors, report.broken),
            (0, 0),
            "checked traffic: wrong replies / lost connections: {report:#?}"
        );
        report
    }

    /// What the traffic did so far.
    pub fn report(&self) -> TrafficReport {
        let s = &self.state;
        let (worst, worst_at) = *s.worst.lock().unwrap();
        TrafficReport {
            clients: s.clients.len(),
            batches: s.batches.load(Ordering::Relaxed),
            replies: s.replies.load(Ordering::Relaxed),
            keys_read: s.keys_read.load(Ordering::Relaxed),
            sets: s.sets.load(Ordering::Relaxed),
            worst,
            worst_at,
            errors: s.errors.load(Ordering::Relaxed),
            broken: s.broken.load(Ordering::Relaxed),
            first_errors: s.first_errors.lock().unwrap().clone(),
        }
    }

    /// Fails the test, naming `what` was going on, if a reply differed, a connection was
    /// lost, or a client thread panicked.
    fn fail_if_failed(&self, what: &str) {
        let s = &self.state;
        if s.errors.load(Ordering::Relaxed) > 0 || s.broken.load(Ordering::Relaxed) > 0 {
            panic!("checked traffic failed ({what}): {:#?}", self.report());
        }
        if self.threads.iter().any(|t| t.is_finished()) {
            panic!(
                "a checked client stopped early ({what}): {:#?}",
                self.report()
            );
        }
    }
}

impl Drop for CheckedTraffic {
    /// A test failing elsewhere stops the clients before memroute and the backends go.
    fn drop(&mut self) {
        self.state.hold.store(false, Ordering::Relaxed);
        self.state.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Shared between the clients and the test.
struct State {
    stop: AtomicBool,
    hold: AtomicBool,
    clients: Vec<ClientState>,
    batches: Arc<AtomicU64>,
    replies: AtomicU64,
    keys_read: AtomicU64,
    sets: AtomicU64,
    errors: AtomicU64,
    broken: AtomicU64,
    first_errors: Mutex<Vec<String>>,
    started: Instant,
    /// The slowest batch, and when it finished.
    worst: Mutex<(Duration, Duration)>,
}

#[derive(Default)]
struct ClientState {
    batches: AtomicU64,
    parked: AtomicBool,
    done: AtomicBool,
}

impl State {
    fn note(&self, msg: String) {
        let mut first = self.first_errors.lock().unwrap();
        if first.len() < FIRST_ERRORS {
            first.push(msg);
        }
    }

    fn wrong_reply(&self, msg: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.note(msg);
    }

    fn lost_connection(&self, msg: String) {
        self.broken.fetch_add(1, Ordering::Relaxed);
        self.note(msg);
    }
}

/// One reply a batch expects.
struct Expected {
    /// The request's command line, for messages.
    request: String,
    /// A retrieval (`VALUE` items through `END`) rather than one line.
    retrieval: bool,
    bytes: Vec<u8>,
}

/// One batch: the pipelined request and the replies it must get, in order.
#[derive(Default)]
struct Batch {
    request: Vec<u8>,
    replies: Vec<Expected>,
    keys_read: u64,
    sets: u64,
}

impl Batch {
    fn add(&mut self, request: &[u8], retrieval: bool, reply: Vec<u8>) {
        let line_end = request
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(request.len());
        self.request.extend_from_slice(request);
        self.replies.push(Expected {
            request: text(&request[..line_end]),
            retrieval,
            bytes: reply,
        });
    }

    fn get(&mut self, keys: &[&str], reply: Vec<u8>) {
        self.keys_read += keys.len() as u64;
        self.add(
            format!("get {}\r\n", keys.join(" ")).as_bytes(),
            true,
            reply,
        );
    }
}

/// Client `n`'s batch of round `round` (see the module docs).
fn batch(n: usize, own: &[String], shared: &[(String, String)], round: u64) -> Batch {
    let mut b = Batch::default();
    let writable = &own[..own.len() - 1];
    let absent = own.last().unwrap().as_str();
    let client = (n as u64) << 40;
    let mut written = Vec::new();
    for i in 0..WRITES.min(writable.len()) {
        let key = writable[(round as usize * WRITES + i) % writable.len()].as_str();
        let i = i as u64;
        let len = if i == 0 {
            30_000 + (round % 7) as usize * 1000
        } else {
            1 + (mix(client ^ (round * 8 + i)) % 2000) as usize
        };
        let value = pattern(mix(client ^ round) ^ i, len);
        let flags = (round * 10 + i) as u32;
        b.sets += 1;
        b.add(
            &set_request_bytes(key, flags, &value),
            false,
            b"STORED\r\n".to_vec(),
        );
        written.push((key, value_item_bytes(key, flags, &value)));
    }
    let shared_item = |pick: u64| {
        let (k, v) = &shared[(pick % shared.len() as u64) as usize];
        (k.as_str(), value_item(k, v).into_bytes())
    };
    for (i, (key, item)) in written.iter().enumerate() {
        b.get(&[*key], [item.as_slice(), b"END\r\n"].concat());
        if !shared.is_empty() {
            let (k, item) = shared_item(mix(client ^ (round * 8 + i as u64)));
            b.get(&[k], [item.as_slice(), b"END\r\n"].concat());
        }
    }
    let mut keys = Vec::new();
    let mut reply = Vec::new();
    for (i, (key, item)) in written.iter().rev().enumerate() {
        keys.push(*key);
        reply.extend_from_slice(item);
        if i == 0 {
            keys.push(absent);
        }
    }
    if !shared.is_empty() {
        for m in 0..SHARED_IN_MULTI_GET {
            let (k, item) = shared_item(mix(client ^ round ^ (m << 20) ^ (1 << 60)));
            if !keys.contains(&k) {
                keys.push(k);
                reply.extend(item);
            }
        }
    }
    reply.extend_from_slice(b"END\r\n");
    b.get(&keys, reply);
    b.add(
        format!("delete {absent}\r\n").as_bytes(),
        false,
        b"NOT_FOUND\r\n".to_vec(),
    );
    b.add(b"version\r\n", false, VERSION_REPLY.as_bytes().to_vec());
    b
}

/// One client's thread.
struct ClientRun {
    n: usize,
    own: Vec<String>,
    shared: Arc<Vec<(String, String)>>,
    pause: Duration,
    state: Arc<State>,
    port: u16,
    pid: u32,
}

impl ClientRun {
    fn run(self, mut conn: Conn) {
        let me = &self.state.clients[self.n];
        // At the end, the same connection still works, and nothing more was sent on it.
        let mut last = Batch::default();
        last.add(b"version\r\n", false, VERSION_REPLY.as_bytes().to_vec());
        let outcome = self
            .batches(&mut conn, me)
            .and_then(|()| self.exchange(&mut conn, &last, "final version"));
        if let Err(e) = outcome {
            self.state.lost_connection(e);
        }
        me.done.store(true, Ordering::Relaxed);
    }

    /// Sends and checks batches until stopped; Err when the connection is lost.
    fn batches(&self, conn: &mut Conn, me: &ClientState) -> Result<(), String> {
        let s = &*self.state;
        let mut round = 0;
        while !s.stop.load(Ordering::Relaxed) {
            if s.hold.load(Ordering::Relaxed) {
                me.parked.store(true, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(2));
                continue;
            }
            me.parked.store(false, Ordering::Relaxed);
            let b = batch(self.n, &self.own, &self.shared, round);
            let t = Instant::now();
            self.exchange(conn, &b, &format!("batch {round}"))?;
            let took = t.elapsed();
            {
                let mut worst = s.worst.lock().unwrap();
                if took > worst.0 {
                    *worst = (took, s.started.elapsed());
                }
            }
            s.keys_read.fetch_add(b.keys_read, Ordering::Relaxed);
            s.sets.fetch_add(b.sets, Ordering::Relaxed);
            round += 1;
            me.batches.store(round, Ordering::Relaxed);
            s.batches.fetch_add(1, Ordering::Relaxed);
            if !self.pause.is_zero() {
                thread::sleep(self.pause);
            }
        }
        Ok(())
    }

    /// Writes `b` and checks every reply, tallying those that differ; Err when the
    /// connection is lost (a timeout described with what memroute looks like then).
    fn exchange(&self, conn: &mut Conn, b: &Batch, what: &str) -> Result<(), String> {
        let n = self.n;
        let t = Instant::now();
        conn.stream
            .write_all(&b.request)
            .map_err(|e| format!("client {n}, {what}: write failed: {e}"))?;
        for (j, exp) in b.replies.iter().enumerate() {
            let at = format!("client {n}, {what}, reply {j} ({})", exp.request);
            let got = conn.reply(exp.retrieval).map_err(|e| match e {
                ReadError::TimedOut => format!(
                    "{at}: no reply after {:?}; memroute then: {}",
                    t.elapsed(),
                    diagnose(self.port, self.pid)
                ),
                ReadError::Other(msg) => format!("{at}: {msg}"),
            })?;
            if got == exp.bytes {
                self.state.replies.fetch_add(1, Ordering::Relaxed);
            } else {
                let diff = describe_difference(&got, &exp.bytes);
                self.state.wrong_reply(format!("{at}: {diff}"));
            }
        }
        Ok(())
    }
}

enum ReadError {
    TimedOut,
    Other(String),
}

/// A connection that reports failures instead of panicking.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    fn fill(&mut self) -> Result<(), ReadError> {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(ReadError::Other(format!(
                "connection closed by memroute after {:?}",
                truncate(&text(&self.buf))
            ))),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(ReadError::TimedOut)
            }
            Err(e) => Err(ReadError::Other(format!("read failed: {e}"))),
        }
    }

    fn line(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buf.drain(..i + 2).collect());
            }
            self.fill()?;
        }
    }

    fn exact(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One reply: a line, or for a retrieval `VALUE` items through `END` (or an error line).
    fn reply(&mut self, retrieval: bool) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::new();
        loop {
            let line = self.line()?;
            out.extend_from_slice(&line);
            if !retrieval || !line.starts_with(b"VALUE ") {
                return Ok(out);
            }
            let len = value_len(&line)
                .ok_or_else(|| ReadError::Other(format!("bad VALUE line {:?}", text(&line))))?;
            out.extend(self.exact(len + 2)?);
        }
    }
}

/// What memroute looks like now: its threads' states and CPU time (twice, 200 ms apart), and
/// whether a fresh client gets answers.
fn diagnose(port: u16, pid: u32) -> String {
    let threads = || -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return vec!["(no /proc entry)".into()];
        };
        dir.flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
            .map(|st| {
                // pid (comm) state ... utime stime at fields 14, 15
                let close = st.rfind(')').unwrap_or(0);
                let f: Vec<&str> = st[close + 1..].split_whitespace().collect();
                format!(
                    "{} {} cpu={}",
                    &st[st.find('(').unwrap_or(0)..=close],
                    f.first().unwrap_or(&"?"),
                    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
                        + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
                )
            })
            .collect()
    };
    let before = threads();
    let fresh = TcpStream::connect(("127.0.0.1", port)).and_then(|mut f| {
        f.set_read_timeout(Some(Duration::from_secs(2)))?;
        let t = Instant::now();
        f.write_all(b"version\r\nstats backends\r\nstats\r\n")?;
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while !out.ends_with(b"END\r\n") || out.windows(5).filter(|w| w == b"END\r\n").count() < 2 {
            let k = f.read(&mut buf)?;
            if k == 0 {
                break;
            }
            out.extend_from_slice(&buf[..k]);
        }
        Ok(format!("answered in {:?}: {}", t.elapsed(), text(&out)))
    });
    thread::sleep(Duration::from_millis(200));
    format!(
        "threads {before:?}, 200 ms later {:?}; a fresh client: {fresh:?}",
        threads()
    )
}
