//! Number parsing and formatting with memcached's exact rules for incr/decr values.

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Reads a stored value as incr/decr's counter, the way memcached does: C `strtoull` on the
/// data (which memcached keeps followed by `\r\n`), then its `safe_strtoull` checks.
///
/// That means, observably on memcached 1.6: leading whitespace and a `+` are accepted,
/// anything after the digits is ignored if it starts with whitespace or NUL (`"5 abc"` is 5),
/// `-0` is 0, a negative number is refused unless its wrapped value fits in 63 bits
/// (`-18446744073709551615` reads as 1), and overflow beyond 64 bits is refused.
///
/// One memcached 1.6.18 quirk is deliberately not copied: for values of 2^63 and above it
/// looks for a '-' with a scan that runs past the end of the item's data into leftover slab
/// memory, so it sometimes calls such a counter non-numeric; here only the number's own text
/// is checked.
pub(super) fn parse_counter(data: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i < data.len() && is_c_space(data[i]) {
        i += 1;
    }
    let negative = match data.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits_start = i;
    let mut value: u64 = 0;
    let mut overflow = false;
    while let Some(d) = data.get(i).filter(|b| b.is_ascii_digit()) {
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
        {
            Some(v) => value = v,
            None => overflow = true,
        }
        i += 1;
    }
    if i == digits_start || overflow {
        return None;
    }
    // The end of the data is followed by "\r\n" in memcached, which counts as whitespace.
    if let Some(&next) = data.get(i) {
        if !is_c_space(next) && next != 0 {
            return None;
        }
    }
    let value = if negative {
        value.wrapping_neg()
    } else {
        value
    };
    if (value as i64) < 0 && data[..i].contains(&b'-') {
        return None;
    }
    Some(value)
}

/// Writes `v` in decimal into `buf`, returning the digits (no allocation).
pub(super) fn format_u64(v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_parsing_follows_strtoull() {
        assert_eq!(parse_counter(b"10"), Some(10));
        assert_eq!(parse_counter(b"9 "), Some(9));
        assert_eq!(parse_counter(b" 7"), Some(7));
        assert_eq!(parse_counter(b"+3"), Some(3));
        assert_eq!(parse_counter(b"5 abc"), Some(5));
        assert_eq!(parse_counter(b"5\0x"), Some(5));
        assert_eq!(parse_counter(b"-0 "), Some(0));
        assert_eq!(parse_counter(b"-18446744073709551615"), Some(1));
        assert_eq!(parse_counter(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_counter(b"18446744073709551616"), None);
        assert_eq!(parse_counter(b"-5"), None);
        assert_eq!(parse_counter(b"5a"), None);
        assert_eq!(parse_counter(b""), None);
        assert_eq!(parse_counter(b"  "), None);
        assert_eq!(parse_counter(b"-"), None);
        assert_eq!(parse_counter(b"abc"), None);
    }

    #[test]
    fn formats_u64() {
        let mut buf = [0; 20];
        assert_eq!(format_u64(0, &mut buf), b"0");
        assert_eq!(format_u64(u64::MAX, &mut buf), b"18446744073709551615");
        assert_eq!(format_u64(1200, &mut buf), b"1200");
    }
}
