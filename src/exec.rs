//! Carrying out a plan: reserving the client's reply slot in request order and sending
//! what the plan says where it says, over the client's [`Links`] (requests that may be asked
//! again elsewhere through [`crate::fallback`], shadow copies through the worker's
//! [`crate::shadow`] task).

use std::sync::Arc;

use crate::backend::ReplyTarget;
use crate::fallback;
use crate::links::Links;
use crate::plan::{Action, Delivery, Plan};
use crate::reply_queue::ReplyQueue;
use crate::route::Routes;

/// Carries out `plan`'s sends over a client's `links`, its replies going to `queue`:
/// reserves the reply slot (in request order) and sends what the plan says where it says.
/// A local answer is the client's to give.
pub async fn execute(plan: Plan, routes: &Arc<Routes>, links: &mut Links, queue: &Arc<ReplyQueue>) {
    for copy in plan.shadow {
        let router = routes.router(copy.dest.pool).clone();
        routes
            .shadow
            .send(router, copy.dest.backend, copy.message, &copy.stats);
    }
    // The fallback paths (warm-up, failover routes) are boxed: their futures are large and
    // rare, and inline they would enlarge every client task, idle ones included.
    match plan.action {
        Action::Answer(_) => unreachable!("a local answer is the client's"),
        Action::Retrieve(r) => {
            Box::pin(fallback::retrieve(*r, plan.reserve, routes, links, queue)).await
        }
        Action::Chain(c) => Box::pin(fallback::chain(*c, plan.reserve, routes, links, queue)).await,
        Action::Conditional(c) => {
            Box::pin(fallback::conditional(
                *c,
                plan.reserve,
                routes,
                links,
                queue,
            ))
            .await
        }
        Action::One {
            dest,
            message,
            reply,
            also,
        } => {
            let target = match reply {
                Delivery::Slot(fill) => {
                    ReplyTarget::Slot(queue.clone(), queue.reserve(plan.reserve), fill)
                }
                Delivery::Discard => ReplyTarget::Discard,
            };
            links.send(&routes.routers, dest, message, target).await;
            for (d, message) in also {
                links
                    .send(&routes.routers, d, message, ReplyTarget::Discard)
                    .await;
            }
        }
        Action::Gather { gather, sends } => {
            let seq = gather.map(|g| queue.reserve_gather(g, plan.reserve));
            for (part, (dest, message)) in sends.into_iter().enumerate() {
                let target = match seq {
                    Some(seq) => ReplyTarget::Part(queue.clone(), seq, part as u16),
                    None => ReplyTarget::Discard,
                };
                links.send(&routes.routers, dest, message, target).await;
            }
        }
    }
}
