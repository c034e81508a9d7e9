//! Routes (README "## Routes"), against real memcached processes and the memroute binary:
//! prefix routing (longest prefix, multi-gets split across routes and merged in key order,
//! base64 meta keys, quiet meta pipelines, `flush_all`), replicated pools (a copy killed and
//! restarted under checked traffic, a copy that stops answering, the worst reply of
//! `all_sync`, `miss_failover`, compare-and-swap on the designated copy), gutter failover
//! (a dead or silent primary, capped TTLs, back to the primary when it returns), shadow
//! traffic (a stalled or dead shadow costs the clients nothing; the same keys every time),
//! reloads adding and changing routes under checked traffic, `--check`'s tree and configs
//! refused at start.
//!
//! Where a key went is checked by asking each pool's memcached directly. Every wait polls
//! with a deadline; the checked traffic (tests/common/traffic.rs) checks every reply.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::admin::{generation, wait_generation};
use common::config::{replace_file, run_route};
use common::routes::{
    direct_item, direct_ttl, mc_stat, meta, reply_keys, route_stat, route_stats, run_memroute,
    target_pool, Deaf, RouteRig,
};
use common::traffic::{Traffic, TrafficReport};
use common::{
    free_port, key_values, poll, read_all, set_request, text, value_item, value_reply,
    wait_for_port_only, write_all, Client, Memcached, Proxy, WAIT,
};

/// A memcached key in base64, as meta commands take it with the `b` flag.
fn b64(key: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// `threads` × `per` own keys for checked traffic, all starting with `tag`.
fn own_keys(tag: &str, threads: usize, per: usize) -> Vec<Vec<String>> {
    (0..threads)
        .map(|t| (0..per).map(|i| format!("{tag}:t{t}:{i}")).collect())
        .collect()
}

/// Polls until `rig`'s pools holding `key` are exactly `expected`.
fn wait_holders(rig: &RouteRig, key: &str, expected: &[&str]) {
    poll(&format!("{key} held by {expected:?}"), WAIT, || {
        let got = rig.holders(key);
        match got == expected {
            true => Ok(()),
            false => Err(format!("held by {got:?}")),
        }
    });
}

// ---------------------------------------------------------------------------------------
// 1. Prefix routing
// ---------------------------------------------------------------------------------------

/// Pools of the prefix test: the default, two copies, the VIP pool, a gutter route's two
/// pools and a shadow pool.
const PREFIX_POOLS: [&str; 7] = ["a", "u1", "u2", "v", "p", "g", "s"];

fn prefix_routes(port: u16) -> String {
    format!(
        r#"
[routes.front]
type = "prefix"
listen = "127.0.0.1:{port}"
prefixes = {{ "user:" = "users", "user:vip:" = "v", "sess:" = "guarded", "feed:" = "shadowed" }}
default = "a"

[routes.users]
type = "replicated"
copies = ["u1", "u2"]

[routes.guarded]
type = "gutter"
primary = "p"
gutter = "g"
failover_ttl = "60s"

[routes.shadowed]
type = "shadow"
primary = "a"
shadow = "s"
fraction = 1.0
"#
    )
}

/// Where each key is read from (the pool that answers) and written to (every pool that
/// then holds it), by the README: longest prefix, default for the rest.
const PREFIX_CASES: &[(&str, &str, &[&str])] = &[
    ("user:1", "u1", &["u1", "u2"]),
    ("user:vip:1", "v", &["v"]),
    ("user:vi", "u1", &["u1", "u2"]),
    ("sess:1", "p", &["p"]),
    ("feed:1", "a", &["a", "s"]),
    ("other:1", "a", &["a"]),
    ("user", "a", &["a"]),
    ("User:1", "a", &["a"]),
    ("xuser:1", "a", &["a"]),
];

#[test]
fn prefix_route_sends_each_key_to_its_pool_and_merges_multi_gets_in_key_order() {
    let rig = RouteRig::new(&PREFIX_POOLS);
    let port = free_port();
    let (_path, proxy) = rig.start(&rig.file(&prefix_routes(port)), port, &[]);
    let mut c = proxy.client();

    // Writes: each key lands on its pools and no other (the shadow's copy comes later).
    for (i, (key, _, holders)) in PREFIX_CASES.iter().enumerate() {
        let key = format!("{key}w{i}");
        c.set(&key, b"written");
        wait_holders(&rig, &key, holders);
    }

    // Reads: every pool holds every key, its value naming the pool; memroute must answer
    // with the value of the pool the key routes to.
    let keys: Vec<String> = PREFIX_CASES
        .iter()
        .map(|(k, _, _)| format!("{k}r"))
        .collect();
    for (pool, m) in &rig.pools {
        let mut d = m.client();
        for k in &keys {
            d.set(k, pool.as_bytes());
        }
    }
    for (k, (_, from, _)) in keys.iter().zip(PREFIX_CASES) {
        assert_eq!(
            c.get(k).map(|v| text(&v)),
            Some(from.to_string()),
            "get {k} read the wrong pool"
        );
    }

    // A multi-get over every route, keys interleaved, with misses (a key absent from every
    // pool, on the default, the replicated, the gutter and the VIP routes): one reply, the
    // items in key order, one END.
    let mut multi: Vec<String> = Vec::new();
    let mut expected = String::new();
    for (i, (k, (_, from, _))) in keys.iter().zip(PREFIX_CASES).enumerate().rev() {
        multi.push(k.clone());
        expected.push_str(&value_item(k, from));
        let miss = ["nope:", "user:nope", "sess:nope", "user:vip:nope"][i % 4];
        multi.push(format!("{miss}{i}"));
    }
    expected.push_str("END\r\n");
    let request = format!("get {}\r\n", multi.join(" "));
    let got = c.call(&request);
    assert_eq!(got, expected, "multi-get across routes: {request:?}");
    // `gets` too: the same items (each with its pool's CAS unique), in key order.
    c.send(format!("gets {}\r\n", multi.join(" ")));
    let got = c.read_retrieval();
    let order: Vec<String> = keys.iter().rev().cloned().collect();
    assert_eq!(
        reply_keys(&got),
        order,
        "gets across routes: {}",
        text(&got)
    );
    assert!(got.ends_with(b"END\r\n") && text(&got).matches("END\r\n").count() == 1);
    // Each key asked once more in a second multi-get, in another order.
    let shuffled: Vec<&String> = keys
        .iter()
        .step_by(2)
        .chain(keys.iter().skip(1).step_by(2))
        .collect();
    let mut expected = String::new();
    for k in &shuffled {
        let i = keys.iter().position(|x| x == *k).unwrap();
        expected.push_str(&value_item(k, PREFIX_CASES[i].1));
    }
    expected.push_str("END\r\n");
    let request = format!(
        "get {}\r\n",
        shuffled
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert_eq!(c.call(&request), expected, "{request:?}");

    // Meta keys in base64 route by their decoded bytes: "user:vip:…" in base64 starts with
    // no prefix of the route, and reaches the VIP pool all the same.
    for (k, (_, from, _)) in keys.iter().zip(PREFIX_CASES) {
        let (line, data) = meta(&mut c, &format!("mg {} b v\r\n", b64(k)));
        assert_eq!(
            (line, data.as_deref().map(text)),
            (format!("VA {}\r\n", from.len()), Some(from.to_string())),
            "mg {} b v (key {k})",
            b64(k)
        );
    }
    for (i, (key, _, holders)) in PREFIX_CASES.iter().enumerate() {
        let key = format!("{key}b{i}");
        let (line, _) = meta(&mut c, &format!("ms {} 3 b\r\nb64\r\n", b64(&key)));
        assert_eq!(line, "HD\r\n", "ms {} b (key {key})", b64(&key));
        wait_holders(&rig, &key, holders);
    }

    // The route counted no failover nor disagreement; the shadow got its copies.
    let stats = route_stats(port);
    for route in ["front", "users", "guarded", "shadowed"] {
        assert_eq!(stats[&format!("{route}:failovers")], 0, "{stats:?}");
        assert_eq!(stats[&format!("{route}:disagreements")], 0, "{stats:?}");
    }
    assert!(stats["shadowed:shadow_sends"] > 0, "{stats:?}");
}

#[test]
fn prefix_route_long_multi_gets_quiet_meta_and_flush_all_span_every_route() {
    let mut rig = RouteRig::new(&PREFIX_POOLS);
    let port = free_port();
    let (_path, proxy) = rig.start(&rig.file(&prefix_routes(port)), port, &[]);
    let mut c = proxy.client();

    // 600 keys over every route, written through memroute, read back by one get line of
    // some 15 KB (handed out in batches) with misses among them: every item in key order.
    let prefixes = ["user:", "user:vip:", "sess:", "feed:", "other:"];
    let pairs: Vec<(String, String)> = key_values("long", 600)
        .into_iter()
        .enumerate()
        .map(|(i, (k, v))| (format!("{}{k}", prefixes[i % prefixes.len()]), v))
        .collect();
    write_all(port, &pairs);
    let mut keys = Vec::new();
    let mut expected = String::new();
    for (i, (k, v)) in pairs.iter().enumerate().rev() {
        keys.push(k.clone());
        expected.push_str(&value_item(k, v));
        if i % 7 == 0 {
            keys.push(format!("{}missing{i}", prefixes[i % prefixes.len()]));
        }
    }
    expected.push_str("END\r\n");
    let request = format!("get {}\r\n", keys.join(" "));
    assert!(request.len() > 10_000);
    c.send(&request);
    let got = c.read_retrieval();
    if got != expected.as_bytes() {
        panic!(
            "a 600-key get across routes: {}",
            common::describe_difference(&got, expected.as_bytes())
        );
    }
    assert_eq!(read_all(port, &pairs), Vec::<String>::new());

    // Quiet meta gets across routes, pipelined: hits in order, misses left out, then MN.
    let mut pipeline = String::new();
    let mut expected = String::new();
    for (i, (k, v)) in pairs.iter().take(20).enumerate() {
        pipeline.push_str(&format!("mg {k} v q k\r\n"));
        expected.push_str(&format!("VA {} k{k}\r\n{v}\r\n", v.len()));
        pipeline.push_str(&format!(
            "mg {}gone{i} v q\r\n",
            prefixes[i % prefixes.len()]
        ));
    }
    pipeline.push_str("mn\r\n");
    expected.push_str("MN\r\n");
    c.send(&pipeline);
    let got = c.read_n(expected.len());
    assert_eq!(text(&got), expected, "quiet mg pipeline across routes");
    c.expect("version\r\n", common::VERSION_REPLY);

    // flush_all reaches every pool behind the listener.
    c.expect("flush_all\r\n", "OK\r\n");
    for (pool, m) in &rig.pools {
        if pool == "s" {
            continue; // the shadow's copies are not the listener's data
        }
        let mut d = m.client();
        let held: Vec<&String> = pairs
            .iter()
            .map(|(k, _)| k)
            .filter(|k| d.get(k).is_some())
            .collect();
        assert!(
            held.is_empty(),
            "pool {pool} still holds {} keys after flush_all",
            held.len()
        );
    }
    assert_eq!(
        c.call(format!("get {} {}\r\n", pairs[0].0, pairs[1].0)),
        "END\r\n"
    );

    // With the gutter route's primary dead, the long get still answers every other route's
    // items in order; the sess: keys (lost with it) miss in the gutter.
    write_all(port, &pairs);
    rig.kill("p");
    let mut expected = String::new();
    for (k, v) in pairs.iter().rev() {
        if !k.starts_with("sess:") {
            expected.push_str(&value_item(k, v));
        }
    }
    expected.push_str("END\r\n");
    c.send(&request);
    let got = c.read_retrieval();
    if got != expected.as_bytes() {
        panic!(
            "a 600-key get across routes, the gutter's primary dead: {}",
            common::describe_difference(&got, expected.as_bytes())
        );
    }
    assert!(route_stat(port, "guarded", "failovers") > 0);
}

// ---------------------------------------------------------------------------------------
// 2. Replicated pools
// ---------------------------------------------------------------------------------------

#[test]
fn replicated_copy_killed_and_restarted_under_checked_traffic_costs_no_errors() {
    let mut rig = RouteRig::new(&["a", "b", "c", "d"]);
    let port = free_port();
    // all_initial: writes are answered by the designated copy b, so a copy other than b can
    // die without failing a write; reads spread over the copies, fail over on an error and
    // on a miss (the restarted copy is empty).
    let routes = format!(
        r#"
[routes.front]
type = "prefix"
listen = "127.0.0.1:{port}"
prefixes = {{ "user:" = "users" }}
default = "a"

[routes.users]
type = "replicated"
copies = ["b", "c", "d"]
write = "all_initial"
read = "miss_failover"
spread_reads = true
"#
    );
    let (_path, proxy) = rig.start(&rig.file(&routes), port, &[]);
    let pre = Arc::new(key_values("user:pre", 300));
    write_all(port, &pre);
    // Every copy holds every key (the others' writes finish in the background).
    poll("pre-written keys on every copy", WAIT, || {
        for pool in ["b", "c", "d"] {
            let mut d = rig.mc(pool).client();
            if let Some((k, _)) = pre
                .iter()
                .find(|(k, v)| d.get(k) != Some(v.clone().into_bytes()))
            {
                return Err(format!("{k} not on {pool}"));
            }
        }
        Ok(())
    });
    let own = own_keys("user:own", 4, 7);
    let load = Traffic::clients(own.clone())
        .reading(pre.clone())
        .start(&proxy);
    load.wait_replies(1500, "before the kill");

    // Copy c dies: reads it owed go to the others, writes are still answered by b.
    let c_port = rig.kill("c");
    let state = format!("c:127.0.0.1:{c_port}:state");
    let backend_state = || {
        Client::connect(port)
            .stats_map("backends")
            .get(&state)
            .cloned()
    };
    poll(
        "memroute to see copy c down",
        WAIT,
        || match backend_state().as_deref() {
            Some("down") => Ok(()),
            other => Err(format!("{state} = {other:?}")),
        },
    );
    load.wait_replies(3000, "while copy c is down");
    let down = key_values("user:down", 100);
    write_all(port, &down);
    assert_eq!(
        read_all(port, &down),
        Vec::<String>::new(),
        "read while c is down"
    );
    assert_eq!(
        read_all(port, &pre),
        Vec::<String>::new(),
        "pre-written keys while c is down"
    );

    // It comes back, empty, on its port; memroute reconnects (the traffic keeps writing to it).
    rig.restart("c");
    poll("copy c up again", WAIT, || {
        match backend_state().as_deref() {
            Some("up") => Ok(()),
            other => Err(format!("{state} = {other:?}")),
        }
    });
    load.wait_replies(3000, "after copy c came back");
    let after = key_values("user:after", 100);
    write_all(port, &after);
    assert_eq!(
        read_all(port, &pre),
        Vec::<String>::new(),
        "pre-written keys after c came back"
    );
    assert_eq!(
        read_all(port, &down),
        Vec::<String>::new(),
        "keys written while c was down"
    );
    load.park();

    // Nothing misrouted: the default pool saw no request; each copy that was up holds every
    // value, the same; the restarted copy holds those written since it came back.
    let a = rig.mc("a");
    for stat in ["cmd_get", "cmd_set", "cmd_touch", "curr_items"] {
        assert_eq!(mc_stat(a, stat), 0, "pool a (default) got {stat}");
    }
    poll("every copy consistent", WAIT, || {
        for (k, v) in pre.iter().chain(&down) {
            for pool in ["b", "d"] {
                if rig.mc(pool).client().get(k) != Some(v.clone().into_bytes()) {
                    return Err(format!("{k} wrong on {pool}"));
                }
            }
        }
        for (k, v) in &after {
            for pool in ["b", "c", "d"] {
                if rig.mc(pool).client().get(k) != Some(v.clone().into_bytes()) {
                    return Err(format!("{k} wrong on {pool}"));
                }
            }
        }
        // The traffic rewrites every one of its keys each batch: every copy ends equal.
        for keys in &own {
            for k in &keys[..keys.len() - 1] {
                let on_b = direct_item(rig.mc("b"), k);
                if !on_b.starts_with("VALUE ") {
                    return Err(format!("{k} missing on b: {on_b:?}"));
                }
                for pool in ["c", "d"] {
                    if direct_item(rig.mc(pool), k) != on_b {
                        return Err(format!("{k} differs on {pool} from b"));
                    }
                }
            }
        }
        Ok(())
    });
    load.unpark();
    load.wait_replies(500, "after the checks");
    let report = load.finish();
    report.assert_served(
        "replicated copy killed and restarted",
        Duration::from_secs(5),
    );
    report.assert_replies(8000);
    // Reads that met the empty copy moved on to the next.
    assert!(route_stat(port, "users", "failovers") > 0);
    assert_eq!(
        route_stat(port, "users", "disagreements"),
        0,
        "all_initial compares nothing"
    );
}

#[test]
fn a_replicated_copy_that_stops_answering_costs_one_timeout_then_none() {
    // Copy c accepts connections and never answers; with auto_eject_hosts its pool takes it
    // out at the first timeout, and reads spread to it move on to b.
    let rig = RouteRig::new(&["b"]);
    let deaf = Deaf::start();
    let port = free_port();
    let routes = format!(
        r#"
[pools.c]
servers = ["{}"]
timeout = 300
auto_eject_hosts = true
server_failure_limit = 1

[routes.users]
type = "replicated"
listen = "127.0.0.1:{port}"
copies = ["b", "c"]
write = "all_initial"
spread_reads = true
"#,
        deaf.server()
    );
    let (_path, proxy) = rig.start(&rig.file(&routes), port, &[]);
    let mut c = proxy.client();
    // Written on b directly: c never holds anything.
    let pairs = key_values("stall", 60);
    for (k, v) in &pairs {
        rig.mc("b").client().set(k, v.as_bytes());
    }
    let mut slowest = Vec::new();
    for (k, v) in &pairs {
        let t = Instant::now();
        assert_eq!(c.get(k), Some(v.clone().into_bytes()), "get {k}");
        slowest.push((t.elapsed(), k.clone()));
    }
    slowest.sort();
    slowest.reverse();
    eprintln!("slowest reads: {:?}", &slowest[..4]);
    // One read may wait for the timeout (300 ms); none waits longer, no other waits at all.
    assert!(
        slowest[0].0 < Duration::from_millis(800),
        "{:?}",
        &slowest[..4]
    );
    assert!(
        slowest[1].0 < Duration::from_millis(150),
        "more than one read waited for the stalled copy: {:?}",
        &slowest[..4]
    );
    assert!(
        deaf.accepted() > 0,
        "no read or write ever went to the stalled copy"
    );
    // Writes are the designated copy's: answered at once.
    let t = Instant::now();
    write_all(port, &key_values("stall-w", 50));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "writes took {:?}",
        t.elapsed()
    );
}

fn replicated_rig(routes: &str, pools: &[&str]) -> (RouteRig, u16, Proxy) {
    let rig = RouteRig::new(pools);
    let port = free_port();
    let (_, proxy) = rig.start(
        &rig.file(&routes.replace("PORT", &port.to_string())),
        port,
        &[],
    );
    (rig, port, proxy)
}

#[test]
fn all_sync_writes_answer_the_worst_reply_and_count_disagreements() {
    let (mut rig, port, proxy) = replicated_rig(
        r#"
[routes.users]
type = "replicated"
listen = "127.0.0.1:PORT"
copies = ["b", "c"]
write = "all_sync"
"#,
        &["b", "c"],
    );
    let mut c = proxy.client();
    let disagreements = || route_stat(port, "users", "disagreements");

    // Checked traffic (values up to 36 KB, pipelined) through healthy copies: every reply
    // right, both copies equal, nothing counted.
    let own = own_keys("sync", 3, 7);
    let load = Traffic::clients(own.clone()).start(&proxy);
    load.wait_replies(2000, "all_sync traffic");
    load.finish();
    for k in own.iter().flat_map(|keys| &keys[..keys.len() - 1]) {
        let on_b = direct_item(rig.mc("b"), k);
        assert!(on_b.starts_with("VALUE "), "{k} not on b");
        assert_eq!(
            direct_item(rig.mc("c"), k),
            on_b,
            "{k} differs between copies"
        );
    }
    assert_eq!(disagreements(), 0);

    // Agreeing copies: their reply, nothing counted.
    c.expect("add both 0 0 1\r\n1\r\n", "STORED\r\n");
    c.expect("add both 0 0 1\r\n2\r\n", "NOT_STORED\r\n");
    c.expect("delete both\r\n", "DELETED\r\n");
    c.expect("delete both\r\n", "NOT_FOUND\r\n");
    assert_eq!(disagreements(), 0);

    // `add` of a key only the second copy holds: b stores, c refuses → NOT_STORED.
    rig.mc("c").client().set("on-c", b"c-value");
    c.expect("add on-c 0 0 5\r\nadded\r\n", "NOT_STORED\r\n");
    assert_eq!(disagreements(), 1);
    assert_eq!(rig.mc("b").client().get("on-c"), Some(b"added".to_vec()));
    assert_eq!(rig.mc("c").client().get("on-c"), Some(b"c-value".to_vec()));
    // Only the designated copy holds it: the refusal is the designated copy's this time.
    rig.mc("b").client().set("on-b", b"b-value");
    c.expect("add on-b 0 0 5\r\nadded\r\n", "NOT_STORED\r\n");
    assert_eq!(disagreements(), 2);
    // `replace` and `delete` of a key one copy lacks: the refusal wins.
    rig.mc("c").client().set("only-c", b"x");
    c.expect("replace only-c 0 0 1\r\ny\r\n", "NOT_STORED\r\n");
    c.expect("delete only-c\r\n", "NOT_FOUND\r\n");
    assert_eq!(disagreements(), 4);
    assert_eq!(rig.mc("c").client().get("only-c"), None);
    // Meta: `ms … MA` (append) with the key on one copy only → NS.
    rig.mc("b").client().set("meta-b", b"m");
    let (line, _) = meta(&mut c, "ms meta-b 1 MA\r\nz\r\n");
    assert_eq!(line, "NS\r\n");
    assert_eq!(disagreements(), 5);
    // incr on copies that do not agree: the designated copy's number, counted.
    rig.mc("b").client().set("n", b"10");
    rig.mc("c").client().set("n", b"20");
    c.expect("incr n 1\r\n", "11\r\n");
    assert_eq!(disagreements(), 6);
    assert_eq!(rig.mc("c").client().get("n"), Some(b"21".to_vec()));
    // noreply writes answer nothing, and reach both copies.
    c.send("set quiet 0 0 2 noreply\r\nqq\r\nadd on-c 0 0 1 noreply\r\nx\r\n");
    c.expect("get quiet\r\n", value_reply("quiet", "qq"));
    assert_eq!(rig.holders("quiet"), ["b", "c"]);

    // A copy down: its failure is the worst reply — writes cannot succeed while it is down.
    rig.kill("c");
    let reply = c.call(set_request("down", "v"));
    assert!(
        reply.starts_with("SERVER_ERROR"),
        "set with copy c down answered {reply:?}"
    );
    let reply = c.call("add on-b 0 0 1\r\nx\r\n");
    assert!(
        reply.starts_with("SERVER_ERROR"),
        "a failure beats a refusal: add answered {reply:?}"
    );
    // It comes back: writes succeed again, on both copies.
    rig.restart("c");
    let mut n = 0;
    poll("a write to succeed once copy c is back", WAIT, || {
        n += 1;
        match c.call(set_request(&format!("back{n}"), "v")) {
            r if r == "STORED\r\n" => Ok(()),
            r => Err(r),
        }
    });
    assert_eq!(rig.holders(&format!("back{n}")), ["b", "c"]);
}

#[test]
fn miss_failover_reads_the_next_copy_after_a_miss_and_failover_answers_the_miss() {
    let (mut rig, port, proxy) = replicated_rig(
        r#"
[routes.front]
type = "prefix"
listen = "127.0.0.1:PORT"
prefixes = { "mf:" = "mf", "f:" = "f" }
default = "f"

[routes.mf]
type = "replicated"
copies = ["b", "c", "d"]
read = "miss_failover"

[routes.f]
type = "replicated"
copies = ["b", "c", "d"]
read = "failover"
"#,
        &["b", "c", "d"],
    );
    let mut c = proxy.client();
    for k in ["mf:k", "f:k"] {
        rig.mc("c").client().set(k, b"second");
    }
    assert_eq!(c.get("mf:k"), Some(b"second".to_vec()), "miss_failover get");
    assert_eq!(
        c.get("f:k"),
        None,
        "failover: the designated copy's miss is the answer"
    );
    assert_eq!(
        meta(&mut c, "mg mf:k v\r\n"),
        ("VA 6\r\n".to_string(), Some(b"second".to_vec())),
        "miss_failover mg"
    );
    assert_eq!(meta(&mut c, "mg f:k v\r\n").0, "EN\r\n", "failover mg");
    assert_eq!(
        c.call("get f:k mf:k nothing mf:nothing\r\n"),
        format!("{}END\r\n", value_item("mf:k", "second")),
        "a multi-get over both routes"
    );
    let stats = route_stats(port);
    assert!(stats["mf:failovers"] >= 2, "{stats:?}");
    assert_eq!(stats["f:failovers"], 0, "{stats:?}");

    // A miss from a working copy beats a later error: d is down, b and c miss.
    rig.kill("d");
    assert_eq!(c.call("get mf:absent\r\n"), "END\r\n");
    assert_eq!(meta(&mut c, "mg mf:absent v\r\n").0, "EN\r\n");
    // failover moves on after an error: with b down, c answers.
    rig.kill("b");
    assert_eq!(
        c.get("f:k"),
        Some(b"second".to_vec()),
        "failover after an error"
    );
    assert_eq!(c.get("mf:k"), Some(b"second".to_vec()));
}

#[test]
fn compare_and_swap_uses_the_designated_copy_and_its_success_deletes_the_others() {
    let (rig, _port, proxy) = replicated_rig(
        r#"
[routes.users]
type = "replicated"
listen = "127.0.0.1:PORT"
copies = ["b", "c"]
spread_reads = true
"#,
        &["b", "c"],
    );
    let mut c = proxy.client();
    // The copies' CAS uniques differ: c has counted more writes.
    for i in 0..50 {
        rig.mc("c").client().set(&format!("bump{i}"), b"x");
    }
    // Keys whose spread reads start at c: a plain get answers c's value.
    let mut spread_to_c = Vec::new();
    for i in 0..40 {
        let k = format!("cas:{i}");
        rig.mc("b").client().set(&k, b"on-b");
        rig.mc("c").client().set(&k, b"on-c");
        if c.get(&k) == Some(b"on-c".to_vec()) {
            spread_to_c.push(k);
        }
    }
    assert!(
        (5..35).contains(&spread_to_c.len()),
        "spread_reads sent {} of 40 reads to the second copy",
        spread_to_c.len()
    );
    let unique = |reply: &str| -> u64 {
        reply
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(4))
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| panic!("no CAS unique in {reply:?}"))
    };
    for k in &spread_to_c {
        // gets reads the designated copy.
        let via = c.call(format!("gets {k}\r\n"));
        let on_b = rig.mc("b").client().call(format!("gets {k}\r\n"));
        assert_eq!(
            via, on_b,
            "gets {k} through memroute is not the designated copy's"
        );
        let on_c = rig.mc("c").client().call(format!("gets {k}\r\n"));
        assert_ne!(
            unique(&on_b),
            unique(&on_c),
            "uniques of {k} equal on both copies"
        );
        // mg with c too.
        let (line, data) = meta(&mut c, &format!("mg {k} c v\r\n"));
        assert_eq!(data.as_deref(), Some(&b"on-b"[..]), "mg {k} c v: {line:?}");
        assert_eq!(line, format!("VA 4 c{}\r\n", unique(&on_b)));
    }
    let k = &spread_to_c[0];
    let b_unique = unique(&rig.mc("b").client().call(format!("gets {k}\r\n")));
    let c_unique = unique(&rig.mc("c").client().call(format!("gets {k}\r\n")));
    // c's unique means nothing to the designated copy.
    c.expect(format!("cas {k} 0 0 3 {c_unique}\r\nbad\r\n"), "EXISTS\r\n");
    assert_eq!(rig.mc("b").client().get(k), Some(b"on-b".to_vec()));
    // b's succeeds; the other copy's stale value then goes.
    c.expect(format!("cas {k} 0 0 3 {b_unique}\r\nnew\r\n"), "STORED\r\n");
    assert_eq!(rig.mc("b").client().get(k), Some(b"new".to_vec()));
    poll(
        "the other copy's value deleted after a cas",
        WAIT,
        || match rig.mc("c").client().get(k) {
            None => Ok(()),
            Some(v) => Err(text(&v)),
        },
    );
    // A read starting at the emptied copy misses (failover: a miss is an answer) rather
    // than serve the stale value; the designated copy's gets has the new one.
    assert_eq!(c.get(k), None, "read after cas, spread to the emptied copy");
    assert_eq!(
        c.call(format!("gets {k}\r\n")),
        rig.mc("b").client().call(format!("gets {k}\r\n"))
    );
    // Meta compare-and-swap alike.
    let k = &spread_to_c[1];
    let b_unique = unique(&rig.mc("b").client().call(format!("gets {k}\r\n")));
    let (line, _) = meta(&mut c, &format!("ms {k} 2 C{b_unique}\r\nms\r\n"));
    assert_eq!(line, "HD\r\n");
    assert_eq!(rig.mc("b").client().get(k), Some(b"ms".to_vec()));
    poll(
        "the other copy's value deleted after ms C",
        WAIT,
        || match rig.mc("c").client().get(k) {
            None => Ok(()),
            Some(v) => Err(text(&v)),
        },
    );
}

// ---------------------------------------------------------------------------------------
// 3. Gutter
// ---------------------------------------------------------------------------------------

#[test]
fn gutter_takes_over_a_dead_primary_with_capped_ttls_and_gives_back_when_it_returns() {
    let mut rig = RouteRig::new(&["p", "g"]);
    let port = free_port();
    let routes = format!(
        r#"
[routes.guarded]
type = "gutter"
listen = "127.0.0.1:{port}"
primary = "p"
gutter = "g"
failover_ttl = "60s"
"#
    );
    let (_path, proxy) = rig.start(&rig.file(&routes), port, &[]);
    let mut c = proxy.client();
    let failovers = || route_stat(port, "guarded", "failovers");

    // Healthy primary: writes land there; a miss there is the answer, though the gutter
    // holds the key.
    c.set("healthy", b"h");
    assert_eq!(rig.holders("healthy"), ["p"]);
    rig.mc("g").client().set("gutter-only", b"stale");
    assert_eq!(
        c.get("gutter-only"),
        None,
        "a miss on a healthy primary went to the gutter"
    );
    assert_eq!(meta(&mut c, "mg gutter-only v\r\n").0, "EN\r\n");
    assert_eq!(
        c.call("get healthy gutter-only\r\n"),
        format!("{}END\r\n", value_item("healthy", "h"))
    );
    assert_eq!(failovers(), 0);

    // The primary dies: writes go to the gutter with their TTL capped at 60 s.
    let p_port = rig.kill("p");
    c.expect("set no-ttl 0 0 1\r\n1\r\n", "STORED\r\n");
    c.expect("set long-ttl 0 3600 1\r\n2\r\n", "STORED\r\n");
    c.expect("set short-ttl 0 10 1\r\n3\r\n", "STORED\r\n");
    assert_eq!(meta(&mut c, "ms meta-no-ttl 1\r\n4\r\n").0, "HD\r\n");
    assert_eq!(meta(&mut c, "ms meta-long 1 T9999\r\n5\r\n").0, "HD\r\n");
    for (key, value, most) in [
        ("no-ttl", "1", 60),
        ("long-ttl", "2", 60),
        ("short-ttl", "3", 10),
        ("meta-no-ttl", "4", 60),
        ("meta-long", "5", 60),
    ] {
        let (ttl, v) = direct_ttl(rig.mc("g"), key)
            .unwrap_or_else(|| panic!("{key} written with the primary down is not in the gutter"));
        assert_eq!(v, value.as_bytes(), "{key} in the gutter");
        assert!(
            (most - 5..=most).contains(&ttl),
            "{key} in the gutter has TTL {ttl}, expected at most {most}"
        );
        // Reads find it through memroute.
        assert_eq!(c.get(key), Some(value.as_bytes().to_vec()), "get {key}");
    }
    assert_eq!(
        c.call("get healthy no-ttl long-ttl\r\n"),
        format!(
            "{}{}END\r\n",
            value_item("no-ttl", "1"),
            value_item("long-ttl", "2")
        ),
        "a multi-get with the primary down reads the gutter (healthy was only on the primary)"
    );
    let during = failovers();
    assert!(
        during >= 10,
        "failovers {during} after 10+ requests failed over"
    );
    // noreply too.
    c.send("set quiet 0 7200 2 noreply\r\nqq\r\n");
    c.expect("get quiet\r\n", value_reply("quiet", "qq"));
    let (ttl, _) = direct_ttl(rig.mc("g"), "quiet").expect("quiet in the gutter");
    assert!(
        (55..=60).contains(&ttl),
        "noreply set in the gutter: TTL {ttl}"
    );
    // touch too.
    c.expect("touch no-ttl 7200\r\n", "TOUCHED\r\n");
    let (ttl, _) = direct_ttl(rig.mc("g"), "no-ttl").expect("no-ttl in the gutter");
    assert!((55..=60).contains(&ttl), "touched in the gutter: TTL {ttl}");
    // A delete that fails on the primary deletes in the gutter.
    c.expect("delete short-ttl\r\n", "DELETED\r\n");
    assert_eq!(direct_ttl(rig.mc("g"), "short-ttl"), None);

    // The primary comes back (empty): requests go back to it.
    rig.restart("p");
    let mut n = 0;
    poll("a write to land on the returned primary", WAIT, || {
        n += 1;
        let k = format!("back{n}");
        c.set(&k, b"b");
        match rig.holders(&k).as_slice() {
            [p] if p == "p" => Ok(()),
            other => Err(format!("{k} held by {other:?}")),
        }
    });
    let settled = failovers();
    for i in 0..20 {
        let k = format!("after{i}");
        c.set(&k, b"a");
        assert_eq!(
            rig.holders(&k),
            ["p"],
            "{k} written after the primary returned"
        );
    }
    // The gutter's values are not read while the primary answers (a miss there is final).
    assert_eq!(
        c.get("no-ttl"),
        None,
        "read the gutter with the primary back (port {p_port})"
    );
    assert_eq!(failovers(), settled, "failovers with a healthy primary");
}

#[test]
fn gutter_takes_over_a_primary_that_times_out() {
    let rig = RouteRig::new(&["g"]);
    let deaf = Deaf::start();
    let port = free_port();
    let routes = format!(
        r#"
{}
[routes.guarded]
type = "gutter"
listen = "127.0.0.1:{port}"
primary = "p"
gutter = "g"
failover_ttl = "30s"
"#,
        target_pool("p", &[deaf.server()], "")
    );
    let (_path, proxy) = rig.start(&rig.file(&routes), port, &[]);
    let mut c = proxy.client();
    let t = Instant::now();
    c.expect("set slow 0 0 4\r\nslow\r\n", "STORED\r\n");
    let took = t.elapsed();
    assert!(
        (Duration::from_millis(250)..Duration::from_millis(1500)).contains(&took),
        "a write failed over after {took:?} (timeout 300 ms)"
    );
    let (ttl, v) = direct_ttl(rig.mc("g"), "slow").expect("the write in the gutter");
    assert_eq!(v, b"slow");
    assert!(
        (25..=30).contains(&ttl),
        "TTL {ttl} in the gutter, cap 30 s"
    );
    assert_eq!(c.get("slow"), Some(b"slow".to_vec()));
    assert_eq!(
        meta(&mut c, "mg slow v\r\n"),
        ("VA 4\r\n".to_string(), Some(b"slow".to_vec()))
    );
    assert!(deaf.accepted() > 0);
    assert!(route_stat(port, "guarded", "failovers") >= 3);
}

// ---------------------------------------------------------------------------------------
// 4. Shadow
// ---------------------------------------------------------------------------------------

/// Checked batches each shadow run takes: at a few hundred batches a second, long enough
/// for a stalled shadow to fill memroute's queues towards it.
const SHADOW_BATCHES: u64 = 1500;

/// Runs the same checked traffic (3 clients, [`SHADOW_BATCHES`] batches in all) through a
/// shadow route whose shadow pool is `shadow` (a server entry) with requests timing out
/// after 10 s (a stall outlasts the run); memroute on one worker thread, so every copy
/// goes through one shadow queue. Returns the report and the route's counters.
fn shadowed_traffic(shadow: &str, tag: &str) -> (TrafficReport, HashMap<String, u64>) {
    let mut rig = RouteRig::new(&["m"]);
    rig.top = "threads = 1".to_string();
    let port = free_port();
    let routes = format!(
        r#"
[pools.s]
servers = ["{shadow}"]
timeout = 10000

[routes.shadowed]
type = "shadow"
listen = "127.0.0.1:{port}"
primary = "m"
shadow = "s"
fraction = 1.0
"#
    );
    let (_path, proxy) = rig.start(&rig.file(&routes), port, &[]);
    let pre = Arc::new(key_values(&format!("{tag}:pre"), 100));
    write_all(port, &pre);
    let started = Instant::now();
    let load = Traffic::clients(own_keys(tag, 3, 7))
        .reading(pre)
        .start(&proxy);
    load.wait_batches(SHADOW_BATCHES, tag);
    let report = load.finish();
    eprintln!(
        "{tag}: {} batches in {:?}",
        report.batches,
        started.elapsed()
    );
    report.assert_served(tag, Duration::from_secs(5));
    (report, route_stats(port))
}

#[test]
fn a_stalled_or_dead_shadow_changes_nothing_for_the_clients() {
    let healthy_mc = Memcached::start();
    let (healthy, hs) = shadowed_traffic(&healthy_mc.server(1), "healthy");
    assert!(hs["shadowed:shadow_sends"] > 0, "{hs:?}");
    assert_eq!(hs["shadowed:shadow_drops"], 0, "healthy shadow: {hs:?}");
    assert_eq!(hs["shadowed:shadow_errors"], 0, "healthy shadow: {hs:?}");
    assert!(
        mc_stat(&healthy_mc, "cmd_set") > 0,
        "the healthy shadow got no copy"
    );

    let deaf = Deaf::start();
    let (stalled, ss) = shadowed_traffic(&deaf.server(), "stalled");
    assert!(
        deaf.accepted() > 0,
        "the stalled shadow was never connected to"
    );

    let dead_port = free_port();
    let (dead, ds) = shadowed_traffic(&format!("127.0.0.1:{dead_port}:1"), "dead");
    eprintln!("healthy: {hs:?}\nstalled: {ss:?}\ndead: {ds:?}");

    let bound = healthy.worst * 2 + Duration::from_millis(200);
    for (what, r) in [("stalled", &stalled), ("dead", &dead)] {
        eprintln!(
            "{what} shadow: slowest batch {:?} (healthy {:?}, bound {bound:?})",
            r.worst, healthy.worst
        );
        assert!(
            r.worst < bound,
            "with a {what} shadow the slowest batch took {:?}, healthy {:?}",
            r.worst,
            healthy.worst
        );
        assert_eq!((r.errors, r.broken), (0, 0));
    }
    // A stalled shadow fills the queue: copies are dropped, and counted.
    assert!(ss["shadowed:shadow_drops"] > 0, "stalled shadow: {ss:?}");
    // A dead one fails every copy at once: counted as failed, none dropped.
    assert!(ds["shadowed:shadow_errors"] > 0, "dead shadow: {ds:?}");
    assert_eq!(
        ds["shadowed:shadow_errors"], ds["shadowed:shadow_sends"],
        "every copy to a dead shadow fails: {ds:?}"
    );
}

#[test]
fn a_healthy_shadow_gets_exactly_the_shadowed_keys_the_same_every_run() {
    let rig = RouteRig::new(&["m", "s"]);
    let port = free_port();
    let routes = format!(
        r#"
[routes.front]
type = "prefix"
listen = "127.0.0.1:{port}"
prefixes = {{ "all:" = "everything", "half:" = "half" }}
default = "m"

[routes.everything]
type = "shadow"
primary = "m"
shadow = "s"
fraction = 1.0

[routes.half]
type = "shadow"
primary = "m"
shadow = "s"
fraction = 0.5
"#
    );
    let contents = rig.file(&routes);
    let all = key_values("all", 200);
    let half = key_values("half", 400);
    let plain = key_values("plain", 100);
    let s = rig.mc("s");

    // Which half-keys memroute says it copies.
    let keys: Vec<&str> = half.iter().map(|(k, _)| k.as_str()).collect();
    let path = rig.files.write("memroute.toml", &contents);
    let explained = run_route(&["--config", path.to_str().unwrap()], &keys);
    let said: BTreeSet<String> = explained
        .lines()
        .filter(|l| l.starts_with("listener front: ") && l.contains("; copied to pool s"))
        .map(|l| {
            l["listener front: ".len()..]
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();

    let mut runs = Vec::new();
    for run in 0..2 {
        let (_path, proxy) = rig.start(&contents, port, &[]);
        let sets_before = mc_stat(s, "cmd_set");
        write_all(port, &all);
        write_all(port, &half);
        write_all(port, &plain);
        let in_shadow = |pairs: &[(String, String)]| -> BTreeSet<String> {
            let mut d = s.client();
            pairs
                .iter()
                .filter(|(k, v)| match d.get(k) {
                    None => false,
                    Some(got) => {
                        assert_eq!(got, v.as_bytes(), "{k}'s value in the shadow");
                        true
                    }
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        // Every copy sent arrives: as many sets as all the all-keys and about half the
        // half-keys.
        let sets = poll("the shadow's copies to arrive", WAIT, || {
            let got = in_shadow(&all);
            match got.len() == all.len() {
                true => Ok(mc_stat(s, "cmd_set") - sets_before),
                false => Err(format!(
                    "{} of {} all-keys in the shadow",
                    got.len(),
                    all.len()
                )),
            }
        });
        let copied = in_shadow(&half);
        assert_eq!(
            in_shadow(&plain),
            BTreeSet::new(),
            "unshadowed keys in the shadow"
        );
        let share = copied.len() as f64 / half.len() as f64;
        assert!(
            (0.4..=0.6).contains(&share),
            "fraction 0.5 copied {} of {} keys",
            copied.len(),
            half.len()
        );
        assert_eq!(
            sets,
            (all.len() + copied.len()) as u64,
            "sets the shadow received (run {run})"
        );
        assert_eq!(copied, said, "copied keys vs `memroute route` (run {run})");
        let stats = route_stats(port);
        assert_eq!(stats["everything:shadow_drops"], 0);
        assert_eq!(stats["half:shadow_drops"], 0);
        runs.push(copied);
        drop(proxy);
        s.client().expect("flush_all\r\n", "OK\r\n");
    }
    assert_eq!(runs[0], runs[1], "the shadowed keys differ between runs");
}

// ---------------------------------------------------------------------------------------
// 5. Reload adding routes
// ---------------------------------------------------------------------------------------

#[test]
fn a_reload_adding_routes_under_checked_traffic_serves_them_without_client_errors() {
    let mut rig = RouteRig::new(&["m", "b", "c"]);
    let admin = free_port();
    rig.top = format!("threads = 2\nadmin = \"127.0.0.1:{admin}\"");
    let port = free_port();
    let front = free_port();
    // Pools only: m listens; b and c wait for routes.
    let pools_only = format!(
        "{}\n\n[pools.main]\nlisten = \"127.0.0.1:{port}\"\nservers = [\"{}\"]\ntimeout = 300\n\n{}{}",
        rig.top,
        rig.mc("m").server(1),
        target_pool("b", &[rig.mc("b").server(1)], ""),
        target_pool("c", &[rig.mc("c").server(1)], ""),
    );
    let path = rig.files.write("memroute.toml", &pools_only);
    let proxy = Proxy::start_config(&path, port, &[]);
    wait_for_port_only(admin);
    let pre = Arc::new(key_values("user:pre", 200));
    write_all(port, &pre);
    let mut sc = proxy.client();
    let g0 = generation(&mut sc);
    let load = Traffic::clients(own_keys("user:own", 3, 7))
        .reading(pre.clone())
        .start(&proxy);
    load.wait_replies(1000, "before the reload");

    // A file whose routes refer to each other in a circle is refused; nothing changes.
    let circle = format!(
        "{pools_only}\n[routes.x]\ntype = \"prefix\"\nlisten = \"127.0.0.1:{front}\"\n\
         prefixes = {{ \"p:\" = \"y\" }}\ndefault = \"main\"\n\
         [routes.y]\ntype = \"shadow\"\nprimary = \"x\"\nshadow = \"b\"\n"
    );
    replace_file(&path, &circle);
    load.wait_replies(1000, "after the circular file");
    assert_eq!(
        generation(&mut sc),
        g0,
        "a circular route config was applied"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", front)).is_err(),
        "a refused file's listener opened"
    );

    let with_routes = format!(
        r#"{pools_only}
[routes.front]
type = "prefix"
listen = "127.0.0.1:{front}"
prefixes = {{ "user:" = "users" }}
default = "main"

[routes.users]
type = "replicated"
copies = ["b", "c"]
"#
    );
    replace_file(&path, &with_routes);
    let g1 = wait_generation(&mut sc, g0);
    assert_eq!(g1, g0 + 1);
    wait_for_port_only(front);
    load.wait_replies(1500, "after the reload");

    // The new listener routes: user: keys to both copies, the rest to main.
    let mut f = Client::connect(front);
    f.set("user:new", b"replicated");
    assert_eq!(rig.holders("user:new"), ["b", "c"]);
    f.set("plain:new", b"main");
    assert_eq!(rig.holders("plain:new"), ["m"]);
    assert_eq!(f.get("user:new"), Some(b"replicated".to_vec()));
    let mixed: Vec<(String, String)> = key_values("new", 200)
        .into_iter()
        .enumerate()
        .map(|(i, (k, v))| (format!("{}{k}", ["user:", "x:"][i % 2]), v))
        .collect();
    write_all(front, &mixed);
    assert_eq!(read_all(front, &mixed), Vec::<String>::new());
    for (k, _) in mixed.iter().take(20) {
        let expected: &[&str] = match k.starts_with("user:") {
            true => &["b", "c"],
            false => &["m"],
        };
        assert_eq!(rig.holders(k), expected, "{k} written on the new listener");
    }
    // The old listener is still pool main alone.
    let mut old = Client::connect(port);
    old.set("user:old", b"main");
    assert_eq!(rig.holders("user:old"), ["m"]);
    assert_eq!(read_all(port, &pre), Vec::<String>::new());

    // `memroute route` explains a key through the new routes, from the file and live.
    let expected = format!(
        "listener front: user:42 -> route front (prefix \"user:\") -> route users \
         (replicated, writes all_sync, reads failover) -> pool b: {}, pool c: {}",
        rig.mc("b").address(),
        rig.mc("c").address()
    );
    let from_file = run_route(&["--config", path.to_str().unwrap()], &["user:42"]);
    let live = run_route(&["--admin", &format!("127.0.0.1:{admin}")], &["user:42"]);
    for (what, out) in [("--config", &from_file), ("--admin", &live)] {
        assert!(
            out.lines().any(|l| l == expected),
            "memroute route {what}: {out}\nexpected a line {expected:?}"
        );
        assert!(
            out.lines()
                .any(|l| l == format!("pool main: user:42 -> {}", rig.mc("m").address())),
            "memroute route {what}: {out}"
        );
    }

    // `stats routes` answers on every listener, the old pool listener too.
    rig.mc("c").client().set("user:disagree", b"c");
    f.expect("add user:disagree 0 0 1\r\nb\r\n", "NOT_STORED\r\n");
    for p in [port, front] {
        assert_eq!(route_stat(p, "users", "disagreements"), 1, "on port {p}");
    }
    // A later reload that keeps the routes' names keeps their counters.
    let miss_failover = with_routes.replace(
        "copies = [\"b\", \"c\"]",
        "copies = [\"b\", \"c\"]\nread = \"miss_failover\"",
    );
    replace_file(&path, &miss_failover);
    wait_generation(&mut sc, g1);
    assert_eq!(route_stat(front, "users", "disagreements"), 1);
    load.wait_replies(1000, "after the second reload");

    let report = load.finish();
    report.assert_served("reload adding routes", Duration::from_secs(5));
    // The traffic on the old listener kept going to main only.
    assert_eq!(rig.holders("user:own:t0:0"), ["m"]);
}

#[test]
fn a_reload_changing_routes_under_checked_traffic_on_a_route_listener() {
    let rig = RouteRig::new(&["m", "b", "c", "d"]);
    let port = free_port();
    let routes = |copies: &str, more: &str| {
        format!(
            r#"
[routes.front]
type = "prefix"
listen = "127.0.0.1:{port}"
prefixes = {{ "user:" = "users"{more} }}
default = "m"

[routes.users]
type = "replicated"
copies = [{copies}]
"#
        )
    };
    let first = rig.file(&routes(r#""b", "c""#, ""));
    let (path, proxy) = rig.start(&first, port, &[]);
    let pre = Arc::new(key_values("user:pre", 200));
    write_all(port, &pre);
    let mut sc = proxy.client();
    let g0 = generation(&mut sc);
    let load = Traffic::clients(own_keys("user:own", 3, 7))
        .reading(pre.clone())
        .start(&proxy);
    load.wait_replies(1000, "before the reload");

    // A third copy: the designated copy stays b, so every key still reads back.
    replace_file(&path, &rig.file(&routes(r#""b", "c", "d""#, "")));
    let g1 = wait_generation(&mut sc, g0);
    load.wait_replies(2000, "after adding a copy");
    let mut c = Client::connect(port);
    c.set("user:three", b"3");
    assert_eq!(rig.holders("user:three"), ["b", "c", "d"]);
    // A longer prefix, which the traffic's keys do not match, to another pool.
    replace_file(
        &path,
        &rig.file(&routes(r#""b", "c", "d""#, r#", "user:main:" = "m""#)),
    );
    wait_generation(&mut sc, g1);
    c.set("user:main:1", b"m");
    assert_eq!(rig.holders("user:main:1"), ["m"]);
    load.wait_replies(1000, "after adding a prefix");
    load.finish()
        .assert_served("reload changing routes", Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------
// 6. --check and configs refused at start
// ---------------------------------------------------------------------------------------

#[test]
fn check_prints_the_route_tree() {
    let files = common::config::TempFiles::new();
    let pools: String = PREFIX_POOLS
        .iter()
        .enumerate()
        .map(|(i, n)| target_pool(n, &[format!("127.0.0.1:{}:1", 11300 + i)], ""))
        .collect();
    let path = files.write(
        "memroute.toml",
        &format!("{pools}\n{}", prefix_routes(22999)),
    );
    let out = run_memroute(&["--config", path.to_str().unwrap(), "--check"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "--check failed: {}",
        text(&out.stderr)
    );
    let tree = "\
route front (prefix, listen 127.0.0.1:22999)
  \"user:vip:\" -> pool v
  \"feed:\" -> route shadowed
  \"sess:\" -> route guarded
  \"user:\" -> route users
  default -> pool a
route guarded (gutter): failover_ttl 60s
  primary -> pool p
  gutter -> pool g
route shadowed (shadow): 100.0% of keys
  primary -> pool a
  shadow -> pool s
route users (replicated): writes all_sync, reads failover
  copy -> pool u1 (designated)
  copy -> pool u2
configuration ok
";
    assert!(
        stdout.ends_with(tree),
        "--check printed:\n{stdout}\nexpected it to end with:\n{tree}"
    );
    assert!(
        stdout.contains("pool u2: listen none (a route target)"),
        "{stdout}"
    );
}

#[test]
fn invalid_route_configs_are_refused_at_start_naming_the_key() {
    let m = Memcached::start();
    let files = common::config::TempFiles::new();
    let port = free_port();
    let base = format!(
        "[pools.a]\nlisten = \"127.0.0.1:{port}\"\nservers = [\"{}\"]\n{}{}",
        m.server(1),
        target_pool("b", &[m.server(1)], ""),
        target_pool("c", &[m.server(1)], ""),
    );
    let cases: &[(&str, String, &[&str])] = &[
        (
            "unknown pool in prefixes",
            "[routes.front]\ntype = \"prefix\"\nprefixes = { \"u:\" = \"nope\" }\ndefault = \"a\"\n"
                .to_string(),
            &["routes.front.prefixes", "nope"],
        ),
        (
            "unknown default",
            "[routes.front]\ntype = \"prefix\"\ndefault = \"missing\"\n".to_string(),
            &["routes.front.default", "missing"],
        ),
        (
            "unknown copy",
            "[routes.r]\ntype = \"replicated\"\ncopies = [\"b\", \"zz\"]\n".to_string(),
            &["routes.r.copies", "zz"],
        ),
        (
            "unknown gutter",
            "[routes.g]\ntype = \"gutter\"\nprimary = \"b\"\ngutter = \"gg\"\n".to_string(),
            &["routes.g.gutter", "gg"],
        ),
        (
            "a circle",
            "[routes.x]\ntype = \"prefix\"\nprefixes = { \"p:\" = \"y\" }\ndefault = \"a\"\n\
             [routes.y]\ntype = \"shadow\"\nprimary = \"x\"\nshadow = \"c\"\n"
                .to_string(),
            &["routes.x", "circle"],
        ),
        (
            "a key of another type",
            "[routes.r]\ntype = \"gutter\"\nprimary = \"b\"\ngutter = \"c\"\ncopies = [\"b\", \"c\"]\n"
                .to_string(),
            &["routes.r.copies"],
        ),
        (
            "a listen address taken",
            format!(
                "[routes.front]\ntype = \"prefix\"\nlisten = \"127.0.0.1:{port}\"\ndefault = \"a\"\n"
            ),
            &["routes.front.listen"],
        ),
    ];
    for (what, routes, named) in cases {
        let path = files.write("bad.toml", &format!("{base}\n{routes}"));
        for check in [false, true] {
            let mut args = vec!["--config", path.to_str().unwrap()];
            if check {
                args.push("--check");
            }
            let out = run_memroute(&args);
            let stderr = text(&out.stderr);
            assert!(
                !out.status.success(),
                "{what}: memroute {args:?} succeeded; stdout {}",
                text(&out.stdout)
            );
            for word in *named {
                assert!(
                    stderr.contains(word),
                    "{what}: memroute {args:?} did not name {word:?}: {stderr}"
                );
            }
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "{what}: memroute listened with an invalid file"
        );
    }
    // The same base with a valid route starts.
    let path = files.write(
        "good.toml",
        &format!("{base}\n[routes.r]\ntype = \"replicated\"\ncopies = [\"b\", \"c\"]\n"),
    );
    let _proxy = Proxy::start_config(&path, port, &[]);
}
