//! The participant actor: the only writer of one shard.
//!
//! It wraps the pure [`Engine`] with everything impure: the journal and its
//! fsyncs, the external channel model (latency and seeded declines), the
//! clock that finds in-doubt transactions, and the queries that resolve them.
//!
//! # Concurrency
//!
//! Every engine call and the journal write that goes with it happen inside
//! one handler (or one synchronous continuation), so they are atomic with
//! respect to other messages: there are no locks because there is one
//! writer. What takes time is *awaited without blocking the actor*: the fsync
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
//! A failed fsync or journal write is fail-stop: the actor answers the
//! message with an error (never a vote or an acknowledgement), logs, marks
//! itself stopped and stops its context. Its memory may be ahead of its disk,
//! so it must not serve anything more. Restarting the node reopens the
//! shard from the journal, which is consistent by construction (the node
//! does not yet restart a stopped shard by itself).

use crate::config::ParticipantConfig;
use crate::decision::DecisionSource;
use crate::engine::{Engine, Prepared};
use crate::error::ParticipantError;
use crate::journal::Journal;
use crate::messages::{
    Decide, GetStatus, ListInDoubt, Prepare, ReadAccount, ReadCharge, ReadOrder, ReadRecord, ScanRecords, Shutdown,
};
use crate::MAX_DECLINE_PER_MILLION;
use actix::fut::{ready, wrap_future, ActorFutureExt};
use actix::{Actor, ActorContext, AsyncContext, Context, Handler, MessageResult, ResponseActFuture};
use paytx_protocol::messages::{AccountView, ChargeView, OrderView, RecordView};
use paytx_protocol::planted::Bug;
use paytx_protocol::{AbortReason, ChannelId, EntityKind, Operation, TxnId, Vote};
use paytx_storage::SharedDisk;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

type Reply<T> = ResponseActFuture<ParticipantActor, Result<T, ParticipantError>>;

/// What the external channel model decided for a prepare with charges.
#[derive(Debug, Clone, Copy)]
struct Authorization {
    latency_ms: u64,
    declined: Option<ChannelId>,
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
    /// Transactions whose decision query is outstanding (one at a time).
    querying: BTreeSet<TxnId>,
    /// Set on a fail-stop failure: why the shard stopped.
    stopped: Option<String>,
}

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
            config,
            engine,
            journal,
            decisions,
            prepared_at: BTreeMap::new(),
            querying: BTreeSet::new(),
            stopped: None,
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
    fn after_sync<T: 'static>(&self, value: T) -> Reply<T> {
        let shard = self.config.shard;
        Box::pin(wrap_future(self.journal.sync()).map(move |synced, act: &mut Self, ctx| match synced {
            Ok(()) => act.check_running().map(|()| value),
            Err(e) => Err(act.fail_stop(ctx, ParticipantError::from_disk(shard, e))),
        }))
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
    fn prepare_now(&mut self, txn: TxnId, ops: Vec<Operation>, declined: Option<ChannelId>) -> Reply<Vote> {
        if let Err(e) = self.check_running() {
            return Box::pin(ready(Err(e)));
        }
        let fresh = !self.engine.is_prepared(txn) && !self.engine.is_committed(txn);
        if fresh {
            if let Some(channel) = declined {
                tracing::debug!(shard = %self.config.shard, %txn, %channel, "channel declined the charge");
                return Box::pin(ready(Ok(Vote::No(AbortReason::ChannelDeclined { channel }))));
            }
            if self.engine.prepared_count() >= self.config.max_prepared {
                let entity = format!(
                    "shard {} ({} transactions in doubt, the configured max_prepared)",
                    self.config.shard, self.config.max_prepared
                );
                tracing::warn!(shard = %self.config.shard, %txn, "prepared table full; voting no");
                return Box::pin(ready(Ok(Vote::No(AbortReason::Conflict { entity }))));
            }
        }
        match self.engine.prepare(txn, &ops) {
            Err(reason) => {
                tracing::debug!(shard = %self.config.shard, %txn, code = reason.code(), "voting no");
                Box::pin(ready(Ok(Vote::No(reason))))
            }
            Ok(Prepared::New(record)) => {
                if let Err(e) = self.journal.record_prepared(&record) {
                    // Memory now holds a reservation the disk does not: the
                    // shard stops (the actor is gone before anyone sees it).
                    return Box::pin(ready(()).map(move |(), act: &mut Self, ctx| Err(act.fail_stop(ctx, e))));
                }
                self.prepared_at.insert(txn, Instant::now());
                // PLANTED BUG (simulator only): vote YES before the prepared record is synced.
                if paytx_protocol::planted::active(Bug::VoteBeforeSync) {
                    return Box::pin(ready(Ok(Vote::Yes)));
                }
                self.after_sync(Vote::Yes)
            }
            // A re-sent prepare: the earlier record may still be on its way
            // to disk, so this YES waits for a sync too (cheap: shared).
            Ok(Prepared::AlreadyPrepared | Prepared::AlreadyCommitted) => self.after_sync(Vote::Yes),
        }
    }

    /// Applies a decision (from the coordinator or an in-doubt query).
    fn decide(&mut self, txn: TxnId, commit: bool) -> Reply<()> {
        if let Err(e) = self.check_running() {
            return Box::pin(ready(Err(e)));
        }
        self.prepared_at.remove(&txn);
        if commit {
            match self.engine.commit(txn) {
                Some(committed) => {
                    if let Err(e) = self.journal.record_commit(&committed) {
                        return Box::pin(ready(()).map(move |(), act: &mut Self, ctx| Err(act.fail_stop(ctx, e))));
                    }
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
            self.after_sync(())
        } else {
            if self.engine.is_committed(txn) {
                tracing::error!(shard = %self.config.shard, %txn, "abort received for a committed txn: conflicting decisions; ignored");
            }
            if self.engine.abort(txn) {
                if let Err(e) = self.journal.record_abort(txn) {
                    return Box::pin(ready(()).map(move |(), act: &mut Self, ctx| Err(act.fail_stop(ctx, e))));
                }
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

    /// One in-doubt check: ask the coordinator group about every prepared
    /// transaction older than `in_doubt_after_ms` with no query outstanding,
    /// at most `max_queries_per_tick` of them.
    fn query_in_doubt(&mut self, ctx: &mut Context<Self>) {
        if self.stopped.is_some() {
            return;
        }
        let now = Instant::now();
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
                    Ok(commit) => {
                        tracing::info!(shard = %act.config.shard, %txn, commit, "in-doubt transaction resolved");
                        let applied = act.decide(txn, commit).map(move |result, _act: &mut Self, _ctx| {
                            if let Err(error) = result {
                                tracing::warn!(%txn, %error, "could not apply a resolved decision");
                            }
                        });
                        ctx.spawn(applied);
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
        ctx.run_interval(interval, |act, ctx| act.query_in_doubt(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        tracing::info!(shard = %self.config.shard, reason = ?self.stopped, "participant shard stopped");
    }
}

impl Handler<Prepare> for ParticipantActor {
    type Result = Reply<Vote>;

    fn handle(&mut self, msg: Prepare, _ctx: &mut Context<Self>) -> Reply<Vote> {
        let Prepare { txn, ops } = msg;
        match self.authorize(txn, &ops) {
            None => self.prepare_now(txn, ops, None),
            Some(Authorization { latency_ms, declined }) => {
                let wait = tokio::time::sleep(Duration::from_millis(latency_ms));
                Box::pin(wrap_future(wait).then(move |(), act: &mut Self, _ctx| act.prepare_now(txn, ops, declined)))
            }
        }
    }
}

impl Handler<Decide> for ParticipantActor {
    type Result = Reply<()>;

    fn handle(&mut self, msg: Decide, _ctx: &mut Context<Self>) -> Reply<()> {
        self.decide(msg.txn, msg.commit)
    }
}

impl Handler<ReadAccount> for ParticipantActor {
    type Result = Option<AccountView>;

    fn handle(&mut self, msg: ReadAccount, _ctx: &mut Context<Self>) -> Option<AccountView> {
        self.engine.account(msg.0)
    }
}

impl Handler<ReadOrder> for ParticipantActor {
    type Result = Option<OrderView>;

    fn handle(&mut self, msg: ReadOrder, _ctx: &mut Context<Self>) -> Option<OrderView> {
        self.engine.order(msg.0)
    }
}

impl Handler<ReadCharge> for ParticipantActor {
    type Result = Option<ChargeView>;

    fn handle(&mut self, msg: ReadCharge, _ctx: &mut Context<Self>) -> Option<ChargeView> {
        self.engine.charge(msg.channel, msg.order)
    }
}

impl Handler<ReadRecord> for ParticipantActor {
    type Result = Option<RecordView>;

    fn handle(&mut self, msg: ReadRecord, _ctx: &mut Context<Self>) -> Option<RecordView> {
        self.engine.record(msg.0)
    }
}

impl Handler<ScanRecords> for ParticipantActor {
    type Result = MessageResult<ScanRecords>;

    fn handle(&mut self, msg: ScanRecords, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.engine.scan_records(msg.ns, msg.after, msg.limit, msg.max_bytes))
    }
}

impl Handler<crate::messages::ScanRange> for ParticipantActor {
    type Result = MessageResult<crate::messages::ScanRange>;

    fn handle(&mut self, msg: crate::messages::ScanRange, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.engine.scan_range(&msg.scan, msg.max_bytes))
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
