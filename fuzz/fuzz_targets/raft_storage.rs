//! The Raft log store's and snapshot store's records as read back from disk
//! (behind a valid checksum, so the decoders are reached), and the durable
//! watermark file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::storage::RaftLogStorage;
use openraft::RaftLogReader;
use paytx_coordinator::state_machine::StateMachineStore;
use paytx_coordinator::types::LogStore;
use paytx_storage::record::seal_bytes;
use paytx_storage::{Batch, Disk, MemDisk};
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let _ = paytx_storage::watermark::decode(data);
    let value = seal_bytes(data);
    let disk = MemDisk::new();
    let mut log = Batch::new();
    log.put(7u64.to_be_bytes().to_vec(), value.clone());
    let mut meta = Batch::new();
    for key in [&b"vote"[..], b"committed", b"purged"] {
        meta.put(key.to_vec(), value.clone());
    }
    let mut snapshot = Batch::new();
    snapshot.put(b"current".to_vec(), value);
    for (space, batch) in [("raft-log", log), ("raft-meta", meta), ("raft-snapshot", snapshot)] {
        if disk.apply(space, batch).is_err() {
            return;
        }
    }
    let mut store = LogStore::new(Arc::new(disk.clone()));
    futures::executor::block_on(async {
        let _ = store.get_log_state().await;
        let _ = store.read_vote().await;
        let _ = store.read_committed().await;
        let _ = store.try_get_log_entries(0..16).await;
    });
    let _ = StateMachineStore::open(Arc::new(disk), 100);
});
