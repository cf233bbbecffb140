//! Test scenarios of the open-platform API, run against any deployment
//! (the gateway's handler tests and the root crate's end-to-end tests).
#![allow(dead_code)]

use super::api::{merchant_key, other_merchant_key, public_pem, Api, Reply};
use super::receiver::Receiver;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub const CARD: &str = "4111111111111111";

pub struct World {
    pub merchant: String,
    pub merchant_account: String,
    pub user: String,
    pub user_account: String,
    pub token: String,
}

/// Onboards a merchant notifying `receiver`, registers a user and tops the
/// wallet up with 10 000.
pub async fn world(api: &Api, receiver: &Receiver, username: &str) -> World {
    let merchant = api.onboard(merchant_key(), &receiver.url).await;
    *receiver.state.platform_pem.lock().unwrap() =
        Some(merchant["platform_public_key_pem"].as_str().unwrap().to_string());
    let (user, user_account, token) = api.register(username, CARD).await;
    let topup = api
        .post(
            &format!("/v1/users/{user}/topups"),
            Some(&token),
            &json!({"method": "bank_card", "amount_minor": 10_000}),
        )
        .await;
    assert_eq!(topup.status, StatusCode::CREATED, "{}", topup.text);
    assert_eq!(topup.body["status"], "SUCCEEDED");
    assert_eq!(api.balance(&user_account, &token).await, 10_000);
    World {
        merchant: merchant["id"].as_str().unwrap().to_string(),
        merchant_account: merchant["account_id"].as_str().unwrap().to_string(),
        user,
        user_account,
        token,
    }
}

impl World {
    /// The same merchant, for another user to be filled in.
    pub fn clone_ids(&self) -> World {
        World {
            merchant: self.merchant.clone(),
            merchant_account: self.merchant_account.clone(),
            user: self.user.clone(),
            user_account: self.user_account.clone(),
            token: self.token.clone(),
        }
    }
}

pub async fn merchant_balance(api: &Api, w: &World) -> i64 {
    let reply = api
        .signed(merchant_key(), &w.merchant, Method::GET, &format!("/v1/accounts/{}", w.merchant_account), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["balance_minor"].as_i64().unwrap()
}

pub async fn order(api: &Api, w: &World, id: &str) -> Value {
    let reply = api.signed(merchant_key(), &w.merchant, Method::GET, &format!("/v1/orders/{id}"), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body
}

pub async fn new_order(api: &Api, w: &World, out_trade_no: &str, amount: i64) -> String {
    let reply = api.create_order(merchant_key(), &w.merchant, out_trade_no, amount).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["status"], "CREATED");
    reply.body["id"].as_str().unwrap().to_string()
}

pub async fn pay(api: &Api, w: &World, order: &str, method: &str) -> Reply {
    api.post(&format!("/v1/orders/{order}/pay"), Some(&w.token), &json!({"method": method})).await
}

pub async fn refund(api: &Api, w: &World, order: &str, out_refund_no: &str, amount: i64) -> Reply {
    let body = json!({"out_refund_no": out_refund_no, "amount_minor": amount, "reason": "returned"});
    api.signed(merchant_key(), &w.merchant, Method::POST, &format!("/v1/orders/{order}/refunds"), Some(&body)).await
}

pub async fn notifications(api: &Api, w: &World, order: &str) -> Vec<Value> {
    let reply = api
        .signed(merchant_key(), &w.merchant, Method::GET, &format!("/v1/notifications?order_id={order}"), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["notifications"].as_array().unwrap().clone()
}

/// Waits until every notification of `order` is `DELIVERED`; returns them.
pub async fn wait_delivered(api: &Api, w: &World, order: &str, expected: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = notifications(api, w, order).await;
        if list.len() == expected && list.iter().all(|n| n["status"] == "DELIVERED") {
            return list;
        }
        assert!(Instant::now() < deadline, "notifications of {order} not delivered in time: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Create, pay by every method, idempotency, partial refunds up to the
/// limit, money conservation, notifications with retries.
pub async fn money_flows(api: &Api, receiver: &Receiver) {
    let w = world(api, receiver, "alice").await;

    // Create: the out_trade_no is the idempotency key.
    let first = new_order(api, &w, "T-1", 2_500).await;
    let replay = api.create_order(merchant_key(), &w.merchant, "T-1", 2_500).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.text);
    assert_eq!(replay.body["id"], first.as_str(), "the same request answers the same order");
    let conflict = api.create_order(merchant_key(), &w.merchant, "T-1", 2_600).await;
    assert_eq!((conflict.status, conflict.code()), (StatusCode::CONFLICT, "idempotency_conflict"));

    // Pay from the wallet.
    let paid = pay(api, &w, &first, "balance").await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.text);
    assert_eq!(paid.body["status"], "PAID");
    assert_eq!(paid.body["payment"]["method"], "balance");
    assert_eq!(api.balance(&w.user_account, &w.token).await, 7_500);
    assert_eq!(merchant_balance(api, &w).await, 2_500);
    let again = pay(api, &w, &first, "balance").await;
    assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "order_not_payable"));

    // Pay through each channel: the wallet is untouched.
    let mut channel_orders = Vec::new();
    for (n, method) in ["bank_card", "alipay", "wechat"].iter().enumerate() {
        let id = new_order(api, &w, &format!("T-ch-{n}"), 1_000).await;
        let paid = pay(api, &w, &id, method).await;
        assert_eq!(paid.status, StatusCode::OK, "{method}: {}", paid.text);
        assert_eq!(paid.body["payment"]["method"], *method);
        assert!(paid.body["payment"]["channel_id"].as_u64().is_some());
        channel_orders.push(id);
    }
    assert_eq!(api.balance(&w.user_account, &w.token).await, 7_500);
    assert_eq!(merchant_balance(api, &w).await, 5_500);

    // Partial refunds up to the limit, back to the wallet.
    let r1 = refund(api, &w, &first, "R-1", 1_000).await;
    assert_eq!(r1.status, StatusCode::CREATED, "{}", r1.text);
    assert_eq!(r1.body["status"], "SUCCEEDED");
    let r1_again = refund(api, &w, &first, "R-1", 1_000).await;
    assert_eq!(r1_again.status, StatusCode::OK);
    assert_eq!(r1_again.body["id"], r1.body["id"], "replayed, not refunded twice");
    let r1_other = refund(api, &w, &first, "R-1", 900).await;
    assert_eq!((r1_other.status, r1_other.code()), (StatusCode::CONFLICT, "idempotency_conflict"));
    assert_eq!(order(api, &w, &first).await["status"], "PARTIALLY_REFUNDED");
    let too_much = refund(api, &w, &first, "R-2", 1_501).await;
    assert_eq!((too_much.status, too_much.code()), (StatusCode::CONFLICT, "refund_exceeds_paid"));
    let r2 = refund(api, &w, &first, "R-3", 1_500).await;
    assert_eq!(r2.status, StatusCode::CREATED, "{}", r2.text);
    let done = order(api, &w, &first).await;
    assert_eq!((done["status"].as_str(), done["refunded_minor"].as_i64()), (Some("REFUNDED"), Some(2_500)));
    let beyond = refund(api, &w, &first, "R-4", 1).await;
    assert_eq!(beyond.status, StatusCode::CONFLICT, "{}", beyond.text);
    assert_eq!(api.balance(&w.user_account, &w.token).await, 10_000, "refunds went back to the wallet");
    let got = api
        .signed(
            merchant_key(),
            &w.merchant,
            Method::GET,
            &format!("/v1/refunds/{}", r1.body["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["amount_minor"], 1_000);

    // A channel refund goes back through the channel, not to the wallet.
    let rc = refund(api, &w, &channel_orders[1], "R-ch", 400).await;
    assert_eq!(rc.status, StatusCode::CREATED, "{}", rc.text);
    assert_eq!(api.balance(&w.user_account, &w.token).await, 10_000);
    assert_eq!(merchant_balance(api, &w).await, 5_500 - 2_500 - 400);

    // Close: only a CREATED order.
    let open = new_order(api, &w, "T-close", 700).await;
    let closed = api.signed(merchant_key(), &w.merchant, Method::POST, &format!("/v1/orders/{open}/close"), None).await;
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.text);
    assert_eq!(closed.body["status"], "CLOSED");
    let pay_closed = pay(api, &w, &open, "balance").await;
    assert_eq!((pay_closed.status, pay_closed.code()), (StatusCode::CONFLICT, "order_not_payable"));
    let close_paid =
        api.signed(merchant_key(), &w.merchant, Method::POST, &format!("/v1/orders/{first}/close"), None).await;
    assert_eq!((close_paid.status, close_paid.code()), (StatusCode::CONFLICT, "order_not_closable"));

    // Notifications: the first order has a payment and two refunds.
    let list = wait_delivered(api, &w, &first, 3, Duration::from_secs(30)).await;
    for n in &list {
        assert!(n["attempts"].as_array().unwrap().last().unwrap()["ok"].as_bool().unwrap());
    }
    let delivered = receiver.delivered_ids();
    for n in &list {
        assert!(delivered.contains(&n["notify_id"].as_str().unwrap().to_string()));
    }
    assert!(receiver.deliveries().iter().all(|d| d.signature_ok), "every notification is signed by the platform");
    let payment = receiver
        .deliveries()
        .into_iter()
        .find(|d| d.body["event"] == "payment.succeeded" && d.body["data"]["order_id"] == first.as_str())
        .expect("the payment of the first order was notified");
    assert_eq!(payment.body["data"]["status"], "PAID");
    assert_eq!(payment.body["merchant_id"], w.merchant.as_str());
}

/// A receiver failing twice: the first notification is retried and then
/// delivered; every attempt is recorded; duplicates share the notify_id.
pub async fn retried_delivery(api: &Api, receiver: &Receiver) {
    let w = world(api, receiver, "bob").await;
    let id = new_order(api, &w, "N-1", 300).await;
    assert_eq!(pay(api, &w, &id, "balance").await.status, StatusCode::OK);
    let list = wait_delivered(api, &w, &id, 1, Duration::from_secs(30)).await;
    let attempts = list[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert_eq!(attempts[0]["http_status"], 500);
    assert!(!attempts[1]["ok"].as_bool().unwrap());
    assert!(attempts[2]["ok"].as_bool().unwrap());
    let notify_id = list[0]["notify_id"].as_str().unwrap();
    let same: Vec<_> = receiver.deliveries().into_iter().filter(|d| d.notify_id == notify_id).collect();
    assert_eq!(same.len(), 3, "three attempts reached the receiver with one notify_id");
    assert_eq!(same.iter().filter(|d| d.answered_success).count(), 1);
    assert_eq!(receiver.delivered_ids(), vec![notify_id.to_string()]);
}

async fn signed_raw(api: &Api, w: &World, raw: &str) -> Reply {
    let headers =
        paytx_gateway::signing::signed_headers(merchant_key(), &w.merchant, "POST", "/v1/orders", raw.as_bytes());
    api.send(Method::POST, "/v1/orders", None, Some(raw.as_bytes().to_vec()), &headers).await
}

/// Every bad input gets its code and changes nothing.
pub async fn bad_inputs(api: &Api, receiver: &Receiver) {
    let w = world(api, receiver, "carol").await;
    let key = merchant_key();
    let id = new_order(api, &w, "B-1", 1_000).await;
    let before_user = api.balance(&w.user_account, &w.token).await;
    let before_merchant = merchant_balance(api, &w).await;

    // Signatures, timestamps, nonces (401).
    let body = json!({"out_trade_no": "B-2", "amount_minor": 5, "currency": "CNY"});
    let bytes = body.to_string().into_bytes();
    let mut headers = paytx_gateway::signing::signed_headers(key, &w.merchant, "POST", "/v1/orders", &bytes);
    let good = headers.clone();
    headers[3].1 =
        paytx_gateway::signing::signed_headers(other_merchant_key(), &w.merchant, "POST", "/v1/orders", &bytes)[3]
            .1
            .clone();
    let reply = api.send(Method::POST, "/v1/orders", None, Some(bytes.clone()), &headers).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::UNAUTHORIZED, "bad_signature"));
    let tampered = json!({"out_trade_no": "B-2", "amount_minor": 6, "currency": "CNY"}).to_string().into_bytes();
    let reply = api.send(Method::POST, "/v1/orders", None, Some(tampered), &good).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::UNAUTHORIZED, "bad_signature"));
    let old = (paytx_gateway::model::now_secs() - 301).to_string();
    let message = paytx_gateway::signing::canonical_string("POST", "/v1/orders", &old, "old-nonce", &bytes);
    let stale = [
        (paytx_gateway::signing::HEADER_MERCHANT, w.merchant.clone()),
        (paytx_gateway::signing::HEADER_TIMESTAMP, old),
        (paytx_gateway::signing::HEADER_NONCE, "old-nonce".to_string()),
        (paytx_gateway::signing::HEADER_SIGNATURE, paytx_gateway::signing::sign(key, &message)),
    ];
    let reply = api.send(Method::POST, "/v1/orders", None, Some(bytes.clone()), &stale).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::UNAUTHORIZED, "timestamp_expired"));
    let reply = api.send(Method::POST, "/v1/orders", None, Some(bytes.clone()), &good).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let replayed = api.send(Method::POST, "/v1/orders", None, Some(bytes.clone()), &good).await;
    assert_eq!((replayed.status, replayed.code()), (StatusCode::UNAUTHORIZED, "nonce_replayed"));
    let unsigned = api.post("/v1/orders", None, &body).await;
    assert_eq!((unsigned.status, unsigned.code()), (StatusCode::UNAUTHORIZED, "unauthorized"));

    // Malformed bodies and bad fields (400).
    let signed_raw = |raw: &'static str| signed_raw(api, &w, raw);
    assert_eq!(signed_raw("{not json").await.code(), "malformed_json");
    assert_eq!(signed_raw(r#"{"amount_minor": 5, "currency": "CNY"}"#).await.code(), "missing_field");
    for amount in ["0", "-5", "1.5", "9223372036854775808", "\"5\""] {
        let raw: &'static str =
            Box::leak(format!(r#"{{"out_trade_no":"B-3","amount_minor":{amount},"currency":"CNY"}}"#).into_boxed_str());
        let reply = signed_raw(raw).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{amount}: {}", reply.text);
        assert!(["invalid_amount", "malformed_json"].contains(&reply.code()), "{amount}: {}", reply.text);
    }
    let reply = signed_raw(r#"{"out_trade_no":"B-3","amount_minor":5,"currency":"XYZ"}"#).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "unsupported_currency"));
    for bad_card in ["4111111111111112", "1234", "41111111111111111111", "4111 1111 1111 1111"] {
        let reply = api
            .post(
                "/v1/users",
                None,
                &json!({"username": "dave", "password": "s3cretpass", "real_name": "D", "card_number": bad_card}),
            )
            .await;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "invalid_card"), "{bad_card}");
        assert!(!reply.text.contains(bad_card));
    }
    let reply = api
        .post(
            "/v1/users",
            None,
            &json!({"username": "carol", "password": "s3cretpass", "real_name": "C", "card_number": CARD}),
        )
        .await;
    assert_eq!((reply.status, reply.code()), (StatusCode::CONFLICT, "username_taken"));
    let reply = pay(api, &w, &id, "cash").await;
    assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "invalid_method"));
    let big = vec![b' '; 64 * 1024 + 1];
    let headers = paytx_gateway::signing::signed_headers(key, &w.merchant, "POST", "/v1/orders", &big);
    let reply = api.send(Method::POST, "/v1/orders", None, Some(big), &headers).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));

    // Unknown and foreign orders (404); refund beyond what was paid (409).
    let reply = pay(api, &w, "ord_1234567890123", "balance").await;
    assert_eq!((reply.status, reply.code()), (StatusCode::NOT_FOUND, "not_found"));
    let reply = refund(api, &w, &id, "B-R", 1).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::CONFLICT, "order_not_refundable"));
    let rich = json!({"out_trade_no": "B-9", "amount_minor": 1_000_000, "currency": "CNY"});
    let reply = api.signed(key, &w.merchant, Method::POST, "/v1/orders", Some(&rich)).await;
    let rich_id = reply.body["id"].as_str().unwrap().to_string();
    let reply = pay(api, &w, &rich_id, "balance").await;
    assert_eq!((reply.status, reply.code()), (StatusCode::PAYMENT_REQUIRED, "insufficient_funds"));
    assert_eq!(order(api, &w, &rich_id).await["status"], "CREATED");

    let huge = api
        .post(
            &format!("/v1/users/{}/topups", w.user),
            Some(&w.token),
            &json!({"method": "alipay", "amount_minor": i64::MAX}),
        )
        .await;
    // The wallet would overflow (400) or the channel cannot fund it (402):
    // which shard refuses first depends on the deployment; nothing changes.
    assert!(
        [(StatusCode::BAD_REQUEST, "invalid_amount"), (StatusCode::PAYMENT_REQUIRED, "channel_declined")]
            .contains(&(huge.status, huge.code())),
        "{}",
        huge.text
    );

    // Authorization: another merchant cannot see or act on this order.
    let other = api.onboard(other_merchant_key(), &receiver.url).await;
    let other_id = other["id"].as_str().unwrap();
    let reply = api.signed(other_merchant_key(), other_id, Method::GET, &format!("/v1/orders/{id}"), None).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::NOT_FOUND, "not_found"));
    let reply = api.signed(other_merchant_key(), other_id, Method::POST, &format!("/v1/orders/{id}/close"), None).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::NOT_FOUND, "not_found"));
    let reply = api
        .signed(other_merchant_key(), other_id, Method::GET, &format!("/v1/accounts/{}", w.merchant_account), None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let (_, eve_account, eve_token) = api.register("eve", "5555555555554444").await;
    let reply = api.get(&format!("/v1/accounts/{}", w.user_account), Some(&eve_token)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = api
        .post(
            &format!("/v1/users/{}/topups", w.user),
            Some(&eve_token),
            &json!({"method": "alipay", "amount_minor": 5}),
        )
        .await;
    assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let reply = api
        .post(
            "/v1/merchants",
            Some(&eve_token),
            &json!({"name": "x", "notify_url": "http://127.0.0.1:1/", "public_key_pem": public_pem(key)}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = api.get(&format!("/v1/accounts/{}", w.user_account), Some("bogus-token")).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::UNAUTHORIZED, "invalid_token"));
    assert_eq!(api.balance(&eve_account, &eve_token).await, 0);

    // Nothing changed.
    assert_eq!(api.balance(&w.user_account, &w.token).await, before_user);
    assert_eq!(merchant_balance(api, &w).await, before_merchant);
    assert_eq!(order(api, &w, &id).await["status"], "CREATED");
    assert!(notifications(api, &w, &id).await.is_empty());
    assert!(notifications(api, &w, &rich_id).await.is_empty());
}
