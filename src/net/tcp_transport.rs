//! [`TcpTransport`]: the production [`Transport`] (node ↔ node over TCP).
//!
//! One multiplexed [`Connection`] per peer, opened on first use, shared by
//! every call to that peer, and replaced when it closes. A peer that refuses
//! connections is retried after an exponential backoff (bounded), and calls
//! made during the backoff fail at once with `Unreachable`: a dead peer costs
//! one connect attempt per backoff period, not one per call.

use super::connection::{Connection, ConnectionError, ConnectionLimits};
use paytx_protocol::auth;
use paytx_protocol::{BoxFuture, Message, NodeId, PeerRequest, PeerResponse, RequestError, Transport, TransportError};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Limits of a [`TcpTransport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportLimits {
    /// Limits of each peer connection.
    pub connection: ConnectionLimits,
    /// Wait after the first failed connect before trying again, in ms.
    pub reconnect_backoff_min_ms: u64,
    /// The backoff doubles per consecutive failure up to this, in ms.
    pub reconnect_backoff_max_ms: u64,
    /// Authenticate every new connection as this node with the cluster
    /// secret (see [`paytx_protocol::auth`]). `None`: no handshake.
    pub auth: Option<PeerCredentials>,
}

/// Who this node is, and the secret it proves it knows.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerCredentials {
    pub node: NodeId,
    pub secret: Arc<[u8]>,
    /// This node's cluster-wide configuration, sent in the hello.
    pub config: auth::ConfigDigest,
}

impl std::fmt::Debug for PeerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("PeerCredentials").field("node", &self.node).finish_non_exhaustive()
    }
}

/// The connector's side of the handshake on a fresh connection.
async fn authenticate(connection: &Connection, credentials: &PeerCredentials, timeout_ms: u64) -> Result<(), String> {
    let client_nonce: auth::Nonce = rand::random();
    let hello =
        PeerRequest::AuthHello { node: credentials.node, nonce: client_nonce, config: credentials.config.clone() };
    let challenge = connection.call(Message::Peer(hello), timeout_ms).await.map_err(|e| e.to_string())?;
    let (server_nonce, proof) = match challenge {
        Message::PeerReply(PeerResponse::AuthChallenge { nonce, proof }) => (nonce, proof),
        Message::PeerReply(PeerResponse::Error(refused)) => return Err(format!("the peer refused us: {refused}")),
        other => return Err(format!("unexpected answer to the handshake: {other:?}")),
    };
    if !auth::verify_server(&credentials.secret, credentials.node, &client_nonce, &server_nonce, &proof) {
        return Err("the peer does not know the cluster secret".to_string());
    }
    let proof = auth::client_proof(&credentials.secret, credentials.node, &client_nonce, &server_nonce);
    match connection.call(Message::Peer(PeerRequest::AuthProof { proof }), timeout_ms).await {
        Ok(Message::PeerReply(PeerResponse::Acked)) => Ok(()),
        Ok(other) => Err(format!("the peer refused our proof: {other:?} (is cluster_secret the same on every node?)")),
        Err(e) => Err(e.to_string()),
    }
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            connection: ConnectionLimits::default(),
            reconnect_backoff_min_ms: 10,
            reconnect_backoff_max_ms: 1_000,
            auth: None,
        }
    }
}

/// A peer's connection and its reconnect bookkeeping. Behind a tokio mutex
/// (held across the connect, so only one connect per peer is ever in flight;
/// a std mutex must never be held across an await).
#[derive(Default)]
struct PeerState {
    connection: Option<Connection>,
    consecutive_failures: u32,
    /// No connect attempt before this instant (tokio time: the clock seam).
    retry_at: Option<Instant>,
    last_error: String,
}

struct Peer {
    addr: SocketAddr,
    state: Mutex<PeerState>,
}

struct Inner {
    peers: BTreeMap<NodeId, Peer>,
    limits: TransportLimits,
}

/// The production node-to-node transport. Cheap to clone; clones share
/// connections.
#[derive(Clone)]
pub struct TcpTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peers: BTreeMap<NodeId, SocketAddr> =
            self.inner.peers.iter().map(|(node, peer)| (*node, peer.addr)).collect();
        f.debug_struct("TcpTransport").field("peers", &peers).finish()
    }
}

impl TcpTransport {
    /// A transport to `peers` (node id → address). Connects lazily.
    pub fn new(peers: BTreeMap<NodeId, SocketAddr>, limits: TransportLimits) -> TcpTransport {
        let peers = peers
            .into_iter()
            .map(|(node, addr)| (node, Peer { addr, state: Mutex::new(PeerState::default()) }))
            .collect();
        TcpTransport { inner: Arc::new(Inner { peers, limits }) }
    }

    /// The address of `node`, if it is a known peer.
    pub fn addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        self.inner.peers.get(&node).map(|peer| peer.addr)
    }
}

impl Inner {
    /// The live connection to `node`, connecting if there is none and the
    /// backoff allows.
    async fn connection(&self, node: NodeId, peer: &Peer) -> Result<Connection, TransportError> {
        let mut state = peer.state.lock().await;
        if let Some(connection) = &state.connection {
            if !connection.is_closed() {
                return Ok(connection.clone());
            }
            tracing::debug!(node, addr = %peer.addr, "connection closed; reconnecting");
            state.connection = None;
        }
        let now = Instant::now();
        if let Some(retry_at) = state.retry_at {
            if now < retry_at {
                let wait_ms = retry_at.duration_since(now).as_millis();
                return Err(TransportError::Unreachable {
                    node,
                    reason: format!(
                        "{} (after {} failed connects; next attempt in {wait_ms} ms)",
                        state.last_error, state.consecutive_failures
                    ),
                });
            }
        }
        let connected = match Connection::connect(peer.addr, self.limits.connection.clone()).await {
            Ok(connection) => match &self.limits.auth {
                None => Ok(connection),
                Some(credentials) => {
                    match authenticate(&connection, credentials, self.limits.connection.connect_timeout_ms).await {
                        Ok(()) => Ok(connection),
                        Err(reason) => {
                            connection.close();
                            Err(format!("{}: peer authentication failed: {reason}", peer.addr))
                        }
                    }
                }
            },
            Err(e) => Err(e.to_string()),
        };
        match connected {
            Ok(connection) => {
                if state.consecutive_failures > 0 {
                    tracing::info!(node, addr = %peer.addr, failures = state.consecutive_failures, "reconnected");
                }
                state.consecutive_failures = 0;
                state.retry_at = None;
                state.connection = Some(connection.clone());
                Ok(connection)
            }
            Err(e) => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                let backoff_ms = backoff_ms(
                    self.limits.reconnect_backoff_min_ms,
                    self.limits.reconnect_backoff_max_ms,
                    state.consecutive_failures,
                );
                state.retry_at = Some(Instant::now() + Duration::from_millis(backoff_ms));
                tracing::debug!(node, addr = %peer.addr, error = %e, backoff_ms, "connect failed");
                state.last_error = e.clone();
                Err(TransportError::Unreachable { node, reason: e })
            }
        }
    }

    async fn call(&self, node: NodeId, request: PeerRequest, timeout_ms: u64) -> Result<PeerResponse, TransportError> {
        let peer = self.peers.get(&node).ok_or(TransportError::UnknownNode(node))?;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let connection = self.connection(node, peer).await?;
        let remaining_ms =
            u64::try_from(deadline.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(u64::MAX);
        match connection.call(Message::Peer(request), remaining_ms).await {
            Ok(Message::PeerReply(response)) => Ok(response),
            Ok(other) => {
                // The peer broke the protocol; do not trust the stream further.
                connection.close();
                Err(TransportError::Protocol { node, reason: format!("expected a peer reply, got {}", kind(&other)) })
            }
            Err(e) => Err(map_error(node, timeout_ms, e)),
        }
    }
}

/// `min_ms · 2^(failures-1)`, capped at `max_ms`.
fn backoff_ms(min_ms: u64, max_ms: u64, consecutive_failures: u32) -> u64 {
    let doublings = consecutive_failures.saturating_sub(1).min(32);
    min_ms.saturating_mul(1u64 << doublings).min(max_ms)
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Request(_) => "a client request",
        Message::Response(_) => "a client response",
        Message::Peer(_) => "a peer request",
        Message::PeerReply(_) => "a peer reply",
    }
}

fn map_error(node: NodeId, timeout_ms: u64, error: ConnectionError) -> TransportError {
    match error {
        ConnectionError::Timeout { .. } => TransportError::Timeout { node, timeout_ms },
        ConnectionError::TooManyInFlight { limit, .. } => TransportError::Backpressure { node, limit },
        ConnectionError::Remote { error: RequestError::Invalid(invalid), .. } => {
            TransportError::Protocol { node, reason: format!("the peer rejected our frame: {invalid}") }
        }
        ConnectionError::FrameTooLarge { reason } => TransportError::Protocol { node, reason },
        ConnectionError::Protocol { reason, .. } => TransportError::Protocol { node, reason },
        error @ (ConnectionError::Connect { .. }
        | ConnectionError::ConnectTimeout { .. }
        | ConnectionError::Closed { .. }
        | ConnectionError::Remote { .. }) => TransportError::Unreachable { node, reason: error.to_string() },
    }
}

impl Transport for TcpTransport {
    fn call(
        &self,
        to: NodeId,
        request: PeerRequest,
        timeout_ms: u64,
    ) -> BoxFuture<Result<PeerResponse, TransportError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // One bound on the whole call, waiting for the peer lock and
            // connecting included.
            match tokio::time::timeout(Duration::from_millis(timeout_ms), inner.call(to, request, timeout_ms)).await {
                Ok(result) => result,
                Err(_) => Err(TransportError::Timeout { node: to, timeout_ms }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::server::ServerLimits;
    use crate::net::test_support::{dead_addr, TestServer, ToyHandler};
    use paytx_protocol::TxnId;

    const TIMEOUT_MS: u64 = 5_000;

    fn query(seq: u64) -> PeerRequest {
        PeerRequest::QueryDecision { txn: TxnId { term: 1, node: 1, seq } }
    }

    fn fast_backoff() -> TransportLimits {
        TransportLimits { reconnect_backoff_min_ms: 5, reconnect_backoff_max_ms: 50, ..TransportLimits::default() }
    }

    #[tokio::test]
    async fn peers_with_the_cluster_secret_authenticate_and_others_are_refused() {
        let secret: Arc<[u8]> = Arc::from(b"the-cluster-secret-0123".as_slice());
        let limits = ServerLimits { peer_secret: Some(secret.clone()), ..ServerLimits::default() };
        let server = TestServer::start(Arc::new(ToyHandler::new(2)), limits).await;
        let peers = BTreeMap::from([(2, server.addr)]);

        let credentials = |secret: Arc<[u8]>| TransportLimits {
            auth: Some(PeerCredentials { node: 1, secret, config: Default::default() }),
            ..TransportLimits::default()
        };
        let member = TcpTransport::new(peers.clone(), credentials(secret));
        assert_eq!(member.call(2, query(2), TIMEOUT_MS).await, Ok(PeerResponse::Decision { commit: true, at_ms: 0 }));

        let impostor = TcpTransport::new(peers.clone(), credentials(Arc::from(b"a-wrong-secret-012345".as_slice())));
        match impostor.call(2, query(2), TIMEOUT_MS).await {
            Err(TransportError::Unreachable { reason, .. }) => assert!(reason.contains("authentication"), "{reason}"),
            other => panic!("an impostor must be refused, got {other:?}"),
        }
        let anonymous = TcpTransport::new(peers, TransportLimits::default());
        let answer = anonymous.call(2, query(2), TIMEOUT_MS).await;
        assert!(
            matches!(answer, Ok(PeerResponse::Error(RequestError::Unauthorized { .. })) | Err(_)),
            "no handshake, no peer messages: {answer:?}"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn calls_peers_and_reuses_one_connection() {
        let server = TestServer::start(Arc::new(ToyHandler::new(2)), ServerLimits::default()).await;
        let transport = TcpTransport::new(BTreeMap::from([(2, server.addr)]), TransportLimits::default());
        for seq in 0..10 {
            let reply = transport.call(2, query(seq), TIMEOUT_MS).await.unwrap();
            assert_eq!(reply, PeerResponse::Decision { commit: seq % 2 == 0, at_ms: 0 });
        }
        let peer = transport.inner.peers.get(&2).unwrap();
        let first = peer.state.lock().await.connection.clone().unwrap();
        transport.call(2, query(1), TIMEOUT_MS).await.unwrap();
        let again = peer.state.lock().await.connection.clone().unwrap();
        assert!(first.same_as(&again), "the connection is reused");
        assert_eq!(transport.call(9, query(1), TIMEOUT_MS).await, Err(TransportError::UnknownNode(9)));
        server.stop().await;
    }

    #[tokio::test]
    async fn reconnects_after_the_server_restarts_on_the_same_port() {
        let handler = Arc::new(ToyHandler::new(2));
        let server = TestServer::start(handler.clone(), ServerLimits::default()).await;
        let addr = server.addr;
        let transport = TcpTransport::new(BTreeMap::from([(2, addr)]), fast_backoff());
        assert_eq!(
            transport.call(2, query(2), TIMEOUT_MS).await,
            Ok(PeerResponse::Decision { commit: true, at_ms: 0 })
        );

        server.stop().await;
        let down = transport.call(2, query(2), TIMEOUT_MS).await;
        assert!(matches!(down, Err(TransportError::Unreachable { node: 2, .. })), "{down:?}");

        let server = TestServer::start_on(addr, handler, ServerLimits::default()).await;
        let mut reply = Err(TransportError::UnknownNode(0));
        for _ in 0..200 {
            reply = transport.call(2, query(3), TIMEOUT_MS).await;
            if reply.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(reply, Ok(PeerResponse::Decision { commit: false, at_ms: 0 }));
        server.stop().await;
    }

    #[tokio::test]
    async fn a_dead_peer_is_retried_after_a_backoff_not_on_every_call() {
        let addr = dead_addr().await;
        let limits = TransportLimits { reconnect_backoff_min_ms: 60_000, ..TransportLimits::default() };
        let transport = TcpTransport::new(BTreeMap::from([(3, addr)]), limits);
        let first = transport.call(3, query(1), TIMEOUT_MS).await;
        assert!(matches!(first, Err(TransportError::Unreachable { node: 3, .. })), "{first:?}");
        // During the backoff no connect is attempted: the error says so.
        let second = transport.call(3, query(1), TIMEOUT_MS).await;
        match second {
            Err(TransportError::Unreachable { node: 3, reason }) => {
                assert!(reason.contains("next attempt"), "{reason}")
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_slow_peer_is_a_timeout() {
        // A listener that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let transport = TcpTransport::new(BTreeMap::from([(4, addr)]), TransportLimits::default());
        let result = transport.call(4, query(1), 100).await;
        assert_eq!(result, Err(TransportError::Timeout { node: 4, timeout_ms: 100 }));
        silent.abort();
    }

    #[tokio::test]
    async fn the_in_flight_limit_is_backpressure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let connection = ConnectionLimits { max_in_flight: 1, ..ConnectionLimits::default() };
        let transport = TcpTransport::new(
            BTreeMap::from([(4, addr)]),
            TransportLimits { connection, ..TransportLimits::default() },
        );
        let first = {
            let transport = transport.clone();
            tokio::spawn(async move { transport.call(4, query(1), 2_000).await })
        };
        let peer = transport.inner.peers.get(&4).unwrap();
        loop {
            let in_flight = peer.state.lock().await.connection.as_ref().map_or(0, Connection::in_flight);
            if in_flight == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let result = transport.call(4, query(2), 2_000).await;
        assert_eq!(result, Err(TransportError::Backpressure { node: 4, limit: 1 }));
        first.abort();
        silent.abort();
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(10, 1_000, 1), 10);
        assert_eq!(backoff_ms(10, 1_000, 2), 20);
        assert_eq!(backoff_ms(10, 1_000, 4), 80);
        assert_eq!(backoff_ms(10, 1_000, 40), 1_000);
        assert_eq!(backoff_ms(10, 1_000, u32::MAX), 1_000);
    }
}
