//! Notification delivery: the transactional outbox's relay.
//!
//! Payments and refunds write a notification and an entry of the pending
//! index in their own transaction. This worker scans the pending index
//! (every records shard), POSTs each due notification to the merchant,
//! signed with the platform key, and records the attempt with a
//! compare-and-set on both records, rescheduling by the retry schedule or
//! finishing at `2xx` + body `success` (or when the schedule is exhausted).
//!
//! (decision) Only the gateway holding the delivery lease delivers, so
//! merchants are not hammered by every node. The lease is a record in the
//! cluster, taken and renewed by compare-and-set and expiring after
//! [`LEASE_MS`] of silence, so any node serving the API can take over when
//! the holder dies — whichever node is the Raft leader, and whether or not
//! it serves HTTP. (An earlier version delivered from the Raft leader's
//! gateway only, which delivered nothing while the leader was a node without
//! `http_listen`.) Around a takeover two nodes may both deliver once:
//! delivery is at-least-once, and the stable `notify_id` lets merchants drop
//! duplicates. Everything is in the cluster, so pending deliveries survive
//! crashes and leader changes.

use crate::model::{now_ms, now_secs, Attempt, NonceRecord, NotificationRecord, PendingRecord};
use crate::server::Gateway;
use crate::signing::{self, HEADER_MERCHANT, HEADER_NONCE, HEADER_NOTIFY_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use crate::store::{self, ns};
use paytx_protocol::{RecordExpect, TxnRequest};
use std::sync::Arc;
use std::time::Duration;

/// Most bytes of a merchant's answer read (we only look for `success`).
const MAX_ANSWER_BYTES: usize = 1024;
/// Records per scan page.
const PAGE: u32 = 64;
/// Notifications POSTed at once.
const CONCURRENCY: usize = 16;
/// Nonce records deleted per pass (bounded work). With one pass a second
/// and the cursor below, that sweeps faster than the cluster can claim nonces.
const NONCE_CLEANUP_BATCH: usize = 1024;

/// Runs until `stop` fires.
pub async fn run(gw: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let poll = Duration::from_millis(gw.config.notify_poll_ms.max(10));
    let mut pending_cursor = ScanCursor::default();
    let mut nonce_cursor = ScanCursor::default();
    let mut idempotency_cursor = ScanCursor::default();
    let mut session_cursor = ScanCursor::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => return,
        }
        if !hold_lease(&gw).await {
            continue;
        }
        if let Err(error) = deliver_due(&gw, &mut pending_cursor).await {
            tracing::debug!(%error, "notification pass stopped early");
        }
        if let Err(error) = clean_nonces(&gw, &mut nonce_cursor).await {
            tracing::debug!(%error, "nonce cleanup pass stopped early");
        }
        if let Err(error) = clean_expired(&gw, &mut idempotency_cursor, &mut session_cursor).await {
            tracing::debug!(%error, "idempotency/session cleanup pass stopped early");
        }
    }
}

/// How long the delivery lease lasts without renewal.
pub const LEASE_MS: u64 = 10_000;
/// The one lease record's application key.
const LEASE_KEY: &str = "notification-delivery";

/// The delivery lease, a record in the cluster.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct DeliveryLease {
    holder_node: u64,
    expires_at_ms: u64,
}

/// `true` when this node holds the delivery lease, taking it if it is free
/// or expired and renewing it when half of it is used up. Every write is a
/// compare-and-set on the lease record, so two nodes never both win the
/// same version.
async fn hold_lease(gw: &Gateway) -> bool {
    let now = now_ms();
    let current = match gw.store.get::<DeliveryLease>(ns::DELIVERY_LEASE, LEASE_KEY).await {
        Ok(current) => current,
        Err(_) => return false,
    };
    let expect = match &current {
        Some((lease, _)) if lease.holder_node != gw.node_id && lease.expires_at_ms > now => return false,
        Some((lease, _)) if lease.holder_node == gw.node_id && lease.expires_at_ms > now + LEASE_MS / 2 => return true,
        Some((_, version)) => RecordExpect::Version(*version),
        None => RecordExpect::Absent,
    };
    let lease = DeliveryLease { holder_node: gw.node_id, expires_at_ms: now + LEASE_MS };
    let Ok(op) = store::put(ns::DELIVERY_LEASE, LEASE_KEY, &lease, expect) else { return false };
    matches!(gw.store.submit(TxnRequest::new(crate::model::new_id("lease").0, vec![op])).await, Ok(Ok(())))
}

/// Most scan pages one pass reads (bounded work per pass, whatever the backlog).
const MAX_PAGES_PER_PASS: usize = 256;

/// Where the previous pass over a namespace stopped. Each pass resumes
/// there, so a backlog larger than one pass's budget is still swept
/// completely over successive passes, instead of every pass rereading the
/// same first pages (which would starve due notifications and expired
/// nonces further on).
#[derive(Debug, Clone, Copy)]
struct ScanCursor {
    shard: u32,
    after: Option<paytx_protocol::RecordKey>,
    /// Records shards, as last reported by a scan page.
    shard_count: u32,
}

impl Default for ScanCursor {
    fn default() -> Self {
        ScanCursor { shard: 0, after: None, shard_count: 1 }
    }
}

impl ScanCursor {
    /// Moves to the start of the next shard; `true` when that wrapped
    /// around to shard 0 (a full sweep is done).
    fn next_shard(&mut self) -> bool {
        self.after = None;
        self.shard = self.shard.saturating_add(1);
        if self.shard >= self.shard_count {
            self.shard = 0;
            return true;
        }
        false
    }
}

/// Collects up to `limit` records of `namespace` that pass `keep`, resuming
/// at `cursor` and reading at most [`MAX_PAGES_PER_PASS`] pages and at most
/// one full sweep of every records shard.
async fn scan_all<T: serde::de::DeserializeOwned>(
    gw: &Gateway,
    namespace: u16,
    cursor: &mut ScanCursor,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<(T, u64)>, crate::error::ApiError> {
    let mut out = Vec::new();
    let mut pages = 0usize;
    while out.len() < limit && pages < MAX_PAGES_PER_PASS {
        let page = match gw.store.scan(cursor.shard, namespace, cursor.after, PAGE).await {
            Ok(page) => page,
            Err(error) => {
                // An unreachable shard must not stall the others: the next
                // pass starts at the following shard.
                cursor.next_shard();
                return Err(error);
            }
        };
        pages += 1;
        cursor.shard_count = page.shard_count.max(1);
        for record in &page.records {
            if out.len() >= limit {
                return Ok(out);
            }
            cursor.after = Some(record.key);
            match serde_json::from_slice::<T>(&record.value) {
                Ok(value) if keep(&value) => out.push((value, record.version)),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, namespace, "skipping an undecodable record"),
            }
        }
        if (!page.more || page.records.is_empty()) && cursor.next_shard() {
            break;
        }
    }
    Ok(out)
}

async fn deliver_due(gw: &Arc<Gateway>, cursor: &mut ScanCursor) -> Result<(), crate::error::ApiError> {
    let now = now_ms();
    let batch = gw.config.notify_batch.max(1);
    let due: Vec<(PendingRecord, u64)> =
        scan_all(gw, ns::NOTIFY_PENDING, cursor, batch, |p: &PendingRecord| p.next_attempt_at_ms <= now).await?;
    for chunk in due.chunks(CONCURRENCY) {
        let attempts = chunk.iter().map(|(pending, version)| deliver_one(gw.clone(), pending.clone(), *version));
        futures::future::join_all(attempts).await;
    }
    Ok(())
}

async fn deliver_one(gw: Arc<Gateway>, pending: PendingRecord, pending_version: u64) {
    let Ok(Some((mut notification, version))) =
        gw.store.get::<NotificationRecord>(ns::NOTIFICATION, &pending.notify_id).await
    else {
        return;
    };
    if notification.status != "PENDING" {
        // Finished earlier but the index entry survived: drop it.
        let op = store::delete(ns::NOTIFY_PENDING, &pending.notify_id, RecordExpect::Version(pending_version));
        let _ = gw.store.submit(TxnRequest::new(crate::model::new_id("ntfdel").0, vec![op])).await;
        return;
    }
    let attempt = post(&gw, &notification).await;
    let ok = attempt.ok;
    notification.attempts.push(attempt);
    let schedule = &gw.schedule;
    let done = ok || notification.attempts.len() > schedule.len();
    let mut ops = Vec::new();
    if done {
        notification.status = if ok { "DELIVERED".into() } else { "FAILED".into() };
        ops.push(store::delete(ns::NOTIFY_PENDING, &pending.notify_id, RecordExpect::Version(pending_version)));
    } else {
        let delay = schedule[notification.attempts.len() - 1];
        notification.next_attempt_at_ms = now_ms() + delay.as_millis() as u64;
        let next =
            PendingRecord { notify_id: pending.notify_id.clone(), next_attempt_at_ms: notification.next_attempt_at_ms };
        match store::put(ns::NOTIFY_PENDING, &pending.notify_id, &next, RecordExpect::Version(pending_version)) {
            Ok(op) => ops.push(op),
            Err(_) => return,
        }
    }
    match store::put(ns::NOTIFICATION, &notification.notify_id, &notification, RecordExpect::Version(version)) {
        Ok(op) => ops.push(op),
        Err(_) => return,
    }
    match gw.store.submit(TxnRequest::new(crate::model::new_id("ntf-attempt").0, ops)).await {
        Ok(Ok(())) => {
            use crate::http_metrics::NotifyOutcome;
            let outcome = match (ok, done) {
                (true, _) => NotifyOutcome::Delivered,
                (false, false) => NotifyOutcome::Retrying,
                (false, true) => NotifyOutcome::GaveUp,
            };
            gw.metrics.observe_notification(outcome);
            tracing::info!(notify_id = %notification.notify_id, ok, attempts = notification.attempts.len(), "notification attempt recorded")
        }
        // Another node recorded an attempt concurrently (a leader change):
        // the merchant may see this one twice, deduplicated by notify_id.
        Ok(Err(reason)) => tracing::info!(%reason, notify_id = %notification.notify_id, "attempt not recorded"),
        Err(error) => tracing::warn!(%error, "recording a notification attempt failed"),
    }
}

async fn post(gw: &Gateway, notification: &NotificationRecord) -> Attempt {
    let at_ms = now_ms();
    let failed =
        |http_status: Option<u16>, error: String| Attempt { at_ms, http_status, ok: false, error: Some(error) };
    let Ok(url) = reqwest::Url::parse(&notification.url) else {
        return failed(None, "the notify_url does not parse".into());
    };
    let path_and_query = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    let timestamp = now_secs().to_string();
    let nonce = crate::model::new_id("n").0;
    let message =
        signing::canonical_string("POST", &path_and_query, &timestamp, &nonce, notification.payload.as_bytes());
    let signature = signing::sign(&gw.platform_key, &message);
    let request = gw
        .http
        .post(url)
        .header("Content-Type", "application/json")
        .header(HEADER_MERCHANT, &notification.merchant_id)
        .header(HEADER_TIMESTAMP, &timestamp)
        .header(HEADER_NONCE, &nonce)
        .header(HEADER_SIGNATURE, signature)
        .header(HEADER_NOTIFY_ID, &notification.notify_id)
        .body(notification.payload.clone());
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            return failed(
                None,
                format!("not delivered: {}", if error.is_timeout() { "timeout" } else { "connection failed" }),
            )
        }
    };
    let status = response.status().as_u16();
    let body = read_answer(response).await;
    if (200..300).contains(&status) && body.trim() == "success" {
        Attempt { at_ms, http_status: Some(status), ok: true, error: None }
    } else if (200..300).contains(&status) {
        failed(Some(status), "the answer was not `success`".into())
    } else {
        failed(Some(status), format!("HTTP {status}"))
    }
}

/// At most [`MAX_ANSWER_BYTES`] of the merchant's answer, read chunk by
/// chunk: a merchant streaming an endless body cannot fill our memory.
async fn read_answer(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ANSWER_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// Deletes nonce records older than twice the timestamp window (a request
/// that old is refused by its timestamp anyway).
async fn clean_nonces(gw: &Gateway, cursor: &mut ScanCursor) -> Result<(), crate::error::ApiError> {
    let cutoff = now_secs().saturating_sub(2 * gw.config.timestamp_window_secs);
    let expired: Vec<(NonceRecord, u64)> =
        scan_all(gw, ns::NONCE, cursor, NONCE_CLEANUP_BATCH, |n: &NonceRecord| n.timestamp < cutoff).await?;
    if expired.is_empty() {
        return Ok(());
    }
    let ops = expired
        .iter()
        .map(|(n, version)| {
            store::delete(ns::NONCE, &crate::auth::nonce_key(&n.merchant_id, &n.nonce), RecordExpect::Version(*version))
        })
        .collect::<Vec<_>>();
    for chunk in ops.chunks(32) {
        let _ = gw.store.submit(TxnRequest::new(crate::model::new_id("nonce-gc").0, chunk.to_vec())).await?;
    }
    Ok(())
}

/// Deletes remembered idempotency answers older than `idempotency_ttl_secs`
/// and expired sessions, bounded per pass like nonces (CAS on the version:
/// a record rewritten meanwhile stays).
async fn clean_expired(
    gw: &Gateway,
    idempotency_cursor: &mut ScanCursor,
    session_cursor: &mut ScanCursor,
) -> Result<(), crate::error::ApiError> {
    use crate::idempotency::Remembered;
    use crate::model::SessionRecord;
    let cutoff_ms = crate::model::now_ms().saturating_sub(gw.config.idempotency_ttl_secs.saturating_mul(1_000));
    let answers: Vec<(Remembered, u64)> =
        scan_all(gw, ns::IDEMPOTENCY, idempotency_cursor, NONCE_CLEANUP_BATCH, |r: &Remembered| {
            r.created_at_ms < cutoff_ms
        })
        .await?;
    let now = now_secs();
    let sessions: Vec<(SessionRecord, u64)> =
        scan_all(gw, ns::SESSION, session_cursor, NONCE_CLEANUP_BATCH, |s: &SessionRecord| s.expires_at <= now).await?;
    let ops = answers
        .iter()
        .map(|(r, version)| store::delete(ns::IDEMPOTENCY, &r.app_key, RecordExpect::Version(*version)))
        .chain(
            sessions
                .iter()
                .map(|(s, version)| store::delete(ns::SESSION, &s.session_id, RecordExpect::Version(*version))),
        )
        .collect::<Vec<_>>();
    for chunk in ops.chunks(32) {
        let _ = gw.store.submit(TxnRequest::new(crate::model::new_id("expiry-gc").0, chunk.to_vec())).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_walks_every_shard_and_wraps_once_per_sweep() {
        let mut cursor = ScanCursor { shard: 0, after: Some(paytx_protocol::RecordKey::new(1, b"k")), shard_count: 3 };
        assert!(!cursor.next_shard());
        assert_eq!((cursor.shard, cursor.after), (1, None), "the next shard starts at its first key");
        assert!(!cursor.next_shard());
        assert!(cursor.next_shard(), "leaving the last shard completes a sweep");
        assert_eq!(cursor.shard, 0);
    }

    #[tokio::test]
    async fn a_merchant_answer_is_read_only_up_to_the_cap() {
        let endless = vec![b's'; 4 * 1024 * 1024];
        let response = reqwest::Response::from(http::Response::new(endless));
        assert_eq!(read_answer(response).await.len(), MAX_ANSWER_BYTES);
        let response = reqwest::Response::from(http::Response::new("success".to_string()));
        assert_eq!(read_answer(response).await, "success");
    }
}
