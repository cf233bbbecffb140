//! The 2PC batch requests at a node's service: a `PrepareBatch` answers
//! every prepare by name and never waits for a lock (a prepare that would
//! is `Blocked`, reserves nothing, and goes again alone), a `DecideBatch`
//! lists what it applied, and a batch over the bound is refused whole.
//! One node on a `MemDisk`; the requests go straight to its service.

use paytx_node::{LinkFilter, NodeConfig, NodeCore, PeerEndpoint, ReplicaBook};
use paytx_protocol::messages::{AccountView, BatchVote, DecisionItem, PrepareItem, MAX_BATCH_ITEMS};
use paytx_protocol::{
    AccountId, BoxFuture, ChannelId, Currency, EntityKind, InvalidRequest, Money, NodeId, Operation, OrderId, Outcome,
    PeerRequest, PeerResponse, Request, RequestError, Response, ShardId, Transport, TransportError, TxnId, TxnRequest,
    Vote,
};
use paytx_storage::MemDisk;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

struct NoPeers;

impl Transport for NoPeers {
    fn call(&self, to: NodeId, _: PeerRequest, _: u64) -> BoxFuture<Result<PeerResponse, TransportError>> {
        Box::pin(async move { Err(TransportError::Unreachable { node: to, reason: "single-node test".into() }) })
    }
}

const SHARD: ShardId = ShardId { kind: EntityKind::Account, index: 0 };

async fn start() -> NodeCore {
    start_with(|_| {}).await
}

async fn start_with(tweak: impl FnOnce(&mut NodeConfig)) -> NodeCore {
    let addrs: BTreeMap<NodeId, SocketAddr> = [(1, "127.0.0.1:1".parse().expect("valid address"))].into();
    let mut config = NodeConfig::local(1, &addrs, "unused".into(), "a-secret-of-sixteen-bytes");
    tweak(&mut config);
    config.raft.heartbeat_interval_ms = 50;
    config.raft.election_timeout_min_ms = 150;
    config.raft.election_timeout_max_ms = 300;
    config.seed = Some(11);
    let disk: paytx_storage::SharedDisk = Arc::new(MemDisk::new());
    let endpoint = PeerEndpoint::new(ReplicaBook::open(disk.clone()).expect("the book opens"));
    NodeCore::start(&config, disk, Arc::new(NoPeers), LinkFilter::default(), endpoint).await.expect("the node starts")
}

fn cny(minor: i64) -> Money {
    Money::new(minor, Currency::CNY)
}

fn txn(seq: u64) -> TxnId {
    TxnId { term: 99, node: 1, seq }
}

/// Opens accounts 1 (500) and 2 (0), retrying until the node leads.
async fn open_accounts(core: &NodeCore) {
    let ops = vec![
        Operation::OpenAccount { account: AccountId(1), currency: Currency::CNY, initial_minor: 500 },
        Operation::OpenAccount { account: AccountId(2), currency: Currency::CNY, initial_minor: 0 },
    ];
    for _ in 0..100 {
        let request = Request::Submit(TxnRequest::new("open", ops.clone()));
        match core.service().handle_request(request, true).await {
            Response::Submitted(receipt) if receipt.outcome == Outcome::Committed => return,
            Response::Error(RequestError::NoLeader { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("opening the accounts: {other:?}"),
        }
    }
    panic!("no leader within 5 s");
}

async fn account(core: &NodeCore, id: u64) -> AccountView {
    match core.service().handle_request(Request::GetAccount(AccountId(id)), true).await {
        Response::Account(Some(view)) => view,
        other => panic!("account {id}: {other:?}"),
    }
}

fn debit(account: u64, minor: i64) -> Vec<Operation> {
    vec![Operation::Debit { account: AccountId(account), amount: cny(minor) }]
}

fn credit(account: u64, minor: i64) -> Vec<Operation> {
    vec![Operation::Credit { account: AccountId(account), amount: cny(minor) }]
}

/// The votes of a `Votes` answer, by transaction.
fn votes(response: PeerResponse) -> BTreeMap<TxnId, BatchVote> {
    votes_of(response, SHARD)
}

fn votes_of(response: PeerResponse, expected: ShardId) -> BTreeMap<TxnId, BatchVote> {
    match response {
        PeerResponse::Votes { shard, votes } => {
            assert_eq!(shard, expected, "the answer names its shard");
            votes.into_iter().collect()
        }
        other => panic!("expected votes, got {other:?}"),
    }
}

#[actix_rt::test]
async fn a_prepare_batch_answers_each_by_name_and_a_blocked_one_reserves_nothing() {
    let core = start().await;
    open_accounts(&core).await;
    let service = core.service();

    // A holds 400 of account 1's 500 (a lone prepare).
    let a = service.clone().handle_peer(PeerRequest::Prepare { txn: txn(1), shard: SHARD, ops: debit(1, 400) }).await;
    assert!(matches!(a, PeerResponse::Vote { vote: Vote::Yes, .. }), "{a:?}");

    // In one batch: B needs what A holds (it would wait for A's decision),
    // C credits account 2 (free to go).
    let batch = PeerRequest::PrepareBatch {
        shard: SHARD,
        prepares: vec![
            PrepareItem { txn: txn(2), ops: debit(1, 400) },
            PrepareItem { txn: txn(3), ops: credit(2, 10) },
        ],
    };
    let answers = votes(service.clone().handle_peer(batch).await);
    assert_eq!(answers.len(), 2);
    assert_eq!(answers.get(&txn(2)), Some(&BatchVote::Blocked), "B does not wait inside the batch");
    assert_eq!(answers.get(&txn(3)), Some(&BatchVote::Voted(Vote::Yes)), "C is not held back by B");
    // B reserved nothing: only A's hold is on account 1.
    let one = account(&core, 1).await;
    assert_eq!((one.balance_minor, one.held_minor), (500, 400));

    // A aborts and C commits, in one decision batch.
    let decide = PeerRequest::DecideBatch {
        shard: SHARD,
        decisions: vec![
            DecisionItem { txn: txn(1), commit: false, at_ms: 0 },
            DecisionItem { txn: txn(3), commit: true, at_ms: 0 },
        ],
    };
    match service.clone().handle_peer(decide).await {
        PeerResponse::DecisionsApplied { shard, applied } => {
            assert_eq!(shard, SHARD);
            assert_eq!(applied, vec![txn(1), txn(3)]);
        }
        other => panic!("expected the decisions applied, got {other:?}"),
    }
    let one = account(&core, 1).await;
    assert_eq!((one.balance_minor, one.held_minor), (500, 0), "A's hold is released");
    assert_eq!(account(&core, 2).await.balance_minor, 10, "C committed");

    // Sent again (alone or in a batch), B now votes YES.
    let again = PeerRequest::PrepareBatch {
        shard: SHARD,
        prepares: vec![PrepareItem { txn: txn(2), ops: debit(1, 400) }, PrepareItem { txn: txn(4), ops: credit(2, 1) }],
    };
    let answers = votes(service.clone().handle_peer(again).await);
    assert_eq!(answers.get(&txn(2)), Some(&BatchVote::Voted(Vote::Yes)));
    assert_eq!(account(&core, 1).await.held_minor, 400);
    let totals = service.metrics().batches();
    assert_eq!((totals.prepare_batches, totals.prepares, totals.blocked), (2, 4, 1));
    assert_eq!((totals.decide_batches, totals.decisions), (1, 2));
    core.stop().await;
}

#[actix_rt::test]
async fn a_batch_over_the_bound_or_for_a_shard_not_here_is_refused_whole_and_changes_nothing() {
    let core = start().await;
    open_accounts(&core).await;
    let service = core.service();
    let prepares: Vec<PrepareItem> =
        (0..MAX_BATCH_ITEMS as u64 + 1).map(|seq| PrepareItem { txn: txn(100 + seq), ops: debit(1, 1) }).collect();
    match service.clone().handle_peer(PeerRequest::PrepareBatch { shard: SHARD, prepares }).await {
        PeerResponse::Error(RequestError::Invalid(InvalidRequest::BatchTooLong { items, max })) => {
            assert_eq!((items, max), (MAX_BATCH_ITEMS + 1, MAX_BATCH_ITEMS));
        }
        other => panic!("expected BatchTooLong, got {other:?}"),
    }
    let decisions: Vec<DecisionItem> =
        (0..MAX_BATCH_ITEMS as u64 + 1).map(|seq| DecisionItem { txn: txn(seq), commit: true, at_ms: 0 }).collect();
    let refused = service.clone().handle_peer(PeerRequest::DecideBatch { shard: SHARD, decisions }).await;
    assert!(matches!(refused, PeerResponse::Error(RequestError::Invalid(InvalidRequest::BatchTooLong { .. }))));
    let elsewhere = ShardId { kind: EntityKind::Account, index: 7 };
    let prepares = vec![PrepareItem { txn: txn(1), ops: debit(1, 1) }];
    let missing = service.clone().handle_peer(PeerRequest::PrepareBatch { shard: elsewhere, prepares }).await;
    assert_eq!(missing, PeerResponse::Error(RequestError::ShardUnavailable { shard: elsewhere }));
    let one = account(&core, 1).await;
    assert_eq!((one.balance_minor, one.held_minor), (500, 0), "nothing was reserved");
    assert_eq!(service.metrics().batches().prepare_batches, 0, "refused batches were not run");
    core.stop().await;
}

/// A charge blocked inside a batch was authorized by the channel before it
/// met the lock; sent again alone, it is not authorized a second time (no
/// second wait for the channel, no second decline draw).
#[actix_rt::test]
async fn a_blocked_charge_is_not_authorized_again_when_sent_alone() {
    const LATENCY_MS: u64 = 1_500;
    let channels = ShardId { kind: EntityKind::Channel, index: 0 };
    let core = start_with(|config| {
        for channel in &mut config.channels {
            channel.authorize_latency_ms = LATENCY_MS;
        }
    })
    .await;
    open_accounts(&core).await; // waits for the groups to lead
    let service = core.service();
    let charge =
        |order: u64| vec![Operation::Charge { channel: ChannelId(1), order: OrderId(order), amount: cny(100) }];

    // A charges order 7 (prepared, holding the charge's lock).
    let started = std::time::Instant::now();
    let a = service.clone().handle_peer(PeerRequest::Prepare { txn: txn(1), shard: channels, ops: charge(7) }).await;
    assert!(matches!(a, PeerResponse::Vote { vote: Vote::Yes, .. }), "{a:?}");
    assert!(started.elapsed() >= Duration::from_millis(LATENCY_MS), "a first authorization waits for the channel");

    // B charges order 7 too, in a batch: authorized, then blocked by A.
    let batch =
        PeerRequest::PrepareBatch { shard: channels, prepares: vec![PrepareItem { txn: txn(2), ops: charge(7) }] };
    let answers = votes_of(service.clone().handle_peer(batch).await, channels);
    assert_eq!(answers.get(&txn(2)), Some(&BatchVote::Blocked));

    // A aborts; B, sent again alone, is prepared on its first authorization.
    let decide = PeerRequest::DecideBatch {
        shard: channels,
        decisions: vec![DecisionItem { txn: txn(1), commit: false, at_ms: 0 }],
    };
    assert!(matches!(service.clone().handle_peer(decide).await, PeerResponse::DecisionsApplied { .. }));
    let started = std::time::Instant::now();
    let b = service.clone().handle_peer(PeerRequest::Prepare { txn: txn(2), shard: channels, ops: charge(7) }).await;
    assert!(matches!(b, PeerResponse::Vote { vote: Vote::Yes, .. }), "{b:?}");
    // Authorizing again would have slept LATENCY_MS first.
    assert!(
        started.elapsed() < Duration::from_millis(LATENCY_MS),
        "B was authorized a second time: {:?}",
        started.elapsed()
    );

    // The memory is taken once: another transaction is authorized as usual.
    let started = std::time::Instant::now();
    let c = service.clone().handle_peer(PeerRequest::Prepare { txn: txn(3), shard: channels, ops: charge(8) }).await;
    assert!(matches!(c, PeerResponse::Vote { vote: Vote::Yes, .. }), "{c:?}");
    assert!(started.elapsed() >= Duration::from_millis(LATENCY_MS));
    core.stop().await;
}
