//! An actor's timers on its node's clock.
//!
//! actix's own `run_later` and `run_interval` sleep on tokio's clock, which
//! the simulator's per-node clocks (skewed, drifting, paused — see
//! `paytx_protocol::clock`) cannot reach. Every actor of a node (the 2PC
//! driver, a shard's front or actor) schedules through [`ClockTimers`]
//! instead, with the clock it took at construction.

use actix::fut::{wrap_future, wrap_stream, ActorFutureExt, ActorStreamExt};
use actix::{Actor, AsyncContext, SpawnHandle};
use paytx_protocol::clock::NodeClock;
use std::time::Duration;

/// `run_later` and `run_interval` on a [`NodeClock`].
pub trait ClockTimers<A: Actor> {
    /// Runs `f` once `delay` has passed on `clock` (cancelled with the
    /// returned handle, or when the actor stops).
    fn run_later_on<F>(&mut self, clock: &NodeClock, delay: Duration, f: F) -> SpawnHandle
    where
        F: FnOnce(&mut A, &mut A::Context) + 'static;

    /// Runs `f` every `period` of `clock`, the first time `period` from now.
    fn run_interval_on<F>(&mut self, clock: &NodeClock, period: Duration, f: F) -> SpawnHandle
    where
        F: FnMut(&mut A, &mut A::Context) + 'static;
}

impl<A, C> ClockTimers<A> for C
where
    A: Actor<Context = C>,
    C: AsyncContext<A>,
{
    fn run_later_on<F>(&mut self, clock: &NodeClock, delay: Duration, f: F) -> SpawnHandle
    where
        F: FnOnce(&mut A, &mut A::Context) + 'static,
    {
        self.spawn(wrap_future::<_, A>(clock.sleep(delay)).map(move |(), act, ctx| f(act, ctx)))
    }

    fn run_interval_on<F>(&mut self, clock: &NodeClock, period: Duration, mut f: F) -> SpawnHandle
    where
        F: FnMut(&mut A, &mut A::Context) + 'static,
    {
        self.spawn(wrap_stream::<_, A>(clock.ticks(period)).map(move |(), act, ctx| f(act, ctx)).finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::{Context, Handler, Message};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    struct Ticker {
        clock: NodeClock,
        ticks: Arc<AtomicU64>,
        fired_later: Arc<AtomicU64>,
    }

    impl Actor for Ticker {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Context<Self>) {
            let clock = self.clock.clone();
            ctx.run_interval_on(&clock, Duration::from_millis(100), |act, _| {
                act.ticks.fetch_add(1, Ordering::SeqCst);
            });
            ctx.run_later_on(&clock, Duration::from_millis(250), |act, _| {
                act.fired_later.fetch_add(1, Ordering::SeqCst);
            });
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Ping;

    impl Handler<Ping> for Ticker {
        type Result = ();
        fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
    }

    /// The timers follow the actor's clock: they stop while it is paused.
    #[test]
    fn an_actors_timers_stop_while_its_clock_is_paused() {
        let system = actix::System::with_tokio_rt(|| {
            tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
        });
        system.block_on(async {
            let clock = NodeClock::simulated(0, 0);
            let (ticks, fired_later) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let ticker = Ticker { clock: clock.clone(), ticks: ticks.clone(), fired_later: fired_later.clone() };
            let addr = ticker.start();
            addr.send(Ping).await.unwrap();
            tokio::time::sleep(Duration::from_millis(205)).await;
            assert_eq!(ticks.load(Ordering::SeqCst), 2);
            clock.pause();
            tokio::time::sleep(Duration::from_millis(5_000)).await;
            assert_eq!(ticks.load(Ordering::SeqCst), 2, "an interval ticked on a paused clock");
            assert_eq!(fired_later.load(Ordering::SeqCst), 0, "a delayed call ran on a paused clock");
            clock.resume();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(ticks.load(Ordering::SeqCst), 3);
            assert_eq!(fired_later.load(Ordering::SeqCst), 1);
        });
    }
}
