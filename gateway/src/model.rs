//! What the gateway stores (records, JSON in the cluster) and what it
//! answers (views). Stored records never hold a card number in clear or a
//! password; views never hold a card number, a sealed card or a hash.

use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most refunds one order may have (its record lists them).
pub const MAX_REFUNDS_PER_ORDER: usize = 50;

/// A new public id `<prefix>_<n>`, `n` random in `[2^40, 2^53)` (exact in
/// JSON numbers too, and far from the small ids demos and benchmarks use).
pub fn new_id(prefix: &str) -> (String, u64) {
    let n = rand::rngs::OsRng.gen_range((1u64 << 40)..(1u64 << 53));
    (format!("{prefix}_{n}"), n)
}

/// The number inside a public id with this prefix.
pub fn parse_id(prefix: &str, id: &str) -> Option<u64> {
    id.strip_prefix(prefix)?.strip_prefix('_')?.parse().ok()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn now_secs() -> u64 {
    now_ms() / 1_000
}

// ---------- stored records ----------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub real_name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// AES-256-GCM sealed card number (see `secrets::CardVault`).
    pub card_sealed: String,
    pub card_last4: String,
    pub card_fingerprint: String,
    pub account: u64,
    pub currency: String,
    pub created_at: u64,
    /// Bumped by a password change: sessions of an older epoch are revoked.
    #[serde(default)]
    pub session_epoch: u64,
}

/// One login: a token names its session, and is valid only while the
/// session record exists and its epoch is the user's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session_id: String,
    pub user_id: String,
    pub epoch: u64,
    pub expires_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claim {
    /// The resource the claim points at (a user, order or refund id).
    pub id: String,
    /// SHA-256 of the request that made it: "the same request" on a replay.
    #[serde(default)]
    pub request_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MerchantRecord {
    pub id: String,
    pub name: String,
    pub notify_url: String,
    pub public_key_pem: String,
    pub account: u64,
    pub currency: String,
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Owner {
    User(String),
    Merchant(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentInfo {
    pub method: String,
    pub channel: Option<u64>,
    pub user_id: String,
    pub paid_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderRecord {
    pub id: String,
    pub merchant_id: String,
    pub out_trade_no: String,
    pub amount_minor: i64,
    pub currency: String,
    pub description: String,
    pub created_at: u64,
    pub payment: Option<PaymentInfo>,
    pub refunds: Vec<String>,
    pub notify_ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefundRecord {
    pub id: String,
    pub order_id: String,
    pub merchant_id: String,
    pub out_refund_no: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub method: String,
    pub channel: Option<u64>,
    pub notify_id: String,
    pub created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NonceRecord {
    pub merchant_id: String,
    pub nonce: String,
    pub timestamp: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub at_ms: u64,
    /// The merchant's HTTP status, when it answered.
    pub http_status: Option<u16>,
    pub ok: bool,
    /// Why the attempt failed (a status, a body other than `success`, a timeout).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub notify_id: String,
    pub merchant_id: String,
    pub order_id: String,
    pub refund_id: Option<String>,
    pub event: String,
    pub url: String,
    /// The exact JSON body POSTed (signed as is).
    pub payload: String,
    /// `PENDING`, `DELIVERED` or `FAILED` (schedule exhausted).
    pub status: String,
    pub attempts: Vec<Attempt>,
    pub created_at_ms: u64,
    pub next_attempt_at_ms: u64,
}

/// The pending index: one small record per undelivered notification, so
/// the worker scans only what is due, not every notification ever sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingRecord {
    pub notify_id: String,
    pub next_attempt_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopupRecord {
    pub id: String,
    pub user_id: String,
    pub method: String,
    pub channel: u64,
    pub amount_minor: i64,
    pub currency: String,
    pub created_at: u64,
}

/// One line of a merchant's reconciliation statement: a payment or a
/// refund, written by its own transaction into the merchant's index by
/// commit time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementLine {
    /// When it committed (Unix ms). Stored as 0 and read from the entry's
    /// key (its commit time) — lines of earlier versions hold the time they
    /// were built, which is also their key's.
    #[serde(default)]
    pub at_ms: u64,
    pub order_id: String,
    pub out_trade_no: String,
    /// `payment` or `refund`.
    pub kind: String,
    pub method: String,
    pub amount_minor: i64,
    pub currency: String,
    pub refund_id: Option<String>,
    pub out_refund_no: Option<String>,
}

/// One entry of a user's wallet history, written by the transaction that
/// moves the wallet's money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WalletEntry {
    pub at_ms: u64,
    /// `open`, `topup`, `payment` or `refund`.
    pub kind: String,
    /// Positive into the wallet, negative out of it.
    pub delta_minor: i64,
    pub currency: String,
    /// The top-up, order or refund id (the user id for `open`).
    pub reference: String,
}

// ---------- requests ----------

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterUserRequest {
    /// 3-32 characters of `[a-z0-9_]`.
    pub username: String,
    /// At least 8 characters with a letter and a digit.
    pub password: String,
    pub real_name: String,
    /// 12-19 digits passing the Luhn check; stored encrypted.
    pub card_number: String,
    /// The wallet's currency (default CNY).
    pub currency: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateSessionRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    /// At least 8 characters with a letter and a digit.
    pub new_password: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PasswordChanged {
    pub user_id: String,
    /// Always `true`: every session of the user, this one included, ended.
    pub sessions_revoked: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateMerchantRequest {
    pub name: String,
    pub notify_url: String,
    /// RSA public key, PEM (`BEGIN PUBLIC KEY`), 2048-4096 bits.
    pub public_key_pem: String,
    /// Settlement currency (default CNY); the merchant's orders use it.
    pub currency: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateOrderRequest {
    /// Unique per merchant: the idempotency key of the order.
    pub out_trade_no: String,
    #[schema(value_type = i64)]
    pub amount_minor: serde_json::Number,
    pub currency: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PayOrderRequest {
    /// `balance`, `bank_card`, `alipay` or `wechat`.
    pub method: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateRefundRequest {
    /// Unique per merchant: the idempotency key of the refund.
    pub out_refund_no: String,
    #[schema(value_type = i64)]
    pub amount_minor: serde_json::Number,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateTopupRequest {
    /// A channel: `bank_card`, `alipay` or `wechat`.
    pub method: String,
    #[schema(value_type = i64)]
    pub amount_minor: serde_json::Number,
}

// ---------- views ----------

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub real_name: String,
    pub card_last4: String,
    pub card_fingerprint: String,
    pub account_id: String,
    pub currency: String,
    pub created_at: u64,
}

impl From<&UserRecord> for UserView {
    fn from(user: &UserRecord) -> Self {
        UserView {
            id: user.id.clone(),
            username: user.username.clone(),
            real_name: user.real_name.clone(),
            card_last4: user.card_last4.clone(),
            card_fingerprint: user.card_fingerprint.clone(),
            account_id: format!("acct_{}", user.account),
            currency: user.currency.clone(),
            created_at: user.created_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    pub token: String,
    pub user_id: String,
    pub expires_at: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MerchantView {
    pub id: String,
    pub name: String,
    pub notify_url: String,
    pub account_id: String,
    pub currency: String,
    /// The platform's public key: verifies notification signatures.
    pub platform_public_key_pem: String,
    pub created_at: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PaymentView {
    pub method: String,
    pub channel_id: Option<u64>,
    pub user_id: String,
    pub paid_at: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderView {
    pub id: String,
    pub merchant_id: String,
    pub out_trade_no: String,
    /// `CREATED`, `PAID`, `PARTIALLY_REFUNDED`, `REFUNDED` or `CLOSED`.
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    pub refunded_minor: i64,
    pub description: String,
    pub payment: Option<PaymentView>,
    pub refund_ids: Vec<String>,
    pub created_at: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RefundView {
    pub id: String,
    pub order_id: String,
    pub out_refund_no: String,
    /// Always `SUCCEEDED`: a refund exists only once its transaction committed.
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub notify_id: String,
    pub created_at: u64,
}

impl From<&RefundRecord> for RefundView {
    fn from(refund: &RefundRecord) -> Self {
        RefundView {
            id: refund.id.clone(),
            order_id: refund.order_id.clone(),
            out_refund_no: refund.out_refund_no.clone(),
            status: "SUCCEEDED".into(),
            amount_minor: refund.amount_minor,
            currency: refund.currency.clone(),
            reason: refund.reason.clone(),
            notify_id: refund.notify_id.clone(),
            created_at: refund.created_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopupView {
    pub id: String,
    pub user_id: String,
    pub status: String,
    pub method: String,
    pub channel_id: u64,
    pub amount_minor: i64,
    pub currency: String,
    pub created_at: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EntryView {
    pub txn: String,
    pub delta_minor: i64,
    pub balance_after_minor: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountView {
    pub id: String,
    pub currency: String,
    pub balance_minor: i64,
    pub held_minor: i64,
    /// Newest first.
    pub recent: Vec<EntryView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationView {
    pub id: String,
    pub notify_id: String,
    pub event: String,
    pub order_id: String,
    pub refund_id: Option<String>,
    /// `PENDING`, `DELIVERED` or `FAILED`.
    pub status: String,
    pub attempts: Vec<Attempt>,
    pub next_attempt_at_ms: Option<u64>,
}

impl From<&NotificationRecord> for NotificationView {
    fn from(n: &NotificationRecord) -> Self {
        NotificationView {
            id: n.notify_id.clone(),
            notify_id: n.notify_id.clone(),
            event: n.event.clone(),
            order_id: n.order_id.clone(),
            refund_id: n.refund_id.clone(),
            status: n.status.clone(),
            attempts: n.attempts.clone(),
            next_attempt_at_ms: (n.status == "PENDING").then_some(n.next_attempt_at_ms),
        }
    }
}

/// A page of a merchant's orders, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderList {
    pub data: Vec<OrderView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A page of an order's refunds, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RefundList {
    pub data: Vec<RefundView>,
    pub next_cursor: Option<String>,
}

/// A page of a user's wallet history, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TransactionList {
    pub data: Vec<WalletEntry>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationList {
    pub notifications: Vec<NotificationView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_prefixes() {
        let (id, n) = new_id("ord");
        assert_eq!(parse_id("ord", &id), Some(n));
        assert_eq!(parse_id("usr", &id), None);
        assert_eq!(parse_id("ord", "ord_x"), None);
        assert!(((1u64 << 40)..(1u64 << 53)).contains(&n));
    }
}
