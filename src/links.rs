//! [`Links`]: a client's connections to the backends of every pool it uses, kept while they
//! live so its requests to one backend stay in order, and [`Links::send`], the one path every
//! request upstream takes, a client's, a fallback's and a shadow copy's alike.

use std::sync::Arc;

use bytes::BytesMut;

use crate::backend::{ConnHandle, Message, ReplyTarget, UpstreamRequest};
use crate::error::UpstreamError;
use crate::plan::Dest;
use crate::router::Router;

/// A client's connections to the backends it has used, per pool and backend.
#[derive(Debug, Default)]
pub struct Links {
    pools: Vec<Vec<Option<ConnHandle>>>,
    /// Where the embedded cache writes replies; split off per reply, so reused.
    scratch: BytesMut,
}

impl Clone for Links {
    /// The same connections (a task carrying on a client's request keeps the client's
    /// order); its own scratch.
    fn clone(&self) -> Self {
        Links {
            pools: self.pools.clone(),
            scratch: BytesMut::new(),
        }
    }
}

impl Links {
    /// No connections yet.
    pub fn new() -> Links {
        Links::default()
    }

    /// No connections yet, for sending to `router`'s pool only.
    pub fn for_pool(router: &Router) -> Links {
        let mut links = Links::new();
        links.handles(router);
        links
    }

    /// Moves from `from` to `to` (a reload), keeping the connections to backends both have,
    /// so request order per backend holds across the change.
    pub fn follow(&mut self, from: &[Arc<Router>], to: &[Arc<Router>]) {
        let mut pools = vec![Vec::new(); to.len()];
        for (j, new) in to.iter().enumerate() {
            let old = from.iter().position(|o| o.config.name == new.config.name);
            if let Some(i) = old {
                if let Some(handles) = self.pools.get_mut(i) {
                    pools[j] = keep(std::mem::take(handles), &from[i], new);
                }
            }
        }
        self.pools = pools;
    }

    /// Moves this pool's connections from router `from` to `to` (the same pool, reloaded).
    pub fn follow_pool(&mut self, from: &Router, to: &Router) {
        let old = std::mem::take(self.handles(from));
        let kept = keep(old, from, to);
        *self.handles(to) = kept;
    }

    /// The connection slots of `router`'s pool.
    fn handles(&mut self, router: &Router) -> &mut Vec<Option<ConnHandle>> {
        if self.pools.len() <= router.pool {
            self.pools.resize(router.pool + 1, Vec::new());
        }
        let handles = &mut self.pools[router.pool];
        if handles.len() < router.backends().len() {
            handles.resize(router.backends().len(), None);
        }
        handles
    }

    /// Sends `message` to `dest`, a backend of one of `routers` (a worker's pools).
    pub async fn send(
        &mut self,
        routers: &[Arc<Router>],
        dest: Dest,
        message: Message,
        target: ReplyTarget,
    ) {
        self.send_to(&routers[dest.pool], dest.backend, message, target)
            .await
    }

    /// Sends `message` to backend `b` of `router` (the embedded cache answers at once),
    /// opening or replacing this client's connection to it when needed. Failures are
    /// answered into `target`.
    pub async fn send_to(
        &mut self,
        router: &Router,
        b: usize,
        message: Message,
        target: ReplyTarget,
    ) {
        let backend = &router.backends()[b];
        backend.stats.requests.inc();
        if let Some(store) = backend.store() {
            message.execute(store, &mut self.scratch);
            backend.stats.replies.inc();
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
        let handles = self.handles(router);
        for _ in 0..2 {
            if !matches!(&handles[b], Some(h) if !h.is_closed()) {
                // Boxed: the checkout future is large and rarely needed; inline it would
                // enlarge every idle connection's task.
                match Box::pin(connections.handle()).await {
                    Ok(h) => handles[b] = Some(h),
                    Err(e) => {
                        handles[b] = None;
                        req.target.deliver(Err(e), backend);
                        return;
                    }
                }
            }
            let handle = handles[b].as_ref().expect("set just above");
            match handle.send(req).await {
                Ok(()) => return,
                Err(back) => {
                    handles[b] = None;
                    req = back;
                }
            }
        }
        req.target.deliver(Err(UpstreamError::Unavailable), backend);
    }
}

/// `handles` (for `from`'s backends) rearranged for `to`'s backends: kept where the backend
/// is the same object.
fn keep(
    mut handles: Vec<Option<ConnHandle>>,
    from: &Router,
    to: &Router,
) -> Vec<Option<ConnHandle>> {
    let mut out = vec![None; to.backends().len()];
    for (i, b) in to.backends().iter().enumerate() {
        if let Some(j) = from.backends().iter().position(|o| Arc::ptr_eq(o, b)) {
            out[i] = handles.get_mut(j).and_then(Option::take);
        }
    }
    out
}
