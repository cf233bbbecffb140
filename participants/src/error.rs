//! Why a participant could not do what it was asked. These are failures of
//! the participant itself (disk, journal, configuration), not reasons to
//! abort a transaction — those are votes (`Vote::No(AbortReason)`).

use paytx_protocol::ShardId;
use paytx_storage::DiskError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParticipantError {
    /// A read, write or fsync of the journal failed. Fail-stop: the shard
    /// stops rather than answer from memory that may be ahead of the disk
    /// (after a failed fsync the kernel may have dropped dirty pages).
    #[error("shard {shard}: disk failure, the shard stops: {source}")]
    Disk {
        shard: ShardId,
        #[source]
        source: DiskError,
    },
    /// A stored record fails its checksum or does not decode. The data
    /// directory needs repair; nothing is skipped silently.
    #[error("corrupt journal record in {space} at key {key}: {reason}; the data directory needs repair")]
    CorruptJournal { space: String, key: String, reason: String },
    /// Every record is intact but together they describe an impossible
    /// state (e.g. a hold above a balance, a record under a foreign key).
    #[error("inconsistent journal {space} at key {key}: {reason}; the data directory needs repair")]
    InconsistentJournal { space: String, key: String, reason: String },
    /// The configuration cannot work (e.g. a zero check interval).
    #[error("invalid participant configuration for shard {shard}: {reason}")]
    InvalidConfig { shard: ShardId, reason: String },
    /// This replica of a replicated shard is not its group's leader: the
    /// request goes to `leader_hint` (when known) instead.
    #[error("this replica does not lead shard {shard} (leader hint: {leader_hint:?})")]
    NotLeader { shard: ShardId, leader_hint: Option<u64> },
    /// The shard's Raft group could not replicate the step (no quorum in
    /// time, shutting down): nothing was promised; the caller retries.
    #[error("shard {shard}: replication failed: {reason}")]
    Replication { shard: ShardId, reason: String },
    /// The shard stopped after an earlier failure and answers nothing any
    /// more; the node must restart it from its journal.
    #[error("shard {shard} has stopped after an earlier failure ({reason}); restart the node")]
    Stopped { shard: ShardId, reason: String },
    /// A prepare of a [`crate::PrepareMany`] conflicts with a transaction
    /// prepared here and not yet decided. A batch does not wait for the
    /// lock (it would hold back every other vote of the batch); nothing was
    /// reserved, and the coordinator sends the prepare again alone.
    #[error("shard {shard}: the prepare waits for a lock; sent again alone")]
    Blocked { shard: ShardId },
}

impl ParticipantError {
    /// Wraps a disk error; a corrupt record keeps its own variant so the
    /// operator sees which key to look at.
    pub(crate) fn from_disk(shard: ShardId, error: DiskError) -> Self {
        match error {
            DiskError::Corrupt { space, key_hex, reason } => {
                ParticipantError::CorruptJournal { space, key: format!("hex {key_hex}"), reason }
            }
            other => ParticipantError::Disk { shard, source: other },
        }
    }
}
