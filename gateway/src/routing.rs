//! Channel routing: each payment method has several routes (channel ids,
//! from the config) with weights; a strategy picks one; a circuit breaker
//! takes a route that keeps failing out of rotation for a while and lets a
//! single probe through afterwards. Breaker state is per node, in memory:
//! it is an optimisation, not a record (every node learns on its own).

use paytx_protocol::ChannelId;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a user pays (or tops up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayMethod {
    /// The user's wallet (not a channel).
    Balance,
    BankCard,
    Alipay,
    Wechat,
}

impl PayMethod {
    pub fn parse(text: &str) -> Option<PayMethod> {
        match text {
            "balance" => Some(PayMethod::Balance),
            "bank_card" => Some(PayMethod::BankCard),
            "alipay" => Some(PayMethod::Alipay),
            "wechat" => Some(PayMethod::Wechat),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PayMethod::Balance => "balance",
            PayMethod::BankCard => "bank_card",
            PayMethod::Alipay => "alipay",
            PayMethod::Wechat => "wechat",
        }
    }
}

/// One route of a channel method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub method: PayMethod,
    pub channel: ChannelId,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingStrategy {
    #[default]
    WeightedRandom,
    /// Smooth weighted round-robin (as nginx): deterministic, spreads each
    /// route's share evenly over time.
    RoundRobin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker keeps the route out before a probe.
    pub open_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings { failure_threshold: 3, open_ms: 30_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight since `since`; others stay away until it
    /// reports. A probe that never reports (its payment failed before the
    /// channel was asked, or the request was dropped) is given up after
    /// `open_ms`, so a route can never stay out of rotation for good.
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug)]
struct Route {
    channel: ChannelId,
    weight: u32,
    state: BreakerState,
    /// Smooth weighted round-robin's running weight.
    current: i64,
}

#[derive(Debug)]
pub struct Router {
    strategy: RoutingStrategy,
    breaker: BreakerSettings,
    routes: Mutex<BTreeMap<PayMethod, Vec<Route>>>,
}

impl Router {
    pub fn new(routes: &[RouteConfig], strategy: RoutingStrategy, breaker: BreakerSettings) -> Router {
        let mut by_method: BTreeMap<PayMethod, Vec<Route>> = BTreeMap::new();
        for route in routes.iter().filter(|r| r.method != PayMethod::Balance && r.weight > 0) {
            by_method.entry(route.method).or_default().push(Route {
                channel: route.channel,
                weight: route.weight,
                state: BreakerState::Closed { consecutive_failures: 0 },
                current: 0,
            });
        }
        Router { strategy, breaker, routes: Mutex::new(by_method) }
    }

    /// `true` when `method` has at least one configured route.
    pub fn supports(&self, method: PayMethod) -> bool {
        self.routes.lock().map(|routes| routes.contains_key(&method)).unwrap_or(false)
    }

    /// Picks a route for `method`, skipping `exclude` (routes already tried
    /// for this request). `None` when every route is out of rotation.
    pub fn pick(
        &self,
        method: PayMethod,
        exclude: &[ChannelId],
        now: Instant,
        rng: &mut impl Rng,
    ) -> Option<ChannelId> {
        let mut all = self.routes.lock().ok()?;
        let routes = all.get_mut(&method)?;
        // Open breakers whose time is up become half-open: one probe.
        let mut eligible: Vec<usize> = Vec::new();
        for (index, route) in routes.iter_mut().enumerate() {
            if exclude.contains(&route.channel) {
                continue;
            }
            match route.state {
                BreakerState::Closed { .. } => eligible.push(index),
                BreakerState::Open { until } if now >= until => eligible.push(index),
                BreakerState::HalfOpen { since } if now >= since + Duration::from_millis(self.breaker.open_ms) => {
                    eligible.push(index)
                }
                BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {}
            }
        }
        if eligible.is_empty() {
            return None;
        }
        let total: u64 = eligible.iter().map(|i| u64::from(routes[*i].weight)).sum();
        let chosen = match self.strategy {
            RoutingStrategy::WeightedRandom => {
                let mut ticket = rng.gen_range(0..total);
                let mut chosen = eligible[0];
                for index in &eligible {
                    let weight = u64::from(routes[*index].weight);
                    if ticket < weight {
                        chosen = *index;
                        break;
                    }
                    ticket -= weight;
                }
                chosen
            }
            RoutingStrategy::RoundRobin => {
                for index in &eligible {
                    routes[*index].current += i64::from(routes[*index].weight);
                }
                let chosen = *eligible
                    .iter()
                    .max_by_key(|i| (routes[**i].current, std::cmp::Reverse(**i)))
                    .expect("eligible is not empty");
                routes[chosen].current -= total as i64;
                chosen
            }
        };
        if let BreakerState::Open { .. } | BreakerState::HalfOpen { .. } = routes[chosen].state {
            routes[chosen].state = BreakerState::HalfOpen { since: now };
        }
        Some(routes[chosen].channel)
    }

    /// Reports how a charge through `channel` went.
    pub fn report(&self, channel: ChannelId, success: bool, now: Instant) {
        let Ok(mut all) = self.routes.lock() else { return };
        for route in all.values_mut().flat_map(|routes| routes.iter_mut()).filter(|r| r.channel == channel) {
            route.state = match (route.state, success) {
                (_, true) => BreakerState::Closed { consecutive_failures: 0 },
                (BreakerState::Closed { consecutive_failures }, false)
                    if consecutive_failures + 1 < self.breaker.failure_threshold =>
                {
                    BreakerState::Closed { consecutive_failures: consecutive_failures + 1 }
                }
                (_, false) => BreakerState::Open { until: now + Duration::from_millis(self.breaker.open_ms) },
            };
        }
    }
}

/// Most routes tried for one payment (each a declined, aborted transaction).
pub const MAX_ROUTES_PER_METHOD: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn routes() -> Vec<RouteConfig> {
        vec![
            RouteConfig { method: PayMethod::BankCard, channel: ChannelId(1), weight: 3 },
            RouteConfig { method: PayMethod::BankCard, channel: ChannelId(4), weight: 1 },
            RouteConfig { method: PayMethod::Alipay, channel: ChannelId(2), weight: 1 },
        ]
    }

    #[test]
    fn round_robin_follows_the_weights() {
        let router = Router::new(&routes(), RoutingStrategy::RoundRobin, BreakerSettings::default());
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let now = Instant::now();
        let picks: Vec<u64> = (0..8).map(|_| router.pick(PayMethod::BankCard, &[], now, &mut rng).unwrap().0).collect();
        assert_eq!(picks.iter().filter(|c| **c == 1).count(), 6);
        assert_eq!(picks.iter().filter(|c| **c == 4).count(), 2);
        assert_eq!(router.pick(PayMethod::Wechat, &[], now, &mut rng), None, "no route configured");
        assert!(!router.supports(PayMethod::Wechat));
    }

    #[test]
    fn weighted_random_follows_the_weights() {
        let router = Router::new(&routes(), RoutingStrategy::WeightedRandom, BreakerSettings::default());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let now = Instant::now();
        let ones =
            (0..4000).filter(|_| router.pick(PayMethod::BankCard, &[], now, &mut rng) == Some(ChannelId(1))).count();
        assert!((2700..3300).contains(&ones), "{ones} of 4000, expected about 3000");
    }

    #[test]
    fn breaker_opens_after_failures_and_lets_one_probe_through() {
        let settings = BreakerSettings { failure_threshold: 2, open_ms: 1_000 };
        let router = Router::new(&routes(), RoutingStrategy::RoundRobin, settings);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        router.report(ChannelId(1), false, t0);
        router.report(ChannelId(1), false, t0);
        for _ in 0..5 {
            assert_eq!(router.pick(PayMethod::BankCard, &[], t0, &mut rng), Some(ChannelId(4)), "route 1 is out");
        }
        assert_eq!(router.pick(PayMethod::BankCard, &[ChannelId(4)], t0, &mut rng), None);
        let later = t0 + Duration::from_millis(1_001);
        assert_eq!(router.pick(PayMethod::BankCard, &[ChannelId(4)], later, &mut rng), Some(ChannelId(1)), "probe");
        assert_eq!(router.pick(PayMethod::BankCard, &[ChannelId(4)], later, &mut rng), None, "one probe at a time");
        router.report(ChannelId(1), true, later);
        assert_eq!(
            router.pick(PayMethod::BankCard, &[ChannelId(4)], later, &mut rng),
            Some(ChannelId(1)),
            "closed again"
        );
    }

    #[test]
    fn a_probe_that_never_reports_is_given_up_after_open_ms() {
        let settings = BreakerSettings { failure_threshold: 1, open_ms: 1_000 };
        let router = Router::new(&routes(), RoutingStrategy::RoundRobin, settings);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let t0 = Instant::now();
        router.report(ChannelId(1), false, t0);
        let probe_at = t0 + Duration::from_millis(1_001);
        assert_eq!(router.pick(PayMethod::BankCard, &[ChannelId(4)], probe_at, &mut rng), Some(ChannelId(1)));
        // The probe's payment failed before the channel was asked: no report.
        let soon = probe_at + Duration::from_millis(500);
        assert_eq!(router.pick(PayMethod::BankCard, &[ChannelId(4)], soon, &mut rng), None, "probe still in flight");
        let later = probe_at + Duration::from_millis(1_001);
        assert_eq!(
            router.pick(PayMethod::BankCard, &[ChannelId(4)], later, &mut rng),
            Some(ChannelId(1)),
            "an abandoned probe does not keep the route out forever"
        );
    }
}
