//! Outgoing bytes of one socket: a queue of `Bytes` written with vectored writes, so replies
//! and forwarded requests go out without being copied and many per system call.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes};

/// How many buffers one `writev` takes at most.
const MAX_IOVECS: usize = 64;

/// A FIFO of byte buffers waiting to be written.
#[derive(Debug, Default)]
pub struct WriteQueue {
    bufs: VecDeque<Bytes>,
    len: usize,
}

impl WriteQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a buffer.
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.bufs.push_back(b);
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes as much as a non-blocking writer takes. Returns `Ok(true)` when the queue is
    /// empty afterwards, `Ok(false)` when the writer would block.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<bool> {
        while !self.bufs.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self
                .bufs
                .iter()
                .zip(slices.iter_mut())
                .map(|(b, s)| *s = IoSlice::new(b))
                .count();
            match w.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.consume(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = self.bufs.front_mut().expect("wrote more than queued");
            if front.len() <= n {
                n -= front.len();
                self.bufs.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// All queued bytes in one buffer (tests and diagnostics).
    pub fn concat(&self) -> Vec<u8> {
        self.bufs.iter().flat_map(|b| b.iter().copied()).collect()
    }
}
