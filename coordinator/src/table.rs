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
//!   the hash of its body; their outcome outlives the transaction record:
//!   a forgotten transaction's key moves to the [`crate::archive`], where it
//!   is kept for the retention of *log time* — the time the leader stamps
//!   on each entry ([`Command::Stamp`]), never a replica's own clock, so
//!   every replica evicts the same keys at the same entry.
//!
//! No clock, ordered maps only (`BTreeMap`s and imbl's `OrdMap`), so every
//! replica (and every simulator run) iterates in the same order. The one
//! I/O is the archive's, behind the [`KeyArchive`](crate::archive::KeyArchive)
//! seam (in memory for unit tests).

use crate::archive::{Archive, ArchiveEntry, ArchiveError, ArchivedKey, Version};
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
    /// The leader's clock and retention, first in every proposal: the log's
    /// time becomes the larger of what it was and `log_time_ms` (a new
    /// leader's clock may be behind the last one's), and keys retired at
    /// log time `t` are kept until log time `t + key_retention_ms`. Both are
    /// log state, so every replica evicts the same keys at the same entry
    /// whatever its own clock and configuration say. (Last variant: the
    /// log's encoding of the others is unchanged, and entries written
    /// before it existed decode as they were.)
    Stamp { log_time_ms: u64, key_retention_ms: u64 },
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
    // The maps are persistent (structurally shared), so a snapshot's clone
    // of the table is O(1) under the table's lock. They iterate in key
    // order, as `BTreeMap`s do, and encode exactly as they do.
    txns: imbl::OrdMap<TxnId, TxnRecord>,
    /// Keys of live transactions (the archive holds the forgotten ones').
    keys: imbl::OrdMap<IdempotencyKey, KeyRecord>,
    /// Where forgotten transactions' keys go. Not part of the encoding: a
    /// snapshot carries the archive's retained entries beside the table
    /// (`state_machine`), and a decoded table is given its node's archive.
    #[serde(skip)]
    archive: Archive,
    /// Keys retired by the entry being applied, written to the archive
    /// when it is done (one write of the time index per entry). Empty
    /// between entries, so never part of a snapshot.
    #[serde(skip)]
    retiring: Vec<ArchiveEntry>,
    /// The command being applied next: archived keys are versioned by it,
    /// and a lookup sees only versions before it (see `crate::archive`).
    cursor: Version,
    /// The log's time (the largest `Stamp` applied), and the first one.
    log_time_ms: u64,
    first_stamp_ms: Option<u64>,
    /// The retention last stamped (the default until a stamp applies).
    key_retention_ms: u64,
    /// Keys retired at or before this log time are evicted: the largest
    /// `log time - retention` stamped so far. Monotone, so a retention
    /// raised later never brings back a key a replica may already have
    /// deleted (`collect`) while another has not.
    evicted_through_ms: Option<u64>,
    /// Log time at which the first key was archived: until the retention
    /// has passed since, no key can have been evicted.
    first_archived_ms: Option<u64>,
    /// Keys archived since the table began.
    keys_archived: u64,
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

/// The table as versions before the key archive encoded it — keys of
/// forgotten transactions in memory, retained by count: what their
/// snapshots hold. [`FormerTxnTable::migrate`] turns one into today's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FormerTxnTable {
    txns: imbl::OrdMap<TxnId, TxnRecord>,
    keys: imbl::OrdMap<IdempotencyKey, KeyRecord>,
    retired_keys: imbl::OrdMap<u64, IdempotencyKey>,
    next_retired_seq: u64,
    key_retention: u64,
    tombstones: BTreeSet<TxnId>,
    applied_term: u64,
    batch_stats: BatchStats,
}

impl FormerTxnTable {
    /// Today's table for a snapshot whose last entry is `last_index`: the
    /// keys of its forgotten transactions go to `archive`, versioned within
    /// that entry (before every entry a replay applies), stamped 0 (retired
    /// before the log carried time: kept for a retention from the first
    /// stamp). Idempotent: a second migration writes the same versions.
    pub fn migrate(self, archive: Archive, last_index: u64) -> Result<TxnTable, ArchiveError> {
        let mut table = TxnTable::new(archive);
        table.txns = self.txns;
        table.tombstones = self.tombstones;
        table.applied_term = self.applied_term;
        table.batch_stats = self.batch_stats;
        // A key whose transaction is still in the table stays in memory with it.
        let live = |txns: &imbl::OrdMap<TxnId, TxnRecord>, key: &IdempotencyKey, record: &KeyRecord| {
            txns.get(&record.txn).is_some_and(|t| &t.key == key)
        };
        let mut retired = Vec::new();
        for (_, key) in self.retired_keys.iter() {
            let Some(record) = self.keys.get(key) else { continue };
            let Some(outcome) = record.outcome.clone().filter(|_| !live(&table.txns, key, record)) else { continue };
            let archived = ArchivedKey { txn: record.txn, body_hash: record.body_hash, outcome, retired_ms: 0 };
            let position = u32::try_from(retired.len()).unwrap_or(u32::MAX);
            retired.push(ArchiveEntry {
                key: key.clone(),
                version: Version { index: last_index, position },
                record: archived,
            });
        }
        table.archive.0.put_all(&retired)?;
        if !retired.is_empty() {
            table.first_archived_ms = Some(0);
        }
        table.keys_archived = retired.len() as u64;
        table.keys = self
            .keys
            .iter()
            .filter(|(key, record)| live(&table.txns, key, record))
            .map(|(key, record)| (key.clone(), record.clone()))
            .collect();
        table.cursor = Version::start_of(last_index.saturating_add(1));
        Ok(table)
    }
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

pub use paytx_raft::settings::DEFAULT_KEY_RETENTION_SECS;

/// The retention until a [`Command::Stamp`] says otherwise.
pub const DEFAULT_KEY_RETENTION_MS: u64 = DEFAULT_KEY_RETENTION_SECS * 1_000;

impl Default for TxnTable {
    fn default() -> Self {
        TxnTable::new(Archive::default())
    }
}

impl TxnTable {
    pub fn new(archive: Archive) -> Self {
        TxnTable {
            txns: imbl::OrdMap::new(),
            keys: imbl::OrdMap::new(),
            archive,
            retiring: Vec::new(),
            cursor: Version::start_of(0),
            log_time_ms: 0,
            first_stamp_ms: None,
            key_retention_ms: DEFAULT_KEY_RETENTION_MS,
            evicted_through_ms: None,
            first_archived_ms: None,
            keys_archived: 0,
            tombstones: BTreeSet::new(),
            applied_term: 0,
            batch_stats: BatchStats::default(),
        }
    }

    /// Gives a decoded table its node's archive.
    pub fn attach(&mut self, archive: Archive) {
        self.archive = archive;
    }

    /// Entry `index` carried no commands (blank or membership): the next
    /// command is the first of the entry after it.
    pub fn skip_entry(&mut self, index: u64) {
        self.cursor = Version::start_of(index.saturating_add(1));
    }

    /// Applies every command of a proposal, in order, as the entry at log
    /// index `index` of Raft term `term`.
    pub fn apply_proposal(
        &mut self,
        proposal: &Proposal,
        term: u64,
        index: u64,
    ) -> Result<ProposalResult, ArchiveError> {
        assert!(Version::start_of(index) >= self.cursor, "entries apply in log order");
        self.cursor = Version::start_of(index);
        let stats = &mut self.batch_stats;
        stats.proposals += 1;
        stats.commands += proposal.commands.iter().filter(|c| !matches!(c, Command::Stamp { .. })).count() as u64;
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
                Command::Forget { .. } | Command::Stamp { .. } => {}
            }
        }
        if twice {
            stats.proposals_with_a_txn_twice += 1;
        }
        let results =
            proposal.commands.iter().map(|command| self.apply_one(command, term)).collect::<Result<_, _>>()?;
        // The keys the entry retired go to the archive together.
        self.write_retired()?;
        self.skip_entry(index);
        Ok(ProposalResult { results })
    }

    /// What the batched log carried so far (see [`BatchStats`]).
    pub fn batch_stats(&self) -> BatchStats {
        self.batch_stats
    }

    /// Applies one command of an entry of Raft term `term`. Deterministic:
    /// same table + same command + same term = same table and result on
    /// every replica.
    ///
    /// Fails only when the archive cannot be read or written: the node
    /// must then stop (its replica cannot apply the log).
    pub fn apply(&mut self, command: &Command, term: u64) -> Result<CommandResult, ArchiveError> {
        let result = self.apply_one(command, term)?;
        self.write_retired()?;
        Ok(result)
    }

    /// Writes the keys retired since the last write to the archive.
    fn write_retired(&mut self) -> Result<(), ArchiveError> {
        if !self.retiring.is_empty() {
            self.archive.0.put_all(&self.retiring)?;
            self.retiring.clear();
        }
        Ok(())
    }

    /// [`TxnTable::apply`] leaving the keys it retires in `retiring`.
    fn apply_one(&mut self, command: &Command, term: u64) -> Result<CommandResult, ArchiveError> {
        self.observe_term(term);
        let touched: Vec<TxnId> = match command {
            Command::Begin { txn, .. } | Command::Decide { txn, .. } | Command::PresumeAbort { txn } => vec![*txn],
            Command::Forget { txns } => txns.clone(),
            Command::Stamp { .. } => Vec::new(),
        };
        let result = match command {
            Command::Begin { txn, key, body_hash, ops, prepare_timeout_ms } => {
                self.begin(*txn, key, *body_hash, ops, *prepare_timeout_ms, term)?
            }
            Command::Decide { txn, key, outcome } => self.decide(*txn, key.as_ref(), outcome)?,
            Command::Forget { txns } => self.forget(txns),
            Command::PresumeAbort { txn } => match self.txns.get(txn) {
                Some(TxnRecord { decision: Some(outcome), .. }) => CommandResult::Decided { outcome: outcome.clone() },
                Some(TxnRecord { decision: None, .. }) => CommandResult::InProgress,
                None => self.decide(*txn, None, &Outcome::Aborted(AbortReason::PresumedAbort))?,
            },
            Command::Stamp { log_time_ms, key_retention_ms } => {
                // Log time never goes back, whatever the new leader's clock.
                self.log_time_ms = self.log_time_ms.max(*log_time_ms);
                self.first_stamp_ms.get_or_insert(self.log_time_ms);
                self.key_retention_ms = (*key_retention_ms).max(1);
                if let Some(through_ms) = self.log_time_ms.checked_sub(self.key_retention_ms) {
                    self.evicted_through_ms = Some(self.evicted_through_ms.map_or(through_ms, |w| w.max(through_ms)));
                }
                CommandResult::None
            }
        };
        self.check_invariants(&touched);
        self.cursor.position =
            self.cursor.position.checked_add(1).expect("a proposal holds far fewer than 2^32 commands");
        Ok(result)
    }

    fn begin(
        &mut self,
        txn: TxnId,
        key: &IdempotencyKey,
        body_hash: BodyHash,
        ops: &[Operation],
        prepare_timeout_ms: u64,
        term: u64,
    ) -> Result<CommandResult, ArchiveError> {
        let presumed = Outcome::Aborted(AbortReason::PresumedAbort);
        // A Begin is only valid in an entry of its own id's term (the term
        // its leader assigned the id in). That is what lets tombstones of
        // older terms go: see `tombstones`.
        if txn.term != term {
            tracing::warn!(%txn, term, "Begin proposed under another term than its id's; refused");
            return Ok(CommandResult::Tombstoned { outcome: presumed });
        }
        let tombstoned = self.tombstones.remove(&txn)
            // PLANTED BUG (simulator only): a late Begin ignores the presumed abort of its id.
            && !paytx_protocol::planted::active(Bug::TombstoneIgnored);
        if tombstoned {
            self.batch_stats.tombstoned_begins += 1;
            // The transaction is aborted for good. Its key remembers that
            // outcome (when still free), so a retry with the same key gets
            // the first outcome again, as Stripe's keys do.
            if self.find_key(key)?.is_none() {
                self.archive_key(key, txn, body_hash, presumed.clone());
            }
            return Ok(CommandResult::Tombstoned { outcome: presumed });
        }
        if let Some(existing) = self.find_key(key)? {
            // PLANTED BUG (simulator only): a key first used under an earlier leader's term counts as new.
            if paytx_protocol::planted::active(Bug::IdempotencyTwiceAfterLeaderChange)
                && existing.txn.term != txn.term
                && !self.txns.contains_key(&txn)
            {
                self.keys.insert(key.clone(), KeyRecord { txn, body_hash, outcome: None });
                let record = TxnRecord { key: key.clone(), ops: ops.to_vec(), prepare_timeout_ms, decision: None };
                self.txns.insert(txn, record);
                return Ok(CommandResult::Begun);
            }
            if existing.body_hash != body_hash {
                return Ok(CommandResult::KeyConflict);
            }
            return Ok(CommandResult::Existing { txn: existing.txn, state: self.state_of(&existing) });
        }
        if self.txns.contains_key(&txn) {
            // Ids are unique by construction (term, node, ever-growing seq);
            // a second Begin of one id under another key is a coordinator
            // bug. Refuse it rather than overwrite the first transaction.
            tracing::error!(%txn, %key, "Begin of a transaction id already in the table; refused");
            return Ok(CommandResult::KeyConflict);
        }
        self.keys.insert(key.clone(), KeyRecord { txn, body_hash, outcome: None });
        self.txns.insert(txn, TxnRecord { key: key.clone(), ops: ops.to_vec(), prepare_timeout_ms, decision: None });
        Ok(CommandResult::Begun)
    }

    fn decide(
        &mut self,
        txn: TxnId,
        key: Option<&IdempotencyKey>,
        outcome: &Outcome,
    ) -> Result<CommandResult, ArchiveError> {
        if let Some(record) = self.txns.get_mut(&txn) {
            if let Some(decided) = &record.decision {
                return Ok(CommandResult::Decided { outcome: decided.clone() });
            }
            record.decision = Some(outcome.clone());
            let key = record.key.clone();
            if let Some(key_record) = self.keys.get_mut(&key) {
                // PLANTED BUG (simulator only): the key may have been taken over by a later txn (see `begin`).
                if paytx_protocol::planted::active(Bug::IdempotencyTwiceAfterLeaderChange) && key_record.txn != txn {
                    return Ok(CommandResult::Decided { outcome: outcome.clone() });
                }
                assert_eq!(key_record.txn, txn, "a txn record and its key record agree");
                key_record.outcome = Some(outcome.clone());
            }
            return Ok(CommandResult::Decided { outcome: outcome.clone() });
        }
        // Unknown transaction: forgotten (its key may remember the outcome)
        // or never begun (presumed abort).
        let remembered = match key {
            Some(key) => self.find_key(key)?.filter(|record| record.txn == txn).and_then(|record| record.outcome),
            None => None,
        };
        // PLANTED BUG (simulator only): presume commit for a transaction the table does not know.
        if paytx_protocol::planted::active(Bug::PresumeCommit) && remembered.is_none() {
            return Ok(CommandResult::Decided { outcome: Outcome::Committed });
        }
        if let Some(outcome) = remembered {
            return Ok(CommandResult::Decided { outcome });
        }
        // Never begun here (yet). Its prepares may have run in parallel with
        // a Begin still on its way: when that Begin can still apply (its id
        // is of the current term), leave a tombstone so it is refused.
        if txn.term >= self.applied_term && self.tombstones.insert(txn) {
            self.batch_stats.tombstones += 1;
        }
        Ok(CommandResult::Decided { outcome: Outcome::Aborted(AbortReason::PresumedAbort) })
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

    /// The key's record: the live transaction's, or the archived one of a
    /// forgotten transaction while the retention keeps it.
    fn find_key(&self, key: &IdempotencyKey) -> Result<Option<KeyRecord>, ArchiveError> {
        if let Some(record) = self.keys.get(key) {
            return Ok(Some(record.clone()));
        }
        // Retired by an earlier command of this entry: newer than anything
        // the archive holds before the cursor.
        let retiring = self.retiring.iter().rev().find(|entry| &entry.key == key).map(|entry| entry.record.clone());
        let archived = match retiring {
            Some(record) => Some(record),
            None => self.archive.0.get(key, self.cursor)?,
        };
        let archived = archived.filter(|record| self.is_retained(record));
        Ok(archived.map(|a| KeyRecord { txn: a.txn, body_hash: a.body_hash, outcome: Some(a.outcome) }))
    }

    /// When `record` counts as retired, in log time: a key retired before
    /// the log carried time counts as retired at the first stamp (`None`:
    /// no stamp yet, so no time has passed).
    fn retired_at(&self, retired_ms: u64) -> Option<u64> {
        if retired_ms == 0 {
            self.first_stamp_ms
        } else {
            Some(retired_ms)
        }
    }

    /// Whether an archived key is still retained at the current log time.
    pub fn is_retained(&self, record: &ArchivedKey) -> bool {
        !self.is_evicted(record.retired_ms)
    }

    /// Whether a key retired at `retired_ms` is evicted by now.
    fn is_evicted(&self, retired_ms: u64) -> bool {
        match (self.retired_at(retired_ms), self.evicted_through_ms) {
            (Some(retired_ms), Some(through_ms)) => retired_ms <= through_ms,
            _ => false,
        }
    }

    /// Moves a key to the archive, versioned by the command being applied
    /// and retired now (written when the entry is done: `write_retired`).
    fn archive_key(&mut self, key: &IdempotencyKey, txn: TxnId, body_hash: BodyHash, outcome: Outcome) {
        let record = ArchivedKey { txn, body_hash, outcome, retired_ms: self.log_time_ms };
        self.retiring.push(ArchiveEntry { key: key.clone(), version: self.cursor, record });
        self.first_archived_ms.get_or_insert(self.log_time_ms);
        self.keys_archived += 1;
    }

    /// Whether a key may have been evicted by now: one was archived at
    /// least a retention ago (in log time).
    fn may_have_evicted(&self) -> bool {
        self.first_archived_ms.is_some_and(|archived_ms| self.is_evicted(archived_ms))
    }

    /// What a snapshot of this table carries beside it: every archived key
    /// retired before the table's next command and still retained.
    pub fn retained_archive(&self) -> Result<Vec<ArchiveEntry>, ArchiveError> {
        self.archive.0.scan(self.cursor, &|record| self.is_retained(record))
    }

    /// The log-time range of archived keys evicted for every lookup from
    /// now on (log time never goes back), for [`crate::archive::KeyArchive::collect`]:
    /// `None` while none is.
    pub fn collectable_ms(&self) -> Option<(u64, u64)> {
        let through_ms = self.evicted_through_ms?;
        // Keys stamped 0 count as retired at the first stamp.
        let from_ms = if self.is_evicted(0) { 0 } else { 1 };
        (from_ms <= through_ms).then_some((from_ms, through_ms))
    }

    /// The log's time and the retention in force.
    pub fn log_time_ms(&self) -> u64 {
        self.log_time_ms
    }

    pub fn key_retention_ms(&self) -> u64 {
        self.key_retention_ms
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
            if self.txns.get(txn).is_none_or(|record| record.decision.is_none()) {
                continue;
            }
            // Moved out, not cloned: a record's operations are its bulk.
            let Some(TxnRecord { decision: Some(outcome), key, .. }) = self.txns.remove(txn) else { continue };
            count += 1;
            // The key goes with its transaction. (Owned by another one only
            // under a planted bug that registered it twice: it stays.)
            if self.keys.get(&key).is_some_and(|record| record.txn == *txn) {
                if let Some(record) = self.keys.remove(&key) {
                    self.archive_key(&key, *txn, record.body_hash, outcome);
                }
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
    ///
    /// An archive that cannot be read answers `None` here: the `Begin` that
    /// follows reads it again while applying, where a failure stops the
    /// node rather than guessing.
    pub fn lookup_key(&self, key: &IdempotencyKey, body_hash: impl FnOnce() -> BodyHash) -> Option<CommandResult> {
        let existing = match self.find_key(key) {
            Ok(existing) => existing?,
            Err(e) => {
                tracing::warn!(%key, error = %e, "key archive unreadable; the Begin will decide");
                return None;
            }
        };
        if existing.body_hash != body_hash() {
            return Some(CommandResult::KeyConflict);
        }
        Some(CommandResult::Existing { txn: existing.txn, state: self.state_of(&existing) })
    }

    /// What the table knows of `key`: held, never registered (while no key
    /// can have been evicted yet), or unknown because keys were.
    pub fn key_status(&self, key: &IdempotencyKey) -> Result<KeyStatus, ArchiveError> {
        Ok(match self.status_of_key(key)? {
            Some(view) => KeyStatus::Known(view),
            None if !self.may_have_evicted() => KeyStatus::NotRegistered,
            None => KeyStatus::Unknown { retention_secs: self.key_retention_ms / 1_000 },
        })
    }

    pub fn status_of_key(&self, key: &IdempotencyKey) -> Result<Option<TxnStatusView>, ArchiveError> {
        Ok(self.find_key(key)?.map(|record| TxnStatusView {
            key: key.clone(),
            txn: record.txn,
            state: self.state_of(&record),
        }))
    }

    /// Idempotency keys of live transactions (in memory).
    pub fn live_keys(&self) -> usize {
        self.keys.len()
    }

    /// Keys archived since the table began (retained or evicted since).
    pub fn keys_archived(&self) -> u64 {
        self.keys_archived
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
        table.apply(command, term).expect("the in-memory archive never fails")
    }

    /// Stamps log time `log_time_ms` with a retention of `retention_ms`.
    fn stamp(table: &mut TxnTable, log_time_ms: u64, retention_ms: u64) {
        at(table, &Command::Stamp { log_time_ms, key_retention_ms: retention_ms });
    }

    /// Begins, commits and forgets `txn` under `key`.
    fn run_and_forget(table: &mut TxnTable, txn: TxnId, key: &str) {
        assert_eq!(at(table, &begin(txn, key, 1)), CommandResult::Begun);
        at(table, &Command::Decide { txn, key: None, outcome: Outcome::Committed });
        assert_eq!(at(table, &Command::Forget { txns: vec![txn] }), CommandResult::Forgotten { count: 1 });
    }

    fn status(table: &TxnTable, key: &str) -> Option<TxnStatusView> {
        table.status_of_key(&IdempotencyKey::new(key)).expect("the in-memory archive never fails")
    }

    fn id(seq: u64) -> TxnId {
        TxnId { term: 1, node: 1, seq }
    }

    fn begin(txn: TxnId, key: &str, amount: i64) -> Command {
        let ops = vec![Operation::Credit { account: AccountId(1), amount: Money::new(amount, Currency::CNY) }];
        let body_hash = paytx_protocol::TxnRequest::new(key, ops.clone()).body_hash();
        Command::Begin { txn, key: IdempotencyKey::new(key), body_hash, ops, prepare_timeout_ms: 100 }
    }

    /// The table as versions before the key archive encoded it: what their
    /// snapshots hold.
    #[derive(Serialize)]
    struct FormerTable {
        txns: BTreeMap<TxnId, TxnRecord>,
        keys: BTreeMap<IdempotencyKey, KeyRecord>,
        retired_keys: BTreeMap<u64, IdempotencyKey>,
        next_retired_seq: u64,
        key_retention: u64,
        tombstones: BTreeSet<TxnId>,
        applied_term: u64,
        batch_stats: BatchStats,
    }

    fn key_record(txn: TxnId, key: &str, amount: i64, outcome: Option<Outcome>) -> KeyRecord {
        let Command::Begin { body_hash, .. } = begin(txn, key, amount) else { unreachable!("begin builds a Begin") };
        KeyRecord { txn, body_hash, outcome }
    }

    #[test]
    fn a_former_table_migrates_its_retired_keys_to_the_archive() {
        // "a" and "b" were forgotten (retired), "c" is live and undecided.
        let live = begin(id(3), "c", 3);
        let Command::Begin { ops, .. } = &live else { unreachable!("begin builds a Begin") };
        let former = FormerTable {
            txns: BTreeMap::from([(
                id(3),
                TxnRecord { key: IdempotencyKey::new("c"), ops: ops.clone(), prepare_timeout_ms: 100, decision: None },
            )]),
            keys: BTreeMap::from([
                (IdempotencyKey::new("a"), key_record(id(1), "a", 1, Some(Outcome::Committed))),
                (IdempotencyKey::new("b"), key_record(id(2), "b", 2, Some(Outcome::Committed))),
                (IdempotencyKey::new("c"), key_record(id(3), "c", 3, None)),
            ]),
            retired_keys: BTreeMap::from([(0, IdempotencyKey::new("a")), (1, IdempotencyKey::new("b"))]),
            next_retired_seq: 2,
            key_retention: 1_000_000,
            tombstones: BTreeSet::new(),
            applied_term: 1,
            batch_stats: BatchStats::default(),
        };
        let bytes = paytx_protocol::encode(&former).expect("encodes");
        let decoded: FormerTxnTable = paytx_protocol::decode_local(&bytes).expect("a former table decodes");
        let archive = Archive::in_memory();
        let mut table = decoded.migrate(archive.clone(), 41).expect("the in-memory archive never fails");
        assert_eq!(table.live_keys(), 1, "only the live transaction's key stays in memory");
        assert_eq!(table.keys_archived(), 2);
        // A retry of a retired key gets its first outcome, and of the live
        // one its transaction.
        assert_eq!(
            at(&mut table, &begin(id(4), "a", 1)),
            CommandResult::Existing { txn: id(1), state: TxnState::Decided(Outcome::Committed) }
        );
        assert_eq!(at(&mut table, &begin(id(5), "b", 9)), CommandResult::KeyConflict);
        assert_eq!(status(&table, "c").map(|v| v.state), Some(TxnState::InProgress));
        // Keys retired before the log carried time count from the first
        // stamp: kept a full retention after it, then evicted.
        stamp(&mut table, 50_000, 10_000);
        stamp(&mut table, 59_999, 10_000);
        assert!(status(&table, "a").is_some(), "kept a retention from the first stamp");
        stamp(&mut table, 60_000, 10_000);
        assert!(status(&table, "a").is_none() && status(&table, "b").is_none(), "then evicted");
        assert!(status(&table, "c").is_some(), "a live key is never evicted");
        // Migrating again (a restart reading the same old snapshot) writes
        // the same versions: nothing doubles.
        let again: FormerTxnTable = paytx_protocol::decode_local(&bytes).expect("decodes");
        again.migrate(archive.clone(), 41).expect("migrates");
        assert_eq!(archive.0.scan(Version::start_of(u64::MAX), &|_| true).expect("scans").len(), 2);
    }

    #[test]
    fn a_clone_of_the_table_is_unchanged_by_later_commands() {
        let mut table = TxnTable::default();
        stamp(&mut table, 1_000, 1_000);
        at(&mut table, &begin(id(1), "a", 1));
        at(&mut table, &Command::Decide { txn: id(1), key: None, outcome: Outcome::Committed });
        let copy = table.clone();
        let before = paytx_protocol::encode(&copy).expect("encodes");
        at(&mut table, &Command::Forget { txns: vec![id(1)] });
        stamp(&mut table, 2_000, 1_000);
        for (seq, key) in [(2, "b"), (3, "c")] {
            run_and_forget(&mut table, id(seq), key);
        }
        assert!(status(&table, "a").is_none(), "evicted from the table");
        assert_eq!(paytx_protocol::encode(&copy).expect("encodes"), before, "the clone shares nothing mutable");
        assert!(copy.txn(&id(1)).is_some() && status(&copy, "a").is_some());
        assert!(status(&copy, "b").is_none(), "the shared archive shows the clone nothing archived after it");
    }

    #[test]
    fn keys_are_kept_for_the_retention_of_log_time_then_treated_as_new() {
        let mut table = TxnTable::default();
        stamp(&mut table, 10_000, 5_000);
        run_and_forget(&mut table, id(1), "a");
        stamp(&mut table, 12_000, 5_000);
        run_and_forget(&mut table, id(2), "b");
        // Within the retention a retry gets the first outcome.
        stamp(&mut table, 14_999, 5_000);
        let first = CommandResult::Existing { txn: id(1), state: TxnState::Decided(Outcome::Committed) };
        assert_eq!(at(&mut table, &begin(id(3), "a", 1)), first);
        let body_hash = key_record(id(3), "a", 1, None).body_hash;
        assert_eq!(table.lookup_key(&IdempotencyKey::new("a"), || body_hash), Some(first));
        // "a" was retired at 10,000: at 15,000 it is evicted, "b" not.
        stamp(&mut table, 15_000, 5_000);
        assert!(status(&table, "a").is_none());
        assert!(table.lookup_key(&IdempotencyKey::new("a"), || panic!("not asked for a key not held")).is_none());
        assert_eq!(status(&table, "b").map(|v| v.txn), Some(id(2)));
        // A key older than the retention is new: its retry runs again, and
        // its key then remembers the new transaction.
        assert_eq!(at(&mut table, &begin(id(4), "a", 1)), CommandResult::Begun);
        assert_eq!(status(&table, "a").map(|v| v.txn), Some(id(4)));
    }

    #[test]
    fn log_time_never_goes_back_and_a_raised_retention_brings_no_key_back() {
        let mut table = TxnTable::default();
        stamp(&mut table, 10_000, 1_000);
        run_and_forget(&mut table, id(1), "a");
        stamp(&mut table, 11_000, 1_000);
        assert!(status(&table, "a").is_none(), "evicted at 11,000");
        // A new leader whose clock is behind: log time stays.
        stamp(&mut table, 5_000, 1_000);
        assert_eq!(table.log_time_ms(), 11_000);
        assert!(status(&table, "a").is_none());
        // A longer retention from now on keeps what is retained, never what
        // was evicted (another replica may have deleted it already).
        stamp(&mut table, 11_000, 60_000);
        assert_eq!(table.key_retention_ms(), 60_000);
        assert!(status(&table, "a").is_none(), "an evicted key stays evicted");
        run_and_forget(&mut table, id(2), "b");
        stamp(&mut table, 70_000, 60_000);
        assert!(status(&table, "b").is_some(), "kept for the new retention");
        stamp(&mut table, 71_000, 60_000);
        assert!(status(&table, "b").is_none());
    }

    #[test]
    fn collection_deletes_only_what_no_lookup_can_see() {
        let archive = Archive::in_memory();
        let mut table = TxnTable::new(archive.clone());
        assert_eq!(table.collectable_ms(), None, "no time yet");
        run_and_forget(&mut table, id(1), "before-time");
        stamp(&mut table, 10_000, 3_000);
        run_and_forget(&mut table, id(2), "a");
        stamp(&mut table, 12_000, 3_000);
        run_and_forget(&mut table, id(3), "b");
        // Through 9,000 every key is evicted, but none was retired then.
        assert_eq!(table.collectable_ms(), Some((1, 9_000)), "keys stamped 0 are not evicted yet");
        assert_eq!(archive.0.collect(1, 9_000).expect("collects"), 0);
        stamp(&mut table, 13_000, 3_000);
        // Evicted: "before-time" (counts as retired at the first stamp) and "a".
        assert_eq!(table.collectable_ms(), Some((0, 10_000)));
        let (from_ms, through_ms) = table.collectable_ms().expect("some");
        let seen = |table: &TxnTable| ["before-time", "a", "b"].map(|k| status(table, k).is_some());
        let visible = seen(&table);
        assert_eq!(visible, [false, false, true]);
        assert_eq!(archive.0.collect(from_ms, through_ms).expect("collects"), 2);
        assert_eq!(seen(&table), visible, "collection changed no answer");
        assert_eq!(table.retained_archive().expect("scans").len(), 1, "what a snapshot carries: b");
    }

    #[test]
    fn a_replay_over_an_archive_ahead_of_the_table_gives_the_first_results() {
        // Entries 1..=3, each a proposal; the snapshot is the table after 1.
        let entries = [
            vec![
                Command::Stamp { log_time_ms: 1_000, key_retention_ms: 500 },
                begin(id(1), "k", 5),
                Command::Decide { txn: id(1), key: None, outcome: Outcome::Committed },
                Command::Forget { txns: vec![id(1)] },
            ],
            vec![
                // "k" is evicted, so reused as new, then archived again.
                Command::Stamp { log_time_ms: 2_000, key_retention_ms: 500 },
                begin(id(2), "k", 6),
                Command::Decide { txn: id(2), key: None, outcome: Outcome::Aborted(AbortReason::PresumedAbort) },
                Command::Forget { txns: vec![id(2)] },
            ],
            vec![Command::Stamp { log_time_ms: 2_100, key_retention_ms: 500 }, begin(id(3), "k", 6)],
        ]
        .map(|commands| Proposal { commands });
        let archive = Archive::in_memory();
        let mut table = TxnTable::new(archive.clone());
        let mut first = Vec::new();
        let mut snapshot = None;
        for (i, proposal) in entries.iter().enumerate() {
            first.push(table.apply_proposal(proposal, 1, i as u64 + 1).expect("applies"));
            if i == 0 {
                snapshot = Some(table.clone());
            }
        }
        assert_eq!(first[1].results[1], CommandResult::Begun, "an evicted key is new");
        assert_eq!(
            first[2].results[1],
            CommandResult::Existing {
                txn: id(2),
                state: TxnState::Decided(Outcome::Aborted(AbortReason::PresumedAbort))
            }
        );
        // A restart: the table from the snapshot, the archive as the first
        // run left it (holding entry 2's version of "k").
        let mut replayed = snapshot.expect("taken");
        let again: Vec<ProposalResult> = entries[1..]
            .iter()
            .enumerate()
            .map(|(i, proposal)| replayed.apply_proposal(proposal, 1, i as u64 + 2).expect("applies"))
            .collect();
        assert_eq!(again, first[1..], "the replay sees only what the first application saw");
        assert_eq!(replayed, table);
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
    fn undecided_transactions_are_never_forgotten_nor_their_keys_evicted() {
        let mut table = TxnTable::default();
        stamp(&mut table, 1_000, 1_000);
        at(&mut table, &begin(id(1), "a", 1));
        assert_eq!(at(&mut table, &Command::Forget { txns: vec![id(1)] }), CommandResult::Forgotten { count: 0 });
        run_and_forget(&mut table, id(2), "b");
        stamp(&mut table, 5_000, 1_000);
        run_and_forget(&mut table, id(3), "c");
        assert!(status(&table, "b").is_none(), "retired long ago: evicted");
        assert!(status(&table, "c").is_some());
        assert!(status(&table, "a").is_some(), "live key kept");
    }

    #[test]
    fn a_key_not_held_reads_as_never_registered_only_until_a_key_can_be_evicted() {
        let mut table = TxnTable::default();
        let never = IdempotencyKey::new("never");
        let key_status = |table: &TxnTable, key: &IdempotencyKey| table.key_status(key).expect("in memory");
        assert_eq!(key_status(&table, &never), KeyStatus::NotRegistered);
        stamp(&mut table, 1_000, 2_000);
        run_and_forget(&mut table, id(1), "a");
        stamp(&mut table, 2_999, 2_000);
        // "a" is retired and held; nothing can have been evicted yet.
        assert_eq!(key_status(&table, &never), KeyStatus::NotRegistered);
        run_and_forget(&mut table, id(2), "b");
        stamp(&mut table, 3_000, 2_000);
        // "a" is evicted: it committed, and its status must not read as
        // "never registered" — nor may any other key's now.
        assert_eq!(key_status(&table, &IdempotencyKey::new("a")), KeyStatus::Unknown { retention_secs: 2 });
        assert_eq!(key_status(&table, &never), KeyStatus::Unknown { retention_secs: 2 });
        let held = key_status(&table, &IdempotencyKey::new("b"));
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
        assert_eq!(status(&table, "k").map(|s| s.txn), Some(retry));
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
            table.apply(&query, 1).expect("in memory"),
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
        let other_term = table.apply(&begin(id(2), "j", 5), 2).expect("in memory");
        assert_eq!(other_term, CommandResult::Tombstoned { outcome: Outcome::Aborted(AbortReason::PresumedAbort) });
        assert!(status(&table, "j").is_none(), "nothing registered");
        // A tombstone of term 3, then an entry of term 4: no Begin of term 3
        // can apply any more, so the tombstone goes.
        table.apply(&Command::PresumeAbort { txn: TxnId { term: 3, node: 1, seq: 1 } }, 3).expect("in memory");
        assert_eq!(table.tombstone_count(), 1);
        table.observe_term(4);
        assert_eq!(table.tombstone_count(), 0);
        // A presumed abort of an older term's id needs no tombstone at all.
        table.apply(&Command::PresumeAbort { txn: TxnId { term: 3, node: 1, seq: 2 } }, 4).expect("in memory");
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
        let applied = table.apply_proposal(&proposal, 1, 1).expect("in memory");
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
        table.apply(&Command::PresumeAbort { txn: id(7) }, 1).expect("in memory");
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
