//! Operating memroute, against real memcached processes: active health checks (an idle
//! backend that dies is seen without a request failing; readiness and liveness over HTTP),
//! all-or-nothing reloads (a taken listen or admin address rejects the whole file), SIGHUP on
//! an unchanged file, the log line per change, and the command line's errors (log levels,
//! durations, a taken port, `--check | head`).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::admin::{backend_stat, generation, http_get, metric, scrape, wait_generation};
use common::config::{config_toml, md5_pool_toml, named, replace_file, TempFiles};
use common::{free_port, poll, wait_for_port_only, Client, Memcached, Proxy, WAIT};

/// memroute's log so far.
fn log_text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Health checks and /health
// ---------------------------------------------------------------------------------------

#[test]
fn health_checks_see_an_idle_backend_die_and_come_back_and_readiness_follows() {
    // Three pools, no client traffic at all: `checked` has one backend and health checks
    // every 200 ms; `ejecting` has two, health checks and auto_eject_hosts; `unchecked` has
    // one backend and checks off: nothing there can notice its backend die while idle.
    let mut checked = Memcached::start();
    let ejecting: Vec<Memcached> = (0..2).map(|_| Memcached::start()).collect();
    let mut unchecked = Memcached::start();
    let files = TempFiles::new();
    let (p1, p2, p3, admin) = (free_port(), free_port(), free_port(), free_port());
    let checks = "health_check_interval = \"200ms\"\nhealth_check_failures = 2\ntimeout = \"300ms\"\nconnect_timeout = \"300ms\"";
    let pools = [
        md5_pool_toml("checked", p1, &[checked.server(1)], checks),
        md5_pool_toml(
            "ejecting",
            p2,
            &named(&ejecting),
            &format!("{checks}\nauto_eject_hosts = true\nserver_failure_limit = 3\nserver_retry_timeout = \"60s\""),
        ),
        md5_pool_toml("unchecked", p3, &[unchecked.server(1)], "health_check_interval = \"0s\""),
    ];
    let top = format!("threads = 1\nadmin = \"127.0.0.1:{admin}\"");
    let path = files.write("memroute.toml", &config_toml(&top, &pools));
    let log = files.path("memroute.log");
    let proxy = Proxy::start_config_logged(&path, p1, &[], &log);
    wait_for_port_only(admin);
    let mut sc = proxy.client();

    let (code, body) = http_get(admin, "/health");
    assert_eq!(code, 200, "{body}");
    assert_eq!(http_get(admin, "/health/ready").0, 200);
    assert_eq!(http_get(admin, "/health/live"), (200, "live\n".to_string()));
    // The checks run and are counted while everything is up.
    poll("health checks to be answered", WAIT, || {
        let b = sc.stats_map("backends");
        match backend_stat(&b, "checked", checked.port, "health_checks_ok").parse::<u64>() {
            Ok(n) if n >= 2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    let (checked_port, unchecked_port) = (checked.port, unchecked.port);
    checked.kill();
    unchecked.kill();
    let mut ejected = ejecting;
    let gone = ejected.remove(1);
    let gone_port = gone.port;
    drop(gone);

    // Within a few intervals, with no request sent: down, and /health says which listener.
    let body = poll("/health to turn 503", WAIT, || {
        match http_get(admin, "/health") {
            (503, body) => Ok(body),
            (code, body) => Err(format!("{code}: {body}")),
        }
    });
    assert!(
        body.lines()
            .any(|l| l.contains(&format!("127.0.0.1:{p1}")) && l.contains("NOT READY")),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l.contains(&format!("127.0.0.1:{p2}")) && l.ends_with(": ready")),
        "the ejecting pool keeps a live backend: {body}"
    );
    assert_eq!(http_get(admin, "/health/ready").0, 503);
    assert_eq!(
        http_get(admin, "/health/live").0,
        200,
        "liveness is the process"
    );
    let b = sc.stats_map("backends");
    assert_eq!(backend_stat(&b, "checked", checked_port, "state"), "down");
    assert!(
        backend_stat(&b, "checked", checked_port, "health_checks_failed")
            .parse::<u64>()
            .unwrap()
            >= 2
    );
    // The control: without checks, an idle dead backend still looks up.
    assert_eq!(backend_stat(&b, "unchecked", unchecked_port, "state"), "up");
    // Failed checks count toward ejection: the idle dead backend leaves the ring.
    poll("the dead backend to be ejected", WAIT, || {
        let b = sc.stats_map("backends");
        match backend_stat(&b, "ejecting", gone_port, "ejections").as_str() {
            "1" => Ok(()),
            other => Err(format!(
                "ejections {other}, state {}",
                backend_stat(&b, "ejecting", gone_port, "state")
            )),
        }
    });
    let m = scrape(admin);
    let port = checked_port.to_string();
    let up = m
        .iter()
        .find(|s| {
            s.name == "memroute_backend_up"
                && s.labels
                    .iter()
                    .any(|(k, v)| k == "backend" && v.ends_with(&port))
        })
        .map(|s| s.value);
    assert_eq!(up, Some(0.0));
    assert!(
        metric(
            &m,
            "memroute_backend_health_checks_failed_total",
            &[("pool", "checked")]
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    assert!(log_text(&log).contains("consecutive health checks failed"));

    // Back on its port: one answered check marks it up, and /health is 200 again.
    let _back = Memcached::start_on(checked_port);
    let _back2 = Memcached::start_on(unchecked_port);
    poll("/health to return to 200", WAIT, || {
        match http_get(admin, "/health") {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code}: {body}")),
        }
    });
    let b = sc.stats_map("backends");
    assert_eq!(backend_stat(&b, "checked", checked_port, "state"), "up");
    let mut c = Client::connect(p1);
    c.expect("set hc 0 0 1\r\nx\r\n", "STORED\r\n");
    c.expect("get hc\r\n", "VALUE hc 0 1\r\nx\r\nEND\r\n");
}

// ---------------------------------------------------------------------------------------
// Reloads
// ---------------------------------------------------------------------------------------

#[test]
fn a_reload_onto_a_taken_address_is_rejected_whole_and_a_later_one_applies() {
    let mcs: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let files = TempFiles::new();
    let (port, admin, other, admin2) = (free_port(), free_port(), free_port(), free_port());
    let top = format!("threads = 1\nadmin = \"127.0.0.1:{admin}\"");
    let servers = named(&mcs);
    let first = config_toml(&top, &[md5_pool_toml("main", port, &servers[..2], "")]);
    let path = files.write("memroute.toml", &first);
    let log = files.path("memroute.log");
    let proxy = Proxy::start_config_logged(&path, port, &["--log-level", "info"], &log);
    wait_for_port_only(admin);
    let mut sc = proxy.client();
    let g0 = generation(&mut sc);
    let errors = |admin: u16| {
        metric(
            &scrape(admin),
            "memroute_reloads_total",
            &[("result", "error")],
        )
        .unwrap_or(0.0)
    };
    let added = |sc: &mut Client| {
        let b = sc.stats_map("backends");
        b.contains_key(&format!("main:{}:state", mcs[2].address()))
    };

    // Another process holds the port a new pool would listen on; the same file also adds a
    // backend to `main`. Neither may happen.
    let e0 = errors(admin);
    let holder = std::net::TcpListener::bind(("127.0.0.1", other)).unwrap();
    let taken = config_toml(
        &top,
        &[
            md5_pool_toml("main", port, &servers, ""),
            md5_pool_toml("extra", other, &servers[..1], ""),
        ],
    );
    replace_file(&path, &taken);
    poll(
        "the reload to be counted as an error",
        WAIT,
        || match errors(admin) {
            e if e > e0 => Ok(()),
            e => Err(format!("{e}")),
        },
    );
    assert_eq!(generation(&mut sc), g0, "a half-applied reload");
    assert!(!added(&mut sc), "a backend was added by a rejected reload");
    let text = log_text(&log);
    assert!(
        text.lines()
            .any(|l| l.contains("rejected") && l.contains(&format!("127.0.0.1:{other}"))),
        "{text}"
    );

    // A taken admin address rejects a reload the same way.
    let e1 = errors(admin);
    let holder2 = std::net::TcpListener::bind(("127.0.0.1", admin2)).unwrap();
    let moved_admin = top.replace(&admin.to_string(), &admin2.to_string());
    let second = config_toml(&moved_admin, &[md5_pool_toml("main", port, &servers, "")]);
    replace_file(&path, &second);
    poll("the admin move to be rejected", WAIT, || {
        match errors(admin) {
            e if e > e1 => Ok(()),
            e => Err(format!("{e}")),
        }
    });
    assert_eq!(generation(&mut sc), g0);
    assert!(!added(&mut sc));

    // Once the address is free, SIGHUP applies the file as it is, and the log says what
    // changed, a line each.
    drop((holder, holder2));
    proxy.signal("HUP");
    let g1 = wait_generation(&mut sc, g0);
    assert_eq!(g1, g0 + 1);
    assert!(added(&mut sc));
    wait_for_port_only(admin2);
    assert_eq!(http_get(admin2, "/health/live").0, 200);
    poll(
        "the old admin listener to close",
        WAIT,
        || match std::net::TcpStream::connect(("127.0.0.1", admin)) {
            Err(_) => Ok(()),
            Ok(_) => Err("still open".into()),
        },
    );
    let text = log_text(&log);
    for line in [
        format!("reload: pool main: backend {} added", mcs[2].address()),
        format!("reload: admin listener 127.0.0.1:{admin} -> 127.0.0.1:{admin2}"),
    ] {
        assert!(text.contains(&line), "no {line:?} in the log:\n{text}");
    }
    assert!(
        metric(
            &scrape(admin2),
            "memroute_reloads_total",
            &[("result", "ok")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    // SIGHUP on an unchanged file re-applies it (host names are resolved again): a new
    // generation that changes nothing, and says so.
    proxy.signal("HUP");
    let g2 = wait_generation(&mut sc, g1);
    assert_eq!(g2, g1 + 1);
    poll("the unchanged reload to be logged", WAIT, || {
        let text = log_text(&log);
        match text.contains(&format!("nothing changed (generation {g2})")) {
            true => Ok(()),
            false => Err(text),
        }
    });
}

// ---------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------

/// Runs memroute with `args` for at most a few seconds; its exit code and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(Proxy::binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memroute");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

#[test]
fn log_levels_are_checked_and_honoured() {
    let files = TempFiles::new();
    let port = free_port();
    // A file that fails after logging has started: the level decides what is printed.
    let path = files.write(
        "m.toml",
        &format!("[pools.p]\nlisten = \"127.0.0.1:{port}\"\nservers = [\"memory:1m\"]\n"),
    );
    let p = path.to_str().unwrap();
    for level in [
        "warning",
        "WARN",
        "error",
        "critical",
        "memroute=debug,info",
    ] {
        let (code, err) = run(&["--config", p, "--check", "--log-level", level]);
        assert_eq!(code, Some(0), "--log-level {level}: {err}");
    }
    let (code, err) = run(&["--config", p, "--check", "--log-level", "loud"]);
    assert_eq!(code, Some(2), "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(first.contains("'loud'") && first.contains("warn"), "{err}");

    // A taken port: one line naming the address, exit 1.
    let holder = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (code, err) = run(&["--config", p, "--log-level", "warning"]);
    assert_eq!(code, Some(1), "{err}");
    let lines: Vec<&str> = err.trim().lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(
        lines[0].to_lowercase().contains("address already in use"),
        "{err}"
    );
    drop(holder);

    // Running: at info start-up is logged, at warning (the syslog spelling) it is not.
    for (level, logged) in [("info", true), ("warning", false)] {
        let log = files.path(&format!("{level}.log"));
        let mut proxy = Proxy::start_config_logged(&path, port, &["--log-level", level], &log);
        let mut c = proxy.client();
        c.expect("set k 0 0 1\r\nv\r\n", "STORED\r\n");
        proxy.signal("TERM");
        assert!(proxy.wait_exit(WAIT).is_some());
        let text = log_text(&log);
        assert_eq!(
            text.contains("listening on"),
            logged,
            "--log-level {level}: {text:?}"
        );
    }
}

#[test]
fn durations_take_units_or_milliseconds_and_bad_ones_name_the_key() {
    let files = TempFiles::new();
    let port = free_port();
    let file = |timeout: &str| {
        files.write(
            "d.toml",
            &format!(
                "[pools.p]\nlisten = \"127.0.0.1:{port}\"\nservers = [\"127.0.0.1:11211:1\"]\ntimeout = {timeout}\n"
            ),
        )
    };
    for good in ["250", "\"250ms\"", "\"2s\"", "\"1m\""] {
        let path = file(good);
        let (code, err) = run(&["--config", path.to_str().unwrap(), "--check"]);
        assert_eq!(code, Some(0), "timeout = {good}: {err}");
    }
    for bad in ["\"250\"", "\"2 parsecs\"", "-5", "\"\""] {
        let path = file(bad);
        let (code, err) = run(&["--config", path.to_str().unwrap(), "--check"]);
        assert_eq!(code, Some(1), "timeout = {bad} was accepted: {err}");
        assert!(err.contains("timeout"), "timeout = {bad}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // Flags take the same forms.
    let (code, err) = run(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--embedded",
        "--timeout",
        "1.5s",
        "--check",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--embedded",
        "--timeout",
        "soon",
        "--check",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("timeout: 'soon' is not a duration"), "{err}");
}

#[test]
fn check_output_piped_into_head_exits_quietly() {
    let files = TempFiles::new();
    let path = files.write(
        "h.toml",
        "[pools.p]\nlisten = \"127.0.0.1:1\"\nservers = [\"127.0.0.1:11211:1\", \"127.0.0.1:11212:1\"]\n",
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "\"{}\" --config {} --check 2>err.txt | head -c 1 >/dev/null; echo \"rc=${{PIPESTATUS[0]}}\"; cat err.txt",
            Proxy::binary().display(),
            path.display()
        ))
        .current_dir(files.path(""))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rc=0"), "{text}");
    assert!(
        !text.contains("panicked") && !text.contains("Broken pipe"),
        "{text}"
    );
}
