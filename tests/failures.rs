//! Failures with real processes: backends that die, are down, stall, talk garbage or close
//! mid-reply; clients that send too much, vanish, or stop reading.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::bad_backend::{BadBackend, Behaviour, Garbage};
use common::config::proxy_with_pool;
use common::{
    assert_bytes, free_port, mix, poll_until_every, set_request, text, value_item, value_reply,
    Memcached, Proxy,
};

const UNAVAILABLE: &str = "SERVER_ERROR backend unavailable\r\n";
const TIMEOUT: &str = "SERVER_ERROR backend timeout\r\n";
const CLOSED: &str = "SERVER_ERROR backend connection closed\r\n";
const PROTOCOL: &str = "SERVER_ERROR backend protocol error\r\n";

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n as u64)
        .map(|i| format!("{prefix}:{:x}:{i}", mix(i) & 0xffff_ffff))
        .collect()
}

/// Which backend (index) holds each key, learned by asking every memcached directly.
fn owners(backends: &[Memcached], keys: &[String]) -> HashMap<String, usize> {
    let mut owner = HashMap::new();
    for (b, m) in backends.iter().enumerate() {
        let mut c = m.client();
        for k in keys {
            if c.get(k).is_some() {
                assert!(owner.insert(k.clone(), b).is_none(), "{k} on two backends");
            }
        }
    }
    owner
}

#[test]
fn backend_killed_in_the_middle_of_a_pipelined_stream() {
    let mut backends: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    let proxy = Proxy::start(
        &servers,
        &["--threads", "2", "--hash", "md5", "--timeout", "1000"],
    );
    let keys = keys("kill", 60);
    let mut c = proxy.client();
    for k in &keys {
        c.set(k, b"probe");
    }
    let owner = owners(&backends, &keys);
    assert_eq!(owner.len(), keys.len());
    let dead = 1;
    let dead_keys: Vec<&String> = keys.iter().filter(|k| owner[*k] == dead).collect();
    let live_key = keys.iter().find(|k| owner[*k] != dead).unwrap().clone();
    assert!(!dead_keys.is_empty() && dead_keys.len() < keys.len());

    // 30 batches of 200 set/get pairs; the writer may run two batches ahead of the reader.
    // After batch 9 is read, the dead backend is killed: batches 10 and 11 are in flight,
    // batches 12.. are written only after it is gone.
    const BATCHES: usize = 30;
    const PAIRS: usize = 200;
    const KILL_AFTER: usize = 9;
    let pair_key = |i: usize| &keys[(mix(i as u64) % keys.len() as u64) as usize];
    let pair_value = |i: usize| format!("v{i}-{}", "x".repeat(i % 17));
    let (permit_tx, permit_rx) = mpsc::channel::<()>();
    let mut writer = c.stream.try_clone().unwrap();
    let requests: Vec<String> = (0..BATCHES)
        .map(|b| {
            let mut batch = String::new();
            for i in b * PAIRS..(b + 1) * PAIRS {
                batch.push_str(&set_request(pair_key(i), &pair_value(i)));
                batch.push_str(&format!("get {}\r\n", pair_key(i)));
            }
            batch
        })
        .collect();
    let writer_thread = thread::spawn(move || {
        for batch in requests {
            permit_rx.recv().unwrap();
            writer.write_all(batch.as_bytes()).unwrap();
        }
    });
    permit_tx.send(()).unwrap();
    permit_tx.send(()).unwrap();

    let started = Instant::now();
    let mut dead_after_kill = 0;
    for b in 0..BATCHES {
        for i in b * PAIRS..(b + 1) * PAIRS {
            let (key, value) = (pair_key(i), pair_value(i));
            let set = text(&c.read_line());
            let get = text(&c.read_retrieval());
            let stored = set == "STORED\r\n";
            if owner[key] != dead || b <= KILL_AFTER {
                assert!(stored, "pair {i} (batch {b}) set {key}: {set:?}");
                assert_eq!(get, value_reply(key, &value), "pair {i} get {key}");
                continue;
            }
            let backend_error = |r: &str| [UNAVAILABLE, CLOSED, TIMEOUT].contains(&r);
            if b > KILL_AFTER + 2 {
                // Written after the backend was gone.
                dead_after_kill += 1;
                assert!(backend_error(&set), "pair {i} set {key} to dead: {set:?}");
            } else {
                assert!(stored || backend_error(&set), "pair {i} set: {set:?}");
            }
            assert!(
                get == "END\r\n"
                    || backend_error(&get)
                    || (stored && get == value_reply(key, &value)),
                "pair {i} get {key} from dying backend: {get:?}"
            );
        }
        if b == KILL_AFTER {
            backends[dead].kill();
        }
        let _ = permit_tx.send(());
    }
    writer_thread.join().unwrap();
    assert!(
        dead_after_kill > 100,
        "{dead_after_kill} requests hit the dead backend"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stream took {:?}",
        started.elapsed()
    );

    // New requests to the dead backend fail fast; the others still work.
    let mut fresh = proxy.client();
    for client in [&mut c, &mut fresh] {
        let t = Instant::now();
        client.expect(set_request(dead_keys[0], "after"), UNAVAILABLE);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        client.set(&live_key, b"still-here");
        assert_eq!(client.get(&live_key).as_deref(), Some(&b"still-here"[..]));
    }

    // Bring it back on the same port: memroute reconnects and serves it again.
    let port = backends[dead].port;
    backends[dead] = Memcached::start_on(port);
    poll_until_every(
        Duration::from_secs(10),
        Duration::from_millis(20),
        "memroute to reconnect",
        || {
            c.send(set_request(dead_keys[0], "back"));
            let line = text(&c.read_line());
            assert!(
                line == "STORED\r\n" || line.starts_with("SERVER_ERROR backend"),
                "{line:?}"
            );
            line == "STORED\r\n"
        },
    );
    assert_eq!(c.get(dead_keys[0]).as_deref(), Some(&b"back"[..]));
    assert_eq!(
        backends[dead].client().get(dead_keys[0]).as_deref(),
        Some(&b"back"[..])
    );
    // Every dead key works again, through a fresh connection too.
    let mut fresh = proxy.client();
    for k in &dead_keys {
        fresh.set(k, b"again");
        assert_eq!(fresh.get(k).as_deref(), Some(&b"again"[..]));
    }
}

/// Two servers, one of them a port nobody listens on; returns keys on each (up, down).
fn split_keys_up_down(up: &Memcached, proxy: &Proxy) -> (Vec<String>, Vec<String>) {
    let keys = keys("down", 40);
    let mut c = proxy.client();
    let mut down = Vec::new();
    let mut upk = Vec::new();
    for k in &keys {
        c.send(set_request(k, k));
        let line = text(&c.read_line());
        if line == "STORED\r\n" {
            upk.push(k.clone());
        } else {
            assert_eq!(line, UNAVAILABLE, "set {k}");
            down.push(k.clone());
        }
    }
    // memroute's answers agree with where the keys are.
    let mut direct = up.client();
    for k in &upk {
        assert_eq!(direct.get(k).as_deref(), Some(k.as_bytes()));
    }
    for k in &down {
        assert_eq!(direct.get(k), None);
    }
    assert!(upk.len() >= 3 && down.len() >= 3, "{upk:?} {down:?}");
    (upk, down)
}

#[test]
fn backend_down_from_the_start_misses_by_default() {
    let up = Memcached::start();
    let servers = vec![up.server(1), format!("127.0.0.1:{}:1", free_port())];
    let proxy = Proxy::start(
        &servers,
        &[
            "--threads",
            "1",
            "--hash",
            "md5",
            "--connect-timeout",
            "300",
        ],
    );
    let (upk, down) = split_keys_up_down(&up, &proxy);
    let mut c = proxy.client();
    for k in &down[..3] {
        let t = Instant::now();
        assert_eq!(c.call(set_request(k, "x")), UNAVAILABLE);
        assert_eq!(c.call(format!("delete {k}\r\n")), UNAVAILABLE);
        assert_eq!(c.call(format!("incr {k} 1\r\n")), UNAVAILABLE);
        // A retrieval from a failed backend is a miss under the default policy.
        assert_eq!(c.call(format!("get {k}\r\n")), "END\r\n");
        assert_eq!(c.call(format!("gets {k}\r\n")), "END\r\n");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    // A multi-get over both: the up backend's hits, in the client's key order, one END.
    let mixed = [&upk[0], &down[0], &upk[1], &down[1], &down[2], &upk[2]];
    let mut expected = String::new();
    for k in [&upk[0], &upk[1], &upk[2]] {
        expected.push_str(&value_item(k, k));
    }
    expected.push_str("END\r\n");
    let line = mixed
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(c.call(format!("get {line}\r\n")), expected);
    // And the connection is still in sync.
    c.expect("version\r\n", "VERSION ");
    c.read_line();
    assert_eq!(c.get(&upk[0]).as_deref(), Some(upk[0].as_bytes()));
}

#[test]
fn backend_down_from_the_start_errors_with_retrieval_failure_error() {
    let up = Memcached::start();
    let servers = vec![up.server(1), format!("127.0.0.1:{}:1", free_port())];
    let proxy = Proxy::start(
        &servers,
        &[
            "--threads",
            "1",
            "--hash",
            "md5",
            "--retrieval-failure",
            "error",
        ],
    );
    let (upk, down) = split_keys_up_down(&up, &proxy);
    let mut c = proxy.client();
    assert_eq!(c.call(set_request(&down[0], "x")), UNAVAILABLE);
    assert_eq!(c.call(format!("get {}\r\n", down[0])), UNAVAILABLE);
    assert_eq!(
        c.call(format!("get {} {}\r\n", upk[0], down[0])),
        UNAVAILABLE
    );
    assert_eq!(
        c.call(format!("get {} {}\r\n", down[1], upk[1])),
        UNAVAILABLE
    );
    // Keys only on the up backend are still served.
    c.expect(
        format!("get {} {}\r\n", upk[0], upk[1]),
        format!(
            "{}{}END\r\n",
            value_item(&upk[0], &upk[0]),
            value_item(&upk[1], &upk[1])
        ),
    );
}

#[test]
fn stalled_backend_times_out_without_blocking_later_replies() {
    let healthy = Memcached::start();
    let stalled = BadBackend::start(Behaviour::Stall);
    let servers = vec![healthy.server(1), format!("{}:1", stalled.address())];
    let proxy = Proxy::start(
        &servers,
        &[
            "--threads",
            "1",
            "--hash",
            "md5",
            "--timeout",
            "300",
            "--retrieval-failure",
            "error",
        ],
    );
    // Classify keys in one pipelined batch (all stalled ones time out together).
    let keys = keys("stall", 20);
    let mut c = proxy.client();
    let batch: String = keys.iter().map(|k| set_request(k, "v")).collect();
    let t = Instant::now();
    c.send(batch);
    let mut on_stalled = Vec::new();
    let mut on_healthy = Vec::new();
    for k in &keys {
        let line = text(&c.read_line());
        match line.as_str() {
            "STORED\r\n" => on_healthy.push(k.clone()),
            TIMEOUT => on_stalled.push(k.clone()),
            other => panic!("set {k}: {other:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!on_stalled.is_empty() && !on_healthy.is_empty());

    // A get and a set to the stalled backend, with healthy requests pipelined behind each.
    let (s, h) = (&on_stalled[0], &on_healthy[0]);
    for first in [format!("get {s}\r\n"), set_request(s, "zzz")] {
        let mut c = proxy.client();
        let t = Instant::now();
        c.send(format!(
            "{first}{}get {h}\r\nversion\r\n",
            set_request(h, "fresh")
        ));
        assert_eq!(text(&c.read_line()), TIMEOUT);
        let elapsed = t.elapsed();
        assert!(
            elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(2),
            "timeout after {elapsed:?}"
        );
        assert_eq!(text(&c.read_line()), "STORED\r\n");
        assert_eq!(text(&c.read_retrieval()), value_reply(h, "fresh"));
        assert!(text(&c.read_line()).starts_with("VERSION "));
    }
    // The healthy backend alone answers at once.
    let t = Instant::now();
    c.set(h, b"quick");
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn garbage_from_a_backend_is_a_protocol_error() {
    let healthy = Memcached::start();
    let bad = BadBackend::start(Behaviour::Garbage(Garbage::UnknownReply));
    let servers = vec![healthy.server(1), format!("{}:1", bad.address())];
    let mut proxy = Proxy::start(
        &servers,
        &[
            "--threads",
            "1",
            "--hash",
            "md5",
            "--retrieval-failure",
            "error",
        ],
    );
    let keys = keys("garbage", 20);
    // Which keys live on the healthy backend: those it holds after a set through memroute.
    let mut c = proxy.client();
    for k in &keys {
        c.send(set_request(k, "v"));
        let _ = c.read_line();
    }
    let mut direct = healthy.client();
    let (on_healthy, on_bad): (Vec<&String>, Vec<&String>) =
        keys.iter().partition(|k| direct.get(k).is_some());
    assert!(!on_healthy.is_empty() && !on_bad.is_empty());

    for k in &on_bad[..3] {
        let mut c = proxy.client();
        assert_eq!(c.call(format!("get {k}\r\n")), PROTOCOL);
        assert_eq!(c.call(set_request(k, "v")), PROTOCOL);
        assert_eq!(c.call(format!("delete {k}\r\n")), PROTOCOL);
        assert_eq!(c.call(format!("incr {k} 1\r\n")), PROTOCOL);
        assert_eq!(c.call(format!("touch {k} 10\r\n")), PROTOCOL);
        // The healthy backend is unaffected, on the same connection.
        c.set(on_healthy[0], b"fine");
        assert_eq!(c.get(on_healthy[0]).as_deref(), Some(&b"fine"[..]));
    }
    assert!(proxy.is_running());
}

#[test]
fn backend_closing_mid_value_is_an_error_not_a_hang() {
    let bad = BadBackend::start(Behaviour::HalfValue);
    let mut proxy = Proxy::start(
        &[format!("{}:1", bad.address())],
        &["--threads", "1", "--timeout", "5000"],
    );
    let mut c = proxy.client();
    for _ in 0..3 {
        let t = Instant::now();
        c.send("get k\r\nversion\r\n");
        let reply = text(&c.read_retrieval());
        assert!(
            reply == "END\r\n" || reply == CLOSED || reply == PROTOCOL,
            "{reply:?}"
        );
        assert!(text(&c.read_line()).starts_with("VERSION "));
        // Well before the 5 s request timeout: the close itself ends the request.
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    assert!(proxy.is_running());
}

#[test]
fn oversized_value_is_refused_and_the_stream_stays_in_sync() {
    let m = Memcached::start();
    let proxy = Proxy::start(&[m.server(1)], &["--threads", "1", "--item-size-max", "2k"]);
    let mut c = proxy.client();
    c.set("big", b"old");
    // 3000 bytes of data that would be commands if the proxy parsed them.
    let data = "delete big\r\n".repeat(250).into_bytes();
    assert_eq!(data.len(), 3000);
    let mut req = b"set big 0 0 3000\r\n".to_vec();
    req.extend_from_slice(&data);
    req.extend_from_slice(b"\r\nget big\r\n");
    c.send(&req);
    assert_eq!(
        text(&c.read_line()),
        "SERVER_ERROR object too large for cache\r\n"
    );
    // As memcached does, the refused set removed the old value: no stale read.
    assert_eq!(text(&c.read_retrieval()), "END\r\n");
    assert_eq!(m.client().get("big"), None, "deleted on the backend");
    // Nothing else was answered (no DELETED/NOT_FOUND from the data block).
    c.expect("version\r\n", "VERSION ");
    c.read_line();
    // The same with the data block arriving in pieces.
    c.set("big", b"old");
    c.send(&req[..100]);
    c.send(&req[100..2000]);
    c.send(&req[2000..]);
    assert_eq!(
        text(&c.read_line()),
        "SERVER_ERROR object too large for cache\r\n"
    );
    assert_eq!(text(&c.read_retrieval()), "END\r\n");
    // An add that is refused leaves the old value (memcached deletes only for set).
    c.set("big", b"old");
    c.send([&b"add"[..], &req[3..]].concat());
    assert_eq!(
        text(&c.read_line()),
        "SERVER_ERROR object too large for cache\r\n"
    );
    assert_eq!(text(&c.read_retrieval()), value_reply("big", "old"));
    // Exactly the limit is accepted.
    let value = "y".repeat(2048);
    c.expect(
        format!("{}get big\r\n", set_request("big", &value)),
        format!("STORED\r\n{}", value_reply("big", &value)),
    );
    assert_eq!(
        m.client().get("big").as_deref(),
        Some(value.as_bytes()),
        "stored on the backend"
    );
}

#[test]
fn a_line_too_long_is_closed_silently_and_get_lines_have_no_limit() {
    let m = Memcached::start();
    let proxy = Proxy::start(&[m.server(1)], &["--threads", "2"]);
    let mut other = proxy.client();
    other.set("k", b"v");

    // As memcached does: more than 2 KiB without a newline closes, without a word.
    let mut c = proxy.client();
    c.send(vec![b'a'; 5000]);
    assert_eq!(text(&c.read_to_close()), "");

    // A get line has no limit: 70 KB of keys (most of them misses) is answered.
    let mut c = proxy.client();
    let mut line = b"get".to_vec();
    while line.len() < 70_000 {
        line.extend_from_slice(b" somekey");
    }
    line.extend_from_slice(b" k\r\n");
    c.send(&line);
    assert_eq!(text(&c.read_retrieval()), value_reply("k", "v"));

    // Earlier pipelined requests are answered before the close.
    let mut c = proxy.client();
    let mut req = b"get k\r\n".to_vec();
    req.extend(vec![b'z'; 5000]);
    c.send(&req);
    assert_eq!(text(&c.read_to_close()), value_reply("k", "v"));

    // Other clients are served as before.
    assert_eq!(other.get("k").as_deref(), Some(&b"v"[..]));
    let mut fresh = proxy.client();
    fresh.set("k2", b"v2");
    assert_eq!(fresh.get("k2").as_deref(), Some(&b"v2"[..]));
}

#[test]
fn clients_vanishing_mid_request_do_not_hurt_others() {
    let backends: Vec<Memcached> = (0..2).map(|_| Memcached::start()).collect();
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    let mut proxy = Proxy::start(&servers, &["--threads", "2", "--hash", "md5"]);
    let mut observer = proxy.client();
    let big = "b".repeat(100_000);
    observer.set("big", big.as_bytes());
    assert_eq!(observer.stat_num("curr_connections"), 1);

    for round in 0..5 {
        // Half a data block, then gone.
        let mut c = proxy.client();
        c.send(format!("set half{round} 0 0 100\r\n{}", "h".repeat(50)));
        drop(c);
        // 1000 pipelined gets, never read.
        let mut c = proxy.client();
        let gets: String = (0..1000).map(|i| format!("get key{i}\r\n")).collect();
        c.send(gets);
        drop(c);
        // Big replies, never read.
        let mut c = proxy.client();
        c.send("get big\r\n".repeat(200));
        drop(c);
        // Gone in the middle of a command line.
        let mut c = proxy.client();
        c.send("get half-a-li");
        drop(c);
    }
    // The abandoned set was never stored.
    for round in 0..5 {
        assert_eq!(observer.get(&format!("half{round}")), None);
    }
    poll_until_every(
        Duration::from_secs(10),
        Duration::from_millis(20),
        "connections to close",
        || observer.stat_num("curr_connections") == 1,
    );
    assert!(proxy.is_running());
    observer.set("after", b"ok");
    assert_eq!(observer.get("after").as_deref(), Some(&b"ok"[..]));
    assert_eq!(
        observer.get("big").map(|v| v.len()),
        Some(100_000),
        "big value intact"
    );
    let mut fresh = proxy.client();
    assert_eq!(fresh.stat_num("curr_connections"), 2);
}

/// Pipelines `count` gets of a ~100 KB value from a writer thread while the reader waits;
/// asserts memroute's RSS stays below `bound_mib` while the client is not reading, then reads
/// and checks every reply.
fn stalled_reader_stays_bounded(proxy: &Proxy, count: usize, bound_mib: u64) {
    let value: String = (0..100_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let mut c = proxy.client();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    c.set("big", value.as_bytes());
    let baseline = proxy.rss_kib();

    let written = Arc::new(AtomicUsize::new(0));
    let mut writer = c.stream.try_clone().unwrap();
    let w = written.clone();
    let writer_thread = thread::spawn(move || {
        let chunk = "get big\r\n".repeat(100);
        for _ in 0..count / 100 {
            writer.write_all(chunk.as_bytes()).unwrap();
            w.fetch_add(100, Ordering::Relaxed);
        }
    });

    // Wait until memroute stops taking requests from this client (its cmd_get counter stops
    // moving: backpressure) while sampling its memory; it must stay bounded throughout.
    let mut stats = proxy.client();
    let mut peak = 0;
    let mut last = stats.stat_num("cmd_get");
    let mut unchanged = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while unchanged < 10 {
        assert!(
            Instant::now() < deadline,
            "memroute kept reading from a stalled client"
        );
        thread::sleep(Duration::from_millis(20));
        peak = peak.max(proxy.rss_kib());
        let now = stats.stat_num("cmd_get");
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
    }
    peak = peak.max(proxy.rss_kib());
    assert!(
        peak < bound_mib * 1024,
        "memroute RSS reached {} MiB (baseline {} MiB) with a stalled client",
        peak / 1024,
        baseline / 1024
    );
    eprintln!(
        "stalled client: {last} of {count} gets taken, RSS peak {} MiB (baseline {} MiB)",
        peak / 1024,
        baseline / 1024
    );
    // It did stop: not every reply has been written yet.
    let total = (count * (value.len() + 30)) as u64;
    assert!(
        last < total,
        "all replies were written to a non-reading client?"
    );

    // Now read everything, in order.
    let expected = value_reply("big", &value);
    for i in 0..count {
        let reply = c.read_retrieval();
        assert_bytes(&reply, expected.as_bytes(), &format!("reply {i}"));
    }
    writer_thread.join().unwrap();
    assert_eq!(written.load(Ordering::Relaxed), count);
    c.expect("version\r\n", "VERSION ");
}

#[test]
fn a_client_that_does_not_read_is_bounded_with_default_limits() {
    let m = Memcached::start_with(&["-m", "64"]);
    let proxy = Proxy::start(&[m.server(1)], &["--threads", "1"]);
    // 3000 replies of 100 KB is 300 MB: more than the bound if memroute buffered them.
    stalled_reader_stays_bounded(&proxy, 3000, 200);
}

#[test]
fn a_client_that_does_not_read_is_bounded_with_configured_limits() {
    let m = Memcached::start_with(&["-m", "64"]);
    let (proxy, _dir) = proxy_with_pool(
        "threads = 1",
        &[m.server(1)],
        "max_client_inflight = 32\nmax_client_buffer = \"1m\"",
    );
    stalled_reader_stays_bounded(&proxy, 2000, 60);
}

#[test]
fn requests_held_back_by_the_inflight_cap_are_answered_later() {
    // With at most 2 requests in flight, a pipelined write of 8 requests must still get all
    // 8 replies: the ones left in memroute's read buffer are decoded once replies drain,
    // without waiting for more bytes from the client.
    let m = Memcached::start();
    let (proxy, _dir) = proxy_with_pool("threads = 1", &[m.server(1)], "max_client_inflight = 2");
    let mut c = proxy.client();
    // A missing reply fails in 3 s rather than the fixture's 10.
    c.stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    c.set("a", b"1");
    let t = Instant::now();
    c.send(
        "get a\r\nget b\r\nget a\r\nset b 0 0 1\r\n2\r\nget b\r\nget a b\r\ndelete a\r\nversion\r\n",
    );
    assert_eq!(text(&c.read_retrieval()), value_reply("a", "1"));
    assert_eq!(text(&c.read_retrieval()), "END\r\n");
    assert_eq!(
        text(&c.read_retrieval()),
        value_reply("a", "1"),
        "third pipelined request (beyond the in-flight cap of 2) was not answered"
    );
    assert_eq!(text(&c.read_line()), "STORED\r\n");
    assert_eq!(text(&c.read_retrieval()), value_reply("b", "2"));
    assert_eq!(
        text(&c.read_retrieval()),
        "VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n"
    );
    assert_eq!(text(&c.read_line()), "DELETED\r\n");
    assert!(text(&c.read_line()).starts_with("VERSION "));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}
