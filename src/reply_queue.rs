//! The per-client ordered reply queue: one slot per request, filled in any order by the
//! upstream connections, drained strictly from the head so replies leave in request order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::error::{self, UpstreamError};
use crate::gather::Gather;
use crate::protocol::binary::{self, BinaryCtx};
use crate::protocol::meta::Quiet;
use crate::protocol::reply;
use crate::write_queue::WriteQueue;

pub use crate::error::Answer;
pub use crate::protocol::reply::Reply;

/// How a backend's answer fills a client's slot.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fill {
    /// What stands in for a backend failure (a retrieval's failed keys are misses), instead
    /// of the failure's own error line.
    pub on_failure: Option<&'static [u8]>,
    /// Which answers the client asked not to get (meta `q`): the slot completes empty.
    pub quiet: Quiet,
}

/// What is left in a queue after the ready head was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outstanding {
    /// Requests whose replies have not been taken.
    pub requests: usize,
    /// Bytes of replies (complete or partly gathered) held behind an incomplete one.
    pub held: usize,
    /// Bytes reserved for replies still on their way.
    pub reserved: usize,
}

#[derive(Debug)]
enum Slot {
    Pending,
    Ready(Reply),
    // Boxed: a gather is rare and large; every slot would otherwise be its size.
    Gathering(Box<Gather>),
}

/// A slot and the reply room reserved for it until it completes.
#[derive(Debug)]
struct Entry {
    slot: Slot,
    reserved: usize,
    /// Gathers: bytes of answers received so far.
    gathered: usize,
    /// A binary-protocol request's: its answer is turned into a response packet when written.
    binary: Option<Box<BinaryCtx>>,
}

#[derive(Debug, Default)]
struct Inner {
    slots: VecDeque<Entry>,
    /// Sequence number of `slots[0]`.
    head: u64,
    /// Bytes of replies completed or partly gathered but not yet taken by the writer.
    held: usize,
    /// Bytes reserved for replies still on their way.
    reserved: usize,
    /// The client is gone; answers arriving now are dropped.
    closed: bool,
    /// A streamed retrieval failed: what remains of it is dropped up to its end.
    dropping_stream: bool,
    /// The binary request being handled: slots made for it now carry it.
    binary: Option<BinaryCtx>,
}

/// Retrieval replies refused because they would have taken a client beyond its hard cap.
pub static REFUSED_REPLIES: AtomicU64 = AtomicU64::new(0);

/// The ordered reply queue of one client connection, shared with the upstream connections
/// that complete its slots. The lock is never held across an `.await`.
#[derive(Debug)]
pub struct ReplyQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    /// Bytes taken by the writer but not yet accepted by the client's socket.
    unwritten: AtomicUsize,
    /// Most bytes this client may have held before a retrieval reply is refused.
    hard_cap: usize,
}

impl Default for ReplyQueue {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl ReplyQueue {
    /// An empty queue whose client may hold up to `hard_cap` bytes of replies (one reply
    /// more is always accepted when it holds nothing).
    pub fn new(hard_cap: usize) -> Self {
        ReplyQueue {
            inner: Mutex::default(),
            notify: Notify::new(),
            unwritten: AtomicUsize::new(0),
            hard_cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves the next slot for a reply that will arrive later, with `reserve` bytes of room
    /// for it; returns its sequence number.
    pub fn reserve(&self, reserve: usize) -> u64 {
        self.push(Slot::Pending, reserve)
    }

    /// Reserves a slot completed by several answers.
    pub fn reserve_gather(&self, gather: Gather, reserve: usize) -> u64 {
        self.push(Slot::Gathering(Box::new(gather)), reserve)
    }

    /// Appends a reply that is ready now.
    pub fn push_ready(&self, reply: Reply) {
        let len = reply.len();
        let mut inner = self.lock();
        inner.held += len;
        let binary = inner.binary.clone().map(Box::new);
        inner.slots.push_back(Entry {
            slot: Slot::Ready(reply),
            reserved: 0,
            gathered: 0,
            binary,
        });
    }

    fn push(&self, slot: Slot, reserved: usize) -> u64 {
        let mut inner = self.lock();
        let seq = inner.head + inner.slots.len() as u64;
        inner.reserved += reserved;
        let binary = inner.binary.clone().map(Box::new);
        inner.slots.push_back(Entry {
            slot,
            reserved,
            gathered: 0,
            binary,
        });
        seq
    }

    /// The binary request whose slots are made from now on (none: a text or meta one); its
    /// answers are turned into response packets as they are written.
    pub fn set_binary(&self, ctx: Option<BinaryCtx>) {
        self.lock().binary = ctx;
    }

    /// Tells the queue how many taken bytes the socket has not accepted yet.
    pub fn set_unwritten(&self, n: usize) {
        self.unwritten.store(n, Ordering::Relaxed);
    }

    /// Whether a retrieval reply of `bytes` would take the client beyond its cap (memcached
    /// answers a get it has no memory for with an error).
    fn over_cap(&self, inner: &Inner, bytes: &[u8]) -> bool {
        let holding = inner.held + self.unwritten.load(Ordering::Relaxed);
        let value = bytes.starts_with(b"VALUE ") || bytes.starts_with(b"VA ");
        let over = holding > 0 && holding + bytes.len() > self.hard_cap && value;
        if over {
            REFUSED_REPLIES.fetch_add(1, Ordering::Relaxed);
        }
        over
    }

    /// Completes slot `seq` with a backend's answer, as `fill` says: a failure is answered
    /// with its stand-in if given (a retrieval's miss), else with its own error line; an
    /// answer the client asked not to get leaves the slot empty.
    pub fn complete(&self, seq: u64, answer: Answer, fill: Fill) {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        let Some(idx) = seq.checked_sub(inner.head) else {
            return;
        };
        let reply = match answer {
            Ok(bytes) if self.over_cap(&inner, &bytes) => {
                Reply::Static(error::reply(UpstreamError::ClientMemory))
            }
            Ok(bytes) if fill.quiet.drops(&bytes) => Reply::Static(b""),
            Ok(bytes) => Reply::Data(bytes),
            Err(e) => Reply::Static(fill.on_failure.unwrap_or(error::reply(e))),
        };
        let len = reply.len();
        let Some(entry) = inner.slots.get_mut(idx as usize) else {
            return;
        };
        let reserved = std::mem::take(&mut entry.reserved);
        entry.slot = Slot::Ready(reply);
        inner.reserved -= reserved;
        inner.held += len;
        drop(inner);
        if idx == 0 {
            self.notify.notify_one();
        }
    }

    /// Adds the answer of fragment `part` to the gathering slot `seq`.
    pub fn complete_part(&self, seq: u64, part: usize, answer: Answer) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.closed {
            return;
        }
        let Some(idx) = seq.checked_sub(inner.head) else {
            return;
        };
        let idx = idx as usize;
        let answer = match answer {
            Ok(bytes) if self.over_cap(inner, &bytes) => Err(UpstreamError::ClientMemory),
            other => other,
        };
        let len = answer.as_ref().map_or(0, Bytes::len);
        let Some(entry) = inner.slots.get_mut(idx) else {
            return;
        };
        let Slot::Gathering(g) = &mut entry.slot else {
            return;
        };
        let done = g.add(part, answer);
        entry.gathered += len;
        inner.held += len;
        if done {
            let Slot::Gathering(g) = std::mem::replace(&mut entry.slot, Slot::Pending) else {
                unreachable!("checked above")
            };
            let reply = g.finish();
            // The answers gathered are replaced by the reply made of them.
            inner.held = inner.held - entry.gathered + reply.len();
            inner.reserved -= entry.reserved;
            entry.gathered = 0;
            entry.reserved = 0;
            entry.slot = Slot::Ready(reply);
        }
        drop(guard);
        if done && idx == 0 {
            self.notify.notify_one();
        }
    }

    /// Moves every ready reply at the head into `out`, in order; returns what is left
    /// (one lock for what the client loop needs to know).
    pub fn take_ready(&self, out: &mut WriteQueue) -> Outstanding {
        let mut guard = self.lock();
        let inner = &mut *guard;
        while let Some(Entry {
            slot: Slot::Ready(_),
            ..
        }) = inner.slots.front()
        {
            let Some(Entry {
                slot: Slot::Ready(reply),
                binary,
                ..
            }) = inner.slots.pop_front()
            else {
                unreachable!("checked above")
            };
            inner.head += 1;
            inner.held -= reply.len();
            if let Some(ctx) = binary {
                let packet = binary::encode(&ctx, &reply.to_bytes());
                if !packet.is_empty() {
                    out.push(packet);
                }
                continue;
            }
            // Inside a streamed retrieval that failed, what is left of it is dropped (no
            // other request is decoded while a retrieval streams, so every slot up to its
            // end is part of it).
            let dropping = inner.dropping_stream;
            match reply {
                Reply::StreamEnd => {}
                _ if dropping => continue,
                _ => {}
            }
            match reply {
                Reply::Static(s) => out.push(Bytes::from_static(s)),
                Reply::Data(b) => out.push(b),
                Reply::Parts(parts) => parts.into_iter().for_each(|p| out.push(p)),
                Reply::StreamError(s) => {
                    out.push(Bytes::from_static(s));
                    inner.dropping_stream = true;
                }
                Reply::StreamEnd => {
                    if !dropping {
                        out.push(Bytes::from_static(reply::END));
                    }
                    inner.dropping_stream = false;
                }
            }
        }
        Outstanding {
            requests: inner.slots.len(),
            held: inner.held,
            reserved: inner.reserved,
        }
    }

    /// Requests whose replies have not been taken yet.
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Whether no reply is outstanding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks the client gone so late answers are dropped instead of stored.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.slots.clear();
        inner.held = 0;
        inner.reserved = 0;
    }

    /// Resolves when the head slot may have become ready.
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetrievalFailure;
    use crate::gather::Gather;

    fn drain(q: &ReplyQueue) -> Vec<u8> {
        let mut wq = WriteQueue::new();
        q.take_ready(&mut wq);
        wq.concat()
    }

    #[test]
    fn replies_leave_in_request_order() {
        let q = ReplyQueue::default();
        let a = q.reserve(0);
        let b = q.reserve(0);
        q.push_ready(Reply::Static(b"C\r\n"));
        q.complete(b, Ok(Bytes::from_static(b"B\r\n")), Fill::default());
        assert_eq!(drain(&q), b"");
        q.complete(a, Ok(Bytes::from_static(b"A\r\n")), Fill::default());
        assert_eq!(drain(&q), b"A\r\nB\r\nC\r\n");
        assert!(q.is_empty());
        let left = q.take_ready(&mut WriteQueue::new());
        assert_eq!(
            left,
            Outstanding {
                requests: 0,
                held: 0,
                reserved: 0
            }
        );
    }

    #[test]
    fn multi_get_merges_in_client_key_order_with_one_end() {
        let q = ReplyQueue::default();
        let keys: Vec<Bytes> = ["a", "b", "c", "a"]
            .iter()
            .map(|k| Bytes::from_static(k.as_bytes()))
            .collect();
        // fragment 0 has a, c, a; fragment 1 has b.
        let seq = q.reserve_gather(
            Gather::multi_get(keys, vec![vec![0, 2, 3], vec![1]], RetrievalFailure::Miss),
            0,
        );
        q.complete_part(
            seq,
            1,
            Ok(Bytes::from_static(b"VALUE b 0 1\r\n2\r\nEND\r\n")),
        );
        assert_eq!(drain(&q), b"");
        q.complete_part(
            seq,
            0,
            Ok(Bytes::from_static(
                b"VALUE a 0 1\r\n1\r\nVALUE a 0 1\r\n1\r\nEND\r\n",
            )),
        );
        assert_eq!(
            drain(&q),
            b"VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nVALUE a 0 1\r\n1\r\nEND\r\n"
        );
    }

    #[test]
    fn failed_fragment_is_misses_or_error_by_policy() {
        for (policy, expect) in [
            (RetrievalFailure::Miss, &b"VALUE b 0 1\r\n2\r\nEND\r\n"[..]),
            (
                RetrievalFailure::Error,
                error::reply(UpstreamError::Timeout),
            ),
        ] {
            let q = ReplyQueue::default();
            let keys = vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")];
            let seq = q.reserve_gather(Gather::multi_get(keys, vec![vec![0], vec![1]], policy), 0);
            q.complete_part(seq, 0, Err(UpstreamError::Timeout));
            q.complete_part(
                seq,
                1,
                Ok(Bytes::from_static(b"VALUE b 0 1\r\n2\r\nEND\r\n")),
            );
            assert_eq!(drain(&q), expect);
        }
    }

    #[test]
    fn broadcast_is_ok_only_if_all_ok() {
        let q = ReplyQueue::default();
        let s = q.reserve_gather(Gather::broadcast(2), 0);
        q.complete_part(s, 0, Ok(Bytes::from_static(b"OK\r\n")));
        q.complete_part(s, 1, Ok(Bytes::from_static(b"OK\r\n")));
        let t = q.reserve_gather(Gather::broadcast(2), 0);
        q.complete_part(t, 0, Ok(Bytes::from_static(b"OK\r\n")));
        q.complete_part(t, 1, Err(UpstreamError::Unavailable));
        assert_eq!(
            drain(&q),
            [reply::OK, error::reply(UpstreamError::Unavailable)].concat()
        );
    }

    #[test]
    fn reservations_and_held_bytes_are_accounted() {
        let q = ReplyQueue::default();
        let a = q.reserve(100);
        let b = q.reserve_gather(Gather::broadcast(2), 50);
        let mut wq = WriteQueue::new();
        let left = q.take_ready(&mut wq);
        assert_eq!((left.requests, left.held, left.reserved), (2, 0, 150));
        q.complete_part(b, 0, Ok(Bytes::from_static(b"OK\r\n")));
        let left = q.take_ready(&mut wq);
        assert_eq!(
            (left.held, left.reserved),
            (4, 150),
            "a part is held, room kept"
        );
        q.complete_part(b, 1, Ok(Bytes::from_static(b"OK\r\n")));
        let left = q.take_ready(&mut wq);
        assert_eq!(
            (left.held, left.reserved),
            (4, 100),
            "the gather became one OK"
        );
        q.complete(a, Ok(Bytes::from_static(b"STORED\r\n")), Fill::default());
        let left = q.take_ready(&mut wq);
        assert_eq!((left.requests, left.held, left.reserved), (0, 0, 0));
        assert_eq!(wq.concat(), b"STORED\r\nOK\r\n");
    }

    #[test]
    fn streamed_batches_share_one_end_and_a_failure_ends_the_reply() {
        let q = ReplyQueue::default();
        let key = |k: &'static str| Bytes::from_static(k.as_bytes());
        let b1 = q.reserve_gather(
            Gather::batch(vec![key("a")], vec![vec![0]], RetrievalFailure::Miss),
            0,
        );
        let b2 = q.reserve_gather(
            Gather::batch(vec![key("b")], vec![vec![0]], RetrievalFailure::Miss),
            0,
        );
        q.push_ready(Reply::StreamEnd);
        q.complete_part(
            b2,
            0,
            Ok(Bytes::from_static(b"VALUE b 0 1\r\n2\r\nEND\r\n")),
        );
        q.complete_part(b1, 0, Err(UpstreamError::Timeout));
        q.push_ready(Reply::Static(b"STORED\r\n"));
        assert_eq!(drain(&q), b"VALUE b 0 1\r\n2\r\nEND\r\nSTORED\r\n");

        let q = ReplyQueue::default();
        let b1 = q.reserve_gather(
            Gather::batch(vec![key("a")], vec![vec![0]], RetrievalFailure::Error),
            0,
        );
        let b2 = q.reserve_gather(
            Gather::batch(vec![key("b")], vec![vec![0]], RetrievalFailure::Error),
            0,
        );
        q.push_ready(Reply::StreamEnd);
        q.push_ready(Reply::Static(b"STORED\r\n"));
        q.complete_part(b1, 0, Err(UpstreamError::Timeout));
        q.complete_part(
            b2,
            0,
            Ok(Bytes::from_static(b"VALUE b 0 1\r\n2\r\nEND\r\n")),
        );
        assert_eq!(
            drain(&q),
            [error::reply(UpstreamError::Timeout), b"STORED\r\n"].concat(),
            "the error ends the retrieval; the next request is answered"
        );
    }

    #[test]
    fn a_retrieval_beyond_the_hard_cap_is_refused_unless_nothing_is_held() {
        let q = ReplyQueue::new(20);
        let big = Bytes::from_static(b"VALUE k 0 20\r\n01234567890123456789\r\nEND\r\n");
        let a = q.reserve(0);
        let b = q.reserve(0);
        let c = q.reserve(0);
        q.complete(a, Ok(big.clone()), Fill::default());
        q.complete(b, Ok(big.clone()), Fill::default());
        q.complete(c, Ok(Bytes::from_static(b"STORED\r\n")), Fill::default());
        assert_eq!(
            drain(&q),
            [
                &big[..],
                error::reply(UpstreamError::ClientMemory),
                b"STORED\r\n"
            ]
            .concat()
        );
    }
}
