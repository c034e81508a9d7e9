//! Read-your-writes per client: with several upstream connections per backend and several
//! worker threads, a client's requests to one backend must reach it in the order sent, so a
//! get pipelined right after a set always sees that set.

mod common;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::thread;

use common::{mix, value_item, Client, Memcached, Proxy};

const PAIRS: usize = 10_000;
const BATCH: usize = 500;
const CLIENTS: usize = 6;

fn start(backends: usize) -> (Vec<Memcached>, Proxy) {
    let backends: Vec<Memcached> = (0..backends).map(|_| Memcached::start()).collect();
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    let proxy = Proxy::start(
        &servers,
        &[
            "--threads",
            "2",
            "--server-connections",
            "4",
            "--hash",
            "md5",
        ],
    );
    (backends, proxy)
}

/// One step of a client's stream: the bytes sent and the exact reply expected.
struct Step {
    request: String,
    reply: String,
}

fn set_then_get(key: &str, value: &str, noreply: bool) -> Step {
    let nr = if noreply { " noreply" } else { "" };
    Step {
        request: format!(
            "set {key} 0 0 {}{nr}\r\n{value}\r\nget {key}\r\n",
            value.len()
        ),
        reply: format!(
            "{}VALUE {key} 0 {}\r\n{value}\r\nEND\r\n",
            if noreply { "" } else { "STORED\r\n" },
            value.len()
        ),
    }
}

/// Runs `steps` over one connection, a writer thread staying at most two batches ahead of
/// the reader, and asserts each reply is exactly the expected one.
fn run_client(proxy_port: u16, name: &str, steps: Vec<Step>) {
    let mut c = Client::connect(proxy_port);
    let mut reader = c.stream.try_clone().unwrap();
    let mut writer = c.stream.try_clone().unwrap();
    let batches: Vec<String> = steps
        .chunks(BATCH)
        .map(|b| b.iter().map(|s| s.request.as_str()).collect())
        .collect();
    let (permit_tx, permit_rx) = mpsc::channel::<()>();
    let writer_thread = thread::spawn(move || {
        for batch in batches {
            permit_rx.recv().unwrap();
            writer.write_all(batch.as_bytes()).unwrap();
        }
    });
    permit_tx.send(()).unwrap();
    permit_tx.send(()).unwrap();
    for (b, batch) in steps.chunks(BATCH).enumerate() {
        for (i, step) in batch.iter().enumerate() {
            let mut got = vec![0u8; step.reply.len()];
            if let Err(e) = reader.read_exact(&mut got) {
                panic!(
                    "{name}: no reply to step {} of {} ({e}): {:?}",
                    b * BATCH + i,
                    steps.len(),
                    step.request
                );
            }
            assert_eq!(
                String::from_utf8_lossy(&got),
                step.reply,
                "{name}: step {} after {:?}",
                b * BATCH + i,
                step.request
            );
        }
        let _ = permit_tx.send(());
    }
    writer_thread.join().unwrap();
    // Nothing extra arrives after the last expected reply.
    c.expect("version\r\n", "VERSION ");
}

fn value(client: usize, i: usize) -> String {
    // Varied lengths, so a stale value cannot match by accident and reply framing varies.
    let pad = (mix((client * PAIRS + i) as u64) % 40) as usize;
    format!("c{client}-i{i}-{}", "p".repeat(pad))
}

#[test]
fn each_client_reads_its_own_writes_to_one_key() {
    let (_backends, proxy) = start(3);
    let port = proxy.port;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            thread::spawn(move || {
                let key = format!("{:x}:own:{client}", mix(client as u64) & 0xffffff);
                let steps = (0..PAIRS)
                    .map(|i| set_then_get(&key, &value(client, i), false))
                    .collect();
                run_client(port, &format!("client {client}"), steps);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn each_client_reads_its_own_writes_over_keys_on_every_backend() {
    let (backends, proxy) = start(3);
    let port = proxy.port;
    let keys_of = |client: usize| -> Vec<String> {
        (0..8)
            .map(|j| {
                format!(
                    "{:x}:mix:{client}:{j}",
                    mix((client * 8 + j) as u64) & 0xffffff
                )
            })
            .collect()
    };
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let keys = keys_of(client);
            thread::spawn(move || {
                let mut steps: Vec<Step> = Vec::new();
                let mut last: Vec<Option<String>> = vec![None; keys.len()];
                for i in 0..PAIRS {
                    let k = (mix(i as u64 ^ 0xabc) % keys.len() as u64) as usize;
                    let v = value(client, i);
                    steps.push(set_then_get(&keys[k], &v, false));
                    last[k] = Some(v);
                    // Now and then a multi-get over all the keys (split over backends) must
                    // see the latest value of each.
                    if i % 97 == 0 {
                        let mut reply = String::new();
                        for (key, v) in keys.iter().zip(&last) {
                            if let Some(v) = v {
                                reply.push_str(&value_item(key, v));
                            }
                        }
                        reply.push_str("END\r\n");
                        steps.push(Step {
                            request: format!("get {}\r\n", keys.join(" ")),
                            reply,
                        });
                    }
                }
                run_client(port, &format!("client {client}"), steps);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The keys really were spread: every backend holds some of them.
    for (b, m) in backends.iter().enumerate() {
        let mut d = m.client();
        let held = (0..CLIENTS)
            .flat_map(keys_of)
            .filter(|k| d.get(k).is_some())
            .count();
        assert!(held > 0, "backend {b} holds none of the keys");
    }
}

#[test]
fn noreply_sets_are_seen_by_the_next_get() {
    let (_backends, proxy) = start(2);
    let port = proxy.port;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            thread::spawn(move || {
                let keys: Vec<String> = (0..4)
                    .map(|j| format!("{:x}:nr:{client}:{j}", mix((client * 4 + j) as u64)))
                    .collect();
                let steps = (0..PAIRS / 2)
                    .map(|i| set_then_get(&keys[i % keys.len()], &value(client, i), true))
                    .collect();
                run_client(port, &format!("client {client}"), steps);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn interleaved_writes_from_many_clients_to_shared_keys_stay_ordered_per_client() {
    // Every client increments shared counters; each client's own sequence of incr replies
    // for one counter must be strictly increasing (its increments reach the backend in the
    // order it sent them), and the final totals add up.
    let (_backends, proxy) = start(3);
    let mut c = proxy.client();
    let counters: Vec<String> = (0..4).map(|j| format!("{:x}:ctr{j}", mix(j))).collect();
    for k in &counters {
        c.set(k, b"0");
    }
    let port = proxy.port;
    const INCRS: usize = 2000;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let counters = counters.clone();
            thread::spawn(move || {
                let mut c = Client::connect(port);
                let mut last = vec![0u64; counters.len()];
                for chunk in (0..INCRS).collect::<Vec<_>>().chunks(BATCH) {
                    let req: String = chunk
                        .iter()
                        .map(|i| format!("incr {} 1\r\n", counters[(i + client) % counters.len()]))
                        .collect();
                    c.send(req);
                    for i in chunk {
                        let k = (i + client) % counters.len();
                        let line = String::from_utf8(c.read_line()).unwrap();
                        let n: u64 = line
                            .trim_end()
                            .parse()
                            .unwrap_or_else(|_| panic!("client {client}: incr reply {line:?}"));
                        assert!(
                            n > last[k],
                            "client {client}: counter {k} went {} -> {n}",
                            last[k]
                        );
                        last[k] = n;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total: u64 = counters
        .iter()
        .map(|k| {
            String::from_utf8(c.get(k).unwrap())
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, (CLIENTS * INCRS) as u64);
}
