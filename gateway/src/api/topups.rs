//! Top-ups: a channel charge credited to the wallet.

use super::*;

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
    finish_durable(&gw, note, result).await
}

async fn create_topup_inner(
    gw: &Gateway,
    req: &HttpRequest,
    id: &str,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let raw = read_body(req, payload).await?;
    let user_id = auth::require_user(gw, req).await?;
    note.actor = format!("user:{user_id}");
    if user_id != id {
        return Err(ApiError::Forbidden);
    }
    let idem = idempotency::from_request(req, &format!("user:{user_id}"), &raw)?;
    note.idem = idem.clone();
    if let Some(replay) = idempotency::replayed(gw, &idem).await? {
        return Ok(replay);
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
    let created_at_ms = now_ms();
    let created_at = created_at_ms / 1_000;
    let mut answer = None;
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
        let mut ops = vec![
            Operation::Debit { account: clearing, amount },
            Operation::Credit { account: AccountId(user.account), amount },
            // The channel's charge, keyed by the top-up's own number (a
            // top-up pays no order, the channel still records the charge).
            Operation::Charge { channel, order: OrderId(topup_order), amount },
            store::insert(ns::TOPUP, &topup_id, &topup)?,
            wallet_op(
                &user.id,
                &WalletEntry {
                    at_ms: created_at_ms,
                    kind: "topup".into(),
                    delta_minor: amount_minor,
                    currency: user.currency.clone(),
                    reference: topup_id.clone(),
                },
                topup_order,
            )?,
        ];
        let view = TopupView {
            id: topup.id,
            user_id: topup.user_id,
            status: "SUCCEEDED".into(),
            method: topup.method,
            channel_id: topup.channel,
            amount_minor,
            currency: topup.currency,
            created_at,
        };
        // The answer is remembered by the transaction that moves the money.
        answer = Some(idempotency::with_answer(&idem, &mut ops, StatusCode::CREATED, &view)?);
        Ok(TxnRequest::new(txn_key("top"), ops))
    })
    .await?;
    match outcome {
        Ok(_) => {}
        Err(reason) if idem.as_ref().is_some_and(|i| i.lost_to_twin(&reason)) => {
            return idempotency::replayed(gw, &idem).await?.ok_or(ApiError::Unavailable);
        }
        Err(reason) => return Err(map_abort(reason)),
    }
    note.target = topup_id;
    idempotency::settle(gw, &idem).await?;
    answer.ok_or(ApiError::Internal)
}
