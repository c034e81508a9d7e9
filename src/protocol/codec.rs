//! The client-side codec: turns a byte stream from a client into validated requests.
//!
//! Protocol errors are *items* ([`Decoded::Invalid`]), not `Err`s, because memcached answers
//! them and carries on; only an over-long line ends the connection ([`Decoded::Fatal`]).

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::reply;
use super::request::{Command, Request, MAX_KEY_LEN};

/// Limits the codec enforces.
#[derive(Clone, Copy, Debug)]
pub struct CodecLimits {
    /// Largest value accepted; larger ones get `SERVER_ERROR object too large for cache`.
    pub item_size_max: usize,
    /// Longest retrieval line (`get k1 k2 …`); memcached allows these to be long.
    pub max_retrieval_line: usize,
}

/// Longest non-retrieval command line; memcached closes the connection beyond this.
pub const MAX_COMMAND_LINE: usize = 2048;

impl Default for CodecLimits {
    fn default() -> Self {
        CodecLimits {
            item_size_max: 1024 * 1024,
            max_retrieval_line: 64 * 1024,
        }
    }
}

/// One item decoded from a client's stream.
#[derive(Debug)]
pub enum Decoded {
    /// A valid request.
    Request(Request),
    /// A request that gets this reply and nothing else; the stream continues.
    Invalid(&'static [u8]),
    /// Reply with this and close the connection.
    Fatal(&'static [u8]),
}

/// Decoder state kept between reads so that no byte is scanned twice.
#[derive(Debug)]
pub struct ClientCodec {
    limits: CodecLimits,
    /// How far the current line has been searched for `\n`.
    scanned: usize,
    /// A storage command whose line was parsed and whose data block is still arriving.
    pending: Option<(Request, usize)>,
    /// Bytes of a refused (too large) data block still to be thrown away.
    discard: usize,
}

impl ClientCodec {
    /// A codec with the given limits.
    pub fn new(limits: CodecLimits) -> Self {
        ClientCodec {
            limits,
            scanned: 0,
            pending: None,
            discard: 0,
        }
    }

    /// Bytes still to be discarded from a refused data block (exposed for tests).
    pub fn discarding(&self) -> usize {
        self.discard
    }

    fn line_limit(&self, buf: &[u8]) -> usize {
        let start = buf.iter().position(|b| *b != b' ').unwrap_or(buf.len());
        let head = &buf[start..];
        if head.starts_with(b"get") || head.starts_with(b"gat") {
            self.limits.max_retrieval_line
        } else {
            MAX_COMMAND_LINE
        }
    }

    /// Decodes the next item from `buf`, consuming exactly its bytes.
    pub fn decode_item(&mut self, buf: &mut BytesMut) -> Option<Decoded> {
        loop {
            if self.discard > 0 {
                let n = self.discard.min(buf.len());
                buf.advance(n);
                self.discard -= n;
                if self.discard > 0 {
                    return None;
                }
            }
            if let Some((_, total)) = &self.pending {
                let total = *total;
                if buf.len() < total {
                    buf.reserve(total - buf.len());
                    return None;
                }
                let (mut req, _) = self.pending.take().expect("checked above");
                if &buf[total - 2..total] != b"\r\n" {
                    buf.advance(total);
                    // memcached stays silent about a bad data chunk when asked for noreply.
                    let msg = if req.noreply() {
                        SILENT
                    } else {
                        reply::BAD_DATA_CHUNK
                    };
                    return Some(Decoded::Invalid(msg));
                }
                req.frame = buf.split_to(total).freeze();
                return Some(Decoded::Request(req));
            }
            let nl = match memchr::memchr(b'\n', &buf[self.scanned..]) {
                Some(i) => self.scanned + i,
                None => {
                    self.scanned = buf.len();
                    if buf.len() > self.line_limit(buf) {
                        return Some(Decoded::Fatal(reply::LINE_TOO_LONG));
                    }
                    return None;
                }
            };
            self.scanned = 0;
            let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            if line_end > self.line_limit(&buf[..line_end]) {
                buf.advance(nl + 1);
                return Some(Decoded::Fatal(reply::LINE_TOO_LONG));
            }
            match parse_line(&buf[..line_end], &self.limits) {
                Line::Done(mut req) => {
                    req.line_end = line_end as u32;
                    req.frame = buf.split_to(nl + 1).freeze();
                    return Some(Decoded::Request(req));
                }
                Line::NeedsData(mut req, len) => {
                    req.line_end = line_end as u32;
                    req.data_start = (nl + 1) as u32;
                    self.pending = Some((req, nl + 1 + len + 2));
                    // Loop: the data block may already be buffered.
                }
                Line::Invalid(msg) => {
                    buf.advance(nl + 1);
                    return Some(Decoded::Invalid(msg));
                }
                Line::TooLarge(len, msg) => {
                    buf.advance(nl + 1);
                    self.discard = len + 2;
                    return Some(Decoded::Invalid(msg));
                }
            }
        }
    }
}

impl Decoder for ClientCodec {
    type Item = Decoded;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, std::io::Error> {
        Ok(self.decode_item(buf))
    }
}

/// What a single command line turned out to be.
enum Line {
    Done(Request),
    NeedsData(Request, usize),
    Invalid(&'static [u8]),
    /// A value above the limit: its length and the reply.
    TooLarge(usize, &'static [u8]),
}

/// The "reply" to an invalid request that ends in `noreply`: nothing. memcached reads the
/// flag before it validates the arguments and then suppresses its error line (a client that
/// sent `noreply` does not read one); only a wrong token count and retrievals still answer.
pub const SILENT: &[u8] = b"";

/// Up to this many tokens are looked at; memcached's tokenizer has the same order of limit.
const MAX_TOKENS: usize = 8;

/// Splits a line on spaces into at most `MAX_TOKENS` (start, end) ranges; returns the count
/// of tokens (which may exceed `MAX_TOKENS`).
fn tokenize(line: &[u8], out: &mut [(u32, u32); MAX_TOKENS]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i] == b' ' {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        let start = i;
        while i < line.len() && line[i] != b' ' {
            i += 1;
        }
        if n < MAX_TOKENS {
            out[n] = (start as u32, i as u32);
        }
        n += 1;
    }
    n
}

fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.iter().all(|b| *b > b' ' && *b != 0x7f)
}

fn parse_u64(tok: &[u8]) -> Option<u64> {
    if tok.is_empty() || tok.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in tok {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

fn parse_i32(tok: &[u8]) -> Option<i64> {
    let (neg, digits) = match tok.first() {
        Some(b'-') => (true, &tok[1..]),
        _ => (false, tok),
    };
    let v = parse_u64(digits)? as i64;
    let v = if neg { -v } else { v };
    (i32::MIN as i64..=i32::MAX as i64)
        .contains(&v)
        .then_some(v)
}

fn blank(command: Command) -> Request {
    Request {
        command,
        frame: bytes::Bytes::new(),
        keys_start: 0,
        keys_end: 0,
        line_end: 0,
        noreply_at: None,
        zero_arg: false,
        flags: 0,
        exptime: 0,
        number: 0,
        data_start: 0,
    }
}

fn parse_line(line: &[u8], limits: &CodecLimits) -> Line {
    match parse_fields(line, limits) {
        Line::Invalid(msg) if msg != reply::ERROR && noreply_silences(line) => {
            Line::Invalid(SILENT)
        }
        Line::TooLarge(len, _) if noreply_silences(line) => Line::TooLarge(len, SILENT),
        other => other,
    }
}

/// Whether memcached would have seen `noreply` on this (invalid) line before rejecting it:
/// the last of at most `MAX_TOKENS` tokens is `noreply` and the command is no retrieval.
fn noreply_silences(line: &[u8]) -> bool {
    let mut toks = [(0u32, 0u32); MAX_TOKENS];
    let n = tokenize(line, &mut toks);
    let tok = |i: usize| &line[toks[i].0 as usize..toks[i].1 as usize];
    n > 1
        && n <= MAX_TOKENS
        && tok(n - 1) == b"noreply"
        && !matches!(tok(0), b"get" | b"gets" | b"gat" | b"gats")
}

fn parse_fields(line: &[u8], limits: &CodecLimits) -> Line {
    let mut toks = [(0u32, 0u32); MAX_TOKENS];
    let n = tokenize(line, &mut toks);
    if n == 0 {
        return Line::Invalid(reply::ERROR);
    }
    let tok = |i: usize| &line[toks[i].0 as usize..toks[i].1 as usize];
    let command = match tok(0) {
        b"get" => Command::Get,
        b"gets" => Command::Gets,
        b"gat" => Command::Gat,
        b"gats" => Command::Gats,
        b"set" => Command::Set,
        b"add" => Command::Add,
        b"replace" => Command::Replace,
        b"append" => Command::Append,
        b"prepend" => Command::Prepend,
        b"cas" => Command::Cas,
        b"delete" => Command::Delete,
        b"incr" => Command::Incr,
        b"decr" => Command::Decr,
        b"touch" => Command::Touch,
        b"flush_all" => Command::FlushAll,
        b"version" => Command::Version,
        b"stats" => Command::Stats,
        b"verbosity" => Command::Verbosity,
        b"quit" => Command::Quit,
        _ => return Line::Invalid(reply::ERROR),
    };
    let mut req = blank(command);
    // memcached treats a last token of exactly "noreply" as the flag.
    let last_is_noreply = n <= MAX_TOKENS && n > 1 && tok(n - 1) == b"noreply";
    let set_noreply = |req: &mut Request| {
        if last_is_noreply {
            // The space before the token: tokens are separated by at least one.
            let mut at = toks[n - 1].0 as usize;
            while at > 0 && line[at - 1] == b' ' {
                at -= 1;
            }
            req.noreply_at = Some(at as u32);
        }
    };
    let set_key = |req: &mut Request, i: usize| -> bool {
        req.keys_start = toks[i].0;
        req.keys_end = toks[i].1;
        valid_key(tok(i))
    };
    match command {
        Command::Get | Command::Gets | Command::Gat | Command::Gats => {
            let first = if matches!(command, Command::Gat | Command::Gats) {
                if n < 2 {
                    return Line::Invalid(reply::ERROR);
                }
                match parse_i32(tok(1)) {
                    Some(e) => req.exptime = e,
                    None => return Line::Invalid(reply::INVALID_EXPTIME),
                }
                if n == 2 {
                    // memcached answers a gat with no keys with an empty result.
                    return Line::Invalid(reply::END);
                }
                2
            } else {
                if n < 2 {
                    return Line::Invalid(reply::ERROR);
                }
                1
            };
            // Keys run from the first key token to the end of the line; every key is checked.
            let start = if first < MAX_TOKENS {
                toks[first].0 as usize
            } else {
                unreachable!()
            };
            let keys = &line[start..];
            if !keys
                .split(|b| *b == b' ')
                .filter(|k| !k.is_empty())
                .all(valid_key)
            {
                return Line::Invalid(reply::BAD_FORMAT);
            }
            req.keys_start = start as u32;
            req.keys_end = line.len() as u32;
            Line::Done(req)
        }
        Command::Set
        | Command::Add
        | Command::Replace
        | Command::Append
        | Command::Prepend
        | Command::Cas => {
            let cas = command == Command::Cas;
            let base = if cas { 6 } else { 5 };
            if n != base && n != base + 1 {
                return Line::Invalid(reply::ERROR);
            }
            if !set_key(&mut req, 1) {
                return Line::Invalid(reply::BAD_FORMAT);
            }
            let flags = parse_u64(tok(2));
            let exptime = parse_i32(tok(3));
            let len = parse_i32(tok(4));
            let unique = if cas { parse_u64(tok(5)) } else { Some(0) };
            let (Some(flags), Some(exptime), Some(len), Some(unique)) =
                (flags, exptime, len, unique)
            else {
                return Line::Invalid(reply::BAD_FORMAT);
            };
            if len < 0 {
                return Line::Invalid(reply::BAD_FORMAT);
            }
            req.flags = flags as u32;
            req.exptime = exptime;
            req.number = unique;
            if n == base + 1 {
                set_noreply(&mut req);
            }
            let len = len as usize;
            if len > limits.item_size_max {
                return Line::TooLarge(len, reply::TOO_LARGE);
            }
            Line::NeedsData(req, len)
        }
        Command::Delete => {
            // delete <key> [0] [noreply]
            if !(2..=4).contains(&n) {
                return Line::Invalid(reply::ERROR);
            }
            // memcached checks the arguments before the key.
            let ok = match n {
                2 => true,
                3 => tok(2) == b"0" || last_is_noreply,
                _ => tok(2) == b"0" && last_is_noreply,
            };
            if !ok {
                return Line::Invalid(reply::DELETE_USAGE);
            }
            if !set_key(&mut req, 1) {
                return Line::Invalid(reply::BAD_FORMAT);
            }
            // memcached looks for the flag only after the key: `delete noreply` deletes the
            // key `noreply` and answers.
            if n > 2 {
                set_noreply(&mut req);
            }
            if n == 3 && last_is_noreply && tok(1) == b"noreply" {
                // `delete noreply noreply` forwarded without its flag would still end in
                // `noreply` and the backend would not answer; `delete noreply 0` is answered.
                req.zero_arg = true;
            }
            Line::Done(req)
        }
        Command::Incr | Command::Decr | Command::Touch => {
            if n != 3 && n != 4 {
                return Line::Invalid(reply::ERROR);
            }
            if !set_key(&mut req, 1) {
                return Line::Invalid(reply::BAD_FORMAT);
            }
            if command == Command::Touch {
                match parse_i32(tok(2)) {
                    Some(e) => req.exptime = e,
                    None => return Line::Invalid(reply::INVALID_EXPTIME),
                }
            } else {
                match parse_u64(tok(2)) {
                    Some(d) => req.number = d,
                    None => return Line::Invalid(reply::INVALID_DELTA),
                }
            }
            if n == 4 {
                set_noreply(&mut req);
            }
            Line::Done(req)
        }
        Command::FlushAll => {
            if n > 3 {
                return Line::Invalid(reply::ERROR);
            }
            set_noreply(&mut req);
            // Like memcached: any line with more than `flush_all [noreply]` has its first
            // argument read as the delay; a further argument is ignored.
            if n != if last_is_noreply { 2 } else { 1 } {
                match parse_i32(tok(1)) {
                    Some(e) => req.exptime = e,
                    None => return Line::Invalid(reply::INVALID_EXPTIME),
                }
            }
            Line::Done(req)
        }
        Command::Verbosity => {
            if n != 2 && n != 3 {
                return Line::Invalid(reply::ERROR);
            }
            set_noreply(&mut req);
            // memcached requires a numeric level (and ignores a second argument).
            if parse_u64(tok(1)).is_none() {
                return Line::Invalid(reply::BAD_FORMAT);
            }
            Line::Done(req)
        }
        Command::Version | Command::Quit => Line::Done(req),
        Command::Stats => {
            // Arguments (if any) are read from the line by whoever answers it.
            if n > 1 {
                req.keys_start = toks[1].0;
                req.keys_end = line.len() as u32;
            }
            Line::Done(req)
        }
    }
}

#[cfg(test)]
mod tests;
