//! The data path against real memcached processes: routing, pipelining, ordering.

mod common;

use common::{value_item, Memcached, Proxy};

#[test]
fn multi_get_over_three_backends_is_merged_in_key_order() {
    let backends: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    // md5 spreads these similar keys; twemproxy's 32-bit fnv1a_64 clusters them.
    let proxy = Proxy::start(&servers, &["--threads", "1", "--hash", "md5"]);
    let mut c = proxy.client();
    let keys: Vec<String> = (0..100).map(|i| format!("key:{i}")).collect();
    for k in keys.iter().step_by(2) {
        c.set(k, k.as_bytes());
    }
    // Every backend holds some of the keys, so the get is split three ways.
    let holders = backends
        .iter()
        .filter(|m| {
            let mut d = m.client();
            keys.iter().step_by(2).any(|k| d.get(k).is_some())
        })
        .count();
    assert_eq!(holders, 3);
    let mut expected = String::new();
    for (i, k) in keys.iter().enumerate() {
        if i % 2 == 0 {
            expected.push_str(&value_item(k, k));
        }
    }
    expected.push_str("END\r\n");
    c.send(format!("get {}\r\n", keys.join(" ")));
    assert_eq!(String::from_utf8(c.read_retrieval()).unwrap(), expected);
}

#[test]
fn pipelined_requests_split_one_byte_at_a_time_are_answered_in_order() {
    let backends: Vec<Memcached> = (0..2).map(|_| Memcached::start()).collect();
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    let proxy = Proxy::start(&servers, &[]);
    let mut c = proxy.client();
    let mut req = Vec::new();
    let mut expected = Vec::new();
    for i in 0..50 {
        req.extend(format!("set k{i} {i} 0 2\r\nv{}\r\nget k{i}\r\n", i % 10).into_bytes());
        expected
            .extend(format!("STORED\r\nVALUE k{i} {i} 2\r\nv{}\r\nEND\r\n", i % 10).into_bytes());
    }
    for b in &req {
        c.send([*b]);
    }
    assert_eq!(
        String::from_utf8(c.read_n(expected.len())).unwrap(),
        String::from_utf8(expected).unwrap()
    );
}
