//! Hostile and careless clients against real processes: slowloris lines, endless and
//! never-finished data blocks, pipeliners that never read, clients that vanish with hundreds
//! of requests in flight, and ten thousand idle connections. In every test a well-behaved
//! client runs checked traffic the whole time (every reply byte-exact and in order), and
//! memroute's resident memory is held to a bound derived from its configured caps.
//!
//! (tests/failures.rs has the simpler cases: one over-long line, a few vanishing clients, one
//! stalled reader of big values, the in-flight cap.)

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::config::{proxy_with_pool, TempFiles};
use common::traffic::Traffic;
use common::{
    assert_bytes, assert_rss, mix, pattern, poll_until, set_request_bytes, text, value_item_bytes,
    Client, Memcached, Proxy, RssPeak, VERSION_REPLY,
};

const TOO_LARGE: &str = "SERVER_ERROR object too large for cache\r\n";
const TOO_MANY: &str = "SERVER_ERROR too many open connections\r\n";
const KIB: u64 = 1024;
const MIB: usize = 1024 * 1024;
/// The checked traffic kept up: no batch of it took this long.
const SERVED_WITHIN: Duration = Duration::from_secs(3);

/// memroute from a config file: top-level keys `top`, one pool `main` over `servers` with
/// extra pool keys. The upstream timeout is 10 s: these tests are about clients, and on a
/// loaded machine a debug build must not turn slowness into backend timeouts (which would
/// answer retrievals as misses).
fn proxy_with(top: &str, servers: &[String], pool_keys: &str) -> (Proxy, TempFiles) {
    let keys = format!("hash = \"md5\"\ntimeout = 10000\n{pool_keys}");
    proxy_with_pool(top, servers, &keys)
}

/// `stats backends` of memroute: every `pool:backend:counter` line with a numeric value, as
/// (name, value).
fn backend_stats(c: &mut Client) -> Vec<(String, u64)> {
    c.stats_lines("backends")
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.parse().ok()?)))
        .collect()
}

/// Peak RSS of `proxy`, sampled every 5 ms.
fn rss_peak(proxy: &Proxy) -> RssPeak {
    RssPeak::start(proxy.pid(), Duration::from_millis(5))
}

/// What a non-blocking read found.
enum Peek {
    Data,
    Nothing,
    Closed,
}

fn peek(s: &mut TcpStream, into: &mut Vec<u8>) -> Peek {
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => Peek::Closed,
        Ok(n) => {
            into.extend_from_slice(&buf[..n]);
            Peek::Data
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => Peek::Nothing,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Peek::Closed,
        Err(e) => panic!("read: {e}"),
    }
}

/// The kernel's receive queue (bytes not yet read by the application) of the TCP socket
/// `local_port` ↔ `remote_port` on 127.0.0.1, from /proc/net/tcp.
fn recv_queue(local_port: u16, remote_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 4 && port(f[1]) == Some(local_port) && port(f[2]) == Some(remote_port) {
            u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok()
        } else {
            None
        }
    })
}

// ---------------------------------------------------------------------------------------
// 1. Slowloris.
// ---------------------------------------------------------------------------------------

/// Whether attacker `i` sends a retrieval line (every fourth) rather than a command line.
fn retrieval_line(i: usize) -> bool {
    i.is_multiple_of(4)
}

/// Attacker `i`'s endless line: a command line (2048-byte limit) or, for every fourth, a
/// `get` line (no limit, as in memcached: its keys are served as they arrive). Never a `\n`.
fn endless_line(i: usize, len: usize) -> Vec<u8> {
    let mut line = if retrieval_line(i) {
        b"get".to_vec()
    } else {
        format!("set slow:{i} 0 0 1").into_bytes()
    };
    let mut n = 0;
    while line.len() < len {
        line.extend(format!(" k{i}x{n}").into_bytes());
        n += 1;
    }
    line.truncate(len);
    line
}

#[test]
fn slowloris_lines_are_cut_at_the_line_limit_while_others_are_served() {
    // Command lines are closed silently past 2048 bytes, as memcached closes them; endless
    // `get` lines are read and their keys served as they come, in bounded memory.
    const ATTACKERS: usize = 200;
    const SLOW_BYTES: usize = 2000; // just under the 2048-byte command line limit
    const CHUNK: usize = 4096;
    let m = Memcached::start();
    let (proxy, _dir) = proxy_with("threads = 2", &[m.server(1)], "");
    let mut stats = proxy.client();
    let checker = Traffic::named("chk").start(&proxy);
    let baseline = proxy.rss_kib();
    let rss = rss_peak(&proxy);

    // Each command-line attacker sends up to 128 times its line limit, then waits to be cut;
    // each get line goes on for 128 KiB of keys: 43.75 MiB in all.
    let lines: Vec<Vec<u8>> = (0..ATTACKERS).map(|i| endless_line(i, 4096)).collect();
    // After its first 4 KiB, every line goes on with more of the same.
    let filler = b" kx".repeat(CHUNK / 3 + 1);
    // A get line goes on for twice the 64 KiB memroute once refused (some 40,000 keys).
    let cap = |i: usize| {
        if retrieval_line(i) {
            128 * 1024
        } else {
            256 * 1024
        }
    };
    let bytes_at = |i: usize, from: usize, len: usize| -> &[u8] {
        if from < lines[i].len() {
            &lines[i][from..lines[i].len().min(from + len)]
        } else {
            &filler[..len.min(cap(i) - from)]
        }
    };
    let mut conns: Vec<TcpStream> = (0..ATTACKERS)
        .map(|_| {
            let s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
            s.set_nodelay(true).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    let mut sent = vec![0usize; ATTACKERS];

    // Phase 1: a few bytes at a time, all 200 at once, up to just under the command limit.
    while sent[0] < SLOW_BYTES {
        for (i, s) in conns.iter_mut().enumerate() {
            let n = 16.min(SLOW_BYTES - sent[i]);
            s.write_all(bytes_at(i, sent[i], n)).unwrap();
            sent[i] += n;
        }
        thread::sleep(Duration::from_millis(2));
    }
    poll_until(
        Duration::from_secs(10),
        "memroute to take every line",
        || stats.stat_num("bytes_read") >= (ATTACKERS * SLOW_BYTES) as u64,
    );
    // Nobody was answered or closed: an unfinished line is no error yet.
    for (i, s) in conns.iter_mut().enumerate() {
        s.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        assert!(
            matches!(peek(s, &mut got), Peek::Nothing),
            "attacker {i} got {:?} or was closed with {SLOW_BYTES} bytes of an unfinished line",
            text(&got)
        );
    }
    assert_eq!(stats.stat_num("curr_connections"), ATTACKERS as u64 + 2);
    // The checked client is served while 200 lines hang.
    checker.wait_batches(5, "while 200 slowloris lines hang");
    // Each hanging connection holds its partial line (< 2 KiB) in a read buffer that grows
    // by doubling (<= 4 KiB) plus its task, socket and reply queue (~3 KiB): 200 x 16 KiB
    // allowed, plus 4 MiB for the allocator and runtime.
    let slow_peak = rss.peak();
    assert_rss(
        "200 slowloris lines of 2000 bytes",
        slow_peak,
        baseline,
        ATTACKERS as u64 * 16 + 4 * KIB,
    );

    // Phase 2: keep going, 4 KiB per round, until memroute cuts each command line and every
    // get line has sent its 128 KiB of keys.
    let mut replies: Vec<Vec<u8>> = vec![Vec::new(); ATTACKERS];
    let mut closed_at: Vec<Option<usize>> = vec![None; ATTACKERS];
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = |i: usize, closed_at: &[Option<usize>], sent: &[usize]| {
        closed_at[i].is_some() || (retrieval_line(i) && sent[i] == cap(i))
    };
    while (0..ATTACKERS).any(|i| !done(i, &closed_at, &sent)) {
        assert!(
            Instant::now() < deadline,
            "attackers not cut or not read: {closed_at:?} {sent:?}"
        );
        for i in 0..ATTACKERS {
            if closed_at[i].is_some() || sent[i] == cap(i) {
                continue;
            }
            match conns[i].write(bytes_at(i, sent[i], CHUNK)) {
                Ok(k) => sent[i] += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // memroute closed it: the rest is read below.
                Err(e)
                    if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
                Err(e) => panic!("attacker {i}: write: {e}"),
            }
        }
        for i in 0..ATTACKERS {
            while closed_at[i].is_none() {
                match peek(&mut conns[i], &mut replies[i]) {
                    Peek::Data => continue,
                    Peek::Nothing => break,
                    Peek::Closed => closed_at[i] = Some(sent[i]),
                }
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
    for i in 0..ATTACKERS {
        if retrieval_line(i) {
            // 128 KiB of keys later, the get is still being read; ending it ends the reply.
            assert_eq!(closed_at[i], None, "get line attacker {i} closed");
            conns[i].set_nonblocking(false).unwrap();
            conns[i]
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            conns[i].write_all(b"\r\n").unwrap();
            let mut end = [0u8; 5];
            conns[i].read_exact(&mut end).unwrap();
            assert_eq!(&end, b"END\r\n", "get line attacker {i}");
            continue;
        }
        // Closed without a word, as memcached closes it, and only past the limit.
        assert_eq!(text(&replies[i]), "", "attacker {i} (sent {})", sent[i]);
        assert!(
            closed_at[i].unwrap() > 2048,
            "attacker {i} cut after only {} bytes",
            closed_at[i].unwrap()
        );
    }
    drop(conns);
    poll_until(Duration::from_secs(10), "attackers to be gone", || {
        stats.stat_num("curr_connections") == 2
    });
    checker.wait_batches(3, "after the slowloris attack");
    let peak = rss.finish();
    checker.finish().assert_served("slowloris", SERVED_WITHIN);
    // Phase 2 adds, per get-line attacker, a read buffer (64 KiB of room, doubled at most)
    // and its batch of keys on their way, per command-line attacker a 2 KiB line plus one
    // read: 50 x 128 + 150 x 66 KiB, plus the phase-1 allowance: 23.6 MiB. Buffering what
    // they send (43.75 MiB) breaks it.
    let bound = 50 * 128 + 150 * 66 + ATTACKERS as u64 * 16 + 4 * KIB;
    assert_rss("slowloris, lines cut", peak, baseline, bound);
}

// ---------------------------------------------------------------------------------------
// 2. Endless and unfinished data blocks.
// ---------------------------------------------------------------------------------------

#[test]
fn an_endless_data_block_is_discarded_as_it_streams() {
    const DECLARED: usize = 200 * MIB;
    let m = Memcached::start_with(&["-m", "64"]);
    // One worker: the streaming attacker and the checked client share its thread and its
    // upstream connection.
    let (proxy, _dir) = proxy_with("threads = 1", &[m.server(1)], "item_size_max = \"1m\"");
    let mut stats = proxy.client();
    let mut observer = proxy.client();
    observer.set("victim", b"good");
    let checker = Traffic::named("chk").start(&proxy);
    let baseline = proxy.rss_kib();
    let rss = rss_peak(&proxy);

    // The data block is made of commands that would be visible if memroute parsed them.
    let chunk: Vec<u8> = b"delete victim\r\nflush_all\r\nset victim 0 0 4\r\nevil\r\nget chk:0\r\n"
        .iter()
        .copied()
        .cycle()
        .take(MIB)
        .collect();
    let mut attacker = proxy.client();
    let mut writer = attacker.stream.try_clone().unwrap();
    let checked = checker.batch_counter();
    let stream = thread::spawn(move || {
        writer
            .write_all(format!("set endless 0 0 {DECLARED}\r\n").as_bytes())
            .unwrap();
        let t = Instant::now();
        let checked_before = checked.load(Ordering::Relaxed);
        for _ in 0..DECLARED / MIB {
            writer.write_all(&chunk).unwrap();
        }
        let checked_meanwhile = checked.load(Ordering::Relaxed) - checked_before;
        // The block's end, then ordinary requests: the stream is in sync.
        writer
            .write_all(b"\r\nget victim\r\nset after 0 0 2\r\nok\r\nget after\r\nversion\r\n")
            .unwrap();
        (t.elapsed(), checked_meanwhile)
    });
    // As memcached does, the refusal comes once the block has been swallowed whole.
    let (elapsed, checked_meanwhile) = stream.join().unwrap();
    assert_eq!(text(&attacker.read_line()), TOO_LARGE);
    // (How many checked batches ran meanwhile is reported, not asserted: fairness between
    // clients of one worker is a_client_streaming_flat_out_does_not_starve_its_worker's.)
    checker.wait_batches(3, "after an endless data block");
    let expected = format!(
        "VALUE victim 0 4\r\ngood\r\nEND\r\nSTORED\r\nVALUE after 0 2\r\nok\r\nEND\r\n{VERSION_REPLY}"
    );
    let got = attacker.read_n(expected.len());
    assert_bytes(
        &got,
        expected.as_bytes(),
        "requests after the endless block",
    );
    attacker.expect("get endless\r\n", "END\r\n");
    drop(attacker);
    assert!(stats.stat_num("bytes_read") > DECLARED as u64);
    let peak = rss.finish();
    eprintln!(
        "endless block: 200 MiB streamed and discarded in {elapsed:?}, \
         {checked_meanwhile} checked batches meanwhile"
    );
    // Discarding holds no more than one read buffer (64 KiB of room, doubled by growth at
    // most) on this connection: 128 KiB, plus 4 MiB for allocator and runtime. Holding the
    // stream, or any growing part of it, would cost up to 200 MiB.
    assert_rss("200 MiB endless data block", peak, baseline, 128 + 4 * KIB);

    // Data blocks within the limit that never complete: memroute holds each (it must, to
    // forward it whole) and keeps serving everyone else.
    const STALLED: usize = 20;
    const LEN: usize = 1_000_000;
    const SENT: usize = 900_000;
    let values: Vec<Vec<u8>> = (0..STALLED).map(|i| pattern(i as u64, LEN)).collect();
    let before = stats.stat_num("bytes_read");
    let baseline = proxy.rss_kib();
    let rss = rss_peak(&proxy);
    let mut stalled: Vec<Client> = (0..STALLED)
        .map(|i| {
            let mut c = proxy.client();
            let mut req = format!("set stall:{i} 0 0 {LEN}\r\n").into_bytes();
            req.extend_from_slice(&values[i][..SENT]);
            c.send(req);
            c
        })
        .collect();
    poll_until(
        Duration::from_secs(10),
        "memroute to read the blocks",
        || stats.stat_num("bytes_read") >= before + (STALLED * SENT) as u64,
    );
    checker.wait_batches(5, "while 20 data blocks hang unfinished");
    assert_eq!(observer.get("stall:0"), None);
    assert_eq!(observer.get("victim").as_deref(), Some(&b"good"[..]));
    // One finishes late: it is stored whole, and its stream goes on.
    let mut rest = values[0][SENT..].to_vec();
    rest.extend_from_slice(b"\r\nget stall:0\r\n");
    stalled[0].send(rest);
    assert_eq!(text(&stalled[0].read_line()), "STORED\r\n");
    assert_bytes(
        &stalled[0].read_retrieval(),
        &[
            value_item_bytes("stall:0", 0, &values[0]),
            b"END\r\n".to_vec(),
        ]
        .concat(),
        "late-finished data block",
    );
    let peak = rss.peak();
    // Each unfinished block is buffered up to its declared length (<= item_size_max, 1 MiB)
    // plus one read's room (64 KiB): 20 x 1088 KiB, plus 4 MiB for allocator and runtime.
    assert_rss(
        "20 unfinished 1 MB data blocks",
        peak,
        baseline,
        STALLED as u64 * 1088 + 4 * KIB,
    );
    // The others vanish: nothing of theirs is stored, their connections are gone.
    drop(stalled);
    poll_until(
        Duration::from_secs(10),
        "stalled clients to be gone",
        || stats.stat_num("curr_connections") == 3,
    );
    for i in 1..STALLED {
        assert_eq!(observer.get(&format!("stall:{i}")), None, "stall:{i}");
    }
    rss.finish();
    checker
        .finish()
        .assert_served("endless and unfinished data blocks", SERVED_WITHIN);
}

// ---------------------------------------------------------------------------------------
// 3. A pipeliner that never reads.
// ---------------------------------------------------------------------------------------

const MG_KEYS: usize = 100;
const MG_VALUE: usize = 4096;

fn mg_key(i: usize) -> String {
    // Long keys make each request ~2.4 KB, so the kernel's socket buffers (several MB)
    // hold a few thousand requests rather than a hundred thousand.
    format!("mg{i:03}:{}", "k".repeat(230))
}

fn mg_value(i: usize) -> Vec<u8> {
    pattern(1000 + i as u64, MG_VALUE)
}

/// Request `n` of the pipeliner: 10 keys, a different selection and order each time.
fn mg_keys(n: usize) -> Vec<usize> {
    (0..10)
        .map(|j| (mix(n as u64 * 16 + j) % MG_KEYS as u64) as usize)
        .collect()
}

fn mg_request(n: usize) -> Vec<u8> {
    let mut req = b"get".to_vec();
    for k in mg_keys(n) {
        req.push(b' ');
        req.extend(mg_key(k).into_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req
}

fn mg_reply(n: usize) -> Vec<u8> {
    static ITEMS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    let items = ITEMS.get_or_init(|| {
        (0..MG_KEYS)
            .map(|k| value_item_bytes(&mg_key(k), 0, &mg_value(k)))
            .collect()
    });
    let mut reply = Vec::new();
    for k in mg_keys(n) {
        reply.extend_from_slice(&items[k]);
    }
    reply.extend_from_slice(b"END\r\n");
    reply
}

/// The non-reading pipeliner's side: requests written so far, the last possibly in part.
#[derive(Default)]
struct Pipeliner {
    sent: usize,
    /// The unwritten rest of request `sent - 1`.
    pending: Vec<u8>,
}

impl Pipeliner {
    /// 20,000 requests would be 870 MB of replies: memroute must stop reading long before.
    const MAX_REQUESTS: usize = 20_000;

    /// Writes requests until the socket would block; whether any byte was taken.
    fn write_more(&mut self, stream: &mut TcpStream) -> bool {
        let mut progressed = false;
        loop {
            if self.pending.is_empty() {
                assert!(
                    self.sent < Self::MAX_REQUESTS,
                    "memroute kept reading: {} multi-gets taken from a client that reads nothing",
                    self.sent
                );
                self.pending = mg_request(self.sent);
                self.sent += 1;
            }
            match stream.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return progressed,
                Err(e) => panic!("attacker write: {e}"),
            }
        }
    }
}

#[test]
fn a_pipeliner_that_never_reads_is_stopped_at_its_buffer_cap_and_loses_nothing() {
    const INFLIGHT: u64 = 64;
    const BUFFER_KIB: u64 = 1024;
    let m = Memcached::start_with(&["-m", "64"]);
    let (proxy, _dir) = proxy_with(
        "threads = 1",
        &[m.server(1)],
        &format!(
            "server_connections = 1\nmax_client_inflight = {INFLIGHT}\nmax_client_buffer = \"{BUFFER_KIB}k\""
        ),
    );
    let mut setup = proxy.client();
    for i in 0..MG_KEYS {
        setup.set(&mg_key(i), &mg_value(i));
    }
    let reply_len = mg_reply(0).len() as u64;
    let mut stats = proxy.client();
    let mut backend = m.client();
    let checker = Traffic::named("chk").start(&proxy);
    let baseline = proxy.rss_kib();
    let rss = rss_peak(&proxy);

    let mut attacker = proxy.client();
    let attacker_port = attacker.stream.local_addr().unwrap().port();
    attacker.stream.set_nonblocking(true).unwrap();
    let mut pipe = Pipeliner::default();
    // Fill until the attacker's writes block.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pipe.write_more(&mut attacker.stream) {
        assert!(
            Instant::now() < deadline,
            "memroute kept reading ({} requests sent)",
            pipe.sent
        );
        thread::sleep(Duration::from_millis(5));
    }
    // Then watch with the checked client parked: memroute has stopped reading when, for
    // 600 ms and at least 10 samples, the attacker cannot write a byte, memroute's receive
    // queue on that connection stays full and unchanged, and neither memroute nor the
    // backend counts another get.
    checker.park();
    let mut last = (0, 0, 0);
    let mut stable_since: Option<(Instant, u32)> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut history = std::collections::VecDeque::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "memroute never stopped reading ({} requests sent); last samples (attacker wrote, \
             receive queue, memroute cmd_get, backend cmd_get): {history:?}",
            pipe.sent
        );
        let progressed = pipe.write_more(&mut attacker.stream);
        let now = (
            recv_queue(proxy.port, attacker_port).expect("attacker socket in /proc/net/tcp"),
            stats.stat_num("cmd_get"),
            backend.stat_num("cmd_get"),
        );
        history.push_back((progressed, now));
        if history.len() > 12 {
            history.pop_front();
        }
        if !progressed && now == last && now.0 > 0 {
            let (since, samples) = stable_since.get_or_insert((Instant::now(), 0));
            *samples += 1;
            if *samples >= 10 && since.elapsed() >= Duration::from_millis(600) {
                break;
            }
        } else {
            stable_since = None;
        }
        last = now;
        thread::sleep(Duration::from_millis(20));
    }
    let (queued, gets_taken, backend_gets) = last;
    let sent = pipe.sent;
    // memroute counts keys, the checked client's too.
    let taken = (gets_taken - checker.keys_read()) / 10;
    eprintln!(
        "non-reading pipeliner: {sent} multi-gets written, {taken} taken by memroute, \
         {queued} bytes left in memroute's receive queue, backend cmd_get {backend_gets}"
    );
    // It stopped well short of what was sent: at most the buffer cap's worth of replies plus
    // those in flight (and what the kernel's socket buffers absorbed) were produced.
    assert!((taken as usize) < sent, "memroute took all {sent} requests");
    // The checked client is served meanwhile over the same upstream connection, and memroute
    // still does not read from the attacker.
    checker.unpark();
    checker.wait_batches(5, "while a pipeliner is held back");
    assert!(
        !pipe.write_more(&mut attacker.stream),
        "memroute read from the attacker again"
    );
    assert_eq!(recv_queue(proxy.port, attacker_port), Some(queued));
    let peak = rss.peak();
    // Bound: replies held for this client are at most max_client_buffer (1 MiB) plus one
    // reply crossing it, plus max_client_inflight (64) replies completing after the check
    // (64 x 43 KB); each may pin the upstream read buffer it is a slice of (<= 64 KiB), so
    // 90 x (43 + 64) KiB; plus its read buffer (64 KiB) and 8 MiB for allocator and runtime.
    // Reading on until the socket buffers fill would hold 100+ MiB.
    let allowance = BUFFER_KIB + 90 * (reply_len / 1024 + 1 + 64) + 64 + 8 * KIB;
    assert_rss("non-reading pipeliner", peak, baseline, allowance);

    let t = Instant::now();
    // Now it reads: every reply, in order, nothing lost.
    attacker.stream.set_nonblocking(false).unwrap();
    let mut writer = attacker.stream.try_clone().unwrap();
    let finish = thread::spawn(move || {
        writer.write_all(&pipe.pending).unwrap();
        writer.write_all(b"version\r\n").unwrap();
    });
    for n in 0..sent {
        let got = attacker.read_n(reply_len as usize);
        assert_bytes(
            &got,
            &mg_reply(n),
            &format!("pipelined multi-get {n} of {sent}"),
        );
    }
    finish.join().unwrap();
    assert_eq!(text(&attacker.read_line()), VERSION_REPLY);
    eprintln!(
        "non-reading pipeliner: {sent} replies read and checked in {:?}",
        t.elapsed()
    );
    // Every request was taken exactly once, by memroute and by the backend (which counts
    // the checked client's keys too).
    checker.park();
    let expected_gets = 10 * sent as u64 + checker.keys_read();
    assert_eq!(stats.stat_num("cmd_get"), expected_gets, "memroute cmd_get");
    assert_eq!(
        backend.stat_num("cmd_get"),
        expected_gets,
        "backend cmd_get"
    );
    checker.unpark();
    let peak = rss.finish();
    checker
        .finish()
        .assert_served("non-reading pipeliner", SERVED_WITHIN);
    assert_rss("non-reading pipeliner, drained", peak, baseline, allowance);
}

// ---------------------------------------------------------------------------------------
// 4. Clients vanishing with hundreds of requests in flight.
// ---------------------------------------------------------------------------------------

#[test]
fn clients_vanishing_with_hundreds_in_flight_leave_shared_connections_intact() {
    const ROUNDS: usize = 50;
    const REQUESTS: usize = 300;
    let backends: Vec<Memcached> = (0..2)
        .map(|_| Memcached::start_with(&["-m", "64"]))
        .collect();
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    // One worker, one connection per backend: every client's requests share them. No health
    // checks: the backends' connection counts must show every connection memroute opens.
    let (proxy, _dir) = proxy_with(
        "threads = 1",
        &servers,
        "server_connections = 1\nhealth_check_interval = \"0s\"",
    );
    let shared: Vec<String> = (0..40).map(|i| format!("shared:{i}")).collect();
    let mut setup = proxy.client();
    for (i, k) in shared.iter().enumerate() {
        setup.set(k, &pattern(i as u64, 2048));
    }
    drop(setup);
    let mut stats = proxy.client();
    let checker = Traffic::named("chk").start(&proxy);
    let upstream_before: Vec<u64> = backends
        .iter()
        .map(|m| m.client().stat_num("total_connections"))
        .collect();

    let mut requests = Vec::new();
    for round in 0..ROUNDS {
        requests.clear();
        for j in 0..REQUESTS {
            if j % 2 == 0 {
                requests.extend(set_request_bytes(
                    &format!("gone:{round}:{j}"),
                    0,
                    &pattern(j as u64, 1024),
                ));
            } else {
                // A multi-get over both backends: split, then gathered for a client that
                // will not be there.
                requests.extend_from_slice(b"get");
                for n in 0..10 {
                    requests.push(b' ');
                    requests.extend_from_slice(shared[(j * 7 + n * 3) % shared.len()].as_bytes());
                }
                requests.extend_from_slice(b"\r\n");
            }
        }
        let mut c = proxy.client();
        c.send(&requests);
        match round % 3 {
            // Gone at once: a reset with everything in flight.
            0 => {}
            // Half-closed first: memroute sees EOF with requests in flight.
            1 => c.stream.shutdown(Shutdown::Write).unwrap(),
            // Gone in the middle of a reply.
            _ => {
                c.read_n(5000 + round * 100);
            }
        }
        drop(c);
        if round % 10 == 9 {
            checker.wait_batches(1, "while clients vanish");
        }
    }
    checker.wait_batches(3, "after the vanishing clients");
    // Every vanished client is gone and nothing is left in flight.
    poll_until(
        Duration::from_secs(10),
        "vanished clients to be gone",
        || stats.stat_num("curr_connections") == 2,
    );
    checker.park();
    poll_until(Duration::from_secs(10), "nothing in flight", || {
        backend_stats(&mut stats)
            .iter()
            .filter(|(n, _)| n.ends_with(":in_flight"))
            .all(|(_, v)| *v == 0)
    });
    // The vanished clients' requests did reach memroute and the backends (the checked client
    // sends 6 sets per batch, the setup 40): this was no empty exercise. memroute reads a
    // client only while the reply room its requests may need is free (the checked client's
    // 30 KB values make each 10-key get reserve about 300 KB), so a client that vanishes
    // leaves much of what it sent unread.
    let dispatched_sets = stats.stat_num("cmd_set") - 40 - checker.sets();
    let forwarded: u64 = backend_stats(&mut stats)
        .iter()
        .filter(|(n, _)| n.ends_with(":requests"))
        .map(|(_, v)| v)
        .sum();
    eprintln!(
        "vanishing clients: {dispatched_sets} of {} sets dispatched, {forwarded} upstream requests in all",
        ROUNDS * REQUESTS / 2
    );
    assert!(
        dispatched_sets as usize >= ROUNDS * REQUESTS / 16,
        "only {dispatched_sets} of the vanishing clients' sets reached memroute"
    );
    checker.unpark();
    // No upstream connection broke, timed out or was replaced.
    for (name, value) in backend_stats(&mut stats) {
        for bad in [
            ":errors",
            ":timeouts",
            ":connection_failures",
            ":connect_failures",
        ] {
            if name.ends_with(bad) {
                assert_eq!(value, 0, "{name}");
            }
        }
    }
    for (m, before) in backends.iter().zip(&upstream_before) {
        // The stats connection opened here is the one new connection.
        assert_eq!(
            m.client().stat_num("total_connections"),
            before + 1,
            "memroute opened a new upstream connection to {}",
            m.port
        );
    }
    checker
        .finish()
        .assert_served("vanishing clients", SERVED_WITHIN);
    assert_eq!(stats.stat_num("curr_connections"), 1);
}

// ---------------------------------------------------------------------------------------
// 5. Ten thousand idle connections, and max_clients.
// ---------------------------------------------------------------------------------------

#[test]
fn ten_thousand_idle_connections_and_max_clients() {
    const IDLE: usize = 10_000;
    // The checked client and the stats client, the idle ones, and 3 more.
    const MAX: usize = IDLE + 5;
    let m = Memcached::start();
    let (proxy, _dir) = proxy_with(
        &format!("threads = 2\nmax_clients = {MAX}"),
        &[m.server(1)],
        "",
    );
    let mut stats = proxy.client();
    let checker = Traffic::named("chk").start(&proxy);
    let baseline = proxy.rss_kib();

    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let t = Instant::now();
    let mut idle: Vec<TcpStream> = (0..IDLE).map(|_| connect()).collect();
    // Each says one thing and reads the answer, then idles (its read buffer goes back).
    for s in idle.iter_mut() {
        s.write_all(b"version\r\n").unwrap();
    }
    for (i, s) in idle.iter_mut().enumerate() {
        let mut got = vec![0u8; VERSION_REPLY.len()];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        assert_eq!(text(&got), VERSION_REPLY, "idle connection {i}");
    }
    eprintln!(
        "{IDLE} connections opened and answered in {:?}",
        t.elapsed()
    );
    poll_until(Duration::from_secs(10), "every connection counted", || {
        stats.stat_num("curr_connections") == IDLE as u64 + 2
    });
    checker.wait_batches(5, "with 10,000 idle connections open");
    let with_idle = proxy.rss_kib();
    let per_conn = (with_idle.saturating_sub(baseline)) * 1024 / IDLE as u64;
    eprintln!(
        "idle connections: RSS {baseline} KiB -> {with_idle} KiB, {per_conn} bytes per connection"
    );
    assert!(
        per_conn < 16 * 1024,
        "{per_conn} bytes of RSS per idle connection"
    );

    // Up to max_clients more are accepted (each answers), then refused with a reply.
    let answers = |s: &mut TcpStream| {
        s.write_all(b"version\r\n").unwrap();
        let mut got = vec![0u8; VERSION_REPLY.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(text(&got), VERSION_REPLY);
    };
    // Refused: the reply, then a clean close (EOF, not a reset).
    let refused = |mut s: TcpStream| {
        let mut got = Vec::new();
        if let Err(e) = s.read_to_end(&mut got) {
            panic!("refused connection: {e} after {:?}", text(&got));
        }
        assert_eq!(text(&got), TOO_MANY);
    };
    let mut extra: Vec<TcpStream> = Vec::new();
    for _ in 0..MAX - IDLE - 2 {
        let mut s = connect();
        answers(&mut s);
        extra.push(s);
    }
    for _ in 0..5 {
        refused(connect());
    }
    assert_eq!(stats.stat_num("rejected_connections"), 5);
    assert_eq!(stats.stat_num("curr_connections"), MAX as u64);
    // When some leave, others get in again, up to the limit.
    idle.truncate(IDLE - 100);
    poll_until(Duration::from_secs(10), "100 connections to close", || {
        stats.stat_num("curr_connections") == MAX as u64 - 100
    });
    for _ in 0..100 {
        let mut s = connect();
        answers(&mut s);
        idle.push(s);
    }
    refused(connect());
    assert_eq!(stats.stat_num("rejected_connections"), 6);
    checker.wait_batches(3, "at max_clients");

    drop(idle);
    drop(extra);
    poll_until(Duration::from_secs(20), "idle connections to close", || {
        stats.stat_num("curr_connections") == 2
    });
    eprintln!("after they closed: RSS {} KiB", proxy.rss_kib());
    checker
        .finish()
        .assert_served("10,000 idle connections", SERVED_WITHIN);
}

/// Requests left in the read buffer when the in-flight cap stopped decoding must wait for
/// the reply buffer cap too (found by this test: they were decoded as soon as replies drained
/// below the in-flight cap). One 2 KiB read holds 227 `get big\r\n`: with 256 KiB values, a
/// client that never reads made memroute queue 227 x 256 KiB = 57 MiB of replies, though its
/// caps are 8 requests in flight and 1 MiB of replies.
#[test]
fn requests_held_back_by_the_inflight_cap_respect_the_buffer_cap() {
    const INFLIGHT: u64 = 8;
    const BUFFER_KIB: u64 = 1024;
    const VALUE: usize = 256 * 1024;
    const GETS: usize = 2000;
    let m = Memcached::start_with(&["-m", "64"]);
    let (proxy, _dir) = proxy_with(
        "threads = 1",
        &[m.server(1)],
        &format!("max_client_inflight = {INFLIGHT}\nmax_client_buffer = \"{BUFFER_KIB}k\""),
    );
    let value = pattern(7, VALUE);
    let mut stats = proxy.client();
    stats.set("big", &value);
    let baseline = proxy.rss_kib();
    let rss = rss_peak(&proxy);

    // 18 KB of requests for 500 MiB of replies, never read (until the end).
    let mut c = proxy.client();
    c.send("get big\r\n".repeat(GETS));
    let mut last = 0;
    let mut stable = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while stable < 20 {
        assert!(Instant::now() < deadline, "memroute never stopped");
        thread::sleep(Duration::from_millis(20));
        let now = stats.stat_num("cmd_get");
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
    }
    let peak = rss.finish();
    eprintln!("backlog: {last} of {GETS} gets of 256 KiB taken from a client that reads nothing");
    // Bound: max_client_buffer (1 MiB) plus one reply crossing it, plus 8 in flight, each
    // reply possibly pinning a 64 KiB upstream read buffer besides itself: 10 x (256 + 64)
    // KiB, plus the read buffer (64 KiB) and 8 MiB for allocator and runtime.
    assert_rss(
        "non-reader held back by the in-flight cap",
        peak,
        baseline,
        BUFFER_KIB + 10 * (256 + 64) + 64 + 8 * KIB,
    );
    // Nothing lost.
    let expected = [value_item_bytes("big", 0, &value), b"END\r\n".to_vec()].concat();
    for i in 0..GETS {
        assert_bytes(&c.read_n(expected.len()), &expected, &format!("get {i}"));
    }
}

/// A client that keeps its socket full must not monopolise its worker. `Socket::read` waits
/// with `AsyncFd::readable()`, which takes no part in tokio's cooperative budget; before
/// commit 2604ee9 added `consume_budget()` there (src/socket.rs), the task loop of a client
/// whose socket always had data never yielded, and every other client on that worker waited
/// until the stream paused. Measured with one worker while a client streamed a 1 GiB
/// oversized value: a `version` (answered by memroute itself) waited 1.1-5.5 s before that
/// commit, 5-260 ms since. (The test streams 512 MiB.)
#[test]
fn a_client_streaming_flat_out_does_not_starve_its_worker() {
    const DECLARED: usize = 512 * MIB;
    let m = Memcached::start();
    let (proxy, _dir) = proxy_with("threads = 1", &[m.server(1)], "");
    let mut probe = proxy.client();
    probe.expect("version\r\n", VERSION_REPLY);
    let mut attacker = proxy.client();
    let mut writer = attacker.stream.try_clone().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let stream = thread::spawn(move || {
        let chunk = vec![b'x'; 2 * MIB];
        writer
            .write_all(format!("set endless 0 0 {DECLARED}\r\n").as_bytes())
            .unwrap();
        let t = Instant::now();
        for _ in 0..DECLARED / (2 * MIB) {
            writer.write_all(&chunk).unwrap();
        }
        writer.write_all(b"\r\nversion\r\n").unwrap();
        d.store(true, Ordering::Relaxed);
        t.elapsed()
    });
    assert_eq!(text(&attacker.read_line()), TOO_LARGE);
    // Probe the worker every 5 ms while the stream runs.
    let mut worst = Duration::ZERO;
    let mut probes = 0;
    while !done.load(Ordering::Relaxed) {
        let t = Instant::now();
        probe.expect("version\r\n", VERSION_REPLY);
        worst = worst.max(t.elapsed());
        probes += 1;
        thread::sleep(Duration::from_millis(5));
    }
    let elapsed = stream.join().unwrap();
    assert_eq!(text(&attacker.read_line()), VERSION_REPLY);
    eprintln!("512 MiB streamed in {elapsed:?}; {probes} probes, slowest {worst:?}");
    // The probe waits behind the stream for at most a scheduling slice, not for the stream
    // (before the fix it waited 1.1-5.5 s); 1 s leaves room for a loaded machine.
    let limit = (elapsed / 3).max(Duration::from_secs(1));
    assert!(
        worst < limit,
        "a `version` waited {worst:?} while another client streamed for {elapsed:?}"
    );
}
