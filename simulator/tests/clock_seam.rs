//! Every timer of a node runs on its node's clock (`paytx_protocol::clock`):
//! a tokio or actix timer in protocol code would fire on the run's shared
//! virtual clock, so a paused node would still time out, retry and
//! campaign, and a drifting one would not drift. This scans the protocol
//! crates for timers that bypass the seam.

mod common;

use common::rust_files;
use std::path::Path;

/// Calls that start a timer on tokio's (or actix's) clock directly, or read
/// the wall clock (log time comes from `NodeClock::unix_ms`).
const BYPASSES: [&str; 8] = [
    "SystemTime::now",
    "tokio::time::sleep",
    "tokio::time::timeout",
    "tokio::time::interval",
    "actix_rt::time::",
    ".run_later(",
    ".run_interval(",
    "ctx.notify_later(",
];

/// The seam itself, built on tokio's timers.
const SEAM: &str = "protocol/src/clock.rs";

#[test]
fn protocol_timers_run_on_the_node_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for krate in ["protocol", "raft", "participants", "coordinator", "node"] {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        assert!(!files.is_empty(), "{krate}/src has Rust files");
        for file in files {
            let name = file.strip_prefix(&root).unwrap_or(&file).to_string_lossy().replace('\\', "/");
            let test_file = name.ends_with("tests.rs") || name.contains("/tests/");
            if name == SEAM || test_file {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            // Unit tests (after the file's `#[cfg(test)]`) may use tokio's
            // clock: they run no simulated node.
            for line in text.lines().map(str::trim).take_while(|line| !line.starts_with("#[cfg(test)]")) {
                if !line.starts_with("//") && BYPASSES.iter().any(|bypass| line.contains(bypass)) {
                    found.push(format!("{name}: {line}"));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "timers that bypass the node's clock (use its NodeClock / ClockTimers):\n{}",
        found.join("\n")
    );
}
