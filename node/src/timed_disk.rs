//! [`SyncTimedDisk`]: the node's disk with every sync's latency observed in
//! a histogram (`paytx_disk_sync_latency_seconds`) — the wait of one
//! durability point, group commit included. One atomic histogram update per
//! sync; tokio's clock, so virtual (and deterministic) in the simulator.

use paytx_protocol::BoxFuture;
use paytx_storage::{Batch, Disk, DiskError, KeyValue, SharedDisk, SyncCounters};
use prometheus::Histogram;

pub struct SyncTimedDisk {
    inner: SharedDisk,
    latency: Histogram,
}

impl SyncTimedDisk {
    pub fn new(inner: SharedDisk, latency: Histogram) -> Self {
        SyncTimedDisk { inner, latency }
    }
}

impl Disk for SyncTimedDisk {
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        self.inner.get(space, key)
    }

    fn apply(&self, space: &str, batch: Batch) -> Result<(), DiskError> {
        self.inner.apply(space, batch)
    }

    fn range(&self, space: &str, start: &[u8], end: Option<&[u8]>) -> Result<Vec<KeyValue>, DiskError> {
        self.inner.range(space, start, end)
    }

    fn last(&self, space: &str) -> Result<Option<KeyValue>, DiskError> {
        self.inner.last(space)
    }

    fn run_bulk(&self, job: paytx_storage::BulkJob) -> BoxFuture<Result<(), DiskError>> {
        self.inner.run_bulk(job)
    }

    /// Not timed: the histogram is of the group commits a write waits for.
    fn sync_bulk(&self) -> BoxFuture<Result<(), DiskError>> {
        self.inner.sync_bulk()
    }

    fn sync_bulk_in_job(&self) -> Result<(), DiskError> {
        self.inner.sync_bulk_in_job()
    }

    fn sync(&self) -> BoxFuture<Result<(), DiskError>> {
        let started = tokio::time::Instant::now();
        let synced = self.inner.sync();
        let latency = self.latency.clone();
        Box::pin(async move {
            let result = synced.await;
            latency.observe(started.elapsed().as_secs_f64());
            result
        })
    }

    fn sync_counters(&self) -> SyncCounters {
        self.inner.sync_counters()
    }
}
