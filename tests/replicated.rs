//! Replicated shards (issue 10): every participant shard is a Raft group of
//! three voters, so a whole node going down stops no payment and loses
//! nothing acknowledged. Real TCP, real sled, real openraft.

mod common;

use common::*;
use paytx::protocol::{AbortReason, AccountId, Operation, OrderId, Outcome, TxnRequest};
use paytx::ClusterOptions;
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::Duration;

fn replicated_options() -> ClusterOptions {
    ClusterOptions { shard_replicas: 3, ..test_options() }
}

/// Pays `order` from `payer` to `merchant`, creating the order first; each
/// step retried through elections and hand-overs until `deadline`. `true`
/// when the payment committed.
async fn pay_until(
    client: &paytx::Client,
    payer: AccountId,
    merchant: AccountId,
    order: u64,
    amount_minor: i64,
    deadline: tokio::time::Instant,
) -> bool {
    let create = vec![Operation::CreateOrder { order: OrderId(order), merchant, amount: cny(amount_minor) }];
    submit_until(client, &format!("create-{order}"), create, deadline).await
        && submit_until(client, &format!("pay-{order}"), pay_ops(payer, merchant, order, amount_minor), deadline).await
}

/// Submits `ops` until they commit or `deadline` passes. A shard still
/// electing when the prepare deadline passed aborts the transaction whole
/// (nothing applied), so it is submitted again under a fresh key; so is a
/// payment refused with `Conflict` on its own order: its order's creation
/// was committed but its decision had not reached the orders shard within
/// `lock_wait_ms` (a coordinator failing over re-drives it), which the
/// prepare's lock wait bounds by design. A transient error (the client is
/// told to retry with the same key) is retried with the same key. Any
/// other outcome fails the test.
async fn submit_until(client: &paytx::Client, key: &str, ops: Vec<Operation>, deadline: tokio::time::Instant) -> bool {
    let mut attempt = 0;
    loop {
        let request = TxnRequest::new(format!("{key}-{attempt}"), ops.clone());
        match client.submit(request).await {
            Ok(receipt) if receipt.outcome.is_committed() => return true,
            Ok(receipt)
                if matches!(receipt.outcome, Outcome::Aborted(AbortReason::PrepareTimeout { .. }))
                    && tokio::time::Instant::now() < deadline =>
            {
                attempt += 1;
            }
            Ok(receipt)
                if matches!(&receipt.outcome, Outcome::Aborted(AbortReason::Conflict { entity }) if entity.starts_with("order-"))
                    && key.starts_with("pay-")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                attempt += 1;
            }
            Ok(receipt) => panic!("{key} aborted: {:?}", receipt.outcome),
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{key} failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_node_down_stops_no_payment_and_loses_nothing() {
    // Three shards of each kind: twelve shard groups, all on every node,
    // each node the preferred one of four.
    let options = ClusterOptions { shards_per_kind: NonZeroUsize::new(3), ..replicated_options() };
    node_2_down_and_back(options, 12).await;
}

/// The default layout with three replicas on three nodes
/// (`ShardMap::for_replicas`): one shard of each kind, four shard groups of
/// three voters, their leaders staggered over the nodes. Node 2 is the
/// preferred leader of the accounts and records shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shard_per_kind_survives_the_loss_of_its_accounts_leader() {
    node_2_down_and_back(replicated_options(), 4).await;
}

/// Node 2 goes down whole while every payer pays, and comes back: every
/// payment commits (the first ones after the stop retried while a group
/// elects), and every balance is exactly the acknowledged payments.
/// `shard_groups`: the shard replicas every node holds.
async fn node_2_down_and_back(options: ClusterOptions, shard_groups: usize) {
    let (cluster, client) = start(options).await;
    let status = client.node_status_of(cluster.addr(1).expect("node 1")).await.expect("status of node 1");
    assert_eq!(status.shards.len(), shard_groups, "shard replicas on node 1: {:?}", status.shards);
    // Twelve payers: every accounts shard holds some.
    let (payers, merchants, mut expected) = open_payers_and_merchants(&client).await;
    let mut next_order = 0u64;

    // Everything commits with all three nodes up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    pay_round(&client, &payers, &merchants, &mut next_order, &mut expected, deadline, "all nodes up").await;

    // Node 2 goes down whole: its coordinator replica and its replica of
    // every shard, of some of which it is the preferred leader. Each shard
    // that lost its leader elects another within a few election timeouts;
    // until then the client is told to retry.
    cluster.stop_node(2).await.expect("stop node 2");
    let stopped_at = tokio::time::Instant::now();
    let deadline = stopped_at + Duration::from_secs(10);
    pay_round(&client, &payers, &merchants, &mut next_order, &mut expected, deadline, "node 2 down").await;
    let failover = stopped_at.elapsed();
    // Once every shard has a leader again, nothing fails any more.
    for (i, payer) in payers.iter().enumerate() {
        next_order += 1;
        let (merchant, order) = (merchants[i % merchants.len()], next_order);
        create_order(&client, order, merchant, 100).await;
        let receipt = submit(&client, &format!("pay-{order}"), pay_ops(*payer, merchant, order, 100)).await;
        assert!(receipt.outcome.is_committed(), "payment {order} after failover: {receipt:?}");
        *expected.get_mut(payer).expect("payer") -= 100;
        *expected.get_mut(&merchant).expect("merchant") += 100;
    }

    // With node 2 down its groups went to nodes 1 and 3 by election,
    // possibly all to one; the leaders hand groups over until neither
    // leads two more than the other (`paytx_raft::handover::spread_target`).
    let node_1 = cluster.addr(1).expect("node 1");
    let spread_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let spread = loop {
        pay_round(&client, &payers, &merchants, &mut next_order, &mut expected, spread_deadline, "spreading").await;
        let status = client.node_status_of(node_1).await.expect("status of node 1");
        let mut led: BTreeMap<u64, usize> = BTreeMap::from([(1, 0), (3, 0)]);
        for leader in status.shards.iter().map(|s| s.leader).chain(std::iter::once(status.leader)).flatten() {
            *led.entry(leader).or_default() += 1;
        }
        assert!(!led.contains_key(&2) || led[&2] == 0, "node 2 is down and leads nothing: {led:?}");
        if led.values().sum::<usize>() == shard_groups + 1 && led[&1].abs_diff(led[&3]) <= 1 {
            break led;
        }
        assert!(tokio::time::Instant::now() < spread_deadline, "leaderships spread over nodes 1 and 3: {led:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("with node 2 down, groups led per node: {spread:?}");

    // Node 2 comes back and catches up; once it has kept up for `[raft]
    // leader_settle_ms`, the groups it is the preferred node of are handed
    // back to it one at a time (`paytx_raft::handover`), while payments go
    // on committing.
    cluster.restart_node(2).await.expect("restart node 2");
    let restarted_at = tokio::time::Instant::now();
    let shard_map = cluster.config(2).expect("node 2's configuration").shards.clone();
    let node_2 = cluster.addr(2).expect("node 2");
    let deadline = restarted_at + Duration::from_secs(40);
    let led_back = loop {
        pay_round(&client, &payers, &merchants, &mut next_order, &mut expected, deadline, "node 2 back").await;
        let status = client.node_status_of(node_2).await.expect("status of node 2");
        let preferred: Vec<_> = status
            .shards
            .iter()
            .filter(|s| shard_map.node_of(s.shard) == Some(2))
            .map(|s| (s.shard, s.leader))
            .collect();
        assert!(!preferred.is_empty(), "node 2 is the preferred node of some shards");
        if preferred.iter().all(|(_, leader)| *leader == Some(2)) {
            break restarted_at.elapsed();
        }
        assert!(tokio::time::Instant::now() < deadline, "node 2 leads its preferred shards again: {preferred:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Every acknowledged payment is there.
    wait_quiet(&cluster, &client, Duration::from_secs(20)).await;
    assert_settled_exactly(&client, &expected).await;
    eprintln!("every shard served again {failover:?} after node 2 stopped; its leaderships back {led_back:?} after it restarted");
    drop(client);
    cluster.shutdown().await;
}

/// Every account of `expected` holds exactly its expected balance and no
/// hold, and the total is the 12 × 10,000 the payers were opened with.
async fn assert_settled_exactly(client: &paytx::Client, expected: &BTreeMap<AccountId, i64>) {
    let all: Vec<AccountId> = expected.keys().copied().collect();
    let actual = balances(client, &all).await;
    for (account, view) in &actual {
        assert_eq!(view.held_minor, 0, "no hold left on {account}");
        assert_eq!(view.balance_minor, expected[account], "{account}: exactly the acknowledged payments");
    }
    assert_eq!(total(&actual), 12 * 10_000, "money conserved");
}

/// Twelve payers with 10,000 each (every accounts shard holds some) and
/// three merchants with nothing, and the balances expected of them.
async fn open_payers_and_merchants(
    client: &paytx::Client,
) -> (Vec<AccountId>, Vec<AccountId>, BTreeMap<AccountId, i64>) {
    let payers = open(client, "open-payers", 1..=12, 10_000).await;
    let merchants = open(client, "open-merchants", 101..=103, 0).await;
    let mut expected: BTreeMap<AccountId, i64> = payers.iter().map(|a| (*a, 10_000)).collect();
    expected.extend(merchants.iter().map(|m| (*m, 0)));
    (payers, merchants, expected)
}

/// One payment of 100 from every payer (to the merchants in turn), each
/// retried through elections until it commits, all by `deadline`.
async fn pay_round(
    client: &paytx::Client,
    payers: &[AccountId],
    merchants: &[AccountId],
    next_order: &mut u64,
    expected: &mut BTreeMap<AccountId, i64>,
    deadline: tokio::time::Instant,
    label: &str,
) {
    for (i, payer) in payers.iter().enumerate() {
        *next_order += 1;
        let merchant = merchants[i % merchants.len()];
        assert!(pay_until(client, *payer, merchant, *next_order, 100, deadline).await, "{label}: {next_order}");
        *expected.get_mut(payer).expect("payer") -= 100;
        *expected.get_mut(&merchant).expect("merchant") += 100;
    }
}

/// Polls `node`'s status until `done` holds for it (bounded by `timeout`).
async fn wait_for_status(
    cluster: &paytx::Cluster,
    client: &paytx::Client,
    node: u64,
    timeout: Duration,
    what: &str,
    done: impl Fn(&paytx::protocol::messages::NodeStatusView) -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let addr = cluster.addr(node).expect("the node has an address");
    loop {
        let status = client.node_status_of(addr).await.ok();
        if status.as_ref().is_some_and(&done) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {node}: {what} not reached in {timeout:?}: {status:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_rejoins_under_a_new_replica_id_and_carries_a_quorum() {
    use paytx::protocol::replica::replica_id;
    let (cluster, client) = start(replicated_options()).await;
    let (payers, merchants, mut expected) = open_payers_and_merchants(&client).await;
    let mut next_order = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    pay_round(&client, &payers, &merchants, &mut next_order, &mut expected, deadline, "before the wipe").await;

    // Node 2's disk is lost: stopped, its data directory deleted, started
    // again. Its peers saw incarnation 0, so it comes back as incarnation 1
    // and joins every group under replica id (2, 1).
    cluster.rebuild_node(2).await.expect("rebuild node 2");
    let rebuilt = replica_id(2, 1);
    let swapped = |status: &paytx::protocol::messages::NodeStatusView| {
        !status.shards.is_empty()
            && status.shards.iter().all(|s| s.voters.contains(&rebuilt) && !s.voters.contains(&replica_id(2, 0)))
    };
    wait_for_status(&cluster, &client, 2, Duration::from_secs(60), "incarnation 1, a voter of every shard", |s| {
        s.local.incarnation == 1 && swapped(s)
    })
    .await;
    // The old identity is gone from every group as the other nodes see it.
    wait_for_status(&cluster, &client, 1, Duration::from_secs(30), "node 2's old replica id removed", swapped).await;

    // With node 3 down, every group's quorum needs the rebuilt replica:
    // payments commit only if it is a caught-up voter.
    cluster.stop_node(3).await.expect("stop node 3");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    pay_round(&client, &payers, &merchants, &mut next_order, &mut expected, deadline, "node 3 down, node 2 rebuilt")
        .await;
    let mut all = payers.clone();
    all.extend(&merchants);
    let actual = balances(&client, &all).await;
    for (account, view) in &actual {
        assert_eq!(view.balance_minor, expected[account], "{account}: every acknowledged payment, none lost");
    }

    cluster.restart_node(3).await.expect("restart node 3");
    wait_quiet(&cluster, &client, Duration::from_secs(30)).await;
    assert_settled_exactly(&client, &expected).await;
    drop(client);
    cluster.shutdown().await;
}
