//! Engine unit tests of the record store and of accounts' recent entries,
//! with the journal on a `MemDisk` for the restart cases.

use super::*;
use crate::journal::Journal;
use paytx_protocol::messages::MAX_RECENT_ENTRIES;
use paytx_protocol::{Currency, Money, RecordExpect};
use paytx_storage::MemDisk;
use std::sync::Arc;

const RECORDS: ShardId = ShardId { kind: EntityKind::Record, index: 0 };
const ACCOUNTS: ShardId = ShardId { kind: EntityKind::Account, index: 0 };

fn txn(seq: u64) -> TxnId {
    TxnId { term: 1, node: 1, seq }
}

fn key(name: &str) -> RecordKey {
    RecordKey::new(1, name.as_bytes())
}

fn put(key: RecordKey, value: &str, expect: RecordExpect) -> Operation {
    Operation::PutRecord { key, value: Some(value.as_bytes().to_vec()), expect }
}

fn delete(key: RecordKey, expect: RecordExpect) -> Operation {
    Operation::PutRecord { key, value: None, expect }
}

/// Prepares and commits `ops` as transaction `seq`.
fn run(engine: &mut Engine, seq: u64, ops: &[Operation]) -> Result<Committed, AbortReason> {
    let prepared = engine.prepare(txn(seq), ops)?;
    assert!(matches!(prepared, Prepared::New(_)));
    let committed = engine.commit(txn(seq), 0).expect("just prepared");
    engine.check_invariants().expect("invariants hold after every commit");
    Ok(committed)
}

fn version_and_value(engine: &Engine, key: RecordKey) -> Option<(u64, String)> {
    engine.record(key).map(|view| (view.version, String::from_utf8_lossy(&view.value).into_owned()))
}

#[test]
fn an_insert_creates_version_1_and_a_second_insert_is_refused() {
    let mut engine = Engine::new(RECORDS, &[]);
    let committed = run(&mut engine, 1, &[put(key("alice"), "a", RecordExpect::Absent)]).unwrap();
    assert_eq!(committed.entities.len(), 1);
    assert!(committed.removed.is_empty());
    assert_eq!(version_and_value(&engine, key("alice")), Some((1, "a".into())));
    assert_eq!(
        engine.prepare(txn(2), &[put(key("alice"), "b", RecordExpect::Absent)]),
        Err(AbortReason::RecordExists { key: key("alice") })
    );
    assert_eq!(version_and_value(&engine, key("alice")), Some((1, "a".into())), "unchanged");
    assert_eq!(engine.status().entities, 1);
    assert_eq!(engine.prepared_count(), 0);
}

#[test]
fn compare_and_set_needs_the_current_version() {
    let mut engine = Engine::new(RECORDS, &[]);
    run(&mut engine, 1, &[put(key("k"), "v1", RecordExpect::Absent)]).unwrap();
    run(&mut engine, 2, &[put(key("k"), "v2", RecordExpect::Version(1))]).unwrap();
    assert_eq!(version_and_value(&engine, key("k")), Some((2, "v2".into())));
    assert_eq!(
        engine.prepare(txn(3), &[put(key("k"), "v3", RecordExpect::Version(1))]),
        Err(AbortReason::RecordVersionMismatch { key: key("k"), expected: 1, actual: Some(2) })
    );
    assert_eq!(
        engine.prepare(txn(3), &[put(key("nope"), "v", RecordExpect::Version(1))]),
        Err(AbortReason::RecordVersionMismatch { key: key("nope"), expected: 1, actual: None })
    );
    // `Any` is an upsert: it needs nothing and still counts as a write.
    run(&mut engine, 4, &[put(key("k"), "v3", RecordExpect::Any)]).unwrap();
    run(&mut engine, 5, &[put(key("new"), "n", RecordExpect::Any)]).unwrap();
    assert_eq!(version_and_value(&engine, key("k")), Some((3, "v3".into())));
    assert_eq!(version_and_value(&engine, key("new")), Some((1, "n".into())));
}

#[test]
fn a_delete_removes_the_record_and_a_later_insert_starts_again_at_1() {
    let mut engine = Engine::new(RECORDS, &[]);
    run(&mut engine, 1, &[put(key("k"), "v1", RecordExpect::Absent)]).unwrap();
    run(&mut engine, 2, &[put(key("k"), "v2", RecordExpect::Version(1))]).unwrap();
    assert!(matches!(
        engine.prepare(txn(3), &[delete(key("k"), RecordExpect::Version(1))]),
        Err(AbortReason::RecordVersionMismatch { .. })
    ));
    let committed = run(&mut engine, 3, &[delete(key("k"), RecordExpect::Version(2))]).unwrap();
    assert_eq!(committed.removed, vec![key("k")]);
    assert!(committed.entities.is_empty());
    assert_eq!(engine.record(key("k")), None);
    assert_eq!(engine.status().entities, 0);
    run(&mut engine, 4, &[put(key("k"), "again", RecordExpect::Absent)]).unwrap();
    assert_eq!(version_and_value(&engine, key("k")), Some((1, "again".into())));
    // Deleting nothing with `Any` is allowed and changes nothing.
    run(&mut engine, 5, &[delete(key("ghost"), RecordExpect::Any)]).unwrap();
    assert_eq!(engine.status().entities, 1);
}

#[test]
fn a_key_locked_by_a_prepared_txn_conflicts_until_it_is_decided() {
    let mut engine = Engine::new(RECORDS, &[]);
    run(&mut engine, 1, &[put(key("taken"), "v1", RecordExpect::Absent)]).unwrap();
    engine.prepare(txn(2), &[put(key("free"), "mine", RecordExpect::Absent)]).unwrap();
    engine.prepare(txn(3), &[put(key("taken"), "v2", RecordExpect::Version(1))]).unwrap();
    // Conflict comes before the precondition: the locked record's future is unknown.
    for ops in [
        vec![put(key("free"), "yours", RecordExpect::Absent)],
        vec![put(key("free"), "yours", RecordExpect::Any)],
        vec![put(key("taken"), "v2", RecordExpect::Version(1))],
        vec![put(key("other"), "x", RecordExpect::Absent), delete(key("taken"), RecordExpect::Any)],
    ] {
        assert!(matches!(engine.prepare(txn(4), &ops), Err(AbortReason::Conflict { .. })), "{ops:?}");
    }
    assert_eq!(engine.record(key("other")), None, "a refused prepare locks nothing");
    assert!(engine.prepare(txn(4), &[put(key("other"), "x", RecordExpect::Absent)]).is_ok());
    // Reads see the committed state only.
    assert_eq!(engine.record(key("free")), None);
    assert_eq!(version_and_value(&engine, key("taken")), Some((1, "v1".into())));
    engine.commit(txn(3), 0).unwrap();
    assert!(engine.abort(txn(2)));
    run(&mut engine, 5, &[put(key("free"), "yours", RecordExpect::Absent)]).unwrap();
    run(&mut engine, 6, &[put(key("taken"), "v3", RecordExpect::Version(2))]).unwrap();
    assert_eq!(version_and_value(&engine, key("taken")), Some((3, "v3".into())));
}

#[test]
fn an_abort_leaves_nothing_behind() {
    let mut engine = Engine::new(RECORDS, &[]);
    run(&mut engine, 1, &[put(key("k"), "v1", RecordExpect::Absent)]).unwrap();
    let before = format!("{:?}", engine.scan_records(1, None, 100, usize::MAX));
    engine
        .prepare(
            txn(2),
            &[
                put(key("new"), "n", RecordExpect::Absent),
                put(key("k"), "v2", RecordExpect::Version(1)),
                delete(key("k"), RecordExpect::Version(2)),
            ],
        )
        .unwrap();
    assert!(engine.abort(txn(2)));
    assert_eq!(format!("{:?}", engine.scan_records(1, None, 100, usize::MAX)), before);
    assert_eq!(engine.prepared_count(), 0);
    // Every key is free again.
    run(&mut engine, 3, &[put(key("new"), "n", RecordExpect::Absent), put(key("k"), "v2", RecordExpect::Version(1))])
        .unwrap();
}

#[test]
fn several_writes_to_one_key_in_one_txn_run_in_order() {
    let mut engine = Engine::new(RECORDS, &[]);
    // Insert then CAS on the insert's version: version 2 at commit.
    let committed = run(
        &mut engine,
        1,
        &[put(key("k"), "first", RecordExpect::Absent), put(key("k"), "second", RecordExpect::Version(1))],
    )
    .unwrap();
    assert_eq!(committed.entities.len(), 1, "one after-image per key");
    assert_eq!(version_and_value(&engine, key("k")), Some((2, "second".into())));
    // The second insert sees the first one.
    assert_eq!(
        engine.prepare(txn(2), &[put(key("j"), "a", RecordExpect::Absent), put(key("j"), "b", RecordExpect::Absent)]),
        Err(AbortReason::RecordExists { key: key("j") })
    );
    assert_eq!(engine.record(key("j")), None);
    // Delete then re-insert: a fresh record at version 1.
    run(&mut engine, 3, &[delete(key("k"), RecordExpect::Version(2)), put(key("k"), "reborn", RecordExpect::Absent)])
        .unwrap();
    assert_eq!(version_and_value(&engine, key("k")), Some((1, "reborn".into())));
    // Insert then delete: nothing at commit, and the journal deletes the key.
    let committed = run(
        &mut engine,
        4,
        &[put(key("tmp"), "t", RecordExpect::Absent), delete(key("tmp"), RecordExpect::Version(1))],
    )
    .unwrap();
    assert_eq!(committed.removed, vec![key("tmp")]);
    assert_eq!(engine.record(key("tmp")), None);
}

#[test]
fn records_are_refused_on_shards_of_other_kinds_and_other_ops_on_records_shards() {
    let mut accounts = Engine::new(ACCOUNTS, &[]);
    assert!(matches!(
        accounts.prepare(txn(1), &[put(key("k"), "v", RecordExpect::Any)]),
        Err(AbortReason::Conflict { .. })
    ));
    let mut records = Engine::new(RECORDS, &[]);
    let debit = Operation::Debit { account: AccountId(1), amount: Money::new(1, Currency::CNY) };
    assert_eq!(records.prepare(txn(1), &[debit]), Err(AbortReason::UnknownAccount(AccountId(1))));
    assert_eq!(records.prepared_count(), 0);
}

#[tokio::test]
async fn a_restart_recovers_committed_records_and_prepared_locks_from_the_journal() {
    let disk = MemDisk::new();
    let journal = Journal::new(Arc::new(disk.clone()), RECORDS);
    let mut engine = Engine::new(RECORDS, &[]);
    let step = |engine: &mut Engine, seq: u64, ops: &[Operation], commit: bool| {
        let Ok(Prepared::New(record)) = engine.prepare(txn(seq), ops) else { panic!("prepare {seq} failed") };
        journal.record_prepared(&record).unwrap();
        if commit {
            journal.record_commit(&engine.commit(txn(seq), 0).unwrap()).unwrap();
        }
    };
    step(&mut engine, 1, &[put(key("a"), "a1", RecordExpect::Absent), put(key("b"), "b1", RecordExpect::Absent)], true);
    step(&mut engine, 2, &[put(key("a"), "a2", RecordExpect::Version(1))], true);
    step(&mut engine, 3, &[delete(key("b"), RecordExpect::Version(1))], true);
    step(
        &mut engine,
        4,
        &[put(key("c"), "c1", RecordExpect::Absent), put(key("a"), "a3", RecordExpect::Version(2))],
        false,
    );
    journal.sync().await.unwrap();
    disk.crash();

    let journal = Journal::new(Arc::new(disk.clone()), RECORDS);
    let mut recovered = journal.recover(&[], 10).unwrap();
    assert_eq!(version_and_value(&recovered, key("a")), Some((2, "a2".into())));
    assert_eq!(recovered.record(key("b")), None, "the delete is durable");
    assert_eq!(recovered.record(key("c")), None, "prepared, not committed");
    assert_eq!(recovered.prepared_txns(), vec![txn(4)]);
    assert_eq!(recovered.status().entities, 1);
    // The prepared transaction's locks came back with it.
    assert!(matches!(
        recovered.prepare(txn(5), &[put(key("c"), "mine", RecordExpect::Absent)]),
        Err(AbortReason::Conflict { .. })
    ));
    assert!(matches!(
        recovered.prepare(txn(5), &[put(key("a"), "mine", RecordExpect::Any)]),
        Err(AbortReason::Conflict { .. })
    ));
    // Its commit applies exactly what it prepared.
    let committed = recovered.commit(txn(4), 0).unwrap();
    journal.record_commit(&committed).unwrap();
    assert_eq!(version_and_value(&recovered, key("a")), Some((3, "a3".into())));
    assert_eq!(version_and_value(&recovered, key("c")), Some((1, "c1".into())));
    journal.sync().await.unwrap();
    let again = Journal::new(Arc::new(disk.clone()), RECORDS).recover(&[], 10).unwrap();
    assert_eq!(again.scan_records(1, None, 10, usize::MAX), recovered.scan_records(1, None, 10, usize::MAX));
    assert_eq!(again.prepared_count(), 0);
    // A stored record's key is named in errors.
    let label = crate::records::key_label(EntityKind::Record, &crate::records::record_entity_key(key("a")));
    assert!(label.starts_with("e/record-1/"), "{label}");
}

#[tokio::test]
async fn accounts_keep_their_recent_entries_bounded_newest_first_across_restarts() {
    let disk = MemDisk::new();
    let journal = Journal::new(Arc::new(disk.clone()), ACCOUNTS);
    let mut engine = Engine::new(ACCOUNTS, &[]);
    let cny = |minor| Money::new(minor, Currency::CNY);
    let commit = |engine: &mut Engine, seq: u64, ops: &[Operation]| {
        let Ok(Prepared::New(record)) = engine.prepare(txn(seq), ops) else { panic!("prepare {seq} failed") };
        journal.record_prepared(&record).unwrap();
        journal.record_commit(&engine.commit(txn(seq), 0).unwrap()).unwrap();
    };
    let open =
        |id, initial_minor| Operation::OpenAccount { account: AccountId(id), currency: Currency::CNY, initial_minor };
    commit(&mut engine, 1, &[open(1, 1_000), open(2, 0)]);
    let view = engine.account(AccountId(1)).unwrap();
    assert_eq!(view.recent.len(), 1, "the opening deposit is an entry");
    assert_eq!(
        (view.recent[0].txn, view.recent[0].delta_minor, view.recent[0].balance_after_minor),
        (txn(1), 1_000, 1_000)
    );
    let transfers = MAX_RECENT_ENTRIES as u64 + 5;
    for i in 0..transfers {
        let minor = i as i64 + 1;
        commit(
            &mut engine,
            10 + i,
            &[
                Operation::Debit { account: AccountId(1), amount: cny(minor) },
                Operation::Credit { account: AccountId(2), amount: cny(minor) },
            ],
        );
    }
    let payer = engine.account(AccountId(1)).unwrap();
    assert_eq!(payer.recent.len(), MAX_RECENT_ENTRIES, "bounded");
    let newest = &payer.recent[0];
    assert_eq!(newest.txn, txn(10 + transfers - 1), "newest first");
    assert_eq!((newest.delta_minor, newest.balance_after_minor), (-(transfers as i64), payer.balance_minor));
    assert!(payer.recent.windows(2).all(|w| w[0].txn > w[1].txn));
    assert!(payer.recent.windows(2).all(|w| w[0].balance_after_minor - w[0].delta_minor == w[1].balance_after_minor));
    let merchant = engine.account(AccountId(2)).unwrap();
    assert_eq!(merchant.recent[0].delta_minor, transfers as i64);
    // A transaction that debits and credits one account is one entry.
    commit(
        &mut engine,
        500,
        &[
            Operation::Debit { account: AccountId(2), amount: cny(5) },
            Operation::Credit { account: AccountId(2), amount: cny(7) },
        ],
    );
    let merchant = engine.account(AccountId(2)).unwrap();
    assert_eq!((merchant.recent[0].txn, merchant.recent[0].delta_minor), (txn(500), 2));

    journal.sync().await.unwrap();
    let recovered = Journal::new(Arc::new(disk.clone()), ACCOUNTS).recover(&[], 1_000).unwrap();
    assert_eq!(recovered.account(AccountId(1)), Some(payer), "entries survive a restart");
    assert_eq!(recovered.account(AccountId(2)), Some(merchant));
}

#[test]
fn recovery_refuses_entries_that_do_not_explain_the_balance() {
    let mut account = crate::accounts::Account::new(Currency::CNY, 100);
    account.recent =
        vec![paytx_protocol::messages::EntryView { txn: txn(1), delta_minor: 100, balance_after_minor: 90 }];
    let contents = JournalContents {
        entities: vec![("e/1".into(), EntityRecord::Account { id: AccountId(1), account })],
        ..JournalContents::default()
    };
    let err = Engine::recover(ACCOUNTS, &[], 10, contents).unwrap_err();
    assert_eq!(err.key, "e/1");
}

#[test]
fn a_full_shard_refuses_new_records_but_not_updates_and_recovery_keeps_its_promises() {
    let mut engine = Engine::new(RECORDS, &[]).with_max_records(2);
    run(&mut engine, 1, &[put(key("a"), "a", RecordExpect::Absent)]).unwrap();
    // A prepared creation counts before it commits.
    assert!(engine.prepare(txn(2), &[put(key("b"), "b", RecordExpect::Absent)]).is_ok(), "room for a second");
    let full = AbortReason::RecordStoreFull { shard: RECORDS, max_records: 2 };
    assert_eq!(engine.prepare(txn(3), &[put(key("c"), "c", RecordExpect::Absent)]), Err(full.clone()));
    // Updating an existing record creates nothing.
    run(&mut engine, 4, &[put(key("a"), "a2", RecordExpect::Version(1))]).unwrap();
    // An abort gives the room back.
    assert!(engine.abort(txn(2)));
    run(&mut engine, 5, &[put(key("c"), "c", RecordExpect::Absent)]).unwrap();
    assert_eq!(engine.prepare(txn(6), &[put(key("d"), "d", RecordExpect::Absent)]), Err(full));
    // A delete frees room once committed.
    run(&mut engine, 7, &[delete(key("c"), RecordExpect::Any)]).unwrap();
    run(&mut engine, 8, &[put(key("d"), "d", RecordExpect::Absent)]).unwrap();

    // A prepared transaction recovered under a lower limit is kept: its YES was a promise.
    let mut promised = Engine::new(RECORDS, &[]).with_max_records(1);
    let Ok(Prepared::New(record)) = promised.prepare(txn(9), &[put(key("x"), "x", RecordExpect::Absent)]) else {
        panic!("room for one")
    };
    let contents = JournalContents {
        entities: vec![(
            "e/y".into(),
            EntityRecord::Record {
                key: key("y"),
                record: crate::record_store::StoredRecord { version: 1, value: b"y".to_vec() },
            },
        )],
        prepared: vec![("p/9".into(), record)],
        ..JournalContents::default()
    };
    let recovered = Engine::recover(RECORDS, &[], 10, contents).unwrap().with_max_records(1);
    assert_eq!(recovered.prepared_txns(), vec![txn(9)]);
}

#[tokio::test]
async fn a_commit_timed_entry_prepared_before_a_crash_commits_under_the_time_its_decision_brings() {
    let disk = MemDisk::new();
    let journal = Journal::new(Arc::new(disk.clone()), RECORDS);
    let mut engine = Engine::new(RECORDS, &[]);
    let lines = paytx_protocol::Partition::new(paytx_protocol::ids::FIRST_ORDERED_NS + 6, b"mch_1").unwrap();
    let entry = Operation::PutRecordAtCommit { partition: lines, number: 9, value: b"line".to_vec() };
    let Ok(Prepared::New(record)) = engine.prepare(txn(1), std::slice::from_ref(&entry)) else { panic!("prepares") };
    journal.record_prepared(&record).unwrap();
    journal.sync().await.unwrap();
    disk.crash();

    // The prepared record holds the operation, not a key: the time is
    // still open after recovery, and the number still taken.
    let journal = Journal::new(Arc::new(disk.clone()), RECORDS);
    let mut recovered = journal.recover(&[], 10).unwrap();
    assert_eq!(recovered.prepared_txns(), vec![txn(1)]);
    assert!(matches!(recovered.prepare(txn(2), &[entry]), Err(AbortReason::Conflict { .. })));
    let at_ms = 1_764_633_599_999; // 2025-12-01T23:59:59.999Z
    journal.record_commit(&recovered.commit(txn(1), at_ms).unwrap()).unwrap();
    // A re-sent decision with a later time changes nothing.
    assert!(recovered.commit(txn(1), at_ms + 5).is_none());
    journal.sync().await.unwrap();
    disk.crash();

    let again = Journal::new(Arc::new(disk.clone()), RECORDS).recover(&[], 10).unwrap();
    let stored = lines.key(paytx_protocol::ids::sort_key(at_ms, 9));
    assert_eq!(version_and_value(&again, stored), Some((1, "line".into())));
    assert_eq!(again.status().entities, 1, "only the entry under its commit time: no placeholder");
    assert_eq!(again.prepared_count(), 0);
}
