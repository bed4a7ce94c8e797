//! Per-worker coarse timers for the connections' timeouts. Hot path.
//!
//! A tokio timer per wait costs a timer entry (created, inserted into the wheel when the wait
//! blocks, removed when it completes) and clock reads on every park: about a sixth of the
//! proxy's user-space instructions per request. Timeouts here are seconds long and need no
//! microsecond precision, so each open connection owns one slot holding a deadline in
//! milliseconds and its task's waker, and one tick task per worker (every [`TICK_MS`]) advances
//! a coarse clock and wakes the connections whose deadline passed — the scheme nginx and HAProxy
//! use. Arming a wait is a store into the slot (plus a `will_wake` compare); nothing is
//! allocated, no clock is read.
//!
//! Deadlines are computed from the coarse clock plus one tick, so a timeout never fires early;
//! it fires at most two ticks late. The table is scanned only when its earliest deadline has
//! passed, so idle keep-alive connections cost nothing per tick.

use crate::data::slots::SlotTable;
use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// Tick period of the coarse clock (the timeouts' resolution). Each tick that finds the worker
/// idle costs a wake-up (an `epoll_wait`): at 10 ms that showed as +0.1 syscalls per request at
/// 2,000 req/s; at 50 ms it is 20 wake-ups a second, and timeouts (seconds long) fire at most
/// ~0.1 s late.
pub const TICK_MS: u64 = 50;

/// Slot deadline: not waiting.
const DISARMED: u64 = 0;
/// Slot deadline: the deadline passed while the connection waited.
const FIRED: u64 = 1;
/// Deadlines start above the sentinels.
const EPOCH_MS: u64 = 2;

/// The wait did not complete before its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

#[derive(Debug, Default)]
struct Slot {
    deadline: u64,
    waker: Option<Waker>,
}

/// A worker's timer table and coarse clock.
#[derive(Debug)]
pub struct Timers {
    epoch: Instant,
    /// Milliseconds since `epoch` (plus [`EPOCH_MS`]), as of the last tick or request start.
    now_ms: Cell<u64>,
    /// No armed deadline is earlier than this (it may be earlier than all of them: a scan
    /// then finds nothing and recomputes it).
    earliest: Cell<u64>,
    slots: RefCell<SlotTable<Slot>>,
    ticking: Cell<bool>,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            epoch: Instant::now(),
            now_ms: Cell::new(EPOCH_MS),
            earliest: Cell::new(u64::MAX),
            slots: RefCell::new(SlotTable::default()),
            ticking: Cell::new(false),
        }
    }
}

impl Timers {
    fn ms(&self, t: Instant) -> u64 {
        EPOCH_MS + t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Refreshes the coarse clock from a clock reading the caller already has.
    #[inline]
    pub fn observe(&self, now: Instant) {
        self.now_ms.set(self.ms(now));
    }

    /// The deadline `after` from now (coarse clock plus one tick: never early).
    #[inline]
    pub fn deadline(&self, after: Duration) -> u64 {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX / 2);
        self.now_ms.get().saturating_add(ms).saturating_add(TICK_MS)
    }

    /// A slot for a new connection (per connection, never per request).
    pub fn register(&self) -> usize {
        self.slots.borrow_mut().register()
    }

    /// Frees a closed connection's slot.
    pub fn release(&self, slot: usize) {
        self.slots.borrow_mut().release(slot);
    }

    /// Gives back the memory of slots a departed crowd left (once a second, off the request path).
    pub fn trim(&self) -> usize {
        self.slots.borrow_mut().trim()
    }

    /// Runs `fut` until it completes or `deadline` (from [`Timers::deadline`]) passes. The slot
    /// is armed only if `fut` does not complete on its first poll.
    pub async fn within<F: Future>(&self, slot: usize, deadline: u64, fut: F) -> Result<F::Output, Elapsed> {
        let mut fut = std::pin::pin!(fut);
        let _disarm = Disarm { timers: self, slot };
        poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            self.arm(slot, deadline, cx)
        })
        .await
    }

    /// For hand-written futures that wait on something else as well (no nested future, so no
    /// state to store): `Ready` once `deadline` has passed, else arms the slot with `cx`'s waker.
    /// Disarm with [`Timers::disarm`] when the wait ends another way.
    #[inline]
    pub fn poll_expired(&self, slot: usize, deadline: u64, cx: &mut Context<'_>) -> Poll<()> {
        self.arm::<()>(slot, deadline, cx).map(|_| ())
    }

    /// Ends a wait begun with [`Timers::poll_expired`].
    #[inline]
    pub fn disarm(&self, slot: usize) {
        drop(Disarm { timers: self, slot });
    }

    #[inline]
    fn arm<T>(&self, slot: usize, deadline: u64, cx: &mut Context<'_>) -> Poll<Result<T, Elapsed>> {
        let mut slots = self.slots.borrow_mut();
        let Some(s) = slots.get_mut(slot) else { return Poll::Pending };
        if s.deadline == FIRED {
            s.deadline = DISARMED;
            return Poll::Ready(Err(Elapsed));
        }
        s.deadline = deadline;
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        if deadline < self.earliest.get() {
            self.earliest.set(deadline);
        }
        Poll::Pending
    }

    /// Advances the clock to `now` and wakes every connection whose deadline passed.
    fn tick(&self, now: Instant) {
        let now_ms = self.ms(now);
        self.now_ms.set(now_ms);
        if now_ms < self.earliest.get() {
            return;
        }
        let mut earliest = u64::MAX;
        for s in self.slots.borrow_mut().iter_mut() {
            if s.deadline <= FIRED {
                continue;
            }
            if s.deadline <= now_ms {
                s.deadline = FIRED;
                if let Some(w) = &s.waker {
                    w.wake_by_ref();
                }
            } else {
                earliest = earliest.min(s.deadline);
            }
        }
        self.earliest.set(earliest);
    }

    /// For deterministic measurements only (the gates' instruction bench): the tick task never
    /// starts, so no wall-clock-driven work mixes into an instruction count — and no timeout
    /// ever fires. The tick's cost is per second (at most 100 wake-ups), not per request.
    pub fn never_tick(&self) {
        self.ticking.set(true);
    }

    /// Starts the worker's tick task the first time it is called on this worker (idempotent).
    pub fn start(self: &Rc<Self>) {
        if self.ticking.replace(true) {
            return;
        }
        let timers = Rc::clone(self);
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let at = tick.tick().await;
                timers.tick(at.max(Instant::now()));
            }
        });
    }
}

/// Clears the slot when a wait ends (completed, timed out or cancelled).
struct Disarm<'a> {
    timers: &'a Timers,
    slot: usize,
}

impl Drop for Disarm<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(s) = self.timers.slots.borrow_mut().get_mut(self.slot) {
            s.deadline = DISARMED;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_ready_future_never_arms_and_a_pending_one_times_out_not_early() {
        rt().block_on(tokio::task::LocalSet::new().run_until(async {
            let t = Rc::new(Timers::default());
            t.start();
            let slot = t.register();
            t.observe(Instant::now());
            let d = t.deadline(Duration::from_millis(50));
            assert_eq!(t.within(slot, d, async { 7 }).await, Ok(7));
            assert_eq!(t.slots.borrow_mut().get_mut(slot).map(|s| s.deadline), Some(DISARMED));

            let start = std::time::Instant::now();
            t.observe(Instant::now());
            let d = t.deadline(Duration::from_millis(50));
            let r = t.within(slot, d, std::future::pending::<()>()).await;
            let took = start.elapsed();
            assert_eq!(r, Err(Elapsed));
            assert!(took >= Duration::from_millis(50), "fired early: {took:?}");
            assert!(took < Duration::from_millis(50 + 20 * TICK_MS), "fired late: {took:?}");
            assert_eq!(t.slots.borrow_mut().get_mut(slot).map(|s| s.deadline), Some(DISARMED));

            // A wait that completes before its deadline is not woken later, and the slot is
            // reusable by the next wait.
            t.observe(Instant::now());
            let d = t.deadline(Duration::from_millis(200));
            let r = t.within(slot, d, tokio::time::sleep(Duration::from_millis(20))).await;
            assert_eq!(r, Ok(()));
            t.release(slot);
            assert_eq!(t.register(), slot);
        }));
    }

    #[test]
    fn only_expired_slots_fire() {
        rt().block_on(tokio::task::LocalSet::new().run_until(async {
            let t = Rc::new(Timers::default());
            t.start();
            let (a, b) = (t.register(), t.register());
            t.observe(Instant::now());
            let (short, long) = (t.deadline(Duration::from_millis(30)), t.deadline(Duration::from_secs(30)));
            let fa = t.within(a, short, std::future::pending::<()>());
            let fb = t.within(b, long, tokio::time::sleep(Duration::from_millis(150)));
            let (ra, rb) = tokio::join!(fa, fb);
            assert_eq!(ra, Err(Elapsed));
            assert_eq!(rb, Ok(()));
        }));
    }
}
