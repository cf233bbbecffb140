//! The invariants, checked against the real state of the settled cluster.
//!
//! The model replays every committed transaction (by what the clients were
//! told, and for the rest by the outcome recorded under its idempotency key)
//! over the opening balances. Any difference with the participants' actual
//! state is a broken invariant: a transaction half-applied, applied twice,
//! or an acknowledged commit lost.

use paytx_protocol::error::OrderStatus;
use paytx_protocol::messages::{AccountView, ChargeView, OrderView, RecordView};
use paytx_protocol::{AccountId, ChannelId, Operation, OrderId, RecordExpect, RecordKey};
use std::collections::BTreeMap;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// What the history says the state must be.
#[derive(Debug, Default)]
pub struct Model {
    pub balances: BTreeMap<AccountId, i64>,
    pub orders: BTreeMap<OrderId, (i64, OrderStatus, i64)>,
    pub charges: BTreeMap<(ChannelId, OrderId), (i64, i64)>,
    /// Records: (version, value). The version must equal the number of
    /// committed writes since the record's creation.
    pub records: BTreeMap<RecordKey, (u64, Vec<u8>)>,
}

impl Model {
    pub fn new(opening: &BTreeMap<AccountId, i64>) -> Self {
        Model { balances: opening.clone(), ..Model::default() }
    }

    /// Applies a committed transaction. `Err` when the transaction could not
    /// have committed from this state (the state machine was bypassed).
    pub fn apply(&mut self, ops: &[Operation]) -> Result<(), String> {
        for op in ops {
            match op {
                Operation::OpenAccount { account, initial_minor, .. } => {
                    self.balances.insert(*account, *initial_minor);
                }
                Operation::Debit { account, amount } => {
                    *self.balances.entry(*account).or_default() -= amount.amount_minor;
                }
                Operation::Credit { account, amount } => {
                    *self.balances.entry(*account).or_default() += amount.amount_minor;
                }
                Operation::CreateOrder { order, amount, .. } => {
                    self.orders.insert(*order, (amount.amount_minor, OrderStatus::Created, 0));
                }
                Operation::MarkPaid { order, .. } => {
                    let entry = self.orders.get_mut(order).ok_or(format!("{order} paid before it was created"))?;
                    if entry.1 != OrderStatus::Created {
                        return Err(format!("{order} paid while {}", entry.1));
                    }
                    entry.1 = OrderStatus::Paid;
                }
                Operation::RefundOrder { order, amount } => {
                    let entry = self.orders.get_mut(order).ok_or(format!("{order} refunded before it was created"))?;
                    if !matches!(entry.1, OrderStatus::Paid | OrderStatus::PartiallyRefunded) {
                        return Err(format!("{order} refunded while {}", entry.1));
                    }
                    entry.2 += amount.amount_minor;
                    if entry.2 > entry.0 {
                        return Err(format!("{order} refunded {} of {}", entry.2, entry.0));
                    }
                    entry.1 = if entry.2 == entry.0 { OrderStatus::Refunded } else { OrderStatus::PartiallyRefunded };
                }
                Operation::CloseOrder { order } => {
                    if let Some(entry) = self.orders.get_mut(order) {
                        entry.1 = OrderStatus::Closed;
                    }
                }
                Operation::Charge { channel, order, amount } => {
                    if self.charges.insert((*channel, *order), (amount.amount_minor, 0)).is_some() {
                        return Err(format!("{order} charged twice through {channel}"));
                    }
                }
                Operation::ChannelRefund { channel, order, amount } => {
                    let entry =
                        self.charges.get_mut(&(*channel, *order)).ok_or(format!("refund of an uncharged {order}"))?;
                    entry.1 += amount.amount_minor;
                }
                Operation::PutRecord { key, value, expect } => {
                    let version = self.records.get(key).map(|(version, _)| *version);
                    let holds = match expect {
                        RecordExpect::Any => true,
                        RecordExpect::Absent => version.is_none(),
                        RecordExpect::Version(expected) => version == Some(*expected),
                    };
                    if !holds {
                        return Err(format!("{key} written with {expect:?} while at version {version:?}"));
                    }
                    match value {
                        Some(value) => {
                            self.records.insert(*key, (version.map_or(1, |v| v + 1), value.clone()));
                        }
                        None => {
                            self.records.remove(key);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The actual state, read from the participants.
#[derive(Debug, Default)]
pub struct Actual {
    pub accounts: BTreeMap<AccountId, Option<AccountView>>,
    pub orders: BTreeMap<OrderId, Option<OrderView>>,
    pub charges: BTreeMap<(ChannelId, OrderId), Option<ChargeView>>,
    pub records: BTreeMap<RecordKey, Option<RecordView>>,
}

/// Checks the settled state against the model.
pub fn check_state(model: &Model, actual: &Actual, deposited: i64) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut push = |invariant: &'static str, detail: String| violations.push(Violation { invariant, detail });
    let total: i64 = actual.accounts.values().flatten().map(|a| a.balance_minor).sum();
    if total != deposited {
        push("money-conserved", format!("deposited {deposited}, balances sum to {total}"));
    }
    for (account, view) in &actual.accounts {
        let Some(view) = view else {
            push("all-or-nothing", format!("{account} vanished"));
            continue;
        };
        if view.balance_minor < 0 {
            push("no-negative-balance", format!("{account} at {}", view.balance_minor));
        }
        if view.held_minor != 0 {
            push("nothing-in-doubt", format!("{account} still holds {}", view.held_minor));
        }
        let expected = model.balances.get(account).copied().unwrap_or(0);
        if view.balance_minor != expected {
            push(
                "all-or-nothing",
                format!("{account}: balance {} but the committed transactions give {expected}", view.balance_minor),
            );
        }
    }
    for (order, view) in &actual.orders {
        let expected = model.orders.get(order);
        match (view, expected) {
            (None, None) => {}
            (Some(view), Some((amount, status, refunded))) => {
                if view.status != *status || view.refunded_minor != *refunded || view.amount.amount_minor != *amount {
                    push(
                        "order-state-machine",
                        format!(
                            "{order}: {} refunded {} but the committed transactions give {status} refunded {refunded}",
                            view.status, view.refunded_minor
                        ),
                    );
                }
                if view.refunded_minor > view.amount.amount_minor {
                    push(
                        "refund-within-paid",
                        format!("{order}: refunded {} of {}", view.refunded_minor, view.amount.amount_minor),
                    );
                }
            }
            (view, expected) => {
                push("all-or-nothing", format!("{order}: exists {} / expected {}", view.is_some(), expected.is_some()))
            }
        }
    }
    for (key, view) in &actual.charges {
        let expected = model.charges.get(key);
        let got = view.as_ref().map(|c| (c.charged.amount_minor, c.refunded_minor));
        if got != expected.copied() {
            push(
                "all-or-nothing",
                format!("charge {}/{}: {got:?}, committed transactions give {expected:?}", key.0, key.1),
            );
        }
    }
    for (key, view) in &actual.records {
        let expected = model.records.get(key);
        let got = view.as_ref().map(|r| (r.version, &r.value));
        if got != expected.map(|(version, value)| (*version, value)) {
            push(
                "record-writes-exactly-once",
                format!(
                    "{key}: version {:?} but the committed transactions give version {:?}",
                    got.map(|g| g.0),
                    expected.map(|e| e.0)
                ),
            );
        }
    }
    violations
}
