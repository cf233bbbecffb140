//! The two-phase-commit coordinator as a pure state machine.
//!
//! In the style of openraft's `Engine`: [`Engine::handle`] takes an
//! [`Event`] (a client submitted, a vote arrived, a Raft proposal was
//! applied, a timer fired, leadership changed) and returns the [`Action`]s
//! to carry out (propose through Raft, send to a participant, set a timer,
//! reply). No I/O, no clock, no randomness: the driver actor executes the
//! actions and feeds results back as events, and the simulator can drive the
//! very same engine.
//!
//! A transaction's life on the leader:
//!
//! ```text
//! Submit ─▶ Preparing: Begin proposed ∥ prepares sent (one round, in parallel)
//!   Begin applied ∧ every YES ─▶ clients told "committed" (implicit commit) ─▶ Deciding(commit)
//!   Begin applied ∧ (a NO / unreachable / deadline) ─▶ Deciding(abort)
//! Deciding ──decision applied──▶ Finishing ──every shard acked──▶ queued for Forget (batched)
//! Begin refused (duplicate key, tombstone) ─▶ Finishing(abort) without a table record
//! ```
//!
//! **Nothing waits behind a dead shard** (presumed abort). An abort needs
//! no acknowledgement for safety: a participant that holds a prepare asks
//! the coordinator once it has been in doubt too long, and a transaction
//! the table does not know is aborted. So an aborted transaction is queued
//! for Forget as soon as its decision applies; its decision goes only to
//! the shards that may hold a prepare (a shard that voted NO never
//! prepared), and is re-sent with a growing back-off while it is tracked.
//! A commit must be acknowledged by every shard before its record is
//! forgotten — but transactions waiting only for acknowledgements
//! (`Finishing`) do not count against `max_in_flight_txns`, the cap on new
//! work; they have their own bound, `max_finishing_txns`. Over it, the
//! oldest one stops being tracked: an abort is covered by presumed abort,
//! and a commit stays in the table (never forgotten unacknowledged), is
//! answered from it when its participant asks, and is adopted again by the
//! orphan sweep once there is room.
//!
//! **Implicit commit** (CockroachDB's parallel commits, Gray and Lamport's
//! Paxos Commit): a transaction whose `Begin` is committed in Raft and whose
//! every shard answered its driver's first prepares with a durable YES is
//! committed, whatever happens next — no one can abort it any more: that
//! driver proposes no abort after it, a participant never takes a YES
//! back, the presumed-abort barrier leaves a transaction the table knows
//! alone (`Command::PresumeAbort`), and a re-driving leader aborts only on
//! a NO (and a shard holding a YES never says NO), never on a timeout. So
//! the clients hear the outcome then, and the explicit `Decide(commit)`
//! follows off the critical path. A re-driven transaction never announces:
//! its earlier driver may have seen a NO and proposed an abort that is
//! still in the log, and a re-prepare may since have found the shard free
//! (the simulator found exactly that, seed 66); its clients wait for the
//! applied decision, first writer wins.
//!
//! The decision the engine acts on is always the one the Raft state machine
//! returned (first writer wins), never the one it proposed.

use crate::table::{Command, CommandResult, TxnRecord};
use paytx_protocol::messages::TxnState;
use paytx_protocol::planted::Bug;
use paytx_protocol::InvalidRequest;
use paytx_protocol::{
    AbortReason, IdempotencyKey, NodeId, Operation, Outcome, RequestError, ShardId, ShardMap, TxnId, TxnReceipt,
    TxnRequest, Vote,
};
use std::collections::{BTreeMap, BTreeSet};

/// Identifies a waiting client inside the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// Limits and timings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long participants have to vote before the transaction aborts.
    pub prepare_timeout_ms: u64,
    /// Delay before re-sending an unacknowledged decision.
    pub decide_retry_ms: u64,
    /// Most transactions being prepared or decided at once; more are
    /// refused as `Overloaded`. Transactions waiting only for
    /// acknowledgements of their decision do not count (see the module docs).
    pub max_in_flight_txns: usize,
    /// Most decided transactions tracked while their acknowledgements are
    /// outstanding; over it the oldest is left to the table and the
    /// participants' in-doubt queries (see the module docs).
    pub max_finishing_txns: usize,
    /// Longest delay between two re-sends of an unacknowledged decision
    /// (the delay doubles from `decide_retry_ms` up to this): a shard that
    /// is down is not asked thousands of times a second.
    pub max_decide_retry_ms: u64,
    /// Forget records are proposed in batches of at most this many.
    pub forget_batch_max: usize,
    /// Most operations per transaction.
    pub max_ops_per_txn: usize,
    /// First `seq` of this incarnation's transaction ids
    /// ([`crate::epoch::next_seq_base`]).
    pub seq_base: u64,
    /// Most encoded bytes of one command: a transaction larger than one
    /// Raft entry may carry is refused (`InvalidRequest::TooLarge`).
    pub max_command_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            prepare_timeout_ms: 2_000,
            decide_retry_ms: 200,
            max_in_flight_txns: 4_000,
            max_finishing_txns: 65_536,
            max_decide_retry_ms: 5_000,
            forget_batch_max: 512,
            max_ops_per_txn: paytx_protocol::txn::MAX_OPS_PER_TXN,
            seq_base: 0,
            // What a node derives from the default settings and frame size.
            max_command_bytes: crate::replica::RaftSettings::default()
                .batch_bytes(paytx_protocol::frame::DEFAULT_MAX_FRAME_BYTES as usize),
        }
    }
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Submit {
        ticket: Ticket,
        request: TxnRequest,
    },
    /// A submission whose idempotency key the applied table already holds
    /// (`TxnTable::lookup_key`): answered from it — replayed, attached to
    /// the transaction in flight, or refused as a conflict — without a
    /// Begin and without prepares (a retry must not even hold money).
    SubmitKnown {
        ticket: Ticket,
        key: IdempotencyKey,
        known: CommandResult,
    },
    BeginApplied {
        txn: TxnId,
        result: CommandResult,
    },
    DecisionApplied {
        txn: TxnId,
        outcome: Outcome,
    },
    /// A Begin or Decide proposal failed (typically: no longer leader).
    ProposalFailed {
        txn: TxnId,
        error: RequestError,
    },
    VoteReceived {
        txn: TxnId,
        shard: ShardId,
        vote: Vote,
    },
    PrepareFailed {
        txn: TxnId,
        shard: ShardId,
    },
    DecideAcked {
        txn: TxnId,
        shard: ShardId,
    },
    DecideFailed {
        txn: TxnId,
        shard: ShardId,
    },
    /// Timer: the prepare phase of `txn` (driven in `term`) is over.
    PrepareDeadline {
        txn: TxnId,
        term: u64,
    },
    /// Timer: re-send the prepare of a re-driven transaction to `shard`
    /// (a re-driven transaction never aborts on a timeout).
    RetryPrepare {
        txn: TxnId,
        shard: ShardId,
        term: u64,
    },
    /// Timer: re-send the decision to `shard`.
    RetryDecide {
        txn: TxnId,
        shard: ShardId,
        term: u64,
    },
    /// Periodic: flush the Forget batch.
    Tick,
    /// This node leads `term` and its table is complete (every entry of
    /// earlier terms applied). `live` is every transaction in the table.
    BecameLeader {
        term: u64,
        live: Vec<(TxnId, TxnRecord)>,
    },
    SteppedDown {
        leader_hint: Option<NodeId>,
    },
    /// A transaction of the table nobody drives (found by the driver's
    /// periodic sweep): drive it like a re-driven one.
    Adopt {
        txn: TxnId,
        record: TxnRecord,
    },
}

/// Something to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Propose through Raft; feed back `BeginApplied`/`DecisionApplied` or
    /// `ProposalFailed`. `bytes`: the command's encoded length (the batch's
    /// byte bound), measured once here.
    Propose {
        txn: TxnId,
        command: Command,
        bytes: usize,
    },
    /// Propose a Forget batch; its result needs no answer (a lost Forget is
    /// redone by the next leader's re-drive).
    ProposeForget {
        txns: Vec<TxnId>,
    },
    SendPrepare {
        txn: TxnId,
        shard: ShardId,
        ops: Vec<Operation>,
    },
    SendDecide {
        txn: TxnId,
        shard: ShardId,
        commit: bool,
    },
    SetTimer {
        after_ms: u64,
        event: Event,
    },
    Reply {
        ticket: Ticket,
        result: Result<TxnReceipt, RequestError>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// The Begin is proposed and the prepares are out, in parallel.
    Preparing(Votes),
    /// The decision is proposed. `no`: the shards that voted NO (they
    /// never prepared, so an abort need not reach them).
    Deciding { no: BTreeSet<ShardId> },
    /// The decision is applied; it goes to every shard in `shards` not yet
    /// in `acked`.
    Finishing {
        outcome: Outcome,
        acked: BTreeSet<ShardId>,
        /// Re-sends so far (the back-off grows with it).
        retries: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Votes {
    /// The Begin is applied (the table knows the transaction).
    begun: bool,
    yes: BTreeSet<ShardId>,
    /// The shards that voted NO.
    no: BTreeSet<ShardId>,
    /// The first reason to abort seen (a NO, an unreachable shard, the
    /// deadline); acted on once the Begin is applied.
    refused: Option<AbortReason>,
    /// Re-driven (after a leader change, or adopted): it may be implicitly
    /// committed already, so it aborts only on a NO, never on a timeout.
    recovering: bool,
}

#[derive(Debug, Clone)]
struct Txn {
    key: IdempotencyKey,
    shards: BTreeMap<ShardId, Vec<Operation>>,
    phase: Phase,
    /// Clients waiting for the outcome, and whether theirs is a replay.
    clients: Vec<(Ticket, bool)>,
    /// The outcome the clients were told before the decision applied (an
    /// implicit commit); later clients are answered with it at once.
    announced: Option<Outcome>,
    /// Whether the table holds a record to Forget once every shard acked
    /// (not for a transaction whose Begin was refused).
    in_table: bool,
}

/// The coordinator engine of one node.
#[derive(Debug)]
pub struct Engine {
    node: NodeId,
    shard_map: ShardMap,
    config: EngineConfig,
    /// `Some(term)` while this node leads with a complete table.
    leader_term: Option<u64>,
    leader_hint: Option<NodeId>,
    next_seq: u64,
    txns: BTreeMap<TxnId, Txn>,
    /// The transactions of `txns` in `Phase::Finishing` (oldest id first):
    /// they do not count against `max_in_flight_txns`.
    finishing: BTreeSet<TxnId>,
    forget_queue: BTreeSet<TxnId>,
}

impl Engine {
    pub fn new(node: NodeId, shard_map: ShardMap, config: EngineConfig) -> Self {
        let next_seq = config.seq_base;
        Engine {
            node,
            shard_map,
            config,
            leader_term: None,
            leader_hint: None,
            next_seq,
            txns: BTreeMap::new(),
            finishing: BTreeSet::new(),
            forget_queue: BTreeSet::new(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader_term.is_some()
    }

    pub fn leader_hint(&self) -> Option<NodeId> {
        self.leader_hint
    }

    /// Transactions being prepared or decided: what `max_in_flight_txns`
    /// bounds (for status and tests).
    pub fn in_flight(&self) -> usize {
        // Bookkeeping, checked in full only in debug builds: the scan is
        // O(finishing) and this runs for every new request. The count
        // check below is its O(1) part, kept in every build.
        debug_assert!(self.finishing.iter().all(|txn| self.txns.contains_key(txn)), "finishing ⊆ txns");
        self.txns.len().checked_sub(self.finishing.len()).expect("finishing ⊆ txns: no more finishing than tracked")
    }

    /// Decided transactions waiting for acknowledgements (for status and tests).
    pub fn finishing(&self) -> usize {
        self.finishing.len()
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Submit { ticket, request } => self.on_submit(ticket, request, &mut actions),
            Event::SubmitKnown { ticket, key, known } => {
                if self.leader_term.is_none() {
                    let error = RequestError::NoLeader { leader_hint: self.leader_hint };
                    actions.push(Action::Reply { ticket, result: Err(error) });
                } else {
                    self.answer_known(&[(ticket, false)], &key, known, &mut actions);
                }
            }
            Event::BeginApplied { txn, result } => self.on_begin_applied(txn, result, &mut actions),
            Event::DecisionApplied { txn, outcome } => self.on_decision_applied(txn, outcome, &mut actions),
            Event::ProposalFailed { txn, error } => self.on_proposal_failed(txn, error, &mut actions),
            Event::VoteReceived { txn, shard, vote } => self.on_vote(txn, shard, vote, &mut actions),
            Event::PrepareFailed { txn, shard } => self.on_prepare_failed(txn, shard, &mut actions),
            Event::PrepareDeadline { txn, term } => self.on_prepare_deadline(txn, term, &mut actions),
            Event::RetryPrepare { txn, shard, term } => {
                if self.leader_term == Some(term) {
                    if let Some(Txn { phase: Phase::Preparing(votes), shards, .. }) = self.txns.get(&txn) {
                        if let (false, Some(ops)) = (votes.yes.contains(&shard), shards.get(&shard)) {
                            actions.push(Action::SendPrepare { txn, shard, ops: ops.clone() });
                        }
                    }
                }
            }
            Event::DecideAcked { txn, shard } => self.on_decide_acked(txn, shard, &mut actions),
            Event::DecideFailed { txn, shard } => {
                if let (Some(term), Some(t)) = (self.leader_term, self.txns.get_mut(&txn)) {
                    if let Phase::Finishing { retries, .. } = &mut t.phase {
                        // Doubling back-off, capped: 200 ms, 400 ms, … 5 s.
                        let doublings = (*retries).min(16);
                        let after_ms = self
                            .config
                            .decide_retry_ms
                            .saturating_mul(1 << doublings)
                            .min(self.config.max_decide_retry_ms);
                        *retries = retries.saturating_add(1);
                        actions.push(Action::SetTimer { after_ms, event: Event::RetryDecide { txn, shard, term } });
                    }
                }
            }
            Event::RetryDecide { txn, shard, term } => {
                if self.leader_term == Some(term) {
                    if let Some(Txn { phase: Phase::Finishing { outcome, acked, .. }, .. }) = self.txns.get(&txn) {
                        if !acked.contains(&shard) {
                            actions.push(Action::SendDecide { txn, shard, commit: outcome.is_committed() });
                        }
                    }
                }
            }
            Event::Tick => self.flush_forgets(&mut actions),
            Event::BecameLeader { term, live } => self.on_became_leader(term, live, &mut actions),
            Event::SteppedDown { leader_hint } => self.on_stepped_down(leader_hint, &mut actions),
            Event::Adopt { txn, record } => {
                if self.leader_term.is_some() {
                    self.adopt(txn, record, &mut actions);
                }
            }
        }
        actions
    }

    fn on_submit(&mut self, ticket: Ticket, request: TxnRequest, actions: &mut Vec<Action>) {
        let Some(term) = self.leader_term else {
            actions
                .push(Action::Reply { ticket, result: Err(RequestError::NoLeader { leader_hint: self.leader_hint }) });
            return;
        };
        if let Err(invalid) = request.validate(self.config.max_ops_per_txn) {
            actions.push(Action::Reply { ticket, result: Err(RequestError::Invalid(invalid)) });
            return;
        }
        if !self.shard_map.is_valid() {
            let invalid = InvalidRequest::Malformed("the cluster has no shard map".to_string());
            actions.push(Action::Reply { ticket, result: Err(RequestError::Invalid(invalid)) });
            return;
        }
        let in_flight = self.in_flight();
        if in_flight >= self.config.max_in_flight_txns {
            let what = format!("{in_flight} transactions in flight (limit)");
            actions.push(Action::Reply { ticket, result: Err(RequestError::Overloaded { what }) });
            return;
        }
        // Ids of this epoch live in the low 32 bits of `seq`; running out
        // must never carry into the epoch bits (the next incarnation's ids).
        let next = self.next_seq + 1;
        if next >> crate::epoch::SEQ_BITS_PER_EPOCH != self.config.seq_base >> crate::epoch::SEQ_BITS_PER_EPOCH {
            let what = "transaction ids of this coordinator epoch are used up; restart the node".to_string();
            actions.push(Action::Reply { ticket, result: Err(RequestError::Overloaded { what }) });
            return;
        }
        let txn = TxnId { term, node: self.node, seq: next };
        let command = Command::Begin {
            txn,
            key: request.key.clone(),
            body_hash: request.body_hash(),
            ops: request.ops.clone(),
            prepare_timeout_ms: self.config.prepare_timeout_ms,
        };
        // One Raft entry must be able to carry the Begin alone.
        let len_bytes = paytx_protocol::encoded_len(&command);
        if len_bytes > self.config.max_command_bytes {
            let invalid = InvalidRequest::TooLarge { len_bytes, max_bytes: self.config.max_command_bytes };
            actions.push(Action::Reply { ticket, result: Err(RequestError::Invalid(invalid)) });
            return;
        }
        self.next_seq = next;
        let shards = self.shard_map.split(&request.ops);
        actions.push(Action::Propose { txn, command, bytes: len_bytes });
        // Prepare in parallel with the Begin: one round on the critical path.
        start_prepare(txn, &shards, actions);
        actions.push(Action::SetTimer {
            after_ms: self.config.prepare_timeout_ms,
            event: Event::PrepareDeadline { txn, term },
        });
        let record = Txn {
            key: request.key,
            shards,
            phase: Phase::Preparing(Votes::default()),
            clients: vec![(ticket, false)],
            announced: None,
            in_table: true,
        };
        self.txns.insert(txn, record);
    }

    fn on_begin_applied(&mut self, txn: TxnId, result: CommandResult, actions: &mut Vec<Action>) {
        if self.leader_term.is_none() {
            return;
        }
        let Some(record) = self.txns.get_mut(&txn) else { return };
        let Phase::Preparing(votes) = &mut record.phase else { return };
        if votes.begun {
            return;
        }
        if result == CommandResult::Begun {
            votes.begun = true;
            self.conclude(txn, actions);
            return;
        }
        // The table refused to register this id: whatever the shards
        // prepared for it must be released.
        let clients = std::mem::take(&mut record.clients);
        let key = record.key.clone();
        let released = match result {
            CommandResult::Tombstoned { outcome } => {
                reply_all(&clients, Ok(TxnReceipt { txn, outcome: outcome.clone(), replayed: false }), actions);
                outcome
            }
            other => {
                self.answer_known(&clients, &key, other, actions);
                Outcome::Aborted(AbortReason::PresumedAbort)
            }
        };
        assert!(!released.is_committed(), "a transaction the table refused never commits");
        let Some(record) = self.txns.get_mut(&txn) else { return };
        record.in_table = false;
        let no = match &record.phase {
            Phase::Preparing(votes) => votes.no.clone(),
            _ => BTreeSet::new(),
        };
        self.finish(txn, released, &no, actions);
    }

    /// Answers the clients of a submission whose key the table already
    /// holds: replay the outcome, wait for the original, or refuse.
    fn answer_known(
        &mut self,
        clients: &[(Ticket, bool)],
        key: &IdempotencyKey,
        known: CommandResult,
        actions: &mut Vec<Action>,
    ) {
        match known {
            CommandResult::Existing { txn: original, state: TxnState::Decided(outcome) } => {
                reply_all(clients, Ok(TxnReceipt { txn: original, outcome, replayed: true }), actions);
            }
            CommandResult::Existing { txn: original, state: TxnState::InProgress } => {
                self.attach(original, clients, key, actions)
            }
            CommandResult::KeyConflict => {
                reply_all(clients, Err(RequestError::IdempotencyConflict { key: key.0.clone() }), actions);
            }
            other => {
                let error = RequestError::Internal(format!("unexpected result for Begin: {other:?}"));
                reply_all(clients, Err(error), actions);
            }
        }
    }

    /// Clients of a duplicate submission wait for the transaction `original`
    /// that first used their key.
    fn attach(&mut self, original: TxnId, clients: &[(Ticket, bool)], key: &IdempotencyKey, actions: &mut Vec<Action>) {
        let replayed: Vec<(Ticket, bool)> = clients.iter().map(|(t, _)| (*t, true)).collect();
        match self.txns.get_mut(&original) {
            // Decided or announced meanwhile (results of proposals can be
            // handled out of order): answer with the outcome now.
            Some(Txn { phase: Phase::Finishing { outcome, .. }, .. }) | Some(Txn { announced: Some(outcome), .. }) => {
                let receipt = TxnReceipt { txn: original, outcome: outcome.clone(), replayed: true };
                reply_all(&replayed, Ok(receipt), actions);
            }
            // We drive the original: its outcome answers these clients too.
            Some(driving) => driving.clients.extend(replayed),
            None => {
                let error = RequestError::InProgress { key: key.0.clone() };
                reply_all(&replayed, Err(error), actions);
            }
        }
    }

    fn on_vote(&mut self, txn: TxnId, shard: ShardId, vote: Vote, actions: &mut Vec<Action>) {
        let Some(record) = self.txns.get_mut(&txn) else { return };
        if !record.shards.contains_key(&shard) {
            return;
        }
        let Phase::Preparing(votes) = &mut record.phase else { return };
        match vote {
            Vote::Yes => {
                votes.yes.insert(shard);
            }
            // A NO means the shard never prepared the transaction (a YES is
            // never taken back), so aborting is safe even when re-driven.
            Vote::No(reason) => {
                votes.no.insert(shard);
                votes.refused.get_or_insert(reason);
            }
        }
        self.conclude(txn, actions);
    }

    fn on_prepare_failed(&mut self, txn: TxnId, shard: ShardId, actions: &mut Vec<Action>) {
        let (Some(term), Some(record)) = (self.leader_term, self.txns.get(&txn)) else { return };
        let Phase::Preparing(votes) = &record.phase else { return };
        // A re-driven transaction's shard may hold a YES we cannot see; a
        // replicated shard's group elects a new leader within a few
        // election timeouts. Either way: ask again later (a fresh
        // transaction still aborts at its prepare deadline).
        if votes.recovering || self.shard_map.is_replicated() {
            actions.push(Action::SetTimer {
                after_ms: self.config.decide_retry_ms,
                event: Event::RetryPrepare { txn, shard, term },
            });
            return;
        }
        // Not a NO: the prepare may have arrived and its answer got lost,
        // so the shard may hold a prepare (an abort must still reach it).
        if let Some(Txn { phase: Phase::Preparing(votes), .. }) = self.txns.get_mut(&txn) {
            votes.refused.get_or_insert(AbortReason::ShardUnavailable { shard });
        }
        self.conclude(txn, actions);
    }

    fn on_prepare_deadline(&mut self, txn: TxnId, term: u64, actions: &mut Vec<Action>) {
        if self.leader_term != Some(term) {
            return;
        }
        let Some(record) = self.txns.get_mut(&txn) else { return };
        let Phase::Preparing(votes) = &mut record.phase else { return };
        if votes.recovering {
            return;
        }
        // A vote still missing — or, with every vote in, the Begin that has
        // not applied within the deadline (blamed on the first shard).
        let missing = record.shards.keys().find(|s| !votes.yes.contains(s)).or_else(|| record.shards.keys().next());
        let shard = *missing.expect("a transaction has at least one shard");
        votes.refused.get_or_insert(AbortReason::PrepareTimeout { shard });
        self.conclude(txn, actions);
    }

    /// Moves a preparing transaction on once its Begin is applied: abort on
    /// the first refusal; commit — and tell the clients at once — when
    /// every shard voted YES.
    fn conclude(&mut self, txn: TxnId, actions: &mut Vec<Action>) {
        let Some(record) = self.txns.get_mut(&txn) else { return };
        let Phase::Preparing(votes) = &record.phase else { return };
        // Nothing is decided before the table knows the transaction: a
        // Decide must follow its Begin in the log.
        if !votes.begun {
            return;
        }
        let outcome = match &votes.refused {
            Some(reason) => Outcome::Aborted(reason.clone()),
            None => {
                let mut needed = record.shards.len();
                // PLANTED BUG (simulator only): commit with the last shard's vote still missing.
                if paytx_protocol::planted::active(Bug::CommitWithoutAllVotes) && needed >= 2 {
                    needed -= 1;
                }
                if votes.yes.len() < needed {
                    return;
                }
                // Implicitly committed: Begin in the table and every shard's
                // first answer to this driver a durable YES. Only the
                // driver that sent the first prepares may say so: a
                // re-driven transaction's YES may follow a NO its earlier
                // driver acted on (an abort still on its way through the
                // log), so its clients wait for the applied decision.
                if !votes.recovering {
                    let receipt = TxnReceipt { txn, outcome: Outcome::Committed, replayed: false };
                    reply_all(&std::mem::take(&mut record.clients), Ok(receipt), actions);
                    record.announced = Some(Outcome::Committed);
                }
                Outcome::Committed
            }
        };
        record.phase = Phase::Deciding { no: votes.no.clone() };
        let command = Command::Decide { txn, key: Some(record.key.clone()), outcome };
        let bytes = paytx_protocol::encoded_len(&command);
        actions.push(Action::Propose { txn, command, bytes });
    }

    fn on_proposal_failed(&mut self, txn: TxnId, error: RequestError, actions: &mut Vec<Action>) {
        // Only a transaction waiting on a proposal can be failed by one; a
        // late failure from an earlier drive (the transaction was re-adopted
        // since) must not drop the current drive.
        let waiting = self.txns.get(&txn).is_some_and(|t| match &t.phase {
            Phase::Preparing(votes) => !votes.begun,
            Phase::Deciding { .. } => true,
            Phase::Finishing { .. } => false,
        });
        if waiting {
            if let Some(record) = self.txns.remove(&txn) {
                // Announced clients were answered already; the decision is
                // re-driven by whoever leads next (or the orphan sweep).
                reply_all(&record.clients, Err(error), actions);
            }
        }
    }

    fn on_decision_applied(&mut self, txn: TxnId, outcome: Outcome, actions: &mut Vec<Action>) {
        let Some(record) = self.txns.get_mut(&txn) else { return };
        let Phase::Deciding { no } = &record.phase else { return };
        let no = no.clone();
        if let Some(announced) = &record.announced {
            // Only ever an implicit commit, which nothing can abort: an
            // abort here means a 2PC rule was broken somewhere.
            if *announced != outcome {
                tracing::error!(%txn, ?announced, ?outcome, "the table decided otherwise than the clients were told");
            }
        }
        let receipt = TxnReceipt { txn, outcome: outcome.clone(), replayed: false };
        for (ticket, replayed) in record.clients.drain(..) {
            actions.push(Action::Reply { ticket, result: Ok(TxnReceipt { replayed, ..receipt.clone() }) });
        }
        self.finish(txn, outcome, &no, actions);
    }

    /// Moves `txn` to `Finishing` with its applied `outcome` and sends the
    /// decision to every shard that may hold a prepare. For an abort that
    /// excludes `no` (shards that voted NO never prepared), and the record
    /// is queued for Forget at once (presumed abort: see the module docs).
    /// A commit goes to every shard — a shard that said NO to this driver
    /// may have said YES to an earlier one — and is forgotten only once all
    /// of them acknowledged.
    fn finish(&mut self, txn: TxnId, outcome: Outcome, no: &BTreeSet<ShardId>, actions: &mut Vec<Action>) {
        let Some(record) = self.txns.get_mut(&txn) else { return };
        let committed = outcome.is_committed();
        let acked: BTreeSet<ShardId> = if committed { BTreeSet::new() } else { no.clone() };
        let pending: Vec<ShardId> = record.shards.keys().copied().filter(|s| !acked.contains(s)).collect();
        let forget_now = !committed && record.in_table;
        record.phase = Phase::Finishing { outcome, acked, retries: 0 };
        send_decision(txn, &pending, committed, actions);
        self.finishing.insert(txn);
        if forget_now {
            self.queue_forget(txn, actions);
        }
        if pending.is_empty() {
            self.release(txn, actions);
        }
        self.bound_finishing();
    }

    /// Keeps `finishing` within `max_finishing_txns`: the oldest stop being
    /// tracked. An abort is covered by presumed abort (its Forget is queued
    /// already); a commit stays in the table, undeleted, for its shards'
    /// in-doubt queries and a later adoption.
    fn bound_finishing(&mut self) {
        while self.finishing.len() > self.config.max_finishing_txns {
            let Some(oldest) = self.finishing.pop_first() else { break };
            if let Some(dropped) = self.txns.remove(&oldest) {
                assert!(dropped.clients.is_empty(), "clients of a decided txn are answered when it is decided");
                tracing::warn!(txn = %oldest, "too many unacknowledged decisions; left to the table and in-doubt queries");
            }
        }
    }

    fn queue_forget(&mut self, txn: TxnId, actions: &mut Vec<Action>) {
        self.forget_queue.insert(txn);
        if self.forget_queue.len() >= self.config.forget_batch_max {
            self.flush_forgets(actions);
        }
    }

    /// `txn` needs nothing more from its shards: stop tracking it, answer
    /// clients attached since its decision, and queue a committed one (an
    /// aborted one was queued when decided) for Forget.
    fn release(&mut self, txn: TxnId, actions: &mut Vec<Action>) {
        self.finishing.remove(&txn);
        let Some(Txn { clients, phase: Phase::Finishing { outcome, .. }, in_table, .. }) = self.txns.remove(&txn)
        else {
            panic!("only a finishing transaction is released ({txn})");
        };
        let committed = outcome.is_committed();
        let receipt = TxnReceipt { txn, outcome, replayed: true };
        reply_all(&clients, Ok(receipt), actions);
        if committed && in_table {
            self.queue_forget(txn, actions);
        }
    }

    fn on_decide_acked(&mut self, txn: TxnId, shard: ShardId, actions: &mut Vec<Action>) {
        let Some(record) = self.txns.get_mut(&txn) else { return };
        let Phase::Finishing { acked, .. } = &mut record.phase else { return };
        if record.shards.contains_key(&shard) {
            acked.insert(shard);
        }
        if acked.len() == record.shards.len() {
            self.release(txn, actions);
        }
    }

    fn flush_forgets(&mut self, actions: &mut Vec<Action>) {
        if self.leader_term.is_some() && !self.forget_queue.is_empty() {
            let txns = std::mem::take(&mut self.forget_queue).into_iter().collect();
            actions.push(Action::ProposeForget { txns });
        }
    }

    fn on_became_leader(&mut self, term: u64, live: Vec<(TxnId, TxnRecord)>, actions: &mut Vec<Action>) {
        if self.leader_term == Some(term) {
            // Leadership of the term we already lead reported again (the
            // metrics flicker): keep driving what we drive. Resetting here
            // would drop transactions whose Begin is still in flight.
            return;
        }
        self.on_stepped_down(Some(self.node), actions);
        self.leader_term = Some(term);
        self.leader_hint = Some(self.node);
        // `next_seq` is NOT reset: ids only ever grow (see `EngineConfig::seq_base`).
        // Re-drive everything the table holds: decided transactions get their
        // decision re-sent until every participant acks; undecided ones are
        // prepared again (participants answer re-prepares idempotently),
        // commit on every YES and abort only on a NO: never on a timeout,
        // as they may be implicitly committed already (see `adopt`).
        for (txn, record) in live {
            self.adopt(txn, record, actions);
        }
    }

    /// Starts driving a transaction of the table that this engine does not
    /// track (after a leader change, or found by the driver's sweep).
    fn adopt(&mut self, txn: TxnId, record: TxnRecord, actions: &mut Vec<Action>) {
        if self.txns.contains_key(&txn) || self.forget_queue.contains(&txn) {
            return;
        }
        // PLANTED BUG (simulator only): decided transactions are neither re-sent nor tracked.
        if paytx_protocol::planted::active(Bug::NoRedriveOnNewLeader) && record.decision.is_some() {
            return;
        }
        // No room to track one more decided transaction: it stays in the
        // table (answered from there) until a later sweep finds room.
        if record.decision.is_some() && self.finishing.len() >= self.config.max_finishing_txns {
            return;
        }
        let shards = self.shard_map.split(&record.ops);
        let decision = record.decision.clone();
        // Undecided: it may be implicitly committed (every YES in), so
        // prepare again (re-prepares are idempotent: a shard that holds a
        // YES says YES) and abort only on a NO; no deadline. Decided: the
        // decision goes out again (`finish`).
        let phase = Phase::Preparing(Votes { begun: true, recovering: true, ..Votes::default() });
        let tracked = Txn { key: record.key, shards, phase, clients: Vec::new(), announced: None, in_table: true };
        match decision {
            None => {
                start_prepare(txn, &tracked.shards, actions);
                self.txns.insert(txn, tracked);
            }
            Some(outcome) => {
                self.txns.insert(txn, tracked);
                // Which shards voted NO is not known here: every shard is asked.
                self.finish(txn, outcome, &BTreeSet::new(), actions);
            }
        }
    }

    /// Whether the engine tracks `txn` (driving it, or queued to forget).
    pub fn tracks(&self, txn: &TxnId) -> bool {
        self.txns.contains_key(txn) || self.forget_queue.contains(txn)
    }

    fn on_stepped_down(&mut self, leader_hint: Option<NodeId>, actions: &mut Vec<Action>) {
        self.leader_term = None;
        self.leader_hint = leader_hint.filter(|l| *l != self.node);
        for (_, record) in std::mem::take(&mut self.txns) {
            reply_all(&record.clients, Err(RequestError::NoLeader { leader_hint: self.leader_hint }), actions);
        }
        self.finishing.clear();
        self.forget_queue.clear();
    }
}

/// Phase one: a prepare to every shard.
fn start_prepare(txn: TxnId, shards: &BTreeMap<ShardId, Vec<Operation>>, actions: &mut Vec<Action>) {
    for (shard, ops) in shards {
        actions.push(Action::SendPrepare { txn, shard: *shard, ops: ops.clone() });
    }
}

/// Phase two: the decision to every shard.
fn send_decision(txn: TxnId, shards: &[ShardId], commit: bool, actions: &mut Vec<Action>) {
    for shard in shards {
        actions.push(Action::SendDecide { txn, shard: *shard, commit });
    }
}

fn reply_all(clients: &[(Ticket, bool)], result: Result<TxnReceipt, RequestError>, actions: &mut Vec<Action>) {
    for (ticket, replayed) in clients {
        let result = result.clone().map(|receipt| TxnReceipt { replayed: *replayed || receipt.replayed, ..receipt });
        actions.push(Action::Reply { ticket: *ticket, result });
    }
}

mod progress;
pub use progress::{TxnProgress, TxnTimes};

#[cfg(test)]
mod tests;
