//! paytx storage.
//!
//! * [`disk`]: the `Disk` seam every durable write goes through — sled in
//!   production ([`SledDisk`]), memory in tests and the simulator
//!   ([`MemDisk`]) — with group commit: concurrent `sync` calls share one
//!   fsync.
//! * [`record`]: checksummed record encoding; a flipped byte is a typed
//!   [`record::RecordError`], never garbage.
//! * [`log_store`]: the openraft log store (`RaftLogStorage`) on a `Disk`.
//! * [`watermark`]: the file outside sled that catches sled silently
//!   dropping synced writes after a crash.
#![forbid(unsafe_code)]

pub mod disk;
pub mod log_store;
pub mod mem;
pub mod record;
pub mod sled_disk;
pub mod watermark;
pub mod worker;

pub use disk::{run_bulk, Batch, BulkJob, Disk, DiskError, KeyValue, SharedDisk, SyncCounters};
pub use log_store::LogStore;
pub use mem::MemDisk;
pub use sled_disk::SledDisk;
