//! Coordinator epochs: a counter persisted on the node's disk and bumped at
//! every start, so transaction ids stay unique across restarts.
//!
//! A `TxnId` is `(term, node, seq)`. One leader per term would make that
//! unique — except that openraft 0.9 restores a restarted node as leader of
//! the *same* term when its persisted vote says it led it. A restarted
//! driver starting `seq` at zero would then hand out ids its previous
//! incarnation already used (the simulator found exactly that). So `seq`
//! starts at `epoch << 32`: every incarnation numbers above the previous one.

use paytx_storage::record::{open_at, seal};
use paytx_storage::{Batch, DiskError, SharedDisk};

const SPACE: &str = "coordinator-meta";
const KEY: &[u8] = b"epoch";

/// Bits of `seq` left for the transactions of one epoch.
pub const SEQ_BITS_PER_EPOCH: u32 = 32;

/// Reads, bumps and durably stores the epoch; returns the first `seq` of
/// this incarnation.
pub async fn next_seq_base(disk: &SharedDisk) -> Result<u64, DiskError> {
    let previous: u64 = match disk.get(SPACE, KEY)? {
        Some(bytes) => open_at(SPACE, KEY, &bytes)?,
        None => 0,
    };
    let epoch = previous.checked_add(1).ok_or_else(|| DiskError::Corrupt {
        space: SPACE.into(),
        key_hex: "epoch".into(),
        reason: "epoch counter exhausted".into(),
    })?;
    let mut batch = Batch::new();
    batch.put(KEY.to_vec(), seal(&epoch));
    disk.apply(SPACE, batch)?;
    // Durable before any id of this epoch is handed out.
    disk.sync().await?;
    Ok(epoch << SEQ_BITS_PER_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paytx_storage::MemDisk;
    use std::sync::Arc;

    #[tokio::test]
    async fn every_start_numbers_above_the_previous_one() {
        let memory = MemDisk::new();
        let disk: SharedDisk = Arc::new(memory.clone());
        let first = next_seq_base(&disk).await.unwrap();
        memory.crash();
        let second = next_seq_base(&disk).await.unwrap();
        assert!(second > first, "the bump survived the crash");
        assert_eq!(second - first, 1 << SEQ_BITS_PER_EPOCH);
    }
}
