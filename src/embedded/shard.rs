//! One shard of the store: its items in a slab, their hash index, their LRU list, and their
//! memory accounting. A shard is used only under its own lock.

use super::index::Index;
use super::stats::Counters;

/// "No entry" in the LRU links and the free list.
const NIL: u32 = u32::MAX;

/// Bytes charged per item on top of its key and value.
///
/// This is the real bookkeeping cost: the slab entry (56 bytes on 64-bit targets), two
/// `u32` index slots (the index is kept at most half full), and 16 bytes for the allocator's
/// header and size-class rounding of the item's data allocation. memcached's own item header
/// is 48–56 bytes plus slab-class rounding, so the two fill a memory limit at similar rates.
pub const ITEM_OVERHEAD: usize = 56 + 2 * 4 + 16;

/// One cached item, or a free slab slot (empty `data`).
#[derive(Debug)]
pub(super) struct Entry {
    /// The key followed by the value: one allocation per item, owned by the store alone.
    pub(super) data: Box<[u8]>,
    /// CAS unique (never 0 for a live item).
    pub(super) cas: u64,
    /// Low 32 bits of the key's hash, for the index.
    pub(super) hash: u32,
    /// Client flags.
    pub(super) flags: u32,
    /// Absolute expiry in unix seconds; 0 = never. (u32 lasts until 2106.)
    pub(super) exptime: u32,
    /// Last access, unix seconds, kept as memcached keeps it (see [`Shard::hit`] and
    /// [`Shard::update`]): `mg … l` and `me` report it, and flush_all compares against it.
    pub(super) time: u32,
    /// LRU neighbours (towards head / towards tail); `next` also links the free list.
    prev: u32,
    next: u32,
    /// Key length (keys are at most 250 bytes).
    pub(super) key_len: u8,
    /// Bytes at the end of `data` that are no part of the value: room left when `incr` or
    /// `decr` rewrote the number shorter in place (memcached pads it with spaces instead).
    pub(super) spare: u8,
    /// memcached's per-item flag bits that clients can observe: [`FETCHED`], [`ACTIVE`],
    /// [`STALE`], [`TOKEN_SENT`], [`KEY_BINARY`]. One byte, in what was padding.
    pub(super) bits: u8,
}

/// A get has returned the item (`h`, `me … fetch=`, the `*_unfetched` stats).
pub(super) const FETCHED: u8 = 1;
/// Hit again after being fetched: memcached's segmented LRU refreshes the access time on
/// that second hit only, not on every one.
pub(super) const ACTIVE: u8 = 2;
/// Invalidated by `md … I` or stored stale by `ms … I C<older cas>` (`mg` answers `X`).
pub(super) const STALE: u8 = 4;
/// A client already got the recache / stale win token (`W`); later ones see `Z`.
pub(super) const TOKEN_SENT: u8 = 8;
/// Stored by `ms` with a base64 key: `k` and `me` return the key base64-encoded.
pub(super) const KEY_BINARY: u8 = 16;

impl Entry {
    /// The item's key.
    pub(super) fn key(&self) -> &[u8] {
        &self.data[..usize::from(self.key_len)]
    }

    /// The item's value.
    pub(super) fn value(&self) -> &[u8] {
        &self.data[usize::from(self.key_len)..self.data.len() - usize::from(self.spare)]
    }

    /// Rewrites the value in place with `value`, which must fit in the item's room.
    pub(super) fn rewrite(&mut self, value: &[u8]) {
        let start = usize::from(self.key_len);
        let room = self.data.len() - start;
        self.data[start..start + value.len()].copy_from_slice(value);
        self.spare = (room - value.len()) as u8;
    }

    /// Bytes the value may take when rewritten in place.
    pub(super) fn room(&self) -> usize {
        self.data.len() - usize::from(self.key_len)
    }

    /// Whether flag bit `bit` is set.
    pub(super) fn has(&self, bit: u8) -> bool {
        self.bits & bit != 0
    }

    /// Bytes charged against the memory limit.
    fn size(&self) -> usize {
        self.data.len() + ITEM_OVERHEAD
    }
}

/// The flush_all state every lookup checks, copied from the store's atomics per request.
#[derive(Clone, Copy, Debug)]
pub(super) struct FlushState {
    /// Items stored at or before this time are invalid once the clock reaches it; 0 = none.
    pub(super) oldest_live: u64,
    /// Items with a CAS below this are invalid (an immediate flush); 0 = none.
    pub(super) oldest_cas: u64,
}

impl FlushState {
    /// memcached's `item_is_flushed`: both tests apply only once `oldest_live` is in effect.
    fn flushed(&self, e: &Entry, now: u64) -> bool {
        if self.oldest_live == 0 || self.oldest_live > now {
            return false;
        }
        u64::from(e.time) <= self.oldest_live || (self.oldest_cas != 0 && e.cas < self.oldest_cas)
    }
}

/// Why an item could not be stored.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum StoreError {
    /// The item does not fit in the memory limit (even after eviction, if enabled).
    #[error("SERVER_ERROR out of memory storing object")]
    OutOfMemory,
}

/// The value of an item being stored.
#[derive(Clone, Copy, Debug)]
pub(super) enum Value<'a> {
    /// These bytes.
    New(&'a [u8]),
    /// The replaced item's value followed by these bytes.
    Append(&'a [u8]),
    /// These bytes followed by the replaced item's value.
    Prepend(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The bytes the request brought.
    fn bytes(self) -> &'a [u8] {
        match self {
            Value::New(v) | Value::Append(v) | Value::Prepend(v) => v,
        }
    }
}

/// Items of one shard.
#[derive(Debug)]
pub(super) struct Shard {
    entries: Vec<Entry>,
    /// Head of the list of free slab slots.
    free: u32,
    index: Index,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next to evict.
    tail: u32,
    /// Bytes charged for live items.
    pub(super) used: usize,
    /// This shard's share of the memory limit.
    pub(super) limit: usize,
    /// Items linked.
    pub(super) items: u64,
    /// Counters, kept per shard so a request updates them under the lock it already holds.
    pub(super) stats: Counters,
}

/// How many tail items are checked for expiry before evicting a live one (memcached checks
/// a handful too, so expired items are reclaimed first without scanning the whole list).
const TAIL_SEARCH: usize = 5;

impl Shard {
    /// An empty shard with `limit` bytes.
    pub(super) fn new(limit: usize) -> Shard {
        Shard {
            entries: Vec::new(),
            free: NIL,
            index: Index::new(),
            head: NIL,
            tail: NIL,
            used: 0,
            limit,
            items: 0,
            stats: Counters::default(),
        }
    }

    /// The entry at slab index `idx`.
    pub(super) fn entry(&self, idx: u32) -> &Entry {
        &self.entries[idx as usize]
    }

    /// The entry at slab index `idx`, mutably.
    pub(super) fn entry_mut(&mut self, idx: u32) -> &mut Entry {
        &mut self.entries[idx as usize]
    }

    fn find(&self, hash: u32, key: &[u8]) -> Option<(usize, u32)> {
        let entries = &self.entries;
        self.index.find(hash, |i| {
            let e = &entries[i as usize];
            e.hash == hash && e.key() == key
        })
    }

    /// The live item for `key`. An expired or flushed one is unlinked on the way (as
    /// memcached does lazily) and counted in `get_expired` / `get_flushed`.
    pub(super) fn lookup(
        &mut self,
        hash: u32,
        key: &[u8],
        now: u64,
        flush: &FlushState,
    ) -> Option<u32> {
        let (pos, idx) = self.find(hash, key)?;
        let e = &self.entries[idx as usize];
        if flush.flushed(e, now) {
            self.stats.get_flushed += 1;
        } else if e.exptime != 0 && u64::from(e.exptime) <= now {
            self.stats.get_expired += 1;
        } else {
            return Some(idx);
        }
        self.unlink_at(pos, idx);
        None
    }

    /// Removes the item at slab index `idx`.
    pub(super) fn unlink(&mut self, idx: u32) {
        let e = &self.entries[idx as usize];
        let (pos, _) = self
            .find(e.hash, e.key())
            .expect("a linked entry is in the index");
        self.unlink_at(pos, idx);
    }

    fn unlink_at(&mut self, pos: usize, idx: u32) {
        let entries = &self.entries;
        self.index.remove_at(pos, |i| entries[i as usize].hash);
        self.lru_remove(idx);
        let e = &mut self.entries[idx as usize];
        self.used -= e.size();
        self.items -= 1;
        // Dropping the data here returns the item's memory at once; the slot is reused.
        e.data = Box::default();
        e.next = self.free;
        self.free = idx;
    }

    /// Marks the item as just used: it moves to the head of the LRU list.
    pub(super) fn bump(&mut self, idx: u32) {
        if self.head != idx {
            self.lru_remove(idx);
            self.lru_push_head(idx);
        }
    }

    /// A fetch of the item (memcached's `do_item_bump`): it moves to the head of the LRU,
    /// the first fetch marks it fetched, the next one marks it active and refreshes its
    /// access time. Later fetches leave the time alone (memcached's LRU maintainer clears
    /// "active" again as it moves items between its segments, on its own schedule).
    pub(super) fn hit(&mut self, idx: u32, now: u64) {
        self.bump(idx);
        let e = &mut self.entries[idx as usize];
        if e.has(ACTIVE) {
            return;
        }
        if e.has(FETCHED) {
            e.bits |= ACTIVE;
            e.time = secs_u32(now);
        } else {
            e.bits |= FETCHED;
        }
    }

    /// A use of the item that is no fetch (memcached's `do_item_update`: a refused add, a
    /// count rewritten in place): to the head of the LRU, access time refreshed.
    pub(super) fn update(&mut self, idx: u32, now: u64) {
        self.bump(idx);
        self.entries[idx as usize].time = secs_u32(now);
    }

    fn lru_remove(&mut self, idx: u32) {
        let (prev, next) = {
            let e = &self.entries[idx as usize];
            (e.prev, e.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.entries[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.entries[n as usize].prev = prev,
        }
    }

    fn lru_push_head(&mut self, idx: u32) {
        let old_head = self.head;
        {
            let e = &mut self.entries[idx as usize];
            e.prev = NIL;
            e.next = old_head;
        }
        match old_head {
            NIL => self.tail = idx,
            h => self.entries[h as usize].prev = idx,
        }
        self.head = idx;
    }

    /// Frees memory until an item of `size` bytes fits, counting `freed` bytes as about to be
    /// released (the item being replaced, which is never evicted here: `keep`). Expired and
    /// flushed items near the LRU tail go first, then, if `evict`, the least recently used.
    fn make_room(
        &mut self,
        size: usize,
        freed: usize,
        keep: u32,
        evict: bool,
        now: u64,
        flush: &FlushState,
    ) -> Result<(), StoreError> {
        if size > self.limit {
            return Err(StoreError::OutOfMemory);
        }
        while self.used - freed + size > self.limit {
            let mut victim = NIL;
            let mut cursor = self.tail;
            for _ in 0..TAIL_SEARCH {
                if cursor == NIL {
                    break;
                }
                let e = &self.entries[cursor as usize];
                if cursor != keep
                    && (flush.flushed(e, now) || (e.exptime != 0 && u64::from(e.exptime) <= now))
                {
                    victim = cursor;
                    break;
                }
                cursor = e.prev;
            }
            if victim != NIL {
                if !self.entries[victim as usize].has(FETCHED) {
                    self.stats.expired_unfetched += 1;
                }
                self.unlink(victim);
                continue;
            }
            if !evict {
                return Err(StoreError::OutOfMemory);
            }
            victim = self.tail;
            if victim == keep {
                victim = self.entries[victim as usize].prev;
            }
            if victim == NIL {
                // Only the item being replaced is left; `size <= limit` makes this unreachable
                // in practice, but refusing is the safe answer.
                return Err(StoreError::OutOfMemory);
            }
            self.stats.evictions += 1;
            if !self.entries[victim as usize].has(FETCHED) {
                self.stats.evicted_unfetched += 1;
            }
            self.unlink(victim);
        }
        Ok(())
    }

    /// Stores a new item for `key`, replacing `replaces` (the linked item with the same key)
    /// if given. Returns the new slab index.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn link(
        &mut self,
        hash: u32,
        key: &[u8],
        value: Value<'_>,
        flags: u32,
        exptime: u32,
        cas: u64,
        replaces: Option<u32>,
        evict: bool,
        now: u64,
        flush: &FlushState,
    ) -> Result<u32, StoreError> {
        let old_len = match (value, replaces) {
            (Value::New(_), _) | (_, None) => 0,
            (_, Some(i)) => self.entries[i as usize].value().len(),
        };
        let len = key.len() + value.bytes().len() + old_len;
        let size = len + ITEM_OVERHEAD;
        let freed = replaces.map_or(0, |i| self.entries[i as usize].size());
        // The replaced item is never evicted here, so an appended-to value is still readable.
        self.make_room(size, freed, replaces.unwrap_or(NIL), evict, now, flush)?;
        let old_value: &[u8] = match (value, replaces) {
            (Value::New(_), _) | (_, None) => &[],
            (_, Some(i)) => self.entries[i as usize].value(),
        };
        let (first, second) = match value {
            Value::New(v) => (v, &[][..]),
            Value::Append(v) => (old_value, v),
            Value::Prepend(v) => (v, old_value),
        };
        // The item's only allocation, exactly sized so `into_boxed_slice` does not reallocate.
        let mut data = Vec::with_capacity(len);
        data.extend_from_slice(key);
        data.extend_from_slice(first);
        data.extend_from_slice(second);
        if let Some(old) = replaces {
            self.unlink(old);
        }
        let entry = Entry {
            data: data.into_boxed_slice(),
            cas,
            hash,
            flags,
            exptime,
            time: secs_u32(now),
            prev: NIL,
            next: NIL,
            key_len: key.len() as u8,
            spare: 0,
            bits: 0,
        };
        let idx = match self.free {
            NIL => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
            f => {
                self.free = self.entries[f as usize].next;
                self.entries[f as usize] = entry;
                f
            }
        };
        let entries = &self.entries;
        self.index.insert(hash, idx, |i| entries[i as usize].hash);
        self.lru_push_head(idx);
        self.used += size;
        self.items += 1;
        self.stats.total_items += 1;
        Ok(idx)
    }

    /// Removes the item for `key` if present, live or not.
    pub(super) fn remove_key(&mut self, hash: u32, key: &[u8]) {
        if let Some((pos, idx)) = self.find(hash, key) {
            self.unlink_at(pos, idx);
        }
    }

    /// Keys from least to most recently used (tests inspect eviction order with this).
    #[cfg(test)]
    pub(super) fn lru_keys(&self) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        let mut cursor = self.tail;
        while cursor != NIL {
            let e = &self.entries[cursor as usize];
            keys.push(e.key().to_vec());
            cursor = e.prev;
        }
        keys
    }
}

/// Unix seconds as stored in an entry, saturating (u32 seconds last until 2106).
pub(super) fn secs_u32(secs: u64) -> u32 {
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_covers_the_real_bookkeeping() {
        // Entry plus two index slots must fit in the charged overhead, leaving the rest for
        // the allocator's rounding of the data allocation.
        assert!(std::mem::size_of::<Entry>() + 2 * 4 <= ITEM_OVERHEAD - 16);
    }
}
