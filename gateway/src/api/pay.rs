//! Paying an order: one 2PC transaction for the money, the order and the notification.

use super::*;

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
    finish_durable(&gw, note, result).await
}

async fn pay_order_inner(
    gw: &Gateway,
    req: &HttpRequest,
    id: &str,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let raw = read_body(req, payload).await?;
    let user_id = auth::require_user(gw, req).await?;
    note.actor = format!("user:{user_id}");
    let idem = idempotency::from_request(req, &format!("user:{user_id}"), &raw)?;
    note.idem = idem.clone();
    if let Some(replay) = idempotency::replayed(gw, &idem).await? {
        return Ok(replay);
    }
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
        let paid_at_ms = now_ms();
        let paid_at = paid_at_ms / 1_000;
        let data = |channel: Option<ChannelId>| {
            serde_json::json!({
                "order_id": record.id, "out_trade_no": record.out_trade_no, "status": "PAID",
                "amount_minor": record.amount_minor, "currency": record.currency,
                "method": method.as_str(), "channel_id": channel.map(|c| c.0), "paid_at": paid_at,
            })
        };
        let mut answer = None;
        let mut build = |channel: Option<ChannelId>, source: AccountId| -> Result<TxnRequest, ApiError> {
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
            // Indexes, in the same transaction: the status entry moves, the
            // merchant's statement gets its line, a wallet its entry.
            ops.extend(status_move(&record, OrderStatus::Created, OrderStatus::Paid)?);
            let line = StatementLine {
                at_ms: 0, // the commit's (`statement_op`)
                order_id: record.id.clone(),
                out_trade_no: record.out_trade_no.clone(),
                kind: "payment".into(),
                method: method.as_str().into(),
                amount_minor: record.amount_minor,
                currency: record.currency.clone(),
                refund_id: None,
                out_refund_no: None,
            };
            ops.push(statement_op(&record.merchant_id, &line, order.0)?);
            if channel.is_none() {
                let entry = WalletEntry {
                    at_ms: paid_at_ms,
                    kind: "payment".into(),
                    delta_minor: record.amount_minor.checked_neg().ok_or(ApiError::InvalidAmount)?,
                    currency: record.currency.clone(),
                    reference: record.id.clone(),
                };
                ops.push(wallet_op(&user.id, &entry, order.0)?);
            }
            // The answer (the order as this payment leaves it) is remembered
            // by the payment's own transaction.
            let view = order_view_as(&updated, OrderStatus::Paid, 0)?;
            answer = Some(idempotency::with_answer(&idem, &mut ops, StatusCode::OK, &view)?);
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
                idempotency::settle(gw, &idem).await?;
                return answer.ok_or(ApiError::Internal);
            }
            Err(reason) if idem.as_ref().is_some_and(|i| i.lost_to_twin(&reason)) => {
                return idempotency::replayed(gw, &idem).await?.ok_or(ApiError::Unavailable);
            }
            Err(AbortReason::IllegalOrderTransition { from, .. }) => {
                return Err(ApiError::OrderNotPayable { status: from.to_string() })
            }
            // The order moved (a concurrent payment, close or refund): look again.
            Err(reason) if lost_a_race(&reason) => continue,
            Err(reason) => return Err(map_abort(reason)),
        }
    }
    Err(ApiError::Unavailable)
}
