//! The paytx wire protocol and the vocabulary every other crate speaks.
//!
//! * [`ids`] and [`money`]: typed identifiers and integer money.
//! * [`ops`]: the operations a transaction is made of, and how each is routed
//!   to a participant shard ([`ShardMap`]).
//! * [`txn`]: a client's transaction request, its validation, and outcomes.
//! * [`messages`]: everything that crosses a socket — client requests and
//!   responses, 2PC messages between coordinator and participants, opaque Raft
//!   RPCs — wrapped in one [`messages::Envelope`].
//! * [`frame`]: the length-prefixed, versioned frame codec.
//! * [`error`]: typed errors, one enum per concern.
#![forbid(unsafe_code)]

pub mod auth;
pub mod error;
pub mod frame;
pub mod ids;
pub mod messages;
pub mod money;
pub mod ops;
pub mod planted;
pub mod transport;
pub mod txn;

pub use error::{AbortReason, InvalidRequest, RequestError};
pub use ids::{AccountId, ChannelId, EntityKind, IdempotencyKey, NodeId, OrderId, RecordKey, RecordNs, ShardId, TxnId};
pub use messages::{Envelope, Message, PeerRequest, PeerResponse, Request, Response, Vote};
pub use money::{Currency, Money};
pub use ops::{EntityKey, Operation, RecordExpect, ShardMap};
pub use transport::{BoxFuture, Transport, TransportError};
pub use txn::{Outcome, TxnReceipt, TxnRequest};

/// Encoding used for every message body and every stored record: bincode's
/// standard (varint) configuration. A decode is always bounded by a byte
/// limit so hostile input cannot make us allocate beyond the frame cap.
pub fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Serialises `value` with [`bincode_config`].
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode_config())
}

/// Largest allocation a decode of local, checksummed data (records,
/// snapshots) may make: far above any snapshot we write, still a bound.
pub const MAX_LOCAL_DECODE_BYTES: usize = 1 << 30;

/// [`decode`] for data this node wrote itself and verified by checksum
/// (journal records, Raft snapshots): the same format, with a limit sized
/// for snapshots of large tables instead of the frame cap.
pub fn decode_local<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    let config = bincode_config().with_limit::<MAX_LOCAL_DECODE_BYTES>();
    let (value, read) = bincode::serde::decode_from_slice(bytes, config)?;
    if read != bytes.len() {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "{} trailing bytes after the record",
            bytes.len() - read
        )));
    }
    Ok(value)
}

/// Deserialises a whole buffer; trailing bytes are an error (a frame holds
/// exactly one message). Allocation is bounded by [`frame::MAX_FRAME_LIMIT_BYTES`].
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    let config = bincode_config().with_limit::<{ frame::MAX_FRAME_LIMIT_BYTES }>();
    let (value, read) = bincode::serde::decode_from_slice(bytes, config)?;
    if read != bytes.len() {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "{} trailing bytes after the message",
            bytes.len() - read
        )));
    }
    Ok(value)
}
