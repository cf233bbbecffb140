//! The simulated cluster: real `NodeCore`s on `FencedDisk`s and
//! `SimTransport`s, with crash and restart.

use crate::disk::FencedDisk;
use crate::net::SimTransport;
use crate::world::World;
use paytx_node::{LinkFilter, NodeConfig, NodeCore, NodeService};
use paytx_protocol::NodeId;
use paytx_storage::{MemDisk, SharedDisk};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

struct Running {
    core: NodeCore,
    alive: Arc<AtomicBool>,
}

pub struct SimCluster {
    pub world: World,
    pub configs: BTreeMap<NodeId, NodeConfig>,
    pub disks: BTreeMap<NodeId, MemDisk>,
    running: BTreeMap<NodeId, Running>,
}

impl SimCluster {
    /// `disk_seed` seeds each node's simulated device (its flush latency).
    pub fn new(world: World, configs: BTreeMap<NodeId, NodeConfig>, disk_seed: u64) -> Self {
        let disks = configs
            .keys()
            .map(|id| {
                let disk = MemDisk::new();
                let mut rng = ChaCha8Rng::seed_from_u64(disk_seed);
                rng.set_stream(*id);
                disk.set_sync_delay(Some(crate::disk::device(world.clone(), *id, rng)));
                (*id, disk)
            })
            .collect();
        {
            let mut state = world.lock();
            for id in configs.keys() {
                state.nodes.insert(*id, Default::default());
            }
        }
        SimCluster { world, configs, disks, running: BTreeMap::new() }
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

    pub fn service(&self, id: NodeId) -> Option<Arc<NodeService>> {
        self.running.get(&id).map(|r| r.core.service())
    }

    /// Starts (or restarts) `id` on what its disk kept.
    pub async fn start(&mut self, id: NodeId) -> Result<(), String> {
        if self.is_running(id) {
            return Ok(());
        }
        let config = self.configs.get(&id).cloned().ok_or_else(|| format!("no node {id}"))?;
        let memory = self.disks.get(&id).cloned().ok_or_else(|| format!("no disk for node {id}"))?;
        let alive = Arc::new(AtomicBool::new(true));
        let incarnation = {
            let mut state = self.world.lock();
            let slot = state.nodes.entry(id).or_default();
            slot.incarnation += 1;
            slot.service = None;
            slot.incarnation
        };
        let disk: SharedDisk =
            Arc::new(FencedDisk { node: id, inner: memory, alive: alive.clone(), world: self.world.clone() });
        let transport = Arc::new(SimTransport { from: id, incarnation, world: self.world.clone() });
        let core = NodeCore::start(&config, disk, transport, LinkFilter::default()).await.map_err(|e| e.to_string())?;
        {
            let mut state = self.world.lock();
            if let Some(slot) = state.nodes.get_mut(&id) {
                slot.service = Some(core.service());
            }
        }
        self.world.record(|| format!("node {id} started (incarnation {incarnation})"), &[1, id as u8]);
        self.running.insert(id, Running { core, alive });
        Ok(())
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
                slot.service = None;
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
                self.world.lock().nodes.entry(id).or_default().service = None;
                running.core.stop().await;
            }
        }
    }
}
