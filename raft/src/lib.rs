//! The Raft plumbing every paytx group shares: the coordinator group and
//! every replicated participant shard run openraft on the same pieces.
//!
//! * [`runtime`]: openraft's tokio runtime with a seeded RNG (determinism).
//! * [`network`]: openraft's network over the `Transport` seam; an RPC names
//!   its [`RaftGroup`], so one node serves many groups over one transport.
//! * [`settings`]: timings and limits (`[raft]`), and openraft's `Config`
//!   derived from them and from `max_frame_bytes`.
//! * [`snapshot`]: a group's current snapshot, persisted on the `Disk` seam.
//! * [`admit`]: a rebuilt node's new replica id joining a group (learner,
//!   catch-up, voter swap).
//! * [`handover`]: giving a group's leadership back to its preferred
//!   replica (openraft 0.9 has no leader transfer).
//! * [`kick`]: starting an election when two survivors livelock (openraft
//!   0.9 draws each replica's election timeout once).
//! * [`timers`]: an actor's timers on its node's clock (the clock seam,
//!   `paytx_protocol::clock`).
//!
//! Each group's log is a [`paytx_storage::LogStore`] in its own keyspaces of
//! the node's one disk, so one group commit covers every group's appends.
#![forbid(unsafe_code)]

pub mod admit;
pub mod handover;
pub mod kick;
pub mod network;
pub mod runtime;
pub mod settings;
pub mod snapshot;
pub mod timers;

pub use paytx_protocol::messages::RaftGroup;
pub use settings::{initialize_if_new, max_rpc_bytes, openraft_config, proposal_timeout_ms, RaftSettings, StartError};

/// A group member's Raft id: a replica id (`paytx_protocol::replica`),
/// the node id for a node's first incarnation.
pub type NodeId = paytx_protocol::replica::ReplicaId;

/// What a paytx group's openraft type configuration fixes: node ids are
/// the cluster's, nodes carry their address, entries are openraft's, and
/// snapshots travel as one buffer, and writes answer on a oneshot channel
/// (which membership changes need).
pub trait PaytxRaftConfig:
    openraft::RaftTypeConfig<
    NodeId = NodeId,
    Node = openraft::BasicNode,
    Entry = openraft::Entry<Self>,
    SnapshotData = std::io::Cursor<Vec<u8>>,
    Responder = openraft::impls::OneshotResponder<Self>,
>
{
}

impl<C> PaytxRaftConfig for C where
    C: openraft::RaftTypeConfig<
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<C>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        Responder = openraft::impls::OneshotResponder<C>,
    >
{
}
