//! The meta protocol's requests (`mg`, `ms`, `md`, `ma`, `mn`, `me`) as memcached 1.6.18
//! reads them: their flags, the base64 form of binary keys, and which answers a quiet (`q`)
//! request leaves out.
//!
//! memroute never sends `q` upstream (each request forwarded then gets exactly one reply, so
//! a connection shared by many clients stays aligned); it decides quietness itself, per
//! request, from [`Quiet`]. memcached 1.6.18's rules are narrower than its documentation's
//! summary, and were measured against it: a quiet `mg` drops only `EN` (a hit without `v`
//! still answers `HD`), `ms` and `md` drop only `HD`, and `ma` drops `HD` and the whole
//! `VA` reply, except when `N` just created the item.

use super::numbers::{safe_strtol, safe_strtoul, safe_strtoull};
use super::request::MAX_KEY_LEN;

/// memcached refuses a meta line of more tokens than this (its `ntokens`, which counts a
/// terminal token too).
pub const MAX_META_TOKENS: usize = 20;
/// Longest opaque (`O`) token memcached echoes, its `O` included.
pub const MAX_OPAQUE_LEN: usize = 32;

/// `mn`'s answer, and the end of every reply of a request sent with `q` and `mn` upstream.
pub const MN: &[u8] = b"MN\r\n";
/// The `mn` request memroute sends after a request it lets the backend make quiet.
pub const MN_REQUEST: &[u8] = b"mn\r\n";

/// A meta command's error lines, as memcached words them.
pub mod errors {
    /// A flag memcached does not know.
    pub const INVALID_FLAG: &[u8] = b"CLIENT_ERROR invalid flag\r\n";
    /// A flag given twice (or a flag byte beyond ASCII).
    pub const DUPLICATE_FLAG: &[u8] = b"CLIENT_ERROR duplicate flag\r\n";
    /// `md`/`ma`: any bad flag.
    pub const INVALID_OR_DUPLICATE: &[u8] = b"CLIENT_ERROR invalid or duplicate flag\r\n";
    /// A numeric flag (`N`, `T`, `R`, `C`) that is not a number.
    pub const BAD_TOKEN: &[u8] = b"CLIENT_ERROR bad token in command line format\r\n";
    /// A base64 key (`b`) that does not decode.
    pub const DECODING_KEY: &[u8] = b"CLIENT_ERROR error decoding key\r\n";
    /// `M` with more than one mode character.
    pub const M_LENGTH: &[u8] = b"CLIENT_ERROR incorrect length for M token\r\n";
    /// `J` that is not a number.
    pub const INITIAL: &[u8] = b"CLIENT_ERROR invalid numeric initial value\r\n";
    /// `D` that is not a number.
    pub const DELTA: &[u8] = b"CLIENT_ERROR invalid numeric delta value\r\n";
    /// `mg` with too many tokens.
    pub const MG_TOO_LONG: &[u8] = b"CLIENT_ERROR options flags are too long\r\n";
    /// `ms`, `md`, `ma` with too many tokens.
    pub const TOO_LONG: &[u8] = b"CLIENT_ERROR options flags too long\r\n";
    /// `ms` with a mode other than E, A, P, R, S.
    pub const MS_MODE: &[u8] = b"CLIENT_ERROR invalid mode for ms M token\r\n";
    /// `ma` with a mode other than I, +, D, -.
    pub const MA_MODE: &[u8] = b"CLIENT_ERROR invalid mode for ma M token\r\n";
    /// An opaque longer than memcached echoes.
    pub const OPAQUE_TOO_LONG: &[u8] = b"CLIENT_ERROR opaque token too long\r\n";
}

/// A meta request's flags, read as memcached's flag pre-parse reads them (first byte of each
/// token; numbers with its `safe_strto*` rules).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaFlags {
    /// `b`: the key is base64.
    pub base64: bool,
    /// `q`: quiet.
    pub quiet: bool,
    /// `v`: return the value.
    pub value: bool,
    /// `u`: do not bump the item in the LRU.
    pub no_update: bool,
    /// `l`: return the time since last access.
    pub last_access: bool,
    /// `h`: return whether the item was fetched before.
    pub hit_before: bool,
    /// `k`: return the key.
    pub return_key: bool,
    /// `c`: return the CAS value.
    pub return_cas: bool,
    /// `f`: return the client flags.
    pub return_flags: bool,
    /// `s`: return the item size.
    pub return_size: bool,
    /// `t`: return the remaining TTL.
    pub return_ttl: bool,
    /// `O`: an opaque to echo (its length, `O` included, for the too-long check).
    pub opaque_len: Option<usize>,
    /// `I`: invalidate (mark stale) instead of deleting / on a CAS write.
    pub invalidate: bool,
    /// `N<ttl>`: autovivify on a miss with this TTL.
    pub vivify: Option<i32>,
    /// `T<ttl>`: a new TTL.
    pub ttl: Option<i32>,
    /// `R<ttl>`: win the recache token if the TTL left is below this.
    pub recache: Option<i32>,
    /// `F<flags>`: client flags to store.
    pub client_flags: Option<u32>,
    /// `C<cas>`: compare against this CAS value.
    pub compare_cas: Option<u64>,
    /// `M<mode>`: the mode switch of `ms` and `ma`.
    pub mode: Option<u8>,
    /// `J<n>`: `ma`'s initial value on autovivify.
    pub initial: Option<u64>,
    /// `D<n>`: `ma`'s delta.
    pub delta: Option<u64>,
}

impl MetaFlags {
    /// Reads the flag tokens of a meta request whose key token is `key`. On a bad flag, the
    /// error memcached's pre-parse reports (before the command's own checks): an unknown or
    /// repeated flag stops it at once; other errors let it go on, and the last one read is
    /// the one reported — as in memcached, where `F` sets no message of its own.
    pub fn parse<'a>(
        key: &[u8],
        tokens: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<MetaFlags, &'static [u8]> {
        let mut f = MetaFlags::default();
        let mut seen = [false; 127];
        let mut error: Option<&'static [u8]> = None;
        let mut failed = false;
        for token in tokens {
            let Some(&o) = token.first() else { continue };
            if o >= 127 || seen[o as usize] {
                return Err(errors::DUPLICATE_FLAG);
            }
            seen[o as usize] = true;
            let rest = &token[1..];
            let mut fail = |e: Option<&'static [u8]>| {
                failed = true;
                if e.is_some() {
                    error = e;
                }
            };
            match o {
                b'b' => {
                    f.base64 = true;
                    if base64_decoded_len(key).is_none() {
                        fail(Some(errors::DECODING_KEY));
                    }
                }
                b'N' => match safe_strtol(rest) {
                    Some(t) => f.vivify = Some(t),
                    None => fail(Some(errors::BAD_TOKEN)),
                },
                b'T' => match safe_strtol(rest) {
                    Some(t) => f.ttl = Some(t),
                    None => fail(Some(errors::BAD_TOKEN)),
                },
                b'R' => match safe_strtol(rest) {
                    Some(t) => f.recache = Some(t),
                    None => fail(Some(errors::BAD_TOKEN)),
                },
                b'l' => f.last_access = true,
                b'O' => f.opaque_len = Some(token.len()),
                // Accepted by 1.6.18 and ignored.
                b'P' | b'L' => {}
                b'k' => f.return_key = true,
                b's' => f.return_size = true,
                b't' => f.return_ttl = true,
                b'c' => f.return_cas = true,
                b'f' => f.return_flags = true,
                b'v' => f.value = true,
                b'h' => f.hit_before = true,
                b'u' => f.no_update = true,
                b'q' => f.quiet = true,
                b'F' => match safe_strtoul(rest) {
                    Some(v) => f.client_flags = Some(v),
                    None => fail(None),
                },
                b'C' => match safe_strtoull(rest) {
                    Some(v) => f.compare_cas = Some(v),
                    None => fail(Some(errors::BAD_TOKEN)),
                },
                b'M' => match rest {
                    [m] => f.mode = Some(*m),
                    _ => fail(Some(errors::M_LENGTH)),
                },
                b'J' => match safe_strtoull(rest) {
                    Some(v) => f.initial = Some(v),
                    None => fail(Some(errors::INITIAL)),
                },
                b'D' => match safe_strtoull(rest) {
                    Some(v) => f.delta = Some(v),
                    None => fail(Some(errors::DELTA)),
                },
                b'I' => f.invalidate = true,
                _ => return Err(errors::INVALID_FLAG),
            }
        }
        match failed {
            false => Ok(f),
            true => Err(error.unwrap_or(super::reply::BAD_FORMAT)),
        }
    }
}

/// Which answers of a quiet request memroute leaves out (never an error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quiet {
    /// Every answer is written.
    #[default]
    No,
    /// `mg … q`: a miss (`EN`).
    Miss,
    /// `ms … q`, `md … q`: success (`HD`).
    Stored,
    /// `ma … q` without `N`: success (`HD`, or the whole `VA` reply).
    Counted,
}

impl Quiet {
    /// Whether `reply` (one whole meta reply) is left out.
    pub fn drops(self, reply: &[u8]) -> bool {
        let status = reply.get(..3).unwrap_or(reply);
        match self {
            Quiet::No => false,
            Quiet::Miss => status == b"EN\r" || status == b"EN ",
            Quiet::Stored => status == b"HD\r" || status == b"HD ",
            Quiet::Counted => status == b"HD\r" || status == b"HD " || status == b"VA ",
        }
    }
}

/// The value of one base64 character in memcached's decoder; `None` for characters it
/// skips. `=` counts as zero (and as padding).
fn base64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        b'=' => Some(0),
        _ => None,
    }
}

/// Decodes `src` as memcached's (lenient) decoder does: characters outside the alphabet are
/// skipped; the count of the others must be a non-zero multiple of 4; decoding stops after
/// the first group holding padding. Returns the bytes written to `out` (which must hold
/// `src.len() / 4 * 3` bytes), or `None` where memcached's decoder returns 0 — a failure.
pub fn base64_decode(src: &[u8], out: &mut [u8]) -> Option<usize> {
    let count = src.iter().filter(|c| base64_value(**c).is_some()).count();
    if count == 0 || count % 4 != 0 {
        return None;
    }
    let (mut pos, mut group, mut filled, mut pad) = (0, [0u8; 4], 0, 0);
    for &c in src {
        let Some(v) = base64_value(c) else { continue };
        if c == b'=' {
            pad += 1;
        }
        group[filled] = v;
        filled += 1;
        if filled == 4 {
            out[pos] = (group[0] << 2) | (group[1] >> 4);
            out[pos + 1] = (group[1] << 4) | (group[2] >> 2);
            out[pos + 2] = (group[2] << 6) | group[3];
            pos += 3;
            filled = 0;
            if pad > 0 {
                if pad > 2 {
                    return None;
                }
                pos -= pad;
                break;
            }
        }
    }
    (pos > 0).then_some(pos)
}

/// The length `src` decodes to, or `None` if it does not decode.
pub fn base64_decoded_len(src: &[u8]) -> Option<usize> {
    let mut out = [0u8; MAX_KEY_LEN];
    base64_decode(&src[..src.len().min(MAX_KEY_LEN)], &mut out)
}

/// Encodes `src` in standard base64 with padding (how memcached returns a binary key).
pub fn base64_encode(src: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in src.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        out.push(ALPHABET[(b[0] >> 2) as usize]);
        out.push(ALPHABET[(((b[0] & 3) << 4) | (b[1] >> 4)) as usize]);
        out.push(match chunk.len() {
            1 => b'=',
            _ => ALPHABET[(((b[1] & 15) << 2) | (b[2] >> 6)) as usize],
        });
        out.push(match chunk.len() {
            3 => ALPHABET[(b[2] & 63) as usize],
            _ => b'=',
        });
    }
}

/// A key as memcached looks it up: the token itself, or with `b` its decoded bytes (written
/// to `buf`). `None` if a base64 key does not decode.
pub fn lookup_key<'a>(
    token: &'a [u8],
    base64: bool,
    buf: &'a mut [u8; MAX_KEY_LEN],
) -> Option<&'a [u8]> {
    if !base64 {
        return Some(token);
    }
    let n = base64_decode(&token[..token.len().min(MAX_KEY_LEN)], buf)?;
    Some(&buf[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(line: &str) -> Result<MetaFlags, &'static [u8]> {
        let mut t = line.split(' ').filter(|t| !t.is_empty());
        let key = t.next().unwrap().as_bytes();
        MetaFlags::parse(key, t.map(str::as_bytes))
    }

    #[test]
    fn flags_are_read_as_memcached_reads_them() {
        let f = flags("foo v q k O123 T30 N0 C99 MS F7 J5 D2").unwrap();
        assert!(f.value && f.quiet && f.return_key);
        assert_eq!(f.opaque_len, Some(4));
        assert_eq!(
            (f.ttl, f.vivify, f.compare_cas),
            (Some(30), Some(0), Some(99))
        );
        assert_eq!((f.mode, f.client_flags), (Some(b'S'), Some(7)));
        assert_eq!((f.initial, f.delta), (Some(5), Some(2)));
        assert_eq!(flags("foo v v"), Err(errors::DUPLICATE_FLAG));
        assert_eq!(flags("foo E5"), Err(errors::INVALID_FLAG));
        assert_eq!(flags("foo \u{7f}"), Err(errors::DUPLICATE_FLAG));
        assert_eq!(flags("foo !"), Err(errors::INVALID_FLAG));
        assert_eq!(flags("foo Tx"), Err(errors::BAD_TOKEN));
        assert_eq!(flags("foo MSS"), Err(errors::M_LENGTH));
        // The last error read wins; F has no message of its own.
        assert_eq!(flags("foo Tx Jy"), Err(errors::INITIAL));
        assert_eq!(flags("foo Fx"), Err(crate::protocol::reply::BAD_FORMAT));
        assert_eq!(flags("foo Jy Fx"), Err(errors::INITIAL));
        // A repeated flag stops the parse, whatever came before.
        assert_eq!(flags("foo Tx T1"), Err(errors::DUPLICATE_FLAG));
        assert_eq!(flags("Zm9v=== b"), Err(errors::DECODING_KEY));
        assert!(flags("Zm9v b").unwrap().base64);
    }

    #[test]
    fn base64_decodes_as_memcacheds_lenient_decoder() {
        let dec = |s: &str| {
            let mut out = [0u8; 64];
            base64_decode(s.as_bytes(), &mut out).map(|n| out[..n].to_vec())
        };
        assert_eq!(dec("Zm9v").as_deref(), Some(&b"foo"[..]));
        assert_eq!(dec("Zm8=").as_deref(), Some(&b"fo"[..]));
        assert_eq!(dec("Zg==").as_deref(), Some(&b"f"[..]));
        // Characters outside the alphabet are skipped.
        assert_eq!(dec("Zm!9v").as_deref(), Some(&b"foo"[..]));
        // Decoding stops after the first padded group.
        assert_eq!(dec("Zg==Zm9v").as_deref(), Some(&b"f"[..]));
        assert_eq!(dec("Zm9"), None);
        assert_eq!(dec("Zm9v==="), None);
        assert_eq!(dec("===="), None);
        assert_eq!(dec(""), None);
        let mut enc = Vec::new();
        for s in [&b"foo"[..], b"fo", b"f", b"\x00\xff a\r\n"] {
            enc.clear();
            base64_encode(s, &mut enc);
            let back = dec(std::str::from_utf8(&enc).unwrap()).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn quiet_drops_only_what_memcached_1_6_18_drops() {
        assert!(Quiet::Miss.drops(b"EN\r\n"));
        assert!(Quiet::Miss.drops(b"EN kfoo O1\r\n"));
        assert!(!Quiet::Miss.drops(b"HD\r\n"));
        assert!(!Quiet::Miss.drops(b"VA 1\r\nx\r\n"));
        assert!(Quiet::Stored.drops(b"HD\r\n"));
        assert!(!Quiet::Stored.drops(b"NS\r\n"));
        assert!(!Quiet::Stored.drops(b"NF\r\n"));
        assert!(!Quiet::Stored.drops(b"EX\r\n"));
        assert!(Quiet::Counted.drops(b"VA 1\r\n3\r\n"));
        assert!(Quiet::Counted.drops(b"HD c5\r\n"));
        assert!(!Quiet::Counted.drops(b"NF\r\n"));
        for q in [Quiet::No, Quiet::Miss, Quiet::Stored, Quiet::Counted] {
            assert!(!q.drops(b"SERVER_ERROR backend timeout\r\n"));
            assert!(!q.drops(b"CLIENT_ERROR bad data chunk\r\n"));
        }
    }
}
