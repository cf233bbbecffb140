//! A group's current snapshot, persisted on the `Disk` seam: one sealed
//! record per group (its own keyspace), replaced only by a newer one.

// The error type is openraft's `StorageError`, fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::NodeId;
use openraft::{BasicNode, LogId, SnapshotMeta, StorageError, StorageIOError};
use paytx_storage::record::{open_at, seal};
use paytx_storage::{run_bulk, Batch, SharedDisk};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

const SNAPSHOT_KEY: &[u8] = b"current";

/// A snapshot as stored: openraft's metadata and the state machine's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    pub data: Vec<u8>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

/// The snapshot stored in `space`, if any. Blocking, and as costly as the
/// snapshot is large: at startup, or through [`SnapshotStore::load`].
fn load(disk: &SharedDisk, space: &str) -> Result<Option<StoredSnapshot>, StorageError<NodeId>> {
    match disk.get(space, SNAPSHOT_KEY).map_err(read_err)? {
        None => Ok(None),
        Some(bytes) => open_at(space, SNAPSHOT_KEY, &bytes).map(Some).map_err(read_err),
    }
}

/// One group's current snapshot. Everything whose cost grows with the
/// state — encoding, sealing, writing, reading back — runs through
/// [`paytx_storage::Disk::run_bulk`], off the node's thread: a snapshot of
/// a few hundred megabytes built on that thread stalled every group of the
/// node for seconds, long enough for proposals to time out.
#[derive(Clone)]
pub struct SnapshotStore {
    disk: SharedDisk,
    space: Arc<str>,
    /// The log id the stored snapshot covers, so that storing a snapshot
    /// never reads the stored one back to compare (that read was as large
    /// as the snapshot). Only changed under its lock, together with the
    /// write it describes.
    stored_through: Arc<Mutex<Option<LogId<NodeId>>>>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore").field("space", &self.space).finish()
    }
}

impl SnapshotStore {
    /// Opens the store of `space` and returns the snapshot it holds, if any
    /// (read on the caller's thread: a node reads it once, as it starts).
    pub fn open(disk: SharedDisk, space: &str) -> Result<(Self, Option<StoredSnapshot>), StorageError<NodeId>> {
        let stored = load(&disk, space)?;
        let through = stored.as_ref().and_then(|stored| stored.meta.last_log_id);
        let store = SnapshotStore { disk, space: Arc::from(space), stored_through: Arc::new(Mutex::new(through)) };
        Ok((store, stored))
    }

    /// The stored snapshot (for a follower that needs it), read off the
    /// node's thread.
    pub async fn load(&self) -> Result<Option<StoredSnapshot>, StorageError<NodeId>> {
        let (disk, space) = (self.disk.clone(), self.space.clone());
        run_bulk(&self.disk, move || load(&disk, &space)).await.map_err(read_err)?
    }

    /// Stores `stored` as the current snapshot.
    pub async fn persist(&self, stored: StoredSnapshot) -> Result<StoredSnapshot, StorageError<NodeId>> {
        self.persist_with(move || Ok((stored, ()))).await.map(|(stored, ())| stored)
    }

    /// Runs `make` off the node's thread — it encodes (or decodes) the
    /// state into the snapshot to store, plus whatever else the caller
    /// needs back — then stores that snapshot there too, unless the stored
    /// one is newer (a slow build finishing after an install must not move
    /// the snapshot back behind a log prefix that is already purged). Synced
    /// before it returns, so before openraft may purge the log entries it
    /// covers.
    pub async fn persist_with<X, F>(&self, make: F) -> Result<(StoredSnapshot, X), StorageError<NodeId>>
    where
        X: Send + 'static,
        F: FnOnce() -> Result<(StoredSnapshot, X), String> + Send + 'static,
    {
        let (disk, space, through) = (self.disk.clone(), self.space.clone(), self.stored_through.clone());
        let written = run_bulk(&self.disk, move || -> Result<(StoredSnapshot, X), StorageError<NodeId>> {
            let (stored, extra) = make().map_err(|e| write_err(std::io::Error::other(e)))?;
            let mut stored_through = through.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if *stored_through > stored.meta.last_log_id {
                return Ok((stored, extra));
            }
            let mut batch = Batch::new();
            batch.put(SNAPSHOT_KEY.to_vec(), seal(&stored));
            disk.apply(&space, batch).map_err(write_err)?;
            *stored_through = stored.meta.last_log_id;
            Ok((stored, extra))
        })
        .await
        .map_err(write_err)??;
        self.disk.sync().await.map_err(write_err)?;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, StoredMembership};
    use paytx_storage::MemDisk;
    use std::sync::Arc;

    fn stored(index: u64, data: &[u8]) -> StoredSnapshot {
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), index);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s-{index}"),
        };
        StoredSnapshot { meta, data: data.to_vec() }
    }

    #[tokio::test]
    async fn a_snapshot_never_moves_back() {
        let disk: SharedDisk = Arc::new(MemDisk::new());
        let (store, none) = SnapshotStore::open(disk.clone(), "snap").unwrap();
        assert!(none.is_none());
        store.persist(stored(100, b"newer")).await.unwrap();
        // A slow build of an older state finishing after an install.
        store.persist(stored(40, b"older")).await.unwrap();
        let current = store.load().await.unwrap().expect("a snapshot");
        assert_eq!(current.data, b"newer".to_vec());
        store.persist(stored(120, b"newest")).await.unwrap();
        assert_eq!(store.load().await.unwrap().expect("a snapshot").data, b"newest".to_vec());
        // Another group's space is its own.
        assert!(SnapshotStore::open(disk.clone(), "other").unwrap().1.is_none());
        // Reopened, the store knows what it holds without being told: an
        // older snapshot still does not replace it.
        let (reopened, held) = SnapshotStore::open(disk.clone(), "snap").unwrap();
        assert_eq!(held.expect("a snapshot").data, b"newest".to_vec());
        reopened.persist(stored(110, b"stale")).await.unwrap();
        assert_eq!(reopened.load().await.unwrap().expect("a snapshot").data, b"newest".to_vec());
    }

    #[tokio::test]
    async fn a_failed_build_stores_nothing_and_says_why() {
        let disk: SharedDisk = Arc::new(MemDisk::new());
        let (store, _) = SnapshotStore::open(disk, "snap").unwrap();
        let failed =
            store.persist_with(|| -> Result<(StoredSnapshot, ()), String> { Err("encoder broke".into()) }).await;
        assert!(format!("{:?}", failed.expect_err("the build failed")).contains("encoder broke"));
        assert!(store.load().await.unwrap().is_none());
    }
}
