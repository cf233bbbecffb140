//! paytx's deterministic simulator.
//!
//! The real node code — participants, coordinator, openraft, routing — runs
//! a whole cluster on one thread, on virtual time (a paused tokio runtime
//! whose scheduler is seeded), with the `Transport` and `Disk` seams
//! replaced by a simulated network ([`net`]) and memory disks that lose
//! unsynced writes on a crash ([`disk`]). One `u64` seed decides the
//! workload ([`workload`]), the faults ([`faults`]) and every RNG of the
//! nodes, so a seed replays exactly; [`trace`] hashes what happened. After
//! the run the cluster is healed, settles, and [`check`] compares its state
//! with what the clients were told.
#![forbid(unsafe_code)]

pub mod check;
#[cfg(test)]
mod clock_tests;
pub mod cluster;
pub mod disk;
pub mod faults;
pub mod net;
pub mod run;
pub mod trace;
pub mod workload;
pub mod world;

pub use faults::FaultProfile;
pub use run::{run, Failure, RunReport, SimConfig};
