//! The embedded cache as a backend: memory stays bounded when filled far past its limit, the
//! least recently used items go first, and with no arguments memroute serves from it.

mod common;

use common::config::{config_toml, pool_toml, TempFiles};
use common::{free_port, num_stat, set_request_bytes, Client, Proxy};

#[test]
fn filling_past_the_limit_keeps_memory_bounded_and_evicts_lru_first() {
    let port = free_port();
    let mut cmd = std::process::Command::new(Proxy::binary());
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--embedded",
        "--memory",
        "8mb",
    ])
    .args(["--threads", "1", "--log-level", "warn"]);
    let proxy = Proxy::spawn_command(cmd, port);
    let mut c = Client::connect(port);
    // A small set of keys read all the time stays; 80 MB of others flow through.
    let value = vec![b'v'; 10_000];
    for i in 0..20 {
        c.set(&format!("hot:{i}"), &value);
    }
    let mut batch = Vec::new();
    for i in 0..8000 {
        batch.extend(set_request_bytes(&format!("cold:{i}"), 0, &value));
        if i % 50 == 49 {
            c.send(&batch);
            batch.clear();
            for _ in 0..50 {
                assert_eq!(c.read_line(), b"STORED\r\n");
            }
            for h in 0..20 {
                assert!(
                    c.get(&format!("hot:{h}")).is_some(),
                    "hot:{h} evicted at {i}"
                );
            }
        }
    }
    // 80 MB written into an 8 MB cache: the process holds far less than what was written.
    let rss = proxy.rss_kib();
    eprintln!("RSS after writing 80 MB into an 8 MB cache: {rss} KiB");
    assert!(rss < 32 * 1024, "RSS {rss} KiB");
    // The oldest cold keys are gone, the newest are there.
    assert!(c.get("cold:0").is_none());
    assert!(c.get("cold:7999").is_some());
    let evictions = c.stat_num("embedded_evictions");
    assert!(evictions > 6000, "evictions {evictions}");
}

#[test]
fn a_full_cache_can_refuse_instead_of_evicting_and_reports_metrics() {
    let (port, admin) = (free_port(), free_port());
    let files = TempFiles::new();
    let top = format!("threads = 1\nadmin = \"127.0.0.1:{admin}\"");
    let near = pool_toml(
        "near",
        port,
        &["memory:1mb".to_string()],
        "memory_full = \"refuse\"",
    );
    let config = files.write("memroute.toml", &config_toml(&top, &[near]));
    let _proxy = Proxy::start_config(&config, port, &[]);
    common::wait_for_port_only(admin);
    let mut c = Client::connect(port);
    let value = vec![b'x'; 20_000];
    let mut refused_at = None;
    for i in 0..200 {
        c.send(set_request_bytes(&format!("k{i}"), 0, &value));
        let line = c.read_line();
        if line == b"SERVER_ERROR out of memory storing object\r\n" {
            refused_at = Some(i);
            break;
        }
        assert_eq!(line, b"STORED\r\n");
    }
    let refused_at = refused_at.expect("a 1 MB cache never refused 4 MB of values");
    // Nothing was evicted to make room: the first value is still there.
    assert_eq!(c.get("k0").as_deref(), Some(&value[..]));
    let mut http = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
    use std::io::{Read, Write};
    http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    http.read_to_string(&mut body).unwrap();
    let items = body
        .lines()
        .find(|l| l.starts_with("memroute_embedded_items{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no memroute_embedded_items in:\n{body}"));
    assert_eq!(items as usize, refused_at);
    assert!(
        body.contains("memroute_embedded_evictions_total{"),
        "{body}"
    );
    // The embedded cache answers every request it is sent, and says so.
    let b = c.stats_map("backends");
    let (requests, replies) = (
        num_stat(&b, "near:memory:1mb:requests"),
        num_stat(&b, "near:memory:1mb:replies"),
    );
    assert!(requests > refused_at as u64, "{b:?}");
    assert_eq!(replies, requests, "{b:?}");
}
