//! Replica identities: which copy of a node's data a Raft vote came from.
//!
//! A node keeps its id for life, but a node whose disk was lost (wiped,
//! replaced, or refused by the durable-watermark check and rebuilt) lost
//! the votes it cast and the entries it acknowledged. If it came back under
//! the same Raft id it could vote for a candidate lacking an entry it had
//! helped commit, and that entry would be lost: Raft's amnesia problem. So
//! every group's Raft id is a *replica id*: the node id in the low 32 bits
//! and the node's *incarnation* (0 for the disk the cluster was created
//! with, a higher number for each rebuild) in the high 32. A rebuilt node
//! joins every group under its new replica id, as a learner first, and the
//! old one is removed (`paytx_raft::admit`).
//!
//! Incarnation 0 makes a replica id equal to the node id, so clusters that
//! never rebuilt a node use the ids they always had.

use crate::NodeId;

/// A Raft member id: `incarnation << 32 | node`.
pub type ReplicaId = u64;

/// The largest node id: node ids share a replica id with an incarnation.
pub const MAX_NODE_ID: NodeId = u32::MAX as NodeId;

/// The replica id of `node`'s `incarnation`.
pub fn replica_id(node: NodeId, incarnation: u32) -> ReplicaId {
    assert!(node <= MAX_NODE_ID, "node id {node} exceeds {MAX_NODE_ID} (config validation bounds it)");
    u64::from(incarnation) << 32 | node
}

/// The node a replica id belongs to (where its messages are sent).
pub fn node_of(replica: ReplicaId) -> NodeId {
    replica & MAX_NODE_ID
}

/// The incarnation of the node's disk that a replica id names.
pub fn incarnation_of(replica: ReplicaId) -> u32 {
    (replica >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_id_names_its_node_and_incarnation() {
        assert_eq!(replica_id(3, 0), 3, "the first incarnation keeps the node id");
        let rebuilt = replica_id(3, 2);
        assert_ne!(rebuilt, 3);
        assert_eq!(node_of(rebuilt), 3);
        assert_eq!(incarnation_of(rebuilt), 2);
        assert_eq!(node_of(replica_id(MAX_NODE_ID, u32::MAX)), MAX_NODE_ID);
    }
}
