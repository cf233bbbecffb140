//! Shared helpers of the integration tests: clusters with test timings,
//! accounts, orders, payments and state snapshots read through the client.
#![allow(dead_code)] // each test binary uses a different subset

use paytx::config::CoordinatorSettings;
use paytx::protocol::messages::{AccountView, OrderView};
use paytx::protocol::{AccountId, ChannelId, Currency, Money, Operation, OrderId, TxnReceipt, TxnRequest};
use paytx::workload::{open_accounts, payment_ops};
use paytx::{Client, Cluster, ClusterOptions};
use paytx_coordinator::RaftSettings;
use std::collections::BTreeMap;
use std::time::Duration;

pub const CNY: Currency = Currency::CNY;

pub fn cny(amount_minor: i64) -> Money {
    Money::new(amount_minor, CNY)
}

/// Options with short timeouts so failures resolve quickly in tests.
pub fn test_options() -> ClusterOptions {
    ClusterOptions {
        raft: RaftSettings {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            ..RaftSettings::default()
        },
        coordinator: CoordinatorSettings {
            prepare_timeout_ms: 1_500,
            decide_retry_ms: 100,
            in_doubt_after_ms: 300,
            ..CoordinatorSettings::default()
        },
        seed: Some(11),
        ..ClusterOptions::default()
    }
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,openraft=error".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn start(options: ClusterOptions) -> (Cluster, Client) {
    init_logs();
    let cluster = Cluster::start(options).await.expect("cluster starts");
    let client = cluster.client().await.expect("client connects");
    (cluster, client)
}

pub async fn submit(client: &Client, key: &str, ops: Vec<Operation>) -> TxnReceipt {
    client.submit(TxnRequest::new(key, ops)).await.unwrap_or_else(|e| panic!("submit {key}: {e}"))
}

/// Opens accounts `first..first+count` with `initial_minor` each.
pub async fn open(client: &Client, prefix: &str, ids: impl Iterator<Item = u64>, initial_minor: i64) -> Vec<AccountId> {
    let accounts: Vec<(AccountId, i64)> = ids.map(|id| (AccountId(id), initial_minor)).collect();
    let receipts = open_accounts(client, prefix, &accounts, CNY, 25).await.expect("open accounts");
    assert!(receipts.iter().all(|r| r.outcome.is_committed()), "accounts opened: {receipts:?}");
    accounts.into_iter().map(|(a, _)| a).collect()
}

pub async fn create_order(client: &Client, order: u64, merchant: AccountId, amount_minor: i64) {
    let op = Operation::CreateOrder { order: OrderId(order), merchant, amount: cny(amount_minor) };
    let receipt = submit(client, &format!("create-{order}"), vec![op]).await;
    assert!(receipt.outcome.is_committed(), "order {order} created: {receipt:?}");
}

pub fn pay_ops(payer: AccountId, merchant: AccountId, order: u64, amount_minor: i64) -> Vec<Operation> {
    payment_ops(payer, merchant, OrderId(order), ChannelId(1 + order % 3), cny(amount_minor))
}

pub async fn balances(client: &Client, accounts: &[AccountId]) -> BTreeMap<AccountId, AccountView> {
    let mut out = BTreeMap::new();
    for account in accounts {
        let view = client.account(*account).await.expect("read account").expect("account exists");
        out.insert(*account, view);
    }
    out
}

pub async fn orders(client: &Client, ids: impl Iterator<Item = u64>) -> BTreeMap<u64, OrderView> {
    let mut out = BTreeMap::new();
    for id in ids {
        let view = client.order(OrderId(id)).await.expect("read order").expect("order exists");
        out.insert(id, view);
    }
    out
}

pub fn total(balances: &BTreeMap<AccountId, AccountView>) -> i64 {
    balances.values().map(|v| v.balance_minor).sum()
}

/// Waits until nothing is in doubt anywhere and the leader's table holds no
/// undecided or unacknowledged transaction.
pub async fn wait_quiet(cluster: &Cluster, client: &Client, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut quiet = true;
        let mut seen = Vec::new();
        for id in cluster.node_ids() {
            let Some(addr) = cluster.addr(id) else { continue };
            match client.node_status_of(addr).await {
                Ok(status) => {
                    let in_doubt: u64 = status.shards.iter().map(|s| s.in_doubt).sum();
                    quiet &= in_doubt == 0
                        && !(status.coordinator_ready && (status.undecided_txns + status.unacked_txns) > 0);
                    seen.push(status);
                }
                Err(_) => quiet = false,
            }
        }
        if quiet {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "cluster not quiet after {timeout:?}: {seen:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
