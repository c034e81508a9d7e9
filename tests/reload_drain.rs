//! A backend removed by a reload is closed by memroute once nothing is in flight on it, even
//! while clients that used it stay connected and idle; one kept for warm-up is closed when
//! the warm-up ends.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, Client, Memcached, Proxy};

fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn config(port: u16, warmup: &str, servers: &[&Memcached]) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|m| format!("\"{}\"", m.server(1)))
        .collect();
    format!(
        "threads = 1\n[pools.p]\nlisten = \"127.0.0.1:{port}\"\nhash = \"md5\"\nwarmup = \"{warmup}\"\nservers = [{}]\n",
        list.join(", ")
    )
}

/// memcached's own count of open connections, minus the one asking.
fn connections(m: &Memcached) -> u64 {
    m.client()
        .stat("curr_connections")
        .unwrap()
        .parse::<u64>()
        .unwrap()
        - 1
}

fn poll(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn generation(c: &mut Client) -> u64 {
    c.stat("generation").unwrap().parse().unwrap()
}

fn run(warmup: &str) {
    let (a, b) = (Memcached::start(), Memcached::start());
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memroute.toml");
    write(&path, &config(port, warmup, &[&a, &b]));
    let _proxy = Proxy::start_config(&path, port, &[]);
    // Clients that touch both backends, then stay connected and idle.
    let mut idle: Vec<Client> = (0..4).map(|_| Client::connect(port)).collect();
    for (n, c) in idle.iter_mut().enumerate() {
        for i in 0..50 {
            c.set(&format!("k{n}:{i}"), b"v");
        }
    }
    assert!(connections(&b) >= 1);
    let mut admin = Client::connect(port);
    write(&path, &config(port, warmup, &[&a]));
    poll("the reload", || generation(&mut admin) == 2);
    // Without warm-up the removed backend is closed now; with it, when warm-up ends
    // (a rebuild then moves the generation on once more).
    if warmup != "0s" {
        assert!(connections(&b) >= 1, "closed before warm-up ended");
        poll("the end of warm-up", || generation(&mut admin) == 3);
    }
    poll(
        "memroute to close its connections to the removed backend",
        || connections(&b) == 0,
    );
    // The idle clients still work, on the remaining backend.
    for c in idle.iter_mut() {
        c.set("after", b"x");
        assert_eq!(c.get("after").as_deref(), Some(&b"x"[..]));
    }
    assert!(connections(&a) >= 1);
}

#[test]
fn a_removed_backend_is_closed_while_idle_clients_stay() {
    run("0s");
}

#[test]
fn a_backend_kept_for_warm_up_is_closed_when_it_ends() {
    run("1s");
}
