//! The HTTP handlers, one module per resource, and what they share. Each
//! state-changing handler runs an `_inner` function and appends the outcome
//! to the audit log, whatever it was.

use crate::auth::{self, Caller};
use crate::error::{ApiError, ErrorBody};
use crate::idempotency;
use crate::index;
use crate::model::*;
use crate::routing::PayMethod;
use crate::secrets;
use crate::server::Gateway;
use crate::store::{self, ns};
use crate::validate;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use paytx_protocol::error::OrderStatus;
use paytx_protocol::{
    AbortReason, AccountId, ChannelId, Currency, Money, Operation, OrderId, RecordExpect, TxnRequest,
};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// Largest request body, in bytes (more: 413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Attempts of a payment/refund whose order record moved under it.
pub(crate) const CAS_ATTEMPTS: usize = 4;

/// What the audit log gets about a request, filled in as the handler learns it.
pub struct AuditNote {
    pub(crate) action: &'static str,
    pub(crate) actor: String,
    pub(crate) target: String,
    /// The request's `Idempotency-Key`, once the caller is known: a
    /// definite refusal is remembered as the key's answer
    /// ([`idempotency::remember_refusal`]).
    pub(crate) idem: Option<idempotency::Idempotency>,
}

impl AuditNote {
    pub(crate) fn new(action: &'static str) -> AuditNote {
        AuditNote { action, actor: "anonymous".into(), target: String::new(), idem: None }
    }
}

/// The end of every state-changing request: a definite refusal of a
/// request with an `Idempotency-Key` is remembered as its answer (Stripe's
/// semantics), then the outcome is appended to the audit log.
pub(crate) async fn finish(gw: &Gateway, note: AuditNote, result: Result<HttpResponse, ApiError>) -> HttpResponse {
    let result = idempotency::remember_refusal(gw, &note.idem, result).await;
    audit(gw, note, result)
}

fn audit(gw: &Gateway, note: AuditNote, result: Result<HttpResponse, ApiError>) -> HttpResponse {
    let (response, outcome) = match result {
        Ok(response) => (response, "ok".to_string()),
        Err(error) => {
            let code = error.code().to_string();
            (actix_web::ResponseError::error_response(&error), code)
        }
    };
    if let Err(error) = gw.audit.append(&note.actor, note.action, &note.target, response.status().as_u16(), &outcome) {
        tracing::error!(%error, "audit append failed");
    }
    response
}

/// [`finish`] for a money-moving request: its audit entry is durable before
/// the response leaves (an entry left to sled's periodic flush could be
/// lost in a crash right after the client learnt that money moved).
///
/// (decision) When the sync fails, no answer of the request is sent —
/// not even a refusal: `500 audit_not_durable` instead, an `audit.sync`
/// entry saying so is appended after the request's own (neither is known
/// to be durable), and the node is stopped (fail-stop, README
/// "Durability"). The request's own entry keeps the outcome that committed:
/// the money may have moved. Every later sync fails too, so until the node
/// stops every money-moving request is answered the same way; a retry with
/// the same `Idempotency-Key` after the restart gets the committed answer.
pub(crate) async fn finish_durable(
    gw: &Gateway,
    note: AuditNote,
    result: Result<HttpResponse, ApiError>,
) -> HttpResponse {
    let (actor, action, target) = (note.actor.clone(), note.action, note.target.clone());
    let response = finish(gw, note, result).await;
    let Err(error) = gw.audit.sync().await else { return response };
    let withheld = response.status().as_u16();
    tracing::error!(%error, action, status = withheld, "the audit entry of a money-moving request is not durable: \
        its answer is withheld (500 audit_not_durable) and the node stops");
    let refusal = ApiError::AuditNotDurable;
    if let Err(error) = gw.audit.append(&actor, "audit.sync", &target, refusal.status().as_u16(), refusal.code()) {
        tracing::error!(%error, "audit append failed");
    }
    gw.stop_the_node(format!("the gateway audit log cannot be made durable: {error}"));
    actix_web::ResponseError::error_response(&refusal)
}

/// Reads the body, refusing more than [`MAX_BODY_BYTES`] without buffering it.
pub(crate) async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<Vec<u8>, ApiError> {
    let too_large = ApiError::BodyTooLarge { max_bytes: MAX_BODY_BYTES };
    let declared =
        req.headers().get("Content-Length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES) {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::MalformedJson("the body could not be read".into()))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e))
}

pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::build(status).json(value)
}

pub(crate) fn hash_hex(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    secrets::to_hex(&hasher.finalize())
}

/// A short randomised pause before looking at a contended order again, so
/// racing requests spread out instead of colliding on every attempt.
pub(crate) async fn contention_backoff(attempt: usize) {
    tokio::time::sleep(contention_delay(attempt)).await;
}

/// The pause of [`contention_backoff`]: 20 ms doubling per attempt up to
/// 320 ms, plus as much again at random.
pub(crate) fn contention_delay(attempt: usize) -> std::time::Duration {
    let base_ms = 20u64 << attempt.min(4);
    std::time::Duration::from_millis(base_ms + contention_jitter_ms(base_ms))
}

/// A random pause below `bound_ms` (gateway code, not protocol code: the
/// thread RNG is fine here).
pub(crate) fn contention_jitter_ms(bound_ms: u64) -> u64 {
    use rand::Rng;
    rand::thread_rng().gen_range(0..bound_ms.max(1))
}

pub(crate) fn txn_key(kind: &str) -> String {
    new_id(kind).0
}

pub(crate) fn map_abort(reason: AbortReason) -> ApiError {
    match reason {
        AbortReason::InsufficientFunds { .. } => ApiError::InsufficientFunds,
        AbortReason::CurrencyMismatch { .. } => ApiError::CurrencyMismatch,
        AbortReason::ChannelDeclined { .. } => ApiError::ChannelDeclined,
        AbortReason::RefundExceedsPaid { paid_minor, refunded_minor, requested_minor, .. } => {
            ApiError::RefundExceedsPaid { requested_minor, remaining_minor: paid_minor.saturating_sub(refunded_minor) }
        }
        AbortReason::RecordStoreFull { .. } => ApiError::StoreFull,
        AbortReason::BalanceOverflow(_) => ApiError::InvalidAmount,
        AbortReason::Conflict { .. }
        | AbortReason::PrepareTimeout { .. }
        | AbortReason::ShardUnavailable { .. }
        | AbortReason::PresumedAbort
        | AbortReason::ShardOverloaded { .. } => ApiError::Unavailable,
        other => {
            tracing::error!(reason = %other, "unexpected abort");
            ApiError::Internal
        }
    }
}

/// Whether `reason` says a concurrent transaction on the same records won a
/// race: the caller reads again, and the live state gives the definite
/// answer. Which of the loser's refusals reaches the coordinator first is a
/// matter of timing: the record's version, an index entry the winner
/// inserted (`RecordExists`) or removed (`RecordVersionMismatch`), or a lock
/// the winner still holds (`Conflict`). All of them mean the same thing.
pub(crate) fn lost_a_race(reason: &AbortReason) -> bool {
    matches!(
        reason,
        AbortReason::RecordExists { .. } | AbortReason::RecordVersionMismatch { .. } | AbortReason::Conflict { .. }
    )
}

/// The answer to a request whose idempotency claim already exists: the
/// same request gets the original resource again, another one a 409.
pub(crate) fn same_request(claim: &Claim, request_hash: &str, what: &'static str) -> Result<(), ApiError> {
    if claim.request_hash == request_hash {
        Ok(())
    } else {
        Err(ApiError::IdempotencyConflict(what))
    }
}

pub(crate) async fn order_view(gw: &Gateway, record: &OrderRecord) -> Result<OrderView, ApiError> {
    let order = parse_id("ord", &record.id).ok_or(ApiError::Internal)?;
    let live = gw.store.order(OrderId(order)).await?;
    let status = live.as_ref().map(|v| v.status).unwrap_or(OrderStatus::Created);
    order_view_as(record, status, live.as_ref().map(|v| v.refunded_minor).unwrap_or(0))
}

/// The view of `record` at a known `status` (the answer a transaction
/// gives, built before it commits).
pub(crate) fn order_view_as(
    record: &OrderRecord,
    status: OrderStatus,
    refunded_minor: i64,
) -> Result<OrderView, ApiError> {
    Ok(OrderView {
        id: record.id.clone(),
        merchant_id: record.merchant_id.clone(),
        out_trade_no: record.out_trade_no.clone(),
        status: status.as_str().to_string(),
        amount_minor: record.amount_minor,
        currency: record.currency.clone(),
        refunded_minor,
        description: record.description.clone(),
        payment: record.payment.as_ref().map(|p| PaymentView {
            method: p.method.clone(),
            channel_id: p.channel,
            user_id: p.user_id.clone(),
            paid_at: p.paid_at,
        }),
        refund_ids: record.refunds.clone(),
        created_at: record.created_at,
    })
}

/// The order `id` as seen by `caller`: another merchant's order is "not
/// found", exactly like a missing one.
pub(crate) async fn load_order(gw: &Gateway, caller: &Caller, id: &str) -> Result<(OrderRecord, u64), ApiError> {
    parse_id("ord", id).ok_or(ApiError::NotFound("order"))?;
    let (record, version) = gw.store.get::<OrderRecord>(ns::ORDER, id).await?.ok_or(ApiError::NotFound("order"))?;
    match caller {
        Caller::Admin => Ok((record, version)),
        Caller::Merchant(merchant) if merchant.id == record.merchant_id => Ok((record, version)),
        _ => Err(ApiError::NotFound("order")),
    }
}

/// The ops that move an order's status-index entry from `from` to `to`
/// (none when the status stays): in the transaction that changes the status.
pub(crate) fn status_move(
    record: &OrderRecord,
    from: OrderStatus,
    to: OrderStatus,
) -> Result<Vec<Operation>, ApiError> {
    if from == to {
        return Ok(Vec::new());
    }
    let number = parse_id("ord", &record.id).ok_or(ApiError::Internal)?;
    let pointer = index::Pointer { id: record.id.clone() };
    Ok(vec![
        index::remove(index::status_partition(&record.merchant_id, from.as_str())?, record.created_at, number),
        index::insert(index::status_partition(&record.merchant_id, to.as_str())?, record.created_at, number, &pointer)?,
    ])
}

/// The op writing `line` into its merchant's statements under the time the
/// transaction commits, so it is on the statement of the UTC day it
/// committed. (Its `at_ms` is written 0: a reader takes the key's time.)
pub(crate) fn statement_op(merchant_id: &str, line: &StatementLine, number: u64) -> Result<Operation, ApiError> {
    index::insert_at_commit(index::statement_partition(merchant_id)?, number, line)
}

/// The op writing `entry` into the wallet history of `user_id`.
pub(crate) fn wallet_op(user_id: &str, entry: &WalletEntry, number: u64) -> Result<Operation, ApiError> {
    index::insert(index::partition(index::ins::WALLET_ENTRIES, user_id)?, entry.at_ms, number, entry)
}

pub(crate) fn currency_of(code: &str) -> Result<Currency, ApiError> {
    Currency::parse(code).ok_or(ApiError::Internal)
}

mod channels;
mod merchants;
mod notifications;
mod orders;
mod pay;
mod queries;
mod refunds;
mod topups;
mod users;
/// Any route the API does not have.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("route"))
}

mod accounts;

pub use accounts::*;
pub use channels::*;
pub use merchants::*;
pub use notifications::*;
pub use orders::*;
pub use pay::*;
pub use queries::*;
pub use refunds::*;
pub use topups::*;
pub use users::*;
