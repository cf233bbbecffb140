//! A production node: the [`NodeCore`] (participants, coordinator replica,
//! routing) on sled in its data directory, served over TCP — all on one
//! actix system (one thread).

use crate::net::{serve, Handler, PeerCredentials, ServerLimits, TcpTransport, TransportLimits};
use paytx_node::{
    FailStop, FreeSpace, LinkFilter, NodeConfig, NodeCore, NodeError, NodeService, PeerEndpoint, ReplicaBook,
};
use paytx_protocol::{BoxFuture, NodeId, PeerRequest, PeerResponse, Request, Response, Transport};
use paytx_storage::{Disk as _, SharedDisk, SledDisk};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The server-facing handle on a node: its [`PeerEndpoint`], which
/// answers the identity question while the node starts and hands
/// everything to the `NodeService` once it runs.
struct EndpointHandler(Arc<PeerEndpoint>);

impl Handler for EndpointHandler {
    fn request(&self, req: Request) -> BoxFuture<Response> {
        let endpoint = self.0.clone();
        Box::pin(async move { endpoint.handle_request(req, true).await })
    }

    fn peer(&self, req: PeerRequest) -> BoxFuture<PeerResponse> {
        let endpoint = self.0.clone();
        Box::pin(async move { endpoint.handle_peer(req).await })
    }
}

/// Options for tests and embedding.
#[derive(Clone, Default)]
pub struct NodeOptions {
    /// Drops chosen node-to-node messages (tests of lost messages).
    pub link_filter: LinkFilter,
    /// A listener bound in advance (embedded clusters bind port 0 first).
    pub listener: Option<Arc<Mutex<Option<std::net::TcpListener>>>>,
    /// Where the full-disk check reads free space (default: the file
    /// system of the data directory). Tests inject a full disk here.
    pub free_space: Option<Arc<dyn FreeSpace>>,
}

/// The free space of the file system holding a directory (statvfs), read
/// at most every [`FREE_SPACE_MAX_AGE_MS`]: every prepare asks, and one
/// `statfs` per prepare was 0.7% of a profile of `paytx bench`.
pub struct DirFreeSpace {
    dir: std::path::PathBuf,
    last: Mutex<Option<(std::time::Instant, u64)>>,
}

/// How old a free-space reading may be (a disk fills far slower).
pub const FREE_SPACE_MAX_AGE_MS: u64 = 100;

impl DirFreeSpace {
    pub fn new(dir: std::path::PathBuf) -> Self {
        DirFreeSpace { dir, last: Mutex::new(None) }
    }
}

impl FreeSpace for DirFreeSpace {
    fn available_bytes(&self) -> std::io::Result<u64> {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, bytes)) = *last {
            if now.duration_since(at) < std::time::Duration::from_millis(FREE_SPACE_MAX_AGE_MS) {
                return Ok(bytes);
            }
        }
        let bytes = fs2::available_space(&self.dir)?;
        *last = Some((now, bytes));
        Ok(bytes)
    }
}

/// Deletes a node's data directory, for `paytx node --rebuild`: the node
/// then starts empty and, since its peers saw it before, rejoins every
/// group under a new replica id (`paytx_node::identity`). Refuses a
/// directory that does not look like a paytx data directory (no sled
/// database, no durable watermark), so a mistyped path deletes nothing.
pub fn wipe_data_dir(dir: &std::path::Path) -> Result<(), String> {
    if !dir.exists() {
        return Ok(());
    }
    let looks_like_ours = ["conf", "db", paytx_storage::watermark::WATERMARK_FILE].iter().any(|f| dir.join(f).exists());
    let empty = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?.next().is_none();
    if !looks_like_ours && !empty {
        return Err(format!(
            "{} holds no sled database or durable watermark: not a paytx data directory, so not deleting it",
            dir.display()
        ));
    }
    std::fs::remove_dir_all(dir).map_err(|e| format!("cannot delete {}: {e}", dir.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot recreate {}: {e}", dir.display()))
}

/// A running node. Must be started and used inside an actix system.
pub struct Node {
    core: NodeCore,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    disk: SledDisk,
    /// The open-platform HTTP API, when `http_listen` is set.
    gateway: Option<paytx_gateway::RunningGateway>,
    /// The admin listener (metrics, health, admin API, console), when
    /// `admin_listen` is set.
    admin: Option<crate::admin::RunningAdmin>,
}

impl Node {
    pub async fn start(config: NodeConfig, options: NodeOptions) -> Result<Node, NodeError> {
        config.validate().map_err(|e| NodeError::Config(e.to_string()))?;
        let storage_error = |reason: String| NodeError::Storage { dir: config.data_dir.display().to_string(), reason };
        std::fs::create_dir_all(&config.data_dir).map_err(|e| storage_error(e.to_string()))?;
        let sled_disk = SledDisk::open(&config.data_dir, config.fsync).map_err(|e| storage_error(e.to_string()))?;
        let disk: SharedDisk = Arc::new(sled_disk.clone());

        let listen_error = |e: std::io::Error| NodeError::Listen { addr: config.listen, reason: e.to_string() };
        let prebound = options.listener.as_ref().and_then(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).take());
        let listener = match prebound {
            Some(std_listener) => {
                std_listener.set_nonblocking(true).map_err(listen_error)?;
                tokio::net::TcpListener::from_std(std_listener).map_err(listen_error)?
            }
            None => tokio::net::TcpListener::bind(config.listen).await.map_err(listen_error)?,
        };
        let addr = listener.local_addr().map_err(listen_error)?;

        let secret: Arc<[u8]> = Arc::from(config.cluster_secret.as_bytes());
        let cluster_digest = config.cluster_digest();
        let transport_limits = TransportLimits {
            auth: Some(PeerCredentials {
                node: config.node_id,
                secret: secret.clone(),
                config: cluster_digest.clone(),
            }),
            ..TransportLimits::default()
        };
        let remote: Arc<dyn Transport> = Arc::new(TcpTransport::new(config.peer_map(), transport_limits));
        let book = ReplicaBook::open(disk.clone()).map_err(|e| storage_error(e.to_string()))?;
        let endpoint = PeerEndpoint::new(book);

        // Serve before the core starts: a node on an empty data directory
        // asks every peer whether it ran before, and the peers may be
        // starting too (see `paytx_node::identity`).
        let (shutdown, shutdown_rx) = watch::channel(false);
        let limits = ServerLimits {
            max_frame_bytes: config.limits.max_frame_bytes,
            max_connections: config.limits.max_connections,
            max_in_flight_per_connection: config.limits.max_in_flight_per_connection,
            max_in_flight_per_node: config.limits.max_in_flight_per_node,
            idle_timeout_ms: config.limits.idle_timeout_ms,
            frame_read_timeout_ms: config.limits.frame_read_timeout_ms,
            peer_secret: Some(secret),
            peer_config: Some(cluster_digest),
            counters: crate::net::ServerCounters::default(),
        };
        let server_counters = limits.counters.clone();
        let server = tokio::spawn(serve(listener, Arc::new(EndpointHandler(endpoint.clone())), limits, shutdown_rx));
        let core = match NodeCore::start(&config, disk, remote, options.link_filter.clone(), endpoint).await {
            Ok(core) => core,
            Err(e) => {
                let _ = shutdown.send(true);
                let _ = server.await;
                return Err(e);
            }
        };
        let free_space =
            options.free_space.clone().unwrap_or_else(|| Arc::new(DirFreeSpace::new(config.data_dir.clone())));
        core.set_free_space(free_space);

        let gateway = match config.http_listen {
            Some(http) => match crate::gateway::start(&config, core.service(), http).await {
                Ok(gateway) => Some(gateway),
                Err(e) => {
                    let _ = shutdown.send(true);
                    let _ = server.await;
                    core.stop().await;
                    return Err(NodeError::Config(format!("the HTTP API did not start: {e}")));
                }
            },
            None => None,
        };
        let admin = match config.admin_listen {
            Some(listen) => {
                let http_metrics = gateway.as_ref().map(|g| g.http_metrics().clone());
                match crate::admin::start(&config, core.service(), server_counters, http_metrics, listen).await {
                    Ok(admin) => Some(admin),
                    Err(e) => {
                        if let Some(gateway) = gateway {
                            gateway.stop().await;
                        }
                        let _ = shutdown.send(true);
                        let _ = server.await;
                        core.stop().await;
                        return Err(NodeError::Config(format!("the admin listener did not start: {e}")));
                    }
                }
            }
            None => None,
        };
        // Fail-stop: the core stops its replica and shards; stop serving too
        // (connections get `ShuttingDown`; the owner learns why from
        // `fail_stop()`).
        let tripped = core.fail_stop().tripped();
        let stop_serving = shutdown.clone();
        tokio::spawn(async move {
            let _reason = tripped.await;
            let _ = stop_serving.send(true);
        });
        tracing::info!(node = config.node_id, %addr, "node started");
        Ok(Node { core, addr, shutdown, server, disk: sled_disk, gateway, admin })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the open-platform HTTP API listens, if it does.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().map(|g| g.addr())
    }

    /// Where the admin listener serves, if it does.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr())
    }

    pub fn id(&self) -> NodeId {
        self.core.service().id()
    }

    pub fn service(&self) -> Arc<NodeService> {
        self.core.service()
    }

    /// Trips when a disk write or fsync fails: the node has stopped itself.
    pub fn fail_stop(&self) -> FailStop {
        self.core.fail_stop()
    }

    pub async fn shutdown_coordinator(&self) {
        self.core.shutdown_coordinator().await;
    }

    /// Stops serving, shuts the replica and the shards down, syncs the disk.
    pub async fn shutdown(self) {
        let id = self.id();
        if let Some(admin) = self.admin {
            admin.stop().await;
        }
        if let Some(gateway) = self.gateway {
            gateway.stop().await;
        }
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        self.core.stop().await;
        if let Err(e) = self.disk.sync().await {
            tracing::error!(error = %e, "final sync failed");
        }
        tracing::info!(node = id, "node stopped");
    }
}
