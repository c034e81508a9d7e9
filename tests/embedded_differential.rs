//! Differential test: random command sequences run against a real memcached and against the
//! embedded store must produce byte-identical replies (CAS uniques normalised) and the same
//! counter deltas.

// Once the module moves into memroute, the first path becomes `memroute::embedded::…`.
mod common;

use common::{value_len, Memcached};
use memroute::embedded::{ManualClock, Store, StoreConfig, StoreStats};
use memroute::protocol::{ClientCodec, CodecLimits, Decoded};

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// memcached for the comparison. Its background LRU threads briefly hold references to
/// items; an incr that meets such a reference copies the item instead of rewriting it in
/// place, which changes the stored length ("7" instead of "7 ") and `total_items`, and the
/// crawler may reclaim expired items before a lookup counts them. Both are races inside
/// memcached; without the threads its answers are deterministic.
fn start_memcached() -> Memcached {
    Memcached::start_with(&["-o", "no_lru_maintainer,no_lru_crawler"])
}

/// A connection to memcached that can tell where a reply ends even when there is none
/// (noreply): every request is followed by `version`, which both memcached and memroute answer.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn new(port: u16) -> Conn {
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("connect to {port}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot connect to 127.0.0.1:{port}: {e}"),
            }
        };
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// Sends `request`, returns its whole reply (empty for noreply). A `version` after it
    /// marks where the reply ends (memcached and memroute both answer it, differently).
    fn call(&mut self, request: &[u8]) -> Vec<u8> {
        let mut msg = request.to_vec();
        msg.extend_from_slice(b"version\r\n");
        self.writer.write_all(&msg).unwrap();
        let mut reply = Vec::new();
        loop {
            let mut line = Vec::new();
            self.reader.read_until(b'\n', &mut line).unwrap();
            if line.starts_with(b"VERSION ") {
                return reply;
            }
            reply.extend_from_slice(&line);
            // A VALUE header: read the data block by its length, it may hold anything.
            if line.starts_with(b"VALUE ") {
                let len = value_len(&line).expect("data length in a VALUE line");
                let mut data = vec![0; len + 2];
                self.reader.read_exact(&mut data).unwrap();
                reply.extend_from_slice(&data);
            }
        }
    }

    fn stats(&mut self) -> HashMap<String, u64> {
        let reply = self.call(b"stats\r\n");
        String::from_utf8(reply)
            .unwrap()
            .lines()
            .filter_map(|l| {
                let mut t = l.split(' ');
                (t.next() == Some("STAT")).then_some(())?;
                let name = t.next()?.to_string();
                Some((name, t.next()?.parse().ok()?))
            })
            .collect()
    }
}

/// Which earlier-seen CAS unique a `cas` command sends.
#[derive(Clone, Debug)]
enum Unique {
    /// The n-th most recent distinct unique seen in a reply (0 = the latest).
    Recent(usize),
    /// 0, which memcached never matches.
    Zero,
    /// A unique no item has.
    Huge,
}

#[derive(Clone, Debug)]
enum Op {
    Store {
        cmd: &'static str,
        key: usize,
        flags: u32,
        exptime: i64,
        value: String,
        noreply: bool,
    },
    Cas {
        key: usize,
        flags: u32,
        exptime: i64,
        value: String,
        unique: Unique,
        noreply: bool,
    },
    Get {
        cmd: &'static str,
        keys: Vec<usize>,
    },
    Gat {
        cmd: &'static str,
        exptime: i64,
        keys: Vec<usize>,
    },
    Delete {
        key: usize,
        noreply: bool,
    },
    Delta {
        cmd: &'static str,
        key: usize,
        delta: u64,
        noreply: bool,
    },
    Touch {
        key: usize,
        exptime: i64,
        noreply: bool,
    },
    Flush {
        arg: &'static str,
    },
}

const KEYS: usize = 4;

/// Exptimes whose outcome does not depend on when exactly memcached reads its clock: never,
/// negative, far relative, 30 days (relative), 30 days + 1 (absolute, 1970), an absolute
/// time in the past, one in the future.
fn exptime() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => Just(0i64),
        1 => Just(-1i64),
        1 => Just(-1000i64),
        2 => Just(10_000i64),
        1 => Just(2_592_000i64),
        1 => Just(2_592_001i64),
        1 => Just(1_000_000_000i64),
        1 => Just(2_000_000_000i64),
    ]
}

fn flags() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), Just(u32::MAX), Just(1u32), any::<u32>()]
}

/// Values that exercise incr/decr parsing as well as plain data. Never containing "MN",
/// which the memcached connection uses as its end-of-reply marker, and never a '-':
/// memcached 1.6.18 checks a counter of 2^63 or more for a minus sign with a scan that runs
/// past the item's data into leftover slab memory, so a '-' left there by an earlier item
/// (say a freed "-5") makes its incr answer "non-numeric" at random. Negative counters are
/// covered by the unit tests instead.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("0".to_string()),
        Just("9".to_string()),
        Just("10".to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551614".to_string()),
        Just("18446744073709551616".to_string()),
        Just("9223372036854775808".to_string()),
        Just("+3".to_string()),
        Just(" 7".to_string()),
        Just("5 x".to_string()),
        Just("abc".to_string()),
        "[0-9]{1,3}",
        // Not all blanks: memcached's strtoull then reads past the item's "\r\n" into
        // whatever memory follows it, so its answer is not deterministic.
        "[a-z0-9 ]{0,10}".prop_filter("blank", |v| v.is_empty() || !v.trim().is_empty()),
    ]
}

fn delta() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(10u64),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1u64 << 63),
        any::<u64>(),
        0u64..1000,
    ]
}

fn key() -> impl Strategy<Value = usize> {
    0..KEYS
}

fn keys() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(key(), 1..=5)
}

fn op() -> impl Strategy<Value = Op> {
    let storage = (
        prop_oneof![
            3 => Just("set"),
            1 => Just("add"),
            1 => Just("replace"),
            1 => Just("append"),
            1 => Just("prepend"),
        ],
        key(),
        flags(),
        exptime(),
        value(),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(cmd, key, flags, exptime, value, noreply)| Op::Store {
            cmd,
            key,
            flags,
            exptime,
            value,
            noreply,
        });
    let unique = prop_oneof![
        4 => (0usize..3).prop_map(Unique::Recent),
        1 => Just(Unique::Zero),
        1 => Just(Unique::Huge),
    ];
    let cas = (
        key(),
        flags(),
        exptime(),
        value(),
        unique,
        prop::bool::weighted(0.15),
    )
        .prop_map(|(key, flags, exptime, value, unique, noreply)| Op::Cas {
            key,
            flags,
            exptime,
            value,
            unique,
            noreply,
        });
    let get = (prop_oneof![Just("get"), Just("gets")], keys())
        .prop_map(|(cmd, keys)| Op::Get { cmd, keys });
    let gat = (prop_oneof![Just("gat"), Just("gats")], exptime(), keys())
        .prop_map(|(cmd, exptime, keys)| Op::Gat { cmd, exptime, keys });
    let delete =
        (key(), prop::bool::weighted(0.15)).prop_map(|(key, noreply)| Op::Delete { key, noreply });
    let delta = (
        prop_oneof![Just("incr"), Just("decr")],
        key(),
        delta(),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(cmd, key, delta, noreply)| Op::Delta {
            cmd,
            key,
            delta,
            noreply,
        });
    let touch =
        (key(), exptime(), prop::bool::weighted(0.15)).prop_map(|(key, exptime, noreply)| {
            Op::Touch {
                key,
                exptime,
                noreply,
            }
        });
    let flush = prop_oneof![
        Just("flush_all"),
        Just("flush_all 0"),
        Just("flush_all -1"),
        Just("flush_all noreply"),
        Just("flush_all 0 noreply"),
    ]
    .prop_map(|arg| Op::Flush { arg });
    prop_oneof![
        6 => storage,
        3 => cas,
        4 => get,
        2 => gat,
        2 => delete,
        3 => delta,
        2 => touch,
        1 => flush,
    ]
}

/// One side's view of the CAS uniques it has shown: distinct values in order of appearance.
#[derive(Default)]
struct Uniques(Vec<u64>);

impl Uniques {
    /// Rewrites every unique in a retrieval reply to its 1-based order of appearance.
    fn normalise(&mut self, reply: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = reply;
        while rest.starts_with(b"VALUE ") {
            let nl = rest.iter().position(|b| *b == b'\n').unwrap();
            let line = std::str::from_utf8(&rest[..nl - 1]).unwrap();
            let toks: Vec<&str> = line.split(' ').collect();
            let len: usize = toks[3].parse().unwrap();
            if toks.len() == 5 {
                let unique: u64 = toks[4].parse().unwrap();
                let n = match self.0.iter().position(|u| *u == unique) {
                    Some(i) => i + 1,
                    None => {
                        self.0.push(unique);
                        self.0.len()
                    }
                };
                out.extend_from_slice(format!("{} {}\r\n", toks[..4].join(" "), n).as_bytes());
            } else {
                out.extend_from_slice(&rest[..nl + 1]);
            }
            out.extend_from_slice(&rest[nl + 1..nl + 1 + len + 2]);
            rest = &rest[nl + 1 + len + 2..];
        }
        out.extend_from_slice(rest);
        out
    }

    fn pick(&self, u: &Unique) -> u64 {
        match u {
            Unique::Recent(n) if *n < self.0.len() => self.0[self.0.len() - 1 - n],
            Unique::Recent(_) | Unique::Huge => 1 << 62,
            Unique::Zero => 0,
        }
    }
}

fn noreply(n: bool) -> &'static str {
    if n {
        " noreply"
    } else {
        ""
    }
}

/// The request text for `op`, with `unique` for a cas.
fn render(op: &Op, prefix: &str, unique: u64) -> String {
    let k = |i: &usize| format!("{prefix}{i}");
    let ks = |v: &Vec<usize>| v.iter().map(k).collect::<Vec<_>>().join(" ");
    match op {
        Op::Store {
            cmd,
            key,
            flags,
            exptime,
            value,
            noreply: n,
        } => format!(
            "{cmd} {} {flags} {exptime} {}{}\r\n{value}\r\n",
            k(key),
            value.len(),
            noreply(*n)
        ),
        Op::Cas {
            key,
            flags,
            exptime,
            value,
            noreply: n,
            ..
        } => format!(
            "cas {} {flags} {exptime} {} {unique}{}\r\n{value}\r\n",
            k(key),
            value.len(),
            noreply(*n)
        ),
        Op::Get { cmd, keys } => format!("{cmd} {}\r\n", ks(keys)),
        Op::Gat { cmd, exptime, keys } => format!("{cmd} {exptime} {}\r\n", ks(keys)),
        Op::Delete { key, noreply: n } => format!("delete {}{}\r\n", k(key), noreply(*n)),
        Op::Delta {
            cmd,
            key,
            delta,
            noreply: n,
        } => format!("{cmd} {} {delta}{}\r\n", k(key), noreply(*n)),
        Op::Touch {
            key,
            exptime,
            noreply: n,
        } => format!("touch {} {exptime}{}\r\n", k(key), noreply(*n)),
        Op::Flush { arg } => format!("{arg}\r\n"),
    }
}

/// Executes `text` (one request) on the store and returns the reply.
fn execute(store: &Store, text: &str) -> Vec<u8> {
    let mut codec = ClientCodec::new(CodecLimits::default());
    let mut buf = BytesMut::from(text.as_bytes());
    let mut out = BytesMut::new();
    match codec.decode_item(&mut buf) {
        Some(Decoded::Request(req)) => store.execute(&req, &mut out),
        other => panic!("codec did not produce a request for {text:?}: {other:?}"),
    }
    assert!(buf.is_empty(), "codec left bytes of {text:?}");
    out.to_vec()
}

/// Counters compared between the two sides. Left out: the gauges (`curr_items`, `bytes`),
/// which on memcached include items of earlier sequences, and `get_expired`/`get_flushed`:
/// memcached's allocator silently reclaims expired and flushed items it finds at the tail of
/// a slab class's LRU, which may be this sequence's item (depending on what earlier
/// sequences left), and then the lookup that we count never sees it.
fn counters(s: &StoreStats) -> Vec<(&'static str, u64)> {
    vec![
        ("cmd_get", s.cmd_get),
        ("cmd_set", s.cmd_set),
        ("cmd_touch", s.cmd_touch),
        ("get_hits", s.get_hits),
        ("get_misses", s.get_misses),
        ("touch_hits", s.touch_hits),
        ("touch_misses", s.touch_misses),
        ("delete_hits", s.delete_hits),
        ("delete_misses", s.delete_misses),
        ("incr_hits", s.incr_hits),
        ("incr_misses", s.incr_misses),
        ("decr_hits", s.decr_hits),
        ("decr_misses", s.decr_misses),
        ("cas_hits", s.cas_hits),
        ("cas_misses", s.cas_misses),
        ("cas_badval", s.cas_badval),
        ("total_items", s.total_items),
    ]
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The side compared with real memcached.
enum Ours<'a> {
    /// A fresh store per sequence, called directly (its counters are compared too).
    Store,
    /// memroute serving an embedded pool, over its client protocol.
    Proxy(&'a RefCell<Conn>),
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn replies_match_real_memcached() {
    differential(Ours::Store, cases(3000));
}

/// The same sequences through a running memroute whose pool is its embedded cache.
#[test]
fn replies_through_memroute_match_real_memcached() {
    let port = common::free_port();
    let mut cmd = Command::new(common::Proxy::binary());
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--embedded"])
        .args(["--threads", "1", "--log-level", "warn"]);
    let _proxy = common::Proxy::spawn_command(cmd, port);
    let conn = RefCell::new(Conn::new(port));
    differential(Ours::Proxy(&conn), cases(1000));
}

fn differential(target: Ours<'_>, cases: u32) {
    let started = Instant::now();
    let server = start_memcached();
    let conn = RefCell::new(Conn::new(server.port));
    let sequence = RefCell::new(0u64);
    let mut runner = TestRunner::new(Config {
        cases,
        // Shrinking re-runs sequences; a distinct key prefix per run keeps them independent.
        max_shrink_iters: 2000,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(op(), 1..=30).prop_filter(
        "a number shortened in place, appended to, then counted again",
        |ops| !padding_shows(ops),
    );
    let result = runner.run(&strategy, |ops| {
        let mut conn = conn.borrow_mut();
        // memcached's clock ticks on its own timer, ours reads the system's: a sequence that
        // straddles a second boundary under load can see time-dependent rules (flush_all's
        // cut-off, expiry) a second apart. Such a mismatch does not repeat; a real one does.
        // So a failing sequence is run once more on fresh keys, and only a second failure
        // counts (the first is printed, so CI logs show it).
        let mut first_failure = None;
        for _attempt in 0..2 {
            let mut seq = sequence.borrow_mut();
            *seq += 1;
            // A fresh key space per sequence instead of a flush_all before it: items stored
            // in the same second as a flush would otherwise interact with it on memcached.
            // Fixed width, so that items of one slab class share a layout and leftover bytes
            // after a value come from earlier values (never from '-'-bearing headers).
            let prefix = format!("s{:07}k", *seq);
            drop(seq);
            match run_sequence(&target, &mut conn, &ops, &prefix) {
                Ok(()) => {
                    if let Some(e) = &first_failure {
                        eprintln!("a sequence failed once and then passed (timing?):\n{e}");
                    }
                    return Ok(());
                }
                Err(e) => {
                    if let Some(first) = first_failure {
                        return Err(TestCaseError::fail(format!(
                            "{first}\n--- and again ---\n{e}"
                        )));
                    }
                    first_failure = Some(e);
                }
            }
        }
        unreachable!("the second attempt returns")
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "{} sequences in {:.1} s",
        sequence.borrow(),
        started.elapsed().as_secs_f64()
    );
}

/// Whether `ops` counts (`incr`/`decr`) on a key that was appended or prepended to after an
/// earlier count: memcached pads a number a count shortened with spaces and then reads
/// `"3   x"` as 3, where memroute's embedded cache, which stores `"3x"`, finds no number.
fn padding_shows(ops: &[Op]) -> bool {
    // Per key: 0 nothing yet, 1 counted, 2 counted then appended to (never undone: a
    // store in between may have failed).
    let mut state = [0u8; KEYS];
    for op in ops {
        match op {
            Op::Delta { key, .. } if state[*key] == 2 => return true,
            Op::Delta { key, .. } => state[*key] = 1,
            Op::Store { cmd, key, .. }
                if matches!(*cmd, "append" | "prepend") && state[*key] == 1 =>
            {
                state[*key] = 2
            }
            _ => {}
        }
    }
    false
}

/// `reply` with the spaces after each run of digits in a value removed (and the value's
/// length fixed). memcached usually rewrites a number that `decr` shortened in place, padded
/// with spaces to its old length ("10" becomes "9 "); memroute's embedded cache stores the
/// number as it is. Applied to both sides, so any other difference still shows.
fn unpad(reply: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(reply.len());
    let mut rest = reply;
    while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
        let line = &rest[..=nl];
        let fields: Vec<&[u8]> = line.trim_ascii_end().split(|b| *b == b' ').collect();
        let len = fields
            .get(3)
            .and_then(|t| std::str::from_utf8(t).ok()?.parse::<usize>().ok());
        match (line.starts_with(b"VALUE "), len) {
            (true, Some(len)) if rest.len() >= nl + 1 + len + 2 => {
                let data = &rest[nl + 1..nl + 1 + len];
                let mut kept = Vec::with_capacity(len);
                for b in data {
                    // Spaces are dropped while the last byte kept is a digit.
                    let padding = *b == b' ' && kept.last().is_some_and(u8::is_ascii_digit);
                    if !padding {
                        kept.push(*b);
                    }
                }
                let mut header: Vec<u8> = Vec::new();
                for (i, f) in fields.iter().enumerate() {
                    if i > 0 {
                        header.push(b' ');
                    }
                    if i == 3 {
                        header.extend_from_slice(kept.len().to_string().as_bytes());
                    } else {
                        header.extend_from_slice(f);
                    }
                }
                out.extend_from_slice(&header);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&kept);
                out.extend_from_slice(b"\r\n");
                rest = &rest[nl + 1 + len + 2..];
            }
            _ => {
                out.extend_from_slice(line);
                rest = &rest[nl + 1..];
            }
        }
    }
    out.extend_from_slice(rest);
    out
}

/// Runs `ops` on both sides under key `prefix`; the first difference, as a transcript.
fn run_sequence(
    target: &Ours<'_>,
    conn: &mut Conn,
    ops: &[Op],
    prefix: &str,
) -> Result<(), String> {
    let store = Store::new(
        StoreConfig {
            memory_limit: 64 << 20,
            evict: true,
            item_size_max: 1024 * 1024,
        },
        Arc::new(ManualClock::new(unix_now())),
    );
    let ours_call = |text: &str| match target {
        Ours::Store => execute(&store, text),
        Ours::Proxy(proxy) => proxy.borrow_mut().call(text.as_bytes()),
    };
    let before = conn.stats();
    let (mut theirs, mut ours) = (Uniques::default(), Uniques::default());
    let mut transcript = String::new();
    for op in ops {
        let (their_unique, our_unique) = match op {
            Op::Cas { unique, .. } => (theirs.pick(unique), ours.pick(unique)),
            _ => (0, 0),
        };
        let their_text = render(op, prefix, their_unique);
        let our_text = render(op, prefix, our_unique);
        let their_reply = unpad(&theirs.normalise(&conn.call(their_text.as_bytes())));
        let our_reply = unpad(&ours.normalise(&ours_call(&our_text)));
        transcript.push_str(&format!(
            "> {}< {}",
            our_text,
            String::from_utf8_lossy(&their_reply)
        ));
        // Debugging aid: DIFF_STATS_EACH=1 compares counters after every request, to
        // find which one a counter mismatch comes from.
        if std::env::var_os("DIFF_STATS_EACH").is_some() && matches!(*target, Ours::Store) {
            let now = conn.stats();
            for (name, ours) in counters(&store.stats()) {
                let theirs = now[name] - before[name];
                if theirs != ours {
                    return Err(format!(
                        "stat {name}: memcached {theirs}, ours {ours}\n{transcript}"
                    ));
                }
            }
        }
        if their_reply != our_reply {
            return Err(format!(
                "replies differ\n--- transcript (memcached's replies) ---\n{transcript}\
                     --- ours for the last request ---\n{}",
                String::from_utf8_lossy(&our_reply)
            ));
        }
    }
    let after = conn.stats();
    if matches!(*target, Ours::Proxy(_)) {
        return Ok(());
    }
    for (name, ours) in counters(&store.stats()) {
        let theirs = after[name] - before[name];
        if theirs != ours {
            return Err(format!(
                "stat {name}: memcached {theirs}, ours {ours}\n{transcript}"
            ));
        }
    }
    Ok(())
}
