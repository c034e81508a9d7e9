//! Graceful shutdown: on SIGTERM memroute stops accepting, lets the requests in flight finish
//! (a held backend's replies, a multi-get of large values), closes every client and exits 0
//! within `shutdown_timeout`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::config::{config_toml, md5_pool_toml, TempFiles};
use common::{
    free_port, num_stat, poll, text, value_item, value_reply, wait_for_port_only, write_all,
    Client, Memcached, Proxy, WAIT,
};

// ---------------------------------------------------------------------------------------
// 8. Graceful shutdown
// ---------------------------------------------------------------------------------------

/// A backend that answers `get` only once released (and `version` at once). Sends one
/// message on the returned channel per `get` received.
struct HeldBackend {
    port: u16,
    arrived: mpsc::Receiver<String>,
    release: Arc<(Mutex<bool>, Condvar)>,
}

impl HeldBackend {
    fn start() -> HeldBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, arrived) = mpsc::channel();
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let rel = release.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (tx, rel) = (tx.clone(), rel.clone());
                thread::spawn(move || {
                    let mut out = stream.try_clone().unwrap();
                    let mut lines = BufReader::new(stream);
                    let mut line = String::new();
                    while lines.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                        let reply = if let Some(keys) = line.trim_end().strip_prefix("get ") {
                            let _ = tx.send(keys.to_string());
                            let (lock, cv) = &*rel;
                            let mut released = lock.lock().unwrap();
                            while !*released {
                                released = cv.wait(released).unwrap();
                            }
                            let mut r = String::new();
                            for k in keys.split(' ') {
                                r.push_str(&value_item(k, &format!("held-{k}")));
                            }
                            r + "END\r\n"
                        } else if line.starts_with("version") {
                            "VERSION held\r\n".to_string()
                        } else {
                            "ERROR\r\n".to_string()
                        };
                        if out.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        HeldBackend {
            port,
            arrived,
            release,
        }
    }

    fn release(&self) {
        let (lock, cv) = &*self.release;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let mc = Memcached::start();
    let held = HeldBackend::start();
    let files = TempFiles::new();
    let port = free_port();
    let big_port = free_port();
    let shutdown = Duration::from_millis(5000);
    let top = format!("threads = 1\nshutdown_timeout = {}", shutdown.as_millis());
    let held_pool = md5_pool_toml(
        "main",
        port,
        &[format!("127.0.0.1:{}:1", held.port)],
        "timeout = 8000",
    );
    let big_pool = md5_pool_toml("big", big_port, &[mc.server(1)], "timeout = 8000");
    let path = files.write("memroute.toml", &config_toml(&top, &[held_pool, big_pool]));
    let mut proxy = Proxy::start_config(&path, port, &[]);
    wait_for_port_only(big_port);

    // 30 values of 200 KB: far more than socket buffers hold, so most of this reply is
    // still inside memroute when SIGTERM arrives (the client does not read until after).
    let big: Vec<(String, String)> = (0..30)
        .map(|i| {
            let fill = char::from(b'a' + (i % 26) as u8);
            (format!("big:{i}"), fill.to_string().repeat(200_000))
        })
        .collect();
    write_all(big_port, &big);
    let gets_before = num_stat(&mc.client().stats_map(""), "cmd_get");

    let mut idle = Client::connect(port);
    idle.expect("version\r\n", "VERSION ");
    let _ = idle.read_line();
    let mut slow = Client::connect(port);
    slow.send("get s1 s2\r\nget s3\r\n");
    let mut large = Client::connect(big_port);
    let names: Vec<&str> = big.iter().map(|(k, _)| k.as_str()).collect();
    large.send(format!("get {}\r\n", names.join(" ")));

    // Both are in flight: the held backend has the first get, memcached has the multi-get.
    let first = held
        .arrived
        .recv_timeout(WAIT)
        .expect("the held backend never saw the get");
    assert_eq!(first, "s1 s2");
    poll("memcached to receive the multi-get", WAIT, || {
        match num_stat(&mc.client().stats_map(""), "cmd_get") - gets_before {
            n if n >= big.len() as u64 => Ok(()),
            n => Err(n.to_string()),
        }
    });

    let t0 = Instant::now();
    proxy.signal("TERM");
    // memroute stops accepting…
    poll(
        "memroute to stop accepting",
        WAIT,
        || match TcpStream::connect(("127.0.0.1", port)) {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting".into()),
        },
    );
    assert!(proxy.is_running(), "exited with requests in flight");
    // …then the held replies come back complete, and the connection closes.
    held.release();
    assert_eq!(
        text(&slow.read_retrieval()),
        format!(
            "{}{}END\r\n",
            value_item("s1", "held-s1"),
            value_item("s2", "held-s2")
        )
    );
    assert_eq!(text(&slow.read_retrieval()), value_reply("s3", "held-s3"));
    assert_eq!(text(&slow.read_to_close()), "", "bytes after the replies");
    let reply = large.read_retrieval();
    let mut expected = String::new();
    for (k, v) in &big {
        expected.push_str(&value_item(k, v));
    }
    expected.push_str("END\r\n");
    assert!(
        reply == expected.as_bytes(),
        "large multi-get reply incomplete: {} of {} bytes",
        reply.len(),
        expected.len()
    );
    assert_eq!(text(&large.read_to_close()), "");
    assert_eq!(text(&idle.read_to_close()), "", "idle client not closed");

    let status = proxy
        .wait_exit(shutdown.saturating_sub(t0.elapsed()) + Duration::from_millis(500))
        .expect("memroute still running after the shutdown timeout");
    assert!(status.success(), "memroute exited with {status}");
    assert!(
        t0.elapsed() < shutdown,
        "shutdown took {:?}, longer than the {shutdown:?} timeout",
        t0.elapsed()
    );
}
