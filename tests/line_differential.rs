//! Line-level differential test: generated command lines, mostly malformed or unusual ones,
//! are sent byte for byte to a real memcached 1.6.18 and to memroute, and the replies must be
//! identical, including whether the connection is closed afterwards.
//!
//! Two memroute setups are compared, each against its own memcached:
//! - `embedded`: memroute serving its embedded cache (`--embedded`);
//! - `backends`: memroute over three real memcached backends (`--hash md5`).
//!
//! Every case runs on a fresh connection after `flush_all` and a few plain `set`s (the same
//! on both sides, on a separate control connection); its bytes are followed, in the same
//! write, by a probe `get <prefix>P` of a key set up with the value `ok`. The reply is read
//! until the probe's reply arrives (the connection is still in sync), the connection
//! closes, or nothing arrives for [`SILENCE`] (e.g. the server is still reading a data block
//! that swallowed the probe). In a case containing `flush_all`, a bare `END` also counts as
//! the probe's reply, and stays in the compared bytes. Before comparing, CAS uniques in
//! `gets`/`gats` replies become `<cas>`, `VERSION …` lines `VERSION <version>` and `STAT`
//! blocks `<stats block>` (memroute answers those itself); `shutdown` replies are compared
//! by first word only. Meta commands (`mg ms md ma mn me`) and memcached's admin commands
//! (`watch`, `lru`, `lru_crawler`, `slabs`, `cache_memlimit`, …) are never generated.
//!
//! Cases come from [`KNOWN_CASES`] (hand-written) and from a grammar driven by a seeded RNG
//! ([`SEEDS`]; case `i` of seed `s` has its own RNG, so any case can be regenerated alone).
//! All differing cases are collected and grouped by a coarse signature (command, first
//! differing reply line of each side, how each connection ended, over both setups); one
//! example per group is re-run to confirm it, shrunk (tokens dropped or made plain while
//! the same difference remains), and its essential features found (those whose reversal
//! alone makes the replies equal). The report lists kinds of difference (command family
//! and essential features), most frequent first, with one example per distinct pair of
//! replies, then the known cases that differ, and the test fails.
//!
//! Knobs (environment):
//! - `LINE_DIFF_CASES`: generated cases per seed; `LINE_DIFF_SEEDS`: comma-separated seeds;
//! - `LINE_DIFF_WORKERS`: rigs per setup; `LINE_DIFF_NO_SHRINK=1`: confirm only;
//! - `LINE_DIFF_CASE=<seed>:<index>` (or `known:<index>`): run that one case on both
//!   setups, print it in full and shrink it if it differs (`LINE_DIFF_TRACE=1` shows each
//!   step);
//! - `LINE_DIFF_MAX_GROUPS`: kinds printed with examples (default 50; the rest get a line).
//!
//! In printed bytes, a run of 12 or more equal bytes is shown as `{k×300}`, and the middle
//! of anything longer than 400 characters is left out (`LINE_DIFF_CASE` prints it whole).

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Memcached, Proxy};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Hand-written cases known to be interesting (sent as is, after the flush; keys are
/// literal, the probe key is the case's own).
const KNOWN_CASES: &[&[u8]] = &[
    b"set k 0 0 2147483647\r\n",
    b"set k 0 0 2147483647\r\nx\r\n",
    b"set k 0 0 4294967297\r\nx\r\n",
    b"set k +5 0 1\r\nx\r\nget k\r\n",
    b"set k -0 0 1\r\nx\r\nget k\r\n",
    b"set k 4294967296 0 1\r\nx\r\nget k\r\n",
    b"set k 00000000000000000000005 0 1\r\nx\r\nget k\r\n",
    b"set k 1\t 0 1\r\nx\r\nget k\r\n",
    b"set k 0 0 0x1\r\nx\r\n",
    b"set k 0 0 1 noreply   \r\nx\r\nget k\r\n",
    b"set k 0 0 1 noreply extra\r\nx\r\n",
    b"set k 0 0 2000000\r\nxx\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST /x HTTP/1.1\r\n",
    b"Get / HTTP/1.0\r\n",
    b"get / HTTP/1.0\r\n",
    b"gxx / HTTP/1.1\r\n",
    b"g HTTP/1.0\r\n",
    b"mx HTTP/1.0\r\n",
    b"version HTTP/1.0\r\n",
    b"GET k HTTP/1.1 extra\r\n",
    b"x a b c d e f g h i j k l n o p q r s t u v w y HTTP/1.0\r\n",
    b"x a b c d e f g h i j k l n o p q r s t u HTTP/1.0\r\n",
    b"set k\x01 0 0 1\r\nx\r\nget k\x01\r\n",
    b"set k\x7f 0 0 1\r\nx\r\nget k\x7f\r\n",
    b"set k\xc3\xa9 0 0 1\r\nx\r\nget k\xc3\xa9\r\n",
    b"get a\x00b\r\n",
    b"\x00get k\r\n",
    b"set k 0 0 1\r\nx\r\nget k\r\r\n",
    b"set k\r 0 0 1\r\nx\r\nget k\r\r\n",
    b"set k 0 0 1\r\nx\r\nget k\n",
    b"set k 0 0 1\r\nx\r\nget\tk\r\n",
    b"set n 0 0 2\r\n10\r\nincr n +5\r\n",
    b"set n 0 0 2\r\n10\r\nincr n -0\r\n",
    b"set n 0 0 2\r\n10\r\ndecr n 5\t\r\n",
    b"set k 0 0 1\r\nx\r\ntouch k 10\t\r\n",
    b"set k 0 0 1\r\nx\r\ntouch k 4294967296\r\n",
    b"set k 0 0 1\r\nx\r\ngat +10 k\r\n",
    b"set k 0 0 1\r\nx\r\ncas k 0 0 1 -0\r\ny\r\n",
    b"flush_all -0\r\n",
    b"flush_all +1000\r\n",
    b"flush_all 0x10\r\n",
    b"flush_all 18446744073709551615\r\n",
    b"flush_all 4294967296\r\n",
    b"set k 0 0 1\r\nx\r\ngats 18446744073709551615 k\r\n",
    b"verbosity +1\r\n",
    b"verbosity 1\t\r\n",
    b"verbosity noreply\r\n",
    b"delete noreply\r\n",
    b"set noreply 0 0 1\r\nx\r\ndelete noreply\r\nget noreply\r\n",
    b"bget k\r\n",
    b"\r\n",
    b"\n",
    b"   \r\n",
    b"\t\r\n",
    b"get a b c d e f g h i j k l n o p q r s t u v w x y z 1 2 3 4\r\n",
    b"delete a b c d e f g h i j k l n o p q r s t u v w x y z\r\n",
    b"incr a b c d e f g h i j k l n o p q r s t u v w x y z\r\n",
];

/// The seeds of the generated cases.
const SEEDS: &[u64] = &[0x5eed_0001, 0x5eed_0002, 0x5eed_0003];
/// Generated cases per seed (LINE_DIFF_CASES overrides).
const CASES_PER_SEED: usize = 1000;
/// How long a connection must stay quiet before its reply counts as complete.
const SILENCE: Duration = Duration::from_millis(250);
/// Rigs (memcached + memroute) per setup, each running cases one after another.
const WORKERS: usize = 6;

/// First tokens never generated: meta commands (memroute does not support them yet) and
/// memcached's admin commands, which change its state or the connection's mode.
const EXCLUDED_WORDS: &[&[u8]] = &[
    b"mg",
    b"ms",
    b"md",
    b"ma",
    b"mn",
    b"me",
    b"watch",
    b"lru",
    b"lru_crawler",
    b"slabs",
    b"cache_memlimit",
    b"extstore",
    b"refresh_certs",
    b"misbehave",
    b"debugtime",
];

// ---------------------------------------------------------------------------------------
// Cases.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum SetupKind {
    Embedded,
    Backends,
}

impl SetupKind {
    fn name(self) -> &'static str {
        match self {
            SetupKind::Embedded => "embedded",
            SetupKind::Backends => "backends",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Known(usize),
    Generated { seed: u64, index: usize },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Known(i) => write!(f, "known:{i}"),
            Origin::Generated { seed, index } => write!(f, "{seed:#x}:{index}"),
        }
    }
}

/// A `set` run before the case (plain, valid, the same on both sides).
#[derive(Clone, Debug)]
struct SetupItem {
    key: Vec<u8>,
    flags: u32,
    value: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Cmd,
    Key,
    Flags,
    Exptime,
    Len,
    Cas,
    Delta,
    Level,
    Delay,
    Noreply,
    Junk,
    Http,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Cmd => "cmd",
            Role::Key => "key",
            Role::Flags => "flags",
            Role::Exptime => "exptime",
            Role::Len => "len",
            Role::Cas => "cas",
            Role::Delta => "delta",
            Role::Level => "level",
            Role::Delay => "delay",
            Role::Noreply => "noreply",
            Role::Junk => "junk",
            Role::Http => "http",
        }
    }
}

/// One token of a generated line. `feats` describe what is unusual about it (empty: it is
/// plain); `plain` is what the shrinker may replace it with (None: it can only be dropped,
/// or, for the command word, nothing); `num` is a number's (value, form), so the shrinker
/// can make either plain alone.
#[derive(Clone, Debug)]
struct Tok {
    bytes: Vec<u8>,
    role: Role,
    feats: Vec<String>,
    plain: Option<Vec<u8>>,
    num: Option<(String, &'static str)>,
}

/// A piece of a line with a plain default (separators, line end, …).
#[derive(Clone, Debug)]
struct Piece {
    bytes: Vec<u8>,
    feature: Option<&'static str>,
}

impl Piece {
    fn plain(bytes: &[u8]) -> Piece {
        Piece {
            bytes: bytes.to_vec(),
            feature: None,
        }
    }
    fn odd(bytes: &[u8], feature: &'static str) -> Piece {
        Piece {
            bytes: bytes.to_vec(),
            feature: Some(feature),
        }
    }
}

/// The data block after a storage command: its length is what memcached reads from the
/// length token (see [`mc_strtol_i32`]) plus `delta`, then `term`.
#[derive(Clone, Debug)]
struct DataSpec {
    delta: i64,
    term: Piece,
    fill: u8,
}

/// A generated case: one command line (maybe a data block, maybe extra lines).
#[derive(Clone, Debug)]
struct GenLine {
    /// The command word before mutation (for grouping); `<empty>` for blank lines.
    base: String,
    lead: Piece,
    toks: Vec<Tok>,
    /// `seps[i]` goes before `toks[i + 1]`.
    seps: Vec<Piece>,
    trail: Piece,
    /// A NUL byte inserted at this offset of the line (before its end).
    nul_at: Option<usize>,
    end: Piece,
    data: Option<DataSpec>,
    extra: Piece,
}

const PLAIN_SEP: &[u8] = b" ";
const PLAIN_END: &[u8] = b"\r\n";
/// Data bytes: no 'l', 'm', 'q', 'w' (so a data line read as a command can never spell a
/// meta or admin command, or `quit`), no '-', no space.
const DATA_ALPHABET: &[u8] = b"abcdefghijknoprstuvxyz0123456789";

impl GenLine {
    fn line(&self) -> Vec<u8> {
        let mut line = self.lead.bytes.clone();
        for (i, t) in self.toks.iter().enumerate() {
            if i > 0 {
                line.extend_from_slice(&self.seps[i - 1].bytes);
            }
            line.extend_from_slice(&t.bytes);
        }
        line.extend_from_slice(&self.trail.bytes);
        if let Some(at) = self.nul_at {
            let at = at.min(line.len());
            line.insert(at, 0);
        }
        line
    }

    fn render(&self) -> Vec<u8> {
        let mut out = self.line();
        out.extend_from_slice(&self.end.bytes);
        if let Some(d) = &self.data {
            let declared = self
                .toks
                .iter()
                .find(|t| t.role == Role::Len)
                .and_then(|t| mc_strtol_i32(&t.bytes))
                .filter(|v| (0..=8192).contains(v))
                .map(|v| v as i64)
                .unwrap_or(3);
            let n = (declared + d.delta).max(0) as usize;
            out.extend(
                (0..n).map(|i| {
                    DATA_ALPHABET[(d.fill as usize + i * 7 + i / 31) % DATA_ALPHABET.len()]
                }),
            );
            out.extend_from_slice(&d.term.bytes);
        }
        out.extend_from_slice(&self.extra.bytes);
        out
    }

    /// The case's shape for grouping: tokens by role, unusual ones annotated, then the
    /// other unusual pieces.
    fn skeleton(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for t in &self.toks {
            let s = match t.role {
                Role::Cmd => escape(&t.bytes),
                Role::Noreply if t.feats.is_empty() => "noreply".into(),
                Role::Junk | Role::Http => format!("J({})", escape(&t.bytes)),
                r => {
                    let letter = match r {
                        Role::Key => "K",
                        _ => "N",
                    };
                    if t.feats.is_empty() {
                        letter.to_string()
                    } else {
                        format!("{letter}[{}]", t.feats.join(","))
                    }
                }
            };
            parts.push(s);
        }
        let mut s = parts.join(" ");
        let mut extra: Vec<String> = Vec::new();
        if let Some(f) = self.lead.feature {
            extra.push(f.into());
        }
        for sep in &self.seps {
            if let Some(f) = sep.feature {
                if !extra.iter().any(|e| e == f) {
                    extra.push(f.into());
                }
            }
        }
        if let Some(f) = self.trail.feature {
            extra.push(f.into());
        }
        if self.nul_at.is_some() {
            extra.push("nul".into());
        }
        if let Some(f) = self.end.feature {
            extra.push(f.into());
        }
        if let Some(d) = &self.data {
            if d.delta != 0 {
                extra.push(format!("data{:+}", d.delta));
            }
            if let Some(f) = d.term.feature {
                extra.push(f.into());
            }
        }
        if let Some(f) = self.extra.feature {
            extra.push(f.into());
        }
        if !extra.is_empty() {
            s.push_str(" {");
            s.push_str(&extra.join(","));
            s.push('}');
        }
        s
    }
}

#[derive(Clone, Debug)]
enum Body {
    Raw(Vec<u8>),
    Gen(Box<GenLine>),
}

#[derive(Clone, Debug)]
struct Case {
    origin: Origin,
    /// Fixed-width key prefix unique to the case; the probe key is `<prefix>P`.
    prefix: String,
    setup: Vec<SetupItem>,
    body: Body,
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        match &self.body {
            Body::Raw(b) => b.clone(),
            Body::Gen(g) => g.render(),
        }
    }

    fn probe_key(&self) -> String {
        format!("{}P", self.prefix)
    }

    fn probe_request(&self) -> Vec<u8> {
        format!("get {}\r\n", self.probe_key()).into_bytes()
    }

    fn probe_reply(&self) -> Vec<u8> {
        format!("VALUE {} 0 2\r\nok\r\nEND\r\n", self.probe_key()).into_bytes()
    }

    /// The command word as memcached reads it from the first line.
    fn first_word(&self) -> Vec<u8> {
        let bytes = self.bytes();
        let line = first_line(&bytes);
        mc_tokens(line).into_iter().next().unwrap_or_default()
    }

    /// Replies compared by first word only.
    fn loose(&self) -> bool {
        self.first_word() == b"shutdown"
    }

    fn base(&self) -> String {
        match &self.body {
            Body::Raw(_) => "known".into(),
            Body::Gen(g) => g.base.clone(),
        }
    }

    fn skeleton(&self) -> String {
        match &self.body {
            Body::Raw(b) => format!("known {}", escape(b)),
            Body::Gen(g) => g.skeleton(),
        }
    }
}

/// The first line of `bytes` as memcached cuts it: up to `\n`, without one `\r` before it
/// (unless the line is just `\r`), cut at a NUL (memcached uses strlen).
fn first_line(bytes: &[u8]) -> &[u8] {
    let mut line = match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => &bytes[..i],
        None => bytes,
    };
    if line.len() > 1 && line.ends_with(b"\r") {
        line = &line[..line.len() - 1];
    }
    if let Some(nul) = line.iter().position(|b| *b == 0) {
        line = &line[..nul];
    }
    line
}

/// memcached's tokens of a line: split on spaces only.
fn mc_tokens(line: &[u8]) -> Vec<Vec<u8>> {
    line.split(|b| *b == b' ')
        .filter(|t| !t.is_empty())
        .map(|t| t.to_vec())
        .collect()
}

/// What memcached's `safe_strtol` reads from a token (64-bit strtol, then truncated to 32
/// bits); None where it refuses. Used only to size generated data blocks.
fn mc_strtol_i32(tok: &[u8]) -> Option<i32> {
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let mut i = 0;
    while i < tok.len() && space(tok[i]) {
        i += 1;
    }
    let mut neg = false;
    if i < tok.len() && (tok[i] == b'+' || tok[i] == b'-') {
        neg = tok[i] == b'-';
        i += 1;
    }
    let start = i;
    let mut v: i128 = 0;
    while i < tok.len() && tok[i].is_ascii_digit() {
        v = (v * 10 + (tok[i] - b'0') as i128).min(i128::from(u64::MAX) * 10);
        i += 1;
    }
    if i == start || (i < tok.len() && !space(tok[i])) {
        return None;
    }
    let v = if neg { -v } else { v };
    if v > i64::MAX as i128 || v < i64::MIN as i128 {
        return None;
    }
    Some(v as i64 as i32)
}

// ---------------------------------------------------------------------------------------
// The grammar.

fn weighted<'a, T>(rng: &mut StdRng, items: &'a [(T, u32)]) -> &'a T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut r = rng.gen_range(0..total);
    for (item, w) in items {
        if r < *w {
            return item;
        }
        r -= w;
    }
    unreachable!()
}

const COMMANDS: &[(&str, u32)] = &[
    ("get", 10),
    ("gets", 5),
    ("gat", 4),
    ("gats", 3),
    ("bget", 2),
    ("set", 10),
    ("add", 3),
    ("replace", 3),
    ("append", 3),
    ("prepend", 3),
    ("cas", 6),
    ("delete", 6),
    ("incr", 5),
    ("decr", 4),
    ("touch", 5),
    ("verbosity", 3),
    ("version", 2),
    ("flush_all", 3),
    ("stats", 2),
    ("quit", 1),
    ("shutdown", 1),
    ("<unknown>", 8),
    ("<empty>", 2),
];

const UNKNOWN_WORDS: &[&str] = &[
    "bogus", "getx", "gett", "sets", "foo", "x", "g", "s", "d", "t", "1", "GET", "SET", "Get",
    "DELETE", "POST", "HEAD", "PUT", "mx", "m1", "mz", "MG", "flush", "ver", "stat", "deletes",
    "incrr", "touchy", "casx", "add_", "quitx", "versions", "_", "/", "noreply", "HTTP/1.0",
    "\x01", "\x7f", "\u{e9}",
];

const BOUNDARY_NUMBERS: &[&str] = &[
    "2147483646",
    "2147483647",
    "2147483648",
    "2147483649",
    "4294967295",
    "4294967296",
    "4294967297",
    "1234567890",
    "12345678901",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "12345678901234567890",
    "123456789012345678901",
];

fn plain_number(role: Role) -> &'static str {
    match role {
        Role::Len => "2",
        Role::Delta | Role::Level => "1",
        _ => "0",
    }
}

/// A number token for `role`: a typical or boundary value in a plain or odd form.
fn number(rng: &mut StdRng, role: Role) -> Tok {
    let typical: &[&str] = match role {
        Role::Flags => &["0", "0", "1", "5", "65535", "4294967295"],
        Role::Exptime => &["0", "0", "0", "100", "-1", "3600", "2592000", "2592001"],
        Role::Len => &["0", "1", "2", "2", "3", "5", "10", "100", "1000", "3000"],
        Role::Cas => &["{CAS}", "{CAS}", "{CAS}", "0", "1", "99999999999"],
        Role::Delta => &["0", "1", "1", "5", "100", "18446744073709551615"],
        Role::Level => &["0", "1", "1", "2", "5"],
        Role::Delay => &["0", "0", "100", "100000", "-1", "2592001"],
        _ => &["0", "1", "2"],
    };
    let value: &str = if rng.gen_bool(0.82) {
        typical.choose(rng).unwrap()
    } else {
        BOUNDARY_NUMBERS.choose(rng).unwrap()
    };
    let forms: &[(&str, u32)] = &[
        ("", 60),
        ("+N", 5),
        ("-N", 5),
        ("-0", 3),
        ("0N", 4),
        ("N\\t", 4),
        ("N\\r", 3),
        ("\\tN", 2),
        ("hex", 3),
        ("Nx", 3),
        ("empty", 3),
        ("N.5", 2),
        ("+0", 2),
    ];
    let form = *weighted(rng, forms);
    num_tok(role, value, form)
}

/// A number token for `role` with `value` written in `form`.
fn num_tok(role: Role, value: &str, form: &'static str) -> Tok {
    let bytes: String = match form {
        "" => value.to_string(),
        "+N" => format!("+{value}"),
        "-N" => format!("-{value}"),
        "-0" => "-0".into(),
        "0N" => format!("000{value}"),
        "N\\t" => format!("{value}\t"),
        "N\\r" => format!("{value}\r"),
        "\\tN" => format!("\t{value}"),
        "hex" => match value.parse::<u128>() {
            Ok(v) => format!("0x{v:x}"),
            Err(_) => "0x1".into(),
        },
        "Nx" => format!("{value}x"),
        "empty" => String::new(),
        "N.5" => format!("{value}.5"),
        "+0" => "+0".into(),
        _ => unreachable!(),
    };
    let plain = plain_number(role);
    let mut feats = Vec::new();
    if !value_ignored(form) && value != plain {
        feats.push(format!("{}={value}", role.name()));
    }
    if !form.is_empty() {
        feats.push(format!("{}:{form}", role.name()));
    }
    Tok {
        bytes: bytes.into_bytes(),
        role,
        feats,
        plain: Some(plain.as_bytes().to_vec()),
        num: Some((value.to_string(), form)),
    }
}

/// Forms that do not show the value.
fn value_ignored(form: &str) -> bool {
    matches!(form, "-0" | "+0" | "empty")
}

/// A key token in slot `slot` (`a`, `b`, `c` may be set up; others are fresh).
fn key(rng: &mut StdRng, prefix: &str, slot: u8) -> Tok {
    let plain = {
        let mut k = prefix.as_bytes().to_vec();
        k.push(slot);
        k
    };
    let pad = |len: usize| {
        let mut k = plain.clone();
        k.resize(len, b'k');
        k
    };
    let with = |suffix: &[u8]| {
        let mut k = plain.clone();
        k.extend_from_slice(suffix);
        k
    };
    let kinds: &[(&str, u32)] = &[
        ("", 60),
        ("len1", 3),
        ("len249", 2),
        ("len250", 3),
        ("len251", 3),
        ("len300", 2),
        ("ctrl01", 2),
        ("ctrl7f", 2),
        ("ctrl1b", 1),
        ("high80", 1),
        ("utf8", 1),
        ("highff", 1),
        ("tab-inside", 2),
        ("cr-inside", 2),
        ("cr-end", 2),
        ("noreply", 3),
        ("NOREPLY", 1),
    ];
    let kind = *weighted(rng, kinds);
    let bytes = match kind {
        "" => plain.clone(),
        "len1" => vec![slot],
        "len249" => pad(249),
        "len250" => pad(250),
        "len251" => pad(251),
        "len300" => pad(300),
        "ctrl01" => with(b"\x01z"),
        "ctrl7f" => with(b"\x7fz"),
        "ctrl1b" => with(b"\x1b[0m"),
        "high80" => with(b"\x80"),
        "utf8" => with("é".as_bytes()),
        "highff" => with(b"\xff\xfe"),
        "tab-inside" => {
            let mut k = prefix.as_bytes().to_vec();
            k.push(b'\t');
            k.push(slot);
            k
        }
        "cr-inside" => {
            let mut k = prefix.as_bytes().to_vec();
            k.push(b'\r');
            k.push(slot);
            k
        }
        "cr-end" => with(b"\r"),
        "noreply" => b"noreply".to_vec(),
        "NOREPLY" => b"NOREPLY".to_vec(),
        _ => unreachable!(),
    };
    Tok {
        bytes,
        role: Role::Key,
        feats: if kind.is_empty() {
            Vec::new()
        } else {
            vec![format!("key:{kind}")]
        },
        plain: Some(plain),
        num: None,
    }
}

fn noreply_tok() -> Tok {
    Tok {
        bytes: b"noreply".to_vec(),
        role: Role::Noreply,
        feats: Vec::new(),
        plain: None,
        num: None,
    }
}

/// An extra token: words, numbers, noreply variants, keys.
fn junk(rng: &mut StdRng, prefix: &str) -> Tok {
    let choices: &[(&str, u32)] = &[
        ("word", 4),
        ("number", 4),
        ("noreply", 3),
        ("noreply-odd", 1),
        ("key", 4),
        ("http", 1),
    ];
    let bytes: Vec<u8> = match *weighted(rng, choices) {
        "word" => [
            "x", "foo", "abc", "0", "1", "-1", "zz", "a.b", "/", "__", "\x01",
        ]
        .choose(rng)
        .unwrap()
        .as_bytes()
        .to_vec(),
        "number" => {
            let role = *[Role::Flags, Role::Exptime, Role::Len, Role::Delta]
                .choose(rng)
                .unwrap();
            let mut t = number(rng, role);
            if t.bytes.is_empty() || t.bytes == b"{CAS}" {
                t.bytes = b"7".to_vec();
            }
            t.bytes
        }
        "noreply" => b"noreply".to_vec(),
        "noreply-odd" => [
            &b"NOREPLY"[..],
            b"noreply\r",
            b"noreply\t",
            b"noreplyx",
            b"norepl",
        ]
        .choose(rng)
        .unwrap()
        .to_vec(),
        "key" => {
            let slot = *b"abcdefg".choose(rng).unwrap();
            key(rng, prefix, slot).bytes
        }
        "http" => [&b"HTTP/1.0"[..], b"HTTP/1.1", b"HTTP/"]
            .choose(rng)
            .unwrap()
            .to_vec(),
        _ => unreachable!(),
    };
    Tok {
        bytes,
        role: Role::Junk,
        feats: Vec::new(),
        plain: None,
        num: None,
    }
}

fn cmd_tok(rng: &mut StdRng, word: &str) -> Tok {
    let plain = word.as_bytes().to_vec();
    if COMMANDS.iter().any(|(c, _)| *c == word) && rng.gen_bool(0.12) {
        let mutations: &[(&str, u32)] = &[
            ("upper", 3),
            ("title", 1),
            ("suffix", 2),
            ("1char", 2),
            ("tab-end", 1),
            ("cr-end", 1),
        ];
        let m = *weighted(rng, mutations);
        let bytes = match m {
            "upper" => word.to_ascii_uppercase().into_bytes(),
            "title" => {
                let mut b = plain.clone();
                b[0] = b[0].to_ascii_uppercase();
                b
            }
            "suffix" => format!("{word}x").into_bytes(),
            "1char" => plain[..1].to_vec(),
            "tab-end" => format!("{word}\t").into_bytes(),
            "cr-end" => format!("{word}\r").into_bytes(),
            _ => unreachable!(),
        };
        return Tok {
            bytes,
            role: Role::Cmd,
            feats: vec![format!("cmd:{m}")],
            plain: Some(plain),
            num: None,
        };
    }
    Tok {
        bytes: plain,
        role: Role::Cmd,
        feats: Vec::new(),
        plain: None,
        num: None,
    }
}

fn key_count(rng: &mut StdRng) -> usize {
    if rng.gen_bool(0.12) {
        return rng.gen_range(20..=30);
    }
    *weighted(
        rng,
        &[
            (0usize, 3),
            (1, 45),
            (2, 15),
            (3, 10),
            (5, 5),
            (8, 3),
            (9, 3),
        ],
    )
}

/// Generates case `index` of `seed`.
fn generate(seed: u64, index: usize, seed_no: usize) -> Case {
    let prefix = format!("q{seed_no}{index:05}");
    let mut attempt = 0u64;
    loop {
        let mut rng =
            StdRng::seed_from_u64(common::mix(seed ^ common::mix(index as u64)) ^ attempt);
        let case = generate_one(&mut rng, seed, index, &prefix);
        // Never send meta or admin commands, on any line.
        let bytes = case.bytes();
        let excluded = bytes.split(|b| *b == b'\n').any(|l| {
            let l = first_line(l);
            mc_tokens(l)
                .first()
                .is_some_and(|w| EXCLUDED_WORDS.contains(&w.as_slice()))
        });
        if !excluded {
            return case;
        }
        attempt += 1;
    }
}

fn generate_one(rng: &mut StdRng, seed: u64, index: usize, prefix: &str) -> Case {
    let base = *weighted(rng, COMMANDS);
    let mut toks: Vec<Tok> = Vec::new();
    let mut data = false;
    let keys = |rng: &mut StdRng, n: usize| -> Vec<Tok> {
        (0..n)
            .map(|i| key(rng, prefix, b"abcdefghijknoprstuvxyz"[i % 22]))
            .collect()
    };
    let maybe_noreply = |rng: &mut StdRng, toks: &mut Vec<Tok>| {
        if rng.gen_bool(0.2) {
            toks.push(noreply_tok());
        }
    };
    let word = if base == "<unknown>" {
        UNKNOWN_WORDS.choose(rng).unwrap().to_string()
    } else {
        base.to_string()
    };
    if base != "<empty>" {
        toks.push(cmd_tok(rng, &word));
    }
    match base {
        "get" | "gets" | "bget" => {
            let n = key_count(rng);
            toks.extend(keys(rng, n));
        }
        "gat" | "gats" => {
            toks.push(number(rng, Role::Exptime));
            let n = key_count(rng);
            toks.extend(keys(rng, n));
        }
        "set" | "add" | "replace" | "append" | "prepend" | "cas" => {
            toks.push(key(rng, prefix, b'a'));
            toks.push(number(rng, Role::Flags));
            toks.push(number(rng, Role::Exptime));
            toks.push(number(rng, Role::Len));
            if base == "cas" {
                toks.push(number(rng, Role::Cas));
            }
            maybe_noreply(rng, &mut toks);
            data = rng.gen_bool(0.95);
        }
        "delete" => {
            toks.push(key(rng, prefix, b'a'));
            match rng.gen_range(0..8) {
                0 => toks.push(number(rng, Role::Delay)),
                1 => toks.push(noreply_tok()),
                2 => {
                    toks.push(number(rng, Role::Delay));
                    toks.push(noreply_tok());
                }
                _ => {}
            }
        }
        "incr" | "decr" => {
            toks.push(key(rng, prefix, b'a'));
            toks.push(number(rng, Role::Delta));
            maybe_noreply(rng, &mut toks);
        }
        "touch" => {
            toks.push(key(rng, prefix, b'a'));
            toks.push(number(rng, Role::Exptime));
            maybe_noreply(rng, &mut toks);
        }
        "verbosity" => {
            toks.push(number(rng, Role::Level));
            maybe_noreply(rng, &mut toks);
        }
        "flush_all" => {
            if rng.gen_bool(0.6) {
                toks.push(number(rng, Role::Delay));
            }
            maybe_noreply(rng, &mut toks);
        }
        "version" | "stats" | "quit" | "shutdown" => {
            for _ in 0..*weighted(rng, &[(0usize, 6), (1, 2), (2, 1)]) {
                toks.push(junk(rng, prefix));
            }
        }
        "<unknown>" => {
            for _ in 0..rng.gen_range(0..5) {
                let t = if rng.gen_bool(0.5) {
                    junk(rng, prefix)
                } else {
                    key(rng, prefix, b'a')
                };
                toks.push(t);
            }
        }
        "<empty>" => {}
        _ => unreachable!("{base}"),
    }

    // Token count mutations: extra tokens anywhere after the command, or dropped ones.
    if !toks.is_empty() {
        if rng.gen_bool(0.18) {
            let many = rng.gen_range(7..=30);
            let target = *weighted(rng, &[(toks.len() + 1, 4), (toks.len() + 2, 2), (many, 3)]);
            while toks.len() < target.min(30) {
                let at = rng.gen_range(1..=toks.len());
                let t = junk(rng, prefix);
                toks.insert(at, t);
            }
        }
        if toks.len() > 1 && rng.gen_bool(0.08) {
            let at = rng.gen_range(1..toks.len());
            toks.remove(at);
        }
        // noreply somewhere else.
        if rng.gen_bool(0.08) {
            let at = rng.gen_range(1..=toks.len());
            toks.insert(at, noreply_tok());
        }
        // HTTP/1.x as the last token.
        if rng.gen_bool(0.05) {
            toks.push(Tok {
                bytes: [&b"HTTP/1.0"[..], b"HTTP/1.1"]
                    .choose(rng)
                    .unwrap()
                    .to_vec(),
                role: Role::Http,
                feats: Vec::new(),
                plain: None,
                num: None,
            });
        }
        // A CR at the end of, or a tab inside, some token.
        if rng.gen_bool(0.05) {
            let i = rng.gen_range(0..toks.len());
            let t = &mut toks[i];
            let plain = t.plain.clone().unwrap_or_else(|| t.bytes.clone());
            t.bytes.push(b'\r');
            t.feats.push(format!("{}:cr-end", t.role.name()));
            t.plain = Some(plain);
            t.num = None;
        }
        if rng.gen_bool(0.03) {
            let i = rng.gen_range(0..toks.len());
            let t = &mut toks[i];
            let plain = t.plain.clone().unwrap_or_else(|| t.bytes.clone());
            let at = rng.gen_range(0..=t.bytes.len());
            t.bytes.insert(at, b'\t');
            t.feats.push(format!("{}:tab-inside", t.role.name()));
            t.plain = Some(plain);
            t.num = None;
        }
    }

    let seps: Vec<Piece> = (1..toks.len().max(1))
        .map(|_| match rng.gen_range(0..100) {
            0..=91 => Piece::plain(PLAIN_SEP),
            92..=95 => Piece::odd(b"  ", "sep:spaces"),
            96..=97 => Piece::odd(b"    ", "sep:spaces"),
            _ => Piece::odd(b"\t", "sep:tab"),
        })
        .collect();
    let lead = if base == "<empty>" {
        match rng.gen_range(0..4) {
            0 => Piece::plain(b""),
            1 => Piece::odd(b"   ", "lead:spaces"),
            2 => Piece::odd(b"\t", "lead:tab"),
            _ => Piece::odd(b"\r", "lead:cr"),
        }
    } else {
        match rng.gen_range(0..100) {
            0..=91 => Piece::plain(b""),
            92..=96 => Piece::odd(b" ", "lead:spaces"),
            97..=98 => Piece::odd(b"    ", "lead:spaces"),
            _ => Piece::odd(b"\t", "lead:tab"),
        }
    };
    let trail = match rng.gen_range(0..100) {
        0..=91 => Piece::plain(b""),
        92..=97 => Piece::odd(b"   ", "trail:spaces"),
        _ => Piece::odd(b" \t", "trail:space-tab"),
    };
    let end = match rng.gen_range(0..100) {
        0..=81 => Piece::plain(PLAIN_END),
        82..=90 => Piece::odd(b"\n", "end:lf"),
        91..=94 => Piece::odd(b"\r\r\n", "end:crcr"),
        95..=96 => Piece::odd(b"", "end:none"),
        _ => Piece::odd(b"\n\r\n", "end:lf+empty-line"),
    };
    let mut line = GenLine {
        base: base.to_string(),
        lead,
        toks,
        seps,
        trail,
        nul_at: None,
        end,
        data: None,
        extra: Piece::plain(b""),
    };
    if rng.gen_bool(0.04) {
        let len = line.line().len();
        line.nul_at = Some(rng.gen_range(0..=len));
    }
    if data {
        let delta = *weighted(
            rng,
            &[
                (0i64, 80),
                (-1, 5),
                (1, 5),
                (-2, 2),
                (2, 3),
                (10, 2),
                (-100, 1),
            ],
        );
        let term = match rng.gen_range(0..100) {
            0..=87 => Piece::plain(PLAIN_END),
            88..=91 => Piece::odd(b"\n", "term:lf"),
            92..=94 => Piece::odd(b"", "term:none"),
            95..=97 => Piece::odd(b"\r", "term:cr"),
            _ => Piece::odd(b"\r\r\n", "term:crcr"),
        };
        line.data = Some(DataSpec {
            delta,
            term,
            fill: rng.gen(),
        });
    }
    if line.toks.last().is_some_and(|t| t.role == Role::Http) && rng.gen_bool(0.5) {
        line.extra = Piece::odd(b"Host: localhost\r\n\r\n", "http-headers");
    }

    // State: the case's plain keys of slots a, b, c, each set up or not.
    let mut setup = Vec::new();
    let needs_cas = line.render().windows(5).any(|w| w == b"{CAS}");
    for slot in [b'a', b'b', b'c'] {
        let mut k = prefix.as_bytes().to_vec();
        k.push(slot);
        if (slot == b'a' && needs_cas) || rng.gen_bool(0.5) {
            let value: Vec<u8> = match rng.gen_range(0..9) {
                0 => b"10".to_vec(),
                1 => b"0".to_vec(),
                2 => b"abc".to_vec(),
                3 => b"9223372036854775807".to_vec(),
                4 => b"4294967295".to_vec(),
                5 => vec![b'x'; rng.gen_range(100..4000)],
                6 => b"".to_vec(),
                _ => b"v".to_vec(),
            };
            let flags = *[0u32, 0, 7, 4294967295].choose(rng).unwrap();
            setup.push(SetupItem {
                key: k,
                flags,
                value,
            });
        }
    }
    // Other keys the line names that memroute accepts (short ones, `noreply`).
    for t in &line.toks {
        if t.role == Role::Key
            && !t.bytes.starts_with(prefix.as_bytes())
            && t.bytes.iter().all(|b| (0x21..0x7f).contains(b))
            && !setup.iter().any(|s| s.key == t.bytes)
            && rng.gen_bool(0.5)
        {
            setup.push(SetupItem {
                key: t.bytes.clone(),
                flags: 0,
                value: b"10".to_vec(),
            });
        }
    }
    Case {
        origin: Origin::Generated { seed, index },
        prefix: prefix.to_string(),
        setup,
        body: Body::Gen(Box::new(line)),
    }
}

fn known_case(i: usize) -> Case {
    Case {
        origin: Origin::Known(i),
        prefix: format!("z{i:06}"),
        setup: Vec::new(),
        body: Body::Raw(KNOWN_CASES[i].to_vec()),
    }
}

// ---------------------------------------------------------------------------------------
// Running a case.

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    /// The probe's reply arrived: the connection is in sync.
    InSync,
    /// The server closed the connection.
    Closed,
    /// Nothing more arrived for [`SILENCE`] and the probe was not answered.
    Silent,
    /// The server kept sending.
    Flood,
}

impl End {
    fn name(&self) -> &'static str {
        match self {
            End::InSync => "in sync",
            End::Closed => "closed",
            End::Silent => "silent, probe unanswered",
            End::Flood => "flood",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    /// Normalised reply bytes before the probe's reply.
    reply: Vec<u8>,
    end: End,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// CAS uniques of `VALUE` lines become `<cas>`, `VERSION` lines `VERSION <version>`, and
/// `STAT` blocks (through their `END`) `<stats block>`.
fn normalize(reply: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = reply;
    while !rest.is_empty() {
        let Some(nl) = find(rest, b"\r\n") else {
            out.extend_from_slice(rest);
            break;
        };
        let line = &rest[..nl];
        let after = &rest[nl + 2..];
        if line.starts_with(b"VALUE ") {
            let toks: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            let len = toks
                .get(3)
                .and_then(|t| std::str::from_utf8(t).ok())
                .and_then(|t| t.parse::<usize>().ok());
            if let Some(len) = len {
                if after.len() >= len + 2 {
                    if toks.len() == 5 {
                        out.extend_from_slice(&toks[..4].join(&b' '));
                        out.extend_from_slice(b" <cas>");
                    } else {
                        out.extend_from_slice(line);
                    }
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&after[..len + 2]);
                    rest = &after[len + 2..];
                    continue;
                }
            }
        } else if line.starts_with(b"STAT ") {
            let mut r = rest;
            while let Some(nl) = find(r, b"\r\n") {
                if r.starts_with(b"STAT ") {
                    r = &r[nl + 2..];
                } else {
                    if &r[..nl] == b"END" {
                        r = &r[nl + 2..];
                    }
                    break;
                }
            }
            out.extend_from_slice(b"<stats block>\r\n");
            rest = r;
            continue;
        } else if line.starts_with(b"VERSION ") {
            out.extend_from_slice(b"VERSION <version>\r\n");
            rest = after;
            continue;
        }
        out.extend_from_slice(&rest[..nl + 2]);
        rest = after;
    }
    out
}

/// Reads a case's reply: through the probe's reply, a close, or [`SILENCE`]. With
/// `flushes` (the case may have flushed the probe key away), a bare `END` also ends it (and
/// stays in the reply, so a flush that happens on one side only still shows).
fn read_outcome(
    stream: &mut TcpStream,
    probe_reply: &[u8],
    flushes: bool,
    silence: Duration,
) -> Outcome {
    stream.set_read_timeout(Some(silence)).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let end = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break End::Closed,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.ends_with(probe_reply) {
                    buf.truncate(buf.len() - probe_reply.len());
                    break End::InSync;
                }
                if flushes && buf.ends_with(b"END\r\n") {
                    break End::InSync;
                }
                if buf.len() > (8 << 20) || started.elapsed() > Duration::from_secs(10) {
                    break End::Flood;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break End::Silent
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                break End::Closed
            }
            Err(e) => panic!("read: {e}"),
        }
    };
    Outcome {
        reply: normalize(&buf),
        end,
    }
}

/// A control connection: flush and setup before each case.
struct Ctl {
    stream: TcpStream,
}

impl Ctl {
    fn connect(port: u16) -> Result<Ctl, String> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("connect to {port}: {e}"))?;
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Ok(Ctl { stream })
    }

    /// Sends `req`, reads until the reply ends with `until`.
    fn call(&mut self, req: &[u8], until: &[u8]) -> Result<Vec<u8>, String> {
        self.stream
            .write_all(req)
            .map_err(|e| format!("control write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        while !buf.ends_with(until) {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(format!("control connection closed after {}", esc(&buf))),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("control read: {e} after {}", esc(&buf))),
            }
        }
        Ok(buf)
    }

    fn expect(&mut self, req: &[u8], reply: &[u8]) -> Result<(), String> {
        let got = self.call(req, reply)?;
        if got != reply {
            return Err(format!(
                "setup {} answered {}, expected {}",
                esc(req),
                esc(&got),
                esc(reply)
            ));
        }
        Ok(())
    }

    /// flush_all, the case's setup and its probe key; the CAS unique of `<prefix>a` (or 1).
    fn prepare(&mut self, case: &Case) -> Result<String, String> {
        self.expect(b"flush_all\r\n", b"OK\r\n")?;
        let mut sets = Vec::new();
        let items = case.setup.iter().cloned().chain([SetupItem {
            key: case.probe_key().into_bytes(),
            flags: 0,
            value: b"ok".to_vec(),
        }]);
        let mut n = 0;
        for item in items {
            sets.extend_from_slice(b"set ");
            sets.extend_from_slice(&item.key);
            sets.extend_from_slice(
                format!(" {} 0 {}\r\n", item.flags, item.value.len()).as_bytes(),
            );
            sets.extend_from_slice(&item.value);
            sets.extend_from_slice(b"\r\n");
            n += 1;
        }
        self.expect(&sets, &b"STORED\r\n".repeat(n))?;
        if !case.bytes().windows(5).any(|w| w == b"{CAS}") {
            return Ok("1".into());
        }
        let reply = self.call(format!("gets {}a\r\n", case.prefix).as_bytes(), b"END\r\n")?;
        let text = String::from_utf8_lossy(&reply);
        Ok(text
            .lines()
            .next()
            .filter(|l| l.starts_with("VALUE "))
            .and_then(|l| l.split(' ').nth(4))
            .unwrap_or("1")
            .to_string())
    }
}

/// One setup: a memcached to compare with, and memroute (with its backends).
struct Rig {
    kind: SetupKind,
    reference: Memcached,
    _backends: Vec<Memcached>,
    proxy: Proxy,
    ctl: Option<(Ctl, Ctl)>,
}

/// memcached without its LRU maintenance threads, whose races make incr results and
/// expiry nondeterministic (see tests/embedded_differential.rs).
fn start_memcached() -> Memcached {
    Memcached::start_with(&["-o", "no_lru_maintainer,no_lru_crawler"])
}

impl Rig {
    fn start(kind: SetupKind) -> Rig {
        let reference = start_memcached();
        let (backends, proxy) = match kind {
            SetupKind::Embedded => (
                Vec::new(),
                Proxy::start(&[], &["--embedded", "--threads", "1"]),
            ),
            SetupKind::Backends => {
                let backends: Vec<Memcached> = (0..3).map(|_| start_memcached()).collect();
                let servers: Vec<String> = backends.iter().map(|b| b.server(1)).collect();
                let proxy = Proxy::start(&servers, &["--hash", "md5", "--threads", "1"]);
                (backends, proxy)
            }
        };
        Rig {
            kind,
            reference,
            _backends: backends,
            proxy,
            ctl: None,
        }
    }

    fn ports(&self) -> (u16, u16) {
        (self.reference.port, self.proxy.port)
    }

    fn run(&mut self, case: &Case, silence: Duration) -> Result<(Outcome, Outcome), String> {
        let (ref_port, proxy_port) = self.ports();
        if self.ctl.is_none() {
            self.ctl = Some((Ctl::connect(ref_port)?, Ctl::connect(proxy_port)?));
        }
        let (ctl_ref, ctl_proxy) = self.ctl.as_mut().unwrap();
        let prepared = ctl_ref
            .prepare(case)
            .map_err(|e| format!("memcached: {e}"))
            .and_then(|a| {
                ctl_proxy
                    .prepare(case)
                    .map(|b| (a, b))
                    .map_err(|e| format!("memroute: {e}"))
            });
        let (cas_ref, cas_proxy) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.ctl = None;
                return Err(e);
            }
        };
        let template = case.bytes();
        let probe = case.probe_request();
        let probe_reply = case.probe_reply();
        let flushes = find(&template, b"flush_all").is_some();
        let side = |port: u16, cas: &str| -> Result<Outcome, String> {
            let mut bytes = substitute(&template, b"{CAS}", cas.as_bytes());
            bytes.extend_from_slice(&probe);
            let mut s = TcpStream::connect(("127.0.0.1", port))
                .map_err(|e| format!("connect to {port}: {e}"))?;
            s.set_nodelay(true).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            // A server that closes early may refuse the rest: the reading tells.
            let _ = s.write_all(&bytes);
            Ok(read_outcome(&mut s, &probe_reply, flushes, silence))
        };
        let (a, b) = std::thread::scope(|s| {
            let h = s.spawn(|| side(ref_port, &cas_ref));
            let b = side(proxy_port, &cas_proxy);
            (h.join().unwrap(), b)
        });
        Ok((a?, b?))
    }
}

fn substitute(bytes: &[u8], pat: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(pat) {
            out.extend_from_slice(with);
            i += pat.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn first_word(reply: &[u8]) -> Vec<u8> {
    let line = &reply[..find(reply, b"\r\n").unwrap_or(reply.len())];
    let w = line.split(|b| *b == b' ').next().unwrap_or_default();
    w.strip_suffix(b":").unwrap_or(w).to_vec()
}

fn same(case: &Case, mc: &Outcome, mr: &Outcome) -> bool {
    if case.loose() {
        first_word(&mc.reply) == first_word(&mr.reply) && mc.end == mr.end
    } else {
        mc == mr
    }
}

/// Text for grouping: the case prefix as `K`, digit runs as `N`, long runs shortened.
fn abstract_line(line: &[u8], prefix: &str) -> String {
    let line = substitute(line, prefix.as_bytes(), b"K");
    let s = esc_inner(&line);
    let mut out = String::new();
    let mut digits = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !digits {
                out.push('N');
            }
            digits = true;
        } else {
            digits = false;
            out.push(c);
        }
    }
    out.chars().take(60).collect()
}

/// How the two replies differ: the first differing line of each side and how each ended.
fn coarse_signature(case: &Case, mc: &Outcome, mr: &Outcome) -> String {
    let lines = |b: &[u8]| -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = Vec::new();
        let mut rest = b;
        while !rest.is_empty() {
            let n = find(rest, b"\r\n").map(|i| i + 2).unwrap_or(rest.len());
            v.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        v
    };
    let (a, b) = (lines(&mc.reply), lines(&mr.reply));
    let i = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let show = |v: &Vec<Vec<u8>>| match v.get(i) {
        Some(l) => abstract_line(l, &case.prefix),
        None => "-".into(),
    };
    format!(
        "{}: memcached {} [{}] / memroute {} [{}]",
        case.base(),
        show(&a),
        mc.end.name(),
        show(&b),
        mr.end.name()
    )
}

// ---------------------------------------------------------------------------------------
// Shrinking: smaller variants of a generated case that keep the same difference.

fn shrink_candidates(case: &Case) -> Vec<Case> {
    reduced_cases(case, false)
}

/// Variants of a case that each make one thing plain again (for finding the features a
/// difference needs): no token drops, except of tokens that have no plain form.
fn revert_candidates(case: &Case) -> Vec<Case> {
    reduced_cases(case, true)
}

fn reduced_cases(case: &Case, reverts_only: bool) -> Vec<Case> {
    let Body::Gen(g) = &case.body else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut push = |f: &dyn Fn(&mut GenLine)| {
        let mut c = case.clone();
        if let Body::Gen(g2) = &mut c.body {
            f(g2);
        }
        out.push(c);
    };
    // Drop tokens (not the command word), last first.
    for i in (1..g.toks.len()).rev() {
        if reverts_only && g.toks[i].plain.is_some() {
            continue;
        }
        push(&|g: &mut GenLine| {
            g.toks.remove(i);
            g.seps.remove(i - 1);
        });
    }
    for i in 0..g.toks.len() {
        let t = &g.toks[i];
        if !t.feats.is_empty() && t.plain.is_some() {
            push(&|g: &mut GenLine| {
                let t = &mut g.toks[i];
                t.bytes = t.plain.clone().unwrap();
                t.feats.clear();
                t.num = None;
            });
        }
        // A number's value or its form made plain alone.
        if let Some((value, form)) = t.num.clone() {
            let plain = plain_number(t.role);
            let role = t.role;
            if value != plain && !form.is_empty() && !value_ignored(form) {
                push(&|g: &mut GenLine| g.toks[i] = num_tok(role, plain, form));
            }
            if !form.is_empty() && value != plain {
                push(&|g: &mut GenLine| g.toks[i] = num_tok(role, &value, ""));
            }
        }
    }
    if g.seps.iter().any(|s| s.feature.is_some()) {
        push(&|g: &mut GenLine| {
            for s in &mut g.seps {
                *s = Piece::plain(PLAIN_SEP);
            }
        });
    }
    if g.lead.feature.is_some() {
        push(&|g: &mut GenLine| g.lead = Piece::plain(b""));
    }
    if g.trail.feature.is_some() {
        push(&|g: &mut GenLine| g.trail = Piece::plain(b""));
    }
    if g.nul_at.is_some() {
        push(&|g: &mut GenLine| g.nul_at = None);
    }
    if g.end.feature.is_some() {
        push(&|g: &mut GenLine| g.end = Piece::plain(PLAIN_END));
    }
    if g.extra.feature.is_some() {
        push(&|g: &mut GenLine| g.extra = Piece::plain(b""));
    }
    if let Some(d) = &g.data {
        if d.delta != 0 {
            push(&|g: &mut GenLine| g.data.as_mut().unwrap().delta = 0);
        }
        if d.term.feature.is_some() {
            push(&|g: &mut GenLine| g.data.as_mut().unwrap().term = Piece::plain(PLAIN_END));
        }
        push(&|g: &mut GenLine| g.data = None);
    }
    if reverts_only {
        return out;
    }
    for i in 0..case.setup.len() {
        let mut c = case.clone();
        c.setup.remove(i);
        out.push(c);
    }
    for i in 0..case.setup.len() {
        if case.setup[i].value.len() > 3 || case.setup[i].flags != 0 {
            let mut c = case.clone();
            c.setup[i].value = b"v".to_vec();
            c.setup[i].flags = 0;
            out.push(c);
        }
    }
    out
}

struct Diff {
    kind: SetupKind,
    original: Origin,
    case: Case,
    mc: Outcome,
    mr: Outcome,
    coarse: String,
    /// How many differing case runs this example stands for.
    weight: f64,
    /// The setups whose runs showed this difference (the example ran on `kind`).
    kinds: Vec<SetupKind>,
    /// What the difference is about, once shrunk (see [`cause_atoms`]).
    cause: String,
    /// The difference did not reproduce when run again.
    flaky: bool,
}

/// Re-runs `d` (to confirm it) and shrinks it while the same difference remains: at most
/// `max_runs` runs, each candidate read with a shorter silence, the result confirmed with a
/// longer one (if that fails, the confirmed original stays).
fn shrink(rig: &mut Rig, mut d: Diff, max_runs: usize, deadline: Instant, trace: bool) -> Diff {
    match rig.run(&d.case, SILENCE * 2) {
        Ok((mc, mr)) if !same(&d.case, &mc, &mr) => {
            d.coarse = coarse_signature(&d.case, &mc, &mr);
            d.mc = mc;
            d.mr = mr;
        }
        Ok(_) => {
            d.flaky = true;
            return d;
        }
        Err(_) => return d,
    }
    let mut best = (d.case.clone(), d.mc.clone(), d.mr.clone());
    let mut runs = 0;
    'outer: loop {
        for cand in shrink_candidates(&best.0) {
            if runs >= max_runs || Instant::now() > deadline {
                break 'outer;
            }
            runs += 1;
            if let Ok((mc, mr)) = rig.run(&cand, SILENCE / 2) {
                if trace {
                    eprintln!(
                        "  shrink {}: {}",
                        esc(&cand.bytes()),
                        coarse_signature(&cand, &mc, &mr)
                    );
                }
                if !same(&cand, &mc, &mr) && coarse_signature(&cand, &mc, &mr) == d.coarse {
                    best = (cand, mc, mr);
                    continue 'outer;
                }
            }
        }
        break;
    }
    if runs > 0 {
        if let Ok((mc, mr)) = rig.run(&best.0, SILENCE * 2) {
            if !same(&best.0, &mc, &mr) && coarse_signature(&best.0, &mc, &mr) == d.coarse {
                d.case = best.0;
                d.mc = mc;
                d.mr = mr;
            }
        }
    }
    // The essential features: those whose reversal alone makes the replies equal.
    let atoms = cause_atoms(&d.case);
    let mut essential = std::collections::BTreeSet::new();
    if max_runs > 0 {
        for cand in revert_candidates(&d.case) {
            if Instant::now() > deadline {
                break;
            }
            let removed: Vec<String> = atoms.difference(&cause_atoms(&cand)).cloned().collect();
            if removed.is_empty() || removed.iter().all(|a| essential.contains(a)) {
                continue;
            }
            if let Ok((mc, mr)) = rig.run(&cand, SILENCE / 2) {
                if trace {
                    eprintln!(
                        "  without {removed:?}: {} → {}",
                        esc(&cand.bytes()),
                        if same(&cand, &mc, &mr) {
                            "same".to_string()
                        } else {
                            coarse_signature(&cand, &mc, &mr)
                        }
                    );
                }
                if same(&cand, &mc, &mr) {
                    essential.extend(removed);
                }
            }
        }
    }
    let shown = if essential.is_empty() {
        atoms
    } else {
        essential
    };
    d.cause = cause_text(&d.case, &shown);
    d
}

/// The command family for grouping.
fn cmd_class(base: &str) -> &str {
    match base {
        "set" | "add" | "replace" | "append" | "prepend" => "storage",
        "get" | "gets" => "get/gets",
        "gat" | "gats" => "gat/gats",
        "incr" | "decr" => "incr/decr",
        "<unknown>" => "unknown word",
        "<empty>" => "blank line",
        other => other,
    }
}

/// A token feature as a family of causes: number forms and values and key kinds by what
/// they have in common (the example shows the exact one).
fn family(feat: &str) -> String {
    if let Some((role, form)) = feat.split_once(':') {
        let numeric = matches!(
            role,
            "flags" | "exptime" | "len" | "cas" | "delta" | "level" | "delay"
        );
        let fam = match form {
            "+N" | "+0" => "sign +",
            "-N" | "-0" => "sign -",
            "N\\t" | "N\\r" | "\\tN" => "tab or CR in number",
            "cr-end" | "tab-inside" if numeric => "tab or CR in number",
            "0N" => "leading zeros",
            "hex" | "Nx" | "N.5" => "trailing junk",
            "empty" => "missing (double space)",
            "ctrl01" | "ctrl7f" | "ctrl1b" | "tab-inside" | "cr-inside" | "cr-end"
                if role == "key" =>
            {
                "control byte"
            }
            "cr-end" | "tab-inside" | "tab-end" => "tab or CR",
            "high80" | "utf8" | "highff" => "byte >= 0x80",
            "len251" | "len300" => "longer than 250",
            "len1" | "len249" | "len250" => "length 1..250",
            other => other,
        };
        return format!("{role}: {fam}");
    }
    if let Some((role, value)) = feat.split_once('=') {
        let class = match value {
            "2147483646" | "2147483647" | "2147483648" | "2147483649" => "≈2^31",
            "4294967295" | "4294967296" | "4294967297" => "≈2^32",
            "1234567890" => "10 digits",
            "12345678901" => "11 digits",
            "9223372036854775807" | "9223372036854775808" => "≈2^63",
            "18446744073709551615" | "18446744073709551616" => "≈2^64",
            "12345678901234567890" | "123456789012345678901" => "20-21 digits",
            other => other,
        };
        return format!("{role}={class}");
    }
    feat.to_string()
}

/// What is unusual in a case (features of tokens and pieces, noreply's place, extra tokens,
/// the token count as memcached sees it), by families (see [`family`]).
fn cause_atoms(case: &Case) -> std::collections::BTreeSet<String> {
    let mut atoms: std::collections::BTreeSet<String> = Default::default();
    let Body::Gen(g) = &case.body else {
        return atoms;
    };
    let n = g.toks.len();
    for (i, t) in g.toks.iter().enumerate() {
        atoms.extend(t.feats.iter().map(|f| family(f)));
        match t.role {
            Role::Noreply if i + 1 == n => {
                atoms.insert("noreply last".into());
            }
            Role::Noreply => {
                atoms.insert("noreply not last".into());
            }
            Role::Junk | Role::Http => {
                let b = &t.bytes;
                if b.starts_with(b"HTTP/") {
                    atoms.insert(format!(
                        "{}HTTP/ token",
                        if i + 1 == n { "last " } else { "" }
                    ));
                } else if b.to_ascii_lowercase().starts_with(b"norepl") {
                    atoms.insert(format!("extra token {}", esc(b)));
                } else {
                    atoms.insert("extra token".into());
                }
            }
            _ => {}
        }
    }
    let pieces = [&g.lead, &g.trail, &g.end, &g.extra]
        .into_iter()
        .chain(g.seps.iter());
    for p in pieces {
        if let Some(f) = p.feature {
            atoms.insert(f.into());
        }
    }
    if g.nul_at.is_some() {
        atoms.insert("nul in line".into());
    }
    if let Some(d) = &g.data {
        if d.delta != 0 {
            atoms.insert(format!(
                "data {} than length",
                if d.delta < 0 { "shorter" } else { "longer" }
            ));
        }
        if let Some(f) = d.term.feature {
            atoms.insert(f.into());
        }
    } else if matches!(
        g.base.as_str(),
        "set" | "add" | "replace" | "append" | "prepend" | "cas"
    ) {
        atoms.insert("no data block".into());
    }
    let ntok = mc_tokens(first_line(&g.render())).len();
    if ntok >= 24 {
        atoms.insert("24+ tokens".into());
    } else if ntok > 8 {
        atoms.insert("9-23 tokens".into());
    }
    atoms
}

/// A kind of difference: the command family (of the first token as memcached reads it)
/// and the features that cause it.
fn cause_text(case: &Case, atoms: &std::collections::BTreeSet<String>) -> String {
    let word = case.first_word();
    let class = match std::str::from_utf8(&word) {
        _ if word.is_empty() => "blank line".to_string(),
        Ok(w) if COMMANDS.iter().any(|(c, _)| *c == w) => cmd_class(w).to_string(),
        _ => {
            let kind = if word.len() == 1 {
                "1 char"
            } else if word.len() == 2 && word[0] == b'm' {
                "m + 1 char"
            } else if b"gsacidt".contains(&word[0]) {
                "starts with g/s/a/c/i/d/t"
            } else {
                "other"
            };
            format!("unknown word ({kind})")
        }
    };
    // The class already says the command word is not a command.
    let unknown = class.starts_with("unknown");
    let atoms: Vec<&str> = atoms
        .iter()
        .map(|a| a.as_str())
        .filter(|a| !(unknown && a.starts_with("cmd:")))
        .collect();
    format!("{class} [{}]", atoms.join(", "))
}

// ---------------------------------------------------------------------------------------
// Printing.

fn esc_inner(b: &[u8]) -> String {
    let mut s = String::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let mut run = 1;
        while i + run < b.len() && b[i + run] == c {
            run += 1;
        }
        if run >= 12 {
            s.push('{');
            s.push_str(&esc_byte(c));
            s.push_str(&format!("×{run}}}"));
            i += run;
            continue;
        }
        s.push_str(&esc_byte(c));
        i += 1;
    }
    s
}

fn esc_byte(c: u8) -> String {
    match c {
        b'\r' => "\\r".into(),
        b'\n' => "\\n".into(),
        b'\t' => "\\t".into(),
        0 => "\\0".into(),
        b'\\' => "\\\\".into(),
        b'"' => "\\\"".into(),
        0x20..=0x7e => (c as char).to_string(),
        _ => format!("\\x{c:02x}"),
    }
}

/// Bytes as a quoted, escaped string: runs of 12+ equal bytes as `{b×n}`, and the middle of
/// anything longer than 400 characters left out (`…[n bytes]…`).
fn esc(b: &[u8]) -> String {
    let s = esc_inner(b);
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= 400 {
        return format!("\"{s}\"");
    }
    let head: String = chars[..240].iter().collect();
    let tail: String = chars[chars.len() - 80..].iter().collect();
    format!("\"{head}…[{} bytes in all]…{tail}\"", b.len())
}

/// Bytes as a quoted, escaped string, nothing shortened.
fn esc_full(b: &[u8]) -> String {
    format!("\"{}\"", b.iter().map(|c| esc_byte(*c)).collect::<String>())
}

fn escape(b: &[u8]) -> String {
    let s = esc_inner(b);
    if s.chars().count() > 24 {
        format!("{}…", s.chars().take(24).collect::<String>())
    } else {
        s
    }
}

fn describe_setup(case: &Case) -> String {
    if case.setup.is_empty() {
        return "none".into();
    }
    case.setup
        .iter()
        .map(|s| format!("{} flags {} = {}", esc(&s.key), s.flags, esc(&s.value)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe(d: &Diff, full: bool) -> String {
    let e = if full { esc_full } else { esc };
    format!(
        "    sent:      {}\n    setup:     {}\n    memcached: {} [{}]\n    memroute:  {} [{}]",
        e(&d.case.bytes()),
        describe_setup(&d.case),
        e(&d.mc.reply),
        d.mc.end.name(),
        e(&d.mr.reply),
        d.mr.end.name()
    )
}

/// The part of a coarse signature that does not name the command.
fn reply_pair(coarse: &str) -> &str {
    coarse.split_once(": ").map(|(_, r)| r).unwrap_or(coarse)
}

// ---------------------------------------------------------------------------------------
// The test.

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn parse_seed(s: &str) -> u64 {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).expect("hex seed"),
        None => s.parse().expect("seed"),
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("LINE_DIFF_SEEDS") {
        Ok(v) => v.split(',').map(parse_seed).collect(),
        Err(_) => SEEDS.to_vec(),
    }
}

fn all_cases() -> Vec<Case> {
    let per_seed = env_usize("LINE_DIFF_CASES").unwrap_or(CASES_PER_SEED);
    let mut cases: Vec<Case> = (0..KNOWN_CASES.len()).map(known_case).collect();
    for (n, seed) in seeds().into_iter().enumerate() {
        cases.extend((0..per_seed).map(|i| generate(seed, i, n % 10)));
    }
    cases
}

/// `LINE_DIFF_CASE=<seed>:<index>` or `known:<index>`: that case alone, printed in full.
fn single_case(spec: &str) -> Case {
    let (a, b) = spec.split_once(':').expect("LINE_DIFF_CASE=<seed>:<index>");
    let index: usize = b.parse().expect("case index");
    if a == "known" {
        return known_case(index);
    }
    let seed = parse_seed(a);
    let n = seeds().iter().position(|s| *s == seed).unwrap_or(0);
    generate(seed, index, n % 10)
}

fn run_single(spec: &str) {
    let case = single_case(spec);
    for kind in [SetupKind::Embedded, SetupKind::Backends] {
        let mut rig = Rig::start(kind);
        let (mc, mr) = rig.run(&case, SILENCE).expect("run");
        let d = Diff {
            kind,
            original: case.origin,
            coarse: coarse_signature(&case, &mc, &mr),
            case: case.clone(),
            mc,
            mr,
            weight: 1.0,
            kinds: vec![kind],
            cause: String::new(),
            flaky: false,
        };
        let differs = !same(&case, &d.mc, &d.mr);
        eprintln!(
            "[{}] {} ({}):\n{}",
            kind.name(),
            case.origin,
            if differs { "DIFFERENT" } else { "same" },
            describe(&d, true)
        );
        if differs && std::env::var_os("LINE_DIFF_NO_SHRINK").is_none() {
            let trace = std::env::var_os("LINE_DIFF_TRACE").is_some();
            let deadline = Instant::now() + Duration::from_secs(60);
            let d = shrink(&mut rig, d, 200, deadline, trace);
            eprintln!(
                "[{}] shrunk: {}\n  {}\n{}",
                kind.name(),
                d.case.skeleton(),
                d.cause,
                describe(&d, true)
            );
        }
    }
}

/// A kind of difference: examples per distinct reply pair, and the setups that showed it.
#[derive(Default)]
struct Group {
    weight: f64,
    /// (reply pair) → (setups, example)
    examples: BTreeMap<String, (Vec<SetupKind>, Diff)>,
}

#[test]
fn generated_lines_answer_like_memcached() {
    let started = Instant::now();
    if let Ok(spec) = std::env::var("LINE_DIFF_CASE") {
        run_single(&spec);
        return;
    }

    let cases = all_cases();
    let workers = env_usize("LINE_DIFF_WORKERS").unwrap_or(WORKERS).max(1);
    let kinds = [SetupKind::Embedded, SetupKind::Backends];
    let diffs: Mutex<Vec<Diff>> = Mutex::new(Vec::new());
    let rigs: Mutex<Vec<Rig>> = Mutex::new(Vec::new());
    let setup_errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let counters: Vec<AtomicUsize> = kinds.iter().map(|_| AtomicUsize::new(0)).collect();
    let silent_cases = AtomicUsize::new(0);

    // Main pass: every case on both setups, `workers` rigs per setup.
    std::thread::scope(|s| {
        for (k, kind) in kinds.iter().enumerate() {
            for _ in 0..workers {
                let (cases, diffs, rigs, setup_errors, next, silent_cases) = (
                    &cases,
                    &diffs,
                    &rigs,
                    &setup_errors,
                    &counters[k],
                    &silent_cases,
                );
                let kind = *kind;
                s.spawn(move || {
                    let mut rig = Rig::start(kind);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(case) = cases.get(i) else { break };
                        let mut result = rig.run(case, SILENCE);
                        if result.is_err() {
                            // Once more on a fresh rig (memroute may have died).
                            rig = Rig::start(kind);
                            result = rig.run(case, SILENCE);
                        }
                        match result {
                            Ok((mc, mr)) => {
                                if mc.end == End::Silent || mr.end == End::Silent {
                                    silent_cases.fetch_add(1, Ordering::Relaxed);
                                }
                                if !same(case, &mc, &mr) {
                                    diffs.lock().unwrap().push(Diff {
                                        kind,
                                        original: case.origin,
                                        coarse: coarse_signature(case, &mc, &mr),
                                        case: case.clone(),
                                        mc,
                                        mr,
                                        weight: 1.0,
                                        kinds: vec![kind],
                                        cause: String::new(),
                                        flaky: false,
                                    });
                                }
                            }
                            Err(e) => setup_errors.lock().unwrap().push(format!(
                                "[{}] {}: {e}\n    sent: {}",
                                kind.name(),
                                case.origin,
                                esc(&case.bytes())
                            )),
                        }
                    }
                    rigs.lock().unwrap().push(rig);
                });
            }
        }
    });
    let main_pass = started.elapsed();
    let diffs = diffs.into_inner().unwrap();
    let total_differing = diffs.len();

    // Coarse groups (command, first differing reply lines, how each side ended), over
    // both setups: the shortest example of each is confirmed and shrunk on its setup. Known
    // cases are only confirmed, on each setup.
    let mut coarse: BTreeMap<String, Vec<Diff>> = BTreeMap::new();
    let mut to_shrink: Vec<Diff> = Vec::new();
    for d in diffs {
        if matches!(d.case.origin, Origin::Known(_)) {
            to_shrink.push(d);
        } else {
            coarse.entry(d.coarse.clone()).or_default().push(d);
        }
    }
    let coarse_groups = coarse.len();
    for (_, mut v) in coarse {
        let mut kinds: Vec<SetupKind> = v.iter().map(|d| d.kind).collect();
        kinds.sort();
        kinds.dedup();
        let weight = v.len() as f64;
        v.sort_by_key(|d| (d.case.bytes().len(), d.case.setup.len()));
        let mut d = v.swap_remove(0);
        d.weight = weight;
        d.kinds = kinds;
        to_shrink.push(d);
    }
    let no_shrink = std::env::var_os("LINE_DIFF_NO_SHRINK").is_some();
    let shrink_deadline = Instant::now() + Duration::from_secs(35);
    let shrunk: Mutex<Vec<Diff>> = Mutex::new(Vec::new());
    {
        // Longest jobs first.
        to_shrink.sort_by_key(|d| std::cmp::Reverse(shrink_candidates(&d.case).len()));
        let queue = Mutex::new(to_shrink);
        let rigs_list = rigs.into_inner().unwrap();
        std::thread::scope(|s| {
            for mut rig in rigs_list {
                let (queue, shrunk) = (&queue, &shrunk);
                s.spawn(move || loop {
                    let job = {
                        let mut q = queue.lock().unwrap();
                        let at = q.iter().position(|d| d.kind == rig.kind);
                        at.map(|i| q.remove(i))
                    };
                    let Some(d) = job else { break };
                    let max_runs = if no_shrink { 0 } else { 80 };
                    let d = shrink(&mut rig, d, max_runs, shrink_deadline, false);
                    shrunk.lock().unwrap().push(d);
                });
            }
        });
    }

    // Kinds of difference: command family and what is still unusual in the shrunk case;
    // under each, one example per distinct pair of replies, setups merged.
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut known: BTreeMap<usize, Vec<Diff>> = BTreeMap::new();
    let mut flaky = Vec::new();
    for d in shrunk.into_inner().unwrap() {
        if d.flaky {
            flaky.push(d);
            continue;
        }
        if let Origin::Known(i) = d.case.origin {
            known.entry(i).or_default().push(d);
            continue;
        }
        let g = groups.entry(d.cause.clone()).or_default();
        g.weight += d.weight;
        let pair = reply_pair(&d.coarse).to_string();
        match g.examples.get_mut(&pair) {
            Some((kinds, ex)) => {
                for k in &d.kinds {
                    if !kinds.contains(k) {
                        kinds.push(*k);
                    }
                }
                if d.case.bytes().len() < ex.case.bytes().len() {
                    *ex = d;
                }
            }
            None => {
                g.examples.insert(pair, (d.kinds.clone(), d));
            }
        }
    }
    let setup_errors = setup_errors.into_inner().unwrap();
    let max_groups = env_usize("LINE_DIFF_MAX_GROUPS").unwrap_or(50);
    let mut report = String::new();
    let kinds_text = |k: &[SetupKind]| {
        let mut names: Vec<&str> = k.iter().map(|k| k.name()).collect();
        names.sort();
        names.join("+")
    };
    let mut ordered: Vec<(&String, &Group)> = groups.iter().collect();
    ordered.sort_by(|a, b| b.1.weight.total_cmp(&a.1.weight).then(a.0.cmp(b.0)));
    for (i, (cause, g)) in ordered.iter().enumerate() {
        if i >= max_groups {
            // The rest, one line each.
            let (kinds, d) = g
                .examples
                .values()
                .min_by_key(|(_, d)| d.case.bytes().len())
                .unwrap();
            report.push_str(&format!(
                "\n#{} {} (≈{:.0}) [{}] {}: {} → memcached {} [{}] / memroute {} [{}]",
                i + 1,
                cause,
                g.weight,
                kinds_text(kinds),
                d.original,
                esc(&d.case.bytes()),
                esc(&d.mc.reply),
                d.mc.end.name(),
                esc(&d.mr.reply),
                d.mr.end.name()
            ));
            continue;
        }
        report.push_str(&format!(
            "\n#{} {}   (≈{:.0} differing case runs)\n",
            i + 1,
            cause,
            g.weight
        ));
        let mut examples: Vec<&(Vec<SetupKind>, Diff)> = g.examples.values().collect();
        examples.sort_by_key(|(_, d)| d.case.bytes().len());
        for (j, (kinds, d)) in examples.into_iter().enumerate() {
            if j >= 3 {
                report.push_str(&format!("  … {} more reply pairs\n", g.examples.len() - 3));
                break;
            }
            report.push_str(&format!(
                "  [{}] shape {}, shrunk from case {} (LINE_DIFF_CASE={})\n{}\n",
                kinds_text(kinds),
                d.case.skeleton(),
                d.original,
                d.original,
                describe(d, false)
            ));
        }
    }
    report.push('\n');
    if !known.is_empty() {
        report.push_str("\nKnown cases that differ:\n");
        for (i, ds) in &known {
            let mut by_reply: Vec<(Vec<SetupKind>, &Diff)> = Vec::new();
            for d in ds {
                match by_reply
                    .iter_mut()
                    .find(|(_, e)| e.mc == d.mc && e.mr == d.mr)
                {
                    Some((k, _)) => k.push(d.kind),
                    None => by_reply.push((vec![d.kind], d)),
                }
            }
            for (k, d) in by_reply {
                report.push_str(&format!(
                    "  known:{i} [{}] {}\n    memcached: {} [{}]\n    memroute:  {} [{}]\n",
                    kinds_text(&k),
                    esc(&d.case.bytes()),
                    esc(&d.mc.reply),
                    d.mc.end.name(),
                    esc(&d.mr.reply),
                    d.mr.end.name()
                ));
            }
        }
    }
    for d in &flaky {
        report.push_str(&format!(
            "\n(flaky, did not reproduce) [{}] {}: {}\n{}\n",
            d.kind.name(),
            d.original,
            d.coarse,
            describe(d, false)
        ));
    }
    for e in &setup_errors {
        report.push_str(&format!("\n(setup error) {e}\n"));
    }
    eprintln!(
        "line_differential: {} cases × 2 setups in {:.1} s (main pass {:.1} s; {} case runs \
         ended silent); {} differing case runs in {} coarse groups → {} kinds of difference \
         and {} known cases; {} flaky, {} setup errors",
        cases.len(),
        started.elapsed().as_secs_f64(),
        main_pass.as_secs_f64(),
        silent_cases.load(Ordering::Relaxed),
        total_differing,
        coarse_groups,
        groups.len(),
        known.len(),
        flaky.len(),
        setup_errors.len()
    );
    if !groups.is_empty() || !known.is_empty() || !setup_errors.is_empty() {
        eprintln!("{report}");
        panic!(
            "{} kinds of difference and {} known cases differ between memroute and memcached \
             ({} differing case runs); the list is above",
            groups.len(),
            known.len(),
            total_differing
        );
    }
    if !flaky.is_empty() {
        eprintln!("{report}");
    }
}
