//! Engine unit tests: no I/O, no actor.

use super::*;
use crate::channels::default_channels;
use paytx_protocol::error::OrderStatus;
use paytx_protocol::{Currency, Money};

const ACCOUNTS: ShardId = ShardId { kind: EntityKind::Account, index: 0 };
const ORDERS: ShardId = ShardId { kind: EntityKind::Order, index: 0 };
const CHANNELS: ShardId = ShardId { kind: EntityKind::Channel, index: 0 };

fn txn(seq: u64) -> TxnId {
    TxnId { term: 1, node: 1, seq }
}

fn cny(minor: i64) -> Money {
    Money::new(minor, Currency::CNY)
}

fn open(id: u64, initial_minor: i64) -> Operation {
    Operation::OpenAccount { account: AccountId(id), currency: Currency::CNY, initial_minor }
}

fn debit(id: u64, minor: i64) -> Operation {
    Operation::Debit { account: AccountId(id), amount: cny(minor) }
}

fn credit(id: u64, minor: i64) -> Operation {
    Operation::Credit { account: AccountId(id), amount: cny(minor) }
}

fn create_order(id: u64, minor: i64) -> Operation {
    Operation::CreateOrder { order: OrderId(id), merchant: AccountId(100), amount: cny(minor) }
}

fn mark_paid(id: u64, minor: i64) -> Operation {
    Operation::MarkPaid { order: OrderId(id), amount: cny(minor) }
}

fn refund(id: u64, minor: i64) -> Operation {
    Operation::RefundOrder { order: OrderId(id), amount: cny(minor) }
}

fn charge(channel: u64, order: u64, minor: i64) -> Operation {
    Operation::Charge { channel: ChannelId(channel), order: OrderId(order), amount: cny(minor) }
}

fn channel_refund(channel: u64, order: u64, minor: i64) -> Operation {
    Operation::ChannelRefund { channel: ChannelId(channel), order: OrderId(order), amount: cny(minor) }
}

/// Prepares and commits `ops` as transaction `seq`.
fn run(engine: &mut Engine, seq: u64, ops: &[Operation]) -> Result<(), AbortReason> {
    let prepared = engine.prepare(txn(seq), ops)?;
    assert!(matches!(prepared, Prepared::New(_)));
    engine.commit(txn(seq), 0).expect("just prepared");
    engine.check_invariants().expect("invariants hold after every commit");
    Ok(())
}

fn balance(engine: &Engine, id: u64) -> (i64, i64) {
    let view = engine.account(AccountId(id)).expect("account exists");
    (view.balance_minor, view.held_minor)
}

fn accounts_with(balances: &[(u64, i64)]) -> Engine {
    let mut engine = Engine::new(ACCOUNTS, &[]);
    let ops: Vec<Operation> = balances.iter().map(|(id, minor)| open(*id, *minor)).collect();
    run(&mut engine, 0, &ops).unwrap();
    engine
}

#[test]
fn holds_prevent_overdraft_across_concurrent_prepares() {
    let mut engine = accounts_with(&[(1, 100), (2, 0)]);
    assert!(matches!(engine.prepare(txn(1), &[debit(1, 70), credit(2, 70)]), Ok(Prepared::New(_))));
    assert_eq!(balance(&engine, 1), (100, 70));
    let second = engine.prepare(txn(2), &[debit(1, 40), credit(2, 40)]);
    assert_eq!(
        second,
        Err(AbortReason::InsufficientFunds { account: AccountId(1), available_minor: 30, requested_minor: 40 })
    );
    // What is still available can be taken.
    assert!(engine.prepare(txn(3), &[debit(1, 30), credit(2, 30)]).is_ok());
    assert_eq!(balance(&engine, 1), (100, 100));
    engine.check_invariants().unwrap();
}

#[test]
fn several_debits_of_one_account_in_one_transaction_add_up() {
    let mut engine = accounts_with(&[(1, 100), (2, 0)]);
    assert!(matches!(
        engine.prepare(txn(1), &[debit(1, 60), debit(1, 60), credit(2, 120)]),
        Err(AbortReason::InsufficientFunds { available_minor: 40, requested_minor: 60, .. })
    ));
}

#[test]
fn abort_releases_holds() {
    let mut engine = accounts_with(&[(1, 100), (2, 0)]);
    engine.prepare(txn(1), &[debit(1, 100), credit(2, 100)]).unwrap();
    assert!(engine.abort(txn(1)));
    assert_eq!(balance(&engine, 1), (100, 0));
    assert_eq!(balance(&engine, 2), (0, 0));
    assert_eq!(engine.status().in_doubt, 0);
    assert!(engine.prepare(txn(2), &[debit(1, 100), credit(2, 100)]).is_ok());
}

#[test]
fn commit_moves_money_and_returns_after_images() {
    let mut engine = accounts_with(&[(1, 100), (2, 5)]);
    engine.prepare(txn(1), &[debit(1, 30), credit(2, 30)]).unwrap();
    let committed = engine.commit(txn(1), 0).unwrap();
    assert_eq!(balance(&engine, 1), (70, 0));
    assert_eq!(balance(&engine, 2), (35, 0));
    assert_eq!(
        committed.entities,
        vec![
            EntityRecord::Account {
                id: AccountId(1),
                account: account_with_entries(70, &[(1, -30, 70), (0, 100, 100)]),
            },
            EntityRecord::Account { id: AccountId(2), account: account_with_entries(35, &[(1, 30, 35), (0, 5, 5)]) },
        ]
    );
    assert_eq!(
        engine.status(),
        ShardStatus { shard: ACCOUNTS, entities: 2, in_doubt: 0, leader: None, voters: Vec::new() }
    );
}

#[test]
fn account_errors_are_typed() {
    let mut engine = accounts_with(&[(1, 100)]);
    assert_eq!(engine.prepare(txn(1), &[debit(9, 1)]), Err(AbortReason::UnknownAccount(AccountId(9))));
    assert_eq!(engine.prepare(txn(1), &[open(1, 0)]), Err(AbortReason::AccountExists(AccountId(1))));
    let usd = Operation::Credit { account: AccountId(1), amount: Money::new(1, Currency::USD) };
    assert!(matches!(engine.prepare(txn(1), &[usd]), Err(AbortReason::CurrencyMismatch { .. })));
    // A second concurrent open of one id conflicts.
    engine.prepare(txn(2), &[open(5, 0)]).unwrap();
    assert!(matches!(engine.prepare(txn(3), &[open(5, 0)]), Err(AbortReason::Conflict { .. })));
    engine.commit(txn(2), 0).unwrap();
    assert_eq!(engine.prepare(txn(4), &[open(5, 0)]), Err(AbortReason::AccountExists(AccountId(5))));
}

#[test]
fn overflow_is_refused_counting_pending_credits() {
    let mut engine = accounts_with(&[(1, i64::MAX - 10), (2, 100)]);
    engine.prepare(txn(1), &[debit(2, 6), credit(1, 6)]).unwrap();
    // 6 pending + 5 would overflow if both commit.
    assert_eq!(engine.prepare(txn(2), &[debit(2, 5), credit(1, 5)]), Err(AbortReason::BalanceOverflow(AccountId(1))));
    assert!(engine.prepare(txn(3), &[debit(2, 4), credit(1, 4)]).is_ok());
    engine.commit(txn(1), 0).unwrap();
    engine.commit(txn(3), 0).unwrap();
    assert_eq!(balance(&engine, 1), (i64::MAX, 0));
    assert_eq!(run(&mut engine, 4, &[debit(2, 1), credit(1, 1)]), Err(AbortReason::BalanceOverflow(AccountId(1))));
    engine.check_invariants().unwrap();
}

#[test]
fn a_failed_prepare_changes_nothing() {
    let mut engine = accounts_with(&[(1, 100), (2, 0)]);
    engine.prepare(txn(1), &[debit(1, 10), credit(2, 10)]).unwrap();
    let before = format!("{engine:?}");
    // Passes the first three operations, fails on the last.
    let ops = [open(3, 50), debit(1, 20), credit(2, 20), debit(1, 1000)];
    assert!(matches!(engine.prepare(txn(2), &ops), Err(AbortReason::InsufficientFunds { .. })));
    assert_eq!(format!("{engine:?}"), before);

    let mut orders = Engine::new(ORDERS, &[]);
    run(&mut orders, 1, &[create_order(1, 50)]).unwrap();
    let before = format!("{orders:?}");
    assert!(orders.prepare(txn(2), &[mark_paid(1, 50), create_order(2, 5), refund(1, 60)]).is_err());
    assert_eq!(format!("{orders:?}"), before);

    let mut channels = Engine::new(CHANNELS, &default_channels());
    let before = format!("{channels:?}");
    assert!(channels.prepare(txn(1), &[charge(1, 1, 10), channel_refund(1, 1, 11)]).is_err());
    assert_eq!(format!("{channels:?}"), before);
}

#[test]
fn order_state_machine_allows_exactly_its_transitions() {
    let mut engine = Engine::new(ORDERS, &[]);
    run(&mut engine, 1, &[create_order(1, 100), create_order(2, 100)]).unwrap();
    assert_eq!(run(&mut engine, 2, &[create_order(1, 100)]), Err(AbortReason::OrderExists(OrderId(1))));
    assert_eq!(run(&mut engine, 2, &[mark_paid(3, 100)]), Err(AbortReason::UnknownOrder(OrderId(3))));
    // CREATED cannot be refunded.
    assert!(matches!(
        run(&mut engine, 2, &[refund(1, 10)]),
        Err(AbortReason::IllegalOrderTransition { from: OrderStatus::Created, .. })
    ));
    assert_eq!(
        run(&mut engine, 2, &[mark_paid(1, 99)]),
        Err(AbortReason::AmountMismatch { order: OrderId(1), expected_minor: 100, got_minor: 99 })
    );
    run(&mut engine, 2, &[mark_paid(1, 100)]).unwrap();
    assert_eq!(engine.order(OrderId(1)).unwrap().status, OrderStatus::Paid);
    // PAID cannot be paid again nor closed.
    assert!(matches!(run(&mut engine, 3, &[mark_paid(1, 100)]), Err(AbortReason::IllegalOrderTransition { .. })));
    let close = |id| Operation::CloseOrder { order: OrderId(id) };
    assert!(matches!(run(&mut engine, 3, &[close(1)]), Err(AbortReason::IllegalOrderTransition { .. })));
    // CREATED → CLOSED, then nothing.
    run(&mut engine, 3, &[close(2)]).unwrap();
    assert_eq!(engine.order(OrderId(2)).unwrap().status, OrderStatus::Closed);
    assert!(matches!(run(&mut engine, 4, &[mark_paid(2, 100)]), Err(AbortReason::IllegalOrderTransition { .. })));
    assert!(matches!(run(&mut engine, 4, &[close(2)]), Err(AbortReason::IllegalOrderTransition { .. })));
}

#[test]
fn refunds_never_exceed_what_was_paid_across_partial_refunds() {
    let mut engine = Engine::new(ORDERS, &[]);
    run(&mut engine, 1, &[create_order(1, 100), mark_paid(1, 100)]).unwrap();
    run(&mut engine, 2, &[refund(1, 30)]).unwrap();
    assert_eq!(engine.order(OrderId(1)).unwrap().status, OrderStatus::PartiallyRefunded);
    run(&mut engine, 3, &[refund(1, 30)]).unwrap();
    assert_eq!(
        run(&mut engine, 4, &[refund(1, 41)]),
        Err(AbortReason::RefundExceedsPaid {
            order: OrderId(1),
            paid_minor: 100,
            refunded_minor: 60,
            requested_minor: 41
        })
    );
    // Two refunds in one transaction compose.
    assert!(matches!(run(&mut engine, 4, &[refund(1, 20), refund(1, 21)]), Err(AbortReason::RefundExceedsPaid { .. })));
    run(&mut engine, 4, &[refund(1, 20), refund(1, 20)]).unwrap();
    let view = engine.order(OrderId(1)).unwrap();
    assert_eq!((view.status, view.refunded_minor), (OrderStatus::Refunded, 100));
    assert!(matches!(run(&mut engine, 5, &[refund(1, 1)]), Err(AbortReason::IllegalOrderTransition { .. })));
}

#[test]
fn a_locked_order_refuses_other_transactions_until_decided() {
    let mut engine = Engine::new(ORDERS, &[]);
    run(&mut engine, 1, &[create_order(1, 100)]).unwrap();
    engine.prepare(txn(2), &[mark_paid(1, 100)]).unwrap();
    assert!(matches!(engine.prepare(txn(3), &[mark_paid(1, 100)]), Err(AbortReason::Conflict { .. })));
    assert_eq!(engine.order(OrderId(1)).unwrap().status, OrderStatus::Created, "reads see committed state");
    engine.abort(txn(2));
    assert!(engine.prepare(txn(3), &[Operation::CloseOrder { order: OrderId(1) }]).is_ok());
}

#[test]
fn a_second_charge_is_refused_and_channel_refunds_are_bounded() {
    let mut engine = Engine::new(CHANNELS, &default_channels());
    run(&mut engine, 1, &[charge(2, 7, 100)]).unwrap();
    assert_eq!(
        run(&mut engine, 2, &[charge(2, 7, 100)]),
        Err(AbortReason::AlreadyCharged { channel: ChannelId(2), order: OrderId(7) })
    );
    // Another channel may charge the same order (a separate route).
    run(&mut engine, 2, &[charge(3, 7, 100)]).unwrap();
    assert_eq!(
        run(&mut engine, 3, &[channel_refund(1, 7, 1)]),
        Err(AbortReason::ChargeNotFound { channel: ChannelId(1), order: OrderId(7) })
    );
    run(&mut engine, 3, &[channel_refund(2, 7, 60)]).unwrap();
    assert!(matches!(
        run(&mut engine, 4, &[channel_refund(2, 7, 41)]),
        Err(AbortReason::RefundExceedsPaid { paid_minor: 100, refunded_minor: 60, requested_minor: 41, .. })
    ));
    // A pending refund locks the charge, but a new charge is still refused
    // for what it is.
    engine.prepare(txn(5), &[channel_refund(2, 7, 40)]).unwrap();
    assert!(matches!(engine.prepare(txn(6), &[channel_refund(2, 7, 1)]), Err(AbortReason::Conflict { .. })));
    assert!(matches!(engine.prepare(txn(6), &[charge(2, 7, 1)]), Err(AbortReason::AlreadyCharged { .. })));
    engine.commit(txn(5), 0).unwrap();
    assert_eq!(engine.charge(ChannelId(2), OrderId(7)).unwrap().refunded_minor, 100);
    assert_eq!(engine.status().entities, 2);
}

#[test]
fn re_prepare_is_idempotent_and_re_decide_is_a_no_op() {
    let mut engine = accounts_with(&[(1, 100), (2, 0)]);
    let ops = [debit(1, 60), credit(2, 60)];
    assert!(matches!(engine.prepare(txn(1), &ops), Ok(Prepared::New(_))));
    assert_eq!(engine.prepare(txn(1), &ops), Ok(Prepared::AlreadyPrepared));
    assert_eq!(balance(&engine, 1), (100, 60), "held once, not twice");
    assert!(matches!(engine.prepare(txn(1), &[debit(1, 1)]), Err(AbortReason::Conflict { .. })));
    assert!(engine.commit(txn(1), 0).is_some());
    assert!(engine.commit(txn(1), 0).is_none());
    assert!(!engine.abort(txn(1)));
    assert_eq!(balance(&engine, 1), (40, 0));
    // A late duplicate prepare after the commit neither reserves nor applies.
    assert_eq!(engine.prepare(txn(1), &ops), Ok(Prepared::AlreadyCommitted));
    assert!(engine.commit(txn(1), 0).is_none());
    assert_eq!(balance(&engine, 1), (40, 0));
    // Abort of an unknown txn is a no-op too.
    assert!(!engine.abort(txn(99)));
}

#[test]
fn forgotten_commits_refuse_late_prepares() {
    let mut engine = accounts_with(&[(1, 100), (2, 0)]).with_remembered_commits(2);
    let ops = [debit(1, 1), credit(2, 1)];
    let mut forgotten = Vec::new();
    for seq in 1..=4 {
        engine.prepare(txn(seq), &ops).unwrap();
        let committed = engine.commit(txn(seq), 0).unwrap();
        forgotten.extend(committed.forgotten);
    }
    // Remembered: 3 and 4. Forgotten: the opening txn 0, then 1 and 2.
    assert_eq!(forgotten, vec![txn(0), txn(1), txn(2)]);
    assert_eq!(engine.prepare(txn(3), &ops), Ok(Prepared::AlreadyCommitted));
    assert_eq!(engine.prepare(txn(2), &ops), Err(AbortReason::PrepareTimeout { shard: ACCOUNTS }));
    assert_eq!(balance(&engine, 1), (96, 0));
}

#[test]
fn misrouted_operations_are_unknown_here() {
    let mut engine = Engine::new(ORDERS, &[]);
    assert_eq!(engine.prepare(txn(1), &[debit(1, 1)]), Err(AbortReason::UnknownAccount(AccountId(1))));
    assert_eq!(engine.prepare(txn(1), &[charge(1, 1, 1)]), Err(AbortReason::UnknownChannel(ChannelId(1))));
    let mut accounts = Engine::new(ACCOUNTS, &[]);
    assert_eq!(accounts.prepare(txn(1), &[create_order(1, 1)]), Err(AbortReason::UnknownOrder(OrderId(1))));
    assert_eq!(accounts.account(AccountId(1)), None);
    assert_eq!(accounts.order(OrderId(1)), None);
}

#[test]
fn recovery_brings_back_holds_and_locks() {
    let mut engine = accounts_with(&[(1, 100), (2, 0)]);
    let Ok(Prepared::New(record)) = engine.prepare(txn(1), &[debit(1, 70), credit(2, 70)]) else {
        panic!("prepare failed")
    };
    let contents = JournalContents {
        entities: vec![
            ("e/1".into(), EntityRecord::Account { id: AccountId(1), account: account(100) }),
            ("e/2".into(), EntityRecord::Account { id: AccountId(2), account: account(0) }),
        ],
        prepared: vec![("p/1".into(), record.clone())],
        committed: vec![txn(0)],
        forgotten_through: None,
    };
    let mut recovered = Engine::recover(ACCOUNTS, &[], 10, contents.clone()).unwrap();
    assert_eq!(recovered.prepared_txns(), vec![txn(1)]);
    assert_eq!(balance(&recovered, 1), (100, 70));
    assert!(matches!(recovered.prepare(txn(2), &[debit(1, 31)]), Err(AbortReason::InsufficientFunds { .. })));
    recovered.commit(txn(1), 0).unwrap();
    assert_eq!(balance(&recovered, 2), (70, 0));

    // A prepared record that no longer fits is an error naming it.
    let mut broken = contents.clone();
    broken.entities[0].1 = EntityRecord::Account { id: AccountId(1), account: account(50) };
    let err = Engine::recover(ACCOUNTS, &[], 10, broken).unwrap_err();
    assert_eq!(err.key, "p/1");
    // So is a record of the wrong kind.
    let err = Engine::recover(ORDERS, &[], 10, contents).unwrap_err();
    assert_eq!(err.key, "e/1");
}

#[test]
fn a_prepared_charge_is_recovered_as_voted_after_its_channel_left_the_configuration() {
    let channels = default_channels();
    let mut engine = Engine::new(CHANNELS, &channels);
    let Ok(Prepared::New(record)) = engine.prepare(txn(1), &[charge(1, 7, 500)]) else { panic!("prepare failed") };
    let contents = JournalContents {
        entities: Vec::new(),
        prepared: vec![("p/1".into(), record)],
        committed: Vec::new(),
        forgotten_through: None,
    };
    // Channel 1 is gone from the configuration; the YES was given under the
    // old one, so the shard still starts and holds the charge's lock.
    let remaining: Vec<ChannelConfig> = channels.iter().filter(|c| c.id != ChannelId(1)).cloned().collect();
    let mut recovered = Engine::recover(CHANNELS, &remaining, 10, contents).expect("the YES is honoured");
    assert_eq!(recovered.prepared_txns(), vec![txn(1)]);
    assert!(
        matches!(recovered.prepare(txn(2), &[charge(1, 7, 500)]), Err(AbortReason::UnknownChannel(_))),
        "new work on the removed channel is refused"
    );
    recovered.commit(txn(1), 0).expect("prepared");
    let view = recovered.charge(ChannelId(1), OrderId(7)).expect("the charge is recorded");
    assert_eq!(view.charged, cny(500));
    recovered.check_invariants().expect("invariants hold");
}

fn account(balance_minor: i64) -> crate::accounts::Account {
    crate::accounts::Account::new(Currency::CNY, balance_minor)
}

/// An account with its recent entries `(txn seq, delta, balance after)`, newest first.
fn account_with_entries(balance_minor: i64, entries: &[(u64, i64, i64)]) -> crate::accounts::Account {
    let mut account = account(balance_minor);
    account.recent = entries
        .iter()
        .map(|(seq, delta_minor, balance_after_minor)| paytx_protocol::messages::EntryView {
            txn: txn(*seq),
            delta_minor: *delta_minor,
            balance_after_minor: *balance_after_minor,
        })
        .collect();
    account
}

#[test]
fn a_prepare_after_its_abort_is_refused() {
    let mut engine = accounts_with(&[(1, 100), (2, 0)]).with_remembered_commits(1);
    // The abort overtook the prepare (a slow channel, a reordering network).
    assert!(!engine.abort(txn(1)));
    assert_eq!(
        engine.prepare(txn(1), &[debit(1, 5), credit(2, 5)]),
        Err(AbortReason::PrepareTimeout { shard: ACCOUNTS })
    );
    assert_eq!(balance(&engine, 1), (100, 0));
    // The memory is bounded: a newer abort pushes the older out.
    assert!(!engine.abort(txn(2)));
    assert!(matches!(engine.prepare(txn(1), &[debit(1, 5), credit(2, 5)]), Ok(Prepared::New(_))));
}

#[test]
fn a_capture_is_the_state_of_its_instant_whatever_commits_after() {
    let mut engine = Engine::new(ORDERS, &[]);
    assert!(matches!(engine.prepare(txn(1), &[create_order(1, 500)]), Ok(Prepared::New(_))));
    engine.commit(txn(1), 0).expect("prepared");
    assert!(matches!(engine.prepare(txn(2), &[create_order(2, 700)]), Ok(Prepared::New(_))));
    let expected = engine.export();
    let capture = engine.capture();
    assert_eq!(capture.entity_count(), 1);
    // Later writes to the live state: a commit that creates an order, one
    // that changes the captured order.
    engine.commit(txn(2), 0).expect("prepared");
    assert!(matches!(engine.prepare(txn(3), &[mark_paid(1, 500)]), Ok(Prepared::New(_))));
    engine.commit(txn(3), 0).expect("prepared");
    assert_ne!(engine.export(), expected, "the live state moved on");
    assert_eq!(capture.into_snapshot(), expected, "the capture did not");
}

#[test]
fn a_snapshot_restores_the_shard_exactly_as_it_was() {
    let mut engine = Engine::new(ORDERS, &[]);
    assert!(matches!(engine.prepare(txn(1), &[create_order(1, 500)]), Ok(Prepared::New(_))));
    engine.commit(txn(1), 0).expect("prepared");
    assert!(matches!(engine.prepare(txn(2), &[create_order(2, 700)]), Ok(Prepared::New(_))));
    engine.abort(txn(3));
    let snapshot = engine.export();
    let restored = Engine::from_snapshot(ORDERS, &[], DEFAULT_REMEMBERED_COMMITS, snapshot.clone()).expect("restores");
    assert_eq!(restored.export(), snapshot, "the same state, exported again");
    assert!(restored.order(OrderId(1)).is_some(), "the committed order");
    assert!(restored.is_prepared(txn(2)), "the prepared one, with its lock");
    assert!(restored.blocked_by_prepared(txn(4), &[mark_paid(2, 700)]));
    let mut restored = restored;
    assert!(restored.prepare(txn(3), &[create_order(3, 1)]).is_err(), "the remembered abort refuses a late prepare");
}
