//! The run-wide state every connection shares (`Shared`): the options, this run's id,
//! the key names, each key's version history, the logical clock and the measured window.

use crate::cli::{Args, Dist};
use crate::protocol::push_num;
use crate::tls::TlsClient;
use crate::versions::KeyState;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

/// Shared, read-mostly run state.
pub struct Shared {
    pub target: String,
    /// TLS to the target (`--tls-ca`); None: plain TCP. `build_shared` leaves it None.
    pub tls: Option<TlsClient>,
    pub args: Args,
    pub run_id: u32,
    /// All keys, `key_size` bytes each, so building a request is a memcpy.
    key_bytes: Vec<u8>,
    /// Filler source: value filler for key i is `pattern[i % 26..]`.
    pub pattern: Vec<u8>,
    zipf_cdf: Vec<f64>,
    keys: Vec<Mutex<KeyState>>,
    clock: AtomicU64,
    /// Ops whose send (or scheduled) time falls in [measure_start, end) count.
    pub measure_start: Instant,
    pub end: Instant,
}

impl Shared {
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn key(&self, idx: u32) -> &[u8] {
        let ks = self.args.key_size;
        &self.key_bytes[idx as usize * ks..(idx as usize + 1) * ks]
    }

    pub fn state(&self, idx: u32) -> MutexGuard<'_, KeyState> {
        lock(&self.keys[idx as usize])
    }

    pub fn pick(&self, rng: &mut StdRng) -> u32 {
        match self.args.dist {
            Dist::Uniform => rng.gen_range(0..self.args.keys),
            Dist::Zipf => {
                let u: f64 = rng.gen();
                let i = self.zipf_cdf.partition_point(|&c| c < u);
                i.min(self.args.keys as usize - 1) as u32
            }
        }
    }

    pub fn counted(&self, t0: Instant) -> bool {
        t0 >= self.measure_start && t0 < self.end
    }

    /// The random stream of connection `id`.
    pub fn rng_for(&self, id: usize) -> StdRng {
        StdRng::seed_from_u64(self.run_id as u64 ^ (id as u64).wrapping_mul(0x9e37_79b9))
    }
}

/// Locks `m`. A poisoned lock only means another task panicked; the data is fine.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn build_shared(args: &Args, measure_start: Instant, end: Instant) -> Shared {
    let ks = args.key_size;
    let mut key_bytes = Vec::with_capacity(args.keys as usize * ks);
    for i in 0..args.keys {
        let mut num = Vec::new();
        push_num(&mut num, i as u64);
        key_bytes.extend_from_slice(b"k:");
        key_bytes.resize(key_bytes.len() + ks - 2 - num.len(), b'0');
        key_bytes.extend_from_slice(&num);
    }
    let pattern = (0..args.value_size + 26)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let zipf_cdf = if args.dist == Dist::Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..args.keys)
            .map(|i| {
                acc += 1.0 / ((i + 1) as f64).powf(args.zipf_s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        cdf
    } else {
        Vec::new()
    };
    Shared {
        target: args.target.clone(),
        tls: None,
        args: args.clone(),
        run_id: rand::random(),
        key_bytes,
        pattern,
        zipf_cdf,
        keys: (0..args.keys)
            .map(|_| Mutex::new(KeyState::new()))
            .collect(),
        clock: AtomicU64::new(0),
        measure_start,
        end,
    }
}
