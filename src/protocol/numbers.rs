//! Numbers as memcached reads them: C's `strtoul`/`strtol` family behind its `safe_strto*`
//! wrappers. memroute must accept exactly what memcached accepts (and read the same value),
//! or a request it forwards would mean something else to the backend: a leading `+` or
//! whitespace is fine, trailing whitespace (and anything after it) is ignored, a negative
//! unsigned number is refused only when it wraps to a huge value, and 32-bit fields keep the
//! low bits of a wider number.

/// C's `isspace` in the "C" locale.
pub fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// What `strtoull`/`strtoll` saw: the sign, the magnitude (None on overflow of u64), and
/// where the digits ended; `None` when there were no digits at all.
struct Scan {
    negative: bool,
    magnitude: Option<u64>,
    end: usize,
}

fn scan(tok: &[u8]) -> Option<Scan> {
    let mut i = 0;
    while i < tok.len() && is_c_space(tok[i]) {
        i += 1;
    }
    let mut negative = false;
    if let Some(&s @ (b'+' | b'-')) = tok.get(i) {
        negative = s == b'-';
        i += 1;
    }
    let start = i;
    let mut magnitude = Some(0u64);
    while i < tok.len() && tok[i].is_ascii_digit() {
        let d = (tok[i] - b'0') as u64;
        magnitude = magnitude.and_then(|m| m.checked_mul(10)?.checked_add(d));
        i += 1;
    }
    (i > start).then_some(Scan {
        negative,
        magnitude,
        end: i,
    })
}

/// memcached accepts a number only when what follows it is whitespace or nothing.
fn ends_well(tok: &[u8], end: usize) -> bool {
    tok.get(end).is_none_or(|b| is_c_space(*b))
}

/// `safe_strtoull`: a 64-bit unsigned number (cas uniques, incr/decr deltas).
pub fn safe_strtoull(tok: &[u8]) -> Option<u64> {
    let s = scan(tok)?;
    let m = s.magnitude?;
    if !ends_well(tok, s.end) {
        return None;
    }
    let v = if s.negative { m.wrapping_neg() } else { m };
    // Only a minus sign that made the value look negative is refused.
    if (v as i64) < 0 && tok[..s.end].contains(&b'-') {
        return None;
    }
    Some(v)
}

/// `safe_strtoul` into a `uint32_t` (item flags, verbosity, memory limits): read as a 64-bit
/// `unsigned long`, then truncated to its low 32 bits.
pub fn safe_strtoul(tok: &[u8]) -> Option<u32> {
    safe_strtoull(tok).map(|v| v as u32)
}

/// `safe_strtol` into an `int32_t` (exptimes, data lengths): a 64-bit `long` (refused on
/// overflow), then truncated to its low 32 bits.
pub fn safe_strtol(tok: &[u8]) -> Option<i32> {
    let s = scan(tok)?;
    let m = s.magnitude?;
    if !ends_well(tok, s.end) {
        return None;
    }
    let v: i64 = if s.negative {
        if m > 1 << 63 {
            return None;
        }
        (m as i64).wrapping_neg()
    } else {
        i64::try_from(m).ok()?
    };
    Some(v as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_like_memcached() {
        assert_eq!(safe_strtoul(b"5"), Some(5));
        assert_eq!(safe_strtoul(b"+5"), Some(5));
        assert_eq!(safe_strtoul(b"\t5"), Some(5));
        assert_eq!(safe_strtoul(b"5\t"), Some(5));
        assert_eq!(safe_strtoul(b"5\rjunk"), Some(5));
        assert_eq!(safe_strtoul(b"-0"), Some(0));
        assert_eq!(safe_strtoul(b"-1"), None);
        assert_eq!(safe_strtoul(b"4294967296"), Some(0));
        assert_eq!(safe_strtoul(b"4294967301"), Some(5));
        assert_eq!(safe_strtoul(b"0x10"), None);
        assert_eq!(safe_strtoul(b""), None);
        assert_eq!(safe_strtoul(b"+"), None);
        assert_eq!(safe_strtoul(b"18446744073709551616"), None);
        assert_eq!(safe_strtoull(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(safe_strtoull(b"-5"), None);
        // A minus that wraps to a value below 2^63 is not noticed, as in memcached.
        assert_eq!(
            safe_strtoull(b"-9223372036854775809"),
            Some(9223372036854775807)
        );
        assert_eq!(safe_strtol(b"-1"), Some(-1));
        assert_eq!(safe_strtol(b"2147483647"), Some(i32::MAX));
        assert_eq!(safe_strtol(b"4294967297"), Some(1));
        assert_eq!(safe_strtol(b"9223372036854775807"), Some(-1));
        assert_eq!(safe_strtol(b"9223372036854775808"), None);
        assert_eq!(safe_strtol(b"-9223372036854775808"), Some(0));
        assert_eq!(safe_strtol(b"-9223372036854775809"), None);
        assert_eq!(safe_strtol(b"12a"), None);
    }
}
