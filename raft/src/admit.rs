//! Rebuilt replicas: a node that lost its disk rejoins each group under a
//! new replica id, as a learner first, and replaces its old id as a voter
//! only once caught up (see `paytx_protocol::replica` for why a new id).
//!
//! Two halves:
//!
//! * the leader's side, [`admission_state`] and [`admit`]: add the new id
//!   as a learner, wait until its log matches the membership entry that
//!   added it (by snapshot if the log was purged), then replace the voters:
//!   the old id of the same node out, the new one in (openraft's joint
//!   consensus; the old id is gone, so the other voters carry both
//!   configurations);
//! * the rebuilt node's side, [`join`]: ask the group's nodes, following
//!   leader hints, until the local replica sees itself a voter — or, if
//!   the local replica itself comes to lead a configuration that still
//!   lists its node's old id (the leader that started the swap was lost in
//!   the middle of the joint consensus, and this replica, a voter of its
//!   second half, won the election), finish the swap itself: nobody else
//!   would (a simulated run, seed 110 at `--steps 100`, found it: the
//!   group stayed joint, its old id dead, for good).

use crate::{NodeId, PaytxRaftConfig};
use openraft::{BasicNode, ChangeMembers, Raft, RaftMetrics, ServerState};
use paytx_protocol::clock::NodeClock;
use paytx_protocol::messages::{Admission, RaftGroup};
use paytx_protocol::replica::{node_of, ReplicaId};
use paytx_protocol::{PeerRequest, PeerResponse, Transport};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// How often the leader looks at a learner's progress.
pub const CATCH_UP_POLL_MS: u64 = 100;
/// Longest the leader waits for a learner to catch up before giving up
/// (the rebuilt node asks again, and the admission starts over).
pub const MAX_CATCH_UP_MS: u64 = 600_000;
/// Pause between a rebuilt node's admission requests.
pub const JOIN_RETRY_MS: u64 = 500;
/// A joining node logs its progress every this many requests.
const JOIN_LOG_EVERY: u64 = 20;

/// `replica` is a voter of every configuration of the membership (not in
/// a joint configuration that still lacks it).
pub fn is_voter(metrics: &RaftMetrics<NodeId, BasicNode>, replica: ReplicaId) -> bool {
    let configs = metrics.membership_config.membership().get_joint_config();
    !configs.is_empty() && configs.iter().all(|voters| voters.contains(&replica))
}

/// `replica` is the only voter of its node, in a uniform configuration:
/// the admission is complete.
fn admitted(metrics: &RaftMetrics<NodeId, BasicNode>, replica: ReplicaId) -> bool {
    let membership = metrics.membership_config.membership();
    let uniform = membership.get_joint_config().len() == 1;
    let alone = membership.voter_ids().filter(|v| node_of(*v) == node_of(replica)).all(|v| v == replica);
    uniform && alone && is_voter(metrics, replica)
}

/// What the leader's replica answers an admission request with, before
/// starting any work: `None` means "this leader must start (or is running)
/// the admission".
pub fn admission_state(metrics: &RaftMetrics<NodeId, BasicNode>, replica: ReplicaId) -> Option<Admission> {
    let leading = metrics.state == ServerState::Leader && metrics.current_leader == Some(metrics.id);
    if !leading {
        return Some(Admission::NotLeader { leader_hint: metrics.current_leader.map(node_of) });
    }
    if admitted(metrics, replica) {
        return Some(Admission::Voter);
    }
    None
}

/// The leader's side: learner, catch-up, then the voter swap. Returns once
/// the new membership is committed, or with why not.
pub async fn admit<C: PaytxRaftConfig>(raft: &Raft<C>, replica: ReplicaId, addr: String) -> Result<(), String> {
    assert!(node_of(replica) != node_of(raft.metrics().borrow().id), "a leader never admits a replica of its own node");
    let added = raft
        .add_learner(replica, BasicNode::new(addr), false)
        .await
        .map_err(|e| format!("cannot add {replica} as a learner: {e}"))?;
    let needed = added.log_id.index;
    let mut waited_ms = 0;
    loop {
        let caught_up = {
            let metrics = raft.metrics().borrow().clone();
            if metrics.state != ServerState::Leader {
                return Err("lost leadership while the learner caught up".into());
            }
            let matched = metrics.replication.as_ref().and_then(|r| r.get(&replica).cloned().flatten());
            matched.is_some_and(|log_id| log_id.index >= needed)
        };
        if caught_up {
            break;
        }
        if waited_ms >= MAX_CATCH_UP_MS {
            return Err(format!("learner {replica} did not catch up within {MAX_CATCH_UP_MS} ms"));
        }
        NodeClock::current().sleep(Duration::from_millis(CATCH_UP_POLL_MS)).await;
        waited_ms += CATCH_UP_POLL_MS;
    }
    let voters = replaced_voters(&raft.metrics().borrow().clone(), replica);
    raft.change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), false)
        .await
        .map_err(|e| format!("cannot make {replica} a voter: {e}"))?;
    tracing::info!(replica, ?voters, "rebuilt replica admitted as a voter");
    Ok(())
}

/// The voters once `replica` has replaced every other id of its node: the
/// membership's voters (of every configuration of a joint one) without
/// them, with `replica`.
fn replaced_voters(metrics: &RaftMetrics<NodeId, BasicNode>, replica: ReplicaId) -> BTreeSet<NodeId> {
    let membership = metrics.membership_config.membership();
    membership.voter_ids().filter(|v| node_of(*v) != node_of(replica)).chain(std::iter::once(replica)).collect()
}

/// The rebuilt node's side: ask `group`'s nodes (`candidates`, this node
/// excluded) to admit `me`, following leader hints, until the local
/// replica sees itself a voter. Ends early if the local replica shuts down.
pub async fn join<C: PaytxRaftConfig>(
    raft: Raft<C>,
    group: RaftGroup,
    me: ReplicaId,
    addr: String,
    candidates: Vec<NodeId>,
    transport: Arc<dyn Transport>,
    timeout_ms: u64,
) {
    let others: Vec<NodeId> = candidates.into_iter().filter(|n| *n != node_of(me)).collect();
    assert!(!others.is_empty(), "a replicated group has members on other nodes");
    let mut next = 0usize;
    let mut hint: Option<NodeId> = None;
    let mut attempts: u64 = 0;
    loop {
        let leading_unfinished = {
            let metrics = raft.metrics().borrow().clone();
            if metrics.state == ServerState::Shutdown {
                return;
            }
            if is_voter(&metrics, me) {
                tracing::info!(%group, replica = me, attempts, "rejoined the group as a voter");
                return;
            }
            let leading = metrics.state == ServerState::Leader && metrics.current_leader == Some(me);
            leading.then(|| replaced_voters(&metrics, me))
        };
        if let Some(voters) = leading_unfinished {
            match raft.change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), false).await {
                Ok(_) => tracing::info!(%group, replica = me, ?voters, "led the group: finished its own admission"),
                Err(error) => tracing::info!(%group, replica = me, %error, "could not finish its own admission yet"),
            }
            NodeClock::current().sleep(Duration::from_millis(JOIN_RETRY_MS)).await;
            continue;
        }
        let target = match hint.take().filter(|h| *h != node_of(me)) {
            Some(leader) => leader,
            None => {
                next = (next + 1) % others.len();
                others[next]
            }
        };
        attempts += 1;
        let request = PeerRequest::AdmitReplica { group, replica: me, addr: addr.clone() };
        let answer = transport.call(target, request, timeout_ms).await;
        match &answer {
            Ok(PeerResponse::Admission(Admission::NotLeader { leader_hint })) => hint = *leader_hint,
            Ok(PeerResponse::Admission(Admission::InProgress | Admission::Voter)) => hint = Some(target),
            _ => {}
        }
        if attempts % JOIN_LOG_EVERY == 1 {
            tracing::info!(%group, replica = me, target, ?answer, "asking to be admitted after a rebuild");
        }
        NodeClock::current().sleep(Duration::from_millis(JOIN_RETRY_MS)).await;
    }
}
