//! This worker's spare TLS record buffers. Hot path.
//!
//! A TLS connection borrows a read buffer while ciphertext waits in it (a partial record, or the
//! record being read) and a write buffer while encrypted bytes wait for the socket; both go back
//! as soon as they are empty, so an idle TLS connection holds neither. Worker-local (each worker
//! is one thread): no lock, no atomic. The worker's once-a-second sweep frees the spares the last
//! second did not need, like the HTTP/1.1 working sets.

use std::cell::{Cell, RefCell};

use crate::data::buf::Buf;
use crate::data::tls::record::{HEADER, MAX_CIPHERTEXT_12, MAX_OVERHEAD, MAX_PLAINTEXT};

/// A read buffer holds the largest record a peer may send.
pub const READ_BUF: usize = HEADER + MAX_CIPHERTEXT_12;
/// A write buffer holds two full records: a response up to 32 KiB leaves in one write.
pub const WRITE_BUF: usize = 2 * (MAX_PLAINTEXT + MAX_OVERHEAD);
/// Spares kept of each kind whatever the sweep finds (the next few connections need no malloc).
const KEEP: usize = 4;
/// The most spares kept of each kind.
const MAX: usize = 256;

#[derive(Default)]
struct Spares {
    free: RefCell<Vec<Buf>>,
    /// The fewest spares since the last sweep: that many were not needed.
    low: Cell<usize>,
    created: Cell<u64>,
}

impl Spares {
    #[inline]
    fn take(&self, size: usize) -> Buf {
        let mut free = self.free.borrow_mut();
        if let Some(b) = free.pop() {
            if free.len() < self.low.get() {
                self.low.set(free.len());
            }
            return b;
        }
        self.created.set(self.created.get() + 1);
        Buf::new(size)
    }

    #[inline]
    fn give(&self, mut b: Buf, size: usize) {
        if b.capacity() != size {
            return; // the empty husk of an idle connection, or not ours
        }
        let mut free = self.free.borrow_mut();
        if free.len() < MAX {
            b.clear();
            if free.capacity() == 0 {
                free.reserve_exact(MAX);
            }
            free.push(b);
        }
    }

    fn sweep(&self) -> usize {
        let mut free = self.free.borrow_mut();
        let unused = self.low.get().min(free.len().saturating_sub(KEEP));
        let keep = free.len() - unused;
        free.truncate(keep);
        if free.is_empty() {
            *free = Vec::new();
        }
        self.low.set(free.len());
        unused
    }
}

#[derive(Default)]
struct Pool {
    read: Spares,
    write: Spares,
}

thread_local! {
    static POOL: Pool = Pool::default();
}

#[inline]
pub fn take_read() -> Buf {
    POOL.with(|p| p.read.take(READ_BUF))
}

#[inline]
pub fn take_write() -> Buf {
    POOL.with(|p| p.write.take(WRITE_BUF))
}

/// Gives a read buffer back (an empty husk is ignored; during thread teardown it is freed).
#[inline]
pub fn give_read(b: Buf) {
    let mut b = Some(b);
    let _ = POOL.try_with(|p| {
        if let Some(b) = b.take() {
            p.read.give(b, READ_BUF);
        }
    });
}

#[inline]
pub fn give_write(b: Buf) {
    let mut b = Some(b);
    let _ = POOL.try_with(|p| {
        if let Some(b) = b.take() {
            p.write.give(b, WRITE_BUF);
        }
    });
}

/// The once-a-second trim: frees the spares the last second did not need. Returns (freed, spare
/// now, created so far), both kinds together.
pub fn sweep() -> (usize, usize, u64) {
    POOL.with(|p| {
        let freed = p.read.sweep() + p.write.sweep();
        let spare = p.read.free.borrow().len() + p.write.free.borrow().len();
        (freed, spare, p.read.created.get() + p.write.created.get())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_the_unneeded_ones_swept() {
        let a = take_read();
        let b = take_read();
        assert_eq!(a.capacity(), READ_BUF);
        give_read(a);
        give_read(b);
        give_read(Buf::empty()); // a husk is not kept
        let (_, spare, created) = sweep();
        assert_eq!((spare, created), (2, 2));
        let c = take_read();
        assert_eq!(sweep().2, 2, "a spare was reused, none created");
        give_read(c);
        // Nothing was taken in the last interval: everything above KEEP goes.
        for _ in 0..10 {
            give_read(Buf::new(READ_BUF));
        }
        // The first sweep frees only what the last interval did not use (1 of the then 2)...
        assert_eq!(sweep().0, 1);
        // ...the next, idle, interval leaves KEEP.
        assert_eq!(sweep(), (7, KEEP, 2));
    }
}
