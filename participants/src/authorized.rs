//! Charges whose channel authorization a prepare already drew, kept for the
//! prepare's second sending.
//!
//! A prepare inside a batch never waits for a lock: when a transaction
//! still prepared here holds what it needs, it is answered `Blocked` and
//! the coordinator sends it again alone (DESIGN.md, batching). By then a
//! channel shard has authorized its charges — waited the channel's latency
//! and drawn its decline. Authorizing again on the second sending would ask
//! the channel twice for one charge (and give a declined-once charge a
//! second chance, or an approved one a second chance to be declined). So a
//! blocked transaction's authorization is remembered here, and its second
//! sending takes it instead of drawing again — as a parked prepare retried
//! after a lock is released already does.
//!
//! Memory only, per leader: a second sending that reaches another leader
//! (the group's leadership moved in between) is authorized there, once.
//! Bounded by [`MAX_AUTHORIZED_AWAITING`], oldest forgotten first (a
//! forgotten one is authorized again, which is what happened before).

use paytx_protocol::TxnId;
use std::collections::{BTreeSet, VecDeque};

/// Blocked transactions remembered at most, per shard leader. A batch holds
/// at most `MAX_BATCH_ITEMS` prepares and is sent again within a round
/// trip, so this covers many batches in flight.
pub const MAX_AUTHORIZED_AWAITING: usize = 4_096;

/// Transactions whose charges were authorized by a prepare answered
/// `Blocked`, waiting to be sent again.
#[derive(Debug, Default)]
pub(crate) struct Authorized {
    /// Oldest first, for the bound.
    order: VecDeque<TxnId>,
    held: BTreeSet<TxnId>,
}

impl Authorized {
    /// `txn`'s charges were authorized and approved, and its prepare was
    /// answered `Blocked`.
    pub(crate) fn remember(&mut self, txn: TxnId) {
        if !self.held.insert(txn) {
            return;
        }
        self.order.push_back(txn);
        while self.order.len() > MAX_AUTHORIZED_AWAITING {
            if let Some(oldest) = self.order.pop_front() {
                self.held.remove(&oldest);
            }
        }
        assert_eq!(self.order.len(), self.held.len(), "one entry per remembered transaction");
    }

    /// Whether `txn` was authorized already; forgets it either way (a
    /// prepare takes its authorization once).
    pub(crate) fn take(&mut self, txn: TxnId) -> bool {
        if !self.held.remove(&txn) {
            return false;
        }
        self.order.retain(|held| *held != txn);
        true
    }

    /// The transaction was decided: its second sending will not come.
    pub(crate) fn forget(&mut self, txn: TxnId) {
        self.take(txn);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(seq: u64) -> TxnId {
        TxnId { term: 1, node: 1, seq }
    }

    #[test]
    fn an_authorization_is_taken_once() {
        let mut authorized = Authorized::default();
        assert!(!authorized.take(txn(1)), "nothing remembered yet");
        authorized.remember(txn(1));
        authorized.remember(txn(1));
        assert_eq!(authorized.len(), 1, "remembered once");
        assert!(authorized.take(txn(1)));
        assert!(!authorized.take(txn(1)), "a second sending after the first authorizes again");
        authorized.remember(txn(2));
        authorized.forget(txn(2));
        assert!(!authorized.take(txn(2)), "a decided transaction is forgotten");
    }

    #[test]
    fn the_oldest_is_forgotten_past_the_bound() {
        let mut authorized = Authorized::default();
        for seq in 0..=MAX_AUTHORIZED_AWAITING as u64 {
            authorized.remember(txn(seq));
        }
        assert_eq!(authorized.len(), MAX_AUTHORIZED_AWAITING);
        assert!(!authorized.take(txn(0)), "the oldest went");
        assert!(authorized.take(txn(1)) && authorized.take(txn(MAX_AUTHORIZED_AWAITING as u64)));
    }
}
