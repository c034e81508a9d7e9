//! The binary's configuration surface: a file with several pools on several listeners (a
//! memcached pool, an embedded pool and a Tokyo Tyrant pool side by side), `--check`, and
//! errors that name the offending key.

mod common;

use std::process::Command;

use common::config::TempFiles;
use common::tyrant::FakeTyrant;
use common::{free_port, Client, Memcached, Proxy};

#[test]
fn several_pools_on_several_listeners_in_one_process() {
    let mc = Memcached::start();
    let tt = FakeTyrant::start();
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let files = TempFiles::new();
    let config = files.write(
        "memroute.toml",
        &format!(
            r#"
            threads = 2
            [pools.cache]
            listen = "127.0.0.1:{p1}"
            servers = ["{}"]
            [pools.near]
            listen = "127.0.0.1:{p2}"
            servers = ["memory:8mb"]
            [pools.tyrant]
            listen = "127.0.0.1:{p3}"
            protocol = "tokyotyrant"
            servers = ["{}"]
            "#,
            mc.server(1),
            tt.server(1)
        ),
    );
    let _proxy = Proxy::start_config(&config, p1, &[]);
    for port in [p2, p3] {
        common::wait_for_port_only(port);
    }
    let (mut cache, mut near, mut tyrant) = (
        Client::connect(p1),
        Client::connect(p2),
        Client::connect(p3),
    );
    cache.set("k", b"to-memcached");
    near.set("k", b"to-memory");
    tyrant.set("k", b"to-tyrant");
    assert_eq!(cache.get("k").as_deref(), Some(&b"to-memcached"[..]));
    assert_eq!(near.get("k").as_deref(), Some(&b"to-memory"[..]));
    assert_eq!(tyrant.get("k").as_deref(), Some(&b"to-tyrant"[..]));
    // Each pool keeps to its own backends.
    assert_eq!(mc.client().get("k").as_deref(), Some(&b"to-memcached"[..]));
    assert_eq!(tt.value("k").as_deref(), Some(&b"to-tyrant"[..]));
    // The Tokyo Tyrant pool refuses what ttserver cannot do; the others do it.
    tyrant.expect(
        "touch k 10\r\n",
        "SERVER_ERROR command not supported by tokyotyrant pool\r\n",
    );
    cache.expect("touch k 10\r\n", "TOUCHED\r\n");
    near.expect("touch k 10\r\n", "TOUCHED\r\n");
}

#[test]
fn check_prints_each_pools_ring() {
    let files = TempFiles::new();
    let config = files.write(
        "memroute.toml",
        r#"
        [pools.main]
        listen = "127.0.0.1:0"
        hash = "md5"
        servers = ["127.0.0.1:11211:1", "127.0.0.1:11212:3 big", "memory:4mb:1 near"]
        "#,
    );
    let out = Command::new(Proxy::binary())
        .args(["--config", config.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("pool main"), "{text}");
    assert!(text.contains("hash md5"), "{text}");
    // 5 weight units over 3 servers: 160 points per unit of 160/5 * 3 … as twemproxy computes.
    let points: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split("points ").nth(1))
        .map(|p| p.trim().parse().unwrap())
        .collect();
    assert_eq!(points.len(), 3, "{text}");
    assert!(points[1] > 2 * points[0], "{text}");
    assert!(text.contains("big") && text.contains("near"), "{text}");
}

#[test]
fn bad_configs_are_rejected_naming_the_key() {
    let files = TempFiles::new();
    for (text, key) in [
        (
            "[pools.a]\nlisten = \"127.0.0.1:0\"\nservers = [\"127.0.0.1:1:1\"]\nhash = \"sha1\"\n",
            "pools.a.hash",
        ),
        (
            "[pools.a]\nlisten = \"127.0.0.1:0\"\nservers = [\"127.0.0.1:1:1\"]\ntimeoutt = 5\n",
            "timeoutt",
        ),
        (
            "[pools.a]\nlisten = \"127.0.0.1:0\"\nservers = [\"127.0.0.1:1:0\"]\n",
            "pools.a.servers[0]",
        ),
        (
            "[pools.a]\nlisten = \"127.0.0.1:0\"\nservers = []\n",
            "pools.a.servers",
        ),
        (
            "[pools.a]\nlisten = \"nowhere\"\nservers = [\"127.0.0.1:1:1\"]\n",
            "pools.a.listen",
        ),
    ] {
        let config = files.write("memroute.toml", text);
        let out = Command::new(Proxy::binary())
            .args(["--config", config.to_str().unwrap(), "--check"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "accepted: {text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{key} not named in: {err}");
    }
}
