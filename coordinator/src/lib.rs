//! The paytx coordinator: a Raft group (openraft) whose replicated state is
//! the transaction table, and the two-phase-commit driver that runs on its
//! leader.
//!
//! * [`table`]: the replicated transaction table and its commands (pure).
//! * [`engine`]: the 2PC coordinator as a state machine — events in,
//!   commands out, no I/O (pure, unit-tested, drivable by the simulator).
//! * [`driver`]: the actix actor that runs the engine: proposes through Raft,
//!   talks to participants through the `Transport` seam, keeps timers.
//! * [`state_machine`], [`types`]: the openraft glue (the network and the
//!   runtime are `paytx-raft`'s, shared with the shard groups).
#![forbid(unsafe_code)]

pub mod archive;
pub mod driver;
pub mod engine;
pub mod epoch;
pub mod replica;
pub mod state_machine;
pub mod table;
pub mod types;

/// The group plumbing, shared with the participant shard groups.
pub use paytx_raft::{network, runtime};

pub use driver::{CoordinatorDriver, DriverConfig};
pub use replica::{initialize_if_new, start_replica, RaftSettings, Replica, ReplicaError};
pub use types::{NodeId, Raft, TypeConfig};
