//! Requests that may be asked again elsewhere, carried out: a retrieval whose keys each have
//! a chain of backends ([`Retrieval`]: warm-up's previous owners, a replicated route's other
//! copies, a gutter pool), one request along a chain ([`Chain`]), and a write whose success
//! sends more ([`Conditional`]).
//!
//! Each reserves the client's reply slot and sends its first requests in the client's task
//! (in request order, over the client's own links); the rest runs in a task of its own that
//! fills the slot. A key (or request) moves on when its backend fails (and, where the chain
//! says so, when it misses); a miss from a working backend is preferred over a later
//! failure. Warm-up's hits found further along are copied back to the first backend with
//! `add` (`ms … ME` for meta), which never overwrites a newer value written meanwhile.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::backend::{Message, ReplyTarget};
use crate::config::RetrievalFailure;
use crate::error::UpstreamError;
use crate::gather::{place_values, Gather};
use crate::links::Links;
use crate::plan::{Chain, Conditional, Dest, Retrieval, Retry};
use crate::protocol::reply;
use crate::reply_queue::{Answer, ReplyQueue};
use crate::route::Routes;

/// Sends `message` to `dest`; its answer comes back on the returned receiver.
async fn ask(
    links: &mut Links,
    routes: &Routes,
    dest: Dest,
    message: Message,
) -> oneshot::Receiver<Answer> {
    let (tx, rx) = oneshot::channel();
    links
        .send(&routes.routers, dest, message, ReplyTarget::Oneshot(tx))
        .await;
    rx
}

/// An answer that is a failure: memroute's own, or an error line the backend sent for
/// itself (a `CLIENT_ERROR` is about the request, which another backend would refuse alike).
fn failed(answer: &Answer) -> bool {
    match answer {
        Err(_) => true,
        Ok(bytes) => bytes.starts_with(b"SERVER_ERROR") || bytes.as_ref() == reply::ERROR,
    }
}

/// An answer that is a miss: a retrieval's bare `END`, a meta `EN` (or nothing, from an
/// embedded cache that left a quiet miss out).
fn missed(answer: &Answer) -> bool {
    match answer {
        Ok(bytes) => bytes.is_empty() || bytes.as_ref() == reply::END || bytes.starts_with(b"EN"),
        Err(_) => false,
    }
}

/// Whether an answer to a write is a success (a conditional write's others then follow).
fn succeeded(answer: &Answer) -> bool {
    match answer {
        Ok(b) => {
            [&b"STORED"[..], b"DELETED", b"TOUCHED", b"HD", b"VA "]
                .iter()
                .any(|p| b.starts_with(p))
                || b.first().is_some_and(u8::is_ascii_digit)
        }
        Err(_) => false,
    }
}

/// Reserves the client's slot for `r` (a gather over all its keys, so a batch ends or
/// fails as gathers do), asks every key's first backend, and leaves the rest to a task.
pub async fn retrieve(
    r: Retrieval,
    reserve: usize,
    routes: &Arc<Routes>,
    links: &mut Links,
    queue: &Arc<ReplyQueue>,
) {
    let all: Vec<u16> = (0..r.keys.len() as u16).collect();
    let gather = match r.batch {
        true => Gather::batch(r.keys.clone(), vec![all], r.policy),
        false => Gather::multi_get(r.keys.clone(), vec![all], r.policy),
    };
    let seq = queue.reserve_gather(gather, reserve);
    let pending: Vec<u16> = (0..r.keys.len() as u16).collect();
    let asked = ask_keys(&r, &pending, &vec![0; r.keys.len()], routes, links).await;
    tokio::spawn(finish_retrieval(
        r,
        asked,
        routes.clone(),
        links.clone(),
        queue.clone(),
        seq,
    ));
}

/// Asks each of the keys at `positions` of the backend at its chain's `step`, one request
/// per backend.
async fn ask_keys(
    r: &Retrieval,
    positions: &[u16],
    step: &[u8],
    routes: &Routes,
    links: &mut Links,
) -> Vec<(Vec<u16>, oneshot::Receiver<Answer>)> {
    let mut groups: Vec<(Dest, Vec<u16>)> = Vec::new();
    for &p in positions {
        let d = r.chains[p as usize].steps[step[p as usize] as usize];
        match groups.iter_mut().find(|(g, _)| *g == d) {
            Some((_, v)) => v.push(p),
            None => groups.push((d, vec![p])),
        }
    }
    let mut asked = Vec::with_capacity(groups.len());
    for (dest, group) in groups {
        let message = Message::Retrieve {
            command: r.command,
            exptime: r.exptime,
            prefix: r.prefix.clone(),
            keys: group.iter().map(|&p| r.keys[p as usize].clone()).collect(),
        };
        asked.push((group, ask(links, routes, dest, message).await));
    }
    asked
}

async fn finish_retrieval(
    r: Retrieval,
    mut asked: Vec<(Vec<u16>, oneshot::Receiver<Answer>)>,
    routes: Arc<Routes>,
    mut links: Links,
    queue: Arc<ReplyQueue>,
    seq: u64,
) {
    let n = r.keys.len();
    let mut items: Vec<Option<Bytes>> = vec![None; n];
    let mut step = vec![0u8; n];
    // A key that missed on a working backend stays a miss whatever fails after it.
    let mut missed_once = vec![false; n];
    let mut error: Option<UpstreamError> = None;
    let mut copies: Vec<(Dest, Bytes)> = Vec::new();
    loop {
        let mut next: Vec<u16> = Vec::new();
        for (positions, rx) in asked {
            let answer = rx.await.unwrap_or(Err(UpstreamError::Closed));
            let fail = failed(&answer);
            if let Ok(bytes) = &answer {
                if !fail {
                    place_values(bytes, &positions, |p| &r.keys[p], &mut items);
                }
            }
            for &p in &positions {
                let i = p as usize;
                let chain = &r.chains[i];
                let at = step[i] as usize;
                if let Some(item) = &items[i] {
                    if at > 0 && chain.copy_back {
                        let found = chain.steps[at];
                        routes.router(found.pool).backends()[found.backend]
                            .stats
                            .warmup_hits
                            .inc();
                        copies.push((chain.steps[0], item.clone()));
                    }
                    continue;
                }
                let more = at + 1 < chain.steps.len();
                let retry = match fail {
                    true => chain.retry.errors,
                    false => {
                        missed_once[i] = true;
                        chain.retry.misses
                    }
                };
                if retry && more {
                    if let Some(s) = &chain.stats {
                        s.failovers.inc();
                    }
                    step[i] += 1;
                    next.push(p);
                } else if fail && !missed_once[i] {
                    let e = match &answer {
                        Err(e) => *e,
                        Ok(_) => UpstreamError::Protocol,
                    };
                    // A reply refused for the client's memory fails the retrieval whatever
                    // the policy.
                    if r.policy == RetrievalFailure::Error || e == UpstreamError::ClientMemory {
                        error.get_or_insert(e);
                    }
                }
            }
        }
        if next.is_empty() {
            break;
        }
        asked = ask_keys(&r, &next, &step, &routes, &mut links).await;
    }
    let answer = match error {
        Some(e) => Err(e),
        None => {
            let mut merged = BytesMut::new();
            for item in items.iter().flatten() {
                merged.put_slice(item);
            }
            Ok(merged.freeze())
        }
    };
    queue.complete_part(seq, 0, answer);
    for (dest, item) in copies {
        let add = Message::Add {
            item,
            ttl: r.copy_ttl,
        };
        links
            .send(&routes.routers, dest, add, ReplyTarget::Discard)
            .await;
    }
}

/// Reserves the client's slot for `c` (if it has one), sends the request to its first
/// backend and leaves the rest to a task.
pub async fn chain(
    c: Chain,
    reserve: usize,
    routes: &Arc<Routes>,
    links: &mut Links,
    queue: &Arc<ReplyQueue>,
) {
    let seq = c.fill.map(|_| queue.reserve(reserve));
    let (dest, message) = c.steps[0].clone();
    let first = ask(links, routes, dest, message).await;
    tokio::spawn(finish_chain(
        c,
        first,
        routes.clone(),
        links.clone(),
        queue.clone(),
        seq,
    ));
}

async fn finish_chain(
    c: Chain,
    first: oneshot::Receiver<Answer>,
    routes: Arc<Routes>,
    mut links: Links,
    queue: Arc<ReplyQueue>,
    seq: Option<u64>,
) {
    let mut answer = first.await.unwrap_or(Err(UpstreamError::Closed));
    let mut at = 0;
    let mut miss: Option<Answer> = None;
    while at + 1 < c.steps.len() && moves_on(c.retry, &answer) {
        if missed(&answer) {
            miss = Some(answer.clone());
        }
        if let Some(s) = &c.stats {
            s.failovers.inc();
        }
        at += 1;
        let (dest, message) = c.steps[at].clone();
        answer = ask(&mut links, &routes, dest, message)
            .await
            .await
            .unwrap_or(Err(UpstreamError::Closed));
    }
    // A miss from a working backend is a better answer than a later failure.
    if failed(&answer) {
        if let Some(m) = miss {
            answer = m;
        }
    }
    let hit = at > 0 && !failed(&answer) && !missed(&answer);
    if let (Some(seq), Some(fill)) = (seq, c.fill) {
        queue.complete(seq, answer, fill);
    }
    if let (true, Some((key, ttl))) = (hit, &c.copy_back) {
        let found = c.steps[at].0;
        routes.router(found.pool).backends()[found.backend]
            .stats
            .warmup_hits
            .inc();
        copy_meta(&routes, &mut links, found, c.steps[0].0, key.clone(), *ttl).await;
    }
}

/// Whether `answer` sends a request along its chain.
fn moves_on(retry: Retry, answer: &Answer) -> bool {
    (retry.errors && failed(answer)) || (retry.misses && missed(answer))
}

/// Copies a meta-read key from `from` to `to` (warm-up): `mg <key> v f t` there, then
/// `ms … ME` here with its flags and a TTL no longer than the item's or `limit`.
async fn copy_meta(
    routes: &Routes,
    links: &mut Links,
    from: Dest,
    to: Dest,
    key: crate::protocol::KeyToken,
    limit: u32,
) {
    let fetched = ask(links, routes, from, Message::MetaFetch(key.clone())).await;
    let Ok(Ok(item)) = fetched.await else { return };
    let Some((flags, ttl, data)) = meta_value(&item) else {
        return;
    };
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
        .send(&routes.routers, to, add, ReplyTarget::Discard)
        .await;
}

/// The client flags, remaining TTL (None: no expiry) and value of `VA <len> f<flags> t<ttl>`.
fn meta_value(reply: &Bytes) -> Option<(u32, Option<i64>, Bytes)> {
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

/// Reserves the client's slot for `c`, sends its write now, and leaves the rest to a task.
pub async fn conditional(
    c: Conditional,
    reserve: usize,
    routes: &Arc<Routes>,
    links: &mut Links,
    queue: &Arc<ReplyQueue>,
) {
    let seq = c.fill.map(|_| queue.reserve(reserve));
    let (dest, message) = c.first;
    let rx = ask(links, routes, dest, message).await;
    let (routes, mut links, queue) = (routes.clone(), links.clone(), queue.clone());
    tokio::spawn(async move {
        let answer = rx.await.unwrap_or(Err(UpstreamError::Closed));
        let ok = succeeded(&answer);
        if let (Some(seq), Some(fill)) = (seq, c.fill) {
            queue.complete(seq, answer, fill);
        }
        if ok {
            for (dest, message) in c.then {
                links
                    .send(&routes.routers, dest, message, ReplyTarget::Discard)
                    .await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_told_apart() {
        let ok = |s: &'static [u8]| -> Answer { Ok(Bytes::from_static(s)) };
        assert!(failed(&Err(UpstreamError::Timeout)));
        assert!(failed(&ok(b"SERVER_ERROR out of memory\r\n")));
        assert!(!failed(&ok(b"CLIENT_ERROR bad data chunk\r\n")));
        assert!(missed(&ok(b"END\r\n")) && missed(&ok(b"EN\r\n")) && missed(&ok(b"")));
        assert!(!missed(&ok(b"VALUE k 0 1\r\nx\r\nEND\r\n")));
        assert!(succeeded(&ok(b"STORED\r\n")) && succeeded(&ok(b"HD c5\r\n")));
        assert!(succeeded(&ok(b"12\r\n")));
        assert!(!succeeded(&ok(b"EXISTS\r\n")) && !succeeded(&ok(b"NS\r\n")));
        let both = Retry::ERRORS_AND_MISSES;
        assert!(moves_on(both, &ok(b"EN\r\n")) && !moves_on(Retry::ERRORS, &ok(b"EN\r\n")));
    }
}
