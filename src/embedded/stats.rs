//! Counters of the embedded store, named as memcached's `stats` reports them.

/// A snapshot of the store's counters, with memcached's `stats` names and meanings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Items currently stored (including expired ones not yet reclaimed, as in memcached).
    pub curr_items: u64,
    /// Bytes charged for current items: key + value + per-item overhead.
    pub bytes: u64,
    /// The configured memory limit.
    pub limit_maxbytes: u64,
    /// Live items removed to make room.
    pub evictions: u64,
    /// get/gets keys found.
    pub get_hits: u64,
    /// get/gets keys not found.
    pub get_misses: u64,
    /// Lookups (of any command) that found an expired item.
    pub get_expired: u64,
    /// Lookups (of any command) that found an item invalidated by flush_all.
    pub get_flushed: u64,
    /// Keys requested by get/gets (memcached counts gat/gats keys in `cmd_touch` only).
    pub cmd_get: u64,
    /// Storage commands processed.
    pub cmd_set: u64,
    /// touch commands and gat/gats keys.
    pub cmd_touch: u64,
    /// touch / gat keys found.
    pub touch_hits: u64,
    /// touch / gat keys not found.
    pub touch_misses: u64,
    /// delete of a present key.
    pub delete_hits: u64,
    /// delete of a missing key.
    pub delete_misses: u64,
    /// incr of a numeric item.
    pub incr_hits: u64,
    /// incr of a missing key.
    pub incr_misses: u64,
    /// decr of a numeric item.
    pub decr_hits: u64,
    /// decr of a missing key.
    pub decr_misses: u64,
    /// cas that stored.
    pub cas_hits: u64,
    /// cas of a missing key.
    pub cas_misses: u64,
    /// cas with a stale unique.
    pub cas_badval: u64,
    /// Items ever stored.
    pub total_items: u64,
    /// Expired items reclaimed for memory without ever having been read.
    pub expired_unfetched: u64,
    /// Items evicted without ever having been read.
    pub evicted_unfetched: u64,
}

/// Per-shard event counters (the gauges are derived from the shard's state).
#[derive(Clone, Debug, Default)]
pub(super) struct Counters {
    pub(super) evictions: u64,
    pub(super) get_hits: u64,
    pub(super) get_misses: u64,
    pub(super) get_expired: u64,
    pub(super) get_flushed: u64,
    pub(super) cmd_get: u64,
    pub(super) cmd_set: u64,
    pub(super) cmd_touch: u64,
    pub(super) touch_hits: u64,
    pub(super) touch_misses: u64,
    pub(super) delete_hits: u64,
    pub(super) delete_misses: u64,
    pub(super) incr_hits: u64,
    pub(super) incr_misses: u64,
    pub(super) decr_hits: u64,
    pub(super) decr_misses: u64,
    pub(super) cas_hits: u64,
    pub(super) cas_misses: u64,
    pub(super) cas_badval: u64,
    pub(super) total_items: u64,
    pub(super) expired_unfetched: u64,
    pub(super) evicted_unfetched: u64,
}

impl StoreStats {
    /// Adds one shard's counters.
    pub(super) fn add(&mut self, c: &Counters) {
        self.evictions += c.evictions;
        self.get_hits += c.get_hits;
        self.get_misses += c.get_misses;
        self.get_expired += c.get_expired;
        self.get_flushed += c.get_flushed;
        self.cmd_get += c.cmd_get;
        self.cmd_set += c.cmd_set;
        self.cmd_touch += c.cmd_touch;
        self.touch_hits += c.touch_hits;
        self.touch_misses += c.touch_misses;
        self.delete_hits += c.delete_hits;
        self.delete_misses += c.delete_misses;
        self.incr_hits += c.incr_hits;
        self.incr_misses += c.incr_misses;
        self.decr_hits += c.decr_hits;
        self.decr_misses += c.decr_misses;
        self.cas_hits += c.cas_hits;
        self.cas_misses += c.cas_misses;
        self.cas_badval += c.cas_badval;
        self.total_items += c.total_items;
        self.expired_unfetched += c.expired_unfetched;
        self.evicted_unfetched += c.evicted_unfetched;
    }
}
