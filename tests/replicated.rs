//! Replicated shards (issue 10): every participant shard is a Raft group of
//! three voters, so a whole node going down stops no payment and loses
//! nothing acknowledged. Real TCP, real sled, real openraft.

mod common;

use common::*;
use paytx::protocol::{AbortReason, AccountId, Outcome, TxnRequest};
use paytx::ClusterOptions;
use std::collections::BTreeMap;
use std::time::Duration;

fn replicated_options() -> ClusterOptions {
    ClusterOptions { shard_replicas: 3, ..test_options() }
}

/// Pays `order` from `payer` to `merchant`, retrying a transient failure
/// (the client is told to retry with the same key) until `deadline`.
/// `true` when it committed.
async fn pay_until(
    client: &paytx::Client,
    payer: AccountId,
    merchant: AccountId,
    order: u64,
    amount_minor: i64,
    deadline: tokio::time::Instant,
) -> bool {
    create_order(client, order, merchant, amount_minor).await;
    let mut attempt = 0;
    loop {
        let key = format!("pay-{order}-{attempt}");
        let request = TxnRequest::new(key, pay_ops(payer, merchant, order, amount_minor));
        match client.submit(request).await {
            Ok(receipt) if receipt.outcome.is_committed() => return true,
            // A shard still electing when the prepare deadline passed: the
            // payment aborted whole (nothing applied); pay again.
            Ok(receipt)
                if matches!(receipt.outcome, Outcome::Aborted(AbortReason::PrepareTimeout { .. }))
                    && tokio::time::Instant::now() < deadline =>
            {
                attempt += 1;
            }
            Ok(receipt) => panic!("payment {order} aborted: {:?}", receipt.outcome),
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("payment {order} failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_node_down_stops_no_payment_and_loses_nothing() {
    let (cluster, client) = start(replicated_options()).await;
    // Twelve payers: every accounts shard holds some.
    let payers = open(&client, "open-payers", 1..=12, 10_000).await;
    let merchants = open(&client, "open-merchants", 101..=103, 0).await;
    let mut expected: BTreeMap<AccountId, i64> = payers.iter().map(|a| (*a, 10_000)).collect();
    expected.extend(merchants.iter().map(|m| (*m, 0)));
    let mut next_order = 0u64;
    // One payment from every payer, to the merchants in turn.
    let mut pay_round = || -> Vec<(AccountId, AccountId, u64)> {
        (payers.iter().enumerate())
            .map(|(i, payer)| {
                next_order += 1;
                (*payer, merchants[i % merchants.len()], next_order)
            })
            .collect()
    };

    // Everything commits with all three nodes up.
    for (payer, merchant, order) in pay_round() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        assert!(pay_until(&client, payer, merchant, order, 100, deadline).await);
        *expected.get_mut(&payer).expect("payer") -= 100;
        *expected.get_mut(&merchant).expect("merchant") += 100;
    }

    // Node 2 goes down whole: its coordinator replica and its replica of
    // every shard — it is the preferred leader of a third of them.
    cluster.stop_node(2).await.expect("stop node 2");
    let stopped_at = tokio::time::Instant::now();
    for (payer, merchant, order) in pay_round() {
        // Each shard that lost its leader elects another within a few
        // election timeouts; until then the client is told to retry.
        let deadline = stopped_at + Duration::from_secs(10);
        assert!(pay_until(&client, payer, merchant, order, 100, deadline).await, "payment {order} with node 2 down");
        *expected.get_mut(&payer).expect("payer") -= 100;
        *expected.get_mut(&merchant).expect("merchant") += 100;
    }
    let failover = stopped_at.elapsed();
    // Once every shard has a leader again, nothing fails any more.
    for (payer, merchant, order) in pay_round() {
        create_order(&client, order, merchant, 100).await;
        let receipt = submit(&client, &format!("pay-{order}"), pay_ops(payer, merchant, order, 100)).await;
        assert!(receipt.outcome.is_committed(), "payment {order} after failover: {receipt:?}");
        *expected.get_mut(&payer).expect("payer") -= 100;
        *expected.get_mut(&merchant).expect("merchant") += 100;
    }

    // Node 2 comes back and catches up; every acknowledged payment is there.
    cluster.restart_node(2).await.expect("restart node 2");
    wait_quiet(&cluster, &client, Duration::from_secs(20)).await;
    let mut all = payers.clone();
    all.extend(&merchants);
    let actual = balances(&client, &all).await;
    for (account, view) in &actual {
        assert_eq!(view.held_minor, 0, "no hold left on {account}");
        assert_eq!(view.balance_minor, expected[account], "{account}: exactly the acknowledged payments");
    }
    assert_eq!(total(&actual), 12 * 10_000, "money conserved");
    eprintln!("every shard served again {failover:?} after node 2 stopped");
    drop(client);
    cluster.shutdown().await;
}
