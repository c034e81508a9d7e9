//! The router: one pool's routing state in one worker, built from a
//! [`Generation`](crate::generation::Generation)'s pool: the ring, the backends (and, during
//! warm-up, where keys lived before the last ring change), and how this worker reaches them.
//! Immutable; a change builds a new one. Its decisions about each request (`plan`) are in
//! their own module.

use std::sync::Arc;

use tokio::time::Instant;

use crate::backend::message::Dialect;
use crate::backend::{Backend, ConnSettings, Connections, Kind};
use crate::config::{BackendProtocol, PoolConfig};
use crate::generation::PoolState;
use crate::ring::Ring;

/// Warm-up: where keys lived before the last ring change, until when.
struct PreviousRing {
    ring: Arc<Ring>,
    /// Old ring index → index in `Router::backends`.
    owners: Vec<usize>,
    until: Instant,
}

/// One pool's routing state in one worker.
pub struct Router {
    /// The pool's settings.
    pub config: PoolConfig,
    /// The pool's index in its generation.
    pub pool: usize,
    /// The worker it serves.
    worker: usize,
    ring: Arc<Ring>,
    /// Ring index → index in `backends`.
    ring_backends: Vec<usize>,
    /// The pool's backends in config order, then any previous owners kept for warm-up.
    backends: Vec<Arc<Backend>>,
    previous: Option<PreviousRing>,
    /// What the pool's servers speak.
    pub dialect: Dialect,
    settings: ConnSettings,
}

impl Router {
    /// Worker `worker`'s router for `pool`, the generation's pool number `index`.
    pub fn new(pool: &PoolState, worker: usize, index: usize) -> Router {
        let config = pool.config.clone();
        let settings = ConnSettings {
            connect_timeout: config.connect_timeout,
            queue_depth: 4096,
            max_in_flight: 8192,
            timeout: config.timeout,
            // Values are stored through memroute up to `item_size_max`; Tokyo Tyrant pools
            // with preserved flags add a 4-byte prefix.
            max_value: config.item_size_max + 4,
            tls: config.server_tls.clone(),
        };
        let mut backends: Vec<Arc<Backend>> = pool.backends.clone();
        let previous = pool.previous.as_ref().map(|p| {
            let owners = p
                .backends
                .iter()
                .map(|s| match backends.iter().position(|b| Arc::ptr_eq(b, s)) {
                    Some(i) => i,
                    None => {
                        backends.push(s.clone());
                        backends.len() - 1
                    }
                })
                .collect();
            PreviousRing {
                ring: p.ring.clone(),
                owners,
                until: p.until,
            }
        });
        let dialect = match config.protocol {
            BackendProtocol::Memcached => Dialect::Memcached,
            BackendProtocol::TokyoTyrant => Dialect::Tyrant {
                preserve_flags: config.preserve_flags,
            },
        };
        Router {
            config,
            pool: index,
            worker,
            ring: pool.ring.clone(),
            ring_backends: pool.ring_backends.clone(),
            backends,
            previous,
            dialect,
            settings,
        }
    }

    /// The backends: the pool's in config order, then previous owners kept for warm-up.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// The backends on the ring now, in config order (what a broadcast reaches).
    pub fn pool_backends(&self) -> usize {
        self.config.servers.len()
    }

    /// This worker's connections to remote backend `b` (none for an embedded one).
    pub fn connections(&self, b: usize) -> Option<&Connections> {
        let backend = &self.backends[b];
        let Kind::Remote(addr) = backend.kind else {
            return None;
        };
        let size = self.config.server_connections;
        Some(backend.connections(self.worker, || (addr, self.settings.clone(), size)))
    }

    /// The backend owning `key`.
    pub fn owner(&self, key: &[u8]) -> usize {
        self.ring_backends[self.ring.server_for(key)]
    }

    /// During warm-up, the backend that owned `key` before the last ring change, if it
    /// differs from `owner` (its owner now).
    pub fn previous_owner(&self, key: &[u8], owner: usize) -> Option<usize> {
        let p = self.previous.as_ref()?;
        if Instant::now() >= p.until {
            return None;
        }
        let before = p.owners[p.ring.server_for(key)];
        (before != owner).then_some(before)
    }

    /// Whether a warm-up period is running.
    pub fn warming(&self) -> bool {
        self.previous
            .as_ref()
            .is_some_and(|p| Instant::now() < p.until)
    }

    /// The value size to assume for a key of this pool when sizing batches: the largest any
    /// of its backends was recently seen to hold.
    pub fn value_estimate(&self) -> usize {
        self.ring_backends
            .iter()
            .map(|&b| self.backends[b].value_sizes.estimate())
            .max()
            .unwrap_or(0)
    }

    /// The owners of `keys`, and their positions grouped by owner in first-seen order: each
    /// key hashed once.
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::generation::tests::config;
    use crate::generation::Generation;

    #[tokio::test(start_paused = true)]
    async fn warm_up_lasts_exactly_its_period() {
        let first = Generation::build(config(3, "warmup = \"30s\""), None).unwrap();
        let second = Generation::build(config(4, "warmup = \"30s\""), Some(&first)).unwrap();
        assert_eq!(second.id, 2);
        // Backends present in both generations are the same objects.
        assert!(Arc::ptr_eq(
            &first.pools[0].backends[0],
            &second.pools[0].backends[0]
        ));
        let router = Router::new(&second.pools[0], 0, 0);
        let keys: Vec<String> = (0..400).map(|i| format!("key:{i}")).collect();
        let moved_from =
            |k: &String| router.previous_owner(k.as_bytes(), router.owner(k.as_bytes()));
        let moved: Vec<&String> = keys.iter().filter(|k| moved_from(k).is_some()).collect();
        // About a quarter moved, all to the new backend.
        assert!((60..140).contains(&moved.len()), "{}", moved.len());
        assert!(moved.iter().all(|k| router.owner(k.as_bytes()) == 3));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(router.warming());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!router.warming());
        assert!(keys.iter().all(|k| moved_from(k).is_none()));
    }
}
