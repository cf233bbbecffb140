//! The simulated cluster: real `NodeCore`s on `FencedDisk`s and
//! `SimTransport`s, with crash and restart.

use crate::disk::FencedDisk;
use crate::net::SimTransport;
use crate::world::World;
use paytx_node::{LinkFilter, NodeConfig, NodeCore, NodeService, PeerEndpoint, ReplicaBook};
use paytx_protocol::clock::{NodeClock, MAX_DRIFT_PPM};
use paytx_protocol::NodeId;
use paytx_storage::{MemDisk, SharedDisk};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Largest skew of a node's clock ahead of the run's virtual clock.
pub const MAX_SKEW_MS: u64 = 10_000;

struct Running {
    core: NodeCore,
    alive: Arc<AtomicBool>,
    clock: NodeClock,
}

/// A node about to start (see [`SimCluster::start_many`]).
struct Prepared {
    id: NodeId,
    config: NodeConfig,
    disk: SharedDisk,
    endpoint: Arc<PeerEndpoint>,
    transport: Arc<dyn paytx_protocol::Transport>,
    alive: Arc<AtomicBool>,
    incarnation: u64,
    clock: NodeClock,
}

pub struct SimCluster {
    pub world: World,
    pub configs: BTreeMap<NodeId, NodeConfig>,
    pub disks: BTreeMap<NodeId, MemDisk>,
    running: BTreeMap<NodeId, Running>,
    disk_seed: u64,
    /// Per node, per disk it has had (oldest first): the incarnations that
    /// ran on it. A wiped disk's incarnations must never run again.
    identities: BTreeMap<NodeId, Vec<BTreeSet<u32>>>,
    /// Starts that reused an identity of a lost disk (amnesia).
    pub identity_reuses: Vec<String>,
    /// Nodes whose disk was wiped, with the incarnation each came back as.
    pub rebuilt: BTreeMap<NodeId, u32>,
    /// Draws each incarnation's clock skew and drift; `None`: every node's
    /// clock is the run's virtual clock, exactly.
    clock_rng: Option<ChaCha8Rng>,
}

/// A node's simulated device: its flush latency, seeded per node.
fn new_disk(world: &World, disk_seed: u64, id: NodeId) -> MemDisk {
    let disk = MemDisk::new();
    let mut rng = ChaCha8Rng::seed_from_u64(disk_seed);
    rng.set_stream(id);
    disk.set_sync_delay(Some(crate::disk::device(world.clone(), id, rng)));
    disk
}

impl SimCluster {
    /// `disk_seed` seeds each node's simulated device (its flush latency).
    pub fn new(world: World, configs: BTreeMap<NodeId, NodeConfig>, disk_seed: u64) -> Self {
        let disks = configs.keys().map(|id| (*id, new_disk(&world, disk_seed, *id))).collect();
        {
            let mut state = world.lock();
            for id in configs.keys() {
                state.nodes.insert(*id, Default::default());
            }
        }
        let identities = configs.keys().map(|id| (*id, vec![BTreeSet::new()])).collect();
        SimCluster {
            world,
            configs,
            disks,
            running: BTreeMap::new(),
            disk_seed,
            identities,
            identity_reuses: Vec::new(),
            rebuilt: BTreeMap::new(),
            clock_rng: None,
        }
    }

    /// From now on, every node (re)starts with a clock of its own: up to
    /// [`MAX_SKEW_MS`] ahead of the run's virtual clock, running up to
    /// ±[`MAX_DRIFT_PPM`] fast or slow, drawn from `rng` per incarnation.
    pub fn skew_clocks(&mut self, rng: ChaCha8Rng) {
        self.clock_rng = Some(rng);
    }

    /// The clock of `id`'s current incarnation.
    pub fn clock(&self, id: NodeId) -> NodeClock {
        self.world.lock().nodes.get(&id).map(|slot| slot.clock.clone()).unwrap_or_default()
    }

    /// A clock for a new incarnation of `id` (and the trace line saying so).
    fn new_clock(&mut self, id: NodeId) -> NodeClock {
        // Every clock reads the run's start as the same Unix time, so log
        // times carry on across restarts and differ only by skew and drift.
        let start = self.world.lock().start;
        let Some(rng) = self.clock_rng.as_mut() else {
            return NodeClock::simulated_from(start, 0, 0);
        };
        let skew_ms = rng.gen_range(0..=MAX_SKEW_MS);
        let drift_ppm = rng.gen_range(-MAX_DRIFT_PPM..=MAX_DRIFT_PPM);
        let clock = NodeClock::simulated_from(start, skew_ms, drift_ppm);
        let mut state = self.world.lock();
        state.counters.max_drift_ppm = state.counters.max_drift_ppm.max(drift_ppm.unsigned_abs());
        let at = state.now_ms();
        state.trace.record(at, || format!("node {id} clock: +{skew_ms} ms, drift {drift_ppm:+} ppm"), &[11, id as u8]);
        clock
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.configs.keys().copied().collect()
    }

    pub fn is_running(&self, id: NodeId) -> bool {
        self.running.contains_key(&id)
    }

    pub fn down(&self) -> Vec<NodeId> {
        self.ids().into_iter().filter(|id| !self.is_running(*id)).collect()
    }

    /// What the harness (monitor, nemesis, final checks) asks `id`
    /// through: `None` while it is down — or paused, since a paused node
    /// answers nothing (a read would wait on its stopped clock; a real
    /// stopped process would make the asker wait for its own timeout).
    pub fn service(&self, id: NodeId) -> Option<Arc<NodeService>> {
        // The running node's own clock, not the world's slot: callers may
        // hold the world's lock.
        self.running.get(&id).filter(|r| !r.clock.is_paused()).map(|r| r.core.service())
    }

    /// Starts (or restarts) `id` on what its disk kept.
    pub async fn start(&mut self, id: NodeId) -> Result<(), String> {
        self.start_many(&[id]).await.remove(&id).unwrap_or(Ok(()))
    }

    /// Starts the nodes of `ids` that are down, all at once: a node on an
    /// empty disk waits, before anything else, for every peer to say whether
    /// it ran before, so a new cluster's nodes must start together.
    pub async fn start_many(&mut self, ids: &[NodeId]) -> BTreeMap<NodeId, Result<(), String>> {
        let mut results = BTreeMap::new();
        let mut starting = Vec::new();
        let down: Vec<NodeId> = ids.iter().copied().filter(|id| !self.is_running(*id)).collect();
        for id in down {
            match self.prepare(id) {
                Ok(prepared) => starting.push(prepared),
                Err(e) => {
                    results.insert(id, Err(e));
                }
            }
        }
        // Each node starts inside its clock's scope: the core and every
        // task and Raft group it starts run on that node's clock.
        let cores = futures::future::join_all(starting.into_iter().map(|p| async move {
            let start = NodeCore::start(&p.config, p.disk, p.transport, LinkFilter::default(), p.endpoint);
            let core = p.clock.clone().scope(start).await;
            (p.id, p.incarnation, p.alive, p.clock, core)
        }))
        .await;
        for (id, incarnation, alive, clock, core) in cores {
            match core {
                Ok(core) => {
                    self.note_identity(id, core.service().incarnation());
                    self.world.record(|| format!("node {id} started (incarnation {incarnation})"), &[1, id as u8]);
                    self.running.insert(id, Running { core, alive, clock });
                    results.insert(id, Ok(()));
                }
                Err(e) => {
                    // Not started: nothing answers for it.
                    alive.store(false, Ordering::SeqCst);
                    if let Some(slot) = self.world.lock().nodes.get_mut(&id) {
                        slot.endpoint = None;
                    }
                    results.insert(id, Err(e.to_string()));
                }
            }
        }
        results
    }

    /// Checks and remembers which incarnation of `id` started on its
    /// current disk: one that ran on an earlier (wiped) disk is amnesia.
    fn note_identity(&mut self, id: NodeId, incarnation: u32) {
        let disks = self.identities.entry(id).or_insert_with(|| vec![BTreeSet::new()]);
        let (current, earlier) = disks.split_last_mut().expect("every node has a current disk");
        if earlier.iter().any(|lost| lost.contains(&incarnation)) {
            self.identity_reuses
                .push(format!("node {id} started as incarnation {incarnation}, which had run on a disk since wiped"));
        }
        current.insert(incarnation);
        if !earlier.is_empty() {
            self.rebuilt.insert(id, incarnation);
        }
    }

    /// Crashes `id` and replaces its disk with an empty one: a disk lost,
    /// or `paytx node --rebuild`. The node is started again by the caller.
    pub async fn wipe(&mut self, id: NodeId) {
        self.crash(id).await;
        self.disks.insert(id, new_disk(&self.world, self.disk_seed ^ 0x77697065, id));
        self.identities.entry(id).or_default().push(BTreeSet::new());
        self.world.lock().counters.disks_wiped += 1;
        self.world.record(|| format!("node {id}'s disk wiped"), &[9, id as u8]);
    }

    /// Readies `id` to start: its fenced disk, its replica book and the
    /// endpoint that answers its peers from now on (the core's first step
    /// asks them whether this node ran before).
    fn prepare(&mut self, id: NodeId) -> Result<Prepared, String> {
        let config = self.configs.get(&id).cloned().ok_or_else(|| format!("no node {id}"))?;
        let memory = self.disks.get(&id).cloned().ok_or_else(|| format!("no disk for node {id}"))?;
        let alive = Arc::new(AtomicBool::new(true));
        let disk: SharedDisk =
            Arc::new(FencedDisk { node: id, inner: memory, alive: alive.clone(), world: self.world.clone() });
        let book = ReplicaBook::open(disk.clone()).map_err(|e| e.to_string())?;
        let endpoint = PeerEndpoint::new(book);
        let clock = self.new_clock(id);
        let incarnation = {
            let mut state = self.world.lock();
            let slot = state.nodes.entry(id).or_default();
            slot.incarnation += 1;
            slot.endpoint = Some(endpoint.clone());
            slot.clock = clock.clone();
            slot.incarnation
        };
        let transport: Arc<dyn paytx_protocol::Transport> =
            Arc::new(SimTransport { from: id, incarnation, world: self.world.clone(), clock: clock.clone() });
        Ok(Prepared { id, config, disk, endpoint, transport, alive, incarnation, clock })
    }

    /// Crashes `id`: its memory is gone, its disk keeps what was synced and,
    /// in half the crashes, a seeded prefix of whole batches of what was
    /// not (a torn tail; see `paytx_storage::mem` for why whole batches).
    pub async fn crash(&mut self, id: NodeId) {
        let Some(running) = self.running.remove(&id) else { return };
        // Fence first: from here on, nothing of this incarnation reaches the
        // disk or the network.
        running.alive.store(false, Ordering::SeqCst);
        {
            let mut state = self.world.lock();
            if let Some(slot) = state.nodes.get_mut(&id) {
                slot.incarnation += 1;
                slot.endpoint = None;
            }
            state.counters.crashes += 1;
        }
        running.core.stop().await;
        let Some(disk) = self.disks.get(&id) else { return };
        let unsynced = disk.unsynced_batches();
        let keep = {
            let mut state = self.world.lock();
            let keep = if unsynced > 0 && state.rng.gen_bool(0.5) { state.rng.gen_range(0..=unsynced) } else { 0 };
            if keep > 0 {
                state.counters.torn_crashes += 1;
                state.counters.torn_batches_kept += keep as u64;
            }
            keep
        };
        disk.crash_keeping(keep);
        disk.fail_syncs(false);
        self.world.record(
            || format!("node {id} crashed ({keep} of {unsynced} unsynced batches survived)"),
            &[2, id as u8, keep as u8],
        );
    }

    /// Stops every node (end of run).
    pub async fn stop_all(&mut self) {
        for id in self.ids() {
            if let Some(running) = self.running.remove(&id) {
                running.alive.store(false, Ordering::SeqCst);
                self.world.lock().nodes.entry(id).or_default().endpoint = None;
                running.core.stop().await;
            }
        }
    }
}
