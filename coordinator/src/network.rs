//! openraft's network (`RaftNetworkFactory`/`RaftNetwork`) over the
//! `Transport` seam, and the receiving side ([`handle_raft_rpc`]).
//!
//! A Raft RPC travels as `PeerRequest::Raft { kind, payload }`: the payload
//! is the bincode of openraft's request; the answer's payload is the bincode
//! of `Result<response, RaftError>`, so a remote Raft error reaches openraft
//! as the typed `RemoteError` it expects.

use crate::types::{NodeId, Raft, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use paytx_protocol::messages::RaftRpcKind;
use paytx_protocol::{PeerRequest, PeerResponse, Transport, TransportError};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Arc;

/// Creates one [`PeerClient`] per target node.
#[derive(Clone)]
pub struct NetworkFactory {
    transport: Arc<dyn Transport>,
}

impl NetworkFactory {
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        NetworkFactory { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> PeerClient {
        PeerClient { target, transport: self.transport.clone() }
    }
}

/// Sends Raft RPCs to one node.
pub struct PeerClient {
    target: NodeId,
    transport: Arc<dyn Transport>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WireError(String);

impl PeerClient {
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
        let timeout_ms = u64::try_from(option.hard_ttl().as_millis()).unwrap_or(u64::MAX);
        let started = tokio::time::Instant::now();
        let reply = self.transport.call(self.target, PeerRequest::Raft { kind, payload }, timeout_ms).await;
        tracing::trace!(target = self.target, ?kind, elapsed_us = started.elapsed().as_micros() as u64, "raft rpc");
        match reply {
            Ok(PeerResponse::Raft(Ok(bytes))) => {
                let decoded: Result<Resp, RaftError<NodeId, E>> = paytx_protocol::decode(&bytes)
                    .map_err(|e| RPCError::Network(NetworkError::new(&WireError(e.to_string()))))?;
                decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
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

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftRpcKind::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
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

/// Serves one Raft RPC received from a peer. A payload that does not decode
/// is answered with an error string; it never panics the node.
pub async fn handle_raft_rpc(raft: &Raft, kind: RaftRpcKind, payload: &[u8]) -> Result<Vec<u8>, String> {
    match kind {
        RaftRpcKind::AppendEntries => {
            let rpc: AppendEntriesRequest<TypeConfig> = decode_request(payload)?;
            encode_result(&raft.append_entries(rpc).await)
        }
        RaftRpcKind::Vote => {
            let rpc: VoteRequest<NodeId> = decode_request(payload)?;
            encode_result(&raft.vote(rpc).await)
        }
        RaftRpcKind::InstallSnapshot => {
            let rpc: InstallSnapshotRequest<TypeConfig> = decode_request(payload)?;
            encode_result(&raft.install_snapshot(rpc).await)
        }
    }
}
