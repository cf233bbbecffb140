//! `paytx admin status | txn ID|KEY | in-doubt`: the admin API of any node's
//! admin listener, as tables (or `--json`, the API's documents as they are).

use anyhow::Context;
use paytx::admin::views::{ClusterStatus, TxnDetail, TxnList};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// A node's admin listener.
    #[arg(long, default_value = "http://127.0.0.1:9090", global = true)]
    pub addr: String,
    /// File holding the admin key; else the `PAYTX_ADMIN_KEY` variable.
    #[arg(long, global = true)]
    pub admin_key_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Every node: role, term, leader, applied index, lag, transactions.
    Status,
    /// One transaction by id (`txn-<term>.<node>.<seq>`) or idempotency key:
    /// its operations per shard, votes, decision, acknowledgements.
    Txn { id_or_key: String },
    /// Transactions in flight or awaiting acknowledgements, oldest first, and
    /// the in-doubt count of each of the node's shards.
    InDoubt {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Bound on one admin request.
const ADMIN_REQUEST_TIMEOUT_MS: u64 = 10_000;

fn admin_key(args: &AdminArgs) -> anyhow::Result<String> {
    match &args.admin_key_file {
        Some(path) => Ok(std::fs::read_to_string(path)
            .with_context(|| format!("reading the admin key {}", path.display()))?
            .trim()
            .to_string()),
        None => std::env::var("PAYTX_ADMIN_KEY")
            .map(|k| k.trim().to_string())
            .context("give the admin key with --admin-key-file FILE or PAYTX_ADMIN_KEY"),
    }
}

/// Percent-encodes a path segment (keys may hold any printable character).
fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let key = admin_key(&args)?;
    let base = args.addr.trim_end_matches('/').to_string();
    let path = match &args.command {
        AdminCommand::Status => "/admin/v1/status".to_string(),
        AdminCommand::Txn { id_or_key } => format!("/admin/v1/txns/{}", encode_segment(id_or_key)),
        AdminCommand::InDoubt { limit } => format!("/admin/v1/txns?limit={limit}"),
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(ADMIN_REQUEST_TIMEOUT_MS))
        .build()
        .context("building the HTTP client")?;
    let response =
        client.get(format!("{base}{path}")).bearer_auth(&key).send().await.with_context(|| format!("asking {base}"))?;
    let status = response.status();
    let body = response.text().await.context("reading the answer")?;
    anyhow::ensure!(status.is_success(), "{base}{path} answered {status}: {body}");
    if args.json {
        println!("{body}");
        return Ok(());
    }
    match args.command {
        AdminCommand::Status => print_status(&serde_json::from_str(&body).context("decoding the status")?),
        AdminCommand::Txn { .. } => print_txn(&serde_json::from_str(&body).context("decoding the transaction")?),
        AdminCommand::InDoubt { .. } => print_list(&serde_json::from_str(&body).context("decoding the list")?),
    }
    Ok(())
}

fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn print_status(status: &ClusterStatus) {
    println!("answered by node {}; coordinator leader: {}", status.answered_by, or_dash(status.leader));
    println!(
        "{:<5} {:<22} {:<18} {:>6} {:>7} {:>9} {:>5} {:>9} {:>7} {:>8} {:>10}  audit chain",
        "node", "addr", "role", "term", "leader", "applied", "lag", "undecided", "unacked", "in-doubt", "disk free"
    );
    for node in &status.nodes {
        let s = node.status.as_ref();
        let audit = match s.map(|s| &s.local.audit_chain) {
            None => "-".to_string(),
            Some(chain) => paytx::admin::console::audit_chain_cell(chain.as_ref()).1,
        };
        println!(
            "{:<5} {:<22} {:<18} {:>6} {:>7} {:>9} {:>5} {:>9} {:>7} {:>8} {:>10}  {}",
            node.node,
            node.addr,
            node.role,
            or_dash(s.and_then(|s| s.raft_term)),
            or_dash(s.and_then(|s| s.leader)),
            or_dash(s.and_then(|s| s.last_applied_index)),
            or_dash(node.lag_entries),
            or_dash(s.map(|s| s.undecided_txns)),
            or_dash(s.map(|s| s.unacked_txns)),
            or_dash(s.map(|s| s.shards.iter().map(|x| x.in_doubt).sum::<u64>())),
            or_dash(s.and_then(|s| s.local.disk_free_bytes).map(paytx::admin::console::bytes_text)),
            audit,
        );
        if let Some(error) = &node.error {
            println!("      {error}");
        }
    }
}

fn print_txn(detail: &TxnDetail) {
    println!("{}  key {}  state {}  (answered by node {})", detail.txn, detail.key, detail.state, detail.answered_by);
    match &detail.decision {
        Some(outcome) => println!("decision: {outcome:?}"),
        None => println!("decision: none yet"),
    }
    if let Some(reason) = &detail.refused {
        println!("refused: {reason}");
    }
    if let Some(age_ms) = detail.age_ms {
        println!("seen for: {:.1} s", age_ms as f64 / 1e3);
    }
    if let Some(ms) = detail.decided_after_ms {
        println!("decided {ms} ms after its Begin");
    }
    for shard in &detail.shards {
        let acked = match (shard.acked, shard.acked_after_ms) {
            (Some(true), Some(ms)) => format!("acked +{ms} ms"),
            (Some(true), None) => "acked".into(),
            (Some(false), _) => "not acked".into(),
            (None, _) => "-".into(),
        };
        println!("  {:<12} vote {:<8} {:<10} {:?}", shard.shard, shard.vote, acked, shard.ops);
    }
}

fn print_list(list: &TxnList) {
    println!("{} live transactions in node {}'s table (oldest first)", list.total, list.answered_by);
    println!("{:<32} {:<28} {:<11} {:>8} {:>4}", "txn", "key", "state", "age", "ops");
    for t in &list.txns {
        println!("{:<32} {:<28} {:<11} {:>7.1}s {:>4}", t.txn, t.key, t.state, t.age_ms as f64 / 1e3, t.ops);
    }
    let shards: Vec<String> = list.in_doubt_by_shard.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!("in doubt on the node's shards: {}", shards.join(", "));
}
