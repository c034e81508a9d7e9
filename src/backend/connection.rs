//! One pipelined connection to a backend: a task that writes requests from many clients in
//! batches, keeps a FIFO of those in flight, and hands each reply to the slot waiting for it.
//!
//! A text-protocol reply has no request id, so the FIFO order *is* the matching. A reply that
//! cannot be framed, or a deadline missed at the head, means the stream can no longer be
//! trusted: the connection fails everything in flight on it and ends; the pool replaces it.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::protocol::meta;
use crate::protocol::reply::{self, frame_reply, FrameState, MalformedReply, ReplyKind};
use crate::reply_queue::{Answer, Fill, ReplyQueue};
use crate::socket::Socket;
use crate::tls::BackendTls;
use crate::write_queue::WriteQueue;

use super::Backend;
use crate::error::UpstreamError;

/// Where a backend's answer goes.
#[derive(Debug)]
pub enum ReplyTarget {
    /// A client's reply slot, and how the answer fills it.
    Slot(Arc<ReplyQueue>, u64, Fill),
    /// One fragment of a gathered reply.
    Part(Arc<ReplyQueue>, u64, u16),
    /// Nobody (a `noreply` request); errors are only counted.
    Discard,
    /// A task waiting for the answer (warm-up's follow-up requests).
    Oneshot(tokio::sync::oneshot::Sender<Answer>),
    /// Nobody (a shadow copy); a failure is counted for the shadow route.
    Shadow(Arc<crate::counters::RouteStats>),
}

impl ReplyTarget {
    /// Delivers the answer.
    pub fn deliver(self, answer: Answer, backend: &Backend) {
        if answer.is_err() {
            backend.stats.errors.inc();
        }
        match self {
            ReplyTarget::Slot(q, seq, fill) => q.complete(seq, answer, fill),
            ReplyTarget::Part(q, seq, part) => q.complete_part(seq, part as usize, answer),
            ReplyTarget::Oneshot(tx) => {
                let _ = tx.send(answer);
            }
            ReplyTarget::Discard => {
                if answer.as_deref().map_or(true, reply::is_error_line) {
                    backend.stats.noreply_errors.inc();
                }
            }
            ReplyTarget::Shadow(stats) => {
                if answer.as_deref().map_or(true, reply::is_error_line) {
                    stats.shadow_errors.inc();
                }
            }
        }
    }
}

/// A request on its way to a backend.
#[derive(Debug)]
pub struct UpstreamRequest {
    /// The bytes to write (one or two slices of the client's frame, or a rewritten request).
    pub bytes: (Bytes, Option<Bytes>),
    /// The shape of the expected reply.
    pub kind: ReplyKind,
    /// Retrievals: the keys asked for, so the most `VALUE` items the reply may hold.
    pub keys: u32,
    /// Who gets the reply.
    pub target: ReplyTarget,
}

/// A cheap, cloneable handle to a connection task.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    tx: mpsc::Sender<UpstreamRequest>,
}

impl ConnHandle {
    /// Whether the connection has ended (its requests now fail; get a new handle).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Queues a request; gives it back if the connection has ended.
    pub async fn send(&self, req: UpstreamRequest) -> Result<(), UpstreamRequest> {
        use mpsc::error::TrySendError;
        match self.tx.try_send(req) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(req)) => Err(req),
            // Waiting for room is rare (a backend thousands of requests behind); boxed, its
            // large future does not enlarge every client task.
            Err(TrySendError::Full(req)) => Box::pin(self.tx.send(req)).await.map_err(|e| e.0),
        }
    }
}

/// Settings of upstream connections.
#[derive(Clone, Debug)]
pub struct ConnSettings {
    /// How long establishing a connection may take.
    pub connect_timeout: Duration,
    /// Requests queued to one connection before senders wait.
    pub queue_depth: usize,
    /// Requests written and unanswered on one connection at most.
    pub max_in_flight: usize,
    /// The request timeout.
    pub timeout: Duration,
    /// Largest value accepted in a reply; a larger one fails the connection (so a broken
    /// backend cannot make memroute buffer without bound).
    pub max_value: usize,
    /// TLS to the backend, when its pool asks for it.
    pub tls: Option<Arc<BackendTls>>,
}

/// Tells a pool's connections that their backend left the configuration: take no more
/// requests, finish those in flight, close.
#[derive(Debug, Default)]
pub struct Retire {
    retired: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Retire {
    /// Retires every connection sharing this.
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Opens a connection to `addr` and starts its task.
pub async fn connect(
    addr: SocketAddr,
    settings: ConnSettings,
    backend: Arc<Backend>,
    retire: Arc<Retire>,
) -> io::Result<ConnHandle> {
    let stream = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let mut sock = Socket::new(stream)?;
    if let Some(tls) = &settings.tls {
        // The handshake is part of connecting: the same timeout covers both.
        sock = tokio::time::timeout(
            settings.connect_timeout,
            tls_connect(sock, tls, &backend.name),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    }
    let (tx, rx) = mpsc::channel(settings.queue_depth);
    let conn = Connection {
        sock,
        rx,
        in_flight: VecDeque::new(),
        rbuf: BytesMut::new(),
        frame: FrameState::new(settings.max_value),
        wq: WriteQueue::new(),
        backend,
        max_in_flight: settings.max_in_flight,
        timeout: settings.timeout,
        retire,
    };
    tokio::spawn(conn.run());
    Ok(ConnHandle { tx })
}

/// The TLS handshake with backend `name` (`host:port`), checking its certificate against
/// the pool's CAs and name.
pub async fn tls_connect(sock: Socket, tls: &BackendTls, name: &str) -> io::Result<Socket> {
    let host = name
        .rsplit_once(':')
        .map_or(name, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let server_name = crate::tls::server_name(tls, host)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let conn =
        rustls::ClientConnection::new(tls.config.clone(), server_name).map_err(io::Error::other)?;
    let sock = sock.with_tls(conn);
    sock.handshake().await?;
    Ok(sock)
}

/// Requests taken from the queue per wake-up.
const BATCH: usize = 256;

struct InFlight {
    kind: ReplyKind,
    /// Retrievals: `VALUE` items the reply may hold at most (one per key requested).
    max_items: usize,
    target: ReplyTarget,
    deadline: Instant,
}

struct Connection {
    sock: Socket,
    rx: mpsc::Receiver<UpstreamRequest>,
    in_flight: VecDeque<InFlight>,
    rbuf: BytesMut,
    /// Framing progress inside the head reply.
    frame: FrameState,
    wq: WriteQueue,
    backend: Arc<Backend>,
    max_in_flight: usize,
    /// The request timeout, to recover send times from deadlines.
    timeout: Duration,
    /// Set when the backend leaves the configuration.
    retire: Arc<Retire>,
}

/// Why a connection ended.
enum End {
    /// Every handle was dropped and nothing is in flight.
    Idle,
    /// The connection broke; the reply line given to requests in flight.
    Failed(UpstreamError, String),
}

impl Connection {
    async fn run(mut self) {
        let end = self.serve().await;
        let (err, why) = match end {
            End::Idle => (UpstreamError::Closed, String::new()),
            End::Failed(err, why) => (err, why),
        };
        if !why.is_empty() {
            tracing::debug!(backend = %self.backend.name, "upstream connection failed: {why}");
            self.backend.stats.connection_failures.inc();
            self.backend.record_failure();
        }
        for f in self.in_flight.drain(..) {
            self.backend.stats.in_flight.dec();
            f.target.deliver(Err(err), &self.backend);
        }
        // Requests queued but never written can be told the backend is gone.
        self.rx.close();
        while let Ok(req) = self.rx.try_recv() {
            req.target.deliver(Err(err), &self.backend);
        }
    }

    async fn serve(&mut self) -> End {
        let mut batch = Vec::with_capacity(BATCH);
        let timer = sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut timer_armed = false;
        let mut rx_closed = false;
        loop {
            if self.retire.is_retired() {
                // Queued requests are still taken; new ones are refused.
                self.rx.close();
            }
            if rx_closed && self.in_flight.is_empty() {
                return End::Idle;
            }
            if !timer_armed {
                if let Some(head) = self.in_flight.front() {
                    timer.as_mut().reset(head.deadline);
                    timer_armed = true;
                }
            }
            let can_take = self.wq.is_empty() && self.in_flight.len() < self.max_in_flight;
            tokio::select! {
                biased;
                // Watched even when idle, so a backend closing an idle connection is noticed at once.
                r = self.sock.read(&mut self.rbuf) => {
                    match r {
                        Ok(0) => return End::Failed(UpstreamError::Closed, "backend closed the connection".into()),
                        Ok(_) => {
                            if let Err(end) = self.deliver_replies() {
                                return end;
                            }
                            // A backend that keeps sending without finishing the head reply
                            // keeps this arm winning; the deadline must hold all the same.
                            if self.in_flight.front().is_some_and(|h| h.deadline <= Instant::now()) {
                                self.backend.stats.timeouts.inc();
                                return End::Failed(UpstreamError::Timeout, "request timed out".into());
                            }
                        }
                        Err(e) => return End::Failed(UpstreamError::Closed, e.to_string()),
                    }
                }
                r = self.sock.write(&mut self.wq), if !self.wq.is_empty() || self.sock.pending_output() => {
                    if let Err(e) = r {
                        return End::Failed(UpstreamError::Closed, e.to_string());
                    }
                }
                () = self.retire.notify.notified(), if !rx_closed => {}
                n = self.rx.recv_many(&mut batch, BATCH), if can_take && !rx_closed => {
                    if n == 0 {
                        // Handles are gone (or the backend retired): finish what is in flight.
                        rx_closed = true;
                        continue;
                    }
                    // A request's time starts when it is written: time spent queued behind
                    // others is memroute's, not the backend's.
                    let deadline = Instant::now() + self.timeout;
                    for req in batch.drain(..) {
                        self.enqueue(req, deadline);
                    }
                    // Let the other tasks that are ready run first: what they send joins
                    // this write, so one system call carries many clients' requests.
                    tokio::task::yield_now().await;
                    while self.in_flight.len() < self.max_in_flight {
                        match self.rx.try_recv() {
                            Ok(req) => self.enqueue(req, deadline),
                            Err(_) => break,
                        }
                    }
                    // Most writes complete at once; skip a wake-up for writability.
                    if let Err(e) = self.sock.try_write(&mut self.wq) {
                        return End::Failed(UpstreamError::Closed, e.to_string());
                    }
                }
                () = &mut timer, if timer_armed => {
                    timer_armed = false;
                    if let Some(head) = self.in_flight.front() {
                        if head.deadline <= Instant::now() {
                            self.backend.stats.timeouts.inc();
                            return End::Failed(UpstreamError::Timeout, "request timed out".into());
                        }
                    }
                }
            }
        }
    }

    /// Queues a request's bytes for writing and records it as in flight until `deadline`.
    fn enqueue(&mut self, req: UpstreamRequest, deadline: Instant) {
        let max_items = req.keys as usize;
        self.wq.push(req.bytes.0);
        if let Some(rest) = req.bytes.1 {
            self.wq.push(rest);
        }
        self.backend.stats.in_flight.inc();
        self.in_flight.push_back(InFlight {
            kind: req.kind,
            max_items,
            target: req.target,
            deadline,
        });
    }

    /// Delivers every complete reply in the read buffer.
    fn deliver_replies(&mut self) -> Result<(), End> {
        while let Some(head) = self.in_flight.front() {
            self.frame.limit_items(head.max_items);
            match frame_reply(&self.rbuf, head.kind, &mut self.frame) {
                Ok(Some(n)) => {
                    let mut bytes = self.rbuf.split_to(n).freeze();
                    let done = self.in_flight.pop_front().expect("head exists");
                    match done.kind {
                        ReplyKind::RetrievalFlagsInValue => {
                            bytes = crate::tyrant::decode_flags(bytes);
                        }
                        // `MN` only told where the backend's answer ended.
                        ReplyKind::MetaThenNoop => bytes.truncate(n - meta::MN.len()),
                        _ => {}
                    }
                    // Counted as they were framed: the reply is not scanned again.
                    let (hits, largest) = self.frame.take_framed();
                    if done.kind.counts_hits() {
                        self.backend.stats.get_hits.add(hits as u64);
                        self.backend.value_sizes.record(largest);
                    }
                    let stats = &self.backend.stats;
                    stats.replies.inc();
                    stats.in_flight.dec();
                    // Sent at the deadline minus the timeout; measured in microseconds.
                    let sent = done.deadline - self.timeout;
                    let latency = sent.elapsed();
                    stats.latency_us_total.add(latency.as_micros() as u64);
                    self.backend.latency.record(latency.as_secs_f64());
                    self.backend.record_success();
                    done.target.deliver(Ok(bytes), &self.backend);
                }
                Ok(None) => break,
                Err(MalformedReply) => {
                    return Err(End::Failed(
                        UpstreamError::Protocol,
                        "unparseable reply".into(),
                    ))
                }
            }
        }
        if self.in_flight.is_empty() && !self.rbuf.is_empty() {
            return Err(End::Failed(
                UpstreamError::Protocol,
                "bytes from backend with no request in flight".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::*;
    use crate::config::parse_server;

    const SETTINGS: ConnSettings = ConnSettings {
        connect_timeout: Duration::from_secs(1),
        queue_depth: 16,
        max_in_flight: 16,
        timeout: Duration::from_secs(2),
        max_value: 1024,
        tls: None,
    };

    /// A connection to a local listener whose accepted socket `serve` drives.
    async fn connection<F, Fut>(serve: F) -> (ConnHandle, Arc<Backend>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            serve(sock).await;
        });
        let server = parse_server("servers", &addr.to_string()).unwrap();
        let backend = Arc::new(Backend::new(&server, None, 1));
        let handle = connect(addr, SETTINGS.clone(), backend.clone(), Arc::default())
            .await
            .unwrap();
        (handle, backend)
    }

    async fn ask(handle: &ConnHandle, line: &'static [u8]) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        let req = UpstreamRequest {
            bytes: (Bytes::from_static(line), None),
            kind: ReplyKind::Line,
            keys: 0,
            target: ReplyTarget::Oneshot(tx),
        };
        handle.send(req).await.unwrap();
        rx
    }

    // The deadlines run on tokio's clock, paused here: the test takes no real time and
    // measures the virtual time exactly.
    #[tokio::test(start_paused = true)]
    async fn a_request_times_out_exactly_at_its_deadline_and_fails_the_connection() {
        let (handle, backend) = connection(|mut sock| async move {
            // Reads and never answers.
            let mut buf = [0u8; 64];
            while sock.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        })
        .await;
        let start = Instant::now();
        let first = ask(&handle, b"delete a\r\n").await;
        // Sleeping lets the connection write the first request now (its deadline starts
        // when it is written), then moves the clock on.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = ask(&handle, b"delete b\r\n").await;
        assert_eq!(first.await.unwrap(), Err(UpstreamError::Timeout));
        assert_eq!(start.elapsed(), SETTINGS.timeout);
        // Everything in flight on the connection fails with it.
        assert_eq!(second.await.unwrap(), Err(UpstreamError::Timeout));
        assert_eq!(backend.stats.timeouts.get(), 1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(handle.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_just_before_the_deadline_is_delivered() {
        let (handle, backend) = connection(|mut sock| async move {
            let mut buf = [0u8; 64];
            let _ = sock.read(&mut buf).await;
            tokio::time::sleep(SETTINGS.timeout - Duration::from_millis(1)).await;
            sock.write_all(b"DELETED\r\n").await.unwrap();
            while sock.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        })
        .await;
        let answer = ask(&handle, b"delete a\r\n").await.await.unwrap();
        assert_eq!(answer.unwrap(), Bytes::from_static(b"DELETED\r\n"));
        assert_eq!(backend.stats.timeouts.get(), 0);
        assert!(!handle.is_closed());
    }
}
