//! Fail-stop through the `Disk` seam: a single-node cluster on a `MemDisk`
//! commits payments, then its fsyncs start failing. The node must stop
//! itself, answer nothing but `ShuttingDown` from then on, and must not have
//! acknowledged a commit for anything the failed fsync should have made
//! durable: after a crash (unsynced writes lost) and a restart, the state is
//! exactly what clients were told.

use paytx_node::{FixedFreeSpace, LinkFilter, NodeConfig, NodeCore, PeerEndpoint, ReplicaBook};
use paytx_protocol::messages::AccountView;
use paytx_protocol::{
    AbortReason, AccountId, BoxFuture, Currency, Money, NodeId, Operation, Outcome, PeerRequest, PeerResponse, Request,
    RequestError, Response, Transport, TransportError, TxnRequest,
};
use paytx_storage::MemDisk;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A one-node cluster never calls out; anything that tries gets `Unreachable`.
struct NoPeers;

impl Transport for NoPeers {
    fn call(&self, to: NodeId, _: PeerRequest, _: u64) -> BoxFuture<Result<PeerResponse, TransportError>> {
        Box::pin(async move { Err(TransportError::Unreachable { node: to, reason: "single-node test".into() }) })
    }
}

fn config() -> NodeConfig {
    let addrs: BTreeMap<NodeId, SocketAddr> = [(1, "127.0.0.1:1".parse().expect("valid address"))].into();
    let mut config = NodeConfig::local(1, &addrs, "unused".into(), "a-secret-of-sixteen-bytes");
    config.raft.heartbeat_interval_ms = 50;
    config.raft.election_timeout_min_ms = 150;
    config.raft.election_timeout_max_ms = 300;
    config.limits.request_timeout_ms = 3_000;
    config.seed = Some(5);
    config
}

async fn start(disk: &MemDisk) -> NodeCore {
    let disk: paytx_storage::SharedDisk = Arc::new(disk.clone());
    let endpoint = PeerEndpoint::new(ReplicaBook::open(disk.clone()).expect("the book opens"));
    NodeCore::start(&config(), disk, Arc::new(NoPeers), LinkFilter::default(), endpoint).await.expect("the node starts")
}

/// Submits until the node has elected itself (bounded).
async fn submit(core: &NodeCore, key: &str, ops: Vec<Operation>) -> Response {
    for _ in 0..100 {
        let response = core.service().handle_request(Request::Submit(TxnRequest::new(key, ops.clone())), true).await;
        match response {
            Response::Error(RequestError::NoLeader { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => return other,
        }
    }
    panic!("no leader within 5 s");
}

async fn balance(core: &NodeCore, id: u64) -> Option<AccountView> {
    match core.service().handle_request(Request::GetAccount(AccountId(id)), true).await {
        Response::Account(view) => view,
        other => panic!("reading account {id}: {other:?}"),
    }
}

fn cny(minor: i64) -> Money {
    Money::new(minor, Currency::CNY)
}

fn transfer(minor: i64) -> Vec<Operation> {
    vec![
        Operation::Debit { account: AccountId(1), amount: cny(minor) },
        Operation::Credit { account: AccountId(2), amount: cny(minor) },
    ]
}

fn committed(response: &Response) -> bool {
    matches!(response, Response::Submitted(receipt) if receipt.outcome == Outcome::Committed)
}

#[actix_rt::test]
async fn an_fsync_error_stops_the_whole_node_and_nothing_unsynced_was_acknowledged() {
    let disk = MemDisk::new();
    let core = start(&disk).await;
    let open = vec![
        Operation::OpenAccount { account: AccountId(1), currency: Currency::CNY, initial_minor: 1_000 },
        Operation::OpenAccount { account: AccountId(2), currency: Currency::CNY, initial_minor: 0 },
    ];
    assert!(committed(&submit(&core, "open", open).await));
    let mut acked_paid = 0;
    for i in 0..5 {
        let response = submit(&core, &format!("pay-{i}"), transfer(10)).await;
        assert!(committed(&response), "{response:?}");
        acked_paid += 10;
    }

    let latch = core.fail_stop();
    assert_eq!(latch.reason(), None);
    disk.fail_syncs(true);
    let mut failed_acks = 0;
    for i in 0..3 {
        let response = submit(&core, &format!("after-failure-{i}"), transfer(7)).await;
        if committed(&response) {
            failed_acks += 1;
        }
    }
    assert_eq!(failed_acks, 0, "a commit was acknowledged after fsyncs started failing");
    let reason = tokio::time::timeout(Duration::from_secs(5), latch.tripped()).await.expect("the node stops itself");
    assert!(reason.contains("fsync"), "the reason names the failure: {reason}");
    // Stopped: every request now gets a clean ShuttingDown.
    let after = core.service().handle_request(Request::GetAccount(AccountId(1)), true).await;
    assert_eq!(after, Response::Error(RequestError::ShuttingDown));
    core.stop().await;

    // Power loss, repair, restart: exactly the acknowledged state.
    disk.crash();
    disk.fail_syncs(false);
    let core = start(&disk).await;
    // The first transaction waits for leadership; reads work at once.
    assert!(committed(&submit(&core, "after-restart", transfer(1)).await));
    assert_eq!(balance(&core, 1).await.map(|v| v.balance_minor), Some(1_000 - acked_paid - 1));
    assert_eq!(balance(&core, 2).await.map(|v| v.balance_minor), Some(acked_paid + 1));
    core.stop().await;
}

#[actix_rt::test]
async fn a_full_disk_refuses_new_transactions_with_a_typed_error_and_recovers() {
    let disk = MemDisk::new();
    let core = start(&disk).await;
    let free = FixedFreeSpace::new(u64::MAX);
    core.set_free_space(Arc::new(free.clone()));
    let open = vec![
        Operation::OpenAccount { account: AccountId(1), currency: Currency::CNY, initial_minor: 500 },
        Operation::OpenAccount { account: AccountId(2), currency: Currency::CNY, initial_minor: 0 },
    ];
    assert!(committed(&submit(&core, "open", open).await));

    let min = config().limits.min_free_disk_bytes;
    free.set(min - 1);
    for i in 0..3 {
        match submit(&core, &format!("full-{i}"), transfer(5)).await {
            Response::Error(RequestError::DiskFull { node: 1, free_bytes, min_free_bytes }) => {
                assert_eq!((free_bytes, min_free_bytes), (min - 1, min));
            }
            other => panic!("expected DiskFull, got {other:?}"),
        }
    }
    // A prepare for a shard here is refused too (vote NO, nothing reserved).
    let shard = paytx_protocol::ShardId { kind: paytx_protocol::EntityKind::Account, index: 0 };
    let txn = paytx_protocol::TxnId { term: 99, node: 1, seq: 1 };
    let vote = core.service().handle_peer(PeerRequest::Prepare { txn, shard, ops: transfer(5) }).await;
    assert!(
        matches!(vote, PeerResponse::Vote { vote: paytx_protocol::Vote::No(AbortReason::DiskFull { .. }), .. }),
        "{vote:?}"
    );
    // Nothing changed; reads still work.
    let one = balance(&core, 1).await.expect("account 1 exists");
    assert_eq!((one.balance_minor, one.held_minor), (500, 0));

    // Space returns: service resumes, the same keys now commit.
    free.set(min);
    assert!(committed(&submit(&core, "full-0", transfer(5)).await));
    assert_eq!(balance(&core, 2).await.map(|v| v.balance_minor), Some(5));
    core.stop().await;
}
