//! Starting one coordinator replica: openraft on the `Disk` and `Transport`
//! seams, with the transaction table as its state machine.

use crate::state_machine::{SharedTable, StateMachineStore};
use crate::types::{LogStore, NodeId, Raft};
use paytx_protocol::messages::RaftGroup;
use paytx_protocol::Transport;
use paytx_raft::network::{NetworkFactory, ReplicaRecorder};
pub use paytx_raft::settings::{initialize_if_new, max_rpc_bytes, RaftSettings, StartError as ReplicaError};
use paytx_storage::SharedDisk;
use std::sync::Arc;

/// A started replica.
pub struct Replica {
    pub raft: Raft,
    pub table: SharedTable,
}

/// Starts the replica `replica` (the node's replica id: its id and
/// incarnation), restoring whatever the disk holds.
pub async fn start_replica(
    replica: NodeId,
    disk: SharedDisk,
    transport: Arc<dyn Transport>,
    recorder: Arc<dyn ReplicaRecorder>,
    settings: &RaftSettings,
    max_frame_bytes: usize,
) -> Result<Replica, ReplicaError> {
    let config = paytx_raft::openraft_config(settings, "paytx")?;
    let log_store = LogStore::new(disk.clone());
    let state_machine = StateMachineStore::open(disk).map_err(|e| ReplicaError::Storage(e.to_string()))?;
    let table = state_machine.shared();
    let raft = Raft::new(
        replica,
        Arc::new(config),
        NetworkFactory::new(RaftGroup::Coordinator, transport, recorder, max_rpc_bytes(max_frame_bytes)),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| ReplicaError::Start(e.to_string()))?;
    Ok(Replica { raft, table })
}
