//! The router: decides, for each request, which backend(s) of a pool answer it.
//!
//! Single-key commands go to the key's owner on the ring; a multi-key retrieval goes whole to
//! one backend when all its keys live there, and is otherwise split into one request per
//! backend; flush_all goes to every backend; the rest is answered locally.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::embedded::Store;
use crate::generation::PoolState;
use crate::protocol::request::{Command, Request};
use crate::ring::Ring;
use crate::upstream::{BackendKind, BackendPool, BackendState, ConnSettings};

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// To one backend, as received.
    One(usize),
    /// Split: per backend, the positions of the client's keys it owns (in client order).
    Split(Vec<(usize, Vec<u16>)>),
    /// To every backend.
    All,
    /// Answered by memroute itself.
    Local,
}

/// One backend as a worker sees it.
pub enum Backend {
    /// A server over TCP, through this worker's connection pool.
    Remote(Arc<BackendPool>),
    /// The embedded cache, executed inline.
    Embedded(Arc<BackendState>, Arc<Store>),
}

impl Backend {
    /// The shared state of the backend.
    pub fn state(&self) -> &Arc<BackendState> {
        match self {
            Backend::Remote(pool) => pool.backend(),
            Backend::Embedded(state, _) => state,
        }
    }
}

/// Warm-up: where keys lived before the last ring change, until when.
struct PreviousRing {
    ring: Arc<Ring>,
    /// Old ring index → index in `Router::backends`.
    owners: Vec<usize>,
    until: Instant,
}

/// One pool's routing state in one worker, built from a [`Generation`]'s pool: the ring and
/// this worker's connection pools. Immutable; a change builds a new one.
pub struct Router {
    /// The pool's settings.
    pub config: PoolConfig,
    /// The generation it was built from.
    pub generation: u64,
    ring: Arc<Ring>,
    /// Ring index → index in `backends`.
    ring_backends: Vec<usize>,
    /// The pool's backends in config order, then any previous owners kept for warm-up.
    backends: Vec<Backend>,
    previous: Option<PreviousRing>,
}

impl Router {
    /// Builds this worker's router for `pool`, reusing `old`'s connection pools for backends
    /// present in both (so their connections stay open).
    pub fn new(pool: &PoolState, generation: u64, old: Option<&Router>) -> Router {
        let config = pool.config.clone();
        let settings = ConnSettings {
            connect_timeout: config.connect_timeout,
            queue_depth: 4096,
            max_in_flight: 8192,
            timeout: config.timeout,
            // Values are stored through memroute up to `item_size_max`; Tokyo Tyrant pools
            // with preserved flags add a 4-byte prefix.
            max_value: config.item_size_max + 4,
        };
        let make = |s: &Arc<BackendState>| -> Backend {
            let reused = old.and_then(|o| {
                o.backends
                    .iter()
                    .find(|b| Arc::ptr_eq(b.state(), s))
                    .map(|b| match b {
                        Backend::Remote(p) => Backend::Remote(p.clone()),
                        Backend::Embedded(st, store) => {
                            Backend::Embedded(st.clone(), store.clone())
                        }
                    })
            });
            reused.unwrap_or_else(|| match &s.kind {
                BackendKind::Remote(addr) => Backend::Remote(Arc::new(BackendPool::new(
                    *addr,
                    s.clone(),
                    settings,
                    config.server_connections,
                ))),
                BackendKind::Embedded(store) => Backend::Embedded(s.clone(), store.clone()),
            })
        };
        let mut backends: Vec<Backend> = pool.backends.iter().map(make).collect();
        let previous = pool.previous.as_ref().map(|p| {
            let owners = p
                .backends
                .iter()
                .map(
                    |s| match backends.iter().position(|b| Arc::ptr_eq(b.state(), s)) {
                        Some(i) => i,
                        None => {
                            backends.push(make(s));
                            backends.len() - 1
                        }
                    },
                )
                .collect();
            PreviousRing {
                ring: p.ring.clone(),
                owners,
                until: p.until,
            }
        });
        Router {
            config,
            generation,
            ring: pool.ring.clone(),
            ring_backends: pool.ring_backends.clone(),
            backends,
            previous,
        }
    }

    /// The backends: the pool's in config order, then previous owners kept for warm-up.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The backends on the ring now, in config order (what a broadcast reaches).
    pub fn pool_backends(&self) -> usize {
        self.config.servers.len()
    }

    /// The backend owning `key`.
    pub fn owner(&self, key: &[u8]) -> usize {
        self.ring_backends[self.ring.server_for(key)]
    }

    /// During warm-up, the backend that owned `key` before the last ring change, if it
    /// differs from the owner now.
    pub fn previous_owner(&self, key: &[u8]) -> Option<usize> {
        let p = self.previous.as_ref()?;
        if Instant::now() >= p.until {
            return None;
        }
        let before = p.owners[p.ring.server_for(key)];
        (before != self.owner(key)).then_some(before)
    }

    /// Whether a warm-up period is running.
    pub fn warming(&self) -> bool {
        self.previous
            .as_ref()
            .is_some_and(|p| Instant::now() < p.until)
    }

    /// The value size to assume for a key of this pool when reserving reply room: the
    /// largest any of its backends was recently seen to hold.
    pub fn value_estimate(&self) -> usize {
        self.ring_backends
            .iter()
            .map(|&b| self.backends[b].state().value_sizes.estimate())
            .max()
            .unwrap_or(0)
    }

    /// Notes the size of a value written through memroute to `key`'s owner.
    pub fn record_value_size(&self, key: &[u8], len: usize) {
        self.backends[self.owner(key)]
            .state()
            .value_sizes
            .record(len);
    }

    /// Decides where `req` goes.
    pub fn route(&self, req: &Request) -> Route {
        match req.command {
            c if c.is_single_key() => Route::One(self.owner(req.key())),
            c if c.is_retrieval() => self.route_retrieval(req),
            Command::FlushAll | Command::CacheMemlimit => Route::All,
            Command::Stats if crate::stats::merge::forwarded(req.key()).is_some() => Route::All,
            _ => Route::Local,
        }
    }

    fn route_retrieval(&self, req: &Request) -> Route {
        let mut keys = req.keys();
        let first = self.owner(keys.next().unwrap_or_default());
        if keys.all(|k| self.owner(k) == first) {
            return Route::One(first);
        }
        Route::Split(self.group_by_owner(req.keys()))
    }

    /// The positions of `keys` grouped by the backend that owns them, in first-seen order.
    pub fn group_by_owner<'k>(
        &self,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Vec<(usize, Vec<u16>)> {
        let mut groups: Vec<(usize, Vec<u16>)> = Vec::new();
        for (pos, key) in keys.enumerate() {
            let b = self.owner(key);
            match groups.iter_mut().find(|(o, _)| *o == b) {
                Some((_, positions)) => positions.push(pos as u16),
                None => groups.push((b, vec![pos as u16])),
            }
        }
        groups
    }
}

/// Builds the request for one fragment of a split retrieval: the command text before the
/// keys (`get `, `gat 100 `, …) followed by the keys at `positions`.
pub fn fragment_request<'k>(
    prefix: &[u8],
    positions: &[u16],
    key_at: impl Fn(usize) -> &'k [u8],
) -> Bytes {
    let len = prefix.len()
        + positions
            .iter()
            .map(|&p| key_at(p as usize).len() + 1)
            .sum::<usize>()
        + 2;
    let mut out = BytesMut::with_capacity(len);
    out.put_slice(prefix);
    for (i, &p) in positions.iter().enumerate() {
        if i > 0 {
            out.put_u8(b' ');
        }
        out.put_slice(key_at(p as usize));
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::{ClientCodec, CodecLimits, Decoded};

    fn request(text: &str) -> Request {
        let mut codec = ClientCodec::new(CodecLimits::default());
        let mut buf = BytesMut::from(text);
        match codec.decode_item(&mut buf) {
            Some(Decoded::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fragments_keep_the_command_and_exptime() {
        let req = request("gat 100 a bb c\r\n");
        let keys: Vec<Bytes> = req.key_slices().collect();
        let prefix = &req.line()[..req.keys_start as usize];
        assert_eq!(
            fragment_request(prefix, &[0, 2], |p| &keys[p]),
            "gat 100 a c\r\n"
        );
        let req = request("gets   x y\r\n");
        let keys: Vec<Bytes> = req.key_slices().collect();
        let prefix = &req.line()[..req.keys_start as usize];
        assert_eq!(fragment_request(prefix, &[1], |p| &keys[p]), "gets   y\r\n");
    }
}
