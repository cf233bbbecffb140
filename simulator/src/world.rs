//! The simulated world shared by every node of a run: the seeded RNG, the
//! network's state (who is up, which links are cut, how messages are
//! delayed, dropped and duplicated), the trace, and fault counters.
//!
//! One `World` per run, behind a mutex (the `Transport` seam requires
//! `Send + Sync`; the whole run is on one thread, so it is never contended).

use crate::trace::Trace;
use paytx_node::PeerEndpoint;
use paytx_protocol::clock::NodeClock;
use paytx_protocol::NodeId;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

/// How the network misbehaves (all chosen from the seed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetFaults {
    pub drop_per_million: u32,
    pub duplicate_per_million: u32,
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
}

impl NetFaults {
    pub fn none() -> Self {
        NetFaults { drop_per_million: 0, duplicate_per_million: 0, delay_min_ms: 1, delay_max_ms: 2 }
    }
}

/// Fault and event counters for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub messages_delivered: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    /// `sync` calls, and the flushes of the simulated devices that served
    /// them (group commit: fewer flushes than syncs).
    pub disk_syncs: u64,
    pub disk_flushes: u64,
    /// Syncs that waited behind a flush in progress and were covered by
    /// another sync's flush, and the most syncs in flight on one disk.
    pub disk_syncs_joined: u64,
    pub disk_max_syncs_in_flight: u64,
    /// Crashes that kept part of the unsynced tail, and the batches kept.
    pub torn_crashes: u64,
    pub torn_batches_kept: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub partitions: u64,
    pub pauses: u64,
    /// Largest clock drift any incarnation ran with, in parts per million
    /// (either way).
    pub max_drift_ppm: u64,
    pub fsync_failures: u64,
    pub leader_crashes: u64,
    /// Nodes lost for good (replicated shards only).
    pub nodes_lost: u64,
    /// Disks wiped (the node restarted empty and rebuilt; replicated only).
    pub disks_wiped: u64,
    /// Nodes cut off for 4–8 s under load, so their replicas fall behind
    /// the leaders' purge point (replicated only).
    pub replicas_lagging: u64,
    /// Shard snapshots installed by the replicas up at the end of the run
    /// (each replica counts since it last started).
    pub shard_snapshots_installed: u64,
    /// Group leaderships handed back to their preferred replicas, and
    /// hand-overs that stopped short, by the nodes up at the end of the
    /// run (each node counts since it last started).
    pub leaders_handed_over: u64,
    pub hand_overs_stopped: u64,
    /// What the coordinator's batched log carried (the most advanced
    /// replica's `BatchStats` at the end of the run).
    pub batch: paytx_coordinator::table::BatchStats,
    /// Prepare and decision batches answered (`PeerRequest::PrepareBatch`,
    /// `DecideBatch`), the prepares and decisions they carried, and the
    /// prepares of a batch answered `Blocked` (sent again alone), by the
    /// nodes up at the end of the run (each counts since it last started).
    pub prepare_batches: u64,
    pub prepares_in_batches: u64,
    pub decide_batches: u64,
    pub decisions_in_batches: u64,
    pub blocked_in_batches: u64,
}

/// A node as the network sees it.
#[derive(Default)]
pub struct NodeSlot {
    /// Bumped at every crash: messages of an older incarnation are dropped.
    pub incarnation: u64,
    /// What answers the node's peers: set when the node starts (before
    /// its core, which asks its peers who it is), cleared when it crashes.
    pub endpoint: Option<Arc<PeerEndpoint>>,
    /// The clock of the node's current incarnation (skewed, drifting; a
    /// pause stops it). Every timer of the node runs on it.
    pub clock: NodeClock,
}

pub struct WorldState {
    pub rng: ChaCha8Rng,
    pub trace: Trace,
    pub counters: Counters,
    pub faults: NetFaults,
    pub nodes: BTreeMap<NodeId, NodeSlot>,
    /// Directed links that deliver nothing (partitions, pauses).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    pub start: Instant,
}

/// Shared handle on the world.
#[derive(Clone)]
pub struct World {
    state: Arc<Mutex<WorldState>>,
}

impl World {
    pub fn new(rng: ChaCha8Rng, keep_full_trace: bool, faults: NetFaults) -> Self {
        World {
            state: Arc::new(Mutex::new(WorldState {
                rng,
                trace: Trace::new(keep_full_trace),
                counters: Counters::default(),
                faults,
                nodes: BTreeMap::new(),
                cut: BTreeSet::new(),
                start: Instant::now(),
            })),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, WorldState> {
        // Single-threaded run: a poisoned lock means a panic is already
        // unwinding the run; the state is still readable for the report.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Virtual milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        self.lock().now_ms()
    }

    pub fn record(&self, label: impl FnOnce() -> String, identity: &[u8]) {
        let mut state = self.lock();
        let at = state.now_ms();
        state.trace.record(at, label, identity);
    }
}

impl WorldState {
    pub fn now_ms(&self) -> u64 {
        Instant::now().saturating_duration_since(self.start).as_millis() as u64
    }

    /// A delay for one message leg.
    pub fn delay_ms(&mut self) -> u64 {
        let (min, max) = (self.faults.delay_min_ms, self.faults.delay_max_ms.max(self.faults.delay_min_ms));
        self.rng.gen_range(min..=max)
    }

    pub fn chance(&mut self, per_million: u32) -> bool {
        per_million > 0 && self.rng.gen_range(0..1_000_000) < per_million
    }

    pub fn is_up(&self, node: NodeId, incarnation: u64) -> bool {
        self.nodes.get(&node).is_some_and(|slot| slot.incarnation == incarnation && slot.endpoint.is_some())
    }

    pub fn link_open(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.contains(&(from, to))
    }
}
