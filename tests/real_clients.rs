//! memroute driven by real memcached client libraries from other languages, as applications
//! use them: python-memcached, pymemcache, pylibmc, Cache::Memcached::Fast (Perl), PHP's
//! Memcached extension and meta-memcache (Python, meta protocol only), each through a driver
//! script in `tests/clients/` (see its README), and libmemcached's tools (memcping,
//! memcstat, memccapable). The binary protocol: pylibmc and PHP's Memcached with their
//! binary option, Dalli (Ruby, binary only) and `memccapable -b`, each behind a logging relay
//! that proves every byte they sent was a binary request packet. Every test runs against
//! memroute (`--hash md5 --distribution ketama`, libmemcached's weighted ketama) over three
//! real memcached; the libmemcached drivers also read the data set from the backends
//! directly (each key on one backend, where libmemcached's ketama puts it). A control test
//! runs every driver against memcached directly, so a failure that is the driver's (or a
//! library upgrade's) shows there too.
//!
//! The libraries are Debian packages that `scripts/test.sh` installs (for the Debian python
//! at /usr/bin/python3, not whatever `python3` is on PATH), except meta-memcache, which it
//! installs from PyPI (the version pinned in `tests/clients/requirements.txt`) into a venv
//! of that python, `target/pyenv`. A missing one fails the test with a message naming the
//! package; nothing is skipped.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::relay::Relay;
use common::{Memcached, Proxy};

/// How long one driver or tool may run (each takes about 3.5 s against memcached, most of it
/// waiting out the ttls its touch checks need).
const LIMIT: Duration = Duration::from_secs(40);

/// Three memcached and memroute over them, with libmemcached's key distribution (md5,
/// weighted ketama; every server of weight 1).
struct Cluster {
    backends: Vec<Memcached>,
    proxy: Proxy,
}

impl Cluster {
    fn start() -> Cluster {
        let backends: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
        let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
        let proxy = Proxy::start(
            &servers,
            &[
                "--threads",
                "2",
                "--hash",
                "md5",
                "--distribution",
                "ketama",
            ],
        );
        Cluster { backends, proxy }
    }

    /// memroute's address, as the drivers take it.
    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }

    /// `--backends=H:P,H:P,H:P`: the drivers that take it also read the data set from the
    /// backends directly.
    fn backends_flag(&self) -> String {
        let list: Vec<String> = self.backends.iter().map(|m| m.address()).collect();
        format!("--backends={}", list.join(","))
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

/// A driver: a script in `tests/clients/` (each names its library's package when that is
/// missing), run by an interpreter (a relative path: in the repository) from a Debian
/// package, with arguments of its own (`--binary`: the same library over the binary
/// protocol).
struct Driver {
    /// How the tests name it.
    name: &'static str,
    interpreter: &'static str,
    package: &'static str,
    script: &'static str,
    args: &'static [&'static str],
}

const fn driver(
    name: &'static str,
    interpreter: &'static str,
    package: &'static str,
    script: &'static str,
    args: &'static [&'static str],
) -> Driver {
    Driver {
        name,
        interpreter,
        package,
        script,
        args,
    }
}

/// Every driver (the control runs them all against memcached).
const DRIVERS: [Driver; 9] = [
    driver(
        "python-memcached",
        "/usr/bin/python3",
        "python3",
        "python_memcached.py",
        &[],
    ),
    driver(
        "pymemcache",
        "/usr/bin/python3",
        "python3",
        "pymemcache_client.py",
        &[],
    ),
    driver(
        "pylibmc",
        "/usr/bin/python3",
        "python3",
        "pylibmc_client.py",
        &[],
    ),
    driver(
        "pylibmc-binary",
        "/usr/bin/python3",
        "python3",
        "pylibmc_client.py",
        &["--binary"],
    ),
    driver(
        "perl",
        "/usr/bin/perl",
        "perl",
        "cache_memcached_fast.pl",
        &[],
    ),
    driver("php", "/usr/bin/php", "php-cli", "php_memcached.php", &[]),
    driver(
        "php-binary",
        "/usr/bin/php",
        "php-cli",
        "php_memcached.php",
        &["--binary"],
    ),
    driver(
        "meta-memcache",
        VENV_PYTHON,
        "python3-venv",
        "meta_memcache_client.py",
        &[],
    ),
    driver("dalli", "/usr/bin/ruby", "ruby", "dalli_client.rb", &[]),
];

/// Runs the driver called `name` (one of [`DRIVERS`]) against `address`, with `extra`
/// arguments before the address.
fn run_driver_with(name: &str, extra: &[&str], address: &str) -> Run {
    let d = DRIVERS
        .iter()
        .find(|d| d.name == name)
        .expect("a known driver");
    let interpreter = interpreter_path(d.interpreter);
    let interpreter = interpreter.to_str().unwrap();
    require(interpreter, d.package);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(d.script);
    let path = path.to_str().unwrap();
    // -B: no __pycache__ written into the source tree.
    let mut args: Vec<&str> = if interpreter.ends_with("python3") {
        vec!["-B", path]
    } else {
        vec![path]
    };
    args.extend(d.args);
    args.extend(extra);
    args.push(address);
    run(interpreter, &args)
}

/// Runs the driver called `name` against `address`.
fn run_driver(name: &str, address: &str) -> Run {
    run_driver_with(name, &[], address)
}

/// The driver called `name` against memroute over three memcached.
fn driver_through_memroute(name: &str) {
    let cluster = Cluster::start();
    run_driver(name, &cluster.address()).assert_success();
}

#[test]
fn python_memcached_library_through_memroute() {
    driver_through_memroute("python-memcached");
}

#[test]
fn pymemcache_library_through_memroute() {
    driver_through_memroute("pymemcache");
}

/// pylibmc, text protocol; the data set then read from the backends directly.
#[test]
fn pylibmc_library_through_memroute() {
    let cluster = Cluster::start();
    run_driver_with("pylibmc", &[&cluster.backends_flag()], &cluster.address()).assert_success();
}

#[test]
fn perl_cache_memcached_fast_through_memroute() {
    driver_through_memroute("perl");
}

/// PHP's Memcached, text protocol; the data set then read from the backends directly.
#[test]
fn php_memcached_extension_through_memroute() {
    let cluster = Cluster::start();
    run_driver_with("php", &[&cluster.backends_flag()], &cluster.address()).assert_success();
}

/// The binary protocol's opcodes by name (those the clients here send).
fn opcode_name(op: u8) -> String {
    let name = match op {
        0x00 => "Get",
        0x01 => "Set",
        0x02 => "Add",
        0x03 => "Replace",
        0x04 => "Delete",
        0x05 => "Increment",
        0x06 => "Decrement",
        0x07 => "Quit",
        0x08 => "Flush",
        0x09 => "GetQ",
        0x0a => "Noop",
        0x0b => "Version",
        0x0c => "GetK",
        0x0d => "GetKQ",
        0x0e => "Append",
        0x0f => "Prepend",
        0x10 => "Stat",
        0x11 => "SetQ",
        0x12 => "AddQ",
        0x13 => "ReplaceQ",
        0x14 => "DeleteQ",
        0x15 => "IncrementQ",
        0x16 => "DecrementQ",
        0x17 => "QuitQ",
        0x18 => "FlushQ",
        0x19 => "AppendQ",
        0x1a => "PrependQ",
        0x1c => "Touch",
        0x1d => "GAT",
        0x1e => "GATQ",
        0x23 => "GATK",
        0x24 => "GATKQ",
        _ => return format!("0x{op:02x}"),
    };
    name.to_string()
}

/// What the relay's clients sent, once it stopped growing (a client that exited may have
/// left its last bytes, a Quit, on their way through the relay).
fn settled(relay: &Relay) -> Vec<Vec<u8>> {
    let mut last = relay.sent();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = relay.sent();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// What a binary client sent, walked packet by packet.
struct BinarySent {
    /// Requests per opcode name.
    ops: BTreeMap<String, u64>,
    /// Packets memroute translates (and counts in its `binary_requests` stat): all but the
    /// storage requests whose value is over `item_size_max` (1 MiB), which it refuses itself.
    translated: u64,
}

/// Walks everything each connection sent as binary request packets: every connection
/// that sent anything starts with the request magic 0x80 (so memroute took it for a binary
/// connection) and sent nothing but whole packets, each with that magic.
fn binary_requests(sent: &[Vec<u8>]) -> BinarySent {
    let mut ops = BTreeMap::new();
    let (mut connections, mut translated) = (0, 0);
    for (conn, bytes) in sent.iter().enumerate() {
        let mut rest = &bytes[..];
        connections += !rest.is_empty() as usize;
        while !rest.is_empty() {
            let head = &rest[..rest.len().min(24)];
            assert!(
                rest[0] == 0x80,
                "connection {conn}: not a binary request packet at byte {}: {:02x?}",
                bytes.len() - rest.len(),
                head
            );
            assert!(
                rest.len() >= 24,
                "connection {conn}: a packet header cut short: {head:02x?}"
            );
            let body = u32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize;
            assert!(
                rest.len() >= 24 + body,
                "connection {conn}: a packet of {} body bytes has {}: {head:02x?}",
                body,
                rest.len() - 24
            );
            let (keylen, extlen) = (u16::from_be_bytes([rest[2], rest[3]]) as usize, rest[4]);
            let storage = matches!(rest[1], 0x01..=0x03 | 0x0e | 0x0f | 0x11..=0x13 | 0x19 | 0x1a);
            let value = body.saturating_sub(keylen + extlen as usize);
            translated += !(storage && value > 1 << 20) as u64;
            *ops.entry(opcode_name(rest[1])).or_default() += 1;
            rest = &rest[24 + body..];
        }
    }
    assert!(connections > 0, "the client sent nothing");
    println!("binary requests over {connections} connections ({translated} translated): {ops:?}");
    BinarySent { ops, translated }
}

/// After a binary client ran through `relay` in front of memroute (whose `binary_requests`
/// stat was `before`): every byte it sent was binary packets, and the stat grew by exactly
/// the packets memroute translated. Returns the opcodes sent.
fn check_binary_run(
    relay: &Relay,
    stats: &mut common::Client,
    before: u64,
) -> BTreeMap<String, u64> {
    let sent = binary_requests(&settled(relay));
    // The last packets (a Quit at exit) may still be on their way through memroute.
    let deadline = Instant::now() + Duration::from_secs(5);
    let grown = loop {
        let grown = stats.stat_num("binary_requests") - before;
        if grown == sent.translated || Instant::now() > deadline {
            break grown;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        grown, sent.translated,
        "binary_requests grew by {grown} for the {} packets memroute translated",
        sent.translated
    );
    sent.ops
}

/// Asserts the client sent at least `at_least` requests of each opcode named.
fn assert_sent(ops: &BTreeMap<String, u64>, at_least: &[(&str, u64)]) {
    for (op, n) in at_least {
        let got = ops.get(*op).copied().unwrap_or(0);
        assert!(got >= *n, "only {got} {op} requests (want {n}+): {ops:?}");
    }
}

/// A binary-protocol driver through a logging relay in front of memroute, with `extra`
/// arguments (the driver also reads the data set from the backends directly); returns the
/// opcodes it sent, every byte of it checked to be binary request packets, each counted in
/// memroute's `binary_requests` (see [`check_binary_run`]).
fn binary_driver_through_memroute(name: &str, extra: &[&str]) -> BTreeMap<String, u64> {
    let cluster = Cluster::start();
    let mut stats = common::Client::connect(cluster.proxy.port);
    let before = stats.stat_num("binary_requests");
    let relay = Relay::start(cluster.proxy.port);
    let backends = cluster.backends_flag();
    let mut args = vec![backends.as_str()];
    args.extend(extra);
    run_driver_with(name, &args, &format!("127.0.0.1:{}", relay.port)).assert_success();
    check_binary_run(&relay, &mut stats, before)
}

/// pylibmc with `binary=True`: the data set (2,000 keys, values up to 600 KB) with
/// set_multi and get_multi (GetKQ + Noop), cas, incr/decr, add/replace, append/prepend,
/// touch, the noreply behaviour as quiet opcodes, stats; then the data set read from the
/// backends directly.
#[test]
fn pylibmc_binary_protocol_through_memroute() {
    let ops = binary_driver_through_memroute("pylibmc-binary", &[]);
    // libmemcached's set_multi is a Set per key; its noreply behaviour the quiet opcodes.
    assert_sent(
        &ops,
        &[
            ("Set", 2000),
            ("SetQ", 50),
            ("GetKQ", 4000),
            ("GetK", 10),
            ("Noop", 3),
            ("Add", 2),
            ("AddQ", 1),
            ("Replace", 2),
            ("ReplaceQ", 1),
            ("Append", 2),
            ("AppendQ", 1),
            ("Prepend", 2),
            ("PrependQ", 1),
            ("Increment", 3),
            ("IncrementQ", 1),
            ("Decrement", 3),
            ("DecrementQ", 1),
            ("Delete", 2),
            ("DeleteQ", 3),
            ("Touch", 3),
            ("Stat", 1),
        ],
    );
}

/// PHP's Memcached with `OPT_BINARY_PROTOCOL`: the same checks as its text driver, with the
/// binary protocol's answers (a refused add is "exists", a refused replace "not found").
#[test]
fn php_memcached_binary_protocol_through_memroute() {
    let ops = binary_driver_through_memroute("php-binary", &[]);
    assert_sent(
        &ops,
        &[
            ("Set", 2000),
            ("SetQ", 50),
            ("GetKQ", 4000),
            ("Noop", 3),
            ("Add", 2),
            ("AddQ", 1),
            ("Replace", 2),
            ("ReplaceQ", 1),
            ("Append", 2),
            ("AppendQ", 1),
            ("Prepend", 2),
            ("PrependQ", 1),
            ("Increment", 3),
            ("IncrementQ", 1),
            ("Decrement", 3),
            ("DecrementQ", 1),
            ("Delete", 2),
            ("DeleteQ", 3),
            ("Touch", 3),
            ("Version", 1),
            ("Stat", 1),
        ],
    );
}

/// Dalli 3.0, which speaks only the binary protocol: the data set written with quiet sets
/// (`multi`: SetQ + Noop) and read with get_multi (GetKQ + Noop), cas tokens, incr/decr
/// with initial values, touch and gat, quiet add/replace/delete, keys only the binary
/// protocol can carry (a space, CR LF, a tab, DEL, UTF-8), stats and version.
#[test]
fn dalli_binary_protocol_through_memroute() {
    let ops = binary_driver_through_memroute("dalli", &[]);
    assert_sent(
        &ops,
        &[
            ("Set", 20),
            ("SetQ", 2050),
            ("AddQ", 2),
            ("ReplaceQ", 2),
            ("DeleteQ", 3),
            ("GetKQ", 4000),
            ("Noop", 3),
            ("Get", 20),
            ("Add", 2),
            ("Replace", 2),
            ("Increment", 5),
            ("Decrement", 3),
            ("Delete", 3),
            ("Touch", 3),
            ("GAT", 3),
            ("Version", 1),
            ("Stat", 2),
        ],
    );
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
    let run = run_driver("meta-memcache", &format!("127.0.0.1:{}", relay.port));
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
    // Room for nine data sets of about 10 MB each without evictions.
    let memcached = Memcached::start_with(&["-m", "512"]);
    let address = format!("127.0.0.1:{}", memcached.port);
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = DRIVERS
            .iter()
            .map(|d| {
                let address = &address;
                s.spawn(move || run_driver(d.name, address))
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

/// libmemcached's protocol conformance suite, binary tests only (`-b`: noop, quit(q),
/// set(q), flush(q), add(q), replace(q), delete(q), get(q), getk(q), incr(q), decr(q),
/// version, append(q), prepend(q), stat), through a logging relay that proves it sent only
/// binary request packets, each counted in memroute's `binary_requests`. It flushes everything, so it gets its own memroute and backends.
#[test]
fn libmemcached_memccapable_binary_suite_passes_through_memroute() {
    require(MEMCCAPABLE, "libmemcached-tools");
    let cluster = Cluster::start();
    let mut stats = common::Client::connect(cluster.proxy.port);
    let before = stats.stat_num("binary_requests");
    let relay = Relay::start(cluster.proxy.port);
    let port = relay.port.to_string();
    let r = run(
        MEMCCAPABLE,
        &["-h", "127.0.0.1", "-p", &port, "-b", "-v", "-t", "5"],
    );
    r.assert_success();
    assert!(
        r.stdout.contains("All tests passed"),
        "memccapable -b did not report \"All tests passed\":\n{}",
        r.output()
    );
    let ops = check_binary_run(&relay, &mut stats, before);
    assert_sent(
        &ops,
        &[
            ("Noop", 1),
            ("Quit", 1),
            ("QuitQ", 1),
            ("SetQ", 1),
            ("Flush", 1),
            ("FlushQ", 1),
            ("AddQ", 1),
            ("ReplaceQ", 1),
            ("DeleteQ", 1),
            ("GetQ", 1),
            ("GetKQ", 1),
            ("IncrementQ", 1),
            ("DecrementQ", 1),
            ("Version", 1),
            ("AppendQ", 1),
            ("PrependQ", 1),
            ("Stat", 1),
        ],
    );
}
