//! Applying a shard group's log entry to the engine: pure and
//! deterministic, so every replica that applies the same entries holds the
//! same state and computes the same votes.

use crate::engine::{Engine, Prepared};
use crate::group::types::{ShardCommand, ShardProposal, StepResult};
use paytx_protocol::{TxnId, Vote};

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
        ShardCommand::Decide { txn, commit } => apply_decision(engine, *txn, *commit, 0),
        ShardCommand::DecideAt { txn, commit, at_ms } => apply_decision(engine, *txn, *commit, *at_ms),
    }
}

fn apply_decision(engine: &mut Engine, txn: TxnId, commit: bool, at_ms: u64) -> StepResult {
    match commit {
        true => {
            if engine.commit(txn, at_ms).is_none() && !engine.is_committed(txn) {
                tracing::debug!(shard = %engine.shard(), %txn, "commit of a transaction not prepared here: decided before");
            }
            StepResult::Decided
        }
        false => {
            if engine.is_committed(txn) {
                tracing::error!(shard = %engine.shard(), %txn, "abort of a committed transaction: conflicting decisions; ignored");
            } else {
                engine.abort(txn);
            }
            StepResult::Decided
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Admission;
    use paytx_protocol::ids::{sort_key, FIRST_ORDERED_NS};
    use paytx_protocol::{EntityKind, Operation, Partition, ShardId};

    const RECORDS: ShardId = ShardId { kind: EntityKind::Record, index: 0 };

    fn txn(seq: u64) -> TxnId {
        TxnId { term: 1, node: 1, seq }
    }

    fn prepare(seq: u64, partition: Partition) -> ShardCommand {
        let ops = vec![Operation::PutRecordAtCommit { partition, number: seq, value: vec![seq as u8] }];
        ShardCommand::Prepare { txn: txn(seq), ops, admission: Admission::default() }
    }

    #[test]
    fn every_replica_stores_a_commit_timed_entry_under_the_time_in_the_log_entry() {
        let lines = Partition::new(FIRST_ORDERED_NS + 6, b"mch_1").unwrap();
        let log = [
            ShardProposal { commands: vec![prepare(1, lines), prepare(2, lines)] },
            ShardProposal {
                commands: vec![
                    ShardCommand::DecideAt { txn: txn(1), commit: true, at_ms: 1_000 },
                    // Written by an earlier version: no time, so 0.
                    ShardCommand::Decide { txn: txn(2), commit: true },
                    // A re-sent decision of a committed transaction: no-op.
                    ShardCommand::DecideAt { txn: txn(1), commit: true, at_ms: 9_000 },
                ],
            },
        ];
        let replay = || {
            let mut engine = Engine::new(RECORDS, &[]);
            for proposal in &log {
                apply_proposal(&mut engine, proposal, 64);
            }
            engine
        };
        let (a, b) = (replay(), replay());
        assert_eq!(a.export(), b.export(), "replicas agree");
        assert_eq!(a.record(lines.key(sort_key(1_000, 1))).map(|view| view.value), Some(vec![1]));
        assert_eq!(a.record(lines.key(sort_key(0, 2))).map(|view| view.value), Some(vec![2]));
        assert_eq!(a.record(lines.key(sort_key(9_000, 1))), None);
        assert_eq!(a.status().entities, 2);
    }
}
