//! The journal: one shard's durable state on the [`Disk`] seam.
//!
//! One keyspace per shard, `shard-<kind>-<index>` (layout in
//! [`crate::records`]). Every step is a set of writes, staged into a
//! [`Batch`]:
//!
//! * prepare: put `t/<txn>` = prepared record;
//! * commit: put the touched entities' after-images, overwrite `t/<txn>`
//!   with the commit marker, delete the records the transaction deleted
//!   and the `t/` keys of the commits that fall out of memory;
//! * abort: delete `t/<txn>`.
//!
//! The actor stages every step it takes while draining its mailbox and
//! applies them as one atomic batch ([`Journal::apply_staged`]) before the
//! next fsync round: whole steps only, so the keyspace is always a committed
//! state plus the prepared records of exactly the undecided transactions,
//! before and after any crash. Nothing here syncs on its own: the actor
//! decides when a step must be durable ([`Journal::sync`]), which lets
//! concurrent steps share one fsync.
//!
//! Every value is a checksummed record ([`paytx_storage::record`]); loading
//! verifies every one and fails with the key's name on the first bad one.

use crate::channels::ChannelConfig;
use crate::engine::{Committed, Engine};
use crate::error::ParticipantError;
use crate::records::{
    key_label, record_entity_key, txn_key, EntityRecord, JournalContents, PreparedRecord, TxnState, TxnStateRef,
    COMMITTED_PREFIX, ENTITY_PREFIX, FORGOTTEN_THROUGH_KEY, PREPARED_PREFIX, TXN_PREFIX,
};
use paytx_protocol::{BoxFuture, ShardId, TxnId};
use paytx_storage::record::{open_at, seal};
use paytx_storage::{Batch, DiskError, SharedDisk};
use serde::de::DeserializeOwned;

/// The persistence of one shard.
#[derive(Clone)]
pub struct Journal {
    disk: SharedDisk,
    shard: ShardId,
    space: String,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("space", &self.space).finish()
    }
}

impl Journal {
    pub fn new(disk: SharedDisk, shard: ShardId) -> Self {
        Journal { disk, shard, space: Journal::space_name(shard) }
    }

    /// The keyspace of `shard`: `shard-<kind>-<index>`, e.g. `shard-accounts-0`.
    pub fn space_name(shard: ShardId) -> String {
        format!("shard-{}-{}", shard.kind.name(), shard.index)
    }

    pub fn space(&self) -> &str {
        &self.space
    }

    /// Reads and verifies the whole keyspace.
    pub fn load(&self) -> Result<JournalContents, ParticipantError> {
        self.load_and_migrate(&mut Batch::new())
    }

    /// [`Journal::load`], staging into `migration` the rewrite under `t/`
    /// of every record an earlier version wrote under `p/` or `c/` (found
    /// in the same pass over the keyspace).
    fn load_and_migrate(&self, migration: &mut Batch) -> Result<JournalContents, ParticipantError> {
        let rows = self.disk.range(&self.space, b"", None).map_err(|e| self.disk_error(e))?;
        let mut contents = JournalContents::default();
        for (key, value) in rows {
            if key.starts_with(ENTITY_PREFIX) {
                let record: EntityRecord = self.open(&key, &value)?;
                self.expect_key(&key, record.key())?;
                contents.entities.push((self.label(&key), record));
            } else if key.starts_with(TXN_PREFIX) {
                let state: TxnState = self.open(&key, &value)?;
                self.expect_key(&key, txn_key(TXN_PREFIX, state.txn()))?;
                match state {
                    TxnState::Prepared(record) => contents.prepared.push((self.label(&key), record)),
                    TxnState::Committed(txn) => contents.committed.push(txn),
                }
            } else if key.starts_with(PREPARED_PREFIX) {
                let record: PreparedRecord = self.open(&key, &value)?;
                self.expect_key(&key, txn_key(PREPARED_PREFIX, record.txn))?;
                self.stage_prepared(&record, migration);
                migration.delete(key.clone());
                contents.prepared.push((self.label(&key), record));
            } else if key.starts_with(COMMITTED_PREFIX) {
                let txn: TxnId = self.open(&key, &value)?;
                self.expect_key(&key, txn_key(COMMITTED_PREFIX, txn))?;
                migration.put(txn_key(TXN_PREFIX, txn), seal(&TxnStateRef::Committed(txn)));
                migration.delete(key);
                contents.committed.push(txn);
            } else if key == FORGOTTEN_THROUGH_KEY {
                contents.forgotten_through = Some(self.open(&key, &value)?);
            } else {
                return Err(self.inconsistent(&key, "a key this version does not write".to_string()));
            }
        }
        Ok(contents)
    }

    /// Loads the journal and rebuilds the shard's engine from it. Records
    /// an earlier version wrote under `p/` and `c/` are rewritten under
    /// `t/` (one atomic batch, before the shard serves anything), so every
    /// later step finds a transaction under the one key it writes.
    pub fn recover(&self, channels: &[ChannelConfig], remembered_commits: usize) -> Result<Engine, ParticipantError> {
        let mut migration = Batch::new();
        let contents = self.load_and_migrate(&mut migration)?;
        let engine = Engine::recover(self.shard, channels, remembered_commits, contents).map_err(|e| {
            ParticipantError::InconsistentJournal { space: self.space.clone(), key: e.key, reason: e.reason }
        })?;
        if !migration.is_empty() {
            tracing::info!(space = %self.space, keys = migration.writes.len(), "rewriting an earlier version's transaction keys");
            self.apply(migration)?;
        }
        Ok(engine)
    }

    /// Stages a prepared record into `batch` (not yet durable: apply, then
    /// sync before voting YES).
    pub fn stage_prepared(&self, record: &PreparedRecord, batch: &mut Batch) {
        batch.put(txn_key(TXN_PREFIX, record.txn), seal(&TxnStateRef::Prepared(record)));
    }

    /// Stages a commit's effects into `batch` and drops its prepared record
    /// (atomic once the batch is applied; sync before acknowledging).
    pub fn stage_commit(&self, committed: &Committed, batch: &mut Batch) {
        for entity in &committed.entities {
            batch.put(entity.key(), seal(entity));
        }
        for key in &committed.removed {
            batch.delete(record_entity_key(*key));
        }
        // In place: the prepared record becomes the commit marker.
        batch.put(txn_key(TXN_PREFIX, committed.txn), seal(&TxnStateRef::Committed(committed.txn)));
        for old in &committed.forgotten {
            batch.delete(txn_key(TXN_PREFIX, *old));
        }
        if let Some(through) = committed.forgotten_through {
            batch.put(FORGOTTEN_THROUGH_KEY.to_vec(), seal(&through));
        }
    }

    /// Stages the removal of an aborted transaction's prepared record.
    pub fn stage_abort(&self, txn: TxnId, batch: &mut Batch) {
        batch.delete(txn_key(TXN_PREFIX, txn));
    }

    /// Applies the steps staged in `batch` as one atomic write. A key
    /// written more than once (a hot account committed by several
    /// transactions of the batch) is written once, with its last value:
    /// the result is the same as applying the steps in order.
    pub fn apply_staged(&self, batch: Batch) -> Result<(), ParticipantError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.apply(last_write_per_key(batch))
    }

    /// Writes a prepared record at once (tests and tools; the actor stages).
    pub fn record_prepared(&self, record: &PreparedRecord) -> Result<(), ParticipantError> {
        let mut batch = Batch::new();
        self.stage_prepared(record, &mut batch);
        self.apply(batch)
    }

    /// Writes a commit at once (tests and tools; the actor stages).
    pub fn record_commit(&self, committed: &Committed) -> Result<(), ParticipantError> {
        let mut batch = Batch::new();
        self.stage_commit(committed, &mut batch);
        self.apply(batch)
    }

    /// Drops an aborted transaction's prepared record at once.
    pub fn record_abort(&self, txn: TxnId) -> Result<(), ParticipantError> {
        let mut batch = Batch::new();
        self.stage_abort(txn, &mut batch);
        self.apply(batch)
    }

    /// Makes every step recorded so far durable (group-committed by the disk).
    pub fn sync(&self) -> BoxFuture<Result<(), DiskError>> {
        self.disk.sync()
    }

    fn apply(&self, batch: Batch) -> Result<(), ParticipantError> {
        self.disk.apply(&self.space, batch).map_err(|e| self.disk_error(e))
    }

    fn open<T: DeserializeOwned>(&self, key: &[u8], value: &[u8]) -> Result<T, ParticipantError> {
        open_at(&self.space, key, value).map_err(|e| match e {
            DiskError::Corrupt { reason, .. } => {
                ParticipantError::CorruptJournal { space: self.space.clone(), key: self.label(key), reason }
            }
            other => self.disk_error(other),
        })
    }

    fn expect_key(&self, key: &[u8], expected: Vec<u8>) -> Result<(), ParticipantError> {
        if key == expected.as_slice() {
            Ok(())
        } else {
            Err(self.inconsistent(key, format!("the record belongs at {}", self.label(&expected))))
        }
    }

    fn label(&self, key: &[u8]) -> String {
        key_label(self.shard.kind, key)
    }

    fn inconsistent(&self, key: &[u8], reason: String) -> ParticipantError {
        ParticipantError::InconsistentJournal { space: self.space.clone(), key: self.label(key), reason }
    }

    fn disk_error(&self, error: DiskError) -> ParticipantError {
        ParticipantError::from_disk(self.shard, error)
    }
}

/// `batch` with every key written once, at the position and with the
/// value of its last write. Writes to distinct keys commute, so this
/// leaves the keyspace exactly as the writes in order would.
fn last_write_per_key(batch: Batch) -> Batch {
    let mut seen = std::collections::BTreeSet::new();
    let mut kept: Vec<_> = batch.writes.into_iter().rev().filter(|(key, _)| seen.insert(key.clone())).collect();
    kept.reverse();
    Batch { writes: kept }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::default_channels;
    use crate::engine::Prepared;
    use paytx_protocol::{AccountId, Currency, EntityKind, Money, Operation, OrderId};
    use paytx_storage::{Disk, MemDisk};
    use std::sync::Arc;

    const ACCOUNTS: ShardId = ShardId { kind: EntityKind::Account, index: 3 };

    fn txn(seq: u64) -> TxnId {
        TxnId { term: 2, node: 1, seq }
    }

    fn open_op(id: u64, minor: i64) -> Operation {
        Operation::OpenAccount { account: AccountId(id), currency: Currency::CNY, initial_minor: minor }
    }

    fn transfer(minor: i64) -> Vec<Operation> {
        vec![
            Operation::Debit { account: AccountId(1), amount: Money::new(minor, Currency::CNY) },
            Operation::Credit { account: AccountId(2), amount: Money::new(minor, Currency::CNY) },
        ]
    }

    /// Runs the engine and journals each step, as the actor does.
    fn prepare(engine: &mut Engine, journal: &Journal, seq: u64, ops: &[Operation]) {
        let Ok(Prepared::New(record)) = engine.prepare(txn(seq), ops) else { panic!("prepare failed") };
        journal.record_prepared(&record).unwrap();
    }

    fn commit(engine: &mut Engine, journal: &Journal, seq: u64) {
        journal.record_commit(&engine.commit(txn(seq), 0).unwrap()).unwrap();
    }

    #[tokio::test]
    async fn the_journal_replays_committed_state_and_prepared_holds() {
        let disk = MemDisk::new();
        let journal = Journal::new(Arc::new(disk.clone()), ACCOUNTS);
        assert_eq!(journal.space(), "shard-accounts-3");
        let mut engine = Engine::new(ACCOUNTS, &[]).with_remembered_commits(1);
        prepare(&mut engine, &journal, 1, &[open_op(1, 100), open_op(2, 0)]);
        commit(&mut engine, &journal, 1);
        prepare(&mut engine, &journal, 2, &transfer(30));
        commit(&mut engine, &journal, 2);
        prepare(&mut engine, &journal, 3, &transfer(50));
        prepare(&mut engine, &journal, 4, &transfer(5));
        assert!(engine.abort(txn(4)));
        journal.record_abort(txn(4)).unwrap();
        journal.sync().await.unwrap();

        let contents = journal.load().unwrap();
        assert_eq!(contents.entities.len(), 2);
        assert_eq!(contents.prepared.iter().map(|(_, r)| r.txn).collect::<Vec<_>>(), vec![txn(3)]);
        assert_eq!(contents.committed, vec![txn(2)]);
        assert_eq!(contents.forgotten_through, Some(txn(1)));

        let recovered = journal.recover(&[], 1).unwrap();
        assert_eq!(recovered.prepared_txns(), vec![txn(3)]);
        let view = recovered.account(AccountId(1)).unwrap();
        assert_eq!((view.balance_minor, view.held_minor), (70, 50));
        assert_eq!(recovered.account(AccountId(2)).unwrap().balance_minor, 30);
        assert!(recovered.is_committed(txn(2)));
    }

    #[test]
    fn a_key_written_twice_in_a_batch_is_written_once_with_its_last_value() {
        let mut batch = Batch::new();
        batch.put(b"a".to_vec(), b"1".to_vec());
        batch.delete(b"b".to_vec());
        batch.put(b"a".to_vec(), b"2".to_vec());
        batch.put(b"b".to_vec(), b"3".to_vec());
        batch.delete(b"c".to_vec());
        let kept = last_write_per_key(batch).writes;
        assert_eq!(
            kept,
            vec![(b"a".to_vec(), Some(b"2".to_vec())), (b"b".to_vec(), Some(b"3".to_vec())), (b"c".to_vec(), None)]
        );
    }

    /// What versions before the `t/` key wrote: `p/` prepared records and
    /// `c/` commit markers. They load, and are rewritten under `t/` once.
    #[tokio::test]
    async fn an_earlier_versions_transaction_keys_are_read_and_rewritten() {
        let disk = MemDisk::new();
        let journal = Journal::new(Arc::new(disk.clone()), ACCOUNTS);
        let mut engine = Engine::new(ACCOUNTS, &[]);
        prepare(&mut engine, &journal, 1, &[open_op(1, 100), open_op(2, 0)]);
        commit(&mut engine, &journal, 1);
        // Rewrite the new keys the old way: txn 1 committed under `c/`,
        // a prepared transfer (txn 2) under `p/`.
        let Ok(Prepared::New(record)) = engine.prepare(txn(2), &transfer(30)) else { panic!("prepare failed") };
        let mut old = Batch::new();
        old.delete(txn_key(TXN_PREFIX, txn(1)));
        old.put(txn_key(COMMITTED_PREFIX, txn(1)), seal(&txn(1)));
        old.put(txn_key(PREPARED_PREFIX, txn(2)), seal(&record));
        disk.apply(journal.space(), old).unwrap();

        let recovered = journal.recover(&[], 10).unwrap();
        assert!(recovered.is_committed(txn(1)));
        assert_eq!(recovered.prepared_txns(), vec![txn(2)]);
        assert_eq!(recovered.account(AccountId(1)).unwrap().held_minor, 30);
        let space = journal.space();
        assert!(disk.range(space, b"p/", Some(b"p0")).unwrap().is_empty(), "no p/ key left");
        assert!(disk.range(space, b"c/", Some(b"c0")).unwrap().is_empty(), "no c/ key left");
        assert_eq!(disk.range(space, b"t/", Some(b"t0")).unwrap().len(), 2);
        // And what was rewritten loads the same, and a commit now finds it.
        let mut again = journal.recover(&[], 10).unwrap();
        assert_eq!(again.prepared_txns(), vec![txn(2)]);
        commit(&mut again, &journal, 2);
        let last = journal.recover(&[], 10).unwrap();
        assert!(last.prepared_txns().is_empty() && last.is_committed(txn(2)));
        assert_eq!(last.account(AccountId(2)).unwrap().balance_minor, 30);
    }

    #[tokio::test]
    async fn unsynced_steps_are_lost_whole() {
        let disk = MemDisk::new();
        let journal = Journal::new(Arc::new(disk.clone()), ACCOUNTS);
        let mut engine = Engine::new(ACCOUNTS, &[]);
        prepare(&mut engine, &journal, 1, &[open_op(1, 100), open_op(2, 0)]);
        commit(&mut engine, &journal, 1);
        prepare(&mut engine, &journal, 2, &transfer(30));
        journal.sync().await.unwrap();
        commit(&mut engine, &journal, 2);
        disk.crash();
        let recovered = journal.recover(&[], 10).unwrap();
        assert_eq!(recovered.prepared_txns(), vec![txn(2)], "the unsynced commit is undone whole");
        assert_eq!(recovered.account(AccountId(1)).unwrap().held_minor, 30);
    }

    #[tokio::test]
    async fn a_flipped_byte_fails_the_load_naming_the_key() {
        let disk = MemDisk::new();
        let orders = ShardId { kind: EntityKind::Order, index: 0 };
        let journal = Journal::new(Arc::new(disk.clone()), orders);
        let mut engine = Engine::new(orders, &[]);
        let create =
            Operation::CreateOrder { order: OrderId(5), merchant: AccountId(1), amount: Money::new(9, Currency::CNY) };
        prepare(&mut engine, &journal, 1, &[create]);
        commit(&mut engine, &journal, 1);
        let (key, mut value) = disk.range("shard-orders-0", b"e/", Some(b"e0")).unwrap().remove(0);
        let last = value.len() - 1;
        value[last] ^= 0x01;
        let mut batch = Batch::new();
        batch.put(key, value);
        disk.apply("shard-orders-0", batch).unwrap();
        let err = journal.recover(&[], 10).unwrap_err();
        match &err {
            ParticipantError::CorruptJournal { space, key, .. } => {
                assert_eq!(space, "shard-orders-0");
                assert!(key.starts_with("e/order-5"), "{key}");
            }
            other => panic!("expected a corrupt-journal error, got {other:?}"),
        }
        assert!(err.to_string().contains("e/order-5"));
    }

    #[tokio::test]
    async fn a_record_under_a_foreign_key_is_inconsistent() {
        let disk = MemDisk::new();
        let channels = ShardId { kind: EntityKind::Channel, index: 1 };
        let journal = Journal::new(Arc::new(disk.clone()), channels);
        let mut batch = Batch::new();
        batch.put(txn_key(PREPARED_PREFIX, txn(1)), seal(&PreparedRecord { txn: txn(2), ops: vec![] }));
        disk.apply(journal.space(), batch).unwrap();
        let err = journal.recover(&default_channels(), 10).unwrap_err();
        assert!(matches!(err, ParticipantError::InconsistentJournal { ref key, .. } if key.starts_with("p/txn-2.1.1")));
    }
}
