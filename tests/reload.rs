//! Reloading the config while clients keep talking: a backend added or removed under load
//! (keys move, warm-up keeps them readable, copies land on the new owners), an invalid file
//! rejected and logged, SIGHUP, an edit made right after start, and a get line read in
//! batches during warm-up — against real memcached processes and the memroute binary.
//!
//! Every wait polls with a deadline; the checked traffic (tests/common/traffic.rs) checks
//! every reply it gets.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::admin::{
    backend_num, backend_stat, generation, metric, metric_sum, scrape, wait_generation,
};
use common::config::{
    config_toml, md5_pool_toml, named, parse_route, replace_file, route_owners, run_route,
    ConfigRig, RouteLine, TempFiles,
};
use common::traffic::{CheckedTraffic, Traffic};
use common::{
    free_port, key_values, num_stat, poll, read_all, text, truncate, try_poll, value_item,
    wait_for_port_only, write_all, Client, Memcached, Proxy, POLL_EVERY, WAIT,
};

/// Sum of `<field>` over every backend in `stats backends`.
fn backends_sum(map: &HashMap<String, String>, field: &str) -> u64 {
    let suffix = format!(":{field}");
    map.iter()
        .filter(|(k, _)| k.ends_with(&suffix))
        .map(|(_, v)| v.parse::<u64>().unwrap())
        .sum()
}

/// `threads` × `per` own keys for checked traffic.
fn own_keys(tag: &str, threads: usize, per: usize) -> Vec<Vec<String>> {
    (0..threads)
        .map(|t| (0..per).map(|i| format!("{tag}:t{t}:{i}")).collect())
        .collect()
}

/// Keys from `pairs` whose owner is in `allowed`.
fn keys_owned_by(
    pairs: &[(String, String)],
    owners: &HashMap<String, String>,
    allowed: &[String],
) -> Vec<(String, String)> {
    pairs
        .iter()
        .filter(|(k, _)| allowed.contains(&owners[k]))
        .cloned()
        .collect()
}

/// Every key of `pairs` reads back through memroute on `port` (hits, right values); on
/// failure, how many did not, `what`, and a few of them.
fn assert_read_back(port: u16, pairs: &[(String, String)], what: &str) {
    let bad = read_all(port, pairs);
    assert!(
        bad.is_empty(),
        "{} {what}, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

/// memroute (two threads, an admin listener, pool settings `extra`) on a file naming the
/// first `from` of four memcached, 2,000 keys (`tag`) written through it, and where they
/// live under that file and under the one naming the first `to`, which
/// [`Reshard::reload_under_load`] writes over it.
struct Reshard {
    rig: ConfigRig,
    path: PathBuf,
    new_text: String,
    proxy: Proxy,
    tag: String,
    pre: Arc<Vec<(String, String)>>,
    old_owner: HashMap<String, String>,
    new_owner: HashMap<String, String>,
}

impl Reshard {
    fn start(tag: &str, extra: &str, from: usize, to: usize) -> Reshard {
        let rig = ConfigRig::new(4, 2, true);
        let new_text = rig.file(to, extra);
        let new_copy = rig.files.write("new-copy.toml", &new_text);
        let (path, proxy) = rig.start(&rig.file(from, extra));
        let pre = Arc::new(key_values(tag, 2000));
        write_all(rig.port, &pre);
        let keys: Vec<&str> = pre.iter().map(|(k, _)| k.as_str()).collect();
        let old_owner = route_owners(&path, &keys);
        let new_owner = route_owners(&new_copy, &keys);
        Reshard {
            rig,
            path,
            new_text,
            proxy,
            tag: tag.to_string(),
            pre,
            old_owner,
            new_owner,
        }
    }

    /// Starts checked traffic (four clients on keys of their own, also reading every key
    /// written), and after 2,000 replies writes the new file and waits for the generation
    /// after `g0` (read on `sc`). Returns the traffic, the new generation, and the replies
    /// counted when it came.
    fn reload_under_load(&self, sc: &mut Client, g0: u64) -> (CheckedTraffic, u64, u64) {
        let load = Traffic::clients(own_keys(&format!("{}-own", self.tag), 4, 48))
            .reading(self.pre.clone())
            .start(&self.proxy);
        load.wait_replies(2000, "before the reload");
        replace_file(&self.path, &self.new_text);
        let g1 = wait_generation(sc, g0);
        assert_eq!(g1, g0 + 1, "one file change, one generation");
        let at_change = load.replies();
        (load, g1, at_change)
    }

    /// Where the running memroute routes `keys` (by `memroute route --admin`).
    fn live_route(&self, keys: &[&str]) -> Vec<RouteLine> {
        let admin = format!("127.0.0.1:{}", self.rig.admin());
        parse_route(&run_route(&["--admin", &admin], keys))
    }
}

// ---------------------------------------------------------------------------------------
// 1. Add a backend under load
// ---------------------------------------------------------------------------------------

#[test]
fn adding_a_backend_under_load_moves_a_quarter_of_keys_with_no_errors_or_misses() {
    let mut r = Reshard::start(
        "add",
        "timeout = 3000\nwarmup = \"30s\"\nwarmup_ttl = 300",
        3,
        4,
    );
    let (mcs, port, admin) = (&r.rig.mcs, r.rig.port, r.rig.admin());
    let (pre, old_owner, new_owner) = (&r.pre, &r.old_owner, &r.new_owner);

    let mut sc = r.proxy.client();
    let g0 = generation(&mut sc);
    let (load, g1, at_change) = r.reload_under_load(&mut sc, g0);

    // Where keys went: about a quarter moved, all of them to the new backend.
    let moved: Vec<&(String, String)> = pre
        .iter()
        .filter(|(k, _)| old_owner[k] != new_owner[k])
        .collect();
    let share = moved.len() as f64 / pre.len() as f64;
    assert!(
        (share - 0.25).abs() <= 0.04,
        "{} of {} keys moved ({share:.3}), expected about 1/4",
        moved.len(),
        pre.len()
    );
    for (k, _) in &moved {
        assert_eq!(
            new_owner[k],
            mcs[3].address(),
            "{k} moved, but not to the new backend"
        );
    }

    // The running proxy agrees, and knows where moved keys were before.
    let sample: Vec<&str> = pre.iter().take(200).map(|(k, _)| k.as_str()).collect();
    let live = r.live_route(&sample);
    assert_eq!(live.len(), sample.len());
    let mut saw_previous = 0;
    for l in &live {
        assert_eq!(
            l.owner, new_owner[&l.key],
            "route --admin owner of {}",
            l.key
        );
        if old_owner[&l.key] != new_owner[&l.key] {
            assert_eq!(
                l.previous.as_deref(),
                Some(old_owner[&l.key].as_str()),
                "route --admin for a moved key during warm-up: {l:?}"
            );
            saw_previous += 1;
        } else {
            assert_eq!(
                l.previous, None,
                "unmoved key shows a previous owner: {l:?}"
            );
        }
    }
    assert!(saw_previous > 0, "no moved key among the first 200");

    // Every key written before the change reads back (hits, right values) during warm-up,
    // while the load keeps running.
    load.wait_replies(3000, "during warm-up");
    assert_read_back(
        port,
        pre,
        "pre-written keys did not read back through memroute during warm-up",
    );
    load.wait_replies(1000, "after reading every key back");
    load.finish().assert_replies(at_change + 4000);

    // The copies land on the new owner (asynchronously), and only moved keys are copied.
    let mut direct = mcs[3].client();
    let mut pending: Vec<&(String, String)> = moved.clone();
    poll("moved keys copied to the new backend", WAIT, || {
        pending.retain(|(k, v)| direct.get(k).as_deref() != Some(v.as_bytes()));
        match pending.len() {
            0 => Ok(()),
            n => Err(format!(
                "{n} moved keys not on the new backend yet, e.g. {}",
                pending[0].0
            )),
        }
    });
    let stray = pre
        .iter()
        .filter(|(k, _)| old_owner[k] == new_owner[k])
        .filter(|(k, _)| direct.get(k).is_some())
        .count();
    assert_eq!(
        stray, 0,
        "keys that did not move were copied to the new backend"
    );

    let b = sc.stats_map("backends");
    let hits = backends_sum(&b, "warmup_hits");
    assert!(
        hits >= moved.len() as u64,
        "warmup_hits {hits} < {} moved keys each read at least once",
        moved.len()
    );
    for m in &mcs[..3] {
        assert_eq!(backend_stat(&b, "main", m.port, "state"), "up");
        assert_eq!(backend_num(&b, "main", m.port, "errors"), 0);
    }
    assert_eq!(backend_stat(&b, "main", mcs[3].port, "state"), "up");
    assert!(backend_num(&b, "main", mcs[3].port, "requests") > 0);
    let m = scrape(admin);
    assert!(metric_sum(&m, "memroute_backend_warmup_hits_total") >= moved.len() as f64);
    assert_eq!(
        metric(&m, "memroute_config_generation", &[]),
        Some(g1 as f64)
    );
    assert!(metric(&m, "memroute_reloads_total", &[("result", "ok")]).unwrap_or(0.0) >= 1.0);
    assert_eq!(
        generation(&mut sc),
        g1,
        "no further generation after the reload"
    );
    assert!(r.proxy.is_running());
}

// ---------------------------------------------------------------------------------------
// 2. Remove a backend under load
// ---------------------------------------------------------------------------------------

#[test]
fn removing_a_backend_under_load_keeps_every_key_readable_during_warm_up() {
    let r = Reshard::start("rm", "timeout = 3000\nwarmup = \"30s\"", 4, 3);
    let (mcs, port, admin) = (&r.rig.mcs, r.rig.port, r.rig.admin());
    let (pre, old_owner, new_owner) = (&r.pre, &r.old_owner, &r.new_owner);
    let removed = mcs[3].address();
    let on_removed: Vec<(String, String)> =
        keys_owned_by(pre, old_owner, std::slice::from_ref(&removed));
    assert!(
        on_removed.len() > 300,
        "only {} keys on the backend to remove",
        on_removed.len()
    );
    // Unmoved keys keep their owner; the removed backend's keys spread over the others.
    for (k, _) in pre.iter() {
        if old_owner[k] != removed {
            assert_eq!(
                old_owner[k], new_owner[k],
                "{k} moved though its owner stayed"
            );
        } else {
            assert_ne!(new_owner[k], removed);
        }
    }

    let mut sc = Client::connect(port);
    let g0 = generation(&mut sc);
    let removed_gets_before = num_stat(&mcs[3].client().stats_map(""), "cmd_get");
    let (load, _, at_change) = r.reload_under_load(&mut sc, g0);

    // During warm-up the proxy still knows where the removed backend's keys were.
    let sample: Vec<&str> = on_removed
        .iter()
        .take(20)
        .map(|(k, _)| k.as_str())
        .collect();
    for l in r.live_route(&sample) {
        assert_eq!(l.owner, new_owner[&l.key]);
        assert_eq!(l.previous.as_deref(), Some(removed.as_str()), "{l:?}");
    }

    load.wait_replies(3000, "during warm-up");
    // Keys that lived on the removed backend are still readable (its copy is retained);
    // so is everything else.
    assert_read_back(
        port,
        &on_removed,
        "keys of the removed backend missed during warm-up",
    );
    assert_read_back(port, pre, "keys missed after removing a backend");
    load.wait_replies(1000, "after reading every key back");
    load.finish().assert_replies(at_change + 4000);

    // Warm-up read from the removed backend, and copied its keys to their new owners.
    let removed_gets_after = num_stat(&mcs[3].client().stats_map(""), "cmd_get");
    assert!(
        removed_gets_after > removed_gets_before,
        "the removed backend was never asked during warm-up"
    );
    let by_addr: HashMap<String, &Memcached> = mcs.iter().map(|m| (m.address(), m)).collect();
    let mut clients: HashMap<String, Client> = HashMap::new();
    let mut pending = on_removed.clone();
    poll(
        "removed backend's keys copied to their new owners",
        WAIT,
        || {
            pending.retain(|(k, v)| {
                let owner = &new_owner[k];
                let c = clients
                    .entry(owner.clone())
                    .or_insert_with(|| by_addr[owner].client());
                c.get(k).as_deref() != Some(v.as_bytes())
            });
            match pending.len() {
                0 => Ok(()),
                n => Err(format!("{n} keys not copied yet, e.g. {}", pending[0].0)),
            }
        },
    );
    // Each of the removed backend's keys was read after the change and answered by the
    // removed backend (its previous owner): those warm-up hits must be visible somewhere.
    let b = sc.stats_map("backends");
    let hits = backends_sum(&b, "warmup_hits");
    let listed: Vec<&String> = b.keys().filter(|k| k.ends_with(":state")).collect();
    assert!(
        hits >= on_removed.len() as u64,
        "stats backends shows {hits} warmup_hits for {} keys answered by the removed \
         backend during warm-up; backends listed: {listed:?}",
        on_removed.len()
    );
    let m = scrape(admin);
    let metric_hits = metric_sum(&m, "memroute_backend_warmup_hits_total");
    assert!(
        metric_hits >= on_removed.len() as f64,
        "memroute_backend_warmup_hits_total sums to {metric_hits} for {} warm-up hits",
        on_removed.len()
    );
}

// ---------------------------------------------------------------------------------------
// 3. An invalid config written during load
// ---------------------------------------------------------------------------------------

#[test]
fn an_invalid_config_is_rejected_and_logged_while_traffic_continues() {
    let rig = ConfigRig::new(3, 2, true);
    let (port, admin) = (rig.port, rig.admin());
    let good = rig.file(3, "timeout = 2000");
    let bad = good.replace("hash = \"md5\"", "hash = \"sha1\"");
    assert_ne!(good, bad);
    let path = rig.files.write("memroute.toml", &good);
    let log = rig.files.path("memroute.log");
    let proxy = Proxy::start_config_logged(&path, port, &[], &log);
    wait_for_port_only(admin);

    let pre = Arc::new(key_values("inv", 500));
    write_all(port, &pre);
    let mut sc = Client::connect(port);
    let g0 = generation(&mut sc);
    let reload_errors = || {
        metric(
            &scrape(admin),
            "memroute_reloads_total",
            &[("result", "error")],
        )
    };
    let errors_before = reload_errors().unwrap_or(0.0);
    let load = Traffic::clients(own_keys("inv-own", 3, 32))
        .reading(pre.clone())
        .start(&proxy);
    load.wait_replies(1000, "before the invalid file");

    replace_file(&path, &bad);
    let errors_after = poll(
        "reloads_total{result=\"error\"} to rise",
        WAIT,
        || match reload_errors() {
            Some(v) if v > errors_before => Ok(v),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(errors_after >= 1.0);
    assert_eq!(
        generation(&mut sc),
        g0,
        "an invalid file changed the generation"
    );
    let logged = poll("the rejection to be logged", WAIT, || {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        match l
            .lines()
            .find(|line| line.contains("rejected") || line.contains("invalid"))
        {
            Some(line) => Ok(line.to_string()),
            None => Err(format!("log so far: {l:?}")),
        }
    });
    assert!(
        logged.contains("hash"),
        "the rejection does not name the field: {logged:?}"
    );
    load.wait_replies(1000, "after the invalid file");
    assert_eq!(read_all(port, &pre), Vec::<String>::new());

    // A valid file afterwards is applied.
    let fixed = good.replace("timeout = 2000", "timeout = 2500");
    replace_file(&path, &fixed);
    let g1 = wait_generation(&mut sc, g0);
    assert_eq!(g1, g0 + 1);
    load.wait_replies(1000, "after the fixed file");
    load.finish().assert_replies(3000);
    let m = scrape(admin);
    assert_eq!(
        metric(&m, "memroute_config_generation", &[]),
        Some(g1 as f64)
    );
    assert!(metric(&m, "memroute_reloads_total", &[("result", "ok")]).unwrap_or(0.0) >= 1.0);
}

// ---------------------------------------------------------------------------------------
// 4. SIGHUP
// ---------------------------------------------------------------------------------------

#[test]
fn sighup_reloads_an_edited_file() {
    // memroute watches the folder of the path it is given (the rig's); the file it names is
    // a symlink to a file in another folder, so editing the target is seen only through
    // SIGHUP. The admin listener starts with the control loop that handles signals: waiting
    // for it keeps this test clear of the startup race covered by the next test.
    let rig = ConfigRig::new(3, 1, true);
    let (mcs, port) = (&rig.mcs, rig.port);
    let real = TempFiles::new();
    let target = real.write("real.toml", &rig.file(2, ""));
    let link = rig.files.path("memroute.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let proxy = Proxy::start_config(&link, port, &[]);
    wait_for_port_only(rig.admin());
    let mut sc = proxy.client();
    let g0 = generation(&mut sc);
    assert!(!sc
        .stats_map("backends")
        .contains_key(&format!("main:{}:state", mcs[2].address())));

    replace_file(&target, &rig.file(3, ""));
    proxy.signal("HUP");
    let g1 = wait_generation(&mut sc, g0);
    assert_eq!(g1, g0 + 1);
    let b = sc.stats_map("backends");
    assert_eq!(backend_stat(&b, "main", mcs[2].port, "state"), "up");
    // The same client connection kept working across the reload; the new ring is in use.
    let pairs = key_values("hup", 300);
    write_all(port, &pairs);
    let mut direct = mcs[2].client();
    assert!(
        pairs.iter().any(|(k, _)| direct.get(k).is_some()),
        "no key reached the backend added by SIGHUP"
    );
}

/// Starts memroute on a 2-backend file and, as soon as it accepts clients, lets `act` change
/// things; returns the proxy.
fn started_then(
    files: &TempFiles,
    servers: &[String],
    act: impl FnOnce(&Path, &Proxy, &str),
) -> Proxy {
    let port = free_port();
    let before = config_toml(
        "threads = 1",
        &[md5_pool_toml("main", port, &servers[..2], "")],
    );
    let after = config_toml("threads = 1", &[md5_pool_toml("main", port, servers, "")]);
    let path = files.write("memroute.toml", &before);
    let proxy = Proxy::start_config(&path, port, &[]);
    act(&path, &proxy, &after);
    proxy
}

#[test]
fn a_config_edit_right_after_start_is_applied() {
    // An edit made while memroute starts (between reading the file and watching it) must not
    // be lost: memroute must end up running the file as it is on disk.
    let mcs: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let servers = named(&mcs[..3]);
    for round in 0..20 {
        let files = TempFiles::new();
        let proxy = started_then(&files, &servers, |path, _, after| replace_file(path, after));
        let mut sc = proxy.client();
        let applied = try_poll(Duration::from_secs(3), POLL_EVERY, || {
            let b = sc.stats_map("backends");
            match b.contains_key(&format!("main:{}:state", mcs[2].address())) {
                true => Ok(()),
                false => Err(format!("generation {}", generation(&mut sc))),
            }
        });
        assert_eq!(
            applied,
            Ok(()),
            "round {round}: the file on disk lists 3 backends, memroute still runs 2 \
             (edit made right after it started listening was never applied)"
        );
    }
}

#[test]
fn a_get_line_read_in_batches_during_warm_up_finds_the_moved_keys() {
    let rig = ConfigRig::new(4, 1, false);
    let port = rig.port;
    let extra = "warmup = \"30s\"";
    let (path, proxy) = rig.start(&rig.file(3, extra));
    let pairs = key_values("stream", 1000);
    write_all(port, &pairs);
    let mut sc = proxy.client();
    let g0 = generation(&mut sc);
    replace_file(&path, &rig.file(4, extra));
    wait_generation(&mut sc, g0);

    // One get of every key (about 30 KB), sent in pieces so that memroute reads it in
    // batches of keys while it arrives: the moved keys come from their previous owner.
    let mut line = String::from("get");
    let mut expected = String::new();
    for (k, v) in &pairs {
        line.push(' ');
        line.push_str(k);
        expected.push_str(&value_item(k, v));
    }
    line.push_str("\r\n");
    expected.push_str("END\r\n");
    let mut c = proxy.client();
    for piece in line.as_bytes().chunks(4000) {
        c.send(piece);
        thread::sleep(Duration::from_millis(20));
    }
    let got = text(&c.read_n(expected.len()));
    assert!(got == expected, "{}", truncate(&got));
    let stats = sc.stats_map("backends");
    assert!(
        backends_sum(&stats, "warmup_hits") > 100,
        "moved keys were read from their previous owner"
    );
}

#[test]
fn meta_gets_during_warm_up_find_moved_keys_and_copy_them_with_their_flags() {
    let rig = ConfigRig::new(4, 1, false);
    let mcs = &rig.mcs;
    let extra = "warmup = \"30s\"\nwarmup_ttl = 600";
    let (path, proxy) = rig.start(&rig.file(3, extra));
    // Written through memroute with the meta protocol: flags, a TTL on some, and every
    // fourth key in base64 form (routed by its decoded bytes).
    let pairs = key_values("metawarm", 400);
    let b64 = |k: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(k)
    };
    // The key token and the flags that go with it.
    let token = |i: usize, k: &str| match i % 4 {
        0 => (b64(k), " b"),
        _ => (k.to_string(), ""),
    };
    let mut c = proxy.client();
    let mut writes = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        let ttl = if i % 2 == 0 { 0 } else { 3600 };
        let (key, b) = token(i, k);
        writes.push_str(&format!("ms {key} {}{b} F{i} T{ttl}\r\n{v}\r\n", v.len()));
    }
    c.send(&writes);
    assert_eq!(
        text(&c.read_n(4 * pairs.len())),
        "HD\r\n".repeat(pairs.len())
    );

    let mut sc = proxy.client();
    let g0 = generation(&mut sc);
    replace_file(&path, &rig.file(4, extra));
    wait_generation(&mut sc, g0);

    // One pipeline of quiet gets of every key, a missing key, and mn: every key answers
    // from wherever it is, the miss stays silent, mn comes last.
    let mut request = String::new();
    let mut expected = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        let (key, b) = token(i, k);
        request.push_str(&format!("mg {key}{b} v f q O{i}\r\n"));
        expected.push_str(&format!("VA {} f{i} O{i}\r\n{v}\r\n", v.len()));
    }
    request.push_str("mg metawarm:absent v q\r\nmn\r\n");
    expected.push_str("MN\r\n");
    c.send(&request);
    let got = text(&c.read_n(expected.len()));
    assert!(got == expected, "{}", truncate(&got));
    let stats = sc.stats_map("backends");
    let moved = backends_sum(&stats, "warmup_hits");
    assert!(
        moved > 40,
        "moved keys were read from their previous owner: {moved}"
    );

    // The copies land on the new owner with their flags and a TTL no longer than the
    // item's (and warmup_ttl).
    let newest = &mcs[3];
    // The copies are sent after the client's answers, in the background.
    let copied = poll("copies on the new backend", WAIT, || {
        let mut d = newest.client();
        let n = pairs
            .iter()
            .filter(|(k, _)| {
                d.send(format!("mg {} b v\r\n", b64(k)));
                let line = d.read_line();
                if line.starts_with(b"VA ") {
                    d.read_line();
                }
                !line.starts_with(b"EN")
            })
            .count();
        match n as u64 >= moved {
            true => Ok(n),
            false => Err(format!("{n} of {moved} copied")),
        }
    });
    let mut d = newest.client();
    for (i, (k, v)) in pairs.iter().enumerate() {
        d.send(format!("mg {} b v f t\r\n", b64(k)));
        let line = text(&d.read_line());
        if line.starts_with("EN") {
            continue;
        }
        let ttl: i64 = line
            .split(' ')
            .find_map(|t| t.strip_prefix('t'))
            .and_then(|t| t.trim().parse().ok())
            .unwrap();
        assert!(line.contains(&format!(" f{i} ")), "{line}");
        // No expiry or an hour left: either way the copy lives warmup_ttl (10 minutes).
        assert!((590..=600).contains(&ttl), "{k}: ttl {ttl}");
        assert_eq!(text(&d.read_n(v.len() + 2)), format!("{v}\r\n"));
    }
    assert!(copied > 40);
}
