//! The replicated transaction table: the coordinator group's state machine.
//!
//! Every coordinator replica applies the same [`Command`]s in log order, so
//! every replica holds the same table. The rules of DESIGN.md live here:
//!
//! * **One decision per transaction, first writer wins.** A `Decide` for a
//!   transaction that already has a decision changes nothing; its proposer
//!   learns the real decision from the [`CommandResult`].
//! * **Presumed abort.** A `Decide` or `PresumeAbort` for a transaction the
//!   table does not know (never begun, or decided, acknowledged and
//!   forgotten) records nothing and answers "aborted" — unless the
//!   idempotency key says otherwise. Prepares run in parallel with the
//!   `Begin`, so a participant may hold a YES for a transaction whose `Begin`
//!   has not applied yet: such a presumed abort leaves a *tombstone* for the
//!   id when its `Begin` can still apply (same term), and that `Begin` is
//!   then refused (`CommandResult::Tombstoned`). A `Begin` is only valid in
//!   an entry of its id's own term, so tombstones of older terms are dropped.
//! * **Idempotency keys** map to the transaction that first used them, with
//!   the hash of its body; their outcome outlives the transaction record.
//!
//! Pure data: no I/O, no clock, ordered maps only (`BTreeMap`s and imbl's `OrdMap`), so every replica (and every
//! simulator run) iterates in the same order.

use paytx_protocol::messages::{KeyStatus, TxnState, TxnStatusView};
use paytx_protocol::planted::Bug;
use paytx_protocol::txn::BodyHash;
use paytx_protocol::{AbortReason, IdempotencyKey, Operation, Outcome, TxnId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// An entry of the coordinator's Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Registers a transaction and its idempotency key before any prepare.
    Begin { txn: TxnId, key: IdempotencyKey, body_hash: BodyHash, ops: Vec<Operation>, prepare_timeout_ms: u64 },
    /// Records the decision (first writer wins).
    Decide { txn: TxnId, key: Option<IdempotencyKey>, outcome: Outcome },
    /// Drops decided transactions every participant has acknowledged.
    Forget { txns: Vec<TxnId> },
    /// The presumed-abort barrier an in-doubt participant's question goes
    /// through: a transaction the table does not know is aborted for good
    /// (a tombstone refuses its late `Begin`); a known one is left alone and
    /// its state reported — an undecided transaction may be implicitly
    /// committed (every YES in, its `Begin` applied), so only its driver
    /// decides it.
    PresumeAbort { txn: TxnId },
}

/// One entry of the coordinator's Raft log: the commands of many
/// transactions, applied one after the other (see `crate::proposer`).
/// Batching is what lets one flush serve many payments: openraft 0.9.25's
/// leader awaits the flush of every entry before taking the next write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub commands: Vec<Command>,
}

/// What applying a [`Proposal`] produced: one result per command, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProposalResult {
    pub results: Vec<CommandResult>,
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
    /// A `Begin` that may not register its transaction: a presumed abort
    /// of this id was committed first (its prepares ran in parallel with the
    /// `Begin`, and an in-doubt participant asked before it applied), or the
    /// `Begin` is stale (proposed under another term than its id's). The
    /// proposer must abort the transaction at every shard.
    Tombstoned {
        outcome: Outcome,
    },
    /// `PresumeAbort` of a transaction the table knows, still undecided.
    InProgress,
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
    // The three maps are persistent (structurally shared), so a snapshot's
    // clone of the table is O(1) under the table's lock: the default of a
    // million retained keys made that clone take about a second (README,
    // Performance). They iterate in key order, as `BTreeMap`s do, and
    // encode exactly as they do.
    txns: imbl::OrdMap<TxnId, TxnRecord>,
    keys: imbl::OrdMap<IdempotencyKey, KeyRecord>,
    /// Keys of forgotten transactions in the order they were forgotten, for
    /// bounded retention (oldest evicted first).
    retired_keys: imbl::OrdMap<u64, IdempotencyKey>,
    next_retired_seq: u64,
    /// Most idempotency keys of finished transactions kept.
    key_retention: u64,
    /// Presumed aborts of transactions of the current term whose `Begin`
    /// has not applied (yet): a late `Begin` of one is refused. Entries of
    /// older terms are dropped when an entry of a newer term applies — a
    /// `Begin` is only valid in its own term's entries, and log terms never
    /// decrease, so none can follow. Bounded by the presumed aborts of one
    /// term (rare: each is an in-doubt query about a transaction the leader
    /// is still beginning).
    #[serde(default)]
    tombstones: BTreeSet<TxnId>,
    /// The term of the last applied entry.
    #[serde(default)]
    applied_term: u64,
    /// What the batched log carried (for the simulator's coverage report).
    #[serde(default)]
    batch_stats: BatchStats,
}

/// Counts of what batching adds, kept by every replica as it applies (so
/// deterministic): the simulator reports them to show those paths ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchStats {
    /// Proposals (log entries with commands) applied, and their commands.
    pub proposals: u64,
    pub commands: u64,
    /// Proposals holding two commands of one transaction.
    pub proposals_with_a_txn_twice: u64,
    /// Presumed-abort barriers applied in a proposal with other commands.
    pub barriers_beside_others: u64,
    /// Tombstones recorded, and Begins they refused.
    pub tombstones: u64,
    pub tombstoned_begins: u64,
}

pub use paytx_raft::settings::DEFAULT_KEY_RETENTION;

impl Default for TxnTable {
    fn default() -> Self {
        TxnTable::new(DEFAULT_KEY_RETENTION)
    }
}

impl TxnTable {
    pub fn new(key_retention: u64) -> Self {
        TxnTable {
            txns: imbl::OrdMap::new(),
            keys: imbl::OrdMap::new(),
            retired_keys: imbl::OrdMap::new(),
            next_retired_seq: 0,
            key_retention: key_retention.max(1),
            tombstones: BTreeSet::new(),
            applied_term: 0,
            batch_stats: BatchStats::default(),
        }
    }

    /// Applies every command of a proposal, in order, as part of an entry
    /// of Raft term `term`.
    pub fn apply_proposal(&mut self, proposal: &Proposal, term: u64) -> ProposalResult {
        let stats = &mut self.batch_stats;
        stats.proposals += 1;
        stats.commands += proposal.commands.len() as u64;
        let mut seen = BTreeSet::new();
        let mut twice = false;
        for command in &proposal.commands {
            match command {
                Command::Begin { txn, .. } | Command::Decide { txn, .. } => twice |= !seen.insert(*txn),
                Command::PresumeAbort { txn } => {
                    twice |= !seen.insert(*txn);
                    if proposal.commands.len() > 1 {
                        stats.barriers_beside_others += 1;
                    }
                }
                Command::Forget { .. } => {}
            }
        }
        if twice {
            stats.proposals_with_a_txn_twice += 1;
        }
        ProposalResult { results: proposal.commands.iter().map(|command| self.apply(command, term)).collect() }
    }

    /// What the batched log carried so far (see [`BatchStats`]).
    pub fn batch_stats(&self) -> BatchStats {
        self.batch_stats
    }

    /// Applies one command of an entry of Raft term `term`. Deterministic:
    /// same table + same command + same term = same table and result on
    /// every replica.
    pub fn apply(&mut self, command: &Command, term: u64) -> CommandResult {
        self.observe_term(term);
        let touched: Vec<TxnId> = match command {
            Command::Begin { txn, .. } | Command::Decide { txn, .. } | Command::PresumeAbort { txn } => vec![*txn],
            Command::Forget { txns } => txns.clone(),
        };
        let result = match command {
            Command::Begin { txn, key, body_hash, ops, prepare_timeout_ms } => {
                self.begin(*txn, key, *body_hash, ops, *prepare_timeout_ms, term)
            }
            Command::Decide { txn, key, outcome } => self.decide(*txn, key.as_ref(), outcome),
            Command::Forget { txns } => self.forget(txns),
            Command::PresumeAbort { txn } => match self.txns.get(txn) {
                Some(TxnRecord { decision: Some(outcome), .. }) => CommandResult::Decided { outcome: outcome.clone() },
                Some(TxnRecord { decision: None, .. }) => CommandResult::InProgress,
                None => self.decide(*txn, None, &Outcome::Aborted(AbortReason::PresumedAbort)),
            },
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
        term: u64,
    ) -> CommandResult {
        let presumed = Outcome::Aborted(AbortReason::PresumedAbort);
        // A Begin is only valid in an entry of its own id's term (the term
        // its leader assigned the id in). That is what lets tombstones of
        // older terms go: see `tombstones`.
        if txn.term != term {
            tracing::warn!(%txn, term, "Begin proposed under another term than its id's; refused");
            return CommandResult::Tombstoned { outcome: presumed };
        }
        let tombstoned = self.tombstones.remove(&txn)
            // PLANTED BUG (simulator only): a late Begin ignores the presumed abort of its id.
            && !paytx_protocol::planted::active(Bug::TombstoneIgnored);
        if tombstoned {
            self.batch_stats.tombstoned_begins += 1;
            // The transaction is aborted for good. Its key remembers that
            // outcome (when still free), so a retry with the same key gets
            // the first outcome again, as Stripe's keys do.
            if !self.keys.contains_key(key) {
                self.keys.insert(key.clone(), KeyRecord { txn, body_hash, outcome: Some(presumed.clone()) });
                self.retire_key(key.clone());
            }
            return CommandResult::Tombstoned { outcome: presumed };
        }
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
                assert_eq!(key_record.txn, txn, "a txn record and its key record agree");
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
        if let Some(outcome) = remembered {
            return CommandResult::Decided { outcome };
        }
        // Never begun here (yet). Its prepares may have run in parallel with
        // a Begin still on its way: when that Begin can still apply (its id
        // is of the current term), leave a tombstone so it is refused.
        if txn.term >= self.applied_term && self.tombstones.insert(txn) {
            self.batch_stats.tombstones += 1;
        }
        CommandResult::Decided { outcome: Outcome::Aborted(AbortReason::PresumedAbort) }
    }

    /// An entry of Raft term `term` is being applied. Log terms never
    /// decrease, and a `Begin` is valid only in its own id's term, so no
    /// `Begin` of an older term can apply from now on: their tombstones go.
    pub fn observe_term(&mut self, term: u64) {
        if term > self.applied_term {
            self.applied_term = term;
            self.tombstones.retain(|txn| txn.term >= term);
        }
    }

    fn retire_key(&mut self, key: IdempotencyKey) {
        self.retired_keys.insert(self.next_retired_seq, key);
        self.next_retired_seq += 1;
        while self.retired_keys.len() as u64 > self.key_retention {
            let Some(&(oldest, _)) = self.retired_keys.get_min() else { break };
            if let Some(key) = self.retired_keys.remove(&oldest) {
                self.keys.remove(&key);
            }
        }
    }

    /// Tombstones held (for status and tests).
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
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
                self.retire_key(record.key);
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
    /// that would make every apply O(table)). On in every build: a broken
    /// table is a bug the node must stop on, not carry on with.
    fn check_invariants(&self, touched: &[TxnId]) {
        // PLANTED BUG (simulator only): with a key taken over, an older live txn no longer owns its key record.
        if paytx_protocol::planted::active(Bug::IdempotencyTwiceAfterLeaderChange) {
            return;
        }
        for (txn, record) in touched.iter().filter_map(|txn| self.txns.get(txn).map(|r| (txn, r))) {
            let key = self.keys.get(&record.key);
            assert!(key.is_some_and(|k| k.txn == *txn), "every live txn has its key record");
            assert_eq!(key.and_then(|k| k.outcome.clone()), record.decision, "key and txn agree on the outcome");
        }
    }

    pub fn txn(&self, txn: &TxnId) -> Option<&TxnRecord> {
        self.txns.get(txn)
    }

    /// Every live transaction, in id order.
    pub fn txns(&self) -> impl Iterator<Item = (&TxnId, &TxnRecord)> {
        self.txns.iter()
    }

    /// What a `Begin` of `key` with the body hashed by `body_hash` would
    /// answer without registering anything: `Existing` or `KeyConflict`, or
    /// `None` for a key the table does not hold (a `Begin` is needed). The
    /// hash is computed only for a key the table holds: a new key's Begin
    /// computes it anyway.
    pub fn lookup_key(&self, key: &IdempotencyKey, body_hash: impl FnOnce() -> BodyHash) -> Option<CommandResult> {
        let existing = self.keys.get(key)?;
        if existing.body_hash != body_hash() {
            return Some(CommandResult::KeyConflict);
        }
        Some(CommandResult::Existing { txn: existing.txn, state: self.state_of(existing) })
    }

    /// What the table knows of `key`: held, never registered (while no key
    /// was ever evicted), or unknown because keys were evicted.
    pub fn key_status(&self, key: &IdempotencyKey) -> KeyStatus {
        match self.status_of_key(key) {
            Some(view) => KeyStatus::Known(view),
            None if self.evicted_keys() == 0 => KeyStatus::NotRegistered,
            None => KeyStatus::Unknown { evicted_keys: self.evicted_keys() },
        }
    }

    /// Keys evicted by retention since the table began: every key retired
    /// (`next_retired_seq` counts them) that is no longer in `retired_keys`.
    /// Part of the replicated state, so every replica answers alike.
    pub fn evicted_keys(&self) -> u64 {
        let held = self.retired_keys.len() as u64;
        assert!(held <= self.next_retired_seq, "retired keys held ({held}) <= keys ever retired");
        self.next_retired_seq - held
    }

    pub fn status_of_key(&self, key: &IdempotencyKey) -> Option<TxnStatusView> {
        self.keys.get(key).map(|record| TxnStatusView {
            key: key.clone(),
            txn: record.txn,
            state: self.state_of(record),
        })
    }

    /// Idempotency keys held (of live and of forgotten transactions).
    pub fn retained_keys(&self) -> usize {
        self.keys.len()
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
    use std::collections::BTreeMap;

    /// Applies `command` in an entry of its transaction's term (a Begin is
    /// only valid in its own term), or of the term applied last.
    fn at(table: &mut TxnTable, command: &Command) -> CommandResult {
        let term = match command {
            Command::Begin { txn, .. } => txn.term,
            _ => table.applied_term.max(1),
        };
        table.apply(command, term)
    }

    fn id(seq: u64) -> TxnId {
        TxnId { term: 1, node: 1, seq }
    }

    fn begin(txn: TxnId, key: &str, amount: i64) -> Command {
        let ops = vec![Operation::Credit { account: AccountId(1), amount: Money::new(amount, Currency::CNY) }];
        let body_hash = paytx_protocol::TxnRequest::new(key, ops.clone()).body_hash();
        Command::Begin { txn, key: IdempotencyKey::new(key), body_hash, ops, prepare_timeout_ms: 100 }
    }

    /// The table as it was before its maps became persistent: what
    /// snapshots written by earlier versions hold.
    #[derive(Serialize)]
    struct FormerTable<'a> {
        txns: BTreeMap<TxnId, TxnRecord>,
        keys: BTreeMap<IdempotencyKey, KeyRecord>,
        retired_keys: BTreeMap<u64, IdempotencyKey>,
        next_retired_seq: u64,
        key_retention: u64,
        tombstones: &'a BTreeSet<TxnId>,
        applied_term: u64,
        batch_stats: BatchStats,
    }

    #[test]
    fn the_table_encodes_as_it_did_with_btreemaps_and_old_snapshots_decode() {
        let mut table = TxnTable::new(2);
        for (seq, key) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
            at(&mut table, &begin(id(seq), key, seq as i64));
            if seq < 4 {
                at(&mut table, &Command::Decide { txn: id(seq), key: None, outcome: Outcome::Committed });
            }
            if seq < 3 {
                at(&mut table, &Command::Forget { txns: vec![id(seq)] });
            }
        }
        assert!(!table.retired_keys.is_empty() && table.evicted_keys() == 0);
        at(&mut table, &begin(id(5), "e", 5));
        at(&mut table, &Command::Decide { txn: id(5), key: None, outcome: Outcome::Committed });
        at(&mut table, &Command::Forget { txns: vec![id(3), id(5)] });
        assert_eq!(table.evicted_keys(), 2, "retention evicted the oldest keys");
        let former = FormerTable {
            txns: table.txns.iter().map(|(k, v)| (*k, v.clone())).collect(),
            keys: table.keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            retired_keys: table.retired_keys.iter().map(|(k, v)| (*k, v.clone())).collect(),
            next_retired_seq: table.next_retired_seq,
            key_retention: table.key_retention,
            tombstones: &table.tombstones,
            applied_term: table.applied_term,
            batch_stats: table.batch_stats,
        };
        let old = paytx_protocol::encode(&former).expect("encodes");
        assert_eq!(paytx_protocol::encode(&table).expect("encodes"), old, "the same bytes");
        let decoded: TxnTable = paytx_protocol::decode_local(&old).expect("an old snapshot decodes");
        assert_eq!(decoded, table);
    }

    #[test]
    fn a_clone_of_the_table_is_unchanged_by_later_commands() {
        let mut table = TxnTable::new(1);
        at(&mut table, &begin(id(1), "a", 1));
        at(&mut table, &Command::Decide { txn: id(1), key: None, outcome: Outcome::Committed });
        let copy = table.clone();
        let before = paytx_protocol::encode(&copy).expect("encodes");
        at(&mut table, &Command::Forget { txns: vec![id(1)] });
        for (seq, key) in [(2, "b"), (3, "c")] {
            at(&mut table, &begin(id(seq), key, 1));
            at(&mut table, &Command::Decide { txn: id(seq), key: None, outcome: Outcome::Committed });
            at(&mut table, &Command::Forget { txns: vec![id(seq)] });
        }
        assert!(table.status_of_key(&IdempotencyKey::new("a")).is_none(), "evicted from the live table");
        assert_eq!(paytx_protocol::encode(&copy).expect("encodes"), before, "the clone shares nothing mutable");
        assert!(copy.txn(&id(1)).is_some() && copy.status_of_key(&IdempotencyKey::new("a")).is_some());
    }

    #[test]
    fn first_decision_wins() {
        let mut table = TxnTable::default();
        assert_eq!(at(&mut table, &begin(id(1), "k", 5)), CommandResult::Begun);
        let commit = Command::Decide { txn: id(1), key: None, outcome: Outcome::Committed };
        let abort = Command::Decide { txn: id(1), key: None, outcome: Outcome::Aborted(AbortReason::PresumedAbort) };
        assert_eq!(at(&mut table, &commit), CommandResult::Decided { outcome: Outcome::Committed });
        assert_eq!(at(&mut table, &abort), CommandResult::Decided { outcome: Outcome::Committed });
    }

    #[test]
    fn unknown_transactions_are_presumed_aborted_and_nothing_is_recorded() {
        let mut table = TxnTable::default();
        let commit = Command::Decide { txn: id(9), key: None, outcome: Outcome::Committed };
        assert_eq!(
            at(&mut table, &commit),
            CommandResult::Decided { outcome: Outcome::Aborted(AbortReason::PresumedAbort) }
        );
        assert_eq!(table.counts(), (0, 0));
    }

    #[test]
    fn idempotency_keys_replay_the_first_outcome_and_refuse_other_bodies() {
        let mut table = TxnTable::default();
        at(&mut table, &begin(id(1), "k", 5));
        assert_eq!(
            at(&mut table, &begin(id(2), "k", 5)),
            CommandResult::Existing { txn: id(1), state: TxnState::InProgress }
        );
        assert_eq!(at(&mut table, &begin(id(3), "k", 6)), CommandResult::KeyConflict);
        at(&mut table, &Command::Decide { txn: id(1), key: None, outcome: Outcome::Committed });
        at(&mut table, &Command::Forget { txns: vec![id(1)] });
        assert_eq!(table.counts(), (0, 0));
        // The outcome outlives the transaction record.
        assert_eq!(
            at(&mut table, &begin(id(4), "k", 5)),
            CommandResult::Existing { txn: id(1), state: TxnState::Decided(Outcome::Committed) }
        );
        let late = Command::Decide {
            txn: id(1),
            key: Some(IdempotencyKey::new("k")),
            outcome: Outcome::Aborted(AbortReason::PresumedAbort),
        };
        assert_eq!(at(&mut table, &late), CommandResult::Decided { outcome: Outcome::Committed });
    }

    #[test]
    fn undecided_transactions_are_never_forgotten_and_keys_are_bounded() {
        let mut table = TxnTable::new(2);
        at(&mut table, &begin(id(1), "a", 1));
        assert_eq!(at(&mut table, &Command::Forget { txns: vec![id(1)] }), CommandResult::Forgotten { count: 0 });
        for (seq, key) in [(2, "b"), (3, "c"), (4, "d")] {
            at(&mut table, &begin(id(seq), key, 1));
            at(&mut table, &Command::Decide { txn: id(seq), key: None, outcome: Outcome::Committed });
            at(&mut table, &Command::Forget { txns: vec![id(seq)] });
        }
        assert!(table.status_of_key(&IdempotencyKey::new("b")).is_none(), "oldest retired key evicted");
        assert!(table.status_of_key(&IdempotencyKey::new("d")).is_some());
        assert!(table.status_of_key(&IdempotencyKey::new("a")).is_some(), "live key kept");
    }

    #[test]
    fn a_key_not_held_reads_as_never_registered_only_until_a_key_is_evicted() {
        let mut table = TxnTable::new(1);
        let never = IdempotencyKey::new("never");
        assert_eq!(table.key_status(&never), KeyStatus::NotRegistered);
        for (seq, key) in [(1, "a"), (2, "b")] {
            at(&mut table, &begin(id(seq), key, 1));
            at(&mut table, &Command::Decide { txn: id(seq), key: None, outcome: Outcome::Committed });
            at(&mut table, &Command::Forget { txns: vec![id(seq)] });
            // "a" is retired and held; nothing evicted yet.
            if seq == 1 {
                assert_eq!(table.evicted_keys(), 0);
                assert_eq!(table.key_status(&never), KeyStatus::NotRegistered);
            }
        }
        // "b" retired pushed "a" out: "a" committed, and its status must not
        // read as "never registered" — nor may any other key's now.
        assert_eq!(table.evicted_keys(), 1);
        assert_eq!(table.key_status(&IdempotencyKey::new("a")), KeyStatus::Unknown { evicted_keys: 1 });
        assert_eq!(table.key_status(&never), KeyStatus::Unknown { evicted_keys: 1 });
        let held = table.key_status(&IdempotencyKey::new("b"));
        assert_eq!(
            held.known().map(|v| (v.txn, v.state.clone())),
            Some((id(2), TxnState::Decided(Outcome::Committed)))
        );
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
        assert_eq!(at(&mut table, &begin(first, "k", 5)), CommandResult::Begun);
        // A resubmission under the same leader (term) still finds the original.
        let under_same_term = at(&mut table, &begin(same_term, "k", 5));
        // The client's retry reaches the next leader.
        let after_leader_change = at(&mut table, &begin(retry, "k", 5));
        // Both transactions get decided without tripping the table's checks.
        let decide = |txn| Command::Decide { txn, key: None, outcome: Outcome::Committed };
        assert_eq!(at(&mut table, &decide(first)), CommandResult::Decided { outcome: Outcome::Committed });
        let retry_decided = at(&mut table, &decide(retry));
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
        let answer = at(&mut table, &query);
        plant(None);
        assert_eq!(table.counts(), (0, 0), "nothing recorded either way");
        if !planted {
            assert_eq!(answer, CommandResult::Decided { outcome: Outcome::Aborted(AbortReason::PresumedAbort) });
            return;
        }
        assert_eq!(answer, CommandResult::Decided { outcome: Outcome::Committed });
    }

    #[test]
    fn a_presumed_abort_before_its_begin_leaves_a_tombstone_the_begin_respects() {
        let mut table = TxnTable::default();
        let txn = id(7);
        let query = Command::PresumeAbort { txn };
        assert_eq!(
            table.apply(&query, 1),
            CommandResult::Decided { outcome: Outcome::Aborted(AbortReason::PresumedAbort) }
        );
        assert_eq!(table.tombstone_count(), 1);
        let late = at(&mut table, &begin(txn, "k", 5));
        assert_eq!(late, CommandResult::Tombstoned { outcome: Outcome::Aborted(AbortReason::PresumedAbort) });
        assert_eq!(table.counts(), (0, 0), "the transaction is not registered");
        assert_eq!(table.tombstone_count(), 0);
        // Its key remembers the outcome: a retry gets the first outcome again.
        assert_eq!(
            at(&mut table, &begin(id(8), "k", 5)),
            CommandResult::Existing { txn, state: TxnState::Decided(Outcome::Aborted(AbortReason::PresumedAbort)) }
        );
    }

    #[test]
    fn the_barrier_leaves_a_known_undecided_transaction_to_its_driver() {
        let mut table = TxnTable::default();
        at(&mut table, &begin(id(1), "k", 5));
        assert_eq!(at(&mut table, &Command::PresumeAbort { txn: id(1) }), CommandResult::InProgress);
        let commit = Command::Decide { txn: id(1), key: None, outcome: Outcome::Committed };
        assert_eq!(at(&mut table, &commit), CommandResult::Decided { outcome: Outcome::Committed });
        assert_eq!(
            at(&mut table, &Command::PresumeAbort { txn: id(1) }),
            CommandResult::Decided { outcome: Outcome::Committed }
        );
        assert_eq!(table.tombstone_count(), 0);
    }

    #[test]
    fn a_begin_is_valid_only_in_its_own_term_and_old_tombstones_go() {
        let mut table = TxnTable::default();
        let stale = at(&mut table, &begin(id(1), "k", 5));
        assert_eq!(stale, CommandResult::Begun);
        let other_term = table.apply(&begin(id(2), "j", 5), 2);
        assert_eq!(other_term, CommandResult::Tombstoned { outcome: Outcome::Aborted(AbortReason::PresumedAbort) });
        assert!(table.status_of_key(&IdempotencyKey::new("j")).is_none(), "nothing registered");
        // A tombstone of term 3, then an entry of term 4: no Begin of term 3
        // can apply any more, so the tombstone goes.
        table.apply(&Command::PresumeAbort { txn: TxnId { term: 3, node: 1, seq: 1 } }, 3);
        assert_eq!(table.tombstone_count(), 1);
        table.observe_term(4);
        assert_eq!(table.tombstone_count(), 0);
        // A presumed abort of an older term's id needs no tombstone at all.
        table.apply(&Command::PresumeAbort { txn: TxnId { term: 3, node: 1, seq: 2 } }, 4);
        assert_eq!(table.tombstone_count(), 0);
    }

    #[test]
    fn a_proposal_applies_its_commands_in_order() {
        let mut table = TxnTable::default();
        let proposal = Proposal {
            commands: vec![
                begin(id(1), "k", 5),
                Command::Decide { txn: id(1), key: None, outcome: Outcome::Committed },
                Command::Decide { txn: id(1), key: None, outcome: Outcome::Aborted(AbortReason::PresumedAbort) },
                Command::Forget { txns: vec![id(1)] },
            ],
        };
        let applied = table.apply_proposal(&proposal, 1);
        assert_eq!(
            applied.results,
            vec![
                CommandResult::Begun,
                CommandResult::Decided { outcome: Outcome::Committed },
                CommandResult::Decided { outcome: Outcome::Committed },
                CommandResult::Forgotten { count: 1 },
            ]
        );
    }

    #[test]
    fn planted_tombstone_ignored_registers_a_presumed_aborted_transaction() {
        use paytx_protocol::planted::{plant, Bug};
        let mut table = TxnTable::default();
        table.apply(&Command::PresumeAbort { txn: id(7) }, 1);
        let planted = plant(Some(Bug::TombstoneIgnored));
        let late = at(&mut table, &begin(id(7), "k", 5));
        plant(None);
        if !planted {
            assert!(matches!(late, CommandResult::Tombstoned { .. }));
            return;
        }
        assert_eq!(late, CommandResult::Begun, "the presumed-aborted transaction is begun after all");
    }
}
