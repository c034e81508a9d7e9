//! A write failed over to a gutter pool lives there briefly: its TTL capped.

use bytes::BytesMut;

use crate::protocol::codec::{ClientCodec, CodecLimits, Decoded};
use crate::protocol::request::{Command, Request};

/// `req` with its TTL at most `ttl` seconds (a write failed over to a gutter pool): text
/// storage commands and `touch` get a capped exptime; meta requests a capped `T` (and `N`),
/// an `ms` without one gets `T<ttl>`. Requests without a TTL are unchanged.
pub fn with_ttl_cap(req: &Request, ttl: u32) -> Request {
    let cap = |exptime: i64| -> i64 {
        let ttl = i64::from(ttl);
        // memcached reads an exptime above 30 days as a Unix time.
        const MONTH: i64 = 30 * 24 * 3600;
        match exptime {
            e if e < 0 => e,
            0 => ttl,
            e if e > MONTH => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                if e - now > ttl {
                    ttl
                } else {
                    e
                }
            }
            e => e.min(ttl),
        }
    };
    let line = req.line();
    let words: Vec<&[u8]> = line
        .split(|b| *b == b' ')
        .filter(|w| !w.is_empty())
        .collect();
    let mut out: Vec<Vec<u8>> = words.iter().map(|w| w.to_vec()).collect();
    match req.command {
        c if c.is_storage() => out[3] = cap(req.exptime).to_string().into_bytes(),
        Command::Touch => out[2] = cap(req.exptime).to_string().into_bytes(),
        c if c.is_meta() => {
            let first_flag = if c == Command::MetaSet { 3 } else { 2 };
            let mut has_t = false;
            for w in out.iter_mut().skip(first_flag) {
                if let Some(&f @ (b'T' | b'N')) = w.first() {
                    let value = crate::protocol::numbers::safe_strtol(&w[1..]).unwrap_or(0);
                    has_t |= f == b'T';
                    *w = format!("{}{}", f as char, cap(i64::from(value))).into_bytes();
                }
            }
            if c == Command::MetaSet && !has_t {
                out.push(format!("T{ttl}").into_bytes());
            }
        }
        _ => return req.clone(),
    }
    let mut bytes = BytesMut::new();
    bytes.extend_from_slice(&out.join(&b' '));
    bytes.extend_from_slice(b"\r\n");
    if req.command.is_storage() || req.command == Command::MetaSet {
        bytes.extend_from_slice(req.data());
        bytes.extend_from_slice(b"\r\n");
    }
    let limits = CodecLimits {
        item_size_max: usize::MAX / 2,
    };
    match ClientCodec::new(limits).decode_item(&mut bytes) {
        Some(Decoded::Request(r)) => r,
        // The capped request reads as the original did; a surprise keeps the original.
        _ => req.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Request {
        match ClientCodec::new(CodecLimits::default()).decode_item(&mut BytesMut::from(text)) {
            Some(Decoded::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn wire(r: &Request) -> String {
        String::from_utf8_lossy(&r.frame).into_owned()
    }

    #[test]
    fn gutter_writes_get_their_ttl_capped() {
        let cap = |t: &str| wire(&with_ttl_cap(&request(t), 300));
        assert_eq!(cap("set k 5 0 2\r\nhi\r\n"), "set k 5 300 2\r\nhi\r\n");
        assert_eq!(
            cap("set k 5 60 2 noreply\r\nhi\r\n"),
            "set k 5 60 2 noreply\r\nhi\r\n"
        );
        assert_eq!(cap("add k 5 9999 2\r\nhi\r\n"), "add k 5 300 2\r\nhi\r\n");
        assert_eq!(cap("cas k 5 -1 2 7\r\nhi\r\n"), "cas k 5 -1 2 7\r\nhi\r\n");
        assert_eq!(cap("touch k 0\r\n"), "touch k 300\r\n");
        assert_eq!(cap("incr k 1\r\n"), "incr k 1\r\n");
        assert_eq!(cap("ms k 2 T0 F3\r\nhi\r\n"), "ms k 2 T300 F3\r\nhi\r\n");
        assert_eq!(cap("ms k 2 q\r\nhi\r\n"), "ms k 2 q T300\r\nhi\r\n");
        assert_eq!(cap("ma k N0 J5\r\n"), "ma k N300 J5\r\n");
        assert_eq!(cap("mg k v T10\r\n"), "mg k v T10\r\n");
        // A Unix time far ahead is capped too.
        assert_eq!(
            cap("set k 0 2000000000 1\r\nx\r\n"),
            "set k 0 300 1\r\nx\r\n"
        );
    }
}
