//! End-to-end tests of the open-platform HTTP API: real nodes on loopback
//! (real TCP between them, real sled on disk), real HTTP (reqwest), real
//! RSA keys. The scenarios are shared with the gateway crate's handler
//! tests (gateway/tests/support).

mod common;
// Top level, so the scenarios' `super::api` is `crate::api` here.
#[path = "../gateway/tests/support/api.rs"]
mod api;
#[path = "../gateway/tests/support/open_ends.rs"]
mod open_ends;
#[path = "../gateway/tests/support/queries.rs"]
mod queries;
#[path = "../gateway/tests/support/receiver.rs"]
mod receiver;
#[path = "../gateway/tests/support/scenarios.rs"]
mod scenarios;

use api::{merchant_key, Api};
use paytx::{Cluster, ClusterOptions, HttpOptions};
use receiver::Receiver;
use reqwest::{Method, StatusCode};
use scenarios::CARD;
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Every log line of this test binary, kept for the plaintext-card search.
fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,paytx_gateway=debug,openraft=warn")
            .with_writer(move || CapturedWriter(sink.clone()))
            .try_init();
        buffer
    })
}

struct CapturedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn options(dir: &Path) -> ClusterOptions {
    let gateway = paytx_gateway::GatewayConfig {
        admin_key_file: dir.join("admin.key"),
        card_key_file: dir.join("card.key"),
        platform_key_file: dir.join("platform.pem"),
        notify_retry_schedule: vec!["300ms".into(), "300ms".into(), "300ms".into(), "300ms".into()],
        notify_poll_ms: 100,
        // The scenarios send bursts from one address and one merchant.
        address_rate_limit: paytx_gateway::ratelimit::RateLimit { per_sec: 1_000, burst: 1_000 },
        merchant_rate_limit: paytx_gateway::ratelimit::RateLimit { per_sec: 1_000, burst: 1_000 },
        ..Default::default()
    };
    paytx_gateway::create_missing_keys(&gateway).expect("key files");
    ClusterOptions {
        data_dir: Some(dir.join("data")),
        http: Some(HttpOptions { base: "127.0.0.1:0".parse().unwrap(), gateway }),
        ..common::test_options()
    }
}

fn api_of(cluster: &Cluster, node: u64, dir: &Path) -> Api {
    let admin = std::fs::read_to_string(dir.join("admin.key")).unwrap().trim().to_string();
    Api::new(format!("http://{}", cluster.http_addr(node).expect("node serves the API")), admin)
}

/// Every file under `dir` (recursively), as bytes.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_open_platform_end_to_end() {
    let logs = captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(options(dir.path())).await.expect("cluster starts");
    let api = api_of(&cluster, 1, dir.path());
    let api2 = api_of(&cluster, 2, dir.path());
    let api3 = api_of(&cluster, 3, dir.path());

    let openapi = api3.get("/openapi.json", None).await;
    assert_eq!(openapi.status, StatusCode::OK);
    assert!(openapi.body["paths"]["/v1/orders"]["post"].is_object());

    // Money flows through node 1; notifications retried by the leader's node.
    let receiver = Receiver::start(1).await;
    scenarios::money_flows(&api, &receiver).await;

    // Stateless: the same merchant and orders through the other nodes, and
    // a nonce burnt on one node is refused on another.
    let merchant = api.onboard(merchant_key(), &receiver.url).await;
    let merchant_id = merchant["id"].as_str().unwrap();
    let body = json!({"out_trade_no": "X-1", "amount_minor": 100, "currency": "CNY"});
    let bytes = body.to_string().into_bytes();
    let headers = paytx_gateway::signing::signed_headers(merchant_key(), merchant_id, "POST", "/v1/orders", &bytes);
    let created = api2.send(Method::POST, "/v1/orders", None, Some(bytes.clone()), &headers).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let replayed = api3.send(Method::POST, "/v1/orders", None, Some(bytes), &headers).await;
    assert_eq!((replayed.status, replayed.code()), (StatusCode::UNAUTHORIZED, "nonce_replayed"));
    let id = created.body["id"].as_str().unwrap();
    let read = api3.signed(merchant_key(), merchant_id, Method::GET, &format!("/v1/orders/{id}"), None).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["out_trade_no"], "X-1");

    // A receiver failing twice: retried, delivered once as `success`.
    let flaky = Receiver::start(2).await;
    scenarios::retried_delivery(&api2, &flaky).await;

    // Every bad input: its code, and nothing changed.
    scenarios::bad_inputs(&api3, &receiver).await;

    receiver.stop().await;
    flaky.stop().await;
    cluster.shutdown().await;

    // The card number appears nowhere: not on disk, not in the logs, not in
    // any answer (the shared client keeps a transcript of every answer).
    let card = CARD.as_bytes();
    let files = files_under(dir.path());
    // Control: the search does see what the gateway stored (usernames are
    // kept in clear), so a card number stored in clear would be found.
    assert!(files.iter().any(|(_, bytes)| contains(bytes, b"alice")), "the search reads the stored records");
    for (path, bytes) in &files {
        assert!(!contains(bytes, card), "the card number is in {}", path.display());
    }
    let log_bytes = logs.lock().unwrap().clone();
    assert!(!log_bytes.is_empty(), "logs were captured");
    assert!(!contains(&log_bytes, card), "the card number is in the logs");
    for answer in api::transcript() {
        assert!(!answer.contains(CARD), "the card number is in an answer: {answer}");
    }

    // The audit logs verify; a tampered entry is found and named.
    let data = dir.path().join("data");
    let verify = |expect_ok: bool| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_paytx"))
            .args(["audit", "verify", "--data-dir"])
            .arg(&data)
            .output()
            .expect("paytx runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(output.status.success(), expect_ok, "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        stdout
    };
    let report = verify(true);
    assert_eq!(report.matches(": ok, ").count(), 3, "{report}");
    let audit = paytx_gateway::audit::audit_dir(&data.join("node-1"));
    {
        let db = sled::open(&audit).unwrap();
        let key = 2u64.to_be_bytes();
        let mut entry: serde_json::Value = serde_json::from_slice(&db.get(key).unwrap().unwrap()).unwrap();
        entry["outcome"] = json!("ok-but-edited");
        db.insert(key, serde_json::to_vec(&entry).unwrap()).unwrap();
        db.flush().unwrap();
    }
    let report = verify(false);
    assert!(report.contains("entry 2 was modified"), "{report}");
    assert!(report.contains("BROKEN"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_notifications_survive_a_node_restart() {
    captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(options(dir.path())).await.expect("cluster starts");
    let api = api_of(&cluster, 1, dir.path());
    let receiver = Receiver::start(usize::MAX).await;
    let w = scenarios::world(&api, &receiver, "frank").await;
    let order = scenarios::new_order(&api, &w, "P-1", 500).await;
    assert_eq!(scenarios::pay(&api, &w, &order, "balance").await.status, StatusCode::OK);

    // Wait for a failed attempt, then stop the delivering node (the leader's).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = scenarios::notifications(&api, &w, &order).await;
        if list.first().is_some_and(|n| !n["attempts"].as_array().unwrap().is_empty()) {
            assert_eq!(list[0]["status"], "PENDING");
            break;
        }
        assert!(Instant::now() < deadline, "no delivery attempt: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    cluster.stop_node(leader).await.unwrap();
    *receiver.state.fail_first.lock().unwrap() = 0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart_node(leader).await.unwrap();
    cluster.wait_for_leader(Duration::from_secs(20)).await.unwrap();

    let api = api_of(&cluster, if leader == 1 { 2 } else { 1 }, dir.path());
    let list = scenarios::wait_delivered(&api, &w, &order, 1, Duration::from_secs(30)).await;
    let notify_id = list[0]["notify_id"].as_str().unwrap().to_string();
    assert!(receiver.delivered_ids().contains(&notify_id));
    assert!(list[0]["attempts"].as_array().unwrap().len() >= 2, "failed before the restart, delivered after");
    receiver.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn channel_routes_fail_over_and_a_decline_changes_nothing() {
    use paytx_gateway::{PayMethod, RouteConfig, RoutingStrategy};
    use paytx_participants::{ChannelConfig, ChannelKind};
    use paytx_protocol::ChannelId;
    captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path());
    let declining = |id: u64, kind: ChannelKind| ChannelConfig {
        id: ChannelId(id),
        kind,
        name: format!("declining-{id}"),
        decline_per_million: paytx_participants::MAX_DECLINE_PER_MILLION,
        authorize_latency_ms: 1,
    };
    options.channels.push(declining(4, ChannelKind::BankCard));
    options.channels.push(declining(5, ChannelKind::WechatPay));
    let http = options.http.as_mut().unwrap();
    http.gateway.routing_strategy = RoutingStrategy::RoundRobin;
    http.gateway.breaker = paytx_gateway::routing::BreakerSettings { failure_threshold: 1, open_ms: 60_000 };
    http.gateway.routes = vec![
        // The heavier bank-card route always declines: payments fail over.
        RouteConfig { method: PayMethod::BankCard, channel: ChannelId(4), weight: 5 },
        RouteConfig { method: PayMethod::BankCard, channel: ChannelId(1), weight: 1 },
        RouteConfig { method: PayMethod::Alipay, channel: ChannelId(2), weight: 1 },
        // WeChat's only route declines.
        RouteConfig { method: PayMethod::Wechat, channel: ChannelId(5), weight: 1 },
    ];
    let cluster = Cluster::start(options).await.expect("cluster starts");
    let api = api_of(&cluster, 1, dir.path());
    let receiver = Receiver::start(0).await;
    let w = scenarios::world(&api, &receiver, "grace").await;
    for n in 0..4 {
        let order = scenarios::new_order(&api, &w, &format!("C-{n}"), 100).await;
        let paid = scenarios::pay(&api, &w, &order, "bank_card").await;
        assert_eq!(paid.status, StatusCode::OK, "{}", paid.text);
        assert_eq!(paid.body["payment"]["channel_id"], 1, "the declining route was skipped");
    }
    let merchant_before = scenarios::merchant_balance(&api, &w).await;
    let order = scenarios::new_order(&api, &w, "C-wechat", 100).await;
    let declined = scenarios::pay(&api, &w, &order, "wechat").await;
    assert_eq!((declined.status, declined.code()), (StatusCode::PAYMENT_REQUIRED, "channel_declined"));
    assert_eq!(scenarios::order(&api, &w, &order).await["status"], "CREATED");
    assert_eq!(scenarios::merchant_balance(&api, &w).await, merchant_before);
    assert!(scenarios::notifications(&api, &w, &order).await.is_empty());
    // The decline opened the route's circuit breaker: WeChat has no route
    // in rotation for a while (this node's breaker; it is per node).
    let again = scenarios::pay(&api, &w, &order, "wechat").await;
    assert_eq!((again.status, again.code()), (StatusCode::SERVICE_UNAVAILABLE, "channel_unavailable"));
    assert_eq!(scenarios::order(&api, &w, &order).await["status"], "CREATED");
    receiver.stop().await;
    cluster.shutdown().await;
}

/// `paytx up` as a process: serves the API, stops cleanly on SIGINT, and a
/// restart on the same directory continues (the user registered before the
/// restart logs in after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paytx_up_serves_stops_on_ctrl_c_and_continues_after_a_restart() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("up");
    let admin_file = dir.path().join("admin.key");
    let (up_data, up_admin) = (data.clone(), admin_file.clone());
    let run = move || {
        let (data, admin_file) = (&up_data, &up_admin);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_paytx"))
            .args(["up", "--http", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .arg("--admin-key-file")
            .arg(admin_file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("paytx up starts");
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut apis = Vec::new();
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(url) = line.split("api ").nth(1) {
                apis.push(url.trim().to_string());
            }
            if line.starts_with("running") {
                break;
            }
        }
        assert_eq!(apis.len(), 3, "one API per node: {apis:?}");
        (child, apis)
    };
    let stop = |mut child: std::process::Child| {
        let killed = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        assert!(status.success(), "a clean stop on Ctrl-C: {status}");
    };

    let (child, apis) = tokio::task::spawn_blocking(run.clone()).await.unwrap();
    let admin = std::fs::read_to_string(&admin_file).unwrap().trim().to_string();
    assert!(data.join("card.key").exists() && data.join("platform.pem").exists(), "keys created on first start");
    let api = Api::new(apis[0].clone(), admin.clone());
    let (_, account, token) = api.register("henry", CARD).await;
    tokio::task::spawn_blocking(move || stop(child)).await.unwrap();

    let (child, apis) = tokio::task::spawn_blocking(run).await.unwrap();
    let api = Api::new(apis[2].clone(), admin);
    let login = api.post("/v1/sessions", None, &json!({"username": "henry", "password": "s3cretpass"})).await;
    assert_eq!(login.status, StatusCode::CREATED, "{}", login.text);
    assert_eq!(api.balance(&account, login.body["token"].as_str().unwrap()).await, 0);
    assert!(!token.is_empty());
    tokio::task::spawn_blocking(move || stop(child)).await.unwrap();
}

/// Racing requests on one order: one payment wins, concurrent refunds never
/// exceed what was paid, and the money matches the answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_payments_and_refunds_stay_consistent() {
    captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(options(dir.path())).await.expect("cluster starts");
    let apis: Vec<Api> = (1..=3).map(|node| api_of(&cluster, node, dir.path())).collect();
    let receiver = Receiver::start(0).await;
    let w = scenarios::world(&apis[0], &receiver, "ivan").await;
    let (judy_id, judy_account, judy_token) = apis[0].register("judy", "5555555555554444").await;
    let topup = apis[0]
        .post(
            &format!("/v1/users/{judy_id}/topups"),
            Some(&judy_token),
            &json!({"method": "wechat", "amount_minor": 10_000}),
        )
        .await;
    assert_eq!(topup.status, StatusCode::CREATED, "{}", topup.text);
    let order = scenarios::new_order(&apis[0], &w, "RACE-1", 2_500).await;

    // Two users pay the same order at once, through different nodes.
    let judy = scenarios::World { token: judy_token.clone(), user_account: judy_account.clone(), ..w.clone_ids() };
    let (a, b) = tokio::join!(
        scenarios::pay(&apis[1], &w, &order, "balance"),
        scenarios::pay(&apis[2], &judy, &order, "balance")
    );
    let wins = [&a, &b].iter().filter(|r| r.status == StatusCode::OK).count();
    assert_eq!(wins, 1, "exactly one payment: {} / {}", a.text, b.text);
    for loser in [&a, &b].iter().filter(|r| r.status != StatusCode::OK) {
        assert!(matches!(loser.code(), "order_not_payable" | "unavailable"), "{}", loser.text);
    }
    let ivan = apis[0].balance(&w.user_account, &w.token).await;
    let judy_balance = apis[0].balance(&judy_account, &judy_token).await;
    assert_eq!(ivan + judy_balance, 20_000 - 2_500, "one wallet paid once");

    // Five refunds of 1 000 at once on a 2 500 order: two fit, so exactly
    // two are granted.
    let granted = racing_refunds(&apis, &w, &order, "RR", 5, 1_000).await;
    assert_eq!(granted, 2_000, "every refund that fits is granted");
    let listed = apis[2]
        .signed(api::merchant_key(), &w.merchant, Method::GET, &format!("/v1/orders/{order}/refunds"), None)
        .await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 2, "the refunds index: {}", listed.text);
    let view = scenarios::order(&apis[0], &w, &order).await;
    assert_eq!(view["refunded_minor"].as_i64(), Some(granted));
    let after = apis[0].balance(&w.user_account, &w.token).await + apis[0].balance(&judy_account, &judy_token).await;
    assert_eq!(after, 20_000 - 2_500 + granted, "refunds went back to the payer's wallet, once each");

    // Heavier: thirty refunds of 100 at once on a 2 000 order, ten through
    // each node. Each round a node loses is another refund committing, so
    // none of them may run out of patience: exactly twenty fit and are
    // granted, the other ten get a definite 409.
    let order = scenarios::new_order(&apis[0], &w, "RACE-2", 2_000).await;
    let paid = scenarios::pay(&apis[1], &w, &order, "balance").await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.text);
    let before = apis[0].balance(&w.user_account, &w.token).await;
    let granted = racing_refunds(&apis, &w, &order, "RR2", 30, 100).await;
    assert_eq!(granted, 2_000, "every refund that fits is granted");
    let view = scenarios::order(&apis[2], &w, &order).await;
    assert_eq!(view["refunded_minor"].as_i64(), Some(granted), "{view}");
    assert_eq!(apis[0].balance(&w.user_account, &w.token).await, before + granted, "each refund paid back once");
    receiver.stop().await;
    cluster.shutdown().await;
}

/// `count` refunds of `amount_minor` each of one order at once, spread
/// over the nodes; every answer is `201` or a definite `409`, never a `503`
/// for a refund that fits. Returns the sum granted.
async fn racing_refunds(
    apis: &[Api],
    w: &scenarios::World,
    order: &str,
    prefix: &str,
    count: usize,
    amount_minor: i64,
) -> i64 {
    let refunds = futures::future::join_all((0..count).map(|n| {
        let api = apis[n % apis.len()].clone();
        async move { scenarios::refund(&api, w, order, &format!("{prefix}-{n}"), amount_minor).await }
    }))
    .await;
    for r in &refunds {
        assert!(
            r.status == StatusCode::CREATED || matches!(r.code(), "refund_exceeds_paid" | "order_not_refundable"),
            "{}",
            r.text
        );
    }
    refunds.iter().filter(|r| r.status == StatusCode::CREATED).count() as i64 * amount_minor
}

/// The query endpoints and the open ends over real nodes: orders listed
/// from their indexes while more are created (through other nodes), the
/// statement against the client's own records, the wallet history,
/// idempotency keys (registration's and login's scoped by username),
/// revocable sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_and_open_ends_over_real_nodes() {
    captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(options(dir.path())).await.expect("cluster starts");
    let apis: Vec<Api> = (1..=3).map(|node| api_of(&cluster, node, dir.path())).collect();
    let receiver = Receiver::start(0).await;
    let lister = queries::order_queries(&apis[0], &receiver).await;
    check_order_indexes(&cluster, &apis[1], &lister).await;
    queries::bad_query_parameters(&apis[1], &receiver).await;
    queries::statements_and_history(&apis[2], &receiver).await;
    open_ends::idempotency_keys(&apis[1], &receiver).await;
    open_ends::every_other_post_takes_a_key(&apis[2], &receiver).await;
    open_ends::revocable_sessions(&apis[2]).await;
    open_ends::account_keys_are_scoped_by_username(&apis[0]).await;
    receiver.stop().await;
    cluster.shutdown().await;
}

/// The open ends that need their own settings, over real nodes: rate
/// limits (`429` with `Retry-After`, per merchant and per client address,
/// per node) and the audit entry of each money-moving request (top-up,
/// payment, refund) on disk when its answer arrives — a copy of the node's
/// audit database taken right then, as a crash would leave it, holds the
/// entry and its chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_and_durable_audit_over_real_nodes() {
    captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    let limits = paytx_gateway::ratelimit::RateLimit { per_sec: 1, burst: 2 };
    if let Some(http) = opts.http.as_mut() {
        http.gateway.merchant_rate_limit = limits;
        http.gateway.address_rate_limit = limits;
    }
    let cluster = Cluster::start(opts).await.expect("cluster starts");
    let apis: Vec<Api> = (1..=3).map(|node| api_of(&cluster, node, dir.path())).collect();
    let receiver = Receiver::start(0).await;
    open_ends::rate_limits(&apis[1], &receiver).await;
    // Buckets are per node: node 3 still admits the address node 2 refused.
    let login = apis[2].post("/v1/sessions", None, &json!({"username": "nobody", "password": "whatever1"})).await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED, "{}", login.text);

    // Durable audit entries, on node 1 (its own bucket is still full; the
    // requests are spaced out to stay within 1/s per merchant and address).
    let api = &apis[0];
    let w = scenarios::world(api, &receiver, "durable").await;
    let audit = paytx_gateway::audit::audit_dir(&dir.path().join("data").join("node-1"));
    let mut copies = 0;
    let last_entry_on_disk = |copies: &mut usize| {
        *copies += 1;
        let copy = dir.path().join(format!("audit-copy-{copies}"));
        copy_dir(&audit, &copy);
        let entries = paytx_gateway::audit::verify(&copy).expect("the copied chain verifies");
        let log = paytx_gateway::audit::AuditLog::open(&copy, 1).unwrap();
        let last = log.tail(1).pop().expect("an entry");
        (last.action, last.status, entries)
    };
    let topup = api
        .post(&format!("/v1/users/{}/topups", w.user), Some(&w.token), &json!({"method": "alipay", "amount_minor": 77}))
        .await;
    assert_eq!(topup.status, StatusCode::CREATED, "{}", topup.text);
    let (action, status, entries) = last_entry_on_disk(&mut copies);
    assert_eq!((action.as_str(), status), ("topup.create", 201), "after {entries} entries");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let order = scenarios::new_order(api, &w, "D-1", 500).await;
    let paid = scenarios::pay(api, &w, &order, "balance").await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.text);
    let (action, status, _) = last_entry_on_disk(&mut copies);
    assert_eq!((action.as_str(), status), ("order.pay", 200));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let refund = scenarios::refund(api, &w, &order, "DR-1", 200).await;
    assert_eq!(refund.status, StatusCode::CREATED, "{}", refund.text);
    let (action, status, _) = last_entry_on_disk(&mut copies);
    assert_eq!((action.as_str(), status), ("refund.create", 201));
    receiver.stop().await;
    cluster.shutdown().await;
}

fn copy_dir(from: &Path, to: &Path) {
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

/// Every entry of one index partition, ascending, page by page.
async fn whole_partition(
    client: &paytx::client::Client,
    partition: paytx_protocol::Partition,
) -> Vec<paytx_protocol::messages::RecordView> {
    let mut entries = Vec::new();
    let mut after = None;
    for _ in 0..1_000 {
        let scan = paytx_protocol::RangeScan {
            partition,
            from: [0; paytx_protocol::ids::SORT_BYTES],
            to: [0xff; paytx_protocol::ids::SORT_BYTES],
            descending: false,
            after,
            limit: 7,
        };
        let page = client.scan_range(scan).await.expect("a range read");
        assert!(page.records.iter().all(|r| r.key.partition() == Some(partition)), "a page outside its partition");
        after = page.records.last().map(|r| r.key.sort()).or(after);
        entries.extend(page.records);
        if !page.more {
            return entries;
        }
    }
    panic!("the partition did not end within 1,000 pages");
}

/// The gateway's order indexes against the records they index, read raw
/// from the records shards after a run (the gateway's counterpart of the
/// simulator's `index-matches-records`): every order of the merchant has
/// exactly one creation entry (at its `created_at`) and exactly one status
/// entry, in the partition of its live status; no entry points at a
/// missing order; an order's refund entries are its refunds, oldest first.
async fn check_order_indexes(cluster: &Cluster, api: &Api, w: &scenarios::World) {
    use paytx_gateway::index::{self, ins, Pointer};
    let client = cluster.client().await.expect("a client");
    let pointed = |views: &[paytx_protocol::messages::RecordView]| -> Vec<(u64, String)> {
        views
            .iter()
            .map(|v| {
                let pointer: Pointer = serde_json::from_slice(&v.value).expect("an index entry decodes");
                (paytx_protocol::ids::sort_key_parts(v.key.sort()).0, pointer.id)
            })
            .collect()
    };
    let created =
        pointed(&whole_partition(&client, index::partition(ins::ORDERS_BY_CREATED, &w.merchant).unwrap()).await);
    assert!(!created.is_empty());
    let ids: std::collections::BTreeSet<&String> = created.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), created.len(), "an order indexed twice by creation");
    let mut by_status = std::collections::BTreeMap::new();
    for status in ["CREATED", "PAID", "PARTIALLY_REFUNDED", "REFUNDED", "CLOSED"] {
        let entries = whole_partition(&client, index::status_partition(&w.merchant, status).unwrap()).await;
        for (_, id) in pointed(&entries) {
            assert!(by_status.insert(id.clone(), status).is_none(), "{id} has two status entries");
        }
    }
    assert_eq!(by_status.len(), created.len(), "a status entry per order, and none for a missing one");
    for (at, id) in &created {
        let view = scenarios::order(api, w, id).await;
        assert_eq!(view["created_at"].as_u64(), Some(*at), "{id}: the entry's time is the order's");
        assert_eq!(by_status.get(id).copied(), view["status"].as_str(), "{id}: the status entry is its live status");
        let refunds = pointed(&whole_partition(&client, index::partition(ins::REFUNDS_BY_ORDER, id).unwrap()).await);
        let refund_ids: Vec<&str> = refunds.iter().map(|(_, id)| id.as_str()).collect();
        let expected: Vec<&str> = view["refund_ids"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        assert_eq!(refund_ids, expected, "{id}: its refunds index");
    }
}

/// The README's `[gateway]` example is a valid config.
#[test]
fn the_readme_gateway_config_parses() {
    let readme = include_str!("../README.md");
    let start = readme.find("```toml\nhttp_listen").expect("the README has the example") + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    #[derive(serde::Deserialize)]
    struct Example {
        http_listen: std::net::SocketAddr,
        gateway: paytx_gateway::GatewayConfig,
    }
    let example: Example = toml::from_str(&readme[start..end]).expect("the README's example parses");
    assert_eq!(example.http_listen.port(), 8080);
    assert_eq!(example.gateway.routing_strategy, paytx_gateway::RoutingStrategy::WeightedRandom);
    assert_eq!(example.gateway.routes.len(), 1);
    assert_eq!(example.gateway.routes[0].weight, 3);
    assert_eq!(example.gateway.notify_retry_schedule.len(), 10);
    assert_eq!(example.gateway.breaker.failure_threshold, 3);
}
