//! Differential test: random command sequences run against a real memcached and against the
//! embedded store must produce byte-identical replies (CAS uniques normalised) and the same
//! counter deltas. Text and meta commands (`mg`, `ms`, `md`, `ma`, `me`, with random flag
//! combinations; quiet ones followed by `mn`) are interleaved on the same keys.

// Once the module moves into memroute, the first path becomes `memroute::embedded::…`.
mod common;

use common::{value_len, Memcached};
use memroute::embedded::{ManualClock, Store, StoreConfig, StoreStats};
use memroute::protocol::meta::base64_encode;
use memroute::protocol::{ClientCodec, CodecLimits, Command as Cmd, Decoded};

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
            // A VALUE or VA header: read the data block by its length, it may hold anything.
            let len = if line.starts_with(b"VALUE ") {
                Some(value_len(&line).expect("data length in a VALUE line"))
            } else if line.starts_with(b"VA ") {
                Some(va_len(&line).expect("data length in a VA line"))
            } else {
                None
            };
            if let Some(len) = len {
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

/// The data length of a meta `VA <len> <flags>*` header.
fn va_len(line: &[u8]) -> Option<usize> {
    let line = std::str::from_utf8(line.strip_prefix(b"VA ")?).ok()?;
    line.trim_end().split(' ').next()?.parse().ok()
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
    /// `mg`, `ms` (with `value`), `md` or `ma` on key `key` (base64 with `b`, which is
    /// then one of the flags), flags in the order sent.
    Meta {
        cmd: &'static str,
        key: usize,
        value: String,
        flags: Vec<Flag>,
    },
    /// `me <key> [b]`.
    Debug {
        key: usize,
        base64: bool,
    },
}

/// One flag token of a meta request.
#[derive(Clone, Debug)]
enum Flag {
    /// Sent as it is (`v`, `T30`, `Oab`, `b`…).
    Token(String),
    /// `C<unique>`, the unique picked per side as for `cas`.
    Cas(Unique),
}

impl Flag {
    fn letter(&self) -> u8 {
        match self {
            Flag::Token(t) => t.as_bytes()[0],
            Flag::Cas(_) => b'C',
        }
    }
}

/// Keys text commands use; meta commands also use key `KEYS`, a binary one (NUL, space and
/// control bytes) that only base64 can name.
const KEYS: usize = 4;

/// The bytes of key `i` under `prefix`.
fn key_bytes(prefix: &str, i: usize) -> Vec<u8> {
    if i == KEYS {
        format!("{prefix}\0 \u{1}\t~").into_bytes()
    } else {
        format!("{prefix}{i}").into_bytes()
    }
}

/// Key `i` as a meta request names it: itself, or its base64 form.
fn meta_key(prefix: &str, i: usize, base64: bool) -> String {
    let key = key_bytes(prefix, i);
    if !base64 {
        return String::from_utf8(key).expect("text keys are ASCII");
    }
    let mut encoded = Vec::new();
    base64_encode(&key, &mut encoded);
    String::from_utf8(encoded).expect("base64 is ASCII")
}

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

/// A meta command's key and whether it goes base64 (always for the binary key).
fn meta_key_choice() -> impl Strategy<Value = (usize, bool)> {
    prop_oneof![
        5 => (key(), prop::bool::weighted(0.25)),
        1 => Just((KEYS, true)),
    ]
}

/// An `O` token: usually short, sometimes around memcached's 32-byte limit (which counts
/// the `O`).
fn opaque() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9]{0,6}",
        1 => "[a-z0-9]{30,32}",
    ]
    .prop_map(|o| format!("O{o}"))
}

/// A TTL flag (`T`, `N`, `R`) with one of the exptimes above.
fn ttl_flag(letter: char) -> impl Strategy<Value = Flag> {
    exptime().prop_map(move |t| Flag::Token(format!("{letter}{t}")))
}

fn token(t: &'static str) -> impl Strategy<Value = Flag> {
    Just(Flag::Token(t.to_string()))
}

fn cas_flag() -> impl Strategy<Value = Flag> {
    prop_oneof![
        4 => (0usize..3).prop_map(Unique::Recent),
        1 => Just(Unique::Zero),
        1 => Just(Unique::Huge),
    ]
    .prop_map(Flag::Cas)
}

/// Up to `max` flags drawn from `flag`, each letter once (a repeated one is the codec's
/// error, tested elsewhere), in random order; with `b` among them when `base64`.
fn meta_flags(
    flag: impl Strategy<Value = Flag>,
    max: usize,
    base64: bool,
) -> impl Strategy<Value = Vec<Flag>> {
    (proptest::collection::vec(flag, 0..=max), 0..=max).prop_map(move |(drawn, b_at)| {
        let mut flags: Vec<Flag> = Vec::new();
        for f in drawn {
            if !flags.iter().any(|g| g.letter() == f.letter()) {
                flags.push(f);
            }
        }
        if base64 {
            flags.insert(b_at.min(flags.len()), Flag::Token("b".to_string()));
        }
        flags
    })
}

fn mg_flag() -> BoxedStrategy<Flag> {
    prop_oneof![
        3 => token("v"),
        1 => token("f"),
        1 => token("t"),
        2 => token("c"),
        1 => token("s"),
        2 => token("k"),
        2 => token("q"),
        1 => token("h"),
        1 => token("l"),
        1 => token("u"),
        2 => opaque().prop_map(Flag::Token),
        2 => ttl_flag('T'),
        2 => ttl_flag('N'),
        2 => ttl_flag('R'),
    ]
    .boxed()
}

fn ms_flag() -> BoxedStrategy<Flag> {
    prop_oneof![
        2 => flags().prop_map(|f| Flag::Token(format!("F{f}"))),
        2 => ttl_flag('T'),
        2 => token("q"),
        1 => opaque().prop_map(Flag::Token),
        1 => token("k"),
        2 => token("c"),
        2 => token("I"),
        3 => cas_flag(),
        3 => prop::sample::select(vec!["MS", "ME", "MA", "MP", "MR"])
            .prop_map(|m| Flag::Token(m.to_string())),
    ]
    .boxed()
}

fn md_flag() -> BoxedStrategy<Flag> {
    prop_oneof![
        2 => token("q"),
        5 => token("I"),
        2 => ttl_flag('T'),
        2 => cas_flag(),
        1 => opaque().prop_map(Flag::Token),
        1 => token("k"),
    ]
    .boxed()
}

fn ma_flag() -> BoxedStrategy<Flag> {
    prop_oneof![
        2 => ttl_flag('N'),
        2 => delta().prop_map(|j| Flag::Token(format!("J{j}"))),
        2 => delta().prop_map(|d| Flag::Token(format!("D{d}"))),
        2 => ttl_flag('T'),
        2 => cas_flag(),
        2 => token("q"),
        1 => opaque().prop_map(Flag::Token),
        1 => token("k"),
        2 => token("t"),
        2 => token("c"),
        3 => token("v"),
        2 => prop::sample::select(vec!["MI", "M+", "MD", "M-"])
            .prop_map(|m| Flag::Token(m.to_string())),
    ]
    .boxed()
}

/// A meta command with its flags.
fn meta_op(cmd: &'static str, flag: BoxedStrategy<Flag>, max: usize) -> impl Strategy<Value = Op> {
    (meta_key_choice(), value()).prop_flat_map(move |((key, base64), value)| {
        meta_flags(flag.clone(), max, base64).prop_map(move |flags| Op::Meta {
            cmd,
            key,
            value: value.clone(),
            flags,
        })
    })
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
    let debug = meta_key_choice().prop_map(|(key, base64)| Op::Debug { key, base64 });
    prop_oneof![
        6 => storage,
        3 => cas,
        4 => get,
        2 => gat,
        2 => delete,
        3 => delta,
        2 => touch,
        1 => flush,
        5 => meta_op("mg", mg_flag(), 6),
        7 => meta_op("ms", ms_flag(), 5),
        3 => meta_op("md", md_flag(), 4),
        4 => meta_op("ma", ma_flag(), 6),
        2 => debug,
    ]
}

/// One side's view of the CAS uniques it has shown: distinct values in order of appearance.
#[derive(Default)]
struct Uniques(Vec<u64>);

impl Uniques {
    /// The 1-based order of appearance of `unique`.
    fn number(&mut self, unique: u64) -> usize {
        match self.0.iter().position(|u| *u == unique) {
            Some(i) => i + 1,
            None => {
                self.0.push(unique);
                self.0.len()
            }
        }
    }

    /// Rewrites every unique in a reply (`gets`' VALUE lines, meta `c` flags, `me`'s `cas=`)
    /// to its 1-based order of appearance; a meta `c0` (a failed `ms` has no CAS) stays.
    ///
    /// Two kinds of TTL depend on memcached's clock rather than on the commands: a TTL left
    /// (`t`) that memcached computed as a negative number in unsigned 32 bits (a TTL set in
    /// the past) depends on its uptime, and becomes `t<past>`; one left until an absolute
    /// expiry (beyond 30 days: only absolute exptimes get there) depends on where its
    /// monotonic clock's seconds fall against the wall clock's, which puts its "now" up to a
    /// second off, and becomes `t<far>` (`me`'s `exp=` likewise).
    fn normalise(&mut self, reply: &[u8]) -> Vec<u8> {
        map_tokens(reply, |line, i, token| {
            let number = |t: &[u8]| -> Option<u64> {
                (!t.is_empty() && t.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(t).ok()?.parse().ok())
                    .flatten()
            };
            match line {
                Line::Value if i == 4 => Some(self.number(number(token)?).to_string().into_bytes()),
                Line::Meta => match token.split_first() {
                    Some((b'c', n)) => match number(n)? {
                        0 => None,
                        u => Some(format!("c#{}", self.number(u)).into_bytes()),
                    },
                    Some((b't', n)) => match number(n)? {
                        t if t >= 1 << 31 => Some(b"t<past>".to_vec()),
                        t if t > MAX_RELATIVE => Some(b"t<far>".to_vec()),
                        _ => None,
                    },
                    _ => None,
                },
                Line::Debug => {
                    if let Some(exp) = token.strip_prefix(b"exp=-") {
                        return (number(exp)? > MAX_RELATIVE).then(|| b"exp=<far>".to_vec());
                    }
                    let u = number(token.strip_prefix(b"cas=")?)?;
                    Some(format!("cas=#{}", self.number(u)).into_bytes())
                }
                _ => None,
            }
        })
    }

    fn pick(&self, u: &Unique) -> u64 {
        match u {
            Unique::Recent(n) if *n < self.0.len() => self.0[self.0.len() - 1 - n],
            Unique::Recent(_) | Unique::Huge => 1 << 62,
            Unique::Zero => 0,
        }
    }
}

/// The longest relative exptime (30 days); longer ones are unix times.
const MAX_RELATIVE: u64 = 60 * 60 * 24 * 30;

/// Which kind of reply line a token is in (data blocks are never looked at).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Line {
    /// `VALUE <key> <flags> <len> [<cas>]`.
    Value,
    /// A meta status line's flags (after `VA <len>`, `HD`, `EN`, `NF`, `NS`, `EX`).
    Meta,
    /// `ME <key> exp=… la=… cas=… fetch=… cls=… size=…`.
    Debug,
}

/// `reply` with each token of its header lines replaced by `f(line, index, token)` where
/// that returns something; data blocks (after VALUE and VA) are copied as they are.
fn map_tokens(reply: &[u8], mut f: impl FnMut(Line, usize, &[u8]) -> Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(reply.len());
    let mut rest = reply;
    while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
        let line = &rest[..=nl];
        rest = &rest[nl + 1..];
        let body = line.strip_suffix(b"\r\n").unwrap_or(line);
        let tokens: Vec<&[u8]> = body.split(|b| *b == b' ').collect();
        let status = tokens[0];
        let (kind, first, len_at) = match status {
            b"VALUE" => (Line::Value, 1, Some(3)),
            b"VA" => (Line::Meta, 2, Some(1)),
            b"HD" | b"EN" | b"NF" | b"NS" | b"EX" => (Line::Meta, 1, None),
            b"ME" => (Line::Debug, 1, None),
            _ => {
                out.extend_from_slice(line);
                continue;
            }
        };
        for (i, token) in tokens.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            match (i >= first).then(|| f(kind, i, token)).flatten() {
                Some(new) => out.extend_from_slice(&new),
                None => out.extend_from_slice(token),
            }
        }
        out.extend_from_slice(&line[body.len()..]);
        let len = len_at
            .and_then(|i| tokens.get(i))
            .and_then(|t| std::str::from_utf8(t).ok()?.parse::<usize>().ok());
        if let Some(len) = len {
            let block = (len + 2).min(rest.len());
            out.extend_from_slice(&rest[..block]);
            rest = &rest[block..];
        }
    }
    out.extend_from_slice(rest);
    out
}

/// `reply` with the sizes a count may have changed blanked: `mg`'s `s` and `me`'s `size=`
/// and `cls=`. memcached pads a number a count shortened in place with spaces; the embedded
/// cache does not (see [`unpad`]), so after a count on a key these differ by the padding.
fn mask_sizes(reply: &[u8]) -> Vec<u8> {
    map_tokens(reply, |line, _, token| match line {
        Line::Meta if token.first() == Some(&b's') => Some(b"s?".to_vec()),
        Line::Debug if token.starts_with(b"size=") => Some(b"size=?".to_vec()),
        Line::Debug if token.starts_with(b"cls=") => Some(b"cls=?".to_vec()),
        _ => None,
    })
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
        Op::Meta {
            cmd,
            key,
            value,
            flags,
        } => {
            let has = |t: &str| flags.iter().any(|f| matches!(f, Flag::Token(x) if x == t));
            let mut text = format!("{cmd} {}", meta_key(prefix, *key, has("b")));
            if *cmd == "ms" {
                text.push_str(&format!(" {}", value.len()));
            }
            for f in flags {
                match f {
                    Flag::Token(t) => text.push_str(&format!(" {t}")),
                    Flag::Cas(_) => text.push_str(&format!(" C{unique}")),
                }
            }
            text.push_str("\r\n");
            if *cmd == "ms" {
                text.push_str(&format!("{value}\r\n"));
            }
            // What a quiet request leaves out shows as nothing before mn's MN.
            if has("q") {
                text.push_str("mn\r\n");
            }
            text
        }
        Op::Debug { key, base64 } => {
            let b = if *base64 { " b" } else { "" };
            format!("me {}{b}\r\n", meta_key(prefix, *key, *base64))
        }
    }
}

/// The CAS unique choice an op sends, if any.
fn unique_of(op: &Op) -> Option<&Unique> {
    match op {
        Op::Cas { unique, .. } => Some(unique),
        Op::Meta { flags, .. } => flags.iter().find_map(|f| match f {
            Flag::Cas(u) => Some(u),
            Flag::Token(_) => None,
        }),
        _ => None,
    }
}

/// Executes `text` (one request, perhaps followed by `mn`) on the store and returns the
/// reply; `mn`, which memroute answers itself, is answered here.
fn execute(store: &Store, text: &str) -> Vec<u8> {
    let mut codec = ClientCodec::new(CodecLimits::default());
    let mut buf = BytesMut::from(text.as_bytes());
    let mut out = BytesMut::new();
    while !buf.is_empty() {
        match codec.decode_item(&mut buf) {
            Some(Decoded::Request(req)) if req.command == Cmd::MetaNoop => {
                out.extend_from_slice(b"MN\r\n")
            }
            Some(Decoded::Request(req)) => store.execute(&req, &mut out),
            // Errors memcached finds before executing are the codec's (`ms` with a long
            // opaque, say); answered as the client answers them.
            Some(Decoded::Reply(reply)) => out.extend_from_slice(reply),
            Some(Decoded::Skipped { reply, unlink }) => {
                out.extend_from_slice(reply);
                if let Some(key) = unlink {
                    store.delete_key(key.bytes(&mut [0; 250]), &mut BytesMut::new());
                }
            }
            other => panic!("codec did not produce a request for {text:?}: {other:?}"),
        }
    }
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

/// Whether `ops` counts (`incr`/`decr`/`ma`) on a key that was appended or prepended to
/// (text or `ms` mode A/P) after an earlier count: memcached pads a number a count shortened
/// with spaces and then reads `"3   x"` as 3, where memroute's embedded cache, which stores
/// `"3x"`, finds no number.
fn padding_shows(ops: &[Op]) -> bool {
    // Per key: 0 nothing yet, 1 counted, 2 counted then appended to (never undone: a
    // store in between may have failed).
    let mut state = [0u8; KEYS + 1];
    for op in ops {
        match op {
            Op::Delta { key, .. } | Op::Meta { cmd: "ma", key, .. } if state[*key] == 2 => {
                return true
            }
            Op::Delta { key, .. } | Op::Meta { cmd: "ma", key, .. } => state[*key] = 1,
            Op::Store { cmd, key, .. }
                if matches!(*cmd, "append" | "prepend") && state[*key] == 1 =>
            {
                state[*key] = 2
            }
            Op::Meta {
                cmd: "ms",
                key,
                flags,
                ..
            } if state[*key] == 1
                && flags
                    .iter()
                    .any(|f| matches!(f, Flag::Token(t) if t == "MA" || t == "MP")) =>
            {
                state[*key] = 2
            }
            _ => {}
        }
    }
    false
}

/// Per key, whether a count may have left it padded on memcached's side (see
/// [`mask_sizes`]) as of each op, updated after `op`: a count may pad it; a store that
/// always replaces the value (`set`, `ms` in set mode without a CAS), a delete that always
/// deletes, and flush_all end that.
fn track_counts(counted: &mut [bool; KEYS + 1], op: &Op) {
    let has = |flags: &[Flag], letter: u8| flags.iter().any(|f| f.letter() == letter);
    match op {
        Op::Delta { key, .. } | Op::Meta { cmd: "ma", key, .. } => counted[*key] = true,
        Op::Store {
            cmd: "set", key, ..
        }
        | Op::Delete { key, .. } => counted[*key] = false,
        Op::Meta {
            cmd: "ms",
            key,
            flags,
            ..
        } if !has(flags, b'C')
            && flags
                .iter()
                .all(|f| !matches!(f, Flag::Token(t) if t.starts_with('M') && t != "MS")) =>
        {
            counted[*key] = false
        }
        Op::Meta {
            cmd: "md",
            key,
            flags,
            ..
        } if !has(flags, b'C') && !has(flags, b'I') => counted[*key] = false,
        Op::Flush { .. } => *counted = [false; KEYS + 1],
        _ => {}
    }
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
        // Where the data length is: `VALUE <key> <flags> <len>`, `VA <len> <flags>*`.
        let len_at = match fields[0] {
            b"VALUE" => 3,
            b"VA" => 1,
            _ => usize::MAX,
        };
        let len = fields
            .get(len_at)
            .and_then(|t| std::str::from_utf8(t).ok()?.parse::<usize>().ok());
        match len {
            Some(len) if rest.len() >= nl + 1 + len + 2 => {
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
                    if i == len_at {
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
    let mut counted = [false; KEYS + 1];
    for op in ops {
        let (their_unique, our_unique) = match unique_of(op) {
            Some(unique) => (theirs.pick(unique), ours.pick(unique)),
            None => (0, 0),
        };
        let their_text = render(op, prefix, their_unique);
        let our_text = render(op, prefix, our_unique);
        let mut their_reply = unpad(&theirs.normalise(&conn.call(their_text.as_bytes())));
        let mut our_reply = unpad(&ours.normalise(&ours_call(&our_text)));
        let sized = match op {
            Op::Meta { cmd: "mg", key, .. } | Op::Debug { key, .. } => counted[*key],
            _ => false,
        };
        if sized {
            their_reply = mask_sizes(&their_reply);
            our_reply = mask_sizes(&our_reply);
        }
        track_counts(&mut counted, op);
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
