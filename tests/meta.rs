//! The meta protocol (`mg`, `ms`, `md`, `ma`, `mn`, `me`) through memroute, against real
//! memcached 1.6.18:
//!
//! - a table of cases covering every command and flag, and memcached's errors for malformed
//!   lines, each sent byte for byte to a memcached directly and to memroute fronting its own
//!   memcached (one backend, and three), the replies compared as conformance.rs compares
//!   them (flush and CAS counters levelled before each case, a `version` sentinel after it);
//!   also written 3 bytes at a time, and all the valid ones in one stream;
//! - quiet pipelines mixing text and meta commands over keys on all three backends, from
//!   several clients at once, answered exactly as one memcached holding the same data
//!   answers them;
//! - a backend killed between two writes, and with a pipeline in flight, and a backend that
//!   never answers: its requests are answered `SERVER_ERROR backend …` (quiet ones too),
//!   the others exactly, `mn` last;
//! - base64 keys (`b`) routed by their decoded bytes (and by the hash tag in them);
//! - Tokyo Tyrant pools refusing meta commands; the `meta_requests` stat.
//!
//! Expected bytes always come from a real memcached. Only fields that depend on the clock
//! (`t`, `l`, `me`'s `exp` and `la`) are compared with a tolerance, and, over three
//! backends (each numbering its own CAS uniques), CAS values are blanked.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use common::bad_backend::{BadBackend, Behaviour};
use common::config::{md5_pool_toml, named, route_owners, TempFiles};
use common::differential::{
    case_names, cut_short, find, has_placeholder, show_at_most, trace_case, version_commands, Conn,
    Rig, READ_TIMEOUT,
};
use common::tyrant::FakeTyrant;
use common::{free_port, mix, pattern, text, Memcached, Proxy, VERSION_REPLY};

// ---------------------------------------------------------------------------------------
// Reading replies: units (a line, with the data block it announces) and the fields that
// may differ between two memcached.

/// The length of the complete reply unit at the start of `buf`: one line, plus the data
/// block (and its `\r\n`) a `VA <size>` or `VALUE <key> <flags> <size>` line announces.
fn unit_len(buf: &[u8]) -> Option<usize> {
    let line = find(buf, b"\r\n")? + 2;
    let fields: Vec<&[u8]> = buf[..line - 2].split(|b| *b == b' ').collect();
    let size_field = if buf.starts_with(b"VA ") {
        1
    } else if buf.starts_with(b"VALUE ") {
        3
    } else {
        return Some(line);
    };
    let size: usize = fields
        .get(size_field)
        .and_then(|f| std::str::from_utf8(f).ok())
        .and_then(|f| f.parse().ok())?;
    (buf.len() >= line + size + 2).then_some(line + size + 2)
}

/// `reply` cut into units (see [`unit_len`]); an incomplete tail is the last unit.
fn units(reply: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = reply;
    while !rest.is_empty() {
        let n = unit_len(rest).unwrap_or(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// The meta status lines whose tokens after the first are return flags.
const META_STATUS: &[&[u8]] = &[b"HD", b"NS", b"EX", b"NF", b"EN", b"MN"];

/// `reply` with the clock-dependent fields replaced by placeholders (their values returned
/// in order) and, when `blank_cas`, every CAS value replaced by `<cas>`: `t<n>` (n ≥ 0) and
/// `l<n>` flags of meta status lines, `exp=<n>` (n ≠ -1) and `la=<n>` of `ME` lines, `c<n>`
/// flags, `cas=<n>` and the unique of a `VALUE` line. Every other byte is kept.
fn normalise(reply: &[u8], blank_cas: bool) -> (Vec<u8>, Vec<i64>) {
    let mut out = Vec::with_capacity(reply.len());
    let mut times = Vec::new();
    for unit in units(reply) {
        let Some(line_len) = find(unit, b"\r\n") else {
            out.extend_from_slice(unit);
            continue;
        };
        let (line, rest) = (&unit[..line_len], &unit[line_len..]);
        let tokens: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let flags_from = if line.starts_with(b"VA ") {
            Some(2)
        } else if META_STATUS.contains(&tokens[0]) {
            Some(1)
        } else {
            None
        };
        let mut new: Vec<Vec<u8>> = tokens.iter().map(|t| t.to_vec()).collect();
        let number = |t: &[u8]| -> Option<i64> { std::str::from_utf8(t).ok()?.parse().ok() };
        if let Some(from) = flags_from {
            for t in new.iter_mut().skip(from) {
                let (flag, value) = match t.split_first() {
                    Some((f, v)) => (*f, number(v)),
                    None => continue,
                };
                match (flag, value) {
                    (b't', Some(n)) if n >= 0 => {
                        times.push(n);
                        *t = b"t<time>".to_vec();
                    }
                    (b'l', Some(n)) => {
                        times.push(n);
                        *t = b"l<time>".to_vec();
                    }
                    (b'c', Some(_)) if blank_cas => *t = b"c<cas>".to_vec(),
                    _ => {}
                }
            }
        } else if tokens[0] == b"ME" {
            for t in new.iter_mut().skip(2) {
                let Some(eq) = t.iter().position(|b| *b == b'=') else {
                    continue;
                };
                let (name, value) = (t[..eq].to_vec(), number(&t[eq + 1..]));
                match (name.as_slice(), value) {
                    // memcached 1.6.18 prints the TTL left negated; -1 is "never".
                    (b"exp", Some(n)) if n != -1 => {
                        times.push(n);
                        *t = b"exp=<time>".to_vec();
                    }
                    (b"la", Some(n)) => {
                        times.push(n);
                        *t = b"la=<time>".to_vec();
                    }
                    (b"cas", Some(_)) if blank_cas => *t = b"cas=<cas>".to_vec(),
                    _ => {}
                }
            }
        } else if tokens[0] == b"VALUE" && tokens.len() == 5 && blank_cas {
            new[4] = b"<cas>".to_vec();
        }
        out.extend_from_slice(&new.join(&b' '));
        out.extend_from_slice(rest);
    }
    (out, times)
}

/// Seconds two memcached may disagree on a time since or until something: each keeps its
/// own clock, ticking once a second.
const CLOCK_SLACK: i64 = 2;

/// Whether memroute's reply `got` matches memcached's `expected` (see [`normalise`]); the
/// reason when not.
fn compare(expected: &[u8], got: &[u8], blank_cas: bool) -> Result<(), String> {
    if expected == got {
        return Ok(());
    }
    let (e, e_times) = normalise(expected, blank_cas);
    let (g, g_times) = normalise(got, blank_cas);
    if e != g {
        let at = common::first_difference(&e, &g);
        let from = at.saturating_sub(80);
        return Err(format!(
            "first difference at byte {at} (of the normalised replies):\n    memcached: {:?}\n    memroute:  {:?}",
            show(&e[from..]),
            show(&g[from..])
        ));
    }
    for (a, b) in e_times.iter().zip(&g_times) {
        if (a - b).abs() > CLOCK_SLACK {
            return Err(format!(
                "times differ by more than {CLOCK_SLACK} s: memcached {e_times:?}, memroute {g_times:?}"
            ));
        }
    }
    Ok(())
}

fn show(b: &[u8]) -> String {
    show_at_most(b, 400)
}

/// The comparison forgives only what it should: clock fields within the slack, and CAS
/// values when asked; never data blocks, spacing, or a TTL against none.
#[test]
fn the_comparison_forgives_only_clock_fields_and_cas() {
    let ok = |a: &str, b: &str, blank: bool| compare(a.as_bytes(), b.as_bytes(), blank).is_ok();
    assert!(ok("VA 1 t100\r\nx\r\n", "VA 1 t99\r\nx\r\n", false));
    assert!(ok("HD l0 t5\r\n", "HD l1 t6\r\n", false));
    assert!(ok(
        "ME k exp=-100 la=0 cas=5 fetch=no\r\n",
        "ME k exp=-99 la=1 cas=5 fetch=no\r\n",
        false
    ));
    assert!(!ok("VA 1 t100\r\nx\r\n", "VA 1 t90\r\nx\r\n", false));
    assert!(!ok("HD t-1\r\n", "HD t1\r\n", false));
    assert!(!ok("ME k exp=-1 la=0\r\n", "ME k exp=-2 la=0\r\n", false));
    assert!(!ok("HD c5\r\n", "HD c6\r\n", false));
    assert!(ok("HD c5\r\n", "HD c6\r\n", true));
    assert!(ok(
        "ME k exp=-1 la=0 cas=5\r\n",
        "ME k exp=-1 la=0 cas=7\r\n",
        true
    ));
    assert!(ok(
        "VALUE k 0 1 5\r\nx\r\nEND\r\n",
        "VALUE k 0 1 9\r\nx\r\nEND\r\n",
        true
    ));
    assert!(!ok("HD c5\r\n", "HD  c5\r\n", true));
    assert!(!ok("VA 1 t5\r\nx\r\n", "VA 1 t5\r\ny\r\n", false));
    assert!(!ok("VA 4\r\nt100\r\n", "VA 4\r\nt101\r\n", false));
    assert!(!ok("VA 4\r\nc100\r\n", "VA 4\r\nc101\r\n", true));
    assert!(!ok("EN\r\n", "", false));
    assert!(!ok("HD O1 t5\r\n", "HD O2 t5\r\n", true));
}

// ---------------------------------------------------------------------------------------
// The case table.

/// Whether a case belongs in the pipelined run too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Well-formed requests only.
    Valid,
    /// At least one malformed or refused request.
    Invalid,
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    kind: Kind,
}

/// `ms <key> <len>[ flags]\r\n<data>\r\n`
fn ms(key: &str, data: &[u8], flags: &str) -> Vec<u8> {
    let mut v = format!("ms {key} {}{flags}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

/// `key` in base64 (standard alphabet, padded), as the `b` flag takes it.
fn b64(key: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in key.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn cases() -> Vec<Case> {
    use Kind::*;
    let mut v: Vec<Case> = Vec::new();
    let mut add = |name: &str, kind: Kind, bytes: Vec<u8>| {
        v.push(Case {
            name: name.to_string(),
            bytes,
            kind,
        })
    };
    let s = |t: &str| t.as_bytes().to_vec();
    let k250 = "k".repeat(250);
    let k251 = "k".repeat(251);
    let foo_b64 = b64(b"foo"); // Zm9v
    let binary = b64(b"a b\x00\r\nc\xff"); // a key no text command can name
    let opaque31 = format!("O{}", "9".repeat(31));
    let opaque32 = format!("O{}", "9".repeat(32));

    // ---- mg: every flag.
    add("mg_miss", Valid, s("mg k\r\n"));
    add("mg_miss_v", Valid, s("mg k v\r\n"));
    add("mg_miss_flags", Valid, s("mg k v f t c s k O1 h l\r\n"));
    add("mg_hit_no_flags", Valid, s("ms k 3\r\nabc\r\nmg k\r\n"));
    add("mg_v", Valid, s("ms k 3\r\nabc\r\nmg k v\r\n"));
    add(
        "mg_f",
        Valid,
        s("ms k 1 F77\r\nx\r\nmg k f\r\nmg k f v\r\n"),
    );
    add("mg_f_zero", Valid, s("ms k 1\r\nx\r\nmg k f\r\n"));
    add(
        "mg_t_no_ttl",
        Valid,
        s("ms k 1\r\nx\r\nmg k t\r\nmg k t v\r\n"),
    );
    add("mg_t_ttl", Valid, s("ms k 1 T100\r\nx\r\nmg k t v\r\n"));
    add("mg_c", Valid, s("ms k 1\r\nx\r\nmg k c\r\nmg k c v\r\n"));
    add(
        "mg_s",
        Valid,
        s("ms k 5\r\nhello\r\nmg k s\r\nmg k s v\r\n"),
    );
    add("mg_k", Valid, s("ms k 1\r\nx\r\nmg k k\r\nmg nope k\r\n"));
    add(
        "mg_O",
        Valid,
        s("mg k O123\r\nms k 1\r\nx\r\nmg k O456 v\r\nmg k Oabc k\r\n"),
    );
    add(
        "mg_O_empty",
        Valid,
        s("ms k 1\r\nx\r\nmg k O\r\nmg nope O\r\n"),
    );
    add(
        "mg_O_32",
        Valid,
        format!("mg k {opaque31}\r\n").into_bytes(),
    );
    add(
        "mg_O_33_too_long",
        Invalid,
        format!("mg k {opaque32}\r\n").into_bytes(),
    );
    add(
        "mg_q_miss",
        Valid,
        s("mg k q\r\nmg k q v\r\nmg k q v k O1\r\nmn\r\n"),
    );
    add("mg_q_miss_no_mn", Valid, s("mg k q v\r\nmg j q\r\n"));
    add(
        "mg_q_hit",
        Valid,
        s("ms k 1\r\nx\r\nmg k q\r\nmg k q v\r\nmg k q k O1 s\r\nmn\r\n"),
    );
    add("mg_q_mixed_keys", Valid, s("ms a 1\r\nA\r\nms c 1\r\nC\r\nmg a q v k\r\nmg b q v k\r\nmg c q v k\r\nmg d q v k\r\nmn\r\n"));
    add(
        "mg_h",
        Valid,
        s("ms k 1\r\nx\r\nmg k h\r\nmg k h v\r\nmg k h\r\n"),
    );
    add("mg_l", Valid, s("ms k 1\r\nx\r\nmg k l\r\nmg k l v\r\n"));
    add(
        "mg_T_touch",
        Valid,
        s("ms k 1 T100\r\nx\r\nmg k T0 t\r\nmg k t\r\nmg k T50 t v\r\nmg k t\r\n"),
    );
    add(
        "mg_T_negative_expires",
        Valid,
        s("ms k 1\r\nx\r\nmg k T-1\r\nmg k v\r\n"),
    );
    add("mg_T_miss", Valid, s("mg k T10 v\r\n"));
    add(
        "mg_N_vivify",
        Valid,
        s("mg k N30 v c t s\r\nmg k v c t\r\nmg k N30 s\r\n"),
    );
    add(
        "mg_N_vivify_then_cas_set",
        Valid,
        s("mg k N30 c\r\nms k 1 C{C1}\r\nx\r\nmg k v c\r\n"),
    );
    add("mg_N_hit", Valid, s("ms k 1\r\nx\r\nmg k N30 v\r\n"));
    add("mg_N_q", Valid, s("mg k N30 q\r\nmg k N30 q v\r\nmn\r\n"));
    add(
        "mg_R_recache",
        Valid,
        s("ms k 1 T10\r\nx\r\nmg k R30 v t\r\nmg k R30 v t\r\nmg k R5 v\r\n"),
    );
    add("mg_R_no_ttl", Valid, s("ms k 1\r\nx\r\nmg k R30 v\r\n"));
    add("mg_u", Valid, s("ms k 1\r\nx\r\nmg k u v h\r\nmg k h\r\n"));
    add(
        "mg_every_flag",
        Valid,
        s("ms k 3 F9\r\nabc\r\nmg k v f t c s k O1 h l u\r\nmg k v f t c s k O2 h l u q\r\n"),
    );
    add(
        "mg_b",
        Valid,
        format!(
            "{}mg {foo_b64} b v k\r\nmg {foo_b64} b k q\r\nmg foo v k\r\nget foo\r\n",
            text(&ms(&foo_b64, b"bar", " b"))
        )
        .into_bytes(),
    );
    add(
        "mg_b_miss",
        Valid,
        format!("mg {foo_b64} b v k O5\r\nmg {foo_b64} b q k\r\nmn\r\n").into_bytes(),
    );
    add(
        "mg_b_binary_key",
        Valid,
        format!(
            "{}mg {binary} b v k s\r\nme {binary} b\r\n",
            text(&ms(&binary, b"x", " b"))
        )
        .into_bytes(),
    );
    add("mg_b_unpadded", Invalid, s("mg Zm9vYg b v\r\n"));
    add(
        "mg_250_byte_key",
        Valid,
        format!("{}mg {k250} v k\r\n", text(&ms(&k250, b"v", ""))).into_bytes(),
    );
    add(
        "mg_flag_with_junk",
        Valid,
        s("ms k 1\r\nx\r\nmg k vfoo sbar\r\n"),
    );
    add(
        "mg_extra_spaces",
        Valid,
        s("ms k 1\r\nx\r\nmg  k   v  f \r\n"),
    );
    add("mg_lf_only", Valid, s("ms k 1\r\nx\r\nmg k v\n"));
    add("mg_E", Invalid, s("ms k 1\r\nx\r\nmg k E5 c\r\n"));

    // ---- ms: modes, flags, errors.
    add("ms_plain", Valid, s("ms k 2\r\nhi\r\nmg k v\r\n"));
    add("ms_zero_length", Valid, s("ms k 0\r\n\r\nmg k v s\r\n"));
    add("ms_binary_data", Valid, {
        let data: Vec<u8> = (0u8..=255).collect();
        [ms("k", &data, ""), s("mg k v\r\n")].concat()
    });
    add(
        "ms_data_looks_like_commands",
        Valid,
        [ms("k", b"mn\r\nmg k v\r\nEND", ""), s("mg k v s\r\n")].concat(),
    );
    add(
        "ms_mode_S",
        Valid,
        s("ms k 1 MS\r\nx\r\nms k 1 MS\r\ny\r\nmg k v\r\n"),
    );
    add(
        "ms_mode_E_add",
        Valid,
        s("ms k 1 ME\r\nx\r\nms k 1 ME\r\ny\r\nmg k v\r\n"),
    );
    add(
        "ms_mode_A_append",
        Valid,
        s("ms k 1 MA\r\nx\r\nms k 2\r\nmm\r\nms k 1 MA\r\n>\r\nmg k v\r\n"),
    );
    add(
        "ms_mode_P_prepend",
        Valid,
        s("ms k 1 MP\r\nx\r\nms k 2\r\nmm\r\nms k 1 MP\r\n<\r\nmg k v\r\n"),
    );
    add(
        "ms_mode_R_replace",
        Valid,
        s("ms k 1 MR\r\nx\r\nms k 2\r\nmm\r\nms k 1 MR\r\nr\r\nmg k v\r\n"),
    );
    add("ms_mode_lowercase", Invalid, s("ms k 1 Ms\r\nx\r\nms k 1 Me\r\ny\r\nms k 1 Ma\r\nz\r\nms k 1 Mp\r\na\r\nms k 1 Mr\r\nb\r\nmg k v\r\n"));
    add(
        "ms_mode_invalid",
        Invalid,
        s("ms k 1 MX\r\nx\r\nmg k v\r\n"),
    );
    add(
        "ms_M_wrong_length",
        Invalid,
        s("ms k 1 MSS\r\nx\r\nms k 1 M\r\ny\r\nmg k v\r\n"),
    );
    add(
        "ms_I_invalidate_stale",
        Valid,
        s("ms k 1\r\nx\r\nms k 1 C1 I\r\ny\r\nmg k v c\r\nmg k v\r\n"),
    );
    add(
        "ms_I_newer_cas",
        Valid,
        s("ms k 1\r\nx\r\nms k 1 C999999 I\r\ny\r\nmg k v\r\n"),
    );
    add(
        "ms_C_right",
        Valid,
        s("ms k 1\r\nx\r\nms k 1 C{C1}\r\ny\r\nmg k v c\r\n"),
    );
    add(
        "ms_C_wrong",
        Valid,
        s("ms k 1\r\nx\r\nms k 1 C999999\r\ny\r\nmg k v\r\n"),
    );
    add("ms_C_missing", Valid, s("ms k 1 C5\r\nx\r\nmg k v\r\n"));
    add(
        "ms_C_append_mode",
        Valid,
        s("ms k 1\r\nx\r\nms k 1 MA C{C1}\r\ny\r\nms k 1 MA C{C1}\r\nz\r\nmg k v\r\n"),
    );
    add("ms_F", Valid, s("ms k 1 F4294967295\r\nx\r\nmg k f v\r\n"));
    add(
        "ms_F_over_32_bits",
        Invalid,
        s("ms k 1 F4294967296\r\nx\r\nmg k f v\r\n"),
    );
    add("ms_F_bad", Invalid, s("ms k 1 Fabc\r\nx\r\nmg k v\r\n"));
    add("ms_T", Valid, s("ms k 1 T100\r\nx\r\nmg k t v\r\n"));
    add("ms_T_zero", Valid, s("ms k 1 T0\r\nx\r\nmg k t v\r\n"));
    add("ms_T_negative", Valid, s("ms k 1 T-1\r\nx\r\nmg k v\r\n"));
    add("ms_T_bad", Invalid, s("ms k 1 Tx\r\nx\r\nmg k v\r\n"));
    add("ms_q", Valid, s("ms k 1 q\r\nx\r\nms k 1 q ME\r\ny\r\nms k 1 q C1\r\nz\r\nms j 1 q MR\r\nr\r\nmn\r\nmg k v\r\n"));
    add("ms_q_no_mn", Valid, s("ms k 1 q\r\nx\r\nmg k v\r\n"));
    add(
        "ms_O_k",
        Valid,
        s("ms k 1 O99 k\r\nx\r\nms k 1 ME O98 k\r\ny\r\n"),
    );
    add("ms_c", Valid, s("ms k 1 c\r\nx\r\nms k 1 c ME\r\ny\r\n"));
    add(
        "ms_b",
        Valid,
        format!(
            "{}{}get foo\r\nmg {foo_b64} b v\r\n",
            text(&ms(&foo_b64, b"x", " b k c")),
            text(&ms(&foo_b64, b"y", " b q MR"))
        )
        .into_bytes(),
    );
    add(
        "ms_b_invalid_base64",
        Invalid,
        s("ms !!!! 1 b\r\nx\r\nmg k v\r\n"),
    );
    add(
        "ms_bad_data_chunk",
        Invalid,
        s("ms k 3\r\nxyzw\r\nmg k v\r\n"),
    );
    add(
        "ms_bad_data_chunk_lf",
        Invalid,
        s("ms k 3\r\nxyz\nmg k v\r\n"),
    );
    add(
        "ms_too_large",
        Invalid,
        [ms("k", &vec![b'x'; 1_100_000], ""), s("mg k v\r\n")].concat(),
    );
    add("ms_no_length", Invalid, s("ms k\r\nx\r\n"));
    add("ms_bad_length", Invalid, s("ms k abc\r\nx\r\n"));
    add("ms_negative_length", Invalid, s("ms k -1\r\nmg k v\r\n"));
    add(
        "ms_legacy_S_flag",
        Invalid,
        s("ms k 1 S1\r\nx\r\nmg k v\r\n"),
    );
    add("ms_invalid_flag", Invalid, s("ms k 1 x\r\nx\r\nmg k v\r\n"));
    add(
        "ms_duplicate_flag",
        Invalid,
        s("ms k 1 T1 T2\r\nx\r\nmg k v\r\n"),
    );
    add(
        "ms_too_many_tokens",
        Invalid,
        format!("ms k 1{}\r\nx\r\nmg k v\r\n", " O1".repeat(20)).into_bytes(),
    );
    add(
        "ms_250_byte_key",
        Valid,
        format!("{}mg {k250} v\r\n", text(&ms(&k250, b"v", ""))).into_bytes(),
    );

    // ---- md.
    add(
        "md_hit_miss",
        Valid,
        s("ms k 1\r\nx\r\nmd k\r\nmd k\r\nmg k v\r\n"),
    );
    add(
        "md_q",
        Valid,
        s("ms k 1\r\nx\r\nmd k q\r\nmd k q\r\nmn\r\n"),
    );
    add(
        "md_I_T",
        Valid,
        s("ms k 1\r\nx\r\nmd k I T30\r\nmg k v c t\r\nmg k v c\r\nmg k v\r\n"),
    );
    add(
        "md_I_then_cas_set",
        Valid,
        s("ms k 1\r\nx\r\nmd k I\r\nmg k c v\r\nms k 1 C{C1}\r\ny\r\nmg k v\r\n"),
    );
    add(
        "md_T_without_I",
        Valid,
        s("ms k 1\r\nx\r\nmd k T30\r\nmg k v\r\n"),
    );
    add(
        "md_C",
        Valid,
        s("ms k 1\r\nx\r\nmd k C999999\r\nmd k C{C1}\r\nmg k v\r\n"),
    );
    add(
        "md_O_k",
        Valid,
        s("md k O5 k\r\nms k 1\r\nx\r\nmd k O6 k\r\nmd k O7 k q\r\nmn\r\n"),
    );
    add(
        "md_b",
        Valid,
        format!(
            "{}md {foo_b64} b k\r\nget foo\r\nmd {foo_b64} b q\r\nmn\r\n",
            text(&ms(&foo_b64, b"x", " b"))
        )
        .into_bytes(),
    );
    add("md_b_invalid_base64", Invalid, s("md !!!! b\r\n"));
    add("md_invalid_flag", Invalid, s("md k x\r\nmd k v\r\n"));
    add("md_duplicate_flag", Invalid, s("md k q q\r\n"));
    add("md_bad_C", Invalid, s("md k Cx\r\n"));
    add("md_bad_T", Invalid, s("md k I Tx\r\n"));
    add(
        "md_too_many_tokens",
        Invalid,
        format!("md k{}\r\n", " O1".repeat(20)).into_bytes(),
    );

    // ---- ma.
    add("ma_miss", Valid, s("ma k\r\nma k v\r\nma k q\r\nmn\r\n"));
    add(
        "ma_N_J",
        Valid,
        s("ma k N0 J10 v\r\nma k v\r\nma j N0 J10\r\nmg j v\r\n"),
    );
    add("ma_N_default_J", Valid, s("ma k N0 v\r\nma k N0 v\r\n"));
    add("ma_N_ttl", Valid, s("ma k N100 J3 v t\r\nmg k t\r\n"));
    add(
        "ma_modes",
        Valid,
        s("ms k 2\r\n10\r\nma k MI v\r\nma k M+ v\r\nma k MD v\r\nma k M- v\r\n"),
    );
    add("ma_mode_invalid", Invalid, s("ma k MX\r\nma k Mx v\r\n"));
    add(
        "ma_mode_lowercase",
        Invalid,
        s("ms k 2\r\n10\r\nma k Mi v\r\nma k Md v\r\nma k M+ v\r\n"),
    );
    add(
        "ma_M_wrong_length",
        Invalid,
        s("ms k 1\r\n1\r\nma k MII\r\nma k M\r\n"),
    );
    add(
        "ma_D",
        Valid,
        s("ms k 2\r\n10\r\nma k D5 v\r\nma k MD D100 v\r\nma k D18446744073709551615 v\r\n"),
    );
    add(
        "ma_wraps",
        Valid,
        s("ms k 20\r\n18446744073709551615\r\nma k v\r\nmg k v\r\n"),
    );
    // A number that shrinks is rewritten in place, padded with spaces, unless a reply still
    // being sent holds the item (then memcached makes a new item): no value is read
    // between the store and the decrement, or the outcome would depend on when memcached
    // flushes its replies.
    add(
        "ma_length_changes",
        Valid,
        s("ms k 1\r\n9\r\nma k v\r\nma k MD D5 v\r\nmg k v s\r\nms j 2\r\n10\r\nma j MD\r\nmg j v s\r\n"),
    );
    add(
        "ma_T",
        Valid,
        s("ms k 1\r\n1\r\nma k T100 t v\r\nmg k t\r\n"),
    );
    add(
        "ma_C",
        Valid,
        s("ms k 1\r\n1\r\nma k C999999\r\nma k C{C1} v\r\nmg k v\r\n"),
    );
    add("ma_q", Valid, s("ms k 1\r\n1\r\nma k q\r\nma k q v\r\nma nope q\r\nma n q N0 J5 v\r\nma n q N0 J5 v\r\nma n q N0 J5\r\nmn\r\nmg k v\r\nmg n v\r\n"));
    add(
        "ma_O_k",
        Valid,
        s("ma k O1 k\r\nms k 1\r\n1\r\nma k O2 k v\r\nma k O3 k\r\n"),
    );
    add(
        "ma_t_c",
        Valid,
        s("ms k 1\r\n1\r\nma k t c v\r\nma k t c\r\n"),
    );
    add(
        "ma_b",
        Valid,
        format!(
            "{}ma {foo_b64} b v k\r\nget foo\r\nma {foo_b64} b q\r\nmn\r\n",
            text(&ms(&foo_b64, b"5", " b"))
        )
        .into_bytes(),
    );
    add("ma_b_invalid_base64", Invalid, s("ma !!!! b\r\n"));
    add(
        "ma_non_numeric",
        Valid,
        s("ms k 2\r\nab\r\nma k\r\nma k q\r\nmn\r\n"),
    );
    add(
        "ma_number_too_long",
        Valid,
        s("ms k 21\r\n123456789012345678901\r\nma k v\r\n"),
    );
    add("ma_bad_D", Invalid, s("ma k Dabc\r\nma k D-1\r\n"));
    add("ma_bad_J", Invalid, s("ma k N0 Jabc\r\n"));
    add("ma_bad_N", Invalid, s("ma k Nabc\r\n"));
    add("ma_bad_T", Invalid, s("ma k Tabc\r\n"));
    add("ma_bad_C", Invalid, s("ma k Cabc\r\n"));
    add("ma_invalid_flag", Invalid, s("ma k x\r\nma k f\r\n"));
    add("ma_duplicate_flag", Invalid, s("ma k v v\r\n"));
    add(
        "ma_too_many_tokens",
        Invalid,
        format!("ma k{}\r\n", " O1".repeat(20)).into_bytes(),
    );

    // ---- mn, me.
    add("mn", Valid, s("mn\r\n"));
    add("mn_extra_token", Valid, s("mn foo\r\nmn a b c\r\n"));
    add(
        "mn_between_quiet",
        Valid,
        s("mg a q v\r\nmn\r\nms a 1 q\r\nA\r\nmn\r\nmg a q v\r\nmn\r\n"),
    );
    add("me_miss", Valid, s("me k\r\n"));
    add(
        "me_hit",
        Valid,
        s("ms k 1\r\nx\r\nme k\r\nmg k v\r\nme k\r\n"),
    );
    add("me_ttl", Valid, s("ms k 5 T100 F3\r\nhello\r\nme k\r\n"));
    add(
        "me_b",
        Valid,
        format!(
            "{}me {foo_b64} b\r\nme foo\r\n",
            text(&ms(&foo_b64, b"x", " b"))
        )
        .into_bytes(),
    );
    add("me_no_key", Invalid, s("me\r\n"));
    add(
        "me_key_too_long",
        Invalid,
        format!("me {k251}\r\n").into_bytes(),
    );
    add("me_extra_tokens", Valid, s("ms k 1\r\nx\r\nme k v q\r\n"));

    add(
        "me_q",
        Valid,
        s("me nope q\r\nms k 1\r\nx\r\nme k q\r\nmn\r\n"),
    );
    add(
        "ms_I_without_C",
        Valid,
        s("ms k 1 I\r\nx\r\nms k 1 I\r\ny\r\nmg k v c\r\n"),
    );
    add(
        "md_I_missing_and_quiet",
        Valid,
        s("md k I\r\nmd k q I T30\r\nms k 1\r\nx\r\nmd k q I T30\r\nmg k v\r\nmn\r\n"),
    );
    add(
        "vivify_zero_and_negative_ttl",
        Valid,
        s("mg k N0 v t\r\nmg j N-1 v\r\nma n N-1 J3 v\r\nmg n v\r\n"),
    );

    // ---- Malformed lines, per command.
    for cmd in ["mg", "ms", "md", "ma"] {
        let leak = |name: &str| format!("{cmd}_{name}");
        add(&leak("no_key"), Invalid, format!("{cmd}\r\n").into_bytes());
        add(
            &leak("only_space"),
            Invalid,
            format!("{cmd} \r\n").into_bytes(),
        );
        let data = if cmd == "ms" { " 1" } else { "" };
        let block = if cmd == "ms" { "x\r\n" } else { "" };
        add(
            &leak("key_too_long"),
            Invalid,
            format!("{cmd} {k251}{data}\r\n{block}mg k v\r\n").into_bytes(),
        );
        let long_b64 = b64(&[b'z'; 200]); // 268 characters, 200 bytes decoded
        add(
            &leak("b64_key_token_too_long"),
            Invalid,
            format!("{cmd} {long_b64}{data} b\r\n{block}").into_bytes(),
        );
        add(
            &leak("not_base64"),
            Invalid,
            format!("{cmd} k{data} b\r\n{block}").into_bytes(),
        );
        add(
            &leak("flag_not_ascii"),
            Invalid,
            format!("{cmd} k{data} \u{e9}\r\n{block}").into_bytes(),
        );
        // memcached takes 19 tokens (17 flags after the key, 16 after an ms length).
        let most = if cmd == "ms" { 16 } else { 17 };
        for (name, flags) in [("tokens_at_limit", most), ("tokens_over_limit", most + 1)] {
            add(
                &leak(name),
                Invalid,
                format!("{cmd} k{data}{}\r\n{block}", " q".repeat(flags)).into_bytes(),
            );
        }
    }
    add(
        "mg_too_many_tokens",
        Invalid,
        format!("mg k{}\r\n", " v".repeat(20)).into_bytes(),
    );
    add(
        "mg_duplicate_flag",
        Invalid,
        s("mg k v v\r\nmg k O1 O2\r\n"),
    );
    add(
        "mg_invalid_flag",
        Invalid,
        s("mg k x\r\nmg k I\r\nmg k M\r\n"),
    );
    add("mg_bad_T", Invalid, s("mg k Tabc\r\nmg k T\r\n"));
    add("mg_bad_N", Invalid, s("mg k Nabc\r\n"));
    add("mg_bad_R", Invalid, s("mg k R1x\r\n"));
    add(
        "mg_invalid_base64",
        Invalid,
        s("mg !!!! b\r\nmg Zm9v= b\r\n"),
    );
    add("meta_uppercase", Invalid, s("MG k v\r\nMN\r\n"));
    add("meta_unknown", Invalid, s("mx k\r\nm k\r\nmgg k\r\n"));
    add("meta_tab_separator", Invalid, s("mg\tk v\r\n"));
    add(
        "meta_key_with_control_byte",
        Invalid,
        s("ms k\x01 1\r\nx\r\nmg k\x01 v\r\n"),
    );

    // ---- Quiet flags and keys that look alike; numbers as memcached's strto* read them.
    add(
        "key_named_q",
        Valid,
        s("mg q v\r\nms q 1\r\nx\r\nmg q v k\r\nmd q q\r\nmg q v\r\nma q q N0 J1 v\r\nmn\r\n"),
    );
    add(
        "key_named_like_flags",
        Valid,
        s("ms v 1 q\r\nx\r\nmg v q v k\r\nms O1 1\r\ny\r\nmg O1 O2 k v\r\nmd b q\r\nmn\r\n"),
    );
    add(
        "q_flag_with_junk",
        Valid,
        s("mg k qx v\r\nmg k q1 k\r\nms k 1 qfoo\r\nx\r\nmg k qq v\r\nmd j qz\r\nmn\r\n"),
    );
    add(
        "ma_q_creates_without_v",
        Valid,
        s("ma k qz N0 J1\r\nma k qz\r\nma k q N0 J1\r\nmn\r\nmg k v\r\n"),
    );
    add(
        "md_q_errors_shown",
        Valid,
        s("ms k 1\r\nx\r\nmd k q C999999\r\nma k q\r\nma k q C999999\r\nmn\r\n"),
    );
    add(
        "ms_q_too_large",
        Invalid,
        [ms("k", &vec![b'x'; 1_100_000], " q"), s("mn\r\n")].concat(),
    );
    add(
        "mg_q_errors_shown",
        Invalid,
        s("mg k q x\r\nmg k q v v\r\nmg k q Tx\r\nmg !!! b q\r\nmn\r\n"),
    );
    add(
        "ms_length_forms",
        Invalid,
        s("ms k +1\r\nx\r\nms k 01\r\ny\r\nms k 1x\r\nz\r\nmg k v\r\n"),
    );
    add(
        "ms_length_huge",
        Invalid,
        s("ms k 4294967297\r\nx\r\nmg k v\r\n"),
    );
    add(
        "numbers_with_signs",
        Valid,
        s("mg k T+5 t\r\nmg k N-1 v\r\nmg k T99999999999\r\nma j N0 J5 D+1 v\r\n"),
    );
    add("numbers_overflow", Invalid, s("ma k N0 J18446744073709551616 v\r\nma k D18446744073709551616\r\nms k 1 C18446744073709551616\r\nx\r\nmd k C-1\r\n"));

    // ---- Mixed with the text protocol, in one stream.
    add(
        "text_and_meta_share_items",
        Valid,
        s("set t 7 0 2\r\nhi\r\nmg t v f\r\nms t 3 F8\r\nabc\r\nget t\r\nma t N0 J1\r\nincr u 1\r\nma u N0 J1 v\r\nincr u 1\r\nmd t q\r\nget t u\r\nmn\r\n"),
    );
    add(
        "errors_between_meta_requests",
        Invalid,
        s("mg a q v\r\nmg a x\r\nms a 1 q\r\nA\r\nbogus\r\nmg a v q\r\nma a\r\nmn\r\n"),
    );
    v
}

// ---------------------------------------------------------------------------------------
// The differential rig.

/// Runs `bytes` and a `version` sentinel on both sides of `rig` (see [`Rig::run_with`]);
/// returns (memcached, memroute) with the sentinel's line dropped. With `pieces`, the first
/// 2 KB go out in writes of that many bytes.
fn run(rig: &Rig, bytes: &[u8], pieces: Option<usize>) -> (Vec<u8>, Vec<u8>) {
    rig.run_with(bytes, |c, bytes, sentinels| {
        // A writer thread: a large case must not fill both directions' buffers.
        let mut writer = c.stream.try_clone().unwrap();
        let mut request = bytes.to_vec();
        request.extend_from_slice(b"version\r\n");
        let sending = thread::spawn(move || {
            let mut rest = &request[..];
            if let Some(n) = pieces {
                while rest.len() > n && request.len() - rest.len() < 2048 {
                    writer.write_all(&rest[..n])?;
                    rest = &rest[n..];
                    // Let each piece arrive on its own.
                    thread::sleep(Duration::from_micros(50));
                }
            }
            writer.write_all(rest)
        });
        let got = c.read_case(sentinels);
        sending.join().unwrap().expect("write case");
        got
    })
}

fn every_case_answers_like_memcached_over(n: usize, pieces: Option<usize>) {
    let rig = Rig::start(n);
    let cases = cases();
    case_names(cases.iter().map(|c| c.name.as_str()).collect(), 150);
    let mut failures = Vec::new();
    for case in &cases {
        let (memcached, memroute) = run(&rig, &case.bytes, pieces);
        trace_case(
            "META_VERBOSE",
            &case.name,
            &show(&memcached),
            &show(&memroute),
        );
        assert!(
            !cut_short(&memcached),
            "case {} is broken: memcached answered {:?}",
            case.name,
            show(&memcached)
        );
        if let Err(why) = compare(&memcached, &memroute, n > 1) {
            failures.push(format!(
                "{}: request {:?}\n    memcached: {:?}\n    memroute:  {:?}\n  {why}",
                case.name,
                show(&case.bytes),
                show(&memcached),
                show(&memroute)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} meta cases differ (memroute over {n} backend(s), pieces {pieces:?}):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_meta_case_answers_like_memcached() {
    every_case_answers_like_memcached_over(1, None);
}

#[test]
fn every_meta_case_answers_like_memcached_over_three_backends() {
    every_case_answers_like_memcached_over(3, None);
}

/// The same cases written 3 bytes at a time (the first 2 KB of each): lines and data
/// blocks cut anywhere.
#[test]
fn every_meta_case_answers_like_memcached_in_pieces() {
    every_case_answers_like_memcached_over(3, Some(3));
}

/// All the valid cases in one stream, over three backends: no flush in between, so the
/// cases see each other's items, on both sides alike.
#[test]
fn pipelined_valid_meta_cases_answer_like_memcached() {
    let rig = Rig::start(3);
    let pipeline: Vec<u8> = cases()
        .iter()
        .filter(|c| c.kind == Kind::Valid && !has_placeholder(&c.bytes))
        .flat_map(|c| c.bytes.iter().copied())
        .collect();
    assert_eq!(version_commands(&pipeline), 0);
    let (memcached, memroute) = run(&rig, &pipeline, None);
    assert!(!cut_short(&memcached), "{}", show(&memcached));
    if let Err(why) = compare(&memcached, &memroute, true) {
        panic!(
            "pipelined valid cases ({} bytes of requests): {why}",
            pipeline.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Pipelines over three backends.

/// One request of a generated pipeline.
#[derive(Clone, Debug)]
struct Req {
    bytes: Vec<u8>,
    /// The key it is routed by (None for `mn`).
    key: Option<String>,
    /// A text-protocol request (`get`): a dead backend's text retrieval is a miss.
    text: bool,
    /// Sent with `q`.
    quiet: bool,
}

impl Req {
    fn new(bytes: impl Into<Vec<u8>>, key: Option<&str>) -> Req {
        let bytes = bytes.into();
        let line = &bytes[..find(&bytes, b"\r\n").unwrap()];
        let quiet = line.split(|b| *b == b' ').skip(2).any(|t| t == b"q");
        Req {
            text: !bytes.starts_with(b"m"),
            bytes,
            key: key.map(str::to_string),
            quiet,
        }
    }
}

/// The keys a generated pipeline for client `prefix` uses: plain keys (two thirds of them
/// seeded), counters (seeded with a number), and one key holding text.
struct KeySet {
    plain: Vec<String>,
    counters: Vec<String>,
    text_key: String,
}

impl KeySet {
    fn new(prefix: &str) -> KeySet {
        KeySet {
            plain: (0..60).map(|i| format!("{prefix}:{i}")).collect(),
            counters: (0..12).map(|i| format!("{prefix}:n{i}")).collect(),
            text_key: format!("{prefix}:text"),
        }
    }

    fn all(&self) -> Vec<String> {
        let mut all = self.plain.clone();
        all.extend(self.counters.iter().cloned());
        all.push(self.text_key.clone());
        all
    }

    /// The text-protocol sets that seed the data (the same on every side).
    fn seed(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, k) in self.plain.iter().enumerate() {
            if i % 3 != 0 {
                out.extend(common::set_request_bytes(k, i as u32, &value(i as u64)));
            }
        }
        for (i, k) in self.counters.iter().enumerate() {
            if i % 4 != 3 {
                out.extend(common::set_request_bytes(
                    k,
                    0,
                    format!("{}", 100 * i).as_bytes(),
                ));
            }
        }
        out.extend(common::set_request_bytes(
            &self.text_key,
            0,
            b"not a number",
        ));
        out
    }
}

/// A value: printable bytes (never a line of its own starting `MN` or `VERSION`).
fn value(seed: u64) -> Vec<u8> {
    pattern(seed, 1 + (mix(seed) % 40) as usize)
}

/// `n` requests over `keys`, quiet and loud, text and meta, `mn` now and then; ends with
/// `mn`.
fn mixed_requests(keys: &KeySet, n: usize, seed: u64) -> Vec<Req> {
    let mut out = Vec::new();
    for i in 0..n as u64 {
        let r = mix(seed ^ i);
        let key = &keys.plain[(r % keys.plain.len() as u64) as usize];
        let counter = &keys.counters[((r >> 8) % keys.counters.len() as u64) as usize];
        let k = Some(key.as_str());
        out.push(Req::new(format!("mg {key} q v\r\n"), k));
        match (r >> 16) % 23 {
            0 | 1 => {
                let mut b = format!("ms {key} {} q F{}\r\n", value(r).len(), r % 7).into_bytes();
                b.extend(value(r));
                b.extend_from_slice(b"\r\n");
                out.push(Req::new(b, k));
            }
            2 => out.push(Req::new(format!("md {key} q\r\n"), k)),
            3 => out.push(Req::new(
                format!("ma {counter} q D{}\r\n", r % 5),
                Some(counter),
            )),
            4 => out.push(Req::new(
                format!("ma {counter} q N0 J7 v\r\n"),
                Some(counter),
            )),
            5 => out.push(Req::new(format!("ma {counter} v MD\r\n"), Some(counter))),
            6 => out.push(Req::new(format!("get {key}\r\n"), k)),
            7 => out.push(Req::new(format!("mg {key} v f k O{i}\r\n"), k)),
            8 => out.push(Req::new(format!("mg {key} q k s f\r\n"), k)),
            9 => out.push(Req::new(
                format!("ma {} q\r\n", keys.text_key),
                Some(&keys.text_key),
            )),
            10 => out.push(Req::new(format!("md {key} q O{i} k\r\n"), k)),
            11 => out.push(Req::new("mn\r\n", None)),
            12 => {
                let mut b = format!("ms {key} 2 q ME\r\n").into_bytes();
                b.extend_from_slice(b"ad\r\n");
                out.push(Req::new(b, k));
            }
            13 => {
                let mut b = format!("set {key} 3 0 3\r\n").into_bytes();
                b.extend_from_slice(b"set\r\n");
                out.push(Req::new(b, k));
            }
            14 => out.push(Req::new(format!("mg {key} q h\r\n"), k)),
            _ => {}
        }
    }
    out.push(Req::new("mn\r\n", None));
    out
}

fn concat(reqs: &[Req]) -> Vec<u8> {
    reqs.iter().flat_map(|r| r.bytes.iter().copied()).collect()
}

/// Writes `bytes` from a thread (so that replies can be read while a large pipeline is
/// still being written).
fn send_in_thread(c: &Conn, bytes: Vec<u8>) -> thread::JoinHandle<()> {
    let mut writer = c.stream.try_clone().unwrap();
    thread::spawn(move || writer.write_all(&bytes).expect("write pipeline"))
}

/// Reads complete units until `count` `MN` lines have arrived; returns them all.
fn read_through_mn(c: &mut Conn, count: usize, within: Duration) -> Vec<u8> {
    c.read_until(within, |buf| {
        let mut seen = 0;
        let mut at = 0;
        while let Some(n) = unit_len(&buf[at..]) {
            if &buf[at..at + n] == b"MN\r\n" {
                seen += 1;
                if seen == count {
                    return Some(at + n);
                }
            }
            at += n;
        }
        None
    })
    .unwrap_or_else(|| panic!("waiting for {count} MN lines, got {:?}", show(c.buffered())))
}

/// Sends `bytes` (a pipeline ending with `mn`) on `c` and reads its whole reply.
fn pipeline_reply(c: &mut Conn, bytes: &[u8]) -> Vec<u8> {
    let mns = units_of_requests(bytes)
        .iter()
        .filter(|r| r.starts_with(b"mn"))
        .count();
    let sending = send_in_thread(c, bytes.to_vec());
    let reply = read_through_mn(c, mns, Duration::from_secs(20));
    sending.join().unwrap();
    reply
}

/// `bytes` cut into requests (a line, with the data block of a storage command).
fn units_of_requests(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let line = find(rest, b"\r\n").map_or(rest.len(), |i| i + 2);
        let fields: Vec<&[u8]> = rest[..line]
            .trim_ascii_end()
            .split(|b| *b == b' ')
            .collect();
        let data = match fields[0] {
            b"ms" => text(fields[2]).parse::<usize>().unwrap() + 2,
            b"set" => text(fields[4]).parse::<usize>().unwrap() + 2,
            _ => 0,
        };
        out.push(&rest[..line + data]);
        rest = &rest[line + data..];
    }
    out
}

/// Each of `reqs`'s own reply from a lone memcached (on `c`, already seeded): every
/// request is followed by an `mn` whose `MN` ends its reply.
fn replies_one_by_one(c: &mut Conn, reqs: &[Req]) -> Vec<Vec<u8>> {
    let mut bytes = Vec::new();
    for r in reqs {
        bytes.extend_from_slice(&r.bytes);
        bytes.extend_from_slice(b"mn\r\n");
    }
    let mns = reqs.iter().filter(|r| r.key.is_none()).count() + reqs.len();
    let sending = send_in_thread(c, bytes);
    let all = read_through_mn(c, mns, Duration::from_secs(20));
    sending.join().unwrap();
    let mut units = units(&all).into_iter();
    reqs.iter()
        .map(|r| {
            let mut reply = Vec::new();
            if r.key.is_none() {
                reply.extend_from_slice(units.next().unwrap());
            }
            for u in units.by_ref() {
                if u == b"MN\r\n" {
                    break;
                }
                reply.extend_from_slice(u);
            }
            reply
        })
        .collect()
}

/// Three memcached and memroute over them (md5 ring).
struct Three {
    backends: Vec<Memcached>,
    proxy: Proxy,
}

impl Three {
    fn start(extra: &[&str]) -> Three {
        let backends: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
        let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
        let mut flags = vec!["--hash", "md5"];
        flags.extend_from_slice(extra);
        let proxy = Proxy::start(&servers, &flags);
        Three { backends, proxy }
    }

    /// Which backend (index) holds each of `keys`: each is set through memroute, found on
    /// its backend directly, then deleted.
    fn owners(&self, keys: &[String]) -> HashMap<String, usize> {
        let mut c = self.proxy.client();
        for chunk in keys.chunks(200) {
            let sets: Vec<u8> = chunk
                .iter()
                .flat_map(|k| common::set_request_bytes(k, 0, b"probe"))
                .collect();
            c.send(sets);
            for k in chunk {
                assert_eq!(text(&c.read_line()), "STORED\r\n", "probe set {k}");
            }
        }
        let mut owner = HashMap::new();
        for (b, m) in self.backends.iter().enumerate() {
            let mut direct = m.client();
            for chunk in keys.chunks(200) {
                direct.send(format!("get {}\r\n", chunk.join(" ")));
                let reply = direct.read_retrieval();
                for u in units(&reply) {
                    if u.starts_with(b"VALUE ") {
                        let k = text(u.split(|b| *b == b' ').nth(1).unwrap());
                        assert!(owner.insert(k.clone(), b).is_none(), "{k} on two backends");
                    }
                }
            }
        }
        for chunk in keys.chunks(200) {
            let deletes: String = chunk.iter().map(|k| format!("delete {k}\r\n")).collect();
            c.send(deletes);
            for _ in chunk {
                c.read_line();
            }
        }
        assert_eq!(
            owner.len(),
            keys.len(),
            "every probe key found on a backend"
        );
        owner
    }
}

/// Asserts `owner` spreads `keys` over all three backends, with seeded keys (hits) and
/// unseeded ones (misses) on each.
fn assert_spread(keys: &KeySet, owner: &HashMap<String, usize>) {
    for b in 0..3 {
        let hits = keys
            .plain
            .iter()
            .enumerate()
            .filter(|(i, k)| owner[*k] == b && i % 3 != 0)
            .count();
        let misses = keys
            .plain
            .iter()
            .enumerate()
            .filter(|(i, k)| owner[*k] == b && i % 3 == 0)
            .count();
        assert!(
            hits > 0 && misses > 0,
            "backend {b} holds {hits} seeded and {misses} unseeded keys"
        );
    }
}

/// Sends `bytes` (text sets) on `c` and reads one `STORED` per set.
fn seed(c: &mut Conn, bytes: &[u8]) {
    let sets = units_of_requests(bytes).len();
    let sending = send_in_thread(c, bytes.to_vec());
    for _ in 0..sets {
        assert_eq!(text(&c.read_line()), "STORED\r\n");
    }
    sending.join().unwrap();
}

/// After a pipeline: the connection answers `version` next, nothing else is pending.
fn assert_nothing_more(c: &mut Conn, what: &str) {
    c.send(b"version\r\n");
    let line = c.read_line();
    assert_eq!(
        text(&line),
        VERSION_REPLY,
        "{what}: next reply after the pipeline"
    );
}

/// Four clients at once, each a pipeline of about 330 requests (200 quiet `mg`s, quiet
/// and loud `ms`/`md`/`ma`, text `get`s and `set`s, `mn`s) over its own keys on all three
/// backends, answered byte for byte as a lone memcached seeded alike answers the same
/// pipeline. One client writes its pipeline in small pieces.
#[test]
fn quiet_pipelines_spanning_backends_answer_like_one_memcached() {
    let three = Three::start(&["--threads", "2"]);
    let lone = Memcached::start();
    let clients = 4;
    let keysets: Vec<KeySet> = (0..clients)
        .map(|c| KeySet::new(&format!("qp{c}")))
        .collect();
    let all: Vec<String> = keysets.iter().flat_map(|k| k.all()).collect();
    let owner = three.owners(&all);
    for keys in &keysets {
        assert_spread(keys, &owner);
    }
    let pipelines: Vec<Vec<u8>> = (0..clients)
        .map(|c| concat(&mixed_requests(&keysets[c], 200, 0x9e3 + c as u64)))
        .collect();
    let expected: Vec<Vec<u8>> = (0..clients)
        .map(|c| {
            let mut direct = Conn::open(lone.port);
            seed(&mut direct, &keysets[c].seed());
            pipeline_reply(&mut direct, &pipelines[c])
        })
        .collect();
    for (c, e) in expected.iter().enumerate() {
        let text_units = units(e);
        let quiet_gets = pipelines[c].windows(5).filter(|w| w == b" q v\r").count();
        // The data is as intended: hits and misses among the quiet gets.
        assert!(
            text_units.iter().filter(|u| u.starts_with(b"VA ")).count() > 20
                && text_units.len() < quiet_gets * 2,
            "client {c}: expected reply {:?}",
            show(e)
        );
    }
    let mut proxied: Vec<Conn> = (0..clients).map(|_| Conn::open(three.proxy.port)).collect();
    for (c, conn) in proxied.iter_mut().enumerate() {
        seed(conn, &keysets[c].seed());
    }
    let results: Vec<(usize, Vec<u8>)> = thread::scope(|s| {
        let handles: Vec<_> = proxied
            .iter_mut()
            .enumerate()
            .map(|(c, conn)| {
                let bytes = pipelines[c].clone();
                let want = expected[c].len();
                s.spawn(move || {
                    let sending = if c == 0 {
                        // In pieces of 7 bytes, each its own write.
                        let mut writer = conn.stream.try_clone().unwrap();
                        thread::spawn(move || {
                            for piece in bytes.chunks(7) {
                                writer.write_all(piece).expect("write piece");
                            }
                        })
                    } else {
                        send_in_thread(conn, bytes)
                    };
                    let got = conn
                        .read_until(Duration::from_secs(20), |b| {
                            (b.len() >= want).then_some(want)
                        })
                        .unwrap_or_else(|| conn.buffered().to_vec());
                    sending.join().unwrap();
                    (c, got)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (c, got) in results {
        if got != expected[c] {
            let at = common::first_difference(&got, &expected[c]);
            let from = at.saturating_sub(120);
            panic!(
                "client {c}: memroute's reply differs from one memcached's at byte {at} of {}:\n    memcached: {:?}\n    memroute:  {:?}",
                expected[c].len(),
                show(&expected[c][from..]),
                show(&got[from..])
            );
        }
    }
    for (c, conn) in proxied.iter_mut().enumerate() {
        assert_nothing_more(conn, &format!("client {c}"));
    }
}

/// Whether `line` is memroute's answer for a request its backend could not serve.
fn is_backend_error(line: &[u8]) -> bool {
    line.starts_with(b"SERVER_ERROR backend ") && line.ends_with(b"\r\n")
}

/// Reads memroute's replies to `reqs` from `c`, checking each against `expected` (a lone
/// memcached's reply to it) or, for a request routed to backend `dead`, one
/// `SERVER_ERROR backend …` line (a text `get` may instead miss: memroute's default for
/// retrievals). With `maybe_served`, a request to the dead backend may have been served
/// before it died: its exact reply is accepted too (the caller makes sure a reply that
/// may be empty is followed by a request whose reply is never an error line). Returns how
/// many were refused and how many served.
fn check_replies_with_dead_backend(
    c: &mut Conn,
    reqs: &[Req],
    expected: &[Vec<u8>],
    owner: &HashMap<String, usize>,
    dead: usize,
    maybe_served: bool,
) -> (usize, usize) {
    let (mut refused, mut served) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, (r, want)) in reqs.iter().zip(expected).enumerate() {
        let to_dead = r.key.as_ref().is_some_and(|k| owner[k] == dead);
        let context = |c: &Conn| {
            format!(
                "request {i} {:?} (to {} backend): memcached answers {:?}; memroute's next bytes {:?}",
                show(&r.bytes),
                if to_dead { "the dead" } else { "a live" },
                show(want),
                show(c.buffered())
            )
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let take = |c: &mut Conn, n: usize| {
            c.read_until(left, |b| (b.len() >= n).then_some(n))
                .unwrap_or_else(|| panic!("timed out: {}", context(c)))
        };
        if !to_dead {
            let got = take(c, want.len());
            assert!(got == *want, "{}", context(c));
            continue;
        }
        // Every reply is at least one line, and one follows this request's (the pipeline
        // ends with `mn`): wait for a whole line, then look.
        c.read_until(left, |b| find(b, b"\r\n").map(|_| 0))
            .unwrap_or_else(|| panic!("timed out: {}", context(c)));
        let next = c.buffered();
        if next.starts_with(b"SERVER_ERROR") {
            let line = c.read_line();
            assert!(is_backend_error(&line), "{:?}: {}", text(&line), context(c));
            refused += 1;
        } else if r.text && r.bytes.starts_with(b"get ") && next.starts_with(b"END\r\n") {
            take(c, 5);
            refused += 1;
        } else {
            assert!(maybe_served, "not refused: {}", context(c));
            let got = take(c, want.len());
            assert!(got == *want, "{}", context(c));
            served += 1;
        }
    }
    (refused, served)
}

/// A backend killed between two writes of a pipelined stream: every request of the second
/// write routed to it (quiet ones included) is answered `SERVER_ERROR backend …` in its
/// place, every other request exactly as one memcached answers it, `mn` last; and then a
/// pipeline in flight when another backend is killed: each of its requests is answered
/// either exactly or with that error, in order, and nothing hangs.
#[test]
fn backend_killed_mid_pipeline_answers_every_request_in_order() {
    let mut three = Three::start(&["--threads", "2", "--timeout", "1000"]);
    let lone = Memcached::start();
    let keys = KeySet::new("kill");
    // Phase 3's keys: each used once.
    let once: Vec<String> = (0..1500).map(|i| format!("once:{i}")).collect();
    let mut all = keys.all();
    all.extend(once.iter().cloned());
    let owner = three.owners(&all);
    assert_spread(&keys, &owner);

    let mut c = Conn::open(three.proxy.port);
    seed(&mut c, &keys.seed());
    let mut direct = Conn::open(lone.port);
    seed(&mut direct, &keys.seed());

    // Phase 1: all backends up; the whole reply is exactly one memcached's.
    let first = mixed_requests(&keys, 150, 1);
    let want = pipeline_reply(&mut direct, &concat(&first));
    let got = pipeline_reply(&mut c, &concat(&first));
    if let Err(why) = compare(&want, &got, false) {
        panic!("before the kill: {why}");
    }

    // Phase 2: backend 1 killed; the next write's requests, one by one.
    let dead = 1;
    three.backends[dead].kill();
    let second = mixed_requests(&keys, 150, 2);
    let expected = replies_one_by_one(&mut direct, &second);
    let dead_quiet = second
        .iter()
        .filter(|r| r.quiet && r.key.as_ref().is_some_and(|k| owner[k] == dead))
        .count();
    assert!(
        dead_quiet > 20,
        "only {dead_quiet} quiet requests to the dead backend"
    );
    let started = Instant::now();
    let sending = send_in_thread(&c, concat(&second));
    let (refused, _) =
        check_replies_with_dead_backend(&mut c, &second, &expected, &owner, dead, false);
    sending.join().unwrap();
    assert!(
        refused >= dead_quiet,
        "{refused} refused, {dead_quiet} quiet requests alone"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second write took {:?}",
        started.elapsed()
    );
    assert_nothing_more(&mut c, "after the kill");

    // Phase 3: 1,500 requests in one write, each of its own key (quiet and loud), and
    // backend 2 killed as soon as the first reply arrives. A quiet request to it is
    // followed by a loud request to a backend still up, so that its reply (none when
    // served, an error when not) cannot be mistaken for another's.
    let dead = 2;
    let live_key = keys
        .plain
        .iter()
        .enumerate()
        .find(|(i, k)| i % 3 != 0 && owner[*k] == 0)
        .map(|(_, k)| k.clone())
        .unwrap();
    let mut third = Vec::new();
    let mut seeded = Vec::new();
    for (i, key) in once.iter().filter(|k| owner[*k] != 1).enumerate() {
        if i % 2 == 0 {
            seeded.extend(common::set_request_bytes(key, 1, &value(i as u64)));
        }
        let k = Some(key.as_str());
        let req = match i % 5 {
            0 => Req::new(format!("mg {key} q v f\r\n"), k),
            1 => Req::new(format!("mg {key} v k O{i}\r\n"), k),
            2 => {
                let mut b = format!("ms {key} 4 q\r\n").into_bytes();
                b.extend_from_slice(b"data\r\n");
                Req::new(b, k)
            }
            3 => Req::new(format!("md {key} q\r\n"), k),
            _ => Req::new(format!("ma {key} q N0 J9 v\r\n"), k),
        };
        let quiet_to_dead = req.quiet && owner[key] == dead;
        third.push(req);
        if quiet_to_dead {
            third.push(Req::new(format!("mg {live_key} v k\r\n"), Some(&live_key)));
        }
        if i % 100 == 99 {
            third.push(Req::new("mn\r\n", None));
        }
    }
    third.push(Req::new("mn\r\n", None));
    seed(&mut c, &seeded);
    seed(&mut direct, &seeded);
    let expected = replies_one_by_one(&mut direct, &third);
    // The first half is written at once; the second only once the backend is dead, so
    // that some requests surely find it gone.
    let half = third.len() / 2;
    let (first_half, second_half) = (concat(&third[..half]), concat(&third[half..]));
    let (killed_tx, killed_rx) = std::sync::mpsc::channel::<()>();
    let mut writer = c.stream.try_clone().unwrap();
    let started = Instant::now();
    let sending = thread::spawn(move || {
        writer.write_all(&first_half).expect("write first half");
        killed_rx.recv().unwrap();
        writer.write_all(&second_half).expect("write second half");
    });
    c.read_until(READ_TIMEOUT, |b| (!b.is_empty()).then_some(0))
        .expect("a first reply");
    three.backends[dead].kill();
    killed_tx.send(()).unwrap();
    let (refused, served) =
        check_replies_with_dead_backend(&mut c, &third, &expected, &owner, dead, true);
    sending.join().unwrap();
    eprintln!(
        "in flight: of the requests to the killed backend, {refused} refused, {served} served \
         before it died, in {:?}",
        started.elapsed()
    );
    let after_kill = third[half..]
        .iter()
        .filter(|r| r.key.as_ref().is_some_and(|k| owner[k] == dead))
        .count();
    assert!(
        refused >= after_kill,
        "{refused} refused, but {after_kill} were written after the kill"
    );
    assert_nothing_more(&mut c, "after the second kill");
}

/// A backend that never answers: its meta requests, quiet ones too, are answered
/// `SERVER_ERROR backend …` once the timeout passes, in their places among the healthy
/// backend's exact replies, and `mn` waits for them.
#[test]
fn stalled_backend_quiet_requests_time_out_in_order() {
    let healthy = Memcached::start();
    let stalled = BadBackend::start(Behaviour::Stall);
    let servers = vec![healthy.server(1), format!("127.0.0.1:{}:1", stalled.port)];
    let proxy = Proxy::start(
        &servers,
        &["--threads", "1", "--hash", "md5", "--timeout", "300"],
    );
    let lone = Memcached::start();
    // Which backend each key is on: a pipelined `ms` of each, answered HD or timed out.
    let keys: Vec<String> = (0..24).map(|i| format!("stall:{i}")).collect();
    let mut c = Conn::open(proxy.port);
    let probe: Vec<u8> = keys.iter().flat_map(|k| ms(k, b"v", "")).collect();
    c.send(&probe);
    let mut owner = HashMap::new();
    for k in &keys {
        let line = c.read_line();
        let b = if line == b"HD\r\n" {
            0
        } else {
            assert!(is_backend_error(&line), "ms {k}: {:?}", text(&line));
            1
        };
        owner.insert(k.clone(), b);
    }
    let on = |b: usize| keys.iter().filter(|k| owner[*k] == b).count();
    assert!(on(0) >= 4 && on(1) >= 4, "{owner:?}");
    let mut direct = Conn::open(lone.port);
    let seeded: Vec<u8> = keys
        .iter()
        .filter(|k| owner[*k] == 0)
        .flat_map(|k| ms(k, b"v", ""))
        .collect();
    direct.send(&seeded);
    for _ in 0..on(0) {
        assert_eq!(direct.read_line(), b"HD\r\n");
    }

    let mut reqs = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let k = Some(key.as_str());
        reqs.push(match i % 4 {
            0 => Req::new(format!("mg {key} q v\r\n"), k),
            1 => Req::new([ms(key, b"new", " q")].concat(), k),
            2 => Req::new(format!("md {key} q\r\n"), k),
            _ => Req::new(format!("ma {key} q N0 J1 v\r\n"), k),
        });
        reqs.push(Req::new(format!("mg {key} q v k\r\n"), k));
    }
    reqs.push(Req::new("mn\r\n", None));
    let expected = replies_one_by_one(&mut direct, &reqs);
    let started = Instant::now();
    let sending = send_in_thread(&c, concat(&reqs));
    let (refused, served) =
        check_replies_with_dead_backend(&mut c, &reqs, &expected, &owner, 1, false);
    sending.join().unwrap();
    assert_eq!((refused, served), (2 * on(1), 0));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the stalled requests failed before the timeout: {:?}",
        started.elapsed()
    );
    assert_nothing_more(&mut c, "after the stalled backend's timeouts");
}

// ---------------------------------------------------------------------------------------
// Routing by the decoded key.

/// Sends `bytes` then a `version` sentinel on `c`; the replies before the sentinel's.
fn exchange(c: &mut Conn, bytes: &[u8]) -> Vec<u8> {
    c.send(bytes);
    c.send(b"version\r\n");
    let reply = c.read_case(1 + version_commands(bytes));
    assert!(
        !cut_short(&reply),
        "{:?} answered {:?}",
        show(bytes),
        show(&reply)
    );
    reply
}

/// Keys whose base64 form, read as a key of its own, lands on another backend than the
/// decoded key: `ms <b64> b` must store the decoded key (where `get <decoded>` finds it),
/// and `mg`/`md`/`ma`/`me` with `b` must find a key stored by text commands. Every reply
/// is compared with a lone memcached's to the same requests; where each item sits is
/// checked on the backends directly.
#[test]
fn base64_keys_route_by_their_decoded_bytes() {
    let backends: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let lone = Memcached::start();
    let port = free_port();
    let files = TempFiles::new();
    let config = files.write(
        "memroute.toml",
        &md5_pool_toml("main", port, &named(&backends), ""),
    );
    let proxy = Proxy::start_config(&config, port, &[]);
    let index = |addr: &str| backends.iter().position(|m| m.address() == addr).unwrap();
    let mut direct = Conn::open(lone.port);
    let mut proxied = Conn::open(proxy.port);
    let mut failures = Vec::new();
    let mut differential = |direct: &mut Conn, what: String, bytes: &[u8]| {
        let want = exchange(direct, bytes);
        let got = exchange(&mut proxied, bytes);
        if let Err(why) = compare(&want, &got, true) {
            failures.push(format!("{what}: {:?}: {why}", show(bytes)));
        }
    };

    let candidates: Vec<String> = (0..200).map(|i| format!("route-{i}")).collect();
    let encoded: Vec<String> = candidates.iter().map(|k| b64(k.as_bytes())).collect();
    let owner_plain = route_owners(&config, &candidates);
    let owner_encoded = route_owners(&config, &encoded);
    let keys: Vec<(String, String)> = candidates
        .iter()
        .zip(&encoded)
        .filter(|(k, e)| owner_plain[*k] != owner_encoded[*e])
        .take(16)
        .map(|(k, e)| (k.clone(), e.clone()))
        .collect();
    assert!(
        keys.len() >= 16,
        "too few keys whose forms hash apart: {keys:?}"
    );
    let homes: HashSet<&String> = keys.iter().map(|(k, _)| &owner_plain[k]).collect();
    assert_eq!(homes.len(), 3, "the keys' homes cover every backend");

    for (i, (key, enc)) in keys.iter().enumerate() {
        let value = format!("v{i}");
        let set = text(&common::set_request_bytes(key, 3, value.as_bytes()));
        let requests = match i % 4 {
            // ms b, then text and meta reads by either form.
            0 => format!(
                "{}get {key}\r\nmg {enc} b v k f\r\nmg {key} v k\r\nme {enc} b\r\n",
                text(&ms(enc, value.as_bytes(), " b F5"))
            ),
            // A text set, then meta reads by the base64 form.
            1 => format!("{set}mg {enc} b v k s\r\nmg {enc} b q k\r\nme {enc} b\r\nmn\r\n"),
            // A text set, deleted by the base64 form.
            2 => format!("{set}md {enc} b q\r\nget {key}\r\nmd {enc} b k\r\nmn\r\n"),
            // Counters by either form.
            _ => format!(
                "ma {enc} b N0 J40 v\r\nma {enc} b v k\r\nget {key}\r\nincr {key} 5\r\nma {enc} b q\r\nma {enc} b MD v\r\n"
            ),
        };
        differential(
            &mut direct,
            format!("key {key} ({enc})"),
            requests.as_bytes(),
        );
        // Where the item sits: on the decoded key's backend, nowhere else.
        let home = index(&owner_plain[key]);
        let wrong = index(&owner_encoded[enc]);
        for (b, m) in backends.iter().enumerate() {
            let held = m.client().get(key).is_some();
            assert_eq!(
                held,
                b == home && i % 4 != 2,
                "{key} (base64 {enc}) on backend {b}: home {home}, the base64 form's {wrong}"
            );
            assert_eq!(
                m.client().get(enc),
                None,
                "{enc} stored as a key of its own"
            );
        }
    }

    // Keys no text command can name (spaces, a tab, bytes beyond ASCII): each lands on the
    // backend that `memroute route` gives for its decoded bytes.
    let binary: Vec<Vec<u8>> = (0..30)
        .map(|i| format!("bin key\t{i} \u{e9}").into_bytes())
        .collect();
    let names: Vec<String> = binary.iter().map(|k| text(k)).collect();
    let owners = route_owners(&config, &names);
    let mut seen = HashSet::new();
    for (k, name) in binary.iter().zip(&names) {
        let enc = b64(k);
        differential(
            &mut direct,
            format!("binary key {name:?}"),
            format!(
                "{}mg {enc} b v k\r\nme {enc} b\r\nma {enc} b\r\nmd {enc} b q\r\nmg {enc} b k\r\n{}",
                text(&ms(&enc, b"bin", " b")),
                text(&ms(&enc, b"again", " b"))
            )
            .as_bytes(),
        );
        let home = index(&owners[name]);
        seen.insert(home);
        // The lone memcached holds the item: each backend answers as it does (the home
        // backend) or as it does for a key it does not hold.
        let probe = format!("mg {enc} b v\r\n");
        let held = exchange(&mut direct, probe.as_bytes());
        let missing = exchange(
            &mut direct,
            format!("mg {} b v\r\n", b64(b"never")).as_bytes(),
        );
        assert_ne!(held, missing);
        for (b, m) in backends.iter().enumerate() {
            let got = exchange(&mut Conn::open(m.port), probe.as_bytes());
            let want = if b == home { &held } else { &missing };
            assert_eq!(
                text(&got),
                text(want),
                "{name:?} on backend {b} (its home is {home})"
            );
        }
    }
    assert_eq!(seen.len(), 3, "the binary keys spread over every backend");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// With a hash tag, a base64 key is routed by the tag of its decoded bytes: `ms` of
/// `{tag}:meta` in base64 lands where `set {tag}:text` does.
#[test]
fn base64_keys_route_by_the_hash_tag_of_their_decoded_bytes() {
    let backends: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let servers: Vec<String> = backends.iter().map(|m| m.server(1)).collect();
    let proxy = Proxy::start(&servers, &["--hash", "md5", "--hash-tag", "{}"]);
    let mut c = Conn::open(proxy.port);
    let mut homes = HashSet::new();
    for i in 0..30 {
        let enc = b64(format!("{{tag{i}}}:meta").as_bytes());
        let text_key = format!("{{tag{i}}}:text");
        c.send(&ms(&enc, b"m", " b q"));
        c.send(&common::set_request_bytes(&text_key, 0, b"t"));
        c.send(b"mn\r\n");
        assert_eq!(text(&c.read_line()), "STORED\r\n");
        assert_eq!(text(&c.read_line()), "MN\r\n");
        let holds = |probe: String| -> Vec<usize> {
            (0..backends.len())
                .filter(|&b| {
                    let mut direct = Conn::open(backends[b].port);
                    direct.send(probe.as_bytes());
                    direct.read_line() == b"HD\r\n"
                })
                .collect()
        };
        let meta_home = holds(format!("mg {enc} b\r\n"));
        let text_home = holds(format!("mg {text_key}\r\n"));
        assert_eq!(meta_home.len(), 1, "{{tag{i}}}:meta on {meta_home:?}");
        assert_eq!(
            meta_home, text_home,
            "tag{i}: the base64 key and the text key"
        );
        homes.insert(meta_home[0]);
    }
    assert!(homes.len() >= 2, "the tags all hash to one backend");
}

// ---------------------------------------------------------------------------------------
// Tokyo Tyrant pools, and stats.

const TT_REFUSED: &str = "SERVER_ERROR meta commands not supported by tokyotyrant pool\r\n";

/// A Tokyo Tyrant pool answers every meta command (quiet ones too) with its refusal, and
/// `mn` with `MN`; an `ms` data block is consumed, not read as commands; no meta command
/// reaches a ttserver.
#[test]
fn tokyo_tyrant_pool_refuses_meta_commands() {
    let tts = [FakeTyrant::start(), FakeTyrant::start()];
    let servers: Vec<String> = tts.iter().map(|t| t.server(1)).collect();
    let proxy = Proxy::start(&servers, &["--protocol", "tokyotyrant"]);
    let mut c = proxy.client();
    c.set("tt", b"value");
    let refused = [
        "mg tt v\r\n".to_string(),
        "mg tt q v\r\n".to_string(),
        "mg nope q v\r\n".to_string(),
        "ms tt 8\r\nget tt\r\n\r\n".to_string(),
        "ms tt 3 q\r\nabc\r\n".to_string(),
        "md tt\r\n".to_string(),
        "md tt q\r\n".to_string(),
        "ma tt N0 J1\r\n".to_string(),
        "ma tt q\r\n".to_string(),
        "me tt\r\n".to_string(),
        format!("mg {} b v\r\n", b64(b"tt")),
    ];
    for req in &refused {
        c.expect(req, TT_REFUSED);
    }
    c.expect("mn\r\n", "MN\r\n");
    // All in one write, with text commands between: every reply in order.
    let mut pipeline = String::new();
    let mut want = String::new();
    for req in &refused {
        pipeline.push_str(req);
        want.push_str(TT_REFUSED);
        pipeline.push_str("get tt\r\n");
        want.push_str("VALUE tt 0 5\r\nvalue\r\nEND\r\n");
    }
    pipeline.push_str("mn\r\n");
    want.push_str("MN\r\n");
    c.expect(pipeline, want);
    for tt in &tts {
        for cmd in tt.commands() {
            assert!(
                !cmd.starts_with('m'),
                "a ttserver received {cmd:?}: {}",
                text(&tt.received())
            );
        }
    }
}

/// `meta_requests` grows by exactly the number of meta requests (quiet, loud, `mn`, `me`,
/// base64 keys); text requests leave it alone.
#[test]
fn meta_requests_stat_counts_meta_requests() {
    let backend = Memcached::start();
    let proxy = Proxy::start(&[backend.server(1)], &[]);
    let mut c = proxy.client();
    let before = c.stat_num("meta_requests");
    let meta = [
        "mg a v\r\n".to_string(),
        "mg a q v\r\n".to_string(),
        "ms a 1\r\nx\r\n".to_string(),
        "ms a 1 q\r\nx\r\n".to_string(),
        "md a q\r\n".to_string(),
        "md a\r\n".to_string(),
        "ma n N0 J1 q\r\n".to_string(),
        "ma n v\r\n".to_string(),
        "me n\r\n".to_string(),
        "mn\r\n".to_string(),
        format!("mg {} b v\r\n", b64(b"n")),
        "mn\r\n".to_string(),
    ];
    let mut all = String::new();
    for (i, req) in meta.iter().enumerate() {
        all.push_str(req);
        if i % 3 == 0 {
            all.push_str("get a\r\nset t 0 0 1\r\nx\r\n");
        }
    }
    all.push_str("mn\r\n");
    let mut conn = Conn::open(proxy.port);
    let reply = pipeline_reply(&mut conn, all.as_bytes());
    assert!(reply.ends_with(b"MN\r\n"), "{}", show(&reply));
    let want = before + meta.len() as u64 + 1;
    let got = c.stat_num("meta_requests");
    assert_eq!(
        got,
        want,
        "meta_requests after {} meta requests",
        meta.len() + 1
    );
    // Text requests alone do not count.
    c.set("t", b"y");
    assert_eq!(c.get("t"), Some(b"y".to_vec()));
    assert_eq!(c.stat_num("meta_requests"), want);
}
