//! `Cluster`: an in-process paytx cluster for embedding, demos and tests.
//!
//! Each node runs on its own OS thread with its own actix system, exactly as
//! `paytx node` runs in its own process: real TCP on loopback between nodes
//! and clients, real sled in the data directory. (Threads live here, in the
//! embedding facade; protocol code never starts one.)
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use paytx::protocol::{AccountId, Currency, Money, Operation, TxnRequest};
//! let cluster = paytx::Cluster::start(paytx::ClusterOptions::default()).await?;
//! let client = cluster.client().await?;
//! let open = TxnRequest::new("open-1", vec![
//!     Operation::OpenAccount { account: AccountId(1), currency: Currency::CNY, initial_minor: 10_000 },
//!     Operation::OpenAccount { account: AccountId(2), currency: Currency::CNY, initial_minor: 0 },
//! ]);
//! client.submit(open).await?;
//! let pay = TxnRequest::new("pay-1", vec![
//!     Operation::Debit { account: AccountId(1), amount: Money::new(2_500, Currency::CNY) },
//!     Operation::Credit { account: AccountId(2), amount: Money::new(2_500, Currency::CNY) },
//! ]);
//! assert!(client.submit(pay).await?.outcome.is_committed());
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```

use crate::client::{Client, ClientError};
use crate::node::{Node, NodeOptions};
use paytx_coordinator::RaftSettings;
use paytx_node::{CoordinatorSettings, Limits, LinkFilter, NodeConfig};
use paytx_participants::ChannelConfig;
use paytx_protocol::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How to start a [`Cluster`].
#[derive(Clone)]
pub struct ClusterOptions {
    /// Number of nodes; each hosts a coordinator replica and one shard of
    /// each participant kind.
    pub nodes: usize,
    /// Where the nodes keep their data (`node-<id>` inside). `None`: a
    /// temporary directory removed when the cluster is dropped.
    pub data_dir: Option<PathBuf>,
    /// fsync at every durability point (default). Off only for benchmarks.
    pub fsync: bool,
    pub raft: RaftSettings,
    pub coordinator: CoordinatorSettings,
    pub limits: Limits,
    pub channels: Vec<ChannelConfig>,
    /// Seed of the nodes' RNGs (channel models). `None`: from the OS.
    pub seed: Option<u64>,
    /// Drops chosen node-to-node messages (tests).
    pub link_filter: LinkFilter,
    /// Serve the open-platform HTTP API from every node (see [`HttpOptions`]).
    pub http: Option<HttpOptions>,
    /// Serve the admin listener from every node (see [`AdminOptions`]).
    pub admin: Option<AdminOptions>,
    /// Copies of every participant shard, at most one per node: 3 (the
    /// default) = every shard a Raft group of three voters; 1 = single-copy.
    pub shard_replicas: u32,
    /// Shards of each participant kind (`ShardMap::shards_per_kind`).
    /// `None` (the default): `ShardMap::for_replicas` — with three nodes
    /// and three replicas one of each kind, single-copy one of each kind
    /// per node.
    pub shards_per_kind: Option<std::num::NonZeroUsize>,
}

/// The admin listeners of an embedded cluster (metrics, health, admin API,
/// console): node `i` (1-based) listens on `base` with port
/// `base.port() + i - 1` (or an ephemeral port when `base.port()` is 0).
#[derive(Clone, Debug)]
pub struct AdminOptions {
    pub base: SocketAddr,
    /// The admin key for `/admin/v1` and `/console`; `None`: the one of
    /// [`HttpOptions::gateway`] (`admin_key_file`), when set.
    pub admin_key_file: Option<PathBuf>,
}

/// The open-platform API of an embedded cluster: node `i` (1-based) listens
/// on `base` with port `base.port() + i - 1` (or an ephemeral port when
/// `base.port()` is 0).
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub base: SocketAddr,
    pub gateway: paytx_gateway::GatewayConfig,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            data_dir: None,
            fsync: true,
            raft: RaftSettings::default(),
            coordinator: CoordinatorSettings::default(),
            limits: Limits::default(),
            channels: paytx_participants::default_channels(),
            seed: None,
            link_filter: LinkFilter::default(),
            http: None,
            admin: None,
            shard_replicas: paytx_protocol::ops::DEFAULT_SHARD_REPLICAS,
            shards_per_kind: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot prepare the data directory: {0}")]
    DataDir(std::io::Error),
    #[error("cannot bind a loopback port: {0}")]
    Bind(std::io::Error),
    #[error("node {node} did not start: {reason}")]
    NodeStart { node: NodeId, reason: String },
    #[error("no coordinator leader after {waited_ms} ms")]
    NoLeader { waited_ms: u64 },
    #[error("node {0} is not part of this cluster")]
    UnknownNode(NodeId),
    #[error(transparent)]
    Client(#[from] ClientError),
}

enum NodeCommand {
    ShutdownCoordinator(oneshot::Sender<()>),
    Stop,
}

struct NodeThread {
    commands: mpsc::UnboundedSender<NodeCommand>,
    thread: std::thread::JoinHandle<()>,
}

/// An in-process cluster. Stop it with [`Cluster::shutdown`] (dropping it
/// also stops every node, blocking until they are down).
pub struct Cluster {
    _temp: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    configs: BTreeMap<NodeId, NodeConfig>,
    nodes: Mutex<BTreeMap<NodeId, NodeThread>>,
    link_filter: LinkFilter,
    http_addrs: Mutex<BTreeMap<NodeId, SocketAddr>>,
    admin_addrs: Mutex<BTreeMap<NodeId, SocketAddr>>,
}

/// Where a started node serves.
struct Started {
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

/// What a started node reports.
type Ready = oneshot::Receiver<Result<Started, String>>;

fn spawn_node(config: NodeConfig, options: NodeOptions) -> (NodeThread, Ready) {
    let (commands, mut inbox) = mpsc::unbounded_channel();
    let (ready, ready_rx) = oneshot::channel();
    let name = format!("paytx-node-{}", config.node_id);
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let node = match Node::start(config, options).await {
                    Ok(node) => node,
                    Err(e) => {
                        let _ = ready.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready.send(Ok(Started { http: node.http_addr(), admin: node.admin_addr() }));
                while let Some(command) = inbox.recv().await {
                    match command {
                        NodeCommand::ShutdownCoordinator(done) => {
                            node.shutdown_coordinator().await;
                            let _ = done.send(());
                        }
                        NodeCommand::Stop => break,
                    }
                }
                node.shutdown().await;
            });
        })
        .expect("the OS can start a thread for a node");
    (NodeThread { commands, thread }, ready_rx)
}

impl Cluster {
    /// Starts every node and waits until a coordinator leader is ready.
    pub async fn start(options: ClusterOptions) -> Result<Cluster, ClusterError> {
        let (temp, data_dir) = match &options.data_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let temp = tempfile::Builder::new().prefix("paytx-").tempdir().map_err(ClusterError::DataDir)?;
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
        };
        std::fs::create_dir_all(&data_dir).map_err(ClusterError::DataDir)?;
        // Reuse the ports of an earlier run on the same directory so the
        // Raft membership (which records addresses) stays valid.
        let ports_file = data_dir.join("ports.toml");
        let remembered: BTreeMap<String, SocketAddr> =
            std::fs::read_to_string(&ports_file).ok().and_then(|t| toml::from_str(&t).ok()).unwrap_or_default();
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for id in 1..=options.nodes as NodeId {
            let wanted =
                remembered.get(&id.to_string()).copied().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
            let listener = std::net::TcpListener::bind(wanted).map_err(ClusterError::Bind)?;
            addrs.insert(id, listener.local_addr().map_err(ClusterError::Bind)?);
            listeners.insert(id, listener);
        }
        let ports: BTreeMap<String, SocketAddr> = addrs.iter().map(|(id, a)| (id.to_string(), *a)).collect();
        let ports_text = toml::to_string(&ports).expect("a map of addresses serialises to TOML");
        std::fs::write(&ports_file, ports_text).map_err(ClusterError::DataDir)?;

        // A fresh secret per start: it lives in the configs, not the data.
        let secret = NodeConfig::random_secret();
        let mut configs = BTreeMap::new();
        let ids: Vec<NodeId> = addrs.keys().copied().collect();
        let shards = match options.shards_per_kind {
            Some(per_kind) => {
                paytx_protocol::ops::ShardMap::shards_per_kind(&ids, per_kind).with_replicas(options.shard_replicas)
            }
            None => paytx_protocol::ops::ShardMap::for_replicas(&ids, options.shard_replicas),
        };
        for id in addrs.keys() {
            let mut config = NodeConfig::local(*id, &addrs, data_dir.join(format!("node-{id}")), &secret);
            config.fsync = options.fsync;
            config.raft = options.raft.clone();
            config.coordinator = options.coordinator.clone();
            config.limits = options.limits.clone();
            config.channels = options.channels.clone();
            config.seed = options.seed.map(|s| s.wrapping_add(*id));
            config.shards = shards.clone();
            if let Some(http) = &options.http {
                let port = if http.base.port() == 0 { 0 } else { http.base.port().saturating_add(*id as u16 - 1) };
                config.http_listen = Some(SocketAddr::new(http.base.ip(), port));
                config.gateway = http.gateway.clone();
            }
            if let Some(admin) = &options.admin {
                let port = if admin.base.port() == 0 { 0 } else { admin.base.port().saturating_add(*id as u16 - 1) };
                config.admin_listen = Some(SocketAddr::new(admin.base.ip(), port));
                if let Some(key) = &admin.admin_key_file {
                    config.gateway.admin_key_file = key.clone();
                }
            }
            configs.insert(*id, config);
        }
        let cluster = Cluster {
            _temp: temp,
            data_dir,
            configs,
            nodes: Mutex::new(BTreeMap::new()),
            link_filter: options.link_filter.clone(),
            http_addrs: Mutex::new(BTreeMap::new()),
            admin_addrs: Mutex::new(BTreeMap::new()),
        };
        let mut waits = Vec::new();
        for (id, listener) in listeners {
            let config = cluster.configs[&id].clone();
            let node_options = NodeOptions {
                link_filter: cluster.link_filter.clone(),
                listener: Some(Arc::new(Mutex::new(Some(listener)))),
                free_space: None,
            };
            let (thread, ready) = spawn_node(config, node_options);
            cluster.lock_nodes().insert(id, thread);
            waits.push((id, ready));
        }
        for (id, ready) in waits {
            match ready.await {
                Ok(Ok(started)) => cluster.note_started(id, &started),
                Ok(Err(reason)) => return Err(ClusterError::NodeStart { node: id, reason }),
                Err(_) => return Err(ClusterError::NodeStart { node: id, reason: "the node thread ended".into() }),
            }
        }
        cluster.wait_for_leader(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, NodeThread>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note_started(&self, node: NodeId, started: &Started) {
        for (slot, addr) in [(&self.http_addrs, started.http), (&self.admin_addrs, started.admin)] {
            let mut addrs = slot.lock().unwrap_or_else(|p| p.into_inner());
            match addr {
                Some(addr) => addrs.insert(node, addr),
                None => addrs.remove(&node),
            };
        }
    }

    /// Where node `node` serves its admin listener (when it does).
    pub fn admin_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.admin_addrs.lock().unwrap_or_else(|p| p.into_inner()).get(&node).copied()
    }

    /// Where node `node` serves the open-platform HTTP API (when it does).
    pub fn http_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.http_addrs.lock().unwrap_or_else(|p| p.into_inner()).get(&node).copied()
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.configs.keys().copied().collect()
    }

    pub fn addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.configs.get(&node).map(|c| c.listen)
    }

    /// Every node's client address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.configs.values().map(|c| c.listen).collect()
    }

    pub fn config(&self, node: NodeId) -> Option<&NodeConfig> {
        self.configs.get(&node)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The filter every node's outgoing messages pass (tests).
    pub fn link_filter(&self) -> &LinkFilter {
        &self.link_filter
    }

    /// A client connected to every node (it fails over between them).
    pub async fn client(&self) -> Result<Client, ClientError> {
        Client::connect(self.addrs()).await
    }

    /// The node whose coordinator is the ready leader, if any.
    pub async fn leader(&self) -> Option<NodeId> {
        let running: Vec<NodeId> = self.lock_nodes().keys().copied().collect();
        for id in running {
            let Some(addr) = self.addr(id) else { continue };
            let Ok(client) = Client::connect_with(
                vec![addr],
                crate::client::ClientConfig { request_timeout_ms: 1_000, max_retries: 0, ..Default::default() },
            )
            .await
            else {
                continue;
            };
            if let Ok(status) = client.node_status().await {
                if status.coordinator_ready {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Waits until some node leads and accepts transactions.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, ClusterError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader().await {
                return Ok(leader);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::NoLeader { waited_ms: timeout.as_millis() as u64 });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Shuts down the coordinator replica of `node` (its participants keep
    /// running), as when a coordinator process dies.
    pub async fn shutdown_coordinator(&self, node: NodeId) -> Result<(), ClusterError> {
        let (done, wait) = oneshot::channel();
        let sent =
            self.lock_nodes().get(&node).map(|t| t.commands.send(NodeCommand::ShutdownCoordinator(done)).is_ok());
        match sent {
            Some(true) => {
                let _ = wait.await;
                Ok(())
            }
            _ => Err(ClusterError::UnknownNode(node)),
        }
    }

    /// Stops `node` entirely: its server, replica and participants; sled is
    /// closed. Its data directory stays for [`Cluster::restart_node`].
    pub async fn stop_node(&self, node: NodeId) -> Result<(), ClusterError> {
        let thread = self.lock_nodes().remove(&node).ok_or(ClusterError::UnknownNode(node))?;
        let _ = thread.commands.send(NodeCommand::Stop);
        let _ = tokio::task::spawn_blocking(move || thread.thread.join()).await;
        Ok(())
    }

    /// Starts a stopped node again on its data directory and address.
    pub async fn restart_node(&self, node: NodeId) -> Result<(), ClusterError> {
        let config = self.configs.get(&node).cloned().ok_or(ClusterError::UnknownNode(node))?;
        let options = NodeOptions { link_filter: self.link_filter.clone(), listener: None, free_space: None };
        let (thread, ready) = spawn_node(config, options);
        self.lock_nodes().insert(node, thread);
        match ready.await {
            Ok(Ok(started)) => {
                self.note_started(node, &started);
                Ok(())
            }
            Ok(Err(reason)) => Err(ClusterError::NodeStart { node, reason }),
            Err(_) => Err(ClusterError::NodeStart { node, reason: "the node thread ended".into() }),
        }
    }

    /// Stops `node`, deletes its data directory and starts it again: a disk
    /// lost. The node comes back empty and rejoins every group under a new
    /// replica id, catching up from its peers (`paytx node --rebuild`).
    pub async fn rebuild_node(&self, node: NodeId) -> Result<(), ClusterError> {
        let config = self.configs.get(&node).cloned().ok_or(ClusterError::UnknownNode(node))?;
        self.stop_node(node).await?;
        crate::node::wipe_data_dir(&config.data_dir).map_err(|reason| ClusterError::NodeStart { node, reason })?;
        self.restart_node(node).await
    }

    /// Stops every node and waits for them.
    pub async fn shutdown(self) {
        let ids = self.node_ids();
        for id in ids {
            let _ = self.stop_node(id).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let threads: Vec<NodeThread> = std::mem::take(&mut *self.lock_nodes()).into_values().collect();
        for thread in &threads {
            let _ = thread.commands.send(NodeCommand::Stop);
        }
        for thread in threads {
            let _ = thread.thread.join();
        }
    }
}
