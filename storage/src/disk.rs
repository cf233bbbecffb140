//! The `Disk` seam.
//!
//! Storage is a set of named keyspaces of ordered byte keys. A [`Batch`]
//! touches one keyspace and is applied atomically. Writes become durable only
//! after [`Disk::sync`] returns: a crash may lose any write not yet synced,
//! which is exactly what the simulator's [`crate::MemDisk`] does.

use paytx_protocol::BoxFuture;
use std::sync::{Arc, Mutex};

/// A disk shared by every component of one node.
pub type SharedDisk = Arc<dyn Disk>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    #[error("i/o error in {space}: {reason}")]
    Io { space: String, reason: String },
    /// An fsync failed. The node must stop: after a failed fsync the kernel
    /// may have dropped the dirty pages, so nothing written since the last
    /// good sync can be trusted to be durable (the PostgreSQL fsync lesson).
    #[error("fsync failed ({reason}); the node stops rather than acknowledge what may not be durable")]
    SyncFailed { reason: String },
    #[error("corrupt record in {space} at key {key_hex}: {reason}; the data directory needs repair")]
    Corrupt { space: String, key_hex: String, reason: String },
    /// The store came back from a restart without writes it had made
    /// durable (or its durability record is damaged): starting would
    /// silently drop committed data.
    #[error("{file}: {reason}; refusing to start (rebuild this node from its replicas with `paytx node --rebuild`, or restore its data directory from a backup)")]
    LostWrites { file: String, reason: String },
}

/// One stored `(key, value)` pair.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Writes to one keyspace, applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), Some(value.into())));
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), None));
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// Where every durable byte of a node goes.
pub trait Disk: Send + Sync + 'static {
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError>;

    /// Applies `batch` to `space` atomically (all or none of it is visible,
    /// before and after a crash). Not durable until [`Disk::sync`].
    fn apply(&self, space: &str, batch: Batch) -> Result<(), DiskError>;

    /// Every `(key, value)` with `start <= key < end` (`end = None`: to the
    /// end of the space), in key order.
    fn range(&self, space: &str, start: &[u8], end: Option<&[u8]>) -> Result<Vec<KeyValue>, DiskError>;

    /// The last `(key, value)` of a space, if any.
    fn last(&self, space: &str) -> Result<Option<KeyValue>, DiskError>;

    /// Makes every write applied before this call durable. Concurrent calls
    /// share one fsync (group commit). After a failed sync every later sync
    /// fails too: the node must stop.
    fn sync(&self) -> BoxFuture<Result<(), DiskError>>;

    /// Makes every write applied before this call to a *bulk* space (a
    /// space named `…raft-snapshot`, see `sled_disk::BULK_SPACE_SUFFIX`)
    /// durable. A disk that keeps bulk spaces apart (the sled disk: their
    /// own database, so a snapshot's hundreds of MB never ride a group
    /// commit) syncs only those here; the default, and the simulator's
    /// disk, keep one store and sync all of it. Fails stop as `sync` does.
    fn sync_bulk(&self) -> BoxFuture<Result<(), DiskError>> {
        self.sync()
    }

    /// From inside a [`Disk::run_bulk`] job, between parts of a large
    /// write to bulk spaces: makes what the job wrote so far durable, so
    /// the device never holds hundreds of MB of it dirty at once. The final
    /// [`Disk::sync_bulk`] is still what makes the write durable; this only
    /// spreads the device's work (a single fdatasync of a 111 MB snapshot
    /// on ext4 held every other fsync of the machine for up to 0.9 s). The
    /// default, and the simulator's disk, do nothing.
    fn sync_bulk_in_job(&self) -> Result<(), DiskError> {
        Ok(())
    }

    /// How many syncs were asked for and how many flushes served them
    /// (group commit: fewer flushes than syncs). For reports; zero where
    /// not counted.
    fn sync_counters(&self) -> SyncCounters {
        SyncCounters::default()
    }

    /// Runs `job` where it cannot hold up the caller's thread, and resolves
    /// when it has run. For work whose cost grows with a shard's whole
    /// state — encoding and storing a snapshot — which on the node's one
    /// thread would stall every group it hosts for as long (a records
    /// shard of five million records stalled its node for seconds: README,
    /// "Performance"). A real disk runs it on a dedicated thread; the
    /// default, and the simulator's disk, run it inline, so a simulated
    /// run stays on its one thread, in order.
    fn run_bulk(&self, job: BulkJob) -> BoxFuture<Result<(), DiskError>> {
        job();
        Box::pin(async { Ok(()) })
    }
}

/// Work for [`Disk::run_bulk`].
pub type BulkJob = Box<dyn FnOnce() + Send + 'static>;

/// Runs `work` through [`Disk::run_bulk`] and returns what it returned.
pub async fn run_bulk<T, F>(disk: &SharedDisk, work: F) -> Result<T, DiskError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let slot = Arc::new(Mutex::new(None));
    let filled = slot.clone();
    disk.run_bulk(Box::new(move || {
        let result = work();
        *filled.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(result);
    }))
    .await?;
    let result = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
    result.ok_or_else(|| DiskError::Io {
        space: "bulk".to_string(),
        reason: "a bulk job resolved without running".to_string(),
    })
}

/// See [`Disk::sync_counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounters {
    pub syncs: u64,
    pub flushes: u64,
}
