//! Unit tests for the ring: point counts, dispatch rules and a libmemcached fixture.

use super::*;

fn equal(n: usize) -> Vec<RingServer> {
    (0..n)
        .map(|i| RingServer::new(format!("10.0.0.{i}:11211"), 1))
        .collect()
}

fn weighted(weights: &[u32]) -> Vec<RingServer> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| RingServer::new(format!("10.0.0.{i}:22121"), w))
        .collect()
}

fn ketama(servers: &[RingServer]) -> Ring {
    Ring::new(Distribution::Ketama, HashFunction::Md5, None, servers).unwrap()
}

#[test]
fn equal_weights_give_160_points_except_where_f32_rounds_down() {
    // n values computed with C `float` arithmetic (gcc, x86-64) using
    // twemproxy's expression; every other n in 1..=200 gives 160.
    const ROUNDED_DOWN: [usize; 19] = [
        25, 47, 50, 55, 61, 71, 94, 100, 107, 109, 110, 115, 122, 142, 159, 163, 188, 193, 200,
    ];
    for n in 1..=200 {
        let want = if ROUNDED_DOWN.contains(&n) { 156 } else { 160 };
        assert_eq!(
            ketama_point_count(1, n as u32, n as u32),
            want as u32,
            "n = {n}"
        );
    }
    assert_eq!(ketama(&equal(3)).points_per_server(), [160; 3]);
    assert_eq!(ketama(&equal(25)).points_per_server(), [156; 25]);
    for n in [47, 50, 100] {
        assert!(ketama(&equal(n))
            .points_per_server()
            .iter()
            .all(|&p| p == 156));
    }
}

#[test]
fn weighted_point_counts() {
    assert_eq!(
        ketama(&weighted(&[1, 2, 3])).points_per_server(),
        [80, 160, 240]
    );
    // A tiny weight next to a huge one gets no points at all, as in twemproxy.
    assert_eq!(ketama(&weighted(&[1, 1000])).points_per_server(), [0, 316]);
    let ring = ketama(&weighted(&[1, 2, 3]));
    assert_eq!(ring.point_values.len(), 480);
    assert!(ring.point_values.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn ketama_point_placement() {
    // md5("127.0.0.1:22001-0") yields these four points for server 0.
    let servers = [
        RingServer::new("127.0.0.1:22001", 1),
        RingServer::new("127.0.0.1:22002", 1),
    ];
    let ring = ketama(&servers);
    for value in [
        2_671_140_271u32,
        1_943_181_757,
        1_269_854_166,
        3_437_230_207,
    ] {
        let slot = ring.point_values.binary_search(&value).unwrap();
        assert_eq!(ring.point_owners[slot], 0);
    }
    // A key hashing exactly onto a point belongs to that point (>=, not >).
    assert_eq!(ring.hash_key(b"127.0.0.1:22001-0"), 2_671_140_271);
    assert_eq!(ring.server_for(b"127.0.0.1:22001-0"), 0);
    assert_eq!(ring.server_for(b"127.0.0.1:22002-7"), 1);
}

#[test]
fn wraps_past_the_last_point() {
    let ring = ketama(&equal(4));
    let last = *ring.point_values.last().unwrap();
    let first_owner = ring.point_owners[0] as usize;
    let key = (0u32..)
        .map(|i| format!("wrap-{i}"))
        .find(|k| ring.hash_key(k.as_bytes()) > last)
        .unwrap();
    assert_eq!(ring.server_for(key.as_bytes()), first_owner);
    assert_eq!(ring.ketama_slot(u32::MAX), 0);
    assert_eq!(ring.ketama_slot(0), 0);
}

#[test]
fn ketama_lookup_matches_linear_scan() {
    let ring = Ring::new(
        Distribution::Ketama,
        HashFunction::Fnv1a_64,
        None,
        &weighted(&[3, 1, 4, 1, 5]),
    )
    .unwrap();
    for i in 0..2000 {
        let key = format!("key:{i}");
        let h = ring.hash_key(key.as_bytes());
        let slot = ring.point_values.iter().position(|&v| v >= h).unwrap_or(0);
        assert_eq!(
            ring.server_for(key.as_bytes()),
            ring.point_owners[slot] as usize
        );
    }
}

#[test]
fn single_server_skips_hashing() {
    for dist in Distribution::ALL {
        let ring = Ring::new(dist, HashFunction::Crc32a, None, &weighted(&[7])).unwrap();
        for key in [&b""[..], b"a", b"anything at all"] {
            assert_eq!(ring.server_for(key), 0);
        }
    }
}

#[test]
fn modula_repeats_servers_by_weight_in_order() {
    let ring = Ring::new(
        Distribution::Modula,
        HashFunction::Crc32a,
        None,
        &weighted(&[2, 1, 3]),
    )
    .unwrap();
    assert_eq!(ring.points_per_server(), [2, 1, 3]);
    // Slots 0,1 -> server 0; 2 -> server 1; 3,4,5 -> server 2.
    let expanded = [0, 0, 1, 2, 2, 2];
    let mut seen = [false; 6];
    for i in 0..500 {
        let key = format!("m{i}");
        let slot = (ring.hash_key(key.as_bytes()) % 6) as usize;
        seen[slot] = true;
        assert_eq!(ring.server_for(key.as_bytes()), expanded[slot]);
    }
    assert!(seen.iter().all(|&s| s));
    // Empty keys hash to 0, so they land on the first slot.
    assert_eq!(ring.server_for(b""), 0);
}

#[test]
fn random_spreads_over_all_servers_uniformly() {
    let ring = Ring::new(
        Distribution::Random,
        HashFunction::Md5,
        None,
        &weighted(&[1, 10, 100]),
    )
    .unwrap();
    assert_eq!(ring.points_per_server(), [1, 1, 1]);
    let mut hits = [0usize; 3];
    for _ in 0..30_000 {
        hits[ring.server_for(b"same key")] += 1;
    }
    // twemproxy's random ignores weight: each server gets about a third.
    assert!(
        hits.iter().all(|&h| (8_000..12_000).contains(&h)),
        "{hits:?}"
    );
}

#[test]
fn hash_tag_selects_the_inner_span() {
    let tag = HashTag::new("{}").unwrap();
    assert_eq!(tag.apply(b"user:{42}:name"), b"42");
    assert_eq!(tag.apply(b"{a}{b}"), b"a");
    // Empty span, missing close, or close only before open: whole key.
    assert_eq!(tag.apply(b"user:{}:name"), b"user:{}:name");
    assert_eq!(tag.apply(b"user:{42"), b"user:{42");
    assert_eq!(tag.apply(b"}42{"), b"}42{");
    assert_eq!(tag.apply(b"plain"), b"plain");
    // The close is searched for after the first open only.
    assert_eq!(tag.apply(b"a{{b}"), b"{b");
    // Identical delimiters work too.
    assert_eq!(HashTag::new("$$").unwrap().apply(b"x$id$y"), b"id");

    let ring = Ring::new(
        Distribution::Ketama,
        HashFunction::Murmur,
        Some(tag),
        &equal(5),
    )
    .unwrap();
    assert_eq!(ring.hash_key(b"a{xyz}b"), HashFunction::Murmur.hash(b"xyz"));
    assert_eq!(ring.server_for(b"a{xyz}b"), ring.server_for(b"xyz"));
    assert_eq!(ring.server_for(b"other{xyz}"), ring.server_for(b"xyz"));
}

#[test]
fn hash_tag_must_be_two_bytes() {
    assert!(HashTag::new("{").is_err());
    assert!(HashTag::new("{}}").is_err());
    assert_eq!("{}".parse::<HashTag>().unwrap().as_bytes(), *b"{}");
    assert_eq!(HashTag::new("{}").unwrap().to_string(), "{}");
}

#[test]
fn rejects_empty_and_zero_weight_pools() {
    let err = Ring::new(Distribution::Ketama, HashFunction::Md5, None, &[]).unwrap_err();
    assert_eq!(err, RingError::NoServers);
    let err = Ring::new(
        Distribution::Modula,
        HashFunction::Md5,
        None,
        &weighted(&[1, 0]),
    )
    .unwrap_err();
    assert!(matches!(err, RingError::ZeroWeight { index: 1, .. }));
    let err = Ring::new(
        Distribution::Modula,
        HashFunction::Md5,
        None,
        &weighted(&[u32::MAX, 1]),
    )
    .unwrap_err();
    assert!(matches!(err, RingError::TotalWeightTooLarge(_)));
}

#[test]
fn identity_and_names() {
    assert_eq!(server_identity("10.0.1.1", 11211, None), "10.0.1.1");
    assert_eq!(server_identity("10.0.1.1", 11212, None), "10.0.1.1:11212");
    assert_eq!(
        server_identity("10.0.1.1", 11212, Some("cache-a")),
        "cache-a"
    );
    for d in Distribution::ALL {
        assert_eq!(d.to_string().parse::<Distribution>(), Ok(d));
    }
    assert!("consistent".parse::<Distribution>().is_err());

    use serde::de::value::{Error, StrDeserializer};
    use serde::de::IntoDeserializer;
    let de: StrDeserializer<'_, Error> = "modula".into_deserializer();
    assert_eq!(Distribution::deserialize(de), Ok(Distribution::Modula));
}

#[test]
fn accessors() {
    let ring = Ring::new(Distribution::Ketama, HashFunction::Jenkins, None, &equal(2)).unwrap();
    assert_eq!(ring.len(), 2);
    assert!(!ring.is_empty());
    assert_eq!(ring.distribution(), Distribution::Ketama);
    assert_eq!(ring.hash_function(), HashFunction::Jenkins);
    assert_eq!(ring.hash_tag(), None);
}

#[test]
fn ring_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Ring>();
}

/// libmemcached's weighted-ketama fixture (test/fixtures/ketama.hpp):
/// 8 servers `10.0.1.N:11211`, md5 key hash. Each row is checked for the
/// key hash, the continuum point it lands on, and the server.
#[test]
fn libmemcached_weighted_ketama_fixture() {
    let hosts = [
        ("10.0.1.1", 600),
        ("10.0.1.2", 300),
        ("10.0.1.3", 200),
        ("10.0.1.4", 350),
        ("10.0.1.5", 1000),
        ("10.0.1.6", 800),
        ("10.0.1.7", 950),
        ("10.0.1.8", 100),
    ];
    let servers: Vec<RingServer> = hosts
        .iter()
        .map(|&(host, w)| RingServer::new(server_identity(host, 11211, None), w))
        .collect();
    let ring = ketama(&servers);
    assert_eq!(
        ring.points_per_server(),
        [176, 88, 56, 104, 296, 236, 280, 28]
    );

    // libmemcached's wrap-around case: "VDEAAAAA" hashes past the last point.
    assert_eq!(ring.hash_key(b"VDEAAAAA"), 0xfffc_d1b5);
    assert!(0xfffc_d1b5 > *ring.point_values.last().unwrap());
    assert_eq!(ring.server_for(b"VDEAAAAA"), ring.point_owners[0] as usize);

    let data = include_str!("testdata/libmemcached_ketama_weighted.tsv");
    let mut rows = 0;
    for line in data.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').collect();
        let (key, key_hash, point, host) = (f[0], f[1], f[2], f[3]);
        let key_hash: u32 = key_hash.parse().unwrap();
        let point: u32 = point.parse().unwrap();
        assert_eq!(ring.hash_key(key.as_bytes()), key_hash, "{key}");
        let slot = ring.ketama_slot(key_hash);
        assert_eq!(ring.point_values[slot], point, "{key}");
        assert_eq!(servers[ring.server_for(key.as_bytes())].name, host, "{key}");
        rows += 1;
    }
    assert_eq!(rows, 99);
}

#[test]
fn modula_orders_servers_by_name_like_twemproxy() {
    // twemproxy sorts servers by name (shorter first, then bytewise) before `hash % n`.
    let servers = [RingServer::new("server-zz", 1), RingServer::new("a", 2)];
    let ring = Ring::new(Distribution::Modula, HashFunction::Md5, None, &servers).unwrap();
    for key in ["k1", "k2", "k3", "k4", "k5", "k6"] {
        let slot = HashFunction::Md5.hash(key.as_bytes()) % 3;
        let expected = if slot < 2 { 1 } else { 0 };
        assert_eq!(ring.server_for(key.as_bytes()), expected, "{key}");
    }
}
