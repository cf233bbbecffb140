//! Everything that crosses a socket, wrapped in one [`Envelope`].
//!
//! One TCP port carries client requests, node-to-node 2PC messages and
//! openraft RPCs (opaque bytes here; the coordinator crate encodes them).
//! Every request carries an `id` chosen by the sender; the reply carries the
//! same id, so one connection can have many requests in flight (pipelining).
//! Id 0 is reserved for connection-level errors (e.g. a malformed frame).

use crate::error::{OrderStatus, RequestError};
use crate::ids::{
    AccountId, ChannelId, IdempotencyKey, NodeId, OrderId, Partition, RecordKey, RecordNs, ShardId, TxnId, SORT_BYTES,
};
use crate::money::{Currency, Money};
use crate::ops::Operation;
use crate::txn::{Outcome, TxnReceipt, TxnRequest};
use crate::AbortReason;
use serde::{Deserialize, Serialize};

/// A message with its request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: u64,
    pub message: Message,
}

/// Request id reserved for errors about the connection itself.
pub const CONNECTION_ERROR_ID: u64 = 0;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Client → node.
    Request(Request),
    /// Node → client.
    Response(Response),
    /// Node → node.
    Peer(PeerRequest),
    /// Node → node, the answer to a [`Message::Peer`].
    PeerReply(PeerResponse),
}

/// What a client can ask of any node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Run a transaction (forwarded to the coordinator leader).
    Submit(TxnRequest),
    /// Read an account (forwarded to the node owning its shard).
    GetAccount(AccountId),
    /// Read an order.
    GetOrder(OrderId),
    /// Read the charge of `order` through `channel`.
    GetCharge { channel: ChannelId, order: OrderId },
    /// What became of the transaction submitted with this key.
    TxnStatus(IdempotencyKey),
    /// The answering node's view of the cluster.
    NodeStatus,
    /// Read one record (forwarded to the node owning its shard).
    GetRecord(RecordKey),
    /// One page of the records of namespace `ns` held by records shard
    /// `shard`, in key order, starting after `after`. To scan a namespace,
    /// page through every shard `0..RecordPage::shard_count`. `limit` is
    /// capped at [`crate::ops::MAX_SCAN_RECORDS`].
    ScanRecords { shard: u32, ns: RecordNs, after: Option<RecordKey>, limit: u32 },
    /// One page of one partition of an ordered namespace, in sort order
    /// (answered by the one records shard holding the partition).
    ScanRange(RangeScan),
}

/// A range read of one partition of an ordered namespace (see
/// [`crate::ids::FIRST_ORDERED_NS`]): the entries whose sort key is in
/// `from..=to`, ascending or descending, resuming strictly past `after` (the
/// last sort key of the previous page, in the scan's direction), at most
/// `min(limit, MAX_SCAN_RECORDS)` of them. Answered with
/// [`Response::Records`]; `more` says whether the range holds more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeScan {
    pub partition: Partition,
    pub from: [u8; SORT_BYTES],
    pub to: [u8; SORT_BYTES],
    pub descending: bool,
    pub after: Option<[u8; SORT_BYTES]>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Submitted(TxnReceipt),
    Account(Option<AccountView>),
    Order(Option<OrderView>),
    Charge(Option<ChargeView>),
    TxnStatus(KeyStatus),
    NodeStatus(NodeStatusView),
    Record(Option<RecordView>),
    Records(RecordPage),
    Error(RequestError),
}

/// A committed record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordView {
    pub key: RecordKey,
    /// Committed writes since the record was created (1 after the insert);
    /// the value for [`crate::ops::RecordExpect::Version`].
    pub version: u64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// One page of a [`Request::ScanRecords`] or a [`Request::ScanRange`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordPage {
    pub records: Vec<RecordView>,
    /// `true` when the shard holds more records of the namespace after the
    /// last one returned.
    pub more: bool,
    /// How many records shards the cluster has.
    pub shard_count: u32,
}

/// One committed change of an account's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub txn: TxnId,
    /// Positive for a credit (or the opening deposit), negative for a debit.
    pub delta_minor: i64,
    pub balance_after_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub account: AccountId,
    pub currency: Currency,
    /// Committed balance.
    pub balance_minor: i64,
    /// Sum of debits held by prepared, undecided transactions.
    pub held_minor: i64,
    /// The most recent committed entries, newest first (at most
    /// [`MAX_RECENT_ENTRIES`]).
    pub recent: Vec<EntryView>,
}

/// How many recent entries an account keeps for [`AccountView::recent`].
pub const MAX_RECENT_ENTRIES: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub order: OrderId,
    pub merchant: AccountId,
    pub amount: Money,
    pub status: OrderStatus,
    pub refunded_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeView {
    pub channel: ChannelId,
    pub order: OrderId,
    pub charged: Money,
    pub refunded_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    /// Registered, not decided yet.
    InProgress,
    Decided(Outcome),
}

/// What the cluster knows of an idempotency key (`Request::TxnStatus`).
///
/// The key of a finished transaction is kept for `[raft] key_retention_secs`
/// of *log time* (the time the coordinator's leader stamps on its log, not
/// any node's own clock) after its transaction was forgotten, then evicted.
/// A key the table does not hold therefore means "never registered" only
/// while no key has been retired for that long; after that it may be the
/// key of a transaction that committed long ago, and a caller must not read
/// it as "nothing applied".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyStatus {
    /// The table holds the key: its transaction and where it stands.
    Known(TxnStatusView),
    /// Not held, and no key has been retired for longer than the
    /// retention: no transaction was registered under it (nothing
    /// applied). A submit still in flight may register it later.
    NotRegistered,
    /// Not held, but keys retired more than `retention_secs` ago have been
    /// evicted: it may have been one of them, so its transaction may have
    /// committed (or aborted). A retry under it now runs as a new
    /// transaction.
    Unknown { retention_secs: u64 },
}

impl KeyStatus {
    /// The view, when the key is held.
    pub fn known(&self) -> Option<&TxnStatusView> {
        match self {
            KeyStatus::Known(view) => Some(view),
            KeyStatus::NotRegistered | KeyStatus::Unknown { .. } => None,
        }
    }

    /// The view, when the key is held (by value).
    pub fn into_known(self) -> Option<TxnStatusView> {
        match self {
            KeyStatus::Known(view) => Some(view),
            KeyStatus::NotRegistered | KeyStatus::Unknown { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnStatusView {
    pub key: IdempotencyKey,
    pub txn: TxnId,
    pub state: TxnState,
}

/// A participant shard's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    pub shard: ShardId,
    pub entities: u64,
    /// Transactions prepared (voted YES) and not yet decided here.
    pub in_doubt: u64,
    /// The node leading the shard's Raft group as this replica knows it
    /// (a single-copy shard: its node).
    pub leader: Option<NodeId>,
    /// The group's voters as this replica knows them, as replica ids
    /// (`crate::replica`; a rebuilt node's differs from its node id).
    /// Empty for a single-copy shard.
    #[serde(default)]
    pub voters: Vec<crate::replica::ReplicaId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatusView {
    pub node: NodeId,
    /// `None` when this node's coordinator replica is shut down.
    pub raft_term: Option<u64>,
    pub leader: Option<NodeId>,
    /// `true` when this node is the leader and has finished taking over
    /// (its table is complete and re-driven): it accepts transactions.
    pub coordinator_ready: bool,
    pub last_applied_index: Option<u64>,
    /// Last log index covered by this replica's latest snapshot (built or
    /// installed from the leader).
    pub snapshot_index: Option<u64>,
    /// Transactions registered in the replicated table and not yet decided.
    pub undecided_txns: u64,
    /// Decided transactions not yet acknowledged by every participant.
    pub unacked_txns: u64,
    pub shards: Vec<ShardStatus>,
    /// Raft entries this node's coordinator proposed since it started, and
    /// the commands they carried (batching: many commands per entry).
    pub raft_proposals: u64,
    pub raft_proposed_commands: u64,
    /// Syncs asked of this node's disk since it started, and the flushes
    /// (fsync + watermark) that served them (group commit).
    pub disk_syncs: u64,
    pub disk_flushes: u64,
    /// What only this node can see of itself: its disk's free space and
    /// its gateway's audit chain. (Boxed: a status travels inside every
    /// `Response`, which stays small.)
    pub local: Box<NodeLocalView>,
}

/// The outcomes this node's coordinator answered since the node started
/// (`paytx_node::NodeMetrics::totals`): only a leader answers, so the
/// cluster's are the sum over its nodes (the console's charts add them).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutcomeTotals {
    pub committed: u64,
    pub aborted: u64,
    /// Aborts so far by reason code (bounded: one entry per `AbortReason`).
    pub aborted_by_reason: std::collections::BTreeMap<String, u64>,
    /// Commit latencies observed, and the cumulative count per bucket of
    /// `paytx_node::metrics::LATENCY_BUCKETS_SECONDS`.
    pub latency_count: u64,
    pub latency_cumulative: Vec<u64>,
}

impl NodeStatusView {
    /// Each shard group's leader as the first of `statuses` that knows one
    /// names it (pass them lowest node first, for one answer per group).
    /// The simulator's and the chaos run's timelines read leaders so.
    pub fn shard_leaders<'a>(
        statuses: impl IntoIterator<Item = &'a NodeStatusView>,
    ) -> std::collections::BTreeMap<ShardId, NodeId> {
        let mut leaders = std::collections::BTreeMap::new();
        for status in statuses {
            for shard in &status.shards {
                if let Some(leader) = shard.leader {
                    leaders.entry(shard.shard).or_insert(leader);
                }
            }
        }
        leaders
    }
}

/// The part of a node's status only the node itself can see.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLocalView {
    /// Free space of the file system holding this node's data directory,
    /// in bytes (`None` when it could not be read).
    pub disk_free_bytes: Option<u64>,
    /// This node's gateway audit chain as its last check found it (`None`
    /// when the node serves no HTTP API, so keeps no audit log).
    pub audit_chain: Option<AuditChainView>,
    /// Which incarnation of this node's disk runs: 0 for the disk the
    /// cluster was created with, one more at every rebuild.
    #[serde(default)]
    pub incarnation: u32,
    /// The coordinator group's voters as this node's replica knows them,
    /// as replica ids (`crate::replica`).
    #[serde(default)]
    pub coordinator_voters: Vec<crate::replica::ReplicaId>,
    /// What this node's coordinator answered since the node started.
    #[serde(default)]
    pub outcomes: OutcomeTotals,
}

/// A node's hash-chained gateway audit log, as its last check found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditChainView {
    /// Entries in the log (its head's sequence number) at the check.
    pub entries: u64,
    /// Entries verified, from the first: every entry when `problem` is `None`.
    pub verified_entries: u64,
    /// The first problem found (which entry, and what happened to it);
    /// `None` while the chain verifies.
    pub problem: Option<String>,
    /// When the check ran (Unix milliseconds); 0 before the first one.
    pub checked_at_ms: u64,
}

/// A participant's vote on a prepare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vote {
    /// Prepared and durable: the participant promises to commit if told to.
    Yes,
    /// Cannot commit; the participant holds nothing for this transaction.
    No(AbortReason),
}

/// Which openraft RPC an opaque Raft payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpcKind {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// Which Raft group an RPC is for: a node runs the coordinator group's
/// replica and one replica of every participant shard it hosts, all over
/// one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RaftGroup {
    Coordinator,
    Shard(ShardId),
}

impl std::fmt::Display for RaftGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RaftGroup::Coordinator => f.write_str("coordinator"),
            RaftGroup::Shard(shard) => write!(f, "{shard}"),
        }
    }
}

/// Node-to-node requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// An openraft RPC for replica `to` of `group`, encoded by the
    /// `paytx-raft` crate. `to` is checked on arrival: a node rebuilt under
    /// a new replica id must not answer for its old one.
    Raft {
        group: RaftGroup,
        to: crate::replica::ReplicaId,
        kind: RaftRpcKind,
        /// Encoded as one byte string (the same bytes on the wire as a
        /// sequence of `u8`, decoded in one copy instead of per byte).
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// 2PC phase one: coordinator → participant shard.
    Prepare { txn: TxnId, shard: ShardId, ops: Vec<Operation> },
    /// 2PC phase two: coordinator → participant shard. `at_ms`: as in
    /// [`DecisionItem::at_ms`].
    Decide { txn: TxnId, shard: ShardId, commit: bool, at_ms: u64 },
    /// An in-doubt participant asks the coordinator group for the decision.
    QueryDecision { txn: TxnId },
    /// A client request forwarded to the node that can answer it.
    Forward(Request),
    /// Peer authentication, step 1 (see [`crate::auth`]).
    AuthHello { node: NodeId, nonce: crate::auth::Nonce, config: crate::auth::ConfigDigest },
    /// Peer authentication, step 3.
    AuthProof { proof: crate::auth::Proof },
    /// A node starting on an empty data directory asks every peer which of
    /// its incarnations the peer has exchanged Raft messages with. Answered
    /// before the peer's own groups run (a cluster's nodes all start empty).
    ReplicasSeen { node: NodeId },
    /// A rebuilt node asks `group`'s leader to make `replica` a voter in
    /// place of the node's older replica id (learner first, until caught
    /// up). `addr` is where the node listens.
    AdmitReplica { group: RaftGroup, replica: crate::replica::ReplicaId, addr: String },
    /// `group`'s leader hands leadership to `replica` (see
    /// `paytx_raft::handover`): the replica starts an election now, if its
    /// log reaches `last_log_index` (the leader's, with its proposals held),
    /// so that it can win. An election is always safe in Raft; this only
    /// chooses when, and who stands.
    Campaign { group: RaftGroup, replica: crate::replica::ReplicaId, last_log_index: u64 },
    /// 2PC phase one for many transactions on one shard: the prepares the
    /// coordinator had ready for `shard` at one moment, in one frame (at
    /// most [`MAX_BATCH_ITEMS`]). Answered by [`PeerResponse::Votes`]. A
    /// prepare of a batch never waits for a lock (see [`BatchVote::Blocked`]),
    /// so one contended transaction cannot hold back the others' votes.
    PrepareBatch { shard: ShardId, prepares: Vec<PrepareItem> },
    /// 2PC phase two for many transactions on one shard (at most
    /// [`MAX_BATCH_ITEMS`]). Answered by [`PeerResponse::DecisionsApplied`].
    DecideBatch { shard: ShardId, decisions: Vec<DecisionItem> },
}

/// Most prepares or decisions one [`PeerRequest::PrepareBatch`] or
/// [`PeerRequest::DecideBatch`] carries: a bound on the work one frame
/// starts on a shard (the frame's byte bound applies as well).
pub const MAX_BATCH_ITEMS: usize = 512;

/// One prepare of a [`PeerRequest::PrepareBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareItem {
    pub txn: TxnId,
    /// This shard's operations of the transaction, in request order.
    pub ops: Vec<Operation>,
}

/// One decision of a [`PeerRequest::DecideBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionItem {
    pub txn: TxnId,
    pub commit: bool,
    /// The coordinator group's log time (Unix ms, the newest stamp applied
    /// there: replicated and never going back) when the decision was sent.
    /// For a commit it is the commit time of the transaction's
    /// [`crate::Operation::PutRecordAtCommit`] entries: the shard keeps the
    /// time of the first commit it applies (a re-sent decision's later time
    /// changes nothing, the transaction being committed there already).
    pub at_ms: u64,
}

/// The answer to one prepare of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchVote {
    /// The shard voted (durably, for a YES).
    Voted(Vote),
    /// The prepare conflicts with a transaction prepared here and not yet
    /// decided: it would wait for that decision, which a batch does not
    /// do. Nothing was reserved; the coordinator sends it again alone (a
    /// lone prepare waits, at most the shard's `lock_wait_ms`).
    Blocked,
    /// The shard did not vote (it failed, or lost its leadership): like a
    /// failed call of a lone prepare.
    Failed(RequestError),
}

impl PeerRequest {
    /// The shard a decision (lone or batched) is addressed to; `None` for
    /// every other request. For link filters of fault tests.
    pub fn decision_shard(&self) -> Option<ShardId> {
        match self {
            PeerRequest::Decide { shard, .. } | PeerRequest::DecideBatch { shard, .. } => Some(*shard),
            _ => None,
        }
    }
}

/// Where a [`PeerRequest::AdmitReplica`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admission {
    /// The replica is a voter of the group.
    Voter,
    /// The leader is catching the replica up as a learner, or changing the
    /// membership; ask again later.
    InProgress,
    /// This node does not lead the group; `leader_hint` is the node that
    /// last did, if known.
    NotLeader { leader_hint: Option<NodeId> },
}

/// Node-to-node answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    Raft(Result<Vec<u8>, String>),
    /// A participant's vote, naming what it answers: the coordinator drops
    /// a vote that does not match the prepare it sent (a mis-delivered
    /// reply must never count as another transaction's YES).
    Vote {
        txn: TxnId,
        shard: ShardId,
        vote: Vote,
    },
    /// The participant applied the decision of `txn` durably (named, like
    /// a vote, so a mis-delivered acknowledgement is dropped).
    DecisionApplied {
        txn: TxnId,
        shard: ShardId,
    },
    /// A step of the peer handshake succeeded.
    Acked,
    /// The decision for a queried transaction: `true` = commit; `at_ms` as
    /// in [`DecisionItem::at_ms`].
    Decision {
        commit: bool,
        at_ms: u64,
    },
    Forwarded(Response),
    /// Peer authentication, step 2: the acceptor's nonce and proof.
    AuthChallenge {
        nonce: crate::auth::Nonce,
        proof: crate::auth::Proof,
    },
    /// The incarnations of the asked-about node this node has exchanged
    /// Raft messages with, ascending.
    ReplicasSeen {
        incarnations: Vec<u32>,
    },
    Admission(Admission),
    /// A [`PeerRequest::Campaign`] not acted on: the replica named is not
    /// this node's, or its log is shorter than the leader's.
    CampaignRefused {
        reason: String,
    },
    Error(RequestError),
    /// The answers to a [`PeerRequest::PrepareBatch`], each naming its
    /// transaction (the coordinator pairs them by name, never by position).
    Votes {
        shard: ShardId,
        votes: Vec<(TxnId, BatchVote)>,
    },
    /// The decisions of a [`PeerRequest::DecideBatch`] applied durably;
    /// a decision not listed was not (the coordinator sends it again).
    DecisionsApplied {
        shard: ShardId,
        applied: Vec<TxnId>,
    },
}
