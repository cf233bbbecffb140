//! `paytx chaos`: fault injection against real `paytx node` OS processes.
//!
//! A cluster of `paytx node` processes runs on loopback with a
//! fault-injecting proxy on every directed node-to-node link ([`proxy`]).
//! Concurrent client drivers ([`workload`]) run transfers, payments and
//! refunds over contended hot accounts, retrying with the same idempotency
//! key, while a seeded schedule ([`schedule`], run by [`runner`]) kills
//! nodes (the leader too) with SIGKILL and restarts them, pauses them with
//! SIGSTOP/SIGCONT for longer than the election timeout, partitions them
//! (isolate the leader, split, one-way) and slows their links. Then
//! everything is healed, the cluster settles, and [`check`] verifies the
//! Jepsen-bank invariants through the client API; [`summary`] reports.

pub mod check;
pub mod cluster;
pub mod procs;
pub mod proxy;
pub mod runner;
pub mod schedule;
pub mod summary;
pub mod workload;

use crate::client::{Client, ClientConfig};
use crate::workload::open_accounts;
use anyhow::Context;
use check::Findings;
use cluster::ChaosCluster;
use paytx_coordinator::RaftSettings;
use paytx_protocol::AccountId;
use schedule::{Schedule, ScheduleSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use summary::Summary;
use workload::{Driver, Shared, WorkloadConfig};

/// Bound on the first leader election.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the drivers finishing their last transaction after the faults.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);
/// Opening balance of every account.
const INITIAL_BALANCE_MINOR: i64 = 100_000;

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Nodes in the cluster: 3 or 5.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Length of the fault schedule, in seconds (the run takes a little
    /// longer: start-up, draining, settling, checking).
    #[arg(long, default_value_t = 120)]
    pub duration_secs: u64,
    /// Seed of the fault schedule and the workload (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the summary as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Draw the run's timeline into this SVG file: commits per second, each
    /// fault on the row of the node it hit, its heal, and the leader each
    /// fault found.
    #[arg(long)]
    pub timeline: Option<PathBuf>,
    /// Fail unless at least this many kills were injected.
    #[arg(long, default_value_t = 0)]
    pub min_kills: u64,
    /// Fail unless at least this many partitions were injected.
    #[arg(long, default_value_t = 0)]
    pub min_partitions: u64,
    /// Wipe faults to inject (and fail unless they were): SIGKILL a node,
    /// delete its data directory, restart it empty. It must rejoin and lose
    /// nothing acknowledged.
    #[arg(long, default_value_t = 0)]
    pub min_wipes: u64,
    /// Keep node data and logs here (must be empty or absent). Default: a
    /// temporary directory, removed on success, kept and printed on failure.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Concurrent client drivers.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u64,
    /// Accounts (half of all account picks go to the first --hot-accounts).
    #[arg(long, default_value_t = 40)]
    pub accounts: u64,
    #[arg(long, default_value_t = 4)]
    pub hot_accounts: u64,
    /// Bound on the cluster going quiet after healing, in seconds.
    #[arg(long, default_value_t = 120)]
    pub settle_timeout_secs: u64,
    /// Testing the checker: before the check, commit one transfer that no
    /// driver recorded. The run must then fail (all-or-nothing).
    #[arg(long, hide = true)]
    pub tamper: bool,
}

impl ChaosArgs {
    fn rerun(&self, seed: u64) -> String {
        format!(
            "paytx chaos --seed {seed} --nodes {} --duration-secs {} --min-kills {} --min-partitions {} \
             --min-wipes {} --concurrency {} --accounts {} --hot-accounts {}",
            self.nodes,
            self.duration_secs,
            self.min_kills,
            self.min_partitions,
            self.min_wipes,
            self.concurrency,
            self.accounts,
            self.hot_accounts
        )
    }
}

/// Where node data and logs live.
enum DataDir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl DataDir {
    fn path(&self) -> PathBuf {
        match self {
            DataDir::Temp(dir) => dir.path().to_path_buf(),
            DataDir::Given(path) => path.clone(),
        }
    }
}

/// Runs a chaos campaign; `Ok(true)` when every invariant held and the
/// minimums were met.
pub async fn run(args: ChaosArgs) -> anyhow::Result<bool> {
    let run_started = Instant::now();
    anyhow::ensure!(args.accounts >= 2, "--accounts must be at least 2");
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let seed = args.seed.unwrap_or_else(rand::random);
    let raft = RaftSettings::default();
    let spec = ScheduleSpec {
        seed,
        nodes: args.nodes,
        duration_ms: args.duration_secs.saturating_mul(1_000),
        min_kills: args.min_kills,
        min_partitions: args.min_partitions,
        min_wipes: args.min_wipes,
        election_timeout_max_ms: raft.election_timeout_max_ms,
    };
    let schedule = Schedule::generate(&spec)?;
    eprintln!(
        "paytx chaos: seed {seed}, {} nodes, {} faults planned ({} kills, {} partitions) over {} s",
        args.nodes,
        schedule.faults.len(),
        schedule.kills(),
        schedule.partitions(),
        args.duration_secs
    );

    let data = match &args.data_dir {
        Some(path) => {
            let empty = !path.exists() || std::fs::read_dir(path).map(|mut d| d.next().is_none()).unwrap_or(false);
            anyhow::ensure!(empty, "--data-dir {} must be empty or absent", path.display());
            std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
            DataDir::Given(path.clone())
        }
        None => {
            DataDir::Temp(tempfile::Builder::new().prefix("paytx-chaos-").tempdir().context("temporary directory")?)
        }
    };
    let program = std::env::current_exe().context("locating the paytx binary")?;
    let log_filter =
        std::env::var("PAYTX_CHAOS_NODE_LOG").unwrap_or_else(|_| "warn,openraft=error,paytx::net=error".into());
    let mut cluster = ChaosCluster::prepare(&data.path(), args.nodes, seed, program, log_filter).await?;
    let outcome = campaign(&args, seed, &schedule, &mut cluster, run_started).await;
    cluster.procs.kill_all();
    let mut summary = match outcome {
        Ok(summary) => summary,
        Err(e) => {
            let kept = keep(data);
            return Err(
                e.context(format!("chaos run with seed {seed} failed; node data and logs in {}", kept.display()))
            );
        }
    };
    if !summary.passed || args.data_dir.is_some() {
        summary.data_dir = Some(keep(data).display().to_string());
    }
    if let Some(path) = &args.timeline {
        let title = format!("paytx chaos --seed {seed}: commits per second, faults, leader");
        let svg = crate::plot::sim_timeline_svg(&summary.timeline(1_000), &title, "seconds into the fault phase")?;
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("timeline written to {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary).context("serialising the summary")?);
    } else {
        print!("{}", summary.render());
    }
    Ok(summary.passed)
}

/// Keeps the data directory (a temporary one is not removed).
fn keep(data: DataDir) -> PathBuf {
    match data {
        DataDir::Temp(dir) => dir.keep(),
        DataDir::Given(path) => path,
    }
}

async fn campaign(
    args: &ChaosArgs,
    seed: u64,
    schedule: &Schedule,
    cluster: &mut ChaosCluster,
    run_started: Instant,
) -> anyhow::Result<Summary> {
    let first_leader = cluster.start(START_TIMEOUT).await?;
    eprintln!("cluster up: nodes {:?}, leader node {first_leader}", cluster.addrs);

    // Opening deposits, before any fault.
    let opening: BTreeMap<AccountId, i64> =
        (1..=args.accounts).map(|id| (AccountId(id), INITIAL_BALANCE_MINOR)).collect();
    let admin = Client::connect_with(
        cluster.addr_list(),
        ClientConfig { request_timeout_ms: 5_000, max_retries: 10, ..ClientConfig::default() },
    )
    .await
    .context("connecting the check client")?;
    let accounts: Vec<(AccountId, i64)> = opening.iter().map(|(a, b)| (*a, *b)).collect();
    let opened = open_accounts(&admin, "chaos-open", &accounts, workload::CURRENCY, 20).await?;
    if let Some(aborted) = opened.iter().find(|r| !r.outcome.is_committed()) {
        anyhow::bail!("opening the accounts aborted: {:?}", aborted.outcome);
    }

    // Drivers and faults.
    let config = WorkloadConfig {
        accounts: args.accounts,
        hot_accounts: args.hot_accounts,
        max_attempts: 4,
        duplicate_per_mille: 30,
    };
    let started = Instant::now();
    let shared = Shared::new(started);
    let addrs = cluster.addr_list();
    let mut drivers = Vec::new();
    for d in 0..args.concurrency {
        // Each driver starts at a different node and fails over from there.
        let mut own = addrs.clone();
        own.rotate_left((d as usize) % addrs.len());
        let client_config = ClientConfig {
            request_timeout_ms: 4_000,
            max_retries: 3,
            retry_backoff_ms: 50,
            max_retry_backoff_ms: 1_000,
            ..ClientConfig::default()
        };
        let client = Client::connect_with(own, client_config).await.context("connecting a driver")?;
        let driver = Driver::new(d, client, seed.wrapping_add(1_000 + d), config.clone(), shared.clone());
        drivers.push(tokio::spawn(driver.run()));
    }
    let mut findings = Findings::default();
    let (fault_log, shard_leaders) = runner::run_schedule(cluster, schedule, started, &mut findings).await;
    let faults_end_ms = started.elapsed().as_millis() as u64;
    eprintln!("[{:>7.1}s] faults done; stopping the clients", faults_end_ms as f64 / 1000.0);
    shared.stop.store(true, Ordering::SeqCst);
    let drain_deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    for driver in drivers {
        let abort = driver.abort_handle();
        if tokio::time::timeout_at(drain_deadline, driver).await.is_err() {
            // Its last transaction is in the history already (as unknown):
            // the check resolves it by key.
            abort.abort();
        }
    }

    // Heal everything (the runner healed after each fault; once more to be
    // sure), settle, check.
    if let Err(e) = cluster.heal_all().await {
        findings.flag("nodes_stay_up", format!("final heal: {e}"));
    }
    let settle_started = Instant::now();
    eprintln!("healed; waiting for the cluster to go quiet...");
    let settled = cluster.wait_quiet(Duration::from_secs(args.settle_timeout_secs)).await;
    let settle_ms = settle_started.elapsed().as_millis() as u64;
    for crash in cluster.restart_crashed().await {
        findings.flag("nodes_stay_up", crash);
    }
    if args.tamper {
        tamper(&admin).await?;
    }
    eprintln!("checking invariants through the client API...");
    let history = std::mem::take(&mut *shared.lock());
    let outcomes = check::check(&admin, &history, &opening, shared.orders(), settled, &mut findings).await;

    let mut faults_by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    for record in &fault_log {
        *faults_by_kind.entry(record.kind).or_default() += 1;
    }
    let kills = fault_log.iter().filter(|r| r.kind.starts_with("kill")).count() as u64;
    let partitions = fault_log.iter().filter(|r| r.kind.starts_with("partition")).count() as u64;
    let wipes = fault_log.iter().filter(|r| r.kind == "wipe").count() as u64;
    let minimums_met = kills >= args.min_kills && partitions >= args.min_partitions && wipes >= args.min_wipes;
    let invariants = findings.results();
    let (longest_no_commit_ms, longest_no_commit_from_ms) =
        summary::longest_gap(&history.commit_times_ms, faults_end_ms);
    Ok(Summary {
        passed: minimums_met && invariants.iter().all(|i| i.ok()),
        seed,
        nodes: args.nodes,
        planned_fault_secs: args.duration_secs,
        elapsed_secs: run_started.elapsed().as_secs_f64(),
        rerun: args.rerun(seed),
        faults_by_kind,
        kills,
        partitions,
        wipes,
        faults_hitting_leader: fault_log.iter().filter(|r| r.hit_leader).count() as u64,
        min_kills: args.min_kills,
        min_partitions: args.min_partitions,
        min_wipes: args.min_wipes,
        minimums_met,
        transactions: outcomes,
        longest_no_commit_ms,
        longest_no_commit_from_ms,
        settled,
        settle_ms,
        invariants,
        data_dir: None,
        fault_log,
        commit_times_ms: history.commit_times_ms.clone(),
        abort_times_ms: history.abort_times_ms.clone(),
        leaders_seen: history.leaders_seen.clone(),
        shard_leaders,
        faults_end_ms,
    })
}

/// Commits a transfer behind the checker's back (`--tamper`), so a test can
/// see the check fail.
async fn tamper(client: &Client) -> anyhow::Result<()> {
    use paytx_protocol::{Money, Operation, TxnRequest};
    let amount = Money::new(1, workload::CURRENCY);
    let ops =
        vec![Operation::Credit { account: AccountId(1), amount }, Operation::Debit { account: AccountId(2), amount }];
    // Opening deposits: account 2 was funded; one minor unit is always there
    // unless the workload drained it, in which case account 1 pays.
    let receipt = client.submit(TxnRequest::new("chaos-tamper", ops)).await?;
    if !receipt.outcome.is_committed() {
        let ops = vec![
            Operation::Debit { account: AccountId(1), amount },
            Operation::Credit { account: AccountId(2), amount },
        ];
        let receipt = client.submit(TxnRequest::new("chaos-tamper-2", ops)).await?;
        anyhow::ensure!(receipt.outcome.is_committed(), "--tamper: no transfer committed: {:?}", receipt.outcome);
    }
    eprintln!("--tamper: committed one transfer the check does not know about");
    Ok(())
}
