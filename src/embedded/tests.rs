//! Unit tests of the embedded store: each command, the time rules, eviction and stats.

// The only names taken from memroute; inside memroute this becomes `crate::protocol::…`.
use crate::protocol::{ClientCodec, CodecLimits, Decoded};

use std::sync::Arc;

use bytes::BytesMut;

use super::*;

const T0: u64 = 1_700_000_000;

fn store_with(limit: usize, evict: bool) -> (Store, Arc<ManualClock>) {
    store_config(StoreConfig {
        memory_limit: limit,
        evict,
        item_size_max: 1024 * 1024,
    })
}

fn store_config(config: StoreConfig) -> (Store, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    (Store::new(config, clock.clone()), clock)
}

/// A store whose largest value is `item_size_max` bytes.
fn small_item_store(item_size_max: usize) -> Store {
    store_config(StoreConfig {
        memory_limit: 1 << 20,
        evict: true,
        item_size_max,
    })
    .0
}

fn store() -> (Store, Arc<ManualClock>) {
    store_with(64 << 20, true)
}

/// Runs every request in `text` and returns the concatenated replies.
fn run(store: &Store, text: &str) -> String {
    let mut codec = ClientCodec::new(CodecLimits::default());
    let mut buf = BytesMut::from(text.as_bytes());
    let mut out = BytesMut::new();
    while let Some(item) = codec.decode_item(&mut buf) {
        match item {
            Decoded::Request(req) => store.execute(&req, &mut out),
            Decoded::Reply(reply) => out.extend_from_slice(reply),
            Decoded::Skipped { reply, unlink } => {
                out.extend_from_slice(reply);
                // As the client does: the refused set's old value goes.
                if let Some(key) = unlink {
                    store.delete_key(key.bytes(&mut [0; 250]), &mut BytesMut::new());
                }
            }
            other => panic!("unexpected {other:?} in {text:?}"),
        }
    }
    assert!(buf.is_empty(), "incomplete request in {text:?}");
    String::from_utf8(out.to_vec()).unwrap()
}

/// The CAS unique of `key` as `gets` shows it.
fn cas_of(store: &Store, key: &str) -> u64 {
    let reply = run(store, &format!("gets {key}\r\n"));
    let line = reply.lines().next().unwrap();
    line.split(' ').nth(4).unwrap().parse().unwrap()
}

#[test]
fn set_get_and_multi_get() {
    let (s, _) = store();
    assert_eq!(run(&s, "set a 5 0 3\r\nabc\r\n"), "STORED\r\n");
    assert_eq!(run(&s, "set b 4294967295 0 0\r\n\r\n"), "STORED\r\n");
    assert_eq!(
        run(&s, "get a missing b a\r\n"),
        "VALUE a 5 3\r\nabc\r\nVALUE b 4294967295 0\r\n\r\nVALUE a 5 3\r\nabc\r\nEND\r\n"
    );
    assert_eq!(run(&s, "get nothing\r\n"), "END\r\n");
    let st = s.stats();
    assert_eq!((st.cmd_get, st.get_hits, st.get_misses), (5, 3, 2));
    assert_eq!((st.cmd_set, st.total_items, st.curr_items), (2, 2, 2));
}

#[test]
fn add_replace_semantics() {
    let (s, _) = store();
    assert_eq!(run(&s, "replace k 0 0 1\r\nx\r\n"), "NOT_STORED\r\n");
    assert_eq!(run(&s, "add k 1 0 1\r\nx\r\n"), "STORED\r\n");
    assert_eq!(run(&s, "add k 2 0 1\r\ny\r\n"), "NOT_STORED\r\n");
    assert_eq!(run(&s, "replace k 3 0 1\r\nz\r\n"), "STORED\r\n");
    assert_eq!(run(&s, "get k\r\n"), "VALUE k 3 1\r\nz\r\nEND\r\n");
}

#[test]
fn append_prepend_keep_flags_and_exptime() {
    let (s, clock) = store();
    assert_eq!(run(&s, "append k 0 0 1\r\nx\r\n"), "NOT_STORED\r\n");
    assert_eq!(run(&s, "prepend k 0 0 1\r\nx\r\n"), "NOT_STORED\r\n");
    assert_eq!(run(&s, "set k 7 100 2\r\nbc\r\n"), "STORED\r\n");
    assert_eq!(run(&s, "append k 9 0 1\r\nd\r\n"), "STORED\r\n");
    assert_eq!(run(&s, "prepend k 9 0 1\r\na\r\n"), "STORED\r\n");
    assert_eq!(run(&s, "get k\r\n"), "VALUE k 7 4\r\nabcd\r\nEND\r\n");
    // The original 100 s expiry still applies, not the request's 0.
    clock.advance(100);
    assert_eq!(run(&s, "get k\r\n"), "END\r\n");
}

#[test]
fn append_beyond_item_size_max_is_not_stored() {
    let s = small_item_store(4);
    assert_eq!(run(&s, "set k 0 0 3\r\nabc\r\n"), "STORED\r\n");
    assert_eq!(run(&s, "append k 0 0 2\r\nde\r\n"), "NOT_STORED\r\n");
    assert_eq!(run(&s, "get k\r\n"), "VALUE k 0 3\r\nabc\r\nEND\r\n");
}

#[test]
fn value_above_item_size_max_is_refused_and_set_drops_the_old_value() {
    let s = small_item_store(4);
    // The codec would refuse these first; a bigger codec limit lets them reach the store.
    let mut codec = ClientCodec::new(CodecLimits { item_size_max: 100 });
    assert_eq!(run(&s, "set k 0 0 3\r\nabc\r\n"), "STORED\r\n");
    let mut out = BytesMut::new();
    let mut buf = BytesMut::from(&b"add k 0 0 5\r\nabcde\r\nset k 0 0 5\r\nabcde\r\n"[..]);
    while let Some(Decoded::Request(req)) = codec.decode_item(&mut buf) {
        s.execute(&req, &mut out);
    }
    assert_eq!(
        &out[..],
        b"SERVER_ERROR object too large for cache\r\nSERVER_ERROR object too large for cache\r\n"
    );
    assert_eq!(run(&s, "get k\r\n"), "END\r\n");
}

#[test]
fn cas_semantics() {
    let (s, _) = store();
    assert_eq!(run(&s, "cas k 0 0 1 1\r\nx\r\n"), "NOT_FOUND\r\n");
    run(&s, "set k 0 0 1\r\nx\r\n");
    let unique = cas_of(&s, "k");
    assert_eq!(
        run(&s, &format!("cas k 0 0 1 {}\r\ny\r\n", unique + 1)),
        "EXISTS\r\n"
    );
    assert_eq!(run(&s, "cas k 0 0 1 0\r\ny\r\n"), "EXISTS\r\n");
    assert_eq!(
        run(&s, &format!("cas k 3 0 1 {unique}\r\ny\r\n")),
        "STORED\r\n"
    );
    assert_eq!(
        run(&s, &format!("cas k 3 0 1 {unique}\r\nz\r\n")),
        "EXISTS\r\n"
    );
    assert_eq!(run(&s, "get k\r\n"), "VALUE k 3 1\r\ny\r\nEND\r\n");
    let st = s.stats();
    assert_eq!((st.cas_misses, st.cas_hits, st.cas_badval), (1, 1, 3));
}

#[test]
fn cas_uniques_change_on_every_modification_but_not_on_touch() {
    let (s, _) = store();
    run(&s, "set k 0 0 1\r\n1\r\n");
    let mut last = cas_of(&s, "k");
    for cmd in [
        "set k 0 0 1\r\n1\r\n",
        "replace k 0 0 1\r\n2\r\n",
        "append k 0 0 1\r\n3\r\n",
        "prepend k 0 0 1\r\n4\r\n",
        "incr k 1\r\n",
        "decr k 1\r\n",
    ] {
        run(&s, cmd);
        let now = cas_of(&s, "k");
        assert!(now > last, "{cmd:?} must change the unique");
        last = now;
    }
    run(&s, "touch k 100\r\n");
    run(&s, "gat 100 k\r\n");
    assert_eq!(cas_of(&s, "k"), last);
}

#[test]
fn delete_semantics() {
    let (s, _) = store();
    assert_eq!(run(&s, "delete k\r\n"), "NOT_FOUND\r\n");
    run(&s, "set k 0 0 1\r\nx\r\n");
    assert_eq!(run(&s, "delete k 0\r\n"), "DELETED\r\n");
    assert_eq!(run(&s, "get k\r\n"), "END\r\n");
    let st = s.stats();
    assert_eq!(
        (st.delete_hits, st.delete_misses, st.curr_items, st.bytes),
        (1, 1, 0, 0)
    );
}

#[test]
fn incr_decr_semantics() {
    let (s, _) = store();
    assert_eq!(run(&s, "incr k 1\r\n"), "NOT_FOUND\r\n");
    run(&s, "set k 5 0 2\r\n10\r\n");
    assert_eq!(run(&s, "decr k 1\r\n"), "9\r\n");
    // The shorter number is stored as it is (memcached usually pads it to "9 ").
    assert_eq!(run(&s, "get k\r\n"), "VALUE k 5 1\r\n9\r\nEND\r\n");
    run(&s, "set n 0 0 20\r\n10000000000000000003\r\n");
    assert_eq!(run(&s, "decr n 10000000000000000000\r\n"), "3\r\n");
    run(&s, "append n 0 0 2\r\n8c\r\n");
    assert_eq!(run(&s, "get n\r\n"), "VALUE n 0 3\r\n38c\r\nEND\r\n");
    assert_eq!(run(&s, "incr k 991\r\n"), "1000\r\n");
    assert_eq!(run(&s, "get k\r\n"), "VALUE k 5 4\r\n1000\r\nEND\r\n");
    assert_eq!(run(&s, "decr k 5000\r\n"), "0\r\n");
    run(&s, "set k 0 0 20\r\n18446744073709551615\r\n");
    assert_eq!(run(&s, "incr k 2\r\n"), "1\r\n");
    run(&s, "set k 0 0 3\r\nabc\r\n");
    assert_eq!(
        run(&s, "incr k 1\r\n"),
        "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    );
    assert_eq!(run(&s, "incr k 1 noreply\r\n"), "");
    run(&s, "set k 0 0 0\r\n\r\n");
    assert_eq!(
        run(&s, "decr k 1\r\n"),
        "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    );
    let st = s.stats();
    assert_eq!((st.incr_hits, st.incr_misses, st.decr_hits), (2, 1, 3));
}

#[test]
fn noreply_suppresses_every_reply() {
    let (s, _) = store();
    let text = "set k 0 0 1 noreply\r\nx\r\nadd k 0 0 1 noreply\r\nx\r\n\
                cas k 0 0 1 999 noreply\r\nx\r\nincr k 1 noreply\r\ndelete k noreply\r\n\
                delete k noreply\r\ntouch k 1 noreply\r\nflush_all noreply\r\n";
    assert_eq!(run(&s, text), "");
}

#[test]
fn unsupported_commands_get_error() {
    let (s, _) = store();
    assert_eq!(run(&s, "version\r\nstats\r\n"), "ERROR\r\nERROR\r\n");
}

#[test]
fn relative_negative_and_absolute_exptimes() {
    let (s, clock) = store();
    run(&s, "set rel 0 10 1\r\nx\r\n");
    assert_eq!(run(&s, "set neg 0 -1 1\r\nx\r\n"), "STORED\r\n");
    run(&s, &format!("set abs 0 {} 1\r\nx\r\n", T0 + 20));
    run(&s, &format!("set past 0 {} 1\r\nx\r\n", T0 - 1));
    // 30 days exactly is relative; one second more is an absolute time in 1970.
    run(&s, "set month 0 2592000 1\r\nx\r\n");
    run(&s, "set epoch 0 2592001 1\r\nx\r\n");
    assert_eq!(run(&s, "get neg past epoch\r\n"), "END\r\n");
    assert_eq!(run(&s, "get rel\r\n"), "VALUE rel 0 1\r\nx\r\nEND\r\n");
    clock.advance(9);
    assert_eq!(run(&s, "get rel\r\n"), "VALUE rel 0 1\r\nx\r\nEND\r\n");
    clock.advance(1);
    assert_eq!(run(&s, "get rel abs\r\n"), "VALUE abs 0 1\r\nx\r\nEND\r\n");
    clock.advance(10);
    assert_eq!(run(&s, "get abs\r\n"), "END\r\n");
    clock.advance(2592000 - 21);
    assert_eq!(run(&s, "get month\r\n"), "VALUE month 0 1\r\nx\r\nEND\r\n");
    clock.advance(1);
    assert_eq!(run(&s, "get month\r\n"), "END\r\n");
    assert_eq!(s.stats().get_expired, 6);
}

#[test]
fn touch_and_gat_set_the_expiry() {
    let (s, clock) = store();
    assert_eq!(run(&s, "touch k 10\r\n"), "NOT_FOUND\r\n");
    run(&s, "set k 0 5 1\r\nx\r\nset j 0 5 1\r\ny\r\n");
    assert_eq!(run(&s, "touch k 10\r\n"), "TOUCHED\r\n");
    assert_eq!(run(&s, "gat 0 j nope\r\n"), "VALUE j 0 1\r\ny\r\nEND\r\n");
    clock.advance(9);
    let unique = cas_of(&s, "k");
    assert_eq!(
        run(&s, "gats 1 k j\r\n"),
        format!(
            "VALUE k 0 1 {unique}\r\nx\r\nVALUE j 0 1 {}\r\ny\r\nEND\r\n",
            unique + 1
        )
    );
    clock.advance(1);
    assert_eq!(run(&s, "get k j\r\n"), "END\r\n");
    run(&s, "set k 0 0 1\r\nx\r\n");
    assert_eq!(run(&s, "touch k -1\r\n"), "TOUCHED\r\n");
    assert_eq!(run(&s, "get k\r\n"), "END\r\n");
    let st = s.stats();
    // gat keys count as touches, not gets.
    assert_eq!((st.cmd_touch, st.touch_hits, st.touch_misses), (7, 5, 2));
    assert_eq!(st.cmd_get, 4);
}

#[test]
fn flush_all_now_spares_later_items() {
    let (s, _) = store();
    run(&s, "set a 0 0 1\r\nx\r\nset b 0 0 1\r\nx\r\n");
    assert_eq!(run(&s, "flush_all\r\n"), "OK\r\n");
    // Same second as the flush: still valid, as memcached's CAS cutoff makes it.
    run(&s, "set c 0 0 1\r\nx\r\n");
    assert_eq!(run(&s, "get a b c\r\n"), "VALUE c 0 1\r\nx\r\nEND\r\n");
    assert_eq!(run(&s, "add a 0 0 1\r\ny\r\n"), "STORED\r\n");
    assert_eq!(s.stats().get_flushed, 2);
}

#[test]
fn flush_all_with_delay() {
    let (s, clock) = store();
    run(&s, "set a 0 0 1\r\nx\r\n");
    assert_eq!(run(&s, "flush_all 10\r\n"), "OK\r\n");
    clock.advance(8);
    run(&s, "set b 0 0 1\r\nx\r\n");
    assert_eq!(
        run(&s, "get a b\r\n"),
        "VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\nx\r\nEND\r\n"
    );
    // memcached's cutoff is one second before now+delay: items stored up to then go.
    clock.advance(1);
    run(&s, "set c 0 0 1\r\nx\r\n");
    clock.advance(1);
    run(&s, "set d 0 0 1\r\nx\r\n");
    assert_eq!(run(&s, "get a b c d\r\n"), "VALUE d 0 1\r\nx\r\nEND\r\n");
    clock.advance(100);
    assert_eq!(run(&s, "get d\r\n"), "VALUE d 0 1\r\nx\r\nEND\r\n");
}

#[test]
fn flush_all_with_absolute_times() {
    let (s, clock) = store();
    run(&s, "set a 0 0 1\r\nx\r\n");
    // Before the store started: memcached treats it as no flush at all.
    assert_eq!(run(&s, "flush_all 1000000000\r\n"), "OK\r\n");
    assert_eq!(run(&s, "get a\r\n"), "VALUE a 0 1\r\nx\r\nEND\r\n");
    run(&s, &format!("flush_all {}\r\n", T0 + 5));
    clock.advance(4);
    assert_eq!(run(&s, "get a\r\n"), "END\r\n");
}

#[test]
fn eviction_is_lru_and_counts() {
    // Items of 1-byte keys and 100-byte values: 101 + overhead each; room for 10.
    let item = 101 + ITEM_OVERHEAD;
    let (s, _) = store_with(item * 10 + item / 2, true);
    assert_eq!(s.shard_total(), 1);
    let value = "v".repeat(100);
    for k in 0..10 {
        run(&s, &format!("set {k} 0 0 100\r\n{value}\r\n"));
    }
    // Reads and touches are uses: 0 and 1 become the most recently used.
    run(&s, "get 0\r\ntouch 1 0\r\n");
    for k in ["a", "b", "c"] {
        assert_eq!(
            run(&s, &format!("set {k} 0 0 100\r\n{value}\r\n")),
            "STORED\r\n"
        );
    }
    let st = s.stats();
    assert_eq!(
        (st.evictions, st.evicted_unfetched, st.curr_items),
        (3, 3, 10)
    );
    assert!(st.bytes <= st.limit_maxbytes);
    assert_eq!(run(&s, "get 2 3 4\r\n"), "END\r\n");
    assert_eq!(run(&s, "get 0 1 5\r\n").matches("VALUE").count(), 3);
    let order: Vec<String> = s
        .lru_keys(0)
        .into_iter()
        .map(|k| String::from_utf8(k).unwrap())
        .collect();
    assert_eq!(order, ["6", "7", "8", "9", "a", "b", "c", "0", "1", "5"]);
}

#[test]
fn expired_items_are_reclaimed_before_live_ones() {
    let item = 101 + ITEM_OVERHEAD;
    let (s, clock) = store_with(item * 3, true);
    let value = "v".repeat(100);
    run(&s, &format!("set a 0 0 100\r\n{value}\r\n"));
    run(&s, &format!("set b 0 5 100\r\n{value}\r\n"));
    run(&s, &format!("set c 0 0 100\r\n{value}\r\n"));
    clock.advance(5);
    run(&s, &format!("set d 0 0 100\r\n{value}\r\n"));
    let st = s.stats();
    assert_eq!((st.evictions, st.expired_unfetched), (0, 1));
    assert_eq!(run(&s, "get a c d\r\n").matches("VALUE").count(), 3);
}

#[test]
fn bytes_never_exceed_the_limit_under_random_load() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (s, _) = store_with(50_000, true);
    for _ in 0..5000 {
        let key = rng.gen_range(0..500);
        let len = rng.gen_range(0..2000);
        let cmd = match rng.gen_range(0..4) {
            0 => format!("append {key} 0 0 {len}\r\n{}\r\n", "x".repeat(len)),
            1 => format!("get {key}\r\n"),
            _ => format!("set {key} 0 0 {len}\r\n{}\r\n", "x".repeat(len)),
        };
        run(&s, &cmd);
        let st = s.stats();
        assert!(st.bytes <= st.limit_maxbytes, "{st:?}");
    }
    assert!(s.stats().evictions > 0);
}

#[test]
fn refuse_mode_reports_out_of_memory() {
    let item = 101 + ITEM_OVERHEAD;
    let (s, _) = store_with(item * 2, false);
    let value = "v".repeat(100);
    run(&s, &format!("set a 0 0 100\r\n{value}\r\n"));
    run(&s, &format!("set b 0 0 100\r\n{value}\r\n"));
    assert_eq!(
        run(&s, &format!("set c 0 0 100\r\n{value}\r\n")),
        "SERVER_ERROR out of memory storing object\r\n"
    );
    // Replacing an item with one of the same size needs no new room.
    assert_eq!(
        run(&s, &format!("set a 0 0 100\r\n{value}\r\n")),
        "STORED\r\n"
    );
    assert_eq!(run(&s, "append a 0 0 1\r\nx\r\n"), "NOT_STORED\r\n");
    assert_eq!(s.stats().evictions, 0);
}

#[test]
fn item_larger_than_the_limit_is_out_of_memory() {
    let (s, _) = store_with(1000, true);
    run(&s, "set k 0 0 1\r\nx\r\n");
    let value = "v".repeat(1000);
    assert_eq!(
        run(&s, &format!("set k 0 0 1000\r\n{value}\r\n")),
        "SERVER_ERROR out of memory storing object\r\n"
    );
    // A failed set drops the old value, as memcached does; nothing was evicted for it.
    assert_eq!(run(&s, "get k\r\n"), "END\r\n");
    assert_eq!(s.stats().evictions, 0);
}

#[test]
fn shards_split_the_limit_and_hold_a_maximal_item() {
    let (s, _) = store();
    assert_eq!(s.shard_total(), 16);
    let (s, _) = store_with(3 << 20, true);
    assert_eq!(s.shard_total(), 2);
    let value = "v".repeat(1024 * 1024);
    assert_eq!(
        run(&s, &format!("set k 0 0 {}\r\n{value}\r\n", value.len())),
        "STORED\r\n"
    );
}

#[test]
fn concurrent_clients_see_consistent_counters() {
    let (s, _) = store();
    let s = Arc::new(s);
    run(&s, "set n 0 0 1\r\n0\r\n");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..1000 {
                    run(&s, "incr n 1\r\n");
                    run(&s, &format!("set {t}-{i} 0 0 1\r\nx\r\n"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(run(&s, "get n\r\n"), "VALUE n 0 4\r\n4000\r\nEND\r\n");
    assert_eq!(s.stats().curr_items, 4001);
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
}

// The meta protocol. Expected replies are memcached 1.6.18's to the same requests on a fresh
// instance (CAS uniques count from 1 there too), except where a comment says otherwise.

#[test]
fn mg_returns_flags_in_request_order() {
    let (s, _) = store();
    run(&s, "set foo 5 0 2\r\nhi\r\n");
    assert_eq!(
        run(&s, "mg foo s v f t c k O123 q\r\n"),
        "VA 2 s2 f5 t-1 c1 kfoo O123\r\nhi\r\n"
    );
    assert_eq!(run(&s, "mg foo\r\n"), "HD\r\n");
    // Quiet drops only the miss.
    assert_eq!(run(&s, "mg foo q\r\n"), "HD\r\n");
    assert_eq!(run(&s, "mg nope v k O9\r\n"), "EN knope O9\r\n");
    assert_eq!(run(&s, "mg nope v k O9 q\r\n"), "");
    // P and L are accepted and ignored.
    assert_eq!(run(&s, "mg foo P L c\r\n"), "HD c1\r\n");
    let st = s.stats();
    assert_eq!((st.cmd_get, st.get_hits, st.get_misses), (6, 4, 2));
}

#[test]
fn mg_with_a_ttl_is_a_touch() {
    let (s, clock) = store();
    run(&s, "set k 0 100 1\r\nx\r\n");
    // `t` reads the TTL as it is when the flag is reached.
    assert_eq!(run(&s, "mg k t T30\r\n"), "HD t100\r\n");
    assert_eq!(run(&s, "mg k T30 t\r\n"), "HD t30\r\n");
    clock.advance(10);
    assert_eq!(run(&s, "mg k t\r\n"), "HD t20\r\n");
    // A TTL in the past: memcached subtracts in unsigned 32 bits (its "long ago" is 1 s
    // after it started, which it dates 62 s back).
    assert_eq!(
        run(&s, "mg k T-1 t\r\n"),
        format!("HD t{}\r\n", 1u32.wrapping_sub(62 + 10))
    );
    assert_eq!(run(&s, "mg k\r\n"), "EN\r\n");
    let st = s.stats();
    // A hit with T counts as a touch only; a miss is always a get.
    assert_eq!((st.cmd_touch, st.touch_hits, st.touch_misses), (3, 3, 0));
    assert_eq!((st.cmd_get, st.get_hits, st.get_misses), (2, 1, 1));
}

#[test]
fn mg_base64_keys() {
    let (s, _) = store();
    run(&s, "set foo 0 0 2\r\nhi\r\n");
    // Stored by a text command: the key is not binary, so `k` returns it as it is.
    assert_eq!(run(&s, "mg Zm9v b v k\r\n"), "VA 2 kfoo\r\nhi\r\n");
    // memcached's decoder skips characters outside the alphabet.
    assert_eq!(run(&s, "mg Zm!9v b k\r\n"), "HD kfoo\r\n");
    assert_eq!(run(&s, "ms YmFy 3 b k c\r\nabc\r\n"), "HD kYmFy b c2\r\n");
    assert_eq!(run(&s, "mg YmFy b k\r\n"), "HD kYmFy b\r\n");
    // Stored by `ms … b`: binary, whichever way it is named.
    assert_eq!(run(&s, "mg bar k v\r\n"), "VA 3 kYmFy b\r\nabc\r\n");
    assert_eq!(
        run(&s, "me bar\r\nme YmFy b\r\n"),
        "ME YmFy exp=-1 la=0 cas=2 fetch=yes cls=1 size=65\r\n".repeat(2)
    );
    // A miss returns the request's key, re-encoded from what it decoded to.
    assert_eq!(run(&s, "mg bm9w!ZQ== b k\r\n"), "EN kbm9wZQ== b\r\n");
    // A text set, or an append (a new item), leaves the key not binary.
    run(&s, "set bar 0 0 1\r\nx\r\n");
    assert_eq!(run(&s, "mg YmFy b k\r\n"), "HD kbar\r\n");
    run(&s, "ms YmFy 1 b\r\nx\r\n");
    assert_eq!(run(&s, "ms YmFy 1 b k MA\r\ny\r\n"), "HD kYmFy b\r\n");
    assert_eq!(run(&s, "mg bar k v\r\n"), "VA 2 kbar\r\nxy\r\n");
}

#[test]
fn mg_autovivifies_and_hands_out_win_tokens() {
    let (s, _) = store();
    assert_eq!(
        run(&s, "mg viv N30 t c v s k\r\n"),
        "VA 0 t30 c1 s0 kviv W\r\n\r\n"
    );
    // The created item was bumped after answering: fetched now; its token is gone.
    assert_eq!(
        run(&s, "mg viv N30 t c v h\r\n"),
        "VA 0 t30 c1 h1 Z\r\n\r\n"
    );
    assert_eq!(
        run(&s, "me viv\r\n"),
        "ME viv exp=-30 la=0 cas=1 fetch=yes cls=1 size=62\r\n"
    );
    // Recache: won once when the TTL left is below the threshold.
    run(&s, "set r1 0 100 1\r\nx\r\n");
    assert_eq!(run(&s, "mg r1 R200 c\r\n"), "HD c2 W\r\n");
    assert_eq!(run(&s, "mg r1 R200 c\r\n"), "HD c2 Z\r\n");
    run(&s, "set r2 0 100 1\r\nx\r\n");
    assert_eq!(run(&s, "mg r2 R50\r\nmg r2 R0\r\n"), "HD\r\nHD\r\n");
    // An item without expiry never wins.
    run(&s, "set r3 0 0 1\r\nx\r\n");
    assert_eq!(run(&s, "mg r3 R200\r\n"), "HD\r\n");
    // An item mg created is not marked binary, even when named in base64.
    assert_eq!(run(&s, "mg dmI= b N30 k\r\n"), "HD kvb W\r\n");
    assert_eq!(run(&s, "mg vb k\r\n"), "HD kvb Z\r\n");
    let st = s.stats();
    // Creation is a hit, not a miss, and an item stored.
    assert_eq!((st.get_hits, st.get_misses, st.total_items), (9, 0, 5));
}

#[test]
fn invalidation_marks_stale_and_hands_the_token_on() {
    let (s, _) = store();
    run(&s, "set k 0 100 1\r\nx\r\n");
    assert_eq!(run(&s, "md k I T30\r\n"), "HD\r\n");
    assert_eq!(run(&s, "mg k c t\r\n"), "HD c2 t30 X W\r\n");
    assert_eq!(run(&s, "mg k c t\r\n"), "HD c2 t30 Z X\r\n");
    // An older CAS with I stores anyway, stale, keeping the TTL and the token state.
    assert_eq!(run(&s, "ms k 1 I C1 T999 c\r\ny\r\n"), "HD c3\r\n");
    assert_eq!(run(&s, "mg k c t v\r\n"), "VA 1 c3 t30 Z X\r\ny\r\n");
    // The current CAS stores normally.
    assert_eq!(run(&s, "ms k 1 I C3 c\r\nz\r\n"), "HD c4\r\n");
    assert_eq!(run(&s, "mg k c t\r\n"), "HD c4 t-1\r\n");
    // A newer one is refused.
    assert_eq!(run(&s, "ms k 1 I C9 c\r\nw\r\n"), "EX c0\r\n");
    assert_eq!(run(&s, "md k I C99\r\n"), "EX\r\n");
    assert_eq!(run(&s, "md k q I\r\n"), "");
    assert_eq!(run(&s, "mg k\r\n"), "HD X W\r\n");
    assert_eq!(run(&s, "md nope I\r\nmd nope q\r\n"), "NF\r\nNF\r\n");
    assert_eq!(run(&s, "md k q C4\r\n"), "EX\r\n");
    assert_eq!(run(&s, "md k q k O1\r\n"), "");
    assert_eq!(run(&s, "mg k\r\n"), "EN\r\n");
    let st = s.stats();
    // Invalidation deletes nothing; a CAS mismatch counts as a miss.
    assert_eq!((st.delete_hits, st.delete_misses), (1, 4));
    assert_eq!((st.cas_hits, st.cas_badval), (2, 1));
}

#[test]
fn md_echoes_opaque_and_key() {
    let (s, _) = store();
    run(&s, "set k 0 0 1\r\nx\r\n");
    assert_eq!(run(&s, "md aw== b k O7\r\n"), "HD kaw== b O7\r\n");
    assert_eq!(run(&s, "md k O8 k\r\n"), "NF O8 kk\r\n");
}

#[test]
fn ms_modes_and_cas() {
    let (s, _) = store();
    assert_eq!(run(&s, "ms m 1 MR\r\nx\r\n"), "NS\r\n");
    assert_eq!(run(&s, "ms m 1 ME c\r\nx\r\n"), "HD c1\r\n");
    assert_eq!(run(&s, "ms m 1 ME c\r\ny\r\n"), "NS c0\r\n");
    assert_eq!(run(&s, "ms m 1 MA\r\nb\r\n"), "HD\r\n");
    assert_eq!(run(&s, "ms m 1 MP k O5 c\r\na\r\n"), "HD km O5 c3\r\n");
    assert_eq!(run(&s, "mg m v c\r\n"), "VA 3 c3\r\naxb\r\n");
    // Append and prepend compare a CAS themselves.
    assert_eq!(run(&s, "ms m 1 MA C99\r\nz\r\n"), "EX\r\n");
    assert_eq!(run(&s, "ms m 1 MA C3\r\nc\r\n"), "HD\r\n");
    // Replace and set with a CAS are a CAS store.
    assert_eq!(run(&s, "ms m 1 MR C99\r\nz\r\n"), "EX\r\n");
    assert_eq!(run(&s, "ms nope 1 MS C1 c\r\nz\r\n"), "NF c0\r\n");
    assert_eq!(run(&s, "ms nope 1 MA\r\nz\r\n"), "NS\r\n");
    // Quiet drops only HD.
    assert_eq!(run(&s, "ms m 2 F7 T100 q\r\nhi\r\n"), "");
    assert_eq!(run(&s, "mg m v f t\r\n"), "VA 2 f7 t100\r\nhi\r\n");
    assert_eq!(run(&s, "ms m 1 MR q\r\nr\r\n"), "");
    assert_eq!(run(&s, "ms m 1 ME q\r\nr\r\n"), "NS\r\n");
    // A CAS of 0 never matches; I without a CAS changes nothing.
    assert_eq!(run(&s, "ms m 1 C0\r\nr\r\n"), "EX\r\n");
    assert_eq!(run(&s, "ms m 1 MS I\r\ns\r\n"), "HD\r\n");
    assert_eq!(run(&s, "mg m v\r\n"), "VA 1\r\ns\r\n");
    // Add ignores a CAS.
    assert_eq!(run(&s, "ms m 0 ME C5 c\r\n\r\n"), "NS c0\r\n");
    assert_eq!(run(&s, "ms e 0 ME C5 c\r\n\r\n"), "HD c8\r\n");
    assert_eq!(run(&s, "mg e c v\r\n"), "VA 0 c8\r\n\r\n");
    let st = s.stats();
    assert_eq!(st.cmd_set, 17);
    assert_eq!((st.cas_hits, st.cas_misses, st.cas_badval), (0, 1, 2));
}

#[test]
fn ma_counts_creates_and_keeps_memcacheds_ttl_quirk() {
    let (s, _) = store();
    run(&s, "set n 0 100 1\r\n9\r\n");
    // 10 no longer fits in the item: memcached links a new one and then sets the TTL on the
    // old one, so the reply shows the new TTL and the item keeps its old one.
    assert_eq!(run(&s, "ma n T500 t v c\r\n"), "VA 2 t500 c2\r\n10\r\n");
    assert_eq!(run(&s, "mg n t v c\r\n"), "VA 2 t100 c2\r\n10\r\n");
    // Rewritten in place, the TTL sticks. (memcached pads the shorter number: "7 ".)
    assert_eq!(run(&s, "ma n T500 t MD D3\r\n"), "HD t500\r\n");
    assert_eq!(run(&s, "mg n t v\r\n"), "VA 1 t500\r\n7\r\n");
    assert_eq!(run(&s, "ma n M- D20 v\r\n"), "VA 1\r\n0\r\n");
    assert_eq!(
        run(&s, "ma n D18446744073709551615 v\r\n"),
        "VA 20\r\n18446744073709551615\r\n"
    );
    assert_eq!(run(&s, "ma n C99 v\r\n"), "EX\r\n");
    // A CAS of 0 is no CAS; incr wraps at 2^64.
    assert_eq!(run(&s, "ma n C0 v c\r\n"), "VA 1 c6\r\n0\r\n");
    assert_eq!(run(&s, "ma n q\r\nma n q v\r\n"), "");
    assert_eq!(run(&s, "mg n v\r\n"), "VA 1\r\n2\r\n");
    // N creates the initial value (not counted), answered even when quiet.
    assert_eq!(
        run(&s, "ma c N0 J7 D3 v t c k O5\r\n"),
        "VA 1 t-1 c9 kc O5\r\n7\r\n"
    );
    assert_eq!(run(&s, "ma c N0 J7 D3 v q\r\n"), "");
    assert_eq!(run(&s, "ma c2 q N0 J10 c\r\n"), "HD c11\r\n");
    assert_eq!(run(&s, "ma c3 q\r\nma c3 MD\r\n"), "NF\r\nNF\r\n");
    assert_eq!(run(&s, "ma c3 q C5 N60 t\r\n"), "HD t60\r\n");
    assert_eq!(run(&s, "ma Yzk= b k v N0 J1\r\n"), "VA 1 kYzk= b\r\n1\r\n");
    assert_eq!(run(&s, "ma Yzk= b k v\r\n"), "VA 1 kYzk= b\r\n2\r\n");
    assert_eq!(run(&s, "mg c9 k\r\n"), "HD kc9\r\n");
    // An empty value is refused before the CAS is compared, other text after.
    run(&s, "set e 0 0 0\r\n\r\nset a 0 0 3\r\nabc\r\n");
    let non_numeric = "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";
    assert_eq!(run(&s, "ma e C5\r\n"), non_numeric);
    assert_eq!(run(&s, "ma a C5\r\n"), "EX\r\n");
    assert_eq!(run(&s, "ma a\r\n"), non_numeric);
    let st = s.stats();
    assert_eq!((st.incr_hits, st.incr_misses), (7, 1));
    assert_eq!((st.decr_hits, st.decr_misses), (2, 1));
}

#[test]
fn a_long_opaque_is_refused_after_the_flags_before_it() {
    let (s, _) = store();
    let long = format!("O{}", "1".repeat(32));
    run(&s, "set m 0 0 1\r\n1\r\n");
    let error = "CLIENT_ERROR opaque token too long\r\n";
    // Before T: nothing changed, and the item was not bumped (T delays the bump).
    assert_eq!(run(&s, &format!("mg m {long} T30\r\n")), error);
    assert_eq!(run(&s, "mg m t h\r\n"), "HD t-1 h0\r\n");
    // After T: the TTL is set.
    assert_eq!(run(&s, &format!("mg m T60 {long}\r\n")), error);
    assert_eq!(run(&s, "mg m t h\r\n"), "HD t60 h1\r\n");
    // Created, TTL set, no token handed out, nothing counted.
    assert_eq!(run(&s, &format!("mg new N30 T60 t {long}\r\n")), error);
    assert_eq!(run(&s, "mg new t h c\r\n"), "HD t60 h0 c2\r\n");
    // Quiet never drops an error; ma counts before refusing.
    assert_eq!(run(&s, &format!("mg miss q {long}\r\n")), error);
    assert_eq!(run(&s, &format!("md m q {long}\r\n")), error);
    assert_eq!(run(&s, &format!("ma m q {long}\r\n")), error);
    assert_eq!(run(&s, &format!("ma m2 q N0 {long}\r\n")), error);
    assert_eq!(
        run(&s, "mg m v\r\nmg m2 v\r\n"),
        "VA 1\r\n2\r\nVA 1\r\n0\r\n"
    );
    // A long opaque on ms is the codec's, before the data block is read.
    assert_eq!(run(&s, &format!("ms m 1 {long}\r\nx\r\n")), error);
}

#[test]
fn mg_without_update_leaves_the_item_unfetched() {
    let (s, _) = store();
    run(&s, "set k 0 0 1\r\nx\r\n");
    assert_eq!(run(&s, "mg k u v\r\n"), "VA 1\r\nx\r\n");
    assert_eq!(run(&s, "mg k u h\r\n"), "HD h0\r\n");
    assert_eq!(run(&s, "mg k h\r\nmg k h\r\n"), "HD h0\r\nHD h1\r\n");
}

#[test]
fn last_access_is_refreshed_at_the_second_fetch() {
    // Not compared with memcached (time passes here): its segmented LRU's rule.
    let (s, clock) = store();
    run(&s, "set k 0 0 1\r\nx\r\n");
    clock.advance(10);
    assert_eq!(run(&s, "mg k l\r\n"), "HD l10\r\n");
    clock.advance(5);
    assert_eq!(run(&s, "mg k l\r\n"), "HD l15\r\n");
    assert_eq!(run(&s, "mg k l\r\n"), "HD l0\r\n");
    clock.advance(3);
    assert_eq!(
        run(&s, "get k\r\nmg k l\r\n"),
        "VALUE k 0 1\r\nx\r\nEND\r\nHD l3\r\n"
    );
    // A refused add and a count are uses that refresh it.
    assert_eq!(run(&s, "ms k 1 ME\r\ny\r\nmg k l\r\n"), "NS\r\nHD l0\r\n");
    run(&s, "set n 0 0 1\r\n1\r\n");
    clock.advance(4);
    assert_eq!(
        run(&s, "ma n\r\nme n\r\n"),
        "HD\r\nME n exp=-1 la=0 cas=3 fetch=no cls=1 size=61\r\n"
    );
}

#[test]
fn me_reports_the_item_as_memcached_does() {
    let (s, clock) = store();
    assert_eq!(run(&s, "me k\r\n"), "EN\r\n");
    run(&s, "set k 3 100 2\r\nhi\r\n");
    clock.advance(7);
    // Flags take 4 bytes only when non-zero; the values count their "\r\n".
    assert_eq!(
        run(&s, "me k\r\n"),
        "ME k exp=-93 la=7 cas=1 fetch=no cls=1 size=66\r\n"
    );
    run(&s, "get k\r\n");
    assert_eq!(
        run(&s, "me k\r\n"),
        "ME k exp=-93 la=7 cas=1 fetch=yes cls=1 size=66\r\n"
    );
    // Chunk sizes grow by 1.25; larger (chunked) items report the largest class.
    let value = "x".repeat(600_000);
    run(&s, &format!("set big 7 0 {}\r\n{value}\r\n", value.len()));
    assert_eq!(
        run(&s, "me big\r\n"),
        "ME big exp=-1 la=0 cas=2 fetch=no cls=39 size=600066\r\n"
    );
    run(&s, &format!("set mid 0 0 100\r\n{}\r\n", "x".repeat(100)));
    assert_eq!(
        run(&s, "me mid\r\n"),
        "ME mid exp=-1 la=0 cas=3 fetch=no cls=4 size=162\r\n"
    );
    // An expired item is gone.
    clock.advance(93);
    assert_eq!(run(&s, "me k\r\n"), "EN\r\n");
}
