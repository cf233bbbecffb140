//! Notifications: the outbox records a payment or refund writes, and their listing.

use super::*;

pub(crate) fn notification_ops(
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
