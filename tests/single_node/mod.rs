//! A one-node cluster as a real `paytx node` OS process, for the limits and
//! corruption tests: a config written here, the child's log in a file, a
//! guard that kills the child on the way out, and its peak memory.
#![allow(dead_code)] // each test binary uses a different subset

use paytx::config::NodeConfig;
use paytx::protocol::{AccountId, Currency, Money, NodeId, Operation, TxnRequest};
use paytx::{Client, ClientConfig};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const PAYTX: &str = env!("CARGO_BIN_EXE_paytx");

/// A node config on a free loopback port, data in `dir/data`.
pub fn config(dir: &Path) -> NodeConfig {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let addrs: BTreeMap<NodeId, SocketAddr> = [(1, SocketAddr::from(([127, 0, 0, 1], port)))].into();
    let mut config = NodeConfig::local(1, &addrs, dir.join("data"), &NodeConfig::random_secret());
    config.raft.heartbeat_interval_ms = 50;
    config.raft.election_timeout_min_ms = 150;
    config.raft.election_timeout_max_ms = 300;
    config
}

/// One running `paytx node`; killed when dropped.
pub struct NodeProcess {
    pub config: NodeConfig,
    pub log: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    /// Writes `config` under `dir` and starts the node on it.
    pub fn spawn(dir: &Path, config: &NodeConfig, name: &str) -> NodeProcess {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config.to_toml().expect("the config serialises")).expect("write the config");
        let log = dir.join(format!("{name}.log"));
        let out = File::options().create(true).append(true).open(&log).expect("open the node log");
        let child = Command::new(PAYTX)
            .arg("node")
            .arg("--config")
            .arg(&path)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "warn,openraft=error")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the log handle"))
            .stderr(out)
            .spawn()
            .expect("spawn paytx node");
        NodeProcess { config: config.clone(), log, child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn addr(&self) -> SocketAddr {
        self.config.listen
    }

    /// The exit status, if the node has exited within `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }

    /// SIGKILL: a crash, no clean close of the data files.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Peak resident memory of the node process (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- tail of {} ---\n{}", self.log.display(), lines[lines.len().saturating_sub(30)..].join("\n"));
        }
        self.kill_9();
    }
}

/// A client of one node, connected once the node listens (bounded).
pub async fn client(addr: SocketAddr) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::connect_with(vec![addr], ClientConfig::default()).await {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("node at {addr} never came up: {e}"),
        }
    }
}

pub fn cny(minor: i64) -> Money {
    Money::new(minor, Currency::CNY)
}

pub fn open_ops(accounts: &[(u64, i64)]) -> Vec<Operation> {
    accounts
        .iter()
        .map(|(id, minor)| Operation::OpenAccount {
            account: AccountId(*id),
            currency: Currency::CNY,
            initial_minor: *minor,
        })
        .collect()
}

pub fn transfer(from: u64, to: u64, minor: i64) -> Vec<Operation> {
    vec![
        Operation::Debit { account: AccountId(from), amount: cny(minor) },
        Operation::Credit { account: AccountId(to), amount: cny(minor) },
    ]
}

/// Submits until committed (bounded): the first one waits for the election.
pub async fn commit(client: &Client, key: &str, ops: Vec<Operation>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.submit(TxnRequest::new(key, ops.clone())).await {
            Ok(receipt) if receipt.outcome.is_committed() => return,
            Ok(receipt) => panic!("{key} aborted: {receipt:?}"),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{key}: {e}"),
        }
    }
}

/// The balance of an account, `None` if it does not exist.
pub async fn balance(client: &Client, id: u64) -> Option<i64> {
    client.account(AccountId(id)).await.expect("read an account").map(|view| view.balance_minor)
}
