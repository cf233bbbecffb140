//! The `[gateway]` section of a node's config.

use crate::ratelimit::RateLimit;
use crate::routing::{BreakerSettings, RouteConfig, RoutingStrategy};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// File holding the administrator key (`Authorization: Bearer <key>`).
    pub admin_key_file: PathBuf,
    /// File holding the 32-byte card-encryption key (64 hex digits).
    pub card_key_file: PathBuf,
    /// The platform's RSA private key (PKCS#8 PEM): signs notifications.
    pub platform_key_file: PathBuf,
    /// Secret of the session tokens, the same on every node. Empty: derived
    /// from the card key (which every node shares anyway).
    pub session_secret: String,
    pub session_ttl_secs: u64,
    /// Allowed clock difference of a signed request, and how long its nonce
    /// is remembered.
    pub timestamp_window_secs: u64,
    /// Delays between notification attempts (`15s`, `3m`, `1h`…); one
    /// attempt more than entries, then the notification is `FAILED`.
    pub notify_retry_schedule: Vec<String>,
    /// How often the delivery worker looks for due notifications.
    pub notify_poll_ms: u64,
    /// Timeout of one POST to a merchant.
    pub notify_timeout_ms: u64,
    /// Most notifications one worker pass delivers.
    pub notify_batch: usize,
    /// Routes of each channel method; empty: one route per configured
    /// channel (`[[channels]]`), weight 1.
    pub routes: Vec<RouteConfig>,
    pub routing_strategy: RoutingStrategy,
    pub breaker: BreakerSettings,
    /// HTTP worker threads of this node's gateway.
    pub workers: usize,
    /// How long an `Idempotency-Key`'s answer is remembered.
    pub idempotency_ttl_secs: u64,
    /// Token bucket per merchant (signed requests), per node.
    pub merchant_rate_limit: RateLimit,
    /// Token bucket per client IP address for the unauthenticated routes
    /// (registration, login), per node.
    pub address_rate_limit: RateLimit,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            admin_key_file: PathBuf::from("admin.key"),
            card_key_file: PathBuf::from("card.key"),
            platform_key_file: PathBuf::from("platform.pem"),
            session_secret: String::new(),
            session_ttl_secs: 3_600,
            timestamp_window_secs: 300,
            notify_retry_schedule: crate::retry::default_schedule(),
            notify_poll_ms: 1_000,
            notify_timeout_ms: 5_000,
            notify_batch: 256,
            routes: Vec::new(),
            routing_strategy: RoutingStrategy::default(),
            breaker: BreakerSettings::default(),
            workers: 2,
            idempotency_ttl_secs: 86_400,
            merchant_rate_limit: RateLimit { per_sec: 100, burst: 200 },
            address_rate_limit: RateLimit { per_sec: 5, burst: 20 },
        }
    }
}
