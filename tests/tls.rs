//! TLS, against real memcached and real TLS clients: a TLS listener (pool and route) beside a
//! plaintext one, driven by a rustls client byte for byte, `openssl s_client` and pymemcache
//! over Python's ssl; mutual TLS with allowed identities (DNS and URI SANs) and the clients
//! it refuses; memroute as a TLS client of `memcached -Z` (server_tls_ca, server_tls_name,
//! wrong host, expired, untrusted, client certificates); certificate reload on SIGHUP under
//! checked traffic (and bad certificates rejecting the reload); stalled and plaintext
//! handshakes; the admin listener over HTTPS; TLS settings checked at start.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::admin::{backend_num, generation, metric, parse_metrics, scrape, wait_generation};
use common::config::{config_toml, md5_pool_toml, named, replace_file};
use common::tls::{
    attempt, curl, listener_keys, memcached_tls, path_key, s_client, Issued, Pki, TlsClient,
    CLIENT_DNS, CLIENT_URI,
};
use common::{
    assert_bytes, assert_rss, free_port, mix, num_stat, pattern, poll, set_request_bytes, text,
    value_item_bytes, value_len, wait_for_port_only, Client, Memcached, Proxy, RssPeak,
    VERSION_REPLY, WAIT,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// memroute's `stats`, asked on a plaintext listener.
fn stats(plain: u16) -> HashMap<String, String> {
    Client::connect(plain).stats_map("")
}

/// One numeric stat of memroute's `stats`, asked on a plaintext listener.
fn stat(plain: u16, name: &str) -> u64 {
    num_stat(&stats(plain), name)
}

/// Polls until stat `name` reaches at least `at_least`; returns it.
fn wait_stat(plain: u16, name: &str, at_least: u64) -> u64 {
    poll(&format!("stat {name} >= {at_least}"), WAIT, || {
        match stat(plain, name) {
            v if v >= at_least => Ok(v),
            v => Err(format!("{name} = {v}")),
        }
    })
}

/// Polls until a TLS client (with `config`) completes a handshake on `port`.
fn wait_tls(port: u16, config: Arc<rustls::ClientConfig>) {
    poll(&format!("a TLS handshake on {port}"), WAIT, || {
        TlsClient::try_connect(port, config.clone(), "127.0.0.1")
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

/// memroute's log so far.
fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value tests/clients/tls_client.py writes for key `<prefix>:<i>`.
fn py_value(prefix: &str, i: usize) -> Vec<u8> {
    let n = if i % 50 == 3 {
        100_000 + i
    } else {
        (i * 37) % 400
    };
    let mut v = format!("{prefix}-{i}-").into_bytes();
    v.extend((0..n).map(|j| ((i * 31 + j * 7) % 256) as u8));
    v
}

/// The items of a retrieval reply: (key, flags, data).
fn parse_values(reply: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = reply;
    loop {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("no line end in {:?}", text(rest)));
        let line = &rest[..end];
        if line == b"END" {
            assert_eq!(end + 2, rest.len(), "bytes after END");
            return out;
        }
        assert!(line.starts_with(b"VALUE "), "line {:?}", text(line));
        let len = value_len(line).expect("VALUE length");
        let words: Vec<String> = text(line).split(' ').map(str::to_string).collect();
        let data = rest[end + 2..end + 2 + len].to_vec();
        assert_eq!(&rest[end + 2 + len..end + 4 + len], b"\r\n");
        out.push((words[1].clone(), words[2].parse().unwrap(), data));
        rest = &rest[end + 4 + len..];
    }
}

/// Multi-gets `keys` on a plaintext listener, 50 per line: key → data.
fn plain_get_many(port: u16, keys: &[String]) -> HashMap<String, Vec<u8>> {
    let mut c = Client::connect(port);
    let mut out = HashMap::new();
    for chunk in keys.chunks(50) {
        c.send(format!("get {}\r\n", chunk.join(" ")));
        for (k, _, v) in parse_values(&c.read_retrieval()) {
            out.insert(k, v);
        }
    }
    out
}

/// Reads from a raw socket until the peer closes it or `within` passes: (bytes, whether it
/// closed, when).
fn read_raw_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = within.saturating_sub(start.elapsed());
        if left.is_zero() {
            return (got, false, start.elapsed());
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return (got, true, start.elapsed()),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionReset
                    || e.kind() == std::io::ErrorKind::ConnectionAborted =>
            {
                return (got, true, start.elapsed())
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (got, false, start.elapsed())
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Whether `bytes` could be a memcached reply (anything but nothing or TLS alert records).
fn looks_like_memcached(bytes: &[u8]) -> bool {
    let t = text(bytes);
    ["VALUE", "END", "ERROR", "STORED", "VERSION"]
        .iter()
        .any(|w| t.contains(w))
}

/// A value read back, for messages: a miss, or its length and first bytes.
fn describe_value(got: &Option<Vec<u8>>) -> String {
    match got {
        None => "a miss".to_string(),
        Some(v) => format!("{} bytes {:?}", v.len(), text(&v[..v.len().min(40)])),
    }
}

/// The certificate each new connection got, with when it connected.
type Seen = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// Failures of test threads, each with the thread's name.
type Errors = Arc<Mutex<Vec<String>>>;

/// Runs `body` in a thread named `who`; a panic in it is recorded in `errors` (so that the
/// test can stop at once and say why) and the thread returns None.
fn spawn_checked<T: Send + 'static>(
    who: String,
    errors: Errors,
    body: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Option<T>> {
    std::thread::spawn(
        move || match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(v) => Some(v),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{who}: {why}"));
                None
            }
        },
    )
}

/// The reload counter `memroute_reloads_total{result}`.
fn reloads(admin: u16, result: &str) -> f64 {
    metric(
        &scrape(admin),
        "memroute_reloads_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

/// `memroute_tls_cert_expiry_timestamp_seconds{listener}`.
fn expiry_gauge(admin: u16, listener: &str) -> Option<f64> {
    metric(
        &scrape(admin),
        "memroute_tls_cert_expiry_timestamp_seconds",
        &[("listener", listener)],
    )
}

/// Runs tests/clients/tls_client.py with the Debian python.
fn run_python(args: &[&str]) -> common::tls::Run {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/tls_client.py");
    let mut all = vec!["-B", script.to_str().unwrap()];
    all.extend_from_slice(args);
    common::tls::run("/usr/bin/python3", &all, b"", Duration::from_secs(30))
}

// ---------------------------------------------------------------------------------------
// a. A TLS listener beside a plaintext one, driven by three TLS stacks
// ---------------------------------------------------------------------------------------

/// One memroute with three listeners over the same two memcached and the same ring: pool
/// `secure` (TLS), pool `plain` (plaintext) and route `front` (TLS, its own certificate).
/// rustls (byte for byte), openssl s_client and pymemcache over Python's ssl all work over
/// TLS, and what they write is read back in plaintext (and the other way round); clients
/// that do not trust the CA fail; the handshakes and the certificates' expiry are exported.
#[test]
fn a_tls_listener_serves_rustls_openssl_and_pymemcache_beside_a_plaintext_one() {
    let pki = Pki::new();
    let route_cert = pki.ca.server_cert(&pki.files, "route", 104, (2093, 3, 1));
    let mcs = [Memcached::start(), Memcached::start()];
    let servers = named(&mcs);
    let (secure, plain, front, admin) = (free_port(), free_port(), free_port(), free_port());
    let top = format!("threads = 2\nadmin = \"127.0.0.1:{admin}\"");
    let backing_list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let route = format!(
        "[pools.backing]\nservers = [{}]\nhash = \"md5\"\ndistribution = \"ketama\"\n\n\
         [routes.front]\ntype = \"prefix\"\nlisten = \"127.0.0.1:{front}\"\n\
         prefixes = {{ \"r:\" = \"backing\" }}\ndefault = \"backing\"\n{}",
        backing_list.join(", "),
        listener_keys(&route_cert)
    );
    let pools = [
        md5_pool_toml("secure", secure, &servers, &listener_keys(&pki.server)),
        md5_pool_toml("plain", plain, &servers, ""),
        route,
    ];
    let path = pki.files.write("memroute.toml", &config_toml(&top, &pools));
    let _proxy = Proxy::start_config(&path, plain, &[]);
    wait_for_port_only(admin);
    let trusting = pki.client(None);
    wait_tls(secure, trusting.clone());
    wait_tls(front, trusting.clone());
    let base = stats(plain);
    let handshakes0 = num_stat(&base, "tls_handshakes");
    let failures0 = num_stat(&base, "tls_handshake_failures");

    // rustls: the certificate served, then requests and replies byte for byte.
    let mut c = TlsClient::connect(secure, trusting.clone());
    assert_eq!(c.peer_cert(), pki.server.der, "the certificate served");
    assert_eq!(c.call("version\r\n"), VERSION_REPLY);
    // Every byte value, \r\n included, and a value of many TLS records (16 KiB each).
    let bin: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let big = pattern(7, 700_000);
    for (key, flags, value) in [("tls:bin", 7u32, &bin), ("tls:big", 0, &big)] {
        c.send(set_request_bytes(key, flags, value));
        assert_eq!(text(&c.read_line()), "STORED\r\n", "set {key} over TLS");
        c.send(format!("get {key}\r\n"));
        let mut expected = value_item_bytes(key, flags, value);
        expected.extend_from_slice(b"END\r\n");
        assert_bytes(
            &c.read_retrieval(),
            &expected,
            &format!("get {key} over TLS"),
        );
    }
    // 100 pipelined sets in one write, then one multi-get of them all.
    let kv: Vec<(String, Vec<u8>)> = (0..100u64)
        .map(|i| (format!("tls:pipe:{i}"), pattern(i, (mix(i) % 500) as usize)))
        .collect();
    let mut batch = Vec::new();
    for (k, v) in &kv {
        batch.extend(set_request_bytes(k, 0, v));
    }
    c.send(&batch);
    assert_eq!(
        text(&c.read_n(100 * "STORED\r\n".len())),
        "STORED\r\n".repeat(100)
    );
    let keys: Vec<String> = kv.iter().map(|(k, _)| k.clone()).collect();
    c.send(format!("get {}\r\n", keys.join(" ")));
    let mut expected = Vec::new();
    for (k, v) in &kv {
        expected.extend(value_item_bytes(k, 0, v));
    }
    expected.extend_from_slice(b"END\r\n");
    assert_bytes(&c.read_retrieval(), &expected, "multi-get over TLS");

    // The plaintext listener reads what was written over TLS, byte for byte.
    let mut p = Client::connect(plain);
    p.send("get tls:bin\r\n");
    let mut expected = value_item_bytes("tls:bin", 7, &bin);
    expected.extend_from_slice(b"END\r\n");
    assert_bytes(
        &p.read_retrieval(),
        &expected,
        "plaintext get of a TLS write",
    );
    assert_eq!(p.get("tls:big").as_deref(), Some(&big[..]));
    let got = plain_get_many(plain, &keys);
    for (k, v) in &kv {
        assert_eq!(got.get(k), Some(v), "plaintext read of {k}");
    }
    // And the other way round.
    p.set("plain:written", b"over plaintext");
    assert_eq!(
        c.get("plain:written").as_deref(),
        Some(&b"over plaintext"[..])
    );

    // The route's TLS listener, with its own certificate, over the same ring.
    let mut r = TlsClient::connect(front, trusting.clone());
    assert_eq!(r.peer_cert(), route_cert.der, "the route's certificate");
    assert_eq!(r.get("tls:bin").as_deref(), Some(&bin[..]));
    r.set("r:via-route", b"routed");
    assert_eq!(p.get("r:via-route").as_deref(), Some(&b"routed"[..]));

    // openssl s_client: the CA verifies the certificate (IP SAN 127.0.0.1); `quit` ends it.
    let run = s_client(secure, &pki.ca.pem, b"version\r\nget tls:bin\r\nquit\r\n");
    assert!(
        run.stdout.contains(VERSION_REPLY.trim_end())
            && run.stdout.contains("VALUE tls:bin 7 3000"),
        "openssl s_client: {}",
        run.describe()
    );
    // A client that does not trust the CA: no handshake, nothing served.
    let run = s_client(secure, &pki.other_ca.pem, b"version\r\nquit\r\n");
    assert!(
        !run.exited(0) && !run.stdout.contains("VERSION"),
        "s_client trusting another CA: {}",
        run.describe()
    );

    // pymemcache over Python's ssl module: 200 keys, set / set_many / get / get_many.
    let prefix = format!("py{}", std::process::id());
    let addr = format!("127.0.0.1:{secure}");
    let run = run_python(&[&addr, pki.ca.pem.to_str().unwrap(), &prefix]);
    assert!(
        run.exited(0) && run.stdout.contains("ok 200"),
        "{}",
        run.describe()
    );
    let py_keys: Vec<String> = (0..200).map(|i| format!("{prefix}:{i}")).collect();
    let got = plain_get_many(plain, &py_keys);
    for (i, k) in py_keys.iter().enumerate() {
        assert!(
            got.get(k) == Some(&py_value(&prefix, i)),
            "pymemcache's {k} read in plaintext: {:?}",
            got.get(k).map(|v| text(&v[..v.len().min(60)]))
        );
    }
    // pymemcache trusting another CA: the TLS connection fails (exit 4).
    let run = run_python(&[&addr, pki.other_ca.pem.to_str().unwrap(), "never"]);
    assert!(
        run.exited(4),
        "pymemcache trusting another CA: {}",
        run.describe()
    );

    // Counted: rustls (2), s_client, pymemcache handshakes; the two refused by clients.
    let after = poll("TLS handshakes to be counted", WAIT, || {
        let s = stats(plain);
        let (h, f) = (
            num_stat(&s, "tls_handshakes") - handshakes0,
            num_stat(&s, "tls_handshake_failures") - failures0,
        );
        if h >= 4 && f >= 2 {
            Ok((h, f))
        } else {
            Err(format!("handshakes +{h}, failures +{f}"))
        }
    });
    eprintln!("handshakes, failures: {after:?}");
    let m = scrape(admin);
    let total = metric(&m, "memroute_tls_handshakes_total", &[]).expect("handshakes metric");
    assert!(total >= (handshakes0 + after.0) as f64, "{total}");
    assert!(
        metric(&m, "memroute_tls_handshake_failures_total", &[]).expect("failures metric")
            >= (failures0 + after.1) as f64
    );
    assert_eq!(
        expiry_gauge(admin, "secure"),
        Some(pki.server.not_after as f64)
    );
    assert_eq!(
        expiry_gauge(admin, "front"),
        Some(route_cert.not_after as f64)
    );
    assert_eq!(
        expiry_gauge(admin, "plain"),
        None,
        "a plaintext listener has no certificate"
    );
}

// ---------------------------------------------------------------------------------------
// b. Mutual TLS
// ---------------------------------------------------------------------------------------

/// Connects with `identity`, sends a set and a version, and returns what came back before
/// the connection ended (a handshake the client saw fail, a close, an alert).
fn refused_reply(port: u16, config: Arc<rustls::ClientConfig>, key: &str) -> Vec<u8> {
    let mut c = match TlsClient::try_connect(port, config, "127.0.0.1") {
        Ok(c) => c,
        Err(_) => return Vec::new(),
    };
    c.set_read_timeout(Duration::from_secs(5));
    if c.try_send(format!("set {key} 0 0 1\r\nx\r\nversion\r\n").as_bytes())
        .is_err()
    {
        return Vec::new();
    }
    let (bytes, how) = c.read_until_closed();
    if let Some(e) = &how {
        assert!(
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut,
            "the refused connection stayed open (read timed out after {:?})",
            text(&bytes)
        );
    }
    bytes
}

/// A listener with `tls_client_ca` and `tls_client_names`: no certificate and a certificate
/// from another CA fail the handshake; the DNS and the URI identity listed work; a verified
/// certificate whose identities are not listed is closed without a request served and
/// counted in `tls_clients_refused`. A listener with only `tls_client_ca` takes any client
/// of the CA.
#[test]
fn b_mutual_tls_verifies_clients_and_allows_only_the_listed_identities() {
    let pki = Pki::new();
    let mc = Memcached::start();
    let servers = vec![mc.server(1)];
    let (mtls, any, plain, admin) = (free_port(), free_port(), free_port(), free_port());
    let ca = path_key("tls_client_ca", &pki.ca.pem);
    let names = format!("tls_client_names = [\"{CLIENT_DNS}\", \"{CLIENT_URI}\"]\n");
    let pools = [
        md5_pool_toml(
            "mtls",
            mtls,
            &servers,
            &format!("{}{ca}{names}", listener_keys(&pki.server)),
        ),
        md5_pool_toml(
            "anyclient",
            any,
            &servers,
            &format!("{}{ca}", listener_keys(&pki.server)),
        ),
        md5_pool_toml("plain", plain, &servers, ""),
    ];
    let top = format!("threads = 2\nadmin = \"127.0.0.1:{admin}\"");
    let path = pki.files.write("memroute.toml", &config_toml(&top, &pools));
    let _proxy = Proxy::start_config(&path, plain, &[]);
    wait_for_port_only(admin);
    wait_tls(mtls, pki.client(Some(&pki.client_dns)));
    wait_tls(any, pki.client(Some(&pki.client_dns)));
    let failures0 = stat(plain, "tls_handshake_failures");
    let refused0 = stat(plain, "tls_clients_refused");

    // No client certificate; a certificate (with an allowed name) from another CA.
    for (what, identity) in [
        ("no client certificate", None),
        ("a certificate from another CA", Some(&pki.client_untrusted)),
    ] {
        for port in [mtls, any] {
            let got = attempt(port, pki.client(identity));
            assert!(got.is_err(), "{what} on {port}: served {got:?}");
        }
    }
    let failures = wait_stat(plain, "tls_handshake_failures", failures0 + 4) - failures0;
    assert_eq!(
        stat(plain, "tls_clients_refused"),
        refused0,
        "failed handshakes counted as refused identities"
    );

    // The allowed identities: DNS SAN, URI SAN (the certificate has no DNS name at all).
    for (what, identity) in [("DNS", &pki.client_dns), ("URI", &pki.client_uri)] {
        let mut c = TlsClient::connect(mtls, pki.client(Some(identity)));
        let key = format!("mtls:{what}");
        c.set(&key, what.as_bytes());
        assert_eq!(
            c.get(&key).as_deref(),
            Some(what.as_bytes()),
            "{what} identity"
        );
        assert_eq!(c.call("version\r\n"), VERSION_REPLY);
    }

    // A certificate from the right CA whose identities are not listed: not served.
    let got = refused_reply(mtls, pki.client(Some(&pki.client_unlisted)), "mtls:refused");
    assert!(
        !looks_like_memcached(&got),
        "an unlisted identity was answered: {:?}",
        text(&got)
    );
    assert_eq!(
        Client::connect(plain).get("mtls:refused"),
        None,
        "an unlisted identity's set was served"
    );
    wait_stat(plain, "tls_clients_refused", refused0 + 1);
    assert_eq!(stat(plain, "tls_clients_refused"), refused0 + 1);
    // Without tls_client_names, the same certificate is fine.
    let mut c = TlsClient::connect(any, pki.client(Some(&pki.client_unlisted)));
    assert_eq!(c.call("version\r\n"), VERSION_REPLY);

    let m = scrape(admin);
    assert_eq!(
        metric(&m, "memroute_tls_clients_refused_total", &[]),
        Some((refused0 + 1) as f64)
    );
    assert!(
        metric(&m, "memroute_tls_handshake_failures_total", &[]).unwrap_or(0.0)
            >= (failures0 + failures) as f64
    );
}

// ---------------------------------------------------------------------------------------
// c. TLS to the backends
// ---------------------------------------------------------------------------------------

/// memroute as a TLS client of real memcached (`-Z`): a backend whose certificate verifies
/// (by its IP, or by server_tls_name) serves; a wrong host name, an expired certificate, one
/// from an untrusted CA, server_tls_name naming another host, or plaintext to a TLS backend
/// fail like a dead backend (SERVER_ERROR for a set, a miss for a get) and nothing reaches
/// the backend; a backend requiring client certificates serves memroute with
/// server_tls_cert/server_tls_key and refuses it without.
#[test]
fn c_backends_over_tls_verify_the_server_and_present_client_certificates() {
    let pki = Pki::new();
    let ca_opts = vec![
        format!("ssl_ca_cert={}", pki.ca.pem.display()),
        "ssl_verify_mode=2".to_string(),
    ];
    let good = memcached_tls(&pki.server, &[]);
    let wrong = memcached_tls(&pki.wrong_host, &[]);
    let expired = memcached_tls(&pki.expired, &[]);
    let untrusted = memcached_tls(&pki.untrusted, &[]);
    let mutual = memcached_tls(&pki.server, &ca_opts);

    // The fixture: memcached speaks TLS only.
    let mut raw = TcpStream::connect(("127.0.0.1", good.port)).unwrap();
    raw.write_all(b"version\r\n").unwrap();
    let (got, _, _) = read_raw_until_closed(&mut raw, Duration::from_secs(3));
    assert!(
        !text(&got).contains("VERSION"),
        "memcached -Z answered plaintext: {:?}",
        text(&got)
    );
    let mut direct = TlsClient::connect(good.port, pki.client(None));
    assert_eq!(direct.peer_cert(), pki.server.der);
    assert!(direct.call("version\r\n").starts_with("VERSION 1.6"));
    let run = s_client(good.port, &pki.ca.pem, b"version\r\nquit\r\n");
    assert!(run.stdout.contains("VERSION 1.6"), "{}", run.describe());
    // … and requires a client certificate of the CA when told to.
    assert!(attempt(mutual.port, pki.client(None)).is_err());
    assert!(attempt(mutual.port, pki.client(Some(&pki.client_untrusted))).is_err());
    assert!(attempt(mutual.port, pki.client(Some(&pki.client_dns)))
        .unwrap()
        .starts_with("VERSION 1.6"));

    let ca = path_key("server_tls_ca", &pki.ca.pem);
    let tls = format!("server_tls = true\n{ca}");
    let client_cert = format!(
        "{}{}",
        path_key("server_tls_cert", &pki.client_dns.cert),
        path_key("server_tls_key", &pki.client_dns.key)
    );
    // (pool, backend, extra pool keys, works)
    let cases: Vec<(&str, &Memcached, String, bool)> = vec![
        ("by_ip", &good, tls.clone(), true),
        (
            "by_name",
            &good,
            format!("{tls}server_tls_name = \"localhost\"\n"),
            true,
        ),
        (
            "mutual",
            &mutual,
            format!("{tls}{client_cert}health_check_interval = \"100ms\"\n"),
            true,
        ),
        (
            "other_name",
            &good,
            format!("{tls}server_tls_name = \"other.example\"\n"),
            false,
        ),
        ("wrong_host", &wrong, tls.clone(), false),
        ("expired", &expired, tls.clone(), false),
        ("untrusted", &untrusted, tls.clone(), false),
        ("no_client_cert", &mutual, tls.clone(), false),
        ("plaintext", &good, String::new(), false),
    ];
    let ports: Vec<u16> = cases.iter().map(|_| free_port()).collect();
    let timeouts = "timeout = \"3s\"\nconnect_timeout = \"3s\"\n";
    let pools: Vec<String> = cases
        .iter()
        .zip(&ports)
        .map(|((name, mc, keys, _), port)| {
            md5_pool_toml(name, *port, &[mc.server(1)], &format!("{timeouts}{keys}"))
        })
        .collect();
    let path = pki
        .files
        .write("memroute.toml", &config_toml("threads = 2", &pools));
    let proxy = Proxy::start_config(&path, ports[0], &[]);
    for port in &ports {
        wait_for_port_only(*port);
    }

    // Every pool, once after start and once more after a SIGHUP (which keeps each pool's
    // backends, and must keep each pool's own TLS settings for them: several pools here
    // reach the same memcached with different ones).
    let check_all = |round: &str| -> Vec<String> {
        let mut failures = Vec::new();
        for ((name, mc, _, works), port) in cases.iter().zip(&ports) {
            let mut c = Client::connect(*port);
            let key = format!("backend:{round}:{name}");
            let value = format!("stored through {name} ({round})");
            // A direct TLS client of the backend, where its certificate verifies.
            let verifiable = mc.port == good.port || mc.port == mutual.port;
            let mut direct =
                verifiable.then(|| TlsClient::connect(mc.port, pki.client(Some(&pki.client_dns))));
            if *works {
                let set = c.call(set_request_bytes(&key, 0, value.as_bytes()));
                let get = c.call(format!("get {key}\r\n"));
                if set != "STORED\r\n" {
                    failures.push(format!("{round}: {name}: set answered {set:?}"));
                    continue;
                }
                if get != common::value_reply(&key, &value) {
                    failures.push(format!("{round}: {name}: get answered {get:?}"));
                }
                // It is in that memcached, read there over TLS.
                let there = direct.as_mut().unwrap().get(&key);
                if there.as_deref() != Some(value.as_bytes()) {
                    failures.push(format!(
                        "{round}: {name}: the backend holds {}",
                        describe_value(&there)
                    ));
                }
            } else {
                for attempt in 0..2 {
                    let set = c.call(set_request_bytes(&key, 0, value.as_bytes()));
                    if !set.starts_with("SERVER_ERROR") {
                        failures.push(format!("{round}: {name}: set {attempt} answered {set:?}"));
                    }
                    let get = c.call(format!("get {key}\r\n"));
                    if get != "END\r\n" {
                        failures.push(format!("{round}: {name}: get {attempt} answered {get:?}"));
                    }
                }
                if let Some(direct) = direct.as_mut() {
                    if direct.get(&key).is_some() {
                        failures.push(format!("{round}: {name}: the value reached the backend"));
                    }
                }
            }
        }
        failures
    };
    let mut failures = check_all("start");
    // memroute keeps connecting to the backend that requires client certificates (a health
    // check every 100 ms, each on a new connection): every handshake must succeed. memcached
    // 1.6.18 with ssl_verify_mode=2 and no ssl_session_cache answers a resumed session with
    // an internal_error alert, so a client that resumes TLS sessions fails there.
    let mutual_port = ports[cases.iter().position(|c| c.0 == "mutual").unwrap()];
    let checks = poll("10 health checks of the mutual-TLS backend", WAIT, || {
        let b = Client::connect(ports[0]).stats_map("backends");
        let ok = backend_num(&b, "mutual", mutual.port, "health_checks_ok");
        let failed = backend_num(&b, "mutual", mutual.port, "health_checks_failed");
        match ok + failed {
            n if n >= 10 => Ok((ok, failed)),
            n => Err(format!("{n} checks")),
        }
    });
    if checks.1 > 0 {
        failures.push(format!(
            "mutual: {} of {} health checks failed (TLS session resumption?)",
            checks.1,
            checks.0 + checks.1
        ));
    }
    let mut c = Client::connect(mutual_port);
    for i in 0..20 {
        let set = c.call(set_request_bytes(&format!("mutual:{i}"), 0, b"again"));
        if set != "STORED\r\n" {
            failures.push(format!(
                "mutual: set {i} after the health checks answered {set:?}"
            ));
            break;
        }
    }
    let mut sc = Client::connect(ports[0]);
    let g = generation(&mut sc);
    proxy.signal("HUP");
    wait_generation(&mut sc, g);
    failures.extend(check_all("reloaded"));
    drop(proxy);
    assert!(failures.is_empty(), "backend TLS:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// d. Certificate reload under checked traffic
// ---------------------------------------------------------------------------------------

/// Serves a first certificate; under traffic (long-lived TLS connections doing set/get with
/// every value checked, and clients reconnecting all the time) the certificate and key files
/// are replaced by a second one and memroute gets SIGHUP: new connections get the second
/// certificate, the long-lived ones go on with their first without an error, the generation
/// goes up by one per accepted reload and the expiry gauge follows. Then a certificate that does not match the
/// key, and then garbage, are each rejected (counted, logged, generation unchanged) and the
/// second certificate stays served.
#[test]
fn d_certificates_reload_on_sighup_under_checked_traffic_and_bad_ones_are_rejected() {
    let pki = Pki::new();
    let first = pki.ca.server_cert(&pki.files, "first", 1001, (2090, 1, 1));
    let second = pki.ca.server_cert(&pki.files, "second", 1002, (2091, 6, 1));
    let third = pki.ca.server_cert(&pki.files, "third", 1003, (2092, 1, 1));
    assert_ne!(first.der, second.der);
    let cert_path = pki.files.write("served.pem", &first.cert_pem);
    let key_path = pki.files.write("served.key", &first.key_pem);
    let served = Issued {
        cert: cert_path.clone(),
        key: key_path.clone(),
        ..first.clone()
    };
    let mcs = [Memcached::start(), Memcached::start()];
    let servers = named(&mcs);
    // The plaintext pool (for stats) is over the same memcached, as a TLS listener beside a
    // plaintext one would be: a reload must leave both pools' rings and backends alone.
    let (secure, plain, admin) = (free_port(), free_port(), free_port());
    let top = format!("threads = 2\nadmin = \"127.0.0.1:{admin}\"");
    let pools = [
        md5_pool_toml("secure", secure, &servers, &listener_keys(&served)),
        md5_pool_toml("plain", plain, &servers, ""),
    ];
    let path = pki.files.write("memroute.toml", &config_toml(&top, &pools));
    let log = pki.path("memroute.log");
    let proxy = Proxy::start_config_logged(&path, plain, &[], &log);
    wait_for_port_only(admin);
    let config = pki.client(None);
    wait_tls(secure, config.clone());
    poll(
        "the first certificate's expiry",
        WAIT,
        || match expiry_gauge(admin, "secure") {
            Some(v) if v == first.not_after as f64 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    let stop = Arc::new(AtomicBool::new(false));
    let errors: Errors = Arc::default();
    // Long-lived connections: set and get their own keys, checking every value.
    let long_lived: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut threads = Vec::new();
    for (t, ops) in long_lived.iter().enumerate() {
        let (stop, ops, config) = (stop.clone(), ops.clone(), config.clone());
        let who = format!("long-lived connection {t}");
        threads.push(spawn_checked(who, errors.clone(), move || {
            let mut c = TlsClient::connect(secure, config);
            let cert = c.peer_cert();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("reload:{t}:{}", i % 64);
                let value = pattern((t as u64) << 32 | i, 1 + (mix(i) % 4000) as usize);
                c.set(&key, &value);
                let got = c.get(&key);
                assert!(
                    got.as_deref() == Some(&value[..]),
                    "op {i}: {key} ({} bytes) read back as {}",
                    value.len(),
                    describe_value(&got)
                );
                i += 1;
                ops.store(i, Ordering::Relaxed);
            }
            cert
        }));
    }
    // Reconnecting clients: a new connection per set/get; which certificate each got.
    let seen: Seen = Arc::default();
    let mut churners = Vec::new();
    for t in 0..2u64 {
        let (stop, seen, config) = (stop.clone(), seen.clone(), config.clone());
        let who = format!("reconnecting client {t}");
        churners.push(spawn_checked(who, errors.clone(), move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let connected = Instant::now();
                let mut c = TlsClient::connect(secure, config.clone());
                let key = format!("churn:{t}:{}", i % 16);
                let value = pattern(t << 40 | i, 1 + (mix(i) % 2000) as usize);
                c.set(&key, &value);
                let got = c.get(&key);
                assert!(
                    got.as_deref() == Some(&value[..]),
                    "op {i}: {key} ({} bytes) read back as {}",
                    value.len(),
                    describe_value(&got)
                );
                seen.lock().unwrap().push((connected, c.peer_cert()));
                i += 1;
            }
        }));
    }
    let no_errors = || {
        let e = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(e.is_empty(), "traffic failed:\n{}", e.join("\n"));
    };
    let progress = |what: &str, at_least: u64| -> Vec<u64> {
        let marks: Vec<u64> = long_lived
            .iter()
            .map(|o| o.load(Ordering::Relaxed))
            .collect();
        poll(&format!("long-lived traffic {what}"), WAIT, || {
            no_errors();
            let now: Vec<u64> = long_lived
                .iter()
                .map(|o| o.load(Ordering::Relaxed))
                .collect();
            if now.iter().zip(&marks).all(|(n, m)| *n >= m + at_least) {
                Ok(now)
            } else {
                Err(format!("ops {now:?} from {marks:?}"))
            }
        })
    };
    let churn_with = |der: &[u8], at_least: usize| {
        poll("reconnecting clients to get the certificate", WAIT, || {
            no_errors();
            let n = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, c)| c == der)
                .count();
            if n >= at_least {
                Ok(n)
            } else {
                Err(format!("{n} connections"))
            }
        })
    };
    progress("before the reload", 100);
    churn_with(&first.der, 5);

    // The second certificate and key, then SIGHUP.
    let mut sc = Client::connect(plain);
    let g0 = generation(&mut sc);
    let ok0 = reloads(admin, "ok");
    replace_file(&key_path, &second.key_pem);
    replace_file(&cert_path, &second.cert_pem);
    proxy.signal("HUP");
    wait_generation(&mut sc, g0);
    let switched = poll(
        "new connections to get the second certificate",
        WAIT,
        || {
            let c = TlsClient::connect(secure, config.clone());
            if c.peer_cert() == second.der {
                Ok(Instant::now())
            } else {
                Err("the first certificate".into())
            }
        },
    );
    progress("after the reload", 100);
    churn_with(&second.der, 5);
    assert_eq!(expiry_gauge(admin, "secure"), Some(second.not_after as f64));
    // The generation went up by one per accepted reload: the SIGHUP's, and any a watch of
    // the files made while they were being replaced (one of them may have been rejected).
    let (g1, ok1) = (generation(&mut sc), reloads(admin, "ok"));
    assert!(ok1 > ok0, "no accepted reload counted");
    assert_eq!(
        g1 - g0,
        (ok1 - ok0) as u64,
        "generation {g0} -> {g1} over {} accepted reloads; log:\n{}",
        ok1 - ok0,
        log_text(&log)
    );

    // A certificate that does not match the key, then garbage where the certificate was:
    // each rejected, the second certificate still served.
    for (what, contents) in [
        (
            "a certificate not matching the key",
            third.cert_pem.as_str(),
        ),
        (
            "garbage",
            "garbage\n-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        ),
    ] {
        let errors = reloads(admin, "error");
        let rejections = log_text(&log).matches("rejected").count();
        replace_file(&cert_path, contents);
        proxy.signal("HUP");
        poll(
            &format!("the reload with {what} to be rejected"),
            WAIT,
            || match reloads(admin, "error") {
                v if v > errors => Ok(v),
                v => Err(format!("reloads error {v}")),
            },
        );
        poll(
            &format!("the rejection of {what} to be logged"),
            WAIT,
            || match log_text(&log).matches("rejected").count() {
                n if n > rejections => Ok(()),
                _ => Err(log_text(&log)),
            },
        );
        let c = TlsClient::connect(secure, config.clone());
        assert_eq!(c.peer_cert(), second.der, "served after {what}");
        assert_eq!(expiry_gauge(admin, "secure"), Some(second.not_after as f64));
    }
    assert_eq!(
        generation(&mut sc),
        g1,
        "a rejected reload changed the generation"
    );
    assert_eq!(
        reloads(admin, "ok"),
        ok1,
        "a rejected reload counted as accepted"
    );
    progress("after the rejected reloads", 100);

    stop.store(true, Ordering::Relaxed);
    let certs: Vec<Option<Vec<u8>>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for t in churners {
        t.join().unwrap();
    }
    no_errors();
    for (t, cert) in certs.into_iter().enumerate() {
        assert_eq!(
            cert.as_deref(),
            Some(&first.der[..]),
            "long-lived connection {t}'s certificate"
        );
    }
    let seen = seen.lock().unwrap();
    let others = seen
        .iter()
        .filter(|(_, c)| *c != first.der && *c != second.der)
        .count();
    assert_eq!(others, 0, "a connection got neither certificate");
    // Every worker thread serves the new certificate soon after the first one does.
    let late_first = seen
        .iter()
        .filter(|(at, c)| *at > switched + Duration::from_millis(500) && *c == first.der)
        .count();
    assert_eq!(
        late_first, 0,
        "connections made well after the reload got the first certificate"
    );
}

// ---------------------------------------------------------------------------------------
// e. Stalled handshakes and plaintext on a TLS port
// ---------------------------------------------------------------------------------------

/// With tls_handshake_timeout = "1s": 200 connections that send the first 5 bytes of a
/// ClientHello (a record header announcing 512 bytes) and stall are all closed after about a
/// second, counted as timeouts, and cost memroute little memory; the connections count goes
/// back. On a TLS listener with the default (10 s) timeout, a plaintext `get foo` is closed
/// within a second without a memcached reply (a failed handshake, not a timeout).
#[test]
fn e_stalled_handshakes_time_out_and_plaintext_on_a_tls_port_is_closed() {
    let pki = Pki::new();
    let mc = Memcached::start();
    let servers = vec![mc.server(1)];
    let (secure, patient, plain) = (free_port(), free_port(), free_port());
    let pools = [
        md5_pool_toml(
            "secure",
            secure,
            &servers,
            &format!(
                "{}tls_handshake_timeout = \"1s\"\n",
                listener_keys(&pki.server)
            ),
        ),
        md5_pool_toml("patient", patient, &servers, &listener_keys(&pki.server)),
        md5_pool_toml("plain", plain, &servers, ""),
    ];
    let path = pki
        .files
        .write("memroute.toml", &config_toml("threads = 2", &pools));
    let proxy = Proxy::start_config(&path, plain, &[]);
    let config = pki.client(None);
    wait_tls(secure, config.clone());
    wait_tls(patient, config.clone());
    // Warm up: completed handshakes and requests, so the baseline includes TLS's working set.
    for i in 0..20 {
        let mut c = TlsClient::connect(secure, config.clone());
        c.set(&format!("warm:{i}"), b"up");
    }
    std::thread::sleep(Duration::from_millis(200));
    let base = stats(plain);
    let timeouts0 = num_stat(&base, "tls_handshake_timeouts");
    let connections0 = num_stat(&base, "curr_connections");
    let baseline = proxy.rss_kib();
    let peak = RssPeak::start(proxy.pid(), Duration::from_millis(20));

    const N: usize = 200;
    let header = [0x16u8, 0x03, 0x01, 0x02, 0x00];
    let mut socks = Vec::with_capacity(N);
    for _ in 0..N {
        let mut s = TcpStream::connect(("127.0.0.1", secure)).expect("connect");
        s.write_all(&header).expect("write");
        socks.push((s, Instant::now()));
    }
    let all_open = Instant::now();
    let mut closed_after = Vec::with_capacity(N);
    for (i, (s, opened)) in socks.iter_mut().enumerate() {
        let left = Duration::from_secs(5).saturating_sub(all_open.elapsed());
        let (got, closed, _) = read_raw_until_closed(s, left.max(Duration::from_millis(1)));
        assert!(
            closed,
            "stalled handshake {i} still open {:?} after it was opened",
            opened.elapsed()
        );
        assert!(!looks_like_memcached(&got), "{i} answered {:?}", text(&got));
        closed_after.push(opened.elapsed());
    }
    let rss_peak = peak.finish();
    // The first was read from at once: it closed at the timeout, not before.
    assert!(
        closed_after[0] >= Duration::from_millis(900),
        "a stalled handshake was closed after {:?}, before tls_handshake_timeout",
        closed_after[0]
    );
    let slowest = closed_after.iter().max().unwrap();
    eprintln!(
        "stalled handshakes closed after {:?} (first) to {slowest:?} (slowest noticed)",
        closed_after[0]
    );
    wait_stat(plain, "tls_handshake_timeouts", timeouts0 + N as u64);
    drop(socks);
    poll("the connections count to go back", WAIT, || {
        // The stats connection itself is one.
        match stat(plain, "curr_connections") {
            n if n <= connections0 => Ok(()),
            n => Err(format!("curr_connections {n}, before {connections0}")),
        }
    });
    // Each stalled handshake holds a socket, a task and a rustls connection that has read
    // 5 bytes (its receive buffer grows with what arrives): about 15 KiB each measured
    // (3 MiB for 200, debug build). The bound, 12 MiB for 200, is 60 KiB each: room for
    // allocator noise, not for a per-connection buffer of a full TLS record (16 KiB + 2 KiB
    // in and out) or of the client reply budget allocated before the handshake is done,
    // nor for handshakes that are never freed.
    assert_rss("200 stalled TLS handshakes", rss_peak, baseline, 12 * 1024);

    // Plaintext on a TLS port (default handshake timeout, 10 s): closed within 1 s, no reply.
    let failures0 = stat(plain, "tls_handshake_failures");
    let mut s = TcpStream::connect(("127.0.0.1", patient)).unwrap();
    s.write_all(b"get foo\r\n").unwrap();
    let (got, closed, took) = read_raw_until_closed(&mut s, Duration::from_secs(1));
    assert!(closed, "plaintext on a TLS port still open after {took:?}");
    assert!(
        got.is_empty() || got[0] == 0x15,
        "plaintext on a TLS port got {:?} back (only a TLS alert may come)",
        text(&got)
    );
    wait_stat(plain, "tls_handshake_failures", failures0 + 1);
    // The listener still serves TLS.
    let mut c = TlsClient::connect(patient, config);
    assert_eq!(c.call("version\r\n"), VERSION_REPLY);
}

// ---------------------------------------------------------------------------------------
// f. The admin listener over HTTPS
// ---------------------------------------------------------------------------------------

/// admin_tls_cert/admin_tls_key: curl (trusting the CA) gets /health/live and /metrics over
/// HTTPS, as does a rustls client (which sees the admin certificate); curl trusting another
/// CA fails, and plain HTTP on the admin port gets no HTTP response.
#[test]
fn f_the_admin_listener_serves_https() {
    let pki = Pki::new();
    let admin_cert = pki.ca.server_cert(&pki.files, "admin", 300, (2095, 1, 1));
    let mc = Memcached::start();
    let (secure, admin) = (free_port(), free_port());
    let top = format!(
        "threads = 1\nadmin = \"127.0.0.1:{admin}\"\n{}{}",
        path_key("admin_tls_cert", &admin_cert.cert),
        path_key("admin_tls_key", &admin_cert.key)
    );
    let pools = [md5_pool_toml(
        "secure",
        secure,
        &[mc.server(1)],
        &listener_keys(&pki.server),
    )];
    let path = pki.files.write("memroute.toml", &config_toml(&top, &pools));
    let _proxy = Proxy::start_config(&path, secure, &[]);
    wait_for_port_only(admin);

    let base = format!("https://127.0.0.1:{admin}");
    let run = poll("curl to get /health/live", WAIT, || {
        let run = curl(&format!("{base}/health/live"), &pki.ca.pem);
        if run.exited(0) {
            Ok(run)
        } else {
            Err(run.describe())
        }
    });
    assert_eq!(run.stdout, "live\n\n200", "{}", run.describe());
    let run = curl(&format!("https://localhost:{admin}/metrics"), &pki.ca.pem);
    assert!(
        run.exited(0) && run.stdout.ends_with("\n200"),
        "{}",
        run.describe()
    );
    let body = run.stdout.strip_suffix("\n200").unwrap();
    assert_eq!(
        metric(
            &parse_metrics(body),
            "memroute_tls_cert_expiry_timestamp_seconds",
            &[("listener", "secure")]
        ),
        Some(pki.server.not_after as f64),
        "the expiry gauge over HTTPS"
    );

    // rustls, HTTP/1.0 by hand.
    let mut c = TlsClient::connect(admin, pki.client(None));
    assert_eq!(c.peer_cert(), admin_cert.der, "the admin certificate");
    c.send("GET /health/live HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let (raw, _) = c.read_until_closed();
    let raw = text(&raw);
    assert!(
        raw.starts_with("HTTP/1.1 200") || raw.starts_with("HTTP/1.0 200"),
        "{raw:?}"
    );
    assert!(raw.ends_with("\r\n\r\nlive\n"), "{raw:?}");

    // curl trusting another CA: certificate problem (60).
    let run = curl(&format!("{base}/health/live"), &pki.other_ca.pem);
    assert!(run.exited(60), "{}", run.describe());
    // Plain HTTP on the HTTPS port: no HTTP response.
    let mut s = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    s.write_all(b"GET /health/live HTTP/1.0\r\n\r\n").unwrap();
    let (got, _, _) = read_raw_until_closed(&mut s, Duration::from_secs(3));
    assert!(
        !text(&got).contains("HTTP/1."),
        "plain HTTP answered: {:?}",
        text(&got)
    );
}

// ---------------------------------------------------------------------------------------
// TLS settings checked at start
// ---------------------------------------------------------------------------------------

/// `--check` accepts a file using every TLS key and refuses, naming the key or file, the
/// combinations that cannot work.
#[test]
fn tls_settings_are_checked_at_start() {
    let pki = Pki::new();
    let garbage = pki.files.write("garbage.pem", "not a certificate\n");
    let listener = listener_keys(&pki.server);
    let pool = |keys: &str| {
        format!("[pools.a]\nlisten = \"127.0.0.1:0\"\nservers = [\"127.0.0.1:1:1\"]\n{keys}")
    };
    let check = |contents: &str| {
        let config = pki.files.write("check.toml", contents);
        Command::new(Proxy::binary())
            .args(["--config", config.to_str().unwrap(), "--check"])
            .output()
            .unwrap()
    };
    let full = format!(
        "{}{}\n{}",
        path_key("admin_tls_cert", &pki.server.cert),
        path_key("admin_tls_key", &pki.server.key),
        pool(&format!(
            "{listener}{}tls_client_names = [\"{CLIENT_DNS}\", \"{CLIENT_URI}\"]\n\
             tls_handshake_timeout = \"2s\"\nserver_tls = true\n{}server_tls_name = \"localhost\"\n{}{}",
            path_key("tls_client_ca", &pki.ca.pem),
            path_key("server_tls_ca", &pki.ca.pem),
            path_key("server_tls_cert", &pki.client_dns.cert),
            path_key("server_tls_key", &pki.client_dns.key),
        ))
    );
    let full = format!("admin = \"127.0.0.1:{}\"\n{full}", free_port());
    let out = check(&full);
    assert!(
        out.status.success(),
        "a file with every TLS key refused: {}\n{full}",
        text(&out.stderr)
    );

    let mismatched = format!(
        "{}{}",
        path_key("tls_cert", &pki.server.cert),
        path_key("tls_key", &pki.client_dns.key)
    );
    let bad_cert = format!(
        "{}{}",
        path_key("tls_cert", &garbage),
        path_key("tls_key", &pki.server.key)
    );
    for (keys, named) in [
        (
            path_key("tls_cert", &pki.server.cert),
            "tls_key".to_string(),
        ),
        (
            format!("{listener}tls_client_names = [\"{CLIENT_DNS}\"]\n"),
            "tls_client_ca".to_string(),
        ),
        (bad_cert, garbage.display().to_string()),
        (mismatched, "key".to_string()),
        (
            format!(
                "server_tls = true\n{}{}",
                path_key("server_tls_ca", &pki.ca.pem),
                path_key("server_tls_cert", &pki.client_dns.cert)
            ),
            "server_tls_key".to_string(),
        ),
        (
            format!("{listener}tls_handshake_timeout = \"soon\"\n"),
            "tls_handshake_timeout".to_string(),
        ),
    ] {
        let contents = pool(&keys);
        let out = check(&contents);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{contents}");
        assert!(
            err.contains(&named),
            "{named} not named in: {err}\n{contents}"
        );
    }
}
