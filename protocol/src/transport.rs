//! The `Transport` seam: how a node talks to another node.
//!
//! Production uses TCP with [`crate::frame`]s; the simulator uses in-memory
//! links that drop, delay, reorder and partition. Protocol code only ever
//! sees this trait.

use crate::ids::NodeId;
use crate::messages::{PeerRequest, PeerResponse};
use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future (what the seams return).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a node-to-node call failed. The caller cannot know whether the peer
/// processed the request: every peer request is idempotent for that reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("node {0} is not in the cluster configuration")]
    UnknownNode(NodeId),
    #[error("node {node} is unreachable: {reason}")]
    Unreachable { node: NodeId, reason: String },
    #[error("node {node} did not answer within {timeout_ms} ms")]
    Timeout { node: NodeId, timeout_ms: u64 },
    #[error("too many requests in flight to node {node} (limit {limit})")]
    Backpressure { node: NodeId, limit: usize },
    #[error("node {node} answered with a broken message: {reason}")]
    Protocol { node: NodeId, reason: String },
}

/// Sends a request to a node and waits for its answer.
pub trait Transport: Send + Sync + 'static {
    /// `timeout_ms` bounds the whole call, connection set-up included.
    fn call(
        &self,
        to: NodeId,
        request: PeerRequest,
        timeout_ms: u64,
    ) -> BoxFuture<Result<PeerResponse, TransportError>>;
}
