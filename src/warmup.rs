//! Warm-up after a ring change: for a while after a reload moves keys, a retrieval that
//! misses on a key's new owner is retried on its previous owner; hits are returned to the
//! client and copied to the new owner in the background with `add` (which never overwrites a
//! newer value written meanwhile). Writes during the period also delete the previous owner's
//! copy, so a stale value cannot come back.
//!
//! The first step (asking the new owners) is sent by the client task in request order; this
//! module's [`finish`] does the rest off the client's path and fills the client's slot.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::protocol::reply::{self, ReplyKind};
use crate::reply_queue::{place_values, Answer, ReplyQueue};
use crate::router::{fragment_request, Backend, Router};
use crate::upstream::{ConnHandle, ReplyTarget, UpstreamRequest};

/// A key's place in a warm-up retrieval.
pub struct WarmKey {
    /// The key.
    pub key: Bytes,
    /// Its previous owner, when it moved.
    pub previous: Option<usize>,
}

/// One request to the new owners already sent by the client task, and its answer to come.
pub struct Sent {
    /// Positions (in the client's key order) it asked for.
    pub positions: Vec<u16>,
    /// The new owner asked.
    pub backend: usize,
    /// The answer.
    pub answer: oneshot::Receiver<Answer>,
}

/// Everything the background step needs.
pub struct Pending {
    /// The router in force when the request arrived.
    pub router: Arc<Router>,
    /// The command text before the keys (`get `, `gets `, `gat 10 `, …).
    pub prefix: Bytes,
    /// The client's keys in order.
    pub keys: Vec<WarmKey>,
    /// The requests sent to the new owners.
    pub sent: Vec<Sent>,
    /// Connections to use, per backend index (the client's own, for ordering).
    pub handles: Vec<Option<ConnHandle>>,
    /// Where the merged reply goes.
    pub queue: Arc<ReplyQueue>,
    /// The client's slot.
    pub seq: u64,
    /// The keys are one batch of a retrieval handed out in batches: no `END` of its own.
    pub batch: bool,
}

/// Collects the new owners' answers, asks previous owners for what missed, completes the
/// client's slot, then copies the previous owners' hits to the new owners.
pub async fn finish(p: Pending) {
    let n = p.keys.len();
    let mut items: Vec<Option<Bytes>> = vec![None; n];
    for sent in p.sent {
        if let Ok(Ok(bytes)) = sent.answer.await {
            fill(&mut items, &p.keys, &sent.positions, &bytes);
        }
    }
    // Misses whose key moved, grouped by previous owner.
    let mut retry: Vec<(usize, Vec<u16>)> = Vec::new();
    for (pos, k) in p.keys.iter().enumerate() {
        if let (None, Some(prev)) = (&items[pos], k.previous) {
            match retry.iter_mut().find(|(b, _)| *b == prev) {
                Some((_, v)) => v.push(pos as u16),
                None => retry.push((prev, vec![pos as u16])),
            }
        }
    }
    let mut copies: Vec<(usize, Bytes)> = Vec::new();
    for (prev, positions) in retry {
        let request = fragment(&p.prefix, &p.keys, &positions);
        let answer = call(&p.router, &p.handles, prev, request).await;
        if let Ok(bytes) = answer {
            let before: Vec<bool> = positions
                .iter()
                .map(|&i| items[i as usize].is_some())
                .collect();
            fill(&mut items, &p.keys, &positions, &bytes);
            for (&pos, was) in positions.iter().zip(before) {
                if let (false, Some(item)) = (was, &items[pos as usize]) {
                    p.router.backends()[prev].state().stats.warmup_hits.inc();
                    let owner = p.router.owner(&p.keys[pos as usize].key);
                    copies.push((owner, item.clone()));
                }
            }
        }
    }
    let mut merged = BytesMut::new();
    for item in items.iter().flatten() {
        merged.put_slice(item);
    }
    if !p.batch {
        merged.put_slice(reply::END);
    }
    p.queue.complete(p.seq, Ok(merged.freeze()));
    let ttl = p.router.config.warmup_ttl;
    for (owner, item) in copies {
        if let Some(add) = add_request(&item, ttl) {
            send(&p.router, &p.handles, owner, add, ReplyTarget::Discard).await;
        }
    }
}

/// Puts the `VALUE` items of `reply` into `items` at the positions asked for.
fn fill(items: &mut [Option<Bytes>], keys: &[WarmKey], positions: &[u16], reply: &Bytes) {
    if !reply::is_error_line(reply) {
        place_values(reply, positions, |p| &keys[p].key, items);
    }
}

/// `<prefix><k1> <k2>…\r\n` for the keys at `positions`.
pub fn fragment(prefix: &[u8], keys: &[WarmKey], positions: &[u16]) -> Bytes {
    fragment_request(prefix, positions, |p| &keys[p].key)
}

/// `add <key> <flags> <ttl> <len>\r\n<data>\r\n` from a `VALUE` item.
fn add_request(item: &[u8], ttl: u32) -> Option<Bytes> {
    let nl = memchr::memchr(b'\n', item)?;
    let header = std::str::from_utf8(&item[..nl]).ok()?.trim_end();
    let mut words = header.split(' ').filter(|w| !w.is_empty()).skip(1);
    let (key, flags, len) = (words.next()?, words.next()?, words.next()?);
    let data = &item[nl + 1..item.len() - 2];
    let mut out = BytesMut::with_capacity(item.len() + 32);
    out.put_slice(format!("add {key} {flags} {ttl} {len}\r\n").as_bytes());
    out.put_slice(data);
    out.put_slice(b"\r\n");
    Some(out.freeze())
}

/// Sends `bytes` to backend `b` and waits for the answer.
async fn call(router: &Router, handles: &[Option<ConnHandle>], b: usize, bytes: Bytes) -> Answer {
    let (tx, rx) = oneshot::channel();
    send(router, handles, b, bytes, ReplyTarget::Oneshot(tx)).await;
    rx.await.unwrap_or(Err(reply::BACKEND_CLOSED))
}

async fn send(
    router: &Router,
    handles: &[Option<ConnHandle>],
    b: usize,
    bytes: Bytes,
    target: ReplyTarget,
) {
    let kind = if bytes.starts_with(b"add ") {
        ReplyKind::Line
    } else {
        ReplyKind::Retrieval
    };
    match &router.backends()[b] {
        Backend::Embedded(state, store) => {
            let mut out = BytesMut::new();
            store.execute_frame(&bytes, &mut out);
            target.deliver(Ok(out.freeze()), state);
        }
        Backend::Remote(pool) => {
            let state = pool.backend().clone();
            let handle = match handles.get(b).cloned().flatten() {
                Some(h) if !h.is_closed() => Some(h),
                _ => pool.handle().await.ok(),
            };
            let Some(handle) = handle else {
                target.deliver(Err(reply::BACKEND_UNAVAILABLE), &state);
                return;
            };
            state.stats.requests.inc();
            let req = UpstreamRequest {
                bytes: (bytes, None),
                kind,
                target,
            };
            if let Err(back) = handle.send(req).await {
                back.target.deliver(Err(reply::BACKEND_UNAVAILABLE), &state);
            }
        }
    }
}
