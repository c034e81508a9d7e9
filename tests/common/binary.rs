//! memcached's binary protocol for the tests: request packets ([`Req`] and its builders),
//! a connection that reads response packets with a deadline ([`BinConn`]), CAS
//! normalisation ([`CasNorm`]), and [`Session`]s whose transcripts — every response packet,
//! CAS normalised, and how the connection ended — are compared across servers.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The longest wait for a response (or for the rest of one).
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// The first byte of a request packet.
pub const REQUEST_MAGIC: u8 = 0x80;
/// The first byte of a response packet.
pub const RESPONSE_MAGIC: u8 = 0x81;
/// Header bytes of every packet.
pub const HEADER_LEN: usize = 24;

/// Opcodes (memcached's `protocol_binary.h`).
#[allow(missing_docs)]
pub mod op {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const VERBOSITY: u8 = 0x1b;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;

    /// The opcode's name (for messages).
    pub fn name(op: u8) -> String {
        let n = match op {
            GET => "Get",
            SET => "Set",
            ADD => "Add",
            REPLACE => "Replace",
            DELETE => "Delete",
            INCREMENT => "Increment",
            DECREMENT => "Decrement",
            QUIT => "Quit",
            FLUSH => "Flush",
            GETQ => "GetQ",
            NOOP => "Noop",
            VERSION => "Version",
            GETK => "GetK",
            GETKQ => "GetKQ",
            APPEND => "Append",
            PREPEND => "Prepend",
            STAT => "Stat",
            SETQ => "SetQ",
            ADDQ => "AddQ",
            REPLACEQ => "ReplaceQ",
            DELETEQ => "DeleteQ",
            INCREMENTQ => "IncrementQ",
            DECREMENTQ => "DecrementQ",
            QUITQ => "QuitQ",
            FLUSHQ => "FlushQ",
            APPENDQ => "AppendQ",
            PREPENDQ => "PrependQ",
            VERBOSITY => "Verbosity",
            TOUCH => "Touch",
            GAT => "GAT",
            GATQ => "GATQ",
            SASL_LIST_MECHS => "SaslListMechs",
            SASL_AUTH => "SaslAuth",
            SASL_STEP => "SaslStep",
            GATK => "GATK",
            GATKQ => "GATKQ",
            _ => return format!("op{op:#04x}"),
        };
        n.to_string()
    }
}

/// Response statuses.
#[allow(missing_docs)]
pub mod status {
    pub const OK: u16 = 0x0000;
    pub const KEY_ENOENT: u16 = 0x0001;
    pub const KEY_EEXISTS: u16 = 0x0002;
    pub const E2BIG: u16 = 0x0003;
    pub const EINVAL: u16 = 0x0004;
    pub const NOT_STORED: u16 = 0x0005;
    pub const DELTA_BADVAL: u16 = 0x0006;
    pub const UNKNOWN_COMMAND: u16 = 0x0081;
}

/// A request packet. Lengths in the header follow the body unless overridden (to build
/// malformed packets); an opaque left unset is given one by the [`Session`] sending it.
#[derive(Clone, Debug)]
pub struct Req {
    magic: u8,
    op: u8,
    key: Vec<u8>,
    extras: Vec<u8>,
    value: Vec<u8>,
    cas: u64,
    opaque: Option<u32>,
    keylen: Option<u16>,
    extlen: Option<u8>,
    bodylen: Option<u32>,
}

impl Req {
    /// A packet with opcode `op` and nothing else.
    pub fn new(op: u8) -> Req {
        Req {
            magic: REQUEST_MAGIC,
            op,
            key: Vec::new(),
            extras: Vec::new(),
            value: Vec::new(),
            cas: 0,
            opaque: None,
            keylen: None,
            extlen: None,
            bodylen: None,
        }
    }

    /// The key.
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Req {
        self.key = key.as_ref().to_vec();
        self
    }

    /// The extras.
    pub fn extras(mut self, extras: impl AsRef<[u8]>) -> Req {
        self.extras = extras.as_ref().to_vec();
        self
    }

    /// The value.
    pub fn value(mut self, value: impl AsRef<[u8]>) -> Req {
        self.value = value.as_ref().to_vec();
        self
    }

    /// The CAS field.
    pub fn cas(mut self, cas: u64) -> Req {
        self.cas = cas;
        self
    }

    /// The opaque.
    pub fn opaque(mut self, opaque: u32) -> Req {
        self.opaque = Some(opaque);
        self
    }

    /// The magic byte (0x80 unless set).
    pub fn magic(mut self, magic: u8) -> Req {
        self.magic = magic;
        self
    }

    /// The header's key length, whatever the key.
    pub fn keylen(mut self, n: u16) -> Req {
        self.keylen = Some(n);
        self
    }

    /// The header's extras length, whatever the extras.
    pub fn extlen(mut self, n: u8) -> Req {
        self.extlen = Some(n);
        self
    }

    /// The header's body length, whatever the body.
    pub fn bodylen(mut self, n: u32) -> Req {
        self.bodylen = Some(n);
        self
    }

    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.op
    }

    /// The packet's bytes, with `opaque` unless the packet has its own.
    pub fn encode(&self, opaque: u32) -> Vec<u8> {
        let body = self.extras.len() + self.key.len() + self.value.len();
        let mut p = Vec::with_capacity(HEADER_LEN + body);
        p.push(self.magic);
        p.push(self.op);
        p.extend(self.keylen.unwrap_or(self.key.len() as u16).to_be_bytes());
        p.push(self.extlen.unwrap_or(self.extras.len() as u8));
        p.extend([0, 0, 0]); // data type, vbucket
        p.extend(self.bodylen.unwrap_or(body as u32).to_be_bytes());
        p.extend(self.opaque.unwrap_or(opaque).to_be_bytes());
        p.extend(self.cas.to_be_bytes());
        p.extend(&self.extras);
        p.extend(&self.key);
        p.extend(&self.value);
        p
    }

    /// The packet's bytes (opaque 0 unless set).
    pub fn bytes(&self) -> Vec<u8> {
        self.encode(0)
    }

    /// A short description (for transcripts): opcode, key, value length, whether a CAS.
    pub fn describe(&self) -> String {
        let mut s = format!("{} key={}", op::name(self.op), show(&self.key, 40));
        if !self.value.is_empty() {
            s.push_str(&format!(" value[{}]", self.value.len()));
        }
        if self.cas != 0 {
            s.push_str(" +cas");
        }
        if self.magic != REQUEST_MAGIC || self.keylen.is_some() || self.bodylen.is_some() {
            s.push_str(" (malformed header)");
        }
        s
    }
}

/// `Get`, `GetQ`, `GetK`, `GetKQ` of `key`.
pub fn get(op: u8, key: impl AsRef<[u8]>) -> Req {
    Req::new(op).key(key)
}

/// `Set`, `Add`, `Replace` (or their quiet forms) of `key` with flags and expiration.
pub fn store(
    op: u8,
    key: impl AsRef<[u8]>,
    flags: u32,
    exptime: u32,
    value: impl AsRef<[u8]>,
) -> Req {
    let mut extras = flags.to_be_bytes().to_vec();
    extras.extend(exptime.to_be_bytes());
    Req::new(op).key(key).extras(extras).value(value)
}

/// `Set` of `key` to `value`, flags 0, no expiration.
pub fn set(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Req {
    store(op::SET, key, 0, 0, value)
}

/// `Append`, `Prepend` (or quiet) of `value` to `key`.
pub fn concat(op: u8, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Req {
    Req::new(op).key(key).value(value)
}

/// `Delete` or `DeleteQ` of `key`.
pub fn delete(op: u8, key: impl AsRef<[u8]>) -> Req {
    Req::new(op).key(key)
}

/// `Increment`, `Decrement` (or quiet) of `key`: `delta`, `initial` value for a missing
/// counter and its `exptime` (all ones: do not create it).
pub fn arith(op: u8, key: impl AsRef<[u8]>, delta: u64, initial: u64, exptime: u32) -> Req {
    let mut extras = delta.to_be_bytes().to_vec();
    extras.extend(initial.to_be_bytes());
    extras.extend(exptime.to_be_bytes());
    Req::new(op).key(key).extras(extras)
}

/// Expiration all ones: an arithmetic request does not create a missing counter.
pub const NO_CREATE: u32 = 0xffff_ffff;

/// `Touch`, `GAT`, `GATQ`, `GATK`, `GATKQ` of `key` with a new expiration.
pub fn touch(op: u8, key: impl AsRef<[u8]>, exptime: u32) -> Req {
    Req::new(op).key(key).extras(exptime.to_be_bytes())
}

/// `Flush` or `FlushQ`, with the optional delay extras.
pub fn flush(op: u8, delay: Option<u32>) -> Req {
    match delay {
        Some(d) => Req::new(op).extras(d.to_be_bytes()),
        None => Req::new(op),
    }
}

/// `Noop`.
pub fn noop() -> Req {
    Req::new(op::NOOP)
}

/// A response packet, as received.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    /// Header and body.
    pub raw: Vec<u8>,
}

impl Packet {
    fn u16_at(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.raw[i], self.raw[i + 1]])
    }

    fn u32_at(&self, i: usize) -> u32 {
        u32::from_be_bytes(self.raw[i..i + 4].try_into().unwrap())
    }

    /// The magic byte.
    pub fn magic(&self) -> u8 {
        self.raw[0]
    }

    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.raw[1]
    }

    /// The key length.
    pub fn keylen(&self) -> usize {
        self.u16_at(2) as usize
    }

    /// The extras length.
    pub fn extlen(&self) -> usize {
        self.raw[4] as usize
    }

    /// The status.
    pub fn status(&self) -> u16 {
        self.u16_at(6)
    }

    /// The body length.
    pub fn bodylen(&self) -> usize {
        self.u32_at(8) as usize
    }

    /// The opaque.
    pub fn opaque(&self) -> u32 {
        self.u32_at(12)
    }

    /// The CAS.
    pub fn cas(&self) -> u64 {
        u64::from_be_bytes(self.raw[16..24].try_into().unwrap())
    }

    /// The extras.
    pub fn extras(&self) -> &[u8] {
        let e = (HEADER_LEN + self.extlen()).min(self.raw.len());
        &self.raw[HEADER_LEN..e]
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        let s = (HEADER_LEN + self.extlen()).min(self.raw.len());
        let e = (s + self.keylen()).min(self.raw.len());
        &self.raw[s..e]
    }

    /// The value.
    pub fn value(&self) -> &[u8] {
        let s = (HEADER_LEN + self.extlen() + self.keylen()).min(self.raw.len());
        &self.raw[s..]
    }

    /// The flags extras of a retrieval response, as a number.
    pub fn flags(&self) -> Option<u32> {
        (self.extlen() == 4).then(|| u32::from_be_bytes(self.extras().try_into().unwrap()))
    }

    /// An arithmetic response's 8-byte value, as a number.
    pub fn counter(&self) -> Option<u64> {
        (self.value().len() == 8).then(|| u64::from_be_bytes(self.value().try_into().unwrap()))
    }

    /// Reads the packet at the head of `buf`: Some(packet, bytes taken) once whole; None
    /// while it is not. (The magic is not checked here.)
    pub fn parse(buf: &[u8]) -> Option<(Packet, usize)> {
        if buf.len() < HEADER_LEN {
            return None;
        }
        let body = u32::from_be_bytes(buf[8..12].try_into().unwrap()) as usize;
        let n = HEADER_LEN + body;
        (buf.len() >= n).then(|| {
            (
                Packet {
                    raw: buf[..n].to_vec(),
                },
                n,
            )
        })
    }
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", describe_packet(&self.raw))
    }
}

/// A packet's bytes decoded for a message: header fields, then extras, key and value.
pub fn describe_packet(raw: &[u8]) -> String {
    if raw.len() < HEADER_LEN {
        return format!("short packet {}", show(raw, 64));
    }
    let p = Packet { raw: raw.to_vec() };
    let mut s = format!(
        "[magic {:#04x} {} status {:#06x} keylen {} extlen {} dtype {} bodylen {} opaque {:#010x} cas {}",
        p.magic(),
        op::name(p.opcode()),
        p.status(),
        p.keylen(),
        p.extlen(),
        raw[5],
        p.bodylen(),
        p.opaque(),
        p.cas()
    );
    if raw[6..8] != [0, 0] && raw[6] != 0 {
        s.push_str(" (status high byte set)");
    }
    if p.extlen() > 0 {
        s.push_str(&format!(" extras {}", hex(p.extras())));
    }
    if p.keylen() > 0 {
        s.push_str(&format!(" key {}", show(p.key(), 60)));
    }
    if !p.value().is_empty() {
        s.push_str(&format!(" value {}", show(p.value(), 60)));
    }
    s.push(']');
    s
}

/// Bytes as hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes as an escaped string, cut after `max` bytes (the length noted).
pub fn show(b: &[u8], max: usize) -> String {
    let cut = &b[..b.len().min(max)];
    let mut s = format!("{:?}", String::from_utf8_lossy(cut));
    if b.iter().any(|&x| x >= 0x80) && std::str::from_utf8(cut).is_err() {
        s = format!("0x{}", hex(cut));
    }
    if b.len() > max {
        s.push_str(&format!("…({} bytes)", b.len()));
    }
    s
}

/// How a read ended without a whole packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The peer closed (or reset) the connection; any partial bytes left over.
    Closed(Vec<u8>),
    /// Nothing more arrived in time; any partial bytes left over.
    Timeout(Vec<u8>),
    /// Bytes that are not a response packet (wrong magic).
    Garbage(Vec<u8>),
}

/// A binary-protocol connection whose every read has a deadline.
pub struct BinConn {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl BinConn {
    /// Connects to 127.0.0.1:`port`.
    pub fn open(port: u16) -> BinConn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        BinConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes bytes; false if the connection refused them (closed).
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Reads more bytes before `deadline`: Ok(true) when some arrived, Ok(false) on a
    /// timeout, Err(()) when the connection ended.
    fn fill(&mut self, deadline: Instant) -> Result<bool, ()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(_) => Err(()),
        }
    }

    /// The next response packet, waiting at most `within`.
    pub fn read_packet(&mut self, within: Duration) -> Result<Packet, End> {
        let deadline = Instant::now() + within;
        loop {
            if !self.buf.is_empty() && self.buf[0] != RESPONSE_MAGIC {
                return Err(End::Garbage(std::mem::take(&mut self.buf)));
            }
            if let Some((p, n)) = Packet::parse(&self.buf) {
                self.buf.drain(..n);
                return Ok(p);
            }
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) => return Err(End::Timeout(std::mem::take(&mut self.buf))),
                Err(()) => return Err(End::Closed(std::mem::take(&mut self.buf))),
            }
        }
    }

    /// Response packets until one with opcode `opcode` and opaque `opaque` (included).
    pub fn read_through(
        &mut self,
        opcode: u8,
        opaque: u32,
    ) -> Result<Vec<Packet>, (Vec<Packet>, End)> {
        let mut out = Vec::new();
        loop {
            match self.read_packet(READ_TIMEOUT) {
                Ok(p) => {
                    let last = p.opcode() == opcode && p.opaque() == opaque;
                    out.push(p);
                    if last {
                        return Ok(out);
                    }
                }
                Err(end) => return Err((out, end)),
            }
        }
    }

    /// Sends `req` and reads one response packet (panics without one).
    pub fn call(&mut self, req: &Req) -> Packet {
        assert!(self.send(&req.bytes()), "send {}", req.describe());
        self.read_packet(READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("no response to {}: {e:?}", req.describe()))
    }

    /// Asserts that nothing arrives and the peer closes the connection (within the read
    /// timeout).
    pub fn expect_closed(&mut self) {
        match self.read_packet(READ_TIMEOUT) {
            Err(End::Closed(rest)) if rest.is_empty() => {}
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }
}

/// Maps each distinct nonzero CAS to its order of first appearance (1, 2, …); 0 stays 0.
#[derive(Default)]
pub struct CasNorm {
    seen: HashMap<u64, u64>,
}

impl CasNorm {
    /// The normalised value of `cas`.
    pub fn norm(&mut self, cas: u64) -> u64 {
        if cas == 0 {
            return 0;
        }
        let next = self.seen.len() as u64 + 1;
        *self.seen.entry(cas).or_insert(next)
    }

    /// `packet`'s bytes with its CAS normalised.
    pub fn packet(&mut self, packet: &Packet) -> Vec<u8> {
        let mut raw = packet.raw.clone();
        if raw.len() >= HEADER_LEN {
            let n = self.norm(packet.cas());
            raw[16..24].copy_from_slice(&n.to_be_bytes());
        }
        raw
    }
}

/// One line of a session's transcript.
#[derive(Clone, PartialEq, Eq)]
pub enum Entry {
    /// What was sent (a description, the same on every server).
    Sent(String),
    /// A response packet, its CAS normalised.
    Packet(Vec<u8>),
    /// The connection closed (with any partial bytes that came before).
    Closed(Vec<u8>),
    /// A response expected (at least the sentinel's) did not come in time.
    Timeout(Vec<u8>),
    /// Bytes that are not a response packet.
    Garbage(Vec<u8>),
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Sent(s) => write!(f, "  >> {s}"),
            Entry::Packet(p) => write!(f, "<< {}", describe_packet(p)),
            Entry::Closed(rest) if rest.is_empty() => write!(f, "<< <closed>"),
            Entry::Closed(rest) => write!(f, "<< {} then <closed>", show(rest, 80)),
            Entry::Timeout(rest) => write!(f, "<< <timeout> after {}", show(rest, 80)),
            Entry::Garbage(b) => write!(f, "<< garbage {}", show(b, 80)),
        }
    }
}

/// The opaque of the `Noop` that ends each exchange of a [`Session`].
pub const SENTINEL: u32 = 0xfeed_f00d;

/// A conversation with one server, recorded: requests are sent in exchanges, each ended
/// by a sentinel `Noop` so that quiet requests' silence is seen; responses go into the
/// transcript with their CAS normalised (and, unless kept, `Version`'s value masked).
/// After the connection ends or a response times out, the session sends nothing more.
pub struct Session {
    conn: BinConn,
    norm: CasNorm,
    /// What was sent and received.
    pub transcript: Vec<Entry>,
    dead: bool,
    next_opaque: u32,
    /// Replace a successful `Version` response's value with `<version>`.
    pub mask_version: bool,
}

impl Session {
    /// Connects to 127.0.0.1:`port`.
    pub fn open(port: u16) -> Session {
        Session {
            conn: BinConn::open(port),
            norm: CasNorm::default(),
            transcript: Vec::new(),
            dead: false,
            next_opaque: 0x5a00_0000,
            mask_version: true,
        }
    }

    /// Whether the connection ended (or stalled).
    pub fn ended(&self) -> bool {
        self.dead
    }

    fn encode_all(&mut self, reqs: &[Req]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for r in reqs {
            self.next_opaque += 1;
            bytes.extend(r.encode(self.next_opaque));
            self.transcript.push(Entry::Sent(r.describe()));
        }
        bytes
    }

    fn record(&mut self, p: &Packet) {
        let mut raw = self.norm.packet(p);
        if self.mask_version && p.opcode() == op::VERSION && p.status() == 0 {
            raw.truncate(HEADER_LEN);
            raw.extend_from_slice(b"<version>");
            raw[8..12].copy_from_slice(&9u32.to_be_bytes());
        }
        self.transcript.push(Entry::Packet(raw));
    }

    fn record_end(&mut self, end: End) {
        self.dead = true;
        self.transcript.push(match end {
            End::Closed(rest) => Entry::Closed(rest),
            End::Timeout(rest) => Entry::Timeout(rest),
            End::Garbage(b) => Entry::Garbage(b),
        });
    }

    /// Sends `reqs` (in one write) and a sentinel `Noop`, and returns the responses that
    /// came before the sentinel's (all recorded).
    pub fn call(&mut self, reqs: &[Req]) -> Vec<Packet> {
        let bytes = self.encode_all(reqs);
        self.exchange(bytes)
    }

    /// Like [`Session::call`], the bytes written `chunk` at a time with a pause after each
    /// (packets split across reads, the first byte of the connection on its own).
    pub fn call_split(&mut self, reqs: &[Req], chunk: usize) -> Vec<Packet> {
        let bytes = self.encode_all(reqs);
        if self.dead {
            return Vec::new();
        }
        for part in bytes.chunks(chunk) {
            if !self.conn.send(part) {
                break;
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        self.exchange(Vec::new())
    }

    /// Like [`Session::call`] with bytes as they are (described as `what`).
    pub fn call_bytes(&mut self, what: &str, bytes: &[u8]) -> Vec<Packet> {
        self.transcript.push(Entry::Sent(what.to_string()));
        self.exchange(bytes.to_vec())
    }

    fn exchange(&mut self, mut bytes: Vec<u8>) -> Vec<Packet> {
        if self.dead {
            return Vec::new();
        }
        bytes.extend(noop().encode(SENTINEL));
        let _ = self.conn.send(&bytes);
        let mut out = Vec::new();
        loop {
            match self.conn.read_packet(READ_TIMEOUT) {
                Ok(p) if p.opcode() == op::NOOP && p.opaque() == SENTINEL => return out,
                Ok(p) => {
                    self.record(&p);
                    out.push(p);
                }
                Err(end) => {
                    self.record_end(end);
                    return out;
                }
            }
        }
    }

    /// Sends `reqs` (no sentinel) and records every response until the connection closes:
    /// for the requests after which the server hangs up.
    pub fn closing(&mut self, reqs: &[Req]) -> Vec<Packet> {
        let bytes = self.encode_all(reqs);
        self.until_close(bytes)
    }

    /// Like [`Session::closing`] with bytes as they are (described as `what`).
    pub fn closing_bytes(&mut self, what: &str, bytes: &[u8]) -> Vec<Packet> {
        self.transcript.push(Entry::Sent(what.to_string()));
        self.until_close(bytes.to_vec())
    }

    fn until_close(&mut self, bytes: Vec<u8>) -> Vec<Packet> {
        if self.dead {
            return Vec::new();
        }
        let _ = self.conn.send(&bytes);
        let mut out = Vec::new();
        loop {
            match self.conn.read_packet(READ_TIMEOUT) {
                Ok(p) => {
                    self.record(&p);
                    out.push(p);
                }
                Err(end) => {
                    self.record_end(end);
                    return out;
                }
            }
        }
    }

    /// Sends `reqs` and records exactly `n` responses, without a sentinel (for a request
    /// whose server would read a sentinel as part of it).
    pub fn call_n(&mut self, reqs: &[Req], n: usize) -> Vec<Packet> {
        let bytes = self.encode_all(reqs);
        if self.dead {
            return Vec::new();
        }
        let _ = self.conn.send(&bytes);
        let mut out = Vec::new();
        for _ in 0..n {
            match self.conn.read_packet(READ_TIMEOUT) {
                Ok(p) => {
                    self.record(&p);
                    out.push(p);
                }
                Err(end) => {
                    self.record_end(end);
                    break;
                }
            }
        }
        out
    }
}

/// The CAS of the first response in `packets` (0 when there is none: the transcript
/// shows why).
pub fn cas_of(packets: &[Packet]) -> u64 {
    packets.first().map_or(0, Packet::cas)
}

/// Where two transcripts first differ (None: equal).
pub fn first_difference(a: &[Entry], b: &[Entry]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// Two transcripts side by side around their first difference, for a failure message.
pub fn explain_difference(name_a: &str, a: &[Entry], name_b: &str, b: &[Entry]) -> String {
    let Some(at) = first_difference(a, b) else {
        return "equal".into();
    };
    let from = at.saturating_sub(6);
    let mut s = format!("first difference at entry {at}\n");
    let mut raw_a = String::new();
    let mut raw_b = String::new();
    for (name, t, raw) in [(name_a, a, &mut raw_a), (name_b, b, &mut raw_b)] {
        s.push_str(&format!("  --- {name} (entries {from}..):\n"));
        for (i, e) in t.iter().enumerate().skip(from).take(at - from + 4) {
            let mark = if i == at { "!!" } else { "  " };
            s.push_str(&format!("  {mark} {e:?}\n"));
            if i == at {
                if let Entry::Packet(p) = e {
                    *raw = hex(&p[..p.len().min(96)]);
                }
            }
        }
    }
    if !raw_a.is_empty() || !raw_b.is_empty() {
        s.push_str(&format!(
            "  {name_a} bytes: {raw_a}\n  {name_b} bytes: {raw_b}\n"
        ));
    }
    s
}
