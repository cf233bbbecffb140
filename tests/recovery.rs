//! Crash recovery with real sled on disk: a participant node closed and
//! reopened with prepared transactions, a whole-cluster restart, and a
//! follower catching up by snapshot.

mod common;

use common::*;
use paytx::protocol::error::OrderStatus;
use paytx::protocol::messages::RaftGroup;
use paytx::protocol::{AccountId, EntityKey, IdempotencyKey, NodeId, OrderId, PeerRequest, TxnRequest};
use paytx::{Cluster, ClusterOptions};
use std::time::Duration;

/// The node owning `account`'s shard.
fn owner(cluster: &Cluster, account: AccountId) -> NodeId {
    let shards = &cluster.config(1).expect("node 1").shards;
    shards.node_of(shards.shard_of(EntityKey::Account(account))).expect("mapped")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_restarted_with_prepared_transactions_gets_its_holds_back_and_resolves_them() {
    let mut options = test_options();
    // The victim must not resolve its in-doubt transactions through its own
    // replica before the test has looked at them (reads wait up to half the
    // prepare timeout for transactions prepared moments before).
    options.coordinator.in_doubt_after_ms = 5_000;
    let (cluster, client) = start(options).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    // A payer whose shard lives on a node that is not the leader.
    let payer = (1..100).map(AccountId).find(|a| owner(&cluster, *a) != leader).expect("some account off the leader");
    let victim = owner(&cluster, payer);
    let merchant = AccountId(1_000);
    open(&client, "open-payer", std::iter::once(payer.0), 10_000).await;
    open(&client, "open-merchant", std::iter::once(merchant.0), 0).await;
    create_order(&client, 1, merchant, 300).await;
    // Clients hear a commit before the participants do: let the setup's
    // decisions land before the filter below holds back the victim's.
    wait_quiet(&cluster, &client, Duration::from_secs(20)).await;

    // Decisions to the victim are lost, and it cannot ask for them either:
    // its prepared transactions stay in doubt.
    cluster.link_filter().set(move |from, to, message| match message {
        PeerRequest::Decide { .. } | PeerRequest::DecideBatch { .. } => to != victim,
        PeerRequest::QueryDecision { .. } => from != victim,
        _ => true,
    });
    let paid = submit(&client, "pay-1", pay_ops(payer, merchant, 1, 300)).await;
    assert!(paid.outcome.is_committed(), "the decision is durable before the participants hear it: {paid:?}");
    // The same order again: the order shard votes NO, the payer shard holds.
    let twice = submit(&client, "pay-1-again", pay_ops(payer, merchant, 1, 300)).await;
    assert!(!twice.outcome.is_committed(), "an order is paid once: {twice:?}");

    let before = client.account(payer).await.expect("read").expect("exists");
    assert_eq!(before.balance_minor, 10_000, "nothing applied on the payer's shard yet");
    assert!(before.held_minor >= 300, "the committed payment is held: {before:?}");

    // Close the node (sled dropped) and open it again.
    cluster.stop_node(victim).await.expect("stop");
    cluster.restart_node(victim).await.expect("restart");
    let after = client.account(payer).await.expect("read").expect("exists");
    assert_eq!(after, before, "holds came back from the journal, balance untouched");
    let status = client.node_status_of(cluster.addr(victim).expect("addr")).await.expect("status");
    let in_doubt: u64 = status.shards.iter().map(|s| s.in_doubt).sum();
    assert!(in_doubt >= 1, "the restarted shard knows what it is in doubt about: {status:?}");

    // Let the decisions through: the commit applies, the abort releases.
    cluster.link_filter().clear();
    wait_quiet(&cluster, &client, Duration::from_secs(20)).await;
    let payer_view = client.account(payer).await.expect("read").expect("exists");
    assert_eq!((payer_view.balance_minor, payer_view.held_minor), (9_700, 0));
    let merchant_view = client.account(merchant).await.expect("read").expect("exists");
    assert_eq!(merchant_view.balance_minor, 300);
    let order = client.order(OrderId(1)).await.expect("read").expect("exists");
    assert_eq!(order.status, OrderStatus::Paid);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restart_keeps_every_balance_order_and_outcome() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = ClusterOptions { data_dir: Some(dir.path().to_path_buf()), ..test_options() };
    let (cluster, client) = start(options.clone()).await;
    let accounts = open(&client, "open", 1..=10, 5_000).await;
    let merchant = accounts[9];
    for order in 1..=20u64 {
        create_order(&client, order, merchant, 100 + order as i64).await;
    }
    let mut outcomes = Vec::new();
    for order in 1..=20u64 {
        let payer = accounts[(order % 9) as usize];
        let request = TxnRequest::new(format!("pay-{order}"), pay_ops(payer, merchant, order, 100 + order as i64));
        outcomes.push((request.clone(), client.submit(request).await.expect("submit")));
    }
    wait_quiet(&cluster, &client, Duration::from_secs(20)).await;
    let balances_before = balances(&client, &accounts).await;
    let orders_before = orders(&client, 1..=20).await;
    drop(client);
    cluster.shutdown().await;

    let (cluster, client) = start(options).await;
    assert_eq!(balances(&client, &accounts).await, balances_before, "every balance identical");
    assert_eq!(orders(&client, 1..=20).await, orders_before, "every order identical");
    for (request, receipt) in outcomes {
        let replay = client.submit(request).await.expect("resubmit");
        assert_eq!((replay.txn, &replay.outcome), (receipt.txn, &receipt.outcome), "outcomes survive the restart");
        assert!(replay.replayed);
    }
    assert_eq!(balances(&client, &accounts).await, balances_before, "replays applied nothing");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_fell_behind_catches_up_by_snapshot() {
    let mut options = test_options();
    options.raft.snapshot_every_entries = 60;
    options.raft.keep_entries_after_snapshot = 5;
    let (cluster, client) = start(options).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let accounts = open(&client, "open", 1..=4, 1_000_000).await;
    let lagging = cluster.node_ids().into_iter().find(|n| *n != leader).expect("a follower");
    let lagging_addr = cluster.addr(lagging).expect("addr");

    // Cut the follower's coordinator Raft traffic (its shard replicas
    // keep working).
    cluster.link_filter().set(move |from, to, message| {
        !matches!(message, PeerRequest::Raft { group: RaftGroup::Coordinator, .. })
            || (from != lagging && to != lagging)
    });
    let snapshot_before = client.node_status_of(lagging_addr).await.expect("status").snapshot_index;
    for i in 0..80u64 {
        let (a, b) = (accounts[(i % 4) as usize], accounts[((i + 1) % 4) as usize]);
        let ops = vec![
            paytx::protocol::Operation::Debit { account: a, amount: cny(1) },
            paytx::protocol::Operation::Credit { account: b, amount: cny(1) },
        ];
        let receipt = submit(&client, &format!("move-{i}"), ops).await;
        assert!(receipt.outcome.is_committed());
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let leader_status = client.node_status_of(cluster.addr(leader).expect("addr")).await.expect("status");
    let leader_snapshot = leader_status.snapshot_index.expect("the leader built a snapshot");
    assert!(leader_snapshot > snapshot_before.unwrap_or(0));

    cluster.link_filter().clear();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = client.node_status_of(lagging_addr).await.expect("status");
        if status.snapshot_index.unwrap_or(0) >= leader_snapshot
            && status.last_applied_index >= leader_status.last_applied_index
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the follower did not catch up: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The caught-up replica answers from the installed table.
    wait_quiet(&cluster, &client, Duration::from_secs(20)).await;
    let status =
        client.txn_status(IdempotencyKey::new("move-0")).await.expect("status").into_known().expect("known key");
    assert!(matches!(status.state, paytx::protocol::messages::TxnState::Decided(ref o) if o.is_committed()));
    cluster.shutdown().await;
}

/// A follower cut off while large entries pile up must catch up in
/// AppendEntries that fit in a frame: an oversized one reaches openraft as
/// `PayloadTooLarge` (it sends fewer entries), never as a network error it
/// would retry with the same payload forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lags_across_large_entries_catches_up_in_frames_that_fit() {
    use paytx::protocol::ops::MAX_RECORD_VALUE_BYTES;
    use paytx::protocol::{Operation, RecordExpect, RecordKey};
    let mut options = test_options();
    // 30 entries of 8 KiB wait for the follower: nearly four such frames.
    options.limits.max_frame_bytes = 64 * 1024;
    let (cluster, client) = start(options).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let lagging = cluster.node_ids().into_iter().find(|n| *n != leader).expect("a follower");
    let lagging_addr = cluster.addr(lagging).expect("addr");
    cluster.link_filter().set(move |from, to, message| {
        !matches!(message, PeerRequest::Raft { group: RaftGroup::Coordinator, .. })
            || (from != lagging && to != lagging)
    });
    for i in 0..30u8 {
        let ops = vec![Operation::PutRecord {
            key: RecordKey::new(9, &[i]),
            value: Some(vec![i; MAX_RECORD_VALUE_BYTES]),
            expect: RecordExpect::Any,
        }];
        let receipt = submit(&client, &format!("large-{i}"), ops).await;
        assert!(receipt.outcome.is_committed(), "{receipt:?}");
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let leader_applied = client.node_status_of(cluster.addr(leader).expect("addr")).await.expect("status");
    let behind = client.node_status_of(lagging_addr).await.expect("status").last_applied_index;
    assert!(behind < leader_applied.last_applied_index, "the follower is behind: {behind:?}");

    cluster.link_filter().clear();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = client.node_status_of(lagging_addr).await.expect("status");
        if status.last_applied_index >= leader_applied.last_applied_index {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the follower did not catch up: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.shutdown().await;
}
