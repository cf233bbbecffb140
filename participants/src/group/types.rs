//! The openraft type configuration of a replicated shard, and what its log
//! entries carry.

use crate::engine::Admission;
use paytx_protocol::{Operation, TxnId, Vote};
use paytx_raft::runtime::SeededRuntime;
use serde::{Deserialize, Serialize};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// A shard group's Raft types: an entry carries a [`ShardProposal`]
    /// (the 2PC steps of many transactions); applying one yields a
    /// [`ShardApplied`] (one result per step).
    pub ShardTypeConfig:
        D = ShardProposal,
        R = ShardApplied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<ShardTypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = SeededRuntime,
);

pub type ShardRaft = openraft::Raft<ShardTypeConfig>;
pub type ShardLogStore = paytx_storage::LogStore<ShardTypeConfig>;

/// One 2PC step of one transaction on this shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Phase one. `admission` is what the leader found before proposing
    /// (the channel model's answer, the disk's free space): inputs that are
    /// not functions of the replicated state travel in the entry, so every
    /// replica computes the same vote.
    Prepare { txn: TxnId, ops: Vec<Operation>, admission: Admission },
    /// Phase two, as written by earlier versions (no commit time: applied
    /// with `at_ms` 0). Kept so their logs still decode; never proposed.
    Decide { txn: TxnId, commit: bool },
    /// Phase two. `at_ms`: the coordinator's log time the decision carried,
    /// the commit time of `PutRecordAtCommit` entries — in the entry, so
    /// every replica writes them under the same key. (Appended last: the
    /// variant index is in stored log entries.)
    DecideAt { txn: TxnId, commit: bool, at_ms: u64 },
}

impl ShardCommand {
    pub fn txn(&self) -> TxnId {
        match self {
            ShardCommand::Prepare { txn, .. }
            | ShardCommand::Decide { txn, .. }
            | ShardCommand::DecideAt { txn, .. } => *txn,
        }
    }
}

/// One log entry's payload: steps applied in order, each seeing the ones
/// before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardProposal {
    pub commands: Vec<ShardCommand>,
}

/// What applying one step returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepResult {
    /// The vote on a prepare. `blocked`: a NO given while another prepared
    /// transaction touches the same entities (waiting for its decision may
    /// turn it into a YES, so the leader may park and propose it again).
    Voted { vote: Vote, blocked: bool },
    /// A decision was applied (or was a no-op: decided before).
    Decided,
}

/// The results of one entry, one per command, in order (empty for a blank
/// or membership entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardApplied {
    pub results: Vec<StepResult>,
}
