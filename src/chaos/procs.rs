//! The `paytx node` OS processes of a chaos run: spawn, SIGKILL, SIGSTOP,
//! SIGCONT. Signals other than SIGKILL go through the `kill` command (no
//! unsafe code, no extra crate). Dropping [`NodeProcs`] kills every child —
//! also when the harness panics or is interrupted — so no node outlives a
//! run.

use paytx_protocol::NodeId;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on a SIGKILLed process going away.
const KILL_WAIT_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("node {0} is not a node of this cluster")]
    Unknown(NodeId),
    #[error("node {0} is not running")]
    NotRunning(NodeId),
    #[error("node {0} is already running")]
    AlreadyRunning(NodeId),
    #[error("cannot open the log {path}: {source}")]
    Log { path: PathBuf, source: std::io::Error },
    #[error("cannot start node {id} ({program}): {source}")]
    Spawn { id: NodeId, program: PathBuf, source: std::io::Error },
    #[error("cannot signal node {id} (pid {pid}) with {signal}: {reason}")]
    Signal { id: NodeId, pid: u32, signal: &'static str, reason: String },
    #[error("node {id} (pid {pid}) did not exit within {KILL_WAIT_MS} ms of SIGKILL")]
    Stuck { id: NodeId, pid: u32 },
    #[error("node {id} exited right after starting ({status}); see {log}")]
    Exited { id: NodeId, status: String, log: PathBuf },
}

struct NodeProc {
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// The node processes, by id.
pub struct NodeProcs {
    program: PathBuf,
    nodes: BTreeMap<NodeId, NodeProc>,
    /// `RUST_LOG` for the nodes (their logs go to files).
    log_filter: String,
}

impl NodeProcs {
    /// `program` is the `paytx` binary; `configs` maps each node to its
    /// config file; logs go next to each config as `node-<id>.log`.
    pub fn new(program: PathBuf, configs: BTreeMap<NodeId, PathBuf>, log_filter: String) -> NodeProcs {
        let nodes = configs
            .into_iter()
            .map(|(id, config)| {
                let log = config.with_file_name(format!("node-{id}.log"));
                (id, NodeProc { config, log, child: None, paused: false })
            })
            .collect();
        NodeProcs { program, nodes, log_filter }
    }

    fn node(&mut self, id: NodeId) -> Result<&mut NodeProc, ProcError> {
        self.nodes.get_mut(&id).ok_or(ProcError::Unknown(id))
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn log_of(&self, id: NodeId) -> Option<&Path> {
        self.nodes.get(&id).map(|n| n.log.as_path())
    }

    /// Starts `paytx node --config …` on the node's existing data (if any);
    /// stdout and stderr are appended to its log.
    pub fn spawn(&mut self, id: NodeId) -> Result<(), ProcError> {
        let program = self.program.clone();
        let filter = self.log_filter.clone();
        let node = self.node(id)?;
        if node.child.is_some() {
            return Err(ProcError::AlreadyRunning(id));
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|source| ProcError::Log { path: node.log.clone(), source })?;
        let log_err = log.try_clone().map_err(|source| ProcError::Log { path: node.log.clone(), source })?;
        let child = Command::new(&program)
            .arg("node")
            .arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| ProcError::Spawn { id, program, source })?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// `Err(Exited)` when the node's process has exited (reaped).
    pub fn check_alive(&mut self, id: NodeId) -> Result<(), ProcError> {
        let node = self.node(id)?;
        let Some(child) = node.child.as_mut() else { return Err(ProcError::NotRunning(id)) };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                node.child = None;
                Err(ProcError::Exited { id, status: status.to_string(), log: node.log.clone() })
            }
            Err(e) => Err(ProcError::Exited { id, status: e.to_string(), log: node.log.clone() }),
        }
    }

    pub fn is_running(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.child.is_some())
    }

    pub fn is_paused(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.paused)
    }

    /// SIGKILL: no chance to flush or say goodbye. Waits for the exit.
    pub fn kill(&mut self, id: NodeId) -> Result<(), ProcError> {
        let node = self.node(id)?;
        let mut child = node.child.take().ok_or(ProcError::NotRunning(id))?;
        node.paused = false;
        let pid = child.id();
        // `Child::kill` is SIGKILL on Unix; it also ends a stopped process.
        let _ = child.kill();
        let deadline = Instant::now() + Duration::from_millis(KILL_WAIT_MS);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => return Err(ProcError::Stuck { id, pid }),
            }
        }
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&mut self, id: NodeId) -> Result<(), ProcError> {
        self.signal(id, "STOP")?;
        self.node(id)?.paused = true;
        Ok(())
    }

    /// SIGCONT after [`NodeProcs::pause`].
    pub fn resume(&mut self, id: NodeId) -> Result<(), ProcError> {
        self.signal(id, "CONT")?;
        self.node(id)?.paused = false;
        Ok(())
    }

    fn signal(&mut self, id: NodeId, signal: &'static str) -> Result<(), ProcError> {
        let node = self.node(id)?;
        let pid = node.child.as_ref().ok_or(ProcError::NotRunning(id))?.id();
        let output = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .output()
            .map_err(|e| ProcError::Signal { id, pid, signal, reason: e.to_string() })?;
        if !output.status.success() {
            let reason = String::from_utf8_lossy(&output.stderr).trim().to_string();
            return Err(ProcError::Signal { id, pid, signal, reason });
        }
        Ok(())
    }

    /// Every paused node continues; every stopped one is started again.
    pub fn heal(&mut self) -> Result<(), ProcError> {
        for id in self.ids() {
            if self.nodes.get(&id).is_some_and(|n| n.paused) {
                self.resume(id)?;
            }
            if !self.is_running(id) {
                self.spawn(id)?;
            }
        }
        Ok(())
    }

    /// Kills every child (SIGKILL works on stopped processes too).
    pub fn kill_all(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            node.paused = false;
        }
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: NodeId, lines: usize) -> String {
        let Some(path) = self.log_of(id) else { return String::new() };
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for NodeProcs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sleep` stands in for a node: spawn, pause, resume and kill are
    /// plain process control.
    #[test]
    fn spawn_pause_resume_kill_and_drop_kills() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("node-1.toml");
        // `sleep node --config X` fails at once; use a script that sleeps.
        let script = dir.path().join("fake-node");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").expect("write script");
        let status = Command::new("chmod").arg("+x").arg(&script).status().expect("chmod");
        assert!(status.success());
        let mut procs = NodeProcs::new(script, BTreeMap::from([(1, config)]), "warn".into());
        procs.spawn(1).expect("spawn");
        assert!(matches!(procs.spawn(1), Err(ProcError::AlreadyRunning(1))));
        procs.check_alive(1).expect("alive");
        procs.pause(1).expect("SIGSTOP");
        procs.resume(1).expect("SIGCONT");
        procs.pause(1).expect("SIGSTOP");
        procs.kill(1).expect("SIGKILL ends a stopped process");
        assert!(!procs.is_running(1));
        assert!(matches!(procs.kill(1), Err(ProcError::NotRunning(1))));
        procs.heal().expect("heal restarts it");
        assert!(procs.is_running(1));
        let pid = procs.nodes[&1].child.as_ref().map(Child::id).expect("running");
        drop(procs);
        let alive =
            Command::new("kill").arg("-0").arg(pid.to_string()).stderr(Stdio::null()).status().expect("kill -0");
        assert!(!alive.success(), "dropping NodeProcs killed pid {pid}");
    }
}
