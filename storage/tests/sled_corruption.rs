//! What a crashed node's sled files do when bytes are flipped or the log is
//! truncated, and that `SledDisk` never silently comes back with less than
//! it had synced.
//!
//! Measured with sled 0.34.7: after a crash (no clean close), sled recovers
//! by scanning its log and stops at the first corrupt or torn message,
//! dropping every later write without an error. Without the durable
//! watermark, nearly every flipped byte in the log region below silently
//! loses synced keys. With it, every case either opens with every synced
//! key or refuses to open with an error naming the file.
#![cfg(unix)]

use paytx_storage::{Batch, Disk, DiskError, SledDisk};
use std::path::Path;

const KEYS: u32 = 2000;
const SPACE: &str = "s";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Writes `KEYS` keys, syncing every 50, then "crashes": the handle is leaked
/// (no clean close, no final snapshot), as a killed process leaves it.
async fn crashed_database(dir: &Path) {
    let disk = SledDisk::open(dir, true).unwrap();
    for i in 0..KEYS {
        let mut batch = Batch::new();
        batch.put(i.to_be_bytes().to_vec(), vec![7u8; 100]);
        disk.apply(SPACE, batch).unwrap();
        if i % 50 == 49 {
            disk.sync().await.unwrap();
        }
    }
    // One more write that is never synced: a torn tail sled may drop.
    let mut batch = Batch::new();
    batch.put(b"unsynced".to_vec(), vec![1]);
    disk.apply(SPACE, batch).unwrap();
    std::mem::forget(disk);
}

/// The outcome of opening a damaged copy.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Opened, and every synced key is there.
    Intact,
    /// Refused: the watermark caught lost synced writes.
    LostWrites,
    /// Refused: sled itself reported corruption.
    SledError,
}

fn open_and_check(dir: &Path) -> Outcome {
    let disk = match SledDisk::open(dir, true) {
        Ok(disk) => disk,
        Err(DiskError::LostWrites { file, reason }) => {
            assert!(file.contains(&dir.display().to_string()), "the error names the file: {file}");
            assert!(!reason.is_empty());
            return Outcome::LostWrites;
        }
        Err(other) => {
            assert!(other.to_string().contains("corrupt"), "a clear error: {other}");
            return Outcome::SledError;
        }
    };
    match disk.range(SPACE, &0u32.to_be_bytes(), Some(&KEYS.to_be_bytes())) {
        Ok(rows) => {
            assert_eq!(rows.len(), KEYS as usize, "opened without error but lost synced keys");
            Outcome::Intact
        }
        Err(e) => {
            assert!(e.to_string().contains("corrupt"), "a clear error: {e}");
            Outcome::SledError
        }
    }
}

#[tokio::test]
async fn flipped_or_truncated_sled_logs_never_silently_lose_synced_writes() {
    let base = tempfile::tempdir().unwrap();
    let source = base.path().join("source");
    crashed_database(&source).await;

    let clean = base.path().join("clean");
    copy_dir(&source, &clean);
    assert_eq!(open_and_check(&clean), Outcome::Intact, "an undamaged crash recovers everything synced");

    let db_len = std::fs::metadata(source.join("db")).unwrap().len() as usize;
    let mut outcomes = std::collections::BTreeMap::<(&str, String), usize>::new();
    let steps = 40;
    for mode in ["flip", "truncate"] {
        for step in 0..steps {
            let offset = db_len * step / steps;
            let copy = base.path().join(format!("{mode}-{step}"));
            copy_dir(&source, &copy);
            let db = copy.join("db");
            let mut bytes = std::fs::read(&db).unwrap();
            if mode == "flip" {
                bytes[offset] ^= 0xff;
            } else {
                bytes.truncate(offset);
            }
            std::fs::write(&db, bytes).unwrap();
            let outcome = open_and_check(&copy);
            *outcomes.entry((mode, format!("{outcome:?}"))).or_default() += 1;
            std::fs::remove_dir_all(&copy).unwrap();
        }
    }
    println!("outcomes over {steps} offsets each: {outcomes:?}");
    // The watermark is what catches most of them: sled alone would have
    // opened these with keys missing.
    let caught = |mode| outcomes.get(&(mode, "LostWrites".to_string())).copied().unwrap_or(0);
    assert!(caught("flip") > 0 && caught("truncate") > 0, "{outcomes:?}");
}

#[tokio::test]
async fn a_deleted_or_damaged_watermark_refuses_to_start() {
    let base = tempfile::tempdir().unwrap();
    let source = base.path().join("source");
    crashed_database(&source).await;

    let missing = base.path().join("missing");
    copy_dir(&source, &missing);
    std::fs::remove_file(missing.join(paytx_storage::watermark::WATERMARK_FILE)).unwrap();
    assert!(matches!(SledDisk::open(&missing, true), Err(DiskError::LostWrites { .. })));

    let damaged = base.path().join("damaged");
    copy_dir(&source, &damaged);
    std::fs::write(damaged.join(paytx_storage::watermark::WATERMARK_FILE), [0u8; 64]).unwrap();
    let err = SledDisk::open(&damaged, true).unwrap_err();
    assert!(err.to_string().contains(paytx_storage::watermark::WATERMARK_FILE), "{err}");
}
