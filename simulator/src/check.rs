//! The invariants, checked against the real state of the settled cluster.
//!
//! The model replays every committed transaction (by what the clients were
//! told, and for the rest by the outcome recorded under its idempotency key)
//! over the opening balances. Any difference with the participants' actual
//! state is a broken invariant: a transaction half-applied, applied twice,
//! or an acknowledged commit lost.
//!
//! Records are checked without knowing the commit order (the model replays
//! transactions in an order that is only right for balances and orders):
//! every committed write to a record is one version, so the record must be
//! at exactly the number of committed writes; the preconditions chain
//! (`Absent` is version 0, `Version(v)` moves v → v+1), so no two committed
//! writes may have passed the same one, and the value is that of the write
//! that expected the last version. A write applied twice, a lost write, or
//! two writers both passing a precondition all fail one of these.

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
    /// Every committed write to each record: (precondition, value).
    pub record_writes: BTreeMap<RecordKey, Vec<(RecordExpect, Vec<u8>)>>,
    /// Every committed `PutRecordAtCommit`: (partition, number, value).
    pub commit_timed: Vec<(paytx_protocol::Partition, u64, Vec<u8>)>,
}

impl Model {
    pub fn new(opening: &BTreeMap<AccountId, i64>) -> Self {
        Model { balances: opening.clone(), ..Model::default() }
    }

    /// Applies a committed transaction and returns what it broke: a
    /// transaction that could not have committed from this state (the state
    /// machine was bypassed). It is applied anyway, as the participants did,
    /// so that one broken rule is reported once, under its own name, and not
    /// again as a difference of the final state.
    pub fn apply(&mut self, ops: &[Operation]) -> Vec<Violation> {
        let mut violations = Vec::new();
        let mut flag = |invariant: &'static str, detail: String| violations.push(Violation { invariant, detail });
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
                    let Some(entry) = self.orders.get_mut(order) else {
                        flag("order-state-machine", format!("{order} paid before it was created"));
                        continue;
                    };
                    if entry.1 != OrderStatus::Created {
                        flag("order-state-machine", format!("{order} paid while {}", entry.1));
                    }
                    entry.1 = OrderStatus::Paid;
                }
                Operation::RefundOrder { order, amount } => {
                    let Some(entry) = self.orders.get_mut(order) else {
                        flag("order-state-machine", format!("{order} refunded before it was created"));
                        continue;
                    };
                    if !matches!(entry.1, OrderStatus::Paid | OrderStatus::PartiallyRefunded) {
                        flag("order-state-machine", format!("{order} refunded while {}", entry.1));
                    }
                    entry.2 += amount.amount_minor;
                    if entry.2 > entry.0 {
                        flag("refund-within-paid", format!("{order} refunded {} of {}", entry.2, entry.0));
                    }
                    entry.1 = if entry.2 == entry.0 { OrderStatus::Refunded } else { OrderStatus::PartiallyRefunded };
                }
                // Only a CREATED (unpaid) order may be closed.
                Operation::CloseOrder { order } => {
                    let Some(entry) = self.orders.get_mut(order) else {
                        flag("order-closed-only-when-created", format!("{order} closed before it was created"));
                        continue;
                    };
                    if entry.1 != OrderStatus::Created {
                        flag("order-closed-only-when-created", format!("{order} closed while {}", entry.1));
                    }
                    entry.1 = OrderStatus::Closed;
                }
                Operation::Charge { channel, order, amount } => {
                    if self.charges.insert((*channel, *order), (amount.amount_minor, 0)).is_some() {
                        flag("order-state-machine", format!("{order} charged twice through {channel}"));
                    }
                }
                Operation::ChannelRefund { channel, order, amount } => {
                    let Some(entry) = self.charges.get_mut(&(*channel, *order)) else {
                        flag("channel-refund-within-charged", format!("refund of an uncharged {channel}/{order}"));
                        continue;
                    };
                    entry.1 += amount.amount_minor;
                    if entry.1 > entry.0 {
                        flag(
                            "channel-refund-within-charged",
                            format!("{channel}/{order}: refunded {} of a charge of {}", entry.1, entry.0),
                        );
                    }
                }
                // Index entries are checked against the records they
                // index (`check_name_index`), not write by write: they move.
                Operation::PutRecord { key, .. } if paytx_protocol::ids::is_ordered_ns(key.ns) => {}
                // Stored under the commit's time, which the model does not
                // know: checked entry by entry at the end (`check_commit_timed`).
                Operation::PutRecordAtCommit { partition, number, value } => {
                    self.commit_timed.push((*partition, *number, value.clone()));
                }
                Operation::PutRecord { key, value: Some(value), expect } => {
                    self.record_writes.entry(*key).or_default().push((*expect, value.clone()));
                }
                // The workload never deletes: versions would restart at 1
                // and the order-free check below could not follow them.
                Operation::PutRecord { key, value: None, .. } => {
                    flag(
                        "order-state-machine",
                        format!("{key} deleted: the simulator's model does not follow deletes"),
                    );
                }
            }
        }
        violations
    }
}

/// Where a committed transaction goes when the model replays commits: the
/// order's life cycle (open, create, pay, refund, then closes, chargebacks
/// and the rest) decides, since concurrent commits reach the model in no
/// particular order. A close ranks after every payment and refund, so a
/// close that committed on a paid order is seen as one, and a payment that
/// committed on a closed order is seen as a close of a paid order: either
/// way `order-closed-only-when-created`. (Shared with `paytx chaos`.)
pub fn lifecycle_rank(ops: &[Operation]) -> u8 {
    if ops.iter().any(|o| matches!(o, Operation::OpenAccount { .. })) {
        0
    } else if ops.iter().any(|o| matches!(o, Operation::CreateOrder { .. })) {
        1
    } else if ops.iter().any(|o| matches!(o, Operation::MarkPaid { .. })) {
        2
    } else if ops.iter().any(|o| matches!(o, Operation::RefundOrder { .. })) {
        3
    } else {
        4
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
        if let Some(charge) = view.as_ref().filter(|c| c.refunded_minor > c.charged.amount_minor) {
            push(
                "channel-refund-within-charged",
                format!(
                    "charge {}/{}: refunded {} of {}",
                    key.0, key.1, charge.refunded_minor, charge.charged.amount_minor
                ),
            );
        }
        if got != expected.copied() {
            push(
                "all-or-nothing",
                format!("charge {}/{}: {got:?}, committed transactions give {expected:?}", key.0, key.1),
            );
        }
    }
    for (key, view) in &actual.records {
        let writes = model.record_writes.get(key).map(Vec::as_slice).unwrap_or_default();
        for (invariant, detail) in check_record(*key, writes, view.as_ref()) {
            push(invariant, detail);
        }
    }
    for key in model.record_writes.keys().filter(|key| !actual.records.contains_key(key)) {
        push("record-writes-exactly-once", format!("{key} was written but not read back"));
    }
    violations
}

/// The Unix times (ms) a log time of this run can read, `elapsed_ms` of
/// virtual time after its start: every node's clock reads the start as
/// `SIM_UNIX_EPOCH_MS`, then runs at most `MAX_SKEW_MS` ahead and
/// `MAX_DRIFT_PPM` fast (a log time is a leader's clock when it proposed).
pub fn log_time_bounds_ms(elapsed_ms: u64) -> (u64, u64) {
    use paytx_protocol::clock::{MAX_DRIFT_PPM, SIM_UNIX_EPOCH_MS};
    let fast_ms =
        u64::try_from(u128::from(elapsed_ms) * (1_000_000 + MAX_DRIFT_PPM as u128) / 1_000_000).unwrap_or(u64::MAX);
    (SIM_UNIX_EPOCH_MS, SIM_UNIX_EPOCH_MS.saturating_add(fast_ms).saturating_add(crate::cluster::MAX_SKEW_MS))
}

/// The entries of `partition` written by `PutRecordAtCommit` against the
/// committed ones (`committed`: partition, number, value): each committed
/// entry stored exactly once (a commit applied twice under two times would
/// be two), at version 1, with its value, under a commit time within
/// `(first_ms, last_ms)` — a log time of the run, not 0 nor a guess — and
/// nothing stored for a transaction that did not commit.
pub fn check_commit_timed(
    partition: paytx_protocol::Partition,
    committed: &[(paytx_protocol::Partition, u64, Vec<u8>)],
    found: &[RecordView],
    (first_ms, last_ms): (u64, u64),
) -> Vec<Violation> {
    use paytx_protocol::ids::sort_key_parts;
    let mut violations = Vec::new();
    let mut push = |detail: String| violations.push(Violation { invariant: "commit-timed-entries", detail });
    let mut expected: BTreeMap<u64, &[u8]> = BTreeMap::new();
    for (_, number, value) in committed.iter().filter(|(p, _, _)| *p == partition) {
        if expected.insert(*number, value).is_some() {
            push(format!("entry {number} committed by two transactions (the workload numbers each once)"));
        }
    }
    let mut stored: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for view in found {
        if view.key.partition() != Some(partition) {
            push(format!("{} read as an entry of partition {}", view.key, partition.ns));
            continue;
        }
        let (at_ms, number) = sort_key_parts(view.key.sort());
        stored.entry(number).or_default().push(at_ms);
        if !(first_ms..=last_ms).contains(&at_ms) {
            push(format!("entry {number} stored at {at_ms} ms, outside the run's log times {first_ms}..={last_ms}"));
        }
        match expected.get(&number) {
            None => push(format!("entry {number} stored at {at_ms} ms: its transaction did not commit")),
            Some(value) if *value != view.value.as_slice() => push(format!("entry {number} holds another value")),
            Some(_) if view.version != 1 => push(format!("entry {number} at version {}", view.version)),
            Some(_) => {}
        }
    }
    for (number, times) in stored.iter().filter(|(_, times)| times.len() > 1) {
        push(format!(
            "entry {number} stored {} times, at {times:?} ms: one commit applied more than once",
            times.len()
        ));
    }
    for number in expected.keys().filter(|number| !stored.contains_key(number)) {
        push(format!("entry {number} of a committed transaction is missing"));
    }
    violations
}

/// The name index against the names: every existing name has exactly its
/// entry (holding the name's value), and no entry points at a name that
/// does not exist or holds another value. `ascending` and `descending` are
/// the whole partition read both ways; one must be the other reversed.
pub fn check_name_index(
    names: &BTreeMap<RecordKey, Option<RecordView>>,
    ascending: &[RecordView],
    descending: &[RecordView],
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut push = |detail: String| violations.push(Violation { invariant: "index-matches-records", detail });
    let reversed: Vec<&RecordView> = descending.iter().rev().collect();
    if !ascending.iter().eq(reversed.iter().copied()) {
        push(format!(
            "the index read descending ({}) is not the ascending read ({}) reversed",
            descending.len(),
            ascending.len()
        ));
    }
    if ascending.windows(2).any(|pair| pair[0].key >= pair[1].key) {
        push("the index read ascending is not in key order".to_string());
    }
    let mut expected: BTreeMap<RecordKey, Vec<u8>> = BTreeMap::new();
    for index in 0..crate::workload::RECORD_POOLS[0].2 {
        let name = crate::workload::pool_key(crate::workload::NAMES_NS, index);
        if let Some(Some(view)) = names.get(&name) {
            expected.insert(crate::workload::name_index_key(index, &view.value), view.value.clone());
        }
    }
    let found: BTreeMap<RecordKey, Vec<u8>> = ascending.iter().map(|view| (view.key, view.value.clone())).collect();
    for (key, value) in &expected {
        match found.get(key) {
            None => push(format!("the committed name behind {key} has no index entry")),
            Some(found) if found != value => push(format!("{key} indexes another value than its name's")),
            Some(_) => {}
        }
    }
    for key in found.keys().filter(|key| !expected.contains_key(key)) {
        push(format!("{key} points at a name that does not exist or has moved"));
    }
    violations
}

/// One record against its committed writes (in no particular order).
fn check_record(
    key: RecordKey,
    writes: &[(RecordExpect, Vec<u8>)],
    actual: Option<&RecordView>,
) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let count = writes.len() as u64;
    let actual_version = actual.map(|view| view.version);
    let expected_version = (count > 0).then_some(count);
    if actual_version != expected_version {
        problems.push((
            "record-writes-exactly-once",
            format!("{key} is at version {actual_version:?} after {count} committed writes"),
        ));
    }
    // The precondition each write passed, as the version it found (0 = absent).
    let mut passed: BTreeMap<u64, usize> = BTreeMap::new();
    let mut unconditional = 0;
    for (expect, _) in writes {
        match expect {
            RecordExpect::Absent => *passed.entry(0).or_default() += 1,
            RecordExpect::Version(version) => *passed.entry(*version).or_default() += 1,
            RecordExpect::Any => unconditional += 1,
        }
    }
    for (found, writers) in &passed {
        if *writers > 1 {
            problems.push((
                "record-preconditions",
                format!("{writers} committed writes to {key} all found version {found}"),
            ));
        }
        if *found >= count {
            problems.push((
                "record-preconditions",
                format!("a committed write to {key} found version {found}, but only {count} writes committed"),
            ));
        }
    }
    if count > 0 && unconditional == 0 && !passed.contains_key(&0) {
        problems.push(("record-preconditions", format!("{key} exists but no committed write created it")));
    }
    // The last write is the one that found version count-1, when it had a
    // precondition; its value is the record's.
    let last = writes.iter().find(|(expect, _)| match expect {
        RecordExpect::Absent => count == 1,
        RecordExpect::Version(version) => version.checked_add(1) == Some(count),
        RecordExpect::Any => false,
    });
    if let (Some((_, value)), Some(view)) = (last, actual) {
        if view.value != *value {
            problems.push(("record-writes-exactly-once", format!("{key} holds another value than its last write")));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(key: RecordKey, version: u64, value: &[u8]) -> RecordView {
        RecordView { key, version, value: value.to_vec() }
    }

    fn invariants(writes: &[(RecordExpect, Vec<u8>)], actual: Option<&RecordView>) -> Vec<&'static str> {
        check_record(RecordKey::new(1, b"k"), writes, actual).into_iter().map(|(invariant, _)| invariant).collect()
    }

    #[test]
    fn a_close_of_a_paid_order_and_a_charge_refunded_past_its_amount_are_caught() {
        use paytx_protocol::{Currency, Money};
        let cny = |minor| Money::new(minor, Currency::CNY);
        let (order, channel) = (OrderId(1), ChannelId(2));
        let (merchant, payer) = (AccountId(1), AccountId(2));
        let invariants = |model: &mut Model, ops: &[Operation]| -> Vec<&'static str> {
            model.apply(ops).into_iter().map(|v| v.invariant).collect()
        };
        let mut model = Model::new(&BTreeMap::new());
        assert!(invariants(&mut model, &[Operation::CreateOrder { order, merchant, amount: cny(100) }]).is_empty());
        // Closing the unpaid order is fine; a second order is paid, then closed.
        assert!(invariants(&mut model, &[Operation::CloseOrder { order }]).is_empty());
        let paid = OrderId(2);
        assert!(
            invariants(&mut model, &[Operation::CreateOrder { order: paid, merchant, amount: cny(100) }]).is_empty()
        );
        let pay = paytx_protocol::ops::payment_ops(payer, merchant, paid, channel, cny(100));
        assert!(invariants(&mut model, &pay).is_empty());
        assert_eq!(
            invariants(&mut model, &[Operation::CloseOrder { order: paid }]),
            vec!["order-closed-only-when-created"]
        );
        // Chargebacks within the charge, then past it.
        let chargeback = |minor| {
            vec![
                Operation::ChannelRefund { channel, order: paid, amount: cny(minor) },
                Operation::Debit { account: merchant, amount: cny(minor) },
                Operation::Credit { account: payer, amount: cny(minor) },
            ]
        };
        assert!(invariants(&mut model, &chargeback(60)).is_empty());
        assert_eq!(invariants(&mut model, &chargeback(41)), vec!["channel-refund-within-charged"]);
        // Applied anyway: the balances follow every committed operation.
        assert_eq!(model.balances.get(&payer), Some(&(-100 + 101)));
        // The final state: a charge read back refunded past its amount.
        let mut actual = Actual::default();
        let view = ChargeView { channel, order: paid, charged: cny(100), refunded_minor: 101 };
        actual.charges.insert((channel, paid), Some(view));
        let found: Vec<&str> = check_state(&model, &actual, 0).into_iter().map(|v| v.invariant).collect();
        assert_eq!(found, vec!["channel-refund-within-charged"]);
    }

    #[test]
    fn a_lost_or_dangling_index_entry_is_caught() {
        use crate::workload::{name_index_key, pool_key, NAMES_NS};
        let name = pool_key(NAMES_NS, 3);
        let names: BTreeMap<RecordKey, Option<RecordView>> =
            [(name, Some(view(name, 2, b"c1-7"))), (pool_key(NAMES_NS, 4), None)].into_iter().collect();
        let entry = view(name_index_key(3, b"c1-7"), 1, b"c1-7");
        let stale = view(name_index_key(3, b"c1-2"), 1, b"c1-2");
        let invariants = |asc: &[RecordView], desc: &[RecordView]| {
            check_name_index(&names, asc, desc).into_iter().map(|v| v.detail).collect::<Vec<_>>()
        };
        let one = std::slice::from_ref(&entry);
        assert!(invariants(one, one).is_empty());
        assert_eq!(invariants(&[], &[]).len(), 1, "a committed name without its entry");
        let mut both = vec![entry.clone(), stale.clone()];
        both.sort_by_key(|v| v.key);
        let mut reversed = both.clone();
        reversed.reverse();
        assert_eq!(invariants(&both, &reversed).len(), 1, "an entry left behind by a move");
        assert_eq!(invariants(&both, &both).len(), 2, "a descending read in the wrong order");
        let wrong = view(entry.key, 1, b"c9-9");
        let wrong = std::slice::from_ref(&wrong);
        assert_eq!(invariants(wrong, wrong).len(), 1, "an entry with another value");
    }

    #[test]
    fn a_record_write_applied_twice_lost_or_double_claimed_is_caught() {
        let key = RecordKey::new(1, b"k");
        let chain = vec![
            (RecordExpect::Version(1), b"b".to_vec()),
            (RecordExpect::Absent, b"a".to_vec()),
            (RecordExpect::Any, b"c".to_vec()),
        ];
        // In any order, three writes: version 3. The value of an
        // unconditional last write is not known, so it is not checked.
        assert!(invariants(&chain, Some(&view(key, 3, b"c"))).is_empty());
        assert!(invariants(&chain[..2], Some(&view(key, 2, b"b"))).is_empty());
        // Applied twice, or lost.
        assert_eq!(invariants(&chain, Some(&view(key, 4, b"c"))), vec!["record-writes-exactly-once"]);
        assert_eq!(invariants(&chain[..2], Some(&view(key, 1, b"a"))), vec!["record-writes-exactly-once"; 2]);
        assert_eq!(invariants(&chain, None), vec!["record-writes-exactly-once"]);
        assert_eq!(invariants(&[], Some(&view(key, 1, b"a"))), vec!["record-writes-exactly-once"]);
        // Two claims of one key both committed.
        let twice = vec![(RecordExpect::Absent, b"a".to_vec()), (RecordExpect::Absent, b"z".to_vec())];
        assert!(invariants(&twice, Some(&view(key, 2, b"z"))).contains(&"record-preconditions"));
        // The last write's value.
        assert_eq!(invariants(&chain[..2], Some(&view(key, 2, b"x"))), vec!["record-writes-exactly-once"]);
    }

    #[test]
    fn commit_timed_entries_once_each_under_a_log_time_and_only_for_commits() {
        use crate::workload::journal_partition;
        use paytx_protocol::clock::SIM_UNIX_EPOCH_MS;
        use paytx_protocol::ids::sort_key;
        let journal = journal_partition();
        let bounds = log_time_bounds_ms(60_000);
        assert_eq!(bounds.0, SIM_UNIX_EPOCH_MS);
        assert_eq!(bounds.1, SIM_UNIX_EPOCH_MS + 63_000 + crate::cluster::MAX_SKEW_MS);
        let at =
            |ms: u64, number: u64, value: &[u8]| view(journal.key(sort_key(SIM_UNIX_EPOCH_MS + ms, number)), 1, value);
        let committed = vec![(journal, 1, b"a".to_vec()), (journal, 2, b"b".to_vec())];
        let details = |found: &[RecordView]| -> Vec<String> {
            check_commit_timed(journal, &committed, found, bounds).into_iter().map(|v| v.detail).collect()
        };
        assert!(details(&[at(5, 1, b"a"), at(3, 2, b"b")]).is_empty());
        // A commit applied twice, under two times.
        let twice = details(&[at(5, 1, b"a"), at(9, 1, b"a"), at(3, 2, b"b")]);
        assert_eq!(twice.len(), 1, "{twice:?}");
        assert!(twice[0].contains("stored 2 times"), "{twice:?}");
        // An entry of a transaction that did not commit, one missing.
        let wrong = details(&[at(5, 1, b"a"), at(3, 7, b"z")]);
        assert!(wrong.iter().any(|d| d.contains("entry 7") && d.contains("did not commit")), "{wrong:?}");
        assert!(wrong.iter().any(|d| d.contains("entry 2 of a committed transaction is missing")), "{wrong:?}");
        // Filed under no log time (a decision without its time), or ahead
        // of every clock of the run.
        let untimed = view(journal.key(sort_key(0, 1)), 1, b"a");
        assert!(details(&[untimed, at(3, 2, b"b")])[0].contains("outside the run's log times"));
        assert!(details(&[at(5, 1, b"a"), at(80_000, 2, b"b")])[0].contains("outside"));
        // Another value, another version.
        assert!(details(&[at(5, 1, b"x"), at(3, 2, b"b")])[0].contains("another value"));
        let second = view(journal.key(sort_key(SIM_UNIX_EPOCH_MS, 1)), 2, b"a");
        assert!(details(&[second, at(3, 2, b"b")])[0].contains("version 2"));
    }
}
