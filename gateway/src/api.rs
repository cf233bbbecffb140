//! The HTTP handlers. Each state-changing handler runs an `_inner` function
//! and appends the outcome to the audit log, whatever it was.

use crate::auth::{self, Caller};
use crate::error::{ApiError, ErrorBody};
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
const CAS_ATTEMPTS: usize = 4;

/// What the audit log gets about a request, filled in as the handler learns it.
pub struct AuditNote {
    action: &'static str,
    actor: String,
    target: String,
}

impl AuditNote {
    fn new(action: &'static str) -> AuditNote {
        AuditNote { action, actor: "anonymous".into(), target: String::new() }
    }
}

fn finish(gw: &Gateway, note: AuditNote, result: Result<HttpResponse, ApiError>) -> HttpResponse {
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

/// Reads the body, refusing more than [`MAX_BODY_BYTES`] without buffering it.
async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<Vec<u8>, ApiError> {
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

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e))
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::build(status).json(value)
}

fn hash_hex(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    secrets::to_hex(&hasher.finalize())
}

/// A short randomised pause before looking at a contended order again, so
/// racing requests spread out instead of colliding on every attempt.
async fn contention_backoff(attempt: usize) {
    use rand::Rng;
    let base_ms = 20u64 << attempt.min(4);
    let jitter_ms = rand::thread_rng().gen_range(0..base_ms);
    tokio::time::sleep(std::time::Duration::from_millis(base_ms + jitter_ms)).await;
}

fn txn_key(kind: &str) -> String {
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

/// The answer to a request whose idempotency claim already exists: the
/// same request gets the original resource again, another one a 409.
fn same_request(claim: &Claim, request_hash: &str, what: &'static str) -> Result<(), ApiError> {
    if claim.request_hash == request_hash {
        Ok(())
    } else {
        Err(ApiError::IdempotencyConflict(what))
    }
}

async fn order_view(gw: &Gateway, record: &OrderRecord) -> Result<OrderView, ApiError> {
    let order = parse_id("ord", &record.id).ok_or(ApiError::Internal)?;
    let live = gw.store.order(OrderId(order)).await?;
    Ok(OrderView {
        id: record.id.clone(),
        merchant_id: record.merchant_id.clone(),
        out_trade_no: record.out_trade_no.clone(),
        status: live.as_ref().map(|v| v.status.as_str()).unwrap_or("CREATED").to_string(),
        amount_minor: record.amount_minor,
        currency: record.currency.clone(),
        refunded_minor: live.as_ref().map(|v| v.refunded_minor).unwrap_or(0),
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
async fn load_order(gw: &Gateway, caller: &Caller, id: &str) -> Result<(OrderRecord, u64), ApiError> {
    parse_id("ord", id).ok_or(ApiError::NotFound("order"))?;
    let (record, version) = gw.store.get::<OrderRecord>(ns::ORDER, id).await?.ok_or(ApiError::NotFound("order"))?;
    match caller {
        Caller::Admin => Ok((record, version)),
        Caller::Merchant(merchant) if merchant.id == record.merchant_id => Ok((record, version)),
        _ => Err(ApiError::NotFound("order")),
    }
}

fn currency_of(code: &str) -> Result<Currency, ApiError> {
    Currency::parse(code).ok_or(ApiError::Internal)
}

// ---------------------------------------------------------------- users

#[utoipa::path(post, path = "/v1/users", request_body = RegisterUserRequest,
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn register_user(gw: web::Data<Gateway>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut note = AuditNote::new("user.register");
    let result = register_user_inner(&gw, &req, payload, &mut note).await;
    finish(&gw, note, result)
}

async fn register_user_inner(
    gw: &Gateway,
    req: &HttpRequest,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let body: RegisterUserRequest = parse(&read_body(req, payload).await?)?;
    validate::username(&body.username)?;
    validate::password(&body.password)?;
    validate::name("real_name", &body.real_name)?;
    validate::card_number(&body.card_number)?;
    let currency = validate::currency(body.currency.as_deref().unwrap_or("CNY"))?;
    note.target = body.username.clone();
    if gw.store.get::<Claim>(ns::USERNAME, &body.username).await?.is_some() {
        return Err(ApiError::UsernameTaken);
    }
    let password = body.password.clone();
    let password_hash = web::block(move || secrets::hash_password(&password))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|_| ApiError::Internal)?;
    let (id, _) = new_id("usr");
    let (_, account) = new_id("acct");
    let user = UserRecord {
        id: id.clone(),
        username: body.username.clone(),
        real_name: body.real_name.trim().to_string(),
        password_hash,
        card_sealed: gw.vault.seal(&body.card_number),
        card_last4: secrets::last_four(&body.card_number),
        card_fingerprint: gw.vault.fingerprint(&body.card_number),
        account,
        currency: currency.to_string(),
        created_at: now_secs(),
    };
    let ops = vec![
        store::insert(ns::USERNAME, &user.username, &Claim { id: id.clone(), request_hash: String::new() })?,
        store::insert(ns::USER, &id, &user)?,
        store::insert(ns::ACCOUNT_OWNER, &account.to_string(), &Owner::User(id.clone()))?,
        Operation::OpenAccount { account: AccountId(account), currency, initial_minor: 0 },
    ];
    match gw.store.submit(TxnRequest::new(txn_key("reg"), ops)).await? {
        Ok(()) => {}
        Err(AbortReason::RecordExists { .. }) => return Err(ApiError::UsernameTaken),
        Err(reason) => return Err(map_abort(reason)),
    }
    note.actor = format!("user:{id}");
    note.target = id;
    Ok(json(StatusCode::CREATED, &UserView::from(&user)))
}

#[utoipa::path(post, path = "/v1/sessions", request_body = CreateSessionRequest,
    responses((status = 201, body = SessionView), (status = 401, body = ErrorBody)))]
pub async fn create_session(gw: web::Data<Gateway>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut note = AuditNote::new("session.create");
    let result = create_session_inner(&gw, &req, payload, &mut note).await;
    finish(&gw, note, result)
}

async fn create_session_inner(
    gw: &Gateway,
    req: &HttpRequest,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let body: CreateSessionRequest = parse(&read_body(req, payload).await?)?;
    validate::username(&body.username).map_err(|_| ApiError::BadCredentials)?;
    note.target = body.username.clone();
    let Some((claim, _)) = gw.store.get::<Claim>(ns::USERNAME, &body.username).await? else {
        return Err(ApiError::BadCredentials);
    };
    let (user, _) = gw.store.get::<UserRecord>(ns::USER, &claim.id).await?.ok_or(ApiError::BadCredentials)?;
    let (password, hash) = (body.password, user.password_hash.clone());
    let ok = web::block(move || secrets::verify_password(&password, &hash)).await.map_err(|_| ApiError::Internal)?;
    if !ok {
        return Err(ApiError::BadCredentials);
    }
    note.actor = format!("user:{}", user.id);
    let expires_at = now_secs() + gw.config.session_ttl_secs;
    let token = gw.tokens.issue(&user.id, expires_at);
    Ok(json(StatusCode::CREATED, &SessionView { token, user_id: user.id, expires_at }))
}

// ---------------------------------------------------------------- merchants

#[utoipa::path(post, path = "/v1/merchants", request_body = CreateMerchantRequest,
    responses((status = 201, body = MerchantView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("admin_key" = [])))]
pub async fn create_merchant(gw: web::Data<Gateway>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut note = AuditNote::new("merchant.create");
    let result = create_merchant_inner(&gw, &req, payload, &mut note).await;
    finish(&gw, note, result)
}

async fn create_merchant_inner(
    gw: &Gateway,
    req: &HttpRequest,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(req, payload).await?;
    note.actor = auth::require_admin(gw, req)?.audit_name();
    let body: CreateMerchantRequest = parse(&body)?;
    validate::name("name", &body.name)?;
    validate::notify_url(&body.notify_url)?;
    crate::signing::parse_public_key(&body.public_key_pem)
        .map_err(|e| ApiError::InvalidField { field: "public_key_pem", reason: e.to_string() })?;
    let currency = validate::currency(body.currency.as_deref().unwrap_or("CNY"))?;
    let (id, _) = new_id("mch");
    let (_, account) = new_id("acct");
    let merchant = MerchantRecord {
        id: id.clone(),
        name: body.name.trim().to_string(),
        notify_url: body.notify_url.clone(),
        public_key_pem: body.public_key_pem.trim().to_string(),
        account,
        currency: currency.to_string(),
        created_at: now_secs(),
    };
    let ops = vec![
        store::insert(ns::MERCHANT, &id, &merchant)?,
        store::insert(ns::ACCOUNT_OWNER, &account.to_string(), &Owner::Merchant(id.clone()))?,
        Operation::OpenAccount { account: AccountId(account), currency, initial_minor: 0 },
    ];
    gw.store.submit(TxnRequest::new(txn_key("mch"), ops)).await?.map_err(map_abort)?;
    note.target = id.clone();
    Ok(json(
        StatusCode::CREATED,
        &MerchantView {
            id,
            name: merchant.name,
            notify_url: merchant.notify_url,
            account_id: format!("acct_{account}"),
            currency: merchant.currency,
            platform_public_key_pem: gw.platform_public_pem.clone(),
            created_at: merchant.created_at,
        },
    ))
}

// ---------------------------------------------------------------- orders

#[utoipa::path(post, path = "/v1/orders", request_body = CreateOrderRequest,
    responses((status = 201, body = OrderView), (status = 200, description = "replay of the same out_trade_no", body = OrderView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("merchant_signature" = [])))]
pub async fn create_order(gw: web::Data<Gateway>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut note = AuditNote::new("order.create");
    let result = create_order_inner(&gw, &req, payload, &mut note).await;
    finish(&gw, note, result)
}

async fn create_order_inner(
    gw: &Gateway,
    req: &HttpRequest,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let raw = read_body(req, payload).await?;
    let merchant = auth::require_merchant(gw, req, &raw).await?;
    note.actor = format!("merchant:{}", merchant.id);
    let body: CreateOrderRequest = parse(&raw)?;
    validate::merchant_key("out_trade_no", &body.out_trade_no)?;
    let amount = validate::amount(&body.amount_minor)?;
    let currency = validate::currency(&body.currency)?;
    if currency.as_str() != merchant.currency {
        return Err(ApiError::InvalidField {
            field: "currency",
            reason: format!("the merchant settles in {}", merchant.currency),
        });
    }
    validate::text("description", &body.description, 256)?;
    note.target = body.out_trade_no.clone();
    let request_hash = hash_hex(&[&body.out_trade_no, &amount.to_string(), currency.as_str(), &body.description]);
    let claim_key = format!("{}\n{}", merchant.id, body.out_trade_no);
    for _ in 0..2 {
        if let Some((claim, _)) = gw.store.get::<Claim>(ns::OUT_TRADE_NO, &claim_key).await? {
            same_request(&claim, &request_hash, "out_trade_no")?;
            let (record, _) = gw.store.get::<OrderRecord>(ns::ORDER, &claim.id).await?.ok_or(ApiError::Unavailable)?;
            note.target = record.id.clone();
            return Ok(json(StatusCode::OK, &order_view(gw, &record).await?));
        }
        let (id, order) = new_id("ord");
        let record = OrderRecord {
            id: id.clone(),
            merchant_id: merchant.id.clone(),
            out_trade_no: body.out_trade_no.clone(),
            amount_minor: amount,
            currency: currency.to_string(),
            description: body.description.clone(),
            created_at: now_secs(),
            payment: None,
            refunds: Vec::new(),
            notify_ids: Vec::new(),
        };
        let ops = vec![
            store::insert(ns::OUT_TRADE_NO, &claim_key, &Claim { id: id.clone(), request_hash: request_hash.clone() })?,
            store::insert(ns::ORDER, &id, &record)?,
            Operation::CreateOrder {
                order: OrderId(order),
                merchant: AccountId(merchant.account),
                amount: Money::new(amount, currency),
            },
        ];
        match gw.store.submit(TxnRequest::new(txn_key("ord"), ops)).await? {
            Ok(()) => {
                note.target = id;
                return Ok(json(StatusCode::CREATED, &order_view(gw, &record).await?));
            }
            // Another request claimed this out_trade_no first: answer as its replay.
            Err(AbortReason::RecordExists { .. }) => continue,
            Err(reason) => return Err(map_abort(reason)),
        }
    }
    Err(ApiError::Unavailable)
}

#[utoipa::path(get, path = "/v1/orders/{id}", params(("id" = String, Path, description = "order id")),
    responses((status = 200, body = OrderView), (status = 404, body = ErrorBody)),
    security(("merchant_signature" = []), ("admin_key" = [])))]
pub async fn get_order(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let caller = auth::any_caller(&gw, &req, &body).await?;
    let (record, _) = load_order(&gw, &caller, &path).await?;
    Ok(json(StatusCode::OK, &order_view(&gw, &record).await?))
}

#[utoipa::path(post, path = "/v1/orders/{id}/close", params(("id" = String, Path, description = "order id")),
    responses((status = 200, body = OrderView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("merchant_signature" = [])))]
pub async fn close_order(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let mut note = AuditNote::new("order.close");
    note.target = path.clone();
    let result = close_order_inner(&gw, &req, &path, payload, &mut note).await;
    finish(&gw, note, result)
}

async fn close_order_inner(
    gw: &Gateway,
    req: &HttpRequest,
    id: &str,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let raw = read_body(req, payload).await?;
    let merchant = auth::require_merchant(gw, req, &raw).await?;
    let caller = Caller::Merchant(Box::new(merchant));
    note.actor = caller.audit_name();
    let (record, _) = load_order(gw, &caller, id).await?;
    let order = OrderId(parse_id("ord", id).ok_or(ApiError::NotFound("order"))?);
    let ops = vec![Operation::CloseOrder { order }];
    match gw.store.submit(TxnRequest::new(txn_key("close"), ops)).await? {
        Ok(()) => {}
        Err(AbortReason::IllegalOrderTransition { from, .. }) => {
            return Err(ApiError::OrderNotClosable { status: from.to_string() })
        }
        Err(reason) => return Err(map_abort(reason)),
    }
    Ok(json(StatusCode::OK, &order_view(gw, &record).await?))
}

// ---------------------------------------------------------------- channels

/// The per-(channel, currency) clearing account: money arriving from or
/// returning to an external channel moves through it, so every payment is
/// a balanced transfer and the total money in the cluster is conserved.
pub fn clearing_account(channel: ChannelId, currency: Currency) -> AccountId {
    let digest = Sha256::digest(format!("paytx clearing {} {}", channel.0, currency).as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    // Above 2^60: never one of the gateway's random ids (< 2^53).
    AccountId((1u64 << 60) | (u64::from_le_bytes(bytes) >> 4))
}

/// The float a clearing account opens with: the channel's pre-funded
/// settlement balance, large enough never to run out in practice.
pub const CLEARING_FLOAT_MINOR: i64 = 1_000_000_000_000_000;

async fn ensure_clearing(gw: &Gateway, channel: ChannelId, currency: Currency) -> Result<AccountId, ApiError> {
    let account = clearing_account(channel, currency);
    if gw.store.account(account).await?.is_some() {
        return Ok(account);
    }
    // A fixed idempotency key: nodes racing to open it replay one another.
    let open = Operation::OpenAccount { account, currency, initial_minor: CLEARING_FLOAT_MINOR };
    match gw.store.submit(TxnRequest::new(format!("gw-clearing-{}-{}", channel.0, currency), vec![open])).await? {
        Ok(()) | Err(AbortReason::AccountExists(_)) => Ok(account),
        Err(reason) => Err(map_abort(reason)),
    }
}

/// Runs `build(channel)` through the routes of `method` until one channel
/// accepts: a decline is reported to the circuit breaker and the next
/// route is tried (a declined charge aborted the whole transaction, so
/// nothing was applied).
async fn through_channel<F>(
    gw: &Gateway,
    method: PayMethod,
    currency: Currency,
    mut build: F,
) -> Result<Result<ChannelId, AbortReason>, ApiError>
where
    F: FnMut(ChannelId, AccountId) -> Result<TxnRequest, ApiError>,
{
    let mut tried: Vec<ChannelId> = Vec::new();
    let mut last = None;
    for _ in 0..crate::routing::MAX_ROUTES_PER_METHOD {
        let picked = {
            let mut rng = rand::thread_rng();
            gw.router.pick(method, &tried, std::time::Instant::now(), &mut rng)
        };
        let Some(channel) = picked else { break };
        tried.push(channel);
        let clearing = ensure_clearing(gw, channel, currency).await?;
        match gw.store.submit(build(channel, clearing)?).await? {
            Ok(()) => {
                gw.router.report(channel, true, std::time::Instant::now());
                return Ok(Ok(channel));
            }
            Err(reason @ (AbortReason::ChannelDeclined { .. } | AbortReason::UnknownChannel(_))) => {
                gw.router.report(channel, false, std::time::Instant::now());
                last = Some(reason);
            }
            // The channel's clearing float cannot cover it: the channel says no.
            Err(AbortReason::InsufficientFunds { account, .. }) if account == clearing => {
                return Ok(Err(AbortReason::ChannelDeclined { channel }))
            }
            Err(reason) => return Ok(Err(reason)),
        }
    }
    match last {
        Some(reason) => Ok(Err(reason)),
        None => Err(ApiError::ChannelUnavailable),
    }
}

fn channel_method(text: &str) -> Result<PayMethod, ApiError> {
    PayMethod::parse(text).ok_or_else(|| ApiError::InvalidMethod(text.chars().take(32).collect()))
}

// ---------------------------------------------------------------- notifications

fn notification_ops(
    merchant: &MerchantRecord,
    order_id: &str,
    refund_id: Option<&str>,
    event: &str,
    data: serde_json::Value,
) -> Result<(String, Vec<Operation>), ApiError> {
    let (notify_id, _) = new_id("ntf");
    let now = now_ms();
    let payload = serde_json::json!({
        "notify_id": notify_id,
        "event": event,
        "merchant_id": merchant.id,
        "created_at": now / 1000,
        "data": data,
    });
    let record = NotificationRecord {
        notify_id: notify_id.clone(),
        merchant_id: merchant.id.clone(),
        order_id: order_id.to_string(),
        refund_id: refund_id.map(str::to_string),
        event: event.to_string(),
        url: merchant.notify_url.clone(),
        payload: payload.to_string(),
        status: "PENDING".into(),
        attempts: Vec::new(),
        created_at_ms: now,
        next_attempt_at_ms: now,
    };
    let ops = vec![
        store::insert(ns::NOTIFICATION, &notify_id, &record)?,
        store::insert(
            ns::NOTIFY_PENDING,
            &notify_id,
            &PendingRecord { notify_id: notify_id.clone(), next_attempt_at_ms: now },
        )?,
    ];
    Ok((notify_id, ops))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
pub struct NotificationQuery {
    /// The order whose notifications to list.
    pub order_id: Option<String>,
}

#[utoipa::path(get, path = "/v1/notifications", params(NotificationQuery),
    responses((status = 200, body = NotificationList), (status = 404, body = ErrorBody)),
    security(("merchant_signature" = []), ("admin_key" = [])))]
pub async fn list_notifications(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    query: web::Query<NotificationQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let caller = auth::any_caller(&gw, &req, &body).await?;
    let order_id = query.order_id.as_deref().ok_or(ApiError::MissingField("order_id".into()))?;
    let (record, _) = load_order(&gw, &caller, order_id).await?;
    let mut notifications = Vec::new();
    for notify_id in &record.notify_ids {
        if let Some((notification, _)) = gw.store.get::<NotificationRecord>(ns::NOTIFICATION, notify_id).await? {
            notifications.push(NotificationView::from(&notification));
        }
    }
    Ok(json(StatusCode::OK, &NotificationList { notifications }))
}

// ---------------------------------------------------------------- pay

#[utoipa::path(post, path = "/v1/orders/{id}/pay", request_body = PayOrderRequest,
    params(("id" = String, Path, description = "order id")),
    responses((status = 200, body = OrderView), (status = 400, body = ErrorBody), (status = 402, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("user_token" = [])))]
pub async fn pay_order(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let mut note = AuditNote::new("order.pay");
    note.target = path.clone();
    let result = pay_order_inner(&gw, &req, &path, payload, &mut note).await;
    finish(&gw, note, result)
}

async fn pay_order_inner(
    gw: &Gateway,
    req: &HttpRequest,
    id: &str,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let raw = read_body(req, payload).await?;
    let user_id = auth::require_user(gw, req)?;
    note.actor = format!("user:{user_id}");
    let body: PayOrderRequest = parse(&raw)?;
    let method = channel_method(&body.method)?;
    if method != PayMethod::Balance && !gw.router.supports(method) {
        return Err(ApiError::ChannelUnavailable);
    }
    let order = OrderId(parse_id("ord", id).ok_or(ApiError::NotFound("order"))?);
    let (user, _) = gw.store.get::<UserRecord>(ns::USER, &user_id).await?.ok_or(ApiError::InvalidToken)?;
    for attempt in 0..CAS_ATTEMPTS {
        if attempt > 0 {
            contention_backoff(attempt).await;
        }
        let (record, version) = gw.store.get::<OrderRecord>(ns::ORDER, id).await?.ok_or(ApiError::NotFound("order"))?;
        let live = gw.store.order(order).await?.ok_or(ApiError::NotFound("order"))?;
        if live.status != OrderStatus::Created {
            return Err(ApiError::OrderNotPayable { status: live.status.to_string() });
        }
        let (merchant, _) =
            gw.store.get::<MerchantRecord>(ns::MERCHANT, &record.merchant_id).await?.ok_or(ApiError::Internal)?;
        let currency = currency_of(&record.currency)?;
        let amount = Money::new(record.amount_minor, currency);
        let paid_at = now_secs();
        let data = |channel: Option<ChannelId>| {
            serde_json::json!({
                "order_id": record.id, "out_trade_no": record.out_trade_no, "status": "PAID",
                "amount_minor": record.amount_minor, "currency": record.currency,
                "method": method.as_str(), "channel_id": channel.map(|c| c.0), "paid_at": paid_at,
            })
        };
        let build = |channel: Option<ChannelId>, source: AccountId| -> Result<TxnRequest, ApiError> {
            let (notify_id, notify_ops) =
                notification_ops(&merchant, &record.id, None, "payment.succeeded", data(channel))?;
            let mut updated = record.clone();
            updated.payment = Some(PaymentInfo {
                method: method.as_str().into(),
                channel: channel.map(|c| c.0),
                user_id: user.id.clone(),
                paid_at,
            });
            updated.notify_ids.push(notify_id);
            let mut ops = vec![
                Operation::Debit { account: source, amount },
                Operation::Credit { account: AccountId(merchant.account), amount },
                Operation::MarkPaid { order, amount },
            ];
            if let Some(channel) = channel {
                ops.push(Operation::Charge { channel, order, amount });
            }
            ops.push(store::put(ns::ORDER, &record.id, &updated, RecordExpect::Version(version))?);
            ops.extend(notify_ops);
            Ok(TxnRequest::new(txn_key("pay"), ops))
        };
        let outcome = if method == PayMethod::Balance {
            if user.currency != record.currency {
                return Err(ApiError::CurrencyMismatch);
            }
            gw.store.submit(build(None, AccountId(user.account))?).await?
        } else {
            through_channel(gw, method, currency, |channel, clearing| build(Some(channel), clearing)).await?.map(|_| ())
        };
        match outcome {
            Ok(()) => {
                let (record, _) = gw.store.get::<OrderRecord>(ns::ORDER, id).await?.ok_or(ApiError::Internal)?;
                return Ok(json(StatusCode::OK, &order_view(gw, &record).await?));
            }
            Err(AbortReason::IllegalOrderTransition { from, .. }) => {
                return Err(ApiError::OrderNotPayable { status: from.to_string() })
            }
            // The order record moved (a concurrent payment or refund): look again.
            Err(AbortReason::RecordVersionMismatch { .. }) | Err(AbortReason::Conflict { .. }) => continue,
            Err(reason) => return Err(map_abort(reason)),
        }
    }
    Err(ApiError::Unavailable)
}

// ---------------------------------------------------------------- refunds

#[utoipa::path(post, path = "/v1/orders/{id}/refunds", request_body = CreateRefundRequest,
    params(("id" = String, Path, description = "order id")),
    responses((status = 201, body = RefundView), (status = 200, description = "replay of the same out_refund_no", body = RefundView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("merchant_signature" = [])))]
pub async fn create_refund(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let mut note = AuditNote::new("refund.create");
    note.target = path.clone();
    let result = create_refund_inner(&gw, &req, &path, payload, &mut note).await;
    finish(&gw, note, result)
}

async fn create_refund_inner(
    gw: &Gateway,
    req: &HttpRequest,
    id: &str,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let raw = read_body(req, payload).await?;
    let merchant = auth::require_merchant(gw, req, &raw).await?;
    note.actor = format!("merchant:{}", merchant.id);
    let body: CreateRefundRequest = parse(&raw)?;
    validate::merchant_key("out_refund_no", &body.out_refund_no)?;
    let amount_minor = validate::amount(&body.amount_minor)?;
    validate::text("reason", &body.reason, 256)?;
    let caller = Caller::Merchant(Box::new(merchant.clone()));
    let order = OrderId(parse_id("ord", id).ok_or(ApiError::NotFound("order"))?);
    let request_hash = hash_hex(&[id, &body.out_refund_no, &amount_minor.to_string(), &body.reason]);
    let claim_key = format!("{}\n{}", merchant.id, body.out_refund_no);
    let mut last_abort = ApiError::Unavailable;
    for attempt in 0..CAS_ATTEMPTS {
        if attempt > 0 {
            contention_backoff(attempt).await;
        }
        if let Some((claim, _)) = gw.store.get::<Claim>(ns::OUT_REFUND_NO, &claim_key).await? {
            same_request(&claim, &request_hash, "out_refund_no")?;
            let (refund, _) =
                gw.store.get::<RefundRecord>(ns::REFUND, &claim.id).await?.ok_or(ApiError::Unavailable)?;
            return Ok(json(StatusCode::OK, &RefundView::from(&refund)));
        }
        let (record, version) = load_order(gw, &caller, id).await?;
        let live = gw.store.order(order).await?.ok_or(ApiError::NotFound("order"))?;
        if !matches!(live.status, OrderStatus::Paid | OrderStatus::PartiallyRefunded) {
            return Err(ApiError::OrderNotRefundable { status: live.status.to_string() });
        }
        let remaining = live.amount.amount_minor.saturating_sub(live.refunded_minor);
        if amount_minor > remaining {
            return Err(ApiError::RefundExceedsPaid { requested_minor: amount_minor, remaining_minor: remaining });
        }
        if record.refunds.len() >= MAX_REFUNDS_PER_ORDER {
            return Err(ApiError::TooManyRefunds { max: MAX_REFUNDS_PER_ORDER });
        }
        let payment = record.payment.clone().ok_or(ApiError::Internal)?;
        let currency = currency_of(&record.currency)?;
        let amount = Money::new(amount_minor, currency);
        // The money goes back the way it came.
        let (target, channel) = match payment.channel {
            None => {
                let (payer, _) =
                    gw.store.get::<UserRecord>(ns::USER, &payment.user_id).await?.ok_or(ApiError::Internal)?;
                (AccountId(payer.account), None)
            }
            Some(channel) => (ensure_clearing(gw, ChannelId(channel), currency).await?, Some(ChannelId(channel))),
        };
        let (refund_id, _) = new_id("rfd");
        let data = serde_json::json!({
            "order_id": record.id, "out_trade_no": record.out_trade_no, "refund_id": refund_id,
            "out_refund_no": body.out_refund_no, "amount_minor": amount_minor, "currency": record.currency,
            "status": "SUCCEEDED",
        });
        let (notify_id, notify_ops) =
            notification_ops(&merchant, &record.id, Some(&refund_id), "refund.succeeded", data)?;
        let refund = RefundRecord {
            id: refund_id.clone(),
            order_id: record.id.clone(),
            merchant_id: merchant.id.clone(),
            out_refund_no: body.out_refund_no.clone(),
            amount_minor,
            currency: record.currency.clone(),
            reason: body.reason.clone(),
            method: payment.method.clone(),
            channel: payment.channel,
            notify_id: notify_id.clone(),
            created_at: now_secs(),
        };
        let mut updated = record.clone();
        updated.refunds.push(refund_id.clone());
        updated.notify_ids.push(notify_id);
        let mut ops = vec![
            Operation::Debit { account: AccountId(merchant.account), amount },
            Operation::Credit { account: target, amount },
            Operation::RefundOrder { order, amount },
        ];
        if let Some(channel) = channel {
            ops.push(Operation::ChannelRefund { channel, order, amount });
        }
        ops.push(store::insert(
            ns::OUT_REFUND_NO,
            &claim_key,
            &Claim { id: refund_id.clone(), request_hash: request_hash.clone() },
        )?);
        ops.push(store::insert(ns::REFUND, &refund_id, &refund)?);
        ops.push(store::put(ns::ORDER, &record.id, &updated, RecordExpect::Version(version))?);
        ops.extend(notify_ops);
        match gw.store.submit(TxnRequest::new(txn_key("rfd"), ops)).await? {
            Ok(()) => {
                note.target = refund_id;
                return Ok(json(StatusCode::CREATED, &RefundView::from(&refund)));
            }
            Err(AbortReason::RecordExists { .. })
            | Err(AbortReason::RecordVersionMismatch { .. })
            | Err(AbortReason::Conflict { .. }) => continue,
            // Racing refunds hold the merchant's money at prepare: look at
            // the order again, which names the real limit (what is left).
            Err(AbortReason::InsufficientFunds { .. }) => {
                last_abort = ApiError::InsufficientFunds;
                continue;
            }
            Err(AbortReason::IllegalOrderTransition { from, .. }) => {
                return Err(ApiError::OrderNotRefundable { status: from.to_string() })
            }
            Err(reason) => return Err(map_abort(reason)),
        }
    }
    Err(last_abort)
}

#[utoipa::path(get, path = "/v1/refunds/{id}", params(("id" = String, Path, description = "refund id")),
    responses((status = 200, body = RefundView), (status = 404, body = ErrorBody)),
    security(("merchant_signature" = []), ("admin_key" = [])))]
pub async fn get_refund(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let caller = auth::any_caller(&gw, &req, &body).await?;
    parse_id("rfd", &path).ok_or(ApiError::NotFound("refund"))?;
    let (refund, _) = gw.store.get::<RefundRecord>(ns::REFUND, &path).await?.ok_or(ApiError::NotFound("refund"))?;
    match &caller {
        Caller::Admin => {}
        Caller::Merchant(merchant) if merchant.id == refund.merchant_id => {}
        _ => return Err(ApiError::NotFound("refund")),
    }
    Ok(json(StatusCode::OK, &RefundView::from(&refund)))
}

// ---------------------------------------------------------------- top-ups

#[utoipa::path(post, path = "/v1/users/{id}/topups", request_body = CreateTopupRequest,
    params(("id" = String, Path, description = "user id")),
    responses((status = 201, body = TopupView), (status = 400, body = ErrorBody), (status = 402, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("user_token" = [])))]
pub async fn create_topup(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let mut note = AuditNote::new("topup.create");
    note.target = path.clone();
    let result = create_topup_inner(&gw, &req, &path, payload, &mut note).await;
    finish(&gw, note, result)
}

async fn create_topup_inner(
    gw: &Gateway,
    req: &HttpRequest,
    id: &str,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let raw = read_body(req, payload).await?;
    let user_id = auth::require_user(gw, req)?;
    note.actor = format!("user:{user_id}");
    if user_id != id {
        return Err(ApiError::Forbidden);
    }
    let body: CreateTopupRequest = parse(&raw)?;
    let method = channel_method(&body.method)?;
    if method == PayMethod::Balance {
        return Err(ApiError::InvalidMethod("balance (a top-up comes through a channel)".into()));
    }
    let amount_minor = validate::amount(&body.amount_minor)?;
    let (user, _) = gw.store.get::<UserRecord>(ns::USER, &user_id).await?.ok_or(ApiError::InvalidToken)?;
    let currency = currency_of(&user.currency)?;
    let amount = Money::new(amount_minor, currency);
    let (topup_id, topup_order) = new_id("top");
    let created_at = now_secs();
    let mut record = None;
    let outcome = through_channel(gw, method, currency, |channel, clearing| {
        let topup = TopupRecord {
            id: topup_id.clone(),
            user_id: user.id.clone(),
            method: method.as_str().into(),
            channel: channel.0,
            amount_minor,
            currency: user.currency.clone(),
            created_at,
        };
        let ops = vec![
            Operation::Debit { account: clearing, amount },
            Operation::Credit { account: AccountId(user.account), amount },
            // The channel's charge, keyed by the top-up's own number (a
            // top-up pays no order, the channel still records the charge).
            Operation::Charge { channel, order: OrderId(topup_order), amount },
            store::insert(ns::TOPUP, &topup_id, &topup)?,
        ];
        record = Some(topup);
        Ok(TxnRequest::new(txn_key("top"), ops))
    })
    .await?;
    outcome.map_err(map_abort)?;
    let topup = record.ok_or(ApiError::Internal)?;
    note.target = topup.id.clone();
    Ok(json(
        StatusCode::CREATED,
        &TopupView {
            id: topup.id,
            user_id: topup.user_id,
            status: "SUCCEEDED".into(),
            method: topup.method,
            channel_id: topup.channel,
            amount_minor,
            currency: topup.currency,
            created_at,
        },
    ))
}

// ---------------------------------------------------------------- accounts

#[utoipa::path(get, path = "/v1/accounts/{id}", params(("id" = String, Path, description = "account id")),
    responses((status = 200, body = AccountView), (status = 404, body = ErrorBody)),
    security(("user_token" = []), ("merchant_signature" = []), ("admin_key" = [])))]
pub async fn get_account(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let caller = auth::any_caller(&gw, &req, &body).await?;
    let account = parse_id("acct", &path).ok_or(ApiError::NotFound("account"))?;
    let (owner, _) =
        gw.store.get::<Owner>(ns::ACCOUNT_OWNER, &account.to_string()).await?.ok_or(ApiError::NotFound("account"))?;
    let allowed = match (&caller, &owner) {
        (Caller::Admin, _) => true,
        (Caller::User(me), Owner::User(owner)) => me == owner,
        (Caller::Merchant(me), Owner::Merchant(owner)) => &me.id == owner,
        _ => false,
    };
    if !allowed {
        return Err(ApiError::NotFound("account"));
    }
    let view = gw.store.account(AccountId(account)).await?.ok_or(ApiError::NotFound("account"))?;
    Ok(json(
        StatusCode::OK,
        &AccountView {
            id: path.clone(),
            currency: view.currency.to_string(),
            balance_minor: view.balance_minor,
            held_minor: view.held_minor,
            recent: view
                .recent
                .iter()
                .map(|e| EntryView {
                    txn: e.txn.to_string(),
                    delta_minor: e.delta_minor,
                    balance_after_minor: e.balance_after_minor,
                })
                .collect(),
        },
    ))
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("route"))
}
