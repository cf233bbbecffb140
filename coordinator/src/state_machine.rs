//! The openraft state machine (`RaftStateMachine`): the [`TxnTable`] plus
//! what openraft needs (last applied log id, membership), with snapshots
//! persisted on the `Disk` seam.
//!
//! The table lives in memory. After a restart it is rebuilt from the last
//! persisted snapshot, then openraft re-applies the log from there — the log
//! is the durable truth, the snapshot a shortcut. Snapshots are built from a
//! clone of the table — O(1), its maps are persistent (`imbl::OrdMap`) — so
//! the apply loop is never blocked by copying or serialising it.

// The error type is openraft's `StorageError`, fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::table::{ProposalResult, TxnTable};
use crate::types::{NodeId, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use paytx_raft::snapshot::{SnapshotStore, StoredSnapshot};
use paytx_storage::SharedDisk;
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::{Arc, RwLock};

const SNAPSHOT_SPACE: &str = "raft-snapshot";

/// The replicated state, shared (read-only) with the 2PC driver.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableState {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    pub table: TxnTable,
}

/// Read access to the table for the driver and for status queries.
pub type SharedTable = Arc<RwLock<TableState>>;

/// Reads the shared table, tolerating a poisoned lock (the table is only
/// mutated by whole-command application, never left half-updated).
pub fn read_table(table: &SharedTable) -> std::sync::RwLockReadGuard<'_, TableState> {
    table.read().unwrap_or_else(|p| p.into_inner())
}

pub struct StateMachineStore {
    state: SharedTable,
    snapshots: SnapshotStore,
    snapshot_seq: u64,
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &e).into()
}

impl StateMachineStore {
    /// Opens the state machine, restoring the last persisted snapshot.
    pub fn open(disk: SharedDisk, key_retention: u64) -> Result<Self, StorageError<NodeId>> {
        let mut state = TableState { table: TxnTable::new(key_retention), ..TableState::default() };
        let (snapshots, stored) = SnapshotStore::open(disk, SNAPSHOT_SPACE)?;
        if let Some(stored) = stored {
            state = paytx_protocol::decode_local(&stored.data)
                .map_err(|e| snap_read_err(std::io::Error::other(e.to_string())))?;
        }
        Ok(StateMachineStore { state: Arc::new(RwLock::new(state)), snapshots, snapshot_seq: 0 })
    }

    pub fn shared(&self) -> SharedTable {
        self.state.clone()
    }
}

/// Builds snapshots from a clone of the table (encoded off the node's
/// thread, see [`SnapshotStore`]).
pub struct SnapshotBuilder {
    state: Option<TableState>,
    snapshots: SnapshotStore,
    snapshot_id: String,
    /// How long the clone held the table's lock, for the log line.
    clone_ms: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let state = self.state.take().ok_or_else(|| sm_write_err(std::io::Error::other("snapshot built twice")))?;
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        };
        let (undecided, decided) = state.table.counts();
        let keys = state.table.retained_keys();
        let started = tokio::time::Instant::now();
        let (stored, ()) = self
            .snapshots
            .persist_with(move || {
                let data = paytx_protocol::encode(&state).map_err(|e| e.to_string())?;
                Ok((StoredSnapshot { meta, data }, ()))
            })
            .await?;
        tracing::info!(
            snapshot = %stored.meta.snapshot_id,
            txns = undecided + decided,
            keys,
            bytes = stored.data.len(),
            clone_ms = self.clone_ms,
            persist_ms = started.elapsed().as_millis() as u64,
            "coordinator snapshot stored"
        );
        Ok(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>), StorageError<NodeId>> {
        let state = read_table(&self.state);
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ProposalResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut results = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => {
                    // A new leader's first entry: its term reaches the table
                    // (tombstones of older terms go).
                    state.table.observe_term(entry.log_id.leader_id.term);
                    ProposalResult::default()
                }
                EntryPayload::Normal(proposal) => state.table.apply_proposal(&proposal, entry.log_id.leader_id.term),
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    ProposalResult::default()
                }
            };
            results.push(result);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let started = tokio::time::Instant::now();
        let state = read_table(&self.state).clone();
        let clone_ms = started.elapsed().as_millis() as u64;
        let snapshot_id = match state.last_applied {
            Some(log_id) => format!("{}-{}-{}", log_id.leader_id, log_id.index, self.snapshot_seq),
            None => format!("empty-{}", self.snapshot_seq),
        };
        SnapshotBuilder { state: Some(state), snapshots: self.snapshots.clone(), snapshot_id, clone_ms }
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
        let installed: TableState = paytx_protocol::decode_local(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                &std::io::Error::other(e.to_string()),
            ))
        })?;
        self.snapshots.persist(StoredSnapshot { meta: meta.clone(), data }).await?;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        *state = installed;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .snapshots
            .load()
            .await?
            .map(|stored| Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}
