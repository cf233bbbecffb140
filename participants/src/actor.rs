//! The participant actor: the only writer of one shard.
//!
//! It wraps the pure [`Engine`] with everything impure: the journal and its
//! fsyncs, the external channel model (latency and seeded declines), the
//! clock that finds in-doubt transactions, and the queries that resolve them.
//!
//! # Concurrency
//!
//! Every engine call happens inside one handler (or one synchronous
//! continuation), so it is atomic with respect to other messages: there
//! are no locks because there is one writer. Its journal writes are staged
//! and applied, with those of every other message of the same mailbox
//! drain, as one batch before the next fsync round takes its ticket (one
//! intent record and one write per key for a drain, not per message); no
//! vote or acknowledgement that waits for an fsync can be released by a
//! round that does not cover its writes.
//!
//! What takes time is *awaited without blocking the actor*: the fsync
//! before a vote or an acknowledgement and the channel's authorization
//! latency run as spawned actor futures (`ResponseActFuture`, not
//! `AtomicResponse`), so the actor keeps taking prepares while an fsync is in
//! flight — that is what lets many prepares share one fsync (group commit).
//!
//! A charge's channel is modelled *before* the engine is called: wait the
//! authorization latency, then (if the channel did not decline) validate and
//! reserve in one step. Nothing is reserved while the channel "thinks", so a
//! decline never has anything to release.
//!
//! # Failures
//!
//! A failed fsync or journal write is fail-stop: every reply waiting for
//! it gets an error (never a vote or an acknowledgement), and the actor
//! logs, marks itself stopped and stops its context. (A reply that waits
//! for no fsync — a NO, an abort's acknowledgement — may already have gone
//! out; it promised nothing the disk must hold.) Its memory may be ahead of its disk,
//! so it must not serve anything more. Restarting the node reopens the
//! shard from the journal, which is consistent by construction (the node
//! does not yet restart a stopped shard by itself).

use crate::authorized::Authorized;
use crate::config::ParticipantConfig;
use crate::decision::DecisionSource;
use crate::engine::{Admission, Engine, Prepared, Touch};
use crate::error::ParticipantError;
use crate::journal::Journal;
use crate::messages::{
    Decide, DecideMany, GetStatus, ListInDoubt, Prepare, PrepareMany, ReadAccount, ReadCharge, ReadOrder, ReadRecord,
    ScanRecords, Shutdown,
};
use crate::record_store::ScanPage;
use crate::MAX_DECLINE_PER_MILLION;
use actix::fut::{ready, wrap_future, ActorFutureExt};
use actix::{Actor, ActorContext, AsyncContext, Context, Handler, MessageResult, ResponseActFuture};
use paytx_protocol::clock::NodeClock;
use paytx_protocol::messages::{AccountView, ChargeView, OrderView, RecordView};
use paytx_protocol::planted::Bug;
use paytx_protocol::{AbortReason, ChannelId, EntityKey, EntityKind, Operation, TxnId, Vote};
use paytx_raft::timers::ClockTimers;
use paytx_storage::{Batch, DiskError, SharedDisk};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

type Reply<T> = ResponseActFuture<ParticipantActor, Result<T, ParticipantError>>;

/// What the external channel model decided for a prepare with charges.
#[derive(Debug, Clone, Copy)]
struct Authorization {
    latency_ms: u64,
    declined: Option<ChannelId>,
}

/// A prepare refused while another prepared transaction touches one of its
/// entities: tried again whenever a decision lands here, until it succeeds,
/// is refused with nothing left to wait for, or `lock_wait_ms` passes.
struct Parked {
    id: u64,
    txn: TxnId,
    ops: Vec<Operation>,
    /// The last refusal: the vote if waiting does not help.
    reason: AbortReason,
    reply: oneshot::Sender<Result<Vote, ParticipantError>>,
}

/// A read waiting for the transactions prepared on its entity before it
/// arrived (one of them may already be committed at the coordinator, and a
/// client told so must read it).
struct ReadWait {
    id: u64,
    pending: BTreeSet<TxnId>,
    ready: oneshot::Sender<()>,
}

/// The actor owning one participant shard. Create it with
/// [`ParticipantActor::open`], then `start()` it on the node's system.
pub struct ParticipantActor {
    config: ParticipantConfig,
    engine: Engine,
    journal: Journal,
    decisions: Arc<dyn DecisionSource>,
    /// The channel failure model's randomness, from `config.rng_seed` only.
    rng: ChaCha8Rng,
    /// When each transaction was prepared by this incarnation (memory only;
    /// a transaction recovered from the journal has no entry: it counts as
    /// old, so it is resolved at the first check).
    prepared_at: BTreeMap<TxnId, Instant>,
    /// This node's clock (the clock seam): the instants above are its
    /// instants, and every timer of the actor runs on it. Taken at
    /// construction from the task that builds the node.
    clock: NodeClock,
    /// Transactions whose decision query is outstanding (one at a time).
    querying: BTreeSet<TxnId>,
    /// Set on a fail-stop failure: why the shard stopped.
    stopped: Option<String>,
    /// Prepares waiting for prepared transactions to be decided (FIFO).
    parked: std::collections::VecDeque<Parked>,
    /// Blocked prepares of a batch whose charges were authorized: their
    /// second sending is not authorized again.
    authorized: Authorized,
    /// Reads waiting for earlier prepared transactions.
    read_waits: Vec<ReadWait>,
    next_wait_id: u64,
    /// Replies waiting for the next fsync round (see `after_sync`).
    sync_waiters: Vec<oneshot::Sender<Result<(), DiskError>>>,
    /// fsync rounds started and not yet finished (at most
    /// [`MAX_SYNC_ROUNDS`]).
    syncs_in_flight: usize,
    /// Journal writes of the steps taken since the last apply (see
    /// `stage`): applied as one batch after the mailbox is drained, and
    /// always before a sync round takes its ticket.
    staged: Batch,
    /// A `FlushStaged` is queued on the context.
    flush_queued: bool,
}

/// Most journal writes staged before they are applied without waiting for
/// the end of the mailbox drain (bounds the batch and the intent record).
const MAX_STAGED_WRITES: usize = 4_096;

/// fsync rounds of one shard in flight at once: two, so the next round's
/// flush can start while the last one's durable watermark is written (the
/// disk pipelines the two stages), and every reply that arrives meanwhile
/// joins the round after.
const MAX_SYNC_ROUNDS: usize = 2;

impl std::fmt::Debug for ParticipantActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParticipantActor")
            .field("shard", &self.config.shard)
            .field("in_doubt", &self.engine.prepared_count())
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl ParticipantActor {
    /// Replays the shard's journal from `disk`: committed state, the holds
    /// and locks of prepared transactions (all in doubt until resolved).
    pub fn open(
        config: ParticipantConfig,
        disk: SharedDisk,
        decisions: Arc<dyn DecisionSource>,
    ) -> Result<Self, ParticipantError> {
        config.validate()?;
        let journal = Journal::new(disk, config.shard);
        // The record limit applies to new prepares only: a recovered
        // prepared transaction was promised (YES) under the old limit.
        let engine = journal.recover(&config.channels, config.remembered_commits)?.with_max_records(config.max_records);
        let in_doubt = engine.prepared_count();
        tracing::info!(shard = %config.shard, entities = engine.status().entities, in_doubt, "participant shard recovered");
        Ok(ParticipantActor {
            rng: ChaCha8Rng::seed_from_u64(config.rng_seed),
            authorized: Authorized::default(),
            config,
            engine,
            journal,
            decisions,
            prepared_at: BTreeMap::new(),
            clock: NodeClock::current(),
            querying: BTreeSet::new(),
            stopped: None,
            parked: std::collections::VecDeque::new(),
            read_waits: Vec::new(),
            next_wait_id: 0,
            sync_waiters: Vec::new(),
            syncs_in_flight: 0,
            staged: Batch::new(),
            flush_queued: false,
        })
    }

    fn check_running(&self) -> Result<(), ParticipantError> {
        match &self.stopped {
            None => Ok(()),
            Some(reason) => Err(ParticipantError::Stopped { shard: self.config.shard, reason: reason.clone() }),
        }
    }

    /// Fail-stop: remember why, log, stop the actor, and return the error
    /// for the message that hit the failure.
    fn fail_stop(&mut self, ctx: &mut Context<Self>, error: ParticipantError) -> ParticipantError {
        tracing::error!(shard = %self.config.shard, %error, "participant shard stops (fail-stop)");
        if self.stopped.is_none() {
            self.stopped = Some(error.to_string());
        }
        ctx.stop();
        error
    }

    /// Awaits the journal's fsync, then answers `value` — or fails stop.
    ///
    /// Replies share fsync rounds: one `Disk::sync` (one task, one ticket)
    /// serves every reply that asked since the previous round started. The
    /// waiting replies hold only a oneshot receiver in the actor's context —
    /// actix polls every future a context holds whenever it wakes, so a
    /// future per reply that itself polled the disk's locks made each wake
    /// cost O(replies waiting).
    fn after_sync<T: 'static>(&mut self, value: T, ctx: &mut Context<Self>) -> Reply<T> {
        let shard = self.config.shard;
        let (tx, rx) = oneshot::channel();
        self.sync_waiters.push(tx);
        // The round starts once the mailbox is drained (`FlushStaged`), so
        // the steps of every message queued now share one journal write
        // and one fsync.
        self.schedule_flush(ctx);
        Box::pin(wrap_future(rx).map(move |synced, act: &mut Self, ctx| {
            let synced = synced
                .unwrap_or_else(|_| Err(DiskError::SyncFailed { reason: "the fsync round was dropped".to_string() }));
            match synced {
                Ok(()) => act.check_running().map(|()| value),
                Err(e) => Err(act.fail_stop(ctx, ParticipantError::from_disk(shard, e))),
            }
        }))
    }

    /// Stages one step's journal writes; they reach the disk with the
    /// others of this mailbox drain, as one batch (one intent record, one
    /// write per key), before any fsync round that could acknowledge them.
    fn stage(&mut self, step: impl FnOnce(&Journal, &mut Batch), ctx: &mut Context<Self>) {
        step(&self.journal, &mut self.staged);
        if self.staged.writes.len() >= MAX_STAGED_WRITES {
            self.apply_staged(ctx);
        }
        self.schedule_flush(ctx);
    }

    /// Queues one `FlushStaged` behind the messages already in the mailbox
    /// (actix handles a context's queued items after draining the mailbox).
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if !self.flush_queued {
            self.flush_queued = true;
            ctx.notify(FlushStaged);
        }
    }

    /// Applies the staged writes; a failure is fail-stop (memory is ahead
    /// of the disk). `false` when the shard stopped.
    fn apply_staged(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.staged.is_empty() {
            return self.stopped.is_none();
        }
        let staged = std::mem::take(&mut self.staged);
        match self.journal.apply_staged(staged) {
            Ok(()) => true,
            Err(e) => {
                self.fail_stop(ctx, e);
                false
            }
        }
    }

    /// Starts one fsync covering every write applied so far (the staged
    /// ones are applied first; the ticket is taken now, synchronously) for
    /// the replies waiting now.
    fn start_sync_round(&mut self, ctx: &mut Context<Self>) {
        // PLANTED BUG (simulator only): the round's ticket is taken before the staged writes are applied.
        let late = paytx_protocol::planted::active(Bug::SyncBeforeStagedApply);
        // Never a ticket before the staged writes are applied: a reply
        // released by this round must find its step on the disk.
        if !late && !self.apply_staged(ctx) {
            return;
        }
        if self.sync_waiters.is_empty() {
            return;
        }
        assert!(self.syncs_in_flight < MAX_SYNC_ROUNDS, "bounded rounds");
        assert!(late || self.staged.is_empty(), "a round covers every staged write");
        self.syncs_in_flight += 1;
        let waiters = std::mem::take(&mut self.sync_waiters);
        let sync = self.journal.sync();
        if late && !self.apply_staged(ctx) {
            return;
        }
        let actor = ctx.address();
        actix::spawn(async move {
            let synced = sync.await;
            for waiter in waiters {
                let _ = waiter.send(synced.clone());
            }
            actor.do_send(SyncRoundDone);
        });
    }

    /// Models the external channels of a prepare's charges: the longest
    /// authorization latency, and one seeded draw per charge on a configured
    /// channel. `None` when there is nothing to authorize (not a channel
    /// shard, no charge, or the transaction is already prepared or committed
    /// here and so must not be authorized again).
    fn authorize(&mut self, txn: TxnId, ops: &[Operation]) -> Option<Authorization> {
        if self.config.shard.kind != EntityKind::Channel
            || self.engine.is_prepared(txn)
            || self.engine.is_committed(txn)
        {
            return None;
        }
        let mut authorization: Option<Authorization> = None;
        for op in ops {
            let Operation::Charge { channel, .. } = op else {
                continue;
            };
            // An unknown channel is refused by the engine, without a wait.
            let Some(config) = self.engine.channel(*channel) else {
                continue;
            };
            let (latency_ms, decline_per_million) = (config.authorize_latency_ms, config.decline_per_million);
            let declines = self.rng.gen_range(0..MAX_DECLINE_PER_MILLION) < decline_per_million;
            let current = authorization.get_or_insert(Authorization { latency_ms: 0, declined: None });
            current.latency_ms = current.latency_ms.max(latency_ms);
            if declines && current.declined.is_none() {
                current.declined = Some(*channel);
            }
        }
        authorization
    }

    /// Validates, reserves and journals in one step (atomic w.r.t. other
    /// messages), then votes YES after the fsync, or NO at once.
    fn prepare_now(
        &mut self,
        txn: TxnId,
        ops: Vec<Operation>,
        declined: Option<ChannelId>,
        disk_low: Option<u64>,
        may_park: bool,
        ctx: &mut Context<Self>,
    ) -> Reply<Vote> {
        if let Err(e) = self.check_running() {
            return Box::pin(ready(Err(e)));
        }
        let admission = Admission { declined, disk_low };
        if let Some(reason) = self.engine.refusal(txn, admission, self.config.max_prepared) {
            tracing::debug!(shard = %self.config.shard, %txn, code = reason.code(), "refused before validation");
            return Box::pin(ready(Ok(Vote::No(reason))));
        }
        match self.engine.prepare(txn, &ops) {
            Err(reason) => {
                if self.may_wait() && self.engine.blocked_by_prepared(txn, &ops) {
                    if !may_park {
                        // In a batch: answered at once, sent again alone
                        // (with the authorization it already has).
                        if self.config.shard.kind == EntityKind::Channel {
                            self.authorized.remember(txn);
                        }
                        return Box::pin(ready(Err(ParticipantError::Blocked { shard: self.config.shard })));
                    }
                    return self.park(txn, ops, reason, ctx);
                }
                tracing::debug!(shard = %self.config.shard, %txn, code = reason.code(), "voting no");
                Box::pin(ready(Ok(Vote::No(reason))))
            }
            Ok(Prepared::New(record)) => {
                // Memory now holds a reservation the disk does not yet: a
                // failed write of it stops the shard before any YES.
                self.stage(|journal, batch| journal.stage_prepared(&record, batch), ctx);
                self.prepared_at.insert(txn, self.clock.now());
                // PLANTED BUG (simulator only): vote YES before the prepared record is synced.
                if paytx_protocol::planted::active(Bug::VoteBeforeSync) {
                    return Box::pin(ready(Ok(Vote::Yes)));
                }
                self.after_sync(Vote::Yes, ctx)
            }
            // A re-sent prepare: the earlier record may still be on its way
            // to disk, so this YES waits for a sync too (cheap: shared).
            Ok(Prepared::AlreadyPrepared | Prepared::AlreadyCommitted) => self.after_sync(Vote::Yes, ctx),
        }
    }

    /// Applies a decision (from the coordinator or an in-doubt query).
    fn decide(&mut self, decision: Decide, ctx: &mut Context<Self>) -> Reply<()> {
        let Decide { txn, commit, at_ms } = decision;
        if let Err(e) = self.check_running() {
            return Box::pin(ready(Err(e)));
        }
        self.prepared_at.remove(&txn);
        self.authorized.forget(txn);
        let released = self.engine.touches_of(txn);
        let reply = self.apply_decision(txn, commit, at_ms, ctx);
        // Whatever waited for this transaction may go on now.
        self.wake_waiters(txn, commit, &released, ctx);
        reply
    }

    fn apply_decision(&mut self, txn: TxnId, commit: bool, at_ms: u64, ctx: &mut Context<Self>) -> Reply<()> {
        if commit {
            match self.engine.commit(txn, at_ms) {
                Some(committed) => {
                    self.stage(|journal, batch| journal.stage_commit(&committed, batch), ctx);
                    tracing::debug!(shard = %self.config.shard, %txn, "committed");
                }
                None => {
                    tracing::debug!(shard = %self.config.shard, %txn, "commit of an unknown txn: already applied")
                }
            }
            // Acknowledge only once durable — even a repeated commit, whose
            // first batch may still be in flight. The coordinator forgets
            // the decision once every participant acked; a commit lost in a
            // crash after that would come back in doubt and be presumed
            // aborted, half-applying the transaction.
            self.after_sync((), ctx)
        } else {
            if self.engine.is_committed(txn) {
                tracing::error!(shard = %self.config.shard, %txn, "abort received for a committed txn: conflicting decisions; ignored");
            }
            if self.engine.abort(txn) {
                self.stage(|journal, batch| journal.stage_abort(txn, batch), ctx);
                tracing::debug!(shard = %self.config.shard, %txn, "aborted");
            }
            // No fsync before acknowledging an abort: if the deletion of the
            // prepared record is lost in a crash, the transaction comes back
            // in doubt, the shard asks, and the answer is abort again
            // (presumed abort: a forgotten transaction is an aborted one).
            // Nothing was applied, so nothing can be half-applied.
            Box::pin(ready(Ok(())))
        }
    }

    fn may_wait(&self) -> bool {
        self.config.lock_wait_ms > 0 && self.parked.len() + self.read_waits.len() < self.config.max_waiting
    }

    fn next_wait_id(&mut self) -> u64 {
        self.next_wait_id += 1;
        self.next_wait_id
    }

    /// Parks a refused prepare until a decision lands here (see [`Parked`]).
    fn park(&mut self, txn: TxnId, ops: Vec<Operation>, reason: AbortReason, ctx: &mut Context<Self>) -> Reply<Vote> {
        let id = self.next_wait_id();
        let (reply, answer) = oneshot::channel();
        tracing::trace!(shard = %self.config.shard, %txn, code = reason.code(), "prepare waits for a prepared transaction");
        self.parked.push_back(Parked { id, txn, ops, reason, reply });
        ctx.run_later_on(&self.clock, Duration::from_millis(self.config.lock_wait_ms), move |act, _ctx| {
            if let Some(at) = act.parked.iter().position(|p| p.id == id) {
                if let Some(parked) = act.parked.remove(at) {
                    let _ = parked.reply.send(Ok(Vote::No(parked.reason)));
                }
            }
        });
        let shard = self.config.shard;
        Box::pin(wrap_future(answer).map(move |answer, _act: &mut Self, _ctx| {
            answer.unwrap_or_else(|_| Err(ParticipantError::Stopped { shard, reason: "shard stopped".into() }))
        }))
    }

    /// Waits until every transaction prepared on `target` now is decided
    /// here (or `lock_wait_ms` passes): a read then sees every transaction
    /// a client was told committed before it asked.
    fn read_barrier(&mut self, target: Touch, ctx: &mut Context<Self>) -> ResponseActFuture<Self, ()> {
        // Transactions recovered from the journal are in doubt already (no
        // decision reached this shard before it stopped): waiting for them
        // would only delay the read; they do not hold it.
        let mut pending = self.engine.prepared_touching(&target);
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

    /// `txn` was decided here: release the reads that waited for it, and
    /// try again, oldest first, the parked prepares on what it `released`
    /// (only those: a hot entity's queue must not make every decision on
    /// the shard retry every waiting prepare).
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
                // Decided while it waited: an abort (it never voted YES here).
                if commit {
                    tracing::error!(shard = %self.config.shard, %txn, "commit of a transaction that never voted YES here");
                }
                let _ = parked.reply.send(Ok(Vote::No(parked.reason)));
                continue;
            }
            if parked.ops.iter().any(|op| released.contains(&Touch::of(op))) {
                self.retry_parked(parked, ctx);
            } else {
                self.parked.push_back(parked);
            }
        }
    }

    fn retry_parked(&mut self, mut parked: Parked, ctx: &mut Context<Self>) {
        let txn = parked.txn;
        if self.engine.prepared_count() >= self.config.max_prepared {
            let _ = parked.reply.send(Ok(Vote::No(parked.reason)));
            return;
        }
        match self.engine.prepare(txn, &parked.ops) {
            Err(reason) if self.engine.blocked_by_prepared(txn, &parked.ops) => {
                parked.reason = reason;
                self.parked.push_back(parked);
            }
            Err(reason) => {
                let _ = parked.reply.send(Ok(Vote::No(reason)));
            }
            Ok(prepared) => {
                if let Prepared::New(record) = &prepared {
                    self.stage(|journal, batch| journal.stage_prepared(record, batch), ctx);
                    self.prepared_at.insert(txn, self.clock.now());
                }
                let reply = parked.reply;
                let synced = self.after_sync(Vote::Yes, ctx);
                ctx.spawn(synced.map(move |vote, _act: &mut Self, _ctx| {
                    let _ = reply.send(vote);
                }));
            }
        }
    }

    /// One in-doubt check: ask the coordinator group about every prepared
    /// transaction older than `in_doubt_after_ms` with no query outstanding,
    /// at most `max_queries_per_tick` of them.
    fn query_in_doubt(&mut self, ctx: &mut Context<Self>) {
        if self.stopped.is_some() {
            return;
        }
        let now = self.clock.now();
        let in_doubt_after = Duration::from_millis(self.config.in_doubt_after_ms);
        let due: Vec<TxnId> = self
            .engine
            .prepared_txns()
            .into_iter()
            .filter(|txn| !self.querying.contains(txn))
            .filter(|txn| match self.prepared_at.get(txn) {
                Some(prepared_at) => now.saturating_duration_since(*prepared_at) >= in_doubt_after,
                None => true,
            })
            .take(self.config.max_queries_per_tick)
            .collect();
        for txn in due {
            tracing::info!(shard = %self.config.shard, %txn, "transaction in doubt; asking for its decision");
            self.querying.insert(txn);
            let query = wrap_future(self.decisions.query(txn)).map(move |answer, act: &mut Self, ctx| {
                act.querying.remove(&txn);
                match answer {
                    Ok(decision) if decision.txn == txn => {
                        let commit = decision.commit;
                        tracing::info!(shard = %act.config.shard, %txn, commit, "in-doubt transaction resolved");
                        let applied = act.decide(decision, ctx).map(move |result, _act: &mut Self, _ctx| {
                            if let Err(error) = result {
                                tracing::warn!(%txn, %error, "could not apply a resolved decision");
                            }
                        });
                        ctx.spawn(applied);
                    }
                    Ok(other) => {
                        tracing::error!(shard = %act.config.shard, %txn, answered = %other.txn, "decision query answered for another transaction; asking again later");
                    }
                    Err(reason) => {
                        tracing::warn!(shard = %act.config.shard, %txn, %reason, "decision query failed; asking again later");
                    }
                }
            });
            ctx.spawn(query);
        }
    }
}

impl Actor for ParticipantActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let interval = Duration::from_millis(self.config.in_doubt_check_interval_ms);
        ctx.run_interval_on(&self.clock, interval, |act, ctx| act.query_in_doubt(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        tracing::info!(shard = %self.config.shard, reason = ?self.stopped, "participant shard stopped");
    }
}

impl Handler<Prepare> for ParticipantActor {
    type Result = Reply<Vote>;

    fn handle(&mut self, msg: Prepare, ctx: &mut Context<Self>) -> Reply<Vote> {
        self.handle_prepare(msg, true, ctx)
    }
}

impl Handler<PrepareMany> for ParticipantActor {
    type Result = Reply<Vec<Result<Vote, ParticipantError>>>;

    fn handle(&mut self, msg: PrepareMany, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.check_running() {
            return Box::pin(ready(Err(e)));
        }
        let votes: Vec<_> = msg.0.into_iter().map(|prepare| self.handle_prepare(prepare, false, ctx)).collect();
        crate::batch::answer_all(self.config.shard, votes, ctx)
    }
}

impl Handler<DecideMany> for ParticipantActor {
    type Result = Reply<Vec<Result<(), ParticipantError>>>;

    fn handle(&mut self, msg: DecideMany, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.check_running() {
            return Box::pin(ready(Err(e)));
        }
        let acks: Vec<_> = msg.0.into_iter().map(|decide| self.decide(decide, ctx)).collect();
        crate::batch::answer_all(self.config.shard, acks, ctx)
    }
}

impl ParticipantActor {
    /// A prepare, lone (`may_park`: it may wait for a lock) or of a batch.
    fn handle_prepare(&mut self, msg: Prepare, may_park: bool, ctx: &mut Context<Self>) -> Reply<Vote> {
        let Prepare { txn, ops, disk_low } = msg;
        if self.authorized.take(txn) {
            // Sent again after `Blocked`: authorized the first time.
            return self.prepare_now(txn, ops, None, disk_low, may_park, ctx);
        }
        match self.authorize(txn, &ops) {
            None => self.prepare_now(txn, ops, None, disk_low, may_park, ctx),
            // No modelled latency: decide now, without a trip through the timer.
            Some(Authorization { latency_ms: 0, declined }) => {
                self.prepare_now(txn, ops, declined, disk_low, may_park, ctx)
            }
            Some(Authorization { latency_ms, declined }) => {
                let wait = self.clock.sleep(Duration::from_millis(latency_ms));
                Box::pin(
                    wrap_future(wait).then(move |(), act: &mut Self, ctx| {
                        act.prepare_now(txn, ops, declined, disk_low, may_park, ctx)
                    }),
                )
            }
        }
    }
}

/// The mailbox is drained: apply what its messages staged, and start an
/// fsync round if one is free (else `SyncRoundDone` starts it).
#[derive(actix::Message)]
#[rtype(result = "()")]
struct FlushStaged;

impl Handler<FlushStaged> for ParticipantActor {
    type Result = ();

    fn handle(&mut self, _msg: FlushStaged, ctx: &mut Context<Self>) {
        self.flush_queued = false;
        if self.syncs_in_flight < MAX_SYNC_ROUNDS {
            // Applies the staged writes, then takes the round's ticket.
            self.start_sync_round(ctx);
        }
        // No round free (or no reply waiting): the writes go to the disk
        // now; the next round covers them.
        self.apply_staged(ctx);
    }
}

/// An fsync round finished: start the next one for the replies that
/// arrived meanwhile.
#[derive(actix::Message)]
#[rtype(result = "()")]
struct SyncRoundDone;

impl Handler<SyncRoundDone> for ParticipantActor {
    type Result = ();

    fn handle(&mut self, _msg: SyncRoundDone, ctx: &mut Context<Self>) {
        self.syncs_in_flight = self.syncs_in_flight.saturating_sub(1);
        self.start_sync_round(ctx);
    }
}

impl Handler<Decide> for ParticipantActor {
    type Result = Reply<()>;

    fn handle(&mut self, msg: Decide, ctx: &mut Context<Self>) -> Reply<()> {
        self.decide(msg, ctx)
    }
}

impl Handler<ReadAccount> for ParticipantActor {
    type Result = ResponseActFuture<Self, Option<AccountView>>;

    fn handle(&mut self, msg: ReadAccount, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let barrier = self.read_barrier(Touch::Entity(EntityKey::Account(id)), ctx);
        Box::pin(barrier.map(move |(), act: &mut Self, _ctx| act.engine.account(id)))
    }
}

impl Handler<ReadOrder> for ParticipantActor {
    type Result = ResponseActFuture<Self, Option<OrderView>>;

    fn handle(&mut self, msg: ReadOrder, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let barrier = self.read_barrier(Touch::Entity(EntityKey::Order(id)), ctx);
        Box::pin(barrier.map(move |(), act: &mut Self, _ctx| act.engine.order(id)))
    }
}

impl Handler<ReadCharge> for ParticipantActor {
    type Result = ResponseActFuture<Self, Option<ChargeView>>;

    fn handle(&mut self, msg: ReadCharge, ctx: &mut Context<Self>) -> Self::Result {
        let (channel, order) = (msg.channel, msg.order);
        let barrier = self.read_barrier(Touch::Charge(channel, order), ctx);
        Box::pin(barrier.map(move |(), act: &mut Self, _ctx| act.engine.charge(channel, order)))
    }
}

impl Handler<ReadRecord> for ParticipantActor {
    type Result = ResponseActFuture<Self, Option<RecordView>>;

    fn handle(&mut self, msg: ReadRecord, ctx: &mut Context<Self>) -> Self::Result {
        let key = msg.0;
        let barrier = self.read_barrier(Touch::Entity(EntityKey::Record(key)), ctx);
        Box::pin(barrier.map(move |(), act: &mut Self, _ctx| act.engine.record(key)))
    }
}

impl Handler<ScanRecords> for ParticipantActor {
    type Result = ResponseActFuture<Self, ScanPage>;

    fn handle(&mut self, msg: ScanRecords, ctx: &mut Context<Self>) -> Self::Result {
        let barrier = self.read_barrier(Touch::Namespace(msg.ns), ctx);
        Box::pin(
            barrier.map(move |(), act: &mut Self, _ctx| {
                act.engine.scan_records(msg.ns, msg.after, msg.limit, msg.max_bytes)
            }),
        )
    }
}

impl Handler<crate::messages::ScanRange> for ParticipantActor {
    type Result = ResponseActFuture<Self, ScanPage>;

    fn handle(&mut self, msg: crate::messages::ScanRange, ctx: &mut Context<Self>) -> Self::Result {
        // Like a scan: what was prepared in the namespace before the read
        // is decided first (an index entry a client was told about is seen).
        let barrier = self.read_barrier(Touch::Namespace(msg.scan.partition.ns), ctx);
        Box::pin(barrier.map(move |(), act: &mut Self, _ctx| act.engine.scan_range(&msg.scan, msg.max_bytes)))
    }
}

impl Handler<GetStatus> for ParticipantActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _msg: GetStatus, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.engine.status())
    }
}

impl Handler<ListInDoubt> for ParticipantActor {
    type Result = Vec<TxnId>;

    fn handle(&mut self, _msg: ListInDoubt, _ctx: &mut Context<Self>) -> Vec<TxnId> {
        self.engine.prepared_txns()
    }
}

impl Handler<Shutdown> for ParticipantActor {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Context<Self>) {
        tracing::info!(shard = %self.config.shard, "participant shard shutting down");
        ctx.stop();
    }
}
