//! paytx node core: what one node runs, independent of sockets and disks.
//!
//! * [`config`]: the node configuration (TOML).
//! * [`core`]: [`NodeCore`] assembles a node's participant shards, its
//!   coordinator replica and 2PC driver on a given `Disk` and `Transport`.
//! * [`endpoint`]: what answers peers from before the core exists.
//! * [`service`]: [`NodeService`] handles and routes every message.
//! * [`balance`]: hands each group this node leads back to its preferred
//!   replica once that one keeps up (leaders spread again after a return).
//! * [`fail_stop`]: a disk write or fsync error stops the whole node.
//! * [`identity`]: which incarnation of the node's disk runs (new or
//!   rebuilt), and the replicas it has exchanged Raft messages with.
//! * [`free_space`]: the full-disk preflight check and its test seam.
//! * [`metrics`]: the counters a node updates as messages pass (Prometheus).
//! * [`timed_disk`]: the disk with every sync's latency observed.
//! * [`link`]: the node's outgoing transport (local calls short-circuit) and
//!   the [`LinkFilter`] that drops chosen messages in tests.
//!
//! The `paytx` crate runs it on TCP and sled; the simulator on simulated
//! links and memory.
#![forbid(unsafe_code)]

pub mod balance;
pub mod config;
pub mod core;
pub mod endpoint;
pub mod fail_stop;
pub mod free_space;
pub mod identity;
pub mod link;
pub mod metrics;
pub mod service;
pub mod shards;
pub mod timed_disk;

pub use crate::core::{NodeCore, NodeError};
pub use config::{ConfigError, CoordinatorSettings, Limits, NodeConfig, Peer};
pub use endpoint::PeerEndpoint;
pub use fail_stop::{FailStop, FailStopDisk};
pub use free_space::{FixedFreeSpace, FreeSpace};
pub use identity::{NodeIdentity, ReplicaBook};
pub use link::{LinkFilter, LinkRule, NodeTransport};
pub use metrics::NodeMetrics;
pub use service::NodeService;
