//! The messages a [`crate::ParticipantActor`] answers. All are `Send`, so
//! any task of the node can address the actor.

use crate::error::ParticipantError;
use crate::record_store::ScanPage;
use actix::Message;
use paytx_protocol::messages::{AccountView, ChargeView, OrderView, RecordView, ShardStatus};
use paytx_protocol::{AccountId, ChannelId, Operation, OrderId, RecordKey, RecordNs, TxnId, Vote};

/// 2PC phase one: validate, reserve, journal, fsync, vote.
///
/// `Ok(Vote::Yes)` only once the prepared record is durable. `Err` means the
/// shard failed (fail-stop) and did not vote: the coordinator treats it like
/// a timeout.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<Vote, ParticipantError>")]
pub struct Prepare {
    pub txn: TxnId,
    /// This shard's operations of the transaction, in request order.
    pub ops: Vec<Operation>,
    /// `Some(free_bytes)` when the node's disk is below its free-space
    /// minimum: a *new* prepare is refused (`DiskFull`), while a re-sent
    /// prepare of a transaction already prepared here still answers YES —
    /// that YES was promised, and the transaction may be implicitly
    /// committed already.
    pub disk_low: Option<u64>,
}

/// 2PC phase two. `Ok(())` is the acknowledgement: for a commit it is sent
/// only once the commit is durable. Deciding an unknown transaction is a
/// no-op (it was decided and forgotten already), acknowledged all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<(), ParticipantError>")]
pub struct Decide {
    pub txn: TxnId,
    pub commit: bool,
    /// The coordinator's log time carried by the decision (Unix ms): a
    /// commit's time for its `PutRecordAtCommit` entries
    /// (`paytx_protocol::messages::DecisionItem::at_ms`).
    pub at_ms: u64,
}

/// Many prepares on one shard, as one message (a coordinator's batch):
/// each is answered as a lone [`Prepare`] would be — in the same order —
/// except that one which would wait for a lock held by an undecided
/// transaction answers `Err(ParticipantError::Blocked)` at once, having
/// reserved nothing. On a replicated shard the prepares of one such
/// message go into one log entry. `Err` for the whole message when the
/// shard cannot take any of it (not the leader, stopped).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<Vec<Result<Vote, ParticipantError>>, ParticipantError>")]
pub struct PrepareMany(pub Vec<Prepare>);

/// Many decisions on one shard, as one message; each answered as a lone
/// [`Decide`] would be, in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<Vec<Result<(), ParticipantError>>, ParticipantError>")]
pub struct DecideMany(pub Vec<Decide>);

/// The committed state of an account (`held_minor`: prepared debits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Option<AccountView>")]
pub struct ReadAccount(pub AccountId);

/// The committed state of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Option<OrderView>")]
pub struct ReadOrder(pub OrderId);

/// The committed charge of `order` through `channel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Option<ChargeView>")]
pub struct ReadCharge {
    pub channel: ChannelId,
    pub order: OrderId,
}

/// A committed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Option<RecordView>")]
pub struct ReadRecord(pub RecordKey);

/// One page of the committed records of namespace `ns`, in key order,
/// strictly after `after`, at most `min(limit, MAX_SCAN_RECORDS)` records
/// and about `max_bytes` of keys and values (at least one record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "ScanPage")]
pub struct ScanRecords {
    pub ns: RecordNs,
    pub after: Option<RecordKey>,
    pub limit: u32,
    pub max_bytes: usize,
}

/// One page of a range read of one partition of an ordered namespace,
/// bounded like [`ScanRecords`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "ScanPage")]
pub struct ScanRange {
    pub scan: paytx_protocol::RangeScan,
    pub max_bytes: usize,
}

/// Entity count and in-doubt count of the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "ShardStatus")]
pub struct GetStatus;

/// The prepared, undecided transactions of the shard, in id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Vec<TxnId>")]
pub struct ListInDoubt;

/// Stops the actor at once, dropping its in-flight work: a node shutdown,
/// or a crash in tests and the simulator. Nothing is flushed on the way out
/// — what survives is exactly what was synced, as after a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// A read of a replicated shard, answered by its group's leader only,
/// after a read-index round (linearizable: never older than a state a
/// client was told committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<ShardReadAnswer, ParticipantError>")]
pub enum ShardRead {
    Account(AccountId),
    Order(OrderId),
    Charge { channel: ChannelId, order: OrderId },
    Record(RecordKey),
    Scan(ScanRecords),
    Range(ScanRange),
}

/// The answer to a [`ShardRead`], of the read's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardReadAnswer {
    Account(Option<AccountView>),
    Order(Option<OrderView>),
    Charge(Option<ChargeView>),
    Record(Option<RecordView>),
    Page(ScanPage),
}
