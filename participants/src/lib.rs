//! paytx participants: the participant side of two-phase commit.
//!
//! Each shard of accounts, orders, channel charges or records is owned by one
//! [`ParticipantActor`], its only writer. The actor is a thin impure shell
//! around a pure engine:
//!
//! * [`engine`] — events in (prepare, commit, abort), effects out (records
//!   to journal); dispatches to [`accounts`] (balances and holds),
//!   [`orders`] (the order state machine), [`channels`] (charges per
//!   channel and order) or [`record_store`] (versioned opaque records). No I/O, clock, RNG or threads.
//! * [`journal`] — the shard's records on the `Disk` seam, one atomic batch
//!   per step, checksummed, replayed at start-up ([`records`] has the layout).
//! * [`group`] — a replicated shard: the engine as the state machine of a
//!   Raft group, and the front actor that proposes prepares and decisions
//!   on the group's leader (the shard map's `replicas > 1`).
//! * [`actor`] — (single-copy shards) fsync before every YES and every commit acknowledgement
//!   (group-committed), the channel failure model, in-doubt resolution
//!   through a [`DecisionSource`].
//!
//! A YES vote is a promise: it is sent only once the prepared record (and so
//! the reservation) is durable, and after it the shard never aborts on its
//! own — it waits for the decision, and asks for it when it is late.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod actor;
mod amounts;
mod authorized;
mod batch;
pub mod channels;
pub mod config;
pub mod decision;
pub mod engine;
pub mod error;
pub mod group;
pub mod journal;
pub mod messages;
pub mod orders;
pub mod record_store;
pub mod records;

#[cfg(test)]
mod planted_tests;

pub use actor::ParticipantActor;
pub use channels::{default_channels, ChannelConfig, ChannelKind, MAX_DECLINE_PER_MILLION};
pub use config::ParticipantConfig;
pub use decision::DecisionSource;
pub use engine::{Engine, Prepared};
pub use error::ParticipantError;
pub use journal::Journal;
pub use messages::{
    Decide, DecideMany, GetStatus, ListInDoubt, Prepare, PrepareMany, ReadAccount, ReadCharge, ReadOrder, ReadRecord,
    ScanRange, ScanRecords, ShardRead, ShardReadAnswer, Shutdown,
};
pub use record_store::{ScanPage, StoredRecord};
