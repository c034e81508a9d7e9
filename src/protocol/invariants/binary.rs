//! The `binary_request` fuzz target's invariants: arbitrary request packets through
//! [`binary::step`] (as a stream, packet after packet) and arbitrary replies through
//! [`binary::encode`].
//!
//! Input: byte 0 picks `item_size_max` (64, 300 or 1 MiB) and the piece size for the
//! codec-level check; bytes 1-2 (little-endian) how many of the rest are the client's
//! request stream (its first byte is forced to the request magic 0x80, so the stream is a
//! binary connection); the remainder is a backend reply, read as the answer to every
//! request `step` forwarded, and, prefixed by a made-up context (opcode, quiet bit, opaque,
//! key), as the answer to that context.
//!
//! Asserts, for `step`: no panic; `Need(n)` only for an `n` beyond the bytes it has and
//! within `24 + item_size_max + 8 + 250 + 64` (one packet's header, extras, key and value);
//! `Forward`, `Answer` and `Close` never consume more than the buffer holds; `Forward`'s
//! context echoes the packet's opcode and opaque, is quiet exactly for the quiet opcodes
//! and carries the key for GetK/GAT-K; its frame, fed to a fresh `ClientCodec`, is exactly
//! one request (never a binary packet, a stream or a close) that passes
//! `invariants::check_request` (what goes upstream decodes to the same request, without
//! noreply, …) and nothing more, or a reply line only for a key that needs base64 and is
//! 187 bytes or longer (known: its base64 form exceeds a meta key token's 250 bytes, and
//! memroute refuses it); `Answer`/`Close` replies are one well-formed response packet with an
//! error status. For `encode`, of any reply with any context: no panic, and the output is
//! whole response packets (magic 0x81, the context's opcode and opaque, `bodylen` = extras +
//! key + value, datatype 0), at most one unless the opcode is Stat; a quiet store, delete,
//! arithmetic, flush or quit answers only with an error status. The whole stream also goes
//! through `ClientCodec` in pieces and whole (`invariants::check_client_input`).

use bytes::Bytes;

use crate::protocol::binary::{self, BinaryCtx, Step};
use crate::protocol::codec::{ClientCodec, CodecLimits, Decoded};
use crate::protocol::invariants;

const HEADER: usize = 24;
const MAX_KEY: usize = 250;

/// The loud form of a quiet opcode (None: not a quiet opcode).
fn loud_of(op: u8) -> Option<u8> {
    Some(match op {
        0x09 => 0x00, // GetQ
        0x0d => 0x0c, // GetKQ
        0x11 => 0x01, // SetQ
        0x12 => 0x02, // AddQ
        0x13 => 0x03, // ReplaceQ
        0x14 => 0x04, // DeleteQ
        0x15 => 0x05, // IncrementQ
        0x16 => 0x06, // DecrementQ
        0x17 => 0x07, // QuitQ
        0x18 => 0x08, // FlushQ
        0x19 => 0x0e, // AppendQ
        0x1a => 0x0f, // PrependQ
        0x1e => 0x1d, // GATQ
        0x24 => 0x23, // GATKQ
        _ => return None,
    })
}

fn loud(op: u8) -> u8 {
    loud_of(op).unwrap_or(op)
}

/// A request header field.
struct Head {
    opcode: u8,
    keylen: usize,
    extlen: usize,
    opaque: [u8; 4],
}

fn head(p: &[u8]) -> Head {
    Head {
        opcode: p[1],
        keylen: u16::from_be_bytes([p[2], p[3]]) as usize,
        extlen: p[4] as usize,
        opaque: [p[12], p[13], p[14], p[15]],
    }
}

/// Walks `out` as response packets for `opcode`/`opaque`; returns (count, statuses).
fn check_packets(out: &[u8], opcode: u8, opaque: [u8; 4], what: &str) -> Vec<u16> {
    let mut statuses = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        assert!(
            rest.len() >= HEADER,
            "{what}: a response header cut short: {rest:02x?}"
        );
        let h = &rest[..HEADER];
        assert_eq!(h[0], 0x81, "{what}: response magic: {h:02x?}");
        assert_eq!(h[1], opcode, "{what}: the opcode is echoed: {h:02x?}");
        assert_eq!(h[5], 0, "{what}: datatype: {h:02x?}");
        assert_eq!(
            &h[12..16],
            &opaque,
            "{what}: the opaque is echoed: {h:02x?}"
        );
        let keylen = u16::from_be_bytes([h[2], h[3]]) as usize;
        let extlen = h[4] as usize;
        let status = u16::from_be_bytes([h[6], h[7]]);
        let bodylen = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
        assert!(
            keylen + extlen <= bodylen,
            "{what}: key and extras within the body: {h:02x?}"
        );
        assert!(
            rest.len() >= HEADER + bodylen,
            "{what}: a body of {bodylen} bytes has {}: {h:02x?}",
            rest.len() - HEADER
        );
        if status != 0 {
            assert_eq!(extlen, 0, "{what}: an error carries no extras: {h:02x?}");
        }
        statuses.push(status);
        rest = &rest[HEADER + bodylen..];
    }
    statuses
}

/// `encode(ctx, reply)`: whole packets; at most one but for Stat; a quiet request that is
/// not a retrieval is answered only with an error (when `ctx` is consistent).
fn check_encode(ctx: &BinaryCtx, reply: &[u8], consistent: bool) {
    let out = binary::encode(ctx, reply);
    let statuses = check_packets(&out, ctx.opcode, ctx.opaque, "encode");
    if loud(ctx.opcode) != 0x10 {
        assert!(
            statuses.len() <= 1,
            "encode: {} packets for one request",
            statuses.len()
        );
    } else {
        assert!(!statuses.is_empty(), "encode: a Stat is always answered");
    }
    let retrieval = matches!(loud(ctx.opcode), 0x00 | 0x0c | 0x1d | 0x23);
    if consistent && ctx.quiet && !retrieval {
        assert!(
            statuses.iter().all(|&s| s != 0),
            "encode: a quiet {:02x} answered a success to {:?}",
            ctx.opcode,
            String::from_utf8_lossy(reply)
        );
    }
}

/// Whether a key can only travel as base64 in a meta request and its base64 form is longer
/// than a meta key token may be (250 bytes: keys of 187 bytes or more): memroute refuses
/// those (`Invalid arguments`) where memcached serves them.
fn too_long_in_base64(key: &[u8]) -> bool {
    key.iter().any(|&b| b <= b' ' || b == 0x7f) && key.len().div_ceil(3) * 4 > MAX_KEY
}

/// One `Forward`: the context matches the packet; the frame is one request that the codec
/// and the request invariants accept.
fn check_forward(packet: &[u8], frame: &[u8], ctx: &BinaryCtx, limits: CodecLimits) {
    let h = head(packet);
    assert_eq!(ctx.opcode, h.opcode, "context opcode");
    assert_eq!(ctx.opaque, h.opaque, "context opaque");
    assert_eq!(ctx.quiet, loud_of(h.opcode).is_some(), "context quiet");
    let key = &packet[HEADER + h.extlen..HEADER + h.extlen + h.keylen];
    if matches!(loud(h.opcode), 0x0c | 0x23) {
        assert_eq!(&ctx.key[..], key, "GetK/GATK keep their key");
    }
    let mut codec = ClientCodec::new(limits);
    let mut buf = bytes::BytesMut::from(frame);
    let item = codec.decode_item(&mut buf);
    assert!(
        !codec.speaks_binary(),
        "a translation is read as the text/meta protocol: {:?}",
        String::from_utf8_lossy(frame)
    );
    match item {
        Some(Decoded::Request(r)) => {
            invariants::check_request(&r, limits);
            assert!(
                buf.is_empty(),
                "the translation {:?} is more than one request ({} bytes left)",
                String::from_utf8_lossy(frame),
                buf.len()
            );
            assert!(
                codec.decode_item(&mut buf).is_none(),
                "nothing after the request"
            );
        }
        // The codec refuses the line and leaves an `ms` data block unread: harmless, the
        // connection decodes each translation in a buffer of its own and drops it.
        Some(Decoded::Reply(line)) => assert!(
            too_long_in_base64(key),
            "the translation {:?} of a well-formed {:02x} packet is refused: {:?}",
            String::from_utf8_lossy(frame),
            h.opcode,
            String::from_utf8_lossy(line)
        ),
        other => panic!(
            "the translation {:?} decodes to {other:?}",
            String::from_utf8_lossy(frame)
        ),
    }
}

/// Feeds `stream` to `step` packet after packet, as the codec does.
fn check_steps(stream: &[u8], reply: &[u8], limits: CodecLimits) {
    let ism = limits.item_size_max;
    let bound = HEADER + ism + 8 + MAX_KEY + 64;
    let mut pos = 0;
    while pos < stream.len() {
        let buf = &stream[pos..];
        match binary::step(buf, ism) {
            Step::Need(n) => {
                assert!(n > buf.len(), "Need({n}) with {} bytes buffered", buf.len());
                assert!(n <= bound, "Need({n}) beyond one packet's bound {bound}");
                return;
            }
            Step::Forward {
                frame,
                ctx,
                consumed,
            } => {
                assert!(
                    (HEADER..=buf.len()).contains(&consumed),
                    "Forward consumed {consumed} of {}",
                    buf.len()
                );
                check_forward(&buf[..consumed], &frame, &ctx, limits);
                check_encode(&ctx, reply, true);
                pos += consumed;
            }
            Step::Answer {
                reply: answer,
                consumed,
                discard,
                ..
            } => {
                assert!(
                    (HEADER..=buf.len()).contains(&consumed),
                    "Answer consumed {consumed} of {}",
                    buf.len()
                );
                let h = head(buf);
                let statuses = check_packets(&answer, h.opcode, h.opaque, "Answer");
                assert!(
                    statuses.len() == 1 && statuses[0] != 0,
                    "Answer is one error packet"
                );
                pos += consumed + discard;
            }
            Step::Close(answer) => {
                if let Some(answer) = answer {
                    let h = head(buf);
                    let statuses = check_packets(&answer, h.opcode, h.opaque, "Close");
                    assert!(
                        statuses.len() == 1 && statuses[0] != 0,
                        "Close answers one error packet"
                    );
                }
                return;
            }
        }
    }
}

/// A made-up context from the head of `data` (opcode, quiet bit, opaque, key of up to
/// 250 bytes), and the reply bytes after it.
fn made_up_context(data: &[u8]) -> Option<(BinaryCtx, &[u8])> {
    let (&opcode, rest) = data.split_first()?;
    let (&flags, rest) = rest.split_first()?;
    if rest.len() < 5 {
        return None;
    }
    let opaque = [rest[0], rest[1], rest[2], rest[3]];
    let keylen = (rest[4] as usize % (MAX_KEY + 1)).min(rest.len() - 5);
    let key = Bytes::copy_from_slice(&rest[5..5 + keylen]);
    let ctx = BinaryCtx {
        opcode,
        opaque,
        quiet: flags & 1 == 1,
        key,
    };
    Some((ctx, &rest[5 + keylen..]))
}

/// The `binary_request` fuzz target (see the module's documentation).
pub fn fuzz_binary_request(data: &[u8]) {
    let Some((&config, rest)) = data.split_first() else {
        return;
    };
    if rest.len() < 2 {
        return;
    }
    let split = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
    let (stream, reply) = rest[2..].split_at(split);
    let item_size_max = [64, 300, 1 << 20][config as usize % 3];
    let limits = CodecLimits { item_size_max };
    let mut stream = stream.to_vec();
    if let Some(first) = stream.first_mut() {
        *first = binary::REQUEST_MAGIC;
    }
    check_steps(&stream, reply, limits);
    if !stream.is_empty() {
        let chunk = (config as usize / 3) % 64 + 1;
        invariants::check_client_input(&stream, chunk, limits);
    }
    if let Some((ctx, reply)) = made_up_context(reply) {
        check_encode(&ctx, reply, false);
    }
}
