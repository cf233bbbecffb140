//! `paytx client ...`: one-shot requests against running nodes.

use anyhow::{bail, Context};
use paytx::protocol::messages::KeyStatus;
use paytx::protocol::{
    AccountId, ChannelId, Currency, IdempotencyKey, Money, Operation, OrderId, RecordExpect, RecordKey, RecordNs,
    TxnRequest,
};
use paytx::workload::payment_ops;
use paytx::Client;
use std::net::SocketAddr;

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Node addresses (comma-separated); the client fails over between them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103")]
    pub addrs: Vec<SocketAddr>,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientCommand {
    /// Open an account with an initial deposit.
    OpenAccount {
        #[arg(long)]
        account: u64,
        #[arg(long, default_value = "CNY")]
        currency: String,
        /// Initial balance in minor units (cents, fen).
        #[arg(long, default_value_t = 0)]
        initial_minor: i64,
        /// Idempotency key (default: derived from the account id).
        #[arg(long)]
        key: Option<String>,
    },
    /// Read an account's balance and holds.
    Balance {
        #[arg(long)]
        account: u64,
    },
    /// Create an order payable to a merchant account.
    CreateOrder {
        #[arg(long)]
        order: u64,
        #[arg(long)]
        merchant: u64,
        #[arg(long)]
        amount_minor: i64,
        #[arg(long, default_value = "CNY")]
        currency: String,
        #[arg(long)]
        key: Option<String>,
    },
    /// Read an order.
    Order {
        #[arg(long)]
        order: u64,
    },
    /// Pay an order from a payer account through a channel (1 bank card, 2 Alipay, 3 WeChat Pay).
    Pay {
        #[arg(long)]
        order: u64,
        #[arg(long)]
        payer: u64,
        #[arg(long, default_value_t = 1)]
        channel: u64,
        #[arg(long)]
        key: Option<String>,
    },
    /// What became of the transaction submitted with this idempotency key.
    TxnStatus {
        #[arg(long)]
        key: String,
    },
    /// Write a record of the record store (`--delete` removes it).
    PutRecord {
        /// Namespace (the application's kind of record).
        #[arg(long)]
        ns: RecordNs,
        /// The application key (hashed with the namespace into the record key).
        #[arg(long)]
        key: String,
        /// The value, as UTF-8 text.
        #[arg(long, conflicts_with = "delete", required_unless_present = "delete")]
        value: Option<String>,
        #[arg(long)]
        delete: bool,
        /// Precondition: `any`, `absent` (insert) or a version number (compare-and-set).
        #[arg(long, default_value = "any")]
        expect: String,
        /// Idempotency key (default: derived from the record and the value).
        #[arg(long)]
        txn_key: Option<String>,
    },
    /// Read a record.
    GetRecord {
        #[arg(long)]
        ns: RecordNs,
        #[arg(long)]
        key: String,
    },
    /// Every record of a namespace, across all records shards (at most --max).
    ScanRecords {
        #[arg(long)]
        ns: RecordNs,
        #[arg(long, default_value_t = 1_000)]
        max: usize,
    },
    /// Each node's view: Raft term and leader, transactions in the table, shards.
    Status,
}

fn record_expect(text: &str) -> anyhow::Result<RecordExpect> {
    match text {
        "any" => Ok(RecordExpect::Any),
        "absent" => Ok(RecordExpect::Absent),
        version => version
            .parse::<u64>()
            .map(RecordExpect::Version)
            .with_context(|| format!("--expect {version:?}: use any, absent or a version number")),
    }
}

fn currency(code: &str) -> anyhow::Result<Currency> {
    Currency::parse(code)
        .with_context(|| format!("unsupported currency {code:?} (try CNY, USD, EUR, GBP, JPY, HKD, SGD)"))
}

/// Prints one answer. A closed stdout (`| head`) ends the output quietly
/// instead of panicking like `println!`.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

fn emit_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    emit(&serde_json::to_string_pretty(value)?)
}

/// Prints the receipt. An aborted transaction is an answer, not a failure of
/// the command: the exit code is 0 and `outcome` says `Aborted`.
async fn submit(client: &Client, request: TxnRequest) -> anyhow::Result<()> {
    let receipt = client.submit(request).await?;
    emit_json(&receipt)
}

pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let client = match Client::connect(args.addrs.clone()).await {
        Ok(client) => client,
        Err(e) if matches!(args.command, ClientCommand::Status) => {
            for addr in &args.addrs {
                emit(&format!("{addr}: unreachable ({e})"))?;
            }
            return Ok(());
        }
        Err(e) => return Err(e).context("connecting to the cluster (is it running? see --addrs)"),
    };
    match args.command {
        ClientCommand::OpenAccount { account, currency: code, initial_minor, key } => {
            let op = Operation::OpenAccount { account: AccountId(account), currency: currency(&code)?, initial_minor };
            submit(&client, TxnRequest::new(key.unwrap_or_else(|| format!("open-{account}")), vec![op])).await?;
        }
        ClientCommand::Balance { account } => match client.account(AccountId(account)).await? {
            Some(view) => emit_json(&view)?,
            None => bail!("account {account} does not exist"),
        },
        ClientCommand::CreateOrder { order, merchant, amount_minor, currency: code, key } => {
            let op = Operation::CreateOrder {
                order: OrderId(order),
                merchant: AccountId(merchant),
                amount: Money::new(amount_minor, currency(&code)?),
            };
            submit(&client, TxnRequest::new(key.unwrap_or_else(|| format!("order-{order}")), vec![op])).await?;
        }
        ClientCommand::Order { order } => match client.order(OrderId(order)).await? {
            Some(view) => emit_json(&view)?,
            None => bail!("order {order} does not exist"),
        },
        ClientCommand::Pay { order, payer, channel, key } => {
            let Some(view) = client.order(OrderId(order)).await? else { bail!("order {order} does not exist") };
            let ops = payment_ops(AccountId(payer), view.merchant, view.order, ChannelId(channel), view.amount);
            submit(&client, TxnRequest::new(key.unwrap_or_else(|| format!("pay-{order}-{payer}")), ops)).await?;
        }
        ClientCommand::TxnStatus { key } => match client.txn_status(IdempotencyKey::new(key.clone())).await? {
            KeyStatus::Known(view) => emit_json(&view)?,
            KeyStatus::NotRegistered => bail!("no transaction was submitted with key {key:?}"),
            KeyStatus::Unknown { retention_secs } => bail!(
                "key {key:?} is not held, but keys are kept only {retention_secs} s after their transaction \
                 finished: its transaction may have committed long ago; a submit under it now runs as a new \
                 transaction"
            ),
        },
        ClientCommand::PutRecord { ns, key, value, delete, expect, txn_key } => {
            let value = if delete { None } else { value.map(String::into_bytes) };
            let record = RecordKey::new(ns, key.as_bytes());
            let op = Operation::PutRecord { key: record, value: value.clone(), expect: record_expect(&expect)? };
            // The default key names what is written, so re-running the same
            // command is a retry, not a second write.
            let default_key = || {
                let what = value.as_deref().map_or_else(|| "delete".to_string(), |v| format!("{:x}", fnv(v)));
                format!("record-{ns}-{}-{expect}-{what}", fnv(key.as_bytes()))
            };
            submit(&client, TxnRequest::new(txn_key.unwrap_or_else(default_key), vec![op])).await?;
        }
        ClientCommand::GetRecord { ns, key } => match client.get_record(RecordKey::new(ns, key.as_bytes())).await? {
            Some(view) => emit_json(&RecordJson::from(view))?,
            None => bail!("no record {key:?} in namespace {ns}"),
        },
        ClientCommand::ScanRecords { ns, max } => {
            for view in client.scan_namespace(ns, max).await? {
                emit(&serde_json::to_string(&RecordJson::from(view))?)?;
            }
        }
        ClientCommand::Status => {
            for addr in &args.addrs {
                match client.node_status_of(*addr).await {
                    Ok(status) => emit(&format!("{addr}: {}", serde_json::to_string(&status)?))?,
                    Err(e) => emit(&format!("{addr}: unreachable ({e})"))?,
                }
            }
        }
    }
    Ok(())
}

/// A record for people: the digest in hex, the value as text when it is UTF-8.
#[derive(serde::Serialize)]
struct RecordJson {
    ns: RecordNs,
    digest: String,
    version: u64,
    value: String,
    value_is_utf8: bool,
}

impl From<paytx::protocol::messages::RecordView> for RecordJson {
    fn from(view: paytx::protocol::messages::RecordView) -> Self {
        let digest = view.key.digest.iter().map(|b| format!("{b:02x}")).collect();
        let (value, value_is_utf8) = match String::from_utf8(view.value) {
            Ok(text) => (text, true),
            Err(e) => (e.into_bytes().iter().map(|b| format!("{b:02x}")).collect(), false),
        };
        RecordJson { ns: view.key.ns, digest, version: view.version, value, value_is_utf8 }
    }
}

/// A short, stable fingerprint for default idempotency keys (FNV-1a 64).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}
