//! The openraft log store (`RaftLogStorage`, storage-v2) on the `Disk` seam.
//!
//! Layout: keyspace `raft-log` maps the big-endian log index to a sealed
//! (checksummed) entry, so keys sort by index; keyspace `raft-meta` holds the
//! vote, the committed log id and the last purged log id.
//!
//! Durability: `save_vote` syncs before returning (a vote must never be
//! forgotten, or a node could vote twice in one term). `append` applies the
//! entries and hands the sync to a task that calls openraft's `LogFlushed`
//! callback when the fsync is done — openraft keeps going meanwhile, and
//! concurrent appends share fsyncs through the disk's group commit.
//!
//! Reads: the newest [`MAX_CACHED_ENTRIES`] appended entries are also kept
//! in memory, as a contiguous suffix of the log, and a read that falls
//! entirely inside them is answered from there. Replication to each
//! follower and the state machine's apply read back every entry the leader
//! just wrote; from sled that was a range copy and a decode per read (5% of
//! a profile of `paytx bench`). Truncate and purge cut the cache exactly as
//! they cut the log, so it never holds an entry the log does not.

// The error type is openraft's `StorageError`, fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::disk::{Batch, SharedDisk};
use crate::record::{open_at, seal};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogId, RaftLogReader, RaftTypeConfig, StorageError, StorageIOError, Vote};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

const LOG: &str = "raft-log";
const META: &str = "raft-meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// Most entries kept in memory for reads (at most a few MB: a batched
/// entry is a few KB). A follower lagging further is served from sled.
pub const MAX_CACHED_ENTRIES: usize = 512;

/// The newest appended entries, by index: a contiguous run, used only
/// while it ends at the log's last entry.
struct Cache<E> {
    entries: BTreeMap<u64, E>,
    /// The index of the log's last entry as this store's own writes left
    /// it (`Known(None)`: the log is empty), or `Unknown` when it could not
    /// be read at start (the cache then stays off).
    log_last: LogLast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogLast {
    Known(Option<u64>),
    Unknown,
}

impl<E> Cache<E> {
    fn new(log_last: LogLast) -> Self {
        Cache { entries: BTreeMap::new(), log_last }
    }
}

impl<E: Clone> Cache<E> {
    /// `entries` were appended, in index order.
    fn appended(&mut self, entries: Vec<(u64, E)>) {
        let (Some(first), Some(newest)) =
            (entries.first().map(|(index, _)| *index), entries.last().map(|(index, _)| *index))
        else {
            return;
        };
        // Not contiguous with what is cached (the log restarted after a
        // snapshot, or an append over existing entries): start again.
        if self.entries.last_key_value().is_some_and(|(last, _)| last.checked_add(1) != Some(first)) {
            self.entries.clear();
        }
        if let LogLast::Known(last) = self.log_last {
            self.log_last = LogLast::Known(Some(last.map_or(newest, |last| last.max(newest))));
        }
        self.entries.extend(entries);
        while self.entries.len() > MAX_CACHED_ENTRIES {
            self.entries.pop_first();
        }
    }

    /// The entries `start..end` (`end = None`: to the last), if the cache
    /// holds every one of them and ends where the log does.
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<E>> {
        let (first, _) = self.entries.first_key_value()?;
        let (last, _) = self.entries.last_key_value()?;
        if self.log_last != LogLast::Known(Some(*last)) || start < *first {
            return None;
        }
        let end = end.unwrap_or(last.saturating_add(1));
        if end > last.saturating_add(1) {
            return None;
        }
        if start >= end {
            return Some(Vec::new());
        }
        Some(self.entries.range(start..end).map(|(_, e)| e.clone()).collect())
    }

    /// The log lost every entry from `index` on (truncate).
    fn truncated(&mut self, index: u64) {
        self.entries.split_off(&index);
        if let LogLast::Known(Some(last)) = self.log_last {
            if last >= index {
                self.log_last = LogLast::Known(index.checked_sub(1));
            }
        }
    }

    /// The log lost every entry up to `index`, inclusive (purge).
    fn purged(&mut self, index: u64) {
        match index.checked_add(1) {
            Some(next) => self.entries = self.entries.split_off(&next),
            None => self.entries.clear(),
        }
    }
}

/// The Raft log of one node, persisted through a [`SharedDisk`].
pub struct LogStore<C: RaftTypeConfig> {
    disk: SharedDisk,
    /// The keyspaces of this group's log and metadata (every Raft group of
    /// a node has its own pair on the node's one disk).
    spaces: Arc<Spaces>,
    /// Shared with the readers openraft takes (`get_log_reader`).
    cache: Arc<Mutex<Cache<C::Entry>>>,
    _config: PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            disk: self.disk.clone(),
            spaces: self.spaces.clone(),
            cache: self.cache.clone(),
            _config: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    /// The coordinator group's log (keyspaces `raft-log`, `raft-meta`).
    pub fn new(disk: SharedDisk) -> Self {
        Self::in_spaces(disk, Spaces { log: LOG.to_string(), meta: META.to_string() })
    }

    /// The log of the Raft group whose keyspaces start with `prefix`
    /// (`<prefix>raft-log`, `<prefix>raft-meta`).
    pub fn with_prefix(disk: SharedDisk, prefix: &str) -> Self {
        Self::in_spaces(disk, Spaces { log: format!("{prefix}{LOG}"), meta: format!("{prefix}{META}") })
    }

    fn in_spaces(disk: SharedDisk, spaces: Spaces) -> Self {
        // The last entry's index is its key: no decode. An unreadable log
        // leaves the cache off; the reads that matter report the error.
        let log_last = match disk.last(&spaces.log) {
            Ok(None) => LogLast::Known(None),
            Ok(Some((key, _))) => match <[u8; 8]>::try_from(key.as_slice()) {
                Ok(key) => LogLast::Known(Some(u64::from_be_bytes(key))),
                Err(_) => LogLast::Unknown,
            },
            Err(_) => LogLast::Unknown,
        };
        LogStore {
            disk,
            spaces: Arc::new(spaces),
            cache: Arc::new(Mutex::new(Cache::new(log_last))),
            _config: PhantomData,
        }
    }

    fn cache(&self) -> MutexGuard<'_, Cache<C::Entry>> {
        // A panic while holding the lock left at worst a shorter cache.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The keyspace names of one group's log.
#[derive(Debug)]
struct Spaces {
    log: String,
    meta: String,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

type SErr<C> = StorageError<<C as RaftTypeConfig>::NodeId>;

fn read_err<C: RaftTypeConfig>(e: impl std::error::Error + 'static) -> SErr<C> {
    StorageIOError::read_logs(&e).into()
}

fn write_err<C: RaftTypeConfig>(e: impl std::error::Error + 'static) -> SErr<C> {
    StorageIOError::write_logs(&e).into()
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, SErr<C>> {
        match self.disk.get(&self.spaces.meta, key).map_err(read_err::<C>)? {
            None => Ok(None),
            Some(bytes) => open_at(&self.spaces.meta, key, &bytes).map(Some).map_err(read_err::<C>),
        }
    }

    fn write_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), SErr<C>> {
        let mut batch = Batch::new();
        batch.put(key.to_vec(), seal(value));
        self.disk.apply(&self.spaces.meta, batch).map_err(write_err::<C>)
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, SErr<C>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(cached) = self.cache().get(start, end) {
            return Ok(cached);
        }
        let end_key = end.map(index_key);
        let rows = self
            .disk
            .range(&self.spaces.log, &index_key(start), end_key.as_ref().map(|k| &k[..]))
            .map_err(read_err::<C>)?;
        rows.iter()
            .map(|(key, value)| open_at::<C::Entry>(&self.spaces.log, key, value).map_err(read_err::<C>))
            .collect()
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, SErr<C>> {
        let last_purged_log_id: Option<LogId<C::NodeId>> = self.read_meta(KEY_PURGED)?;
        let last_log_id = match self.disk.last(&self.spaces.log).map_err(read_err::<C>)? {
            Some((key, value)) => {
                Some(open_at::<C::Entry>(&self.spaces.log, &key, &value).map_err(read_err::<C>)?.get_log_id().clone())
            }
            None => last_purged_log_id.clone(),
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), SErr<C>> {
        self.write_meta(KEY_VOTE, vote)?;
        self.disk.sync().await.map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, SErr<C>> {
        self.read_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<C::NodeId>>) -> Result<(), SErr<C>> {
        // Not synced on its own: a lost `committed` only means re-applying
        // from the last snapshot, which the state machine does anyway.
        self.write_meta(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<C::NodeId>>, SErr<C>> {
        Ok(self.read_meta::<Option<LogId<C::NodeId>>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), SErr<C>>
    where
        I: IntoIterator<Item = C::Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = Batch::new();
        let mut appended = Vec::new();
        for entry in entries {
            let index = entry.get_log_id().index;
            batch.put(index_key(index).to_vec(), seal(&entry));
            appended.push((index, entry));
        }
        self.disk.apply(&self.spaces.log, batch).map_err(write_err::<C>)?;
        // Cached once on the disk (not yet durable: neither is the log).
        self.cache().appended(appended);
        let sync = self.disk.sync();
        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            let result = sync.await.map_err(|e| std::io::Error::other(e.to_string()));
            tracing::trace!(elapsed_us = started.elapsed().as_micros() as u64, "raft log append durable");
            callback.log_io_completed(result);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), SErr<C>> {
        // The cache first: a failed delete below must not leave it serving
        // entries the log is losing.
        self.cache().truncated(log_id.index);
        let rows = self.disk.range(&self.spaces.log, &index_key(log_id.index), None).map_err(read_err::<C>)?;
        let mut batch = Batch::new();
        for (key, _) in rows {
            batch.delete(key);
        }
        self.disk.apply(&self.spaces.log, batch).map_err(write_err::<C>)
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), SErr<C>> {
        // Record the purge point first: if we crash half-way, the log state
        // still reports a consistent `last_purged_log_id`.
        self.write_meta(KEY_PURGED, &log_id)?;
        self.cache().purged(log_id.index);
        let end = log_id.index.checked_add(1).map(index_key);
        let rows =
            self.disk.range(&self.spaces.log, &index_key(0), end.as_ref().map(|k| &k[..])).map_err(read_err::<C>)?;
        let mut batch = Batch::new();
        for (key, _) in rows {
            batch.delete(key);
        }
        self.disk.apply(&self.spaces.log, batch).map_err(write_err::<C>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(indexes: std::ops::Range<u64>) -> Cache<u64> {
        let mut cache = Cache::new(LogLast::Known(None));
        cache.appended(indexes.map(|i| (i, i * 10)).collect());
        cache
    }

    #[test]
    fn a_read_is_served_only_when_the_cache_holds_all_of_it() {
        let cache = cache(5..10);
        assert_eq!(cache.get(5, Some(8)), Some(vec![50, 60, 70]));
        assert_eq!(cache.get(7, None), Some(vec![70, 80, 90]));
        assert_eq!(cache.get(9, Some(10)), Some(vec![90]));
        assert_eq!(cache.get(10, None), Some(vec![]), "nothing after the last entry");
        assert_eq!(cache.get(4, Some(8)), None, "entry 4 is not cached");
        assert_eq!(cache.get(8, Some(12)), None, "entries past the last are not known here");
        assert_eq!(Cache::<u64>::new(LogLast::Known(None)).get(0, None), None);
    }

    #[test]
    fn truncate_and_purge_cut_the_cache_like_the_log() {
        let mut cache = cache(1..11);
        cache.truncated(8);
        assert_eq!(cache.get(6, None), Some(vec![60, 70]));
        cache.appended(vec![(8, 800), (9, 900)]);
        assert_eq!(cache.get(7, None), Some(vec![70, 800, 900]), "the new entries replace the truncated ones");
        cache.purged(3);
        assert_eq!(cache.get(3, Some(5)), None);
        assert_eq!(cache.get(4, Some(6)), Some(vec![40, 50]));
        cache.purged(u64::MAX);
        assert!(cache.entries.is_empty());
    }

    #[test]
    fn an_append_after_a_gap_restarts_the_cache_and_it_stays_bounded() {
        let mut cache = cache(1..5);
        cache.appended(vec![(100, 1), (101, 2)]);
        assert_eq!(cache.get(1, Some(3)), None, "entries before the gap are dropped");
        assert_eq!(cache.get(100, None), Some(vec![1, 2]));
        let mut big = self::cache(0..(MAX_CACHED_ENTRIES as u64 + 10));
        assert_eq!(big.entries.len(), MAX_CACHED_ENTRIES);
        assert_eq!(big.get(0, Some(1)), None, "the oldest were evicted");
        big.appended(vec![(MAX_CACHED_ENTRIES as u64 + 10, 7)]);
        assert_eq!(big.entries.len(), MAX_CACHED_ENTRIES);
    }

    #[test]
    fn the_cache_is_off_while_the_log_goes_on_past_it() {
        // An append over existing entries (the log still ends at 9).
        let mut cache = cache(1..10);
        cache.appended(vec![(5, 5), (6, 6)]);
        assert_eq!(cache.get(5, Some(6)), None, "the log's last entry is 9, not 6");
        assert_eq!(cache.get(5, None), None);
        // A truncate back to the cached tail makes it usable again.
        cache.truncated(7);
        assert_eq!(cache.get(5, None), Some(vec![5, 6]));
        // A store that could not read its log's end never uses the cache.
        let mut unknown = Cache::new(LogLast::Unknown);
        unknown.appended(vec![(1, 1)]);
        assert_eq!(unknown.get(1, None), None);
    }
}
