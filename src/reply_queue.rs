//! The per-client ordered reply queue: one slot per request, filled in any order by the
//! upstream connections, drained strictly from the head so replies leave in request order.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::protocol::reply::{self, value_items};
use crate::write_queue::WriteQueue;

/// A reply ready to be written to the client.
#[derive(Debug)]
pub enum Reply {
    /// A fixed reply line.
    Static(&'static [u8]),
    /// Bytes received from a backend (a slice of its read buffer) or built locally.
    Data(Bytes),
    /// A reply assembled from several pieces (a merged multi-get).
    Parts(Vec<Bytes>),
}

impl Reply {
    fn len(&self) -> usize {
        match self {
            Reply::Static(s) => s.len(),
            Reply::Data(b) => b.len(),
            Reply::Parts(p) => p.iter().map(Bytes::len).sum(),
        }
    }
}

/// What is left in a queue after the ready head was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outstanding {
    /// Requests whose replies have not been taken.
    pub requests: usize,
    /// Bytes of completed replies waiting behind an incomplete one.
    pub ready_bytes: usize,
}

/// What an answer from a backend was: its bytes, or the error line to use instead.
pub type Answer = Result<Bytes, &'static [u8]>;

/// What to do with a retrieval fragment whose backend failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrievalFailure {
    /// Answer the failed keys as misses (safe for a cache; counted as errors).
    Miss,
    /// Answer the whole retrieval with the backend's error.
    Error,
}

/// A reply assembled from several backend answers.
#[derive(Debug)]
pub enum Gather {
    /// A multi-key retrieval split over backends, merged back in the client's key order.
    MultiGet {
        /// The client's keys, in order.
        keys: Vec<Bytes>,
        /// For each fragment, the positions (in `keys`) of the keys it asked for, in order.
        fragments: Vec<Vec<u16>>,
        /// The `VALUE` item found for each key position.
        items: Vec<Option<Bytes>>,
        /// The first error seen, when failures are errors.
        error: Option<&'static [u8]>,
        /// Fragments still outstanding.
        remaining: usize,
        /// How a failed fragment is answered.
        policy: RetrievalFailure,
    },
    /// A command sent to every backend: `OK` only if every backend said `OK`.
    Broadcast {
        /// The first non-`OK` answer.
        error: Option<Reply>,
        /// Backends still outstanding.
        remaining: usize,
    },
}

impl Gather {
    /// A gather for a multi-get split into `fragments`.
    pub fn multi_get(keys: Vec<Bytes>, fragments: Vec<Vec<u16>>, policy: RetrievalFailure) -> Self {
        let n = keys.len();
        Gather::MultiGet {
            keys,
            remaining: fragments.len(),
            fragments,
            items: vec![None; n],
            error: None,
            policy,
        }
    }

    /// A gather for a broadcast to `n` backends.
    pub fn broadcast(n: usize) -> Self {
        Gather::Broadcast {
            error: None,
            remaining: n,
        }
    }

    fn add(&mut self, part: usize, answer: Answer) -> bool {
        match self {
            Gather::MultiGet {
                keys,
                fragments,
                items,
                error,
                remaining,
                policy,
            } => {
                match answer {
                    Ok(bytes) if !reply::is_error_line(&bytes) => {
                        place_values(&bytes, &fragments[part], |p| &keys[p], items);
                    }
                    Ok(_) | Err(_) => {
                        if *policy == RetrievalFailure::Error && error.is_none() {
                            *error = Some(answer_error(&answer));
                        }
                    }
                }
                *remaining -= 1;
                *remaining == 0
            }
            Gather::Broadcast { error, remaining } => {
                match answer {
                    Ok(bytes) if bytes.as_ref() == reply::OK => {}
                    Ok(bytes) => {
                        error.get_or_insert(Reply::Data(bytes));
                    }
                    Err(msg) => {
                        error.get_or_insert(Reply::Static(msg));
                    }
                }
                *remaining -= 1;
                *remaining == 0
            }
        }
    }

    fn finish(self) -> Reply {
        match self {
            Gather::MultiGet {
                items, error: None, ..
            } => {
                let mut parts: Vec<Bytes> = items.into_iter().flatten().collect();
                parts.push(Bytes::from_static(reply::END));
                Reply::Parts(parts)
            }
            Gather::MultiGet { error: Some(e), .. } => Reply::Static(e),
            Gather::Broadcast { error, .. } => error.unwrap_or(Reply::Static(reply::OK)),
        }
    }
}

/// Puts each `VALUE` item of `reply` (an answer to a request for the keys at `positions`,
/// in that order) into `items` at its key's position. Hits come back in request order and
/// misses are skipped, so one pass over both matches them.
pub fn place_values<'k>(
    reply: &Bytes,
    positions: &[u16],
    key_at: impl Fn(usize) -> &'k [u8],
    items: &mut [Option<Bytes>],
) {
    let mut cursor = 0;
    for item in value_items(reply) {
        while cursor < positions.len() && key_at(positions[cursor] as usize) != item.key {
            cursor += 1;
        }
        if cursor == positions.len() {
            break;
        }
        items[positions[cursor] as usize] = Some(reply.slice(item.range));
        cursor += 1;
    }
}

fn answer_error(answer: &Answer) -> &'static [u8] {
    match answer {
        Err(msg) => msg,
        Ok(_) => reply::BACKEND_PROTOCOL,
    }
}

#[derive(Debug)]
enum Slot {
    Pending,
    Ready(Reply),
    // Boxed: a gather is rare and large; every slot would otherwise be its size.
    Gathering(Box<Gather>),
}

#[derive(Debug, Default)]
struct Inner {
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    head: u64,
    /// Bytes of replies completed but not yet taken by the writer.
    ready_bytes: usize,
    /// The client is gone; answers arriving now are dropped.
    closed: bool,
}

/// The ordered reply queue of one client connection, shared with the upstream connections
/// that complete its slots. The lock is never held across an `.await`.
#[derive(Debug, Default)]
pub struct ReplyQueue {
    inner: Mutex<Inner>,
    notify: Notify,
}

impl ReplyQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves the next slot for a reply that will arrive later; returns its sequence number.
    pub fn reserve(&self) -> u64 {
        self.push(Slot::Pending)
    }

    /// Reserves a slot completed by several answers.
    pub fn reserve_gather(&self, gather: Gather) -> u64 {
        self.push(Slot::Gathering(Box::new(gather)))
    }

    /// Appends a reply that is ready now.
    pub fn push_ready(&self, reply: Reply) {
        let len = reply.len();
        let mut inner = self.lock();
        inner.ready_bytes += len;
        inner.slots.push_back(Slot::Ready(reply));
    }

    fn push(&self, slot: Slot) -> u64 {
        let mut inner = self.lock();
        let seq = inner.head + inner.slots.len() as u64;
        inner.slots.push_back(slot);
        seq
    }

    /// Completes slot `seq` with a backend's answer.
    pub fn complete(&self, seq: u64, answer: Answer) {
        let reply = match answer {
            Ok(bytes) => Reply::Data(bytes),
            Err(msg) => Reply::Static(msg),
        };
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        let Some(idx) = seq.checked_sub(inner.head) else {
            return;
        };
        inner.ready_bytes += reply.len();
        if let Some(slot) = inner.slots.get_mut(idx as usize) {
            *slot = Slot::Ready(reply);
        }
        drop(inner);
        if idx == 0 {
            self.notify.notify_one();
        }
    }

    /// Adds the answer of fragment `part` to the gathering slot `seq`.
    pub fn complete_part(&self, seq: u64, part: usize, answer: Answer) {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        let Some(idx) = seq.checked_sub(inner.head) else {
            return;
        };
        let idx = idx as usize;
        let done = match inner.slots.get_mut(idx) {
            Some(Slot::Gathering(g)) => g.add(part, answer),
            _ => return,
        };
        if done {
            let Slot::Gathering(g) = std::mem::replace(&mut inner.slots[idx], Slot::Pending) else {
                unreachable!("checked above")
            };
            let reply = g.finish();
            inner.ready_bytes += reply.len();
            inner.slots[idx] = Slot::Ready(reply);
            drop(inner);
            if idx == 0 {
                self.notify.notify_one();
            }
        }
    }

    /// Moves every ready reply at the head into `out`, in order; returns what is left
    /// (one lock for what the client loop needs to know).
    pub fn take_ready(&self, out: &mut WriteQueue) -> Outstanding {
        let mut inner = self.lock();
        while let Some(Slot::Ready(_)) = inner.slots.front() {
            let Some(Slot::Ready(reply)) = inner.slots.pop_front() else {
                unreachable!("checked above")
            };
            inner.head += 1;
            inner.ready_bytes -= reply.len();
            match reply {
                Reply::Static(s) => out.push(Bytes::from_static(s)),
                Reply::Data(b) => out.push(b),
                Reply::Parts(parts) => parts.into_iter().for_each(|p| out.push(p)),
            }
        }
        Outstanding {
            requests: inner.slots.len(),
            ready_bytes: inner.ready_bytes,
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
    }

    /// Resolves when the head slot may have become ready.
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &ReplyQueue) -> Vec<u8> {
        let mut wq = WriteQueue::new();
        q.take_ready(&mut wq);
        wq.concat()
    }

    #[test]
    fn replies_leave_in_request_order() {
        let q = ReplyQueue::new();
        let a = q.reserve();
        let b = q.reserve();
        q.push_ready(Reply::Static(b"C\r\n"));
        q.complete(b, Ok(Bytes::from_static(b"B\r\n")));
        assert_eq!(drain(&q), b"");
        q.complete(a, Ok(Bytes::from_static(b"A\r\n")));
        assert_eq!(drain(&q), b"A\r\nB\r\nC\r\n");
        assert!(q.is_empty());
        let left = q.take_ready(&mut WriteQueue::new());
        assert_eq!(
            left,
            Outstanding {
                requests: 0,
                ready_bytes: 0
            }
        );
    }

    #[test]
    fn multi_get_merges_in_client_key_order_with_one_end() {
        let q = ReplyQueue::new();
        let keys: Vec<Bytes> = ["a", "b", "c", "a"]
            .iter()
            .map(|k| Bytes::from_static(k.as_bytes()))
            .collect();
        // fragment 0 has a, c, a; fragment 1 has b.
        let seq = q.reserve_gather(Gather::multi_get(
            keys,
            vec![vec![0, 2, 3], vec![1]],
            RetrievalFailure::Miss,
        ));
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
            (RetrievalFailure::Error, reply::BACKEND_TIMEOUT),
        ] {
            let q = ReplyQueue::new();
            let keys = vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")];
            let seq = q.reserve_gather(Gather::multi_get(keys, vec![vec![0], vec![1]], policy));
            q.complete_part(seq, 0, Err(reply::BACKEND_TIMEOUT));
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
        let q = ReplyQueue::new();
        let s = q.reserve_gather(Gather::broadcast(2));
        q.complete_part(s, 0, Ok(Bytes::from_static(b"OK\r\n")));
        q.complete_part(s, 1, Ok(Bytes::from_static(b"OK\r\n")));
        let t = q.reserve_gather(Gather::broadcast(2));
        q.complete_part(t, 0, Ok(Bytes::from_static(b"OK\r\n")));
        q.complete_part(t, 1, Err(reply::BACKEND_UNAVAILABLE));
        assert_eq!(drain(&q), [reply::OK, reply::BACKEND_UNAVAILABLE].concat());
    }
}
