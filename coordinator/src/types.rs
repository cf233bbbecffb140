//! The openraft type configuration of the coordinator group.

use crate::table::{Proposal, ProposalResult};
use paytx_raft::runtime::SeededRuntime;
use std::io::Cursor;

openraft::declare_raft_types!(
    /// The coordinator group's Raft types: an entry carries a [`Proposal`]
    /// (the commands of many transactions); applying one yields a
    /// [`ProposalResult`] (one result per command).
    pub TypeConfig:
        D = Proposal,
        R = ProposalResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = SeededRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type LogStore = paytx_storage::LogStore<TypeConfig>;
