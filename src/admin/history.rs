//! The admin listener's short memory: once a second it samples this node's
//! outcome totals (for the console's throughput and latency charts) and
//! notes when each live transaction of the table was first seen (for the
//! ages of in-flight transactions: the table keeps no clock, by design).
//! Bounded: [`MAX_SAMPLES`] samples, [`MAX_TRACKED_TXNS`] first-seen times.

use super::AdminState;
use paytx_node::metrics::{OutcomeTotals, LATENCY_BUCKETS_SECONDS};
use paytx_protocol::TxnId;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Samples kept: five minutes at one a second.
pub const MAX_SAMPLES: usize = 300;
/// Live transactions whose first-seen time is kept (the table holds at most
/// `max_in_flight_txns` undecided ones, 4,000 by default).
pub const MAX_TRACKED_TXNS: usize = 100_000;
/// Period of the sampler.
pub const SAMPLE_EVERY_MS: u64 = 1_000;

/// One interval of the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// Seconds before the newest sample (0 for the newest).
    pub ago_secs: f64,
    pub commits_per_sec: f64,
    pub aborts_per_sec: f64,
    /// Bucket upper bounds of the interval's commit latencies (`None`:
    /// no commit in the interval).
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

struct Sample {
    at: Instant,
    totals: OutcomeTotals,
}

#[derive(Default)]
struct Inner {
    samples: VecDeque<Sample>,
    first_seen: BTreeMap<TxnId, Instant>,
}

#[derive(Default)]
pub struct History(Mutex<Inner>);

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, totals: OutcomeTotals, live: Vec<TxnId>) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.samples.push_back(Sample { at: now, totals });
        while inner.samples.len() > MAX_SAMPLES {
            inner.samples.pop_front();
        }
        // Forget what left the table; note what is new.
        let live_set: std::collections::BTreeSet<TxnId> = live.iter().copied().collect();
        inner.first_seen.retain(|txn, _| live_set.contains(txn));
        for txn in live {
            if inner.first_seen.len() >= MAX_TRACKED_TXNS {
                break;
            }
            inner.first_seen.entry(txn).or_insert(now);
        }
    }

    /// How long `txn` has been seen live (0 when not seen yet).
    pub fn age_ms(&self, txn: &TxnId) -> u64 {
        self.lock().first_seen.get(txn).map(|t| t.elapsed().as_millis() as u64).unwrap_or(0)
    }

    /// Aborts by reason over the kept history (up to five minutes) and
    /// since start, most frequent first: `(reason, recent, total)`.
    pub fn aborts_by_reason(&self) -> Vec<(String, u64, u64)> {
        let inner = self.lock();
        let (Some(oldest), Some(newest)) = (inner.samples.front(), inner.samples.back()) else { return Vec::new() };
        let mut out: Vec<(String, u64, u64)> = newest
            .totals
            .aborted_by_reason
            .iter()
            .map(|(reason, total)| {
                let before = oldest.totals.aborted_by_reason.get(reason).copied().unwrap_or(0);
                (reason.clone(), total.saturating_sub(before), *total)
            })
            .collect();
        out.sort_by_key(|(reason, recent, total)| (std::cmp::Reverse((*recent, *total)), reason.clone()));
        out
    }

    /// The seconds the kept history spans.
    pub fn span_secs(&self) -> u64 {
        let inner = self.lock();
        match (inner.samples.front(), inner.samples.back()) {
            (Some(a), Some(b)) => b.at.duration_since(a.at).as_secs(),
            _ => 0,
        }
    }

    /// The intervals between consecutive samples, oldest first.
    pub fn intervals(&self) -> Vec<Interval> {
        let inner = self.lock();
        let Some(newest) = inner.samples.back().map(|s| s.at) else { return Vec::new() };
        inner
            .samples
            .iter()
            .zip(inner.samples.iter().skip(1))
            .map(|(before, after)| {
                let secs = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
                let delta = |a: u64, b: u64| b.saturating_sub(a) as f64;
                let buckets: Vec<u64> = after
                    .totals
                    .latency_cumulative
                    .iter()
                    .zip(before.totals.latency_cumulative.iter().chain(std::iter::repeat(&0)))
                    .map(|(b, a)| b.saturating_sub(*a))
                    .collect();
                let count = after.totals.latency_count.saturating_sub(before.totals.latency_count);
                Interval {
                    ago_secs: newest.duration_since(after.at).as_secs_f64(),
                    commits_per_sec: delta(before.totals.committed, after.totals.committed) / secs,
                    aborts_per_sec: delta(before.totals.aborted, after.totals.aborted) / secs,
                    p50_seconds: quantile(&buckets, count, 0.50),
                    p99_seconds: quantile(&buckets, count, 0.99),
                }
            })
            .collect()
    }
}

/// The upper bound of the bucket holding quantile `q` of `count` samples
/// whose cumulative bucket counts are `cumulative` (the `+Inf` bucket maps
/// to the last bound: a chart needs a number).
pub fn quantile(cumulative: &[u64], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = ((count as f64) * q).ceil().max(1.0) as u64;
    let last = LATENCY_BUCKETS_SECONDS[LATENCY_BUCKETS_SECONDS.len() - 1];
    let index = cumulative.iter().position(|c| *c >= rank);
    Some(index.and_then(|i| LATENCY_BUCKETS_SECONDS.get(i).copied()).unwrap_or(last))
}

/// Samples until the task is aborted (the listener stops).
pub async fn run_sampler(state: Arc<AdminState>) {
    let mut every = tokio::time::interval(Duration::from_millis(SAMPLE_EVERY_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let totals = state.service.metrics().totals();
        let live = state
            .service
            .with_table(|table| table.txns().take(MAX_TRACKED_TXNS).map(|(txn, _)| *txn).collect())
            .unwrap_or_default();
        state.history.record(totals, live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_aborts_are_the_difference_over_the_kept_samples() {
        let history = History::default();
        let totals = |pairs: &[(&str, u64)]| OutcomeTotals {
            aborted_by_reason: pairs.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
            ..OutcomeTotals::default()
        };
        history.record(totals(&[("conflict", 5)]), Vec::new());
        history.record(totals(&[("conflict", 7), ("insufficient_funds", 3)]), Vec::new());
        assert_eq!(
            history.aborts_by_reason(),
            vec![("insufficient_funds".to_string(), 3, 3), ("conflict".to_string(), 2, 7)]
        );
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        // 10 samples: 5 in the 1 ms bucket, 5 in the 4 ms one.
        let mut cumulative = vec![0u64; LATENCY_BUCKETS_SECONDS.len()];
        for (i, c) in cumulative.iter_mut().enumerate() {
            *c = match i {
                0 => 0,
                1 | 2 => 5,
                _ => 10,
            };
        }
        assert_eq!(quantile(&cumulative, 10, 0.5), Some(0.001));
        assert_eq!(quantile(&cumulative, 10, 0.99), Some(0.004));
        assert_eq!(quantile(&cumulative, 0, 0.5), None);
    }
}
