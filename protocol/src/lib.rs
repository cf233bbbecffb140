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
//! * [`clock`]: the clock seam, each node's sense of time.
#![forbid(unsafe_code)]

pub mod auth;
pub mod batcher;
pub mod clock;
pub mod error;
pub mod frame;
pub mod ids;
pub mod messages;
pub mod money;
pub mod ops;
pub mod planted;
pub mod replica;
pub mod routing;
pub mod transport;
pub mod txn;

pub use error::{AbortReason, InvalidRequest, RequestError};
pub use ids::{
    AccountId, ChannelId, EntityKind, IdempotencyKey, NodeId, OrderId, Partition, RecordKey, RecordNs, ShardId, TxnId,
};
pub use messages::{Envelope, Message, PeerRequest, PeerResponse, RangeScan, Request, Response, Vote};
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

/// Feeds `value`'s encoding to `sink` piece by piece, without building it
/// (the simulator hashes every delivery into its trace this way).
pub fn encode_to_sink<T: serde::Serialize>(
    value: &T,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<(), bincode::error::EncodeError> {
    struct Sink<'a>(&'a mut dyn FnMut(&[u8]));
    impl bincode::enc::write::Writer for Sink<'_> {
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            (self.0)(bytes);
            Ok(())
        }
    }
    bincode::serde::encode_into_writer(value, Sink(sink), bincode_config())
}

/// The length of `value`'s encoding, without allocating it (batch byte
/// bounds). A value that cannot be encoded counts as `usize::MAX`, so it
/// travels alone and fails where it is really encoded.
pub fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    let mut writer = bincode::enc::write::SizeWriter::default();
    match bincode::serde::encode_into_writer(value, &mut writer, bincode_config()) {
        Ok(()) => writer.bytes_written,
        Err(_) => usize::MAX,
    }
}

/// Largest allocation a decode of local, checksummed data (records,
/// snapshots) may make: far above any snapshot we write, still a bound.
pub const MAX_LOCAL_DECODE_BYTES: usize = 1 << 30;

/// Bytes bincode may claim per byte of input when decoding a *valid*
/// encoding: every primitive claims its in-memory size (at most 16, an
/// `i128`) and consumes at least one byte; a string or byte buffer claims
/// exactly the bytes it consumes; sequences and maps claim nothing up front
/// through serde. So a decode limit of 16 × the input length never refuses
/// valid data, and hostile data cannot claim (allocate) more than that —
/// e.g. 14 bytes claiming a 700 MB string are refused before the
/// allocation (found by `cargo fuzz run raft_storage`).
pub const MAX_CLAIM_PER_INPUT_BYTE: usize = 16;

/// [`decode`] for data this node wrote itself and verified by checksum
/// (journal records, Raft snapshots): the same format, with a ceiling sized
/// for snapshots of large tables instead of the frame cap.
pub fn decode_local<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    decode_bounded(bytes, MAX_LOCAL_DECODE_BYTES, "record")
}

/// Deserialises a whole buffer; trailing bytes are an error (a frame holds
/// exactly one message). Allocation is bounded by
/// [`MAX_CLAIM_PER_INPUT_BYTE`] × the input length (in power-of-16 tiers, at
/// least 1 KiB) and never exceeds [`frame::MAX_FRAME_LIMIT_BYTES`].
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    decode_bounded(bytes, frame::MAX_FRAME_LIMIT_BYTES, "message")
}

/// Decodes with the smallest limit tier that admits every valid encoding of
/// `bytes` (bincode's limit is a const generic, hence the tiers).
fn decode_bounded<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    ceiling: usize,
    what: &str,
) -> Result<T, bincode::error::DecodeError> {
    let needed = bytes.len().saturating_mul(MAX_CLAIM_PER_INPUT_BYTE).min(ceiling);
    let (value, read) = if needed <= 1 << 10 {
        decode_limited::<T, { 1 << 10 }>(bytes)?
    } else if needed <= 1 << 14 {
        decode_limited::<T, { 1 << 14 }>(bytes)?
    } else if needed <= 1 << 18 {
        decode_limited::<T, { 1 << 18 }>(bytes)?
    } else if needed <= 1 << 22 {
        decode_limited::<T, { 1 << 22 }>(bytes)?
    } else if needed <= frame::MAX_FRAME_LIMIT_BYTES {
        decode_limited::<T, { frame::MAX_FRAME_LIMIT_BYTES }>(bytes)?
    } else {
        decode_limited::<T, MAX_LOCAL_DECODE_BYTES>(bytes)?
    };
    if read != bytes.len() {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "{} trailing bytes after the {what}",
            bytes.len() - read
        )));
    }
    Ok(value)
}

fn decode_limited<T: serde::de::DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode_config().with_limit::<LIMIT>())
}

#[cfg(test)]
mod decode_limit_tests {
    use super::*;

    #[test]
    fn the_densest_valid_encodings_still_decode() {
        // 1 input byte per i128/u128 claiming 16: exactly at the bound.
        for n in [0usize, 1, 63, 64, 65, 1000, 70_000] {
            let zeros = vec![0u128; n];
            let back: Vec<u128> = decode(&encode(&zeros).unwrap()).unwrap();
            assert_eq!(back.len(), n);
            let nested = vec![(Some(0i128), 0u64, String::new(), false); n / 8];
            let back: Vec<(Option<i128>, u64, String, bool)> = decode_local(&encode(&nested).unwrap()).unwrap();
            assert_eq!(back, nested);
        }
    }

    #[test]
    fn a_short_input_cannot_claim_a_large_allocation() {
        // A string claiming 700 MB, in 10 bytes.
        let mut bytes = vec![253];
        bytes.extend_from_slice(&700_000_000u64.to_le_bytes());
        bytes.push(b'x');
        for result in [decode::<String>(&bytes).map(|_| ()), decode_local::<String>(&bytes).map(|_| ())] {
            let error = result.unwrap_err();
            assert!(matches!(error, bincode::error::DecodeError::LimitExceeded), "{error:?}");
        }
    }
}
