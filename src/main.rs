//! The `paytx` command line.
#![forbid(unsafe_code)]

mod admin_cli;
mod bench;
mod bench_orders;
mod bench_scrape;
mod cli_client;
mod demo;
mod sim_cli;
mod up;

use anyhow::Context;
use clap::{Parser, Subcommand};
use paytx::config::NodeConfig;
use paytx::node::{Node, NodeOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc for the `paytx` process. A `perf
/// record` of `paytx bench` had 15% of all samples in glibc's allocator
/// (`_int_malloc`, `_int_free`, `malloc_consolidate`, `unlink_chunk`): the
/// commit path allocates and frees many small buffers across the node
/// threads (frames, entries, reply channels). The library sets no
/// allocator; a process embedding `paytx::Cluster` keeps its own choice.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "paytx", version, about = "A Raft-replicated two-phase-commit transaction cluster for payments")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an embedded 3-node cluster through 10,000 real payments, with the
    /// coordinator leader shut down half-way, and check the invariants.
    Demo(demo::DemoArgs),
    /// Run one node as this process (Ctrl-C stops it cleanly).
    Node {
        #[arg(long)]
        config: PathBuf,
        /// Delete the data directory first and rejoin the cluster from
        /// nothing: the way back for a node refused for lost synced writes
        /// (the durable-watermark check), or whose disk was replaced. The
        /// node rejoins every group under a new replica id and catches up
        /// from its peers; every peer must be reachable.
        #[arg(long)]
        rebuild: bool,
        /// `text` (default) or `json`: one JSON object per line.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Closed-loop payment benchmark over TCP.
    Bench(bench::BenchArgs),
    /// The first page of `GET /v1/orders` over loopback HTTP for one
    /// merchant with many orders (loaded in bulk through the real index path).
    BenchOrders(bench_orders::BenchOrdersArgs),
    /// Requests against running nodes: open accounts, read balances, create and pay orders.
    Client(cli_client::ClientArgs),
    /// Deterministic simulation: the real cluster under seeded faults.
    Sim(sim_cli::SimArgs),
    /// Fault injection against real `paytx node` processes: kills, pauses,
    /// partitions and slow links on a seeded schedule, then Jepsen-bank checks.
    Chaos(paytx::chaos::ChaosArgs),
    /// An embedded 3-node cluster serving the native protocol and the
    /// open-platform HTTP API until Ctrl-C.
    Up(up::UpArgs),
    /// Ask a node's admin listener: the cluster table, one transaction, the
    /// transactions in flight.
    Admin(admin_cli::AdminArgs),
    /// The gateway's hash-chained audit logs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write the configs of a local cluster: cluster.toml (the settings
    /// every node shares) and node-<id>.toml per node, which names it.
    /// Prints the node files' paths.
    GenConfigs {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Where to write cluster.toml and node-<id>.toml.
        #[arg(long)]
        dir: PathBuf,
        /// Data directories go under this (default: <dir>/data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 7101)]
        base_port: u16,
        /// Give node i an admin listener on 127.0.0.1:(this + i - 1)
        /// (`admin_listen`; metrics, health, admin API, console).
        #[arg(long)]
        admin_base_port: Option<u16>,
        /// Shards of each participant kind (default: `ShardMap::for_replicas`,
        /// with three nodes one of each kind).
        #[arg(long)]
        shards_per_kind: Option<std::num::NonZeroUsize>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every node's audit log under DIR; names the first modified,
    /// deleted or reordered entry. Exit code 1 when one is broken.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// Log filter for the demo and the benchmark.
const QUIET_LOGS: &str = "warn,openraft=off,paytx::net=error";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`,
    /// and the span fields such as `node`, `txn`, `shard` where set).
    Json,
}

fn init_tracing(default: &str) {
    init_tracing_as(default, LogFormat::Text);
}

/// `RUST_LOG` overrides `default` in either format.
fn init_tracing_as(default: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    match format {
        LogFormat::Text => {
            // Colours only on a terminal: node logs usually go to files.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
        }
        LogFormat::Json => {
            tracing_subscriber::fmt()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
        }
    }
}

/// Runs `future` on an actix system (one thread): what a node needs.
fn on_actix<F: std::future::Future<Output = anyhow::Result<T>>, T>(future: F) -> anyhow::Result<T> {
    actix_rt::System::new().block_on(future)
}

/// Runs `future` on a multi-threaded tokio runtime (clients, embedded clusters).
fn on_tokio<F: std::future::Future<Output = anyhow::Result<T>>, T>(future: F) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(future)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => {
            // Quiet by default: the demo shuts a leader down on purpose, and
            // openraft reports every failed RPC to it. RUST_LOG overrides.
            init_tracing(QUIET_LOGS);
            on_tokio(demo::run(args)).map(|ok| if ok { 0 } else { 1 })
        }
        Command::Node { config, log_format, rebuild } => {
            init_tracing_as("info,openraft=warn,sled=warn", log_format);
            run_node(config, rebuild).map(|_| 0)
        }
        Command::Bench(args) => {
            init_tracing(QUIET_LOGS);
            on_tokio(bench::run(args)).map(|_| 0)
        }
        Command::BenchOrders(args) => {
            init_tracing(QUIET_LOGS);
            on_tokio(bench_orders::run(args)).map(|_| 0)
        }
        Command::Client(args) => {
            init_tracing("warn");
            on_tokio(cli_client::run(args)).map(|_| 0)
        }
        Command::Sim(args) => {
            // The simulated nodes log nothing by default: a run is thousands
            // of injected crashes, fsync failures and retries, each of which
            // a node rightly reports as an error. The simulator reports what
            // matters itself. RUST_LOG overrides (e.g. RUST_LOG=paytx=debug).
            init_tracing("off");
            sim_cli::run_sim(args).map(|ok| if ok { 0 } else { 1 })
        }
        Command::Chaos(args) => {
            init_tracing(QUIET_LOGS);
            on_tokio(run_chaos(args)).map(|ok| if ok { 0 } else { 1 })
        }
        Command::Up(args) => {
            init_tracing_as("warn,openraft=off,paytx::net=error,paytx_gateway=info", args.log_format);
            on_tokio(up::up(args)).map(|_| 0)
        }
        Command::Admin(args) => {
            init_tracing("warn");
            on_tokio(admin_cli::run(args)).map(|_| 0)
        }
        Command::Audit { command: AuditCommand::Verify { data_dir } } => {
            init_tracing("warn");
            up::audit_verify(&data_dir).map(|ok| if ok { 0 } else { 1 })
        }
        Command::GenConfigs { nodes, dir, data_dir, base_port, admin_base_port, shards_per_kind } => {
            init_tracing("warn");
            gen_configs(nodes, &dir, data_dir, base_port, admin_base_port, shards_per_kind).map(|_| 0)
        }
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// A chaos run that Ctrl-C stops: dropping the run kills every node it started.
async fn run_chaos(args: paytx::chaos::ChaosArgs) -> anyhow::Result<bool> {
    tokio::select! {
        result = paytx::chaos::run(args) => result,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; every node process was killed"),
    }
}

fn run_node(config_path: PathBuf, rebuild: bool) -> anyhow::Result<()> {
    let config = NodeConfig::load(&config_path)?;
    if rebuild {
        paytx::node::wipe_data_dir(&config.data_dir).map_err(|e| anyhow::anyhow!(e))?;
        eprintln!(
            "paytx node {}: deleted {}; rejoining the cluster under a new replica id",
            config.node_id,
            config.data_dir.display()
        );
    }
    on_actix(async move {
        let node = Node::start(config, NodeOptions::default()).await?;
        eprintln!("paytx node {} listening on {}", node.id(), node.addr());
        if let Some(admin) = node.admin_addr() {
            eprintln!("admin listener: http://{admin}/metrics  http://{admin}/health/ready  http://{admin}/console");
        }
        let fail_stop = node.fail_stop();
        tokio::select! {
            signal = tokio::signal::ctrl_c() => signal.context("waiting for Ctrl-C")?,
            reason = fail_stop.tripped() => {
                // Fail-stop: never acknowledge what may not be durable.
                node.shutdown().await;
                anyhow::bail!("node stopped on a disk failure (fail-stop): {reason}");
            }
        }
        eprintln!("stopping...");
        node.shutdown().await;
        Ok(())
    })
}

fn gen_configs(
    nodes: u64,
    dir: &std::path::Path,
    data_dir: Option<PathBuf>,
    base_port: u16,
    admin_base_port: Option<u16>,
    shards_per_kind: Option<std::num::NonZeroUsize>,
) -> anyhow::Result<()> {
    anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be between 1 and 9");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let data_dir = data_dir.unwrap_or_else(|| dir.join("data"));
    anyhow::ensure!(
        base_port.checked_add(nodes as u16).is_some(),
        "--base-port {base_port} leaves no room for {nodes} ports"
    );
    if let Some(admin) = admin_base_port {
        anyhow::ensure!(
            admin.checked_add(nodes as u16).is_some(),
            "--admin-base-port {admin} leaves no room for {nodes} ports"
        );
    }
    let addrs: BTreeMap<u64, SocketAddr> =
        (1..=nodes).map(|id| (id, SocketAddr::from(([127, 0, 0, 1], base_port + id as u16 - 1)))).collect();
    // One random secret shared by the cluster's nodes: only they may speak
    // the node-to-node protocol.
    let secret = NodeConfig::random_secret();
    // The settings every node must share go into one cluster file, which
    // each node file names (relative to its own directory).
    let cluster_path = dir.join(CLUSTER_FILE);
    let mut cluster_text: Option<String> = None;
    for id in 1..=nodes {
        let mut config = NodeConfig::local(id, &addrs, data_dir.join(format!("node-{id}")), &secret);
        if let Some(per_kind) = shards_per_kind {
            let ids: Vec<u64> = addrs.keys().copied().collect();
            config.shards =
                paytx::protocol::ops::ShardMap::shards_per_kind(&ids, per_kind).with_replicas(config.shards.replicas);
        }
        config.admin_listen = admin_base_port.map(|port| SocketAddr::from(([127, 0, 0, 1], port + id as u16 - 1)));
        let (node_text, cluster) = config.to_split_toml(CLUSTER_FILE)?;
        match &cluster_text {
            None => {
                std::fs::write(&cluster_path, &cluster)
                    .with_context(|| format!("writing {}", cluster_path.display()))?;
                cluster_text = Some(cluster);
            }
            Some(written) => anyhow::ensure!(*written == cluster, "node {id}'s cluster-wide settings differ"),
        }
        let path = dir.join(format!("node-{id}.toml"));
        std::fs::write(&path, node_text).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// The cluster file `paytx gen-configs` writes next to the node files.
const CLUSTER_FILE: &str = "cluster.toml";
