//! Tokyo Tyrant pools. ttserver speaks only part of memcached's text protocol and, on anything
//! else, closes the connection or silently skips bytes, misaligning every reply after it on a
//! shared pipelined connection. So a Tokyo Tyrant pool only ever receives whole, validated
//! requests it understands; memroute answers everything else itself.
//!
//! ttserver also drops client flags. With `preserve_flags`, memroute keeps them by storing
//! them in a 4-byte big-endian prefix of the value, and strips it again on retrieval.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::reply::{value_items, END};
use crate::protocol::request::{Command, Request};

/// A command a Tokyo Tyrant pool cannot execute.
pub const UNSUPPORTED: &[u8] = b"SERVER_ERROR command not supported by tokyotyrant pool\r\n";
/// `gets`: ttserver has no CAS uniques, and a `gets` reply without one breaks clients.
pub const GETS_UNSUPPORTED: &[u8] =
    b"SERVER_ERROR gets not supported by tokyotyrant pool (no cas uniques)\r\n";
/// A command that cannot keep flags inside values.
pub const FLAGS_UNSUPPORTED: &[u8] =
    b"SERVER_ERROR command not supported by tokyotyrant pool with preserve_flags\r\n";

/// The meta protocol: ttserver has none of it, and no item metadata (CAS, TTL, flags) to
/// translate it faithfully; `mn` needs no backend and is answered.
pub const META_UNSUPPORTED: &[u8] =
    b"SERVER_ERROR meta commands not supported by tokyotyrant pool\r\n";

/// Whether `req` may go to a Tokyo Tyrant pool; if not, the error line to answer.
pub fn admit(req: &Request, preserve_flags: bool) -> Result<(), &'static [u8]> {
    // ttserver splits lines on any whitespace: a key holding some would be misread.
    let keyed = req.command.is_retrieval() || req.command.is_single_key();
    if keyed
        && req
            .keys()
            .any(|k| k.iter().any(|b| *b <= b' ' || *b == 0x7f))
    {
        return Err(crate::protocol::reply::BAD_FORMAT);
    }
    match req.command {
        Command::Get
        | Command::Set
        | Command::Add
        | Command::Replace
        | Command::Append
        | Command::Delete
        // memroute answers these itself.
        | Command::Version
        | Command::Quit
        | Command::MetaNoop => Ok(()),
        Command::MetaGet
        | Command::MetaSet
        | Command::MetaDelete
        | Command::MetaArithmetic
        | Command::MetaDebug => Err(META_UNSUPPORTED),
        // ttserver answers only a plain `stats`, which memroute answers itself.
        Command::Stats if crate::gather::stats::forwarded(req.key()).is_some() => Err(UNSUPPORTED),
        Command::Stats => Ok(()),
        // The value would be prefixed before the flags, or read as a number with them in it.
        Command::Prepend | Command::Incr | Command::Decr if preserve_flags => Err(FLAGS_UNSUPPORTED),
        Command::Prepend | Command::Incr | Command::Decr => Ok(()),
        // ttserver has no delayed flush.
        Command::FlushAll if req.exptime == 0 => Ok(()),
        Command::Gets => Err(GETS_UNSUPPORTED),
        Command::FlushAll
        | Command::Gat
        | Command::Gats
        | Command::Cas
        | Command::Touch
        | Command::Verbosity
        | Command::CacheMemlimit => Err(UNSUPPORTED),
    }
}

/// The request as ttserver expects it: memroute reads lines as memcached does (a `+` before a
/// number, tabs after it, a NUL ending the line…), ttserver does not, so its lines are rebuilt
/// from the decoded fields; a data block is sent from the client's frame without a copy.
pub fn canonical(req: &Request) -> (Bytes, Option<Bytes>) {
    let mut head = BytesMut::with_capacity(req.key().len() + 48);
    head.put_slice(req.command.name().as_bytes());
    let data = match req.command {
        Command::Get => {
            for key in req.keys() {
                head.put_u8(b' ');
                head.put_slice(key);
            }
            None
        }
        c if c.is_storage() => {
            head.put_u8(b' ');
            head.put_slice(req.key());
            let len = req.data().len();
            head.put_slice(format!(" {} {} {len}", req.flags, req.exptime).as_bytes());
            Some(req.frame.slice(req.data_start as usize..))
        }
        Command::Incr | Command::Decr => {
            head.put_u8(b' ');
            head.put_slice(req.key());
            head.put_slice(format!(" {}", req.number).as_bytes());
            None
        }
        Command::Delete => {
            head.put_u8(b' ');
            head.put_slice(req.key());
            None
        }
        _ => None,
    };
    head.put_slice(b"\r\n");
    (head.freeze(), data)
}

/// Rewrites a storage request so the value carries the client's flags: the command line gets
/// the new length, and the data block is sent from the client's frame without a copy.
pub fn encode_flags(req: &Request) -> (Bytes, Option<Bytes>) {
    let data_len = req.data().len();
    let mut head = BytesMut::with_capacity(req.key().len() + 48);
    head.put_slice(req.command.name().as_bytes());
    head.put_u8(b' ');
    head.put_slice(req.key());
    head.put_slice(format!(" 0 {} {}\r\n", req.exptime, data_len + 4).as_bytes());
    head.put_u32(req.flags);
    (
        head.freeze(),
        Some(req.frame.slice(req.data_start as usize..)),
    )
}

/// Rewrites a retrieval reply whose values carry a flags prefix into the reply the client
/// expects. A value shorter than the prefix (written without it) keeps flags 0.
pub fn decode_flags(reply: Bytes) -> Bytes {
    let items: Vec<_> = value_items(&reply).collect();
    if items.is_empty() {
        return reply;
    }
    let mut out = BytesMut::with_capacity(reply.len());
    for item in items {
        let whole = &reply[item.range.clone()];
        let header_end = memchr::memchr(b'\n', whole).map_or(0, |i| i + 1);
        let data = &whole[header_end..whole.len() - 2];
        let (flags, value) = match data {
            [a, b, c, d, rest @ ..] => (u32::from_be_bytes([*a, *b, *c, *d]), rest),
            _ => (0, data),
        };
        out.put_slice(b"VALUE ");
        out.put_slice(item.key);
        out.put_slice(format!(" {flags} {}\r\n", value.len()).as_bytes());
        out.put_slice(value);
        out.put_slice(b"\r\n");
    }
    out.put_slice(END);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::{ClientCodec, CodecLimits, Decoded};

    fn request(text: &[u8]) -> Request {
        let mut codec = ClientCodec::new(CodecLimits::default());
        match codec.decode_item(&mut BytesMut::from(text)) {
            Some(Decoded::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_supported_commands_are_admitted() {
        let ok = [
            "get a b\r\n",
            "set a 1 0 1\r\nx\r\n",
            "delete a\r\n",
            "delete a 0\r\n",
            "incr a 1\r\n",
            "flush_all\r\n",
            "prepend a 0 0 1\r\nx\r\n",
        ];
        for t in ok {
            assert_eq!(admit(&request(t.as_bytes()), false), Ok(()), "{t}");
        }
        let refused = [
            ("gets a\r\n", GETS_UNSUPPORTED),
            ("gat 1 a\r\n", UNSUPPORTED),
            ("gats 1 a\r\n", UNSUPPORTED),
            ("cas a 0 0 1 5\r\nx\r\n", UNSUPPORTED),
            ("touch a 1\r\n", UNSUPPORTED),
            ("verbosity 1\r\n", UNSUPPORTED),
            ("flush_all 10\r\n", UNSUPPORTED),
        ];
        for (t, msg) in refused {
            assert_eq!(admit(&request(t.as_bytes()), false), Err(msg), "{t}");
        }
        for t in ["prepend a 0 0 1\r\nx\r\n", "incr a 1\r\n", "decr a 1\r\n"] {
            assert_eq!(
                admit(&request(t.as_bytes()), true),
                Err(FLAGS_UNSUPPORTED),
                "{t}"
            );
        }
    }

    #[test]
    fn flags_round_trip_through_the_value() {
        let req = request(b"set k 4294967295 100 3 noreply\r\nabc\r\n");
        let (head, data) = encode_flags(&req);
        let sent = [head.as_ref(), data.unwrap().as_ref()].concat();
        assert_eq!(sent, b"set k 0 100 7\r\n\xff\xff\xff\xffabc\r\n");
        let stored = Bytes::from_static(
            b"VALUE k 0 7\r\n\xff\xff\xff\xffabc\r\nVALUE old 0 2\r\nhi\r\nEND\r\n",
        );
        assert_eq!(
            decode_flags(stored),
            Bytes::from_static(b"VALUE k 4294967295 3\r\nabc\r\nVALUE old 0 2\r\nhi\r\nEND\r\n")
        );
        assert_eq!(decode_flags(Bytes::from_static(END)), END);
    }
}
