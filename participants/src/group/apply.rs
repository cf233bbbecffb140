//! Applying a shard group's log entry to the engine: pure and
//! deterministic, so every replica that applies the same entries holds the
//! same state and computes the same votes.

use crate::engine::{Engine, Prepared};
use crate::group::types::{ShardCommand, ShardProposal, StepResult};
use paytx_protocol::Vote;

/// Applies every command of `proposal`, in order.
pub fn apply_proposal(engine: &mut Engine, proposal: &ShardProposal, max_prepared: usize) -> Vec<StepResult> {
    proposal.commands.iter().map(|command| apply_command(engine, command, max_prepared)).collect()
}

/// Applies one command: a prepare validates and reserves against the
/// replicated state and returns the vote; a decision commits or releases.
pub fn apply_command(engine: &mut Engine, command: &ShardCommand, max_prepared: usize) -> StepResult {
    match command {
        ShardCommand::Prepare { txn, ops, admission } => {
            if let Some(reason) = engine.refusal(*txn, *admission, max_prepared) {
                return StepResult::Voted { vote: Vote::No(reason), blocked: false };
            }
            match engine.prepare(*txn, ops) {
                Ok(Prepared::New(_) | Prepared::AlreadyPrepared | Prepared::AlreadyCommitted) => {
                    StepResult::Voted { vote: Vote::Yes, blocked: false }
                }
                Err(reason) => {
                    let blocked = engine.blocked_by_prepared(*txn, ops);
                    StepResult::Voted { vote: Vote::No(reason), blocked }
                }
            }
        }
        ShardCommand::Decide { txn, commit: true } => {
            if engine.commit(*txn).is_none() && !engine.is_committed(*txn) {
                tracing::debug!(shard = %engine.shard(), %txn, "commit of a transaction not prepared here: decided before");
            }
            StepResult::Decided
        }
        ShardCommand::Decide { txn, commit: false } => {
            if engine.is_committed(*txn) {
                tracing::error!(shard = %engine.shard(), %txn, "abort of a committed transaction: conflicting decisions; ignored");
            } else {
                engine.abort(*txn);
            }
            StepResult::Decided
        }
    }
}
