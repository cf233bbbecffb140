//! The node's outgoing `Transport`: the local node is called directly, other
//! nodes through the remote transport (TCP in production, simulated links
//! in the simulator); a [`LinkFilter`] can drop chosen messages (tests of lost
//! messages and partitions on real processes).

use crate::service::NodeService;
use paytx_protocol::clock::NodeClock;
use paytx_protocol::{BoxFuture, NodeId, PeerRequest, PeerResponse, Transport, TransportError};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

/// Decides whether a message from `from` to `to` is delivered.
pub type LinkRule = dyn Fn(NodeId, NodeId, &PeerRequest) -> bool + Send + Sync;

/// A shared, switchable message filter. Empty (everything delivered) by
/// default; clones share the rule.
#[derive(Clone, Default)]
pub struct LinkFilter {
    rule: Arc<RwLock<Option<Arc<LinkRule>>>>,
}

impl LinkFilter {
    /// Delivers only messages for which `allow(from, to, message)` is true.
    pub fn set(&self, allow: impl Fn(NodeId, NodeId, &PeerRequest) -> bool + Send + Sync + 'static) {
        *self.rule.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(allow));
    }

    /// Delivers everything again.
    pub fn clear(&self) {
        *self.rule.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn allows(&self, from: NodeId, to: NodeId, message: &PeerRequest) -> bool {
        let rule = self.rule.read().unwrap_or_else(|p| p.into_inner()).clone();
        rule.is_none_or(|allow| allow(from, to, message))
    }
}

/// The transport a node's coordinator and participants use.
pub struct NodeTransport {
    me: NodeId,
    local: Arc<OnceLock<Weak<NodeService>>>,
    remote: Arc<dyn Transport>,
    filter: LinkFilter,
    local_timeout_ms: u64,
    /// The node's clock: a call to itself times out on it.
    clock: NodeClock,
}

impl NodeTransport {
    pub fn new(
        me: NodeId,
        local: Arc<OnceLock<Weak<NodeService>>>,
        remote: Arc<dyn Transport>,
        filter: LinkFilter,
        local_timeout_ms: u64,
    ) -> Self {
        NodeTransport { me, local, remote, filter, local_timeout_ms, clock: NodeClock::current() }
    }
}

impl Transport for NodeTransport {
    fn call(
        &self,
        to: NodeId,
        request: PeerRequest,
        timeout_ms: u64,
    ) -> BoxFuture<Result<PeerResponse, TransportError>> {
        if !self.filter.allows(self.me, to, &request) {
            return Box::pin(async move {
                Err(TransportError::Unreachable { node: to, reason: "dropped by the link filter".into() })
            });
        }
        if to != self.me {
            return self.remote.call(to, request, timeout_ms);
        }
        // Calls to ourselves skip the socket (and its encoding) entirely.
        let service = self.local.get().and_then(Weak::upgrade);
        let budget_ms = timeout_ms.min(self.local_timeout_ms.max(1));
        let clock = self.clock.clone();
        Box::pin(async move {
            let Some(service) = service else {
                return Err(TransportError::Unreachable { node: to, reason: "the local node is stopping".into() });
            };
            clock
                .timeout(Duration::from_millis(budget_ms), service.handle_peer(request))
                .await
                .map_err(|_| TransportError::Timeout { node: to, timeout_ms: budget_ms })
        })
    }
}
