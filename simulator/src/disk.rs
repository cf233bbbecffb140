//! The simulated disk of one node: a [`MemDisk`] (what survives a crash is
//! what was synced, plus maybe a prefix of what was not) seen through a
//! per-incarnation fence, so that tasks of a crashed incarnation that are
//! still running can neither read nor write what the next incarnation sees.
//!
//! Its flushes take virtual time ([`device`]): syncs overlap and share
//! flushes (group commit) as on a real device.

use crate::world::World;
use paytx_protocol::{BoxFuture, NodeId};
use paytx_storage::mem::SyncDelay;
use paytx_storage::{Batch, Disk, DiskError, KeyValue, MemDisk};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The flush latency of one node's simulated device, drawn from its own
/// seeded RNG: per run a fast (1–2 ms), ordinary (1–5 ms) or slow (3–12 ms)
/// device, with a rare stall (1 flush in 100: 20–80 ms). Every flush is
/// counted and traced.
pub fn device(world: World, node: NodeId, mut rng: ChaCha8Rng) -> SyncDelay {
    let (min_ms, max_ms) = match rng.gen_range(0..3u32) {
        0 => (1, 2),
        1 => (1, 5),
        _ => (3, 12),
    };
    let rng = Mutex::new(rng);
    Arc::new(move || {
        let ms = {
            let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
            if rng.gen_bool(0.01) {
                rng.gen_range(20..=80)
            } else {
                rng.gen_range(min_ms..=max_ms)
            }
        };
        let mut state = world.lock();
        state.counters.disk_flushes += 1;
        let at = state.now_ms();
        state.trace.record(at, || format!("node {node} disk flush ({ms} ms)"), &[7, node as u8, ms as u8]);
        Duration::from_millis(ms)
    })
}

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

    fn run_bulk(&self, job: paytx_storage::BulkJob) -> BoxFuture<Result<(), DiskError>> {
        if let Err(e) = self.check() {
            return Box::pin(async move { Err(e) });
        }
        self.inner.run_bulk(job)
    }

    /// The simulated disk is one store: a bulk sync is a sync, counted and
    /// traced as one.
    fn sync_bulk(&self) -> BoxFuture<Result<(), DiskError>> {
        self.sync()
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
