//! [`HttpMetrics`]: requests the API answered, by route pattern (not the
//! raw path: ids would make the label unbounded), method and status; and
//! notification attempts recorded, by outcome. `prometheus` counter
//! vectors: the node's admin listener renders them with its own.

use prometheus::{IntCounterVec, Opts};

#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
    pub notifications: IntCounterVec,
}

/// What one recorded notification attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyOutcome {
    Delivered,
    /// Failed; another attempt is scheduled.
    Retrying,
    /// Failed, and the schedule is used up.
    GaveUp,
}

impl HttpMetrics {
    pub fn new() -> HttpMetrics {
        let opts = Opts::new("paytx_http_requests_total", "Requests the open-platform API answered.");
        let requests = match IntCounterVec::new(opts, &["route", "method", "status"]) {
            Ok(requests) => requests,
            Err(e) => panic!("a static metric definition is invalid: {e}"),
        };
        let opts = Opts::new(
            "paytx_notification_deliveries_total",
            "Notification attempts this node made and recorded, by outcome.",
        );
        let notifications = match IntCounterVec::new(opts, &["outcome"]) {
            Ok(notifications) => notifications,
            Err(e) => panic!("a static metric definition is invalid: {e}"),
        };
        HttpMetrics { requests, notifications }
    }

    /// One notification attempt, recorded in the cluster.
    pub fn observe_notification(&self, outcome: NotifyOutcome) {
        let label = match outcome {
            NotifyOutcome::Delivered => "delivered",
            NotifyOutcome::Retrying => "failed_will_retry",
            NotifyOutcome::GaveUp => "failed_gave_up",
        };
        self.notifications.with_label_values(&[label]).inc();
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
