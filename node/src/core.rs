//! [`NodeCore`]: assembling one node — its participant shards, its
//! coordinator replica and 2PC driver, and the [`NodeService`] that routes
//! between them — on a given `Disk` and remote `Transport`.

use crate::config::NodeConfig;
use crate::endpoint::PeerEndpoint;
use crate::fail_stop::{FailStop, FailStopDisk};
use crate::free_space::FreeSpace;
use crate::link::{LinkFilter, NodeTransport};
use crate::service::{CoordinatorParts, NodeDecisions, NodeService};
use crate::shards::ShardHandle;
use actix::prelude::*;
use paytx_coordinator::engine::EngineConfig;
use paytx_coordinator::{CoordinatorDriver, DriverConfig};
use paytx_participants::group::{start_group, GroupStart};
use paytx_participants::{ParticipantActor, ParticipantConfig};
use paytx_protocol::batcher::BatchLimits;
use paytx_protocol::clock::NodeClock;
use paytx_protocol::messages::RaftGroup;
use paytx_protocol::{ShardId, Transport};
use paytx_raft::network::ReplicaRecorder;
use paytx_storage::SharedDisk;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot open the data directory {dir}: {reason}")]
    Storage { dir: String, reason: String },
    #[error("cannot listen on {addr}: {reason} (is another node using the port?)")]
    Listen { addr: std::net::SocketAddr, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("coordinator replica: {0}")]
    Coordinator(String),
    #[error("participant shard {shard}: {reason}")]
    Participant { shard: ShardId, reason: String },
    #[error("cannot settle which incarnation of the node this data directory is: {0}")]
    Identity(String),
}

/// A started node, minus its sockets. Must be started inside an actix
/// system (the production thread or the simulator's).
pub struct NodeCore {
    service: Arc<NodeService>,
}

/// Refuses a data directory whose shard was written in the other layout:
/// a single-copy journal under a replicated configuration would be ignored
/// (its money silently absent), and a replica's Raft log under a
/// single-copy one likewise. Changing `replicas` on an existing cluster is
/// not supported (README, "Configuration").
fn check_shard_layout(disk: &SharedDisk, shard: ShardId, replicated: bool) -> Result<(), NodeError> {
    let unreadable = |e: paytx_storage::DiskError| NodeError::Participant { shard, reason: e.to_string() };
    let journal = disk.last(&paytx_participants::Journal::space_name(shard)).map_err(unreadable)?.is_some();
    let group_log = format!("{}raft-log", paytx_participants::group::keyspace_prefix(shard));
    let replica = disk.last(&group_log).map_err(unreadable)?.is_some();
    let (found, wanted) = match (replicated, journal, replica) {
        (true, true, _) => ("a single-copy journal", "replicas > 1"),
        (false, _, true) => ("a replica's Raft log", "replicas = 1"),
        _ => return Ok(()),
    };
    Err(NodeError::Config(format!(
        "the data directory holds {found} of shard {shard}, but [shards] says {wanted}: \
         a cluster keeps the shard layout it was created with"
    )))
}

impl NodeCore {
    /// Starts the node of `config` on `disk`, talking to other nodes through
    /// `remote` (calls to itself never leave the process). `endpoint` is
    /// already answering peers (it must, for the identity question below)
    /// and serves the node's `NodeService` once this returns.
    pub async fn start(
        config: &NodeConfig,
        disk: SharedDisk,
        remote: Arc<dyn Transport>,
        link_filter: LinkFilter,
        endpoint: Arc<PeerEndpoint>,
    ) -> Result<NodeCore, NodeError> {
        config.validate().map_err(|e| NodeError::Config(e.to_string()))?;
        // The node's clock: tokio's, or the one the simulator set for this
        // node's task (`paytx_protocol::clock`). Every component built
        // below takes it, and every task spawned below carries it.
        let clock = NodeClock::current();
        // First of all: which incarnation of this node the disk is. An empty
        // directory of a node that ran before must not vote as its old self.
        let peer_ids: Vec<u64> = config.peer_map().keys().copied().collect();
        let identity =
            crate::identity::resolve(&disk, config.node_id, &peer_ids, &remote, config.limits.peer_timeout_ms)
                .await
                .map_err(|e| NodeError::Identity(e.to_string()))?;
        let me = identity.replica();
        let recorder: Arc<dyn ReplicaRecorder> = Arc::new(endpoint.book().clone());
        // Every component writes through this wrapper, so the first write or
        // fsync error anywhere stops the whole node (see `fail_stop`).
        let fail_stop = FailStop::new();
        let metrics = crate::metrics::NodeMetrics::new(config.shards.shards_on(config.node_id));
        let disk: SharedDisk = Arc::new(FailStopDisk::new(disk, fail_stop.clone()));
        let disk: SharedDisk = Arc::new(crate::timed_disk::SyncTimedDisk::new(disk, metrics.disk_sync_latency()));
        let service_slot: Arc<OnceLock<Weak<NodeService>>> = Arc::new(OnceLock::new());
        let transport: Arc<dyn Transport> = Arc::new(NodeTransport::new(
            config.node_id,
            service_slot.clone(),
            remote,
            link_filter,
            config.limits.peer_timeout_ms,
        ));

        // Participants first: a shard must be able to vote as soon as the
        // coordinator re-drives its prepared transactions.
        let seed_base = config.seed.unwrap_or_else(rand::random);
        let mut participants = BTreeMap::new();
        for shard in config.shards.shards_on(config.node_id) {
            check_shard_layout(&disk, shard, config.shards.is_replicated())?;
            let mut participant_config = ParticipantConfig::new(shard);
            participant_config.channels = config.channels.clone();
            participant_config.rng_seed = seed_base ^ (u64::from(shard.kind.tag()) << 32 | u64::from(shard.index));
            participant_config.in_doubt_after_ms = config.coordinator.in_doubt_after_ms;
            participant_config.max_prepared = config.limits.max_prepared_per_shard;
            participant_config.max_records = config.limits.max_records_per_shard;
            // A waiting prepare must still answer well before the
            // coordinator's deadline.
            participant_config.lock_wait_ms =
                paytx_participants::config::DEFAULT_LOCK_WAIT_MS.min(config.coordinator.prepare_timeout_ms / 2);
            let decisions = Arc::new(NodeDecisions { service: service_slot.clone() });
            let handle = if config.shards.is_replicated() {
                let peers = config.peer_map();
                let members = config
                    .shards
                    .replicas_of(shard)
                    .into_iter()
                    .map(|id| (id, peers.get(&id).map(|addr| addr.to_string()).unwrap_or_default()))
                    .collect();
                let start = GroupStart {
                    replica: me,
                    rebuilt: identity.rebuilt(),
                    participant: participant_config,
                    members,
                    raft: config.raft.clone(),
                    max_frame_bytes: config.limits.max_frame_bytes as usize,
                    preferred: config.shards.node_of(shard) == Some(config.node_id),
                };
                let group = start_group(start, disk.clone(), transport.clone(), recorder.clone(), decisions)
                    .await
                    .map_err(|e| NodeError::Participant { shard, reason: e.to_string() })?;
                ShardHandle::Replicated { front: group.front, raft: group.raft, state: group.state }
            } else {
                let actor = ParticipantActor::open(participant_config, disk.clone(), decisions)
                    .map_err(|e| NodeError::Participant { shard, reason: e.to_string() })?;
                ShardHandle::Single(actor.start())
            };
            participants.insert(shard, handle);
        }

        // Transaction ids of this incarnation number above every earlier one.
        let seq_base = paytx_coordinator::epoch::next_seq_base(&disk)
            .await
            .map_err(|e| NodeError::Coordinator(format!("cannot bump the coordinator epoch: {e}")))?;
        let max_frame_bytes = config.limits.max_frame_bytes as usize;
        let replica = paytx_coordinator::start_replica(
            me,
            disk.clone(),
            transport.clone(),
            recorder.clone(),
            &config.raft,
            max_frame_bytes,
        )
        .await
        .map_err(|e| NodeError::Coordinator(e.to_string()))?;
        let batch_bytes = config.raft.batch_bytes(max_frame_bytes);
        let max_in_flight_txns = config.coordinator.max_in_flight_txns;
        let driver_config = DriverConfig {
            node: config.node_id,
            shard_map: config.shards.clone(),
            engine: EngineConfig {
                prepare_timeout_ms: config.coordinator.prepare_timeout_ms,
                decide_retry_ms: config.coordinator.decide_retry_ms,
                max_decide_retry_ms: config.coordinator.max_decide_retry_ms,
                max_in_flight_txns,
                max_finishing_txns: config.coordinator.max_finishing_txns,
                max_ops_per_txn: config.limits.max_ops_per_txn,
                seq_base,
                max_command_bytes: batch_bytes,
                ..EngineConfig::default()
            },
            tick_ms: 20,
            key_retention_ms: config.raft.key_retention_secs.saturating_mul(1_000),
            peer_timeout_ms: config.limits.peer_timeout_ms,
            batch: BatchLimits {
                max_items: usize::try_from(config.raft.max_batch_commands).unwrap_or(usize::MAX),
                max_bytes: batch_bytes,
                max_in_flight: usize::try_from(config.raft.max_proposals_in_flight).unwrap_or(usize::MAX),
                // Each transaction has at most one command queued at a time,
                // plus Forgets and in-doubt queries.
                max_queued: max_in_flight_txns.saturating_mul(2).saturating_add(1_024),
            },
            election_timeout_max_ms: config.raft.election_timeout_max_ms,
        };
        let driver =
            CoordinatorDriver::new(driver_config, replica.raft.clone(), replica.table.clone(), transport.clone())
                .start();

        let service = Arc::new(NodeService {
            id: config.node_id,
            clock: clock.clone(),
            peers: config.peer_map().keys().copied().collect(),
            shard_map: config.shards.clone(),
            coordinator: Mutex::new(Some(CoordinatorParts {
                raft: replica.raft.clone(),
                driver,
                table: replica.table,
            })),
            participants,
            shard_leaders: paytx_protocol::routing::ShardLeaders::new(config.shards.clone()),
            transport,
            request_timeout_ms: config.limits.request_timeout_ms,
            peer_timeout_ms: config.limits.peer_timeout_ms,
            // Half a frame: the page travels inside a forward reply too.
            max_scan_page_bytes: config.limits.max_frame_bytes as usize / 2,
            fail_stop: fail_stop.clone(),
            free_space: Mutex::new(None),
            min_free_disk_bytes: config.limits.min_free_disk_bytes,
            disk: disk.clone(),
            metrics,
            audit_chain: Mutex::new(None),
            book: endpoint.book().clone(),
            incarnation: identity.incarnation,
            admissions: Mutex::new(BTreeSet::new()),
        });
        // Infallible: the slot is fresh and set exactly once, here.
        let _ = service_slot.set(Arc::downgrade(&service));
        endpoint.set_service(service.clone());

        // Fail-stop: once the latch trips, stop the replica and every shard.
        let watched = Arc::downgrade(&service);
        let tripped = fail_stop.tripped();
        clock.spawn(async move {
            let reason = tripped.await;
            if let Some(service) = watched.upgrade() {
                tracing::error!(node = service.id(), %reason, "stopping the coordinator replica and every shard");
                service.shutdown_coordinator().await;
                service.stop_participants();
            }
        });

        // A rebuilt node joins every group it belongs to under its new
        // replica id (learner, caught up, then voter in place of its old id).
        if identity.rebuilt() {
            let addr = config.listen.to_string();
            let timeout_ms = config.limits.peer_timeout_ms;
            clock.spawn(paytx_raft::admit::join(
                replica.raft.clone(),
                RaftGroup::Coordinator,
                me,
                addr.clone(),
                peer_ids.clone(),
                service.transport.clone(),
                timeout_ms,
            ));
            for (shard, handle) in &service.participants {
                if let Some(raft) = handle.raft() {
                    clock.spawn(paytx_raft::admit::join(
                        raft.clone(),
                        RaftGroup::Shard(*shard),
                        me,
                        addr.clone(),
                        config.shards.replicas_of(*shard),
                        service.transport.clone(),
                        timeout_ms,
                    ));
                }
            }
        }

        // Leaders go back to their preferred nodes once those keep up.
        let lowest = config.peer_map().keys().next().copied();
        if let Some(coordinator_preferred) = lowest {
            clock.spawn(crate::balance::run(
                Arc::downgrade(&service),
                config.raft.clone(),
                coordinator_preferred,
                config.limits.peer_timeout_ms,
            ));
        }

        // The lowest-numbered node initialises a brand-new group; every other
        // node waits to be contacted by the leader. A rebuilt node never
        // initialises: the group exists.
        if lowest == Some(config.node_id) && !identity.rebuilt() {
            let members = config.peer_map().into_iter().map(|(id, a)| (id, a.to_string())).collect();
            paytx_coordinator::initialize_if_new(&replica.raft, &members)
                .await
                .map_err(|e| NodeError::Coordinator(e.to_string()))?;
        }
        Ok(NodeCore { service })
    }

    pub fn service(&self) -> Arc<NodeService> {
        self.service.clone()
    }

    /// The node's fail-stop latch: resolves `tripped()` with the disk error
    /// that stopped the node.
    pub fn fail_stop(&self) -> FailStop {
        self.service.fail_stop().clone()
    }

    /// Where the full-disk check reads the free space (unset: no check).
    pub fn set_free_space(&self, source: Arc<dyn FreeSpace>) {
        self.service.set_free_space(source);
    }

    /// Stops the coordinator replica (Raft and the driver); participants go on.
    pub async fn shutdown_coordinator(&self) {
        self.service.shutdown_coordinator().await;
    }

    /// Stops everything this node runs.
    pub async fn stop(self) {
        self.service.shutdown_coordinator().await;
        self.service.stop_participants();
    }
}
