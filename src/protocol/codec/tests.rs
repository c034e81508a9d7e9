//! Unit tests of the client codec: every command, every error with its exact reply, every
//! split point of a pipelined stream, and property tests on arbitrary input.

use super::*;
use crate::protocol::request::Command;
use bytes::BytesMut;
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// An owned, comparable snapshot of one decoded item.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    Req {
        command: Command,
        keys: Vec<Vec<u8>>,
        flags: u32,
        exptime: i64,
        number: u64,
        data: Option<Vec<u8>>,
        noreply: bool,
        frame: Vec<u8>,
        upstream: Vec<u8>,
    },
    Invalid(Vec<u8>),
    Fatal(Vec<u8>),
}

fn snapshot(d: Decoded) -> Item {
    match d {
        Decoded::Request(r) => {
            check_invariants(&r);
            let (a, b) = r.upstream_bytes();
            let mut upstream = a.to_vec();
            if let Some(b) = b {
                upstream.extend_from_slice(&b);
            }
            Item::Req {
                command: r.command,
                keys: r.keys().map(<[u8]>::to_vec).collect(),
                flags: r.flags,
                exptime: r.exptime,
                number: r.number,
                data: r.command.is_storage().then(|| r.data().to_vec()),
                noreply: r.noreply(),
                frame: r.frame.to_vec(),
                upstream,
            }
        }
        Decoded::Invalid(m) => Item::Invalid(m.to_vec()),
        Decoded::Fatal(m) => Item::Fatal(m.to_vec()),
    }
}

/// What every decoded request must satisfy.
fn check_invariants(r: &Request) {
    // The fuzz targets' checks, with limits no test input reaches.
    crate::protocol::invariants::check_request(
        r,
        CodecLimits {
            item_size_max: 1 << 30,
            max_retrieval_line: 1 << 30,
        },
    );
    assert!(r.frame.ends_with(b"\n"), "frame {:?}", r.frame);
    assert!(r.line().len() < r.frame.len());
    if r.command.is_retrieval() || r.command.is_single_key() {
        let keys: Vec<&[u8]> = r.keys().collect();
        assert!(!keys.is_empty(), "no key in {:?}", r.frame);
        for k in keys {
            assert!((1..=MAX_KEY_LEN).contains(&k.len()), "key {k:?}");
            assert!(
                k.iter().all(|b| *b > b' ' && *b != 0x7f),
                "key with space or control char {k:?}"
            );
        }
    }
    if r.command.is_single_key() {
        assert_eq!(r.keys().count(), 1);
        assert_eq!(r.key_slices().next().unwrap().as_ref(), r.key());
    }
    if r.command.is_storage() {
        let len_token = r
            .line()
            .split(|b| *b == b' ')
            .filter(|t| !t.is_empty())
            .nth(4)
            .unwrap();
        let declared: usize = std::str::from_utf8(len_token).unwrap().parse().unwrap();
        assert_eq!(r.data().len(), declared);
        assert!(r.frame.ends_with(b"\r\n"));
    }
    let (a, b) = r.upstream_bytes();
    match (r.noreply(), b) {
        (false, None) => assert_eq!(a, r.frame),
        (true, Some(b)) if r.command == Command::Delete && r.key() == b"noreply" => {
            // `delete noreply [noreply]` goes up as `delete noreply 0`.
            assert_eq!(
                trim(&a).split(|c| *c == b' ').next_back(),
                Some(&b"noreply"[..])
            );
            assert_eq!(b.as_ref(), b" 0\r\n");
        }
        (true, Some(b)) => {
            // The line minus its last token `noreply` and the spaces around it.
            let line = trim(r.line());
            let kept = trim(line.strip_suffix(b"noreply").expect("line ends in noreply"));
            assert!(kept.len() < line.len() - "noreply".len());
            assert_eq!(a.as_ref(), kept);
            assert_eq!(b.as_ref(), &r.frame[r.line().len()..]);
        }
        other => panic!("noreply {} but upstream {:?}", r.noreply(), other.1),
    }
}

/// `l` without trailing spaces.
fn trim(mut l: &[u8]) -> &[u8] {
    while let [rest @ .., b' '] = l {
        l = rest;
    }
    l
}

fn codec() -> ClientCodec {
    ClientCodec::new(CodecLimits::default())
}

/// Decodes everything `input` holds in one piece; stops after a fatal item.
fn decode_whole(mut c: ClientCodec, input: &[u8]) -> (Vec<Item>, usize) {
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(d) = c.decode_item(&mut buf) {
        let fatal = matches!(d, Decoded::Fatal(_));
        out.push(snapshot(d));
        if fatal {
            break;
        }
    }
    (out, input.len() - buf.len())
}

/// Feeds `input` in the given chunk sizes (cycled), decoding after each piece.
fn decode_chunked(mut c: ClientCodec, input: &[u8], sizes: &mut dyn FnMut() -> usize) -> Vec<Item> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let n = sizes().clamp(1, input.len() - pos);
        buf.extend_from_slice(&input[pos..pos + n]);
        pos += n;
        while let Some(d) = c.decode_item(&mut buf) {
            let fatal = matches!(d, Decoded::Fatal(_));
            out.push(snapshot(d));
            if fatal {
                return out;
            }
        }
    }
    out
}

fn one(input: &[u8]) -> Item {
    let (items, used) = decode_whole(codec(), input);
    assert_eq!(
        items.len(),
        1,
        "{:?} gave {items:?}",
        String::from_utf8_lossy(input)
    );
    assert_eq!(
        used,
        input.len(),
        "{:?} left bytes",
        String::from_utf8_lossy(input)
    );
    items.into_iter().next().unwrap()
}

fn req(input: &[u8]) -> Request {
    let mut buf = BytesMut::from(input);
    match codec().decode_item(&mut buf) {
        Some(Decoded::Request(r)) => {
            assert!(buf.is_empty(), "left {:?}", buf);
            check_invariants(&r);
            r
        }
        other => panic!("{:?} decoded to {other:?}", String::from_utf8_lossy(input)),
    }
}

fn keys(r: &Request) -> Vec<&[u8]> {
    r.keys().collect()
}

fn upstream(r: &Request) -> Vec<u8> {
    let (a, b) = r.upstream_bytes();
    let mut v = a.to_vec();
    if let Some(b) = b {
        v.extend_from_slice(&b);
    }
    v
}

// ---------------------------------------------------------------- commands

#[test]
fn retrievals_with_one_and_many_keys() {
    for (cmd, command) in [("get", Command::Get), ("gets", Command::Gets)] {
        let r = req(format!("{cmd} k\r\n").as_bytes());
        assert_eq!(r.command, command);
        assert_eq!(keys(&r), [b"k"]);
        assert_eq!(r.key(), b"k");
        assert!(!r.noreply());
        assert_eq!(upstream(&r), format!("{cmd} k\r\n").as_bytes());

        let r = req(format!("{cmd} a bb  ccc\r\n").as_bytes());
        assert_eq!(keys(&r), [&b"a"[..], b"bb", b"ccc"]);
        let slices: Vec<_> = r.key_slices().collect();
        assert_eq!(slices, [&b"a"[..], b"bb", b"ccc"]);
    }
    for (cmd, command) in [("gat", Command::Gat), ("gats", Command::Gats)] {
        let r = req(format!("{cmd} 100 k\r\n").as_bytes());
        assert_eq!(r.command, command);
        assert_eq!(r.exptime, 100);
        assert_eq!(keys(&r), [b"k"]);
        let r = req(format!("{cmd} -1 a b c\r\n").as_bytes());
        assert_eq!(r.exptime, -1);
        assert_eq!(keys(&r), [&b"a"[..], b"b", b"c"]);
    }
    // Many keys, spaces around them, a key named noreply (not a flag on retrievals).
    let line: String = (0..100).map(|i| format!(" key{i}")).collect();
    let r = req(format!("get{line}\r\n").as_bytes());
    assert_eq!(r.keys().count(), 100);
    assert_eq!(r.keys().last(), Some(&b"key99"[..]));
    let r = req(b"  get   a  noreply \r\n");
    assert_eq!(keys(&r), [&b"a"[..], b"noreply"]);
    assert!(!r.noreply());
    assert_eq!(upstream(&r), b"  get   a  noreply \r\n");
    // 250-byte key.
    let k = "k".repeat(250);
    assert_eq!(
        keys(&req(format!("get {k}\r\n").as_bytes())),
        [k.as_bytes()]
    );
}

#[test]
fn storage_commands() {
    for (cmd, command) in [
        ("set", Command::Set),
        ("add", Command::Add),
        ("replace", Command::Replace),
        ("append", Command::Append),
        ("prepend", Command::Prepend),
    ] {
        let frame = format!("{cmd} key 4294967295 -5 5\r\nhello\r\n");
        let r = req(frame.as_bytes());
        assert_eq!(r.command, command);
        assert_eq!(r.key(), b"key");
        assert_eq!(r.flags, u32::MAX);
        assert_eq!(r.exptime, -5);
        assert_eq!(r.number, 0);
        assert_eq!(r.data(), b"hello");
        assert_eq!(r.line(), format!("{cmd} key 4294967295 -5 5").as_bytes());
        assert!(!r.noreply());
        assert_eq!(upstream(&r), frame.as_bytes());

        let frame = format!("{cmd} key 1 2 3 noreply\r\nabc\r\n");
        let r = req(frame.as_bytes());
        assert!(r.noreply());
        assert_eq!((r.flags, r.exptime), (1, 2));
        assert_eq!(r.data(), b"abc");
        assert_eq!(upstream(&r), frame.replace(" noreply", "").as_bytes());
    }
    let r = req(b"cas k 0 0 2 18446744073709551615\r\nhi\r\n");
    assert_eq!(r.command, Command::Cas);
    assert_eq!(r.number, u64::MAX);
    assert_eq!(r.data(), b"hi");
    let r = req(b"cas k 7 9 2 12 noreply\r\nhi\r\n");
    assert!(r.noreply());
    assert_eq!((r.flags, r.exptime, r.number), (7, 9, 12));
    assert_eq!(upstream(&r), b"cas k 7 9 2 12\r\nhi\r\n");
    // Empty value, data with CRLF and protocol text inside, binary data.
    assert_eq!(req(b"set k 0 0 0\r\n\r\n").data(), b"");
    assert_eq!(
        req(b"set k 0 0 12\r\nget x\r\nEND\r\n\r\n").data(),
        b"get x\r\nEND\r\n"
    );
    let mut bin = b"set k 0 0 256\r\n".to_vec();
    bin.extend(0u8..=255);
    bin.extend_from_slice(b"\r\n");
    assert_eq!(req(&bin).data().len(), 256);
    // Flags above 32 bits are truncated like memcached does; a sixth token is ignored.
    assert_eq!(req(b"set k 4294967296 0 1\r\nx\r\n").flags, 0);
    let r = req(b"set k 0 0 1 99\r\nx\r\n");
    assert!(!r.noreply());
    // `\n` line ending before the data block.
    let r = req(b"set k 0 0 2\nhi\r\n");
    assert_eq!(r.data(), b"hi");
    assert_eq!(r.line(), b"set k 0 0 2");
    // Extra spaces everywhere.
    let r = req(b"  set  k  1  2  3   noreply  \r\nabc\r\n");
    assert!(
        r.noreply(),
        "noreply followed by spaces is still the last token"
    );
    assert_eq!(upstream(&r), b"  set  k  1  2  3\r\nabc\r\n");
}

#[test]
fn noreply_with_trailing_spaces_and_multiple_spaces() {
    // The last token is `noreply` even with spaces after it.
    let r = req(b"set k 1 2 3 noreply \r\nabc\r\n");
    assert!(r.noreply());
    let r = req(b"delete k    noreply\r\n");
    assert!(r.noreply());
    assert_eq!(upstream(&r), b"delete k\r\n");
}

#[test]
fn delete_incr_decr_touch() {
    let r = req(b"delete k\r\n");
    assert_eq!(
        (r.command, r.key(), r.noreply()),
        (Command::Delete, &b"k"[..], false)
    );
    let r = req(b"delete k 0\r\n");
    assert!(!r.noreply());
    assert_eq!(upstream(&r), b"delete k 0\r\n");
    let r = req(b"delete k noreply\r\n");
    assert!(r.noreply());
    assert_eq!(upstream(&r), b"delete k\r\n");
    let r = req(b"delete k 0 noreply\r\n");
    assert!(r.noreply());
    assert_eq!(upstream(&r), b"delete k 0\r\n");

    for (cmd, command) in [("incr", Command::Incr), ("decr", Command::Decr)] {
        let r = req(format!("{cmd} k 18446744073709551615\r\n").as_bytes());
        assert_eq!(
            (r.command, r.key(), r.number),
            (command, &b"k"[..], u64::MAX)
        );
        let r = req(format!("{cmd} k 5 noreply\r\n").as_bytes());
        assert!(r.noreply());
        assert_eq!(r.number, 5);
        assert_eq!(upstream(&r), format!("{cmd} k 5\r\n").as_bytes());
    }
    let r = req(b"touch k -7\r\n");
    assert_eq!((r.command, r.exptime), (Command::Touch, -7));
    let r = req(b"touch k 2147483647 noreply\r\n");
    assert_eq!(r.exptime, i32::MAX as i64);
    assert!(r.noreply());
    assert_eq!(upstream(&r), b"touch k 2147483647\r\n");
}

#[test]
fn flush_all_version_stats_verbosity_quit() {
    let r = req(b"flush_all\r\n");
    assert_eq!(
        (r.command, r.exptime, r.noreply()),
        (Command::FlushAll, 0, false)
    );
    let r = req(b"flush_all 30\r\n");
    assert_eq!(r.exptime, 30);
    let r = req(b"flush_all noreply\r\n");
    assert!(r.noreply());
    assert_eq!(upstream(&r), b"flush_all\r\n");
    let r = req(b"flush_all 10 noreply\r\n");
    assert_eq!((r.exptime, r.noreply()), (10, true));
    assert_eq!(upstream(&r), b"flush_all 10\r\n");
    // memcached reads the first argument and ignores a second one.
    let r = req(b"flush_all 5 6\r\n");
    assert_eq!((r.exptime, r.noreply()), (5, false));

    assert_eq!(req(b"version\r\n").command, Command::Version);
    assert_eq!(req(b"version extra\r\n").command, Command::Version);
    assert_eq!(req(b"quit\r\n").command, Command::Quit);
    let r = req(b"stats\r\n");
    assert_eq!(r.command, Command::Stats);
    assert_eq!(r.key(), b"");
    let r = req(b"stats slabs  detail\r\n");
    assert_eq!(r.key(), b"slabs  detail");
    let r = req(b"verbosity 1\r\n");
    assert_eq!((r.command, r.noreply()), (Command::Verbosity, false));
    assert!(req(b"verbosity 1 noreply\r\n").noreply());
    assert!(!req(b"verbosity 1 2\r\n").noreply());
}

// ---------------------------------------------------------------- errors

/// `input` yields exactly `expected` items, and a following `get after` still decodes.
fn errors(input: &[u8], expected: &[Item]) {
    let mut stream = input.to_vec();
    stream.extend_from_slice(b"get after\r\n");
    let (items, used) = decode_whole(codec(), &stream);
    assert_eq!(used, stream.len(), "{:?}", String::from_utf8_lossy(input));
    let (last, rest) = items.split_last().unwrap();
    assert_eq!(rest, expected, "{:?}", String::from_utf8_lossy(input));
    match last {
        Item::Req { command, keys, .. } => {
            assert_eq!(*command, Command::Get);
            assert_eq!(keys, &[b"after".to_vec()]);
        }
        other => panic!(
            "{:?}: stream out of sync: {other:?}",
            String::from_utf8_lossy(input)
        ),
    }
}

fn inv(msg: &[u8]) -> Item {
    Item::Invalid(msg.to_vec())
}

#[test]
fn unknown_commands_and_token_counts_are_error() {
    let e = inv(reply::ERROR);
    for line in [
        &b"\r\n"[..],
        b"\n",
        b"   \r\n",
        b"bogus\r\n",
        b"GET k\r\n",
        b"Set k 0 0 1\r\n",
        b"getx k\r\n",
        b"g\r\n",
        b"get\r\n",
        b"get \r\n",
        b"gets\r\n",
        b"gat\r\n",
        b"gats\r\n",
        b"set\r\n",
        b"set k 0 0\r\n",
        b"set k 0 0 1 noreply x\r\n",
        b"set k 0 0 1 2 3\r\n",
        b"cas k 0 0 1\r\n",
        b"cas k 0 0 1 2 noreply x\r\n",
        b"delete\r\n",
        b"delete k 0 noreply x\r\n",
        b"incr k\r\n",
        b"incr k 1 noreply x\r\n",
        b"decr\r\n",
        b"touch k\r\n",
        b"touch k 1 2 3\r\n",
        b"flush_all 1 2 3\r\n",
        b"flush_all 1 noreply x\r\n",
        b"verbosity\r\n",
        b"verbosity 1 2 3\r\n",
        b"set k noreply\r\n",
    ] {
        errors(line, std::slice::from_ref(&e));
    }
    // A wrong token count is answered even with noreply (memcached checks counts first).
    errors(b"incr k noreply x y\r\n", &[inv(reply::ERROR)]);
    // After an ERROR for a storage line the data block is a command line of its own.
    errors(
        b"set k 0\r\nhi\r\n",
        &[inv(reply::ERROR), inv(reply::ERROR)],
    );
}

#[test]
fn bad_numbers_and_keys_are_client_errors() {
    let bad = inv(reply::BAD_FORMAT);
    let k251 = "k".repeat(251);
    for line in [
        "set k x 0 1\r\n".to_string(),
        "set k -1 0 1\r\n".into(),
        "set k +1 0 1\r\n".into(),
        "set k 18446744073709551616 0 1\r\n".into(),
        "set k 0 x 1\r\n".into(),
        "set k 0 2147483648 1\r\n".into(),
        "set k 0 -2147483649 1\r\n".into(),
        "set k 0 0 x\r\n".into(),
        "set k 0 0 -1\r\n".into(),
        "set k 0 0 2147483648\r\n".into(),
        "set k 0 0 1x\r\n".into(),
        "add k 0 0 \t1\r\n".into(),
        "cas k 0 0 1 x\r\n".into(),
        "cas k 0 0 1 -1\r\n".into(),
        "cas k 0 0 1 18446744073709551616\r\n".into(),
        format!("set {k251} 0 0 1\r\n"),
        format!("get {k251}\r\n"),
        format!("get a {k251} b\r\n"),
        format!("gets a {k251}\r\n"),
        format!("gat 0 {k251}\r\n"),
        format!("delete {k251}\r\n"),
        format!("incr {k251} 1\r\n"),
        format!("touch {k251} 1\r\n"),
        "get a\x01b\r\n".into(),
        "get a\x7f\r\n".into(),
        "get a\tb\r\n".into(),
        "get a\x00b\r\n".into(),
        "get a\rb\r\n".into(),
        "verbosity x\r\n".into(),
        "verbosity -1\r\n".into(),
    ] {
        errors(line.as_bytes(), std::slice::from_ref(&bad));
    }
    // A storage line refused for its numbers leaves its data block to be read as a line.
    errors(
        b"set k 0 0 -1\r\nhello\r\n",
        &[bad.clone(), inv(reply::ERROR)],
    );
}

#[test]
fn bad_exptime_delta_and_delete_arguments() {
    for line in [
        &b"touch k x\r\n"[..],
        b"touch k 2147483648\r\n",
        b"gat x k\r\n",
        b"gats 1.5 k\r\n",
        b"flush_all x\r\n",
        b"flush_all noreply x\r\n",
        b"flush_all -\r\n",
    ] {
        errors(line, &[inv(reply::INVALID_EXPTIME)]);
    }
    for line in [
        &b"incr k x\r\n"[..],
        b"incr k -1\r\n",
        b"decr k 18446744073709551616\r\n",
        b"decr k 1.0\r\n",
    ] {
        errors(line, &[inv(reply::INVALID_DELTA)]);
    }
    let k251 = "k".repeat(251);
    for line in [
        "delete k 1\r\n".to_string(),
        "delete k x\r\n".into(),
        "delete k 0 0\r\n".into(),
        "delete k noreply 0\r\n".into(),
        // Arguments are checked before the key, like memcached does.
        format!("delete {k251} 1\r\n"),
    ] {
        errors(line.as_bytes(), &[inv(reply::DELETE_USAGE)]);
    }
    // gat with an exptime and no key is an empty retrieval.
    errors(b"gat 10\r\n", &[inv(reply::END)]);
    errors(b"gats 10  \r\n", &[inv(reply::END)]);
}

#[test]
fn errors_on_noreply_lines_are_silent_like_memcached() {
    let silent = inv(SILENT);
    let k251 = "k".repeat(251);
    for line in [
        "set k 0 0 x noreply\r\n".to_string(),
        "set k 0 0 noreply\r\n".into(),
        "cas k 0 0 1 noreply\r\n".into(),
        format!("set {k251} 0 0 1 noreply\r\n"),
        "delete k 1 noreply\r\n".into(),
        format!("delete {k251} noreply\r\n"),
        "incr k x noreply\r\n".into(),
        "incr k noreply\r\n".into(),
        "touch k x noreply\r\n".into(),
        "flush_all x noreply\r\n".into(),
        "verbosity noreply\r\n".into(),
        "verbosity x noreply\r\n".into(),
    ] {
        errors(line.as_bytes(), std::slice::from_ref(&silent));
    }
    // Retrievals have no noreply: their errors are always answered.
    errors(b"gat x noreply\r\n", &[inv(reply::INVALID_EXPTIME)]);
    errors(
        format!("get {k251} noreply\r\n").as_bytes(),
        &[inv(reply::BAD_FORMAT)],
    );
    // Bad data chunk and too large values with noreply.
    errors(
        b"set k 0 0 1 noreply\r\nxyz\r\n",
        &[silent.clone(), inv(reply::ERROR)],
    );
    let mut big = b"set k 0 0 1048577 noreply\r\n".to_vec();
    big.resize(big.len() + 1048577, b'x');
    big.extend_from_slice(b"\r\n");
    errors(&big, std::slice::from_ref(&silent));
}

#[test]
fn bad_data_chunk_consumes_exactly_the_declared_length() {
    // "hell" is the 2+2 bytes read; "o\r\n" is then a line of its own.
    errors(
        b"set k 0 0 2\r\nhello\r\n",
        &[inv(reply::BAD_DATA_CHUNK), inv(reply::ERROR)],
    );
    errors(b"set k 0 0 2\r\nhe\rx", &[inv(reply::BAD_DATA_CHUNK)]);
    errors(b"set k 0 0 2\r\nhe\n\n", &[inv(reply::BAD_DATA_CHUNK)]);
    errors(b"set k 0 0 0\r\nxy", &[inv(reply::BAD_DATA_CHUNK)]);
    // A short block swallows the start of the next line: here all of `get k\r\n`.
    errors(
        b"set k 0 0 5\r\nhi\r\nget k\r\n",
        &[inv(reply::BAD_DATA_CHUNK), inv(reply::ERROR)],
    );
}

#[test]
fn too_large_value_discards_exactly_len_plus_two_even_in_pieces() {
    let limits = CodecLimits {
        item_size_max: 100,
        max_retrieval_line: 64 * 1024,
    };
    let mut stream = b"set k 0 0 101\r\n".to_vec();
    // The discarded block contains lines that must not be decoded.
    let mut block = b"get a\r\nset b 0 0 1\r\nx\r\n".repeat(5);
    block.resize(101, b'z');
    stream.extend_from_slice(&block);
    stream.extend_from_slice(b"\r\nget after\r\n");
    let expected = vec![
        inv(reply::TOO_LARGE),
        snapshot(Decoded::Request(req(b"get after\r\n"))),
    ];
    assert_eq!(decode_whole(ClientCodec::new(limits), &stream).0, expected);
    for size in 1..20 {
        let mut sizes = || size;
        assert_eq!(
            decode_chunked(ClientCodec::new(limits), &stream, &mut sizes),
            expected
        );
    }
    // Watch the discard counter go down as pieces arrive.
    let mut c = ClientCodec::new(limits);
    let mut buf = BytesMut::from(&b"set k 0 0 101\r\n"[..]);
    assert!(matches!(c.decode_item(&mut buf), Some(Decoded::Invalid(m)) if m == reply::TOO_LARGE));
    assert_eq!(c.discarding(), 103);
    buf.extend_from_slice(&[b'x'; 50]);
    assert!(c.decode_item(&mut buf).is_none());
    assert_eq!((c.discarding(), buf.len()), (53, 0));
    buf.extend_from_slice(&[b'x'; 52]);
    assert!(c.decode_item(&mut buf).is_none());
    assert_eq!(c.discarding(), 1);
    buf.extend_from_slice(b"\nversion\r\n");
    assert!(
        matches!(c.decode_item(&mut buf), Some(Decoded::Request(r)) if r.command == Command::Version)
    );
    assert_eq!(c.discarding(), 0);
    // Exactly at the limit is accepted.
    let mut ok = b"set k 0 0 100\r\n".to_vec();
    ok.extend_from_slice(&[b'v'; 100]);
    ok.extend_from_slice(b"\r\n");
    let (items, _) = decode_whole(ClientCodec::new(limits), &ok);
    assert!(matches!(&items[..], [Item::Req { data: Some(d), .. }] if d.len() == 100));
}

#[test]
fn long_lines_are_fatal() {
    let fatal = Item::Fatal(reply::LINE_TOO_LONG.to_vec());
    // A non-retrieval line of 2048 bytes is fine; 2049 without a newline is fatal.
    let mut line = b"set k 0 0 1".to_vec();
    line.resize(MAX_COMMAND_LINE, b' ');
    let mut ok = line.clone();
    ok.extend_from_slice(b"\r\nx\r\n");
    assert!(matches!(one(&ok), Item::Req { .. }));
    line.push(b' ');
    assert_eq!(decode_whole(codec(), &line).0, std::slice::from_ref(&fatal));
    let mut with_nl = line.clone();
    with_nl.extend_from_slice(b"\r\nx\r\n");
    assert_eq!(
        decode_whole(codec(), &with_nl).0,
        std::slice::from_ref(&fatal)
    );
    // Fed a byte at a time, the fatal item comes as soon as the limit is passed.
    let mut c = codec();
    let mut buf = BytesMut::new();
    for (i, b) in line.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        match c.decode_item(&mut buf) {
            None => assert!(i < MAX_COMMAND_LINE),
            Some(Decoded::Fatal(m)) => {
                assert_eq!(m, reply::LINE_TOO_LONG);
                assert_eq!(i, MAX_COMMAND_LINE);
            }
            Some(other) => panic!("{other:?}"),
        }
    }
    // Retrieval lines may be as long as `max_retrieval_line`.
    let limits = CodecLimits {
        item_size_max: 1024,
        max_retrieval_line: 4000,
    };
    let mut get = b"get".to_vec();
    while get.len() < 3990 {
        get.extend_from_slice(b" key");
    }
    get.truncate(3990);
    let mut ok = get.clone();
    ok.extend_from_slice(b"\r\n");
    let (items, _) = decode_whole(ClientCodec::new(limits), &ok);
    assert!(matches!(
        &items[..],
        [Item::Req {
            command: Command::Get,
            ..
        }]
    ));
    let mut gat = b"  gat 0 ".to_vec();
    gat.resize(3999, b'k');
    gat.extend_from_slice(b"\r\n");
    let (items, _) = decode_whole(ClientCodec::new(limits), &gat);
    assert!(
        matches!(&items[..], [Item::Invalid(m)] if m == reply::BAD_FORMAT),
        "{items:?}"
    );
    get.resize(4001, b'k');
    assert_eq!(
        decode_whole(ClientCodec::new(limits), &get).0,
        std::slice::from_ref(&fatal)
    );
    get.extend_from_slice(b"\r\n");
    assert_eq!(decode_whole(ClientCodec::new(limits), &get).0, [fatal]);
}

#[test]
fn nothing_is_decoded_from_incomplete_input() {
    for partial in [
        &b""[..],
        b"get k",
        b"get k\r",
        b"set k 0 0 5\r\nhel",
        b"set k 0 0 5\r\nhello",
        b"set k 0 0 5\r\nhello\r",
    ] {
        let mut c = codec();
        let mut buf = BytesMut::from(partial);
        assert!(c.decode_item(&mut buf).is_none(), "{partial:?}");
        assert!(c.decode_item(&mut buf).is_none(), "{partial:?}");
    }
}

// ---------------------------------------------------------------- split points

/// A pipeline of mixed valid and invalid requests.
fn pipeline() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(b"get a\r\n");
    s.extend_from_slice(b"gets a bb ccc\r\n");
    s.extend_from_slice(b"set k 1 2 14\r\nget x\r\nEND\r\n\r\n\r\n");
    s.extend_from_slice(b"add k 0 0 3 noreply\r\nget\r\n");
    s.extend_from_slice(b"bogus line\r\n");
    s.extend_from_slice(b"replace k 0 0 0\r\n\r\n");
    s.extend_from_slice(b"append k 0 0 2\r\n\r\n\r\n");
    s.extend_from_slice(b"prepend k 0 0 1\nx\r\n");
    s.extend_from_slice(b"cas k 0 0 4 99\r\ngets\r\n");
    s.extend_from_slice(b"set k 0 0 2\r\nbad!\r\n");
    s.extend_from_slice(b"delete k\r\ndelete k 0\r\ndelete k noreply\r\ndelete k 0 noreply\r\n");
    s.extend_from_slice(b"delete k 5\r\n");
    s.extend_from_slice(b"incr n 5\r\ndecr n 1 noreply\r\nincr n x\r\n");
    s.extend_from_slice(b"touch k 10\r\ntouch k 10 noreply\r\n");
    s.extend_from_slice(b"gat 10 a b\r\ngats 0 a\r\ngat 5\r\n");
    s.extend_from_slice(b"set k 0 0 -3\r\n");
    s.extend_from_slice(b"set k 0 0 300\r\n");
    s.extend(std::iter::repeat_n(b'g', 300));
    s.extend_from_slice(b"\r\n");
    s.extend_from_slice(b"flush_all\r\nflush_all 10 noreply\r\n");
    s.extend_from_slice(b"version\r\nstats\r\nstats items\r\nverbosity 1\r\n");
    s.extend_from_slice(b"\r\n   \r\nget   spaced   keys  \r\n");
    s.extend_from_slice(b"get lf\nset lf 0 0 3\nabc\r\n");
    s.extend_from_slice(b"set k 0 0 1 noreply\r\nxx\r\n");
    s.extend_from_slice(b"quit\r\n");
    s
}

fn small_limits() -> CodecLimits {
    CodecLimits {
        item_size_max: 200,
        max_retrieval_line: 64 * 1024,
    }
}

#[test]
fn pipeline_decodes_to_the_expected_sequence() {
    let (items, used) = decode_whole(ClientCodec::new(small_limits()), &pipeline());
    assert_eq!(used, pipeline().len());
    let summary: Vec<String> = items
        .iter()
        .map(|i| match i {
            Item::Req {
                command, noreply, ..
            } => {
                format!("{}{}", command.name(), if *noreply { "/nr" } else { "" })
            }
            Item::Invalid(m) | Item::Fatal(m) => String::from_utf8_lossy(m).trim_end().to_string(),
        })
        .collect();
    let expected = [
        "get",
        "gets",
        "set",
        "add/nr",
        "ERROR",
        "replace",
        "append",
        "prepend",
        "cas",
        "CLIENT_ERROR bad data chunk",
        "ERROR",
        "delete",
        "delete",
        "delete/nr",
        "delete/nr",
        "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]",
        "incr",
        "decr/nr",
        "CLIENT_ERROR invalid numeric delta argument",
        "touch",
        "touch/nr",
        "gat",
        "gats",
        "END",
        "CLIENT_ERROR bad command line format",
        "SERVER_ERROR object too large for cache",
        "flush_all",
        "flush_all/nr",
        "version",
        "stats",
        "stats",
        "verbosity",
        "ERROR",
        "ERROR",
        "get",
        "get",
        "set",
        "",
        "ERROR",
        "quit",
    ];
    assert_eq!(summary, expected);
}

#[test]
fn every_split_point_gives_the_same_items() {
    let input = pipeline();
    let whole = decode_whole(ClientCodec::new(small_limits()), &input).0;
    // One byte at a time.
    assert_eq!(
        decode_chunked(ClientCodec::new(small_limits()), &input, &mut || 1),
        whole
    );
    // Every single split point.
    for cut in 0..=input.len() {
        let mut c = ClientCodec::new(small_limits());
        let mut buf = BytesMut::from(&input[..cut]);
        let mut got = Vec::new();
        while let Some(d) = c.decode_item(&mut buf) {
            got.push(snapshot(d));
        }
        buf.extend_from_slice(&input[cut..]);
        while let Some(d) = c.decode_item(&mut buf) {
            got.push(snapshot(d));
        }
        assert!(buf.is_empty());
        assert_eq!(got, whole, "split at {cut}");
    }
    // Random chunk sizes with fixed seeds.
    for seed in 0..200u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let max = [2, 5, 17, 64, 400][seed as usize % 5];
        let got = decode_chunked(ClientCodec::new(small_limits()), &input, &mut || {
            rng.gen_range(1..=max)
        });
        assert_eq!(got, whole, "seed {seed}");
    }
}

#[test]
fn lf_only_line_endings_split_anywhere() {
    let input = b"get a b\nset k 0 0 3\nabc\r\ndelete k noreply\nincr k 1\nbogus\nflush_all 1\n";
    let whole = decode_whole(codec(), input).0;
    assert_eq!(whole.len(), 6);
    match &whole[2] {
        Item::Req {
            command,
            frame,
            upstream,
            ..
        } => {
            assert_eq!(*command, Command::Delete);
            assert_eq!(frame, b"delete k noreply\n");
            assert_eq!(upstream, b"delete k\n");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(decode_chunked(codec(), input, &mut || 1), whole);
    for seed in 0..50u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        assert_eq!(
            decode_chunked(codec(), input, &mut || rng.gen_range(1..8)),
            whole
        );
    }
}

#[test]
fn frames_are_the_exact_input_bytes_in_order() {
    // Concatenating every request frame and the lines of invalid ones gives the input back.
    let input = pipeline();
    let (items, _) = decode_whole(ClientCodec::new(small_limits()), &input);
    let frames: Vec<u8> = items
        .iter()
        .filter_map(|i| match i {
            Item::Req { frame, .. } => Some(frame.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    // Every frame occurs in the input in order.
    let mut pos = 0;
    for i in &items {
        if let Item::Req { frame, .. } = i {
            let at = input[pos..]
                .windows(frame.len())
                .position(|w| w == frame.as_slice())
                .expect("frame in input");
            pos += at + frame.len();
        }
    }
    assert!(frames.len() < input.len());
}

// ---------------------------------------------------------------- properties

/// One random request line, valid or not.
fn arb_request() -> impl Strategy<Value = Vec<u8>> {
    let key = "[a-z0-9_:]{1,12}";
    let num = prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("x".to_string()),
        Just("4294967296".to_string()),
        (0u32..100).prop_map(|n| n.to_string()),
    ];
    let data = proptest::collection::vec(
        prop_oneof![
            Just(b'\r'),
            Just(b'\n'),
            Just(b'g'),
            Just(b' '),
            any::<u8>()
        ],
        0..12,
    );
    let nr = prop_oneof![Just(""), Just(" noreply")];
    let storage = (
        prop_oneof![Just("set"), Just("add"), Just("cas"), Just("append")],
        key,
        num.clone(),
        data,
        nr.clone(),
        any::<bool>(),
    )
        .prop_map(|(cmd, k, n, data, nr, honest)| {
            let len = if honest { data.len() } else { data.len() + 1 };
            let cas = if cmd == "cas" { " 5" } else { "" };
            let mut v = format!("{cmd} {k} {n} 0 {len}{cas}{nr}\r\n").into_bytes();
            v.extend_from_slice(&data);
            v.extend_from_slice(b"\r\n");
            v
        });
    let simple = (
        prop_oneof![
            Just("get"),
            Just("gets"),
            Just("gat 1"),
            Just("delete"),
            Just("incr"),
            Just("touch"),
            Just("flush_all"),
            Just("verbosity"),
            Just("version"),
            Just("stats"),
            Just("bogus"),
        ],
        proptest::collection::vec(prop_oneof![key.prop_map(|k| k), num], 0..4),
        nr,
        prop_oneof![Just("\r\n"), Just("\n")],
    )
        .prop_map(|(cmd, args, nr, end)| format!("{cmd} {}{nr}{end}", args.join(" ")).into_bytes());
    prop_oneof![storage, simple]
}

/// Decodes arbitrary input, asserting the invariants; returns the items and bytes used.
fn decode_checked(input: &[u8], limits: CodecLimits) -> (Vec<Item>, usize) {
    let (items, used) = decode_whole(ClientCodec::new(limits), input);
    assert!(used <= input.len());
    (items, used)
}

/// Fragments of protocol text that random streams are built from.
const PIECES: &[&[u8]] = &[
    b"get ",
    b"set ",
    b"gat ",
    b"delete ",
    b"incr ",
    b" noreply",
    b" 0",
    b" 5",
    b" -1",
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"k",
    b"\x00",
    b"999999999999",
    b"cas ",
    b"flush_all",
    b"verbosity",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (whole, _) = decode_checked(&input, small_limits());
        let got = decode_chunked(ClientCodec::new(small_limits()), &input, &mut || 7);
        prop_assert_eq!(got, whole);
    }

    #[test]
    fn protocol_like_bytes_never_panic(
        parts in proptest::collection::vec(proptest::sample::select(PIECES), 0..80),
        chunk in 1usize..20,
    ) {
        let input: Vec<u8> = parts.concat();
        let (whole, _) = decode_checked(&input, small_limits());
        let got = decode_chunked(ClientCodec::new(small_limits()), &input, &mut || chunk);
        prop_assert_eq!(got, whole);
    }

    #[test]
    fn random_pipelines_split_anywhere(
        reqs in proptest::collection::vec(arb_request(), 1..30),
        seed in any::<u64>(),
    ) {
        let input: Vec<u8> = reqs.concat();
        let (whole, used) = decode_checked(&input, CodecLimits::default());
        // Only a truncated data block (a dishonest length at the end) may be left over.
        prop_assert!(used <= input.len());
        let mut rng = StdRng::seed_from_u64(seed);
        let got = decode_chunked(codec(), &input, &mut || rng.gen_range(1..32));
        prop_assert_eq!(got, whole);
    }

    #[test]
    fn honest_requests_decode_one_item_each(reqs in proptest::collection::vec(arb_request(), 1..20)) {
        // Each request alone decodes to one item when its length is honest and nothing is
        // swallowed, and its frame is the request itself.
        for r in &reqs {
            let (items, used) = decode_checked(r, CodecLimits::default());
            if let [Item::Req { frame, .. }] = &items[..] {
                prop_assert_eq!(frame.as_slice(), &r[..used]);
            }
        }
    }
}

// ---------------------------------------------------------------- fuzz regressions

/// Replays every input the fuzzers ever crashed on (`fuzz/regressions/<target>/`).
#[test]
fn fuzz_regressions_replay() {
    use crate::protocol::invariants;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for (target, check) in [
        ("client_codec", invariants::fuzz_client_codec as fn(&[u8])),
        ("reply_framing", invariants::fuzz_reply_framing),
    ] {
        for file in std::fs::read_dir(dir.join(target)).unwrap().flatten() {
            let input = std::fs::read(file.path()).unwrap();
            let r = std::panic::catch_unwind(|| check(&input));
            assert!(r.is_ok(), "{} fails", file.path().display());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "regression inputs are replayed");
}
