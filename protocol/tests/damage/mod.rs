//! Byte damage for the decoder property tests of every crate (protocol,
//! coordinator, participants include this one file), so all of them damage
//! their inputs the same way.

/// A damaged copy of `bytes`: each edit `(op, at, byte)` flips a byte
/// (`op % 3 == 0`), cuts the tail (`1`) or inserts `byte` (`2`), at a
/// position derived from `at`.
pub fn mutate(mut bytes: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(op, at, byte) in edits {
        let len = bytes.len().max(1);
        match op % 3 {
            0 if !bytes.is_empty() => bytes[at % len] ^= byte | 1,
            1 => bytes.truncate(at % (len + 1)),
            _ => bytes.insert(at % (bytes.len() + 1), byte),
        }
    }
    bytes
}
