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

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector as _;

    fn samples(vec: &IntCounterVec) -> Vec<(Vec<(String, String)>, u64)> {
        vec.collect()
            .iter()
            .flat_map(|f| f.get_metric().iter())
            .map(|m| {
                let labels = m.get_label().iter().map(|l| (l.name().to_string(), l.value().to_string())).collect();
                (labels, m.get_counter().get_value() as u64)
            })
            .collect()
    }

    #[test]
    fn labels_stay_bounded_and_outcomes_are_counted_apart() {
        let metrics = HttpMetrics::new();
        metrics.observe(Some("/v1/orders/{id}"), "GET", 200);
        metrics.observe(Some("/v1/orders/{id}"), "GET", 200);
        metrics.observe(None, "BREW", 418);
        let requests = samples(&metrics.requests);
        let label = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert!(requests
            .contains(&(vec![label("method", "GET"), label("route", "/v1/orders/{id}"), label("status", "200")], 2)));
        assert!(
            requests
                .contains(&(vec![label("method", "other"), label("route", "unmatched"), label("status", "418")], 1)),
            "an unknown method and an unmatched path share bounded labels: {requests:?}"
        );
        metrics.observe_notification(NotifyOutcome::Delivered);
        metrics.observe_notification(NotifyOutcome::Retrying);
        metrics.observe_notification(NotifyOutcome::Retrying);
        metrics.observe_notification(NotifyOutcome::GaveUp);
        let mut notifications = samples(&metrics.notifications);
        notifications.sort();
        assert_eq!(
            notifications,
            vec![
                (vec![label("outcome", "delivered")], 1),
                (vec![label("outcome", "failed_gave_up")], 1),
                (vec![label("outcome", "failed_will_retry")], 2),
            ]
        );
    }
}
