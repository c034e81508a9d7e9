//! Value encoding and verification. Every value describes itself,
//! `<key idx>:<run id, 8 hex>:<version>:` + a filler that depends on the key, and a set's
//! flags carry the key index, so a reply can be checked for being of the right key, intact,
//! of this run and of a version that may legitimately be returned.

use crate::protocol::{get_hits, lossy, parse_num, push_num};
use crate::shared::Shared;

/// Largest header `<idx>:<runid>:<version>:` can get (10 + 1 + 8 + 1 + 10 + 1).
pub const MIN_VALUE_SIZE: usize = 32;

pub fn format_hex8(v: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, o) in out.iter_mut().enumerate() {
        *o = b"0123456789abcdef"[((v >> (28 - 4 * i)) & 0xf) as usize];
    }
    out
}

impl Shared {
    /// `set <key> <flags = key idx & 0xffff> 0 <bytes>` and the value of version `ver`.
    pub fn push_set_command(&self, w: &mut Vec<u8>, k: u32, ver: u32) {
        w.extend_from_slice(b"set ");
        w.extend_from_slice(self.key(k));
        w.push(b' ');
        push_num(w, (k & 0xffff) as u64);
        w.extend_from_slice(b" 0 ");
        push_num(w, self.args.value_size as u64);
        w.extend_from_slice(b"\r\n");
        self.push_value(w, k, ver);
        w.extend_from_slice(b"\r\n");
    }

    /// Value layout: `<key idx>:<run id, 8 hex>:<version>:` + filler.
    pub fn push_value(&self, w: &mut Vec<u8>, k: u32, ver: u32) {
        let start = w.len();
        push_num(w, k as u64);
        w.push(b':');
        w.extend_from_slice(format_hex8(self.run_id).as_slice());
        w.push(b':');
        push_num(w, ver as u64);
        w.push(b':');
        let fill = self.args.value_size - (w.len() - start);
        let off = (k % 26) as usize;
        w.extend_from_slice(&self.pattern[off..off + fill]);
    }

    /// Decodes a value returned for key `k`: it must name key `k` and have an intact
    /// filler; a value of this run must also have the full length. Returns the version
    /// field of this run's values (still to be parsed), `None` for a value of this key
    /// written by another run.
    pub fn decode_value<'a>(&self, k: u32, data: &'a [u8]) -> Result<Option<&'a [u8]>, String> {
        let mut parts = data.splitn(4, |&c| c == b':');
        let (Some(idx), Some(run), Some(ver), Some(fill)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("value does not decode: {}", lossy(data)));
        };
        if parse_num(idx) != Some(k as u64) {
            return Err(format!("value belongs to key {}", lossy(idx)));
        }
        let off = (k % 26) as usize;
        if fill.len() > self.pattern.len() - off || fill != &self.pattern[off..off + fill.len()] {
            return Err("corrupted value filler".into());
        }
        if run != format_hex8(self.run_id).as_slice() {
            return Ok(None);
        }
        if data.len() != self.args.value_size {
            return Err(format!("value length {}", data.len()));
        }
        Ok(Some(ver))
    }

    /// Checks one returned value; `floor` is the oldest version that was
    /// still possible when the get was sent.
    pub fn check_value(&self, k: u32, floor: u32, data: &[u8]) -> Result<(), String> {
        let Some(ver) = self
            .decode_value(k, data)
            .map_err(|e| format!("key {k}: {e}"))?
        else {
            // Written before this run: only possible while no write of ours
            // is known to have landed.
            return if floor == 0 {
                Ok(())
            } else {
                Err(format!("key {k}: stale value from another run"))
            };
        };
        let ver = parse_num(ver).ok_or_else(|| format!("key {k}: bad version"))?;
        let next = self.state(k).next as u64;
        if ver < floor.max(1) as u64 || ver >= next {
            return Err(format!(
                "key {k}: version {ver} outside legitimate range [{}, {next})",
                floor.max(1)
            ));
        }
        Ok(())
    }

    /// Lines the hits of a complete get reply up with the keys requested (hits come in
    /// request order, misses are left out): calls `each(i, Some((flags, data)))` for a hit
    /// on `keys[i]` and `each(i, None)` for a miss, in request order. A key that was not
    /// requested, or is out of order, stops the walk and is returned.
    pub fn match_hits<'r>(
        &self,
        reply: &'r [u8],
        keys: &[u32],
        mut each: impl FnMut(usize, Option<(u64, &'r [u8])>),
    ) -> Result<(), &'r [u8]> {
        let mut j = 0;
        for (key, flags, data) in get_hits(reply) {
            let off = keys[j..]
                .iter()
                .position(|&k| self.key(k) == key)
                .ok_or(key)?;
            for i in j..j + off {
                each(i, None);
            }
            each(j + off, Some((flags, data)));
            j += off + 1;
        }
        for i in j..keys.len() {
            each(i, None);
        }
        Ok(())
    }
}
