//! The openraft state machine of a replicated shard: the participant
//! [`Engine`], with what openraft needs (last applied log id, membership),
//! and snapshots persisted in the group's own keyspace.
//!
//! The engine lives in memory. After a restart it is rebuilt from the
//! group's last persisted snapshot, then openraft re-applies the log from
//! there: the log is the durable truth (a prepare is YES only once its
//! entry is committed on a majority of the group), the snapshot a shortcut.

// The error type is openraft's `StorageError`, fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::config::ParticipantConfig;
use crate::engine::{Engine, EngineExport, EngineSnapshot};
use crate::group::apply::{apply_command, apply_proposal};
use crate::group::types::{ShardApplied, ShardCommand, ShardTypeConfig, StepResult};
use crate::ChannelConfig;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use paytx_protocol::planted::Bug;
use paytx_protocol::{ShardId, Vote};
use paytx_raft::snapshot::{SnapshotStore, StoredSnapshot};
use paytx_raft::NodeId;
use paytx_storage::SharedDisk;
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

/// The replicated state of one shard on this replica.
#[derive(Debug)]
pub struct ShardState {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    pub engine: Engine,
    /// Snapshots installed from the leader since this replica started (a
    /// follower that fell behind the leader's purge point): for checks.
    pub snapshots_installed: u64,
}

/// Shared between the state machine (the only writer) and the shard's
/// front (reads, and what a decision will release).
pub type SharedShardState = Arc<Mutex<ShardState>>;

/// Locks the shard's state, tolerating a poisoned lock (the engine is only
/// changed by whole-command application, never left half-updated).
pub fn lock_state(state: &SharedShardState) -> MutexGuard<'_, ShardState> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How the engine is rebuilt from a snapshot (the configuration every
/// replica of the group shares).
#[derive(Debug, Clone)]
struct EngineRecipe {
    shard: ShardId,
    channels: Vec<ChannelConfig>,
    remembered_commits: usize,
    max_records: usize,
    max_prepared: usize,
}

impl EngineRecipe {
    fn empty(&self) -> Engine {
        Engine::new(self.shard, &self.channels)
            .with_remembered_commits(self.remembered_commits)
            .with_max_records(self.max_records)
    }

    fn restore(&self, data: &[u8]) -> Result<Engine, String> {
        let snapshot: EngineSnapshot = paytx_protocol::decode_local(data).map_err(|e| e.to_string())?;
        Engine::from_snapshot(self.shard, &self.channels, self.remembered_commits, snapshot)
            .map(|engine| engine.with_max_records(self.max_records))
            .map_err(|e| format!("{}: {}", e.key, e.reason))
    }
}

pub struct ShardStateMachine {
    state: SharedShardState,
    /// This replica is on the shard's preferred node (used only by a
    /// planted bug: replicated state must never depend on it).
    preferred: bool,
    recipe: EngineRecipe,
    snapshots: SnapshotStore,
    snapshot_seq: u64,
}

fn snap_read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &e).into()
}

impl ShardStateMachine {
    /// Opens the state machine of `config.shard`, restoring the group's
    /// last persisted snapshot from `snapshot_space`.
    pub fn open(
        config: &ParticipantConfig,
        disk: SharedDisk,
        snapshot_space: String,
        preferred: bool,
    ) -> Result<Self, StorageError<NodeId>> {
        let recipe = EngineRecipe {
            shard: config.shard,
            channels: config.channels.clone(),
            remembered_commits: config.remembered_commits,
            max_records: config.max_records,
            max_prepared: config.max_prepared,
        };
        let mut state = ShardState {
            last_applied: None,
            membership: StoredMembership::default(),
            engine: recipe.empty(),
            snapshots_installed: 0,
        };
        let (snapshots, stored) = SnapshotStore::open(disk, &snapshot_space)?;
        if let Some(stored) = stored {
            state.engine =
                recipe.restore(&stored.data).map_err(|e| snap_read_err(std::io::Error::other(e.to_string())))?;
            state.last_applied = stored.meta.last_log_id;
            state.membership = stored.meta.last_membership.clone();
        }
        Ok(ShardStateMachine { state: Arc::new(Mutex::new(state)), preferred, recipe, snapshots, snapshot_seq: 0 })
    }

    pub fn shared(&self) -> SharedShardState {
        self.state.clone()
    }
}

/// Builds a snapshot from a capture of the engine taken under the lock.
/// Only the capture (O(1) clones of persistent maps, plus the bounded
/// lists of prepared, committed and aborted ids) is made there; listing
/// the entities, encoding and storing them run off the node's thread
/// ([`SnapshotStore::persist_with`]), so neither `apply` nor the front
/// waits for them.
pub struct ShardSnapshotBuilder {
    export: Option<EngineExport>,
    /// How long the capture held the state lock (the part `apply` and the
    /// front wait for), for the log line.
    capture_ms: u64,
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    snapshots: SnapshotStore,
}

impl RaftSnapshotBuilder<ShardTypeConfig> for ShardSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<ShardTypeConfig>, StorageError<NodeId>> {
        let export = self.export.take().ok_or_else(|| {
            StorageError::from(StorageIOError::write_snapshot(None, &std::io::Error::other("snapshot built twice")))
        })?;
        let meta = self.meta.clone();
        let entities = export.entity_count();
        let started = tokio::time::Instant::now();
        let (stored, ()) = self
            .snapshots
            .persist_with(move || {
                let snapshot = export.into_snapshot();
                let data = paytx_protocol::encode(&snapshot).map_err(|e| e.to_string())?;
                Ok((StoredSnapshot { meta, data }, ()))
            })
            .await?;
        tracing::info!(
            snapshot = %stored.meta.snapshot_id,
            entities,
            bytes = stored.data.len(),
            capture_ms = self.capture_ms,
            persist_ms = started.elapsed().as_millis() as u64,
            "shard snapshot stored"
        );
        Ok(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}

impl RaftStateMachine<ShardTypeConfig> for ShardStateMachine {
    type SnapshotBuilder = ShardSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>), StorageError<NodeId>> {
        let state = lock_state(&self.state);
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ShardApplied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<ShardTypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut state = lock_state(&self.state);
        let mut results = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let applied = match entry.payload {
                EntryPayload::Blank => ShardApplied::default(),
                // PLANTED BUG (simulator only): a follower votes YES on every prepare and reserves nothing.
                EntryPayload::Normal(proposal)
                    if !self.preferred && paytx_protocol::planted::active(Bug::FollowerSkipsReservation) =>
                {
                    let results = proposal
                        .commands
                        .iter()
                        .map(|command| match command {
                            ShardCommand::Prepare { .. } => StepResult::Voted { vote: Vote::Yes, blocked: false },
                            decide => apply_command(&mut state.engine, decide, self.recipe.max_prepared),
                        })
                        .collect();
                    ShardApplied { results }
                }
                EntryPayload::Normal(proposal) => {
                    ShardApplied { results: apply_proposal(&mut state.engine, &proposal, self.recipe.max_prepared) }
                }
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    ShardApplied::default()
                }
            };
            results.push(applied);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let state = lock_state(&self.state);
        let snapshot_id = match state.last_applied {
            Some(log_id) => format!("{}-{}-{}", log_id.leader_id, log_id.index, self.snapshot_seq),
            None => format!("empty-{}", self.snapshot_seq),
        };
        let meta =
            SnapshotMeta { last_log_id: state.last_applied, last_membership: state.membership.clone(), snapshot_id };
        let started = tokio::time::Instant::now();
        let export = Some(state.engine.capture());
        let capture_ms = started.elapsed().as_millis() as u64;
        ShardSnapshotBuilder { export, capture_ms, meta, snapshots: self.snapshots.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        // Decoded off the node's thread, like a build is encoded. A snapshot
        // that does not decode stores nothing and fails the install.
        let (recipe, stored_meta) = (self.recipe.clone(), meta.clone());
        let (_, engine) = self
            .snapshots
            .persist_with(move || {
                let engine = recipe.restore(&data)?;
                Ok((StoredSnapshot { meta: stored_meta, data }, engine))
            })
            .await?;
        let mut state = lock_state(&self.state);
        state.engine = engine;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshots_installed = state.snapshots_installed.saturating_add(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<ShardTypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .snapshots
            .load()
            .await?
            .map(|stored| Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}
