//! The cluster under test: `paytx node` processes on loopback, one proxy per
//! directed link between them, and status queries through the client API.
//!
//! Node `i`'s config lists, for every other node `j`, the address of the
//! proxy of link `i→j`; its own entry is its real listen address. Clients
//! dial the nodes directly. So the harness controls every byte between
//! nodes and none between clients and nodes.

use crate::chaos::procs::{NodeProcs, ProcError};
use crate::chaos::proxy::{LinkProxy, Mode};
use crate::client::{Client, ClientConfig};
use crate::config::NodeConfig;
use anyhow::Context;
use paytx_protocol::messages::NodeStatusView;
use paytx_protocol::NodeId;
use rand::Rng;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bound on one status question to one node (a paused node never answers).
const STATUS_TIMEOUT_MS: u64 = 1_000;
/// Restart attempts when a node exits right after starting.
const RESTART_ATTEMPTS: u32 = 5;

pub struct ChaosCluster {
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    /// Proxy of each directed link (from, to).
    proxies: BTreeMap<(NodeId, NodeId), LinkProxy>,
    pub procs: NodeProcs,
    status_client: Option<Client>,
    /// Each node's data directory (a wipe deletes it).
    data_dirs: BTreeMap<NodeId, PathBuf>,
}

impl ChaosCluster {
    /// Picks ports, starts the proxies, writes the configs into `dir`.
    /// Nodes are not started yet.
    pub async fn prepare(
        dir: &Path,
        nodes: u64,
        seed: u64,
        program: PathBuf,
        log_filter: String,
    ) -> anyhow::Result<Self> {
        let addrs = free_ports(nodes)?;
        let mut proxies = BTreeMap::new();
        for from in addrs.keys() {
            for (to, addr) in &addrs {
                if from != to {
                    let proxy = LinkProxy::start(*addr).await.context("starting a link proxy")?;
                    proxies.insert((*from, *to), proxy);
                }
            }
        }
        let secret = NodeConfig::random_secret();
        let mut configs = BTreeMap::new();
        let mut data_dirs = BTreeMap::new();
        for id in addrs.keys() {
            let mut config = NodeConfig::local(*id, &addrs, dir.join(format!("node-{id}")), &secret);
            for peer in &mut config.peers {
                if let Some(proxy) = proxies.get(&(*id, peer.id)) {
                    peer.addr = proxy.addr();
                }
            }
            // TOML integers are i64: keep the node seed below 2^63.
            config.seed = Some(seed.wrapping_add(*id) >> 1);
            config.validate().context("a generated config is invalid")?;
            let path = dir.join(format!("node-{id}.toml"));
            std::fs::write(&path, config.to_toml()?).with_context(|| format!("writing {}", path.display()))?;
            configs.insert(*id, path);
            data_dirs.insert(*id, config.data_dir.clone());
        }
        let procs = NodeProcs::new(program, configs, log_filter);
        Ok(ChaosCluster { addrs, proxies, procs, status_client: None, data_dirs })
    }

    /// Deletes `id`'s data directory (the node must be killed first): the
    /// node restarts empty and rebuilds.
    pub fn wipe_data(&self, id: NodeId) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(!self.procs.is_running(id), "node {id} is running; kill it before wiping its data");
        let dir = self.data_dirs.get(&id).cloned().with_context(|| format!("no data directory for node {id}"))?;
        crate::node::wipe_data_dir(&dir).map_err(|e| anyhow::anyhow!(e))?;
        Ok(dir)
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.addrs.keys().copied().collect()
    }

    pub fn addr_list(&self) -> Vec<SocketAddr> {
        self.addrs.values().copied().collect()
    }

    /// Starts every node, then waits (bounded) for a leader.
    pub async fn start(&mut self, timeout: Duration) -> anyhow::Result<NodeId> {
        for id in self.ids() {
            self.procs.spawn(id)?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            for id in self.ids() {
                self.procs.check_alive(id)?;
            }
            if self.status_client.is_none() {
                let config =
                    ClientConfig { request_timeout_ms: STATUS_TIMEOUT_MS, max_retries: 0, ..Default::default() };
                self.status_client = Client::connect_with(self.addr_list(), config).await.ok();
            }
            if let Some(leader) = self.leader().await {
                return Ok(leader);
            }
            anyhow::ensure!(Instant::now() < deadline, "no leader within {timeout:?} of starting the nodes");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every node's status, asked concurrently; `None` for a node that does
    /// not answer in time.
    pub async fn statuses(&self) -> BTreeMap<NodeId, Option<NodeStatusView>> {
        let Some(client) = &self.status_client else {
            return self.addrs.keys().map(|id| (*id, None)).collect();
        };
        let asks = self.addrs.iter().map(|(id, addr)| async move {
            let ask = client.node_status_of(*addr);
            let answer = tokio::time::timeout(Duration::from_millis(STATUS_TIMEOUT_MS * 2), ask).await;
            (*id, answer.ok().and_then(Result::ok))
        });
        futures::future::join_all(asks).await.into_iter().collect()
    }

    /// The ready coordinator leader (the highest term wins if a deposed
    /// leader has not noticed yet).
    pub async fn leader(&self) -> Option<NodeId> {
        self.statuses()
            .await
            .into_values()
            .flatten()
            .filter(|s| s.coordinator_ready)
            .max_by_key(|s| s.raft_term)
            .map(|s| s.node)
    }

    /// Polls until every node answers, a leader is ready, no shard holds an
    /// in-doubt transaction and the leader has nothing undecided or
    /// unacknowledged. `false` on timeout.
    pub async fn wait_quiet(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let statuses = self.statuses().await;
            let all_answer = statuses.values().all(Option::is_some);
            let views: Vec<&NodeStatusView> = statuses.values().flatten().collect();
            let leader_ready = views.iter().any(|v| v.coordinator_ready);
            let quiet = views.iter().all(|v| {
                let in_doubt: u64 = v.shards.iter().map(|s| s.in_doubt).sum();
                in_doubt == 0 && !(v.coordinator_ready && (v.undecided_txns > 0 || v.unacked_txns > 0))
            });
            if all_answer && leader_ready && quiet {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }

    /// The proxy of link `from → to`.
    fn proxy(&self, from: NodeId, to: NodeId) -> Option<&LinkProxy> {
        self.proxies.get(&(from, to))
    }

    /// Messages from `from` to `to` get `mode`: the requests `from` sends on
    /// its own connections to `to`, and the answers `from` sends on `to`'s
    /// connections.
    pub fn set_flow(&self, from: NodeId, to: NodeId, mode: Mode) {
        if let Some(proxy) = self.proxy(from, to) {
            proxy.set_up(mode);
        }
        if let Some(proxy) = self.proxy(to, from) {
            proxy.set_down(mode);
        }
    }

    /// Every link passes again.
    pub fn heal_links(&self) {
        for proxy in self.proxies.values() {
            proxy.heal();
        }
    }

    /// Starts `id` again; retries when it exits at once (its port briefly
    /// taken, say).
    pub async fn restart(&mut self, id: NodeId) -> Result<(), ProcError> {
        let mut last = None;
        for _ in 0..RESTART_ATTEMPTS {
            if !self.procs.is_running(id) {
                self.procs.spawn(id)?;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            match self.procs.check_alive(id) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ProcError::NotRunning(id)))
    }

    /// Heals links and processes: resumes paused nodes, restarts dead ones.
    pub async fn heal_all(&mut self) -> Result<(), ProcError> {
        self.heal_links();
        for id in self.ids() {
            if self.procs.is_paused(id) {
                self.procs.resume(id)?;
            }
            if !self.procs.is_running(id) {
                self.restart(id).await?;
            }
        }
        Ok(())
    }

    /// Nodes whose process exited without being killed by the harness (and
    /// were restarted here).
    pub async fn restart_crashed(&mut self) -> Vec<String> {
        let mut crashed = Vec::new();
        for id in self.ids() {
            if !self.procs.is_running(id) {
                continue; // killed on purpose; restarted by the fault itself
            }
            if let Err(e) = self.procs.check_alive(id) {
                crashed.push(format!("{e}; last log lines:\n{}", self.procs.log_tail(id, 15)));
                if let Err(e) = self.restart(id).await {
                    crashed.push(format!("restarting node {id}: {e}"));
                }
            }
        }
        crashed
    }
}

/// `nodes` consecutive loopback ports that are free now, below the usual
/// ephemeral range (32768+): outgoing connections of this machine are then
/// unlikely to take a node's port while the node is down.
fn free_ports(nodes: u64) -> anyhow::Result<BTreeMap<NodeId, SocketAddr>> {
    let mut rng = rand::thread_rng();
    for _ in 0..50 {
        let base: u16 = rng.gen_range(20_000..32_000);
        let listeners: Vec<_> = (0..nodes as u16).map(|i| TcpListener::bind(("127.0.0.1", base + i))).collect();
        if listeners.iter().all(Result::is_ok) {
            return Ok((1..=nodes).map(|id| (id, SocketAddr::from(([127, 0, 0, 1], base + id as u16 - 1)))).collect());
        }
    }
    anyhow::bail!("no {nodes} free consecutive loopback ports found in 50 tries")
}
