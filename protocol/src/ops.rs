//! Operations, the entities they address, and how entities map to shards.

use crate::ids::{sort_key, AccountId, ChannelId, EntityKind, NodeId, OrderId, Partition, RecordKey, ShardId};
use crate::money::{Currency, Money};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One step of a transaction. Each operation addresses exactly one entity,
/// and so exactly one participant shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// Opens an account. `initial_minor` is money entering the system (a
    /// deposit); it is the only operation that mints.
    OpenAccount { account: AccountId, currency: Currency, initial_minor: i64 },
    /// Takes money out of an account. Held at prepare, so concurrent
    /// transactions can never overdraw.
    Debit { account: AccountId, amount: Money },
    /// Puts money into an account, applied at commit.
    Credit { account: AccountId, amount: Money },
    /// Creates an order in `CREATED`, payable to `merchant`.
    CreateOrder { order: OrderId, merchant: AccountId, amount: Money },
    /// `CREATED → PAID`; `amount` must equal the order's amount.
    MarkPaid { order: OrderId, amount: Money },
    /// `PAID | PARTIALLY_REFUNDED → PARTIALLY_REFUNDED | REFUNDED`; the sum of
    /// refunds never exceeds what was paid.
    RefundOrder { order: OrderId, amount: Money },
    /// `CREATED → CLOSED`.
    CloseOrder { order: OrderId },
    /// Records the channel's charge for an order; at most one per (channel, order).
    Charge { channel: ChannelId, order: OrderId, amount: Money },
    /// Refunds part of an earlier charge through the same channel.
    ChannelRefund { channel: ChannelId, order: OrderId, amount: Money },
    /// Writes an opaque record (`value: None` deletes it) if `expect` holds.
    /// `expect` is checked and the record locked at prepare; the write is
    /// applied at commit. At most [`MAX_RECORD_VALUE_BYTES`] of value.
    PutRecord {
        key: RecordKey,
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
        expect: RecordExpect,
    },
    /// Inserts the entry `(commit time, number)` of an ordered `partition`
    /// — the key's sort is `sort_key(committed_at_ms, number)` — holding
    /// `value`. The commit time is not known when the transaction is built
    /// or prepared: it is the coordinator's log time carried by the commit
    /// decision ([`crate::messages::DecisionItem::at_ms`]), fixed when the
    /// shard first applies the commit. So "what committed on day D" is one
    /// range read of the partition (a merchant's statement lines). The
    /// prepare locks `(partition, 0, number)`, the entry's placeholder (see
    /// [`Operation::entity`]); the write never fails a precondition. At most
    /// [`MAX_RECORD_VALUE_BYTES`] of value. (Appended last: the variant
    /// index of the others is in stored prepared records.)
    PutRecordAtCommit {
        partition: Partition,
        number: u64,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
}

/// Largest record value, in bytes. Records are bounded like everything
/// else; a scan page of [`MAX_SCAN_RECORDS`] such records stays well under
/// the default frame cap.
pub const MAX_RECORD_VALUE_BYTES: usize = 8 * 1024;

/// Most records one scan returns.
pub const MAX_SCAN_RECORDS: u32 = 128;

/// The precondition of a [`Operation::PutRecord`], checked at prepare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RecordExpect {
    /// No precondition (an upsert, or a delete of whatever is there).
    Any,
    /// The record must not exist (an insert; a unique claim such as a
    /// username, an `out_trade_no` or a nonce). Fails with
    /// [`crate::AbortReason::RecordExists`].
    Absent,
    /// The record must exist at exactly this version (compare-and-set).
    /// A record's version is the number of committed writes to it since it
    /// was last created: 1 after the insert. Fails with
    /// [`crate::AbortReason::RecordVersionMismatch`].
    Version(u64),
}

/// The ops of one payment: debit the payer, credit the merchant, move the
/// order `CREATED → PAID`, record the channel's charge. One transaction, up
/// to four shards, all or nothing. (Shared by the demo, the benchmark, the
/// CLI and the simulator, so they all pay the same way.)
pub fn payment_ops(
    payer: AccountId,
    merchant: AccountId,
    order: OrderId,
    channel: ChannelId,
    amount: Money,
) -> Vec<Operation> {
    vec![
        Operation::Debit { account: payer, amount },
        Operation::Credit { account: merchant, amount },
        Operation::MarkPaid { order, amount },
        Operation::Charge { channel, order, amount },
    ]
}

/// The entity an operation addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntityKey {
    Account(AccountId),
    Order(OrderId),
    Channel(ChannelId),
    Record(RecordKey),
}

impl EntityKey {
    pub fn kind(self) -> EntityKind {
        match self {
            EntityKey::Account(_) => EntityKind::Account,
            EntityKey::Order(_) => EntityKind::Order,
            EntityKey::Channel(_) => EntityKind::Channel,
            EntityKey::Record(_) => EntityKind::Record,
        }
    }

    /// Stable 64-bit hash (FNV-1a over the kind tag and the little-endian
    /// id). Stable across versions, platforms and processes, unlike
    /// `std`'s `DefaultHasher`: the shard of an entity must never move.
    pub fn stable_hash(self) -> u64 {
        const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = FNV_OFFSET;
        let mut feed = |bytes: &[u8]| {
            for byte in bytes {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(FNV_PRIME);
            }
        };
        feed(&[self.kind().tag()]);
        match self {
            EntityKey::Account(id) => feed(&id.0.to_le_bytes()),
            EntityKey::Order(id) => feed(&id.0.to_le_bytes()),
            EntityKey::Channel(id) => feed(&id.0.to_le_bytes()),
            // The digest is already uniform; FNV over it keeps one scheme.
            // An ordered key hashes its partition only, so a partition's
            // entries share one shard and a range read touches one shard.
            EntityKey::Record(key) => {
                feed(&key.ns.to_le_bytes());
                match key.partition() {
                    Some(partition) => feed(&partition.id),
                    None => feed(&key.digest),
                }
            }
        }
        hash
    }
}

impl std::fmt::Display for EntityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntityKey::Account(id) => id.fmt(f),
            EntityKey::Order(id) => id.fmt(f),
            EntityKey::Channel(id) => id.fmt(f),
            EntityKey::Record(key) => key.fmt(f),
        }
    }
}

impl Operation {
    pub fn entity(&self) -> EntityKey {
        match self {
            Operation::OpenAccount { account, .. }
            | Operation::Debit { account, .. }
            | Operation::Credit { account, .. } => EntityKey::Account(*account),
            Operation::CreateOrder { order, .. }
            | Operation::MarkPaid { order, .. }
            | Operation::RefundOrder { order, .. }
            | Operation::CloseOrder { order } => EntityKey::Order(*order),
            Operation::Charge { channel, .. } | Operation::ChannelRefund { channel, .. } => {
                EntityKey::Channel(*channel)
            }
            Operation::PutRecord { key, .. } => EntityKey::Record(*key),
            // The placeholder `(partition, 0, number)`: the shard is the
            // partition's, and what the prepare locks. The stored key's time
            // is the commit's.
            Operation::PutRecordAtCommit { partition, number, .. } => {
                EntityKey::Record(partition.key(sort_key(0, *number)))
            }
        }
    }

    /// The money this operation moves, if any.
    pub fn amount(&self) -> Option<Money> {
        match self {
            Operation::OpenAccount { currency, initial_minor, .. } => Some(Money::new(*initial_minor, *currency)),
            Operation::Debit { amount, .. }
            | Operation::Credit { amount, .. }
            | Operation::CreateOrder { amount, .. }
            | Operation::MarkPaid { amount, .. }
            | Operation::RefundOrder { amount, .. }
            | Operation::Charge { amount, .. }
            | Operation::ChannelRefund { amount, .. } => Some(*amount),
            Operation::CloseOrder { .. } | Operation::PutRecord { .. } | Operation::PutRecordAtCommit { .. } => None,
        }
    }
}

/// Where every participant shard lives: for each entity kind, the
/// *preferred* node of shard `i` (where its group's leader is placed, and
/// with `replicas = 1` its only copy) is `nodes[i]`. With `replicas = R`
/// the shard is a Raft group of `R` voters: its preferred node and the
/// next `R - 1` distinct nodes of the map, in node-id order, wrapping
/// ([`ShardMap::replicas_of`]). Part of the cluster configuration; every
/// node must be given the same map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub accounts: Vec<NodeId>,
    pub orders: Vec<NodeId>,
    pub channels: Vec<NodeId>,
    pub records: Vec<NodeId>,
    /// Copies of every shard, at most one per node (a map of fewer nodes
    /// keeps one on each): 3 (the default) = a Raft group of three voters
    /// on three nodes; 1 = single-copy (the shard lives on one node's disk).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
}

/// Copies of every shard unless configured: three voters, so any one node
/// may be lost.
pub const DEFAULT_SHARD_REPLICAS: u32 = 3;

fn default_replicas() -> u32 {
    DEFAULT_SHARD_REPLICAS
}

/// Most replicas of one shard (a Raft group larger than this gains no
/// availability worth its write cost).
pub const MAX_SHARD_REPLICAS: u32 = 7;

impl ShardMap {
    /// One shard of each kind per node, shard `i` on `nodes[i]`, single-copy.
    pub fn one_shard_per_node(nodes: &[NodeId]) -> Self {
        ShardMap {
            accounts: nodes.to_vec(),
            orders: nodes.to_vec(),
            channels: nodes.to_vec(),
            records: nodes.to_vec(),
            replicas: 1,
        }
    }

    /// `per_kind` shards of each kind over `nodes` (single-copy; set
    /// [`ShardMap::with_replicas`]). `per_kind >= nodes.len()` is
    /// [`ShardMap::one_shard_per_node`]. Fewer shards suit a replicated
    /// cluster: with three nodes and three replicas every node holds every
    /// shard anyway, so more shards add no capacity or fault isolation, only
    /// more Raft groups (smaller batches, more messages) and more
    /// participants per payment (payer and merchant in different accounts
    /// shards). The kinds' preferred nodes are staggered (accounts start at
    /// the second node, orders at the third, channels at the first, records
    /// at the second, wrapping), so their leaders spread over the nodes
    /// and the busiest, accounts, is not on the first node, which usually
    /// leads the coordinator (it initialises the group).
    pub fn shards_per_kind(nodes: &[NodeId], per_kind: std::num::NonZeroUsize) -> Self {
        let per_kind = per_kind.get();
        if nodes.is_empty() || per_kind >= nodes.len() {
            return Self::one_shard_per_node(nodes);
        }
        let spread =
            |offset: usize| -> Vec<NodeId> { (0..per_kind).map(|i| nodes[(offset + i) % nodes.len()]).collect() };
        ShardMap { accounts: spread(1), orders: spread(2), channels: spread(0), records: spread(1), replicas: 1 }
    }

    /// The default layout for `replicas` copies of every shard over
    /// `nodes`: single-copy, one shard of each kind per node (the node
    /// count is the shard count, each shard one node's load); replicated,
    /// `ceil(nodes / replicas)` shards of each kind, so that each node is a
    /// replica of about one shard of each kind — with three nodes and three
    /// replicas, one shard of each kind: four Raft groups instead of twelve
    /// that would all live on every node anyway (README, Performance, and
    /// ARCHITECTURE, "How many shards of each kind").
    pub fn for_replicas(nodes: &[NodeId], replicas: u32) -> Self {
        let copies = (replicas.max(1) as usize).min(nodes.len().max(1));
        if copies <= 1 {
            return Self::one_shard_per_node(nodes).with_replicas(replicas);
        }
        let per_kind = nodes.len().div_ceil(copies);
        let per_kind = std::num::NonZeroUsize::new(per_kind).expect("at least two nodes, so at least one shard");
        Self::shards_per_kind(nodes, per_kind).with_replicas(replicas)
    }

    /// The same map with `replicas` copies of every shard.
    pub fn with_replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas;
        self
    }

    /// Copies of every shard there are: `replicas`, but at most one per
    /// node of the map.
    pub fn replica_count(&self) -> usize {
        (self.replicas.max(1) as usize).min(self.nodes().len())
    }

    /// `true` when every shard is a Raft group (more than one copy).
    pub fn is_replicated(&self) -> bool {
        self.replica_count() > 1
    }

    /// Every node named in the map, in id order.
    pub fn nodes(&self) -> Vec<NodeId> {
        let all: std::collections::BTreeSet<NodeId> =
            EntityKind::ALL.iter().flat_map(|kind| self.nodes_of(*kind).iter().copied()).collect();
        all.into_iter().collect()
    }

    /// The nodes holding a copy of `shard`, its preferred node first (empty
    /// for a shard outside the map). At most as many as the map has nodes.
    pub fn replicas_of(&self, shard: ShardId) -> Vec<NodeId> {
        let Some(preferred) = self.node_of(shard) else {
            return Vec::new();
        };
        let nodes = self.nodes();
        let count = self.replica_count();
        let start = nodes.iter().position(|node| *node == preferred).unwrap_or(0);
        (0..count).map(|offset| nodes[(start + offset) % nodes.len()]).collect()
    }

    pub fn nodes_of(&self, kind: EntityKind) -> &[NodeId] {
        match kind {
            EntityKind::Account => &self.accounts,
            EntityKind::Order => &self.orders,
            EntityKind::Channel => &self.channels,
            EntityKind::Record => &self.records,
        }
    }

    /// `true` when every kind has at least one shard.
    pub fn is_valid(&self) -> bool {
        EntityKind::ALL.iter().all(|kind| !self.nodes_of(*kind).is_empty())
    }

    /// The shard that owns `entity`. Panics only on an empty map, which
    /// configuration validation rules out ([`ShardMap::is_valid`]).
    pub fn shard_of(&self, entity: EntityKey) -> ShardId {
        let count = self.nodes_of(entity.kind()).len() as u64;
        assert!(count > 0, "shard map validated non-empty at start-up");
        ShardId { kind: entity.kind(), index: (entity.stable_hash() % count) as u32 }
    }

    /// The node hosting `shard`, or `None` for a shard outside the map.
    pub fn node_of(&self, shard: ShardId) -> Option<NodeId> {
        self.nodes_of(shard.kind).get(shard.index as usize).copied()
    }

    /// Every shard hosted on `node`.
    /// (With replicas: every shard `node` holds a copy of.)
    pub fn shards_on(&self, node: NodeId) -> Vec<ShardId> {
        self.shards().filter(|shard| self.replicas_of(*shard).contains(&node)).collect()
    }

    /// Every shard of the map, kind by kind, in index order.
    pub fn shards(&self) -> impl Iterator<Item = ShardId> + '_ {
        EntityKind::ALL
            .into_iter()
            .flat_map(move |kind| (0..self.nodes_of(kind).len() as u32).map(move |index| ShardId { kind, index }))
    }

    /// Splits a transaction's operations by shard, keeping their order within
    /// each shard. A `BTreeMap` so iteration order is deterministic.
    pub fn split(&self, ops: &[Operation]) -> BTreeMap<ShardId, Vec<Operation>> {
        let mut by_shard: BTreeMap<ShardId, Vec<Operation>> = BTreeMap::new();
        for op in ops {
            by_shard.entry(self.shard_of(op.entity())).or_default().push(op.clone());
        }
        by_shard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_fixed_forever() {
        // Changing these values would move every entity to another shard.
        // Known answers computed independently (FNV-1a 64 of tag ++ id_le).
        assert_eq!(EntityKey::Account(AccountId(0)).stable_hash(), 0x529a_2cdc_8ff5_33ac);
        assert_eq!(EntityKey::Order(OrderId(42)).stable_hash(), 0x21fd_d471_1908_3f4f);
        assert_ne!(EntityKey::Account(AccountId(1)).stable_hash(), EntityKey::Order(OrderId(1)).stable_hash());
    }

    #[test]
    fn an_ordered_key_lives_on_its_partitions_shard() {
        use crate::ids::{sort_key, Partition, FIRST_ORDERED_NS};
        let map = ShardMap::one_shard_per_node(&[1, 2, 3, 4, 5]);
        let mut shards = std::collections::BTreeSet::new();
        for merchant in 0..40u64 {
            let partition = Partition::new(FIRST_ORDERED_NS, format!("mch_{merchant}").as_bytes()).unwrap();
            let first = map.shard_of(EntityKey::Record(partition.key(sort_key(0, 0))));
            for t in 1..50u64 {
                let key = partition.key(sort_key(t * 7_919, t));
                assert_eq!(key.partition(), Some(partition));
                assert_eq!(map.shard_of(EntityKey::Record(key)), first, "one partition, one shard");
            }
            shards.insert(first);
        }
        assert!(shards.len() > 1, "partitions spread over the shards");
        assert_eq!(Partition::new(FIRST_ORDERED_NS - 1, b"x"), None, "hashed namespaces have no partitions");
        assert_eq!(RecordKey::new(7, b"x").partition(), None);
    }

    #[test]
    fn the_default_layout_has_about_one_shard_of_each_kind_per_replica_set() {
        let three = ShardMap::for_replicas(&[1, 2, 3], 3);
        let one = std::num::NonZeroUsize::new(1).expect("one");
        assert_eq!(three, ShardMap::shards_per_kind(&[1, 2, 3], one).with_replicas(3));
        assert_eq!(three.accounts.len(), 1);
        let five = ShardMap::for_replicas(&[1, 2, 3, 4, 5], 3);
        assert_eq!((five.accounts.len(), five.replicas), (2, 3), "ceil(5 / 3)");
        // Single-copy: every node carries one shard of each kind.
        assert_eq!(ShardMap::for_replicas(&[1, 2, 3], 1), ShardMap::one_shard_per_node(&[1, 2, 3]));
        // More replicas than nodes: every node holds every shard.
        assert_eq!(ShardMap::for_replicas(&[1, 2], 3).accounts.len(), 1);
        assert_eq!(ShardMap::for_replicas(&[1], 3).accounts, vec![1]);
    }

    #[test]
    fn fewer_shards_per_kind_stagger_their_preferred_nodes() {
        let per_kind = |k| std::num::NonZeroUsize::new(k).expect("a positive count");
        let map = ShardMap::shards_per_kind(&[1, 2, 3], per_kind(1)).with_replicas(3);
        assert_eq!(
            (map.accounts.clone(), map.orders.clone(), map.channels.clone(), map.records.clone()),
            (vec![2], vec![3], vec![1], vec![2])
        );
        assert!(map.is_valid());
        // Every shard still has three replicas on three distinct nodes.
        let shard = ShardId { kind: EntityKind::Account, index: 0 };
        assert_eq!(map.replicas_of(shard), vec![2, 3, 1]);
        let two = ShardMap::shards_per_kind(&[1, 2, 3, 4, 5], per_kind(2));
        assert_eq!(two.accounts, vec![2, 3]);
        assert_eq!(two.channels, vec![1, 2]);
        // As many as nodes (or more): one shard of each kind per node.
        assert_eq!(ShardMap::shards_per_kind(&[1, 2, 3], per_kind(3)), ShardMap::one_shard_per_node(&[1, 2, 3]));
        assert_eq!(ShardMap::shards_per_kind(&[1, 2, 3], per_kind(9)), ShardMap::one_shard_per_node(&[1, 2, 3]));
    }

    #[test]
    fn split_routes_each_operation_to_its_shard_and_spreads_load() {
        let map = ShardMap::one_shard_per_node(&[1, 2, 3]);
        let mut counts = [0u32; 3];
        for id in 0..3000 {
            let shard = map.shard_of(EntityKey::Account(AccountId(id)));
            assert_eq!(shard.kind, EntityKind::Account);
            counts[shard.index as usize] += 1;
        }
        for count in counts {
            assert!(count > 800, "uneven spread: {counts:?}");
        }
        let ops = vec![
            Operation::Debit { account: AccountId(1), amount: Money::new(5, Currency::CNY) },
            Operation::MarkPaid { order: OrderId(9), amount: Money::new(5, Currency::CNY) },
        ];
        let split = map.split(&ops);
        let total: usize = split.values().map(Vec::len).sum();
        assert_eq!(total, 2);
        assert!(split.keys().any(|s| s.kind == EntityKind::Order));
    }
}
