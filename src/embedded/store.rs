//! The store: sharded items and the execution of each memcached command against them.
//!
//! Keys are spread by hash over independently locked shards, each with its own index, LRU
//! list and share of the memory limit, so requests on different keys rarely contend. A
//! request locks one shard at a time (a multi-key get locks each key's shard in turn) and
//! never holds a lock while writing to anything but the caller's buffer.

// The only names this file takes from memroute; inside memroute this block becomes
// `crate::protocol::…`.
use crate::protocol::reply::{END, ERROR, OK, TOO_LARGE};
use crate::protocol::request::MAX_KEY_LEN;
use crate::protocol::{Command, Request};

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::BytesMut;

use super::clock::Clock;
use super::numeric::{format_u64, parse_counter};
use super::shard::{
    secs_u32, FlushState, Shard, StoreError, Value, ITEM_OVERHEAD, KEY_BINARY, STALE, TOKEN_SENT,
};
use super::stats::StoreStats;

const STORED: &[u8] = b"STORED\r\n";
const NOT_STORED: &[u8] = b"NOT_STORED\r\n";
const EXISTS: &[u8] = b"EXISTS\r\n";
const NOT_FOUND: &[u8] = b"NOT_FOUND\r\n";
const DELETED: &[u8] = b"DELETED\r\n";
const TOUCHED: &[u8] = b"TOUCHED\r\n";
pub(super) const NON_NUMERIC: &[u8] =
    b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";
pub(super) const STORE_OOM: &[u8] = b"SERVER_ERROR out of memory storing object\r\n";
/// incr/decr's own out-of-memory line differs from the storage commands' one.
pub(super) const DELTA_OOM: &[u8] = b"SERVER_ERROR out of memory\r\n";

/// Exptimes up to this many seconds (30 days) are relative; larger ones are unix times.
const REALTIME_MAXDELTA: i64 = 60 * 60 * 24 * 30;
/// memcached dates its "process started" 62 s (its update interval + 2) before it really
/// started; absolute times before that count as "long ago" (see [`Store::flush_all`]).
const PROCESS_STARTED_SKEW: u64 = 62;
/// Upper bound on shards; fewer are used when the limit is small (see [`shard_count`]).
const MAX_SHARDS: usize = 16;

/// Settings of an embedded store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Bytes the items may take, counting key + value + [`ITEM_OVERHEAD`] per item. It is
    /// split evenly across the shards, so the largest storable item is `memory_limit / shards`
    /// (the shard count is reduced until that is at least one maximal item).
    pub memory_limit: usize,
    /// When full: evict least recently used items (true), or refuse the store with
    /// `SERVER_ERROR out of memory storing object` (false, like memcached's `-M`).
    pub evict: bool,
    /// Largest value accepted (the codec normally refuses larger ones first).
    pub item_size_max: usize,
}

/// An in-process memcached: executes requests with memcached 1.6's semantics and replies.
#[derive(Debug)]
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
    config: StoreConfig,
    /// The memory limit now (`cache_memlimit` changes it).
    memory_limit: AtomicUsize,
    /// The last CAS unique handed out; one counter for the whole store, as in memcached.
    cas: AtomicU64,
    /// flush_all state ([`FlushState`]); two atomics rather than a lock since every lookup
    /// reads them. A get racing a flush_all may see one updated and not the other, which is
    /// no worse than the get simply arriving first.
    oldest_live: AtomicU64,
    oldest_cas: AtomicU64,
    /// memcached's `process_started`, in unix seconds.
    process_started: u64,
}

/// A storage command's fields: a client's request, or an `add` memroute makes itself.
#[derive(Clone, Copy, Debug)]
pub struct Write<'a> {
    /// set, add, replace, append, prepend or cas.
    pub command: Command,
    /// The key.
    pub key: &'a [u8],
    /// Client flags.
    pub flags: u32,
    /// Expiration time as memcached reads it.
    pub exptime: i64,
    /// The value.
    pub data: &'a [u8],
    /// cas: the unique to compare.
    pub cas: u64,
}

impl<'a> Write<'a> {
    /// The fields of a client's storage request.
    pub fn of(req: &'a Request) -> Write<'a> {
        Write {
            command: req.command,
            key: req.key(),
            flags: req.flags,
            exptime: req.exptime,
            data: req.data(),
            cas: req.number,
        }
    }
}

/// What a storage command did (memcached's `store_item_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Storage {
    /// Stored, with this new CAS unique.
    Stored(u64),
    NotStored,
    Exists,
    NotFound,
    TooLarge,
    OutOfMemory,
}

/// How a meta set differs from the text storage commands.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct MetaStore {
    /// The request is `ms` (its failures to allocate drop the old value in every mode).
    pub(super) meta: bool,
    /// `b`: the key was sent in base64 (memcached's ITEM_KEY_BINARY).
    pub(super) key_binary: bool,
    /// `I` with a CAS: a CAS older than the item's still stores, marked stale.
    pub(super) stale: bool,
}

/// What incr/decr (text or `ma`) did.
#[derive(Clone, Copy, Debug)]
pub(super) enum Counted {
    /// The new value, in the item at `idx`; `in_place` when that item was rewritten rather
    /// than replaced by a new one.
    Done {
        value: u64,
        idx: u32,
        in_place: bool,
    },
    NotFound,
    NonNumeric,
    /// `ma … C<cas>` whose CAS differs.
    CasMismatch,
    OutOfMemory,
}

/// A single-line reply.
enum Reply {
    Line(&'static [u8]),
    Number(u64),
}

/// The answer to a `stats` subcommand memroute sends every backend: the embedded cache has
/// no slab classes to describe, and otherwise checks arguments as memcached does.
fn stats_subcommand(args: &[u8]) -> &'static [u8] {
    let mut tokens = args.split(|b| *b == b' ').filter(|t| !t.is_empty());
    match tokens.next().unwrap_or_default() {
        b"items" | b"slabs" => END,
        b"sizes" => b"STAT sizes_status disabled\r\nEND\r\n",
        b"reset" => b"RESET\r\n",
        b"detail" => match tokens.next() {
            Some(b"on" | b"off") => OK,
            Some(b"dump") => END,
            _ => b"CLIENT_ERROR usage: stats detail on|off|dump\r\n",
        },
        b"cachedump" => match (tokens.next(), tokens.next()) {
            (Some(id), Some(limit)) => {
                use crate::protocol::numbers::safe_strtoul;
                match (safe_strtoul(id), safe_strtoul(limit)) {
                    (Some(id), Some(_)) if id >= 64 => b"CLIENT_ERROR Illegal slab id\r\n",
                    (Some(_), Some(_)) => END,
                    _ => b"CLIENT_ERROR bad command line format\r\n",
                }
            }
            _ => b"CLIENT_ERROR bad command line\r\n",
        },
        _ => ERROR,
    }
}

/// The number of shards for `config`: [`MAX_SHARDS`], halved while a shard's share of the
/// limit could not hold one maximal item (so every storable item fits somewhere).
fn shard_count(config: &StoreConfig) -> usize {
    let biggest = config.item_size_max + MAX_KEY_LEN + ITEM_OVERHEAD;
    let mut n = MAX_SHARDS;
    while n > 1 && config.memory_limit / n < biggest {
        n /= 2;
    }
    n
}

impl Store {
    /// An empty store reading time from `clock`.
    pub fn new(config: StoreConfig, clock: Arc<dyn Clock>) -> Store {
        let n = shard_count(&config);
        let per_shard = config.memory_limit / n;
        Store {
            shards: (0..n).map(|_| Mutex::new(Shard::new(per_shard))).collect(),
            hasher: RandomState::new(),
            process_started: clock.now().saturating_sub(PROCESS_STARTED_SKEW),
            clock,
            memory_limit: AtomicUsize::new(config.memory_limit),
            config,
            cas: AtomicU64::new(0),
            oldest_live: AtomicU64::new(0),
            oldest_cas: AtomicU64::new(0),
        }
    }

    /// Executes one validated request and appends memcached's exact reply bytes to `out`
    /// (nothing at all for a request with noreply).
    pub fn execute(&self, req: &Request, out: &mut BytesMut) {
        let now = self.clock.now();
        let reply = match req.command {
            Command::Get | Command::Gets | Command::Gat | Command::Gats => {
                self.retrieve(req.command, req.exptime, req.keys(), now, out);
                return;
            }
            Command::Set
            | Command::Add
            | Command::Replace
            | Command::Append
            | Command::Prepend
            | Command::Cas => Reply::Line(self.store(&Write::of(req), now)),
            Command::Delete => Reply::Line(self.delete(req.key(), now)),
            Command::Incr | Command::Decr => self.delta(req, now),
            Command::Touch => Reply::Line(self.touch(req, now)),
            Command::FlushAll => {
                self.flush_all(req.exptime, now);
                Reply::Line(OK)
            }
            Command::CacheMemlimit => Reply::Line(self.set_memory_limit(req.number)),
            Command::Stats => Reply::Line(stats_subcommand(req.key())),
            Command::MetaGet
            | Command::MetaSet
            | Command::MetaDelete
            | Command::MetaArithmetic
            | Command::MetaDebug => {
                self.meta(req, now, out);
                return;
            }
            // Answered by the proxy itself; reaching here is a routing mistake.
            Command::Version | Command::Verbosity | Command::Quit | Command::MetaNoop => {
                out.extend_from_slice(ERROR);
                return;
            }
        };
        // memcached suppresses every reply of a noreply command, errors included.
        if req.noreply() {
            return;
        }
        match reply {
            Reply::Line(line) => out.extend_from_slice(line),
            Reply::Number(n) => {
                out.extend_from_slice(format_u64(n, &mut [0; 20]));
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// A snapshot of the counters, summed over the shards.
    pub fn stats(&self) -> StoreStats {
        let mut stats = StoreStats {
            limit_maxbytes: self.memory_limit.load(Ordering::Relaxed) as u64,
            ..StoreStats::default()
        };
        for shard in self.shards.iter() {
            let shard = lock(shard);
            stats.curr_items += shard.items;
            stats.bytes += shard.used as u64;
            stats.add(&shard.stats);
        }
        stats
    }

    pub(super) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of a key hash (high bits; the shard's index uses the low 32).
    pub(super) fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        let i = (hash >> 32) as usize % self.shards.len();
        lock(&self.shards[i])
    }

    /// Whether a full store evicts (else refuses).
    pub(super) fn evicts(&self) -> bool {
        self.config.evict
    }

    pub(super) fn flush_state(&self) -> FlushState {
        FlushState {
            oldest_live: self.oldest_live.load(Ordering::Acquire),
            oldest_cas: self.oldest_cas.load(Ordering::Acquire),
        }
    }

    pub(super) fn next_cas(&self) -> u64 {
        self.cas.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// memcached's `realtime()`: an exptime as sent → absolute expiry (0 = never). Times
    /// that are already past map to `process_started + 1`, memcached's "long ago".
    pub(super) fn realtime(&self, exptime: i64, now: u64) -> u64 {
        let long_ago = self.process_started + 1;
        if exptime == 0 {
            0
        } else if exptime < 0 {
            long_ago
        } else if exptime > REALTIME_MAXDELTA {
            let at = exptime as u64;
            if at <= self.process_started {
                long_ago
            } else {
                at
            }
        } else {
            now + exptime as u64
        }
    }

    /// A retrieval (`get`, `gets`, `gat`, `gats` with `exptime`) of `keys`, memcached's reply
    /// appended to `out`: a typed call for the retrievals memroute makes itself.
    pub fn retrieve_keys<'k>(
        &self,
        command: Command,
        exptime: i64,
        keys: impl Iterator<Item = &'k [u8]>,
        out: &mut BytesMut,
    ) {
        self.retrieve(command, exptime, keys, self.clock.now(), out);
    }

    /// A storage command, its reply appended to `out`.
    pub fn write(&self, w: &Write<'_>, out: &mut BytesMut) {
        let reply = self.store(w, self.clock.now());
        out.extend_from_slice(reply);
    }

    /// `delete <key>`, its reply appended to `out`.
    pub fn delete_key(&self, key: &[u8], out: &mut BytesMut) {
        out.extend_from_slice(self.delete(key, self.clock.now()));
    }

    fn retrieve<'k>(
        &self,
        command: Command,
        exptime: i64,
        keys: impl Iterator<Item = &'k [u8]>,
        now: u64,
        out: &mut BytesMut,
    ) {
        let touch = matches!(command, Command::Gat | Command::Gats);
        let with_cas = matches!(command, Command::Gets | Command::Gats);
        let exptime = secs_u32(self.realtime(exptime, now));
        let flush = self.flush_state();
        for key in keys {
            let hash = self.hash(key);
            let mut shard = self.shard(hash);
            // memcached counts a gat key as a touch only, not as a get.
            if touch {
                shard.stats.cmd_touch += 1;
            } else {
                shard.stats.cmd_get += 1;
            }
            let Some(idx) = shard.lookup(hash as u32, key, now, &flush) else {
                if touch {
                    shard.stats.touch_misses += 1;
                } else {
                    shard.stats.get_misses += 1;
                }
                continue;
            };
            if touch {
                shard.stats.touch_hits += 1;
            } else {
                shard.stats.get_hits += 1;
            }
            shard.hit(idx, now);
            let e = shard.entry_mut(idx);
            if touch {
                e.exptime = exptime;
            }
            let mut num = [0; 20];
            out.extend_from_slice(b"VALUE ");
            out.extend_from_slice(key);
            out.extend_from_slice(b" ");
            out.extend_from_slice(format_u64(u64::from(e.flags), &mut num));
            out.extend_from_slice(b" ");
            out.extend_from_slice(format_u64(e.value().len() as u64, &mut num));
            if with_cas {
                out.extend_from_slice(b" ");
                out.extend_from_slice(format_u64(e.cas, &mut num));
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(e.value());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(END);
    }

    fn store(&self, w: &Write<'_>, now: u64) -> &'static [u8] {
        match self.store_item(w, MetaStore::default(), now) {
            Storage::Stored(_) => STORED,
            Storage::NotStored => NOT_STORED,
            Storage::Exists => EXISTS,
            Storage::NotFound => NOT_FOUND,
            Storage::TooLarge => TOO_LARGE,
            Storage::OutOfMemory => STORE_OOM,
        }
    }

    /// memcached's `do_store_item` for text storage commands and `ms`. A CAS (`w.cas`, 0 for
    /// none) is compared by `cas` and, as `ms … C` makes memcached do, by append and prepend.
    pub(super) fn store_item(&self, w: &Write<'_>, how: MetaStore, now: u64) -> Storage {
        let (key, data) = (w.key, w.data);
        let hash = self.hash(key);
        let flush = self.flush_state();
        let mut shard = self.shard(hash);
        let h = hash as u32;
        // memcached drops the old value of a failed set rather than leave it stale; `ms`
        // does so in every mode.
        let drops_old = w.command == Command::Set || how.meta;
        if data.len() > self.config.item_size_max {
            if drops_old {
                shard.remove_key(h, key);
            }
            return Storage::TooLarge;
        }
        let exptime = secs_u32(self.realtime(w.exptime, now));
        let evict = self.config.evict;
        let old = shard.lookup(h, key, now, &flush);
        let mut bits = if how.key_binary { KEY_BINARY } else { 0 };
        let (value, flags, exptime) = match (w.command, old) {
            (Command::Add, Some(idx)) => {
                // Like memcached, a refused add still counts as a use of the item.
                shard.update(idx, now);
                shard.stats.cmd_set += 1;
                return Storage::NotStored;
            }
            (Command::Replace | Command::Append | Command::Prepend, None) => {
                shard.stats.cmd_set += 1;
                return Storage::NotStored;
            }
            (Command::Cas, None) => {
                shard.stats.cmd_set += 1;
                shard.stats.cas_misses += 1;
                return Storage::NotFound;
            }
            (Command::Cas, Some(idx)) => {
                let e = shard.entry(idx);
                // A unique of 0 never matches: memcached treats it as "no CAS given".
                if w.cas != 0 && e.cas == w.cas {
                    (Value::New(data), w.flags, exptime)
                } else if how.stale && w.cas != 0 && w.cas < e.cas {
                    // An older CAS with `I`: stored anyway, marked stale, keeping the
                    // item's expiry and whether its win token went out.
                    bits |= STALE | (e.bits & TOKEN_SENT);
                    (Value::New(data), w.flags, e.exptime)
                } else {
                    shard.stats.cmd_set += 1;
                    shard.stats.cas_badval += 1;
                    return Storage::Exists;
                }
            }
            // append/prepend keep the existing item's flags and expiry.
            (Command::Append | Command::Prepend, Some(idx)) => {
                let e = shard.entry(idx);
                if w.cas != 0 && e.cas != w.cas {
                    shard.stats.cmd_set += 1;
                    return Storage::Exists;
                }
                // A combined value beyond the size limit is refused with NOT_STORED, as
                // memcached does (its allocation of the combined item fails).
                if e.value().len() + data.len() > self.config.item_size_max {
                    shard.stats.cmd_set += 1;
                    return Storage::NotStored;
                }
                let value = if w.command == Command::Append {
                    Value::Append(data)
                } else {
                    Value::Prepend(data)
                };
                // memcached builds the combined item afresh: no flag bits carry over.
                bits = 0;
                (value, e.flags, e.exptime)
            }
            _ => (Value::New(data), w.flags, exptime),
        };
        let cas = self.next_cas();
        match shard.link(h, key, value, flags, exptime, cas, old, evict, now, &flush) {
            Ok(idx) => {
                shard.entry_mut(idx).bits = bits;
                shard.stats.cmd_set += 1;
                if w.command == Command::Cas {
                    shard.stats.cas_hits += 1;
                }
                Storage::Stored(cas)
            }
            Err(StoreError::OutOfMemory) => match w.command {
                // The request's own item fit; only the combined one did not: memcached
                // answers NOT_STORED for that.
                Command::Append | Command::Prepend => {
                    shard.stats.cmd_set += 1;
                    Storage::NotStored
                }
                _ => {
                    if drops_old {
                        shard.remove_key(h, key);
                    }
                    Storage::OutOfMemory
                }
            },
        }
    }

    fn delete(&self, key: &[u8], now: u64) -> &'static [u8] {
        let hash = self.hash(key);
        let flush = self.flush_state();
        let mut shard = self.shard(hash);
        match shard.lookup(hash as u32, key, now, &flush) {
            Some(idx) => {
                shard.unlink(idx);
                shard.stats.delete_hits += 1;
                DELETED
            }
            None => {
                shard.stats.delete_misses += 1;
                NOT_FOUND
            }
        }
    }

    fn touch(&self, req: &Request, now: u64) -> &'static [u8] {
        let key = req.key();
        let hash = self.hash(key);
        let flush = self.flush_state();
        let exptime = secs_u32(self.realtime(req.exptime, now));
        let mut shard = self.shard(hash);
        shard.stats.cmd_touch += 1;
        match shard.lookup(hash as u32, key, now, &flush) {
            Some(idx) => {
                shard.stats.touch_hits += 1;
                shard.hit(idx, now);
                // touch changes only the expiry: memcached 1.6 keeps the CAS unique.
                shard.entry_mut(idx).exptime = exptime;
                TOUCHED
            }
            None => {
                shard.stats.touch_misses += 1;
                NOT_FOUND
            }
        }
    }

    fn delta(&self, req: &Request, now: u64) -> Reply {
        let incr = req.command == Command::Incr;
        let key = req.key();
        let hash = self.hash(key);
        let flush = self.flush_state();
        let mut shard = self.shard(hash);
        match self.count(&mut shard, hash, key, incr, req.number, 0, now, &flush) {
            Counted::Done { value, .. } => Reply::Number(value),
            Counted::NotFound => {
                if incr {
                    shard.stats.incr_misses += 1;
                } else {
                    shard.stats.decr_misses += 1;
                }
                Reply::Line(NOT_FOUND)
            }
            Counted::NonNumeric => Reply::Line(NON_NUMERIC),
            // Text incr/decr compare no CAS.
            Counted::CasMismatch => Reply::Line(EXISTS),
            Counted::OutOfMemory => Reply::Line(DELTA_OOM),
        }
    }

    /// memcached's `do_add_delta` on a locked shard: incr (wrapping at 2^64) or decr
    /// (flooring at 0) of `key`'s counter by `delta`, if its CAS is `cas` (0: any). Misses
    /// are left for the caller to count (`ma` with `N` does not count them).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn count(
        &self,
        shard: &mut Shard,
        hash: u64,
        key: &[u8],
        incr: bool,
        delta: u64,
        cas: u64,
        now: u64,
        flush: &FlushState,
    ) -> Counted {
        let h = hash as u32;
        let Some(idx) = shard.lookup(h, key, now, flush) else {
            return Counted::NotFound;
        };
        // memcached refuses an empty value before looking at the CAS, and a value that is
        // no number after.
        let e = shard.entry(idx);
        if e.value().is_empty() {
            return Counted::NonNumeric;
        }
        if cas != 0 && e.cas != cas {
            return Counted::CasMismatch;
        }
        let Some(value) = parse_counter(e.value()) else {
            return Counted::NonNumeric;
        };
        let value = if incr {
            shard.stats.incr_hits += 1;
            value.wrapping_add(delta)
        } else {
            shard.stats.decr_hits += 1;
            value.saturating_sub(delta)
        };
        let mut buf = [0; 20];
        let text = format_u64(value, &mut buf);
        let new_cas = self.next_cas();
        let e = shard.entry_mut(idx);
        if text.len() <= e.room() {
            // Rewritten in place, as memcached does while the number fits, but a shorter
            // number is stored as it is: not padded with spaces to the old length as
            // memcached leaves it (an append would show the spaces). The room is kept, and
            // so are the item's flag bits.
            e.rewrite(text);
            e.cas = new_cas;
            shard.update(idx, now);
            return Counted::Done {
                value,
                idx,
                in_place: true,
            };
        }
        let (flags, exptime) = (e.flags, e.exptime);
        let new = Value::New(text);
        match shard.link(
            h,
            key,
            new,
            flags,
            exptime,
            new_cas,
            Some(idx),
            self.config.evict,
            now,
            flush,
        ) {
            Ok(idx) => Counted::Done {
                value,
                idx,
                in_place: false,
            },
            Err(StoreError::OutOfMemory) => Counted::OutOfMemory,
        }
    }

    /// memcached's flush_all: with no delay every current item becomes invalid (by CAS, so
    /// items stored afterwards in the same second stay valid); with a delay, items stored up
    /// to one second before `now + delay` become invalid once the clock reaches that second.
    /// A delay that is an absolute time before the process started disables flushing.
    /// Invalid items are reclaimed lazily, on lookup or when memory is needed.
    /// `cache_memlimit <megabytes>`, with memcached's bounds; a smaller limit is reached by
    /// evicting as items are stored.
    fn set_memory_limit(&self, megabytes: u64) -> &'static [u8] {
        if megabytes < 8 {
            return b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n";
        }
        if megabytes > 1_000_000_000 {
            return b"MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes\r\n";
        }
        let limit = megabytes as usize * 1024 * 1024;
        self.memory_limit.store(limit, Ordering::Relaxed);
        let per_shard = limit / self.shards.len();
        for shard in self.shards.iter() {
            lock(shard).limit = per_shard;
        }
        OK
    }

    fn flush_all(&self, delay: i64, now: u64) {
        let new_oldest = if delay > 0 {
            self.realtime(delay, now)
        } else {
            now
        };
        let mut oldest_live = new_oldest.saturating_sub(1);
        if oldest_live <= self.process_started {
            oldest_live = 0;
        }
        if oldest_live <= now {
            self.oldest_cas.store(self.next_cas(), Ordering::Release);
        }
        self.oldest_live.store(oldest_live, Ordering::Release);
    }

    /// Keys of one shard from least to most recently used.
    #[cfg(test)]
    pub(super) fn lru_keys(&self, shard: usize) -> Vec<Vec<u8>> {
        lock(&self.shards[shard]).lru_keys()
    }

    /// How many shards the store has.
    #[cfg(test)]
    pub(super) fn shard_total(&self) -> usize {
        self.shards.len()
    }
}

/// Locks a shard. A panic while holding the lock cannot leave a shard's structures half
/// updated in a way later requests would trip over more than over a lost item, so the lock
/// is taken even when poisoned rather than failing every later request for its keys.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}
