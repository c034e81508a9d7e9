//! A TCP socket driven by readiness with one system call per event where possible, plain or
//! carrying TLS.
//!
//! tokio's `TcpStream` forgets that a socket is drained until a read returns `WouldBlock`, so
//! every read costs a second, empty `recv`. Here a short read (fewer bytes than there was
//! room for) marks the socket drained at once; tokio's readiness ticks make that race-free: a
//! readiness event that arrives after the read is not cleared.
//!
//! With TLS, rustls's connection state sits beside the descriptor: reads feed it records and
//! hand out the plaintext, writes give it plaintext and send the records it makes. Reads and
//! writes run in the same `select!`, so both take `&self` and the state is behind a mutex
//! that is only ever held between awaits (never contended: one task owns the socket).

use std::io::{self, Read, Write};
use std::net::TcpStream as StdStream;
use std::sync::{Mutex, MutexGuard};

use bytes::{Buf, BytesMut};
use rustls::pki_types::CertificateDer;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;

use crate::write_queue::WriteQueue;
use socket2::{Domain, Protocol, Type};

/// Bytes offered to one `recv`: at least, and at most.
const MIN_ROOM: usize = 2048;
const MAX_ROOM: usize = 64 * 1024;
/// Bytes of TLS records read at once: one full record and its overhead.
const TLS_READ: usize = 16 * 1024 + 512;

/// A non-blocking TCP socket registered with the runtime.
#[derive(Debug)]
pub struct Socket {
    fd: AsyncFd<StdStream>,
    /// TLS state, when the connection carries TLS (boxed: plain sockets stay small).
    tls: Option<Box<Mutex<Tls>>>,
}

/// A TLS connection's state.
#[derive(Debug)]
struct Tls {
    conn: rustls::Connection,
    /// The peer closed the TCP stream (records read before stay readable).
    eof: bool,
    /// Records read from the socket that rustls has not been given yet (it is given them
    /// until some plaintext comes out, which keeps its buffers bounded).
    stash: BytesMut,
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
        Ok(Socket { fd, tls: None })
    }

    /// The same socket carrying TLS as `conn` (a server or client side, not yet handshaken:
    /// call [`Socket::handshake`] before anything else).
    pub fn with_tls(self, conn: impl Into<rustls::Connection>) -> Socket {
        let tls = Tls {
            conn: conn.into(),
            eof: false,
            stash: BytesMut::new(),
        };
        Socket {
            fd: self.fd,
            tls: Some(Box::new(Mutex::new(tls))),
        }
    }

    fn lock(tls: &Mutex<Tls>) -> MutexGuard<'_, Tls> {
        tls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Completes the TLS handshake (nothing to do on a plain socket). The caller bounds it
    /// with a timeout. Application data that arrived with the handshake stays buffered for
    /// the first [`Socket::read`].
    pub async fn handshake(&self) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        loop {
            let (handshaking, wants_write) = {
                let t = Self::lock(tls);
                (t.conn.is_handshaking(), t.conn.wants_write())
            };
            if wants_write {
                let mut guard = self.fd.writable().await?;
                let flushed =
                    guard.try_io(|fd| match flush(&mut Self::lock(tls).conn, fd.get_ref())? {
                        true => Ok(()),
                        false => Err(io::ErrorKind::WouldBlock.into()),
                    });
                if let Ok(r) = flushed {
                    r?;
                }
                continue;
            }
            if !handshaking {
                return Ok(());
            }
            let mut guard = self.fd.readable().await?;
            let got = guard.try_io(|fd| {
                let mut t = Self::lock(tls);
                match t.conn.read_tls(&mut fd.get_ref())? {
                    0 => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the TLS handshake",
                    )),
                    _ => process(&mut t.conn, fd.get_ref()),
                }
            });
            if let Ok(r) = got {
                r?;
            }
        }
    }

    /// The peer's certificate chain (leaf first), after a TLS handshake that asked for one.
    pub fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        let t = Self::lock(self.tls.as_ref()?);
        t.conn
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
    }

    /// Whether TLS records are waiting to be sent (the socket was full): keep calling
    /// [`Socket::write`] until they are out, even with nothing more queued.
    pub fn pending_output(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|tls| Self::lock(tls).conn.wants_write())
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
        if let Some(tls) = &self.tls {
            return self.read_tls(tls, buf).await;
        }
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
                // The room follows the capacity the codec reserved (large for a big value),
                // but an idle connection's buffer stays small.
                let room = (buf.capacity() - start).clamp(MIN_ROOM, MAX_ROOM);
                buf.reserve(room);
                let result = guard.try_io(|fd| recv_into_spare(fd.get_ref(), buf, room));
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

    /// [`Socket::read`] through TLS: plaintext rustls already holds first, then records
    /// left over from an earlier read, then records from the socket, until some plaintext
    /// (or the end) comes out of them.
    async fn read_tls(&self, tls: &Mutex<Tls>, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            {
                let mut t = Self::lock(tls);
                if let Some(r) = plaintext(&mut t, buf) {
                    return r;
                }
                if !t.stash.is_empty() {
                    feed_stash(&mut t, self.fd.get_ref())?;
                    continue;
                }
            }
            let mut guard = self.fd.readable().await?;
            let mut t = Self::lock(tls);
            // Records go into the stash (a spare buffer while there are any), one `recv` of
            // up to a record's worth (rustls alone reads less at a time); a short one means
            // the socket is drained, as for plain reads.
            if t.stash.capacity() == 0 {
                t.stash = spare::take();
            }
            t.stash.reserve(TLS_READ);
            let n = match guard.try_io(|fd| recv_into_spare(fd.get_ref(), &mut t.stash, TLS_READ)) {
                Ok(r) => r?,
                Err(_would_block) => continue,
            };
            if n < TLS_READ {
                guard.clear_ready();
            }
            if n == 0 {
                t.eof = true;
                spare::give_back(&mut t.stash);
                continue;
            }
            feed_stash(&mut t, self.fd.get_ref())?;
        }
    }

    /// Writes what the socket takes now, without waiting. `Ok(true)`: everything was written.
    pub fn try_write(&self, wq: &mut WriteQueue) -> io::Result<bool> {
        match &self.tls {
            None => wq.write_to(&mut self.fd.get_ref()),
            Some(tls) => write_tls(&mut Self::lock(tls).conn, self.fd.get_ref(), wq),
        }
    }

    /// Waits until the socket is writable and writes what it takes.
    pub async fn write(&self, wq: &mut WriteQueue) -> io::Result<bool> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| {
                let done = match &self.tls {
                    None => wq.write_to(&mut fd.get_ref()),
                    Some(tls) => write_tls(&mut Self::lock(tls).conn, fd.get_ref(), wq),
                };
                match done {
                    // Report a partial write as WouldBlock so tokio clears the readiness.
                    Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
                    other => other,
                }
            }) {
                Ok(result) => return result,
                Err(_would_block) => {
                    if !wq.is_empty() || self.pending_output() {
                        continue;
                    }
                    return Ok(true);
                }
            }
        }
    }
}

/// Receives up to `room` bytes into `buf`'s spare capacity, without zeroing it first (for
/// large values, zeroing cost as much as the kernel's copy). Returns the bytes received,
/// which now belong to `buf`.
#[allow(unsafe_code)]
fn recv_into_spare(fd: &StdStream, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
    let start = buf.len();
    let spare = &mut buf.spare_capacity_mut()[..room];
    let n = socket2::SockRef::from(fd).recv(spare)?;
    debug_assert!(n <= room);
    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity (socket2 takes
    // the uninitialised slice and returns how many bytes the kernel wrote into it), and
    // `n <= room <= capacity - start`.
    unsafe { buf.set_len(start + n) };
    Ok(n)
}

/// Plaintext rustls holds, moved into `buf`'s tail; `None` when there is none yet (and the
/// stream goes on). `Some(Ok(0))`: the peer closed (with or without close_notify).
fn plaintext(t: &mut Tls, buf: &mut BytesMut) -> Option<io::Result<usize>> {
    let state = match t.conn.process_new_packets() {
        Ok(s) => s,
        Err(e) => return Some(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
    };
    if state.plaintext_bytes_to_read() == 0 {
        let ended = state.peer_has_closed() || (t.eof && t.stash.is_empty());
        return ended.then_some(Ok(0));
    }
    if buf.capacity() == 0 {
        *buf = spare::take();
    }
    let start = buf.len();
    let room = state.plaintext_bytes_to_read().clamp(MIN_ROOM, MAX_ROOM);
    buf.resize(start + room, 0);
    let r = t.conn.reader().read(&mut buf[start..]);
    let n = *r.as_ref().unwrap_or(&0);
    buf.truncate(start + n);
    Some(r)
}

/// Gives rustls stashed records until some plaintext comes out of them; the stash goes
/// back to the spares once empty.
fn feed_stash(t: &mut Tls, fd: &StdStream) -> io::Result<()> {
    let Tls { conn, stash, .. } = t;
    let mut rest = &stash[..];
    feed(conn, &mut rest, fd)?;
    let used = stash.len() - rest.len();
    stash.advance(used);
    spare::give_back(stash);
    Ok(())
}

/// Gives rustls the records in `rest` until some plaintext comes out of them (so at most a
/// record's worth is held decrypted); what is left stays in `rest`.
fn feed(conn: &mut rustls::Connection, rest: &mut &[u8], fd: &StdStream) -> io::Result<()> {
    while !rest.is_empty() {
        if conn.read_tls(rest)? == 0 {
            return Err(io::Error::other("TLS records refused"));
        }
        process(conn, fd)?;
        let state = conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if state.plaintext_bytes_to_read() > 0 {
            break;
        }
    }
    Ok(())
}

/// Decrypts the records just read; on a protocol error, sends the alert rustls queued
/// (best effort) and fails.
fn process(conn: &mut rustls::Connection, fd: &StdStream) -> io::Result<()> {
    match conn.process_new_packets() {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = flush(conn, fd);
            Err(io::Error::new(io::ErrorKind::InvalidData, e))
        }
    }
}

/// Sends the records rustls has ready; `Ok(false)` when the socket is full.
fn flush(conn: &mut rustls::Connection, mut fd: &StdStream) -> io::Result<bool> {
    while conn.wants_write() {
        match conn.write_tls(&mut fd) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Hands queued plaintext to rustls (as much as its bounded buffer takes) and sends the
/// records; `Ok(true)` when everything is out.
fn write_tls(
    conn: &mut rustls::Connection,
    fd: &StdStream,
    wq: &mut WriteQueue,
) -> io::Result<bool> {
    loop {
        if !flush(conn, fd)? {
            return Ok(false);
        }
        if wq.is_empty() {
            return Ok(true);
        }
        // rustls takes no more once its buffer limit is reached: that is a full socket.
        wq.write_to(&mut Plaintext(conn))?;
    }
}

/// rustls's plaintext side as a writer that reports a full buffer as `WouldBlock`.
struct Plaintext<'a>(&'a mut rustls::Connection);

impl Write for Plaintext<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.writer().write(buf)? {
            0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        match self.0.writer().write_vectored(bufs)? {
            0 if want > 0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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

    /// A CA, a server certificate for 127.0.0.1 from it, and the PEM files (for `crate::tls`).
    fn tls_pair() -> (
        crate::tls::ListenerTls,
        crate::tls::BackendTls,
        tempfile::TempDir,
    ) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let (cert, key, ca) = (
            write("cert.pem", leaf.pem()),
            write("key.pem", key.serialize_pem()),
            write("ca.pem", ca.pem()),
        );
        let server = crate::tls::listener(
            &cert,
            &key,
            None,
            Vec::new(),
            std::time::Duration::from_secs(5),
        )
        .unwrap();
        let client = crate::tls::backend(Some(&ca), None, None).unwrap();
        (server, client, dir)
    }

    #[tokio::test]
    async fn tls_carries_pipelined_bytes_both_ways_with_records_left_in_rustls() {
        let (server, client, _dir) = tls_pair();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let a = Socket::new(a.unwrap()).unwrap();
        let b = Socket::new(b.unwrap().0).unwrap();
        let b = b.with_tls(rustls::ServerConnection::new(server.config.clone()).unwrap());
        let name = addr.to_string();
        let connect = crate::backend::tls_connect(a, &client, &name);
        let (a, accepted) = tokio::join!(connect, b.handshake());
        let a = a.unwrap();
        accepted.unwrap();
        // Bigger than every buffer on the way (rustls's 64 KiB limit, the socket's), written
        // in pieces while the other side also writes: each side must keep reading.
        let payload: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        async fn send(sock: &Socket, data: &[u8]) {
            let mut wq = WriteQueue::new();
            for chunk in data.chunks(7_000) {
                wq.push(bytes::Bytes::copy_from_slice(chunk));
                if !sock.try_write(&mut wq).unwrap() {
                    while !sock.write(&mut wq).await.unwrap() {}
                }
            }
            while sock.pending_output() {
                sock.write(&mut wq).await.unwrap();
            }
        }
        async fn receive(sock: &Socket, n: usize) -> BytesMut {
            let mut buf = BytesMut::new();
            while buf.len() < n {
                assert!(sock.read(&mut buf).await.unwrap() > 0, "ended early");
            }
            buf
        }
        let n = payload.len();
        let ((), (), at_a, at_b) = tokio::join!(
            send(&a, &payload),
            send(&b, &payload),
            receive(&a, n),
            receive(&b, n)
        );
        assert_eq!(&at_a[..], &payload[..]);
        assert_eq!(&at_b[..], &payload[..]);
        // A clean end: the peer's TCP close reads as 0.
        drop(a);
        let mut rest = BytesMut::new();
        assert_eq!(b.read(&mut rest).await.unwrap(), 0);
    }
}
