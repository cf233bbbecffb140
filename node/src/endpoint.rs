//! [`PeerEndpoint`]: what answers a node's peer requests, from before its
//! core exists.
//!
//! A node starting on an empty data directory asks every peer whether an
//! earlier incarnation of it ran (`identity::resolve`), and only then starts
//! its groups. Its peers may be doing the same (a new cluster's nodes all
//! start empty), so that one question is answered from the replica book
//! while the rest of the node is still starting; everything else is refused
//! as the node not being up yet, and goes to the `NodeService` once it is.

use crate::identity::ReplicaBook;
use crate::service::NodeService;
use paytx_protocol::{PeerRequest, PeerResponse, Request, RequestError, Response};
use std::sync::{Arc, OnceLock};

pub struct PeerEndpoint {
    book: ReplicaBook,
    service: OnceLock<Arc<NodeService>>,
}

impl PeerEndpoint {
    pub fn new(book: ReplicaBook) -> Arc<PeerEndpoint> {
        Arc::new(PeerEndpoint { book, service: OnceLock::new() })
    }

    pub fn book(&self) -> &ReplicaBook {
        &self.book
    }

    /// The running node, once its core has started.
    pub fn service(&self) -> Option<Arc<NodeService>> {
        self.service.get().cloned()
    }

    pub(crate) fn set_service(&self, service: Arc<NodeService>) {
        // Set once, by the core that owns this endpoint.
        let _ = self.service.set(service);
    }

    /// A node-to-node request.
    pub async fn handle_peer(&self, request: PeerRequest) -> PeerResponse {
        if let Some(service) = self.service() {
            return service.handle_peer(request).await;
        }
        match request {
            PeerRequest::ReplicasSeen { node } => self.book.answer(node),
            // openraft backs off from an unreachable replica.
            PeerRequest::Raft { .. } => PeerResponse::Raft(Err("the node is starting".into())),
            _ => PeerResponse::Error(RequestError::ShuttingDown),
        }
    }

    /// A client request (refused until the node has started).
    pub async fn handle_request(&self, request: Request, forwardable: bool) -> Response {
        match self.service() {
            Some(service) => service.handle_request(request, forwardable).await,
            None => Response::Error(RequestError::ShuttingDown),
        }
    }
}
