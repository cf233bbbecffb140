//! The durable watermark: a tiny file, outside sled, that records the
//! newest sync generation known to be durable.
//!
//! Why: sled 0.34.7 recovers after a crash by scanning its log and *silently
//! truncating it at the first corrupt or torn message* — one flipped byte in
//! a segment and every later write, synced or not, is gone without an error
//! (measured: `storage/tests/sled_corruption.rs`). A torn tail of unsynced
//! data is fine to drop; anything older is committed data. So [`SledDisk`]
//! numbers its syncs (generation N is written into sled itself just before
//! the fsync) and, after each successful fsync, records N here. At start-up
//! sled must come back with a generation at least this one; if it does not,
//! sled lost synced writes and the node refuses to start, naming the files.
//!
//! Format: two 32-byte slots, `magic (8) | generation (u64 LE) | crc32 of the
//! first 16 bytes (u32 LE) | zeros`. Generation N goes to slot N % 2 and is
//! fdatasync'ed in place, so a write torn by a crash damages only the slot
//! being written; the other still holds N - 1 (the fsync of N had not been
//! acknowledged, so falling back is safe).
//!
//! [`SledDisk`]: crate::SledDisk

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file's name inside the data directory.
pub const WATERMARK_FILE: &str = "durable-watermark";
const MAGIC: &[u8; 8] = b"PAYTXWM1";
const SLOT_BYTES: usize = 32;
const FILE_BYTES: usize = 2 * SLOT_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    #[error("cannot use the watermark file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the watermark file {path} is corrupt (neither slot has a valid checksum)")]
    Corrupt { path: PathBuf },
}

/// An open watermark file.
#[derive(Debug)]
pub struct Watermark {
    path: PathBuf,
    file: Mutex<File>,
}

fn encode_slot(generation: u64) -> [u8; SLOT_BYTES] {
    let mut slot = [0u8; SLOT_BYTES];
    slot[..8].copy_from_slice(MAGIC);
    slot[8..16].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&slot[..16]);
    slot[16..20].copy_from_slice(&crc.to_le_bytes());
    slot
}

/// The generation of one slot, or `None` if it is not a valid slot.
fn decode_slot(slot: &[u8]) -> Option<u64> {
    if slot.len() < 20 || &slot[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(slot[16..20].try_into().ok()?);
    if crc != crc32fast::hash(&slot[..16]) {
        return None;
    }
    Some(u64::from_le_bytes(slot[8..16].try_into().ok()?))
}

/// The recorded generation of a whole file's bytes: the newest valid slot.
/// `None` when no slot is valid. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Option<u64> {
    bytes.chunks(SLOT_BYTES).take(2).filter_map(decode_slot).max()
}

impl Watermark {
    /// Opens the watermark in `dir`. Returns the recorded generation, or
    /// `None` when the file did not exist (it is then created, holding 0).
    pub fn open(dir: &Path) -> Result<(Watermark, Option<u64>), WatermarkError> {
        let path = dir.join(WATERMARK_FILE);
        let io = |source| WatermarkError::Io { path: path.clone(), source };
        let recorded = match File::open(&path) {
            Ok(mut file) => {
                // Read at most the two slots: a huge file costs nothing.
                let mut bytes = Vec::with_capacity(FILE_BYTES);
                (&mut file).take(FILE_BYTES as u64).read_to_end(&mut bytes).map_err(io)?;
                Some(decode(&bytes).ok_or_else(|| WatermarkError::Corrupt { path: path.clone() })?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_atomically(dir, &path).map_err(io)?;
                None
            }
            Err(e) => return Err(io(e)),
        };
        let file = OpenOptions::new().write(true).open(&path).map_err(io)?;
        Ok((Watermark { path, file: Mutex::new(file) }, recorded))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Durably records `generation` (in slot `generation % 2`).
    pub fn record(&self, generation: u64) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let offset = (generation % 2) * SLOT_BYTES as u64;
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(&encode_slot(generation))?;
        file.sync_data()
    }
}

/// A fresh file holding generation 0 in both slots: written under a temporary
/// name, synced, renamed, and the directory synced, so a crash leaves either
/// no file or a whole one.
fn create_atomically(dir: &Path, path: &Path) -> std::io::Result<()> {
    let temp = dir.join(format!("{WATERMARK_FILE}.tmp"));
    {
        let mut file = File::create(&temp)?;
        file.write_all(&encode_slot(0))?;
        file.write_all(&encode_slot(0))?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, path)?;
    // The rename is durable only once the directory is synced.
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_a_torn_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let (mark, recorded) = Watermark::open(dir.path()).unwrap();
        assert_eq!(recorded, None, "a new file");
        mark.record(1).unwrap();
        mark.record(2).unwrap();
        drop(mark);
        let (_, recorded) = Watermark::open(dir.path()).unwrap();
        assert_eq!(recorded, Some(2));

        // Tear slot 0 (holding 2): slot 1 still says 1.
        let path = dir.path().join(WATERMARK_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Watermark::open(dir.path()).unwrap().1, Some(1));

        // Both slots bad: refuse, naming the file.
        bytes[SLOT_BYTES + 3] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let err = Watermark::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains(WATERMARK_FILE), "{err}");
        // Truncated to nothing: also corrupt, not "new".
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(Watermark::open(dir.path()), Err(WatermarkError::Corrupt { .. })));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
            let _ = decode(&bytes);
        }
    }
}
