//! Checksummed records: `crc32c(payload)` (4 bytes, little-endian) followed by
//! the bincode payload. Every value a node stores goes through here, so a
//! flipped bit or a torn write is detected when it is read back.

use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record shorter than its checksum ({0} bytes)")]
    TooShort(usize),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("payload does not decode: {0}")]
    Decode(String),
}

/// Encodes `value` as a checksummed record.
pub fn seal<T: Serialize>(value: &T) -> Vec<u8> {
    let payload = paytx_protocol::encode(value).expect("encoding plain data into a Vec cannot fail");
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Seals an already-encoded payload (tests and fuzzers use it to reach the
/// decoder behind the checksum with arbitrary bytes).
pub fn seal_bytes(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Verifies and decodes a record written by [`seal`].
pub fn open<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    if bytes.len() < 4 {
        return Err(RecordError::TooShort(bytes.len()));
    }
    let (crc, payload) = bytes.split_at(4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }
    paytx_protocol::decode_local(payload).map_err(|e| RecordError::Decode(e.to_string()))
}

/// [`open`], turning a failure into [`crate::DiskError::Corrupt`] naming where.
pub fn open_at<T: DeserializeOwned>(space: &str, key: &[u8], bytes: &[u8]) -> Result<T, crate::DiskError> {
    open(bytes).map_err(|e| crate::DiskError::Corrupt {
        space: space.to_string(),
        key_hex: key.iter().map(|b| format!("{b:02x}")).collect(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_detects_any_flipped_byte() {
        let record = seal(&("prepared", 42u64, vec![1u8, 2, 3]));
        let back: (String, u64, Vec<u8>) = open(&record).unwrap();
        assert_eq!(back, ("prepared".to_string(), 42, vec![1, 2, 3]));
        for i in 0..record.len() {
            let mut bad = record.clone();
            bad[i] ^= 0x40;
            assert!(open::<(String, u64, Vec<u8>)>(&bad).is_err(), "flip at byte {i} undetected");
        }
        assert_eq!(open::<u64>(&record[..2]), Err(RecordError::TooShort(2)));
    }

    #[test]
    fn records_larger_than_the_frame_cap_still_open() {
        // Snapshots of big tables exceed the 64 MiB network frame cap; local
        // checksummed data decodes with its own, larger limit.
        // A string, not a Vec<u8>: serde moves it as one slice (fast).
        let big = "x".repeat(paytx_protocol::frame::MAX_FRAME_LIMIT_BYTES + 1024);
        let record = seal(&big);
        assert!(paytx_protocol::decode::<String>(&record[4..]).is_err(), "the frame cap refuses it");
        assert_eq!(open::<String>(&record).unwrap().len(), big.len());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let _ = open::<(String, Vec<u64>)>(&bytes);
        }
    }
}
