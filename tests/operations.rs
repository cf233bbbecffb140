//! The admin listener (issue 12) on real 3-node clusters over loopback TCP:
//! `/metrics` counts exactly what clients saw, `/health/ready` follows the
//! node's view of the coordinator group, and the admin API and console
//! need the admin key and show every node and the leader.

mod common;

use common::*;
use paytx::admin::views::{ClusterStatus, TxnDetail, TxnList};
use paytx::protocol::{AccountId, Operation, TxnRequest};
use paytx::{AdminOptions, Cluster, ClusterOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const ADMIN_KEY: &str = "operations-test-admin-key-0123456789";

/// Test options plus an admin listener on an ephemeral port per node, with
/// the admin key in `dir`.
fn with_admin(dir: &std::path::Path) -> ClusterOptions {
    let key_file: PathBuf = dir.join("admin.key");
    std::fs::write(&key_file, ADMIN_KEY).expect("write the admin key");
    ClusterOptions {
        admin: Some(AdminOptions { base: SocketAddr::from(([127, 0, 0, 1], 0)), admin_key_file: Some(key_file) }),
        ..test_options()
    }
}

fn admin_addrs(cluster: &Cluster) -> BTreeMap<u64, SocketAddr> {
    cluster
        .node_ids()
        .into_iter()
        .map(|id| (id, cluster.admin_addr(id).unwrap_or_else(|| panic!("node {id} serves an admin listener"))))
        .collect()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client")
}

async fn scrape(addr: SocketAddr) -> String {
    let response = http().get(format!("http://{addr}/metrics")).send().await.expect("scrape answers");
    assert_eq!(response.status(), 200);
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.expect("scrape body")
}

/// The sum of every sample of `name` (any labels) in a text scrape.
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|line| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

async fn cluster_sum(addrs: &BTreeMap<u64, SocketAddr>, name: &str) -> f64 {
    let mut total = 0.0;
    for addr in addrs.values() {
        total += sum_of(&scrape(*addr).await, name);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_commits_and_aborts_clients_saw() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, client) = start(with_admin(dir.path())).await;
    let admins = admin_addrs(&cluster);
    let payers = open(&client, "open-payers", 1..=4, 1_000).await;
    let merchant = open(&client, "open-merchant", 100..=100, 0).await[0];

    let committed_before = cluster_sum(&admins, "paytx_txns_committed_total").await;
    let aborted_before = cluster_sum(&admins, "paytx_txns_aborted_total").await;
    let latencies_before = cluster_sum(&admins, "paytx_txn_commit_latency_seconds_count").await;
    let insufficient_before = {
        let mut n = 0.0;
        for addr in admins.values() {
            n += sum_of(&scrape(*addr).await, "paytx_txns_aborted_total{reason=\"insufficient_funds\"}");
        }
        n
    };

    // Each payer pays 300 three times from 1,000: two commit, the third of
    // every fourth payment sequence runs dry. Some amounts are too large.
    let (mut committed, mut aborted) = (0u64, 0u64);
    for round in 0..4u64 {
        for (i, payer) in payers.iter().enumerate() {
            let amount = if (round + i as u64) % 3 == 2 { 5_000 } else { 300 };
            let ops = vec![
                Operation::Debit { account: *payer, amount: cny(amount) },
                Operation::Credit { account: merchant, amount: cny(amount) },
            ];
            let receipt = submit(&client, &format!("m-{round}-{i}"), ops).await;
            assert!(!receipt.replayed, "fresh keys are never replays");
            if receipt.outcome.is_committed() {
                committed += 1;
            } else {
                aborted += 1;
            }
        }
    }
    assert!(committed > 0 && aborted > 0, "the workload commits and aborts: {committed} / {aborted}");
    // A replay moves neither counter.
    let replay = client
        .submit(TxnRequest::new(
            "m-0-0",
            vec![
                Operation::Debit { account: payers[0], amount: cny(300) },
                Operation::Credit { account: merchant, amount: cny(300) },
            ],
        ))
        .await
        .expect("replay answers");
    assert!(replay.replayed);

    let committed_delta = cluster_sum(&admins, "paytx_txns_committed_total").await - committed_before;
    let aborted_delta = cluster_sum(&admins, "paytx_txns_aborted_total").await - aborted_before;
    let latency_delta = cluster_sum(&admins, "paytx_txn_commit_latency_seconds_count").await - latencies_before;
    assert_eq!(committed_delta, committed as f64, "commits counted once, on the node whose coordinator ran them");
    assert_eq!(aborted_delta, aborted as f64, "aborts counted once");
    assert_eq!(latency_delta, committed as f64, "one latency per commit");
    let mut insufficient_after = 0.0;
    for addr in admins.values() {
        insufficient_after += sum_of(&scrape(*addr).await, "paytx_txns_aborted_total{reason=\"insufficient_funds\"}");
    }
    assert_eq!(insufficient_after - insufficient_before, aborted as f64, "every abort here is for funds");

    // The leader's scrape carries the group's view; every node's its own.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let text = scrape(admins[&leader]).await;
    assert_eq!(sum_of(&text, "paytx_raft_is_leader"), 1.0);
    assert_eq!(sum_of(&text, "paytx_raft_leader_id"), leader as f64);
    assert!(sum_of(&text, "paytx_raft_term") >= 1.0);
    assert!(sum_of(&text, "paytx_raft_applied_index") >= 1.0);
    assert!(text.contains("paytx_raft_replication_lag_entries{peer="), "lag per peer on the leader:\n{text}");
    assert!(sum_of(&text, "paytx_raft_proposed_commands_total") >= sum_of(&text, "paytx_raft_proposals_total"));
    assert!(sum_of(&text, "paytx_disk_flushes_total") >= 1.0);
    assert!(sum_of(&text, "paytx_disk_sync_latency_seconds_count") >= 1.0);
    assert!(sum_of(&text, "paytx_net_open_connections") >= 1.0);
    assert!(sum_of(&text, "process_resident_memory_bytes") > 1e6);
    assert!(cluster_sum(&admins, "paytx_shard_prepares_total").await >= (committed + aborted) as f64);
    assert!(cluster_sum(&admins, "paytx_shard_decisions_total").await >= 1.0);
    assert_eq!(sum_of(&text, "paytx_node_ready"), 1.0);
    drop(client);
    cluster.shutdown().await;
}

async fn ready(addr: SocketAddr) -> (u16, serde_json::Value) {
    let response = http().get(format!("http://{addr}/health/ready")).send().await.expect("ready answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("ready answers JSON"))
}

async fn wait_ready(addr: SocketAddr, want: u16, timeout: Duration) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (status, body) = ready(addr).await;
        if status == want {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "ready stayed {status} (wanted {want}): {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_goes_503_when_the_leader_loses_every_peer_and_back_to_200() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, client) = start(with_admin(dir.path())).await;
    let admins = admin_addrs(&cluster);
    for addr in admins.values() {
        wait_ready(*addr, 200, Duration::from_secs(10)).await;
        let live = http().get(format!("http://{addr}/health/live")).send().await.expect("live answers");
        assert_eq!(live.status(), 200);
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    // Cut every link of the leader, both ways: it still believes it leads
    // (openraft 0.9 does not step down), but no quorum acknowledges it.
    cluster.link_filter().set(move |from, to, _| from != leader && to != leader);
    let body = wait_ready(admins[&leader], 503, Duration::from_secs(15)).await;
    assert_eq!(body["ready"], false);
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("quorum") || reasons.contains("no coordinator leader"), "{body}");
    // The two others elect a leader among themselves and stay ready.
    for (id, addr) in &admins {
        if *id != leader {
            wait_ready(*addr, 200, Duration::from_secs(15)).await;
        }
    }
    cluster.link_filter().clear();
    let body = wait_ready(admins[&leader], 200, Duration::from_secs(20)).await;
    assert_eq!(body["reasons"], serde_json::json!([]));
    drop(client);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_and_console_need_the_key_and_show_every_node_and_the_leader() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, client) = start(with_admin(dir.path())).await;
    let admins = admin_addrs(&cluster);
    let accounts = open(&client, "open-pair", [1u64, 2].into_iter(), 1_000).await;
    let pay = vec![
        Operation::Debit { account: accounts[0], amount: cny(250) },
        Operation::Credit { account: AccountId(2), amount: cny(250) },
    ];
    let receipt = submit(&client, "console-pay-1", pay).await;
    assert!(receipt.outcome.is_committed());
    // A key with a slash and a hash, looked up through the CLI's encoding.
    let odd = vec![
        Operation::Debit { account: accounts[0], amount: cny(1) },
        Operation::Credit { account: AccountId(2), amount: cny(1) },
    ];
    let odd_receipt = submit(&client, "ops/odd#key", odd).await;
    let too_much = vec![
        Operation::Debit { account: accounts[0], amount: cny(1_000_000) },
        Operation::Credit { account: AccountId(2), amount: cny(1_000_000) },
    ];
    assert!(!submit(&client, "console-too-much", too_much).await.outcome.is_committed());
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let http = http();
    for addr in admins.values() {
        for path in ["/admin/v1/status", "/admin/v1/txns", "/admin/v1/txns/console-pay-1", "/console"] {
            let url = format!("http://{addr}{path}");
            let bare = http.get(&url).send().await.expect("answers");
            assert_eq!(bare.status(), 401, "{path} without the key");
            let wrong = http.get(&url).bearer_auth("not-the-admin-key-at-all").send().await.expect("answers");
            assert_eq!(wrong.status(), 401, "{path} with a wrong key");
        }
        // The unauthenticated endpoints stay open.
        assert_eq!(http.get(format!("http://{addr}/metrics")).send().await.expect("answers").status(), 200);

        let status = status_of(*addr).await;
        assert_eq!(status.leader, Some(leader));
        let ids: Vec<u64> = status.nodes.iter().map(|n| n.node).collect();
        assert_eq!(ids, cluster.node_ids());
        let leaders: Vec<u64> = status.nodes.iter().filter(|n| n.role == "leader").map(|n| n.node).collect();
        assert_eq!(leaders, vec![leader], "{status:?}");

        // The console, with the key as a Basic password (what a browser sends).
        let html = console_html(*addr, "/console?txn=console-pay-1").await;
        for id in cluster.node_ids() {
            assert!(html.contains(&format!("<td>node {id}</td>")), "node {id} in the console");
        }
        assert!(html.contains(&format!("<b id=\"leader\">node {leader}</b>")), "the leader in the console");
        assert!(html.contains("id=\"lookup\"") && html.contains("console-pay-1"), "the lookup in the console");
        assert!(html.contains("<svg"), "charts");
    }

    // The abort shows by reason once the sampler (once a second) has seen
    // it — in every node's console, not only the leader's: each samples
    // every node's totals (the leader answered it; the others add it up).
    for (node, addr) in &admins {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let html = console_html(*addr, "/console").await;
            // `<reason><recent><since each node started>`: exactly the one.
            if html.contains("<tr><td>insufficient_funds</td>") {
                assert!(html.contains("<tr><td>insufficient_funds</td><td>") && html.contains("</td><td>1</td></tr>"));
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no abort row in node {node}'s console:\n{html}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // One transaction by key: committed (its record may be forgotten by now,
    // then the key remembers the outcome).
    let detail: TxnDetail = http
        .get(format!("http://{}/admin/v1/txns/console-pay-1", admins[&leader]))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("lookup answers")
        .json()
        .await
        .expect("lookup is JSON");
    assert_eq!(detail.txn, receipt.txn.to_string());
    let odd: TxnDetail = http
        .get(format!("http://{}/admin/v1/txns/ops%2Fodd%23key", admins[&leader]))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("lookup answers")
        .json()
        .await
        .expect("lookup is JSON");
    assert_eq!(odd.txn, odd_receipt.txn.to_string(), "{odd:?}");
    assert_eq!(detail.decision, Some(paytx::protocol::Outcome::Committed), "{detail:?}");
    // And by id while it is still in the table, or 404 once forgotten.
    let by_id = http
        .get(format!("http://{}/admin/v1/txns/{}", admins[&leader], receipt.txn))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("lookup answers");
    assert!([200, 404].contains(&by_id.status().as_u16()));
    let list: TxnList = http
        .get(format!("http://{}/admin/v1/txns?limit=10", admins[&leader]))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("list answers")
        .json()
        .await
        .expect("list is JSON");
    assert_eq!(list.answered_by, leader);
    let hosted = cluster.config(leader).expect("config").shards.shards_on(leader).len();
    assert_eq!(list.in_doubt_by_shard.len(), hosted, "one entry per shard replica of the node");
    drop(client);
    cluster.shutdown().await;
}

/// Writes one node's scrape to `$PAYTX_SCRAPE_OUT` (CI checks it with
/// `promtool check metrics`). Ignored by default: `cargo test --test
/// operations -- --ignored write_a_scrape`.
/// Test options with the admin listener and the merchant API on every
/// node, sharing the admin key (so every node keeps a gateway audit log).
fn with_admin_and_api(dir: &std::path::Path) -> ClusterOptions {
    let options = with_admin(dir);
    let gateway = paytx_gateway::GatewayConfig {
        admin_key_file: dir.join("admin.key"),
        card_key_file: dir.join("card.key"),
        platform_key_file: dir.join("platform.pem"),
        ..Default::default()
    };
    paytx_gateway::create_missing_keys(&gateway).expect("key files");
    ClusterOptions {
        data_dir: Some(dir.join("data")),
        http: Some(paytx::HttpOptions { base: SocketAddr::from(([127, 0, 0, 1], 0)), gateway }),
        ..options
    }
}

/// `GET {path}` of the console (`/console?...`) with the admin key as a
/// Basic password (what a browser sends): its HTML.
async fn console_html(addr: SocketAddr, path: &str) -> String {
    let page = http().get(format!("http://{addr}{path}")).basic_auth("ops", Some(ADMIN_KEY)).send().await;
    let page = page.expect("console answers");
    assert_eq!(page.status(), 200, "{path}");
    page.text().await.expect("console body")
}

async fn status_of(addr: SocketAddr) -> ClusterStatus {
    http()
        .get(format!("http://{addr}/admin/v1/status"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("status answers")
        .json()
        .await
        .expect("status is JSON")
}

/// Asks `addr` for the cluster status until `done` holds of it.
async fn status_until(addr: SocketAddr, what: &str, done: impl Fn(&ClusterStatus) -> bool) -> ClusterStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = status_of(addr).await;
        if done(&status) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn chain_of(status: &ClusterStatus, node: u64) -> Option<paytx::protocol::messages::AuditChainView> {
    status.nodes.iter().find(|n| n.node == node)?.status.as_ref()?.local.audit_chain.clone()
}

/// One audited request to `node`'s merchant API (a failed login: every
/// state-changing request is audited, whatever its outcome).
async fn audited_request(cluster: &Cluster, node: u64) {
    let api = cluster.http_addr(node).expect("the node serves the API");
    let reply = http()
        .post(format!("http://{api}/v1/sessions"))
        .json(&serde_json::json!({"username": "nobody", "password": "whatever1"}))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(reply.status(), 401);
}

/// The status one node answers shows every node's free disk space and its
/// gateway audit chain (carried in each node's own status over the native
/// protocol), and the console shows both; a chain tampered with while its
/// node was down is reported broken, naming the entry, once it restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_shows_every_nodes_disk_free_and_audit_chain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, client) = start(with_admin_and_api(dir.path())).await;
    let admins = admin_addrs(&cluster);
    for _ in 0..3 {
        audited_request(&cluster, 2).await;
    }
    audited_request(&cluster, 3).await;
    let status = status_until(admins[&1], "node 2's three entries verified", |status| {
        chain_of(status, 2).is_some_and(|c| c.verified_entries == 3 && c.problem.is_none())
            && chain_of(status, 3).is_some_and(|c| c.verified_entries == 1)
    })
    .await;
    let free = fs2::available_space(dir.path()).expect("free space") as f64;
    for node in &status.nodes {
        let view = node.status.as_ref().unwrap_or_else(|| panic!("node {} answered", node.node));
        let reported = view.local.disk_free_bytes.unwrap_or_else(|| panic!("node {}: disk free", node.node)) as f64;
        // One file system for the three: each reads about what the test does.
        assert!((reported - free).abs() <= free * 0.2, "node {}: {reported} vs {free}", node.node);
        let chain = view.local.audit_chain.as_ref().unwrap_or_else(|| panic!("node {}: audit chain", node.node));
        assert!(chain.checked_at_ms > 0 && chain.problem.is_none(), "node {}: {chain:?}", node.node);
        assert_eq!(chain.entries, chain.verified_entries);
    }
    let html = console_html(admins[&1], "/console").await;
    assert!(html.contains("<th>disk free</th>") && html.contains("<th>audit chain</th>"), "{html}");
    assert!(html.contains("ok, 3 entries"), "node 2's chain in node 1's console");
    assert!(html.contains("GiB") || html.contains("MiB"), "disk free in the console");

    // Node 3's log tampered with while it is down: entry 1's status rewritten.
    cluster.stop_node(3).await.expect("node 3 stops");
    let audit = paytx_gateway::audit::audit_dir(&dir.path().join("data").join("node-3"));
    {
        let db = sled::open(&audit).expect("node 3's audit log opens");
        let key = 1u64.to_be_bytes();
        let mut entry: serde_json::Value = serde_json::from_slice(&db.get(key).unwrap().expect("entry 1")).unwrap();
        entry["status"] = serde_json::json!(200);
        db.insert(key, serde_json::to_vec(&entry).unwrap()).unwrap();
        db.flush().unwrap();
    }
    cluster.restart_node(3).await.expect("node 3 restarts");
    let status = status_until(admins[&1], "node 3's broken chain reported", |status| {
        chain_of(status, 3).is_some_and(|c| c.problem.is_some())
    })
    .await;
    let broken = chain_of(&status, 3).expect("node 3's chain");
    assert!(broken.problem.as_deref().unwrap_or("").contains("entry 1 was modified"), "{broken:?}");
    assert_eq!(broken.verified_entries, 0);
    assert!(chain_of(&status, 2).is_some_and(|c| c.problem.is_none()), "node 2's chain is still fine");
    let html = console_html(admins[&1], "/console").await;
    assert!(html.contains("BROKEN after entry 0: entry 1 was modified"), "node 3 broken in the console");
    drop(client);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn write_a_scrape_for_promtool() {
    let out = std::env::var("PAYTX_SCRAPE_OUT").unwrap_or_else(|_| "paytx-scrape.txt".into());
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, client) = start(with_admin(dir.path())).await;
    let payers = open(&client, "open", 1..=2, 1_000).await;
    let ops = vec![
        Operation::Debit { account: payers[0], amount: cny(5_000) },
        Operation::Credit { account: payers[1], amount: cny(5_000) },
    ];
    assert!(!submit(&client, "too-much", ops).await.outcome.is_committed());
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let text = scrape(admin_addrs(&cluster)[&leader]).await;
    std::fs::write(&out, text).expect("write the scrape");
    eprintln!("scrape written to {out}");
    drop(client);
    cluster.shutdown().await;
}

/// Kills a child process when dropped (a test that panics must not leave
/// its cluster running).
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `paytx up --admin`: every node's admin URLs are printed, the merchant
/// API's requests are counted by route and status, logs are JSON lines,
/// and `paytx admin` reads the cluster table from any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paytx_up_with_admin_counts_api_requests_and_paytx_admin_reads_the_cluster() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("up");
    let admin_file = dir.path().join("admin.key");
    let log_file = dir.path().join("up.log");
    let (up_data, up_admin, up_log) = (data.clone(), admin_file.clone(), log_file.clone());
    let (child, apis, admins) = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_paytx"))
            .args(["up", "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
            .arg(&up_data)
            .arg("--admin-key-file")
            .arg(&up_admin)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&up_log).expect("log file"))
            .spawn()
            .expect("paytx up starts");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let (mut apis, mut admins) = (Vec::new(), Vec::new());
        for line in stdout.lines() {
            let line = line.expect("a line");
            if let Some(url) = line.split("api ").nth(1) {
                apis.push(url.trim().to_string());
            }
            if let Some(rest) = line.split("admin http://").nth(1) {
                let metrics = rest.split_whitespace().next().expect("a metrics URL");
                admins.push(format!("http://{}", metrics.trim_end_matches("/metrics")));
            }
            if line.starts_with("running") {
                break;
            }
        }
        (child, apis, admins)
    })
    .await
    .expect("paytx up reports");
    // A failed assertion below must not leave the cluster running.
    let mut child = KillOnDrop(Some(child));
    assert_eq!(apis.len(), 3, "{apis:?}");
    assert_eq!(admins.len(), 3, "one admin listener per node: {admins:?}");

    let http = http();
    assert_eq!(http.get(format!("{}/openapi.json", apis[0])).send().await.expect("api").status(), 200);
    assert_eq!(http.get(format!("{}/v1/orders/ord_x", apis[0])).send().await.expect("api").status(), 401);
    let text = http.get(format!("{}/metrics", admins[0])).send().await.expect("scrape").text().await.expect("body");
    assert_eq!(
        sum_of(&text, "paytx_http_requests_total{method=\"GET\",route=\"/openapi.json\",status=\"200\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum_of(&text, "paytx_http_requests_total{method=\"GET\",route=\"/v1/orders/{id}\",status=\"401\"}"),
        1.0,
        "routes are patterns, not paths"
    );

    // `paytx admin status` against node 2's listener, as a table and as JSON.
    let admin_cli = |args: Vec<String>| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_paytx"))
            .arg("admin")
            .args(args)
            .output()
            .expect("paytx admin runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let key_args = |extra: &[&str]| {
        let mut args = vec!["--addr".to_string(), admins[1].clone(), "--admin-key-file".into()];
        args.push(admin_file.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let status: ClusterStatus = loop {
        let json = admin_cli(key_args(&["status", "--json"]));
        let status: ClusterStatus = serde_json::from_str(&json).expect("status JSON");
        if status.leader.is_some() || tokio::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let leader = status.leader.expect("a leader");
    assert_eq!(status.nodes.len(), 3);
    let table = admin_cli(key_args(&["status"]));
    assert!(table.contains(&format!("coordinator leader: {leader}")), "{table}");
    assert_eq!(table.lines().filter(|l| l.split_whitespace().nth(2) == Some("leader")).count(), 1, "{table}");
    let in_doubt = admin_cli(key_args(&["in-doubt"]));
    assert!(in_doubt.contains("live transactions"), "{in_doubt}");

    let mut child = child.0.take().expect("still running");
    let killed = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
    assert!(status.success(), "a clean stop: {status}");
    let logs = std::fs::read_to_string(&log_file).expect("logs");
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "paytx up logs something at its default level");
    for line in &lines {
        // `paytx up` prints "stopping..." and "stopped" itself on stderr.
        if line.starts_with('{') {
            let parsed: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(parsed.get("level").is_some() && parsed.get("fields").is_some(), "{line}");
        }
    }
    assert!(lines.iter().any(|l| l.starts_with('{')), "JSON lines: {logs}");
}

/// The console in a real browser: headless Chromium loads `/console` with
/// the admin key (HTTP Basic, as a browser sends it) and the rendered DOM
/// shows every node, the leader and a just-committed transaction's lookup;
/// without the key it gets the 401 page. Keeps a screenshot at
/// `$PAYTX_CONSOLE_SCREENSHOT` (default `paytx-console.png`). Ignored by
/// default (needs Chromium; CI installs Debian's `chromium`): `cargo test
/// --test operations -- --ignored console_in_headless_chromium`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn console_in_headless_chromium() {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| std::process::Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("Chromium is installed (Debian: apt-get install chromium)");
    let screenshot = std::env::var("PAYTX_CONSOLE_SCREENSHOT").unwrap_or_else(|_| "paytx-console.png".into());
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, client) = start(with_admin(dir.path())).await;
    let accounts = open(&client, "open-chromium", [1u64, 2].into_iter(), 1_000).await;
    let pay = vec![
        Operation::Debit { account: accounts[0], amount: cny(300) },
        Operation::Credit { account: accounts[1], amount: cny(300) },
    ];
    let receipt = submit(&client, "chromium-pay-1", pay).await;
    assert!(receipt.outcome.is_committed());
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let admin = admin_addrs(&cluster)[&leader];
    let run = |args: Vec<String>| {
        let browser = browser.to_string();
        async move {
            tokio::task::spawn_blocking(move || {
                let profile = tempfile::tempdir().expect("a browser profile directory");
                let output = std::process::Command::new(&browser)
                    .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
                    .arg(format!("--user-data-dir={}", profile.path().display()))
                    .args(args)
                    .output()
                    .expect("Chromium runs");
                String::from_utf8_lossy(&output.stdout).into_owned()
            })
            .await
            .expect("the browser task")
        }
    };
    let with_key = format!("http://ops:{ADMIN_KEY}@{admin}/console?txn=chromium-pay-1");
    let dom = run(vec!["--dump-dom".into(), with_key.clone()]).await;
    for id in cluster.node_ids() {
        assert!(dom.contains(&format!("<td>node {id}</td>")), "node {id} in the rendered console:\n{dom}");
    }
    assert!(dom.contains(&format!("<b id=\"leader\">node {leader}</b>")), "the leader in the rendered console:\n{dom}");
    assert!(dom.contains("id=\"lookup\""), "the lookup in the rendered console:\n{dom}");
    assert!(dom.contains(&receipt.txn.to_string()), "the committed transaction's id in the lookup:\n{dom}");
    assert!(dom.contains("Committed"), "its decision in the lookup:\n{dom}");

    // Without the key the browser is refused: headless Chromium cancels
    // the Basic challenge and renders nothing of the console; the status
    // itself is checked over HTTP.
    let without_key = run(vec!["--dump-dom".into(), format!("http://{admin}/console")]).await;
    assert!(!without_key.contains("id=\"nodes\""), "nothing of the console without the key:\n{without_key}");
    let wrong_key = run(vec!["--dump-dom".into(), format!("http://ops:wrong-key-0123456789@{admin}/console")]).await;
    assert!(!wrong_key.contains("id=\"nodes\""), "nothing of the console with a wrong key:\n{wrong_key}");
    let status = http().get(format!("http://{admin}/console")).send().await.expect("answers").status();
    assert_eq!(status, 401);

    run(vec!["--window-size=1280,1400".into(), format!("--screenshot={screenshot}"), with_key]).await;
    let png = std::fs::read(&screenshot).expect("the screenshot is written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("console screenshot: {screenshot}");
    drop(client);
    cluster.shutdown().await;
}

/// A transaction whose decision one shard never receives: the leader's
/// admin API lists it as committing, oldest first with a growing age, and
/// its lookup shows which shard has acknowledged and which has not; a
/// follower's shows the table's view without the engine's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_acknowledgement_shows_in_the_list_and_the_lookup() {
    use paytx::protocol::EntityKey;
    let dir = tempfile::tempdir().expect("temp dir");
    // Three accounts shards (the default has one with three replicas), so
    // that payer and payee are on different shards.
    let options = ClusterOptions { shards_per_kind: std::num::NonZeroUsize::new(3), ..with_admin(dir.path()) };
    let (cluster, client) = start(options).await;
    let admins = admin_addrs(&cluster);
    let shard_map = cluster.config(1).expect("node 1").shards.clone();
    // Two accounts on different shards.
    let payer = AccountId(1);
    let payee = (2..100)
        .map(AccountId)
        .find(|a| shard_map.shard_of(EntityKey::Account(*a)) != shard_map.shard_of(EntityKey::Account(payer)))
        .expect("an account on another shard");
    open(&client, "open-stuck", [payer.0, payee.0].into_iter(), 1_000).await;
    let stuck = shard_map.shard_of(EntityKey::Account(payee));
    cluster.link_filter().set(move |_, _, message| message.decision_shard() != Some(stuck));
    let pay = vec![
        Operation::Debit { account: payer, amount: cny(100) },
        Operation::Credit { account: payee, amount: cny(100) },
    ];
    let receipt = submit(&client, "stuck-ack-1", pay).await;
    assert!(receipt.outcome.is_committed(), "implicitly committed before any decision is delivered");
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let http = http();
    let get = |addr: SocketAddr, path: String| {
        let http = http.clone();
        async move {
            let response =
                http.get(format!("http://{addr}{path}")).bearer_auth(ADMIN_KEY).send().await.expect("answers");
            assert_eq!(response.status(), 200, "{path}");
            response.json::<serde_json::Value>().await.expect("JSON")
        }
    };
    // The other shard acknowledges; the stuck one cannot. Seen for > 1 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let detail = loop {
        let detail: TxnDetail = serde_json::from_value(get(admins[&leader], "/admin/v1/txns/stuck-ack-1".into()).await)
            .expect("a TxnDetail");
        let acked: Vec<Option<bool>> = detail.shards.iter().map(|s| s.acked).collect();
        if acked.contains(&Some(true)) && detail.age_ms.unwrap_or(0) >= 1_000 {
            break detail;
        }
        assert!(tokio::time::Instant::now() < deadline, "the other shard never acked: {detail:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(detail.state, "committing");
    assert_eq!(detail.decision, Some(paytx::protocol::Outcome::Committed));
    assert_eq!(detail.txn, receipt.txn.to_string());
    for shard in &detail.shards {
        let want = shard.shard != stuck.to_string();
        assert_eq!(shard.acked, Some(want), "{shard:?}");
        assert_eq!(shard.ops.len(), 1);
        // When: the shard that acked has its time after the decision (the
        // driver's tick clock; within the transaction's age, which the
        // admin history samples once a second), the stuck one none.
        let age_bound_ms = detail.age_ms.unwrap_or(0) + 1_000;
        match shard.acked_after_ms {
            Some(ms) => assert!(want && ms <= age_bound_ms, "{shard:?} of {detail:?}"),
            None => assert!(!want, "the acked shard's time is shown: {shard:?}"),
        }
    }
    let decided_after_ms = detail.decided_after_ms.expect("the leader saw it begin and decide");
    assert!(decided_after_ms <= detail.age_ms.unwrap_or(0) + 1_000, "{detail:?}");
    let list: TxnList = serde_json::from_value(get(admins[&leader], "/admin/v1/txns".into()).await).expect("a list");
    let listed = list.txns.iter().find(|t| t.key == "stuck-ack-1").expect("listed");
    assert_eq!(listed.state, "committing");
    assert!(listed.age_ms >= 1_000, "{listed:?}");
    // A follower has the table's view, not the leader engine's.
    let follower = cluster.node_ids().into_iter().find(|id| *id != leader).expect("a follower");
    let seen: TxnDetail =
        serde_json::from_value(get(admins[&follower], "/admin/v1/txns/stuck-ack-1".into()).await).expect("a TxnDetail");
    assert!(seen.shards.iter().all(|s| s.vote == "unknown" && s.acked.is_none()), "{seen:?}");
    // Healed: the decision arrives, the record is forgotten, the key remains.
    cluster.link_filter().clear();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let detail: TxnDetail = serde_json::from_value(get(admins[&leader], "/admin/v1/txns/stuck-ack-1".into()).await)
            .expect("a TxnDetail");
        if detail.state == "finished" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never finished: {detail:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(client);
    cluster.shutdown().await;
}

/// `paytx bench --scrape-every-ms`: the scrapes of `/metrics` and the
/// console run during the measured window against every node and all
/// succeed while payments commit (what the README's scrape-cost rows rest
/// on); a period under the floor is refused.
#[test]
fn bench_scrapes_every_node_while_it_measures() {
    let bench = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_paytx"))
            .args(["bench", "--concurrency", "4", "--duration-secs", "2", "--json"])
            .args(extra)
            .output()
            .expect("paytx bench runs")
    };
    let output = bench(&["--scrape-every-ms", "200"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("a JSON row: {stdout}"));
    let report: serde_json::Value = serde_json::from_str(line).expect("the row is JSON");
    assert!(report["committed"].as_u64().unwrap_or(0) > 0, "payments commit while scraped: {report}");
    let scrapes = &report["scrapes"];
    // Two paths on three nodes per round, a round every 200 ms of a 2 s
    // window: a handful of rounds even on a slow debug build.
    assert!(scrapes["fetches"].as_u64().unwrap_or(0) >= 6, "every node scraped: {scrapes}");
    assert_eq!(scrapes["failures"].as_u64(), Some(0), "no scrape failed: {scrapes}");
    assert!(scrapes["mean_bytes"].as_f64().unwrap_or(0.0) > 1_000.0, "real pages came back: {scrapes}");

    let refused = bench(&["--scrape-every-ms", "10"]);
    assert!(!refused.status.success(), "a 10 ms period is refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("at least 100"), "and says why");
}
