//! `paytx sim`: one deterministic simulation, or a campaign over many seeds.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use paytx::protocol::planted::{self, Bug};
use paytx_simulator::{run, FaultProfile, RunReport, SimConfig};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Run a campaign over seeds A..B (B excluded).
    #[arg(long, value_name = "A..B")]
    pub seeds: Option<String>,
    /// Client operations per run.
    #[arg(long, default_value_t = 300)]
    pub steps: u64,
    /// Stop the workload after this much virtual time.
    #[arg(long)]
    pub virtual_secs: Option<u64>,
    /// Faults to inject: none, network, crashes, all.
    #[arg(long, default_value = "all")]
    pub faults: String,
    /// Plant a bug (needs a build with `--features planted-bugs`).
    #[arg(long)]
    pub bug: Option<String>,
    /// Write every event of the run to this file (single seed only).
    #[arg(long)]
    pub trace: Option<std::path::PathBuf>,
    /// Draw the run's timeline into this SVG file (single seed only):
    /// virtual time, commits and aborts per interval, the coordinator
    /// leader, crashes, restarts, pauses and partitions.
    #[arg(long)]
    pub timeline: Option<std::path::PathBuf>,
    /// Width of one timeline interval, in virtual ms.
    #[arg(long, default_value_t = 500)]
    pub timeline_interval_ms: u64,
    /// Copies of every participant shard: 3 = every shard a Raft group on
    /// the three nodes, 1 = single-copy.
    #[arg(long, default_value_t = paytx::protocol::ops::DEFAULT_SHARD_REPLICAS)]
    pub replicas: u32,
    /// Worker threads for a campaign (default: one per core).
    #[arg(long)]
    pub jobs: Option<usize>,
}

fn parse_seeds(text: &str) -> anyhow::Result<std::ops::Range<u64>> {
    let (a, b) = text.split_once("..").context("--seeds takes A..B, e.g. 0..200")?;
    let (a, b): (u64, u64) = (a.parse().context("seed range start")?, b.parse().context("seed range end")?);
    anyhow::ensure!(a < b, "--seeds {a}..{b} is empty");
    Ok(a..b)
}

fn config(args: &SimArgs, seed: u64) -> anyhow::Result<SimConfig> {
    let faults = FaultProfile::parse(&args.faults)
        .with_context(|| format!("unknown fault profile {:?} (none, network, crashes, all)", args.faults))?;
    let bug = match &args.bug {
        None => None,
        Some(name) => {
            let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
            let bug = Bug::parse(name).with_context(|| format!("unknown bug {name:?}; known: {}", names.join(", ")))?;
            if !planted::AVAILABLE {
                bail!("this binary has no planted bugs; rebuild with `cargo run --release --features planted-bugs -- sim ...`");
            }
            Some(bug)
        }
    };
    Ok(SimConfig {
        seed,
        operations: args.steps,
        virtual_secs: args.virtual_secs,
        faults,
        bug,
        keep_trace: args.trace.is_some() || args.timeline.is_some(),
        // A bug of one path runs on the shard copies of that path.
        replicas: bug.and_then(Bug::shard_replicas).unwrap_or(args.replicas),
        key_retention_secs: None,
    })
}

/// The command that replays `seed` with the same settings.
fn replay_command(args: &SimArgs, seed: u64) -> String {
    let mut command = String::from("cargo run --release");
    if args.bug.is_some() {
        command.push_str(" --features planted-bugs");
    }
    command.push_str(&format!(" -- sim --seed {seed} --steps {} --faults {}", args.steps, args.faults));
    if let Some(secs) = args.virtual_secs {
        command.push_str(&format!(" --virtual-secs {secs}"));
    }
    if args.replicas != paytx::protocol::ops::DEFAULT_SHARD_REPLICAS {
        command.push_str(&format!(" --replicas {}", args.replicas));
    }
    if let Some(bug) = &args.bug {
        command.push_str(&format!(" --bug {bug}"));
    }
    command
}

fn print_failure(args: &SimArgs, report: &RunReport) {
    let Some(failure) = &report.failure else { return };
    println!("FAILED seed {} at {} ms (virtual)", report.seed, failure.at_ms);
    for violation in &failure.violations {
        println!("  invariant {}: {}", violation.invariant, violation.detail);
    }
    if !failure.recent.is_empty() {
        println!("  last events before it:");
        for event in &failure.recent {
            println!("    {event}");
        }
    }
    println!("  replay: {}", replay_command(args, report.seed));
    println!("  trace:  {} --trace trace.log", replay_command(args, report.seed));
}

pub fn run_sim(args: SimArgs) -> anyhow::Result<bool> {
    match (&args.seed, &args.seeds) {
        (Some(seed), _) => single(&args, *seed),
        (None, Some(range)) => campaign(&args, parse_seeds(range)?),
        (None, None) => single(&args, 0),
    }
}

fn single(args: &SimArgs, seed: u64) -> anyhow::Result<bool> {
    let config = config(args, seed)?;
    let started = Instant::now();
    let mut report = run(&config);
    let wall = started.elapsed().as_secs_f64();
    let trace = report.trace.take();
    if let (Some(path), Some(trace)) = (&args.trace, &trace) {
        std::fs::write(path, trace.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("trace: {} events written to {}", trace.len(), path.display());
    }
    if let (Some(path), Some(trace)) = (&args.timeline, &trace) {
        let timeline = paytx::plot::SimTimeline::from_trace(trace, args.timeline_interval_ms);
        let title = format!("paytx sim --seed {seed} (faults {})", args.faults);
        let svg = paytx::plot::sim_timeline_svg(&timeline, &title, "virtual seconds")?;
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        println!("timeline written to {}", path.display());
    }
    let c = &report.counters;
    println!("seed {}  trace hash {:016x}  ({} events)", report.seed, report.trace_hash, report.events);
    println!(
        "  transactions {} (committed {}, aborted {}, unknown to clients {}), record writes {}",
        report.txns, report.committed, report.aborted, report.unknown, report.record_writes
    );
    println!(
        "  faults: {} crashes ({} of the leader), {} restarts, {} partitions, {} pauses (clock stopped), {} fsync failures, {} messages dropped, {} duplicated; clocks drift up to {} ppm",
        c.crashes, c.leader_crashes, c.restarts, c.partitions, c.pauses, c.fsync_failures, c.messages_dropped, c.messages_duplicated, c.max_drift_ppm
    );
    println!(
        "  disks: {} syncs served by {} flushes ({} joined a flush in progress, at most {} in flight), {} torn crashes keeping {} unsynced batches",
        c.disk_syncs, c.disk_flushes, c.disk_syncs_joined, c.disk_max_syncs_in_flight, c.torn_crashes, c.torn_batches_kept
    );
    let b = &c.batch;
    println!(
        "  batching: {} raft proposals carrying {} commands; {} with one transaction twice, {} barriers beside other commands, {} tombstones, {} begins refused by one",
        b.proposals, b.commands, b.proposals_with_a_txn_twice, b.barriers_beside_others, b.tombstones, b.tombstoned_begins
    );
    println!(
        "  2pc batches: {} prepare batches carrying {} prepares ({} blocked, sent again alone), {} decision batches carrying {} decisions",
        c.prepare_batches, c.prepares_in_batches, c.blocked_in_batches, c.decide_batches, c.decisions_in_batches
    );
    println!(
        "  {:.1} virtual s in {:.2} wall s ({:.0}x), {:.0} simulated txns per wall second",
        report.virtual_ms as f64 / 1000.0,
        wall,
        report.virtual_ms as f64 / 1000.0 / wall.max(1e-9),
        report.txns as f64 / wall.max(1e-9)
    );
    if report.failure.is_some() {
        print_failure(args, &report);
        return Ok(false);
    }
    println!("  all invariants hold");
    Ok(true)
}

fn campaign(args: &SimArgs, seeds: std::ops::Range<u64>) -> anyhow::Result<bool> {
    anyhow::ensure!(args.trace.is_none(), "--trace is for a single --seed");
    anyhow::ensure!(args.timeline.is_none(), "--timeline is for a single --seed");
    config(args, seeds.start)?; // validate the arguments once, up front
    let total = seeds.end - seeds.start;
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{spinner} seeds [{bar:40}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let next = AtomicU64::new(seeds.start);
    let reports: Mutex<Vec<RunReport>> = Mutex::new(Vec::new());
    let failures = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= seeds.end {
                    break;
                }
                let Ok(config) = config(args, seed) else { break };
                let report = run(&config);
                if report.failure.is_some() {
                    let failed = failures.fetch_add(1, Ordering::SeqCst) + 1;
                    progress.set_message(format!("{failed} failed (first: seed {seed})"));
                }
                reports.lock().unwrap_or_else(|p| p.into_inner()).push(report);
                progress.inc(1);
            });
        }
    });
    progress.finish();
    let wall = started.elapsed().as_secs_f64();
    let mut reports = reports.into_inner().unwrap_or_else(|p| p.into_inner());
    reports.sort_by_key(|r| r.seed);
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let mut max_drift_ppm = 0u64;
    let (mut txns, mut committed, mut virtual_ms) = (0u64, 0u64, 0u64);
    for report in &reports {
        let c = &report.counters;
        txns += report.txns;
        committed += report.committed;
        virtual_ms += report.virtual_ms;
        for (name, count) in [
            ("crashes", c.crashes),
            ("leader crashes", c.leader_crashes),
            ("nodes lost for good", c.nodes_lost),
            ("disks wiped", c.disks_wiped),
            ("replicas lagging far behind", c.replicas_lagging),
            ("shard snapshots installed", c.shard_snapshots_installed),
            ("leaderships handed back", c.leaders_handed_over),
            ("hand-overs stopped short", c.hand_overs_stopped),
            ("restarts", c.restarts),
            ("partitions", c.partitions),
            ("pauses", c.pauses),
            ("fsync failures", c.fsync_failures),
            ("messages dropped", c.messages_dropped),
            ("messages duplicated", c.messages_duplicated),
            ("disk: syncs", c.disk_syncs),
            ("disk: flushes", c.disk_flushes),
            ("disk: syncs joining a flush", c.disk_syncs_joined),
            ("disk: torn crashes", c.torn_crashes),
            ("disk: torn batches kept", c.torn_batches_kept),
            ("batch: raft proposals", c.batch.proposals),
            ("batch: commands in them", c.batch.commands),
            ("batch: with one txn twice", c.batch.proposals_with_a_txn_twice),
            ("batch: barriers beside others", c.batch.barriers_beside_others),
            ("batch: tombstones", c.batch.tombstones),
            ("batch: begins tombstoned", c.batch.tombstoned_begins),
            ("2pc: prepare batches", c.prepare_batches),
            ("2pc: prepares in them", c.prepares_in_batches),
            ("2pc: prepares blocked in one", c.blocked_in_batches),
            ("2pc: decision batches", c.decide_batches),
            ("2pc: decisions in them", c.decisions_in_batches),
        ] {
            *faults.entry(name).or_default() += count;
        }
        max_drift_ppm = max_drift_ppm.max(c.max_drift_ppm);
    }
    let failed: Vec<&RunReport> = reports.iter().filter(|r| r.failure.is_some()).collect();
    println!();
    println!(
        "campaign: seeds {}..{} ({} runs, faults {}{})",
        seeds.start,
        seeds.end,
        reports.len(),
        args.faults,
        args.bug.as_deref().map(|b| format!(", planted bug {b}")).unwrap_or_default()
    );
    println!("  {:<31}{txns} ({committed} committed)", "transactions");
    for (name, count) in &faults {
        println!("  {name:<31}{count}");
    }
    println!("  {:<31}{max_drift_ppm} ppm", "clock drift (largest)");
    println!(
        "  speed                          {:.0} simulated txns per wall second, {:.0}x virtual/wall ({} jobs)",
        txns as f64 / wall.max(1e-9),
        virtual_ms as f64 / 1000.0 / (wall * jobs as f64).max(1e-9),
        jobs
    );
    println!("  {:<31}{}", "failures", failed.len());
    if let Some(first) = failed.first() {
        let seeds: Vec<String> = failed.iter().take(20).map(|r| r.seed.to_string()).collect();
        println!(
            "  failing seeds                  {}{}",
            seeds.join(", "),
            if failed.len() > 20 { ", ..." } else { "" }
        );
        println!();
        print_failure(args, first);
    }
    Ok(failed.is_empty())
}
