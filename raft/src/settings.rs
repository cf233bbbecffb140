//! Raft timings and limits (`[raft]` in the node configuration), shared by
//! every group of a node, and openraft's `Config` derived from them.

use crate::network::RPC_FRAME_OVERHEAD_BYTES;
use crate::{NodeId, PaytxRaftConfig};
use openraft::{BasicNode, Raft, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Raft timings and limits (all in milliseconds / entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries.
    pub snapshot_every_entries: u64,
    /// Entries kept behind the snapshot; a follower further behind catches
    /// up by snapshot.
    pub keep_entries_after_snapshot: u64,
    /// Most entries in one AppendEntries (also bounded in bytes: an
    /// AppendEntries that would not fit in a frame is sent with fewer).
    pub max_payload_entries: u64,
    /// Most commands in one proposal (one Raft entry).
    pub max_batch_commands: u64,
    /// Most encoded bytes of commands in one proposal; 0 = derived from
    /// `[limits] max_frame_bytes` (a quarter of a frame, so an entry always
    /// fits in an AppendEntries).
    pub max_batch_bytes: u64,
    /// Most proposals outstanding at once; while they are, the next batch
    /// accumulates.
    pub max_proposals_in_flight: u64,
    /// How long, in seconds of log time, the coordinator keeps the
    /// idempotency key of a finished transaction after forgetting it (a
    /// retry within it gets the first outcome; after it, it runs as new).
    pub key_retention_secs: u64,
    /// The count-based retention of earlier versions: still parsed, so a
    /// configuration that sets it is refused with a message naming its
    /// replacement ([`RaftSettings::key_retention_secs`]) rather than
    /// silently ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_retention: Option<u64>,
    /// A group's leader hands the leadership to the group's preferred
    /// replica once that replica has kept up for this long (a node that
    /// returned gets its leaderships back: `handover`); 0 = never.
    pub leader_settle_ms: u64,
}

/// Default for [`RaftSettings::key_retention_secs`]: 24 hours, as Stripe
/// keeps its idempotency keys.
pub const DEFAULT_KEY_RETENTION_SECS: u64 = 86_400;

/// Longest [`RaftSettings::key_retention_secs`] accepted: a year. Keys are
/// kept on disk for that long at the cluster's whole throughput, so the
/// bound is about disk, and keeps every millisecond sum far from overflow.
pub const MAX_KEY_RETENTION_SECS: u64 = 366 * 86_400;

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_every_entries: 20_000,
            keep_entries_after_snapshot: 5_000,
            max_payload_entries: 512,
            max_batch_commands: 2_048,
            max_batch_bytes: 0,
            max_proposals_in_flight: 2,
            key_retention_secs: DEFAULT_KEY_RETENTION_SECS,
            key_retention: None,
            leader_settle_ms: 3_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid raft settings: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft did not start: {0}")]
    Start(String),
}

/// openraft's configuration for a group named `cluster_name`, from
/// `settings`.
pub fn openraft_config(settings: &RaftSettings, cluster_name: &str) -> Result<openraft::Config, StartError> {
    openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: settings.heartbeat_interval_ms,
        election_timeout_min: settings.election_timeout_min_ms,
        election_timeout_max: settings.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every_entries),
        max_in_snapshot_log_to_keep: settings.keep_entries_after_snapshot,
        max_payload_entries: settings.max_payload_entries,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Config(e.to_string()))
}

/// The largest encoded Raft request sent in one frame of `max_frame_bytes`.
pub fn max_rpc_bytes(max_frame_bytes: usize) -> usize {
    max_frame_bytes.saturating_sub(RPC_FRAME_OVERHEAD_BYTES).max(1)
}

/// How long a proposer waits for a `client_write` before it gives the
/// proposal up as failed: ten of the longest election timeouts (at least a
/// second). Not a tuning knob but a bound openraft 0.9.25 lacks: a replica
/// that proposed entries as leader and later installs a snapshot covering
/// them (`FollowingHandler::install_full_snapshot`: no truncation when the
/// local entry matches, none when it is absent) never applies those entries
/// one by one, so their responders stay in `RaftCore::client_resp_channels`
/// and the `client_write` never returns. Without a bound, a batcher whose
/// slots all hold such writes proposes nothing again, and the group stalls
/// the next time that replica leads (the simulator found it once leaders
/// were handed back). A proposal given up is failed to its proposers the
/// way a lost leadership fails it (the entry may still be committed; every
/// command is idempotent and the coordinator re-drives what it stopped
/// driving).
pub fn proposal_timeout_ms(election_timeout_max_ms: u64) -> u64 {
    election_timeout_max_ms.saturating_mul(10).max(1_000)
}

/// Least time between two hand-overs of one group: a target that keeps
/// losing (a partition that lets heartbeats through one way) costs a pause
/// of proposals this rarely at most.
pub const LEADER_RETRY_MS: u64 = 10_000;
/// Most entries a preferred replica may lag and still be handed its group.
pub const LEADER_MAX_LAG_ENTRIES: u64 = 64;

impl RaftSettings {
    /// When a leader hands its group to the preferred replica.
    pub fn balance(&self) -> crate::handover::BalanceSettings {
        crate::handover::BalanceSettings {
            settle_ms: self.leader_settle_ms,
            retry_ms: LEADER_RETRY_MS.max(self.leader_settle_ms),
            max_lag_entries: LEADER_MAX_LAG_ENTRIES,
        }
    }

    /// Bounds of one hand-over: every step within the shortest election
    /// timeout, proposals held at most twice the longest.
    pub fn hand_over_timing(&self, peer_timeout_ms: u64) -> crate::handover::HandOverTiming {
        crate::handover::HandOverTiming {
            max_hold_ms: self.election_timeout_max_ms.saturating_mul(2),
            step_ms: self.election_timeout_min_ms,
            peer_timeout_ms: peer_timeout_ms.min(self.election_timeout_min_ms),
        }
    }

    /// The byte bound of one proposal: `max_batch_bytes`, or a quarter of a
    /// frame when 0. Never more than a frame can carry, so one entry always
    /// fits in an AppendEntries.
    pub fn batch_bytes(&self, max_frame_bytes: usize) -> usize {
        let derived = max_frame_bytes / 4;
        let configured = usize::try_from(self.max_batch_bytes).unwrap_or(usize::MAX);
        let bytes = if configured == 0 { derived } else { configured };
        bytes.clamp(1, max_rpc_bytes(max_frame_bytes) / 2)
    }
}

/// Initialises the group with `members` if this replica has never been
/// initialised. Called by one member only (the lowest-numbered), so two
/// nodes never race to initialise with different memberships.
pub async fn initialize_if_new<C: PaytxRaftConfig>(
    raft: &Raft<C>,
    members: &BTreeMap<NodeId, String>,
) -> Result<(), StartError> {
    let initialized = raft.is_initialized().await.map_err(|e| StartError::Start(e.to_string()))?;
    if initialized {
        return Ok(());
    }
    let nodes: BTreeMap<NodeId, BasicNode> = members.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect();
    match raft.initialize(nodes).await {
        Ok(()) => Ok(()),
        // Another start already initialised it: fine.
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(StartError::Start(e.to_string())),
    }
}
