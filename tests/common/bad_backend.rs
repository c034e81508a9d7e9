//! Misbehaving memcached backends, run in-process on loopback with std threads: one that
//! never answers, one that closes in the middle of a value, one that trickles a real
//! memcached's replies a byte at a time, one that answers garbage, and one that resets its
//! connections at random (used by tests/hostile_backends.rs and tests/failures.rs). Each
//! records every connection it accepted: the request lines it received (data blocks
//! skipped), whether memroute closed it (EOF or an error on the fixture's side), and whether
//! the fixture closed it itself.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What kind of garbage a [`Behaviour::Garbage`] backend answers (chosen when a connection
/// is accepted; see [`BadBackend::set_garbage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Garbage {
    /// A well-formed reply of the wrong shape: `STORED` to a retrieval, `END` to anything
    /// else.
    WrongReply = 0,
    /// 64 random bytes (the first one a control byte no reply starts with), then `\r\n`.
    RandomBytes = 1,
    /// One line that never ends: `x` bytes, written as fast as memroute takes them, until
    /// the connection is closed.
    EndlessLine = 2,
    /// A `VALUE` header announcing a 1 GiB value (far beyond any item size limit), then
    /// data written as fast as memroute takes it, until the connection is closed.
    HugeValue = 3,
    /// Well-formed one-byte `VALUE` items of the requested key, written as fast as memroute
    /// takes them, never followed by `END`.
    EndlessItems = 4,
    /// A line that is no memcached reply at all: `HELLO`.
    UnknownReply = 5,
}

impl Garbage {
    fn from_u8(v: u8) -> Garbage {
        match v {
            0 => Garbage::WrongReply,
            1 => Garbage::RandomBytes,
            2 => Garbage::EndlessLine,
            3 => Garbage::HugeValue,
            4 => Garbage::EndlessItems,
            _ => Garbage::UnknownReply,
        }
    }
}

/// How a [`BadBackend`] misbehaves.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Accepts, reads and discards everything, never answers.
    Stall,
    /// Answers the first request of a connection with `VALUE <key> 0 10\r\n` and 3 of the
    /// 10 data bytes, then closes. Even-numbered connections are half-closed (FIN, then the
    /// fixture keeps reading, so it sees memroute close its side); odd ones fully closed.
    HalfValue,
    /// Fronts the memcached on `upstream`: requests are forwarded as they come, replies sent
    /// back one byte per write with a pause of `min_delay..=max_delay` before each byte.
    Trickle {
        /// Port of the real memcached behind it.
        upstream: u16,
        /// Shortest pause before a byte.
        min_delay: Duration,
        /// Longest pause before a byte.
        max_delay: Duration,
    },
    /// Answers every request with garbage of the current [`Garbage`] kind.
    Garbage(Garbage),
    /// Fronts the memcached on `upstream`, one request at a time (forward it, read its whole
    /// reply, write it back), and on each connection's `n`-th request, `n` drawn from
    /// `1..=max_requests`, closes with `SO_LINGER 0` (a reset) instead of forwarding it.
    Reset {
        /// Port of the real memcached behind it.
        upstream: u16,
        /// Largest number of requests a connection takes (the last one is not answered).
        max_requests: u32,
        /// Seed of the per-connection draws.
        seed: u64,
    },
}

/// What one accepted connection saw.
#[derive(Debug)]
pub struct ConnLog {
    /// 0 for the first connection accepted, and so on.
    pub id: usize,
    requests: Mutex<Vec<String>>,
    peer_closed: AtomicBool,
    we_closed: AtomicBool,
    bytes_written: AtomicUsize,
    /// A clone of the socket, shut down when the fixture is dropped (ends blocked reads).
    stream: Mutex<Option<TcpStream>>,
}

impl ConnLog {
    /// The request lines received (without `\r\n`), in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Whether memroute closed the connection (the fixture read EOF, or a read or write
    /// failed because memroute's side was gone).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed.load(Ordering::SeqCst)
    }

    /// Whether the fixture closed (or reset) the connection itself.
    pub fn we_closed(&self) -> bool {
        self.we_closed.load(Ordering::SeqCst)
    }

    /// Bytes the fixture wrote (or is writing) to memroute on this connection.
    pub fn bytes_written(&self) -> usize {
        self.bytes_written.load(Ordering::SeqCst)
    }

    fn log_request(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line).into_owned();
        self.requests.lock().unwrap().push(line);
    }

    fn mark_peer_closed(&self) {
        self.peer_closed.store(true, Ordering::SeqCst);
    }

    fn mark_we_closed(&self) {
        self.we_closed.store(true, Ordering::SeqCst);
    }

    fn wrote(&self, n: usize) {
        self.bytes_written.fetch_add(n, Ordering::SeqCst);
    }

    /// Drops the fixture's clone of the socket, so that the serving thread dropping its
    /// stream really closes (or resets) the connection.
    fn release(&self) {
        self.stream.lock().unwrap().take();
    }
}

struct Shared {
    conns: Mutex<Vec<Arc<ConnLog>>>,
    stop: AtomicBool,
    garbage: AtomicU8,
    /// Random state for per-connection draws.
    rng: AtomicU64,
}

/// A misbehaving backend listening on 127.0.0.1; its threads stop when it is dropped.
pub struct BadBackend {
    /// Its port on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
}

impl BadBackend {
    /// Starts a backend with `behaviour` on a free loopback port.
    pub fn start(behaviour: Behaviour) -> BadBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind bad backend");
        let port = listener.local_addr().unwrap().port();
        let (garbage, seed) = match behaviour {
            Behaviour::Garbage(g) => (g as u8, 1),
            Behaviour::Reset { seed, .. } => (0, seed),
            _ => (0, 1),
        };
        let shared = Arc::new(Shared {
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            garbage: AtomicU8::new(garbage),
            rng: AtomicU64::new(seed),
        });
        let accept_shared = shared.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let log = {
                    let mut conns = accept_shared.conns.lock().unwrap();
                    let log = Arc::new(ConnLog {
                        id: conns.len(),
                        requests: Mutex::new(Vec::new()),
                        peer_closed: AtomicBool::new(false),
                        we_closed: AtomicBool::new(false),
                        bytes_written: AtomicUsize::new(0),
                        stream: Mutex::new(stream.try_clone().ok()),
                    });
                    conns.push(log.clone());
                    log
                };
                let shared = accept_shared.clone();
                thread::spawn(move || serve(behaviour, stream, log, &shared));
            }
        });
        BadBackend { port, shared }
    }

    /// `127.0.0.1:port:weight name`, as a named server entry.
    pub fn server(&self, name: &str) -> String {
        format!("127.0.0.1:{}:1 {name}", self.port)
    }

    /// `127.0.0.1:port`, the backend's name in memroute's stats and route output.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// Every connection accepted so far, oldest first.
    pub fn conns(&self) -> Vec<Arc<ConnLog>> {
        self.shared.conns.lock().unwrap().clone()
    }

    /// Connection number `i` (panics if not accepted yet).
    pub fn conn(&self, i: usize) -> Arc<ConnLog> {
        self.conns()
            .get(i)
            .cloned()
            .unwrap_or_else(|| panic!("connection {i} was never accepted"))
    }

    /// The garbage kind connections accepted from now on answer.
    pub fn set_garbage(&self, kind: Garbage) {
        self.shared.garbage.store(kind as u8, Ordering::SeqCst);
    }

    /// Polls until `check` holds for the fixture, failing the test after `within`.
    pub fn wait_until(&self, within: Duration, what: &str, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; connections: {:?}",
                self.summary()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// One line per connection (for failure messages).
    pub fn summary(&self) -> Vec<String> {
        self.conns()
            .iter()
            .map(|c| {
                format!(
                    "#{} requests={} peer_closed={} we_closed={} written={}",
                    c.id,
                    c.requests().len(),
                    c.peer_closed(),
                    c.we_closed(),
                    c.bytes_written()
                )
            })
            .collect()
    }
}

impl Drop for BadBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, and end every connection's blocked reads and writes.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for c in self.shared.conns.lock().unwrap().iter() {
            if let Some(s) = c.stream.lock().unwrap().take() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// splitmix64 step on the shared state.
fn next_random(shared: &Shared) -> u64 {
    let mut x = shared
        .rng
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::SeqCst)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Splits a byte stream into memcached requests: a command line, plus a data block for the
/// storage commands.
#[derive(Default)]
pub struct RequestReader {
    buf: Vec<u8>,
}

/// One complete request.
pub struct Request {
    /// The command line without `\r\n`.
    pub line: Vec<u8>,
    /// The whole request as received (line, data block).
    pub bytes: Vec<u8>,
}

impl Request {
    /// The command word.
    pub fn command(&self) -> &[u8] {
        self.line.split(|b| *b == b' ').next().unwrap_or(b"")
    }

    /// Whether the reply is a retrieval (`VALUE`… `END`).
    pub fn is_retrieval(&self) -> bool {
        matches!(self.command(), b"get" | b"gets" | b"gat" | b"gats")
    }

    /// The first key (the second token of a get, the first of anything else).
    pub fn first_key(&self) -> String {
        let mut toks = self.line.split(|b| *b == b' ').filter(|t| !t.is_empty());
        let cmd = toks.next().unwrap_or(b"");
        if cmd == b"gat" || cmd == b"gats" {
            toks.next();
        }
        String::from_utf8_lossy(toks.next().unwrap_or(b"?")).into_owned()
    }
}

impl RequestReader {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete request, if one is buffered.
    pub fn next_request(&mut self) -> Option<Request> {
        let nl = self.buf.windows(2).position(|w| w == b"\r\n")?;
        let line = self.buf[..nl].to_vec();
        let toks: Vec<&[u8]> = line
            .split(|b| *b == b' ')
            .filter(|t| !t.is_empty())
            .collect();
        let storage = matches!(
            toks.first().copied(),
            Some(b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas")
        );
        let mut end = nl + 2;
        if storage {
            let len: usize = toks
                .get(4)
                .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok())
                .unwrap_or_else(|| panic!("bad storage line {:?}", String::from_utf8_lossy(&line)));
            end += len + 2;
            if self.buf.len() < end {
                return None;
            }
        }
        let bytes: Vec<u8> = self.buf.drain(..end).collect();
        Some(Request { line, bytes })
    }
}

fn serve(behaviour: Behaviour, stream: TcpStream, log: Arc<ConnLog>, shared: &Shared) {
    serve_as(behaviour, stream, &log, shared);
    log.release();
}

fn serve_as(behaviour: Behaviour, stream: TcpStream, log: &Arc<ConnLog>, shared: &Shared) {
    match behaviour {
        Behaviour::Stall => stall(stream, log),
        Behaviour::HalfValue => half_value(stream, log),
        Behaviour::Trickle {
            upstream,
            min_delay,
            max_delay,
        } => trickle(stream, log, shared, upstream, min_delay, max_delay),
        Behaviour::Garbage(_) => {
            let kind = Garbage::from_u8(shared.garbage.load(Ordering::SeqCst));
            garbage(stream, log, shared, kind)
        }
        Behaviour::Reset {
            upstream,
            max_requests,
            ..
        } => {
            let n = 1 + (next_random(shared) % u64::from(max_requests.max(1))) as usize;
            reset(stream, log, upstream, n)
        }
    }
}

/// Reads into `buf`; `None` when memroute closed its side (recorded) or the read failed.
fn read_some(stream: &mut TcpStream, buf: &mut [u8], log: &ConnLog) -> Option<usize> {
    match stream.read(buf) {
        Ok(0) | Err(_) => {
            log.mark_peer_closed();
            None
        }
        Ok(n) => Some(n),
    }
}

fn write_logged(stream: &mut TcpStream, bytes: &[u8], log: &ConnLog) -> io::Result<()> {
    // Counted before the write: memroute may forward the bytes and the test read the count
    // before this thread runs again, and the count must already include them then.
    log.wrote(bytes.len());
    match stream.write_all(bytes) {
        Ok(()) => Ok(()),
        Err(e) => {
            // The only way a write fails here is memroute's side being gone.
            log.mark_peer_closed();
            Err(e)
        }
    }
}

fn stall(mut s: TcpStream, log: &ConnLog) {
    let mut reader = RequestReader::default();
    let mut buf = [0u8; 16384];
    while let Some(n) = read_some(&mut s, &mut buf, log) {
        reader.push(&buf[..n]);
        while let Some(req) = reader.next_request() {
            log.log_request(&req.line);
        }
    }
}

fn half_value(mut s: TcpStream, log: &ConnLog) {
    let mut reader = RequestReader::default();
    let mut buf = [0u8; 16384];
    let first = loop {
        let Some(n) = read_some(&mut s, &mut buf, log) else {
            return;
        };
        reader.push(&buf[..n]);
        if let Some(req) = reader.next_request() {
            break req;
        }
    };
    log.log_request(&first.line);
    while let Some(req) = reader.next_request() {
        log.log_request(&req.line);
    }
    let header = format!("VALUE {} 0 10\r\nabc", first.first_key());
    if write_logged(&mut s, header.as_bytes(), log).is_err() {
        return;
    }
    if log.id % 2 == 1 {
        log.mark_we_closed();
        log.release();
        return; // dropping the stream closes it
    }
    // Half-close: memroute reads EOF; the fixture then sees memroute close its side.
    let _ = s.shutdown(Shutdown::Write);
    log.mark_we_closed();
    while let Some(n) = read_some(&mut s, &mut buf, log) {
        reader.push(&buf[..n]);
        while let Some(req) = reader.next_request() {
            log.log_request(&req.line);
        }
    }
}

fn trickle(
    mut s: TcpStream,
    log: &Arc<ConnLog>,
    shared: &Shared,
    upstream: u16,
    min_delay: Duration,
    max_delay: Duration,
) {
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = up.set_nodelay(true);
    // Requests: memroute → memcached at full speed, in their own thread.
    let mut s_read = s.try_clone().expect("clone");
    let mut up_write = up.try_clone().expect("clone");
    let log_r = log.clone();
    let forward = thread::spawn(move || {
        let mut reader = RequestReader::default();
        let mut buf = [0u8; 16384];
        while let Some(n) = read_some(&mut s_read, &mut buf, &log_r) {
            reader.push(&buf[..n]);
            while let Some(req) = reader.next_request() {
                log_r.log_request(&req.line);
            }
            if up_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        // memroute is gone: stop the replies too.
        let _ = up_write.shutdown(Shutdown::Both);
    });
    // Replies: memcached → memroute, one byte per write.
    let spread = max_delay.saturating_sub(min_delay).as_micros() as u64 + 1;
    let mut buf = [0u8; 16384];
    'relay: loop {
        let n = match up.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for b in &buf[..n] {
            let pause = min_delay + Duration::from_micros(next_random(shared) % spread);
            thread::sleep(pause);
            if log.peer_closed() || write_logged(&mut s, std::slice::from_ref(b), log).is_err() {
                break 'relay;
            }
        }
    }
    let _ = up.shutdown(Shutdown::Both);
    let _ = forward.join();
}

fn garbage(mut s: TcpStream, log: &ConnLog, shared: &Shared, kind: Garbage) {
    let mut reader = RequestReader::default();
    let mut buf = [0u8; 16384];
    while let Some(n) = read_some(&mut s, &mut buf, log) {
        reader.push(&buf[..n]);
        while let Some(req) = reader.next_request() {
            log.log_request(&req.line);
            let answer: Vec<u8> = match kind {
                Garbage::WrongReply if req.is_retrieval() => b"STORED\r\n".to_vec(),
                Garbage::WrongReply => b"END\r\n".to_vec(),
                Garbage::UnknownReply => b"HELLO\r\n".to_vec(),
                Garbage::RandomBytes => {
                    let mut out = vec![0x01];
                    while out.len() < 64 {
                        out.extend_from_slice(&next_random(shared).to_le_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                    out
                }
                Garbage::EndlessLine => {
                    endless(&mut s, b"", log);
                    return;
                }
                Garbage::HugeValue => {
                    let header = format!("VALUE {} 0 1073741824\r\n", req.first_key());
                    endless(&mut s, header.as_bytes(), log);
                    return;
                }
                Garbage::EndlessItems => {
                    let item = format!("VALUE {} 0 1\r\nx\r\n", req.first_key());
                    let chunk = item.repeat(65536 / item.len());
                    while write_logged(&mut s, chunk.as_bytes(), log).is_ok() {}
                    return;
                }
            };
            if write_logged(&mut s, &answer, log).is_err() {
                return;
            }
        }
    }
}

/// Writes `header`, then `x` bytes with no newline until a write fails (memroute closed the
/// connection).
fn endless(s: &mut TcpStream, header: &[u8], log: &ConnLog) {
    let chunk = vec![b'x'; 65536];
    if write_logged(s, header, log).is_err() {
        return;
    }
    while write_logged(s, &chunk, log).is_ok() {}
}

fn reset(mut s: TcpStream, log: &ConnLog, upstream: u16, n: usize) {
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = up.set_nodelay(true);
    let mut reader = RequestReader::default();
    let mut buf = [0u8; 16384];
    let mut count = 0;
    while let Some(got) = read_some(&mut s, &mut buf, log) {
        reader.push(&buf[..got]);
        while let Some(req) = reader.next_request() {
            log.log_request(&req.line);
            count += 1;
            if count == n {
                // Close with SO_LINGER 0: the kernel sends a reset.
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                log.mark_we_closed();
                log.release();
                return; // dropping the stream resets the connection
            }
            if up.write_all(&req.bytes).is_err() {
                return;
            }
            let Some(answer) = read_reply(&mut up, req.is_retrieval()) else {
                return;
            };
            if write_logged(&mut s, &answer, log).is_err() {
                return;
            }
        }
    }
}

/// Reads one whole memcached reply: one line, or `VALUE` items through `END` (or an error
/// line) for a retrieval.
fn read_reply(up: &mut TcpStream, retrieval: bool) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    let mut line_start = 0;
    loop {
        // Byte by byte: simple, and replies here are small.
        if up.read(&mut byte).ok()? == 0 {
            return None;
        }
        out.push(byte[0]);
        if !out.ends_with(b"\r\n") {
            continue;
        }
        let line = &out[line_start..];
        if !retrieval || !line.starts_with(b"VALUE ") {
            return Some(out);
        }
        let len = super::value_len(line)?;
        let mut data = vec![0u8; len + 2];
        up.read_exact(&mut data).ok()?;
        out.extend_from_slice(&data);
        line_start = out.len();
    }
}
