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
//! Submit ─▶ Beginning ──Begin applied──▶ Preparing ──all YES──▶ Deciding(commit)
//!                                            │ any NO / unreachable / deadline
//!                                            ▼
//!                                      Deciding(abort) ──decision applied──▶ Finishing
//! Finishing ──every shard acked──▶ queued for Forget (batched)
//! ```
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
    /// Most transactions driven at once; more are refused as `Overloaded`.
    pub max_in_flight_txns: usize,
    /// Forget records are proposed in batches of at most this many.
    pub forget_batch_max: usize,
    /// Most operations per transaction.
    pub max_ops_per_txn: usize,
    /// First `seq` of this incarnation's transaction ids
    /// ([`crate::epoch::next_seq_base`]).
    pub seq_base: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            prepare_timeout_ms: 2_000,
            decide_retry_ms: 200,
            max_in_flight_txns: 4_000,
            forget_batch_max: 512,
            max_ops_per_txn: paytx_protocol::txn::MAX_OPS_PER_TXN,
            seq_base: 0,
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
    /// `ProposalFailed`.
    Propose {
        txn: TxnId,
        command: Command,
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
    Beginning,
    Preparing { yes: BTreeSet<ShardId> },
    Deciding,
    Finishing { outcome: Outcome, acked: BTreeSet<ShardId> },
}

#[derive(Debug, Clone)]
struct Txn {
    key: IdempotencyKey,
    shards: BTreeMap<ShardId, Vec<Operation>>,
    phase: Phase,
    /// Clients waiting for the outcome, and whether theirs is a replay.
    clients: Vec<(Ticket, bool)>,
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
            forget_queue: BTreeSet::new(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader_term.is_some()
    }

    pub fn leader_hint(&self) -> Option<NodeId> {
        self.leader_hint
    }

    /// Transactions being driven (for status and tests).
    pub fn in_flight(&self) -> usize {
        self.txns.len()
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Submit { ticket, request } => self.on_submit(ticket, request, &mut actions),
            Event::BeginApplied { txn, result } => self.on_begin_applied(txn, result, &mut actions),
            Event::DecisionApplied { txn, outcome } => self.on_decision_applied(txn, outcome, &mut actions),
            Event::ProposalFailed { txn, error } => {
                // Only a transaction waiting on a proposal can be failed by
                // one; a late failure from an earlier drive (the transaction
                // was re-adopted since) must not drop the current drive.
                let waiting =
                    self.txns.get(&txn).is_some_and(|t| matches!(t.phase, Phase::Beginning | Phase::Deciding));
                if waiting {
                    if let Some(record) = self.txns.remove(&txn) {
                        reply_all(&record.clients, Err(error), &mut actions);
                    }
                }
            }
            Event::VoteReceived { txn, shard, vote } => self.on_vote(txn, shard, vote, &mut actions),
            Event::PrepareFailed { txn, shard } => {
                self.on_vote(txn, shard, Vote::No(AbortReason::ShardUnavailable { shard }), &mut actions)
            }
            Event::PrepareDeadline { txn, term } => self.on_prepare_deadline(txn, term, &mut actions),
            Event::DecideAcked { txn, shard } => self.on_decide_acked(txn, shard, &mut actions),
            Event::DecideFailed { txn, shard } => {
                if let (Some(term), Some(t)) = (self.leader_term, self.txns.get(&txn)) {
                    if matches!(t.phase, Phase::Finishing { .. }) {
                        actions.push(Action::SetTimer {
                            after_ms: self.config.decide_retry_ms,
                            event: Event::RetryDecide { txn, shard, term },
                        });
                    }
                }
            }
            Event::RetryDecide { txn, shard, term } => {
                if self.leader_term == Some(term) {
                    if let Some(Txn { phase: Phase::Finishing { outcome, acked }, .. }) = self.txns.get(&txn) {
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
                if let Some(term) = self.leader_term {
                    self.adopt(term, txn, record, &mut actions);
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
        if self.txns.len() >= self.config.max_in_flight_txns {
            let what = format!("{} transactions in flight (limit)", self.txns.len());
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
        self.next_seq = next;
        let txn = TxnId { term, node: self.node, seq: self.next_seq };
        let command = Command::Begin {
            txn,
            key: request.key.clone(),
            body_hash: request.body_hash(),
            ops: request.ops.clone(),
            prepare_timeout_ms: self.config.prepare_timeout_ms,
        };
        let shards = self.shard_map.split(&request.ops);
        self.txns
            .insert(txn, Txn { key: request.key, shards, phase: Phase::Beginning, clients: vec![(ticket, false)] });
        actions.push(Action::Propose { txn, command });
    }

    fn on_begin_applied(&mut self, txn: TxnId, result: CommandResult, actions: &mut Vec<Action>) {
        let Some(term) = self.leader_term else { return };
        match result {
            CommandResult::Begun => {
                let Some(record) = self.txns.get_mut(&txn) else { return };
                if record.phase != Phase::Beginning {
                    return;
                }
                record.phase = Phase::Preparing { yes: BTreeSet::new() };
                start_prepare(txn, term, &record.shards, self.config.prepare_timeout_ms, actions);
            }
            CommandResult::Existing { txn: original, state } => {
                let Some(record) = self.txns.remove(&txn) else { return };
                match state {
                    TxnState::Decided(outcome) => {
                        let receipt = TxnReceipt { txn: original, outcome, replayed: true };
                        reply_all(&record.clients, Ok(receipt), actions);
                    }
                    TxnState::InProgress => match self.txns.get_mut(&original) {
                        // Decided meanwhile (results of proposals can be
                        // handled out of order): answer with the outcome now.
                        Some(Txn { phase: Phase::Finishing { outcome, .. }, .. }) => {
                            let receipt = TxnReceipt { txn: original, outcome: outcome.clone(), replayed: true };
                            reply_all(&record.clients, Ok(receipt), actions);
                        }
                        // We drive the original: its outcome answers these clients too.
                        Some(driving) => driving.clients.extend(record.clients.iter().map(|(t, _)| (*t, true))),
                        None => {
                            let error = RequestError::InProgress { key: record.key.0.clone() };
                            reply_all(&record.clients, Err(error), actions);
                        }
                    },
                }
            }
            CommandResult::KeyConflict => {
                let Some(record) = self.txns.remove(&txn) else { return };
                reply_all(
                    &record.clients,
                    Err(RequestError::IdempotencyConflict { key: record.key.0.clone() }),
                    actions,
                );
            }
            other => {
                let Some(record) = self.txns.remove(&txn) else { return };
                let error = RequestError::Internal(format!("unexpected result for Begin: {other:?}"));
                reply_all(&record.clients, Err(error), actions);
            }
        }
    }

    fn on_vote(&mut self, txn: TxnId, shard: ShardId, vote: Vote, actions: &mut Vec<Action>) {
        let Some(record) = self.txns.get_mut(&txn) else { return };
        let Phase::Preparing { yes } = &mut record.phase else { return };
        if !record.shards.contains_key(&shard) {
            return;
        }
        let outcome = match vote {
            Vote::Yes => {
                yes.insert(shard);
                let mut needed = record.shards.len();
                // PLANTED BUG (simulator only): commit with the last shard's vote still missing.
                if paytx_protocol::planted::active(Bug::CommitWithoutAllVotes) && needed >= 2 {
                    needed -= 1;
                }
                if yes.len() < needed {
                    return;
                }
                Outcome::Committed
            }
            Vote::No(reason) => Outcome::Aborted(reason),
        };
        record.phase = Phase::Deciding;
        let command = Command::Decide { txn, key: Some(record.key.clone()), outcome };
        actions.push(Action::Propose { txn, command });
    }

    fn on_prepare_deadline(&mut self, txn: TxnId, term: u64, actions: &mut Vec<Action>) {
        if self.leader_term != Some(term) {
            return;
        }
        let Some(record) = self.txns.get_mut(&txn) else { return };
        let Phase::Preparing { yes } = &record.phase else { return };
        let missing = record.shards.keys().find(|s| !yes.contains(s)).copied();
        let shard = missing.expect("a transaction still preparing has a shard that did not vote yet");
        record.phase = Phase::Deciding;
        let outcome = Outcome::Aborted(AbortReason::PrepareTimeout { shard });
        actions.push(Action::Propose { txn, command: Command::Decide { txn, key: Some(record.key.clone()), outcome } });
    }

    fn on_decision_applied(&mut self, txn: TxnId, outcome: Outcome, actions: &mut Vec<Action>) {
        let Some(record) = self.txns.get_mut(&txn) else { return };
        if matches!(record.phase, Phase::Finishing { .. }) {
            return;
        }
        let receipt = TxnReceipt { txn, outcome: outcome.clone(), replayed: false };
        for (ticket, replayed) in record.clients.drain(..) {
            actions.push(Action::Reply { ticket, result: Ok(TxnReceipt { replayed, ..receipt.clone() }) });
        }
        record.phase = Phase::Finishing { outcome: outcome.clone(), acked: BTreeSet::new() };
        let shards: Vec<ShardId> = record.shards.keys().copied().collect();
        send_decision(txn, &shards, outcome.is_committed(), actions);
    }

    fn on_decide_acked(&mut self, txn: TxnId, shard: ShardId, actions: &mut Vec<Action>) {
        let Some(record) = self.txns.get_mut(&txn) else { return };
        let Phase::Finishing { acked, .. } = &mut record.phase else { return };
        if record.shards.contains_key(&shard) {
            acked.insert(shard);
        }
        if acked.len() == record.shards.len() {
            if let Some(Txn { clients, phase: Phase::Finishing { outcome, .. }, .. }) = self.txns.remove(&txn) {
                // Clients attached after the decision was announced.
                let receipt = TxnReceipt { txn, outcome, replayed: true };
                reply_all(&clients, Ok(receipt), actions);
            }
            self.forget_queue.insert(txn);
            if self.forget_queue.len() >= self.config.forget_batch_max {
                self.flush_forgets(actions);
            }
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
        // prepared again (participants answer re-prepares idempotently) and
        // abort if the votes do not all arrive before the deadline.
        for (txn, record) in live {
            self.adopt(term, txn, record, actions);
        }
    }

    /// Starts driving a transaction of the table that this engine does not
    /// track (after a leader change, or found by the driver's sweep).
    fn adopt(&mut self, term: u64, txn: TxnId, record: TxnRecord, actions: &mut Vec<Action>) {
        if self.txns.contains_key(&txn) || self.forget_queue.contains(&txn) {
            return;
        }
        // PLANTED BUG (simulator only): decided transactions are neither re-sent nor tracked.
        if paytx_protocol::planted::active(Bug::NoRedriveOnNewLeader) && record.decision.is_some() {
            return;
        }
        let shards = self.shard_map.split(&record.ops);
        let phase = match &record.decision {
            Some(outcome) => {
                let ids: Vec<ShardId> = shards.keys().copied().collect();
                send_decision(txn, &ids, outcome.is_committed(), actions);
                Phase::Finishing { outcome: outcome.clone(), acked: BTreeSet::new() }
            }
            None => {
                start_prepare(txn, term, &shards, record.prepare_timeout_ms, actions);
                Phase::Preparing { yes: BTreeSet::new() }
            }
        };
        self.txns.insert(txn, Txn { key: record.key, shards, phase, clients: Vec::new() });
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
        self.forget_queue.clear();
    }
}

/// Phase one: a prepare to every shard, and the deadline of the votes.
fn start_prepare(
    txn: TxnId,
    term: u64,
    shards: &BTreeMap<ShardId, Vec<Operation>>,
    prepare_timeout_ms: u64,
    actions: &mut Vec<Action>,
) {
    for (shard, ops) in shards {
        actions.push(Action::SendPrepare { txn, shard: *shard, ops: ops.clone() });
    }
    actions.push(Action::SetTimer { after_ms: prepare_timeout_ms, event: Event::PrepareDeadline { txn, term } });
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

#[cfg(test)]
mod tests;
