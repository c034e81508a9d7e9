//! One client connection: read and decode requests, carry out the plan the router makes for
//! each (see [`crate::plan`]), and write the replies back in request order as soon as each
//! one's predecessors are written.
//!
//! Backpressure: when the client has too many requests in flight, or too much reply memory
//! held or reserved for it (see [`crate::budget`]), memroute stops reading from it instead
//! of buffering more.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::budget::{self, Share};
use crate::clients::Registration;
use crate::counters::WorkerStats;
use crate::exec;
use crate::links::Links;
use crate::plan::{Action, Keys, Local, Plan};
use crate::protocol::codec::{ClientCodec, CodecLimits, Decoded, Stream};
use crate::protocol::reply;
use crate::protocol::request::{Command, Request};
use crate::reply_queue::{Reply, ReplyQueue};
use crate::route::{Listener, Routes, RoutesSlot};
use crate::shared::Shared;
use crate::socket::{spare, Socket};
use crate::tls::ListenerTls;
use crate::write_queue::WriteQueue;

/// A retrieval whose keys arrive in batches.
struct Streaming {
    command: Command,
    exptime: i64,
    /// The line up to its first key (`get `, `gat 10 `, …).
    prefix: Bytes,
    /// The pool refused the command: its keys are ignored.
    refused: bool,
}

/// The state of one client connection.
struct Client<'r> {
    /// Its entry in `stats conns`.
    registration: &'r Registration,
    sock: Socket,
    /// The worker's current routes; reloads replace them.
    slot: RoutesSlot,
    /// The routes this client last used (its `links` index their pools).
    routes: Arc<Routes>,
    /// Its listener in `routes`: the route it serves and its clients' settings.
    listener: Arc<Listener>,
    /// Shutdown: finish what is in flight, then close.
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
    queue: Arc<ReplyQueue>,
    wq: WriteQueue,
    /// This client's part of the process's reply memory.
    share: Share,
    /// This client's connections to the backends.
    links: Links,
    /// No more requests are read (quit, EOF, or a close the protocol asks for).
    closing: bool,
    /// Decoding stopped at a cap with bytes still buffered.
    backlog: bool,
    /// A retrieval being received in batches.
    streaming: Option<Streaming>,
    /// The item being handled is a binary-protocol request.
    binary: bool,
    /// `client_timeout`, and when a request last arrived (kept only with a timeout). Like
    /// memcached's idle_timeout, only a complete request counts as activity, so a client
    /// trickling bytes of a line it never ends is still idle.
    idle_after: Option<std::time::Duration>,
    last_request: Instant,
}

/// Serves one client until it leaves.
pub async fn serve(
    stream: TcpStream,
    slot: RoutesSlot,
    listener: Arc<Listener>,
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
    stop: watch::Receiver<bool>,
    registration: &Registration,
) {
    let routes = slot.load_full();
    let sock = match Socket::new(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("client socket setup failed: {e}");
            return;
        }
    };
    let settings = &listener.config.client;
    let sock = match &settings.tls {
        None => sock,
        Some(tls) => match tls_accept(sock, tls, &stats).await {
            Some(s) => s,
            None => return,
        },
    };
    let idle_after = settings.client_timeout;
    // A client accepted just as shutdown began is served as closing from the start.
    let closing = *stop.borrow();
    let hard_cap = settings.max_client_buffer + settings.item_size_max;
    let share = Share::new(shared.budget().clone());
    let mut client = Client {
        registration,
        sock,
        slot,
        links: Links::new(),
        routes,
        listener,
        stop,
        shared,
        stats,
        queue: Arc::new(ReplyQueue::new(hard_cap)),
        wq: WriteQueue::new(),
        share,
        closing,
        backlog: false,
        streaming: None,
        binary: false,
        idle_after,
        last_request: Instant::now(),
    };
    if let Err(e) = client.run().await {
        tracing::debug!("client connection ended: {e}");
    }
    client.queue.close();
}

/// The TLS handshake with a client of a TLS listener, bounded by its handshake timeout,
/// then the identity check; `None` (counted, logged at debug) when the client may not go on.
async fn tls_accept(sock: Socket, tls: &ListenerTls, stats: &WorkerStats) -> Option<Socket> {
    let conn = match rustls::ServerConnection::new(tls.config.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("TLS session setup failed: {e}");
            return None;
        }
    };
    let sock = sock.with_tls(conn);
    match tokio::time::timeout(tls.handshake_timeout, sock.handshake()).await {
        Err(_) => {
            stats.tls_handshake_timeouts.inc();
            tracing::debug!("TLS handshake timed out");
            return None;
        }
        Ok(Err(e)) => {
            stats.tls_handshake_failures.inc();
            tracing::debug!("TLS handshake failed: {e}");
            return None;
        }
        Ok(Ok(())) => {}
    }
    if let Err(why) = crate::tls::allowed(tls, sock.peer_certificates().as_deref()) {
        stats.tls_clients_refused.inc();
        tracing::debug!("TLS client refused: {why}");
        return None;
    }
    stats.tls_handshakes.inc();
    Some(sock)
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
        let cfg = &self.listener.config.client;
        room.requests < cfg.max_client_inflight
            && room.charge < cfg.max_client_buffer
            && (room.charge == 0 || !self.share.exhausted())
    }

    async fn run(&mut self) -> io::Result<()> {
        let mut codec = ClientCodec::new(CodecLimits {
            item_size_max: self.listener.config.client.item_size_max,
        });
        let mut rbuf = BytesMut::new();
        let mut idle_timer = self.idle_after.map(|d| Box::pin(tokio::time::sleep(d)));
        loop {
            let outstanding = self.queue.take_ready(&mut self.wq);
            if !self.wq.is_empty() || self.sock.pending_output() {
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
            let unsent = !self.wq.is_empty() || self.sock.pending_output();
            if self.closing && !unsent && outstanding.requests == 0 {
                return Ok(());
            }
            let may_send = self.may_send(room);
            let can_read = !self.closing && may_send;
            if self.backlog && may_send {
                // Requests left buffered at a cap: decode them now that replies have
                // drained, without waiting for the client to send more.
                Box::pin(self.handle_input(&mut codec, &mut rbuf, room)).await;
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
                r = self.sock.write(&mut self.wq), if unsent => {
                    r?;
                    self.stats.bytes_written.add((before - self.wq.len()) as u64);
                }
                () = self.queue.notified() => {}
                r = self.sock.read(&mut rbuf), if can_read => {
                    match r? {
                        0 => self.closing = true,
                        n => {
                            self.stats.bytes_read.add(n as u64);
                            // Boxed, once per read: carrying out requests takes a large
                            // future, which an idle client then does not hold.
                            Box::pin(self.handle_input(&mut codec, &mut rbuf, room)).await;
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

    /// Decodes and carries out the requests in `rbuf` while the caps allow (the rest stays
    /// buffered until replies drain). `room` is what the caps saw before the first one.
    async fn handle_input(&mut self, codec: &mut ClientCodec, rbuf: &mut BytesMut, mut room: Room) {
        let mut decoded = false;
        let value_estimate = self.routes.value_estimate(&self.listener.route);
        let max_buffer = self.listener.config.client.max_client_buffer;
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
            if codec.speaks_binary() {
                // The slots this item makes answer in binary (or not: memroute's own packets).
                let ctx = codec.take_binary();
                self.binary = ctx.is_some();
                self.queue.set_binary(ctx);
            }
            room.charge += self.handle_item(item).await;
        }
        // What is left (bytes, or the end a streamed line still owes) is decoded once
        // replies drain, without waiting for the client to send more.
        self.backlog = at_cap && (!rbuf.is_empty() || codec.has_pending());
        if decoded {
            self.registration.touch();
            if self.idle_after.is_some() {
                self.last_request = Instant::now();
            }
        }
    }

    /// Acts on one decoded item; returns the reply bytes it reserved or queued.
    async fn handle_item(&mut self, item: Decoded) -> usize {
        match item {
            Decoded::Request(req) => {
                self.count(&req);
                self.follow_routes();
                let plan = self.routes.plan(&self.listener.route, req);
                self.carry_out(plan).await
            }
            Decoded::Reply(msg) => {
                self.stats.protocol_errors.inc();
                self.push_line(msg)
            }
            Decoded::Skipped { reply, unlink } => {
                self.stats.protocol_errors.inc();
                let held = self.push_line(reply);
                if let Some(key) = unlink {
                    self.follow_routes();
                    let plan = self.routes.plan_unlink(&self.listener.route, key);
                    self.carry_out(plan).await;
                }
                held
            }
            Decoded::Close => {
                self.closing = true;
                0
            }
            Decoded::Packet {
                reply,
                close,
                unlink,
            } => {
                // A binary packet memroute answers itself (malformed, unknown, too large).
                self.stats.protocol_errors.inc();
                self.closing |= close;
                let len = reply.as_ref().map_or(0, Bytes::len);
                if let Some(packet) = reply {
                    self.queue.push_ready(Reply::Data(packet));
                }
                if let Some(key) = unlink {
                    self.follow_routes();
                    let plan = self.routes.plan_unlink(&self.listener.route, key);
                    self.carry_out(plan).await;
                }
                len
            }
            // Boxed: a streamed retrieval's future is large and rare (lines of many keys).
            Decoded::Stream(part) => Box::pin(self.stream(part)).await,
        }
    }

    /// Counts a request in memcached's counters.
    fn count(&self, req: &Request) {
        let stats = &self.stats;
        if self.binary {
            stats.binary_requests.inc();
        } else if req.command.is_meta() {
            stats.meta_requests.inc();
        }
        match req.command {
            c if c.is_retrieval() => stats.cmd_get.add(req.key_count() as u64),
            Command::MetaGet => stats.cmd_get.inc(),
            c if c.is_storage() => stats.cmd_set.inc(),
            Command::MetaSet => stats.cmd_set.inc(),
            Command::FlushAll => stats.cmd_flush.inc(),
            Command::MetaDelete | Command::MetaArithmetic => stats.cmd_other.inc(),
            c if c.is_single_key() => stats.cmd_other.inc(),
            _ => {}
        }
    }

    /// Carries out `plan`; returns the reply bytes it reserved or queued.
    async fn carry_out(&mut self, plan: Plan) -> usize {
        let reserve = plan.reserve;
        match plan.action {
            Action::Answer(local) => self.answer(local),
            _ => {
                if plan.is_split() {
                    self.stats.split_retrievals.inc();
                }
                exec::execute(plan, &self.routes, &mut self.links, &self.queue).await;
                reserve
            }
        }
    }

    /// What memroute answers itself; returns the reply's size.
    fn answer(&mut self, local: Local) -> usize {
        match local {
            Local::Line(line) => self.push_line(line),
            Local::Refusal(line) => {
                self.stats.protocol_errors.inc();
                self.push_line(line)
            }
            Local::Stats(args) => {
                let pool = self.routes.first_router(&self.listener.route);
                let text = crate::stats::stats_reply(
                    &self.shared,
                    &self.listener.config,
                    &pool.config,
                    &args,
                );
                let len = text.len();
                self.queue.push_ready(text);
                len
            }
            Local::Quit => {
                self.closing = true;
                if self.binary {
                    // Binary `Quit` is answered (`QuitQ`'s answer is left out when encoded).
                    self.queue.push_ready(Reply::Static(b""));
                }
                0
            }
        }
    }

    /// Queues a reply line (nothing for an empty one); returns its size.
    fn push_line(&self, msg: &'static [u8]) -> usize {
        if !msg.is_empty() {
            self.queue.push_ready(Reply::Static(msg));
        }
        msg.len()
    }

    /// Moves to the worker's current routes if a reload replaced them, keeping the
    /// connections to backends both have (so request order per backend holds). A client of
    /// a listener the reload removed keeps its last routes.
    fn follow_routes(&mut self) {
        let current = self.slot.load();
        if Arc::ptr_eq(&current, &self.routes) {
            return;
        }
        let next = current.clone();
        drop(current);
        let Some(listener) = next.listener(&self.listener.config.name).cloned() else {
            return;
        };
        self.links.follow(&self.routes.routers, &next.routers);
        self.routes = next;
        self.listener = listener;
    }

    /// One part of a retrieval received in batches.
    async fn stream(&mut self, part: Stream) -> usize {
        match part {
            Stream::Start {
                command,
                exptime,
                prefix,
            } => {
                self.follow_routes();
                let refusal = self.routes.refuses_batches(&self.listener.route, command);
                if let Some(msg) = refusal {
                    self.stats.protocol_errors.inc();
                    self.queue.push_ready(Reply::StreamError(msg));
                }
                self.streaming = Some(Streaming {
                    command,
                    exptime,
                    prefix,
                    refused: refusal.is_some(),
                });
                0
            }
            Stream::Keys(keys) => {
                let Some(s) = &self.streaming else {
                    return 0;
                };
                if s.refused {
                    return 0;
                }
                self.stats.cmd_get.add(keys.len() as u64);
                let keys = Keys {
                    command: s.command,
                    exptime: s.exptime,
                    prefix: s.prefix.clone(),
                    keys,
                };
                let plan = self.routes.plan_batch(&self.listener.route, keys);
                self.carry_out(plan).await
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
}
