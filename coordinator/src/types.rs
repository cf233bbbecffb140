//! The openraft type configuration of the coordinator group.

use crate::runtime::SeededRuntime;
use crate::table::{Command, CommandResult};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// The coordinator group's Raft types: the log carries [`Command`]s,
    /// applying one yields a [`CommandResult`].
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = SeededRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type LogStore = paytx_storage::LogStore<TypeConfig>;
