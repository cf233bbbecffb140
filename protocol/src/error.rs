//! Typed errors, one enum per concern, so callers can match on them.
//!
//! * [`InvalidRequest`]: the request is malformed; nothing was attempted.
//! * [`AbortReason`]: the transaction was well formed but aborted; nothing
//!   was applied anywhere.
//! * [`RequestError`]: the node could not answer the request (yet); the
//!   client may retry with the same idempotency key.

use crate::ids::{AccountId, ChannelId, NodeId, OrderId, RecordKey, ShardId};
use crate::money::Currency;
use serde::{Deserialize, Serialize};

/// The state of an order, as in `CREATED → PAID → PARTIALLY_REFUNDED/REFUNDED`
/// and `CREATED → CLOSED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Created,
    Paid,
    PartiallyRefunded,
    Refunded,
    Closed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Created => "CREATED",
            OrderStatus::Paid => "PAID",
            OrderStatus::PartiallyRefunded => "PARTIALLY_REFUNDED",
            OrderStatus::Refunded => "REFUNDED",
            OrderStatus::Closed => "CLOSED",
        }
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a well-formed transaction was aborted. Nothing it asked for was
/// applied on any shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum AbortReason {
    #[error("insufficient funds in {account}: {available_minor} available, {requested_minor} requested")]
    InsufficientFunds { account: AccountId, available_minor: i64, requested_minor: i64 },
    #[error("unknown account {0}: open it first")]
    UnknownAccount(AccountId),
    #[error("unknown order {0}: create it first")]
    UnknownOrder(OrderId),
    #[error("unknown channel {0}: see `channels` in the cluster config")]
    UnknownChannel(ChannelId),
    #[error("account {0} already exists")]
    AccountExists(AccountId),
    #[error("order {0} already exists")]
    OrderExists(OrderId),
    #[error("currency mismatch on {entity}: it holds {expected}, the operation is in {got}")]
    CurrencyMismatch { entity: String, expected: Currency, got: Currency },
    #[error("order {order} is {from}; it cannot be {action}")]
    IllegalOrderTransition { order: OrderId, from: OrderStatus, action: String },
    #[error("order {order}: amount {got_minor} does not match the order amount {expected_minor}")]
    AmountMismatch { order: OrderId, expected_minor: i64, got_minor: i64 },
    #[error(
        "refund of {requested_minor} on {order} exceeds what is left: paid {paid_minor}, refunded {refunded_minor}"
    )]
    RefundExceedsPaid { order: OrderId, paid_minor: i64, refunded_minor: i64, requested_minor: i64 },
    #[error("order {order} was already charged through {channel}")]
    AlreadyCharged { channel: ChannelId, order: OrderId },
    #[error("no charge of order {order} through {channel} to refund")]
    ChargeNotFound { channel: ChannelId, order: OrderId },
    #[error("channel {channel} declined the charge")]
    ChannelDeclined { channel: ChannelId },
    #[error("account {0} would overflow")]
    BalanceOverflow(AccountId),
    #[error("{entity} is locked by another transaction in progress; retry with a new idempotency key")]
    Conflict { entity: String },
    #[error("shard {shard} did not vote before the prepare deadline")]
    PrepareTimeout { shard: ShardId },
    #[error("shard {shard} could not be reached to prepare")]
    ShardUnavailable { shard: ShardId },
    #[error("no decision was recorded before the coordinator moved on (leader change or timeout); presumed aborted")]
    PresumedAbort,
    #[error("participant shard {shard} is at its limit of prepared transactions")]
    ShardOverloaded { shard: ShardId },
    #[error("{key} already exists")]
    RecordExists { key: RecordKey },
    #[error("{key} is at version {actual:?}, the write expected version {expected}")]
    RecordVersionMismatch { key: RecordKey, expected: u64, actual: Option<u64> },
    #[error("records shard {shard} is full ({max_records} records, its configured max_records_per_shard)")]
    RecordStoreFull { shard: ShardId, max_records: u64 },
    #[error("the disk of shard {shard} is below its free-space minimum ({free_bytes} bytes free)")]
    DiskFull { shard: ShardId, free_bytes: u64 },
}

impl AbortReason {
    /// A stable, machine-readable code, used in reports and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            AbortReason::InsufficientFunds { .. } => "insufficient_funds",
            AbortReason::UnknownAccount(_) => "unknown_account",
            AbortReason::UnknownOrder(_) => "unknown_order",
            AbortReason::UnknownChannel(_) => "unknown_channel",
            AbortReason::AccountExists(_) => "account_exists",
            AbortReason::OrderExists(_) => "order_exists",
            AbortReason::CurrencyMismatch { .. } => "currency_mismatch",
            AbortReason::IllegalOrderTransition { .. } => "illegal_order_transition",
            AbortReason::AmountMismatch { .. } => "amount_mismatch",
            AbortReason::RefundExceedsPaid { .. } => "refund_exceeds_paid",
            AbortReason::AlreadyCharged { .. } => "already_charged",
            AbortReason::ChargeNotFound { .. } => "charge_not_found",
            AbortReason::ChannelDeclined { .. } => "channel_declined",
            AbortReason::BalanceOverflow(_) => "balance_overflow",
            AbortReason::Conflict { .. } => "conflict",
            AbortReason::PrepareTimeout { .. } => "prepare_timeout",
            AbortReason::ShardUnavailable { .. } => "shard_unavailable",
            AbortReason::PresumedAbort => "presumed_abort",
            AbortReason::ShardOverloaded { .. } => "shard_overloaded",
            AbortReason::RecordExists { .. } => "record_exists",
            AbortReason::RecordVersionMismatch { .. } => "record_version_mismatch",
            AbortReason::RecordStoreFull { .. } => "record_store_full",
            AbortReason::DiskFull { .. } => "disk_full",
        }
    }
}

/// Why a request was rejected before anything was attempted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum InvalidRequest {
    #[error("a transaction needs at least one operation")]
    Empty,
    #[error("too many operations: {count}, at most {max} per transaction")]
    TooManyOperations { count: usize, max: usize },
    #[error("idempotency key must be 1..=128 printable ASCII bytes without spaces")]
    BadIdempotencyKey,
    #[error("operation {index}: amount must be positive, got {amount_minor}")]
    NonPositiveAmount { index: usize, amount_minor: i64 },
    #[error("operation {index}: initial balance must not be negative, got {amount_minor}")]
    NegativeInitialBalance { index: usize, amount_minor: i64 },
    #[error("operation {index}: unsupported currency {currency}")]
    UnsupportedCurrency { index: usize, currency: String },
    #[error("debits and credits in {currency} do not balance: debits {debits_minor}, credits {credits_minor}")]
    Unbalanced { currency: Currency, debits_minor: i128, credits_minor: i128 },
    #[error("amounts overflow")]
    AmountOverflow,
    #[error("operation {index}: record value of {len_bytes} bytes exceeds the {max_bytes}-byte limit")]
    RecordTooLarge { index: usize, len_bytes: usize, max_bytes: usize },
    #[error("the request could not be decoded: {0}")]
    Malformed(String),
    #[error("records shard {shard} does not exist: the cluster has {shard_count} (0..{shard_count})")]
    RecordShardOutOfRange { shard: u32, shard_count: u32 },
    #[error("the transaction encodes to {len_bytes} bytes; one replicated log entry carries at most {max_bytes}")]
    TooLarge { len_bytes: usize, max_bytes: usize },
    #[error("namespace {ns} is not ordered (a range read needs a namespace of {first} or above)")]
    NotAnOrderedNamespace { ns: u16, first: u16 },
    #[error("a batch of {items} prepares or decisions; at most {max} per request")]
    BatchTooLong { items: usize, max: usize },
}

/// Why a node could not serve a request. Everything except `Invalid` and
/// `IdempotencyConflict` is transient: retry, with the same idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RequestError {
    #[error("invalid request: {0}")]
    Invalid(InvalidRequest),
    #[error("idempotency key {key} was already used with a different request body; use a new key")]
    IdempotencyConflict { key: String },
    #[error("this node is not the coordinator leader and does not know who is (leader hint: {leader_hint:?}); retry shortly")]
    NoLeader { leader_hint: Option<NodeId> },
    #[error("the node is overloaded ({what}); back off and retry")]
    Overloaded { what: String },
    #[error(
        "the request did not finish within {timeout_ms} ms; retry with the same idempotency key to learn its outcome"
    )]
    Timeout { timeout_ms: u64 },
    #[error("shard {shard} is unreachable; retry when its node is back")]
    ShardUnavailable { shard: ShardId },
    /// This node's replica of `shard` is not the shard group's leader: send
    /// the request to `leader_hint` (when known) instead.
    #[error("this node does not lead shard {shard} (leader hint: {leader_hint:?}); retry on the leader")]
    NotShardLeader { shard: ShardId, leader_hint: Option<NodeId> },
    #[error("the transaction with idempotency key {key} is still in progress; retry shortly with the same key")]
    InProgress { key: String },
    #[error("node-to-node messages need a connection authenticated with the cluster secret ({reason})")]
    Unauthorized { reason: String },
    #[error("the node is shutting down; retry on another node")]
    ShuttingDown,
    #[error(
        "node {node}'s disk is nearly full ({free_bytes} bytes free, minimum {min_free_bytes}); no new transactions until space returns"
    )]
    DiskFull { node: NodeId, free_bytes: u64, min_free_bytes: u64 },
    #[error("internal error: {0}; see the node's log")]
    Internal(String),
}

impl RequestError {
    /// `true` when retrying the same request (same idempotency key) may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            RequestError::Invalid(_) | RequestError::IdempotencyConflict { .. } | RequestError::Unauthorized { .. }
        )
    }
}
