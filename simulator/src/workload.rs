//! Simulated clients: payments (create an order, then pay it — or close it
//! unpaid), refunds, chargebacks (a channel refund alone), closes of any
//! order (only an unpaid one may close),
//! transfers between hot accounts (some carrying a nonce record claimed in
//! the same transaction), and record writes (unique claims, compare-and-set
//! updates, unconditional upserts), submitted to random nodes over simulated
//! client links, retried with the same idempotency key after a timeout or a
//! transient error — exactly what a real service does.

use crate::world::World;
use paytx_protocol::messages::KeyStatus;
use paytx_protocol::{
    AccountId, ChannelId, Currency, IdempotencyKey, Money, NodeId, Operation, OrderId, Outcome, RecordExpect,
    RecordKey, RecordNs, Request, Response, TxnRequest,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const CURRENCY: Currency = Currency::CNY;
/// Client ids start here in the trace (node ids are small).
pub const CLIENT_ID_BASE: u64 = 1_000;

/// Record namespaces of the workload, each with a small pool of keys so
/// that clients contend: claimed names (insert, then compare-and-set),
/// nonces (claimed with a transfer; a reused nonce must abort the money
/// too), and "last seen" markers (unconditional upserts).
pub const NAMES_NS: RecordNs = 1;
pub const NONCES_NS: RecordNs = 2;
pub const SEEN_NS: RecordNs = 3;
pub const RECORD_POOLS: [(RecordNs, &str, u64); 3] =
    [(NAMES_NS, "name", 12), (NONCES_NS, "nonce", 40), (SEEN_NS, "seen", 4)];

/// The ordered index of claimed names: one entry per existing name,
/// sorted by `(pool index, digest of the name's value)`, written by the very
/// transaction that writes the name (a claim inserts it, a compare-and-set
/// moves it). The checker verifies the index against the names.
pub const NAME_INDEX_NS: RecordNs = paytx_protocol::ids::FIRST_ORDERED_NS;

/// The journal: every transfer writes one entry, keyed by its commit time
/// (`Operation::PutRecordAtCommit`, numbered by client and operation). The
/// checker verifies one entry per committed transfer, none for another,
/// each under a time of the run's log.
pub const JOURNAL_NS: RecordNs = paytx_protocol::ids::FIRST_ORDERED_NS + 1;

/// The one partition of the journal.
pub fn journal_partition() -> paytx_protocol::Partition {
    paytx_protocol::Partition::new(JOURNAL_NS, b"journal").expect("JOURNAL_NS is an ordered namespace")
}

/// The number of the journal entry of operation `n` of client `client`.
pub fn journal_number(client: u64, n: u64) -> u64 {
    (client << 32) | (n & 0xffff_ffff)
}

/// The one partition of the name index.
pub fn name_index_partition() -> paytx_protocol::Partition {
    paytx_protocol::Partition::new(NAME_INDEX_NS, b"names").expect("NAME_INDEX_NS is an ordered namespace")
}

/// The index entry of the name `pool_index` holding `value`.
pub fn name_index_key(pool_index: u64, value: &[u8]) -> RecordKey {
    let digest = RecordKey::new(0, value).digest;
    let mut low = [0u8; 8];
    low.copy_from_slice(&digest[..8]);
    name_index_partition().key(paytx_protocol::ids::sort_key(pool_index, u64::from_be_bytes(low)))
}

/// The key `index` of the pool of namespace `ns`.
pub fn pool_key(ns: RecordNs, index: u64) -> RecordKey {
    let prefix = RECORD_POOLS.iter().find(|(pool, _, _)| *pool == ns).map_or("other", |(_, prefix, _)| prefix);
    RecordKey::new(ns, format!("{prefix}-{index}").as_bytes())
}

/// Every key the workload may write.
pub fn all_pool_keys() -> Vec<RecordKey> {
    RECORD_POOLS.iter().flat_map(|(ns, _, size)| (0..*size).map(move |index| pool_key(*ns, index))).collect()
}

pub fn request_label(request: &Request) -> String {
    match request {
        Request::Submit(txn) => format!("submit {} ({} ops)", txn.key, txn.ops.len()),
        Request::GetAccount(account) => format!("read {account}"),
        Request::GetOrder(order) => format!("read {order}"),
        Request::GetCharge { channel, order } => format!("read charge {channel}/{order}"),
        Request::TxnStatus(key) => format!("status of {key}"),
        Request::NodeStatus => "node status".to_string(),
        Request::GetRecord(key) => format!("read {key}"),
        Request::ScanRecords { shard, ns, .. } => format!("scan records shard {shard} ns {ns}"),
        Request::ScanRange(scan) => format!("range of ns {} ({} entries at most)", scan.partition.ns, scan.limit),
    }
}

/// Shape of the workload (chosen from the seed).
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub clients: u64,
    /// Operations in all (a payment counts as one operation, two txns).
    pub operations: u64,
    pub accounts: u64,
    pub hot_accounts: u64,
    pub initial_balance_minor: i64,
    pub client_timeout_ms: u64,
    pub max_retries: u32,
}

/// What a client learned about one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// The cluster answered this outcome.
    Acked(Outcome),
    /// Retries ran out: the outcome is unknown to the client.
    Unknown,
    /// Refused before running (must not happen with this workload).
    Rejected(String),
}

#[derive(Debug, Clone)]
pub struct TxnRecord {
    pub request: TxnRequest,
    pub known: Known,
    pub attempts: u32,
}

/// Everything the clients did, in submission order.
#[derive(Debug, Default)]
pub struct History {
    pub txns: Vec<TxnRecord>,
    /// Orders whose payment was acknowledged committed: (order, payer, merchant, channel, amount).
    pub paid: Vec<(OrderId, AccountId, AccountId, ChannelId, i64)>,
    pub next_order: u64,
}

pub type SharedHistory = Arc<Mutex<History>>;

pub fn lock(history: &SharedHistory) -> std::sync::MutexGuard<'_, History> {
    history.lock().unwrap_or_else(|p| p.into_inner())
}

/// One client request over a simulated client link: delayed both ways,
/// possibly dropped, handled at the node in a task of its own.
pub async fn client_call(
    world: &World,
    client: u64,
    node: NodeId,
    request: Request,
    timeout_ms: u64,
) -> Option<Response> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let plan = {
        let mut state = world.lock();
        let service = state.nodes.get(&node).and_then(|slot| slot.endpoint.clone().map(|s| (slot.incarnation, s)));
        let p = state.faults.drop_per_million;
        let dropped = state.chance(p);
        let (delay, back) = (state.delay_ms(), state.delay_ms());
        service.map(|s| (s, dropped, delay, back))
    };
    let Some(((incarnation, service), dropped, delay, back)) = plan else {
        tokio::time::sleep(Duration::from_millis(1)).await;
        return None; // node down: connection refused
    };
    if !dropped {
        let world = world.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            {
                let mut state = world.lock();
                if !state.is_up(node, incarnation) {
                    return;
                }
                let at = state.now_ms();
                let label = || format!("client {client} -> {node} {}", request_label(&request));
                state.trace.record_encoded(at, label, &request);
            }
            let response = service.handle_request(request, true).await;
            tokio::time::sleep(Duration::from_millis(back)).await;
            let alive = world.lock().is_up(node, incarnation);
            if alive {
                let identity = paytx_protocol::encode(&response).unwrap_or_default();
                world.record(|| format!("{node} -> client {client} {}", response_label(&response)), &identity);
                let _ = tx.send(response);
            }
        });
    }
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(response)) => Some(response),
        Ok(Err(_)) => {
            tokio::time::sleep_until(deadline).await;
            None
        }
        Err(_) => None,
    }
}

fn response_label(response: &Response) -> String {
    match response {
        Response::Submitted(receipt) => {
            format!("{} {:?}{}", receipt.txn, receipt.outcome, if receipt.replayed { " (replay)" } else { "" })
        }
        Response::Error(e) => format!("error {e}"),
        other => format!("{:?}", std::mem::discriminant(other)),
    }
}

/// A simulated client.
pub struct Client {
    pub id: u64,
    pub world: World,
    pub nodes: Vec<NodeId>,
    pub rng: ChaCha8Rng,
    pub config: WorkloadConfig,
    pub history: SharedHistory,
}

impl Client {
    /// Submits `request`, retrying with the same key; records what it learned.
    pub async fn submit(&mut self, request: TxnRequest) -> Known {
        let mut attempts = 0;
        let mut known = Known::Unknown;
        while attempts <= self.config.max_retries {
            attempts += 1;
            let node = self.nodes[self.rng.gen_range(0..self.nodes.len())];
            let response = client_call(
                &self.world,
                self.id,
                node,
                Request::Submit(request.clone()),
                self.config.client_timeout_ms,
            )
            .await;
            match response {
                Some(Response::Submitted(receipt)) => {
                    known = Known::Acked(receipt.outcome);
                    break;
                }
                Some(Response::Error(e)) if !e.is_retryable() => {
                    known = Known::Rejected(e.to_string());
                    break;
                }
                // Transient error, timeout or a node that is down: back off
                // and retry the same request (same key: at most once).
                _ => {
                    let backoff = self.rng.gen_range(20..200u64) * u64::from(attempts);
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
            }
        }
        lock(&self.history).txns.push(TxnRecord { request, known: known.clone(), attempts });
        known
    }

    fn account(&mut self) -> AccountId {
        // Half the picks go to the few hot accounts: contention on holds.
        if self.rng.gen_bool(0.5) {
            AccountId(1 + self.rng.gen_range(0..self.config.hot_accounts.max(1)))
        } else {
            AccountId(1 + self.rng.gen_range(0..self.config.accounts))
        }
    }

    /// Runs `operations` operations.
    pub async fn run(mut self, operations: u64) {
        let id = self.id;
        for n in 0..operations {
            let key = |what: &str| format!("c{id}-{n}-{what}");
            // Every record value names its writer, so a lost or doubled
            // write shows in the value as well as in the version.
            let value = format!("c{id}-{n}").into_bytes();
            match self.rng.gen_range(0..16u32) {
                0..=3 => {
                    let (from, to) = (self.account(), self.account());
                    if from == to {
                        continue;
                    }
                    let amount = Money::new(self.rng.gen_range(1..3_000), CURRENCY);
                    let line = Operation::PutRecordAtCommit {
                        partition: journal_partition(),
                        number: journal_number(id, n),
                        value: value.clone(),
                    };
                    let mut ops = vec![
                        Operation::Debit { account: from, amount },
                        Operation::Credit { account: to, amount },
                        line,
                    ];
                    if self.rng.gen_bool(0.4) {
                        // A payment with a nonce: a replayed nonce aborts the money too.
                        let nonce = pool_key(NONCES_NS, self.rng.gen_range(0..40));
                        ops.push(Operation::PutRecord { key: nonce, value: Some(value), expect: RecordExpect::Absent });
                    }
                    self.submit(TxnRequest::new(key("transfer"), ops)).await;
                }
                4..=7 => self.payment(key("order"), key("pay")).await,
                8..=9 => self.refund(key("refund")).await,
                10..=11 => {
                    let index = self.rng.gen_range(0..12);
                    let name = pool_key(NAMES_NS, index);
                    let entry = Operation::PutRecord {
                        key: name_index_key(index, &value),
                        value: Some(value.clone()),
                        expect: RecordExpect::Absent,
                    };
                    let claim = Operation::PutRecord { key: name, value: Some(value), expect: RecordExpect::Absent };
                    self.submit(TxnRequest::new(key("claim"), vec![claim, entry])).await;
                }
                12 => self.compare_and_set(key("cas"), value).await,
                13 => self.close_any(key("close")).await,
                14 => self.chargeback(key("chargeback")).await,
                _ => {
                    let seen = pool_key(SEEN_NS, self.rng.gen_range(0..4));
                    let upsert = Operation::PutRecord { key: seen, value: Some(value), expect: RecordExpect::Any };
                    self.submit(TxnRequest::new(key("seen"), vec![upsert])).await;
                }
            }
        }
    }

    async fn payment(&mut self, create_key: String, pay_key: String) {
        let order = {
            let mut history = lock(&self.history);
            history.next_order += 1;
            OrderId(history.next_order)
        };
        let merchant = self.account();
        let payer = self.account();
        if merchant == payer {
            return;
        }
        let amount = Money::new(self.rng.gen_range(100..5_000), CURRENCY);
        let channel = ChannelId(1 + self.rng.gen_range(0..3));
        let create = TxnRequest::new(create_key, vec![Operation::CreateOrder { order, merchant, amount }]);
        if self.submit(create).await != Known::Acked(Outcome::Committed) {
            return;
        }
        if self.rng.gen_bool(0.15) {
            // An abandoned cart: the merchant closes the unpaid order.
            let close = TxnRequest::new(format!("{pay_key}-close"), vec![Operation::CloseOrder { order }]);
            self.submit(close).await;
            return;
        }
        let pay = TxnRequest::new(pay_key, paytx_protocol::ops::payment_ops(payer, merchant, order, channel, amount));
        if self.submit(pay).await == Known::Acked(Outcome::Committed) {
            lock(&self.history).paid.push((order, payer, merchant, channel, amount.amount_minor));
        }
    }

    /// Reads a claimed name and writes it back at the version read. Loses
    /// the race (aborts) when another write got there first.
    async fn compare_and_set(&mut self, key: String, value: Vec<u8>) {
        let index = self.rng.gen_range(0..12);
        let name = pool_key(NAMES_NS, index);
        let node = self.nodes[self.rng.gen_range(0..self.nodes.len())];
        let read = client_call(&self.world, self.id, node, Request::GetRecord(name), self.config.client_timeout_ms);
        let Some(Response::Record(Some(view))) = read.await else {
            return; // unclaimed, or the read failed: nothing to update
        };
        // The name's index entry moves with its value, in the same transaction.
        let ops = vec![
            Operation::PutRecord {
                key: name_index_key(index, &view.value),
                value: None,
                expect: RecordExpect::Version(1),
            },
            Operation::PutRecord {
                key: name_index_key(index, &value),
                value: Some(value.clone()),
                expect: RecordExpect::Absent,
            },
            Operation::PutRecord { key: name, value: Some(value), expect: RecordExpect::Version(view.version) },
        ];
        self.submit(TxnRequest::new(key, ops)).await;
    }

    /// Closes any order created so far, in whatever state it is: only an
    /// unpaid (`CREATED`) one may close; the others must abort.
    async fn close_any(&mut self, key: String) {
        let orders = lock(&self.history).next_order;
        if orders == 0 {
            return;
        }
        let order = OrderId(1 + self.rng.gen_range(0..orders));
        self.submit(TxnRequest::new(key, vec![Operation::CloseOrder { order }])).await;
    }

    /// A chargeback: the channel claws back part of a charge, the merchant
    /// pays it back to the payer, and the order is not touched. Sometimes
    /// more than the charge has left (up to one and a half times the
    /// charge): only the channel's own bound stands in the way, and it must
    /// abort.
    async fn chargeback(&mut self, key: String) {
        let Some((order, payer, merchant, channel, paid_minor)) = self.some_paid_order() else { return };
        let amount = Money::new(self.rng.gen_range(1..=(paid_minor.max(1) * 3 / 2).max(1)), CURRENCY);
        let request = TxnRequest::new(
            key,
            vec![
                Operation::ChannelRefund { channel, order, amount },
                Operation::Debit { account: merchant, amount },
                Operation::Credit { account: payer, amount },
            ],
        );
        self.submit(request).await;
    }

    /// One of the orders paid so far, drawn at random (`None` before any).
    fn some_paid_order(&mut self) -> Option<(OrderId, AccountId, AccountId, ChannelId, i64)> {
        let history = lock(&self.history);
        if history.paid.is_empty() {
            return None;
        }
        Some(history.paid[self.rng.gen_range(0..history.paid.len())])
    }

    async fn refund(&mut self, key: String) {
        let Some((order, payer, merchant, channel, paid_minor)) = self.some_paid_order() else { return };
        // Sometimes more than is left: must abort with a typed reason.
        let amount = Money::new(self.rng.gen_range(1..=paid_minor.max(1)), CURRENCY);
        let request = TxnRequest::new(
            key,
            vec![
                Operation::RefundOrder { order, amount },
                Operation::ChannelRefund { channel, order, amount },
                Operation::Debit { account: merchant, amount },
                Operation::Credit { account: payer, amount },
            ],
        );
        self.submit(request).await;
    }
}

/// Resolves every transaction whose outcome the client does not know, by
/// its idempotency key, once the cluster has settled.
pub async fn final_status(world: &World, nodes: &[NodeId], key: &IdempotencyKey) -> Option<KeyStatus> {
    for _ in 0..20 {
        for node in nodes {
            if let Some(Response::TxnStatus(status)) =
                client_call(world, CLIENT_ID_BASE - 1, *node, Request::TxnStatus(key.clone()), 2_000).await
            {
                return Some(status);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The opening deposits: account id → initial balance.
pub fn opening_balances(config: &WorkloadConfig) -> BTreeMap<AccountId, i64> {
    (1..=config.accounts).map(|id| (AccountId(id), config.initial_balance_minor)).collect()
}
