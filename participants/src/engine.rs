//! The participant engine of one shard: events in (prepare, commit, abort),
//! effects out (the records to journal). Pure: no I/O, no clock, no RNG, no
//! threads — the actor does those, so the engine can be tested exhaustively
//! and replayed deterministically.
//!
//! The engine dispatches on the shard's [`EntityKind`] to one of
//! [`crate::accounts`], [`crate::orders`], [`crate::channels`],
//! [`crate::record_store`], and owns what is common to all four: the set of prepared transactions and the bounded
//! memory of recent commits.
//!
//! # Why remember commits
//!
//! Deciding an unknown transaction is a no-op, and re-preparing a prepared
//! one reserves nothing again — both needed because coordinators retry. But
//! a network that duplicates and delays messages can deliver an old
//! `Prepare` *after* the transaction was committed and forgotten here, then
//! a retried `Decide(commit)`: without memory the shard would prepare it
//! afresh and apply it twice. So the engine remembers the last
//! `remembered_commits` committed txn ids (journaled with the commit), and
//! refuses to prepare any txn at or below the newest one it has forgotten
//! (`forgotten_through`). Txn ids grow with time (a term has one leader, whose
//! sequence increases), so that is only ever a prepare long past its
//! deadline; refusing it is always safe (its coordinator aborts).
//!
//! Aborts are remembered too, in memory only and as many: a prepare that
//! arrives after its transaction's abort (a slow channel, a duplicate) is
//! refused at once instead of holding money until the in-doubt query
//! releases it. Losing that memory in a crash costs only that wait.

use crate::accounts::{AccountPlan, AccountsState};
use crate::channels::{ChannelConfig, ChannelsState, ChargePlan};
use crate::orders::{OrderPlan, OrdersState};
use crate::record_store::{RecordPlan, RecordsState, ScanPage};
use crate::records::{EntityRecord, JournalContents, PreparedRecord};
use paytx_protocol::messages::{AccountView, ChargeView, OrderView, RecordView, ShardStatus};
use paytx_protocol::planted::Bug;
use paytx_protocol::{
    AbortReason, AccountId, ChannelId, EntityKind, Operation, OrderId, RecordKey, RecordNs, ShardId, TxnId,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Default for how many committed txn ids a shard remembers.
pub const DEFAULT_REMEMBERED_COMMITS: usize = 65_536;

/// The state of the shard's kind.
#[derive(Debug)]
enum KindState {
    Accounts(AccountsState),
    Orders(OrdersState),
    Channels(ChannelsState),
    Records(RecordsState),
}

/// What one prepared transaction reserved, in its kind's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    Accounts(AccountPlan),
    Orders(OrderPlan),
    Channels(ChargePlan),
    Records(RecordPlan),
}

/// Whether capacity limits apply to a reservation: to new prepares, not to
/// prepared transactions recovered from the journal (their YES is a promise:
/// neither a record limit nor a channel removed from the configuration
/// since refuses them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limits {
    Enforced,
    Waived,
}

#[derive(Debug)]
struct PreparedTxn {
    ops: Vec<Operation>,
    plan: Plan,
}

/// The unit a prepare reserves: an entity, or for channel operations one
/// order's charge on the channel (a channel shard holds many charges); and,
/// for reads only, a whole records namespace (a scan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touch {
    Entity(paytx_protocol::EntityKey),
    Charge(ChannelId, OrderId),
    Namespace(RecordNs),
}

impl Touch {
    /// Whether `op` touches what this names.
    pub fn covers(&self, op: &Operation) -> bool {
        match (self, op) {
            (Touch::Namespace(ns), Operation::PutRecord { key, .. }) => key.ns == *ns,
            (Touch::Namespace(ns), Operation::PutRecordAtCommit { partition, .. }) => partition.ns == *ns,
            (Touch::Namespace(_), _) => false,
            (target, op) => Touch::of(op) == *target,
        }
    }

    pub fn of(op: &Operation) -> Touch {
        match op {
            Operation::Charge { channel, order, .. } | Operation::ChannelRefund { channel, order, .. } => {
                Touch::Charge(*channel, *order)
            }
            other => Touch::Entity(other.entity()),
        }
    }
}

/// The result of a successful [`Engine::prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Newly reserved. Journal this record and sync before voting YES.
    New(PreparedRecord),
    /// Already prepared here with the same operations (a re-sent prepare):
    /// nothing reserved again. Vote YES once the earlier record is synced.
    AlreadyPrepared,
    /// Already committed here (a late duplicate): nothing to do. YES is the
    /// truthful answer; the coordinator has decided long ago.
    AlreadyCommitted,
}

/// The effects of a commit: what to journal, in one atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub txn: TxnId,
    /// After-images of every entity the transaction touched (and left in
    /// existence).
    pub entities: Vec<EntityRecord>,
    /// Records the transaction deleted: delete their stored after-images.
    pub removed: Vec<RecordKey>,
    /// Older commits this one pushed out of memory: delete their records.
    pub forgotten: Vec<TxnId>,
    /// The new `forgotten_through`, when it moved.
    pub forgotten_through: Option<TxnId>,
}

/// What the node found out before a prepare reached the engine — the
/// inputs that are not functions of the shard's state. A replicated shard's
/// leader resolves them once and writes them into the prepare's log entry,
/// so every replica votes the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The channel model declined a charge of the prepare on this channel.
    pub declined: Option<ChannelId>,
    /// `Some(free_bytes)`: the node's disk was below its free-space minimum.
    pub disk_low: Option<u64>,
}

/// The whole state of a shard as a Raft snapshot carries it (and as a
/// replica restores it): committed entities, prepared transactions (their
/// holds and locks come back by reserving them again), the remembered
/// commits and aborts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    pub entities: Vec<EntityRecord>,
    pub prepared: Vec<PreparedRecord>,
    pub committed: Vec<TxnId>,
    pub forgotten_through: Option<TxnId>,
    /// Recent aborts, oldest first: part of the replicated state, so every
    /// replica refuses the same late prepares.
    pub aborted: Vec<TxnId>,
}

/// The committed entities of a shard at one instant: persistent maps that
/// share structure with the live state (later writes copy the paths they
/// change, never what this holds).
#[derive(Debug, Clone)]
enum CommittedEntities {
    Accounts(imbl::OrdMap<AccountId, crate::accounts::Account>),
    Orders(imbl::OrdMap<OrderId, crate::orders::Order>),
    Channels(imbl::OrdMap<crate::channels::ChargeKey, crate::channels::Charge>),
    Records(imbl::OrdMap<RecordKey, crate::record_store::StoredRecord>),
}

/// A shard's state captured by [`Engine::capture`], turned into the
/// [`EngineSnapshot`] a Raft snapshot carries by
/// [`EngineExport::into_snapshot`] (O(entities), so off the node's thread).
#[derive(Debug, Clone)]
pub struct EngineExport {
    entities: CommittedEntities,
    prepared: Vec<PreparedRecord>,
    committed: Vec<TxnId>,
    forgotten_through: Option<TxnId>,
    aborted: Vec<TxnId>,
}

impl EngineExport {
    /// Committed entities captured.
    pub fn entity_count(&self) -> usize {
        match &self.entities {
            CommittedEntities::Accounts(map) => map.len(),
            CommittedEntities::Orders(map) => map.len(),
            CommittedEntities::Channels(map) => map.len(),
            CommittedEntities::Records(map) => map.len(),
        }
    }

    /// The snapshot of the captured state, entities in key order.
    pub fn into_snapshot(self) -> EngineSnapshot {
        let entities = match self.entities {
            CommittedEntities::Accounts(map) => {
                map.into_iter().map(|(id, account)| EntityRecord::Account { id, account }).collect()
            }
            CommittedEntities::Orders(map) => {
                map.into_iter().map(|(id, order)| EntityRecord::Order { id, order }).collect()
            }
            CommittedEntities::Channels(map) => map
                .into_iter()
                .map(|((channel, order), charge)| EntityRecord::Charge { channel, order, charge })
                .collect(),
            CommittedEntities::Records(map) => {
                map.into_iter().map(|(key, record)| EntityRecord::Record { key, record }).collect()
            }
        };
        EngineSnapshot {
            entities,
            prepared: self.prepared,
            committed: self.committed,
            forgotten_through: self.forgotten_through,
            aborted: self.aborted,
        }
    }
}

/// A journal that replays into an impossible state. Names the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryError {
    pub key: String,
    pub reason: String,
}

/// The in-memory state of one participant shard.
#[derive(Debug)]
pub struct Engine {
    shard: ShardId,
    state: KindState,
    prepared: BTreeMap<TxnId, PreparedTxn>,
    committed: BTreeSet<TxnId>,
    /// Recently aborted txn ids (memory only), oldest first in the queue.
    aborted: BTreeSet<TxnId>,
    aborted_order: VecDeque<TxnId>,
    forgotten_through: Option<TxnId>,
    remembered_commits: usize,
    /// Most records (records shards only), enforced on new prepares.
    max_records: usize,
}

/// The abort reason for an operation sent to a shard of another kind: the
/// entity is unknown *here*. (The coordinator routes by the shard map, so
/// this only happens when node configurations disagree.)
pub(crate) fn misrouted(op: &Operation) -> AbortReason {
    match op {
        Operation::OpenAccount { account, .. }
        | Operation::Debit { account, .. }
        | Operation::Credit { account, .. } => AbortReason::UnknownAccount(*account),
        Operation::CreateOrder { order, .. }
        | Operation::MarkPaid { order, .. }
        | Operation::RefundOrder { order, .. }
        | Operation::CloseOrder { order } => AbortReason::UnknownOrder(*order),
        Operation::Charge { channel, .. } | Operation::ChannelRefund { channel, .. } => {
            AbortReason::UnknownChannel(*channel)
        }
        // There is no "unknown record" (a write may create it): refuse, naming why.
        Operation::PutRecord { .. } | Operation::PutRecordAtCommit { .. } => AbortReason::Conflict {
            entity: format!("{} (sent to a shard of another kind: shard maps disagree)", op.entity()),
        },
    }
}

impl Engine {
    /// An empty shard. `channels` matters only for a channel shard.
    pub fn new(shard: ShardId, channels: &[ChannelConfig]) -> Self {
        let state = match shard.kind {
            EntityKind::Account => KindState::Accounts(AccountsState::default()),
            EntityKind::Order => KindState::Orders(OrdersState::default()),
            EntityKind::Channel => KindState::Channels(ChannelsState::new(channels)),
            EntityKind::Record => KindState::Records(RecordsState::default()),
        };
        Engine {
            shard,
            state,
            prepared: BTreeMap::new(),
            committed: BTreeSet::new(),
            forgotten_through: None,
            aborted: BTreeSet::new(),
            aborted_order: VecDeque::new(),
            remembered_commits: DEFAULT_REMEMBERED_COMMITS,
            max_records: crate::config::DEFAULT_MAX_RECORDS,
        }
    }

    /// Sets the most records a records shard holds (see
    /// [`crate::ParticipantConfig::max_records`]).
    pub fn with_max_records(mut self, max_records: usize) -> Self {
        self.max_records = max_records;
        self
    }

    /// Sets how many committed txn ids are remembered (see the module doc).
    pub fn with_remembered_commits(mut self, remembered_commits: usize) -> Self {
        self.remembered_commits = remembered_commits;
        self
    }

    /// Rebuilds a shard from its journal: committed entities first, then the
    /// prepared transactions, whose holds and locks come back by validating
    /// them again. Anything that does not fit is an error naming the record,
    /// never skipped.
    pub fn recover(
        shard: ShardId,
        channels: &[ChannelConfig],
        remembered_commits: usize,
        mut contents: JournalContents,
    ) -> Result<Self, RecoveryError> {
        // PLANTED BUG (simulator only): forget the prepared transactions, and so their holds and locks.
        if paytx_protocol::planted::active(Bug::DropHoldsOnRestart) {
            contents.prepared.clear();
        }
        let mut engine = Engine::new(shard, channels).with_remembered_commits(remembered_commits);
        for (key, record) in contents.entities {
            engine.restore_entity(record).map_err(|reason| RecoveryError { key, reason })?;
        }
        engine.committed = contents.committed.into_iter().collect();
        engine.forgotten_through = contents.forgotten_through;
        for (key, record) in contents.prepared {
            if engine.committed.contains(&record.txn) {
                return Err(RecoveryError { key, reason: format!("{} is both prepared and committed", record.txn) });
            }
            if engine.prepared.contains_key(&record.txn) {
                return Err(RecoveryError { key, reason: format!("{} prepared twice", record.txn) });
            }
            engine.reserve(record.txn, record.ops, Limits::Waived).map_err(|reason| RecoveryError {
                key,
                reason: format!("the prepared transaction no longer validates: {reason}"),
            })?;
        }
        engine.check_invariants().map_err(|reason| RecoveryError { key: "(whole shard)".to_string(), reason })?;
        Ok(engine)
    }

    /// The shard's whole state, for a snapshot (O(entities)).
    pub fn export(&self) -> EngineSnapshot {
        self.capture().into_snapshot()
    }

    /// What [`Engine::export`] would return, captured without copying the
    /// committed entities: their persistent maps are cloned in O(1) and
    /// share structure with the live state, so a Raft group holds its state
    /// lock only for this (plus the bounded prepared, committed and aborted
    /// lists), and builds the snapshot's entity list off the node's thread
    /// with [`EngineExport::into_snapshot`]. A 2.1-million-record export
    /// held the lock for 1.1-1.8 s before (README, Performance).
    pub fn capture(&self) -> EngineExport {
        let entities = match &self.state {
            KindState::Accounts(state) => CommittedEntities::Accounts(state.committed_map()),
            KindState::Orders(state) => CommittedEntities::Orders(state.committed_map()),
            KindState::Channels(state) => CommittedEntities::Channels(state.committed_map()),
            KindState::Records(state) => CommittedEntities::Records(state.committed_map()),
        };
        EngineExport {
            entities,
            prepared: self
                .prepared
                .iter()
                .map(|(txn, prepared)| PreparedRecord { txn: *txn, ops: prepared.ops.clone() })
                .collect(),
            committed: self.committed.iter().copied().collect(),
            forgotten_through: self.forgotten_through,
            aborted: self.aborted_order.iter().copied().collect(),
        }
    }

    /// Rebuilds a shard from [`Engine::export`]'s snapshot, exactly as it
    /// was: prepared transactions are reserved again with the capacity
    /// limits waived (their YES was promised under the limits of then).
    pub fn from_snapshot(
        shard: ShardId,
        channels: &[ChannelConfig],
        remembered_commits: usize,
        snapshot: EngineSnapshot,
    ) -> Result<Self, RecoveryError> {
        let contents = JournalContents {
            entities: snapshot
                .entities
                .into_iter()
                .enumerate()
                .map(|(at, record)| (format!("snapshot entity #{at}"), record))
                .collect(),
            prepared: snapshot
                .prepared
                .into_iter()
                .map(|record| (format!("snapshot prepared {}", record.txn), record))
                .collect(),
            committed: snapshot.committed,
            forgotten_through: snapshot.forgotten_through,
        };
        let mut engine = Engine::recover(shard, channels, remembered_commits, contents)?;
        for txn in snapshot.aborted {
            engine.remember_abort(txn);
        }
        Ok(engine)
    }

    /// Why a prepare is refused before the engine looks at its operations
    /// (nothing is reserved): it is new work and the disk is nearly full,
    /// the channel declined, or `max_prepared` transactions are in doubt
    /// here. `None` for a re-sent prepare of a transaction prepared or
    /// committed here: its YES was promised.
    pub fn refusal(&self, txn: TxnId, admission: Admission, max_prepared: usize) -> Option<AbortReason> {
        if self.is_prepared(txn) || self.is_committed(txn) {
            return None;
        }
        if let Some(free_bytes) = admission.disk_low {
            return Some(AbortReason::DiskFull { shard: self.shard, free_bytes });
        }
        if let Some(channel) = admission.declined {
            return Some(AbortReason::ChannelDeclined { channel });
        }
        if self.prepared_count() >= max_prepared {
            let entity =
                format!("shard {} ({} transactions in doubt, the configured max_prepared)", self.shard, max_prepared);
            return Some(AbortReason::Conflict { entity });
        }
        None
    }

    fn restore_entity(&mut self, record: EntityRecord) -> Result<(), String> {
        let kind = record.kind();
        match (&mut self.state, record) {
            (KindState::Accounts(state), EntityRecord::Account { id, account }) => state.restore(id, account),
            (KindState::Orders(state), EntityRecord::Order { id, order }) => state.restore(id, order),
            (KindState::Channels(state), EntityRecord::Charge { channel, order, charge }) => {
                state.restore((channel, order), charge)
            }
            (KindState::Records(state), EntityRecord::Record { key, record }) => state.restore(key, record),
            _ => Err(format!("a {} record in a {} shard", kind.name(), self.shard.kind.name())),
        }
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Validates this shard's operations of `txn`, in order, each seeing the
    /// effect of the ones before; if all pass, reserves (holds, locks, ids)
    /// and returns the record to journal. When it fails nothing changed.
    pub fn prepare(&mut self, txn: TxnId, ops: &[Operation]) -> Result<Prepared, AbortReason> {
        if let Some(prepared) = self.prepared.get(&txn) {
            if prepared.ops == ops {
                return Ok(Prepared::AlreadyPrepared);
            }
            // Same id, other body: a coordinator bug. Refuse; the earlier
            // reservation stays until its decision.
            return Err(AbortReason::Conflict { entity: format!("{txn} (prepared here with other operations)") });
        }
        if self.committed.contains(&txn) {
            return Ok(Prepared::AlreadyCommitted);
        }
        if self.aborted.contains(&txn) {
            // Decided already; the answer no longer matters, holding does.
            return Err(AbortReason::PrepareTimeout { shard: self.shard });
        }
        if self.forgotten_through.is_some_and(|through| txn <= through) {
            return Err(AbortReason::PrepareTimeout { shard: self.shard });
        }
        self.reserve(txn, ops.to_vec(), Limits::Enforced)?;
        Ok(Prepared::New(PreparedRecord { txn, ops: ops.to_vec() }))
    }

    fn reserve(&mut self, txn: TxnId, ops: Vec<Operation>, limits: Limits) -> Result<(), AbortReason> {
        let plan = match &mut self.state {
            KindState::Accounts(state) => Plan::Accounts(state.prepare(txn, &ops)?),
            KindState::Orders(state) => Plan::Orders(state.prepare(txn, &ops)?),
            KindState::Channels(state) => Plan::Channels(match limits {
                Limits::Enforced => state.prepare(txn, &ops)?,
                Limits::Waived => state.restore_prepared(txn, &ops)?,
            }),
            KindState::Records(state) => {
                let max_records = match limits {
                    Limits::Enforced => Some(self.max_records),
                    Limits::Waived => None,
                };
                Plan::Records(state.prepare(txn, &ops, max_records).map_err(|full| match full {
                    crate::record_store::Refused::Abort(reason) => reason,
                    crate::record_store::Refused::Full { max_records } => {
                        AbortReason::RecordStoreFull { shard: self.shard, max_records }
                    }
                })?)
            }
        };
        self.prepared.insert(txn, PreparedTxn { ops, plan });
        Ok(())
    }

    /// Applies a prepared transaction. `None`: not prepared here (already
    /// decided and forgotten, or never prepared) — nothing to do. `at_ms`
    /// is the commit's time, the coordinator's log time its decision carried
    /// ([`crate::Decide::at_ms`]): it matters only to `PutRecordAtCommit`,
    /// whose entry is stored under it.
    pub fn commit(&mut self, txn: TxnId, at_ms: u64) -> Option<Committed> {
        let prepared = self.prepared.remove(&txn)?;
        let mut removed = Vec::new();
        let entities = match (&mut self.state, prepared.plan) {
            (KindState::Accounts(state), Plan::Accounts(plan)) => {
                state.commit(txn, plan).into_iter().map(|(id, account)| EntityRecord::Account { id, account }).collect()
            }
            (KindState::Orders(state), Plan::Orders(plan)) => {
                state.commit(txn, plan).into_iter().map(|(id, order)| EntityRecord::Order { id, order }).collect()
            }
            (KindState::Channels(state), Plan::Channels(plan)) => state
                .commit(txn, plan)
                .into_iter()
                .map(|((channel, order), charge)| EntityRecord::Charge { channel, order, charge })
                .collect(),
            (KindState::Records(state), Plan::Records(plan)) => {
                let changes = state.commit(txn, plan, at_ms);
                removed = changes.removed;
                changes.written.into_iter().map(|(key, record)| EntityRecord::Record { key, record }).collect()
            }
            _ => unreachable!("a plan is made by the shard's own kind"),
        };
        self.committed.insert(txn);
        let mut forgotten = Vec::new();
        while self.committed.len() > self.remembered_commits {
            let Some(oldest) = self.committed.pop_first() else {
                break;
            };
            forgotten.push(oldest);
        }
        let moved = forgotten.iter().max().copied().filter(|newest| self.forgotten_through < Some(*newest));
        if moved.is_some() {
            self.forgotten_through = moved;
        }
        Some(Committed { txn, entities, removed, forgotten, forgotten_through: moved })
    }

    /// Releases everything a prepared transaction reserved, and remembers
    /// the abort so a late prepare of it is refused. `false`: not prepared
    /// here — nothing to release (nothing to journal).
    pub fn abort(&mut self, txn: TxnId) -> bool {
        if !self.committed.contains(&txn) {
            self.remember_abort(txn);
        }
        let Some(prepared) = self.prepared.remove(&txn) else {
            return false;
        };
        match (&mut self.state, prepared.plan) {
            (KindState::Accounts(state), Plan::Accounts(plan)) => state.abort(txn, plan),
            (KindState::Orders(state), Plan::Orders(plan)) => state.abort(txn, plan),
            (KindState::Channels(state), Plan::Channels(plan)) => state.abort(txn, plan),
            (KindState::Records(state), Plan::Records(plan)) => state.abort(txn, plan),
            _ => unreachable!("a plan is made by the shard's own kind"),
        }
        true
    }

    fn remember_abort(&mut self, txn: TxnId) {
        if self.aborted.insert(txn) {
            self.aborted_order.push_back(txn);
        }
        while self.aborted_order.len() > self.remembered_commits {
            let Some(oldest) = self.aborted_order.pop_front() else {
                break;
            };
            self.aborted.remove(&oldest);
        }
    }

    pub fn is_prepared(&self, txn: TxnId) -> bool {
        self.prepared.contains_key(&txn)
    }

    /// `true` when `txn` committed here and is still remembered.
    pub fn is_committed(&self, txn: TxnId) -> bool {
        self.committed.contains(&txn)
    }

    /// Prepared, undecided transactions, in id order.
    pub fn prepared_txns(&self) -> Vec<TxnId> {
        self.prepared.keys().copied().collect()
    }

    pub fn prepared_count(&self) -> usize {
        self.prepared.len()
    }

    /// The prepared transactions whose operations touch what `target`
    /// names — what a read of it waits for.
    pub fn prepared_touching(&self, target: &Touch) -> BTreeSet<TxnId> {
        self.prepared
            .iter()
            .filter(|(_, prepared)| prepared.ops.iter().any(|op| target.covers(op)))
            .map(|(txn, _)| *txn)
            .collect()
    }

    /// What the prepared transaction `txn` reserves here (empty when it is
    /// not prepared here): what its decision may release.
    pub fn touches_of(&self, txn: TxnId) -> BTreeSet<Touch> {
        self.prepared.get(&txn).map(|prepared| prepared.ops.iter().map(Touch::of).collect()).unwrap_or_default()
    }

    /// Whether a prepared transaction other than `txn` touches an entity of
    /// `ops`: a refusal of `ops` may then turn into a YES once it is decided.
    pub fn blocked_by_prepared(&self, txn: TxnId, ops: &[Operation]) -> bool {
        let targets: BTreeSet<Touch> = ops.iter().map(Touch::of).collect();
        self.prepared
            .iter()
            .filter(|(other, _)| **other != txn)
            .any(|(_, prepared)| prepared.ops.iter().any(|op| targets.contains(&Touch::of(op))))
    }

    /// The configured channel `id` (channel shards only).
    pub fn channel(&self, id: ChannelId) -> Option<&ChannelConfig> {
        match &self.state {
            KindState::Channels(state) => state.channel(id),
            _ => None,
        }
    }

    pub fn account(&self, id: AccountId) -> Option<AccountView> {
        match &self.state {
            KindState::Accounts(state) => state.view(id),
            _ => None,
        }
    }

    pub fn order(&self, id: OrderId) -> Option<OrderView> {
        match &self.state {
            KindState::Orders(state) => state.view(id),
            _ => None,
        }
    }

    pub fn charge(&self, channel: ChannelId, order: OrderId) -> Option<ChargeView> {
        match &self.state {
            KindState::Channels(state) => state.view(channel, order),
            _ => None,
        }
    }

    /// A committed record (records shards only).
    pub fn record(&self, key: RecordKey) -> Option<RecordView> {
        match &self.state {
            KindState::Records(state) => state.view(key),
            _ => None,
        }
    }

    /// One page of the committed records of namespace `ns` after `after`,
    /// bounded by `limit` and `max_bytes` (see [`crate::record_store`]);
    /// empty on a shard of another kind.
    pub fn scan_records(&self, ns: RecordNs, after: Option<RecordKey>, limit: u32, max_bytes: usize) -> ScanPage {
        match &self.state {
            KindState::Records(state) => state.scan(ns, after, limit, max_bytes),
            _ => ScanPage::default(),
        }
    }

    /// One page of a range read of an ordered partition (see
    /// [`crate::record_store`]); empty on a shard of another kind.
    pub fn scan_range(&self, scan: &paytx_protocol::RangeScan, max_bytes: usize) -> ScanPage {
        match &self.state {
            KindState::Records(state) => state.scan_range(scan, max_bytes),
            _ => ScanPage::default(),
        }
    }

    /// Entity count (accounts, orders, charges or records) and in-doubt count.
    pub fn status(&self) -> ShardStatus {
        let entities = match &self.state {
            KindState::Accounts(state) => state.entity_count(),
            KindState::Orders(state) => state.entity_count(),
            KindState::Channels(state) => state.entity_count(),
            KindState::Records(state) => state.entity_count(),
        };
        ShardStatus {
            shard: self.shard,
            entities: entities as u64,
            in_doubt: self.prepared.len() as u64,
            leader: None,
            voters: Vec::new(),
        }
    }

    /// Checks every invariant of the shard (O(entities): for tests and
    /// recovery; every change checks what it touched in debug builds).
    pub fn check_invariants(&self) -> Result<(), String> {
        match &self.state {
            KindState::Accounts(state) => state.check_invariants(),
            KindState::Orders(state) => state.check_invariants(),
            KindState::Channels(state) => state.check_invariants(),
            KindState::Records(state) => state.check_invariants(),
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod record_tests;
