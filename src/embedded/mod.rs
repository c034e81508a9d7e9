//! The embedded cache backend: an in-process store that executes memcached requests with
//! memcached 1.6's semantics and reply bytes, so a pool can be served without a memcached.
//!
//! - [`store`]: the sharded store and command execution ([`Store`], [`StoreConfig`]).
//! - [`clock`]: time sources ([`SystemClock`], [`ManualClock`] for tests).
//! - [`stats`]: counters with memcached's `stats` names ([`StoreStats`]).
//! - `shard`, `index`, `numeric`: one shard's slab, LRU and memory accounting; its hash
//!   index; memcached's number parsing.

pub mod clock;
mod index;
mod numeric;
mod shard;
pub mod stats;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use shard::ITEM_OVERHEAD;
pub use stats::StoreStats;
pub use store::{Store, StoreConfig};

#[cfg(test)]
mod tests;
