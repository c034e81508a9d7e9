//! Differential runs against real memcached, as tests/conformance.rs and tests/meta.rs make
//! them: a connection whose every read has a deadline, `version` sentinels that end a case's
//! replies, CAS counters brought level across servers so that both sides of a case answer
//! the same uniques, and the rig that runs a case on a memcached and on memroute fronting
//! memcached backends of its own.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{Memcached, Proxy};

/// The longest wait for a reply (or for the rest of one).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection with a deadline on every read: what arrived is kept, and a read that ends
/// (closed, timed out) marks the buffer with `<closed>` or `<timeout>`.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to 127.0.0.1:`port`.
    pub fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Bytes received and not yet taken.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Reads more bytes; false when the connection ended or timed out (noted in the buffer).
    pub fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.buf.extend_from_slice(b"<timeout>");
            return false;
        }
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.buf.extend_from_slice(b"<closed>");
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                self.buf.extend_from_slice(b"<closed>");
                false
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                self.buf.extend_from_slice(b"<timeout>");
                false
            }
            Err(e) => panic!("read: {e}"),
        }
    }

    /// Reads until `done(buffer)` gives a length, then takes that many bytes; None (the
    /// buffer left as it is, marked) when the connection ends or `within` passes first.
    pub fn read_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&[u8]) -> Option<usize>,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(n) = done(&self.buf) {
                return Some(self.buf.drain(..n).collect());
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// Reads exactly `n` bytes, or panics with what arrived.
    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        self.read_until(READ_TIMEOUT, |b| (b.len() >= n).then_some(n))
            .unwrap_or_else(|| panic!("waiting for {n} bytes, got {:?}", super::text(&self.buf)))
    }

    /// Reads one line (through `\r\n`), or panics with what arrived.
    pub fn read_line(&mut self) -> Vec<u8> {
        self.read_through(b"\r\n")
    }

    /// Reads through the first occurrence of `end`, returning everything up to it.
    pub fn read_through(&mut self, end: &[u8]) -> Vec<u8> {
        self.read_until(READ_TIMEOUT, |b| find(b, end).map(|i| i + end.len()))
            .unwrap_or_else(|| {
                panic!(
                    "waiting for {:?}, got {:?}",
                    super::text(end),
                    super::text(&self.buf)
                )
            })
    }

    /// Reads until `sentinels` `VERSION` lines arrived and drops the last one (and anything
    /// after it); or, when the connection ends or times out first, everything (marked).
    pub fn read_case(&mut self, sentinels: usize) -> Vec<u8> {
        match self.read_until(READ_TIMEOUT, |b| {
            nth_version_line(b, sentinels).map(|at| at + find(&b[at..], b"\r\n").unwrap() + 2)
        }) {
            Some(mut out) => {
                let last = nth_version_line(&out, sentinels).unwrap();
                out.truncate(last);
                out
            }
            None => std::mem::take(&mut self.buf),
        }
    }

    /// Reads until the connection closes (or the deadline passes, marked).
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + READ_TIMEOUT;
        while self.fill(deadline) {}
        std::mem::take(&mut self.buf)
    }
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The start of the `n`th complete `VERSION …\r\n` line at a line start, if it arrived.
/// (Data blocks are read as lines: a case must not store values holding such a line.)
pub fn nth_version_line(buf: &[u8], n: usize) -> Option<usize> {
    let mut seen = 0;
    let mut pos = 0;
    while pos < buf.len() {
        let nl = find(&buf[pos..], b"\r\n")? + pos;
        if buf[pos..].starts_with(b"VERSION ") {
            seen += 1;
            if seen == n {
                return Some(pos);
            }
        }
        pos = nl + 2;
    }
    None
}

/// How many `version` commands `bytes` holds (its replies end in as many VERSION lines).
pub fn version_commands(bytes: &[u8]) -> usize {
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| {
            line.split(|b| *b == b' ')
                .find(|t| !t.is_empty())
                .is_some_and(|t| t == b"version" || t == b"version\r")
        })
        .count()
}

/// The CAS unique the next store on `c`'s server would get, minus one.
pub fn cas_counter(c: &mut Conn) -> u64 {
    c.send(b"set __cas_sync 0 0 1\r\nx\r\ngets __cas_sync\r\n");
    c.read_through(b"STORED\r\n");
    let reply = c.read_through(b"END\r\n");
    let line = String::from_utf8_lossy(&reply);
    line.split_whitespace()
        .nth(4)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no cas in {line:?}"))
}

/// Sends `flush_all` on `c` and reads its `OK`.
pub fn flush(c: &mut Conn) {
    c.send(b"flush_all\r\n");
    c.read_through(b"OK\r\n");
}

/// Brings the CAS counters of the servers behind `conns` (direct connections) to the same
/// value; returns it (the next store on any of them gets it plus one).
pub fn level_cas(conns: &mut [&mut Conn]) -> u64 {
    let counters: Vec<u64> = conns.iter_mut().map(|c| cas_counter(c)).collect();
    let target = *counters.iter().max().expect("a server to level");
    for (c, counter) in conns.iter_mut().zip(counters) {
        let sets = b"set __cas_sync 0 0 1\r\nx\r\n".repeat((target - counter) as usize);
        c.send(&sets);
        for _ in counter..target {
            c.read_through(b"STORED\r\n");
        }
        c.send(b"delete __cas_sync\r\n");
        c.read_through(b"\r\n");
    }
    target
}

/// `bytes` with the CAS placeholders `{C1}`, `{C2}`, `{C3}` replaced by the uniques the
/// case's first, second and third stores get (`cas_base` + 1, + 2, + 3).
pub fn substitute(bytes: &[u8], cas_base: u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for i in 1..=3u64 {
        let pat = format!("{{C{i}}}").into_bytes();
        let val = (cas_base + i).to_string().into_bytes();
        while let Some(at) = find(&out, &pat) {
            out.splice(at..at + pat.len(), val.iter().copied());
        }
    }
    out
}

/// Whether `bytes` holds a CAS placeholder (see [`substitute`]).
pub fn has_placeholder(bytes: &[u8]) -> bool {
    (1..=3).any(|i| find(bytes, format!("{{C{i}}}").as_bytes()).is_some())
}

/// A memcached, and memroute (md5 hashing) over `n` memcached backends of its own.
pub struct Rig {
    direct_mc: Memcached,
    backends: Vec<Memcached>,
    proxy: Proxy,
}

impl Rig {
    /// Starts the memcached, the backends, and memroute.
    pub fn start(n: usize) -> Rig {
        let direct_mc = Memcached::start();
        let backends: Vec<Memcached> = (0..n).map(|_| Memcached::start()).collect();
        let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
        let proxy = Proxy::start(&servers, &["--hash", "md5"]);
        Rig {
            direct_mc,
            backends,
            proxy,
        }
    }

    /// How many backends memroute has.
    pub fn backends(&self) -> usize {
        self.backends.len()
    }

    /// Runs one case on fresh connections to both sides, both flushed and the CAS counters
    /// of the memcached and of memroute's backends brought level: `talk(conn, bytes,
    /// sentinels)` sends the case (its CAS placeholders substituted, see [`substitute`]) and
    /// reads its replies, `sentinels` being how many `VERSION` lines end them once a
    /// `version` follows it (see [`Conn::read_case`]). Returns (memcached's, memroute's).
    pub fn run_with(
        &self,
        bytes: &[u8],
        mut talk: impl FnMut(&mut Conn, &[u8], usize) -> Vec<u8>,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut direct = Conn::open(self.direct_mc.port);
        let mut proxied = Conn::open(self.proxy.port);
        let mut backends: Vec<Conn> = self.backends.iter().map(|m| Conn::open(m.port)).collect();
        flush(&mut direct);
        flush(&mut proxied);
        let mut level: Vec<&mut Conn> = vec![&mut direct];
        level.extend(backends.iter_mut());
        let cas = level_cas(&mut level);
        let bytes = substitute(bytes, cas);
        let sentinels = 1 + version_commands(&bytes);
        let memcached = talk(&mut direct, &bytes, sentinels);
        let memroute = talk(&mut proxied, &bytes, sentinels);
        (memcached, memroute)
    }
}

/// `b` as text, cut after `max` bytes (with the whole length noted).
pub fn show_at_most(b: &[u8], max: usize) -> String {
    if b.len() > max {
        format!("{}…({} bytes)", super::text(&b[..max]), b.len())
    } else {
        super::text(b)
    }
}

/// Whether a side's reply ended in a closed connection or a timeout (see [`Conn::fill`]).
pub fn cut_short(reply: &[u8]) -> bool {
    reply.ends_with(b"<timeout>") || reply.ends_with(b"<closed>")
}

/// The names of a case table, after checking that there are at least `at_least` of them
/// and that no two are alike.
pub fn case_names(names: Vec<&str>, at_least: usize) -> HashSet<&str> {
    assert!(names.len() >= at_least, "only {} cases", names.len());
    let mut set = HashSet::new();
    for name in names {
        assert!(set.insert(name), "duplicate case {name}");
    }
    set
}

/// Prints a case's name and both sides' replies (as shown) when the environment has `var`.
pub fn trace_case(var: &str, name: &str, memcached: &str, memroute: &str) {
    if std::env::var_os(var).is_some() {
        eprintln!("{name}\n  memcached: {memcached:?}\n  memroute:  {memroute:?}");
    }
}
