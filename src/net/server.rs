//! The server side of the wire protocol: accepts TCP connections and serves
//! client requests and node-to-node messages through a [`Handler`].
//!
//! Per connection, one reader loop decodes frames and spawns one task per
//! request, so a slow request never blocks the ones behind it (replies may go
//! out in any order; the envelope id pairs them up). Replies go through one
//! writer task fed by a bounded channel.
//!
//! Bad input never panics the node: a frame that cannot be understood
//! (garbage, over the size cap, unknown version, undecodable body, or a reply
//! nobody asked for) gets one typed error reply with id 0,
//! `Response::Error(RequestError::Invalid(InvalidRequest::Malformed(..)))`,
//! then the connection is closed. A truncated frame or an I/O error just
//! closes the connection (the peer is gone; there is nobody to tell).

use futures::FutureExt;
use paytx_protocol::auth::{self, Nonce};
use paytx_protocol::frame::{encode_frame, read_frame, FrameError, DEFAULT_MAX_FRAME_BYTES, READ_BUFFER_BYTES};
use paytx_protocol::messages::CONNECTION_ERROR_ID;
use paytx_protocol::NodeId;
use paytx_protocol::{
    BoxFuture, Envelope, InvalidRequest, Message, PeerRequest, PeerResponse, Request, RequestError, Response,
};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

/// What a node does with the messages it receives. Implemented by the node
/// (gateway to the coordinator and participants); the server only moves bytes.
pub trait Handler: Send + Sync + 'static {
    /// A client request. Errors are answers too: `Response::Error`.
    fn request(&self, req: Request) -> BoxFuture<Response>;
    /// A node-to-node request. Errors are answers too: `PeerResponse::Error`.
    fn peer(&self, req: PeerRequest) -> BoxFuture<PeerResponse>;
}

/// Limits of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest frame accepted or sent (length prefix excluded), in bytes.
    pub max_frame_bytes: u32,
    /// Most connections served at once. Past it a new connection gets an
    /// `Overloaded` error with id 0 and is closed.
    pub max_connections: usize,
    /// Most requests handled at once on one connection. Past it a request is
    /// answered `Overloaded` with its own id (the connection stays open).
    pub max_in_flight_per_connection: usize,
    /// Most client requests handled at once over all connections. Past it a
    /// request is answered `Overloaded` with its own id. Authenticated peer
    /// messages are not counted (decision): a flood of clients must not
    /// starve the Raft and 2PC traffic that lets their requests finish; a
    /// peer's load is bounded by its own node's limits.
    pub max_in_flight_per_node: usize,
    /// A connection that is not an authenticated peer, has nothing in
    /// flight and sends nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// Once a frame has started, the rest must arrive within this long.
    pub frame_read_timeout_ms: u64,
    /// The cluster secret. When set, node-to-node messages are served only
    /// on a connection that authenticated with it first
    /// ([`paytx_protocol::auth`]); client requests need no authentication.
    /// `None` serves peer messages to anyone (unit tests only).
    pub peer_secret: Option<Arc<[u8]>>,
    /// This node's cluster-wide configuration: a peer whose hello carries
    /// another is refused, naming the sections that differ. `None`: not
    /// compared (unit tests only).
    pub peer_config: Option<paytx_protocol::auth::ConfigDigest>,
    /// Where the server counts connections and refusals (read by the
    /// admin listener).
    pub counters: super::ServerCounters,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_connections: 1024,
            max_in_flight_per_connection: 8192,
            max_in_flight_per_node: 16_384,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            frame_read_timeout_ms: DEFAULT_FRAME_READ_TIMEOUT_MS,
            counters: super::ServerCounters::default(),
            peer_secret: None,
            peer_config: None,
        }
    }
}

/// Whether a message came from a client or a peer: replies and errors go
/// back as `Response` or `PeerReply` accordingly.
#[derive(Debug, Clone, Copy)]
enum Lane {
    Client,
    Peer,
}

impl Lane {
    fn error(self, error: RequestError) -> Message {
        match self {
            Lane::Client => Message::Response(Response::Error(error)),
            Lane::Peer => Message::PeerReply(PeerResponse::Error(error)),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Lane::Client => "request",
            Lane::Peer => "peer",
        }
    }
}

/// Where a connection stands in the peer handshake.
enum PeerAuth {
    /// No secret configured: peer messages are served (unit tests).
    Open,
    Unauthenticated,
    Challenged {
        node: NodeId,
        client_nonce: Nonce,
        server_nonce: Nonce,
    },
    Authenticated(NodeId),
}

/// What to do with a peer message, given the handshake state.
enum PeerStep {
    /// Serve it.
    Serve,
    /// Answer this (a handshake step) and keep reading.
    Answer(PeerResponse),
    /// Answer this and close: the connection did not authenticate.
    Refuse(PeerResponse),
}

fn unauthorized(reason: &str) -> PeerResponse {
    PeerResponse::Error(RequestError::Unauthorized { reason: reason.to_string() })
}

/// Advances the handshake with one peer message.
fn peer_step(
    auth: &mut PeerAuth,
    secret: Option<&[u8]>,
    own_config: Option<&paytx_protocol::auth::ConfigDigest>,
    request: &PeerRequest,
) -> PeerStep {
    match (request, secret) {
        (PeerRequest::AuthHello { node, nonce, config }, Some(secret)) if matches!(auth, PeerAuth::Unauthenticated) => {
            let differing = own_config.map(|own| own.differing(config)).unwrap_or_default();
            if !differing.is_empty() {
                let reason = format!(
                    "node {node}'s cluster configuration differs from this node's in: {}; these settings must be \
                     identical on every node (README, Configuration)",
                    differing.join(", ")
                );
                tracing::warn!(peer = node, %reason, "peer refused");
                return PeerStep::Refuse(unauthorized(&reason));
            }
            let server_nonce: Nonce = rand::random();
            let proof = auth::server_proof(secret, *node, nonce, &server_nonce);
            *auth = PeerAuth::Challenged { node: *node, client_nonce: *nonce, server_nonce };
            PeerStep::Answer(PeerResponse::AuthChallenge { nonce: server_nonce, proof })
        }
        (PeerRequest::AuthProof { proof }, Some(secret)) => match *auth {
            PeerAuth::Challenged { node, client_nonce, server_nonce }
                if auth::verify_client(secret, node, &client_nonce, &server_nonce, proof) =>
            {
                *auth = PeerAuth::Authenticated(node);
                PeerStep::Answer(PeerResponse::Acked)
            }
            _ => PeerStep::Refuse(unauthorized("wrong proof: this connection does not know the cluster secret")),
        },
        (PeerRequest::AuthHello { .. } | PeerRequest::AuthProof { .. }, _) => {
            PeerStep::Refuse(unauthorized("unexpected handshake message"))
        }
        _ => match auth {
            PeerAuth::Open | PeerAuth::Authenticated(_) => PeerStep::Serve,
            _ => PeerStep::Refuse(unauthorized("authenticate the connection before sending peer messages")),
        },
    }
}

/// Safety net on one handler call. The handler bounds its own work (Raft and
/// 2PC timeouts are far shorter); this only guarantees a stuck handler cannot
/// hold an in-flight slot forever.
pub const MAX_HANDLER_MS: u64 = 120_000;
/// Bound on writing (and flushing) one batch of replies. A peer that stops
/// reading for this long loses its connection instead of pinning its slot.
pub const WRITE_TIMEOUT_MS: u64 = 30_000;
/// Default of [`ServerLimits::frame_read_timeout_ms`].
pub const DEFAULT_FRAME_READ_TIMEOUT_MS: u64 = 30_000;
/// Default of [`ServerLimits::idle_timeout_ms`].
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 300_000;
/// How long we wait for queued replies (e.g. the final error reply) to be
/// written when a connection closes.
pub const CLOSE_FLUSH_MS: u64 = 1_000;
/// After replying to bad input we read and discard what the peer still sends
/// for this long (or this many bytes) before closing. Closing a socket with
/// unread input makes the kernel send a reset, which can destroy the error
/// reply before the peer reads it.
pub const LINGER_MS: u64 = 500;
pub const LINGER_MAX_BYTES: usize = 256 * 1024;
/// Most connections being turned away (over `max_connections`) at once; past
/// it they are dropped without an error reply, so a connection flood costs
/// bounded work.
pub const MAX_REJECTIONS_IN_FLIGHT: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin.
pub const ACCEPT_ERROR_BACKOFF_MS: u64 = 50;
/// Bound on waiting for connections to finish once shutdown is requested.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;

/// Serves `listener` until `shutdown` turns true, then stops accepting,
/// closes every connection (each gets `ShuttingDown` with id 0) and returns.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, ?limits, "serving");
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
    let node_slots = Arc::new(Semaphore::new(limits.max_in_flight_per_node));
    let mut connections: JoinSet<()> = JoinSet::new();
    let mut rejections: JoinSet<()> = JoinSet::new();
    loop {
        // Reap finished tasks so the sets stay bounded by the live ones.
        while connections.try_join_next().is_some() {}
        while rejections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = shutdown_requested(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(addr = ?local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        match connection_slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let handler = handler.clone();
                let limits = limits.clone();
                let shutdown = shutdown.clone();
                let node_slots = node_slots.clone();
                let counters = limits.counters.clone();
                counters.connection_opened();
                connections.spawn(async move {
                    serve_connection(stream, peer, handler, limits, node_slots, shutdown).await;
                    counters.connection_closed();
                    drop(slot);
                });
            }
            Err(_) if rejections.len() < MAX_REJECTIONS_IN_FLIGHT => {
                tracing::warn!(%peer, max_connections = limits.max_connections, "too many connections; rejecting");
                limits.counters.refused(super::Refusal::MaxConnections);
                let error = RequestError::Overloaded {
                    what: format!("too many connections (limit {})", limits.max_connections),
                };
                rejections.spawn(reject(stream, peer, error, limits.max_frame_bytes));
            }
            Err(_) => {
                tracing::warn!(%peer, "too many connections and rejections; dropping without a reply");
                limits.counters.refused(super::Refusal::MaxConnectionsDropped);
                drop(stream);
            }
        }
    }
    drop(listener);
    tracing::info!(addr = ?local, connections = connections.len(), "shutting down; closing connections");
    let grace = Duration::from_millis(SHUTDOWN_GRACE_MS);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
        while rejections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(addr = ?local, "connections did not close within {SHUTDOWN_GRACE_MS} ms; aborting them");
    }
    // Dropping the sets aborts whatever is left.
}

/// Resolves when `shutdown` turns true. A dropped sender means nobody can
/// ask for shutdown any more, so wait forever.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Tells a connection we cannot serve why, then closes it.
async fn reject(stream: TcpStream, peer: SocketAddr, error: RequestError, max_frame_bytes: u32) {
    let (mut read_half, write_half) = stream.into_split();
    let (replies, replies_rx) = mpsc::channel(1);
    let writer = tokio::spawn(write_loop(write_half, peer, replies_rx, max_frame_bytes));
    let _ = replies.send(connection_error(error)).await;
    drop(replies);
    finish(writer, &mut read_half, peer, true).await;
}

fn connection_error(error: RequestError) -> Envelope {
    Envelope { id: CONNECTION_ERROR_ID, message: Message::Response(Response::Error(error)) }
}

fn malformed(reason: String) -> Envelope {
    connection_error(RequestError::Invalid(InvalidRequest::Malformed(reason)))
}

/// How a connection's read loop ended.
enum End {
    /// The peer closed its side cleanly: finish in-flight requests first.
    PeerClosed,
    /// The peer is gone (truncated frame, I/O error) or our writer died.
    Gone,
    /// Bad input: the typed error reply is queued; close after it.
    BadInput,
    /// The server is shutting down.
    Shutdown,
    /// Nothing in flight and nothing received for `idle_timeout_ms`.
    Idle,
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<dyn Handler>,
    limits: ServerLimits,
    node_slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::debug!(%peer, "connection opened");
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let frame_timeout = Duration::from_millis(limits.frame_read_timeout_ms);
    let max_in_flight = limits.max_in_flight_per_connection;
    let (read_half, write_half) = stream.into_split();
    // Frames that arrived together are read with one syscall.
    let mut read_half = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
    // Every in-flight request sends one reply; the slack covers the
    // `Overloaded` and connection-error replies the reader sends itself. When
    // the queue is full the reader waits, and stops reading: TCP backpressure.
    let (replies, replies_rx) = mpsc::channel::<Envelope>(max_in_flight.saturating_add(8));
    let writer = tokio::spawn(write_loop(write_half, peer, replies_rx, limits.max_frame_bytes));
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let mut handlers: JoinSet<()> = JoinSet::new();
    let mut auth = if limits.peer_secret.is_some() { PeerAuth::Unauthenticated } else { PeerAuth::Open };

    let end = loop {
        while let Some(joined) = handlers.try_join_next() {
            if let Err(e) = joined {
                tracing::warn!(%peer, error = %e, "request task failed");
            }
        }
        let frame = tokio::select! {
            _ = shutdown_requested(&mut shutdown) => break End::Shutdown,
            _ = replies.closed() => break End::Gone,
            frame = read_next(&mut read_half, limits.max_frame_bytes, idle, frame_timeout) => frame,
        };
        let Envelope { id, message } = match frame {
            Ok(Read::Frame(envelope)) => envelope,
            Ok(Read::Closed) => break End::PeerClosed,
            // Peers keep their connections open between calls: exempt.
            Ok(Read::Idle) if matches!(auth, PeerAuth::Authenticated(_)) => continue,
            Ok(Read::Idle) => {
                while handlers.try_join_next().is_some() {}
                if handlers.is_empty() {
                    tracing::debug!(%peer, idle_ms = limits.idle_timeout_ms, "idle connection; closing");
                    limits.counters.idle_closed();
                    break End::Idle;
                }
                continue;
            }
            Err(e) if e.is_reportable() => {
                tracing::warn!(%peer, error = %e, "bad frame; replying with an error and closing");
                let _ = replies.send(malformed(e.to_string())).await;
                break End::BadInput;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "read failed; closing");
                break End::Gone;
            }
        };
        if id == CONNECTION_ERROR_ID {
            tracing::warn!(%peer, "message with the reserved id 0; replying with an error and closing");
            let _ = replies.send(malformed("request id 0 is reserved for connection errors".into())).await;
            break End::BadInput;
        }
        let overloaded = || RequestError::Overloaded {
            what: format!("too many requests in flight on this connection (limit {max_in_flight})"),
        };
        let (lane, work): (Lane, BoxFuture<Message>) = match message {
            Message::Request(request) => {
                let handler = handler.clone();
                (Lane::Client, Box::pin(async move { Message::Response(handler.request(request).await) }))
            }
            Message::Peer(request) => {
                match peer_step(&mut auth, limits.peer_secret.as_deref(), limits.peer_config.as_ref(), &request) {
                    PeerStep::Serve => {}
                    PeerStep::Answer(reply) => {
                        if let PeerAuth::Authenticated(node) = auth {
                            tracing::debug!(%peer, node, "peer authenticated");
                        }
                        let _ = replies.send(Envelope { id, message: Message::PeerReply(reply) }).await;
                        continue;
                    }
                    PeerStep::Refuse(reply) => {
                        tracing::warn!(%peer, id, "peer message on an unauthenticated connection; refused, closing");
                        let _ = replies.send(Envelope { id, message: Message::PeerReply(reply) }).await;
                        break End::BadInput;
                    }
                }
                let handler = handler.clone();
                (Lane::Peer, Box::pin(async move { Message::PeerReply(handler.peer(request).await) }))
            }
            Message::Response(_) | Message::PeerReply(_) => {
                tracing::warn!(%peer, id, "unsolicited reply; replying with an error and closing");
                let reason = "a server only accepts requests; got a reply nobody asked for".to_string();
                let _ = replies.send(malformed(reason)).await;
                break End::BadInput;
            }
        };
        let Ok(slot) = in_flight.clone().try_acquire_owned() else {
            limits.counters.refused(super::Refusal::MaxInFlightPerConnection);
            let _ = replies.send(Envelope { id, message: lane.error(overloaded()) }).await;
            continue;
        };
        let node_slot = match lane {
            Lane::Client => match node_slots.clone().try_acquire_owned() {
                Ok(node_slot) => Some(node_slot),
                Err(_) => {
                    limits.counters.refused(super::Refusal::MaxInFlightPerNode);
                    let what =
                        format!("too many requests in flight on this node (limit {})", limits.max_in_flight_per_node);
                    let error = RequestError::Overloaded { what };
                    let _ = replies.send(Envelope { id, message: lane.error(error) }).await;
                    continue;
                }
            },
            Lane::Peer => None,
        };
        let replies = replies.clone();
        handlers.spawn(async move {
            let work = AssertUnwindSafe(work).catch_unwind();
            let message = match tokio::time::timeout(Duration::from_millis(MAX_HANDLER_MS), work).await {
                Ok(Ok(message)) => message,
                Ok(Err(_)) => {
                    tracing::error!(%peer, id, lane = lane.name(), "handler panicked");
                    lane.error(RequestError::Internal(format!("{} handler panicked", lane.name())))
                }
                Err(_) => lane.error(RequestError::Timeout { timeout_ms: MAX_HANDLER_MS }),
            };
            // The connection may be gone by now; the reply is moot then.
            let _ = replies.send(Envelope { id, message }).await;
            drop(slot);
            drop(node_slot);
        });
    };

    match end {
        End::PeerClosed => {
            // The peer may have only half-closed and still read: answer what
            // it asked, unless we are told to shut down meanwhile.
            let finished = tokio::select! {
                _ = async { while handlers.join_next().await.is_some() {} } => true,
                _ = shutdown_requested(&mut shutdown) => false,
            };
            if !finished {
                handlers.shutdown().await;
                let _ = replies.try_send(connection_error(RequestError::ShuttingDown));
            }
        }
        End::Gone | End::BadInput | End::Idle => handlers.shutdown().await,
        End::Shutdown => {
            handlers.shutdown().await;
            // Best effort: tell the peer to go elsewhere rather than time out.
            let _ = replies.try_send(connection_error(RequestError::ShuttingDown));
        }
    }
    drop(replies);
    let linger = matches!(end, End::BadInput | End::Shutdown);
    finish(writer, &mut read_half, peer, linger).await;
    tracing::debug!(%peer, "connection closed");
}

/// What waiting for the next frame gave.
enum Read {
    Frame(Envelope),
    /// A clean end of stream between frames.
    Closed,
    /// No frame started within the idle timeout (nothing was consumed, so
    /// the caller may wait again).
    Idle,
}

/// Reads the next frame. Waiting for a frame to start gives up after `idle`
/// (`Read::Idle`; nothing consumed), and once its first byte arrived the
/// whole frame must follow within `frame_timeout`: a peer cannot pin a
/// connection with half a frame.
async fn read_next(
    read_half: &mut BufReader<OwnedReadHalf>,
    max_frame_bytes: u32,
    idle: Duration,
    frame_timeout: Duration,
) -> Result<Read, FrameError> {
    // Waits for at least one byte without consuming it (the buffer's fill:
    // no syscall when the next frame is already buffered).
    match tokio::time::timeout(idle, read_half.fill_buf()).await {
        Err(_) => return Ok(Read::Idle),
        Ok(buffered) => {
            if buffered?.is_empty() {
                return Ok(Read::Closed);
            }
        }
    }
    match tokio::time::timeout(frame_timeout, read_frame(read_half, max_frame_bytes)).await {
        Ok(Ok(Some(frame))) => Ok(Read::Frame(frame)),
        Ok(Ok(None)) => Ok(Read::Closed),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("frame not completed within {} ms", frame_timeout.as_millis()),
        ))),
    }
}

/// Waits (bounded) for the writer to flush what is queued and half-close,
/// then, if `linger`, discards input until the peer closes (bounded) so the
/// close is a clean FIN rather than a reset that could destroy our last reply.
async fn finish<R: tokio::io::AsyncRead + Unpin>(
    writer: tokio::task::JoinHandle<()>,
    read_half: &mut R,
    peer: SocketAddr,
    linger: bool,
) {
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_millis(CLOSE_FLUSH_MS), writer).await.is_err() {
        tracing::debug!(%peer, "replies not flushed within {CLOSE_FLUSH_MS} ms; dropping them");
        abort.abort();
        return;
    }
    if !linger {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut drained_bytes = 0usize;
        while drained_bytes < LINGER_MAX_BYTES {
            match read_half.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(read) => drained_bytes += read,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(LINGER_MS), drain).await;
}

/// Writes replies in order of completion, batching whatever is queued into
/// one flush, until every sender is gone; then half-closes the stream.
async fn write_loop(
    write_half: OwnedWriteHalf,
    peer: SocketAddr,
    mut replies: mpsc::Receiver<Envelope>,
    max_frame_bytes: u32,
) {
    let mut writer = BufWriter::new(write_half);
    while let Some(first) = replies.recv().await {
        let batch = async {
            write_reply(&mut writer, first, max_frame_bytes).await?;
            while let Ok(next) = replies.try_recv() {
                write_reply(&mut writer, next, max_frame_bytes).await?;
            }
            writer.flush().await
        };
        match tokio::time::timeout(Duration::from_millis(WRITE_TIMEOUT_MS), batch).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "write failed; closing");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "peer did not read replies for {WRITE_TIMEOUT_MS} ms; closing");
                return;
            }
        }
    }
    let _ = writer.shutdown().await;
}

async fn write_reply(
    writer: &mut BufWriter<OwnedWriteHalf>,
    envelope: Envelope,
    max_frame_bytes: u32,
) -> std::io::Result<()> {
    let frame = match encode_frame(&envelope, max_frame_bytes) {
        Ok(frame) => frame,
        Err(e) => {
            // A reply over the cap (e.g. a huge read) must still answer the
            // call, or the caller waits for its timeout.
            tracing::warn!(id = envelope.id, error = %e, "reply does not fit in a frame");
            let error = RequestError::Internal(format!("the reply does not fit in a frame: {e}"));
            let message = match envelope.message {
                Message::PeerReply(_) | Message::Peer(_) => Message::PeerReply(PeerResponse::Error(error)),
                Message::Response(_) | Message::Request(_) => Message::Response(Response::Error(error)),
            };
            match encode_frame(&Envelope { id: envelope.id, message }, max_frame_bytes) {
                Ok(frame) => frame,
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
        }
    };
    writer.write_all(&frame).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::connection::{Connection, ConnectionError, ConnectionLimits};
    use crate::net::test_support::{account_view, TestServer, ToyHandler};
    use paytx_protocol::frame::{write_frame, FRAME_VERSION};
    use paytx_protocol::{AccountId, OrderId, TxnRequest};

    const TIMEOUT_MS: u64 = 5_000;

    #[test]
    fn a_peer_with_another_cluster_configuration_is_refused_naming_what_differs() {
        use paytx_protocol::auth::ConfigDigest;
        let own = ConfigDigest::of(vec![("[shards]", vec![1]), ("[[channels]]", vec![2])]);
        let hello = |config: ConfigDigest| PeerRequest::AuthHello { node: 2, nonce: [1; 32], config };
        let secret: &[u8] = b"a-secret-of-sixteen-bytes";

        let mut auth = PeerAuth::Unauthenticated;
        let other = ConfigDigest::of(vec![("[shards]", vec![1]), ("[[channels]]", vec![3])]);
        match peer_step(&mut auth, Some(secret), Some(&own), &hello(other)) {
            PeerStep::Refuse(PeerResponse::Error(RequestError::Unauthorized { reason })) => {
                assert!(reason.contains("[[channels]]") && !reason.contains("[shards]"), "{reason}");
            }
            _ => panic!("a differing configuration must be refused"),
        }
        assert!(matches!(auth, PeerAuth::Unauthenticated), "nothing advanced");

        let mut auth = PeerAuth::Unauthenticated;
        let step = peer_step(&mut auth, Some(secret), Some(&own), &hello(own.clone()));
        assert!(matches!(step, PeerStep::Answer(PeerResponse::AuthChallenge { .. })), "the same one is challenged");
    }

    async fn toy_server(handler: ToyHandler, limits: ServerLimits) -> TestServer {
        TestServer::start(Arc::new(handler), limits).await
    }

    fn valid_frame(message: Message) -> Vec<u8> {
        encode_frame(&Envelope { id: 9, message }, DEFAULT_MAX_FRAME_BYTES).unwrap()
    }

    /// Writes `bytes` on a fresh connection (then half-closes if asked) and
    /// returns the first frame read back, after checking the server closed
    /// the connection right after it.
    async fn exchange(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Option<Envelope> {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        if half_close {
            stream.shutdown().await.unwrap();
        }
        let within = Duration::from_secs(5);
        let first = tokio::time::timeout(within, read_frame(&mut stream, DEFAULT_MAX_FRAME_BYTES))
            .await
            .expect("the server answers or closes promptly")
            .expect("a well-formed reply or a clean close");
        if first.is_some() {
            let next = tokio::time::timeout(within, read_frame(&mut stream, DEFAULT_MAX_FRAME_BYTES))
                .await
                .expect("the server closes promptly after the error");
            assert!(matches!(next, Ok(None)), "expected a clean close after the error reply, got {next:?}");
        }
        first
    }

    fn assert_malformed(reply: Option<Envelope>) {
        match reply {
            Some(Envelope {
                id: CONNECTION_ERROR_ID,
                message: Message::Response(Response::Error(RequestError::Invalid(InvalidRequest::Malformed(_)))),
            }) => {}
            other => panic!("expected an id-0 Malformed error, got {other:?}"),
        }
    }

    async fn assert_still_serves(addr: SocketAddr) {
        let connection = Connection::connect(addr, ConnectionLimits::default()).await.unwrap();
        let reply = connection.call(Message::Request(Request::GetAccount(AccountId(3))), TIMEOUT_MS).await.unwrap();
        assert_eq!(reply, Message::Response(Response::Account(Some(account_view(3)))));
    }

    #[tokio::test]
    async fn malformed_input_gets_a_typed_error_then_close_and_the_server_survives() {
        let limits = ServerLimits { max_frame_bytes: 1024, ..ServerLimits::default() };
        let server = toy_server(ToyHandler::new(1), limits).await;
        let addr = server.addr;

        // Garbage: an HTTP request. "GET " read as a length is ~1.2 GB.
        assert_malformed(exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).await);
        assert_still_serves(addr).await;

        // Garbage body behind a plausible header.
        assert_malformed(exchange(addr, &[0, 0, 0, 4, FRAME_VERSION, 0xde, 0xad, 0xbe], false).await);
        assert_still_serves(addr).await;

        // A length over the cap (with the bytes following it).
        let mut too_large = 2000u32.to_be_bytes().to_vec();
        too_large.push(FRAME_VERSION);
        too_large.extend_from_slice(&[0u8; 1999]);
        assert_malformed(exchange(addr, &too_large, false).await);
        assert_still_serves(addr).await;

        // An unknown version.
        let mut wrong_version = valid_frame(Message::Request(Request::NodeStatus));
        wrong_version[4] = FRAME_VERSION.wrapping_add(41);
        assert_malformed(exchange(addr, &wrong_version, false).await);
        assert_still_serves(addr).await;

        // An empty frame.
        assert_malformed(exchange(addr, &[0, 0, 0, 0], false).await);
        assert_still_serves(addr).await;

        // A well-formed frame carrying replies nobody asked for.
        assert_malformed(exchange(addr, &valid_frame(Message::Response(Response::Charge(None))), false).await);
        assert_malformed(exchange(addr, &valid_frame(Message::PeerReply(PeerResponse::Acked)), false).await);
        assert_still_serves(addr).await;

        // A request using the reserved id 0.
        let id_zero = encode_frame(
            &Envelope { id: CONNECTION_ERROR_ID, message: Message::Request(Request::NodeStatus) },
            DEFAULT_MAX_FRAME_BYTES,
        )
        .unwrap();
        assert_malformed(exchange(addr, &id_zero, false).await);
        assert_still_serves(addr).await;

        // A truncated frame, then the peer closes: nobody to answer, just close.
        let whole = valid_frame(Message::Request(Request::NodeStatus));
        assert_eq!(exchange(addr, &whole[..whole.len() - 1], true).await, None);
        assert_eq!(exchange(addr, &whole[..2], true).await, None);
        assert_still_serves(addr).await;

        server.stop().await;
    }

    #[tokio::test]
    async fn a_good_request_before_a_bad_frame_is_answered_or_failed_never_hangs() {
        let server = toy_server(ToyHandler::new(1), ServerLimits::default()).await;
        let mut bytes = valid_frame(Message::Request(Request::GetAccount(AccountId(8))));
        bytes.extend_from_slice(&[0, 0, 0, 4, FRAME_VERSION, 0xde, 0xad, 0xbe]);
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        let mut saw_error = false;
        for _ in 0..3 {
            let frame = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut stream, DEFAULT_MAX_FRAME_BYTES))
                .await
                .expect("no hang")
                .unwrap();
            match frame {
                None => break,
                Some(Envelope { id: 0, .. }) => saw_error = true,
                Some(Envelope { id: 9, message }) => {
                    assert_eq!(message, Message::Response(Response::Account(Some(account_view(8)))))
                }
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(saw_error);
        server.stop().await;
    }

    #[tokio::test]
    async fn over_max_connections_gets_overloaded_with_id_zero() {
        let limits = ServerLimits { max_connections: 2, ..ServerLimits::default() };
        let counters = limits.counters.clone();
        let server = toy_server(ToyHandler::new(1), limits).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let connection = Connection::connect(server.addr, ConnectionLimits::default()).await.unwrap();
            // A round trip proves the server holds a slot for it.
            connection.call(Message::Request(Request::NodeStatus), TIMEOUT_MS).await.unwrap();
            held.push(connection);
        }
        // Raw: the refusal is an id-0 Overloaded frame, then a clean close.
        let reply = exchange(server.addr, &[], false).await;
        assert!(
            matches!(
                reply,
                Some(Envelope { id: 0, message: Message::Response(Response::Error(RequestError::Overloaded { .. })) })
            ),
            "{reply:?}"
        );
        // Through a Connection: a typed error.
        let third = Connection::connect(server.addr, ConnectionLimits::default()).await.unwrap();
        let result = third.call(Message::Request(Request::NodeStatus), TIMEOUT_MS).await;
        assert!(
            matches!(result, Err(ConnectionError::Remote { error: RequestError::Overloaded { .. }, .. })),
            "{result:?}"
        );
        let seen = counters.view();
        assert_eq!(seen.open_connections, 2, "{seen:?}");
        assert_eq!(seen.refusals[0], 2, "both refusals are counted under max_connections: {seen:?}");
        assert!(third.is_closed());
        // Freeing a slot lets a new connection in.
        drop(held.pop());
        let mut served = false;
        for _ in 0..100 {
            let connection = Connection::connect(server.addr, ConnectionLimits::default()).await.unwrap();
            if connection.call(Message::Request(Request::NodeStatus), TIMEOUT_MS).await.is_ok() {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "a freed connection slot is reused");
        server.stop().await;
    }

    #[tokio::test]
    async fn over_max_in_flight_the_request_gets_overloaded_with_its_id() {
        let limits = ServerLimits { max_in_flight_per_connection: 2, ..ServerLimits::default() };
        let handler = ToyHandler { slow_ms: 300, ..ToyHandler::new(1) };
        let server = toy_server(handler, limits).await;
        let connection = Connection::connect(server.addr, ConnectionLimits::default()).await.unwrap();
        let calls: Vec<_> = (0..5)
            .map(|_| {
                let connection = connection.clone();
                tokio::spawn(async move {
                    connection.call(Message::Request(Request::GetOrder(OrderId(1))), TIMEOUT_MS).await
                })
            })
            .collect();
        let peer_call = connection
            .call(
                Message::Peer(PeerRequest::Decide {
                    txn: paytx_protocol::TxnId { term: 1, node: 1, seq: 1 },
                    shard: paytx_protocol::ShardId { kind: paytx_protocol::EntityKind::Account, index: 0 },
                    commit: true,
                    at_ms: 0,
                }),
                TIMEOUT_MS,
            )
            .await;
        let (mut served, mut overloaded) = (0, 0);
        for call in calls {
            match call.await.unwrap().unwrap() {
                Message::Response(Response::Order(None)) => served += 1,
                Message::Response(Response::Error(RequestError::Overloaded { .. })) => overloaded += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(served + overloaded, 5);
        assert!(served >= 2 && overloaded >= 1, "served {served}, overloaded {overloaded}");
        // Peer requests share the limit and are refused in their own type.
        assert!(
            matches!(
                peer_call,
                Ok(Message::PeerReply(PeerResponse::Error(RequestError::Overloaded { .. })))
                    | Ok(Message::PeerReply(PeerResponse::Acked))
            ),
            "{peer_call:?}"
        );
        assert!(!connection.is_closed());
        server.stop().await;
    }

    #[tokio::test]
    async fn over_max_in_flight_per_node_requests_on_other_connections_get_overloaded() {
        let limits = ServerLimits { max_in_flight_per_node: 2, ..ServerLimits::default() };
        let handler = ToyHandler { slow_ms: 500, ..ToyHandler::new(1) };
        let server = toy_server(handler, limits).await;
        // Two slow requests on two connections take the node's whole budget.
        let mut slow = Vec::new();
        for _ in 0..2 {
            let connection = Connection::connect(server.addr, ConnectionLimits::default()).await.unwrap();
            let caller = connection.clone();
            slow.push(tokio::spawn(async move {
                caller.call(Message::Request(Request::GetOrder(OrderId(1))), TIMEOUT_MS).await
            }));
            while connection.in_flight() == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let third = Connection::connect(server.addr, ConnectionLimits::default()).await.unwrap();
        let reply = third.call(Message::Request(Request::GetAccount(AccountId(1))), TIMEOUT_MS).await.unwrap();
        match reply {
            Message::Response(Response::Error(RequestError::Overloaded { what })) => {
                assert!(what.contains("on this node"), "{what}")
            }
            other => panic!("expected Overloaded, got {other:?}"),
        }
        for call in slow {
            assert_eq!(call.await.unwrap().unwrap(), Message::Response(Response::Order(None)));
        }
        // The budget is released: served again, on the same connection.
        let reply = third.call(Message::Request(Request::GetAccount(AccountId(4))), TIMEOUT_MS).await.unwrap();
        assert_eq!(reply, Message::Response(Response::Account(Some(account_view(4)))));
        server.stop().await;
    }

    #[tokio::test]
    async fn idle_connections_and_half_sent_frames_are_closed_after_their_timeouts() {
        let limits = ServerLimits { idle_timeout_ms: 300, frame_read_timeout_ms: 300, ..ServerLimits::default() };
        let handler = ToyHandler { slow_ms: 800, ..ToyHandler::new(1) };
        let server = toy_server(handler, limits).await;
        let closed_within = |mut stream: TcpStream, bound_ms: u64| async move {
            let started = std::time::Instant::now();
            let end = tokio::time::timeout(Duration::from_millis(bound_ms), read_frame(&mut stream, 1024)).await;
            assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "closed, got {end:?}");
            started.elapsed()
        };
        // An idle connection: closed after ~300 ms.
        let idle = TcpStream::connect(server.addr).await.unwrap();
        let elapsed = closed_within(idle, 3_000).await;
        assert!(elapsed >= Duration::from_millis(250), "not before the idle timeout: {elapsed:?}");
        // Half a frame: closed after the frame timeout.
        let mut half = TcpStream::connect(server.addr).await.unwrap();
        half.write_all(&valid_frame(Message::Request(Request::NodeStatus))[..3]).await.unwrap();
        closed_within(half, 3_000).await;
        // A connection waiting for a slow reply (longer than the idle
        // timeout) is not idle: it gets its answer.
        let connection = Connection::connect(server.addr, ConnectionLimits::default()).await.unwrap();
        let reply = connection.call(Message::Request(Request::GetOrder(OrderId(2))), TIMEOUT_MS).await.unwrap();
        assert_eq!(reply, Message::Response(Response::Order(None)));
        server.stop().await;
    }

    #[tokio::test]
    async fn a_slow_request_does_not_block_the_pipeline() {
        let handler = ToyHandler { slow_ms: 10_000, ..ToyHandler::new(1) };
        let server = toy_server(handler, ServerLimits::default()).await;
        let connection = Connection::connect(server.addr, ConnectionLimits::default()).await.unwrap();
        let slow = {
            let connection = connection.clone();
            tokio::spawn(async move { connection.call(Message::Request(Request::GetOrder(OrderId(1))), 20_000).await })
        };
        while connection.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for i in 0..20 {
            let reply = connection.call(Message::Request(Request::GetAccount(AccountId(i))), 1_000).await.unwrap();
            assert_eq!(reply, Message::Response(Response::Account(Some(account_view(i)))));
        }
        assert!(!slow.is_finished());
        slow.abort();
        server.stop().await;
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal_and_the_connection_lives_on() {
        let server = toy_server(ToyHandler::new(1), ServerLimits::default()).await;
        let connection = Connection::connect(server.addr, ConnectionLimits::default()).await.unwrap();
        let txn = TxnRequest::new("panic-1", Vec::new());
        let reply = connection.call(Message::Request(Request::Submit(txn)), TIMEOUT_MS).await.unwrap();
        assert!(matches!(reply, Message::Response(Response::Error(RequestError::Internal(_)))), "{reply:?}");
        let reply = connection.call(Message::Request(Request::GetAccount(AccountId(1))), TIMEOUT_MS).await.unwrap();
        assert_eq!(reply, Message::Response(Response::Account(Some(account_view(1)))));
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_closes_connections_with_shutting_down() {
        let server = toy_server(ToyHandler::new(1), ServerLimits::default()).await;
        let addr = server.addr;
        let mut raw = TcpStream::connect(addr).await.unwrap();
        write_frame(
            &mut raw,
            &Envelope { id: 1, message: Message::Request(Request::NodeStatus) },
            DEFAULT_MAX_FRAME_BYTES,
        )
        .await
        .unwrap();
        let first = read_frame(&mut raw, DEFAULT_MAX_FRAME_BYTES).await.unwrap().unwrap();
        assert_eq!(first.id, 1);
        server.stop().await;
        let notice = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut raw, DEFAULT_MAX_FRAME_BYTES))
            .await
            .expect("closed promptly")
            .unwrap();
        assert!(
            matches!(
                notice,
                Some(Envelope { id: 0, message: Message::Response(Response::Error(RequestError::ShuttingDown)) })
            ),
            "{notice:?}"
        );
        let end = read_frame(&mut raw, DEFAULT_MAX_FRAME_BYTES).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
        assert!(Connection::connect(addr, ConnectionLimits::default()).await.is_err(), "no longer accepting");
    }
}
