//! The Rust client services use to talk to a paytx cluster.
//!
//! A [`Client`] holds one multiplexed TCP connection to one node of the
//! cluster (any node: it forwards to the coordinator leader or to the shard
//! owner). Clones share that connection, and concurrent calls are pipelined
//! over it. Transient failures (no leader yet, overload, timeouts, a dead
//! node) are retried with the *same* request — for a submit, the same
//! idempotency key, which is what makes a retry safe: the cluster applies a
//! key at most once and answers a repeat with the first outcome. When a node
//! fails, the client moves to the next address. Retries are bounded
//! ([`ClientConfig::max_retries`]) with exponential backoff and jitter.
//!
//! ```no_run
//! use paytx::client::Client;
//! use paytx_protocol::{AccountId, Currency, Money, Operation, TxnRequest};
//!
//! # async fn example() -> Result<(), paytx::client::ClientError> {
//! let addrs = vec!["10.0.0.1:7400".parse().unwrap(), "10.0.0.2:7400".parse().unwrap()];
//! let client = Client::connect(addrs).await?;
//! let cny = |minor| Money::new(minor, Currency::CNY);
//! // The key identifies this payment: reuse it to retry, never for another one.
//! let payment = TxnRequest::new(
//!     "order-42-payment",
//!     vec![
//!         Operation::Debit { account: AccountId(1), amount: cny(1_999) },
//!         Operation::Credit { account: AccountId(2), amount: cny(1_999) },
//!     ],
//! );
//! let receipt = client.submit(payment).await?;
//! println!("{}: {:?}", receipt.txn, receipt.outcome);
//! if let Some(account) = client.account(AccountId(1)).await? {
//!     println!("balance {} (held {})", account.balance_minor, account.held_minor);
//! }
//! # Ok(())
//! # }
//! ```

use crate::net::connection::{Connection, ConnectionError, ConnectionLimits};
use paytx_protocol::messages::{AccountView, ChargeView, KeyStatus, NodeStatusView, OrderView, RecordPage, RecordView};
use paytx_protocol::ops::MAX_SCAN_RECORDS;
use paytx_protocol::{
    AccountId, ChannelId, IdempotencyKey, Message, OrderId, RecordKey, RecordNs, Request, RequestError, Response,
    TxnReceipt, TxnRequest,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How a [`Client`] connects and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Bound on one attempt of one request (connecting excluded), in ms.
    pub request_timeout_ms: u64,
    /// Retries after the first attempt; 0 disables retrying.
    pub max_retries: u32,
    /// Backoff before the first retry, in ms; doubles per retry.
    pub retry_backoff_ms: u64,
    /// Cap on the backoff between two retries, in ms.
    pub max_retry_backoff_ms: u64,
    /// Limits of the connection: frame cap, requests in flight, connect timeout.
    pub connection: ConnectionLimits,
    /// Seed of the backoff jitter. `None` seeds from the OS, so that many
    /// clients do not retry in lock-step; set it for reproducible tests.
    pub jitter_seed: Option<u64>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout_ms: 10_000,
            max_retries: 8,
            retry_backoff_ms: 20,
            max_retry_backoff_ms: 2_000,
            connection: ConnectionLimits::default(),
            jitter_seed: None,
        }
    }
}

/// Why a [`Client`] call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The cluster answered with a typed error. When
    /// [`RequestError::is_retryable`] is true the client already retried
    /// [`ClientConfig::max_retries`] times (no leader, overload, unavailable
    /// shard): retry later with the *same* idempotency key. Otherwise
    /// (`Invalid`, `IdempotencyConflict`) retrying cannot help: fix the
    /// request, or use a new key for a new transaction.
    #[error("the cluster rejected the request: {0}")]
    Request(RequestError),
    /// No node could be reached (or every connection broke) through all
    /// retries. Check the addresses and that the cluster is up. A submit may
    /// or may not have been applied: retry it with the same idempotency key,
    /// or ask [`Client::txn_status`].
    #[error("no node reachable (tried {tried:?}): {last}")]
    Unreachable { tried: Vec<SocketAddr>, last: String },
    /// No answer within [`ClientConfig::request_timeout_ms`] on the last
    /// attempt. The outcome is unknown: retry with the same idempotency key
    /// (it is applied at most once) or ask [`Client::txn_status`].
    #[error("the request timed out; retry with the same idempotency key to learn its outcome")]
    Timeout,
    /// The node answered something this client does not understand (version
    /// mismatch or a bug), or the request does not fit in a frame. Retrying
    /// will not help: check the client and node versions and report it.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// `true` when retrying later with the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Request(error) => error.is_retryable(),
            ClientError::Unreachable { .. } | ClientError::Timeout => true,
            ClientError::Protocol(_) => false,
        }
    }
}

/// What to do with the connection after a failed attempt.
enum Fate {
    /// Fine; retry on it (e.g. `NoLeader`: this node forwards once it knows).
    Keep,
    /// Move to the next node, but let other calls on it finish.
    MoveOn,
    /// Dead; move to the next node.
    Broken,
}

/// The outcome of a failed attempt.
enum Failure {
    /// Return at once.
    Fatal(ClientError),
    /// Retry (if retries are left) with the same request.
    Retry(ClientError, Fate),
}

/// Which node a request goes to.
#[derive(Clone, Copy)]
enum Target {
    /// Whichever node the client is connected to, failing over between them.
    Cluster,
    /// This node only.
    Node(SocketAddr),
}

/// The node the client talks to now.
struct Current {
    /// Index into `addrs` of the node to use (or try first).
    index: usize,
    connection: Option<Connection>,
}

struct Inner {
    addrs: Vec<SocketAddr>,
    config: ClientConfig,
    /// A tokio mutex: held across the connect, so concurrent calls wait for
    /// one connect instead of each opening a connection.
    current: tokio::sync::Mutex<Current>,
    /// Jitter source. A std mutex, never held across an await.
    rng: std::sync::Mutex<StdRng>,
}

/// A paytx client. `Clone + Send + Sync`; clones share one connection, and
/// concurrent calls are pipelined over it.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("addrs", &self.inner.addrs).field("config", &self.inner.config).finish()
    }
}

impl Client {
    /// Connects to the first reachable node of `addrs` (in order) with the
    /// default [`ClientConfig`].
    pub async fn connect(addrs: Vec<SocketAddr>) -> Result<Client, ClientError> {
        Client::connect_with(addrs, ClientConfig::default()).await
    }

    /// Connects to the first reachable node of `addrs` (in order). Fails
    /// with [`ClientError::Unreachable`] when none answers.
    pub async fn connect_with(addrs: Vec<SocketAddr>, config: ClientConfig) -> Result<Client, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Unreachable { tried: Vec::new(), last: "no node addresses were given".into() });
        }
        let rng = match config.jitter_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            // The client runs outside the cluster (never in the simulator),
            // so OS entropy is fine here and keeps clients out of lock-step.
            None => StdRng::from_entropy(),
        };
        let client = Client {
            inner: Arc::new(Inner {
                addrs,
                config,
                current: tokio::sync::Mutex::new(Current { index: 0, connection: None }),
                rng: std::sync::Mutex::new(rng),
            }),
        };
        let mut tried = Vec::new();
        client.cluster_connection(&mut tried).await?;
        Ok(client)
    }

    /// The node addresses this client was given.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.inner.addrs
    }

    /// The node the client is connected to now, if any.
    pub async fn connected_to(&self) -> Option<SocketAddr> {
        let current = self.inner.current.lock().await;
        current.connection.as_ref().filter(|c| !c.is_closed()).map(Connection::peer)
    }

    /// Runs a transaction. Safe to call again with the same request after
    /// any error: the idempotency key makes the cluster apply it at most once.
    pub async fn submit(&self, txn: TxnRequest) -> Result<TxnReceipt, ClientError> {
        match self.request(Request::Submit(txn)).await? {
            Response::Submitted(receipt) => Ok(receipt),
            other => Err(unexpected("Submitted", &other)),
        }
    }

    /// Reads an account; `None` when it does not exist.
    pub async fn account(&self, account: AccountId) -> Result<Option<AccountView>, ClientError> {
        match self.request(Request::GetAccount(account)).await? {
            Response::Account(view) => Ok(view),
            other => Err(unexpected("Account", &other)),
        }
    }

    /// Reads an order; `None` when it does not exist.
    pub async fn order(&self, order: OrderId) -> Result<Option<OrderView>, ClientError> {
        match self.request(Request::GetOrder(order)).await? {
            Response::Order(view) => Ok(view),
            other => Err(unexpected("Order", &other)),
        }
    }

    /// Reads the charge of `order` through `channel`; `None` when there is none.
    pub async fn charge(&self, channel: ChannelId, order: OrderId) -> Result<Option<ChargeView>, ClientError> {
        match self.request(Request::GetCharge { channel, order }).await? {
            Response::Charge(view) => Ok(view),
            other => Err(unexpected("Charge", &other)),
        }
    }

    /// Reads a committed record; `None` when it does not exist.
    pub async fn get_record(&self, key: RecordKey) -> Result<Option<RecordView>, ClientError> {
        match self.request(Request::GetRecord(key)).await? {
            Response::Record(view) => Ok(view),
            other => Err(unexpected("Record", &other)),
        }
    }

    /// One page of the committed records of namespace `ns` on records shard
    /// `shard`, in key order, strictly after `after`, at most
    /// `min(limit, MAX_SCAN_RECORDS)`. The page says how many records shards
    /// there are; a shard out of range is `RequestError::Invalid`.
    pub async fn scan_records(
        &self,
        shard: u32,
        ns: RecordNs,
        after: Option<RecordKey>,
        limit: u32,
    ) -> Result<RecordPage, ClientError> {
        match self.request(Request::ScanRecords { shard, ns, after, limit }).await? {
            Response::Records(page) => Ok(page),
            other => Err(unexpected("Records", &other)),
        }
    }

    /// One page of a range read of one partition of an ordered namespace
    /// (`paytx_protocol::RangeScan`), from the one records shard holding it.
    pub async fn scan_range(&self, scan: paytx_protocol::RangeScan) -> Result<RecordPage, ClientError> {
        match self.request(Request::ScanRange(scan)).await? {
            Response::Records(page) => Ok(page),
            other => Err(unexpected("Records", &other)),
        }
    }

    /// Every committed record of namespace `ns`, at most `max_records` of
    /// them: shard by shard (`0..shard_count`), each in key order. Ask for
    /// one more than you need to learn whether there were more. Pages are
    /// read one after another; records written meanwhile may or may not be
    /// seen (each page is consistent, the whole scan is not a snapshot).
    pub async fn scan_namespace(&self, ns: RecordNs, max_records: usize) -> Result<Vec<RecordView>, ClientError> {
        let mut records: Vec<RecordView> = Vec::new();
        let mut shard: u32 = 0;
        let mut shard_count: u32 = 1;
        while shard < shard_count && records.len() < max_records {
            let mut after: Option<RecordKey> = None;
            loop {
                let remaining = max_records.saturating_sub(records.len());
                if remaining == 0 {
                    break;
                }
                let limit = u32::try_from(remaining).unwrap_or(u32::MAX).min(MAX_SCAN_RECORDS);
                let page = self.scan_records(shard, ns, after, limit).await?;
                shard_count = page.shard_count;
                // A page must move the cursor forward and stay in the
                // namespace, or a broken node could keep this loop going.
                let sane = page.records.len() <= limit as usize
                    && page.records.iter().all(|r| r.key.ns == ns)
                    && page.records.windows(2).all(|w| w[0].key < w[1].key)
                    && page.records.first().is_none_or(|r| after.is_none_or(|a| a < r.key))
                    && !(page.more && page.records.is_empty());
                if !sane {
                    return Err(ClientError::Protocol(format!(
                        "records shard {shard} answered a scan page that does not follow the cursor"
                    )));
                }
                after = page.records.last().map(|r| r.key).or(after);
                records.extend(page.records);
                if !page.more {
                    break;
                }
            }
            shard = shard.saturating_add(1);
        }
        records.truncate(max_records);
        Ok(records)
    }

    /// What became of the transaction submitted with `key`:
    /// [`KeyStatus::Known`] with its state, [`KeyStatus::NotRegistered`]
    /// when no transaction was registered under it, or
    /// [`KeyStatus::Unknown`] when the key is not held but keys older than
    /// `[raft] key_retention_secs` have been evicted — then it may have
    /// committed long ago, and must not be read as "nothing applied".
    pub async fn txn_status(&self, key: IdempotencyKey) -> Result<KeyStatus, ClientError> {
        match self.request(Request::TxnStatus(key)).await? {
            Response::TxnStatus(status) => Ok(status),
            other => Err(unexpected("TxnStatus", &other)),
        }
    }

    /// The status of the node this client is connected to.
    pub async fn node_status(&self) -> Result<NodeStatusView, ClientError> {
        match self.request(Request::NodeStatus).await? {
            Response::NodeStatus(view) => Ok(view),
            other => Err(unexpected("NodeStatus", &other)),
        }
    }

    /// The status of the node at `addr` (over a connection of its own; no
    /// failover, since the question is about that node).
    pub async fn node_status_of(&self, addr: SocketAddr) -> Result<NodeStatusView, ClientError> {
        match self.run(Request::NodeStatus, Target::Node(addr)).await? {
            Response::NodeStatus(view) => Ok(view),
            other => Err(unexpected("NodeStatus", &other)),
        }
    }

    /// Sends any request with retries and failover. A `Response::Error`
    /// answer comes back as [`ClientError::Request`].
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        self.run(request, Target::Cluster).await
    }

    async fn run(&self, request: Request, target: Target) -> Result<Response, ClientError> {
        let config = &self.inner.config;
        let mut tried = Vec::new();
        // The connection of a `Target::Node` request, reused across retries.
        let mut own: Option<Connection> = None;
        let mut retry: u32 = 0;
        loop {
            let connection = match target {
                Target::Cluster => self.cluster_connection(&mut tried).await,
                Target::Node(addr) => node_connection(&mut own, addr, &config.connection, &mut tried).await,
            };
            let error = match connection {
                Ok(connection) => {
                    let result = connection.call(Message::Request(request.clone()), config.request_timeout_ms).await;
                    match classify(result, &mut tried) {
                        Ok(response) => return Ok(response),
                        Err(Failure::Fatal(error)) => return Err(error),
                        Err(Failure::Retry(error, fate)) => {
                            match (target, fate) {
                                (_, Fate::Keep) => {}
                                (Target::Cluster, Fate::MoveOn) => self.move_on(&connection, false).await,
                                (Target::Cluster, Fate::Broken) => self.move_on(&connection, true).await,
                                (Target::Node(_), Fate::MoveOn | Fate::Broken) => {
                                    connection.close();
                                    own = None;
                                }
                            }
                            error
                        }
                    }
                }
                Err(error) => error,
            };
            if retry >= config.max_retries {
                tracing::debug!(retries = retry, %error, "giving up");
                return Err(error);
            }
            retry += 1;
            let backoff_ms = self.backoff_ms(retry);
            tracing::debug!(retry, backoff_ms, %error, "retrying");
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        }
    }

    /// The shared connection, connecting if needed: tries every address once,
    /// starting with the current one.
    async fn cluster_connection(&self, tried: &mut Vec<SocketAddr>) -> Result<Connection, ClientError> {
        let addrs = &self.inner.addrs;
        let mut current = self.inner.current.lock().await;
        if let Some(connection) = &current.connection {
            if !connection.is_closed() {
                return Ok(connection.clone());
            }
            // Closed under us (the node died or shut down): try the next one first.
            current.connection = None;
            current.index = (current.index + 1) % addrs.len();
        }
        let mut last = String::new();
        for step in 0..addrs.len() {
            let index = (current.index + step) % addrs.len();
            let addr = addrs[index];
            match Connection::connect(addr, self.inner.config.connection.clone()).await {
                Ok(connection) => {
                    tracing::debug!(%addr, "connected");
                    current.index = index;
                    current.connection = Some(connection.clone());
                    return Ok(connection);
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "connect failed");
                    note_tried(tried, addr);
                    last = e.to_string();
                }
            }
        }
        Err(ClientError::Unreachable { tried: tried.clone(), last })
    }

    /// Stops using `connection` for new calls and moves to the next address,
    /// unless another call already did.
    async fn move_on(&self, connection: &Connection, broken: bool) {
        if broken {
            connection.close();
        }
        let mut current = self.inner.current.lock().await;
        if current.connection.as_ref().is_some_and(|c| c.same_as(connection)) {
            current.connection = None;
            current.index = (current.index + 1) % self.inner.addrs.len();
        }
    }

    /// Exponential backoff with "equal jitter": half fixed, half random, so
    /// clients that failed together do not retry together.
    fn backoff_ms(&self, retry: u32) -> u64 {
        let config = &self.inner.config;
        let doublings = retry.saturating_sub(1).min(32);
        let ceiling_ms = config.retry_backoff_ms.saturating_mul(1u64 << doublings).min(config.max_retry_backoff_ms);
        let half_ms = ceiling_ms / 2;
        let mut rng = self.inner.rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        half_ms + rng.gen_range(0..=ceiling_ms - half_ms)
    }
}

async fn node_connection(
    own: &mut Option<Connection>,
    addr: SocketAddr,
    limits: &ConnectionLimits,
    tried: &mut Vec<SocketAddr>,
) -> Result<Connection, ClientError> {
    if let Some(connection) = own.as_ref().filter(|c| !c.is_closed()) {
        return Ok(connection.clone());
    }
    match Connection::connect(addr, limits.clone()).await {
        Ok(connection) => {
            *own = Some(connection.clone());
            Ok(connection)
        }
        Err(e) => {
            note_tried(tried, addr);
            Err(ClientError::Unreachable { tried: tried.clone(), last: e.to_string() })
        }
    }
}

fn note_tried(tried: &mut Vec<SocketAddr>, addr: SocketAddr) {
    if !tried.contains(&addr) {
        tried.push(addr);
    }
}

/// Sorts the result of one attempt into an answer, a retry (and what to do
/// with the connection), or a final error.
fn classify(result: Result<Message, ConnectionError>, tried: &mut Vec<SocketAddr>) -> Result<Response, Failure> {
    let error = match result {
        Ok(Message::Response(Response::Error(error))) => {
            if !error.is_retryable() {
                return Err(Failure::Fatal(ClientError::Request(error)));
            }
            // A node that is shutting down will not get better: go elsewhere.
            // Otherwise the node itself is fine (it forwards, or sheds load).
            let fate = if error == RequestError::ShuttingDown { Fate::MoveOn } else { Fate::Keep };
            return Err(Failure::Retry(ClientError::Request(error), fate));
        }
        Ok(Message::Response(response)) => return Ok(response),
        Ok(other) => {
            let reason = format!("expected a response, got {other:?}");
            return Err(Failure::Fatal(ClientError::Protocol(reason)));
        }
        Err(error) => error,
    };
    Err(match error {
        // The node may be partitioned from the rest: try another one, but
        // let other calls on this connection finish.
        ConnectionError::Timeout { .. } => Failure::Retry(ClientError::Timeout, Fate::MoveOn),
        ConnectionError::TooManyInFlight { limit, .. } => Failure::Retry(
            ClientError::Request(RequestError::Overloaded {
                what: format!("this client has {limit} requests in flight to the node"),
            }),
            Fate::Keep,
        ),
        ConnectionError::FrameTooLarge { reason } => Failure::Fatal(ClientError::Protocol(reason)),
        ConnectionError::Remote { addr, error: RequestError::Invalid(invalid) } => {
            let reason = format!("{addr} could not decode our request: {invalid}");
            Failure::Fatal(ClientError::Protocol(reason))
        }
        ConnectionError::Remote { addr, error } => {
            note_tried(tried, addr);
            if error.is_retryable() {
                Failure::Retry(ClientError::Request(error), Fate::Broken)
            } else {
                Failure::Fatal(ClientError::Request(error))
            }
        }
        ConnectionError::Protocol { reason, .. } => Failure::Fatal(ClientError::Protocol(reason)),
        error @ (ConnectionError::Connect { addr, .. }
        | ConnectionError::ConnectTimeout { addr, .. }
        | ConnectionError::Closed { addr, .. }) => {
            note_tried(tried, addr);
            Failure::Retry(ClientError::Unreachable { tried: tried.clone(), last: error.to_string() }, Fate::Broken)
        }
    })
}

fn unexpected(expected: &str, got: &Response) -> ClientError {
    ClientError::Protocol(format!("expected a {expected} response, got {got:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::server::ServerLimits;
    use crate::net::test_support::{account_view, dead_addr, node_status, TestServer, ToyHandler};
    use paytx_protocol::{Currency, Money, Operation, Outcome};

    fn transfer(key: &str) -> TxnRequest {
        let cny = |minor| Money::new(minor, Currency::CNY);
        TxnRequest::new(
            key,
            vec![
                Operation::Debit { account: AccountId(1), amount: cny(5) },
                Operation::Credit { account: AccountId(2), amount: cny(5) },
            ],
        )
    }

    fn quick(max_retries: u32) -> ClientConfig {
        ClientConfig {
            request_timeout_ms: 2_000,
            max_retries,
            retry_backoff_ms: 2,
            max_retry_backoff_ms: 10,
            jitter_seed: Some(7),
            ..ClientConfig::default()
        }
    }

    async fn server(handler: ToyHandler) -> (TestServer, Arc<ToyHandler>) {
        let handler = Arc::new(handler);
        (TestServer::start(handler.clone(), ServerLimits::default()).await, handler)
    }

    #[test]
    fn handles_are_send_sync_and_clone() {
        fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
        assert_shareable::<Client>();
        assert_shareable::<Connection>();
        assert_shareable::<crate::net::TcpTransport>();
    }

    #[tokio::test]
    async fn every_method_round_trips() {
        let (server, _) = server(ToyHandler::new(4)).await;
        let client = Client::connect_with(vec![server.addr], quick(0)).await.unwrap();
        let receipt = client.submit(transfer("pay-1")).await.unwrap();
        assert_eq!(receipt.outcome, Outcome::Committed);
        assert_eq!(client.account(AccountId(12)).await.unwrap(), Some(account_view(12)));
        assert_eq!(client.order(OrderId(1)).await.unwrap(), None);
        assert_eq!(client.charge(ChannelId(1), OrderId(1)).await.unwrap(), None);
        assert_eq!(client.txn_status(IdempotencyKey::new("pay-1")).await.unwrap(), KeyStatus::NotRegistered);
        assert_eq!(client.get_record(RecordKey::new(1, b"k")).await.unwrap(), None);
        let page = client.scan_records(0, 1, None, 10).await.unwrap();
        assert_eq!((page.records.len(), page.more, page.shard_count), (0, false, 1));
        assert!(client.scan_namespace(1, 10).await.unwrap().is_empty());
        assert_eq!(client.node_status().await.unwrap(), node_status(4));
        assert_eq!(client.node_status_of(server.addr).await.unwrap(), node_status(4));
        assert_eq!(client.connected_to().await, Some(server.addr));
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_from_clones_share_one_connection() {
        let (server, _) = server(ToyHandler::new(1)).await;
        let client = Client::connect_with(vec![server.addr], quick(0)).await.unwrap();
        let before = client.inner.current.lock().await.connection.clone().unwrap();
        let calls: Vec<_> = (0..300u64)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { (i, client.account(AccountId(i)).await) })
            })
            .collect();
        for call in calls {
            let (i, result) = call.await.unwrap();
            assert_eq!(result.unwrap(), Some(account_view(i)));
        }
        let after = client.inner.current.lock().await.connection.clone().unwrap();
        assert!(before.same_as(&after), "every call went over the one connection");
        server.stop().await;
    }

    #[tokio::test]
    async fn retries_a_retryable_error_with_the_same_request() {
        let (server, handler) = server(ToyHandler { fail_first_submits: 3, ..ToyHandler::new(1) }).await;
        let client = Client::connect_with(vec![server.addr], quick(5)).await.unwrap();
        let receipt = client.submit(transfer("pay-retry")).await.unwrap();
        assert_eq!(receipt.outcome, Outcome::Committed);
        assert_eq!(handler.submits(), 4, "three NoLeader answers, then success");
        // The fourth submit seen is the answered one: seq counts from 0.
        assert_eq!(receipt.txn.seq, 3);
        server.stop().await;
    }

    #[tokio::test]
    async fn gives_up_after_max_retries_with_the_last_error() {
        let (server, handler) = server(ToyHandler { fail_first_submits: 100, ..ToyHandler::new(1) }).await;
        let client = Client::connect_with(vec![server.addr], quick(2)).await.unwrap();
        let result = client.submit(transfer("pay-no-leader")).await;
        assert_eq!(result, Err(ClientError::Request(RequestError::NoLeader { leader_hint: None })));
        assert!(result.unwrap_err().is_retryable());
        assert_eq!(handler.submits(), 3, "one attempt and two retries");
        server.stop().await;
    }

    #[tokio::test]
    async fn non_retryable_errors_are_returned_at_once() {
        let (server, handler) = server(ToyHandler::new(1)).await;
        let client = Client::connect_with(vec![server.addr], quick(5)).await.unwrap();
        let conflict = client.submit(transfer("conflict-1")).await;
        assert!(
            matches!(conflict, Err(ClientError::Request(RequestError::IdempotencyConflict { .. }))),
            "{conflict:?}"
        );
        assert_eq!(handler.submits(), 1);
        let invalid = client.submit(transfer("invalid-1")).await;
        assert!(matches!(invalid, Err(ClientError::Request(RequestError::Invalid(_)))), "{invalid:?}");
        assert_eq!(handler.submits(), 2);
        assert!(!invalid.unwrap_err().is_retryable());
        server.stop().await;
    }

    #[tokio::test]
    async fn fails_over_to_the_second_address_when_the_first_is_down() {
        let dead = dead_addr().await;
        let (server, _) = server(ToyHandler::new(2)).await;
        let client = Client::connect_with(vec![dead, server.addr], quick(3)).await.unwrap();
        assert_eq!(client.connected_to().await, Some(server.addr));
        assert_eq!(client.node_status().await.unwrap().node, 2);
        server.stop().await;
    }

    #[tokio::test]
    async fn moves_to_another_node_when_its_node_shuts_down() {
        let (first, _) = server(ToyHandler::new(1)).await;
        let (second, _) = server(ToyHandler::new(2)).await;
        let client = Client::connect_with(vec![first.addr, second.addr], quick(5)).await.unwrap();
        assert_eq!(client.node_status().await.unwrap().node, 1);
        first.stop().await;
        // Submits are retried on the next node; same key, so safe.
        assert_eq!(client.submit(transfer("pay-failover")).await.unwrap().txn.node, 2);
        assert_eq!(client.node_status().await.unwrap().node, 2);
        second.stop().await;
    }

    #[tokio::test]
    async fn unreachable_when_every_node_is_down() {
        let (a, b) = (dead_addr().await, dead_addr().await);
        let result = Client::connect_with(vec![a, b], quick(0)).await;
        match result {
            Err(ClientError::Unreachable { tried, .. }) => assert_eq!(tried, vec![a, b]),
            other => panic!("expected Unreachable, got {other:?}"),
        }
        let empty = Client::connect(Vec::new()).await;
        assert!(matches!(empty, Err(ClientError::Unreachable { .. })), "{empty:?}");
    }

    #[tokio::test]
    async fn a_node_dying_between_calls_is_retried_elsewhere_or_reported_unreachable() {
        let (only, _) = server(ToyHandler::new(1)).await;
        let client = Client::connect_with(vec![only.addr], quick(2)).await.unwrap();
        client.node_status().await.unwrap();
        only.stop().await;
        let result = client.node_status().await;
        assert!(matches!(&result, Err(ClientError::Unreachable { tried, .. }) if tried.len() == 1), "{result:?}");
    }

    #[tokio::test]
    async fn a_slow_node_is_a_timeout() {
        let (server, _) = server(ToyHandler { slow_ms: 5_000, ..ToyHandler::new(1) }).await;
        let config = ClientConfig { request_timeout_ms: 50, ..quick(1) };
        let client = Client::connect_with(vec![server.addr], config).await.unwrap();
        assert_eq!(client.order(OrderId(1)).await, Err(ClientError::Timeout));
        server.stop().await;
    }

    #[tokio::test]
    async fn backoff_grows_is_capped_and_jittered_within_bounds() {
        let (server, _) = server(ToyHandler::new(1)).await;
        let config = ClientConfig { retry_backoff_ms: 10, max_retry_backoff_ms: 100, ..quick(0) };
        let client = Client::connect_with(vec![server.addr], config).await.unwrap();
        for (retry, ceiling_ms) in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (60, 100)] {
            for _ in 0..20 {
                let backoff_ms = client.backoff_ms(retry);
                assert!(backoff_ms >= ceiling_ms / 2 && backoff_ms <= ceiling_ms, "retry {retry}: {backoff_ms}");
            }
        }
        server.stop().await;
    }
}
