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

use paytx_protocol::messages::RecordView;
use paytx_protocol::ops::{MAX_RECORD_VALUE_BYTES, MAX_SCAN_RECORDS};
use paytx_protocol::{AbortReason, Operation, RecordExpect, RecordKey, RecordNs, TxnId};
use serde::{Deserialize, Serialize};
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::ops::Bound;

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
    records: BTreeMap<RecordKey, StoredRecord>,
    /// Keys (existing or not) locked by a prepared transaction.
    locks: BTreeMap<RecordKey, TxnId>,
}

impl RecordsState {
    /// Validates `ops` in order against a scratch copy and, only if all pass,
    /// locks the touched keys for `txn`. On error nothing has changed.
    pub(crate) fn prepare(&mut self, txn: TxnId, ops: &[Operation]) -> Result<RecordPlan, AbortReason> {
        let mut scratch: BTreeMap<RecordKey, Option<StoredRecord>> = BTreeMap::new();
        for op in ops {
            self.validate(&mut scratch, op)?;
        }
        for key in scratch.keys() {
            self.locks.insert(*key, txn);
        }
        Ok(RecordPlan { after: scratch })
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

    /// Writes the after-images and unlocks. Returns what to journal.
    pub(crate) fn commit(&mut self, txn: TxnId, plan: RecordPlan) -> RecordChanges {
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
        changes
    }

    /// Unlocks without changing anything.
    pub(crate) fn abort(&mut self, txn: TxnId, plan: RecordPlan) {
        for key in plan.after.keys() {
            self.unlock(txn, *key);
        }
    }

    fn unlock(&mut self, txn: TxnId, key: RecordKey) {
        let owner = self.locks.remove(&key);
        assert_eq!(owner, Some(txn), "{key} was locked by {txn} until its decision");
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
    /// `after`, at most `min(limit, MAX_SCAN_RECORDS)`.
    pub(crate) fn scan(&self, ns: RecordNs, after: Option<RecordKey>, limit: u32) -> ScanPage {
        let limit = limit.min(MAX_SCAN_RECORDS) as usize;
        let first_of_ns = RecordKey { ns, digest: [0; 32] };
        let lower = match after {
            Some(after) if after.ns == ns => Bound::Excluded(after),
            Some(after) if after.ns > ns => return ScanPage::default(),
            _ => Bound::Included(first_of_ns),
        };
        let mut matching = self.records.range((lower, Bound::Unbounded)).take_while(|(key, _)| key.ns == ns);
        let records: Vec<RecordView> = matching.by_ref().take(limit).map(|(key, record)| view(*key, record)).collect();
        let more = matching.next().is_some();
        ScanPage { records, more }
    }

    pub(crate) fn entity_count(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        self.records.iter().try_for_each(|(key, record)| check_record(*key, record))
    }
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

    fn txn(seq: u64) -> TxnId {
        TxnId { term: 1, node: 1, seq }
    }

    fn key(ns: RecordNs, name: &str) -> RecordKey {
        RecordKey::new(ns, name.as_bytes())
    }

    fn put(key: RecordKey, value: &str, expect: RecordExpect) -> Operation {
        Operation::PutRecord { key, value: Some(value.as_bytes().to_vec()), expect }
    }

    fn run(state: &mut RecordsState, seq: u64, ops: &[Operation]) -> Result<RecordChanges, AbortReason> {
        let plan = state.prepare(txn(seq), ops)?;
        Ok(state.commit(txn(seq), plan))
    }

    #[test]
    fn scans_one_namespace_in_key_order_in_pages() {
        let mut state = RecordsState::default();
        for i in 0..10 {
            run(&mut state, i, &[put(key(1, &format!("a{i}")), "x", RecordExpect::Absent)]).unwrap();
            run(&mut state, 100 + i, &[put(key(2, &format!("b{i}")), "y", RecordExpect::Absent)]).unwrap();
        }
        let first = state.scan(1, None, 4);
        assert_eq!(first.records.len(), 4);
        assert!(first.more);
        assert!(first.records.windows(2).all(|w| w[0].key < w[1].key));
        let mut all = first.records.clone();
        let mut after = first.records.last().map(|r| r.key);
        loop {
            let page = state.scan(1, after, 4);
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
        assert_eq!(state.scan(2, Some(key(1, "a0")), 100).records.len(), 10);
        assert!(state.scan(1, Some(key(2, "b0")), 100).records.is_empty());
        // The limit is capped, and 0 returns nothing.
        assert!(state.scan(1, None, 0).records.is_empty());
        assert_eq!(state.scan(3, None, 10), ScanPage::default());
    }

    #[test]
    fn an_oversized_value_is_refused_at_prepare() {
        let mut state = RecordsState::default();
        let op = Operation::PutRecord {
            key: key(1, "big"),
            value: Some(vec![0; MAX_RECORD_VALUE_BYTES + 1]),
            expect: RecordExpect::Any,
        };
        assert!(matches!(state.prepare(txn(1), &[op]), Err(AbortReason::Conflict { .. })));
        assert!(state.locks.is_empty());
    }
}
