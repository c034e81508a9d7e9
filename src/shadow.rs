//! Shadow traffic: copies of requests sent to a shadow pool from a task of each worker's
//! own, their answers dropped (failures counted). A client hands a copy over without
//! waiting; when the queue is full (the shadow pool is slower than the traffic) the copy is
//! dropped and counted, so a shadow pool can never slow or fail the clients' requests.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::backend::{Message, ReplyTarget};
use crate::counters::RouteStats;
use crate::links::Links;
use crate::router::Router;

/// Copies waiting for the shadow task, per worker; more are dropped.
const QUEUE: usize = 4096;

/// One copy: the pool's router, the backend, the message and the shadow route's counters.
type Copy = (Arc<Router>, usize, Message, Arc<RouteStats>);

/// Where a worker's clients hand shadow copies.
#[derive(Clone, Debug)]
pub struct ShadowSender {
    tx: mpsc::Sender<Copy>,
}

impl ShadowSender {
    /// Starts worker's shadow task (on the current runtime) and returns its sender.
    pub fn start() -> ShadowSender {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx));
        ShadowSender { tx }
    }

    /// Hands `message` for backend `backend` of `router`'s pool to the shadow task, or
    /// drops it when the task is behind.
    pub fn send(
        &self,
        router: Arc<Router>,
        backend: usize,
        message: Message,
        stats: &Arc<RouteStats>,
    ) {
        match self.tx.try_send((router, backend, message, stats.clone())) {
            Ok(()) => stats.shadow_sends.inc(),
            Err(_) => stats.shadow_drops.inc(),
        }
    }
}

/// Sends the copies over connections of its own, per pool (followed across reloads by the
/// router's identity, so connections to unchanged backends are kept).
async fn run(mut rx: mpsc::Receiver<Copy>) {
    let mut pools: HashMap<String, (Arc<Router>, Links)> = HashMap::new();
    while let Some((router, backend, message, stats)) = rx.recv().await {
        let (known, links) = pools
            .entry(router.config.name.clone())
            .or_insert_with(|| (router.clone(), Links::for_pool(&router)));
        if !Arc::ptr_eq(known, &router) {
            links.follow_pool(known, &router);
            *known = router.clone();
        }
        links
            .send_to(&router, backend, message, ReplyTarget::Shadow(stats))
            .await;
    }
}
