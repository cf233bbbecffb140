//! Records: the opaque key-value records of one records shard (the
//! open-platform gateway's users, merchants, nonces, notifications…).
//!
//! (The module is `record_store`, not `records`: [`crate::records`] is the
//! journal's vocabulary of stored records.)
//!
//! A record is `(version, value)` under a [`RecordKey`]. A write
//! ([`Operation::PutRecord`]) carries a precondition ([`RecordExpect`]),
//! checked at prepare; the prepared transaction then *locks* the key (even
//! for a key that does not exist yet, or a delete of nothing), so the
//! after-image computed at prepare is exactly what the commit writes: nobody
//! else can change the record in between. Like orders, a lock held by
//! another prepared transaction refuses the write with `Conflict`, which is
//! checked *before* the precondition: while a write is in doubt the record's
//! future is unknown, so "it exists" or "wrong version" would be a guess.
//!
//! # Several writes to one key in one transaction (decision)
//!
//! They behave as if run one after another: each op's precondition is
//! checked against the record *as changed by the earlier ops of the same
//! transaction*, and each op is one write. So `[insert(v1), cas(1, v2)]`
//! passes and commits the record at version 2, while `[insert, insert]`
//! aborts with `RecordExists`. The commit writes the final image only.
//!
//! Versions count committed writes since the record was last created: an
//! insert makes version 1, every later put adds one, a delete removes the
//! record (a later insert starts again at 1).
//!
//! # Entries keyed by their commit time (decision)
//!
//! [`Operation::PutRecordAtCommit`] is the one write whose key is not known
//! at prepare: its sort key is `(commit time, number)`, and the commit time
//! arrives with the decision. The prepare checks its value, counts it as a
//! record created, and locks its placeholder `(partition, 0, number)` — so
//! two transactions writing the same number serialize as any two writers of
//! one key do. The commit stores it under `(at_ms, number)`: version 1, or
//! one more than an entry already there (the same number committed twice in
//! the same millisecond, which callers' unique numbers rule out). It has no
//! precondition, so nothing about the final key can make it fail — and
//! nothing reads the final key before the commit fixes it.

use paytx_protocol::ids::sort_key;
use paytx_protocol::messages::{RangeScan, RecordView};
use paytx_protocol::ops::{MAX_RECORD_VALUE_BYTES, MAX_SCAN_RECORDS};
use paytx_protocol::{AbortReason, Operation, Partition, RecordExpect, RecordKey, RecordNs, TxnId};
use serde::{Deserialize, Serialize};
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::ops::Bound;

/// What a record costs in a scan page besides its value: key, version and
/// encoding (a generous upper bound).
const SCAN_RECORD_OVERHEAD_BYTES: usize = 64;

/// A record as committed (the durable after-image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// Committed writes since the record was created; at least 1.
    pub version: u64,
    pub value: Vec<u8>,
}

/// What one prepared transaction will write: the after-image of every key it
/// touches (all locked by it); `None` deletes the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RecordPlan {
    after: BTreeMap<RecordKey, Option<StoredRecord>>,
    /// `PutRecordAtCommit` entries, by their placeholder key (locked too):
    /// stored at commit under `(at_ms, number)`.
    at_commit: BTreeMap<RecordKey, AtCommit>,
    /// Keys it creates (absent now, present after commit), an upper bound.
    creates: usize,
}

/// One entry a commit stores under its own time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AtCommit {
    partition: Partition,
    number: u64,
    value: Vec<u8>,
}

/// Why a records prepare was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    Abort(AbortReason),
    /// Creating the records would exceed `max_records` (the engine names the shard).
    Full {
        max_records: u64,
    },
}

impl From<AbortReason> for Refused {
    fn from(reason: AbortReason) -> Self {
        Refused::Abort(reason)
    }
}

/// The effects of a commit on the records: after-images to store, keys to
/// delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RecordChanges {
    pub written: Vec<(RecordKey, StoredRecord)>,
    pub removed: Vec<RecordKey>,
}

/// One page of a scan of one shard (the node adds the shard count).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    pub records: Vec<RecordView>,
    /// The shard holds more records of the namespace after the last one.
    pub more: bool,
}

/// The records shard's state.
#[derive(Debug, Default)]
pub(crate) struct RecordsState {
    /// Committed records: a persistent map, so a snapshot's copy is O(1)
    /// under the state lock (see `Engine::capture`).
    records: imbl::OrdMap<RecordKey, StoredRecord>,
    /// Keys (existing or not) locked by a prepared transaction.
    locks: BTreeMap<RecordKey, TxnId>,
    /// Records prepared transactions will create, counted against the limit.
    pending_creates: usize,
}

impl RecordsState {
    /// Validates `ops` in order against a scratch copy and, only if all pass
    /// (and the records it creates fit under `max_records`, when given),
    /// locks the touched keys for `txn`. On error nothing has changed.
    pub(crate) fn prepare(
        &mut self,
        txn: TxnId,
        ops: &[Operation],
        max_records: Option<usize>,
    ) -> Result<RecordPlan, Refused> {
        let mut scratch: BTreeMap<RecordKey, Option<StoredRecord>> = BTreeMap::new();
        let mut at_commit: BTreeMap<RecordKey, AtCommit> = BTreeMap::new();
        for op in ops {
            match op {
                Operation::PutRecordAtCommit { partition, number, value } => {
                    self.validate_at_commit(&scratch, &mut at_commit, *partition, *number, value)?
                }
                _ => self.validate(&mut scratch, op)?,
            }
        }
        // Deletes free nothing until they commit: the count is an upper bound.
        let creates = scratch.iter().filter(|(key, after)| after.is_some() && !self.records.contains_key(*key)).count()
            + at_commit.len();
        if let Some(max_records) = max_records {
            let total = self.records.len().saturating_add(self.pending_creates).saturating_add(creates);
            if creates > 0 && total > max_records {
                return Err(Refused::Full { max_records: max_records as u64 });
            }
        }
        for key in scratch.keys().chain(at_commit.keys()) {
            self.locks.insert(*key, txn);
        }
        self.pending_creates = self.pending_creates.saturating_add(creates);
        Ok(RecordPlan { after: scratch, at_commit, creates })
    }

    /// Checks one `PutRecordAtCommit`: an ordered partition, a bounded
    /// value, a placeholder nobody else (nor an earlier op of this
    /// transaction) holds.
    fn validate_at_commit(
        &self,
        scratch: &BTreeMap<RecordKey, Option<StoredRecord>>,
        at_commit: &mut BTreeMap<RecordKey, AtCommit>,
        partition: Partition,
        number: u64,
        value: &[u8],
    ) -> Result<(), AbortReason> {
        let placeholder = partition.key(sort_key(0, number));
        // Both checks repeat the coordinator's validation, so only a broken
        // upstream fails them; refusing keeps every stored key ordered and
        // every value bounded.
        if !paytx_protocol::ids::is_ordered_ns(partition.ns) {
            return Err(AbortReason::Conflict {
                entity: format!(
                    "{placeholder} (a commit-timed entry of an unordered namespace: the request was not validated)"
                ),
            });
        }
        if value.len() > MAX_RECORD_VALUE_BYTES {
            return Err(AbortReason::Conflict {
                entity: format!(
                    "{placeholder} (value of {} bytes over the {MAX_RECORD_VALUE_BYTES}-byte limit: the request was not validated)",
                    value.len()
                ),
            });
        }
        if self.locks.contains_key(&placeholder) {
            return Err(AbortReason::Conflict { entity: placeholder.to_string() });
        }
        // One transaction writes a number once: a second would be the same
        // key at the same commit time.
        if scratch.contains_key(&placeholder) || at_commit.contains_key(&placeholder) {
            return Err(AbortReason::RecordExists { key: placeholder });
        }
        at_commit.insert(placeholder, AtCommit { partition, number, value: value.to_vec() });
        Ok(())
    }

    fn validate(
        &self,
        scratch: &mut BTreeMap<RecordKey, Option<StoredRecord>>,
        op: &Operation,
    ) -> Result<(), AbortReason> {
        let Operation::PutRecord { key, value, expect } = op else {
            return Err(crate::engine::misrouted(op));
        };
        if let Some(value) = value {
            if value.len() > MAX_RECORD_VALUE_BYTES {
                // Requests are validated before any prepare, so only a broken
                // upstream gets here; refusing keeps every stored value bounded.
                return Err(AbortReason::Conflict {
                    entity: format!(
                        "{key} (value of {} bytes over the {MAX_RECORD_VALUE_BYTES}-byte limit: the request was not validated)",
                        value.len()
                    ),
                });
            }
        }
        let current = match scratch.entry(*key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                if self.locks.contains_key(key) {
                    return Err(AbortReason::Conflict { entity: key.to_string() });
                }
                entry.insert(self.records.get(key).cloned())
            }
        };
        let version = current.as_ref().map(|record| record.version);
        match (*expect, version) {
            (RecordExpect::Any, _) | (RecordExpect::Absent, None) => {}
            (RecordExpect::Absent, Some(_)) => return Err(AbortReason::RecordExists { key: *key }),
            (RecordExpect::Version(expected), actual) => {
                if actual != Some(expected) {
                    return Err(AbortReason::RecordVersionMismatch { key: *key, expected, actual });
                }
            }
        }
        *current = match value {
            None => None,
            Some(value) => {
                // A version is a count of writes: u64 cannot run out, but
                // saturating beats a panic on a journal someone edited.
                let version = version.map_or(1, |v| v.saturating_add(1));
                Some(StoredRecord { version, value: value.clone() })
            }
        };
        Ok(())
    }

    /// Writes the after-images, and the commit-timed entries under `at_ms`,
    /// and unlocks. Returns what to journal.
    pub(crate) fn commit(&mut self, txn: TxnId, plan: RecordPlan, at_ms: u64) -> RecordChanges {
        self.release_creates(plan.creates);
        let mut changes = RecordChanges::default();
        for (key, after) in plan.after {
            self.unlock(txn, key);
            match after {
                Some(record) => {
                    self.records.insert(key, record.clone());
                    changes.written.push((key, record));
                }
                None => {
                    self.records.remove(&key);
                    changes.removed.push(key);
                }
            }
        }
        for (placeholder, entry) in plan.at_commit {
            self.unlock(txn, placeholder);
            let key = entry.partition.key(sort_key(at_ms, entry.number));
            let version = self.records.get(&key).map_or(1, |record| record.version.saturating_add(1));
            let record = StoredRecord { version, value: entry.value };
            self.records.insert(key, record.clone());
            // A key is journaled once per commit: a later write of it in
            // `written` would be lost behind an earlier one otherwise.
            changes.written.retain(|(written, _)| *written != key);
            changes.removed.retain(|removed| *removed != key);
            changes.written.push((key, record));
        }
        changes
    }

    /// Unlocks without changing anything.
    pub(crate) fn abort(&mut self, txn: TxnId, plan: RecordPlan) {
        self.release_creates(plan.creates);
        for key in plan.after.keys().chain(plan.at_commit.keys()) {
            self.unlock(txn, *key);
        }
    }

    fn release_creates(&mut self, creates: usize) {
        self.pending_creates = self
            .pending_creates
            .checked_sub(creates)
            .expect("a plan's creates are part of the total until released once");
    }

    fn unlock(&mut self, txn: TxnId, key: RecordKey) {
        let owner = self.locks.remove(&key);
        assert_eq!(owner, Some(txn), "{key} was locked by {txn} until its decision");
    }

    /// Every committed record, in key order (a snapshot of the shard): an
    /// O(1) clone that shares structure with the live map.
    pub(crate) fn committed_map(&self) -> imbl::OrdMap<RecordKey, StoredRecord> {
        self.records.clone()
    }

    /// Loads a committed record (recovery).
    pub(crate) fn restore(&mut self, key: RecordKey, record: StoredRecord) -> Result<(), String> {
        check_record(key, &record)?;
        if self.records.insert(key, record).is_some() {
            return Err(format!("{key} stored twice"));
        }
        Ok(())
    }

    pub(crate) fn view(&self, key: RecordKey) -> Option<RecordView> {
        self.records.get(&key).map(|record| view(key, record))
    }

    /// Committed records of namespace `ns` in key order, strictly after
    /// `after`, at most `min(limit, MAX_SCAN_RECORDS)`, and no more than
    /// `max_bytes` of encoded records — except that a page holds at least
    /// one record when `limit > 0`, so a scan always moves forward.
    pub(crate) fn scan(&self, ns: RecordNs, after: Option<RecordKey>, limit: u32, max_bytes: usize) -> ScanPage {
        let limit = limit.min(MAX_SCAN_RECORDS) as usize;
        let first_of_ns = RecordKey { ns, digest: [0; 32] };
        let lower = match after {
            Some(after) if after.ns == ns => Bound::Excluded(after),
            Some(after) if after.ns > ns => return ScanPage::default(),
            _ => Bound::Included(first_of_ns),
        };
        let matching = self.records.range((lower, Bound::Unbounded)).take_while(|(key, _)| key.ns == ns);
        page(matching, limit, max_bytes)
    }

    /// One page of a range read of one partition of an ordered namespace
    /// (see [`RangeScan`]), in sort order, ascending or descending, with the
    /// same bounds as [`Self::scan`]. Keys are stored in `(ns, partition,
    /// sort)` order, so this is one `BTreeMap` range: its cost is the page,
    /// not the size of the partition or of the shard.
    pub(crate) fn scan_range(&self, scan: &RangeScan, max_bytes: usize) -> ScanPage {
        let limit = scan.limit.min(MAX_SCAN_RECORDS) as usize;
        let (from, to) = (scan.from, scan.to);
        if from > to || limit == 0 {
            return ScanPage::default();
        }
        let key = |sort| scan.partition.key(sort);
        // `BTreeMap::range` panics on an inverted range, so a cursor at or
        // past the far end is an empty page, decided before building one.
        if scan.descending {
            let upper = match scan.after {
                Some(after) if after <= from => return ScanPage::default(),
                Some(after) if after <= to => Bound::Excluded(key(after)),
                _ => Bound::Included(key(to)),
            };
            page(self.records.range((Bound::Included(key(from)), upper)).rev(), limit, max_bytes)
        } else {
            let lower = match scan.after {
                Some(after) if after >= to => return ScanPage::default(),
                Some(after) if after >= from => Bound::Excluded(key(after)),
                _ => Bound::Included(key(from)),
            };
            page(self.records.range((lower, Bound::Included(key(to)))), limit, max_bytes)
        }
    }

    pub(crate) fn entity_count(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        self.records.iter().try_for_each(|(key, record)| check_record(*key, record))
    }
}

/// The first records of `matching`, at most `limit` and about `max_bytes`
/// (at least one record when `limit > 0`, so a scan always moves forward).
fn page<'a>(
    matching: impl Iterator<Item = (&'a RecordKey, &'a StoredRecord)>,
    limit: usize,
    max_bytes: usize,
) -> ScanPage {
    let mut matching = matching.peekable();
    let mut records: Vec<RecordView> = Vec::new();
    let mut bytes: usize = 0;
    while records.len() < limit {
        let Some((key, record)) = matching.peek() else { break };
        let size = record.value.len().saturating_add(SCAN_RECORD_OVERHEAD_BYTES);
        if !records.is_empty() && bytes.saturating_add(size) > max_bytes {
            break;
        }
        bytes = bytes.saturating_add(size);
        records.push(view(**key, record));
        matching.next();
    }
    let more = matching.peek().is_some();
    ScanPage { records, more }
}

fn view(key: RecordKey, record: &StoredRecord) -> RecordView {
    RecordView { key, version: record.version, value: record.value.clone() }
}

/// A stored record exists since at least one write and is bounded.
fn check_record(key: RecordKey, record: &StoredRecord) -> Result<(), String> {
    if record.version == 0 {
        return Err(format!("{key} at version 0 (versions start at 1)"));
    }
    if record.value.len() > MAX_RECORD_VALUE_BYTES {
        return Err(format!("{key}: a value of {} bytes, over the limit", record.value.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use paytx_protocol::ids::{sort_key, sort_key_parts, Partition, FIRST_ORDERED_NS};

    fn txn(seq: u64) -> TxnId {
        TxnId { term: 1, node: 1, seq }
    }

    fn key(ns: RecordNs, name: &str) -> RecordKey {
        RecordKey::new(ns, name.as_bytes())
    }

    fn put(key: RecordKey, value: &str, expect: RecordExpect) -> Operation {
        Operation::PutRecord { key, value: Some(value.as_bytes().to_vec()), expect }
    }

    fn run(state: &mut RecordsState, seq: u64, ops: &[Operation]) -> Result<RecordChanges, Refused> {
        let plan = state.prepare(txn(seq), ops, None)?;
        Ok(state.commit(txn(seq), plan, 0))
    }

    #[test]
    fn scans_one_namespace_in_key_order_in_pages() {
        let mut state = RecordsState::default();
        for i in 0..10 {
            run(&mut state, i, &[put(key(1, &format!("a{i}")), "x", RecordExpect::Absent)]).unwrap();
            run(&mut state, 100 + i, &[put(key(2, &format!("b{i}")), "y", RecordExpect::Absent)]).unwrap();
        }
        let first = state.scan(1, None, 4, usize::MAX);
        assert_eq!(first.records.len(), 4);
        assert!(first.more);
        assert!(first.records.windows(2).all(|w| w[0].key < w[1].key));
        let mut all = first.records.clone();
        let mut after = first.records.last().map(|r| r.key);
        loop {
            let page = state.scan(1, after, 4, usize::MAX);
            all.extend(page.records.iter().cloned());
            after = page.records.last().map(|r| r.key);
            if !page.more {
                break;
            }
        }
        assert_eq!(all.len(), 10);
        assert!(all.iter().all(|r| r.key.ns == 1));
        assert!(all.windows(2).all(|w| w[0].key < w[1].key));
        // A cursor from another namespace: below starts at the beginning,
        // above finds nothing.
        assert_eq!(state.scan(2, Some(key(1, "a0")), 100, usize::MAX).records.len(), 10);
        assert!(state.scan(1, Some(key(2, "b0")), 100, usize::MAX).records.is_empty());
        // The limit is capped, and 0 returns nothing.
        assert!(state.scan(1, None, 0, usize::MAX).records.is_empty());
        assert_eq!(state.scan(3, None, 10, usize::MAX), ScanPage::default());
    }

    #[test]
    fn a_page_stays_within_its_byte_budget_but_always_moves_forward() {
        let mut state = RecordsState::default();
        let big = "x".repeat(1_000);
        for i in 0..5 {
            run(&mut state, i, &[put(key(1, &format!("k{i}")), &big, RecordExpect::Absent)]).unwrap();
        }
        let budget = 2 * (1_000 + SCAN_RECORD_OVERHEAD_BYTES);
        let page = state.scan(1, None, 100, budget);
        assert_eq!((page.records.len(), page.more), (2, true));
        let tiny = state.scan(1, None, 100, 10);
        assert_eq!((tiny.records.len(), tiny.more), (1, true), "one record even over the budget");
        let rest = state.scan(1, page.records.last().map(|r| r.key), 100, usize::MAX);
        assert_eq!((rest.records.len(), rest.more), (3, false));
    }

    fn index_scan(partition: Partition, from: u64, to: u64, descending: bool, after: Option<u64>) -> RangeScan {
        RangeScan {
            partition,
            from: sort_key(from, 0),
            to: sort_key(to, u64::MAX),
            descending,
            after: after.map(|t| sort_key(t, t)),
            limit: 3,
        }
    }

    #[test]
    fn a_range_read_walks_one_partition_in_order_both_ways() {
        let mut state = RecordsState::default();
        let ns = FIRST_ORDERED_NS;
        let mine = Partition::new(ns, b"mch_1").unwrap();
        let other = Partition::new(ns, b"mch_2").unwrap();
        for (seq, t) in [5u64, 1, 9, 3, 7, 2, 8].into_iter().enumerate() {
            let ops = [mine.key(sort_key(t, t)), other.key(sort_key(t, t))].map(|key| Operation::PutRecord {
                key,
                value: Some(vec![t as u8]),
                expect: RecordExpect::Absent,
            });
            run(&mut state, seq as u64, &ops).unwrap();
        }
        // A hashed record of the same namespace number range is never in a partition's range.
        run(&mut state, 100, &[put(key(ns, "hashed"), "x", RecordExpect::Absent)]).unwrap();
        let walk = |descending: bool, from: u64, to: u64| {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = state.scan_range(&index_scan(mine, from, to, descending, after), usize::MAX);
                assert!(page.records.len() <= 3);
                assert!(page.records.iter().all(|r| r.key.partition() == Some(mine)));
                seen.extend(page.records.iter().map(|r| r.value[0] as u64));
                after = page.records.last().map(|r| sort_key_parts(r.key.sort()).0);
                if !page.more {
                    return seen;
                }
            }
        };
        assert_eq!(walk(false, 0, u64::MAX), vec![1, 2, 3, 5, 7, 8, 9]);
        assert_eq!(walk(true, 0, u64::MAX), vec![9, 8, 7, 5, 3, 2, 1]);
        assert_eq!(walk(true, 2, 7), vec![7, 5, 3, 2]);
        assert_eq!(walk(false, 2, 7), vec![2, 3, 5, 7]);
        // Inverted ranges and cursors past the end are empty, not a panic.
        assert_eq!(state.scan_range(&index_scan(mine, 7, 2, false, None), usize::MAX), ScanPage::default());
        assert_eq!(state.scan_range(&index_scan(mine, 2, 7, false, Some(u64::MAX)), usize::MAX), ScanPage::default());
        assert_eq!(state.scan_range(&index_scan(mine, 2, 7, true, Some(0)), usize::MAX), ScanPage::default());
        // A cursor before the range starts at its beginning.
        let from_start = state.scan_range(&index_scan(mine, 2, 7, false, Some(0)), usize::MAX);
        assert_eq!(from_start.records[0].value, vec![2]);
        let mut zero = index_scan(mine, 0, u64::MAX, false, None);
        zero.limit = 0;
        assert_eq!(state.scan_range(&zero, usize::MAX), ScanPage::default());
    }

    #[test]
    fn an_oversized_value_is_refused_at_prepare() {
        let mut state = RecordsState::default();
        let op = Operation::PutRecord {
            key: key(1, "big"),
            value: Some(vec![0; MAX_RECORD_VALUE_BYTES + 1]),
            expect: RecordExpect::Any,
        };
        assert!(matches!(state.prepare(txn(1), &[op], None), Err(Refused::Abort(AbortReason::Conflict { .. }))));
        assert!(state.locks.is_empty());
    }

    fn at_commit(partition: Partition, number: u64, value: &str) -> Operation {
        Operation::PutRecordAtCommit { partition, number, value: value.as_bytes().to_vec() }
    }

    #[test]
    fn a_commit_timed_entry_is_stored_under_the_commit_s_time_and_locks_its_number_until_then() {
        let mut state = RecordsState::default();
        let lines = Partition::new(FIRST_ORDERED_NS + 6, b"mch_1").unwrap();
        let plan = state.prepare(txn(1), &[at_commit(lines, 42, "pay")], Some(10)).unwrap();
        // In doubt: nothing is readable yet, and the number is taken.
        assert!(state.scan_range(&index_scan(lines, 0, u64::MAX, false, None), usize::MAX).records.is_empty());
        assert_eq!(
            state.prepare(txn(2), &[at_commit(lines, 42, "again")], Some(10)),
            Err(Refused::Abort(AbortReason::Conflict { entity: lines.key(sort_key(0, 42)).to_string() }))
        );
        // Another number of the partition is free.
        let other = state.prepare(txn(3), &[at_commit(lines, 43, "refund")], Some(10)).unwrap();
        let changes = state.commit(txn(1), plan, 1_764_547_200_123);
        let stored = lines.key(sort_key(1_764_547_200_123, 42));
        assert_eq!(changes.written, vec![(stored, StoredRecord { version: 1, value: b"pay".to_vec() })]);
        assert!(changes.removed.is_empty());
        state.commit(txn(3), other, 1_764_547_200_100);
        // Read by commit time: the later-prepared, earlier-committed first.
        let page = state.scan_range(&index_scan(lines, 0, u64::MAX, false, None), usize::MAX);
        let found: Vec<(u64, u64)> = page.records.iter().map(|r| sort_key_parts(r.key.sort())).collect();
        assert_eq!(found, vec![(1_764_547_200_100, 43), (1_764_547_200_123, 42)]);
        assert!(state.locks.is_empty());
        assert_eq!(state.pending_creates, 0);
        // No placeholder was ever stored.
        assert_eq!(state.entity_count(), 2);
    }

    #[test]
    fn a_commit_timed_entry_counts_against_the_limit_and_an_abort_releases_it() {
        let mut state = RecordsState::default();
        let lines = Partition::new(FIRST_ORDERED_NS + 6, b"mch_1").unwrap();
        run(&mut state, 1, &[put(key(1, "a"), "x", RecordExpect::Absent)]).unwrap();
        assert_eq!(
            state.prepare(txn(2), &[at_commit(lines, 1, "a"), at_commit(lines, 2, "b")], Some(2)),
            Err(Refused::Full { max_records: 2 })
        );
        let plan = state.prepare(txn(3), &[at_commit(lines, 1, "a")], Some(2)).unwrap();
        assert_eq!(state.pending_creates, 1);
        state.abort(txn(3), plan);
        assert_eq!((state.pending_creates, state.locks.len(), state.entity_count()), (0, 0, 1));
        // The number is free again once aborted.
        assert!(state.prepare(txn(4), &[at_commit(lines, 1, "a")], Some(2)).is_ok());
    }

    #[test]
    fn a_bad_commit_timed_entry_is_refused_at_prepare_and_locks_nothing() {
        let mut state = RecordsState::default();
        let lines = Partition::new(FIRST_ORDERED_NS + 6, b"mch_1").unwrap();
        let twice = [at_commit(lines, 7, "a"), at_commit(lines, 7, "b")];
        assert_eq!(
            state.prepare(txn(1), &twice, None),
            Err(Refused::Abort(AbortReason::RecordExists { key: lines.key(sort_key(0, 7)) }))
        );
        let unordered = Partition { ns: 7, id: [1; 16] };
        assert!(matches!(
            state.prepare(txn(2), &[at_commit(unordered, 1, "a")], None),
            Err(Refused::Abort(AbortReason::Conflict { .. }))
        ));
        let big =
            Operation::PutRecordAtCommit { partition: lines, number: 1, value: vec![0; MAX_RECORD_VALUE_BYTES + 1] };
        assert!(matches!(state.prepare(txn(3), &[big], None), Err(Refused::Abort(AbortReason::Conflict { .. }))));
        assert!(state.locks.is_empty());
        assert_eq!(state.pending_creates, 0);
    }
}
