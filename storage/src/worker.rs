//! A long-lived OS thread that runs blocking disk work for async callers.
//!
//! sled's `flush_async` hands every flush to sled's adaptive thread pool,
//! which under load created several hundred short-lived `sled-io` threads
//! in a few seconds (seen in a `perf` profile of `paytx bench`); tokio's
//! `spawn_blocking` would do the same with its own pool. A group commit has
//! at most one flush (and one watermark write) in progress at a time, so one
//! dedicated thread per stage does the work without any thread churn.
//!
//! Production only: the simulator's disk (`MemDisk`) never blocks.

use std::sync::mpsc;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The worker thread is gone (it panicked, or the disk is being dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {name} thread is not running")]
pub struct WorkerStopped {
    pub name: &'static str,
}

/// One named thread running jobs in submission order.
pub struct Worker {
    name: &'static str,
    /// Unbounded, but callers submit under a lock that admits one job at a
    /// time (the flush lock, the watermark lock), so it holds at most one.
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    /// Starts the thread. It ends when the `Worker` is dropped.
    pub fn start(name: &'static str) -> std::io::Result<Worker> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new().name(name.to_string()).spawn(move || {
            while let Ok(job) = queue.recv() {
                job();
            }
        })?;
        Ok(Worker { name, jobs })
    }

    /// Runs `work` on the thread and waits for its result without blocking
    /// the caller's executor.
    pub async fn run<R, F>(&self, work: F) -> Result<R, WorkerStopped>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller may have gone away; the work is done either way.
            let _ = done.send(work());
        });
        self.jobs.send(job).map_err(|_| WorkerStopped { name: self.name })?;
        result.await.map_err(|_| WorkerStopped { name: self.name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_one_named_thread_in_order() {
        let worker = Worker::start("test-worker").unwrap();
        let mut names = Vec::new();
        for i in 0..5u32 {
            let (name, n) = worker.run(move || (std::thread::current().name().map(str::to_string), i)).await.unwrap();
            assert_eq!(n, i);
            names.push(name);
        }
        assert!(names.iter().all(|n| n.as_deref() == Some("test-worker")), "{names:?}");
    }

    #[tokio::test]
    async fn a_panicking_job_is_a_typed_error_not_a_hang() {
        let worker = Worker::start("test-panics").unwrap();
        let result = worker.run(|| -> u32 { panic!("disk exploded") }).await;
        assert_eq!(result, Err(WorkerStopped { name: "test-panics" }));
        assert!(worker.run(|| 1).await.is_err(), "the thread is gone for good");
    }
}
