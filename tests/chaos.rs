//! `paytx chaos` end to end, short: real `paytx node` processes behind the
//! fault-injecting proxies, every kind of fault, then the Jepsen-bank check
//! through the client API. And the check's teeth: a run with one transfer
//! committed behind its back must fail, naming the seed (a seed above 2^63:
//! node configs are TOML, whose integers are i64).
#![cfg(unix)]

use serde_json::Value;
use std::process::Command;

const PAYTX: &str = env!("CARGO_BIN_EXE_paytx");

/// Runs `paytx chaos --json` with `args`; (exit code, summary, stderr).
fn chaos(args: &[&str]) -> (Option<i32>, Value, String) {
    let output = Command::new(PAYTX).arg("chaos").arg("--json").args(args).output().expect("run paytx chaos");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let summary: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    (output.status.code(), summary, stderr)
}

fn count(summary: &Value, field: &str) -> u64 {
    summary[field].as_u64().unwrap_or_else(|| panic!("{field} missing: {summary:#}"))
}

#[test]
fn a_short_chaos_run_injects_every_kind_of_fault_and_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let timeline = dir.path().join("chaos.svg");
    let timeline_arg = timeline.display().to_string();
    let (code, summary, stderr) = chaos(&[
        "--duration-secs",
        "50",
        "--seed",
        "7",
        "--min-kills",
        "2",
        "--min-partitions",
        "2",
        "--min-wipes",
        "1",
        "--timeline",
        &timeline_arg,
    ]);
    assert_eq!(code, Some(0), "the run failed:\n{summary:#}\nstderr:\n{stderr}");
    // The timeline: SVG, lines for commits, aborts, the coordinator's
    // leader and each shard group's, a marker series per kind of fault
    // injected.
    let svg = std::fs::read_to_string(&timeline).expect("the timeline is written");
    let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("the timeline is not XML: {e}"));
    assert!(doc.descendants().filter(|n| n.has_tag_name("polyline")).count() >= 2);
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_string())
        .collect();
    for kind in summary["faults_by_kind"].as_object().expect("kinds").keys() {
        assert!(texts.contains(kind), "{kind} in the timeline's legend: {texts:?}");
    }
    assert!(texts.iter().any(|t| t == "aborts"), "aborts in the legend: {texts:?}");
    for group in ["accounts/0 leader", "orders/0 leader", "channels/0 leader", "records/0 leader"] {
        assert!(texts.iter().any(|t| t == group), "{group} in the legend: {texts:?}");
    }
    assert_eq!(summary["passed"], true);
    assert_eq!(summary["seed"], 7);
    assert!(count(&summary, "kills") >= 2, "{summary:#}");
    assert!(count(&summary, "partitions") >= 2, "{summary:#}");
    // A node killed, its data directory deleted, restarted empty: it
    // rejoined, and the checks below found nothing acknowledged lost.
    assert_eq!(count(&summary, "wipes"), 1, "{summary:#}");
    let kinds = &summary["faults_by_kind"];
    for kind in ["pause", "slow_links"] {
        assert!(kinds[kind].as_u64().unwrap_or(0) >= 1, "no {kind} injected: {kinds}");
    }
    assert!(count(&summary, "faults_hitting_leader") >= 1, "{summary:#}");
    let txns = &summary["transactions"];
    assert!(txns["committed"].as_u64().unwrap_or(0) >= 100, "the workload made progress: {txns}");
    assert!(txns["duplicates_sent"].as_u64().unwrap_or(0) >= 1, "idempotent resubmits were exercised: {txns}");
    let invariants = summary["invariants"].as_array().expect("invariants listed");
    assert!(invariants.len() >= 10);
    for invariant in invariants {
        assert_eq!(invariant["violations"], 0, "{invariant}");
    }
    assert!(summary["data_dir"].is_null(), "the temporary directory is removed on success");
}

#[test]
fn a_transfer_committed_behind_the_checks_back_fails_the_run() {
    let (code, summary, stderr) =
        chaos(&["--duration-secs", "25", "--seed", "18446744073709551557", "--concurrency", "4", "--tamper"]);
    assert_eq!(code, Some(1), "a violated invariant exits 1:\n{summary:#}\nstderr:\n{stderr}");
    assert_eq!(summary["passed"], false);
    let invariant = |name: &str| {
        summary["invariants"]
            .as_array()
            .and_then(|all| all.iter().find(|i| i["name"] == name))
            .unwrap_or_else(|| panic!("{name} listed"))
            .clone()
    };
    assert!(invariant("all_or_nothing")["violations"].as_u64().unwrap_or(0) >= 1, "{summary:#}");
    assert_eq!(invariant("total_unchanged")["violations"], 0, "a transfer moves money, it does not mint it");
    assert!(summary["rerun"].as_str().is_some_and(|r| r.contains("--seed 18446744073709551557")), "{summary:#}");
    // Kept for a post-mortem; removed here.
    let dir = summary["data_dir"].as_str().expect("the data directory is kept on failure");
    assert!(std::path::Path::new(dir).join("node-1.log").exists(), "node logs are kept in {dir}");
    std::fs::remove_dir_all(dir).expect("remove the kept directory");
}
