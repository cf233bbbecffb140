//! Corrupt and truncated data files of a crashed node, through real
//! `paytx node` processes on real sled files.
//!
//! A node commits payments and is killed with SIGKILL (no clean close: sled
//! must recover from its log). Then, on copies of its data directory, bytes
//! of sled's log are flipped or the log is truncated, or the durable
//! watermark is deleted or damaged, and the node is started again. Every
//! outcome must be one of: it starts and serves *every* committed payment,
//! or it refuses to start — exits non-zero with an error naming the file
//! (or the keyspace and key). Never a node that serves with committed data
//! missing: sled 0.34.7 alone would do exactly that (it truncates its log at
//! the first bad message; see storage/tests/sled_corruption.rs), and the
//! durable watermark is what catches it.
#![cfg(unix)]

mod single_node;

use paytx::protocol::AccountId;
use paytx::{Client, ClientConfig};
use single_node::{commit, config, open_ops, transfer, NodeProcess};
use std::path::Path;
use std::time::{Duration, Instant};

const PAYMENTS: i64 = 40;
const AMOUNT: i64 = 7;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a directory");
    for entry in std::fs::read_dir(from).expect("read a directory") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)
        } else {
            std::fs::copy(entry.path(), target).expect("copy a file");
        }
    }
}

/// A named way to damage a copy of the data directory.
type Damage = (String, Box<dyn Fn(&Path)>);

#[derive(Debug)]
enum Outcome {
    /// Started and serves every committed payment.
    Intact,
    /// Refused to start; the error line it printed.
    Refused(String),
}

/// Starts a node on `data` and classifies what it does (bounded).
async fn start_on(dir: &Path, data: &Path, name: &str) -> Outcome {
    let mut config = config(dir);
    config.data_dir = data.to_path_buf();
    let mut node = NodeProcess::spawn(dir, &config, name);
    let deadline = Instant::now() + Duration::from_secs(30);
    let quick = ClientConfig { request_timeout_ms: 1_000, max_retries: 0, ..ClientConfig::default() };
    loop {
        if let Some(status) = node.wait(Duration::from_millis(100)) {
            assert!(!status.success(), "{name}: a refusing node must exit non-zero");
            let log = node.log_text();
            let line = log.lines().find(|l| l.starts_with("error:")).unwrap_or_default().to_string();
            assert!(!line.is_empty(), "{name}: no error line in the log:\n{log}");
            return Outcome::Refused(line);
        }
        if let Ok(client) = Client::connect_with(vec![node.addr()], quick.clone()).await {
            if let Ok(Some(view)) = client.account(AccountId(2)).await {
                // It serves: then every committed payment must be there.
                assert_eq!(view.balance_minor, PAYMENTS * AMOUNT, "{name}: started with committed payments missing");
                let payer = client.account(AccountId(1)).await.expect("read").expect("account 1 exists");
                assert_eq!(payer.balance_minor, 100_000 - PAYMENTS * AMOUNT, "{name}");
                return Outcome::Intact;
            }
        }
        assert!(Instant::now() < deadline, "{name}: neither served nor exited within 30 s\n{}", node.log_text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_directory_either_recovers_everything_committed_or_refuses_naming_the_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = config(dir.path());
    let mut node = NodeProcess::spawn(dir.path(), &config, "original");
    let client = single_node::client(node.addr()).await;
    commit(&client, "open", open_ops(&[(1, 100_000), (2, 0)])).await;
    for i in 0..PAYMENTS {
        commit(&client, &format!("pay-{i}"), transfer(1, 2, AMOUNT)).await;
    }
    node.kill_9();
    let crashed = config.data_dir.clone();
    let db = crashed.join("db");
    let db_len = std::fs::metadata(&db).expect("sled's log file").len() as usize;

    // Undamaged: the crash alone loses nothing committed.
    let copy = dir.path().join("undamaged");
    copy_dir(&crashed, &copy);
    assert!(matches!(start_on(dir.path(), &copy, "undamaged").await, Outcome::Intact));

    let mut outcomes = Vec::new();
    let damages: Vec<Damage> = {
        let mut damages: Vec<Damage> = Vec::new();
        for step in 1..=6 {
            let offset = db_len * step / 7;
            damages.push((
                format!("flip-db-{offset}"),
                Box::new(move |data: &Path| {
                    let path = data.join("db");
                    let mut bytes = std::fs::read(&path).expect("read db");
                    bytes[offset] ^= 0xff;
                    std::fs::write(&path, bytes).expect("write db");
                }),
            ));
        }
        for step in [2, 5] {
            let offset = db_len * step / 7;
            damages.push((
                format!("truncate-db-{offset}"),
                Box::new(move |data: &Path| {
                    let file = std::fs::OpenOptions::new().write(true).open(data.join("db")).expect("open db");
                    file.set_len(offset as u64).expect("truncate db");
                }),
            ));
        }
        damages.push((
            "delete-watermark".into(),
            Box::new(|data: &Path| std::fs::remove_file(data.join("durable-watermark")).expect("delete")),
        ));
        damages.push((
            "zero-watermark".into(),
            Box::new(|data: &Path| std::fs::write(data.join("durable-watermark"), [0u8; 64]).expect("write")),
        ));
        damages
    };
    for (name, damage) in &damages {
        let copy = dir.path().join(name);
        copy_dir(&crashed, &copy);
        damage(&copy);
        let outcome = start_on(dir.path(), &copy, name).await;
        if let Outcome::Refused(line) = &outcome {
            // The error names the damaged file (or the data directory and
            // keyspace/key sled or the journal reported).
            assert!(line.contains(&copy.display().to_string()), "{name}: the error names no file: {line}");
        }
        println!("{name}: {outcome:?}");
        outcomes.push((name.clone(), outcome));
    }
    for name in ["delete-watermark", "zero-watermark"] {
        let (_, outcome) = outcomes.iter().find(|(n, _)| n == name).expect("ran");
        assert!(matches!(outcome, Outcome::Refused(line) if line.contains("durable-watermark")), "{name}: {outcome:?}");
    }
    let refused = outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Refused(_))).count();
    assert!(refused >= 4, "damage to sled's log should mostly be caught: {outcomes:?}");
}
