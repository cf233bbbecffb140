//! The seeded fault schedule: which faults, in which order, how long each
//! lasts and how long the cluster gets to recover in between. One `u64`
//! seed decides it all, so `--seed` replays the same schedule. Who the
//! leader is can only be known when a fault starts, so faults aimed at the
//! leader name the role, not a node.
//!
//! Faults run one at a time: each is injected, held, healed (a killed node
//! restarted), and followed by a gap. So a majority is up between faults,
//! and any liveness problem after a gap is the cluster's, not the
//! schedule's.

use crate::chaos::proxy::DropStyle;
use paytx_protocol::NodeId;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Which node a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Target {
    /// Whoever leads the coordinator group when the fault starts.
    Leader,
    Node(NodeId),
}

/// One kind of fault, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Fault {
    /// SIGKILL, then a restart on the same data after `hold_ms`.
    Kill { target: Target },
    /// SIGSTOP, then SIGCONT after `hold_ms` (longer than the election timeout).
    Pause { target: Target },
    /// Every link to and from the leader drops.
    IsolateLeader { style: DropStyle },
    /// The nodes split into `minority` and the rest; no link crosses.
    /// With `with_leader` the leader is put in the minority.
    Split { minority_size: usize, with_leader: bool, style: DropStyle },
    /// Messages from `from` to every node of `to` are lost; the other way
    /// works (answers to `from`'s requests are lost too).
    OneWay { from: Target, to: Vec<NodeId> },
    /// Every link of `target` (both ways) delays each chunk by `delay_ms`.
    SlowLinks { target: Target, delay_ms: u64 },
    /// SIGKILL, the node's data directory deleted, then a restart after
    /// `hold_ms`: a disk lost. The node rejoins every group under a new
    /// replica id and catches up from the others.
    Wipe { target: Target },
}

impl Fault {
    /// The name counted in the summary.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { target: Target::Leader } => "kill_leader",
            Fault::Kill { .. } => "kill_random",
            Fault::Pause { .. } => "pause",
            Fault::IsolateLeader { .. } => "partition_isolate_leader",
            Fault::Split { .. } => "partition_split",
            Fault::OneWay { .. } => "partition_one_way",
            Fault::SlowLinks { .. } => "slow_links",
            Fault::Wipe { .. } => "wipe",
        }
    }

    pub fn is_kill(&self) -> bool {
        matches!(self, Fault::Kill { .. })
    }

    pub fn is_wipe(&self) -> bool {
        matches!(self, Fault::Wipe { .. })
    }

    pub fn is_partition(&self) -> bool {
        matches!(self, Fault::IsolateLeader { .. } | Fault::Split { .. } | Fault::OneWay { .. })
    }
}

/// A fault at its place in the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// Start, from the start of the fault phase.
    pub at_ms: u64,
    pub fault: Fault,
    /// How long the fault lasts before it is healed.
    pub hold_ms: u64,
    /// Recovery time after healing, before the next fault.
    pub gap_ms: u64,
}

/// What the schedule must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    pub seed: u64,
    pub nodes: u64,
    pub duration_ms: u64,
    pub min_kills: u64,
    pub min_partitions: u64,
    pub min_wipes: u64,
    /// The nodes' `election_timeout_max_ms`: pauses and partitions last longer.
    pub election_timeout_max_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "{duration_ms} ms of faults cannot hold {kills} kills and {partitions} partitions \
         (they need about {needed_ms} ms): raise --duration-secs or lower the minimums"
    )]
    TooShort { duration_ms: u64, kills: u64, partitions: u64, needed_ms: u64 },
    #[error("--nodes must be 3 or 5, not {0}")]
    Nodes(u64),
}

/// The seeded schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Schedule {
    pub seed: u64,
    pub faults: Vec<Planned>,
}

impl Schedule {
    /// Fills `duration_ms` with faults: at least `min_kills` kills (about
    /// half aimed at the leader), `min_partitions` partitions, `min_wipes`
    /// wipes (no more: a wipe is never drawn by weight), one pause and
    /// one slow link, the rest drawn by weight; then shuffled.
    pub fn generate(spec: &ScheduleSpec) -> Result<Schedule, ScheduleError> {
        if spec.nodes != 3 && spec.nodes != 5 {
            return Err(ScheduleError::Nodes(spec.nodes));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let mut kinds: Vec<Kind> = Vec::new();
        kinds.extend(std::iter::repeat_n(Kind::Kill, spec.min_kills as usize));
        kinds.extend(std::iter::repeat_n(Kind::Partition, spec.min_partitions as usize));
        // Wipes only where asked for: each costs a full catch-up.
        kinds.extend(std::iter::repeat_n(Kind::Wipe, spec.min_wipes as usize));
        kinds.push(Kind::Pause);
        kinds.push(Kind::Slow);
        if spec.min_kills == 0 {
            kinds.push(Kind::Kill);
        }
        if spec.min_partitions == 0 {
            kinds.push(Kind::Partition);
        }
        let needed_ms: u64 = kinds.iter().map(|k| k.typical_ms()).sum();
        if needed_ms > spec.duration_ms {
            return Err(ScheduleError::TooShort {
                duration_ms: spec.duration_ms,
                kills: spec.min_kills,
                partitions: spec.min_partitions,
                needed_ms,
            });
        }
        // Top up with weighted picks while the typical lengths still fit.
        let mut planned_ms = needed_ms;
        loop {
            let kind = match rng.gen_range(0..10u32) {
                0..=2 => Kind::Kill,
                3..=5 => Kind::Partition,
                6..=7 => Kind::Pause,
                _ => Kind::Slow,
            };
            if planned_ms + kind.typical_ms() > spec.duration_ms {
                break;
            }
            planned_ms += kind.typical_ms();
            kinds.push(kind);
        }
        kinds.shuffle(&mut rng);

        // Concrete faults and timings; the timings are scaled so the
        // schedule ends at `duration_ms`.
        let ids: Vec<NodeId> = (1..=spec.nodes).collect();
        let min_hold_ms = spec.election_timeout_max_ms * 2;
        let mut faults: Vec<Planned> = kinds
            .iter()
            .map(|kind| {
                let fault = kind.concrete(&mut rng, &ids);
                let hold_ms = match &fault {
                    Fault::Kill { .. } | Fault::Wipe { .. } => rng.gen_range(300..3_000),
                    Fault::Pause { .. } => rng.gen_range(min_hold_ms..min_hold_ms * 3),
                    Fault::SlowLinks { .. } => rng.gen_range(2_000..6_000),
                    _ => rng.gen_range(min_hold_ms.max(1_500)..min_hold_ms.max(1_500) * 4),
                };
                Planned { at_ms: 0, fault, hold_ms, gap_ms: rng.gen_range(1_500..4_000) }
            })
            .collect();
        let total_ms: u64 = faults.iter().map(|p| p.hold_ms + p.gap_ms).sum();
        let stretch = spec.duration_ms as f64 / total_ms.max(1) as f64;
        let mut at_ms = 0u64;
        for planned in &mut faults {
            // Only gaps stretch or shrink (never below 1 s): holds keep
            // their meaning (a pause must outlast the election timeout).
            planned.gap_ms = ((planned.gap_ms as f64 * stretch) as u64).max(1_000);
            planned.at_ms = at_ms;
            at_ms += planned.hold_ms + planned.gap_ms;
        }
        Ok(Schedule { seed: spec.seed, faults })
    }

    pub fn kills(&self) -> usize {
        self.faults.iter().filter(|p| p.fault.is_kill()).count()
    }

    pub fn wipes(&self) -> usize {
        self.faults.iter().filter(|p| p.fault.is_wipe()).count()
    }

    pub fn partitions(&self) -> usize {
        self.faults.iter().filter(|p| p.fault.is_partition()).count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kill,
    Partition,
    Pause,
    Slow,
    Wipe,
}

impl Kind {
    /// Typical hold + gap, to size the schedule.
    fn typical_ms(self) -> u64 {
        match self {
            Kind::Kill => 4_500,
            Kind::Partition => 7_000,
            Kind::Pause => 5_500,
            Kind::Slow => 6_500,
            // The restart waits for every peer, then catches up by snapshot.
            Kind::Wipe => 8_000,
        }
    }

    fn concrete(self, rng: &mut ChaCha8Rng, ids: &[NodeId]) -> Fault {
        let target = |rng: &mut ChaCha8Rng| {
            if rng.gen_bool(0.5) {
                Target::Leader
            } else {
                Target::Node(ids[rng.gen_range(0..ids.len())])
            }
        };
        let style = |rng: &mut ChaCha8Rng| if rng.gen_bool(0.5) { DropStyle::Hold } else { DropStyle::Close };
        match self {
            Kind::Kill => Fault::Kill { target: target(rng) },
            Kind::Wipe => Fault::Wipe { target: target(rng) },
            Kind::Pause => Fault::Pause { target: target(rng) },
            Kind::Slow => Fault::SlowLinks { target: target(rng), delay_ms: rng.gen_range(30..400) },
            Kind::Partition => match rng.gen_range(0..3u32) {
                0 => Fault::IsolateLeader { style: style(rng) },
                1 => Fault::Split {
                    // 1 of 3, or 1–2 of 5: a majority is always left.
                    minority_size: rng.gen_range(1..=(ids.len() - 1) / 2),
                    with_leader: rng.gen_bool(0.5),
                    style: style(rng),
                },
                _ => {
                    let from = target(rng);
                    // From one node to all others, or to a single one.
                    let to = if rng.gen_bool(0.5) {
                        Vec::new() // resolved to "every other node" at run time
                    } else {
                        vec![ids[rng.gen_range(0..ids.len())]]
                    };
                    Fault::OneWay { from, to }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> ScheduleSpec {
        ScheduleSpec {
            seed,
            nodes: 3,
            duration_ms: 150_000,
            min_kills: 10,
            min_partitions: 5,
            min_wipes: 1,
            election_timeout_max_ms: 800,
        }
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        let a = Schedule::generate(&spec(42)).expect("fits");
        let b = Schedule::generate(&spec(42)).expect("fits");
        assert_eq!(a, b);
        let c = Schedule::generate(&spec(43)).expect("fits");
        assert_ne!(a.faults, c.faults);
    }

    #[test]
    fn minimums_are_met_and_faults_matter() {
        for seed in 0..50 {
            let schedule = Schedule::generate(&spec(seed)).expect("fits");
            assert!(schedule.kills() >= 10, "seed {seed}: {} kills", schedule.kills());
            assert!(schedule.partitions() >= 5, "seed {seed}: {} partitions", schedule.partitions());
            assert_eq!(schedule.wipes(), 1, "seed {seed}: wipes only where asked for");
            for kind in ["pause", "slow_links"] {
                assert!(schedule.faults.iter().any(|p| p.fault.kind() == kind), "seed {seed}: no {kind}");
            }
            let mut at_ms = 0;
            for planned in &schedule.faults {
                assert_eq!(planned.at_ms, at_ms, "faults follow each other");
                at_ms += planned.hold_ms + planned.gap_ms;
                if matches!(planned.fault, Fault::Pause { .. }) {
                    assert!(planned.hold_ms > 800, "a pause outlasts the election timeout");
                }
                if let Fault::Split { minority_size, .. } = planned.fault {
                    assert_eq!(minority_size, 1, "3 nodes split 2/1");
                }
            }
            // Scaled to the duration, give or take the 1 s floor of a gap.
            assert!(at_ms <= 150_000 + 1_000 * schedule.faults.len() as u64, "seed {seed}: {at_ms} ms");
            assert!(at_ms >= 100_000, "seed {seed}: {at_ms} ms");
        }
        let leader_kills: usize = (0..50)
            .map(|seed| Schedule::generate(&spec(seed)).expect("fits"))
            .map(|s| s.faults.iter().filter(|p| p.fault == Fault::Kill { target: Target::Leader }).count())
            .sum();
        assert!(leader_kills > 100, "kills often aim at the leader: {leader_kills}");
    }

    #[test]
    fn refuses_what_does_not_fit_and_bad_node_counts() {
        let short = ScheduleSpec { duration_ms: 10_000, ..spec(1) };
        assert!(matches!(Schedule::generate(&short), Err(ScheduleError::TooShort { .. })));
        let four = ScheduleSpec { nodes: 4, ..spec(1) };
        assert_eq!(Schedule::generate(&four), Err(ScheduleError::Nodes(4)));
    }
}
