//! `SeededRuntime`: openraft's tokio runtime with a seeded RNG.
//!
//! openraft's stock `TokioRuntime` draws election timeouts from
//! `rand::thread_rng()`, the one source of non-determinism found in openraft
//! 0.9 (see DESIGN.md, "Determinism recipe"). This runtime is identical
//! except that its RNG is a ChaCha generator in a thread-local cell, seeded
//! by [`seed_raft_rng`]. Production seeds it from the OS (the default when
//! never seeded); the simulator seeds it from the run seed before starting
//! the nodes, so every election timeout is a function of the seed.
//!
//! Its time is the node's [`NodeClock`]: openraft calls the runtime's
//! functions statically, so they read the clock of the task they run in
//! ([`NodeClock::current`]), and [`SeededRuntime::spawn`] carries that clock
//! into every task openraft spawns. A node started inside
//! [`NodeClock::scope`] (the simulator's skewed, drifting, pausable clocks)
//! therefore runs its elections and heartbeats on its own clock; outside any
//! scope (production) this is tokio's clock, as in openraft's
//! `TokioRuntime`.

use openraft::async_runtime::AsyncRuntime;
use openraft::OptionalSend;
use paytx_protocol::clock::{ClockSleep, ClockTimeout, Elapsed, NodeClock};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

thread_local! {
    static RAFT_RNG: RefCell<Option<ChaCha8Rng>> = const { RefCell::new(None) };
}

/// Seeds the Raft RNG of the current thread (every node the thread runs).
pub fn seed_raft_rng(seed: u64) {
    RAFT_RNG.with(|rng| *rng.borrow_mut() = Some(ChaCha8Rng::seed_from_u64(seed)));
}

/// A handle on the thread's seeded generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeededRng;

impl SeededRng {
    fn with<T>(f: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
        RAFT_RNG.with(|cell| {
            let mut slot = cell.borrow_mut();
            let rng = slot.get_or_insert_with(ChaCha8Rng::from_entropy);
            f(rng)
        })
    }
}

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        Self::with(|rng| rng.next_u32())
    }
    fn next_u64(&mut self) -> u64 {
        Self::with(|rng| rng.next_u64())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        Self::with(|rng| rng.fill_bytes(dest))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        Self::with(|rng| rng.try_fill_bytes(dest))
    }
}

/// openraft's `AsyncRuntime` on tokio, with [`SeededRng`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeededRuntime;

impl AsyncRuntime for SeededRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = ClockSleep;
    type Instant = NodeInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = ClockTimeout<T>;
    type ThreadLocalRng = SeededRng;
    type OneshotSender<T: OptionalSend> = openraft::async_runtime::TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn(NodeClock::carry(future))
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        NodeClock::current().sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        NodeClock::current().sleep_until(deadline.0)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        NodeClock::current().timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        NodeClock::current().timeout_at(deadline.0, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SeededRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (openraft::async_runtime::TokioOneShotSender(tx), rx)
    }
}

/// An instant of the current task's [`NodeClock`]: what openraft reads as
/// "now" (lease and election deadlines, heartbeat timing). Comparable only
/// with instants taken on the same node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeInstant(pub tokio::time::Instant);

impl openraft::Instant for NodeInstant {
    fn now() -> Self {
        NodeInstant(NodeClock::current().now())
    }
}

impl std::ops::Add<Duration> for NodeInstant {
    type Output = NodeInstant;
    fn add(self, rhs: Duration) -> NodeInstant {
        NodeInstant(self.0 + rhs)
    }
}

impl std::ops::AddAssign<Duration> for NodeInstant {
    fn add_assign(&mut self, rhs: Duration) {
        self.0 += rhs;
    }
}

impl std::ops::Sub<Duration> for NodeInstant {
    type Output = NodeInstant;
    fn sub(self, rhs: Duration) -> NodeInstant {
        NodeInstant(self.0 - rhs)
    }
}

impl std::ops::SubAssign<Duration> for NodeInstant {
    fn sub_assign(&mut self, rhs: Duration) {
        self.0 -= rhs;
    }
}

impl std::ops::Sub<NodeInstant> for NodeInstant {
    type Output = Duration;
    fn sub(self, rhs: NodeInstant) -> Duration {
        // Saturating, like tokio's: openraft only subtracts an earlier
        // instant, and a clock never runs backwards.
        self.0.saturating_duration_since(rhs.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn same_seed_same_sequence() {
        seed_raft_rng(42);
        let a: Vec<u64> = (0..4).map(|_| SeededRuntime::thread_rng().gen()).collect();
        seed_raft_rng(42);
        let b: Vec<u64> = (0..4).map(|_| SeededRuntime::thread_rng().gen()).collect();
        seed_raft_rng(43);
        let c: Vec<u64> = (0..4).map(|_| SeededRuntime::thread_rng().gen()).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    /// openraft's timers and its "now" follow the node's clock: a paused
    /// clock stops them, in the tasks the runtime spawns too.
    #[test]
    // The scope yields the spawned task's handle on purpose: the task must
    // outlive the scope to show that it carries the clock.
    #[allow(clippy::async_yields_async)]
    fn openraft_time_is_the_node_clock_even_in_spawned_tasks() {
        use openraft::Instant as _;
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let clock = NodeClock::simulated(0, 0);
            let handle = clock
                .clone()
                .scope(async {
                    SeededRuntime::spawn(async {
                        let started = NodeInstant::now();
                        SeededRuntime::sleep(Duration::from_millis(1_000)).await;
                        NodeInstant::now() - started
                    })
                })
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            clock.pause();
            tokio::time::sleep(Duration::from_millis(10_000)).await;
            assert!(!handle.is_finished(), "openraft's sleep ran on a paused clock");
            clock.resume();
            let started = tokio::time::Instant::now();
            let local = handle.await.unwrap();
            assert_eq!(local, Duration::from_millis(1_000), "the node saw its own time, not tokio's");
            assert_eq!(started.elapsed(), Duration::from_millis(900));
        });
    }
}
