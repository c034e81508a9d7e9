//! The client-side codec: turns a byte stream from a client into validated requests, reading
//! every line exactly as memcached 1.6 does (its tokenizer, its number parsing, its limits), so
//! that whatever memroute forwards means the same to the backend and whatever it refuses gets
//! memcached's own answer.
//!
//! Protocol errors are *items* ([`Decoded::Reply`]), not `Err`s, because memcached answers them
//! and carries on. Multi-key retrievals with more keys than the client may have in flight, and
//! `get` lines still arriving beyond memcached's 2 KiB line limit, are handed out in batches of
//! keys ([`Decoded::Stream`]) as they arrive, so a line of any length is served in bounded
//! memory.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::binary::{self, BinaryCtx};
use super::meta::{self, errors, MetaFlags, MAX_META_TOKENS, MAX_OPAQUE_LEN};
use super::numbers::{safe_strtol, safe_strtoul, safe_strtoull};
use super::reply;
use super::request::{Command, KeyToken, MetaBits, Request, MAX_KEY_LEN};

/// Limits the codec enforces.
#[derive(Clone, Copy, Debug)]
pub struct CodecLimits {
    /// Largest value accepted; larger ones get `SERVER_ERROR object too large for cache`.
    pub item_size_max: usize,
}

/// A line still without its `\n` beyond this many bytes is closed by memcached, unless it is a
/// `get`/`gets` (whose lines are unbounded).
pub const MAX_COMMAND_LINE: usize = 2048;

/// memcached keeps at most this many tokens of a line (the rest is read later, for `get`).
const MAX_TOKENS: usize = 24;

impl Default for CodecLimits {
    fn default() -> Self {
        CodecLimits {
            item_size_max: 1024 * 1024,
        }
    }
}

/// One item decoded from a client's stream.
#[derive(Debug)]
pub enum Decoded {
    /// A valid request.
    Request(Request),
    /// A request answered with this line (empty: nothing, as memcached stays silent about
    /// errors on `noreply` lines); the stream continues.
    Reply(&'static [u8]),
    /// A write refused with its data block discarded (as it arrived): a value above
    /// `item_size_max`, or an `ms` whose flags memcached refuses. Answered with `reply`
    /// (empty when `noreply`). For a value too large to `set` (or `ms`), memcached also
    /// removes the key's old value so that a failed write cannot leave a stale one readable:
    /// `unlink` is that key.
    Skipped {
        /// The answer.
        reply: &'static [u8],
        /// The key whose old value must be deleted.
        unlink: Option<KeyToken>,
    },
    /// Close the connection without a reply, as memcached does with an over-long line or a
    /// line that looks like an HTTP request.
    Close,
    /// A binary-protocol packet memroute answers itself with `reply` (a response packet, or
    /// nothing); `close`: the connection then ends (memcached closes after a malformed
    /// packet).
    Packet {
        /// The response.
        reply: Option<Bytes>,
        /// Close after it.
        close: bool,
        /// The key whose old value must be deleted (a refused `Set`, as for text).
        unlink: Option<KeyToken>,
    },
    /// Part of a retrieval handed out in batches of keys.
    Stream(Stream),
}

/// The parts of a retrieval handed out in batches: one `Start`, any number of `Keys`, then
/// `End` (or `Failed`, after which the rest of the line is skipped).
#[derive(Debug)]
pub enum Stream {
    /// A retrieval begins; `prefix` is its line up to the first key (`get `, `gat 10 `, …).
    Start {
        /// `get`, `gets`, `gat` or `gats`.
        command: Command,
        /// `gat`/`gats`: the expiration time.
        exptime: i64,
        /// The command text before the keys, as the client wrote it.
        prefix: Bytes,
    },
    /// The next keys, in the client's order.
    Keys(Vec<Bytes>),
    /// The line ended.
    End,
    /// A key was too long: memcached answers this to the whole line.
    Failed(&'static [u8]),
}

/// The "reply" to an invalid request that memcached answers with silence (it saw `noreply`
/// before it found the error).
pub const SILENT: &[u8] = b"";

/// Where the decoder is in the stream.
#[derive(Debug)]
enum State {
    /// Nothing read yet: the first byte decides between text and binary.
    New,
    /// At the start of a command line.
    Line,
    /// A storage command's data block is arriving; `total` is line + data + `\r\n`.
    Data { req: Request, total: usize },
    /// Bytes of a refused (too large) data block still to be thrown away; memcached answers
    /// once it has swallowed them all.
    Discard {
        left: usize,
        reply: &'static [u8],
        unlink: Option<KeyToken>,
    },
    /// Keys of a retrieval are being handed out in batches.
    Keys,
    /// A streamed retrieval's line ended with its last batch: `End` comes next.
    EndPending,
    /// The rest of a retrieval line is skipped (after a NUL byte or a failure); `end` says
    /// whether the retrieval is answered normally when the line ends.
    SkipLine { end: bool },
    /// The connection speaks the binary protocol (its first byte was 0x80).
    Binary,
    /// A refused binary value's bytes still to be thrown away.
    BinaryDiscard { left: usize },
    /// Everything after a binary header is ignored (the connection is closing).
    Closed,
}

/// Decoder state kept between reads so that no byte is scanned twice.
#[derive(Debug)]
pub struct ClientCodec {
    limits: CodecLimits,
    state: State,
    /// How far the current line has been searched for `\n`.
    scanned: usize,
    /// Most keys handed out per retrieval: more become a stream of batches this large.
    batch_keys: usize,
    /// Whether the retrieval being streamed has handed out a key yet (one without any is
    /// memcached's `get` with no key: `ERROR`).
    streamed_keys: bool,
    /// The binary request the last item decoded stands for.
    binary: Option<BinaryCtx>,
    /// The connection speaks the binary protocol.
    speaks_binary: bool,
}

impl ClientCodec {
    /// A codec with the given limits.
    pub fn new(limits: CodecLimits) -> Self {
        ClientCodec {
            limits,
            state: State::New,
            scanned: 0,
            batch_keys: usize::MAX,
            streamed_keys: false,
            binary: None,
            speaks_binary: false,
        }
    }

    /// Whether the connection speaks the binary protocol (decided by its first byte).
    pub fn speaks_binary(&self) -> bool {
        self.speaks_binary
    }

    /// The binary request the item [`ClientCodec::decode_item`] last returned stands for
    /// (its answer becomes a response packet); none for text and meta requests.
    pub fn take_binary(&mut self) -> Option<BinaryCtx> {
        self.binary.take()
    }

    /// Decodes the text or meta request a binary packet was translated into.
    fn decode_translated(&self, mut frame: BytesMut) -> Decoded {
        let mut text = ClientCodec::new(self.limits);
        text.state = State::Line;
        match text.decode_item(&mut frame) {
            Some(item) => item,
            // A translation is always one whole request.
            None => Decoded::Reply(reply::ERROR),
        }
    }

    /// Sets the most keys one decoded retrieval (or one batch of a streamed one) may carry;
    /// the client derives it from the reply memory it may still commit.
    pub fn set_batch_keys(&mut self, n: usize) {
        self.batch_keys = n.max(1);
    }

    /// Bytes still to be discarded from a refused data block (exposed for tests).
    pub fn discarding(&self) -> usize {
        match self.state {
            State::Discard { left, .. } => left,
            _ => 0,
        }
    }

    /// Whether an item is ready without more input (a streamed retrieval whose line ended
    /// in the last batch still owes its end).
    pub fn has_pending(&self) -> bool {
        matches!(self.state, State::EndPending)
    }

    /// Whether a retrieval's keys are being handed out in batches (its line is unfinished).
    pub fn streaming(&self) -> bool {
        matches!(
            self.state,
            State::Keys | State::EndPending | State::SkipLine { .. }
        )
    }

    /// Decodes the next item from `buf`, consuming exactly its bytes.
    pub fn decode_item(&mut self, buf: &mut BytesMut) -> Option<Decoded> {
        loop {
            match &mut self.state {
                State::New => {
                    let first = *buf.first()?;
                    self.speaks_binary = first == binary::REQUEST_MAGIC;
                    self.state = match self.speaks_binary {
                        true => State::Binary,
                        false => State::Line,
                    };
                }
                State::Binary => {
                    self.binary = None;
                    match binary::step(buf, self.limits.item_size_max) {
                        binary::Step::Need(n) => {
                            buf.reserve(n.saturating_sub(buf.len()));
                            return None;
                        }
                        binary::Step::Forward {
                            frame,
                            ctx,
                            consumed,
                        } => {
                            buf.advance(consumed);
                            self.binary = Some(ctx);
                            return Some(self.decode_translated(frame));
                        }
                        binary::Step::Answer {
                            reply,
                            consumed,
                            discard,
                            unlink,
                        } => {
                            buf.advance(consumed);
                            if discard > 0 {
                                self.state = State::BinaryDiscard { left: discard };
                            }
                            return Some(Decoded::Packet {
                                reply: Some(reply),
                                close: false,
                                unlink,
                            });
                        }
                        binary::Step::Close(reply) => {
                            buf.clear();
                            self.state = State::Closed;
                            return Some(Decoded::Packet {
                                reply,
                                close: true,
                                unlink: None,
                            });
                        }
                    }
                }
                State::BinaryDiscard { left } => {
                    let n = (*left).min(buf.len());
                    buf.advance(n);
                    *left -= n;
                    if *left > 0 {
                        return None;
                    }
                    self.state = State::Binary;
                }
                State::Closed => {
                    buf.clear();
                    return None;
                }
                State::Discard { left, .. } => {
                    let n = (*left).min(buf.len());
                    buf.advance(n);
                    *left -= n;
                    if *left > 0 {
                        return None;
                    }
                    let State::Discard { reply, unlink, .. } =
                        std::mem::replace(&mut self.state, State::Line)
                    else {
                        unreachable!("matched above")
                    };
                    return Some(Decoded::Skipped { reply, unlink });
                }
                State::Data { total, .. } => {
                    let total = *total;
                    if buf.len() < total {
                        buf.reserve(total - buf.len());
                        return None;
                    }
                    let State::Data { mut req, .. } =
                        std::mem::replace(&mut self.state, State::Line)
                    else {
                        unreachable!("matched above")
                    };
                    if &buf[total - 2..total] != b"\r\n" {
                        buf.advance(total);
                        // memcached stays silent about a bad data chunk when asked for noreply.
                        let msg = if req.noreply() {
                            SILENT
                        } else {
                            reply::BAD_DATA_CHUNK
                        };
                        return Some(Decoded::Reply(msg));
                    }
                    req.frame = buf.split_to(total).freeze();
                    return Some(Decoded::Request(req));
                }
                State::Keys => return self.next_keys(buf),
                State::EndPending => {
                    self.state = State::Line;
                    return Some(Decoded::Stream(self.stream_end()));
                }
                State::SkipLine { end } => {
                    let end = *end;
                    match memchr::memchr(b'\n', buf) {
                        None => {
                            buf.clear();
                            return None;
                        }
                        Some(nl) => {
                            buf.advance(nl + 1);
                            self.state = State::Line;
                            if end {
                                return Some(Decoded::Stream(self.stream_end()));
                            }
                        }
                    }
                }
                State::Line => return self.next_line(buf),
            }
        }
    }

    /// The end of a streamed retrieval's line: `ERROR` if it held no key at all.
    fn stream_end(&self) -> Stream {
        match self.streamed_keys {
            true => Stream::End,
            false => Stream::Failed(reply::ERROR),
        }
    }

    /// Decodes a command line (and, for storage commands, goes on to its data block).
    fn next_line(&mut self, buf: &mut BytesMut) -> Option<Decoded> {
        let nl = match memchr::memchr(b'\n', &buf[self.scanned..]) {
            Some(i) => self.scanned + i,
            None => {
                self.scanned = buf.len();
                if buf.len() <= MAX_COMMAND_LINE {
                    return None;
                }
                self.scanned = 0;
                // memcached lets only `get`/`gets` lines grow without bound; the keys that
                // have arrived are handed out now instead of buffering the line.
                return match unbounded_retrieval(buf) {
                    Some((command, keys_at)) => {
                        let prefix = buf.split_to(keys_at).freeze();
                        self.state = State::Keys;
                        self.streamed_keys = false;
                        Some(Decoded::Stream(Stream::Start {
                            command,
                            exptime: 0,
                            prefix,
                        }))
                    }
                    None => {
                        buf.clear();
                        self.state = State::Closed;
                        Some(Decoded::Close)
                    }
                };
            }
        };
        self.scanned = 0;
        // memcached strips a `\r` before the `\n` unless it is the line's only byte.
        let line_end = if nl > 1 && buf[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        match parse_line(&buf[..line_end], &self.limits) {
            Line::Done(mut req) => {
                if req.command.is_retrieval() && req.nkeys as usize > self.batch_keys {
                    // Too many keys for one go: hand them out in batches.
                    let prefix = buf.split_to(req.keys_start as usize).freeze();
                    self.state = State::Keys;
                    self.streamed_keys = false;
                    return Some(Decoded::Stream(Stream::Start {
                        command: req.command,
                        exptime: req.exptime,
                        prefix,
                    }));
                }
                req.line_end = line_end as u32;
                req.frame = buf.split_to(nl + 1).freeze();
                Some(Decoded::Request(req))
            }
            Line::NeedsData(mut req, len) => {
                req.line_end = line_end as u32;
                req.data_start = (nl + 1) as u32;
                self.state = State::Data {
                    req,
                    total: nl + 1 + len + 2,
                };
                // The data block may already be buffered.
                self.decode_item(buf)
            }
            Line::Reply(msg) => {
                buf.advance(nl + 1);
                Some(Decoded::Reply(msg))
            }
            Line::Skip { len, reply, unlink } => {
                let unlink = unlink.map(|(a, b, base64)| KeyToken {
                    token: Bytes::copy_from_slice(&buf[a..b]),
                    base64,
                });
                buf.advance(nl + 1);
                self.state = State::Discard {
                    left: len + 2,
                    reply,
                    unlink,
                };
                self.decode_item(buf)
            }
            Line::Close => {
                buf.clear();
                self.state = State::Closed;
                Some(Decoded::Close)
            }
        }
    }

    /// Hands out the next batch of a streamed retrieval's keys (up to `batch_keys`), or its
    /// end. A partial key at the end of `buf` waits for more bytes.
    fn next_keys(&mut self, buf: &mut BytesMut) -> Option<Decoded> {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        let mut pos = 0;
        // What follows this batch, when the line (or its readable part) ended in it.
        let mut next = State::Keys;
        while ranges.len() < self.batch_keys {
            while pos < buf.len() && buf[pos] == b' ' {
                pos += 1;
            }
            let Some(i) = memchr::memchr3(b' ', b'\n', 0, &buf[pos..]).map(|i| pos + i) else {
                // A key still arriving can only become valid while it fits (with a `\r`).
                if buf.len() - pos > MAX_KEY_LEN + 1 {
                    buf.clear();
                    self.state = State::SkipLine { end: false };
                    return Some(Decoded::Stream(Stream::Failed(reply::BAD_FORMAT)));
                }
                break;
            };
            let end = match buf[i] {
                // memcached strips a `\r` before the line's `\n`.
                b'\n' if i > pos && buf[i - 1] == b'\r' => i - 1,
                _ => i,
            };
            if end - pos > MAX_KEY_LEN {
                let ended = buf[i] == b'\n';
                buf.advance(i + 1);
                self.state = match ended {
                    true => State::Line,
                    false => State::SkipLine { end: false },
                };
                return Some(Decoded::Stream(Stream::Failed(reply::BAD_FORMAT)));
            }
            if end > pos {
                ranges.push((pos, end));
            }
            pos = i + 1;
            match buf[i] {
                b' ' => {}
                b'\n' => {
                    next = State::EndPending;
                    break;
                }
                // memcached reads a line only up to a NUL byte.
                _ => {
                    next = State::SkipLine { end: true };
                    break;
                }
            }
        }
        let taken = buf.split_to(pos).freeze();
        self.state = next;
        if ranges.is_empty() {
            return match self.state {
                State::Keys => None,
                _ => self.decode_item(buf),
            };
        }
        self.streamed_keys = true;
        let keys = ranges.into_iter().map(|(a, b)| taken.slice(a..b)).collect();
        Some(Decoded::Stream(Stream::Keys(keys)))
    }
}

impl Decoder for ClientCodec {
    type Item = Decoded;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, std::io::Error> {
        Ok(self.decode_item(buf))
    }
}

/// For a line over memcached's limit: whether it is a `get`/`gets`, which memcached lets
/// grow (it allows up to 100 leading spaces), and where its keys start.
fn unbounded_retrieval(buf: &[u8]) -> Option<(Command, usize)> {
    let spaces = buf.iter().take_while(|b| **b == b' ').count();
    if spaces > 100 {
        return None;
    }
    let rest = &buf[spaces..];
    let (command, word) = if rest.starts_with(b"get ") {
        (Command::Get, 4)
    } else if rest.starts_with(b"gets ") {
        (Command::Gets, 5)
    } else {
        return None;
    };
    Some((command, spaces + word))
}

/// What a single command line turned out to be.
enum Line {
    Done(Request),
    NeedsData(Request, usize),
    Reply(&'static [u8]),
    /// A data block to discard: its length, the reply, and the key to unlink (its range,
    /// and whether it is base64).
    Skip {
        len: usize,
        reply: &'static [u8],
        unlink: Option<(usize, usize, bool)>,
    },
    Close,
}

/// A line split the way memcached's tokenizer splits it: on single spaces, keeping at most
/// `MAX_TOKENS - 1` tokens.
struct Tokens<'a> {
    line: &'a [u8],
    ranges: [(u32, u32); MAX_TOKENS - 1],
    count: usize,
}

impl<'a> Tokens<'a> {
    fn new(line: &'a [u8]) -> Tokens<'a> {
        let mut t = Tokens {
            line,
            ranges: [(0, 0); MAX_TOKENS - 1],
            count: 0,
        };
        let mut i = 0;
        while i < line.len() && t.count < MAX_TOKENS - 1 {
            while i < line.len() && line[i] == b' ' {
                i += 1;
            }
            if i == line.len() {
                break;
            }
            let start = i;
            i += memchr::memchr(b' ', &line[i..]).unwrap_or(line.len() - i);
            t.ranges[t.count] = (start as u32, i as u32);
            t.count += 1;
        }
        t
    }

    /// memcached's `ntokens`: the tokens plus its terminal one.
    fn n(&self) -> usize {
        self.count + 1
    }

    /// Token `i`, or nothing for the terminal token.
    fn get(&self, i: usize) -> &'a [u8] {
        match self.ranges.get(i) {
            Some(&(a, b)) if i < self.count => &self.line[a as usize..b as usize],
            _ => b"",
        }
    }

    fn start(&self, i: usize) -> usize {
        self.ranges[i].0 as usize
    }

    /// memcached's `set_noreply_maybe`: the last token is `noreply`.
    fn noreply(&self) -> bool {
        self.get(self.n() - 2) == b"noreply"
    }

    /// The offset where a trailing `noreply` token and the spaces before it begin.
    fn noreply_at(&self) -> u32 {
        let mut at = self.start(self.count - 1);
        while at > 0 && self.line[at - 1] == b' ' {
            at -= 1;
        }
        // A token ending in `\r` must not come to stand before the line's `\n`, where it
        // would be read as part of the line ending: one space stays after it.
        if at > 0 && self.line[at - 1] == b'\r' {
            at += 1;
        }
        at as u32
    }
}

fn blank(command: Command) -> Request {
    Request {
        command,
        frame: Bytes::new(),
        keys_start: 0,
        keys_end: 0,
        nkeys: 0,
        line_end: 0,
        noreply_at: None,
        zero_arg: false,
        flags: 0,
        exptime: 0,
        number: 0,
        data_start: 0,
        meta: MetaBits::default(),
    }
}

/// Parses one command line (without its line ending) as memcached 1.6 does, in its order of
/// checks, so that each malformed line gets memcached's exact answer.
fn parse_line(full: &[u8], limits: &CodecLimits) -> Line {
    // memcached reads the line as a C string: a NUL byte ends it.
    let line = match memchr::memchr(0, full) {
        Some(i) => &full[..i],
        None => full,
    };
    let t = Tokens::new(line);
    let n = t.n();
    let word = t.get(0);
    if n < 2 || word.len() < 2 {
        return Line::Reply(reply::ERROR);
    }
    let error = Line::Reply(reply::ERROR);
    match word[0] {
        b'm' if word.len() == 2 => meta_line(word[1], &t, limits),
        b'g' => match word {
            _ if n < 3 => error,
            b"get" => retrieval(Command::Get, &t, 1),
            b"gets" => retrieval(Command::Gets, &t, 1),
            b"gat" => retrieval(Command::Gat, &t, 2),
            b"gats" => retrieval(Command::Gats, &t, 2),
            _ => error,
        },
        b's' => match word {
            b"set" => storage(Command::Set, &t, limits),
            b"stats" => {
                let mut req = blank(Command::Stats);
                if n > 2 {
                    req.keys_start = t.start(1) as u32;
                    req.keys_end = line.len() as u32;
                }
                Line::Done(req)
            }
            b"shutdown" => Line::Reply(reply::SHUTDOWN_DISABLED),
            _ => error,
        },
        b'a' => match word {
            b"add" => storage(Command::Add, &t, limits),
            b"append" => storage(Command::Append, &t, limits),
            _ => error,
        },
        b'c' => match word {
            b"cas" => storage(Command::Cas, &t, limits),
            b"cache_memlimit" => cache_memlimit(&t),
            _ => error,
        },
        b'i' => match word {
            b"incr" => arithmetic(Command::Incr, &t),
            _ => error,
        },
        b'd' => match word {
            b"delete" => delete(&t),
            b"decr" => arithmetic(Command::Decr, &t),
            _ => error,
        },
        b't' => match word {
            b"touch" => touch(&t),
            _ => error,
        },
        _ => match word {
            b"replace" => storage(Command::Replace, &t, limits),
            b"prepend" => storage(Command::Prepend, &t, limits),
            // An ancient alias of get that memcached still accepts.
            b"bget" if n >= 3 => retrieval(Command::Get, &t, 1),
            b"bget" => error,
            b"flush_all" => flush_all(&t),
            b"version" => Line::Done(blank(Command::Version)),
            b"quit" => Line::Done(blank(Command::Quit)),
            b"verbosity" => verbosity(&t),
            // A browser (or an attacker using one) talking to the port: memcached hangs up.
            _ if t.get(n - 2).starts_with(b"HTTP/") => Line::Close,
            _ => error,
        },
    }
}

/// `get`/`gets`/`gat`/`gats <exptime>` and their keys (from token `first`); every key of the
/// line is checked, as memcached answers the whole line with an error for one bad key.
fn retrieval(command: Command, t: &Tokens<'_>, first: usize) -> Line {
    let mut req = blank(command);
    if first == 2 {
        match safe_strtol(t.get(1)) {
            Some(e) => req.exptime = e as i64,
            None => return Line::Reply(reply::INVALID_EXPTIME),
        }
        if t.n() == 3 {
            // No keys: memcached answers an empty result.
            return Line::Reply(reply::END);
        }
    }
    let start = t.start(first);
    let mut nkeys = 0u32;
    for key in t.line[start..]
        .split(|b| *b == b' ')
        .filter(|k| !k.is_empty())
    {
        if key.len() > MAX_KEY_LEN {
            return Line::Reply(reply::BAD_FORMAT);
        }
        nkeys += 1;
    }
    req.keys_start = start as u32;
    req.keys_end = t.line.len() as u32;
    req.nkeys = nkeys;
    Line::Done(req)
}

/// A meta command's line (`mg`, `ms`, `md`, `ma`, `me`, `mn`), checked in memcached's order.
/// What is refused here never goes upstream (a backend would refuse it alike); what passes is
/// well-formed enough to route and frame, with memcached answering any finer error itself.
fn meta_line(command: u8, t: &Tokens<'_>, limits: &CodecLimits) -> Line {
    let n = t.n();
    let key = t.get(1);
    let command = match command {
        b'g' => Command::MetaGet,
        b's' => Command::MetaSet,
        b'd' => Command::MetaDelete,
        b'a' => Command::MetaArithmetic,
        b'n' => return Line::Done(blank(Command::MetaNoop)),
        b'e' => {
            // `me <key> [b]`: b is read only as the third token, and no other flag is.
            if n < 3 || key.len() > MAX_KEY_LEN {
                return Line::Reply(reply::BAD_FORMAT);
            }
            let base64 = n >= 4 && t.get(2) == b"b";
            if base64 && meta::base64_decoded_len(key).is_none() {
                return Line::Reply(reply::BAD_FORMAT);
            }
            let mut req = blank(Command::MetaDebug);
            set_key(&mut req, t, 1);
            req.meta.base64 = base64;
            req.meta.flags_start = t.ranges[1].1;
            return Line::Done(req);
        }
        _ => return Line::Reply(reply::ERROR),
    };
    if n < 3 {
        return Line::Reply(reply::ERROR);
    }
    let set = command == Command::MetaSet;
    if key.len() > MAX_KEY_LEN || (set && n == 3) {
        return Line::Reply(reply::BAD_FORMAT);
    }
    if n > MAX_META_TOKENS {
        return Line::Reply(match command {
            Command::MetaGet => errors::MG_TOO_LONG,
            _ => errors::TOO_LONG,
        });
    }
    let mut len = 0;
    if set {
        match safe_strtol(t.get(2)) {
            Some(l) if (0..=i32::MAX - 2).contains(&l) => len = l as usize,
            _ => return Line::Reply(reply::BAD_FORMAT),
        }
    }
    let first_flag = if set { 3 } else { 2 };
    // From here on an `ms` line's data block is read and discarded with its error.
    let refuse = |msg: &'static [u8]| match set {
        true => Line::Skip {
            len,
            reply: msg,
            unlink: None,
        },
        false => Line::Reply(msg),
    };
    let flags = match MetaFlags::parse(key, (first_flag..n - 1).map(|i| t.get(i))) {
        Ok(f) => f,
        Err(e) => {
            return refuse(match command {
                Command::MetaDelete | Command::MetaArithmetic => errors::INVALID_OR_DUPLICATE,
                _ => e,
            })
        }
    };
    match (command, flags.mode) {
        (_, None)
        | (Command::MetaSet, Some(b'E' | b'A' | b'P' | b'R' | b'S'))
        | (Command::MetaArithmetic, Some(b'I' | b'+' | b'D' | b'-')) => {}
        (Command::MetaSet, Some(_)) => return refuse(errors::MS_MODE),
        (Command::MetaArithmetic, Some(_)) => return refuse(errors::MA_MODE),
        // mg and md ignore M.
        _ => {}
    }
    if set && flags.opaque_len.is_some_and(|l| l > MAX_OPAQUE_LEN) {
        return refuse(errors::OPAQUE_TOO_LONG);
    }
    if set && len > limits.item_size_max {
        // As for set: memcached drops the old value, whatever the mode.
        let (a, b) = t.ranges[1];
        return Line::Skip {
            len,
            reply: reply::TOO_LARGE,
            unlink: Some((a as usize, b as usize, flags.base64)),
        };
    }
    let mut req = blank(command);
    set_key(&mut req, t, 1);
    req.meta = MetaBits {
        // memcached reads a flag by its first byte: `q…` is the quiet flag, all of it.
        quiet_at: flags.quiet.then(|| {
            let q = (first_flag..n - 1)
                .find(|&i| t.get(i).first() == Some(&b'q'))
                .expect("the q flag was read");
            t.ranges[q]
        }),
        base64: flags.base64,
        vivify: flags.vivify.is_some(),
        value: flags.value,
        flags_start: t.ranges[first_flag - 1].1,
    };
    match set {
        true => Line::NeedsData(req, len),
        false => Line::Done(req),
    }
}

/// The reply to an error found after memcached looked for `noreply`: silence if it found it.
fn answer(noreply: bool, msg: &'static [u8]) -> Line {
    Line::Reply(if noreply { SILENT } else { msg })
}

fn set_key(req: &mut Request, t: &Tokens<'_>, i: usize) {
    req.keys_start = t.ranges[i].0;
    req.keys_end = t.ranges[i].1;
    req.nkeys = 1;
}

/// `set`/`add`/`replace`/`append`/`prepend <key> <flags> <exptime> <bytes> [noreply]` and
/// `cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]`.
fn storage(command: Command, t: &Tokens<'_>, limits: &CodecLimits) -> Line {
    let cas = command == Command::Cas;
    let base = if cas { 7 } else { 6 };
    if t.n() != base && t.n() != base + 1 {
        return Line::Reply(reply::ERROR);
    }
    let noreply = t.noreply();
    let key = t.get(1);
    if key.len() > MAX_KEY_LEN {
        return answer(noreply, reply::BAD_FORMAT);
    }
    let (Some(flags), Some(exptime), Some(len)) = (
        safe_strtoul(t.get(2)),
        safe_strtol(t.get(3)),
        safe_strtol(t.get(4)),
    ) else {
        return answer(noreply, reply::BAD_FORMAT);
    };
    let mut req = blank(command);
    if cas {
        match safe_strtoull(t.get(5)) {
            Some(unique) => req.number = unique,
            None => return answer(noreply, reply::BAD_FORMAT),
        }
    }
    // memcached adds the data block's \r\n to the length as an int.
    if !(0..=i32::MAX - 2).contains(&len) {
        return answer(noreply, reply::BAD_FORMAT);
    }
    let len = len as usize;
    if len > limits.item_size_max {
        let (a, b) = t.ranges[1];
        return Line::Skip {
            len,
            reply: if noreply { SILENT } else { reply::TOO_LARGE },
            unlink: (command == Command::Set).then_some((a as usize, b as usize, false)),
        };
    }
    set_key(&mut req, t, 1);
    req.flags = flags;
    req.exptime = exptime as i64;
    if noreply {
        req.noreply_at = Some(t.noreply_at());
    }
    Line::NeedsData(req, len)
}

/// `delete <key> [0] [noreply]`: memcached checks the optional arguments before the key.
fn delete(t: &Tokens<'_>) -> Line {
    let n = t.n();
    if !(3..=5).contains(&n) {
        return Line::Reply(reply::ERROR);
    }
    let mut noreply = false;
    if n > 3 {
        let hold_is_zero = t.get(2) == b"0";
        noreply = t.noreply();
        let valid = (n == 4 && (hold_is_zero || noreply)) || (n == 5 && hold_is_zero && noreply);
        if !valid {
            return answer(noreply, reply::DELETE_USAGE);
        }
    }
    if t.get(1).len() > MAX_KEY_LEN {
        return answer(noreply, reply::BAD_FORMAT);
    }
    let mut req = blank(Command::Delete);
    set_key(&mut req, t, 1);
    if noreply {
        req.noreply_at = Some(t.noreply_at());
        // `delete noreply noreply` forwarded as `delete noreply` would end in `noreply`: the
        // optional `0` keeps every line memroute sends free of a trailing flag.
        req.zero_arg = n == 4 && t.get(1) == b"noreply";
    }
    Line::Done(req)
}

/// `incr`/`decr <key> <delta> [noreply]`.
fn arithmetic(command: Command, t: &Tokens<'_>) -> Line {
    if t.n() != 4 && t.n() != 5 {
        return Line::Reply(reply::ERROR);
    }
    let noreply = t.noreply();
    if t.get(1).len() > MAX_KEY_LEN {
        return answer(noreply, reply::BAD_FORMAT);
    }
    let Some(delta) = safe_strtoull(t.get(2)) else {
        return answer(noreply, reply::INVALID_DELTA);
    };
    let mut req = blank(command);
    set_key(&mut req, t, 1);
    req.number = delta;
    if noreply {
        req.noreply_at = Some(t.noreply_at());
    }
    Line::Done(req)
}

/// `touch <key> <exptime> [noreply]`.
fn touch(t: &Tokens<'_>) -> Line {
    if t.n() != 4 && t.n() != 5 {
        return Line::Reply(reply::ERROR);
    }
    let noreply = t.noreply();
    if t.get(1).len() > MAX_KEY_LEN {
        return answer(noreply, reply::BAD_FORMAT);
    }
    let Some(exptime) = safe_strtol(t.get(2)) else {
        return answer(noreply, reply::INVALID_EXPTIME);
    };
    let mut req = blank(Command::Touch);
    set_key(&mut req, t, 1);
    req.exptime = exptime as i64;
    if noreply {
        req.noreply_at = Some(t.noreply_at());
    }
    Line::Done(req)
}

/// `flush_all [delay] [noreply]`: any argument that is not the flag is read as the delay.
fn flush_all(t: &Tokens<'_>) -> Line {
    let n = t.n();
    if !(2..=4).contains(&n) {
        return Line::Reply(reply::ERROR);
    }
    let noreply = t.noreply();
    let mut req = blank(Command::FlushAll);
    if n != if noreply { 3 } else { 2 } {
        match safe_strtol(t.get(1)) {
            Some(e) => req.exptime = e as i64,
            None => return answer(noreply, reply::INVALID_EXPTIME),
        }
    }
    if noreply {
        req.noreply_at = Some(t.noreply_at());
    }
    Line::Done(req)
}

/// `verbosity <level> [noreply]` (answered by memroute itself).
fn verbosity(t: &Tokens<'_>) -> Line {
    if t.n() != 3 && t.n() != 4 {
        return Line::Reply(reply::ERROR);
    }
    let noreply = t.noreply();
    if safe_strtoul(t.get(1)).is_none() {
        return answer(noreply, reply::BAD_FORMAT);
    }
    let mut req = blank(Command::Verbosity);
    if noreply {
        req.noreply_at = Some(t.noreply_at());
    }
    Line::Done(req)
}

/// `cache_memlimit <megabytes> [noreply]` (sent to every backend).
fn cache_memlimit(t: &Tokens<'_>) -> Line {
    if t.n() != 3 && t.n() != 4 {
        return Line::Reply(reply::ERROR);
    }
    let noreply = t.noreply();
    let Some(mb) = safe_strtoul(t.get(1)) else {
        return answer(noreply, reply::ERROR);
    };
    let mut req = blank(Command::CacheMemlimit);
    req.number = mb as u64;
    if noreply {
        req.noreply_at = Some(t.noreply_at());
    }
    Line::Done(req)
}

#[cfg(test)]
mod tests;
