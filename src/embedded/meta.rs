//! The meta protocol on the embedded cache: `mg`, `ms`, `md`, `ma` and `me`, answered byte
//! for byte as memcached 1.6.18 answers them. (`mn` never gets here: the proxy answers it.)
//!
//! The codec has already answered every error memcached finds before executing (token
//! counts, key length, the flag pre-parse, `ms` modes and sizes); what is left is done here,
//! in memcached's order, including its quirks. Those a client can observe:
//! - Return flags come in the request's token order; `mg` then adds `Z` (a win token
//!   already went out), `X` (stale) and `W` (this client won: `N` created the item, `R`
//!   found its TTL below the threshold, or it is stale and no token went out yet).
//! - An opaque (`O`) over 32 bytes is refused when the reply reaches it, after whatever
//!   earlier flags changed (`mg … T30 O<long>` still sets the TTL; `ma` still counts).
//! - Quiet (`q`) leaves out only `mg`'s miss, `ms`/`md`'s `HD`, and `ma`'s success unless `N`
//!   just created the item; errors are always answered.
//! - `k` returns the key base64-encoded (with ` b`) when the item was stored by `ms … b`
//!   (`mg`) or when the request said `b` (`ms`, `md`, `ma`, and `mg`'s miss); an item `mg … N`
//!   created, or that append/prepend/a growing count rebuilt, is not marked binary.
//! - `ms … C` turns set and replace into a CAS store; append and prepend compare the CAS
//!   themselves; with `I`, a CAS older than the item's stores anyway, marked stale, keeping
//!   the item's TTL. Failed stores answer `c0`.
//! - `ma` compares `C` only when non-zero, and refuses an empty value as non-numeric before
//!   comparing it. When the new number no longer fits in the item, memcached links a copy
//!   and then applies `T` to the old one: the reply's `t` shows the new TTL, the item keeps
//!   its old one. So here.
//!
//! Known differences:
//! - `me`'s `cls` and `size` are computed as a memcached with its default slab settings
//!   (`-n 48 -f 1.25`, 1 MB pages, CAS enabled) computes them. A count that shortened a
//!   number in place stores it unpadded here (see the module docs of [`super`]), so `size`,
//!   `cls` and `mg`'s `s` can then be smaller than memcached's.
//! - `mg … l` and `me … la=`: the access time is refreshed at the second fetch, as
//!   memcached's segmented LRU does; memcached's background LRU maintainer may re-arm that
//!   refresh later, on its own schedule, which is not modelled.

use bytes::BytesMut;

use crate::protocol::meta::{base64_encode, errors, MetaFlags, MAX_OPAQUE_LEN};
use crate::protocol::request::MAX_KEY_LEN;
use crate::protocol::{Command, Request};

use super::numeric::format_u64;
use super::shard::{secs_u32, Entry, Value, FETCHED, KEY_BINARY, STALE, TOKEN_SENT};
use super::store::{Counted, MetaStore, Storage, Store, Write, DELTA_OOM, NON_NUMERIC, STORE_OOM};

/// memcached's item header (`sizeof(item)` on 64-bit targets), part of `me`'s `size`.
const ITEM_HEADER: usize = 48;
/// memcached's defaults behind its slab classes: the smallest chunk's data part (`-n`), the
/// growth factor (`-f`) and the largest chunk (half a 1 MB page).
const SLAB_CHUNK_MIN: usize = 48;
const SLAB_FACTOR: f64 = 1.25;
const SLAB_CHUNK_MAX: usize = 512 * 1024;

/// `ma`'s answer when `N` cannot allocate the new item (not the `incr` one).
const VIVIFY_OOM: &[u8] = b"SERVER_ERROR Out of memory allocating new item\r\n";

impl Store {
    /// Executes a meta request (`mg`, `ms`, `md`, `ma`, `me`), memcached 1.6.18's reply
    /// appended to `out` (nothing for what a quiet request leaves out).
    pub(super) fn meta(&self, req: &Request, now: u64, out: &mut BytesMut) {
        let mut buf = [0; MAX_KEY_LEN];
        let key = req.route_key(&mut buf);
        if req.command == Command::MetaDebug {
            self.meta_debug(key, now, out);
            return;
        }
        // The codec only passes requests whose flags parse; should one not, memcached's
        // own error for it is the answer.
        let flags = match MetaFlags::parse(req.key(), req.meta_flags()) {
            Ok(flags) => flags,
            Err(e) => {
                out.extend_from_slice(e);
                return;
            }
        };
        let m = Meta {
            req,
            key,
            f: &flags,
            now,
        };
        match req.command {
            Command::MetaGet => self.meta_get(&m, out),
            Command::MetaSet => self.meta_set(&m, out),
            Command::MetaDelete => self.meta_delete(&m, out),
            Command::MetaArithmetic => self.meta_arithmetic(&m, out),
            _ => out.extend_from_slice(crate::protocol::reply::ERROR),
        }
    }

    /// A TTL flag's value as an item's absolute expiry (memcached's `realtime`, negative
    /// meaning long ago).
    fn ttl(&self, ttl: Option<i32>, now: u64) -> Option<u32> {
        ttl.map(|t| secs_u32(self.realtime(i64::from(t), now)))
    }

    /// `mg <key> <flags>*`.
    fn meta_get(&self, m: &Meta<'_>, out: &mut BytesMut) {
        let (f, key, now) = (m.f, m.key, m.now);
        // memcached holds the item lock and bumps the item only after answering when a flag
        // reads its state from before this fetch or may change it; on an error it then
        // never bumps.
        let locked = f.vivify.is_some()
            || f.ttl.is_some()
            || f.recache.is_some()
            || f.last_access
            || f.hit_before;
        let ttl = self.ttl(f.ttl, now);
        let vivify = self.ttl(f.vivify, now);
        let recache = self.ttl(f.recache, now);
        let hash = self.hash(key);
        let h = hash as u32;
        let flush = self.flush_state();
        let mut shard = self.shard(hash);
        let mut found = shard.lookup(h, key, now, &flush);
        if let Some(idx) = found {
            if !locked && !f.no_update {
                shard.hit(idx, now);
            }
        }
        let mut created = false;
        if found.is_none() && vivify.is_some() {
            // An empty item with flags 0 and no expiry; `N`'s TTL is set while answering. If
            // it cannot be allocated, memcached answers the miss.
            let cas = self.next_cas();
            let evict = self.evicts();
            if let Ok(idx) =
                shard.link(h, key, Value::New(b""), 0, 0, cas, None, evict, now, &flush)
            {
                found = Some(idx);
                created = true;
            }
        }
        let start = out.len();
        let Some(idx) = found else {
            shard.stats.get_misses += 1;
            shard.stats.cmd_get += 1;
            drop(shard);
            out.extend_from_slice(b"EN");
            if !m.echo(out, start) {
                return;
            }
            if f.quiet {
                out.truncate(start);
            } else {
                out.extend_from_slice(b"\r\n");
            }
            return;
        };
        let mut num = [0; 20];
        let e = shard.entry_mut(idx);
        if f.value {
            out.extend_from_slice(b"VA ");
            out.extend_from_slice(format_u64(e.value().len() as u64, &mut num));
        } else {
            out.extend_from_slice(b"HD");
        }
        let (mut won, mut ttl_set) = (false, false);
        for token in m.req.meta_flags() {
            match token[0] {
                b'T' => {
                    ttl_set = true;
                    if let Some(t) = ttl {
                        e.exptime = t;
                    }
                }
                b'N' if created => {
                    if let Some(t) = vivify {
                        e.exptime = t;
                    }
                    won = true;
                }
                // Only an item that already had an expiry, below the threshold, and whose
                // token no one took yet.
                b'R' if !e.has(TOKEN_SENT)
                    && !created
                    && e.exptime != 0
                    && recache.is_some_and(|r| e.exptime < r) =>
                {
                    won = true;
                }
                b's' => put_number(out, b's', e.value().len() as u64),
                b't' => put_ttl(out, e.exptime, now),
                b'c' => put_number(out, b'c', e.cas),
                b'f' => put_number(out, b'f', u64::from(e.flags)),
                b'l' => put_number(out, b'l', u64::from(secs_u32(now).wrapping_sub(e.time))),
                b'h' => out.extend_from_slice(if e.has(FETCHED) { b" h1" } else { b" h0" }),
                b'O' if token.len() > MAX_OPAQUE_LEN => {
                    // What the flags before it changed stays; nothing is counted.
                    opaque_too_long(out, start);
                    return;
                }
                b'O' => put_opaque(out, token),
                b'k' => put_key(out, e.key(), e.has(KEY_BINARY)),
                _ => {}
            }
        }
        // Z before W, so a client never sees both.
        if e.has(TOKEN_SENT) {
            out.extend_from_slice(b" Z");
        }
        if e.has(STALE) {
            out.extend_from_slice(b" X");
            // A stale item hands its token to the first client to see it.
            if !e.has(TOKEN_SENT) {
                won = true;
            }
        }
        if won {
            out.extend_from_slice(b" W");
            e.bits |= TOKEN_SENT;
        }
        out.extend_from_slice(b"\r\n");
        if f.value {
            out.extend_from_slice(e.value());
            out.extend_from_slice(b"\r\n");
        }
        if locked && !f.no_update {
            shard.hit(idx, now);
        }
        // memcached counts a hit that set a TTL as a touch only (a miss is always a get).
        if ttl_set {
            shard.stats.cmd_touch += 1;
            shard.stats.touch_hits += 1;
        } else {
            shard.stats.get_hits += 1;
            shard.stats.cmd_get += 1;
        }
    }

    /// `ms <key> <datalen> <flags>*` and its data block.
    fn meta_set(&self, m: &Meta<'_>, out: &mut BytesMut) {
        let f = m.f;
        // The codec refuses these first; memcached would refuse them before storing.
        if m.req
            .meta_flags()
            .any(|t| t[0] == b'O' && t.len() > MAX_OPAQUE_LEN)
        {
            out.extend_from_slice(errors::OPAQUE_TOO_LONG);
            return;
        }
        let command = match f.mode {
            Some(b'E') => Command::Add,
            Some(b'A') => Command::Append,
            Some(b'P') => Command::Prepend,
            Some(b'R') => Command::Replace,
            Some(b'S') | None => Command::Set,
            Some(_) => {
                out.extend_from_slice(errors::MS_MODE);
                return;
            }
        };
        // A CAS turns set and replace into a CAS store (replace + CAS is just CAS); add
        // ignores it, append and prepend compare it themselves.
        let command = match (command, f.compare_cas) {
            (Command::Set | Command::Replace, Some(_)) => Command::Cas,
            (c, _) => c,
        };
        let write = Write {
            command,
            key: m.key,
            flags: f.client_flags.unwrap_or(0),
            exptime: f.ttl.map_or(0, i64::from),
            data: m.req.data(),
            cas: f.compare_cas.unwrap_or(0),
        };
        let how = MetaStore {
            meta: true,
            key_binary: f.base64,
            stale: f.invalidate && command == Command::Cas,
        };
        let (status, cas): (&[u8], u64) = match self.store_item(&write, how, m.now) {
            Storage::Stored(_) if f.quiet => return,
            Storage::Stored(cas) => (b"HD", cas),
            // A failed store has no CAS to return: memcached answers `c0`.
            Storage::NotStored => (b"NS", 0),
            Storage::Exists => (b"EX", 0),
            Storage::NotFound => (b"NF", 0),
            Storage::TooLarge => {
                out.extend_from_slice(crate::protocol::reply::TOO_LARGE);
                return;
            }
            Storage::OutOfMemory => {
                out.extend_from_slice(STORE_OOM);
                return;
            }
        };
        out.extend_from_slice(status);
        for token in m.req.meta_flags() {
            match token[0] {
                b'O' => put_opaque(out, token),
                b'k' => put_key(out, m.key, f.base64),
                b'c' => put_number(out, b'c', cas),
                _ => {}
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    /// `md <key> <flags>*`.
    fn meta_delete(&self, m: &Meta<'_>, out: &mut BytesMut) {
        let (f, key, now) = (m.f, m.key, m.now);
        // memcached writes the returned flags (and refuses a long opaque) before looking
        // the item up, and the status in front of them after.
        let start = out.len();
        out.extend_from_slice(b"HD");
        if !m.echo(out, start) {
            return;
        }
        let ttl = self.ttl(f.ttl, now);
        let hash = self.hash(key);
        let flush = self.flush_state();
        let mut shard = self.shard(hash);
        let status: &[u8; 2] = match shard.lookup(hash as u32, key, now, &flush) {
            Some(idx) if f.compare_cas.is_some_and(|c| c != shard.entry(idx).cas) => {
                shard.stats.delete_misses += 1;
                b"EX"
            }
            Some(idx) if f.invalidate => {
                // Invalidation keeps the item, stale, with a new CAS (and TTL if given); the
                // next fetch may win the token again. Not counted as a delete.
                let cas = self.next_cas();
                let e = shard.entry_mut(idx);
                if let Some(t) = ttl {
                    e.exptime = t;
                }
                e.bits = (e.bits | STALE) & !TOKEN_SENT;
                e.cas = cas;
                b"HD"
            }
            Some(idx) => {
                shard.stats.delete_hits += 1;
                shard.unlink(idx);
                b"HD"
            }
            None => {
                shard.stats.delete_misses += 1;
                b"NF"
            }
        };
        drop(shard);
        if status == b"HD" && f.quiet {
            out.truncate(start);
            return;
        }
        out[start..start + 2].copy_from_slice(status);
        out.extend_from_slice(b"\r\n");
    }

    /// `ma <key> <flags>*`.
    fn meta_arithmetic(&self, m: &Meta<'_>, out: &mut BytesMut) {
        let (f, key, now) = (m.f, m.key, m.now);
        let incr = !matches!(f.mode, Some(b'D' | b'-'));
        let ttl = self.ttl(f.ttl, now);
        let vivify = self.ttl(f.vivify, now);
        let hash = self.hash(key);
        let flush = self.flush_state();
        let mut shard = self.shard(hash);
        let delta = f.delta.unwrap_or(1);
        let cas = f.compare_cas.unwrap_or(0);
        let start = out.len();
        // The item answered for, its value, whether it is the linked item (a count that
        // grew the number leaves the reply looking at the old, unlinked one), and whether
        // `N` just created it.
        let (idx, value, linked, created) =
            match self.count(&mut shard, hash, key, incr, delta, cas, now, &flush) {
                Counted::Done {
                    value,
                    idx,
                    in_place,
                } => (idx, value, in_place, false),
                Counted::NonNumeric => {
                    out.extend_from_slice(NON_NUMERIC);
                    return;
                }
                Counted::OutOfMemory => {
                    out.extend_from_slice(DELTA_OOM);
                    return;
                }
                Counted::NotFound if vivify.is_some() => {
                    // The initial value (not counted), flags 0, no expiry until `N` sets it.
                    let initial = f.initial.unwrap_or(0);
                    let mut num = [0; 20];
                    let text = format_u64(initial, &mut num);
                    let cas = self.next_cas();
                    let evict = self.evicts();
                    let new = Value::New(text);
                    match shard.link(hash as u32, key, new, 0, 0, cas, None, evict, now, &flush) {
                        Ok(idx) => (idx, initial, true, true),
                        Err(_) => {
                            out.extend_from_slice(VIVIFY_OOM);
                            return;
                        }
                    }
                }
                miss => {
                    if matches!(miss, Counted::NotFound) {
                        if incr {
                            shard.stats.incr_misses += 1;
                        } else {
                            shard.stats.decr_misses += 1;
                        }
                    }
                    drop(shard);
                    let status: &[u8] = match miss {
                        Counted::CasMismatch => b"EX",
                        _ => b"NF",
                    };
                    out.extend_from_slice(status);
                    if m.echo(out, start) {
                        out.extend_from_slice(b"\r\n");
                    }
                    return;
                }
            };
        let mut num = [0; 20];
        let number = format_u64(value, &mut num);
        let mut len = [0; 20];
        let e = shard.entry_mut(idx);
        let mut exptime = e.exptime;
        if f.value {
            out.extend_from_slice(b"VA ");
            out.extend_from_slice(format_u64(number.len() as u64, &mut len));
        } else {
            out.extend_from_slice(b"HD");
        }
        for token in m.req.meta_flags() {
            match token[0] {
                b'c' => put_number(out, b'c', e.cas),
                b't' => put_ttl(out, exptime, now),
                b'T' => {
                    if let Some(t) = ttl {
                        exptime = t;
                        if linked {
                            e.exptime = t;
                        }
                    }
                }
                b'N' if created => {
                    if let Some(t) = vivify {
                        exptime = t;
                        e.exptime = t;
                    }
                }
                b'O' if token.len() > MAX_OPAQUE_LEN => {
                    // The count (or creation) and any TTL before it stay.
                    opaque_too_long(out, start);
                    return;
                }
                b'O' => put_opaque(out, token),
                b'k' => put_key(out, key, f.base64),
                _ => {}
            }
        }
        drop(shard);
        // Quiet drops a success, but an item N just created is always answered.
        if f.quiet && !created {
            out.truncate(start);
            return;
        }
        if f.value {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(number);
        }
        out.extend_from_slice(b"\r\n");
    }

    /// `me <key> [b]`: the item's metadata as memcached prints it, or `EN`.
    fn meta_debug(&self, key: &[u8], now: u64, out: &mut BytesMut) {
        let hash = self.hash(key);
        let flush = self.flush_state();
        let mut shard = self.shard(hash);
        // A lookup that does not count as a use (but reclaims an expired item).
        let Some(idx) = shard.lookup(hash as u32, key, now, &flush) else {
            out.extend_from_slice(b"EN\r\n");
            return;
        };
        let e = shard.entry(idx);
        let mut num = [0; 20];
        out.extend_from_slice(b"ME ");
        if e.has(KEY_BINARY) {
            put_base64(out, e.key());
        } else {
            out.extend_from_slice(e.key());
        }
        // memcached prints (now - expiry) as a signed 32-bit number: negative while the item
        // lives, -1 for no expiry.
        out.extend_from_slice(b" exp=");
        if e.exptime == 0 {
            out.extend_from_slice(b"-1");
        } else {
            let exp = secs_u32(now).wrapping_sub(e.exptime) as i32;
            if exp < 0 {
                out.extend_from_slice(b"-");
            }
            out.extend_from_slice(format_u64(u64::from(exp.unsigned_abs()), &mut num));
        }
        out.extend_from_slice(b" la=");
        let la = secs_u32(now).wrapping_sub(e.time);
        out.extend_from_slice(format_u64(u64::from(la), &mut num));
        out.extend_from_slice(b" cas=");
        out.extend_from_slice(format_u64(e.cas, &mut num));
        out.extend_from_slice(if e.has(FETCHED) {
            b" fetch=yes"
        } else {
            b" fetch=no"
        });
        let size = item_total(e);
        out.extend_from_slice(b" cls=");
        out.extend_from_slice(format_u64(u64::from(slab_class(size)), &mut num));
        out.extend_from_slice(b" size=");
        out.extend_from_slice(format_u64(size as u64, &mut num));
        out.extend_from_slice(b"\r\n");
    }
}

/// One meta request being executed: the request, its decoded key, its parsed flags.
struct Meta<'a> {
    req: &'a Request,
    key: &'a [u8],
    f: &'a MetaFlags,
    now: u64,
}

impl Meta<'_> {
    /// Appends the `O` and `k` flags (in request order) that every meta reply echoes, the key
    /// as sent (base64 with `b`). On an opaque that is too long, replaces what was written
    /// from `start` with memcached's error and returns false.
    fn echo(&self, out: &mut BytesMut, start: usize) -> bool {
        for token in self.req.meta_flags() {
            match token[0] {
                b'O' if token.len() > MAX_OPAQUE_LEN => {
                    opaque_too_long(out, start);
                    return false;
                }
                b'O' => put_opaque(out, token),
                b'k' => put_key(out, self.key, self.f.base64),
                _ => {}
            }
        }
        true
    }
}

/// ` O<opaque>`: the opaque token (the `O` flag) as sent.
fn put_opaque(out: &mut BytesMut, token: &[u8]) {
    out.extend_from_slice(b" ");
    out.extend_from_slice(token);
}

/// What was written from `start` replaced by memcached's error for an opaque token longer
/// than [`MAX_OPAQUE_LEN`].
fn opaque_too_long(out: &mut BytesMut, start: usize) {
    out.truncate(start);
    out.extend_from_slice(errors::OPAQUE_TOO_LONG);
}

/// ` <flag><n>`.
fn put_number(out: &mut BytesMut, flag: u8, n: u64) {
    out.extend_from_slice(&[b' ', flag]);
    out.extend_from_slice(format_u64(n, &mut [0; 20]));
}

/// ` t<seconds left>`: `-1` for no expiry; memcached subtracts in unsigned 32 bits, so an
/// expiry already past (a negative TTL just set) shows as a number near 2^32.
fn put_ttl(out: &mut BytesMut, exptime: u32, now: u64) {
    if exptime == 0 {
        out.extend_from_slice(b" t-1");
    } else {
        put_number(out, b't', u64::from(exptime.wrapping_sub(secs_u32(now))));
    }
}

/// ` k<key>`, or ` k<base64 key> b` for a binary key.
fn put_key(out: &mut BytesMut, key: &[u8], binary: bool) {
    out.extend_from_slice(b" k");
    if binary {
        put_base64(out, key);
        out.extend_from_slice(b" b");
    } else {
        out.extend_from_slice(key);
    }
}

fn put_base64(out: &mut BytesMut, key: &[u8]) {
    // Keys are at most 250 bytes; only binary keys asked back take this path.
    let mut encoded = Vec::with_capacity(key.len().div_ceil(3) * 4);
    base64_encode(key, &mut encoded);
    out.extend_from_slice(&encoded);
}

/// memcached's `ITEM_ntotal`: header, key and its NUL, value and its `\r\n`, the client flags
/// when non-zero, the CAS.
fn item_total(e: &Entry) -> usize {
    let flags = if e.flags == 0 { 0 } else { 4 };
    ITEM_HEADER + e.key().len() + 1 + e.value().len() + 2 + flags + 8
}

/// The slab class memcached (default settings) puts an item of `size` bytes in: chunk
/// sizes start at header + 48, grow by 1.25 (truncated, then 8-aligned) while below the
/// largest chunk / 1.25; the last class is the largest chunk, and larger (chunked) items
/// report it too.
fn slab_class(size: usize) -> u32 {
    let mut class = 1;
    let mut chunk = ITEM_HEADER + SLAB_CHUNK_MIN;
    loop {
        if chunk as f64 >= SLAB_CHUNK_MAX as f64 / SLAB_FACTOR {
            return class;
        }
        chunk = chunk.next_multiple_of(8);
        if size <= chunk {
            return class;
        }
        chunk = (chunk as f64 * SLAB_FACTOR) as usize;
        class += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_classes_are_memcacheds_defaults() {
        // Chunk sizes from `memcached -vv` 1.6.18 with default settings.
        assert_eq!(slab_class(1), 1);
        assert_eq!(slab_class(96), 1);
        assert_eq!(slab_class(97), 2);
        assert_eq!(slab_class(120), 2);
        assert_eq!(slab_class(121), 3);
        assert_eq!(slab_class(394_840), 38);
        assert_eq!(slab_class(394_841), 39);
        assert_eq!(slab_class(600_066), 39);
    }
}
