//! The simulated disk of one node: a [`MemDisk`] (what survives a crash is
//! exactly what was synced) seen through a per-incarnation fence, so that
//! tasks of a crashed incarnation that are still running can neither read
//! nor write what the next incarnation sees.

use crate::world::World;
use paytx_protocol::{BoxFuture, NodeId};
use paytx_storage::{Batch, Disk, DiskError, KeyValue, MemDisk};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct FencedDisk {
    pub node: NodeId,
    pub inner: MemDisk,
    pub alive: Arc<AtomicBool>,
    pub world: World,
}

fn fenced() -> DiskError {
    DiskError::Io { space: "*".into(), reason: "this incarnation of the node crashed".into() }
}

impl FencedDisk {
    fn check(&self) -> Result<(), DiskError> {
        if self.alive.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(fenced())
        }
    }
}

impl Disk for FencedDisk {
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        self.check()?;
        self.inner.get(space, key)
    }

    fn apply(&self, space: &str, batch: Batch) -> Result<(), DiskError> {
        self.check()?;
        self.inner.apply(space, batch)
    }

    fn range(&self, space: &str, start: &[u8], end: Option<&[u8]>) -> Result<Vec<KeyValue>, DiskError> {
        self.check()?;
        self.inner.range(space, start, end)
    }

    fn last(&self, space: &str) -> Result<Option<KeyValue>, DiskError> {
        self.check()?;
        self.inner.last(space)
    }

    fn sync(&self) -> BoxFuture<Result<(), DiskError>> {
        if let Err(e) = self.check() {
            return Box::pin(async move { Err(e) });
        }
        let result = self.inner.sync();
        let node = self.node;
        {
            let mut state = self.world.lock();
            state.counters.disk_syncs += 1;
            let at = state.now_ms();
            state.trace.record(at, || format!("node {node} disk sync"), &node.to_le_bytes());
        }
        result
    }
}
