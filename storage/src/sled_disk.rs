//! The production `Disk`: one sled database per node, one sled tree per
//! keyspace, `sync` = sled flush (fsync), shared by concurrent callers.
//!
//! Group commit: each caller takes a ticket after its writes are applied;
//! the flush lock is held by one flusher at a time; a flusher first reads the
//! newest ticket, then flushes. A caller that gets the lock and finds its
//! ticket already flushed does not flush again. So N concurrent callers cost
//! about two fsyncs, not N. A ticket is published as durable (and its
//! callers answered) only once the watermark below records its flush.
//!
//! One thread does both steps of a flush, the sled flush and then the
//! watermark's write and fdatasync, as one job. They used to be two
//! pipelined stages on two threads (the watermark of one flush overlapping
//! the sled flush of the next); a `perf stat` of `paytx bench` counted
//! ~30,000 context switches a second on two cores, six to eight per flush,
//! half of them the hand-offs between the node thread and the two stage
//! threads. One job per flush halves the hand-offs, and because a flush
//! then covers a longer window, more callers share each one.
//!
//! Atomic batches without sled's batch: `sled::Tree::apply_batch` pins the
//! log (`PageCache::pin_log`), which seals and writes the current log
//! buffer before *and* after the batch — two `pwrite` + synchronous
//! `sync_file_range` calls per batch, whatever the batch holds. A profile
//! of `paytx bench` (sled's own metrics) showed 185,308 log writes of a
//! median 27 bytes against 6,253 flushes: the sled-io threads spent the
//! run waiting on the device for batch markers. So a batch of two or more
//! writes is applied here as plain single-key operations bracketed by an
//! intent record: first the whole batch is inserted as one value into
//! [`BATCHES_TREE`], then its writes are applied one by one, then the
//! record is removed. sled recovers a prefix of its log (a log message is
//! lost only with everything after it), so after a crash either the record
//! is absent — and so is every write after it — or it is present and is
//! replayed at open (its writes are absolute puts and deletes: replaying is
//! idempotent). Only the last batch can be pending, since the next one
//! starts after its removal. Readers see a batch whole too: applies take
//! the write side of `apply_lock`, reads the read side.
//!
//! Bulk spaces in a database of their own: a space whose name ends in
//! [`BULK_SPACE_SUFFIX`] (every Raft group's snapshot space) lives in a
//! second sled database, `bulk/` inside the data directory, with its own
//! log, intent records and apply lock, synced by [`Disk::sync_bulk`] on
//! the bulk worker. In the node's one database, a snapshot of a records
//! shard (hundreds of MB of chunks) went into the same log as the Raft
//! entries, and the next group commit's flush had to write all of it:
//! `paytx bench-orders --snapshot-every-entries 2000` logged flushes of
//! 355–1,082 ms (against under 1 ms at p50 otherwise) while three replicas
//! stored a 171 MB snapshot, the groups' commits stalled for seconds and
//! the load aborted with `PrepareTimeout`. The database apart was not
//! enough by itself (ext4 made other fsyncs wait for the snapshot's one
//! large fdatasync), so a snapshot's writer also syncs it every 4 MiB
//! ([`Disk::sync_bulk_in_job`], inline on the bulk worker). A bulk database that lost
//! synced writes is not caught by the watermark (which numbers the main
//! database's flushes); a snapshot's chunks are sealed and counted by its
//! manifest, so a torn or missing snapshot is a corrupt one, never a
//! short one. At open, a snapshot space still in the main database (a data
//! directory of an earlier version) is moved to the bulk one.
//!
//! Lost-write detection: every flush is numbered (a *generation*, written
//! into sled just before the flush) and, once the flush succeeded, recorded
//! in the [`Watermark`] file outside sled. Opening refuses a database that
//! came back with an older generation than the watermark: sled truncated
//! synced writes (see [`crate::watermark`] for why that can happen).

use crate::disk::{Batch, Disk, DiskError, KeyValue, SyncCounters};
use crate::watermark::Watermark;
use crate::worker::Worker;
use paytx_protocol::BoxFuture;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One sled database with its batch machinery (see the module docs).
struct Store {
    db: sled::Db,
    /// Intent records of batches being applied (see the module docs).
    batches: sled::Tree,
    /// Writers hold it exclusively (and it numbers their intent records),
    /// readers shared: a batch is visible whole or not at all.
    apply_lock: std::sync::RwLock<u64>,
}

impl Store {
    fn open(db: sled::Db) -> Result<Self, DiskError> {
        let batches = db.open_tree(BATCHES_TREE).map_err(|e| io(BATCHES_TREE, e))?;
        let replayed = replay_intents(&db, &batches)?;
        if replayed > 0 {
            tracing::info!(replayed, "completed batches a crash interrupted");
        }
        Ok(Store { db, batches, apply_lock: std::sync::RwLock::new(0) })
    }
}

struct Inner {
    /// The node's database: Raft logs and votes, journals, everything but
    /// bulk spaces.
    main: Store,
    /// Bulk spaces (snapshots), apart so their bytes never ride a group
    /// commit's flush.
    bulk_store: Store,
    trees: Mutex<BTreeMap<String, sled::Tree>>,
    /// When false, `sync` returns at once (benchmarks of the non-durable
    /// configuration only; never the default).
    fsync: bool,
    requested_ticket: AtomicU64,
    durable_ticket: AtomicU64,
    flush_lock: tokio::sync::Mutex<()>,
    poisoned: AtomicBool,
    flushes: AtomicU64,
    /// The generation of the last flush (only changed under `flush_lock`).
    generation: AtomicU64,
    /// Where the generation of every successful flush is recorded.
    watermark: Arc<Watermark>,
    durability: sled::Tree,
    /// Runs each flush (sled's blocking `flush`, then the watermark's
    /// write + fdatasync), one at a time.
    flusher: Worker,
    /// Runs [`Disk::run_bulk`] jobs (snapshots), one at a time, off the
    /// node's thread and off the flusher's (a snapshot must not delay a
    /// group commit). Its queue holds at most one job per Raft group:
    /// openraft builds one snapshot of a group at a time.
    bulk: Worker,
}

/// sled tree holding the sync generation (see the module docs).
const DURABILITY_TREE: &str = "__paytx-durability";
const GENERATION_KEY: &[u8] = b"generation";
/// sled tree holding the intent record of a batch being applied.
const BATCHES_TREE: &str = "__paytx-batches";

/// Spaces whose name ends so are bulk spaces (see the module docs): every
/// Raft group's snapshot space (`raft-snapshot`, `group-…/raft-snapshot`).
pub const BULK_SPACE_SUFFIX: &str = "raft-snapshot";
/// The bulk database's directory, inside the data directory.
const BULK_DIR: &str = "bulk";

fn is_bulk(space: &str) -> bool {
    space.ends_with(BULK_SPACE_SUFFIX)
}

/// What an intent record holds: the space and its writes, in order.
type IntentRecord = (String, Vec<(Vec<u8>, Option<Vec<u8>>)>);

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
    /// Opens (or creates) the database in `dir`, refusing one that lost
    /// writes a flush had made durable ([`DiskError::LostWrites`]).
    pub fn open(dir: &Path, fsync: bool) -> Result<Self, DiskError> {
        let open_db = |path: &Path| {
            sled::Config::new()
                .path(path)
                // Durability points are our explicit, group-committed syncs;
                // sled's timer-driven flush would only add I/O.
                .flush_every_ms(None)
                // Append-heavy, churning keyspaces (Raft log, prepared records):
                // favour write throughput over space.
                .mode(sled::Mode::HighThroughput)
                .open()
                .map_err(|e| io(&path.display().to_string(), e))
        };
        let db = open_db(dir)?;
        let bulk_db = open_db(&dir.join(BULK_DIR))?;
        let durability = db.open_tree(DURABILITY_TREE).map_err(|e| io(DURABILITY_TREE, e))?;
        let stored = match durability.get(GENERATION_KEY).map_err(|e| io(DURABILITY_TREE, e))? {
            None => None,
            Some(bytes) => Some(u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| DiskError::Corrupt {
                space: DURABILITY_TREE.to_string(),
                key_hex: "67656e65726174696f6e".to_string(),
                reason: format!("{} bytes, expected 8", bytes.len()),
            })?)),
        };
        let (watermark, recorded) = Watermark::open(dir)
            .map_err(|e| DiskError::LostWrites { file: dir.display().to_string(), reason: e.to_string() })?;
        let lost = |reason: String| DiskError::LostWrites { file: dir.join("db").display().to_string(), reason };
        let generation = match (recorded, stored) {
            (Some(recorded), stored) if stored.unwrap_or(0) < recorded => {
                return Err(lost(format!(
                    "sled recovered its writes only through sync generation {}, but {} records that generation {recorded} was durable: \
                     sled dropped synced writes (a corrupt or truncated log segment)",
                    stored.unwrap_or(0),
                    watermark.path().display()
                )))
            }
            (Some(recorded), stored) => recorded.max(stored.unwrap_or(0)),
            (None, Some(stored)) if stored > 0 => {
                return Err(lost(format!(
                    "{} is missing, but the database has synced {stored} generations under it, so losses could not be detected",
                    watermark.path().display()
                )))
            }
            (None, _) => 0,
        };
        let main = Store::open(db)?;
        let bulk_store = Store::open(bulk_db)?;
        move_bulk_spaces(&main, &bulk_store)?;
        let flusher = Worker::start("paytx-flush").map_err(|e| io(&dir.display().to_string(), e))?;
        let bulk = Worker::start("paytx-bulk").map_err(|e| io(&dir.display().to_string(), e))?;
        Ok(SledDisk {
            inner: Arc::new(Inner {
                main,
                bulk_store,
                trees: Mutex::new(BTreeMap::new()),
                fsync,
                requested_ticket: AtomicU64::new(0),
                durable_ticket: AtomicU64::new(0),
                flush_lock: tokio::sync::Mutex::new(()),
                bulk,
                poisoned: AtomicBool::new(false),
                flushes: AtomicU64::new(0),
                generation: AtomicU64::new(generation),
                watermark: Arc::new(watermark),
                durability,
                flusher,
            }),
        })
    }

    /// The space's tree, and the store it lives in.
    fn tree(&self, space: &str) -> Result<(sled::Tree, &Store), DiskError> {
        let store = if is_bulk(space) { &self.inner.bulk_store } else { &self.inner.main };
        let mut trees = self.inner.trees.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tree) = trees.get(space) {
            return Ok((tree.clone(), store));
        }
        let tree = store.db.open_tree(space).map_err(|e| io(space, e))?;
        trees.insert(space.to_string(), tree.clone());
        Ok((tree, store))
    }

    /// How many fsyncs were issued (group commit keeps this below the
    /// number of `sync` calls).
    pub fn flush_count(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }
}

impl Disk for SledDisk {
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        let (tree, store) = self.tree(space)?;
        let _reading = store.apply_lock.read().unwrap_or_else(|p| p.into_inner());
        Ok(tree.get(key).map_err(|e| io(space, e))?.map(|v| v.to_vec()))
    }

    fn apply(&self, space: &str, batch: Batch) -> Result<(), DiskError> {
        let (tree, store) = self.tree(space)?;
        let mut next_intent = store.apply_lock.write().unwrap_or_else(|p| p.into_inner());
        // One write is atomic by itself: no intent record.
        if let [(key, value)] = batch.writes.as_slice() {
            return write_one(&tree, key, value.as_deref()).map_err(|e| io(space, e));
        }
        let intent_key = next_intent.to_be_bytes();
        *next_intent = next_intent.wrapping_add(1);
        let record: IntentRecord = (space.to_string(), batch.writes);
        let encoded = paytx_protocol::encode(&record).map_err(|e| io(BATCHES_TREE, e))?;
        store.batches.insert(intent_key, encoded).map_err(|e| io(BATCHES_TREE, e))?;
        for (key, value) in &record.1 {
            write_one(&tree, key, value.as_deref()).map_err(|e| io(space, e))?;
        }
        store.batches.remove(intent_key).map_err(|e| io(BATCHES_TREE, e))?;
        Ok(())
    }

    fn range(&self, space: &str, start: &[u8], end: Option<&[u8]>) -> Result<Vec<KeyValue>, DiskError> {
        let (tree, store) = self.tree(space)?;
        let _reading = store.apply_lock.read().unwrap_or_else(|p| p.into_inner());
        let iter = match end {
            Some(end) => tree.range(start.to_vec()..end.to_vec()),
            None => tree.range(start.to_vec()..),
        };
        iter.map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(|e| io(space, e))).collect()
    }

    fn last(&self, space: &str) -> Result<Option<KeyValue>, DiskError> {
        let (tree, store) = self.tree(space)?;
        let _reading = store.apply_lock.read().unwrap_or_else(|p| p.into_inner());
        Ok(tree.last().map_err(|e| io(space, e))?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn sync_counters(&self) -> SyncCounters {
        SyncCounters {
            syncs: self.inner.requested_ticket.load(Ordering::Relaxed),
            flushes: self.inner.flushes.load(Ordering::Relaxed),
        }
    }

    fn run_bulk(&self, job: crate::BulkJob) -> BoxFuture<Result<(), DiskError>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.bulk.run(job).await.map_err(|e| io("bulk", e)) })
    }

    /// Flushes the bulk database, on the bulk worker (after the snapshot
    /// job that wrote it). A failure is a failed fsync: the node stops.
    fn sync_bulk(&self) -> BoxFuture<Result<(), DiskError>> {
        let inner = self.inner.clone();
        let worker = inner.clone();
        Box::pin(async move {
            match inner.bulk.run(move || worker.flush_bulk()).await {
                Ok(flushed) => flushed,
                Err(e) => Err(inner.poison(format!("flushing the bulk database: {e}"))),
            }
        })
    }

    /// Runs on the bulk worker, inside the job (see the trait).
    fn sync_bulk_in_job(&self) -> Result<(), DiskError> {
        self.inner.flush_bulk()
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
            // Under the flush lock: a flush covering `ticket`, or find that
            // one already did.
            let _guard = inner.flush_lock.lock().await;
            inner.check_poisoned()?;
            if inner.durable_ticket.load(Ordering::SeqCst) >= ticket {
                return Ok(());
            }
            inner.flush(ticket).await
        })
    }
}

fn write_one(tree: &sled::Tree, key: &[u8], value: Option<&[u8]>) -> sled::Result<()> {
    match value {
        Some(value) => tree.insert(key, value).map(|_| ()),
        None => tree.remove(key).map(|_| ()),
    }
}

/// Moves every non-empty bulk space the main database still holds (a data
/// directory of a version before bulk spaces) into the bulk database:
/// copies it whole over whatever the bulk tree holds, flushes the bulk
/// database, and only then drops the main database's tree and flushes that.
/// A crash anywhere in it leaves the main tree in place, and the next open
/// copies again; once the main tree is gone, the copy was durable.
fn move_bulk_spaces(main: &Store, bulk: &Store) -> Result<(), DiskError> {
    for name in main.db.tree_names() {
        let Ok(space) = std::str::from_utf8(&name) else { continue };
        if !is_bulk(space) {
            continue;
        }
        let from = main.db.open_tree(&name).map_err(|e| io(space, e))?;
        if from.is_empty() {
            continue;
        }
        let to = bulk.db.open_tree(&name).map_err(|e| io(space, e))?;
        to.clear().map_err(|e| io(space, e))?;
        let mut moved: u64 = 0;
        for item in from.iter() {
            let (key, value) = item.map_err(|e| io(space, e))?;
            to.insert(key, value).map_err(|e| io(space, e))?;
            moved += 1;
        }
        bulk.db.flush().map_err(|e| io(space, e))?;
        main.db.drop_tree(&name).map_err(|e| io(space, e))?;
        main.db.flush().map_err(|e| io(space, e))?;
        tracing::info!(space, keys = moved, "moved a snapshot space into the bulk database");
    }
    Ok(())
}

/// Completes every batch whose intent record survived a crash, oldest
/// first, and removes the records. Returns how many there were (at most
/// one in practice: see the module docs).
fn replay_intents(db: &sled::Db, batches: &sled::Tree) -> Result<usize, DiskError> {
    let mut replayed = 0;
    for item in batches.iter() {
        let (intent_key, bytes) = item.map_err(|e| io(BATCHES_TREE, e))?;
        let (space, writes): IntentRecord = paytx_protocol::decode_local(&bytes).map_err(|e| DiskError::Corrupt {
            space: BATCHES_TREE.to_string(),
            key_hex: intent_key.iter().map(|b| format!("{b:02x}")).collect(),
            reason: format!("an intent record does not decode: {e}"),
        })?;
        let tree = db.open_tree(&space).map_err(|e| io(&space, e))?;
        for (key, value) in &writes {
            write_one(&tree, key, value.as_deref()).map_err(|e| io(&space, e))?;
        }
        batches.remove(&intent_key).map_err(|e| io(BATCHES_TREE, e))?;
        replayed += 1;
    }
    Ok(replayed)
}

impl Inner {
    fn check_poisoned(&self) -> Result<(), DiskError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(DiskError::SyncFailed { reason: "an earlier fsync failed".to_string() });
        }
        Ok(())
    }

    /// Flushes the bulk database on the calling thread (the bulk worker).
    /// A failure is a failed fsync: the node stops.
    fn flush_bulk(&self) -> Result<(), DiskError> {
        if !self.fsync {
            return Ok(());
        }
        self.check_poisoned()?;
        match self.bulk_store.db.flush() {
            Ok(_) => Ok(()),
            Err(e) => Err(self.poison(format!("flushing the bulk database: {e}"))),
        }
    }

    /// Fail-stop: every later sync fails too.
    fn poison(&self, reason: String) -> DiskError {
        self.poisoned.store(true, Ordering::SeqCst);
        tracing::error!(error = %reason, "fsync failed; the node must stop");
        DiskError::SyncFailed { reason }
    }

    /// One flush, numbered (call under `flush_lock`): sled's flush, then
    /// the watermark records its generation, then every ticket taken before
    /// it started is published as durable. Nothing is acknowledged before
    /// the watermark covers it.
    async fn flush(&self, ticket: u64) -> Result<(), DiskError> {
        let covered = self.requested_ticket.load(Ordering::SeqCst);
        assert!(covered >= ticket, "a flush covers the ticket it was started for");
        let started = tokio::time::Instant::now();
        // After every write this flush covers (they were applied before
        // `covered` was read), so a log truncated before any of them also
        // loses this generation.
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        if let Err(e) = self.durability.insert(GENERATION_KEY, &generation.to_be_bytes()) {
            return Err(self.poison(e.to_string()));
        }
        let db = self.main.db.clone();
        let watermark = self.watermark.clone();
        let job = move || -> Result<(), String> {
            db.flush().map_err(|e| e.to_string())?;
            watermark.record(generation).map_err(|e| format!("recording the durable watermark: {e}"))
        };
        match self.flusher.run(job).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.poison(e)),
            Err(e) => return Err(self.poison(e.to_string())),
        }
        tracing::debug!(elapsed_us = started.elapsed().as_micros() as u64, generation, "flush");
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.generation.store(generation, Ordering::SeqCst);
        self.durable_ticket.fetch_max(covered, Ordering::SeqCst);
        Ok(())
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

    fn tree_names(path: &Path) -> Vec<String> {
        let db = sled::open(path).unwrap();
        db.tree_names().iter().filter_map(|name| std::str::from_utf8(name).ok().map(str::to_string)).collect()
    }

    #[tokio::test]
    async fn snapshot_spaces_live_in_the_bulk_database_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = SledDisk::open(dir.path(), true).unwrap();
            let mut batch = Batch::new();
            batch.put(b"c1".to_vec(), vec![7; 4096]);
            batch.put(b"c2".to_vec(), vec![8; 4096]);
            disk.apply("group-record-0/raft-snapshot", batch).unwrap();
            let mut log = Batch::new();
            log.put(b"e1".to_vec(), b"entry".to_vec());
            disk.apply("group-record-0/raft-log", log).unwrap();
            disk.sync_bulk().await.unwrap();
            disk.sync().await.unwrap();
        }
        let main = tree_names(dir.path());
        assert!(main.iter().any(|name| name == "group-record-0/raft-log"), "{main:?}");
        assert!(
            !main.iter().any(|name| name.ends_with(BULK_SPACE_SUFFIX)),
            "no snapshot in the main database: {main:?}"
        );
        let bulk = tree_names(&dir.path().join(BULK_DIR));
        assert!(bulk.iter().any(|name| name == "group-record-0/raft-snapshot"), "{bulk:?}");
        let disk = SledDisk::open(dir.path(), true).unwrap();
        assert_eq!(disk.get("group-record-0/raft-snapshot", b"c2").unwrap(), Some(vec![8; 4096]));
        assert_eq!(disk.range("group-record-0/raft-log", b"", None).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_snapshot_space_of_an_earlier_version_moves_to_the_bulk_database_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledDisk::open(dir.path(), true).unwrap());
        {
            // The layout before bulk spaces: the snapshot in the node's database.
            let db = sled::open(dir.path()).unwrap();
            let old = db.open_tree("raft-snapshot").unwrap();
            old.insert(b"manifest", b"m".to_vec()).unwrap();
            old.insert(b"\xff-chunk", vec![3; 100]).unwrap();
            db.flush().unwrap();
        }
        {
            let disk = SledDisk::open(dir.path(), true).unwrap();
            let moved = disk.range("raft-snapshot", b"", None).unwrap();
            assert_eq!(moved, vec![(b"manifest".to_vec(), b"m".to_vec()), (b"\xff-chunk".to_vec(), vec![3; 100])]);
        }
        assert!(!tree_names(dir.path()).iter().any(|name| name == "raft-snapshot"), "gone from the main database");
        let disk = SledDisk::open(dir.path(), true).unwrap();
        assert_eq!(disk.get("raft-snapshot", b"manifest").unwrap(), Some(b"m".to_vec()), "and kept in the bulk one");
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
