//! The replicated transaction table: the coordinator group's state machine.
//!
//! Every coordinator replica applies the same [`Command`]s in log order, so
//! every replica holds the same table. The rules of DESIGN.md live here:
//!
//! * **One decision per transaction, first writer wins.** A `Decide` for a
//!   transaction that already has a decision changes nothing; its proposer
//!   learns the real decision from the [`CommandResult`].
//! * **Presumed abort.** A `Decide` for a transaction the table does not know
//!   (never begun, or decided, acknowledged and forgotten) records nothing
//!   and answers "aborted" — unless the idempotency key says otherwise. A
//!   commit needs a `Begin` record, and prepares are only sent after `Begin`
//!   is applied, so no participant can hold a YES vote for a transaction the
//!   table never knew.
//! * **Idempotency keys** map to the transaction that first used them, with
//!   the hash of its body; their outcome outlives the transaction record.
//!
//! Pure data: no I/O, no clock, `BTreeMap`s only, so every replica (and every
//! simulator run) iterates in the same order.

use paytx_protocol::messages::{TxnState, TxnStatusView};
use paytx_protocol::planted::Bug;
use paytx_protocol::txn::BodyHash;
use paytx_protocol::{AbortReason, IdempotencyKey, Operation, Outcome, TxnId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An entry of the coordinator's Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Registers a transaction and its idempotency key before any prepare.
    Begin { txn: TxnId, key: IdempotencyKey, body_hash: BodyHash, ops: Vec<Operation>, prepare_timeout_ms: u64 },
    /// Records the decision (first writer wins).
    Decide { txn: TxnId, key: Option<IdempotencyKey>, outcome: Outcome },
    /// Drops decided transactions every participant has acknowledged.
    Forget { txns: Vec<TxnId> },
}

/// What applying a [`Command`] produced, returned to its proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries.
    None,
    /// The transaction is registered; go prepare it.
    Begun,
    /// The key was used before with the same body: this is that transaction.
    Existing {
        txn: TxnId,
        state: TxnState,
    },
    /// The key was used before with a different body.
    KeyConflict,
    /// The decision now in the table (maybe not the one proposed).
    Decided {
        outcome: Outcome,
    },
    Forgotten {
        count: u64,
    },
}

/// A transaction the table knows about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub key: IdempotencyKey,
    pub ops: Vec<Operation>,
    pub prepare_timeout_ms: u64,
    pub decision: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeyRecord {
    txn: TxnId,
    body_hash: BodyHash,
    outcome: Option<Outcome>,
}

/// The table itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnTable {
    txns: BTreeMap<TxnId, TxnRecord>,
    keys: BTreeMap<IdempotencyKey, KeyRecord>,
    /// Keys of forgotten transactions in the order they were forgotten, for
    /// bounded retention (oldest evicted first).
    retired_keys: BTreeMap<u64, IdempotencyKey>,
    next_retired_seq: u64,
    /// Most idempotency keys of finished transactions kept.
    key_retention: u64,
}

/// Default number of finished idempotency keys retained (about 200 bytes
/// each in memory and in snapshots).
pub const DEFAULT_KEY_RETENTION: u64 = 1_000_000;

impl Default for TxnTable {
    fn default() -> Self {
        TxnTable::new(DEFAULT_KEY_RETENTION)
    }
}

impl TxnTable {
    pub fn new(key_retention: u64) -> Self {
        TxnTable {
            txns: BTreeMap::new(),
            keys: BTreeMap::new(),
            retired_keys: BTreeMap::new(),
            next_retired_seq: 0,
            key_retention: key_retention.max(1),
        }
    }

    /// Applies one command. Deterministic: same table + same command = same
    /// table and result on every replica.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        let touched: Vec<TxnId> = match command {
            Command::Begin { txn, .. } | Command::Decide { txn, .. } => vec![*txn],
            Command::Forget { txns } => txns.clone(),
        };
        let result = match command {
            Command::Begin { txn, key, body_hash, ops, prepare_timeout_ms } => {
                self.begin(*txn, key, *body_hash, ops, *prepare_timeout_ms)
            }
            Command::Decide { txn, key, outcome } => self.decide(*txn, key.as_ref(), outcome),
            Command::Forget { txns } => self.forget(txns),
        };
        self.check_invariants(&touched);
        result
    }

    fn begin(
        &mut self,
        txn: TxnId,
        key: &IdempotencyKey,
        body_hash: BodyHash,
        ops: &[Operation],
        prepare_timeout_ms: u64,
    ) -> CommandResult {
        if let Some(existing) = self.keys.get(key) {
            // PLANTED BUG (simulator only): a key first used under an earlier leader's term counts as new.
            if paytx_protocol::planted::active(Bug::IdempotencyTwiceAfterLeaderChange)
                && existing.txn.term != txn.term
                && !self.txns.contains_key(&txn)
            {
                self.keys.insert(key.clone(), KeyRecord { txn, body_hash, outcome: None });
                let record = TxnRecord { key: key.clone(), ops: ops.to_vec(), prepare_timeout_ms, decision: None };
                self.txns.insert(txn, record);
                return CommandResult::Begun;
            }
            if existing.body_hash != body_hash {
                return CommandResult::KeyConflict;
            }
            return CommandResult::Existing { txn: existing.txn, state: self.state_of(existing) };
        }
        if self.txns.contains_key(&txn) {
            // Ids are unique by construction (term, node, ever-growing seq);
            // a second Begin of one id under another key is a coordinator
            // bug. Refuse it rather than overwrite the first transaction.
            tracing::error!(%txn, %key, "Begin of a transaction id already in the table; refused");
            return CommandResult::KeyConflict;
        }
        self.keys.insert(key.clone(), KeyRecord { txn, body_hash, outcome: None });
        self.txns.insert(txn, TxnRecord { key: key.clone(), ops: ops.to_vec(), prepare_timeout_ms, decision: None });
        CommandResult::Begun
    }

    fn decide(&mut self, txn: TxnId, key: Option<&IdempotencyKey>, outcome: &Outcome) -> CommandResult {
        if let Some(record) = self.txns.get_mut(&txn) {
            if let Some(decided) = &record.decision {
                return CommandResult::Decided { outcome: decided.clone() };
            }
            record.decision = Some(outcome.clone());
            let key = record.key.clone();
            if let Some(key_record) = self.keys.get_mut(&key) {
                // PLANTED BUG (simulator only): the key may have been taken over by a later txn (see `begin`).
                if paytx_protocol::planted::active(Bug::IdempotencyTwiceAfterLeaderChange) && key_record.txn != txn {
                    return CommandResult::Decided { outcome: outcome.clone() };
                }
                debug_assert_eq!(key_record.txn, txn, "a txn record and its key record agree");
                key_record.outcome = Some(outcome.clone());
            }
            return CommandResult::Decided { outcome: outcome.clone() };
        }
        // Unknown transaction: forgotten (its key may remember the outcome)
        // or never begun (presumed abort).
        let remembered = key
            .and_then(|k| self.keys.get(k))
            .filter(|record| record.txn == txn)
            .and_then(|record| record.outcome.clone());
        // PLANTED BUG (simulator only): presume commit for a transaction the table does not know.
        if paytx_protocol::planted::active(Bug::PresumeCommit) && remembered.is_none() {
            return CommandResult::Decided { outcome: Outcome::Committed };
        }
        CommandResult::Decided { outcome: remembered.unwrap_or(Outcome::Aborted(AbortReason::PresumedAbort)) }
    }

    fn forget(&mut self, txns: &[TxnId]) -> CommandResult {
        let mut count = 0;
        for txn in txns {
            // Only decided transactions may be forgotten: an undecided one
            // still needs its record to be driven to a decision.
            let decided = self.txns.get(txn).is_some_and(|r| r.decision.is_some());
            if !decided {
                continue;
            }
            if let Some(record) = self.txns.remove(txn) {
                count += 1;
                self.retired_keys.insert(self.next_retired_seq, record.key);
                self.next_retired_seq += 1;
            }
        }
        while self.retired_keys.len() as u64 > self.key_retention {
            if let Some((_, key)) = self.retired_keys.pop_first() {
                self.keys.remove(&key);
            }
        }
        CommandResult::Forgotten { count }
    }

    fn state_of(&self, key_record: &KeyRecord) -> TxnState {
        match &key_record.outcome {
            Some(outcome) => TxnState::Decided(outcome.clone()),
            None => TxnState::InProgress,
        }
    }

    /// Checks the transactions a command touched (not the whole table:
    /// that would make every apply O(table) in debug builds).
    fn check_invariants(&self, touched: &[TxnId]) {
        // PLANTED BUG (simulator only): with a key taken over, an older live txn no longer owns its key record.
        if paytx_protocol::planted::active(Bug::IdempotencyTwiceAfterLeaderChange) {
            return;
        }
        if cfg!(debug_assertions) {
            for (txn, record) in touched.iter().filter_map(|txn| self.txns.get(txn).map(|r| (txn, r))) {
                let key = self.keys.get(&record.key);
                assert!(key.is_some_and(|k| k.txn == *txn), "every live txn has its key record");
                assert_eq!(key.and_then(|k| k.outcome.clone()), record.decision, "key and txn agree on the outcome");
            }
        }
    }

    pub fn txn(&self, txn: &TxnId) -> Option<&TxnRecord> {
        self.txns.get(txn)
    }

    /// Every live transaction, in id order.
    pub fn txns(&self) -> impl Iterator<Item = (&TxnId, &TxnRecord)> {
        self.txns.iter()
    }

    pub fn status_of_key(&self, key: &IdempotencyKey) -> Option<TxnStatusView> {
        self.keys.get(key).map(|record| TxnStatusView {
            key: key.clone(),
            txn: record.txn,
            state: self.state_of(record),
        })
    }

    /// (undecided, decided-but-not-forgotten) counts.
    pub fn counts(&self) -> (u64, u64) {
        let undecided = self.txns.values().filter(|r| r.decision.is_none()).count() as u64;
        (undecided, self.txns.len() as u64 - undecided)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paytx_protocol::{AccountId, Currency, Money};

    fn id(seq: u64) -> TxnId {
        TxnId { term: 1, node: 1, seq }
    }

    fn begin(txn: TxnId, key: &str, amount: i64) -> Command {
        let ops = vec![Operation::Credit { account: AccountId(1), amount: Money::new(amount, Currency::CNY) }];
        let body_hash = paytx_protocol::TxnRequest::new(key, ops.clone()).body_hash();
        Command::Begin { txn, key: IdempotencyKey::new(key), body_hash, ops, prepare_timeout_ms: 100 }
    }

    #[test]
    fn first_decision_wins() {
        let mut table = TxnTable::default();
        assert_eq!(table.apply(&begin(id(1), "k", 5)), CommandResult::Begun);
        let commit = Command::Decide { txn: id(1), key: None, outcome: Outcome::Committed };
        let abort = Command::Decide { txn: id(1), key: None, outcome: Outcome::Aborted(AbortReason::PresumedAbort) };
        assert_eq!(table.apply(&commit), CommandResult::Decided { outcome: Outcome::Committed });
        assert_eq!(table.apply(&abort), CommandResult::Decided { outcome: Outcome::Committed });
    }

    #[test]
    fn unknown_transactions_are_presumed_aborted_and_nothing_is_recorded() {
        let mut table = TxnTable::default();
        let commit = Command::Decide { txn: id(9), key: None, outcome: Outcome::Committed };
        assert_eq!(
            table.apply(&commit),
            CommandResult::Decided { outcome: Outcome::Aborted(AbortReason::PresumedAbort) }
        );
        assert_eq!(table.counts(), (0, 0));
    }

    #[test]
    fn idempotency_keys_replay_the_first_outcome_and_refuse_other_bodies() {
        let mut table = TxnTable::default();
        table.apply(&begin(id(1), "k", 5));
        assert_eq!(
            table.apply(&begin(id(2), "k", 5)),
            CommandResult::Existing { txn: id(1), state: TxnState::InProgress }
        );
        assert_eq!(table.apply(&begin(id(3), "k", 6)), CommandResult::KeyConflict);
        table.apply(&Command::Decide { txn: id(1), key: None, outcome: Outcome::Committed });
        table.apply(&Command::Forget { txns: vec![id(1)] });
        assert_eq!(table.counts(), (0, 0));
        // The outcome outlives the transaction record.
        assert_eq!(
            table.apply(&begin(id(4), "k", 5)),
            CommandResult::Existing { txn: id(1), state: TxnState::Decided(Outcome::Committed) }
        );
        let late = Command::Decide {
            txn: id(1),
            key: Some(IdempotencyKey::new("k")),
            outcome: Outcome::Aborted(AbortReason::PresumedAbort),
        };
        assert_eq!(table.apply(&late), CommandResult::Decided { outcome: Outcome::Committed });
    }

    #[test]
    fn undecided_transactions_are_never_forgotten_and_keys_are_bounded() {
        let mut table = TxnTable::new(2);
        table.apply(&begin(id(1), "a", 1));
        assert_eq!(table.apply(&Command::Forget { txns: vec![id(1)] }), CommandResult::Forgotten { count: 0 });
        for (seq, key) in [(2, "b"), (3, "c"), (4, "d")] {
            table.apply(&begin(id(seq), key, 1));
            table.apply(&Command::Decide { txn: id(seq), key: None, outcome: Outcome::Committed });
            table.apply(&Command::Forget { txns: vec![id(seq)] });
        }
        assert!(table.status_of_key(&IdempotencyKey::new("b")).is_none(), "oldest retired key evicted");
        assert!(table.status_of_key(&IdempotencyKey::new("d")).is_some());
        assert!(table.status_of_key(&IdempotencyKey::new("a")).is_some(), "live key kept");
    }

    // Planted bugs (`paytx_protocol::planted`): each test plants its bug,
    // shows the wrong behaviour, and unplants it. Built without
    // `paytx-protocol/planted-bugs`, planting is refused and the test checks
    // the correct behaviour instead (the hooks are inert).

    #[test]
    fn planted_idempotency_twice_after_leader_change_registers_the_key_again() {
        use paytx_protocol::planted::{plant, Bug};
        let mut table = TxnTable::default();
        let first = TxnId { term: 1, node: 1, seq: 1 };
        let retry = TxnId { term: 2, node: 2, seq: 1 };
        let same_term = TxnId { term: 1, node: 1, seq: 2 };
        let planted = plant(Some(Bug::IdempotencyTwiceAfterLeaderChange));
        assert_eq!(table.apply(&begin(first, "k", 5)), CommandResult::Begun);
        // A resubmission under the same leader (term) still finds the original.
        let under_same_term = table.apply(&begin(same_term, "k", 5));
        // The client's retry reaches the next leader.
        let after_leader_change = table.apply(&begin(retry, "k", 5));
        // Both transactions get decided without tripping the table's checks.
        let decide = |txn| Command::Decide { txn, key: None, outcome: Outcome::Committed };
        assert_eq!(table.apply(&decide(first)), CommandResult::Decided { outcome: Outcome::Committed });
        let retry_decided = table.apply(&decide(retry));
        plant(None);
        assert_eq!(under_same_term, CommandResult::Existing { txn: first, state: TxnState::InProgress });
        if !planted {
            assert_eq!(after_leader_change, CommandResult::Existing { txn: first, state: TxnState::InProgress });
            assert_eq!(table.counts(), (0, 1));
            return;
        }
        assert_eq!(after_leader_change, CommandResult::Begun, "the key is registered a second time");
        assert_eq!(retry_decided, CommandResult::Decided { outcome: Outcome::Committed });
        assert_eq!(table.counts(), (0, 2), "one key, two committed transactions");
        assert_eq!(table.status_of_key(&IdempotencyKey::new("k")).map(|s| s.txn), Some(retry));
    }

    #[test]
    fn planted_presume_commit_answers_commit_for_an_unknown_txn() {
        use paytx_protocol::planted::{plant, Bug};
        let mut table = TxnTable::default();
        // What the driver proposes before answering an in-doubt participant.
        let query = Command::Decide { txn: id(9), key: None, outcome: Outcome::Aborted(AbortReason::PresumedAbort) };
        let planted = plant(Some(Bug::PresumeCommit));
        let answer = table.apply(&query);
        plant(None);
        assert_eq!(table.counts(), (0, 0), "nothing recorded either way");
        if !planted {
            assert_eq!(answer, CommandResult::Decided { outcome: Outcome::Aborted(AbortReason::PresumedAbort) });
            return;
        }
        assert_eq!(answer, CommandResult::Decided { outcome: Outcome::Committed });
    }
}
