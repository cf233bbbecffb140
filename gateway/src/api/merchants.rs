//! Merchants: onboarding by the administrator.

use super::*;

#[utoipa::path(post, path = "/v1/merchants", request_body = CreateMerchantRequest,
    responses((status = 201, body = MerchantView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("admin_key" = [])))]
pub async fn create_merchant(gw: web::Data<Gateway>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut note = AuditNote::new("merchant.create");
    let result = create_merchant_inner(&gw, &req, payload, &mut note).await;
    finish(&gw, note, result).await
}

async fn create_merchant_inner(
    gw: &Gateway,
    req: &HttpRequest,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(req, payload).await?;
    note.actor = auth::require_admin(gw, req)?.audit_name();
    let idem = idempotency::from_request(req, "admin", &body)?;
    note.idem = idem.clone();
    if let Some(replay) = idempotency::replayed(gw, &idem).await? {
        return Ok(replay);
    }
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
    let mut ops = vec![
        store::insert(ns::MERCHANT, &id, &merchant)?,
        store::insert(ns::ACCOUNT_OWNER, &account.to_string(), &Owner::Merchant(id.clone()))?,
        Operation::OpenAccount { account: AccountId(account), currency, initial_minor: 0 },
    ];
    let view = MerchantView {
        id: id.clone(),
        name: merchant.name,
        notify_url: merchant.notify_url,
        account_id: format!("acct_{account}"),
        currency: merchant.currency,
        platform_public_key_pem: gw.platform_public_pem.clone(),
        created_at: merchant.created_at,
    };
    let answer = idempotency::with_answer(&idem, &mut ops, StatusCode::CREATED, &view)?;
    match gw.store.submit(TxnRequest::new(txn_key("mch"), ops)).await? {
        Ok(()) => {}
        Err(reason) if idem.as_ref().is_some_and(|i| i.lost_to_twin(&reason)) => {
            return idempotency::replayed(gw, &idem).await?.ok_or(ApiError::Unavailable);
        }
        Err(reason) => return Err(map_abort(reason)),
    }
    note.target = id;
    idempotency::settle(gw, &idem).await?;
    Ok(answer)
}
