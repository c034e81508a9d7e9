//! A backend removed by a reload is closed by memroute once nothing is in flight on it, even
//! while clients that used it stay connected and idle; one kept for warm-up is closed when
//! the warm-up ends.

mod common;

use std::time::Duration;

use common::config::{config_toml, pool_toml, replace_file, TempFiles};
use common::{free_port, poll_until_every, Client, Memcached, Proxy};

fn config(port: u16, warmup: &str, servers: &[&Memcached]) -> String {
    let list: Vec<String> = servers.iter().map(|m| m.server(1)).collect();
    let keys = format!("hash = \"md5\"\nwarmup = \"{warmup}\"");
    config_toml("threads = 1", &[pool_toml("p", port, &list, &keys)])
}

/// memcached's own count of open connections, minus the one asking.
fn connections(m: &Memcached) -> u64 {
    m.client().stat_num("curr_connections") - 1
}

/// Polls `f` every 20 ms for at most 10 s.
fn poll(what: &str, f: impl FnMut() -> bool) {
    poll_until_every(Duration::from_secs(10), Duration::from_millis(20), what, f);
}

fn generation(c: &mut Client) -> u64 {
    c.stat_num("generation")
}

fn run(warmup: &str) {
    let (a, b) = (Memcached::start(), Memcached::start());
    let port = free_port();
    let files = TempFiles::new();
    let path = files.write("memroute.toml", &config(port, warmup, &[&a, &b]));
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
    replace_file(&path, &config(port, warmup, &[&a]));
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
