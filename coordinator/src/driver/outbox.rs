//! The driver's outbox: the prepares and decisions one mailbox drain
//! produced, grouped per shard so that they travel as one request each
//! ([`PeerRequest::PrepareBatch`], [`PeerRequest::DecideBatch`]) — one
//! frame, one decode, one task and one actor message on the shard's side
//! for many transactions, and on a replicated shard one log entry.
//!
//! Pure: the grouping, the chunking by count and bytes, and the mapping of
//! a batch's answer back to engine events. The driver does the I/O.

use crate::engine::Event;
use paytx_protocol::messages::{BatchVote, DecisionItem, PrepareItem, MAX_BATCH_ITEMS};
use paytx_protocol::{PeerResponse, ShardId, TxnId};
use std::collections::{BTreeMap, BTreeSet};

/// What waits to be sent to one shard.
#[derive(Debug, Default)]
pub(super) struct ShardOutbox {
    pub prepares: Vec<PrepareItem>,
    pub decisions: Vec<DecisionItem>,
}

/// Splits `items` into runs of at most `max_items` (and
/// [`MAX_BATCH_ITEMS`]) whose sizes sum to at most `max_bytes`; an item
/// larger than `max_bytes` on its own goes alone (validation bounds one
/// transaction's ops below a frame, so it still fits).
pub(super) fn chunks<T>(items: Vec<T>, size: impl Fn(&T) -> usize, max_items: usize, max_bytes: usize) -> Vec<Vec<T>> {
    let max_items = max_items.clamp(1, MAX_BATCH_ITEMS);
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut current_bytes = 0usize;
    for item in items {
        let bytes = size(&item);
        if !current.is_empty() && (current.len() >= max_items || current_bytes.saturating_add(bytes) > max_bytes) {
            out.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes = current_bytes.saturating_add(bytes);
        current.push(item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    assert!(out.iter().all(|chunk| !chunk.is_empty() && chunk.len() <= max_items), "a chunk out of its bounds");
    out
}

/// The engine events for the answer to a prepare batch of `txns` sent to
/// `shard`, and the transactions to send again alone (`Blocked`). An
/// answer is paired with its prepare by the transaction it names, never
/// by position; a transaction with no answer of its own — or an answer
/// from another shard, or no answer at all — is a failed prepare (which
/// aborts a fresh transaction and is retried for a re-driven one), never
/// a vote.
pub(super) fn prepare_batch_events(
    shard: ShardId,
    txns: &[TxnId],
    reply: Result<PeerResponse, String>,
) -> (Vec<Event>, Vec<TxnId>) {
    let mut answers: BTreeMap<TxnId, BatchVote> = BTreeMap::new();
    match reply {
        Ok(PeerResponse::Votes { shard: by, votes }) if by == shard => {
            for (txn, vote) in votes {
                // The first answer naming a transaction is its answer.
                answers.entry(txn).or_insert(vote);
            }
        }
        other => tracing::debug!(%shard, count = txns.len(), reply = ?other, "prepare batch failed"),
    }
    let mut events = Vec::with_capacity(txns.len());
    let mut blocked = Vec::new();
    for txn in txns {
        let txn = *txn;
        match answers.remove(&txn) {
            Some(BatchVote::Voted(vote)) => events.push(Event::VoteReceived { txn, shard, vote }),
            // PLANTED BUG (simulator only): a prepare that reserved nothing counts as a YES.
            Some(BatchVote::Blocked)
                if paytx_protocol::planted::active(paytx_protocol::planted::Bug::BlockedCountedAsYes) =>
            {
                events.push(Event::VoteReceived { txn, shard, vote: paytx_protocol::Vote::Yes })
            }
            Some(BatchVote::Blocked) => blocked.push(txn),
            Some(BatchVote::Failed(error)) => {
                tracing::debug!(%txn, %shard, %error, "a prepare of a batch failed");
                events.push(Event::PrepareFailed { txn, shard });
            }
            None => events.push(Event::PrepareFailed { txn, shard }),
        }
    }
    if !answers.is_empty() {
        tracing::error!(%shard, extra = answers.len(), "votes for prepares this batch did not carry; dropped");
    }
    (events, blocked)
}

/// The engine events for the answer to a decision batch of `txns` sent
/// to `shard`: an acknowledgement for each transaction the answer lists as
/// applied, a failed decision (retried) for every other.
pub(super) fn decide_batch_events(shard: ShardId, txns: &[TxnId], reply: Result<PeerResponse, String>) -> Vec<Event> {
    let applied: BTreeSet<TxnId> = match reply {
        Ok(PeerResponse::DecisionsApplied { shard: by, applied }) if by == shard => applied.into_iter().collect(),
        other => {
            tracing::debug!(%shard, count = txns.len(), reply = ?other, "decision batch not acknowledged; will retry");
            BTreeSet::new()
        }
    };
    txns.iter()
        .map(|txn| {
            if applied.contains(txn) {
                Event::DecideAcked { txn: *txn, shard }
            } else {
                Event::DecideFailed { txn: *txn, shard }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use paytx_protocol::{AbortReason, EntityKind, RequestError, Vote};

    fn txn(seq: u64) -> TxnId {
        TxnId { term: 1, node: 1, seq }
    }

    const SHARD: ShardId = ShardId { kind: EntityKind::Account, index: 0 };
    const OTHER: ShardId = ShardId { kind: EntityKind::Order, index: 0 };

    #[test]
    fn chunks_respect_the_count_and_the_byte_bound_and_keep_the_order() {
        let items: Vec<usize> = (0..10).collect();
        let by_count = chunks(items.clone(), |_| 1, 4, usize::MAX);
        assert_eq!(by_count, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        // 10 bytes each, 25 per chunk: two per chunk.
        let by_bytes = chunks(items.clone(), |_| 10, 100, 25);
        assert_eq!(by_bytes.len(), 5);
        assert!(by_bytes.iter().all(|chunk| chunk.len() == 2));
        // An item over the bound goes alone, and nothing is lost.
        let oversized = chunks(vec![1usize, 50, 2], |n| *n, 100, 10);
        assert_eq!(oversized, vec![vec![1], vec![50], vec![2]]);
        // Never more than MAX_BATCH_ITEMS, whatever the setting says.
        let many = chunks((0..MAX_BATCH_ITEMS + 1).collect::<Vec<_>>(), |_| 0, usize::MAX, usize::MAX);
        assert_eq!(many.iter().map(Vec::len).collect::<Vec<_>>(), vec![MAX_BATCH_ITEMS, 1]);
        assert!(chunks(Vec::<u8>::new(), |_| 1, 4, 4).is_empty());
    }

    #[test]
    fn batch_votes_are_paired_by_name_and_a_missing_one_is_a_failed_prepare() {
        let txns = [txn(1), txn(2), txn(3), txn(4)];
        let reply = Ok(PeerResponse::Votes {
            shard: SHARD,
            votes: vec![
                // Out of order, one of another transaction, one missing.
                (txn(3), BatchVote::Voted(Vote::No(AbortReason::PresumedAbort))),
                (txn(9), BatchVote::Voted(Vote::Yes)),
                (txn(1), BatchVote::Voted(Vote::Yes)),
                (txn(2), BatchVote::Blocked),
                // A second answer for txn 1 does not replace the first.
                (txn(1), BatchVote::Failed(RequestError::ShuttingDown)),
            ],
        });
        let (events, blocked) = prepare_batch_events(SHARD, &txns, reply);
        assert_eq!(blocked, vec![txn(2)]);
        assert_eq!(
            events,
            vec![
                Event::VoteReceived { txn: txn(1), shard: SHARD, vote: Vote::Yes },
                Event::VoteReceived { txn: txn(3), shard: SHARD, vote: Vote::No(AbortReason::PresumedAbort) },
                Event::PrepareFailed { txn: txn(4), shard: SHARD },
            ]
        );
    }

    #[test]
    fn a_failed_or_misaddressed_prepare_batch_fails_every_prepare() {
        let txns = [txn(1), txn(2)];
        let failed = vec![
            Event::PrepareFailed { txn: txn(1), shard: SHARD },
            Event::PrepareFailed { txn: txn(2), shard: SHARD },
        ];
        let from_other = Ok(PeerResponse::Votes { shard: OTHER, votes: vec![(txn(1), BatchVote::Voted(Vote::Yes))] });
        for reply in [
            Err("down".to_string()),
            from_other,
            Ok(PeerResponse::Acked),
            Ok(PeerResponse::Error(RequestError::ShuttingDown)),
        ] {
            assert_eq!(prepare_batch_events(SHARD, &txns, reply), (failed.clone(), vec![]));
        }
    }

    #[test]
    fn only_listed_decisions_are_acknowledged() {
        let txns = [txn(1), txn(2)];
        let reply = Ok(PeerResponse::DecisionsApplied { shard: SHARD, applied: vec![txn(2), txn(7)] });
        assert_eq!(
            decide_batch_events(SHARD, &txns, reply),
            vec![Event::DecideFailed { txn: txn(1), shard: SHARD }, Event::DecideAcked { txn: txn(2), shard: SHARD }]
        );
        let from_other = Ok(PeerResponse::DecisionsApplied { shard: OTHER, applied: vec![txn(1), txn(2)] });
        for reply in [from_other, Err("timeout".to_string())] {
            assert!(decide_batch_events(SHARD, &txns, reply).iter().all(|e| matches!(e, Event::DecideFailed { .. })));
        }
    }
}
