//! `paytx bench`: closed-loop payments over TCP at a fixed concurrency for a
//! fixed duration, against an embedded cluster or running nodes.
//!
//! Each payment is one transaction that creates an order and pays it:
//! debit payer, credit merchant, create the order, mark it paid, charge the
//! channel — five operations on up to four shards. Latency is measured per
//! transaction at the client (HDR histogram); throughput counts commits.

use crate::bench_scrape::{ScrapeWindow, Scraper};
use anyhow::Context;
use paytx::protocol::{AccountId, ChannelId, Currency, Money, OrderId, TxnRequest};
use paytx::report::{latency_histogram, record_us, summarize, LatencySummary};
use paytx::workload::{create_and_pay_ops, open_accounts};
use paytx::{Client, Cluster, ClusterOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Concurrent closed-loop clients: one level, or a list (`1,16,64,256`)
    /// run one after the other against the same cluster, one row each.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub concurrency: Vec<usize>,
    /// Measured duration of each level, after a 2 s warm-up.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Payer accounts (more accounts: less contention on holds).
    #[arg(long, default_value_t = 1_000)]
    pub accounts: u64,
    /// Nodes to run against (comma-separated); default: an embedded 3-node cluster.
    #[arg(long, value_delimiter = ',')]
    pub addrs: Vec<SocketAddr>,
    /// Embedded cluster without fsync (NOT durable; for comparison only).
    #[arg(long)]
    pub no_fsync: bool,
    /// Embedded cluster: model the channels' authorization latency (5-8 ms
    /// per charge, the stock channels). Off by default: the channel is a
    /// charge record, as in the peers' workload it is compared with.
    #[arg(long)]
    pub channel_latency: bool,
    /// Embedded cluster: copies of every participant shard (3: every shard
    /// a Raft group of three voters; 1: single-copy).
    #[arg(long, default_value_t = paytx::protocol::ops::DEFAULT_SHARD_REPLICAS)]
    pub replicas: u32,
    /// Embedded cluster: shards of each participant kind (default: one of
    /// each kind with three replicas, as every node holds every shard either
    /// way and fewer Raft groups batch more; one of each kind per node
    /// single-copy). 3 with three replicas: the twelve-group layout.
    #[arg(long)]
    pub shards_per_kind: Option<std::num::NonZeroUsize>,
    /// Print each level's result as one line of JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Draw throughput over time and the latency distribution (HDR
    /// percentiles), one series per concurrency level, into this SVG file.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// Embedded cluster: give every node an admin listener and fetch its
    /// `/metrics` and `/console` every this many milliseconds (at least
    /// 100) while the bench runs, to measure what scraping costs.
    #[arg(long)]
    pub scrape_every_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    target: String,
    fsync: bool,
    channel_latency: bool,
    concurrency: usize,
    duration_secs: f64,
    committed: u64,
    aborted: u64,
    errors: u64,
    committed_per_sec: f64,
    latency: LatencySummary,
    /// This process's user + system CPU over the window per committed
    /// payment (embedded nodes run in this process; with `--addrs` only the
    /// load generator's).
    cpu_us_per_payment: Option<f64>,
    /// Over the window, summed over the nodes: Raft entries the
    /// coordinators proposed, the commands in them, and the disk flushes.
    raft_entries: u64,
    commands_per_entry: Option<f64>,
    payments_per_entry: Option<f64>,
    disk_flushes: u64,
    payments_per_flush: Option<f64>,
    /// With `--scrape-every-ms`: the scrapes made during the window.
    scrapes: Option<ScrapeWindow>,
    /// What `--plot` draws of this level.
    #[serde(skip)]
    series: paytx::plot::LevelSeries,
}

/// USER_HZ: the unit of `/proc/<pid>/stat` CPU times, 100 on every Linux
/// (a fixed part of the kernel's user-space ABI).
const USER_HZ: f64 = 100.0;

/// This process's user + system CPU seconds, from `/proc/self/stat`
/// (`None` where there is no procfs).
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name (which may hold spaces):
    // state is field 3, utime 14 and stime 15 (1-based).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Raft entries, commands and disk flushes, summed over `addrs`.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    entries: u64,
    commands: u64,
    flushes: u64,
}

async fn counters(client: &Client, addrs: &[SocketAddr]) -> Counters {
    let mut total = Counters::default();
    for addr in addrs {
        if let Ok(status) = client.node_status_of(*addr).await {
            total.entries += status.raft_proposals;
            total.commands += status.raft_proposed_commands;
            total.flushes += status.disk_flushes;
        }
    }
    total
}

fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.scrape_every_ms.is_none() || args.addrs.is_empty(),
        "--scrape-every-ms scrapes the embedded cluster's admin listeners; it cannot be used with --addrs"
    );
    if let Some(every_ms) = args.scrape_every_ms {
        crate::bench_scrape::check_every_ms(every_ms)?;
    }
    // The console needs the admin key: a random one, in a file only this
    // run reads, removed at the end.
    let admin_key = format!("{:032x}", rand::random::<u128>());
    let admin_key_file = std::env::temp_dir().join(format!("paytx-bench-admin-{}.key", std::process::id()));
    let admin = match args.scrape_every_ms {
        Some(_) => {
            std::fs::write(&admin_key_file, &admin_key).context("writing the bench's admin key")?;
            Some(paytx::cluster::AdminOptions {
                base: SocketAddr::from(([127, 0, 0, 1], 0)),
                admin_key_file: Some(admin_key_file.clone()),
            })
        }
        None => None,
    };
    let (cluster, addrs) = if args.addrs.is_empty() {
        let mut channels = paytx_participants::default_channels();
        if !args.channel_latency {
            for channel in &mut channels {
                channel.authorize_latency_ms = 0;
            }
        }
        let options = ClusterOptions {
            fsync: !args.no_fsync,
            seed: Some(args.seed),
            channels,
            shard_replicas: args.replicas,
            shards_per_kind: args.shards_per_kind,
            admin,
            ..ClusterOptions::default()
        };
        let cluster = Cluster::start(options).await.context("starting the embedded cluster")?;
        let addrs = cluster.addrs();
        (Some(cluster), addrs)
    } else {
        (None, args.addrs.clone())
    };
    let client = Client::connect(addrs.clone()).await.context("connecting")?;
    // Account ids are offset by a per-run base so a bench can run twice
    // against the same long-lived cluster.
    let base = 1_000_000_000u64 * (1 + args.seed % 1000);
    let merchants = (args.accounts / 10).max(1);
    let accounts: Vec<(AccountId, i64)> = (0..args.accounts + merchants)
        .map(|i| (AccountId(base + i), if i < args.accounts { 1_000_000_000_000 } else { 0 }))
        .collect();
    let opened = open_accounts(&client, &format!("bench-{base}-open"), &accounts, Currency::CNY, 50).await?;
    anyhow::ensure!(opened.iter().all(|r| r.outcome.is_committed()), "opening bench accounts aborted");

    let scraper = match (args.scrape_every_ms, &cluster) {
        (Some(every_ms), Some(cluster)) => {
            let admin: Vec<SocketAddr> =
                cluster.node_ids().into_iter().filter_map(|id| cluster.admin_addr(id)).collect();
            anyhow::ensure!(admin.len() == cluster.node_ids().len(), "every node serves an admin listener");
            Some(Scraper::start(admin, admin_key, every_ms)?)
        }
        _ => None,
    };
    let mut series = Vec::new();
    for (level, concurrency) in args.concurrency.iter().copied().enumerate() {
        let report =
            run_level(&args, &client, &addrs, scraper.as_ref(), base, merchants, level as u64, concurrency).await?;
        print_report(&args, &report)?;
        series.push(report.series);
    }
    if let Some(path) = &args.plot {
        let svg = paytx::plot::bench_svg(&series)?;
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    if let Some(scraper) = scraper {
        scraper.stop().await;
    }
    if let Some(cluster) = cluster {
        cluster.shutdown().await;
    }
    if args.scrape_every_ms.is_some() {
        let _ = std::fs::remove_file(&admin_key_file);
    }
    Ok(())
}

/// One closed-loop run at `concurrency`. `level` keeps order ids and
/// idempotency keys of successive levels apart.
#[allow(clippy::too_many_arguments)]
async fn run_level(
    args: &BenchArgs,
    client: &Client,
    addrs: &[SocketAddr],
    scraper: Option<&Scraper>,
    base: u64,
    merchants: u64,
    level: u64,
    concurrency: usize,
) -> anyhow::Result<BenchReport> {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    // Commits so far in the window, read once a second for the plot.
    let commits_so_far = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..concurrency.max(1) {
        let (client, stop, measuring) = (client.clone(), stop.clone(), measuring.clone());
        let commits_so_far = commits_so_far.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ (worker as u64) << 20 ^ level << 40);
        let payers = args.accounts;
        workers.push(tokio::spawn(async move {
            let mut histogram = latency_histogram();
            let (mut committed, mut aborted, mut errors) = (0u64, 0u64, 0u64);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let order = OrderId(base + (level << 48) + ((worker as u64) << 32) + n);
                let payer = AccountId(base + rng.gen_range(0..payers));
                let merchant = AccountId(base + payers + rng.gen_range(0..merchants));
                let channel = ChannelId(1 + rng.gen_range(0..3));
                let amount = Money::new(rng.gen_range(100..10_000), Currency::CNY);
                let request = TxnRequest::new(
                    format!("bench-{base}-{level}-{worker}-{n}"),
                    create_and_pay_ops(payer, merchant, order, channel, amount),
                );
                let sent = Instant::now();
                let result = client.submit(request).await;
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                record_us(&mut histogram, sent.elapsed().as_micros() as u64);
                match result {
                    Ok(receipt) if receipt.outcome.is_committed() => {
                        committed += 1;
                        commits_so_far.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => aborted += 1,
                    Err(_) => errors += 1,
                }
            }
            (histogram, committed, aborted, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = counters(client, addrs).await;
    let cpu_before = process_cpu_secs();
    let scrapes_before = scraper.map(Scraper::counts);
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut commits_per_sec = Vec::new();
    let mut seen = 0u64;
    for second in 1..=args.duration_secs {
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        let now = commits_so_far.load(Ordering::Relaxed);
        commits_per_sec.push(now.saturating_sub(seen) as f64);
        seen = now;
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = process_cpu_secs();
    let scrapes = scraper.zip(scrapes_before).map(|(s, before)| s.window(before, s.counts()));
    let after = counters(client, addrs).await;
    stop.store(true, Ordering::Relaxed);
    let mut histogram = latency_histogram();
    let (mut committed, mut aborted, mut errors) = (0, 0, 0);
    for worker in workers {
        let (h, c, a, e) = worker.await.context("a bench worker panicked")?;
        histogram.add(&h).context("merging histograms")?;
        committed += c;
        aborted += a;
        errors += e;
    }
    let entries = after.entries.saturating_sub(before.entries);
    let commands = after.commands.saturating_sub(before.commands);
    let flushes = after.flushes.saturating_sub(before.flushes);
    let cpu_us_per_payment = match (cpu_before, cpu_after, committed) {
        (Some(b), Some(a), c) if c > 0 => Some((a - b) * 1e6 / c as f64),
        _ => None,
    };
    Ok(BenchReport {
        target: match (args.addrs.is_empty(), args.shards_per_kind) {
            (true, None) => "embedded 3-node cluster".into(),
            (true, Some(per_kind)) => format!("embedded 3-node cluster, {per_kind} shard(s) per kind"),
            (false, _) => format!("{:?}", args.addrs),
        },
        fsync: args.addrs.is_empty() && !args.no_fsync,
        channel_latency: args.channel_latency,
        concurrency,
        duration_secs: elapsed,
        committed,
        aborted,
        errors,
        committed_per_sec: committed as f64 / elapsed,
        latency: summarize(&histogram),
        cpu_us_per_payment,
        raft_entries: entries,
        commands_per_entry: ratio(commands, entries),
        payments_per_entry: ratio(committed, entries),
        disk_flushes: flushes,
        payments_per_flush: ratio(committed, flushes),
        scrapes,
        series: paytx::plot::LevelSeries {
            concurrency,
            commits_per_sec,
            percentiles_ms: paytx::plot::PLOT_PERCENTILES
                .iter()
                .map(|p| (*p, histogram.value_at_quantile(p / 100.0) as f64 / 1_000.0))
                .collect(),
        },
    })
}

fn print_report(args: &BenchArgs, report: &BenchReport) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string(report).context("serialising the report")?);
        return Ok(());
    }
    let show = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    println!(
        "{}: concurrency {}, {:.1} s, fsync {}, channel latency {}\n  committed {} ({:.0}/s), aborted {}, errors {}\n  latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms\n  cpu {} us/payment; {} raft entries ({} commands/entry, {} payments/entry); {} disk flushes ({} payments/flush)",
        report.target,
        report.concurrency,
        report.duration_secs,
        if args.addrs.is_empty() { if report.fsync { "on" } else { "OFF" } } else { "as configured" },
        if report.channel_latency { "on" } else { "off" },
        report.committed,
        report.committed_per_sec,
        report.aborted,
        report.errors,
        report.latency.p50_ms,
        report.latency.p99_ms,
        report.latency.p999_ms,
        report.latency.max_ms,
        show(report.cpu_us_per_payment),
        report.raft_entries,
        show(report.commands_per_entry),
        show(report.payments_per_entry),
        report.disk_flushes,
        show(report.payments_per_flush),
    );
    if let Some(s) = &report.scrapes {
        println!(
            "  scrapes every {} ms of {}: {} fetches ({} ms and {} bytes each on average), {} failed",
            s.every_ms,
            crate::bench_scrape::PATHS.join(" and "),
            s.fetches,
            show(s.mean_fetch_ms),
            s.mean_bytes.map_or_else(|| "-".to_string(), |b| format!("{b:.0}")),
            s.failures
        );
    }
    Ok(())
}
