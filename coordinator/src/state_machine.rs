//! The openraft state machine (`RaftStateMachine`): the [`TxnTable`] plus
//! what openraft needs (last applied log id, membership), with snapshots
//! persisted on the `Disk` seam.
//!
//! The table lives in memory, the keys of forgotten transactions in the
//! [`crate::archive`] on the node's disk. After a restart the table is
//! rebuilt from the last persisted snapshot, then openraft re-applies the
//! log from there — the log is the durable truth, the snapshot a shortcut;
//! the archive may be ahead of the table then, which its versions allow
//! for. Snapshots are built from a clone of the table — O(1), its maps are
//! persistent (`imbl::OrdMap`) — so the apply loop is never blocked by
//! copying or serialising it.
//!
//! **What a snapshot holds.** The one stored on this node holds the table
//! only: the archive is already on this node's disk, synced before the
//! snapshot is stored, so it covers every key the snapshot's entries
//! archived. The one *sent* to a follower (`get_current_snapshot`) also
//! carries every archived key the snapshot's table still retains; the
//! follower writes them to its archive, syncs, and only then stores the
//! snapshot. Once a snapshot is stored, the keys evicted at its log time
//! are deleted from the archive (a replay starts there, so no later lookup
//! could see them); the deletion holds `collecting` so that a snapshot
//! being sent never misses a key it retains.

// The error type is openraft's `StorageError`, fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::archive::{Archive, ArchiveEntry, DiskArchive};
use crate::table::{FormerTxnTable, ProposalResult, TxnTable};
use crate::types::{NodeId, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotSignature};
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use paytx_raft::snapshot::{SnapshotStore, StoredSnapshot};
use paytx_storage::SharedDisk;
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::{Arc, RwLock};

const SNAPSHOT_SPACE: &str = "raft-snapshot";

/// First bytes of a snapshot written since the key archive: a table and the
/// archived keys beside it ([`SnapshotBody`]). Anything else is a snapshot
/// of an earlier version (a [`FormerTableState`]), migrated as it is read.
const SNAPSHOT_MAGIC: &[u8; 8] = b"paytx-k2";

/// A snapshot's content.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    state: TableState,
    /// Archived keys the table retains: empty in the snapshot a node
    /// stores (its archive is on its disk), full in one sent to a follower.
    archived: Vec<ArchiveEntry>,
}

/// What snapshots held before the key archive.
#[derive(Deserialize)]
struct FormerTableState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    table: FormerTxnTable,
}

fn encode_body(body: &SnapshotBody) -> Result<Vec<u8>, String> {
    let mut data = SNAPSHOT_MAGIC.to_vec();
    data.extend(paytx_protocol::encode(body).map_err(|e| e.to_string())?);
    Ok(data)
}

/// Decodes a snapshot of this version or an earlier one; an earlier one's
/// retired keys are migrated into `archive` (idempotently) as it is read.
fn decode_body(data: &[u8], archive: &Archive) -> Result<SnapshotBody, String> {
    if let Some(body) = data.strip_prefix(SNAPSHOT_MAGIC.as_slice()) {
        let mut body: SnapshotBody = paytx_protocol::decode_local(body).map_err(|e| e.to_string())?;
        body.state.table.attach(archive.clone());
        return Ok(body);
    }
    let former: FormerTableState = paytx_protocol::decode_local(data).map_err(|e| e.to_string())?;
    let last_index = former.last_applied.map_or(0, |log_id| log_id.index);
    let table = former.table.migrate(archive.clone(), last_index).map_err(|e| e.to_string())?;
    let state = TableState { last_applied: former.last_applied, membership: former.membership, table };
    Ok(SnapshotBody { state, archived: Vec::new() })
}

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
    disk: SharedDisk,
    archive: Archive,
    /// Held (shared) while a snapshot to send reads the archive, and
    /// (exclusively) while evicted keys are deleted from it.
    collecting: Arc<tokio::sync::RwLock<()>>,
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

/// A snapshot (the one named by `signature`, when known) that could not be
/// read, decoded or re-encoded.
fn snap_read_err(signature: Option<SnapshotSignature<NodeId>>, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(signature, &std::io::Error::other(e.to_string())).into()
}

impl StateMachineStore {
    /// Opens the state machine, restoring the last persisted snapshot.
    pub fn open(disk: SharedDisk) -> Result<Self, StorageError<NodeId>> {
        let archive = Archive(Arc::new(DiskArchive::new(disk.clone())));
        let mut state = TableState { table: TxnTable::new(archive.clone()), ..TableState::default() };
        let (snapshots, stored) = SnapshotStore::open(disk.clone(), SNAPSHOT_SPACE)?;
        if let Some(stored) = stored {
            let body = decode_body(&stored.data, &archive).map_err(|e| snap_read_err(None, e))?;
            state = body.state;
        }
        Ok(StateMachineStore {
            state: Arc::new(RwLock::new(state)),
            snapshots,
            snapshot_seq: 0,
            disk,
            archive,
            collecting: Arc::new(tokio::sync::RwLock::new(())),
        })
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
    disk: SharedDisk,
    archive: Archive,
    collecting: Arc<tokio::sync::RwLock<()>>,
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
        let (live_keys, keys_archived) = (state.table.live_keys(), state.table.keys_archived());
        let collectable = state.table.collectable_ms();
        let started = tokio::time::Instant::now();
        // The snapshot stored here carries no archived keys: they are on this
        // disk. Synced first, so the archive covers every entry the snapshot
        // does before the log behind it may be purged.
        self.disk.sync().await.map_err(sm_write_err)?;
        let (stored, ()) = self
            .snapshots
            .persist_with(move || {
                let data = encode_body(&SnapshotBody { state, archived: Vec::new() })?;
                Ok((StoredSnapshot { meta, data }, ()))
            })
            .await?;
        // Keys evicted at the stored snapshot's log time can go: a replay
        // starts at a stored snapshot, at that log time or later.
        let mut collected = 0;
        if let Some((from_ms, through_ms)) = collectable {
            let _exclusive = self.collecting.write().await;
            let archive = self.archive.clone();
            collected = paytx_storage::run_bulk(&self.disk, move || archive.0.collect(from_ms, through_ms))
                .await
                .map_err(sm_write_err)?
                .map_err(sm_write_err)?;
        }
        tracing::info!(
            snapshot = %stored.meta.snapshot_id,
            txns = undecided + decided,
            live_keys,
            keys_archived,
            keys_collected = collected,
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
                    state.table.skip_entry(entry.log_id.index);
                    ProposalResult::default()
                }
                EntryPayload::Normal(proposal) => state
                    .table
                    .apply_proposal(&proposal, entry.log_id.leader_id.term, entry.log_id.index)
                    .map_err(sm_write_err)?,
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    state.table.skip_entry(entry.log_id.index);
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
        SnapshotBuilder {
            state: Some(state),
            snapshots: self.snapshots.clone(),
            snapshot_id,
            clone_ms,
            disk: self.disk.clone(),
            archive: self.archive.clone(),
            collecting: self.collecting.clone(),
        }
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
        let read_err = |e: String| snap_read_err(Some(meta.signature()), e);
        let body = decode_body(&data, &self.archive).map_err(read_err)?;
        // The leader's archived keys reach this disk, durably, before the
        // snapshot that relies on them is stored (a crash between leaves
        // extra versions, which lookups before them never see).
        let (archive, archived) = (self.archive.clone(), body.archived);
        paytx_storage::run_bulk(&self.disk, move || archive.0.put_all(&archived))
            .await
            .map_err(sm_write_err)?
            .map_err(sm_write_err)?;
        self.disk.sync().await.map_err(sm_write_err)?;
        let installed = body.state;
        let stored = encode_body(&SnapshotBody { state: installed.clone(), archived: Vec::new() }).map_err(read_err)?;
        self.snapshots.persist(StoredSnapshot { meta: meta.clone(), data: stored }).await?;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        *state = installed;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        // Shared with nothing but itself; excludes collection, which could
        // otherwise delete keys this (older) snapshot still retains.
        let _reading = self.collecting.read().await;
        let Some(stored) = self.snapshots.load().await? else { return Ok(None) };
        let signature = stored.meta.signature();
        let read_err = |e: String| snap_read_err(Some(signature.clone()), e);
        let mut body = decode_body(&stored.data, &self.archive).map_err(read_err)?;
        body.archived = body.state.table.retained_archive().map_err(|e| read_err(e.to_string()))?;
        let data = encode_body(&body).map_err(read_err)?;
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
