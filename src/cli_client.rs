//! `paytx client ...`: one-shot requests against running nodes.

use anyhow::{bail, Context};
use paytx::protocol::{AccountId, ChannelId, Currency, IdempotencyKey, Money, Operation, OrderId, TxnRequest};
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
    /// Each node's view: Raft term and leader, transactions in the table, shards.
    Status,
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
            Some(view) => emit_json(&view)?,
            None => bail!("no transaction was submitted with key {key:?}"),
        },
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
