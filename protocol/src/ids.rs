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

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record-{}/", self.ns)?;
        for byte in &self.digest[..6] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}
