//! Scenarios of the gateway's open ends: `Idempotency-Key`, revocable
//! sessions, rate limits. Run against any deployment like `scenarios.rs`.
#![allow(dead_code)]

use super::api::{merchant_key, Api, Reply};
use super::receiver::Receiver;
use super::scenarios::{self, World};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub async fn post_with_key(api: &Api, path: &str, token: &str, key: &str, body: &Value) -> Reply {
    let bytes = body.to_string().into_bytes();
    api.send(Method::POST, path, Some(token), Some(bytes), &[("Idempotency-Key", key.to_string())]).await
}

/// A merchant POST signed afresh (new nonce) with an `Idempotency-Key`.
pub async fn signed_with_key(api: &Api, w: &World, path: &str, key: &str, body: &Value) -> Reply {
    let bytes = body.to_string().into_bytes();
    let mut headers =
        paytx_gateway::signing::signed_headers(merchant_key(), &w.merchant, "POST", path, &bytes).to_vec();
    headers.push(("Idempotency-Key", key.to_string()));
    api.send(Method::POST, path, None, Some(bytes), &headers).await
}

/// The same key and body answer the first response again (marked
/// replayed) and move money once; another body is a conflict; a bad key
/// is a 400 that changes nothing.
pub async fn idempotency_keys(api: &Api, receiver: &Receiver) {
    let w = scenarios::world(api, receiver, "idem").await;
    let path = format!("/v1/users/{}/topups", w.user);
    let body = json!({"method": "alipay", "amount_minor": 700});
    let first = post_with_key(api, &path, &w.token, "topup-1", &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let again = post_with_key(api, &path, &w.token, "topup-1", &body).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.body, first.body, "the first answer again");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert!(first.headers.get("idempotent-replayed").is_none());
    assert_eq!(api.balance(&w.user_account, &w.token).await, 10_700, "credited once");
    let other = post_with_key(api, &path, &w.token, "topup-1", &json!({"method": "alipay", "amount_minor": 701})).await;
    assert_eq!((other.status, other.code()), (StatusCode::CONFLICT, "idempotency_conflict"), "{}", other.text);
    for bad in ["", &"k".repeat(256), "two words"] {
        let reply = post_with_key(api, &path, &w.token, bad, &body).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "invalid_field"), "{bad:?}: {}", reply.text);
    }
    assert_eq!(api.balance(&w.user_account, &w.token).await, 10_700, "nothing changed");

    // Keys are per caller: another user's identical key is its own.
    let (u2, acct2, token2) = api.register("idem2", scenarios::CARD).await;
    let theirs = post_with_key(api, &format!("/v1/users/{u2}/topups"), &token2, "topup-1", &body).await;
    assert_eq!(theirs.status, StatusCode::CREATED, "{}", theirs.text);
    assert_ne!(theirs.body["id"], first.body["id"]);
    assert_eq!(api.balance(&acct2, &token2).await, 700);

    // Orders, payments and refunds: replayed, not repeated.
    let order_body = json!({"out_trade_no": "I-1", "amount_minor": 300, "currency": "CNY", "description": "tea"});
    let created = signed_with_key(api, &w, "/v1/orders", "order-1", &order_body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let replay = signed_with_key(api, &w, "/v1/orders", "order-1", &order_body).await;
    assert_eq!((replay.status, &replay.body), (StatusCode::CREATED, &created.body));
    let order = created.body["id"].as_str().unwrap().to_string();
    let pay_path = format!("/v1/orders/{order}/pay");
    let paid = post_with_key(api, &pay_path, &w.token, "pay-1", &json!({"method": "balance"})).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.text);
    assert_eq!(paid.body["status"], "PAID");
    let paid_again = post_with_key(api, &pay_path, &w.token, "pay-1", &json!({"method": "balance"})).await;
    assert_eq!((paid_again.status, &paid_again.body), (StatusCode::OK, &paid.body), "a replay, not order_not_payable");
    let refund_path = format!("/v1/orders/{order}/refunds");
    let refund_body = json!({"out_refund_no": "IR-1", "amount_minor": 100, "reason": "r"});
    let refunded = signed_with_key(api, &w, &refund_path, "refund-1", &refund_body).await;
    assert_eq!(refunded.status, StatusCode::CREATED, "{}", refunded.text);
    let refunded_again = signed_with_key(api, &w, &refund_path, "refund-1", &refund_body).await;
    assert_eq!((refunded_again.status, &refunded_again.body), (StatusCode::CREATED, &refunded.body));
    assert_eq!(api.balance(&w.user_account, &w.token).await, 10_700 - 300 + 100);

    // A definite refusal is the key's answer too (Stripe): a payment
    // refused for want of funds is refused again when retried with its key,
    // even once the wallet could pay, and nothing moves; a new key pays.
    let wallet = 10_700 - 300 + 100;
    let teapot = scenarios::new_order(api, &w, "I-2", wallet + 1_000).await;
    let pay_path = format!("/v1/orders/{teapot}/pay");
    let poor = post_with_key(api, &pay_path, &w.token, "pay-2", &json!({"method": "balance"})).await;
    assert_eq!((poor.status, poor.code()), (StatusCode::PAYMENT_REQUIRED, "insufficient_funds"), "{}", poor.text);
    assert!(poor.headers.get("idempotent-replayed").is_none());
    let topped =
        post_with_key(api, &path, &w.token, "topup-2", &json!({"method": "alipay", "amount_minor": 5_000})).await;
    assert_eq!(topped.status, StatusCode::CREATED, "{}", topped.text);
    let retried = post_with_key(api, &pay_path, &w.token, "pay-2", &json!({"method": "balance"})).await;
    assert_eq!((retried.status, &retried.body), (StatusCode::PAYMENT_REQUIRED, &poor.body), "{}", retried.text);
    assert_eq!(retried.headers["idempotent-replayed"], "true", "the first answer, not a second attempt");
    assert_eq!(scenarios::order(api, &w, &teapot).await["status"], "CREATED");
    assert_eq!(api.balance(&w.user_account, &w.token).await, wallet + 5_000, "the retry paid nothing");
    let other_body = post_with_key(api, &pay_path, &w.token, "pay-2", &json!({"method": "alipay"})).await;
    assert_eq!(other_body.code(), "idempotency_conflict", "{}", other_body.text);
    let paid = post_with_key(api, &pay_path, &w.token, "pay-3", &json!({"method": "balance"})).await;
    assert_eq!((paid.status, &paid.body["status"]), (StatusCode::OK, &json!("PAID")), "{}", paid.text);
    assert_eq!(api.balance(&w.user_account, &w.token).await, wallet + 5_000 - (wallet + 1_000));
    // A refund over what was paid: the same 409 again, replayed.
    let too_much = json!({"out_refund_no": "IR-2", "amount_minor": wallet + 1_001, "reason": "r"});
    let refund_path = format!("/v1/orders/{teapot}/refunds");
    let refused = signed_with_key(api, &w, &refund_path, "refund-2", &too_much).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::CONFLICT, "refund_exceeds_paid"), "{}", refused.text);
    let again = signed_with_key(api, &w, &refund_path, "refund-2", &too_much).await;
    assert_eq!((again.status, &again.body), (StatusCode::CONFLICT, &refused.body));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // A validation error is not remembered: the request never ran, and
    // the same key with a valid body runs.
    let invalid = post_with_key(api, &path, &w.token, "topup-3", &json!({"method": "alipay", "amount_minor": 0})).await;
    assert_eq!(invalid.code(), "invalid_amount", "{}", invalid.text);
    let valid = post_with_key(api, &path, &w.token, "topup-3", &json!({"method": "alipay", "amount_minor": 1})).await;
    assert_eq!(valid.status, StatusCode::CREATED, "{}", valid.text);
}

/// The POSTs `idempotency_keys` does not cover take the key too:
/// registration, login, merchant onboarding and closing an order answer
/// their first response again (marked replayed) and change nothing more;
/// another body under the key is a conflict.
pub async fn every_other_post_takes_a_key(api: &Api, receiver: &Receiver) {
    let keyed = |key: &str| vec![("Idempotency-Key", key.to_string())];
    let register =
        json!({"username": "keyed", "password": "s3cretpass", "real_name": "K", "card_number": scenarios::CARD});
    let send = |path: &'static str, bearer: Option<String>, body: Value, key: &'static str| {
        let api = api.clone();
        async move {
            api.send(Method::POST, path, bearer.as_deref(), Some(body.to_string().into_bytes()), &keyed(key)).await
        }
    };
    let first = send("/v1/users", None, register.clone(), "reg-1").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let again = send("/v1/users", None, register.clone(), "reg-1").await;
    assert_eq!((again.status, &again.body), (StatusCode::CREATED, &first.body), "not username_taken: {}", again.text);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // Another body for the same username (keys are scoped by it: another
    // user's key never collides, see `account_keys_are_scoped_by_username`).
    let mut other = register.clone();
    other["real_name"] = json!("Someone Else");
    let conflict = send("/v1/users", None, other, "reg-1").await;
    assert_eq!(conflict.code(), "idempotency_conflict", "{}", conflict.text);
    // A username that was taken is the key's answer too: a definite refusal.
    let taken = send("/v1/users", None, register.clone(), "reg-2").await;
    assert_eq!(taken.code(), "username_taken", "{}", taken.text);

    let credentials = json!({"username": "keyed", "password": "s3cretpass"});
    let login = send("/v1/sessions", None, credentials.clone(), "login-1").await;
    assert_eq!(login.status, StatusCode::CREATED, "{}", login.text);
    let login_again = send("/v1/sessions", None, credentials, "login-1").await;
    assert_eq!((login_again.status, &login_again.body), (StatusCode::CREATED, &login.body), "one session, not two");

    let onboarding = json!({"name": "Keyed Shop", "notify_url": receiver.url, "public_key_pem": super::api::public_pem(merchant_key())});
    let admin = Some(api.admin_key.clone());
    let merchant = send("/v1/merchants", admin.clone(), onboarding.clone(), "mch-1").await;
    assert_eq!(merchant.status, StatusCode::CREATED, "{}", merchant.text);
    let merchant_again = send("/v1/merchants", admin, onboarding, "mch-1").await;
    assert_eq!((merchant_again.status, &merchant_again.body), (StatusCode::CREATED, &merchant.body), "one merchant");

    let w = scenarios::world(api, receiver, "keyed_closer").await;
    let order = scenarios::new_order(api, &w, "K-1", 100).await;
    let close_path = format!("/v1/orders/{order}/close");
    let closed = signed_with_key(api, &w, &close_path, "close-1", &json!({})).await;
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.text);
    let closed_again = signed_with_key(api, &w, &close_path, "close-1", &json!({})).await;
    assert_eq!((closed_again.status, &closed_again.body), (StatusCode::OK, &closed.body), "not order_not_closable");
    assert_eq!(closed_again.headers["idempotent-replayed"], "true");

    // A password change retried with its key after its answer was lost:
    // its own first attempt revoked the session, and the retry gets that
    // attempt's answer, not invalid_token; another body does not.
    let token = login.body["token"].as_str().unwrap().to_string();
    let user = first.body["id"].as_str().unwrap();
    let path = format!("/v1/users/{user}/password");
    let change = json!({"current_password": "s3cretpass", "new_password": "n3wpassword"});
    let changed = post_with_key(api, &path, &token, "pwd-1", &change).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    let changed_again = post_with_key(api, &path, &token, "pwd-1", &change).await;
    assert_eq!((changed_again.status, &changed_again.body), (StatusCode::OK, &changed.body), "{}", changed_again.text);
    assert_eq!(changed_again.headers["idempotent-replayed"], "true");
    let other = json!({"current_password": "n3wpassword", "new_password": "an0therpass"});
    let refused = post_with_key(api, &path, &token, "pwd-1", &other).await;
    assert_eq!(refused.code(), "invalid_token", "a revoked session changes nothing: {}", refused.text);
    let without_key = api.post(&path, Some(&token), &change).await;
    assert_eq!(without_key.code(), "invalid_token");
}

/// Registration and login have no caller yet: their keys are scoped by the
/// route and the username the body names. Two people who pick the same key
/// both register and log in; one person's registration and login under one
/// key are two requests; the same key and body is still replayed and
/// another body for the same username and route is still a conflict; a
/// username that could forge another scope is refused before any key is
/// looked at.
pub async fn account_keys_are_scoped_by_username(api: &Api) {
    let key = || vec![("Idempotency-Key", "shared-key".to_string())];
    let post = |path: &'static str, body: Value| {
        let api = api.clone();
        async move { api.send(Method::POST, path, None, Some(body.to_string().into_bytes()), &key()).await }
    };
    let register = |username: &str| json!({"username": username, "password": "s3cretpass", "real_name": "Same Key", "card_number": scenarios::CARD});
    let ann = post("/v1/users", register("scoped_ann")).await;
    assert_eq!(ann.status, StatusCode::CREATED, "{}", ann.text);
    let bob = post("/v1/users", register("scoped_bob")).await;
    assert_eq!(bob.status, StatusCode::CREATED, "another user's key does not collide: {}", bob.text);
    assert!(bob.headers.get("idempotent-replayed").is_none(), "bob's own registration, not ann's");
    assert_eq!(bob.body["username"], "scoped_bob");
    assert_ne!(bob.body["id"], ann.body["id"]);

    let ann_again = post("/v1/users", register("scoped_ann")).await;
    assert_eq!((ann_again.status, &ann_again.body), (StatusCode::CREATED, &ann.body), "{}", ann_again.text);
    assert_eq!(ann_again.headers["idempotent-replayed"], "true");
    let mut changed = register("scoped_ann");
    changed["real_name"] = json!("Not Ann");
    let conflict = post("/v1/users", changed).await;
    assert_eq!((conflict.status, conflict.code()), (StatusCode::CONFLICT, "idempotency_conflict"), "{}", conflict.text);

    // Login under the key registration used: a request of its own.
    let credentials = |username: &str| json!({"username": username, "password": "s3cretpass"});
    let ann_login = post("/v1/sessions", credentials("scoped_ann")).await;
    assert_eq!(ann_login.status, StatusCode::CREATED, "registration's key does not collide: {}", ann_login.text);
    assert!(ann_login.headers.get("idempotent-replayed").is_none());
    assert_eq!(ann_login.body["user_id"], ann.body["id"]);
    let bob_login = post("/v1/sessions", credentials("scoped_bob")).await;
    assert_eq!(bob_login.status, StatusCode::CREATED, "{}", bob_login.text);
    assert!(bob_login.headers.get("idempotent-replayed").is_none());
    assert_eq!(bob_login.body["user_id"], bob.body["id"], "bob's own session, not ann's");
    let ann_login_again = post("/v1/sessions", credentials("scoped_ann")).await;
    assert_eq!((ann_login_again.status, &ann_login_again.body), (StatusCode::CREATED, &ann_login.body));
    assert_eq!(ann_login_again.headers["idempotent-replayed"], "true");
    let wrong = post("/v1/sessions", json!({"username": "scoped_ann", "password": "an0therpass"})).await;
    assert_eq!((wrong.status, wrong.code()), (StatusCode::CONFLICT, "idempotency_conflict"), "{}", wrong.text);
    let token = ann_login.body["token"].as_str().unwrap();
    assert_eq!(api.balance(ann.body["account_id"].as_str().unwrap(), token).await, 0, "the replayed token works");

    // Usernames that would put a separator into the scope are refused.
    for forged in ["user:usr_1", "scoped_ann\nx", "admin:"] {
        let reply = post("/v1/users", register(forged)).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::BAD_REQUEST, "invalid_field"),
            "{forged:?}: {}",
            reply.text
        );
        let login = post("/v1/sessions", credentials(forged)).await;
        assert_eq!((login.status, login.code()), (StatusCode::UNAUTHORIZED, "bad_credentials"), "{}", login.text);
    }
}

/// A top-up whose answer is lost after the commit (the client sees 503)
/// and is retried with its key: the retry answers the original top-up and
/// the wallet is credited once. `lose_answers(n)` makes the cluster answer
/// the next `n` submits with a timeout after applying them.
pub async fn a_lost_answer_is_not_charged_twice(api: &Api, receiver: &Receiver, lose_answers: impl Fn(usize)) {
    let w = scenarios::world(api, receiver, "retrier").await;
    let path = format!("/v1/users/{}/topups", w.user);
    // bank_card: its clearing account exists (the world topped up through it), so
    // the first submit that loses its answer is the top-up itself.
    let body = json!({"method": "bank_card", "amount_minor": 1_234});
    lose_answers(64); // every retry of the gateway's too
    let lost = post_with_key(api, &path, &w.token, "retry-me", &body).await;
    lose_answers(0);
    assert_eq!((lost.status, lost.code()), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{}", lost.text);
    let retried = post_with_key(api, &path, &w.token, "retry-me", &body).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.text);
    assert_eq!(retried.headers["idempotent-replayed"], "true", "the committed top-up, not a second one");
    assert_eq!(api.balance(&w.user_account, &w.token).await, 10_000 + 1_234, "charged once");
}

async fn login(api: &Api, username: &str, password: &str) -> Reply {
    api.post("/v1/sessions", None, &json!({"username": username, "password": password})).await
}

/// Logout revokes one token; a password change revokes every token.
pub async fn revocable_sessions(api: &Api) {
    let (user, account, first) = api.register("sessions", scenarios::CARD).await;
    let second = login(api, "sessions", "s3cretpass").await.body["token"].as_str().unwrap().to_string();
    assert_eq!(api.balance(&account, &first).await, 0);
    let logout = api.send(Method::DELETE, "/v1/sessions/current", Some(&first), None, &[]).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{}", logout.text);
    let revoked = api.get(&format!("/v1/accounts/{account}"), Some(&first)).await;
    assert_eq!((revoked.status, revoked.code()), (StatusCode::UNAUTHORIZED, "invalid_token"));
    let twice = api.send(Method::DELETE, "/v1/sessions/current", Some(&first), None, &[]).await;
    assert_eq!(twice.status, StatusCode::UNAUTHORIZED);
    assert_eq!(api.balance(&account, &second).await, 0, "the other session lives on");

    let path = format!("/v1/users/{user}/password");
    let wrong =
        api.post(&path, Some(&second), &json!({"current_password": "nope1234", "new_password": "n3wpassword"})).await;
    assert_eq!((wrong.status, wrong.code()), (StatusCode::UNAUTHORIZED, "bad_credentials"));
    let weak =
        api.post(&path, Some(&second), &json!({"current_password": "s3cretpass", "new_password": "short"})).await;
    assert_eq!((weak.status, weak.code()), (StatusCode::BAD_REQUEST, "invalid_field"), "{}", weak.text);
    assert_eq!(api.balance(&account, &second).await, 0, "failed changes revoke nothing");
    let third = login(api, "sessions", "s3cretpass").await.body["token"].as_str().unwrap().to_string();
    let changed =
        api.post(&path, Some(&second), &json!({"current_password": "s3cretpass", "new_password": "n3wpassword"})).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    for token in [&second, &third] {
        let reply = api.get(&format!("/v1/accounts/{account}"), Some(token)).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::UNAUTHORIZED, "invalid_token"), "every token revoked");
    }
    assert_eq!(login(api, "sessions", "s3cretpass").await.status, StatusCode::UNAUTHORIZED);
    let fresh = login(api, "sessions", "n3wpassword").await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    assert_eq!(api.balance(&account, fresh.body["token"].as_str().unwrap()).await, 0);
    let tampered = api.get(&format!("/v1/accounts/{account}"), Some("not-a-token")).await;
    assert_eq!(tampered.status, StatusCode::UNAUTHORIZED);
}

/// With a merchant limit of 2 in a burst and an address limit of 2: the
/// third request is 429 with `Retry-After`, and the bucket refills.
pub async fn rate_limits(api: &Api, receiver: &Receiver) {
    let merchant = api.onboard(merchant_key(), &receiver.url).await;
    let id = merchant["id"].as_str().unwrap();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let reply = api.signed(merchant_key(), id, Method::GET, "/v1/orders", None).await;
        statuses.push(reply.status);
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(reply.code(), "rate_limited");
            let after: u64 = reply.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&after), "{after}");
        }
    }
    assert_eq!(statuses, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let refilled = api.signed(merchant_key(), id, Method::GET, "/v1/orders", None).await;
    assert_eq!(refilled.status, StatusCode::OK, "{}", refilled.text);
    // Unauthenticated routes, per client address.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(login(api, "nobody", "whatever1").await.status);
    }
    assert_eq!(statuses, [StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS]);
}
