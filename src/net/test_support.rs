//! Test helpers shared by the networking and client tests: a toy
//! [`Handler`] and a server on 127.0.0.1 that can be stopped and restarted.

use super::server::{serve, Handler, ServerLimits};
use paytx_protocol::messages::{AccountView, NodeStatusView};
use paytx_protocol::{
    BoxFuture, Currency, NodeId, Outcome, PeerRequest, PeerResponse, Request, RequestError, Response, TxnId, TxnReceipt,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Answers from its inputs alone, so tests can check every reply matches its
/// request:
/// * `GetAccount(id)`: an account whose balance is `id`, after `id % 7` ms
///   (so pipelined replies come back out of order).
/// * `GetOrder(_)`: `None` after `slow_ms`.
/// * `Submit`: the first `fail_first_submits` get `NoLeader`; then keys
///   starting with `conflict` get `IdempotencyConflict`, `invalid` get
///   `Invalid`, `panic` panic the handler; others commit with `seq` = the
///   number of submits seen before.
/// * `NodeStatus`: a view with `node`.
/// * Peer `QueryDecision { txn }`: commit iff `txn.seq` is even; others `Acked`.
pub(crate) struct ToyHandler {
    pub node: NodeId,
    pub fail_first_submits: u32,
    pub slow_ms: u64,
    pub submits: AtomicU32,
}

impl ToyHandler {
    pub fn new(node: NodeId) -> ToyHandler {
        ToyHandler { node, fail_first_submits: 0, slow_ms: 0, submits: AtomicU32::new(0) }
    }

    pub fn submits(&self) -> u32 {
        self.submits.load(Ordering::SeqCst)
    }
}

pub(crate) fn account_view(id: u64) -> AccountView {
    AccountView {
        account: paytx_protocol::AccountId(id),
        currency: Currency::CNY,
        balance_minor: i64::try_from(id).unwrap_or(i64::MAX),
        held_minor: 0,
        recent: Vec::new(),
    }
}

impl Handler for ToyHandler {
    fn request(&self, req: Request) -> BoxFuture<Response> {
        let node = self.node;
        let slow_ms = self.slow_ms;
        let submits_seen = match &req {
            Request::Submit(_) => self.submits.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
        let fail = submits_seen < self.fail_first_submits;
        Box::pin(async move {
            match req {
                Request::Submit(_) if fail => Response::Error(RequestError::NoLeader { leader_hint: None }),
                Request::Submit(txn) => {
                    let key = txn.key.0.clone();
                    if key.starts_with("conflict") {
                        Response::Error(RequestError::IdempotencyConflict { key })
                    } else if key.starts_with("invalid") {
                        Response::Error(RequestError::Invalid(paytx_protocol::InvalidRequest::Empty))
                    } else if key.starts_with("panic") {
                        panic!("toy handler told to panic");
                    } else {
                        Response::Submitted(TxnReceipt {
                            txn: TxnId { term: 1, node, seq: u64::from(submits_seen) },
                            outcome: Outcome::Committed,
                            replayed: false,
                        })
                    }
                }
                Request::GetAccount(id) => {
                    tokio::time::sleep(Duration::from_millis(id.0 % 7)).await;
                    Response::Account(Some(account_view(id.0)))
                }
                Request::GetOrder(_) => {
                    tokio::time::sleep(Duration::from_millis(slow_ms)).await;
                    Response::Order(None)
                }
                Request::GetCharge { .. } => Response::Charge(None),
                Request::TxnStatus(_) => Response::TxnStatus(paytx_protocol::messages::KeyStatus::NotRegistered),
                Request::NodeStatus => Response::NodeStatus(node_status(node)),
                Request::GetRecord(_) => Response::Record(None),
                Request::ScanRecords { .. } => Response::Records(paytx_protocol::messages::RecordPage {
                    records: Vec::new(),
                    more: false,
                    shard_count: 1,
                }),
                Request::ScanRange(_) => Response::Records(paytx_protocol::messages::RecordPage {
                    records: Vec::new(),
                    more: false,
                    shard_count: 1,
                }),
            }
        })
    }

    fn peer(&self, req: PeerRequest) -> BoxFuture<PeerResponse> {
        Box::pin(async move {
            match req {
                PeerRequest::QueryDecision { txn } => PeerResponse::Decision { commit: txn.seq % 2 == 0, at_ms: 0 },
                _ => PeerResponse::Acked,
            }
        })
    }
}

pub(crate) fn node_status(node: NodeId) -> NodeStatusView {
    NodeStatusView {
        node,
        raft_term: Some(1),
        leader: Some(1),
        coordinator_ready: true,
        last_applied_index: Some(0),
        snapshot_index: None,
        undecided_txns: 0,
        unacked_txns: 0,
        shards: Vec::new(),
        raft_proposals: 0,
        raft_proposed_commands: 0,
        disk_syncs: 0,
        disk_flushes: 0,
        local: Box::default(),
    }
}

/// A running [`serve`] on 127.0.0.1.
pub(crate) struct TestServer {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start(handler: Arc<dyn Handler>, limits: ServerLimits) -> TestServer {
        TestServer::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), handler, limits).await
    }

    pub async fn start_on(addr: SocketAddr, handler: Arc<dyn Handler>, limits: ServerLimits) -> TestServer {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, handler, limits, shutdown_rx));
        TestServer { addr, shutdown, task }
    }

    /// Asks for shutdown and waits until `serve` returned.
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve returns promptly after shutdown")
            .expect("serve does not panic");
    }
}

/// An address nothing listens on (bound, then released).
pub(crate) async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
    listener.local_addr().expect("local addr")
}
