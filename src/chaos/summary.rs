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
    pub faults_hitting_leader: u64,
    pub min_kills: u64,
    pub min_partitions: u64,
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
            "  faults injected      {total} ({} kills, {} partitions, {} hit the leader; minimums {} kills, {} partitions: {})",
            self.kills,
            self.partitions,
            self.faults_hitting_leader,
            self.min_kills,
            self.min_partitions,
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
    fn longest_gap_counts_the_edges_of_the_phase() {
        assert_eq!(longest_gap(&[], 5_000), (5_000, 0));
        assert_eq!(longest_gap(&[100, 200, 2_200, 2_300], 3_000), (2_000, 200));
        assert_eq!(longest_gap(&[4_000, 1_000], 4_500), (3_000, 1_000));
        // Commits after the phase (while settling) do not count.
        assert_eq!(longest_gap(&[500, 9_000], 1_000), (500, 0));
    }
}
