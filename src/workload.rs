//! Transactions the demo, the benchmark and the CLI build: opening
//! accounts, creating orders, paying them.

use crate::client::{Client, ClientError};
use paytx_protocol::{AccountId, ChannelId, Currency, Money, Operation, OrderId, TxnReceipt, TxnRequest};

pub use paytx_protocol::ops::payment_ops;

/// A payment that also creates its order (the benchmark's unit of work).
pub fn create_and_pay_ops(
    payer: AccountId,
    merchant: AccountId,
    order: OrderId,
    channel: ChannelId,
    amount: Money,
) -> Vec<Operation> {
    let mut ops = vec![Operation::CreateOrder { order, merchant, amount }];
    ops.extend(payment_ops(payer, merchant, order, channel, amount));
    ops
}

/// Opens `accounts` (id, initial balance) in transactions of at most
/// `batch` accounts each.
pub async fn open_accounts(
    client: &Client,
    key_prefix: &str,
    accounts: &[(AccountId, i64)],
    currency: Currency,
    batch: usize,
) -> Result<Vec<TxnReceipt>, ClientError> {
    let mut submits = Vec::new();
    for (i, chunk) in accounts.chunks(batch.max(1)).enumerate() {
        let ops = chunk
            .iter()
            .map(|(account, initial_minor)| Operation::OpenAccount {
                account: *account,
                currency,
                initial_minor: *initial_minor,
            })
            .collect();
        let client = client.clone();
        let request = TxnRequest::new(format!("{key_prefix}-{i}"), ops);
        submits.push(async move { client.submit(request).await });
    }
    futures::future::join_all(submits).await.into_iter().collect()
}
