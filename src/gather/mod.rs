//! Replies assembled from several backend answers: a multi-key retrieval split over backends
//! and merged back in the client's key order (or one batch of a retrieval handed out in
//! batches), a command sent to every backend, and `stats` subcommands combined over a pool
//! ([`stats`]).

pub mod stats;

use std::sync::Arc;

use bytes::Bytes;

use crate::config::RetrievalFailure;
use crate::counters::RouteStats;
use crate::error::{self, Answer, UpstreamError};
use crate::protocol::meta::Quiet;
use crate::protocol::reply::{self, value_items, Reply};
use stats::{combine, Merge};

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
        /// The first failure seen, when failures are errors.
        error: Option<UpstreamError>,
        /// Fragments still outstanding.
        remaining: usize,
        /// How a failed fragment is answered.
        policy: RetrievalFailure,
        /// One batch of a streamed retrieval: no `END` of its own, and a failure ends the
        /// whole reply.
        batch: bool,
    },
    /// A command sent to every backend: `OK` only if every backend said `OK`.
    Broadcast {
        /// The first non-`OK` answer.
        error: Option<Reply>,
        /// Backends still outstanding.
        remaining: usize,
    },
    /// A write sent to every copy of a replicated route: the worst answer wins (mcrouter's
    /// AllSyncRoute: a failure, then a refusal — not stored, not found, exists — then a
    /// success; the first copy's among equals); copies answering differently are counted.
    Replicated {
        /// Each copy's answer, in copy order.
        answers: Vec<Option<Answer>>,
        /// Copies still outstanding.
        remaining: usize,
        /// What the client asked not to get (meta `q`).
        quiet: Quiet,
        /// The route's counters.
        stats: Arc<RouteStats>,
    },
    /// A `stats` subcommand sent to every backend, its answers combined.
    Stats {
        /// How the answers combine.
        merge: Merge,
        /// Each backend's answer, in pool order.
        answers: Vec<Answer>,
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
            batch: false,
        }
    }

    /// A gather for one batch of keys of a streamed retrieval.
    pub fn batch(keys: Vec<Bytes>, fragments: Vec<Vec<u16>>, policy: RetrievalFailure) -> Self {
        let mut g = Self::multi_get(keys, fragments, policy);
        if let Gather::MultiGet { batch, .. } = &mut g {
            *batch = true;
        }
        g
    }

    /// Whether this is a multi-key retrieval split over several backends (as counted in
    /// `split_retrievals`).
    pub fn is_split(&self) -> bool {
        matches!(self, Gather::MultiGet { batch: false, fragments, .. } if fragments.len() > 1)
    }

    /// A gather for a `stats` subcommand sent to `n` backends.
    pub fn stats(n: usize, merge: Merge) -> Self {
        Gather::Stats {
            merge,
            answers: vec![Err(UpstreamError::Closed); n],
            remaining: n,
        }
    }

    /// A gather for a write to `n` copies.
    pub fn replicated(n: usize, quiet: Quiet, stats: Arc<RouteStats>) -> Self {
        Gather::Replicated {
            answers: vec![None; n],
            remaining: n,
            quiet,
            stats,
        }
    }

    /// A gather for a broadcast to `n` backends.
    pub fn broadcast(n: usize) -> Self {
        Gather::Broadcast {
            error: None,
            remaining: n,
        }
    }

    /// Adds one fragment's answer; true when the gather is complete.
    pub fn add(&mut self, part: usize, answer: Answer) -> bool {
        match self {
            Gather::MultiGet {
                keys,
                fragments,
                items,
                error,
                remaining,
                policy,
                ..
            } => {
                match answer {
                    Ok(bytes) if !reply::is_error_line(&bytes) => {
                        place_values(&bytes, &fragments[part], |p| &keys[p], items);
                    }
                    // A reply refused for the client's memory fails the retrieval whatever
                    // the policy, as memcached fails a get it has no memory for.
                    Err(e @ UpstreamError::ClientMemory) => *error = Some(e),
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
                    Err(e) => {
                        error.get_or_insert(Reply::Static(error::reply(e)));
                    }
                }
                *remaining -= 1;
                *remaining == 0
            }
            Gather::Stats {
                answers, remaining, ..
            } => {
                answers[part] = answer;
                *remaining -= 1;
                *remaining == 0
            }
            Gather::Replicated {
                answers, remaining, ..
            } => {
                answers[part] = Some(answer);
                *remaining -= 1;
                *remaining == 0
            }
        }
    }

    /// The reply made of every answer.
    pub fn finish(self) -> Reply {
        match self {
            Gather::MultiGet {
                items,
                error: None,
                batch,
                ..
            } => {
                let mut parts: Vec<Bytes> = items.into_iter().flatten().collect();
                if !batch {
                    parts.push(Bytes::from_static(reply::END));
                }
                Reply::Parts(parts)
            }
            Gather::MultiGet {
                error: Some(e),
                batch: true,
                ..
            } => Reply::StreamError(error::reply(e)),
            Gather::MultiGet { error: Some(e), .. } => Reply::Static(error::reply(e)),
            Gather::Broadcast { error, .. } => error.unwrap_or(Reply::Static(reply::OK)),
            Gather::Stats { merge, answers, .. } => Reply::Data(combine(merge, &answers)),
            Gather::Replicated {
                answers,
                quiet,
                stats,
                ..
            } => {
                let answers: Vec<Answer> = answers
                    .into_iter()
                    .map(|a| a.unwrap_or(Err(UpstreamError::Closed)))
                    .collect();
                if answers.windows(2).any(|w| w[0] != w[1]) {
                    stats.disagreements.inc();
                }
                let worst = answers
                    .into_iter()
                    .enumerate()
                    .max_by_key(|(i, a)| (severity(a), std::cmp::Reverse(*i)))
                    .map(|(_, a)| a)
                    .expect("at least one copy");
                match worst {
                    Ok(bytes) if quiet.drops(&bytes) => Reply::Static(b""),
                    Ok(bytes) => Reply::Data(bytes),
                    Err(e) => Reply::Static(error::reply(e)),
                }
            }
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

/// How bad a copy's answer to a write is: a failure, a refusal, a success.
fn severity(answer: &Answer) -> u8 {
    match answer {
        Err(_) => 3,
        Ok(b) if reply::is_error_line(b) => 3,
        Ok(b) => {
            let refusals: [&[u8]; 6] =
                [b"NOT_STORED", b"NOT_FOUND", b"EXISTS", b"NS", b"NF", b"EX"];
            match refusals.iter().any(|r| b.starts_with(r)) {
                true => 2,
                false => 1,
            }
        }
    }
}

/// The failure an answer stands for: its own, or a backend's error line taken as one.
fn answer_error(answer: &Answer) -> UpstreamError {
    match answer {
        Err(e) => *e,
        Ok(_) => UpstreamError::Protocol,
    }
}
