//! `SeededRuntime`: openraft's tokio runtime with a seeded RNG.
//!
//! openraft's stock `TokioRuntime` draws election timeouts from
//! `rand::thread_rng()`, the one source of non-determinism found in openraft
//! 0.9 (see DESIGN.md, "Determinism recipe"). This runtime is identical
//! except that its RNG is a ChaCha generator in a thread-local cell, seeded
//! by [`seed_raft_rng`]. Production seeds it from the OS (the default when
//! never seeded); the simulator seeds it from the run seed before starting
//! the nodes, so every election timeout is a function of the seed.

use openraft::async_runtime::AsyncRuntime;
use openraft::{OptionalSend, TokioInstant};
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
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = SeededRng;
    type OneshotSender<T: OptionalSend> = openraft::async_runtime::TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
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
}
