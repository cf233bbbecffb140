//! The production `Disk`: one sled database per node, one sled tree per
//! keyspace, `sync` = sled flush (fsync), shared by concurrent callers.
//!
//! Group commit: each caller takes a ticket after its writes are applied;
//! the flush lock is held by one flusher at a time; a flusher first reads the
//! newest ticket, then flushes, then publishes that ticket as durable. A
//! caller that gets the lock and finds its ticket already durable returns
//! without flushing. So N concurrent callers cost about two fsyncs, not N.

use crate::disk::{Batch, Disk, DiskError, KeyValue};
use paytx_protocol::BoxFuture;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

struct Inner {
    db: sled::Db,
    trees: Mutex<BTreeMap<String, sled::Tree>>,
    /// When false, `sync` returns at once (benchmarks of the non-durable
    /// configuration only; never the default).
    fsync: bool,
    requested_ticket: AtomicU64,
    durable_ticket: AtomicU64,
    flush_lock: tokio::sync::Mutex<()>,
    poisoned: AtomicBool,
    flushes: AtomicU64,
}

#[derive(Clone)]
pub struct SledDisk {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SledDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledDisk").field("fsync", &self.inner.fsync).finish()
    }
}

fn io(space: &str, e: impl std::fmt::Display) -> DiskError {
    DiskError::Io { space: space.to_string(), reason: e.to_string() }
}

impl SledDisk {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, fsync: bool) -> Result<Self, DiskError> {
        let db = sled::Config::new()
            .path(dir)
            // Durability points are our explicit, group-committed syncs;
            // sled's timer-driven flush would only add I/O.
            .flush_every_ms(None)
            // Append-heavy, churning keyspaces (Raft log, prepared records):
            // favour write throughput over space.
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| io(&dir.display().to_string(), e))?;
        Ok(SledDisk {
            inner: Arc::new(Inner {
                db,
                trees: Mutex::new(BTreeMap::new()),
                fsync,
                requested_ticket: AtomicU64::new(0),
                durable_ticket: AtomicU64::new(0),
                flush_lock: tokio::sync::Mutex::new(()),
                poisoned: AtomicBool::new(false),
                flushes: AtomicU64::new(0),
            }),
        })
    }

    fn tree(&self, space: &str) -> Result<sled::Tree, DiskError> {
        let mut trees = self.inner.trees.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tree) = trees.get(space) {
            return Ok(tree.clone());
        }
        let tree = self.inner.db.open_tree(space).map_err(|e| io(space, e))?;
        trees.insert(space.to_string(), tree.clone());
        Ok(tree)
    }

    /// How many fsyncs were issued (group commit keeps this below the
    /// number of `sync` calls).
    pub fn flush_count(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }
}

impl Disk for SledDisk {
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.tree(space)?.get(key).map_err(|e| io(space, e))?.map(|v| v.to_vec()))
    }

    fn apply(&self, space: &str, batch: Batch) -> Result<(), DiskError> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch.writes {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        self.tree(space)?.apply_batch(sled_batch).map_err(|e| io(space, e))
    }

    fn range(&self, space: &str, start: &[u8], end: Option<&[u8]>) -> Result<Vec<KeyValue>, DiskError> {
        let tree = self.tree(space)?;
        let iter = match end {
            Some(end) => tree.range(start.to_vec()..end.to_vec()),
            None => tree.range(start.to_vec()..),
        };
        iter.map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(|e| io(space, e))).collect()
    }

    fn last(&self, space: &str) -> Result<Option<KeyValue>, DiskError> {
        Ok(self.tree(space)?.last().map_err(|e| io(space, e))?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn sync(&self) -> BoxFuture<Result<(), DiskError>> {
        let inner = self.inner.clone();
        // The ticket is taken now, synchronously: every write applied before
        // this call is covered by any flush that starts after it.
        let ticket = inner.requested_ticket.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            if !inner.fsync {
                return Ok(());
            }
            let _guard = inner.flush_lock.lock().await;
            if inner.poisoned.load(Ordering::SeqCst) {
                return Err(DiskError::SyncFailed { reason: "an earlier fsync failed".to_string() });
            }
            if inner.durable_ticket.load(Ordering::SeqCst) >= ticket {
                return Ok(());
            }
            let covered = inner.requested_ticket.load(Ordering::SeqCst);
            let started = tokio::time::Instant::now();
            let flushed = inner.db.flush_async().await;
            tracing::debug!(
                elapsed_us = started.elapsed().as_micros() as u64,
                tickets = covered - inner.durable_ticket.load(Ordering::SeqCst),
                "sled flush"
            );
            match flushed {
                Ok(_) => {
                    inner.flushes.fetch_add(1, Ordering::Relaxed);
                    inner.durable_ticket.store(covered, Ordering::SeqCst);
                    Ok(())
                }
                Err(e) => {
                    inner.poisoned.store(true, Ordering::SeqCst);
                    tracing::error!(error = %e, "fsync failed; the node must stop");
                    Err(DiskError::SyncFailed { reason: e.to_string() })
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_survive_close_and_reopen_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = SledDisk::open(dir.path(), true).unwrap();
            let mut batch = Batch::new();
            batch.put(b"k1".to_vec(), b"v1".to_vec());
            batch.put(b"k2".to_vec(), b"v2".to_vec());
            disk.apply("space", batch).unwrap();
            disk.sync().await.unwrap();
        }
        let disk = SledDisk::open(dir.path(), true).unwrap();
        assert_eq!(disk.get("space", b"k1").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(disk.range("space", b"k", None).unwrap().len(), 2);
        assert_eq!(disk.last("space").unwrap().map(|(k, _)| k), Some(b"k2".to_vec()));
        assert_eq!(disk.range("space", b"k1", Some(b"k2")).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn concurrent_syncs_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let disk = SledDisk::open(dir.path(), true).unwrap();
        let mut waits = Vec::new();
        for i in 0u32..50 {
            let mut batch = Batch::new();
            batch.put(i.to_be_bytes().to_vec(), vec![1]);
            disk.apply("s", batch).unwrap();
            waits.push(disk.sync());
        }
        for result in futures::future::join_all(waits).await {
            result.unwrap();
        }
        assert_eq!(disk.inner.durable_ticket.load(Ordering::SeqCst), 50);
        assert!(disk.flush_count() < 50, "group commit: {} flushes for 50 syncs", disk.flush_count());
    }
}
