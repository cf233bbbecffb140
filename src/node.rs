//! One paytx node: a coordinator replica (openraft + the 2PC driver), the
//! participant shards the shard map puts here, and the TCP server that
//! serves clients and peers — all on one actix system (one thread).
//!
//! [`NodeService`] is where every incoming message is handled: client
//! requests (`handle_request`) and peer requests (`handle_peer`). It also
//! routes: a transaction goes to the coordinator leader, a read goes to the
//! node owning the entity's shard, an in-doubt query goes to the leader.

use crate::config::NodeConfig;
use crate::link::{LinkFilter, NodeTransport};
use crate::net::{serve, Handler, ServerLimits, TcpTransport, TransportLimits};
use actix::prelude::*;
use paytx_coordinator::driver::{GetDriverStatus, QueryDecision, StopDriver, SubmitTxn};
use paytx_coordinator::engine::EngineConfig;
use paytx_coordinator::state_machine::{read_table, SharedTable};
use paytx_coordinator::{CoordinatorDriver, DriverConfig, Raft};
use paytx_participants::{DecisionSource, ParticipantActor, ParticipantConfig};
use paytx_protocol::messages::{NodeStatusView, ShardStatus};
use paytx_protocol::{
    BoxFuture, EntityKey, NodeId, PeerRequest, PeerResponse, Request, RequestError, Response, ShardId, ShardMap,
    Transport, TxnId,
};
use paytx_storage::{Disk as _, SharedDisk, SledDisk};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot open the data directory {dir}: {reason}")]
    Storage { dir: String, reason: String },
    #[error("cannot listen on {addr}: {reason} (is another node using the port?)")]
    Listen { addr: SocketAddr, reason: String },
    #[error("coordinator replica: {0}")]
    Coordinator(String),
    #[error("participant shard {shard}: {reason}")]
    Participant { shard: ShardId, reason: String },
}

/// The coordinator replica of a node, while it runs.
#[derive(Clone)]
struct CoordinatorParts {
    raft: Raft,
    driver: Addr<CoordinatorDriver>,
    table: SharedTable,
}

/// Handles everything a node receives.
pub struct NodeService {
    id: NodeId,
    peers: Vec<NodeId>,
    shard_map: ShardMap,
    coordinator: Mutex<Option<CoordinatorParts>>,
    participants: BTreeMap<ShardId, Addr<ParticipantActor>>,
    transport: Arc<dyn Transport>,
    request_timeout_ms: u64,
    peer_timeout_ms: u64,
}

fn error(e: RequestError) -> Response {
    Response::Error(e)
}

impl NodeService {
    fn coordinator(&self) -> Option<CoordinatorParts> {
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
        match tokio::time::timeout(budget, self.route_request(request, may_forward)).await {
            Ok(response) => response,
            Err(_) => error(RequestError::Timeout { timeout_ms }),
        }
    }

    async fn route_request(self: Arc<Self>, request: Request, may_forward: bool) -> Response {
        match request {
            Request::Submit(txn) => {
                let local = match self.coordinator() {
                    Some(parts) => match parts.driver.send(SubmitTxn(txn.clone())).await {
                        Ok(Ok(receipt)) => return Response::Submitted(receipt),
                        Ok(Err(RequestError::NoLeader { leader_hint })) => RequestError::NoLeader { leader_hint },
                        Ok(Err(e)) => return error(e),
                        Err(_) => RequestError::ShuttingDown,
                    },
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
                self.read(EntityKey::Account(account), Request::GetAccount(account), may_forward).await
            }
            Request::GetOrder(order) => self.read(EntityKey::Order(order), Request::GetOrder(order), may_forward).await,
            Request::GetCharge { channel, order } => {
                self.read(EntityKey::Channel(channel), Request::GetCharge { channel, order }, may_forward).await
            }
            Request::TxnStatus(key) => {
                let parts = self.coordinator();
                let leader_ready = match &parts {
                    Some(p) => p.driver.send(GetDriverStatus).await.map(|s| (s.is_leader, s.leader_hint)).ok(),
                    None => None,
                };
                match (parts, leader_ready) {
                    (Some(parts), Some((true, _))) => {
                        Response::TxnStatus(read_table(&parts.table).table.status_of_key(&key))
                    }
                    (_, hint) if may_forward => {
                        let hint = hint.and_then(|(_, h)| h);
                        let fallback = RequestError::NoLeader { leader_hint: hint };
                        self.forward_to_leader(Request::TxnStatus(key), hint, fallback).await
                    }
                    _ => error(RequestError::NoLeader { leader_hint: None }),
                }
            }
            Request::NodeStatus => Response::NodeStatus(self.status().await),
        }
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

    async fn read(&self, entity: EntityKey, request: Request, may_forward: bool) -> Response {
        let shard = self.shard_map.shard_of(entity);
        if let Some(actor) = self.participants.get(&shard) {
            let answer = match request {
                Request::GetAccount(account) => {
                    actor.send(paytx_participants::ReadAccount(account)).await.map(Response::Account)
                }
                Request::GetOrder(order) => actor.send(paytx_participants::ReadOrder(order)).await.map(Response::Order),
                Request::GetCharge { channel, order } => {
                    actor.send(paytx_participants::ReadCharge { channel, order }).await.map(Response::Charge)
                }
                _ => return error(RequestError::Internal("not a read".into())),
            };
            return answer.unwrap_or_else(|_| error(RequestError::ShuttingDown));
        }
        let Some(owner) = self.shard_map.node_of(shard).filter(|owner| *owner != self.id && may_forward) else {
            return error(RequestError::ShardUnavailable { shard });
        };
        match self.transport.call(owner, PeerRequest::Forward(request), self.request_timeout_ms).await {
            Ok(PeerResponse::Forwarded(response)) => response,
            Ok(other) => error(RequestError::Internal(format!("node {owner} answered a read with {other:?}"))),
            Err(e) => {
                tracing::debug!(error = %e, %shard, "read forward failed");
                error(RequestError::ShardUnavailable { shard })
            }
        }
    }

    /// A node-to-node request.
    pub async fn handle_peer(self: Arc<Self>, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::Raft { kind, payload } => match self.coordinator() {
                Some(parts) => {
                    PeerResponse::Raft(paytx_coordinator::network::handle_raft_rpc(&parts.raft, kind, &payload).await)
                }
                None => PeerResponse::Raft(Err(format!("the coordinator replica of node {} is shut down", self.id))),
            },
            PeerRequest::Prepare { txn, shard, ops } => match self.participants.get(&shard) {
                Some(actor) => match actor.send(paytx_participants::Prepare { txn, ops }).await {
                    Ok(Ok(vote)) => PeerResponse::Vote(vote),
                    Ok(Err(e)) => PeerResponse::Error(RequestError::Internal(e.to_string())),
                    Err(_) => PeerResponse::Error(RequestError::ShuttingDown),
                },
                None => PeerResponse::Error(RequestError::ShardUnavailable { shard }),
            },
            PeerRequest::Decide { txn, shard, commit } => match self.participants.get(&shard) {
                Some(actor) => match actor.send(paytx_participants::Decide { txn, commit }).await {
                    Ok(Ok(())) => PeerResponse::Acked,
                    Ok(Err(e)) => PeerResponse::Error(RequestError::Internal(e.to_string())),
                    Err(_) => PeerResponse::Error(RequestError::ShuttingDown),
                },
                None => PeerResponse::Error(RequestError::ShardUnavailable { shard }),
            },
            PeerRequest::QueryDecision { txn } => match self.local_decision(txn).await {
                Ok(commit) => PeerResponse::Decision { commit },
                Err(e) => PeerResponse::Error(e),
            },
            PeerRequest::Forward(request) => PeerResponse::Forwarded(self.handle_request(request, false).await),
        }
    }

    async fn local_decision(&self, txn: TxnId) -> Result<bool, RequestError> {
        match self.coordinator() {
            Some(parts) => parts.driver.send(QueryDecision(txn)).await.unwrap_or(Err(RequestError::ShuttingDown)),
            None => Err(RequestError::NoLeader { leader_hint: None }),
        }
    }

    /// Asks the coordinator group for the decision of `txn`: this node's
    /// replica first, then the leader it names, then every other node.
    async fn query_decision(&self, txn: TxnId) -> Result<bool, String> {
        let hint = match self.local_decision(txn).await {
            Ok(commit) => return Ok(commit),
            Err(RequestError::NoLeader { leader_hint }) => leader_hint,
            Err(e) => return Err(e.to_string()),
        };
        let mut last = String::from("no node answered");
        for node in self.leader_candidates(hint) {
            match self.transport.call(node, PeerRequest::QueryDecision { txn }, self.peer_timeout_ms).await {
                Ok(PeerResponse::Decision { commit }) => return Ok(commit),
                Ok(PeerResponse::Error(e @ RequestError::InProgress { .. })) => return Err(e.to_string()),
                Ok(other) => last = format!("node {node}: {other:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    pub async fn status(&self) -> NodeStatusView {
        let mut shards: Vec<ShardStatus> = Vec::new();
        for actor in self.participants.values() {
            if let Ok(status) = actor.send(paytx_participants::GetStatus).await {
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
        };
        if let Some(parts) = self.coordinator() {
            let metrics = parts.raft.metrics().borrow().clone();
            view.raft_term = Some(metrics.current_term);
            view.leader = metrics.current_leader;
            view.last_applied_index = metrics.last_applied.map(|l| l.index);
            view.snapshot_index = metrics.snapshot.map(|l| l.index);
            let (undecided, unacked) = read_table(&parts.table).table.counts();
            view.undecided_txns = undecided;
            view.unacked_txns = unacked;
            view.coordinator_ready = parts.driver.send(GetDriverStatus).await.map(|s| s.is_leader).unwrap_or(false);
        }
        view
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

/// The server-facing handle on a [`NodeService`].
struct ServiceHandler(Arc<NodeService>);

impl Handler for ServiceHandler {
    fn request(&self, req: Request) -> BoxFuture<Response> {
        Box::pin(self.0.clone().handle_request(req, true))
    }

    fn peer(&self, req: PeerRequest) -> BoxFuture<PeerResponse> {
        Box::pin(self.0.clone().handle_peer(req))
    }
}

/// Where in-doubt participants of this node ask for decisions.
struct NodeDecisions {
    service: Arc<OnceLock<Weak<NodeService>>>,
}

impl DecisionSource for NodeDecisions {
    fn query(&self, txn: TxnId) -> BoxFuture<Result<bool, String>> {
        let service = self.service.get().and_then(Weak::upgrade);
        Box::pin(async move {
            match service {
                Some(service) => service.query_decision(txn).await,
                None => Err("the node is starting or stopping".to_string()),
            }
        })
    }
}

/// Options for tests and embedding.
#[derive(Clone, Default)]
pub struct NodeOptions {
    /// Drops chosen node-to-node messages (tests of lost messages).
    pub link_filter: LinkFilter,
    /// A listener bound in advance (embedded clusters bind port 0 first).
    pub listener: Option<Arc<Mutex<Option<std::net::TcpListener>>>>,
}

/// A running node. Must be started and used inside an actix system.
pub struct Node {
    service: Arc<NodeService>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    disk: SledDisk,
}

impl Node {
    pub async fn start(config: NodeConfig, options: NodeOptions) -> Result<Node, NodeError> {
        config.validate().map_err(|e| NodeError::Coordinator(e.to_string()))?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| NodeError::Storage { dir: config.data_dir.display().to_string(), reason: e.to_string() })?;
        let sled_disk = SledDisk::open(&config.data_dir, config.fsync)
            .map_err(|e| NodeError::Storage { dir: config.data_dir.display().to_string(), reason: e.to_string() })?;
        let disk: SharedDisk = Arc::new(sled_disk.clone());

        let listener =
            match options.listener.as_ref().and_then(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).take()) {
                Some(std_listener) => {
                    std_listener
                        .set_nonblocking(true)
                        .map_err(|e| NodeError::Listen { addr: config.listen, reason: e.to_string() })?;
                    tokio::net::TcpListener::from_std(std_listener)
                        .map_err(|e| NodeError::Listen { addr: config.listen, reason: e.to_string() })?
                }
                None => tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|e| NodeError::Listen { addr: config.listen, reason: e.to_string() })?,
            };
        let addr =
            listener.local_addr().map_err(|e| NodeError::Listen { addr: config.listen, reason: e.to_string() })?;

        let service_slot: Arc<OnceLock<Weak<NodeService>>> = Arc::new(OnceLock::new());
        let remote = TcpTransport::new(config.peer_map(), TransportLimits::default());
        let transport: Arc<dyn Transport> = Arc::new(NodeTransport::new(
            config.node_id,
            service_slot.clone(),
            remote,
            options.link_filter.clone(),
            config.limits.peer_timeout_ms,
        ));

        // Participants first: a shard must be able to vote as soon as the
        // coordinator re-drives its prepared transactions.
        let seed_base = config.seed.unwrap_or_else(rand::random);
        let mut participants = BTreeMap::new();
        for shard in config.shards.shards_on(config.node_id) {
            let mut participant_config = ParticipantConfig::new(shard);
            participant_config.channels = config.channels.clone();
            participant_config.rng_seed = seed_base ^ (u64::from(shard.kind.tag()) << 32 | u64::from(shard.index));
            participant_config.in_doubt_after_ms = config.coordinator.in_doubt_after_ms;
            participant_config.max_prepared = config.limits.max_prepared_per_shard;
            let decisions = Arc::new(NodeDecisions { service: service_slot.clone() });
            let actor = ParticipantActor::open(participant_config, disk.clone(), decisions)
                .map_err(|e| NodeError::Participant { shard, reason: e.to_string() })?;
            participants.insert(shard, actor.start());
        }

        let replica = paytx_coordinator::start_replica(config.node_id, disk.clone(), transport.clone(), &config.raft)
            .await
            .map_err(|e| NodeError::Coordinator(e.to_string()))?;
        let driver_config = DriverConfig {
            node: config.node_id,
            shard_map: config.shards.clone(),
            engine: EngineConfig {
                prepare_timeout_ms: config.coordinator.prepare_timeout_ms,
                decide_retry_ms: config.coordinator.decide_retry_ms,
                max_in_flight_txns: config.coordinator.max_in_flight_txns,
                ..EngineConfig::default()
            },
            tick_ms: 20,
            peer_timeout_ms: config.limits.peer_timeout_ms,
        };
        let driver =
            CoordinatorDriver::new(driver_config, replica.raft.clone(), replica.table.clone(), transport.clone())
                .start();

        let service = Arc::new(NodeService {
            id: config.node_id,
            peers: config.peer_map().keys().copied().collect(),
            shard_map: config.shards.clone(),
            coordinator: Mutex::new(Some(CoordinatorParts {
                raft: replica.raft.clone(),
                driver,
                table: replica.table,
            })),
            participants,
            transport,
            request_timeout_ms: config.limits.request_timeout_ms,
            peer_timeout_ms: config.limits.peer_timeout_ms,
        });
        // Infallible: the slot is fresh and set exactly once, here.
        let _ = service_slot.set(Arc::downgrade(&service));

        let (shutdown, shutdown_rx) = watch::channel(false);
        let limits = ServerLimits {
            max_frame_bytes: config.limits.max_frame_bytes,
            max_connections: config.limits.max_connections,
            max_in_flight_per_connection: config.limits.max_in_flight_per_connection,
        };
        let server = tokio::spawn(serve(listener, Arc::new(ServiceHandler(service.clone())), limits, shutdown_rx));

        // The lowest-numbered node initialises a brand-new group; every other
        // node waits to be contacted by the leader.
        let lowest = config.peer_map().keys().next().copied();
        if lowest == Some(config.node_id) {
            let members = config.peer_map().into_iter().map(|(id, a)| (id, a.to_string())).collect();
            paytx_coordinator::initialize_if_new(&replica.raft, &members)
                .await
                .map_err(|e| NodeError::Coordinator(e.to_string()))?;
        }
        tracing::info!(node = config.node_id, %addr, "node started");
        Ok(Node { service, addr, shutdown, server, disk: sled_disk })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn id(&self) -> NodeId {
        self.service.id
    }

    pub fn service(&self) -> Arc<NodeService> {
        self.service.clone()
    }

    pub async fn shutdown_coordinator(&self) {
        self.service.shutdown_coordinator().await;
    }

    /// Stops serving, shuts the replica down and flushes the disk.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.service.shutdown_coordinator().await;
        let _ = self.server.await;
        if let Err(e) = self.disk.sync().await {
            tracing::error!(error = %e, "final sync failed");
        }
        tracing::info!(node = self.service.id, "node stopped");
    }
}
