//! Scenarios of the query endpoints (orders list, refunds list, statements,
//! wallet history), run against any deployment like `scenarios.rs`.
#![allow(dead_code)]

use super::api::{merchant_key, other_merchant_key, Api, Reply};
use super::receiver::Receiver;
use super::scenarios::{self, World};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

async fn get(api: &Api, w: &World, path: &str) -> Reply {
    api.signed(merchant_key(), &w.merchant, Method::GET, path, None).await
}

/// Every page of `path` (which has no `?` of its own unless `joined` says
/// so), `limit` per page: the ids in the order listed.
async fn walk(api: &Api, w: &World, path: &str, limit: u32) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    let sep = if path.contains('?') { '&' } else { '?' };
    for _ in 0..1_000 {
        let page_path = match &cursor {
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let reply = get(api, w, &page_path).await;
        assert_eq!(reply.status, StatusCode::OK, "{page_path}: {}", reply.text);
        let data = reply.body["data"].as_array().unwrap();
        assert!(data.len() <= limit as usize);
        all.extend(data.iter().cloned());
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return all,
        }
    }
    panic!("{path} did not end");
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter().map(|v| v["id"].as_str().unwrap().to_string()).collect()
}

/// Orders listed newest first across pages while more are created: every
/// order that existed when the walk began is listed exactly once, nothing
/// twice; status and time filters; refunds oldest first; another merchant
/// sees nothing of it.
/// Returns the merchant's world, for checks of its indexes afterwards.
pub async fn order_queries(api: &Api, receiver: &Receiver) -> World {
    let w = scenarios::world(api, receiver, "lister").await;
    let mut before = Vec::new();
    for n in 0..14 {
        before.push(scenarios::new_order(api, &w, &format!("L-{n}"), 100 + n).await);
    }
    // The walk and further creations run at once.
    let creator = {
        let (api, w) = (api.clone(), w.clone_ids());
        tokio::spawn(async move {
            let mut made = Vec::new();
            for n in 14..24 {
                made.push(scenarios::new_order(&api, &w, &format!("L-{n}"), 100 + n).await);
            }
            made
        })
    };
    let listed = walk(api, &w, "/v1/orders", 3).await;
    let during = creator.await.unwrap();
    let listed_ids = ids(&listed);
    let unique: BTreeSet<&String> = listed_ids.iter().collect();
    assert_eq!(unique.len(), listed_ids.len(), "an order listed twice: {listed_ids:?}");
    for id in &before {
        assert!(unique.contains(id), "{id} existed before the walk and was not listed");
    }
    let known: BTreeSet<&String> = before.iter().chain(during.iter()).collect();
    assert!(unique.iter().all(|id| known.contains(id)), "only this merchant's orders");
    let times: Vec<u64> = listed.iter().map(|o| o["created_at"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|t| t[0] >= t[1]), "newest first: {times:?}");
    // Once creation is over, one walk lists all 24, exactly once each.
    let all = ids(&walk(api, &w, "/v1/orders", 5).await);
    assert_eq!(all.iter().collect::<BTreeSet<_>>(), known);
    assert_eq!(all.len(), 24);
    let first = get(api, &w, "/v1/orders").await;
    assert_eq!(first.body["data"].as_array().unwrap().len(), 20, "the default limit is 20");

    // Statuses: pay three, refund one in part and one in full, close one.
    let (paid, partly, full, closed) = (&before[0], &before[1], &before[2], &before[3]);
    for order in [paid, partly, full] {
        let reply = scenarios::pay(api, &w, order, "balance").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    let part = scenarios::refund(api, &w, partly, "LR-1", 1).await;
    assert_eq!(part.status, StatusCode::CREATED, "{}", part.text);
    let part2 = scenarios::refund(api, &w, partly, "LR-2", 2).await;
    assert_eq!(part2.status, StatusCode::CREATED, "{}", part2.text);
    let whole = scenarios::refund(api, &w, full, "LR-3", 102).await;
    assert_eq!(whole.status, StatusCode::CREATED, "{}", whole.text);
    let close =
        api.signed(merchant_key(), &w.merchant, Method::POST, &format!("/v1/orders/{closed}/close"), None).await;
    assert_eq!(close.status, StatusCode::OK, "{}", close.text);
    let with_status = |status: &'static str| {
        let (api, w) = (api.clone(), w.clone_ids());
        async move { ids(&walk(&api, &w, &format!("/v1/orders?status={status}"), 100).await) }
    };
    assert_eq!(with_status("PAID").await, vec![paid.clone()]);
    assert_eq!(with_status("PARTIALLY_REFUNDED").await, vec![partly.clone()]);
    assert_eq!(with_status("REFUNDED").await, vec![full.clone()]);
    assert_eq!(with_status("CLOSED").await, vec![closed.clone()]);
    let created = with_status("CREATED").await;
    assert_eq!(created.len(), 20);
    assert!(![paid, partly, full, closed].iter().any(|id| created.contains(id)));
    for order in &listed {
        let status = get(api, &w, &format!("/v1/orders/{}", order["id"].as_str().unwrap())).await;
        assert_eq!(status.status, StatusCode::OK);
    }

    // Time filters (Unix seconds, inclusive).
    let times: Vec<u64> =
        walk(api, &w, "/v1/orders", 100).await.iter().map(|o| o["created_at"].as_u64().unwrap()).collect();
    let (oldest, latest) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    let none = get(api, &w, &format!("/v1/orders?created_from={}", latest + 1)).await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!((none.body["data"].as_array().unwrap().len(), &none.body["next_cursor"]), (0, &Value::Null));
    let range = walk(api, &w, &format!("/v1/orders?created_from={oldest}&created_to={latest}"), 100).await;
    assert_eq!(range.len(), 24);
    let upto = walk(api, &w, &format!("/v1/orders?created_to={oldest}"), 100).await;
    assert!(!upto.is_empty() && upto.iter().all(|o| o["created_at"].as_u64().unwrap() == oldest));

    // Refunds, oldest first; another merchant's order is not found.
    let refunds = walk(api, &w, &format!("/v1/orders/{partly}/refunds"), 1).await;
    assert_eq!(ids(&refunds), ids(&[part.body.clone(), part2.body.clone()]));
    assert_eq!(walk(api, &w, &format!("/v1/orders/{paid}/refunds"), 10).await.len(), 0);
    let other = api.onboard(other_merchant_key(), &receiver.url).await;
    let other_id = other["id"].as_str().unwrap();
    let theirs =
        api.signed(other_merchant_key(), other_id, Method::GET, &format!("/v1/orders/{partly}/refunds"), None).await;
    assert_eq!((theirs.status, theirs.code()), (StatusCode::NOT_FOUND, "not_found"));
    let their_list = api.signed(other_merchant_key(), other_id, Method::GET, "/v1/orders", None).await;
    assert_eq!(their_list.status, StatusCode::OK);
    assert_eq!(their_list.body["data"].as_array().unwrap().len(), 0, "a merchant sees only its own orders");
    // The notifications of an order, from its index: one payment, two refunds.
    let notes = scenarios::notifications(api, &w, partly).await;
    let events: Vec<&str> = notes.iter().map(|n| n["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["payment.succeeded", "refund.succeeded", "refund.succeeded"]);
    w
}

/// Every bad parameter of every query endpoint: 400 naming it.
pub async fn bad_query_parameters(api: &Api, receiver: &Receiver) {
    let w = scenarios::world(api, receiver, "badquery").await;
    let order = scenarios::new_order(api, &w, "B-1", 10).await;
    let cases: &[(&str, &str)] = &[
        ("/v1/orders?limit=0", "limit"),
        ("/v1/orders?limit=101", "limit"),
        ("/v1/orders?limit=abc", "limit"),
        ("/v1/orders?limit=-1", "limit"),
        ("/v1/orders?status=paid", "status"),
        ("/v1/orders?status=", "status"),
        ("/v1/orders?created_from=-1", "created_from"),
        ("/v1/orders?created_from=1.5", "created_from"),
        ("/v1/orders?created_to=99999999999999999999", "created_to"),
        ("/v1/orders?created_from=10&created_to=9", "created_to"),
        ("/v1/orders?cursor=zz", "cursor"),
        ("/v1/orders?cursor=", "cursor"),
        ("/v1/orders?stauts=PAID", "query"),
        ("/v1/orders?limit=1&limit=2", "limit"),
        ("/v1/orders?%ZZ", "query"),
        ("/v1/statements/2026-02-30", "date"),
        ("/v1/statements/20261201", "date"),
        ("/v1/statements/2026-12-01?x=1", "query"),
    ];
    let order_cases = [
        (format!("/v1/orders/{order}/refunds?limit=500"), "limit"),
        (format!("/v1/orders/{order}/refunds?cursor=%00"), "cursor"),
        (format!("/v1/orders/{order}/refunds?limit=1&limit=1"), "limit"),
        (format!("/v1/orders/{order}/refunds?status=PAID"), "query"),
        (format!("/v1/notifications?order_id={order}&order_id={order}"), "order_id"),
        (format!("/v1/notifications?order_id={order}&limit=5"), "query"),
        ("/v1/notifications?order_id=".to_string(), "order_id"),
    ];
    for (path, field) in cases.iter().copied().chain(order_cases.iter().map(|(path, field)| (path.as_str(), *field))) {
        let reply = get(api, &w, path).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "invalid_field"), "{path}: {}", reply.text);
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("invalid {field}:")), "{path}: {message}");
    }
    // No order_id at all: 400 missing_field naming it.
    let missing = get(api, &w, "/v1/notifications").await;
    assert_eq!((missing.status, missing.code()), (StatusCode::BAD_REQUEST, "missing_field"), "{}", missing.text);
    assert!(missing.body["error"]["message"].as_str().unwrap().contains("order_id"), "{}", missing.text);
    // The wallet history (user token): each bad parameter named too.
    let user_cases = [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("cursor=0123", "cursor"),
        ("cursor=zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "cursor"),
        ("limit=2&limit=3", "limit"),
        ("since=1", "query"),
    ];
    for (query, field) in user_cases {
        let user_path = format!("/v1/users/{}/transactions?{query}", w.user);
        let reply = api.get(&user_path, Some(&w.token)).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "invalid_field"), "{query}: {}", reply.text);
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("invalid {field}:")), "{query}: {message}");
    }
    // Unsigned, another user's history, no token: refused, not listed.
    let unsigned = api.get("/v1/orders", None).await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
    let (_, _, other_token) = api.register("badquery2", scenarios::CARD).await;
    let theirs = api.get(&format!("/v1/users/{}/transactions", w.user), Some(&other_token)).await;
    assert_eq!((theirs.status, theirs.code()), (StatusCode::FORBIDDEN, "forbidden"));
    // Nothing changed: still one order.
    let list = get(api, &w, "/v1/orders").await;
    assert_eq!(ids(list.body["data"].as_array().unwrap()), vec![order]);
}

/// Parses a statement: its lines and its totals rows, by currency.
fn parse_statement(csv: &str) -> (Vec<Vec<String>>, BTreeMap<String, Vec<i64>>) {
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("time,order_id,out_trade_no,type,method,amount_minor,currency,refund_id,out_refund_no")
    );
    let mut rows = Vec::new();
    let mut totals = BTreeMap::new();
    let mut in_totals = false;
    for line in lines {
        let fields: Vec<String> = line.split(',').map(str::to_string).collect();
        if line.starts_with("total,currency,") {
            in_totals = true;
        } else if in_totals {
            assert_eq!(fields[0], "total");
            totals.insert(fields[1].clone(), fields[2..].iter().map(|f| f.parse().unwrap()).collect());
        } else {
            rows.push(fields);
        }
    }
    assert!(in_totals, "a statement ends with its totals");
    (rows, totals)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn today_utc() -> String {
    paytx_gateway::index::day_of_ms(now_ms())
}

/// A line is on the statement of the UTC day its transaction *committed*,
/// whatever the gateway's clock said when it built it: `commit_at` sets the
/// commit time the cluster gives the next transactions (a test double's
/// knob; a real cluster's is its coordinator's log time).
pub async fn statement_days_are_commit_days(api: &Api, receiver: &Receiver, commit_at: &dyn Fn(u64)) {
    use paytx_gateway::index::{day_of_ms, day_range_ms, parse_day, rfc3339_ms};
    let w = scenarios::world(api, receiver, "midnight").await;
    let today = today_utc();
    let days = parse_day(&today).unwrap();
    // Built today, committed in the first millisecond after the next midnight.
    let (tomorrow_ms, tomorrow_last_ms) = day_range_ms(days + 1).unwrap();
    let order = scenarios::new_order(api, &w, "M-1", 300).await;
    commit_at(tomorrow_ms);
    let reply = scenarios::pay(api, &w, &order, "alipay").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    // Refunds committed in the last millisecond of that day, and in the
    // first of the one after.
    commit_at(tomorrow_last_ms);
    let reply = scenarios::refund(api, &w, &order, "MR-1", 100).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    commit_at(tomorrow_last_ms + 1);
    let reply = scenarios::refund(api, &w, &order, "MR-2", 50).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);

    let w = &w;
    let statement = |day: String| async move {
        let reply = get(api, w, &format!("/v1/statements/{day}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        parse_statement(&reply.text)
    };
    let (rows, totals) = statement(today.clone()).await;
    assert!(rows.is_empty(), "built today, committed tomorrow: {rows:?}");
    assert_eq!(totals["CNY"], vec![0, 0, 0, 0, 0]);
    let (rows, totals) = statement(day_of_ms(tomorrow_ms)).await;
    let got: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r[0].as_str(), r[3].as_str(), r[5].as_str())).collect();
    let (first, last) = (rfc3339_ms(tomorrow_ms), rfc3339_ms(tomorrow_last_ms));
    assert_eq!(got, vec![(first.as_str(), "payment", "300"), (last.as_str(), "refund", "100")]);
    assert_eq!(totals["CNY"], vec![1, 300, 1, 100, 200]);
    let (rows, totals) = statement(day_of_ms(tomorrow_last_ms + 1)).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0][0].clone(), rows[0][8].as_str()), (rfc3339_ms(tomorrow_last_ms + 1), "MR-2"));
    assert_eq!(totals["CNY"], vec![0, 0, 1, 50, -50]);
    // Before 1970 nothing committed, and no day range exists.
    let reply = get(api, w, "/v1/statements/1969-12-31").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
}

/// The day's statement against the client's own records, its signature
/// with the platform key; an empty day; the wallet history against the
/// balance, page by page.
pub async fn statements_and_history(api: &Api, receiver: &Receiver) {
    let w = scenarios::world(api, receiver, "reconciler").await;
    let platform_pem = receiver.state.platform_pem.lock().unwrap().clone().unwrap();
    let day_before = today_utc();
    let started_ms = now_ms();
    let (mut paid_minor, mut refunded_minor, mut payments, mut refunds) = (0i64, 0i64, 0i64, 0i64);
    for (n, method) in ["balance", "alipay", "bank_card", "balance", "wechat"].iter().enumerate() {
        let amount = 200 + n as i64 * 10;
        let order = scenarios::new_order(api, &w, &format!("S-{n}"), amount).await;
        let reply = scenarios::pay(api, &w, &order, method).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        paid_minor += amount;
        payments += 1;
        if n % 2 == 0 {
            let reply = scenarios::refund(api, &w, &order, &format!("SR-{n}"), 50).await;
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
            refunded_minor += 50;
            refunds += 1;
        }
    }
    // An unpaid order is no statement line.
    scenarios::new_order(api, &w, "S-unpaid", 999).await;
    let day = today_utc();
    if day != day_before {
        return; // the test ran across midnight UTC: the lines are split over two days
    }
    let reply = get(api, &w, &format!("/v1/statements/{day}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(reply.headers["content-type"].to_str().unwrap().starts_with("text/csv"));
    let signature = reply.headers["x-paytx-signature"].to_str().unwrap();
    let key = paytx_gateway::signing::parse_public_key(&platform_pem).unwrap();
    assert!(paytx_gateway::signing::verify(&key, reply.text.as_bytes(), signature), "the platform signed the body");
    let mut tampered = reply.text.clone().into_bytes();
    tampered[10] ^= 1;
    assert!(!paytx_gateway::signing::verify(&key, &tampered, signature));
    let (rows, totals) = parse_statement(&reply.text);
    assert_eq!(rows.len() as i64, payments + refunds);
    let sum = |kind: &str| rows.iter().filter(|r| r[3] == kind).map(|r| r[5].parse::<i64>().unwrap()).sum::<i64>();
    assert_eq!((sum("payment"), sum("refund")), (paid_minor, refunded_minor));
    assert_eq!(totals["CNY"], vec![payments, paid_minor, refunds, refunded_minor, paid_minor - refunded_minor]);
    let times: Vec<&String> = rows.iter().map(|r| &r[0]).collect();
    assert!(times.windows(2).all(|t| t[0] <= t[1]), "in commit order");
    // The time of a line is its commit's (the cluster's log time), taken
    // while the payments ran.
    let (from, to) = (paytx_gateway::index::rfc3339_ms(started_ms), paytx_gateway::index::rfc3339_ms(now_ms()));
    assert!(times.iter().all(|t| from <= **t && **t <= to), "{times:?} within {from}..{to}");
    assert!(rows.iter().all(|r| r[0].starts_with(&day)));
    // A day without activity: the header and a zero totals row.
    let empty = get(api, &w, "/v1/statements/2001-01-01").await;
    assert_eq!(empty.status, StatusCode::OK);
    let (rows, totals) = parse_statement(&empty.text);
    assert!(rows.is_empty());
    assert_eq!(totals["CNY"], vec![0, 0, 0, 0, 0]);
    // Another merchant's statement of the same day is its own (empty).
    let other = api.onboard(other_merchant_key(), &receiver.url).await;
    let other_id = other["id"].as_str().unwrap();
    let theirs = api.signed(other_merchant_key(), other_id, Method::GET, &format!("/v1/statements/{day}"), None).await;
    assert_eq!(parse_statement(&theirs.text).0.len(), 0);

    // The wallet history: every entry, newest first, page by page, and it
    // adds up to the balance.
    let mut entries: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/users/{}/transactions?limit=2&cursor={c}", w.user),
            None => format!("/v1/users/{}/transactions?limit=2", w.user),
        };
        let reply = api.get(&path, Some(&w.token)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        entries.extend(reply.body["data"].as_array().unwrap().iter().cloned());
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let kinds: Vec<&str> = entries.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    // open, top-up, two balance payments, one refund of a balance payment (n = 0).
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"open"));
    let times: Vec<u64> = entries.iter().map(|e| e["at_ms"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|t| t[0] >= t[1]), "newest first");
    let total: i64 = entries.iter().map(|e| e["delta_minor"].as_i64().unwrap()).sum();
    assert_eq!(total, api.balance(&w.user_account, &w.token).await);
}
