//! Soak-mode bookkeeping: what a connection knows of each of its keys (`Track`), the
//! run's counters, and `Soak`, the shared state that judges every reply (wrong values,
//! lost writes, errors on stable keys) and records failures with samples and timestamps.
//!
//! A write answered with an error is uncertain: it may have landed (on the live copy of a
//! replicated route, or late) or not, so a read may return the version before it or the
//! erroring one until the key's next acknowledged write (or the first read of the newer).

use super::ownership::{Replication, SoakCopy, SoakServer};
use super::watch::Watch;
use crate::protocol::{lossy, parse_num};
use crate::shared::{lock, Shared};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// What one connection knows of one of its keys.
#[derive(Clone, Copy, Default)]
pub struct Track {
    /// Highest version sent (versions run 1, 2, ... per key).
    pub sent: u32,
    /// Last version answered STORED (0: none).
    pub acked: u32,
    /// Newest version a get returned (0: none).
    pub seen: u32,
    /// When the write of version `acked` was sent.
    pub acked_at: Option<Instant>,
}

impl Track {
    /// The oldest version a get may return now.
    pub fn floor(&self) -> u32 {
        self.acked.max(self.seen)
    }
}

macro_rules! soak_counters {
    ($(#[$doc:meta])* $counters:ident: $($name:ident),* $(,)?) => {
        $(#[$doc])*
        #[derive(Default)]
        pub struct $counters {
            $(pub $name: AtomicU64,)*
        }

        impl $counters {
            pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
                let mut m = serde_json::Map::new();
                $(m.insert(stringify!($name).into(), self.$name.load(Ordering::Relaxed).into());)*
                m
            }
        }
    };
}

soak_counters!(
    /// Soak counters, shared by all connections.
    SoakCounters:
    ops,
    gets,
    sets,
    get_keys,
    stable_get_keys,
    stable_hits,
    stable_initial_misses,
    stable_sets_stored,
    volatile_get_keys,
    volatile_hits,
    volatile_misses,
    volatile_get_errors,
    volatile_sets_stored,
    volatile_set_errors,
    volatile_stale,
    volatile_timeouts,
    foreign_values,
    reconnects,
    // Failures.
    wrong_values,
    lost_writes,
    stable_errors,
    misplaced,
    // Parts of the failures above: lost writes that were misses and stale reads,
    // stable errors that were `SERVER_ERROR backend timeout`.
    stable_misses_after_write,
    stable_stale_reads,
    stable_timeouts,
    final_lost,
    connection_errors,
    // The final direct read of every backend.
    final_keys_checked,
    final_volatile_present,
    final_volatile_missing,
    final_volatile_stale,
    final_volatile_unreachable,
);

soak_counters!(
    /// Counters of a replicated route's soak (in its report only). Its volatile keys are those
    /// with a copy on the volatile backend; their reads are held to the stable keys' rules
    /// (the other copy answers), only their writes may fail.
    ReplicaCounters:
    // Failures: a read of a volatile key answered with an error (the whole get); misses
    // and stale reads of volatile keys, parts of `lost_writes`.
    volatile_read_errors,
    volatile_misses_after_write,
    volatile_stale_reads,
    // Versions whose write was answered with an error, read (first time): they landed.
    errored_writes_read,
    // Reads that returned a version the connection wrote after the get, in the same
    // pipelined batch: a read failing over asks the next copy once the first has answered
    // (a miss, an error), and the write may be there by then. Newer than acknowledged, so
    // allowed; not taken as seen (the read is still before that write).
    later_writes_read,
    // The final direct read, per copy of each key: copies on a backend that never
    // restarted (held to every version acknowledged or seen); on a restarted one, keys
    // last acknowledged by a write sent since its last restart (held to that version),
    // and the others (none acknowledged since: they may be missing, it came back empty),
    // present or missing.
    final_copies_checked,
    final_copies_on_steady_backends,
    final_since_restart,
    final_before_restart_present,
    final_before_restart_missing,
);

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The soak run's shared state: every key's owners, the counters and the failure records.
pub struct Soak {
    pub sh: Shared,
    pub servers: Vec<SoakServer>,
    /// The copies (one, unless the target is a replicated route), each key's owner in each.
    pub copies: Vec<SoakCopy>,
    pub volatile: Option<usize>,
    /// The replicated route the target listens for.
    pub replication: Option<Replication>,
    pub c: SoakCounters,
    pub rc: ReplicaCounters,
    /// Replicated: each server's restarts, seen directly (see `watch`).
    pub watch: Vec<Watch>,
    pub samples: Mutex<Vec<String>>,
    /// Failures per second of the run, to line them up with the faults.
    pub failure_seconds: Mutex<BTreeMap<u64, u64>>,
    /// Host stalls: (second of the run, ms) when a plain thread's 10 ms sleep came back
    /// more than `STALL_MS` late. A stall of the whole host, not of memroute alone, explains
    /// timeouts on healthy backends.
    pub stalls: Mutex<Vec<(f64, u64)>>,
    pub start: Instant,
    pub end: Instant,
    pub batch_timeout: Duration,
    /// Milliseconds after `start` of the last error reply for a volatile key other than a
    /// timeout (0: none): when memroute last found the backend down.
    pub volatile_error_last_ms: AtomicU64,
}

/// memroute's reply when a backend missed the request deadline.
const BACKEND_TIMEOUT: &[u8] = b"SERVER_ERROR backend timeout";

/// Error samples kept in soak mode (the counters stay exact).
const SOAK_SAMPLES: usize = 30;

impl Soak {
    /// The backend owning key `k` in copy `copy` (an index into `servers`).
    pub fn owner(&self, copy: usize, k: u32) -> usize {
        self.copies[copy].owners[k as usize] as usize
    }

    /// Whether a copy of `k` is on the volatile backend.
    pub fn is_volatile(&self, k: u32) -> bool {
        (0..self.copies.len()).any(|c| self.volatile == Some(self.owner(c, k)))
    }

    /// The owner of `k`; replicated: its owner in every copy.
    pub fn owner_name(&self, k: u32) -> String {
        let names: Vec<&str> = (0..self.copies.len())
            .map(|c| self.servers[self.owner(c, k)].address.as_str())
            .collect();
        names.join(" and ")
    }

    /// Counts a failure (or connection error) and keeps a sample of it.
    pub fn note(&self, c: &AtomicU64, what: &str, msg: String) {
        bump(c);
        let t = self.start.elapsed().as_secs_f64();
        *lock(&self.failure_seconds).entry(t as u64).or_default() += 1;
        let mut s = lock(&self.samples);
        if s.len() < SOAK_SAMPLES {
            s.push(format!("{what} at {t:.1}s: {msg}"));
        }
    }

    /// An error line for a volatile key. Timeouts are counted apart: they are not the
    /// backend being down, and they can hit any backend of a loaded host.
    pub fn volatile_error(&self, line: &[u8]) {
        if line == BACKEND_TIMEOUT {
            bump(&self.c.volatile_timeouts);
        } else {
            let ms = self.start.elapsed().as_millis() as u64;
            self.volatile_error_last_ms
                .fetch_max(ms.max(1), Ordering::Relaxed);
        }
    }

    /// An error line for stable keys: always a failure.
    pub fn stable_error(&self, line: &[u8], msg: String) {
        if line == BACKEND_TIMEOUT {
            bump(&self.c.stable_timeouts);
        }
        self.note(&self.c.stable_errors, "stable error", msg);
    }

    pub fn failures(&self) -> u64 {
        let c = &self.c;
        load(&c.wrong_values)
            + load(&c.lost_writes)
            + load(&c.stable_errors)
            + load(&c.misplaced)
            + load(&c.final_lost)
            + load(&self.rc.volatile_read_errors)
    }

    /// A get including volatile keys answered with an error: expected while their backend
    /// is down, but a failure on a replicated route (the other copy answers).
    pub fn volatile_get_error(&self, line: &[u8], msg: impl FnOnce() -> String) {
        bump(&self.c.volatile_get_errors);
        self.volatile_error(line);
        if self.replication.is_some() {
            self.note(&self.rc.volatile_read_errors, "read error", msg());
        }
    }

    /// Decodes a value returned for key `k`: `Ok(Some(version))` for this run's values,
    /// `Ok(None)` for a value of this key written by another run.
    pub fn decode(&self, k: u32, flags: u64, data: &[u8]) -> Result<Option<u32>, String> {
        if flags != (k & 0xffff) as u64 {
            return Err(format!("flags {flags}, expected {}", k & 0xffff));
        }
        let Some(ver) = self.sh.decode_value(k, data)? else {
            return Ok(None);
        };
        match parse_num(ver) {
            Some(v) if v >= 1 && v <= u32::MAX as u64 => Ok(Some(v as u32)),
            _ => Err(format!("bad version {}", lossy(ver))),
        }
    }

    /// A get returned a value for `k`; `sent` is the highest version sent before the get
    /// (`t.sent`: before the reply, the get's batch being written whole).
    pub fn hit(&self, k: u32, sent: u32, t: &mut Track, flags: u64, data: &[u8]) {
        let vol = self.is_volatile(k);
        let c = &self.c;
        let ver = match self.decode(k, flags, data) {
            Err(e) => {
                let msg = format!("key {k} (on {}): {e}", self.owner_name(k));
                return self.note(&c.wrong_values, "wrong value", msg);
            }
            Ok(None) if t.floor() == 0 => {
                bump(&c.foreign_values);
                bump(if vol {
                    &c.volatile_hits
                } else {
                    &c.stable_hits
                });
                return;
            }
            Ok(None) => 0,
            Ok(Some(v)) => v,
        };
        if ver > sent && ver <= t.sent && self.replication.is_some() {
            bump(&self.rc.later_writes_read);
            bump(if vol {
                &c.volatile_hits
            } else {
                &c.stable_hits
            });
            return;
        }
        if ver > sent {
            let msg = format!(
                "key {k} (on {}): version {ver} returned, but only {sent} sent before the get",
                self.owner_name(k)
            );
            return self.note(&c.wrong_values, "wrong value", msg);
        }
        if ver < t.floor() {
            if vol && self.replication.is_none() {
                bump(&c.volatile_stale);
            } else {
                let what = match ver {
                    0 => "a value of another run".to_string(),
                    v => format!("version {v}"),
                };
                let msg = format!(
                    "key {k} (on {}): {what} returned after version {} acknowledged and {} seen",
                    self.owner_name(k),
                    t.acked,
                    t.seen
                );
                bump(if vol {
                    &self.rc.volatile_stale_reads
                } else {
                    &c.stable_stale_reads
                });
                self.note(&c.lost_writes, "lost write", msg);
            }
        } else {
            if ver > t.acked && ver > t.seen && self.replication.is_some() {
                bump(&self.rc.errored_writes_read);
            }
            t.seen = ver;
        }
        bump(if vol {
            &c.volatile_hits
        } else {
            &c.stable_hits
        });
    }

    /// A miss. Replicated, a volatile key's miss is a lost write as soon as a version was
    /// acknowledged or seen: the copy not on the volatile backend holds it.
    pub fn miss(&self, k: u32, t: &Track) {
        let c = &self.c;
        let vol = self.is_volatile(k);
        if vol && (self.replication.is_none() || t.floor() == 0) {
            bump(&c.volatile_misses);
        } else if t.floor() > 0 {
            let msg = format!(
                "key {k} (on {}): miss after version {} acknowledged and {} seen",
                self.owner_name(k),
                t.acked,
                t.seen
            );
            bump(if vol {
                &self.rc.volatile_misses_after_write
            } else {
                &c.stable_misses_after_write
            });
            self.note(&c.lost_writes, "lost write", msg);
        } else {
            bump(&c.stable_initial_misses);
        }
    }
}
