//! [`Links`]: a client's connections to its router's backends, kept while they live so its
//! requests to one backend stay in order, and [`Links::send`], the one path every request
//! upstream takes, a client's and warm-up's alike.

use std::sync::Arc;

use bytes::BytesMut;

use crate::backend::{ConnHandle, Message, ReplyTarget, UpstreamRequest};
use crate::error::UpstreamError;
use crate::router::Router;

/// A client's connections to the backends of its router, by backend index.
#[derive(Debug, Default)]
pub struct Links {
    handles: Vec<Option<ConnHandle>>,
    /// Where the embedded cache writes replies; split off per reply, so reused.
    scratch: BytesMut,
}

impl Clone for Links {
    /// The same connections (a warm-up task keeps the client's order); its own scratch.
    fn clone(&self) -> Self {
        Links {
            handles: self.handles.clone(),
            scratch: BytesMut::new(),
        }
    }
}

impl Links {
    /// No connections yet to `backends` backends.
    pub fn new(backends: usize) -> Links {
        Links {
            handles: vec![None; backends],
            scratch: BytesMut::new(),
        }
    }

    /// Moves from router `from` to `to` (a reload), keeping the connections to backends
    /// both have, so request order per backend holds across the change.
    pub fn follow(&mut self, from: &Router, to: &Router) {
        let mut handles = vec![None; to.backends().len()];
        for (i, b) in to.backends().iter().enumerate() {
            if let Some(j) = from.backends().iter().position(|o| Arc::ptr_eq(o, b)) {
                handles[i] = self.handles[j].take();
            }
        }
        self.handles = handles;
    }

    /// Sends `message` to backend `b` of `router` (the embedded cache answers at once),
    /// opening or replacing this client's connection to it when needed. Failures are
    /// answered into `target`.
    pub async fn send(&mut self, router: &Router, b: usize, message: Message, target: ReplyTarget) {
        let backend = &router.backends()[b];
        backend.stats.requests.inc();
        if let Some(store) = backend.store() {
            message.execute(store, &mut self.scratch);
            let answer = self.scratch.split().freeze();
            target.deliver(Ok(answer), backend);
            return;
        }
        let Some(connections) = router.connections(b) else {
            unreachable!("a backend is remote or embedded")
        };
        let encoded = message.encode(router.dialect);
        let mut req = UpstreamRequest {
            bytes: encoded.bytes,
            kind: encoded.kind,
            keys: encoded.keys,
            target,
        };
        // A request refused by an ended connection was never written: retrying it on a
        // fresh connection is safe. One retry, then it fails.
        for _ in 0..2 {
            if !matches!(&self.handles[b], Some(h) if !h.is_closed()) {
                // Boxed: the checkout future is large and rarely needed; inline it would
                // enlarge every idle connection's task.
                match Box::pin(connections.handle()).await {
                    Ok(h) => self.handles[b] = Some(h),
                    Err(e) => {
                        self.handles[b] = None;
                        req.target.deliver(Err(e), backend);
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
        req.target.deliver(Err(UpstreamError::Unavailable), backend);
    }
}
