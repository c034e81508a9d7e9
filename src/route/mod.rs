//! Routes at run time: one worker's [`Routes`] — a router per pool and, per listener, the
//! route it serves — and (in `plan`) the plans of the routes that span pools. A route that
//! is one pool leaves the whole decision to that pool's router ([`Router::plan`]); the
//! others compose its parts:
//!
//! - **prefix**: the longest matching key prefix picks the route; a multi-get whose keys
//!   pick different routes is split by route and merged in key order.
//! - **replicated**: writes go to every copy (answered by the worst reply, or by the first
//!   copy's); reads go to one copy and fail over along the others on an error (and, with
//!   `miss_failover`, on a miss); compare-and-swap goes to the designated copy, whose
//!   success invalidates the others.
//! - **gutter**: a request the primary pool fails goes to the gutter pool, a write with its
//!   TTL capped.
//! - **shadow**: requests for a stable part of the keys (by hash) are also sent to a shadow
//!   pool, never waited for.

use std::sync::Arc;

use crate::config::{ListenerConfig, ReadPolicy, RouteKind, Target, WritePolicy};
use crate::counters::RouteStats;
use crate::generation::Generation;
use crate::router::Router;
use crate::shadow::ShadowSender;

mod explain;
mod plan;
mod ttl;
pub use explain::{describe, explain};
pub use ttl::with_ttl_cap;

/// A worker's current routes: clients load them per request; reloads swap them.
pub type RoutesSlot = Arc<arc_swap::ArcSwap<Routes>>;

/// One worker's routing for one generation.
pub struct Routes {
    /// A router per pool, in the generation's pool order.
    pub routers: Vec<Arc<Router>>,
    /// The listeners and the routes they serve.
    pub listeners: Vec<Arc<Listener>>,
    /// Where shadow copies go.
    pub shadow: ShadowSender,
}

/// A listener and the route it serves.
pub struct Listener {
    /// Its settings.
    pub config: ListenerConfig,
    /// What its requests go to.
    pub route: Route,
}

/// A route, its pools by index.
pub enum Route {
    /// One pool.
    Pool(usize),
    /// Picked by key prefix, longest first.
    Prefix {
        /// Prefixes and their routes, longest first.
        prefixes: Vec<(Box<[u8]>, Route)>,
        /// Keys matching no prefix.
        default: Box<Route>,
    },
    /// Copies in several pools.
    Replicated(Box<Replicated>),
    /// A primary pool failing over to a gutter pool.
    Gutter(Box<Gutter>),
    /// A route whose requests are partly copied to a shadow pool.
    Shadow(Box<Shadow>),
}

/// A replicated route.
pub struct Replicated {
    /// The copies' pools; the first is the designated copy.
    pub copies: Vec<usize>,
    /// How writes are answered.
    pub write: WritePolicy,
    /// When reads move on.
    pub read: ReadPolicy,
    /// Reads start at a copy picked by the key's hash.
    pub spread_reads: bool,
    /// Its counters.
    pub stats: Arc<RouteStats>,
}

/// A gutter route.
pub struct Gutter {
    /// The pool that serves.
    pub primary: usize,
    /// The pool that takes over.
    pub gutter: usize,
    /// Longest TTL of a write in the gutter, seconds.
    pub failover_ttl: u32,
    /// Its counters.
    pub stats: Arc<RouteStats>,
}

/// A shadowed route.
pub struct Shadow {
    /// The route that serves.
    pub primary: Route,
    /// The pool that gets the copies.
    pub shadow: usize,
    /// Keys whose hash is below this (of 2^32) are copied.
    pub threshold: u64,
    /// Its counters.
    pub stats: Arc<RouteStats>,
}

/// A stable 32-bit hash of a key, for spreading reads and picking shadowed keys.
fn key_hash(key: &[u8]) -> u32 {
    crc32fast::hash(key)
}

impl Routes {
    /// Worker `worker`'s routes for `generation`.
    pub fn new(generation: &Generation, worker: usize, shadow: ShadowSender) -> Routes {
        let routers: Vec<Arc<Router>> = generation
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| Arc::new(Router::new(p, worker, i)))
            .collect();
        let listeners = generation
            .config
            .listeners
            .iter()
            .map(|l| {
                Arc::new(Listener {
                    config: l.clone(),
                    route: build(generation, &l.target),
                })
            })
            .collect();
        Routes {
            routers,
            listeners,
            shadow,
        }
    }

    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| l.config.name == name)
    }

    /// The router of pool `pool`.
    pub fn router(&self, pool: usize) -> &Arc<Router> {
        &self.routers[pool]
    }

    /// The router of `route`'s first pool (whose settings `stats settings` shows).
    pub fn first_router(&self, route: &Route) -> &Arc<Router> {
        &self.routers[Self::first_pool(route)]
    }

    /// The pool a keyless request of `route` is answered by (its first pool).
    fn first_pool(route: &Route) -> usize {
        match route {
            Route::Pool(p) => *p,
            Route::Prefix { default, .. } => Self::first_pool(default),
            Route::Replicated(r) => r.copies[0],
            Route::Gutter(g) => g.primary,
            Route::Shadow(s) => Self::first_pool(&s.primary),
        }
    }

    /// Every pool `route` may send to (not its shadow pools), each once.
    fn pools(route: &Route, out: &mut Vec<usize>) {
        let mut add = |p: usize| {
            if !out.contains(&p) {
                out.push(p);
            }
        };
        match route {
            Route::Pool(p) => add(*p),
            Route::Replicated(r) => r.copies.iter().for_each(|&p| add(p)),
            Route::Gutter(g) => {
                add(g.primary);
                add(g.gutter);
            }
            Route::Prefix { prefixes, default } => {
                for (_, r) in prefixes {
                    Self::pools(r, out);
                }
                Self::pools(default, out);
            }
            Route::Shadow(s) => Self::pools(&s.primary, out),
        }
    }

    /// The routers of `route`'s pools.
    pub fn routers_of(&self, route: &Route) -> Vec<&Arc<Router>> {
        let mut pools = Vec::new();
        Self::pools(route, &mut pools);
        pools.into_iter().map(|p| &self.routers[p]).collect()
    }
}

/// The route the longest prefix of `key` picks.
fn pick<'a>(prefixes: &'a [(Box<[u8]>, Route)], default: &'a Route, key: &[u8]) -> &'a Route {
    prefixes
        .iter()
        .find(|(p, _)| key.starts_with(p))
        .map_or(default, |(_, r)| r)
}

/// The route under prefixes and shadows that `key` ends on.
fn leaf<'a>(route: &'a Route, key: &[u8]) -> &'a Route {
    match route {
        Route::Prefix { prefixes, default } => leaf(pick(prefixes, default, key), key),
        Route::Shadow(s) => leaf(&s.primary, key),
        other => other,
    }
}

/// The runtime form of `target` in `generation`.
fn build(generation: &Generation, target: &Target) -> Route {
    let pool = |name: &str| {
        generation
            .pools
            .iter()
            .position(|p| p.config.name == name)
            .expect("validated: the pool exists")
    };
    let name = match target {
        Target::Pool(p) => return Route::Pool(pool(p)),
        Target::Route(r) => r,
    };
    let config = generation
        .config
        .route(name)
        .expect("validated: the route exists");
    let stats = generation.route_stats(name);
    match &config.kind {
        RouteKind::Prefix { prefixes, default } => Route::Prefix {
            prefixes: prefixes
                .iter()
                .map(|(p, t)| (p.as_bytes().into(), build(generation, t)))
                .collect(),
            default: Box::new(build(generation, default)),
        },
        RouteKind::Replicated {
            copies,
            write,
            read,
            spread_reads,
        } => Route::Replicated(Box::new(Replicated {
            copies: copies.iter().map(|c| pool(c)).collect(),
            write: *write,
            read: *read,
            spread_reads: *spread_reads,
            stats,
        })),
        RouteKind::Gutter {
            primary,
            gutter,
            failover_ttl,
        } => Route::Gutter(Box::new(Gutter {
            primary: pool(primary),
            gutter: pool(gutter),
            failover_ttl: *failover_ttl,
            stats,
        })),
        RouteKind::Shadow {
            primary,
            shadow,
            fraction,
        } => Route::Shadow(Box::new(Shadow {
            primary: build(generation, primary),
            shadow: pool(shadow),
            threshold: (fraction * (1u64 << 32) as f64) as u64,
            stats,
        })),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_picks() {
        let prefixes: Vec<(Box<[u8]>, Route)> = vec![
            (b"user:vip:"[..].into(), Route::Pool(2)),
            (b"user:"[..].into(), Route::Pool(1)),
        ];
        let default = Route::Pool(0);
        let to = |k: &str| match pick(&prefixes, &default, k.as_bytes()) {
            Route::Pool(p) => *p,
            _ => unreachable!(),
        };
        assert_eq!(to("user:vip:7"), 2);
        assert_eq!(to("user:7"), 1);
        assert_eq!(to("user"), 0);
        assert_eq!(to("session:1"), 0);
    }

    #[test]
    fn key_hashes_spread_evenly_for_shadowing() {
        let threshold = (0.25 * (1u64 << 32) as f64) as u64;
        let picked = (0..10_000)
            .filter(|i| u64::from(key_hash(format!("key:{i}").as_bytes())) < threshold)
            .count();
        assert!((2_200..2_800).contains(&picked), "{picked}");
    }
}
