//! `paytx bench`: closed-loop payments over TCP at a fixed concurrency for a
//! fixed duration, against an embedded cluster or running nodes.
//!
//! Each payment is one transaction that creates an order and pays it:
//! debit payer, credit merchant, create the order, mark it paid, charge the
//! channel — five operations on up to four shards. Latency is measured per
//! transaction at the client (HDR histogram); throughput counts commits.

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
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Measured duration, after a 2 s warm-up.
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
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    target: String,
    fsync: bool,
    concurrency: usize,
    duration_secs: f64,
    committed: u64,
    aborted: u64,
    errors: u64,
    committed_per_sec: f64,
    latency: LatencySummary,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (cluster, addrs) = if args.addrs.is_empty() {
        let options = ClusterOptions { fsync: !args.no_fsync, seed: Some(args.seed), ..ClusterOptions::default() };
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

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..args.concurrency.max(1) {
        let (client, stop, measuring) = (client.clone(), stop.clone(), measuring.clone());
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ (worker as u64) << 20);
        let (payers, merchants) = (args.accounts, merchants);
        workers.push(tokio::spawn(async move {
            let mut histogram = latency_histogram();
            let (mut committed, mut aborted, mut errors) = (0u64, 0u64, 0u64);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let order = OrderId(base + ((worker as u64) << 32) + n);
                let payer = AccountId(base + rng.gen_range(0..payers));
                let merchant = AccountId(base + payers + rng.gen_range(0..merchants));
                let channel = ChannelId(1 + rng.gen_range(0..3));
                let amount = Money::new(rng.gen_range(100..10_000), Currency::CNY);
                let request = TxnRequest::new(
                    format!("bench-{base}-{worker}-{n}"),
                    create_and_pay_ops(payer, merchant, order, channel, amount),
                );
                let sent = Instant::now();
                let result = client.submit(request).await;
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                record_us(&mut histogram, sent.elapsed().as_micros() as u64);
                match result {
                    Ok(receipt) if receipt.outcome.is_committed() => committed += 1,
                    Ok(_) => aborted += 1,
                    Err(_) => errors += 1,
                }
            }
            (histogram, committed, aborted, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
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
    let report = BenchReport {
        target: if args.addrs.is_empty() { "embedded 3-node cluster".into() } else { format!("{:?}", args.addrs) },
        fsync: args.addrs.is_empty() && !args.no_fsync,
        concurrency: args.concurrency,
        duration_secs: elapsed,
        committed,
        aborted,
        errors,
        committed_per_sec: committed as f64 / elapsed,
        latency: summarize(&histogram),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("serialising the report")?);
    } else {
        println!(
            "{}: concurrency {}, {:.1} s, fsync {}\n  committed {} ({:.0}/s), aborted {}, errors {}\n  latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            report.target,
            report.concurrency,
            report.duration_secs,
            if args.addrs.is_empty() { if report.fsync { "on" } else { "OFF" } } else { "as configured" },
            report.committed,
            report.committed_per_sec,
            report.aborted,
            report.errors,
            report.latency.p50_ms,
            report.latency.p99_ms,
            report.latency.p999_ms,
            report.latency.max_ms
        );
    }
    if let Some(cluster) = cluster {
        cluster.shutdown().await;
    }
    Ok(())
}
