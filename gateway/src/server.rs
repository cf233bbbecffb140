//! Starting and stopping a node's gateway: keys, state, routes, workers.

use crate::api;
use crate::audit::AuditLog;
use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::routing::Router;
use crate::secrets::{CardVault, Key32};
use crate::store::{ClusterApi, Store};
use crate::token::TokenIssuer;
use actix_web::{web, App, HttpResponse, HttpServer};
use rsa::{RsaPrivateKey, RsaPublicKey};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("gateway key: {0}")]
    Secret(#[from] crate::secrets::SecretError),
    #[error("platform key: {0}")]
    Key(#[from] crate::signing::KeyError),
    #[error("the admin key file {0} is empty or shorter than 16 bytes")]
    WeakAdminKey(String),
    #[error("notify_retry_schedule: {0}")]
    Schedule(#[from] crate::retry::ScheduleError),
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("cannot build the notification client: {0}")]
    Http(String),
}

/// Everything a request handler needs: keys, the cluster, the audit log.
pub struct Gateway {
    pub store: Store,
    pub node_id: u64,
    pub admin_key: Vec<u8>,
    pub vault: CardVault,
    pub tokens: TokenIssuer,
    pub platform_key: RsaPrivateKey,
    pub platform_public_pem: String,
    pub router: Router,
    pub audit: AuditLog,
    pub config: GatewayConfig,
    pub schedule: Vec<Duration>,
    pub http: reqwest::Client,
    /// Password hashes and checks running at once. Argon2id takes ~19 MiB and
    /// a core's worth of time per call, and registration and login need no
    /// authentication: without this bound a burst of them would pin every
    /// core and gigabytes of memory (actix allows hundreds of blocking
    /// threads).
    pub password_slots: tokio::sync::Semaphore,
    /// Refunds of one order queue here on this node instead of colliding on
    /// the order record (see `api::refunds`).
    pub order_locks: KeyedLocks,
    pub merchant_limiter: crate::ratelimit::RateLimiter,
    pub address_limiter: crate::ratelimit::RateLimiter,
    /// Requests answered and notification attempts, for the node's admin
    /// listener (`/metrics`).
    pub metrics: crate::http_metrics::HttpMetrics,
    /// Stops the node this gateway serves (its fail-stop), with the reason:
    /// called when the audit log cannot be made durable. `None` for a
    /// gateway not run by a node (tests); see [`Gateway::with_fail_stop`].
    pub fail_stop: Option<FailStopHook>,
}

/// The node's fail-stop, as the gateway sees it: trips the node's latch
/// with the reason (the gateway does not depend on the node crate).
pub type FailStopHook = Arc<dyn Fn(String) + Send + Sync>;

/// One async lock per key, held only while someone uses it: the map holds
/// the keys locked or waited for right now, no more.
#[derive(Default)]
pub struct KeyedLocks {
    locks: std::sync::Mutex<std::collections::BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // Drop the locks nobody holds or waits for (only the map refers to them).
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            locks.entry(key.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Concurrent password hashes: one per core is all the CPU can run anyway.
pub const MAX_CONCURRENT_PASSWORD_HASHES: usize = 2;
/// How long a request waits for a password slot before `503 unavailable`.
pub const PASSWORD_SLOT_WAIT_MS: u64 = 2_000;

impl Gateway {
    /// Runs `work` (an Argon2id hash or check) on the blocking pool, at most
    /// [`MAX_CONCURRENT_PASSWORD_HASHES`] at a time; `Unavailable` when no
    /// slot frees up within [`PASSWORD_SLOT_WAIT_MS`].
    pub async fn run_password_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, crate::error::ApiError> {
        let wait = Duration::from_millis(PASSWORD_SLOT_WAIT_MS);
        let _slot = match tokio::time::timeout(wait, self.password_slots.acquire()).await {
            Ok(Ok(slot)) => slot,
            _ => return Err(crate::error::ApiError::Unavailable),
        };
        actix_web::web::block(work).await.map_err(|_| crate::error::ApiError::Internal)
    }
}

/// Creates the key files that do not exist yet (first start of `paytx up`):
/// the admin key (random, 32 hex bytes), the card key, the platform's RSA key.
pub fn create_missing_keys(config: &GatewayConfig) -> Result<(), GatewayError> {
    if !config.admin_key_file.exists() {
        crate::secrets::write_private_file(&config.admin_key_file, &crate::secrets::to_hex(&Key32::random().0))?;
    }
    Key32::load_or_create(&config.card_key_file)?;
    if !config.platform_key_file.exists() {
        let key = crate::signing::generate_key()?;
        crate::secrets::write_private_file(&config.platform_key_file, &crate::signing::private_key_pem(&key)?)?;
    }
    Ok(())
}

impl Gateway {
    /// Loads the keys named by `config` and opens the audit log in `data_dir`.
    pub fn new(
        config: GatewayConfig,
        cluster: Arc<dyn ClusterApi>,
        node_id: u64,
        data_dir: &Path,
        routes_from_channels: &[crate::routing::RouteConfig],
    ) -> Result<Gateway, GatewayError> {
        let admin_key =
            std::fs::read_to_string(&config.admin_key_file).map_err(|e| crate::secrets::SecretError::Read {
                path: config.admin_key_file.display().to_string(),
                reason: e.to_string(),
            })?;
        let admin_key = admin_key.trim().as_bytes().to_vec();
        if admin_key.len() < 16 {
            return Err(GatewayError::WeakAdminKey(config.admin_key_file.display().to_string()));
        }
        let card_key = Key32::load(&config.card_key_file)?;
        let session_secret = if config.session_secret.is_empty() {
            card_key.derive("paytx session tokens v1")
        } else {
            Key32(
                sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
                    config.session_secret.as_bytes(),
                ))
                .into(),
            )
            .derive("paytx session tokens v1")
        };
        let platform_key = crate::signing::load_private_key(&config.platform_key_file)?;
        let platform_public_pem = crate::signing::public_key_pem(&RsaPublicKey::from(&platform_key))?;
        let schedule = crate::retry::parse_schedule(&config.notify_retry_schedule)?;
        let routes = if config.routes.is_empty() { routes_from_channels } else { &config.routes };
        let router = Router::new(routes, config.routing_strategy, config.breaker);
        let audit = AuditLog::open(&crate::audit::audit_dir(data_dir), node_id)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.notify_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GatewayError::Http(e.to_string()))?;
        let merchant_limiter = crate::ratelimit::RateLimiter::new(config.merchant_rate_limit);
        let address_limiter = crate::ratelimit::RateLimiter::new(config.address_rate_limit);
        Ok(Gateway {
            store: Store::new(cluster),
            node_id,
            admin_key,
            vault: CardVault::new(&card_key),
            tokens: TokenIssuer::new(session_secret),
            platform_key,
            platform_public_pem,
            router,
            audit,
            config,
            schedule,
            http,
            password_slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_PASSWORD_HASHES),
            order_locks: KeyedLocks::default(),
            merchant_limiter,
            address_limiter,
            metrics: crate::http_metrics::HttpMetrics::new(),
            fail_stop: None,
        })
    }

    /// This gateway, stopping its node through `hook` on a fatal disk
    /// error of its own (an audit sync that failed).
    pub fn with_fail_stop(mut self, hook: FailStopHook) -> Gateway {
        self.fail_stop = Some(hook);
        self
    }

    /// Trips the node's fail-stop, when the gateway has one.
    pub fn stop_the_node(&self, reason: String) {
        match &self.fail_stop {
            Some(hook) => hook(reason),
            None => tracing::error!(%reason, "fatal disk error, and no node fail-stop to trip"),
        }
    }
}

/// Longest [`RunningGateway::stop`] waits for the gateway's last holders.
pub const STOP_RELEASE_WAIT_MS: u64 = 5_000;
const STOP_RELEASE_POLL_MS: u64 = 10;

/// A running gateway: the HTTP server and the delivery worker.
pub struct RunningGateway {
    addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
    stop_worker: tokio::sync::watch::Sender<bool>,
    gateway: Arc<Gateway>,
}

impl RunningGateway {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Requests answered, by route and status (for the admin listener).
    pub fn http_metrics(&self) -> &crate::http_metrics::HttpMetrics {
        &self.gateway.metrics
    }

    /// Stops accepting, finishes requests in flight (bounded), stops the
    /// worker, and waits (at most [`STOP_RELEASE_WAIT_MS`]) for the server's
    /// worker threads and the notification worker to let go of the
    /// gateway: they drop their clones a moment after the server's stop
    /// resolves, and until the last one goes the audit log's sled database
    /// stays open and locked, so a restart of the node in the same process
    /// could not open it (`tests/operations.rs` met that lock).
    pub async fn stop(self) {
        let _ = self.stop_worker.send(true);
        self.server.stop(true).await;
        self.gateway.audit.flush();
        let mut waited_ms = 0;
        while Arc::strong_count(&self.gateway) > 1 && waited_ms < STOP_RELEASE_WAIT_MS {
            tokio::time::sleep(Duration::from_millis(STOP_RELEASE_POLL_MS)).await;
            waited_ms += STOP_RELEASE_POLL_MS;
        }
        if Arc::strong_count(&self.gateway) > 1 {
            tracing::warn!(
                waited_ms,
                "the gateway is still held after its stop; its audit log stays open until released"
            );
        }
    }
}

fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi_json))
        .route("/v1/users", web::post().to(api::register_user))
        .route("/v1/sessions", web::post().to(api::create_session))
        .route("/v1/sessions/current", web::delete().to(api::delete_session))
        .route("/v1/users/{id}/password", web::post().to(api::change_password))
        .route("/v1/merchants", web::post().to(api::create_merchant))
        .route("/v1/orders", web::post().to(api::create_order))
        .route("/v1/orders", web::get().to(api::list_orders))
        .route("/v1/orders/{id}", web::get().to(api::get_order))
        .route("/v1/orders/{id}/close", web::post().to(api::close_order))
        .route("/v1/orders/{id}/pay", web::post().to(api::pay_order))
        .route("/v1/orders/{id}/refunds", web::post().to(api::create_refund))
        .route("/v1/orders/{id}/refunds", web::get().to(api::list_refunds))
        .route("/v1/statements/{date}", web::get().to(api::get_statement))
        .route("/v1/users/{id}/transactions", web::get().to(api::list_user_transactions))
        .route("/v1/refunds/{id}", web::get().to(api::get_refund))
        .route("/v1/users/{id}/topups", web::post().to(api::create_topup))
        .route("/v1/accounts/{id}", web::get().to(api::get_account))
        .route("/v1/notifications", web::get().to(api::list_notifications))
        .default_service(web::to(api::not_found));
}

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(crate::openapi::document())
}

/// Serves the API on `listen` and starts the notification worker, both on
/// the current tokio runtime.
pub async fn start(gateway: Gateway, listen: SocketAddr) -> Result<RunningGateway, GatewayError> {
    let gateway = Arc::new(gateway);
    let data = web::Data::from(gateway.clone());
    let workers = gateway.config.workers.max(1);
    let bind_error = |e: std::io::Error| GatewayError::Bind { addr: listen, reason: e.to_string() };
    let counted = gateway.metrics.clone();
    let server = HttpServer::new(move || {
        let counted = counted.clone();
        App::new()
            .wrap_fn(move |req, srv| {
                use actix_web::dev::Service as _;
                let method = req.method().as_str().to_owned();
                let counted = counted.clone();
                let answer = srv.call(req);
                async move {
                    let response = answer.await?;
                    counted.observe(response.request().match_pattern().as_deref(), &method, response.status().as_u16());
                    Ok(response)
                }
            })
            .app_data(data.clone())
            .app_data(web::PathConfig::default().error_handler(|_, _| ApiError::NotFound("resource").into()))
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|_, _| ApiError::InvalidField { field: "query", reason: "malformed".into() }.into()),
            )
            .configure(configure)
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(listen)
    .map_err(bind_error)?;
    let addr = server.addrs().first().copied().unwrap_or(listen);
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "the gateway's HTTP server stopped");
        }
    });
    let (stop_worker, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::notify::run(gateway.clone(), stop));
    tokio::spawn(check_audit_chain(Arc::downgrade(&gateway), stop_worker.subscribe()));
    tracing::info!(%addr, node = gateway.node_id, "open-platform API listening");
    Ok(RunningGateway { addr, server: handle, stop_worker, gateway })
}

/// How often a node checks the entries its audit chain gained since the
/// last check (the first check reads the whole chain).
pub const AUDIT_CHECK_EVERY_MS: u64 = 2_000;

/// Checks this node's audit chain now and every [`AUDIT_CHECK_EVERY_MS`]
/// until stopped; the node status shows the last result
/// ([`crate::audit::AuditLog::last_check`]), and a break is logged once.
/// Holds the gateway weakly: a stopped gateway's audit database closes.
async fn check_audit_chain(gateway: std::sync::Weak<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut reported = false;
    loop {
        let Some(checking) = gateway.upgrade() else { return };
        let node = checking.node_id;
        if let Ok(view) = tokio::task::spawn_blocking(move || checking.audit.check_chain()).await {
            if let (Some(problem), false) = (&view.problem, reported) {
                tracing::error!(problem = %problem, node, "the gateway audit chain is broken");
                reported = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(AUDIT_CHECK_EVERY_MS)) => {}
            _ = stop.changed() => return,
        }
    }
}
