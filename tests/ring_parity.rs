//! Ring parity with twemproxy: Debian's nutcracker and memroute, configured with the same
//! server list over the same memcached processes, must put every key on the same backend.
//!
//! Each case writes the same keys first through nutcracker (value `via-nutcracker`), records
//! which memcached holds each key, then writes them through memroute (value `via-memroute`)
//! and checks that each key's new value replaced the old one on the same memcached and that
//! no other memcached received it.

mod common;

use std::collections::HashMap;

use common::{mix, set_request, Client, Memcached, Nutcracker, Proxy};

const KEYS: usize = 3000;
const BATCH: usize = 500;

/// Distinct keys of varied shape and length (fnv1a_64 in twemproxy's 32-bit arithmetic
/// clusters keys that differ only at the end, so the varied part comes first).
fn keys(seed: u64) -> Vec<String> {
    (0..KEYS as u64)
        .map(|i| {
            let h = mix(seed ^ (i << 8));
            let tail = "xyzw".repeat((h >> 60) as usize % 4);
            format!("{:x}:obj{i}:{tail}", h & 0xffff_ffff_ffff)
        })
        .collect()
}

/// Sets every key to `value` through `c`, pipelined in batches, expecting `STORED` each.
fn set_all(c: &mut Client, keys: &[String], value: &str) {
    for chunk in keys.chunks(BATCH) {
        let mut req = String::new();
        for k in chunk {
            req.push_str(&set_request(k, value));
        }
        c.send(req);
        for k in chunk {
            let line = c.read_line();
            assert_eq!(line, b"STORED\r\n", "set {k} via {value}");
        }
    }
}

/// For each backend, the value it holds for each key it holds (multi-gets sent directly).
fn holdings(backends: &[Memcached], keys: &[String]) -> Vec<HashMap<String, String>> {
    backends
        .iter()
        .map(|m| {
            let mut c = m.client();
            let mut held = HashMap::new();
            for chunk in keys.chunks(100) {
                c.send(format!("get {}\r\n", chunk.join(" ")));
                let reply = String::from_utf8(c.read_retrieval()).unwrap();
                let mut lines = reply.split("\r\n");
                while let Some(line) = lines.next() {
                    if line == "END" {
                        break;
                    }
                    let key = line.split(' ').nth(1).expect("VALUE line").to_string();
                    let value = lines.next().expect("data line").to_string();
                    held.insert(key, value);
                }
            }
            held
        })
        .collect()
}

/// The backend index holding each key with `value`; panics if a key is on none or several.
fn placement(
    held: &[HashMap<String, String>],
    keys: &[String],
    value: &str,
) -> HashMap<String, usize> {
    keys.iter()
        .map(|k| {
            let on: Vec<usize> = (0..held.len())
                .filter(|&b| held[b].get(k).map(String::as_str) == Some(value))
                .collect();
            assert_eq!(on.len(), 1, "key {k} with {value} is on backends {on:?}");
            (k.clone(), on[0])
        })
        .collect()
}

/// One parity case: `servers` are the server entries (same text for both proxies) over
/// `backends` in the same order.
fn check_parity(
    backends: &[Memcached],
    servers: &[String],
    nutcracker_hash: &str,
    distribution: &str,
    extra_yaml: &[&str],
    memroute_flags: &[&str],
    keys: &[String],
) -> HashMap<String, usize> {
    // Start from empty backends (a case may run twice over the same processes).
    for m in backends {
        m.client().expect("flush_all\r\n", "OK\r\n");
    }
    let nut = Nutcracker::start_with(nutcracker_hash, distribution, servers, extra_yaml);
    set_all(&mut nut.client(), keys, "via-nutcracker");
    let before = holdings(backends, keys);
    let twemproxy = placement(&before, keys, "via-nutcracker");
    drop(nut);

    let mut flags = vec![
        "--threads",
        "2",
        "--hash",
        nutcracker_hash,
        "--distribution",
        distribution,
    ];
    flags.extend_from_slice(memroute_flags);
    let proxy = Proxy::start(servers, &flags);
    set_all(&mut proxy.client(), keys, "via-memroute");
    let after = holdings(backends, keys);
    // Every key was overwritten in place: nothing still says via-nutcracker.
    let memroute = placement(&after, keys, "via-memroute");
    let moved: Vec<(&String, usize, usize)> = keys
        .iter()
        .filter(|k| twemproxy[*k] != memroute[*k])
        .map(|k| (k, twemproxy[k], memroute[k]))
        .take(10)
        .collect();
    assert!(
        moved.is_empty(),
        "{nutcracker_hash}/{distribution}: keys on a different backend (key, twemproxy, memroute): {moved:?}"
    );
    for (b, held) in after.iter().enumerate() {
        assert!(
            held.values().all(|v| v == "via-memroute"),
            "backend {b} still holds a key memroute should have overwritten"
        );
    }
    // memroute reads them back from where it wrote them.
    let mut c = proxy.client();
    for k in keys.iter().step_by(97) {
        assert_eq!(c.get(k).as_deref(), Some(&b"via-memroute"[..]), "get {k}");
    }
    memroute
}

/// How many keys each backend got.
fn counts_of(backends: &[Memcached], place: &HashMap<String, usize>) -> Vec<usize> {
    let mut counts = vec![0; backends.len()];
    for b in place.values() {
        counts[*b] += 1;
    }
    counts
}

fn start_backends(n: usize) -> Vec<Memcached> {
    (0..n).map(|_| Memcached::start()).collect()
}

/// Asserts every backend got a share of the keys (so the case actually tests a spread).
fn assert_spread(counts: &[usize], min_each: usize) {
    assert!(
        counts.iter().all(|&c| c >= min_each),
        "keys not spread over all backends: {counts:?}"
    );
}

#[test]
fn fnv1a_64_ketama_with_plain_servers() {
    let backends = start_backends(4);
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    let counts = counts_of(
        &backends,
        &check_parity(
            &backends,
            &servers,
            "fnv1a_64",
            "ketama",
            &[],
            &[],
            &keys(1),
        ),
    );
    assert_spread(&counts, KEYS / 20);
}

#[test]
fn md5_ketama_with_named_servers() {
    let backends = start_backends(3);
    let names = ["cache-a", "cache-b", "cache-c"];
    let servers: Vec<String> = backends
        .iter()
        .zip(names)
        .map(|(m, n)| format!("{} {n}", m.server(1)))
        .collect();
    let counts = counts_of(
        &backends,
        &check_parity(&backends, &servers, "md5", "ketama", &[], &[], &keys(2)),
    );
    assert_spread(&counts, KEYS / 20);
}

#[test]
fn named_servers_place_keys_by_name_not_address() {
    // The same three names given to the same ports in two orders: each key stays with its
    // name (so its memcached changes exactly as the names moved), in both proxies.
    let backends = start_backends(3);
    let keys = keys(12);
    let entries = |names: [&str; 3]| -> Vec<String> {
        backends
            .iter()
            .zip(names)
            .map(|(m, n)| format!("{} {n}", m.server(1)))
            .collect()
    };
    let forward = ["cache-a", "cache-b", "cache-c"];
    let reverse = ["cache-c", "cache-b", "cache-a"];
    let first = check_parity(
        &backends,
        &entries(forward),
        "md5",
        "ketama",
        &[],
        &[],
        &keys,
    );
    let second = check_parity(
        &backends,
        &entries(reverse),
        "md5",
        "ketama",
        &[],
        &[],
        &keys,
    );
    for k in &keys {
        assert_eq!(
            forward[first[k]], reverse[second[k]],
            "key {k} changed server name"
        );
    }
    let c = counts_of(&backends, &first);
    assert_spread(&c, KEYS / 20);
}

#[test]
fn weighted_md5_ketama() {
    let backends = start_backends(3);
    let weights = [1, 2, 5];
    let servers: Vec<String> = backends
        .iter()
        .zip(weights)
        .map(|(m, w)| m.server(w))
        .collect();
    let counts = counts_of(
        &backends,
        &check_parity(&backends, &servers, "md5", "ketama", &[], &[], &keys(3)),
    );
    // Shares follow the weights roughly (1/8, 2/8, 5/8).
    assert!(
        counts[0] < counts[1] && counts[1] < counts[2],
        "weights 1,2,5 gave {counts:?}"
    );
    assert_spread(&counts, KEYS / 40);
}

#[test]
fn weighted_named_fnv1a_64_ketama() {
    let backends = start_backends(5);
    let servers: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{} shard-{i}", m.server(1 + i as u32 % 3)))
        .collect();
    let counts = counts_of(
        &backends,
        &check_parity(
            &backends,
            &servers,
            "fnv1a_64",
            "ketama",
            &[],
            &[],
            &keys(4),
        ),
    );
    assert_spread(&counts, KEYS / 40);
}

/// Backends ordered so that their identities (`127.0.0.1:port`) are in *descending* order of
/// twemproxy's string comparison (length first, then bytes): the opposite of the order
/// twemproxy sorts its server list into.
fn start_backends_descending(n: usize) -> Vec<Memcached> {
    let mut backends = start_backends(n);
    let identity = |m: &Memcached| format!("127.0.0.1:{}", m.port);
    backends.sort_by(|a, b| {
        let (a, b) = (identity(a), identity(b));
        b.len().cmp(&a.len()).then(b.cmp(&a))
    });
    backends
}

#[test]
fn modula_fnv1a_64_and_md5() {
    // twemproxy sorts a pool's servers by identity before building the modula table, so the
    // config order below (descending) must not decide which server a slot is.
    let backends = start_backends_descending(3);
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    for (hash, seed) in [("fnv1a_64", 5), ("md5", 6)] {
        let counts = counts_of(
            &backends,
            &check_parity(&backends, &servers, hash, "modula", &[], &[], &keys(seed)),
        );
        assert_spread(&counts, KEYS / 10);
    }
}

#[test]
fn modula_in_sorted_config_order() {
    // The same with the servers listed in twemproxy's own order.
    let mut backends = start_backends_descending(3);
    backends.reverse();
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    let counts = counts_of(
        &backends,
        &check_parity(&backends, &servers, "md5", "modula", &[], &[], &keys(10)),
    );
    assert_spread(&counts, KEYS / 10);
}

#[test]
fn weighted_modula_md5() {
    let backends = start_backends_descending(3);
    let servers: Vec<String> = backends
        .iter()
        .zip([3, 1, 2])
        .map(|(m, w)| m.server(w))
        .collect();
    let counts = counts_of(
        &backends,
        &check_parity(&backends, &servers, "md5", "modula", &[], &[], &keys(7)),
    );
    assert!(
        counts[1] < counts[2] && counts[2] < counts[0],
        "modula weights 3,1,2 gave {counts:?}"
    );
}

#[test]
fn named_modula_fnv1a_64() {
    // Named servers listed out of name order: twemproxy orders them by name.
    let backends = start_backends(3);
    let servers: Vec<String> = backends
        .iter()
        .zip(["cache-b", "cache-c", "cache-a"])
        .map(|(m, n)| format!("{} {n}", m.server(1)))
        .collect();
    let counts = counts_of(
        &backends,
        &check_parity(
            &backends,
            &servers,
            "fnv1a_64",
            "modula",
            &[],
            &[],
            &keys(11),
        ),
    );
    assert_spread(&counts, KEYS / 10);
}

#[test]
fn murmur_and_hsieh_ketama() {
    let backends = start_backends(3);
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    for (hash, seed) in [("murmur", 8), ("hsieh", 9)] {
        let counts = counts_of(
            &backends,
            &check_parity(&backends, &servers, hash, "ketama", &[], &[], &keys(seed)),
        );
        assert_spread(&counts, KEYS / 20);
    }
}

#[test]
fn every_other_hash_ketama() {
    // The remaining hashes twemproxy offers; crc32 with ketama sends every key to one
    // server in twemproxy (15-bit hashes), and memroute must do the same.
    let backends = start_backends(3);
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    for (i, hash) in [
        "one_at_a_time",
        "crc16",
        "crc32",
        "crc32a",
        "fnv1_64",
        "fnv1_32",
        "fnv1a_32",
        "jenkins",
    ]
    .into_iter()
    .enumerate()
    {
        let keys = &keys(100 + i as u64)[..1000];
        check_parity(&backends, &servers, hash, "ketama", &[], &[], keys);
    }
}

#[test]
fn hash_tag_keeps_tagged_keys_together() {
    let backends = start_backends(4);
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    // 300 tags, 10 keys each, with varied text around the tag; plus keys without a tag and
    // with an empty tag (both hashed whole).
    let mut keys: Vec<String> = Vec::new();
    for t in 0..300u64 {
        for j in 0..10u64 {
            let h = mix(t * 31 + j);
            keys.push(format!(
                "{:x}:user:{{{}}}:f{j}",
                h & 0xffffff,
                mix(t) % 100_000
            ));
        }
    }
    for i in 0..200u64 {
        keys.push(format!("{:x}:plain{i}", mix(i + 7777) & 0xffff_ffff));
        keys.push(format!("{:x}:empty{{}}{i}", mix(i + 8888) & 0xffff_ffff));
    }
    let place = check_parity(
        &backends,
        &servers,
        "fnv1a_64",
        "ketama",
        &["hash_tag: \"{}\""],
        &["--hash-tag", "{}"],
        &keys,
    );
    assert_spread(&counts_of(&backends, &place), 100);
    // Keys sharing a tag share a backend (checked through memroute's placement).
    for group in keys[..3000].chunks(10) {
        let b = place[&group[0]];
        assert!(
            group.iter().all(|k| place[k] == b),
            "tagged keys split: {group:?}"
        );
    }
}
