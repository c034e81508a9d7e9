//! Test fixtures: real memcached and twemproxy processes and the memroute binary, each
//! started on a free loopback port and killed when dropped, plus a raw-socket client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now, handed out once per test process (parallel
/// tests never get the same one) and taken below the kernel's ephemeral range (from 32768),
/// so no outgoing connection can be holding it when a server binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
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

    /// Reads exactly `n` bytes.
    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 65536];
            let got = self.stream.read(&mut chunk).expect("read (timed out?)");
            assert!(
                got > 0,
                "connection closed after {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..got]);
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one line, including its `\r\n`.
    pub fn read_line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return self.buf.drain(..i + 2).collect();
            }
            let mut chunk = [0u8; 65536];
            let got = self.stream.read(&mut chunk).expect("read (timed out?)");
            assert!(
                got > 0,
                "connection closed after {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..got]);
        }
    }

    /// Reads one retrieval reply (through `END` or an error line).
    pub fn read_retrieval(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let line = self.read_line();
            out.extend_from_slice(&line);
            if line.starts_with(b"VALUE ") {
                let len: usize = std::str::from_utf8(&line)
                    .unwrap()
                    .split_whitespace()
                    .nth(3)
                    .unwrap()
                    .parse()
                    .unwrap();
                out.extend(self.read_n(len + 2));
            } else {
                return out;
            }
        }
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
        let mut req = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
        self.expect(req, "STORED\r\n");
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
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
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

    /// Sends `stats` and returns the value of the named stat.
    pub fn stat(&mut self, name: &str) -> Option<String> {
        self.send("stats\r\n");
        let mut found = None;
        loop {
            let line = self.read_line();
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if text == "END" {
                return found;
            }
            let mut parts = text.splitn(3, ' ');
            assert_eq!(parts.next(), Some("STAT"), "bad stats line {text:?}");
            if parts.next() == Some(name) {
                found = parts.next().map(str::to_string);
            }
        }
    }
}

pub mod bad_backend;
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
