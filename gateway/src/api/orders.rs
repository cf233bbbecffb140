//! Orders: create (idempotent by out_trade_no), read, close.

use super::*;

#[utoipa::path(post, path = "/v1/orders", request_body = CreateOrderRequest,
    responses((status = 201, body = OrderView), (status = 200, description = "replay of the same out_trade_no", body = OrderView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("merchant_signature" = [])))]
pub async fn create_order(gw: web::Data<Gateway>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut note = AuditNote::new("order.create");
    let result = create_order_inner(&gw, &req, payload, &mut note).await;
    finish(&gw, note, result).await
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
    let idem = idempotency::from_request(req, &format!("merchant:{}", merchant.id), &raw)?;
    note.idem = idem.clone();
    if let Some(replay) = idempotency::replayed(gw, &idem).await? {
        return Ok(replay);
    }
    let body: CreateOrderRequest = parse(&raw)?;
    validate::merchant_key("out_trade_no", &body.out_trade_no)?;
    validate::amount(&body.amount_minor)?;
    let currency = validate::currency(&body.currency)?;
    if currency.as_str() != merchant.currency {
        return Err(ApiError::InvalidField {
            field: "currency",
            reason: format!("the merchant settles in {}", merchant.currency),
        });
    }
    validate::text("description", &body.description, 256)?;
    note.target = body.out_trade_no.clone();
    let request_hash = order_request_hash(&body)?;
    let claim_key = format!("{}\n{}", merchant.id, body.out_trade_no);
    for _ in 0..2 {
        if let Some((claim, _)) = gw.store.get::<Claim>(ns::OUT_TRADE_NO, &claim_key).await? {
            same_request(&claim, &request_hash, "out_trade_no")?;
            let (record, _) = gw.store.get::<OrderRecord>(ns::ORDER, &claim.id).await?.ok_or(ApiError::Unavailable)?;
            note.target = record.id.clone();
            return Ok(json(StatusCode::OK, &order_view(gw, &record).await?));
        }
        let (id, order) = new_id("ord");
        let (record, mut ops) = order_creation_ops(&merchant, &id, order, &body, &request_hash, now_secs())?;
        let view = order_view_as(&record, OrderStatus::Created, 0)?;
        let answer = idempotency::with_answer(&idem, &mut ops, StatusCode::CREATED, &view)?;
        match gw.store.submit(TxnRequest::new(txn_key("ord"), ops)).await? {
            Ok(()) => {
                note.target = id;
                idempotency::settle(gw, &idem).await?;
                return Ok(answer);
            }
            Err(reason) if idem.as_ref().is_some_and(|i| i.lost_to_twin(&reason)) => {
                return idempotency::replayed(gw, &idem).await?.ok_or(ApiError::Unavailable);
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
    finish(&gw, note, result).await
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
    let idem = idempotency::from_request(req, &format!("merchant:{}", merchant.id), &raw)?;
    note.idem = idem.clone();
    if let Some(replay) = idempotency::replayed(gw, &idem).await? {
        return Ok(replay);
    }
    let caller = Caller::Merchant(Box::new(merchant));
    note.actor = caller.audit_name();
    let (record, _) = load_order(gw, &caller, id).await?;
    let order = OrderId(parse_id("ord", id).ok_or(ApiError::NotFound("order"))?);
    let mut ops = vec![Operation::CloseOrder { order }];
    ops.extend(status_move(&record, OrderStatus::Created, OrderStatus::Closed)?);
    let answer =
        idempotency::with_answer(&idem, &mut ops, StatusCode::OK, &order_view_as(&record, OrderStatus::Closed, 0)?)?;
    match gw.store.submit(TxnRequest::new(txn_key("close"), ops)).await? {
        Ok(()) => {}
        Err(reason) if idem.as_ref().is_some_and(|i| i.lost_to_twin(&reason)) => {
            return idempotency::replayed(gw, &idem).await?.ok_or(ApiError::Unavailable);
        }
        Err(AbortReason::IllegalOrderTransition { from, .. }) => {
            return Err(ApiError::OrderNotClosable { status: from.to_string() })
        }
        // The order left CREATED meanwhile (or is leaving it).
        Err(reason) if lost_a_race(&reason) => {
            let live = gw.store.order(order).await?.ok_or(ApiError::NotFound("order"))?;
            if live.status == OrderStatus::Created {
                return Err(ApiError::Unavailable);
            }
            return Err(ApiError::OrderNotClosable { status: live.status.to_string() });
        }
        Err(reason) => return Err(map_abort(reason)),
    }
    idempotency::settle(gw, &idem).await?;
    Ok(answer)
}

/// Everything the creation of order `id` (number `order`) writes, in one
/// transaction: the `out_trade_no` claim, the order record, its two index
/// entries and the order participant's `CreateOrder`. Shared with the
/// `paytx bench-orders` loader, so benchmark orders take the real path.
pub fn order_creation_ops(
    merchant: &MerchantRecord,
    id: &str,
    order: u64,
    body: &CreateOrderRequest,
    request_hash: &str,
    created_at: u64,
) -> Result<(OrderRecord, Vec<Operation>), ApiError> {
    let amount = validate::amount(&body.amount_minor)?;
    let currency = validate::currency(&body.currency)?;
    let claim_key = format!("{}\n{}", merchant.id, body.out_trade_no);
    let record = OrderRecord {
        id: id.to_string(),
        merchant_id: merchant.id.clone(),
        out_trade_no: body.out_trade_no.clone(),
        amount_minor: amount,
        currency: currency.to_string(),
        description: body.description.clone(),
        created_at,
        payment: None,
        refunds: Vec::new(),
        notify_ids: Vec::new(),
    };
    let pointer = index::Pointer { id: id.to_string() };
    let ops = vec![
        store::insert(
            ns::OUT_TRADE_NO,
            &claim_key,
            &Claim { id: id.to_string(), request_hash: request_hash.to_string() },
        )?,
        store::insert(ns::ORDER, id, &record)?,
        // The order's index entries, in the transaction that creates it.
        index::insert(index::partition(index::ins::ORDERS_BY_CREATED, &merchant.id)?, created_at, order, &pointer)?,
        index::insert(
            index::status_partition(&merchant.id, OrderStatus::Created.as_str())?,
            created_at,
            order,
            &pointer,
        )?,
        Operation::CreateOrder {
            order: OrderId(order),
            merchant: AccountId(merchant.account),
            amount: Money::new(amount, currency),
        },
    ];
    Ok((record, ops))
}

/// The request hash of an order creation (what "the same request" means
/// for its `out_trade_no`).
pub fn order_request_hash(body: &CreateOrderRequest) -> Result<String, ApiError> {
    let amount = validate::amount(&body.amount_minor)?;
    let currency = validate::currency(&body.currency)?;
    Ok(hash_hex(&[&body.out_trade_no, &amount.to_string(), currency.as_str(), &body.description]))
}
