//! What a shard stores, and under which key. Shared vocabulary of the engine
//! (which produces and recovers from these records) and the journal (which
//! writes and reads them).
//!
//! Key layout of a shard's keyspace (`shard-<kind>-<index>`):
//!
//! | key | value |
//! | --- | --- |
//! | `e/` + entity key | [`EntityRecord`]: the committed after-image of one entity (a record: `ns` big-endian ‖ digest) |
//! | `t/` + txn key | [`TxnState`]: a transaction prepared here (voted YES, not yet decided), or committed here and remembered to ignore late duplicates |
//! | `m/forgotten-through` | [`TxnId`]: the newest commit no longer remembered (see the engine) |
//! | `p/`, `c/` + txn key | written by earlier versions (prepared, committed): read at open and rewritten as `t/` |
//!
//! Ids are big-endian so keys sort like ids; the txn key is `term ‖ node ‖ seq`.
//!
//! A transaction has one key from its prepare until it is forgotten: the
//! commit overwrites it in place (`Prepared` → `Committed`) rather than
//! deleting one key and inserting another. In sled that is the difference
//! between rewriting one leaf and two streams of keys appended at the end of
//! the keyspace, which split (and later merge) a leaf every few transactions
//! — the largest cost of a commit in a profile of `paytx bench`.

use crate::accounts::Account;
use crate::channels::Charge;
use crate::orders::Order;
use crate::record_store::StoredRecord;
use paytx_protocol::{AccountId, ChannelId, EntityKind, Operation, OrderId, RecordKey, TxnId};
use serde::{Deserialize, Serialize};

pub(crate) const ENTITY_PREFIX: &[u8] = b"e/";
pub(crate) const TXN_PREFIX: &[u8] = b"t/";
/// Earlier versions' prepared records (read at open, then rewritten).
pub(crate) const PREPARED_PREFIX: &[u8] = b"p/";
/// Earlier versions' commit markers (read at open, then rewritten).
pub(crate) const COMMITTED_PREFIX: &[u8] = b"c/";
pub(crate) const FORGOTTEN_THROUGH_KEY: &[u8] = b"m/forgotten-through";

/// The committed state of one entity, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntityRecord {
    Account { id: AccountId, account: Account },
    Order { id: OrderId, order: Order },
    Charge { channel: ChannelId, order: OrderId, charge: Charge },
    Record { key: RecordKey, record: StoredRecord },
}

impl EntityRecord {
    pub fn kind(&self) -> EntityKind {
        match self {
            EntityRecord::Account { .. } => EntityKind::Account,
            EntityRecord::Order { .. } => EntityKind::Order,
            EntityRecord::Charge { .. } => EntityKind::Channel,
            EntityRecord::Record { .. } => EntityKind::Record,
        }
    }

    /// The key this record is stored under. The id is in the value too, so a
    /// record found under the wrong key is detected at load.
    pub fn key(&self) -> Vec<u8> {
        let mut key = ENTITY_PREFIX.to_vec();
        match self {
            EntityRecord::Record { key: record_key, .. } => return record_entity_key(*record_key),
            EntityRecord::Account { id, .. } => key.extend_from_slice(&id.0.to_be_bytes()),
            EntityRecord::Order { id, .. } => key.extend_from_slice(&id.0.to_be_bytes()),
            EntityRecord::Charge { channel, order, .. } => {
                key.extend_from_slice(&channel.0.to_be_bytes());
                key.extend_from_slice(&order.0.to_be_bytes());
            }
        }
        key
    }
}

/// Where the record `key` is stored: `e/` ‖ `ns` (big-endian) ‖ digest, so
/// the journal sorts records like the engine does. Also the key a commit
/// deletes when it deletes the record.
pub(crate) fn record_entity_key(key: RecordKey) -> Vec<u8> {
    let mut stored = Vec::with_capacity(ENTITY_PREFIX.len() + 2 + key.digest.len());
    stored.extend_from_slice(ENTITY_PREFIX);
    stored.extend_from_slice(&key.ns.to_be_bytes());
    stored.extend_from_slice(&key.digest);
    stored
}

/// A transaction this shard voted YES on: its operations on this shard. On
/// recovery they are validated again against the committed state, which
/// rebuilds exactly the holds and locks they had (nobody could change what
/// they locked, and holds only ever shrink what others may take).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedRecord {
    pub txn: TxnId,
    pub ops: Vec<Operation>,
}

/// What a shard keeps about one transaction (under `t/` + txn key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    /// Prepared here and not yet decided.
    Prepared(PreparedRecord),
    /// Committed here (its effects are in the entities).
    Committed(TxnId),
}

impl TxnState {
    pub fn txn(&self) -> TxnId {
        match self {
            TxnState::Prepared(record) => record.txn,
            TxnState::Committed(txn) => *txn,
        }
    }
}

/// [`TxnState`] by reference, for writing without a copy of the
/// operations: serde encodes it exactly as the owned enum.
#[derive(Serialize)]
pub(crate) enum TxnStateRef<'a> {
    Prepared(&'a PreparedRecord),
    Committed(TxnId),
}

/// `term ‖ node ‖ seq`, big-endian: keys sort like `TxnId`s.
pub(crate) fn txn_key(prefix: &[u8], txn: TxnId) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 24);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&txn.term.to_be_bytes());
    key.extend_from_slice(&txn.node.to_be_bytes());
    key.extend_from_slice(&txn.seq.to_be_bytes());
    key
}

fn u64_at(bytes: &[u8], index: usize) -> Option<u64> {
    let start = index.checked_mul(8)?;
    let chunk: [u8; 8] = bytes.get(start..start.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(chunk))
}

/// A readable name for a stored key (for error messages), e.g.
/// `p/txn-3.1.17` or `e/acct-5`; unknown shapes are shown in hex.
pub fn key_label(kind: EntityKind, key: &[u8]) -> String {
    let hex = || key.iter().map(|b| format!("{b:02x}")).collect::<String>();
    if key == FORGOTTEN_THROUGH_KEY {
        return String::from_utf8_lossy(key).into_owned();
    }
    let (prefix, rest) = key.split_at(key.len().min(2));
    let label = match prefix {
        p if p == TXN_PREFIX || p == PREPARED_PREFIX || p == COMMITTED_PREFIX => (rest.len() == 24)
            .then(|| Some(TxnId { term: u64_at(rest, 0)?, node: u64_at(rest, 1)?, seq: u64_at(rest, 2)? }))
            .flatten()
            .map(|txn| format!("{}{txn}", String::from_utf8_lossy(p))),
        p if p == ENTITY_PREFIX => match (kind, rest.len()) {
            (EntityKind::Account, 8) => u64_at(rest, 0).map(|id| format!("e/{}", AccountId(id))),
            (EntityKind::Order, 8) => u64_at(rest, 0).map(|id| format!("e/{}", OrderId(id))),
            (EntityKind::Channel, 16) => u64_at(rest, 0)
                .zip(u64_at(rest, 1))
                .map(|(channel, order)| format!("e/{}/{}", ChannelId(channel), OrderId(order))),
            (EntityKind::Record, 34) => <[u8; 32]>::try_from(&rest[2..]).ok().map(|digest| {
                let ns = u16::from_be_bytes([rest[0], rest[1]]);
                format!("e/{}", RecordKey { ns, digest })
            }),
            _ => None,
        },
        _ => None,
    };
    match label {
        Some(label) => format!("{label} (hex {})", hex()),
        None => format!("hex {}", hex()),
    }
}

/// Everything a shard's journal holds, as loaded at start-up. Each record
/// comes with the label of its key, so recovery errors can name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalContents {
    pub entities: Vec<(String, EntityRecord)>,
    pub prepared: Vec<(String, PreparedRecord)>,
    pub committed: Vec<TxnId>,
    pub forgotten_through: Option<TxnId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_keys_sort_like_txn_ids() {
        let a = TxnId { term: 1, node: 9, seq: 300 };
        let b = TxnId { term: 2, node: 1, seq: 1 };
        assert!(a < b);
        assert!(txn_key(PREPARED_PREFIX, a) < txn_key(PREPARED_PREFIX, b));
    }

    #[test]
    fn labels_name_keys() {
        let txn = TxnId { term: 3, node: 1, seq: 17 };
        assert!(key_label(EntityKind::Account, &txn_key(PREPARED_PREFIX, txn)).starts_with("p/txn-3.1.17 "));
        let record = EntityRecord::Charge {
            channel: ChannelId(2),
            order: OrderId(5),
            charge: Charge { charged: paytx_protocol::Money::new(1, paytx_protocol::Currency::CNY), refunded_minor: 0 },
        };
        assert!(key_label(EntityKind::Channel, &record.key()).starts_with("e/chan-2/order-5 "));
        assert_eq!(key_label(EntityKind::Order, b"zz"), "hex 7a7a");
    }
}
