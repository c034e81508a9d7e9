//! A pipelined batch of requests in flight (`Batch`): what each reply, read back in
//! order, must be checked against.

use tokio::time::Instant;

/// One request: a get of `n` keys or a set of one.
pub struct Op {
    pub get: bool,
    /// Index of the first key in `Batch::keys`.
    pub first: usize,
    pub n: usize,
    /// Version written (sets).
    pub ver: u32,
    /// Latency origin: send time (closed loop) or scheduled time (open loop).
    pub t0: Instant,
}

/// One write's worth of requests; the vectors are reused between batches.
#[derive(Default)]
pub struct Batch {
    pub ops: Vec<Op>,
    pub keys: Vec<u32>,
    /// Per key of a get, the version bound noted when it was sent (benchmark runs: the
    /// oldest version still possible; soak mode: the newest version sent); 0 for sets.
    pub floors: Vec<u32>,
    /// Meta protocol: the opaque (`O<n>`) of the first request; request i carries
    /// `seq + i` when `--meta-opaque` tags requests. Binary protocol: request i always
    /// carries the low 32 bits of `seq + i` as its opaque (the ending Noop `seq + len`).
    pub seq: u64,
    /// The batch ends with `mn` (meta), answered `MN` once all before it is, or with a
    /// Noop (binary), answered likewise.
    pub mn: bool,
}

impl Batch {
    pub fn clear(&mut self) {
        self.ops.clear();
        self.keys.clear();
        self.floors.clear();
        self.mn = false;
    }

    /// Records a get of the keys pushed since `first` (an index into `keys`).
    pub fn add_get(&mut self, first: usize, t0: Instant) {
        self.ops.push(Op {
            get: true,
            first,
            n: self.keys.len() - first,
            ver: 0,
            t0,
        });
    }

    /// Records a set of version `ver` of key `k`.
    pub fn add_set(&mut self, k: u32, ver: u32, t0: Instant) {
        self.ops.push(Op {
            get: false,
            first: self.keys.len(),
            n: 1,
            ver,
            t0,
        });
        self.keys.push(k);
        self.floors.push(0);
    }
}
