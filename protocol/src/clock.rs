//! The clock seam: each node's sense of time.
//!
//! Every timer of a node — openraft's elections and heartbeats (through
//! `paytx_raft::runtime::SeededRuntime`), the 2PC driver's tick and
//! deadlines, a shard's lock waits and in-doubt queries, the service's
//! request budgets, the transport's reply timeouts — runs on its node's
//! [`NodeClock`]. In production a node's clock *is* tokio's clock
//! ([`NodeClock::real`]: every call is the plain tokio call). The simulator
//! gives each node a clock of its own ([`NodeClock::simulated`]) over the
//! run's one virtual tokio clock:
//!
//! - **skew**: the node's instants are offset from every other node's. The
//!   protocol never compares instants across nodes (an `Instant` is not
//!   serialisable; only durations such as `prepare_timeout_ms` cross the
//!   wire), and the skew keeps it honest: code that started to would see
//!   nodes seconds apart.
//! - **drift**: the node's time runs faster or slower, by `drift_ppm`
//!   parts per million — its election timeouts, heartbeats, prepare
//!   deadlines and retries all fire early or late together, as on a machine
//!   whose oscillator is off.
//! - **pause**: the node's time stops ([`NodeClock::pause`]): no timer of
//!   the node fires until [`NodeClock::resume`], as for a process stopped
//!   by `SIGSTOP`, a VM migration or a long GC pause. Then every timer whose
//!   deadline passed fires at once, late.
//!
//! Local time is integer nanoseconds scaled by an integer rate, so a run
//! stays a function of its seed. Instants of a node's clock must only be
//! compared with instants of the same clock.
//!
//! Code reached from openraft's static runtime functions cannot be handed a
//! clock; it reads [`NodeClock::current`], the clock of the task it runs in
//! (a tokio task-local set by [`NodeClock::scope`] and carried into the
//! tasks the runtime spawns). Everything else is given its node's clock
//! explicitly at construction.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Largest drift the simulator gives a clock, in parts per million (±5%).
/// Quartz drifts by ±100 ppm; the bound is far larger so that timing
/// assumptions break visibly in a campaign, and small enough that a timer
/// still means what its name says.
pub const MAX_DRIFT_PPM: i64 = 50_000;

const PPM: i128 = 1_000_000;

/// What a simulated clock's [`NodeClock::unix_ms`] reads at its run's
/// anchor: 2026-01-01T00:00:00Z, a fixed date so that a run's log times (and
/// every statement day derived from them) are a function of its seed.
pub const SIM_UNIX_EPOCH_MS: u64 = 1_767_225_600_000;

tokio::task_local! {
    static CURRENT: NodeClock;
}

/// One node's clock. Cheap to clone (an `Arc`); clones are the same clock.
#[derive(Clone, Default)]
pub struct NodeClock {
    /// `None`: tokio's own clock, untouched.
    sim: Option<Arc<SimClock>>,
}

impl std::fmt::Debug for NodeClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sim {
            None => f.write_str("NodeClock::real"),
            Some(sim) => {
                let state = sim.lock();
                write!(f, "NodeClock {{ drift_ppm: {}, paused: {} }}", state.drift_ppm, state.paused)
            }
        }
    }
}

struct SimClock {
    state: Mutex<ClockState>,
    /// The instant (of tokio's clock) that reads as [`SIM_UNIX_EPOCH_MS`]
    /// on every clock of one simulated run, so nodes' Unix times differ by
    /// their skew and drift only.
    unix_anchor: Instant,
    /// Bumped at every pause, resume or rate change: sleepers recompute.
    changed: watch::Sender<u64>,
}

impl SimClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        // The state is two instants and two flags, each update complete
        // before the lock is released: a poisoned lock holds a valid state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|version| *version = version.wrapping_add(1));
    }
}

/// Local time is `origin_local + (global − origin_global) × (1 + drift)`,
/// frozen at `origin_local` while paused; every pause, resume or rate
/// change re-bases the two origins, so local time is continuous.
#[derive(Debug, Clone, Copy)]
struct ClockState {
    origin_global: Instant,
    origin_local: Instant,
    drift_ppm: i64,
    paused: bool,
}

impl ClockState {
    fn local_at(&self, global: Instant) -> Instant {
        if self.paused {
            return self.origin_local;
        }
        let elapsed = global.saturating_duration_since(self.origin_global);
        self.origin_local + scale(elapsed, PPM + self.drift_ppm as i128, PPM)
    }

    /// The global time that passes while `local` of this clock does
    /// (rounded up, so a timer never fires before its local deadline).
    fn global_for(&self, local: Duration) -> Duration {
        let rate = PPM + self.drift_ppm as i128;
        let nanos = (local.as_nanos() as i128 * PPM + rate - 1) / rate;
        Duration::from_nanos(nanos.clamp(0, u64::MAX as i128) as u64)
    }
}

fn scale(duration: Duration, numerator: i128, denominator: i128) -> Duration {
    let nanos = duration.as_nanos() as i128 * numerator / denominator;
    Duration::from_nanos(nanos.clamp(0, u64::MAX as i128) as u64)
}

impl NodeClock {
    /// tokio's clock (production, and every test that does not skew time).
    pub fn real() -> Self {
        NodeClock { sim: None }
    }

    /// A simulated clock `skew_ms` ahead of tokio's, running `drift_ppm`
    /// parts per million fast (negative: slow). `drift_ppm` is clamped to
    /// ±[`MAX_DRIFT_PPM`].
    pub fn simulated(skew_ms: u64, drift_ppm: i64) -> Self {
        NodeClock::simulated_from(Instant::now(), skew_ms, drift_ppm)
    }

    /// [`NodeClock::simulated`], reading [`SIM_UNIX_EPOCH_MS`] (plus skew)
    /// as Unix time at `unix_anchor`: the simulator gives every clock of a
    /// run the run's start, so a restarted node's Unix time carries on.
    pub fn simulated_from(unix_anchor: Instant, skew_ms: u64, drift_ppm: i64) -> Self {
        let now = Instant::now();
        let state = ClockState {
            origin_global: now,
            origin_local: now + Duration::from_millis(skew_ms),
            drift_ppm: drift_ppm.clamp(-MAX_DRIFT_PPM, MAX_DRIFT_PPM),
            paused: false,
        };
        let (changed, _) = watch::channel(0);
        NodeClock { sim: Some(Arc::new(SimClock { state: Mutex::new(state), unix_anchor, changed })) }
    }

    /// The clock of the task this runs in ([`NodeClock::scope`]); tokio's
    /// clock outside any scope.
    pub fn current() -> Self {
        CURRENT.try_with(|clock| clock.clone()).unwrap_or_default()
    }

    /// Runs `future` with this clock as [`NodeClock::current`].
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }

    /// Wraps `future` so that it runs with the [`NodeClock::current`] of
    /// the caller — for runtimes that spawn tasks on a node's behalf.
    pub fn carry<F: Future>(future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(NodeClock::current(), future)
    }

    /// `true` for a simulated clock.
    pub fn is_simulated(&self) -> bool {
        self.sim.is_some()
    }

    /// Now, on this clock. Only comparable with this clock's instants.
    pub fn now(&self) -> Instant {
        let global = Instant::now();
        match &self.sim {
            None => global,
            Some(sim) => sim.lock().local_at(global),
        }
    }

    /// Milliseconds since the Unix epoch on this clock: the system's wall
    /// clock in production, [`SIM_UNIX_EPOCH_MS`] plus the run's virtual
    /// time (skewed, drifting, stopped while paused) in the simulator. Not
    /// monotonic across nodes or restarts: whoever stamps the log with it
    /// keeps the log's time from going back (see the coordinator's
    /// `Command::Stamp`).
    pub fn unix_ms(&self) -> u64 {
        match &self.sim {
            // The seam's one reading of the wall clock. A clock set before
            // 1970 reads as the epoch: log time only ever takes the maximum.
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            Some(sim) => {
                let local = self.now();
                let since = local.saturating_duration_since(sim.unix_anchor).as_millis() as u64;
                SIM_UNIX_EPOCH_MS.saturating_add(since)
            }
        }
    }

    /// Stops this clock: no timer on it fires until [`NodeClock::resume`].
    /// No effect on tokio's clock.
    pub fn pause(&self) {
        if let Some(sim) = &self.sim {
            let global = Instant::now();
            {
                let mut state = sim.lock();
                if state.paused {
                    return;
                }
                state.origin_local = state.local_at(global);
                state.origin_global = global;
                state.paused = true;
            }
            sim.notify();
        }
    }

    /// Starts a paused clock again where it stopped.
    pub fn resume(&self) {
        if let Some(sim) = &self.sim {
            {
                let mut state = sim.lock();
                if !state.paused {
                    return;
                }
                state.origin_global = Instant::now();
                state.paused = false;
            }
            sim.notify();
        }
    }

    pub fn is_paused(&self) -> bool {
        self.sim.as_ref().is_some_and(|sim| sim.lock().paused)
    }

    /// This clock's drift in parts per million (0 for tokio's clock).
    pub fn drift_ppm(&self) -> i64 {
        self.sim.as_ref().map_or(0, |sim| sim.lock().drift_ppm)
    }

    /// Completes once `duration` has passed on this clock.
    pub fn sleep(&self, duration: Duration) -> ClockSleep {
        match &self.sim {
            None => ClockSleep(Box::pin(tokio::time::sleep(duration))),
            Some(_) => {
                let deadline = self.now() + duration;
                self.sleep_until(deadline)
            }
        }
    }

    /// Completes once this clock reads `deadline` (an instant of this
    /// clock).
    pub fn sleep_until(&self, deadline: Instant) -> ClockSleep {
        match &self.sim {
            None => ClockSleep(Box::pin(tokio::time::sleep_until(deadline))),
            Some(sim) => ClockSleep(Box::pin(sim_sleep_until(sim.clone(), deadline))),
        }
    }

    /// `future`, or [`Elapsed`] once `duration` has passed on this clock.
    pub fn timeout<F: Future>(&self, duration: Duration, future: F) -> ClockTimeout<F> {
        ClockTimeout { future: Box::pin(future), sleep: self.sleep(duration) }
    }

    /// `future`, or [`Elapsed`] once this clock reads `deadline`.
    pub fn timeout_at<F: Future>(&self, deadline: Instant, future: F) -> ClockTimeout<F> {
        ClockTimeout { future: Box::pin(future), sleep: self.sleep_until(deadline) }
    }

    /// Spawns `future` on tokio with this clock as its
    /// [`NodeClock::current`].
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(CURRENT.scope(self.clone(), future))
    }

    /// A tick every `period` of this clock, the first one `period` from
    /// now (like actix's `run_interval`). Ticks missed while paused are not
    /// replayed one by one: the next comes at once, then the period again.
    pub fn ticks(&self, period: Duration) -> impl futures::Stream<Item = ()> + Send + 'static {
        let clock = self.clone();
        futures::stream::unfold(self.now() + period, move |deadline| {
            let clock = clock.clone();
            async move {
                clock.sleep_until(deadline).await;
                let next = (deadline + period).max(clock.now());
                Some(((), next))
            }
        })
    }
}

/// Sleeps on tokio's clock for as long as the local deadline is away at
/// the current rate, then looks again. A running sleep needs no wake-up
/// on a pause or resume: a clock only ever runs at its rate or stands
/// still, so the global sleep ends at or before the local deadline — a
/// pause in between makes it end early, and the loop sleeps the rest (or
/// waits for the resume). Only a paused clock waits for `changed`, with the
/// subscription taken before the state is read again, so a resume in
/// between is not missed. (The first version selected on `changed` in
/// every sleep: a watch subscription and a notify registration per timer,
/// 5% of a simulator profile.)
async fn sim_sleep_until(sim: Arc<SimClock>, deadline: Instant) {
    loop {
        let wait = {
            let state = sim.lock();
            if state.paused {
                None
            } else {
                let now = state.local_at(Instant::now());
                if now >= deadline {
                    return;
                }
                Some(state.global_for(deadline - now))
            }
        };
        match wait {
            Some(global) => tokio::time::sleep(global).await,
            // Paused: nothing to count down until the clock moves again.
            None => {
                let mut changed = sim.changed.subscribe();
                if sim.lock().paused {
                    // The sender lives as long as `sim`, which this holds.
                    let _ = changed.changed().await;
                }
            }
        }
    }
}

/// A sleep on a [`NodeClock`].
pub struct ClockSleep(Pin<Box<dyn Future<Output = ()> + Send + Sync>>);

impl Future for ClockSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

/// The error of a [`ClockTimeout`] that elapsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline has elapsed")]
pub struct Elapsed;

/// A future with a deadline on a [`NodeClock`].
pub struct ClockTimeout<F: Future> {
    future: Pin<Box<F>>,
    sleep: ClockSleep,
}

impl<F: Future> Future for ClockTimeout<F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
    }

    /// How much global (tokio) time `future` takes.
    async fn global_ms<F: Future>(future: F) -> u64 {
        let started = Instant::now();
        future.await;
        started.elapsed().as_millis() as u64
    }

    #[test]
    fn the_real_clock_is_tokios() {
        rt().block_on(async {
            let clock = NodeClock::real();
            let before = Instant::now();
            assert_eq!(clock.now(), before);
            assert_eq!(global_ms(clock.sleep(Duration::from_millis(250))).await, 250);
            clock.pause();
            assert!(!clock.is_paused(), "tokio's clock cannot be paused");
        });
    }

    #[test]
    fn skew_offsets_a_clock_and_drift_scales_its_timers() {
        rt().block_on(async {
            let fast = NodeClock::simulated(3_000, 50_000); // +5%
            let slow = NodeClock::simulated(0, -20_000); // -2%
            let clamped = NodeClock::simulated(0, 10 * MAX_DRIFT_PPM);
            assert_eq!(clamped.drift_ppm(), MAX_DRIFT_PPM);
            let global = Instant::now();
            assert_eq!(fast.now() - global, Duration::from_millis(3_000));
            // 1,050 ms of the fast clock pass in 1,000 ms.
            assert_eq!(global_ms(fast.sleep(Duration::from_millis(1_050))).await, 1_000);
            // 980 ms of the slow clock take 1,000 ms.
            assert_eq!(global_ms(slow.sleep(Duration::from_millis(980))).await, 1_000);
            let before = fast.now();
            tokio::time::advance(Duration::from_millis(500)).await;
            assert_eq!(fast.now() - before, Duration::from_millis(525));
        });
    }

    #[test]
    fn a_paused_clock_stops_its_timers_and_resumes_where_it_stopped() {
        rt().block_on(async {
            let clock = NodeClock::simulated(0, 0);
            let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (task_clock, task_fired) = (clock.clone(), fired.clone());
            let timer = tokio::spawn(async move {
                task_clock.sleep(Duration::from_millis(1_000)).await;
                task_fired.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            tokio::time::sleep(Duration::from_millis(400)).await;
            clock.pause();
            let frozen = clock.now();
            tokio::time::sleep(Duration::from_millis(5_000)).await;
            assert!(!fired.load(std::sync::atomic::Ordering::SeqCst), "a timer fired on a paused clock");
            assert_eq!(clock.now(), frozen, "a paused clock moved");
            clock.resume();
            // 600 ms of the timer were left when the clock stopped.
            assert_eq!(global_ms(timer).await, 600);
            assert!(fired.load(std::sync::atomic::Ordering::SeqCst));
        });
    }

    #[test]
    fn a_pause_and_resume_while_a_timer_sleeps_delay_it_by_the_pause() {
        rt().block_on(async {
            let clock = NodeClock::simulated(0, 20_000); // +2%
            let task_clock = clock.clone();
            let timer = tokio::spawn(async move { global_ms(task_clock.sleep(Duration::from_millis(1_020))).await });
            tokio::time::sleep(Duration::from_millis(400)).await;
            clock.pause();
            tokio::time::sleep(Duration::from_millis(300)).await;
            clock.resume();
            // 1,020 local ms take 1,000 global ones, plus the 300 paused.
            assert_eq!(timer.await.unwrap(), 1_300);
        });
    }

    #[test]
    fn timeouts_run_on_the_clock_and_pass_a_ready_future_through() {
        rt().block_on(async {
            let clock = NodeClock::simulated(0, 0);
            assert_eq!(clock.timeout(Duration::from_millis(10), async { 7 }).await, Ok(7));
            clock.pause();
            let pending = clock.timeout(Duration::from_millis(10), std::future::pending::<()>());
            let outer = tokio::time::timeout(Duration::from_millis(1_000), pending).await;
            assert!(outer.is_err(), "a timeout elapsed on a paused clock");
            clock.resume();
            let elapsed = clock.timeout(Duration::from_millis(10), std::future::pending::<()>()).await;
            assert_eq!(elapsed, Err(Elapsed));
        });
    }

    #[test]
    fn ticks_follow_the_clock_and_a_scope_sets_the_current_clock() {
        rt().block_on(async {
            use futures::StreamExt;
            let clock = NodeClock::simulated(0, 50_000);
            let ticks = clock.ticks(Duration::from_millis(105));
            futures::pin_mut!(ticks);
            let started = Instant::now();
            for _ in 0..3 {
                ticks.next().await;
            }
            assert_eq!(started.elapsed(), Duration::from_millis(300));

            assert!(!NodeClock::current().is_simulated());
            let seen = clock.clone().scope(async { NodeClock::current().drift_ppm() }).await;
            assert_eq!(seen, 50_000);
            let carried = clock.spawn(async { NodeClock::carry(async { NodeClock::current().drift_ppm() }).await });
            assert_eq!(carried.await.unwrap(), 50_000);
        });
    }
}
