//! The coordinator leader goes away while payments stream: every submitted
//! transaction ends committed or aborted, none half-applied, and every
//! acknowledged commit survives. Plus idempotent resubmission across a
//! leader change.

mod common;

use common::*;
use paytx::protocol::messages::{KeyStatus, TxnState};
use paytx::protocol::{AccountId, IdempotencyKey, OrderId, Outcome, RequestError, TxnRequest};
use paytx::ClientError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_shutdown_while_payments_stream_loses_nothing_and_halves_nothing() {
    let (cluster, client) = start(test_options()).await;
    let payers = open(&client, "open-payers", 1..=20, 100_000).await;
    let merchants = open(&client, "open-merchants", 101..=105, 0).await;
    let mut all = payers.clone();
    all.extend(&merchants);
    let payments = 300u64;
    for order in 1..=payments {
        create_order(&client, order, merchants[(order % 5) as usize], 100 + (order as i64 % 7) * 10).await;
    }
    let amount_of = |order: u64| 100 + (order as i64 % 7) * 10;

    let first_leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let cluster = Arc::new(cluster);
    let mut workers = Vec::new();
    for worker in 0..8u64 {
        let client = client.clone();
        let (payers, merchants) = (payers.clone(), merchants.clone());
        workers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for order in (1..=payments).filter(|o| o % 8 == worker) {
                let payer = payers[(order % payers.len() as u64) as usize];
                let merchant = merchants[(order % 5) as usize];
                let key = format!("pay-{order}");
                let result = client
                    .submit(TxnRequest::new(key.clone(), pay_ops(payer, merchant, order, amount_of(order))))
                    .await;
                results.push((order, payer, merchant, key, result));
            }
            results
        }));
    }
    // Shut the leader's coordinator down while the workers run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.shutdown_coordinator(first_leader).await.expect("shutdown coordinator");
    let mut results = Vec::new();
    for worker in workers {
        results.extend(worker.await.expect("worker"));
    }
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("a new leader");
    assert_ne!(new_leader, first_leader, "the old leader's coordinator is down");
    wait_quiet(&cluster, &client, Duration::from_secs(20)).await;

    // Every submission has a final outcome: from its receipt, or (when the
    // client gave up) from the table through its idempotency key.
    let mut expected: BTreeMap<AccountId, i64> = payers.iter().map(|a| (*a, 100_000)).collect();
    expected.extend(merchants.iter().map(|a| (*a, 0)));
    let mut committed_orders = Vec::new();
    let (mut committed, mut aborted) = (0, 0);
    for (order, payer, merchant, key, result) in results {
        let outcome = match result {
            Ok(receipt) => receipt.outcome,
            Err(e) => {
                assert!(e.is_retryable(), "only transient failures are acceptable: {e}");
                match client.txn_status(IdempotencyKey::new(key)).await.expect("status") {
                    KeyStatus::Known(status) => match status.state {
                        TxnState::Decided(outcome) => outcome,
                        TxnState::InProgress => panic!("order {order} still in progress after the cluster settled"),
                    },
                    // Never registered: nothing can have been applied.
                    KeyStatus::NotRegistered => Outcome::Aborted(paytx::protocol::AbortReason::PresumedAbort),
                    KeyStatus::Unknown { retention_secs } => {
                        panic!(
                            "order {order}: key evicted within the run, far below the retention ({retention_secs} s)"
                        )
                    }
                }
            }
        };
        if outcome.is_committed() {
            committed += 1;
            *expected.get_mut(&payer).expect("payer") -= amount_of(order);
            *expected.get_mut(&merchant).expect("merchant") += amount_of(order);
            committed_orders.push(order);
        } else {
            aborted += 1;
        }
    }
    assert!(
        committed > payments / 2,
        "most payments commit despite the failover ({committed} of {payments}, {aborted} aborted)"
    );

    let actual = balances(&client, &all).await;
    for (account, view) in &actual {
        assert_eq!(view.held_minor, 0, "no hold left on {account}");
        assert_eq!(
            view.balance_minor, expected[account],
            "{account}: balance matches exactly the acknowledged commits"
        );
    }
    assert_eq!(total(&actual), 20 * 100_000, "money conserved");
    let views = orders(&client, 1..=payments).await;
    for (order, view) in views {
        let paid = committed_orders.contains(&order);
        assert_eq!(
            view.status == paytx::protocol::error::OrderStatus::Paid,
            paid,
            "order {order} is paid iff its payment committed"
        );
        let charge =
            client.charge(paytx::protocol::ChannelId(1 + order % 3), OrderId(order)).await.expect("charge read");
        assert_eq!(charge.is_some(), paid, "order {order} is charged iff paid");
    }
    drop(client);
    if let Ok(cluster) = Arc::try_unwrap(cluster) {
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_a_key_after_a_leader_change_returns_the_first_outcome_and_applies_once() {
    let (cluster, client) = start(test_options()).await;
    let accounts = open(&client, "open", 1..=2, 1_000).await;
    let (payer, merchant) = (accounts[0], accounts[1]);
    create_order(&client, 1, merchant, 300).await;
    let request = TxnRequest::new("pay-once", pay_ops(payer, merchant, 1, 300));
    let first = client.submit(request.clone()).await.expect("submit");
    assert!(first.outcome.is_committed());
    assert!(!first.replayed);

    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    cluster.shutdown_coordinator(leader).await.expect("shutdown");
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("new leader");
    assert_ne!(leader, new_leader);

    let again = client.submit(request.clone()).await.expect("resubmit");
    assert_eq!(again.txn, first.txn, "the same transaction answers");
    assert_eq!(again.outcome, first.outcome);
    assert!(again.replayed, "marked as a replay");
    let views = balances(&client, &accounts).await;
    assert_eq!(views[&payer].balance_minor, 700, "debited once");
    assert_eq!(views[&merchant].balance_minor, 1_300, "credited once");

    // Same key, different body: a typed error, nothing applied.
    let other = TxnRequest::new("pay-once", pay_ops(payer, merchant, 1, 299));
    match client.submit(other).await {
        Err(ClientError::Request(RequestError::IdempotencyConflict { key })) => assert_eq!(key, "pay-once"),
        other => panic!("expected an idempotency conflict, got {other:?}"),
    }
    assert_eq!(balances(&client, &accounts).await, views, "nothing changed");
    cluster.shutdown().await;
}

/// Single-copy shards (`replicas = 1`), one node down (coordinator replica
/// and shards): transactions touching its shards abort, and however many
/// of them there are, payments that do not touch it keep committing. Before, every such abort waited for the
/// dead shard's acknowledgement and counted against `max_in_flight_txns`,
/// so the leader soon answered `Overloaded` to everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_stops_only_the_transactions_that_touch_it() {
    const MAX_IN_FLIGHT: usize = 8;
    let mut options = test_options();
    options.coordinator.max_in_flight_txns = MAX_IN_FLIGHT;
    options.shard_replicas = 1;
    let (cluster, client) = start(options).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let victim = cluster.node_ids().into_iter().find(|n| *n != leader).expect("three nodes");
    let shards = cluster.config(leader).expect("leader config").shards.clone();
    let owner = |account: AccountId| {
        shards.node_of(shards.shard_of(paytx::protocol::EntityKey::Account(account))).expect("mapped")
    };
    let (live, dead): (Vec<AccountId>, Vec<AccountId>) = (1..60).map(AccountId).partition(|a| owner(*a) != victim);
    let (payer, payee, stranded) = (live[0], live[1], dead[0]);
    open(&client, "open", [payer.0, payee.0, stranded.0].into_iter(), 100_000).await;
    wait_quiet(&cluster, &client, Duration::from_secs(20)).await;

    cluster.stop_node(victim).await.expect("stop the victim");
    let transfer = |from: AccountId, to: AccountId| {
        vec![
            paytx::protocol::Operation::Debit { account: from, amount: cny(1) },
            paytx::protocol::Operation::Credit { account: to, amount: cny(1) },
        ]
    };
    // Many more aborts than the cap, each waiting on nothing.
    for round in 0..(MAX_IN_FLIGHT * 4) {
        let receipt = submit(&client, &format!("stranded-{round}"), transfer(stranded, payer)).await;
        assert!(!receipt.outcome.is_committed(), "the stranded account's shard is down: {receipt:?}");
    }
    for round in 0..(MAX_IN_FLIGHT * 2) {
        let receipt = submit(&client, &format!("live-{round}"), transfer(payer, payee)).await;
        assert!(receipt.outcome.is_committed(), "a payment off the dead node commits: {receipt:?}");
    }

    cluster.restart_node(victim).await.expect("restart the victim");
    wait_quiet(&cluster, &client, Duration::from_secs(30)).await;
    let after = balances(&client, &[payer, payee, stranded]).await;
    let committed = i64::try_from(MAX_IN_FLIGHT * 2).expect("small");
    assert_eq!(after[&payer].balance_minor, 100_000 - committed);
    assert_eq!(after[&payee].balance_minor, 100_000 + committed);
    assert_eq!(after[&stranded].balance_minor, 100_000, "no abort moved money");
    assert!(after.values().all(|v| v.held_minor == 0), "nothing held: {after:?}");
    cluster.shutdown().await;
}
