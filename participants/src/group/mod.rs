//! Replicated shards: every participant shard as a Raft group.
//!
//! A shard with `replicas > 1` in the shard map is a Raft group (openraft,
//! the same version, log store and network as the coordinator group) of
//! voters on distinct nodes. Its state machine is the pure participant
//! [`crate::Engine`]:
//!
//! * a prepare is a log entry; the vote is what applying it returns,
//!   computed from the replicated state alone ([`apply`]), so every replica
//!   computes the same vote and a YES is durable on a majority of the
//!   group, not on one disk;
//! * decisions are entries too;
//! * what is not a function of the state (the channel model's latency and
//!   declines, the disk's free space) is resolved by the leader before it
//!   proposes, and written into the entry ([`crate::engine::Admission`]).
//!
//! [`front`] is the actor on each replica that the node routes 2PC
//! messages and reads to; only the leader's acts. A group's log, metadata
//! and snapshot live in their own keyspaces of the node's one disk
//! ([`keyspace_prefix`]), so one group commit covers every group's appends.

pub mod apply;
pub mod front;
pub mod state_machine;
pub mod types;

use crate::config::ParticipantConfig;
use crate::decision::DecisionSource;
use crate::error::ParticipantError;
use actix::{Actor, Addr};
use front::ShardFront;
use paytx_protocol::batcher::BatchLimits;
use paytx_protocol::messages::RaftGroup;
use paytx_protocol::replica::ReplicaId;
use paytx_protocol::{ShardId, Transport};
use paytx_raft::network::{NetworkFactory, ReplicaRecorder};
use paytx_raft::{max_rpc_bytes, RaftSettings};
use paytx_storage::SharedDisk;
use state_machine::{ShardStateMachine, SharedShardState};
use std::collections::BTreeMap;
use std::sync::Arc;
use types::{ShardLogStore, ShardRaft};

/// Where a shard group's keyspaces start: `group-<kind>-<index>/`.
pub fn keyspace_prefix(shard: ShardId) -> String {
    format!("group-{}-{}/", shard.kind.name(), shard.index)
}

/// One replica of a replicated shard, started.
pub struct ShardGroup {
    pub raft: ShardRaft,
    pub state: SharedShardState,
    pub front: Addr<ShardFront>,
}

/// How to start one replica.
pub struct GroupStart {
    /// This replica's Raft id: the node id and its incarnation
    /// (`paytx_protocol::replica`).
    pub replica: ReplicaId,
    /// A node rebuilt on an empty disk never initialises a group: the group
    /// exists, and the node joins it (`paytx_raft::admit::join`).
    pub rebuilt: bool,
    pub participant: ParticipantConfig,
    /// Every voter of the group, with its address.
    pub members: BTreeMap<u64, String>,
    pub raft: RaftSettings,
    pub max_frame_bytes: usize,
    /// This node is the shard's preferred node (the shard map's entry):
    /// it initialises a brand-new group, so the group's first leader is
    /// here, and it draws its election timeouts from the lower half of the
    /// configured range, so after a leader is lost it usually wins the
    /// election if it is up to date. That spreads the groups' leaders over
    /// the nodes as the shard map spreads the shards.
    pub preferred: bool,
}

/// `settings` with the election timeouts of a preferred (lower half of the
/// range) or other (upper half) replica.
fn election_bias(settings: &RaftSettings, preferred: bool) -> RaftSettings {
    let mut biased = settings.clone();
    let (min, max) = (settings.election_timeout_min_ms, settings.election_timeout_max_ms);
    let mid = min + (max - min) / 2;
    if mid > min && mid < max {
        if preferred {
            biased.election_timeout_max_ms = mid;
        } else {
            biased.election_timeout_min_ms = mid;
        }
    }
    biased
}

/// Starts this node's replica of `start.participant.shard` (restoring what
/// the disk holds) and its front; the shard's preferred node initialises a
/// brand-new group. Must run inside an actix system.
pub async fn start_group(
    start: GroupStart,
    disk: SharedDisk,
    transport: Arc<dyn Transport>,
    recorder: Arc<dyn ReplicaRecorder>,
    decisions: Arc<dyn DecisionSource>,
) -> Result<ShardGroup, ParticipantError> {
    let GroupStart { replica, rebuilt, participant, members, raft: settings, max_frame_bytes, preferred } = start;
    participant.validate()?;
    let shard = participant.shard;
    let failed = |reason: String| ParticipantError::Replication { shard, reason };
    let prefix = keyspace_prefix(shard);
    let config = paytx_raft::openraft_config(&election_bias(&settings, preferred), &format!("paytx-{shard}"))
        .map_err(|e| failed(e.to_string()))?;
    let log_store = ShardLogStore::with_prefix(disk.clone(), &prefix);
    let state_machine = ShardStateMachine::open(&participant, disk, format!("{prefix}raft-snapshot"), preferred)
        .map_err(|e| failed(format!("cannot restore the shard's snapshot: {e}")))?;
    let state = state_machine.shared();
    let network = NetworkFactory::new(RaftGroup::Shard(shard), transport, recorder, max_rpc_bytes(max_frame_bytes));
    let raft = ShardRaft::new(replica, Arc::new(config), network, log_store, state_machine)
        .await
        .map_err(|e| failed(format!("raft did not start: {e}")))?;
    if preferred && !rebuilt {
        paytx_raft::initialize_if_new(&raft, &members).await.map_err(|e| failed(e.to_string()))?;
    }
    let batch_bytes = settings.batch_bytes(max_frame_bytes);
    let batch = BatchLimits {
        max_items: usize::try_from(settings.max_batch_commands).unwrap_or(usize::MAX),
        max_bytes: batch_bytes,
        max_in_flight: usize::try_from(settings.max_proposals_in_flight).unwrap_or(usize::MAX),
        // A prepare or decision per transaction in doubt here, plus waiters.
        max_queued: participant.max_prepared.saturating_mul(2).saturating_add(participant.max_waiting),
    };
    let front = ShardFront::new(
        participant,
        replica,
        raft.clone(),
        state.clone(),
        decisions,
        batch,
        settings.election_timeout_max_ms,
    )
    .start();
    Ok(ShardGroup { raft, state, front })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preferred_replica_times_out_first() {
        let settings =
            RaftSettings { election_timeout_min_ms: 400, election_timeout_max_ms: 800, ..Default::default() };
        let preferred = election_bias(&settings, true);
        let other = election_bias(&settings, false);
        assert_eq!((preferred.election_timeout_min_ms, preferred.election_timeout_max_ms), (400, 600));
        assert_eq!((other.election_timeout_min_ms, other.election_timeout_max_ms), (600, 800));
        // A range too narrow to split stays as configured (openraft needs min < max).
        let narrow = RaftSettings { election_timeout_min_ms: 400, election_timeout_max_ms: 401, ..Default::default() };
        assert_eq!(election_bias(&narrow, true), narrow);
    }
}
