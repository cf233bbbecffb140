//! paytx: a Raft-replicated two-phase-commit transaction cluster for open
//! payment platforms.
//!
//! Embedding: [`Cluster`] starts an in-process cluster (each node on its own
//! thread, real TCP on loopback, real sled on disk) and hands out [`Client`]s.
//! Services elsewhere use [`Client`] against `paytx node` processes.
#![forbid(unsafe_code)]

pub mod admin;
pub mod chaos;
pub mod client;
pub mod cluster;
pub mod gateway;
pub mod net;
pub mod node;
pub mod plot;
pub mod report;
pub mod workload;

pub use client::{Client, ClientConfig, ClientError};
pub use cluster::{AdminOptions, Cluster, ClusterOptions, HttpOptions};
pub use paytx_node::{config, link, NodeConfig};
pub use paytx_protocol as protocol;
