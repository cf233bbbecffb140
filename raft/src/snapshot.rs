//! A group's current snapshot, persisted on the `Disk` seam: one sealed
//! record per group (its own keyspace), replaced only by a newer one.

// The error type is openraft's `StorageError`, fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::NodeId;
use openraft::{BasicNode, SnapshotMeta, StorageError, StorageIOError};
use paytx_storage::record::{open_at, seal};
use paytx_storage::{Batch, SharedDisk};
use serde::{Deserialize, Serialize};

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

/// The snapshot stored in `space`, if any.
pub fn load(disk: &SharedDisk, space: &str) -> Result<Option<StoredSnapshot>, StorageError<NodeId>> {
    match disk.get(space, SNAPSHOT_KEY).map_err(read_err)? {
        None => Ok(None),
        Some(bytes) => open_at(space, SNAPSHOT_KEY, &bytes).map(Some).map_err(read_err),
    }
}

/// Stores `stored` as the current snapshot of `space` — unless the stored
/// one is newer (a slow build finishing after an install must not move the
/// snapshot back behind a log prefix that is already purged). Synced before
/// openraft may purge the log entries it covers.
pub async fn persist(disk: &SharedDisk, space: &str, stored: &StoredSnapshot) -> Result<(), StorageError<NodeId>> {
    if let Some(current) = load(disk, space)? {
        if current.meta.last_log_id > stored.meta.last_log_id {
            return Ok(());
        }
    }
    let mut batch = Batch::new();
    batch.put(SNAPSHOT_KEY.to_vec(), seal(stored));
    disk.apply(space, batch).map_err(write_err)?;
    disk.sync().await.map_err(write_err)
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
        persist(&disk, "snap", &stored(100, b"newer")).await.unwrap();
        // A slow build of an older state finishing after an install.
        persist(&disk, "snap", &stored(40, b"older")).await.unwrap();
        let current = load(&disk, "snap").unwrap().expect("a snapshot");
        assert_eq!(current.data, b"newer".to_vec());
        persist(&disk, "snap", &stored(120, b"newest")).await.unwrap();
        assert_eq!(load(&disk, "snap").unwrap().expect("a snapshot").data, b"newest".to_vec());
        // Another group's space is its own.
        assert!(load(&disk, "other").unwrap().is_none());
    }
}
