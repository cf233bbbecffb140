//! Merchant and user queries served from the ordered indexes
//! ([`crate::index`]): a merchant's orders, an order's refunds, the daily
//! reconciliation statement, a user's wallet history. Each page is one range
//! read on one records shard, then point reads of what it lists.

use super::*;
use std::collections::BTreeMap;

/// Entries per page unless `limit` says otherwise, and the most it may say.
pub const DEFAULT_PAGE_LIMIT: u32 = 20;
pub const MAX_PAGE_LIMIT: u32 = 100;
/// Most lines one statement holds; a busier day is refused
/// (`statement_too_large`) rather than read without bound.
pub const MAX_STATEMENT_LINES: usize = 50_000;

/// The query string as `name → value`, refusing unknown and repeated
/// parameters by name (a typo such as `stauts=PAID` must not silently list
/// everything).
pub(crate) fn query_params(
    req: &HttpRequest,
    allowed: &[&'static str],
) -> Result<BTreeMap<&'static str, String>, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|_| ApiError::InvalidField { field: "query", reason: "not a valid query string".into() })?;
    let mut params = BTreeMap::new();
    for (name, value) in pairs.into_inner() {
        let Some(known) = allowed.iter().find(|known| **known == name) else {
            let shown: String = name.chars().take(32).collect();
            return Err(ApiError::InvalidField { field: "query", reason: format!("unknown parameter {shown:?}") });
        };
        if params.insert(*known, value).is_some() {
            return Err(ApiError::InvalidField { field: known, reason: "given more than once".into() });
        }
    }
    Ok(params)
}

fn unix_secs(params: &BTreeMap<&'static str, String>, field: &'static str) -> Result<Option<u64>, ApiError> {
    let Some(value) = params.get(field) else { return Ok(None) };
    let valid = !value.is_empty() && value.len() <= 12 && value.bytes().all(|b| b.is_ascii_digit());
    let secs = valid.then(|| value.parse::<u64>().ok()).flatten();
    secs.map(Some).ok_or(ApiError::InvalidField { field, reason: "Unix seconds: 0-999999999999".into() })
}

fn limit(params: &BTreeMap<&'static str, String>) -> Result<u32, ApiError> {
    let Some(value) = params.get("limit") else { return Ok(DEFAULT_PAGE_LIMIT) };
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_PAGE_LIMIT).contains(n) && value.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(ApiError::InvalidField { field: "limit", reason: format!("an integer 1-{MAX_PAGE_LIMIT}") })
}

fn cursor(params: &BTreeMap<&'static str, String>) -> Result<Option<[u8; 16]>, ApiError> {
    params.get("cursor").map(|c| index::decode_cursor(c)).transpose()
}

fn status(params: &BTreeMap<&'static str, String>) -> Result<Option<OrderStatus>, ApiError> {
    let Some(value) = params.get("status") else { return Ok(None) };
    let all = [
        OrderStatus::Created,
        OrderStatus::Paid,
        OrderStatus::PartiallyRefunded,
        OrderStatus::Refunded,
        OrderStatus::Closed,
    ];
    all.into_iter().find(|s| s.as_str() == value).map(Some).ok_or(ApiError::InvalidField {
        field: "status",
        reason: "CREATED, PAID, PARTIALLY_REFUNDED, REFUNDED or CLOSED".into(),
    })
}

/// Fills a page of index entries up to `limit` (a node may answer a page
/// short of it, bounded by bytes), at most a few range reads.
async fn read_up_to<T: DeserializeOwned>(
    gw: &Gateway,
    partition: paytx_protocol::Partition,
    times: (u64, u64),
    descending: bool,
    mut cursor: Option<[u8; 16]>,
    limit: u32,
) -> Result<index::Page<T>, ApiError> {
    let mut entries = Vec::new();
    for _ in 0..4 {
        let want = limit.saturating_sub(entries.len() as u32);
        let page = index::read::<T>(&gw.store, partition, times, descending, cursor, want).await?;
        entries.extend(page.entries);
        match page.next_cursor {
            Some(next) if (entries.len() as u32) < limit => cursor = Some(index::decode_cursor(&next)?),
            next => return Ok(index::Page { entries, next_cursor: next }),
        }
    }
    let next_cursor = cursor.map(index::encode_cursor);
    Ok(index::Page { entries, next_cursor })
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[allow(dead_code)] // documents the parameters; they are parsed by name
pub struct OrderListQuery {
    /// Oldest creation time included, Unix seconds.
    pub created_from: Option<u64>,
    /// Newest creation time included, Unix seconds.
    pub created_to: Option<u64>,
    /// `CREATED`, `PAID`, `PARTIALLY_REFUNDED`, `REFUNDED` or `CLOSED`.
    pub status: Option<String>,
    /// 1-100, default 20.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/orders", params(OrderListQuery),
    responses((status = 200, body = OrderList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("merchant_signature" = [])))]
pub async fn list_orders(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let merchant = auth::require_merchant_read(&gw, &req, &body).await?;
    let params = query_params(&req, &["created_from", "created_to", "status", "limit", "cursor"])?;
    let from = unix_secs(&params, "created_from")?.unwrap_or(0);
    let to = unix_secs(&params, "created_to")?.unwrap_or(u64::MAX);
    if from > to {
        return Err(ApiError::InvalidField { field: "created_to", reason: "before created_from".into() });
    }
    let (limit, cursor, status) = (limit(&params)?, cursor(&params)?, status(&params)?);
    let partition = match status {
        Some(status) => index::status_partition(&merchant.id, status.as_str())?,
        None => index::partition(index::ins::ORDERS_BY_CREATED, &merchant.id)?,
    };
    let page = read_up_to::<index::Pointer>(&gw, partition, (from, to), true, cursor, limit).await?;
    let records = page.entries.iter().map(|(_, pointer)| gw.store.get::<OrderRecord>(ns::ORDER, &pointer.id));
    let records = futures::future::try_join_all(records).await?;
    // The entry and the order are written by one transaction: a miss is a bug.
    let records: Vec<OrderRecord> = records
        .into_iter()
        .map(|found| found.map(|(record, _)| record).ok_or(ApiError::Internal))
        .collect::<Result<_, _>>()?;
    let views = futures::future::try_join_all(records.iter().map(|record| order_view(&gw, record))).await?;
    Ok(json(StatusCode::OK, &OrderList { data: views, next_cursor: page.next_cursor }))
}

#[utoipa::path(get, path = "/v1/orders/{id}/refunds", params(("id" = String, Path, description = "order id"),
        ("limit" = Option<u32>, Query, description = "1-100, default 20"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = RefundList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("merchant_signature" = [])))]
pub async fn list_refunds(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let merchant = auth::require_merchant_read(&gw, &req, &body).await?;
    let params = query_params(&req, &["limit", "cursor"])?;
    let (limit, cursor) = (limit(&params)?, cursor(&params)?);
    let (record, _) = load_order(&gw, &Caller::Merchant(Box::new(merchant)), &path).await?;
    let partition = index::partition(index::ins::REFUNDS_BY_ORDER, &record.id)?;
    let page = read_up_to::<index::Pointer>(&gw, partition, (0, u64::MAX), false, cursor, limit).await?;
    let refunds = page.entries.iter().map(|(_, pointer)| gw.store.get::<RefundRecord>(ns::REFUND, &pointer.id));
    let mut data = Vec::new();
    for found in futures::future::try_join_all(refunds).await? {
        let (refund, _) = found.ok_or(ApiError::Internal)?;
        data.push(RefundView::from(&refund));
    }
    Ok(json(StatusCode::OK, &RefundList { data, next_cursor: page.next_cursor }))
}

#[utoipa::path(get, path = "/v1/users/{id}/transactions", params(("id" = String, Path, description = "user id"),
        ("limit" = Option<u32>, Query, description = "1-100, default 20"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = TransactionList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("user_token" = [])))]
pub async fn list_user_transactions(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = auth::require_user(&gw, &req).await?;
    if user_id != *path {
        return Err(ApiError::Forbidden);
    }
    let params = query_params(&req, &["limit", "cursor"])?;
    let (limit, cursor) = (limit(&params)?, cursor(&params)?);
    let partition = index::partition(index::ins::WALLET_ENTRIES, &user_id)?;
    let page = read_up_to::<WalletEntry>(&gw, partition, (0, u64::MAX), true, cursor, limit).await?;
    let data = page.entries.into_iter().map(|(_, entry)| entry).collect();
    Ok(json(StatusCode::OK, &TransactionList { data, next_cursor: page.next_cursor }))
}

/// The statement's header line (the CSV columns).
pub const STATEMENT_HEADER: &str =
    "time,order_id,out_trade_no,type,method,amount_minor,currency,refund_id,out_refund_no\n";
/// The totals section's header line.
pub const TOTALS_HEADER: &str = "total,currency,payments_count,payments_minor,refunds_count,refunds_minor,net_minor\n";

#[derive(Default)]
struct Totals {
    payments: u64,
    payments_minor: i64,
    refunds: u64,
    refunds_minor: i64,
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn csv(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// The statement of `lines` (in commit order): one row per line, then the
/// totals per currency (the merchant's currency always, even at zero).
/// Checked arithmetic: an overflow is an error, never a wrong total.
pub fn render_statement(lines: &[StatementLine], merchant_currency: &str) -> Result<String, ApiError> {
    let mut out = String::from(STATEMENT_HEADER);
    let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
    totals.entry(merchant_currency.to_string()).or_default();
    for line in lines {
        let row = [
            index::rfc3339_ms(line.at_ms),
            csv(&line.order_id),
            csv(&line.out_trade_no),
            csv(&line.kind),
            csv(&line.method),
            line.amount_minor.to_string(),
            csv(&line.currency),
            csv(line.refund_id.as_deref().unwrap_or("")),
            csv(line.out_refund_no.as_deref().unwrap_or("")),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
        let total = totals.entry(line.currency.clone()).or_default();
        let overflow = || ApiError::Internal;
        if line.kind == "refund" {
            total.refunds = total.refunds.checked_add(1).ok_or_else(overflow)?;
            total.refunds_minor = total.refunds_minor.checked_add(line.amount_minor).ok_or_else(overflow)?;
        } else {
            total.payments = total.payments.checked_add(1).ok_or_else(overflow)?;
            total.payments_minor = total.payments_minor.checked_add(line.amount_minor).ok_or_else(overflow)?;
        }
    }
    out.push_str(TOTALS_HEADER);
    for (currency, total) in &totals {
        let net = total.payments_minor.checked_sub(total.refunds_minor).ok_or(ApiError::Internal)?;
        out.push_str(&format!(
            "total,{},{},{},{},{},{net}\n",
            csv(currency),
            total.payments,
            total.payments_minor,
            total.refunds,
            total.refunds_minor
        ));
    }
    Ok(out)
}

#[utoipa::path(get, path = "/v1/statements/{date}", params(("date" = String, Path, description = "YYYY-MM-DD (UTC)")),
    responses((status = 200, description = "text/csv, signed in X-Paytx-Signature", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("merchant_signature" = [])))]
pub async fn get_statement(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let merchant = auth::require_merchant_read(&gw, &req, &body).await?;
    query_params(&req, &[])?;
    let bad_date = || ApiError::InvalidField { field: "date", reason: "a date YYYY-MM-DD, 1970 or later".into() };
    let days = index::parse_day(&path).ok_or_else(bad_date)?;
    let day_ms = index::day_range_ms(days).ok_or_else(bad_date)?;
    // The lines that committed that day, by commit time; then those earlier
    // versions filed under the day (by the time they were built).
    let mut lines: Vec<(u64, u64, StatementLine)> = Vec::new();
    read_lines(&gw.store, index::statement_partition(&merchant.id)?, day_ms, &mut lines).await?;
    read_lines(&gw.store, index::legacy_statement_partition(&merchant.id, &path)?, (0, u64::MAX), &mut lines).await?;
    lines.sort_by_key(|(at_ms, number, _)| (*at_ms, *number));
    let lines: Vec<StatementLine> = lines.into_iter().map(|(at_ms, _, line)| StatementLine { at_ms, ..line }).collect();
    let csv = render_statement(&lines, &merchant.currency)?;
    let signature = crate::signing::sign(&gw.platform_key, csv.as_bytes());
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((STATEMENT_SIGNATURE_HEADER, signature))
        .body(csv))
}

/// Appends the lines of `partition` with a time in `from_ms..=to_ms`, each
/// with its time and number (the key's), page by page; more than
/// [`MAX_STATEMENT_LINES`] in all is `413 statement_too_large`.
async fn read_lines(
    store: &crate::store::Store,
    partition: paytx_protocol::Partition,
    (from_ms, to_ms): (u64, u64),
    lines: &mut Vec<(u64, u64, StatementLine)>,
) -> Result<(), ApiError> {
    let mut cursor = None;
    loop {
        let page = index::read::<StatementLine>(store, partition, (from_ms, to_ms), false, cursor, 128).await?;
        lines.extend(page.entries.into_iter().map(|((at_ms, number), line)| (at_ms, number, line)));
        if lines.len() > MAX_STATEMENT_LINES {
            return Err(ApiError::StatementTooLarge { max_lines: MAX_STATEMENT_LINES });
        }
        match page.next_cursor {
            Some(next) => cursor = Some(index::decode_cursor(&next)?),
            None => return Ok(()),
        }
    }
}

/// The header carrying the platform's RSA-SHA256 signature (base64) of a
/// statement's body.
pub const STATEMENT_SIGNATURE_HEADER: &str = "X-Paytx-Signature";

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: &str, amount_minor: i64, currency: &str) -> StatementLine {
        StatementLine {
            at_ms: 1_764_547_200_000,
            order_id: "ord_1".into(),
            out_trade_no: "T,1".into(),
            kind: kind.into(),
            method: "alipay".into(),
            amount_minor,
            currency: currency.into(),
            refund_id: (kind == "refund").then(|| "rfd_2".into()),
            out_refund_no: (kind == "refund").then(|| "R1".into()),
        }
    }

    #[test]
    fn statement_totals_per_currency_and_an_empty_day_is_a_zero_row() {
        let empty = render_statement(&[], "CNY").unwrap();
        assert_eq!(empty, format!("{STATEMENT_HEADER}{TOTALS_HEADER}total,CNY,0,0,0,0,0\n"));
        let lines = [line("payment", 1_000, "CNY"), line("payment", 250, "CNY"), line("refund", 300, "CNY")];
        let csv = render_statement(&lines, "CNY").unwrap();
        assert!(csv.ends_with("total,CNY,2,1250,1,300,950\n"), "{csv}");
        assert!(csv.contains("2025-12-01T00:00:00.000Z,ord_1,\"T,1\",refund,alipay,300,CNY,rfd_2,R1\n"), "{csv}");
        let overflow = [line("payment", i64::MAX, "CNY"), line("payment", 1, "CNY")];
        assert_eq!(render_statement(&overflow, "CNY"), Err(ApiError::Internal));
    }
}
