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
    Reply(Vec<u8>),
    Skipped(Vec<u8>, Option<Vec<u8>>),
    Close,
    Packet(Option<Vec<u8>>, bool),
    Start(Command, Vec<u8>),
    Keys(Vec<Vec<u8>>),
    End,
    Failed(Vec<u8>),
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
        Decoded::Reply(m) => Item::Reply(m.to_vec()),
        Decoded::Skipped { reply, unlink } => {
            Item::Skipped(reply.to_vec(), unlink.map(|k| k.token.to_vec()))
        }
        Decoded::Close => Item::Close,
        Decoded::Packet { reply, close, .. } => Item::Packet(reply.map(|r| r.to_vec()), close),
        Decoded::Stream(part) => match part {
            Stream::Start {
                command, prefix, ..
            } => Item::Start(command, prefix.to_vec()),
            Stream::Keys(keys) => Item::Keys(keys.iter().map(|k| k.to_vec()).collect()),
            Stream::End => Item::End,
            Stream::Failed(m) => Item::Failed(m.to_vec()),
        },
    }
}

/// Whether the connection ends after this item.
fn ends(d: &Decoded) -> bool {
    matches!(d, Decoded::Close | Decoded::Packet { close: true, .. })
}

/// What every decoded request must satisfy.
fn check_invariants(r: &Request) {
    // The fuzz targets' checks, with limits no test input reaches.
    crate::protocol::invariants::check_request(
        r,
        CodecLimits {
            item_size_max: 1 << 30,
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
                !k.iter().any(|b| matches!(b, b' ' | b'\n' | 0)),
                "key with a space, newline or NUL {k:?}"
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
        let declared = crate::protocol::numbers::safe_strtol(len_token).unwrap();
        assert_eq!(r.data().len(), declared as usize);
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
            // As memcached reads the line: up to a NUL byte.
            let line = r.line();
            let line = trim(&line[..memchr::memchr(0, line).unwrap_or(line.len())]);
            let kept = trim(line.strip_suffix(b"noreply").expect("line ends in noreply"));
            assert!(kept.len() < line.len() - "noreply".len());
            // One space stays after a token ending in `\r`.
            assert_eq!(trim(&a), kept);
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
        let end = ends(&d);
        out.push(snapshot(d));
        if end {
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
            let end = ends(&d);
            out.push(snapshot(d));
            if end {
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
    Item::Reply(msg.to_vec())
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
        "set k 18446744073709551616 0 1\r\n".into(),
        "set k 0 x 1\r\n".into(),
        "set k 0 0 x\r\n".into(),
        "set k 0 0 -1\r\n".into(),
        "set k 0 0 2147483648\r\n".into(),
        "set k 0 0 1x\r\n".into(),
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
    errors(&big, &[Item::Skipped(SILENT.to_vec(), Some(b"k".to_vec()))]);
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
    let limits = CodecLimits { item_size_max: 100 };
    let mut stream = b"set k 0 0 101\r\n".to_vec();
    // The discarded block contains lines that must not be decoded.
    let mut block = b"get a\r\nset b 0 0 1\r\nx\r\n".repeat(5);
    block.resize(101, b'z');
    stream.extend_from_slice(&block);
    stream.extend_from_slice(b"\r\nget after\r\n");
    let expected = vec![
        Item::Skipped(reply::TOO_LARGE.to_vec(), Some(b"k".to_vec())),
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
    // Watch the discard counter go down as pieces arrive; the answer comes at the end, as
    // memcached answers only once it has swallowed the block.
    let mut c = ClientCodec::new(limits);
    let mut buf = BytesMut::from(&b"set k 0 0 101\r\n"[..]);
    assert!(c.decode_item(&mut buf).is_none());
    assert_eq!(c.discarding(), 103);
    buf.extend_from_slice(&[b'x'; 50]);
    assert!(c.decode_item(&mut buf).is_none());
    assert_eq!((c.discarding(), buf.len()), (53, 0));
    buf.extend_from_slice(&[b'x'; 52]);
    assert!(c.decode_item(&mut buf).is_none());
    assert_eq!(c.discarding(), 1);
    buf.extend_from_slice(b"\nversion\r\n");
    assert!(matches!(
        c.decode_item(&mut buf),
        Some(Decoded::Skipped { reply: m, unlink: Some(k) }) if m == reply::TOO_LARGE && k.token == "k"
    ));
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
fn long_lines_close_silently_unless_they_are_gets() {
    // A line of 2048 bytes still without a newline waits; one more byte closes, silently.
    let mut line = b"set k 0 0 1".to_vec();
    line.resize(MAX_COMMAND_LINE, b' ');
    let mut ok = line.clone();
    ok.extend_from_slice(b"\r\nx\r\n");
    assert!(matches!(one(&ok), Item::Req { .. }));
    line.push(b' ');
    assert_eq!(decode_whole(codec(), &line).0, [Item::Close]);
    // A longer line whose newline has arrived is read, as memcached reads whatever it has.
    let mut with_nl = line.clone();
    with_nl.extend_from_slice(b"\r\nx\r\n");
    assert!(matches!(one(&with_nl), Item::Req { .. }));
    // Fed a byte at a time, the close comes as soon as the limit is passed.
    let mut c = codec();
    let mut buf = BytesMut::new();
    for (i, b) in line.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        match c.decode_item(&mut buf) {
            None => assert!(i < MAX_COMMAND_LINE),
            Some(Decoded::Close) => assert_eq!(i, MAX_COMMAND_LINE),
            Some(other) => panic!("{other:?}"),
        }
    }
    // gat lines are not exempt in memcached, nor a get behind more than 100 spaces.
    let mut gat = b"gat 0 ".to_vec();
    gat.resize(3000, b'k');
    assert_eq!(decode_whole(codec(), &gat).0, [Item::Close]);
    let mut far = vec![b' '; 101];
    far.extend_from_slice(b"get ");
    far.resize(3000, b'k');
    assert_eq!(decode_whole(codec(), &far).0, [Item::Close]);
}

/// A get line of `n` keys `k0 k1 …`.
fn get_line(n: usize) -> Vec<u8> {
    let mut line = b"get".to_vec();
    for i in 0..n {
        line.extend_from_slice(format!(" k{i}").as_bytes());
    }
    line.extend_from_slice(b"\r\n");
    line
}

/// Runs a streamed retrieval's items together: (prefix, keys, how it ended).
fn stream_of(items: &[Item]) -> (Vec<u8>, Vec<Vec<u8>>, Item) {
    let Some((Item::Start(_, prefix), rest)) = items.split_first() else {
        panic!("no start in {items:?}")
    };
    let mut keys = Vec::new();
    for item in rest {
        match item {
            Item::Keys(k) => keys.extend(k.iter().cloned()),
            end => return (prefix.clone(), keys, end.clone()),
        }
    }
    panic!("no end in {items:?}")
}

#[test]
fn long_get_lines_stream_their_keys_in_any_pieces() {
    let input = [get_line(20_000), b"version\r\n".to_vec()].concat();
    let expected: Vec<Vec<u8>> = (0..20_000).map(|i| format!("k{i}").into_bytes()).collect();
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let max = [3, 100, 3000, 70_000][seed as usize % 4];
        let items = decode_chunked(codec(), &input, &mut || rng.gen_range(1..=max));
        let (prefix, keys, end) = stream_of(&items);
        assert_eq!(prefix, b"get ");
        assert_eq!(keys, expected, "seed {seed}");
        assert_eq!(end, Item::End);
        assert!(
            matches!(
                items.last(),
                Some(Item::Req {
                    command: Command::Version,
                    ..
                })
            ),
            "the stream stays in sync"
        );
    }
}

#[test]
fn a_complete_line_with_more_keys_than_allowed_comes_in_batches() {
    let mut c = codec();
    c.set_batch_keys(3);
    let (items, used) = decode_whole(c, &get_line(8));
    assert_eq!(used, get_line(8).len());
    let sizes: Vec<usize> = items
        .iter()
        .filter_map(|i| match i {
            Item::Keys(k) => Some(k.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, [3, 3, 2]);
    let (prefix, keys, end) = stream_of(&items);
    assert_eq!(
        (prefix.as_slice(), keys.len(), end),
        (&b"get "[..], 8, Item::End)
    );
    // At the limit it is one request, as is a gat whose keys fit.
    let mut c = codec();
    c.set_batch_keys(8);
    assert!(matches!(
        &decode_whole(c, &get_line(8)).0[..],
        [Item::Req { .. }]
    ));
    let mut c = codec();
    c.set_batch_keys(2);
    let (items, _) = decode_whole(c, b"gats 30 a b c\r\n");
    assert_eq!(
        stream_of(&items),
        (
            b"gats 30 ".to_vec(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()],
            Item::End
        )
    );
}

#[test]
fn a_streamed_key_too_long_fails_the_rest_of_the_line() {
    let mut line = b"get a b ".to_vec();
    line.resize(3000, b'x');
    line.extend_from_slice(b" c\r\nversion\r\n");
    let items = decode_chunked(codec(), &line, &mut || 500);
    assert_eq!(items[0], Item::Start(Command::Get, b"get ".to_vec()));
    assert!(items.contains(&Item::Failed(reply::BAD_FORMAT.to_vec())));
    assert!(!items.contains(&Item::End));
    assert!(matches!(
        items.last(),
        Some(Item::Req {
            command: Command::Version,
            ..
        })
    ));
    // A NUL ends what memcached reads of the line: later keys are ignored.
    let mut line = b"get a".to_vec();
    line.resize(3000, b' ');
    line.extend_from_slice(b"b\x00c d\r\nversion\r\n");
    let items = decode_chunked(codec(), &line, &mut || 1000);
    let (_, keys, end) = stream_of(&items);
    assert_eq!((keys, end), (vec![b"a".to_vec(), b"b".to_vec()], Item::End));
}

#[test]
fn a_binary_header_is_recognised_on_the_first_byte_only() {
    let mut header = vec![0x80u8, 0x1b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 8, 7, 6];
    header.resize(24, 0);
    let mut c = codec();
    let mut buf = BytesMut::from(&header[..23]);
    assert!(
        c.decode_item(&mut buf).is_none(),
        "waits for the whole header"
    );
    buf.extend_from_slice(&header[23..]);
    // 0x1b (Verbosity) is not served by memcached 1.6's binary protocol either.
    let mut unknown = vec![0x81u8, 0x1b, 0, 0, 0, 0, 0, 0x81, 0, 0, 0, 15, 9, 8, 7, 6];
    unknown.resize(24, 0);
    unknown.extend_from_slice(b"Unknown command");
    assert_eq!(
        snapshot(c.decode_item(&mut buf).unwrap()),
        Item::Packet(Some(unknown), false)
    );
    assert!(c.speaks_binary());
    // After a text command, 0x80 is just a byte of an unknown command.
    let mut text = b"version\r\n".to_vec();
    text.extend_from_slice(&header);
    text.extend_from_slice(b"\r\n");
    let (items, _) = decode_whole(codec(), &text);
    assert_eq!(items.len(), 2);
    assert!(matches!(items[1], Item::Reply(_)));
}

#[test]
fn numbers_and_keys_are_read_like_memcached() {
    // A leading `+` or whitespace, a trailing tab, and 32-bit truncation are memcached's.
    let r = req(b"set k +5 0 +1\r\nx\r\n");
    assert_eq!((r.flags, r.data()), (5, &b"x"[..]));
    let r = req(b"set k 4294967301 \t7 1\t\r\nx\r\n");
    assert_eq!((r.flags, r.exptime), (5, 7));
    let r = req(b"set k 0 4294967296 4294967297\r\nx\r\n");
    assert_eq!((r.exptime, r.data()), (0, &b"x"[..]));
    assert_eq!(req(b"touch k 2147483648\r\n").exptime, i32::MIN as i64);
    assert_eq!(req(b"incr k +3\r\n").number, 3);
    assert_eq!(req(b"decr k -0\r\n").number, 0);
    // Lengths that cannot be a data block are refused without reading one.
    errors(b"set k 0 0 2147483647\r\n", &[inv(reply::BAD_FORMAT)]);
    errors(b"set k 0 0 2147483646\r\n", &[inv(reply::BAD_FORMAT)]);
    // A large but possible length is answered once its data block has been swallowed.
    let mut c = codec();
    assert!(c
        .decode_item(&mut BytesMut::from(&b"set k 0 0 2147483645\r\n"[..]))
        .is_none());
    assert_eq!(c.discarding(), 2147483647);
    // Keys are anything but spaces; a NUL ends the line as memcached reads it.
    for key in [&b"a\x01b"[..], b"a\x7f", b"a\tb", b"a\rb", b"\xff\xfe"] {
        let r = req(&[b"get ", key, b"\r\n"].concat());
        assert_eq!(keys(&r), [key]);
    }
    let r = req(b"get a\x00b c\r\n");
    assert_eq!(keys(&r), [b"a"]);
    assert_eq!(
        upstream(&r),
        b"get a\x00b c\r\n",
        "forwarded as sent: memcached reads it alike"
    );
    let r = req(b"set k 0 0 1 noreply\x00junk\r\nx\r\n");
    assert!(r.noreply());
    assert_eq!(upstream(&r), b"set k 0 0 1\r\nx\r\n");
    // The 24th token on is beyond memcached's tokenizer: a command with too many is ERROR.
    let many: String = (0..30).map(|i| format!(" t{i}")).collect();
    errors(format!("set{many}\r\n").as_bytes(), &[inv(reply::ERROR)]);
    // bget is an old alias of get.
    let r = req(b"bget a b\r\n");
    assert_eq!((r.command, keys(&r)), (Command::Get, vec![&b"a"[..], b"b"]));
}

#[test]
fn http_requests_and_shutdown_get_memcacheds_answers() {
    assert_eq!(
        decode_whole(codec(), b"GET / HTTP/1.0\r\n\r\n").0,
        [Item::Close]
    );
    assert_eq!(
        decode_whole(codec(), b"POST /x HTTP/1.1\r\n").0,
        [Item::Close]
    );
    // Only an unknown command ending in HTTP/ is closed.
    errors(b"foo HTTP/1.1 x\r\n", &[inv(reply::ERROR)]);
    errors(b"sfoo HTTP/1.0\r\n", &[inv(reply::ERROR)]);
    errors(b"shutdown\r\n", &[inv(reply::SHUTDOWN_DISABLED)]);
    let r = req(b"get / HTTP/1.0\r\n");
    assert_eq!(keys(&r), [&b"/"[..], b"HTTP/1.0"]);
    let r = req(b"cache_memlimit 100 noreply\r\n");
    assert_eq!(
        (r.command, r.number, r.noreply()),
        (Command::CacheMemlimit, 100, true)
    );
    errors(b"cache_memlimit x\r\n", &[inv(reply::ERROR)]);
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
    CodecLimits { item_size_max: 200 }
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
            Item::Reply(m) | Item::Skipped(m, _) => {
                String::from_utf8_lossy(m).trim_end().to_string()
            }
            other => panic!("{other:?}"),
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

/// Fragments of meta-protocol text.
const META_PIECES: &[&[u8]] = &[
    b"mg ", b"ms ", b"md ", b"ma ", b"mn", b"me ", b"k", b"Zm9v", b"Zm8=", b"=", b" q", b" qq",
    b" v", b" b", b" k", b" O1", b" N0", b" T-1", b" Tx", b" MS", b" ME", b" Mz", b" MSS", b" I",
    b" C1", b" D5", b" J9", b" F", b" 3", b" 0", b" -1", b" ", b"\r\n", b"\n", b"abc", b"\x00",
    b"\xff",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn meta_like_bytes_keep_the_codec_invariants(
        parts in proptest::collection::vec(proptest::sample::select(META_PIECES), 0..60),
        first in any::<u8>(),
    ) {
        let mut input = vec![first];
        input.extend(parts.concat());
        crate::protocol::invariants::fuzz_meta_request(&input);
    }

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
        ("meta_request", invariants::fuzz_meta_request),
        ("binary_request", invariants::fuzz_binary_request),
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

#[test]
fn a_streamed_get_line_without_a_key_is_an_error() {
    // memcached reads `get ` followed only by spaces, or by a NUL, as `get` without a key.
    for tail in [&b"                "[..], b"\x00x y"] {
        let mut line = b"get ".to_vec();
        while line.len() < 3000 {
            line.extend_from_slice(tail);
        }
        line.extend_from_slice(b"\r\nversion\r\n");
        let items = decode_chunked(codec(), &line, &mut || 500);
        let (prefix, keys, end) = stream_of(&items);
        assert_eq!((prefix.as_slice(), keys.len()), (&b"get "[..], 0));
        assert_eq!(end, Item::Failed(reply::ERROR.to_vec()));
        assert!(matches!(
            items.last(),
            Some(Item::Req {
                command: Command::Version,
                ..
            })
        ));
    }
}
