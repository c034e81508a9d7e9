//! The client side of the memcached text protocol: connecting, the read buffer, and
//! framing and parsing replies (plus the number formatting requests are built with).

use std::fmt;
use std::io;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::{Duration, Sleep};

/// How long a TCP connect (and, separately, a TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects over plain TCP (`tls::open` adds TLS when asked for).
pub async fn connect(target: &str) -> io::Result<TcpStream> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    // Requests are written whole; Nagle would only add delay.
    s.set_nodelay(true)?;
    Ok(s)
}

/// Read buffer that replies are parsed from in place.
pub struct RBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RBuf {
    pub fn new() -> Self {
        RBuf {
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Reads until `frame` finds a complete reply at the front of the buffer (it is given
    /// the buffered data) and returns that reply's length; the reply stays in the buffer.
    pub async fn next_frame<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        deadline: &mut Pin<Box<Sleep>>,
        frame: impl Fn(&[u8]) -> Frame,
    ) -> Result<usize, ReadError> {
        loop {
            match frame(self.data()) {
                Frame::Incomplete => self.fill(r, deadline).await.map_err(ReadError::Io)?,
                Frame::Complete(n) => return Ok(n),
                Frame::Desync(msg) => return Err(ReadError::Desync(msg)),
            }
        }
    }

    async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        deadline: &mut Pin<Box<Sleep>>,
    ) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= 256 << 20 {
                return Err(io::Error::other("reply larger than 256 MiB"));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = tokio::select! {
            r = r.read(&mut self.buf[self.end..]) => r?,
            _ = deadline.as_mut() => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply before deadline"))
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed connection",
            ));
        }
        self.end += n;
        Ok(())
    }
}

/// Returns the line (without CRLF) and the length consumed, if complete.
pub fn line(b: &[u8]) -> Option<(&[u8], usize)> {
    let nl = b.iter().position(|&c| c == b'\n')?;
    let l = &b[..nl];
    Some((l.strip_suffix(b"\r").unwrap_or(l), nl + 1))
}

/// `VALUE <key> <flags> <bytes> [<cas>]` -> (key, flags, bytes).
pub fn value_header(l: &[u8]) -> Option<(&[u8], u64, usize)> {
    let mut it = l.split(|&c| c == b' ');
    if it.next()? != b"VALUE" {
        return None;
    }
    let key = it.next()?;
    let flags = parse_num(it.next()?)?;
    let bytes = parse_num(it.next()?)? as usize;
    Some((key, flags, bytes))
}

pub enum Frame {
    Incomplete,
    Complete(usize),
    /// The stream cannot be trusted any more; reconnect.
    Desync(String),
}

/// Finds the end of one get reply (hits then `END`).
pub fn frame_get(b: &[u8]) -> Frame {
    let mut p = 0;
    loop {
        let Some((l, n)) = line(&b[p..]) else {
            return Frame::Incomplete;
        };
        if l == b"END" {
            return Frame::Complete(p + n);
        }
        let Some((_, _, bytes)) = value_header(l) else {
            return Frame::Desync(format!("unexpected reply line to get: {}", lossy(l)));
        };
        let need = p + n + bytes + 2;
        if b.len() < need {
            return Frame::Incomplete;
        }
        if &b[need - 2..need] != b"\r\n" {
            return Frame::Desync("value data not terminated by CRLF".into());
        }
        p = need;
    }
}

/// Finds the end of a one-line reply (`STORED`, `VERSION ...`, an error).
pub fn frame_line(b: &[u8]) -> Frame {
    match line(b) {
        Some((_, n)) => Frame::Complete(n),
        None => Frame::Incomplete,
    }
}

/// The hits of a get reply that `frame_get` found complete: (key, flags, data).
pub fn get_hits(reply: &[u8]) -> impl Iterator<Item = (&[u8], u64, &[u8])> {
    let mut p = 0;
    std::iter::from_fn(move || {
        let (l, n) = line(&reply[p..]).expect("framed");
        if l == b"END" {
            return None;
        }
        let (key, flags, bytes) = value_header(l).expect("framed");
        let data = &reply[p + n..p + n + bytes];
        p += n + bytes + 2;
        Some((key, flags, data))
    })
}

/// Why no complete reply could be read.
pub enum ReadError {
    /// The connection failed, closed or hit its deadline.
    Io(io::Error),
    /// The reply does not parse: the stream cannot be trusted any more.
    Desync(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Desync(msg) => f.write_str(msg),
        }
    }
}

pub fn push_num(w: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    w.extend_from_slice(&tmp[i..]);
}

pub fn parse_num(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as u64)
    })
}

pub fn lossy(b: &[u8]) -> String {
    let b = &b[..b.len().min(80)];
    String::from_utf8_lossy(b).escape_debug().to_string()
}
