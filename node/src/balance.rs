//! Leaders back where they were placed, and spread while a node is away:
//! every `BALANCE_CHECK_MS`, for each group this node leads, the target is
//! the group's preferred replica if it keeps up (`hand_over_target`), else
//! the least loaded live voter if this node leads two groups more than its
//! node (`spread_target`, counting the leaders this node's replicas see);
//! [`LeaderBalance`] hands the group over once that target has kept up
//! long enough (`paytx_raft::handover`). One hand-over at a time per node,
//! so a returning node takes its leaderships back one group after another,
//! and a proposal pause never covers two groups of one node at once.

use crate::service::NodeService;
use crate::shards::ShardHandle;
use actix::Addr;
use paytx_coordinator::driver::{HoldProposals as HoldCoordinator, ReleaseProposals as ReleaseCoordinator};
use paytx_coordinator::CoordinatorDriver;
use paytx_participants::group::front::{HoldProposals, ReleaseProposals, ShardFront};
use paytx_protocol::clock::NodeClock;
use paytx_protocol::messages::RaftGroup;
use paytx_protocol::{BoxFuture, NodeId};
use paytx_raft::handover::{hand_over, hand_over_target, spread_target, LeaderBalance, ProposalGate};
use paytx_raft::RaftSettings;
use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::Duration;

/// How often a node looks at the groups it leads.
pub const BALANCE_CHECK_MS: u64 = 500;

struct FrontGate(Addr<ShardFront>);

impl ProposalGate for FrontGate {
    fn hold(&self, max_hold_ms: u64) -> BoxFuture<bool> {
        let front = self.0.clone();
        Box::pin(async move { front.send(HoldProposals { max_hold_ms }).await.unwrap_or(false) })
    }

    fn release(&self) {
        self.0.do_send(ReleaseProposals);
    }
}

struct DriverGate(Addr<CoordinatorDriver>);

impl ProposalGate for DriverGate {
    fn hold(&self, max_hold_ms: u64) -> BoxFuture<bool> {
        let driver = self.0.clone();
        Box::pin(async move { driver.send(HoldCoordinator { max_hold_ms }).await.unwrap_or(false) })
    }

    fn release(&self) {
        self.0.do_send(ReleaseCoordinator);
    }
}

/// One group this node might hand over: which, how to reach its Raft and
/// its proposer.
enum Candidate {
    Coordinator { raft: paytx_coordinator::Raft, driver: Addr<CoordinatorDriver> },
    Shard { raft: paytx_participants::group::types::ShardRaft, front: Addr<ShardFront> },
}

impl Candidate {
    fn with_metrics<T>(&self, f: impl FnOnce(&openraft::RaftMetrics<u64, openraft::BasicNode>) -> T) -> T {
        match self {
            Candidate::Coordinator { raft, .. } => f(&raft.metrics().borrow()),
            Candidate::Shard { raft, .. } => f(&raft.metrics().borrow()),
        }
    }

    /// The group's leader as this replica knows it (a replica id).
    fn leader(&self) -> Option<u64> {
        self.with_metrics(|m| m.current_leader)
    }
}

/// Runs until the node's service is gone. `coordinator_preferred` is the
/// node that initialises the coordinator group (the lowest-numbered).
pub(crate) async fn run(
    service: Weak<NodeService>,
    settings: RaftSettings,
    coordinator_preferred: NodeId,
    peer_timeout_ms: u64,
) {
    let balance = settings.balance();
    if balance.settle_ms == 0 {
        return;
    }
    let timing = settings.hand_over_timing(peer_timeout_ms);
    let mut policy = LeaderBalance::new(balance);
    let clock = NodeClock::current();
    let started = clock.now();
    loop {
        clock.sleep(Duration::from_millis(BALANCE_CHECK_MS)).await;
        let Some(node) = service.upgrade() else {
            return;
        };
        if node.fail_stop().reason().is_some() {
            return;
        }
        let now_ms = u64::try_from((clock.now() - started).as_millis()).unwrap_or(u64::MAX);
        let mut groups: Vec<(RaftGroup, NodeId, Candidate)> = Vec::new();
        if let Some(parts) = node.coordinator() {
            let candidate = Candidate::Coordinator { raft: parts.raft, driver: parts.driver };
            groups.push((RaftGroup::Coordinator, coordinator_preferred, candidate));
        }
        for (shard, handle) in &node.participants {
            if let (ShardHandle::Replicated { front, raft, .. }, Some(preferred)) =
                (handle, node.shard_map.node_of(*shard))
            {
                let candidate = Candidate::Shard { raft: raft.clone(), front: front.clone() };
                groups.push((RaftGroup::Shard(*shard), preferred, candidate));
            }
        }
        let transport = node.transport.clone();
        let metrics = node.metrics().clone();
        drop(node); // a hand-over must not keep a stopping node alive
                    // Groups led per node, as this node's replicas see them.
        let mut leaders: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (_, _, candidate) in &groups {
            if let Some(leader) = candidate.leader() {
                *leaders.entry(paytx_protocol::replica::node_of(leader)).or_default() += 1;
            }
        }
        for (group, preferred, candidate) in groups {
            // The preferred replica first; if it cannot take the group, the
            // least loaded live voter (`spread_target`).
            let target = candidate.with_metrics(|m| {
                hand_over_target(m, preferred, balance.max_lag_entries)
                    .or_else(|| spread_target(m, preferred, &leaders, balance.max_lag_entries))
            });
            let Some(target) = policy.poll(group, now_ms, target) else {
                continue;
            };
            tracing::info!(%group, target, "handing the leadership to the group's preferred replica");
            let result = match &candidate {
                Candidate::Coordinator { raft, driver } => {
                    hand_over(raft, group, target, &DriverGate(driver.clone()), transport.as_ref(), timing).await
                }
                Candidate::Shard { raft, front } => {
                    hand_over(raft, group, target, &FrontGate(front.clone()), transport.as_ref(), timing).await
                }
            };
            match &result {
                Ok(()) => tracing::info!(%group, target, "leadership handed over"),
                Err(error) => tracing::info!(%group, target, %error, "hand-over stopped; Raft settles who leads"),
            }
            metrics.observe_hand_over(result.is_ok());
            break; // one hand-over per check
        }
    }
}
