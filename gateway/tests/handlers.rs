//! The gateway over real HTTP against an in-memory model of the cluster.

mod support {
    pub mod api;
    pub mod memory_cluster;
    pub mod open_ends;
    pub mod queries;
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
    start_stopping_with(dir, adjust, None).await
}

/// [`start_with`], with `fail_stop` as the node's fail-stop.
async fn start_stopping_with(
    dir: &std::path::Path,
    adjust: impl FnOnce(&mut GatewayConfig),
    fail_stop: Option<paytx_gateway::FailStopHook>,
) -> (paytx_gateway::RunningGateway, Api, Arc<MemoryCluster>) {
    let mut config = GatewayConfig {
        admin_key_file: dir.join("admin.key"),
        card_key_file: dir.join("card.key"),
        platform_key_file: dir.join("platform.pem"),
        notify_retry_schedule: vec!["100ms".into(), "100ms".into(), "100ms".into()],
        notify_poll_ms: 50,
        // Tests send bursts from one address; the limits have a test of their own.
        address_rate_limit: paytx_gateway::ratelimit::RateLimit { per_sec: 1_000, burst: 1_000 },
        merchant_rate_limit: paytx_gateway::ratelimit::RateLimit { per_sec: 1_000, burst: 1_000 },
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
    let mut gateway = paytx_gateway::Gateway::new(config, cluster, 1, dir, &routes).unwrap();
    if let Some(hook) = fail_stop {
        gateway = gateway.with_fail_stop(hook);
    }
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
async fn orders_are_listed_from_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api) = start(dir.path()).await;
    let receiver = Receiver::start(0).await;
    support::queries::order_queries(&api, &receiver).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api) = start(dir.path()).await;
    let receiver = Receiver::start(0).await;
    support::queries::bad_query_parameters(&api, &receiver).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_add_up_and_are_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api) = start(dir.path()).await;
    let receiver = Receiver::start(0).await;
    support::queries::statements_and_history(&api, &receiver).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_line_is_on_the_day_its_transaction_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api, memory) = start_with(dir.path(), |_| {}).await;
    let receiver = Receiver::start(0).await;
    let commit_at = |at_ms: u64| *memory.commit_at_ms.lock().unwrap() = Some(at_ms);
    support::queries::statement_days_are_commit_days(&api, &receiver, &commit_at).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_the_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api) = start(dir.path()).await;
    let receiver = Receiver::start(0).await;
    support::open_ends::idempotency_keys(&api, &receiver).await;
    support::open_ends::every_other_post_takes_a_key(&api, &receiver).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_login_keys_are_scoped_by_username() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api) = start(dir.path()).await;
    support::open_ends::account_keys_are_scoped_by_username(&api).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topup_retried_after_a_lost_answer_is_charged_once() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api, memory) = start_with(dir.path(), |_| {}).await;
    let receiver = Receiver::start(0).await;
    let lose = |n: usize| memory.lose_answers.store(n, std::sync::atomic::Ordering::SeqCst);
    support::open_ends::a_lost_answer_is_not_charged_twice(&api, &receiver, lose).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_revocable() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api) = start(dir.path()).await;
    support::open_ends::revocable_sessions(&api).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    use paytx_gateway::ratelimit::RateLimit;
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api, _) = start_with(dir.path(), |c| {
        c.merchant_rate_limit = RateLimit { per_sec: 1, burst: 2 };
        c.address_rate_limit = RateLimit { per_sec: 1, burst: 2 };
    })
    .await;
    let receiver = Receiver::start(0).await;
    support::open_ends::rate_limits(&api, &receiver).await;
    gateway.stop().await;
}

/// The audit entry of a top-up is on disk when its answer arrives: a copy
/// of the audit database taken right then (as a crash would leave it)
/// holds it, and its chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_money_moving_answer_follows_its_durable_audit_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, api) = start(dir.path()).await;
    let receiver = Receiver::start(0).await;
    let w = support::scenarios::world(&api, &receiver, "audited").await;
    for n in 0..3 {
        let reply = api
            .post(
                &format!("/v1/users/{}/topups", w.user),
                Some(&w.token),
                &serde_json::json!({"method": "alipay", "amount_minor": 10 + n}),
            )
            .await;
        assert_eq!(reply.status, reqwest::StatusCode::CREATED, "{}", reply.text);
        let copy = dir.path().join(format!("audit-copy-{n}"));
        copy_dir(&paytx_gateway::audit::audit_dir(dir.path()), &copy);
        let entries = paytx_gateway::audit::verify(&copy).expect("the copied chain verifies");
        let log = paytx_gateway::audit::AuditLog::open(&copy, 1).unwrap();
        let last = log.tail(1).pop().expect("an entry");
        assert_eq!((last.action.as_str(), last.status), ("topup.create", 201), "after {entries} entries");
    }
    gateway.stop().await;
}

/// When the audit entry of a money-moving request cannot be fsynced, its
/// answer is withheld: `500 audit_not_durable`, the node's fail-stop is
/// tripped, and the log holds the request's entry (what committed: the
/// money moved) followed by an `audit.sync` entry of the 500. Every later
/// money-moving request is answered the same way (a failed fsync is never
/// retried), its retry included, and charges nothing twice; other
/// requests are still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_sync_failure_withholds_the_answer_and_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let stops = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorded = stops.clone();
    let hook: paytx_gateway::FailStopHook = Arc::new(move |reason| recorded.lock().unwrap().push(reason));
    let (gateway, api, _) = start_stopping_with(dir.path(), |_| {}, Some(hook)).await;
    let receiver = Receiver::start(0).await;
    let w = support::scenarios::world(&api, &receiver, "unsynced").await;
    assert!(stops.lock().unwrap().is_empty(), "healthy syncs stop nothing");

    gateway.gateway().audit.fail_syncs("injected fsync failure");
    let path = format!("/v1/users/{}/topups", w.user);
    let body = serde_json::json!({"method": "alipay", "amount_minor": 77});
    let topup = support::open_ends::post_with_key(&api, &path, &w.token, "unsynced-1", &body).await;
    assert_eq!(
        (topup.status, topup.code()),
        (reqwest::StatusCode::INTERNAL_SERVER_ERROR, "audit_not_durable"),
        "{}",
        topup.text
    );
    assert!(topup.body.get("status").is_none(), "no trace of the success answer: {}", topup.text);
    {
        let stops = stops.lock().unwrap();
        assert_eq!(stops.len(), 1, "{stops:?}");
        assert!(stops[0].contains("injected fsync failure"), "{stops:?}");
    }
    let tail = gateway.gateway().audit.tail(2);
    let seen: Vec<_> = tail.iter().map(|e| (e.action.as_str(), e.status, e.outcome.as_str())).collect();
    assert_eq!(seen, [("topup.create", 201, "ok"), ("audit.sync", 500, "audit_not_durable")]);
    assert_eq!(tail[0].actor, tail[1].actor);
    assert_eq!(api.balance(&w.user_account, &w.token).await, 10_000 + 77, "the top-up committed");

    let retried = support::open_ends::post_with_key(&api, &path, &w.token, "unsynced-1", &body).await;
    assert_eq!((retried.status, retried.code()), (reqwest::StatusCode::INTERNAL_SERVER_ERROR, "audit_not_durable"));
    assert_eq!(api.balance(&w.user_account, &w.token).await, 10_000 + 77, "the retry charged nothing");
    assert_eq!(stops.lock().unwrap().len(), 2, "every withheld answer trips the latch (it keeps the first reason)");
    gateway.stop().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
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
