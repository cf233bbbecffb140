//! The gateway's view of the cluster: the [`ClusterApi`] seam, the record
//! namespaces it uses, and helpers to read records and run transactions.
//!
//! (decision) Everything the gateway stores is a record in the cluster,
//! written by 2PC transactions together with the money it goes with; the
//! gateway itself holds no state (only the circuit breakers), so any node
//! can answer any request. Values are JSON (small, self-describing).

use crate::error::ApiError;
use paytx_protocol::messages::{AccountView, NodeStatusView, OrderView, RecordPage};
use paytx_protocol::{
    AbortReason, BoxFuture, Operation, Outcome, RecordExpect, RecordKey, RecordNs, Request, RequestError, Response,
    TxnRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// How the gateway reaches the cluster: the node's own request handler, in
/// process (so a request costs no extra network hop to the local node).
pub trait ClusterApi: Send + Sync + 'static {
    fn call(&self, request: Request) -> BoxFuture<Response>;
}

/// Record namespaces. Part of the stored format: never renumber.
pub mod ns {
    use paytx_protocol::RecordNs;
    pub const USER: RecordNs = 100;
    pub const USERNAME: RecordNs = 101;
    pub const MERCHANT: RecordNs = 102;
    pub const ACCOUNT_OWNER: RecordNs = 103;
    pub const OUT_TRADE_NO: RecordNs = 104;
    pub const ORDER: RecordNs = 105;
    pub const REFUND: RecordNs = 106;
    pub const OUT_REFUND_NO: RecordNs = 107;
    pub const NONCE: RecordNs = 108;
    pub const NOTIFICATION: RecordNs = 109;
    pub const NOTIFY_PENDING: RecordNs = 110;
    pub const TOPUP: RecordNs = 111;
    pub const CLEARING: RecordNs = 112;
    pub const DELIVERY_LEASE: RecordNs = 113;
    pub const IDEMPOTENCY: RecordNs = 114;
    pub const SESSION: RecordNs = 115;
}

pub fn key(ns: RecordNs, app_key: &str) -> RecordKey {
    RecordKey::new(ns, app_key.as_bytes())
}

/// A record op inserting `value` (the key must be free).
pub fn insert<T: Serialize>(ns: RecordNs, app_key: &str, value: &T) -> Result<Operation, ApiError> {
    put(ns, app_key, value, RecordExpect::Absent)
}

pub fn put<T: Serialize>(ns: RecordNs, app_key: &str, value: &T, expect: RecordExpect) -> Result<Operation, ApiError> {
    let bytes = serde_json::to_vec(value).map_err(|_| ApiError::Internal)?;
    Ok(Operation::PutRecord { key: key(ns, app_key), value: Some(bytes), expect })
}

pub fn delete(ns: RecordNs, app_key: &str, expect: RecordExpect) -> Operation {
    Operation::PutRecord { key: key(ns, app_key), value: None, expect }
}

/// Polls of [`Store::wait_visible`] and the pause between them.
const VISIBILITY_POLLS: u32 = 100;
const VISIBILITY_POLL_MS: u64 = 10;

/// Attempts of one transaction when the cluster answers with a transient
/// error (no leader yet, a timeout): the same idempotency key each time.
const SUBMIT_ATTEMPTS: u32 = 8;

#[derive(Clone)]
pub struct Store {
    cluster: Arc<dyn ClusterApi>,
}

impl Store {
    pub fn new(cluster: Arc<dyn ClusterApi>) -> Store {
        Store { cluster }
    }

    /// Calls the cluster, retrying transient errors a bounded number of times.
    async fn call(&self, request: Request) -> Result<Response, ApiError> {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=SUBMIT_ATTEMPTS {
            match self.cluster.call(request.clone()).await {
                Response::Error(RequestError::IdempotencyConflict { .. }) => {
                    return Err(ApiError::IdempotencyConflict("the idempotency key"))
                }
                Response::Error(RequestError::Invalid(invalid)) => {
                    tracing::warn!(%invalid, "the gateway built an invalid cluster request");
                    return Err(ApiError::Internal);
                }
                Response::Error(error) if error.is_retryable() && attempt < SUBMIT_ATTEMPTS => {
                    tracing::debug!(%error, attempt, "cluster busy; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(800));
                }
                Response::Error(error) => {
                    tracing::warn!(%error, "cluster request failed");
                    return Err(ApiError::Unavailable);
                }
                response => return Ok(response),
            }
        }
        Err(ApiError::Unavailable)
    }

    /// Runs a transaction; `Ok(Err(reason))` when it aborted.
    pub async fn submit(&self, txn: TxnRequest) -> Result<Result<(), AbortReason>, ApiError> {
        match self.call(Request::Submit(txn)).await? {
            Response::Submitted(receipt) => Ok(match receipt.outcome {
                Outcome::Committed => Ok(()),
                Outcome::Aborted(reason) => Err(reason),
            }),
            _ => Err(ApiError::Internal),
        }
    }

    /// A record and its version.
    pub async fn get<T: DeserializeOwned>(&self, ns: RecordNs, app_key: &str) -> Result<Option<(T, u64)>, ApiError> {
        match self.call(Request::GetRecord(key(ns, app_key))).await? {
            Response::Record(None) => Ok(None),
            Response::Record(Some(view)) => {
                let value = serde_json::from_slice(&view.value).map_err(|error| {
                    tracing::error!(%error, ns, "a stored record does not decode");
                    ApiError::Internal
                })?;
                Ok(Some((value, view.version)))
            }
            _ => Err(ApiError::Internal),
        }
    }

    pub async fn scan(
        &self,
        shard: u32,
        ns: RecordNs,
        after: Option<RecordKey>,
        limit: u32,
    ) -> Result<RecordPage, ApiError> {
        match self.call(Request::ScanRecords { shard, ns, after, limit }).await? {
            Response::Records(page) => Ok(page),
            _ => Err(ApiError::Internal),
        }
    }

    /// Waits (bounded, ~1 s) until the record is visible at `version`
    /// (`None`: deleted) on its shard. The cluster answers a transaction
    /// once its decision is durable, before the participants apply it, so
    /// a read right after can still see the old record; a session must be
    /// usable (or revoked) as soon as its answer arrives.
    pub async fn wait_visible(&self, ns: RecordNs, app_key: &str, version: Option<u64>) -> Result<(), ApiError> {
        for _ in 0..VISIBILITY_POLLS {
            let seen = match self.call(Request::GetRecord(key(ns, app_key))).await? {
                Response::Record(view) => view.map(|v| v.version),
                _ => return Err(ApiError::Internal),
            };
            if seen == version {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(VISIBILITY_POLL_MS)).await;
        }
        Err(ApiError::Unavailable)
    }

    /// One page of one partition of an ordered index (one records shard).
    pub async fn scan_range(&self, scan: paytx_protocol::RangeScan) -> Result<RecordPage, ApiError> {
        match self.call(Request::ScanRange(scan)).await? {
            Response::Records(page) => Ok(page),
            _ => Err(ApiError::Internal),
        }
    }

    pub async fn account(&self, account: paytx_protocol::AccountId) -> Result<Option<AccountView>, ApiError> {
        match self.call(Request::GetAccount(account)).await? {
            Response::Account(view) => Ok(view),
            _ => Err(ApiError::Internal),
        }
    }

    pub async fn order(&self, order: paytx_protocol::OrderId) -> Result<Option<OrderView>, ApiError> {
        match self.call(Request::GetOrder(order)).await? {
            Response::Order(view) => Ok(view),
            _ => Err(ApiError::Internal),
        }
    }

    pub async fn node_status(&self) -> Result<NodeStatusView, ApiError> {
        match self.cluster.call(Request::NodeStatus).await {
            Response::NodeStatus(view) => Ok(view),
            _ => Err(ApiError::Unavailable),
        }
    }
}
