//! [`NodeService`]: where every message a node receives is handled —
//! client requests (`handle_request`) and peer requests (`handle_peer`) —
//! and routed: a transaction goes to the coordinator leader, a read to the
//! node owning the entity's shard, an in-doubt query to the leader.
//!
//! Independent of sockets and disks: production wraps it in a TCP server on
//! sled, the simulator in simulated links on memory.

use crate::fail_stop::FailStop;
use crate::free_space::{below_minimum, FreeSpace};
use crate::identity::ReplicaBook;
use crate::shards::ShardHandle;
use actix::prelude::*;
use paytx_coordinator::driver::{GetDriverStatus, QueryDecision, StopDriver, SubmitTxn};
use paytx_coordinator::state_machine::{read_table, SharedTable};
use paytx_coordinator::{CoordinatorDriver, Raft};
use paytx_participants::{DecisionSource, ParticipantError, ShardRead, ShardReadAnswer};
use paytx_protocol::clock::NodeClock;
use paytx_protocol::messages::{Admission, BatchVote, DecisionItem, PrepareItem, RaftGroup, MAX_BATCH_ITEMS};
use paytx_protocol::messages::{AuditChainView, NodeStatusView, RecordPage, ShardStatus};
use paytx_protocol::replica::{node_of, ReplicaId};
use paytx_protocol::routing::{call_shard, ShardLeaders};
use paytx_protocol::{
    BoxFuture, EntityKey, EntityKind, InvalidRequest, NodeId, PeerRequest, PeerResponse, Request, RequestError,
    Response, ShardId, ShardMap, Transport, TxnId,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// The coordinator replica of a node, while it runs.
#[derive(Clone)]
pub(crate) struct CoordinatorParts {
    pub(crate) raft: Raft,
    pub(crate) driver: Addr<CoordinatorDriver>,
    pub(crate) table: SharedTable,
}

/// Handles everything a node receives.
pub struct NodeService {
    pub(crate) id: NodeId,
    /// The node's clock (the clock seam): the service's request budgets
    /// run on it, and the node's background tasks are spawned with it.
    pub(crate) clock: NodeClock,
    pub(crate) peers: Vec<NodeId>,
    pub(crate) shard_map: ShardMap,
    pub(crate) coordinator: Mutex<Option<CoordinatorParts>>,
    pub(crate) participants: BTreeMap<ShardId, ShardHandle>,
    /// The last leader seen of every shard (replicated shards move).
    pub(crate) shard_leaders: ShardLeaders,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) request_timeout_ms: u64,
    pub(crate) peer_timeout_ms: u64,
    /// Budget of record values in one scan page, so a page always fits in a
    /// frame whatever `max_frame_bytes` is.
    pub(crate) max_scan_page_bytes: usize,
    /// Tripped by the first disk write or fsync error: the node stops.
    pub(crate) fail_stop: FailStop,
    /// The data disk's free space (unset: not checked).
    pub(crate) free_space: Mutex<Option<Arc<dyn FreeSpace>>>,
    pub(crate) min_free_disk_bytes: u64,
    /// The node's disk (for its sync counters).
    pub(crate) disk: paytx_storage::SharedDisk,
    /// What passes through here, for the admin listener (`metrics`).
    pub(crate) metrics: crate::metrics::NodeMetrics,
    /// The state of this node's gateway audit chain (unset: no gateway).
    pub(crate) audit_chain: Mutex<Option<AuditChainSource>>,
    /// The replicas this node has exchanged Raft messages with (answers
    /// `ReplicasSeen`; every group records through it).
    pub(crate) book: ReplicaBook,
    /// Which incarnation of this node's disk runs (`identity`).
    pub(crate) incarnation: u32,
    /// Admissions of rebuilt replicas this node is running as a leader.
    pub(crate) admissions: Mutex<BTreeSet<(RaftGroup, ReplicaId)>>,
}

/// Most admissions of rebuilt replicas one node runs at once (a rebuilt
/// node asks once per group it belongs to).
pub const MAX_ADMISSIONS: usize = 64;

/// Where the node status reads its gateway's audit-chain state.
/// `None` once the gateway has stopped.
pub type AuditChainSource = Arc<dyn Fn() -> Option<AuditChainView> + Send + Sync>;

fn error(e: RequestError) -> Response {
    Response::Error(e)
}

/// What a caller hears when a hosted shard could not do what it was asked.
fn shard_error(shard: ShardId, e: ParticipantError) -> RequestError {
    match e {
        ParticipantError::NotLeader { leader_hint, .. } => RequestError::NotShardLeader { shard, leader_hint },
        ParticipantError::Stopped { .. } => RequestError::ShuttingDown,
        other => RequestError::Internal(other.to_string()),
    }
}

/// When every item of a batch was refused because this replica does not
/// lead the shard (it lost the leadership while the batch ran), the whole
/// batch is refused, so that the caller's routing follows the hint.
fn whole_batch_refusal<T>(shard: ShardId, answers: &[Result<T, ParticipantError>]) -> Option<PeerResponse> {
    let mut hint = None;
    for answer in answers {
        match answer {
            Err(ParticipantError::NotLeader { leader_hint, .. }) => hint = *leader_hint,
            _ => return None,
        }
    }
    // An empty batch is answered, not refused.
    (!answers.is_empty()).then_some(PeerResponse::Error(RequestError::NotShardLeader { shard, leader_hint: hint }))
}

impl NodeService {
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Stops every participant actor of this node at once, without flushing
    /// anything (a crash, or the last step of a stop).
    pub fn stop_participants(&self) {
        for shard in self.participants.values() {
            shard.stop();
        }
    }

    /// Sets where the full-disk check reads the data disk's free space.
    pub fn set_free_space(&self, source: Arc<dyn FreeSpace>) {
        *self.free_space.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// Sets where the node status reads the gateway's audit-chain state.
    pub fn set_audit_chain_source(&self, source: AuditChainSource) {
        *self.audit_chain.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// The node's fail-stop latch.
    pub fn fail_stop(&self) -> &FailStop {
        &self.fail_stop
    }

    /// The counters this service updates (rendered by the admin listener).
    pub fn metrics(&self) -> &crate::metrics::NodeMetrics {
        &self.metrics
    }

    /// Every node of the cluster, this one included.
    pub fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    /// This node's replica of replicated shard `shard`: what it applied and
    /// a digest of its state (`None`: no replica here, or single-copy).
    pub fn shard_replica_state(&self, shard: ShardId) -> Option<crate::shards::ReplicaState> {
        self.participants.get(&shard).and_then(ShardHandle::replica_state)
    }

    /// The participant shards this node hosts.
    pub fn shard_ids(&self) -> Vec<ShardId> {
        self.participants.keys().copied().collect()
    }

    /// This node's coordinator replica's Raft metrics (`None` while it is
    /// shut down).
    pub fn raft_metrics(&self) -> Option<openraft::RaftMetrics<NodeId, openraft::BasicNode>> {
        self.coordinator().map(|parts| parts.raft.metrics().borrow().clone())
    }

    /// This node's 2PC driver's view (`None` while the replica is shut down
    /// or the driver does not answer).
    pub async fn driver_status(&self) -> Option<paytx_coordinator::driver::DriverStatus> {
        let parts = self.coordinator()?;
        parts.driver.send(GetDriverStatus).await.ok()
    }

    /// What this node's coordinator engine knows of `txn` (`None`: it does
    /// not drive it, or the replica is shut down).
    pub async fn txn_progress(&self, txn: TxnId) -> Option<paytx_coordinator::engine::TxnProgress> {
        let parts = self.coordinator()?;
        parts.driver.send(paytx_coordinator::driver::GetTxnProgress(txn)).await.ok().flatten()
    }

    /// The shard map of the cluster.
    pub fn shard_map(&self) -> &ShardMap {
        &self.shard_map
    }

    /// A read of this node's replica of the transaction table (`None` while
    /// the replica is shut down). `read` must be quick: the state machine
    /// waits for it.
    pub fn with_table<T>(&self, read: impl FnOnce(&paytx_coordinator::table::TxnTable) -> T) -> Option<T> {
        self.coordinator().map(|parts| read(&read_table(&parts.table).table))
    }

    /// `Some((free, min))` when the data disk is below its free-space minimum.
    fn disk_full(&self) -> Option<(u64, u64)> {
        let source = self.free_space.lock().unwrap_or_else(|p| p.into_inner()).clone();
        below_minimum(source.as_deref(), self.min_free_disk_bytes)
    }

    pub(crate) fn coordinator(&self) -> Option<CoordinatorParts> {
        self.coordinator.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Nodes to try, in order, to reach the coordinator leader: the hint
    /// first, then every other node.
    fn leader_candidates(&self, hint: Option<NodeId>) -> Vec<NodeId> {
        let mut candidates: Vec<NodeId> = hint.filter(|h| *h != self.id).into_iter().collect();
        candidates.extend(self.peers.iter().copied().filter(|p| *p != self.id && Some(*p) != hint));
        candidates
    }

    /// A client request. `may_forward` is false for a request another node
    /// already forwarded here (one hop at most: no forwarding loops).
    pub async fn handle_request(self: Arc<Self>, request: Request, may_forward: bool) -> Response {
        let budget = Duration::from_millis(self.request_timeout_ms);
        let timeout_ms = self.request_timeout_ms;
        let clock = self.clock.clone();
        match clock.timeout(budget, self.route_request(request, may_forward)).await {
            Ok(response) => response,
            Err(_) => error(RequestError::Timeout { timeout_ms }),
        }
    }

    async fn route_request(self: Arc<Self>, request: Request, may_forward: bool) -> Response {
        if self.fail_stop.reason().is_some() {
            return error(RequestError::ShuttingDown);
        }
        match request {
            Request::Submit(txn) => {
                let local = match self.coordinator() {
                    Some(parts) => {
                        // The leader checks its own disk: its Raft log is
                        // what a new transaction grows first (participants
                        // check theirs at prepare). A follower just forwards.
                        let leading = parts.raft.metrics().borrow().current_leader.map(node_of) == Some(self.id);
                        if let Some((free_bytes, min_free_bytes)) = self.disk_full().filter(|_| leading) {
                            return error(RequestError::DiskFull { node: self.id, free_bytes, min_free_bytes });
                        }
                        let started = tokio::time::Instant::now();
                        match parts.driver.send(SubmitTxn(txn.clone())).await {
                            Ok(Ok(receipt)) => {
                                self.metrics.observe_receipt(&receipt, started.elapsed().as_secs_f64());
                                return Response::Submitted(receipt);
                            }
                            Ok(Err(RequestError::NoLeader { leader_hint })) => RequestError::NoLeader { leader_hint },
                            Ok(Err(e)) => {
                                self.metrics.observe_refusal(&e);
                                return error(e);
                            }
                            Err(_) => RequestError::ShuttingDown,
                        }
                    }
                    None => RequestError::NoLeader { leader_hint: None },
                };
                if !may_forward {
                    return error(local);
                }
                let hint = match &local {
                    RequestError::NoLeader { leader_hint } => *leader_hint,
                    _ => None,
                };
                self.forward_to_leader(Request::Submit(txn), hint, local).await
            }
            Request::GetAccount(account) => {
                let shard = self.shard_map.shard_of(EntityKey::Account(account));
                self.read(shard, Request::GetAccount(account), may_forward).await
            }
            Request::GetOrder(order) => {
                let shard = self.shard_map.shard_of(EntityKey::Order(order));
                self.read(shard, Request::GetOrder(order), may_forward).await
            }
            Request::GetCharge { channel, order } => {
                let shard = self.shard_map.shard_of(EntityKey::Channel(channel));
                self.read(shard, Request::GetCharge { channel, order }, may_forward).await
            }
            Request::TxnStatus(key) => {
                let parts = self.coordinator();
                let leader_ready = match &parts {
                    Some(p) => p.driver.send(GetDriverStatus).await.map(|s| (s.is_leader, s.leader_hint)).ok(),
                    None => None,
                };
                match (parts, leader_ready) {
                    (Some(parts), Some((true, _))) => match read_table(&parts.table).table.key_status(&key) {
                        Ok(status) => Response::TxnStatus(status),
                        // The archive could not be read: say so rather than
                        // answer "unknown" for a key that may be on disk.
                        Err(e) => error(RequestError::Internal(format!("idempotency-key archive: {e}"))),
                    },
                    (_, hint) if may_forward => {
                        let hint = hint.and_then(|(_, h)| h);
                        let fallback = RequestError::NoLeader { leader_hint: hint };
                        self.forward_to_leader(Request::TxnStatus(key), hint, fallback).await
                    }
                    _ => error(RequestError::NoLeader { leader_hint: None }),
                }
            }
            Request::NodeStatus => Response::NodeStatus(self.status().await),
            Request::GetRecord(key) => {
                let shard = self.shard_map.shard_of(EntityKey::Record(key));
                self.read(shard, Request::GetRecord(key), may_forward).await
            }
            Request::ScanRecords { shard: index, ns, after, limit } => {
                let shard_count = self.record_shard_count();
                if index >= shard_count {
                    return error(RequestError::Invalid(InvalidRequest::RecordShardOutOfRange {
                        shard: index,
                        shard_count,
                    }));
                }
                let shard = ShardId { kind: EntityKind::Record, index };
                self.read(shard, Request::ScanRecords { shard: index, ns, after, limit }, may_forward).await
            }
            Request::ScanRange(scan) => {
                // The partition's first key names its shard: every key of a
                // partition hashes to the same one.
                let ns = scan.partition.ns;
                if !paytx_protocol::ids::is_ordered_ns(ns) {
                    let first = paytx_protocol::ids::FIRST_ORDERED_NS;
                    return error(RequestError::Invalid(InvalidRequest::NotAnOrderedNamespace { ns, first }));
                }
                let shard = self.shard_map.shard_of(EntityKey::Record(scan.partition.key(scan.from)));
                self.read(shard, Request::ScanRange(scan), may_forward).await
            }
        }
    }

    /// How many records shards the cluster has (a shard index is `u32`).
    fn record_shard_count(&self) -> u32 {
        u32::try_from(self.shard_map.records.len()).unwrap_or(u32::MAX)
    }

    async fn forward_to_leader(&self, request: Request, hint: Option<NodeId>, mut last: RequestError) -> Response {
        for node in self.leader_candidates(hint) {
            let reply = self.transport.call(node, PeerRequest::Forward(request.clone()), self.request_timeout_ms).await;
            match reply {
                Ok(PeerResponse::Forwarded(Response::Error(
                    e @ (RequestError::NoLeader { .. } | RequestError::ShuttingDown),
                ))) => last = e,
                Ok(PeerResponse::Forwarded(response)) => return response,
                Ok(other) => last = RequestError::Internal(format!("node {node} answered a forward with {other:?}")),
                Err(e) => {
                    tracing::debug!(error = %e, node, "forward to a leader candidate failed");
                    last = RequestError::NoLeader { leader_hint: None };
                }
            }
        }
        error(last)
    }

    /// A read of `shard`: answered here when this node hosts it (and, for
    /// a replicated shard, leads it), else forwarded (once) to the shard's
    /// leader.
    async fn read(&self, shard: ShardId, request: Request, may_forward: bool) -> Response {
        if let Some(handle) = self.participants.get(&shard) {
            let Some(read) = self.shard_read(&request) else {
                return error(RequestError::Internal("not a read".into()));
            };
            match handle.read(shard, read).await {
                Ok(answer) => return self.read_response(answer),
                Err(ParticipantError::NotLeader { leader_hint, .. }) => {
                    if !may_forward {
                        return error(RequestError::NotShardLeader { shard, leader_hint });
                    }
                    if let Some(leader) = leader_hint {
                        self.shard_leaders.learned(shard, leader);
                    }
                }
                Err(e) => return error(shard_error(shard, e)),
            }
        } else if !may_forward {
            return error(RequestError::ShardUnavailable { shard });
        }
        let forward = PeerRequest::Forward(request);
        match call_shard(&*self.transport, &self.shard_leaders, shard, &forward, self.request_timeout_ms).await {
            Ok(PeerResponse::Forwarded(response)) => response,
            Ok(other) => error(RequestError::Internal(format!("a replica of {shard} answered a read with {other:?}"))),
            Err(e) => {
                tracing::debug!(error = %e, %shard, "read forward failed");
                error(RequestError::ShardUnavailable { shard })
            }
        }
    }

    /// The shard read a client read asks for.
    fn shard_read(&self, request: &Request) -> Option<ShardRead> {
        let max_bytes = self.max_scan_page_bytes;
        Some(match *request {
            Request::GetAccount(account) => ShardRead::Account(account),
            Request::GetOrder(order) => ShardRead::Order(order),
            Request::GetCharge { channel, order } => ShardRead::Charge { channel, order },
            Request::GetRecord(key) => ShardRead::Record(key),
            Request::ScanRecords { ns, after, limit, .. } => {
                ShardRead::Scan(paytx_participants::ScanRecords { ns, after, limit, max_bytes })
            }
            Request::ScanRange(scan) => ShardRead::Range(paytx_participants::ScanRange { scan, max_bytes }),
            _ => return None,
        })
    }

    fn read_response(&self, answer: ShardReadAnswer) -> Response {
        match answer {
            ShardReadAnswer::Account(view) => Response::Account(view),
            ShardReadAnswer::Order(view) => Response::Order(view),
            ShardReadAnswer::Charge(view) => Response::Charge(view),
            ShardReadAnswer::Record(view) => Response::Record(view),
            ShardReadAnswer::Page(page) => Response::Records(RecordPage {
                records: page.records,
                more: page.more,
                shard_count: self.record_shard_count(),
            }),
        }
    }

    /// Which incarnation of this node's disk runs (0: the disk the cluster
    /// was created with; one more at every rebuild).
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// A node-to-node request.
    pub async fn handle_peer(self: Arc<Self>, request: PeerRequest) -> PeerResponse {
        if self.fail_stop.reason().is_some() {
            return PeerResponse::Error(RequestError::ShuttingDown);
        }
        match request {
            PeerRequest::Raft { group: RaftGroup::Coordinator, to, kind, payload } => match self.coordinator() {
                Some(parts) => PeerResponse::Raft(
                    paytx_coordinator::network::handle_raft_rpc(&parts.raft, &self.book, to, kind, &payload).await,
                ),
                None => PeerResponse::Raft(Err(format!("the coordinator replica of node {} is shut down", self.id))),
            },
            PeerRequest::Raft { group: RaftGroup::Shard(shard), to, kind, payload } => {
                match self.participants.get(&shard).and_then(ShardHandle::raft) {
                    Some(raft) => PeerResponse::Raft(
                        paytx_coordinator::network::handle_raft_rpc(raft, &self.book, to, kind, &payload).await,
                    ),
                    None => PeerResponse::Raft(Err(format!("node {} holds no replica of shard {shard}", self.id))),
                }
            }
            PeerRequest::Prepare { txn, shard, ops } => match self.participants.get(&shard) {
                // The shard refuses new work on a nearly full disk, but not
                // a re-sent prepare of what it already promised.
                Some(handle) => {
                    let disk_low = self.disk_full().map(|(free_bytes, _)| free_bytes);
                    match handle.prepare(shard, paytx_participants::Prepare { txn, ops, disk_low }).await {
                        Ok(vote) => {
                            self.metrics.observe_prepare(shard, vote == paytx_protocol::messages::Vote::Yes);
                            PeerResponse::Vote { txn, shard, vote }
                        }
                        Err(e) => PeerResponse::Error(shard_error(shard, e)),
                    }
                }
                None => PeerResponse::Error(RequestError::ShardUnavailable { shard }),
            },
            PeerRequest::Decide { txn, shard, commit, at_ms } => match self.participants.get(&shard) {
                Some(handle) => match handle.decide(shard, paytx_participants::Decide { txn, commit, at_ms }).await {
                    Ok(()) => {
                        self.metrics.observe_decision(shard, commit);
                        PeerResponse::DecisionApplied { txn, shard }
                    }
                    Err(e) => PeerResponse::Error(shard_error(shard, e)),
                },
                None => PeerResponse::Error(RequestError::ShardUnavailable { shard }),
            },
            PeerRequest::PrepareBatch { shard, prepares } => self.prepare_batch(shard, prepares).await,
            PeerRequest::DecideBatch { shard, decisions } => self.decide_batch(shard, decisions).await,
            PeerRequest::QueryDecision { txn } => match self.local_decision(txn).await {
                Ok(DecisionItem { commit, at_ms, .. }) => PeerResponse::Decision { commit, at_ms },
                Err(e) => PeerResponse::Error(e),
            },
            PeerRequest::Forward(request) => PeerResponse::Forwarded(self.handle_request(request, false).await),
            // The connection layer runs the handshake; one reaching the
            // service came through a path that does not authenticate.
            PeerRequest::AuthHello { .. } | PeerRequest::AuthProof { .. } => {
                PeerResponse::Error(RequestError::Unauthorized { reason: "handshake outside a connection".into() })
            }
            PeerRequest::ReplicasSeen { node } => self.book.answer(node),
            PeerRequest::AdmitReplica { group, replica, addr } => self.admit_replica(group, replica, addr),
            PeerRequest::Campaign { group, replica, last_log_index } => {
                self.campaign(group, replica, last_log_index).await
            }
        }
    }

    /// The prepares of a [`PeerRequest::PrepareBatch`], each answered as a
    /// lone prepare would be, except that none waits for a lock
    /// ([`BatchVote::Blocked`]).
    async fn prepare_batch(&self, shard: ShardId, prepares: Vec<PrepareItem>) -> PeerResponse {
        if prepares.len() > MAX_BATCH_ITEMS {
            let invalid = InvalidRequest::BatchTooLong { items: prepares.len(), max: MAX_BATCH_ITEMS };
            return PeerResponse::Error(RequestError::Invalid(invalid));
        }
        let Some(handle) = self.participants.get(&shard) else {
            return PeerResponse::Error(RequestError::ShardUnavailable { shard });
        };
        let disk_low = self.disk_full().map(|(free_bytes, _)| free_bytes);
        let txns: Vec<TxnId> = prepares.iter().map(|item| item.txn).collect();
        let prepares =
            prepares.into_iter().map(|PrepareItem { txn, ops }| paytx_participants::Prepare { txn, ops, disk_low });
        let answers = match handle.prepare_many(shard, prepares.collect()).await {
            Ok(answers) => answers,
            Err(e) => return PeerResponse::Error(shard_error(shard, e)),
        };
        if let Some(refusal) = whole_batch_refusal(shard, &answers) {
            return refusal;
        }
        let votes = txns
            .into_iter()
            .zip(answers)
            .map(|(txn, answer)| {
                let vote = match answer {
                    Ok(vote) => {
                        self.metrics.observe_prepare(shard, vote == paytx_protocol::messages::Vote::Yes);
                        BatchVote::Voted(vote)
                    }
                    Err(ParticipantError::Blocked { .. }) => BatchVote::Blocked,
                    Err(e) => BatchVote::Failed(shard_error(shard, e)),
                };
                (txn, vote)
            })
            .collect::<Vec<_>>();
        let blocked = votes.iter().filter(|(_, vote)| *vote == BatchVote::Blocked).count();
        self.metrics.observe_prepare_batch(votes.len(), blocked);
        PeerResponse::Votes { shard, votes }
    }

    /// The decisions of a [`PeerRequest::DecideBatch`]; the answer lists
    /// those applied durably.
    async fn decide_batch(&self, shard: ShardId, decisions: Vec<DecisionItem>) -> PeerResponse {
        if decisions.len() > MAX_BATCH_ITEMS {
            let invalid = InvalidRequest::BatchTooLong { items: decisions.len(), max: MAX_BATCH_ITEMS };
            return PeerResponse::Error(RequestError::Invalid(invalid));
        }
        let Some(handle) = self.participants.get(&shard) else {
            return PeerResponse::Error(RequestError::ShardUnavailable { shard });
        };
        let decides = decisions
            .iter()
            .map(|item| paytx_participants::Decide { txn: item.txn, commit: item.commit, at_ms: item.at_ms })
            .collect();
        let answers = match handle.decide_many(shard, decides).await {
            Ok(answers) => answers,
            Err(e) => return PeerResponse::Error(shard_error(shard, e)),
        };
        if let Some(refusal) = whole_batch_refusal(shard, &answers) {
            return refusal;
        }
        self.metrics.observe_decide_batch(decisions.len());
        let mut applied = Vec::with_capacity(decisions.len());
        for (item, answer) in decisions.into_iter().zip(answers) {
            match answer {
                Ok(()) => {
                    self.metrics.observe_decision(shard, item.commit);
                    applied.push(item.txn);
                }
                Err(e) => tracing::debug!(%shard, txn = %item.txn, error = %e, "a decision of a batch failed"),
            }
        }
        PeerResponse::DecisionsApplied { shard, applied }
    }

    /// `group`'s leader hands this node's replica the leadership
    /// (`paytx_raft::handover`): start an election, if the replica can win.
    async fn campaign(&self, group: RaftGroup, replica: ReplicaId, last_log_index: u64) -> PeerResponse {
        let answered = match group {
            RaftGroup::Coordinator => match self.coordinator() {
                Some(parts) => paytx_raft::handover::answer_campaign(&parts.raft, replica, last_log_index).await,
                None => Err("no coordinator replica runs on this node".to_string()),
            },
            RaftGroup::Shard(shard) => match self.participants.get(&shard).and_then(ShardHandle::raft) {
                Some(raft) => paytx_raft::handover::answer_campaign(raft, replica, last_log_index).await,
                None => Err(format!("no replica of {shard} runs on this node")),
            },
        };
        match answered {
            Ok(()) => PeerResponse::Acked,
            Err(reason) => PeerResponse::CampaignRefused { reason },
        }
    }

    /// A rebuilt node asks this node, as `group`'s leader, to admit its new
    /// replica id (see `paytx_raft::admit`). Answers at once; the admission
    /// runs in the background, and the asker polls.
    fn admit_replica(self: &Arc<Self>, group: RaftGroup, replica: ReplicaId, addr: String) -> PeerResponse {
        let node = node_of(replica);
        let member = match group {
            RaftGroup::Coordinator => self.peers.contains(&node),
            RaftGroup::Shard(shard) => self.shard_map.replicas_of(shard).contains(&node),
        };
        if !member || node == self.id {
            return PeerResponse::Error(RequestError::Invalid(InvalidRequest::Malformed(format!(
                "node {node} holds no replica of {group} that node {} could admit",
                self.id
            ))));
        }
        match group {
            RaftGroup::Coordinator => match self.coordinator() {
                Some(parts) => self.run_admission(group, parts.raft.clone(), replica, addr),
                None => PeerResponse::Admission(Admission::NotLeader { leader_hint: None }),
            },
            RaftGroup::Shard(shard) => match self.participants.get(&shard).and_then(ShardHandle::raft) {
                Some(raft) => self.run_admission(group, raft.clone(), replica, addr),
                None => PeerResponse::Admission(Admission::NotLeader { leader_hint: None }),
            },
        }
    }

    fn run_admission<C: paytx_raft::PaytxRaftConfig>(
        self: &Arc<Self>,
        group: RaftGroup,
        raft: openraft::Raft<C>,
        replica: ReplicaId,
        addr: String,
    ) -> PeerResponse {
        let metrics = raft.metrics().borrow().clone();
        if let Some(answer) = paytx_raft::admit::admission_state(&metrics, replica) {
            return PeerResponse::Admission(answer);
        }
        {
            let mut running = self.admissions.lock().unwrap_or_else(|p| p.into_inner());
            if running.contains(&(group, replica)) {
                return PeerResponse::Admission(Admission::InProgress);
            }
            if running.len() >= MAX_ADMISSIONS {
                return PeerResponse::Error(RequestError::Overloaded {
                    what: format!("{MAX_ADMISSIONS} admissions of rebuilt replicas are running"),
                });
            }
            running.insert((group, replica));
        }
        let service = Arc::downgrade(self);
        self.clock.spawn(async move {
            match paytx_raft::admit::admit(&raft, replica, addr).await {
                Ok(()) => tracing::info!(%group, replica, "rebuilt replica admitted"),
                Err(reason) => tracing::warn!(%group, replica, %reason, "admission of a rebuilt replica stopped"),
            }
            if let Some(service) = service.upgrade() {
                service.admissions.lock().unwrap_or_else(|p| p.into_inner()).remove(&(group, replica));
            }
        });
        PeerResponse::Admission(Admission::InProgress)
    }

    async fn local_decision(&self, txn: TxnId) -> Result<DecisionItem, RequestError> {
        match self.coordinator() {
            Some(parts) => parts.driver.send(QueryDecision(txn)).await.unwrap_or(Err(RequestError::ShuttingDown)),
            None => Err(RequestError::NoLeader { leader_hint: None }),
        }
    }

    /// Asks the coordinator group for the decision of `txn`: this node's
    /// replica first, then the leader it names, then every other node.
    async fn query_decision(&self, txn: TxnId) -> Result<paytx_participants::Decide, String> {
        let hint = match self.local_decision(txn).await {
            Ok(DecisionItem { commit, at_ms, .. }) => return Ok(paytx_participants::Decide { txn, commit, at_ms }),
            Err(RequestError::NoLeader { leader_hint }) => leader_hint,
            Err(e) => return Err(e.to_string()),
        };
        let mut last = String::from("no node answered");
        for node in self.leader_candidates(hint) {
            match self.transport.call(node, PeerRequest::QueryDecision { txn }, self.peer_timeout_ms).await {
                Ok(PeerResponse::Decision { commit, at_ms }) => {
                    return Ok(paytx_participants::Decide { txn, commit, at_ms })
                }
                Ok(PeerResponse::Error(e @ RequestError::InProgress { .. })) => return Err(e.to_string()),
                Ok(other) => last = format!("node {node}: {other:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    pub async fn status(&self) -> NodeStatusView {
        let mut shards: Vec<ShardStatus> = Vec::new();
        for handle in self.participants.values() {
            if let Some(status) = handle.status(self.id).await {
                shards.push(status);
            }
        }
        let mut view = NodeStatusView {
            node: self.id,
            raft_term: None,
            leader: None,
            coordinator_ready: false,
            last_applied_index: None,
            snapshot_index: None,
            undecided_txns: 0,
            unacked_txns: 0,
            shards,
            raft_proposals: 0,
            raft_proposed_commands: 0,
            disk_syncs: 0,
            disk_flushes: 0,
            local: Box::default(),
        };
        let free_space = self.free_space.lock().unwrap_or_else(|p| p.into_inner()).clone();
        view.local.disk_free_bytes = free_space.and_then(|source| source.available_bytes().ok());
        let audit_chain = self.audit_chain.lock().unwrap_or_else(|p| p.into_inner()).clone();
        view.local.audit_chain = audit_chain.and_then(|source| source());
        view.local.incarnation = self.incarnation;
        view.local.outcomes = self.metrics.totals();
        let counters = self.disk.sync_counters();
        view.disk_syncs = counters.syncs;
        view.disk_flushes = counters.flushes;
        if let Some(parts) = self.coordinator() {
            let metrics = parts.raft.metrics().borrow().clone();
            view.raft_term = Some(metrics.current_term);
            view.leader = metrics.current_leader.map(node_of);
            view.local.coordinator_voters = metrics.membership_config.membership().voter_ids().collect();
            view.last_applied_index = metrics.last_applied.map(|l| l.index);
            view.snapshot_index = metrics.snapshot.map(|l| l.index);
            let (undecided, unacked) = read_table(&parts.table).table.counts();
            view.undecided_txns = undecided;
            view.unacked_txns = unacked;
            if let Ok(driver) = parts.driver.send(GetDriverStatus).await {
                view.coordinator_ready = driver.is_leader;
                view.raft_proposals = driver.proposals;
                view.raft_proposed_commands = driver.proposed_commands;
            }
        }
        view
    }

    /// What this node's coordinator replica has applied of the batched log
    /// (`None` while the replica is shut down).
    pub fn batch_stats(&self) -> Option<paytx_coordinator::table::BatchStats> {
        self.coordinator().map(|parts| read_table(&parts.table).table.batch_stats())
    }

    /// Stops this node's coordinator replica (Raft and the 2PC driver). The
    /// participants keep serving; the other replicas elect a new leader.
    pub async fn shutdown_coordinator(&self) {
        let parts = self.coordinator.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(parts) = parts {
            parts.driver.do_send(StopDriver);
            if let Err(e) = parts.raft.shutdown().await {
                tracing::warn!(error = %e, "raft shutdown reported an error");
            }
            tracing::info!(node = self.id, "coordinator replica shut down");
        }
    }
}

/// Where in-doubt participants of this node ask for decisions.
pub(crate) struct NodeDecisions {
    pub(crate) service: Arc<OnceLock<Weak<NodeService>>>,
}

impl DecisionSource for NodeDecisions {
    fn query(&self, txn: TxnId) -> BoxFuture<Result<paytx_participants::Decide, String>> {
        let service = self.service.get().and_then(Weak::upgrade);
        Box::pin(async move {
            match service {
                Some(service) => service.query_decision(txn).await,
                None => Err("the node is starting or stopping".to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARD: ShardId = ShardId { kind: EntityKind::Account, index: 0 };

    fn not_leader(hint: Option<NodeId>) -> Result<(), ParticipantError> {
        Err(ParticipantError::NotLeader { shard: SHARD, leader_hint: hint })
    }

    #[test]
    fn a_batch_is_refused_whole_only_when_every_item_met_a_follower() {
        // Leadership lost while the batch ran: the caller's routing must
        // see the refusal (and its hint), not per-item failures.
        let refused = whole_batch_refusal(SHARD, &[not_leader(Some(3)), not_leader(Some(3))]);
        assert_eq!(
            refused,
            Some(PeerResponse::Error(RequestError::NotShardLeader { shard: SHARD, leader_hint: Some(3) }))
        );
        // One item answered: the batch is answered item by item.
        assert_eq!(whole_batch_refusal(SHARD, &[not_leader(Some(3)), Ok(())]), None);
        let blocked = Err(ParticipantError::Blocked { shard: SHARD });
        assert_eq!(whole_batch_refusal(SHARD, &[blocked, not_leader(None)]), None);
        assert_eq!(whole_batch_refusal::<()>(SHARD, &[]), None, "an empty batch is answered, not refused");
    }
}
