//! `stats` subcommands, `cache_memlimit` and a binary-protocol opening, against real memcached
//! backends: memroute's own answers (`settings`, `conns`), and the backend-facing ones sent to
//! every backend and combined in one reply a memcached parser accepts.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{text, Memcached, Proxy};

/// Three memcached and memroute over them (md5 ketama). The backends' LRU maintenance
/// threads are off, so their counters hold still between memroute's reading and the test's.
fn three() -> (Vec<Memcached>, Proxy) {
    let backends: Vec<Memcached> = (0..3)
        .map(|_| Memcached::start_with(&["-o", "no_lru_maintainer,no_lru_crawler"]))
        .collect();
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    let proxy = Proxy::start(&servers, &["--hash", "md5", "--threads", "2"]);
    (backends, proxy)
}

fn numbers(lines: &[(String, String)]) -> HashMap<String, u64> {
    lines
        .iter()
        .filter_map(|(n, v)| Some((n.clone(), v.parse().ok()?)))
        .collect()
}

#[test]
fn items_and_slabs_are_summed_over_the_backends() {
    let (backends, proxy) = three();
    let mut c = proxy.client();
    for i in 0..300 {
        let len = if i % 3 == 0 { 2000 } else { 20 };
        c.set(&format!("item:{i}"), &vec![b'v'; len]);
    }
    let ours = numbers(&c.stats_lines("items"));
    let direct: Vec<HashMap<String, u64>> = backends
        .iter()
        .map(|m| numbers(&m.client().stats_lines("items")))
        .collect();
    let mut checked = 0;
    for (name, value) in &ours {
        let values: Vec<u64> = direct.iter().filter_map(|d| d.get(name).copied()).collect();
        let expected = if name.ends_with(":age") || name.ends_with(":age_hot") {
            // Ages move with the clock between the two reads.
            continue;
        } else if name.ends_with(":evicted_time") {
            values.iter().copied().max().unwrap_or(0)
        } else {
            values.iter().sum()
        };
        assert_eq!(*value, expected, "{name}");
        checked += 1;
    }
    let number: u64 = ours
        .iter()
        .filter(|(n, _)| n.ends_with(":number"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(number, 300, "every item counted once");
    assert!(checked > 20, "only {checked} item counters");

    let slabs = numbers(&c.stats_lines("slabs"));
    let direct: Vec<HashMap<String, u64>> = backends
        .iter()
        .map(|m| numbers(&m.client().stats_lines("slabs")))
        .collect();
    let sum = |name: &str| direct.iter().filter_map(|d| d.get(name)).sum::<u64>();
    assert_eq!(slabs["total_malloced"], sum("total_malloced"));
    let used: u64 = slabs
        .iter()
        .filter(|(n, _)| n.ends_with(":used_chunks"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(used, 300);
    // A class's chunk size is the same on every backend, not multiplied.
    let chunk = direct
        .iter()
        .find_map(|d| d.get("1:chunk_size"))
        .copied()
        .unwrap();
    assert_eq!(slabs["1:chunk_size"], chunk);
    c.expect("stats sizes\r\n", "STAT sizes_status disabled\r\nEND\r\n");
}

#[test]
fn cachedump_lists_every_backends_items_and_reset_resets_them() {
    let (backends, proxy) = three();
    let mut c = proxy.client();
    for i in 0..30 {
        c.set(&format!("dump:{i}"), b"x");
    }
    c.send("stats cachedump 1 0\r\n");
    let mut dump = String::new();
    while !dump.ends_with("END\r\n") {
        dump.push_str(&text(&c.read_line()));
    }
    let mut keys: Vec<&str> = dump
        .lines()
        .filter_map(|l| l.strip_prefix("ITEM ")?.split(' ').next())
        .collect();
    keys.sort();
    // Each backend's own dump, one after the other.
    let mut expected = Vec::new();
    for m in &backends {
        let mut b = m.client();
        b.send("stats cachedump 1 0\r\n");
        let mut own = String::new();
        while !own.ends_with("END\r\n") {
            own.push_str(&text(&b.read_line()));
        }
        expected.extend(
            own.lines()
                .filter_map(|l| Some(l.strip_prefix("ITEM ")?.split(' ').next()?.to_string())),
        );
    }
    expected.sort();
    assert_eq!(keys, expected, "{dump}");
    assert_eq!(keys.len(), 30, "every item listed");
    assert!(dump.ends_with("END\r\n"));
    // Arguments are checked by the backends, as memcached checks them.
    c.expect("stats cachedump\r\n", "CLIENT_ERROR bad command line\r\n");
    c.expect(
        "stats cachedump 99 1\r\n",
        "CLIENT_ERROR Illegal slab id\r\n",
    );

    assert_eq!(c.get("dump:1").as_deref(), Some(&b"x"[..]));
    assert!(
        backends
            .iter()
            .map(|m| m.client().stat_num("get_hits"))
            .sum::<u64>()
            >= 1
    );
    c.expect("stats reset\r\n", "RESET\r\n");
    for m in &backends {
        assert_eq!(m.client().stat_num("get_hits"), 0, "reset on every backend");
    }
    c.expect("stats detail on\r\n", "OK\r\n");
    c.expect("stats detail off\r\n", "OK\r\n");
    c.expect(
        "stats detail\r\n",
        "CLIENT_ERROR usage: stats detail on|off|dump\r\n",
    );
    c.expect("stats nonsense\r\n", "ERROR\r\n");
}

#[test]
fn cache_memlimit_reaches_every_backend() {
    let (backends, proxy) = three();
    let mut c = proxy.client();
    c.expect("cache_memlimit 200\r\n", "OK\r\n");
    for m in &backends {
        assert_eq!(m.client().stat_num("limit_maxbytes"), 200 * 1024 * 1024);
    }
    c.expect(
        "cache_memlimit 2\r\n",
        "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n",
    );
    c.send("cache_memlimit 100 noreply\r\n");
    for m in &backends {
        let mut b = m.client();
        common::poll_until(Duration::from_secs(5), "the silent limit applied", || {
            b.stat_num("limit_maxbytes") == 100 * 1024 * 1024
        });
    }
}

#[test]
fn settings_and_conns_are_memroutes_own() {
    let (_backends, proxy) = three();
    let mut c = proxy.client();
    let settings: HashMap<String, String> = c.stats_lines("settings").into_iter().collect();
    assert_eq!(settings["tcpport"], proxy.port.to_string());
    assert_eq!(settings["maxconns"], "50000");
    assert_eq!(settings["item_size_max"], "1048576");
    assert_eq!(settings["num_threads"], "2");
    assert_eq!(settings["cas_enabled"], "yes");
    assert_eq!(settings["memroute_servers"], "3");
    assert_eq!(settings["memroute_hash"], "md5");

    let mut other = proxy.client();
    let other_addr = other.stream.local_addr().unwrap();
    // Once it has been answered, the other client has surely been accepted and registered
    // (with 2 workers, another one may still be accepting it otherwise).
    other.expect("version\r\n", common::VERSION_REPLY);
    let conns = c.stats_lines("conns");
    let find = |suffix: &str, value: &str| {
        conns
            .iter()
            .find(|(n, v)| n.ends_with(suffix) && v == value)
            .map(|(n, _)| n.split(':').next().unwrap().to_string())
    };
    assert!(
        find(":addr", &format!("tcp:127.0.0.1:{}", proxy.port)).is_some(),
        "the listener is listed: {conns:?}"
    );
    let id = find(":addr", &format!("tcp:{other_addr}")).expect("the other client is listed");
    let of = |what: &str| {
        conns
            .iter()
            .find(|(n, _)| *n == format!("{id}:{what}"))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        of("listen_addr").as_deref(),
        Some(format!("tcp:127.0.0.1:{}", proxy.port).as_str())
    );
    assert!(of("secs_since_last_cmd").is_some());
    drop(other);
    common::poll_until(Duration::from_secs(5), "the closed client unlisted", || {
        !c.stats_lines("conns")
            .iter()
            .any(|(_, v)| *v == format!("tcp:{other_addr}"))
    });
}

#[test]
fn an_unknown_binary_opcode_gets_memcacheds_answer_and_the_connection_goes_on() {
    let m = Memcached::start();
    let proxy = Proxy::start(&[m.server(1)], &[]);
    // An opcode memcached does not know, with a body, then a Noop: both answer alike, and
    // the connection goes on.
    let mut packet = vec![0x80u8, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4];
    packet.resize(24, 0);
    packet.extend_from_slice(b"xyz");
    let mut noop = vec![0x80u8, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 6, 7, 8];
    noop.resize(24, 0);
    packet.extend_from_slice(&noop);
    let answer = |port: u16| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&packet).unwrap();
        let mut got = vec![0u8; 24 + 15 + 24];
        s.read_exact(&mut got).unwrap();
        got
    };
    let theirs = answer(m.port);
    let ours = answer(proxy.port);
    assert_eq!(ours, theirs);
    assert_eq!(&ours[24..39], b"Unknown command");
    assert_eq!(&ours[39..41], &[0x81, 0x0a], "the Noop is answered");
}

#[test]
fn an_embedded_pool_answers_the_backend_subcommands_itself() {
    let proxy = Proxy::start(&[], &["--embedded"]);
    let mut c = proxy.client();
    c.set("k", b"v");
    c.expect("stats items\r\n", "END\r\n");
    c.expect("stats sizes\r\n", "STAT sizes_status disabled\r\nEND\r\n");
    c.expect("stats cachedump 1 1\r\n", "END\r\n");
    c.expect("stats reset\r\n", "RESET\r\n");
    c.expect("cache_memlimit 32\r\n", "OK\r\n");
    assert_eq!(c.stat_num("embedded_limit_maxbytes"), 32 * 1024 * 1024);
}
