//! memroute driven by real memcached client libraries from other languages, as applications
//! use them: python-memcached, pymemcache, pylibmc, Cache::Memcached::Fast (Perl), PHP's
//! Memcached extension and meta-memcache (Python, meta protocol only), each through a driver
//! script in `tests/clients/` (see its README), and libmemcached's tools (memcping,
//! memcstat, memccapable). Every test runs against memroute (`--hash md5`) over three real
//! memcached; a control test runs every driver against memcached directly, so a failure
//! that is the driver's (or a library upgrade's) shows there too.
//!
//! The libraries are Debian packages that `scripts/test.sh` installs (for the Debian python
//! at /usr/bin/python3, not whatever `python3` is on PATH), except meta-memcache, which it
//! installs from PyPI (the version pinned in `tests/clients/requirements.txt`) into a venv
//! of that python, `target/pyenv`. A missing one fails the test with a message naming the
//! package; nothing is skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::relay::Relay;
use common::{Memcached, Proxy};

/// How long one driver or tool may run (each takes about 3.5 s against memcached, most of it
/// waiting out the ttls its touch checks need).
const LIMIT: Duration = Duration::from_secs(40);

/// Three memcached and memroute over them.
struct Cluster {
    _backends: Vec<Memcached>,
    proxy: Proxy,
}

impl Cluster {
    fn start() -> Cluster {
        let backends: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
        let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
        let proxy = Proxy::start(&servers, &["--threads", "2", "--hash", "md5"]);
        Cluster {
            _backends: backends,
            proxy,
        }
    }

    /// memroute's address, as the drivers take it.
    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }
}

/// What a finished program did.
struct Run {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    /// Everything it printed, for a failure message.
    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }

    /// Asserts exit status 0 (the failure message holds everything it printed); on success
    /// prints its report (shown by `--nocapture`).
    fn assert_success(&self) {
        assert!(
            self.status.success(),
            "{} failed ({}, after {:.1} s):\n{}",
            self.what,
            self.status,
            self.took.as_secs_f64(),
            self.output()
        );
        println!(
            "{} ({:.1} s):\n{}",
            self.what,
            self.took.as_secs_f64(),
            self.stdout
        );
    }
}

/// Panics unless `path` exists, naming the Debian package that provides it.
fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing (Debian package {package}): run scripts/test.sh, which installs \
         the client libraries these tests drive"
    );
}

/// The python of the venv `scripts/test.sh` makes for the PyPI libraries.
const VENV_PYTHON: &str = "target/pyenv/bin/python3";

/// Where an interpreter of [`DRIVERS`] is: a relative path is in the repository.
fn interpreter_path(interpreter: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(interpreter)
}

/// Runs `program` with `args`, its output in temp files (no pipe can fill up), killing it
/// after `LIMIT`.
fn run(program: &str, args: &[&str]) -> Run {
    let what = format!("{program} {}", args.join(" "));
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        // The Debian python must not pick up another python's settings.
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {what}: {e}: run scripts/test.sh, which installs it")
        });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &PathBuf| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    let Some(status) = status else {
        panic!(
            "{what} did not finish within {LIMIT:?} (killed):\n--- stdout ---\n{stdout}\
             --- stderr ---\n{stderr}"
        );
    };
    Run {
        what,
        status,
        stdout,
        stderr,
        took: start.elapsed(),
    }
}

/// The drivers: interpreter (a relative path: in the repository), the Debian package that
/// provides it, script in `tests/clients/` (each names its library's package when that is
/// missing).
const DRIVERS: [(&str, &str, &str); 6] = [
    ("/usr/bin/python3", "python3", "python_memcached.py"),
    ("/usr/bin/python3", "python3", "pymemcache_client.py"),
    ("/usr/bin/python3", "python3", "pylibmc_client.py"),
    ("/usr/bin/perl", "perl", "cache_memcached_fast.pl"),
    ("/usr/bin/php", "php-cli", "php_memcached.php"),
    (VENV_PYTHON, "python3-venv", "meta_memcache_client.py"),
];

/// Runs the driver `script` (one of [`DRIVERS`]) against `address`.
fn run_driver(script: &str, address: &str) -> Run {
    let (interpreter, package, _) = DRIVERS
        .iter()
        .find(|d| d.2 == script)
        .expect("a known driver");
    let interpreter = interpreter_path(interpreter);
    let interpreter = interpreter.to_str().unwrap();
    require(interpreter, package);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let path = path.to_str().unwrap();
    // -B: no __pycache__ written into the source tree.
    let args: Vec<&str> = if interpreter.ends_with("python3") {
        vec!["-B", path, address]
    } else {
        vec![path, address]
    };
    run(interpreter, &args)
}

/// The driver `script` against memroute over three memcached.
fn driver_through_memroute(script: &str) {
    let cluster = Cluster::start();
    run_driver(script, &cluster.address()).assert_success();
}

#[test]
fn python_memcached_library_through_memroute() {
    driver_through_memroute("python_memcached.py");
}

#[test]
fn pymemcache_library_through_memroute() {
    driver_through_memroute("pymemcache_client.py");
}

#[test]
fn pylibmc_library_through_memroute() {
    driver_through_memroute("pylibmc_client.py");
}

#[test]
fn perl_cache_memcached_fast_through_memroute() {
    driver_through_memroute("cache_memcached_fast.pl");
}

#[test]
fn php_memcached_extension_through_memroute() {
    driver_through_memroute("php_memcached.php");
}

/// meta-memcache, which speaks only the meta protocol, through a logging relay in front of
/// memroute: everything it sent is meta requests (`mg`, `ms`, `md`, `ma`, `mn`, `me`), quiet
/// ones and base64 keys among them, and memroute's `meta_requests` stat grew by exactly
/// their number.
#[test]
fn meta_memcache_library_through_memroute() {
    let cluster = Cluster::start();
    let mut stats = common::Client::connect(cluster.proxy.port);
    let before = stats.stat_num("meta_requests");
    let relay = Relay::start(cluster.proxy.port);
    let run = run_driver(
        "meta_memcache_client.py",
        &format!("127.0.0.1:{}", relay.port),
    );
    run.assert_success();
    let sent = relay.sent();
    let mut words: std::collections::BTreeMap<String, u64> = Default::default();
    let (mut quiet, mut base64, mut requests) = (0, 0, 0u64);
    for (conn, bytes) in sent.iter().enumerate() {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .unwrap_or_else(|| {
                    panic!(
                        "connection {conn}: an unfinished line {:?}",
                        String::from_utf8_lossy(&rest[..rest.len().min(200)])
                    )
                });
            let line = String::from_utf8_lossy(&rest[..end]).into_owned();
            let tokens: Vec<&str> = line.split(' ').collect();
            assert!(
                ["mg", "ms", "md", "ma", "mn", "me"].contains(&tokens[0]),
                "connection {conn}: meta-memcache sent a non-meta request {line:?}"
            );
            let flags = tokens.iter().skip(if tokens[0] == "ms" { 3 } else { 2 });
            let flags: Vec<&&str> = flags.collect();
            quiet += flags.iter().any(|f| **f == "q") as u64;
            base64 += flags.iter().any(|f| **f == "b") as u64;
            *words.entry(tokens[0].to_string()).or_default() += 1;
            requests += 1;
            let data = if tokens[0] == "ms" {
                tokens[2].parse::<usize>().expect("ms data length") + 2
            } else {
                0
            };
            rest = &rest[end + 2 + data..];
        }
    }
    println!("meta-memcache sent, over {} connections: {words:?}, {quiet} quiet, {base64} with base64 keys", sent.len());
    for (word, at_least) in [("mg", 4000), ("ms", 2000), ("md", 5), ("ma", 10), ("mn", 5)] {
        let n = words.get(word).copied().unwrap_or(0);
        assert!(n >= at_least, "only {n} {word} requests: {words:?}");
    }
    assert!(
        quiet >= 50 && base64 >= 10,
        "{quiet} quiet, {base64} base64 requests"
    );
    let after = stats.stat_num("meta_requests");
    assert_eq!(
        after - before,
        requests,
        "meta_requests grew by {} for the {requests} meta requests meta-memcache sent",
        after - before
    );
}

/// Control: every driver passes against one memcached directly (all at once, so this costs
/// one driver's time). If this fails, the driver or the installed library is at fault, not
/// memroute.
#[test]
fn control_every_driver_passes_against_memcached_directly() {
    // Room for six data sets of about 10 MB each without evictions.
    let memcached = Memcached::start_with(&["-m", "256"]);
    let address = format!("127.0.0.1:{}", memcached.port);
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = DRIVERS
            .iter()
            .map(|(_, _, script)| {
                let address = &address;
                s.spawn(move || run_driver(script, address))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| !r.status.success())
        .map(|r| format!("{} failed ({}):\n{}", r.what, r.status, r.output()))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    for r in &runs {
        r.assert_success();
    }
}

const MEMCPING: &str = "/usr/bin/memcping";
const MEMCSTAT: &str = "/usr/bin/memcstat";
const MEMCCAPABLE: &str = "/usr/bin/memccapable";

/// libmemcached's ping (a `version` it must parse) through memroute.
#[test]
fn libmemcached_memcping_pings_memroute() {
    require(MEMCPING, "libmemcached-tools");
    let cluster = Cluster::start();
    run(MEMCPING, &[&format!("--servers={}", cluster.address())]).assert_success();
}

/// libmemcached's stats tool through memroute: exit 0 and the stats printed (it also exits 0
/// printing nothing when the connection is closed on it, as twemproxy does).
#[test]
fn libmemcached_memcstat_prints_memroute_stats() {
    require(MEMCSTAT, "libmemcached-tools");
    let cluster = Cluster::start();
    let r = run(MEMCSTAT, &[&format!("--servers={}", cluster.address())]);
    r.assert_success();
    let header = format!("Server: 127.0.0.1 ({})", cluster.proxy.port);
    assert!(
        r.stdout.contains(&header),
        "no {header:?} in memcstat's output:\n{}",
        r.output()
    );
    let stats: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with('\t') && l.contains(": "))
        .collect();
    assert!(
        stats.len() >= 3,
        "memcstat printed no stats:\n{}",
        r.output()
    );
    let version = stats
        .iter()
        .find_map(|l| l.trim().strip_prefix("version: "))
        .unwrap_or("");
    assert!(
        !version.is_empty(),
        "memcstat printed no version:\n{}",
        r.output()
    );
}

/// libmemcached's protocol conformance suite, ASCII tests only (it flushes everything, so
/// it gets its own memroute and backends).
#[test]
fn libmemcached_memccapable_ascii_suite_passes_through_memroute() {
    require(MEMCCAPABLE, "libmemcached-tools");
    let cluster = Cluster::start();
    let port = cluster.proxy.port.to_string();
    let r = run(
        MEMCCAPABLE,
        &["-h", "127.0.0.1", "-p", &port, "-a", "-v", "-t", "5"],
    );
    r.assert_success();
    assert!(
        r.stdout.contains("All tests passed"),
        "memccapable did not report \"All tests passed\":\n{}",
        r.output()
    );
}
