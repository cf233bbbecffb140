//! The hash-chained audit log: every state-changing request (who, what,
//! when, outcome) appended to a sled database of the node's own, each entry
//! carrying `SHA-256(previous hash ‖ entry)`. [`verify`] walks the chain and
//! names the first entry that was modified, deleted or moved.
//!
//! (decision) One log per node, not in the cluster: an audit trail of what
//! *this* node was asked, written even when the cluster is unavailable. A
//! `head` key holds the last sequence number and hash, so deleting entries
//! at the tail is caught too. Entries ride sled's periodic flush (500 ms)
//! and are flushed on shutdown, except those of money-moving requests
//! (payments, refunds, top-ups): [`AuditLog::sync`] makes each of them
//! durable before its answer is sent (`api::finish_durable`). A failed sync
//! is fail-stop (README "Durability"): the log remembers it and every later
//! sync fails too (after a failed fsync nothing written since the last good
//! one can be trusted to be on disk), and `api::finish_durable` answers
//! `500 audit_not_durable` instead of the request's answer and trips the
//! node's fail-stop.

use crate::secrets::to_hex;
use paytx_protocol::messages::AuditChainView;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const HEAD_KEY: &[u8] = b"head";
/// Longest `actor`/`action`/`target`/`outcome` string kept, in bytes.
const MAX_FIELD_BYTES: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit log at {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("cannot write the audit log: {0}")]
    Write(String),
    #[error("audit log {path}: {problem}")]
    Broken { path: PathBuf, problem: String },
    #[error("cannot make the audit log durable (fsync failed): {0}")]
    Sync(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub node: u64,
    /// `admin`, `merchant:<id>`, `user:<id>` or `anonymous`.
    pub actor: String,
    /// e.g. `order.create`.
    pub action: String,
    /// The resource acted on, when known.
    pub target: String,
    pub status: u16,
    /// `ok` or the error code.
    pub outcome: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: [u8; 32],
}

impl AuditEntry {
    fn compute_hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.prev_hash.as_bytes());
        for field in [&self.actor, &self.action, &self.target, &self.outcome] {
            hasher.update((field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
        for number in [self.seq, self.at_ms, self.node, u64::from(self.status)] {
            hasher.update(number.to_le_bytes());
        }
        hasher.finalize().into()
    }
}

pub struct AuditLog {
    db: sled::Db,
    node: u64,
    /// Serialises appends: the chain is a sequence.
    head: Mutex<Head>,
    /// How far the running node has verified its own chain
    /// ([`AuditLog::check_chain`]).
    checked: Mutex<Checked>,
    /// The first sync failure, once there was one: every later sync fails
    /// with it (fail-stop).
    sync_failed: std::sync::OnceLock<String>,
}

/// The incremental check's progress: entries `1..=seq` verified, ending
/// in `hash`, or the first problem found (kept: a broken chain stays broken).
#[derive(Debug, Clone)]
struct Checked {
    seq: u64,
    hash: [u8; 32],
    view: AuditChainView,
}

fn clip(text: &str) -> String {
    let mut end = text.len().min(MAX_FIELD_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn read_head(db: &sled::Db, path: &Path) -> Result<Head, AuditError> {
    let open_error = |reason: String| AuditError::Open { path: path.to_path_buf(), reason };
    match db.get(HEAD_KEY).map_err(|e| open_error(e.to_string()))? {
        None => Ok(Head { seq: 0, hash: [0; 32] }),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| open_error(format!("bad head: {e}"))),
    }
}

/// Opens the sled db at `path`, waiting up to 3 s for a previous handle in
/// this process to let go of its lock (sled's flusher thread releases it a
/// moment after the last `Db` is dropped).
fn open_db(path: &Path) -> Result<sled::Db, AuditError> {
    let mut waited_ms = 0;
    loop {
        match sled::open(path) {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::Other && waited_ms < 3_000 => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                waited_ms += 50;
            }
            Err(e) => return Err(AuditError::Open { path: path.to_path_buf(), reason: e.to_string() }),
        }
    }
}

impl AuditLog {
    pub fn open(path: &Path, node: u64) -> Result<AuditLog, AuditError> {
        let db = open_db(path)?;
        let head = read_head(&db, path)?;
        let view = AuditChainView { entries: head.seq, verified_entries: 0, problem: None, checked_at_ms: 0 };
        let checked = Mutex::new(Checked { seq: 0, hash: [0; 32], view });
        Ok(AuditLog { db, node, head: Mutex::new(head), checked, sync_failed: std::sync::OnceLock::new() })
    }

    /// Verifies the entries appended since the last check (the first
    /// check: all of them) against the chain and the head, and returns the
    /// state found, as [`AuditLog::last_check`] will until the next check.
    /// Entries verified once are not read again: this catches what
    /// happened to the log since the node opened it — a tampered file
    /// opened at start, an entry that does not follow — while
    /// `paytx audit verify` re-reads the whole chain of a stopped node.
    /// Blocking (sled reads): run it off the async threads.
    pub fn check_chain(&self) -> AuditChainView {
        let head = *self.head.lock().unwrap_or_else(|p| p.into_inner());
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        checked.view.entries = head.seq;
        checked.view.checked_at_ms = now_ms();
        if checked.view.problem.is_some() || checked.seq >= head.seq {
            return checked.view.clone();
        }
        // Entries up to the head were written with it, in one batch.
        let (from, to) = ((checked.seq + 1).to_be_bytes(), (head.seq + 1).to_be_bytes());
        let mut problem = None;
        for item in self.db.range(&from[..]..&to[..]) {
            let checked_entry = item
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|(key, value)| check_entry(&key, &value, checked.seq + 1, &checked.hash));
            match checked_entry {
                Ok(hash) => {
                    checked.seq += 1;
                    checked.hash = hash;
                }
                Err(found) => {
                    problem = Some(found);
                    break;
                }
            }
        }
        if problem.is_none() && checked.seq != head.seq {
            problem = Some(format!("entries {}..{} are missing: deleted", checked.seq + 1, head.seq));
        } else if problem.is_none() && checked.hash != head.hash {
            problem = Some(format!("the last entry {} is not the one the head recorded: replaced", head.seq));
        }
        checked.view.verified_entries = checked.seq;
        checked.view.problem = problem;
        checked.view.clone()
    }

    /// What the last [`AuditLog::check_chain`] found.
    pub fn last_check(&self) -> AuditChainView {
        self.checked.lock().unwrap_or_else(|p| p.into_inner()).view.clone()
    }

    pub fn append(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        status: u16,
        outcome: &str,
    ) -> Result<u64, AuditError> {
        let mut head = self.head.lock().map_err(|_| AuditError::Write("audit lock poisoned".into()))?;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let seq = head.seq + 1;
        let mut entry = AuditEntry {
            seq,
            at_ms,
            node: self.node,
            actor: clip(actor),
            action: clip(action),
            target: clip(target),
            status,
            outcome: clip(outcome),
            prev_hash: to_hex(&head.hash),
            hash: String::new(),
        };
        let hash = entry.compute_hash();
        entry.hash = to_hex(&hash);
        let next = Head { seq, hash };
        let encode = |value: &dyn erased::Json| value.json().map_err(|e| AuditError::Write(e.to_string()));
        let mut batch = sled::Batch::default();
        batch.insert(&seq.to_be_bytes(), encode(&entry)?);
        batch.insert(HEAD_KEY, encode(&next)?);
        self.db.apply_batch(batch).map_err(|e| AuditError::Write(e.to_string()))?;
        *head = next;
        Ok(seq)
    }

    /// Makes every entry appended so far durable (an fsync of the audit
    /// database). Concurrent callers share sled's flush. Once a sync has
    /// failed, every later one fails with the same reason, at once.
    pub async fn sync(&self) -> Result<(), AuditError> {
        if let Some(reason) = self.sync_failed.get() {
            return Err(AuditError::Sync(reason.clone()));
        }
        match self.db.flush_async().await {
            Ok(_) => Ok(()),
            Err(error) => {
                let reason = self.sync_failed.get_or_init(|| error.to_string());
                Err(AuditError::Sync(reason.clone()))
            }
        }
    }

    /// The reason of the first failed sync, once one failed.
    pub fn sync_failure(&self) -> Option<String> {
        self.sync_failed.get().cloned()
    }

    /// A test seam: makes every later [`AuditLog::sync`] fail with
    /// `reason`, as a failed fsync would.
    #[doc(hidden)]
    pub fn fail_syncs(&self, reason: &str) {
        let _ = self.sync_failed.set(reason.to_string());
    }

    pub fn flush(&self) {
        if let Err(error) = self.db.flush() {
            tracing::warn!(%error, "flushing the audit log failed");
        }
    }

    /// The last `limit` entries, oldest first (for tests and tools).
    pub fn tail(&self, limit: usize) -> Vec<AuditEntry> {
        let mut entries: Vec<AuditEntry> = self
            .db
            .range(&0u64.to_be_bytes()[..]..HEAD_KEY)
            .rev()
            .take(limit)
            .filter_map(|item| item.ok())
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .collect();
        entries.reverse();
        entries
    }
}

mod erased {
    pub trait Json {
        fn json(&self) -> Result<Vec<u8>, serde_json::Error>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Result<Vec<u8>, serde_json::Error> {
            serde_json::to_vec(self)
        }
    }
}

/// Checks the stored entry `key → value` as the chain's entry
/// `expected_seq` following the hash `prev`; its hash, or what is wrong.
fn check_entry(key: &[u8], value: &[u8], expected_seq: u64, prev: &[u8; 32]) -> Result<[u8; 32], String> {
    let key_seq = <[u8; 8]>::try_from(key).map(u64::from_be_bytes).map_err(|_| "a foreign key".to_string())?;
    let entry: AuditEntry =
        serde_json::from_slice(value).map_err(|_| format!("entry {key_seq} is not a valid entry: modified"))?;
    if key_seq != expected_seq {
        return Err(format!("entries {expected_seq}..{} are missing: deleted", key_seq.saturating_sub(1)));
    }
    if entry.seq != key_seq {
        return Err(format!("position {key_seq} holds entry {}: reordered", entry.seq));
    }
    if entry.prev_hash != to_hex(prev) {
        return Err(format!(
            "entry {key_seq} does not follow entry {}: reordered or an entry was replaced",
            key_seq.saturating_sub(1)
        ));
    }
    let hash = entry.compute_hash();
    if entry.hash != to_hex(&hash) {
        return Err(format!("entry {key_seq} was modified (its hash does not match its contents)"));
    }
    Ok(hash)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The audit log's directory inside a node's data directory.
pub fn audit_dir(node_data_dir: &Path) -> PathBuf {
    node_data_dir.join("gateway-audit")
}

/// Checks the chain at `path`; returns how many entries it holds, or the
/// first problem found (which entry, and what happened to it).
pub fn verify(path: &Path) -> Result<u64, AuditError> {
    let db = open_db(path)?;
    let broken = |problem: String| AuditError::Broken { path: path.to_path_buf(), problem };
    let head = read_head(&db, path)?;
    let mut expected_seq = 1u64;
    let mut prev = [0u8; 32];
    for item in db.range(&0u64.to_be_bytes()[..]..HEAD_KEY) {
        let (key, value) = item.map_err(|e| broken(format!("cannot read: {e}")))?;
        prev = check_entry(&key, &value, expected_seq, &prev).map_err(broken)?;
        expected_seq += 1;
    }
    let last = expected_seq - 1;
    if head.seq != last {
        return Err(broken(format!(
            "the log ends at entry {last} but its head says {}: entries deleted at the end",
            head.seq
        )));
    }
    if head.hash != prev {
        return Err(broken(format!("the last entry {last} is not the one the head recorded: replaced")));
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(entries: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = audit_dir(dir.path());
        let log = AuditLog::open(&path, 1).unwrap();
        for i in 0..entries {
            log.append("admin", "merchant.create", &format!("mch_{i}"), 201, "ok").unwrap();
        }
        log.flush();
        drop(log);
        (dir, path)
    }

    fn rewrite(path: &Path, f: impl FnOnce(&sled::Db)) {
        let db = open_db(path).unwrap();
        f(&db);
        db.flush().unwrap();
    }

    fn entry(db: &sled::Db, seq: u64) -> AuditEntry {
        serde_json::from_slice(&db.get(seq.to_be_bytes()).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn an_intact_log_verifies_and_reopens_where_it_left_off() {
        let (_dir, path) = log_with(5);
        assert_eq!(verify(&path).unwrap(), 5);
        let log = AuditLog::open(&path, 1).unwrap();
        assert_eq!(log.append("user:usr_1", "topup.create", "top_1", 201, "ok").unwrap(), 6);
        assert_eq!(log.tail(2).len(), 2);
        drop(log);
        assert_eq!(verify(&path).unwrap(), 6);
    }

    #[tokio::test]
    async fn a_failed_sync_fails_every_later_sync() {
        let (_dir, path) = log_with(1);
        let log = AuditLog::open(&path, 1).unwrap();
        log.sync().await.expect("a healthy log syncs");
        assert_eq!(log.sync_failure(), None);
        log.fail_syncs("injected");
        log.fail_syncs("a second reason is not kept");
        for _ in 0..2 {
            let error = log.sync().await.unwrap_err();
            assert!(matches!(&error, AuditError::Sync(reason) if reason == "injected"), "{error}");
        }
        assert_eq!(log.sync_failure().as_deref(), Some("injected"));
        assert_eq!(log.append("admin", "merchant.create", "mch_x", 201, "ok").unwrap(), 2, "appends go on");
    }

    #[test]
    fn modification_deletion_and_reordering_are_detected() {
        let (_dir, path) = log_with(5);
        rewrite(&path, |db| {
            let mut e = entry(db, 3);
            e.outcome = "forbidden".into();
            db.insert(3u64.to_be_bytes(), serde_json::to_vec(&e).unwrap()).unwrap();
        });
        let message = verify(&path).unwrap_err().to_string();
        assert!(message.contains("entry 3 was modified"), "{message}");

        let (_dir, path) = log_with(5);
        rewrite(&path, |db| {
            db.remove(2u64.to_be_bytes()).unwrap();
        });
        let message = verify(&path).unwrap_err().to_string();
        assert!(message.contains("2..2 are missing"), "{message}");

        let (_dir, path) = log_with(5);
        rewrite(&path, |db| {
            db.remove(5u64.to_be_bytes()).unwrap();
        });
        let message = verify(&path).unwrap_err().to_string();
        assert!(message.contains("deleted at the end"), "{message}");

        let (_dir, path) = log_with(5);
        rewrite(&path, |db| {
            let (two, three) = (entry(db, 2), entry(db, 3));
            db.insert(2u64.to_be_bytes(), serde_json::to_vec(&three).unwrap()).unwrap();
            db.insert(3u64.to_be_bytes(), serde_json::to_vec(&two).unwrap()).unwrap();
        });
        let message = verify(&path).unwrap_err().to_string();
        assert!(message.contains("position 2 holds entry 3: reordered"), "{message}");
    }

    #[test]
    fn the_running_node_checks_its_chain_incrementally_and_names_a_break() {
        let (_dir, path) = log_with(5);
        let log = AuditLog::open(&path, 1).unwrap();
        assert_eq!((log.last_check().verified_entries, log.last_check().checked_at_ms), (0, 0), "not checked yet");
        let first = log.check_chain();
        assert_eq!((first.entries, first.verified_entries, first.problem.clone()), (5, 5, None));
        assert!(first.checked_at_ms > 0);
        log.append("user:usr_1", "topup.create", "top_1", 201, "ok").unwrap();
        log.append("user:usr_1", "order.pay", "ord_1", 200, "ok").unwrap();
        let second = log.check_chain();
        assert_eq!((second.entries, second.verified_entries, second.problem), (7, 7, None));
        assert_eq!(log.last_check().verified_entries, 7);
        drop(log);

        // A log tampered with while the node was down: the first check names it.
        let (_dir, path) = log_with(5);
        rewrite(&path, |db| {
            let mut e = entry(db, 3);
            e.status = 500;
            db.insert(3u64.to_be_bytes(), serde_json::to_vec(&e).unwrap()).unwrap();
        });
        let log = AuditLog::open(&path, 1).unwrap();
        let broken = log.check_chain();
        assert_eq!(broken.verified_entries, 2, "entries 1 and 2 verify");
        assert!(broken.problem.as_deref().is_some_and(|p| p.contains("entry 3 was modified")), "{broken:?}");
        log.append("admin", "merchant.create", "mch_9", 201, "ok").unwrap();
        assert!(log.check_chain().problem.is_some(), "a broken chain stays broken");
        drop(log);

        // Entries deleted at the end.
        let (_dir, path) = log_with(5);
        rewrite(&path, |db| {
            db.remove(5u64.to_be_bytes()).unwrap();
        });
        let log = AuditLog::open(&path, 1).unwrap();
        let cut = log.check_chain();
        assert!(cut.problem.as_deref().is_some_and(|p| p.contains("missing")), "{cut:?}");
    }
}
