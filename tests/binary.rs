//! memcached's binary protocol through memroute, checked against a real memcached 1.6.18:
//! a conformance table of packet exchanges run on memcached and on memroute (over three
//! memcached backends on an md5 ketama ring, and over an embedded cache), whose responses
//! must be the same bytes (CAS uniques normalised per connection, `Version`'s value masked);
//! then what cannot be compared byte for byte — stats, a missing counter's initial value,
//! the flush broadcast, memory under a huge announced value, text and binary clients on one
//! port.

mod common;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::binary::{
    self, arith, cas_of, concat, delete, explain_difference, first_difference, flush, get, noop,
    op, set, status, store, touch, BinConn, Entry, Req, Session, NO_CREATE,
};
use common::config::{config_toml, md5_pool_toml, named, pool_toml, TempFiles};
use common::{assert_rss, free_port, Client, Memcached, Proxy, RssPeak};

/// memcached as the table's reference and as memroute's backends: values up to 64 KiB
/// (memroute's pools get the same `item_size_max`), and no LRU background threads, whose
/// references to items can make an in-place `decr` copy the item instead (see
/// tests/embedded_differential.rs).
const MEMCACHED_ARGS: &[&str] = &[
    "-I",
    "64k",
    "-o",
    "slab_chunk_max=32768,no_lru_maintainer,no_lru_crawler",
];

/// The pools' `item_size_max`, as memcached's `-I` above.
const POOL_KEYS: &str = "item_size_max = \"64k\"\n";

/// A value well above the 64 KiB limit.
const TOO_LARGE: usize = 100_000;

/// A CAS that no item has.
const BAD_CAS: u64 = 0x0123_4567_89ab_cdef;

fn start_memcached() -> Memcached {
    Memcached::start_with(MEMCACHED_ARGS)
}

/// memroute and what it fronts.
struct Pool {
    proxy: Proxy,
    backends: Vec<Memcached>,
    _files: TempFiles,
}

/// memroute from a config file over three memcached (md5, ketama, named `a`, `b`, `c`).
/// Each memcached's CAS counter is moved 100,000 past the previous one's, so that items on
/// different backends never share a CAS unique (which the normalisation would merge).
fn three_backends() -> Pool {
    let backends: Vec<Memcached> = (0..3).map(|_| start_memcached()).collect();
    for (i, m) in backends.iter().enumerate() {
        advance_cas(m.port, i * 100_000);
    }
    let port = free_port();
    let files = TempFiles::new();
    let path = files.write(
        "memroute.toml",
        &config_toml(
            "threads = 2",
            &[md5_pool_toml("main", port, &named(&backends), POOL_KEYS)],
        ),
    );
    let proxy = Proxy::start_config(&path, port, &[]);
    Pool {
        proxy,
        backends,
        _files: files,
    }
}

/// memroute from a config file over one embedded cache.
fn embedded() -> Pool {
    let port = free_port();
    let files = TempFiles::new();
    let path = files.write(
        "memroute.toml",
        &config_toml(
            "threads = 2",
            &[pool_toml(
                "main",
                port,
                &["memory:64mb".to_string()],
                POOL_KEYS,
            )],
        ),
    );
    let proxy = Proxy::start_config(&path, port, &[]);
    Pool {
        proxy,
        backends: Vec::new(),
        _files: files,
    }
}

/// Stores `n` items (noreply, pipelined) on the memcached at `port`, then deletes the key.
fn advance_cas(port: u16, n: usize) {
    if n == 0 {
        return;
    }
    let mut c = Client::connect(port);
    let one = b"set __cas_advance 0 0 1 noreply\r\nx\r\n";
    for _ in 0..n / 10_000 {
        c.send(one.repeat(10_000));
    }
    c.send(one.repeat(n % 10_000));
    c.expect("delete __cas_advance\r\n", "DELETED\r\n");
}

/// `flush_all` in text on `port` (memroute broadcasts it to its backends).
fn flush_text(port: u16) {
    Client::connect(port).expect("flush_all\r\n", "OK\r\n");
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

fn filler(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i + seed as usize) % 26) as u8)
        .collect()
}

// ---- The conformance table ----

type Case = (&'static str, fn(&mut Session));

/// A case the embedded cache answers differently by design: a `decr` that makes the number
/// shorter stores it unpadded (memcached pads it with spaces to the old length; see
/// src/embedded/mod.rs).
const SHORTER_NUMBER: &str = "increment and decrement: a shorter number read back";

/// Cases left out of the embedded run, each documented as a difference.
const NOT_EMBEDDED: &[&str] = &[SHORTER_NUMBER];

/// Keys for the quiet pipeline (and for the check that they cover every backend).
fn pipeline_keys() -> Vec<String> {
    (0..60).map(|i| format!("pipe:{i}")).collect()
}

/// Keys a text line cannot carry as they are, and keys around them.
fn unusual_keys() -> Vec<Vec<u8>> {
    vec![
        b"a b".to_vec(),
        b"line\r\nbreak".to_vec(),
        b"nul\0byte".to_vec(),
        b"del\x7fkey".to_vec(),
        b" ".to_vec(),
        b"\r\n".to_vec(),
        b"\n".to_vec(),
        b"tab\tkey".to_vec(),
        b"\x01\x02\x03".to_vec(),
        "ключ".as_bytes().to_vec(),
        b"\xff\xfe\x80".to_vec(),
        // "a b" in base64: must stay a key of its own.
        b"YSBi".to_vec(),
        b"a".to_vec(),
        b"trailing ".to_vec(),
        b" leading".to_vec(),
    ]
}

fn cases() -> Vec<Case> {
    vec![
        ("get family: miss, then hit", |s| {
            s.call(&[
                get(op::GET, "gk"),
                get(op::GETK, "gk"),
                get(op::GETQ, "gk"),
                get(op::GETKQ, "gk"),
                noop(),
            ]);
            s.call(&[store(op::SET, "gk", 0xdead_beef, 0, "hello")]);
            s.call(&[
                get(op::GET, "gk"),
                get(op::GETK, "gk"),
                get(op::GETQ, "gk"),
                get(op::GETKQ, "gk"),
                noop(),
            ]);
        }),
        ("empty and binary values", |s| {
            s.call(&[store(op::SET, "empty", 1, 0, "")]);
            s.call(&[store(
                op::SET,
                "bin",
                2,
                0,
                b"\0\r\nEND\r\nVALUE x 0 1\r\n\xff",
            )]);
            s.call(&[
                get(op::GET, "empty"),
                get(op::GETK, "bin"),
                get(op::GETQ, "bin"),
            ]);
        }),
        ("set, add, replace and their quiet forms", |s| {
            s.call(&[store(op::SET, "s1", 5, 0, "v1")]);
            s.call(&[store(op::ADD, "s1", 6, 0, "v2")]);
            s.call(&[store(op::ADD, "s2", 7, 0, "v3")]);
            s.call(&[store(op::REPLACE, "s3", 8, 0, "v4")]);
            s.call(&[store(op::REPLACE, "s1", 9, 0, "v5")]);
            s.call(&[
                store(op::SETQ, "s4", 10, 0, "v6"),
                store(op::ADDQ, "s4", 0, 0, "x"),
                store(op::REPLACEQ, "s5", 0, 0, "x"),
                store(op::REPLACEQ, "s1", 11, 0, "v7"),
                store(op::ADDQ, "s6", 12, 0, "v8"),
                noop(),
            ]);
            s.call(&[
                get(op::GETK, "s1"),
                get(op::GETK, "s2"),
                get(op::GETK, "s3"),
                get(op::GETK, "s4"),
                get(op::GETK, "s5"),
                get(op::GETK, "s6"),
            ]);
        }),
        ("flags and expiration", |s| {
            let now = unix_now();
            s.call(&[
                store(op::SET, "e1", 1, 3600, "relative"),
                store(op::SET, "e2", u32::MAX, now + 3600, "absolute"),
                store(op::SET, "e3", 3, 2_592_000, "30 days, relative"),
                store(op::SET, "e4", 4, 1_000_000_000, "absolute, past"),
                store(op::SET, "e5", 0x8000_0000, 0, "high flag bit"),
            ]);
            s.call(&[
                get(op::GETK, "e1"),
                get(op::GETK, "e2"),
                get(op::GETK, "e3"),
                get(op::GETK, "e4"),
                get(op::GETK, "e5"),
            ]);
        }),
        (
            "expiration with the high bit set: an absolute time after 2038, not a past one",
            |s| {
                // memcached reads the 32-bit expiration unsigned: 0xffffffff is 2106, not -1.
                s.call(&[
                    store(op::SET, "h1", 1, 0xffff_ffff, "all ones"),
                    store(op::SET, "h2", 2, 0x8000_0000, "high bit"),
                    store(op::SET, "h3", 3, 0, "touched"),
                    store(op::SET, "h4", 4, 0, "gat"),
                ]);
                s.call(&[
                    touch(op::TOUCH, "h3", 0xffff_ffff),
                    touch(op::GATK, "h4", 0x9000_0000),
                ]);
                s.call(&[
                    get(op::GETK, "h1"),
                    get(op::GETK, "h2"),
                    get(op::GETK, "h3"),
                    get(op::GETK, "h4"),
                ]);
            },
        ),
        ("compare and swap: set and replace", |s| {
            let c1 = cas_of(&s.call(&[set("c1", "a")]));
            s.call(&[set("c1", "b").cas(BAD_CAS)]);
            let c2 = cas_of(&s.call(&[set("c1", "c").cas(c1)]));
            s.call(&[store(op::REPLACE, "c1", 0, 0, "d").cas(c1)]);
            s.call(&[store(op::REPLACE, "c1", 0, 0, "e").cas(c2)]);
            s.call(&[set("c-missing", "x").cas(c2)]);
            s.call(&[store(op::REPLACE, "c-missing", 0, 0, "x").cas(c2)]);
            s.call(&[
                store(op::SETQ, "c1", 0, 0, "f").cas(BAD_CAS),
                store(op::SETQ, "c2", 0, 0, "g").cas(BAD_CAS),
                noop(),
            ]);
            s.call(&[get(op::GETK, "c1"), get(op::GETK, "c2")]);
        }),
        ("compare and swap: add", |s| {
            let c = cas_of(&s.call(&[set("a1", "one")]));
            s.call(&[store(op::ADD, "a1", 0, 0, "two").cas(BAD_CAS)]);
            s.call(&[store(op::ADD, "a1", 0, 0, "three").cas(c)]);
            s.call(&[store(op::ADD, "a-missing", 0, 0, "four").cas(c)]);
            s.call(&[get(op::GETK, "a1"), get(op::GETK, "a-missing")]);
        }),
        ("delete, with and without CAS", |s| {
            s.call(&[delete(op::DELETE, "d1")]);
            let c = cas_of(&s.call(&[set("d1", "x")]));
            s.call(&[delete(op::DELETE, "d1").cas(BAD_CAS)]);
            s.call(&[delete(op::DELETE, "d1").cas(c)]);
            s.call(&[get(op::GETK, "d1")]);
            s.call(&[delete(op::DELETEQ, "d1")]);
            s.call(&[set("d2", "y"), set("d3", "z")]);
            s.call(&[
                delete(op::DELETEQ, "d2"),
                delete(op::DELETEQ, "d3").cas(BAD_CAS),
                noop(),
            ]);
            s.call(&[get(op::GETK, "d2"), get(op::GETK, "d3")]);
            s.call(&[delete(op::DELETE, "d-missing").cas(1234)]);
        }),
        ("increment and decrement", |s| {
            s.call(&[store(op::SET, "n", 7, 0, "10")]);
            s.call(&[arith(op::INCREMENT, "n", 5, 0, NO_CREATE)]);
            s.call(&[arith(op::DECREMENT, "n", 20, 0, NO_CREATE)]);
            s.call(&[arith(op::INCREMENT, "n", 9, 0, 0)]);
            s.call(&[arith(op::INCREMENT, "n", 1, 0, NO_CREATE)]);
            s.call(&[get(op::GETK, "n")]);
            s.call(&[
                arith(op::INCREMENTQ, "n", 100, 0, NO_CREATE),
                arith(op::DECREMENTQ, "n", 3, 0, NO_CREATE),
                noop(),
            ]);
            s.call(&[get(op::GET, "n")]);
            s.call(&[
                set("big", "18446744073709551615"),
                arith(op::INCREMENT, "big", 1, 0, NO_CREATE),
                arith(op::DECREMENT, "big", 5, 0, NO_CREATE),
                arith(op::INCREMENT, "big", 18, 0, NO_CREATE),
            ]);
        }),
        (SHORTER_NUMBER, |s| {
            s.call(&[set("n", "10"), arith(op::DECREMENT, "n", 1, 0, NO_CREATE)]);
            s.call(&[get(op::GETK, "n")]);
            s.call(&[
                set("big", "18446744073709551615"),
                arith(op::INCREMENT, "big", 1, 0, NO_CREATE),
                get(op::GET, "big"),
            ]);
        }),
        (
            "increment and decrement: missing counters, not created",
            |s| {
                s.call(&[
                    arith(op::INCREMENT, "missing", 1, 0, NO_CREATE),
                    arith(op::DECREMENT, "missing", 1, 0, NO_CREATE),
                ]);
                s.call(&[
                    arith(op::INCREMENTQ, "missing", 1, 5, NO_CREATE),
                    arith(op::DECREMENTQ, "missing", 1, 5, NO_CREATE),
                    noop(),
                ]);
                s.call(&[get(op::GETK, "missing")]);
            },
        ),
        ("increment and decrement: non-numeric values", |s| {
            s.call(&[set("s", "abc"), set("s2", "12abc"), set("s3", "")]);
            s.call(&[arith(op::INCREMENT, "s", 1, 0, NO_CREATE)]);
            s.call(&[arith(op::DECREMENTQ, "s", 1, 0, 0), noop()]);
            s.call(&[arith(op::INCREMENT, "s2", 1, 0, NO_CREATE)]);
            s.call(&[arith(op::INCREMENT, "s3", 1, 0, NO_CREATE)]);
            s.call(&[get(op::GETK, "s")]);
        }),
        ("increment and decrement with CAS", |s| {
            let c = cas_of(&s.call(&[set("nc", "1")]));
            s.call(&[arith(op::INCREMENT, "nc", 1, 0, NO_CREATE).cas(BAD_CAS)]);
            let c2 = cas_of(&s.call(&[arith(op::INCREMENT, "nc", 1, 0, NO_CREATE).cas(c)]));
            s.call(&[arith(op::DECREMENT, "nc", 1, 0, NO_CREATE).cas(c2)]);
            s.call(&[
                arith(op::INCREMENTQ, "nc", 1, 0, NO_CREATE).cas(BAD_CAS),
                noop(),
            ]);
            s.call(&[get(op::GETK, "nc")]);
        }),
        ("append and prepend", |s| {
            s.call(&[
                concat(op::APPEND, "ap", "x"),
                concat(op::PREPEND, "ap", "x"),
            ]);
            s.call(&[store(op::SET, "ap", 3, 0, "mid")]);
            s.call(&[concat(op::APPEND, "ap", "-end")]);
            s.call(&[concat(op::PREPEND, "ap", "start-")]);
            s.call(&[
                concat(op::APPENDQ, "ap", "!"),
                concat(op::PREPENDQ, "ap", "<"),
                concat(op::APPENDQ, "ap-missing", "x"),
                concat(op::PREPENDQ, "ap-missing", "x"),
                noop(),
            ]);
            let c = cas_of(&s.call(&[get(op::GETK, "ap")]));
            s.call(&[concat(op::APPEND, "ap", "bad").cas(BAD_CAS)]);
            s.call(&[concat(op::APPEND, "ap", "good").cas(c)]);
            s.call(&[concat(op::PREPEND, "ap-missing", "x").cas(c)]);
            s.call(&[get(op::GETK, "ap")]);
        }),
        ("touch and get-and-touch", |s| {
            s.call(&[
                touch(op::TOUCH, "t", 100),
                touch(op::GAT, "t", 100),
                touch(op::GATK, "t", 100),
                touch(op::GATQ, "t", 100),
                touch(op::GATKQ, "t", 100),
                noop(),
            ]);
            s.call(&[store(op::SET, "t", 9, 0, "val")]);
            s.call(&[touch(op::TOUCH, "t", 100)]);
            s.call(&[touch(op::GAT, "t", 200)]);
            s.call(&[
                touch(op::GATQ, "t", 300),
                touch(op::GATK, "t", 400),
                touch(op::GATKQ, "t", 500),
                noop(),
            ]);
            s.call(&[touch(op::TOUCH, "t", 1_000_000_000)]);
            s.call(&[get(op::GETK, "t")]);
            s.call(&[store(op::SET, "t2", 1, 0, "v")]);
            s.call(&[touch(op::GAT, "t2", 1_000_000_000)]);
            s.call(&[get(op::GETK, "t2")]);
        }),
        ("noop and version", |s| {
            s.call(&[noop(), Req::new(op::VERSION), noop()]);
        }),
        ("opaques echoed", |s| {
            s.call(&[
                set("o", "v").opaque(0),
                get(op::GET, "o").opaque(0xffff_ffff),
                get(op::GETK, "nope").opaque(0x8000_0000),
                get(op::GETQ, "o").opaque(0x0102_0304),
                Req::new(op::VERSION).opaque(7),
                delete(op::DELETE, "nope").opaque(0xdead_beef),
                arith(op::INCREMENT, "nope", 1, 0, NO_CREATE).opaque(0xcafe_babe),
                noop().opaque(0x1234_5678),
                Req::new(0x45).opaque(0xabcd_ef01),
            ]);
        }),
        ("flush and flushq", |s| {
            s.call(&[set("f1", "a"), set("f2", "b"), set("f3", "c")]);
            s.call(&[flush(op::FLUSH, None)]);
            s.call(&[
                get(op::GETK, "f1"),
                get(op::GETK, "f2"),
                get(op::GETK, "f3"),
            ]);
            s.call(&[set("f4", "d")]);
            s.call(&[flush(op::FLUSHQ, None), noop()]);
            s.call(&[get(op::GETK, "f4")]);
            s.call(&[set("f5", "e")]);
            s.call(&[flush(op::FLUSH, Some(0))]);
            s.call(&[get(op::GETK, "f5")]);
        }),
        ("quit: answered, then closed", |s| {
            s.call(&[set("q", "v")]);
            s.closing(&[Req::new(op::QUIT)]);
        }),
        ("quitq: not answered, closed", |s| {
            s.call(&[noop()]);
            s.closing(&[Req::new(op::QUITQ)]);
        }),
        (
            "sasl and unknown opcodes: unknown command, the connection continues",
            |s| {
                s.call(&[Req::new(op::SASL_LIST_MECHS)]);
                s.call(&[Req::new(op::SASL_AUTH).key("PLAIN").value(b"\0user\0pass")]);
                s.call(&[Req::new(op::SASL_STEP).key("PLAIN").value("more")]);
                s.call(&[
                    Req::new(0x30),
                    Req::new(0x45).value("a body to skip"),
                    Req::new(0xff),
                    // Verbosity without its extras (with them, memcached 1.6.18 swallows as
                    // many bytes again after the packet: see the memroute-only test).
                    Req::new(op::VERBOSITY),
                ]);
                s.call(&[store(op::SET, "after", 0, 0, "still here")]);
                s.call(&[get(op::GETK, "after")]);
            },
        ),
        ("stat of an unknown group", |s| {
            s.call(&[Req::new(op::STAT).key("no-such-group")]);
            s.call(&[noop()]);
        }),
        ("keys a text line cannot carry", |s| {
            let keys = unusual_keys();
            let mut sets: Vec<Req> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| store(op::SETQ, k, i as u32, 0, format!("value-{i}")))
                .collect();
            sets.push(noop());
            s.call(&sets);
            let gets: Vec<Req> = keys.iter().map(|k| get(op::GETK, k)).collect();
            s.call(&gets);
            let mut quiet: Vec<Req> = keys.iter().map(|k| get(op::GETKQ, k)).collect();
            quiet.push(get(op::GETKQ, b"a  b"));
            quiet.push(get(op::GETKQ, b"nul\0"));
            quiet.push(noop());
            s.call(&quiet);
        }),
        ("keys a text line cannot carry: every operation", |s| {
            let k: &[u8] = b"op key\r\n\0";
            s.call(&[store(op::SET, k, 42, 0, "1")]);
            s.call(&[arith(op::INCREMENT, k, 5, 0, NO_CREATE)]);
            s.call(&[concat(op::APPEND, k, "0"), concat(op::PREPEND, k, "9")]);
            s.call(&[get(op::GETK, k), get(op::GETQ, k)]);
            s.call(&[
                touch(op::TOUCH, k, 100),
                touch(op::GATK, k, 100),
                touch(op::GATKQ, k, 100),
            ]);
            let c = cas_of(&s.call(&[get(op::GET, k)]));
            s.call(&[set(k, "new").cas(BAD_CAS), set(k, "newer").cas(c)]);
            s.call(&[
                store(op::ADD, k, 0, 0, "x"),
                store(op::REPLACE, k, 1, 0, "replaced"),
            ]);
            s.call(&[get(op::GETK, k)]);
            s.call(&[
                delete(op::DELETE, k),
                get(op::GETK, k),
                delete(op::DELETEQ, k),
                noop(),
            ]);
            s.call(&[arith(op::DECREMENT, b"\x7f", 1, 0, NO_CREATE)]);
        }),
        ("long keys", |s| {
            let plain = vec![b'k'; 250];
            s.call(&[set(&plain, "plain 250"), get(op::GETK, &plain)]);
            let mut high = vec![0xc3; 250];
            high[249] = b'z';
            s.call(&[
                set(&high, "high bytes 250"),
                get(op::GETK, &high),
                get(op::GETKQ, &high),
            ]);
            let mut spaced = vec![b'k'; 186];
            spaced[100] = b' ';
            s.call(&[set(&spaced, "spaced 186"), get(op::GETK, &spaced)]);
        }),
        ("quiet pipeline: getkq over every backend, then noop", |s| {
            let keys = pipeline_keys();
            let mut sets: Vec<Req> = keys
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 4 != 3)
                .map(|(i, k)| store(op::SETQ, k, i as u32, 0, format!("v{i}-{}", "x".repeat(i))))
                .collect();
            sets.push(noop());
            s.call(&sets);
            let mut gets: Vec<Req> = Vec::new();
            for (i, k) in keys.iter().enumerate() {
                gets.push(get(op::GETKQ, k));
                if i % 7 == 0 {
                    gets.push(get(op::GETKQ, format!("pipe-miss:{i}")));
                }
            }
            gets.push(noop());
            s.call(&gets);
            // GetQ and GetKQ mixed, twice over, with loud gets among them.
            let mut mixed: Vec<Req> = Vec::new();
            for (i, k) in keys.iter().enumerate().rev() {
                mixed.push(get(if i % 2 == 0 { op::GETQ } else { op::GETKQ }, k));
                if i % 10 == 0 {
                    mixed.push(get(op::GETK, k));
                }
            }
            mixed.push(noop());
            mixed.extend(keys.iter().take(10).map(|k| get(op::GETQ, k)));
            mixed.push(noop());
            s.call(&mixed);
        }),
        ("quiet writes interleaved with failures", |s| {
            s.call(&[
                store(op::SETQ, "qa", 1, 0, "A"),
                store(op::SETQ, "qb", 2, 0, "B"),
                store(op::ADDQ, "qa", 0, 0, "dup"),
                store(op::SETQ, "qc", 3, 0, "C"),
                store(op::REPLACEQ, "q-missing", 0, 0, "x"),
                concat(op::APPENDQ, "q-missing", "x"),
                delete(op::DELETEQ, "q-missing"),
                arith(op::INCREMENTQ, "qa", 1, 0, NO_CREATE),
                store(op::SETQ, "qd", 4, 0, "D"),
                store(op::ADDQ, "qd", 0, 0, "dup"),
                noop(),
            ]);
            s.call(&[
                get(op::GETK, "qa"),
                get(op::GETK, "qb"),
                get(op::GETK, "qc"),
                get(op::GETK, "qd"),
                get(op::GETK, "q-missing"),
            ]);
        }),
        ("values near the size limit", |s| {
            let v = filler(60_000, 1);
            s.call(&[store(op::SET, "near", 5, 0, &v)]);
            s.call(&[get(op::GETK, "near")]);
            s.call(&[concat(op::APPEND, "near", filler(1_000, 2))]);
            s.call(&[get(op::GET, "near")]);
        }),
        (
            "too large: answered, the value swallowed, the connection continues",
            |s| {
                s.call(&[set("keep", "kept")]);
                s.call(&[set("big", filler(TOO_LARGE, 3))]);
                s.call(&[get(op::GETK, "keep"), get(op::GETK, "big")]);
                s.call(&[
                    store(op::SETQ, "big2", 0, 0, filler(TOO_LARGE, 4)),
                    store(op::ADD, "big3", 0, 0, filler(TOO_LARGE, 5)),
                    concat(op::APPEND, "keep", filler(TOO_LARGE, 6)),
                    concat(op::PREPENDQ, "keep", filler(TOO_LARGE, 7)),
                    noop(),
                ]);
                s.call(&[
                    get(op::GETK, "keep"),
                    get(op::GETK, "big2"),
                    get(op::GETK, "big3"),
                ]);
            },
        ),
        (
            "too large: a set drops the old value, add and replace do not",
            |s| {
                s.call(&[
                    set("tl", "old"),
                    set("tlq", "old"),
                    set("tlr", "old"),
                    set("tla", "old"),
                ]);
                s.call(&[set("tl", filler(TOO_LARGE, 8))]);
                s.call(&[store(op::SETQ, "tlq", 0, 0, filler(TOO_LARGE, 9)), noop()]);
                s.call(&[store(op::REPLACE, "tlr", 0, 0, filler(TOO_LARGE, 10))]);
                s.call(&[store(op::ADD, "tla", 0, 0, filler(TOO_LARGE, 11))]);
                s.call(&[
                    get(op::GETK, "tl"),
                    get(op::GETK, "tlq"),
                    get(op::GETK, "tlr"),
                    get(op::GETK, "tla"),
                ]);
            },
        ),
        ("packets split across reads, a byte at a time", |s| {
            s.call_split(
                &[
                    store(op::SET, "split", 3, 0, "split value"),
                    get(op::GETK, "split"),
                    get(op::GETKQ, "split-miss"),
                    store(op::SETQ, "split2", 4, 0, "second"),
                    concat(op::APPEND, "split", "+"),
                    get(op::GETQ, "split2"),
                    noop(),
                ],
                1,
            );
            s.call_split(
                &[set("split3", filler(5_000, 9)), get(op::GET, "split3")],
                1000,
            );
        }),
        ("large responses to a quiet pipeline", |s| {
            let mut sets: Vec<Req> = (0..10)
                .map(|i| store(op::SETQ, format!("large{i}"), i, 0, filler(60_000, i as u8)))
                .collect();
            sets.push(noop());
            s.call(&sets);
            let mut gets: Vec<Req> = (0..100)
                .map(|i| {
                    get(
                        if i % 3 == 0 { op::GETKQ } else { op::GETQ },
                        format!("large{}", i % 13),
                    )
                })
                .collect();
            gets.push(noop());
            s.call(&gets);
        }),
        ("quit after a pipeline: every response, then closed", |s| {
            s.closing(&[
                set("qp", "v"),
                get(op::GETK, "qp"),
                get(op::GETKQ, "qp-miss"),
                store(op::SETQ, "qp2", 0, 0, "w"),
                Req::new(op::QUIT),
            ]);
        }),
        ("quitq after a pipeline: every response, then closed", |s| {
            s.closing(&[
                set("qq", "v"),
                get(op::GETKQ, "qq"),
                store(op::ADDQ, "qq", 0, 0, "dup"),
                Req::new(op::QUITQ),
            ]);
        }),
        (
            "malformed after a pipeline: every response, the error, then closed",
            |s| {
                s.closing(&[
                    set("mp", "v"),
                    get(op::GETK, "mp"),
                    get(op::GETQ, "mp"),
                    get(op::GET, "mp").extras([0, 0, 0, 0]),
                    get(op::GET, "mp"),
                ]);
            },
        ),
        ("malformed: bad magic, closed without a reply", |s| {
            s.call(&[noop()]);
            s.closing(&[noop().magic(0x81)]);
        }),
        ("malformed: a text line on a binary connection", |s| {
            s.call(&[noop()]);
            s.closing_bytes("get (text)", b"get a_key_of_some_length\r\n");
        }),
        ("malformed: key beyond the body", |s| {
            s.call(&[noop()]);
            s.closing(&[get(op::GET, "0123456789").bodylen(5)]);
        }),
        ("malformed: key and extras beyond the body", |s| {
            s.call(&[noop()]);
            s.closing(&[store(op::SET, "abc", 0, 0, "").bodylen(9)]);
        }),
        ("malformed: get with extras", |s| {
            s.call(&[noop()]);
            s.closing(&[get(op::GET, "k").extras([0, 0, 0, 0])]);
        }),
        ("malformed: get without a key", |s| {
            s.call(&[noop()]);
            s.closing(&[Req::new(op::GETK)]);
        }),
        ("malformed: key longer than 250", |s| {
            s.call(&[noop()]);
            s.closing(&[get(op::GET, vec![b'x'; 251])]);
        }),
        ("malformed: set with a key longer than 250", |s| {
            s.call(&[noop()]);
            s.closing(&[set(vec![b'x'; 300], "v")]);
        }),
        ("malformed: set without extras", |s| {
            s.call(&[noop()]);
            s.closing(&[Req::new(op::SET).key("k").value("v")]);
        }),
        ("malformed: noop with a body", |s| {
            s.call(&[noop()]);
            s.closing(&[noop().value("x")]);
        }),
        ("malformed: version with a key", |s| {
            s.call(&[noop()]);
            s.closing(&[Req::new(op::VERSION).key("k")]);
        }),
        ("malformed: delete with extras", |s| {
            s.call(&[noop()]);
            s.closing(&[delete(op::DELETE, "k").extras([0, 0, 0, 0])]);
        }),
        ("malformed: increment with short extras", |s| {
            s.call(&[noop()]);
            s.closing(&[Req::new(op::INCREMENT).key("k").extras([0; 8])]);
        }),
        ("malformed: touch without extras", |s| {
            s.call(&[noop()]);
            s.closing(&[Req::new(op::TOUCH).key("k")]);
        }),
        ("malformed: flush with a key", |s| {
            s.call(&[noop()]);
            s.closing(&[Req::new(op::FLUSH).key("k")]);
        }),
        ("malformed: quit with a body", |s| {
            s.call(&[noop()]);
            s.closing(&[Req::new(op::QUIT).value("x")]);
        }),
        ("malformed: stat with extras", |s| {
            s.call(&[noop()]);
            s.closing(&[Req::new(op::STAT).extras([0, 0, 0, 0])]);
        }),
        ("malformed: sasl auth without a mechanism", |s| {
            s.call(&[noop()]);
            s.closing(&[Req::new(op::SASL_AUTH).value("x")]);
        }),
        ("malformed: sasl list mechs with a body", |s| {
            s.call(&[noop()]);
            s.closing(&[Req::new(op::SASL_LIST_MECHS).value("x")]);
        }),
    ]
}

/// Runs every case on memcached and through memroute on `port` (both flushed first, each
/// on fresh connections), and fails listing every case whose transcripts differ.
fn run_table(memcached: &Memcached, port: u16, what: &str, embedded: bool) {
    let cases = cases();
    let mut names = std::collections::HashSet::new();
    for (name, _) in &cases {
        assert!(names.insert(*name), "case {name:?} twice");
    }
    let mut failures = Vec::new();
    for (name, case) in &cases {
        if embedded && NOT_EMBEDDED.contains(name) {
            continue;
        }
        flush_text(memcached.port);
        flush_text(port);
        let mut reference = Session::open(memcached.port);
        case(&mut reference);
        if let Some(bad) = reference
            .transcript
            .iter()
            .find(|e| matches!(e, Entry::Timeout(_) | Entry::Garbage(_)))
        {
            panic!("case {name}: memcached itself stalled ({bad:?}): the case is wrong");
        }
        let mut proxied = Session::open(port);
        case(&mut proxied);
        if first_difference(&reference.transcript, &proxied.transcript).is_some() {
            failures.push(format!(
                "case {name:?}: {}",
                explain_difference(
                    "memcached",
                    &reference.transcript,
                    what,
                    &proxied.transcript
                )
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ between memcached and {what}:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn conformance_table_over_three_memcached_backends() {
    let memcached = start_memcached();
    let pool = three_backends();
    run_table(&memcached, pool.proxy.port, "memroute (3 backends)", false);
}

#[test]
fn conformance_table_over_an_embedded_cache() {
    let memcached = start_memcached();
    let pool = embedded();
    run_table(&memcached, pool.proxy.port, "memroute (embedded)", true);
}

// ---- What the table cannot compare ----

/// memcached's answer to an opcode it does not know, as bytes.
fn unknown_command(opcode: u8, opaque: u32) -> Vec<u8> {
    let mut p = vec![0x81, opcode, 0, 0, 0, 0, 0x00, 0x81];
    p.extend(15u32.to_be_bytes());
    p.extend(opaque.to_be_bytes());
    p.extend([0; 8]);
    p.extend(b"Unknown command");
    p
}

/// memcached 1.6.18 answers an unknown opcode after skipping `bodylen` bytes counted from
/// after its extras and key (so a Verbosity, whose 4 bytes of extras are its whole body,
/// makes it eat 4 bytes of the next packet); memroute skips the body the header announces
/// and answers at once. The answer is memcached's bytes.
#[test]
fn unknown_opcodes_with_extras_and_key_skip_exactly_their_body() {
    for pool in [three_backends(), embedded()] {
        let mut c = BinConn::open(pool.proxy.port);
        let mut bytes = Req::new(op::VERBOSITY)
            .extras(1u32.to_be_bytes())
            .opaque(0x0101_0101)
            .bytes();
        bytes.extend(
            Req::new(0x46)
                .extras([1, 2, 3])
                .key("some key")
                .value("and a value")
                .opaque(0x0202_0202)
                .bytes(),
        );
        bytes.extend(noop().opaque(0x0303_0303).bytes());
        assert!(c.send(&bytes));
        let got = c
            .read_through(op::NOOP, 0x0303_0303)
            .expect("three responses");
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[0].raw,
            unknown_command(op::VERBOSITY, 0x0101_0101),
            "{got:?}"
        );
        assert_eq!(got[1].raw, unknown_command(0x46, 0x0202_0202), "{got:?}");
        assert_eq!(got[2].status(), status::OK);
    }
}

/// memroute creates a missing counter with the request's initial value (as the protocol
/// says), returns it, and stores it with flags 0. Checked on memroute alone: memcached
/// 1.6.18 is known to have created such counters from the delta.
/// memroute's documented limit: a key with bytes a text line cannot carry goes upstream in
/// base64, and meta keys are at most 250 characters, so such a key may have 186 bytes at
/// most; a longer one is refused with Invalid arguments and the connection goes on. Plain
/// keys keep memcached's 250.
#[test]
fn long_keys_a_text_line_cannot_carry_are_refused_and_the_connection_goes_on() {
    for pool in [three_backends(), embedded()] {
        let mut c = BinConn::open(pool.proxy.port);
        let mut spaced = vec![b'k'; 250];
        spaced[100] = b' ';
        for req in [
            set(&spaced, "v"),
            get(op::GETK, &spaced),
            delete(op::DELETE, &spaced),
        ] {
            let r = c.call(&req);
            assert_eq!(
                (r.status(), r.value()),
                (status::EINVAL, &b"Invalid arguments"[..]),
                "{r:?}"
            );
        }
        let mut fits = vec![b's'; 186];
        fits[0] = 0;
        assert_eq!(c.call(&set(&fits, "nul 186")).status(), status::OK);
        let r = c.call(&get(op::GETK, &fits));
        assert_eq!(
            (r.status(), r.key(), r.value()),
            (0, &fits[..], &b"nul 186"[..])
        );
        let plain = vec![b'p'; 250];
        assert_eq!(c.call(&set(&plain, "plain 250")).status(), status::OK);
        assert_eq!(c.call(&get(op::GET, &plain)).value(), b"plain 250");
    }
}

#[test]
fn a_missing_counter_is_created_with_the_initial_value() {
    for pool in [three_backends(), embedded()] {
        let mut c = BinConn::open(pool.proxy.port);
        let r = c.call(&arith(op::INCREMENT, "ctr", 5, 100, 0));
        assert_eq!((r.status(), r.counter()), (status::OK, Some(100)), "{r:?}");
        assert_ne!(r.cas(), 0, "{r:?}");
        let g = c.call(&get(op::GET, "ctr"));
        assert_eq!(
            (g.status(), g.flags(), g.value()),
            (0, Some(0), &b"100"[..]),
            "{g:?}"
        );
        let r = c.call(&arith(op::INCREMENT, "ctr", 5, 100, 0));
        assert_eq!(r.counter(), Some(105), "{r:?}");
        let r = c.call(&arith(op::DECREMENT, "dctr", 5, 50, 3600));
        assert_eq!((r.status(), r.counter()), (status::OK, Some(50)), "{r:?}");
        let g = c.call(&get(op::GET, "dctr"));
        assert_eq!(g.value(), b"50", "{g:?}");
        // Quiet: created, not answered.
        let mut bytes = arith(op::INCREMENTQ, "qctr", 1, 7, 0).bytes();
        bytes.extend(noop().opaque(9).bytes());
        assert!(c.send(&bytes));
        let got = c.read_through(op::NOOP, 9).expect("the noop");
        assert_eq!(got.len(), 1, "IncrementQ answered: {got:?}");
        let g = c.call(&get(op::GET, "qctr"));
        assert_eq!(g.value(), b"7", "{g:?}");
        // A key a text line cannot carry.
        let r = c.call(&arith(op::DECREMENT, "new\r\nctr", 1, 9, 0));
        assert_eq!(r.counter(), Some(9), "{r:?}");
        let g = c.call(&get(op::GET, "new\r\nctr"));
        assert_eq!(g.value(), b"9", "{g:?}");
    }
}

/// Reads `Stat` responses through the empty-key packet that ends them, checking each
/// one's shape; returns (name, value) pairs.
fn read_stats(c: &mut BinConn, opaque: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        let p = c
            .read_packet(binary::READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("stats ended early after {out:?}: {e:?}"));
        assert_eq!(
            (
                p.magic(),
                p.opcode(),
                p.status(),
                p.extlen(),
                p.opaque(),
                p.cas()
            ),
            (0x81, op::STAT, 0, 0, opaque, 0),
            "{p:?}"
        );
        assert_eq!(p.bodylen(), p.keylen() + p.value().len(), "{p:?}");
        if p.keylen() == 0 {
            assert_eq!(p.bodylen(), 0, "the last stats packet has no body: {p:?}");
            return out;
        }
        out.push((
            String::from_utf8_lossy(p.key()).into_owned(),
            String::from_utf8_lossy(p.value()).into_owned(),
        ));
    }
}

fn cmd_flush(c: &mut BinConn, opaque: u32) -> u64 {
    assert!(c.send(&Req::new(op::STAT).opaque(opaque).bytes()));
    let stats = read_stats(c, opaque);
    for name in ["pid", "uptime", "version", "curr_connections", "cmd_get"] {
        assert!(
            stats.iter().any(|(n, _)| n == name),
            "no {name} in {stats:?}"
        );
    }
    let mut names = std::collections::HashSet::new();
    for (n, _) in &stats {
        assert!(names.insert(n.clone()), "stat {n} twice");
    }
    stats
        .iter()
        .find(|(n, _)| n == "cmd_flush")
        .unwrap_or_else(|| panic!("no cmd_flush in {stats:?}"))
        .1
        .parse()
        .expect("cmd_flush is a number")
}

/// `Stat`: one packet per stat (key and value), ended by an empty one — the shape memcached
/// answers too — and `cmd_flush` counts binary flushes.
#[test]
fn stats_come_one_packet_each_and_count_flushes() {
    let memcached = start_memcached();
    let pool = three_backends();
    for port in [memcached.port, pool.proxy.port] {
        let mut c = BinConn::open(port);
        let before = cmd_flush(&mut c, 0x11);
        let r = c.call(&flush(op::FLUSH, None));
        assert_eq!(r.status(), 0, "{r:?}");
        assert_eq!(cmd_flush(&mut c, 0x12), before + 1);
        let mut bytes = flush(op::FLUSHQ, None).bytes();
        bytes.extend(noop().opaque(3).bytes());
        assert!(c.send(&bytes));
        assert_eq!(c.read_through(op::NOOP, 3).expect("noop").len(), 1);
        assert_eq!(cmd_flush(&mut c, 0x13), before + 2);
        // The connection goes on after stats.
        let r = c.call(&noop().opaque(4));
        assert_eq!((r.opcode(), r.opaque()), (op::NOOP, 4));
    }
}

/// memroute's `Version` answer: the memcached version it speaks, then its own.
#[test]
fn version_names_memroute() {
    let pool = embedded();
    let mut c = BinConn::open(pool.proxy.port);
    let r = c.call(&Req::new(op::VERSION).opaque(77));
    let expected = common::VERSION_REPLY
        .strip_prefix("VERSION ")
        .unwrap()
        .trim_end();
    assert_eq!(
        (r.status(), r.opaque(), r.cas(), r.extlen(), r.keylen()),
        (0, 77, 0, 0, 0)
    );
    assert_eq!(r.value(), expected.as_bytes(), "{r:?}");
}

/// Which backend holds each key, asked directly: the index of the one with it.
fn holders(pool: &Pool, keys: &[String]) -> Vec<Option<usize>> {
    let mut conns: Vec<Client> = pool.backends.iter().map(|m| m.client()).collect();
    keys.iter()
        .map(|k| {
            let found: Vec<usize> = conns
                .iter_mut()
                .enumerate()
                .filter_map(|(i, c)| c.get(k).map(|_| i))
                .collect();
            assert!(found.len() <= 1, "{k} on backends {found:?}");
            found.first().copied()
        })
        .collect()
}

/// `Flush` and `FlushQ` reach every backend: keys spread over all three are gone from each.
#[test]
fn flush_reaches_every_backend() {
    let pool = three_backends();
    let keys = pipeline_keys();
    let mut c = BinConn::open(pool.proxy.port);
    for (quiet, opaque) in [(false, 0x100), (true, 0x200)] {
        let mut bytes = Vec::new();
        for k in &keys {
            bytes.extend(store(op::SETQ, k, 0, 0, "v").bytes());
        }
        bytes.extend(noop().opaque(opaque).bytes());
        assert!(c.send(&bytes));
        let got = c.read_through(op::NOOP, opaque).expect("noop");
        assert_eq!(got.len(), 1, "quiet sets answered: {got:?}");
        let held = holders(&pool, &keys);
        assert!(held.iter().all(Option::is_some), "keys missing: {held:?}");
        for b in 0..3 {
            assert!(
                held.contains(&Some(b)),
                "no key on backend {b}: the keys must cover every backend"
            );
        }
        if quiet {
            let mut bytes = flush(op::FLUSHQ, None).bytes();
            bytes.extend(noop().opaque(opaque + 1).bytes());
            assert!(c.send(&bytes));
            let got = c.read_through(op::NOOP, opaque + 1).expect("noop");
            assert_eq!(got.len(), 1, "FlushQ answered: {got:?}");
        } else {
            let r = c.call(&flush(op::FLUSH, None).opaque(opaque + 1));
            assert_eq!(
                (r.opcode(), r.status(), r.opaque(), r.bodylen()),
                (op::FLUSH, 0, opaque + 1, 0)
            );
        }
        let held = holders(&pool, &keys);
        assert!(
            held.iter().all(Option::is_none),
            "keys left after a flush: {held:?}"
        );
    }
}

/// A `Set` announcing a 1 GiB value gets `Too large` at once and its bytes are thrown away
/// as they come: memroute's RSS stays within a few MiB while they stream in, and the
/// connection then goes on.
#[test]
fn a_huge_announced_value_is_refused_and_discarded_as_it_arrives() {
    const GIB: usize = 1 << 30;
    let pool = three_backends();
    let mut c = BinConn::open(pool.proxy.port);
    // Warm up: a connection, its buffers, a few requests.
    for i in 0..20 {
        let r = c.call(&set(format!("warm{i}"), filler(50_000, i as u8)));
        assert_eq!(r.status(), 0, "{r:?}");
        let r = c.call(&get(op::GET, format!("warm{i}")));
        assert_eq!(r.status(), 0, "{r:?}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let baseline = pool.proxy.rss_kib();
    let rss = RssPeak::start(pool.proxy.pid(), Duration::from_millis(2));
    let header = store(op::SET, "huge", 0, 0, "")
        .bodylen((8 + 4 + GIB) as u32)
        .opaque(0xb16)
        .bytes();
    let mut stream = c.stream.try_clone().unwrap();
    stream.write_all(&header).unwrap();
    let chunk = vec![b'z'; 1 << 20];
    stream.write_all(&chunk[..1000]).unwrap();
    // Answered before the value is in.
    let r = c
        .read_packet(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("no answer to the huge set: {e:?}"));
    assert_eq!(
        (r.opcode(), r.status(), r.opaque(), r.value()),
        (op::SET, status::E2BIG, 0xb16, &b"Too large."[..]),
        "{r:?}"
    );
    // The rest: first a trickle, then as fast as it goes.
    let started = Instant::now();
    let mut sent = 1000;
    for _ in 0..50 {
        stream.write_all(&chunk[..100]).unwrap();
        sent += 100;
        std::thread::sleep(Duration::from_millis(2));
    }
    while sent < GIB {
        let n = chunk.len().min(GIB - sent);
        stream.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    let r = c.call(&get(op::GETK, "warm3").opaque(0x5e));
    assert_eq!(
        (r.status(), r.opaque(), r.key()),
        (0, 0x5e, &b"warm3"[..]),
        "{r:?}"
    );
    let r = c.call(&get(op::GETK, "huge"));
    assert_eq!(r.status(), status::KEY_ENOENT, "{r:?}");
    eprintln!("1 GiB discarded in {:?}", started.elapsed());
    let peak = rss.finish();
    assert_rss("1 GiB announced value", peak, baseline, 4 * 1024);
}

/// A text client and a binary client on the same port, at the same time, each see their
/// own protocol; values written in one are read in the other.
#[test]
fn text_and_binary_clients_share_a_port() {
    let pool = three_backends();
    let port = pool.proxy.port;
    let text = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        for i in 0..300 {
            let key = format!("text:{i}");
            let value = format!("t{i}-{}", "y".repeat(i % 50));
            c.set(&key, value.as_bytes());
            assert_eq!(c.get(&key).as_deref(), Some(value.as_bytes()));
        }
    });
    let bin = std::thread::spawn(move || {
        let mut c = BinConn::open(port);
        for i in 0..300u32 {
            let key = format!("bin:{i}");
            let value = format!("b{i}-{}", "z".repeat(i as usize % 50));
            let r = c.call(&store(op::SET, &key, i, 0, &value).opaque(i));
            assert_eq!((r.status(), r.opaque()), (0, i), "{r:?}");
            let r = c.call(&get(op::GETK, &key).opaque(i + 1000));
            assert_eq!(
                (r.status(), r.opaque(), r.flags(), r.key(), r.value()),
                (0, i + 1000, Some(i), key.as_bytes(), value.as_bytes()),
                "{r:?}"
            );
        }
    });
    text.join().expect("text client");
    bin.join().expect("binary client");
    // Across protocols.
    let mut t = Client::connect(port);
    let mut b = BinConn::open(port);
    assert_eq!(t.get("bin:7").as_deref(), Some(&b"b7-zzzzzzz"[..]));
    let r = b.call(&get(op::GETK, "text:9"));
    assert_eq!((r.status(), r.value()), (0, &b"t9-yyyyyyyyy"[..]), "{r:?}");
    t.send(b"set shared 77 0 2\r\nhi\r\n");
    assert_eq!(common::text(&t.read_line()), "STORED\r\n");
    let r = b.call(&get(op::GET, "shared"));
    assert_eq!((r.flags(), r.value()), (Some(77), &b"hi"[..]), "{r:?}");
}
