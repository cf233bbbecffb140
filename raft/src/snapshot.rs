//! A group's current snapshot, persisted on the `Disk` seam in its own
//! keyspace, replaced only by a newer one.
//!
//! Stored in chunks of at most [`CHUNK_BYTES`], never as one value: sled
//! 0.34 writes a value (more exactly, a tree node) above about a quarter of
//! its 512 KiB segment as a separate *blob* file, and a multi-megabyte
//! snapshot rewritten every few thousand entries while the node's other
//! trees churn made sled fail an insert with `No such file or directory`
//! (a blob it still pointed at was gone) — found by `paytx bench-orders
//! --orders 1000000 --snapshot-every-entries 2000`, where it stopped the
//! node (fail-stop) at about 320,000 orders. Chunks small enough that a
//! whole node of them (sled splits a leaf past 16 entries) stays under the
//! blob threshold keep snapshots out of blob files altogether.
//!
//! Layout of a space: `manifest` (sealed [`Manifest`]: the generation, its
//! chunk count and length) and the chunks `0xff ‖ generation (8 bytes BE) ‖
//! index (4 bytes BE)` of the sealed [`StoredSnapshot`]. A new snapshot
//! writes its chunks under a generation never used in this space, then the
//! manifest (one key: the switch is atomic), then deletes the previous
//! generation's chunks. sled recovers a prefix of its log, so a manifest
//! that survived a crash has every chunk written before it; chunks of a
//! generation whose manifest did not survive are orphans, deleted by the
//! next snapshot. `current` (the whole snapshot as one value, as stored
//! before chunking) is still read, and deleted by the next snapshot.

// The error type is openraft's `StorageError`, fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::NodeId;
use openraft::{BasicNode, LogId, SnapshotMeta, StorageError, StorageIOError};
use paytx_storage::record::{open_at, seal};
use paytx_storage::{run_bulk, Batch, DiskError, SharedDisk};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// The whole snapshot as one value (how it was stored before chunking).
const LEGACY_KEY: &[u8] = b"current";
const MANIFEST_KEY: &[u8] = b"manifest";
/// First byte of every chunk key: after `current` and `manifest`, so the
/// space's last key is its newest chunk.
const CHUNK_PREFIX: u8 = 0xff;
/// Largest chunk of a stored snapshot. sled's blob threshold is a node of
/// more than 512 KiB / 4 (its segment size over its minimum items per
/// segment); a leaf holds up to 17 entries before it splits: 17 × 4 KiB
/// plus keys stays well under it.
pub const CHUNK_BYTES: usize = 4 * 1024;
/// Chunks written between two syncs of a snapshot's write (4 MiB): the
/// device writes a large snapshot as it goes, instead of holding it all
/// dirty for the final sync (see `Disk::sync_bulk_in_job`).
const CHUNKS_PER_SYNC: u32 = 1024;
/// Chunk deletions per atomic batch: the batch's intent record holds its
/// keys (13 bytes each), so it stays a small value too.
const DELETES_PER_BATCH: usize = 256;

/// A snapshot as stored: openraft's metadata and the state machine's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    pub data: Vec<u8>,
}

/// Which chunks hold the current snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    generation: u64,
    chunks: u32,
    /// Length of the sealed snapshot, all chunks together.
    bytes: u64,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn chunk_key(generation: u64, index: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(13);
    key.push(CHUNK_PREFIX);
    key.extend_from_slice(&generation.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// The generation and index of a chunk key, or `None` for another key.
fn parse_chunk_key(key: &[u8]) -> Option<(u64, u32)> {
    if key.len() != 13 || key[0] != CHUNK_PREFIX {
        return None;
    }
    let generation = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let index = u32::from_be_bytes(key[9..13].try_into().ok()?);
    Some((generation, index))
}

fn corrupt(space: &str, key: &[u8], reason: String) -> DiskError {
    DiskError::Corrupt { space: space.to_string(), key_hex: key.iter().map(|b| format!("{b:02x}")).collect(), reason }
}

fn manifest(disk: &SharedDisk, space: &str) -> Result<Option<Manifest>, DiskError> {
    disk.get(space, MANIFEST_KEY)?.map(|bytes| open_at(space, MANIFEST_KEY, &bytes)).transpose()
}

/// The snapshot stored in `space`, if any. Blocking, and as costly as the
/// snapshot is large: at startup, or through [`SnapshotStore::load`].
fn load(disk: &SharedDisk, space: &str) -> Result<Option<StoredSnapshot>, StorageError<NodeId>> {
    load_from(disk, space, manifest(disk, space).map_err(read_err)?)
}

/// The snapshot `manifest` names, or without one the pre-chunking value.
fn load_from(
    disk: &SharedDisk,
    space: &str,
    manifest: Option<Manifest>,
) -> Result<Option<StoredSnapshot>, StorageError<NodeId>> {
    let Some(manifest) = manifest else {
        return match disk.get(space, LEGACY_KEY).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => open_at(space, LEGACY_KEY, &bytes).map(Some).map_err(read_err),
        };
    };
    let (from, to) = (chunk_key(manifest.generation, 0), chunk_key(manifest.generation, manifest.chunks));
    let chunks = disk.range(space, &from, Some(&to)).map_err(read_err)?;
    // Capacity from what was read, not from the manifest's claim.
    let mut sealed = Vec::with_capacity(chunks.iter().map(|(_, chunk)| chunk.len()).sum());
    for (expected, (key, chunk)) in (0..manifest.chunks).zip(&chunks) {
        if parse_chunk_key(key) != Some((manifest.generation, expected)) {
            let reason = format!("chunk {expected} of generation {} is missing", manifest.generation);
            return Err(read_err(corrupt(space, key, reason)));
        }
        sealed.extend_from_slice(chunk);
    }
    if chunks.len() != manifest.chunks as usize || sealed.len() as u64 != manifest.bytes {
        let reason = format!(
            "the manifest names {} chunks of {} bytes, the space holds {} chunks of {} bytes",
            manifest.chunks,
            manifest.bytes,
            chunks.len(),
            sealed.len()
        );
        return Err(read_err(corrupt(space, MANIFEST_KEY, reason)));
    }
    open_at(space, MANIFEST_KEY, &sealed).map(Some).map_err(read_err)
}

/// What the store knows of its space without reading it back.
#[derive(Debug)]
struct Held {
    /// The log id the stored snapshot covers, so that storing a snapshot
    /// never reads the stored one back to compare (that read was as large
    /// as the snapshot).
    through: Option<LogId<NodeId>>,
    /// The current manifest (its chunks go when the next is stored).
    manifest: Option<Manifest>,
    /// The highest generation any chunk was written under: the next one
    /// is new even after a crash mid-write.
    highest_generation: u64,
    /// Chunks of other generations than the manifest's, found at open: a
    /// crash interrupted a write (above it) or a clean-up (below).
    orphans: Vec<Vec<u8>>,
    /// The space still holds the pre-chunking `current` value.
    legacy: bool,
}

/// One group's current snapshot. Everything whose cost grows with the
/// state — encoding, sealing, writing, reading back — runs through
/// [`paytx_storage::Disk::run_bulk`], off the node's thread: a snapshot of
/// a few hundred megabytes built on that thread stalled every group of the
/// node for seconds, long enough for proposals to time out.
#[derive(Clone)]
pub struct SnapshotStore {
    disk: SharedDisk,
    space: Arc<str>,
    /// Only changed under its lock, together with the writes it describes.
    held: Arc<Mutex<Held>>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore").field("space", &self.space).finish()
    }
}

impl SnapshotStore {
    /// Opens the store of `space` and returns the snapshot it holds, if any
    /// (read on the caller's thread: a node reads it once, as it starts).
    pub fn open(disk: SharedDisk, space: &str) -> Result<(Self, Option<StoredSnapshot>), StorageError<NodeId>> {
        let manifest = manifest(&disk, space).map_err(read_err)?;
        let stored = load_from(&disk, space, manifest)?;
        // Both ranges are empty unless a crash left chunks behind, so
        // reading them (values too: the seam has no keys-only scan) is cheap.
        let orphan_ranges = match manifest {
            Some(current) => vec![
                (chunk_key(0, 0), Some(chunk_key(current.generation, 0))),
                (chunk_key(current.generation.saturating_add(1), 0), None),
            ],
            None => vec![(chunk_key(0, 0), None)],
        };
        let mut orphans: Vec<Vec<u8>> = Vec::new();
        for (from, to) in orphan_ranges {
            let found = disk.range(space, &from, to.as_deref()).map_err(read_err)?;
            orphans.extend(found.into_iter().map(|(key, _)| key));
        }
        // Every chunk not of the manifest's generation is an orphan, so the
        // highest generation ever written is among them or the manifest's.
        let highest_generation = orphans
            .iter()
            .filter_map(|key| parse_chunk_key(key))
            .map(|(generation, _)| generation)
            .chain(manifest.map(|m| m.generation))
            .max()
            .unwrap_or(0);
        // Without a manifest, `stored` is the pre-chunking value if any;
        // with one, that value is only left by a crash mid-migration.
        let legacy = match manifest {
            None => stored.is_some(),
            Some(_) => disk.get(space, LEGACY_KEY).map_err(read_err)?.is_some(),
        };
        let held = Held {
            through: stored.as_ref().and_then(|stored| stored.meta.last_log_id),
            manifest,
            highest_generation,
            orphans,
            legacy,
        };
        let store = SnapshotStore { disk, space: Arc::from(space), held: Arc::new(Mutex::new(held)) };
        Ok((store, stored))
    }

    /// The stored snapshot (for a follower that needs it), read off the
    /// node's thread.
    pub async fn load(&self) -> Result<Option<StoredSnapshot>, StorageError<NodeId>> {
        let (disk, space) = (self.disk.clone(), self.space.clone());
        run_bulk(&self.disk, move || load(&disk, &space)).await.map_err(read_err)?
    }

    /// Stores `stored` as the current snapshot.
    pub async fn persist(&self, stored: StoredSnapshot) -> Result<StoredSnapshot, StorageError<NodeId>> {
        self.persist_with(move || Ok((stored, ()))).await.map(|(stored, ())| stored)
    }

    /// Runs `make` off the node's thread — it encodes (or decodes) the
    /// state into the snapshot to store, plus whatever else the caller
    /// needs back — then stores that snapshot there too, unless the stored
    /// one is newer (a slow build finishing after an install must not move
    /// the snapshot back behind a log prefix that is already purged). Synced
    /// before it returns, so before openraft may purge the log entries it
    /// covers.
    pub async fn persist_with<X, F>(&self, make: F) -> Result<(StoredSnapshot, X), StorageError<NodeId>>
    where
        X: Send + 'static,
        F: FnOnce() -> Result<(StoredSnapshot, X), String> + Send + 'static,
    {
        let (disk, space, held) = (self.disk.clone(), self.space.clone(), self.held.clone());
        let written = run_bulk(&self.disk, move || -> Result<(StoredSnapshot, X), StorageError<NodeId>> {
            let (stored, extra) = make().map_err(|e| write_err(std::io::Error::other(e)))?;
            let mut held = held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if held.through > stored.meta.last_log_id {
                return Ok((stored, extra));
            }
            store_chunked(&disk, &space, &mut held, &stored).map_err(write_err)?;
            held.through = stored.meta.last_log_id;
            Ok((stored, extra))
        })
        .await
        .map_err(write_err)??;
        self.disk.sync_bulk().await.map_err(write_err)?;
        Ok(written)
    }
}

/// Writes `stored` as a new generation of chunks, switches the manifest to
/// it, then deletes what the previous snapshot (and any orphan) left.
fn store_chunked(disk: &SharedDisk, space: &str, held: &mut Held, stored: &StoredSnapshot) -> Result<(), DiskError> {
    let sealed = seal(stored);
    let generation = held.highest_generation.checked_add(1).expect("a snapshot generation per snapshot: u64 is enough");
    held.highest_generation = generation;
    let mut chunks: u32 = 0;
    for chunk in sealed.chunks(CHUNK_BYTES) {
        let mut batch = Batch::new();
        batch.put(chunk_key(generation, chunks), chunk.to_vec());
        disk.apply(space, batch)?;
        chunks = chunks.checked_add(1).expect("a snapshot of under 16 TiB");
        if chunks.is_multiple_of(CHUNKS_PER_SYNC) {
            disk.sync_bulk_in_job()?;
        }
    }
    assert_eq!(chunks as usize, sealed.len().div_ceil(CHUNK_BYTES), "every byte is in one chunk");
    let manifest = Manifest { generation, chunks, bytes: sealed.len() as u64 };
    let mut switch = Batch::new();
    switch.put(MANIFEST_KEY.to_vec(), seal(&manifest));
    disk.apply(space, switch)?;
    // The new snapshot is in place: what follows only frees space, and a
    // crash in it leaves orphans the next snapshot deletes.
    let previous = held.manifest.replace(manifest);
    let mut doomed: Vec<Vec<u8>> = Vec::new();
    if let Some(previous) = previous {
        doomed.extend((0..previous.chunks).map(|index| chunk_key(previous.generation, index)));
    }
    doomed.append(&mut held.orphans);
    if held.legacy {
        doomed.push(LEGACY_KEY.to_vec());
        held.legacy = false;
    }
    for keys in doomed.chunks(DELETES_PER_BATCH) {
        let mut batch = Batch::new();
        for key in keys {
            batch.delete(key.clone());
        }
        disk.apply(space, batch)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, StoredMembership};
    use paytx_storage::MemDisk;
    use std::sync::Arc;

    fn stored(index: u64, data: &[u8]) -> StoredSnapshot {
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), index);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s-{index}"),
        };
        StoredSnapshot { meta, data: data.to_vec() }
    }

    /// A disk that counts the chunk writes made before each in-job sync.
    struct SyncProbe {
        inner: MemDisk,
        writes: std::sync::atomic::AtomicU64,
        synced_after: Mutex<Vec<u64>>,
    }

    impl paytx_storage::Disk for SyncProbe {
        fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
            self.inner.get(space, key)
        }
        fn apply(&self, space: &str, batch: Batch) -> Result<(), DiskError> {
            self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.apply(space, batch)
        }
        fn range(
            &self,
            space: &str,
            start: &[u8],
            end: Option<&[u8]>,
        ) -> Result<Vec<paytx_storage::KeyValue>, DiskError> {
            self.inner.range(space, start, end)
        }
        fn last(&self, space: &str) -> Result<Option<paytx_storage::KeyValue>, DiskError> {
            self.inner.last(space)
        }
        fn sync(&self) -> paytx_protocol::BoxFuture<Result<(), DiskError>> {
            self.inner.sync()
        }
        fn sync_bulk_in_job(&self) -> Result<(), DiskError> {
            let writes = self.writes.load(std::sync::atomic::Ordering::SeqCst);
            self.synced_after.lock().unwrap().push(writes);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_large_snapshot_is_synced_as_it_is_written_not_only_at_the_end() {
        let probe = Arc::new(SyncProbe {
            inner: MemDisk::new(),
            writes: Default::default(),
            synced_after: Mutex::new(Vec::new()),
        });
        let disk: SharedDisk = probe.clone();
        let (store, _) = SnapshotStore::open(disk, "snap").unwrap();
        store.persist(stored(1, b"small")).await.unwrap();
        assert!(probe.synced_after.lock().unwrap().is_empty(), "a one-chunk snapshot: only the final sync");
        let before = probe.writes.load(std::sync::atomic::Ordering::SeqCst);
        let big = vec![5u8; 10 * 1024 * 1024];
        store.persist(stored(2, &big)).await.unwrap();
        let synced: Vec<u64> = probe.synced_after.lock().unwrap().iter().map(|w| w - before).collect();
        assert_eq!(synced, vec![1024, 2048], "after every 4 MiB of chunks");
        assert_eq!(store.load().await.unwrap().expect("a snapshot").data, big);
    }

    #[tokio::test]
    async fn a_snapshot_never_moves_back() {
        let disk: SharedDisk = Arc::new(MemDisk::new());
        let (store, none) = SnapshotStore::open(disk.clone(), "snap").unwrap();
        assert!(none.is_none());
        store.persist(stored(100, b"newer")).await.unwrap();
        // A slow build of an older state finishing after an install.
        store.persist(stored(40, b"older")).await.unwrap();
        let current = store.load().await.unwrap().expect("a snapshot");
        assert_eq!(current.data, b"newer".to_vec());
        store.persist(stored(120, b"newest")).await.unwrap();
        assert_eq!(store.load().await.unwrap().expect("a snapshot").data, b"newest".to_vec());
        // Another group's space is its own.
        assert!(SnapshotStore::open(disk.clone(), "other").unwrap().1.is_none());
        // Reopened, the store knows what it holds without being told: an
        // older snapshot still does not replace it.
        let (reopened, held) = SnapshotStore::open(disk.clone(), "snap").unwrap();
        assert_eq!(held.expect("a snapshot").data, b"newest".to_vec());
        reopened.persist(stored(110, b"stale")).await.unwrap();
        assert_eq!(reopened.load().await.unwrap().expect("a snapshot").data, b"newest".to_vec());
    }

    #[tokio::test]
    async fn a_failed_build_stores_nothing_and_says_why() {
        let disk: SharedDisk = Arc::new(MemDisk::new());
        let (store, _) = SnapshotStore::open(disk, "snap").unwrap();
        let failed =
            store.persist_with(|| -> Result<(StoredSnapshot, ()), String> { Err("encoder broke".into()) }).await;
        assert!(format!("{:?}", failed.expect_err("the build failed")).contains("encoder broke"));
        assert!(store.load().await.unwrap().is_none());
    }

    /// The space's keys, in order.
    fn keys(disk: &SharedDisk, space: &str) -> Vec<Vec<u8>> {
        disk.range(space, b"", None).unwrap().into_iter().map(|(key, _)| key).collect()
    }

    fn chunk_count(disk: &SharedDisk, space: &str) -> usize {
        keys(disk, space).iter().filter(|key| parse_chunk_key(key).is_some()).count()
    }

    #[tokio::test]
    async fn a_large_snapshot_is_stored_in_small_chunks_and_the_old_ones_go() {
        let disk: SharedDisk = Arc::new(MemDisk::new());
        let (store, _) = SnapshotStore::open(disk.clone(), "snap").unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        store.persist(stored(10, &big)).await.unwrap();
        let values = disk.range("snap", b"", None).unwrap();
        assert!(values.iter().all(|(_, value)| value.len() <= CHUNK_BYTES), "no value above a chunk");
        let first = chunk_count(&disk, "snap");
        assert!(first >= 100_000 / CHUNK_BYTES, "{first} chunks");
        assert_eq!(store.load().await.unwrap().expect("a snapshot").data, big);
        // A smaller one replaces it: only its own chunks are left.
        store.persist(stored(20, b"small")).await.unwrap();
        assert_eq!(chunk_count(&disk, "snap"), 1);
        let (_, reopened) = SnapshotStore::open(disk.clone(), "snap").unwrap();
        assert_eq!(reopened.expect("a snapshot").data, b"small".to_vec());
    }

    #[tokio::test]
    async fn a_snapshot_stored_whole_before_chunking_is_read_and_replaced() {
        let disk: SharedDisk = Arc::new(MemDisk::new());
        let mut batch = Batch::new();
        batch.put(LEGACY_KEY.to_vec(), seal(&stored(5, b"whole")));
        disk.apply("snap", batch).unwrap();
        let (store, held) = SnapshotStore::open(disk.clone(), "snap").unwrap();
        assert_eq!(held.expect("the legacy snapshot").data, b"whole".to_vec());
        // It still refuses an older one, and gives way to a newer one.
        store.persist(stored(4, b"older")).await.unwrap();
        assert_eq!(store.load().await.unwrap().expect("a snapshot").data, b"whole".to_vec());
        store.persist(stored(6, b"newer")).await.unwrap();
        assert_eq!(store.load().await.unwrap().expect("a snapshot").data, b"newer".to_vec());
        assert!(disk.get("snap", LEGACY_KEY).unwrap().is_none(), "the whole value is deleted");
    }

    #[tokio::test]
    async fn chunks_a_crash_left_behind_are_never_read_and_are_deleted_by_the_next_snapshot() {
        let disk: SharedDisk = Arc::new(MemDisk::new());
        let (store, _) = SnapshotStore::open(disk.clone(), "snap").unwrap();
        store.persist(stored(10, b"kept")).await.unwrap();
        // A crash after a newer snapshot's chunks, before its manifest (and
        // more of them than the next one has); and one in a clean-up.
        let mut crashed = Batch::new();
        for index in 0..5 {
            crashed.put(chunk_key(2, index), b"torn".to_vec());
        }
        crashed.put(chunk_key(0, 3), b"left".to_vec());
        disk.apply("snap", crashed).unwrap();
        let (store, held) = SnapshotStore::open(disk.clone(), "snap").unwrap();
        assert_eq!(held.expect("a snapshot").data, b"kept".to_vec(), "orphans are not read");
        store.persist(stored(30, b"next")).await.unwrap();
        let left: Vec<(u64, u32)> = keys(&disk, "snap").iter().filter_map(|key| parse_chunk_key(key)).collect();
        assert_eq!(left, vec![(3, 0)], "a generation never used before, and nothing else");
        assert_eq!(store.load().await.unwrap().expect("a snapshot").data, b"next".to_vec());
    }

    #[tokio::test]
    async fn a_missing_chunk_is_a_corrupt_snapshot_not_a_short_one() {
        let disk: SharedDisk = Arc::new(MemDisk::new());
        let (store, _) = SnapshotStore::open(disk.clone(), "snap").unwrap();
        store.persist(stored(10, &vec![7u8; 3 * CHUNK_BYTES])).await.unwrap();
        let mut lose = Batch::new();
        lose.delete(chunk_key(1, 1));
        disk.apply("snap", lose).unwrap();
        let error = store.load().await.expect_err("a chunk is missing");
        assert!(format!("{error:?}").contains("missing"), "{error:?}");
        assert!(SnapshotStore::open(disk, "snap").is_err(), "a node does not start on it");
    }
}
