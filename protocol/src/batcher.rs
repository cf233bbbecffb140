//! One batcher, written once: the queue in front of every replicated step.
//!
//! openraft 0.9.25's leader awaits the flush of each appended entry before it
//! takes the next client write, so a group that proposes one entry per
//! transaction step is capped at one step per fsync. A [`Batcher`] sits in
//! front of such a resource: items queue while at most `max_in_flight`
//! batches are outstanding, and each batch takes as many queued items as fit
//! in `max_items` and `max_bytes`. It never waits on a timer: when nothing is
//! in flight the first item leaves at once (a lone payment is not delayed);
//! under load the queue fills while the resource works, which is exactly
//! when a bigger batch pays off (TigerBeetle, FoundationDB's commit proxies).
//!
//! Pure data, no I/O and no clock: the caller asks for [`Batcher::next_batch`]
//! whenever it queued something or a batch finished, and reports
//! [`Batcher::finished`] when one completes.

use std::collections::VecDeque;

/// The bounds of a [`Batcher`]. Every one is at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most items in one batch.
    pub max_items: usize,
    /// Most bytes (as the caller sizes its items) in one batch. An item
    /// larger than this on its own still leaves, alone: the caller bounds
    /// single items (by validation) so that one always fits downstream.
    pub max_bytes: usize,
    /// Most batches outstanding at once.
    pub max_in_flight: usize,
    /// Most items queued (not yet in a batch); more are refused.
    pub max_queued: usize,
}

impl BatchLimits {
    fn sanitized(self) -> Self {
        BatchLimits {
            max_items: self.max_items.max(1),
            max_bytes: self.max_bytes.max(1),
            max_in_flight: self.max_in_flight.max(1),
            max_queued: self.max_queued.max(1),
        }
    }
}

/// The queue was at `max_queued`: the item is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the batch queue is full ({queued} items queued)")]
pub struct QueueFull<T> {
    pub item: T,
    pub queued: usize,
}

/// Accumulates items into bounded batches with a bounded number in flight.
#[derive(Debug)]
pub struct Batcher<T> {
    limits: BatchLimits,
    queue: VecDeque<(T, usize)>,
    in_flight: usize,
    /// Lifetime totals, for reports (items per batch).
    batches_total: u64,
    items_total: u64,
}

impl<T> Batcher<T> {
    pub fn new(limits: BatchLimits) -> Self {
        Batcher { limits: limits.sanitized(), queue: VecDeque::new(), in_flight: 0, batches_total: 0, items_total: 0 }
    }

    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// Queues `item`, sized `bytes`, behind everything queued before it.
    pub fn push(&mut self, item: T, bytes: usize) -> Result<(), QueueFull<T>> {
        if self.queue.len() >= self.limits.max_queued {
            return Err(QueueFull { item, queued: self.queue.len() });
        }
        self.queue.push_back((item, bytes));
        Ok(())
    }

    /// The next batch to send, if a slot is free and anything is queued.
    /// Items leave in the order they were pushed. Counts the batch as in
    /// flight until [`Batcher::finished`].
    pub fn next_batch(&mut self) -> Option<Vec<T>> {
        if self.in_flight >= self.limits.max_in_flight || self.queue.is_empty() {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while let Some((_, size)) = self.queue.front() {
            let fits = batch.is_empty()
                || (batch.len() < self.limits.max_items && bytes.saturating_add(*size) <= self.limits.max_bytes);
            if !fits {
                break;
            }
            bytes = bytes.saturating_add(*size);
            let (item, _) = self.queue.pop_front().expect("front() just returned an item");
            batch.push(item);
        }
        assert!(!batch.is_empty() && batch.len() <= self.limits.max_items, "a batch within its bounds");
        self.in_flight += 1;
        self.batches_total += 1;
        self.items_total += batch.len() as u64;
        Some(batch)
    }

    /// A batch handed out by [`Batcher::next_batch`] completed (either way).
    pub fn finished(&mut self) {
        assert!(self.in_flight > 0, "a batch finished that was never handed out");
        self.in_flight -= 1;
    }

    /// Drops every queued item (not the batches in flight) and returns them.
    pub fn drain_queued(&mut self) -> Vec<T> {
        self.queue.drain(..).map(|(item, _)| item).collect()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// (batches handed out, items in them) since creation.
    pub fn totals(&self) -> (u64, u64) {
        (self.batches_total, self.items_total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_items: usize, max_bytes: usize, max_in_flight: usize) -> BatchLimits {
        BatchLimits { max_items, max_bytes, max_in_flight, max_queued: 1_000 }
    }

    #[test]
    fn a_lone_item_leaves_at_once() {
        let mut batcher = Batcher::new(limits(100, 1_000, 1));
        assert_eq!(batcher.next_batch(), None::<Vec<u32>>, "nothing queued, nothing sent");
        batcher.push(7u32, 10).unwrap();
        assert_eq!(batcher.next_batch(), Some(vec![7]));
        assert_eq!(batcher.in_flight(), 1);
    }

    #[test]
    fn items_accumulate_while_the_slots_are_taken_and_leave_in_order() {
        let mut batcher = Batcher::new(limits(100, 1_000, 2));
        batcher.push(1u32, 1).unwrap();
        assert_eq!(batcher.next_batch(), Some(vec![1]));
        batcher.push(2, 1).unwrap();
        assert_eq!(batcher.next_batch(), Some(vec![2]));
        for i in 3..10 {
            batcher.push(i, 1).unwrap();
        }
        assert_eq!(batcher.next_batch(), None, "both slots in flight");
        batcher.finished();
        assert_eq!(batcher.next_batch(), Some((3..10).collect()));
        assert_eq!(batcher.totals(), (3, 9));
    }

    #[test]
    fn a_batch_closes_at_the_count_and_the_byte_bound() {
        let mut batcher = Batcher::new(limits(3, 100, 10));
        for i in 0..5u32 {
            batcher.push(i, 10).unwrap();
        }
        assert_eq!(batcher.next_batch(), Some(vec![0, 1, 2]), "count bound");
        assert_eq!(batcher.next_batch(), Some(vec![3, 4]));
        let mut batcher = Batcher::new(limits(100, 100, 10));
        for i in 0..5u32 {
            batcher.push(i, 40).unwrap();
        }
        assert_eq!(batcher.next_batch(), Some(vec![0, 1]), "80 bytes; a third would be 120");
        assert_eq!(batcher.next_batch(), Some(vec![2, 3]));
        assert_eq!(batcher.next_batch(), Some(vec![4]));
    }

    #[test]
    fn an_oversized_item_leaves_alone_and_never_blocks_the_queue() {
        let mut batcher = Batcher::new(limits(100, 100, 10));
        batcher.push(1u32, 10).unwrap();
        batcher.push(2, 500).unwrap();
        batcher.push(3, 10).unwrap();
        assert_eq!(batcher.next_batch(), Some(vec![1]));
        assert_eq!(batcher.next_batch(), Some(vec![2]));
        assert_eq!(batcher.next_batch(), Some(vec![3]));
    }

    #[test]
    fn the_queue_is_bounded_and_hands_the_item_back() {
        let mut batcher = Batcher::new(BatchLimits { max_items: 1, max_bytes: 1, max_in_flight: 1, max_queued: 2 });
        batcher.push(1u32, 1).unwrap();
        batcher.push(2, 1).unwrap();
        assert_eq!(batcher.push(3, 1), Err(QueueFull { item: 3, queued: 2 }));
        assert_eq!(batcher.drain_queued(), vec![1, 2]);
        assert_eq!(batcher.queued(), 0);
    }

    #[test]
    #[should_panic(expected = "never handed out")]
    fn finishing_more_than_was_sent_is_a_bug() {
        let mut batcher: Batcher<u32> = Batcher::new(limits(1, 1, 1));
        batcher.finished();
    }

    #[test]
    fn zero_limits_are_raised_to_one() {
        let mut batcher = Batcher::new(BatchLimits { max_items: 0, max_bytes: 0, max_in_flight: 0, max_queued: 0 });
        batcher.push(1u32, 5).unwrap();
        assert_eq!(batcher.next_batch(), Some(vec![1]));
    }
}
