//! `paytx demo`: an embedded 3-node cluster processing real payments, with
//! the coordinator leader's whole node stopped half-way (and restarted at
//! three quarters), then an invariant check.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use paytx::protocol::error::OrderStatus;
use paytx::protocol::{
    AccountId, ChannelId, Currency, Money, NodeId, Operation, OrderId, Outcome, ShardId, TxnRequest,
};
use paytx::report::{latency_histogram, record_us, summarize};
use paytx::workload::{open_accounts, payment_ops};
use paytx::{Client, Cluster, ClusterOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Accounts to open (80% payers, 20% merchants).
    #[arg(long, default_value_t = 1_000)]
    pub accounts: u64,
    /// Orders created and paid.
    #[arg(long, default_value_t = 10_000)]
    pub payments: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seed of the workload (payers, amounts, channels).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Keep the data here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Skip the node failure half-way (the coordinator leader's whole node
    /// stopped, restarted at three quarters).
    #[arg(long)]
    pub no_failover: bool,
}

const CURRENCY: Currency = Currency::CNY;
const CHANNELS: [ChannelId; 3] = [ChannelId(1), ChannelId(2), ChannelId(3)];

/// One planned payment.
#[derive(Debug, Clone)]
struct Payment {
    key: String,
    payer: AccountId,
    merchant: AccountId,
    order: OrderId,
    channel: ChannelId,
    amount_minor: i64,
    /// A deliberate second payment of an order that is paid by another one.
    double_pay: bool,
}

#[derive(Default)]
struct Tally {
    committed: u64,
    aborted: BTreeMap<&'static str, u64>,
    /// Payments whose outcome the client never learned (resolved later).
    unknown: Vec<Payment>,
    committed_payments: Vec<Payment>,
    double_pay_committed: u64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let options =
        ClusterOptions { data_dir: args.data_dir.clone(), seed: Some(args.seed), ..ClusterOptions::default() };
    eprintln!("starting an embedded 3-node cluster (loopback TCP, sled, fsync on)...");
    let cluster = Cluster::start(options).await.context("starting the cluster")?;
    let client = cluster.client().await.context("connecting the client")?;
    let first_leader = cluster.leader().await;
    eprintln!("cluster up: nodes {:?}, coordinator leader = node {:?}", cluster.addrs(), first_leader);

    // Accounts: payers get money, merchants start empty; a few payers are
    // nearly broke so that some payments must abort for insufficient funds.
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let payers = (args.accounts * 4 / 5).max(1);
    let merchants = (args.accounts - payers).max(1);
    let mut accounts: Vec<(AccountId, i64)> = Vec::new();
    for id in 1..=payers {
        let initial = if id % 25 == 0 { 100 } else { rng.gen_range(200_000..2_000_000) };
        accounts.push((AccountId(id), initial));
    }
    for id in payers + 1..=payers + merchants {
        accounts.push((AccountId(id), 0));
    }
    let deposited: i64 = accounts.iter().map(|(_, initial)| initial).sum();
    let opened = open_accounts(&client, "demo-open", &accounts, CURRENCY, 50).await.context("opening accounts")?;
    if let Some(failed) = opened.iter().find(|r| !r.outcome.is_committed()) {
        bail!("opening accounts aborted: {:?}", failed.outcome);
    }
    eprintln!(
        "opened {} accounts ({} payers, {} merchants), {} {} deposited",
        accounts.len(),
        payers,
        merchants,
        deposited,
        CURRENCY
    );

    // Orders, 50 per transaction (each transaction spans several shards).
    let mut orders: Vec<(OrderId, AccountId, i64)> = Vec::new();
    for id in 1..=args.payments {
        let merchant = AccountId(payers + 1 + rng.gen_range(0..merchants));
        orders.push((OrderId(id), merchant, rng.gen_range(500..5_000)));
    }
    let mut creates = Vec::new();
    for (i, chunk) in orders.chunks(50).enumerate() {
        let ops = chunk
            .iter()
            .map(|(order, merchant, amount)| Operation::CreateOrder {
                order: *order,
                merchant: *merchant,
                amount: Money::new(*amount, CURRENCY),
            })
            .collect();
        let client = client.clone();
        let request = TxnRequest::new(format!("demo-orders-{i}"), ops);
        creates.push(async move { client.submit(request).await });
    }
    for receipt in futures::future::join_all(creates).await {
        let receipt = receipt.context("creating orders")?;
        if !receipt.outcome.is_committed() {
            bail!("creating orders aborted: {:?}", receipt.outcome);
        }
    }
    eprintln!("created {} orders", orders.len());

    // The payments, plus a deliberate double payment every 40th.
    let mut plan: Vec<Payment> = Vec::new();
    for (i, (order, merchant, amount)) in orders.iter().enumerate() {
        let payer = AccountId(1 + rng.gen_range(0..payers));
        let channel = CHANNELS[rng.gen_range(0..CHANNELS.len())];
        plan.push(Payment {
            key: format!("pay-{i}"),
            payer,
            merchant: *merchant,
            order: *order,
            channel,
            amount_minor: *amount,
            double_pay: false,
        });
        if i % 40 == 39 {
            let (order, merchant, amount) = orders[rng.gen_range(0..=i)];
            let payer = AccountId(1 + rng.gen_range(0..payers));
            plan.push(Payment {
                key: format!("repay-{i}"),
                payer,
                merchant,
                order,
                channel,
                amount_minor: amount,
                double_pay: true,
            });
        }
    }
    // Double payments go after their order's first payment was submitted.
    let total = plan.len() as u64;
    let queue = Arc::new(Mutex::new(plan.into_iter().rev().collect::<Vec<_>>()));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let histogram = Arc::new(Mutex::new(latency_histogram()));
    let done = Arc::new(AtomicU64::new(0));
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{spinner} payments [{bar:40}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );

    // Leader watcher: counts leader changes while the payments run.
    let stop_watch = Arc::new(AtomicBool::new(false));
    let leaders_seen = Arc::new(Mutex::new(Vec::<u64>::new()));
    let cluster = Arc::new(cluster);
    let watcher = {
        let cluster = cluster.clone();
        let stop = stop_watch.clone();
        let seen = leaders_seen.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(leader) = cluster.leader().await {
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    if seen.last() != Some(&leader) {
                        seen.push(leader);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let pay_started = Instant::now();
    let half = total / 2;
    // Half-way, the coordinator leader's whole node goes down (its
    // coordinator replica and its replica of every shard), payments go on,
    // and at three quarters it comes back.
    let failure = (!args.no_failover).then(|| {
        let (cluster, client, done) = (cluster.clone(), client.clone(), done.clone());
        let progress = progress.clone();
        tokio::spawn(async move { fail_a_node(&cluster, &client, &done, half, total * 3 / 4, &progress).await })
    });
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, queue, tally, histogram, done, progress) =
            (client.clone(), queue.clone(), tally.clone(), histogram.clone(), done.clone(), progress.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some(payment) = next else { break };
                let request = TxnRequest::new(
                    payment.key.clone(),
                    payment_ops(
                        payment.payer,
                        payment.merchant,
                        payment.order,
                        payment.channel,
                        Money::new(payment.amount_minor, CURRENCY),
                    ),
                );
                let sent = Instant::now();
                let result = client.submit(request).await;
                record_us(&mut histogram.lock().unwrap_or_else(|p| p.into_inner()), sent.elapsed().as_micros() as u64);
                {
                    let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
                    match result {
                        Ok(receipt) => match receipt.outcome {
                            Outcome::Committed => {
                                tally.committed += 1;
                                if payment.double_pay {
                                    tally.double_pay_committed += 1;
                                }
                                tally.committed_payments.push(payment);
                            }
                            Outcome::Aborted(reason) => *tally.aborted.entry(reason.code()).or_default() += 1,
                        },
                        Err(e) => {
                            tracing::warn!(key = %payment.key, error = %e, "payment outcome unknown; resolving later");
                            tally.unknown.push(payment);
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                progress.inc(1);
            }
        }));
    }
    for worker in workers {
        worker.await.context("a payment worker panicked")?;
    }
    let pay_elapsed = pay_started.elapsed();
    let failure = match failure {
        Some(task) => Some(task.await.context("the node-failure task panicked")?),
        None => None,
    };
    progress.finish_with_message("done");
    stop_watch.store(true, Ordering::Relaxed);
    let _ = watcher.await;

    eprintln!("waiting for the cluster to settle (every decision delivered)...");
    let settled = wait_until_quiet(&cluster, &client, Duration::from_secs(60)).await;

    // Resolve outcomes the clients did not learn, through the idempotency keys.
    let mut tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    for payment in std::mem::take(&mut tally.unknown) {
        let status = client.txn_status(paytx::protocol::IdempotencyKey::new(payment.key.clone())).await?;
        use paytx::protocol::messages::{KeyStatus, TxnState};
        let state = match status {
            KeyStatus::Known(view) => Some(view.state),
            // Evicted by retention: it may have committed. The demo runs far
            // shorter than the retention, so this is not expected;
            // counted apart so it can never pass for "nothing applied".
            KeyStatus::Unknown { .. } => {
                *tally.aborted.entry("status_unknown_evicted").or_default() += 1;
                continue;
            }
            KeyStatus::NotRegistered => None,
        };
        match state {
            Some(TxnState::Decided(Outcome::Committed)) => {
                tally.committed += 1;
                if payment.double_pay {
                    tally.double_pay_committed += 1;
                }
                tally.committed_payments.push(payment);
            }
            Some(TxnState::Decided(Outcome::Aborted(reason))) => *tally.aborted.entry(reason.code()).or_default() += 1,
            // Never registered (lost before Begin) or still undecided.
            _ => *tally.aborted.entry("never_registered").or_default() += 1,
        }
    }

    let mut checks = check_invariants(&client, &accounts, deposited, &orders, &tally, settled).await?;
    if let Some(failure) = &failure {
        checks.push((
            "every shard had a leader again after the node failure",
            failure.leaderless.is_empty(),
            if failure.leaderless.is_empty() {
                String::new()
            } else {
                format!("no leader for {:?}", failure.leaderless)
            },
        ));
    }
    let latency = summarize(&histogram.lock().unwrap_or_else(|p| p.into_inner()));
    let leaders = leaders_seen.lock().unwrap_or_else(|p| p.into_inner()).clone();

    println!();
    println!("paytx demo — 3 nodes, loopback TCP, sled with fsync");
    println!("  payments submitted   {total} ({} deliberate second payments of an order)", total - args.payments);
    println!("  committed            {}", tally.committed);
    let aborted: u64 = tally.aborted.values().sum();
    println!("  aborted              {aborted}");
    for (reason, count) in &tally.aborted {
        println!("    {reason:<24} {count}");
    }
    // A second payment commits only when the order's first payment aborted
    // (or ran later and then aborted): the invariant is "no order paid twice".
    println!("  second payments that committed because the first aborted: {}", tally.double_pay_committed);
    println!(
        "  throughput           {:.0} payments/s over {:.1} s",
        total as f64 / pay_elapsed.as_secs_f64(),
        pay_elapsed.as_secs_f64()
    );
    println!(
        "  latency              p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latency.p50_ms, latency.p99_ms, latency.max_ms
    );
    println!(
        "  coordinator leaders  {:?} ({} leader change{})",
        leaders,
        leaders.len().saturating_sub(1),
        if leaders.len() == 2 { "" } else { "s" }
    );
    if let Some(failure) = &failure {
        failure.print();
    }
    println!("  invariants");
    let mut all_ok = true;
    for (name, ok, detail) in &checks {
        all_ok &= *ok;
        println!(
            "    [{}] {name}{}",
            if *ok { "ok" } else { "FAILED" },
            if detail.is_empty() { String::new() } else { format!(": {detail}") }
        );
    }
    println!("  total time           {:.1} s", started.elapsed().as_secs_f64());
    match Arc::try_unwrap(cluster) {
        Ok(cluster) => cluster.shutdown().await,
        Err(_) => tracing::warn!("cluster still referenced; dropped instead of shut down"),
    }
    Ok(all_ok)
}

/// Waits until no transaction is undecided or unacknowledged and no shard
/// holds an in-doubt transaction.
async fn wait_until_quiet(cluster: &Cluster, client: &Client, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut quiet = true;
        for addr in cluster.addrs() {
            match client.node_status_of(addr).await {
                Ok(status) => {
                    let in_doubt: u64 = status.shards.iter().map(|s| s.in_doubt).sum();
                    if in_doubt > 0
                        || (status.coordinator_ready && (status.undecided_txns > 0 || status.unacked_txns > 0))
                    {
                        quiet = false;
                    }
                }
                Err(_) => quiet = false,
            }
        }
        if quiet {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

type Check = (&'static str, bool, String);

async fn check_invariants(
    client: &Client,
    accounts: &[(AccountId, i64)],
    deposited: i64,
    orders: &[(OrderId, AccountId, i64)],
    tally: &Tally,
    settled: bool,
) -> anyhow::Result<Vec<Check>> {
    // Expected balances from the acknowledged commits alone.
    let mut expected: BTreeMap<AccountId, i64> = accounts.iter().copied().collect();
    let mut paid: BTreeMap<OrderId, &Payment> = BTreeMap::new();
    let mut paid_twice = 0u64;
    for payment in &tally.committed_payments {
        *expected.entry(payment.payer).or_default() -= payment.amount_minor;
        *expected.entry(payment.merchant).or_default() += payment.amount_minor;
        paid_twice += u64::from(paid.insert(payment.order, payment).is_some());
    }
    let reads = accounts.iter().map(|(account, _)| {
        let client = client.clone();
        let account = *account;
        async move { (account, client.account(account).await) }
    });
    let mut total = 0i64;
    let (mut negative, mut held, mut mismatched, mut missing) = (0, 0, 0, 0);
    for (account, view) in futures::future::join_all(reads).await {
        let Some(view) = view? else {
            missing += 1;
            continue;
        };
        total = total.checked_add(view.balance_minor).context("balance sum overflow")?;
        negative += u64::from(view.balance_minor < 0);
        held += u64::from(view.held_minor != 0);
        mismatched += u64::from(expected.get(&account) != Some(&view.balance_minor));
    }
    let order_reads = orders.iter().map(|(order, _, _)| {
        let client = client.clone();
        let order = *order;
        async move {
            let view = client.order(order).await;
            let mut charges = Vec::new();
            for channel in CHANNELS {
                charges.push(client.charge(channel, order).await);
            }
            (order, view, charges)
        }
    });
    let (mut bad_orders, mut bad_charges) = (0u64, 0u64);
    for (order, view, charges) in futures::future::join_all(order_reads).await {
        let view = view?.context("an order vanished")?;
        let charges: Vec<_> = charges.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect();
        let should_be_paid = paid.contains_key(&order);
        let is_paid = view.status == OrderStatus::Paid;
        bad_orders += u64::from(should_be_paid != is_paid || (!is_paid && view.status != OrderStatus::Created));
        let charged_once = charges.len() == 1 && charges[0].charged.amount_minor == view.amount.amount_minor;
        bad_charges += u64::from(if is_paid { !charged_once } else { !charges.is_empty() });
        if let Some(payment) = paid.get(&order) {
            bad_charges += u64::from(charges.first().map(|c| c.channel) != Some(payment.channel));
        }
    }
    Ok(vec![
        ("money conserved", total == deposited, format!("deposited {deposited}, balances sum to {total}")),
        (
            "no negative balance",
            negative == 0,
            if negative > 0 { format!("{negative} accounts negative") } else { String::new() },
        ),
        (
            "every commit applied exactly, nothing half-applied",
            mismatched == 0 && missing == 0,
            if mismatched + missing > 0 {
                format!("{mismatched} balances differ from the acknowledged commits, {missing} accounts missing")
            } else {
                String::new()
            },
        ),
        (
            "every paid order charged exactly once",
            bad_orders == 0 && bad_charges == 0,
            if bad_orders + bad_charges > 0 {
                format!("{bad_orders} orders in a wrong state, {bad_charges} charge mismatches")
            } else {
                String::new()
            },
        ),
        (
            "no order paid twice",
            paid_twice == 0,
            if paid_twice > 0 { format!("{paid_twice} orders with two committed payments") } else { String::new() },
        ),
        (
            "nothing in doubt at the end",
            settled && held == 0,
            if !settled || held > 0 {
                format!("settled: {settled}, accounts with holds: {held}")
            } else {
                String::new()
            },
        ),
    ])
}

/// What the demo's node failure showed.
struct NodeFailure {
    victim: NodeId,
    stopped_at_payment: u64,
    restarted_at_payment: Option<u64>,
    /// Shards the victim led: the new leader and how long after the stop
    /// a live node first reported it.
    failovers: Vec<(ShardId, NodeId, Duration)>,
    /// Shards the victim led that had no live leader within the wait.
    leaderless: Vec<ShardId>,
}

impl NodeFailure {
    fn print(&self) {
        let restarted = match self.restarted_at_payment {
            Some(at) => format!("restarted at payment {at}"),
            None => "not restarted (it did not start)".to_string(),
        };
        println!(
            "  node failure         node {} stopped whole at payment {} (coordinator leader and a replica of every shard), {restarted}",
            self.victim, self.stopped_at_payment
        );
        for (shard, leader, after) in &self.failovers {
            println!(
                "    shard {:<14} led by node {leader} after {:.0} ms",
                shard.to_string(),
                after.as_secs_f64() * 1e3
            );
        }
        for shard in &self.leaderless {
            println!("    shard {:<14} NO LEADER within the wait", shard.to_string());
        }
    }
}

/// Once `start_at` payments are done, stops the coordinator leader's whole
/// node, measures how long each shard it led took to get a leader on a live
/// node, and restarts it once `restart_at` payments are done.
async fn fail_a_node(
    cluster: &Cluster,
    client: &Client,
    done: &AtomicU64,
    start_at: u64,
    restart_at: u64,
    progress: &ProgressBar,
) -> NodeFailure {
    while done.load(Ordering::Relaxed) < start_at {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let victim = cluster.leader().await.unwrap_or(1);
    let led: Vec<ShardId> = match cluster.addr(victim) {
        Some(addr) => match client.node_status_of(addr).await {
            Ok(status) => status.shards.iter().filter(|s| s.leader == Some(victim)).map(|s| s.shard).collect(),
            Err(_) => Vec::new(),
        },
        None => Vec::new(),
    };
    let stopped_at_payment = done.load(Ordering::Relaxed);
    progress.set_message(format!("node {victim} stopped"));
    let stopped = Instant::now();
    if let Err(e) = cluster.stop_node(victim).await {
        tracing::warn!(error = %e, "stopping the node failed");
    }
    // Poll the live nodes until every shard the victim led has a live leader.
    let live: Vec<SocketAddr> =
        cluster.node_ids().into_iter().filter(|n| *n != victim).filter_map(|n| cluster.addr(n)).collect();
    let mut failovers: Vec<(ShardId, NodeId, Duration)> = Vec::new();
    let deadline = stopped + Duration::from_secs(15);
    while failovers.len() < led.len() && Instant::now() < deadline {
        for addr in &live {
            let Ok(status) = client.node_status_of(*addr).await else { continue };
            for shard in &status.shards {
                let new_leader = shard.leader.filter(|leader| *leader != victim);
                if let Some(leader) = new_leader {
                    if led.contains(&shard.shard) && !failovers.iter().any(|(s, _, _)| *s == shard.shard) {
                        failovers.push((shard.shard, leader, stopped.elapsed()));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    failovers.sort_by_key(|(shard, _, _)| *shard);
    let leaderless = led.iter().copied().filter(|s| !failovers.iter().any(|(f, _, _)| f == s)).collect();
    while done.load(Ordering::Relaxed) < restart_at {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restarted_at_payment = match cluster.restart_node(victim).await {
        Ok(()) => {
            progress.set_message(format!("node {victim} restarted"));
            Some(done.load(Ordering::Relaxed))
        }
        Err(e) => {
            tracing::warn!(error = %e, "restarting the node failed");
            None
        }
    };
    NodeFailure { victim, stopped_at_payment, restarted_at_payment, failovers, leaderless }
}
