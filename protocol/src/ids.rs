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
}

impl EntityKind {
    pub const ALL: [EntityKind; 3] = [EntityKind::Account, EntityKind::Order, EntityKind::Channel];

    /// Stable one-byte tag; part of the shard hash, so it must never change.
    pub fn tag(self) -> u8 {
        match self {
            EntityKind::Account => 1,
            EntityKind::Order => 2,
            EntityKind::Channel => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EntityKind::Account => "accounts",
            EntityKind::Order => "orders",
            EntityKind::Channel => "channels",
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
