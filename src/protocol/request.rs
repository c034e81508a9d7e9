//! A decoded client request: the command, its parsed fields, and the original bytes it arrived in.

use bytes::Bytes;

use super::meta::{self, Quiet};

/// Longest key memcached accepts.
pub const MAX_KEY_LEN: usize = 250;

/// Every command of the text protocol memroute understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `get`
    Get,
    /// `gets`
    Gets,
    /// `gat`
    Gat,
    /// `gats`
    Gats,
    /// `set`
    Set,
    /// `add`
    Add,
    /// `replace`
    Replace,
    /// `append`
    Append,
    /// `prepend`
    Prepend,
    /// `cas`
    Cas,
    /// `delete`
    Delete,
    /// `incr`
    Incr,
    /// `decr`
    Decr,
    /// `touch`
    Touch,
    /// `flush_all`
    FlushAll,
    /// `version`
    Version,
    /// `stats`
    Stats,
    /// `verbosity`
    Verbosity,
    /// `quit`
    Quit,
    /// `cache_memlimit` (sent to every backend).
    CacheMemlimit,
    /// `mg`: meta get.
    MetaGet,
    /// `ms`: meta set (its mode flag picks set, add, replace, append or prepend).
    MetaSet,
    /// `md`: meta delete.
    MetaDelete,
    /// `ma`: meta arithmetic.
    MetaArithmetic,
    /// `me`: meta debug (an item's metadata).
    MetaDebug,
    /// `mn`: meta no-op (answered by memroute once every earlier request is answered).
    MetaNoop,
}

impl Command {
    /// The command's name as written on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Command::Get => "get",
            Command::Gets => "gets",
            Command::Gat => "gat",
            Command::Gats => "gats",
            Command::Set => "set",
            Command::Add => "add",
            Command::Replace => "replace",
            Command::Append => "append",
            Command::Prepend => "prepend",
            Command::Cas => "cas",
            Command::Delete => "delete",
            Command::Incr => "incr",
            Command::Decr => "decr",
            Command::Touch => "touch",
            Command::FlushAll => "flush_all",
            Command::Version => "version",
            Command::Stats => "stats",
            Command::Verbosity => "verbosity",
            Command::Quit => "quit",
            Command::CacheMemlimit => "cache_memlimit",
            Command::MetaGet => "mg",
            Command::MetaSet => "ms",
            Command::MetaDelete => "md",
            Command::MetaArithmetic => "ma",
            Command::MetaDebug => "me",
            Command::MetaNoop => "mn",
        }
    }

    /// Retrievals take one or more keys and answer `VALUE …` blocks ended by `END`.
    pub fn is_retrieval(self) -> bool {
        matches!(
            self,
            Command::Get | Command::Gets | Command::Gat | Command::Gats
        )
    }

    /// Storage commands carry a data block.
    pub fn is_storage(self) -> bool {
        matches!(
            self,
            Command::Set
                | Command::Add
                | Command::Replace
                | Command::Append
                | Command::Prepend
                | Command::Cas
        )
    }

    /// The meta protocol's commands.
    pub fn is_meta(self) -> bool {
        matches!(
            self,
            Command::MetaGet
                | Command::MetaSet
                | Command::MetaDelete
                | Command::MetaArithmetic
                | Command::MetaDebug
                | Command::MetaNoop
        )
    }

    /// Commands that change an item (so that during warm-up its previous owner's copy goes).
    pub fn is_write(self) -> bool {
        self.is_storage()
            || matches!(
                self,
                Command::Delete
                    | Command::Incr
                    | Command::Decr
                    | Command::Touch
                    | Command::MetaSet
                    | Command::MetaDelete
                    | Command::MetaArithmetic
            )
    }

    /// Text commands routed by a single key.
    pub fn is_single_key(self) -> bool {
        self.is_storage()
            || matches!(
                self,
                Command::Delete | Command::Incr | Command::Decr | Command::Touch
            )
    }
}

/// A key as a client wrote it: the token, base64 when a meta request said `b`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyToken {
    /// The key's token.
    pub token: Bytes,
    /// Whether `token` is the base64 form of the key.
    pub base64: bool,
}

impl KeyToken {
    /// The key's bytes (decoded into `buf` when base64). A `KeyToken` from a decoded request
    /// always decodes.
    pub fn bytes<'a>(&'a self, buf: &'a mut [u8; MAX_KEY_LEN]) -> &'a [u8] {
        meta::lookup_key(&self.token, self.base64, buf).unwrap_or_default()
    }
}

/// What a meta request's flags say that routing and delivery need (the rest is read by
/// whoever executes it).
#[derive(Clone, Copy, Debug, Default)]
pub struct MetaBits {
    /// Where the `q` flag's token is (dropped from what goes upstream).
    pub quiet_at: Option<(u32, u32)>,
    /// `b`: the key token is base64.
    pub base64: bool,
    /// `N`: autovivify.
    pub vivify: bool,
    /// `v`: the value is returned.
    pub value: bool,
    /// Where the flag tokens begin.
    pub flags_start: u32,
}

/// A fully validated request. Keys and data are ranges of `frame`, the bytes the request
/// arrived in, so forwarding it never copies.
#[derive(Clone, Debug)]
pub struct Request {
    /// Which command this is.
    pub command: Command,
    /// The whole request as received: command line (with its terminator) and data block.
    pub frame: Bytes,
    /// Single-key commands: the key. Retrievals: the span holding all keys.
    pub(crate) keys_start: u32,
    pub(crate) keys_end: u32,
    /// How many keys (retrievals: in the span; single-key commands: 1).
    pub(crate) nkeys: u32,
    /// Where the command line's text ends (before `\r\n` or `\n`).
    pub(crate) line_end: u32,
    /// Offset of the space before a trailing `noreply`, when present.
    pub(crate) noreply_at: Option<u32>,
    /// `delete noreply [noreply]`: the key is `noreply`, so the forwarded line gets the
    /// optional `0` argument; otherwise the backend would read the key as the flag too.
    pub(crate) zero_arg: bool,
    /// Storage: item flags. Client flags are 32 bits in memcached.
    pub flags: u32,
    /// Storage, touch, gat: expiration time as memcached reads it (a 32-bit number).
    /// flush_all: the delay.
    pub exptime: i64,
    /// cas: the unique. incr/decr: the delta. cache_memlimit: megabytes.
    pub number: u64,
    /// Storage: the data block's range in `frame` (without its `\r\n`).
    pub(crate) data_start: u32,
    /// Meta commands: their routing and delivery flags.
    pub(crate) meta: MetaBits,
}

impl Request {
    /// The request's single key (for retrievals, the whole span of keys).
    pub fn key(&self) -> &[u8] {
        &self.frame[self.keys_start as usize..self.keys_end as usize]
    }

    /// Each key of a retrieval (or the one key of a single-key command), in the client's order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + Clone {
        self.key().split(|b| *b == b' ').filter(|k| !k.is_empty())
    }

    /// Keys as `Bytes` slices of the frame (no copy).
    pub fn key_slices(&self) -> impl Iterator<Item = Bytes> + '_ {
        let base = self.frame.as_ptr() as usize;
        self.keys().map(move |k| {
            let start = k.as_ptr() as usize - base;
            self.frame.slice(start..start + k.len())
        })
    }

    /// How many keys the request names.
    pub fn key_count(&self) -> usize {
        self.nkeys as usize
    }

    /// The key as the client wrote it (meta: maybe base64).
    pub fn key_token(&self) -> KeyToken {
        KeyToken {
            token: self
                .frame
                .slice(self.keys_start as usize..self.keys_end as usize),
            base64: self.meta.base64,
        }
    }

    /// The bytes a single-key request is routed by: the key, decoded when base64.
    pub fn route_key<'a>(&'a self, buf: &'a mut [u8; MAX_KEY_LEN]) -> &'a [u8] {
        meta::lookup_key(self.key(), self.meta.base64, buf).unwrap_or_default()
    }

    /// Meta commands: the flag tokens (after the key, and for `ms` its length).
    pub fn meta_flags(&self) -> impl Iterator<Item = &[u8]> {
        let flags = &self.frame[self.meta.flags_start as usize..self.line_end as usize];
        // memcached reads the line as a C string: a NUL ends it.
        let flags = &flags[..memchr::memchr(0, flags).unwrap_or(flags.len())];
        flags.split(|b| *b == b' ').filter(|t| !t.is_empty())
    }

    /// Meta commands: the routing and delivery flags.
    pub fn meta(&self) -> MetaBits {
        self.meta
    }

    /// Which of this request's answers the client does not want (meta `q`).
    pub fn quiet(&self) -> Quiet {
        if self.meta.quiet_at.is_none() {
            return Quiet::No;
        }
        match self.command {
            Command::MetaGet => Quiet::Miss,
            Command::MetaSet | Command::MetaDelete => Quiet::Stored,
            // With N, memcached answers an item it just created even when quiet: only the
            // backend knows whether it did (see `upstream_bytes`).
            Command::MetaArithmetic if !self.meta.vivify => Quiet::Counted,
            _ => Quiet::No,
        }
    }

    /// Whether the request goes upstream with its `q` and an `mn` after it, so that the
    /// backend decides what a quiet answer leaves out: `ma … q N`, whose creating answer
    /// memcached keeps and nothing else in the reply tells apart.
    pub fn quiet_upstream(&self) -> bool {
        self.command == Command::MetaArithmetic && self.meta.vivify && self.meta.quiet_at.is_some()
    }

    /// Whether the client asked for no reply.
    pub fn noreply(&self) -> bool {
        self.noreply_at.is_some()
    }

    /// Storage: the value bytes.
    pub fn data(&self) -> &[u8] {
        let end = self.frame.len() - 2;
        &self.frame[self.data_start as usize..end]
    }

    /// The text of the command line, without its terminator.
    pub fn line(&self) -> &[u8] {
        &self.frame[..self.line_end as usize]
    }

    /// The bytes to send upstream: the frame, minus a trailing `noreply` so that the
    /// backend always answers and the shared connection stays aligned. Two slices at most.
    /// Meta requests go without their `q` (memroute decides quietness), except the one
    /// [`Request::quiet_upstream`] names, which goes as is, followed by `mn`.
    pub fn upstream_bytes(&self) -> (Bytes, Option<Bytes>) {
        if self.quiet_upstream() {
            return (
                self.frame.clone(),
                Some(Bytes::from_static(meta::MN_REQUEST)),
            );
        }
        if let Some((a, b)) = self.meta.quiet_at {
            return (
                self.frame.slice(..a as usize),
                Some(self.frame.slice(b as usize..)),
            );
        }
        match self.noreply_at {
            None => (self.frame.clone(), None),
            Some(at) if self.zero_arg => (
                self.frame.slice(..at as usize),
                Some(Bytes::from_static(b" 0\r\n")),
            ),
            Some(at) => (
                self.frame.slice(..at as usize),
                Some(self.frame.slice(self.line_end as usize..)),
            ),
        }
    }
}
