//! When each step of a live transaction happened, for the admin API and
//! the console ("acknowledged 2.4 s after the decision"): the driver notes
//! the time of a transaction's `Begin`, its decision and each shard's
//! acknowledgement as it sees them, on its tick clock, and drops them when
//! the transaction is forgotten. Kept beside the engine rather than in it:
//! the engine has no clock, by design, and these times decide nothing.
//!
//! Bounded: at most [`MAX_TIMED_TXNS`] transactions; over that the oldest
//! (lowest id) goes first — a transaction the engine gave up tracking
//! (left to the table and the participants' in-doubt queries) is never
//! forgotten through here.

use crate::engine::TxnTimes;
use paytx_protocol::{ShardId, TxnId};
use std::collections::BTreeMap;

/// Transactions whose times are kept: the engine's in-flight bound plus
/// its finishing bound, with room to spare.
pub const MAX_TIMED_TXNS: usize = 100_000;

#[derive(Debug, Default)]
pub struct Timeline {
    txns: BTreeMap<TxnId, TxnTimes>,
}

impl Timeline {
    pub fn begun(&mut self, txn: TxnId, now_ms: u64) {
        if self.txns.contains_key(&txn) {
            return;
        }
        while self.txns.len() >= MAX_TIMED_TXNS {
            self.txns.pop_first();
        }
        self.txns.insert(txn, TxnTimes { begun_ms: now_ms, ..TxnTimes::default() });
        assert!(self.txns.len() <= MAX_TIMED_TXNS, "the timeline is bounded");
    }

    /// The first decision seen counts (a re-applied one changes nothing).
    pub fn decided(&mut self, txn: TxnId, now_ms: u64) {
        if let Some(times) = self.txns.get_mut(&txn) {
            times.decided_ms.get_or_insert(now_ms);
        }
    }

    /// The first acknowledgement of each shard counts (a re-sent decision is
    /// acknowledged again).
    pub fn acked(&mut self, txn: TxnId, shard: ShardId, now_ms: u64) {
        if let Some(times) = self.txns.get_mut(&txn) {
            times.acked_ms.entry(shard).or_insert(now_ms);
        }
    }

    pub fn forget(&mut self, txns: &[TxnId]) {
        for txn in txns {
            self.txns.remove(txn);
        }
    }

    /// Leadership lost: the next leader's driver keeps its own.
    pub fn clear(&mut self) {
        self.txns.clear();
    }

    pub fn get(&self, txn: &TxnId) -> Option<&TxnTimes> {
        self.txns.get(txn)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.txns.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paytx_protocol::EntityKind;

    fn txn(seq: u64) -> TxnId {
        TxnId { term: 1, node: 1, seq }
    }

    #[test]
    fn the_first_decision_and_each_shards_first_ack_count_and_forget_drops_them() {
        let shard = |index| ShardId { kind: EntityKind::Account, index };
        let mut timeline = Timeline::default();
        timeline.decided(txn(9), 5); // never begun here: nothing kept
        assert!(timeline.is_empty());
        timeline.begun(txn(1), 100);
        timeline.decided(txn(1), 140);
        timeline.decided(txn(1), 900);
        timeline.acked(txn(1), shard(0), 160);
        timeline.acked(txn(1), shard(0), 700);
        timeline.acked(txn(1), shard(1), 2_500);
        let times = timeline.get(&txn(1)).expect("kept").clone();
        assert_eq!((times.begun_ms, times.decided_ms), (100, Some(140)));
        assert_eq!(times.acked_ms, BTreeMap::from([(shard(0), 160), (shard(1), 2_500)]));
        timeline.begun(txn(1), 3_000);
        assert_eq!(timeline.get(&txn(1)).map(|t| t.begun_ms), Some(100), "a second Begin does not restart it");
        timeline.forget(&[txn(1)]);
        assert!(timeline.get(&txn(1)).is_none());
    }

    #[test]
    fn over_the_bound_the_oldest_goes_first() {
        let mut timeline = Timeline::default();
        for seq in 0..MAX_TIMED_TXNS as u64 + 2 {
            timeline.begun(txn(seq), seq);
        }
        assert_eq!(timeline.len(), MAX_TIMED_TXNS);
        assert!(timeline.get(&txn(0)).is_none() && timeline.get(&txn(1)).is_none());
        assert!(timeline.get(&txn(MAX_TIMED_TXNS as u64 + 1)).is_some());
    }
}
