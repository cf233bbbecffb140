//! Answering a message that carries many prepares or decisions: every
//! item runs as its own actor future (exactly as a lone message would),
//! and the batch's answer collects their results in the items' order.

use crate::error::ParticipantError;
use actix::fut::{wrap_future, ActorFutureExt};
use actix::{Actor, AsyncContext, Context, ResponseActFuture};
use paytx_protocol::ShardId;
use tokio::sync::oneshot;

/// The answer of a batch message: every item's future runs in the actor's
/// context on its own (an item waiting for its entry holds up no other),
/// and the answer lists their results in the items' order.
pub(crate) fn answer_all<A, T>(
    shard: ShardId,
    items: Vec<ResponseActFuture<A, Result<T, ParticipantError>>>,
    ctx: &mut Context<A>,
) -> ResponseActFuture<A, Result<Vec<Result<T, ParticipantError>>, ParticipantError>>
where
    A: Actor<Context = Context<A>>,
    T: 'static,
{
    let results = items.into_iter().map(|item| answer_later(item, ctx)).collect();
    Box::pin(wrap_future(collect(shard, results)).map(|answers, _act, _ctx| Ok(answers)))
}

/// Runs `future` in the actor's context; its result arrives on the receiver.
fn answer_later<A, T>(future: ResponseActFuture<A, T>, ctx: &mut Context<A>) -> oneshot::Receiver<T>
where
    A: Actor<Context = Context<A>>,
    T: 'static,
{
    let (answer, result) = oneshot::channel();
    ctx.spawn(future.map(move |value, _act, _ctx| {
        // The caller may have gone away: nothing to answer then.
        let _ = answer.send(value);
    }));
    result
}

/// Waits for every item's answer, in order. An item whose future was
/// dropped (the actor stopped) answers `Stopped`.
async fn collect<T>(
    shard: ShardId,
    results: Vec<oneshot::Receiver<Result<T, ParticipantError>>>,
) -> Vec<Result<T, ParticipantError>> {
    let mut answers = Vec::with_capacity(results.len());
    for result in results {
        answers.push(result.await.unwrap_or_else(|_| {
            Err(ParticipantError::Stopped { shard, reason: "the shard stopped before answering".into() })
        }));
    }
    answers
}
