//! An in-memory `Disk` with crash semantics: what was applied but not synced
//! is lost by [`MemDisk::crash`]. Used by unit tests and the simulator.

use crate::disk::{Batch, Disk, DiskError, KeyValue};
use paytx_protocol::BoxFuture;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

type Space = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Default)]
struct State {
    /// What readers see: every applied write.
    live: BTreeMap<String, Space>,
    /// Batches applied since the last sync, in order.
    unsynced: Vec<(String, Batch)>,
    /// What survives a crash.
    durable: BTreeMap<String, Space>,
    /// Injected fault: the next syncs fail.
    fail_syncs: bool,
    /// Set after a failed sync: every later sync fails (fail-stop).
    poisoned: bool,
}

/// A cloneable handle; clones share the same disk (as a node and the test
/// harness that crashes it do).
#[derive(Debug, Clone, Default)]
pub struct MemDisk {
    state: Arc<Mutex<State>>,
}

fn apply_to(spaces: &mut BTreeMap<String, Space>, space: &str, batch: &Batch) {
    let target = spaces.entry(space.to_string()).or_default();
    for (key, value) in &batch.writes {
        match value {
            Some(value) => {
                target.insert(key.clone(), value.clone());
            }
            None => {
                target.remove(key);
            }
        }
    }
}

impl MemDisk {
    pub fn new() -> Self {
        MemDisk::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned mutex means a test thread panicked mid-write; the data
        // is still consistent (every mutation is a single map operation).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Simulates a power loss: every write not yet synced is gone.
    pub fn crash(&self) {
        let mut state = self.lock();
        state.unsynced.clear();
        state.live = state.durable.clone();
        state.poisoned = false;
    }

    /// Makes future syncs fail (an injected fsync error).
    pub fn fail_syncs(&self, fail: bool) {
        self.lock().fail_syncs = fail;
    }
}

impl Disk for MemDisk {
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.lock().live.get(space).and_then(|s| s.get(key)).cloned())
    }

    fn apply(&self, space: &str, batch: Batch) -> Result<(), DiskError> {
        let mut state = self.lock();
        apply_to(&mut state.live, space, &batch);
        state.unsynced.push((space.to_string(), batch));
        Ok(())
    }

    fn range(&self, space: &str, start: &[u8], end: Option<&[u8]>) -> Result<Vec<KeyValue>, DiskError> {
        let state = self.lock();
        let Some(target) = state.live.get(space) else { return Ok(Vec::new()) };
        Ok(target
            .range(start.to_vec()..)
            .take_while(|(k, _)| end.is_none_or(|end| k.as_slice() < end))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last(&self, space: &str) -> Result<Option<KeyValue>, DiskError> {
        let state = self.lock();
        Ok(state.live.get(space).and_then(|s| s.iter().next_back()).map(|(k, v)| (k.clone(), v.clone())))
    }

    fn sync(&self) -> BoxFuture<Result<(), DiskError>> {
        let result = {
            let mut state = self.lock();
            if state.fail_syncs || state.poisoned {
                state.poisoned = true;
                Err(DiskError::SyncFailed { reason: "injected fsync failure".to_string() })
            } else {
                let pending = std::mem::take(&mut state.unsynced);
                for (space, batch) in &pending {
                    apply_to(&mut state.durable, space, batch);
                }
                Ok(())
            }
        };
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn crash_loses_exactly_the_unsynced_writes() {
        let disk = MemDisk::new();
        let mut batch = Batch::new();
        batch.put(b"a".to_vec(), b"1".to_vec());
        disk.apply("s", batch).unwrap();
        disk.sync().await.unwrap();
        let mut batch = Batch::new();
        batch.put(b"b".to_vec(), b"2".to_vec());
        batch.delete(b"a".to_vec());
        disk.apply("s", batch).unwrap();
        assert_eq!(disk.get("s", b"a").unwrap(), None);
        disk.crash();
        assert_eq!(disk.get("s", b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(disk.get("s", b"b").unwrap(), None);
    }

    #[tokio::test]
    async fn a_failed_sync_poisons_the_disk() {
        let disk = MemDisk::new();
        disk.fail_syncs(true);
        assert!(matches!(disk.sync().await, Err(DiskError::SyncFailed { .. })));
        disk.fail_syncs(false);
        assert!(disk.sync().await.is_err(), "fail-stop: no sync may succeed after a failed one");
    }
}
