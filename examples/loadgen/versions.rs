//! Per-key version bookkeeping for the benchmark workloads: which versions of a key a
//! get may still legitimately return.
//!
//! Writes to one key may be in flight on several connections at once and the
//! server may apply them in any order, so "the last version written" is not
//! well defined. What is sound: version v cannot be returned by a get sent at
//! time S if some write w was acknowledged before S and w was sent after v was
//! acknowledged (w is ordered after v on the server and visible at S). Times
//! are ticks of one logical clock. `live` keeps the versions not yet proven
//! stale in send order; a get remembers the oldest live version (its floor)
//! when it is sent and accepts any version in [floor, next) when it returns.
//! Version 0 stands for "whatever was stored before this run".

use std::collections::VecDeque;

const UNACKED: u64 = u64::MAX;

struct Ver {
    v: u32,
    sent: u64,
    ack: u64,
}

pub struct KeyState {
    pub next: u32,
    /// Largest send time of an acknowledged write.
    max_acked_sent: u64,
    live: VecDeque<Ver>,
}

impl KeyState {
    pub fn new() -> Self {
        let mut live = VecDeque::new();
        live.push_back(Ver {
            v: 0,
            sent: 0,
            ack: 0,
        });
        KeyState {
            next: 1,
            max_acked_sent: 0,
            live,
        }
    }

    pub fn begin_set(&mut self, now: u64) -> u32 {
        let v = self.next;
        self.next += 1;
        self.live.push_back(Ver {
            v,
            sent: now,
            ack: UNACKED,
        });
        v
    }

    /// `stored` is false for a write whose outcome is unknown (connection
    /// lost): it must not make older versions stale, but should stop
    /// blocking pruning.
    pub fn end_set(&mut self, v: u32, now: u64, stored: bool) {
        if let Some(e) = self.live.iter_mut().rev().find(|e| e.v == v) {
            e.ack = now;
            if stored && e.sent > self.max_acked_sent {
                self.max_acked_sent = e.sent;
            }
        }
        while let Some(f) = self.live.front() {
            if f.ack != UNACKED && f.ack < self.max_acked_sent {
                self.live.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn floor(&self) -> u32 {
        self.live.front().map_or(self.next, |e| e.v)
    }
}
