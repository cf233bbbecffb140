//! `paytx up` (an embedded 3-node cluster serving the native protocol and
//! the open-platform HTTP API until Ctrl-C) and `paytx audit verify`.

use anyhow::Context;
use paytx::{AdminOptions, Cluster, ClusterOptions, HttpOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the cluster keeps its data; a restart on the same directory
    /// continues where it left off. Key files are created here on first start.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The API of node 1; nodes 2 and 3 take the next ports.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// The administrator key (created with a random key if missing).
    #[arg(long)]
    pub admin_key_file: Option<PathBuf>,
    /// Notification retry schedule, comma-separated (default 15s,15s,30s,3m,10m,20m,30m,1h,3h,6h).
    #[arg(long, value_delimiter = ',')]
    pub notify_retry: Option<Vec<String>>,
    /// The admin listener of node 1 (metrics, health, admin API, console);
    /// nodes 2 and 3 take the next ports. Keep it on a private network.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// `text` (default) or `json`: one JSON object per line.
    #[arg(long, value_enum, default_value_t = crate::LogFormat::Text)]
    pub log_format: crate::LogFormat,
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let dir = std::fs::canonicalize(&args.data_dir)?;
    let mut gateway = paytx_gateway::GatewayConfig {
        admin_key_file: args.admin_key_file.clone().unwrap_or_else(|| dir.join("admin.key")),
        card_key_file: dir.join("card.key"),
        platform_key_file: dir.join("platform.pem"),
        ..Default::default()
    };
    if let Some(schedule) = args.notify_retry {
        gateway.notify_retry_schedule = schedule;
    }
    paytx_gateway::create_missing_keys(&gateway).context("creating the gateway's key files")?;
    let options = ClusterOptions {
        data_dir: Some(dir.clone()),
        http: Some(HttpOptions { base: args.http, gateway: gateway.clone() }),
        admin: args.admin.map(|base| AdminOptions { base, admin_key_file: None }),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options).await?;
    for id in cluster.node_ids() {
        let native = cluster.addr(id).map(|a| a.to_string()).unwrap_or_default();
        let http = cluster.http_addr(id).map(|a| format!("http://{a}")).unwrap_or_default();
        println!("node {id}: native {native}  api {http}");
        if let Some(admin) = cluster.admin_addr(id) {
            println!("        admin http://{admin}/metrics  http://{admin}/health/ready  http://{admin}/console");
        }
    }
    println!("admin key: {}   data: {}", gateway.admin_key_file.display(), dir.display());
    println!("running; Ctrl-C stops the cluster cleanly");
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    eprintln!("stopping...");
    cluster.shutdown().await;
    eprintln!("stopped");
    Ok(())
}

/// Checks the audit log of every node directory under `dir` (or of `dir`
/// itself when it is one node's directory). `Ok(false)` when one is broken.
pub fn audit_verify(dir: &Path) -> anyhow::Result<bool> {
    let mut node_dirs = Vec::new();
    if paytx_gateway::audit::audit_dir(dir).exists() {
        node_dirs.push(dir.to_path_buf());
    }
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| paytx_gateway::audit::audit_dir(path).exists())
        .collect();
    children.sort();
    node_dirs.extend(children);
    anyhow::ensure!(!node_dirs.is_empty(), "no audit log under {} (looked for */gateway-audit)", dir.display());
    let mut all_ok = true;
    for node_dir in node_dirs {
        match paytx_gateway::audit::verify(&paytx_gateway::audit::audit_dir(&node_dir)) {
            Ok(entries) => println!("{}: ok, {entries} entries", node_dir.display()),
            Err(error) => {
                all_ok = false;
                println!("{}: BROKEN: {error}", node_dir.display());
            }
        }
    }
    Ok(all_ok)
}
