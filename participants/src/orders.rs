//! Orders: the order state machine of one order shard.
//!
//! `CREATED → PAID → PARTIALLY_REFUNDED ⇄ … → REFUNDED`, `CREATED → CLOSED`.
//! A prepared transaction *locks* every order it touches (creating one
//! reserves its id), so the after-image computed at prepare is exactly what
//! the commit writes: nobody else can move the order in between.

use crate::amounts::non_positive_amount;
use paytx_protocol::error::OrderStatus;
use paytx_protocol::messages::OrderView;
use paytx_protocol::{AbortReason, AccountId, Money, Operation, OrderId, TxnId};
use serde::{Deserialize, Serialize};
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

/// An order as committed (the durable after-image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub merchant: AccountId,
    pub amount: Money,
    pub status: OrderStatus,
    /// Sum of committed refunds; never above `amount`.
    pub refunded_minor: i64,
}

/// What one prepared transaction will write: the after-image of every order
/// it touches (all of them locked by it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OrderPlan {
    after: BTreeMap<OrderId, Order>,
}

/// The order shard's state.
#[derive(Debug, Default)]
pub(crate) struct OrdersState {
    /// Committed orders: a persistent map, so a snapshot's copy is O(1)
    /// under the state lock (see `Engine::capture`).
    orders: imbl::OrdMap<OrderId, Order>,
    /// Orders (existing or being created) locked by a prepared transaction.
    locks: BTreeMap<OrderId, TxnId>,
}

impl OrdersState {
    /// Validates `ops` in order against a scratch copy and, only if all pass,
    /// locks the touched orders for `txn`. On error nothing has changed.
    pub(crate) fn prepare(&mut self, txn: TxnId, ops: &[Operation]) -> Result<OrderPlan, AbortReason> {
        let mut scratch: BTreeMap<OrderId, Order> = BTreeMap::new();
        for op in ops {
            self.validate(&mut scratch, op)?;
        }
        for id in scratch.keys() {
            self.locks.insert(*id, txn);
        }
        Ok(OrderPlan { after: scratch })
    }

    fn validate(&self, scratch: &mut BTreeMap<OrderId, Order>, op: &Operation) -> Result<(), AbortReason> {
        match op {
            Operation::CreateOrder { order, merchant, amount } => {
                if scratch.contains_key(order) || self.orders.contains_key(order) {
                    return Err(AbortReason::OrderExists(*order));
                }
                if self.locks.contains_key(order) {
                    return Err(conflict(*order));
                }
                if amount.amount_minor <= 0 {
                    return Err(non_positive_amount(order, amount.amount_minor));
                }
                scratch.insert(
                    *order,
                    Order { merchant: *merchant, amount: *amount, status: OrderStatus::Created, refunded_minor: 0 },
                );
                Ok(())
            }
            Operation::MarkPaid { order: id, amount } => {
                let order = self.scratch_of(scratch, *id)?;
                if order.status != OrderStatus::Created {
                    return Err(illegal(*id, order.status, "marked paid"));
                }
                check_currency(*id, order.amount, *amount)?;
                if amount.amount_minor != order.amount.amount_minor {
                    return Err(AbortReason::AmountMismatch {
                        order: *id,
                        expected_minor: order.amount.amount_minor,
                        got_minor: amount.amount_minor,
                    });
                }
                order.status = OrderStatus::Paid;
                Ok(())
            }
            Operation::RefundOrder { order: id, amount } => {
                let order = self.scratch_of(scratch, *id)?;
                if !matches!(order.status, OrderStatus::Paid | OrderStatus::PartiallyRefunded) {
                    return Err(illegal(*id, order.status, "refunded"));
                }
                check_currency(*id, order.amount, *amount)?;
                if amount.amount_minor <= 0 {
                    return Err(non_positive_amount(id, amount.amount_minor));
                }
                let paid_minor = order.amount.amount_minor;
                let before_minor = order.refunded_minor;
                let exceeds = || AbortReason::RefundExceedsPaid {
                    order: *id,
                    paid_minor,
                    refunded_minor: before_minor,
                    requested_minor: amount.amount_minor,
                };
                // 0 ≤ refunded ≤ paid holds for every stored order; checked
                // anyway, an overflow being just another way of exceeding.
                let left_minor = paid_minor.checked_sub(before_minor).ok_or_else(exceeds)?;
                if amount.amount_minor > left_minor {
                    return Err(exceeds());
                }
                let refunded_minor = before_minor.checked_add(amount.amount_minor).ok_or_else(exceeds)?;
                order.refunded_minor = refunded_minor;
                order.status =
                    if refunded_minor == paid_minor { OrderStatus::Refunded } else { OrderStatus::PartiallyRefunded };
                Ok(())
            }
            Operation::CloseOrder { order: id } => {
                let order = self.scratch_of(scratch, *id)?;
                let closable = order.status == OrderStatus::Created
                    || (order.status == OrderStatus::Paid
                        && paytx_protocol::planted::active(paytx_protocol::planted::Bug::ClosePaidOrder));
                if !closable {
                    return Err(illegal(*id, order.status, "closed"));
                }
                order.status = OrderStatus::Closed;
                Ok(())
            }
            other => Err(crate::engine::misrouted(other)),
        }
    }

    /// The order as this transaction sees it (its own earlier changes
    /// included); refused when another prepared transaction holds its lock.
    fn scratch_of<'s>(
        &self,
        scratch: &'s mut BTreeMap<OrderId, Order>,
        id: OrderId,
    ) -> Result<&'s mut Order, AbortReason> {
        match scratch.entry(id) {
            Entry::Occupied(entry) => Ok(entry.into_mut()),
            Entry::Vacant(entry) => {
                if self.locks.contains_key(&id) {
                    return Err(conflict(id));
                }
                let order = self.orders.get(&id).ok_or(AbortReason::UnknownOrder(id))?;
                Ok(entry.insert(*order))
            }
        }
    }

    /// Writes the after-images and unlocks. Returns what to journal.
    pub(crate) fn commit(&mut self, txn: TxnId, plan: OrderPlan) -> Vec<(OrderId, Order)> {
        for (id, order) in &plan.after {
            self.unlock(txn, *id);
            if let Err(problem) = check_order(*id, order) {
                panic!("order invariant broken by {txn}: {problem}");
            }
            self.orders.insert(*id, *order);
        }
        plan.after.into_iter().collect()
    }

    /// Unlocks without changing anything.
    pub(crate) fn abort(&mut self, txn: TxnId, plan: OrderPlan) {
        for id in plan.after.keys() {
            self.unlock(txn, *id);
        }
    }

    fn unlock(&mut self, txn: TxnId, id: OrderId) {
        let owner = self.locks.remove(&id);
        assert_eq!(owner, Some(txn), "{id} was locked by {txn} until its decision");
    }

    /// Every committed order, in id order (a snapshot of the shard): an
    /// O(1) clone that shares structure with the live map.
    pub(crate) fn committed_map(&self) -> imbl::OrdMap<OrderId, Order> {
        self.orders.clone()
    }

    /// Loads a committed order (recovery).
    pub(crate) fn restore(&mut self, id: OrderId, order: Order) -> Result<(), String> {
        check_order(id, &order)?;
        if self.orders.insert(id, order).is_some() {
            return Err(format!("{id} stored twice"));
        }
        Ok(())
    }

    pub(crate) fn view(&self, id: OrderId) -> Option<OrderView> {
        let order = self.orders.get(&id)?;
        Some(OrderView {
            order: id,
            merchant: order.merchant,
            amount: order.amount,
            status: order.status,
            refunded_minor: order.refunded_minor,
        })
    }

    pub(crate) fn entity_count(&self) -> usize {
        self.orders.len()
    }

    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        self.orders.iter().try_for_each(|(id, order)| check_order(*id, order))
    }
}

/// The refunded amount must agree with the status.
fn check_order(id: OrderId, order: &Order) -> Result<(), String> {
    let paid = order.amount.amount_minor;
    let refunded = order.refunded_minor;
    let consistent = paid > 0
        && match order.status {
            OrderStatus::Created | OrderStatus::Paid | OrderStatus::Closed => refunded == 0,
            OrderStatus::PartiallyRefunded => refunded > 0 && refunded < paid,
            OrderStatus::Refunded => refunded == paid,
        };
    if consistent {
        Ok(())
    } else {
        Err(format!("{id}: status {} with amount {paid} and refunded {refunded}", order.status))
    }
}

fn check_currency(id: OrderId, order_amount: Money, requested: Money) -> Result<(), AbortReason> {
    if order_amount.currency != requested.currency {
        return Err(AbortReason::CurrencyMismatch {
            entity: id.to_string(),
            expected: order_amount.currency,
            got: requested.currency,
        });
    }
    Ok(())
}

fn illegal(order: OrderId, from: OrderStatus, action: &str) -> AbortReason {
    AbortReason::IllegalOrderTransition { order, from, action: action.to_string() }
}

fn conflict(order: OrderId) -> AbortReason {
    AbortReason::Conflict { entity: order.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paytx_protocol::Currency;

    fn txn(seq: u64) -> TxnId {
        TxnId { term: 1, node: 1, seq }
    }

    fn cny(minor: i64) -> Money {
        Money::new(minor, Currency::CNY)
    }

    fn create(id: u64, minor: i64) -> Operation {
        Operation::CreateOrder { order: OrderId(id), merchant: AccountId(9), amount: cny(minor) }
    }

    fn run(state: &mut OrdersState, seq: u64, ops: &[Operation]) -> Result<(), AbortReason> {
        let plan = state.prepare(txn(seq), ops)?;
        state.commit(txn(seq), plan);
        Ok(())
    }

    #[test]
    fn create_pay_close_in_one_transaction_composes_in_order() {
        let mut state = OrdersState::default();
        run(&mut state, 1, &[create(1, 50), Operation::MarkPaid { order: OrderId(1), amount: cny(50) }]).unwrap();
        assert_eq!(state.view(OrderId(1)).unwrap().status, OrderStatus::Paid);
        let err = run(&mut state, 2, &[Operation::CloseOrder { order: OrderId(1) }]).unwrap_err();
        assert!(matches!(err, AbortReason::IllegalOrderTransition { from: OrderStatus::Paid, .. }));
    }

    #[test]
    fn currency_mismatch_is_refused() {
        let mut state = OrdersState::default();
        run(&mut state, 1, &[create(1, 50)]).unwrap();
        let err =
            run(&mut state, 2, &[Operation::MarkPaid { order: OrderId(1), amount: Money::new(50, Currency::USD) }])
                .unwrap_err();
        assert!(matches!(err, AbortReason::CurrencyMismatch { .. }));
    }

    #[test]
    fn a_second_concurrent_create_conflicts() {
        let mut state = OrdersState::default();
        let plan = state.prepare(txn(1), &[create(1, 50)]).unwrap();
        assert!(matches!(state.prepare(txn(2), &[create(1, 50)]), Err(AbortReason::Conflict { .. })));
        assert!(matches!(
            state.prepare(txn(2), &[Operation::CloseOrder { order: OrderId(1) }]),
            Err(AbortReason::Conflict { .. })
        ));
        state.abort(txn(1), plan);
        assert!(state.locks.is_empty() && state.orders.is_empty());
    }
}
