//! Memory a client can make memroute hold: replies waiting to be written to it, and room
//! reserved for replies still on their way.
//!
//! A client may only send requests upstream while its *charge* (reply bytes held for it plus
//! the estimated size of the replies it is waiting for) is below `max_client_buffer`; the one
//! request that crosses the line still goes, so a single large reply is always possible. The
//! size of a retrieval's reply is estimated from the largest value each backend was recently
//! seen to store or return ([`ValueSizes`]). Should a reply still arrive larger than the
//! client's hard cap (`max_client_buffer` + `item_size_max`, possible only when values grew
//! beyond anything seen recently), it is answered as memcached answers a get it has no memory
//! for.
//!
//! Across the process, [`Budget`] sums every client's charge; beyond `max_client_memory`, only
//! clients that hold nothing may send (one request at a time), so whoever holds the most stops
//! being read first and every client still makes progress.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

/// Room reserved for a reply of one line (`STORED`, a number, an error).
pub const LINE_RESERVE: usize = 64;

/// Bytes of a `VALUE <key> <flags> <bytes> <cas>\r\n` line and the value's `\r\n`, beyond the
/// key.
const VALUE_OVERHEAD: usize = 56;

/// The smallest value size assumed for a key (values smaller than this are common and cheap).
const MIN_VALUE_ESTIMATE: u32 = 1024;

/// The largest values a backend was seen to hold recently: in the current period and the one
/// before, so a large value is remembered for one to two periods after it was last seen.
#[derive(Debug, Default)]
pub struct ValueSizes {
    current: AtomicU32,
    previous: AtomicU32,
}

impl ValueSizes {
    /// Records a value of `len` bytes (stored or returned).
    pub fn record(&self, len: usize) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        if len > self.current.load(Ordering::Relaxed) {
            self.current.fetch_max(len, Ordering::Relaxed);
        }
    }

    /// The size to assume for one of this backend's values.
    pub fn estimate(&self) -> usize {
        let seen = self
            .current
            .load(Ordering::Relaxed)
            .max(self.previous.load(Ordering::Relaxed));
        seen.max(MIN_VALUE_ESTIMATE) as usize
    }

    /// Starts a new period (called periodically by the health task).
    pub fn rotate(&self) {
        let current = self.current.swap(0, Ordering::Relaxed);
        self.previous.store(current, Ordering::Relaxed);
    }
}

/// The reply room a retrieval of `nkeys` keys (their bytes summing to `key_bytes`) needs when
/// each value is assumed to be `value_estimate` bytes.
pub fn retrieval_reserve(nkeys: usize, key_bytes: usize, value_estimate: usize) -> usize {
    key_bytes + nkeys * (value_estimate + VALUE_OVERHEAD)
}

/// How many more keys a client may ask for now: at least one, so it always progresses.
pub fn keys_allowed(charge: usize, limit: usize, value_estimate: usize) -> usize {
    (limit.saturating_sub(charge) / (value_estimate + VALUE_OVERHEAD + 16)).max(1)
}

/// The process-wide sum of every client's charge, against `max_client_memory`.
#[derive(Debug, Default)]
pub struct Budget {
    charged: AtomicUsize,
    limit: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget {
            charged: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
        }
    }

    /// Changes the limit (a reload).
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes charged to clients now.
    pub fn charged(&self) -> usize {
        self.charged.load(Ordering::Relaxed)
    }

    /// Whether the process is over its limit.
    pub fn exhausted(&self) -> bool {
        self.charged() >= self.limit.load(Ordering::Relaxed)
    }

    /// Moves one client's share from `before` to `now`.
    pub fn update(&self, before: usize, now: usize) {
        if now > before {
            self.charged.fetch_add(now - before, Ordering::Relaxed);
        } else if before > now {
            self.charged.fetch_sub(before - now, Ordering::Relaxed);
        }
    }
}

/// One client's share of the [`Budget`], given back when the client goes.
#[derive(Debug)]
pub struct Share {
    budget: Arc<Budget>,
    charged: usize,
}

impl Share {
    /// A share of nothing yet.
    pub fn new(budget: Arc<Budget>) -> Self {
        Share { budget, charged: 0 }
    }

    /// Whether the process is over its limit.
    pub fn exhausted(&self) -> bool {
        self.budget.exhausted()
    }

    /// Sets this client's charge.
    pub fn set(&mut self, charge: usize) {
        self.budget.update(self.charged, charge);
        self.charged = charge;
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.update(self.charged, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_follow_the_largest_recent_value() {
        let s = ValueSizes::default();
        assert_eq!(s.estimate(), MIN_VALUE_ESTIMATE as usize);
        s.record(500_000);
        s.record(10);
        assert_eq!(s.estimate(), 500_000);
        s.rotate();
        assert_eq!(s.estimate(), 500_000, "remembered one more period");
        s.rotate();
        assert_eq!(s.estimate(), MIN_VALUE_ESTIMATE as usize);
    }

    #[test]
    fn keys_allowed_shrinks_with_the_charge_but_never_to_zero() {
        let per_key = 1024 + VALUE_OVERHEAD + 16;
        assert_eq!(keys_allowed(0, 10 * per_key, 1024), 10);
        assert_eq!(keys_allowed(5 * per_key, 10 * per_key, 1024), 5);
        assert_eq!(keys_allowed(20 * per_key, 10 * per_key, 1024), 1);
    }

    #[test]
    fn shares_sum_and_are_given_back() {
        let b = Arc::new(Budget::new(100));
        let mut a = Share::new(b.clone());
        let mut c = Share::new(b.clone());
        a.set(60);
        c.set(50);
        assert!(b.exhausted());
        c.set(10);
        assert_eq!(b.charged(), 70);
        drop(a);
        assert_eq!(b.charged(), 10);
        assert!(!b.exhausted());
    }
}
