//! Where each request's fate is decided: [`Router::plan`] returns, for a decoded request, a
//! complete [`Plan`] — which backends get what ([`Message`]s: forwarded as received where
//! the backend reads them alike, rebuilt where it does not), how their answers come back
//! together (one slot, a gather in key order, a combination), what memroute answers itself
//! or refuses, what warm-up adds, and how much reply room to reserve. The client only
//! carries plans out.

use bytes::Bytes;

use crate::backend::message::Dialect;
use crate::backend::Message;
use crate::budget::{self, LINE_RESERVE};
use crate::config::RetrievalFailure;
use crate::gather::{stats, Gather};
use crate::protocol::meta::{self, Quiet};
use crate::protocol::reply;
use crate::protocol::request::{Command, KeyToken, Request, MAX_KEY_LEN};
use crate::reply_queue::Fill;
use crate::router::Router;
use crate::tyrant;

/// A request's fate.
#[derive(Debug)]
pub struct Plan {
    /// What happens.
    pub action: Action,
    /// Reply room to reserve for the client until the answer is written.
    pub reserve: usize,
}

impl Plan {
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
        /// Which (an index into the router's backends).
        backend: usize,
        /// What it is sent.
        message: Message,
        /// Where its answer goes.
        reply: Delivery,
        /// A further message, whose answer is dropped (warm-up: a write also deletes the
        /// key's copy on its previous owner).
        also: Option<(usize, Message)>,
    },
    /// Several backends answer; their answers are gathered into one reply.
    Gather {
        /// How the answers combine (none: every answer is dropped, for `noreply`).
        gather: Option<Gather>,
        /// What each backend is sent, in the gather's part order.
        sends: Vec<(usize, Message)>,
    },
    /// A retrieval during warm-up whose keys moved: asked of the new owners, misses asked
    /// again of the previous owners (and copied over).
    Warm(Warm),
    /// An `mg` during warm-up whose key moved: the same, for one meta request.
    WarmMeta(WarmMeta),
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

/// A retrieval whose keys moved in the last ring change, during warm-up.
#[derive(Debug)]
pub struct Warm {
    /// get, gets, gat or gats.
    pub command: Command,
    /// gat/gats: the expiration time.
    pub exptime: i64,
    /// The client's command text before its keys.
    pub prefix: Bytes,
    /// The keys, each with its previous owner if it moved.
    pub keys: Vec<(Bytes, Option<usize>)>,
    /// The new owners and the positions of the keys each owns.
    pub groups: Vec<(usize, Vec<u16>)>,
    /// One batch of a retrieval handed out in batches: no `END` of its own.
    pub batch: bool,
}

/// An `mg` whose key moved in the last ring change, during warm-up.
#[derive(Debug)]
pub struct WarmMeta {
    /// The client's request.
    pub request: Request,
    /// The key's owner now.
    pub owner: usize,
    /// Its owner before.
    pub previous: usize,
    /// How the final answer fills the client's slot (its `q`).
    pub fill: Fill,
}

/// A retrieval of `keys` for a client's `command` (`prefix` is its text before the keys).
struct Retrieval {
    command: Command,
    exptime: i64,
    prefix: Bytes,
    keys: Vec<Bytes>,
}

impl Router {
    /// Decides `req`'s fate.
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
                let retrieval = Retrieval {
                    command: req.command,
                    exptime: req.exptime,
                    prefix: req.frame.slice(..req.keys_start as usize),
                    keys: req.key_slices().collect(),
                };
                let groups = self.group_by_owner(retrieval.keys.iter().map(|k| &k[..]));
                match &groups[..] {
                    [(owner, _)] if !self.warming() => {
                        let reserve =
                            self.retrieval_reserve(*owner, req.key_count(), req.key().len());
                        self.one(*owner, req, reserve)
                    }
                    _ => self.gathered(retrieval, groups, false),
                }
            }
            Command::MetaNoop => local(Local::Line(meta::MN)),
            c if c.is_meta() => self.plan_meta(req),
            c if c.is_single_key() => {
                let owner = self.owner(req.key());
                if c.is_storage() {
                    self.backends()[owner].value_sizes.record(req.data().len());
                }
                // A write during warm-up: the previous owner's copy must not come back.
                let also = self.forget_previous(&req, req.key(), owner);
                let mut plan = self.one(owner, req, LINE_RESERVE);
                if let Action::One { also: a, .. } = &mut plan.action {
                    *a = also;
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
    pub fn plan_batch(
        &self,
        command: Command,
        exptime: i64,
        prefix: Bytes,
        keys: Vec<Bytes>,
    ) -> Plan {
        let groups = self.group_by_owner(keys.iter().map(|k| &k[..]));
        let retrieval = Retrieval {
            command,
            exptime,
            prefix,
            keys,
        };
        self.gathered(retrieval, groups, true)
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

    /// The old value of a `set` refused as too large goes, as memcached unlinks it.
    pub fn plan_unlink(&self, key: KeyToken) -> Plan {
        Plan {
            action: Action::One {
                backend: self.owner(key.bytes(&mut [0; MAX_KEY_LEN])),
                message: Message::Delete(key),
                reply: Delivery::Discard,
                also: None,
            },
            reserve: 0,
        }
    }

    /// `req` to backend `b`, its answer to the client (unless `noreply`).
    fn one(&self, b: usize, req: Request, reserve: usize) -> Plan {
        let reply = match (req.noreply(), req.command.is_retrieval()) {
            (true, _) => Delivery::Discard,
            (false, true) => Delivery::Slot(Fill {
                on_failure: self.miss_on_failure(reply::END),
                quiet: Quiet::No,
            }),
            // The embedded cache reads `q` itself (and knows, unlike a reply, whether `ma`
            // created the item); a remote backend never gets it.
            (false, false) if self.backends()[b].is_embedded() => Delivery::Slot(Fill::default()),
            (false, false) => Delivery::Slot(Fill {
                on_failure: None,
                quiet: req.quiet(),
            }),
        };
        Plan {
            reserve: if req.noreply() { 0 } else { reserve },
            action: Action::One {
                backend: b,
                message: Message::Request(req),
                reply,
                also: None,
            },
        }
    }

    /// A meta request (but `mn`): to its key's owner. A meta client is told of a failed
    /// backend with the error (its pipelines match answers by opaque or key), never a
    /// stand-in miss.
    fn plan_meta(&self, req: Request) -> Plan {
        let mut buf = [0; MAX_KEY_LEN];
        let key = req.route_key(&mut buf);
        let owner = self.owner(key);
        let reserve = match req.command {
            Command::MetaGet if req.meta().value => {
                self.retrieval_reserve(owner, 1, req.key().len())
            }
            Command::MetaArithmetic if req.meta().value => LINE_RESERVE * 2,
            _ => LINE_RESERVE,
        };
        if req.command == Command::MetaSet {
            self.backends()[owner].value_sizes.record(req.data().len());
        }
        if req.command == Command::MetaGet && !matches!(self.dialect, Dialect::Tyrant { .. }) {
            if let Some(previous) = self.previous_owner(key, owner) {
                let quiet = req.quiet();
                return Plan {
                    reserve,
                    action: Action::WarmMeta(WarmMeta {
                        request: req,
                        owner,
                        previous,
                        fill: Fill {
                            on_failure: None,
                            quiet,
                        },
                    }),
                };
            }
        }
        let also = match req.command.is_write() {
            true => self.forget_previous(&req, key, owner),
            false => None,
        };
        let mut plan = self.one(owner, req, reserve);
        if let Action::One { also: a, .. } = &mut plan.action {
            *a = also;
        }
        plan
    }

    /// During warm-up, a write to `key` (of `req`) whose owner changed also deletes the
    /// previous owner's copy, so that it cannot come back.
    fn forget_previous(&self, req: &Request, key: &[u8], owner: usize) -> Option<(usize, Message)> {
        if matches!(self.dialect, Dialect::Tyrant { .. }) {
            return None;
        }
        let previous = self.previous_owner(key, owner)?;
        Some((previous, Message::Delete(req.key_token())))
    }

    /// A retrieval over several backends (or during warm-up): one request per owner,
    /// answers gathered in key order.
    fn gathered(&self, r: Retrieval, groups: Vec<(usize, Vec<u16>)>, batch: bool) -> Plan {
        let key_bytes: usize = r.keys.iter().map(Bytes::len).sum();
        let reserve = groups
            .iter()
            .map(|(b, p)| self.retrieval_reserve(*b, p.len(), 0))
            .sum::<usize>()
            + key_bytes;
        if self.warming() && !matches!(self.dialect, Dialect::Tyrant { .. }) {
            let mut owners = vec![0; r.keys.len()];
            for (b, positions) in &groups {
                for &p in positions {
                    owners[p as usize] = *b;
                }
            }
            let keys: Vec<(Bytes, Option<usize>)> = r
                .keys
                .iter()
                .zip(owners)
                .map(|(k, owner)| (k.clone(), self.previous_owner(k, owner)))
                .collect();
            if keys.iter().any(|(_, prev)| prev.is_some()) {
                return Plan {
                    action: Action::Warm(Warm {
                        command: r.command,
                        exptime: r.exptime,
                        prefix: r.prefix,
                        keys,
                        groups,
                        batch,
                    }),
                    reserve,
                };
            }
        }
        let sends = groups
            .iter()
            .map(|(b, positions)| {
                let keys = positions
                    .iter()
                    .map(|&p| r.keys[p as usize].clone())
                    .collect();
                (*b, self.retrieve(&r, keys))
            })
            .collect();
        let positions = groups.into_iter().map(|(_, p)| p).collect();
        let policy = self.config.retrieval_failure;
        let gather = match batch {
            true => Gather::batch(r.keys, positions, policy),
            false => Gather::multi_get(r.keys, positions, policy),
        };
        Plan {
            action: Action::Gather {
                gather: Some(gather),
                sends,
            },
            reserve,
        }
    }

    /// During warm-up, a single-key retrieval whose key moved.
    fn warm_one(&self, req: &Request, owner: usize) -> Option<Plan> {
        if matches!(self.dialect, Dialect::Tyrant { .. }) {
            return None;
        }
        let key = req.key_slices().next().expect("a key");
        let previous = self.previous_owner(&key, owner)?;
        Some(Plan {
            reserve: self.retrieval_reserve(owner, 1, key.len()),
            action: Action::Warm(Warm {
                command: req.command,
                exptime: req.exptime,
                prefix: req.frame.slice(..req.keys_start as usize),
                keys: vec![(key, Some(previous))],
                groups: vec![(owner, vec![0])],
                batch: false,
            }),
        })
    }

    /// The request for `keys` of retrieval `r`.
    fn retrieve(&self, r: &Retrieval, keys: Vec<Bytes>) -> Message {
        Message::Retrieve {
            command: r.command,
            exptime: r.exptime,
            prefix: r.prefix.clone(),
            keys,
        }
    }

    /// `miss`, when a failed backend's keys are answered as misses.
    fn miss_on_failure(&self, miss: &'static [u8]) -> Option<&'static [u8]> {
        (self.config.retrieval_failure == RetrievalFailure::Miss).then_some(miss)
    }

    /// Reply room for `nkeys` keys (`key_bytes` long in all) owned by backend `b`.
    fn retrieval_reserve(&self, b: usize, nkeys: usize, key_bytes: usize) -> usize {
        let estimate = self.backends()[b].value_sizes.estimate();
        budget::retrieval_reserve(nkeys, key_bytes, estimate)
    }

    /// `req` to every backend of the pool, answers combined by `gather(n)`.
    fn broadcast(&self, req: Request, gather: impl FnOnce(usize) -> Gather) -> Plan {
        let n = self.pool_backends();
        let noreply = req.noreply();
        let sends = (0..n).map(|b| (b, Message::Request(req.clone()))).collect();
        Plan {
            action: Action::Gather {
                gather: (!noreply).then(|| gather(n)),
                sends,
            },
            reserve: if noreply { 0 } else { LINE_RESERVE },
        }
    }
}

fn local(answer: Local) -> Plan {
    Plan {
        action: Action::Answer(answer),
        reserve: 0,
    }
}
