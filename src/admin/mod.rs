//! The admin listener of a node (issue 12): a small actix-web server,
//! separate from the merchant API, serving
//!
//! * `GET /metrics` — Prometheus text format ([`scrape`]);
//! * `GET /health/live` and `GET /health/ready` ([`health`]);
//! * `GET /admin/v1/status`, `/admin/v1/txns`, `/admin/v1/txns/{id-or-key}`
//!   — the JSON API ([`api`], documents in [`views`]), behind the admin key;
//! * `GET /console` — the server-rendered console ([`console`]), behind the
//!   admin key.
//!
//! Everything here reads what the node already keeps (status views, the
//! replicated table, openraft's metrics, the counters of [`NodeMetrics`])
//! when it is asked: nothing runs on the commit path. `/metrics` and
//! `/health/*` are unauthenticated, as Prometheus and load balancers expect;
//! the listener belongs on a private network.
//!
//! [`NodeMetrics`]: paytx_node::NodeMetrics

pub mod api;
pub mod console;
pub mod health;
pub mod history;
pub mod scrape;
pub mod views;

use crate::net::ServerCounters;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use paytx_node::{NodeConfig, NodeService};
use std::net::SocketAddr;
use std::sync::Arc;

/// Why the admin listener did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} for the admin listener: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("the admin key in {path} is shorter than 16 bytes")]
    WeakKey { path: String },
    #[error("cannot read the admin key {path}: {reason}")]
    KeyRead { path: String, reason: String },
}

/// What the handlers share.
pub struct AdminState {
    pub service: Arc<NodeService>,
    pub config: NodeConfig,
    /// The native server's connection counters.
    pub server_counters: ServerCounters,
    /// The merchant API's request counters, when the node serves it.
    pub http_metrics: Option<paytx_gateway::http_metrics::HttpMetrics>,
    /// The admin key (`[gateway] admin_key_file`); `None` when the file does
    /// not exist: the keyed endpoints then refuse every request.
    admin_key: Option<Vec<u8>>,
    /// Throughput, latency and first-seen times, sampled every second.
    pub history: history::History,
}

/// Reads the admin key the way the gateway does (trimmed, 16+ bytes). A
/// missing file is not an error: the keyed endpoints stay closed.
fn load_admin_key(config: &NodeConfig) -> Result<Option<Vec<u8>>, AdminError> {
    let path = &config.gateway.admin_key_file;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AdminError::KeyRead { path: path.display().to_string(), reason: e.to_string() }),
    };
    let key = text.trim().as_bytes().to_vec();
    if key.len() < 16 {
        return Err(AdminError::WeakKey { path: path.display().to_string() });
    }
    Ok(Some(key))
}

impl AdminState {
    /// Whether `presented` is the admin key (constant time).
    pub(crate) fn key_matches(&self, presented: &[u8]) -> Result<(), &'static str> {
        match &self.admin_key {
            None => Err("this node has no admin key (set [gateway] admin_key_file)"),
            Some(key) if paytx_gateway::secrets::secrets_equal(presented, key) => Ok(()),
            Some(_) => Err("wrong admin key"),
        }
    }
}

/// Why a keyed request is refused, if it is.
pub(crate) fn check_admin_key(state: &AdminState, req: &HttpRequest) -> Result<(), &'static str> {
    let presented = req
        .headers()
        .get("Authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(presented) => state.key_matches(presented.as_bytes()),
        None => Err("Authorization: Bearer <admin key> required"),
    }
}

/// A 401 with the reason, in JSON (the API) or text (the console).
pub(crate) fn unauthorized(reason: &str) -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header(("WWW-Authenticate", "Bearer realm=\"paytx-admin\""))
        .json(serde_json::json!({ "error": "unauthorized", "reason": reason }))
}

/// A running admin listener.
pub struct RunningAdmin {
    addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
    sampler: tokio::task::JoinHandle<()>,
}

impl RunningAdmin {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and finishes the requests in flight (bounded).
    pub async fn stop(self) {
        self.sampler.abort();
        self.server.stop(true).await;
    }
}

/// Starts the admin listener of `service` on `listen`, on the current
/// runtime (the node's).
pub async fn start(
    config: &NodeConfig,
    service: Arc<NodeService>,
    server_counters: ServerCounters,
    http_metrics: Option<paytx_gateway::http_metrics::HttpMetrics>,
    listen: SocketAddr,
) -> Result<RunningAdmin, AdminError> {
    let admin_key = load_admin_key(config)?;
    let state = Arc::new(AdminState {
        service,
        config: config.clone(),
        server_counters,
        http_metrics,
        admin_key,
        history: history::History::default(),
    });
    let sampler = tokio::spawn(history::run_sampler(state.clone()));
    let data = web::Data::from(state);
    let bind_error = |e: std::io::Error| AdminError::Bind { addr: listen, reason: e.to_string() };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/metrics", web::get().to(scrape::metrics))
            .route("/health/live", web::get().to(health::live))
            .route("/health/ready", web::get().to(health::ready))
            .route("/admin/v1/status", web::get().to(api::status))
            .route("/admin/v1/txns", web::get().to(api::txns))
            // A key may hold a `/`: the rest of the path is the id or key.
            .route("/admin/v1/txns/{id:.*}", web::get().to(api::txn))
            .route("/console", web::get().to(console::page))
            .default_service(web::to(|| async {
                HttpResponse::NotFound().json(serde_json::json!({ "error": "not_found" }))
            }))
    })
    // One worker thread: the admin listener is for a handful of operators
    // and one scraper, and must not compete with the node for cores.
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(listen)
    .map_err(bind_error)?;
    let addr = server.addrs().first().copied().unwrap_or(listen);
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "the admin listener stopped");
        }
    });
    tracing::info!(%addr, node = config.node_id, "admin listener serving");
    Ok(RunningAdmin { addr, server: handle, sampler })
}
