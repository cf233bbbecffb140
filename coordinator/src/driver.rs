//! The 2PC driver: an actix actor that runs the [`Engine`] on this node's
//! coordinator replica.
//!
//! It is a thin runtime: every decision is the engine's. The driver turns the
//! engine's actions into I/O — Raft proposals, participant calls through the
//! `Transport` seam, timers on tokio time (virtual in the simulator) — and
//! turns their results back into events. It also watches openraft's metrics
//! to tell the engine when this node gains or loses leadership.

use crate::engine::{Action, Engine, EngineConfig, Event, Ticket};
use crate::state_machine::{read_table, SharedTable};
use crate::table::{Command, CommandResult, Proposal, ProposalResult};
use crate::types::{NodeId, Raft};
use actix::prelude::*;
use openraft::ServerState;
use paytx_protocol::batcher::{BatchLimits, Batcher};
use paytx_protocol::clock::NodeClock;
use paytx_protocol::messages::{DecisionItem, PrepareItem};
use paytx_protocol::planted::Bug;
use paytx_protocol::{
    PeerRequest, PeerResponse, RequestError, ShardId, ShardMap, Transport, TxnId, TxnReceipt, TxnRequest,
};
use paytx_raft::timers::ClockTimers;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

mod admin;
mod outbox;
mod timeline;
pub use admin::GetTxnProgress;

/// Settings of the driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub node: NodeId,
    pub shard_map: ShardMap,
    pub engine: EngineConfig,
    /// Period of the engine's `Tick` (flushes Forget batches).
    pub tick_ms: u64,
    /// Timeout of one call to a participant.
    pub peer_timeout_ms: u64,
    /// Bounds of the proposal batcher: commands and encoded bytes per Raft
    /// entry, proposals in flight, commands queued.
    pub batch: BatchLimits,
    /// The group's longest election timeout: after that (plus a seeded
    /// random extra) without a known leader, this replica starts an
    /// election itself (`paytx_raft::kick`).
    pub election_timeout_max_ms: u64,
    /// `[raft] key_retention_secs` in milliseconds, stamped on every
    /// proposal (`Command::Stamp`): the log, not each replica's
    /// configuration, says how long keys are kept.
    pub key_retention_ms: u64,
}

/// Run a transaction; answered with its outcome.
#[derive(Message)]
#[rtype(result = "Result<TxnReceipt, RequestError>")]
pub struct SubmitTxn(pub TxnRequest);

/// An in-doubt participant asks for the decision of `txn`, answered with
/// the log time (as a decision sent to it carries: [`DecisionItem::at_ms`]).
/// Answered from the table when it holds a decision; for an unknown
/// transaction the leader first commits an abort through Raft.
#[derive(Message)]
#[rtype(result = "Result<DecisionItem, RequestError>")]
pub struct QueryDecision(pub TxnId);

/// The driver's view, for status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverStatus {
    pub is_leader: bool,
    pub leader_hint: Option<NodeId>,
    /// Transactions being prepared or decided (what `max_in_flight_txns` bounds).
    pub in_flight: usize,
    /// Decided transactions waiting for acknowledgements (`max_finishing_txns`).
    pub finishing: usize,
    /// Proposals (Raft entries) this driver made, and the commands in them.
    pub proposals: u64,
    pub proposed_commands: u64,
}

/// Who waits for the result of one command of a batched proposal.
enum Proposer {
    /// The engine, for a transaction's Begin or Decide.
    Engine { txn: TxnId, is_begin: bool },
    /// A Forget: nobody (a lost Forget is redone by the next leader).
    Forget { count: usize },
    /// An in-doubt participant's question, through the presumed-abort barrier.
    Query(TxnId, oneshot::Sender<Result<DecisionItem, RequestError>>),
    /// The proposal's `Stamp`: nobody.
    Stamp,
}

/// One command waiting in the batcher.
struct Queued {
    command: Command,
    proposer: Proposer,
}

#[derive(Message)]
#[rtype(result = "DriverStatus")]
pub struct GetDriverStatus;

/// Leadership as seen in openraft's metrics.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
struct Leadership {
    is_leader: bool,
    term: u64,
    leader: Option<NodeId>,
}

pub struct CoordinatorDriver {
    config: DriverConfig,
    engine: Engine,
    raft: Raft,
    table: SharedTable,
    transport: Arc<dyn Transport>,
    tickets: BTreeMap<Ticket, oneshot::Sender<Result<TxnReceipt, RequestError>>>,
    next_ticket: u64,
    leadership: Leadership,
    /// Ticks since start (drives the orphan sweep and the timers).
    ticks: u64,
    /// The engine's timers, by the tick they are due at. One wheel instead
    /// of an actix timer per transaction: actix polls every future an
    /// actor's context holds each time the context wakes, so thousands of
    /// per-transaction timers (and calls) made every wake O(transactions)
    /// — a quarter of the leader's CPU in a profile of `paytx bench`.
    timers: BTreeMap<u64, Vec<Event>>,
    /// Undecided-or-unacked transactions of the table the engine did not
    /// track at the last sweep.
    orphans: std::collections::BTreeSet<TxnId>,
    /// Every replicated step goes through here: one Raft entry carries the
    /// commands of many transactions (see `paytx_protocol::batcher`).
    batcher: Batcher<Queued>,
    /// The last leader seen of every participant shard (a replicated
    /// shard's leader moves): prepares and decisions go there first.
    shard_leaders: Arc<paytx_protocol::routing::ShardLeaders>,
    /// Breaks a livelocked election (see `paytx_raft::kick`).
    election_kick: paytx_raft::kick::ElectionKick,
    /// Proposals held while this leader hands the group over
    /// (`paytx_raft::handover`).
    hold: paytx_raft::handover::Hold,
    /// When the steps of live transactions happened (for the admin API).
    timeline: timeline::Timeline,
    /// Prepares and decisions waiting for the end of the mailbox drain,
    /// per shard: they leave as one request each (`outbox`).
    outbox: BTreeMap<ShardId, outbox::ShardOutbox>,
    /// A `SendOutbox` is queued on the context.
    outbox_queued: bool,
    /// This node's clock (the clock seam): every timer of the driver runs
    /// on it. Taken at construction from the task that builds the node.
    clock: NodeClock,
}

/// Ticks between two orphan sweeps.
const SWEEP_EVERY_TICKS: u64 = 50;

impl CoordinatorDriver {
    pub fn new(config: DriverConfig, raft: Raft, table: SharedTable, transport: Arc<dyn Transport>) -> Self {
        let engine = Engine::new(config.node, config.shard_map.clone(), config.engine.clone());
        let batcher = Batcher::new(config.batch);
        let shard_leaders = Arc::new(paytx_protocol::routing::ShardLeaders::new(config.shard_map.clone()));
        let election_kick =
            paytx_raft::kick::ElectionKick::new(config.node ^ 0x6b69_636b, config.election_timeout_max_ms);
        CoordinatorDriver {
            shard_leaders,
            election_kick,
            config,
            engine,
            raft,
            table,
            transport,
            tickets: BTreeMap::new(),
            next_ticket: 0,
            leadership: Leadership { is_leader: false, term: 0, leader: None },
            ticks: 0,
            timers: BTreeMap::new(),
            orphans: std::collections::BTreeSet::new(),
            batcher,
            hold: paytx_raft::handover::Hold::default(),
            timeline: timeline::Timeline::default(),
            outbox: BTreeMap::new(),
            outbox_queued: false,
            clock: NodeClock::current(),
        }
    }

    /// Milliseconds on the tick clock (ticks since start × `tick_ms`).
    fn now_ms(&self) -> u64 {
        self.ticks.saturating_mul(self.config.tick_ms.max(1))
    }

    /// Queues a command for the next proposal, and proposes if a slot is
    /// free. A full queue fails the command at once (back-pressure).
    fn propose(&mut self, command: Command, bytes: usize, proposer: Proposer, ctx: &mut Context<Self>) {
        if let Err(full) = self.batcher.push(Queued { command, proposer }, bytes) {
            let error = RequestError::Overloaded { what: full.to_string() };
            self.deliver_failure(full.item.proposer, error, ctx);
            return;
        }
        self.pump(ctx);
    }

    /// Sends every batch the batcher lets go now.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.hold.is_held() {
            return; // a hand-over: the log must stop growing
        }
        while let Some(batch) = self.batcher.next_batch() {
            // Every proposal opens with the leader's clock and retention.
            let stamp =
                Command::Stamp { log_time_ms: self.clock.unix_ms(), key_retention_ms: self.config.key_retention_ms };
            let (commands, proposers): (Vec<Command>, Vec<Proposer>) = std::iter::once((stamp, Proposer::Stamp))
                .chain(batch.into_iter().map(|queued| (queued.command, queued.proposer)))
                .unzip();
            tracing::trace!(commands = commands.len(), "propose batch");
            let raft = self.raft.clone();
            let timeout_ms = paytx_raft::proposal_timeout_ms(self.config.election_timeout_max_ms);
            let write = async move { raft.client_write(Proposal { commands }).await };
            // Bounded: see `paytx_raft::proposal_timeout_ms` for the write
            // that would otherwise never return.
            let proposal = self.clock.timeout(Duration::from_millis(timeout_ms), write);
            ctx.spawn(proposal.into_actor(self).map(move |result, act, ctx| {
                act.batcher.finished();
                act.hold.on_finished(act.batcher.in_flight());
                let error = match result {
                    Ok(Ok(response)) => {
                        act.deliver(proposers, response.data, ctx);
                        act.pump(ctx);
                        return;
                    }
                    Ok(Err(e)) => raft_error(&e),
                    Err(_elapsed) => {
                        tracing::warn!(timeout_ms, "a proposal was not answered in time; failing it");
                        RequestError::Timeout { timeout_ms }
                    }
                };
                for proposer in proposers {
                    act.deliver_failure(proposer, error.clone(), ctx);
                }
                act.pump(ctx);
            }));
        }
    }

    /// Hands each command's result to its proposer.
    fn deliver(&mut self, proposers: Vec<Proposer>, applied: ProposalResult, ctx: &mut Context<Self>) {
        let mut results = applied.results;
        if results.len() != proposers.len() {
            // The state machine answers every command of an entry: anything
            // else is a bug; fail them all rather than mis-pair them.
            let error = RequestError::Internal(format!(
                "a proposal of {} commands was answered with {} results",
                proposers.len(),
                results.len()
            ));
            for proposer in proposers {
                self.deliver_failure(proposer, error.clone(), ctx);
            }
            return;
        }
        // PLANTED BUG (simulator only): results handed to the proposers in reverse order.
        if paytx_protocol::planted::active(Bug::BatchResultsMisrouted) {
            results.reverse();
        }
        for (proposer, result) in proposers.into_iter().zip(results) {
            match proposer {
                Proposer::Engine { txn, is_begin: true } => self.dispatch(Event::BeginApplied { txn, result }, ctx),
                Proposer::Engine { txn, is_begin: false } => {
                    let event = match result {
                        CommandResult::Decided { outcome } => Event::DecisionApplied { txn, outcome },
                        other => Event::ProposalFailed {
                            txn,
                            error: RequestError::Internal(format!("unexpected result for Decide: {other:?}")),
                        },
                    };
                    self.dispatch(event, ctx);
                }
                Proposer::Forget { .. } | Proposer::Stamp => {}
                Proposer::Query(txn, answer) => {
                    let reply = match result {
                        CommandResult::Decided { outcome } => Ok(self.decision_item(txn, outcome.is_committed())),
                        CommandResult::InProgress => {
                            Err(RequestError::InProgress { key: "(in-doubt query: decided by its driver)".into() })
                        }
                        other => Err(RequestError::Internal(format!("unexpected result for PresumeAbort: {other:?}"))),
                    };
                    let _ = answer.send(reply);
                }
            }
        }
    }

    fn deliver_failure(&mut self, proposer: Proposer, error: RequestError, ctx: &mut Context<Self>) {
        match proposer {
            Proposer::Engine { txn, .. } => self.dispatch(Event::ProposalFailed { txn, error }, ctx),
            // Not lost: the next leader re-drives and forgets them.
            Proposer::Forget { count } => tracing::debug!(%error, count, "forget proposal failed"),
            Proposer::Stamp => {}
            Proposer::Query(_, answer) => {
                let _ = answer.send(Err(error));
            }
        }
    }

    fn dispatch(&mut self, event: Event, ctx: &mut Context<Self>) {
        match &event {
            Event::BeginApplied { txn, .. } => tracing::trace!(%txn, "begin applied"),
            Event::VoteReceived { txn, shard, .. } => tracing::trace!(%txn, %shard, "vote received"),
            Event::DecisionApplied { txn, .. } => {
                tracing::trace!(%txn, "decision applied");
                self.timeline.decided(*txn, self.now_ms());
            }
            Event::DecideAcked { txn, shard } => {
                tracing::trace!(%txn, %shard, "decide acked");
                self.timeline.acked(*txn, *shard, self.now_ms());
            }
            Event::Adopt { txn, .. } => self.timeline.begun(*txn, self.now_ms()),
            Event::SteppedDown { .. } => self.timeline.clear(),
            _ => {}
        }
        for action in self.engine.handle(event) {
            self.execute(action, ctx);
        }
    }

    fn execute(&mut self, action: Action, ctx: &mut Context<Self>) {
        match action {
            Action::Propose { txn, command, bytes } => {
                let is_begin = matches!(command, Command::Begin { .. });
                tracing::trace!(%txn, is_begin, "propose");
                if is_begin {
                    self.timeline.begun(txn, self.now_ms());
                }
                self.propose(command, bytes, Proposer::Engine { txn, is_begin }, ctx);
            }
            Action::ProposeForget { txns } => {
                self.timeline.forget(&txns);
                let count = txns.len();
                let command = Command::Forget { txns };
                let bytes = paytx_protocol::encoded_len(&command);
                self.propose(command, bytes, Proposer::Forget { count }, ctx);
            }
            // Sent once the mailbox is drained, one request per shard for
            // everything the drain produced (`send_outbox`).
            Action::SendPrepare { txn, shard, ops } => {
                self.outbox.entry(shard).or_default().prepares.push(PrepareItem { txn, ops });
                self.schedule_send(ctx);
            }
            Action::SendDecide { txn, shard, commit } => {
                let decision = self.decision_item(txn, commit);
                self.outbox.entry(shard).or_default().decisions.push(decision);
                self.schedule_send(ctx);
            }
            Action::SetTimer { after_ms, event } => {
                // Due at the first tick at least `after_ms` from now.
                let tick_ms = self.config.tick_ms.max(1);
                let due = self.ticks.saturating_add(after_ms.div_ceil(tick_ms).max(1));
                self.timers.entry(due).or_default().push(event);
            }
            Action::Reply { ticket, result } => {
                if let Some(waiter) = self.tickets.remove(&ticket) {
                    // The client may have gone away; nothing to do then.
                    let _ = waiter.send(result);
                }
            }
        }
    }

    /// The decision of `txn` as a participant is told it: with the table's
    /// log time now, which for a commit is the time its
    /// `PutRecordAtCommit` entries are stored under. Read when the decision
    /// is sent, after it applied here, so a commit's time is never before
    /// the entry that decided it; the shard keeps the first one it applies.
    fn decision_item(&self, txn: TxnId, commit: bool) -> DecisionItem {
        // PLANTED BUG (simulator only): the decision goes out without its time.
        if paytx_protocol::planted::active(Bug::DecisionWithoutTime) {
            return DecisionItem { txn, commit, at_ms: 0 };
        }
        DecisionItem { txn, commit, at_ms: read_table(&self.table).table.log_time_ms() }
    }

    fn shard_caller(&self) -> ShardCaller {
        ShardCaller {
            transport: self.transport.clone(),
            leaders: self.shard_leaders.clone(),
            timeout_ms: self.config.peer_timeout_ms,
        }
    }

    /// Queues one `SendOutbox` behind the messages already in the mailbox
    /// (actix handles a context's queued items after draining it), so the
    /// prepares of every submit and the decisions of every applied entry
    /// that arrived together leave together.
    fn schedule_send(&mut self, ctx: &mut Context<Self>) {
        if !self.outbox_queued {
            self.outbox_queued = true;
            ctx.notify(SendOutbox);
        }
    }

    /// Sends what the outbox holds: per shard, a lone prepare or decision
    /// as it is, more as batches bounded in count and bytes. Calls run as
    /// tasks of their own, not in the actor's context (see `timers`), and
    /// come back as a `Completed` message.
    fn send_outbox(&mut self, ctx: &mut Context<Self>) {
        self.outbox_queued = false;
        let max_items = self.config.batch.max_items;
        let max_bytes = self.config.batch.max_bytes;
        for (shard, pending) in std::mem::take(&mut self.outbox) {
            let size = |item: &PrepareItem| paytx_protocol::encoded_len(item);
            for chunk in outbox::chunks(pending.prepares, size, max_items, max_bytes) {
                self.send_prepares(shard, chunk, ctx);
            }
            let size = |item: &DecisionItem| paytx_protocol::encoded_len(item);
            for chunk in outbox::chunks(pending.decisions, size, max_items, max_bytes) {
                self.send_decisions(shard, chunk, ctx);
            }
        }
    }

    fn send_prepares(&mut self, shard: ShardId, mut prepares: Vec<PrepareItem>, ctx: &mut Context<Self>) {
        let caller = self.shard_caller();
        let driver = ctx.address();
        if prepares.len() == 1 {
            send_lone_prepare(caller, driver, shard, prepares.remove(0));
            return;
        }
        let txns: Vec<TxnId> = prepares.iter().map(|item| item.txn).collect();
        actix::spawn(async move {
            let request = PeerRequest::PrepareBatch { shard, prepares };
            let reply = caller.call(shard, &request).await;
            let (events, blocked) = outbox::prepare_batch_events(shard, &txns, reply);
            driver.do_send(Completed(events));
            let PeerRequest::PrepareBatch { prepares, .. } = request else {
                unreachable!("built as a PrepareBatch just above");
            };
            // A prepare that would wait for a lock goes again alone: a lone
            // prepare waits (at most the shard's `lock_wait_ms`) without
            // holding back anyone else's vote.
            for item in prepares.into_iter().filter(|item| blocked.contains(&item.txn)) {
                send_lone_prepare(caller.clone(), driver.clone(), shard, item);
            }
        });
    }

    fn send_decisions(&mut self, shard: ShardId, decisions: Vec<DecisionItem>, ctx: &mut Context<Self>) {
        let caller = self.shard_caller();
        let driver = ctx.address();
        if let [DecisionItem { txn, commit, at_ms }] = decisions[..] {
            actix::spawn(async move {
                let reply = caller.call(shard, &PeerRequest::Decide { txn, shard, commit, at_ms }).await;
                driver.do_send(Completed(vec![decide_reply_event(txn, shard, reply)]));
            });
            return;
        }
        let txns: Vec<TxnId> = decisions.iter().map(|item| item.txn).collect();
        actix::spawn(async move {
            let reply = caller.call(shard, &PeerRequest::DecideBatch { shard, decisions }).await;
            driver.do_send(Completed(outbox::decide_batch_events(shard, &txns, reply)));
        });
    }

    /// A safety net: a transaction of the table that the leader's engine
    /// does not track (seen so at two sweeps in a row, so a Forget or Begin
    /// in flight is not mistaken for one) is adopted and driven to the end.
    fn sweep_orphans(&mut self, ctx: &mut Context<Self>) {
        if !self.engine.is_leader() {
            self.orphans.clear();
            return;
        }
        let untracked: Vec<(TxnId, crate::table::TxnRecord)> = read_table(&self.table)
            .table
            .txns()
            .filter(|(txn, _)| !self.engine.tracks(txn))
            .map(|(txn, record)| (*txn, record.clone()))
            .collect();
        let previous = std::mem::take(&mut self.orphans);
        for (txn, record) in untracked {
            if previous.contains(&txn) {
                tracing::warn!(%txn, "adopting a transaction nobody drives");
                self.dispatch(Event::Adopt { txn, record }, ctx);
            } else {
                self.orphans.insert(txn);
            }
        }
    }

    fn on_became_leader(&mut self, term: u64, ctx: &mut Context<Self>) {
        let raft = self.raft.clone();
        // The table is complete once every entry of earlier terms is applied:
        // `ensure_linearizable` waits for exactly that.
        let ready = async move { raft.ensure_linearizable().await };
        ctx.spawn(ready.into_actor(self).map(move |result, act, ctx| {
            if act.leadership.term != term || !act.leadership.is_leader {
                return;
            }
            match result {
                Ok(_) => {
                    let live = read_table(&act.table).table.txns().map(|(id, r)| (*id, r.clone())).collect();
                    tracing::info!(node = act.config.node, term, "coordinator leader ready; re-driving the table");
                    act.dispatch(Event::BecameLeader { term, live }, ctx);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "leader not ready yet; retrying");
                    ctx.run_later_on(&act.clock, Duration::from_millis(50), move |act, ctx| {
                        if act.leadership.term == term && act.leadership.is_leader {
                            act.on_became_leader(term, ctx);
                        }
                    });
                }
            }
        }));
    }
}

/// Sends one prepare as a plain `Prepare`, in a task of its own; its
/// answer comes back as a `Completed`.
fn send_lone_prepare(caller: ShardCaller, driver: Addr<CoordinatorDriver>, shard: ShardId, item: PrepareItem) {
    let PrepareItem { txn, ops } = item;
    actix::spawn(async move {
        let reply = caller.call(shard, &PeerRequest::Prepare { txn, shard, ops }).await;
        driver.do_send(Completed(vec![prepare_reply_event(txn, shard, reply)]));
    });
}

/// How the driver's calls reach a participant shard's leader.
#[derive(Clone)]
struct ShardCaller {
    transport: Arc<dyn Transport>,
    leaders: Arc<paytx_protocol::routing::ShardLeaders>,
    timeout_ms: u64,
}

impl ShardCaller {
    /// The request is borrowed: each attempt sends a copy, and the caller
    /// keeps the original (a batch's blocked prepares are sent again from it).
    async fn call(&self, shard: ShardId, request: &PeerRequest) -> Result<PeerResponse, String> {
        paytx_protocol::routing::call_shard(&*self.transport, &self.leaders, shard, request, self.timeout_ms).await
    }
}

/// The engine event for the reply to the prepare of `txn` sent to `shard`.
/// A vote for anything else is not this prepare's answer: it counts as no
/// answer (a failed prepare: aborts a fresh transaction, is retried for a
/// re-driven one), never as a vote.
fn prepare_reply_event(txn: TxnId, shard: ShardId, reply: Result<PeerResponse, String>) -> Event {
    match reply {
        Ok(PeerResponse::Vote { txn: voted, shard: by, vote }) if voted == txn && by == shard => {
            Event::VoteReceived { txn, shard, vote }
        }
        Ok(PeerResponse::Vote { txn: voted, shard: by, .. }) => {
            tracing::error!(%txn, %shard, %voted, %by, "a vote for another prepare; dropped");
            Event::PrepareFailed { txn, shard }
        }
        other => {
            tracing::debug!(%txn, %shard, reply = ?other, "prepare failed");
            Event::PrepareFailed { txn, shard }
        }
    }
}

/// The engine event for the reply to the decision of `txn` sent to
/// `shard`: only an acknowledgement naming both counts (anything else is
/// retried).
fn decide_reply_event(txn: TxnId, shard: ShardId, reply: Result<PeerResponse, String>) -> Event {
    match reply {
        Ok(PeerResponse::DecisionApplied { txn: applied, shard: by }) if applied == txn && by == shard => {
            Event::DecideAcked { txn, shard }
        }
        other => {
            tracing::debug!(%txn, %shard, reply = ?other, "decide not acknowledged; will retry");
            Event::DecideFailed { txn, shard }
        }
    }
}

/// Maps a failed proposal to what the client should hear.
fn raft_error(
    error: &openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, openraft::BasicNode>>,
) -> RequestError {
    match error.forward_to_leader::<openraft::BasicNode>() {
        Some(forward) => RequestError::NoLeader { leader_hint: forward.leader_id },
        None => match error {
            openraft::error::RaftError::Fatal(_) => RequestError::ShuttingDown,
            other => RequestError::Internal(other.to_string()),
        },
    }
}

impl Actor for CoordinatorDriver {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let tick = Duration::from_millis(self.config.tick_ms.max(1));
        ctx.run_interval_on(&self.clock, tick, |act, ctx| {
            act.dispatch(Event::Tick, ctx);
            act.ticks += 1;
            while let Some(entry) = act.timers.first_entry() {
                if *entry.key() > act.ticks {
                    break;
                }
                for event in entry.remove() {
                    act.dispatch(event, ctx);
                }
            }
            if act.ticks % SWEEP_EVERY_TICKS == 0 {
                act.sweep_orphans(ctx);
            }
            let now_ms = act.ticks.saturating_mul(act.config.tick_ms.max(1));
            if act.election_kick.poll(now_ms, act.leadership.leader.is_some()) {
                tracing::info!(node = act.config.node, "no coordinator leader for long; starting an election");
                let raft = act.raft.clone();
                actix::spawn(async move {
                    let _ = raft.trigger().elect().await;
                });
            }
        });
        let mut metrics = self.raft.metrics();
        let addr = ctx.address();
        let watch = async move {
            let mut last: Option<Leadership> = None;
            loop {
                let seen = {
                    let m = metrics.borrow_and_update();
                    Leadership {
                        is_leader: m.state == ServerState::Leader && m.current_leader == Some(m.id),
                        term: m.current_term,
                        // Hints name nodes; Raft ids are replica ids.
                        leader: m.current_leader.map(paytx_protocol::replica::node_of),
                    }
                };
                if last != Some(seen) {
                    last = Some(seen);
                    // `send`, not `try_send`: a full mailbox (many submits in
                    // flight) must delay a leadership change, never lose it.
                    if addr.send(seen).await.is_err() {
                        break; // the driver stopped
                    }
                }
                if metrics.changed().await.is_err() {
                    break; // Raft shut down.
                }
            }
        };
        ctx.spawn(watch.into_actor(self));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        for (_, waiter) in std::mem::take(&mut self.tickets) {
            let _ = waiter.send(Err(RequestError::ShuttingDown));
        }
    }
}

impl Handler<Leadership> for CoordinatorDriver {
    type Result = ();

    fn handle(&mut self, seen: Leadership, ctx: &mut Context<Self>) {
        let previous = self.leadership;
        self.leadership = seen;
        if seen.is_leader && (!previous.is_leader || previous.term != seen.term) {
            self.on_became_leader(seen.term, ctx);
        } else if !seen.is_leader {
            // Commands still queued were never proposed: fail them here (the
            // engine forgets their transactions on the step-down anyway).
            for queued in self.batcher.drain_queued() {
                self.deliver_failure(queued.proposer, RequestError::NoLeader { leader_hint: seen.leader }, ctx);
            }
            self.dispatch(Event::SteppedDown { leader_hint: seen.leader }, ctx);
        }
    }
}

/// The result of a call to a participant (or a batch of them), as engine
/// events.
#[derive(Message)]
#[rtype(result = "()")]
struct Completed(Vec<Event>);

impl Handler<Completed> for CoordinatorDriver {
    type Result = ();

    fn handle(&mut self, msg: Completed, ctx: &mut Context<Self>) {
        for event in msg.0 {
            self.dispatch(event, ctx);
        }
    }
}

/// The mailbox is drained: send what the outbox holds.
#[derive(Message)]
#[rtype(result = "()")]
struct SendOutbox;

impl Handler<SendOutbox> for CoordinatorDriver {
    type Result = ();

    fn handle(&mut self, _msg: SendOutbox, ctx: &mut Context<Self>) {
        self.send_outbox(ctx);
    }
}

impl Handler<SubmitTxn> for CoordinatorDriver {
    type Result = ResponseFuture<Result<TxnReceipt, RequestError>>;

    fn handle(&mut self, msg: SubmitTxn, ctx: &mut Context<Self>) -> Self::Result {
        self.next_ticket += 1;
        let ticket = Ticket(self.next_ticket);
        let (tx, rx) = oneshot::channel();
        self.tickets.insert(ticket, tx);
        let request = msg.0;
        // A key the applied table holds is answered from it: no Begin, no
        // prepares. (The planted bug keeps its path through Begin.)
        let known =
            if self.engine.is_leader() && !paytx_protocol::planted::active(Bug::IdempotencyTwiceAfterLeaderChange) {
                read_table(&self.table).table.lookup_key(&request.key, || request.body_hash())
            } else {
                None
            };
        match known {
            Some(known) => self.dispatch(Event::SubmitKnown { ticket, key: request.key, known }, ctx),
            None => self.dispatch(Event::Submit { ticket, request }, ctx),
        }
        Box::pin(async move { rx.await.unwrap_or(Err(RequestError::ShuttingDown)) })
    }
}

impl Handler<QueryDecision> for CoordinatorDriver {
    type Result = ResponseFuture<Result<DecisionItem, RequestError>>;

    fn handle(&mut self, msg: QueryDecision, ctx: &mut Context<Self>) -> Self::Result {
        let txn = msg.0;
        let known = read_table(&self.table).table.txn(&txn).map(|r| (r.decision.clone(), r.key.clone()));
        let answer: Result<DecisionItem, RequestError> = match known {
            // A decision in the table is final, whatever this node's role.
            Some((Some(outcome), _)) => Ok(self.decision_item(txn, outcome.is_committed())),
            Some((None, key)) => Err(RequestError::InProgress { key: key.0 }),
            None if !self.engine.is_leader() => Err(RequestError::NoLeader { leader_hint: self.engine.leader_hint() }),
            None => {
                // Presumed abort, made durable before anyone acts on it: once
                // this entry is committed no deposed leader can commit `txn`,
                // and a late Begin of it is refused (its tombstone). Batched
                // like every other replicated step.
                let (tx, rx) = oneshot::channel();
                let command = Command::PresumeAbort { txn };
                let bytes = paytx_protocol::encoded_len(&command);
                self.propose(command, bytes, Proposer::Query(txn, tx), ctx);
                return Box::pin(async move { rx.await.unwrap_or(Err(RequestError::ShuttingDown)) });
            }
        };
        Box::pin(async move { answer })
    }
}

impl Handler<GetDriverStatus> for CoordinatorDriver {
    type Result = MessageResult<GetDriverStatus>;

    fn handle(&mut self, _msg: GetDriverStatus, _ctx: &mut Context<Self>) -> Self::Result {
        let (proposals, proposed_commands) = self.batcher.totals();
        MessageResult(DriverStatus {
            is_leader: self.engine.is_leader(),
            leader_hint: self.engine.leader_hint(),
            in_flight: self.engine.in_flight(),
            finishing: self.engine.finishing(),
            proposals,
            proposed_commands,
        })
    }
}

/// Stops the driver (the coordinator replica is being shut down). Waiting
/// clients get `ShuttingDown` and retry elsewhere.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDriver;

/// Stop proposing for at most `max_hold_ms` (a hand-over of the
/// coordinator group's leadership); answers `true` once no proposal is in
/// flight.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct HoldProposals {
    pub max_hold_ms: u64,
}

/// Propose again what queued during a [`HoldProposals`].
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReleaseProposals;

impl Handler<HoldProposals> for CoordinatorDriver {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: HoldProposals, ctx: &mut Context<Self>) -> ResponseFuture<bool> {
        let (generation, drained) = self.hold.begin(self.batcher.in_flight());
        // Bounded whatever the hand-over does: the hold ends on its own.
        ctx.run_later_on(&self.clock, Duration::from_millis(msg.max_hold_ms), move |act, ctx| {
            if act.hold.end(Some(generation)) {
                act.pump(ctx);
            }
        });
        Box::pin(async move { drained.await.unwrap_or(false) })
    }
}

impl Handler<ReleaseProposals> for CoordinatorDriver {
    type Result = ();

    fn handle(&mut self, _msg: ReleaseProposals, ctx: &mut Context<Self>) {
        if self.hold.end(None) {
            self.pump(ctx);
        }
    }
}

impl Handler<StopDriver> for CoordinatorDriver {
    type Result = ();

    fn handle(&mut self, _msg: StopDriver, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paytx_protocol::{AbortReason, EntityKind, Vote};

    fn ids() -> (TxnId, ShardId, TxnId, ShardId) {
        let txn = TxnId { term: 2, node: 1, seq: 7 };
        let other_txn = TxnId { term: 2, node: 1, seq: 8 };
        (txn, ShardId { kind: EntityKind::Account, index: 0 }, other_txn, ShardId { kind: EntityKind::Order, index: 0 })
    }

    #[test]
    fn only_a_vote_naming_the_prepare_counts_as_its_vote() {
        let (txn, shard, other_txn, other_shard) = ids();
        let vote = |txn, shard| Ok(PeerResponse::Vote { txn, shard, vote: Vote::Yes });
        assert_eq!(
            prepare_reply_event(txn, shard, vote(txn, shard)),
            Event::VoteReceived { txn, shard, vote: Vote::Yes }
        );
        // Another transaction's or another shard's YES is no answer at all.
        for wrong in [vote(other_txn, shard), vote(txn, other_shard)] {
            assert_eq!(prepare_reply_event(txn, shard, wrong), Event::PrepareFailed { txn, shard });
        }
        let no = Ok(PeerResponse::Vote { txn, shard, vote: Vote::No(AbortReason::PresumedAbort) });
        assert!(matches!(prepare_reply_event(txn, shard, no), Event::VoteReceived { vote: Vote::No(_), .. }));
        assert_eq!(prepare_reply_event(txn, shard, Err("down".into())), Event::PrepareFailed { txn, shard });
        // The handshake's plain Acked is not a vote either.
        assert_eq!(prepare_reply_event(txn, shard, Ok(PeerResponse::Acked)), Event::PrepareFailed { txn, shard });
    }

    #[test]
    fn only_an_acknowledgement_naming_the_decision_counts() {
        let (txn, shard, other_txn, other_shard) = ids();
        let applied = |txn, shard| Ok(PeerResponse::DecisionApplied { txn, shard });
        assert_eq!(decide_reply_event(txn, shard, applied(txn, shard)), Event::DecideAcked { txn, shard });
        for wrong in [applied(other_txn, shard), applied(txn, other_shard), Ok(PeerResponse::Acked)] {
            assert_eq!(decide_reply_event(txn, shard, wrong), Event::DecideFailed { txn, shard }, "retried");
        }
    }
}
