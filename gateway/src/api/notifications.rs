//! Notifications: the outbox records a payment or refund writes, and their listing.

use super::*;

pub(crate) fn notification_ops(
    merchant: &MerchantRecord,
    order_id: &str,
    refund_id: Option<&str>,
    event: &str,
    data: serde_json::Value,
) -> Result<(String, Vec<Operation>), ApiError> {
    let (notify_id, notify_number) = new_id("ntf");
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
        index::insert(
            index::partition(index::ins::NOTIFICATIONS_BY_ORDER, order_id)?,
            now,
            notify_number,
            &index::Pointer { id: notify_id.clone() },
        )?,
    ];
    Ok((notify_id, ops))
}

/// Pages of an order's notification index read at most (128 entries each;
/// an order has at most 1 + `MAX_REFUNDS_PER_ORDER` notifications).
const MAX_NOTIFICATION_PAGES: usize = 4;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[allow(dead_code)] // documents the parameter; it is parsed by name
pub struct NotificationQuery {
    /// The order whose notifications to list.
    pub order_id: Option<String>,
}

#[utoipa::path(get, path = "/v1/notifications", params(NotificationQuery),
    responses((status = 200, body = NotificationList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("merchant_signature" = []), ("admin_key" = [])))]
pub async fn list_notifications(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let caller = auth::any_caller(&gw, &req, &body).await?;
    // Parsed like the other queries: an unknown or repeated parameter is a
    // 400 naming it, not silently ignored.
    let params = query_params(&req, &["order_id"])?;
    let order_id = params.get("order_id").ok_or(ApiError::MissingField("order_id".into()))?;
    if order_id.is_empty() {
        return Err(ApiError::InvalidField { field: "order_id", reason: "an order id (ord_...)".into() });
    }
    let (record, _) = load_order(&gw, &caller, order_id).await?;
    // From the order's notification index, oldest first. An order has at
    // most one notification per payment and refund, so a few pages at most.
    let partition = index::partition(index::ins::NOTIFICATIONS_BY_ORDER, &record.id)?;
    let mut pointers: Vec<index::Pointer> = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_NOTIFICATION_PAGES {
        let page = index::read::<index::Pointer>(&gw.store, partition, (0, u64::MAX), false, cursor, 128).await?;
        pointers.extend(page.entries.into_iter().map(|(_, pointer)| pointer));
        match page.next_cursor {
            Some(next) => cursor = Some(index::decode_cursor(&next)?),
            None => break,
        }
    }
    let reads = pointers.iter().map(|p| gw.store.get::<NotificationRecord>(ns::NOTIFICATION, &p.id));
    let mut notifications = Vec::new();
    for found in futures::future::try_join_all(reads).await? {
        // The entry and the notification are written together: a miss is a bug.
        let (notification, _) = found.ok_or(ApiError::Internal)?;
        notifications.push(NotificationView::from(&notification));
    }
    Ok(json(StatusCode::OK, &NotificationList { notifications }))
}
