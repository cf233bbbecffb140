//! [`ShardHandle`]: how the node reaches one participant shard it hosts —
//! a single-copy shard's actor, or this node's replica of a replicated
//! shard (its Raft group and the front actor that proposes on it).

use actix::Addr;
use paytx_participants::group::front::ShardFront;
use paytx_participants::group::state_machine::{lock_state, SharedShardState};
use paytx_participants::group::types::ShardRaft;
use paytx_participants::{
    Decide, DecideMany, GetStatus, ParticipantActor, ParticipantError, Prepare, PrepareMany, ShardRead,
    ShardReadAnswer, Shutdown,
};
use paytx_protocol::messages::ShardStatus;
use paytx_protocol::{ShardId, Vote};

/// One hosted shard.
#[derive(Clone)]
pub enum ShardHandle {
    /// The shard's only copy, on this node's disk.
    Single(Addr<ParticipantActor>),
    /// This node's replica of a replicated shard.
    Replicated { front: Addr<ShardFront>, raft: ShardRaft, state: SharedShardState },
}

/// What a replica has applied of its shard's log, and a digest of the
/// state it holds (replicas that applied the same entries must agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaState {
    pub applied_index: Option<u64>,
    /// FNV-1a of the encoded engine export.
    pub digest: u64,
    /// Snapshots this replica installed from its leader since it started.
    pub snapshots_installed: u64,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

fn stopped(shard: ShardId) -> ParticipantError {
    ParticipantError::Stopped { shard, reason: "the shard's actor is gone".to_string() }
}

impl ShardHandle {
    pub async fn prepare(&self, shard: ShardId, prepare: Prepare) -> Result<Vote, ParticipantError> {
        let answer = match self {
            ShardHandle::Single(actor) => actor.send(prepare).await,
            ShardHandle::Replicated { front, .. } => front.send(prepare).await,
        };
        answer.unwrap_or_else(|_| Err(stopped(shard)))
    }

    pub async fn decide(&self, shard: ShardId, decide: Decide) -> Result<(), ParticipantError> {
        let answer = match self {
            ShardHandle::Single(actor) => actor.send(decide).await,
            ShardHandle::Replicated { front, .. } => front.send(decide).await,
        };
        answer.unwrap_or_else(|_| Err(stopped(shard)))
    }

    /// Many prepares in one message (see [`PrepareMany`]); `Err` when the
    /// shard took none of them.
    pub async fn prepare_many(
        &self,
        shard: ShardId,
        prepares: Vec<Prepare>,
    ) -> Result<Vec<Result<Vote, ParticipantError>>, ParticipantError> {
        let answer = match self {
            ShardHandle::Single(actor) => actor.send(PrepareMany(prepares)).await,
            ShardHandle::Replicated { front, .. } => front.send(PrepareMany(prepares)).await,
        };
        answer.unwrap_or_else(|_| Err(stopped(shard)))
    }

    /// Many decisions in one message (see [`DecideMany`]).
    pub async fn decide_many(
        &self,
        shard: ShardId,
        decisions: Vec<Decide>,
    ) -> Result<Vec<Result<(), ParticipantError>>, ParticipantError> {
        let answer = match self {
            ShardHandle::Single(actor) => actor.send(DecideMany(decisions)).await,
            ShardHandle::Replicated { front, .. } => front.send(DecideMany(decisions)).await,
        };
        answer.unwrap_or_else(|_| Err(stopped(shard)))
    }

    /// A read; a replicated shard answers only on its leader.
    pub async fn read(&self, shard: ShardId, read: ShardRead) -> Result<ShardReadAnswer, ParticipantError> {
        let actor = match self {
            ShardHandle::Replicated { front, .. } => {
                return front.send(read).await.unwrap_or_else(|_| Err(stopped(shard)))
            }
            ShardHandle::Single(actor) => actor,
        };
        let answer = match read {
            ShardRead::Account(id) => {
                actor.send(paytx_participants::ReadAccount(id)).await.map(ShardReadAnswer::Account)
            }
            ShardRead::Order(id) => actor.send(paytx_participants::ReadOrder(id)).await.map(ShardReadAnswer::Order),
            ShardRead::Charge { channel, order } => {
                actor.send(paytx_participants::ReadCharge { channel, order }).await.map(ShardReadAnswer::Charge)
            }
            ShardRead::Record(key) => {
                actor.send(paytx_participants::ReadRecord(key)).await.map(ShardReadAnswer::Record)
            }
            ShardRead::Scan(scan) => actor.send(scan).await.map(ShardReadAnswer::Page),
            ShardRead::Range(range) => actor.send(range).await.map(ShardReadAnswer::Page),
        };
        answer.map_err(|_| stopped(shard))
    }

    /// The shard's status; `node` is this node (a single copy's leader).
    pub async fn status(&self, node: u64) -> Option<ShardStatus> {
        match self {
            ShardHandle::Single(actor) => {
                actor.send(GetStatus).await.ok().map(|status| ShardStatus { leader: Some(node), ..status })
            }
            ShardHandle::Replicated { front, raft, .. } => {
                let (leader, voters) = {
                    let metrics = raft.metrics().borrow().clone();
                    let voters = metrics.membership_config.membership().voter_ids().collect();
                    (metrics.current_leader.map(paytx_protocol::replica::node_of), voters)
                };
                front.send(GetStatus).await.ok().map(|status| ShardStatus { leader, voters, ..status })
            }
        }
    }

    /// A replicated shard's replica: what it applied and a digest of its
    /// state (`None` for a single-copy shard). O(entities): for checks.
    pub fn replica_state(&self) -> Option<ReplicaState> {
        let ShardHandle::Replicated { state, .. } = self else {
            return None;
        };
        // The lock is held for the capture only (O(1) clones), not for the
        // O(entities) listing and encoding.
        let (export, applied_index, snapshots_installed) = {
            let state = lock_state(state);
            (state.engine.capture(), state.last_applied.map(|id| id.index), state.snapshots_installed)
        };
        let encoded = paytx_protocol::encode(&export.into_snapshot()).ok()?;
        Some(ReplicaState { applied_index, digest: fnv1a(&encoded), snapshots_installed })
    }

    /// The Raft group of a replicated shard's replica.
    pub fn raft(&self) -> Option<&ShardRaft> {
        match self {
            ShardHandle::Single(_) => None,
            ShardHandle::Replicated { raft, .. } => Some(raft),
        }
    }

    /// Stops the shard's actor at once (and a replica's Raft group).
    pub fn stop(&self) {
        match self {
            ShardHandle::Single(actor) => actor.do_send(Shutdown),
            ShardHandle::Replicated { front, raft, .. } => {
                front.do_send(Shutdown);
                let raft = raft.clone();
                tokio::spawn(async move {
                    if let Err(e) = raft.shutdown().await {
                        tracing::debug!(error = %e, "shard raft shutdown reported an error");
                    }
                });
            }
        }
    }
}
