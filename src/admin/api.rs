//! The admin JSON API (`/admin/v1/...`, admin key required). Documents in
//! [`super::views`]; README, "Operations", lists the endpoints.

use super::views::{ClusterStatus, NodeEntry, ShardProgress, TxnDetail, TxnList, TxnSummary};
use super::{check_admin_key, unauthorized, AdminState};
use crate::client::{Client, ClientConfig};
use actix_web::{web, HttpRequest, HttpResponse};
use paytx_coordinator::table::TxnRecord;
use paytx_protocol::messages::TxnState;
use paytx_protocol::{IdempotencyKey, Outcome, TxnId};

/// Most transactions one list answers (the table may hold thousands).
pub const MAX_LISTED_TXNS: usize = 1_000;
/// Bound on asking one other node for its status.
pub const PEER_STATUS_TIMEOUT_MS: u64 = 1_000;

/// A live record's state label.
fn state_of(record: &TxnRecord) -> &'static str {
    match &record.decision {
        None => "in_flight",
        Some(Outcome::Committed) => "committing",
        Some(Outcome::Aborted(_)) => "aborting",
    }
}

/// Every node of the cluster: this one from its own status, the others over
/// the native protocol (one short-lived connection each, in parallel).
pub async fn cluster_status(state: &AdminState) -> ClusterStatus {
    let me = state.service.id();
    let raft = state.service.raft_metrics();
    let leader = raft.as_ref().and_then(|m| m.current_leader).map(paytx_protocol::replica::node_of);
    // Keyed by node: a rebuilt node's replica id differs from its node id.
    let replication: Option<std::collections::BTreeMap<u64, _>> =
        raft.as_ref().and_then(|m| m.replication.clone()).map(|r| {
            r.into_iter().map(|(replica, matched)| (paytx_protocol::replica::node_of(replica), matched)).collect()
        });
    let last_log = raft.as_ref().and_then(|m| m.last_log_index).unwrap_or(0);
    let asks = state.config.peers.iter().map(|peer| {
        let (id, addr) = (peer.id, peer.addr);
        async move {
            if id == me {
                return (id, addr, Ok(state.service.status().await));
            }
            let config =
                ClientConfig { request_timeout_ms: PEER_STATUS_TIMEOUT_MS, max_retries: 0, ..Default::default() };
            let answer = async {
                let client = Client::connect_with(vec![addr], config).await?;
                client.node_status().await
            };
            let budget = std::time::Duration::from_millis(PEER_STATUS_TIMEOUT_MS * 2);
            let result = match tokio::time::timeout(budget, answer).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", PEER_STATUS_TIMEOUT_MS * 2)),
            };
            (id, addr, result)
        }
    });
    let answers = futures::future::join_all(asks).await;
    let nodes = answers
        .into_iter()
        .map(|(node, addr, result)| {
            let lag_entries = replication
                .as_ref()
                .and_then(|r| r.get(&node))
                .map(|matched| last_log.saturating_sub(matched.map(|l| l.index).unwrap_or(0)));
            match result {
                Ok(status) => {
                    let role = match (status.raft_term, status.leader) {
                        (None, _) => "coordinator down",
                        (Some(_), Some(l)) if l == node => "leader",
                        (Some(_), Some(_)) => "follower",
                        (Some(_), None) => "candidate",
                    };
                    NodeEntry { node, addr, role: role.into(), status: Some(status), error: None, lag_entries }
                }
                Err(error) => {
                    NodeEntry { node, addr, role: "unreachable".into(), status: None, error: Some(error), lag_entries }
                }
            }
        })
        .collect();
    ClusterStatus { answered_by: me, leader, nodes }
}

/// Live transactions of this replica's table, oldest first (by id: the
/// term, then the leader's sequence), with their ages.
pub async fn txn_list(state: &AdminState, limit: usize) -> TxnList {
    let limit = limit.min(MAX_LISTED_TXNS);
    let (total, rows) = state
        .service
        .with_table(|table| {
            let rows: Vec<(TxnId, String, &'static str, usize)> = table
                .txns()
                .take(limit)
                .map(|(txn, record)| (*txn, record.key.0.clone(), state_of(record), record.ops.len()))
                .collect();
            (table.txns().count(), rows)
        })
        .unwrap_or_default();
    let txns = rows
        .into_iter()
        .map(|(txn, key, label, ops)| TxnSummary {
            txn: txn.to_string(),
            key,
            state: label.into(),
            age_ms: state.history.age_ms(&txn),
            ops,
        })
        .collect();
    let status = state.service.status().await;
    let in_doubt_by_shard = status.shards.iter().map(|s| (s.shard.to_string(), s.in_doubt)).collect();
    TxnList { answered_by: state.service.id(), total, txns, in_doubt_by_shard }
}

/// One transaction by id (`txn-<term>.<node>.<seq>`) or idempotency key.
pub async fn txn_detail(state: &AdminState, id_or_key: &str) -> Option<TxnDetail> {
    let service = &state.service;
    let by_id = super::views::parse_txn_id(id_or_key);
    let found = service
        .with_table(|table| {
            if let Some(txn) = by_id {
                if let Some(record) = table.txn(&txn) {
                    return Some((txn, Some(record.clone()), None));
                }
            }
            let key = IdempotencyKey(id_or_key.to_string());
            let view = match table.status_of_key(&key) {
                Ok(view) => view?,
                Err(e) => {
                    // Shown as not found; the log says why.
                    tracing::warn!(%key, error = %e, "idempotency-key archive unreadable");
                    return None;
                }
            };
            Some((view.txn, table.txn(&view.txn).cloned(), Some(view.state)))
        })
        .flatten()?;
    let (txn, record, key_state) = found;
    let progress = service.txn_progress(txn).await;
    let shard_map = service.shard_map();
    let (key, state_label, decision, shards) = match record {
        Some(record) => {
            let split = shard_map.split(&record.ops);
            let shards = split
                .into_iter()
                .map(|(shard, ops)| {
                    let (vote, acked) = match &progress {
                        Some(p) if p.phase == "preparing" => {
                            let vote = if p.yes.contains(&shard) { "yes" } else { "pending" };
                            (vote.to_string(), None)
                        }
                        // Past preparing every vote was in (a NO decides an abort).
                        Some(p) if p.phase == "finishing" => ("in".to_string(), Some(p.acked.contains(&shard))),
                        Some(_) => ("in".to_string(), None),
                        None => ("unknown".to_string(), None),
                    };
                    let acked_after_ms = progress.as_ref().and_then(|p| p.times.as_ref()).and_then(|t| {
                        let acked_ms = t.acked_ms.get(&shard)?;
                        Some(acked_ms.saturating_sub(t.decided_ms?))
                    });
                    ShardProgress { shard: shard.to_string(), ops, vote, acked, acked_after_ms }
                })
                .collect();
            let decision = record.decision.clone().or_else(|| progress.as_ref().and_then(|p| p.outcome.clone()));
            (record.key.0.clone(), state_of(&record).to_string(), decision, shards)
        }
        None => {
            // Forgotten: every shard acknowledged; the key keeps the outcome.
            let decision = match key_state {
                Some(TxnState::Decided(outcome)) => Some(outcome),
                _ => None,
            };
            (id_or_key.to_string(), "finished".to_string(), decision, Vec::new())
        }
    };
    let age_ms = Some(state.history.age_ms(&txn)).filter(|ms| *ms > 0);
    let decided_after_ms =
        progress.as_ref().and_then(|p| p.times.as_ref()).and_then(|t| Some(t.decided_ms?.saturating_sub(t.begun_ms)));
    let refused = progress.and_then(|p| p.refused).map(|reason| reason.to_string());
    Some(TxnDetail {
        answered_by: service.id(),
        txn: txn.to_string(),
        key,
        state: state_label,
        decision,
        refused,
        shards,
        age_ms,
        decided_after_ms,
    })
}

pub async fn status(state: web::Data<AdminState>, req: HttpRequest) -> HttpResponse {
    if let Err(reason) = check_admin_key(&state, &req) {
        return unauthorized(reason);
    }
    HttpResponse::Ok().json(cluster_status(&state).await)
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

pub async fn txns(state: web::Data<AdminState>, req: HttpRequest, query: web::Query<ListQuery>) -> HttpResponse {
    if let Err(reason) = check_admin_key(&state, &req) {
        return unauthorized(reason);
    }
    HttpResponse::Ok().json(txn_list(&state, query.limit.unwrap_or(100)).await)
}

pub async fn txn(state: web::Data<AdminState>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    if let Err(reason) = check_admin_key(&state, &req) {
        return unauthorized(reason);
    }
    match txn_detail(&state, &path).await {
        Some(detail) => HttpResponse::Ok().json(detail),
        None => HttpResponse::NotFound().json(serde_json::json!({
            "error": "not_found",
            "reason": "no live transaction with this id and no remembered key (finished transactions are found by key)"
        })),
    }
}
