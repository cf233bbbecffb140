//! Which incarnation of this node's disk is running, and which replicas of
//! other nodes it has exchanged Raft messages with.
//!
//! A node that lost its disk lost the votes it cast and the entries it
//! acknowledged; it must come back under a new replica id, never the old
//! one (`paytx_protocol::replica`). But an empty data directory looks the
//! same whether the cluster is brand new or the disk was wiped. The
//! difference lives on the peers: every node records, durably and before
//! the message takes effect, each replica id it exchanges a Raft message
//! with ([`ReplicaBook`], the `ReplicaRecorder` of every group). So a node
//! that starts on an empty directory asks **every** peer which of its
//! incarnations they have seen ([`resolve`]):
//!
//! * none, from all of them: no earlier incarnation ever took part in any
//!   group (had it voted, answered or led, its counterpart would know), so
//!   the node is new: incarnation 0, and its replica ids are its node id;
//! * any: the node was rebuilt: incarnation = the highest seen + 1, and
//!   every group is joined under the new id (`paytx_raft::admit`).
//!
//! It waits until every peer has answered: a peer that is down might be
//! the only one that saw it, and guessing "new" would be the amnesia this
//! exists to prevent. Peers answer from the book before their own groups
//! run, so a cluster whose nodes all start empty resolves at once.

use paytx_protocol::clock::NodeClock;
use paytx_protocol::replica::{incarnation_of, node_of, ReplicaId};
use paytx_protocol::{BoxFuture, NodeId, PeerRequest, PeerResponse, Transport};
use paytx_raft::network::ReplicaRecorder;
use paytx_storage::record::{open_at, seal};
use paytx_storage::{Batch, DiskError, SharedDisk};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const IDENTITY_SPACE: &str = "node-identity";
const INCARNATION_KEY: &[u8] = b"incarnation";
const SEEN_SPACE: &str = "replicas-seen";
/// Written by every node start since the coordinator's first release: a
/// data directory that has it, but no identity record, ran before
/// identities existed (incarnation 0).
const LEGACY_SPACE: &str = "coordinator-meta";
const LEGACY_KEY: &[u8] = b"epoch";
/// Pause between rounds of asking the peers that have not answered.
pub const RESOLVE_RETRY_MS: u64 = 500;
/// Log the peers still awaited every this many rounds.
const RESOLVE_LOG_EVERY: u64 = 10;
/// Most replica ids one book remembers: each is a peer's incarnation, so
/// this is far above any real cluster; reaching it is a corrupt book or an
/// attack, and recording refuses (the RPC fails) rather than grow.
pub const MAX_SEEN_REPLICAS: usize = 65_536;

/// This node's running incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node: NodeId,
    pub incarnation: u32,
}

impl NodeIdentity {
    /// The Raft id of this node's replicas.
    pub fn replica(&self) -> ReplicaId {
        paytx_protocol::replica::replica_id(self.node, self.incarnation)
    }

    /// A rebuilt node joins its groups; it never initialises one.
    pub fn rebuilt(&self) -> bool {
        self.incarnation > 0
    }
}

/// The replica ids this node has exchanged Raft messages with (see the
/// module doc), in memory and in the `replicas-seen` keyspace. Clones
/// share one book.
#[derive(Clone)]
pub struct ReplicaBook {
    inner: Arc<BookInner>,
}

struct BookInner {
    disk: SharedDisk,
    seen: Mutex<BTreeSet<ReplicaId>>,
    /// One writer at a time, so two RPCs from a new replica write it once.
    writing: tokio::sync::Mutex<()>,
}

impl ReplicaBook {
    pub fn open(disk: SharedDisk) -> Result<ReplicaBook, DiskError> {
        let mut seen = BTreeSet::new();
        for (key, _) in disk.range(SEEN_SPACE, &[], None)? {
            let bytes: [u8; 8] = key.as_slice().try_into().map_err(|_| DiskError::Corrupt {
                space: SEEN_SPACE.into(),
                key_hex: key.iter().map(|b| format!("{b:02x}")).collect(),
                reason: "a replica id is 8 bytes".into(),
            })?;
            seen.insert(u64::from_be_bytes(bytes));
        }
        let inner = BookInner { disk, seen: Mutex::new(seen), writing: tokio::sync::Mutex::new(()) };
        Ok(ReplicaBook { inner: Arc::new(inner) })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, BTreeSet<ReplicaId>> {
        self.inner.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The incarnations of `node` this book holds, ascending.
    pub fn incarnations_of(&self, node: NodeId) -> Vec<u32> {
        self.seen().iter().filter(|r| node_of(**r) == node).map(|r| incarnation_of(*r)).collect()
    }

    /// The answer to [`PeerRequest::ReplicasSeen`].
    pub fn answer(&self, node: NodeId) -> PeerResponse {
        PeerResponse::ReplicasSeen { incarnations: self.incarnations_of(node) }
    }

    async fn record_durably(self, replica: ReplicaId) -> Result<(), String> {
        let _writer = self.inner.writing.lock().await;
        {
            let seen = self.seen();
            if seen.contains(&replica) {
                return Ok(());
            }
            if seen.len() >= MAX_SEEN_REPLICAS {
                return Err(format!("the replica book is full ({MAX_SEEN_REPLICAS} ids)"));
            }
        }
        let mut batch = Batch::new();
        batch.put(replica.to_be_bytes().to_vec(), Vec::new());
        self.inner.disk.apply(SEEN_SPACE, batch).map_err(|e| e.to_string())?;
        self.inner.disk.sync().await.map_err(|e| e.to_string())?;
        self.seen().insert(replica);
        tracing::info!(replica, node = node_of(replica), incarnation = incarnation_of(replica), "replica recorded");
        Ok(())
    }
}

impl ReplicaRecorder for ReplicaBook {
    fn record(&self, replica: ReplicaId) -> Option<BoxFuture<Result<(), String>>> {
        if self.seen().contains(&replica) {
            return None;
        }
        Some(Box::pin(self.clone().record_durably(replica)))
    }
}

/// Why a node could not settle its identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the identity record is unreadable: {0}")]
    Disk(#[from] DiskError),
    #[error("incarnations of node {node} are exhausted")]
    Exhausted { node: NodeId },
}

fn store(disk: &SharedDisk, incarnation: u32) -> Result<(), DiskError> {
    let mut batch = Batch::new();
    batch.put(INCARNATION_KEY.to_vec(), seal(&incarnation));
    disk.apply(IDENTITY_SPACE, batch)
}

/// Settles which incarnation of `node` this disk is (see the module doc):
/// the stored one; 0 for a directory that ran before identities existed;
/// for an empty directory, what every peer in `peers` answers. Durable
/// before it returns.
pub async fn resolve(
    disk: &SharedDisk,
    node: NodeId,
    peers: &[NodeId],
    remote: &Arc<dyn Transport>,
    timeout_ms: u64,
) -> Result<NodeIdentity, IdentityError> {
    if let Some(bytes) = disk.get(IDENTITY_SPACE, INCARNATION_KEY)? {
        let incarnation: u32 = open_at(IDENTITY_SPACE, INCARNATION_KEY, &bytes)?;
        return Ok(NodeIdentity { node, incarnation });
    }
    // A directory from before identities ran as incarnation 0. (The planted
    // bug treats every empty directory as new: amnesia.)
    let legacy = disk.get(LEGACY_SPACE, LEGACY_KEY)?.is_some();
    let planted = paytx_protocol::planted::active(paytx_protocol::planted::Bug::RebuildUnderOldIdentity);
    let incarnation = if legacy || planted {
        0
    } else {
        let seen = ask_every_peer(node, peers, remote, timeout_ms).await;
        match seen.values().flatten().max() {
            None => 0,
            Some(highest) => {
                let next = highest.checked_add(1).ok_or(IdentityError::Exhausted { node })?;
                tracing::warn!(
                    node,
                    incarnation = next,
                    ?seen,
                    "empty data directory, but peers saw this node before: it was rebuilt, and rejoins every group \
                     under a new replica id"
                );
                next
            }
        }
    };
    store(disk, incarnation)?;
    disk.sync().await?;
    Ok(NodeIdentity { node, incarnation })
}

/// Asks each of `peers` (this node excluded) which incarnations of `node`
/// it has seen, until every one has answered.
async fn ask_every_peer(
    node: NodeId,
    peers: &[NodeId],
    remote: &Arc<dyn Transport>,
    timeout_ms: u64,
) -> BTreeMap<NodeId, Vec<u32>> {
    let mut answers: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
    let mut waiting: Vec<NodeId> = peers.iter().copied().filter(|p| *p != node).collect();
    let mut rounds: u64 = 0;
    while !waiting.is_empty() {
        if rounds > 0 {
            if rounds % RESOLVE_LOG_EVERY == 1 {
                tracing::warn!(
                    node,
                    waiting_for = ?waiting,
                    "empty data directory: waiting for every peer to say whether this node ran before"
                );
            }
            NodeClock::current().sleep(Duration::from_millis(RESOLVE_RETRY_MS)).await;
        }
        for peer in std::mem::take(&mut waiting) {
            match remote.call(peer, PeerRequest::ReplicasSeen { node }, timeout_ms).await {
                Ok(PeerResponse::ReplicasSeen { incarnations }) => {
                    answers.insert(peer, incarnations);
                }
                _ => waiting.push(peer),
            }
        }
        rounds += 1;
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;
    use paytx_protocol::replica::replica_id;
    use paytx_protocol::TransportError;
    use paytx_storage::MemDisk;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Peers that answer `ReplicasSeen` from a fixed table; a peer fails its
    /// first `flaky` calls (down, then up).
    struct Peers {
        seen: BTreeMap<NodeId, Vec<u32>>,
        flaky: u64,
        calls: AtomicU64,
    }

    impl Transport for Peers {
        fn call(
            &self,
            to: NodeId,
            request: PeerRequest,
            _timeout_ms: u64,
        ) -> BoxFuture<Result<PeerResponse, TransportError>> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = match request {
                PeerRequest::ReplicasSeen { .. } if call < self.flaky => {
                    Err(TransportError::Unreachable { node: to, reason: "down".into() })
                }
                PeerRequest::ReplicasSeen { .. } => {
                    Ok(PeerResponse::ReplicasSeen { incarnations: self.seen.get(&to).cloned().unwrap_or_default() })
                }
                other => panic!("only the identity question is asked, not {other:?}"),
            };
            Box::pin(async move { answer })
        }
    }

    fn peers(seen: &[(NodeId, &[u32])], flaky: u64) -> Arc<dyn Transport> {
        let seen = seen.iter().map(|(n, s)| (*n, s.to_vec())).collect();
        Arc::new(Peers { seen, flaky, calls: AtomicU64::new(0) })
    }

    #[tokio::test]
    async fn a_recorded_replica_survives_a_crash() {
        let memory = MemDisk::new();
        let book = ReplicaBook::open(Arc::new(memory.clone())).unwrap();
        for replica in [replica_id(2, 0), replica_id(2, 3), replica_id(3, 0)] {
            book.record(replica).expect("a first record writes").await.unwrap();
            assert!(book.record(replica).is_none(), "a second one is already durable");
        }
        memory.crash();
        let reopened = ReplicaBook::open(Arc::new(memory)).unwrap();
        assert_eq!(reopened.incarnations_of(2), vec![0, 3]);
        assert_eq!(reopened.answer(3), PeerResponse::ReplicasSeen { incarnations: vec![0] });
        assert!(reopened.incarnations_of(4).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_disk_nobody_saw_is_a_new_node_and_keeps_incarnation_zero() {
        let memory = MemDisk::new();
        let disk: SharedDisk = Arc::new(memory.clone());
        let remote = peers(&[(2, &[]), (3, &[])], 0);
        let identity = resolve(&disk, 1, &[1, 2, 3], &remote, 100).await.unwrap();
        assert_eq!(identity, NodeIdentity { node: 1, incarnation: 0 });
        assert_eq!(identity.replica(), 1, "a first incarnation's replica id is the node id");
        assert!(!identity.rebuilt());
        // Stored durably: a restart does not ask again, even if peers now
        // claim otherwise.
        memory.crash();
        let claims = peers(&[(2, &[0]), (3, &[0])], 0);
        assert_eq!(resolve(&disk, 1, &[1, 2, 3], &claims, 100).await.unwrap().incarnation, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_disk_a_peer_saw_is_rebuilt_under_the_next_incarnation() {
        let disk: SharedDisk = Arc::new(MemDisk::new());
        // Only node 3 saw incarnations 0 and 1; node 2 saw none. The first
        // four calls fail (peers down): the node waits for both answers.
        let remote = peers(&[(2, &[]), (3, &[0, 1])], 4);
        let identity = resolve(&disk, 1, &[1, 2, 3], &remote, 100).await.unwrap();
        assert_eq!(identity.incarnation, 2);
        assert!(identity.rebuilt());
        assert_eq!(paytx_protocol::replica::node_of(identity.replica()), 1);
    }

    #[tokio::test]
    async fn a_directory_from_before_identities_is_incarnation_zero_without_asking() {
        let disk: SharedDisk = Arc::new(MemDisk::new());
        let mut batch = Batch::new();
        batch.put(LEGACY_KEY.to_vec(), seal(&3u64));
        disk.apply(LEGACY_SPACE, batch).unwrap();
        // Would answer "rebuilt" if asked; it must not be asked.
        let remote = peers(&[(2, &[0])], u64::MAX);
        assert_eq!(resolve(&disk, 1, &[1, 2], &remote, 100).await.unwrap().incarnation, 0);
    }
}
