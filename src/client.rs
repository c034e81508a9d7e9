//! One client connection: read and decode requests, send each where the router says, and
//! write the replies back in request order as soon as each one's predecessors are written.
//!
//! Backpressure: when the client has too many requests in flight or too many reply bytes
//! waiting, memroute stops reading from it instead of buffering more.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::BackendProtocol;
use crate::embedded::Store;
use crate::protocol::codec::{ClientCodec, CodecLimits, Decoded};
use crate::protocol::reply::{self, ReplyKind};
use crate::protocol::request::{Command, Request};
use crate::reply_queue::{Gather, Reply, ReplyQueue, RetrievalFailure};
use crate::router::{fragment_request, Backend, Route, Router};
use crate::server::Shared;
use crate::socket::{spare, Socket};
use crate::stats::WorkerStats;
use crate::tyrant;
use crate::upstream::{ConnHandle, ReplyTarget, UpstreamRequest};
use crate::warmup::{self, WarmKey};
use crate::worker::RouterSlot;
use crate::write_queue::WriteQueue;

/// The state of one client connection.
struct Client {
    sock: Socket,
    /// The pool's current router in this worker; reloads replace it.
    slot: RouterSlot,
    /// The router this client last used (its `handles` index its backends).
    router: Arc<Router>,
    /// Shutdown: finish what is in flight, then close.
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
    queue: Arc<ReplyQueue>,
    wq: WriteQueue,
    /// The connection this client uses to each backend, kept while it lives so the client's
    /// requests to one backend stay in order.
    handles: Vec<Option<ConnHandle>>,
    /// No more requests are read (quit, EOF, or a fatal protocol error).
    closing: bool,
    /// Decoding stopped at the in-flight cap with bytes still buffered.
    backlog: bool,
    /// Where the embedded cache writes replies; split off per reply, so reused.
    embedded_out: BytesMut,
    /// `client_timeout`, and when a request last arrived (kept only with a timeout). Like
    /// memcached's idle_timeout, only a complete request counts as activity, so a client
    /// trickling bytes of a line it never ends is still idle.
    idle_after: Option<std::time::Duration>,
    last_request: Instant,
}

/// Serves one client until it leaves.
pub async fn serve(
    stream: TcpStream,
    slot: RouterSlot,
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
    stop: watch::Receiver<bool>,
) {
    let router = slot.load_full();
    let sock = match Socket::new(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("client socket setup failed: {e}");
            return;
        }
    };
    let handles = vec![None; router.backends().len()];
    let idle_after = router.config.client_timeout;
    // A client accepted just as shutdown began is served as closing from the start.
    let closing = *stop.borrow();
    let mut client = Client {
        sock,
        slot,
        router,
        stop,
        shared,
        stats,
        queue: Arc::new(ReplyQueue::new()),
        wq: WriteQueue::new(),
        handles,
        closing,
        backlog: false,
        embedded_out: BytesMut::new(),
        idle_after,
        last_request: Instant::now(),
    };
    if let Err(e) = client.run().await {
        tracing::debug!("client connection ended: {e}");
    }
    client.queue.close();
}

/// Completes when the idle timer fires; never without one.
async fn idle_expired(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

impl Client {
    async fn run(&mut self) -> io::Result<()> {
        let router = self.router.clone();
        let cfg = &router.config;
        let mut codec = ClientCodec::new(CodecLimits {
            item_size_max: cfg.item_size_max,
            ..CodecLimits::default()
        });
        let max_inflight = cfg.max_client_inflight;
        let max_buffer = cfg.max_client_buffer;
        let mut rbuf = BytesMut::new();
        let mut idle_timer = self.idle_after.map(|d| Box::pin(tokio::time::sleep(d)));
        loop {
            let outstanding = self.queue.take_ready(&mut self.wq);
            if !self.wq.is_empty() {
                let before = self.wq.len();
                self.sock.try_write(&mut self.wq)?;
                self.stats
                    .bytes_written
                    .add((before - self.wq.len()) as u64);
            }
            if self.closing && self.wq.is_empty() && outstanding.requests == 0 {
                return Ok(());
            }
            let below_buffer_cap = self.wq.len() + outstanding.ready_bytes < max_buffer;
            let can_read = !self.closing && outstanding.requests < max_inflight && below_buffer_cap;
            if self.backlog && outstanding.requests < max_inflight && below_buffer_cap {
                // Requests left buffered at the in-flight cap: decode them now that replies
                // have drained, without waiting for the client to send more.
                self.handle_input(&mut codec, &mut rbuf, max_inflight).await;
                spare::give_back(&mut rbuf);
                continue;
            }
            let before = self.wq.len();
            tokio::select! {
                biased;
                r = self.stop.changed(), if !self.closing => {
                    if r.is_err() || *self.stop.borrow() {
                        self.closing = true;
                    }
                }
                r = self.sock.write(&mut self.wq), if !self.wq.is_empty() => {
                    r?;
                    self.stats.bytes_written.add((before - self.wq.len()) as u64);
                }
                () = self.queue.notified() => {}
                r = self.sock.read(&mut rbuf), if can_read => {
                    match r? {
                        0 => self.closing = true,
                        n => {
                            self.stats.bytes_read.add(n as u64);
                            self.handle_input(&mut codec, &mut rbuf, max_inflight).await;
                            spare::give_back(&mut rbuf);
                        }
                    }
                }
                () = idle_expired(&mut idle_timer), if !self.closing => {
                    let idle = self.idle_after.expect("timer only with a timeout");
                    let busy = outstanding.requests > 0 || !self.wq.is_empty();
                    if !busy && self.last_request.elapsed() >= idle {
                        self.stats.idle_kicks.inc();
                        return Ok(());
                    }
                    // Waiting on a backend is not idleness (it has its own timeout).
                    let from = if busy { Instant::now() } else { self.last_request };
                    if let Some(t) = idle_timer.as_mut() {
                        t.as_mut().reset(from + idle);
                    }
                }
            }
        }
    }

    /// Decodes and dispatches every complete request in `rbuf` (up to the in-flight cap; the
    /// rest stays buffered until replies drain).
    async fn handle_input(
        &mut self,
        codec: &mut ClientCodec,
        rbuf: &mut BytesMut,
        max_inflight: usize,
    ) {
        let mut decoded = false;
        while !self.closing && self.queue.len() < max_inflight {
            let Some(item) = codec.decode_item(rbuf) else {
                break;
            };
            decoded = true;
            match item {
                Decoded::Request(req) => self.dispatch(req).await,
                Decoded::Invalid(msg) => {
                    self.stats.protocol_errors.inc();
                    self.queue.push_ready(Reply::Static(msg));
                }
                Decoded::Fatal(msg) => {
                    self.stats.protocol_errors.inc();
                    self.queue.push_ready(Reply::Static(msg));
                    self.closing = true;
                }
            }
        }
        self.backlog = !self.closing && !rbuf.is_empty() && self.queue.len() >= max_inflight;
        if decoded && self.idle_after.is_some() {
            self.last_request = Instant::now();
        }
    }

    /// Moves to the pool's current router if a reload replaced it, carrying over the
    /// connections to backends both routers have (so request order per backend holds).
    fn follow_router(&mut self) {
        let current = self.slot.load();
        if Arc::ptr_eq(&current, &self.router) {
            return;
        }
        let next = current.clone();
        drop(current);
        let mut handles = vec![None; next.backends().len()];
        for (i, b) in next.backends().iter().enumerate() {
            if let Some(j) = self
                .router
                .backends()
                .iter()
                .position(|o| Arc::ptr_eq(o.state(), b.state()))
            {
                handles[i] = self.handles[j].take();
            }
        }
        self.handles = handles;
        self.router = next;
    }

    async fn dispatch(&mut self, req: Request) {
        self.follow_router();
        let stats = &self.stats;
        match req.command {
            c if c.is_retrieval() => stats.cmd_get.add(req.keys().count() as u64),
            c if c.is_storage() => stats.cmd_set.inc(),
            Command::FlushAll => stats.cmd_flush.inc(),
            c if c.is_single_key() => stats.cmd_other.inc(),
            _ => {}
        }
        let router = self.router.clone();
        let tyrant = router.config.protocol == BackendProtocol::TokyoTyrant;
        let preserve_flags = router.config.preserve_flags;
        if tyrant {
            if let Err(msg) = tyrant::admit(&req, preserve_flags) {
                // Never forwarded: ttserver would drop the connection or misalign it.
                self.stats.protocol_errors.inc();
                if !req.noreply() {
                    self.queue.push_ready(Reply::Static(msg));
                }
                return;
            }
        }
        let retrieval_kind = match preserve_flags {
            true => ReplyKind::RetrievalFlagsInValue,
            false => ReplyKind::Retrieval,
        };
        let mut invalidate = None;
        if router.warming() && !tyrant {
            if req.command.is_retrieval() {
                if self.warm_retrieval(&router, &req).await {
                    return;
                }
            } else if req.command.is_single_key() {
                // A write during warm-up: the previous owner's copy must not come back.
                invalidate = router.previous_owner(req.key());
            }
        }
        match router.route(&req) {
            Route::One(b) => {
                let miss = req.command.is_retrieval()
                    && router.config.retrieval_failure == RetrievalFailure::Miss;
                let target = if req.noreply() {
                    ReplyTarget::Discard
                } else {
                    let instead = miss.then_some(reply::END);
                    ReplyTarget::Slot(self.queue.clone(), self.queue.reserve(), instead)
                };
                let (kind, bytes) = match req.command {
                    c if c.is_retrieval() => (retrieval_kind, req.upstream_bytes()),
                    // Appended data lands after the stored flags prefix and needs none of its own.
                    Command::Set | Command::Add | Command::Replace if preserve_flags => {
                        (ReplyKind::Line, tyrant::encode_flags(&req))
                    }
                    _ => (ReplyKind::Line, req.upstream_bytes()),
                };
                self.send(&router, b, bytes, kind, target, Some(&req)).await;
                if let Some(prev) = invalidate {
                    let mut delete = BytesMut::with_capacity(req.key().len() + 9);
                    delete.extend_from_slice(b"delete ");
                    delete.extend_from_slice(req.key());
                    delete.extend_from_slice(b"\r\n");
                    let (bytes, target) = ((delete.freeze(), None), ReplyTarget::Discard);
                    self.send(&router, prev, bytes, ReplyKind::Line, target, None)
                        .await;
                }
            }
            Route::Split(fragments) => {
                self.stats.split_retrievals.inc();
                let keys: Vec<Bytes> = req.key_slices().collect();
                let prefix = &req.line()[..req.keys_start as usize];
                let requests: Vec<(usize, Bytes)> = fragments
                    .iter()
                    .map(|(b, positions)| (*b, fragment_request(prefix, positions, |p| &keys[p])))
                    .collect();
                let positions = fragments.into_iter().map(|(_, p)| p).collect();
                let policy = router.config.retrieval_failure;
                let seq = self
                    .queue
                    .reserve_gather(Gather::multi_get(keys, positions, policy));
                for (part, (b, bytes)) in requests.into_iter().enumerate() {
                    let target = ReplyTarget::Part(self.queue.clone(), seq, part as u16);
                    self.send(&router, b, (bytes, None), retrieval_kind, target, None)
                        .await;
                }
            }
            Route::All => {
                let n = router.pool_backends();
                let noreply = req.noreply();
                let seq = (!noreply).then(|| self.queue.reserve_gather(Gather::broadcast(n)));
                for b in 0..n {
                    let target = match seq {
                        Some(seq) => ReplyTarget::Part(self.queue.clone(), seq, b as u16),
                        None => ReplyTarget::Discard,
                    };
                    self.send(
                        &router,
                        b,
                        req.upstream_bytes(),
                        ReplyKind::Line,
                        target,
                        Some(&req),
                    )
                    .await;
                }
            }
            Route::Local => self.answer_locally(&req),
        }
    }

    /// A retrieval during warm-up with keys that moved: asks the new owners now (in request
    /// order) and leaves the retries on previous owners to a background task. Returns false
    /// when no key moved (the ordinary path applies).
    async fn warm_retrieval(&mut self, router: &Arc<Router>, req: &Request) -> bool {
        let keys: Vec<WarmKey> = req
            .key_slices()
            .map(|key| WarmKey {
                previous: router.previous_owner(&key),
                key,
            })
            .collect();
        if keys.iter().all(|k| k.previous.is_none()) {
            return false;
        }
        let seq = self.queue.reserve();
        let prefix = req.frame.slice(..req.keys_start as usize);
        let groups = router.group_by_owner(keys.iter().map(|k| &k.key[..]));
        let mut sent = Vec::with_capacity(groups.len());
        for (b, positions) in groups {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let bytes = warmup::fragment(&prefix, &keys, &positions);
            let target = ReplyTarget::Oneshot(tx);
            self.send(router, b, (bytes, None), ReplyKind::Retrieval, target, None)
                .await;
            sent.push(warmup::Sent {
                positions,
                backend: b,
                answer: rx,
            });
        }
        tokio::spawn(warmup::finish(warmup::Pending {
            router: router.clone(),
            prefix,
            keys,
            sent,
            handles: self.handles.clone(),
            queue: self.queue.clone(),
            seq,
        }));
        true
    }

    fn answer_locally(&mut self, req: &Request) {
        match req.command {
            Command::Version => self.queue.push_ready(Reply::Static(VERSION_REPLY)),
            Command::Verbosity => {
                if !req.noreply() {
                    self.queue.push_ready(Reply::Static(reply::OK));
                }
            }
            Command::Quit => self.closing = true,
            Command::Stats => {
                let text = crate::stats::stats_reply(&self.shared, req.key());
                self.queue.push_ready(text);
            }
            _ => self.queue.push_ready(Reply::Static(reply::ERROR)),
        }
    }

    /// Sends one request to backend `b`: `bytes` over this client's connection to a remote
    /// backend (opening or replacing it when needed), or `request` (else `bytes` decoded)
    /// to the embedded cache. Failures are answered into `target`.
    async fn send(
        &mut self,
        router: &Router,
        b: usize,
        bytes: (Bytes, Option<Bytes>),
        kind: ReplyKind,
        target: ReplyTarget,
        request: Option<&Request>,
    ) {
        let backend = match &router.backends()[b] {
            Backend::Remote(pool) => pool,
            Backend::Embedded(state, store) => {
                state.stats.requests.inc();
                let answer = self.execute_embedded(store, request, bytes.0);
                target.deliver(Ok(answer), state);
                return;
            }
        };
        let state = backend.backend();
        state.stats.requests.inc();
        let mut req = UpstreamRequest {
            bytes,
            kind,
            target,
            deadline: Instant::now() + router.config.timeout,
        };
        // A request refused by an ended connection was never written: retrying it on a
        // fresh connection is safe. One retry, then it fails.
        for _ in 0..2 {
            if !matches!(&self.handles[b], Some(h) if !h.is_closed()) {
                // Boxed: the pool checkout future is large and rarely needed; inline it would
                // enlarge every idle connection's task.
                match Box::pin(backend.handle()).await {
                    Ok(h) => self.handles[b] = Some(h),
                    Err(_) => {
                        self.handles[b] = None;
                        req.target.deliver(Err(reply::BACKEND_UNAVAILABLE), state);
                        return;
                    }
                }
            }
            let handle = self.handles[b].as_ref().expect("set just above");
            match handle.send(req).await {
                Ok(()) => return,
                Err(back) => {
                    self.handles[b] = None;
                    req = back;
                }
            }
        }
        req.target.deliver(Err(reply::BACKEND_UNAVAILABLE), state);
    }
}

impl Client {
    /// Runs a request on the embedded cache; a split fragment arrives as bytes and is decoded.
    fn execute_embedded(
        &mut self,
        store: &Store,
        request: Option<&Request>,
        bytes: Bytes,
    ) -> Bytes {
        let mut out = std::mem::take(&mut self.embedded_out);
        match request {
            Some(req) => store.execute(req, &mut out),
            None => store.execute_frame(&bytes, &mut out),
        }
        let answer = out.split().freeze();
        self.embedded_out = out;
        answer
    }
}

/// memroute's answer to `version`.
pub const VERSION_REPLY: &[u8] = concat!("VERSION ", env!("CARGO_PKG_VERSION"), "\r\n").as_bytes();
