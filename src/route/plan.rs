//! The plans of routes that span pools: prefix, replicated, gutter and shadow routes,
//! composed of the parts a pool's router uses (owners, chains of backends, gathers).

use std::sync::Arc;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::backend::Message;
use crate::budget::{self, LINE_RESERVE};
use crate::config::{ReadPolicy, WritePolicy};
use crate::counters::RouteStats;
use crate::gather::Gather;
use crate::plan::{
    local, meta_reserve, Action, Chain, Conditional, Delivery, Dest, KeyChain, Keys, Local, Plan,
    Retry, ShadowCopy,
};
use crate::protocol::request::{Command, KeyToken, Request, MAX_KEY_LEN};

use super::ttl::with_ttl_cap;
use super::{key_hash, leaf, pick, Gutter, Replicated, Route, Routes, Shadow};

impl Routes {
    /// Decides the fate of `req` on `route`.
    pub fn plan(&self, route: &Route, req: Request) -> Plan {
        match route {
            Route::Pool(p) => self.routers[*p].plan(req),
            Route::Shadow(s) => {
                let copies = self.shadow_copies(s, &req);
                let mut plan = self.plan(&s.primary, req);
                plan.shadow.extend(copies);
                plan
            }
            _ if !keyed(&req) => self.plan_keyless(route, req),
            Route::Prefix { .. } if req.command.is_retrieval() && req.key_count() > 1 => {
                self.plan_keys(route, &req, Keys::of(&req), false)
            }
            Route::Prefix { prefixes, default } => {
                let mut buf = [0; MAX_KEY_LEN];
                let next = pick(prefixes, default, req.route_key(&mut buf));
                self.plan(next, req)
            }
            Route::Replicated(r) => self.plan_replicated(r, route, req),
            Route::Gutter(g) => self.plan_gutter(g, route, req),
        }
    }

    /// One batch of a retrieval handed out in batches.
    pub fn plan_batch(&self, route: &Route, keys: Keys) -> Plan {
        match route {
            Route::Pool(p) => self.routers[*p].plan_batch(keys),
            _ => self.plan_keys_of(route, keys, true),
        }
    }

    /// The old value of a refused write goes, on every pool that may hold it.
    pub fn plan_unlink(&self, route: &Route, key: KeyToken) -> Plan {
        let mut buf = [0; MAX_KEY_LEN];
        let bytes = key.bytes(&mut buf).to_vec();
        let leaf = leaf(route, &bytes);
        let mut pools = Vec::new();
        Self::pools(leaf, &mut pools);
        let mut sends: Vec<(Dest, Message)> = pools
            .iter()
            .map(|&p| {
                let r = &self.routers[p];
                (r.dest(r.owner(&bytes)), Message::Delete(key.clone()))
            })
            .collect();
        let (dest, message) = sends.remove(0);
        Plan::new(
            Action::One {
                dest,
                message,
                reply: Delivery::Discard,
                also: sends,
            },
            0,
        )
    }

    /// Whether `route` refuses a retrieval handed out in batches.
    pub fn refuses_batches(&self, route: &Route, command: Command) -> Option<&'static [u8]> {
        self.routers_of(route)
            .iter()
            .find_map(|r| r.refuses_batches(command))
    }

    /// The largest value recently seen on `route`'s pools (for sizing batches of keys).
    pub fn value_estimate(&self, route: &Route) -> usize {
        match route {
            Route::Pool(p) => self.routers[*p].value_estimate(),
            _ => self
                .routers_of(route)
                .iter()
                .map(|r| r.value_estimate())
                .max()
                .unwrap_or(0),
        }
    }

    /// A command without a key: `flush_all` and `cache_memlimit` go to every pool of the
    /// route; the rest (memroute's own answers, `stats` subcommands) are the first pool's.
    fn plan_keyless(&self, route: &Route, req: Request) -> Plan {
        if !matches!(req.command, Command::FlushAll | Command::CacheMemlimit) {
            return self.routers[Self::first_pool(route)].plan(req);
        }
        let mut sends = Vec::new();
        for r in self.routers_of(route) {
            for b in 0..r.pool_backends() {
                sends.push((r.dest(b), Message::Request(req.clone())));
            }
        }
        let noreply = req.noreply();
        Plan::new(
            Action::Gather {
                gather: (!noreply).then(|| Gather::broadcast(sends.len())),
                sends,
            },
            if noreply { 0 } else { LINE_RESERVE },
        )
    }

    /// A multi-key retrieval on `route`.
    fn plan_keys(&self, route: &Route, req: &Request, keys: Keys, batch: bool) -> Plan {
        // ttserver's limits apply to keys bound for a Tokyo Tyrant pool.
        for r in self.routers_of(route) {
            if let crate::backend::message::Dialect::Tyrant { preserve_flags } = r.dialect {
                if let Err(msg) = crate::tyrant::admit(req, preserve_flags) {
                    return local(Local::Refusal(msg));
                }
            }
        }
        self.plan_keys_of(route, keys, batch)
    }

    /// Keys of a retrieval on `route`, each asked along its chain: one gather when no key
    /// can fail over, else a retrieval with fallbacks.
    fn plan_keys_of(&self, route: &Route, keys: Keys, batch: bool) -> Plan {
        let mut chains = Vec::with_capacity(keys.keys.len());
        let mut shadow = Vec::new();
        let mut reserve = 0;
        for k in &keys.keys {
            let (chain, copy) = self.key_chain(route, k, keys.command);
            reserve += budget::retrieval_reserve(
                1,
                k.len(),
                self.routers[chain.steps[0].pool].backends()[chain.steps[0].backend]
                    .value_sizes
                    .estimate(),
            );
            if let Some((dest, stats)) = copy {
                shadow.push((dest, k.clone(), stats));
            }
            chains.push(chain);
        }
        let shadow = self.shadow_retrievals(&keys, shadow);
        let first = chains[0].steps[0].pool;
        let router = &self.routers[first];
        let mut plan = if chains.iter().any(|c| c.steps.len() > 1) {
            Plan::new(
                Action::Retrieve(Box::new(router.retrieval(keys, chains, batch))),
                reserve,
            )
        } else {
            // Grouped by backend, in first-seen order.
            let mut groups: Vec<(Dest, Vec<u16>)> = Vec::new();
            for (pos, c) in chains.iter().enumerate() {
                let d = c.steps[0];
                match groups.iter_mut().find(|(g, _)| *g == d) {
                    Some((_, p)) => p.push(pos as u16),
                    None => groups.push((d, vec![pos as u16])),
                }
            }
            let sends = groups.iter().map(|(d, p)| (*d, keys.message(p))).collect();
            let positions = groups.into_iter().map(|(_, p)| p).collect();
            let policy = router.config.retrieval_failure;
            let gather = match batch {
                true => Gather::batch(keys.keys.clone(), positions, policy),
                false => Gather::multi_get(keys.keys.clone(), positions, policy),
            };
            Plan::new(
                Action::Gather {
                    gather: Some(gather),
                    sends,
                },
                reserve,
            )
        };
        plan.shadow = shadow;
        plan
    }

    /// The chain of `key` on `route` for a retrieval of `command`, and the shadow pool's
    /// backend it is copied to (with the shadow route's counters), if any.
    fn key_chain(
        &self,
        route: &Route,
        key: &[u8],
        command: Command,
    ) -> (KeyChain, Option<(Dest, Arc<RouteStats>)>) {
        match route {
            Route::Pool(p) => {
                let r = &self.routers[*p];
                (r.warm_chain(key, r.owner(key)), None)
            }
            Route::Prefix { prefixes, default } => {
                self.key_chain(pick(prefixes, default, key), key, command)
            }
            Route::Replicated(r) => {
                let steps = self.copy_order(r, key, returns_cas(command));
                let chain = KeyChain {
                    steps: steps.iter().map(|&p| self.owner_dest(p, key)).collect(),
                    retry: read_retry(r.read),
                    copy_back: false,
                    stats: Some(r.stats.clone()),
                };
                (chain, None)
            }
            Route::Gutter(g) => {
                let steps = [g.primary, g.gutter]
                    .iter()
                    .map(|&p| self.owner_dest(p, key))
                    .collect();
                let chain = KeyChain {
                    steps,
                    retry: Retry::ERRORS,
                    copy_back: false,
                    stats: Some(g.stats.clone()),
                };
                (chain, None)
            }
            Route::Shadow(s) => {
                let (chain, _) = self.key_chain(&s.primary, key, command);
                let copy = (u64::from(key_hash(key)) < s.threshold)
                    .then(|| (self.owner_dest(s.shadow, key), s.stats.clone()));
                (chain, copy)
            }
        }
    }

    /// Backend of pool `pool` owning `key`.
    fn owner_dest(&self, pool: usize, key: &[u8]) -> Dest {
        let r = &self.routers[pool];
        r.dest(r.owner(key))
    }

    /// The copies in the order a read of `key` tries them: from the designated copy (or,
    /// spreading reads, from one picked by the key's hash — never for a read returning
    /// CAS uniques, which only the designated copy's compare-and-swap can use), copies
    /// whose backend for the key is down or ejected last.
    fn copy_order(&self, r: &Replicated, key: &[u8], cas: bool) -> SmallVec<[usize; 3]> {
        let n = r.copies.len();
        let start = match r.spread_reads && !cas {
            true => key_hash(key) as usize % n,
            false => 0,
        };
        let mut order: SmallVec<[usize; 3]> = (0..n).map(|i| r.copies[(start + i) % n]).collect();
        let healthy = |p: &usize| {
            let router = &self.routers[*p];
            let b = &router.backends()[router.owner(key)];
            b.is_up() && !b.is_ejected()
        };
        // Stable: healthy copies keep their order ahead of the others.
        order.sort_by_key(|p| !healthy(p));
        order
    }

    /// A keyed request on a replicated route.
    fn plan_replicated(&self, r: &Replicated, route: &Route, req: Request) -> Plan {
        let mut buf = [0; MAX_KEY_LEN];
        let key = req.route_key(&mut buf).to_vec();
        if req.command.is_retrieval() {
            return self.plan_keys(route, &req, Keys::of(&req), false);
        }
        if matches!(req.command, Command::MetaGet | Command::MetaDebug) {
            let cas = req.meta_flags().any(|t| t.first() == Some(&b'c'));
            let order = self.copy_order(r, &key, cas);
            let retry = match req.command {
                Command::MetaGet => read_retry(r.read),
                _ => Retry::ERRORS,
            };
            return self.chain(
                order.iter().map(|&p| (p, req.clone())).collect(),
                retry,
                &req,
                r.stats.clone(),
            );
        }
        let owners: Vec<Dest> = r.copies.iter().map(|&p| self.owner_dest(p, &key)).collect();
        if req.command.is_storage() || req.command == Command::MetaSet {
            for d in &owners {
                let size = req.data().len();
                self.routers[d.pool].backends()[d.backend]
                    .value_sizes
                    .record(size);
            }
        }
        let fill =
            (!req.noreply()).then(|| self.routers[owners[0].pool].fill(&req, owners[0].backend));
        let reserve = if req.noreply() { 0 } else { LINE_RESERVE * 2 };
        if compares_cas(&req) {
            // CAS uniques are each server's own: only the designated copy can compare
            // them; once it has taken the write, the other copies' values are stale.
            let then = owners[1..]
                .iter()
                .map(|d| (*d, Message::Delete(req.key_token())))
                .collect();
            return Plan::new(
                Action::Conditional(Box::new(Conditional {
                    first: (owners[0], Message::Request(req)),
                    fill,
                    then,
                })),
                reserve,
            );
        }
        match r.write {
            WritePolicy::AllInitial => {
                let also = owners[1..]
                    .iter()
                    .map(|d| (*d, Message::Request(req.clone())))
                    .collect();
                Plan::new(
                    Action::One {
                        dest: owners[0],
                        reply: fill.map_or(Delivery::Discard, Delivery::Slot),
                        message: Message::Request(req),
                        also,
                    },
                    reserve,
                )
            }
            WritePolicy::AllSync => {
                let gather =
                    fill.map(|f| Gather::replicated(owners.len(), f.quiet, r.stats.clone()));
                let sends = owners
                    .iter()
                    .map(|d| (*d, Message::Request(req.clone())))
                    .collect();
                Plan::new(Action::Gather { gather, sends }, reserve)
            }
        }
    }

    /// A keyed request on a gutter route: to the primary, and on its failure to the gutter
    /// (a write with its TTL capped).
    fn plan_gutter(&self, g: &Gutter, route: &Route, req: Request) -> Plan {
        if req.command.is_retrieval() {
            return self.plan_keys(route, &req, Keys::of(&req), false);
        }
        let gutter_req = match req.command.is_write() || req.command == Command::MetaGet {
            true => with_ttl_cap(&req, g.failover_ttl),
            false => req.clone(),
        };
        self.chain(
            vec![(g.primary, req.clone()), (g.gutter, gutter_req)],
            Retry::ERRORS,
            &req,
            g.stats.clone(),
        )
    }

    /// `req` tried on pools in order (each sent its own version of it) until one answers
    /// as `retry` wants.
    fn chain(
        &self,
        steps: Vec<(usize, Request)>,
        retry: Retry,
        req: &Request,
        stats: Arc<RouteStats>,
    ) -> Plan {
        let mut buf = [0; MAX_KEY_LEN];
        let key = req.route_key(&mut buf);
        let first = self.owner_dest(steps[0].0, key);
        let estimate = self.routers[first.pool].backends()[first.backend]
            .value_sizes
            .estimate();
        let reserve = match req.noreply() {
            true => 0,
            false if req.command.is_meta() => meta_reserve(req, estimate),
            false => LINE_RESERVE,
        };
        let fill = (!req.noreply()).then(|| self.routers[first.pool].fill(req, first.backend));
        let steps = steps
            .into_iter()
            .map(|(p, r)| (self.owner_dest(p, key), Message::Request(r)))
            .collect();
        Plan::new(
            Action::Chain(Box::new(Chain {
                steps,
                retry,
                fill,
                copy_back: None,
                stats: Some(stats),
            })),
            reserve,
        )
    }

    /// The copies of a keyed request sent to `s`'s shadow pool.
    fn shadow_copies(&self, s: &Shadow, req: &Request) -> Vec<ShadowCopy> {
        if !keyed(req) {
            return Vec::new();
        }
        if req.command.is_retrieval() {
            let keys = Keys::of(req);
            let picked = keys
                .keys
                .iter()
                .filter(|k| u64::from(key_hash(k)) < s.threshold)
                .map(|k| (self.owner_dest(s.shadow, k), k.clone(), s.stats.clone()))
                .collect();
            return self.shadow_retrievals(&keys, picked);
        }
        let mut buf = [0; MAX_KEY_LEN];
        let key = req.route_key(&mut buf);
        match u64::from(key_hash(key)) < s.threshold {
            true => vec![ShadowCopy {
                dest: self.owner_dest(s.shadow, key),
                message: Message::Request(req.clone()),
                stats: s.stats.clone(),
            }],
            false => Vec::new(),
        }
    }

    /// Retrievals of the `picked` keys of `keys` for shadow pools, one per backend.
    fn shadow_retrievals(
        &self,
        keys: &Keys,
        picked: Vec<(Dest, Bytes, Arc<RouteStats>)>,
    ) -> Vec<ShadowCopy> {
        let mut out: Vec<ShadowCopy> = Vec::new();
        for (dest, key, stats) in picked {
            match out.iter_mut().find(|c| c.dest == dest) {
                Some(ShadowCopy {
                    message: Message::Retrieve { keys, .. },
                    ..
                }) => keys.push(key),
                _ => out.push(ShadowCopy {
                    dest,
                    message: Message::Retrieve {
                        command: keys.command,
                        exptime: keys.exptime,
                        prefix: keys.prefix.clone(),
                        keys: vec![key],
                    },
                    stats,
                }),
            }
        }
        out
    }
}

/// Whether `req` names a key (the rest is answered by memroute or goes to whole pools).
fn keyed(req: &Request) -> bool {
    (req.command.is_retrieval() || req.command.is_single_key() || req.command.is_meta())
        && req.command != Command::MetaNoop
}

/// Whether a retrieval of `command` returns CAS uniques.
fn returns_cas(command: Command) -> bool {
    matches!(command, Command::Gets | Command::Gats)
}

/// Whether a write compares a CAS unique: `cas`, or a meta write with `C`.
fn compares_cas(req: &Request) -> bool {
    match req.command {
        Command::Cas => true,
        Command::MetaSet | Command::MetaDelete | Command::MetaArithmetic => {
            req.meta_flags().any(|t| t.first() == Some(&b'C'))
        }
        _ => false,
    }
}

/// When a replicated read moves on to the next copy.
fn read_retry(read: ReadPolicy) -> Retry {
    match read {
        ReadPolicy::Failover => Retry::ERRORS,
        ReadPolicy::MissFailover => Retry::ERRORS_AND_MISSES,
    }
}
