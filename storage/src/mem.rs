//! An in-memory `Disk` with crash semantics. Used by unit tests and the
//! simulator.
//!
//! * **Crash.** What was applied but not synced is lost by
//!   [`MemDisk::crash`]; [`MemDisk::crash_keeping`] keeps a prefix of it
//!   instead (a torn tail, below).
//! * **Syncs that take time.** By default a sync completes at once. With a
//!   [`SyncDelay`] ([`MemDisk::set_sync_delay`]) a sync is a flush of the
//!   simulated device that takes the (virtual) time the delay says, one
//!   flush at a time, with group commit exactly as [`crate::SledDisk`] does
//!   it: a sync takes its ticket when it is called (it covers every batch
//!   applied before the call), waits for the flush lock, and returns at once
//!   if a flush that started after its ticket already covered it; otherwise
//!   it flushes what was applied when *its* flush starts. So several syncs
//!   are in flight at once and one flush serves them all, and a write
//!   applied while a flush is running is not made durable by that flush.
//! * **Torn tails.** What a real crash may leave is modelled on what the
//!   production disk guarantees. `SledDisk::apply` makes a batch atomic
//!   across a crash (an intent record, replayed at open: either the whole
//!   batch survives or none of it), and sled recovers a *prefix* of its one
//!   log per node (a lost log message takes every later one with it). So
//!   after a crash the production disk holds everything synced plus a
//!   prefix, in apply order across all keyspaces, of the batches applied
//!   since — each batch whole or absent. [`MemDisk::crash_keeping`] keeps
//!   exactly such a prefix; it never splits a batch, since production never
//!   does.

use crate::disk::{Batch, Disk, DiskError, KeyValue, SyncCounters};
use paytx_protocol::BoxFuture;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Space = BTreeMap<Vec<u8>, Vec<u8>>;

/// How long one flush of the simulated device takes; called once per flush,
/// when it starts (the simulator draws it from the run's seed).
pub type SyncDelay = Arc<dyn Fn() -> Duration + Send + Sync>;

#[derive(Debug, Default)]
struct State {
    /// What readers see: every applied write.
    live: BTreeMap<String, Space>,
    /// Batches applied since the last flush, in order, with their sequence
    /// numbers.
    unsynced: Vec<(u64, String, Batch)>,
    /// What survives a crash.
    durable: BTreeMap<String, Space>,
    /// The sequence number of the last applied batch.
    applied: u64,
    /// Every batch up to this sequence number is durable.
    durable_through: u64,
    /// Bumped by every crash: a flush that began before it is void.
    epoch: u64,
    /// Injected fault: the next syncs fail.
    fail_syncs: bool,
    /// Set after a failed sync: every later sync fails (fail-stop).
    poisoned: bool,
    syncs: u64,
    flushes: u64,
    group: GroupCommitStats,
}

/// How much the group commit of a [`MemDisk`] with a [`SyncDelay`] shared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Syncs that waited behind a flush in progress and were then covered
    /// by a flush they did not run.
    pub joined: u64,
    /// The most syncs in flight at once.
    pub max_in_flight: u64,
    in_flight: u64,
}

/// A cloneable handle; clones share the same disk (as a node and the test
/// harness that crashes it do).
#[derive(Clone, Default)]
pub struct MemDisk {
    state: Arc<Mutex<State>>,
    /// One flush at a time (group commit), when syncs take time.
    flush_lock: Arc<tokio::sync::Mutex<()>>,
    delay: Arc<Mutex<Option<SyncDelay>>>,
}

impl std::fmt::Debug for MemDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemDisk").field("state", &*self.lock()).finish()
    }
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

fn sync_failed() -> DiskError {
    DiskError::SyncFailed { reason: "injected fsync failure".to_string() }
}

fn crashed() -> DiskError {
    DiskError::Io { space: "*".into(), reason: "the disk crashed during the sync".into() }
}

impl State {
    /// Makes every batch up to `through` durable.
    fn flush(&mut self, through: u64) {
        let keep = self.unsynced.iter().take_while(|(seq, _, _)| *seq <= through).count();
        let durable = &mut self.durable;
        for (_, space, batch) in self.unsynced.drain(..keep) {
            apply_to(durable, &space, &batch);
        }
        self.durable_through = self.durable_through.max(through);
        self.flushes += 1;
    }

    /// Where a sync with `ticket`, called in `epoch`, stands: `Some` when it
    /// is answered without (another) flush.
    fn settled(&self, epoch: u64, ticket: u64) -> Option<Result<(), DiskError>> {
        if self.epoch != epoch {
            Some(Err(crashed()))
        } else if self.poisoned {
            Some(Err(sync_failed()))
        } else if self.durable_through >= ticket {
            Some(Ok(()))
        } else {
            None
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
        self.crash_keeping(0);
    }

    /// Simulates a power loss that tears the unsynced tail: the first
    /// `keep` batches applied since the last flush survive (whole), the
    /// rest is gone. See the module docs for why a prefix of whole batches
    /// is what the production disk can leave.
    pub fn crash_keeping(&self, keep: usize) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let survivors = keep.min(state.unsynced.len());
        for (_, space, batch) in state.unsynced.drain(..survivors) {
            apply_to(&mut state.durable, &space, &batch);
        }
        state.unsynced.clear();
        state.durable_through = state.applied;
        state.live = state.durable.clone();
        state.poisoned = false;
        state.epoch += 1;
    }

    /// How many batches were applied since the last flush (what a crash
    /// may tear).
    pub fn unsynced_batches(&self) -> usize {
        self.lock().unsynced.len()
    }

    /// What the group commit shared so far (syncs with a delay only).
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.lock().group
    }

    /// Makes future syncs fail (an injected fsync error).
    pub fn fail_syncs(&self, fail: bool) {
        self.lock().fail_syncs = fail;
    }

    /// Makes every flush take the time `delay` says (`None`: syncs complete
    /// at once). Needs a tokio runtime with a timer.
    pub fn set_sync_delay(&self, delay: Option<SyncDelay>) {
        *self.delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }
}

impl Disk for MemDisk {
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.lock().live.get(space).and_then(|s| s.get(key)).cloned())
    }

    fn apply(&self, space: &str, batch: Batch) -> Result<(), DiskError> {
        let mut state = self.lock();
        apply_to(&mut state.live, space, &batch);
        state.applied += 1;
        let seq = state.applied;
        state.unsynced.push((seq, space.to_string(), batch));
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

    fn sync_counters(&self) -> SyncCounters {
        let state = self.lock();
        SyncCounters { syncs: state.syncs, flushes: state.flushes }
    }

    fn sync(&self) -> BoxFuture<Result<(), DiskError>> {
        let delay = self.delay.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut state = self.lock();
        state.syncs += 1;
        let Some(delay) = delay else {
            // Instant syncs: flush now.
            let result = if state.fail_syncs || state.poisoned {
                state.poisoned = true;
                Err(sync_failed())
            } else {
                let through = state.applied;
                state.flush(through);
                Ok(())
            };
            return Box::pin(async move { result });
        };
        // The ticket is taken now, synchronously: it covers every batch
        // applied before this call.
        let (ticket, epoch) = (state.applied, state.epoch);
        state.group.in_flight += 1;
        state.group.max_in_flight = state.group.max_in_flight.max(state.group.in_flight);
        drop(state);
        let disk = self.clone();
        Box::pin(async move {
            let _in_flight = InFlight(disk.clone());
            disk.flush_through(epoch, ticket, delay).await
        })
    }
}

/// Counts a delayed sync out of `in_flight` when it ends or is dropped.
struct InFlight(MemDisk);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().group.in_flight -= 1;
    }
}

impl MemDisk {
    /// A delayed sync: done at once if a finished flush covers `ticket`;
    /// otherwise waits for the flush lock, and either a flush that ran
    /// meanwhile covered it (it joined that group) or it runs one.
    async fn flush_through(&self, epoch: u64, ticket: u64, delay: SyncDelay) -> Result<(), DiskError> {
        if let Some(result) = self.lock().settled(epoch, ticket) {
            return result;
        }
        let _flushing = self.flush_lock.lock().await;
        let through = {
            let mut state = self.lock();
            if let Some(result) = state.settled(epoch, ticket) {
                if result.is_ok() {
                    state.group.joined += 1;
                }
                return result;
            }
            state.applied
        };
        tokio::time::sleep(delay()).await;
        let mut state = self.lock();
        if state.epoch != epoch {
            return Err(crashed());
        }
        if state.fail_syncs || state.poisoned {
            state.poisoned = true;
            return Err(sync_failed());
        }
        // `through` ≥ `ticket`: this flush covers the sync that ran it.
        state.flush(through);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(disk: &MemDisk, key: &[u8]) {
        let mut batch = Batch::new();
        batch.put(key.to_vec(), b"v".to_vec());
        disk.apply("s", batch).unwrap();
    }

    fn has(disk: &MemDisk, key: &[u8]) -> bool {
        disk.get("s", key).unwrap().is_some()
    }

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

    #[tokio::test(start_paused = true)]
    async fn syncs_take_time_and_share_flushes() {
        let disk = MemDisk::new();
        disk.set_sync_delay(Some(Arc::new(|| Duration::from_millis(10))));
        let start = tokio::time::Instant::now();
        let mut syncs = Vec::new();
        for i in 0..6u8 {
            put(&disk, &[i]);
            syncs.push(tokio::spawn(disk.sync()));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for sync in syncs {
            sync.await.unwrap().unwrap();
        }
        let counters = disk.sync_counters();
        assert_eq!(counters.syncs, 6);
        // The first flush covers write 0; the five syncs called meanwhile
        // share the second.
        assert_eq!(counters.flushes, 2, "{counters:?}");
        let group = disk.group_commit_stats();
        assert_eq!((group.joined, group.max_in_flight), (4, 6), "{group:?}");
        assert_eq!(start.elapsed(), Duration::from_millis(20));
        disk.crash();
        assert!((0..6u8).all(|i| has(&disk, &[i])), "every synced write survives");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_applied_during_a_flush_is_not_covered_by_it() {
        let disk = MemDisk::new();
        disk.set_sync_delay(Some(Arc::new(|| Duration::from_millis(10))));
        put(&disk, b"a");
        let first = tokio::spawn(disk.sync());
        tokio::time::sleep(Duration::from_millis(5)).await;
        put(&disk, b"b");
        first.await.unwrap().unwrap();
        assert_eq!(disk.unsynced_batches(), 1, "b was applied after the flush started");
        let second = tokio::spawn(disk.sync());
        tokio::time::sleep(Duration::from_millis(5)).await;
        // A crash in the middle of the second flush: it fails, b is gone.
        disk.crash();
        assert!(matches!(second.await.unwrap(), Err(DiskError::Io { .. })));
        assert!(has(&disk, b"a") && !has(&disk, b"b"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_injected_failure_fails_the_flush_in_progress() {
        let disk = MemDisk::new();
        disk.set_sync_delay(Some(Arc::new(|| Duration::from_millis(10))));
        put(&disk, b"a");
        let sync = tokio::spawn(disk.sync());
        tokio::time::sleep(Duration::from_millis(5)).await;
        disk.fail_syncs(true);
        assert!(matches!(sync.await.unwrap(), Err(DiskError::SyncFailed { .. })));
        disk.fail_syncs(false);
        put(&disk, b"b");
        assert!(disk.sync().await.is_err(), "fail-stop");
    }

    #[tokio::test]
    async fn a_torn_crash_keeps_a_prefix_of_whole_batches() {
        let disk = MemDisk::new();
        put(&disk, b"synced");
        disk.sync().await.unwrap();
        for key in [b"x", b"y", b"z"] {
            let mut batch = Batch::new();
            batch.put(key.to_vec(), b"1".to_vec());
            batch.put([key.as_slice(), b"-twin"].concat(), b"1".to_vec());
            disk.apply("s", batch).unwrap();
        }
        assert_eq!(disk.unsynced_batches(), 3);
        disk.crash_keeping(2);
        let survived: Vec<bool> = [b"x", b"y", b"z"]
            .iter()
            .map(|key| {
                let whole = has(&disk, key.as_slice());
                assert_eq!(whole, has(&disk, &[key.as_slice(), b"-twin"].concat()), "a batch survives whole");
                whole
            })
            .collect();
        assert_eq!(survived, vec![true, true, false], "the first two batches, in apply order");
        assert!(has(&disk, b"synced"));
        assert_eq!(disk.unsynced_batches(), 0);
        // What survived is durable now: a second crash keeps it.
        disk.crash();
        assert!(has(&disk, b"y") && !has(&disk, b"z"));
    }
}
