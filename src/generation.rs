//! The routing generation: one immutable snapshot of the configuration, each pool's ring and
//! its backends, shared by every worker behind one `ArcSwap`. A reload or an ejection builds
//! the next generation beside the current one and swaps it in; workers then rebuild their
//! per-worker routers from it, keeping connections to backends present in both.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Backend, Kind};
use crate::config::{Config, Endpoint, PoolConfig, ServerConfig};
use crate::counters::RouteStats;
use crate::embedded::{Store, StoreConfig, SystemClock};
use crate::ring::{Ring, RingError, RingServer};

/// One pool's routing state.
#[derive(Debug)]
pub struct PoolState {
    /// The pool's settings.
    pub config: PoolConfig,
    /// Every backend of the pool, in config order.
    pub backends: Vec<Arc<Backend>>,
    /// The ring over the live backends.
    pub ring: Arc<Ring>,
    /// Ring index → index in `backends`.
    pub ring_backends: Vec<usize>,
    /// The ring before the last change that moved keys, during warm-up.
    pub previous: Option<Previous>,
}

impl PoolState {
    /// The pool's backends, then previous owners that are no longer in it but are kept for
    /// warm-up (with whether each is retained that way).
    pub fn all_backends(&self) -> impl Iterator<Item = (&Arc<Backend>, bool)> {
        let current = self.backends.iter().map(|b| (b, false));
        let retained = self.previous.iter().flat_map(move |p| {
            p.backends
                .iter()
                .filter(move |b| !self.backends.iter().any(|c| Arc::ptr_eq(c, b)))
                .map(|b| (b, true))
        });
        let mut seen: Vec<*const Backend> = Vec::new();
        current.chain(retained).filter(move |(b, _)| {
            let ptr = Arc::as_ptr(b);
            let new = !seen.contains(&ptr);
            seen.push(ptr);
            new
        })
    }
}

/// Where keys lived before a ring change, kept for the warm-up period.
#[derive(Debug, Clone)]
pub struct Previous {
    /// The old ring.
    pub ring: Arc<Ring>,
    /// Old ring index → backend.
    pub backends: Vec<Arc<Backend>>,
    /// When warm-up ends.
    pub until: Instant,
}

/// A full snapshot.
#[derive(Debug)]
pub struct Generation {
    /// Increases with every change.
    pub id: u64,
    /// The configuration it was built from.
    pub config: Config,
    /// The pools, in config order.
    pub pools: Vec<PoolState>,
    /// Each route's counters, by name (the same objects across generations).
    routes: Vec<(String, Arc<RouteStats>)>,
}

/// A pool's ring could not be built.
#[derive(Debug, thiserror::Error)]
#[error("pool {pool}: {source}")]
pub struct GenerationError {
    /// The pool.
    pub pool: String,
    /// Why.
    pub source: RingError,
}

/// Whether `b` is the backend `server` describes (same address, same kind), so that a new
/// generation keeps it: its connections, counters and embedded store.
fn same_endpoint(server: &ServerConfig, b: &Backend) -> bool {
    server.address() == b.name
        && match (&server.endpoint, &b.kind) {
            (Endpoint::Tcp { addr, .. }, Kind::Remote(other)) => addr == other,
            (Endpoint::Memory { .. }, Kind::Embedded(_)) => true,
            _ => false,
        }
}

fn new_backend(pool: &PoolConfig, server: &ServerConfig, workers: usize) -> Arc<Backend> {
    let store = match &server.endpoint {
        Endpoint::Tcp { .. } => None,
        Endpoint::Memory { limit, .. } => Some(Arc::new(Store::new(
            StoreConfig {
                memory_limit: *limit,
                evict: pool.memory_evict,
                item_size_max: pool.item_size_max,
            },
            Arc::new(SystemClock),
        ))),
    };
    Arc::new(Backend::new(server, store, workers))
}

/// Builds the ring over the backends not ejected (all of them if every one is).
fn live_ring(
    config: &PoolConfig,
    backends: &[Arc<Backend>],
) -> Result<(Ring, Vec<usize>), RingError> {
    let mut live: Vec<usize> = (0..backends.len())
        .filter(|&i| !backends[i].is_ejected())
        .collect();
    if live.is_empty() {
        live = (0..backends.len()).collect();
    }
    let servers: Vec<RingServer> = live
        .iter()
        .map(|&i| RingServer::new(config.servers[i].identity(), config.servers[i].weight))
        .collect();
    let ring = Ring::new(config.distribution, config.hash, config.hash_tag, &servers)?;
    Ok((ring, live))
}

impl Generation {
    /// Builds generation `id` from `config`, reusing the backends (their connections,
    /// counters and embedded stores) that `old` already has for the same endpoints.
    pub fn build(config: Config, old: Option<&Generation>) -> Result<Generation, GenerationError> {
        let id = old.map_or(1, |g| g.id + 1);
        let now = Instant::now();
        let mut pools = Vec::new();
        for pool in &config.pools {
            // Only the same pool's backends are kept, and only while it reaches them the
            // same way: a backend object carries its connections (made with its pool's TLS
            // settings) and its place on the pool's ring. Two pools listing one server each
            // have their own.
            let kept = old
                .and_then(|g| g.pools.iter().find(|p| p.config.name == pool.name))
                .filter(|p| {
                    format!("{:?}", p.config.server_tls) == format!("{:?}", pool.server_tls)
                });
            let backends: Vec<Arc<Backend>> = pool
                .servers
                .iter()
                .map(|s| {
                    kept.into_iter()
                        .flat_map(|p| p.all_backends().map(|(b, _)| b))
                        .find(|b| same_endpoint(s, b))
                        .cloned()
                        .unwrap_or_else(|| new_backend(pool, s, config.threads))
                })
                .collect();
            for b in &backends {
                b.set_ejection(pool.ejection);
            }
            let (ring, ring_backends) =
                live_ring(pool, &backends).map_err(|source| GenerationError {
                    pool: pool.name.clone(),
                    source,
                })?;
            let ring_owners: Vec<Arc<Backend>> =
                ring_backends.iter().map(|&i| backends[i].clone()).collect();
            let before = old.and_then(|g| g.pools.iter().find(|p| p.config.name == pool.name));
            let previous = match before {
                Some(b) if !pool.warmup.is_zero() && moved(b, &ring, &ring_owners) => {
                    tracing::info!(
                        "pool {}: keys moved; warm-up for {:?}: misses on a new owner are read from the previous one",
                        pool.name,
                        pool.warmup
                    );
                    Some(Previous {
                        ring: b.ring.clone(),
                        backends: b
                            .ring_backends
                            .iter()
                            .map(|&i| b.backends[i].clone())
                            .collect(),
                        until: now + pool.warmup,
                    })
                }
                // Nothing moved: an earlier warm-up still running carries on.
                Some(b) => b.previous.clone().filter(|p| p.until > now),
                None => None,
            };
            pools.push(PoolState {
                config: pool.clone(),
                backends,
                ring: Arc::new(ring),
                ring_backends,
                previous,
            });
        }
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let kept = old.and_then(|g| g.routes.iter().find(|(n, _)| n == &r.name));
                let stats = kept.map_or_else(Arc::default, |(_, s)| s.clone());
                (r.name.clone(), stats)
            })
            .collect();
        Ok(Generation {
            id,
            config,
            pools,
            routes,
        })
    }

    /// The counters of route `name` (fresh ones for a name not configured).
    pub fn route_stats(&self, name: &str) -> Arc<RouteStats> {
        self.routes
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(Arc::default, |(_, s)| s.clone())
    }

    /// Every route's counters, in config order.
    pub fn all_route_stats(&self) -> &[(String, Arc<RouteStats>)] {
        &self.routes
    }

    /// The same configuration again, with the ring rebuilt over the backends live now.
    pub fn rebuild(&self) -> Result<Generation, GenerationError> {
        Generation::build(self.config.clone(), Some(self))
    }
}

/// Whether the new ring maps keys differently from the old one: a different set of owners,
/// weights, names or hashing.
fn moved(before: &PoolState, ring: &Ring, owners: &[Arc<Backend>]) -> bool {
    let old_owners: Vec<&Arc<Backend>> = before
        .ring_backends
        .iter()
        .map(|&i| &before.backends[i])
        .collect();
    old_owners.len() != owners.len()
        || old_owners
            .iter()
            .zip(owners)
            .any(|(a, b)| !Arc::ptr_eq(a, b))
        || before.ring.points_per_server() != ring.points_per_server()
        || before.ring.hash_function() != ring.hash_function()
        || before.ring.distribution() != ring.distribution()
}

/// How long to wait between checks that ejected backends may come back.
pub const EJECTION_CHECK: Duration = Duration::from_millis(200);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::RawConfig;

    /// A pool of `servers` servers (ports from 40000) with further pool keys `extra`.
    pub(crate) fn config(servers: usize, extra: &str) -> Config {
        let list: Vec<String> = (0..servers)
            .map(|i| format!("\"127.0.0.1:{}:1\"", 40000 + i))
            .collect();
        let text = format!(
            "[pools.p]\nlisten = \"127.0.0.1:0\"\nhash = \"md5\"\n{extra}\nservers = [{}]\n",
            list.join(", ")
        );
        RawConfig::parse(&text).unwrap().validate().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn no_warm_up_when_nothing_moved_or_when_off() {
        let first = Generation::build(config(3, ""), None).unwrap();
        let same = Generation::build(config(3, ""), Some(&first)).unwrap();
        assert!(same.pools[0].previous.is_none());
        let off = Generation::build(config(4, "warmup = \"0s\""), Some(&first)).unwrap();
        assert!(off.pools[0].previous.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_takes_a_backend_off_the_ring_for_the_retry_timeout() {
        let text = "auto_eject_hosts = true\nserver_failure_limit = 2\nserver_retry_timeout = 500";
        let generation = Generation::build(config(3, text), None).unwrap();
        let backend = generation.pools[0].backends[1].clone();
        assert!(!backend.record_failure());
        assert!(backend.record_failure(), "the second failure ejects");
        assert!(backend.is_ejected());
        let rebuilt = generation.rebuild().unwrap();
        assert_eq!(rebuilt.pools[0].ring_backends, vec![0, 2]);
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(backend.ejected_until().unwrap() > Instant::now());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(backend.ejected_until().unwrap() <= Instant::now());
        assert!(backend.readmit());
        let back = rebuilt.rebuild().unwrap();
        assert_eq!(back.pools[0].ring_backends, vec![0, 1, 2]);
        // Coming back moved keys again: warm-up covers them.
        assert!(back.pools[0].previous.is_some());
    }

    #[tokio::test]
    async fn pools_listing_the_same_server_keep_their_own_backends_across_reloads() {
        let text = "[pools.a]\nlisten = \"127.0.0.1:0\"\nservers = [\"127.0.0.1:40000:1\", \"127.0.0.1:40001:1\"]\n\
                    [pools.b]\nlisten = \"127.0.0.1:1\"\nservers = [\"127.0.0.1:40000:1\", \"127.0.0.1:40001:1\"]\n";
        let config = || RawConfig::parse(text).unwrap().validate().unwrap();
        let first = Generation::build(config(), None).unwrap();
        let next = Generation::build(config(), Some(&first)).unwrap();
        for (before, after) in first.pools.iter().zip(&next.pools) {
            for (b, a) in before.backends.iter().zip(&after.backends) {
                assert!(
                    Arc::ptr_eq(b, a),
                    "pool {} lost its backend",
                    after.config.name
                );
            }
            // Nothing moved, so no warm-up (which would delete fresh writes on the
            // "previous owner", the same server).
            assert!(after.previous.is_none());
        }
        let (a, b) = (&next.pools[0].backends[0], &next.pools[1].backends[0]);
        assert!(!Arc::ptr_eq(a, b), "two pools share one backend object");
    }
}
