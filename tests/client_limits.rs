//! Client limits and access control per listener: `client_allow` / `client_deny`,
//! `max_client_connections`, `client_timeout`; refusals counted in `stats` and logged at a
//! bounded rate; a reload changes the lists for new connections.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::config::pool_toml;
use common::{free_port, poll_until, Client, Proxy};

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A config with pool `guarded` (the keys under test) and pool `open` on a second port
/// (to read `stats` from a client nobody refuses), both over one embedded cache.
fn config(guarded_port: u16, open_port: u16, keys: &str) -> String {
    let cache = ["memory:8m".to_string()];
    format!(
        "{}{}",
        pool_toml("guarded", guarded_port, &cache, keys),
        pool_toml("open", open_port, &cache, "")
    )
}

/// Connects to `port` on 127.0.0.1 from the local address `from` (any 127/8 address works
/// on Linux loopback).
fn connect_from(from: &str, port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    let remote: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect(&remote.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends `version` and returns whatever comes back before the connection closes or a line
/// arrives; empty means closed without a word.
fn probe(mut s: TcpStream) -> Vec<u8> {
    let _ = s.write_all(b"version\r\n");
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"\n") {
                    return out;
                }
            }
        }
    }
}

/// A numeric stat of the listener on `port`, from a new connection.
fn stat(port: u16, name: &str) -> u64 {
    Client::connect(port).stat_num(name)
}

#[test]
fn access_lists_refuse_silently_count_and_log_at_a_bounded_rate_and_follow_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let (port, open) = (free_port(), free_port());
    let path = dir.path().join("memroute.toml");
    write(
        &path,
        &config(
            port,
            open,
            "client_allow = [\"127.0.0.0/8\"]\nclient_deny = [\"127.0.0.2\", \"127.0.9.0/24\"]",
        ),
    );
    let log = dir.path().join("log");
    let proxy = Proxy::start_config_logged(&path, port, &[], &log);
    common::wait_for_port_only(open);
    let before = stat(open, "denied_connections");

    // Allowed: served. Denied (single address, and inside a denied network): closed unanswered.
    assert!(probe(connect_from("127.0.0.1", port)).starts_with(b"VERSION "));
    assert!(probe(connect_from("127.0.0.3", port)).starts_with(b"VERSION "));
    assert_eq!(probe(connect_from("127.0.0.2", port)), b"");
    assert_eq!(probe(connect_from("127.0.9.77", port)), b"");
    // The other listener has no lists.
    assert!(probe(connect_from("127.0.0.2", open)).starts_with(b"VERSION "));

    // A flood of refused clients: every one counted, but only a line or two logged.
    for _ in 0..200 {
        assert_eq!(probe(connect_from("127.0.0.2", port)), b"");
    }
    poll_until(Duration::from_secs(5), "denied count", || {
        stat(open, "denied_connections") == before + 202
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.matches("refused client").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines for 202 refusals:\n{text}"
    );

    // A reload narrows the allow list: new connections from 127.0.0.3 are refused now,
    // while an established client keeps being served.
    let mut kept = Client::connect(port);
    kept.expect("set k 0 0 1\r\nv\r\n", "STORED\r\n");
    write(
        &path,
        &config(port, open, "client_allow = [\"127.0.0.1/32\"]"),
    );
    proxy.signal("HUP");
    poll_until(
        Duration::from_secs(10),
        "reload to refuse 127.0.0.3",
        || probe(connect_from("127.0.0.3", port)).is_empty(),
    );
    assert!(probe(connect_from("127.0.0.1", port)).starts_with(b"VERSION "));
    assert_eq!(probe(connect_from("127.0.0.2", port)), b"");
    kept.expect("get k\r\n", "VALUE k 0 1\r\nv\r\nEND\r\n");
}

#[test]
fn a_bad_network_is_rejected_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    write(
        &path,
        &config(free_port(), free_port(), "client_deny = [\"10.0.0.0/40\"]"),
    );
    let out = std::process::Command::new(Proxy::binary())
        .args(["--config", path.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pools.guarded.client_deny") && err.contains("10.0.0.0/40"),
        "{err}"
    );
}

#[test]
fn a_full_listener_refuses_with_an_error_and_admits_again_when_a_client_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let (port, open) = (free_port(), free_port());
    let path = dir.path().join("memroute.toml");
    // Two workers: the cap is per listener, over every worker's accepts.
    write(
        &path,
        &format!(
            "threads = 2\n{}",
            config(port, open, "max_client_connections = 3")
        ),
    );
    let _proxy = Proxy::start_config(&path, port, &[]);
    common::wait_for_port_only(open);
    let before = stat(open, "rejected_connections");

    // wait_for_port's probe connection may still be counted for a moment.
    poll_until(Duration::from_secs(5), "probe connections to leave", || {
        // Only the connection asking.
        stat(open, "curr_connections") == 1
    });
    let mut held: Vec<Client> = (0..3).map(|_| Client::connect(port)).collect();
    for c in &mut held {
        c.expect("set k 0 0 1\r\nv\r\n", "STORED\r\n");
    }
    let mut extra = Client::connect(port);
    assert_eq!(
        extra.read_to_close(),
        b"SERVER_ERROR too many open connections\r\n"
    );
    // The other listener is not affected by this one's cap.
    Client::connect(open).expect("get k\r\n", "END\r\n");
    assert_eq!(stat(open, "rejected_connections"), before + 1);

    drop(held.pop());
    poll_until(Duration::from_secs(5), "a seat to free up", || {
        let mut c = Client::connect(port);
        c.send("get k\r\n");
        c.read_retrieval() == b"VALUE k 0 1\r\nv\r\nEND\r\n"
    });
}

#[test]
fn idle_clients_are_closed_after_client_timeout_but_busy_and_active_ones_are_not() {
    // A backend that accepts and never answers: a request to it stays in flight until the
    // backend timeout (3 s), longer than the client timeout (1 s).
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_port = stalled.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in stalled.incoming().flatten() {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (port, open, slow) = (free_port(), free_port(), free_port());
    let path = dir.path().join("memroute.toml");
    write(
        &path,
        &format!(
            "{}{}",
            config(port, open, "client_timeout = \"1s\""),
            pool_toml(
                "slow",
                slow,
                &[format!("127.0.0.1:{stalled_port}:1")],
                "timeout = 3000\nclient_timeout = \"1s\"\nretrieval_failure = \"error\"",
            )
        ),
    );
    let _proxy = Proxy::start_config(&path, port, &[]);
    common::wait_for_port_only(open);
    common::wait_for_port_only(slow);
    let kicks = stat(open, "idle_kicks");

    let started = Instant::now();
    let mut idle = Client::connect(port);
    let mut active = Client::connect(port);
    let mut trickler = connect_from("127.0.0.1", port);
    let mut busy = Client::connect(slow);
    busy.send("get k\r\n");
    let mut no_timeout = Client::connect(open);
    // The active client sends a request every 100 ms for 2.5 s (a gap would have to reach
    // the 1 s timeout to close it, even on a loaded machine); the trickler sends a byte of a
    // line it never ends every 50 ms (bytes are not activity; requests are).
    for i in 0..25 {
        active.expect(format!("set k{i} 0 0 1\r\nv\r\n"), "STORED\r\n");
        for _ in 0..2 {
            // Fails once memroute has closed the connection; that is the point.
            let _ = trickler.write_all(b"g");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(2500));
    // The idle one and the trickler were closed without a reply; the active one was not.
    assert_eq!(idle.read_to_close(), b"");
    let mut rest = Vec::new();
    match trickler.read_to_end(&mut rest) {
        Ok(_) => assert_eq!(rest, b""),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    active.expect("get k24\r\n", "VALUE k24 0 1\r\nv\r\nEND\r\n");
    // The busy client's request was waiting on its backend, which is not idleness: it gets
    // the backend's timeout error, not a closed connection.
    assert_eq!(busy.read_line(), b"SERVER_ERROR backend timeout\r\n");
    // Without client_timeout, an idle connection stays open.
    no_timeout.expect("get k\r\n", "END\r\n");
    assert!(stat(open, "idle_kicks") >= kicks + 2);
}
