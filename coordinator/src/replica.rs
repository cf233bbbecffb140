//! Starting one coordinator replica: openraft on the `Disk` and `Transport`
//! seams, with the transaction table as its state machine.

use crate::network::NetworkFactory;
use crate::state_machine::{SharedTable, StateMachineStore};
use crate::types::{LogStore, NodeId, Raft};
use openraft::{BasicNode, SnapshotPolicy};
use paytx_protocol::Transport;
use paytx_storage::SharedDisk;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

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
    /// Idempotency keys of finished transactions kept in the table.
    pub key_retention: u64,
}

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
            key_retention: crate::table::DEFAULT_KEY_RETENTION,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("invalid raft settings: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft did not start: {0}")]
    Start(String),
}

/// A started replica.
pub struct Replica {
    pub raft: Raft,
    pub table: SharedTable,
}

/// Starts the replica of `node` (restoring whatever the disk holds).
pub async fn start_replica(
    node: NodeId,
    disk: SharedDisk,
    transport: Arc<dyn Transport>,
    settings: &RaftSettings,
    max_frame_bytes: usize,
) -> Result<Replica, ReplicaError> {
    let config = openraft::Config {
        cluster_name: "paytx".to_string(),
        heartbeat_interval: settings.heartbeat_interval_ms,
        election_timeout_min: settings.election_timeout_min_ms,
        election_timeout_max: settings.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every_entries),
        max_in_snapshot_log_to_keep: settings.keep_entries_after_snapshot,
        max_payload_entries: settings.max_payload_entries,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ReplicaError::Config(e.to_string()))?;
    let log_store = LogStore::new(disk.clone());
    let state_machine =
        StateMachineStore::open(disk, settings.key_retention).map_err(|e| ReplicaError::Storage(e.to_string()))?;
    let table = state_machine.shared();
    let raft = Raft::new(
        node,
        Arc::new(config),
        NetworkFactory::new(transport, max_rpc_bytes(max_frame_bytes)),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| ReplicaError::Start(e.to_string()))?;
    Ok(Replica { raft, table })
}

/// The largest encoded Raft request sent in one frame of `max_frame_bytes`.
pub fn max_rpc_bytes(max_frame_bytes: usize) -> usize {
    max_frame_bytes.saturating_sub(crate::network::RPC_FRAME_OVERHEAD_BYTES).max(1)
}

impl RaftSettings {
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
/// initialised. Called by the lowest-numbered node only, so two nodes never
/// race to initialise with different memberships.
pub async fn initialize_if_new(raft: &Raft, members: &BTreeMap<NodeId, String>) -> Result<(), ReplicaError> {
    let initialized = raft.is_initialized().await.map_err(|e| ReplicaError::Start(e.to_string()))?;
    if initialized {
        return Ok(());
    }
    let nodes: BTreeMap<NodeId, BasicNode> = members.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect();
    match raft.initialize(nodes).await {
        Ok(()) => Ok(()),
        // Another start already initialised it: fine.
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(ReplicaError::Start(e.to_string())),
    }
}
