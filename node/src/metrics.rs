//! [`NodeMetrics`]: the counters and histograms a node updates as messages
//! pass through its [`crate::NodeService`], in one Prometheus registry per
//! node (an embedded cluster runs several nodes in one process).
//!
//! Only what no status struct already holds is counted here; everything
//! else (Raft term and indexes, table sizes, batching and disk counters) is
//! read from the existing status views when the admin layer is scraped, so
//! the commit path pays for nothing it does not need. What is counted is
//! lock-free: `prometheus` counters and histograms are atomics, and the
//! labelled children on the commit path are resolved once, here, instead of
//! through the vector's lock on every increment.
//!
//! Deterministic: latencies come from tokio's clock (virtual in the
//! simulator), nothing here draws randomness, and nothing read back from
//! here steers the protocol.

use paytx_protocol::{AbortReason, RequestError, ShardId, TxnReceipt};
use prometheus::core::Collector as _;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use std::collections::BTreeMap;

/// Upper bounds of the commit latency buckets, in seconds: 0.5 ms to 10 s,
/// roughly ×2 apart (what a dashboard needs to tell p50 from p99 apart).
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] =
    [0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0];

/// Per-shard counters resolved once (the shard set of a node is fixed).
#[derive(Clone)]
struct ShardCounters {
    prepares_yes: IntCounter,
    prepares_no: IntCounter,
    decides_commit: IntCounter,
    decides_abort: IntCounter,
}

/// What one node counts. Cheap to clone (every field is an `Arc` inside).
#[derive(Clone)]
pub struct NodeMetrics {
    registry: Registry,
    submitted: IntCounter,
    committed: IntCounter,
    replayed: IntCounter,
    aborted: IntCounterVec,
    refused: IntCounterVec,
    commit_latency: Histogram,
    disk_sync_latency: Histogram,
    shards: BTreeMap<ShardId, ShardCounters>,
    /// Leaderships this node handed to a group's preferred replica
    /// (`crate::balance`), and hand-overs that stopped short.
    handed_over: IntCounter,
    hand_overs_stopped: IntCounter,
    batches: BatchCounters,
}

/// The 2PC batches this node's shards answered.
#[derive(Clone)]
struct BatchCounters {
    prepare_batches: IntCounter,
    decide_batches: IntCounter,
    prepares: IntCounter,
    decisions: IntCounter,
    blocked: IntCounter,
}

/// What [`NodeMetrics::batches`] returns: the 2PC batches this node's
/// shards answered since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchTotals {
    pub prepare_batches: u64,
    pub prepares: u64,
    /// Prepares of a batch answered `Blocked` (sent again alone).
    pub blocked: u64,
    pub decide_batches: u64,
    pub decisions: u64,
}

/// A metric definition that cannot fail to register (unique names, valid
/// label names): a failure is a programming error caught by the unit test.
fn must<T>(result: prometheus::Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("a static metric definition is invalid: {e}"),
    }
}

impl NodeMetrics {
    /// The metrics of a node hosting `shards`, in a registry of their own.
    pub fn new(shards: impl IntoIterator<Item = ShardId>) -> NodeMetrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let submitted = counter(
            "paytx_txns_submitted_total",
            "Transactions this node's coordinator answered (outcome or refusal; forwarded requests are counted by the leader).",
        );
        let committed = counter("paytx_txns_committed_total", "New transactions this node's coordinator committed.");
        let replayed = counter(
            "paytx_txns_replayed_total",
            "Submits answered with the outcome of an earlier one with the same key.",
        );
        let aborted = must(IntCounterVec::new(
            Opts::new("paytx_txns_aborted_total", "New transactions this node's coordinator aborted, by reason."),
            &["reason"],
        ));
        must(registry.register(Box::new(aborted.clone())));
        let refused = must(IntCounterVec::new(
            Opts::new(
                "paytx_txns_refused_total",
                "Submits this node's coordinator refused before running them, by error.",
            ),
            &["error"],
        ));
        must(registry.register(Box::new(refused.clone())));
        let commit_latency = must(Histogram::with_opts(
            HistogramOpts::new(
                "paytx_txn_commit_latency_seconds",
                "From a submit reaching this node's coordinator to its commit being announced.",
            )
            .buckets(LATENCY_BUCKETS_SECONDS.to_vec()),
        ));
        must(registry.register(Box::new(commit_latency.clone())));
        let disk_sync_latency = must(Histogram::with_opts(
            HistogramOpts::new(
                "paytx_disk_sync_latency_seconds",
                "From a sync being asked of this node's disk to its completion (group commit wait included).",
            )
            .buckets(LATENCY_BUCKETS_SECONDS.to_vec()),
        ));
        must(registry.register(Box::new(disk_sync_latency.clone())));
        let prepares = must(IntCounterVec::new(
            Opts::new("paytx_shard_prepares_total", "Prepares answered by a participant shard of this node, by vote."),
            &["shard", "vote"],
        ));
        must(registry.register(Box::new(prepares.clone())));
        let decides = must(IntCounterVec::new(
            Opts::new(
                "paytx_shard_decisions_total",
                "Decisions acknowledged by a participant shard of this node, by decision.",
            ),
            &["shard", "decision"],
        ));
        must(registry.register(Box::new(decides.clone())));
        let hand_overs = must(IntCounterVec::new(
            Opts::new(
                "paytx_leader_handovers_total",
                "Group leaderships this node handed to the group's preferred replica, by result \
                 (handed_over, or stopped: Raft settled who leads).",
            ),
            &["result"],
        ));
        must(registry.register(Box::new(hand_overs.clone())));
        let batch_requests = must(IntCounterVec::new(
            Opts::new(
                "paytx_2pc_batches_total",
                "Prepare and decision batches (one request carrying many transactions) this node's shards answered, by kind.",
            ),
            &["kind"],
        ));
        must(registry.register(Box::new(batch_requests.clone())));
        let batched = must(IntCounterVec::new(
            Opts::new(
                "paytx_2pc_batched_total",
                "Prepares and decisions that came in batches, by kind (blocked: prepares of a batch that would have \
                 waited for a lock, answered at once and sent again alone).",
            ),
            &["kind"],
        ));
        must(registry.register(Box::new(batched.clone())));
        let batches = BatchCounters {
            prepare_batches: batch_requests.with_label_values(&["prepare"]),
            decide_batches: batch_requests.with_label_values(&["decide"]),
            prepares: batched.with_label_values(&["prepare"]),
            decisions: batched.with_label_values(&["decide"]),
            blocked: batched.with_label_values(&["blocked"]),
        };
        let shards = shards
            .into_iter()
            .map(|shard| {
                let label = shard.to_string();
                let counters = ShardCounters {
                    prepares_yes: prepares.with_label_values(&[label.as_str(), "yes"]),
                    prepares_no: prepares.with_label_values(&[label.as_str(), "no"]),
                    decides_commit: decides.with_label_values(&[label.as_str(), "commit"]),
                    decides_abort: decides.with_label_values(&[label.as_str(), "abort"]),
                };
                (shard, counters)
            })
            .collect();
        NodeMetrics {
            registry,
            submitted,
            committed,
            replayed,
            aborted,
            refused,
            commit_latency,
            disk_sync_latency,
            shards,
            handed_over: hand_overs.with_label_values(&["handed_over"]),
            hand_overs_stopped: hand_overs.with_label_values(&["stopped"]),
            batches,
        }
    }

    /// A prepare batch of `items` prepares was answered, `blocked` of
    /// them `Blocked`.
    pub fn observe_prepare_batch(&self, items: usize, blocked: usize) {
        self.batches.prepare_batches.inc();
        self.batches.prepares.inc_by(items as u64);
        self.batches.blocked.inc_by(blocked as u64);
    }

    /// A decision batch of `items` decisions was answered.
    pub fn observe_decide_batch(&self, items: usize) {
        self.batches.decide_batches.inc();
        self.batches.decisions.inc_by(items as u64);
    }

    /// The 2PC batches this node's shards answered since it started.
    pub fn batches(&self) -> BatchTotals {
        let b = &self.batches;
        BatchTotals {
            prepare_batches: b.prepare_batches.get(),
            prepares: b.prepares.get(),
            blocked: b.blocked.get(),
            decide_batches: b.decide_batches.get(),
            decisions: b.decisions.get(),
        }
    }

    /// The histogram the node's disk observes every sync in (see
    /// [`crate::timed_disk`]).
    pub fn disk_sync_latency(&self) -> Histogram {
        self.disk_sync_latency.clone()
    }

    /// The registry the admin layer renders (and adds its own gauges to).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Running totals, for the admin layer's history of throughput and
    /// latency (the console's charts).
    pub fn totals(&self) -> OutcomeTotals {
        use prometheus::core::Metric as _;
        let mut aborted_by_reason = BTreeMap::new();
        for family in self.aborted.collect() {
            for metric in family.get_metric() {
                let reason = metric.get_label().iter().find(|l| l.name() == "reason").map(|l| l.value().to_string());
                aborted_by_reason.insert(reason.unwrap_or_default(), metric.get_counter().get_value() as u64);
            }
        }
        let aborted: u64 = aborted_by_reason.values().sum();
        let histogram = self.commit_latency.metric();
        let latency = histogram.get_histogram();
        OutcomeTotals {
            committed: self.committed.get(),
            aborted,
            aborted_by_reason,
            latency_count: latency.get_sample_count(),
            latency_cumulative: latency.get_bucket().iter().map(|b| b.cumulative_count()).collect(),
        }
    }

    /// A submit this node's coordinator answered with a receipt, after
    /// `elapsed_seconds`.
    pub fn observe_receipt(&self, receipt: &TxnReceipt, elapsed_seconds: f64) {
        self.submitted.inc();
        if receipt.replayed {
            self.replayed.inc();
            return;
        }
        match &receipt.outcome {
            paytx_protocol::Outcome::Committed => {
                self.committed.inc();
                self.commit_latency.observe(elapsed_seconds);
            }
            paytx_protocol::Outcome::Aborted(reason) => self.observe_abort(reason),
        }
    }

    fn observe_abort(&self, reason: &AbortReason) {
        self.aborted.with_label_values(&[reason.code()]).inc();
    }

    /// A submit this node's coordinator refused (not a `NoLeader`: that one
    /// is forwarded and counted where it lands).
    pub fn observe_refusal(&self, error: &RequestError) {
        self.submitted.inc();
        self.refused.with_label_values(&[request_error_code(error)]).inc();
    }

    /// A prepare answered by `shard`.
    pub fn observe_prepare(&self, shard: ShardId, yes: bool) {
        if let Some(counters) = self.shards.get(&shard) {
            if yes { &counters.prepares_yes } else { &counters.prepares_no }.inc();
        }
    }

    /// A hand-over of a group's leadership ended: `true` when the target
    /// leads now.
    pub fn observe_hand_over(&self, handed_over: bool) {
        if handed_over { &self.handed_over } else { &self.hand_overs_stopped }.inc();
    }

    /// (hand-overs that succeeded, hand-overs that stopped short) since
    /// this node started.
    pub fn hand_overs(&self) -> (u64, u64) {
        (self.handed_over.get(), self.hand_overs_stopped.get())
    }

    /// A decision acknowledged by `shard`.
    pub fn observe_decision(&self, shard: ShardId, commit: bool) {
        if let Some(counters) = self.shards.get(&shard) {
            if commit { &counters.decides_commit } else { &counters.decides_abort }.inc();
        }
    }
}

/// What [`NodeMetrics::totals`] returns (defined beside the status it
/// travels in).
pub use paytx_protocol::messages::OutcomeTotals;

/// A stable label for a refused submit.
pub fn request_error_code(error: &RequestError) -> &'static str {
    match error {
        RequestError::Invalid(_) => "invalid",
        RequestError::IdempotencyConflict { .. } => "idempotency_conflict",
        RequestError::NoLeader { .. } => "no_leader",
        RequestError::Overloaded { .. } => "overloaded",
        RequestError::Timeout { .. } => "timeout",
        RequestError::ShuttingDown => "shutting_down",
        RequestError::DiskFull { .. } => "disk_full",
        RequestError::InProgress { .. } => "in_progress",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paytx_protocol::{EntityKind, Outcome, TxnId};

    #[test]
    fn counts_outcomes_once_and_replays_apart() {
        let shard = ShardId { kind: EntityKind::Account, index: 0 };
        let metrics = NodeMetrics::new([shard]);
        let txn = TxnId { term: 1, node: 1, seq: 1 };
        metrics.observe_receipt(&TxnReceipt { txn, outcome: Outcome::Committed, replayed: false }, 0.003);
        metrics.observe_receipt(&TxnReceipt { txn, outcome: Outcome::Committed, replayed: true }, 0.001);
        let abort = Outcome::Aborted(AbortReason::PresumedAbort);
        metrics.observe_receipt(&TxnReceipt { txn, outcome: abort, replayed: false }, 0.001);
        metrics.observe_prepare(shard, true);
        metrics.observe_decision(shard, false);
        metrics.observe_refusal(&RequestError::ShuttingDown);
        metrics.observe_hand_over(true);
        metrics.observe_hand_over(false);
        metrics.observe_hand_over(false);
        assert_eq!(metrics.hand_overs(), (1, 2));
        let families = metrics.registry().gather();
        let value = |name: &str| -> f64 {
            families
                .iter()
                .filter(|f| f.name() == name)
                .flat_map(|f| f.get_metric().iter())
                .map(|m| m.get_counter().get_value())
                .sum()
        };
        assert_eq!(value("paytx_txns_submitted_total"), 4.0);
        assert_eq!(value("paytx_txns_committed_total"), 1.0);
        assert_eq!(value("paytx_txns_replayed_total"), 1.0);
        assert_eq!(value("paytx_txns_aborted_total"), 1.0);
        assert_eq!(value("paytx_shard_prepares_total"), 1.0);
        assert_eq!(value("paytx_shard_decisions_total"), 1.0);
        assert_eq!(value("paytx_leader_handovers_total"), 3.0);
        let latency = families.iter().find(|f| f.name() == "paytx_txn_commit_latency_seconds").expect("registered");
        assert_eq!(latency.get_metric()[0].get_histogram().get_sample_count(), 1, "replays are not latencies");
    }
}
