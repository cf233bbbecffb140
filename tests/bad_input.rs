//! Bad input against a real 3-node cluster over real TCP: malformed frames,
//! invalid requests, well-formed transactions that must abort with a typed
//! reason, replays and idempotency conflicts, and a crowd of idle hostile
//! connections. Whatever a peer sends, a node answers with a typed error (or
//! just closes, when nobody is left to tell), never panics, keeps serving
//! everyone else, and changes nothing it was not asked to change.

mod common;

use common::*;
use paytx::protocol::error::OrderStatus;
use paytx::protocol::frame::{encode_frame, read_frame, FrameError, DEFAULT_MAX_FRAME_BYTES, FRAME_VERSION};
use paytx::protocol::messages::{AccountView, ChargeView, KeyStatus, OrderView, TxnState};
use paytx::protocol::txn::MAX_OPS_PER_TXN;
use paytx::protocol::{
    AbortReason, AccountId, ChannelId, Currency, Envelope, IdempotencyKey, InvalidRequest, Message, Money, Operation,
    OrderId, Outcome, Request, RequestError, Response, TxnRequest,
};
use paytx::protocol::{EntityKey, PeerRequest, PeerResponse, TxnId, Vote};
use paytx::{Client, ClientConfig, ClientError, Cluster};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on every raw read or write, so a misbehaving node fails the test
/// instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const QUIET_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- raw wire

async fn connect_raw(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

async fn send_raw(stream: &mut TcpStream, bytes: &[u8]) {
    tokio::time::timeout(IO_TIMEOUT, stream.write_all(bytes))
        .await
        .expect("write timed out")
        .expect("write to the node");
}

/// The next frame from the node, within [`IO_TIMEOUT`].
async fn next_frame(stream: &mut TcpStream, what: &str) -> Result<Option<Envelope>, FrameError> {
    tokio::time::timeout(IO_TIMEOUT, read_frame(stream, DEFAULT_MAX_FRAME_BYTES))
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing from the node within {IO_TIMEOUT:?}"))
}

fn frame(envelope: &Envelope) -> Vec<u8> {
    encode_frame(envelope, DEFAULT_MAX_FRAME_BYTES).expect("a small envelope encodes")
}

fn request_frame(id: u64, request: Request) -> Vec<u8> {
    frame(&Envelope { id, message: Message::Request(request) })
}

/// Reads the one typed error the node owes us for bad input, then checks the
/// node closed the connection cleanly. Returns the reason given.
async fn expect_malformed_then_closed(stream: &mut TcpStream, what: &str) -> String {
    let reply = next_frame(stream, what).await.unwrap_or_else(|e| panic!("{what}: reading the error reply: {e}"));
    let reason = match reply {
        Some(Envelope {
            id: 0,
            message: Message::Response(Response::Error(RequestError::Invalid(InvalidRequest::Malformed(reason)))),
        }) => reason,
        other => panic!("{what}: expected a Malformed error with id 0, got {other:?}"),
    };
    assert!(!reason.trim().is_empty(), "{what}: the error says why");
    expect_closed(stream, what).await;
    reason
}

/// The node closed the connection (clean end of stream) without sending
/// anything (more).
async fn expect_closed(stream: &mut TcpStream, what: &str) {
    match next_frame(stream, what).await {
        Ok(None) => {}
        other => panic!("{what}: expected the node to close the connection, got {other:?}"),
    }
}

/// A request on an open raw connection; returns the response paired with `id`.
async fn call_raw(stream: &mut TcpStream, id: u64, request: Request) -> Response {
    let what = format!("request {id} ({request:?})");
    send_raw(stream, &request_frame(id, request)).await;
    match next_frame(stream, &what).await {
        Ok(Some(Envelope { id: got, message: Message::Response(response) })) => {
            assert_eq!(got, id, "{what}: the reply carries the request's id");
            response
        }
        other => panic!("{what}: expected a response, got {other:?}"),
    }
}

/// A fresh client bound to one node only, so the check is about that node.
async fn client_of(addr: SocketAddr) -> Client {
    let config = ClientConfig { request_timeout_ms: 5_000, max_retries: 2, ..ClientConfig::default() };
    Client::connect_with(vec![addr], config).await.unwrap_or_else(|e| panic!("connect a client to {addr}: {e}"))
}

/// The node at `addr` still serves a normal client: reading `account` gives
/// its known balance.
async fn assert_still_serves(addr: SocketAddr, account: AccountId, balance_minor: i64, after: &str) {
    let client = client_of(addr).await;
    let view = client
        .account(account)
        .await
        .unwrap_or_else(|e| panic!("after {after}: {addr} no longer serves: {e}"))
        .unwrap_or_else(|| panic!("after {after}: {account} vanished"));
    assert_eq!(view.balance_minor, balance_minor, "after {after}: {account} read back through {addr}");
}

// ------------------------------------------------------------------ state

fn money(amount_minor: i64, currency: Currency) -> Money {
    Money::new(amount_minor, currency)
}

fn debit(account: AccountId, amount_minor: i64) -> Operation {
    Operation::Debit { account, amount: cny(amount_minor) }
}

fn credit(account: AccountId, amount_minor: i64) -> Operation {
    Operation::Credit { account, amount: cny(amount_minor) }
}

fn transfer(from: AccountId, to: AccountId, amount_minor: i64) -> Vec<Operation> {
    vec![debit(from, amount_minor), credit(to, amount_minor)]
}

/// The channel `pay_ops` charges `order` through.
fn channel_of(order: u64) -> ChannelId {
    ChannelId(1 + order % 3)
}

/// Everything a case could touch, read through the client.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    balances: BTreeMap<AccountId, AccountView>,
    orders: BTreeMap<u64, OrderView>,
    charges: BTreeMap<(ChannelId, OrderId), Option<ChargeView>>,
}

async fn snapshot(
    client: &Client,
    accounts: &[AccountId],
    order_ids: &[u64],
    charges: &[(ChannelId, u64)],
) -> Snapshot {
    let mut charge_views = BTreeMap::new();
    for (channel, order) in charges {
        let view = client.charge(*channel, OrderId(*order)).await.expect("read charge");
        charge_views.insert((*channel, OrderId(*order)), view);
    }
    Snapshot {
        balances: balances(client, accounts).await,
        orders: orders(client, order_ids.iter().copied()).await,
        charges: charge_views,
    }
}

fn assert_no_holds(snapshot: &Snapshot, context: &str) {
    for (account, view) in &snapshot.balances {
        assert_eq!(view.held_minor, 0, "{context}: a hold is left on {account}");
    }
}

/// Sum of balances without overflowing (some tests hold near-`i64::MAX` balances).
fn total_i128(balances: &BTreeMap<AccountId, AccountView>) -> i128 {
    balances.values().map(|v| i128::from(v.balance_minor)).sum()
}

type Check = Box<dyn Fn(&AbortReason) -> bool>;

fn check(f: impl Fn(&AbortReason) -> bool + 'static) -> Check {
    Box::new(f)
}

fn exact(expected: AbortReason) -> Check {
    check(move |got| *got == expected)
}

async fn leader_addr(cluster: &Cluster) -> SocketAddr {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("a leader");
    cluster.addr(leader).expect("the leader has an address")
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_a_typed_error_and_a_close_and_the_node_keeps_serving() {
    let (cluster, client) = start(test_options()).await;
    let account = open(&client, "open", 1..=1, 500).await[0];

    let valid = frame(&Envelope { id: 7, message: Message::Request(Request::GetAccount(account)) });
    let mut unknown_version = valid.clone();
    unknown_version[4] = FRAME_VERSION.wrapping_add(8);
    assert_ne!(unknown_version[4], FRAME_VERSION);

    // A body that decodes up to a vector claiming ~2^62 operations: the
    // decoder must refuse it, not try to allocate it.
    let submit = Envelope { id: 9, message: Message::Request(Request::Submit(TxnRequest::new("k", Vec::new()))) };
    let mut huge_vec = frame(&submit);
    assert_eq!(huge_vec.pop(), Some(0), "an empty ops vector ends the body with its length 0");
    huge_vec.push(253); // bincode varint marker: a u64 follows
    huge_vec.extend_from_slice(&(u64::MAX / 4).to_le_bytes());
    let len = (huge_vec.len() - 4) as u32;
    huge_vec[0..4].copy_from_slice(&len.to_be_bytes());

    let over_cap = DEFAULT_MAX_FRAME_BYTES + 1;
    let mut too_large = over_cap.to_be_bytes().to_vec();
    too_large.push(FRAME_VERSION);
    // The peer keeps sending after the header: the error reply must still
    // reach it (the node drains instead of resetting the connection).
    too_large.extend_from_slice(&[0xAB; 100 * 1024]);

    let unsolicited = frame(&Envelope { id: 5, message: Message::Response(Response::Account(None)) });
    let reserved_id = frame(&Envelope { id: 0, message: Message::Request(Request::NodeStatus) });

    let reportable: Vec<(&str, Vec<u8>)> = vec![
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: paytx\r\nAccept: */*\r\n\r\n".to_vec()),
        ("garbage within the cap", vec![0, 0, 0, 6, FRAME_VERSION, 0xde, 0xad, 0xbe, 0xef, 0xff]),
        ("a body with trailing bytes", {
            let mut f = valid.clone();
            f.push(0);
            let len = (f.len() - 4) as u32;
            f[0..4].copy_from_slice(&len.to_be_bytes());
            f
        }),
        ("a vector length of 2^62", huge_vec),
        ("a length over the frame cap", too_large),
        ("an empty frame", vec![0, 0, 0, 0]),
        ("an unknown version", unknown_version),
        ("an unsolicited Response", unsolicited),
        ("a request with the reserved id 0", reserved_id),
    ];

    for node in cluster.node_ids() {
        let addr = cluster.addr(node).expect("node address");
        for (what, bytes) in &reportable {
            let what = format!("node {node}, {what}");
            let mut stream = connect_raw(addr).await;
            send_raw(&mut stream, bytes).await;
            expect_malformed_then_closed(&mut stream, &what).await;
            assert_still_serves(addr, account, 500, &what).await;
        }

        // Truncated frames: the peer is gone, nobody to tell; just close.
        let truncations: [(&str, Vec<u8>); 3] = [
            ("a frame cut in its body", {
                let mut f = vec![0, 0, 0, 100, FRAME_VERSION];
                f.extend_from_slice(&[1; 10]);
                f
            }),
            ("a frame cut in its length", vec![0, 0]),
            ("a valid frame cut by one byte", valid[..valid.len() - 1].to_vec()),
        ];
        for (what, bytes) in truncations {
            let what = format!("node {node}, {what}");
            let mut stream = connect_raw(addr).await;
            send_raw(&mut stream, &bytes).await;
            stream.shutdown().await.expect("half-close our side");
            expect_closed(&mut stream, &what).await;
            assert_still_serves(addr, account, 500, &what).await;
        }

        // A valid frame is served on a raw connection, the control case for
        // everything above.
        let mut stream = connect_raw(addr).await;
        match call_raw(&mut stream, 7, Request::GetAccount(account)).await {
            Response::Account(Some(view)) => assert_eq!(view.balance_minor, 500),
            other => panic!("node {node}: expected the account, got {other:?}"),
        }
    }
    drop(client);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_their_typed_error_and_the_connection_stays_usable() {
    let (cluster, client) = start(test_options()).await;
    let accounts = open(&client, "open", 1..=3, 1_000).await;
    let (payer, merchant, spare) = (accounts[0], accounts[1], accounts[2]);
    create_order(&client, 1, merchant, 300).await;
    let before = snapshot(&client, &accounts, &[1], &[(channel_of(1), 1)]).await;

    let zzz = Currency(*b"ZZZ");
    let usd = Currency::USD;
    let ok_key = "ok-key";
    let long_key = "k".repeat(200);
    let too_many: Vec<Operation> = std::iter::once(debit(payer, MAX_OPS_PER_TXN as i64))
        .chain((0..MAX_OPS_PER_TXN).map(|_| credit(merchant, 1)))
        .collect();
    assert_eq!(too_many.len(), MAX_OPS_PER_TXN + 1);

    let cases: Vec<(&str, String, Vec<Operation>, InvalidRequest)> = vec![
        ("no operations", ok_key.into(), vec![], InvalidRequest::Empty),
        (
            "a zero debit",
            ok_key.into(),
            transfer(payer, merchant, 0),
            InvalidRequest::NonPositiveAmount { index: 0, amount_minor: 0 },
        ),
        (
            "a negative debit",
            ok_key.into(),
            transfer(payer, merchant, -5),
            InvalidRequest::NonPositiveAmount { index: 0, amount_minor: -5 },
        ),
        (
            "an i64::MIN credit",
            ok_key.into(),
            vec![debit(payer, 5), credit(merchant, i64::MIN)],
            InvalidRequest::NonPositiveAmount { index: 1, amount_minor: i64::MIN },
        ),
        (
            "a zero MarkPaid",
            ok_key.into(),
            vec![Operation::MarkPaid { order: OrderId(1), amount: cny(0) }],
            InvalidRequest::NonPositiveAmount { index: 0, amount_minor: 0 },
        ),
        (
            "a negative initial balance",
            ok_key.into(),
            vec![Operation::OpenAccount { account: AccountId(50), currency: Currency::CNY, initial_minor: -1 }],
            InvalidRequest::NegativeInitialBalance { index: 0, amount_minor: -1 },
        ),
        (
            "debits above credits",
            ok_key.into(),
            vec![debit(payer, 5), credit(merchant, 4)],
            InvalidRequest::Unbalanced { currency: Currency::CNY, debits_minor: 5, credits_minor: 4 },
        ),
        (
            "a credit alone (minting)",
            ok_key.into(),
            vec![credit(merchant, 100)],
            InvalidRequest::Unbalanced { currency: Currency::CNY, debits_minor: 0, credits_minor: 100 },
        ),
        (
            "balanced totals in different currencies",
            ok_key.into(),
            vec![debit(payer, 5), Operation::Credit { account: merchant, amount: money(5, usd) }],
            InvalidRequest::Unbalanced { currency: Currency::CNY, debits_minor: 5, credits_minor: 0 },
        ),
        ("an empty key", String::new(), transfer(payer, merchant, 5), InvalidRequest::BadIdempotencyKey),
        ("a key with a space", "pay 1".into(), transfer(payer, merchant, 5), InvalidRequest::BadIdempotencyKey),
        ("a key of 200 bytes", long_key, transfer(payer, merchant, 5), InvalidRequest::BadIdempotencyKey),
        ("a non-ASCII key", "clé".into(), transfer(payer, merchant, 5), InvalidRequest::BadIdempotencyKey),
        ("a key with a control byte", "pay\n1".into(), transfer(payer, merchant, 5), InvalidRequest::BadIdempotencyKey),
        (
            "65 operations",
            ok_key.into(),
            too_many,
            InvalidRequest::TooManyOperations { count: MAX_OPS_PER_TXN + 1, max: MAX_OPS_PER_TXN },
        ),
        (
            "an unsupported currency",
            ok_key.into(),
            vec![
                Operation::Debit { account: payer, amount: money(5, zzz) },
                Operation::Credit { account: merchant, amount: money(5, zzz) },
            ],
            InvalidRequest::UnsupportedCurrency { index: 0, currency: "ZZZ".into() },
        ),
        (
            "an account opened in an unsupported currency",
            ok_key.into(),
            vec![Operation::OpenAccount { account: AccountId(51), currency: Currency(*b"cny"), initial_minor: 0 }],
            InvalidRequest::UnsupportedCurrency { index: 0, currency: "cny".into() },
        ),
    ];

    // All on one raw connection to the leader. An invalid *request* in a
    // well-formed frame is answered with its own id and the connection stays
    // usable: unlike a bad frame, the peer speaks the protocol correctly, so
    // there is no reason to hang up on it. Every next request proves it.
    let mut stream = connect_raw(leader_addr(&cluster).await).await;
    let mut id = 0;
    for (what, key, ops, expected) in &cases {
        id += 1;
        let request = TxnRequest::new(key.clone(), ops.clone());
        match call_raw(&mut stream, id, Request::Submit(request)).await {
            Response::Error(RequestError::Invalid(invalid)) => assert_eq!(&invalid, expected, "{what}"),
            other => panic!("{what}: expected RequestError::Invalid, got {other:?}"),
        }
    }
    // The connection is still good after all of them.
    id += 1;
    match call_raw(&mut stream, id, Request::GetAccount(payer)).await {
        Response::Account(Some(view)) => assert_eq!(view.balance_minor, 1_000),
        other => panic!("follow-up read on the same connection: got {other:?}"),
    }

    // Through another node too (forwarded to the leader), via the Client API:
    // the typed error reaches the caller as is, unretried.
    for node in cluster.node_ids() {
        let node_client = client_of(cluster.addr(node).expect("address")).await;
        let result = node_client.submit(TxnRequest::new(ok_key, vec![debit(payer, 5), credit(merchant, 4)])).await;
        assert_eq!(
            result,
            Err(ClientError::Request(RequestError::Invalid(InvalidRequest::Unbalanced {
                currency: Currency::CNY,
                debits_minor: 5,
                credits_minor: 4
            }))),
            "node {node}"
        );
    }

    // Nothing was registered, reserved or applied.
    wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;
    let after = snapshot(&client, &accounts, &[1], &[(channel_of(1), 1)]).await;
    assert_eq!(after, before, "invalid requests change nothing");
    assert_no_holds(&after, "after invalid requests");
    assert_eq!(
        client.txn_status(IdempotencyKey::new(ok_key)).await.expect("status"),
        KeyStatus::NotRegistered,
        "key never registered"
    );

    // The limits are inclusive: exactly 64 operations and a 128-byte key pass.
    let at_limit: Vec<Operation> = std::iter::once(debit(payer, MAX_OPS_PER_TXN as i64 - 1))
        .chain((1..MAX_OPS_PER_TXN).map(|_| credit(spare, 1)))
        .collect();
    assert_eq!(at_limit.len(), MAX_OPS_PER_TXN);
    let receipt = submit(&client, &"x".repeat(IdempotencyKey::MAX_LEN_BYTES), at_limit).await;
    assert_eq!(receipt.outcome, Outcome::Committed, "64 operations under a 128-byte key");
    let views = balances(&client, &[payer, spare]).await;
    assert_eq!(views[&payer].balance_minor, 1_000 - 63);
    assert_eq!(views[&spare].balance_minor, 1_000 + 63);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_formed_transactions_that_cannot_apply_abort_with_their_reason_and_change_nothing() {
    let (cluster, client) = start(test_options()).await;
    let (payer, merchant) = (AccountId(1), AccountId(2));
    let (huge, donor) = (AccountId(3), AccountId(4));
    open(&client, "open-users", 1..=2, 10_000).await;
    open(&client, "open-huge", 3..=3, i64::MAX - 100).await;
    open(&client, "open-donor", 4..=4, 1_000).await;
    let accounts = [payer, merchant, huge, donor];
    let deposits: i128 = 2 * 10_000 + i128::from(i64::MAX - 100) + 1_000;

    // Order 1: CREATED, 300. Order 2: paid 200 through channel 3, 50 refunded.
    create_order(&client, 1, merchant, 300).await;
    create_order(&client, 2, merchant, 200).await;
    let paid = submit(&client, "pay-2", pay_ops(payer, merchant, 2, 200)).await;
    assert!(paid.outcome.is_committed(), "{paid:?}");
    let (ch2, refund_first) = (channel_of(2), 50);
    let refund = vec![
        debit(merchant, refund_first),
        credit(payer, refund_first),
        Operation::RefundOrder { order: OrderId(2), amount: cny(refund_first) },
        Operation::ChannelRefund { channel: ch2, order: OrderId(2), amount: cny(refund_first) },
    ];
    assert!(submit(&client, "refund-2a", refund).await.outcome.is_committed());
    wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;

    let order_ids = [1, 2, 777];
    let charges = [(channel_of(1), 1), (ch2, 2), (channel_of(777), 777), (ChannelId(99), 1)];
    // Order 777 does not exist; `orders` only reads existing ones.
    let setup = snapshot(&client, &accounts, &order_ids[..2], &charges).await;
    assert_no_holds(&setup, "after setup");
    assert_eq!(setup.balances[&payer].balance_minor, 10_000 - 200 + 50);
    assert_eq!(setup.orders[&2].status, OrderStatus::PartiallyRefunded);
    assert_eq!(setup.charges[&(ch2, OrderId(2))].as_ref().map(|c| c.refunded_minor), Some(50));
    assert_eq!(total_i128(&setup.balances), deposits, "money conserved by the setup");
    let payer_available = setup.balances[&payer].balance_minor;

    let cases: Vec<(&str, Vec<Operation>, Check)> = vec![
        (
            "debit of an unknown account",
            transfer(AccountId(999), merchant, 100),
            exact(AbortReason::UnknownAccount(AccountId(999))),
        ),
        (
            "credit of an unknown account",
            transfer(payer, AccountId(998), 100),
            exact(AbortReason::UnknownAccount(AccountId(998))),
        ),
        (
            "insufficient funds",
            transfer(payer, merchant, payer_available + 1),
            exact(AbortReason::InsufficientFunds {
                account: payer,
                available_minor: payer_available,
                requested_minor: payer_available + 1,
            }),
        ),
        ("a credit past i64::MAX", transfer(donor, huge, 1_000), exact(AbortReason::BalanceOverflow(huge))),
        ("paying an unknown order", pay_ops(payer, merchant, 777, 100), exact(AbortReason::UnknownOrder(OrderId(777)))),
        (
            "paying an order the wrong amount",
            pay_ops(payer, merchant, 1, 299),
            exact(AbortReason::AmountMismatch { order: OrderId(1), expected_minor: 300, got_minor: 299 }),
        ),
        (
            "refunding more than is left",
            vec![
                debit(merchant, 151),
                credit(payer, 151),
                Operation::RefundOrder { order: OrderId(2), amount: cny(151) },
                Operation::ChannelRefund { channel: ch2, order: OrderId(2), amount: cny(151) },
            ],
            // Order and channel shard both refuse, with the same numbers.
            exact(AbortReason::RefundExceedsPaid {
                order: OrderId(2),
                paid_minor: 200,
                refunded_minor: 50,
                requested_minor: 151,
            }),
        ),
        (
            "charging (channel, order) twice",
            vec![
                debit(payer, 200),
                credit(merchant, 200),
                Operation::Charge { channel: ch2, order: OrderId(2), amount: cny(200) },
            ],
            exact(AbortReason::AlreadyCharged { channel: ch2, order: OrderId(2) }),
        ),
        (
            "opening an existing account",
            vec![Operation::OpenAccount { account: payer, currency: Currency::CNY, initial_minor: 5 }],
            exact(AbortReason::AccountExists(payer)),
        ),
        (
            "creating an existing order",
            vec![Operation::CreateOrder { order: OrderId(1), merchant, amount: cny(300) }],
            exact(AbortReason::OrderExists(OrderId(1))),
        ),
        (
            "marking a refunded order paid",
            vec![Operation::MarkPaid { order: OrderId(2), amount: cny(200) }],
            check(|got| {
                matches!(got, AbortReason::IllegalOrderTransition { order, from: OrderStatus::PartiallyRefunded, .. }
                    if *order == OrderId(2))
            }),
        ),
        (
            "moving money in another currency",
            vec![
                Operation::Debit { account: payer, amount: money(100, Currency::USD) },
                Operation::Credit { account: merchant, amount: money(100, Currency::USD) },
            ],
            check(|got| {
                matches!(got, AbortReason::CurrencyMismatch { expected: Currency::CNY, got: Currency::USD, .. })
            }),
        ),
        (
            "charging through an unknown channel",
            vec![Operation::Charge { channel: ChannelId(99), order: OrderId(1), amount: cny(300) }],
            exact(AbortReason::UnknownChannel(ChannelId(99))),
        ),
    ];

    for (i, (what, ops, expected)) in cases.iter().enumerate() {
        let key = format!("abort-{i}");
        let before = snapshot(&client, &accounts, &order_ids[..2], &charges).await;
        let receipt = submit(&client, &key, ops.clone()).await;
        let reason = match &receipt.outcome {
            Outcome::Aborted(reason) => reason.clone(),
            Outcome::Committed => panic!("{what}: committed, but must abort"),
        };
        assert!(expected(&reason), "{what}: wrong abort reason {reason:?}");
        assert!(!receipt.replayed, "{what}: a first submission is not a replay");
        // The decision is recorded under the key.
        let status = client.txn_status(IdempotencyKey::new(key.clone())).await.expect("status");
        let status = status.into_known().unwrap_or_else(|| panic!("{what}: no status under {key}"));
        assert_eq!(status.txn, receipt.txn, "{what}");
        assert_eq!(status.state, TxnState::Decided(Outcome::Aborted(reason)), "{what}");
        // Holds are released by the abort fan-out, which may finish after
        // the reply: wait for it, then nothing may differ.
        wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;
        let after = snapshot(&client, &accounts, &order_ids[..2], &charges).await;
        assert_eq!(after, before, "{what}: an abort changes nothing");
        assert_no_holds(&after, what);
        assert_eq!(client.order(OrderId(777)).await.expect("read order"), None, "{what}: order 777 never appears");
    }

    let end = snapshot(&client, &accounts, &order_ids[..2], &charges).await;
    assert_eq!(end, setup, "nothing drifted over all the aborts");

    // The overflow boundary is exact: a balance may reach i64::MAX, not pass it.
    let to_max = submit(&client, "to-max", transfer(donor, huge, 100)).await;
    assert_eq!(to_max.outcome, Outcome::Committed, "crediting up to exactly i64::MAX");
    let past_max = submit(&client, "past-max", transfer(donor, huge, 1)).await;
    assert_eq!(past_max.outcome, Outcome::Aborted(AbortReason::BalanceOverflow(huge)));
    wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;
    let views = balances(&client, &[huge, donor]).await;
    assert_eq!(views[&huge].balance_minor, i64::MAX);
    assert_eq!(views[&donor].balance_minor, 900);
    assert_eq!(views[&huge].held_minor + views[&donor].held_minor, 0, "no holds left");
    cluster.shutdown().await;
}

/// Keys are kept for `[raft] key_retention_secs` of log time after their
/// transaction is forgotten. Past that, a key the table no longer holds
/// reads as `Unknown` (it may have committed), never as `NotRegistered`;
/// and a submit under it runs as a new transaction, as a key older than
/// retention is new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_evicted_by_retention_reads_as_unknown_not_as_never_registered() {
    const RETENTION_SECS: u64 = 2;
    let mut options = test_options();
    options.raft.key_retention_secs = RETENTION_SECS;
    let (cluster, client) = start(options).await;
    let never = IdempotencyKey::new("never-used");
    let merchant = open(&client, "open", 1..=1, 0).await[0];
    wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;
    assert_eq!(
        client.txn_status(never.clone()).await.expect("status"),
        KeyStatus::NotRegistered,
        "nothing evicted yet"
    );
    for order in 1..=3 {
        create_order(&client, order, merchant, 100).await;
    }
    wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;
    let kept = client.txn_status(IdempotencyKey::new("create-1")).await.expect("status");
    assert!(kept.known().is_some(), "within the retention the key is held: {kept:?}");
    // Log time moves only with the log: let the retention pass, then one
    // more transaction stamps a time past it.
    tokio::time::sleep(Duration::from_millis(RETENTION_SECS * 1_000 + 500)).await;
    create_order(&client, 4, merchant, 100).await;
    wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;
    let first = client.txn_status(IdempotencyKey::new("create-1")).await.expect("status");
    assert_eq!(first, KeyStatus::Unknown { retention_secs: RETENTION_SECS }, "evicted");
    let never_now = client.txn_status(never).await.expect("status");
    assert!(
        matches!(never_now, KeyStatus::Unknown { .. }),
        "after evictions no absent key is provably new: {never_now:?}"
    );
    let last = client.txn_status(IdempotencyKey::new("create-4")).await.expect("status").into_known().expect("kept");
    assert_eq!(last.state, TxnState::Decided(Outcome::Committed));
    // The evicted key runs again as a new transaction: order 1 exists now,
    // so this one aborts — under a new id, not as a replay.
    let op = Operation::CreateOrder { order: OrderId(1), merchant, amount: cny(100) };
    let again = client.submit(TxnRequest::new("create-1", vec![op])).await.expect("resubmit");
    assert!(!again.replayed, "an evicted key is not replayed: {again:?}");
    assert!(!again.outcome.is_committed(), "order 1 exists already: {again:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_returns_the_first_outcome_and_a_changed_body_is_a_conflict() {
    let (cluster, client) = start(test_options()).await;
    let accounts = open(&client, "open", 1..=3, 1_000).await;
    let (payer, merchant, donor) = (accounts[0], accounts[1], accounts[2]);
    create_order(&client, 1, merchant, 300).await;
    let charges = [(channel_of(1), 1)];

    // A committed payment, replayed.
    let request = TxnRequest::new("pay-1", pay_ops(payer, merchant, 1, 300));
    let first = client.submit(request.clone()).await.expect("submit");
    assert_eq!(first.outcome, Outcome::Committed);
    assert!(!first.replayed, "the first submission is not a replay");
    wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;
    let applied = snapshot(&client, &accounts, &[1], &charges).await;
    assert_eq!(applied.balances[&payer].balance_minor, 700);
    assert_eq!(applied.balances[&merchant].balance_minor, 1_300);
    assert_eq!(applied.orders[&1].status, OrderStatus::Paid);

    for attempt in 0..2 {
        let again = client.submit(request.clone()).await.expect("resubmit");
        assert_eq!(again.txn, first.txn, "attempt {attempt}: the same transaction answers");
        assert_eq!(again.outcome, Outcome::Committed, "attempt {attempt}");
        assert!(again.replayed, "attempt {attempt}: marked as a replay");
    }
    // Concurrent replays too, through every node.
    let mut replays = Vec::new();
    for node in cluster.node_ids() {
        let node_client = client_of(cluster.addr(node).expect("address")).await;
        let request = request.clone();
        replays.push(tokio::spawn(async move { node_client.submit(request).await }));
    }
    for replay in replays {
        let receipt = replay.await.expect("task").expect("replay");
        assert_eq!((receipt.txn, receipt.outcome, receipt.replayed), (first.txn, Outcome::Committed, true));
    }
    wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;
    assert_eq!(snapshot(&client, &accounts, &[1], &charges).await, applied, "applied once");

    // Same key, different bodies: a typed conflict, nothing applied.
    let variants = [
        pay_ops(payer, merchant, 1, 299),
        pay_ops(merchant, payer, 1, 300),
        transfer(payer, merchant, 300),
        // The same operations in another order are another body.
        {
            let mut ops = pay_ops(payer, merchant, 1, 300);
            ops.swap(0, 1);
            ops
        },
    ];
    for (i, ops) in variants.into_iter().enumerate() {
        match client.submit(TxnRequest::new("pay-1", ops)).await {
            Err(ClientError::Request(RequestError::IdempotencyConflict { key })) => assert_eq!(key, "pay-1"),
            other => panic!("variant {i}: expected an idempotency conflict, got {other:?}"),
        }
    }
    wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;
    assert_eq!(snapshot(&client, &accounts, &[1], &charges).await, applied, "a conflict changes nothing");
    let status =
        client.txn_status(IdempotencyKey::new("pay-1")).await.expect("status").into_known().expect("registered");
    assert_eq!((status.txn, status.state), (first.txn, TxnState::Decided(Outcome::Committed)), "the first stays");

    // An aborted outcome is replayed as well, even once the transaction
    // could now succeed: the key is decided, it is not retried.
    let overdraw = TxnRequest::new("overdraw", transfer(payer, merchant, 1_000));
    let aborted = client.submit(overdraw.clone()).await.expect("submit");
    let expected = Outcome::Aborted(AbortReason::InsufficientFunds {
        account: payer,
        available_minor: 700,
        requested_minor: 1_000,
    });
    assert_eq!(aborted.outcome, expected);
    assert!(submit(&client, "top-up", transfer(donor, payer, 500)).await.outcome.is_committed());
    wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;
    let topped_up = snapshot(&client, &accounts, &[1], &charges).await;
    assert_eq!(topped_up.balances[&payer].balance_minor, 1_200, "enough funds now");
    let again = client.submit(overdraw).await.expect("resubmit");
    assert_eq!((again.txn, again.outcome, again.replayed), (aborted.txn, expected, true));
    wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;
    assert_eq!(snapshot(&client, &accounts, &[1], &charges).await, topped_up, "a replayed abort applies nothing");
    assert_eq!(total(&topped_up.balances), 3_000, "money conserved");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_half_frames_on_many_connections_do_not_stop_service() {
    let (cluster, client) = start(test_options()).await;
    let payers = open(&client, "open-payers", 1..=20, 1_000).await;
    let merchant = open(&client, "open-merchant", 100..=100, 0).await[0];

    // ~50 connections spread over every node, each stuck half-way through a
    // frame header (the node waits up to [limits] frame_read_timeout_ms for the rest).
    let addrs = cluster.addrs();
    let mut hostile = Vec::new();
    for i in 0..51 {
        let mut stream = connect_raw(addrs[i % addrs.len()]).await;
        send_raw(&mut stream, &[0, 0]).await;
        hostile.push(stream);
    }

    let transfers: Vec<_> = payers
        .iter()
        .enumerate()
        .map(|(i, payer)| {
            let client = client.clone();
            let request = TxnRequest::new(format!("transfer-{i}"), transfer(*payer, merchant, 10 + i as i64));
            tokio::spawn(async move { client.submit(request).await })
        })
        .collect();
    for (i, handle) in transfers.into_iter().enumerate() {
        let receipt = handle.await.expect("task").unwrap_or_else(|e| panic!("transfer {i}: {e}"));
        assert_eq!(receipt.outcome, Outcome::Committed, "transfer {i}");
    }
    // Every node answers a fresh client while the hostile connections sit.
    for addr in &addrs {
        let status = client_of(*addr).await.node_status().await.expect("node status");
        assert!(status.raft_term.is_some(), "{addr}: the coordinator replica is up");
    }

    // The hostile connections were not answered (there is nothing to answer
    // yet) and are still open.
    let idle = hostile.iter_mut().map(|stream| async move {
        let mut buf = [0u8; 1];
        tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
    });
    for (i, read) in futures::future::join_all(idle).await.into_iter().enumerate() {
        assert!(read.is_err(), "hostile connection {i}: expected it idle and open, got {read:?}");
    }
    drop(hostile);

    wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;
    let mut accounts = payers.clone();
    accounts.push(merchant);
    let views = balances(&client, &accounts).await;
    for (i, payer) in payers.iter().enumerate() {
        assert_eq!(views[payer].balance_minor, 1_000 - 10 - i as i64, "{payer}");
        assert_eq!(views[payer].held_minor, 0, "{payer}");
    }
    assert_eq!(views[&merchant].balance_minor, (0..20).map(|i| 10 + i).sum::<i64>());
    assert_eq!(total(&views), 20 * 1_000, "money conserved");
    // And the nodes serve after the crowd has gone.
    for addr in &addrs {
        assert_still_serves(*addr, merchant, views[&merchant].balance_minor, "dropping the hostile connections").await;
    }
    cluster.shutdown().await;
}

/// Every node serves node-to-node messages (`Message::Peer`) on the same
/// port as clients, but only on a connection that proved it knows the
/// cluster secret (`protocol/src/auth.rs`). A client that sends a 2PC
/// `Prepare` of a lone credit and then `Decide { commit: true }` straight to
/// the account's shard — bypassing the coordinator, which validates and
/// balances transactions — or a forged openraft `AppendEntries`, or a
/// handshake with a guessed proof, gets `Unauthorized` and the connection is
/// closed. Nothing a client connection sends moves money outside a
/// validated transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_commit_messages_from_a_client_connection_change_nothing() {
    let (cluster, client) = start(test_options()).await;
    let accounts = open(&client, "open", 1..=2, 1_000).await;
    let victim = accounts[0];
    let before = balances(&client, &accounts).await;

    let any = cluster.node_ids()[0];
    let shards = &cluster.config(any).expect("node config").shards;
    let shard = shards.shard_of(EntityKey::Account(victim));
    let owner = cluster.addr(shards.node_of(shard).expect("shard owner")).expect("owner address");
    let txn = TxnId { term: 1_000_000, node: 99, seq: 1 };
    let peer = |id: u64, request: PeerRequest| frame(&Envelope { id, message: Message::Peer(request) });

    let mut stream = connect_raw(owner).await;
    send_raw(&mut stream, &peer(1, PeerRequest::Prepare { txn, shard, ops: vec![credit(victim, 1_000_000)] })).await;
    let vote = next_frame(&mut stream, "prepare from a client").await;
    assert!(
        !matches!(
            &vote,
            Ok(Some(Envelope { message: Message::PeerReply(PeerResponse::Vote { vote: Vote::Yes, .. }), .. }))
        ),
        "a participant voted YES on a prepare sent by a client: {vote:?}"
    );
    assert!(
        matches!(
            &vote,
            Ok(Some(Envelope {
                id: 1,
                message: Message::PeerReply(PeerResponse::Error(paytx::protocol::RequestError::Unauthorized { .. }))
            }))
        ),
        "a typed Unauthorized answer: {vote:?}"
    );
    assert!(matches!(next_frame(&mut stream, "after the refusal").await, Ok(None)), "then the connection is closed");
    // A forged Raft AppendEntries, and a handshake with a guessed proof.
    let mut stream = connect_raw(owner).await;
    let forged = PeerRequest::Raft {
        group: paytx::protocol::messages::RaftGroup::Coordinator,
        to: 1,
        kind: paytx::protocol::messages::RaftRpcKind::AppendEntries,
        payload: vec![0; 16],
    };
    send_raw(&mut stream, &peer(3, forged)).await;
    let answer = next_frame(&mut stream, "forged append entries").await;
    assert!(
        matches!(
            &answer,
            Ok(Some(Envelope {
                message: Message::PeerReply(PeerResponse::Error(paytx::protocol::RequestError::Unauthorized { .. })),
                ..
            }))
        ),
        "{answer:?}"
    );
    let mut stream = connect_raw(owner).await;
    send_raw(
        &mut stream,
        &peer(
            4,
            PeerRequest::AuthHello {
                node: 1,
                nonce: [7; 32],
                config: cluster.config(any).expect("node config").cluster_digest(),
            },
        ),
    )
    .await;
    let challenge = next_frame(&mut stream, "hello").await;
    assert!(
        matches!(
            &challenge,
            Ok(Some(Envelope { message: Message::PeerReply(PeerResponse::AuthChallenge { .. }), .. }))
        ),
        "{challenge:?}"
    );
    send_raw(&mut stream, &peer(5, PeerRequest::AuthProof { proof: [9; 32] })).await;
    let refused = next_frame(&mut stream, "guessed proof").await;
    assert!(
        matches!(
            &refused,
            Ok(Some(Envelope {
                message: Message::PeerReply(PeerResponse::Error(paytx::protocol::RequestError::Unauthorized { .. })),
                ..
            }))
        ),
        "{refused:?}"
    );
    // Whatever the answer, try to commit it on a fresh connection.
    let mut stream = connect_raw(owner).await;
    let _ = stream.write_all(&peer(2, PeerRequest::Decide { txn, shard, commit: true, at_ms: 0 })).await;
    let _ = next_frame(&mut stream, "decide from a client").await;

    wait_quiet(&cluster, &client, QUIET_TIMEOUT).await;
    let after = balances(&client, &accounts).await;
    assert_eq!(after, before, "a client's 2PC messages moved money");
    assert_eq!(total(&after), 2 * 1_000, "money conserved");
    cluster.shutdown().await;
}

/// A node whose cluster-wide configuration differs (here: one channel
/// fewer) is refused by the others at its first connection, and the refusal
/// names the setting; the same node with the same configuration gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_channel_list_differs_is_refused_and_told_why() {
    use paytx::net::{PeerCredentials, TcpTransport, TransportLimits};
    use paytx::protocol::Transport;
    let (cluster, _client) = start(test_options()).await;
    let target = cluster.node_ids()[0];
    let mut config = cluster.config(3).expect("node 3's config").clone();
    let peers = config.peer_map();
    let as_node_3 = |config: &paytx::NodeConfig| {
        let limits = TransportLimits {
            auth: Some(PeerCredentials {
                node: 3,
                secret: std::sync::Arc::from(config.cluster_secret.as_bytes()),
                config: config.cluster_digest(),
            }),
            ..TransportLimits::default()
        };
        TcpTransport::new(peers.clone(), limits)
    };
    let query = || PeerRequest::QueryDecision { txn: TxnId { term: 1, node: 3, seq: 1 } };
    // The real configuration: the handshake passes and the query is served.
    let same = as_node_3(&config).call(target, query(), 5_000).await;
    assert!(!matches!(&same, Err(e) if e.to_string().contains("refused us")), "{same:?}");

    config.channels.pop();
    let refused = as_node_3(&config).call(target, query(), 5_000).await;
    let error = refused.expect_err("a node with another channel list is refused").to_string();
    assert!(error.contains("[[channels]]") && error.contains("identical on every node"), "{error}");
    cluster.shutdown().await;
}
