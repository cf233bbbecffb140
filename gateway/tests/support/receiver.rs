//! A merchant's notification endpoint for tests: real HTTP on loopback. It
//! answers `500` to the first `fail_first` deliveries, then `success`, and
//! records every delivery with whether its platform signature verified.
#![allow(dead_code)]

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use paytx_gateway::signing;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Delivery {
    pub notify_id: String,
    pub body: serde_json::Value,
    pub signature_ok: bool,
    pub answered_success: bool,
}

#[derive(Default)]
pub struct ReceiverState {
    pub fail_first: Mutex<usize>,
    pub deliveries: Mutex<Vec<Delivery>>,
    pub platform_pem: Mutex<Option<String>>,
}

pub struct Receiver {
    pub url: String,
    pub state: Arc<ReceiverState>,
    handle: actix_web::dev::ServerHandle,
}

async fn notify(state: web::Data<ReceiverState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let message = signing::canonical_string(
        "POST",
        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        &header(signing::HEADER_TIMESTAMP),
        &header(signing::HEADER_NONCE),
        &body,
    );
    let signature_ok = state
        .platform_pem
        .lock()
        .unwrap()
        .as_deref()
        .and_then(|pem| signing::parse_public_key(pem).ok())
        .is_some_and(|key| signing::verify(&key, &message, &header(signing::HEADER_SIGNATURE)));
    let succeed = {
        let mut fail = state.fail_first.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            false
        } else {
            true
        }
    };
    state.deliveries.lock().unwrap().push(Delivery {
        notify_id: header(signing::HEADER_NOTIFY_ID),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        signature_ok,
        answered_success: succeed,
    });
    if succeed {
        HttpResponse::Ok().body("success")
    } else {
        HttpResponse::InternalServerError().body("try again")
    }
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Receiver {
        let state = Arc::new(ReceiverState { fail_first: Mutex::new(fail_first), ..Default::default() });
        let data = web::Data::from(state.clone());
        let server =
            HttpServer::new(move || App::new().app_data(data.clone()).route("/notify", web::post().to(notify)))
                .workers(1)
                .disable_signals()
                .bind("127.0.0.1:0")
                .expect("bind the receiver");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Receiver { url: format!("http://{addr}/notify?shop=1"), state, handle }
    }

    /// Distinct notify ids that were answered `success`.
    pub fn delivered_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .state
            .deliveries
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.answered_success)
            .map(|d| d.notify_id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().unwrap().clone()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}
