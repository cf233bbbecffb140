//! Who is asking: the administrator (admin key), a user (session token) or
//! a merchant (signed request, fresh timestamp, unused nonce).

use crate::error::ApiError;
use crate::model::{now_secs, MerchantRecord, NonceRecord, SessionRecord, UserRecord};
use crate::server::Gateway;
use crate::signing::{self, HEADER_MERCHANT, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use crate::store::{self, ns};
use actix_web::HttpRequest;
use paytx_protocol::{AbortReason, TxnRequest};

/// The authenticated party of a request.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    User(String),
    Merchant(Box<MerchantRecord>),
}

impl Caller {
    pub fn audit_name(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::User(id) => format!("user:{id}"),
            Caller::Merchant(merchant) => format!("merchant:{}", merchant.id),
        }
    }
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|value| value.to_str().ok())
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    header(req, "Authorization").and_then(|value| value.strip_prefix("Bearer ")).map(str::trim)
}

pub fn require_admin(gw: &Gateway, req: &HttpRequest) -> Result<Caller, ApiError> {
    match bearer(req) {
        Some(key) if crate::secrets::secrets_equal(key.as_bytes(), &gw.admin_key) => Ok(Caller::Admin),
        Some(_) => Err(ApiError::Unauthorized("wrong admin key")),
        None => Err(ApiError::Unauthorized("Authorization: Bearer <admin key> required")),
    }
}

/// The user of a valid session token (see [`require_session`]).
pub async fn require_user(gw: &Gateway, req: &HttpRequest) -> Result<String, ApiError> {
    require_session(gw, req).await.map(|(session, _)| session.user_id)
}

/// The session of the request's token, and its user's version: the token
/// must verify and not be expired, its session record must exist (a logout
/// deletes it) and carry the user's current epoch (a password change bumps
/// it). Both records are read at once: one round trip.
pub async fn require_session(gw: &Gateway, req: &HttpRequest) -> Result<(SessionRecord, u64), ApiError> {
    let token = bearer(req).ok_or(ApiError::Unauthorized("Authorization: Bearer <session token> required"))?;
    let payload = gw.tokens.check(token, now_secs()).ok_or(ApiError::InvalidToken)?;
    let (user_id, session_id) = payload.split_once(':').ok_or(ApiError::InvalidToken)?;
    let (session, user) = futures::future::try_join(
        gw.store.get::<SessionRecord>(ns::SESSION, session_id),
        gw.store.get::<UserRecord>(ns::USER, user_id),
    )
    .await?;
    match (session, user) {
        (Some((session, version)), Some((user, _)))
            if session.user_id == user.id && session.epoch == user.session_epoch =>
        {
            Ok((session, version))
        }
        _ => Err(ApiError::InvalidToken),
    }
}

/// The user a token was issued to, when it verifies and has not expired,
/// whether or not its session still exists (for a retried password change,
/// whose own first attempt revoked the session: [`require_user`] refuses it).
pub fn token_user(gw: &Gateway, req: &HttpRequest) -> Option<String> {
    let payload = gw.tokens.check(bearer(req)?, now_secs())?;
    payload.split_once(':').map(|(user_id, _)| user_id.to_string())
}

/// The token of a new session of `user_id` (its record is written by the caller).
pub fn session_token(gw: &Gateway, user_id: &str, session_id: &str, expires_at: u64) -> String {
    gw.tokens.issue(&format!("{user_id}:{session_id}"), expires_at)
}

/// A bearer token is the admin key or a user session; without one, the
/// request must be a signed merchant request.
pub async fn any_caller(gw: &Gateway, req: &HttpRequest, body: &[u8]) -> Result<Caller, ApiError> {
    match bearer(req) {
        Some(key) if crate::secrets::secrets_equal(key.as_bytes(), &gw.admin_key) => Ok(Caller::Admin),
        Some(_) => require_user(gw, req).await.map(Caller::User),
        None => require_merchant(gw, req, body).await.map(|m| Caller::Merchant(Box::new(m))),
    }
}

/// Longest nonce accepted, in bytes.
pub const MAX_NONCE_BYTES: usize = 64;

/// Checks a merchant's signed request and burns its nonce (cluster-wide).
pub async fn require_merchant(gw: &Gateway, req: &HttpRequest, body: &[u8]) -> Result<MerchantRecord, ApiError> {
    let (merchant, nonce, ts) = verify_merchant(gw, req, body).await?;
    // Only a correctly signed request may claim a nonce, so nobody else can
    // fill the nonce store. The claim is an insert: a replay on any node
    // finds it taken.
    let record = NonceRecord { merchant_id: merchant.id.clone(), nonce: nonce.clone(), timestamp: ts };
    let claim = store::insert(ns::NONCE, &nonce_key(&merchant.id, &nonce), &record)?;
    let (txn_key, _) = crate::model::new_id("nonce");
    match gw.store.submit(TxnRequest::new(txn_key, vec![claim])).await? {
        Ok(()) => Ok(merchant),
        Err(AbortReason::RecordExists { .. }) => Err(ApiError::NonceReplayed),
        Err(reason) => Err(crate::api::map_abort(reason)),
    }
}

/// Checks a merchant's signed *query* (the list endpoints, statements):
/// signature and timestamp window, but no nonce (decision). A replayed
/// query changes nothing and answers what its eavesdropper already saw,
/// while burning a nonce would cost every read a 2PC write and an fsync —
/// the whole latency budget of a page.
pub async fn require_merchant_read(gw: &Gateway, req: &HttpRequest, body: &[u8]) -> Result<MerchantRecord, ApiError> {
    verify_merchant(gw, req, body).await.map(|(merchant, _, _)| merchant)
}

/// The signature and timestamp checks: the merchant, its nonce, the timestamp.
async fn verify_merchant(
    gw: &Gateway,
    req: &HttpRequest,
    body: &[u8],
) -> Result<(MerchantRecord, String, u64), ApiError> {
    let (Some(merchant_id), Some(timestamp), Some(nonce), Some(signature)) = (
        header(req, HEADER_MERCHANT),
        header(req, HEADER_TIMESTAMP),
        header(req, HEADER_NONCE),
        header(req, HEADER_SIGNATURE),
    ) else {
        return Err(ApiError::Unauthorized("a signed merchant request needs the X-Paytx-* headers"));
    };
    let window = gw.config.timestamp_window_secs;
    let ts: u64 = timestamp.parse().map_err(|_| ApiError::BadSignature("X-Paytx-Timestamp is not unix seconds"))?;
    if ts.abs_diff(now_secs()) > window {
        return Err(ApiError::TimestampExpired { window_secs: window });
    }
    if nonce.is_empty() || nonce.len() > MAX_NONCE_BYTES || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadSignature("X-Paytx-Nonce must be 1-64 printable characters"));
    }
    if crate::model::parse_id("mch", merchant_id).is_none() {
        return Err(ApiError::BadSignature("unknown merchant"));
    }
    let Some((merchant, _)) = gw.store.get::<MerchantRecord>(ns::MERCHANT, merchant_id).await? else {
        return Err(ApiError::BadSignature("unknown merchant"));
    };
    let key = signing::parse_public_key(&merchant.public_key_pem).map_err(|_| ApiError::Internal)?;
    let path = req.uri().path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let message = signing::canonical_string(req.method().as_str(), path, timestamp, nonce, body);
    if !signing::verify(&key, &message, signature) {
        return Err(ApiError::BadSignature("the signature does not verify with the merchant's key"));
    }
    // Counted once the signature verifies: nobody can drain another
    // merchant's bucket with requests it could not sign.
    gw.merchant_limiter
        .take(&merchant.id, crate::model::now_ms())
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })?;
    Ok((merchant, nonce.to_string(), ts))
}

/// The rate limit of an unauthenticated route, per client IP address (the
/// peer of the TCP connection: the gateway is the edge, a forwarded-for
/// header would let a client pick its own bucket).
pub fn limit_address(gw: &Gateway, req: &HttpRequest) -> Result<(), ApiError> {
    let address = req.peer_addr().map(|addr| addr.ip().to_string()).unwrap_or_default();
    gw.address_limiter
        .take(&address, crate::model::now_ms())
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })
}

pub fn nonce_key(merchant_id: &str, nonce: &str) -> String {
    format!("{merchant_id}\n{nonce}")
}
