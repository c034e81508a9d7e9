//! The meta-protocol workload (`--protocol meta`): requests `mg <key> v` and
//! `ms <key> <len> T0 F<flags>` carrying the same self-describing values as the text
//! workload, and the reading and verification of their replies.
//!
//! Loud requests get one reply each, in order: `VA` (hit) or `EN` (miss) for `mg`, `HD` for
//! `ms`. With `--meta-quiet` reads are `mg <key> v q k` and every batch ends with `mn`: a
//! miss is not answered at all, so a reply is matched to its request by position and
//! content. Replies still come in request order, so a `VA` answers the first request still
//! open whose key its `k` flag names (or, with `--meta-opaque`, whose `O<n>` it echoes);
//! the quiet reads it passes over were misses, as are those still open when the next loud
//! reply (`HD` of a write) or the batch's `MN` arrives. `MN` before a loud request was
//! answered, a `VA` whose key or opaque matches no open read, a reply of the wrong kind or a
//! value that fails its check is a verification error. Writes set the client flags
//! (`F<key idx>`) as text sets do, but reads do not ask for them back (no `f` flag): the
//! value itself names its key, run and version.

use crate::batch::{Batch, Op};
use crate::protocol::{line, lossy, parse_num, push_num, Frame};
use crate::report::Stats;
use crate::shared::Shared;
use crate::workload::{abandon, Replies};
use tokio::io::AsyncRead;

impl Shared {
    /// `mg <key> v[ q k][ O<n>]`.
    pub fn push_mg_command(&self, w: &mut Vec<u8>, k: u32, opaque: u64) {
        w.extend_from_slice(b"mg ");
        w.extend_from_slice(self.key(k));
        w.extend_from_slice(if self.args.meta_quiet {
            b" v q k".as_slice()
        } else {
            b" v".as_slice()
        });
        self.push_opaque(w, opaque);
        w.extend_from_slice(b"\r\n");
    }

    /// `ms <key> <bytes> T0 F<key idx & 0xffff>[ O<n>]` and the value of version `ver`.
    pub fn push_ms_command(&self, w: &mut Vec<u8>, k: u32, ver: u32, opaque: u64) {
        w.extend_from_slice(b"ms ");
        w.extend_from_slice(self.key(k));
        w.push(b' ');
        push_num(w, self.args.value_size as u64);
        w.extend_from_slice(b" T0 F");
        push_num(w, (k & 0xffff) as u64);
        self.push_opaque(w, opaque);
        w.extend_from_slice(b"\r\n");
        self.push_value(w, k, ver);
        w.extend_from_slice(b"\r\n");
    }

    fn push_opaque(&self, w: &mut Vec<u8>, opaque: u64) {
        if self.args.meta_opaque {
            w.extend_from_slice(b" O");
            push_num(w, opaque);
        }
    }

    /// Ends a batch of quiet reads with `mn`, whose `MN` tells that all before it was
    /// answered.
    pub fn end_meta_batch(&self, b: &mut Batch, w: &mut Vec<u8>) {
        if self.args.meta_quiet && !b.ops.is_empty() {
            w.extend_from_slice(b"mn\r\n");
            b.mn = true;
        }
    }
}

/// Finds the end of one meta reply: a line, and for `VA <bytes> ...` its data.
pub fn frame_meta(b: &[u8]) -> Frame {
    let Some((l, n)) = line(b) else {
        return Frame::Incomplete;
    };
    let Some(rest) = l.strip_prefix(b"VA ") else {
        return Frame::Complete(n);
    };
    let Some(bytes) = rest.split(|&c| c == b' ').next().and_then(parse_num) else {
        return Frame::Desync(format!("bad VA line: {}", lossy(l)));
    };
    let need = n + bytes as usize + 2;
    if b.len() < need {
        return Frame::Incomplete;
    }
    if &b[need - 2..need] != b"\r\n" {
        return Frame::Desync("value data not terminated by CRLF".into());
    }
    Frame::Complete(need)
}

/// One framed meta reply.
struct Reply<'a> {
    line: &'a [u8],
    /// The two-letter code (`VA`, `EN`, `HD`, `NS`, `MN`...), or the whole first token.
    code: &'a [u8],
    /// The `k` flag's key, the `O` flag's opaque (meta codes only).
    key: Option<&'a [u8]>,
    opaque: Option<&'a [u8]>,
    /// `VA`'s data.
    data: &'a [u8],
}

fn parse_reply(reply: &[u8]) -> Reply<'_> {
    let (l, n) = line(reply).expect("framed");
    let mut toks = l.split(|&c| c == b' ');
    let code = toks.next().unwrap_or_default();
    let mut r = Reply {
        line: l,
        code,
        key: None,
        opaque: None,
        data: &[],
    };
    if code == b"VA" {
        toks.next(); // the length, checked by the framer
        r.data = &reply[n..reply.len() - 2];
    }
    if matches!(code, b"VA" | b"EN" | b"HD" | b"NS" | b"EX" | b"NF") {
        for t in toks {
            match t.split_first() {
                Some((b'k', key)) => r.key = Some(key),
                Some((b'O', o)) => r.opaque = Some(o),
                _ => {}
            }
        }
    }
    r
}

/// What a reply proved about the batch's requests.
enum Outcome {
    /// Request `i` (a read) hit, all open quiet reads before it missed.
    Hit(usize),
    /// Request `i` (a loud read) missed, and all open quiet reads before it.
    Miss(usize),
    /// Request `i` (a write) stored (`HD`) or not (`NS`, `EX`, `NF`, an error); all open
    /// quiet reads before it missed.
    Stored(usize, bool),
    /// `MN`: every read still open missed; the batch is complete.
    End,
}

struct Reader<'s, 'b> {
    sh: &'s Shared,
    b: &'b Batch,
    /// The first request not answered yet.
    next: usize,
}

impl Reader<'_, '_> {
    fn quiet_get(&self, op: &Op) -> bool {
        op.get && self.sh.args.meta_quiet
    }

    /// The first request at or after `next` that will be answered whatever its outcome
    /// (a write or a loud read); `ops.len()` if none.
    fn loud(&self) -> usize {
        (self.next..self.b.ops.len())
            .find(|&i| !self.quiet_get(&self.b.ops[i]))
            .unwrap_or(self.b.ops.len())
    }

    fn done(&self) -> bool {
        self.loud() == self.b.ops.len() && !self.b.mn
    }

    fn opaque(&self, i: usize) -> u64 {
        self.b.seq + i as u64
    }

    /// Which requests reply `r` answers; `Err` when it fits no open request (the stream
    /// cannot be trusted any more).
    fn attribute(&self, r: &Reply) -> Result<Outcome, String> {
        let (ops, loud) = (&self.b.ops, self.loud());
        let sh = self.sh;
        let target = match r.code {
            b"MN" if loud == ops.len() && self.b.mn => return Ok(Outcome::End),
            b"MN" => {
                return Err(format!(
                    "MN while request {loud} of the batch is unanswered"
                ))
            }
            b"VA" => {
                // The open read it names: by opaque if echoed, else by key (quiet reads
                // only: a loud reply answers the first loud request).
                let named = (self.next..ops.len().min(loud + 1)).find(|&i| {
                    ops[i].get
                        && match (r.opaque, r.key) {
                            (Some(o), _) => parse_num(o) == Some(self.opaque(i)),
                            (None, Some(key)) if self.quiet_get(&ops[i]) => {
                                sh.key(self.b.keys[ops[i].first]) == key
                            }
                            _ => i == loud,
                        }
                });
                named.ok_or_else(|| format!("VA answers no open read: {}", lossy(r.line)))?
            }
            _ => loud,
        };
        if target == ops.len() {
            return Err(format!("reply after the last request: {}", lossy(r.line)));
        }
        let op = &ops[target];
        let expect_key = self.quiet_get(op) || r.key.is_some();
        if expect_key && r.key != Some(sh.key(self.b.keys[op.first])) {
            return Err(format!(
                "reply for key {} names another: {}",
                self.b.keys[op.first],
                lossy(r.line)
            ));
        }
        if sh.args.meta_opaque
            && r.opaque.and_then(parse_num) != Some(self.opaque(target))
            && matches!(r.code, b"VA" | b"EN" | b"HD" | b"NS" | b"EX" | b"NF")
        {
            return Err(format!(
                "reply to request O{} echoes another opaque: {}",
                self.opaque(target),
                lossy(r.line)
            ));
        }
        match r.code {
            b"VA" if op.get => Ok(Outcome::Hit(target)),
            b"EN" if op.get => Ok(Outcome::Miss(target)),
            b"HD" if !op.get => Ok(Outcome::Stored(target, true)),
            b"NS" | b"EX" | b"NF" if !op.get => Ok(Outcome::Stored(target, false)),
            b"VA" | b"EN" | b"HD" | b"NS" | b"EX" | b"NF" => Err(format!(
                "{} answers a {}: {}",
                lossy(r.code),
                if op.get { "read" } else { "write" },
                lossy(r.line)
            )),
            // An error line: it answers the loud request only if no quiet read is open
            // before it (a quiet read's error is answered too).
            _ if target == self.next && !self.quiet_get(op) => {
                if op.get {
                    Ok(Outcome::Miss(target))
                } else {
                    Ok(Outcome::Stored(target, false))
                }
            }
            _ => Err(format!("unexpected reply: {}", lossy(r.line))),
        }
    }

    /// Counts request `i` as answered now (in the measured window, by its send time).
    fn finish(&self, st: &mut Stats, i: usize) {
        let op = &self.b.ops[i];
        if self.sh.counted(op.t0) {
            st.count_op(op);
        }
    }

    /// Read `i` missed.
    fn miss(&self, st: &mut Stats, i: usize) {
        let op = &self.b.ops[i];
        if self.sh.counted(op.t0) {
            st.misses += 1;
        }
        // As for text gets: a miss is expected only while no write of ours is known to
        // have landed and nobody told us the keys were prefilled.
        if self.b.floors[op.first] > 0 || self.sh.args.expect_hits {
            st.unexpected_misses += 1;
        }
        self.finish(st, i);
    }

    /// The quiet reads from `next` up to `to` (excluded) were passed over: misses.
    fn misses_until(&mut self, st: &mut Stats, to: usize) {
        for i in self.next..to {
            self.miss(st, i);
        }
        self.next = to;
    }
}

/// Reads and verifies the replies to one meta batch, in order; like the text reader, a
/// reply that fits no request abandons the batch (the caller reconnects).
pub async fn read_meta_batch<R: AsyncRead + Unpin>(mut rx: Replies<'_, R>) -> Result<(), ()> {
    let (sh, b) = (rx.sh, rx.b);
    let mut rd = Reader { sh, b, next: 0 };
    while !rd.done() {
        let Some(len) = rx.next(frame_meta, rd.next).await else {
            return Err(());
        };
        let reply = parse_reply(&rx.rb.data()[..len]);
        let outcome = match rd.attribute(&reply) {
            Ok(o) => o,
            Err(msg) => {
                rx.st.verr(msg);
                rx.rb.consume(len);
                abandon(sh, b, rd.next);
                return Err(());
            }
        };
        match outcome {
            Outcome::End => {
                rd.misses_until(rx.st, b.ops.len());
                rx.rb.consume(len);
                return Ok(());
            }
            Outcome::Hit(i) => {
                rd.misses_until(rx.st, i);
                let op = &b.ops[i];
                let k = b.keys[op.first];
                if let Err(e) = sh.check_value(k, b.floors[op.first], reply.data) {
                    rx.st.verr(e);
                }
                if sh.counted(op.t0) {
                    rx.st.hits += 1;
                }
                rd.finish(rx.st, i);
            }
            Outcome::Miss(i) => {
                rd.misses_until(rx.st, i);
                if reply.code != b"EN" {
                    rx.st.verr(format!(
                        "mg {}: reply {}",
                        b.keys[b.ops[i].first],
                        lossy(reply.line)
                    ));
                }
                rd.miss(rx.st, i);
            }
            Outcome::Stored(i, ok) => {
                rd.misses_until(rx.st, i);
                let op = &b.ops[i];
                let now = sh.tick();
                sh.state(b.keys[op.first]).end_set(op.ver, now, ok);
                if !ok {
                    rx.st.verr(format!(
                        "ms {}: reply {}",
                        b.keys[op.first],
                        lossy(reply.line)
                    ));
                }
                rd.finish(rx.st, i);
            }
        }
        rd.next += 1;
        rx.rb.consume(len);
    }
    Ok(())
}
