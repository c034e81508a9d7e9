//! Protocol invariants, asserted over arbitrary input by the fuzz targets (`fuzz/`) and by
//! the replay of their saved crash inputs in `cargo test`. Every function panics on a
//! violation; none is used on the serving path.

mod binary;
pub use binary::fuzz_binary_request;

use bytes::BytesMut;

use super::codec::{ClientCodec, CodecLimits, Decoded, Stream};
use super::meta::{self, MetaFlags};
use super::numbers::safe_strtol;
use super::reply::{self, frame_reply, FrameState, ReplyKind};
use super::request::{Command, Request, MAX_KEY_LEN};

/// An owned summary of one decoded item, to compare decodings of the same input.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A request: the bytes that would be forwarded upstream, and its `noreply` flag.
    Request(Vec<u8>, bool),
    /// A retrieval, decoded whole or handed out in batches: the text before its keys, and
    /// its keys.
    Retrieval(Vec<u8>, Vec<Vec<u8>>),
    /// A reply; the stream continues.
    Reply(&'static [u8]),
    /// A refused value: the reply, and the key whose old value goes.
    Skipped(&'static [u8], Option<Vec<u8>>),
    /// The connection closes (silently, or after a binary answer).
    Close,
    /// A binary response memroute gives itself.
    Packet(Vec<u8>),
}

/// The `client_codec` fuzz target: the first byte picks the chunk size, the rest is the
/// client's stream.
pub fn fuzz_client_codec(data: &[u8]) {
    if let Some((&first, input)) = data.split_first() {
        check_client_input(input, usize::from(first) % 64 + 1, fuzz_limits());
    }
}

/// The `reply_framing` fuzz target: the first byte picks the piece size, the second the
/// number of keys requested (so the `VALUE` item limit), the whole input is the stream.
pub fn fuzz_reply_framing(data: &[u8]) {
    let step = data.first().map_or(1, |b| usize::from(*b) % 16 + 1);
    let keys = match data.get(1) {
        Some(b) if *b < 0xf0 => usize::from(*b) % 8,
        _ => usize::MAX,
    };
    check_reply_input(data, step, keys);
}

/// The `meta_request` fuzz target: the first byte picks the chunk size and the meta command
/// (`mg`, `ms`, `md`, `ma`, `mn`, `me`), the rest follows `m<c> ` on the line (and may hold
/// data blocks and further requests).
pub fn fuzz_meta_request(data: &[u8]) {
    if let Some((&first, rest)) = data.split_first() {
        let command = b"gsdane"[usize::from(first) % 6];
        let mut input = vec![b'm', command, b' '];
        input.extend_from_slice(rest);
        check_client_input(&input, usize::from(first / 6) % 64 + 1, fuzz_limits());
    }
}

/// Small limits, so that the too-large and too-long paths are reachable by a fuzzer.
pub fn fuzz_limits() -> CodecLimits {
    CodecLimits { item_size_max: 64 }
}

/// Decodes `input` fed in pieces of `chunk` bytes, checking every request and that no more
/// bytes are consumed than were fed. A retrieval handed out in batches is summarised like one
/// decoded whole (where the batches fall depends on how the bytes arrive), and one that fails
/// part-way like the error memcached gives the whole line. Stops where the connection would
/// close.
pub fn decode_stream(input: &[u8], chunk: usize, limits: CodecLimits) -> Vec<Item> {
    let mut codec = ClientCodec::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let (mut fed, mut consumed) = (0, 0);
    let mut streaming: Option<(Vec<u8>, Vec<Vec<u8>>)> = None;
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            let before = buf.len();
            let item = codec.decode_item(&mut buf);
            consumed += before - buf.len();
            assert!(consumed <= fed, "consumed {consumed} of {fed} bytes");
            let Some(item) = item else { break };
            let item = match item {
                Decoded::Request(r) => {
                    check_request(&r, limits);
                    if r.command.is_retrieval() {
                        let prefix = r.line()[..r.keys_start as usize].to_vec();
                        Item::Retrieval(prefix, r.keys().map(<[u8]>::to_vec).collect())
                    } else {
                        let (a, b) = r.upstream_bytes();
                        let mut up = a.to_vec();
                        up.extend_from_slice(b.as_deref().unwrap_or_default());
                        Item::Request(up, r.noreply())
                    }
                }
                Decoded::Reply(m) => Item::Reply(m),
                Decoded::Skipped { reply, unlink } => {
                    Item::Skipped(reply, unlink.map(|k| k.token.to_vec()))
                }
                Decoded::Close | Decoded::Packet { close: true, .. } => {
                    out.push(Item::Close);
                    return out;
                }
                Decoded::Packet { reply, .. } => {
                    Item::Packet(reply.map_or(Vec::new(), |r| r.to_vec()))
                }
                Decoded::Stream(part) => match part {
                    Stream::Start { prefix, .. } => {
                        assert!(streaming.is_none(), "one retrieval streams at a time");
                        streaming = Some((prefix.to_vec(), Vec::new()));
                        continue;
                    }
                    Stream::Keys(keys) => {
                        let s = streaming.as_mut().expect("keys follow a start");
                        assert!(!keys.is_empty(), "a batch has keys");
                        for k in keys {
                            check_key(&k);
                            s.1.push(k.to_vec());
                        }
                        continue;
                    }
                    Stream::End => {
                        let (prefix, keys) = streaming.take().expect("an end follows a start");
                        Item::Retrieval(prefix, keys)
                    }
                    Stream::Failed(m) => {
                        streaming.take().expect("a failure follows a start");
                        Item::Reply(m)
                    }
                },
            };
            out.push(item);
        }
    }
    out
}

fn check_key(k: &[u8]) {
    assert!(
        (1..=MAX_KEY_LEN).contains(&k.len()),
        "key length {}",
        k.len()
    );
    assert!(
        !k.iter().any(|b| matches!(b, b' ' | b'\n' | 0)),
        "key byte in {k:?}"
    );
}

/// The client-codec invariants for one input: each request is well formed (see
/// [`check_request`]), and decoding in pieces of any size gives what decoding it whole does.
pub fn check_client_input(input: &[u8], chunk: usize, limits: CodecLimits) {
    let whole = decode_stream(input, input.len(), limits);
    let pieces = decode_stream(input, chunk, limits);
    if whole != pieces && closes_on_a_long_line(&whole, &pieces, input) {
        // As memcached does, a line still without its newline after 2 KiB closes the
        // connection, so a longer line is served only when it arrives in one read.
        return;
    }
    assert_eq!(whole, pieces, "decoding in pieces of {chunk} differs");
}

/// Whether decoding in pieces differs from decoding whole only by closing where a line of
/// more than [`MAX_COMMAND_LINE`](super::codec::MAX_COMMAND_LINE) bytes (not a retrieval,
/// which is read in batches) was still arriving.
fn closes_on_a_long_line(whole: &[Item], pieces: &[Item], input: &[u8]) -> bool {
    let Some((Item::Close, before)) = pieces.split_last() else {
        return false;
    };
    let long_line = input
        .split(|b| *b == b'\n')
        .any(|line| line.len() > super::codec::MAX_COMMAND_LINE);
    long_line && whole.starts_with(before)
}

/// One decoded request: keys of 1..=250 bytes with no space, newline or NUL, a data block of
/// exactly its declared length within the limit, and forwarded bytes that are themselves one
/// valid request with the same fields (without `noreply`), as is a canonical re-encoding.
pub fn check_request(r: &Request, limits: CodecLimits) {
    assert!(r.frame.ends_with(b"\n"), "frame ends with a newline");
    if r.command.is_meta() {
        return check_meta_request(r, limits);
    }
    if r.command.is_retrieval() || r.command.is_single_key() {
        assert!(r.keys().next().is_some(), "a keyed command has a key");
        for k in r.keys() {
            check_key(k);
        }
        assert_eq!(r.keys().count(), r.key_count(), "key count");
    }
    if r.command.is_single_key() {
        assert!(!r.key().contains(&b' '), "one key");
    }
    if r.command.is_storage() {
        // As memcached reads it (`-0`, `+5`, `5\t`, the low 32 bits of a longer number).
        let declared = tokens(r.line())
            .nth(4)
            .and_then(safe_strtol)
            .expect("a storage line declares a length");
        let declared = usize::try_from(declared).expect("a length of at least 0");
        assert_eq!(
            r.data().len(),
            declared,
            "data block of the declared length"
        );
        assert!(declared <= limits.item_size_max);
        assert!(r.frame.ends_with(b"\r\n"), "data block ends with \\r\\n");
    }
    let (a, b) = r.upstream_bytes();
    assert_eq!(r.noreply(), b.is_some());
    let mut forwarded = a.to_vec();
    forwarded.extend_from_slice(b.as_deref().unwrap_or_default());
    // At most ` 0` is added (`delete noreply`), and a `\n` may become `\r\n`.
    assert!(forwarded.len() <= r.frame.len() + 3);
    // Retrievals have no noreply; version, stats and quit are answered by memroute.
    // memcached reads `delete <key>`'s key as the key even when it is `noreply`.
    let answered_by_memroute =
        matches!(r.command, Command::Version | Command::Stats | Command::Quit);
    let key_only_delete =
        r.command == Command::Delete && tokens(first_line(&forwarded)).count() == 2;
    let forwarded_with_flag =
        !(r.command.is_retrieval() || answered_by_memroute || key_only_delete);
    if forwarded_with_flag {
        assert_ne!(
            tokens(first_line(&forwarded)).last(),
            Some(&b"noreply"[..]),
            "a backend never sees a noreply flag: {:?}",
            String::from_utf8_lossy(&forwarded)
        );
    }

    // What goes upstream decodes to the same request, and forwarding it again is a fixpoint.
    let again = decode_one(&forwarded, limits);
    assert_same(r, &again);
    assert!(!again.noreply(), "noreply is never forwarded");
    let (a2, b2) = again.upstream_bytes();
    assert!(b2.is_none());
    assert_eq!(&a2[..], &forwarded[..], "forwarding is a fixpoint");

    // A canonical re-encoding from the decoded fields means the same request.
    let canonical = encode(r);
    assert_same(r, &decode_one(&canonical, limits));
}

/// One decoded meta request: its key routes (a base64 key decodes), its flags parse, an `ms`
/// data block has its declared length within the limit, and what goes upstream is one valid
/// meta request with the same command, key, flags and data but never `q` — except `ma … q N`,
/// which goes as received followed by `mn`.
pub fn check_meta_request(r: &Request, limits: CodecLimits) {
    assert!(!r.noreply(), "meta requests have no noreply");
    if r.command == Command::MetaNoop {
        return;
    }
    let key = r.key();
    assert!((1..=MAX_KEY_LEN).contains(&key.len()), "key length");
    assert!(!key.contains(&b' '), "one key token");
    let mut buf = [0u8; MAX_KEY_LEN];
    let routed = meta::lookup_key(key, r.meta().base64, &mut buf).map(<[u8]>::to_vec);
    assert!(
        routed.as_ref().is_some_and(|k| !k.is_empty()),
        "the key routes"
    );
    if r.command == Command::MetaDebug {
        let (a, b) = r.upstream_bytes();
        assert!(b.is_none() && a == r.frame, "me goes as received");
        return;
    }
    let flags = MetaFlags::parse(key, r.meta_flags()).expect("flags that parse");
    assert_eq!(flags.quiet, r.meta().quiet_at.is_some());
    assert_eq!(flags.base64, r.meta().base64);
    if r.command == Command::MetaSet {
        let declared = tokens(r.line())
            .nth(2)
            .and_then(safe_strtol)
            .expect("ms declares a length");
        assert_eq!(r.data().len(), usize::try_from(declared).unwrap());
        assert!(r.data().len() <= limits.item_size_max);
        assert!(r.frame.ends_with(b"\r\n"));
    }
    let (a, b) = r.upstream_bytes();
    let mut forwarded = a.to_vec();
    forwarded.extend_from_slice(b.as_deref().unwrap_or_default());
    if r.quiet_upstream() {
        assert!(forwarded.starts_with(&r.frame) && forwarded.ends_with(meta::MN_REQUEST));
        assert_eq!(forwarded.len(), r.frame.len() + meta::MN_REQUEST.len());
        return;
    }
    let again = decode_one(&forwarded, limits);
    assert_eq!(again.command, r.command);
    assert_eq!(again.key(), key, "same key token");
    assert!(again.meta().quiet_at.is_none(), "q never goes upstream");
    let again_flags = MetaFlags::parse(again.key(), again.meta_flags()).expect("parses");
    assert_eq!(
        again_flags,
        MetaFlags {
            quiet: false,
            ..flags
        },
        "same flags but q"
    );
    if r.command == Command::MetaSet {
        assert_eq!(again.data(), r.data());
    }
    let (a2, b2) = again.upstream_bytes();
    let mut twice = a2.to_vec();
    twice.extend_from_slice(b2.as_deref().unwrap_or_default());
    assert_eq!(twice, forwarded, "forwarding is a fixpoint");
}

/// Decodes `bytes` as exactly one request, consuming all of them.
fn decode_one(bytes: &[u8], limits: CodecLimits) -> Request {
    let mut codec = ClientCodec::new(limits);
    let mut buf = BytesMut::from(bytes);
    match codec.decode_item(&mut buf) {
        Some(Decoded::Request(r)) => {
            assert!(buf.is_empty(), "one request uses all of {bytes:?}");
            r
        }
        other => panic!("{bytes:?} decodes to {other:?}"),
    }
}

fn assert_same(a: &Request, b: &Request) {
    assert_eq!(a.command, b.command);
    assert!(a.keys().eq(b.keys()), "same keys");
    if a.command.is_storage() {
        assert_eq!(a.data(), b.data());
        assert_eq!(
            (a.flags, a.exptime, a.number),
            (b.flags, b.exptime, b.number)
        );
    }
    if matches!(
        a.command,
        Command::Incr | Command::Decr | Command::Cas | Command::CacheMemlimit
    ) {
        assert_eq!(a.number, b.number);
    }
    if matches!(
        a.command,
        Command::Touch | Command::Gat | Command::Gats | Command::FlushAll
    ) {
        assert_eq!(a.exptime, b.exptime);
    }
    if matches!(a.command, Command::Stats | Command::Verbosity) {
        assert!(args(a).eq(args(b)), "same arguments");
    }
}

/// The request written from its decoded fields, single-spaced, without `noreply`.
fn encode(r: &Request) -> Vec<u8> {
    let mut out = r.command.name().as_bytes().to_vec();
    let field = |out: &mut Vec<u8>, f: &[u8]| {
        out.push(b' ');
        out.extend_from_slice(f);
    };
    if matches!(r.command, Command::Gat | Command::Gats) {
        field(&mut out, r.exptime.to_string().as_bytes());
    }
    if r.command.is_retrieval() || r.command.is_single_key() {
        for k in r.keys() {
            field(&mut out, k);
        }
    }
    match r.command {
        c if c.is_storage() => {
            field(&mut out, r.flags.to_string().as_bytes());
            field(&mut out, r.exptime.to_string().as_bytes());
            field(&mut out, r.data().len().to_string().as_bytes());
            if c == Command::Cas {
                field(&mut out, r.number.to_string().as_bytes());
            }
        }
        Command::Incr | Command::Decr | Command::CacheMemlimit => {
            field(&mut out, r.number.to_string().as_bytes())
        }
        Command::Touch => field(&mut out, r.exptime.to_string().as_bytes()),
        Command::FlushAll if r.exptime != 0 => field(&mut out, r.exptime.to_string().as_bytes()),
        Command::Stats | Command::Verbosity => {
            for a in args(r) {
                field(&mut out, a);
            }
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    if r.command.is_storage() {
        out.extend_from_slice(r.data());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The arguments after the command word, without a trailing `noreply`.
fn args(r: &Request) -> impl Iterator<Item = &[u8]> {
    let n = tokens(r.line()).count() - usize::from(r.noreply());
    tokens(r.line()).take(n).skip(1)
}

/// The tokens memcached sees: split on spaces, up to a NUL byte.
fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let line = &line[..memchr::memchr(0, line).unwrap_or(line.len())];
    line.split(|b| *b == b' ').filter(|t| !t.is_empty())
}

fn first_line(bytes: &[u8]) -> &[u8] {
    let end = memchr::memchr(b'\n', bytes).unwrap_or(bytes.len());
    bytes[..end].strip_suffix(b"\r").unwrap_or(&bytes[..end])
}

/// The reply-framing invariants for one input and every [`ReplyKind`]: framing never claims
/// more than the input; a framed reply is exactly what its kind allows (one reply line, or
/// `VALUE` items whose data blocks have exactly their declared length, then `END` or an
/// error line, and no more items than `keys`); and framing it as it arrives in pieces of
/// `step` bytes finds the same reply.
pub fn check_reply_input(data: &[u8], step: usize, keys: usize) {
    for kind in [
        ReplyKind::Line,
        ReplyKind::Retrieval,
        ReplyKind::RetrievalFlagsInValue,
        ReplyKind::Meta,
        ReplyKind::MetaThenNoop,
    ] {
        let mut state = FrameState::default();
        state.limit_items(keys);
        let whole = frame_reply(data, kind, &mut state.clone());
        if let Ok(Some(n)) = whole {
            assert!(n > 0 && n <= data.len());
            let items = match kind {
                ReplyKind::Meta | ReplyKind::MetaThenNoop => check_meta_framed(&data[..n], kind),
                _ => check_framed(&data[..n], kind),
            };
            assert!(items <= keys, "{items} items for {keys} keys");
        }
        let mut end = 0;
        let pieces = loop {
            if end == data.len() {
                break frame_reply(data, kind, &mut state);
            }
            end = (end + step.max(1)).min(data.len());
            match frame_reply(&data[..end], kind, &mut state) {
                Ok(None) => {}
                other => break other,
            }
        };
        match (whole, pieces) {
            // A prefix may be rejected early (an over-long line) before the whole is seen.
            (Err(_), _) | (_, Err(_)) => {}
            (w, p) => assert_eq!(w, p, "{kind:?} in pieces of {step}"),
        }
    }
}

/// A framed meta reply is one status line, or `VA <n>` and exactly `n` bytes and `\r\n`;
/// with `MetaThenNoop`, maybe none of that, then `MN`. Returns 0 (no `VALUE` items).
fn check_meta_framed(reply: &[u8], kind: ReplyKind) -> usize {
    let mut rest = reply;
    if kind == ReplyKind::MetaThenNoop {
        rest = rest.strip_suffix(meta::MN).expect("ends with MN");
        if rest.is_empty() {
            return 0;
        }
    }
    let nl = memchr::memchr(b'\n', rest).expect("a status line");
    let line = first_line(rest);
    match line.strip_prefix(b"VA ") {
        Some(args) => {
            let declared: usize = tokens(args)
                .next()
                .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok())
                .expect("VA declares a length");
            assert_eq!(
                rest.len(),
                nl + 1 + declared + 2,
                "data of the declared length"
            );
            assert!(rest.ends_with(b"\r\n"));
        }
        None => assert_eq!(nl + 1, rest.len(), "one line"),
    }
    0
}

/// A framed reply is exactly one well-formed reply of its kind; returns its `VALUE` items.
fn check_framed(reply: &[u8], kind: ReplyKind) -> usize {
    assert!(reply.ends_with(b"\n"));
    if kind == ReplyKind::Line {
        assert_eq!(
            memchr::memchr(b'\n', reply),
            Some(reply.len() - 1),
            "one line"
        );
        return 0;
    }
    let mut pos = 0;
    let mut items = 0;
    for item in reply::value_items(reply) {
        items += 1;
        assert_eq!(item.range.start, pos, "items are contiguous");
        let header = first_line(&reply[pos..]);
        let declared: usize = tokens(header)
            .nth(3)
            .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok())
            .expect("a VALUE line declares a length");
        let data_start = pos + memchr::memchr(b'\n', &reply[pos..]).expect("header line") + 1;
        assert_eq!(
            item.range.end - data_start,
            declared + 2,
            "data of the declared length"
        );
        assert_eq!(&reply[item.range.end - 2..item.range.end], b"\r\n");
        pos = item.range.end;
    }
    let last = first_line(&reply[pos..]);
    assert_eq!(
        pos + memchr::memchr(b'\n', &reply[pos..]).unwrap() + 1,
        reply.len()
    );
    assert!(
        last == b"END" || reply::is_error_line(last),
        "ends with END or an error"
    );
    items
}
