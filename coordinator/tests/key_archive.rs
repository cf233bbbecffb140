//! The key archive through the coordinator's state machine, on a disk:
//! keys of forgotten transactions survive a restart (snapshot + replay over
//! an archive that is ahead of the snapshot), reach a follower with the
//! snapshot it installs, and are deleted from disk once evicted — with no
//! answer changing on the way.

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use paytx_coordinator::archive::{KEYS_SPACE, TIMES_SPACE};
use paytx_coordinator::state_machine::{read_table, StateMachineStore};
use paytx_coordinator::table::{Command, CommandResult, Proposal, ProposalResult};
use paytx_coordinator::{NodeId, TypeConfig};
use paytx_protocol::messages::TxnState;
use paytx_protocol::{AccountId, Currency, IdempotencyKey, Money, Operation, Outcome, TxnId, TxnRequest};
use paytx_storage::{Disk, MemDisk, SharedDisk, SledDisk};
use std::sync::Arc;

const RETENTION_MS: u64 = 10_000;

fn log_id(index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn id(seq: u64) -> TxnId {
    TxnId { term: 1, node: 1, seq }
}

fn begin(seq: u64, key: &str) -> Command {
    let ops = vec![Operation::Credit { account: AccountId(1), amount: Money::new(1, Currency::CNY) }];
    let body_hash = TxnRequest::new(key, ops.clone()).body_hash();
    Command::Begin { txn: id(seq), key: IdempotencyKey::new(key), body_hash, ops, prepare_timeout_ms: 100 }
}

/// Entry `index`, stamped `log_time_ms`: runs transaction `seq` under
/// `key` to a commit and forgets it, after a retry of `retry` (a key used
/// earlier, or `None`).
fn entry(index: u64, log_time_ms: u64, seq: u64, key: &str, retry: Option<(u64, &str)>) -> Entry<TypeConfig> {
    let mut commands = vec![Command::Stamp { log_time_ms, key_retention_ms: RETENTION_MS }];
    if let Some((seq, key)) = retry {
        commands.push(begin(seq, key));
    }
    commands.extend([
        begin(seq, key),
        Command::Decide { txn: id(seq), key: None, outcome: Outcome::Committed },
        Command::Forget { txns: vec![id(seq)] },
    ]);
    Entry { log_id: log_id(index), payload: EntryPayload::Normal(Proposal { commands }) }
}

/// Nine entries, a second of log time apart. Keys k1..k9; entries 4 and 9
/// retry k1 with its first body (a replay within the retention at 4, a new
/// transaction at 9, when k1 is older than the retention).
fn entries() -> Vec<Entry<TypeConfig>> {
    (1..=9)
        .map(|n| {
            let retry = match n {
                4 => Some((100, "k1")),
                9 => Some((101, "k1")),
                _ => None,
            };
            entry(n, n * 1_000 + if n == 9 { RETENTION_MS } else { 0 }, n, &format!("k{n}"), retry)
        })
        .collect()
}

async fn apply(store: &mut StateMachineStore, entries: &[Entry<TypeConfig>]) -> Vec<ProposalResult> {
    store.apply(entries.to_vec()).await.expect("applies")
}

/// What the table says of every key the run used.
fn answers(store: &StateMachineStore) -> Vec<Option<(TxnId, TxnState)>> {
    let shared = store.shared();
    let state = read_table(&shared);
    (1..=9)
        .map(|n| {
            let view = state.table.status_of_key(&IdempotencyKey::new(format!("k{n}"))).expect("archive reads");
            view.map(|v| (v.txn, v.state))
        })
        .collect()
}

/// (archived versions, time-index records) on `disk`.
fn archive_records(disk: &dyn Disk) -> (usize, usize) {
    let keys = disk.range(KEYS_SPACE, &[], None).expect("reads").len();
    let times = disk.range(TIMES_SPACE, &[], None).expect("reads").len();
    (keys, times)
}

fn archived_versions(disk: &dyn Disk) -> usize {
    let (keys, times) = archive_records(disk);
    assert!(times <= keys && (keys == 0) == (times == 0), "{keys} versions listed by {times} time records");
    keys
}

/// Applies entries 1..=5, snapshots, applies 6..=9; then restarts from the
/// snapshot (after `restart`, which may lose what was not synced) and
/// replays 6..=9 over the archive: same results, same answers.
async fn restart_replays_the_same(disk: SharedDisk, reopen: impl FnOnce(SharedDisk) -> SharedDisk) {
    let all = entries();
    let mut store = StateMachineStore::open(disk.clone()).expect("opens");
    apply(&mut store, &all[..5]).await;
    store.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    let first = apply(&mut store, &all[5..]).await;
    // Entry 4's retry of k1 replays the first outcome; entry 9's (k1 older
    // than the retention) is a new transaction.
    let first_4 = apply(&mut StateMachineStore::open(Arc::new(MemDisk::new())).expect("opens"), &all[..4]).await;
    assert_eq!(
        first_4[3].results[1],
        CommandResult::Existing { txn: id(1), state: TxnState::Decided(Outcome::Committed) }
    );
    assert_eq!(first[3].results[1], CommandResult::Begun, "k1 is older than the retention: new");
    let before = answers(&store);
    assert_eq!(before[0].clone().map(|(txn, _)| txn), Some(id(101)), "k1 now names its second transaction");
    assert!(before[1].is_none(), "k2, retired at 2 s, is evicted at 19 s");
    assert!(before[8].is_some(), "k9 is kept");
    drop(store);

    let disk = reopen(disk);
    let mut reopened = StateMachineStore::open(disk.clone()).expect("reopens");
    let last = read_table(&reopened.shared()).last_applied;
    assert_eq!(last, Some(log_id(5)), "restored from the snapshot");
    let again = apply(&mut reopened, &all[5..]).await;
    assert_eq!(again, first, "the replay gets the results the first application got");
    assert_eq!(answers(&reopened), before);
}

#[tokio::test]
async fn a_restart_replays_over_an_archive_ahead_of_the_snapshot() {
    let disk = Arc::new(MemDisk::new());
    // No crash: the archive holds entries 6..=9's keys when the replay runs.
    restart_replays_the_same(disk.clone(), |d| d).await;
}

#[tokio::test]
async fn a_crash_loses_unsynced_archive_writes_and_the_replay_restores_them() {
    let disk = MemDisk::new();
    let crashed = disk.clone();
    restart_replays_the_same(Arc::new(disk), move |d| {
        crashed.crash();
        d
    })
    .await;
}

#[tokio::test]
async fn on_sled_the_archive_survives_closing_and_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_path_buf();
    let disk: SharedDisk = Arc::new(SledDisk::open(&path, true).expect("sled opens"));
    restart_replays_the_same(disk, move |d| {
        drop(d);
        Arc::new(SledDisk::open(&path, true).expect("sled reopens"))
    })
    .await;
}

#[tokio::test]
async fn a_follower_installs_the_archived_keys_with_the_snapshot() {
    let all = entries();
    let mut leader = StateMachineStore::open(Arc::new(MemDisk::new())).expect("opens");
    apply(&mut leader, &all[..8]).await;
    leader.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    let sent = leader.get_current_snapshot().await.expect("reads").expect("a snapshot");

    let follower_disk = Arc::new(MemDisk::new());
    let mut follower = StateMachineStore::open(follower_disk.clone()).expect("opens");
    follower.install_snapshot(&sent.meta, sent.snapshot).await.expect("installs");
    let at_snapshot = answers(&leader);
    assert_eq!(answers(&follower), at_snapshot, "the follower answers every key as the leader");
    assert!(answers(&follower)[0].is_some(), "k1 (a forgotten transaction's key) arrived with the snapshot");
    // And goes on in step: the next entry gives the same results on both.
    assert_eq!(apply(&mut follower, &all[8..]).await, apply(&mut leader, &all[8..]).await);
    assert_eq!(answers(&follower), answers(&leader));
    // The follower's disk holds the keys; its stored snapshot does not
    // repeat them (a restart of the follower still answers the same).
    drop(follower);
    let reopened = StateMachineStore::open(follower_disk).expect("reopens");
    assert_eq!(answers(&reopened), at_snapshot, "restored to the installed snapshot");
}

#[tokio::test]
async fn a_snapshot_deletes_evicted_keys_from_the_disk() {
    let all = entries();
    let disk = Arc::new(MemDisk::new());
    let mut store = StateMachineStore::open(disk.clone()).expect("opens");
    apply(&mut store, &all).await;
    let before = answers(&store);
    let held = archived_versions(disk.as_ref());
    // k1..k9 were archived (k1's second transaction is still live).
    assert_eq!(held, 9);
    store.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    // At log time 19 s, keys retired at 9 s or before are evicted: k1..k8
    // (retired at 1..8 s). Left: k9, retired at 19 s.
    assert_eq!(archived_versions(disk.as_ref()), 1, "evicted keys are gone from the disk");
    assert_eq!(answers(&store), before, "and no answer changed");
}

#[tokio::test]
async fn one_entry_lists_its_retired_keys_in_one_time_record() {
    let disk = Arc::new(MemDisk::new());
    let mut store = StateMachineStore::open(disk.clone()).expect("opens");
    let mut commands = vec![Command::Stamp { log_time_ms: 1_000, key_retention_ms: RETENTION_MS }];
    for seq in 1..=3 {
        commands.push(begin(seq, &format!("k{seq}")));
        commands.push(Command::Decide { txn: id(seq), key: None, outcome: Outcome::Committed });
    }
    commands.push(Command::Forget { txns: vec![id(1), id(2), id(3)] });
    let one = Entry { log_id: log_id(1), payload: EntryPayload::Normal(Proposal { commands }) };
    apply(&mut store, &[one]).await;
    assert_eq!(archive_records(disk.as_ref()), (3, 1), "three keys, one record by time");
    // Past the retention, the snapshot's collection deletes all three and
    // the record that listed them.
    let later = entry(2, 1_000 + RETENTION_MS, 9, "k9", None);
    apply(&mut store, &[later]).await;
    store.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    assert_eq!(archive_records(disk.as_ref()), (1, 1), "only k9 is left");
}
