//! What memroute sends a backend ([`Message`]), and how each kind of backend gets it: a
//! memcached the client's own bytes where they can go unchanged (the zero-copy path), or
//! lines memroute writes; a Tokyo Tyrant pool lines rebuilt in the plainest form; the
//! embedded cache typed calls, with nothing to parse.

use bytes::{BufMut, Bytes, BytesMut};

use crate::embedded::{Store, Write};
use crate::protocol::codec::{ClientCodec, CodecLimits, Decoded};
use crate::protocol::reply::ReplyKind;
use crate::protocol::request::{Command, KeyToken, Request, MAX_KEY_LEN};
use crate::tyrant;

/// A request memroute sends a backend.
#[derive(Clone, Debug)]
pub enum Message {
    /// A client's request, as decoded.
    Request(Request),
    /// A retrieval of some of a client's keys (a fragment of a multi-get split over
    /// backends, a batch of a streamed one, warm-up's questions): `prefix` is the client's
    /// command text before its keys (`get `, `gat 10 `).
    Retrieve {
        /// get, gets, gat or gats.
        command: Command,
        /// gat/gats: the expiration time.
        exptime: i64,
        /// The command text before the keys, as the client wrote it.
        prefix: Bytes,
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// Delete a key: the old value of a refused `set`, or a moved key's copy on its
    /// previous owner during warm-up. A base64 key goes as `md <key> b` (its bytes may not
    /// fit a text line).
    Delete(KeyToken),
    /// Read a key's value, client flags and remaining TTL with `mg <key> v f t`: warm-up's
    /// copy of a moved key read with the meta protocol.
    MetaFetch(KeyToken),
    /// Store a value with `ms … ME` (add mode: never over a newer value): the copy's write.
    MetaAdd {
        /// The key.
        key: KeyToken,
        /// Client flags.
        flags: u32,
        /// Seconds it lives.
        ttl: u32,
        /// The value.
        data: Bytes,
    },
    /// Store a `VALUE` item (as a retrieval returned it) with `add`, for `ttl` seconds:
    /// warm-up's copy of a moved key to its new owner.
    Add {
        /// The whole item: `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`.
        item: Bytes,
        /// Seconds it lives.
        ttl: u32,
    },
}

/// What a pool's servers speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// memcached's text protocol, read exactly as memroute reads it.
    Memcached,
    /// Tokyo Tyrant's subset; with `preserve_flags` values carry the client's flags.
    Tyrant {
        /// Flags stored in a 4-byte prefix of values.
        preserve_flags: bool,
    },
}

/// A message as bytes for a remote backend.
#[derive(Debug)]
pub struct Encoded {
    /// One or two slices to write.
    pub bytes: (Bytes, Option<Bytes>),
    /// The shape of the reply.
    pub kind: ReplyKind,
    /// Retrievals: how many keys were asked for (the most `VALUE` items the reply may hold).
    pub keys: u32,
}

impl Message {
    /// The message as `dialect` reads it.
    pub fn encode(self, dialect: Dialect) -> Encoded {
        let tyrant = matches!(dialect, Dialect::Tyrant { .. });
        let preserve_flags = matches!(
            dialect,
            Dialect::Tyrant {
                preserve_flags: true
            }
        );
        let retrieval = match preserve_flags {
            true => ReplyKind::RetrievalFlagsInValue,
            false => ReplyKind::Retrieval,
        };
        let line = |bytes: Bytes| Encoded {
            bytes: (bytes, None),
            kind: ReplyKind::Line,
            keys: 0,
        };
        match self {
            Message::Request(req) => {
                let kind = match req.command {
                    c if c.is_retrieval() => retrieval,
                    Command::Stats => ReplyKind::Stats,
                    _ if req.quiet_upstream() => ReplyKind::MetaThenNoop,
                    Command::MetaGet => ReplyKind::MetaRetrieval,
                    c if c.is_meta() => ReplyKind::Meta,
                    _ => ReplyKind::Line,
                };
                let bytes = match req.command {
                    // Appended data lands after the stored flags prefix and needs none.
                    Command::Set | Command::Add | Command::Replace if preserve_flags => {
                        tyrant::encode_flags(&req)
                    }
                    _ if tyrant => tyrant::canonical(&req),
                    // The zero-copy path: the client's bytes, minus a `noreply`.
                    _ => req.upstream_bytes(),
                };
                Encoded {
                    bytes,
                    kind,
                    keys: req.key_count() as u32,
                }
            }
            Message::Retrieve { prefix, keys, .. } => {
                let len = prefix.len() + keys.iter().map(|k| k.len() + 1).sum::<usize>() + 2;
                let mut out = BytesMut::with_capacity(len);
                // ttserver gets only `get`, whatever spacing the client used.
                out.put_slice(if tyrant { b"get " } else { &prefix[..] });
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.put_u8(b' ');
                    }
                    out.put_slice(k);
                }
                out.put_slice(b"\r\n");
                Encoded {
                    bytes: (out.freeze(), None),
                    kind: retrieval,
                    keys: keys.len() as u32,
                }
            }
            Message::Delete(key) if key.base64 => Encoded {
                bytes: (meta_line(b"md ", &key, b""), None),
                kind: ReplyKind::Meta,
                keys: 0,
            },
            Message::Delete(key) => {
                line(Bytes::from([&b"delete "[..], &key.token, b"\r\n"].concat()))
            }
            Message::MetaFetch(key) => Encoded {
                bytes: (meta_line(b"mg ", &key, b" v f t"), None),
                kind: ReplyKind::MetaRetrieval,
                keys: 1,
            },
            Message::MetaAdd {
                key,
                flags,
                ttl,
                data,
            } => {
                let args = format!(" F{flags} T{ttl} ME");
                let mut out = BytesMut::with_capacity(key.token.len() + data.len() + 48);
                out.put_slice(b"ms ");
                out.put_slice(&key.token);
                out.put_slice(format!(" {}", data.len()).as_bytes());
                if key.base64 {
                    out.put_slice(b" b");
                }
                out.put_slice(args.as_bytes());
                out.put_slice(b"\r\n");
                out.put_slice(&data);
                out.put_slice(b"\r\n");
                Encoded {
                    bytes: (out.freeze(), None),
                    kind: ReplyKind::Meta,
                    keys: 0,
                }
            }
            Message::Add { item, ttl } => {
                let Some(v) = ValueItem::parse(&item) else {
                    return line(Bytes::new());
                };
                let mut out = BytesMut::with_capacity(item.len() + 32);
                out.put_slice(b"add ");
                out.put_slice(v.key);
                out.put_slice(format!(" {} {ttl} {}\r\n", v.flags, v.data.len()).as_bytes());
                out.put_slice(v.data);
                out.put_slice(b"\r\n");
                line(out.freeze())
            }
        }
    }

    /// Runs the message on the embedded cache, its reply appended to `out`.
    pub fn execute(&self, store: &Store, out: &mut BytesMut) {
        match self {
            Message::Request(req) => store.execute(req, out),
            Message::Retrieve {
                command,
                exptime,
                keys,
                ..
            } => store.retrieve_keys(*command, *exptime, keys.iter().map(|k| &k[..]), out),
            Message::Delete(key) => store.delete_key(key.bytes(&mut [0; MAX_KEY_LEN]), out),
            // Warm-up's copies only: run as the client requests they are.
            Message::MetaFetch(_) | Message::MetaAdd { .. } => {
                let e = self.clone().encode(Dialect::Memcached);
                let mut wire = BytesMut::from(&e.bytes.0[..]);
                let mut codec = ClientCodec::new(CodecLimits::default());
                if let Some(Decoded::Request(req)) = codec.decode_item(&mut wire) {
                    store.execute(&req, out);
                }
            }
            Message::Add { item, ttl } => {
                if let Some(v) = ValueItem::parse(item) {
                    let write = Write {
                        command: Command::Add,
                        key: v.key,
                        flags: v.flags,
                        exptime: i64::from(*ttl),
                        data: v.data,
                        cas: 0,
                    };
                    store.write(&write, out);
                }
            }
        }
    }
}

/// `<command><key>[ b]<args>\r\n`: a meta request line memroute writes.
fn meta_line(command: &[u8], key: &KeyToken, args: &[u8]) -> Bytes {
    let b: &[u8] = if key.base64 { b" b" } else { b"" };
    Bytes::from([command, &key.token, b, args, b"\r\n"].concat())
}

/// The parts of one `VALUE` item.
struct ValueItem<'a> {
    key: &'a [u8],
    flags: u32,
    data: &'a [u8],
}

impl<'a> ValueItem<'a> {
    fn parse(item: &'a [u8]) -> Option<ValueItem<'a>> {
        let nl = memchr::memchr(b'\n', item)?;
        let header = item[..nl].strip_suffix(b"\r").unwrap_or(&item[..nl]);
        let mut words = header
            .split(|b| *b == b' ')
            .filter(|w| !w.is_empty())
            .skip(1);
        let key = words.next()?;
        let flags = std::str::from_utf8(words.next()?).ok()?.parse().ok()?;
        let data = item.get(nl + 1..item.len().checked_sub(2)?)?;
        Some(ValueItem { key, flags, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::{ClientCodec, CodecLimits, Decoded};

    fn request(text: &[u8]) -> Request {
        match ClientCodec::new(CodecLimits::default()).decode_item(&mut BytesMut::from(text)) {
            Some(Decoded::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn wire(e: &Encoded) -> Vec<u8> {
        [&e.bytes.0[..], e.bytes.1.as_deref().unwrap_or_default()].concat()
    }

    #[test]
    fn a_client_request_goes_to_memcached_as_sent_and_to_ttserver_rebuilt() {
        let req = request(b"set k +5 0 3 noreply\r\nabc\r\n");
        let m = Message::Request(req.clone()).encode(Dialect::Memcached);
        assert_eq!(wire(&m), b"set k +5 0 3\r\nabc\r\n");
        assert_eq!(m.bytes.0.as_ptr(), req.frame.as_ptr(), "no copy");
        let t = Message::Request(req).encode(Dialect::Tyrant {
            preserve_flags: false,
        });
        assert_eq!(wire(&t), b"set k 5 0 3\r\nabc\r\n");
        let g = Message::Request(request(b"get a b\r\n")).encode(Dialect::Memcached);
        assert_eq!((g.kind, g.keys), (ReplyKind::Retrieval, 2));
    }

    #[test]
    fn memroutes_own_requests_are_written_for_each_dialect() {
        let keys = vec![Bytes::from_static(b"a"), Bytes::from_static(b"c")];
        let retrieve = Message::Retrieve {
            command: Command::Gat,
            exptime: 10,
            prefix: Bytes::from_static(b"gat  10 "),
            keys,
        };
        let e = retrieve.clone().encode(Dialect::Memcached);
        assert_eq!((wire(&e), e.keys), (b"gat  10 a c\r\n".to_vec(), 2));
        let add = Message::Add {
            item: Bytes::from_static(b"VALUE k 7 3 99\r\nabc\r\n"),
            ttl: 300,
        };
        assert_eq!(
            wire(&add.encode(Dialect::Memcached)),
            b"add k 7 300 3\r\nabc\r\n"
        );
        let delete = Message::Delete(KeyToken {
            token: Bytes::from_static(b"k"),
            base64: false,
        });
        assert_eq!(wire(&delete.encode(Dialect::Memcached)), b"delete k\r\n");
        let delete = Message::Delete(KeyToken {
            token: Bytes::from_static(b"Zm9v"),
            base64: true,
        });
        assert_eq!(wire(&delete.encode(Dialect::Memcached)), b"md Zm9v b\r\n");
    }
}
