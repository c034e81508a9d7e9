//! Tokyo Tyrant pools (DESIGN.md §4, issue 6) against a fake ttserver that behaves like the
//! real one: only supported commands reach it, whole and without `noreply`; everything else
//! is answered by memroute; flags are dropped unless `--preserve-flags` keeps them in values.

mod common;

use std::collections::HashMap;

use common::tyrant::FakeTyrant;
use common::{set_request_bytes, text, value_item_bytes, Client, Proxy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const UNSUPPORTED: &str = "SERVER_ERROR command not supported by tokyotyrant pool\r\n";
const META_UNSUPPORTED: &str = "SERVER_ERROR meta commands not supported by tokyotyrant pool\r\n";
const GETS_UNSUPPORTED: &str =
    "SERVER_ERROR gets not supported by tokyotyrant pool (no cas uniques)\r\n";
const FLAGS_UNSUPPORTED: &str =
    "SERVER_ERROR command not supported by tokyotyrant pool with preserve_flags\r\n";

/// The commands a Tokyo Tyrant backend may ever see from memroute.
const FORWARDABLE: &[&str] = &[
    "get",
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "delete",
    "incr",
    "decr",
    "flush_all",
];

/// Two fake ttservers and memroute in front of them as a Tokyo Tyrant pool.
fn start(extra: &[&str]) -> ([FakeTyrant; 2], Proxy) {
    let tts = [FakeTyrant::start(), FakeTyrant::start()];
    let servers: Vec<String> = tts.iter().map(|t| t.server(1)).collect();
    // The tests count the fake's connections and commands: no health checks.
    let mut flags = vec!["--protocol", "tokyotyrant", "--health-check-interval", "0s"];
    flags.extend_from_slice(extra);
    let proxy = Proxy::start(&servers, &flags);
    (tts, proxy)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Which fake holds `key` (exactly one must).
fn owner(tts: &[FakeTyrant; 2], key: &str) -> usize {
    let holders: Vec<usize> = (0..2).filter(|&i| tts[i].value(key).is_some()).collect();
    assert_eq!(holders.len(), 1, "{key} is held by {holders:?}");
    holders[0]
}

/// Sets `prefix0`, `prefix1`, … through memroute until each backend holds `n` of them;
/// returns the keys per backend.
fn keys_per_backend(
    c: &mut Client,
    tts: &[FakeTyrant; 2],
    prefix: &str,
    n: usize,
) -> [Vec<String>; 2] {
    let mut out: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for i in 0..1000u64 {
        if out.iter().all(|v| v.len() >= n) {
            return out;
        }
        // Varied suffixes: the default hash clusters keys that differ only at the end.
        let key = format!("{prefix}{:x}", (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        c.set(&key, key.as_bytes());
        let b = owner(tts, &key);
        if out[b].len() < n {
            out[b].push(key);
        } else {
            c.expect(format!("delete {key}\r\n"), "DELETED\r\n");
        }
    }
    panic!("keys {prefix}* do not spread over both backends: {out:?}");
}

fn assert_only_forwardable(tt: &FakeTyrant) {
    for cmd in tt.commands() {
        assert!(
            FORWARDABLE.contains(&cmd.as_str()),
            "the fake ttserver received {cmd:?}: {}",
            text(&tt.received())
        );
    }
    assert!(
        !contains(&tt.received(), b"noreply"),
        "noreply reached the fake ttserver: {}",
        text(&tt.received())
    );
}

#[test]
fn the_fake_ttserver_follows_the_design() {
    let tt = FakeTyrant::start();
    let mut c = Client::connect(tt.port);
    c.expect("set a 5 100 3\r\nabc\r\n", "STORED\r\n");
    // No flags, no cas column.
    c.expect("gets a\r\n", "VALUE a 0 3\r\nabc\r\nEND\r\n");
    assert_eq!(tt.value("a"), Some(b"abc".to_vec()));
    c.expect("set n 0 0 3\r\nxyz\r\n", "STORED\r\n");
    // A non-numeric value counts as 0.
    c.expect("incr n 4\r\n", "4\r\n");
    c.expect("delete n 10\r\n", "DELETED\r\n");
    c.expect("version\r\n", "VERSION 1.1.41\r\n");
    // A cas line is skipped when more bytes follow, and its data block runs as a command.
    c.expect(
        "cas a 0 0 5 1\r\nget a\r\n",
        "VALUE a 0 3\r\nabc\r\nEND\r\n",
    );
    assert_eq!(tt.connections(), 1);
    // Alone, an unsupported command closes the connection without a reply.
    c.send("touch a 10\r\n");
    c.expect_closed();
    let mut c = Client::connect(tt.port);
    c.expect("get a\r\n", "VALUE a 0 3\r\nabc\r\nEND\r\n");
    assert_eq!(tt.connections(), 2);
    assert_eq!(
        tt.commands(),
        ["set", "gets", "set", "incr", "delete", "version", "cas", "get", "touch", "get"]
    );
}

#[test]
fn supported_commands_round_trip_and_flags_read_back_as_zero() {
    let (tts, proxy) = start(&[]);
    let mut c = proxy.client();
    let [on0, on1] = keys_per_backend(&mut c, &tts, "rt:", 3);

    // Flags are dropped by ttserver, and memroute is faithful to that by default.
    c.expect(
        format!("set {} 4294967295 0 5\r\nhello\r\n", on0[0]),
        "STORED\r\n",
    );
    c.expect(format!("set {} 7 0 5\r\nworld\r\n", on1[0]), "STORED\r\n");
    assert_eq!(tts[0].value(&on0[0]), Some(b"hello".to_vec()));
    assert_eq!(tts[1].value(&on1[0]), Some(b"world".to_vec()));
    c.expect(
        format!("get {}\r\n", on0[0]),
        [value_item_bytes(&on0[0], 0, b"hello"), b"END\r\n".to_vec()].concat(),
    );
    c.expect(
        format!("get {}\r\n", on1[0]),
        [value_item_bytes(&on1[0], 0, b"world"), b"END\r\n".to_vec()].concat(),
    );

    // Multi-key get across both backends, answered in the client's key order, misses
    // skipped, a repeated key answered twice.
    let order = [
        on1[1].as_str(),
        on0[0].as_str(),
        "rt:missing",
        on1[0].as_str(),
        on0[1].as_str(),
        on1[2].as_str(),
        on0[0].as_str(),
    ];
    let mut expected = Vec::new();
    for k in order {
        let data: Vec<u8> = match k {
            k if k == on0[0] => b"hello".to_vec(),
            k if k == on1[0] => b"world".to_vec(),
            "rt:missing" => continue,
            k => k.as_bytes().to_vec(),
        };
        expected.extend(value_item_bytes(k, 0, &data));
    }
    expected.extend_from_slice(b"END\r\n");
    c.expect(format!("get {}\r\n", order.join(" ")), expected);

    // A large value, so replies span many reads.
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    c.expect(set_request_bytes(&on1[2], 3, &big), "STORED\r\n");
    c.expect(
        format!("get {}\r\n", on1[2]),
        [value_item_bytes(&on1[2], 0, &big), b"END\r\n".to_vec()].concat(),
    );

    // Storage commands on both backends.
    for (k, fresh) in [(&on0[1], "rt:new0"), (&on1[1], "rt:new1")] {
        c.expect(format!("add {k} 0 0 1\r\nx\r\n"), "NOT_STORED\r\n");
        c.expect(format!("add {fresh} 0 0 3\r\nnew\r\n"), "STORED\r\n");
        c.expect(format!("add {fresh} 0 0 3\r\nnew\r\n"), "NOT_STORED\r\n");
        c.expect("replace rt:nothing 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
        c.expect(format!("replace {k} 9 0 3\r\nmid\r\n"), "STORED\r\n");
        c.expect(format!("append {k} 9 0 4\r\n-end\r\n"), "STORED\r\n");
        c.expect(format!("prepend {k} 9 0 6\r\nstart-\r\n"), "STORED\r\n");
        c.expect("append rt:nothing 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
        c.expect("prepend rt:nothing 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
        c.expect(
            format!("get {k} {fresh}\r\n"),
            [
                value_item_bytes(k, 0, b"start-mid-end"),
                value_item_bytes(fresh, 0, b"new"),
                b"END\r\n".to_vec(),
            ]
            .concat(),
        );
        c.expect(format!("delete {fresh}\r\n"), "DELETED\r\n");
        c.expect(format!("delete {fresh}\r\n"), "NOT_FOUND\r\n");
        c.expect(format!("delete {k} 0\r\n"), "DELETED\r\n");
        c.expect(format!("get {k}\r\n"), "END\r\n");
    }
    assert_eq!(tts[0].value(&on0[1]), None);
    assert_eq!(tts[1].value(&on1[1]), None);

    // incr/decr, on both backends.
    for k in [&on0[2], &on1[2]] {
        c.expect(format!("set {k} 0 0 2\r\n10\r\n"), "STORED\r\n");
        c.expect(format!("incr {k} 5\r\n"), "15\r\n");
        c.expect(format!("decr {k} 3\r\n"), "12\r\n");
        c.expect(format!("decr {k} 100\r\n"), "0\r\n");
        // ttserver counts a non-numeric value as 0; memroute forwards its answer.
        c.expect(format!("set {k} 0 0 3\r\nabc\r\n"), "STORED\r\n");
        c.expect(format!("incr {k} 7\r\n"), "7\r\n");
    }
    c.expect("incr rt:nothing 1\r\n", "NOT_FOUND\r\n");
    c.expect("decr rt:nothing 1\r\n", "NOT_FOUND\r\n");

    // noreply variants: no reply, the effect is there, and `noreply` is not forwarded.
    let k0 = &on0[0];
    let k1 = &on1[0];
    c.send(format!(
        "set {k0} 1 0 2 noreply\r\nv0\r\n\
         set {k1} 1 0 2 noreply\r\nv1\r\n\
         add {k0} 0 0 1 noreply\r\nx\r\n\
         add rt:nr 0 0 2 noreply\r\nnr\r\n\
         replace {k1} 0 0 2 noreply\r\nw1\r\n\
         append {k0} 0 0 1 noreply\r\n>\r\n\
         prepend {k1} 0 0 1 noreply\r\n<\r\n\
         set rt:cnt 0 0 1 noreply\r\n5\r\n\
         incr rt:cnt 10 noreply\r\n\
         decr rt:cnt 3 noreply\r\n\
         delete rt:nr noreply\r\n\
         delete rt:nothing 0 noreply\r\n"
    ));
    let mut expected = [
        value_item_bytes(k0, 0, b"v0>"),
        value_item_bytes(k1, 0, b"<w1"),
        value_item_bytes("rt:cnt", 0, b"12"),
    ]
    .concat();
    expected.extend_from_slice(b"END\r\n");
    c.expect(format!("get {k0} {k1} rt:cnt rt:nr\r\n"), expected);

    // flush_all reaches every backend.
    c.expect("flush_all\r\n", "OK\r\n");
    assert_eq!((tts[0].items(), tts[1].items()), (0, 0));
    c.expect(format!("get {k0} {k1}\r\n"), "END\r\n");
    c.expect(format!("set {k0} 0 0 1\r\na\r\n"), "STORED\r\n");
    c.expect(format!("set {k1} 0 0 1\r\nb\r\n"), "STORED\r\n");
    c.expect("flush_all 0\r\n", "OK\r\n");
    assert_eq!((tts[0].items(), tts[1].items()), (0, 0));
    c.expect(format!("set {k0} 0 0 1\r\na\r\n"), "STORED\r\n");
    c.expect(format!("set {k1} 0 0 1\r\nb\r\n"), "STORED\r\n");
    c.send("flush_all noreply\r\n");
    c.expect(format!("get {k0} {k1}\r\n"), "END\r\n");
    assert_eq!((tts[0].items(), tts[1].items()), (0, 0));

    // version and stats are memroute's own.
    c.send("version\r\n");
    let version = c.read_line();
    assert!(version.starts_with(b"VERSION "), "{}", text(&version));
    assert_ne!(version, b"VERSION 1.1.41\r\n");
    assert!(c.stat("curr_connections").is_some() || c.stat("uptime").is_some());

    for tt in &tts {
        assert_only_forwardable(tt);
        assert!(tt.commands().iter().all(|c| c != "version" && c != "stats"));
        // One connection per backend, never reopened.
        assert_eq!(tt.connections(), 1, "{}", text(&tt.received()));
    }

    // quit is memroute's own too.
    c.send("quit\r\n");
    c.expect_closed();
    for tt in &tts {
        assert!(tt.commands().iter().all(|c| c != "quit"));
    }
}

/// Unsupported and invalid requests, each with memroute's own answer.
fn refused_cases(k0: &str, k1: &str) -> Vec<(String, String)> {
    let long_key = "k".repeat(251);
    let cases: Vec<(String, &str)> = vec![
        // A cas data block that ttserver would execute as a command.
        (format!("cas {k0} 0 0 5 1\r\nget x\r\n"), UNSUPPORTED),
        (format!("cas {k1} 0 0 9 1\r\nflush_all\r\n"), UNSUPPORTED),
        (format!("cas {k1} 0 0 5 1 noreply\r\nget x\r\n"), ""),
        (format!("touch {k0} 10\r\n"), UNSUPPORTED),
        (format!("touch {k1} 10 noreply\r\n"), ""),
        (format!("gat 10 {k0}\r\n"), UNSUPPORTED),
        (format!("gat 10 {k0} {k1}\r\n"), UNSUPPORTED),
        (format!("gats 10 {k1}\r\n"), UNSUPPORTED),
        (format!("gats 10 {k1} {k0}\r\n"), UNSUPPORTED),
        (format!("gets {k0}\r\n"), GETS_UNSUPPORTED),
        (format!("gets {k0} {k1}\r\n"), GETS_UNSUPPORTED),
        ("verbosity 1\r\n".into(), UNSUPPORTED),
        ("verbosity 1 noreply\r\n".into(), ""),
        ("flush_all 10\r\n".into(), UNSUPPORTED),
        ("flush_all -1\r\n".into(), UNSUPPORTED),
        ("flush_all 10 noreply\r\n".into(), ""),
        // Meta commands: refused (ttserver has none of them), but `mn`, which needs no
        // backend; malformed meta lines get memcached's errors.
        (format!("mg {k0} v\r\n"), META_UNSUPPORTED),
        (format!("mg {k0} v q\r\n"), META_UNSUPPORTED),
        (format!("ms {k0} 1 T0\r\nx\r\n"), META_UNSUPPORTED),
        (format!("md {k1}\r\n"), META_UNSUPPORTED),
        (format!("ma {k1} q\r\n"), META_UNSUPPORTED),
        (format!("me {k1}\r\n"), META_UNSUPPORTED),
        ("mn\r\n".into(), "MN\r\n"),
        (
            format!("mg {k0} v v\r\n"),
            "CLIENT_ERROR duplicate flag\r\n",
        ),
        ("mx\r\n".into(), "ERROR\r\n"),
        // Unknown words and malformed lines: memroute's own errors.
        ("bogus command\r\n".into(), "ERROR\r\n"),
        ("\r\n".into(), "ERROR\r\n"),
        ("get\r\n".into(), "ERROR\r\n"),
        (
            format!("get {long_key}\r\n"),
            "CLIENT_ERROR bad command line format\r\n",
        ),
        (
            format!("delete {k0} 10\r\n"),
            "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
        ),
        (
            format!("incr {k0} abc\r\n"),
            "CLIENT_ERROR invalid numeric delta argument\r\n",
        ),
        (
            format!("decr {k1} -1\r\n"),
            "CLIENT_ERROR invalid numeric delta argument\r\n",
        ),
        (
            format!("incr {k1} 18446744073709551616\r\n"),
            "CLIENT_ERROR invalid numeric delta argument\r\n",
        ),
        (format!("set {k0} 0 0\r\n"), "ERROR\r\n"),
    ];
    cases
        .into_iter()
        .map(|(req, reply)| (req, reply.to_string()))
        .collect()
}

#[test]
fn unsupported_commands_are_answered_by_memroute_and_never_forwarded() {
    let (tts, proxy) = start(&[]);
    let mut c = proxy.client();
    let [on0, on1] = keys_per_backend(&mut c, &tts, "un:", 1);
    let (k0, k1) = (on0[0].as_str(), on1[0].as_str());
    let both = [
        value_item_bytes(k0, 0, k0.as_bytes()),
        value_item_bytes(k1, 0, k1.as_bytes()),
        b"END\r\n".to_vec(),
    ]
    .concat();
    c.expect(format!("get {k0} {k1}\r\n"), both.clone());
    let conns: Vec<usize> = tts.iter().map(|t| t.connections()).collect();
    assert_eq!(conns, [1, 1]);
    let before: Vec<Vec<u8>> = tts.iter().map(|t| t.received()).collect();
    let cases = refused_cases(k0, k1);

    // One at a time, each followed by a get that goes to both backends.
    for (req, reply) in &cases {
        c.send(req);
        let mut expected = reply.as_bytes().to_vec();
        expected.extend_from_slice(&both);
        c.expect(format!("get {k0} {k1}\r\n"), expected);
    }
    // All in one pipelined write, then one get.
    let mut req = Vec::new();
    let mut expected = Vec::new();
    for (r, reply) in &cases {
        req.extend_from_slice(r.as_bytes());
        expected.extend_from_slice(reply.as_bytes());
    }
    req.extend_from_slice(format!("get {k0} {k1}\r\n").as_bytes());
    expected.extend_from_slice(&both);
    c.expect(req, expected);

    // Each backend received nothing but its part of those gets.
    for (i, k) in [k0, k1].into_iter().enumerate() {
        let after = tts[i].received();
        let fresh = &after[before[i].len()..];
        assert_eq!(
            text(fresh),
            format!("get {k}\r\n").repeat(cases.len() + 1),
            "backend {i} received more than the gets"
        );
        assert_only_forwardable(&tts[i]);
        assert!(!contains(&after, b"get x"));
        assert_eq!(
            tts[i].connections(),
            1,
            "backend {i} connection was reopened"
        );
    }
    // Still the same connections, still aligned.
    c.expect(format!("set {k0} 0 0 2\r\nok\r\n"), "STORED\r\n");
    c.expect(format!("set {k1} 0 0 2\r\nok\r\n"), "STORED\r\n");
    assert_eq!(tts[0].value(k0), Some(b"ok".to_vec()));
    assert_eq!(tts[1].value(k1), Some(b"ok".to_vec()));
    assert_eq!(
        tts.iter().map(|t| t.connections()).collect::<Vec<_>>(),
        [1, 1]
    );
}

/// A client's model of its own keys, as ttserver would hold them.
struct Model {
    store: HashMap<String, Vec<u8>>,
}

impl Model {
    fn counter(v: &[u8]) -> u64 {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    }
}

/// One random request of client `id` and the reply it must get (empty for noreply).
fn random_request(
    rng: &mut StdRng,
    model: &mut Model,
    keys: &[String],
    id: usize,
) -> (Vec<u8>, Vec<u8>) {
    let key = keys[rng.gen_range(0..keys.len())].clone();
    let noreply = rng.gen_bool(0.2);
    let nr = if noreply { " noreply" } else { "" };
    let value: Vec<u8> = (0..rng.gen_range(0..24))
        .map(|_| b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)])
        .collect();
    let store = &mut model.store;
    let storage =
        |cmd: &str, store_it: bool, new: Vec<u8>, store: &mut HashMap<String, Vec<u8>>| {
            let mut req = format!(
                "{cmd} {key} {} 0 {}{nr}\r\n",
                rng_flags(id, &key),
                value.len()
            )
            .into_bytes();
            req.extend_from_slice(&value);
            req.extend_from_slice(b"\r\n");
            if store_it {
                store.insert(key.clone(), new);
            }
            let reply: &[u8] = match (noreply, store_it) {
                (true, _) => b"",
                (false, true) => b"STORED\r\n",
                (false, false) => b"NOT_STORED\r\n",
            };
            (req, reply.to_vec())
        };
    let old = store.get(&key).cloned();
    match rng.gen_range(0..20) {
        0..=2 => storage("set", true, value.clone(), store),
        3 => storage("add", old.is_none(), value.clone(), store),
        4 => storage("replace", old.is_some(), value.clone(), store),
        5 => {
            let new = [old.clone().unwrap_or_default(), value.clone()].concat();
            storage("append", old.is_some(), new, store)
        }
        6 => {
            let new = [value.clone(), old.clone().unwrap_or_default()].concat();
            storage("prepend", old.is_some(), new, store)
        }
        7..=9 => {
            let n = rng.gen_range(1..=keys.len());
            let picked: Vec<&String> = (0..n).map(|i| &keys[(i * 3 + id) % keys.len()]).collect();
            let mut reply = Vec::new();
            let mut line = String::from("get");
            for k in &picked {
                line.push(' ');
                line.push_str(k);
                if let Some(v) = store.get(*k) {
                    reply.extend(value_item_bytes(k, 0, v));
                }
            }
            line.push_str("\r\n");
            reply.extend_from_slice(b"END\r\n");
            (line.into_bytes(), reply)
        }
        10 => {
            let reply = match (noreply, store.remove(&key).is_some()) {
                (true, _) => "",
                (false, true) => "DELETED\r\n",
                (false, false) => "NOT_FOUND\r\n",
            };
            (format!("delete {key}{nr}\r\n").into_bytes(), reply.into())
        }
        11 | 12 => {
            let incr = rng.gen_bool(0.5);
            let delta: u64 = rng.gen_range(0..1000);
            let cmd = if incr { "incr" } else { "decr" };
            let reply = match store.get_mut(&key) {
                None => "NOT_FOUND\r\n".to_string(),
                Some(v) => {
                    let cur = Model::counter(v);
                    let new = match incr {
                        true => cur.wrapping_add(delta),
                        false => cur.saturating_sub(delta),
                    };
                    *v = new.to_string().into_bytes();
                    format!("{new}\r\n")
                }
            };
            let reply = if noreply { String::new() } else { reply };
            (
                format!("{cmd} {key} {delta}{nr}\r\n").into_bytes(),
                reply.into(),
            )
        }
        13 => {
            // Data blocks that ttserver would run as commands if the cas line were skipped.
            let block = ["get x", "flush_all", "delete k", &format!("get {key}")]
                [rng.gen_range(0..4)]
            .to_string();
            let req = format!("cas {key} 0 0 {} 42{nr}\r\n{block}\r\n", block.len());
            let reply = if noreply { "" } else { UNSUPPORTED };
            (req.into_bytes(), reply.into())
        }
        14 => {
            let reply = if noreply { "" } else { UNSUPPORTED };
            (
                format!("touch {key} 100{nr}\r\n").into_bytes(),
                reply.into(),
            )
        }
        15 => {
            let cmd = ["gat", "gats"][rng.gen_range(0..2)];
            (
                format!("{cmd} 100 {key} {}\r\n", keys[0]).into_bytes(),
                UNSUPPORTED.into(),
            )
        }
        16 => (
            format!("gets {key}\r\n").into_bytes(),
            GETS_UNSUPPORTED.into(),
        ),
        17 => {
            let req = ["verbosity 1", "flush_all 30"][rng.gen_range(0..2)];
            let reply = if noreply { "" } else { UNSUPPORTED };
            (format!("{req}{nr}\r\n").into_bytes(), reply.into())
        }
        18 => (
            format!("mg {key} v f\r\n").into_bytes(),
            META_UNSUPPORTED.as_bytes().to_vec(),
        ),
        _ => (
            format!("incr {key} lots\r\n").into_bytes(),
            b"CLIENT_ERROR invalid numeric delta argument\r\n".to_vec(),
        ),
    }
}

/// Flags for a set: arbitrary, and always read back as 0 by default.
fn rng_flags(id: usize, key: &str) -> u32 {
    (id as u32).wrapping_mul(2654435761) ^ key.len() as u32
}

#[test]
fn pipelined_mixes_from_concurrent_clients_stay_in_order() {
    const CLIENTS: usize = 4;
    const REQUESTS: usize = 500;
    const BATCH: usize = 50;
    let (tts, proxy) = start(&[]);

    // Warm-up: every client sets all its keys, touching both backends, so every worker
    // that serves one of them has its connections open.
    let mut clients: Vec<(Client, Vec<String>)> = Vec::new();
    for id in 0..CLIENTS {
        let mut c = proxy.client();
        let [on0, on1] = keys_per_backend(&mut c, &tts, &format!("mix{id}:"), 4);
        let keys: Vec<String> = on0.into_iter().zip(on1).flat_map(|(a, b)| [a, b]).collect();
        clients.push((c, keys));
    }
    let warm: Vec<usize> = tts.iter().map(|t| t.connections()).collect();
    assert!(warm.iter().all(|&n| n >= 1));

    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(id, (mut c, keys))| {
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(0x7717 + id as u64);
                let mut model = Model {
                    store: keys
                        .iter()
                        .map(|k| (k.clone(), k.as_bytes().to_vec()))
                        .collect(),
                };
                let mut sent = 0;
                while sent < REQUESTS {
                    let mut req = Vec::new();
                    let mut expected = Vec::new();
                    for _ in 0..BATCH {
                        let (r, e) = random_request(&mut rng, &mut model, &keys, id);
                        req.extend(r);
                        expected.extend(e);
                    }
                    sent += BATCH;
                    c.send(&req);
                    let got = c.read_n(expected.len());
                    assert_eq!(
                        text(&got),
                        text(&expected),
                        "client {id}, requests {}..{sent}",
                        sent - BATCH
                    );
                }
                // Nothing more is pending: the next reply is the next request's.
                let mut reply = Vec::new();
                let mut line = String::from("get");
                for k in &keys {
                    line.push(' ');
                    line.push_str(k);
                    if let Some(v) = model.store.get(k) {
                        reply.extend(value_item_bytes(k, 0, v));
                    }
                }
                reply.extend_from_slice(b"END\r\n");
                c.expect(format!("{line}\r\n"), reply);
                model.store
            })
        })
        .collect();
    let mut all = HashMap::new();
    for t in threads {
        all.extend(t.join().expect("client thread"));
    }

    // The backends hold exactly what the clients' models say.
    for (k, v) in &all {
        let held: Vec<Option<Vec<u8>>> = tts.iter().map(|t| t.value(k)).collect();
        assert!(
            held.contains(&Some(v.clone())) && held.contains(&None),
            "{k}: expected {:?}, backends hold {held:?}",
            text(v)
        );
    }
    for tt in &tts {
        assert_only_forwardable(tt);
        for bad in [
            &b"get x"[..],
            b"delete k\r\n",
            b"flush_all",
            b"mg ",
            b"cas ",
        ] {
            assert!(!contains(&tt.received(), bad), "{}", text(bad));
        }
    }
    // Nothing made a backend close a connection.
    let after: Vec<usize> = tts.iter().map(|t| t.connections()).collect();
    assert_eq!(after, warm);
}

#[test]
fn preserve_flags_keeps_flags_in_the_value() {
    let (tts, proxy) = start(&["--preserve-flags"]);
    let mut c = proxy.client();
    let [on0, on1] = keys_per_backend(&mut c, &tts, "pf:", 2);
    let cases: Vec<(&str, u32, &[u8])> = vec![
        (&on0[0], 0, b"zero"),
        (&on1[0], 1, b"one"),
        (&on0[1], 4294967295, b"max"),
        (&on1[1], 0x0102_0304, b""),
    ];
    for &(k, flags, data) in &cases {
        c.expect(set_request_bytes(k, flags, data), "STORED\r\n");
        // ttserver holds the flags as a 4-byte big-endian prefix.
        let held = tts[owner(&tts, k)].value(k).unwrap();
        assert_eq!(held, [&flags.to_be_bytes()[..], data].concat(), "{k}");
        c.expect(
            format!("get {k}\r\n"),
            [value_item_bytes(k, flags, data), b"END\r\n".to_vec()].concat(),
        );
    }
    // Multi-get across both backends, in key order, with a miss.
    let mut line = String::from("get");
    let mut expected = Vec::new();
    for &(k, flags, data) in cases.iter().rev() {
        line.push_str(&format!(" {k} pf:missing"));
        expected.extend(value_item_bytes(k, flags, data));
    }
    expected.extend_from_slice(b"END\r\n");
    c.expect(format!("{line}\r\n"), expected);

    // add/replace and noreply carry flags too; noreply is not forwarded.
    c.expect(format!("add {} 5 0 1\r\nx\r\n", on0[0]), "NOT_STORED\r\n");
    c.expect("add pf:added 77 0 2\r\nad\r\n", "STORED\r\n");
    c.expect(format!("replace {} 9 0 3\r\nrep\r\n", on1[0]), "STORED\r\n");
    c.send(format!("set {} 123456 0 2 noreply\r\nnr\r\n", on0[1]));
    c.expect(
        format!("get pf:added {} {}\r\n", on1[0], on0[1]),
        [
            value_item_bytes("pf:added", 77, b"ad"),
            value_item_bytes(&on1[0], 9, b"rep"),
            value_item_bytes(&on0[1], 123456, b"nr"),
            b"END\r\n".to_vec(),
        ]
        .concat(),
    );

    // A value shorter than the prefix (written straight to ttserver) reads with flags 0.
    let direct = owner(&tts, &on0[0]);
    let mut d = Client::connect(tts[direct].port);
    d.expect(format!("set {} 0 0 2\r\nab\r\n", on0[0]), "STORED\r\n");
    c.expect(
        format!("get {}\r\n", on0[0]),
        [value_item_bytes(&on0[0], 0, b"ab"), b"END\r\n".to_vec()].concat(),
    );
    drop(d);

    // Commands that cannot keep flags in the value are refused, and never forwarded.
    let received: Vec<usize> = tts.iter().map(|t| t.received().len()).collect();
    let k = &on1[0];
    c.expect(format!("prepend {k} 0 0 1\r\nx\r\n"), FLAGS_UNSUPPORTED);
    c.expect(format!("incr {k} 1\r\n"), FLAGS_UNSUPPORTED);
    c.expect(format!("decr {k} 1\r\n"), FLAGS_UNSUPPORTED);
    c.send(format!(
        "prepend {k} 0 0 1 noreply\r\nx\r\nincr {k} 1 noreply\r\ndecr {k} 1 noreply\r\n"
    ));
    c.expect(format!("gets {k}\r\n"), GETS_UNSUPPORTED);
    assert_eq!(
        tts.iter().map(|t| t.received().len()).collect::<Vec<_>>(),
        received
    );
    c.expect(
        format!("get {k}\r\n"),
        [value_item_bytes(k, 9, b"rep"), b"END\r\n".to_vec()].concat(),
    );
    for tt in &tts {
        assert_only_forwardable(tt);
        assert!(tt
            .commands()
            .iter()
            .all(|c| !["prepend", "incr", "decr"].contains(&c.as_str())));
    }
    // tts[direct] also saw the direct client's connection.
    let expected_conns: Vec<usize> = (0..2).map(|i| 1 + usize::from(i == direct)).collect();
    assert_eq!(
        tts.iter().map(|t| t.connections()).collect::<Vec<_>>(),
        expected_conns
    );
}

#[test]
fn preserve_flags_append_keeps_the_value_contiguous() {
    // memcached's append keeps the item's flags and ignores the request's; the appended bytes
    // must follow the value, not a second flags prefix.
    let (tts, proxy) = start(&["--preserve-flags"]);
    let mut c = proxy.client();
    c.expect("set pa:k 5 0 3\r\nabc\r\n", "STORED\r\n");
    c.expect("append pa:k 9 0 3\r\nxyz\r\n", "STORED\r\n");
    let held = tts[owner(&tts, "pa:k")].value("pa:k").unwrap();
    c.send("get pa:k\r\n");
    let got = c.read_retrieval();
    assert_eq!(
        text(&got),
        text(&[value_item_bytes("pa:k", 5, b"abcxyz"), b"END\r\n".to_vec()].concat()),
        "ttserver holds {held:?}"
    );
}
