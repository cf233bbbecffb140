//! Client drivers: concurrent loops of transfers, payments (create an
//! order, then pay it) and refunds over a few hot accounts, each submitted
//! with its own idempotency key and retried with the same key after a
//! timeout or a transient error, exactly as a real service does. Every
//! transaction and what the client learned about it is recorded in the
//! [`History`] the final check replays.

use crate::client::Client;
use paytx_protocol::{AccountId, ChannelId, Currency, Money, Operation, OrderId, Outcome, TxnId, TxnRequest};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CURRENCY: Currency = Currency::CNY;
pub const CHANNELS: u64 = 3;

/// Shape of the workload.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub accounts: u64,
    /// Half of all account picks go to accounts `1..=hot_accounts`.
    pub hot_accounts: u64,
    /// Submits of one transaction before its outcome counts as unknown.
    pub max_attempts: u32,
    /// Chance (per mille) of resubmitting an acknowledged transaction on
    /// purpose, to see it replayed rather than applied again.
    pub duplicate_per_mille: u32,
}

/// What a client learned about one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    Acked {
        outcome: Outcome,
        txn: TxnId,
    },
    /// Retries ran out: the outcome is unknown to the client.
    Unknown {
        last_error: String,
    },
    /// Refused as invalid (must not happen with this workload).
    Rejected(String),
}

#[derive(Debug, Clone)]
pub struct TxnRecord {
    pub request: TxnRequest,
    pub known: Known,
    pub attempts: u32,
}

/// A deliberate resubmission of an acknowledged transaction that was not
/// answered as a replay of the same outcome: the key was applied twice (or
/// its outcome changed).
#[derive(Debug, Clone)]
pub struct DuplicateMismatch {
    pub key: String,
    pub first: Known,
    pub second: String,
}

/// Everything the drivers did.
#[derive(Debug, Default)]
pub struct History {
    pub txns: Vec<TxnRecord>,
    /// Orders whose payment was acknowledged committed.
    pub paid: Vec<Paid>,
    /// Milliseconds (since the fault phase began) of every acknowledged
    /// commit, and of every acknowledged abort.
    pub commit_times_ms: Vec<u64>,
    pub abort_times_ms: Vec<u64>,
    /// `(at_ms, node)` each time the node that began an acknowledged
    /// transaction (its id's `node`: the coordinator leader then) changed.
    pub leaders_seen: Vec<(u64, u64)>,
    pub duplicates_sent: u64,
    pub duplicate_mismatches: Vec<DuplicateMismatch>,
}

#[derive(Debug, Clone, Copy)]
pub struct Paid {
    pub order: OrderId,
    pub payer: AccountId,
    pub merchant: AccountId,
    pub channel: ChannelId,
    pub amount_minor: i64,
}

/// Shared between the drivers and the harness.
#[derive(Clone)]
pub struct Shared {
    pub history: Arc<Mutex<History>>,
    pub next_order: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
    pub started: Instant,
}

impl Shared {
    pub fn new(started: Instant) -> Shared {
        Shared {
            history: Arc::default(),
            next_order: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            started,
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Highest order id handed out.
    pub fn orders(&self) -> u64 {
        self.next_order.load(Ordering::SeqCst)
    }
}

/// One client driver.
pub struct Driver {
    pub id: u64,
    pub client: Client,
    pub rng: ChaCha8Rng,
    pub config: WorkloadConfig,
    pub shared: Shared,
}

impl Driver {
    pub fn new(id: u64, client: Client, seed: u64, config: WorkloadConfig, shared: Shared) -> Driver {
        Driver { id, client, rng: ChaCha8Rng::seed_from_u64(seed), config, shared }
    }

    /// Runs operations until the stop flag is set.
    pub async fn run(mut self) {
        let mut n = 0u64;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let id = self.id;
            let key = |what: &str| format!("c{id}-{n}-{what}");
            match self.rng.gen_range(0..10u32) {
                0..=3 => {
                    let (from, to) = (self.account(), self.account());
                    if from != to {
                        let amount = Money::new(self.rng.gen_range(1..3_000), CURRENCY);
                        let ops =
                            vec![Operation::Debit { account: from, amount }, Operation::Credit { account: to, amount }];
                        self.submit(TxnRequest::new(key("transfer"), ops)).await;
                    }
                }
                4..=7 => self.payment(key("order"), key("pay")).await,
                _ => self.refund(key("refund")).await,
            }
            n += 1;
        }
    }

    fn account(&mut self) -> AccountId {
        if self.rng.gen_bool(0.5) {
            AccountId(1 + self.rng.gen_range(0..self.config.hot_accounts.clamp(1, self.config.accounts)))
        } else {
            AccountId(1 + self.rng.gen_range(0..self.config.accounts))
        }
    }

    async fn payment(&mut self, create_key: String, pay_key: String) {
        let (merchant, payer) = (self.account(), self.account());
        if merchant == payer {
            return;
        }
        let order = OrderId(self.shared.next_order.fetch_add(1, Ordering::SeqCst) + 1);
        let amount = Money::new(self.rng.gen_range(100..5_000), CURRENCY);
        let channel = ChannelId(1 + self.rng.gen_range(0..CHANNELS));
        let create = TxnRequest::new(create_key, vec![Operation::CreateOrder { order, merchant, amount }]);
        if !self.submit(create).await {
            return;
        }
        let pay = TxnRequest::new(pay_key, paytx_protocol::ops::payment_ops(payer, merchant, order, channel, amount));
        if self.submit(pay).await {
            let paid = Paid { order, payer, merchant, channel, amount_minor: amount.amount_minor };
            self.shared.lock().paid.push(paid);
        }
    }

    async fn refund(&mut self, key: String) {
        let paid = {
            let history = self.shared.lock();
            if history.paid.is_empty() {
                return;
            }
            history.paid[self.rng.gen_range(0..history.paid.len())]
        };
        // Sometimes more than is left: must abort, applying nothing.
        let amount = Money::new(self.rng.gen_range(1..=paid.amount_minor.max(1)), CURRENCY);
        let order = paid.order;
        let ops = vec![
            Operation::RefundOrder { order, amount },
            Operation::ChannelRefund { channel: paid.channel, order, amount },
            Operation::Debit { account: paid.merchant, amount },
            Operation::Credit { account: paid.payer, amount },
        ];
        self.submit(TxnRequest::new(key, ops)).await;
    }

    /// Submits with retries under the same key; records the outcome.
    /// `true` when acknowledged committed.
    async fn submit(&mut self, request: TxnRequest) -> bool {
        // Recorded before the first submit: a driver stopped mid-way still
        // leaves the key for the check to resolve.
        let index = {
            let mut history = self.shared.lock();
            let last_error = "not finished".to_string();
            history.txns.push(TxnRecord {
                request: request.clone(),
                known: Known::Unknown { last_error },
                attempts: 1,
            });
            history.txns.len() - 1
        };
        let mut attempts = 0u32;
        let known = loop {
            attempts += 1;
            match self.client.submit(request.clone()).await {
                Ok(receipt) => break Known::Acked { outcome: receipt.outcome, txn: receipt.txn },
                Err(e) if !e.is_retryable() => break Known::Rejected(e.to_string()),
                Err(e) if attempts >= self.config.max_attempts => break Known::Unknown { last_error: e.to_string() },
                Err(_) => {
                    // The client already backed off between its own retries;
                    // a little more here spreads the drivers out.
                    let backoff_ms = self.rng.gen_range(50..300u64);
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                }
            }
        };
        let committed = matches!(known, Known::Acked { outcome: Outcome::Committed, .. });
        if let Known::Acked { txn, .. } = &known {
            let at_ms = self.shared.started.elapsed().as_millis() as u64;
            let mut history = self.shared.lock();
            if committed {
                history.commit_times_ms.push(at_ms);
            } else {
                history.abort_times_ms.push(at_ms);
            }
            if history.leaders_seen.last().map(|(_, node)| *node) != Some(txn.node) {
                history.leaders_seen.push((at_ms, txn.node));
            }
        }
        if matches!(known, Known::Acked { .. }) && self.rng.gen_range(0..1_000) < self.config.duplicate_per_mille {
            self.resubmit(&request, &known).await;
        }
        if let Some(record) = self.shared.lock().txns.get_mut(index) {
            record.known = known;
            record.attempts = attempts;
        }
        committed
    }

    /// Sends an acknowledged transaction again: the answer must be a replay
    /// of the same outcome under the same transaction id.
    async fn resubmit(&mut self, request: &TxnRequest, first: &Known) {
        let second = self.client.submit(request.clone()).await;
        let mismatch = match (&second, first) {
            (Ok(receipt), Known::Acked { outcome, txn }) => {
                (!receipt.replayed || receipt.outcome != *outcome || receipt.txn != *txn)
                    .then(|| format!("{receipt:?}"))
            }
            // Unavailable right now (a fault is on): not a verdict.
            (Err(e), _) if e.is_retryable() => None,
            (Err(e), _) => Some(format!("error: {e}")),
            (Ok(receipt), _) => Some(format!("{receipt:?}")),
        };
        let mut history = self.shared.lock();
        history.duplicates_sent += 1;
        if let Some(second) = mismatch {
            history.duplicate_mismatches.push(DuplicateMismatch {
                key: request.key.to_string(),
                first: first.clone(),
                second,
            });
        }
    }
}
