//! The final Jepsen-bank check, through the public client API only, once
//! the cluster is healed and quiet.
//!
//! Every transaction's final outcome is looked up by its idempotency key;
//! what a client was told must still stand. The committed transactions are
//! replayed over the opening balances (the simulator's [`Model`]) and the
//! result compared with every account, order and charge the cluster holds:
//! a transaction half-applied, applied twice, or lost shows up there.

use crate::chaos::workload::{History, Known, CHANNELS};
use crate::client::Client;
use futures::StreamExt;
use paytx_protocol::messages::{KeyStatus, TxnState};
use paytx_protocol::{AccountId, ChannelId, IdempotencyKey, Operation, OrderId, Outcome};
use paytx_simulator::check::{check_state, lifecycle_rank, Actual, Model};
use serde::Serialize;
use std::collections::BTreeMap;

/// Reads in flight at once during the check.
const CHECK_CONCURRENCY: usize = 32;
/// Examples kept per violated invariant.
const MAX_EXAMPLES: usize = 5;

/// The named invariants, in the order the summary lists them.
pub const INVARIANTS: [(&str, &str); 12] = [
    ("total_unchanged", "total money is exactly what was deposited (total changed)"),
    ("no_negative_balance", "no balance is negative (negative balance)"),
    ("acked_commits_present", "every acknowledged commit is in the final state (acknowledged committed but missing)"),
    ("acked_aborts_stand", "every acknowledged abort stays aborted (acknowledged aborted but committed)"),
    ("all_or_nothing", "every transaction all-or-nothing across shards (partially applied)"),
    ("nothing_in_doubt", "nothing in doubt at the end (in doubt at the end)"),
    ("idempotency_at_most_once", "every idempotency key applied at most once (idempotency key applied twice)"),
    ("order_state_machine", "orders and refunds obey their state machines (illegal transition)"),
    ("requests_accepted", "every valid request accepted (rejected as invalid)"),
    ("nodes_stay_up", "no node process exits on its own (node crashed)"),
    ("state_readable", "the final state could be read (unreadable state)"),
    (
        "outcomes_decidable",
        "every transaction's outcome could be looked up: its key not evicted by retention (undecidable outcome)",
    ),
];

/// One invariant's result.
#[derive(Debug, Clone, Serialize)]
pub struct InvariantResult {
    pub name: &'static str,
    pub description: &'static str,
    pub violations: u64,
    pub examples: Vec<String>,
}

impl InvariantResult {
    pub fn ok(&self) -> bool {
        self.violations == 0
    }
}

/// Violations collected by invariant name.
#[derive(Debug, Default)]
pub struct Findings {
    by_name: BTreeMap<&'static str, (u64, Vec<String>)>,
}

impl Findings {
    pub fn flag(&mut self, name: &'static str, detail: String) {
        debug_assert!(INVARIANTS.iter().any(|(n, _)| *n == name), "unknown invariant {name}");
        let entry = self.by_name.entry(name).or_default();
        entry.0 += 1;
        if entry.1.len() < MAX_EXAMPLES {
            entry.1.push(detail);
        }
    }

    pub fn results(&self) -> Vec<InvariantResult> {
        INVARIANTS
            .iter()
            .map(|(name, description)| {
                let (violations, examples) = self.by_name.get(name).cloned().unwrap_or_default();
                InvariantResult { name, description, violations, examples }
            })
            .collect()
    }
}

/// Transaction counts after the outcomes are resolved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcomes {
    pub attempted: u64,
    pub acknowledged: u64,
    pub committed: u64,
    pub aborted: u64,
    pub aborted_by_reason: BTreeMap<String, u64>,
    /// Unknown to the client, found committed/aborted through its key.
    pub resolved_later: u64,
    /// Unknown to the client and never registered (nothing applied).
    pub never_registered: u64,
    pub submits: u64,
    pub duplicates_sent: u64,
}

/// Runs every check. `opening` holds the opening deposits; `settled` says
/// whether the cluster went quiet after healing.
pub async fn check(
    client: &Client,
    history: &History,
    opening: &BTreeMap<AccountId, i64>,
    orders: u64,
    settled: bool,
    findings: &mut Findings,
) -> Outcomes {
    if !settled {
        findings.flag("nothing_in_doubt", "the cluster was not quiet within the bound after healing".into());
    }
    for mismatch in &history.duplicate_mismatches {
        let detail = format!("{} resubmitted: first {:?}, then {}", mismatch.key, mismatch.first, mismatch.second);
        findings.flag("idempotency_at_most_once", detail);
    }

    // Final outcomes by key.
    let keys: Vec<IdempotencyKey> = history.txns.iter().map(|r| r.request.key.clone()).collect();
    let statuses: BTreeMap<IdempotencyKey, _> = futures::stream::iter(keys)
        .map(|key| {
            let client = client.clone();
            async move {
                let status = client.txn_status(key.clone()).await;
                (key, status)
            }
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect()
        .await;

    let mut outcomes = Outcomes {
        attempted: history.txns.len() as u64,
        duplicates_sent: history.duplicates_sent,
        ..Outcomes::default()
    };
    let mut committed_ops: Vec<&[Operation]> = Vec::new();
    for record in &history.txns {
        let key = &record.request.key;
        outcomes.submits += u64::from(record.attempts);
        let final_state = match statuses.get(key) {
            Some(Ok(view)) => view.clone(),
            Some(Err(e)) => {
                findings.flag("state_readable", format!("status of {key}: {e}"));
                continue;
            }
            None => {
                findings.flag("state_readable", format!("status of {key} not asked"));
                continue;
            }
        };
        let final_outcome = match &final_state {
            KeyStatus::Known(view) => match &view.state {
                TxnState::Decided(outcome) => Some(outcome.clone()),
                TxnState::InProgress => {
                    findings.flag("nothing_in_doubt", format!("{key} ({}) still undecided", view.txn));
                    None
                }
            },
            KeyStatus::NotRegistered => None,
            // Evicted by retention: it may have applied, so the run cannot be
            // checked exactly; never read as "nothing applied".
            KeyStatus::Unknown { retention_secs } => {
                let detail = format!(
                    "{key}: not held, keys older than {retention_secs} s evicted (retention too small for the run)"
                );
                findings.flag("outcomes_decidable", detail);
                None
            }
        };
        match &record.known {
            Known::Acked { outcome, txn } => {
                outcomes.acknowledged += 1;
                if let Some(view) = final_state.known() {
                    if view.txn != *txn {
                        let detail = format!("{key}: acknowledged as {txn}, the cluster now names {}", view.txn);
                        findings.flag("idempotency_at_most_once", detail);
                    }
                }
                match (outcome, &final_outcome) {
                    (Outcome::Committed, Some(Outcome::Committed))
                    | (Outcome::Aborted(_), Some(Outcome::Aborted(_))) => {}
                    (Outcome::Committed, other) => findings.flag(
                        "acked_commits_present",
                        format!("{key}: acknowledged committed ({txn}), the cluster says {other:?}"),
                    ),
                    // Committed since, or forgotten (a retry with the key
                    // would run it again): either way the answer did not stand.
                    (Outcome::Aborted(reason), other) => findings.flag(
                        "acked_aborts_stand",
                        format!("{key}: acknowledged aborted ({reason:?}), the cluster says {other:?}"),
                    ),
                }
            }
            Known::Unknown { .. } => {
                if final_outcome.is_some() {
                    outcomes.resolved_later += 1;
                } else if final_state == KeyStatus::NotRegistered {
                    outcomes.never_registered += 1;
                }
            }
            Known::Rejected(reason) => findings.flag("requests_accepted", format!("{key}: {reason}")),
        }
        match final_outcome {
            Some(Outcome::Committed) => {
                outcomes.committed += 1;
                committed_ops.push(&record.request.ops);
            }
            Some(Outcome::Aborted(reason)) => {
                outcomes.aborted += 1;
                *outcomes.aborted_by_reason.entry(reason.code().to_string()).or_default() += 1;
            }
            None => {}
        }
    }

    // The model: the opening deposits, then every committed transaction.
    let mut model = Model::new(opening);
    committed_ops.sort_by_key(|ops| lifecycle_rank(ops));
    for ops in committed_ops {
        // Every rule `Model::apply` checks is one of the order and
        // channel state machines'.
        for violation in model.apply(ops) {
            findings.flag("order_state_machine", violation.detail);
        }
    }
    let deposited = opening.values().try_fold(0i64, |sum, v| sum.checked_add(*v));
    let Some(deposited) = deposited else {
        findings.flag("total_unchanged", "the opening deposits overflow i64".into());
        return outcomes;
    };

    let actual = read_state(client, opening, orders, findings).await;
    for violation in check_state(&model, &actual, deposited) {
        let name = match violation.invariant {
            "money-conserved" => "total_unchanged",
            "no-negative-balance" => "no_negative_balance",
            "nothing-in-doubt" => "nothing_in_doubt",
            "order-state-machine"
            | "refund-within-paid"
            | "order-closed-only-when-created"
            | "channel-refund-within-charged" => "order_state_machine",
            _ => "all_or_nothing",
        };
        findings.flag(name, violation.detail);
    }
    outcomes
}

/// Reads every account, order and charge the workload may have touched.
async fn read_state(
    client: &Client,
    opening: &BTreeMap<AccountId, i64>,
    orders: u64,
    findings: &mut Findings,
) -> Actual {
    let mut actual = Actual::default();
    let accounts: Vec<_> = futures::stream::iter(opening.keys().copied())
        .map(|account| {
            let client = client.clone();
            async move { (account, client.account(account).await) }
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect()
        .await;
    for (account, view) in accounts {
        match view {
            Ok(view) => {
                actual.accounts.insert(account, view);
            }
            Err(e) => findings.flag("state_readable", format!("{account}: {e}")),
        }
    }
    let order_views: Vec<_> = futures::stream::iter((1..=orders).map(OrderId))
        .map(|order| {
            let client = client.clone();
            async move {
                let view = client.order(order).await;
                let mut charges = Vec::new();
                for channel in (1..=CHANNELS).map(ChannelId) {
                    charges.push((channel, client.charge(channel, order).await));
                }
                (order, view, charges)
            }
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect()
        .await;
    for (order, view, charges) in order_views {
        match view {
            Ok(view) => {
                actual.orders.insert(order, view);
            }
            Err(e) => findings.flag("state_readable", format!("{order}: {e}")),
        }
        for (channel, charge) in charges {
            match charge {
                Ok(view) => {
                    actual.charges.insert((channel, order), view);
                }
                Err(e) => findings.flag("state_readable", format!("charge {channel}/{order}: {e}")),
            }
        }
    }
    actual
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_count_every_violation_and_keep_a_few_examples() {
        let mut findings = Findings::default();
        for i in 0..8 {
            findings.flag("no_negative_balance", format!("account {i}"));
        }
        findings.flag("total_unchanged", "off by one".into());
        let results = findings.results();
        assert_eq!(results.len(), INVARIANTS.len(), "every invariant is listed, violated or not");
        let negative = results.iter().find(|r| r.name == "no_negative_balance").expect("listed");
        assert_eq!(negative.violations, 8);
        assert_eq!(negative.examples.len(), MAX_EXAMPLES);
        assert!(!negative.ok());
        assert!(results.iter().find(|r| r.name == "acked_commits_present").expect("listed").ok());
    }
}
