//! Accounts: balances, holds and pending credits of one account shard.
//!
//! The rule that keeps balances non-negative under concurrency: a prepared
//! debit is a *hold*, and a new debit may only use what is *available*
//! (`balance − holds`). Credits are not spendable until committed (they are
//! counted as *pending credits* only so a commit can never overflow `i64`).
//! So whatever subset of the prepared transactions commits, in any order, no
//! balance goes below zero and none overflows.
//!
//! Each account keeps its last [`MAX_RECENT_ENTRIES`] committed entries,
//! newest first, inside its after-image: one entry per committed transaction
//! that touched it, with the net change (an opening counts as an entry from
//! 0). Bounded, and journaled with the balance it explains, so the two can
//! never disagree.

use crate::amounts::{non_positive_amount, overflow};
use paytx_protocol::messages::{AccountView, EntryView, MAX_RECENT_ENTRIES};
use paytx_protocol::{AbortReason, AccountId, Currency, Money, Operation, TxnId};
use serde::{Deserialize, Serialize};
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

/// An account as committed (the durable after-image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub currency: Currency,
    pub balance_minor: i64,
    /// The last committed entries, newest first, at most
    /// [`MAX_RECENT_ENTRIES`]; the first one ends at `balance_minor`.
    pub recent: Vec<EntryView>,
}

impl Account {
    /// A new account, before its opening entry.
    pub fn new(currency: Currency, balance_minor: i64) -> Self {
        Account { currency, balance_minor, recent: Vec::new() }
    }
}

/// Money reserved on one account: by one transaction (in an
/// [`AccountPlan`]) or by all prepared transactions together (the totals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reserved {
    /// Debits held: not available to anyone else.
    pub held_minor: i64,
    /// Credits to apply at commit: not spendable yet.
    pub pending_credit_minor: i64,
}

impl Reserved {
    fn is_empty(&self) -> bool {
        *self == Reserved::default()
    }
}

/// What one prepared transaction reserved on this shard: exactly what its
/// commit applies and its abort releases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AccountPlan {
    /// Accounts this transaction opens, with their initial balance.
    opens: BTreeMap<AccountId, Account>,
    /// This transaction's holds and credits, per account.
    reserved: BTreeMap<AccountId, Reserved>,
}

/// The account shard's state.
#[derive(Debug, Default)]
pub(crate) struct AccountsState {
    /// Committed accounts: a persistent map, so a snapshot's copy is O(1)
    /// under the state lock (see `Engine::capture`).
    accounts: imbl::OrdMap<AccountId, Account>,
    /// Totals over every prepared transaction; absent = nothing reserved.
    reserved: BTreeMap<AccountId, Reserved>,
    /// Ids reserved by a prepared `OpenAccount`, with the account it opens.
    opening: BTreeMap<AccountId, (TxnId, Account)>,
}

/// One account as seen by the transaction being validated.
struct Scratch {
    currency: Currency,
    balance_minor: i64,
    /// Totals over every prepared transaction plus this one so far.
    total: Reserved,
    /// This transaction's share of `total`.
    mine: Reserved,
    opened_here: bool,
}

impl AccountsState {
    /// Validates `ops` in order and, only if all pass, reserves them for
    /// `txn`. On error nothing has changed.
    pub(crate) fn prepare(&mut self, txn: TxnId, ops: &[Operation]) -> Result<AccountPlan, AbortReason> {
        let mut scratch: BTreeMap<AccountId, Scratch> = BTreeMap::new();
        for op in ops {
            self.validate(&mut scratch, op)?;
        }
        // Everything validated: install. Only assignments from here on, no
        // arithmetic that could fail half-way.
        let mut plan = AccountPlan::default();
        for (id, s) in scratch {
            if s.opened_here {
                let account = Account::new(s.currency, s.balance_minor);
                self.opening.insert(id, (txn, account.clone()));
                plan.opens.insert(id, account);
            }
            if !s.mine.is_empty() {
                plan.reserved.insert(id, s.mine);
                self.reserved.insert(id, s.total);
            }
            self.assert_account_invariants(id);
        }
        Ok(plan)
    }

    fn validate(&self, scratch: &mut BTreeMap<AccountId, Scratch>, op: &Operation) -> Result<(), AbortReason> {
        match op {
            Operation::OpenAccount { account, currency, initial_minor } => {
                if scratch.contains_key(account) || self.accounts.contains_key(account) {
                    return Err(AbortReason::AccountExists(*account));
                }
                if self.opening.contains_key(account) {
                    return Err(conflict(*account));
                }
                if *initial_minor < 0 {
                    return Err(non_positive_amount(account, *initial_minor));
                }
                scratch.insert(
                    *account,
                    Scratch {
                        currency: *currency,
                        balance_minor: *initial_minor,
                        total: Reserved::default(),
                        mine: Reserved::default(),
                        opened_here: true,
                    },
                );
                Ok(())
            }
            Operation::Debit { account, amount } => {
                let s = self.scratch_of(scratch, *account, *amount)?;
                // balance ≥ held ≥ 0 (invariant), so this cannot overflow.
                let available_minor =
                    s.balance_minor.checked_sub(s.total.held_minor).ok_or_else(|| overflow(*account))?;
                if amount.amount_minor > available_minor {
                    return Err(AbortReason::InsufficientFunds {
                        account: *account,
                        available_minor,
                        requested_minor: amount.amount_minor,
                    });
                }
                s.total.held_minor =
                    s.total.held_minor.checked_add(amount.amount_minor).ok_or_else(|| overflow(*account))?;
                s.mine.held_minor =
                    s.mine.held_minor.checked_add(amount.amount_minor).ok_or_else(|| overflow(*account))?;
                Ok(())
            }
            Operation::Credit { account, amount } => {
                let s = self.scratch_of(scratch, *account, *amount)?;
                let pending =
                    s.total.pending_credit_minor.checked_add(amount.amount_minor).ok_or_else(|| overflow(*account))?;
                // Every pending credit may commit: the balance must hold them all.
                s.balance_minor.checked_add(pending).ok_or_else(|| overflow(*account))?;
                s.total.pending_credit_minor = pending;
                s.mine.pending_credit_minor =
                    s.mine.pending_credit_minor.checked_add(amount.amount_minor).ok_or_else(|| overflow(*account))?;
                Ok(())
            }
            other => Err(crate::engine::misrouted(other)),
        }
    }

    /// The account `op` addresses as this transaction sees it, checking the
    /// amount and the currency on the way.
    fn scratch_of<'s>(
        &self,
        scratch: &'s mut BTreeMap<AccountId, Scratch>,
        account: AccountId,
        amount: Money,
    ) -> Result<&'s mut Scratch, AbortReason> {
        if amount.amount_minor <= 0 {
            return Err(non_positive_amount(account, amount.amount_minor));
        }
        let s = match scratch.entry(account) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                if self.opening.contains_key(&account) {
                    // Another prepared transaction is opening it.
                    return Err(conflict(account));
                }
                let committed = self.accounts.get(&account).ok_or(AbortReason::UnknownAccount(account))?;
                entry.insert(Scratch {
                    currency: committed.currency,
                    balance_minor: committed.balance_minor,
                    total: self.reserved.get(&account).copied().unwrap_or_default(),
                    mine: Reserved::default(),
                    opened_here: false,
                })
            }
        };
        if s.currency != amount.currency {
            return Err(AbortReason::CurrencyMismatch {
                entity: account.to_string(),
                expected: s.currency,
                got: amount.currency,
            });
        }
        Ok(s)
    }

    /// Applies a prepared transaction: opens its accounts, moves its money,
    /// releases its reservations. Returns the touched accounts' after-images.
    pub(crate) fn commit(&mut self, txn: TxnId, plan: AccountPlan) -> Vec<(AccountId, Account)> {
        let touched: std::collections::BTreeSet<AccountId> =
            plan.opens.keys().chain(plan.reserved.keys()).copied().collect();
        // Balances before this transaction, for the entries (0 for an opening).
        let before: BTreeMap<AccountId, i64> =
            touched.iter().map(|id| (*id, self.accounts.get(id).map_or(0, |account| account.balance_minor))).collect();
        for (id, account) in plan.opens {
            let removed = self.opening.remove(&id);
            assert_eq!(removed.map(|(owner, _)| owner), Some(txn), "{id} was reserved for opening by {txn}");
            let previous = self.accounts.insert(id, account);
            assert!(previous.is_none(), "{id} cannot exist while reserved for opening");
        }
        for (id, mine) in &plan.reserved {
            self.release(*id, *mine);
            let account = self.accounts.get_mut(id).expect("a reserved account exists or was opened just above");
            account.balance_minor = account
                .balance_minor
                .checked_sub(mine.held_minor)
                .and_then(|b| b.checked_add(mine.pending_credit_minor))
                .expect("holds never exceed the balance and pending credits never overflow it");
        }
        touched
            .into_iter()
            .map(|id| {
                let account = self.accounts.get_mut(&id).expect("touched accounts exist after commit");
                let before_minor = before.get(&id).copied().unwrap_or(0);
                let delta_minor = account
                    .balance_minor
                    .checked_sub(before_minor)
                    .expect("two non-negative i64 balances differ by less than i64::MAX");
                account.recent.insert(0, EntryView { txn, delta_minor, balance_after_minor: account.balance_minor });
                account.recent.truncate(MAX_RECENT_ENTRIES);
                let after_image = account.clone();
                self.assert_account_invariants(id);
                (id, after_image)
            })
            .collect()
    }

    /// Releases everything a prepared transaction reserved.
    pub(crate) fn abort(&mut self, txn: TxnId, plan: AccountPlan) {
        for id in plan.opens.keys() {
            let removed = self.opening.remove(id);
            assert_eq!(removed.map(|(owner, _)| owner), Some(txn), "{id} was reserved for opening by {txn}");
        }
        for (id, mine) in &plan.reserved {
            self.release(*id, *mine);
            self.assert_account_invariants(*id);
        }
    }

    fn release(&mut self, id: AccountId, mine: Reserved) {
        let Entry::Occupied(mut entry) = self.reserved.entry(id) else {
            panic!("{id}: a transaction's reservation is part of the totals until released once");
        };
        let total = entry.get_mut();
        total.held_minor = total.held_minor.checked_sub(mine.held_minor).expect("a share never exceeds the total");
        total.pending_credit_minor =
            total.pending_credit_minor.checked_sub(mine.pending_credit_minor).expect("a share never exceeds the total");
        assert!(total.held_minor >= 0 && total.pending_credit_minor >= 0, "{id}: reservations released twice");
        if total.is_empty() {
            entry.remove();
        }
    }

    /// Every committed account, in id order (a snapshot of the shard): an
    /// O(1) clone that shares structure with the live map.
    pub(crate) fn committed_map(&self) -> imbl::OrdMap<AccountId, Account> {
        self.accounts.clone()
    }

    /// Loads a committed account (recovery).
    pub(crate) fn restore(&mut self, id: AccountId, account: Account) -> Result<(), String> {
        if account.balance_minor < 0 {
            return Err(format!("{id} has a negative balance {}", account.balance_minor));
        }
        check_entries(id, &account)?;
        if self.accounts.insert(id, account).is_some() {
            return Err(format!("{id} stored twice"));
        }
        Ok(())
    }

    pub(crate) fn view(&self, id: AccountId) -> Option<AccountView> {
        let account = self.accounts.get(&id)?;
        Some(AccountView {
            account: id,
            currency: account.currency,
            balance_minor: account.balance_minor,
            held_minor: self.reserved.get(&id).map_or(0, |r| r.held_minor),
            recent: account.recent.clone(),
        })
    }

    pub(crate) fn entity_count(&self) -> usize {
        self.accounts.len()
    }

    /// Cheap per-account check after every change.
    fn assert_account_invariants(&self, id: AccountId) {
        if let Err(problem) = self.check_one(id) {
            panic!("account invariant broken: {problem}");
        }
    }

    fn check_one(&self, id: AccountId) -> Result<(), String> {
        let reserved = self.reserved.get(&id).copied().unwrap_or_default();
        if reserved.held_minor < 0 || reserved.pending_credit_minor < 0 {
            return Err(format!("{id}: negative reservation {reserved:?}"));
        }
        if let Some(account) = self.accounts.get(&id) {
            check_entries(id, account)?;
        }
        let base = match (self.accounts.get(&id), self.opening.get(&id)) {
            (Some(account), None) => account,
            (None, Some((_, account))) => account,
            (None, None) if reserved.is_empty() => return Ok(()),
            (None, None) => return Err(format!("{id}: reservations on an account that does not exist")),
            (Some(_), Some(_)) => return Err(format!("{id}: exists and is being opened")),
        };
        if base.balance_minor < 0 {
            return Err(format!("{id}: negative balance {}", base.balance_minor));
        }
        if reserved.held_minor > base.balance_minor {
            return Err(format!("{id}: held {} exceeds balance {}", reserved.held_minor, base.balance_minor));
        }
        if base.balance_minor.checked_add(reserved.pending_credit_minor).is_none() {
            return Err(format!("{id}: pending credits would overflow"));
        }
        Ok(())
    }

    /// Every invariant of the shard (tests and recovery).
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let ids: std::collections::BTreeSet<AccountId> =
            self.accounts.keys().chain(self.reserved.keys()).chain(self.opening.keys()).copied().collect();
        ids.into_iter().try_for_each(|id| self.check_one(id))
    }
}

/// The recent entries are bounded and tell the balance's story: the newest
/// ends at the balance, and each one starts where the next older one ended.
fn check_entries(id: AccountId, account: &Account) -> Result<(), String> {
    if account.recent.len() > MAX_RECENT_ENTRIES {
        return Err(format!("{id}: {} recent entries, over the limit", account.recent.len()));
    }
    if let Some(newest) = account.recent.first() {
        if newest.balance_after_minor != account.balance_minor {
            return Err(format!(
                "{id}: the newest entry ends at {}, the balance is {}",
                newest.balance_after_minor, account.balance_minor
            ));
        }
    }
    for pair in account.recent.windows(2) {
        let started_minor = pair[0].balance_after_minor.checked_sub(pair[0].delta_minor);
        if started_minor != Some(pair[1].balance_after_minor) {
            return Err(format!("{id}: entry of {} does not follow the one of {}", pair[0].txn, pair[1].txn));
        }
    }
    Ok(())
}

fn conflict(account: AccountId) -> AbortReason {
    AbortReason::Conflict { entity: account.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CNY: Currency = Currency::CNY;

    fn txn(seq: u64) -> TxnId {
        TxnId { term: 1, node: 1, seq }
    }

    fn open(id: u64, initial_minor: i64) -> Operation {
        Operation::OpenAccount { account: AccountId(id), currency: CNY, initial_minor }
    }

    fn debit(id: u64, minor: i64) -> Operation {
        Operation::Debit { account: AccountId(id), amount: Money::new(minor, CNY) }
    }

    fn credit(id: u64, minor: i64) -> Operation {
        Operation::Credit { account: AccountId(id), amount: Money::new(minor, CNY) }
    }

    fn with_account(id: u64, balance_minor: i64) -> AccountsState {
        let mut state = AccountsState::default();
        state.restore(AccountId(id), Account::new(CNY, balance_minor)).unwrap();
        state
    }

    #[test]
    fn open_debit_in_one_transaction_composes() {
        let mut state = AccountsState::default();
        let plan = state.prepare(txn(1), &[open(1, 100), debit(1, 60)]).unwrap();
        assert_eq!(state.view(AccountId(1)), None, "not visible before commit");
        assert!(matches!(state.prepare(txn(2), &[credit(1, 5)]), Err(AbortReason::Conflict { .. })));
        assert!(matches!(state.prepare(txn(2), &[open(1, 5)]), Err(AbortReason::Conflict { .. })));
        state.commit(txn(1), plan);
        let view = state.view(AccountId(1)).unwrap();
        assert_eq!((view.balance_minor, view.held_minor), (40, 0));
        state.check_invariants().unwrap();
    }

    #[test]
    fn debit_before_open_in_the_same_transaction_is_unknown() {
        let mut state = AccountsState::default();
        assert_eq!(state.prepare(txn(1), &[debit(1, 1), open(1, 5)]), Err(AbortReason::UnknownAccount(AccountId(1))));
        assert_eq!(state.prepare(txn(1), &[open(1, 5), open(1, 5)]), Err(AbortReason::AccountExists(AccountId(1))));
        assert!(state.opening.is_empty() && state.reserved.is_empty());
    }

    #[test]
    fn credits_are_not_spendable_before_commit() {
        let mut state = with_account(1, 0);
        assert!(matches!(
            state.prepare(txn(1), &[credit(1, 10), debit(1, 10)]),
            Err(AbortReason::InsufficientFunds { available_minor: 0, requested_minor: 10, .. })
        ));
    }

    #[test]
    fn negative_amounts_are_refused() {
        let mut state = with_account(1, 10);
        assert!(state.prepare(txn(1), &[debit(1, -5)]).is_err());
        assert!(state.prepare(txn(1), &[credit(1, 0)]).is_err());
        assert!(state.prepare(txn(1), &[open(2, -1)]).is_err());
        assert!(state.reserved.is_empty());
    }
}
