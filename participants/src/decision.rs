//! Where an in-doubt participant learns a decision.

use crate::messages::Decide;
use paytx_protocol::{BoxFuture, TxnId};

/// Answers "what was decided for `txn`?" on behalf of the coordinator group.
///
/// `Ok` = the decision for `txn`, with the coordinator's log time (see
/// [`Decide::at_ms`]). Under presumed abort the group
/// answers abort for a transaction it has no record of — after first
/// committing that abort through Raft, so no later leader can commit it.
/// `Err` = no answer now (no leader, network); the shard asks again later.
///
/// Production asks the coordinator leader over the transport
/// (`PeerRequest::QueryDecision`); tests and the simulator plug in fakes.
pub trait DecisionSource: Send + Sync + 'static {
    fn query(&self, txn: TxnId) -> BoxFuture<Result<Decide, String>>;
}
