//! The fault schedule (the "nemesis"): crashes and restarts, partitions,
//! pauses and fsync failures, each chosen from the seed.

use crate::cluster::SimCluster;
use crate::world::{NetFaults, WorldState};
use paytx_protocol::clock::NodeClock;
use paytx_protocol::NodeId;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::time::Duration;

/// Which faults a run injects (`--faults PROFILE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultProfile {
    /// A perfect network and no crashes: the baseline.
    None,
    /// Drops, duplicates, delays, partitions and pauses; no crashes.
    Network,
    /// Crashes, restarts and fsync failures; messages only delayed.
    Crashes,
    /// Everything.
    All,
}

impl FaultProfile {
    pub const ALL: [FaultProfile; 4] =
        [FaultProfile::None, FaultProfile::Network, FaultProfile::Crashes, FaultProfile::All];

    pub fn name(self) -> &'static str {
        match self {
            FaultProfile::None => "none",
            FaultProfile::Network => "network",
            FaultProfile::Crashes => "crashes",
            FaultProfile::All => "all",
        }
    }

    pub fn parse(name: &str) -> Option<FaultProfile> {
        FaultProfile::ALL.into_iter().find(|p| p.name() == name)
    }

    fn network(self) -> bool {
        matches!(self, FaultProfile::Network | FaultProfile::All)
    }

    fn crashes(self) -> bool {
        matches!(self, FaultProfile::Crashes | FaultProfile::All)
    }

    /// The message-level faults of a run.
    pub fn net_faults(self, rng: &mut ChaCha8Rng) -> NetFaults {
        if !self.network() {
            return NetFaults {
                drop_per_million: 0,
                duplicate_per_million: 0,
                delay_min_ms: 1,
                delay_max_ms: rng.gen_range(2..10),
            };
        }
        // Most runs are mildly lossy and fast; some are slow and lossy.
        let slow = rng.gen_bool(0.2);
        NetFaults {
            drop_per_million: rng.gen_range(0..30_000),
            duplicate_per_million: rng.gen_range(0..20_000),
            delay_min_ms: rng.gen_range(0..3),
            delay_max_ms: if slow { rng.gen_range(50..300) } else { rng.gen_range(3..30) },
        }
    }
}

/// Injects faults step by step.
pub struct Nemesis {
    profile: FaultProfile,
    rng: ChaCha8Rng,
    /// Crashed nodes and when they come back (virtual ms).
    restart_at: BTreeMap<NodeId, u64>,
    /// When the current partition or pause heals.
    heal_at: Option<u64>,
    /// The clock of the paused node, restarted at the heal.
    paused: Option<NodeClock>,
    /// A node whose fsyncs fail, and when the operator restarts it.
    failing_sync: Option<(NodeId, u64)>,
    /// A flapping link: the node, toggles left, and when the next one is due.
    flapping: Option<(NodeId, u32, u64)>,
    /// Shards are Raft groups: a node may be lost for good.
    replicated: bool,
    /// The node lost permanently (crashed, never restarted, not even by
    /// `heal`): at most one, so a majority of every group stays.
    lost: Option<NodeId>,
    /// The node whose disk was wiped (restarted empty, rebuilding): at most
    /// one per run, and never with a node lost for good — until it is a
    /// voter again, its groups have only two voters that can answer.
    wiped: Option<NodeId>,
    /// The wiped node, until its first start on the empty disk.
    rebuild_pending: Option<NodeId>,
}

/// Cuts every link of `node`, both ways (healed by clearing `cut`).
fn cut_off(state: &mut WorldState, node: NodeId, ids: &[NodeId]) {
    for other in ids.iter().copied().filter(|o| *o != node) {
        state.cut.insert((node, other));
        state.cut.insert((other, node));
    }
}

impl Nemesis {
    /// `replicated`: every shard is a Raft group of three, so the loss of
    /// one node for good is survivable (and injected).
    pub fn new(profile: FaultProfile, rng: ChaCha8Rng, replicated: bool) -> Self {
        Nemesis {
            profile,
            rng,
            restart_at: BTreeMap::new(),
            heal_at: None,
            paused: None,
            failing_sync: None,
            flapping: None,
            replicated,
            lost: None,
            wiped: None,
            rebuild_pending: None,
        }
    }

    /// The node lost for good, if any.
    pub fn lost(&self) -> Option<NodeId> {
        self.lost
    }

    async fn leader(cluster: &SimCluster) -> Option<NodeId> {
        for id in cluster.ids() {
            if let Some(service) = cluster.service(id) {
                if service.status().await.coordinator_ready {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Waits a seeded slice of virtual time, then applies due recoveries and
    /// maybe one new fault.
    pub async fn step(&mut self, cluster: &mut SimCluster) {
        tokio::time::sleep(Duration::from_millis(self.rng.gen_range(50..250))).await;
        let world = cluster.world.clone();
        let now = world.now_ms();
        let due: Vec<NodeId> = self.restart_at.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect();
        for id in due {
            // A wiped node's start waits until every peer has answered
            // whether it ran before, and this loop is what heals a cut
            // link: starting it across a partition would wait forever.
            // It starts once the links are whole (the wait is real: so
            // does a rebuilt `paytx node` across a partition).
            if self.rebuild_pending == Some(id) && !world.lock().cut.is_empty() {
                continue;
            }
            self.restart_at.remove(&id);
            if cluster.start(id).await.is_ok() {
                world.lock().counters.restarts += 1;
                if self.rebuild_pending == Some(id) {
                    self.rebuild_pending = None;
                }
            }
        }
        if self.heal_at.is_some_and(|at| at <= now) {
            self.heal_at = None;
            if let Some(clock) = self.paused.take() {
                clock.resume();
            }
            world.lock().cut.clear();
            world.record(|| "partition healed".to_string(), b"heal");
        }
        if let Some((id, at)) = self.failing_sync {
            if at <= now {
                // The node stopped itself on the failed fsync (fail-stop);
                // the operator restarts it.
                self.failing_sync = None;
                cluster.crash(id).await;
                self.restart_at.insert(id, now + self.rng.gen_range(100..1_000));
            }
        }
        if let Some((node, toggles, at)) = self.flapping {
            if at <= now {
                let mut state = world.lock();
                let isolated = state.cut.iter().any(|(from, _)| *from == node);
                for other in state.nodes.keys().copied().filter(|o| *o != node).collect::<Vec<_>>() {
                    if isolated {
                        state.cut.remove(&(node, other));
                        state.cut.remove(&(other, node));
                    } else {
                        state.cut.insert((node, other));
                        state.cut.insert((other, node));
                    }
                }
                drop(state);
                world.record(
                    || format!("flap: node {node} {}", if isolated { "reconnected" } else { "cut off" }),
                    &[6, node as u8],
                );
                self.flapping = (toggles > 1).then(|| (node, toggles - 1, now + self.rng.gen_range(100..400)));
            }
        }
        if self.profile == FaultProfile::None || !self.rng.gen_bool(0.05) {
            return;
        }
        let ids = cluster.ids();
        let anyone = ids[self.rng.gen_range(0..ids.len())];
        // With a node lost for good, no other node crashes: that would
        // leave the groups without a majority.
        let nobody_down = self.restart_at.is_empty() && self.failing_sync.is_none() && self.lost.is_none();
        // Single-copy runs keep their schedule of seven kinds of fault.
        let kinds = if self.replicated { 10 } else { 7 };
        match self.rng.gen_range(0..kinds) {
            0 | 1 if self.profile.crashes() && nobody_down => {
                // Crash a random node, or the leader.
                let victim = if self.rng.gen_bool(0.5) {
                    let leader = Self::leader(cluster).await;
                    if leader.is_some() {
                        world.lock().counters.leader_crashes += 1;
                    }
                    leader.unwrap_or(anyone)
                } else {
                    anyone
                };
                cluster.crash(victim).await;
                self.restart_at.insert(victim, now + self.rng.gen_range(200..3_000));
            }
            2 if self.profile.crashes() && nobody_down => {
                cluster.disks[&anyone].fail_syncs(true);
                self.failing_sync = Some((anyone, now + self.rng.gen_range(50..500)));
                world.lock().counters.fsync_failures += 1;
                world.record(|| format!("node {anyone} fsyncs start failing"), &[3, anyone as u8]);
            }
            3 | 4 if self.profile.network() && self.heal_at.is_none() => {
                let target = match self.rng.gen_range(0..3u32) {
                    0 => Self::leader(cluster).await.unwrap_or(anyone),
                    _ => anyone,
                };
                let one_way = self.rng.gen_bool(0.3);
                let mut state = world.lock();
                for other in ids.iter().copied().filter(|o| *o != target) {
                    state.cut.insert((target, other));
                    if !one_way {
                        state.cut.insert((other, target));
                    }
                }
                state.counters.partitions += 1;
                let at = state.now_ms();
                state.trace.record(
                    at,
                    || format!("partition: node {target} isolated (one-way: {one_way})"),
                    &[4, target as u8],
                );
                drop(state);
                self.heal_at = Some(now + self.rng.gen_range(300..3_000));
            }
            5 if self.profile.network() && self.heal_at.is_none() => {
                // A pause longer than the election timeout: the node's
                // clock stops (none of its timers fires: no election, no
                // timeout, no retry), it hears nothing and says nothing,
                // then resumes where it was, every overdue timer at once.
                let mut state = world.lock();
                if let Some(slot) = state.nodes.get(&anyone) {
                    slot.clock.pause();
                    self.paused = Some(slot.clock.clone());
                }
                cut_off(&mut state, anyone, &ids);
                state.counters.pauses += 1;
                let at = state.now_ms();
                state.trace.record(at, || format!("node {anyone} paused"), &[5, anyone as u8]);
                drop(state);
                self.heal_at = Some(now + self.rng.gen_range(700..1_500));
            }
            6 if self.profile.network() && self.heal_at.is_none() && self.flapping.is_none() => {
                // A flapping link: the node is cut off and reconnected a few
                // times in quick succession (an even count: it ends connected).
                let toggles = 2 * self.rng.gen_range(2..5u32);
                self.flapping = Some((anyone, toggles, now));
                world.lock().counters.partitions += 1;
            }
            7 if self.profile.crashes() && nobody_down && self.wiped.is_none() && self.rng.gen_bool(0.3) => {
                // A node lost for good (its disk with it): its shard groups
                // and the coordinator go on with the other two.
                cluster.crash(anyone).await;
                self.lost = Some(anyone);
                let mut state = world.lock();
                state.counters.nodes_lost += 1;
                let at = state.now_ms();
                state.trace.record(at, || format!("node {anyone} lost for good"), &[7, anyone as u8]);
            }
            8 if self.profile.crashes() && nobody_down && self.wiped.is_none() && self.rng.gen_bool(0.5) => {
                // A node's disk lost (replaced, or deleted for a rebuild):
                // it restarts empty and must rejoin under a new replica id,
                // catching up from the other two.
                cluster.wipe(anyone).await;
                self.wiped = Some(anyone);
                self.rebuild_pending = Some(anyone);
                self.restart_at.insert(anyone, now + self.rng.gen_range(200..2_000));
            }
            9 if self.profile.network() && self.heal_at.is_none() && self.flapping.is_none() => {
                // One replica lagging far behind: a node cut off both ways
                // for long enough, under load, that its groups' leaders
                // snapshot and purge past it; on healing it catches up by
                // snapshot install (counted at the end of the run).
                let mut state = world.lock();
                cut_off(&mut state, anyone, &ids);
                state.counters.replicas_lagging += 1;
                let at = state.now_ms();
                state.trace.record(at, || format!("node {anyone} cut off to lag behind"), &[10, anyone as u8]);
                drop(state);
                self.heal_at = Some(now + self.rng.gen_range(4_000..8_000));
            }
            _ => {}
        }
    }

    /// Heals everything: links, message faults, disks, crashed nodes — all
    /// but a node lost for good.
    pub async fn heal(&mut self, cluster: &mut SimCluster) {
        {
            let mut state = cluster.world.lock();
            state.cut.clear();
            state.faults = NetFaults::none();
        }
        if let Some((id, _)) = self.failing_sync.take() {
            cluster.crash(id).await;
        }
        for disk in cluster.disks.values() {
            disk.fail_syncs(false);
        }
        self.restart_at.clear();
        self.heal_at = None;
        if let Some(clock) = self.paused.take() {
            clock.resume();
        }
        self.flapping = None;
        // Together: a wiped node's start waits for every peer to answer.
        let down: Vec<NodeId> = cluster.down().into_iter().filter(|id| Some(*id) != self.lost).collect();
        let started = cluster.start_many(&down).await.values().filter(|result| result.is_ok()).count();
        cluster.world.lock().counters.restarts += started as u64;
        self.rebuild_pending = None;
    }
}
