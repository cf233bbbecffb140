//! openraft's network (`RaftNetworkFactory`/`RaftNetwork`) over the
//! `Transport` seam, and the receiving side ([`handle_raft_rpc`]), for any
//! group's type configuration.
//!
//! A Raft RPC travels as `PeerRequest::Raft { group, to, kind, payload }`: the
//! group names which of the node's Raft instances it is for (the
//! coordinator's or one shard's); the payload is the bincode of openraft's
//! request; the answer's payload is the bincode of
//! `Result<response, RaftError>`, so a remote Raft error reaches openraft as
//! the typed `RemoteError` it expects.

use crate::{NodeId, PaytxRaftConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use openraft::Raft;
use paytx_protocol::messages::{RaftGroup, RaftRpcKind};
use paytx_protocol::replica::{node_of, ReplicaId};
use paytx_protocol::{BoxFuture, PeerRequest, PeerResponse, Transport, TransportError};
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use std::sync::Arc;

/// Room left in a frame around a Raft payload (the envelope, the request
/// id, the message tags).
pub const RPC_FRAME_OVERHEAD_BYTES: usize = 1024;

/// Remembers, durably, every replica this node has exchanged Raft messages
/// with, before the message takes effect.
///
/// That memory is how a node that restarts on an empty disk learns whether
/// an earlier incarnation of it ever took part in a group (voted, answered
/// an append, or led): if one did, a peer recorded it, and the node must
/// come back under a new replica id (see `paytx_protocol::replica`). So a
/// response is handed to openraft, and a request is processed, only once
/// [`ReplicaRecorder::record`] has made the sender durable. Recording is
/// once per replica id, so the cost is one synced write per peer per
/// incarnation, not one per message.
pub trait ReplicaRecorder: Send + Sync {
    /// `None` when `replica` is already durable (every message but a
    /// replica's first: no future, no allocation on the RPC path);
    /// otherwise the write to wait for.
    fn record(&self, replica: ReplicaId) -> Option<BoxFuture<Result<(), String>>>;
}

/// Waits until `replica` is durable in `recorder` (at once when it is).
async fn ensure_recorded(recorder: &dyn ReplicaRecorder, replica: ReplicaId) -> Result<(), String> {
    match recorder.record(replica) {
        Some(write) => write.await,
        None => Ok(()),
    }
}

/// Creates one [`PeerClient`] per target replica, for one group.
pub struct NetworkFactory<C> {
    group: RaftGroup,
    transport: Arc<dyn Transport>,
    recorder: Arc<dyn ReplicaRecorder>,
    max_rpc_bytes: usize,
    _config: PhantomData<fn() -> C>,
}

impl<C> Clone for NetworkFactory<C> {
    fn clone(&self) -> Self {
        NetworkFactory {
            group: self.group,
            transport: self.transport.clone(),
            recorder: self.recorder.clone(),
            max_rpc_bytes: self.max_rpc_bytes,
            _config: PhantomData,
        }
    }
}

impl<C> NetworkFactory<C> {
    /// `max_rpc_bytes`: the largest encoded Raft request that fits in one
    /// frame (the transport's `max_frame_bytes` less
    /// [`RPC_FRAME_OVERHEAD_BYTES`]).
    pub fn new(
        group: RaftGroup,
        transport: Arc<dyn Transport>,
        recorder: Arc<dyn ReplicaRecorder>,
        max_rpc_bytes: usize,
    ) -> Self {
        NetworkFactory { group, transport, recorder, max_rpc_bytes, _config: PhantomData }
    }
}

impl<C: PaytxRaftConfig> RaftNetworkFactory<C> for NetworkFactory<C> {
    type Network = PeerClient<C>;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> PeerClient<C> {
        PeerClient {
            group: self.group,
            target,
            transport: self.transport.clone(),
            recorder: self.recorder.clone(),
            max_rpc_bytes: self.max_rpc_bytes,
            _config: PhantomData,
        }
    }
}

/// Sends one group's Raft RPCs to one replica (at its node).
pub struct PeerClient<C> {
    group: RaftGroup,
    /// The replica id; messages go to `node_of(target)`.
    target: NodeId,
    transport: Arc<dyn Transport>,
    recorder: Arc<dyn ReplicaRecorder>,
    max_rpc_bytes: usize,
    _config: PhantomData<fn() -> C>,
}

/// How many of `entries` entries to send next when `encoded_bytes` of them
/// did not fit in `max_bytes`: proportionally fewer, with a margin, and at
/// least one (a single entry always fits: proposals are bounded by
/// `max_batch_bytes`, well below a frame).
pub fn entries_hint(entries: usize, encoded_bytes: usize, max_bytes: usize) -> u64 {
    let scaled = (entries as u128 * max_bytes as u128 * 3 / 4) / (encoded_bytes.max(1) as u128);
    (scaled as u64).clamp(1, (entries.max(2) - 1) as u64)
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WireError(String);

impl<C: PaytxRaftConfig> PeerClient<C> {
    async fn call<Req, Resp, E>(
        &self,
        kind: RaftRpcKind,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = paytx_protocol::encode(request)
            .map_err(|e| RPCError::Network(NetworkError::new(&WireError(e.to_string()))))?;
        self.call_encoded(kind, payload, option).await
    }

    async fn call_encoded<Resp, E>(
        &self,
        kind: RaftRpcKind,
        payload: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout_ms = u64::try_from(option.hard_ttl().as_millis()).unwrap_or(u64::MAX);
        let started = tokio::time::Instant::now();
        let request = PeerRequest::Raft { group: self.group, to: self.target, kind, payload };
        let reply = self.transport.call(node_of(self.target), request, timeout_ms).await;
        tracing::trace!(group = %self.group, target = self.target, ?kind, elapsed_us = started.elapsed().as_micros() as u64, "raft rpc");
        match reply {
            Ok(PeerResponse::Raft(Ok(bytes))) => {
                let decoded: Result<Resp, RaftError<NodeId, E>> = paytx_protocol::decode(&bytes)
                    .map_err(|e| RPCError::Network(NetworkError::new(&WireError(e.to_string()))))?;
                let response = decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))?;
                // The target took part: durable before openraft counts its
                // answer (see `ReplicaRecorder`).
                ensure_recorded(self.recorder.as_ref(), self.target)
                    .await
                    .map_err(|e| RPCError::Unreachable(Unreachable::new(&WireError(e))))?;
                Ok(response)
            }
            // The peer is up but its replica is not (shut down, starting):
            // unreachable, so openraft backs off instead of retrying hot.
            Ok(PeerResponse::Raft(Err(reason))) => Err(RPCError::Unreachable(Unreachable::new(&WireError(reason)))),
            Ok(other) => Err(RPCError::Network(NetworkError::new(&WireError(format!("unexpected reply {other:?}"))))),
            Err(e @ (TransportError::Unreachable { .. } | TransportError::UnknownNode(_))) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl<C: PaytxRaftConfig> RaftNetwork<C> for PeerClient<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let payload = paytx_protocol::encode(&rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&WireError(e.to_string()))))?;
        if payload.len() > self.max_rpc_bytes && rpc.entries.len() > 1 {
            // The codec would refuse the frame: tell openraft to send fewer
            // entries (it retries at once) rather than fail with a network
            // error it would retry with the same payload forever.
            let hint = entries_hint(rpc.entries.len(), payload.len(), self.max_rpc_bytes);
            tracing::debug!(
                group = %self.group,
                target = self.target,
                bytes = payload.len(),
                entries = rpc.entries.len(),
                hint,
                "append-entries too large; sending fewer"
            );
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(hint)));
        }
        self.call_encoded(RaftRpcKind::AppendEntries, payload, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(RaftRpcKind::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftRpcKind::Vote, &rpc, &option).await
    }
}

fn encode_result<T: Serialize, E: Serialize>(result: &Result<T, E>) -> Result<Vec<u8>, String> {
    paytx_protocol::encode(result).map_err(|e| e.to_string())
}

fn decode_request<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    paytx_protocol::decode(payload).map_err(|e| format!("undecodable raft rpc: {e}"))
}

/// Records the replica a request comes from: the leader or candidate its
/// vote names (every append, vote and snapshot request names one).
async fn record_sender(recorder: &dyn ReplicaRecorder, vote: &openraft::Vote<NodeId>) -> Result<(), String> {
    match vote.leader_id().voted_for() {
        Some(sender) => ensure_recorded(recorder, sender).await,
        None => Ok(()),
    }
}

/// Serves one Raft RPC received from a peer for replica `to`. A payload
/// that does not decode is answered with an error string; it never panics
/// the node. An RPC for another replica id than the local one (the old id
/// of a rebuilt node) is refused: answering it with the new replica's
/// empty log would look, to the leader, like that replica's log going
/// backwards — the amnesia the new id exists to rule out. The sender is
/// recorded (durably, once) before the request is processed.
pub async fn handle_raft_rpc<C: PaytxRaftConfig>(
    raft: &Raft<C>,
    recorder: &dyn ReplicaRecorder,
    to: ReplicaId,
    kind: RaftRpcKind,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let here = raft.metrics().borrow().id;
    if to != here {
        return Err(format!("replica {to} is not on this node, which runs replica {here}"));
    }
    match kind {
        RaftRpcKind::AppendEntries => {
            let rpc: AppendEntriesRequest<C> = decode_request(payload)?;
            record_sender(recorder, &rpc.vote).await?;
            encode_result(&raft.append_entries(rpc).await)
        }
        RaftRpcKind::Vote => {
            let rpc: VoteRequest<NodeId> = decode_request(payload)?;
            record_sender(recorder, &rpc.vote).await?;
            encode_result(&raft.vote(rpc).await)
        }
        RaftRpcKind::InstallSnapshot => {
            let rpc: InstallSnapshotRequest<C> = decode_request(payload)?;
            record_sender(recorder, &rpc.vote).await?;
            encode_result(&raft.install_snapshot(rpc).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::entries_hint;

    #[test]
    fn an_oversized_append_is_retried_with_proportionally_fewer_entries() {
        // 100 entries in 4 MB against a 1 MB frame: about 18 (with margin).
        assert_eq!(entries_hint(100, 4_000_000, 1_000_000), 18);
        // Never all of them again, never none.
        assert_eq!(entries_hint(2, 2_000_001, 2_000_000), 1);
        assert_eq!(entries_hint(10, 1 << 30, 1), 1);
    }
}
