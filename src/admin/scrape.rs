//! `GET /metrics`: the node's counters ([`paytx_node::NodeMetrics`], the
//! API's request counters) plus gauges and counters read, at scrape time,
//! from what the node already keeps: openraft's metrics, the driver's and
//! the table's status, the shards' status, the disk's sync counters, the
//! server's connection counters, `/proc/self/status`.
//!
//! Prometheus conventions: base units (`_seconds`, `_bytes`), `_total` on
//! counters, variable parts in labels. The README's "Operations" section
//! lists every name.

use super::AdminState;
use crate::net::Refusal;
use actix_web::{web, HttpResponse};
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Registers and returns a metric; the definitions are static, so a
/// failure is a programming error (caught by the scrape test).
fn add<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> Option<M> {
    match metric.and_then(|m| registry.register(Box::new(m.clone())).map(|()| m)) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::error!(error = %e, "a metric definition is invalid; left out of the scrape");
            None
        }
    }
}

fn gauge(registry: &Registry, name: &str, help: &str, value: i64) {
    if let Some(g) = add(registry, IntGauge::new(name, help)) {
        g.set(value);
    }
}

fn counter(registry: &Registry, name: &str, help: &str, value: u64) {
    if let Some(c) = add(registry, IntCounter::new(name, help)) {
        c.inc_by(value);
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The process's resident set size, in bytes, from `VmRSS` in
/// `/proc/self/status` (kB there; no page-size assumption needed).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The scrape's text.
pub async fn render(state: &AdminState) -> String {
    let service = &state.service;
    let extra = Registry::new();
    let ready = super::health::readiness(state).await;
    gauge(&extra, "paytx_node_ready", "1 when /health/ready answers 200.", i64::from(ready.ready));
    gauge(
        &extra,
        "paytx_node_fail_stopped",
        "1 once a disk write or fsync failed and the node stopped itself.",
        i64::from(service.fail_stop().reason().is_some()),
    );
    let status = service.status().await;
    if let Some(metrics) = service.raft_metrics() {
        gauge(&extra, "paytx_raft_term", "The coordinator replica's current Raft term.", to_i64(metrics.current_term));
        gauge(
            &extra,
            "paytx_raft_leader_id",
            "The coordinator leader this node knows (0: none).",
            metrics.current_leader.map(paytx_protocol::replica::node_of).map(to_i64).unwrap_or(0),
        );
        gauge(
            &extra,
            "paytx_raft_is_leader",
            "1 when this node is the coordinator leader.",
            i64::from(metrics.current_leader.map(paytx_protocol::replica::node_of) == Some(service.id())),
        );
        gauge(
            &extra,
            "paytx_raft_last_log_index",
            "Last index in this replica's Raft log.",
            metrics.last_log_index.map(to_i64).unwrap_or(0),
        );
        gauge(
            &extra,
            "paytx_raft_applied_index",
            "Last Raft index applied to this replica's table (committed and applied).",
            metrics.last_applied.map(|l| to_i64(l.index)).unwrap_or(0),
        );
        gauge(
            &extra,
            "paytx_raft_snapshot_index",
            "Last Raft index covered by this replica's snapshot.",
            metrics.snapshot.map(|l| to_i64(l.index)).unwrap_or(0),
        );
        if let Some(ms) = metrics.millis_since_quorum_ack {
            if let Some(g) = add(
                &extra,
                prometheus::Gauge::new(
                    "paytx_raft_quorum_ack_age_seconds",
                    "On the leader: time since a quorum last acknowledged it.",
                ),
            ) {
                g.set(ms as f64 / 1_000.0);
            }
        }
        if let Some(replication) = &metrics.replication {
            let last = metrics.last_log_index.unwrap_or(0);
            if let Some(lag) = add(
                &extra,
                IntGaugeVec::new(
                    Opts::new(
                        "paytx_raft_replication_lag_entries",
                        "On the leader: entries of its log a peer has not matched yet.",
                    ),
                    &["peer"],
                ),
            ) {
                for (peer, matched) in replication {
                    let matched = matched.map(|l| l.index).unwrap_or(0);
                    lag.with_label_values(&[peer.to_string().as_str()]).set(to_i64(last.saturating_sub(matched)));
                }
            }
        }
    }
    gauge(
        &extra,
        "paytx_txns_undecided",
        "Transactions in this replica's table without a decision (in flight).",
        to_i64(status.undecided_txns),
    );
    gauge(
        &extra,
        "paytx_txns_unacked",
        "Decided transactions in this replica's table some shard has not acknowledged.",
        to_i64(status.unacked_txns),
    );
    if let Some(driver) = service.driver_status().await {
        gauge(
            &extra,
            "paytx_txns_in_flight",
            "Transactions this node's coordinator engine drives now (0 on followers).",
            i64::try_from(driver.in_flight).unwrap_or(i64::MAX),
        );
        counter(
            &extra,
            "paytx_raft_proposals_total",
            "Raft entries this node's coordinator proposed (each a batch of commands).",
            driver.proposals,
        );
        counter(
            &extra,
            "paytx_raft_proposed_commands_total",
            "Commands in the Raft entries this node's coordinator proposed.",
            driver.proposed_commands,
        );
    }
    if let Some(batches) = service.batch_stats() {
        counter(
            &extra,
            "paytx_raft_applied_proposals_total",
            "Batched Raft entries this replica applied.",
            batches.proposals,
        );
        counter(
            &extra,
            "paytx_raft_applied_commands_total",
            "Commands in the batched Raft entries this replica applied.",
            batches.commands,
        );
    }
    if let Some(in_doubt) = add(
        &extra,
        IntGaugeVec::new(
            Opts::new("paytx_shard_in_doubt_txns", "Transactions a shard of this node prepared and has not decided."),
            &["shard"],
        ),
    ) {
        for shard in &status.shards {
            in_doubt.with_label_values(&[shard.shard.to_string().as_str()]).set(to_i64(shard.in_doubt));
        }
    }
    if let Some(entities) = add(
        &extra,
        IntGaugeVec::new(Opts::new("paytx_shard_entities", "Entities a shard of this node holds."), &["shard"]),
    ) {
        for shard in &status.shards {
            entities.with_label_values(&[shard.shard.to_string().as_str()]).set(to_i64(shard.entities));
        }
    }
    counter(
        &extra,
        "paytx_disk_sync_requests_total",
        "Syncs asked of this node's disk (every durability point).",
        status.disk_syncs,
    );
    counter(
        &extra,
        "paytx_disk_flushes_total",
        "Flushes (fsync) that served them (group commit: many requests per flush).",
        status.disk_flushes,
    );
    if let Ok(free) = fs2::available_space(&state.config.data_dir) {
        gauge(&extra, "paytx_disk_free_bytes", "Free space on the data directory's file system.", to_i64(free));
    }
    let net = state.server_counters.view();
    gauge(
        &extra,
        "paytx_net_open_connections",
        "Connections the native server holds open.",
        to_i64(net.open_connections),
    );
    counter(
        &extra,
        "paytx_net_accepted_connections_total",
        "Connections the native server accepted.",
        net.accepted_connections,
    );
    counter(&extra, "paytx_net_idle_closed_total", "Client connections closed for idleness.", net.idle_closed);
    if let Some(refusals) = add(
        &extra,
        IntCounterVec::new(
            Opts::new("paytx_net_refusals_total", "Connections or requests the native server refused, by limit."),
            &["limit"],
        ),
    ) {
        for (refusal, count) in Refusal::ALL.iter().zip(net.refusals) {
            refusals.with_label_values(&[refusal.label()]).inc_by(count);
        }
    }
    if let Some(rss) = resident_memory_bytes() {
        gauge(&extra, "process_resident_memory_bytes", "Resident memory size of the process.", to_i64(rss));
    }

    let mut families = service.metrics().registry().gather();
    if let Some(http) = &state.http_metrics {
        use prometheus::core::Collector as _;
        families.extend(http.requests.collect());
        families.extend(http.notifications.collect());
    }
    families.extend(extra.gather());
    // The encoder refuses a family without samples (a vector nobody used yet).
    families.retain(|f| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut text = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut text) {
        tracing::error!(error = %e, "encoding the scrape failed");
    }
    String::from_utf8_lossy(&text).into_owned()
}

pub async fn metrics(state: web::Data<AdminState>) -> HttpResponse {
    let text = render(&state).await;
    HttpResponse::Ok().content_type(prometheus::TEXT_FORMAT).body(text)
}
