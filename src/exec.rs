//! Carrying out a plan: reserving the client's reply slot in request order and sending
//! what the plan says where it says, over the client's [`Links`] (warm-up's retrievals
//! through [`crate::warmup`]).

use std::sync::Arc;

use crate::backend::ReplyTarget;
use crate::links::Links;
use crate::plan::{Action, Delivery, Plan};
use crate::reply_queue::ReplyQueue;
use crate::router::Router;
use crate::warmup;

/// Carries out `plan`'s sends over a client's `links`, its replies going to `queue`:
/// reserves the reply slot (in request order) and sends what the plan says where it says.
/// A local answer is the client's to give.
pub async fn execute(plan: Plan, router: &Arc<Router>, links: &mut Links, queue: &Arc<ReplyQueue>) {
    match plan.action {
        Action::Answer(_) => unreachable!("a local answer is the client's"),
        Action::Warm(warm) => warmup::begin(warm, plan.reserve, router, links, queue).await,
        Action::WarmMeta(warm) => {
            warmup::begin_meta(warm, plan.reserve, router, links, queue).await
        }
        Action::One {
            backend,
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
            links.send(router, backend, message, target).await;
            if let Some((b, message)) = also {
                links.send(router, b, message, ReplyTarget::Discard).await;
            }
        }
        Action::Gather { gather, sends } => {
            let seq = gather.map(|g| queue.reserve_gather(g, plan.reserve));
            for (part, (b, message)) in sends.into_iter().enumerate() {
                let target = match seq {
                    Some(seq) => ReplyTarget::Part(queue.clone(), seq, part as u16),
                    None => ReplyTarget::Discard,
                };
                links.send(router, b, message, target).await;
            }
        }
    }
}
