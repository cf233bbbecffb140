//! A multiplexed, pipelined connection to one node.
//!
//! Many calls share one TCP stream: each request goes out in an
//! [`Envelope`] with a fresh non-zero id, and the reply carrying the same id
//! completes that call, whatever order replies come back in. One writer task
//! owns the write half (fed by a bounded channel, so writers never contend on
//! the socket) and one reader task owns the read half and completes the
//! pending calls.
//!
//! Everything is bounded: requests in flight (past the limit a call fails at
//! once with [`ConnectionError::TooManyInFlight`] instead of queueing without
//! end), the write queue, the frame size, and every call's duration. When the
//! stream dies, every pending call fails promptly with the reason and
//! [`Connection::is_closed`] turns true; callers reconnect by making a new
//! [`Connection`].
//!
//! Time comes from `tokio::time` only: it is the clock seam, virtual under the
//! simulator.

use paytx_protocol::frame::{encode_frame, read_frame, FrameError, DEFAULT_MAX_FRAME_BYTES, READ_BUFFER_BYTES};
use paytx_protocol::messages::CONNECTION_ERROR_ID;
use paytx_protocol::{Envelope, Message, PeerResponse, RequestError, Response};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

/// Limits of one client-side connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Largest frame sent or accepted (length prefix excluded), in bytes.
    pub max_frame_bytes: u32,
    /// Most calls waiting for a reply at once. Past it a call fails at once
    /// with [`ConnectionError::TooManyInFlight`]: the caller backs off rather
    /// than growing a queue nobody bounds.
    pub max_in_flight: usize,
    /// Bound on establishing the TCP connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Bound on writing one batch of frames, in milliseconds. A peer that
    /// stops reading for this long has its connection closed, so calls fail
    /// and callers reconnect instead of timing out on it forever.
    pub write_timeout_ms: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_in_flight: 8192,
            connect_timeout_ms: 2_000,
            write_timeout_ms: 30_000,
        }
    }
}

/// Why a call on a [`Connection`] failed.
///
/// Whether the peer processed the request is unknown for every variant except
/// [`ConnectionError::TooManyInFlight`] and [`ConnectionError::FrameTooLarge`]
/// (nothing was sent): retry only idempotent requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The TCP connection could not be established.
    #[error("could not connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// Establishing the TCP connection took longer than allowed.
    #[error("connecting to {addr} timed out after {timeout_ms} ms")]
    ConnectTimeout { addr: SocketAddr, timeout_ms: u64 },
    /// The connection is closed (peer closed it, I/O error, or every handle
    /// was dropped). Make a new connection.
    #[error("connection to {addr} is closed: {reason}")]
    Closed { addr: SocketAddr, reason: String },
    /// The peer closed the connection with a typed error (a reply with id 0),
    /// e.g. `Overloaded` when it is at its connection limit, `ShuttingDown`,
    /// or `Invalid(Malformed)` when it could not decode what we sent.
    #[error("{addr} closed the connection with an error: {error}")]
    Remote { addr: SocketAddr, error: RequestError },
    /// Too many calls already wait for a reply on this connection; nothing
    /// was sent. Back off, or open another connection.
    #[error("too many requests in flight to {addr} (limit {limit})")]
    TooManyInFlight { addr: SocketAddr, limit: usize },
    /// The request does not fit in one frame; nothing was sent.
    #[error("request does not fit in a frame: {reason}")]
    FrameTooLarge { reason: String },
    /// No reply within the call's timeout. The connection stays usable.
    #[error("no reply from {addr} within {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u64 },
    /// The peer sent something that breaks the protocol; the connection is
    /// closed.
    #[error("protocol error from {addr}: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
}

impl ConnectionError {
    /// `true` when the connection this error came from is unusable, so the
    /// caller should move to a new connection (possibly another node).
    pub fn is_connection_failure(&self) -> bool {
        matches!(
            self,
            ConnectionError::Connect { .. }
                | ConnectionError::ConnectTimeout { .. }
                | ConnectionError::Closed { .. }
                | ConnectionError::Remote { .. }
                | ConnectionError::Protocol { .. }
        )
    }
}

type ReplySender = oneshot::Sender<Result<Message, ConnectionError>>;

/// The state the reader and writer tasks share with the handles.
struct Shared {
    peer: SocketAddr,
    state: Mutex<State>,
    /// Mirrors `state.closed.is_some()` for a lock-free `is_closed`.
    closed: AtomicBool,
    /// Tells the reader and writer tasks to stop.
    stop: watch::Sender<bool>,
}

struct State {
    pending: BTreeMap<u64, ReplySender>,
    /// Why the connection closed; `Some` means closed for good.
    closed: Option<ConnectionError>,
}

impl Shared {
    /// The lock is never held across an await, so poisoning can only come
    /// from a panic in the few lines below; the map is still consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes the connection for good: records why (first reason wins), fails
    /// every pending call with it, and stops both tasks.
    fn close(&self, error: ConnectionError) {
        let (pending, error) = {
            let mut state = self.lock();
            let error = state.closed.get_or_insert(error).clone();
            (std::mem::take(&mut state.pending), error)
        };
        self.closed.store(true, Ordering::Release);
        self.stop.send_replace(true);
        if !pending.is_empty() {
            tracing::debug!(peer = %self.peer, pending = pending.len(), %error, "connection closed; failing pending calls");
        }
        for (_, reply) in pending {
            // The caller may have given up already; nothing to do then.
            let _ = reply.send(Err(error.clone()));
        }
    }

    fn complete(&self, id: u64, message: Message) {
        let reply = self.lock().pending.remove(&id);
        match reply {
            Some(reply) => {
                let _ = reply.send(Ok(message));
            }
            // A call that timed out (or was cancelled) already removed itself.
            None => {
                tracing::debug!(peer = %self.peer, id, "reply to no pending call (timed out?); dropped")
            }
        }
    }
}

/// Removes a call from the pending map when the call ends in any way
/// (reply, timeout, or the caller dropping the future), so abandoned calls
/// never leak map entries.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

struct Inner {
    shared: Arc<Shared>,
    limits: ConnectionLimits,
    next_id: AtomicU64,
    /// Encoded frames for the writer task. Bounded: a full queue makes callers
    /// wait (within their timeout), which pushes back on producers.
    frames: mpsc::Sender<Vec<u8>>,
    reader: AbortHandle,
    writer: AbortHandle,
}

impl Drop for Inner {
    /// The last handle is gone: nobody can read replies any more, so stop
    /// both tasks and release the socket.
    fn drop(&mut self) {
        self.shared.close(ConnectionError::Closed { addr: self.shared.peer, reason: "connection dropped".into() });
        self.reader.abort();
        self.writer.abort();
    }
}

/// A multiplexed, pipelined connection. Cheap to clone; every clone shares
/// one TCP stream. `Send + Sync`.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.inner.shared.peer)
            .field("closed", &self.is_closed())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Connection {
    /// Connects to `addr` within `limits.connect_timeout_ms`.
    pub async fn connect(addr: SocketAddr, limits: ConnectionLimits) -> Result<Connection, ConnectionError> {
        let timeout_ms = limits.connect_timeout_ms;
        let stream = match tokio::time::timeout(Duration::from_millis(timeout_ms), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(ConnectionError::Connect { addr, reason: e.to_string() }),
            Err(_) => return Err(ConnectionError::ConnectTimeout { addr, timeout_ms }),
        };
        // Requests are small and latency-bound; never wait for Nagle.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%addr, error = %e, "could not set TCP_NODELAY");
        }
        Ok(Connection::from_stream(stream, addr, limits))
    }

    /// Wraps an established stream. Spawns the reader and writer tasks, so it
    /// must run inside a tokio runtime.
    pub fn from_stream(stream: TcpStream, peer: SocketAddr, limits: ConnectionLimits) -> Connection {
        let (read_half, write_half) = stream.into_split();
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            peer,
            state: Mutex::new(State { pending: BTreeMap::new(), closed: None }),
            closed: AtomicBool::new(false),
            stop,
        });
        // Each in-flight call queues at most one frame, so this never makes a
        // caller within the in-flight limit wait for long.
        let (frames, frames_rx) = mpsc::channel(limits.max_in_flight.max(1));
        let reader =
            tokio::spawn(read_loop(read_half, shared.clone(), limits.max_frame_bytes, stop_rx.clone())).abort_handle();
        let writer = tokio::spawn(write_loop(write_half, shared.clone(), frames_rx, stop_rx, limits.write_timeout_ms))
            .abort_handle();
        Connection { inner: Arc::new(Inner { shared, limits, next_id: AtomicU64::new(1), frames, reader, writer }) }
    }

    /// The address of the other end.
    pub fn peer(&self) -> SocketAddr {
        self.inner.shared.peer
    }

    /// `true` once the connection is closed for good; every call fails then.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.closed.load(Ordering::Acquire)
    }

    /// Calls waiting for a reply right now.
    pub fn in_flight(&self) -> usize {
        self.inner.shared.lock().pending.len()
    }

    /// The limits this connection was made with.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.inner.limits
    }

    /// `true` when both handles refer to the same underlying connection.
    pub fn same_as(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Closes the connection: pending calls fail with
    /// [`ConnectionError::Closed`].
    pub fn close(&self) {
        let addr = self.peer();
        self.inner.shared.close(ConnectionError::Closed { addr, reason: "closed by this side".into() });
    }

    /// Sends `message` with a fresh id and waits for the reply with that id,
    /// at most `timeout_ms` milliseconds (queueing included).
    pub async fn call(&self, message: Message, timeout_ms: u64) -> Result<Message, ConnectionError> {
        let addr = self.peer();
        match tokio::time::timeout(Duration::from_millis(timeout_ms), self.call_unbounded(message)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectionError::Timeout { addr, timeout_ms }),
        }
    }

    async fn call_unbounded(&self, message: Message) -> Result<Message, ConnectionError> {
        let shared = &*self.inner.shared;
        let id = self.next_id();
        // Encode before registering: an oversized request never occupies a slot.
        let frame = encode_frame(&Envelope { id, message }, self.inner.limits.max_frame_bytes)
            .map_err(|e| ConnectionError::FrameTooLarge { reason: e.to_string() })?;
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut state = shared.lock();
            if let Some(error) = &state.closed {
                return Err(error.clone());
            }
            let limit = self.inner.limits.max_in_flight;
            if state.pending.len() >= limit {
                return Err(ConnectionError::TooManyInFlight { addr: shared.peer, limit });
            }
            state.pending.insert(id, reply_tx);
        }
        let _guard = PendingGuard { shared, id };
        if self.inner.frames.send(frame).await.is_err() {
            // The writer is gone, so the connection is closing; report why.
            return Err(self.closed_error());
        }
        match reply_rx.await {
            Ok(result) => result,
            // The sender was dropped without an answer: closed underneath us.
            Err(_) => Err(self.closed_error()),
        }
    }

    fn closed_error(&self) -> ConnectionError {
        let shared = &self.inner.shared;
        shared
            .lock()
            .closed
            .clone()
            .unwrap_or_else(|| ConnectionError::Closed { addr: shared.peer, reason: "writer stopped".into() })
    }

    /// A fresh non-zero id. Ids are per connection; 2^64 calls never wrap in
    /// practice, but skip 0 (reserved for connection errors) if they do.
    fn next_id(&self) -> u64 {
        loop {
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            if id != CONNECTION_ERROR_ID {
                return id;
            }
        }
    }
}

/// Resolves when `stop` turns true. If every sender is gone the connection
/// is being torn down by `Drop`, which aborts the tasks, so wait forever.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stopped| *stopped).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn read_loop(
    read_half: OwnedReadHalf,
    shared: Arc<Shared>,
    max_frame_bytes: u32,
    mut stop: watch::Receiver<bool>,
) {
    let addr = shared.peer;
    // Replies that arrived together are read with one syscall.
    let mut read_half = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
    let error = loop {
        let frame = tokio::select! {
            _ = stopped(&mut stop) => return,
            frame = read_frame(&mut read_half, max_frame_bytes) => frame,
        };
        match frame {
            Ok(Some(Envelope { id: CONNECTION_ERROR_ID, message })) => {
                break match message {
                    Message::Response(Response::Error(error)) | Message::PeerReply(PeerResponse::Error(error)) => {
                        ConnectionError::Remote { addr, error }
                    }
                    other => ConnectionError::Protocol {
                        addr,
                        reason: format!("connection-level message (id 0) that is not an error: {other:?}"),
                    },
                };
            }
            Ok(Some(Envelope { id, message })) => shared.complete(id, message),
            Ok(None) => break ConnectionError::Closed { addr, reason: "closed by the peer".into() },
            Err(FrameError::Io(e)) => break ConnectionError::Closed { addr, reason: e.to_string() },
            Err(FrameError::Truncated) => {
                break ConnectionError::Closed { addr, reason: "closed by the peer in the middle of a frame".into() }
            }
            Err(e) => break ConnectionError::Protocol { addr, reason: e.to_string() },
        }
    };
    match &error {
        ConnectionError::Closed { .. } => tracing::debug!(%addr, %error, "connection closed"),
        _ => tracing::warn!(%addr, %error, "connection failed"),
    }
    shared.close(error);
}

async fn write_loop(
    write_half: OwnedWriteHalf,
    shared: Arc<Shared>,
    mut frames: mpsc::Receiver<Vec<u8>>,
    mut stop: watch::Receiver<bool>,
    write_timeout_ms: u64,
) {
    let addr = shared.peer;
    let mut writer = BufWriter::new(write_half);
    loop {
        let frame = tokio::select! {
            _ = stopped(&mut stop) => break,
            frame = frames.recv() => frame,
        };
        let Some(frame) = frame else { break };
        // Batch whatever else is queued into one flush: pipelined calls then
        // share syscalls and TCP segments.
        let written = async {
            writer.write_all(&frame).await?;
            while let Ok(frame) = frames.try_recv() {
                writer.write_all(&frame).await?;
            }
            writer.flush().await
        };
        let result = tokio::select! {
            _ = stopped(&mut stop) => break,
            result = tokio::time::timeout(Duration::from_millis(write_timeout_ms), written) => result,
        };
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("write failed: {e}")),
            Err(_) => Some(format!("the peer did not read for {write_timeout_ms} ms")),
        };
        if let Some(reason) = failure {
            shared.close(ConnectionError::Closed { addr, reason });
            return;
        }
    }
    // Half-close so the peer sees a clean end of stream.
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::server::ServerLimits;
    use crate::net::test_support::{account_view, TestServer, ToyHandler};
    use paytx_protocol::frame::write_frame;
    use paytx_protocol::{AccountId, OrderId, Request, TxnId};
    use tokio::net::TcpListener;

    const TIMEOUT_MS: u64 = 5_000;

    async fn toy_server(handler: ToyHandler) -> TestServer {
        TestServer::start(Arc::new(handler), ServerLimits::default()).await
    }

    #[tokio::test]
    async fn round_trip_request_and_peer_message() {
        let server = toy_server(ToyHandler::new(7)).await;
        let connection = Connection::connect(server.addr, ConnectionLimits::default()).await.unwrap();
        let reply = connection.call(Message::Request(Request::GetAccount(AccountId(42))), TIMEOUT_MS).await.unwrap();
        assert_eq!(reply, Message::Response(Response::Account(Some(account_view(42)))));
        let txn = TxnId { term: 3, node: 1, seq: 4 };
        let reply = connection
            .call(Message::Peer(paytx_protocol::PeerRequest::QueryDecision { txn }), TIMEOUT_MS)
            .await
            .unwrap();
        assert_eq!(reply, Message::PeerReply(PeerResponse::Decision { commit: true, at_ms: 0 }));
        assert_eq!(connection.in_flight(), 0);
        assert!(!connection.is_closed());
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn five_hundred_pipelined_calls_over_one_connection_all_match() {
        let server = toy_server(ToyHandler::new(1)).await;
        let connection = Connection::connect(server.addr, ConnectionLimits::default()).await.unwrap();
        let calls: Vec<_> = (0..500u64)
            .map(|i| {
                let connection = connection.clone();
                tokio::spawn(async move {
                    let reply = connection.call(Message::Request(Request::GetAccount(AccountId(i))), TIMEOUT_MS).await;
                    (i, reply)
                })
            })
            .collect();
        for call in calls {
            let (i, reply) = call.await.unwrap();
            assert_eq!(reply.unwrap(), Message::Response(Response::Account(Some(account_view(i)))), "call {i}");
        }
        assert_eq!(connection.in_flight(), 0);
        server.stop().await;
    }

    #[tokio::test]
    async fn in_flight_limit_is_a_typed_error_not_a_queue() {
        let handler = ToyHandler { slow_ms: 300, ..ToyHandler::new(1) };
        let server = toy_server(handler).await;
        let limits = ConnectionLimits { max_in_flight: 2, ..ConnectionLimits::default() };
        let connection = Connection::connect(server.addr, limits).await.unwrap();
        let slow = |connection: Connection| async move {
            connection.call(Message::Request(Request::GetOrder(OrderId(1))), TIMEOUT_MS).await
        };
        let first = tokio::spawn(slow(connection.clone()));
        let second = tokio::spawn(slow(connection.clone()));
        while connection.in_flight() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let third = slow(connection.clone()).await;
        assert!(matches!(third, Err(ConnectionError::TooManyInFlight { limit: 2, .. })), "{third:?}");
        assert!(first.await.unwrap().is_ok());
        assert!(second.await.unwrap().is_ok());
        // Slots are released: calls work again.
        assert!(slow(connection.clone()).await.is_ok());
        server.stop().await;
    }

    #[tokio::test]
    async fn a_timed_out_call_frees_its_slot_and_the_connection_stays_usable() {
        let handler = ToyHandler { slow_ms: 500, ..ToyHandler::new(1) };
        let server = toy_server(handler).await;
        let connection = Connection::connect(server.addr, ConnectionLimits::default()).await.unwrap();
        let result = connection.call(Message::Request(Request::GetOrder(OrderId(1))), 50).await;
        assert!(matches!(result, Err(ConnectionError::Timeout { timeout_ms: 50, .. })), "{result:?}");
        assert_eq!(connection.in_flight(), 0);
        // The late reply is dropped quietly; a new call still works.
        let reply = connection.call(Message::Request(Request::GetAccount(AccountId(5))), TIMEOUT_MS).await.unwrap();
        assert_eq!(reply, Message::Response(Response::Account(Some(account_view(5)))));
        assert!(!connection.is_closed());
        server.stop().await;
    }

    #[tokio::test]
    async fn pending_calls_fail_promptly_when_the_server_goes_away() {
        let handler = ToyHandler { slow_ms: 60_000, ..ToyHandler::new(1) };
        let server = toy_server(handler).await;
        let connection = Connection::connect(server.addr, ConnectionLimits::default()).await.unwrap();
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let connection = connection.clone();
                tokio::spawn(
                    async move { connection.call(Message::Request(Request::GetOrder(OrderId(1))), 60_000).await },
                )
            })
            .collect();
        while connection.in_flight() < 10 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        server.stop().await;
        for call in calls {
            let result = tokio::time::timeout(Duration::from_secs(5), call).await.expect("fails promptly").unwrap();
            assert!(
                matches!(
                    result,
                    Err(ConnectionError::Remote { error: RequestError::ShuttingDown, .. }
                        | ConnectionError::Closed { .. })
                ),
                "{result:?}"
            );
        }
        assert!(connection.is_closed());
        let after = connection.call(Message::Request(Request::NodeStatus), TIMEOUT_MS).await;
        assert!(after.as_ref().is_err_and(ConnectionError::is_connection_failure), "{after:?}");
    }

    #[tokio::test]
    async fn an_id_zero_reply_fails_every_pending_call_with_that_error() {
        // A fake server: waits for two requests, then reports a connection
        // error with id 0 (and keeps the socket open).
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            for _ in 0..2 {
                read_frame(&mut stream, DEFAULT_MAX_FRAME_BYTES).await.unwrap().unwrap();
            }
            let error = Envelope {
                id: CONNECTION_ERROR_ID,
                message: Message::Response(Response::Error(RequestError::Overloaded { what: "test".into() })),
            };
            write_frame(&mut stream, &error, DEFAULT_MAX_FRAME_BYTES).await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let connection = Connection::connect(addr, ConnectionLimits::default()).await.unwrap();
        let call = |connection: Connection| async move {
            connection.call(Message::Request(Request::NodeStatus), TIMEOUT_MS).await
        };
        let (first, second) = tokio::join!(call(connection.clone()), call(connection.clone()));
        for result in [first, second] {
            assert!(
                matches!(&result, Err(ConnectionError::Remote { error: RequestError::Overloaded { .. }, .. })),
                "{result:?}"
            );
        }
        assert!(connection.is_closed());
        fake.abort();
    }

    #[tokio::test]
    async fn dropping_every_handle_closes_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connection = Connection::connect(addr, ConnectionLimits::default()).await.unwrap();
        let (mut stream, _) = listener.accept().await.unwrap();
        drop(connection);
        let end = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut stream, DEFAULT_MAX_FRAME_BYTES))
            .await
            .expect("socket closed promptly");
        assert!(matches!(end, Ok(None) | Err(FrameError::Io(_))), "{end:?}");
    }

    #[tokio::test]
    async fn connect_to_a_dead_address_is_a_typed_error() {
        let addr = crate::net::test_support::dead_addr().await;
        let result = Connection::connect(addr, ConnectionLimits::default()).await;
        assert!(matches!(result, Err(ConnectionError::Connect { .. })), "{result:?}");
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused_before_sending() {
        let server = toy_server(ToyHandler::new(1)).await;
        let limits = ConnectionLimits { max_frame_bytes: 64, ..ConnectionLimits::default() };
        let connection = Connection::connect(server.addr, limits).await.unwrap();
        let key = paytx_protocol::IdempotencyKey::new("k".repeat(100));
        let result = connection.call(Message::Request(Request::TxnStatus(key)), TIMEOUT_MS).await;
        assert!(matches!(result, Err(ConnectionError::FrameTooLarge { .. })), "{result:?}");
        assert_eq!(connection.in_flight(), 0);
        assert!(connection.call(Message::Request(Request::NodeStatus), TIMEOUT_MS).await.is_ok());
        server.stop().await;
    }
}
