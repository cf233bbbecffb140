//! The split configuration (issue 11, "One cluster configuration"): a
//! **cluster file** with exactly the settings that must be identical on
//! every node, and one **node file** per node with the rest, naming the
//! cluster file with `cluster = "cluster.toml"` (relative to the node
//! file's directory). [`NodeConfig::load`] merges the two into the same
//! [`NodeConfig`] a single self-contained file gives.
//!
//! A setting lives in one file only: a cluster-wide one in the node file
//! would silently shadow the shared value, a per-node one in the cluster
//! file would silently configure every node alike, so both are refused
//! ([`ConfigError::ClusterSettingInNodeFile`],
//! [`ConfigError::NodeSettingInClusterFile`]). The one exception is
//! `[[peers]]`: the cluster file lists the members and their default
//! addresses, and a node file may re-address any of them for itself (another
//! interface, a proxy) but not add one ([`ConfigError::UnknownPeer`]).
//! Unknown keys are ignored in both files, as they are in a single file.

use super::{ConfigError, Limits, NodeConfig, Peer};
use paytx_coordinator::RaftSettings;
use paytx_participants::ChannelConfig;
use paytx_protocol::{NodeId, ShardMap};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// The key of a node file that names its cluster file.
pub const CLUSTER_KEY: &str = "cluster";

/// The cluster-wide settings besides `[[peers]]`, as (section, key); `None`:
/// a top-level key. Every one of them except `cluster_secret` (which the
/// handshake proves instead) is a section of [`NodeConfig::cluster_digest`].
/// `[limits] max_prepared_per_shard` and `max_records_per_shard` are here
/// because every replica of a shard applies its log with them (a prepare
/// over either limit is voted NO in the replicated state machine): replicas
/// that differ would diverge.
pub const CLUSTER_WIDE: &[(Option<&str>, &str)] = &[
    (None, "cluster_secret"),
    (None, "shards"),
    (None, "channels"),
    (Some("raft"), "key_retention_secs"),
    (Some("limits"), "max_ops_per_txn"),
    (Some("limits"), "max_frame_bytes"),
    (Some("limits"), "max_prepared_per_shard"),
    (Some("limits"), "max_records_per_shard"),
];

/// The top-level per-node settings. `[raft]` and `[limits]` hold both
/// kinds: their keys not in [`CLUSTER_WIDE`] are per node.
pub const NODE_KEYS: &[&str] = &[
    "node_id",
    "listen",
    "data_dir",
    "fsync",
    "seed",
    "http_listen",
    "admin_listen",
    "coordinator",
    "gateway",
    CLUSTER_KEY,
];

/// The cluster file's values in their types: deserialized on their own
/// first, so that a bad value is reported against the cluster file (with
/// its line). Only `peers` is read from it; the rest is merged as TOML.
#[derive(Deserialize)]
#[allow(dead_code)] // the other fields are deserialized only to check them
struct ClusterFile {
    peers: Vec<Peer>,
    shards: ShardMap,
    #[serde(default)]
    cluster_secret: String,
    #[serde(default)]
    channels: Option<Vec<ChannelConfig>>,
    #[serde(default)]
    raft: RaftSettings,
    #[serde(default)]
    limits: Limits,
}

/// How a setting is named in errors: `cluster_secret`, `[shards]`,
/// `[[channels]]`, `[raft] key_retention_secs`.
fn setting_name(section: Option<&str>, key: &str, value: Option<&Value>) -> String {
    match (section, value) {
        (Some(section), _) => format!("[{section}] {key}"),
        (None, Some(Value::Table(_))) => format!("[{key}]"),
        (None, Some(Value::Array(items))) if items.iter().all(Value::is_table) && !items.is_empty() => {
            format!("[[{key}]]")
        }
        (None, _) => key.to_string(),
    }
}

fn is_cluster_wide(section: Option<&str>, key: &str) -> bool {
    CLUSTER_WIDE.contains(&(section, key))
}

/// The keys a section's type knows (its serialised default).
fn field_names<T: Serialize + Default>() -> BTreeSet<String> {
    Table::try_from(T::default()).map(|table| table.keys().cloned().collect()).unwrap_or_default()
}

/// The sections that hold both kinds of setting, with the keys they know.
fn mixed_sections() -> [(&'static str, BTreeSet<String>); 2] {
    [("raft", field_names::<RaftSettings>()), ("limits", field_names::<Limits>())]
}

fn parse_table(path: &Path, text: &str, cluster: bool) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| parse_error(path, e.to_string(), cluster))
}

fn parse_error(path: &Path, message: String, cluster: bool) -> ConfigError {
    let path = path.to_path_buf();
    if cluster {
        ConfigError::ClusterParse { path, message }
    } else {
        ConfigError::Parse { path, message }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })
}

/// Where a node file's `cluster = …` points: a relative path is relative
/// to the node file's directory.
fn cluster_path(node_file: &Path, value: &Value) -> Result<PathBuf, ConfigError> {
    let Some(name) = value.as_str() else {
        return Err(parse_error(node_file, format!("`{CLUSTER_KEY}` must be the path of the cluster file"), false));
    };
    Ok(node_file.parent().unwrap_or(Path::new("")).join(name))
}

/// Loads a node file whose `cluster` key (`cluster_value`, already removed
/// from `node`) names a cluster file, and merges the two.
pub(super) fn load_split(node_file: &Path, mut node: Table, cluster_value: &Value) -> Result<NodeConfig, ConfigError> {
    let cluster_file = cluster_path(node_file, cluster_value)?;
    let cluster_text = read(&cluster_file)?;
    let cluster = parse_table(&cluster_file, &cluster_text, true)?;
    refuse_misplaced(&node, &cluster, node_file, &cluster_file)?;
    let typed: ClusterFile =
        toml::from_str(&cluster_text).map_err(|e| parse_error(&cluster_file, e.to_string(), true))?;

    let peers = merge_peers(typed.peers, node.remove("peers"), node_file, &cluster_file)?;
    let peers = Value::try_from(&peers)
        .map_err(|e| ConfigError::Invalid(format!("cannot merge [[peers]] of {}: {e}", node_file.display())))?;
    node.insert("peers".to_string(), peers);
    for (section, key) in CLUSTER_WIDE {
        let value = match section {
            None => cluster.get(*key),
            Some(section) => cluster.get(*section).and_then(Value::as_table).and_then(|t| t.get(*key)),
        };
        let Some(value) = value.cloned() else { continue };
        match section {
            None => {
                node.insert(key.to_string(), value);
            }
            Some(section) => {
                // A node file whose section is not a table fails below, when
                // the merged config is deserialised.
                let entry = node.entry(section.to_string()).or_insert_with(|| Value::Table(Table::new()));
                if let Value::Table(table) = entry {
                    table.insert(key.to_string(), value);
                }
            }
        }
    }
    // The cluster file's values were checked above: what fails now is the
    // node file's.
    Value::Table(node).try_into().map_err(|e: toml::de::Error| parse_error(node_file, e.to_string(), false))
}

/// Refuses a cluster-wide setting in the node file and a per-node one in
/// the cluster file. Keys neither file knows are left alone (ignored, as in
/// a single file).
fn refuse_misplaced(node: &Table, cluster: &Table, node_file: &Path, cluster_file: &Path) -> Result<(), ConfigError> {
    let in_node = |setting: String| ConfigError::ClusterSettingInNodeFile {
        setting,
        node_file: node_file.to_path_buf(),
        cluster_file: cluster_file.to_path_buf(),
    };
    let in_cluster = |setting: String| ConfigError::NodeSettingInClusterFile {
        setting,
        cluster_file: cluster_file.to_path_buf(),
        node_file: node_file.to_path_buf(),
    };
    for (key, value) in node {
        if is_cluster_wide(None, key) {
            return Err(in_node(setting_name(None, key, Some(value))));
        }
    }
    for (key, value) in cluster {
        if NODE_KEYS.contains(&key.as_str()) {
            return Err(in_cluster(setting_name(None, key, Some(value))));
        }
    }
    for (section, known) in mixed_sections() {
        if let Some(table) = node.get(section).and_then(Value::as_table) {
            if let Some(key) = table.keys().find(|key| is_cluster_wide(Some(section), key)) {
                return Err(in_node(setting_name(Some(section), key, None)));
            }
        }
        if let Some(table) = cluster.get(section).and_then(Value::as_table) {
            if let Some(key) = table.keys().find(|key| known.contains(*key) && !is_cluster_wide(Some(section), key)) {
                return Err(in_cluster(setting_name(Some(section), key, None)));
            }
        }
    }
    Ok(())
}

/// The cluster's peers, with the addresses the node file gives for some of
/// them (`overrides`, its `[[peers]]`) in place of the cluster file's.
fn merge_peers(
    mut peers: Vec<Peer>,
    overrides: Option<Value>,
    node_file: &Path,
    cluster_file: &Path,
) -> Result<Vec<Peer>, ConfigError> {
    let Some(overrides) = overrides else { return Ok(peers) };
    let overrides: Vec<Peer> =
        overrides.try_into().map_err(|e: toml::de::Error| parse_error(node_file, format!("[[peers]]: {e}"), false))?;
    let mut seen: BTreeSet<NodeId> = BTreeSet::new();
    for Peer { id, addr } in overrides {
        if !seen.insert(id) {
            return Err(ConfigError::Invalid(format!(
                "{} gives peer {id} an address twice in [[peers]]",
                node_file.display()
            )));
        }
        let Some(peer) = peers.iter_mut().find(|p| p.id == id) else {
            return Err(ConfigError::UnknownPeer {
                id,
                node_file: node_file.to_path_buf(),
                cluster_file: cluster_file.to_path_buf(),
            });
        };
        peer.addr = addr;
    }
    Ok(peers)
}

impl NodeConfig {
    /// This config as a node file naming `cluster_file` (its text for
    /// `cluster = …`) and the cluster file it names: what `paytx
    /// gen-configs` writes. The node file gives no `[[peers]]`: every node
    /// reaches its peers at the cluster file's addresses. Fails like
    /// [`NodeConfig::to_toml`].
    pub fn to_split_toml(&self, cluster_file: &str) -> Result<(String, String), ConfigError> {
        let invalid = |e: toml::ser::Error| ConfigError::Invalid(format!("cannot write the config as TOML: {e}"));
        let mut node = Table::try_from(self).map_err(invalid)?;
        let mut cluster = Table::new();
        if let Some(peers) = node.remove("peers") {
            cluster.insert("peers".to_string(), peers);
        }
        for (section, key) in CLUSTER_WIDE {
            match section {
                None => {
                    if let Some(value) = node.remove(*key) {
                        cluster.insert(key.to_string(), value);
                    }
                }
                Some(section) => {
                    let value = node.get_mut(*section).and_then(Value::as_table_mut).and_then(|t| t.remove(*key));
                    if let Some(value) = value {
                        let entry = cluster.entry(section.to_string()).or_insert_with(|| Value::Table(Table::new()));
                        if let Value::Table(table) = entry {
                            table.insert(key.to_string(), value);
                        }
                    }
                }
            }
        }
        let node_text = format!(
            "# Node {}: its own settings. The cluster-wide ones are in the cluster file,\n\
             # identical on every node.\n{CLUSTER_KEY} = {}\n{}",
            self.node_id,
            Value::String(cluster_file.to_string()),
            toml::to_string_pretty(&node).map_err(invalid)?
        );
        let cluster_text = format!(
            "# The settings every node of the cluster must share (compared in the\n\
             # peer handshake). Each node file names this file with `{CLUSTER_KEY} = …`.\n{}",
            toml::to_string_pretty(&cluster).map_err(invalid)?
        );
        Ok((node_text, cluster_text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    const SECRET: &str = "a-secret-of-sixteen-bytes";

    /// Node 2 of three, with per-node and cluster-wide settings off their
    /// defaults, so that a setting lost or taken from the wrong file shows.
    fn config() -> NodeConfig {
        let addrs: BTreeMap<NodeId, SocketAddr> =
            (1..=3).map(|i| (i, SocketAddr::from(([127, 0, 0, 1], 7100 + i as u16)))).collect();
        let mut config = NodeConfig::local(2, &addrs, PathBuf::from("/tmp/paytx-node-2"), SECRET);
        config.seed = Some(42);
        config.fsync = false;
        config.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 9092)));
        config.coordinator.prepare_timeout_ms = 2_500;
        config.raft.heartbeat_interval_ms = 50;
        config.raft.key_retention_secs = 5_000;
        config.limits.max_connections = 77;
        config.limits.max_records_per_shard = 1_234;
        config.channels.pop();
        config
    }

    /// Writes `node_text` and `cluster_text` as `node-2.toml` and
    /// `cluster.toml` in `dir`; returns the node file's path.
    fn write(dir: &Path, node_text: &str, cluster_text: &str) -> PathBuf {
        std::fs::write(dir.join("cluster.toml"), cluster_text).expect("write the cluster file");
        let node_file = dir.join("node-2.toml");
        std::fs::write(&node_file, node_text).expect("write the node file");
        node_file
    }

    fn split_texts() -> (String, String) {
        config().to_split_toml("cluster.toml").expect("a valid config splits")
    }

    #[test]
    fn a_split_config_loads_as_the_equivalent_single_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let single_file = dir.path().join("single.toml");
        std::fs::write(&single_file, config().to_toml().expect("serialises")).expect("write");
        let single = NodeConfig::load(&single_file).expect("the single file loads");
        let (node_text, cluster_text) = split_texts();
        let split = NodeConfig::load(&write(dir.path(), &node_text, &cluster_text)).expect("the split config loads");
        assert_eq!(split, single);
        assert_eq!(split, config());
        assert_eq!(split.cluster_digest(), single.cluster_digest());
        // Each file holds only its own kind of setting.
        assert!(!node_text.contains("key_retention_secs") && !node_text.contains("[shards]"), "{node_text}");
        assert!(!node_text.contains("cluster_secret") && !node_text.contains("max_records_per_shard"));
        assert!(!cluster_text.contains("node_id") && !cluster_text.contains("heartbeat_interval_ms"), "{cluster_text}");
        assert!(!cluster_text.contains("max_connections") && !cluster_text.contains("[gateway]"));
        // Every node of the cluster writes the same cluster file.
        let mut other = config();
        other.node_id = 3;
        other.listen = SocketAddr::from(([127, 0, 0, 1], 7103));
        other.coordinator.prepare_timeout_ms = 3_000;
        assert_eq!(other.to_split_toml("cluster.toml").expect("splits").1, cluster_text);
    }

    #[test]
    fn the_cluster_file_is_found_relative_to_the_node_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let nodes = dir.path().join("nodes");
        std::fs::create_dir(&nodes).expect("create nodes/");
        let (node_text, cluster_text) = config().to_split_toml("../shared/cluster.toml").expect("splits");
        std::fs::create_dir(dir.path().join("shared")).expect("create shared/");
        std::fs::write(dir.path().join("shared/cluster.toml"), cluster_text).expect("write");
        std::fs::write(nodes.join("node-2.toml"), node_text).expect("write");
        assert_eq!(NodeConfig::load(&nodes.join("node-2.toml")).expect("loads"), config());
    }

    #[test]
    fn a_cluster_wide_setting_in_the_node_file_is_refused() {
        let (node_text, cluster_text) = split_texts();
        let cases = [
            (format!("cluster_secret = \"{SECRET}\"\n{node_text}"), "cluster_secret"),
            (format!("{node_text}\n[shards]\naccounts = [1]\norders = [1]\nchannels = [1]\nrecords = [1]\n"), "[shards]"),
            (format!("{node_text}\n[[channels]]\nid = 9\nkind = \"alipay\"\nname = \"x\"\ndecline_per_million = 0\nauthorize_latency_ms = 1\n"), "[[channels]]"),
            (node_text.replace("[raft]\n", "[raft]\nkey_retention_secs = 5000\n"), "[raft] key_retention_secs"),
            (node_text.replace("[limits]\n", "[limits]\nmax_ops_per_txn = 8\n"), "[limits] max_ops_per_txn"),
            (node_text.replace("[limits]\n", "[limits]\nmax_frame_bytes = 4096\n"), "[limits] max_frame_bytes"),
            (node_text.replace("[limits]\n", "[limits]\nmax_prepared_per_shard = 9\n"), "[limits] max_prepared_per_shard"),
            (node_text.replace("[limits]\n", "[limits]\nmax_records_per_shard = 9\n"), "[limits] max_records_per_shard"),
        ];
        for (text, expected) in cases {
            assert_ne!(text, node_text, "the case for {expected} changes the file");
            let dir = tempfile::tempdir().expect("temporary directory");
            let node_file = write(dir.path(), &text, &cluster_text);
            let error = NodeConfig::load(&node_file).expect_err(expected);
            let message = error.to_string();
            match error {
                ConfigError::ClusterSettingInNodeFile { setting, node_file: n, cluster_file } => {
                    assert_eq!(setting, expected);
                    assert_eq!(n, node_file);
                    assert_eq!(cluster_file, dir.path().join("cluster.toml"));
                }
                other => panic!("{expected}: {other}"),
            }
            assert!(message.contains(expected) && message.contains("node-2.toml") && message.contains("cluster.toml"));
        }
    }

    #[test]
    fn a_per_node_setting_in_the_cluster_file_is_refused() {
        let (node_text, cluster_text) = split_texts();
        let cases = [
            (format!("node_id = 1\n{cluster_text}"), "node_id"),
            (format!("listen = \"127.0.0.1:1\"\n{cluster_text}"), "listen"),
            (format!("fsync = true\n{cluster_text}"), "fsync"),
            (format!("cluster = \"other.toml\"\n{cluster_text}"), "cluster"),
            (cluster_text.replace("[raft]\n", "[raft]\nheartbeat_interval_ms = 10\n"), "[raft] heartbeat_interval_ms"),
            (cluster_text.replace("[limits]\n", "[limits]\nmax_connections = 10\n"), "[limits] max_connections"),
            (format!("{cluster_text}\n[coordinator]\nprepare_timeout_ms = 10\n"), "[coordinator]"),
            (format!("{cluster_text}\n[gateway]\nworkers = 3\n"), "[gateway]"),
        ];
        for (text, expected) in cases {
            assert_ne!(text, cluster_text, "the case for {expected} changes the file");
            let dir = tempfile::tempdir().expect("temporary directory");
            let node_file = write(dir.path(), &node_text, &text);
            match NodeConfig::load(&node_file).expect_err(expected) {
                ConfigError::NodeSettingInClusterFile { setting, cluster_file, node_file: n } => {
                    assert_eq!(setting, expected);
                    assert_eq!(cluster_file, dir.path().join("cluster.toml"));
                    assert_eq!(n, node_file);
                }
                other => panic!("{expected}: {other}"),
            }
        }
    }

    #[test]
    fn a_missing_or_bad_cluster_file_is_named() {
        let (node_text, cluster_text) = split_texts();
        let dir = tempfile::tempdir().expect("temporary directory");
        let node_file = dir.path().join("node-2.toml");
        std::fs::write(&node_file, &node_text).expect("write");
        match NodeConfig::load(&node_file) {
            Err(ConfigError::Read { path, .. }) => assert_eq!(path, dir.path().join("cluster.toml")),
            other => panic!("expected a read error naming cluster.toml, got {other:?}"),
        }
        // A value of the wrong type is reported against the file it is in.
        let bad = cluster_text.replace("key_retention_secs = 5000", "key_retention_secs = \"many\"");
        assert_ne!(bad, cluster_text);
        match NodeConfig::load(&write(dir.path(), &node_text, &bad)) {
            Err(ConfigError::ClusterParse { path, message }) => {
                assert_eq!(path, dir.path().join("cluster.toml"));
                assert!(message.contains("key_retention_secs"), "{message}");
            }
            other => panic!("expected a cluster parse error, got {other:?}"),
        }
        let bad = node_text.replace("fsync = false", "fsync = \"no\"");
        assert_ne!(bad, node_text);
        match NodeConfig::load(&write(dir.path(), &bad, &cluster_text)) {
            Err(ConfigError::Parse { path, message }) => {
                assert_eq!(path, node_file);
                assert!(message.contains("fsync"), "{message}");
            }
            other => panic!("expected a node parse error, got {other:?}"),
        }
        let bad = node_text.replace("cluster = \"cluster.toml\"", "cluster = 1");
        assert_ne!(bad, node_text);
        assert!(matches!(NodeConfig::load(&write(dir.path(), &bad, &cluster_text)), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn a_node_file_may_re_address_a_peer_but_not_add_one() {
        let (node_text, cluster_text) = split_texts();
        let dir = tempfile::tempdir().expect("temporary directory");
        let proxied = format!("{node_text}\n[[peers]]\nid = 3\naddr = \"127.0.0.1:9999\"\n");
        let loaded = NodeConfig::load(&write(dir.path(), &proxied, &cluster_text)).expect("an override loads");
        let addrs = loaded.peer_map();
        assert_eq!(addrs[&3], SocketAddr::from(([127, 0, 0, 1], 9999)));
        assert_eq!(addrs[&1], config().peer_map()[&1], "the others keep the cluster file's address");
        assert_eq!(loaded.peers.len(), 3);
        assert_eq!(loaded.cluster_digest(), config().cluster_digest(), "addresses are not cluster-wide");

        let added = format!("{node_text}\n[[peers]]\nid = 9\naddr = \"127.0.0.1:9999\"\n");
        match NodeConfig::load(&write(dir.path(), &added, &cluster_text)) {
            Err(ConfigError::UnknownPeer { id, .. }) => assert_eq!(id, 9),
            other => panic!("expected an unknown peer, got {other:?}"),
        }
        let twice = format!("{proxied}\n[[peers]]\nid = 3\naddr = \"127.0.0.1:9998\"\n");
        assert!(matches!(NodeConfig::load(&write(dir.path(), &twice, &cluster_text)), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn unknown_keys_are_ignored_in_both_files_as_in_a_single_file() {
        let (node_text, cluster_text) = split_texts();
        let dir = tempfile::tempdir().expect("temporary directory");
        let node_text = format!("no_such_setting = 1\n{}", node_text.replace("[raft]\n", "[raft]\nno_such = 2\n"));
        let cluster_text =
            format!("no_such_setting = 1\n{}", cluster_text.replace("[limits]\n", "[limits]\nno_such = 2\n"));
        assert_eq!(NodeConfig::load(&write(dir.path(), &node_text, &cluster_text)).expect("loads"), config());
    }

    /// Every setting of [`NodeConfig`] is classified: a new field must be
    /// put on one side of the split.
    #[test]
    fn every_setting_is_cluster_wide_or_per_node() {
        let mut full = config();
        full.http_listen = Some(SocketAddr::from(([127, 0, 0, 1], 8080)));
        let table = Table::try_from(&full).expect("serialises");
        let mut classified: BTreeSet<&str> = NODE_KEYS.iter().copied().filter(|key| *key != CLUSTER_KEY).collect();
        classified.extend(CLUSTER_WIDE.iter().filter(|(section, _)| section.is_none()).map(|(_, key)| *key));
        classified.extend(["peers", "raft", "limits"]);
        assert_eq!(table.keys().map(String::as_str).collect::<BTreeSet<_>>(), classified);
        for (section, key) in CLUSTER_WIDE {
            if let Some(section) = section {
                let known = mixed_sections().into_iter().find(|(name, _)| name == section).map(|(_, known)| known);
                assert!(known.is_some_and(|known| known.contains(*key)), "[{section}] {key} is a known setting");
            }
        }
    }
}
