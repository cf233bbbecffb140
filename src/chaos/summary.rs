//! What a chaos run reports: the faults injected, the transactions, the
//! longest stretch without a commit, and the invariants — for people and
//! (`--json`) for scripts.

use crate::chaos::check::{InvariantResult, Outcomes};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One injected fault, as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// When it was injected, from the start of the fault phase.
    pub at_ms: u64,
    pub kind: &'static str,
    /// Which nodes or links, resolved at injection time.
    pub detail: String,
    pub hold_ms: u64,
    /// The coordinator leader when the fault began, if one was known.
    pub leader: Option<u64>,
    /// The fault hit the leader (killed, paused, isolated or cut off from it).
    pub hit_leader: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub passed: bool,
    pub seed: u64,
    pub nodes: u64,
    pub planned_fault_secs: u64,
    pub elapsed_secs: f64,
    /// The command that replays this fault schedule.
    pub rerun: String,
    pub faults_by_kind: BTreeMap<&'static str, u64>,
    pub kills: u64,
    pub partitions: u64,
    /// Nodes killed with their data directory deleted, then restarted empty.
    pub wipes: u64,
    pub faults_hitting_leader: u64,
    pub min_kills: u64,
    pub min_partitions: u64,
    pub min_wipes: u64,
    pub minimums_met: bool,
    pub transactions: Outcomes,
    /// Longest stretch of the fault phase without an acknowledged commit.
    pub longest_no_commit_ms: u64,
    pub longest_no_commit_from_ms: u64,
    pub settled: bool,
    pub settle_ms: u64,
    pub invariants: Vec<InvariantResult>,
    /// Kept data and logs (on failure, or when `--data-dir` was given).
    pub data_dir: Option<String>,
    pub fault_log: Vec<FaultRecord>,
    /// When each acknowledged commit came back (for `--timeline`), and the
    /// end of the fault phase, both from its start.
    #[serde(skip)]
    pub commit_times_ms: Vec<u64>,
    #[serde(skip)]
    pub abort_times_ms: Vec<u64>,
    /// The coordinator leader as the acknowledged transactions show it
    /// (`(at_ms, node)` at each change).
    #[serde(skip)]
    pub leaders_seen: Vec<(u64, u64)>,
    /// Each shard group's leader as the harness saw it every 500 ms.
    #[serde(skip)]
    pub shard_leaders: crate::chaos::runner::ShardLeaderLog,
    #[serde(skip)]
    pub faults_end_ms: u64,
}

/// The first `node N` a fault's detail names (0: none).
fn node_in(detail: &str) -> u64 {
    detail
        .split("node ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

impl Summary {
    /// The run as a timeline: commits and aborts per `interval_ms`; the
    /// leader as the acknowledged transactions show it, and as each fault
    /// found it; each fault on the row of the node it names and its heal.
    pub fn timeline(&self, interval_ms: u64) -> crate::plot::SimTimeline {
        let interval_ms = interval_ms.max(1);
        let last = self.commit_times_ms.iter().chain(&self.abort_times_ms).copied().max().unwrap_or(0);
        let end_ms = self.faults_end_ms.max(last);
        let buckets = (end_ms / interval_ms) as usize + 1;
        let per_interval = |times: &[u64]| {
            let mut counts = vec![0u64; buckets];
            for at in times {
                if let Some(bucket) = counts.get_mut((*at / interval_ms) as usize) {
                    *bucket += 1;
                }
            }
            counts
        };
        let mut faults = Vec::new();
        // Both sources of the leader, in time order; a repeat is no change.
        let mut seen: Vec<(u64, u64)> = self.leaders_seen.clone();
        for record in &self.fault_log {
            let node = node_in(&record.detail);
            faults.push(crate::plot::FaultMark { at_ms: record.at_ms, kind: record.kind, node });
            faults.push(crate::plot::FaultMark { at_ms: record.at_ms + record.hold_ms, kind: "heal", node: 0 });
            seen.extend(record.leader.map(|node| (record.at_ms, node)));
        }
        seen.sort_by_key(|(at_ms, _)| *at_ms);
        let mut leader: Vec<(u64, u64)> = Vec::new();
        for (at_ms, node) in seen {
            if leader.last().map(|(_, n)| *n) != Some(node) {
                leader.push((at_ms, node));
            }
        }
        crate::plot::SimTimeline {
            interval_ms,
            commits: per_interval(&self.commit_times_ms),
            aborts: per_interval(&self.abort_times_ms),
            leader,
            shard_leaders: self.shard_leaders.clone(),
            faults,
            nodes: self.nodes,
            end_ms,
        }
    }
}

/// Longest gap between consecutive commits within `[0, end_ms]`, with
/// where it starts: `(gap_ms, from_ms)`.
pub fn longest_gap(commit_times_ms: &[u64], end_ms: u64) -> (u64, u64) {
    let mut times: Vec<u64> = commit_times_ms.iter().copied().filter(|t| *t <= end_ms).collect();
    times.sort_unstable();
    let mut best = (0, 0);
    let mut previous = 0;
    for t in times.into_iter().chain(std::iter::once(end_ms)) {
        if t - previous > best.0 {
            best = (t - previous, previous);
        }
        previous = t;
    }
    best
}

impl Summary {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(out, "paytx chaos — {verdict}: {} nodes, seed {}", self.nodes, self.seed);
        let _ = writeln!(out, "  rerun                {}", self.rerun);
        let _ = writeln!(
            out,
            "  time                 {:.1} s ({} s of planned faults)",
            self.elapsed_secs, self.planned_fault_secs
        );
        let total: u64 = self.faults_by_kind.values().sum();
        let _ = writeln!(
            out,
            "  faults injected      {total} ({} kills, {} partitions, {} wipes, {} hit the leader; \
             minimums {} kills, {} partitions, {} wipes: {})",
            self.kills,
            self.partitions,
            self.wipes,
            self.faults_hitting_leader,
            self.min_kills,
            self.min_partitions,
            self.min_wipes,
            if self.minimums_met { "met" } else { "NOT MET" }
        );
        for (kind, count) in &self.faults_by_kind {
            let _ = writeln!(out, "    {kind:<26} {count}");
        }
        let t = &self.transactions;
        let _ = writeln!(out, "  transactions");
        let _ = writeln!(out, "    attempted                {} ({} submits, retries included)", t.attempted, t.submits);
        let _ = writeln!(out, "    acknowledged             {}", t.acknowledged);
        let _ = writeln!(out, "    committed                {}", t.committed);
        let _ = writeln!(out, "    aborted                  {}", t.aborted);
        for (reason, count) in &t.aborted_by_reason {
            let _ = writeln!(out, "      {reason:<24} {count}");
        }
        let _ = writeln!(out, "    unknown, resolved by key {}", t.resolved_later);
        let _ = writeln!(out, "    unknown, never begun     {}", t.never_registered);
        let _ = writeln!(out, "    deliberate resubmits     {}", t.duplicates_sent);
        let _ = writeln!(
            out,
            "  longest without commit {:.1} s (from {:.1} s)",
            self.longest_no_commit_ms as f64 / 1000.0,
            self.longest_no_commit_from_ms as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "  settled after healing  {} in {:.1} s",
            if self.settled { "yes" } else { "NO" },
            self.settle_ms as f64 / 1000.0
        );
        let _ = writeln!(out, "  invariants");
        for invariant in &self.invariants {
            if invariant.ok() {
                let _ = writeln!(out, "    [ok]     {}", invariant.description);
            } else {
                let _ = writeln!(out, "    [FAILED] {} — {} violation(s)", invariant.description, invariant.violations);
                for example in &invariant.examples {
                    let _ = writeln!(out, "             {example}");
                }
            }
        }
        if let Some(dir) = &self.data_dir {
            let _ = writeln!(out, "  data and node logs   {dir}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_buckets_commits_and_aborts_and_merges_both_views_of_the_leader() {
        let fault = |at_ms, leader| FaultRecord {
            at_ms,
            kind: "kill_leader",
            detail: "node 2".into(),
            hold_ms: 500,
            leader,
            hit_leader: true,
        };
        let summary = Summary {
            passed: true,
            seed: 1,
            nodes: 3,
            planned_fault_secs: 3,
            elapsed_secs: 3.0,
            rerun: String::new(),
            faults_by_kind: BTreeMap::new(),
            kills: 1,
            partitions: 0,
            wipes: 0,
            faults_hitting_leader: 1,
            min_kills: 0,
            min_partitions: 0,
            min_wipes: 0,
            minimums_met: true,
            transactions: Outcomes::default(),
            longest_no_commit_ms: 0,
            longest_no_commit_from_ms: 0,
            settled: true,
            settle_ms: 0,
            invariants: Vec::new(),
            data_dir: None,
            fault_log: vec![fault(1_000, Some(2))],
            commit_times_ms: vec![100, 200, 1_900, 2_100],
            abort_times_ms: vec![1_100, 1_200, 1_300],
            // Node 1 led, the fault found node 2 leading, node 3 took over.
            leaders_seen: vec![(100, 1), (1_900, 3), (2_100, 3)],
            shard_leaders: BTreeMap::from([("account/0".to_string(), vec![(0, 2), (1_500, 1)])]),
            faults_end_ms: 2_500,
        };
        let timeline = summary.timeline(1_000);
        assert_eq!(timeline.commits, vec![2, 1, 1]);
        assert_eq!(timeline.aborts, vec![0, 3, 0]);
        assert_eq!(timeline.leader, vec![(100, 1), (1_000, 2), (1_900, 3)]);
        assert_eq!(timeline.faults.len(), 2, "the fault and its heal");
        assert_eq!(timeline.end_ms, 2_500);
        assert_eq!(timeline.shard_leaders, summary.shard_leaders, "the shard groups' leaders as watched");
    }

    #[test]
    fn longest_gap_counts_the_edges_of_the_phase() {
        assert_eq!(longest_gap(&[], 5_000), (5_000, 0));
        assert_eq!(longest_gap(&[100, 200, 2_200, 2_300], 3_000), (2_000, 200));
        assert_eq!(longest_gap(&[4_000, 1_000], 4_500), (3_000, 1_000));
        // Commits after the phase (while settling) do not count.
        assert_eq!(longest_gap(&[500, 9_000], 1_000), (500, 0));
    }
}
