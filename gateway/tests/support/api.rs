//! A small HTTP client of the open-platform API for tests: plain reqwest,
//! merchant requests signed exactly as the README describes.
#![allow(dead_code)]

use paytx_gateway::signing;
use reqwest::{Method, StatusCode};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use std::sync::OnceLock;

/// RSA keys are slow to make: one per test binary, shared.
pub fn merchant_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| signing::generate_key().expect("key generation"))
}

pub fn other_merchant_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| signing::generate_key().expect("key generation"))
}

pub fn public_pem(key: &RsaPrivateKey) -> String {
    signing::public_key_pem(&rsa::RsaPublicKey::from(key)).expect("pem")
}

#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub admin_key: String,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Every answer body any `Api` received in this test binary (for the
/// plaintext-card search).
pub fn transcript() -> Vec<String> {
    TRANSCRIPT.lock().unwrap().clone()
}

static TRANSCRIPT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl Api {
    pub fn new(base: String, admin_key: String) -> Api {
        Api { base, http: reqwest::Client::new(), admin_key }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = bearer {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        TRANSCRIPT.lock().unwrap().push(text.clone());
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, body, text, headers }
    }

    pub async fn post(&self, path: &str, bearer: Option<&str>, body: &Value) -> Reply {
        self.send(Method::POST, path, bearer, Some(body.to_string().into_bytes()), &[]).await
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Reply {
        self.send(Method::GET, path, bearer, None, &[]).await
    }

    /// A merchant request, signed with `key`.
    pub async fn signed(
        &self,
        key: &RsaPrivateKey,
        merchant: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Reply {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let headers = signing::signed_headers(key, merchant, method.as_str(), path, &bytes);
        self.send(method, path, None, body.map(|_| bytes), &headers).await
    }

    pub async fn register(&self, username: &str, card: &str) -> (String, String, String) {
        let reply = self
            .post(
                "/v1/users",
                None,
                &json!({"username": username, "password": "s3cretpass", "real_name": "Test User", "card_number": card}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        let id = reply.body["id"].as_str().unwrap().to_string();
        let account = reply.body["account_id"].as_str().unwrap().to_string();
        let login = self.post("/v1/sessions", None, &json!({"username": username, "password": "s3cretpass"})).await;
        assert_eq!(login.status, StatusCode::CREATED, "{}", login.text);
        (id, account, login.body["token"].as_str().unwrap().to_string())
    }

    pub async fn onboard(&self, key: &RsaPrivateKey, notify_url: &str) -> Value {
        let reply = self
            .post(
                "/v1/merchants",
                Some(&self.admin_key),
                &json!({"name": "Shop", "notify_url": notify_url, "public_key_pem": public_pem(key)}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.body
    }

    pub async fn create_order(&self, key: &RsaPrivateKey, merchant: &str, out_trade_no: &str, amount: i64) -> Reply {
        let body =
            json!({"out_trade_no": out_trade_no, "amount_minor": amount, "currency": "CNY", "description": "tea"});
        self.signed(key, merchant, Method::POST, "/v1/orders", Some(&body)).await
    }

    pub async fn balance(&self, account: &str, bearer: &str) -> i64 {
        let reply = self.get(&format!("/v1/accounts/{account}"), Some(bearer)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        reply.body["balance_minor"].as_i64().unwrap()
    }
}
