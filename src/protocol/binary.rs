//! memcached's binary protocol, served by translation: each request packet becomes the meta
//! (or text) request that does exactly the same (quiet opcodes loud, CAS as `C`, incr's
//! initial value and expiration as `ma … J N`, `Noop` as `mn`), which then takes the path
//! every request takes — routing, pools, the ordered reply queue — and its answer is turned
//! back into a response packet by [`encode`] when the client's slot is written. Quiet
//! opcodes are decided here, at the proxy: a success (a get's miss) is left out, an error
//! never is, so every request sent upstream gets exactly one reply.
//!
//! Packets are checked as memcached 1.6 checks them; a malformed one gets memcached's
//! answer (`Invalid arguments`, `Unknown command`, `Too large.`) and, where memcached closes
//! the connection, the connection closes. A value larger than `item_size_max` is answered
//! and its bytes discarded as they arrive, so memory stays bounded.

use bytes::{BufMut, Bytes, BytesMut};

use super::meta::base64_encode;
use super::request::KeyToken;

/// The first byte of every request packet.
pub const REQUEST_MAGIC: u8 = 0x80;
const RESPONSE_MAGIC: u8 = 0x81;
/// Header bytes of every packet.
pub const HEADER_LEN: usize = 24;
/// Longest key memcached takes.
const MAX_KEY: usize = 250;

/// Request opcodes.
#[allow(missing_docs)]
pub mod opcode {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
}

/// Response statuses (with the text memcached sends along with each error).
#[allow(missing_docs)]
pub mod status {
    pub const OK: u16 = 0x0000;
    pub const KEY_ENOENT: u16 = 0x0001;
    pub const KEY_EEXISTS: u16 = 0x0002;
    pub const E2BIG: u16 = 0x0003;
    pub const EINVAL: u16 = 0x0004;
    pub const NOT_STORED: u16 = 0x0005;
    pub const DELTA_BADVAL: u16 = 0x0006;
    pub const UNKNOWN_COMMAND: u16 = 0x0081;
    pub const ENOMEM: u16 = 0x0082;
    pub const NOT_SUPPORTED: u16 = 0x0083;
    pub const EBUSY: u16 = 0x0085;

    /// memcached's text for an error status.
    pub fn text(status: u16) -> &'static [u8] {
        match status {
            KEY_ENOENT => b"Not found",
            KEY_EEXISTS => b"Data exists for key.",
            E2BIG => b"Too large.",
            EINVAL => b"Invalid arguments",
            NOT_STORED => b"Not stored.",
            DELTA_BADVAL => b"Non-numeric server-side value for incr or decr",
            UNKNOWN_COMMAND => b"Unknown command",
            ENOMEM => b"Out of memory",
            NOT_SUPPORTED => b"Not supported",
            _ => b"",
        }
    }
}

/// A request packet's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Must be [`REQUEST_MAGIC`].
    pub magic: u8,
    /// What to do.
    pub opcode: u8,
    /// Key bytes (after the extras).
    pub keylen: u16,
    /// Extras bytes (first in the body).
    pub extlen: u8,
    /// Extras, key and value bytes.
    pub bodylen: u32,
    /// Echoed in the response.
    pub opaque: [u8; 4],
    /// Compare-and-swap value (0: none).
    pub cas: u64,
}

impl Header {
    /// Reads the first [`HEADER_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Header {
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            magic: b[0],
            opcode: b[1],
            keylen: u16::from_be_bytes([b[2], b[3]]),
            extlen: b[4],
            bodylen: u32_at(8),
            opaque: [b[12], b[13], b[14], b[15]],
            cas: (u64::from(u32_at(16)) << 32) | u64::from(u32_at(20)),
        }
    }
}

/// What a binary request's answer is turned back into a packet with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryCtx {
    /// The opcode as the client sent it (echoed).
    pub opcode: u8,
    /// The opaque (echoed).
    pub opaque: [u8; 4],
    /// A quiet opcode: a success (a retrieval's miss) is left out.
    pub quiet: bool,
    /// The key, for the opcodes whose response carries it (GetK, GatK).
    pub key: Bytes,
}

impl BinaryCtx {
    /// The opcode's loud form.
    fn loud(&self) -> u8 {
        loud(self.opcode).0
    }
}

/// The loud form of an opcode, and whether it was quiet.
fn loud(op: u8) -> (u8, bool) {
    use opcode::*;
    match op {
        GETQ => (GET, true),
        GETKQ => (GETK, true),
        SETQ => (SET, true),
        ADDQ => (ADD, true),
        REPLACEQ => (REPLACE, true),
        DELETEQ => (DELETE, true),
        INCREMENTQ => (INCREMENT, true),
        DECREMENTQ => (DECREMENT, true),
        QUITQ => (QUIT, true),
        FLUSHQ => (FLUSH, true),
        APPENDQ => (APPEND, true),
        PREPENDQ => (PREPEND, true),
        GATQ => (GAT, true),
        GATKQ => (GATK, true),
        other => (other, false),
    }
}

/// What to do with the bytes at the head of a binary connection's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing until the buffer holds this many bytes.
    Need(usize),
    /// Carry out `frame` (a meta or text request, line and data) for the packet of
    /// `consumed` bytes; its answer is encoded with `ctx`.
    Forward {
        /// The equivalent meta or text request.
        frame: BytesMut,
        /// How to answer.
        ctx: BinaryCtx,
        /// The packet's length.
        consumed: usize,
    },
    /// Answer with `reply` (a whole response packet), skip `consumed` bytes and then
    /// `discard` more as they arrive (a refused value's body).
    Answer {
        /// The response.
        reply: Bytes,
        /// Bytes of the buffer the packet took.
        consumed: usize,
        /// Body bytes still to come and be thrown away.
        discard: usize,
        /// A key whose old value goes (a refused `Set`: memcached unlinks it, so a failed
        /// write cannot leave a stale value readable).
        unlink: Option<KeyToken>,
    },
    /// Answer with `reply` (if any) and close the connection.
    Close(Option<Bytes>),
}

/// A response packet.
pub fn packet(
    op: u8,
    status: u16,
    opaque: [u8; 4],
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) -> Bytes {
    let body = extras.len() + key.len() + value.len();
    let mut out = BytesMut::with_capacity(HEADER_LEN + body);
    out.put_u8(RESPONSE_MAGIC);
    out.put_u8(op);
    out.put_u16(key.len() as u16);
    out.put_u8(extras.len() as u8);
    out.put_u8(0);
    out.put_u16(status);
    out.put_u32(body as u32);
    out.put_slice(&opaque);
    out.put_u64(cas);
    out.put_slice(extras);
    out.put_slice(key);
    out.put_slice(value);
    out.freeze()
}

/// An error response with memcached's text for `status`.
fn error(op: u8, status: u16, opaque: [u8; 4]) -> Bytes {
    packet(op, status, opaque, 0, &[], &[], status::text(status))
}

/// Decides what the packet at the head of `buf` is (see [`Step`]). `item_size_max` bounds
/// the values accepted (and so the bytes buffered for one packet).
pub fn step(buf: &[u8], item_size_max: usize) -> Step {
    use opcode::*;
    if buf.len() < HEADER_LEN {
        return Step::Need(HEADER_LEN);
    }
    let h = Header::parse(buf);
    if h.magic != REQUEST_MAGIC {
        // memcached closes without a word.
        return Step::Close(None);
    }
    let (keylen, extlen, bodylen) = (h.keylen as usize, h.extlen as usize, h.bodylen as usize);
    let err = |status| error(h.opcode, status, h.opaque);
    if keylen + extlen > bodylen {
        return Step::Close(Some(err(status::UNKNOWN_COMMAND)));
    }
    if keylen > MAX_KEY {
        return Step::Close(Some(err(status::EINVAL)));
    }
    let (op, quiet) = loud(h.opcode);
    // The header's lengths as each opcode must have them (else memcached answers
    // `Invalid arguments` and closes).
    let shape_ok = match op {
        VERSION | NOOP | QUIT => extlen == 0 && keylen == 0 && bodylen == 0,
        FLUSH => keylen == 0 && bodylen == extlen && (extlen == 0 || extlen == 4),
        SET | ADD | REPLACE => extlen == 8 && keylen != 0,
        GET | GETK => extlen == 0 && bodylen == keylen && keylen > 0,
        DELETE => keylen > 0 && extlen == 0 && bodylen == keylen,
        INCREMENT | DECREMENT => keylen > 0 && extlen == 20 && bodylen == keylen + extlen,
        APPEND | PREPEND => keylen > 0 && extlen == 0,
        // memcached reads nothing past a stats key; a body beyond it is refused here rather
        // than buffered.
        STAT => extlen == 0 && bodylen == keylen,
        TOUCH | GAT | GATK => extlen == 4 && keylen != 0 && bodylen == keylen + extlen,
        // SASL: checked as memcached checks it, then unknown (memroute has no SASL).
        SASL_LIST_MECHS if !(extlen == 0 && keylen == 0 && bodylen == 0) => false,
        SASL_AUTH | SASL_STEP if !(extlen == 0 && keylen != 0) => false,
        _ => {
            // Unknown (SASL included: memroute has no SASL): answered, the body skipped.
            let have = (buf.len() - HEADER_LEN).min(bodylen);
            return Step::Answer {
                reply: err(status::UNKNOWN_COMMAND),
                consumed: HEADER_LEN + have,
                discard: bodylen - have,
                unlink: None,
            };
        }
    };
    if !shape_ok {
        return Step::Close(Some(err(status::EINVAL)));
    }
    let value_len = bodylen - keylen - extlen;
    if matches!(op, SET | ADD | REPLACE | APPEND | PREPEND) && value_len > item_size_max {
        // memcached answers before the value arrives and swallows it.
        let head = HEADER_LEN + extlen + keylen;
        if buf.len() < head {
            return Step::Need(head);
        }
        let have = (buf.len() - head).min(value_len);
        let key = &buf[HEADER_LEN + extlen..head];
        return Step::Answer {
            reply: err(status::E2BIG),
            consumed: head + have,
            discard: value_len - have,
            unlink: (op == SET).then(|| key_token(key)),
        };
    }
    let total = HEADER_LEN + bodylen;
    if buf.len() < total {
        return Step::Need(total);
    }
    let body = &buf[HEADER_LEN..total];
    let (extras, rest) = body.split_at(extlen);
    let (key, value) = rest.split_at(keylen);
    let ctx = BinaryCtx {
        opcode: h.opcode,
        opaque: h.opaque,
        quiet,
        key: match op {
            GETK | GATK => Bytes::copy_from_slice(key),
            _ => Bytes::new(),
        },
    };
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
    let mut f = BytesMut::with_capacity(64 + key.len() * 2 + value.len());
    match op {
        VERSION => f.put_slice(b"version"),
        NOOP => f.put_slice(b"mn"),
        QUIT => f.put_slice(b"quit"),
        FLUSH => match extlen {
            4 => fmt(&mut f, format_args!("flush_all {}", be32(extras))),
            _ => f.put_slice(b"flush_all"),
        },
        STAT => {
            f.put_slice(b"stats");
            if !key.is_empty() {
                // A group name with a line break in it cannot be asked for.
                if key.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
                    return Step::Forward {
                        frame: BytesMut::from(&b"stats \x01\r\n"[..]),
                        ctx,
                        consumed: total,
                    };
                }
                f.put_u8(b' ');
                f.put_slice(key);
            }
        }
        GET | GETK | TOUCH | GAT | GATK => {
            if meta_key(&mut f, b"mg", key) {
                f.put_slice(b" b");
            }
            if op != GET && op != GETK {
                fmt(&mut f, format_args!(" T{}", exptime(be32(extras))));
            }
            if op != TOUCH {
                f.put_slice(b" v");
            }
            f.put_slice(b" f c");
        }
        SET | ADD | REPLACE | APPEND | PREPEND => {
            let base64 = meta_key(&mut f, b"ms", key);
            fmt(&mut f, format_args!(" {}", value.len()));
            if base64 {
                f.put_slice(b" b");
            }
            // With a CAS, memcached treats set, add and replace alike: compare and swap.
            let mode = match op {
                SET | ADD | REPLACE if h.cas != 0 => b'S',
                SET => b'S',
                ADD => b'E',
                REPLACE => b'R',
                APPEND => b'A',
                _ => b'P',
            };
            if extlen == 8 {
                let (flags, exp) = (be32(&extras[..4]), be32(&extras[4..]));
                fmt(&mut f, format_args!(" F{flags} T{}", exptime(exp)));
            }
            f.put_slice(&[b' ', b'M', mode]);
            f.put_slice(b" c");
            if h.cas != 0 {
                fmt(&mut f, format_args!(" C{}", h.cas));
            }
            f.put_slice(b"\r\n");
            f.put_slice(value);
        }
        DELETE => {
            if meta_key(&mut f, b"md", key) {
                f.put_slice(b" b");
            }
            if h.cas != 0 {
                fmt(&mut f, format_args!(" C{}", h.cas));
            }
        }
        INCREMENT | DECREMENT => {
            if meta_key(&mut f, b"ma", key) {
                f.put_slice(b" b");
            }
            let (delta, initial, exp) = (be64(extras), be64(&extras[8..]), be32(&extras[16..]));
            let mode = if op == INCREMENT { "I" } else { "D" };
            fmt(&mut f, format_args!(" M{mode} D{delta}"));
            // An expiration of all ones means: do not create a missing counter.
            if exp != u32::MAX {
                fmt(&mut f, format_args!(" N{} J{initial}", exptime(exp)));
            }
            if h.cas != 0 {
                fmt(&mut f, format_args!(" C{}", h.cas));
            }
            f.put_slice(b" v c");
        }
        _ => unreachable!("unknown opcodes were answered above"),
    }
    f.put_slice(b"\r\n");
    Step::Forward {
        frame: f,
        ctx,
        consumed: total,
    }
}

/// Appends formatted text to a translated request, without an intermediate `String`.
fn fmt(f: &mut BytesMut, args: std::fmt::Arguments<'_>) {
    // Writing to a BytesMut cannot fail.
    let _ = std::fmt::Write::write_fmt(f, args);
}

/// A binary expiration (unsigned: relative seconds, or a Unix time beyond 30 days) as the
/// meta protocol takes it (a signed 32-bit number): times past 2038 become 2038's last
/// second, still a Unix time far ahead.
fn exptime(e: u32) -> i64 {
    i64::from(e.min(i32::MAX as u32))
}

/// Whether a key can go on a text line as it is (else it goes base64, with `b`).
fn plain_key(key: &[u8]) -> bool {
    key.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// `<cmd> <key>`, the key in base64 when it has bytes a text line cannot carry; returns
/// whether it is (the caller adds the `b` flag among the flags).
fn meta_key(f: &mut BytesMut, cmd: &[u8], key: &[u8]) -> bool {
    f.put_slice(cmd);
    f.put_u8(b' ');
    if plain_key(key) {
        f.put_slice(key);
        return false;
    }
    let mut encoded = Vec::with_capacity(key.len() * 4 / 3 + 4);
    base64_encode(key, &mut encoded);
    f.put_slice(&encoded);
    true
}

/// The key as a meta token: plain, or base64 (for deleting a refused value's key).
pub fn key_token(key: &[u8]) -> KeyToken {
    if plain_key(key) {
        return KeyToken {
            token: Bytes::copy_from_slice(key),
            base64: false,
        };
    }
    let mut encoded = Vec::with_capacity(key.len() * 4 / 3 + 4);
    base64_encode(key, &mut encoded);
    KeyToken {
        token: encoded.into(),
        base64: true,
    }
}

/// The response packet(s) for the answer `reply` (a meta or text reply, or memroute's own
/// error line) to the request `ctx` describes; empty when the client asked not to hear it.
pub fn encode(ctx: &BinaryCtx, reply: &[u8]) -> Bytes {
    use opcode::*;
    let op = ctx.opcode;
    let ok = |cas: u64, extras: &[u8], key: &[u8], value: &[u8]| -> Bytes {
        match ctx.quiet {
            true => Bytes::new(),
            false => packet(op, status::OK, ctx.opaque, cas, extras, key, value),
        }
    };
    let fail = |status: u16| error(op, status, ctx.opaque);
    let (line, data) = split_reply(reply);
    let mut words = line.split(|&b| b == b' ');
    let head = words.next().unwrap_or_default();
    let tokens = || line.split(|&b| b == b' ').skip(1);
    let num = |flag: u8| -> u64 {
        tokens()
            .find(|t| t.first() == Some(&flag))
            .and_then(|t| std::str::from_utf8(&t[1..]).ok()?.parse().ok())
            .unwrap_or(0)
    };
    if let Some(status) = error_status(line) {
        return match (ctx.loud(), status) {
            // A stats group memroute does not have.
            (STAT, _) => fail(status::KEY_ENOENT),
            (_, s) if s == status::EBUSY || s == status::NOT_SUPPORTED => {
                // memroute's own failures (a backend down, timed out, …) carry their text.
                let text = line
                    .split(|&b| b == b' ')
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join(&b' ');
                packet(op, s, ctx.opaque, 0, &[], &[], &text)
            }
            (_, s) => fail(s),
        };
    }
    match ctx.loud() {
        GET | GETK | GAT | GATK | TOUCH => match head {
            b"VA" | b"HD" => {
                let flags = (num(b'f') as u32).to_be_bytes();
                let key: &[u8] = if matches!(ctx.loud(), GETK | GATK) {
                    &ctx.key
                } else {
                    &[]
                };
                // A quiet get's hit is answered all the same.
                packet(op, status::OK, ctx.opaque, num(b'c'), &flags, key, data)
            }
            b"EN" if ctx.quiet => Bytes::new(),
            b"EN" if matches!(ctx.loud(), GETK | GATK) => {
                packet(op, status::KEY_ENOENT, ctx.opaque, 0, &[], &ctx.key, &[])
            }
            b"EN" => fail(status::KEY_ENOENT),
            _ => fail(status::EINVAL),
        },
        SET | ADD | REPLACE | APPEND | PREPEND => match head {
            b"HD" => ok(num(b'c'), &[], &[], &[]),
            b"EX" => fail(status::KEY_EEXISTS),
            b"NF" => fail(status::KEY_ENOENT),
            // Not stored: add finds the key, replace does not, append/prepend refuse.
            b"NS" => fail(match ctx.loud() {
                ADD => status::KEY_EEXISTS,
                REPLACE => status::KEY_ENOENT,
                _ => status::NOT_STORED,
            }),
            _ => fail(status::EINVAL),
        },
        DELETE => match head {
            b"HD" => ok(0, &[], &[], &[]),
            b"NF" => fail(status::KEY_ENOENT),
            b"EX" => fail(status::KEY_EEXISTS),
            _ => fail(status::EINVAL),
        },
        INCREMENT | DECREMENT => match head {
            b"VA" => {
                let value = std::str::from_utf8(data)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                ok(num(b'c'), &[], &[], &value.to_be_bytes())
            }
            b"NF" => fail(status::KEY_ENOENT),
            b"EX" => fail(status::KEY_EEXISTS),
            b"NS" => fail(status::NOT_STORED),
            _ => fail(status::EINVAL),
        },
        NOOP => packet(op, status::OK, ctx.opaque, 0, &[], &[], &[]),
        QUIT => ok(0, &[], &[], &[]),
        FLUSH => ok(0, &[], &[], &[]),
        VERSION => {
            let version = line.strip_prefix(b"VERSION ").unwrap_or(line);
            packet(op, status::OK, ctx.opaque, 0, &[], &[], version)
        }
        STAT => stats(ctx, reply),
        _ => fail(status::UNKNOWN_COMMAND),
    }
}

/// The first line of `reply` (without its `\r\n`) and the data block after it, if any.
fn split_reply(reply: &[u8]) -> (&[u8], &[u8]) {
    let Some(nl) = memchr::memchr(b'\n', reply) else {
        return (reply, &[]);
    };
    let line = reply[..nl].strip_suffix(b"\r").unwrap_or(&reply[..nl]);
    let rest = &reply[nl + 1..];
    (line, rest.strip_suffix(b"\r\n").unwrap_or(rest))
}

/// The status for an error line, if `line` is one.
fn error_status(line: &[u8]) -> Option<u16> {
    if line == b"ERROR" || line.starts_with(b"ERROR ") {
        return Some(status::UNKNOWN_COMMAND);
    }
    if let Some(msg) = line.strip_prefix(b"CLIENT_ERROR ") {
        if msg.starts_with(b"cannot increment or decrement non-numeric value") {
            return Some(status::DELTA_BADVAL);
        }
        return Some(status::EINVAL);
    }
    let msg = line.strip_prefix(b"SERVER_ERROR ")?;
    Some(if msg.starts_with(b"out of memory") {
        status::ENOMEM
    } else if msg.starts_with(b"object too large") {
        status::E2BIG
    } else if memchr::memmem::find(msg, b"not supported").is_some() {
        status::NOT_SUPPORTED
    } else {
        // A backend down, timed out or broken: the client may retry.
        status::EBUSY
    })
}

/// `STAT name value` lines as one packet each, then the empty packet that ends them.
fn stats(ctx: &BinaryCtx, reply: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    for line in reply.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(rest) = line.strip_prefix(b"STAT ") else {
            continue;
        };
        let (name, value) = match memchr::memchr(b' ', rest) {
            Some(sp) => (&rest[..sp], &rest[sp + 1..]),
            None => (rest, &b""[..]),
        };
        out.put(packet(
            ctx.opcode,
            status::OK,
            ctx.opaque,
            0,
            &[],
            name,
            value,
        ));
    }
    out.put(packet(ctx.opcode, status::OK, ctx.opaque, 0, &[], &[], &[]));
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(op: u8, key: &[u8], extras: &[u8], value: &[u8], cas: u64) -> Vec<u8> {
        let mut p = vec![REQUEST_MAGIC, op];
        p.extend((key.len() as u16).to_be_bytes());
        p.push(extras.len() as u8);
        p.extend([0, 0, 0]);
        p.extend(((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
        p.extend([1, 2, 3, 4]);
        p.extend(cas.to_be_bytes());
        p.extend(extras);
        p.extend(key);
        p.extend(value);
        p
    }

    fn forwarded(p: &[u8]) -> (String, BinaryCtx) {
        match step(p, 1024) {
            Step::Forward {
                frame,
                ctx,
                consumed,
            } => {
                assert_eq!(consumed, p.len());
                (String::from_utf8_lossy(&frame).into_owned(), ctx)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_become_their_meta_equivalents() {
        let set_extras = [0, 0, 0, 5, 0, 0, 0, 60];
        let (f, ctx) = forwarded(&request(opcode::SETQ, b"k", &set_extras, b"abc", 9));
        assert_eq!(f, "ms k 3 F5 T60 MS c C9\r\nabc\r\n");
        assert!(ctx.quiet);
        let (f, _) = forwarded(&request(opcode::GETK, b"a b", &[], &[], 0));
        assert_eq!(f, "mg YSBi b v f c\r\n");
        let (f, _) = forwarded(&request(opcode::ADD, b"a b", &[0; 8], b"v", 3));
        assert_eq!(
            f, "ms YSBi 1 b F0 T0 MS c C3\r\nv\r\n",
            "a CAS makes any set a CAS"
        );
        let far = [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        let (f, _) = forwarded(&request(opcode::SET, b"k", &far, b"v", 0));
        assert_eq!(f, "ms k 1 F0 T2147483647 MS c\r\nv\r\n");
        let mut incr = vec![0; 20];
        incr[7] = 2;
        incr[15] = 10;
        incr[16..].copy_from_slice(&u32::MAX.to_be_bytes());
        let (f, _) = forwarded(&request(opcode::INCREMENT, b"n", &incr, &[], 0));
        assert_eq!(f, "ma n MI D2 v c\r\n");
        incr[16..].copy_from_slice(&0u32.to_be_bytes());
        let (f, _) = forwarded(&request(opcode::DECREMENT, b"n", &incr, &[], 0));
        assert_eq!(f, "ma n MD D2 N0 J10 v c\r\n");
        let (f, _) = forwarded(&request(opcode::NOOP, b"", &[], &[], 0));
        assert_eq!(f, "mn\r\n");
    }

    #[test]
    fn malformed_and_oversized_packets_get_memcacheds_answers() {
        let p = request(opcode::GET, b"", &[], &[], 0);
        assert!(matches!(step(&p, 1024), Step::Close(Some(_))));
        let mut bad_magic = request(opcode::GET, b"k", &[], &[], 0);
        bad_magic[0] = 0x81;
        assert_eq!(step(&bad_magic, 1024), Step::Close(None));
        let big = request(opcode::SET, b"k", &[0; 8], &[7; 2000], 0);
        match step(&big[..100], 1024) {
            Step::Answer {
                reply,
                consumed,
                discard,
                unlink,
            } => {
                assert_eq!(unlink.map(|k| k.token), Some(Bytes::from_static(b"k")));
                assert_eq!(&reply[24..], b"Too large.");
                assert_eq!((consumed, discard), (100, 2000 - (100 - 24 - 8 - 1)));
            }
            other => panic!("{other:?}"),
        }
        let unknown = request(0x55, b"", &[], b"xyz", 0);
        match step(&unknown, 1024) {
            Step::Answer {
                reply, consumed, ..
            } => {
                assert_eq!(reply[7], 0x81);
                assert_eq!(consumed, unknown.len());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(step(&p[..10], 1024), Step::Need(HEADER_LEN));
    }

    #[test]
    fn replies_become_response_packets_and_quiet_successes_vanish() {
        let ctx = |op: u8, quiet: bool| BinaryCtx {
            opcode: op,
            opaque: [9, 9, 9, 9],
            quiet,
            key: Bytes::from_static(b"kk"),
        };
        let hit = encode(&ctx(opcode::GETK, false), b"VA 2 f7 c42\r\nhi\r\n");
        assert_eq!(hit[0], RESPONSE_MAGIC);
        assert_eq!(&hit[24..28], &7u32.to_be_bytes());
        assert_eq!(&hit[28..], b"kkhi");
        assert_eq!(u64::from_be_bytes(hit[16..24].try_into().unwrap()), 42);
        assert!(encode(&ctx(opcode::GETQ, true), b"EN\r\n").is_empty());
        assert!(encode(&ctx(opcode::SETQ, true), b"HD c5\r\n").is_empty());
        let exists = encode(&ctx(opcode::SETQ, true), b"EX\r\n");
        assert_eq!(&exists[24..], b"Data exists for key.");
        let miss = encode(&ctx(opcode::GETK, false), b"EN\r\n");
        assert_eq!((miss[7], &miss[24..]), (1, &b"kk"[..]));
        let busy = encode(
            &ctx(opcode::GET, false),
            b"SERVER_ERROR backend timeout\r\n",
        );
        assert_eq!((busy[6], busy[7]), (0, 0x85));
        let st = encode(
            &ctx(opcode::STAT, false),
            b"STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n",
        );
        assert_eq!(st.len(), 3 * 24 + 4 + 6 + 1);
    }
}
