//! Free space on the node's data disk, behind a small trait so tests can
//! simulate a full disk deterministically.
//!
//! Below `[limits] min_free_disk_bytes` the node refuses *new* work that
//! would grow its disk — a client's new transaction (`RequestError::DiskFull`)
//! and a prepare for a shard here (vote NO, `AbortReason::DiskFull`) — while
//! decisions, commits and Raft traffic of transactions already in flight go
//! on, so they finish instead of stalling with their locks held. Once space
//! returns, the next request is accepted again: nothing to reset.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where a node learns how much space its data disk has left.
pub trait FreeSpace: Send + Sync + 'static {
    /// Bytes available to this process on the data directory's file system.
    fn available_bytes(&self) -> std::io::Result<u64>;
}

/// A settable amount, for tests (and the simulator).
#[derive(Debug, Clone, Default)]
pub struct FixedFreeSpace(Arc<AtomicU64>);

impl FixedFreeSpace {
    pub fn new(bytes: u64) -> Self {
        FixedFreeSpace(Arc::new(AtomicU64::new(bytes)))
    }

    pub fn set(&self, bytes: u64) {
        self.0.store(bytes, Ordering::SeqCst);
    }
}

impl FreeSpace for FixedFreeSpace {
    fn available_bytes(&self) -> std::io::Result<u64> {
        Ok(self.0.load(Ordering::SeqCst))
    }
}

/// The check itself: `Some((free, min))` when below the minimum. An error
/// reading the free space is logged and does not refuse work (a broken
/// statvfs must not take a healthy node down; a truly full disk still
/// fails its writes, and those fail-stop).
pub(crate) fn below_minimum(source: Option<&dyn FreeSpace>, min_free_bytes: u64) -> Option<(u64, u64)> {
    let source = source.filter(|_| min_free_bytes > 0)?;
    match source.available_bytes() {
        Ok(free) if free < min_free_bytes => Some((free, min_free_bytes)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the data disk's free space; not refusing work");
            None
        }
    }
}
