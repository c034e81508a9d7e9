//! Reply lines memroute writes itself, replies as the client's queue holds them ([`Reply`]),
//! and framing of the replies a backend sends back.
//!
//! A text-protocol reply carries no request id, so the upstream side must know what shape of
//! reply each request expects ([`ReplyKind`]) to find where one reply ends and the next begins.

use bytes::Bytes;

/// Unknown command or wrong number of tokens.
pub const ERROR: &[u8] = b"ERROR\r\n";
/// End of a retrieval.
pub const END: &[u8] = b"END\r\n";
/// Successful flush_all / verbosity.
pub const OK: &[u8] = b"OK\r\n";
/// A malformed argument or key.
pub const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
/// A data block that does not end where its length says.
pub const BAD_DATA_CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
/// A value above the item size limit; its data block is discarded.
pub const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
/// memcached's answer to `shutdown` unless started with `-A` (never enabled through memroute).
pub const SHUTDOWN_DISABLED: &[u8] = b"ERROR: shutdown not enabled\r\n";
/// `delete` with an argument memcached refuses.
pub const DELETE_USAGE: &[u8] =
    b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";
/// A bad exptime on touch, gat or flush_all.
pub const INVALID_EXPTIME: &[u8] = b"CLIENT_ERROR invalid exptime argument\r\n";
/// A bad incr/decr delta.
pub const INVALID_DELTA: &[u8] = b"CLIENT_ERROR invalid numeric delta argument\r\n";
/// Too many client connections.
pub const TOO_MANY_CONNECTIONS: &[u8] = b"SERVER_ERROR too many open connections\r\n";

/// The memcached version memroute speaks and is tested against (clients such as libmemcached
/// read features from the major and minor numbers and refuse a major of 0), followed by
/// memroute's own version.
pub const VERSION_STRING: &str = concat!("1.6.18-memroute-", env!("CARGO_PKG_VERSION"));
/// memroute's answer to `version`.
pub const VERSION: &[u8] = concat!(
    "VERSION 1.6.18-memroute-",
    env!("CARGO_PKG_VERSION"),
    "\r\n"
)
.as_bytes();

/// A reply ready to be written to the client.
#[derive(Debug)]
pub enum Reply {
    /// A fixed reply line.
    Static(&'static [u8]),
    /// Bytes received from a backend (a slice of its read buffer) or built locally.
    Data(Bytes),
    /// A reply assembled from several pieces (a merged multi-get, a batch of a streamed one).
    Parts(Vec<Bytes>),
    /// A streamed retrieval failed: this line ends its reply, its later batches are dropped.
    StreamError(&'static [u8]),
    /// A streamed retrieval is complete: `END`, unless it failed.
    StreamEnd,
}

impl Reply {
    /// The reply's bytes in one buffer (copied only when in pieces).
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Reply::Static(s) | Reply::StreamError(s) => Bytes::from_static(s),
            Reply::Data(b) => b.clone(),
            Reply::Parts(p) => p.concat().into(),
            Reply::StreamEnd => Bytes::from_static(END),
        }
    }

    /// Bytes the reply will write.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        match self {
            Reply::Static(s) | Reply::StreamError(s) => s.len(),
            Reply::Data(b) => b.len(),
            Reply::Parts(p) => p.iter().map(Bytes::len).sum(),
            Reply::StreamEnd => END.len(),
        }
    }
}

/// The shape of reply a forwarded request expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// `VALUE …` items then `END`, or one error line.
    Retrieval,
    /// Exactly one line.
    Line,
    /// A retrieval whose values carry their flags in a prefix (Tokyo Tyrant pools with
    /// `preserve_flags`); framed like [`ReplyKind::Retrieval`], then rewritten.
    RetrievalFlagsInValue,
    /// A `stats` subcommand's answer: `STAT`/`ITEM`/`PREFIX` lines ended by `END`, or one
    /// line (`RESET`, `OK`, an error).
    Stats,
    /// A meta command's answer: one status line (`HD`, `NF`, `ME …`, an error, …), or `VA`
    /// with its data block.
    Meta,
    /// `mg`'s answer, framed like [`ReplyKind::Meta`], whose `VA` or `HD` is a hit.
    MetaRetrieval,
    /// A request sent with `q` followed by `mn`: the answer the backend chose to give (maybe
    /// none), then `MN`, which is not part of the client's reply.
    MetaThenNoop,
}

impl ReplyKind {
    /// Whether replies of this kind count retrieval hits.
    pub fn counts_hits(self) -> bool {
        matches!(
            self,
            ReplyKind::Retrieval | ReplyKind::RetrievalFlagsInValue | ReplyKind::MetaRetrieval
        )
    }
}

/// Largest `stats` answer accepted from a backend (memcached caps a cachedump at 2 MB).
pub const MAX_STATS_REPLY: usize = 16 * 1024 * 1024;

/// The backend sent bytes that fit no reply: the connection can no longer be trusted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed reply from backend")]
pub struct MalformedReply;

/// Longest reply line accepted from a backend; a line still without its `\n` beyond this
/// means the stream is not a memcached reply (and must not grow a buffer without bound).
pub const MAX_REPLY_LINE: usize = 8192;

/// Progress framing one reply, kept between calls so that a large multi-value reply arriving
/// in pieces is scanned once, and the largest value a backend may announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameState {
    /// Where the next unscanned item of the head reply starts.
    pos: usize,
    /// `VALUE` items of the head reply scanned so far.
    items: usize,
    /// Most `VALUE` items the head reply may hold.
    max_items: usize,
    /// Largest `VALUE` data block accepted; a larger one is a malformed reply.
    max_value: usize,
    /// Largest `VALUE` data block framed since [`FrameState::take_framed`].
    largest: usize,
    /// `VALUE` items of the last complete reply.
    framed: usize,
}

impl FrameState {
    /// Framing that accepts values of up to `max_value` bytes, any number of them.
    pub fn new(max_value: usize) -> Self {
        FrameState {
            pos: 0,
            items: 0,
            max_items: usize::MAX,
            max_value,
            largest: 0,
            framed: 0,
        }
    }

    /// The `VALUE` items of the last reply framed, and the largest value framed since the
    /// last call (0 if none).
    pub fn take_framed(&mut self) -> (usize, usize) {
        (
            std::mem::take(&mut self.framed),
            std::mem::take(&mut self.largest),
        )
    }

    /// Caps the `VALUE` items of the reply being framed (a retrieval of `n` keys has at most
    /// `n`); more means the backend is not answering this request.
    pub fn limit_items(&mut self, n: usize) {
        self.max_items = n;
    }
}

impl Default for FrameState {
    /// memcached's default item size limit, 1 MiB.
    fn default() -> Self {
        FrameState::new(1024 * 1024)
    }
}

/// Finds the end of the first reply in `buf`. `state` carries progress between calls; it is
/// reset after each complete reply, so one state serves a connection's stream of replies.
pub fn frame_reply(
    buf: &[u8],
    kind: ReplyKind,
    state: &mut FrameState,
) -> Result<Option<usize>, MalformedReply> {
    match kind {
        ReplyKind::Line => match memchr::memchr(b'\n', buf) {
            None if buf.len() > MAX_REPLY_LINE => Err(MalformedReply),
            None => Ok(None),
            Some(i) if is_line_reply(&buf[..i]) => Ok(Some(i + 1)),
            Some(_) => Err(MalformedReply),
        },
        ReplyKind::Stats => {
            let mut pos = state.pos;
            loop {
                let rest = &buf[pos..];
                let Some(nl) = memchr::memchr(b'\n', rest) else {
                    if rest.len() > MAX_REPLY_LINE || pos > MAX_STATS_REPLY {
                        return Err(MalformedReply);
                    }
                    state.pos = pos;
                    return Ok(None);
                };
                let line = strip_cr(&rest[..nl]);
                let listed = [&b"STAT "[..], b"ITEM ", b"PREFIX "]
                    .iter()
                    .any(|p| line.starts_with(p));
                if listed {
                    pos += nl + 1;
                    continue;
                }
                // `END` ends a list; anything else may only be a one-line answer.
                if line != b"END" && pos != 0 {
                    return Err(MalformedReply);
                }
                state.pos = 0;
                return Ok(Some(pos + nl + 1));
            }
        }
        ReplyKind::Meta | ReplyKind::MetaRetrieval => frame_meta(buf, state),
        ReplyKind::MetaThenNoop => {
            let Some(first) = frame_meta(buf, state)? else {
                return Ok(None);
            };
            if &buf[..first] == super::meta::MN {
                // The backend kept quiet.
                return Ok(Some(first));
            }
            match buf.get(first..first + super::meta::MN.len()) {
                None if super::meta::MN.starts_with(&buf[first..]) => Ok(None),
                Some(mn) if mn == super::meta::MN => Ok(Some(first + mn.len())),
                _ => Err(MalformedReply),
            }
        }
        ReplyKind::Retrieval | ReplyKind::RetrievalFlagsInValue => {
            let mut pos = state.pos;
            loop {
                let rest = &buf[pos..];
                let Some(nl) = memchr::memchr(b'\n', rest) else {
                    if rest.len() > MAX_REPLY_LINE {
                        return Err(MalformedReply);
                    }
                    state.pos = pos;
                    return Ok(None);
                };
                let line = &rest[..nl];
                if line.starts_with(b"VALUE ") {
                    let len = value_len(line)
                        .filter(|len| *len <= state.max_value)
                        .ok_or(MalformedReply)?;
                    // Cannot overflow: both terms are bounded by the buffer and the limit.
                    let item_end = pos + nl + 1 + len + 2;
                    if buf.len() < item_end {
                        state.pos = pos;
                        return Ok(None);
                    }
                    if &buf[item_end - 2..item_end] != b"\r\n" || state.items >= state.max_items {
                        return Err(MalformedReply);
                    }
                    state.items += 1;
                    state.largest = state.largest.max(len);
                    pos = item_end;
                } else if strip_cr(line) == b"END" || is_error_line(line) {
                    state.pos = 0;
                    state.framed = std::mem::take(&mut state.items);
                    return Ok(Some(pos + nl + 1));
                } else {
                    return Err(MalformedReply);
                }
            }
        }
    }
}

/// Frames one meta reply: a status line, or `VA <size> …` and its data block. A `VA` or
/// `HD` counts as a hit (for `mg`, whose replies are the only ones whose hits are counted).
fn frame_meta(buf: &[u8], state: &mut FrameState) -> Result<Option<usize>, MalformedReply> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        return match buf.len() > MAX_REPLY_LINE {
            true => Err(MalformedReply),
            false => Ok(None),
        };
    };
    let line = strip_cr(&buf[..nl]);
    if let Some(rest) = line.strip_prefix(b"VA ") {
        let len = rest
            .split(|b| *b == b' ')
            .next()
            .filter(|t| !t.is_empty() && t.iter().all(u8::is_ascii_digit))
            .and_then(|t| std::str::from_utf8(t).ok()?.parse::<usize>().ok())
            .filter(|len| *len <= state.max_value)
            .ok_or(MalformedReply)?;
        let end = nl + 1 + len + 2;
        if buf.len() < end {
            return Ok(None);
        }
        if &buf[end - 2..end] != b"\r\n" {
            return Err(MalformedReply);
        }
        state.framed = 1;
        state.largest = state.largest.max(len);
        return Ok(Some(end));
    }
    let status = line.get(..2).unwrap_or(line);
    let word = matches!(status, b"HD" | b"EN" | b"NF" | b"NS" | b"EX" | b"MN")
        && line.get(2).is_none_or(|b| *b == b' ');
    if !(word || line.starts_with(b"ME ") || is_error_line(line)) {
        return Err(MalformedReply);
    }
    if status == b"HD" {
        state.framed = 1;
    }
    Ok(Some(nl + 1))
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Whether `line` (without `\n`) is a reply memcached gives to a one-line command: a status
/// word, an incr/decr result, a version, or an error. Anything else means the stream is not
/// what it should be.
fn is_line_reply(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    matches!(
        line,
        b"STORED" | b"NOT_STORED" | b"EXISTS" | b"NOT_FOUND" | b"DELETED" | b"TOUCHED" | b"OK"
    ) || (!line.is_empty() && line.iter().all(u8::is_ascii_digit))
        || line.starts_with(b"VERSION ")
        // cache_memlimit's refusals.
        || line.starts_with(b"MEMLIMIT_")
        || is_error_line(line)
}

/// Whether a reply line (with or without its line ending) is one of memcached's error lines.
pub fn is_error_line(line: &[u8]) -> bool {
    let line = strip_cr(line.strip_suffix(b"\n").unwrap_or(line));
    line.starts_with(b"SERVER_ERROR ")
        || line.starts_with(b"CLIENT_ERROR ")
        || line == b"ERROR"
        || line.starts_with(b"ERROR ")
}

/// The `<bytes>` field of a `VALUE <key> <flags> <bytes> [<cas>]` line.
fn value_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut toks = line.split(|b| *b == b' ').filter(|t| !t.is_empty());
    toks.nth(3)
        .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok())
}

/// One `VALUE` item of a retrieval reply: its key and the byte range of the whole item.
#[derive(Debug, PartialEq, Eq)]
pub struct ValueItem<'a> {
    /// The key of the item.
    pub key: &'a [u8],
    /// Range of the item (header line, data, `\r\n`) in the reply.
    pub range: std::ops::Range<usize>,
}

/// Iterates over the `VALUE` items of a complete retrieval reply (as framed by
/// [`frame_reply`]); stops at `END` or an error line.
pub fn value_items(reply: &[u8]) -> impl Iterator<Item = ValueItem<'_>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let rest = &reply[pos..];
        if !rest.starts_with(b"VALUE ") {
            return None;
        }
        let nl = memchr::memchr(b'\n', rest)?;
        let line = &rest[..nl];
        let len = value_len(line)?;
        let key = line[6..].split(|b| *b == b' ').find(|t| !t.is_empty())?;
        let start = pos;
        pos += nl + 1 + len + 2;
        Some(ValueItem {
            key,
            range: start..pos,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_lines_and_retrievals_in_pieces() {
        let reply = b"VALUE a 0 3\r\nabc\r\nVALUE bb 5 2 77\r\nhi\r\nEND\r\nSTORED\r\n";
        let full = reply.len() - 8;
        for cut in 0..reply.len() {
            let mut resume = FrameState::default();
            let first = frame_reply(&reply[..cut], ReplyKind::Retrieval, &mut resume).unwrap();
            if cut < full {
                assert_eq!(first, None, "cut {cut}");
                assert_eq!(
                    frame_reply(reply, ReplyKind::Retrieval, &mut resume),
                    Ok(Some(full))
                );
            } else {
                assert_eq!(first, Some(full));
            }
        }
        let mut r = FrameState::default();
        assert_eq!(
            frame_reply(b"STORED\r\n", ReplyKind::Line, &mut r),
            Ok(Some(8))
        );
        assert_eq!(frame_reply(b"STOR", ReplyKind::Line, &mut r), Ok(None));
    }

    #[test]
    fn value_containing_crlf_and_end_is_not_misframed() {
        let reply = b"VALUE a 0 7\r\nEND\r\n\r\n\r\nEND\r\n";
        let mut r = FrameState::default();
        assert_eq!(
            frame_reply(reply, ReplyKind::Retrieval, &mut r),
            Ok(Some(reply.len()))
        );
    }

    #[test]
    fn errors_end_a_retrieval_and_garbage_is_rejected() {
        let mut r = FrameState::default();
        assert_eq!(
            frame_reply(
                b"SERVER_ERROR out of memory\r\n",
                ReplyKind::Retrieval,
                &mut r
            ),
            Ok(Some(28))
        );
        assert_eq!(
            frame_reply(b"STORED\r\n", ReplyKind::Retrieval, &mut r),
            Err(MalformedReply)
        );
        assert_eq!(
            frame_reply(b"VALUE a 0 x\r\n", ReplyKind::Retrieval, &mut r),
            Err(MalformedReply)
        );
        assert_eq!(
            frame_reply(b"VALUE a 0 1\r\nxyz", ReplyKind::Retrieval, &mut r),
            Err(MalformedReply)
        );
    }

    #[test]
    fn lists_value_items() {
        let reply = b"VALUE a 0 3\r\nabc\r\nVALUE bb 5 2 77\r\nhi\r\nEND\r\n";
        let items: Vec<_> = value_items(reply).collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].key, b"a");
        assert_eq!(&reply[items[1].range.clone()], b"VALUE bb 5 2 77\r\nhi\r\n");
    }

    #[test]
    fn oversized_values_and_endless_lines_are_malformed() {
        let mut r = FrameState::new(10);
        let ok = b"VALUE a 0 10\r\n0123456789\r\nEND\r\n";
        assert_eq!(
            frame_reply(ok, ReplyKind::Retrieval, &mut r),
            Ok(Some(ok.len()))
        );
        let big = b"VALUE a 0 11\r\n";
        assert_eq!(
            frame_reply(big, ReplyKind::Retrieval, &mut r),
            Err(MalformedReply)
        );
        let huge = b"VALUE a 0 18446744073709551615\r\n";
        assert_eq!(
            frame_reply(huge, ReplyKind::Retrieval, &mut r),
            Err(MalformedReply)
        );
        let endless = vec![b'x'; MAX_REPLY_LINE + 1];
        for kind in [ReplyKind::Line, ReplyKind::Retrieval] {
            let mut r = FrameState::default();
            assert_eq!(
                frame_reply(&endless[..MAX_REPLY_LINE], kind, &mut r),
                Ok(None)
            );
            assert_eq!(frame_reply(&endless, kind, &mut r), Err(MalformedReply));
        }
        let mut r = FrameState::default();
        assert_eq!(
            frame_reply(b"ENDING\r\n", ReplyKind::Retrieval, &mut r),
            Err(MalformedReply)
        );
    }

    #[test]
    fn a_retrieval_holds_no_more_items_than_keys() {
        let two = b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nEND\r\n";
        let mut r = FrameState::default();
        r.limit_items(2);
        assert_eq!(
            frame_reply(two, ReplyKind::Retrieval, &mut r),
            Ok(Some(two.len()))
        );
        // The count starts over with the next reply; a third item is one too many.
        let three = b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nVALUE c 0 1\r\nz\r\n";
        for cut in [14, 30, 40] {
            assert_eq!(
                frame_reply(&three[..cut], ReplyKind::Retrieval, &mut r),
                Ok(None)
            );
        }
        assert_eq!(
            frame_reply(three, ReplyKind::Retrieval, &mut r),
            Err(MalformedReply)
        );
    }

    const PIECES: &[&[u8]] = &[
        b"VALUE ",
        b"k ",
        b"0 ",
        b"3",
        b"1",
        b" 77",
        b"\r\n",
        b"\n",
        b"abc",
        b"END",
        b"\r",
        b"STORED",
        b"SERVER_ERROR x",
        b"ERROR",
        b"VERSION 1",
        b"12",
        b" ",
        b"\x00",
    ];

    proptest::proptest! {
        #[test]
        fn reply_like_bytes_keep_the_framing_invariants(
            parts in proptest::collection::vec(proptest::sample::select(PIECES), 0..60),
            step in 1usize..17,
            keys in proptest::sample::select(vec![0usize, 1, 2, 3, usize::MAX]),
        ) {
            crate::protocol::invariants::check_reply_input(&parts.concat(), step, keys);
        }
    }
}
