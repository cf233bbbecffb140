//! `GET /health/live` (the process answers) and `GET /health/ready` (this
//! node can serve: it knows a coordinator leader, every shard it hosts
//! answers, no fail-stop; a leader must also have heard from a quorum
//! recently, since openraft 0.9 keeps an isolated leader a leader).

use super::AdminState;
use actix_web::{web, HttpResponse};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub node: u64,
    pub leader: Option<u64>,
    /// Why the node is not ready (empty when it is).
    pub reasons: Vec<String>,
}

/// How long a leader may go without a quorum's acknowledgement and still
/// call itself ready: two maximal election timeouts (a follower that lost
/// it would have started an election by then).
fn quorum_ack_bound_ms(state: &AdminState) -> u64 {
    state.config.raft.election_timeout_max_ms.saturating_mul(2)
}

/// Checks readiness now.
pub async fn readiness(state: &AdminState) -> Readiness {
    let service = &state.service;
    let mut reasons = Vec::new();
    if let Some(reason) = service.fail_stop().reason() {
        reasons.push(format!("fail-stop: {reason}"));
    }
    let mut leader = None;
    match service.raft_metrics() {
        None => reasons.push("the coordinator replica is shut down".into()),
        Some(metrics) => {
            // Raft ids are replica ids; readiness speaks of nodes.
            leader = metrics.current_leader.map(paytx_protocol::replica::node_of);
            match leader {
                None => reasons.push("no coordinator leader known".into()),
                Some(id) if id == service.id() => {
                    let bound_ms = quorum_ack_bound_ms(state);
                    match metrics.millis_since_quorum_ack {
                        Some(ms) if ms <= bound_ms => {}
                        Some(ms) => reasons.push(format!(
                            "this node leads but no quorum acknowledged it for {ms} ms (bound {bound_ms} ms)"
                        )),
                        None => reasons.push("this node leads but no quorum has acknowledged it yet".into()),
                    }
                }
                Some(_) => {}
            }
        }
    }
    let status = service.status().await;
    let hosted = service.shard_ids();
    for shard in hosted {
        if !status.shards.iter().any(|s| s.shard == shard) {
            reasons.push(format!("shard {shard} does not answer"));
        }
    }
    Readiness { ready: reasons.is_empty(), node: service.id(), leader, reasons }
}

pub async fn live(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "live": true, "node": state.service.id() }))
}

pub async fn ready(state: web::Data<AdminState>) -> HttpResponse {
    let readiness = readiness(&state).await;
    if readiness.ready {
        HttpResponse::Ok().json(readiness)
    } else {
        HttpResponse::ServiceUnavailable().json(readiness)
    }
}
