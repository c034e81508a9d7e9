//! memroute's operational interfaces against real memcached processes: Prometheus metrics and
//! `/health` on the admin listener, the `stats` counters, and the `route` subcommand (from a
//! config file and from the running proxy).

mod common;

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use common::admin::{
    backend_num, backend_stat, generation, http_get, metric, metric_sum, scrape, Sample,
};
use common::config::{
    config_toml, md5_pool_toml, named, parse_route, route_owners, run_route, TempFiles,
};
use common::{
    free_port, key_values, num_stat, poll, wait_for_port_only, write_all, Client, Memcached, Proxy,
    WAIT,
};

// ---------------------------------------------------------------------------------------
// 6. Prometheus and /health
// ---------------------------------------------------------------------------------------

#[test]
fn prometheus_metrics_and_health_over_http() {
    let mcs: Vec<Memcached> = (0..2).map(|_| Memcached::start()).collect();
    let files = TempFiles::new();
    let port = free_port();
    let dead_pool_port = free_port();
    let dead_backend = free_port();
    let admin = free_port();
    let top = format!("threads = 1\nadmin = \"127.0.0.1:{admin}\"");
    let main = md5_pool_toml("main", port, &named(&mcs[..2]), "");
    let dead = md5_pool_toml(
        "dead",
        dead_pool_port,
        &[format!("127.0.0.1:{dead_backend}:1")],
        "timeout = 500\nconnect_timeout = 500",
    );
    let path = files.write("memroute.toml", &config_toml(&top, &[main, dead]));
    let proxy = Proxy::start_config(&path, port, &[]);
    wait_for_port_only(dead_pool_port);
    wait_for_port_only(admin);

    let pairs = key_values("prom", 100);
    write_all(port, &pairs);
    let before = scrape(admin);
    for name in [
        "memroute_config_generation",
        "memroute_backend_requests_total",
        "memroute_backend_errors_total",
        "memroute_backend_ejections_total",
        "memroute_backend_warmup_hits_total",
        "memroute_backend_up",
        "memroute_backend_latency_seconds_bucket",
        "memroute_backend_latency_seconds_sum",
        "memroute_backend_latency_seconds_count",
    ] {
        assert!(
            before.iter().any(|s| s.name == name),
            "{name} missing from /metrics"
        );
    }
    for result in ["ok", "error"] {
        assert!(
            metric(&before, "memroute_reloads_total", &[("result", result)]).is_some(),
            "memroute_reloads_total{{result=\"{result}\"}} missing"
        );
    }
    let mut sc = proxy.client();
    assert_eq!(
        metric(&before, "memroute_config_generation", &[]),
        Some(generation(&mut sc) as f64)
    );
    let bucket_le: Vec<&str> = before
        .iter()
        .filter(|s| s.name == "memroute_backend_latency_seconds_bucket")
        .filter_map(|s| s.labels.get("le").map(String::as_str))
        .collect();
    assert!(
        bucket_le.contains(&"+Inf"),
        "histogram buckets {bucket_le:?}"
    );

    let count = |samples: &[Sample], name: &str, m: &Memcached| -> f64 {
        let a = m.address();
        let labels: Vec<(&str, &str)> = match name {
            "memroute_backend_latency_seconds_count" => vec![("backend", a.as_str())],
            _ => vec![("pool", "main"), ("backend", a.as_str())],
        };
        metric(samples, name, &labels).unwrap_or_else(|| panic!("{name} for {a} missing"))
    };
    let mut c = proxy.client();
    for (k, v) in &pairs {
        assert_eq!(c.get(k).as_deref(), Some(v.as_bytes()));
    }
    let after = scrape(admin);
    let mut total = 0.0;
    for m in &mcs {
        for name in [
            "memroute_backend_requests_total",
            "memroute_backend_latency_seconds_count",
        ] {
            let (b, a) = (count(&before, name, m), count(&after, name, m));
            assert!(
                a > b,
                "{name} for {} did not increase: {b} -> {a}",
                m.address()
            );
        }
        total += count(&after, "memroute_backend_requests_total", m)
            - count(&before, "memroute_backend_requests_total", m);
        assert_eq!(count(&after, "memroute_backend_errors_total", m), 0.0);
        assert_eq!(count(&after, "memroute_backend_up", m), 1.0);
    }
    assert!(
        total >= pairs.len() as f64,
        "{total} requests counted for {} gets",
        pairs.len()
    );
    assert!(
        metric_sum(&after, "memroute_backend_latency_seconds_sum")
            > metric_sum(&before, "memroute_backend_latency_seconds_sum")
    );

    // Health: every backend up (the dead pool's server has not been tried yet).
    let (code, body) = http_get(admin, "/health");
    assert_eq!(code, 200, "/health with backends up: {body}");
    assert!(body.contains("pool main: 2/2"), "{body}");
    // Once the dead pool's only server has been tried and found down: 503.
    let mut d = Client::connect(dead_pool_port);
    let body = poll("/health to report 503", WAIT, || {
        d.send("get x\r\n");
        let _ = d.read_retrieval();
        match http_get(admin, "/health") {
            (503, body) => Ok(body),
            (code, body) => Err(format!("{code} {body}")),
        }
    });
    assert!(body.contains("pool dead: 0/1"), "{body}");
    let m = scrape(admin);
    let dead_addr = format!("127.0.0.1:{dead_backend}");
    assert_eq!(
        metric(
            &m,
            "memroute_backend_up",
            &[("pool", "dead"), ("backend", &dead_addr)]
        ),
        Some(0.0)
    );
    let (code, _) = http_get(admin, "/no-such-page");
    assert_eq!(code, 404);
}

// ---------------------------------------------------------------------------------------
// 7. stats
// ---------------------------------------------------------------------------------------

fn stats_proxy() -> (Vec<Memcached>, Proxy) {
    let mcs: Vec<Memcached> = (0..2).map(|_| Memcached::start()).collect();
    let servers: Vec<String> = mcs.iter().map(|m| m.server(1)).collect();
    let proxy = Proxy::start(&servers, &["--hash", "md5", "--threads", "2"]);
    (mcs, proxy)
}

#[test]
fn stats_are_parsed_and_count_connections_and_commands() {
    let (_mcs, proxy) = stats_proxy();
    let mut sc = proxy.client();
    let s0 = sc.stats_map("");
    assert_eq!(num_stat(&s0, "pid"), proxy.pid() as u64);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        num_stat(&s0, "time").abs_diff(now) <= 5,
        "time {}",
        s0["time"]
    );
    assert!(num_stat(&s0, "uptime") < 600);
    assert!(!s0["version"].is_empty());
    assert_eq!(num_stat(&s0, "threads"), 2);
    assert!(num_stat(&s0, "generation") >= 1);
    // The fixture's readiness probe connected and left: wait until only we are counted.
    let s0 = poll(
        "curr_connections to settle at 1 (the stats client)",
        WAIT,
        || {
            let s = sc.stats_map("");
            match num_stat(&s, "curr_connections") {
                1 => Ok(s),
                n => Err(n.to_string()),
            }
        },
    );

    // Connections.
    let base_total = num_stat(&s0, "total_connections");
    let extra: Vec<Client> = (0..3).map(|_| proxy.client()).collect();
    poll("curr_connections to count 3 more", WAIT, || {
        let s = sc.stats_map("");
        match (
            num_stat(&s, "curr_connections"),
            num_stat(&s, "total_connections"),
        ) {
            (4, t) if t == base_total + 3 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    drop(extra);
    poll("curr_connections to drop back", WAIT, || {
        match num_stat(&sc.stats_map(""), "curr_connections") {
            1 => Ok(()),
            n => Err(n.to_string()),
        }
    });

    // Commands: cmd_get counts keys, cmd_set storage commands.
    let mut c = proxy.client();
    let s1 = sc.stats_map("");
    for i in 0..5 {
        c.set(&format!("st:{i}"), b"v");
    }
    c.send("get st:0 st:1 st:2 st:nope\r\n");
    let _ = c.read_retrieval();
    assert_eq!(c.get("st:3").as_deref(), Some(&b"v"[..]));
    let s2 = sc.stats_map("");
    assert_eq!(num_stat(&s2, "cmd_set") - num_stat(&s1, "cmd_set"), 5);
    assert_eq!(num_stat(&s2, "cmd_get") - num_stat(&s1, "cmd_get"), 5);
    assert!(num_stat(&s2, "bytes_read") > num_stat(&s1, "bytes_read"));
    assert!(num_stat(&s2, "bytes_written") > num_stat(&s1, "bytes_written"));

    // stats backends: one block per backend with the documented fields.
    let b = sc.stats_map("backends");
    let mut requests = 0;
    for m in &_mcs {
        for field in [
            "state",
            "requests",
            "errors",
            "timeouts",
            "ejections",
            "warmup_hits",
            "in_flight",
            "latency_us_mean",
        ] {
            backend_stat(&b, "default", m.port, field);
        }
        assert_eq!(backend_stat(&b, "default", m.port, "state"), "up");
        requests += backend_num(&b, "default", m.port, "requests");
    }
    assert!(
        requests >= 5 + 2,
        "{requests} backend requests for 5 sets and 2 gets"
    );
}

#[test]
fn stats_count_get_hits_and_misses() {
    // The issue lists get_hits and get_misses among the counters `stats` reports.
    let (_mcs, proxy) = stats_proxy();
    let mut sc = proxy.client();
    let mut c = proxy.client();
    c.set("hm:a", b"1");
    c.set("hm:b", b"2");
    let s1 = sc.stats_map("");
    assert!(
        s1.contains_key("get_hits") && s1.contains_key("get_misses"),
        "stats lacks get_hits/get_misses: {:?}",
        {
            let mut k: Vec<&String> = s1.keys().collect();
            k.sort();
            k
        }
    );
    c.send("get hm:a hm:b hm:c\r\n");
    let _ = c.read_retrieval();
    assert_eq!(c.get("hm:d"), None);
    let s2 = sc.stats_map("");
    assert_eq!(num_stat(&s2, "get_hits") - num_stat(&s1, "get_hits"), 2);
    assert_eq!(num_stat(&s2, "get_misses") - num_stat(&s1, "get_misses"), 2);
}

// ---------------------------------------------------------------------------------------
// 9. route subcommand
// ---------------------------------------------------------------------------------------

#[test]
fn route_subcommand_names_the_memcached_that_holds_each_key() {
    let mcs: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let files = TempFiles::new();
    let port = free_port();
    let admin = free_port();
    // Unnamed servers here: ring identities are host:port, as most configs write them.
    let servers: Vec<String> = mcs.iter().map(|m| m.server(1)).collect();
    let top = format!("threads = 1\nadmin = \"127.0.0.1:{admin}\"");
    let path = files.write(
        "memroute.toml",
        &config_toml(&top, &[md5_pool_toml("main", port, &servers, "")]),
    );
    let _proxy = Proxy::start_config(&path, port, &[]);
    wait_for_port_only(admin);

    let pairs = key_values("route", 40);
    write_all(port, &pairs);
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let owners = route_owners(&path, &keys);
    let mut direct: Vec<Client> = mcs.iter().map(|m| m.client()).collect();
    let mut used = HashSet::new();
    for (k, v) in &pairs {
        for (m, c) in mcs.iter().zip(direct.iter_mut()) {
            let held = c.get(k);
            if owners[k] == m.address() {
                assert_eq!(
                    held.as_deref(),
                    Some(v.as_bytes()),
                    "{k}: route says {}",
                    owners[k]
                );
                used.insert(m.port);
            } else {
                assert_eq!(
                    held,
                    None,
                    "{k} on {} but route says {}",
                    m.address(),
                    owners[k]
                );
            }
        }
    }
    assert_eq!(used.len(), 3, "40 md5 keys should reach all 3 backends");
    // The running proxy answers the same, with no previous owner outside warm-up.
    let live = parse_route(&run_route(
        &["--admin", &format!("127.0.0.1:{admin}")],
        &keys,
    ));
    assert_eq!(live.len(), keys.len());
    for l in live {
        assert_eq!(l.owner, owners[&l.key]);
        assert_eq!(l.previous, None);
    }
}
