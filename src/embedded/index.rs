//! An open-addressing hash index from key to slab slot, one per shard.
//!
//! The index holds only `u32` slab indices; keys live once, inside each entry's own data
//! allocation, and are compared through a closure. A `HashMap<Box<[u8]>, u32>` would need a
//! second copy (and allocation) of every key, which is what this avoids.

/// Marks an unused slot.
const EMPTY: u32 = u32::MAX;

/// Linear-probing table of slab indices, kept at most half full so probes stay short.
#[derive(Debug)]
pub(super) struct Index {
    slots: Vec<u32>,
    len: usize,
}

impl Index {
    /// An empty index with a small initial table.
    pub(super) fn new() -> Index {
        Index {
            slots: vec![EMPTY; 16],
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Finds the entry whose hash is `hash` and for which `matches` holds; returns its slot
    /// position (for [`Index::remove_at`]) and slab index.
    pub(super) fn find(
        &self,
        hash: u32,
        mut matches: impl FnMut(u32) -> bool,
    ) -> Option<(usize, u32)> {
        let mask = self.mask();
        let mut pos = hash as usize & mask;
        loop {
            let s = self.slots[pos];
            if s == EMPTY {
                return None;
            }
            if matches(s) {
                return Some((pos, s));
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Adds slab index `idx` whose hash is `hash`; `hash_of` gives the hash of any indexed
    /// entry (needed when the table grows).
    pub(super) fn insert(&mut self, hash: u32, idx: u32, hash_of: impl Fn(u32) -> u32) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow(&hash_of);
        }
        self.place(hash, idx);
        self.len += 1;
    }

    fn place(&mut self, hash: u32, idx: u32) {
        let mask = self.mask();
        let mut pos = hash as usize & mask;
        while self.slots[pos] != EMPTY {
            pos = (pos + 1) & mask;
        }
        self.slots[pos] = idx;
    }

    fn grow(&mut self, hash_of: &impl Fn(u32) -> u32) {
        let doubled = vec![EMPTY; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        for idx in old.into_iter().filter(|s| *s != EMPTY) {
            self.place(hash_of(idx), idx);
        }
    }

    /// Removes the slot at `pos` (as returned by [`Index::find`]). Uses backward-shift
    /// deletion instead of tombstones so lookups never slow down after many deletes.
    pub(super) fn remove_at(&mut self, pos: usize, hash_of: impl Fn(u32) -> u32) {
        let mask = self.mask();
        let mut hole = pos;
        let mut j = pos;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s == EMPTY {
                break;
            }
            let ideal = hash_of(s) as usize & mask;
            // `s` may fill the hole only if the hole lies on its probe path (ideal..=j).
            if (j.wrapping_sub(ideal) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
    }

    /// Number of slots (twice the entries at most), for tests.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn matches_a_hashmap_under_random_inserts_and_removes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Small hash space forces long collision chains and wrap-around.
        let hashes: Vec<u32> = (0..2000).map(|_| rng.gen_range(0..64)).collect();
        let hash_of = |i: u32| hashes[i as usize];
        let mut index = Index::new();
        let mut model: HashMap<u32, ()> = HashMap::new();
        for _ in 0..20_000 {
            let i = rng.gen_range(0..2000u32);
            let found = index.find(hash_of(i), |s| s == i);
            assert_eq!(found.is_some(), model.contains_key(&i));
            match found {
                Some((pos, _)) => {
                    index.remove_at(pos, hash_of);
                    model.remove(&i);
                }
                None => {
                    index.insert(hash_of(i), i, hash_of);
                    model.insert(i, ());
                }
            }
        }
        for i in 0..2000u32 {
            assert_eq!(
                index.find(hash_of(i), |s| s == i).is_some(),
                model.contains_key(&i)
            );
        }
        assert!(index.capacity() >= model.len() * 2);
    }
}
