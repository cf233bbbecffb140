//! Release-build campaigns keep the protocol's invariant checks: protocol
//! code checks its invariants with `assert!` (on in every build, in a
//! `paytx node` too: a broken invariant stops the node rather than letting
//! it carry on), never with `debug_assert!` or `cfg!(debug_assertions)`,
//! which a `--release` campaign would compile out. The one exception is a
//! full O(n) bookkeeping scan on the request path, whose O(1) part is an
//! `assert!` beside it.

mod common;

use common::rust_files;
use std::path::Path;

/// `(file, text of the line)` allowed to stay debug-only.
const ALLOWED: [(&str, &str); 1] = [(
    "coordinator/src/engine.rs",
    r#"debug_assert!(self.finishing.iter().all(|txn| self.txns.contains_key(txn)), "finishing ⊆ txns");"#,
)];

#[test]
fn protocol_invariants_are_checked_in_every_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for krate in ["protocol", "storage", "participants", "coordinator", "node"] {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        assert!(!files.is_empty(), "{krate}/src has Rust files");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let name = file.strip_prefix(&root).unwrap_or(&file).to_string_lossy().replace('\\', "/");
            for line in text.lines().map(str::trim) {
                let debug_only = line.contains("debug_assert") || line.contains("debug_assertions");
                if debug_only && !line.starts_with("//") && !ALLOWED.contains(&(name.as_str(), line)) {
                    found.push(format!("{name}: {line}"));
                }
            }
        }
    }
    assert!(found.is_empty(), "debug-only invariant checks (a --release campaign drops them):\n{}", found.join("\n"));
}
