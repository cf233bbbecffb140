//! The simulated network: the `Transport` seam of every simulated node.
//!
//! A call is two legs, each delayed (seeded), each possibly dropped; a
//! request may be duplicated. Cut links and crashed nodes deliver nothing.
//! Every message is tagged with the sender's incarnation: a crashed node's
//! tasks that are still in flight can no longer reach anyone. The target
//! handles the request in a task of its own — as a server would — so a
//! caller that times out does not cancel the work at the target.

use crate::world::World;
use paytx_protocol::clock::NodeClock;
use paytx_protocol::{BoxFuture, NodeId, PeerRequest, PeerResponse, Transport, TransportError};
use std::time::Duration;

/// The transport of one incarnation of one node.
pub struct SimTransport {
    pub from: NodeId,
    pub incarnation: u64,
    pub world: World,
    /// The sender's clock: a call's timeout runs on it.
    pub clock: NodeClock,
}

/// A short name of a peer request, for the trace.
pub fn peer_label(request: &PeerRequest) -> String {
    match request {
        PeerRequest::Raft { group, to, kind, payload } => {
            format!("raft {group} to {to} {kind:?} ({} bytes)", payload.len())
        }
        PeerRequest::Prepare { txn, shard, ops } => format!("prepare {txn} on {shard} ({} ops)", ops.len()),
        PeerRequest::Decide { txn, shard, commit, .. } => format!("decide {txn} on {shard} commit={commit}"),
        PeerRequest::PrepareBatch { shard, prepares } => format!("prepare {} txns on {shard}", prepares.len()),
        PeerRequest::DecideBatch { shard, decisions } => format!("decide {} txns on {shard}", decisions.len()),
        PeerRequest::QueryDecision { txn } => format!("query decision of {txn}"),
        PeerRequest::Forward(request) => format!("forward {}", crate::workload::request_label(request)),
        PeerRequest::AuthHello { node, .. } => format!("auth hello from {node}"),
        PeerRequest::AuthProof { .. } => "auth proof".to_string(),
        PeerRequest::ReplicasSeen { node } => format!("which incarnations of {node} were seen"),
        PeerRequest::AdmitReplica { group, replica, .. } => format!("admit replica {replica} to {group}"),
        PeerRequest::Campaign { group, replica, .. } => format!("replica {replica} of {group}: campaign"),
    }
}

impl Transport for SimTransport {
    fn call(
        &self,
        to: NodeId,
        request: PeerRequest,
        timeout_ms: u64,
    ) -> BoxFuture<Result<PeerResponse, TransportError>> {
        let (world, from, incarnation, clock) = (self.world.clone(), self.from, self.incarnation, self.clock.clone());
        Box::pin(async move {
            let deadline = clock.now() + Duration::from_millis(timeout_ms);
            let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
            // Decide the request leg now (in call order: deterministic).
            let plan = {
                let mut state = world.lock();
                if !state.is_up(from, incarnation) {
                    return Err(TransportError::Unreachable { node: to, reason: "sender crashed".into() });
                }
                let target = state.nodes.get(&to).map(|slot| (slot.incarnation, slot.endpoint.clone()));
                match target {
                    None => return Err(TransportError::UnknownNode(to)),
                    Some((_, None)) => None, // down: connection refused after a delay
                    Some((target_incarnation, Some(service))) => {
                        let dropped = !state.link_open(from, to) || {
                            let p = state.faults.drop_per_million;
                            state.chance(p)
                        };
                        let duplicate = {
                            let p = state.faults.duplicate_per_million;
                            state.chance(p)
                        };
                        if dropped {
                            state.counters.messages_dropped += 1;
                        }
                        let delay = state.delay_ms();
                        let back_delay = state.delay_ms();
                        let dup_delay = state.delay_ms();
                        Some((target_incarnation, service, dropped, duplicate, delay, back_delay, dup_delay))
                    }
                }
            };
            let Some((target_incarnation, service, dropped, duplicate, delay, back_delay, dup_delay)) = plan else {
                tokio::time::sleep(Duration::from_millis(1)).await;
                return Err(TransportError::Unreachable { node: to, reason: "node is down".into() });
            };
            if !dropped {
                let world = world.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    if duplicate {
                        let (world, service, request) = (world.clone(), service.clone(), request.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(dup_delay)).await;
                            if deliverable(&world, from, incarnation, to, target_incarnation, &request, true) {
                                let _ = service.handle_peer(request).await;
                            }
                        });
                    }
                    if !deliverable(&world, from, incarnation, to, target_incarnation, &request, false) {
                        return;
                    }
                    let response = service.handle_peer(request).await;
                    // The reply leg: same rules, in the other direction.
                    let reply_lost = {
                        let mut state = world.lock();
                        let p = state.faults.drop_per_million;
                        !state.link_open(to, from) || state.chance(p)
                    };
                    if reply_lost {
                        world.lock().counters.messages_dropped += 1;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(back_delay)).await;
                    let alive = {
                        let state = world.lock();
                        state.is_up(to, target_incarnation) && state.is_up(from, incarnation)
                    };
                    if alive {
                        let _ = reply_tx.send(response);
                    }
                });
            }
            match clock.timeout_at(deadline, reply_rx).await {
                Ok(Ok(response)) => Ok(response),
                // Lost on the way: the caller only learns it by its timeout.
                Ok(Err(_)) => {
                    clock.sleep_until(deadline).await;
                    Err(TransportError::Timeout { node: to, timeout_ms })
                }
                Err(_) => Err(TransportError::Timeout { node: to, timeout_ms }),
            }
        })
    }
}

/// Checks that a request can still be delivered (both ends alive, link
/// open) and records the delivery in the trace.
fn deliverable(
    world: &World,
    from: NodeId,
    from_incarnation: u64,
    to: NodeId,
    to_incarnation: u64,
    request: &PeerRequest,
    duplicate: bool,
) -> bool {
    let mut state = world.lock();
    if !state.is_up(from, from_incarnation) || !state.is_up(to, to_incarnation) || !state.link_open(from, to) {
        state.counters.messages_dropped += 1;
        return false;
    }
    if duplicate {
        state.counters.messages_duplicated += 1;
    } else {
        state.counters.messages_delivered += 1;
    }
    let at = state.now_ms();
    state.trace.record_encoded(
        at,
        || format!("{from} -> {to}{} {}", if duplicate { " (dup)" } else { "" }, peer_label(request)),
        request,
    );
    true
}
