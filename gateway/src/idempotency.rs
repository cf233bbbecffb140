//! The `Idempotency-Key` header of every `POST`, with Stripe's semantics:
//! the same key with the same request answers the first response again
//! (with `Idempotent-Replayed: true`); the same key with another request is
//! `409 idempotency_conflict`.
//!
//! (decision) The response is remembered **in the transaction that does
//! the work**: the handler builds its answer before it submits, and the
//! `IDEMPOTENCY` record holding it is one more op of that transaction. So a
//! request whose answer was lost (a 503 after the commit, a dropped
//! connection) finds its answer on retry and never runs twice — the top-up
//! that charged twice on a retried 503 cannot happen. A request that did not
//! commit remembers nothing and may run again: it changed nothing. Keys are
//! scoped by caller (a merchant, a user, the admin) or, on the routes with
//! no caller yet (registration, login), by the route and the username the
//! body names ([`account_scope`]); kept for `idempotency_ttl_secs` and then
//! swept by the delivery-lease holder.

use crate::error::ApiError;
use crate::server::Gateway;
use crate::store::{self, ns};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use paytx_protocol::{AbortReason, Operation, RecordKey, TxnRequest};
use serde::{Deserialize, Serialize};

pub const HEADER: &str = "Idempotency-Key";
/// Longest key accepted, in bytes (Stripe's limit).
pub const MAX_KEY_BYTES: usize = 255;
/// Largest response body remembered; every answer of the API is far
/// smaller (an order with its 50 refund ids is about 2 KiB).
const MAX_REMEMBERED_BODY_BYTES: usize = 6 * 1024;

/// What a key remembers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Remembered {
    /// The record's own application key (`scope ‖ key`), for the sweeper.
    pub app_key: String,
    pub request_hash: String,
    pub status: u16,
    pub body: String,
    pub created_at_ms: u64,
}

/// The key of one request, if it carries one.
#[derive(Debug, Clone)]
pub struct Idempotency {
    app_key: String,
    request_hash: String,
}

/// A route with no authenticated caller, whose keys are scoped by the
/// account its body names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountRoute {
    /// `POST /v1/users`.
    Register,
    /// `POST /v1/sessions`.
    Login,
}

/// The scope of a key on an unauthenticated route: the route and the
/// username (`register:<username>`, `login:<username>`), so two people who
/// pick the same key, or one person's registration and login, never share
/// a key. Only a valid username (`[a-z0-9_]{3,32}`: no `:`, no newline) is
/// accepted, so no scope can be made equal to a caller's scope (`admin`,
/// `merchant:<id>`, `user:<id>`) nor to another route's or user's.
pub fn account_scope(route: AccountRoute, username: &str) -> Result<String, ApiError> {
    crate::validate::username(username)?;
    let route = match route {
        AccountRoute::Register => "register",
        AccountRoute::Login => "login",
    };
    Ok(format!("{route}:{username}"))
}

/// The request's key, scoped by `scope` (who is asking); `None` without
/// the header. A key is 1–255 printable ASCII characters. The record's key
/// is `scope`, a newline, the key: a key has no newline, and a scope must
/// not have one either (a scope with one is refused as an internal error),
/// so different scopes never share a record.
pub fn from_request(req: &HttpRequest, scope: &str, body: &[u8]) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = req.headers().get(HEADER) else { return Ok(None) };
    if scope.is_empty() || scope.contains('\n') {
        tracing::error!("an idempotency scope that is empty or holds a newline");
        return Err(ApiError::Internal);
    }
    let bad = || ApiError::InvalidField { field: "Idempotency-Key", reason: "1-255 printable ASCII characters".into() };
    let key = value.to_str().map_err(|_| bad())?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    let body_text = String::from_utf8_lossy(body);
    let request_hash = crate::api::hash_hex(&[req.method().as_str(), req.path(), &body_text]);
    Ok(Some(Idempotency { app_key: format!("{scope}\n{key}"), request_hash }))
}

impl Idempotency {
    pub fn record_key(&self) -> RecordKey {
        store::key(ns::IDEMPOTENCY, &self.app_key)
    }

    /// The first answer to this key, when there is one: the same request
    /// gets it again, another request a conflict.
    pub async fn replay(&self, gw: &Gateway) -> Result<Option<HttpResponse>, ApiError> {
        let Some((remembered, _)) = gw.store.get::<Remembered>(ns::IDEMPOTENCY, &self.app_key).await? else {
            return Ok(None);
        };
        if remembered.request_hash != self.request_hash {
            return Err(ApiError::IdempotencyConflict("the Idempotency-Key"));
        }
        let status = StatusCode::from_u16(remembered.status).map_err(|_| ApiError::Internal)?;
        Ok(Some(
            HttpResponse::build(status)
                .content_type("application/json")
                .insert_header(("Idempotent-Replayed", "true"))
                .body(remembered.body),
        ))
    }

    /// The op remembering `status` and `body` as this key's answer, for the
    /// transaction that does the work; and that answer.
    pub fn remember_op(
        &self,
        status: StatusCode,
        body: &impl Serialize,
    ) -> Result<(Operation, HttpResponse), ApiError> {
        let body = serde_json::to_string(body).map_err(|_| ApiError::Internal)?;
        if body.len() > MAX_REMEMBERED_BODY_BYTES {
            tracing::error!(bytes = body.len(), "an answer too large to remember");
            return Err(ApiError::Internal);
        }
        let remembered = Remembered {
            app_key: self.app_key.clone(),
            request_hash: self.request_hash.clone(),
            status: status.as_u16(),
            body: body.clone(),
            created_at_ms: crate::model::now_ms(),
        };
        let op = store::insert(ns::IDEMPOTENCY, &self.app_key, &remembered)?;
        let response = HttpResponse::build(status).content_type("application/json").body(body);
        Ok((op, response))
    }

    /// Remembers an answer on its own, for a request with no transaction of
    /// its own (a login). A concurrent twin that remembered first wins.
    pub async fn remember(
        &self,
        gw: &Gateway,
        status: StatusCode,
        body: &impl Serialize,
    ) -> Result<HttpResponse, ApiError> {
        let (op, response) = self.remember_op(status, body)?;
        match gw.store.submit(TxnRequest::new(crate::model::new_id("idem").0, vec![op])).await? {
            Ok(()) => Ok(response),
            Err(AbortReason::RecordExists { .. }) => self.replay(gw).await?.ok_or(ApiError::Unavailable),
            Err(reason) => Err(crate::api::map_abort(reason)),
        }
    }

    /// `true` when `reason` says a twin request with this key committed first.
    pub fn lost_to_twin(&self, reason: &AbortReason) -> bool {
        matches!(reason, AbortReason::RecordExists { key } if *key == self.record_key())
    }
}

/// Whether `error` is the definite outcome of a request that ran: a
/// business refusal (`402`, or a `409` about the state of what it acts on).
/// Stripe's semantics remember it like a success, so a retry with the same
/// key gets the same refusal and never a second attempt that might now
/// succeed (a payment declined for want of funds is not paid by its retry
/// after a top-up). Not remembered, so a retry runs again: validation
/// errors and failed authentication (the request never ran), idempotency
/// conflicts (they concern another request), `404`, rate limits and every
/// `5xx` (the failure may pass, or the outcome is not known).
pub fn is_definite_refusal(error: &ApiError) -> bool {
    matches!(
        error,
        ApiError::InsufficientFunds
            | ApiError::ChannelDeclined
            | ApiError::CurrencyMismatch
            | ApiError::UsernameTaken
            | ApiError::OrderNotPayable { .. }
            | ApiError::OrderNotClosable { .. }
            | ApiError::OrderNotRefundable { .. }
            | ApiError::RefundExceedsPaid { .. }
            | ApiError::TooManyRefunds { .. }
    )
}

/// Remembers `result`'s refusal as `idem`'s answer when it is a definite
/// one ([`is_definite_refusal`]), in a transaction of its own (the refused
/// request committed nothing). A twin request with the same key that
/// committed first wins: its answer is returned instead. When the answer
/// cannot be remembered (the cluster is busy) the refusal still stands,
/// and a retry runs again — it changed nothing.
pub async fn remember_refusal(
    gw: &Gateway,
    idem: &Option<Idempotency>,
    result: Result<HttpResponse, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let refusal = match &result {
        Err(error) if is_definite_refusal(error) => Some((error.status(), error.code(), error.to_string())),
        _ => None,
    };
    let (Some(idem), Some((status, code, message))) = (idem, refusal) else { return result };
    let body = crate::error::ErrorBody { error: crate::error::ErrorDetail { code: code.to_string(), message } };
    let Ok((op, _)) = idem.remember_op(status, &body) else { return result };
    for attempt in 0..REMEMBER_ATTEMPTS {
        if attempt > 0 {
            crate::api::contention_backoff(attempt).await;
        }
        match gw.store.submit(TxnRequest::new(crate::model::new_id("idem").0, vec![op.clone()])).await {
            Ok(Ok(())) => {
                if let Err(error) = settle(gw, &Some(idem.clone())).await {
                    tracing::debug!(%error, "a remembered refusal is not readable yet");
                }
                return result;
            }
            Ok(Err(reason)) if idem.lost_to_twin(&reason) => {
                return match idem.replay(gw).await {
                    Ok(Some(replay)) => Ok(replay),
                    _ => result,
                };
            }
            // A twin still committing holds the key: look again.
            Ok(Err(AbortReason::Conflict { .. })) => continue,
            _ => return result,
        }
    }
    result
}

/// Attempts at remembering a refusal whose key a twin holds.
const REMEMBER_ATTEMPTS: usize = 3;

/// Waits until `idem`'s remembered answer is readable, so a retry sent
/// the moment this answer arrives is replayed rather than refused as a
/// conflict with the still-committing first request. Nothing without a key.
pub async fn settle(gw: &Gateway, idem: &Option<Idempotency>) -> Result<(), ApiError> {
    match idem {
        Some(idem) => gw.store.wait_visible(ns::IDEMPOTENCY, &idem.app_key, Some(1)).await,
        None => Ok(()),
    }
}

/// The replay of `idem`'s first answer, when the request has a key and was
/// answered before (`Err` for a key reused with another request).
pub async fn replayed(gw: &Gateway, idem: &Option<Idempotency>) -> Result<Option<HttpResponse>, ApiError> {
    match idem {
        Some(idem) => idem.replay(gw).await,
        None => Ok(None),
    }
}

/// `ops` plus the op remembering the answer, when the request has a key;
/// the answer either way.
pub fn with_answer(
    idem: &Option<Idempotency>,
    ops: &mut Vec<Operation>,
    status: StatusCode,
    body: &impl Serialize,
) -> Result<HttpResponse, ApiError> {
    match idem {
        Some(idem) => {
            let (op, response) = idem.remember_op(status, body)?;
            ops.push(op);
            Ok(response)
        }
        None => Ok(crate::api::json(status, body)),
    }
}
