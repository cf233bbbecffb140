//! Raft RPC payloads and replies as the coordinator decodes them off the
//! network (`coordinator/src/network.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use paytx_coordinator::{NodeId, TypeConfig};
use paytx_protocol::decode;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<AppendEntriesRequest<TypeConfig>>(data);
    let _ = decode::<VoteRequest<NodeId>>(data);
    let _ = decode::<InstallSnapshotRequest<TypeConfig>>(data);
    let _ = decode::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(data);
    let _ = decode::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(data);
    let _ = decode::<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>>(data);
});
