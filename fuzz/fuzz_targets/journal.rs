//! A participant shard's journal as recovery reads it from disk. The input is
//! split into rows (`key 0xff value 0xfe key 0xff value ...`); the first
//! byte picks the shard kind, and values are sealed with a valid checksum
//! so the record decoders behind it are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paytx_participants::Journal;
use paytx_protocol::{EntityKind, ShardId};
use paytx_storage::record::seal_bytes;
use paytx_storage::{Batch, Disk, MemDisk};
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let kind = match pick % 3 {
        0 => EntityKind::Account,
        1 => EntityKind::Order,
        _ => EntityKind::Channel,
    };
    let shard = ShardId { kind, index: 0 };
    let disk = MemDisk::new();
    let journal = Journal::new(Arc::new(disk.clone()), shard);
    let mut batch = Batch::new();
    for row in rest.split(|b| *b == 0xfe) {
        let mut parts = row.splitn(2, |b| *b == 0xff);
        let key = parts.next().unwrap_or_default().to_vec();
        let value = parts.next().unwrap_or_default();
        batch.put(key, seal_bytes(value));
    }
    if disk.apply(journal.space(), batch).is_ok() {
        let _ = journal.recover(&paytx_participants::default_channels(), 16);
    }
});
