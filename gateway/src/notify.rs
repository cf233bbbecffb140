//! Notification delivery: the transactional outbox's relay.
//!
//! Payments and refunds write a notification and an entry of the pending
//! index in their own transaction. This worker scans the pending index
//! (every records shard), POSTs each due notification to the merchant,
//! signed with the platform key, and records the attempt with a
//! compare-and-set on both records, rescheduling by the retry schedule or
//! finishing at `2xx` + body `success` (or when the schedule is exhausted).
//!
//! (decision) Only the node whose coordinator is the Raft leader delivers,
//! so merchants are not hammered by every node. During a leader change two
//! nodes may both deliver once: delivery is at-least-once, and the stable
//! `notify_id` lets merchants drop duplicates. Everything is in the cluster,
//! so pending deliveries survive crashes and leader changes.

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
/// Nonce records deleted per pass (bounded work).
const NONCE_CLEANUP_BATCH: usize = 128;

/// Runs until `stop` fires.
pub async fn run(gw: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let poll = Duration::from_millis(gw.config.notify_poll_ms.max(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => return,
        }
        if !is_leader(&gw).await {
            continue;
        }
        if let Err(error) = deliver_due(&gw).await {
            tracing::debug!(%error, "notification pass stopped early");
        }
        if let Err(error) = clean_nonces(&gw).await {
            tracing::debug!(%error, "nonce cleanup pass stopped early");
        }
    }
}

async fn is_leader(gw: &Gateway) -> bool {
    match gw.store.node_status().await {
        Ok(status) => status.leader == Some(status.node) && status.coordinator_ready,
        Err(_) => false,
    }
}

/// Most scan pages one pass reads (bounded work per pass, whatever the backlog).
const MAX_PAGES_PER_PASS: usize = 256;

/// Collects up to `limit` records of `ns` that pass `keep`, over every
/// records shard, reading at most [`MAX_PAGES_PER_PASS`] pages.
async fn scan_all<T: serde::de::DeserializeOwned>(
    gw: &Gateway,
    namespace: u16,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<(T, u64)>, crate::error::ApiError> {
    let mut out = Vec::new();
    let mut shard = 0u32;
    let mut shard_count = 1u32;
    let mut pages = 0usize;
    while shard < shard_count && out.len() < limit && pages < MAX_PAGES_PER_PASS {
        let mut after = None;
        loop {
            let page = gw.store.scan(shard, namespace, after, PAGE).await?;
            pages += 1;
            shard_count = page.shard_count;
            for record in &page.records {
                match serde_json::from_slice::<T>(&record.value) {
                    Ok(value) if keep(&value) && out.len() < limit => out.push((value, record.version)),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, namespace, "skipping an undecodable record"),
                }
            }
            after = page.records.last().map(|r| r.key);
            if !page.more || after.is_none() || out.len() >= limit || pages >= MAX_PAGES_PER_PASS {
                break;
            }
        }
        shard += 1;
    }
    Ok(out)
}

async fn deliver_due(gw: &Arc<Gateway>) -> Result<(), crate::error::ApiError> {
    let now = now_ms();
    let batch = gw.config.notify_batch.max(1);
    let due: Vec<(PendingRecord, u64)> =
        scan_all(gw, ns::NOTIFY_PENDING, batch, |p: &PendingRecord| p.next_attempt_at_ms <= now).await?;
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
    let body = match response.bytes().await {
        Ok(bytes) => String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ANSWER_BYTES)]).into_owned(),
        Err(_) => String::new(),
    };
    if (200..300).contains(&status) && body.trim() == "success" {
        Attempt { at_ms, http_status: Some(status), ok: true, error: None }
    } else if (200..300).contains(&status) {
        failed(Some(status), "the answer was not `success`".into())
    } else {
        failed(Some(status), format!("HTTP {status}"))
    }
}

/// Deletes nonce records older than twice the timestamp window (a request
/// that old is refused by its timestamp anyway).
async fn clean_nonces(gw: &Gateway) -> Result<(), crate::error::ApiError> {
    let cutoff = now_secs().saturating_sub(2 * gw.config.timestamp_window_secs);
    let expired: Vec<(NonceRecord, u64)> =
        scan_all(gw, ns::NONCE, NONCE_CLEANUP_BATCH, |n: &NonceRecord| n.timestamp < cutoff).await?;
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
