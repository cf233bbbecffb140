//! The admin listener's short memory: once a second it samples every
//! node's outcome totals (for the console's throughput and latency charts)
//! and notes when each live transaction of the table was first seen (for
//! the ages of in-flight transactions: the table keeps no clock, by design).
//! Bounded: [`MAX_SAMPLES`] samples, [`MAX_TRACKED_TXNS`] first-seen times.
//!
//! Only the coordinator leader answers clients, so one node's totals hold
//! only the stretches it led. The charts show the cluster's: each sample
//! adds up how much every node's totals grew since that node last answered
//! (its own from memory, the others' from their status, `NodeLocalView::
//! outcomes`). A node's counters that went down mean it restarted: its new
//! totals are all growth. A node first heard from only sets its baseline,
//! so nothing from before this history began is counted in one interval.

use super::api::PEER_STATUS_TIMEOUT_MS;
use super::AdminState;
use crate::client::{Client, ClientConfig};
use paytx_node::metrics::{OutcomeTotals, LATENCY_BUCKETS_SECONDS};
use paytx_protocol::{NodeId, TxnId};
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
    /// Each sample's totals are the cluster's running sum of growth.
    samples: VecDeque<Sample>,
    first_seen: BTreeMap<TxnId, Instant>,
    /// Each node's totals when it last answered (bounded by the nodes of
    /// the cluster's configuration).
    last_by_node: BTreeMap<NodeId, OutcomeTotals>,
    merged: OutcomeTotals,
}

/// How much `now` grew past `before`; all of `now` when a counter went down
/// (the node restarted and counts from zero again). Saturating throughout:
/// a peer's totals come from the network.
fn growth(before: &OutcomeTotals, now: &OutcomeTotals) -> OutcomeTotals {
    let restarted = now.committed < before.committed
        || now.aborted < before.aborted
        || now.latency_count < before.latency_count
        || before.aborted_by_reason.iter().any(|(r, n)| now.aborted_by_reason.get(r).copied().unwrap_or(0) < *n);
    if restarted {
        return now.clone();
    }
    OutcomeTotals {
        committed: now.committed.saturating_sub(before.committed),
        aborted: now.aborted.saturating_sub(before.aborted),
        aborted_by_reason: now
            .aborted_by_reason
            .iter()
            .map(|(r, n)| (r.clone(), n.saturating_sub(before.aborted_by_reason.get(r).copied().unwrap_or(0))))
            .filter(|(_, n)| *n > 0)
            .collect(),
        latency_count: now.latency_count.saturating_sub(before.latency_count),
        latency_cumulative: now
            .latency_cumulative
            .iter()
            .zip(before.latency_cumulative.iter().chain(std::iter::repeat(&0)))
            .map(|(n, b)| n.saturating_sub(*b))
            .collect(),
    }
}

/// Adds `growth` into `sum` (saturating: counters of a long life).
fn add(sum: &mut OutcomeTotals, growth: &OutcomeTotals) {
    sum.committed = sum.committed.saturating_add(growth.committed);
    sum.aborted = sum.aborted.saturating_add(growth.aborted);
    for (reason, n) in &growth.aborted_by_reason {
        let entry = sum.aborted_by_reason.entry(reason.clone()).or_default();
        *entry = entry.saturating_add(*n);
    }
    sum.latency_count = sum.latency_count.saturating_add(growth.latency_count);
    if sum.latency_cumulative.len() < growth.latency_cumulative.len() {
        sum.latency_cumulative.resize(growth.latency_cumulative.len(), 0);
    }
    for (s, g) in sum.latency_cumulative.iter_mut().zip(&growth.latency_cumulative) {
        *s = s.saturating_add(*g);
    }
}

#[derive(Default)]
pub struct History(Mutex<Inner>);

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One sample: the totals of every node that answered (`by_node`), and
    /// the live transactions of this node's table.
    fn record(&self, by_node: BTreeMap<NodeId, OutcomeTotals>, live: Vec<TxnId>) {
        let now = Instant::now();
        let mut inner = self.lock();
        for (node, totals) in by_node {
            if let Some(before) = inner.last_by_node.get(&node) {
                let grown = growth(before, &totals);
                add(&mut inner.merged, &grown);
            }
            inner.last_by_node.insert(node, totals);
        }
        let totals = inner.merged.clone();
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

    /// The cluster's aborts by reason over the kept history (up to five
    /// minutes), and since each node started (the sum of their latest
    /// totals), most frequent first: `(reason, recent, total)`.
    pub fn aborts_by_reason(&self) -> Vec<(String, u64, u64)> {
        let inner = self.lock();
        let (Some(oldest), Some(newest)) = (inner.samples.front(), inner.samples.back()) else { return Vec::new() };
        let mut since_start: BTreeMap<&str, u64> = BTreeMap::new();
        for totals in inner.last_by_node.values() {
            for (reason, n) in &totals.aborted_by_reason {
                let entry = since_start.entry(reason.as_str()).or_default();
                *entry = entry.saturating_add(*n);
            }
        }
        let recent = |reason: &str| {
            let after = newest.totals.aborted_by_reason.get(reason).copied().unwrap_or(0);
            after.saturating_sub(oldest.totals.aborted_by_reason.get(reason).copied().unwrap_or(0))
        };
        let mut out: Vec<(String, u64, u64)> =
            since_start.iter().map(|(reason, total)| (reason.to_string(), recent(reason), *total)).collect();
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
    // One connection per peer, kept between samples (dropped on a failure,
    // made again at the next sample).
    let mut clients: BTreeMap<NodeId, Client> = BTreeMap::new();
    let me = state.service.id();
    loop {
        every.tick().await;
        let mut by_node = BTreeMap::from([(me, state.service.metrics().totals())]);
        let asks = state.config.peers.iter().filter(|peer| peer.id != me).map(|peer| {
            let client = clients.remove(&peer.id);
            let (id, addr) = (peer.id, peer.addr);
            async move { (id, peer_totals(client, addr).await) }
        });
        for (id, answer) in futures::future::join_all(asks).await {
            if let Some((client, totals)) = answer {
                clients.insert(id, client);
                by_node.insert(id, totals);
            }
        }
        let live = state
            .service
            .with_table(|table| table.txns().take(MAX_TRACKED_TXNS).map(|(txn, _)| *txn).collect())
            .unwrap_or_default();
        state.history.record(by_node, live);
    }
}

/// A peer's outcome totals from its status, within
/// `PEER_STATUS_TIMEOUT_MS` (connecting first when `client` is `None`).
async fn peer_totals(client: Option<Client>, addr: std::net::SocketAddr) -> Option<(Client, OutcomeTotals)> {
    let budget = Duration::from_millis(PEER_STATUS_TIMEOUT_MS);
    let ask = async {
        let client = match client {
            Some(client) => client,
            None => {
                let config =
                    ClientConfig { request_timeout_ms: PEER_STATUS_TIMEOUT_MS, max_retries: 0, ..Default::default() };
                Client::connect_with(vec![addr], config).await.ok()?
            }
        };
        let status = client.node_status().await.ok()?;
        Some((client, status.local.outcomes))
    };
    tokio::time::timeout(budget, ask).await.ok().flatten()
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
        history.record(BTreeMap::from([(1, totals(&[("conflict", 5)]))]), Vec::new());
        history.record(BTreeMap::from([(1, totals(&[("conflict", 7), ("insufficient_funds", 3)]))]), Vec::new());
        assert_eq!(
            history.aborts_by_reason(),
            vec![("insufficient_funds".to_string(), 3, 3), ("conflict".to_string(), 2, 7)]
        );
    }

    /// Leadership moves from node 1 to node 2 between samples, node 3 is
    /// first heard from late, and node 1 restarts: the cluster's commits
    /// per interval are the sum of what each node answered in it.
    #[test]
    fn the_charts_add_up_every_nodes_growth_across_leader_changes_and_restarts() {
        let history = History::default();
        let at = |committed: u64| OutcomeTotals { committed, ..OutcomeTotals::default() };
        let commits = |h: &History| -> Vec<u64> {
            let inner = h.lock();
            inner.samples.iter().map(|s| s.totals.committed).collect()
        };
        // Baselines: nothing counted from before the history began.
        history.record(BTreeMap::from([(1, at(1_000)), (2, at(50))]), Vec::new());
        // Node 1 leads: 30 more.
        history.record(BTreeMap::from([(1, at(1_030)), (2, at(50))]), Vec::new());
        // Node 2 takes over: 20 more there; node 3 answers for the first time.
        history.record(BTreeMap::from([(1, at(1_030)), (2, at(70)), (3, at(400))]), Vec::new());
        // Node 1 restarted and has answered 5 since; node 3 10 more.
        history.record(BTreeMap::from([(1, at(5)), (2, at(70)), (3, at(410))]), Vec::new());
        // Node 2 unreachable for a sample: it adds nothing then, its growth later.
        history.record(BTreeMap::from([(1, at(5)), (3, at(410))]), Vec::new());
        history.record(BTreeMap::from([(1, at(5)), (2, at(90)), (3, at(410))]), Vec::new());
        assert_eq!(commits(&history), vec![0, 30, 50, 65, 65, 85]);
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
