//! The record store over a real embedded cluster (TCP on loopback, sled on
//! disk): unique claims, compare-and-set, records and money in one 2PC
//! transaction, namespace scans across shards, and a whole-cluster restart.

mod common;

use common::*;
use paytx::protocol::messages::RecordView;
use paytx::protocol::ops::MAX_RECORD_VALUE_BYTES;
use paytx::protocol::{
    AbortReason, AccountId, EntityKey, EntityKind, InvalidRequest, Operation, Outcome, RecordExpect, RecordKey,
    RequestError, TxnRequest,
};
use paytx::{ClientError, ClusterOptions};
use std::collections::BTreeSet;

const USERS: u16 = 7;
const NONCES: u16 = 8;

fn put(key: RecordKey, value: &[u8], expect: RecordExpect) -> Operation {
    Operation::PutRecord { key, value: Some(value.to_vec()), expect }
}

fn abort_code(outcome: &Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::Aborted(reason) => Some(reason.code()),
        Outcome::Committed => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_cas_and_money_commit_together_or_not_at_all() {
    let (cluster, client) = start(test_options()).await;
    let alice = RecordKey::new(USERS, b"alice");

    // Claim a key; a second claim of it aborts, leaving the first intact.
    let claimed = submit(&client, "claim-alice", vec![put(alice, b"v1", RecordExpect::Absent)]).await;
    assert!(claimed.outcome.is_committed(), "{claimed:?}");
    let again = submit(&client, "claim-alice-again", vec![put(alice, b"other", RecordExpect::Absent)]).await;
    assert_eq!(again.outcome, Outcome::Aborted(AbortReason::RecordExists { key: alice }));
    let view = client.get_record(alice).await.expect("read").expect("claimed");
    assert_eq!(view, RecordView { key: alice, version: 1, value: b"v1".to_vec() });

    // A claim together with a debit the account cannot pay: neither applies.
    let payer = open(&client, "open-payer", std::iter::once(1), 100).await[0];
    let merchant = open(&client, "open-merchant", std::iter::once(2), 0).await[0];
    let bob = RecordKey::new(USERS, b"bob");
    let too_much = vec![
        put(bob, b"bob", RecordExpect::Absent),
        Operation::Debit { account: payer, amount: cny(500) },
        Operation::Credit { account: merchant, amount: cny(500) },
    ];
    let receipt = submit(&client, "claim-bob-and-overpay", too_much).await;
    assert_eq!(abort_code(&receipt.outcome), Some("insufficient_funds"), "{receipt:?}");
    assert_eq!(client.get_record(bob).await.expect("read"), None, "the claim did not apply");
    let payer_view = client.account(payer).await.expect("read").expect("exists");
    assert_eq!((payer_view.balance_minor, payer_view.held_minor), (100, 0), "nor did the debit");
    // The same with funds: both apply.
    let affordable = vec![
        put(bob, b"bob", RecordExpect::Absent),
        Operation::Debit { account: payer, amount: cny(60) },
        Operation::Credit { account: merchant, amount: cny(60) },
    ];
    assert!(submit(&client, "claim-bob-and-pay", affordable).await.outcome.is_committed());
    assert_eq!(client.get_record(bob).await.expect("read").map(|r| r.version), Some(1));
    let payer_view = client.account(payer).await.expect("read").expect("exists");
    assert_eq!(payer_view.balance_minor, 40);
    let deltas: Vec<(i64, i64)> = payer_view.recent.iter().map(|e| (e.delta_minor, e.balance_after_minor)).collect();
    assert_eq!(deltas, vec![(-60, 40), (100, 100)], "recent entries, newest first, the opening included");

    // Compare-and-set: the right version wins, a stale one aborts.
    let cas = submit(&client, "cas-alice-1", vec![put(alice, b"v2", RecordExpect::Version(1))]).await;
    assert!(cas.outcome.is_committed(), "{cas:?}");
    let stale = submit(&client, "cas-alice-stale", vec![put(alice, b"v3", RecordExpect::Version(1))]).await;
    assert_eq!(
        stale.outcome,
        Outcome::Aborted(AbortReason::RecordVersionMismatch { key: alice, expected: 1, actual: Some(2) })
    );
    let view = client.get_record(alice).await.expect("read").expect("exists");
    assert_eq!((view.version, view.value.as_slice()), (2, &b"v2"[..]));
    // A CAS on a missing record aborts too; a delete removes the record.
    let carol = RecordKey::new(USERS, b"carol");
    let missing = submit(&client, "cas-carol", vec![put(carol, b"x", RecordExpect::Version(1))]).await;
    assert_eq!(abort_code(&missing.outcome), Some("record_version_mismatch"));
    // A value over the limit is refused before anything runs.
    let huge = put(carol, &vec![b'x'; MAX_RECORD_VALUE_BYTES + 1], RecordExpect::Any);
    let err = client.submit(TxnRequest::new("too-large", vec![huge])).await.expect_err("too large");
    assert!(matches!(err, ClientError::Request(RequestError::Invalid(InvalidRequest::RecordTooLarge { .. }))), "{err}");
    let delete = Operation::PutRecord { key: alice, value: None, expect: RecordExpect::Version(2) };
    assert!(submit(&client, "delete-alice", vec![delete]).await.outcome.is_committed());
    assert_eq!(client.get_record(alice).await.expect("read"), None);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_scans_cover_every_shard_and_records_survive_a_whole_cluster_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Three records shards (the default has one with three replicas), so
    // that a scan spans several.
    let options = ClusterOptions {
        data_dir: Some(dir.path().to_path_buf()),
        shards_per_kind: std::num::NonZeroUsize::new(3),
        ..test_options()
    };
    let (cluster, client) = start(options.clone()).await;
    let shards = cluster.config(1).expect("node 1").shards.clone();
    assert_eq!(shards.records.len(), 3);

    // 40 users and 10 nonces, written ten to a transaction (several shards each).
    let users: Vec<RecordKey> = (0..40).map(|i| RecordKey::new(USERS, format!("user-{i}").as_bytes())).collect();
    let nonces: Vec<RecordKey> = (0..10).map(|i| RecordKey::new(NONCES, format!("nonce-{i}").as_bytes())).collect();
    for (batch, keys) in users.chunks(10).chain(nonces.chunks(10)).enumerate() {
        let ops = keys.iter().map(|key| put(*key, &key.digest[..4], RecordExpect::Absent)).collect();
        let receipt = submit(&client, &format!("batch-{batch}"), ops).await;
        assert!(receipt.outcome.is_committed(), "{receipt:?}");
    }
    let used: BTreeSet<u32> = users.iter().map(|k| shards.shard_of(EntityKey::Record(*k)).index).collect();
    assert!(used.len() > 1, "the users are spread over several shards");

    let scanned = client.scan_namespace(USERS, 1_000).await.expect("scan");
    let scanned_keys: BTreeSet<RecordKey> = scanned.iter().map(|r| r.key).collect();
    assert_eq!(scanned.len(), users.len(), "each record once");
    assert_eq!(scanned_keys, users.iter().copied().collect::<BTreeSet<_>>(), "every user, no nonce");
    assert!(scanned.iter().all(|r| r.version == 1 && r.value == r.key.digest[..4]));
    assert_eq!(client.scan_namespace(USERS, 5).await.expect("scan").len(), 5, "bounded by max_records");
    assert_eq!(client.scan_namespace(NONCES, 1_000).await.expect("scan").len(), 10);
    // A page of one shard, and a shard that does not exist.
    let page = client.scan_records(0, USERS, None, 2).await.expect("page");
    assert_eq!(page.shard_count, 3);
    assert!(page.records.len() <= 2 && page.records.iter().all(|r| r.key.ns == USERS));
    let err = client.scan_records(3, USERS, None, 10).await.expect_err("shard 3 of 3");
    assert!(
        matches!(
            err,
            ClientError::Request(RequestError::Invalid(InvalidRequest::RecordShardOutOfRange {
                shard: 3,
                shard_count: 3
            }))
        ),
        "{err}"
    );
    // One more write to a user, so the restart has a version above 1 to keep.
    let cas = submit(&client, "cas-user-0", vec![put(users[0], b"renamed", RecordExpect::Version(1))]).await;
    assert!(cas.outcome.is_committed());
    let status = client.node_status().await.expect("status");
    assert!(status.shards.iter().any(|s| s.shard.kind == EntityKind::Record && s.entities > 0));
    let before = client.scan_namespace(USERS, 1_000).await.expect("scan");
    let account = open(&client, "open", std::iter::once(9), 70).await[0];
    let account_before = client.account(account).await.expect("read").expect("exists");
    drop(client);
    cluster.shutdown().await;

    let (cluster, client) = start(options).await;
    assert_eq!(client.scan_namespace(USERS, 1_000).await.expect("scan"), before, "every record identical");
    let user0 = client.get_record(users[0]).await.expect("read").expect("exists");
    assert_eq!((user0.version, user0.value.as_slice()), (2, &b"renamed"[..]));
    assert_eq!(client.account(AccountId(9)).await.expect("read"), Some(account_before), "entries survive too");
    // The claims are still claimed.
    let again = TxnRequest::new("claim-user-1-again", vec![put(users[1], b"x", RecordExpect::Absent)]);
    let receipt = client.submit(again).await.expect("submit");
    assert_eq!(receipt.outcome, Outcome::Aborted(AbortReason::RecordExists { key: users[1] }));
    cluster.shutdown().await;
}

/// Ordered keys over real nodes: each partition on one shard, range reads
/// in order both ways with cursors (forwarded to the owning node), entries
/// counted as records, the order kept across a whole-cluster restart, and a
/// range read of a hashed namespace refused with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_of_ordered_partitions_over_real_nodes() {
    use paytx::protocol::ids::{sort_key, sort_key_parts, FIRST_ORDERED_NS};
    use paytx::protocol::{Partition, RangeScan};
    let dir = tempfile::tempdir().expect("temp dir");
    let options = ClusterOptions { data_dir: Some(dir.path().to_path_buf()), ..test_options() };
    let (cluster, client) = start(options.clone()).await;
    let shards = cluster.config(1).expect("node 1").shards.clone();
    let partitions: Vec<Partition> =
        (0..4).map(|m| Partition::new(FIRST_ORDERED_NS, format!("merchant-{m}").as_bytes()).unwrap()).collect();
    // 30 entries per partition, written out of order, three partitions per transaction.
    let times: Vec<u64> = (0..30u64).map(|i| (i * 7) % 30).collect();
    for (batch, chunk) in times.chunks(10).enumerate() {
        let ops = partitions
            .iter()
            .flat_map(|p| {
                chunk.iter().map(move |t| put(p.key(sort_key(*t, *t)), &t.to_be_bytes(), RecordExpect::Absent))
            })
            .collect();
        let receipt = submit(&client, &format!("entries-{batch}"), ops).await;
        assert!(receipt.outcome.is_committed(), "{receipt:?}");
    }
    for partition in &partitions {
        let owners: BTreeSet<u32> =
            (0..30).map(|t| shards.shard_of(EntityKey::Record(partition.key(sort_key(t, t)))).index).collect();
        assert_eq!(owners.len(), 1, "a partition lives on one shard");
    }
    let walk = |partition: Partition, descending: bool, from: u64, to: u64| {
        let client = client.clone();
        async move {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let scan = RangeScan {
                    partition,
                    from: sort_key(from, 0),
                    to: sort_key(to, u64::MAX),
                    descending,
                    after,
                    limit: 4,
                };
                let page = client.scan_range(scan).await.expect("a range read");
                assert!(page.records.len() <= 4);
                assert!(page.records.iter().all(|r| r.key.partition() == Some(partition)));
                seen.extend(page.records.iter().map(|r| sort_key_parts(r.key.sort()).0));
                after = page.records.last().map(|r| r.key.sort());
                if !page.more {
                    return seen;
                }
            }
        }
    };
    let ascending: Vec<u64> = (0..30).collect();
    let descending: Vec<u64> = (0..30).rev().collect();
    for partition in &partitions {
        assert_eq!(walk(*partition, false, 0, u64::MAX).await, ascending);
        assert_eq!(walk(*partition, true, 0, u64::MAX).await, descending);
        assert_eq!(walk(*partition, true, 10, 19).await, (10..20).rev().collect::<Vec<_>>());
    }
    let hashed = RangeScan {
        partition: Partition { ns: USERS, id: [0; 16] },
        from: [0; 16],
        to: [0xff; 16],
        descending: false,
        after: None,
        limit: 10,
    };
    let err = client.scan_range(hashed).await.expect_err("a hashed namespace");
    assert!(
        matches!(
            err,
            ClientError::Request(RequestError::Invalid(InvalidRequest::NotAnOrderedNamespace { ns: USERS, .. }))
        ),
        "{err}"
    );
    drop(client);
    cluster.shutdown().await;

    // Reloaded from sled, in the same order.
    let (cluster, client) = start(options).await;
    let again = {
        let scan = RangeScan {
            partition: partitions[0],
            from: [0; 16],
            to: [0xff; 16],
            descending: true,
            after: None,
            limit: 128,
        };
        client.scan_range(scan).await.expect("a range read")
    };
    let reloaded: Vec<u64> = again.records.iter().map(|r| sort_key_parts(r.key.sort()).0).collect();
    assert_eq!(reloaded, descending);
    cluster.shutdown().await;
}

/// Index entries are bounded like every record: they count toward the
/// shard's `max_records_per_shard` (one more aborts `RecordStoreFull`, a
/// delete makes room), and a range read answers at most `MAX_SCAN_RECORDS`
/// entries a page whatever limit it asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_entries_count_toward_the_record_limit_and_pages_are_bounded() {
    use paytx::protocol::ids::{sort_key, sort_key_parts, FIRST_ORDERED_NS};
    use paytx::protocol::ops::MAX_SCAN_RECORDS;
    use paytx::protocol::{Partition, RangeScan};
    const LIMIT: u64 = 200;
    let mut options = test_options();
    options.limits.max_records_per_shard = LIMIT as usize;
    let (cluster, client) = start(options).await;
    let partition = Partition::new(FIRST_ORDERED_NS, b"a-busy-merchant").unwrap();
    let entry = |n: u64| put(partition.key(sort_key(n, n)), &n.to_be_bytes(), RecordExpect::Absent);
    for batch in 0..LIMIT / 50 {
        let ops = (batch * 50..(batch + 1) * 50).map(entry).collect();
        let receipt = submit(&client, &format!("fill-{batch}"), ops).await;
        assert!(receipt.outcome.is_committed(), "{receipt:?}");
    }
    let over = submit(&client, "one-too-many", vec![entry(LIMIT)]).await;
    assert_eq!(abort_code(&over.outcome), Some("record_store_full"), "{over:?}");
    let scan = |after: Option<[u8; 16]>| RangeScan {
        partition,
        from: [0; 16],
        to: [0xff; 16],
        descending: true,
        after,
        limit: u32::MAX,
    };
    let page = client.scan_range(scan(None)).await.expect("a range read");
    assert_eq!(page.records.len(), MAX_SCAN_RECORDS as usize, "a page is at most MAX_SCAN_RECORDS");
    assert!(page.more);
    assert_eq!(sort_key_parts(page.records[0].key.sort()).0, LIMIT - 1, "newest first");
    let rest = client.scan_range(scan(page.records.last().map(|r| r.key.sort()))).await.expect("a range read");
    assert_eq!(page.records.len() + rest.records.len(), LIMIT as usize);
    assert!(!rest.more);
    // A delete makes room for one more, once its decision reached the
    // shard (the client's answer may come first: implicit commit).
    let delete = Operation::PutRecord { key: partition.key(sort_key(0, 0)), value: None, expect: RecordExpect::Any };
    assert!(submit(&client, "make-room", vec![delete]).await.outcome.is_committed());
    let mut attempt = 0;
    loop {
        let again = submit(&client, &format!("fits-again-{attempt}"), vec![entry(LIMIT)]).await;
        if again.outcome.is_committed() {
            break;
        }
        assert_eq!(abort_code(&again.outcome), Some("record_store_full"), "{again:?}");
        attempt += 1;
        assert!(attempt < 30, "the delete never made room: {again:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(client);
    cluster.shutdown().await;
}
