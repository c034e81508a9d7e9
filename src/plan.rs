//! Where each request's fate is decided: [`Router::plan`] returns, for a request to one pool,
//! a complete [`Plan`] — which backends get what ([`Message`]s: forwarded as received where
//! the backend reads them alike, rebuilt where it does not), how their answers come back
//! together (one slot, a gather in key order, a combination), what memroute answers itself
//! or refuses, what warm-up adds, and how much reply room to reserve. Routes over several
//! pools ([`crate::route`]) compose the same parts. The client only carries plans out.

use std::sync::Arc;

use bytes::Bytes;
use smallvec::{smallvec, SmallVec};

use crate::backend::message::Dialect;
use crate::backend::Message;
use crate::budget::{self, LINE_RESERVE};
use crate::config::RetrievalFailure;
use crate::counters::RouteStats;
use crate::gather::{stats, Gather};
use crate::protocol::meta::{self, Quiet};
use crate::protocol::reply;
use crate::protocol::request::{Command, KeyToken, Request, MAX_KEY_LEN};
use crate::reply_queue::Fill;
use crate::router::Router;
use crate::tyrant;

/// A backend of a pool: the pool's index in the generation, the backend's in its router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest {
    /// The pool.
    pub pool: usize,
    /// The backend, in the pool's router.
    pub backend: usize,
}

/// A request's fate.
#[derive(Debug)]
pub struct Plan {
    /// What happens.
    pub action: Action,
    /// Reply room to reserve for the client until the answer is written.
    pub reserve: usize,
    /// Copies sent to a shadow pool, their answers dropped; never waited for.
    pub shadow: Vec<ShadowCopy>,
}

/// A copy of (part of) a request for a shadow pool.
#[derive(Debug)]
pub struct ShadowCopy {
    /// The shadow pool's backend.
    pub dest: Dest,
    /// What it is sent.
    pub message: Message,
    /// The shadow route counting it.
    pub stats: Arc<RouteStats>,
}

impl Plan {
    /// A plan of `action` reserving `reserve`.
    pub fn new(action: Action, reserve: usize) -> Plan {
        Plan {
            action,
            reserve,
            shadow: Vec::new(),
        }
    }

    /// Whether this is a multi-key retrieval split over several backends.
    pub fn is_split(&self) -> bool {
        matches!(&self.action, Action::Gather { gather: Some(g), .. } if g.is_split())
    }
}

/// What memroute does with a request.
#[derive(Debug)]
pub enum Action {
    /// memroute answers it.
    Answer(Local),
    /// One backend answers.
    One {
        /// Which.
        dest: Dest,
        /// What it is sent.
        message: Message,
        /// Where its answer goes.
        reply: Delivery,
        /// Further messages whose answers are dropped (warm-up: a write also deletes the
        /// key's copy on its previous owner; a replicated write answered by its first copy
        /// also goes to the others).
        also: Vec<(Dest, Message)>,
    },
    /// Several backends answer; their answers are gathered into one reply.
    Gather {
        /// How the answers combine (none: every answer is dropped, for `noreply`).
        gather: Option<Gather>,
        /// What each backend is sent, in the gather's part order.
        sends: Vec<(Dest, Message)>,
    },
    /// A retrieval whose keys may be asked again elsewhere: warm-up's previous owners,
    /// a replicated route's other copies, a gutter pool.
    Retrieve(Box<Retrieval>),
    /// One request tried along a chain of backends until one answers as wanted.
    Chain(Box<Chain>),
    /// A write to one backend whose success sends further messages (a replicated route's
    /// compare-and-swap: the designated copy, then the others invalidated).
    Conditional(Box<Conditional>),
}

/// What memroute answers by itself.
#[derive(Debug)]
pub enum Local {
    /// This line (or nothing, when empty).
    Line(&'static [u8]),
    /// The pool cannot serve the request: this line (or nothing, for `noreply`).
    Refusal(&'static [u8]),
    /// memroute's `stats` reply for these arguments.
    Stats(Bytes),
    /// Close the connection once earlier replies are written.
    Quit,
}

/// Where one backend's answer goes.
#[derive(Clone, Copy, Debug)]
pub enum Delivery {
    /// To the client, in its turn, as [`Fill`] says (a stand-in for a failure, answers a
    /// quiet request leaves out).
    Slot(Fill),
    /// Nowhere (`noreply`): errors are only counted.
    Discard,
}

/// When a key (or request) moves on to the next backend of its chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// After a failure: the backend's error (or an error line it sent).
    pub errors: bool,
    /// After a miss.
    pub misses: bool,
}

impl Retry {
    /// Failover: only errors move on.
    pub const ERRORS: Retry = Retry {
        errors: true,
        misses: false,
    };
    /// Warm-up and miss-failover: errors and misses move on.
    pub const ERRORS_AND_MISSES: Retry = Retry {
        errors: true,
        misses: true,
    };
}

/// The backends a key is asked of, in order.
#[derive(Clone, Debug)]
pub struct KeyChain {
    /// The backends; the first always, the others only as `retry` says.
    pub steps: SmallVec<[Dest; 3]>,
    /// When the key moves on.
    pub retry: Retry,
    /// A hit found further along is copied to the first backend (warm-up).
    pub copy_back: bool,
    /// The route counting the key's failovers, if any.
    pub stats: Option<Arc<RouteStats>>,
}

impl KeyChain {
    /// A key asked of one backend only.
    pub fn one(dest: Dest) -> KeyChain {
        KeyChain {
            steps: smallvec![dest],
            retry: Retry::ERRORS,
            copy_back: false,
            stats: None,
        }
    }
}

/// A retrieval whose keys each have a chain of backends.
#[derive(Debug)]
pub struct Retrieval {
    /// get, gets, gat or gats.
    pub command: Command,
    /// gat/gats: the expiration time.
    pub exptime: i64,
    /// The client's command text before its keys.
    pub prefix: Bytes,
    /// The keys, in the client's order.
    pub keys: Vec<Bytes>,
    /// Each key's chain.
    pub chains: Vec<KeyChain>,
    /// How a key that failed everywhere is answered.
    pub policy: RetrievalFailure,
    /// One batch of a retrieval handed out in batches: no `END` of its own.
    pub batch: bool,
    /// TTL of warm-up's copies.
    pub copy_ttl: u32,
}

/// One request tried along a chain of backends.
#[derive(Debug)]
pub struct Chain {
    /// Each backend and what it is sent (a gutter gets the write with its TTL capped).
    pub steps: Vec<(Dest, Message)>,
    /// When the request moves on.
    pub retry: Retry,
    /// How the final answer fills the client's slot; none: the answer is dropped.
    pub fill: Option<Fill>,
    /// Warm-up of an `mg`: a hit further along is copied to the first backend.
    pub copy_back: Option<(KeyToken, u32)>,
    /// The route counting failovers, if any.
    pub stats: Option<Arc<RouteStats>>,
}

/// A write whose success sends more.
#[derive(Debug)]
pub struct Conditional {
    /// The write and its backend.
    pub first: (Dest, Message),
    /// How its answer fills the client's slot; none: dropped.
    pub fill: Option<Fill>,
    /// Sent (answers dropped) if the write succeeded.
    pub then: Vec<(Dest, Message)>,
}

/// A retrieval of `keys` for a client's `command` (`prefix` is its text before the keys).
pub struct Keys {
    /// get, gets, gat or gats.
    pub command: Command,
    /// gat/gats: the expiration time.
    pub exptime: i64,
    /// The command text before the keys.
    pub prefix: Bytes,
    /// The keys.
    pub keys: Vec<Bytes>,
}

impl Keys {
    /// The keys of a decoded multi-key retrieval.
    pub fn of(req: &Request) -> Keys {
        Keys {
            command: req.command,
            exptime: req.exptime,
            prefix: req.frame.slice(..req.keys_start as usize),
            keys: req.key_slices().collect(),
        }
    }

    /// The request for the keys at `positions`.
    pub fn message(&self, positions: &[u16]) -> Message {
        Message::Retrieve {
            command: self.command,
            exptime: self.exptime,
            prefix: self.prefix.clone(),
            keys: positions
                .iter()
                .map(|&p| self.keys[p as usize].clone())
                .collect(),
        }
    }
}

impl Router {
    /// Decides the fate of `req`, a request to this pool.
    pub fn plan(&self, req: Request) -> Plan {
        if let Dialect::Tyrant { preserve_flags } = self.dialect {
            if let Err(msg) = tyrant::admit(&req, preserve_flags) {
                // Never forwarded: ttserver would drop the connection or misalign it.
                let msg = if req.noreply() { b"" } else { msg };
                return local(Local::Refusal(msg));
            }
        }
        match req.command {
            c if c.is_retrieval() && req.key_count() == 1 => {
                // The key, without the spaces the span of keys may hold.
                let key = req.keys().next().expect("a key");
                let owner = self.owner(key);
                if let Some(warm) = self.warm_one(&req, owner) {
                    return warm;
                }
                let reserve = self.retrieval_reserve(owner, 1, req.key().len());
                self.one(owner, req, reserve)
            }
            c if c.is_retrieval() => {
                let keys = Keys::of(&req);
                let groups = self.group_by_owner(keys.keys.iter().map(|k| &k[..]));
                match &groups[..] {
                    [(owner, _)] if !self.warming() => {
                        let reserve =
                            self.retrieval_reserve(*owner, req.key_count(), req.key().len());
                        self.one(*owner, req, reserve)
                    }
                    _ => self.gathered(keys, groups, false),
                }
            }
            Command::MetaNoop => local(Local::Line(meta::MN)),
            c if c.is_meta() => self.plan_meta(req),
            c if c.is_single_key() => {
                let owner = self.owner(req.key());
                if c.is_storage() {
                    self.backends()[owner].value_sizes.record(req.data().len());
                }
                let also = self.forget_previous(&req, req.key(), owner);
                let mut plan = self.one(owner, req, LINE_RESERVE);
                if let Action::One { also: a, .. } = &mut plan.action {
                    a.extend(also);
                }
                plan
            }
            Command::FlushAll | Command::CacheMemlimit => self.broadcast(req, Gather::broadcast),
            Command::Stats => match stats::forwarded(req.key()) {
                Some(merge) => self.broadcast(req, |n| Gather::stats(n, merge)),
                None => local(Local::Stats(
                    req.frame
                        .slice(req.keys_start as usize..req.keys_end as usize),
                )),
            },
            Command::Version => local(Local::Line(reply::VERSION)),
            Command::Verbosity if req.noreply() => local(Local::Line(b"")),
            Command::Verbosity => local(Local::Line(reply::OK)),
            Command::Quit => local(Local::Quit),
            _ => local(Local::Line(reply::ERROR)),
        }
    }

    /// One batch of a retrieval handed out in batches.
    pub fn plan_batch(&self, keys: Keys) -> Plan {
        let groups = self.group_by_owner(keys.keys.iter().map(|k| &k[..]));
        self.gathered(keys, groups, true)
    }

    /// Whether the pool refuses a retrieval handed out in batches: ttserver has no cas
    /// uniques and no gat.
    pub fn refuses_batches(&self, command: Command) -> Option<&'static [u8]> {
        match (self.dialect, command) {
            (Dialect::Tyrant { .. }, Command::Gets) => Some(tyrant::GETS_UNSUPPORTED),
            (Dialect::Tyrant { .. }, Command::Get) | (Dialect::Memcached, _) => None,
            (Dialect::Tyrant { .. }, _) => Some(tyrant::UNSUPPORTED),
        }
    }

    /// Backend `b` of this pool.
    pub fn dest(&self, backend: usize) -> Dest {
        Dest {
            pool: self.pool,
            backend,
        }
    }

    /// How an answer of this pool fills the slot of `req` (its retrieval-failure policy, or
    /// its quiet flag; the embedded cache reads `q` itself).
    pub fn fill(&self, req: &Request, backend: usize) -> Fill {
        if req.command.is_retrieval() {
            return Fill {
                on_failure: self.miss_on_failure(reply::END),
                quiet: Quiet::No,
            };
        }
        // The embedded cache reads `q` itself (and knows, unlike a reply, whether `ma`
        // created the item); a remote backend never gets it.
        match self.backends()[backend].is_embedded() {
            true => Fill::default(),
            false => Fill {
                on_failure: None,
                quiet: req.quiet(),
            },
        }
    }

    /// `req` to backend `b`, its answer to the client (unless `noreply`).
    fn one(&self, b: usize, req: Request, reserve: usize) -> Plan {
        let reply = match req.noreply() {
            true => Delivery::Discard,
            false => Delivery::Slot(self.fill(&req, b)),
        };
        Plan::new(
            Action::One {
                dest: self.dest(b),
                reply,
                message: Message::Request(req),
                also: Vec::new(),
            },
            reserve,
        )
    }

    /// A meta request (but `mn`): to its key's owner. A meta client is told of a failed
    /// backend with the error (its pipelines match answers by opaque or key), never a
    /// stand-in miss.
    fn plan_meta(&self, req: Request) -> Plan {
        let mut buf = [0; MAX_KEY_LEN];
        let key = req.route_key(&mut buf);
        let owner = self.owner(key);
        let reserve = meta_reserve(&req, self.backends()[owner].value_sizes.estimate());
        if req.command == Command::MetaSet {
            self.backends()[owner].value_sizes.record(req.data().len());
        }
        if req.command == Command::MetaGet && !matches!(self.dialect, Dialect::Tyrant { .. }) {
            if let Some(previous) = self.previous_owner(key, owner) {
                let fill = self.fill(&req, owner);
                let token = req.key_token();
                let message = Message::Request(req);
                return Plan::new(
                    Action::Chain(Box::new(Chain {
                        steps: vec![
                            (self.dest(owner), message.clone()),
                            (self.dest(previous), message),
                        ],
                        retry: Retry::ERRORS_AND_MISSES,
                        fill: Some(fill),
                        copy_back: Some((token, self.config.warmup_ttl)),
                        stats: None,
                    })),
                    reserve,
                );
            }
        }
        let also = match req.command.is_write() {
            true => self.forget_previous(&req, key, owner),
            false => None,
        };
        let mut plan = self.one(owner, req, reserve);
        if let Action::One { also: a, .. } = &mut plan.action {
            a.extend(also);
        }
        plan
    }

    /// During warm-up, a write to `key` (of `req`) whose owner changed also deletes the
    /// previous owner's copy, so that it cannot come back.
    fn forget_previous(&self, req: &Request, key: &[u8], owner: usize) -> Option<(Dest, Message)> {
        if matches!(self.dialect, Dialect::Tyrant { .. }) {
            return None;
        }
        let previous = self.previous_owner(key, owner)?;
        Some((self.dest(previous), Message::Delete(req.key_token())))
    }

    /// A retrieval over several backends (or during warm-up): one request per owner,
    /// answers gathered in key order.
    fn gathered(&self, keys: Keys, groups: Vec<(usize, Vec<u16>)>, batch: bool) -> Plan {
        let key_bytes: usize = keys.keys.iter().map(Bytes::len).sum();
        let reserve = groups
            .iter()
            .map(|(b, p)| self.retrieval_reserve(*b, p.len(), 0))
            .sum::<usize>()
            + key_bytes;
        if self.warming() && !matches!(self.dialect, Dialect::Tyrant { .. }) {
            let mut chains = vec![KeyChain::one(self.dest(0)); keys.keys.len()];
            let mut moved = false;
            for (b, positions) in &groups {
                for &p in positions {
                    let chain = self.warm_chain(&keys.keys[p as usize], *b);
                    moved |= chain.steps.len() > 1;
                    chains[p as usize] = chain;
                }
            }
            if moved {
                return Plan::new(
                    Action::Retrieve(Box::new(self.retrieval(keys, chains, batch))),
                    reserve,
                );
            }
        }
        let sends = groups
            .iter()
            .map(|(b, positions)| (self.dest(*b), keys.message(positions)))
            .collect();
        let positions = groups.into_iter().map(|(_, p)| p).collect();
        let policy = self.config.retrieval_failure;
        let gather = match batch {
            true => Gather::batch(keys.keys, positions, policy),
            false => Gather::multi_get(keys.keys, positions, policy),
        };
        Plan::new(
            Action::Gather {
                gather: Some(gather),
                sends,
            },
            reserve,
        )
    }

    /// A retrieval of `keys` along `chains`, answered as this pool answers failures.
    pub fn retrieval(&self, keys: Keys, chains: Vec<KeyChain>, batch: bool) -> Retrieval {
        Retrieval {
            command: keys.command,
            exptime: keys.exptime,
            prefix: keys.prefix,
            keys: keys.keys,
            chains,
            policy: self.config.retrieval_failure,
            batch,
            copy_ttl: self.config.warmup_ttl,
        }
    }

    /// The chain of a key owned by `owner`: during warm-up, its previous owner after it.
    pub fn warm_chain(&self, key: &[u8], owner: usize) -> KeyChain {
        let mut chain = KeyChain::one(self.dest(owner));
        if matches!(self.dialect, Dialect::Tyrant { .. }) {
            return chain;
        }
        if let Some(previous) = self.previous_owner(key, owner) {
            chain.steps.push(self.dest(previous));
            chain.retry = Retry::ERRORS_AND_MISSES;
            chain.copy_back = true;
        }
        chain
    }

    /// During warm-up, a single-key retrieval whose key moved.
    fn warm_one(&self, req: &Request, owner: usize) -> Option<Plan> {
        let key = req.key_slices().next().expect("a key");
        let chain = self.warm_chain(&key, owner);
        if chain.steps.len() < 2 {
            return None;
        }
        let reserve = self.retrieval_reserve(owner, 1, key.len());
        let keys = Keys {
            command: req.command,
            exptime: req.exptime,
            prefix: req.frame.slice(..req.keys_start as usize),
            keys: vec![key],
        };
        Some(Plan::new(
            Action::Retrieve(Box::new(self.retrieval(keys, vec![chain], false))),
            reserve,
        ))
    }

    /// `miss`, when a failed backend's keys are answered as misses.
    fn miss_on_failure(&self, miss: &'static [u8]) -> Option<&'static [u8]> {
        (self.config.retrieval_failure == RetrievalFailure::Miss).then_some(miss)
    }

    /// Reply room for `nkeys` keys (`key_bytes` long in all) owned by backend `b`.
    pub fn retrieval_reserve(&self, b: usize, nkeys: usize, key_bytes: usize) -> usize {
        let estimate = self.backends()[b].value_sizes.estimate();
        budget::retrieval_reserve(nkeys, key_bytes, estimate)
    }

    /// `req` to every backend of the pool, answers combined by `gather(n)`.
    fn broadcast(&self, req: Request, gather: impl FnOnce(usize) -> Gather) -> Plan {
        let n = self.pool_backends();
        let noreply = req.noreply();
        let sends = (0..n)
            .map(|b| (self.dest(b), Message::Request(req.clone())))
            .collect();
        Plan::new(
            Action::Gather {
                gather: (!noreply).then(|| gather(n)),
                sends,
            },
            if noreply { 0 } else { LINE_RESERVE },
        )
    }
}

/// Reply room for a meta request whose key's values are about `estimate` bytes.
pub fn meta_reserve(req: &Request, estimate: usize) -> usize {
    match req.command {
        Command::MetaGet if req.meta().value => {
            budget::retrieval_reserve(1, req.key().len(), estimate)
        }
        Command::MetaArithmetic if req.meta().value => LINE_RESERVE * 2,
        _ => LINE_RESERVE,
    }
}

/// A plan memroute answers itself.
pub fn local(answer: Local) -> Plan {
    Plan::new(Action::Answer(answer), 0)
}
