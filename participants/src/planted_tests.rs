//! The participants' planted bugs (`paytx_protocol::planted`) on `MemDisk`.
//!
//! Each test plants its bug, shows the wrong behaviour, and unplants it.
//! Built without `paytx-protocol/planted-bugs`, planting is refused and the
//! same test checks the correct behaviour instead: the hooks are inert.
//! Run them planted with
//! `cargo test -p paytx-participants --features paytx-protocol/planted-bugs`.

use crate::{
    Decide, DecisionSource, Journal, ListInDoubt, ParticipantActor, ParticipantConfig, ParticipantError, Prepare,
    Prepared, ReadAccount, Shutdown,
};
use actix::{Actor, Addr};
use paytx_protocol::planted::{plant, Bug};
use paytx_protocol::{AccountId, BoxFuture, Currency, EntityKind, Money, Operation, ShardId, TxnId, Vote};
use paytx_storage::{DiskError, MemDisk};
use std::sync::Arc;

const ACCOUNTS: ShardId = ShardId { kind: EntityKind::Account, index: 0 };

fn txn(seq: u64) -> TxnId {
    TxnId { term: 1, node: 1, seq }
}

fn open(id: u64, initial_minor: i64) -> Operation {
    Operation::OpenAccount { account: AccountId(id), currency: Currency::CNY, initial_minor }
}

fn transfer(minor: i64) -> Vec<Operation> {
    vec![
        Operation::Debit { account: AccountId(1), amount: Money::new(minor, Currency::CNY) },
        Operation::Credit { account: AccountId(2), amount: Money::new(minor, Currency::CNY) },
    ]
}

/// Never answers (no in-doubt transaction gets resolved behind the test's back).
struct Silent;

impl DecisionSource for Silent {
    fn query(&self, _txn: TxnId) -> BoxFuture<Result<Decide, String>> {
        Box::pin(std::future::pending())
    }
}

fn config() -> ParticipantConfig {
    ParticipantConfig { in_doubt_after_ms: 60_000, ..ParticipantConfig::new(ACCOUNTS) }
}

fn start(disk: &MemDisk) -> Addr<ParticipantActor> {
    ParticipantActor::open(config(), Arc::new(disk.clone()), Arc::new(Silent)).expect("journal replays").start()
}

async fn prepare(addr: &Addr<ParticipantActor>, seq: u64, ops: Vec<Operation>) -> Result<Vote, ParticipantError> {
    addr.send(Prepare { txn: txn(seq), ops, disk_low: None }).await.expect("actor alive")
}

async fn balance(addr: &Addr<ParticipantActor>, id: u64) -> (i64, i64) {
    let view = addr.send(ReadAccount(AccountId(id))).await.unwrap().expect("account exists");
    (view.balance_minor, view.held_minor)
}

/// Accounts 1 (100) and 2 (0), committed and synced.
async fn funded(disk: &MemDisk) -> Addr<ParticipantActor> {
    let addr = start(disk);
    assert_eq!(prepare(&addr, 0, vec![open(1, 100), open(2, 0)]).await, Ok(Vote::Yes));
    addr.send(Decide { txn: txn(0), commit: true, at_ms: 0 }).await.unwrap().expect("committed");
    addr
}

#[actix_rt::test]
async fn vote_before_sync_votes_yes_although_the_fsync_fails_and_a_crash_loses_the_hold() {
    let disk = MemDisk::new();
    let addr = funded(&disk).await;
    disk.fail_syncs(true);
    let planted = plant(Some(Bug::VoteBeforeSync));
    let vote = prepare(&addr, 1, transfer(70)).await;
    plant(None);
    if !planted {
        // The real rule: no YES before the fsync; a failed fsync stops the shard.
        assert!(matches!(vote, Err(ParticipantError::Disk { source: DiskError::SyncFailed { .. }, .. })), "{vote:?}");
        return;
    }
    assert_eq!(vote, Ok(Vote::Yes), "YES with the prepared record not durable");
    assert_eq!(balance(&addr, 1).await, (100, 70), "the shard did not stop: it believes its promise");
    // A crash after the vote loses the reservation the YES promised.
    addr.send(Shutdown).await.unwrap();
    disk.fail_syncs(false);
    disk.crash();
    let addr = start(&disk);
    assert!(addr.send(ListInDoubt).await.unwrap().is_empty());
    assert_eq!(balance(&addr, 1).await, (100, 0));
}

#[actix_rt::test]
async fn drop_holds_on_restart_forgets_prepared_txns_and_their_commit_is_a_no_op() {
    let disk = MemDisk::new();
    let addr = funded(&disk).await;
    assert_eq!(prepare(&addr, 1, transfer(70)).await, Ok(Vote::Yes), "prepared and synced");
    addr.send(Shutdown).await.unwrap();
    disk.crash();

    let planted = plant(Some(Bug::DropHoldsOnRestart));
    let addr = start(&disk); // replays the journal
    plant(None);
    let in_doubt = addr.send(ListInDoubt).await.unwrap();
    // The coordinator's commit arrives after the restart; it is acknowledged either way.
    let commit = addr.send(Decide { txn: txn(1), commit: true, at_ms: 0 }).await.unwrap();
    assert_eq!(commit, Ok(()));
    if !planted {
        assert_eq!(in_doubt, vec![txn(1)]);
        assert_eq!(balance(&addr, 1).await, (30, 0));
        assert_eq!(balance(&addr, 2).await, (70, 0));
        return;
    }
    assert!(in_doubt.is_empty(), "the YES-voted transaction is forgotten");
    // The acknowledged commit applied nothing here: the transaction is half-applied.
    assert_eq!(balance(&addr, 1).await, (100, 0));
    assert_eq!(balance(&addr, 2).await, (0, 0));
}

#[tokio::test]
async fn drop_holds_on_restart_replays_a_journal_without_holds() {
    let disk = MemDisk::new();
    let journal = Journal::new(Arc::new(disk.clone()), ACCOUNTS);
    let mut engine = journal.recover(&[], 10).unwrap();
    for (seq, ops) in [(0, vec![open(1, 100), open(2, 0)]), (1, transfer(70))] {
        let Ok(Prepared::New(record)) = engine.prepare(txn(seq), &ops) else { panic!("prepare {seq} failed") };
        journal.record_prepared(&record).unwrap();
        if seq == 0 {
            journal.record_commit(&engine.commit(txn(0), 0).unwrap()).unwrap();
        }
    }
    journal.sync().await.unwrap();
    disk.crash();

    let planted = plant(Some(Bug::DropHoldsOnRestart));
    let mut recovered = journal.recover(&[], 10).unwrap();
    plant(None);
    let view = recovered.account(AccountId(1)).unwrap();
    if !planted {
        assert_eq!(recovered.prepared_txns(), vec![txn(1)]);
        assert_eq!((view.balance_minor, view.held_minor), (100, 70));
        return;
    }
    assert!(recovered.prepared_txns().is_empty());
    assert_eq!((view.balance_minor, view.held_minor), (100, 0), "the hold of txn 1 is gone");
    // So the money txn 1 was promised can be spent again.
    assert!(matches!(recovered.prepare(txn(2), &transfer(100)), Ok(Prepared::New(_))));
    assert!(recovered.commit(txn(1), 0).is_none(), "its commit is a no-op");
}
