//! The simulator's contract: one seed, one history. The same seed gives the
//! same trace hash on every run; different seeds give different histories;
//! and the real cluster passes every invariant under those faults.

use paytx_simulator::{run, FaultProfile, SimConfig};

fn config(seed: u64) -> SimConfig {
    SimConfig { operations: 60, ..SimConfig::new(seed) }
}

#[test]
fn the_same_seed_replays_the_same_history_and_other_seeds_differ() {
    let mut hashes = Vec::new();
    for seed in [3u64, 17, 4243] {
        let first = run(&config(seed));
        let second = run(&config(seed));
        assert!(first.events > 1_000, "a run does something: {} events", first.events);
        assert_eq!(first.trace_hash, second.trace_hash, "seed {seed} replays exactly");
        assert_eq!((first.txns, first.committed, first.virtual_ms), (second.txns, second.committed, second.virtual_ms));
        assert!(first.failure.is_none(), "seed {seed}: {:?}", first.failure);
        assert!(first.record_writes > 0, "seed {seed} writes records");
        assert_eq!(first.record_writes, second.record_writes);
        hashes.push(first.trace_hash);
    }
    hashes.sort_unstable();
    hashes.dedup();
    assert_eq!(hashes.len(), 3, "different seeds, different histories");
}

#[test]
fn faults_are_injected_and_every_invariant_holds() {
    let mut crashes = 0;
    let mut partitions_or_pauses = 0;
    let mut dropped = 0;
    let (mut syncs, mut flushes, mut joined, mut in_flight, mut torn, mut kept) = (0, 0, 0, 0, 0, 0);
    // Six short runs on the default (replicated) shards; seeds whose
    // schedules crash nodes, tear tails and partition.
    for seed in 145..151u64 {
        let report = run(&SimConfig { operations: 80, faults: FaultProfile::All, ..SimConfig::new(seed) });
        assert!(report.failure.is_none(), "seed {seed}: {:#?}", report.failure);
        assert!(report.committed > 0, "seed {seed} commits something");
        crashes += report.counters.crashes;
        partitions_or_pauses += report.counters.partitions + report.counters.pauses;
        dropped += report.counters.messages_dropped;
        syncs += report.counters.disk_syncs;
        flushes += report.counters.disk_flushes;
        joined += report.counters.disk_syncs_joined;
        in_flight = in_flight.max(report.counters.disk_max_syncs_in_flight);
        torn += report.counters.torn_crashes;
        kept += report.counters.torn_batches_kept;
    }
    assert!(
        crashes > 0 && partitions_or_pauses > 0 && dropped > 0,
        "{crashes} crashes, {partitions_or_pauses} partitions, {dropped} drops"
    );
    // Flushes take virtual time, so syncs overlap and share them: group
    // commit runs in every simulated run, not only in a unit test.
    assert!(
        flushes > 0 && flushes < syncs && joined > 0 && in_flight >= 3,
        "{syncs} syncs served by {flushes} flushes, {joined} joined one in progress, at most {in_flight} in flight"
    );
    // Some crashes tore the unsynced tail (kept part of it), and recovery coped.
    assert!(torn > 0 && kept >= torn, "{torn} torn crashes keeping {kept} batches");
}

/// With a retention of one second, most keys are evicted before the
/// checker looks them up: their outcomes cannot be known, and the checker
/// says so (`outcomes-decidable`) instead of reading them as "never
/// registered, nothing applied", which would make it miss a payment applied
/// twice or lost. (The model-based checks then fail too — the model lacks
/// the evicted commits, and resubmitted keys run again, as a key older than
/// retention is new — but none reads an acknowledged outcome as changed.)
#[test]
fn keys_evicted_by_retention_are_undecidable_not_unregistered() {
    let small =
        SimConfig { operations: 60, faults: FaultProfile::None, key_retention_secs: Some(1), ..SimConfig::new(9) };
    let failure = run(&small).failure.expect("evicted keys are flagged");
    let names: Vec<&str> = failure.violations.iter().map(|v| v.invariant).collect();
    assert!(names.contains(&"outcomes-decidable"), "flagged as undecidable: {names:?}");
    assert!(!names.contains(&"durable-outcomes"), "an evicted key's outcome is not compared: {names:?}");
    // The same run with the default retention passes: the flags come from
    // the eviction alone.
    let default = SimConfig { key_retention_secs: None, ..small };
    assert!(run(&default).failure.is_none(), "default retention: the run passes");
}

#[test]
fn without_faults_nothing_is_lost_or_unknown() {
    let report = run(&SimConfig { operations: 80, faults: FaultProfile::None, ..SimConfig::new(9) });
    assert!(report.failure.is_none(), "{:#?}", report.failure);
    assert_eq!(report.unknown, 0, "no fault, no unknown outcome");
    assert_eq!(report.counters.crashes + report.counters.messages_dropped, 0);
}

/// The run that found a rebuilt replica left half-admitted: its group's
/// leader was cut off in the middle of the voter swap (joint consensus),
/// the rebuilt replica won the next election, and nobody finished the swap,
/// so its node's old id stayed a (dead) voter for good
/// (`rebuilt-node-rejoins`). The replica now finishes its own admission
/// when it leads (`paytx_raft::admit::join`). Histories change with the
/// code, so this seed guards the fix only as long as it replays that
/// schedule; the campaigns guard the rest.
#[test]
fn a_rebuilt_replica_that_comes_to_lead_finishes_its_own_admission() {
    let report = run(&SimConfig { operations: 100, faults: FaultProfile::All, ..SimConfig::new(110) });
    assert!(report.failure.is_none(), "{:#?}", report.failure);
    assert!(report.counters.disks_wiped > 0, "the run rebuilds a node");
}
