//! One client connection: read and decode requests, send each where the router says, and
//! write the replies back in request order as soon as each one's predecessors are written.
//!
//! Backpressure: when the client has too many requests in flight, or too much reply memory
//! held or reserved for it (see [`crate::budget`]), memroute stops reading from it instead of
//! buffering more.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::budget::{self, Share, LINE_RESERVE};
use crate::config::BackendProtocol;
use crate::embedded::Store;
use crate::protocol::codec::{ClientCodec, CodecLimits, Decoded, Stream};
use crate::protocol::reply::{self, ReplyKind};
use crate::protocol::request::{Command, Request};
use crate::reply_queue::{Gather, Reply, ReplyQueue, RetrievalFailure};
use crate::router::{fragment_request, Backend, Route, Router};
use crate::server::Shared;
use crate::socket::{spare, Socket};
use crate::stats::conns::Registration;
use crate::stats::WorkerStats;
use crate::tyrant;
use crate::upstream::{ConnHandle, ReplyTarget, UpstreamRequest};
use crate::warmup::{self, WarmKey};
use crate::worker::RouterSlot;
use crate::write_queue::WriteQueue;

/// A retrieval whose keys arrive in batches.
struct Streaming {
    /// The line up to its first key (`get `, `gat 10 `, …), for the requests sent upstream.
    prefix: Bytes,
    /// The pool refused the command (a Tokyo Tyrant pool and `gets`): keys are ignored.
    refused: bool,
}

/// The state of one client connection.
struct Client<'r> {
    /// Its entry in `stats conns`.
    registration: &'r Registration,
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
    /// This client's part of the process's reply memory.
    share: Share,
    /// The connection this client uses to each backend, kept while it lives so the client's
    /// requests to one backend stay in order.
    handles: Vec<Option<ConnHandle>>,
    /// No more requests are read (quit, EOF, or a fatal protocol error).
    closing: bool,
    /// Decoding stopped at a cap with bytes still buffered.
    backlog: bool,
    /// A retrieval being received in batches.
    streaming: Option<Streaming>,
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
    registration: &Registration,
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
    let hard_cap = router.config.max_client_buffer + router.config.item_size_max;
    let share = Share::new(shared.budget().clone());
    let mut client = Client {
        registration,
        sock,
        slot,
        router,
        stop,
        shared,
        stats,
        queue: Arc::new(ReplyQueue::new(hard_cap)),
        wq: WriteQueue::new(),
        share,
        handles,
        closing,
        backlog: false,
        streaming: None,
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

/// What the client may still send upstream.
#[derive(Clone, Copy)]
struct Room {
    /// Requests in flight (replies not yet taken).
    requests: usize,
    /// Reply bytes held and reserved for the client, including those not yet written.
    charge: usize,
}

impl Client<'_> {
    /// Whether another request may be read and sent: below the in-flight and memory caps,
    /// and, when the process is over its memory budget, only if the client holds nothing.
    fn may_send(&self, room: Room) -> bool {
        let cfg = &self.router.config;
        room.requests < cfg.max_client_inflight
            && room.charge < cfg.max_client_buffer
            && (room.charge == 0 || !self.share.exhausted())
    }

    async fn run(&mut self) -> io::Result<()> {
        let router = self.router.clone();
        let cfg = &router.config;
        let mut codec = ClientCodec::new(CodecLimits {
            item_size_max: cfg.item_size_max,
        });
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
            self.queue.set_unwritten(self.wq.len());
            let room = Room {
                requests: outstanding.requests,
                charge: outstanding.held + outstanding.reserved + self.wq.len(),
            };
            self.share.set(room.charge);
            if self.closing && self.wq.is_empty() && outstanding.requests == 0 {
                return Ok(());
            }
            let may_send = self.may_send(room);
            let can_read = !self.closing && may_send;
            if self.backlog && may_send {
                // Requests left buffered at a cap: decode them now that replies have
                // drained, without waiting for the client to send more.
                self.handle_input(&mut codec, &mut rbuf, room).await;
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
                            self.handle_input(&mut codec, &mut rbuf, room).await;
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

    /// Decodes and dispatches the requests in `rbuf` while the caps allow (the rest stays
    /// buffered until replies drain). `room` is what the caps saw before the first one.
    async fn handle_input(&mut self, codec: &mut ClientCodec, rbuf: &mut BytesMut, mut room: Room) {
        let mut decoded = false;
        let value_estimate = self.router.value_estimate();
        let max_buffer = self.router.config.max_client_buffer;
        let mut at_cap = false;
        while !self.closing {
            if decoded && !self.may_send(room) {
                at_cap = true;
                break;
            }
            codec.set_batch_keys(budget::keys_allowed(
                room.charge,
                max_buffer,
                value_estimate,
            ));
            let Some(item) = codec.decode_item(rbuf) else {
                break;
            };
            decoded = true;
            room.requests += 1;
            room.charge += self.handle_item(item, value_estimate).await;
        }
        self.backlog = at_cap && !rbuf.is_empty();
        if decoded {
            self.registration.touch();
            if self.idle_after.is_some() {
                self.last_request = Instant::now();
            }
        }
    }

    /// Acts on one decoded item; returns the reply bytes it reserved or queued.
    async fn handle_item(&mut self, item: Decoded, value_estimate: usize) -> usize {
        match item {
            Decoded::Request(req) => self.dispatch(req, value_estimate).await,
            Decoded::Reply(msg) => {
                self.stats.protocol_errors.inc();
                self.push_line(msg)
            }
            Decoded::TooLarge { reply, unlink } => {
                self.stats.protocol_errors.inc();
                let held = self.push_line(reply);
                if let Some(key) = unlink {
                    // memcached removes the old value of a `set` it refused, so that a
                    // failed write cannot leave a stale value readable.
                    self.follow_router();
                    let router = self.router.clone();
                    let b = router.owner(&key);
                    let delete = [&b"delete "[..], &key, b"\r\n"].concat();
                    let bytes = (Bytes::from(delete), None);
                    self.send(
                        &router,
                        b,
                        bytes,
                        ReplyKind::Line,
                        ReplyTarget::Discard,
                        None,
                    )
                    .await;
                }
                held
            }
            Decoded::Close => {
                self.closing = true;
                0
            }
            Decoded::Binary { opcode, opaque } => {
                // The binary protocol is not served: answer as memcached answers an opcode it
                // does not know, then close.
                self.stats.protocol_errors.inc();
                let answer = reply::binary_unknown_command(opcode, opaque);
                let len = answer.len();
                self.queue.push_ready(Reply::Data(answer));
                self.closing = true;
                len
            }
            Decoded::Stream(part) => self.stream(part, value_estimate).await,
        }
    }

    /// Queues a reply line (nothing for an empty one); returns its size.
    fn push_line(&self, msg: &'static [u8]) -> usize {
        if !msg.is_empty() {
            self.queue.push_ready(Reply::Static(msg));
        }
        msg.len()
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

    /// One part of a retrieval received in batches.
    async fn stream(&mut self, part: Stream, value_estimate: usize) -> usize {
        match part {
            Stream::Start { command, prefix } => {
                self.follow_router();
                let refused = self.router.config.protocol == BackendProtocol::TokyoTyrant
                    && command != Command::Get;
                if refused {
                    // ttserver has no cas uniques (and no gat): the whole retrieval fails.
                    self.stats.protocol_errors.inc();
                    let msg = match command {
                        Command::Gets => tyrant::GETS_UNSUPPORTED,
                        _ => tyrant::UNSUPPORTED,
                    };
                    self.queue.push_ready(Reply::StreamError(msg));
                }
                self.streaming = Some(Streaming { prefix, refused });
                0
            }
            Stream::Keys(keys) => {
                let Some(s) = &self.streaming else {
                    return 0;
                };
                if s.refused {
                    return 0;
                }
                let prefix = s.prefix.clone();
                self.stats.cmd_get.add(keys.len() as u64);
                let router = self.router.clone();
                let key_bytes: usize = keys.iter().map(Bytes::len).sum();
                let reserve = budget::retrieval_reserve(keys.len(), key_bytes, value_estimate);
                let tyrant = router.config.protocol == BackendProtocol::TokyoTyrant;
                if router.warming() && !tyrant {
                    let keys = keys.iter().cloned();
                    if self
                        .warm_retrieval(&router, keys, prefix.clone(), reserve, true)
                        .await
                    {
                        return reserve;
                    }
                }
                let groups = router.group_by_owner(keys.iter().map(|k| &k[..]));
                self.gather(&router, &prefix, keys, groups, Gather::batch, reserve)
                    .await;
                reserve
            }
            Stream::End => {
                if self.streaming.take().is_some() {
                    self.queue.push_ready(Reply::StreamEnd);
                }
                reply::END.len()
            }
            Stream::Failed(msg) => {
                self.stats.protocol_errors.inc();
                self.streaming = None;
                self.queue.push_ready(Reply::StreamError(msg));
                self.queue.push_ready(Reply::StreamEnd);
                msg.len()
            }
        }
    }

    /// Sends one retrieval per backend in `groups` (each for its keys' positions, as
    /// `prefix` and those keys) and gathers the answers into one slot, merged in key order.
    async fn gather(
        &mut self,
        router: &Router,
        prefix: &[u8],
        keys: Vec<Bytes>,
        groups: Vec<(usize, Vec<u16>)>,
        gather: fn(Vec<Bytes>, Vec<Vec<u16>>, RetrievalFailure) -> Gather,
        reserve: usize,
    ) {
        let requests: Vec<(usize, Bytes)> = groups
            .iter()
            .map(|(b, positions)| (*b, fragment_request(prefix, positions, |p| &keys[p])))
            .collect();
        let positions = groups.into_iter().map(|(_, p)| p).collect();
        let policy = router.config.retrieval_failure;
        let seq = self
            .queue
            .reserve_gather(gather(keys, positions, policy), reserve);
        let kind = retrieval_kind(router);
        for (part, (b, bytes)) in requests.into_iter().enumerate() {
            let target = ReplyTarget::Part(self.queue.clone(), seq, part as u16);
            self.send(router, b, (bytes, None), kind, target, None)
                .await;
        }
    }

    /// Sends a request where the router says; returns the reply bytes reserved for it.
    async fn dispatch(&mut self, req: Request, value_estimate: usize) -> usize {
        self.follow_router();
        let stats = &self.stats;
        match req.command {
            c if c.is_retrieval() => stats.cmd_get.add(req.key_count() as u64),
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
                return if req.noreply() {
                    0
                } else {
                    self.push_line(msg)
                };
            }
        }
        let reserve = match req.command.is_retrieval() {
            true => budget::retrieval_reserve(req.key_count(), req.key().len(), value_estimate),
            false => LINE_RESERVE,
        };
        if req.command.is_storage() {
            router.record_value_size(req.key(), req.data().len());
        }
        let mut invalidate = None;
        if router.warming() && !tyrant {
            if req.command.is_retrieval() {
                let prefix = req.frame.slice(..req.keys_start as usize);
                if self
                    .warm_retrieval(&router, req.key_slices(), prefix, reserve, false)
                    .await
                {
                    return reserve;
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
                    ReplyTarget::Slot(self.queue.clone(), self.queue.reserve(reserve), instead)
                };
                let (kind, bytes) = match req.command {
                    c if c.is_retrieval() => {
                        (retrieval_kind(&router), upstream_bytes(&req, tyrant))
                    }
                    // Appended data lands after the stored flags prefix and needs none of its own.
                    Command::Set | Command::Add | Command::Replace if preserve_flags => {
                        (ReplyKind::Line, tyrant::encode_flags(&req))
                    }
                    _ => (ReplyKind::Line, upstream_bytes(&req, tyrant)),
                };
                self.send(&router, b, bytes, kind, target, Some(&req)).await;
                if let Some(prev) = invalidate {
                    let delete = [&b"delete "[..], req.key(), b"\r\n"].concat();
                    let (bytes, target) = ((Bytes::from(delete), None), ReplyTarget::Discard);
                    self.send(&router, prev, bytes, ReplyKind::Line, target, None)
                        .await;
                }
                if req.noreply() {
                    0
                } else {
                    reserve
                }
            }
            Route::Split(fragments) => {
                self.stats.split_retrievals.inc();
                let keys: Vec<Bytes> = req.key_slices().collect();
                let prefix = &req.line()[..req.keys_start as usize];
                self.gather(&router, prefix, keys, fragments, Gather::multi_get, reserve)
                    .await;
                reserve
            }
            Route::All => {
                let n = router.pool_backends();
                let noreply = req.noreply();
                let (gather, kind) = match crate::stats::merge::forwarded(req.key()) {
                    Some(merge) if req.command == Command::Stats => {
                        (Gather::stats(n, merge), ReplyKind::Stats)
                    }
                    _ => (Gather::broadcast(n), ReplyKind::Line),
                };
                let seq = (!noreply).then(|| self.queue.reserve_gather(gather, LINE_RESERVE));
                for b in 0..n {
                    let target = match seq {
                        Some(seq) => ReplyTarget::Part(self.queue.clone(), seq, b as u16),
                        None => ReplyTarget::Discard,
                    };
                    self.send(
                        &router,
                        b,
                        upstream_bytes(&req, tyrant),
                        kind,
                        target,
                        Some(&req),
                    )
                    .await;
                }
                if noreply {
                    0
                } else {
                    LINE_RESERVE
                }
            }
            Route::Local => self.answer_locally(&req),
        }
    }

    /// A retrieval during warm-up with keys that moved: asks the new owners now (in request
    /// order) and leaves the retries on previous owners to a background task. `prefix` is
    /// the command text before the keys; `batch` says the keys are one batch of a streamed
    /// retrieval. Returns false when no key moved (the ordinary path applies).
    async fn warm_retrieval(
        &mut self,
        router: &Arc<Router>,
        keys: impl Iterator<Item = Bytes>,
        prefix: Bytes,
        reserve: usize,
        batch: bool,
    ) -> bool {
        let keys: Vec<WarmKey> = keys
            .map(|key| WarmKey {
                previous: router.previous_owner(&key),
                key,
            })
            .collect();
        if keys.iter().all(|k| k.previous.is_none()) {
            return false;
        }
        let seq = self.queue.reserve(reserve);
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
            batch,
        }));
        true
    }

    /// Answers a request memroute handles itself; returns the reply's size.
    fn answer_locally(&mut self, req: &Request) -> usize {
        match req.command {
            Command::Version => self.push_line(reply::VERSION),
            Command::Verbosity if req.noreply() => 0,
            Command::Verbosity => self.push_line(reply::OK),
            Command::Quit => {
                self.closing = true;
                0
            }
            Command::Stats => {
                let text = crate::stats::stats_reply(&self.shared, &self.router.config, req.key());
                let len = text.len();
                self.queue.push_ready(text);
                len
            }
            _ => self.push_line(reply::ERROR),
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

impl Client<'_> {
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

/// How a pool's retrieval replies are framed (and, with preserved flags, rewritten).
fn retrieval_kind(router: &Router) -> ReplyKind {
    match router.config.preserve_flags {
        true => ReplyKind::RetrievalFlagsInValue,
        false => ReplyKind::Retrieval,
    }
}

/// The bytes a request is forwarded as: memcached reads the client's line exactly as memroute
/// did, so it goes unchanged (minus `noreply`); ttserver parses more strictly, so a Tokyo
/// Tyrant pool gets the line rebuilt from the decoded fields.
fn upstream_bytes(req: &Request, tyrant: bool) -> (Bytes, Option<Bytes>) {
    match tyrant {
        true => tyrant::canonical(req),
        false => req.upstream_bytes(),
    }
}
