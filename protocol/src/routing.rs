//! Finding a shard's leader: where every request for a shard is sent.
//!
//! A single-copy shard has one node. A replicated shard is a Raft group
//! whose leader moves; only the leader answers, every other replica says
//! `NotShardLeader` and names the leader it knows. [`ShardLeaders`]
//! remembers the last leader seen per shard, and [`call_shard`] tries it
//! first, then follows hints and the other replicas, a bounded number of
//! hops, so a failover costs the first request after it one redirect.

use crate::ids::{NodeId, ShardId};
use crate::messages::{PeerRequest, PeerResponse, Response};
use crate::ops::ShardMap;
use crate::transport::Transport;
use crate::RequestError;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The last leader seen of every shard.
#[derive(Debug)]
pub struct ShardLeaders {
    /// Every shard's replicas, computed once from the map: asked on every
    /// prepare, decision and forwarded read.
    replicas: BTreeMap<ShardId, Vec<NodeId>>,
    known: Mutex<BTreeMap<ShardId, NodeId>>,
}

impl ShardLeaders {
    pub fn new(map: ShardMap) -> Self {
        let replicas = map.shards().map(|shard| (shard, map.replicas_of(shard))).collect();
        ShardLeaders { replicas, known: Mutex::new(BTreeMap::new()) }
    }

    fn replicas_of(&self, shard: ShardId) -> &[NodeId] {
        self.replicas.get(&shard).map(Vec::as_slice).unwrap_or(&[])
    }

    fn known(&self) -> std::sync::MutexGuard<'_, BTreeMap<ShardId, NodeId>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The nodes to try for `shard`, in order: the last leader seen, then
    /// every replica (the preferred node first).
    pub fn candidates(&self, shard: ShardId) -> Vec<NodeId> {
        let replicas = self.replicas_of(shard);
        let leader = self.known().get(&shard).copied().filter(|l| replicas.contains(l));
        leader.into_iter().chain(replicas.iter().copied().filter(|node| Some(*node) != leader)).collect()
    }

    /// `leader` answered for `shard` (or was named as its leader).
    pub fn learned(&self, shard: ShardId, leader: NodeId) {
        if self.replicas_of(shard).contains(&leader) {
            self.known().insert(shard, leader);
        }
    }

    /// `node` did not answer for `shard`: forget it as the leader.
    pub fn failed(&self, shard: ShardId, node: NodeId) {
        let mut known = self.known();
        if known.get(&shard) == Some(&node) {
            known.remove(&shard);
        }
    }
}

/// `Some(hint)` when `reply` says its node does not lead `shard` (directly,
/// or inside a forwarded answer).
pub fn not_leader(reply: &PeerResponse, shard: ShardId) -> Option<Option<NodeId>> {
    match reply {
        PeerResponse::Error(RequestError::NotShardLeader { shard: s, leader_hint })
        | PeerResponse::Forwarded(Response::Error(RequestError::NotShardLeader { shard: s, leader_hint }))
            if *s == shard =>
        {
            Some(*leader_hint)
        }
        _ => None,
    }
}

/// Sends `request` to the leader of `shard`: the last leader seen first,
/// then the leader a refusal names, then the other replicas — at most
/// `2 × replicas` attempts. The answer of the first node that does not
/// refuse is returned (and its node remembered as the leader); `Err` when
/// none answered, with the last failure.
pub async fn call_shard(
    transport: &dyn Transport,
    leaders: &ShardLeaders,
    shard: ShardId,
    request: &PeerRequest,
    timeout_ms: u64,
) -> Result<PeerResponse, String> {
    let mut queue: std::collections::VecDeque<NodeId> = leaders.candidates(shard).into();
    if queue.is_empty() {
        return Err(format!("shard {shard} is not in the shard map"));
    }
    let max_attempts = queue.len().saturating_mul(2);
    let mut last = format!("no replica of shard {shard} answered");
    let mut tried_hints: Vec<NodeId> = Vec::new();
    for _ in 0..max_attempts {
        let Some(node) = queue.pop_front() else {
            break;
        };
        match transport.call(node, request.clone(), timeout_ms).await {
            Ok(reply) => match not_leader(&reply, shard) {
                None => {
                    leaders.learned(shard, node);
                    return Ok(reply);
                }
                Some(hint) => {
                    leaders.failed(shard, node);
                    last = format!("node {node} does not lead shard {shard} (hint {hint:?})");
                    if let Some(hint) = hint.filter(|h| *h != node && !tried_hints.contains(h)) {
                        tried_hints.push(hint);
                        queue.push_front(hint);
                    }
                }
            },
            Err(e) => {
                leaders.failed(shard, node);
                last = e.to_string();
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::EntityKind;

    fn shard(index: u32) -> ShardId {
        ShardId { kind: EntityKind::Account, index }
    }

    #[test]
    fn the_last_leader_seen_is_tried_first_then_every_replica() {
        let leaders = ShardLeaders::new(ShardMap::one_shard_per_node(&[1, 2, 3]).with_replicas(3));
        assert_eq!(leaders.candidates(shard(1)), vec![2, 3, 1], "preferred node first, then the ring");
        leaders.learned(shard(1), 3);
        assert_eq!(leaders.candidates(shard(1)), vec![3, 2, 1]);
        leaders.failed(shard(1), 3);
        assert_eq!(leaders.candidates(shard(1)), vec![2, 3, 1]);
        // A node outside the group is never remembered as its leader.
        leaders.learned(shard(1), 9);
        assert_eq!(leaders.candidates(shard(1)), vec![2, 3, 1]);
    }

    #[test]
    fn single_copy_shards_have_one_candidate() {
        let leaders = ShardLeaders::new(ShardMap::one_shard_per_node(&[1, 2, 3]));
        assert_eq!(leaders.candidates(shard(2)), vec![3]);
    }
}
