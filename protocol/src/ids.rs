//! Typed identifiers. Every id is a newtype so an `OrderId` can never be
//! passed where an `AccountId` is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node of the cluster (also its openraft node id).
pub type NodeId = u64;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(
    /// A money account (a payer's wallet, a merchant's settlement account).
    AccountId,
    "acct-"
);
id_type!(
    /// A merchant's order.
    OrderId,
    "order-"
);
id_type!(
    /// A payment channel route (a bank-card acquirer, Alipay, WeChat Pay).
    ChannelId,
    "chan-"
);

/// The kind of entity a participant shard owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntityKind {
    Account,
    Order,
    Channel,
    /// Opaque application records (the open-platform gateway's users,
    /// merchants, nonces, notifications…), see [`RecordKey`].
    Record,
}

impl EntityKind {
    pub const ALL: [EntityKind; 4] = [EntityKind::Account, EntityKind::Order, EntityKind::Channel, EntityKind::Record];

    /// Stable one-byte tag; part of the shard hash, so it must never change.
    pub fn tag(self) -> u8 {
        match self {
            EntityKind::Account => 1,
            EntityKind::Order => 2,
            EntityKind::Channel => 3,
            EntityKind::Record => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EntityKind::Account => "accounts",
            EntityKind::Order => "orders",
            EntityKind::Channel => "channels",
            EntityKind::Record => "records",
        }
    }
}

/// One participant shard: the `index`-th shard of one entity kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId {
    pub kind: EntityKind,
    pub index: u32,
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.name(), self.index)
    }
}

/// A transaction id, unique cluster-wide by construction: only one leader
/// exists per Raft `term`, and that leader numbers its transactions with a
/// strictly increasing `seq`. No coordination or randomness is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnId {
    pub term: u64,
    pub node: NodeId,
    pub seq: u64,
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "txn-{}.{}.{}", self.term, self.node, self.seq)
    }
}

/// A client-chosen idempotency key (Stripe semantics, see [`crate::txn`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdempotencyKey(pub String);

impl IdempotencyKey {
    /// Longest key accepted, in bytes. Keys are stored in the replicated
    /// table, so they are bounded like everything else.
    pub const MAX_LEN_BYTES: usize = 128;

    pub fn new(key: impl Into<String>) -> Self {
        IdempotencyKey(key.into())
    }

    /// A key is 1..=128 bytes of printable ASCII without spaces.
    pub fn is_valid(&self) -> bool {
        !self.0.is_empty() && self.0.len() <= Self::MAX_LEN_BYTES && self.0.bytes().all(|b| b.is_ascii_graphic())
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The namespace of a record: what kind of thing it is (a user, a nonce, a
/// notification…). Chosen by the application; the cluster only uses it to
/// scan one kind of record at a time.
pub type RecordNs = u16;

/// The key of a record in the cluster's record store: a namespace and the
/// SHA-256 digest of the application's key bytes.
///
/// Why a digest: keys stay fixed-size (so `EntityKey` stays `Copy` and a
/// key costs 34 bytes however long the username or nonce), and an adversary
/// who picks the application keys (usernames, nonces) cannot make two keys
/// collide, as it could with a 64-bit hash. The application keeps the
/// readable key inside the record's value when it needs it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordKey {
    pub ns: RecordNs,
    pub digest: [u8; 32],
}

impl RecordKey {
    /// The key of `app_key` in namespace `ns`: `SHA-256(ns_le16 ++ app_key)`.
    pub fn new(ns: RecordNs, app_key: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(ns.to_le_bytes());
        hasher.update(app_key);
        RecordKey { ns, digest: hasher.finalize().into() }
    }
}

/// Namespaces at or above this one are **ordered**: a key's digest is
/// `partition (16 bytes) ‖ sort (16 bytes)`, its shard is chosen by
/// `(ns, partition)` only, and a range read ([`crate::messages::RangeScan`])
/// returns one partition's keys in `sort` order from that one shard.
pub const FIRST_ORDERED_NS: RecordNs = 0x8000;

/// Bytes of an ordered key's partition (a SHA-256 prefix) and of its sort key.
pub const PARTITION_BYTES: usize = 16;
pub const SORT_BYTES: usize = 16;

/// The partition of an ordered namespace: which index (`ns`) and whose
/// entries (a merchant's orders, an order's refunds…).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Partition {
    pub ns: RecordNs,
    pub id: [u8; PARTITION_BYTES],
}

impl Partition {
    /// The partition of `app_key` in `ns`: the first 16 bytes of
    /// `SHA-256(ns_le16 ++ app_key)` (128 bits: no adversary finds a
    /// collision). `None` when `ns` is not an ordered namespace.
    pub fn new(ns: RecordNs, app_key: &[u8]) -> Option<Partition> {
        if !is_ordered_ns(ns) {
            return None;
        }
        let full = RecordKey::new(ns, app_key).digest;
        let mut id = [0u8; PARTITION_BYTES];
        id.copy_from_slice(&full[..PARTITION_BYTES]);
        Some(Partition { ns, id })
    }

    /// The key of the entry `sort` of this partition.
    pub fn key(&self, sort: [u8; SORT_BYTES]) -> RecordKey {
        let mut digest = [0u8; 32];
        digest[..PARTITION_BYTES].copy_from_slice(&self.id);
        digest[PARTITION_BYTES..].copy_from_slice(&sort);
        RecordKey { ns: self.ns, digest }
    }
}

/// `true` for the namespaces whose keys are `partition ‖ sort`.
pub fn is_ordered_ns(ns: RecordNs) -> bool {
    ns >= FIRST_ORDERED_NS
}

/// A sort key of two big-endian numbers, so keys sort like `(high, low)`
/// (e.g. a creation time and an id that breaks ties).
pub fn sort_key(high: u64, low: u64) -> [u8; SORT_BYTES] {
    let mut sort = [0u8; SORT_BYTES];
    sort[..8].copy_from_slice(&high.to_be_bytes());
    sort[8..].copy_from_slice(&low.to_be_bytes());
    sort
}

/// The two numbers of a [`sort_key`].
pub fn sort_key_parts(sort: [u8; SORT_BYTES]) -> (u64, u64) {
    let mut high = [0u8; 8];
    let mut low = [0u8; 8];
    high.copy_from_slice(&sort[..8]);
    low.copy_from_slice(&sort[8..]);
    (u64::from_be_bytes(high), u64::from_be_bytes(low))
}

impl RecordKey {
    /// The partition of a key of an ordered namespace (`None` otherwise).
    pub fn partition(&self) -> Option<Partition> {
        is_ordered_ns(self.ns).then(|| {
            let mut id = [0u8; PARTITION_BYTES];
            id.copy_from_slice(&self.digest[..PARTITION_BYTES]);
            Partition { ns: self.ns, id }
        })
    }

    /// The sort part of the digest (meaningful in an ordered namespace).
    pub fn sort(&self) -> [u8; SORT_BYTES] {
        let mut sort = [0u8; SORT_BYTES];
        sort.copy_from_slice(&self.digest[PARTITION_BYTES..]);
        sort
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record-{}/", self.ns)?;
        for byte in &self.digest[..6] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}
