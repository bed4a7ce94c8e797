//! Worker-local state: the snapshot cache, the upstream pool and the balancer counters. Hot path.
//!
//! One `Worker` per thread, shared by that thread's connections through `Rc` (never `Send`).
//! The only cross-thread object a request touches is the published snapshot, read through an
//! `arc_swap::Cache` (one atomic load per request, no refcount traffic while it is unchanged).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use arc_swap::{ArcSwap, Cache};
use tokio::sync::watch;

use crate::data::access::AccessLog;
use crate::data::metrics::WorkerMetrics;
use crate::data::slots::SlotTable;
use crate::data::timer::Timers;
use crate::data::upstream::pool::Pool;
use crate::data::upstream::session::Sessions;
use crate::snapshot::{Balance, Server, Snapshot, UpstreamGroup};

/// What all workers share: the published snapshot and process-wide counters touched only per
/// connection (never per request).
#[derive(Debug)]
pub struct Shared {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Open client connections across all workers (for `limits.max_connections`).
    pub connections: AtomicUsize,
    /// One counter block per worker, indexed by worker index; each written only by its worker.
    pub metrics: Box<[WorkerMetrics]>,
    /// The process phase, set by the control plane. Workers watch it from one task each (not
    /// per connection, not per request) and relay a drain to their connections (see [`Drain`]).
    pub phase: watch::Sender<Phase>,
    /// The access log's channel, when `[log] access_log` is on (fixed at start).
    pub access_log: Option<AccessLog>,
}

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// Listeners closed; in-flight requests finish, keep-alive connections close.
    Draining,
    /// The drain deadline passed (or every connection closed): workers stop now.
    Stopped,
}

impl Shared {
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        Self::with_workers(snapshot, 1, None)
    }

    /// `workers` counter blocks (at least one).
    pub fn with_workers(snapshot: Snapshot, workers: usize, access_log: Option<AccessLog>) -> Arc<Self> {
        Arc::new(Shared {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            connections: AtomicUsize::new(0),
            metrics: (0..workers.max(1)).map(|_| WorkerMetrics::default()).collect(),
            phase: watch::channel(Phase::Serving).0,
            access_log,
        })
    }
}

/// A worker's drain signal, relayed from [`Shared::phase`] by the worker's control task.
///
/// Connections look at it only while idle between requests (beside the read of the next request
/// head) and when choosing `Connection: close` for a response (a `Cell` read on worker-local
/// memory). Each open connection owns a slot holding the waker of its task; waiting costs a
/// `will_wake` pointer compare once the slot holds the task's waker (no lock, no atomic, no
/// waker clone per request), and a drain wakes every slot. Slots are reused (lowest first) and
/// the table shrinks once a second when a crowd has left (see [`crate::data::slots`]).
#[derive(Debug, Default)]
pub struct Drain {
    draining: Cell<bool>,
    slots: RefCell<SlotTable<Option<Waker>>>,
}

impl Drain {
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Marks the worker as draining and wakes every connection (those idle close, the others
    /// notice at the end of their exchange).
    pub fn start(&self) {
        self.draining.set(true);
        for w in self.slots.borrow_mut().iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
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

    /// Ready once the worker drains; otherwise keeps the task's waker in `slot`.
    #[inline]
    pub fn poll_drained(&self, slot: usize, cx: &mut Context<'_>) -> Poll<()> {
        if self.draining.get() {
            return Poll::Ready(());
        }
        if let Some(w) = self.slots.borrow_mut().get_mut(slot) {
            match w {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}

pub struct Worker {
    pub shared: Arc<Shared>,
    pub index: usize,
    pub drain: Drain,
    /// The connections' timeouts (see [`crate::data::timer`]).
    pub timers: Rc<Timers>,
    metrics_slot: usize,
    cache: RefCell<Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>>,
    /// The snapshot requests on this worker use. `Rc` around the `Arc` on purpose: handing it to
    /// a request is a non-atomic increment, so requests never touch the shared refcount's cache
    /// line; the `Arc` is cloned only when a new snapshot is published.
    #[allow(clippy::redundant_allocation)] // reason: see above; one allocation per reload, not per request
    current: RefCell<Rc<Arc<Snapshot>>>,
    pub pool: RefCell<Pool>,
    /// HTTP/2 sessions to the servers of groups that speak HTTP/2.
    pub sessions: RefCell<Sessions>,
    /// Round-robin position per upstream group index.
    rr: RefCell<Vec<usize>>,
    /// In-flight requests per server id (this worker's view; for least-in-flight).
    in_flight: RefCell<Vec<u32>>,
    rng: Cell<u64>,
    /// Requests left until the next sampled one (tracing).
    sample_countdown: Cell<u64>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("index", &self.index).finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(shared: Arc<Shared>, index: usize) -> Rc<Self> {
        let mut cache = Cache::new(Arc::clone(&shared.snapshot));
        let current = Rc::new(Arc::clone(cache.load()));
        let metrics_slot = index.min(shared.metrics.len().saturating_sub(1));
        Rc::new(Worker {
            shared,
            index,
            drain: Drain::default(),
            timers: Rc::new(Timers::default()),
            metrics_slot,
            cache: RefCell::new(cache),
            current: RefCell::new(current),
            pool: RefCell::new(Pool::default()),
            sessions: RefCell::new(Sessions::default()),
            rr: RefCell::new(Vec::new()),
            in_flight: RefCell::new(Vec::new()),
            rng: Cell::new(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1)),
            sample_countdown: Cell::new(0),
        })
    }

    /// The snapshot a new request runs on. Held for the whole exchange, so a reload never
    /// changes the routing of a request in flight. Allocates only when a new snapshot appears.
    #[inline]
    pub fn snapshot(&self) -> Rc<Arc<Snapshot>> {
        let mut cache = self.cache.borrow_mut();
        let latest = cache.load();
        let mut current = self.current.borrow_mut();
        if !Arc::ptr_eq(latest, &current) {
            *current = Rc::new(Arc::clone(latest));
        }
        Rc::clone(&current)
    }

    /// This worker's counters.
    #[inline]
    pub fn metrics(&self) -> &WorkerMetrics {
        &self.shared.metrics[self.metrics_slot]
    }

    /// Picks a server of `group` (index `gi` in its snapshot).
    pub fn pick(&self, gi: usize, group: &UpstreamGroup) -> Server {
        let servers = &group.servers;
        if servers.len() == 1 {
            return servers[0];
        }
        match group.balance {
            Balance::RoundRobin => {
                let mut rr = self.rr.borrow_mut();
                if rr.len() <= gi {
                    rr.resize(gi + 1, self.index);
                }
                let i = rr[gi] % servers.len();
                rr[gi] = rr[gi].wrapping_add(1);
                servers[i]
            }
            Balance::LeastInFlight => {
                let n = servers.len() as u64;
                let r = self.next_random();
                let a = (r % n) as usize;
                let b = ((a as u64 + 1 + (r >> 32) % (n - 1)) % n) as usize; // distinct from a
                let inf = self.in_flight.borrow();
                let load = |s: &Server| inf.get(s.id).copied().unwrap_or(0);
                if load(&servers[b]) < load(&servers[a]) { servers[b] } else { servers[a] }
            }
        }
    }

    pub fn begin(&self, server_id: usize) {
        let mut inf = self.in_flight.borrow_mut();
        if inf.len() <= server_id {
            inf.resize(server_id + 1, 0);
        }
        inf[server_id] += 1;
    }

    pub fn end(&self, server_id: usize) {
        if let Some(n) = self.in_flight.borrow_mut().get_mut(server_id) {
            *n = n.saturating_sub(1);
        }
    }

    /// Whether this request gets a tracing span: one in `every` (0 = never, the default). With
    /// sampling off this is one compare and branch.
    #[inline]
    pub fn sampled(&self, every: u64) -> bool {
        every != 0 && self.sample_tick(every)
    }

    #[inline(never)]
    fn sample_tick(&self, every: u64) -> bool {
        let left = self.sample_countdown.get();
        if left == 0 {
            self.sample_countdown.set(every - 1);
            true
        } else {
            self.sample_countdown.set(left - 1);
            false
        }
    }

    fn next_random(&self) -> u64 {
        // xorshift64*: cheap, worker-local, good enough to pick two servers.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Counts one open client connection against `limits.max_connections`; released on drop.
#[derive(Debug)]
pub struct ConnPermit {
    shared: Arc<Shared>,
}

impl ConnPermit {
    pub fn try_acquire(shared: &Arc<Shared>, max: usize) -> Option<Self> {
        let prev = shared.connections.fetch_add(1, Ordering::Relaxed);
        if prev >= max {
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ConnPermit { shared: Arc::clone(shared) })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{ServerIds, parse};
    use std::path::Path;

    fn worker(balance: &str) -> Rc<Worker> {
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\nbalance = \"{balance}\"\n"
        );
        let c = parse(Path::new("t"), &text, &mut ServerIds::default()).unwrap();
        Worker::new(Shared::new(c.snapshot), 0)
    }

    #[test]
    fn round_robin_cycles() {
        let w = worker("round_robin");
        let snap = w.snapshot();
        let g = &snap.groups[0];
        let ids: Vec<usize> = (0..6).map(|_| w.pick(0, g).id).collect();
        assert_eq!(ids, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_in_flight_avoids_loaded_server() {
        let w = worker("least_in_flight");
        let snap = w.snapshot();
        let g = &snap.groups[0];
        for _ in 0..10 {
            w.begin(0);
            w.begin(1);
        }
        let picks: Vec<usize> = (0..50).map(|_| w.pick(0, g).id).collect();
        // Any pair that includes server 2 must choose it; pairs are distinct so 2 wins 2/3 of draws
        // and 0/1 are only chosen when drawn together.
        assert!(picks.iter().filter(|&&i| i == 2).count() >= 20, "{picks:?}");
    }

    #[test]
    fn snapshot_is_cached_until_swapped() {
        let w = worker("round_robin");
        let a = w.snapshot();
        let b = w.snapshot();
        assert!(Rc::ptr_eq(&a, &b));
    }

    #[test]
    fn drain_wakes_registered_connections_and_reuses_slots() {
        use std::sync::atomic::AtomicUsize;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let d = Drain::default();
        let (a, b) = (d.register(), d.register());
        assert_ne!(a, b);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(d.poll_drained(a, &mut cx).is_pending());
        assert!(d.poll_drained(a, &mut cx).is_pending()); // same task: the stored waker is kept
        d.release(b);
        assert_eq!(d.register(), b);
        d.start();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(d.is_draining());
        assert!(d.poll_drained(a, &mut cx).is_ready());
    }

    #[test]
    fn sampling_picks_one_in_every() {
        let w = worker("round_robin");
        assert!((0..1000).all(|_| !w.sampled(0)));
        assert_eq!((0..1000).filter(|_| w.sampled(10)).count(), 100);
        assert_eq!((0..1000).filter(|_| w.sampled(1)).count(), 1000);
    }

    #[test]
    fn permits_respect_the_limit() {
        let w = worker("round_robin");
        let p1 = ConnPermit::try_acquire(&w.shared, 2).unwrap();
        let _p2 = ConnPermit::try_acquire(&w.shared, 2).unwrap();
        assert!(ConnPermit::try_acquire(&w.shared, 2).is_none());
        drop(p1);
        assert!(ConnPermit::try_acquire(&w.shared, 2).is_some());
    }
}
