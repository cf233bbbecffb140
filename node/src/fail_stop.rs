//! Fail-stop of the whole node on a disk write or fsync error.
//!
//! After a failed fsync the kernel may have dropped the dirty pages, so
//! nothing written since the last good sync can be trusted to be durable
//! (the PostgreSQL fsync lesson); after a failed write the node's memory is
//! ahead of its disk. Either way the only safe move is to stop everything —
//! every participant shard, the coordinator replica, the server — and let
//! the operator restart the node from what *is* durable. Participants and
//! the Raft log store already refuse to acknowledge on such an error; this
//! makes the failure of one of them stop the rest too, instead of a node
//! that half-serves.
//!
//! [`FailStopDisk`] wraps the node's disk: the first write or sync error
//! trips the node's [`FailStop`] latch; from then on every write and sync
//! fails at once. [`crate::NodeCore`] watches the latch and stops the node;
//! the `paytx node` process then exits non-zero naming the error.

use paytx_protocol::BoxFuture;
use paytx_storage::{Batch, Disk, DiskError, KeyValue, SharedDisk};
use std::sync::Arc;
use tokio::sync::watch;

/// The node's fail-stop latch: set once, with the first fatal error.
#[derive(Clone)]
pub struct FailStop {
    sender: Arc<watch::Sender<Option<String>>>,
}

impl std::fmt::Debug for FailStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailStop").field("reason", &self.reason()).finish()
    }
}

impl Default for FailStop {
    fn default() -> Self {
        FailStop { sender: Arc::new(watch::channel(None).0) }
    }
}

impl FailStop {
    pub fn new() -> Self {
        FailStop::default()
    }

    /// Trips the latch; only the first reason is kept.
    pub fn trip(&self, reason: String) {
        let first = self.sender.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason.clone());
                true
            } else {
                false
            }
        });
        if first {
            tracing::error!(%reason, "FATAL: the node stops (fail-stop); restart it once the disk is repaired");
        }
    }

    /// Why the node stopped, once it did.
    pub fn reason(&self) -> Option<String> {
        self.sender.borrow().clone()
    }

    /// Resolves with the reason once the latch trips.
    pub fn tripped(&self) -> BoxFuture<String> {
        let mut receiver = self.sender.subscribe();
        Box::pin(async move {
            let reason = receiver.wait_for(Option::is_some).await.map(|reason| reason.clone());
            match reason {
                Ok(reason) => reason.unwrap_or_default(),
                // The sender lives as long as any clone of the latch, and
                // this future holds none: it can go away; then never trip.
                Err(_) => std::future::pending().await,
            }
        })
    }
}

/// A disk whose write and sync errors trip the node's [`FailStop`].
pub struct FailStopDisk {
    inner: SharedDisk,
    latch: FailStop,
}

impl FailStopDisk {
    pub fn new(inner: SharedDisk, latch: FailStop) -> Self {
        FailStopDisk { inner, latch }
    }

    /// A sync of the inner disk (`start`), refused once the node stopped,
    /// and tripping the latch when it fails.
    fn tripping_sync(
        &self,
        start: impl FnOnce(&SharedDisk) -> BoxFuture<Result<(), DiskError>>,
    ) -> BoxFuture<Result<(), DiskError>> {
        if let Some(stopped) = self.stopped() {
            return Box::pin(async move { Err(stopped) });
        }
        let synced = start(&self.inner);
        let latch = self.latch.clone();
        Box::pin(async move { synced.await.inspect_err(|e| latch.trip(format!("disk sync failed: {e}"))) })
    }

    fn stopped(&self) -> Option<DiskError> {
        self.latch.reason().map(|reason| DiskError::SyncFailed { reason: format!("the node has stopped: {reason}") })
    }
}

impl Disk for FailStopDisk {
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        self.inner.get(space, key)
    }

    fn apply(&self, space: &str, batch: Batch) -> Result<(), DiskError> {
        if let Some(stopped) = self.stopped() {
            return Err(stopped);
        }
        self.inner.apply(space, batch).inspect_err(|e| self.latch.trip(format!("disk write failed: {e}")))
    }

    fn range(&self, space: &str, start: &[u8], end: Option<&[u8]>) -> Result<Vec<KeyValue>, DiskError> {
        self.inner.range(space, start, end)
    }

    fn last(&self, space: &str) -> Result<Option<KeyValue>, DiskError> {
        self.inner.last(space)
    }

    fn run_bulk(&self, job: paytx_storage::BulkJob) -> BoxFuture<Result<(), DiskError>> {
        if let Some(stopped) = self.stopped() {
            return Box::pin(async move { Err(stopped) });
        }
        self.inner.run_bulk(job)
    }

    fn sync_bulk(&self) -> BoxFuture<Result<(), DiskError>> {
        self.tripping_sync(|disk| disk.sync_bulk())
    }

    fn sync_bulk_in_job(&self) -> Result<(), DiskError> {
        if let Some(stopped) = self.stopped() {
            return Err(stopped);
        }
        self.inner.sync_bulk_in_job().inspect_err(|e| self.latch.trip(format!("disk sync failed: {e}")))
    }

    fn sync(&self) -> BoxFuture<Result<(), DiskError>> {
        self.tripping_sync(|disk| disk.sync())
    }

    fn sync_counters(&self) -> paytx_storage::SyncCounters {
        self.inner.sync_counters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paytx_storage::MemDisk;

    #[tokio::test]
    async fn the_first_sync_error_trips_the_latch_and_every_later_write_fails() {
        let mem = MemDisk::new();
        let latch = FailStop::new();
        let disk = FailStopDisk::new(Arc::new(mem.clone()), latch.clone());
        let mut batch = Batch::new();
        batch.put(b"k".to_vec(), b"v".to_vec());
        disk.apply("s", batch.clone()).unwrap();
        disk.sync().await.unwrap();
        assert_eq!(latch.reason(), None);

        let tripped = latch.tripped();
        mem.fail_syncs(true);
        assert!(disk.sync().await.is_err());
        let reason = tokio::time::timeout(std::time::Duration::from_secs(1), tripped).await.unwrap();
        assert!(reason.contains("injected fsync failure"), "{reason}");
        mem.fail_syncs(false);
        assert!(disk.apply("s", batch).is_err(), "no write after the node stopped");
        assert!(disk.sync().await.is_err());
    }
}
