//! A read-only view of one transaction the engine drives, for the admin
//! API: which shards voted YES, the first refusal, which acknowledged the
//! decision. Nothing here changes the engine.

use super::{Engine, Phase};
use paytx_protocol::{AbortReason, Outcome, ShardId, TxnId};
use std::collections::BTreeMap;

/// When the steps of one transaction happened, in milliseconds of the
/// driver's tick clock (its ticks since start × `tick_ms`: the resolution is
/// one tick, 20 ms by default, and a busy driver's ticks run late). The
/// engine keeps no clock; the driver notes these as it sees the events
/// (`driver::timeline`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnTimes {
    /// When its `Begin` was proposed on this leader (or it was adopted).
    pub begun_ms: u64,
    /// When its decision applied.
    pub decided_ms: Option<u64>,
    /// When each shard's acknowledgement of the decision arrived.
    pub acked_ms: BTreeMap<ShardId, u64>,
}

/// What the engine knows of one transaction it drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnProgress {
    /// `preparing`, `deciding` or `finishing`.
    pub phase: &'static str,
    /// Every shard the transaction touches.
    pub shards: Vec<ShardId>,
    /// While preparing: the shards that voted YES, and the first reason to
    /// abort seen. (Once deciding, the votes have done their work and are
    /// not kept.)
    pub yes: Vec<ShardId>,
    pub refused: Option<AbortReason>,
    /// While finishing: the decision and the shards that acknowledged it.
    pub outcome: Option<Outcome>,
    pub acked: Vec<ShardId>,
    /// When its steps happened (the driver fills this in; `None` when it
    /// did not see the transaction begin on this leader).
    pub times: Option<TxnTimes>,
}

impl Engine {
    /// The progress of `txn`, if this engine drives it.
    pub fn progress(&self, txn: &TxnId) -> Option<TxnProgress> {
        let record = self.txns.get(txn)?;
        let shards = record.shards.keys().copied().collect();
        let mut progress = TxnProgress {
            phase: "preparing",
            shards,
            yes: Vec::new(),
            refused: None,
            outcome: record.announced.clone(),
            acked: Vec::new(),
            times: None,
        };
        match &record.phase {
            Phase::Preparing(votes) => {
                progress.yes = votes.yes.iter().copied().collect();
                progress.refused = votes.refused.clone();
            }
            // `{ .. }`: the variants' other fields (retries, NO sets) are not
            // shown; on main `Deciding` has fields, here it has none yet.
            #[allow(clippy::unneeded_struct_pattern)]
            Phase::Deciding { .. } => progress.phase = "deciding",
            Phase::Finishing { outcome, acked, .. } => {
                progress.phase = "finishing";
                progress.outcome = Some(outcome.clone());
                progress.acked = acked.iter().copied().collect();
            }
        }
        Some(progress)
    }
}
