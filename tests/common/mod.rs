//! Test fixtures: real memcached and twemproxy processes and the memroute binary, each
//! started on a free loopback port and killed when dropped, plus a raw-socket client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now, handed out once per test process (parallel
/// tests never get the same one) and taken below the kernel's ephemeral range (from 32768),
/// so no outgoing connection can be holding it when a server binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    const LOW: u32 = 20_000;
    const HIGH: u32 = 32_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries run one after another; a start that depends on the process spreads them.
    let _ = NEXT.compare_exchange(
        0,
        LOW + (std::process::id() % 200) * 60,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (n - LOW) % (HIGH - LOW)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening on {port}: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn require(path: &str) -> &str {
    assert!(
        std::path::Path::new(path).exists(),
        "{path} is missing: run scripts/test.sh, which installs the test dependencies"
    );
    path
}

/// A real memcached process.
pub struct Memcached {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Memcached {
    /// Starts memcached (one thread, no UDP) with default settings.
    pub fn start() -> Memcached {
        Self::start_with(&[])
    }

    /// The memcached command line for `port`: one thread, no UDP, loopback only.
    fn command(port: u16, extra: &[&str]) -> Command {
        let mut cmd = Command::new(require("/usr/bin/memcached"));
        cmd.args([
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-l",
            "127.0.0.1",
            "-t",
            "1",
        ])
        .args(["-u", "root"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        cmd
    }

    /// Starts memcached with extra arguments.
    pub fn start_with(extra: &[&str]) -> Memcached {
        let port = free_port();
        let mut child = Self::command(port, &[])
            .args(extra)
            .spawn()
            .expect("spawn memcached");
        wait_for_port(port, &mut child, "memcached");
        Memcached { child, port }
    }

    /// `127.0.0.1:port:weight`, as a server entry.
    pub fn server(&self, weight: u32) -> String {
        format!("127.0.0.1:{}:{weight}", self.port)
    }

    /// A raw client talking to this memcached directly.
    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    /// `127.0.0.1:port`, its name in memroute's stats, metrics and route output.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the process now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The memroute binary under test.
pub struct Proxy {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Proxy {
    /// Path of the memroute binary cargo built for the tests.
    pub fn binary() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_memroute"))
    }

    /// Starts memroute with a flag-defined pool over `servers` plus extra flags.
    pub fn start(servers: &[String], extra: &[&str]) -> Proxy {
        let port = free_port();
        let mut cmd = Command::new(Self::binary());
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            "warn",
        ]);
        for s in servers {
            cmd.args(["--server", s]);
        }
        cmd.args(extra);
        Self::spawn(cmd, port)
    }

    /// Starts memroute with a config file whose pool listens on `port`.
    pub fn start_config(config: &std::path::Path, port: u16, extra: &[&str]) -> Proxy {
        let mut cmd = Command::new(Self::binary());
        cmd.args(["--config", config.to_str().unwrap(), "--log-level", "warn"]);
        cmd.args(extra);
        Self::spawn(cmd, port)
    }

    fn spawn(mut cmd: Command, port: u16) -> Proxy {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn memroute");
        wait_for_port(port, &mut child, "memroute");
        Proxy { child, port }
    }

    /// A raw client.
    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's twemproxy.
pub struct Nutcracker {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nutcracker {
    /// Starts nutcracker with one pool: `hash`, `distribution`, and `servers` as YAML list
    /// entries (e.g. `127.0.0.1:11211:1 name`).
    pub fn start(hash: &str, distribution: &str, servers: &[String]) -> Nutcracker {
        Self::start_with(hash, distribution, servers, &[])
    }

    /// A raw client.
    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }
}

impl Drop for Nutcracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking raw-protocol client with a read timeout, so a hang fails the test.
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to 127.0.0.1:`port`.
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes bytes.
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("write");
    }

    /// Reads what has arrived into the buffer; panics if the connection is closed.
    fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let got = self.stream.read(&mut chunk).expect("read (timed out?)");
        assert!(
            got > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.buf.extend_from_slice(&chunk[..got]);
    }

    /// Reads exactly `n` bytes.
    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill();
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one line, including its `\r\n`.
    pub fn read_line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return self.buf.drain(..i + 2).collect();
            }
            self.fill();
        }
    }

    /// Reads one retrieval reply (through `END` or an error line).
    pub fn read_retrieval(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let line = self.read_line();
            out.extend_from_slice(&line);
            if line.starts_with(b"VALUE ") {
                let len = value_len(&line).expect("data length in a VALUE line");
                out.extend(self.read_n(len + 2));
            } else {
                return out;
            }
        }
    }

    /// Reads the whole reply to `request` (already sent) as text: for a retrieval (`get…`)
    /// through `END` or an error line, for anything else one line.
    pub fn read_reply_to(&mut self, request: impl AsRef<[u8]>) -> String {
        if request.as_ref().starts_with(b"get") {
            text(&self.read_retrieval())
        } else {
            text(&self.read_line())
        }
    }

    /// Sends one request and reads its whole reply as text (see [`Client::read_reply_to`]),
    /// so a wrong reply fails at once instead of stalling a read.
    pub fn call(&mut self, request: impl AsRef<[u8]>) -> String {
        let request = request.as_ref();
        self.send(request);
        self.read_reply_to(request)
    }

    /// Sends `request` and asserts the reply is exactly `expected` (read by its length).
    pub fn expect(&mut self, request: impl AsRef<[u8]>, expected: impl AsRef<[u8]>) {
        self.send(request);
        let expected = expected.as_ref();
        let got = self.read_n(expected.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
        );
    }

    /// Asserts the server closes the connection without sending anything more.
    pub fn expect_closed(&mut self) {
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected close, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected close, got error {e}"),
        }
    }

    /// `set` then expect `STORED`.
    pub fn set(&mut self, key: &str, value: &[u8]) {
        self.expect(set_request_bytes(key, 0, value), "STORED\r\n");
    }

    /// `get` of one key: the value, or None on a miss.
    pub fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.send(format!("get {key}\r\n"));
        let reply = self.read_retrieval();
        if reply == b"END\r\n" {
            return None;
        }
        let header_end = reply.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        assert!(
            reply.starts_with(b"VALUE "),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        Some(reply[header_end..reply.len() - 7].to_vec())
    }
}

// ---- Helpers for ring parity, failure and client-library tests (appended). ----

impl Memcached {
    /// Starts memcached on a given port (e.g. to bring a killed backend back on its port).
    /// Retries briefly while the port is still held by the previous process.
    pub fn start_on(port: u16) -> Memcached {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Self::command(port, &[]).spawn().expect("spawn memcached");
            // Either it listens, or it exits (port busy): poll for both.
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Memcached { child, port };
                }
                assert!(
                    Instant::now() < deadline,
                    "memcached did not listen on {port}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(Instant::now() < deadline, "memcached could not bind {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Proxy {
    /// The memroute process id (for /proc/<pid>/status).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size of the memroute process, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid()).expect("VmRSS in /proc/<pid>/status")
    }
}

impl Nutcracker {
    /// Like [`Nutcracker::start`], with extra pool YAML lines (e.g. `hash_tag: "{}"`), each
    /// written indented under the pool.
    pub fn start_with(
        hash: &str,
        distribution: &str,
        servers: &[String],
        extra_yaml: &[&str],
    ) -> Nutcracker {
        let port = free_port();
        let stats_port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut yaml = format!(
            "pool:\n  listen: 127.0.0.1:{port}\n  hash: {hash}\n  distribution: {distribution}\n  timeout: 2000\n  auto_eject_hosts: false\n  server_connections: 1\n"
        );
        for line in extra_yaml {
            yaml.push_str(&format!("  {line}\n"));
        }
        yaml.push_str("  servers:\n");
        for s in servers {
            yaml.push_str(&format!("   - {s}\n"));
        }
        let conf = dir.path().join("nutcracker.yml");
        std::fs::write(&conf, yaml).expect("write nutcracker config");
        let mut child = Command::new(require("/usr/sbin/nutcracker"))
            .args([
                "-c",
                conf.to_str().unwrap(),
                "-s",
                &stats_port.to_string(),
                "-a",
                "127.0.0.1",
            ])
            .args(["-o", dir.path().join("nutcracker.log").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nutcracker");
        wait_for_port(port, &mut child, "nutcracker");
        Nutcracker {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Client {
    /// Reads until the peer closes the connection (or the read timeout fails the test);
    /// returns everything received, including bytes already buffered.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 65536];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
                Err(e) => panic!(
                    "expected close, got error {e} after {:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
    }

    /// Sends `stats <args>` (plain `stats` when `args` is empty) and returns every
    /// `STAT <name> <value>` line through `END`, in order, as (name, value); a line with no
    /// value gives an empty one.
    pub fn stats_lines(&mut self, args: &str) -> Vec<(String, String)> {
        if args.is_empty() {
            self.send("stats\r\n");
        } else {
            self.send(format!("stats {args}\r\n"));
        }
        let mut out = Vec::new();
        loop {
            let line = text(&self.read_line());
            let line = line.trim_end();
            if line == "END" {
                return out;
            }
            let mut parts = line.splitn(3, ' ');
            assert_eq!(parts.next(), Some("STAT"), "bad stats line {line:?}");
            let name = parts.next().expect("stat name").to_string();
            out.push((name, parts.next().unwrap_or("").to_string()));
        }
    }

    /// `stats <args>` (see [`Client::stats_lines`]) as name → value; asserts no name comes
    /// twice.
    pub fn stats_map(&mut self, args: &str) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for (name, value) in self.stats_lines(args) {
            assert!(
                out.insert(name.clone(), value).is_none(),
                "stat {name} twice"
            );
        }
        out
    }

    /// Sends `stats` and returns the value of the named stat (the last one of that name;
    /// None if it is missing or has no value).
    pub fn stat(&mut self, name: &str) -> Option<String> {
        self.stats_lines("")
            .into_iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value)
            .filter(|value| !value.is_empty())
    }

    /// A numeric stat from `stats`; panics if it is missing or not a number.
    pub fn stat_num(&mut self, name: &str) -> u64 {
        let value = self.stat(name).unwrap_or_else(|| panic!("no stat {name}"));
        value
            .parse()
            .unwrap_or_else(|_| panic!("stat {name} = {value:?} is not a number"))
    }
}

/// The value of stat `name` in a parsed `stats` map (see [`Client::stats_map`]) as a number;
/// panics if it is missing or not a number.
pub fn num_stat(map: &HashMap<String, String>, name: &str) -> u64 {
    let v = map
        .get(name)
        .unwrap_or_else(|| panic!("no stat {name} in {map:?}"));
    v.parse()
        .unwrap_or_else(|_| panic!("stat {name} = {v:?} is not a number"))
}

pub mod admin;
pub mod bad_backend;
pub mod binary;
pub mod config;
pub mod differential;
pub mod relay;
pub mod routes;
pub mod tls;
pub mod traffic;
pub mod tyrant;

/// Waits until something accepts connections on `port` (a listener of a process already
/// known to be running).
pub fn wait_for_port_only(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- Helpers for operations tests: signals, exit status, captured logs (appended). ----

impl Proxy {
    /// Like [`Proxy::start_config`], with memroute's stdout and stderr (its log, wherever
    /// the subscriber writes it) appended to `log`.
    pub fn start_config_logged(
        config: &std::path::Path,
        port: u16,
        extra: &[&str],
        log: &std::path::Path,
    ) -> Proxy {
        let file = std::fs::File::create(log).expect("create log file");
        let file2 = file.try_clone().expect("clone log file");
        let mut cmd = Command::new(Self::binary());
        cmd.args(["--config", config.to_str().unwrap(), "--log-level", "warn"]);
        cmd.args(extra);
        let mut child = cmd
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(file2))
            .spawn()
            .expect("spawn memroute");
        wait_for_port(port, &mut child, "memroute");
        Proxy { child, port }
    }

    /// Sends signal `name` (e.g. "HUP", "TERM") to the process with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Polls until the process exits, for at most `within`; None if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Proxy {
    /// Starts memroute from a prepared command whose pool listens on `port`.
    pub fn spawn_command(cmd: Command, port: u16) -> Proxy {
        Self::spawn(cmd, port)
    }
}

// ---- Small helpers shared by the tests: protocol text, test data, polling, memory. ----

/// Asserts a peak RSS (KiB) is within `baseline + allowance`, and reports it.
pub fn assert_rss(what: &str, peak: u64, baseline: u64, allowance_kib: u64) {
    eprintln!(
        "{what}: RSS peak {peak} KiB = baseline {baseline} KiB + {} KiB (bound + {allowance_kib} KiB)",
        peak.saturating_sub(baseline)
    );
    assert!(
        peak <= baseline + allowance_kib,
        "{what}: memroute RSS peaked at {peak} KiB, above baseline {baseline} KiB + {allowance_kib} KiB"
    );
}

/// memroute's reply to `version`: the memcached version it speaks, then its own.
pub const VERSION_REPLY: &str = concat!(
    "VERSION 1.6.18-memroute-",
    env!("CARGO_PKG_VERSION"),
    "\r\n"
);

/// Bytes as text, invalid UTF-8 replaced (for comparing and printing replies).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `set <key> 0 0 <len>` with `value` as its data block.
pub fn set_request(key: &str, value: &str) -> String {
    format!("set {key} 0 0 {}\r\n{value}\r\n", value.len())
}

/// `set <key> <flags> 0 <len>` with `value` (any bytes) as its data block.
pub fn set_request_bytes(key: &str, flags: u32, value: &[u8]) -> Vec<u8> {
    with_data_block(format!("set {key} {flags} 0 {}", value.len()), value)
}

/// A command or header line (`\r\n` added), then `data` as its data block.
fn with_data_block(line: String, data: &[u8]) -> Vec<u8> {
    let mut out = line.into_bytes();
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// One `VALUE <key> 0 <len>` item of a retrieval reply, data block included (no `END`).
pub fn value_item(key: &str, value: &str) -> String {
    format!("VALUE {key} 0 {}\r\n{value}\r\n", value.len())
}

/// One `VALUE <key> <flags> <len>` item with `value` (any bytes) as its data (no `END`).
pub fn value_item_bytes(key: &str, flags: u32, value: &[u8]) -> Vec<u8> {
    with_data_block(format!("VALUE {key} {flags} {}", value.len()), value)
}

/// The whole reply to a `get` of one key that holds `value` (flags 0): its item, then `END`.
pub fn value_reply(key: &str, value: &str) -> String {
    format!("{}END\r\n", value_item(key, value))
}

/// The data length a `VALUE <key> <flags> <bytes> [<cas>]` header line announces; None if
/// the line is not UTF-8 or has no number there.
pub fn value_len(header: &[u8]) -> Option<usize> {
    std::str::from_utf8(header)
        .ok()?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Where `a` and `b` first differ: the first unequal byte, or the shorter length when one
/// starts with the other.
pub fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// splitmix64, for deterministic, well-spread test data (keys, values, lengths).
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// How `got` differs from `expected`: where, and the bytes around it.
pub fn describe_difference(got: &[u8], expected: &[u8]) -> String {
    let at = first_difference(got, expected);
    let from = at.saturating_sub(60);
    format!(
        "reply differs at byte {at} of {}: got {:?}, expected {:?}",
        expected.len(),
        text(&got[from..got.len().min(at + 60)]),
        text(&expected[from..expected.len().min(at + 60)]),
    )
}

/// Panics with where `got` first differs from `expected`.
pub fn assert_bytes(got: &[u8], expected: &[u8], what: &str) {
    if got != expected {
        panic!("{what}: {}", describe_difference(got, expected));
    }
}

/// `len` printable bytes determined by `seed` (a misplaced or corrupted byte shows).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed;
    while out.len() < len {
        x = mix(x);
        out.extend(x.to_le_bytes().iter().map(|b| b'a' + b % 26));
    }
    out.truncate(len);
    out
}

/// `s`, cut after 200 bytes (for messages).
pub fn truncate(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `n` keys with values of varied length, deterministic for a given `prefix`.
pub fn key_values(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n as u64)
        .map(|i| {
            let h = mix(i ^ 0x5eed);
            let key = format!("{prefix}:{:08x}:{i}", h & 0xffff_ffff);
            let value = format!("{prefix}-value-{i}-{}", "x".repeat((h % 60) as usize));
            (key, value)
        })
        .collect()
}

/// Writes every pair through `port` with pipelined sets, checking each `STORED`.
pub fn write_all(port: u16, pairs: &[(String, String)]) {
    let mut c = Client::connect(port);
    for chunk in pairs.chunks(200) {
        let mut req = String::new();
        for (k, v) in chunk {
            req.push_str(&set_request(k, v));
        }
        c.send(req);
        for (k, _) in chunk {
            let line = c.read_line();
            assert_eq!(text(&line), "STORED\r\n", "set {k} through memroute");
        }
    }
}

/// Reads every pair through `port` with multi-gets of 40 keys; returns the keys that did not
/// come back with their value (misses or wrong values), with what came back.
pub fn read_all(port: u16, pairs: &[(String, String)]) -> Vec<String> {
    let mut c = Client::connect(port);
    let mut bad = Vec::new();
    for chunk in pairs.chunks(40) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        c.send(format!("get {}\r\n", keys.join(" ")));
        let got = text(&c.read_retrieval());
        let mut expected = String::new();
        for (k, v) in chunk {
            expected.push_str(&value_item(k, v));
        }
        expected.push_str("END\r\n");
        if got != expected {
            for (k, v) in chunk {
                if !got.contains(&value_item(k, v)) {
                    bad.push(format!("{k} (reply {:?})", truncate(&got)));
                }
            }
            if bad.is_empty() {
                bad.push(format!("malformed reply {:?}", truncate(&got)));
            }
        }
    }
    bad
}

/// Calls `f` every `every` until it returns `Ok` (its value); once `within` has passed, the
/// last `Err` instead.
pub fn try_poll<T>(
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => {}
        }
        std::thread::sleep(every);
    }
}

/// How long the operations tests wait for something to happen.
pub const WAIT: Duration = Duration::from_secs(15);

/// How often [`poll`] calls its check.
pub const POLL_EVERY: Duration = Duration::from_millis(10);

/// Polls `f` every 10 ms until it returns `Ok` (its value), failing with its last `Err` after
/// `within`.
pub fn poll<T>(what: &str, within: Duration, f: impl FnMut() -> Result<T, String>) -> T {
    try_poll(within, POLL_EVERY, f).unwrap_or_else(|last| {
        panic!("timed out after {within:?} waiting for {what}; last: {last}")
    })
}

/// Polls `check` every 10 ms until it returns true; panics with "timed out waiting for
/// `what`" once `limit` has passed.
pub fn poll_until(limit: Duration, what: &str, check: impl FnMut() -> bool) {
    poll_until_every(limit, Duration::from_millis(10), what, check);
}

/// Like [`poll_until`], polling every `every`.
pub fn poll_until_every(
    limit: Duration,
    every: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) {
    let done = try_poll(limit, every, || {
        if check() {
            Ok(())
        } else {
            Err(String::new())
        }
    });
    assert!(done.is_ok(), "timed out waiting for {what}");
}

/// The resident set size of process `pid` in KiB (VmRSS); None if it cannot be read.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a process's RSS (KiB) from a thread and keeps the peak: once when started, every
/// `every` while running, and once more when finished. Dropping it stops the sampling.
pub struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    /// Starts sampling process `pid` every `every` (a sample that fails counts as 0).
    pub fn start(pid: u32, every: Duration) -> RssPeak {
        let sample = move || rss_kib_of(pid).unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(sample()));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(sample(), Ordering::Relaxed);
                std::thread::sleep(every);
            }
            p.fetch_max(sample(), Ordering::Relaxed);
        });
        RssPeak {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// The peak so far, KiB.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Stops sampling (after one last sample); the peak, KiB.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.peak()
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
