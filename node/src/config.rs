//! The node configuration file (TOML).
//!
//! ```toml
//! node_id = 1
//! listen = "127.0.0.1:7101"
//! data_dir = "paytx-data/node-1"
//! fsync = true                      # default; false only for benchmarks
//! cluster_secret = "…"              # the same on every node, 16+ bytes
//!
//! [[peers]]                         # every node of the cluster, this one included
//! id = 1
//! addr = "127.0.0.1:7101"
//! [[peers]]
//! id = 2
//! addr = "127.0.0.1:7102"
//! [[peers]]
//! id = 3
//! addr = "127.0.0.1:7103"
//!
//! [shards]                          # shard i of each kind lives on node list[i]
//! accounts = [1, 2, 3]
//! orders = [1, 2, 3]
//! channels = [1, 2, 3]
//! records = [1, 2, 3]
//! ```
//!
//! That is a single self-contained file. The settings that must be
//! identical on every node can instead live in one cluster file that every
//! node file names with `cluster = "cluster.toml"` (what `paytx
//! gen-configs` writes): see [`split`].
//!
//! Optional sections: `[raft]` (timings, snapshots), `[limits]` (frames,
//! connections, in-flight requests, timeouts), `[coordinator]` (2PC timings)
//! and `[[channels]]` (payment channel routes); see the README. With
//! `http_listen = "127.0.0.1:8080"` the node also serves the open-platform
//! HTTP API, configured by `[gateway]` (key files, retry schedule, routes).
//! With `admin_listen = "127.0.0.1:9090"` it serves the admin listener
//! (metrics, health, the admin API and console; README, "Operations").

use paytx_coordinator::RaftSettings;
use paytx_participants::ChannelConfig;
use paytx_protocol::{NodeId, ShardMap};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub mod split;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub id: NodeId,
    pub addr: SocketAddr,
}

/// 2PC timings of the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoordinatorSettings {
    /// Participants have this long to vote before the transaction aborts.
    pub prepare_timeout_ms: u64,
    /// Delay before re-sending an unacknowledged decision; it doubles with
    /// each re-send up to `max_decide_retry_ms`.
    pub decide_retry_ms: u64,
    pub max_decide_retry_ms: u64,
    /// Most transactions the leader prepares or decides at once (more:
    /// `Overloaded`). Decided ones waiting for acknowledgements do not count.
    pub max_in_flight_txns: usize,
    /// Most decided transactions the leader tracks while acknowledgements
    /// are outstanding (a shard down): over it the oldest are left to the
    /// table and the participants' in-doubt queries.
    pub max_finishing_txns: usize,
    /// A participant that voted YES and heard nothing for this long asks the
    /// coordinator group for the decision.
    pub in_doubt_after_ms: u64,
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        CoordinatorSettings {
            prepare_timeout_ms: 2_000,
            decide_retry_ms: 200,
            max_decide_retry_ms: 5_000,
            max_in_flight_txns: 4_000,
            max_finishing_txns: 65_536,
            in_doubt_after_ms: 2_000,
        }
    }
}

/// Limits on everything that grows with load or with a hostile peer
/// (README, "Configuration reference": every setting and its default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest frame accepted or sent, in bytes.
    pub max_frame_bytes: u32,
    /// Most TCP connections served at once (more: `Overloaded`, closed).
    pub max_connections: usize,
    /// Most requests handled at once on one connection (more: `Overloaded`).
    pub max_in_flight_per_connection: usize,
    /// Most client requests handled at once by the whole node, over all
    /// connections (more: `Overloaded`). Authenticated peer traffic is not
    /// counted: clients must not be able to starve Raft and 2PC.
    pub max_in_flight_per_node: usize,
    /// A client connection with no request in flight that sends nothing for
    /// this long is closed. Authenticated peer connections are exempt.
    pub idle_timeout_ms: u64,
    /// Once a frame has started, the rest must arrive within this long.
    pub frame_read_timeout_ms: u64,
    /// Most operations in one transaction (more: `TooManyOperations`).
    pub max_ops_per_txn: usize,
    /// Below this much free space on the data directory's file system the
    /// node refuses new transactions (`DiskFull`); in-flight ones finish.
    /// 0 disables the check.
    pub min_free_disk_bytes: u64,
    /// Budget of one client request inside the node (forwarding included).
    pub request_timeout_ms: u64,
    /// Timeout of one node-to-node call.
    pub peer_timeout_ms: u64,
    /// Most prepared (undecided) transactions per participant shard.
    pub max_prepared_per_shard: usize,
    /// Most records per records shard (the store is held in memory).
    pub max_records_per_shard: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: paytx_protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            max_connections: 1024,
            max_in_flight_per_connection: 8192,
            max_in_flight_per_node: 16_384,
            idle_timeout_ms: 300_000,
            frame_read_timeout_ms: 30_000,
            max_ops_per_txn: paytx_protocol::txn::MAX_OPS_PER_TXN,
            min_free_disk_bytes: 64 * 1024 * 1024,
            request_timeout_ms: 10_000,
            peer_timeout_ms: 3_000,
            max_prepared_per_shard: 100_000,
            max_records_per_shard: 1_000_000,
        }
    }
}

/// Most `[raft] max_proposals_in_flight`: openraft 0.9.25 flushes one entry
/// at a time, so more outstanding entries only queue inside it.
pub const MAX_PROPOSALS_IN_FLIGHT: u64 = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(default = "default_true")]
    pub fsync: bool,
    pub peers: Vec<Peer>,
    pub shards: ShardMap,
    #[serde(default = "paytx_participants::default_channels")]
    pub channels: Vec<ChannelConfig>,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub coordinator: CoordinatorSettings,
    #[serde(default)]
    pub limits: Limits,
    /// Seed of this node's RNGs (channel models). `None`: from the OS.
    #[serde(default)]
    pub seed: Option<u64>,
    /// The shared secret nodes prove they know before they may speak the
    /// node-to-node protocol (at least 16 bytes; the same on every node).
    /// `paytx gen-configs` writes a random one.
    #[serde(default)]
    pub cluster_secret: String,
    /// Serve the open-platform HTTP API here (issue 4); `None`: no API.
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// The API's keys, sessions, notifications and channel routing.
    #[serde(default)]
    pub gateway: paytx_gateway::GatewayConfig,
    /// Serve the admin listener here (issue 12): `/metrics`, `/health/*`
    /// unauthenticated, `/admin/v1/*` and `/console` behind the admin key
    /// (`[gateway] admin_key_file`). `None`: no admin listener. It belongs
    /// on a private network.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
}

fn default_true() -> bool {
    true
}

/// Why a configuration cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file (node file or the cluster file it names) cannot be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A node file (or single file) is not TOML or has a value of the wrong type.
    #[error("{path} is not a valid node config: {message}")]
    Parse { path: PathBuf, message: String },
    /// The cluster file is not TOML or has a value of the wrong type.
    #[error("{path} is not a valid cluster file: {message}")]
    ClusterParse { path: PathBuf, message: String },
    /// The node file sets a cluster-wide setting although it names a
    /// cluster file: it would shadow the value every node shares.
    #[error(
        "{node_file} sets {setting}, a cluster-wide setting: with a cluster file it belongs in \
         {cluster_file} only (the same on every node)"
    )]
    ClusterSettingInNodeFile { setting: String, node_file: PathBuf, cluster_file: PathBuf },
    /// The cluster file sets a per-node setting.
    #[error(
        "{cluster_file} sets {setting}, a per-node setting: it belongs in the node file ({node_file}), \
         not in the cluster file"
    )]
    NodeSettingInClusterFile { setting: String, cluster_file: PathBuf, node_file: PathBuf },
    /// The node file's `[[peers]]` re-addresses a node the cluster file does
    /// not list: a node file may change how it reaches a peer, not who the
    /// peers are.
    #[error(
        "{node_file} lists peer {id} in [[peers]], which {cluster_file} does not: a node file may only \
         re-address the cluster's peers, not add one"
    )]
    UnknownPeer { id: NodeId, node_file: PathBuf, cluster_file: PathBuf },
    /// The merged configuration is inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Loads and validates a node's configuration: a single self-contained
    /// file, or a node file whose `cluster = "…"` names the cluster file it
    /// is merged with ([`split`]: the settings must be identical on every
    /// node live there, and only there).
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let parse_error = |e: toml::de::Error| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() };
        let mut table: toml::Table = text.parse().map_err(parse_error)?;
        let config: NodeConfig = match table.remove(split::CLUSTER_KEY) {
            Some(cluster) => split::load_split(path, table, &cluster)?,
            None => toml::from_str(&text).map_err(parse_error)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML. Fails only for values TOML cannot hold: its
    /// integers are signed 64-bit, so a `seed` above `i64::MAX` is refused
    /// here instead of panicking. (A config built in code, like the
    /// simulator's, may use any seed: it never goes through TOML.)
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid(format!("cannot write the config as TOML: {e}")))
    }

    /// Every node id → address.
    pub fn peer_map(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.peers.iter().map(|p| (p.id, p.addr)).collect()
    }

    /// The part of this configuration that must be identical on every node,
    /// digested per section (sent in the peer handshake; a peer that
    /// differs is refused, the differing sections named): what the cluster
    /// file holds ([`split::CLUSTER_WIDE`] and the `[[peers]]` ids) except
    /// `cluster_secret`, which the handshake proves instead. Per-node
    /// settings (`node_id`, `listen`, `data_dir`, `fsync`, timings, the
    /// gateway and admin listeners) are not in it.
    pub fn cluster_digest(&self) -> paytx_protocol::auth::ConfigDigest {
        // The members, not their addresses: how a node reaches a peer is its
        // own business (another interface, a proxy — `paytx chaos` puts one
        // on every link).
        let mut members: Vec<NodeId> = self.peers.iter().map(|p| p.id).collect();
        members.sort_unstable();
        paytx_protocol::auth::ConfigDigest::of(vec![
            ("[[peers]] ids", encoded_section(&members)),
            ("[shards]", encoded_section(&self.shards)),
            ("[[channels]]", encoded_section(&self.channels)),
            ("[raft] key_retention_secs", encoded_section(&self.raft.key_retention_secs)),
            ("[limits] max_ops_per_txn", encoded_section(&self.limits.max_ops_per_txn)),
            ("[limits] max_frame_bytes", encoded_section(&self.limits.max_frame_bytes)),
            ("[limits] max_prepared_per_shard", encoded_section(&self.limits.max_prepared_per_shard)),
            ("[limits] max_records_per_shard", encoded_section(&self.limits.max_records_per_shard)),
        ])
    }

    /// Checks what would otherwise fail obscurely later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let peers = self.peer_map();
        if peers.len() != self.peers.len() {
            return Err(ConfigError::Invalid("a node id appears twice in [[peers]]".into()));
        }
        if !peers.contains_key(&self.node_id) {
            return Err(ConfigError::Invalid(format!("node_id {} is not listed in [[peers]]", self.node_id)));
        }
        if let Some(id) = peers.keys().find(|id| **id > paytx_protocol::replica::MAX_NODE_ID) {
            return Err(ConfigError::Invalid(format!(
                "node id {id} is above {} (a Raft replica id carries the node id in 32 bits)",
                paytx_protocol::replica::MAX_NODE_ID
            )));
        }
        if !self.shards.is_valid() {
            return Err(ConfigError::Invalid(
                "[shards] needs at least one node for accounts, orders, channels and records".into(),
            ));
        }
        for kind in paytx_protocol::EntityKind::ALL {
            for node in self.shards.nodes_of(kind) {
                if !peers.contains_key(node) {
                    return Err(ConfigError::Invalid(format!(
                        "[shards] {} names node {node}, which is not in [[peers]]",
                        kind.name()
                    )));
                }
            }
        }
        let replicas = self.shards.replicas;
        if !(1..=paytx_protocol::ops::MAX_SHARD_REPLICAS).contains(&replicas) {
            return Err(ConfigError::Invalid(format!(
                "[shards] replicas = {replicas}: needs 1..={}",
                paytx_protocol::ops::MAX_SHARD_REPLICAS
            )));
        }
        if self.raft.election_timeout_min_ms <= self.raft.heartbeat_interval_ms
            || self.raft.election_timeout_max_ms <= self.raft.election_timeout_min_ms
        {
            return Err(ConfigError::Invalid(
                "[raft] needs heartbeat < election_timeout_min < election_timeout_max".into(),
            ));
        }
        if self.raft.key_retention.is_some() {
            return Err(ConfigError::Invalid(
                "[raft] key_retention (a count of keys) was replaced by key_retention_secs: keys are now kept for \
                 that many seconds of log time (default 86400)"
                    .into(),
            ));
        }
        let retention_secs = self.raft.key_retention_secs;
        if !(1..=paytx_raft::settings::MAX_KEY_RETENTION_SECS).contains(&retention_secs) {
            return Err(ConfigError::Invalid(format!(
                "[raft] key_retention_secs = {retention_secs}: needs 1..={}",
                paytx_raft::settings::MAX_KEY_RETENTION_SECS
            )));
        }
        if self.raft.max_batch_commands == 0
            || !(1..=MAX_PROPOSALS_IN_FLIGHT).contains(&self.raft.max_proposals_in_flight)
            || self.raft.max_payload_entries == 0
        {
            return Err(ConfigError::Invalid(format!(
                "[raft] max_batch_commands and max_payload_entries must be at least 1, \
                 max_proposals_in_flight between 1 and {MAX_PROPOSALS_IN_FLIGHT}"
            )));
        }
        if self.cluster_secret.len() < paytx_protocol::auth::MIN_SECRET_BYTES {
            return Err(ConfigError::Invalid(format!(
                "cluster_secret must be at least {} bytes, the same on every node (paytx gen-configs writes a random one)",
                paytx_protocol::auth::MIN_SECRET_BYTES
            )));
        }
        if self.limits.max_frame_bytes as usize > paytx_protocol::frame::MAX_FRAME_LIMIT_BYTES
            || self.limits.max_frame_bytes < 1024
        {
            return Err(ConfigError::Invalid("[limits] max_frame_bytes must be between 1 KiB and 64 MiB".into()));
        }
        let c = &self.coordinator;
        if c.prepare_timeout_ms == 0
            || c.decide_retry_ms == 0
            || c.max_decide_retry_ms < c.decide_retry_ms
            || c.max_in_flight_txns == 0
            || c.max_finishing_txns == 0
            || c.in_doubt_after_ms == 0
        {
            return Err(ConfigError::Invalid(
                "[coordinator] timings and limits must be at least 1, and max_decide_retry_ms at least decide_retry_ms"
                    .into(),
            ));
        }
        let l = &self.limits;
        if l.max_connections == 0
            || l.max_in_flight_per_connection == 0
            || l.max_in_flight_per_node == 0
            || l.max_ops_per_txn == 0
            || l.idle_timeout_ms == 0
            || l.frame_read_timeout_ms == 0
        {
            return Err(ConfigError::Invalid(
                "[limits] connection, in-flight, operation and timeout limits must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// A config for node `id` of a local cluster on `addrs`, sharing
    /// `cluster_secret` with the other nodes.
    pub fn local(
        id: NodeId,
        addrs: &BTreeMap<NodeId, SocketAddr>,
        data_dir: PathBuf,
        cluster_secret: &str,
    ) -> NodeConfig {
        let ids: Vec<NodeId> = addrs.keys().copied().collect();
        NodeConfig {
            node_id: id,
            listen: addrs[&id],
            data_dir,
            fsync: true,
            peers: addrs.iter().map(|(id, addr)| Peer { id: *id, addr: *addr }).collect(),
            shards: ShardMap::for_replicas(&ids, paytx_protocol::ops::DEFAULT_SHARD_REPLICAS),
            channels: paytx_participants::default_channels(),
            raft: RaftSettings::default(),
            coordinator: CoordinatorSettings::default(),
            limits: Limits::default(),
            seed: None,
            cluster_secret: cluster_secret.to_string(),
            http_listen: None,
            gateway: paytx_gateway::GatewayConfig::default(),
            admin_listen: None,
        }
    }

    /// A random cluster secret (hex of 32 bytes from the OS RNG).
    pub fn random_secret() -> String {
        let bytes: [u8; 32] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One section of [`NodeConfig::cluster_digest`], encoded. A section that
/// cannot be encoded digests as its error text: still deterministic, and
/// equal configurations still agree.
fn encoded_section<T: Serialize>(section: &T) -> Vec<u8> {
    paytx_protocol::encode(section).unwrap_or_else(|e| e.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml_and_rejects_bad_configs() {
        let addrs: BTreeMap<NodeId, SocketAddr> =
            (1..=3).map(|i| (i, format!("127.0.0.1:{}", 7100 + i).parse().expect("valid address"))).collect();
        let config = NodeConfig::local(2, &addrs, PathBuf::from("/tmp/x"), "a-secret-of-sixteen-bytes");
        let text = config.to_toml().expect("a valid config serialises");
        let mut huge_seed = config.clone();
        huge_seed.seed = Some(u64::MAX);
        assert!(matches!(huge_seed.to_toml(), Err(ConfigError::Invalid(_))));
        // Only the TOML form is limited: a config built in code (the
        // simulator's) may use any seed.
        huge_seed.validate().expect("any seed is valid in memory");
        let back: NodeConfig = toml::from_str(&text).expect("own output parses");
        assert_eq!(back, config);
        back.validate().expect("valid");

        let mut bad = config.clone();
        bad.node_id = 9;
        assert!(matches!(bad.validate(), Err(ConfigError::Invalid(_))));
        let mut bad = config.clone();
        bad.shards.orders = vec![1, 7];
        assert!(matches!(bad.validate(), Err(ConfigError::Invalid(_))));
        let mut bad = config.clone();
        bad.cluster_secret = "short".into();
        assert!(matches!(bad.validate(), Err(ConfigError::Invalid(_))));
        let mut bad = config.clone();
        bad.limits.idle_timeout_ms = 0;
        assert!(matches!(bad.validate(), Err(ConfigError::Invalid(_))));
        let mut bad = config.clone();
        bad.coordinator.max_decide_retry_ms = bad.coordinator.decide_retry_ms - 1;
        assert!(matches!(bad.validate(), Err(ConfigError::Invalid(_))));
        // Nodes agree on the cluster-wide sections whatever their own ones.
        let mut other_node = NodeConfig::local(3, &addrs, PathBuf::from("/tmp/y"), "a-secret-of-sixteen-bytes");
        other_node.coordinator.prepare_timeout_ms += 1;
        other_node.limits.max_connections += 1;
        other_node.peers[0].addr = "127.0.0.1:9999".parse().expect("valid address"); // a proxy, say
        assert!(config.cluster_digest().differing(&other_node.cluster_digest()).is_empty());
        other_node.channels.pop();
        other_node.raft.key_retention_secs += 1;
        other_node.limits.max_records_per_shard += 1;
        assert_eq!(
            config.cluster_digest().differing(&other_node.cluster_digest()),
            vec![
                "[[channels]]".to_string(),
                "[limits] max_records_per_shard".to_string(),
                "[raft] key_retention_secs".to_string()
            ],
            "the differing sections are named"
        );
        // Replicas apply a shard's log with these limits: they must agree.
        let mut other_node = config.clone();
        other_node.limits.max_prepared_per_shard += 1;
        assert_eq!(
            config.cluster_digest().differing(&other_node.cluster_digest()),
            vec!["[limits] max_prepared_per_shard".to_string()]
        );
        let mut bad = config.clone();
        bad.coordinator.max_finishing_txns = 0;
        assert!(matches!(bad.validate(), Err(ConfigError::Invalid(_))));
        let minimal = "node_id = 1\ncluster_secret = \"0123456789abcdef\"\nlisten = \"127.0.0.1:7101\"\ndata_dir = \"d\"\n[[peers]]\nid = 1\naddr = \"127.0.0.1:7101\"\n[shards]\naccounts = [1]\norders = [1]\nchannels = [1]\nrecords = [1]\n";
        let parsed: NodeConfig = toml::from_str(minimal).expect("defaults fill the rest");
        assert!(parsed.fsync, "durable by default");
        assert_eq!(parsed.limits, Limits::default(), "every [limits] setting has a default");
        parsed.validate().expect("valid");
        // `records` is required like the other kinds.
        let without_records = minimal.replace("records = [1]\n", "");
        assert!(toml::from_str::<NodeConfig>(&without_records).is_err());
        let mut bad = config.clone();
        bad.shards.records = vec![];
        assert!(matches!(bad.validate(), Err(ConfigError::Invalid(_))));
    }
}
