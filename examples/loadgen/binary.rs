//! The binary-protocol workload (`--protocol binary`): Get and Set packets carrying the same
//! self-describing values as the text workload, and the reading and verification of their
//! response packets.
//!
//! Every request carries an opaque, `seq + i` for request `i` of a batch (the low 32 bits),
//! and every response must echo the opaque and opcode of the request it answers. Loud
//! requests get one response each, in order: a Get is answered with status 0 (a hit: 4 bytes
//! of extras, the client flags, which must be the key index as for text sets, then the value)
//! or 1 (a miss), a Set with status 0 (stored). With `--binary-quiet` reads are GetKQ (a miss
//! is not answered at all; a hit carries its key, which must be the request's) and every
//! batch ends with a Noop: a response answers the open request its opaque names, the quiet
//! reads it passes over were misses, as are those still open when the Noop's response
//! arrives. A response whose opaque names no open request, or the Noop's response before a
//! loud request was answered, is a verification error and the connection is dropped.

use crate::batch::Batch;
use crate::protocol::{lossy, Frame};
use crate::report::Stats;
use crate::shared::Shared;
use crate::workload::{abandon, Replies};
use tokio::io::AsyncRead;

const REQUEST: u8 = 0x80;
const RESPONSE: u8 = 0x81;
const HEADER: usize = 24;
const GET: u8 = 0x00;
const SET: u8 = 0x01;
const NOOP: u8 = 0x0a;
const GETKQ: u8 = 0x0d;
/// Response statuses.
const OK: u16 = 0;
const NOT_FOUND: u16 = 1;

/// A request header.
fn push_header(w: &mut Vec<u8>, op: u8, key: usize, extras: usize, value: usize, opaque: u32) {
    w.push(REQUEST);
    w.push(op);
    w.extend_from_slice(&(key as u16).to_be_bytes());
    w.push(extras as u8);
    w.extend_from_slice(&[0, 0, 0]);
    w.extend_from_slice(&((extras + key + value) as u32).to_be_bytes());
    w.extend_from_slice(&opaque.to_be_bytes());
    w.extend_from_slice(&0u64.to_be_bytes());
}

/// The opaque of request `i` of a batch starting at `seq` (its low 32 bits).
pub fn opaque(seq: u64, i: usize) -> u32 {
    (seq + i as u64) as u32
}

impl Shared {
    /// Get (GetKQ with `--binary-quiet`) of key `k`.
    pub fn push_binary_get(&self, w: &mut Vec<u8>, k: u32, opaque: u32) {
        let key = self.key(k);
        let op = if self.args.binary_quiet { GETKQ } else { GET };
        push_header(w, op, key.len(), 0, 0, opaque);
        w.extend_from_slice(key);
    }

    /// Set of key `k` to its value of version `ver`, flags = key idx & 0xffff, no expiry.
    pub fn push_binary_set(&self, w: &mut Vec<u8>, k: u32, ver: u32, opaque: u32) {
        let key = self.key(k);
        push_header(w, SET, key.len(), 8, self.args.value_size, opaque);
        w.extend_from_slice(&(k & 0xffff).to_be_bytes());
        w.extend_from_slice(&0u32.to_be_bytes());
        w.extend_from_slice(key);
        self.push_value(w, k, ver);
    }

    /// Ends a batch of quiet reads with a Noop, whose response tells that all before it
    /// was answered.
    pub fn end_binary_batch(&self, b: &mut Batch, w: &mut Vec<u8>) {
        if self.args.binary_quiet && !b.ops.is_empty() {
            push_header(w, NOOP, 0, 0, 0, opaque(b.seq, b.ops.len()));
            b.mn = true;
        }
    }
}

/// Finds the end of one response packet.
pub fn frame_binary(b: &[u8]) -> Frame {
    if b.len() < HEADER {
        return Frame::Incomplete;
    }
    if b[0] != RESPONSE {
        return Frame::Desync(format!("not a response packet: {:02x?}", &b[..HEADER]));
    }
    let body = u32::from_be_bytes([b[8], b[9], b[10], b[11]]) as usize;
    if b.len() < HEADER + body {
        return Frame::Incomplete;
    }
    Frame::Complete(HEADER + body)
}

/// One framed response packet.
struct Response<'a> {
    op: u8,
    status: u16,
    opaque: u32,
    extras: &'a [u8],
    key: &'a [u8],
    value: &'a [u8],
}

fn parse(p: &[u8]) -> Result<Response<'_>, String> {
    let keylen = u16::from_be_bytes([p[2], p[3]]) as usize;
    let extlen = p[4] as usize;
    let body = &p[HEADER..];
    if keylen + extlen > body.len() {
        return Err(format!(
            "response header {:02x?}: key and extras beyond the body",
            &p[..HEADER]
        ));
    }
    Ok(Response {
        op: p[1],
        status: u16::from_be_bytes([p[6], p[7]]),
        opaque: u32::from_be_bytes([p[12], p[13], p[14], p[15]]),
        extras: &body[..extlen],
        key: &body[extlen..extlen + keylen],
        value: &body[extlen + keylen..],
    })
}

/// Reads and verifies the response packets to one binary batch, in order; like the text
/// reader, a response that fits no request abandons the batch (the caller reconnects).
pub async fn read_binary_batch<R: AsyncRead + Unpin>(mut rx: Replies<'_, R>) -> Result<(), ()> {
    let (sh, b) = (rx.sh, rx.b);
    let quiet = sh.args.binary_quiet;
    let n = b.ops.len();
    // The first request not answered yet.
    let mut next = 0;
    loop {
        // Loud requests get a response each; the batch ends with the last of them, or
        // with the Noop's.
        let loud_left = (next..n).any(|i| !(quiet && b.ops[i].get));
        if !loud_left && !b.mn {
            for i in next..n {
                miss(sh, b, rx.st, i);
            }
            return Ok(());
        }
        let Some(len) = rx.next(frame_binary, next).await else {
            return Err(());
        };
        let packet = &rx.rb.data()[..len];
        let r = match parse(packet) {
            Ok(r) => r,
            Err(e) => return fail(&mut rx, e, len, next),
        };
        // The request it answers: by opaque, among the open ones (the Noop is request n).
        let Some(i) = (next..=n).find(|&i| opaque(b.seq, i) == r.opaque) else {
            let e = format!("response opaque {} answers no open request", r.opaque);
            return fail(&mut rx, e, len, next);
        };
        if (next..i).any(|j| !(quiet && b.ops[j].get)) {
            let e = format!("response to request {i} before request {next}'s");
            return fail(&mut rx, e, len, next);
        }
        for j in next..i {
            miss(sh, b, rx.st, j);
        }
        if i == n {
            if r.op != NOOP || r.status != OK || !b.mn {
                let e = format!(
                    "response {:02x} status {} where the Noop's belongs",
                    r.op, r.status
                );
                return fail(&mut rx, e, len, next);
            }
            rx.rb.consume(len);
            return Ok(());
        }
        let op = &b.ops[i];
        let k = b.keys[op.first];
        let want = match (op.get, quiet) {
            (true, true) => GETKQ,
            (true, false) => GET,
            (false, _) => SET,
        };
        if r.op != want {
            let e = format!("response opcode {:02x} to a {want:02x} of key {k}", r.op);
            return fail(&mut rx, e, len, next);
        }
        if op.get {
            match r.status {
                OK => {
                    if quiet && r.key != sh.key(k) {
                        let e = format!("GetKQ of key {k} answered for {}", lossy(r.key));
                        return fail(&mut rx, e, len, next);
                    }
                    let flags = match r.extras {
                        [a, b, c, d] => u32::from_be_bytes([*a, *b, *c, *d]),
                        _ => u32::MAX,
                    };
                    if flags != k & 0xffff {
                        rx.st
                            .verr(format!("key {k}: flags {flags}, extras {:02x?}", r.extras));
                    } else if let Err(e) = sh.check_value(k, b.floors[op.first], r.value) {
                        rx.st.verr(e);
                    }
                    if sh.counted(op.t0) {
                        rx.st.hits += 1;
                    }
                    finish(sh, b, rx.st, i);
                }
                NOT_FOUND if !quiet => miss(sh, b, rx.st, i),
                s => {
                    rx.st
                        .verr(format!("get {k}: status {s:#x} {}", lossy(r.value)));
                    miss(sh, b, rx.st, i);
                }
            }
        } else {
            let ok = r.status == OK;
            let now = sh.tick();
            sh.state(k).end_set(op.ver, now, ok);
            if !ok {
                rx.st.verr(format!(
                    "set {k}: status {:#x} {}",
                    r.status,
                    lossy(r.value)
                ));
            }
            finish(sh, b, rx.st, i);
        }
        rx.rb.consume(len);
        next = i + 1;
    }
}

/// Read `i` of the batch missed (a miss is expected only while no write of ours is known
/// to have landed and nobody said the keys were prefilled).
fn miss(sh: &Shared, b: &Batch, st: &mut Stats, i: usize) {
    let op = &b.ops[i];
    if sh.counted(op.t0) {
        st.misses += 1;
    }
    if b.floors[op.first] > 0 || sh.args.expect_hits {
        st.unexpected_misses += 1;
    }
    finish(sh, b, st, i);
}

/// Request `i` of the batch is answered (counted if sent in the measured window).
fn finish(sh: &Shared, b: &Batch, st: &mut Stats, i: usize) {
    let op = &b.ops[i];
    if sh.counted(op.t0) {
        st.count_op(op);
    }
}

/// A response that fits no request: a verification error; the batch's sets from request
/// `from` on are abandoned and the connection dropped.
fn fail<R>(rx: &mut Replies<'_, R>, msg: String, len: usize, from: usize) -> Result<(), ()> {
    rx.st.verr(msg);
    rx.rb.consume(len);
    abandon(rx.sh, rx.b, from);
    Err(())
}
