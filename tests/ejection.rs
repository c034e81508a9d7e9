//! Ejection off and on: a backend killed under load fails only its own keys without
//! ejection, and with it is ejected (its keys served by the others), probed, and readmitted
//! when it comes back — against real memcached processes and the memroute binary, with
//! checked traffic (tests/common/traffic.rs) on the surviving backends' keys throughout.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::admin::{backend_num, backend_stat, generation, metric, scrape, wait_generation};
use common::config::{route_owners, ConfigRig, TempFiles};
use common::traffic::{CheckedTraffic, Traffic};
use common::{
    key_values, poll, read_all, set_request, text, try_poll, value_reply, write_all, Client,
    Memcached, Proxy, POLL_EVERY, WAIT,
};

// ---------------------------------------------------------------------------------------
// 5. Ejection off and on
// ---------------------------------------------------------------------------------------

type Pairs = Vec<(String, String)>;

/// Candidate keys routed by the config at `path`: (keys on `victim`, keys elsewhere).
fn split_keys(path: &Path, pairs: &[(String, String)], victim: &str) -> (Pairs, Pairs) {
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let owners = route_owners(path, &keys);
    pairs
        .iter()
        .cloned()
        .partition(|(k, _)| owners[k] == victim)
}

fn own_keys_avoiding(path: &Path, tag: &str, victim: &str, threads: usize) -> Vec<Vec<String>> {
    let candidates: Vec<(String, String)> = (0..threads * 80)
        .map(|i| (format!("{tag}:{i}"), String::new()))
        .collect();
    let (_, elsewhere) = split_keys(path, &candidates, victim);
    let per = elsewhere.len() / threads;
    assert!(per >= 8);
    elsewhere
        .chunks(per)
        .take(threads)
        .map(|c| c.iter().map(|(k, _)| k.clone()).collect())
        .collect()
}

/// Three backends behind memroute (pool settings `extra`), 600 keys written, and checked
/// traffic running on the keys of the two that will live; the third is the victim.
struct Victim {
    mcs: Vec<Memcached>,
    _files: TempFiles,
    _proxy: Proxy,
    port: u16,
    admin: u16,
    victim_port: u16,
    victim: String,
    on_victim: Pairs,
    elsewhere: Arc<Pairs>,
    sc: Client,
    g0: u64,
    load: CheckedTraffic,
}

fn victim_under_load(tag: &str, extra: &str) -> Victim {
    let rig = ConfigRig::new(3, 2, true);
    let (path, proxy) = rig.start(&rig.file(3, extra));
    let victim_port = rig.mcs[2].port;
    let victim = rig.mcs[2].address();
    let pre = key_values(tag, 600);
    write_all(rig.port, &pre);
    let (on_victim, elsewhere) = split_keys(&path, &pre, &victim);
    assert!(on_victim.len() > 50 && elsewhere.len() > 50);
    let elsewhere = Arc::new(elsewhere);
    let mut sc = Client::connect(rig.port);
    let g0 = generation(&mut sc);
    let load = Traffic::clients(own_keys_avoiding(&path, &format!("{tag}-own"), &victim, 2))
        .reading(elsewhere.clone())
        .start(&proxy);
    load.wait_replies(500, "before the kill");
    Victim {
        port: rig.port,
        admin: rig.admin(),
        mcs: rig.mcs,
        _files: rig.files,
        _proxy: proxy,
        victim_port,
        victim,
        on_victim,
        elsewhere,
        sc,
        g0,
        load,
    }
}

impl Victim {
    /// Kills the victim, then sets one of its keys through a new client until `seen(state,
    /// reply)` holds for the victim's state in `stats backends` and the set's reply; returns
    /// the client.
    fn kill_until(&mut self, what: &str, seen: impl Fn(&str, &str) -> bool) -> Client {
        self.mcs[2].kill();
        let mut c = Client::connect(self.port);
        poll(what, WAIT, || {
            c.send(set_request(&self.on_victim[0].0, "x"));
            let reply = text(&c.read_line());
            let b = self.sc.stats_map("backends");
            match backend_stat(&b, "main", self.victim_port, "state") {
                s if seen(&s, &reply) => Ok(()),
                s => Err(format!("state {s}, set replied {reply:?}")),
            }
        });
        c
    }
}

#[test]
fn without_ejection_a_dead_backend_fails_only_its_keys_and_serves_again_after_restart() {
    let mut rig = victim_under_load("noej", "timeout = 1000");

    // Its keys: sets fail with SERVER_ERROR, gets miss; the others are unaffected.
    let mut c = rig.kill_until("the dead backend to be seen down", |state, reply| {
        state == "down" && reply.starts_with("SERVER_ERROR")
    });
    for (k, v) in rig.on_victim.iter().take(20) {
        c.send(set_request(k, v));
        let reply = text(&c.read_line());
        assert!(
            reply.starts_with("SERVER_ERROR "),
            "set {k} on a dead backend: {reply:?}"
        );
        c.send(format!("get {k}\r\n"));
        assert_eq!(
            text(&c.read_retrieval()),
            "END\r\n",
            "get {k} on a dead backend"
        );
    }
    // A multi-get spanning dead and live backends returns the live keys.
    let (a, b) = (&rig.elsewhere[0], &rig.on_victim[1]);
    c.send(format!("get {} {}\r\n", a.0, b.0));
    assert_eq!(text(&c.read_retrieval()), value_reply(&a.0, &a.1));
    rig.load.wait_replies(500, "with a dead backend");

    let b = rig.sc.stats_map("backends");
    assert!(
        backend_num(&b, "main", rig.victim_port, "errors") > 0,
        "{b:?}"
    );
    assert_eq!(backend_num(&b, "main", rig.victim_port, "ejections"), 0);
    for m in &rig.mcs[..2] {
        assert_eq!(backend_num(&b, "main", m.port, "errors"), 0);
        assert_eq!(backend_stat(&b, "main", m.port, "state"), "up");
    }
    let m = scrape(rig.admin);
    let victim_labels = [("pool", "main"), ("backend", rig.victim.as_str())];
    assert!(metric(&m, "memroute_backend_errors_total", &victim_labels).unwrap() > 0.0);
    assert_eq!(metric(&m, "memroute_backend_up", &victim_labels), Some(0.0));
    assert_eq!(
        generation(&mut rig.sc),
        rig.g0,
        "without ejection the ring does not change"
    );

    // Restarted on its port, it serves its keys again.
    rig.mcs[2] = Memcached::start_on(rig.victim_port);
    let (k, v) = &rig.on_victim[0];
    poll("the restarted backend to serve again", WAIT, || {
        c.send(set_request(k, v));
        match text(&c.read_line()) {
            r if r == "STORED\r\n" => Ok(()),
            r => Err(r),
        }
    });
    c.send(format!("get {k}\r\n"));
    assert_eq!(text(&c.read_retrieval()), value_reply(k, v));
    assert_eq!(rig.mcs[2].client().get(k).as_deref(), Some(v.as_bytes()));
    let b = rig.sc.stats_map("backends");
    assert_eq!(backend_stat(&b, "main", rig.victim_port, "state"), "up");
    rig.load.wait_replies(300, "after the restart");
    rig.load.finish().assert_replies(1300);
}

#[test]
fn with_ejection_a_dead_backend_is_ejected_its_keys_served_elsewhere_and_it_returns() {
    let mut rig = victim_under_load("ej", "timeout = 1000\nauto_eject_hosts = true\nserver_failure_limit = 1\nserver_retry_timeout = 500\nwarmup = \"30s\"");

    let mut c = rig.kill_until("the dead backend to be ejected", |state, _| {
        state == "ejected"
    });
    let b = rig.sc.stats_map("backends");
    assert!(backend_num(&b, "main", rig.victim_port, "ejections") >= 1);
    let victim_labels = [("pool", "main"), ("backend", rig.victim.as_str())];
    let m = scrape(rig.admin);
    assert!(metric(&m, "memroute_backend_ejections_total", &victim_labels).unwrap() >= 1.0);
    assert_eq!(metric(&m, "memroute_backend_up", &victim_labels), Some(0.0));
    let g_ejected = wait_generation(&mut rig.sc, rig.g0);

    // Its keys are served by the remaining backends.
    let moved: Vec<(String, String)> = rig
        .on_victim
        .iter()
        .take(60)
        .map(|(k, _)| (k.clone(), format!("during-ejection-{k}")))
        .collect();
    for (k, v) in &moved {
        c.send(set_request(k, v));
        assert_eq!(text(&c.read_line()), "STORED\r\n", "set {k} after ejection");
        c.send(format!("get {k}\r\n"));
        assert_eq!(text(&c.read_retrieval()), value_reply(k, v));
        let holders = rig.mcs[..2]
            .iter()
            .filter(|m| m.client().get(k).as_deref() == Some(v.as_bytes()))
            .count();
        assert_eq!(holders, 1, "{k} should be on exactly one remaining backend");
    }
    rig.load.wait_replies(300, "while ejected");

    // Back on its port: probed after the retry timeout, readmitted, ring rebuilt.
    rig.mcs[2] = Memcached::start_on(rig.victim_port);
    let g_back = poll("the restarted backend to be readmitted", WAIT, || {
        let b = rig.sc.stats_map("backends");
        let g = generation(&mut rig.sc);
        match backend_stat(&b, "main", rig.victim_port, "state").as_str() {
            "ejected" => Err(format!("state ejected, generation {g}")),
            _ if g > g_ejected => Ok(g),
            s => Err(format!("state {s}, generation {g}")),
        }
    });
    assert!(g_back > g_ejected);
    // Readmitted after answering the probe, before any client request reached it: it should
    // be reported up (stats and metrics). Checked now, asserted at the end, so the data
    // checks below run either way.
    let reported_after_probe = try_poll(Duration::from_secs(3), POLL_EVERY, || {
        let b = rig.sc.stats_map("backends");
        let m = scrape(rig.admin);
        match (
            backend_stat(&b, "main", rig.victim_port, "state"),
            metric(&m, "memroute_backend_up", &victim_labels),
        ) {
            (s, Some(up)) if s == "up" && up == 1.0 => Ok(()),
            (s, up) => Err(format!("state {s}, memroute_backend_up {up:?}")),
        }
    });
    // Keys written while it was out are still readable: readmission is a ring change, so
    // warm-up (on in this pool) asks the stand-ins when the restarted, empty backend misses.
    // (The README's "values written meanwhile on the stand-ins become unreachable" holds
    // once warm-up is over, or with warmup = "0s".) New writes go to it again.
    let bad = read_all(rig.port, &moved);
    assert!(
        bad.is_empty(),
        "keys written during the ejection lost on return: {bad:?}"
    );
    let (k, _) = &rig.on_victim[0];
    c.send(set_request(k, "back"));
    assert_eq!(text(&c.read_line()), "STORED\r\n");
    assert_eq!(rig.mcs[2].client().get(k).as_deref(), Some(&b"back"[..]));
    let b = rig.sc.stats_map("backends");
    assert_eq!(backend_stat(&b, "main", rig.victim_port, "state"), "up");
    rig.load.wait_replies(300, "after readmission");
    rig.load.finish().assert_replies(1100);
    assert_eq!(
        reported_after_probe,
        Ok(()),
        "a backend readmitted after a successful probe is not reported up until a client \
         request reaches it"
    );
}
