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

// The error type is openraft's `StorageError`, fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::disk::{Batch, SharedDisk};
use crate::record::{open_at, seal};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogId, RaftLogReader, RaftTypeConfig, StorageError, StorageIOError, Vote};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

const LOG: &str = "raft-log";
const META: &str = "raft-meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// The Raft log of one node, persisted through a [`SharedDisk`].
pub struct LogStore<C: RaftTypeConfig> {
    disk: SharedDisk,
    _config: PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore { disk: self.disk.clone(), _config: PhantomData }
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    pub fn new(disk: SharedDisk) -> Self {
        LogStore { disk, _config: PhantomData }
    }
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
    C::Entry: Serialize + DeserializeOwned,
{
    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, SErr<C>> {
        match self.disk.get(META, key).map_err(read_err::<C>)? {
            None => Ok(None),
            Some(bytes) => open_at(META, key, &bytes).map(Some).map_err(read_err::<C>),
        }
    }

    fn write_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), SErr<C>> {
        let mut batch = Batch::new();
        batch.put(key.to_vec(), seal(value));
        self.disk.apply(META, batch).map_err(write_err::<C>)
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
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
        let end_key = end.map(index_key);
        let rows = self.disk.range(LOG, &index_key(start), end_key.as_ref().map(|k| &k[..])).map_err(read_err::<C>)?;
        rows.iter().map(|(key, value)| open_at::<C::Entry>(LOG, key, value).map_err(read_err::<C>)).collect()
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, SErr<C>> {
        let last_purged_log_id: Option<LogId<C::NodeId>> = self.read_meta(KEY_PURGED)?;
        let last_log_id = match self.disk.last(LOG).map_err(read_err::<C>)? {
            Some((key, value)) => {
                Some(open_at::<C::Entry>(LOG, &key, &value).map_err(read_err::<C>)?.get_log_id().clone())
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
        for entry in entries {
            batch.put(index_key(entry.get_log_id().index).to_vec(), seal(&entry));
        }
        self.disk.apply(LOG, batch).map_err(write_err::<C>)?;
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
        let rows = self.disk.range(LOG, &index_key(log_id.index), None).map_err(read_err::<C>)?;
        let mut batch = Batch::new();
        for (key, _) in rows {
            batch.delete(key);
        }
        self.disk.apply(LOG, batch).map_err(write_err::<C>)
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), SErr<C>> {
        // Record the purge point first: if we crash half-way, the log state
        // still reports a consistent `last_purged_log_id`.
        self.write_meta(KEY_PURGED, &log_id)?;
        let end = log_id.index.checked_add(1).map(index_key);
        let rows = self.disk.range(LOG, &index_key(0), end.as_ref().map(|k| &k[..])).map_err(read_err::<C>)?;
        let mut batch = Batch::new();
        for (key, _) in rows {
            batch.delete(key);
        }
        self.disk.apply(LOG, batch).map_err(write_err::<C>)
    }
}
