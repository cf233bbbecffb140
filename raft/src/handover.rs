//! Handing a group's leadership to a chosen replica, and choosing when.
//!
//! Leaders are placed: every group has a *preferred* node (a shard's entry
//! in the shard map, the coordinator's lowest-numbered node), whose replica
//! initialises the group and times out first, so leaders start spread over
//! the nodes. A node that goes down loses its leaderships to the others;
//! when it returns nothing in Raft gives them back, and one node would go
//! on carrying most groups' writes. This module gives them back.
//!
//! openraft 0.9.25 has no leader transfer (no `TimeoutNow`; 0.10 adds
//! one), and a replica that merely starts an election is refused by the
//! other voters' leader lease (`Engine::handle_vote_req`: a committed vote
//! refreshed less than `election_timeout_max` ago refuses every candidate).
//! What it does have is enough, in this order ([`hand_over`]):
//!
//! 1. The leader *holds its proposals* ([`ProposalGate`]) and waits until
//!    none is in flight: from then on its log does not grow.
//! 2. It waits until the target's matched index is its last log index.
//! 3. It asks the target to campaign ([`PeerRequest::Campaign`]): the
//!    target starts an election in term `t + 1`. The leader and the third
//!    voter refuse it (their lease holds), but the target now has a higher
//!    vote than the leader's, and refuses the leader's next heartbeat with
//!    it.
//! 4. The leader sends that heartbeat at once (`trigger().heartbeat()`); the
//!    refusal makes it adopt the target's uncommitted vote and step down.
//! 5. It asks the target to campaign again (term `t + 2`). The old leader's
//!    vote is no longer a committed one, so no lease applies, and the
//!    target's log is as long as its own: it grants, and the target wins
//!    with two of three votes.
//! 6. The hold is released. What queued meanwhile fails over to the new
//!    leader the way any leader change does (the coordinator re-sends;
//!    clients retry with their idempotency keys).
//!
//! Every step is bounded, and any failure releases the hold and leaves an
//! ordinary Raft election to settle who leads. Safety never depends on it:
//! an election at any time, by any replica, is safe in Raft; this only
//! chooses when and who stands, so that the winner is the target.
//!
//! Who: the preferred replica ([`hand_over_target`]); while it cannot take
//! the group (down, lagging), the least loaded live voter, if the leader's
//! node leads two groups more than that voter's ([`spread_target`]), so
//! that a node lost for a while does not leave its groups piled on one of
//! the others.
//!
//! When to try is [`LeaderBalance`]'s decision (pure: the caller gives the
//! time and what the metrics show): the target must be a voter that has
//! kept within `max_lag_entries` of the leader for `settle_ms` (a node that
//! just returned, or one that flaps, is not handed anything), and a group
//! is tried again only after `retry_ms`.

use crate::{NodeId, PaytxRaftConfig};
use openraft::{BasicNode, Raft, RaftMetrics, ServerState};
use paytx_protocol::messages::RaftGroup;
use paytx_protocol::replica::{node_of, ReplicaId};
use paytx_protocol::{BoxFuture, PeerRequest, PeerResponse, Transport};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::oneshot;

/// How the leader stops and restarts proposing on one group (the
/// coordinator's driver, a shard's front).
pub trait ProposalGate: Send + Sync {
    /// Stops new proposals for at most `max_hold_ms` (then they resume on
    /// their own); resolves `true` once none is in flight, `false` if the
    /// hold ended first.
    fn hold(&self, max_hold_ms: u64) -> BoxFuture<bool>;
    /// Resumes proposing (a no-op when nothing is held).
    fn release(&self);
}

/// The proposer's side of a hold: whether proposals are held, and who
/// waits for the ones in flight to finish. The proposer checks
/// [`Hold::is_held`] before it proposes and calls [`Hold::on_finished`]
/// whenever a proposal completes.
#[derive(Debug, Default)]
pub struct Hold {
    /// Bumped by every hold, so a stale timer never ends a newer hold.
    generation: u64,
    held: bool,
    drained: Vec<oneshot::Sender<bool>>,
}

impl Hold {
    /// Starts a hold; the receiver learns when nothing is in flight. The
    /// generation names this hold for [`Hold::end`].
    pub fn begin(&mut self, in_flight: usize) -> (u64, oneshot::Receiver<bool>) {
        // A newer hold replaces an older one: its waiter hears `false`.
        self.end(None);
        self.generation += 1;
        self.held = true;
        let (tx, rx) = oneshot::channel();
        if in_flight == 0 {
            let _ = tx.send(true);
        } else {
            self.drained.push(tx);
        }
        (self.generation, rx)
    }

    pub fn is_held(&self) -> bool {
        self.held
    }

    /// A proposal completed; `in_flight` are still outstanding.
    pub fn on_finished(&mut self, in_flight: usize) {
        if self.held && in_flight == 0 {
            for waiter in self.drained.drain(..) {
                let _ = waiter.send(true);
            }
        }
    }

    /// Ends the hold named `generation` (`None`: whichever holds). `true`
    /// when a hold ended, and the proposer should propose what queued.
    pub fn end(&mut self, generation: Option<u64>) -> bool {
        if !self.held || generation.is_some_and(|g| g != self.generation) {
            return false;
        }
        self.held = false;
        for waiter in self.drained.drain(..) {
            let _ = waiter.send(false);
        }
        true
    }
}

/// When [`LeaderBalance`] hands a group over (`[raft]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceSettings {
    /// How long the preferred replica must have kept up before it is given
    /// the leadership; 0 turns balancing off.
    pub settle_ms: u64,
    /// Least time between two hand-overs of one group.
    pub retry_ms: u64,
    /// Most entries the preferred replica may lag and still count as
    /// keeping up.
    pub max_lag_entries: u64,
}

/// The preferred node's replica that this leader could hand `metrics`'
/// group to now: a voter of every configuration (not mid-change), on
/// `preferred` (not this node), within `max_lag_entries` of the leader's
/// last log index. `None` when this replica does not lead, or no such
/// replica exists.
pub fn hand_over_target(
    metrics: &RaftMetrics<NodeId, BasicNode>,
    preferred: paytx_protocol::NodeId,
    max_lag_entries: u64,
) -> Option<ReplicaId> {
    let voters = voters_to_hand_to(metrics, preferred)?;
    let target = voters.iter().copied().find(|voter| node_of(*voter) == preferred)?;
    keeps_up(metrics, target, max_lag_entries).then_some(target)
}

/// The voters of the group this replica leads, when it may hand the group
/// over at all: it leads, its node is not `preferred` (a group stays on its
/// preferred node), and no membership change (a rebuild) is under way.
fn voters_to_hand_to(
    metrics: &RaftMetrics<NodeId, BasicNode>,
    preferred: paytx_protocol::NodeId,
) -> Option<&std::collections::BTreeSet<ReplicaId>> {
    let leading = metrics.state == ServerState::Leader && metrics.current_leader == Some(metrics.id);
    if !leading || node_of(metrics.id) == preferred {
        return None;
    }
    match metrics.membership_config.membership().get_joint_config().as_slice() {
        [voters] => Some(voters),
        _ => None,
    }
}

/// `voter`'s matched index is within `max_lag_entries` of the leader's last
/// log index.
fn keeps_up(metrics: &RaftMetrics<NodeId, BasicNode>, voter: ReplicaId, max_lag_entries: u64) -> bool {
    let last = metrics.last_log_index.unwrap_or(0);
    let matched = metrics.replication.as_ref().and_then(|r| r.get(&voter)).and_then(|m| m.as_ref());
    matched.is_some_and(|matched| last.saturating_sub(matched.index) <= max_lag_entries)
}

/// Where a leader whose group's preferred replica cannot take the group
/// (down, behind, or this node) may still hand it, so that leaderships
/// spread over the live nodes: the voter, keeping up, on the node leading
/// the fewest groups by `leaders` (groups led per node, as this node's
/// replicas see them), if this node leads at least two more than it. A
/// group stays on its preferred node (`None` when this node is it), and
/// the difference of two makes every hand-over lower the spread, so the
/// nodes never pass groups back and forth.
pub fn spread_target(
    metrics: &RaftMetrics<NodeId, BasicNode>,
    preferred: paytx_protocol::NodeId,
    leaders: &BTreeMap<paytx_protocol::NodeId, usize>,
    max_lag_entries: u64,
) -> Option<ReplicaId> {
    let voters = voters_to_hand_to(metrics, preferred)?;
    let me = node_of(metrics.id);
    let mine = leaders.get(&me).copied().unwrap_or(0);
    let led_by = |voter: &ReplicaId| leaders.get(&node_of(*voter)).copied().unwrap_or(0);
    voters
        .iter()
        .filter(|voter| node_of(**voter) != me && keeps_up(metrics, **voter, max_lag_entries))
        // Fewest groups first; the lower node id breaks ties (the same
        // choice on every node that sees the same counts).
        .min_by_key(|voter| (led_by(voter), node_of(**voter)))
        .filter(|voter| mine >= led_by(voter).saturating_add(2))
        .copied()
}

/// Decides when to hand each group to its preferred replica (see the
/// module doc). Pure: no clock, no I/O.
#[derive(Debug)]
pub struct LeaderBalance {
    settings: BalanceSettings,
    /// Since when (ms) each group's target has kept up, and which target.
    keeping_up: BTreeMap<RaftGroup, (ReplicaId, u64)>,
    /// When (ms) each group may be handed over again.
    not_before_ms: BTreeMap<RaftGroup, u64>,
}

impl LeaderBalance {
    pub fn new(settings: BalanceSettings) -> Self {
        LeaderBalance { settings, keeping_up: BTreeMap::new(), not_before_ms: BTreeMap::new() }
    }

    /// Called for every group this node may lead, with the time and
    /// [`hand_over_target`]'s answer; `Some(target)` when the group should
    /// be handed over now (the caller then runs [`hand_over`]).
    pub fn poll(&mut self, group: RaftGroup, now_ms: u64, target: Option<ReplicaId>) -> Option<ReplicaId> {
        if self.settings.settle_ms == 0 {
            return None;
        }
        let Some(target) = target else {
            self.keeping_up.remove(&group);
            return None;
        };
        let since = match self.keeping_up.get(&group) {
            Some((seen, since)) if *seen == target => *since,
            _ => {
                self.keeping_up.insert(group, (target, now_ms));
                now_ms
            }
        };
        let settled = now_ms.saturating_sub(since) >= self.settings.settle_ms;
        let due = self.not_before_ms.get(&group).is_none_or(|at| now_ms >= *at);
        if !(settled && due) {
            return None;
        }
        self.not_before_ms.insert(group, now_ms.saturating_add(self.settings.retry_ms));
        self.keeping_up.remove(&group);
        Some(target)
    }
}

/// Bounds of one [`hand_over`]. Each step has `step_ms`; the whole hold
/// lasts at most `max_hold_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOverTiming {
    pub max_hold_ms: u64,
    pub step_ms: u64,
    pub peer_timeout_ms: u64,
}

/// Why a hand-over stopped short. Each leaves Raft to settle who leads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandOverError {
    #[error("proposals still in flight when the hold ended")]
    NotDrained,
    #[error("replica {target} did not reach the leader's last log index {last_log_index} in time")]
    NotCaughtUp { target: ReplicaId, last_log_index: u64 },
    #[error("this replica no longer leads the group")]
    NotLeader,
    #[error("replica {target} did not campaign: {reason}")]
    CampaignRefused { target: ReplicaId, reason: String },
    #[error("the leader did not step down for replica {target}'s higher term in time")]
    LeaderKept { target: ReplicaId },
    #[error("replica {target} did not win the election; the leader is {leader:?}")]
    Lost { target: ReplicaId, leader: Option<ReplicaId> },
}

/// Hands `group`'s leadership from this replica to `target` (the steps of
/// the module doc). Holds `gate` throughout and always releases it.
pub async fn hand_over<C: PaytxRaftConfig>(
    raft: &Raft<C>,
    group: RaftGroup,
    target: ReplicaId,
    gate: &dyn ProposalGate,
    transport: &dyn Transport,
    timing: HandOverTiming,
) -> Result<(), HandOverError> {
    let result = hand_over_held(raft, group, target, gate, transport, timing).await;
    gate.release();
    result
}

async fn hand_over_held<C: PaytxRaftConfig>(
    raft: &Raft<C>,
    group: RaftGroup,
    target: ReplicaId,
    gate: &dyn ProposalGate,
    transport: &dyn Transport,
    timing: HandOverTiming,
) -> Result<(), HandOverError> {
    let step = Some(Duration::from_millis(timing.step_ms));
    // 1. No proposal in flight: the log stops growing.
    if !gate.hold(timing.max_hold_ms).await {
        return Err(HandOverError::NotDrained);
    }
    // 2. The target holds the whole log.
    let leading = |m: &RaftMetrics<NodeId, BasicNode>| m.state == ServerState::Leader;
    let caught_up = raft
        .wait(step)
        .metrics(
            |m| {
                let matched = m.replication.as_ref().and_then(|r| r.get(&target).cloned().flatten());
                !leading(m) || matched.map(|l| l.index) == m.last_log_index
            },
            "target caught up",
        )
        .await;
    let last_log_index = {
        let metrics = raft.metrics().borrow().clone();
        if !leading(&metrics) {
            return Err(HandOverError::NotLeader);
        }
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        if caught_up.is_err() {
            return Err(HandOverError::NotCaughtUp { target, last_log_index });
        }
        last_log_index
    };
    // 3. The target's first campaign: refused, but its vote is now higher.
    campaign(transport, group, target, last_log_index, timing.peer_timeout_ms).await?;
    // 4. Our next heartbeat meets that vote, and we step down.
    let _ = raft.trigger().heartbeat().await;
    if raft.wait(step).metrics(|m| !leading(m), "stepped down").await.is_err() {
        return Err(HandOverError::LeaderKept { target });
    }
    // 5. The second campaign: our vote is the target's, uncommitted; we grant.
    campaign(transport, group, target, last_log_index, timing.peer_timeout_ms).await?;
    let elected = raft.wait(step).metrics(|m| m.current_leader.is_some(), "a new leader").await;
    let leader = elected.ok().and_then(|m| m.current_leader);
    if leader == Some(target) {
        Ok(())
    } else {
        Err(HandOverError::Lost { target, leader })
    }
}

async fn campaign(
    transport: &dyn Transport,
    group: RaftGroup,
    target: ReplicaId,
    last_log_index: u64,
    timeout_ms: u64,
) -> Result<(), HandOverError> {
    let request = PeerRequest::Campaign { group, replica: target, last_log_index };
    match transport.call(node_of(target), request, timeout_ms).await {
        Ok(PeerResponse::Acked) => Ok(()),
        Ok(PeerResponse::CampaignRefused { reason }) => Err(HandOverError::CampaignRefused { target, reason }),
        Ok(other) => Err(HandOverError::CampaignRefused { target, reason: format!("{other:?}") }),
        Err(e) => Err(HandOverError::CampaignRefused { target, reason: e.to_string() }),
    }
}

/// The target's side of [`PeerRequest::Campaign`]: start an election, if
/// this replica is `replica` and its log reaches `last_log_index` (else it
/// could not win, and would only depose the leader).
pub async fn answer_campaign<C: PaytxRaftConfig>(
    raft: &Raft<C>,
    replica: ReplicaId,
    last_log_index: u64,
) -> Result<(), String> {
    let (me, mine) = {
        let metrics = raft.metrics().borrow().clone();
        (metrics.id, metrics.last_log_index.unwrap_or(0))
    };
    if me != replica {
        return Err(format!("this node's replica is {me}, not {replica}"));
    }
    if mine < last_log_index {
        return Err(format!("log ends at {mine}, before the leader's {last_log_index}"));
    }
    raft.trigger().elect().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use paytx_protocol::replica::replica_id;
    use paytx_protocol::ShardId;

    fn settings() -> BalanceSettings {
        BalanceSettings { settle_ms: 1_000, retry_ms: 5_000, max_lag_entries: 8 }
    }

    fn group() -> RaftGroup {
        RaftGroup::Shard(ShardId { kind: paytx_protocol::EntityKind::Account, index: 1 })
    }

    #[test]
    fn a_target_is_handed_the_group_only_after_keeping_up_for_the_settle_time() {
        let mut balance = LeaderBalance::new(settings());
        assert_eq!(balance.poll(group(), 0, Some(2)), None, "first seen keeping up");
        assert_eq!(balance.poll(group(), 999, Some(2)), None, "not settled yet");
        assert_eq!(balance.poll(group(), 1_000, Some(2)), Some(2));
        // Tried: not again before the retry time, however well it keeps up.
        assert_eq!(balance.poll(group(), 2_000, Some(2)), None);
        assert_eq!(balance.poll(group(), 5_999, Some(2)), None);
        assert_eq!(balance.poll(group(), 6_000, Some(2)), Some(2));
    }

    #[test]
    fn falling_behind_or_a_new_identity_starts_the_settle_time_again() {
        let mut balance = LeaderBalance::new(settings());
        assert_eq!(balance.poll(group(), 0, Some(2)), None);
        assert_eq!(balance.poll(group(), 600, None), None, "fell behind");
        assert_eq!(balance.poll(group(), 1_200, Some(2)), None, "keeping up again since 1,200");
        assert_eq!(balance.poll(group(), 2_199, Some(2)), None);
        // The node was rebuilt: a new replica id must settle on its own.
        let reborn = replica_id(2, 1);
        assert_eq!(balance.poll(group(), 2_200, Some(reborn)), None);
        assert_eq!(balance.poll(group(), 3_200, Some(reborn)), Some(reborn));
        // Groups are independent.
        let other = RaftGroup::Coordinator;
        assert_eq!(balance.poll(other, 3_200, Some(3)), None);
    }

    #[test]
    fn a_zero_settle_time_turns_balancing_off() {
        let mut balance = LeaderBalance::new(BalanceSettings { settle_ms: 0, ..settings() });
        assert!((0..10_000).step_by(500).all(|t| balance.poll(group(), t, Some(2)).is_none()));
    }

    fn leader_metrics(
        me: ReplicaId,
        voters: &[ReplicaId],
        last: u64,
        matched: &[(ReplicaId, u64)],
    ) -> RaftMetrics<NodeId, BasicNode> {
        let mut metrics = RaftMetrics::new_initial(me);
        metrics.state = ServerState::Leader;
        metrics.current_leader = Some(me);
        metrics.last_log_index = Some(last);
        let nodes: BTreeMap<NodeId, BasicNode> = voters.iter().map(|v| (*v, BasicNode::default())).collect();
        let membership = openraft::Membership::new(vec![voters.iter().copied().collect()], nodes);
        metrics.membership_config = std::sync::Arc::new(openraft::StoredMembership::new(
            Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, me), 1)),
            membership,
        ));
        metrics.replication = Some(
            matched
                .iter()
                .map(|(r, i)| (*r, Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, me), *i))))
                .collect(),
        );
        metrics
    }

    #[test]
    fn the_target_is_the_preferred_nodes_voter_when_it_keeps_up() {
        let metrics = leader_metrics(1, &[1, 2, 3], 100, &[(2, 95), (3, 10)]);
        assert_eq!(hand_over_target(&metrics, 2, 8), Some(2));
        assert_eq!(hand_over_target(&metrics, 3, 8), None, "node 3 lags 90 entries");
        assert_eq!(hand_over_target(&metrics, 1, 8), None, "this node is the preferred one");
        assert_eq!(hand_over_target(&metrics, 4, 8), None, "no replica on node 4");
        let mut follower = metrics.clone();
        follower.state = ServerState::Follower;
        follower.current_leader = Some(2);
        assert_eq!(hand_over_target(&follower, 2, 8), None, "only a leader hands over");
        // A rebuilt node's new replica id is the one handed the group.
        let reborn = replica_id(2, 1);
        let metrics = leader_metrics(1, &[1, reborn, 3], 100, &[(reborn, 100), (3, 100)]);
        assert_eq!(hand_over_target(&metrics, 2, 0), Some(reborn));
    }

    #[test]
    fn a_group_spreads_to_the_least_loaded_live_voter_only_when_it_lowers_the_spread() {
        // Node 2, the preferred node of the group, is down: no replication
        // entry keeps up for it.
        let metrics = leader_metrics(1, &[1, 2, 3], 100, &[(3, 99)]);
        let leaders = |counts: &[(u64, usize)]| counts.iter().copied().collect::<BTreeMap<_, _>>();
        assert_eq!(spread_target(&metrics, 2, &leaders(&[(1, 3), (3, 1)]), 8), Some(3), "3 against 1");
        assert_eq!(spread_target(&metrics, 2, &leaders(&[(1, 2), (3, 1)]), 8), None, "2 against 1: moving only swaps");
        assert_eq!(spread_target(&metrics, 2, &leaders(&[(1, 3)]), 8), Some(3), "node 3 leads nothing");
        // The least loaded voter must keep up.
        let behind = leader_metrics(1, &[1, 2, 3], 100, &[(3, 50)]);
        assert_eq!(spread_target(&behind, 2, &leaders(&[(1, 4), (3, 0)]), 8), None);
        // A group on its preferred node stays there, however loaded.
        assert_eq!(spread_target(&metrics, 1, &leaders(&[(1, 5), (3, 0)]), 8), None);
        // Only the leader hands over.
        let mut follower = metrics.clone();
        follower.state = ServerState::Follower;
        assert_eq!(spread_target(&follower, 2, &leaders(&[(1, 5), (3, 0)]), 8), None);
        // Ties go to the lower node id.
        let five = leader_metrics(1, &[1, 3, 4, 5], 100, &[(3, 100), (4, 100), (5, 100)]);
        assert_eq!(spread_target(&five, 2, &leaders(&[(1, 4), (3, 1), (4, 1), (5, 2)]), 8), Some(3));
    }

    #[test]
    fn a_hold_waits_for_the_proposals_in_flight_and_a_stale_end_is_ignored() {
        let mut hold = Hold::default();
        let (first, mut drained) = hold.begin(2);
        assert!(hold.is_held());
        hold.on_finished(1);
        assert!(drained.try_recv().is_err(), "one still in flight");
        hold.on_finished(0);
        assert_eq!(drained.try_recv(), Ok(true));
        // A newer hold: the older one's timer must not end it.
        let (second, _rx) = hold.begin(0);
        assert!(!hold.end(Some(first)), "stale");
        assert!(hold.is_held());
        assert!(hold.end(Some(second)));
        assert!(!hold.is_held());
        assert!(!hold.end(None), "nothing held");
        // Ending before the proposals drain tells the waiter `false`.
        let (_, mut rx) = hold.begin(1);
        assert!(hold.end(None));
        assert_eq!(rx.try_recv(), Ok(false));
    }
}
