//! Runs the fault schedule against the cluster: resolves "the leader" when
//! each fault starts, injects it, holds it, heals it, and records what was
//! really done.

use crate::chaos::check::Findings;
use crate::chaos::cluster::ChaosCluster;
use crate::chaos::proxy::{DropStyle, Mode};
use crate::chaos::schedule::{Fault, Planned, Schedule, Target};
use crate::chaos::summary::FaultRecord;
use paytx_protocol::NodeId;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Bound on finding the leader before a fault.
const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How often the shard groups' leaders are asked while faults hold and
/// between them (for `--timeline`).
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Each shard group's leader over the fault phase: `(at_ms, node)` at
/// each change, by group name (`accounts/0`).
pub type ShardLeaderLog = BTreeMap<String, Vec<(u64, u64)>>;

/// Until `until`, asks every node's status every [`WATCH_EVERY`] and notes
/// each shard group's leader when it changes (the leader the
/// lowest-numbered answering node knows). Never runs past `until`: a node
/// that does not answer only shortens that round.
async fn watch_shard_leaders(cluster: &ChaosCluster, started: Instant, until: Instant, log: &mut ShardLeaderLog) {
    loop {
        let now = Instant::now();
        if now >= until {
            return;
        }
        if let Ok(statuses) = tokio::time::timeout(until - now, cluster.statuses()).await {
            let at_ms = started.elapsed().as_millis() as u64;
            // `statuses` is keyed by node: the lowest-numbered answers first.
            let leaders = paytx_protocol::messages::NodeStatusView::shard_leaders(statuses.values().flatten());
            for (shard, leader) in leaders {
                let changes = log.entry(shard.to_string()).or_default();
                if changes.last().map(|(_, n)| *n) != Some(leader) {
                    changes.push((at_ms, leader));
                }
            }
        }
        let next = (Instant::now() + WATCH_EVERY).min(until);
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Runs every planned fault in order. `started` is the start of the fault
/// phase (the schedule's `at_ms` counts from it).
pub async fn run_schedule(
    cluster: &mut ChaosCluster,
    schedule: &Schedule,
    started: Instant,
    findings: &mut Findings,
) -> (Vec<FaultRecord>, ShardLeaderLog) {
    // Choices the schedule leaves to run time (which other nodes join the
    // leader in a minority) come from the seed too.
    let mut rng = ChaCha8Rng::seed_from_u64(schedule.seed ^ 0x5eed_c4a0_5000_0001);
    let mut records = Vec::new();
    let mut shard_leaders = ShardLeaderLog::new();
    for (index, planned) in schedule.faults.iter().enumerate() {
        let due = started + Duration::from_millis(planned.at_ms);
        watch_shard_leaders(cluster, started, due, &mut shard_leaders).await;
        let leader = find_leader(cluster).await;
        let at_ms = started.elapsed().as_millis() as u64;
        match inject(cluster, planned, leader, &mut rng).await {
            Ok((detail, hit_leader)) => {
                eprintln!(
                    "[{:>7.1}s] fault {}/{}: {} — {detail} for {} ms",
                    at_ms as f64 / 1000.0,
                    index + 1,
                    schedule.faults.len(),
                    planned.fault.kind(),
                    planned.hold_ms
                );
                let healed_at = Instant::now() + Duration::from_millis(planned.hold_ms);
                watch_shard_leaders(cluster, started, healed_at, &mut shard_leaders).await;
                records.push(FaultRecord {
                    at_ms,
                    kind: planned.fault.kind(),
                    detail,
                    hold_ms: planned.hold_ms,
                    leader,
                    hit_leader,
                });
            }
            Err(e) => eprintln!("[{:>7.1}s] fault {} not injected: {e}", at_ms as f64 / 1000.0, planned.fault.kind()),
        }
        if let Err(e) = cluster.heal_all().await {
            findings.flag("nodes_stay_up", format!("healing after {}: {e}", planned.fault.kind()));
        }
        for crash in cluster.restart_crashed().await {
            findings.flag("nodes_stay_up", crash);
        }
    }
    // The last gap too: the cluster recovers under load before the clients stop.
    if let Some(last) = schedule.faults.last() {
        let end = started + Duration::from_millis(last.at_ms + last.hold_ms + last.gap_ms);
        watch_shard_leaders(cluster, started, end, &mut shard_leaders).await;
    }
    (records, shard_leaders)
}

/// The leader, asked for up to [`LEADER_WAIT`]: right after a fault is
/// healed an election may still be under way, and a fault meant for the
/// leader should hit it.
async fn find_leader(cluster: &ChaosCluster) -> Option<NodeId> {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        if let Some(leader) = cluster.leader().await {
            return Some(leader);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node a target names now; a random node when the leader is unknown.
fn resolve(target: Target, leader: Option<NodeId>, ids: &[NodeId], rng: &mut ChaCha8Rng) -> NodeId {
    match (target, leader) {
        (Target::Node(id), _) => id,
        (Target::Leader, Some(leader)) => leader,
        (Target::Leader, None) => ids[rng.gen_range(0..ids.len())],
    }
}

/// Injects one fault; returns what was done and whether it hit the leader.
async fn inject(
    cluster: &mut ChaosCluster,
    planned: &Planned,
    leader: Option<NodeId>,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<(String, bool)> {
    let ids = cluster.ids();
    let role = |id: NodeId| if Some(id) == leader { " (leader)" } else { "" };
    Ok(match &planned.fault {
        Fault::Kill { target } => {
            let id = resolve(*target, leader, &ids, rng);
            cluster.procs.kill(id)?;
            (format!("SIGKILL node {id}{}, restart after the hold", role(id)), Some(id) == leader)
        }
        Fault::Wipe { target } => {
            let id = resolve(*target, leader, &ids, rng);
            cluster.procs.kill(id)?;
            let dir = cluster.wipe_data(id)?;
            (
                format!("SIGKILL node {id}{}, delete {}, restart empty after the hold", role(id), dir.display()),
                Some(id) == leader,
            )
        }
        Fault::Pause { target } => {
            let id = resolve(*target, leader, &ids, rng);
            cluster.procs.pause(id)?;
            (format!("SIGSTOP node {id}{}, SIGCONT after the hold", role(id)), Some(id) == leader)
        }
        Fault::IsolateLeader { style } => {
            let isolated = resolve(Target::Leader, leader, &ids, rng);
            let minority = BTreeSet::from([isolated]);
            cut(cluster, &minority, &ids, *style);
            (format!("isolate node {isolated}{} ({style:?})", role(isolated)), Some(isolated) == leader)
        }
        Fault::Split { minority_size, with_leader, style } => {
            let mut others: Vec<NodeId> = ids.iter().copied().filter(|id| Some(*id) != leader).collect();
            others.shuffle(rng);
            let mut minority: BTreeSet<NodeId> = BTreeSet::new();
            if let (true, Some(leader)) = (*with_leader, leader) {
                minority.insert(leader);
            }
            for id in others {
                if minority.len() >= *minority_size {
                    break;
                }
                minority.insert(id);
            }
            cut(cluster, &minority, &ids, *style);
            let majority: Vec<NodeId> = ids.iter().copied().filter(|id| !minority.contains(id)).collect();
            let hit = leader.is_some_and(|l| minority.contains(&l));
            (format!("split {minority:?} | {majority:?}, leader {leader:?} ({style:?})"), hit)
        }
        Fault::OneWay { from, to } => {
            let from = resolve(*from, leader, &ids, rng);
            let to: Vec<NodeId> = if to.is_empty() {
                ids.iter().copied().filter(|id| *id != from).collect()
            } else {
                // A target equal to the source means "the next node".
                to.iter()
                    .map(|t| {
                        if *t == from {
                            ids[(ids.iter().position(|i| *i == from).unwrap_or(0) + 1) % ids.len()]
                        } else {
                            *t
                        }
                    })
                    .collect()
            };
            // Held, not closed: closing would cut the other direction too.
            for t in &to {
                cluster.set_flow(from, *t, Mode::Drop(DropStyle::Hold));
            }
            let hit = leader.is_some_and(|l| l == from || to.contains(&l));
            (format!("messages from node {from}{} to {to:?} lost", role(from)), hit)
        }
        Fault::SlowLinks { target, delay_ms } => {
            let id = resolve(*target, leader, &ids, rng);
            for other in ids.iter().filter(|o| **o != id) {
                cluster.set_flow(id, *other, Mode::Delay { ms: *delay_ms });
                cluster.set_flow(*other, id, Mode::Delay { ms: *delay_ms });
            }
            (format!("every link of node {id}{} delayed {delay_ms} ms", role(id)), Some(id) == leader)
        }
    })
}

/// No message crosses between `minority` and the other nodes, either way.
fn cut(cluster: &ChaosCluster, minority: &BTreeSet<NodeId>, ids: &[NodeId], style: DropStyle) {
    for a in minority {
        for b in ids.iter().filter(|b| !minority.contains(b)) {
            cluster.set_flow(*a, *b, Mode::Drop(style));
            cluster.set_flow(*b, *a, Mode::Drop(style));
        }
    }
}
