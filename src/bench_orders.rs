//! `paytx bench-orders`: the first page of `GET /v1/orders` for one
//! merchant holding many orders, over loopback HTTP against an embedded
//! 3-node cluster serving the open-platform API. With `--merchants M` the
//! orders are spread over M merchants (round-robin) and the first one's
//! pages are timed: the cost of a page against the number of merchants.
//!
//! Loading: the orders are created in bulk — many orders per transaction,
//! submitted over the native protocol — but each one with exactly the ops
//! the API's `POST /v1/orders` writes (`paytx_gateway::api::order_creation_ops`:
//! the `out_trade_no` claim, the order record, its two index entries and
//! `CreateOrder`), so the index the query reads was built by the real path,
//! through 2PC, journals and fsyncs. Measuring: signed requests one after
//! another (closed loop, concurrency 1), each timed at the client.

use anyhow::Context;
use paytx::protocol::{RecordKey, TxnRequest};
use paytx::report::{latency_histogram, record_us, summarize, LatencySummary};
use paytx::{Client, Cluster, ClusterOptions, HttpOptions};
use paytx_gateway::model::{CreateOrderRequest, MerchantRecord};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOrdersArgs {
    /// Orders in all (of the one merchant, or spread over `--merchants`).
    #[arg(long, default_value_t = 1_000_000)]
    pub orders: u64,
    /// Merchants the orders are spread over, round-robin; the first one's
    /// pages are timed. Bounded: each is onboarded over the API.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub merchants: u64,
    /// Orders per loading transaction (5 operations, ~600 bytes each).
    /// Larger batches stalled the embedded cluster at ~860,000 orders (100 per
    /// transaction: Raft entries of ~60 KB; see the README's Performance).
    #[arg(long, default_value_t = 25)]
    pub orders_per_txn: u64,
    /// Loading transactions in flight.
    #[arg(long, default_value_t = 8)]
    pub load_concurrency: usize,
    /// Measured requests per query.
    #[arg(long, default_value_t = 2_000)]
    pub requests: u64,
    /// Requests per query before measuring.
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    /// Raft snapshot threshold of every group (`[raft]
    /// snapshot_every_entries`, default 20,000): lower it to make the
    /// records group snapshot its multi-million-record state during the
    /// load (the suspect of the load stall, see the README's Performance).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every_entries: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct QueryResult {
    query: String,
    latency: LatencySummary,
}

#[derive(Debug, Serialize)]
struct BenchOrdersReport {
    orders: u64,
    merchants: u64,
    /// Orders of the merchant whose pages were timed.
    orders_of_timed_merchant: u64,
    load_secs: f64,
    loaded_orders_per_sec: f64,
    queries: Vec<QueryResult>,
}

pub async fn run(args: BenchOrdersArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.orders > 0 && args.orders_per_txn > 0, "--orders and --orders-per-txn must be positive");
    let dir = tempfile::tempdir().context("a temporary directory for the keys")?;
    let gateway = paytx_gateway::GatewayConfig {
        admin_key_file: dir.path().join("admin.key"),
        card_key_file: dir.path().join("card.key"),
        platform_key_file: dir.path().join("platform.pem"),
        // One client sends every request: no rate limit is measured here.
        merchant_rate_limit: paytx_gateway::ratelimit::RateLimit { per_sec: 0, burst: 0 },
        ..Default::default()
    };
    paytx_gateway::create_missing_keys(&gateway).context("creating the gateway's keys")?;
    let mut options = ClusterOptions {
        http: Some(HttpOptions { base: "127.0.0.1:0".parse()?, gateway }),
        seed: Some(1),
        ..ClusterOptions::default()
    };
    // One merchant's two index partitions hold an entry per order each, on
    // one records shard (or two): room for them and the orders' records.
    options.limits.max_records_per_shard = (args.orders as usize).saturating_mul(6).max(1_000_000);
    options.limits.max_ops_per_txn = (args.orders_per_txn as usize).saturating_mul(5);
    if let Some(entries) = args.snapshot_every_entries {
        options.raft.snapshot_every_entries = entries;
    }
    let cluster = Cluster::start(options).await.context("starting the embedded cluster")?;
    let result = bench(&args, &cluster, dir.path()).await;
    if let Ok(report) = &result {
        print_report(&args, report)?;
    }
    // Printed first: the numbers are in even if stopping the nodes is slow.
    if tokio::time::timeout(Duration::from_secs(30), cluster.shutdown()).await.is_err() {
        eprintln!("the embedded cluster did not stop within 30 s");
    }
    result.map(|_| ())
}

fn print_report(args: &BenchOrdersArgs, report: &BenchOrdersReport) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "loaded {} orders of {} merchant(s) in {:.0} s ({:.0} orders/s); the timed merchant has {}",
            report.orders,
            report.merchants,
            report.load_secs,
            report.loaded_orders_per_sec,
            report.orders_of_timed_merchant
        );
        println!("| query | requests | p50 | p99 | p99.9 | max |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        for q in &report.queries {
            println!(
                "| `{}` | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
                q.query, q.latency.count, q.latency.p50_ms, q.latency.p99_ms, q.latency.p999_ms, q.latency.max_ms
            );
        }
    }
    Ok(())
}

async fn bench(args: &BenchOrdersArgs, cluster: &Cluster, dir: &std::path::Path) -> anyhow::Result<BenchOrdersReport> {
    let api = format!("http://{}", cluster.http_addr(1).context("node 1 serves the API")?);
    let admin = std::fs::read_to_string(dir.join("admin.key"))?.trim().to_string();
    // A stuck request is an error, not a hung benchmark.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    // One key for every merchant: onboarding does not ask for distinct keys,
    // and 2048-bit key generation would dominate a run of many merchants.
    let key = paytx_gateway::signing::generate_key()?;
    let public_key_pem = paytx_gateway::signing::public_key_pem_of(&key)?;
    let client = Client::connect(cluster.addrs()).await.context("connecting")?;
    let mut merchants: Vec<(String, MerchantRecord)> = Vec::new();
    for n in 0..args.merchants {
        let onboard = serde_json::json!({
            "name": format!("Bench Shop {n}"),
            "notify_url": "http://127.0.0.1:9/notify",
            "public_key_pem": public_key_pem,
        });
        let answer = http.post(format!("{api}/v1/merchants")).bearer_auth(&admin).json(&onboard).send().await?;
        anyhow::ensure!(answer.status().as_u16() == 201, "onboarding merchant {n} answered {}", answer.status());
        let merchant: serde_json::Value = answer.json().await?;
        let merchant_id = merchant["id"].as_str().context("a merchant id")?.to_string();
        let stored = client
            .get_record(RecordKey::new(paytx_gateway::store::ns::MERCHANT, merchant_id.as_bytes()))
            .await?
            .context("the merchant record")?;
        merchants.push((merchant_id, serde_json::from_slice(&stored.value)?));
    }
    let merchant_id = merchants[0].0.clone();
    let merchants = std::sync::Arc::new(merchants.into_iter().map(|(_, record)| record).collect::<Vec<_>>());
    // Orders 0, M, 2M, … are the timed merchant's.
    let orders_of_timed = args.orders.div_ceil(args.merchants);

    // Load: one order a second up to now, oldest first.
    let started = Instant::now();
    let now_secs = paytx_gateway::model::now_secs();
    let first_secs = now_secs.saturating_sub(args.orders);
    let batches: Vec<(u64, u64)> = (0..args.orders)
        .step_by(args.orders_per_txn as usize)
        .map(|start| (start, (start + args.orders_per_txn).min(args.orders)))
        .collect();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut loaders = Vec::new();
    for _ in 0..args.load_concurrency.max(1) {
        let (client, merchants, batches, next) = (client.clone(), merchants.clone(), batches.clone(), next.clone());
        loaders.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((start, end)) = batches.get(index).copied() else { return Ok::<(), anyhow::Error>(()) };
                let mut ops = Vec::new();
                for n in start..end {
                    let merchant = &merchants[(n % merchants.len() as u64) as usize];
                    let body = CreateOrderRequest {
                        out_trade_no: format!("B-{n}"),
                        amount_minor: serde_json::Number::from(100 + n % 900),
                        currency: merchant.currency.clone(),
                        description: "bench".into(),
                    };
                    let hash = paytx_gateway::api::order_request_hash(&body).map_err(|e| anyhow::anyhow!("{e}"))?;
                    let (id, number) = paytx_gateway::model::new_id("ord");
                    let (_, order_ops) =
                        paytx_gateway::api::order_creation_ops(merchant, &id, number, &body, &hash, first_secs + n)
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                    ops.extend(order_ops);
                }
                let request = TxnRequest::new(format!("bench-orders-{start}"), ops);
                let receipt = submit_until_decided(&client, request).await?;
                anyhow::ensure!(receipt.outcome.is_committed(), "loading orders {start}..{end}: {:?}", receipt.outcome);
                if index % 1_000 == 999 {
                    eprintln!("loaded {} orders ({:.0} s)", end, started.elapsed().as_secs_f64());
                }
            }
        }));
    }
    for loader in loaders {
        loader.await.context("a loader panicked")??;
    }
    let load_secs = started.elapsed().as_secs_f64();

    let mut queries = Vec::new();
    for query in ["/v1/orders", "/v1/orders?status=CREATED"] {
        let mut histogram = latency_histogram();
        for n in 0..args.warmup + args.requests {
            let headers = paytx_gateway::signing::signed_headers(&key, &merchant_id, "GET", query, b"");
            let mut request = http.get(format!("{api}{query}"));
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let sent = Instant::now();
            let answer = request.send().await?;
            let status = answer.status();
            let page: serde_json::Value = answer.json().await?;
            let elapsed = sent.elapsed();
            anyhow::ensure!(status.as_u16() == 200, "{query} answered {status}: {page}");
            let listed = page["data"].as_array().map_or(0, Vec::len);
            anyhow::ensure!(listed as u64 == 20.min(orders_of_timed), "{query} listed {listed} orders");
            if n >= args.warmup {
                record_us(&mut histogram, elapsed.as_micros() as u64);
            }
        }
        queries.push(QueryResult { query: query.to_string(), latency: summarize(&histogram) });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(BenchOrdersReport {
        orders: args.orders,
        merchants: args.merchants,
        orders_of_timed_merchant: orders_of_timed,
        load_secs,
        loaded_orders_per_sec: args.orders as f64 / load_secs.max(1e-9),
        queries,
    })
}

/// Submits `request` until the cluster says what became of it: a timeout
/// (a large batch stuck behind a slow flush) is retried with the same
/// idempotency key, which runs it at most once. Bounded.
async fn submit_until_decided(client: &Client, request: TxnRequest) -> anyhow::Result<paytx::protocol::TxnReceipt> {
    let mut last = None;
    for _ in 0..30 {
        match client.submit(request.clone()).await {
            Ok(receipt) => return Ok(receipt),
            Err(paytx::ClientError::Request(error)) if !error.is_retryable() => return Err(error.into()),
            Err(error) => {
                eprintln!("retrying {}: {error}", request.key);
                last = Some(error);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no attempt"), Into::into))
}
