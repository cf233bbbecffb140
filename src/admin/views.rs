//! The JSON documents of the admin API (`/admin/v1/...`), shared by the
//! server, the console and `paytx admin`.

use paytx_protocol::messages::NodeStatusView;
use paytx_protocol::{NodeId, Operation, Outcome, TxnId};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `GET /admin/v1/status`: every node as seen from the one asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub answered_by: NodeId,
    /// The coordinator leader the answering node knows, if any.
    pub leader: Option<NodeId>,
    pub nodes: Vec<NodeEntry>,
}

/// One node of [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub node: NodeId,
    /// Its native (client and peer) address.
    pub addr: SocketAddr,
    /// `leader`, `follower`, `candidate`, `learner`, `coordinator down` or
    /// `unreachable`.
    pub role: String,
    /// Its own status, when it answered.
    pub status: Option<NodeStatusView>,
    /// Why it did not answer.
    pub error: Option<String>,
    /// Raft log entries it is behind the leader's log (from the leader's
    /// replication metrics; `None` when the answering node does not lead).
    pub lag_entries: Option<u64>,
}

/// A live transaction of the replicated table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnSummary {
    /// `txn-<term>.<node>.<seq>`.
    pub txn: String,
    pub key: String,
    /// `in_flight` (no decision yet) or `committing` / `aborting` (decided,
    /// some shard has not acknowledged).
    pub state: String,
    /// How long the answering node has seen it in its table, at the
    /// admin sampler's resolution (1 s); 0 when first seen by this request.
    pub age_ms: u64,
    pub ops: usize,
}

/// `GET /admin/v1/txns`: live transactions, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnList {
    pub answered_by: NodeId,
    /// Transactions in the table, whatever the limit.
    pub total: usize,
    pub txns: Vec<TxnSummary>,
    /// Prepared-and-undecided transactions per participant shard of the
    /// answering node (`shard`, count).
    pub in_doubt_by_shard: Vec<(String, u64)>,
}

/// One shard's part of a transaction, as far as the leader's engine knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardProgress {
    pub shard: String,
    pub ops: Vec<Operation>,
    /// `yes`, `no` or `pending`, or `unknown` when the answering node's
    /// engine does not drive the transaction.
    pub vote: String,
    /// `true` once the shard acknowledged the decision.
    pub acked: Option<bool>,
    /// How long after the decision applied the acknowledgement arrived, to
    /// the driver's tick (20 ms); `None` while not acked, or when the
    /// answering leader did not see the transaction begin.
    #[serde(default)]
    pub acked_after_ms: Option<u64>,
}

/// `GET /admin/v1/txns/{id-or-key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnDetail {
    pub answered_by: NodeId,
    pub txn: String,
    pub key: String,
    /// `in_flight`, `committing`, `aborting`, or `finished` when the table
    /// only remembers the key's outcome (every shard acknowledged).
    pub state: String,
    pub decision: Option<Outcome>,
    /// While preparing: the first reason to abort the leader's engine saw
    /// (a NO, an unreachable shard, the deadline), acted on once the Begin
    /// applies.
    pub refused: Option<String>,
    pub shards: Vec<ShardProgress>,
    pub age_ms: Option<u64>,
    /// How long after its `Begin` was proposed the decision applied, to the
    /// driver's tick (20 ms), when the answering leader saw both.
    #[serde(default)]
    pub decided_after_ms: Option<u64>,
}

/// Parses `txn-<term>.<node>.<seq>` (the `Display` of a [`TxnId`]).
pub fn parse_txn_id(text: &str) -> Option<TxnId> {
    let rest = text.strip_prefix("txn-")?;
    let mut parts = rest.split('.');
    let term = parts.next()?.parse().ok()?;
    let node = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(TxnId { term, node, seq })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_ids_round_trip_through_their_display() {
        let id = TxnId { term: 3, node: 2, seq: (7 << 32) | 9 };
        assert_eq!(parse_txn_id(&id.to_string()), Some(id));
        assert_eq!(parse_txn_id("txn-1.2"), None);
        assert_eq!(parse_txn_id("txn-1.2.3.4"), None);
        assert_eq!(parse_txn_id("pay-7"), None);
    }
}
