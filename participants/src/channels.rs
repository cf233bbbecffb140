//! Channels: the charges recorded by one channel shard, per (channel, order).
//!
//! Channels are configured ([`ChannelConfig`]), not opened by operations. A
//! prepared charge or channel refund *locks* its (channel, order) charge, so
//! the after-image computed at prepare is what the commit writes. Whether the
//! external channel declines is not decided here: the actor models the
//! channel (latency, seeded declines) before calling the engine, so the
//! engine stays pure.

use crate::amounts::non_positive_amount;
use paytx_protocol::messages::ChargeView;
use paytx_protocol::{AbortReason, ChannelId, Money, Operation, OrderId, TxnId};
use serde::{Deserialize, Serialize};
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

/// The kind of external payment channel a route goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    BankCard,
    Alipay,
    WechatPay,
}

/// One configured channel route and its failure model. Part of the cluster
/// configuration: every node must be given the same list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelConfig {
    pub id: ChannelId,
    pub kind: ChannelKind,
    pub name: String,
    /// Probability that the channel declines a charge, in parts per million
    /// (integer, so configurations compare and hash exactly).
    pub decline_per_million: u32,
    /// How long the channel takes to authorize a charge.
    pub authorize_latency_ms: u64,
}

/// Most parts per million a decline rate can have (100%).
pub const MAX_DECLINE_PER_MILLION: u32 = 1_000_000;

/// The three stock channels: 1 = bank card, 2 = Alipay, 3 = WeChat Pay, none
/// of them declining, all answering within a few milliseconds.
pub fn default_channels() -> Vec<ChannelConfig> {
    vec![
        ChannelConfig {
            id: ChannelId(1),
            kind: ChannelKind::BankCard,
            name: "bank_card".to_string(),
            decline_per_million: 0,
            authorize_latency_ms: 8,
        },
        ChannelConfig {
            id: ChannelId(2),
            kind: ChannelKind::Alipay,
            name: "alipay".to_string(),
            decline_per_million: 0,
            authorize_latency_ms: 5,
        },
        ChannelConfig {
            id: ChannelId(3),
            kind: ChannelKind::WechatPay,
            name: "wechat".to_string(),
            decline_per_million: 0,
            authorize_latency_ms: 5,
        },
    ]
}

/// A charge as committed (the durable after-image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub charged: Money,
    /// Sum of committed channel refunds; never above `charged`.
    pub refunded_minor: i64,
}

/// A charge is addressed by its channel and the order it paid.
pub(crate) type ChargeKey = (ChannelId, OrderId);

/// What one prepared transaction will write: the after-image of every
/// charge it touches (all of them locked by it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChargePlan {
    after: BTreeMap<ChargeKey, Charge>,
}

/// The channel shard's state.
#[derive(Debug, Default)]
pub(crate) struct ChannelsState {
    channels: BTreeMap<ChannelId, ChannelConfig>,
    /// Committed charges: a persistent map, so a snapshot's copy is O(1)
    /// under the state lock (see `Engine::capture`).
    charges: imbl::OrdMap<ChargeKey, Charge>,
    /// Charges (existing or being made) locked by a prepared transaction.
    locks: BTreeMap<ChargeKey, TxnId>,
}

/// Whether a charge's channel must be in the current configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Configured {
    Required,
    /// A recovered prepared transaction (see `restore_prepared`).
    NotRequired,
}

impl ChannelsState {
    pub(crate) fn new(channels: &[ChannelConfig]) -> Self {
        ChannelsState { channels: channels.iter().map(|c| (c.id, c.clone())).collect(), ..ChannelsState::default() }
    }

    pub(crate) fn channel(&self, id: ChannelId) -> Option<&ChannelConfig> {
        self.channels.get(&id)
    }

    /// Validates `ops` in order and, only if all pass, locks the touched
    /// charges for `txn`. On error nothing has changed.
    pub(crate) fn prepare(&mut self, txn: TxnId, ops: &[Operation]) -> Result<ChargePlan, AbortReason> {
        self.reserve(txn, ops, Configured::Required)
    }

    /// [`Self::prepare`] for a transaction recovered from the journal: it
    /// was voted YES under the configuration of its day, so a channel
    /// removed from the configuration since does not refuse it (its YES
    /// must be honoured; the charge is recorded on commit, or released on
    /// abort). Everything else is validated as usual.
    pub(crate) fn restore_prepared(&mut self, txn: TxnId, ops: &[Operation]) -> Result<ChargePlan, AbortReason> {
        self.reserve(txn, ops, Configured::NotRequired)
    }

    fn reserve(&mut self, txn: TxnId, ops: &[Operation], configured: Configured) -> Result<ChargePlan, AbortReason> {
        let mut scratch: BTreeMap<ChargeKey, Option<Charge>> = BTreeMap::new();
        for op in ops {
            self.validate(&mut scratch, op, configured)?;
        }
        let mut plan = ChargePlan::default();
        for (key, charge) in scratch {
            // Entries are only created by a lookup that went on to succeed or
            // by a charge, so every touched key has an after-image.
            let Some(charge) = charge else { continue };
            self.locks.insert(key, txn);
            plan.after.insert(key, charge);
        }
        Ok(plan)
    }

    fn validate(
        &self,
        scratch: &mut BTreeMap<ChargeKey, Option<Charge>>,
        op: &Operation,
        configured: Configured,
    ) -> Result<(), AbortReason> {
        match op {
            Operation::Charge { channel, order, amount } => {
                self.check_channel(*channel, configured)?;
                let key = (*channel, *order);
                // A committed charge is final: a second one is refused for
                // what it is, even while a refund of it holds the lock.
                if !scratch.contains_key(&key) && self.charges.contains_key(&key) {
                    return Err(AbortReason::AlreadyCharged { channel: *channel, order: *order });
                }
                let seen = self.scratch_of(scratch, key)?;
                if seen.is_some() {
                    return Err(AbortReason::AlreadyCharged { channel: *channel, order: *order });
                }
                if amount.amount_minor <= 0 {
                    return Err(non_positive_amount(format!("{channel}/{order}"), amount.amount_minor));
                }
                *seen = Some(Charge { charged: *amount, refunded_minor: 0 });
                Ok(())
            }
            Operation::ChannelRefund { channel, order, amount } => {
                self.check_channel(*channel, configured)?;
                let seen = self.scratch_of(scratch, (*channel, *order))?;
                let Some(charge) = seen.as_mut() else {
                    return Err(AbortReason::ChargeNotFound { channel: *channel, order: *order });
                };
                if charge.charged.currency != amount.currency {
                    return Err(AbortReason::CurrencyMismatch {
                        entity: format!("{channel}/{order}"),
                        expected: charge.charged.currency,
                        got: amount.currency,
                    });
                }
                if amount.amount_minor <= 0 {
                    return Err(non_positive_amount(format!("{channel}/{order}"), amount.amount_minor));
                }
                let paid_minor = charge.charged.amount_minor;
                let before_minor = charge.refunded_minor;
                let exceeds = || AbortReason::RefundExceedsPaid {
                    order: *order,
                    paid_minor,
                    refunded_minor: before_minor,
                    requested_minor: amount.amount_minor,
                };
                let left_minor = paid_minor.checked_sub(before_minor).ok_or_else(exceeds)?;
                if amount.amount_minor > left_minor
                    && !paytx_protocol::planted::active(paytx_protocol::planted::Bug::ChannelRefundUnbounded)
                {
                    return Err(exceeds());
                }
                charge.refunded_minor = before_minor.checked_add(amount.amount_minor).ok_or_else(exceeds)?;
                Ok(())
            }
            other => Err(crate::engine::misrouted(other)),
        }
    }

    fn check_channel(&self, channel: ChannelId, configured: Configured) -> Result<(), AbortReason> {
        if configured == Configured::NotRequired || self.channels.contains_key(&channel) {
            Ok(())
        } else {
            Err(AbortReason::UnknownChannel(channel))
        }
    }

    /// The charge as this transaction sees it (`None`: not charged yet);
    /// refused when another prepared transaction holds its lock.
    fn scratch_of<'s>(
        &self,
        scratch: &'s mut BTreeMap<ChargeKey, Option<Charge>>,
        key: ChargeKey,
    ) -> Result<&'s mut Option<Charge>, AbortReason> {
        match scratch.entry(key) {
            Entry::Occupied(entry) => Ok(entry.into_mut()),
            Entry::Vacant(entry) => {
                if self.locks.contains_key(&key) {
                    return Err(conflict(key));
                }
                Ok(entry.insert(self.charges.get(&key).copied()))
            }
        }
    }

    /// Writes the after-images and unlocks. Returns what to journal.
    pub(crate) fn commit(&mut self, txn: TxnId, plan: ChargePlan) -> Vec<(ChargeKey, Charge)> {
        for (key, charge) in &plan.after {
            self.unlock(txn, *key);
            if let Err(problem) = check_charge(*key, charge) {
                panic!("charge invariant broken by {txn}: {problem}");
            }
            self.charges.insert(*key, *charge);
        }
        plan.after.into_iter().collect()
    }

    pub(crate) fn abort(&mut self, txn: TxnId, plan: ChargePlan) {
        for key in plan.after.keys() {
            self.unlock(txn, *key);
        }
    }

    fn unlock(&mut self, txn: TxnId, key: ChargeKey) {
        let owner = self.locks.remove(&key);
        assert_eq!(owner, Some(txn), "{}/{} was locked by {txn} until its decision", key.0, key.1);
    }

    /// Every committed charge, in key order (a snapshot of the shard): an
    /// O(1) clone that shares structure with the live map.
    pub(crate) fn committed_map(&self) -> imbl::OrdMap<ChargeKey, Charge> {
        self.charges.clone()
    }

    /// Loads a committed charge (recovery). A charge on a channel that is no
    /// longer configured is kept: it happened, and stays readable.
    pub(crate) fn restore(&mut self, key: ChargeKey, charge: Charge) -> Result<(), String> {
        check_charge(key, &charge)?;
        if self.charges.insert(key, charge).is_some() {
            return Err(format!("{}/{} stored twice", key.0, key.1));
        }
        Ok(())
    }

    pub(crate) fn view(&self, channel: ChannelId, order: OrderId) -> Option<ChargeView> {
        let charge = self.charges.get(&(channel, order))?;
        Some(ChargeView { channel, order, charged: charge.charged, refunded_minor: charge.refunded_minor })
    }

    pub(crate) fn entity_count(&self) -> usize {
        self.charges.len()
    }

    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        self.charges.iter().try_for_each(|(key, charge)| check_charge(*key, charge))
    }
}

fn check_charge(key: ChargeKey, charge: &Charge) -> Result<(), String> {
    let charged = charge.charged.amount_minor;
    let unbounded = paytx_protocol::planted::active(paytx_protocol::planted::Bug::ChannelRefundUnbounded);
    if charged > 0 && charge.refunded_minor >= 0 && (charge.refunded_minor <= charged || unbounded) {
        Ok(())
    } else {
        Err(format!("{}/{}: charged {charged}, refunded {}", key.0, key.1, charge.refunded_minor))
    }
}

fn conflict(key: ChargeKey) -> AbortReason {
    AbortReason::Conflict { entity: format!("{}/{}", key.0, key.1) }
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

    #[test]
    fn default_channels_are_three_distinct_routes_that_never_decline() {
        let channels = default_channels();
        assert_eq!(channels.iter().map(|c| c.id.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(channels.iter().all(|c| c.decline_per_million == 0));
        assert_eq!(channels[2].name, "wechat");
    }

    #[test]
    fn unknown_channel_is_refused() {
        let mut state = ChannelsState::new(&default_channels());
        let charge = Operation::Charge { channel: ChannelId(42), order: OrderId(1), amount: cny(5) };
        assert_eq!(state.prepare(txn(1), &[charge]), Err(AbortReason::UnknownChannel(ChannelId(42))));
    }

    #[test]
    fn concurrent_charges_of_one_order_conflict_and_charge_then_refund_composes() {
        let mut state = ChannelsState::new(&default_channels());
        let key = (ChannelId(1), OrderId(7));
        let charge = Operation::Charge { channel: key.0, order: key.1, amount: cny(100) };
        let refund = Operation::ChannelRefund { channel: key.0, order: key.1, amount: cny(30) };
        let plan = state.prepare(txn(1), &[charge.clone(), refund]).unwrap();
        assert!(matches!(state.prepare(txn(2), &[charge]), Err(AbortReason::Conflict { .. })));
        state.commit(txn(1), plan);
        assert_eq!(state.view(key.0, key.1).unwrap().refunded_minor, 30);
        state.check_invariants().unwrap();
    }
}
