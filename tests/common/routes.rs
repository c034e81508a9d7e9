//! Routes under test (tests/routes.rs): one real memcached per pool, config files of pools
//! without listeners (route targets) and `[routes.*]` tables, reading the backends directly
//! (which pools hold a key, with what, for how long), `stats routes`, memroute runs that
//! must exit, and a backend that accepts connections and never reads them.

use std::collections::HashMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::config::TempFiles;
use super::{num_stat, text, value_len, wait_for_port_only, Client, Memcached, Proxy};

/// A `[pools.<name>]` table without a listener (a route target) over `servers`, with a short
/// request timeout and further lines `keys` (or none).
pub fn target_pool(name: &str, servers: &[String], keys: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[pools.{name}]\nservers = [{}]\ntimeout = 300\n{keys}\n",
        list.join(", ")
    )
}

/// One memcached per named pool, and a folder for the config file.
pub struct RouteRig {
    /// Pool name and its memcached, in the order given.
    pub pools: Vec<(String, Memcached)>,
    /// The folder of the config file (and logs).
    pub files: TempFiles,
    /// Top-level settings written first in every file.
    pub top: String,
}

impl RouteRig {
    /// Starts a memcached for each of `names`; memroute runs 2 worker threads.
    pub fn new(names: &[&str]) -> RouteRig {
        RouteRig {
            pools: names
                .iter()
                .map(|n| (n.to_string(), Memcached::start()))
                .collect(),
            files: TempFiles::new(),
            top: "threads = 2".to_string(),
        }
    }

    /// Pool `pool`'s memcached.
    pub fn mc(&self, pool: &str) -> &Memcached {
        &self
            .pools
            .iter()
            .find(|(n, _)| n == pool)
            .unwrap_or_else(|| panic!("no pool {pool} in the rig"))
            .1
    }

    /// Kills pool `pool`'s memcached; returns its port (to start it again there).
    pub fn kill(&mut self, pool: &str) -> u16 {
        let (_, m) = self
            .pools
            .iter_mut()
            .find(|(n, _)| n == pool)
            .unwrap_or_else(|| panic!("no pool {pool} in the rig"));
        m.kill();
        m.port
    }

    /// Starts pool `pool`'s memcached again, empty, on its old port.
    pub fn restart(&mut self, pool: &str) {
        let port = self.kill(pool);
        let slot = self.pools.iter_mut().find(|(n, _)| n == pool).unwrap();
        slot.1 = Memcached::start_on(port);
    }

    /// Every pool of the rig as a route target (one server each, no listener).
    pub fn pools_toml(&self) -> String {
        self.pools
            .iter()
            .map(|(n, m)| target_pool(n, &[m.server(1)], ""))
            .collect()
    }

    /// A whole file: the top-level settings, the rig's pools, then `rest` (routes, more pools).
    pub fn file(&self, rest: &str) -> String {
        format!("{}\n\n{}\n{rest}", self.top, self.pools_toml())
    }

    /// Writes `contents` as `memroute.toml` and starts memroute on it, waiting for `port`
    /// (the listener the test talks to) and every port of `more`.
    pub fn start(&self, contents: &str, port: u16, more: &[u16]) -> (PathBuf, Proxy) {
        let path = self.files.write("memroute.toml", contents);
        let proxy = Proxy::start_config(&path, port, &[]);
        for p in more {
            wait_for_port_only(*p);
        }
        (path, proxy)
    }

    /// The names of the pools whose memcached holds `key`, in rig order.
    pub fn holders(&self, key: &str) -> Vec<String> {
        self.pools
            .iter()
            .filter(|(_, m)| m.client().get(key).is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// The whole reply of `memcached` to `get <key>` (its `VALUE` item with flags, then `END`).
pub fn direct_item(m: &Memcached, key: &str) -> String {
    m.client().call(format!("get {key}\r\n"))
}

/// `mg <key> t v` on `memcached` directly: the remaining TTL (-1: none) and the value, or
/// None on a miss.
pub fn direct_ttl(m: &Memcached, key: &str) -> Option<(i64, Vec<u8>)> {
    let mut c = m.client();
    let (line, data) = meta(&mut c, &format!("mg {key} t v\r\n"));
    if line == "EN\r\n" {
        return None;
    }
    let ttl = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix('t'))
        .unwrap_or_else(|| panic!("no t flag in {line:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("bad t flag in {line:?}"));
    Some((ttl, data.expect("a value")))
}

/// Sends one meta request and reads its reply: the first line and, for `VA <len>`, the data.
pub fn meta(c: &mut Client, request: &str) -> (String, Option<Vec<u8>>) {
    c.send(request);
    let line = text(&c.read_line());
    let data = line.strip_prefix("VA ").map(|rest| {
        let len: usize = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bad VA line {line:?}"));
        let mut d = c.read_n(len + 2);
        assert!(d.ends_with(b"\r\n"), "data of {line:?} not ended by CRLF");
        d.truncate(len);
        d
    });
    (line, data)
}

/// A number from memcached's own `stats`.
pub fn mc_stat(m: &Memcached, name: &str) -> u64 {
    num_stat(&m.client().stats_map(""), name)
}

/// `stats routes` through `port`: `<route>:<counter>` → value.
pub fn route_stats(port: u16) -> HashMap<String, u64> {
    Client::connect(port)
        .stats_map("routes")
        .into_iter()
        .map(|(k, v)| {
            let n = v
                .parse()
                .unwrap_or_else(|_| panic!("stats routes {k} = {v:?} is not a number"));
            (k, n)
        })
        .collect()
}

/// One counter of one route from `stats routes` through `port`.
pub fn route_stat(port: u16, route: &str, counter: &str) -> u64 {
    let stats = route_stats(port);
    *stats
        .get(&format!("{route}:{counter}"))
        .unwrap_or_else(|| panic!("no {route}:{counter} in stats routes: {stats:?}"))
}

/// The key of the `VALUE` items of a retrieval reply, in order.
pub fn reply_keys(reply: &[u8]) -> Vec<String> {
    let mut keys = Vec::new();
    let mut rest = reply;
    while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
        let line = &rest[..end];
        if !line.starts_with(b"VALUE ") {
            break;
        }
        keys.push(text(line).split_whitespace().nth(1).unwrap().to_string());
        let len = value_len(line).expect("VALUE length");
        rest = &rest[(end + 2 + len + 2).min(rest.len())..];
    }
    keys
}

/// Runs memroute with `args` and waits for it to exit, for at most 10 s (then kills it and
/// fails): its exit status and output.
pub fn run_memroute(args: &[&str]) -> Output {
    let dir = TempFiles::new();
    let (out_path, err_path) = (dir.path("stdout"), dir.path("stderr"));
    let mut child = Command::new(Proxy::binary())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn memroute");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "memroute {args:?} still running after 10 s; stderr: {}",
                read(&err_path)
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: read(&out_path).into_bytes(),
        stderr: read(&err_path).into_bytes(),
    }
}

fn read(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// A "memcached" that accepts connections and never reads from them (nor answers): what is
/// sent to it fills the socket buffers, then blocks. Its connections close when dropped.
pub struct Deaf {
    /// Its port on 127.0.0.1.
    pub port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Deaf {
    /// Starts listening on a free loopback port.
    pub fn start() -> Deaf {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        held.push(stream);
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Deaf {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:port:1`, as a server entry.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}:1", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Deaf {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
