//! A TCP socket driven by readiness with one system call per event where possible.
//!
//! tokio's `TcpStream` forgets that a socket is drained until a read returns `WouldBlock`, so
//! every read costs a second, empty `recv`. Here a short read (fewer bytes than there was
//! room for) marks the socket drained at once; tokio's readiness ticks make that race-free: a
//! readiness event that arrives after the read is not cleared.

use std::io::{self, Read};
use std::net::TcpStream as StdStream;

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;

use crate::write_queue::WriteQueue;
use socket2::{Domain, Protocol, Type};

/// Bytes offered to one `recv`: at least, and at most.
const MIN_ROOM: usize = 2048;
const MAX_ROOM: usize = 64 * 1024;

/// A non-blocking TCP socket registered with the runtime.
#[derive(Debug)]
pub struct Socket {
    fd: AsyncFd<StdStream>,
}

impl Socket {
    /// Takes over a tokio stream (must be called inside the runtime).
    pub fn new(stream: TcpStream) -> io::Result<Socket> {
        stream.set_nodelay(true)?;
        let std = stream.into_std()?;
        std.set_nonblocking(true)?;
        // `AsyncFd::new` is deprecated because an arbitrary `T` could close its descriptor
        // while registered; a `TcpStream` owned by the `AsyncFd` cannot.
        #[allow(deprecated)]
        let fd = AsyncFd::new(std)?;
        Ok(Socket { fd })
    }

    /// Waits until the socket is readable, then reads what it holds into `buf`'s tail: until a
    /// read comes back short (the kernel buffer is empty) or `MAX_ROOM` bytes are in. Like
    /// memcached, a request that arrived whole is then seen whole, so the line-length limit
    /// is only ever applied to bytes the client has really not sent yet.
    /// Returns the bytes read; 0 means the peer closed its side.
    pub async fn read(&self, buf: &mut BytesMut) -> io::Result<usize> {
        // `AsyncFd` readiness takes no cooperative budget: a peer that keeps the socket full
        // would otherwise keep this task running and starve the worker's other tasks. Taken
        // before any byte is read, so a caller's `select!` dropping this future loses nothing.
        tokio::task::coop::consume_budget().await;
        loop {
            let mut guard = self.fd.readable().await?;
            if buf.capacity() == 0 {
                // An idle connection holds no buffer: borrow one only once data is there.
                *buf = spare::take();
            }
            let mut total = 0;
            // From here to the return nothing awaits, so a caller's `select!` can never
            // observe the zeroed room as data.
            loop {
                let start = buf.len();
                // Only initialised memory can be read into without `unsafe`, so the room is
                // zeroed first. It follows the capacity the codec reserved (large for a big
                // value), but an idle connection's buffer stays small.
                let room = (buf.capacity() - start).clamp(MIN_ROOM, MAX_ROOM);
                buf.resize(start + room, 0);
                let result = guard.try_io(|fd| fd.get_ref().read(&mut buf[start..]));
                let n = match &result {
                    Ok(Ok(n)) => *n,
                    _ => 0,
                };
                buf.truncate(start + n);
                match result {
                    // End of stream: reported now, or by the next call after these bytes.
                    Ok(Ok(0)) => return Ok(total),
                    Ok(Ok(n)) => {
                        total += n;
                        if n < room {
                            // Short read: the kernel buffer is empty now.
                            guard.clear_ready();
                            return Ok(total);
                        }
                        if total >= MAX_ROOM {
                            return Ok(total);
                        }
                    }
                    Ok(Err(e)) if total == 0 => return Err(e),
                    // The bytes already read come first; the error will come again.
                    Ok(Err(_)) => return Ok(total),
                    Err(_would_block) if total > 0 => return Ok(total),
                    Err(_would_block) => break,
                }
            }
        }
    }

    /// Writes what the socket takes now, without waiting. `Ok(true)`: everything was written.
    pub fn try_write(&self, wq: &mut WriteQueue) -> io::Result<bool> {
        wq.write_to(&mut self.fd.get_ref())
    }

    /// Waits until the socket is writable and writes what it takes.
    pub async fn write(&self, wq: &mut WriteQueue) -> io::Result<bool> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| {
                let mut w = fd.get_ref();
                match wq.write_to(&mut w) {
                    // Report a partial write as WouldBlock so tokio clears the readiness.
                    Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
                    other => other,
                }
            }) {
                Ok(result) => return result,
                Err(_would_block) => {
                    if !wq.is_empty() {
                        continue;
                    }
                    return Ok(true);
                }
            }
        }
    }
}

/// A listening socket that other workers may bind too (`SO_REUSEPORT`), so the kernel
/// spreads connections over workers.
pub fn bind_reuseport(addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket =
        socket2::Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Read buffers of idle connections, kept per worker thread. A connection takes one when
/// data arrives and gives it back once everything in it is decoded, so ten thousand idle
/// clients hold no read buffers, and a busy one never allocates per request.
pub mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    /// Buffers kept per thread at most.
    const KEEP: usize = 64;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// A buffer from the thread's spares, or a new empty one.
    pub fn take() -> BytesMut {
        SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default()
    }

    /// Returns `buf` to the spares if it holds no data; leaves it otherwise.
    pub fn give_back(buf: &mut BytesMut) {
        if buf.is_empty() && buf.capacity() > 0 {
            let buf = std::mem::take(buf);
            SPARE.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < KEEP {
                    s.push(buf);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_and_writes_across_a_loopback_pair() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (a, b) = (
            Socket::new(a.unwrap()).unwrap(),
            Socket::new(b.unwrap().0).unwrap(),
        );
        let mut wq = WriteQueue::new();
        let payload = vec![7u8; 200_000];
        wq.push(bytes::Bytes::from(payload.clone()));
        let writer = async {
            while !a.write(&mut wq).await.unwrap() {}
            drop(a);
        };
        let reader = async {
            let mut buf = BytesMut::new();
            loop {
                let before = buf.len();
                if b.read(&mut buf).await.unwrap() == 0 {
                    break;
                }
                assert!(buf.len() > before);
            }
            buf
        };
        let ((), got) = tokio::join!(writer, reader);
        assert_eq!(&got[..], &payload[..]);
    }
}
