//! Hostile backends: five misbehaving memcached servers run in-process on loopback
//! (tests/common/bad_backend.rs), each in a pool with two real memcached. For each one:
//!
//! (a) requests routed to it get a `SERVER_ERROR backend …` line or a miss, within the
//!     configured timeout (plus slack);
//! (b) the same client's pipelined requests to the healthy backends, interleaved with the
//!     bad ones, get their byte-exact replies in request order, and a concurrent client
//!     using only healthy keys is unaffected;
//! (c) the upstream connection is discarded: memroute closes it (the fixture sees EOF) or
//!     the fixture's reset ends it, and the next request opens a new one — a connection
//!     whose reply stream is in doubt never carries another request;
//! (d) memroute's RSS stays flat over a few hundred failing requests.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::bad_backend::{BadBackend, Behaviour, Garbage};
use common::config::{config_toml, md5_pool_toml, route_owners, TempFiles};
use common::traffic::{CheckedTraffic, Traffic};
use common::{
    free_port, num_stat, set_request, text, value_item, value_reply, Client, Memcached, Proxy,
    RssPeak, VERSION_REPLY,
};

const TIMEOUT: &str = "SERVER_ERROR backend timeout\r\n";
const CLOSED: &str = "SERVER_ERROR backend connection closed\r\n";
const PROTOCOL: &str = "SERVER_ERROR backend protocol error\r\n";
const MISS: &str = "END\r\n";
/// Added to a configured timeout for the latest a failure may be answered.
const SLACK: Duration = Duration::from_millis(1500);
/// RSS growth allowed over the measured rounds.
const RSS_BOUND_KIB: u64 = 8 * 1024;

/// One pipelined request and the replies it may get (exactly one of them, byte for byte).
struct Step {
    request: String,
    allowed: Vec<String>,
}

fn step(request: impl Into<String>, allowed: &[&str]) -> Step {
    Step {
        request: request.into(),
        allowed: allowed.iter().map(|s| s.to_string()).collect(),
    }
}

/// Sends every step's request in one write, then reads the replies in order and checks each
/// against its step. Returns the replies and the time until the last one arrived.
fn pipeline(c: &mut Client, steps: &[Step]) -> (Vec<String>, Duration) {
    let all: String = steps.iter().map(|s| s.request.as_str()).collect();
    let t = Instant::now();
    c.send(all);
    let mut replies = Vec::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        let reply = c.read_reply_to(&s.request);
        assert!(
            s.allowed.contains(&reply),
            "step {i} {:?}: got {reply:?}, want one of {:?} (after {:?})",
            s.request.lines().next().unwrap_or(""),
            s.allowed,
            t.elapsed()
        );
        replies.push(reply);
    }
    (replies, t.elapsed())
}

/// A pool of the bad backend and two real memcached, behind memroute (one worker thread,
/// one connection per backend, ejection off), with keys sorted by owner.
struct Rig {
    // Dropped first: memroute goes before its backends.
    proxy: Proxy,
    bad: BadBackend,
    _healthy: Vec<Memcached>,
    _dir: TempFiles,
    timeout: Duration,
    /// Keys the bad backend owns.
    bad_keys: Vec<String>,
    /// Keys the healthy backends own.
    good_keys: Vec<String>,
}

fn rig(bad: BadBackend, prefix: &str, timeout_ms: u64, policy: &str) -> Rig {
    let healthy = vec![Memcached::start(), Memcached::start()];
    let port = free_port();
    let dir = TempFiles::new();
    let servers = [
        bad.server("bad"),
        format!("{} h1", healthy[0].server(1)),
        format!("{} h2", healthy[1].server(1)),
    ];
    // These tests count the bad backend's connections and requests: no health checks.
    let pool_keys = format!(
        "timeout = {timeout_ms}\nretrieval_failure = \"{policy}\"\nhealth_check_interval = \"0s\""
    );
    let config = dir.write(
        "memroute.toml",
        &config_toml(
            "threads = 1",
            &[md5_pool_toml("main", port, &servers, &pool_keys)],
        ),
    );
    let keys: Vec<String> = (0..300).map(|i| format!("{prefix}:{i}")).collect();
    let owner = route_owners(&config, &keys);
    assert_eq!(owner.len(), keys.len());
    let (bad_keys, good_keys): (Vec<String>, Vec<String>) =
        keys.into_iter().partition(|k| owner[k] == bad.address());
    assert!(
        bad_keys.len() >= 20 && good_keys.len() >= 60,
        "{} keys on the bad backend, {} on the healthy ones",
        bad_keys.len(),
        good_keys.len()
    );
    let proxy = Proxy::start_config(&config, port, &[]);
    Rig {
        bad,
        _healthy: healthy,
        proxy,
        _dir: dir,
        timeout: Duration::from_millis(timeout_ms),
        bad_keys,
        good_keys,
    }
}

/// A counter of backend `addr` (of pool `main`) from `stats backends`.
fn backend_stat(c: &mut Client, addr: &str, name: &str) -> u64 {
    num_stat(&c.stats_map("backends"), &format!("main:{addr}:{name}"))
}

/// Checked traffic from a second client using only healthy keys (`good_keys[40..60]`; the
/// tests use the first 40 themselves), from its own thread, for the whole test: every reply
/// checked byte for byte, its slowest batch reported.
fn bystander(r: &Rig) -> CheckedTraffic {
    Traffic::clients(vec![r.good_keys[40..60].to_vec()])
        .pause(Duration::from_millis(2))
        .start(&r.proxy)
}

/// Stops the bystander; asserts it did work and was never held up for as long as `limit`.
fn finish_bystander(bystander: CheckedTraffic, what: &str, limit: Duration) {
    let report = bystander.finish();
    report.assert_served(&format!("bystander ({what})"), limit);
    assert!(
        report.batches >= 10,
        "bystander ran only {} batches",
        report.batches
    );
}

/// Asserts the RSS measured now is within the bound of `base`.
fn assert_rss_flat(proxy: &Proxy, base: u64, what: &str) {
    let now = proxy.rss_kib();
    eprintln!("{what}: RSS {base} KiB -> {now} KiB");
    assert!(
        now < base + RSS_BOUND_KIB,
        "{what}: memroute RSS grew from {base} KiB to {now} KiB"
    );
}

// ---------------------------------------------------------------------------------------

/// Fixture 1: a backend that accepts and never answers.
#[test]
fn stalled_backend_times_out_and_its_connection_is_replaced() {
    let r = rig(BadBackend::start(Behaviour::Stall), "stall", 800, "miss");
    let (b, g) = (&r.bad_keys, &r.good_keys);
    let bystander = bystander(&r);
    let mut c = r.proxy.client();
    for k in &g[..4] {
        c.set(k, format!("{k}-old").as_bytes());
    }
    let before = r.bad.accepted();

    // (a), (b): failures interleaved with healthy requests, one write.
    let steps = [
        step(format!("get {}\r\n", b[0]), &[MISS]),
        step(set_request(&g[0], "new-0"), &["STORED\r\n"]),
        step(format!("get {}\r\n", g[0]), &[&value_reply(&g[0], "new-0")]),
        step(set_request(&b[1], "x"), &[TIMEOUT]),
        step(
            format!("get {} {} {}\r\n", g[1], b[0], g[2]),
            &[&format!(
                "{}{}END\r\n",
                value_item(&g[1], &format!("{}-old", g[1])),
                value_item(&g[2], &format!("{}-old", g[2]))
            )],
        ),
        step(format!("delete {}\r\n", b[2]), &[TIMEOUT]),
        step(
            format!("get {}\r\n", g[3]),
            &[&value_reply(&g[3], &format!("{}-old", g[3]))],
        ),
        step("version\r\n", &[VERSION_REPLY]),
    ];
    let (_, took) = pipeline(&mut c, &steps);
    assert!(
        took >= r.timeout - Duration::from_millis(50) && took < r.timeout + SLACK,
        "a stalled request was answered after {took:?} (timeout {:?})",
        r.timeout
    );

    // (c): the connection that carried them is closed by memroute; nothing else was sent on it.
    assert_eq!(r.bad.accepted(), before + 1, "{:?}", r.bad.summary());
    let first = r.bad.conn(before);
    r.bad
        .wait_until(Duration::from_secs(5), "memroute to close", |_| {
            first.peer_closed()
        });
    let sent_on_first = vec![
        format!("get {}", b[0]),
        format!("set {} 0 0 1", b[1]),
        format!("get {}", b[0]),
        format!("delete {}", b[2]),
    ];
    assert_eq!(first.requests(), sent_on_first);
    // The next request opens a new connection.
    let t = Instant::now();
    c.expect(format!("get {}\r\n", b[3]), MISS);
    assert!(t.elapsed() < r.timeout + SLACK, "{:?}", t.elapsed());
    assert_eq!(r.bad.accepted(), before + 2, "{:?}", r.bad.summary());
    assert_eq!(r.bad.conn(before + 1).requests(), [format!("get {}", b[3])]);
    assert_eq!(
        first.requests(),
        sent_on_first,
        "the old connection was reused"
    );

    // (d): rounds of 50 stalled gets among 50 healthy requests; each round times out once.
    const PER_ROUND: usize = 50;
    let round = |c: &mut Client, n: usize| {
        let mut steps = Vec::new();
        let mut last = (String::new(), String::new());
        for i in 0..PER_ROUND {
            steps.push(step(format!("get {}\r\n", b[(n + i) % b.len()]), &[MISS]));
            if i % 2 == 0 {
                last = (g[(n * PER_ROUND + i) % 40].clone(), format!("r{n}-{i}"));
                steps.push(step(set_request(&last.0, &last.1), &["STORED\r\n"]));
            } else {
                steps.push(step(
                    format!("get {}\r\n", last.0),
                    &[&value_reply(&last.0, &last.1)],
                ));
            }
        }
        let (_, took) = pipeline(c, &steps);
        assert!(took < r.timeout + SLACK, "round {n} took {took:?}");
    };
    const WARM: usize = 2;
    for n in 0..WARM {
        round(&mut c, n);
    }
    let base = r.proxy.rss_kib();
    let rounds = 6;
    for n in WARM..WARM + rounds {
        round(&mut c, n);
    }
    assert_rss_flat(&r.proxy, base, "300 stalled requests");
    // One connection per failed round, each closed by memroute.
    let total = before + 2 + WARM + rounds;
    assert_eq!(r.bad.accepted(), total, "{:?}", r.bad.summary());
    r.bad.wait_until(
        Duration::from_secs(5),
        "memroute to close every connection",
        |bad| bad.conns().iter().all(|c| c.peer_closed()),
    );
    let addr = r.bad.address();
    assert_eq!(backend_stat(&mut c, &addr, "in_flight"), 0);
    assert_eq!(
        backend_stat(&mut c, &addr, "timeouts"),
        (total - before) as u64
    );
    finish_bystander(bystander, "stall", r.timeout);
}

/// Fixture 2: a backend that closes in the middle of a VALUE block (half-close on even
/// connections, full close on odd ones).
#[test]
fn backend_closing_mid_value_fails_fast_and_is_reconnected() {
    let r = rig(
        BadBackend::start(Behaviour::HalfValue),
        "half",
        3000,
        "miss",
    );
    let (b, g) = (&r.bad_keys, &r.good_keys);
    let bystander = bystander(&r);
    let mut c = r.proxy.client();
    c.set(&g[1], b"one");
    let before = r.bad.accepted();
    assert_eq!(before % 2, 0, "the first connection is half-closed");

    let steps = [
        step(format!("get {}\r\n", b[0]), &[MISS]),
        step(set_request(&g[0], "zero"), &["STORED\r\n"]),
        step(format!("get {}\r\n", g[0]), &[&value_reply(&g[0], "zero")]),
        // In flight on the same connection when it ends.
        step(set_request(&b[1], "lost"), &[CLOSED, PROTOCOL]),
        step(
            format!("get {} {}\r\n", b[2], g[1]),
            &[&value_reply(&g[1], "one")],
        ),
        step("version\r\n", &[VERSION_REPLY]),
    ];
    let (_, took) = pipeline(&mut c, &steps);
    // The close ends the requests, not the 3 s timeout.
    assert!(took < Duration::from_secs(1), "answered after {took:?}");

    // (c): memroute closed the half-closed connection once it saw EOF.
    let first = r.bad.conn(before);
    r.bad
        .wait_until(Duration::from_secs(5), "memroute to close", |_| {
            first.peer_closed()
        });
    assert!(first.we_closed());
    let sent_on_first = first.requests();
    assert_eq!(sent_on_first[0], format!("get {}", b[0]));
    assert!(
        sent_on_first.len() <= 3,
        "more than the first batch's requests on the first connection: {sent_on_first:?}"
    );
    // The next request opens a new connection, never the old one. (The set above may
    // already have needed one, if the first connection ended before it was dispatched.)
    let next = r.bad.accepted();
    assert!(next <= before + 2, "{:?}", r.bad.summary());
    c.expect(format!("get {}\r\n", b[3]), MISS);
    assert_eq!(r.bad.accepted(), next + 1, "{:?}", r.bad.summary());
    assert_eq!(r.bad.conn(next).requests(), [format!("get {}", b[3])]);
    assert_eq!(
        first.requests(),
        sent_on_first,
        "the old connection was reused"
    );

    // (d): 300 rounds, each a mid-value close among healthy requests.
    let round = |c: &mut Client, n: usize| {
        let k = &g[n % 40];
        let v = format!("v{n}");
        let steps = [
            step(set_request(k, &v), &["STORED\r\n"]),
            step(format!("get {}\r\n", b[n % b.len()]), &[MISS]),
            step(format!("get {k}\r\n"), &[&value_reply(k, &v)]),
        ];
        let (_, took) = pipeline(c, &steps);
        assert!(took < Duration::from_secs(1), "round {n} took {took:?}");
    };
    for n in 0..20 {
        round(&mut c, n);
    }
    let base = r.proxy.rss_kib();
    let rounds = 300;
    for n in 20..20 + rounds {
        round(&mut c, n);
    }
    assert_rss_flat(&r.proxy, base, "300 mid-value closes");
    let total = next + 1 + 20 + rounds;
    assert_eq!(r.bad.accepted(), total, "one new connection per failure");
    r.bad.wait_until(
        Duration::from_secs(5),
        "memroute to close every half-closed connection",
        |bad| {
            bad.conns()
                .iter()
                .all(|c| c.we_closed() && (c.id % 2 == 1 || c.peer_closed()))
        },
    );
    let addr = r.bad.address();
    assert_eq!(backend_stat(&mut c, &addr, "in_flight"), 0);
    assert_eq!(
        backend_stat(&mut c, &addr, "connection_failures"),
        total as u64
    );
    finish_bystander(bystander, "half", Duration::from_secs(1));
}

/// Fixture 3: a backend that fronts a real memcached and trickles its replies one byte at a
/// time: small replies arrive whole within the timeout; a 20 KB value does not, and times out.
#[test]
fn trickling_backend_small_replies_complete_large_ones_time_out() {
    let real = Memcached::start();
    let bad = BadBackend::start(Behaviour::Trickle {
        upstream: real.port,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(3),
    });
    let r = rig(bad, "trickle", 1500, "error");
    let (b, g) = (&r.bad_keys, &r.good_keys);
    let bystander = bystander(&r);
    let mut c = r.proxy.client();
    c.set(&g[1], b"one");
    let before = r.bad.accepted();

    // Small replies: complete and byte-exact, on one connection that stays in use.
    for n in 0..3 {
        let v = format!("tv-{n}");
        let trickled_before = r
            .bad
            .conns()
            .iter()
            .map(|c| c.bytes_written())
            .sum::<usize>();
        let steps = [
            step(set_request(&b[0], &v), &["STORED\r\n"]),
            step(set_request(&g[0], &v), &["STORED\r\n"]),
            step(format!("get {}\r\n", b[0]), &[&value_reply(&b[0], &v)]),
            step(
                format!("get {} {}\r\n", g[1], b[0]),
                &[&format!(
                    "{}{}END\r\n",
                    value_item(&g[1], "one"),
                    value_item(&b[0], &v)
                )],
            ),
            step(format!("get {}\r\n", g[0]), &[&value_reply(&g[0], &v)]),
        ];
        let (_, took) = pipeline(&mut c, &steps);
        let trickled = r
            .bad
            .conns()
            .iter()
            .map(|c| c.bytes_written())
            .sum::<usize>()
            - trickled_before;
        // STORED, the value, and the value again (its fragment of the multi-get).
        let expected = 8 + 2 * value_reply(&b[0], &v).len();
        assert_eq!(trickled, expected, "bytes trickled in round {n}");
        assert!(
            took >= Duration::from_millis(expected as u64) && took < r.timeout,
            "{expected} trickled bytes took {took:?}"
        );
    }
    assert_eq!(
        r.bad.accepted(),
        before + 1,
        "a healthy connection was replaced"
    );
    assert!(!r.bad.conn(before).peer_closed());

    // A 20 KB value takes ~40 s to trickle: the request times out.
    let big: String = (0..20_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    real.client().set(&b[1], big.as_bytes());
    let steps = [
        step(format!("get {}\r\n", b[1]), &[TIMEOUT]),
        step(set_request(&g[0], "after-big"), &["STORED\r\n"]),
        step(
            format!("get {}\r\n", g[0]),
            &[&value_reply(&g[0], "after-big")],
        ),
        step("version\r\n", &[VERSION_REPLY]),
    ];
    let (_, took) = pipeline(&mut c, &steps);
    assert!(
        took >= r.timeout - Duration::from_millis(50) && took < r.timeout + SLACK,
        "the large trickled value failed after {took:?}"
    );
    // (c): that connection is closed by memroute, well before the value was through.
    let first = r.bad.conn(before);
    r.bad
        .wait_until(Duration::from_secs(5), "memroute to close", |_| {
            first.peer_closed()
        });
    let sent_on_first = first.requests();
    assert_eq!(sent_on_first.last().unwrap(), &format!("get {}", b[1]));
    assert!(first.bytes_written() < 5000, "{:?}", r.bad.summary());
    // The next small request opens a new connection and is answered correctly.
    c.expect(format!("get {}\r\n", b[0]), value_reply(&b[0], "tv-2"));
    assert_eq!(r.bad.accepted(), before + 2, "{:?}", r.bad.summary());
    assert_eq!(r.bad.conn(before + 1).requests(), [format!("get {}", b[0])]);
    assert_eq!(
        first.requests(),
        sent_on_first,
        "the old connection was reused"
    );

    // (d): rounds of 75 pipelined gets of the large value among healthy requests.
    let round = |c: &mut Client, n: usize| {
        let mut steps = Vec::new();
        for i in 0..75 {
            steps.push(step(format!("get {}\r\n", b[1]), &[TIMEOUT]));
            if i % 10 == 0 {
                let (k, v) = (&g[i / 10], format!("r{n}-{i}"));
                steps.push(step(set_request(k, &v), &["STORED\r\n"]));
                steps.push(step(format!("get {k}\r\n"), &[&value_reply(k, &v)]));
            }
        }
        let (_, took) = pipeline(c, &steps);
        assert!(took < r.timeout + SLACK, "round {n} took {took:?}");
    };
    round(&mut c, 0);
    let base = r.proxy.rss_kib();
    let rounds = 4;
    for n in 1..=rounds {
        round(&mut c, n);
    }
    assert_rss_flat(&r.proxy, base, "300 trickled requests timed out");
    // The first connection, the one the small request opened (its gets timed out in round
    // 0), and one per later round: each timed out once.
    let total = before + 2 + rounds;
    assert_eq!(r.bad.accepted(), total, "{:?}", r.bad.summary());
    r.bad.wait_until(
        Duration::from_secs(5),
        "memroute to close every connection",
        |bad| bad.conns()[before..].iter().all(|c| c.peer_closed()),
    );
    let addr = r.bad.address();
    assert_eq!(backend_stat(&mut c, &addr, "in_flight"), 0);
    assert_eq!(
        backend_stat(&mut c, &addr, "timeouts"),
        (total - before) as u64
    );
    finish_bystander(bystander, "trickle", r.timeout);
}

/// Fixture 4: a backend that answers garbage: the wrong reply, random bytes, an endless line,
/// a `VALUE` header announcing 1 GiB followed by endless data.
#[test]
fn garbage_answers_are_protocol_errors_and_the_connection_is_dropped() {
    let r = rig(
        BadBackend::start(Behaviour::Garbage(Garbage::WrongReply)),
        "garbage",
        1000,
        "error",
    );
    let (b, g) = (&r.bad_keys, &r.good_keys);
    let bystander = bystander(&r);
    let mut c = r.proxy.client();
    c.set(&g[1], b"one");
    let base = r.proxy.rss_kib();
    let peak = RssPeak::start(r.proxy.pid(), Duration::from_millis(1));

    // The endless kinds end by the timeout, or at once if memroute bounds what it buffers
    // of a reply; either way they must not make memroute buffer the garbage (see `peak`).
    let kinds = [
        (Garbage::WrongReply, PROTOCOL),
        (Garbage::RandomBytes, PROTOCOL),
        (Garbage::EndlessLine, TIMEOUT),
        (Garbage::HugeValue, TIMEOUT),
    ];
    for (kind, error) in kinds {
        r.bad.set_garbage(kind);
        let before = r.bad.accepted();
        let v = format!("{kind:?}");
        let steps = [
            step(format!("get {}\r\n", b[0]), &[error, PROTOCOL]),
            step(set_request(&g[0], &v), &["STORED\r\n"]),
            step(format!("get {}\r\n", g[0]), &[&value_reply(&g[0], &v)]),
            step(set_request(&b[1], "x"), &[error, PROTOCOL]),
            // The error policy: a multi-get touching the failed backend is the error.
            step(format!("get {} {}\r\n", g[1], b[2]), &[error, PROTOCOL]),
            step(format!("get {}\r\n", g[1]), &[&value_reply(&g[1], "one")]),
            step("version\r\n", &[VERSION_REPLY]),
        ];
        let (replies, took) = pipeline(&mut c, &steps);
        assert!(
            took < r.timeout + SLACK,
            "{kind:?}: answered after {took:?}"
        );
        if error == PROTOCOL {
            assert!(took < r.timeout, "{kind:?}: not detected until {took:?}");
        }
        // (c): memroute dropped the connection that sent garbage, and sent nothing more on
        // it; the next request goes over a new one.
        let conn = r.bad.conn(before);
        r.bad
            .wait_until(Duration::from_secs(5), "memroute to close", |_| {
                conn.peer_closed()
            });
        let sent = conn.requests();
        assert_eq!(sent[0], format!("get {}", b[0]), "{kind:?}");
        assert!(sent.len() <= 3, "{kind:?}: {sent:?}");
        let t = Instant::now();
        c.send(format!("get {}\r\n", b[3]));
        let reply = text(&c.read_retrieval());
        assert!(reply == error || reply == PROTOCOL, "{kind:?}: {reply:?}");
        assert!(
            t.elapsed() < r.timeout + SLACK,
            "{kind:?}: {:?}",
            t.elapsed()
        );
        assert!(
            r.bad.conns()[before + 1..]
                .iter()
                .any(|c| c.requests() == [format!("get {}", b[3])]),
            "{kind:?}: no new connection: {:?}",
            r.bad.summary()
        );
        assert_eq!(
            conn.requests(),
            sent,
            "{kind:?}: the old connection was reused"
        );
        eprintln!(
            "{kind:?}: {:?} after {took:?}; the fixture wrote {} bytes",
            replies[0].trim_end(),
            conn.bytes_written()
        );
    }

    // (d): 300 failing requests alternating wrong replies and random bytes, then a few more
    // endless ones.
    let round = |c: &mut Client, n: usize, kind: Garbage, error: &str| {
        r.bad.set_garbage(kind);
        let k = &g[n % 40];
        let v = format!("v{n}");
        let steps = [
            step(format!("get {}\r\n", b[n % b.len()]), &[error, PROTOCOL]),
            step(set_request(k, &v), &["STORED\r\n"]),
            step(format!("get {k}\r\n"), &[&value_reply(k, &v)]),
        ];
        let (_, took) = pipeline(c, &steps);
        assert!(took < r.timeout + SLACK, "round {n} took {took:?}");
    };
    let cheap = |n: usize| match n % 2 {
        0 => Garbage::WrongReply,
        _ => Garbage::RandomBytes,
    };
    for n in 0..20 {
        round(&mut c, n, cheap(n), PROTOCOL);
    }
    let base_cheap = r.proxy.rss_kib();
    for n in 20..320 {
        round(&mut c, n, cheap(n), PROTOCOL);
    }
    assert_rss_flat(&r.proxy, base_cheap, "300 garbage replies");
    let endless = [Garbage::EndlessLine, Garbage::HugeValue];
    for n in 0..6 {
        let kind = endless[n % endless.len()];
        round(&mut c, n, kind, TIMEOUT);
    }
    assert_rss_flat(&r.proxy, base, "endless garbage");
    let peak = peak.finish();
    eprintln!("garbage: RSS peak {peak} KiB (base {base} KiB)");
    assert!(
        peak < base + RSS_BOUND_KIB,
        "memroute buffered garbage: RSS peaked at {peak} KiB (base {base} KiB)"
    );
    r.bad.wait_until(
        Duration::from_secs(5),
        "memroute to close every connection",
        |bad| bad.conns().iter().all(|c| c.peer_closed()),
    );
    let addr = r.bad.address();
    assert_eq!(backend_stat(&mut c, &addr, "in_flight"), 0);
    assert_eq!(
        backend_stat(&mut c, &addr, "connection_failures"),
        r.bad.accepted() as u64
    );
    finish_bystander(bystander, "garbage", r.timeout);
}

/// Fixture 4b: garbage that frames: well-formed one-byte `VALUE` items of the requested key,
/// sent as fast as memroute reads them, never followed by `END`. A `get` of one key has at
/// most one item, so the second is a protocol error; and however fast the backend sends, the
/// connection task must still yield to the worker's other clients and keep its deadline
/// (found by this test: tokio's `AsyncFd` readiness takes no cooperative budget, and the
/// read arm of the connection's `biased` select always won).
#[test]
fn endless_value_items_are_not_buffered_without_bound() {
    use std::io::{Read, Write};
    let r = rig(
        BadBackend::start(Behaviour::Garbage(Garbage::EndlessItems)),
        "items",
        400,
        "error",
    );
    let b = &r.bad_keys;
    let bystander = bystander(&r);
    let base = r.proxy.rss_kib();
    let peak = RssPeak::start(r.proxy.pid(), Duration::from_millis(1));
    let mut outcomes = Vec::new();
    // Keep attacking for a while (each round is quick now), so the bystander runs alongside.
    let attack = Instant::now();
    for (n, key) in b.iter().cycle().enumerate() {
        if n >= 3 && attack.elapsed() > Duration::from_millis(500) {
            break;
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", r.proxy.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let t = Instant::now();
        s.write_all(format!("get {key}\r\n").as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut chunk = [0u8; 256];
        while !reply.ends_with(b"\r\n") && t.elapsed() < r.timeout + SLACK {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(k) => reply.extend_from_slice(&chunk[..k]),
                Err(_) => {} // read timeout: poll the deadline again
            }
        }
        let took = t.elapsed();
        let written = r.bad.conns().last().map_or(0, |c| c.bytes_written());
        if n < 3 {
            eprintln!(
                "endless items {n}: {:?} after {took:?}; the fixture wrote {written} bytes, \
                 memroute RSS now {} KiB",
                text(&reply),
                r.proxy.rss_kib()
            );
        }
        let answered = !reply.is_empty();
        outcomes.push((text(&reply), took));
        if !answered {
            break;
        }
    }
    let peak = peak.finish();
    eprintln!("endless items: RSS peak {peak} KiB (base {base} KiB)");
    for (reply, took) in &outcomes {
        assert!(
            reply == TIMEOUT || reply == PROTOCOL,
            "no error within {:?}: {reply:?} after {took:?} (RSS peak {peak} KiB, base {base} KiB)",
            r.timeout + SLACK
        );
    }
    assert!(
        peak < base + RSS_BOUND_KIB,
        "memroute buffered a never-ending reply: RSS peaked at {peak} KiB (base {base} KiB)"
    );
    finish_bystander(bystander, "items", r.timeout);
}

/// Fixture 5: a backend that fronts a real memcached and resets each connection (SO_LINGER 0)
/// after a random 1–4 requests, the last of them never answered.
#[test]
fn resetting_backend_fails_only_what_was_in_flight() {
    let real = Memcached::start();
    let bad = BadBackend::start(Behaviour::Reset {
        upstream: real.port,
        max_requests: 4,
        seed: 0x5eed,
    });
    let r = rig(bad, "reset", 2000, "miss");
    let (b, g) = (&r.bad_keys, &r.good_keys);
    let bystander = bystander(&r);
    let mut c = r.proxy.client();
    // Every bad key has a value from the start, so a miss can only be a failure.
    let mut direct = real.client();
    // Values a get of each key may return: the last one stored for sure, plus any whose
    // set failed since (the reset may have come after memcached stored it).
    let mut allowed: HashMap<String, Vec<String>> = HashMap::new();
    for k in &b[..8] {
        direct.set(k, format!("{k}-init").as_bytes());
        allowed.insert(k.clone(), vec![format!("{k}-init")]);
    }
    let mut good_values: HashMap<String, String> = HashMap::new();
    let (mut ok, mut failed) = (0usize, 0usize);

    const BAD_PER_BATCH: [usize; 6] = [1, 3, 6, 2, 5, 4];
    let mut batch = |c: &mut Client, n: usize| {
        let mut steps = Vec::new();
        let mut sets = Vec::new();
        // 1 to 6 requests to the resetting backend per batch, so that a connection's
        // requests may span batches.
        for i in 0..BAD_PER_BATCH[n % BAD_PER_BATCH.len()] {
            let k = &b[(n * 3 + i) % 8];
            if i % 2 == 0 {
                let v = format!("{k}-{n}-{i}");
                steps.push(step(set_request(k, &v), &["STORED\r\n", CLOSED]));
                sets.push((steps.len() - 1, k.clone(), v));
            } else {
                let mut ok_replies: Vec<String> = allowed[k]
                    .iter()
                    .chain(sets.iter().filter(|(_, sk, _)| sk == k).map(|(_, _, v)| v))
                    .map(|v| value_reply(k, v))
                    .collect();
                ok_replies.push(MISS.to_string());
                steps.push(Step {
                    request: format!("get {k}\r\n"),
                    allowed: ok_replies,
                });
            }
            let gk = &g[(n * 6 + i) % 40];
            let gv = format!("{gk}={n}.{i}");
            steps.push(step(set_request(gk, &gv), &["STORED\r\n"]));
            steps.push(step(format!("get {gk}\r\n"), &[&value_reply(gk, &gv)]));
            good_values.insert(gk.clone(), gv);
        }
        let (replies, took) = pipeline(c, &steps);
        // A reset is noticed at once, not by the timeout.
        assert!(took < r.timeout, "batch {n} took {took:?}");
        // Track what each bad key may hold now; count outcomes.
        for (i, s) in steps.iter().enumerate() {
            let key = s.request.split_whitespace().nth(1).unwrap();
            if !b.iter().any(|k| k == key) {
                continue;
            }
            let good = replies[i] != CLOSED && replies[i] != MISS;
            if good {
                ok += 1;
            } else {
                failed += 1;
            }
        }
        for (i, k, v) in sets {
            let entry = allowed.get_mut(&k).unwrap();
            if replies[i] == "STORED\r\n" {
                *entry = vec![v];
            } else {
                entry.push(v);
            }
        }
        // A get that answered a value narrows what the key holds.
        for (i, s) in steps.iter().enumerate() {
            if let Some(rest) = replies[i].strip_prefix("VALUE ") {
                let key = s.request.split_whitespace().nth(1).unwrap();
                if let Some(entry) = allowed.get_mut(key) {
                    let value = rest.split("\r\n").nth(1).unwrap().to_string();
                    // Only if no later set in this batch could have changed it.
                    let later_set = steps[i + 1..]
                        .iter()
                        .any(|s2| s2.request.starts_with(&format!("set {key} ")));
                    if !later_set {
                        *entry = vec![value];
                    }
                }
            }
        }
    };
    const BATCHES: usize = 90;
    for n in 0..6 {
        batch(&mut c, n);
    }
    let base = r.proxy.rss_kib();
    for n in 6..BATCHES {
        batch(&mut c, n);
    }
    assert_rss_flat(&r.proxy, base, "requests through a resetting backend");
    let sent: usize = (0..BATCHES)
        .map(|n| BAD_PER_BATCH[n % BAD_PER_BATCH.len()])
        .sum();
    eprintln!("reset backend: {sent} requests, {ok} answered, {failed} failed");
    assert_eq!(ok + failed, sent);
    assert!(ok >= 60 && failed >= 60, "{ok} answered, {failed} failed");

    // (c): each connection ended with the fixture's reset (it takes 1-4 requests, the last
    // unanswered); memroute then opened a new one for the next request, never reusing one.
    let conns = r.bad.conns();
    let resets = conns.iter().filter(|c| c.we_closed()).count();
    eprintln!(
        "reset backend: {} connections, {resets} resets",
        conns.len()
    );
    assert!(resets >= 60, "only {resets} resets");
    assert!(
        conns.len() == resets || conns.len() == resets + 1,
        "{} connections for {resets} resets",
        conns.len()
    );
    for conn in &conns {
        let n = conn.requests().len();
        assert!(
            (1..=4).contains(&n),
            "connection {} carried {n} requests",
            conn.id
        );
    }
    let addr = r.bad.address();
    assert_eq!(backend_stat(&mut c, &addr, "in_flight"), 0);
    assert_eq!(
        backend_stat(&mut c, &addr, "connection_failures"),
        resets as u64
    );
    // The healthy keys hold what was last written.
    for (k, v) in &good_values {
        assert_eq!(c.get(k).as_deref(), Some(v.as_bytes()), "{k}");
    }
    finish_bystander(bystander, "reset", Duration::from_secs(1));
}
