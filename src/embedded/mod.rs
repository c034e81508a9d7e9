//! The embedded cache backend: an in-process store that executes memcached requests with
//! memcached 1.6's semantics and reply bytes, so a pool can be served without a memcached.
//!
//! - [`store`]: the sharded store and command execution ([`Store`], [`StoreConfig`]).
//! - [`clock`]: time sources ([`SystemClock`], [`ManualClock`] for tests).
//! - [`stats`]: counters with memcached's `stats` names ([`StoreStats`]).
//! - `meta`: the meta protocol (`mg`, `ms`, `md`, `ma`, `me`).
//! - `shard`, `index`, `numeric`: one shard's slab, LRU and memory accounting; its hash
//!   index; memcached's number parsing.
//!
//! Replies are verified byte for byte against memcached 1.6.18 by a differential property
//! test. Known differences, all outside what a client can rely on:
//! - memcached sometimes calls a counter of 2^63 or more "non-numeric" (its check for a
//!   minus sign reads leftover memory past the value); here it is always a number.
//! - A count that shortens a number rewrites it in place unpadded (`decr` 10 → 9 stores
//!   `9`). memcached usually pads it to the old length (`9 `), but copies it unpadded when a
//!   background thread holds the item, so neither is certain there. The padding shows in what
//!   gets return, in a later append, and in the meta sizes (`mg … s`, `me … size=`).
//! - Memory: items are charged key + value + [`ITEM_OVERHEAD`] against a limit split evenly
//!   over the shards, rather than memcached's slab classes, so exactly which item is evicted
//!   first, and when, differs; refusing an `add` of an existing key never evicts.
//! - Stats: `get_expired`/`get_flushed` count every lookup that meets such an item;
//!   memcached also reclaims some silently while allocating.
//! - The meta protocol's own (its `me` sizes, its access times): see `meta`.

pub mod clock;
mod index;
mod meta;
mod numeric;
mod shard;
pub mod stats;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use shard::ITEM_OVERHEAD;
pub use stats::StoreStats;
pub use store::{Store, StoreConfig, Write};

#[cfg(test)]
mod tests;
