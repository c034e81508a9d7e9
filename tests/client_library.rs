//! memroute driven by a memcached client library that is not ours: the `memcache` crate
//! (rust-memcache) speaking the ASCII protocol, with memroute fronting three memcached.

mod common;

use std::collections::HashMap;

use common::{Memcached, Proxy};

fn setup() -> (Vec<Memcached>, Proxy, memcache::Client) {
    let backends: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    let proxy = Proxy::start(&servers, &["--threads", "2", "--hash", "md5"]);
    let client = memcache::Client::connect(format!(
        "memcache://127.0.0.1:{}?protocol=ascii&timeout=10",
        proxy.port
    ))
    .expect("memcache client connects to memroute");
    (backends, proxy, client)
}

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("lib:{i}:{}", i * 7919 % 1000))
        .collect()
}

/// How many of `keys` each backend holds, asked directly.
fn spread(backends: &[Memcached], keys: &[String]) -> Vec<usize> {
    backends
        .iter()
        .map(|m| {
            let mut c = m.client();
            keys.iter().filter(|k| c.get(k).is_some()).count()
        })
        .collect()
}

#[test]
fn version_is_memroutes() {
    let (_b, _p, client) = setup();
    let versions = client.version().unwrap();
    assert_eq!(versions.len(), 1);
    // The memcached version memroute speaks, then its own (libmemcached-based clients read
    // the first three numbers).
    assert_eq!(
        versions[0].1,
        concat!("1.6.18-memroute-", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn set_get_and_multi_get_across_backends() {
    let (backends, proxy, client) = setup();
    let keys = keys(150);
    for (i, k) in keys.iter().enumerate() {
        client.set(k, format!("value-{i}").as_str(), 0).unwrap();
    }
    let counts = spread(&backends, &keys);
    assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), keys.len());

    for (i, k) in keys.iter().enumerate() {
        let v: Option<String> = client.get(k).unwrap();
        assert_eq!(v.as_deref(), Some(format!("value-{i}").as_str()));
    }
    let missing: Option<String> = client.get("lib:missing").unwrap();
    assert_eq!(missing, None);

    // Multi-get (`gets k1 k2 …`), split over the three backends, with misses mixed in.
    let mut asked: Vec<&str> = keys.iter().map(String::as_str).collect();
    asked.insert(10, "lib:nope:1");
    asked.push("lib:nope:2");
    let got: HashMap<String, String> = client.gets(&asked).unwrap();
    assert_eq!(got.len(), keys.len());
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(got.get(k), Some(&format!("value-{i}")), "{k}");
    }
    // Binary values and flags survive.
    let blob: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    client.set("lib:blob", blob.as_slice(), 0).unwrap();
    let back: Option<Vec<u8>> = client.get("lib:blob").unwrap();
    assert_eq!(back, Some(blob));
    client.set("lib:num", 12345u64, 0).unwrap();
    let n: u64 = client.get("lib:num").unwrap().unwrap();
    assert_eq!(n, 12345);
    // Flags set by another client come through memroute to the library.
    let mut raw = proxy.client();
    raw.expect("set lib:flags 42 0 2\r\nhi\r\n", "STORED\r\n");
    let (v, flags): (Vec<u8>, u32) = client.get("lib:flags").unwrap().unwrap();
    assert_eq!((v.as_slice(), flags), (&b"hi"[..], 42));
}

#[test]
fn incr_decr_delete() {
    let (_b, _p, client) = setup();
    for k in keys(20) {
        client.set(&k, "10", 0).unwrap();
        assert_eq!(client.increment(&k, 5).unwrap(), 15);
        assert_eq!(client.decrement(&k, 3).unwrap(), 12);
        assert_eq!(client.decrement(&k, 100).unwrap(), 0);
        assert!(client.delete(&k).unwrap());
        assert!(!client.delete(&k).unwrap());
        let v: Option<String> = client.get(&k).unwrap();
        assert_eq!(v, None);
        assert!(client.increment(&k, 1).is_err(), "incr of a missing key");
    }
}

#[test]
fn add_replace_append_prepend() {
    // rust-memcache turns NOT_STORED into Ok(()) for add/replace/append/prepend, so the
    // outcome is checked by reading the value back.
    let (_b, _p, client) = setup();
    for k in keys(20) {
        client.replace(&k, "r", 0).unwrap();
        let v: Option<String> = client.get(&k).unwrap();
        assert_eq!(v, None, "replace of a missing key stored it");
        client.append(&k, "a").unwrap();
        let v: Option<String> = client.get(&k).unwrap();
        assert_eq!(v, None, "append to a missing key stored it");

        client.add(&k, "mid", 0).unwrap();
        client.add(&k, "again", 0).unwrap();
        let v: Option<String> = client.get(&k).unwrap();
        assert_eq!(v.as_deref(), Some("mid"), "add overwrote an existing key");

        client.append(&k, "-end").unwrap();
        client.prepend(&k, "start-").unwrap();
        let v: Option<String> = client.get(&k).unwrap();
        assert_eq!(v.as_deref(), Some("start-mid-end"));
        client.replace(&k, "replaced", 0).unwrap();
        let v: Option<String> = client.get(&k).unwrap();
        assert_eq!(v.as_deref(), Some("replaced"));
    }
}

#[test]
fn cas_and_touch() {
    let (_b, _p, client) = setup();
    for k in keys(20) {
        client.set(&k, "one", 0).unwrap();
        let (v, _flags, cas): (String, u32, Option<u64>) = client.get(&k).unwrap().unwrap();
        assert_eq!(v, "one");
        let cas = cas.expect("gets returns a cas unique");
        assert!(client.cas(&k, "two", 0, cas).unwrap());
        assert!(!client.cas(&k, "three", 0, cas).unwrap(), "stale cas");
        let v: Option<String> = client.get(&k).unwrap();
        assert_eq!(v.as_deref(), Some("two"));

        assert!(client.touch(&k, 3600).unwrap());
        assert!(!client.touch("lib:touch:missing", 3600).unwrap());
    }
}

#[test]
fn flush_reaches_every_backend() {
    let (backends, _p, client) = setup();
    let keys = keys(90);
    for k in &keys {
        client.set(k, "x", 0).unwrap();
    }
    assert!(spread(&backends, &keys).iter().all(|&c| c > 0));
    client.flush().unwrap();
    assert_eq!(spread(&backends, &keys), vec![0, 0, 0]);
    let asked: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got: HashMap<String, String> = client.gets(&asked).unwrap();
    assert!(got.is_empty());
    // Still usable afterwards.
    client.set(&keys[0], "after", 0).unwrap();
    let v: Option<String> = client.get(&keys[0]).unwrap();
    assert_eq!(v.as_deref(), Some("after"));
}

#[test]
fn concurrent_users_of_one_client_pool() {
    let (_b, proxy, _client) = setup();
    let url = format!(
        "memcache://127.0.0.1:{}?protocol=ascii&timeout=10",
        proxy.port
    );
    let client = std::sync::Arc::new(memcache::Client::with_pool_size(url, 4).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    let k = format!("lib:t{t}:{i}");
                    let v = format!("{t}-{i}");
                    client.set(&k, v.as_str(), 0).unwrap();
                    let got: Option<String> = client.get(&k).unwrap();
                    assert_eq!(got, Some(v));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
