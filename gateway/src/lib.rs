//! The open platform: a signed HTTP/JSON payment API served by every paytx
//! node (issue 4). Stateless: users, merchants, orders' metadata, refunds,
//! nonces and notifications are records in the cluster, written by 2PC
//! transactions together with the money they go with. See the README's
//! "Open-platform HTTP API" and docs/ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod error;
pub mod http_metrics;
pub mod idempotency;
pub mod index;
pub mod model;
pub mod notify;
pub mod openapi;
pub mod ratelimit;
pub mod retry;
pub mod routing;
pub mod secrets;
pub mod server;
pub mod signing;
pub mod store;
pub mod token;
pub mod validate;

pub use config::GatewayConfig;
pub use routing::{PayMethod, RouteConfig, RoutingStrategy};
pub use server::{create_missing_keys, start, FailStopHook, Gateway, GatewayError, RunningGateway};
pub use store::ClusterApi;
