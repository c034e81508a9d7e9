//! Warm-up after a ring change: for a while after a reload moves keys, a retrieval that
//! misses on a key's new owner is retried on its previous owner; hits are returned to the
//! client and copied to the new owner in the background with `add` (which never overwrites a
//! newer value written meanwhile). Writes during the period also delete the previous owner's
//! copy (part of their plan), so a stale value cannot come back.
//!
//! [`begin`] reserves the client's reply slot and asks the new owners, in the client's task
//! and request order; the rest runs in a task of its own and fills the slot. Every request
//! goes through the client's own [`Links`], so it is ordered with the client's others.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::sync::oneshot;

use crate::backend::{Message, ReplyTarget};
use crate::error::UpstreamError;
use crate::gather::place_values;
use crate::links::Links;
use crate::plan::{Warm, WarmMeta};
use crate::protocol::reply;
use crate::reply_queue::{Answer, Fill, ReplyQueue};
use crate::router::Router;

/// Reserves the client's slot for `warm`, asks the new owners now and leaves the rest to a
/// task of its own.
pub async fn begin(
    warm: Warm,
    reserve: usize,
    router: &Arc<Router>,
    links: &mut Links,
    queue: &Arc<ReplyQueue>,
) {
    let seq = queue.reserve(reserve);
    let mut asked = Vec::with_capacity(warm.groups.len());
    for (b, positions) in &warm.groups {
        let (tx, rx) = oneshot::channel();
        let message = ask(&warm, positions);
        links
            .send(router, *b, message, ReplyTarget::Oneshot(tx))
            .await;
        asked.push((positions.clone(), rx));
    }
    tokio::spawn(finish(
        warm,
        asked,
        router.clone(),
        links.clone(),
        queue.clone(),
        seq,
    ));
}

/// The retrieval of the keys at `positions`.
fn ask(warm: &Warm, positions: &[u16]) -> Message {
    Message::Retrieve {
        command: warm.command,
        exptime: warm.exptime,
        prefix: warm.prefix.clone(),
        keys: positions
            .iter()
            .map(|&p| warm.keys[p as usize].0.clone())
            .collect(),
    }
}

/// Collects the new owners' answers, asks previous owners for what missed, completes the
/// client's slot, then copies the previous owners' hits to the new owners.
async fn finish(
    warm: Warm,
    asked: Vec<(Vec<u16>, oneshot::Receiver<Answer>)>,
    router: Arc<Router>,
    mut links: Links,
    queue: Arc<ReplyQueue>,
    seq: u64,
) {
    let key_at = |p: usize| &warm.keys[p].0[..];
    let mut items: Vec<Option<bytes::Bytes>> = vec![None; warm.keys.len()];
    for (positions, answer) in asked {
        // A failed new owner leaves its keys to their previous owners.
        if let Ok(Ok(bytes)) = answer.await {
            if !reply::is_error_line(&bytes) {
                place_values(&bytes, &positions, key_at, &mut items);
            }
        }
    }
    // Misses whose key moved, grouped by previous owner.
    let mut retry: Vec<(usize, Vec<u16>)> = Vec::new();
    for (pos, (_, previous)) in warm.keys.iter().enumerate() {
        if let (None, Some(prev)) = (&items[pos], previous) {
            match retry.iter_mut().find(|(b, _)| b == prev) {
                Some((_, v)) => v.push(pos as u16),
                None => retry.push((*prev, vec![pos as u16])),
            }
        }
    }
    let mut copies: Vec<(usize, bytes::Bytes)> = Vec::new();
    for (prev, positions) in retry {
        let (tx, rx) = oneshot::channel();
        links
            .send(
                &router,
                prev,
                ask(&warm, &positions),
                ReplyTarget::Oneshot(tx),
            )
            .await;
        let bytes = match rx.await.unwrap_or(Err(UpstreamError::Closed)) {
            Ok(bytes) if !reply::is_error_line(&bytes) => bytes,
            // A failed previous owner: its keys stay misses.
            _ => continue,
        };
        let before: Vec<bool> = positions
            .iter()
            .map(|&i| items[i as usize].is_some())
            .collect();
        place_values(&bytes, &positions, key_at, &mut items);
        for (&pos, was) in positions.iter().zip(before) {
            if let (false, Some(item)) = (was, &items[pos as usize]) {
                router.backends()[prev].stats.warmup_hits.inc();
                let owner = router.owner(&warm.keys[pos as usize].0);
                copies.push((owner, item.clone()));
            }
        }
    }
    let mut merged = BytesMut::new();
    for item in items.iter().flatten() {
        merged.put_slice(item);
    }
    if !warm.batch {
        merged.put_slice(reply::END);
    }
    queue.complete(seq, Ok(merged.freeze()), Fill::default());
    let ttl = router.config.warmup_ttl;
    for (owner, item) in copies {
        let add = Message::Add { item, ttl };
        links.send(&router, owner, add, ReplyTarget::Discard).await;
    }
}

/// Reserves the client's slot for an `mg` whose key moved, asks the new owner now and leaves
/// the rest to a task of its own: a miss (or a failure) is asked again of the previous owner,
/// whose answer is the client's; a hit there is copied to the new owner.
pub async fn begin_meta(
    warm: WarmMeta,
    reserve: usize,
    router: &Arc<Router>,
    links: &mut Links,
    queue: &Arc<ReplyQueue>,
) {
    let seq = queue.reserve(reserve);
    let (tx, rx) = oneshot::channel();
    let ask = Message::Request(warm.request.clone());
    links
        .send(router, warm.owner, ask, ReplyTarget::Oneshot(tx))
        .await;
    tokio::spawn(finish_meta(
        warm,
        rx,
        router.clone(),
        links.clone(),
        queue.clone(),
        seq,
    ));
}

/// Whether a meta answer is a miss (an embedded owner leaves a quiet miss out altogether).
fn meta_miss(answer: &Answer) -> bool {
    match answer {
        Ok(bytes) => bytes.is_empty() || bytes.starts_with(b"EN") || reply::is_error_line(bytes),
        Err(_) => true,
    }
}

async fn finish_meta(
    warm: WarmMeta,
    asked: oneshot::Receiver<Answer>,
    router: Arc<Router>,
    mut links: Links,
    queue: Arc<ReplyQueue>,
    seq: u64,
) {
    let first = asked.await.unwrap_or(Err(UpstreamError::Closed));
    if !meta_miss(&first) {
        queue.complete(seq, first, warm.fill);
        return;
    }
    let (tx, rx) = oneshot::channel();
    let ask = Message::Request(warm.request.clone());
    links
        .send(&router, warm.previous, ask, ReplyTarget::Oneshot(tx))
        .await;
    let second = rx.await.unwrap_or(Err(UpstreamError::Closed));
    let hit = !meta_miss(&second);
    // The previous owner failed too: the new owner's answer stands.
    let answer = match (&first, &second) {
        (_, Ok(_)) => second,
        (Ok(_), Err(_)) => first,
        (Err(_), Err(_)) => second,
    };
    queue.complete(seq, answer, warm.fill);
    if !hit {
        return;
    }
    router.backends()[warm.previous].stats.warmup_hits.inc();
    let key = warm.request.key_token();
    let (tx, rx) = oneshot::channel();
    let fetch = Message::MetaFetch(key.clone());
    links
        .send(&router, warm.previous, fetch, ReplyTarget::Oneshot(tx))
        .await;
    let Ok(Ok(item)) = rx.await else { return };
    let Some((flags, ttl, data)) = meta_value(&item) else {
        return;
    };
    // As for text retrievals: the copy lives at most `warmup_ttl`.
    let limit = router.config.warmup_ttl;
    let ttl = match ttl {
        Some(t) if t > 0 => (t as u32).min(limit),
        _ => limit,
    };
    let add = Message::MetaAdd {
        key,
        flags,
        ttl,
        data,
    };
    links
        .send(&router, warm.owner, add, ReplyTarget::Discard)
        .await;
}

/// The client flags, remaining TTL (None: no expiry) and value of `VA <len> f<flags> t<ttl>`.
fn meta_value(reply: &bytes::Bytes) -> Option<(u32, Option<i64>, bytes::Bytes)> {
    let nl = memchr::memchr(b'\n', reply)?;
    let line = reply[..nl].strip_suffix(b"\r")?;
    let mut tokens = line.split(|b| *b == b' ').filter(|t| !t.is_empty());
    if tokens.next()? != b"VA" {
        return None;
    }
    let len: usize = std::str::from_utf8(tokens.next()?).ok()?.parse().ok()?;
    let (mut flags, mut ttl) = (0, None);
    for t in tokens {
        let value = std::str::from_utf8(&t[1..]).ok();
        match t[0] {
            b'f' => flags = value?.parse().ok()?,
            b't' => ttl = Some(value?.parse::<i64>().ok()?).filter(|t| *t >= 0),
            _ => {}
        }
    }
    let data = reply.slice(nl + 1..nl + 1 + len);
    (reply.len() == nl + 1 + len + 2).then_some((flags, ttl, data))
}
