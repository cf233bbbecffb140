//! Handler-level tests of the gateway over real HTTP against an in-memory
//! model of the cluster (records, accounts, orders, charges with the same
//! preconditions as the participants). This isolates the gateway; the
//! end-to-end tests against real nodes are in the root crate's
//! `tests/gateway.rs`.

use paytx_gateway::store::ClusterApi;
use paytx_protocol::error::OrderStatus;
use paytx_protocol::messages::{AccountView, EntryView, NodeStatusView, OrderView, RecordPage, RecordView};
use paytx_protocol::txn::BodyHash;
use paytx_protocol::{
    AbortReason, AccountId, BoxFuture, ChannelId, Currency, Operation, OrderId, Outcome, RecordExpect, RecordKey,
    Request, RequestError, Response, TxnId, TxnReceipt,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

#[derive(Clone, Default)]
struct State {
    records: BTreeMap<RecordKey, (u64, Vec<u8>)>,
    accounts: BTreeMap<AccountId, (Currency, i64, Vec<EntryView>)>,
    orders: BTreeMap<OrderId, OrderView>,
    charges: BTreeSet<(ChannelId, OrderId)>,
}

#[derive(Default)]
pub struct MemoryCluster {
    state: Mutex<State>,
    keys: Mutex<BTreeMap<String, (BodyHash, Outcome)>>,
    seq: Mutex<u64>,
    /// Channels that decline every charge.
    pub declining: Mutex<BTreeSet<ChannelId>>,
    /// While above zero, each submit is applied (or replayed) as usual but
    /// answered with a timeout, as when the answer is lost after the
    /// commit; each such answer counts one down.
    pub lose_answers: std::sync::atomic::AtomicUsize,
    /// The commit time given to `PutRecordAtCommit` entries (Unix ms):
    /// the system clock unless set, as the coordinator's log time is.
    pub commit_at_ms: Mutex<Option<u64>>,
}

impl MemoryCluster {
    /// How many records of namespace `ns` exist.
    pub fn count(&self, ns: u16) -> usize {
        self.state.lock().unwrap().records.keys().filter(|k| k.ns == ns).count()
    }

    fn apply(&self, state: &mut State, txn: TxnId, op: &Operation) -> Result<(), AbortReason> {
        let entry = |delta: i64, after: i64| EntryView { txn, delta_minor: delta, balance_after_minor: after };
        match op {
            Operation::OpenAccount { account, currency, initial_minor } => {
                if state.accounts.contains_key(account) {
                    return Err(AbortReason::AccountExists(*account));
                }
                state
                    .accounts
                    .insert(*account, (*currency, *initial_minor, vec![entry(*initial_minor, *initial_minor)]));
            }
            Operation::Debit { account, amount } | Operation::Credit { account, amount } => {
                let (currency, balance, recent) =
                    state.accounts.get_mut(account).ok_or(AbortReason::UnknownAccount(*account))?;
                if *currency != amount.currency {
                    return Err(AbortReason::CurrencyMismatch {
                        entity: account.to_string(),
                        expected: *currency,
                        got: amount.currency,
                    });
                }
                let delta =
                    if matches!(op, Operation::Debit { .. }) { -amount.amount_minor } else { amount.amount_minor };
                if *balance + delta < 0 {
                    return Err(AbortReason::InsufficientFunds {
                        account: *account,
                        available_minor: *balance,
                        requested_minor: amount.amount_minor,
                    });
                }
                *balance += delta;
                recent.insert(0, entry(delta, *balance));
            }
            Operation::CreateOrder { order, merchant, amount } => {
                if state.orders.contains_key(order) {
                    return Err(AbortReason::OrderExists(*order));
                }
                state.orders.insert(
                    *order,
                    OrderView {
                        order: *order,
                        merchant: *merchant,
                        amount: *amount,
                        status: OrderStatus::Created,
                        refunded_minor: 0,
                    },
                );
            }
            Operation::MarkPaid { order, .. }
            | Operation::CloseOrder { order }
            | Operation::RefundOrder { order, .. } => {
                let view = state.orders.get_mut(order).ok_or(AbortReason::UnknownOrder(*order))?;
                let illegal = |action: &str| AbortReason::IllegalOrderTransition {
                    order: *order,
                    from: view.status,
                    action: action.into(),
                };
                match op {
                    Operation::MarkPaid { .. } if view.status == OrderStatus::Created => {
                        view.status = OrderStatus::Paid
                    }
                    Operation::MarkPaid { .. } => return Err(illegal("paid")),
                    Operation::CloseOrder { .. } if view.status == OrderStatus::Created => {
                        view.status = OrderStatus::Closed
                    }
                    Operation::CloseOrder { .. } => return Err(illegal("closed")),
                    Operation::RefundOrder { amount, .. }
                        if matches!(view.status, OrderStatus::Paid | OrderStatus::PartiallyRefunded) =>
                    {
                        if view.refunded_minor + amount.amount_minor > view.amount.amount_minor {
                            return Err(AbortReason::RefundExceedsPaid {
                                order: *order,
                                paid_minor: view.amount.amount_minor,
                                refunded_minor: view.refunded_minor,
                                requested_minor: amount.amount_minor,
                            });
                        }
                        view.refunded_minor += amount.amount_minor;
                        view.status = if view.refunded_minor == view.amount.amount_minor {
                            OrderStatus::Refunded
                        } else {
                            OrderStatus::PartiallyRefunded
                        };
                    }
                    _ => return Err(illegal("refunded")),
                }
            }
            Operation::Charge { channel, order, .. } => {
                if self.declining.lock().unwrap().contains(channel) {
                    return Err(AbortReason::ChannelDeclined { channel: *channel });
                }
                if !state.charges.insert((*channel, *order)) {
                    return Err(AbortReason::AlreadyCharged { channel: *channel, order: *order });
                }
            }
            Operation::ChannelRefund { channel, order, .. } => {
                if !state.charges.contains(&(*channel, *order)) {
                    return Err(AbortReason::ChargeNotFound { channel: *channel, order: *order });
                }
            }
            Operation::PutRecordAtCommit { partition, number, value } => {
                let now_ms = || {
                    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                    since.expect("the test machine's clock is after 1970").as_millis() as u64
                };
                let at_ms = self.commit_at_ms.lock().unwrap().unwrap_or_else(now_ms);
                let key = partition.key(paytx_protocol::ids::sort_key(at_ms, *number));
                let version = state.records.get(&key).map_or(1, |(v, _)| v + 1);
                state.records.insert(key, (version, value.clone()));
            }
            Operation::PutRecord { key, value, expect } => {
                let current = state.records.get(key).map(|(v, _)| *v);
                match (expect, current) {
                    (RecordExpect::Absent, Some(_)) => return Err(AbortReason::RecordExists { key: *key }),
                    (RecordExpect::Version(v), actual) if actual != Some(*v) => {
                        return Err(AbortReason::RecordVersionMismatch { key: *key, expected: *v, actual })
                    }
                    _ => {}
                }
                match value {
                    Some(value) => {
                        state.records.insert(*key, (current.unwrap_or(0) + 1, value.clone()));
                    }
                    None => {
                        state.records.remove(key);
                    }
                }
            }
        }
        Ok(())
    }

    fn handle(&self, request: Request) -> Response {
        let losing = matches!(request, Request::Submit(_))
            && self
                .lose_answers
                .fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| {
                    n.checked_sub(1)
                })
                .is_ok();
        let response = self.handle_now(request);
        if losing {
            return Response::Error(RequestError::Timeout { timeout_ms: 1 });
        }
        response
    }

    fn handle_now(&self, request: Request) -> Response {
        match request {
            Request::Submit(txn) => {
                if let Err(invalid) = txn.validate(64) {
                    return Response::Error(RequestError::Invalid(invalid));
                }
                let mut seq = self.seq.lock().unwrap();
                *seq += 1;
                let id = TxnId { term: 1, node: 1, seq: *seq };
                let hash = txn.body_hash();
                if let Some((seen, outcome)) = self.keys.lock().unwrap().get(&txn.key.0) {
                    if *seen != hash {
                        return Response::Error(RequestError::IdempotencyConflict { key: txn.key.0.clone() });
                    }
                    return Response::Submitted(TxnReceipt { txn: id, outcome: outcome.clone(), replayed: true });
                }
                let mut state = self.state.lock().unwrap();
                let mut next = state.clone();
                let mut outcome = Outcome::Committed;
                for op in &txn.ops {
                    if let Err(reason) = self.apply(&mut next, id, op) {
                        outcome = Outcome::Aborted(reason);
                        break;
                    }
                }
                if outcome.is_committed() {
                    *state = next;
                }
                self.keys.lock().unwrap().insert(txn.key.0.clone(), (hash, outcome.clone()));
                Response::Submitted(TxnReceipt { txn: id, outcome, replayed: false })
            }
            Request::GetAccount(account) => {
                let state = self.state.lock().unwrap();
                Response::Account(state.accounts.get(&account).map(|(currency, balance, recent)| AccountView {
                    account,
                    currency: *currency,
                    balance_minor: *balance,
                    held_minor: 0,
                    recent: recent.iter().take(20).cloned().collect(),
                }))
            }
            Request::GetOrder(order) => Response::Order(self.state.lock().unwrap().orders.get(&order).cloned()),
            Request::GetRecord(key) => {
                Response::Record(self.state.lock().unwrap().records.get(&key).map(|(version, value)| RecordView {
                    key,
                    version: *version,
                    value: value.clone(),
                }))
            }
            Request::ScanRecords { ns, after, limit, .. } => {
                let state = self.state.lock().unwrap();
                let mut records: Vec<RecordView> = state
                    .records
                    .iter()
                    .filter(|(k, _)| k.ns == ns && after.is_none_or(|a| **k > a))
                    .take(limit as usize + 1)
                    .map(|(k, (v, value))| RecordView { key: *k, version: *v, value: value.clone() })
                    .collect();
                let more = records.len() > limit as usize;
                records.truncate(limit as usize);
                Response::Records(RecordPage { records, more, shard_count: 1 })
            }
            Request::ScanRange(scan) => {
                // The same answer as a records shard: the partition's keys
                // with a sort key in from..=to, in order, after the cursor.
                let state = self.state.lock().unwrap();
                let inside = |key: &RecordKey| {
                    let sort = key.sort();
                    key.partition() == Some(scan.partition)
                        && scan.from <= sort
                        && sort <= scan.to
                        && scan.after.is_none_or(|after| if scan.descending { sort < after } else { sort > after })
                };
                let mut matching: Vec<RecordView> = state
                    .records
                    .iter()
                    .filter(|(k, _)| inside(k))
                    .map(|(k, (v, value))| RecordView { key: *k, version: *v, value: value.clone() })
                    .collect();
                if scan.descending {
                    matching.reverse();
                }
                let limit = scan.limit.min(paytx_protocol::ops::MAX_SCAN_RECORDS) as usize;
                let more = matching.len() > limit;
                matching.truncate(limit);
                Response::Records(RecordPage { records: matching, more, shard_count: 1 })
            }
            Request::NodeStatus => Response::NodeStatus(NodeStatusView {
                node: 1,
                raft_term: Some(1),
                leader: Some(1),
                coordinator_ready: true,
                last_applied_index: None,
                snapshot_index: None,
                undecided_txns: 0,
                unacked_txns: 0,
                shards: Vec::new(),
                raft_proposals: 0,
                raft_proposed_commands: 0,
                disk_syncs: 0,
                disk_flushes: 0,
                local: Box::default(),
            }),
            other => Response::Error(RequestError::Internal(format!("not modelled: {other:?}"))),
        }
    }
}

impl ClusterApi for MemoryCluster {
    fn call(&self, request: Request) -> BoxFuture<Response> {
        let response = self.handle(request);
        Box::pin(async move { response })
    }
}
