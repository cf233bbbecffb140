//! The gateway over real HTTP against an in-memory model of the cluster.

mod support {
    pub mod api;
    pub mod memory_cluster;
    pub mod receiver;
    pub mod scenarios;
}

use paytx_gateway::{GatewayConfig, PayMethod, RouteConfig};
use paytx_protocol::ChannelId;
use std::sync::Arc;
use support::api::Api;
use support::memory_cluster::MemoryCluster;
use support::receiver::Receiver;

async fn start(dir: &std::path::Path) -> (paytx_gateway::RunningGateway, Api) {
    let (gateway, api, _) = start_with(dir, |_| {}).await;
    (gateway, api)
}

async fn start_with(
    dir: &std::path::Path,
    adjust: impl FnOnce(&mut GatewayConfig),
) -> (paytx_gateway::RunningGateway, Api, Arc<MemoryCluster>) {
    let mut config = GatewayConfig {
        admin_key_file: dir.join("admin.key"),
        card_key_file: dir.join("card.key"),
        platform_key_file: dir.join("platform.pem"),
        notify_retry_schedule: vec!["100ms".into(), "100ms".into(), "100ms".into()],
        notify_poll_ms: 50,
        ..GatewayConfig::default()
    };
    adjust(&mut config);
    paytx_gateway::create_missing_keys(&config).unwrap();
    let routes = vec![
        RouteConfig { method: PayMethod::BankCard, channel: ChannelId(1), weight: 1 },
        RouteConfig { method: PayMethod::Alipay, channel: ChannelId(2), weight: 1 },
        RouteConfig { method: PayMethod::Wechat, channel: ChannelId(3), weight: 1 },
    ];
    let admin = std::fs::read_to_string(&config.admin_key_file).unwrap().trim().to_string();
    let memory = Arc::new(MemoryCluster::default());
    let cluster: Arc<dyn paytx_gateway::ClusterApi> = memory.clone();
    let gateway = paytx_gateway::Gateway::new(config, cluster, 1, dir, &routes).unwrap();
    let running = paytx_gateway::start(gateway, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let api = Api::new(format!("http://{}", running.addr()), admin);
    (running, api, memory)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_flows_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api) = start(dir.path()).await;
    let receiver = Receiver::start(0).await;
    support::scenarios::money_flows(&api, &receiver).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_retried_until_success() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api) = start(dir.path()).await;
    let receiver = Receiver::start(2).await;
    support::scenarios::retried_delivery(&api, &receiver).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api) = start(dir.path()).await;
    let receiver = Receiver::start(0).await;
    support::scenarios::bad_inputs(&api, &receiver).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api) = start(dir.path()).await;
    let reply = api.get("/openapi.json", None).await;
    assert_eq!(reply.status, reqwest::StatusCode::OK);
    assert!(reply.body["paths"]["/v1/orders/{id}/pay"].is_object());
    let missing = api.get("/v1/nope", None).await;
    assert_eq!((missing.status, missing.code()), (reqwest::StatusCode::NOT_FOUND, "not_found"));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_nonces_are_cleaned_up() {
    use paytx_gateway::store::ns;
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api, memory) = start_with(dir.path(), |c| c.timestamp_window_secs = 1).await;
    let receiver = Receiver::start(0).await;
    let merchant = api.onboard(support::api::merchant_key(), &receiver.url).await;
    let id = merchant["id"].as_str().unwrap();
    for n in 0..3 {
        let reply = api.create_order(support::api::merchant_key(), id, &format!("O-{n}"), 10).await;
        assert_eq!(reply.status, reqwest::StatusCode::CREATED, "{}", reply.text);
    }
    assert_eq!(memory.count(ns::NONCE), 3, "one nonce per signed request");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while memory.count(ns::NONCE) > 0 {
        assert!(std::time::Instant::now() < deadline, "expired nonces were not deleted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    gateway.stop().await;
}
