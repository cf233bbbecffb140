//! Read-only questions the admin API asks the driver.

use super::CoordinatorDriver;
use crate::engine::TxnProgress;
use actix::prelude::*;
use paytx_protocol::TxnId;

/// What this node's engine knows of one transaction (`None`: it does not
/// drive it — a follower, or a transaction already finished).
#[derive(Message)]
#[rtype(result = "Option<TxnProgress>")]
pub struct GetTxnProgress(pub TxnId);

impl Handler<GetTxnProgress> for CoordinatorDriver {
    type Result = MessageResult<GetTxnProgress>;

    fn handle(&mut self, msg: GetTxnProgress, _ctx: &mut Context<Self>) -> Self::Result {
        let progress = self.engine.progress(&msg.0).map(|mut progress| {
            progress.times = self.timeline.get(&msg.0).cloned();
            progress
        });
        MessageResult(progress)
    }
}
