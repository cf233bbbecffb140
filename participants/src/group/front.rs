//! The front of one replica of a replicated shard: the actor that turns
//! the coordinator's 2PC messages into log entries of the shard's Raft
//! group, and answers reads.
//!
//! Only the group's leader acts; on any other replica every request is
//! answered `NotLeader` with the leader it knows, and the caller goes
//! there. On the leader:
//!
//! * **Prepare**: the external channel model runs first (latency, seeded
//!   declines: not functions of the replicated state), then the prepare and
//!   what the model said go into the next batch of commands. The vote is
//!   what applying the committed entry returned, so a YES is on a majority
//!   of the group's disks before it is sent. A NO given while another
//!   prepared transaction touches the same entities parks the prepare; it is
//!   proposed again when a decision releases them (at most `lock_wait_ms`).
//! * **Decide**: a decision entry; acknowledged once it is applied.
//! * **Reads**: a read-index round (`ensure_linearizable`), then a wait for
//!   the transactions this leader prepared on the entity (one of them may be
//!   committed at the coordinator already), then the read.
//! * **In doubt**: prepared transactions with no decision after
//!   `in_doubt_after_ms` are asked about, and the answer is proposed.
//!
//! Commands are batched as the coordinator batches its own: at most
//! `max_in_flight` proposals outstanding, the next batch accumulating
//! meanwhile, never a timer (see [`paytx_protocol::batcher`]).

use crate::authorized::Authorized;
use crate::config::ParticipantConfig;
use crate::decision::DecisionSource;
use crate::engine::{Admission, Touch};
use crate::error::ParticipantError;
use crate::group::state_machine::{lock_state, SharedShardState};
use crate::group::types::{ShardCommand, ShardProposal, ShardRaft, StepResult};
use crate::messages::{
    Decide, DecideMany, GetStatus, ListInDoubt, Prepare, PrepareMany, ShardRead, ShardReadAnswer, Shutdown,
};
use crate::MAX_DECLINE_PER_MILLION;
use actix::fut::{ready, wrap_future, ActorFutureExt};
use actix::{
    Actor, ActorContext, AsyncContext, Context, Handler, Message, MessageResult, ResponseActFuture, ResponseFuture,
};
use paytx_protocol::batcher::{BatchLimits, Batcher};
use paytx_protocol::clock::NodeClock;
use paytx_protocol::planted::Bug;
use paytx_protocol::replica::{node_of, ReplicaId};
use paytx_protocol::{AbortReason, EntityKey, EntityKind, Operation, TxnId, Vote};
use paytx_raft::handover::Hold;
use paytx_raft::kick::ElectionKick;
use paytx_raft::timers::ClockTimers;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

type Reply<T> = ResponseActFuture<ShardFront, Result<T, ParticipantError>>;
type StepReply = oneshot::Sender<Result<StepResult, ParticipantError>>;

/// A command waiting for its batch, and who waits for its result.
struct Pending {
    command: ShardCommand,
    reply: StepReply,
}

/// A prepare refused while another prepared transaction touched its
/// entities, waiting for a decision to release them.
struct Parked {
    id: u64,
    txn: TxnId,
    ops: Vec<Operation>,
    reason: AbortReason,
    reply: oneshot::Sender<Result<Vote, ParticipantError>>,
}

/// A read waiting for the transactions this leader prepared on its entity.
struct ReadWait {
    id: u64,
    pending: BTreeSet<TxnId>,
    ready: oneshot::Sender<()>,
}

/// The front of one replica of a replicated shard (see the module doc).
pub struct ShardFront {
    config: ParticipantConfig,
    /// This replica's Raft id (node id and incarnation).
    replica: ReplicaId,
    raft: ShardRaft,
    state: SharedShardState,
    decisions: Arc<dyn DecisionSource>,
    /// The channel model's randomness, from `config.rng_seed` only.
    rng: ChaCha8Rng,
    batcher: Batcher<Pending>,
    /// When this leader prepared each transaction (memory only).
    prepared_at: BTreeMap<TxnId, Instant>,
    /// When this leader first saw each prepared transaction it did not
    /// prepare itself (an earlier leader's): its in-doubt clock.
    seen_at: BTreeMap<TxnId, Instant>,
    /// Transactions whose decision query is outstanding.
    querying: BTreeSet<TxnId>,
    parked: VecDeque<Parked>,
    /// Blocked prepares of a batch whose charges were authorized: their
    /// second sending is not authorized again.
    authorized: Authorized,
    read_waits: Vec<ReadWait>,
    next_wait_id: u64,
    /// Breaks a livelocked election of the group (`paytx_raft::kick`).
    election_kick: ElectionKick,
    started: Instant,
    /// This node's clock (the clock seam): every timer of the front runs
    /// on it, and every instant above is one of its instants. Taken at
    /// construction from the task that builds the node.
    clock: NodeClock,
    /// How long a proposal may wait for its `client_write`
    /// (`paytx_raft::proposal_timeout_ms`).
    proposal_timeout_ms: u64,
    /// Proposals held while this leader hands the group over
    /// (`paytx_raft::handover`).
    hold: Hold,
    /// Set while one message's many commands are queued: they wait for one
    /// pump at its end, so they share an entry instead of the first going
    /// out alone into a free slot.
    defer_pump: bool,
}

/// How often a replica checks whether its group has a leader.
const KICK_CHECK_MS: u64 = 100;

impl std::fmt::Debug for ShardFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardFront").field("shard", &self.config.shard).field("replica", &self.replica).finish()
    }
}

/// Bytes a command adds to an entry (for the batch's byte bound).
fn command_bytes(command: &ShardCommand) -> usize {
    paytx_protocol::encoded_len(command)
}

impl ShardFront {
    pub fn new(
        config: ParticipantConfig,
        replica: ReplicaId,
        raft: ShardRaft,
        state: SharedShardState,
        decisions: Arc<dyn DecisionSource>,
        batch: BatchLimits,
        election_timeout_max_ms: u64,
    ) -> Self {
        let clock = NodeClock::current();
        ShardFront {
            election_kick: ElectionKick::new(config.rng_seed ^ 0x6b69_636b, election_timeout_max_ms),
            started: clock.now(),
            clock,
            proposal_timeout_ms: paytx_raft::proposal_timeout_ms(election_timeout_max_ms),
            rng: ChaCha8Rng::seed_from_u64(config.rng_seed),
            authorized: Authorized::default(),
            config,
            replica,
            raft,
            state,
            decisions,
            batcher: Batcher::new(batch),
            prepared_at: BTreeMap::new(),
            seen_at: BTreeMap::new(),
            querying: BTreeSet::new(),
            parked: VecDeque::new(),
            read_waits: Vec::new(),
            next_wait_id: 0,
            hold: Hold::default(),
            defer_pump: false,
        }
    }

    /// `Err(NotLeader)` unless this replica leads the group now.
    fn check_leader(&self) -> Result<(), ParticipantError> {
        let leader = self.raft.metrics().borrow().current_leader;
        if leader == Some(self.replica) {
            Ok(())
        } else {
            Err(ParticipantError::NotLeader { shard: self.config.shard, leader_hint: leader.map(node_of) })
        }
    }

    fn raft_error<E: std::fmt::Display>(
        &self,
        error: &openraft::error::RaftError<u64, E>,
        forward: Option<Option<u64>>,
    ) -> ParticipantError {
        match forward {
            // openraft names the leader's replica id; routing wants its node.
            Some(leader_hint) => {
                ParticipantError::NotLeader { shard: self.config.shard, leader_hint: leader_hint.map(node_of) }
            }
            None => ParticipantError::Replication { shard: self.config.shard, reason: error.to_string() },
        }
    }

    /// Queues `command` for the next entry; the result arrives on the
    /// returned receiver once the entry is committed and applied here.
    fn submit(&mut self, command: ShardCommand, ctx: &mut Context<Self>) -> oneshot::Receiver<StepResultOrError> {
        let (reply, result) = oneshot::channel();
        let bytes = command_bytes(&command);
        if let Err(full) = self.batcher.push(Pending { command, reply }, bytes) {
            let error = ParticipantError::Replication {
                shard: self.config.shard,
                reason: format!("overloaded: {}", QueueFullLabel(full.queued)),
            };
            let _ = full.item.reply.send(Err(error));
            return result;
        }
        if !self.defer_pump {
            self.pump(ctx);
        }
        result
    }

    /// Proposes every batch the batcher lets go now.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.hold.is_held() {
            return; // a hand-over: the log must stop growing
        }
        while let Some(batch) = self.batcher.next_batch() {
            let (commands, replies): (Vec<ShardCommand>, Vec<StepReply>) =
                batch.into_iter().map(|pending| (pending.command, pending.reply)).unzip();
            let raft = self.raft.clone();
            let timeout_ms = self.proposal_timeout_ms;
            let write = async move { raft.client_write(ShardProposal { commands }).await };
            // Bounded: see `paytx_raft::proposal_timeout_ms` for the write
            // that would otherwise never return.
            let write = self.clock.timeout(Duration::from_millis(timeout_ms), write);
            ctx.spawn(wrap_future(write).map(move |result, act: &mut Self, ctx| {
                act.batcher.finished();
                act.hold.on_finished(act.batcher.in_flight());
                let Ok(result) = result else {
                    tracing::warn!(shard = %act.config.shard, timeout_ms, "a proposal was not answered in time; failing it");
                    let reason = format!("the shard's proposal was not answered within {timeout_ms} ms");
                    for reply in replies {
                        let _ = reply.send(Err(ParticipantError::Replication { shard: act.config.shard, reason: reason.clone() }));
                    }
                    act.pump(ctx);
                    return;
                };
                match result {
                    Ok(response) if response.data.results.len() == replies.len() => {
                        for (reply, step) in replies.into_iter().zip(response.data.results) {
                            let _ = reply.send(Ok(step));
                        }
                    }
                    Ok(response) => {
                        // Every command of an entry is answered: anything
                        // else is a bug; fail them all rather than mis-pair.
                        let reason = format!(
                            "an entry of {} commands was answered with {} results",
                            replies.len(),
                            response.data.results.len()
                        );
                        tracing::error!(shard = %act.config.shard, %reason);
                        for reply in replies {
                            let _ = reply.send(Err(ParticipantError::Replication {
                                shard: act.config.shard,
                                reason: reason.clone(),
                            }));
                        }
                    }
                    Err(e) => {
                        let forward = e.forward_to_leader::<openraft::BasicNode>().map(|f| f.leader_id);
                        let error = act.raft_error(&e, forward);
                        for reply in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                }
                act.pump(ctx);
            }));
        }
    }

    /// Draws the channel model for a prepare's charges: the longest
    /// authorization latency and the first decline. `None` when there is
    /// nothing to authorize (not a channel shard, no charge, or already
    /// prepared or committed: never authorized twice).
    fn authorize(&mut self, txn: TxnId, ops: &[Operation]) -> Option<(u64, Admission)> {
        if self.config.shard.kind != EntityKind::Channel {
            return None;
        }
        let state = lock_state(&self.state);
        if state.engine.is_prepared(txn) || state.engine.is_committed(txn) {
            return None;
        }
        let mut found: Option<(u64, Admission)> = None;
        for op in ops {
            let Operation::Charge { channel, .. } = op else {
                continue;
            };
            let Some(config) = state.engine.channel(*channel) else {
                continue;
            };
            let declines = self.rng.gen_range(0..MAX_DECLINE_PER_MILLION) < config.decline_per_million;
            let (latency_ms, admission) = found.get_or_insert((0, Admission::default()));
            *latency_ms = (*latency_ms).max(config.authorize_latency_ms);
            if declines && admission.declined.is_none() {
                admission.declined = Some(*channel);
            }
        }
        found
    }

    /// Proposes a prepare and sends its vote to `reply` — or, when the NO
    /// may turn into a YES once a prepared transaction is decided, parks it
    /// (`may_park`) or answers `Blocked` (a prepare of a batch).
    fn propose_prepare(
        &mut self,
        txn: TxnId,
        ops: Vec<Operation>,
        admission: Admission,
        may_park: bool,
        reply: oneshot::Sender<Result<Vote, ParticipantError>>,
        ctx: &mut Context<Self>,
    ) {
        let result = self.submit(ShardCommand::Prepare { txn, ops: ops.clone(), admission }, ctx);
        let shard = self.config.shard;
        // PLANTED BUG (simulator only): vote YES before the prepare's entry is committed and applied.
        let (reply, early) = if paytx_protocol::planted::active(Bug::VoteBeforeReplicated) {
            let _ = reply.send(Ok(Vote::Yes));
            (oneshot::channel().0, true)
        } else {
            (reply, false)
        };
        ctx.spawn(wrap_future(result).map(move |result, act: &mut Self, ctx| {
            let result = result.unwrap_or_else(|_| Err(dropped(shard)));
            if early {
                return;
            }
            match result {
                Ok(StepResult::Voted { vote: Vote::Yes, .. }) => {
                    act.prepared_at.insert(txn, act.clock.now());
                    let _ = reply.send(Ok(Vote::Yes));
                }
                Ok(StepResult::Voted { vote: Vote::No(_), blocked: true }) if act.may_wait() && !may_park => {
                    // Applied as a NO that reserved nothing: sent again
                    // alone, with the authorization it already has.
                    if shard.kind == EntityKind::Channel {
                        act.authorized.remember(txn);
                    }
                    let _ = reply.send(Err(ParticipantError::Blocked { shard }));
                }
                Ok(StepResult::Voted { vote: Vote::No(reason), blocked: true }) if act.may_wait() => {
                    act.park(Parked { id: 0, txn, ops, reason, reply }, ctx);
                }
                Ok(StepResult::Voted { vote: Vote::No(reason), .. }) => {
                    tracing::debug!(%shard, %txn, code = reason.code(), "voting no");
                    let _ = reply.send(Ok(Vote::No(reason)));
                }
                Ok(other) => {
                    let reason = format!("a prepare was answered with {other:?}");
                    let _ = reply.send(Err(ParticipantError::Replication { shard, reason }));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }));
    }

    fn may_wait(&self) -> bool {
        self.config.lock_wait_ms > 0 && self.parked.len() + self.read_waits.len() < self.config.max_waiting
    }

    fn next_wait_id(&mut self) -> u64 {
        self.next_wait_id += 1;
        self.next_wait_id
    }

    fn park(&mut self, mut parked: Parked, ctx: &mut Context<Self>) {
        let id = self.next_wait_id();
        parked.id = id;
        self.parked.push_back(parked);
        ctx.run_later_on(&self.clock, Duration::from_millis(self.config.lock_wait_ms), move |act, _ctx| {
            if let Some(at) = act.parked.iter().position(|p| p.id == id) {
                if let Some(parked) = act.parked.remove(at) {
                    let _ = parked.reply.send(Ok(Vote::No(parked.reason)));
                }
            }
        });
    }

    /// Proposes a decision; `done` learns when it is applied.
    fn propose_decision(
        &mut self,
        decision: Decide,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<(), ParticipantError>> {
        let Decide { txn, commit, at_ms } = decision;
        let released = lock_state(&self.state).engine.touches_of(txn);
        let result = self.submit(ShardCommand::DecideAt { txn, commit, at_ms }, ctx);
        let shard = self.config.shard;
        Box::pin(wrap_future(result).map(move |result, act: &mut Self, ctx| {
            match result.unwrap_or_else(|_| Err(dropped(shard))) {
                Ok(StepResult::Decided) => {
                    act.prepared_at.remove(&txn);
                    act.seen_at.remove(&txn);
                    act.authorized.forget(txn);
                    act.wake_waiters(txn, commit, &released, ctx);
                    Ok(())
                }
                Ok(other) => Err(ParticipantError::Replication {
                    shard,
                    reason: format!("a decision was answered with {other:?}"),
                }),
                Err(e) => Err(e),
            }
        }))
    }

    /// `txn` was decided: release the reads that waited for it, and
    /// propose again, oldest first, the parked prepares on what it released.
    fn wake_waiters(&mut self, txn: TxnId, commit: bool, released: &BTreeSet<Touch>, ctx: &mut Context<Self>) {
        let mut still = Vec::with_capacity(self.read_waits.len());
        for mut wait in std::mem::take(&mut self.read_waits) {
            wait.pending.remove(&txn);
            if wait.pending.is_empty() {
                let _ = wait.ready.send(());
            } else {
                still.push(wait);
            }
        }
        self.read_waits = still;
        for parked in std::mem::take(&mut self.parked) {
            if parked.reply.is_closed() {
                continue;
            }
            if parked.txn == txn {
                if commit {
                    tracing::error!(shard = %self.config.shard, %txn, "commit of a transaction that never voted YES here");
                }
                let _ = parked.reply.send(Ok(Vote::No(parked.reason)));
                continue;
            }
            if parked.ops.iter().any(|op| released.contains(&Touch::of(op))) {
                // A retry: the channel was authorized the first time.
                self.propose_prepare(parked.txn, parked.ops, Admission::default(), true, parked.reply, ctx);
            } else {
                self.parked.push_back(parked);
            }
        }
    }

    /// Waits until every transaction this leader prepared on `target` is
    /// decided (or `lock_wait_ms` passes).
    fn read_barrier(&mut self, target: Touch, ctx: &mut Context<Self>) -> ResponseActFuture<Self, ()> {
        let mut pending = lock_state(&self.state).engine.prepared_touching(&target);
        pending.retain(|txn| self.prepared_at.contains_key(txn));
        if pending.is_empty() || !self.may_wait() {
            return Box::pin(ready(()));
        }
        let id = self.next_wait_id();
        let (ready_tx, ready_rx) = oneshot::channel();
        self.read_waits.push(ReadWait { id, pending, ready: ready_tx });
        ctx.run_later_on(&self.clock, Duration::from_millis(self.config.lock_wait_ms), move |act, _ctx| {
            if let Some(at) = act.read_waits.iter().position(|w| w.id == id) {
                let _ = act.read_waits.swap_remove(at).ready.send(());
            }
        });
        Box::pin(wrap_future(ready_rx).map(|_, _act: &mut Self, _ctx| ()))
    }

    fn answer_read(&self, read: ShardRead) -> ShardReadAnswer {
        let state = lock_state(&self.state);
        let engine = &state.engine;
        match read {
            ShardRead::Account(id) => ShardReadAnswer::Account(engine.account(id)),
            ShardRead::Order(id) => ShardReadAnswer::Order(engine.order(id)),
            ShardRead::Charge { channel, order } => ShardReadAnswer::Charge(engine.charge(channel, order)),
            ShardRead::Record(key) => ShardReadAnswer::Record(engine.record(key)),
            ShardRead::Scan(scan) => {
                ShardReadAnswer::Page(engine.scan_records(scan.ns, scan.after, scan.limit, scan.max_bytes))
            }
            ShardRead::Range(range) => ShardReadAnswer::Page(engine.scan_range(&range.scan, range.max_bytes)),
        }
    }

    /// Asks the coordinator group about every prepared transaction with no
    /// decision after `in_doubt_after_ms` (leader only), at most
    /// `max_queries_per_tick` of them; each answer is proposed.
    fn query_in_doubt(&mut self, ctx: &mut Context<Self>) {
        if self.check_leader().is_err() {
            // A follower drives nothing; a later leader starts its own clocks.
            self.seen_at.clear();
            return;
        }
        let now = self.clock.now();
        let in_doubt_after = Duration::from_millis(self.config.in_doubt_after_ms);
        let prepared = lock_state(&self.state).engine.prepared_txns();
        let mut due = Vec::new();
        for txn in prepared {
            let since = match self.prepared_at.get(&txn) {
                Some(at) => *at,
                None => *self.seen_at.entry(txn).or_insert(now),
            };
            if !self.querying.contains(&txn)
                && now.saturating_duration_since(since) >= in_doubt_after
                && due.len() < self.config.max_queries_per_tick
            {
                due.push(txn);
            }
        }
        for txn in due {
            tracing::info!(shard = %self.config.shard, %txn, "transaction in doubt; asking for its decision");
            self.querying.insert(txn);
            let query = wrap_future(self.decisions.query(txn)).map(move |answer, act: &mut Self, ctx| {
                act.querying.remove(&txn);
                match answer {
                    Ok(decision) if decision.txn == txn => {
                        let applied = act.propose_decision(decision, ctx).map(move |result, _act, _ctx| {
                            if let Err(error) = result {
                                tracing::warn!(%txn, %error, "could not apply a resolved decision");
                            }
                        });
                        ctx.spawn(applied);
                    }
                    Ok(other) => {
                        tracing::error!(%txn, answered = %other.txn, "decision query answered for another transaction; asking again later");
                    }
                    Err(reason) => {
                        tracing::debug!(%txn, %reason, "decision query failed; asking again later");
                    }
                }
            });
            ctx.spawn(query);
        }
    }
}

/// A step's result or the failure that prevented it.
type StepResultOrError = Result<StepResult, ParticipantError>;

/// Names a full queue in an error message.
struct QueueFullLabel(usize);

impl std::fmt::Display for QueueFullLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} commands queued for the shard's next entries", self.0)
    }
}

fn dropped(shard: paytx_protocol::ShardId) -> ParticipantError {
    ParticipantError::Replication { shard, reason: "the shard front stopped".to_string() }
}

impl Actor for ShardFront {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let interval = Duration::from_millis(self.config.in_doubt_check_interval_ms);
        ctx.run_interval_on(&self.clock, interval, |act, ctx| act.query_in_doubt(ctx));
        ctx.run_interval_on(&self.clock, Duration::from_millis(KICK_CHECK_MS), |act, _ctx| {
            let now_ms = u64::try_from((act.clock.now() - act.started).as_millis()).unwrap_or(u64::MAX);
            let leader_known = act.raft.metrics().borrow().current_leader.is_some();
            if act.election_kick.poll(now_ms, leader_known) {
                tracing::info!(shard = %act.config.shard, replica = act.replica, "no leader for long; starting an election");
                let raft = act.raft.clone();
                actix::spawn(async move {
                    let _ = raft.trigger().elect().await;
                });
            }
        });
    }
}

impl Handler<Prepare> for ShardFront {
    type Result = Reply<Vote>;

    fn handle(&mut self, msg: Prepare, ctx: &mut Context<Self>) -> Reply<Vote> {
        if let Err(e) = self.check_leader() {
            return Box::pin(ready(Err(e)));
        }
        self.handle_prepare(msg, true, ctx)
    }
}

impl Handler<PrepareMany> for ShardFront {
    type Result = Reply<Vec<Result<Vote, ParticipantError>>>;

    fn handle(&mut self, msg: PrepareMany, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.check_leader() {
            return Box::pin(ready(Err(e)));
        }
        // One pump at the end: the prepares ready now share an entry.
        self.defer_pump = true;
        let votes: Vec<_> = msg.0.into_iter().map(|prepare| self.handle_prepare(prepare, false, ctx)).collect();
        self.defer_pump = false;
        let answer = crate::batch::answer_all(self.config.shard, votes, ctx);
        self.pump(ctx);
        answer
    }
}

impl Handler<Decide> for ShardFront {
    type Result = Reply<()>;

    fn handle(&mut self, msg: Decide, ctx: &mut Context<Self>) -> Reply<()> {
        if let Err(e) = self.check_leader() {
            return Box::pin(ready(Err(e)));
        }
        self.propose_decision(msg, ctx)
    }
}

impl Handler<DecideMany> for ShardFront {
    type Result = Reply<Vec<Result<(), ParticipantError>>>;

    fn handle(&mut self, msg: DecideMany, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.check_leader() {
            return Box::pin(ready(Err(e)));
        }
        self.defer_pump = true;
        let acks: Vec<_> = msg.0.into_iter().map(|decide| self.propose_decision(decide, ctx)).collect();
        self.defer_pump = false;
        let answer = crate::batch::answer_all(self.config.shard, acks, ctx);
        self.pump(ctx);
        answer
    }
}

impl ShardFront {
    /// A prepare on the leader, lone (`may_park`: it may wait for a lock)
    /// or of a batch: the channel model first, then the proposal.
    fn handle_prepare(&mut self, msg: Prepare, may_park: bool, ctx: &mut Context<Self>) -> Reply<Vote> {
        let Prepare { txn, ops, disk_low } = msg;
        // Sent again after `Blocked`: authorized the first time.
        let (latency_ms, mut admission) = if self.authorized.take(txn) {
            (0, Admission::default())
        } else {
            self.authorize(txn, &ops).unwrap_or_default()
        };
        admission.disk_low = disk_low;
        let (reply, vote) = oneshot::channel();
        let shard = self.config.shard;
        let answer = wrap_future(vote).map(move |vote, _act: &mut Self, _ctx| vote.unwrap_or(Err(dropped(shard))));
        if latency_ms == 0 {
            self.propose_prepare(txn, ops, admission, may_park, reply, ctx);
            return Box::pin(answer);
        }
        let wait = self.clock.sleep(Duration::from_millis(latency_ms));
        Box::pin(
            wrap_future(wait)
                .map(move |(), act: &mut Self, ctx| act.propose_prepare(txn, ops, admission, may_park, reply, ctx))
                .then(move |(), _act, _ctx| answer),
        )
    }
}

impl Handler<ShardRead> for ShardFront {
    type Result = Reply<ShardReadAnswer>;

    fn handle(&mut self, read: ShardRead, _ctx: &mut Context<Self>) -> Reply<ShardReadAnswer> {
        if let Err(e) = self.check_leader() {
            return Box::pin(ready(Err(e)));
        }
        let target = match read {
            ShardRead::Account(id) => Touch::Entity(EntityKey::Account(id)),
            ShardRead::Order(id) => Touch::Entity(EntityKey::Order(id)),
            ShardRead::Charge { channel, order } => Touch::Charge(channel, order),
            ShardRead::Record(key) => Touch::Entity(EntityKey::Record(key)),
            ShardRead::Scan(scan) => Touch::Namespace(scan.ns),
            ShardRead::Range(range) => Touch::Namespace(range.scan.partition.ns),
        };
        // Read index: once it returns, this replica has applied every entry
        // committed before the read began, and was the leader then.
        let raft = self.raft.clone();
        let linearizable = async move { raft.ensure_linearizable().await };
        Box::pin(wrap_future(linearizable).then(move |confirmed, act: &mut Self, ctx| {
            let gate: ResponseActFuture<Self, Result<(), ParticipantError>> = match confirmed {
                Ok(_) => Box::pin(act.read_barrier(target, ctx).map(|(), _act, _ctx| Ok(()))),
                Err(e) => {
                    let forward = e.forward_to_leader::<openraft::BasicNode>().map(|f| f.leader_id);
                    Box::pin(ready(Err(act.raft_error(&e, forward))))
                }
            };
            gate.map(move |gate, act: &mut Self, _ctx| gate.map(|()| act.answer_read(read)))
        }))
    }
}

impl Handler<GetStatus> for ShardFront {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _msg: GetStatus, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(lock_state(&self.state).engine.status())
    }
}

impl Handler<ListInDoubt> for ShardFront {
    type Result = Vec<TxnId>;

    fn handle(&mut self, _msg: ListInDoubt, _ctx: &mut Context<Self>) -> Vec<TxnId> {
        lock_state(&self.state).engine.prepared_txns()
    }
}

/// Stop proposing for at most `max_hold_ms` (a hand-over of the group's
/// leadership); answers `true` once no proposal is in flight.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct HoldProposals {
    pub max_hold_ms: u64,
}

/// Propose again what queued during a [`HoldProposals`].
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReleaseProposals;

impl Handler<HoldProposals> for ShardFront {
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

impl Handler<ReleaseProposals> for ShardFront {
    type Result = ();

    fn handle(&mut self, _msg: ReleaseProposals, ctx: &mut Context<Self>) {
        if self.hold.end(None) {
            self.pump(ctx);
        }
    }
}

impl Handler<Shutdown> for ShardFront {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Context<Self>) {
        tracing::info!(shard = %self.config.shard, "shard front shutting down");
        for pending in self.batcher.drain_queued() {
            let _ = pending.reply.send(Err(dropped(self.config.shard)));
        }
        ctx.stop();
    }
}
