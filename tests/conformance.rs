//! Conformance with memcached: every request in a table is sent, byte for byte, to a real
//! memcached and to memroute fronting another memcached, and the replies must be identical,
//! except for the deliberate differences listed in [`EXPECTED_DIFFERENCES`].
//!
//! Each side gets its own memcached so that state never leaks between them; before each case
//! both are flushed and their CAS counters are brought level, so `gets` answers the same
//! unique on both sides and a case may name the next uniques (`{C1}`, `{C2}`, `{C3}`).
//! A case is followed by `version\r\n` as a sentinel: its reply ends the case's replies
//! (memroute's version differs from memcached's, so that line is dropped before comparing).

mod common;

use common::differential::{
    case_names, cut_short, find, show_at_most, trace_case, version_commands, Rig,
};
use common::{first_difference, VERSION_REPLY};

/// How a case ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Well-formed requests only: also part of the pipelined test.
    Valid,
    /// Contains at least one malformed request; the connection stays open.
    Invalid,
    /// The connection is closed by the server (quit, line too long): no sentinel is sent.
    Closes,
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    kind: Kind,
}

/// What memroute must answer for a case where it deliberately differs from memcached.
enum Expect {
    /// Exactly these bytes (`<closed>` marks the connection closing).
    Exact(&'static [u8]),
    /// A `STAT name value` block ended by `END` (memroute's own counters).
    StatsBlock,
}

/// Cases where memroute deliberately answers differently from memcached, with memroute's
/// reply and the reason. The test also checks that memcached really does differ, so this
/// list cannot go stale.
const EXPECTED_DIFFERENCES: &[(&str, Expect, &str)] = &[
    (
        "version",
        Expect::Exact(VERSION_REPLY.as_bytes()),
        "memroute answers version itself: the memcached version it speaks, then its own",
    ),
    (
        "version_extra_token",
        Expect::Exact(VERSION_REPLY.as_bytes()),
        "memroute answers version itself: the memcached version it speaks, then its own",
    ),
    (
        "stats",
        Expect::StatsBlock,
        "memroute answers stats with its own counters",
    ),
    (
        "stats_settings",
        Expect::StatsBlock,
        "memroute answers stats settings with its own settings",
    ),
    (
        "get_hit_then_251_byte_key",
        Expect::Exact(b"STORED\r\nCLIENT_ERROR bad command line format\r\n"),
        "memcached 1.6.18, failing a multi-get on a long key after a hit, also drops the \
         earlier STORED still queued from the same read; memroute keeps every reply",
    ),
];

/// `<cmd> <key> <flags> <exptime> <len>[ extra]\r\n<data>\r\n`
fn store(cmd: &str, key: &str, data: &[u8], extra: &str) -> Vec<u8> {
    let mut v = format!("{cmd} {key} 0 0 {}{extra}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn cases() -> Vec<Case> {
    use Kind::*;
    let mut v = Vec::new();
    let mut add =
        |name: &'static str, kind: Kind, bytes: Vec<u8>| v.push(Case { name, bytes, kind });
    let k250 = "k".repeat(250);
    let k251 = "k".repeat(251);
    let s = |t: &str| t.as_bytes().to_vec();

    // ---- Retrievals.
    add("get_miss", Valid, s("get k\r\n"));
    add("get_hit", Valid, s("set k 5 0 3\r\nabc\r\nget k\r\n"));
    add(
        "get_multi_order",
        Valid,
        s("set a 1 0 1\r\nA\r\nset c 3 0 1\r\nC\r\nget c b a\r\n"),
    );
    add(
        "get_same_key_thrice",
        Valid,
        s("set a 0 0 1\r\nA\r\nget a a a\r\n"),
    );
    add(
        "get_many_keys",
        Valid,
        cat(&[
            b"set k7 0 0 2\r\nk7\r\nset k29 0 0 3\r\nk29\r\nget",
            (0..40)
                .map(|i| format!(" k{i}"))
                .collect::<String>()
                .as_bytes(),
            b"\r\n",
        ]),
    );
    add("gets_hit", Valid, s("set k 0 0 2\r\nhi\r\ngets k\r\n"));
    add(
        "gets_multi",
        Valid,
        s("set a 0 0 1\r\nA\r\nset b 9 0 1\r\nB\r\ngets a x b\r\n"),
    );
    add("gat_hit", Valid, s("set k 0 0 2\r\nhi\r\ngat 100 k\r\n"));
    add("gat_miss", Valid, s("gat 100 k\r\n"));
    add(
        "gats_multi",
        Valid,
        s("set k 0 0 2\r\nhi\r\ngats 0 k x k\r\n"),
    );
    add(
        "gat_negative_expires",
        Valid,
        s("set k 0 0 2\r\nhi\r\ngat -1 k\r\nget k\r\n"),
    );
    add("get_250_byte_key", Valid, {
        let mut b = store("set", &k250, b"v", "");
        b.extend(format!("get {k250}\r\n").into_bytes());
        b
    });
    add(
        "get_leading_space",
        Valid,
        s("set k 0 0 1\r\nv\r\n   get k\r\n"),
    );
    add(
        "get_trailing_space",
        Valid,
        s("set k 0 0 1\r\nv\r\nget k   \r\n"),
    );
    add(
        "get_multiple_spaces",
        Valid,
        s("set a 0 0 1\r\nA\r\nget    a     b  a\r\n"),
    );
    add("get_lf_only", Valid, s("set k 0 0 1\r\nv\r\nget k\n"));
    add(
        "get_key_named_noreply",
        Valid,
        s("set noreply 0 0 1\r\nn\r\nget noreply\r\n"),
    );
    add(
        "get_long_line",
        Valid,
        cat(&[
            b"set k3 0 0 1\r\n3\r\nget",
            (0..600)
                .map(|i| format!(" k{i}"))
                .collect::<String>()
                .as_bytes(),
            b"\r\n",
        ]),
    );

    // ---- Storage.
    add("set_basic", Valid, s("set k 0 0 5\r\nhello\r\nget k\r\n"));
    add(
        "set_flags_exptime",
        Valid,
        s("set k 4294967295 1000 1\r\nx\r\nget k\r\n"),
    );
    add(
        "set_flags_over_32_bits",
        Valid,
        s("set k 4294967296 0 1\r\nx\r\nget k\r\n"),
    );
    add(
        "set_negative_exptime",
        Valid,
        s("set k 0 -1 1\r\nx\r\nget k\r\n"),
    );
    add("set_empty_value", Valid, s("set k 0 0 0\r\n\r\nget k\r\n"));
    add(
        "set_data_with_crlf_and_get",
        Valid,
        cat(&[
            &store("set", "k", b"a\r\nget k\r\nEND\r\n", ""),
            b"get k\r\n",
        ]),
    );
    add(
        "set_noreply",
        Valid,
        s("set k 0 0 2 noreply\r\nhi\r\nget k\r\n"),
    );
    add(
        "set_extra_spaces",
        Valid,
        s("set  k  0  0  2 \r\nhe\r\nget k\r\n"),
    );
    add(
        "set_lf_line_crlf_data",
        Valid,
        s("set k 0 0 2\nhe\r\nget k\n"),
    );
    add("set_250_byte_key", Valid, store("set", &k250, b"v", ""));
    add("set_binary_data", Valid, {
        let data: Vec<u8> = (0u8..=255).collect();
        cat(&[&store("set", "k", &data, ""), b"get k\r\n"])
    });
    add(
        "add_new_and_existing",
        Valid,
        s("add k 0 0 1\r\na\r\nadd k 0 0 1\r\nb\r\nget k\r\n"),
    );
    add(
        "add_noreply",
        Valid,
        s("add k 0 0 1 noreply\r\na\r\nadd k 0 0 1 noreply\r\nb\r\nget k\r\n"),
    );
    add(
        "replace_missing_and_existing",
        Valid,
        s("replace k 0 0 1\r\na\r\nset k 0 0 1\r\na\r\nreplace k 7 0 1\r\nb\r\nget k\r\n"),
    );
    add(
        "append_prepend",
        Valid,
        s("append k 0 0 1\r\nx\r\nset k 0 0 2\r\nmm\r\nappend k 0 0 1\r\n>\r\nprepend k 0 0 1\r\n<\r\nget k\r\n"),
    );
    add(
        "append_prepend_noreply",
        Valid,
        s("set k 0 0 2\r\nmm\r\nappend k 0 0 1 noreply\r\n>\r\nprepend k 0 0 1 noreply\r\n<\r\nget k\r\n"),
    );
    add(
        "cas_ok_exists_missing",
        Valid,
        s("cas k 0 0 1 1\r\nx\r\nset k 0 0 1\r\na\r\ngets k\r\ncas k 0 0 1 {C1}\r\nb\r\ncas k 0 0 1 {C1}\r\nc\r\ngets k\r\n"),
    );
    add(
        "cas_noreply",
        Valid,
        s("set k 0 0 1\r\na\r\ncas k 0 0 1 {C1} noreply\r\nb\r\ngets k\r\n"),
    );
    add(
        "cas_max_unique",
        Valid,
        s("set k 0 0 1\r\na\r\ncas k 0 0 1 18446744073709551615\r\nb\r\n"),
    );
    add("set_max_value", Valid, {
        // Just under memcached's limit with its item header.
        cat(&[
            &store("set", "k", &vec![b'x'; 1_048_000], ""),
            b"get nothing\r\n",
        ])
    });

    // ---- delete / incr / decr / touch.
    add(
        "delete_hit_miss",
        Valid,
        s("set k 0 0 1\r\na\r\ndelete k\r\ndelete k\r\nget k\r\n"),
    );
    add(
        "delete_noreply",
        Valid,
        s("set k 0 0 1\r\na\r\ndelete k noreply\r\nget k\r\n"),
    );
    add(
        "delete_zero",
        Valid,
        s("set k 0 0 1\r\na\r\ndelete k 0\r\nget k\r\n"),
    );
    add(
        "delete_zero_noreply",
        Valid,
        s("set k 0 0 1\r\na\r\ndelete k 0 noreply\r\nget k\r\n"),
    );
    // memcached reads the key `noreply` as the flag as well: a silent delete. Forwarded
    // unchanged, the backend would not answer and the shared connection would fall out of step.
    add(
        "delete_key_named_noreply",
        Valid,
        s("set noreply 0 0 1\r\na\r\ndelete noreply\r\nget noreply\r\nset noreply 0 0 1\r\nb\r\ndelete noreply noreply\r\nget noreply\r\n"),
    );
    add(
        "incr_decr",
        Valid,
        s("incr k 1\r\nset k 0 0 2\r\n10\r\nincr k 5\r\ndecr k 3\r\ndecr k 100\r\nget k\r\n"),
    );
    add(
        "incr_noreply",
        Valid,
        s("set k 0 0 1\r\n1\r\nincr k 5 noreply\r\ndecr k 1 noreply\r\nget k\r\n"),
    );
    add(
        "incr_wraps",
        Valid,
        s("set k 0 0 2\r\n10\r\nincr k 18446744073709551615\r\n"),
    );
    add(
        "incr_non_numeric_value",
        Valid,
        s("set k 0 0 2\r\nab\r\nincr k 1\r\n"),
    );
    add(
        "incr_huge_delta",
        Invalid,
        s("set k 0 0 1\r\n1\r\nincr k 18446744073709551616\r\n"),
    );
    add("incr_negative_delta", Invalid, s("incr k -1\r\n"));
    add("incr_minus_zero", Invalid, s("incr k -0\r\n"));
    add("incr_bad_delta", Invalid, s("incr k abc\r\n"));
    add(
        "incr_bad_delta_noreply",
        Invalid,
        s("incr k abc noreply\r\n"),
    );
    add("incr_delta_noreply_token", Invalid, s("incr k noreply\r\n"));
    add("incr_no_delta", Invalid, s("incr k\r\n"));
    add("incr_extra_token", Invalid, s("incr k 1 noreply extra\r\n"));
    add("decr_bad_delta", Invalid, s("decr k 1x\r\n"));
    add(
        "touch_hit_miss",
        Valid,
        s("touch k 10\r\nset k 0 0 1\r\na\r\ntouch k 10\r\ntouch k -1\r\nget k\r\n"),
    );
    add(
        "touch_noreply",
        Valid,
        s("set k 0 0 1\r\na\r\ntouch k 10 noreply\r\nget k\r\n"),
    );
    add("touch_bad_exptime", Invalid, s("touch k abc\r\n"));
    add(
        "touch_bad_exptime_noreply",
        Invalid,
        s("touch k abc noreply\r\n"),
    );
    add(
        "touch_exptime_overflow",
        Invalid,
        s("touch k 2147483648\r\n"),
    );
    add("touch_no_exptime", Invalid, s("touch k\r\n"));

    // ---- flush_all, verbosity, version, stats, quit.
    add(
        "flush_all",
        Valid,
        s("set k 0 0 1\r\na\r\nflush_all\r\nget k\r\n"),
    );
    add(
        "flush_all_noreply",
        Valid,
        s("set k 0 0 1\r\na\r\nflush_all noreply\r\nget k\r\n"),
    );
    add("flush_all_zero", Valid, s("flush_all 0\r\n"));
    add(
        "flush_all_delay_noreply",
        Valid,
        s("flush_all 0 noreply\r\n"),
    );
    add("flush_all_negative", Valid, s("flush_all -1\r\n"));
    add("flush_all_bad_delay", Invalid, s("flush_all abc\r\n"));
    add(
        "flush_all_bad_delay_noreply",
        Invalid,
        s("flush_all abc noreply\r\n"),
    );
    add("flush_all_extra_arg", Valid, s("flush_all 0 2\r\n"));
    add(
        "flush_all_noreply_not_last",
        Invalid,
        s("flush_all noreply extra\r\n"),
    );
    add("flush_all_too_many", Invalid, s("flush_all 1 2 3\r\n"));
    add(
        "flush_all_four_noreply",
        Invalid,
        s("flush_all 1 noreply x\r\n"),
    );
    add("verbosity", Valid, s("verbosity 1\r\n"));
    add("verbosity_noreply", Valid, s("verbosity 1 noreply\r\n"));
    add("verbosity_extra_arg", Valid, s("verbosity 1 2\r\n"));
    add("verbosity_no_arg", Invalid, s("verbosity\r\n"));
    add("verbosity_bad_arg", Invalid, s("verbosity abc\r\n"));
    add(
        "verbosity_only_noreply",
        Invalid,
        s("verbosity noreply\r\n"),
    );
    add(
        "verbosity_too_many",
        Invalid,
        s("verbosity 1 2 noreply\r\n"),
    );
    add("version", Valid, s("version\r\n"));
    add("version_extra_token", Valid, s("version foo\r\n"));
    add("stats", Valid, s("stats\r\n"));
    add("stats_with_arg", Valid, s("stats foo\r\n"));
    add("quit", Closes, s("quit\r\n"));
    add(
        "quit_after_get",
        Closes,
        s("set k 0 0 1\r\na\r\nget k\r\nquit\r\n"),
    );
    add("quit_extra_token", Closes, s("quit now\r\n"));

    // ---- Unknown commands and token counts.
    add("empty_line", Invalid, s("\r\n"));
    add("empty_line_lf", Invalid, s("\n"));
    add("only_spaces", Invalid, s("    \r\n"));
    add("unknown_command", Invalid, s("bogus k\r\n"));
    add("one_letter", Invalid, s("g\r\n"));
    add("uppercase_get", Invalid, s("GET k\r\n"));
    add("uppercase_set", Invalid, s("SET k 0 0 1\r\na\r\n"));
    add("get_prefix_word", Invalid, s("getx k\r\n"));
    add("get_no_key", Invalid, s("get\r\n"));
    add("get_only_space", Invalid, s("get \r\n"));
    add("gets_no_key", Invalid, s("gets\r\n"));
    add("gat_nothing", Invalid, s("gat\r\n"));
    add("gat_no_keys", Invalid, s("gat 10\r\n"));
    add("gats_no_keys", Invalid, s("gats 10\r\n"));
    add("gat_bad_exptime", Invalid, s("gat abc k\r\n"));
    add("gat_bad_exptime_noreply", Invalid, s("gat abc noreply\r\n"));
    add("set_too_few_tokens", Invalid, s("set k 0 0\r\nhe\r\n"));
    add("set_no_args", Invalid, s("set\r\n"));
    add(
        "set_too_many_tokens",
        Invalid,
        s("set k 0 0 2 1 2\r\nhe\r\n"),
    );
    add(
        "set_extra_after_noreply",
        Invalid,
        s("set k 0 0 2 noreply extra\r\nhe\r\n"),
    );
    add(
        "set_sixth_token_ignored",
        Valid,
        s("set k 0 0 2 1\r\nhe\r\nget k\r\n"),
    );
    add("cas_missing_unique", Invalid, s("cas k 0 0 2\r\nhe\r\n"));
    add(
        "cas_too_many_tokens",
        Invalid,
        s("cas k 0 0 2 1 noreply x\r\nhe\r\n"),
    );
    add("delete_no_key", Invalid, s("delete\r\n"));
    add("delete_too_many", Invalid, s("delete k 0 noreply x\r\n"));
    add("incr_no_key", Invalid, s("incr\r\n"));
    add("touch_too_many", Invalid, s("touch k 1 noreply x\r\n"));

    // ---- Bad numbers and keys on storage commands.
    add("set_bad_flags", Invalid, s("set k x 0 1\r\na\r\n"));
    add("set_negative_flags", Invalid, s("set k -1 0 1\r\na\r\n"));
    add("set_minus_zero_flags", Invalid, s("set k -0 0 2\r\nhe\r\n"));
    add(
        "set_plus_sign_numbers",
        Invalid,
        s("set k 1 +0 +2\r\nhe\r\n"),
    );
    add(
        "set_tab_after_number",
        Invalid,
        s("set k 1\t 0 2\r\nhe\r\n"),
    );
    add(
        "set_flags_overflow",
        Invalid,
        s("set k 18446744073709551616 0 1\r\na\r\n"),
    );
    add("set_bad_exptime", Invalid, s("set k 0 x 1\r\na\r\n"));
    add(
        "set_exptime_overflow",
        Invalid,
        s("set k 0 2147483648 1\r\na\r\n"),
    );
    add("set_bad_length", Invalid, s("set k 0 0 abc\r\nhello\r\n"));
    add(
        "set_negative_length",
        Invalid,
        s("set k 0 0 -1\r\nhello\r\n"),
    );
    add(
        "set_length_overflow",
        Invalid,
        s("set k 0 0 4294967297\r\na\r\n"),
    );
    add(
        "set_bad_length_noreply",
        Invalid,
        s("set k 0 0 abc noreply\r\nhello\r\n"),
    );
    add(
        "set_negative_length_noreply",
        Invalid,
        s("set k 0 0 -1 noreply\r\nhello\r\n"),
    );
    add(
        "set_length_is_noreply",
        Invalid,
        s("set k 0 0 noreply\r\nhi\r\n"),
    );
    add("cas_bad_unique", Invalid, s("cas k 0 0 2 x\r\nhe\r\n"));
    add(
        "cas_negative_unique",
        Invalid,
        s("cas k 0 0 2 -1\r\nhe\r\n"),
    );
    add(
        "cas_unique_is_noreply",
        Invalid,
        s("cas k 0 0 2 noreply\r\nhe\r\n"),
    );
    add("set_251_byte_key", Invalid, store("set", &k251, b"v", ""));
    add(
        "set_251_byte_key_noreply",
        Invalid,
        store("set", &k251, b"v", " noreply"),
    );
    add(
        "get_251_byte_key",
        Invalid,
        format!("get {k251}\r\n").into_bytes(),
    );
    add(
        "get_hit_then_251_byte_key",
        Invalid,
        format!("set k 0 0 1\r\na\r\nget k {k251}\r\n").into_bytes(),
    );
    add(
        "gat_251_byte_key",
        Invalid,
        format!("gat 0 k {k251}\r\n").into_bytes(),
    );
    add(
        "delete_251_byte_key",
        Invalid,
        format!("delete {k251}\r\n").into_bytes(),
    );
    add(
        "delete_251_byte_key_bad_arg",
        Invalid,
        format!("delete {k251} 1\r\n").into_bytes(),
    );
    add(
        "delete_251_byte_key_noreply",
        Invalid,
        format!("delete {k251} noreply\r\n").into_bytes(),
    );
    add(
        "incr_251_byte_key",
        Invalid,
        format!("incr {k251} 1\r\n").into_bytes(),
    );
    add(
        "touch_251_byte_key",
        Invalid,
        format!("touch {k251} 1\r\n").into_bytes(),
    );
    add("delete_with_time", Invalid, s("delete k 10\r\n"));
    add(
        "delete_with_time_noreply",
        Invalid,
        s("delete k 10 noreply\r\n"),
    );
    add("delete_bad_word", Invalid, s("delete k x y\r\n"));

    // ---- Data blocks.
    add(
        "bad_data_chunk_long",
        Invalid,
        s("set k 0 0 2\r\nhelloo\r\nget k\r\n"),
    );
    add(
        "bad_data_chunk_short",
        Invalid,
        s("set k 0 0 5\r\nhi\r\nget k\r\nget k\r\n"),
    );
    add(
        "bad_data_chunk_cr_only",
        Invalid,
        s("set k 0 0 2\r\nhe\rxget k\r\n"),
    );
    add(
        "bad_data_chunk_lf_only",
        Invalid,
        s("set k 0 0 2\nhe\nget k\n"),
    );
    add(
        "bad_data_chunk_noreply",
        Invalid,
        s("set k 0 0 2 noreply\r\nhello\r\nget k\r\n"),
    );
    add(
        "set_too_large_deletes_old_value",
        Invalid,
        cat(&[
            b"set k 0 0 3\r\nold\r\n",
            &store("set", "k", &vec![b'x'; 2_000_000], ""),
            b"get k\r\n",
        ]),
    );
    add(
        "add_too_large_keeps_old_value",
        Invalid,
        cat(&[
            b"set k 0 0 3\r\nold\r\n",
            &store("add", "k", &vec![b'x'; 2_000_000], ""),
            b"get k\r\n",
        ]),
    );
    add(
        "too_large_noreply",
        Invalid,
        cat(&[
            &store("add", "k", &vec![b'x'; 1_500_000], " noreply"),
            b"get k\r\n",
        ]),
    );
    add(
        "too_large_with_get_text_inside",
        Invalid,
        cat(&[
            &store("append", "k", &b"get k\r\n".repeat(200_000), ""),
            b"get k\r\n",
        ]),
    );

    // ---- Control characters and long lines.
    add(
        "key_with_control_char",
        Invalid,
        s("set k\x01 0 0 1\r\na\r\nget k\x01\r\n"),
    );
    add("key_with_tab", Invalid, s("set k\tx 0 0 2\r\nhe\r\n"));
    add("key_with_del", Invalid, s("get k\x7f\r\n"));
    add("get_key_with_nul", Invalid, s("get a\x00b\r\n"));
    add("get_key_with_cr", Invalid, s("get a\rb\r\n"));
    add(
        "set_line_too_long",
        Invalid,
        format!("set k 0 0 1{}\r\na\r\n", " ".repeat(3000)).into_bytes(),
    );

    // What memcached reads that a strict parser would not (its strtol/strtoul, its tokenizer).
    add(
        "set_int_max_length",
        Invalid,
        s("set k 0 0 2147483647\r\nget k\r\n"),
    );
    add(
        "set_length_overflow_reads_low_bits",
        Invalid,
        s("set k 0 0 4294967298\r\nab\r\nget k\r\n"),
    );
    add(
        "key_with_nul_set",
        Invalid,
        s("set k\x00x 0 0 1\r\na\r\nget k\r\n"),
    );
    add("bget_is_get", Valid, s("set a 0 0 1\r\nA\r\nbget a b\r\n"));
    add("shutdown_not_enabled", Invalid, s("shutdown\r\n"));
    add(
        "gat_tab_before_key",
        Invalid,
        s("set k 0 0 1\r\nx\r\ngat 0\tk\r\n"),
    );
    add(
        "many_tokens",
        Invalid,
        format!("set{}\r\n", " x".repeat(30)).into_bytes(),
    );
    add(
        "decr_then_append",
        Valid,
        s("set n 0 0 2\r\n10\r\ndecr n 1\r\nappend n 0 0 1\r\nx\r\nget n\r\n"),
    );

    // Lines memcached closes without a word.
    add("http_get_closes", Closes, s("GET / HTTP/1.0\r\n\r\n"));
    add(
        "http_post_closes",
        Closes,
        s("POST /x HTTP/1.1\r\nHost: y\r\n\r\n"),
    );
    add(
        "command_line_over_2k_closes",
        Closes,
        cat(&[b"set k 0 0 1", &vec![b' '; 3000]]),
    );

    // Multi-gets of any size: 2,000 keys, and 100,000 keys in one line (about 700 KB).
    let keys = |n: usize| (0..n).map(|i| format!(" key:{i}")).collect::<String>();
    add(
        "get_2000_keys",
        Valid,
        cat(&[
            b"set key:7 0 0 1\r\na\r\nset key:1999 0 0 1\r\nb\r\nget",
            keys(2000).as_bytes(),
            b"\r\n",
        ]),
    );
    add(
        "get_100000_keys",
        Valid,
        cat(&[
            b"set key:99999 0 0 1\r\nz\r\nset key:3 0 0 1\r\nc\r\ngets",
            keys(100_000).as_bytes(),
            b"\r\n",
        ]),
    );

    // stats subcommands and cache_memlimit.
    add("stats_settings", Valid, s("stats settings\r\n"));
    add("stats_unknown", Invalid, s("stats nonsense\r\n"));
    add(
        "stats_cachedump_bad",
        Invalid,
        s("stats cachedump\r\nstats cachedump x y\r\n"),
    );
    add("cache_memlimit_ok", Valid, s("cache_memlimit 100\r\n"));
    add(
        "cache_memlimit_errors",
        Invalid,
        s("cache_memlimit 2\r\ncache_memlimit 2000000000\r\ncache_memlimit x\r\ncache_memlimit 64 noreply\r\n"),
    );

    // Interleavings of valid and invalid requests: the stream stays in sync.
    add(
        "errors_between_valid_requests",
        Invalid,
        s("set a 0 0 1\r\nA\r\nbogus\r\nget a\r\nset b 0 0 x\r\nincr a 1\r\nset c 0 0 1\r\nCC\r\nget a b c\r\n"),
    );
    v
}

/// Replaces the CAS unique of every `VALUE` line holding one by `<cas>` (several backends
/// number their CAS uniques independently).
fn without_cas(reply: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(reply.len());
    let mut rest = reply;
    while !rest.is_empty() {
        let line_end = find(rest, b"\r\n").map_or(rest.len(), |i| i + 2);
        let line = &rest[..line_end];
        let mut consumed = line_end;
        let fields: Vec<&[u8]> = line.trim_ascii_end().split(|b| *b == b' ').collect();
        if line.starts_with(b"VALUE ") && fields.len() == 5 {
            out.extend_from_slice(&line[..line.len() - 2 - fields[4].len()]);
            out.extend_from_slice(b"<cas>\r\n");
            // The data block is copied as it is.
            let len: usize = std::str::from_utf8(fields[3]).unwrap().parse().unwrap();
            let data_end = (line_end + len + 2).min(rest.len());
            out.extend_from_slice(&rest[line_end..data_end]);
            consumed = data_end;
        } else if line.starts_with(b"VALUE ") && fields.len() == 4 {
            let len: usize = std::str::from_utf8(fields[3]).unwrap().parse().unwrap();
            let data_end = (line_end + len + 2).min(rest.len());
            out.extend_from_slice(&rest[..data_end]);
            consumed = data_end;
        } else {
            out.extend_from_slice(line);
        }
        rest = &rest[consumed..];
    }
    out
}

/// Runs `bytes` on both sides of `rig` (see [`Rig::run_with`]), followed by a `version`
/// sentinel unless the case closes the connection; returns (memcached, memroute), with CAS
/// uniques blanked when memroute has several backends.
fn run(rig: &Rig, bytes: &[u8], kind: Kind) -> (Vec<u8>, Vec<u8>) {
    let blank_cas = rig.backends() > 1;
    rig.run_with(bytes, |c, bytes, sentinels| {
        c.send(bytes);
        let got = if kind == Kind::Closes {
            c.read_to_close()
        } else {
            c.send(b"version\r\n");
            c.read_case(sentinels)
        };
        if blank_cas {
            without_cas(&got)
        } else {
            got
        }
    })
}

fn show(b: &[u8]) -> String {
    show_at_most(b, 300)
}

fn is_stats_block(b: &[u8]) -> bool {
    let text = String::from_utf8_lossy(b);
    text.ends_with("END\r\n")
        && text
            .trim_end_matches("END\r\n")
            .split_terminator("\r\n")
            .all(|l| l.starts_with("STAT ") && l.split(' ').count() >= 3)
}

#[test]
fn every_case_answers_like_memcached() {
    every_case_answers_like_memcached_over(1);
}

#[test]
fn every_case_answers_like_memcached_over_three_backends() {
    every_case_answers_like_memcached_over(3);
}

fn every_case_answers_like_memcached_over(backends: usize) {
    let rig = Rig::start(backends);
    let cases = cases();
    let names = case_names(cases.iter().map(|c| c.name).collect(), 100);
    for (name, _, _) in EXPECTED_DIFFERENCES {
        assert!(
            names.contains(name),
            "EXPECTED_DIFFERENCES names unknown case {name}"
        );
    }
    let mut failures = Vec::new();
    for case in &cases {
        let (memcached, memroute) = run(&rig, &case.bytes, case.kind);
        trace_case(
            "CONFORMANCE_VERBOSE",
            case.name,
            &show(&memcached),
            &show(&memroute),
        );
        let expected = EXPECTED_DIFFERENCES
            .iter()
            .find(|(n, _, _)| *n == case.name);
        match expected {
            None if memcached == memroute => {}
            None => failures.push(format!(
                "{}: request {:?}\n    memcached: {:?}\n    memroute:  {:?}",
                case.name,
                show(&case.bytes),
                show(&memcached),
                show(&memroute)
            )),
            Some((_, expect, why)) => {
                let ok = match expect {
                    Expect::Exact(e) => memroute == *e,
                    Expect::StatsBlock => is_stats_block(&memroute),
                };
                if !ok {
                    failures.push(format!(
                        "{} (expected difference: {why}): memroute answered {:?}",
                        case.name,
                        show(&memroute)
                    ));
                }
                if memcached == memroute {
                    failures.push(format!(
                        "{}: listed as a difference but memcached answers the same {:?}",
                        case.name,
                        show(&memcached)
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ (memroute over {backends} backend(s)):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn pipelined_valid_cases_answer_like_memcached() {
    let rig = Rig::start(3);
    let pipeline: Vec<u8> = cases()
        .iter()
        .filter(|c| c.kind == Kind::Valid)
        .filter(|c| !EXPECTED_DIFFERENCES.iter().any(|(n, _, _)| *n == c.name))
        .flat_map(|c| c.bytes.iter().copied())
        .collect();
    assert_eq!(version_commands(&pipeline), 0);
    let (memcached, memroute) = run(&rig, &pipeline, Kind::Valid);
    assert!(!cut_short(&memcached), "{}", show(&memcached));
    if memcached != memroute {
        let at = first_difference(&memcached, &memroute);
        let from = at.saturating_sub(200);
        panic!(
            "replies differ at byte {at} (memcached {} bytes, memroute {} bytes):\n  memcached: {:?}\n  memroute:  {:?}",
            memcached.len(),
            memroute.len(),
            show(&memcached[from..]),
            show(&memroute[from..])
        );
    }
}
