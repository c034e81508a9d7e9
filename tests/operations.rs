//! Operating memroute while clients keep talking: live reload (file change and SIGHUP),
//! warm-up after a ring change, invalid reloads, ejection off and on, `stats`, Prometheus
//! metrics and `/health`, the `route` subcommand, and graceful shutdown — all against real
//! memcached processes and the memroute binary.
//!
//! Every wait polls with a deadline; load threads check every reply they get.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::config::{
    self, config_toml, parse_route, replace_file, route_owners, run_route, TempFiles,
};
use common::{
    free_port, mix, num_stat, set_request, text, value_item, value_len, value_reply,
    wait_for_port_only, Client, Memcached, Proxy,
};

const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// How often [`poll`] and [`try_poll`] call their check.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Polls `f` every 10 ms until it returns `Ok`, failing with its last `Err` after `within`.
fn poll<T>(what: &str, within: Duration, f: impl FnMut() -> Result<T, String>) -> T {
    try_poll(within, f).unwrap_or_else(|last| {
        panic!("timed out after {within:?} waiting for {what}; last: {last}")
    })
}

/// Polls `f` every 10 ms until it returns `Ok`; its last `Err` after `within`.
fn try_poll<T>(within: Duration, f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    common::try_poll(within, POLL_EVERY, f)
}

/// `n` keys with values of varied length, deterministic for a given `prefix`.
fn key_values(prefix: &str, n: usize) -> Vec<(String, String)> {
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
fn write_all(port: u16, pairs: &[(String, String)]) {
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
fn read_all(port: u16, pairs: &[(String, String)]) -> Vec<String> {
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

fn truncate(s: &str) -> String {
    if s.len() > 200 {
        format!("{}…", &s[..200])
    } else {
        s.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Config files
// ---------------------------------------------------------------------------------------

/// `servers = [...]` entries, named so that ring positions do not depend on random ports.
fn named(mcs: &[&Memcached], names: &[&str]) -> Vec<String> {
    mcs.iter()
        .zip(names)
        .map(|(m, n)| format!("127.0.0.1:{}:1 {n}", m.port))
        .collect()
}

/// One `[pools.<name>]` table, md5 ketama, with `extra` pool keys.
fn pool_toml(name: &str, port: u16, servers: &[String], extra: &str) -> String {
    let keys = format!("hash = \"md5\"\ndistribution = \"ketama\"\n{extra}");
    config::pool_toml(name, port, servers, &keys)
}

// ---------------------------------------------------------------------------------------
// stats, metrics, route
// ---------------------------------------------------------------------------------------

fn generation(c: &mut Client) -> u64 {
    num_stat(&c.stats_map(""), "generation")
}

/// Polls `stats` until `generation` passes `above`; returns it.
fn wait_generation(c: &mut Client, above: u64) -> u64 {
    poll(
        &format!("generation > {above}"),
        WAIT,
        || match generation(c) {
            g if g > above => Ok(g),
            g => Err(format!("generation {g}")),
        },
    )
}

/// `stats backends` value `<pool>:<addr>:<field>`.
fn backend_stat(map: &HashMap<String, String>, pool: &str, port: u16, field: &str) -> String {
    let name = format!("{pool}:127.0.0.1:{port}:{field}");
    map.get(&name)
        .unwrap_or_else(|| panic!("no {name} in stats backends: {map:?}"))
        .clone()
}

fn backend_num(map: &HashMap<String, String>, pool: &str, port: u16, field: &str) -> u64 {
    let v = backend_stat(map, pool, port, field);
    v.parse()
        .unwrap_or_else(|_| panic!("{pool}:{port}:{field} = {v:?} is not a number"))
}

/// Sum of `<field>` over every backend in `stats backends`.
fn backends_sum(map: &HashMap<String, String>, field: &str) -> u64 {
    let suffix = format!(":{field}");
    map.iter()
        .filter(|(k, _)| k.ends_with(&suffix))
        .map(|(_, v)| v.parse::<u64>().unwrap())
        .sum()
}

/// `GET <path>` on the admin listener: (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read admin response");
    let raw = text(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let status_line = head.lines().next().unwrap_or("");
    assert!(
        status_line.starts_with("HTTP/1."),
        "status line {status_line:?}"
    );
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    if let Some(len) = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().to_string())
    }) {
        assert_eq!(len.parse::<usize>().unwrap(), body.len(), "Content-Length");
    }
    (code, body.to_string())
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text exposition (comments skipped; every other line must parse).
fn parse_metrics(body: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("metric line {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("metric value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels in {line:?}"));
                let mut labels = BTreeMap::new();
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("label {pair:?} in {line:?}"));
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn scrape(admin: u16) -> Vec<Sample> {
    let (code, body) = http_get(admin, "/metrics");
    assert_eq!(code, 200, "/metrics: {body}");
    parse_metrics(&body)
}

/// The value of the one sample named `name` whose labels include `labels`.
fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        found.len() <= 1,
        "{name}{labels:?} matches several series: {found:?}"
    );
    found.first().map(|s| s.value)
}

fn metric_sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

fn addr(m: &Memcached) -> String {
    format!("127.0.0.1:{}", m.port)
}

// ---------------------------------------------------------------------------------------
// Continuous checked load
// ---------------------------------------------------------------------------------------

/// A connection that reports failures instead of panicking.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects like [`Client::connect`] (10 s read timeout, no Nagle).
    fn connect(port: u16) -> Conn {
        Conn {
            stream: Client::connect(port).stream,
            buf: Vec::new(),
        }
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err("connection closed by memroute".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("read failed: {e}")),
        }
    }

    fn line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buf.drain(..i + 2).collect());
            }
            self.fill()?;
        }
    }

    fn exact(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn retrieval(&mut self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        loop {
            let line = self.line()?;
            out.extend_from_slice(&line);
            if !line.starts_with(b"VALUE ") {
                return Ok(out);
            }
            let len =
                value_len(&line).ok_or_else(|| format!("bad VALUE line {:?}", text(&line)))?;
            out.extend(self.exact(len + 2)?);
        }
    }
}

enum Expect {
    /// One line, exactly.
    Line(String),
    /// A retrieval reply, exactly.
    Retrieval(String),
}

#[derive(Debug)]
#[allow(dead_code)] // first_errors is read through Debug
struct LoadReport {
    ops: u64,
    errors: u64,
    closed: u64,
    first_errors: Vec<String>,
}

/// Client threads, each on one connection for its whole life, sending pipelined batches of
/// sets (own keys), gets of those keys, single gets and multi-gets of pre-written keys, and
/// checking every reply.
struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
    first_errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `own[t]` are thread t's keys to write (at least 8 each); `pre` are keys already
    /// written that must always read back with their value.
    fn start(port: u16, pre: Arc<Vec<(String, String)>>, own: Vec<Vec<String>>) -> Load {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            ops: Arc::new(AtomicU64::new(0)),
            errors: Arc::new(AtomicU64::new(0)),
            closed: Arc::new(AtomicU64::new(0)),
            first_errors: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
        };
        let mut threads = Vec::new();
        for (t, own) in own.into_iter().enumerate() {
            assert!(own.len() >= 8);
            let pre = pre.clone();
            let (stop, ops, errors, closed, first) = (
                load.stop.clone(),
                load.ops.clone(),
                load.errors.clone(),
                load.closed.clone(),
                load.first_errors.clone(),
            );
            // Connect here, so every connection exists before the caller changes anything.
            let mut conn = Conn::connect(port);
            threads.push(thread::spawn(move || {
                let record = |msg: String| {
                    errors.fetch_add(1, Ordering::Relaxed);
                    let mut f = first.lock().unwrap();
                    if f.len() < 20 {
                        f.push(format!("thread {t}: {msg}"));
                    }
                };
                let mut iter: u64 = 0;
                let mut broke = false;
                'outer: while !stop.load(Ordering::Relaxed) {
                    let mut req = String::new();
                    let mut expect = Vec::new();
                    for j in 0..8u64 {
                        let n = iter * 8 + j;
                        let key = &own[(n % own.len() as u64) as usize];
                        let value = format!("t{t}-{iter}-{j}");
                        req.push_str(&set_request(key, &value));
                        expect.push(Expect::Line("STORED\r\n".into()));
                        req.push_str(&format!("get {key}\r\n"));
                        expect.push(Expect::Retrieval(value_reply(key, &value)));
                        let (pk, pv) =
                            &pre[(mix(n ^ ((t as u64) << 40)) % pre.len() as u64) as usize];
                        req.push_str(&format!("get {pk}\r\n"));
                        expect.push(Expect::Retrieval(value_reply(pk, pv)));
                    }
                    // One multi-get of 6 pre-written keys (usually spread over backends).
                    let mut keys = Vec::new();
                    let mut reply = String::new();
                    for m in 0..6u64 {
                        let (pk, pv) = &pre[(mix(iter ^ (m << 20) ^ ((t as u64) << 48))
                            % pre.len() as u64)
                            as usize];
                        if keys.contains(&pk.as_str()) {
                            continue;
                        }
                        keys.push(pk.as_str());
                        reply.push_str(&value_item(pk, pv));
                    }
                    reply.push_str("END\r\n");
                    req.push_str(&format!("get {}\r\n", keys.join(" ")));
                    expect.push(Expect::Retrieval(reply));

                    if let Err(e) = conn.stream.write_all(req.as_bytes()) {
                        closed.fetch_add(1, Ordering::Relaxed);
                        record(format!("write failed: {e}"));
                        broke = true;
                        break;
                    }
                    for e in &expect {
                        let (got, want) = match e {
                            Expect::Line(want) => (conn.line(), want),
                            Expect::Retrieval(want) => (conn.retrieval(), want),
                        };
                        match got {
                            Ok(got) if text(&got) == *want => {
                                ops.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(got) => record(format!(
                                "expected {:?}, got {:?}",
                                truncate(want),
                                truncate(&text(&got))
                            )),
                            Err(e) => {
                                closed.fetch_add(1, Ordering::Relaxed);
                                record(e);
                                broke = true;
                                break 'outer;
                            }
                        }
                    }
                    iter += 1;
                }
                // The same socket still works at the end.
                if !broke {
                    let ok = conn.stream.write_all(b"version\r\n").is_ok()
                        && matches!(conn.line(), Ok(l) if l.starts_with(b"VERSION "));
                    if !ok {
                        closed.fetch_add(1, Ordering::Relaxed);
                        record("final version on the same connection failed".into());
                    }
                }
            }));
        }
        Load { threads, ..load }
    }

    fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Polls until the threads have checked `more` further replies.
    fn wait_more(&self, more: u64) {
        let target = self.ops() + more;
        poll(&format!("{more} more checked replies"), WAIT, || {
            if self.closed.load(Ordering::Relaxed) > 0 {
                // Stop waiting: the report will show why.
                return Ok(());
            }
            match self.ops() {
                n if n >= target => Ok(()),
                n => Err(format!("{n} of {target}")),
            }
        });
    }

    fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread panicked");
        }
        LoadReport {
            ops: self.ops.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            first_errors: self.first_errors.lock().unwrap().clone(),
        }
    }
}

fn assert_clean(report: &LoadReport, min_ops: u64) {
    assert_eq!(
        (report.errors, report.closed),
        (0, 0),
        "client errors / closed connections under load: {report:#?}"
    );
    assert!(
        report.ops >= min_ops,
        "load checked only {} replies: {report:?}",
        report.ops
    );
}

/// `threads` × `per` own keys for load threads.
fn own_keys(tag: &str, threads: usize, per: usize) -> Vec<Vec<String>> {
    (0..threads)
        .map(|t| (0..per).map(|i| format!("{tag}:t{t}:{i}")).collect())
        .collect()
}

/// Keys from `pairs` whose owner is in `allowed`.
fn keys_owned_by(
    pairs: &[(String, String)],
    owners: &HashMap<String, String>,
    allowed: &[String],
) -> Vec<(String, String)> {
    pairs
        .iter()
        .filter(|(k, _)| allowed.contains(&owners[k]))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Add a backend under load
// ---------------------------------------------------------------------------------------

#[test]
fn adding_a_backend_under_load_moves_a_quarter_of_keys_with_no_errors_or_misses() {
    let mcs: Vec<Memcached> = (0..4).map(|_| Memcached::start()).collect();
    let files = TempFiles::new();
    let port = free_port();
    let admin = free_port();
    let top = format!("threads = 2\nadmin = \"127.0.0.1:{admin}\"");
    let extra = "timeout = 3000\nwarmup = \"30s\"\nwarmup_ttl = 300";
    let three = named(&[&mcs[0], &mcs[1], &mcs[2]], &["a", "b", "c"]);
    let four = named(&[&mcs[0], &mcs[1], &mcs[2], &mcs[3]], &["a", "b", "c", "d"]);
    let old_text = config_toml(&top, &[pool_toml("main", port, &three, extra)]);
    let new_text = config_toml(&top, &[pool_toml("main", port, &four, extra)]);
    let path = files.write("memroute.toml", &old_text);
    let new_copy = files.write("new-copy.toml", &new_text);
    let mut proxy = Proxy::start_config(&path, port, &[]);
    wait_for_port_only(admin);

    let pre = Arc::new(key_values("add", 2000));
    write_all(port, &pre);
    let keys: Vec<&str> = pre.iter().map(|(k, _)| k.as_str()).collect();
    let old_owner = route_owners(&path, &keys);
    let new_owner = route_owners(&new_copy, &keys);

    let mut sc = proxy.client();
    let g0 = generation(&mut sc);
    let load = Load::start(port, pre.clone(), own_keys("add-own", 4, 48));
    load.wait_more(2000);

    replace_file(&path, &new_text);
    let g1 = wait_generation(&mut sc, g0);
    assert_eq!(g1, g0 + 1, "one file change, one generation");
    let at_change = load.ops();

    // Where keys went: about a quarter moved, all of them to the new backend.
    let moved: Vec<&(String, String)> = pre
        .iter()
        .filter(|(k, _)| old_owner[k] != new_owner[k])
        .collect();
    let share = moved.len() as f64 / pre.len() as f64;
    assert!(
        (share - 0.25).abs() <= 0.04,
        "{} of {} keys moved ({share:.3}), expected about 1/4",
        moved.len(),
        pre.len()
    );
    for (k, _) in &moved {
        assert_eq!(
            new_owner[k],
            addr(&mcs[3]),
            "{k} moved, but not to the new backend"
        );
    }

    // The running proxy agrees, and knows where moved keys were before.
    let sample: Vec<&str> = pre.iter().take(200).map(|(k, _)| k.as_str()).collect();
    let live = parse_route(&run_route(
        &["--admin", &format!("127.0.0.1:{admin}")],
        &sample,
    ));
    assert_eq!(live.len(), sample.len());
    let mut saw_previous = 0;
    for l in &live {
        assert_eq!(
            l.owner, new_owner[&l.key],
            "route --admin owner of {}",
            l.key
        );
        if old_owner[&l.key] != new_owner[&l.key] {
            assert_eq!(
                l.previous.as_deref(),
                Some(old_owner[&l.key].as_str()),
                "route --admin for a moved key during warm-up: {l:?}"
            );
            saw_previous += 1;
        } else {
            assert_eq!(
                l.previous, None,
                "unmoved key shows a previous owner: {l:?}"
            );
        }
    }
    assert!(saw_previous > 0, "no moved key among the first 200");

    // Every key written before the change reads back (hits, right values) during warm-up,
    // while the load keeps running.
    load.wait_more(3000);
    let bad = read_all(port, &pre);
    assert!(
        bad.is_empty(),
        "{} pre-written keys did not read back through memroute during warm-up, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    load.wait_more(1000);
    let report = load.finish();
    assert_clean(&report, at_change + 4000);

    // The copies land on the new owner (asynchronously), and only moved keys are copied.
    let mut direct = mcs[3].client();
    let mut pending: Vec<&(String, String)> = moved.clone();
    poll("moved keys copied to the new backend", WAIT, || {
        pending.retain(|(k, v)| direct.get(k).as_deref() != Some(v.as_bytes()));
        match pending.len() {
            0 => Ok(()),
            n => Err(format!(
                "{n} moved keys not on the new backend yet, e.g. {}",
                pending[0].0
            )),
        }
    });
    let stray = pre
        .iter()
        .filter(|(k, _)| old_owner[k] == new_owner[k])
        .filter(|(k, _)| direct.get(k).is_some())
        .count();
    assert_eq!(
        stray, 0,
        "keys that did not move were copied to the new backend"
    );

    let b = sc.stats_map("backends");
    let hits = backends_sum(&b, "warmup_hits");
    assert!(
        hits >= moved.len() as u64,
        "warmup_hits {hits} < {} moved keys each read at least once",
        moved.len()
    );
    for m in &mcs[..3] {
        assert_eq!(backend_stat(&b, "main", m.port, "state"), "up");
        assert_eq!(backend_num(&b, "main", m.port, "errors"), 0);
    }
    assert_eq!(backend_stat(&b, "main", mcs[3].port, "state"), "up");
    assert!(backend_num(&b, "main", mcs[3].port, "requests") > 0);
    let m = scrape(admin);
    assert!(metric_sum(&m, "memroute_backend_warmup_hits_total") >= moved.len() as f64);
    assert_eq!(
        metric(&m, "memroute_config_generation", &[]),
        Some(g1 as f64)
    );
    assert!(metric(&m, "memroute_reloads_total", &[("result", "ok")]).unwrap_or(0.0) >= 1.0);
    assert_eq!(
        generation(&mut sc),
        g1,
        "no further generation after the reload"
    );
    assert!(proxy.is_running());
}

// ---------------------------------------------------------------------------------------
// 2. Remove a backend under load
// ---------------------------------------------------------------------------------------

#[test]
fn removing_a_backend_under_load_keeps_every_key_readable_during_warm_up() {
    let mcs: Vec<Memcached> = (0..4).map(|_| Memcached::start()).collect();
    let files = TempFiles::new();
    let port = free_port();
    let admin = free_port();
    let top = format!("threads = 2\nadmin = \"127.0.0.1:{admin}\"");
    let extra = "timeout = 3000\nwarmup = \"30s\"";
    let four = named(&[&mcs[0], &mcs[1], &mcs[2], &mcs[3]], &["a", "b", "c", "d"]);
    let three = named(&[&mcs[0], &mcs[1], &mcs[2]], &["a", "b", "c"]);
    let old_text = config_toml(&top, &[pool_toml("main", port, &four, extra)]);
    let new_text = config_toml(&top, &[pool_toml("main", port, &three, extra)]);
    let path = files.write("memroute.toml", &old_text);
    let new_copy = files.write("new-copy.toml", &new_text);
    let _proxy = Proxy::start_config(&path, port, &[]);
    wait_for_port_only(admin);

    let pre = Arc::new(key_values("rm", 2000));
    write_all(port, &pre);
    let keys: Vec<&str> = pre.iter().map(|(k, _)| k.as_str()).collect();
    let old_owner = route_owners(&path, &keys);
    let new_owner = route_owners(&new_copy, &keys);
    let removed = addr(&mcs[3]);
    let on_removed: Vec<(String, String)> =
        keys_owned_by(&pre, &old_owner, std::slice::from_ref(&removed));
    assert!(
        on_removed.len() > 300,
        "only {} keys on the backend to remove",
        on_removed.len()
    );
    // Unmoved keys keep their owner; the removed backend's keys spread over the others.
    for (k, _) in pre.iter() {
        if old_owner[k] != removed {
            assert_eq!(
                old_owner[k], new_owner[k],
                "{k} moved though its owner stayed"
            );
        } else {
            assert_ne!(new_owner[k], removed);
        }
    }

    let mut sc = Client::connect(port);
    let g0 = generation(&mut sc);
    let removed_gets_before = num_stat(&mcs[3].client().stats_map(""), "cmd_get");
    let load = Load::start(port, pre.clone(), own_keys("rm-own", 4, 48));
    load.wait_more(2000);

    replace_file(&path, &new_text);
    let g1 = wait_generation(&mut sc, g0);
    assert_eq!(g1, g0 + 1);
    let at_change = load.ops();

    // During warm-up the proxy still knows where the removed backend's keys were.
    let sample: Vec<&str> = on_removed
        .iter()
        .take(20)
        .map(|(k, _)| k.as_str())
        .collect();
    for l in parse_route(&run_route(
        &["--admin", &format!("127.0.0.1:{admin}")],
        &sample,
    )) {
        assert_eq!(l.owner, new_owner[&l.key]);
        assert_eq!(l.previous.as_deref(), Some(removed.as_str()), "{l:?}");
    }

    load.wait_more(3000);
    // Keys that lived on the removed backend are still readable (its copy is retained);
    // so is everything else.
    let bad = read_all(port, &on_removed);
    assert!(
        bad.is_empty(),
        "{} keys of the removed backend missed during warm-up, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    let bad = read_all(port, &pre);
    assert!(
        bad.is_empty(),
        "{} keys missed after removing a backend, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    load.wait_more(1000);
    let report = load.finish();
    assert_clean(&report, at_change + 4000);

    // Warm-up read from the removed backend, and copied its keys to their new owners.
    let removed_gets_after = num_stat(&mcs[3].client().stats_map(""), "cmd_get");
    assert!(
        removed_gets_after > removed_gets_before,
        "the removed backend was never asked during warm-up"
    );
    let by_addr: HashMap<String, &Memcached> = mcs.iter().map(|m| (addr(m), m)).collect();
    let mut clients: HashMap<String, Client> = HashMap::new();
    let mut pending = on_removed.clone();
    poll(
        "removed backend's keys copied to their new owners",
        WAIT,
        || {
            pending.retain(|(k, v)| {
                let owner = &new_owner[k];
                let c = clients
                    .entry(owner.clone())
                    .or_insert_with(|| by_addr[owner].client());
                c.get(k).as_deref() != Some(v.as_bytes())
            });
            match pending.len() {
                0 => Ok(()),
                n => Err(format!("{n} keys not copied yet, e.g. {}", pending[0].0)),
            }
        },
    );
    // Each of the removed backend's keys was read after the change and answered by the
    // removed backend (its previous owner): those warm-up hits must be visible somewhere.
    let b = sc.stats_map("backends");
    let hits = backends_sum(&b, "warmup_hits");
    let listed: Vec<&String> = b.keys().filter(|k| k.ends_with(":state")).collect();
    assert!(
        hits >= on_removed.len() as u64,
        "stats backends shows {hits} warmup_hits for {} keys answered by the removed \
         backend during warm-up; backends listed: {listed:?}",
        on_removed.len()
    );
    let m = scrape(admin);
    let metric_hits = metric_sum(&m, "memroute_backend_warmup_hits_total");
    assert!(
        metric_hits >= on_removed.len() as f64,
        "memroute_backend_warmup_hits_total sums to {metric_hits} for {} warm-up hits",
        on_removed.len()
    );
}

// ---------------------------------------------------------------------------------------
// 3. An invalid config written during load
// ---------------------------------------------------------------------------------------

#[test]
fn an_invalid_config_is_rejected_and_logged_while_traffic_continues() {
    let mcs: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let files = TempFiles::new();
    let port = free_port();
    let admin = free_port();
    let top = format!("threads = 2\nadmin = \"127.0.0.1:{admin}\"");
    let servers = named(&[&mcs[0], &mcs[1], &mcs[2]], &["a", "b", "c"]);
    let good = config_toml(&top, &[pool_toml("main", port, &servers, "timeout = 2000")]);
    let bad = good.replace("hash = \"md5\"", "hash = \"sha1\"");
    assert_ne!(good, bad);
    let path = files.write("memroute.toml", &good);
    let log = files.path("memroute.log");
    let _proxy = Proxy::start_config_logged(&path, port, &[], &log);
    wait_for_port_only(admin);

    let pre = Arc::new(key_values("inv", 500));
    write_all(port, &pre);
    let mut sc = Client::connect(port);
    let g0 = generation(&mut sc);
    let errors_before = metric(
        &scrape(admin),
        "memroute_reloads_total",
        &[("result", "error")],
    )
    .unwrap_or(0.0);
    let load = Load::start(port, pre.clone(), own_keys("inv-own", 3, 32));
    load.wait_more(1000);

    replace_file(&path, &bad);
    let errors_after = poll(
        "reloads_total{result=\"error\"} to rise",
        WAIT,
        || match metric(
            &scrape(admin),
            "memroute_reloads_total",
            &[("result", "error")],
        ) {
            Some(v) if v > errors_before => Ok(v),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(errors_after >= 1.0);
    assert_eq!(
        generation(&mut sc),
        g0,
        "an invalid file changed the generation"
    );
    let logged = poll("the rejection to be logged", WAIT, || {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        match l
            .lines()
            .find(|line| line.contains("rejected") || line.contains("invalid"))
        {
            Some(line) => Ok(line.to_string()),
            None => Err(format!("log so far: {l:?}")),
        }
    });
    assert!(
        logged.contains("hash"),
        "the rejection does not name the field: {logged:?}"
    );
    load.wait_more(1000);
    assert_eq!(read_all(port, &pre), Vec::<String>::new());

    // A valid file afterwards is applied.
    let fixed = good.replace("timeout = 2000", "timeout = 2500");
    replace_file(&path, &fixed);
    let g1 = wait_generation(&mut sc, g0);
    assert_eq!(g1, g0 + 1);
    load.wait_more(1000);
    let report = load.finish();
    assert_clean(&report, 3000);
    let m = scrape(admin);
    assert_eq!(
        metric(&m, "memroute_config_generation", &[]),
        Some(g1 as f64)
    );
    assert!(metric(&m, "memroute_reloads_total", &[("result", "ok")]).unwrap_or(0.0) >= 1.0);
}

// ---------------------------------------------------------------------------------------
// 4. SIGHUP
// ---------------------------------------------------------------------------------------

#[test]
fn sighup_reloads_an_edited_file() {
    let mcs: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    // memroute watches the folder of the path it is given; the file it names is a symlink
    // to a file in another folder, so editing the target is seen only through SIGHUP.
    let watched = TempFiles::new();
    let real = TempFiles::new();
    let port = free_port();
    let admin = free_port();
    // The admin listener starts with the control loop that handles signals: waiting for it
    // keeps this test clear of the startup race covered by the next test.
    let top = format!("threads = 1\nadmin = \"127.0.0.1:{admin}\"");
    let two = named(&[&mcs[0], &mcs[1]], &["a", "b"]);
    let three = named(&[&mcs[0], &mcs[1], &mcs[2]], &["a", "b", "c"]);
    let target = real.write(
        "real.toml",
        &config_toml(&top, &[pool_toml("main", port, &two, "")]),
    );
    let link = watched.path("memroute.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let proxy = Proxy::start_config(&link, port, &[]);
    wait_for_port_only(admin);
    let mut sc = proxy.client();
    let g0 = generation(&mut sc);
    assert!(!sc
        .stats_map("backends")
        .contains_key(&format!("main:{}:state", addr(&mcs[2]))));

    replace_file(
        &target,
        &config_toml(&top, &[pool_toml("main", port, &three, "")]),
    );
    proxy.signal("HUP");
    let g1 = wait_generation(&mut sc, g0);
    assert_eq!(g1, g0 + 1);
    let b = sc.stats_map("backends");
    assert_eq!(backend_stat(&b, "main", mcs[2].port, "state"), "up");
    // The same client connection kept working across the reload; the new ring is in use.
    let pairs = key_values("hup", 300);
    write_all(port, &pairs);
    let mut direct = mcs[2].client();
    assert!(
        pairs.iter().any(|(k, _)| direct.get(k).is_some()),
        "no key reached the backend added by SIGHUP"
    );
}

/// Starts memroute on a 2-backend file and, as soon as it accepts clients, lets `act` change
/// things; returns the proxy.
fn started_then(
    files: &TempFiles,
    servers: &[String],
    act: impl FnOnce(&Path, &Proxy, &str),
) -> Proxy {
    let port = free_port();
    let before = config_toml("threads = 1", &[pool_toml("main", port, &servers[..2], "")]);
    let after = config_toml("threads = 1", &[pool_toml("main", port, servers, "")]);
    let path = files.write("memroute.toml", &before);
    let proxy = Proxy::start_config(&path, port, &[]);
    act(&path, &proxy, &after);
    proxy
}

#[test]
fn a_config_edit_right_after_start_is_applied() {
    // An edit made while memroute starts (between reading the file and watching it) must not
    // be lost: memroute must end up running the file as it is on disk.
    let mcs: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let servers = named(&[&mcs[0], &mcs[1], &mcs[2]], &["a", "b", "c"]);
    for round in 0..20 {
        let files = TempFiles::new();
        let proxy = started_then(&files, &servers, |path, _, after| replace_file(path, after));
        let mut sc = proxy.client();
        let applied = try_poll(Duration::from_secs(3), || {
            let b = sc.stats_map("backends");
            match b.contains_key(&format!("main:{}:state", addr(&mcs[2]))) {
                true => Ok(()),
                false => Err(format!("generation {}", generation(&mut sc))),
            }
        });
        assert_eq!(
            applied,
            Ok(()),
            "round {round}: the file on disk lists 3 backends, memroute still runs 2 \
             (edit made right after it started listening was never applied)"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 5. Ejection off and on
// ---------------------------------------------------------------------------------------

type Pairs = Vec<(String, String)>;

/// Candidate keys routed by the config at `path`: (keys on `victim`, keys elsewhere).
fn split_keys(path: &Path, pairs: &[(String, String)], victim: &str) -> (Pairs, Pairs) {
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let owners = route_owners(path, &keys);
    pairs
        .iter()
        .cloned()
        .partition(|(k, _)| owners[k] == victim)
}

fn own_keys_avoiding(path: &Path, tag: &str, victim: &str, threads: usize) -> Vec<Vec<String>> {
    let candidates: Vec<(String, String)> = (0..threads * 80)
        .map(|i| (format!("{tag}:{i}"), String::new()))
        .collect();
    let (_, elsewhere) = split_keys(path, &candidates, victim);
    let per = elsewhere.len() / threads;
    assert!(per >= 8);
    elsewhere
        .chunks(per)
        .take(threads)
        .map(|c| c.iter().map(|(k, _)| k.clone()).collect())
        .collect()
}

/// Three backends behind memroute (pool settings `extra`), 600 keys written, and checked
/// load running on the keys of the two that will live; the third is the victim.
struct Victim {
    mcs: Vec<Memcached>,
    _files: TempFiles,
    _proxy: Proxy,
    port: u16,
    admin: u16,
    victim_port: u16,
    victim: String,
    on_victim: Pairs,
    elsewhere: Arc<Pairs>,
    sc: Client,
    g0: u64,
    load: Load,
}

fn victim_under_load(tag: &str, extra: &str) -> Victim {
    let mcs: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let files = TempFiles::new();
    let port = free_port();
    let admin = free_port();
    let top = format!("threads = 2\nadmin = \"127.0.0.1:{admin}\"");
    let servers = named(&[&mcs[0], &mcs[1], &mcs[2]], &["a", "b", "c"]);
    let cfg = config_toml(&top, &[pool_toml("main", port, &servers, extra)]);
    let path = files.write("memroute.toml", &cfg);
    let proxy = Proxy::start_config(&path, port, &[]);
    wait_for_port_only(admin);
    let victim_port = mcs[2].port;
    let victim = addr(&mcs[2]);
    let pre = key_values(tag, 600);
    write_all(port, &pre);
    let (on_victim, elsewhere) = split_keys(&path, &pre, &victim);
    assert!(on_victim.len() > 50 && elsewhere.len() > 50);
    let elsewhere = Arc::new(elsewhere);
    let mut sc = Client::connect(port);
    let g0 = generation(&mut sc);
    let load = Load::start(
        port,
        elsewhere.clone(),
        own_keys_avoiding(&path, &format!("{tag}-own"), &victim, 2),
    );
    load.wait_more(500);
    Victim {
        mcs,
        _files: files,
        _proxy: proxy,
        port,
        admin,
        victim_port,
        victim,
        on_victim,
        elsewhere,
        sc,
        g0,
        load,
    }
}

#[test]
fn without_ejection_a_dead_backend_fails_only_its_keys_and_serves_again_after_restart() {
    let Victim {
        mut mcs,
        _files,
        _proxy,
        port,
        admin,
        victim_port,
        victim,
        on_victim,
        elsewhere,
        mut sc,
        g0,
        load,
    } = victim_under_load("noej", "timeout = 1000");

    mcs[2].kill();
    let mut c = Client::connect(port);
    // Its keys: sets fail with SERVER_ERROR, gets miss; the others are unaffected.
    poll("the dead backend to be seen down", WAIT, || {
        c.send(set_request(&on_victim[0].0, "x"));
        let reply = text(&c.read_line());
        let b = sc.stats_map("backends");
        match backend_stat(&b, "main", victim_port, "state").as_str() {
            "down" if reply.starts_with("SERVER_ERROR") => Ok(()),
            s => Err(format!("state {s}, set replied {reply:?}")),
        }
    });
    for (k, v) in on_victim.iter().take(20) {
        c.send(set_request(k, v));
        let reply = text(&c.read_line());
        assert!(
            reply.starts_with("SERVER_ERROR "),
            "set {k} on a dead backend: {reply:?}"
        );
        c.send(format!("get {k}\r\n"));
        assert_eq!(
            text(&c.read_retrieval()),
            "END\r\n",
            "get {k} on a dead backend"
        );
    }
    // A multi-get spanning dead and live backends returns the live keys.
    let (a, b) = (&elsewhere[0], &on_victim[1]);
    c.send(format!("get {} {}\r\n", a.0, b.0));
    assert_eq!(text(&c.read_retrieval()), value_reply(&a.0, &a.1));
    load.wait_more(500);

    let b = sc.stats_map("backends");
    assert!(backend_num(&b, "main", victim_port, "errors") > 0, "{b:?}");
    assert_eq!(backend_num(&b, "main", victim_port, "ejections"), 0);
    for m in &mcs[..2] {
        assert_eq!(backend_num(&b, "main", m.port, "errors"), 0);
        assert_eq!(backend_stat(&b, "main", m.port, "state"), "up");
    }
    let m = scrape(admin);
    let victim_labels = [("pool", "main"), ("backend", victim.as_str())];
    assert!(metric(&m, "memroute_backend_errors_total", &victim_labels).unwrap() > 0.0);
    assert_eq!(metric(&m, "memroute_backend_up", &victim_labels), Some(0.0));
    assert_eq!(
        generation(&mut sc),
        g0,
        "without ejection the ring does not change"
    );

    // Restarted on its port, it serves its keys again.
    mcs[2] = Memcached::start_on(victim_port);
    let (k, v) = &on_victim[0];
    poll("the restarted backend to serve again", WAIT, || {
        c.send(set_request(k, v));
        match text(&c.read_line()) {
            r if r == "STORED\r\n" => Ok(()),
            r => Err(r),
        }
    });
    c.send(format!("get {k}\r\n"));
    assert_eq!(text(&c.read_retrieval()), value_reply(k, v));
    assert_eq!(mcs[2].client().get(k).as_deref(), Some(v.as_bytes()));
    let b = sc.stats_map("backends");
    assert_eq!(backend_stat(&b, "main", victim_port, "state"), "up");
    load.wait_more(300);
    let report = load.finish();
    assert_clean(&report, 1300);
}

#[test]
fn with_ejection_a_dead_backend_is_ejected_its_keys_served_elsewhere_and_it_returns() {
    let Victim {
        mut mcs,
        _files,
        _proxy,
        port,
        admin,
        victim_port,
        victim,
        on_victim,
        elsewhere: _,
        mut sc,
        g0,
        load,
    } = victim_under_load("ej", "timeout = 1000\nauto_eject_hosts = true\nserver_failure_limit = 1\nserver_retry_timeout = 500\nwarmup = \"30s\"");

    mcs[2].kill();
    let mut c = Client::connect(port);
    poll("the dead backend to be ejected", WAIT, || {
        c.send(set_request(&on_victim[0].0, "x"));
        let reply = text(&c.read_line());
        let b = sc.stats_map("backends");
        match backend_stat(&b, "main", victim_port, "state").as_str() {
            "ejected" => Ok(()),
            s => Err(format!("state {s}, set replied {reply:?}")),
        }
    });
    let b = sc.stats_map("backends");
    assert!(backend_num(&b, "main", victim_port, "ejections") >= 1);
    let victim_labels = [("pool", "main"), ("backend", victim.as_str())];
    let m = scrape(admin);
    assert!(metric(&m, "memroute_backend_ejections_total", &victim_labels).unwrap() >= 1.0);
    assert_eq!(metric(&m, "memroute_backend_up", &victim_labels), Some(0.0));
    let g_ejected = wait_generation(&mut sc, g0);

    // Its keys are served by the remaining backends.
    let moved: Vec<(String, String)> = on_victim
        .iter()
        .take(60)
        .map(|(k, _)| (k.clone(), format!("during-ejection-{k}")))
        .collect();
    for (k, v) in &moved {
        c.send(set_request(k, v));
        assert_eq!(text(&c.read_line()), "STORED\r\n", "set {k} after ejection");
        c.send(format!("get {k}\r\n"));
        assert_eq!(text(&c.read_retrieval()), value_reply(k, v));
        let holders = mcs[..2]
            .iter()
            .filter(|m| m.client().get(k).as_deref() == Some(v.as_bytes()))
            .count();
        assert_eq!(holders, 1, "{k} should be on exactly one remaining backend");
    }
    load.wait_more(300);

    // Back on its port: probed after the retry timeout, readmitted, ring rebuilt.
    mcs[2] = Memcached::start_on(victim_port);
    let g_back = poll("the restarted backend to be readmitted", WAIT, || {
        let b = sc.stats_map("backends");
        let g = generation(&mut sc);
        match backend_stat(&b, "main", victim_port, "state").as_str() {
            "ejected" => Err(format!("state ejected, generation {g}")),
            _ if g > g_ejected => Ok(g),
            s => Err(format!("state {s}, generation {g}")),
        }
    });
    assert!(g_back > g_ejected);
    // Readmitted after answering the probe, before any client request reached it: it should
    // be reported up (stats and metrics). Checked now, asserted at the end, so the data
    // checks below run either way.
    let reported_after_probe = try_poll(Duration::from_secs(3), || {
        let b = sc.stats_map("backends");
        let m = scrape(admin);
        match (
            backend_stat(&b, "main", victim_port, "state"),
            metric(&m, "memroute_backend_up", &victim_labels),
        ) {
            (s, Some(up)) if s == "up" && up == 1.0 => Ok(()),
            (s, up) => Err(format!("state {s}, memroute_backend_up {up:?}")),
        }
    });
    // Keys written while it was out are still readable: readmission is a ring change, so
    // warm-up (on in this pool) asks the stand-ins when the restarted, empty backend misses.
    // (The README's "values written meanwhile on the stand-ins become unreachable" holds
    // once warm-up is over, or with warmup = "0s".) New writes go to it again.
    let bad = read_all(port, &moved);
    assert!(
        bad.is_empty(),
        "keys written during the ejection lost on return: {bad:?}"
    );
    let (k, _) = &on_victim[0];
    c.send(set_request(k, "back"));
    assert_eq!(text(&c.read_line()), "STORED\r\n");
    assert_eq!(mcs[2].client().get(k).as_deref(), Some(&b"back"[..]));
    let b = sc.stats_map("backends");
    assert_eq!(backend_stat(&b, "main", victim_port, "state"), "up");
    load.wait_more(300);
    let report = load.finish();
    assert_clean(&report, 1100);
    assert_eq!(
        reported_after_probe,
        Ok(()),
        "a backend readmitted after a successful probe is not reported up until a client \
         request reaches it"
    );
}

// ---------------------------------------------------------------------------------------
// 6. Prometheus and /health
// ---------------------------------------------------------------------------------------

#[test]
fn prometheus_metrics_and_health_over_http() {
    let mcs: Vec<Memcached> = (0..2).map(|_| Memcached::start()).collect();
    let files = TempFiles::new();
    let port = free_port();
    let dead_pool_port = free_port();
    let dead_backend = free_port();
    let admin = free_port();
    let top = format!("threads = 1\nadmin = \"127.0.0.1:{admin}\"");
    let main = pool_toml("main", port, &named(&[&mcs[0], &mcs[1]], &["a", "b"]), "");
    let dead = pool_toml(
        "dead",
        dead_pool_port,
        &[format!("127.0.0.1:{dead_backend}:1")],
        "timeout = 500\nconnect_timeout = 500",
    );
    let path = files.write("memroute.toml", &config_toml(&top, &[main, dead]));
    let proxy = Proxy::start_config(&path, port, &[]);
    wait_for_port_only(dead_pool_port);
    wait_for_port_only(admin);

    let pairs = key_values("prom", 100);
    write_all(port, &pairs);
    let before = scrape(admin);
    for name in [
        "memroute_config_generation",
        "memroute_backend_requests_total",
        "memroute_backend_errors_total",
        "memroute_backend_ejections_total",
        "memroute_backend_warmup_hits_total",
        "memroute_backend_up",
        "memroute_backend_latency_seconds_bucket",
        "memroute_backend_latency_seconds_sum",
        "memroute_backend_latency_seconds_count",
    ] {
        assert!(
            before.iter().any(|s| s.name == name),
            "{name} missing from /metrics"
        );
    }
    for result in ["ok", "error"] {
        assert!(
            metric(&before, "memroute_reloads_total", &[("result", result)]).is_some(),
            "memroute_reloads_total{{result=\"{result}\"}} missing"
        );
    }
    let mut sc = proxy.client();
    assert_eq!(
        metric(&before, "memroute_config_generation", &[]),
        Some(generation(&mut sc) as f64)
    );
    let bucket_le: Vec<&str> = before
        .iter()
        .filter(|s| s.name == "memroute_backend_latency_seconds_bucket")
        .filter_map(|s| s.labels.get("le").map(String::as_str))
        .collect();
    assert!(
        bucket_le.contains(&"+Inf"),
        "histogram buckets {bucket_le:?}"
    );

    let count = |samples: &[Sample], name: &str, m: &Memcached| -> f64 {
        let a = addr(m);
        let labels: Vec<(&str, &str)> = match name {
            "memroute_backend_latency_seconds_count" => vec![("backend", a.as_str())],
            _ => vec![("pool", "main"), ("backend", a.as_str())],
        };
        metric(samples, name, &labels).unwrap_or_else(|| panic!("{name} for {a} missing"))
    };
    let mut c = proxy.client();
    for (k, v) in &pairs {
        assert_eq!(c.get(k).as_deref(), Some(v.as_bytes()));
    }
    let after = scrape(admin);
    let mut total = 0.0;
    for m in &mcs {
        for name in [
            "memroute_backend_requests_total",
            "memroute_backend_latency_seconds_count",
        ] {
            let (b, a) = (count(&before, name, m), count(&after, name, m));
            assert!(a > b, "{name} for {} did not increase: {b} -> {a}", addr(m));
        }
        total += count(&after, "memroute_backend_requests_total", m)
            - count(&before, "memroute_backend_requests_total", m);
        assert_eq!(count(&after, "memroute_backend_errors_total", m), 0.0);
        assert_eq!(count(&after, "memroute_backend_up", m), 1.0);
    }
    assert!(
        total >= pairs.len() as f64,
        "{total} requests counted for {} gets",
        pairs.len()
    );
    assert!(
        metric_sum(&after, "memroute_backend_latency_seconds_sum")
            > metric_sum(&before, "memroute_backend_latency_seconds_sum")
    );

    // Health: every backend up (the dead pool's server has not been tried yet).
    let (code, body) = http_get(admin, "/health");
    assert_eq!(code, 200, "/health with backends up: {body}");
    assert!(body.contains("pool main: 2/2"), "{body}");
    // Once the dead pool's only server has been tried and found down: 503.
    let mut d = Client::connect(dead_pool_port);
    let body = poll("/health to report 503", WAIT, || {
        d.send("get x\r\n");
        let _ = d.read_retrieval();
        match http_get(admin, "/health") {
            (503, body) => Ok(body),
            (code, body) => Err(format!("{code} {body}")),
        }
    });
    assert!(body.contains("pool dead: 0/1"), "{body}");
    let m = scrape(admin);
    let dead_addr = format!("127.0.0.1:{dead_backend}");
    assert_eq!(
        metric(
            &m,
            "memroute_backend_up",
            &[("pool", "dead"), ("backend", &dead_addr)]
        ),
        Some(0.0)
    );
    let (code, _) = http_get(admin, "/no-such-page");
    assert_eq!(code, 404);
}

// ---------------------------------------------------------------------------------------
// 7. stats
// ---------------------------------------------------------------------------------------

fn stats_proxy() -> (Vec<Memcached>, Proxy) {
    let mcs: Vec<Memcached> = (0..2).map(|_| Memcached::start()).collect();
    let servers: Vec<String> = mcs.iter().map(|m| m.server(1)).collect();
    let proxy = Proxy::start(&servers, &["--hash", "md5", "--threads", "2"]);
    (mcs, proxy)
}

#[test]
fn stats_are_parsed_and_count_connections_and_commands() {
    let (_mcs, proxy) = stats_proxy();
    let mut sc = proxy.client();
    let s0 = sc.stats_map("");
    assert_eq!(num_stat(&s0, "pid"), proxy.pid() as u64);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        num_stat(&s0, "time").abs_diff(now) <= 5,
        "time {}",
        s0["time"]
    );
    assert!(num_stat(&s0, "uptime") < 600);
    assert!(!s0["version"].is_empty());
    assert_eq!(num_stat(&s0, "threads"), 2);
    assert!(num_stat(&s0, "generation") >= 1);
    // The fixture's readiness probe connected and left: wait until only we are counted.
    let s0 = poll(
        "curr_connections to settle at 1 (the stats client)",
        WAIT,
        || {
            let s = sc.stats_map("");
            match num_stat(&s, "curr_connections") {
                1 => Ok(s),
                n => Err(n.to_string()),
            }
        },
    );

    // Connections.
    let base_total = num_stat(&s0, "total_connections");
    let extra: Vec<Client> = (0..3).map(|_| proxy.client()).collect();
    poll("curr_connections to count 3 more", WAIT, || {
        let s = sc.stats_map("");
        match (
            num_stat(&s, "curr_connections"),
            num_stat(&s, "total_connections"),
        ) {
            (4, t) if t == base_total + 3 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    drop(extra);
    poll("curr_connections to drop back", WAIT, || {
        match num_stat(&sc.stats_map(""), "curr_connections") {
            1 => Ok(()),
            n => Err(n.to_string()),
        }
    });

    // Commands: cmd_get counts keys, cmd_set storage commands.
    let mut c = proxy.client();
    let s1 = sc.stats_map("");
    for i in 0..5 {
        c.set(&format!("st:{i}"), b"v");
    }
    c.send("get st:0 st:1 st:2 st:nope\r\n");
    let _ = c.read_retrieval();
    assert_eq!(c.get("st:3").as_deref(), Some(&b"v"[..]));
    let s2 = sc.stats_map("");
    assert_eq!(num_stat(&s2, "cmd_set") - num_stat(&s1, "cmd_set"), 5);
    assert_eq!(num_stat(&s2, "cmd_get") - num_stat(&s1, "cmd_get"), 5);
    assert!(num_stat(&s2, "bytes_read") > num_stat(&s1, "bytes_read"));
    assert!(num_stat(&s2, "bytes_written") > num_stat(&s1, "bytes_written"));

    // stats backends: one block per backend with the documented fields.
    let b = sc.stats_map("backends");
    let mut requests = 0;
    for m in &_mcs {
        for field in [
            "state",
            "requests",
            "errors",
            "timeouts",
            "ejections",
            "warmup_hits",
            "in_flight",
            "latency_us_mean",
        ] {
            backend_stat(&b, "default", m.port, field);
        }
        assert_eq!(backend_stat(&b, "default", m.port, "state"), "up");
        requests += backend_num(&b, "default", m.port, "requests");
    }
    assert!(
        requests >= 5 + 2,
        "{requests} backend requests for 5 sets and 2 gets"
    );
}

#[test]
fn stats_count_get_hits_and_misses() {
    // The issue lists get_hits and get_misses among the counters `stats` reports.
    let (_mcs, proxy) = stats_proxy();
    let mut sc = proxy.client();
    let mut c = proxy.client();
    c.set("hm:a", b"1");
    c.set("hm:b", b"2");
    let s1 = sc.stats_map("");
    assert!(
        s1.contains_key("get_hits") && s1.contains_key("get_misses"),
        "stats lacks get_hits/get_misses: {:?}",
        {
            let mut k: Vec<&String> = s1.keys().collect();
            k.sort();
            k
        }
    );
    c.send("get hm:a hm:b hm:c\r\n");
    let _ = c.read_retrieval();
    assert_eq!(c.get("hm:d"), None);
    let s2 = sc.stats_map("");
    assert_eq!(num_stat(&s2, "get_hits") - num_stat(&s1, "get_hits"), 2);
    assert_eq!(num_stat(&s2, "get_misses") - num_stat(&s1, "get_misses"), 2);
}

// ---------------------------------------------------------------------------------------
// 8. Graceful shutdown
// ---------------------------------------------------------------------------------------

/// A backend that answers `get` only once released (and `version` at once). Sends one
/// message on the returned channel per `get` received.
struct HeldBackend {
    port: u16,
    arrived: mpsc::Receiver<String>,
    release: Arc<(Mutex<bool>, Condvar)>,
}

impl HeldBackend {
    fn start() -> HeldBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, arrived) = mpsc::channel();
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let rel = release.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (tx, rel) = (tx.clone(), rel.clone());
                thread::spawn(move || {
                    let mut out = stream.try_clone().unwrap();
                    let mut lines = BufReader::new(stream);
                    let mut line = String::new();
                    while lines.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                        let reply = if let Some(keys) = line.trim_end().strip_prefix("get ") {
                            let _ = tx.send(keys.to_string());
                            let (lock, cv) = &*rel;
                            let mut released = lock.lock().unwrap();
                            while !*released {
                                released = cv.wait(released).unwrap();
                            }
                            let mut r = String::new();
                            for k in keys.split(' ') {
                                r.push_str(&value_item(k, &format!("held-{k}")));
                            }
                            r + "END\r\n"
                        } else if line.starts_with("version") {
                            "VERSION held\r\n".to_string()
                        } else {
                            "ERROR\r\n".to_string()
                        };
                        if out.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        HeldBackend {
            port,
            arrived,
            release,
        }
    }

    fn release(&self) {
        let (lock, cv) = &*self.release;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let mc = Memcached::start();
    let held = HeldBackend::start();
    let files = TempFiles::new();
    let port = free_port();
    let big_port = free_port();
    let shutdown = Duration::from_millis(5000);
    let top = format!("threads = 1\nshutdown_timeout = {}", shutdown.as_millis());
    let held_pool = pool_toml(
        "main",
        port,
        &[format!("127.0.0.1:{}:1", held.port)],
        "timeout = 8000",
    );
    let big_pool = pool_toml("big", big_port, &[mc.server(1)], "timeout = 8000");
    let path = files.write("memroute.toml", &config_toml(&top, &[held_pool, big_pool]));
    let mut proxy = Proxy::start_config(&path, port, &[]);
    wait_for_port_only(big_port);

    // 30 values of 200 KB: far more than socket buffers hold, so most of this reply is
    // still inside memroute when SIGTERM arrives (the client does not read until after).
    let big: Vec<(String, String)> = (0..30)
        .map(|i| {
            let fill = char::from(b'a' + (i % 26) as u8);
            (format!("big:{i}"), fill.to_string().repeat(200_000))
        })
        .collect();
    write_all(big_port, &big);
    let gets_before = num_stat(&mc.client().stats_map(""), "cmd_get");

    let mut idle = Client::connect(port);
    idle.expect("version\r\n", "VERSION ");
    let _ = idle.read_line();
    let mut slow = Client::connect(port);
    slow.send("get s1 s2\r\nget s3\r\n");
    let mut large = Client::connect(big_port);
    let names: Vec<&str> = big.iter().map(|(k, _)| k.as_str()).collect();
    large.send(format!("get {}\r\n", names.join(" ")));

    // Both are in flight: the held backend has the first get, memcached has the multi-get.
    let first = held
        .arrived
        .recv_timeout(WAIT)
        .expect("the held backend never saw the get");
    assert_eq!(first, "s1 s2");
    poll("memcached to receive the multi-get", WAIT, || {
        match num_stat(&mc.client().stats_map(""), "cmd_get") - gets_before {
            n if n >= big.len() as u64 => Ok(()),
            n => Err(n.to_string()),
        }
    });

    let t0 = Instant::now();
    proxy.signal("TERM");
    // memroute stops accepting…
    poll(
        "memroute to stop accepting",
        WAIT,
        || match TcpStream::connect(("127.0.0.1", port)) {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting".into()),
        },
    );
    assert!(proxy.is_running(), "exited with requests in flight");
    // …then the held replies come back complete, and the connection closes.
    held.release();
    assert_eq!(
        text(&slow.read_retrieval()),
        format!(
            "{}{}END\r\n",
            value_item("s1", "held-s1"),
            value_item("s2", "held-s2")
        )
    );
    assert_eq!(text(&slow.read_retrieval()), value_reply("s3", "held-s3"));
    assert_eq!(text(&slow.read_to_close()), "", "bytes after the replies");
    let reply = large.read_retrieval();
    let mut expected = String::new();
    for (k, v) in &big {
        expected.push_str(&value_item(k, v));
    }
    expected.push_str("END\r\n");
    assert!(
        reply == expected.as_bytes(),
        "large multi-get reply incomplete: {} of {} bytes",
        reply.len(),
        expected.len()
    );
    assert_eq!(text(&large.read_to_close()), "");
    assert_eq!(text(&idle.read_to_close()), "", "idle client not closed");

    let status = proxy
        .wait_exit(shutdown.saturating_sub(t0.elapsed()) + Duration::from_millis(500))
        .expect("memroute still running after the shutdown timeout");
    assert!(status.success(), "memroute exited with {status}");
    assert!(
        t0.elapsed() < shutdown,
        "shutdown took {:?}, longer than the {shutdown:?} timeout",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// 9. route subcommand
// ---------------------------------------------------------------------------------------

#[test]
fn route_subcommand_names_the_memcached_that_holds_each_key() {
    let mcs: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let files = TempFiles::new();
    let port = free_port();
    let admin = free_port();
    // Unnamed servers here: ring identities are host:port, as most configs write them.
    let servers: Vec<String> = mcs.iter().map(|m| m.server(1)).collect();
    let top = format!("threads = 1\nadmin = \"127.0.0.1:{admin}\"");
    let path = files.write(
        "memroute.toml",
        &config_toml(&top, &[pool_toml("main", port, &servers, "")]),
    );
    let _proxy = Proxy::start_config(&path, port, &[]);
    wait_for_port_only(admin);

    let pairs = key_values("route", 40);
    write_all(port, &pairs);
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let owners = route_owners(&path, &keys);
    let mut direct: Vec<Client> = mcs.iter().map(|m| m.client()).collect();
    let mut used = std::collections::HashSet::new();
    for (k, v) in &pairs {
        for (m, c) in mcs.iter().zip(direct.iter_mut()) {
            let held = c.get(k);
            if owners[k] == addr(m) {
                assert_eq!(
                    held.as_deref(),
                    Some(v.as_bytes()),
                    "{k}: route says {}",
                    owners[k]
                );
                used.insert(m.port);
            } else {
                assert_eq!(
                    held,
                    None,
                    "{k} on {} but route says {}",
                    addr(m),
                    owners[k]
                );
            }
        }
    }
    assert_eq!(used.len(), 3, "40 md5 keys should reach all 3 backends");
    // The running proxy answers the same, with no previous owner outside warm-up.
    let live = parse_route(&run_route(
        &["--admin", &format!("127.0.0.1:{admin}")],
        &keys,
    ));
    assert_eq!(live.len(), keys.len());
    for l in live {
        assert_eq!(l.owner, owners[&l.key]);
        assert_eq!(l.previous, None);
    }
}

#[test]
fn a_get_line_read_in_batches_during_warm_up_finds_the_moved_keys() {
    let mcs: Vec<Memcached> = (0..4).map(|_| Memcached::start()).collect();
    let files = TempFiles::new();
    let port = free_port();
    let extra = "warmup = \"30s\"";
    let three = named(&[&mcs[0], &mcs[1], &mcs[2]], &["a", "b", "c"]);
    let four = named(&[&mcs[0], &mcs[1], &mcs[2], &mcs[3]], &["a", "b", "c", "d"]);
    let path = files.write(
        "memroute.toml",
        &config_toml("threads = 1", &[pool_toml("main", port, &three, extra)]),
    );
    let proxy = Proxy::start_config(&path, port, &[]);
    let pairs = key_values("stream", 1000);
    write_all(port, &pairs);
    let mut sc = proxy.client();
    let g0 = generation(&mut sc);
    replace_file(
        &path,
        &config_toml("threads = 1", &[pool_toml("main", port, &four, extra)]),
    );
    wait_generation(&mut sc, g0);

    // One get of every key (about 30 KB), sent in pieces so that memroute reads it in
    // batches of keys while it arrives: the moved keys come from their previous owner.
    let mut line = String::from("get");
    let mut expected = String::new();
    for (k, v) in &pairs {
        line.push(' ');
        line.push_str(k);
        expected.push_str(&value_item(k, v));
    }
    line.push_str("\r\n");
    expected.push_str("END\r\n");
    let mut c = proxy.client();
    for piece in line.as_bytes().chunks(4000) {
        c.send(piece);
        thread::sleep(Duration::from_millis(20));
    }
    let got = text(&c.read_n(expected.len()));
    assert!(got == expected, "{}", truncate(&got));
    let stats = sc.stats_map("backends");
    assert!(
        backends_sum(&stats, "warmup_hits") > 100,
        "moved keys were read from their previous owner"
    );
}
