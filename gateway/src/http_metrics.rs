//! [`HttpMetrics`]: requests the API answered, by route pattern (not the
//! raw path: ids would make the label unbounded), method and status. A
//! `prometheus` counter vector: the node's admin listener registers it in
//! its registry and renders it with the rest.

use prometheus::{IntCounterVec, Opts};

#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
}

impl HttpMetrics {
    pub fn new() -> HttpMetrics {
        let opts = Opts::new("paytx_http_requests_total", "Requests the open-platform API answered.");
        let requests = match IntCounterVec::new(opts, &["route", "method", "status"]) {
            Ok(requests) => requests,
            Err(e) => panic!("a static metric definition is invalid: {e}"),
        };
        HttpMetrics { requests }
    }

    /// One answered request. `route` is the matched pattern
    /// (`/v1/orders/{id}`), or `unmatched`.
    pub fn observe(&self, route: Option<&str>, method: &str, status: u16) {
        // Methods outside the usual set share one label: the set stays bounded.
        let method = match method {
            "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" => method,
            _ => "other",
        };
        let status = status.to_string();
        self.requests.with_label_values(&[route.unwrap_or("unmatched"), method, status.as_str()]).inc();
    }
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics::new()
    }
}
