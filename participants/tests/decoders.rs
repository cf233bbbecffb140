//! Hostile bytes through the journal's decoders: a shard's keyspace holding
//! arbitrary keys and values — raw, or arbitrary payloads behind a valid
//! checksum, or real records damaged and re-sealed so they pass the
//! checksum — never panics recovery: it rebuilds a shard or fails with a
//! typed error naming the key.

#[path = "../../protocol/tests/damage/mod.rs"]
mod damage;

use paytx_participants::{Engine, Journal, Prepared};
use paytx_protocol::{AccountId, Currency, EntityKind, Money, Operation, OrderId, ShardId, TxnId};
use paytx_storage::record::seal_bytes;
use paytx_storage::{Batch, Disk, KeyValue, MemDisk};
use proptest::prelude::*;
use std::sync::Arc;

/// The first three have real rows (`real_rows`).
const SHARDS: [ShardId; 4] = [
    ShardId { kind: EntityKind::Account, index: 0 },
    ShardId { kind: EntityKind::Order, index: 0 },
    ShardId { kind: EntityKind::Record, index: 0 },
    ShardId { kind: EntityKind::Channel, index: 0 },
];

fn txn(seq: u64) -> TxnId {
    TxnId { term: 1, node: 1, seq }
}

/// The rows a real journal holds after a few committed and one prepared
/// transaction on `shard`.
fn real_rows(shard: ShardId) -> Vec<KeyValue> {
    let cny = |minor| Money::new(minor, Currency::CNY);
    let steps: Vec<Vec<Operation>> = match shard.kind {
        EntityKind::Account => vec![
            vec![Operation::OpenAccount { account: AccountId(1), currency: Currency::CNY, initial_minor: 100 }],
            vec![Operation::Debit { account: AccountId(1), amount: cny(30) }],
        ],
        EntityKind::Order => vec![
            vec![Operation::CreateOrder { order: OrderId(1), merchant: AccountId(2), amount: cny(50) }],
            vec![Operation::MarkPaid { order: OrderId(1), amount: cny(50) }],
        ],
        EntityKind::Record => {
            let lines = paytx_protocol::Partition::new(paytx_protocol::ids::FIRST_ORDERED_NS + 6, b"m").unwrap();
            let line = |number| Operation::PutRecordAtCommit { partition: lines, number, value: b"line".to_vec() };
            vec![vec![line(1)], vec![line(2)]]
        }
        _ => Vec::new(),
    };
    let disk = MemDisk::new();
    let journal = Journal::new(Arc::new(disk.clone()), shard);
    let channels = paytx_participants::default_channels();
    let mut engine = Engine::new(shard, &channels);
    for (i, ops) in steps.iter().enumerate() {
        let seq = i as u64 + 1;
        if let Ok(Prepared::New(record)) = engine.prepare(txn(seq), ops) {
            journal.record_prepared(&record).expect("memory");
            // The last step stays prepared (in doubt).
            if i + 1 < steps.len() {
                if let Some(committed) = engine.commit(txn(seq), 1_764_547_200_000 + seq) {
                    journal.record_commit(&committed).expect("memory");
                }
            }
        }
    }
    disk.range(journal.space(), b"", None).expect("memory")
}

fn recover(shard: ShardId, rows: Vec<KeyValue>) {
    let disk = MemDisk::new();
    let journal = Journal::new(Arc::new(disk.clone()), shard);
    let mut batch = Batch::new();
    for (key, value) in rows {
        batch.put(key, value);
    }
    disk.apply(journal.space(), batch).expect("memory");
    let _ = journal.recover(&paytx_participants::default_channels(), 16);
}

fn prefix() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"e/".to_vec()),
        Just(b"t/".to_vec()),
        Just(b"p/".to_vec()),
        Just(b"c/".to_vec()),
        Just(b"m/forgotten-through".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..4),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_rows_never_panic_recovery(
        which in 0usize..4,
        rows in proptest::collection::vec(
            (prefix(), proptest::collection::vec(any::<u8>(), 0..24), proptest::collection::vec(any::<u8>(), 0..200), any::<bool>()),
            0..6,
        ),
    ) {
        let rows = rows
            .into_iter()
            .map(|(mut key, suffix, payload, sealed)| {
                key.extend(suffix);
                (key, if sealed { seal_bytes(&payload) } else { payload })
            })
            .collect();
        recover(SHARDS[which], rows);
    }

    #[test]
    fn damaged_real_records_behind_a_valid_checksum_never_panic_recovery(
        which in 0usize..3,
        row in any::<usize>(),
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..5),
        damage_key in any::<bool>(),
    ) {
        let shard = SHARDS[which];
        let mut rows = real_rows(shard);
        prop_assert!(!rows.is_empty());
        let index = row % rows.len();
        let (key, value) = rows[index].clone();
        rows[index] = if damage_key {
            (damage::mutate(key, &edits), value)
        } else {
            // Re-seal the damaged payload so the checksum passes.
            (key, seal_bytes(&damage::mutate(value[4..].to_vec(), &edits)))
        };
        recover(shard, rows);
    }
}

#[test]
fn the_real_rows_recover() {
    for shard in &SHARDS[..3] {
        let rows = real_rows(*shard);
        assert!(rows.len() >= 3, "{shard}: {rows:?}");
        let disk = MemDisk::new();
        let journal = Journal::new(Arc::new(disk.clone()), *shard);
        let mut batch = Batch::new();
        for (key, value) in rows {
            batch.put(key, value);
        }
        disk.apply(journal.space(), batch).unwrap();
        let engine = journal.recover(&paytx_participants::default_channels(), 16).unwrap();
        assert_eq!(engine.prepared_txns(), vec![txn(2)]);
    }
}
