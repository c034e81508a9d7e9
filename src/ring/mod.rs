//! Maps keys to servers exactly as twemproxy (nutcracker 0.5.0) does: ketama, modula and random.

mod hash;

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt::{self, Write as _};
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use hash::{HashFunction, UnknownName};

/// twemproxy's ketama places 160 points per server at equal weights.
const KETAMA_POINTS_PER_SERVER: f32 = 160.0;
/// Each MD5 digest yields four 32-bit points.
const KETAMA_POINTS_PER_HASH: u32 = 4;
/// The port libmemcached (and so twemproxy) leaves out of server identities.
const DEFAULT_MEMCACHED_PORT: u16 = 11211;

/// How keys are spread over servers, named as in twemproxy's `distribution:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Consistent hashing on an MD5 continuum, weighted.
    Ketama,
    /// `hash % total_weight` over servers repeated `weight` times.
    Modula,
    /// A uniformly random server per request, ignoring key and weight.
    Random,
}

impl Distribution {
    /// Every distribution.
    pub const ALL: [Distribution; 3] = [
        Distribution::Ketama,
        Distribution::Modula,
        Distribution::Random,
    ];

    /// The name twemproxy's config uses for this distribution.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Ketama => "ketama",
            Distribution::Modula => "modula",
            Distribution::Random => "random",
        }
    }
}

impl FromStr for Distribution {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Distribution::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| UnknownName {
                kind: "distribution",
                name: s.to_owned(),
            })
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a ring could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The server list was empty.
    #[error("a pool needs at least one server")]
    NoServers,
    /// A server had weight 0, which twemproxy rejects.
    #[error("server {index} ({name:?}) has weight 0; weights must be at least 1")]
    ZeroWeight {
        /// Position of the server in the list.
        index: usize,
        /// Its identity string.
        name: String,
    },
    /// The weights add up past `u32::MAX`, which twemproxy's `uint32_t` sum cannot hold.
    #[error("total server weight {0} exceeds {max}", max = u32::MAX)]
    TotalWeightTooLarge(u64),
    /// A hash tag was not exactly two bytes.
    #[error("hash_tag must be exactly two characters, got {0:?}")]
    BadHashTag(String),
}

/// Two delimiter bytes, e.g. `{}`: only the text between them is hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashTag([u8; 2]);

impl HashTag {
    /// Builds a tag from a two-byte string such as `"{}"`.
    pub fn new(tag: &str) -> Result<HashTag, RingError> {
        match *tag.as_bytes() {
            [open, close] => Ok(HashTag([open, close])),
            _ => Err(RingError::BadHashTag(tag.to_owned())),
        }
    }

    /// The opening and closing delimiter bytes.
    pub fn as_bytes(&self) -> [u8; 2] {
        self.0
    }

    /// The part of `key` to hash: the bytes after the first opening
    /// delimiter up to the next closing one, if that span is non-empty;
    /// otherwise the whole key (twemproxy's `server_pool_idx`).
    pub fn apply<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        let [open, close] = self.0;
        let Some(start) = key.iter().position(|&b| b == open) else {
            return key;
        };
        let inner = &key[start + 1..];
        match inner.iter().position(|&b| b == close) {
            Some(end) if end > 0 => &inner[..end],
            _ => key,
        }
    }
}

impl FromStr for HashTag {
    type Err = RingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashTag::new(s)
    }
}

impl fmt::Display for HashTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// One server as the ring sees it: its identity string and weight.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RingServer {
    /// Identity hashed onto the continuum; see [`server_identity`].
    pub name: String,
    /// Relative share of keys; must be greater than 0.
    pub weight: u32,
}

impl RingServer {
    /// A server with the given identity and weight.
    pub fn new(name: impl Into<String>, weight: u32) -> RingServer {
        RingServer {
            name: name.into(),
            weight,
        }
    }
}

/// The string twemproxy hashes to place a server: its configured name if
/// any; otherwise `host` alone when the port is 11211 (libmemcached
/// compatibility), else `host:port`.
pub fn server_identity(host: &str, port: u16, name: Option<&str>) -> String {
    match name {
        Some(name) => name.to_owned(),
        None if port == DEFAULT_MEMCACHED_PORT => host.to_owned(),
        None => format!("{host}:{port}"),
    }
}

/// An immutable key-to-server map for one pool.
#[derive(Clone, Debug)]
pub struct Ring {
    distribution: Distribution,
    hash: HashFunction,
    hash_tag: Option<HashTag>,
    /// Ketama continuum point values, ascending.
    point_values: Vec<u32>,
    /// Server index owning each entry of `point_values`.
    point_owners: Vec<u32>,
    /// Modula: running weight totals; server `i` owns slots
    /// `weight_ends[i-1]..weight_ends[i]`. Equivalent to twemproxy's list
    /// of each server repeated `weight` times, without the memory.
    weight_ends: Vec<u32>,
    /// Modula: the server (config index) of each `weight_ends` entry. twemproxy sorts a
    /// pool's servers by name (shorter first, then bytewise) before building its table.
    modula_servers: Vec<u32>,
    /// What `points_per_server` reports.
    counts: Vec<usize>,
}

impl Ring {
    /// Builds the ring for `servers` in config order; indices returned by
    /// [`Ring::server_for`] refer to this order.
    pub fn new(
        distribution: Distribution,
        hash: HashFunction,
        hash_tag: Option<HashTag>,
        servers: &[RingServer],
    ) -> Result<Ring, RingError> {
        if servers.is_empty() {
            return Err(RingError::NoServers);
        }
        if let Some(index) = servers.iter().position(|s| s.weight == 0) {
            return Err(RingError::ZeroWeight {
                index,
                name: servers[index].name.clone(),
            });
        }
        let total: u64 = servers.iter().map(|s| u64::from(s.weight)).sum();
        let total = u32::try_from(total).map_err(|_| RingError::TotalWeightTooLarge(total))?;

        let mut ring = Ring {
            distribution,
            hash,
            hash_tag,
            point_values: Vec::new(),
            point_owners: Vec::new(),
            weight_ends: Vec::new(),
            modula_servers: Vec::new(),
            counts: Vec::new(),
        };
        match distribution {
            Distribution::Ketama => ring.build_ketama(servers, total),
            Distribution::Modula => {
                let mut order: Vec<usize> = (0..servers.len()).collect();
                order.sort_by(|&a, &b| {
                    let (a, b) = (servers[a].name.as_bytes(), servers[b].name.as_bytes());
                    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
                });
                let mut end = 0u32;
                for &i in &order {
                    end += servers[i].weight; // cannot overflow: the total fits in u32
                    ring.weight_ends.push(end);
                    ring.modula_servers.push(i as u32);
                }
                ring.counts = servers.iter().map(|s| s.weight as usize).collect();
            }
            // twemproxy's random continuum holds each live server once.
            Distribution::Random => ring.counts = vec![1; servers.len()],
        }
        Ok(ring)
    }

    fn build_ketama(&mut self, servers: &[RingServer], total_weight: u32) {
        let n = servers.len() as u32;
        let mut points: Vec<(u32, u32)> = Vec::with_capacity(servers.len() * 160);
        let mut label = String::new();
        for (index, server) in servers.iter().enumerate() {
            let count = ketama_point_count(server.weight, total_weight, n);
            for i in 0..count / KETAMA_POINTS_PER_HASH {
                label.clear();
                // Writing to a String cannot fail.
                let _ = write!(label, "{}-{}", server.name, i);
                let digest = hash::md5_digest(label.as_bytes());
                for word in digest.chunks_exact(4) {
                    let value = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                    points.push((value, index as u32));
                }
            }
            self.counts.push(count as usize);
        }
        // twemproxy's qsort compares values only; equal values (astronomically
        // rare) keep insertion order here, which qsort does not promise.
        points.sort_by_key(|&(value, _)| value);
        (self.point_values, self.point_owners) = points.into_iter().unzip();
    }

    /// The index (into the `servers` given to [`Ring::new`]) that serves `key`.
    /// Never allocates.
    pub fn server_for(&self, key: &[u8]) -> usize {
        let n = self.counts.len();
        if n == 1 {
            // twemproxy skips hashing entirely for single-server pools.
            return 0;
        }
        match self.distribution {
            Distribution::Ketama => {
                let slot = self.ketama_slot(self.hash_key(key));
                self.point_owners[slot] as usize
            }
            Distribution::Modula => {
                // weight_ends is non-empty and its last value is the total (> 0).
                let total = self.weight_ends[n - 1];
                let slot = self.hash_key(key) % total;
                self.modula_servers[self.weight_ends.partition_point(|&end| end <= slot)] as usize
            }
            Distribution::Random => random_below(n),
        }
    }

    /// First continuum point at or after `hash`, wrapping to the start.
    fn ketama_slot(&self, hash: u32) -> usize {
        let slot = self.point_values.partition_point(|&v| v < hash);
        if slot == self.point_values.len() {
            0
        } else {
            slot
        }
    }

    /// The hash twemproxy dispatches on: the hash tag span (if configured
    /// and present) hashed with the pool's function; an empty key hashes to 0.
    pub fn hash_key(&self, key: &[u8]) -> u32 {
        let key = match &self.hash_tag {
            Some(tag) => tag.apply(key),
            None => key,
        };
        if key.is_empty() {
            // server_pool_hash returns 0 for empty keys without hashing.
            return 0;
        }
        self.hash.hash(key)
    }

    /// Continuum entries owned by each server, in server order: ketama
    /// points for ketama, the weight for modula, 1 for random.
    pub fn points_per_server(&self) -> Vec<usize> {
        self.counts.clone()
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Always false: a ring has at least one server.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The distribution this ring was built with.
    pub fn distribution(&self) -> Distribution {
        self.distribution
    }

    /// The key hash function this ring was built with.
    pub fn hash_function(&self) -> HashFunction {
        self.hash
    }

    /// The hash tag this ring was built with, if any.
    pub fn hash_tag(&self) -> Option<HashTag> {
        self.hash_tag
    }
}

/// Ketama points for one server, reproducing twemproxy's C arithmetic:
/// `float` at every step, except that the `0.0000000001` literal is a
/// `double`, so that one addition happens in double before `floorf`.
/// Single precision is what makes e.g. 25 equal servers get 156 points.
fn ketama_point_count(weight: u32, total_weight: u32, n_servers: u32) -> u32 {
    let pct = weight as f32 / total_weight as f32;
    let x = pct * KETAMA_POINTS_PER_SERVER / 4.0 * n_servers as f32;
    let x = (f64::from(x) + 0.000_000_000_1) as f32;
    x.floor() as u32 * KETAMA_POINTS_PER_HASH
}

thread_local! {
    /// xorshift64* state; 0 means "not seeded yet".
    static RNG_STATE: Cell<u64> = const { Cell::new(0) };
}

/// A uniform-enough random index below `n` (n > 0), from a per-thread
/// xorshift64* generator; distribution quality, not secrecy, is the goal.
fn random_below(n: usize) -> usize {
    RNG_STATE.with(|state| {
        let mut x = state.get();
        if x == 0 {
            // RandomState is randomly keyed per process and thread, giving a
            // seed without an extra dependency; `| 1` keeps it non-zero.
            x = RandomState::new().build_hasher().finish() | 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        // Multiply-shift maps 32 random bits onto 0..n without modulo bias
        // worth caring about for pool sizes.
        ((r * n as u64) >> 32) as usize
    })
}

#[cfg(test)]
mod tests;
