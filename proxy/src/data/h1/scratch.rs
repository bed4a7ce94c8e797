//! HTTP/1.1's per-worker pool of connection working sets (issue 14: memory per connection). Hot
//! path.
//!
//! Everything a connection needs only while it is reading, proxying or writing a request — the
//! client read buffer, the output buffer, the parsed request and response heads and the upstream
//! read buffer — is one [`Scratch`], lent by the worker's [`ScratchPool`] when the connection
//! becomes active and given back when it has been idle for `memory.release_idle_after` (or
//! closes). An idle keep-alive connection therefore holds no buffer at all, as nginx's does
//! between requests; a busy one keeps its set from request to request, so taking one is not an
//! allocation per request (the alloc gate proves it).
//!
//! The pool is worker-local — a thread-local `RefCell<Vec>` (each worker is one thread running its
//! own runtime; the shared worker state may not name this protocol's types): no lock, no atomic,
//! like the upstream pool. It keeps at most `memory.pool_max` spare sets, and the worker's sweeper
//! frees, once a second, the spare sets that were not needed during the last second (the low
//! watermark of the free list), so memory goes back when a crowd leaves. Later protocols (TLS
//! record buffers, HTTP/2 connection state) lend their working state from pools of this kind.

use std::cell::{Cell, RefCell};

use crate::data::buf::Buf;
use crate::data::h1::head::{RequestHead, ResponseHead};

/// Output buffer capacity: a rewritten head plus the body bytes that came with it.
pub const OUT_BUF: usize = 8 * 1024;
/// Upstream read buffer capacity (response heads must fit).
pub const UPSTREAM_BUF: usize = 16 * 1024;
/// Client read buffer floor; grown to the configured head limit when that is larger.
pub const CLIENT_BUF: usize = 16 * 1024;

/// One connection's working set while it is active.
#[derive(Debug)]
pub struct Scratch {
    /// Client bytes: request heads and the body bytes read with them.
    pub buf: Buf,
    /// Bytes on their way out: a rewritten head, the body bytes that came with it, a de-chunked
    /// body part.
    pub out: Vec<u8>,
    pub req: RequestHead,
    pub res: ResponseHead,
    /// Upstream bytes: response heads and body parts relayed from here.
    pub up: Buf,
}

impl Scratch {
    /// What an idle connection holds: nothing allocated.
    pub fn husk() -> Self {
        Scratch { buf: Buf::empty(), out: Vec::new(), req: RequestHead::new(0), res: ResponseHead::with_fields(0), up: Buf::empty() }
    }

    fn new(client_buf: usize) -> Self {
        Scratch {
            buf: Buf::new(client_buf),
            out: Vec::with_capacity(OUT_BUF),
            req: RequestHead::new(crate::config::MAX_HEADERS_CEILING),
            res: ResponseHead::new(),
            up: Buf::new(UPSTREAM_BUF),
        }
    }

    pub fn is_husk(&self) -> bool {
        self.buf.capacity() == 0
    }
}

/// A worker's spare working sets.
#[derive(Debug)]
pub struct ScratchPool {
    free: RefCell<Vec<Scratch>>,
    /// Spare sets kept at most; more given back are freed.
    max: Cell<usize>,
    /// The fewest spare sets since the last sweep: that many were not needed and can go.
    low: Cell<usize>,
    /// Sets allocated (taken when none was spare), for `/metrics` and the tests.
    pub created: Cell<u64>,
}

impl Default for ScratchPool {
    fn default() -> Self {
        ScratchPool { free: RefCell::new(Vec::new()), max: Cell::new(DEFAULT_POOL_MAX), low: Cell::new(0), created: Cell::new(0) }
    }
}

/// Spare sets a worker keeps when the config does not say (`memory.pool_max`).
pub const DEFAULT_POOL_MAX: usize = 64;

/// Spare sets a sweep always leaves, so a worker serving a request every few seconds does not
/// allocate a set for each (a few tens of KiB per worker).
pub const SWEEP_FLOOR: usize = 2;

thread_local! {
    /// This worker thread's pool.
    static POOL: ScratchPool = ScratchPool::default();
}

/// Lends a working set from this worker's pool (see [`ScratchPool::take`]).
#[inline]
pub fn take(client_buf: usize) -> Scratch {
    POOL.with(|p| p.take(client_buf))
}

/// Gives a working set back to this worker's pool. During thread teardown (the pool already
/// gone) the set is simply freed.
#[inline]
pub fn give(s: Scratch) {
    #[cfg(feature = "planted")]
    if !s.is_husk() && crate::data::planted::leaks_working_set() {
        crate::data::planted::leak(s);
        return;
    }
    let mut s = Some(s);
    let _ = POOL.try_with(|p| {
        if let Some(s) = s.take() {
            p.give(s);
        }
    });
}

/// This worker's pool as it stands: (spare sets, sets created so far).
pub fn stats() -> (usize, u64) {
    POOL.with(|p| (p.spare(), p.created.get()))
}

/// The worker's once-a-second trim: applies `max` and frees the spare sets the last second did
/// not need. Returns (freed, still spare, created so far).
pub fn sweep(max: usize) -> (usize, usize, u64) {
    POOL.with(|p| {
        p.set_max(max);
        let freed = p.sweep();
        (freed, p.spare(), p.created.get())
    })
}

impl ScratchPool {
    /// Lends a working set whose client buffer holds `client_buf` bytes. A spare set of another
    /// size (the head limit changed on reload) is freed instead of lent.
    #[inline]
    pub fn take(&self, client_buf: usize) -> Scratch {
        let mut free = self.free.borrow_mut();
        while let Some(s) = free.pop() {
            if free.len() < self.low.get() {
                self.low.set(free.len());
            }
            if s.buf.capacity() == client_buf {
                return s;
            }
        }
        drop(free);
        self.created.set(self.created.get() + 1);
        Scratch::new(client_buf)
    }

    /// Takes a set back (a husk is ignored). Its buffers are emptied; beyond `max` spare sets it
    /// is freed.
    #[inline]
    pub fn give(&self, mut s: Scratch) {
        if s.is_husk() {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < self.max.get() {
            s.buf.clear();
            s.up.clear();
            s.out.clear();
            if free.capacity() == 0 {
                free.reserve_exact(self.max.get());
            }
            free.push(s);
        }
    }

    /// Sets the most spare sets kept (from the config, on start and reload).
    pub fn set_max(&self, max: usize) {
        self.max.set(max);
        self.free.borrow_mut().truncate(max);
    }

    /// Frees the spare sets that were not needed since the last sweep (run once a second, off
    /// the request path), keeping [`SWEEP_FLOOR`]. Returns how many were freed.
    pub fn sweep(&self) -> usize {
        let mut free = self.free.borrow_mut();
        let unused = self.low.get().min(free.len().saturating_sub(SWEEP_FLOOR));
        let keep = free.len() - unused;
        free.truncate(keep);
        self.low.set(free.len());
        unused
    }

    pub fn spare(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lends_and_reuses_without_allocating_again() {
        let p = ScratchPool::default();
        let a = p.take(CLIENT_BUF);
        assert!(!a.is_husk());
        assert_eq!(p.created.get(), 1);
        p.give(a);
        assert_eq!(p.spare(), 1);
        let b = p.take(CLIENT_BUF);
        assert_eq!(p.created.get(), 1, "a spare set is lent, not a new one");
        p.give(b);
        p.give(Scratch::husk());
        assert_eq!(p.spare(), 1, "a husk is not a spare set");
    }

    #[test]
    fn a_set_of_another_size_is_freed_not_lent() {
        let p = ScratchPool::default();
        p.give(p.take(CLIENT_BUF));
        let s = p.take(CLIENT_BUF * 2);
        assert_eq!(s.buf.capacity(), CLIENT_BUF * 2);
        assert_eq!(p.created.get(), 2);
        assert_eq!(p.spare(), 0);
    }

    #[test]
    fn keeps_at_most_max_spare() {
        let p = ScratchPool::default();
        p.set_max(2);
        let sets: Vec<Scratch> = (0..5).map(|_| p.take(CLIENT_BUF)).collect();
        for s in sets {
            p.give(s);
        }
        assert_eq!(p.spare(), 2);
    }

    #[test]
    fn sweep_frees_what_a_second_did_not_need() {
        let p = ScratchPool::default();
        // A crowd: 10 sets in use at once, then all back.
        let sets: Vec<Scratch> = (0..10).map(|_| p.take(CLIENT_BUF)).collect();
        for s in sets {
            p.give(s);
        }
        assert_eq!(p.spare(), 10);
        p.sweep(); // the crowd's second: the free list was empty at its low point
        assert_eq!(p.spare(), 10);
        // A quiet second: at most 2 in use at once.
        let (a, b) = (p.take(CLIENT_BUF), p.take(CLIENT_BUF));
        p.give(a);
        p.give(b);
        assert_eq!(p.sweep(), 8, "8 spare sets were never needed");
        assert_eq!(p.spare(), 2);
        let c = p.take(CLIENT_BUF);
        p.give(c);
        p.give(p.take(CLIENT_BUF));
        assert_eq!(p.sweep(), 0, "the floor stays");
        assert_eq!(p.spare(), SWEEP_FLOOR);
    }
}
