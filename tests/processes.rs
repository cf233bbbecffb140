//! Real `paytx node` OS processes, driven through the `paytx client` CLI
//! exactly as the README shows it: configs from `paytx gen-configs`
//! (`cluster.toml` and one node file per node naming it), three
//! `paytx node --config` children, JSON read from the client's stdout.
//!
//! Covers: a payment end to end; idempotency keys; an illegal second payment
//! of a paid order aborting with nothing applied; a non-leader killed with
//! SIGKILL while payments go on (one that avoids its shards commits, one that
//! needs them aborts); durability of everything across that `kill -9` and
//! across a clean Ctrl-C (SIGINT) shutdown of the whole cluster.
//!
//! Every wait is bounded, and a guard kills every child on the way out, so a
//! failing run never leaks processes. On failure the tail of each node's log
//! is printed.
#![cfg(unix)]

use paytx::config::NodeConfig;
use paytx::protocol::{AccountId, ChannelId, EntityKey, NodeId, OrderId, ShardMap};
use rand::Rng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const PAYTX: &str = env!("CARGO_BIN_EXE_paytx");
const NODES: u64 = 3;
/// Bound on one `paytx client` invocation (it retries internally).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(25);
/// Bound on electing a leader (fresh cluster or restart).
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a node stopping after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a finished `paytx client` invocation printed.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn json(&self, what: &str) -> Value {
        assert!(
            self.status.success(),
            "{what}: exit {:?}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}):\n{}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Reads a pipe to the end on a thread of its own (so a full pipe never
/// blocks the child while the test polls it).
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Waits for `child` at most `timeout`; `None` if it is still running.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => return None,
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `true` when `count` consecutive ports from `base` can be bound on loopback now.
fn ports_free(base: u16, count: u16) -> bool {
    let listeners: Vec<_> = (0..count).map(|i| TcpListener::bind(("127.0.0.1", base + i))).collect();
    listeners.iter().all(Result::is_ok)
}

/// One `paytx node` child process.
struct NodeProcess {
    id: NodeId,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Three `paytx node` processes in a temporary directory. Dropping it kills
/// every child still running (and prints the logs' tails when panicking).
struct ProcessCluster {
    dir: tempfile::TempDir,
    addrs: Vec<String>,
    shard_map: ShardMap,
    nodes: Vec<NodeProcess>,
}

impl ProcessCluster {
    /// Writes configs on free ports and starts every node; retries on other
    /// ports when a node cannot start (e.g. a port was taken in between).
    fn start() -> ProcessCluster {
        let mut rng = rand::thread_rng();
        for attempt in 1..=5 {
            // Below the usual ephemeral range (32768+), so outgoing connections
            // of other processes are unlikely to take these ports meanwhile.
            let base: u16 = rng.gen_range(20_000..32_000);
            if !ports_free(base, NODES as u16) {
                continue;
            }
            let dir = tempfile::Builder::new().prefix("paytx-processes-").tempdir().expect("temporary directory");
            let generated = Command::new(PAYTX)
                // Three shards of each kind, so that each node is the
                // preferred node of some accounts (the kill below picks by it).
                .args(["gen-configs", "--nodes", &NODES.to_string(), "--shards-per-kind", "3"])
                .args(["--base-port", &base.to_string(), "--dir"])
                .arg(dir.path())
                .output()
                .expect("run paytx gen-configs");
            assert!(generated.status.success(), "gen-configs failed: {}", String::from_utf8_lossy(&generated.stderr));
            let printed = String::from_utf8_lossy(&generated.stdout);
            assert_eq!(printed.lines().count(), NODES as usize, "gen-configs prints one path per node: {printed}");
            // Split: the shared settings in cluster.toml, which every node file names.
            let node_1 = std::fs::read_to_string(dir.path().join("node-1.toml")).expect("read node-1.toml");
            assert!(node_1.contains("cluster = \"cluster.toml\""), "node-1.toml names the cluster file:\n{node_1}");
            assert!(dir.path().join("cluster.toml").is_file(), "gen-configs writes cluster.toml");

            let configs: Vec<NodeConfig> = (1..=NODES)
                .map(|id| {
                    NodeConfig::load(&dir.path().join(format!("node-{id}.toml"))).expect("generated config loads")
                })
                .collect();
            let addrs: Vec<String> = configs.iter().map(|c| c.listen.to_string()).collect();
            let expected: Vec<String> = (0..NODES as u16).map(|i| format!("127.0.0.1:{}", base + i)).collect();
            assert_eq!(addrs, expected, "gen-configs uses consecutive ports from --base-port");
            let nodes = configs
                .iter()
                .map(|c| NodeProcess {
                    id: c.node_id,
                    config: dir.path().join(format!("node-{}.toml", c.node_id)),
                    log: dir.path().join(format!("node-{}.log", c.node_id)),
                    child: None,
                })
                .collect();
            let mut cluster = ProcessCluster { dir, addrs, shard_map: configs[0].shards.clone(), nodes };
            for id in 1..=NODES {
                cluster.spawn(id);
            }
            if cluster.try_wait_for_leader(LEADER_TIMEOUT).is_some() {
                return cluster;
            }
            let died =
                cluster.nodes.iter_mut().any(|n| n.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_)))));
            assert!(died, "no leader within {LEADER_TIMEOUT:?} although every node runs");
            eprintln!("attempt {attempt}: a node exited at start-up (port conflict?); retrying on other ports");
            // Dropping `cluster` kills the survivors and removes the directory.
        }
        panic!("could not start a cluster in 5 attempts");
    }

    fn node(&mut self, id: NodeId) -> &mut NodeProcess {
        self.nodes.iter_mut().find(|n| n.id == id).expect("known node id")
    }

    /// Starts `paytx node --config node-<id>.toml` (on its existing data, if any).
    fn spawn(&mut self, id: NodeId) {
        let node = self.node(id);
        assert!(node.child.is_none(), "node {id} is already running");
        let log = File::options().create(true).append(true).open(&node.log).expect("open node log");
        let child = Command::new(PAYTX)
            .arg("node")
            .arg("--config")
            .arg(&node.config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn paytx node");
        node.child = Some(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    fn kill_9(&mut self, id: NodeId) {
        let mut child = self.node(id).child.take().expect("node is running");
        child.kill().expect("SIGKILL");
        let status = wait_bounded(&mut child, STOP_TIMEOUT).expect("a SIGKILLed process exits");
        assert!(!status.success(), "killed node {id} reported success: {status:?}");
    }

    /// SIGINT (what Ctrl-C sends) to every running node, then waits for each;
    /// SIGKILL as a fallback, and then the test fails: a node must stop on Ctrl-C.
    fn interrupt_all(&mut self) {
        for node in &self.nodes {
            if let Some(child) = &node.child {
                let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("run kill");
                assert!(sent.success(), "kill -INT {} failed", child.id());
            }
        }
        let mut stuck = Vec::new();
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else { continue };
            match wait_bounded(&mut child, STOP_TIMEOUT) {
                Some(status) => {
                    assert!(status.success(), "node {} exited with {status:?} after SIGINT", node.id);
                    let log = tail(&node.log, 50);
                    assert!(log.contains("node stopped"), "node {} did not log a clean stop:\n{log}", node.id);
                }
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    stuck.push(node.id);
                }
            }
        }
        assert!(stuck.is_empty(), "nodes {stuck:?} ignored SIGINT for {STOP_TIMEOUT:?} (SIGKILLed)");
    }

    fn is_running(&mut self, id: NodeId) -> bool {
        self.node(id).child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `paytx client --addrs a,b,c <args>`, bounded.
    fn client(&self, args: &[&str]) -> Output {
        let mut child = Command::new(PAYTX)
            .arg("client")
            .arg("--addrs")
            .arg(self.addrs.join(","))
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn paytx client");
        let stdout = drain(child.stdout.take().expect("piped stdout"));
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        let status = wait_bounded(&mut child, CLIENT_TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`paytx client {}` did not finish within {CLIENT_TIMEOUT:?}", args.join(" "))
        });
        Output { status, stdout: stdout.join().expect("stdout reader"), stderr: stderr.join().expect("stderr reader") }
    }

    fn client_json(&self, args: &[&str]) -> Value {
        self.client(args).json(&format!("paytx client {}", args.join(" ")))
    }

    /// `client status`: one line per address, `<addr>: <json>` or
    /// `<addr>: unreachable (...)`. Returns the parsed views by address.
    fn status(&self) -> BTreeMap<String, Option<Value>> {
        self.try_status().unwrap_or_else(|stderr| panic!("status failed: {stderr}"))
    }

    /// [`Self::status`], or the error when no node at all answers (the
    /// client must connect to one before it asks each for its status).
    fn try_status(&self) -> Result<BTreeMap<String, Option<Value>>, String> {
        let output = self.client(&["status"]);
        if !output.status.success() {
            return Err(output.stderr);
        }
        let mut views = BTreeMap::new();
        for line in output.stdout.lines() {
            let (addr, rest) = line.split_once(": ").unwrap_or_else(|| panic!("unexpected status line {line:?}"));
            let view = if rest.starts_with('{') {
                Some(
                    serde_json::from_str(rest).unwrap_or_else(|e| panic!("status of {addr} is not JSON ({e}): {rest}")),
                )
            } else {
                assert!(rest.starts_with("unreachable"), "unexpected status line {line:?}");
                None
            };
            views.insert(addr.to_string(), view);
        }
        assert_eq!(views.len(), self.addrs.len(), "one status line per address:\n{}", output.stdout);
        Ok(views)
    }

    /// The leader, when a reachable node is leader and ready and every
    /// reachable node agrees on it.
    fn leader(&self) -> Option<NodeId> {
        let views: Vec<Value> = self.try_status().ok()?.into_values().flatten().collect();
        let ready = views.iter().find(|v| v["coordinator_ready"] == true)?;
        let leader = ready["node"].as_u64()?;
        assert_eq!(ready["leader"].as_u64(), Some(leader), "a ready coordinator is its own leader: {ready}");
        views.iter().all(|v| v["leader"].as_u64() == Some(leader)).then_some(leader)
    }

    /// Polls `status` until there is a leader; `None` on timeout or when a
    /// node process exits.
    fn try_wait_for_leader(&mut self, timeout: Duration) -> Option<NodeId> {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<NodeId> = self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect();
            if running.into_iter().any(|id| !self.is_running(id)) {
                return None;
            }
            if let Some(leader) = self.leader() {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_for_leader(&mut self) -> NodeId {
        self.try_wait_for_leader(LEADER_TIMEOUT)
            .unwrap_or_else(|| panic!("no leader within {LEADER_TIMEOUT:?}: {:#?}", self.try_status()))
    }

    /// Polls until no transaction is in doubt on any shard and the leader
    /// has no undecided or unacknowledged transaction.
    fn wait_quiet(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let views = self.status();
            let quiet = views.values().all(|view| {
                view.as_ref().is_some_and(|v| {
                    let in_doubt: u64 =
                        v["shards"].as_array().map_or(0, |s| s.iter().filter_map(|s| s["in_doubt"].as_u64()).sum());
                    let table_busy = v["coordinator_ready"] == true
                        && (v["undecided_txns"].as_u64() != Some(0) || v["unacked_txns"].as_u64() != Some(0));
                    in_doubt == 0 && !table_busy
                })
            });
            if quiet {
                return;
            }
            assert!(Instant::now() < deadline, "cluster not quiet after {timeout:?}: {views:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node hosting `entity`'s shard.
    fn owner(&self, entity: EntityKey) -> NodeId {
        self.shard_map.node_of(self.shard_map.shard_of(entity)).expect("every shard has a node")
    }

    /// The first id from `from` whose entity lives on a node in (or, with
    /// `on == false`, outside) `nodes`.
    fn pick(&self, from: u64, nodes: &[NodeId], on: bool, entity: impl Fn(u64) -> EntityKey) -> u64 {
        (from..from + 1_000).find(|id| nodes.contains(&self.owner(entity(*id))) == on).expect("some id fits")
    }

    fn balance(&self, account: u64) -> Value {
        let view = self.client_json(&["balance", "--account", &account.to_string()]);
        assert_eq!(view["account"], account, "{view}");
        view
    }

    fn balances(&self, accounts: &[u64]) -> BTreeMap<u64, (i64, i64)> {
        accounts
            .iter()
            .map(|a| {
                let view = self.balance(*a);
                let balance = view["balance_minor"].as_i64().expect("balance_minor");
                let held = view["held_minor"].as_i64().expect("held_minor");
                (*a, (balance, held))
            })
            .collect()
    }

    fn order_status(&self, order: u64) -> String {
        let view = self.client_json(&["order", "--order", &order.to_string()]);
        assert_eq!(view["order"], order, "{view}");
        // Upper-cased: the JSON says "Paid" today (serde's variant name);
        // the docs and `OrderStatus::as_str` say "PAID".
        view["status"].as_str().unwrap_or_else(|| panic!("order status: {view}")).to_uppercase()
    }

    fn txn_state(&self, key: &str) -> Value {
        let view = self.client_json(&["txn-status", "--key", key]);
        assert_eq!(view["key"], key, "{view}");
        view["state"].clone()
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("paytx processes test failed; node logs in {} (removed on exit):", self.dir.path().display());
            for node in &self.nodes {
                eprintln!("----- node {} ({}) -----\n{}", node.id, node.log.display(), tail(&node.log, 40));
            }
        }
    }
}

/// `true` when a receipt says committed; panics on anything but a receipt.
fn committed(receipt: &Value) -> bool {
    assert!(receipt.get("txn").is_some() && receipt.get("replayed").is_some(), "not a receipt: {receipt}");
    receipt["outcome"] == "Committed"
}

/// The abort reason's variant name (`"IllegalOrderTransition"`, ...), or
/// `None` when the receipt is not an abort.
fn abort_reason(receipt: &Value) -> Option<String> {
    let reason = receipt["outcome"].get("Aborted")?;
    match reason {
        Value::String(unit) => Some(unit.clone()),
        Value::Object(map) => map.keys().next().cloned(),
        _ => None,
    }
}

#[test]
fn real_node_processes_pay_survive_kill_9_and_stop_on_sigint() {
    let started = Instant::now();
    let mut cluster = ProcessCluster::start();
    let leader = cluster.wait_for_leader();

    // ----- The README walk-through. -----
    let opened = cluster.client_json(&["open-account", "--account", "1", "--initial-minor", "10000"]);
    assert!(committed(&opened), "{opened}");
    assert_eq!(opened["replayed"], false);
    // The default key is derived from the account: running it again replays.
    let again = cluster.client_json(&["open-account", "--account", "1", "--initial-minor", "10000"]);
    assert!(committed(&again) && again["replayed"] == true, "same key, same body replays: {again}");
    assert_eq!(again["txn"], opened["txn"], "a replay names the first transaction");
    assert!(committed(&cluster.client_json(&["open-account", "--account", "2"])));
    let created = cluster.client_json(&["create-order", "--order", "7", "--merchant", "2", "--amount-minor", "2500"]);
    assert!(committed(&created), "{created}");
    assert_eq!(cluster.order_status(7), "CREATED");

    let paid = cluster.client_json(&["pay", "--order", "7", "--payer", "1", "--channel", "2", "--key", "pay-7"]);
    assert!(committed(&paid), "{paid}");
    let balance_1 = cluster.balance(1);
    assert_eq!(balance_1["balance_minor"], 7500, "{balance_1}");
    assert_eq!(balance_1["held_minor"], 0, "{balance_1}");
    assert_eq!(cluster.balance(2)["balance_minor"], 2500);
    assert_eq!(cluster.order_status(7), "PAID");
    assert_eq!(cluster.txn_state("pay-7"), serde_json::json!({ "Decided": "Committed" }));

    // Paying a paid order again (new key) aborts; nothing moves.
    let twice = cluster.client_json(&["pay", "--order", "7", "--payer", "1", "--key", "pay-7-again"]);
    assert!(!committed(&twice), "{twice}");
    assert_eq!(abort_reason(&twice).as_deref(), Some("IllegalOrderTransition"), "{twice}");
    let from = twice["outcome"]["Aborted"]["IllegalOrderTransition"]["from"].as_str().map(str::to_uppercase);
    assert_eq!(from.as_deref(), Some("PAID"), "{twice}");
    assert_eq!(cluster.txn_state("pay-7-again")["Decided"]["Aborted"], twice["outcome"]["Aborted"]);
    // The first key again replays the commit; it is not applied twice.
    let replay = cluster.client_json(&["pay", "--order", "7", "--payer", "1", "--channel", "2", "--key", "pay-7"]);
    assert!(committed(&replay) && replay["replayed"] == true, "{replay}");
    assert_eq!(cluster.balances(&[1, 2]), BTreeMap::from([(1, (7500, 0)), (2, (2500, 0))]));
    assert_eq!(cluster.order_status(7), "PAID");
    // Misuse gets a clear error and a non-zero exit, not a panic.
    let missing = cluster.client(&["balance", "--account", "424242"]);
    assert!(!missing.status.success() && missing.stderr.contains("does not exist"), "{}", missing.stderr);

    // ----- Kill -9 a non-leader while payments go on. -----
    // Preferably the node holding account 1, to see a read of a dead shard fail.
    let account_1_owner = cluster.owner(EntityKey::Account(AccountId(1)));
    let victim = if account_1_owner != leader {
        account_1_owner
    } else {
        (1..=NODES).find(|id| *id != leader).expect("a non-leader")
    };
    let live: Vec<NodeId> = (1..=NODES).filter(|id| *id != victim).collect();
    // An account on the victim's shard, funded before the kill.
    let stranded = cluster.pick(10, &[victim], true, |id| EntityKey::Account(AccountId(id)));
    assert!(committed(&cluster.client_json(&[
        "open-account",
        "--account",
        &stranded.to_string(),
        "--initial-minor",
        "1000"
    ])));
    cluster.wait_quiet(Duration::from_secs(10));
    cluster.kill_9(victim);

    assert_eq!(cluster.leader(), Some(leader), "the leader keeps leading with one follower down");
    // Every shard is a Raft group on the three nodes: whichever node
    // account 1's shard preferred, it stays readable (its group elects a
    // new leader if the victim led it).
    assert_eq!(cluster.balance(1)["balance_minor"], 7500, "a shard survives the loss of one replica");

    // A payment whose every shard is on a live node commits.
    let payer = cluster.pick(100, &live, true, |id| EntityKey::Account(AccountId(id)));
    let merchant = cluster.pick(payer + 1, &live, true, |id| EntityKey::Account(AccountId(id)));
    let order = cluster.pick(100, &live, true, |id| EntityKey::Order(OrderId(id)));
    let channel = cluster.pick(1, &live, true, |id| EntityKey::Channel(ChannelId(id)));
    assert!(channel <= 3, "default channels are 1..=3");
    let (payer_s, merchant_s, order_s, channel_s) =
        (payer.to_string(), merchant.to_string(), order.to_string(), channel.to_string());
    let open_payer = cluster.client_json(&["open-account", "--account", &payer_s, "--initial-minor", "5000"]);
    assert!(committed(&open_payer), "{open_payer}");
    assert!(committed(&cluster.client_json(&["open-account", "--account", &merchant_s])));
    let create = cluster.client_json(&[
        "create-order",
        "--order",
        &order_s,
        "--merchant",
        &merchant_s,
        "--amount-minor",
        "1200",
    ]);
    assert!(committed(&create), "{create}");
    let pay = cluster.client_json(&[
        "pay",
        "--order",
        &order_s,
        "--payer",
        &payer_s,
        "--channel",
        &channel_s,
        "--key",
        "pay-live",
    ]);
    assert!(committed(&pay), "a payment avoiding the dead node commits: {pay}");

    // A payment from an account whose shard preferred the dead node
    // commits too: the shard's other two replicas elected a leader.
    let order_2 = cluster.pick(order + 1, &live, true, |id| EntityKey::Order(OrderId(id)));
    let order_2_s = order_2.to_string();
    let create_2 = cluster.client_json(&[
        "create-order",
        "--order",
        &order_2_s,
        "--merchant",
        &merchant_s,
        "--amount-minor",
        "300",
    ]);
    assert!(committed(&create_2), "{create_2}");
    let stranded_s = stranded.to_string();
    let args = ["pay", "--order", &order_2_s, "--payer", &stranded_s, "--channel", &channel_s, "--key", "pay-dead"];
    let failed_over = cluster.client_json(&args);
    assert!(committed(&failed_over), "a payment on the dead node's shards commits on their new leaders: {failed_over}");
    assert_eq!(cluster.order_status(order_2), "PAID");

    // ----- Restart the killed node on its data: nothing was lost. -----
    let accounts = [1, 2, stranded, payer, merchant];
    let expected = BTreeMap::from([
        (1, (7500, 0)),
        (2, (2500, 0)),
        (stranded, (700, 0)),
        (payer, (3800, 0)),
        (merchant, (1500, 0)),
    ]);
    cluster.spawn(victim);
    assert_eq!(cluster.wait_for_leader(), leader, "the restarted follower rejoins the same leader");
    cluster.wait_quiet(Duration::from_secs(15));
    assert_eq!(cluster.balances(&accounts), expected, "balances after kill -9 and restart");
    assert_eq!(cluster.order_status(7), "PAID");
    assert_eq!(cluster.order_status(order), "PAID");
    assert_eq!(cluster.order_status(order_2), "PAID");

    // ----- Ctrl-C every node, restart the whole cluster: all still there. -----
    cluster.wait_quiet(Duration::from_secs(10));
    cluster.interrupt_all();
    for id in 1..=NODES {
        cluster.spawn(id);
    }
    cluster.wait_for_leader();
    assert_eq!(cluster.balances(&accounts), expected, "balances after a clean restart of every node");
    assert_eq!(cluster.txn_state("pay-7"), serde_json::json!({ "Decided": "Committed" }));
    assert_eq!(cluster.txn_state("pay-dead"), serde_json::json!({ "Decided": "Committed" }));
    let replay = cluster.client_json(&["pay", "--order", "7", "--payer", "1", "--channel", "2", "--key", "pay-7"]);
    assert!(committed(&replay) && replay["replayed"] == true, "idempotency survives restarts: {replay}");
    assert_eq!(cluster.balance(1)["balance_minor"], 7500);
    cluster.interrupt_all();
    eprintln!("processes test took {:?}", started.elapsed());
}
