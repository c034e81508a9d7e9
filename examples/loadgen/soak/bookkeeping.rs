//! Soak-mode bookkeeping: what a connection knows of each of its keys (`Track`), the
//! run's counters, and `Soak`, the shared state that judges every reply (wrong values,
//! lost writes, errors on stable keys) and records failures with samples and timestamps.

use super::ownership::SoakServer;
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
}

impl Track {
    /// The oldest version a get may return now.
    pub fn floor(&self) -> u32 {
        self.acked.max(self.seen)
    }
}

macro_rules! soak_counters {
    ($($name:ident),* $(,)?) => {
        /// Soak counters, shared by all connections.
        #[derive(Default)]
        pub struct SoakCounters {
            $(pub $name: AtomicU64,)*
        }

        impl SoakCounters {
            pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
                let mut m = serde_json::Map::new();
                $(m.insert(stringify!($name).into(), self.$name.load(Ordering::Relaxed).into());)*
                m
            }
        }
    };
}

soak_counters!(
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

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The soak run's shared state: every key's owner, the counters and the failure records.
pub struct Soak {
    pub sh: Shared,
    pub servers: Vec<SoakServer>,
    /// Owner of each key (index into `servers`).
    pub owners: Vec<u16>,
    pub volatile: Option<usize>,
    pub c: SoakCounters,
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
    pub fn is_volatile(&self, k: u32) -> bool {
        self.volatile == Some(self.owners[k as usize] as usize)
    }

    pub fn owner_name(&self, k: u32) -> &str {
        &self.servers[self.owners[k as usize] as usize].address
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

    /// A get returned a value for `k`; `sent` is the highest version sent before the get.
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
        if ver > sent {
            let msg = format!(
                "key {k} (on {}): version {ver} returned, but only {sent} sent before the get",
                self.owner_name(k)
            );
            return self.note(&c.wrong_values, "wrong value", msg);
        }
        if ver < t.floor() {
            if vol {
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
                bump(&c.stable_stale_reads);
                self.note(&c.lost_writes, "lost write", msg);
            }
        } else {
            t.seen = ver;
        }
        bump(if vol {
            &c.volatile_hits
        } else {
            &c.stable_hits
        });
    }

    pub fn miss(&self, k: u32, t: &Track) {
        let c = &self.c;
        if self.is_volatile(k) {
            bump(&c.volatile_misses);
        } else if t.floor() > 0 {
            let msg = format!(
                "key {k} (on {}): miss after version {} acknowledged and {} seen",
                self.owner_name(k),
                t.acked,
                t.seen
            );
            bump(&c.stable_misses_after_write);
            self.note(&c.lost_writes, "lost write", msg);
        } else {
            bump(&c.stable_initial_misses);
        }
    }
}
