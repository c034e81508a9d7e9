//! Memory a client that never reads can make memroute hold: about `max_client_buffer` plus
//! one item per client, and `max_client_memory` (plus one reply per client) over all of them,
//! whatever the reply sizes. Measured as memroute's RSS against those bounds.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::config::{config_toml, pool_toml, TempFiles};
use common::{assert_rss, free_port, poll_until, value_item_bytes, Memcached, Proxy, RssPeak};

const KIB: u64 = 1024;

/// memroute from a config of top-level keys `top` and one md5 pool over `servers`.
fn proxy(top: &str, servers: &[String], pool_keys: &str) -> (Proxy, TempFiles) {
    let port = free_port();
    let dir = TempFiles::new();
    let keys = format!("hash = \"md5\"\n{pool_keys}");
    let path = dir.write(
        "memroute.toml",
        &config_toml(top, &[pool_toml("p", port, servers, &keys)]),
    );
    (Proxy::start_config(&path, port, &[]), dir)
}

fn value(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| b'a' + ((i * 7 + j) % 26) as u8).collect()
}

/// Waits until memroute's `cmd_get` has not moved for a second: it stopped reading.
fn until_reading_stops(stats: &mut common::Client) -> u64 {
    let mut last = stats.stat_num("cmd_get");
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = stats.stat_num("cmd_get");
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_secs(1) {
            return now;
        }
        assert!(Instant::now() < deadline, "memroute never stopped reading");
    }
}

#[test]
fn a_client_that_never_reads_large_values_holds_about_its_buffer() {
    const KEYS: usize = 16;
    const LEN: usize = 512 * 1024;
    const GETS: usize = 2000;
    let m = Memcached::start_with(&["-m", "128"]);
    // Defaults: max_client_buffer 8 MiB, item_size_max 1 MiB.
    let (proxy, _dir) = proxy("threads = 1", &[m.server(1)], "timeout = 10000");
    let mut c = proxy.client();
    let values: Vec<Vec<u8>> = (0..KEYS).map(|i| value(i, LEN)).collect();
    for (i, v) in values.iter().enumerate() {
        c.set(&format!("big:{i}"), v);
    }
    let mut stats = proxy.client();
    let baseline = proxy.rss_kib();
    let rss = RssPeak::start(proxy.pid(), Duration::from_millis(2));

    // 2,000 gets of 512 KiB values (1 GiB of replies) in one write, and never a read.
    let mut attacker = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    let requests: String = (0..GETS)
        .map(|i| format!("get big:{}\r\n", i % KEYS))
        .collect();
    attacker.write_all(requests.as_bytes()).unwrap();
    let gets_before = stats.stat_num("cmd_get");
    let taken = until_reading_stops(&mut stats) - gets_before;
    let peak = rss.peak();
    eprintln!("a non-reading client got {taken} of its {GETS} gets taken before memroute stopped");
    assert!(
        taken < GETS as u64 / 10,
        "memroute kept reading: {taken} gets taken"
    );
    // Its replies held: 8 MiB of buffer and one 512 KiB reply beyond it, one more on its way
    // through the upstream connection's buffer, plus 6 MiB for the allocator.
    let bound = 8 * KIB + 2 * 1024 + 6 * KIB;
    assert_rss("non-reading client, 512 KiB values", peak, baseline, bound);

    // When it reads, every reply is there, whole and in order.
    attacker
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, attacker);
    for i in 0..GETS {
        let k = i % KEYS;
        let expected = [
            value_item_bytes(&format!("big:{k}"), 0, &values[k]),
            b"END\r\n".to_vec(),
        ]
        .concat();
        let mut got = vec![0u8; expected.len()];
        reader
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("reply {i}: {e}"));
        assert!(got == expected, "reply {i} differs");
    }
    let peak = rss.finish();
    assert_rss("non-reading client, drained", peak, baseline, bound);
}

#[test]
fn ten_thousand_non_reading_clients_stay_within_max_client_memory() {
    const CLIENTS: usize = 10_000;
    const KEYS: usize = 64;
    const LEN: usize = 16 * 1024;
    const GETS: usize = 10;
    const DRAINED: usize = 100;
    let m = Memcached::start_with(&["-m", "64", "-c", "4096"]);
    // A long timeout: under this load a debug build's upstream connection can be slow to
    // get round to its replies; the test is about memory.
    let (proxy, _dir) = proxy(
        &format!(
            "threads = 2\nmax_clients = {}\nmax_client_memory = \"32m\"",
            CLIENTS + 10
        ),
        &[m.server(1)],
        "timeout = 60000",
    );
    let mut c = proxy.client();
    let values: Vec<Vec<u8>> = (0..KEYS).map(|i| value(i, LEN)).collect();
    for (i, v) in values.iter().enumerate() {
        c.set(&format!("v:{i}"), v);
    }
    let mut stats = proxy.client();
    let baseline = proxy.rss_kib();
    let rss = RssPeak::start(proxy.pid(), Duration::from_millis(20));

    // Each client asks for 10 values of 16 KiB (160 KiB, 1.6 GB over all) and never reads.
    let request = |n: usize| -> String {
        (0..GETS)
            .map(|i| format!("get v:{}\r\n", (n + i) % KEYS))
            .collect()
    };
    let t = Instant::now();
    // Small receive buffers, so the kernel takes little of the replies off memroute's hands.
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|n| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            s.set_recv_buffer_size(4096).unwrap();
            s.connect(&addr.into()).expect("connect");
            let mut s: TcpStream = s.into();
            s.write_all(request(n).as_bytes()).unwrap();
            s
        })
        .collect();
    poll_until(Duration::from_secs(60), "every client counted", || {
        stats.stat_num("curr_connections") >= CLIENTS as u64
    });
    until_reading_stops(&mut stats);
    let peak = rss.peak();
    eprintln!(
        "{CLIENTS} non-reading clients connected and stopped in {:?}; client_memory {}",
        t.elapsed(),
        stats.stat_num("client_memory")
    );
    // max_client_memory (32 MiB), one 16 KiB reply beyond it per client, and each
    // connection's own state and read buffer (4 KiB), plus 16 MiB for the allocator: about
    // 270 MiB. Holding what they asked for would take 1.6 GB.
    let per_client = 16 + 4;
    assert_rss(
        "10,000 non-reading clients",
        peak,
        baseline,
        32 * KIB + CLIENTS as u64 * per_client + 16 * KIB,
    );

    for (name, value) in stats.stats_lines("backends") {
        eprintln!("  {name} {value}");
    }
    // Some of them read: everything they asked for arrives, in order.
    for (n, s) in clients.iter_mut().enumerate().take(DRAINED) {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        for i in 0..GETS {
            let k = (n + i) % KEYS;
            let expected = [
                value_item_bytes(&format!("v:{k}"), 0, &values[k]),
                b"END\r\n".to_vec(),
            ]
            .concat();
            let mut got = vec![0u8; expected.len()];
            s.read_exact(&mut got)
                .unwrap_or_else(|e| panic!("client {n}, reply {i}: {e}"));
            assert!(
                got == expected,
                "client {n}, reply {i} differs: {:?}",
                String::from_utf8_lossy(&got[..got.len().min(120)])
            );
        }
    }
    drop(clients);
    poll_until(Duration::from_secs(30), "clients gone", || {
        stats.stat_num("curr_connections") <= 2
    });
    assert_eq!(
        stats.stat_num("client_memory"),
        0,
        "every client's share given back"
    );
    rss.finish();
}

/// A get line long enough to be read in batches of keys, whose last batch takes the client
/// to its buffer cap: the line's end (the `END`) still comes once replies drain, though no
/// more bytes arrive. (It was left owed until the client sent something else: pymemcache's
/// get_many of 2,000 keys hung now and then.)
#[test]
fn a_streamed_get_whose_last_batch_reaches_the_cap_still_ends() {
    const KEYS: usize = 300;
    const LEN: usize = 16 * 1024;
    let mcs = [Memcached::start(), Memcached::start()];
    let servers: Vec<String> = mcs.iter().map(|m| m.server(1)).collect();
    let (proxy, _dir) = proxy("threads = 1", &servers, "max_client_buffer = \"64k\"");
    let mut c = proxy.client();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("streamed-cap:{i:04}")).collect();
    let mut expected = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let v = value(i, LEN);
        c.set(k, &v);
        expected.extend(value_item_bytes(k, 0, &v));
    }
    expected.extend_from_slice(b"END\r\n");
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // One write, a line of about 5 KB: over the 2 KiB a line is read whole.
    for round in 0..20 {
        c.send(format!("get {}\r\n", keys.join(" ")));
        let got = c.read_n(expected.len());
        assert!(got == expected, "round {round}: reply differs");
    }
    c.expect("version\r\n", "VERSION ");
}
