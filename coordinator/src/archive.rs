//! The key archive: idempotency keys of forgotten transactions, kept on
//! disk for `[raft] key_retention_secs` of log time.
//!
//! A key lives in the in-memory table while its transaction does; when the
//! transaction is forgotten its key moves here. A day of keys at full
//! throughput is hundreds of millions of them: RAM could not hold them, a
//! disk can (each is about 100 bytes, by key, and listed once more by time).
//!
//! The archive is part of the replicated state machine, with one twist: it
//! is written as entries apply, but the in-memory table is restored from
//! the last snapshot after a restart and the log re-applied from there, so
//! after a restart the archive is *ahead* of the table it serves. Every
//! archived key therefore carries the [`Version`] (log index and position
//! in the entry) of the command that retired it, and a lookup made while
//! applying command `v` only sees versions before `v` — exactly what the
//! first application saw. Re-applying a command writes the same version
//! again (same bytes), so replay is idempotent.
//!
//! Eviction is logical: a key retired at log time `t` is not seen by a
//! lookup at log time `t + retention` or later, whether or not its bytes
//! are still on disk. [`KeyArchive::collect`] deletes the bytes of keys
//! evicted as of a persisted snapshot's log time: every later lookup (a
//! replay starts at that snapshot) runs at that log time or later, where
//! they are evicted anyway.

use paytx_protocol::txn::BodyHash;
use paytx_protocol::{IdempotencyKey, Outcome, TxnId};
use paytx_storage::{Batch, DiskError, SharedDisk};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Where a command sits in the log: its entry's index and its position in
/// the entry's proposal. Ordered as the log is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    pub index: u64,
    pub position: u32,
}

impl Version {
    /// Before every command of entry `index`.
    pub fn start_of(index: u64) -> Self {
        Version { index, position: 0 }
    }

    fn to_bytes(self) -> [u8; 12] {
        let mut bytes = [0; 12];
        bytes[..8].copy_from_slice(&self.index.to_be_bytes());
        bytes[8..].copy_from_slice(&self.position.to_be_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let index = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let position = u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?);
        Some(Version { index, position })
    }
}

/// A retired key: the transaction that first used it, its body's hash and
/// its outcome (what a retry gets), and when it was retired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedKey {
    pub txn: TxnId,
    pub body_hash: BodyHash,
    pub outcome: Outcome,
    /// Log time of the retiring entry. 0: retired before the log carried
    /// time (an entry or a snapshot of an earlier version); such a key
    /// counts as retired at the first log time stamped (`TxnTable`).
    pub retired_ms: u64,
}

/// One archived version, as a snapshot carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveEntry {
    pub key: IdempotencyKey,
    pub version: Version,
    pub record: ArchivedKey,
}

/// Why the archive could not be read or written: the node must stop (its
/// state machine cannot apply without it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("key archive disk: {0}")]
    Disk(String),
    #[error("key archive record {what} is damaged")]
    Damaged { what: String },
}

impl From<DiskError> for ArchiveError {
    fn from(e: DiskError) -> Self {
        ArchiveError::Disk(e.to_string())
    }
}

/// The archive's storage. Implementations: [`DiskArchive`] (the node's
/// disk seam: sled in production, the simulated disk in a run) and
/// [`MemArchive`] (unit tests of the table).
pub trait KeyArchive: Send + Sync {
    /// Records each entry's key as retired by the command at its version:
    /// the keys one entry's commands retired, or a snapshot's.
    fn put_all(&self, entries: &[ArchiveEntry]) -> Result<(), ArchiveError>;

    /// The latest version of `key` retired before `before`.
    fn get(&self, key: &IdempotencyKey, before: Version) -> Result<Option<ArchivedKey>, ArchiveError>;

    /// Every version retired before `before` and still `retained`, in key
    /// order: what a snapshot carries.
    fn scan(&self, before: Version, retained: &dyn Fn(&ArchivedKey) -> bool)
        -> Result<Vec<ArchiveEntry>, ArchiveError>;

    /// Deletes every version retired at a log time in `from_ms..=through_ms`;
    /// returns how many. The caller has established that they are evicted
    /// for every lookup to come.
    fn collect(&self, from_ms: u64, through_ms: u64) -> Result<u64, ArchiveError>;
}

/// The archive a table uses: shared by the table's clones (a snapshot's
/// clone reads the same archive, through versions before its own).
#[derive(Clone)]
pub struct Archive(pub Arc<dyn KeyArchive>);

impl Archive {
    pub fn in_memory() -> Self {
        Archive(Arc::new(MemArchive::default()))
    }
}

impl Default for Archive {
    fn default() -> Self {
        Archive::in_memory()
    }
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Archive")
    }
}

/// Tables compare by their replicated content; where the archive's bytes
/// live is not part of it.
impl PartialEq for Archive {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Archive {}

/// Space of the versions by key: `len(key) (u8) ‖ key ‖ version` → record.
pub const KEYS_SPACE: &str = "coordinator-keys";
/// Space of the versions by retirement time, for collection: one record
/// per retirement time per [`KeyArchive::put_all`] (usually one per log
/// entry), `retired_ms ‖ first version` → the `(key, version)`s it wrote.
/// One per entry rather than one per key: an insert per archived key was
/// half of the archive's cost (a `perf` profile of `paytx bench`).
pub const TIMES_SPACE: &str = "coordinator-key-times";

fn key_prefix(key: &IdempotencyKey) -> Vec<u8> {
    let bytes = key.0.as_bytes();
    // Keys are at most 128 bytes (`IdempotencyKey::MAX_LEN_BYTES`), checked
    // before any Begin is proposed; a longer one is cut to its length byte's
    // reach rather than mis-framed.
    let len = bytes.len().min(u8::MAX as usize);
    let mut prefix = Vec::with_capacity(1 + len + 12);
    prefix.push(len as u8);
    prefix.extend_from_slice(&bytes[..len]);
    prefix
}

fn versioned_key(key: &IdempotencyKey, version: Version) -> Vec<u8> {
    let mut bytes = key_prefix(key);
    bytes.extend_from_slice(&version.to_bytes());
    bytes
}

fn time_key(retired_ms: u64, version: Version) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + 12);
    bytes.extend_from_slice(&retired_ms.to_be_bytes());
    bytes.extend_from_slice(&version.to_bytes());
    bytes
}

/// What one record of [`TIMES_SPACE`] lists.
type TimeGroup = Vec<(IdempotencyKey, Version)>;

/// The archive on the node's disk seam.
pub struct DiskArchive {
    disk: SharedDisk,
}

impl DiskArchive {
    pub fn new(disk: SharedDisk) -> Self {
        DiskArchive { disk }
    }

    /// A stored record: checksummed like every value a node stores.
    fn decode(bytes: &[u8], what: &[u8]) -> Result<ArchivedKey, ArchiveError> {
        paytx_storage::record::open(bytes).map_err(|e| ArchiveError::Damaged { what: format!("{what:?} ({e})") })
    }
}

impl KeyArchive for DiskArchive {
    fn put_all(&self, entries: &[ArchiveEntry]) -> Result<(), ArchiveError> {
        // Each write alone (a one-write batch is a plain insert; a larger
        // one goes through an intent record, twice the bytes). Nothing here
        // needs them atomic: they are only relied on once synced, before a
        // snapshot is stored, and a crash before that replays every entry
        // after the stored snapshot, which writes them all again.
        let mut groups: BTreeMap<u64, TimeGroup> = BTreeMap::new();
        for entry in entries {
            let mut keys = Batch::new();
            keys.put(versioned_key(&entry.key, entry.version), paytx_storage::record::seal(&entry.record));
            self.disk.apply(KEYS_SPACE, keys)?;
            groups.entry(entry.record.retired_ms).or_default().push((entry.key.clone(), entry.version));
        }
        for (retired_ms, group) in groups {
            let first = group.iter().map(|(_, version)| *version).min().expect("a group is never empty");
            let mut times = Batch::new();
            times.put(time_key(retired_ms, first), paytx_storage::record::seal(&group));
            self.disk.apply(TIMES_SPACE, times)?;
        }
        Ok(())
    }

    fn get(&self, key: &IdempotencyKey, before: Version) -> Result<Option<ArchivedKey>, ArchiveError> {
        let start = key_prefix(key);
        let end = versioned_key(key, before);
        // A key has one version per time it was retired within the
        // retention (usually one): the range is small.
        let versions = self.disk.range(KEYS_SPACE, &start, Some(&end))?;
        let Some((stored, value)) = versions.last() else { return Ok(None) };
        Self::decode(value, stored).map(Some)
    }

    fn scan(
        &self,
        before: Version,
        retained: &dyn Fn(&ArchivedKey) -> bool,
    ) -> Result<Vec<ArchiveEntry>, ArchiveError> {
        let mut entries = Vec::new();
        for (stored, value) in self.disk.range(KEYS_SPACE, &[], None)? {
            let damaged = || ArchiveError::Damaged { what: format!("{stored:?}") };
            let len = *stored.first().ok_or_else(damaged)? as usize;
            let key_bytes = stored.get(1..1 + len).ok_or_else(damaged)?;
            let version = Version::from_bytes(stored.get(1 + len..).ok_or_else(damaged)?).ok_or_else(damaged)?;
            if version >= before {
                continue; // retired by an entry the snapshot does not cover
            }
            let record = Self::decode(&value, &stored)?;
            if !retained(&record) {
                continue;
            }
            let key = IdempotencyKey::new(String::from_utf8(key_bytes.to_vec()).map_err(|_| damaged())?);
            entries.push(ArchiveEntry { key, version, record });
        }
        Ok(entries)
    }

    fn collect(&self, from_ms: u64, through_ms: u64) -> Result<u64, ArchiveError> {
        if from_ms > through_ms {
            return Ok(0);
        }
        let end = through_ms.checked_add(1).map(u64::to_be_bytes);
        let times = self.disk.range(TIMES_SPACE, &from_ms.to_be_bytes(), end.as_ref().map(|e| e.as_slice()))?;
        let mut keys = Batch::new();
        let mut time_keys = Batch::new();
        let mut deleted = 0u64;
        for (stored, value) in &times {
            let group: TimeGroup = paytx_storage::record::open(value)
                .map_err(|e| ArchiveError::Damaged { what: format!("{stored:?} ({e})") })?;
            for (key, version) in &group {
                keys.delete(versioned_key(key, *version));
            }
            deleted += group.len() as u64;
            time_keys.delete(stored.clone());
        }
        // Keys first, then the records that list them: a crash between
        // leaves a list of keys already gone, deleted again next time.
        self.disk.apply(KEYS_SPACE, keys)?;
        self.disk.apply(TIMES_SPACE, time_keys)?;
        Ok(deleted)
    }
}

/// The archive in memory, for unit tests of the table.
#[derive(Default)]
pub struct MemArchive {
    versions: Mutex<BTreeMap<(IdempotencyKey, Version), ArchivedKey>>,
}

impl MemArchive {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(IdempotencyKey, Version), ArchivedKey>> {
        // Every update is one insert or remove: a poisoned map is whole.
        self.versions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KeyArchive for MemArchive {
    fn put_all(&self, entries: &[ArchiveEntry]) -> Result<(), ArchiveError> {
        let mut versions = self.lock();
        for entry in entries {
            versions.insert((entry.key.clone(), entry.version), entry.record.clone());
        }
        Ok(())
    }

    fn get(&self, key: &IdempotencyKey, before: Version) -> Result<Option<ArchivedKey>, ArchiveError> {
        let versions = self.lock();
        let first = Version { index: 0, position: 0 };
        let found = versions.range((key.clone(), first)..(key.clone(), before)).next_back();
        Ok(found.map(|(_, record)| record.clone()))
    }

    fn scan(
        &self,
        before: Version,
        retained: &dyn Fn(&ArchivedKey) -> bool,
    ) -> Result<Vec<ArchiveEntry>, ArchiveError> {
        Ok(self
            .lock()
            .iter()
            .filter(|((_, version), record)| *version < before && retained(record))
            .map(|((key, version), record)| ArchiveEntry {
                key: key.clone(),
                version: *version,
                record: record.clone(),
            })
            .collect())
    }

    fn collect(&self, from_ms: u64, through_ms: u64) -> Result<u64, ArchiveError> {
        let mut versions = self.lock();
        let before = versions.len();
        versions.retain(|_, record| !(from_ms..=through_ms).contains(&record.retired_ms));
        Ok((before - versions.len()) as u64)
    }
}
