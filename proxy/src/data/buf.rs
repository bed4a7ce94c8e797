//! A fixed-capacity byte buffer, lent to a connection by its worker's pool. Hot path.
//!
//! Allocated by the pool ([`crate::data::scratch`]) and never grown: reads land in its spare
//! tail, consumed bytes advance the head, and the unread rest is moved to the front only when the
//! tail runs out. An idle connection holds an empty one ([`Buf::empty`], no memory). This is what
//! makes "no allocation per request" true for the I/O path.

#[derive(Debug)]
pub struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buf {
    pub fn new(capacity: usize) -> Self {
        Buf { data: vec![0; capacity].into_boxed_slice(), start: 0, end: 0 }
    }

    /// A buffer holding exactly `bytes`, full: what a connection waiting for the rest of a
    /// request head keeps while its working set is back in the pool (see `h1::conn`). Off the
    /// request path: one allocation per such wait.
    pub fn holding(bytes: &[u8]) -> Self {
        Buf { data: Box::from(bytes), start: 0, end: bytes.len() }
    }

    /// A buffer of capacity 0: what an idle connection holds (an empty box allocates nothing).
    pub fn empty() -> Self {
        Buf { data: Box::default(), start: 0, end: 0 }
    }

    /// The unread bytes.
    #[inline]
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// The unread bytes, to change in place (TLS decrypts a record where it was read).
    #[inline]
    pub fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Bytes that fit after the unread ones without moving them (what [`Buf::spare`] gives when
    /// the tail has not run out).
    #[inline]
    pub fn tail_room(&self) -> usize {
        self.data.len() - self.end
    }

    /// Marks `n` unread bytes as used.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Writable tail; compacts first when the tail is empty but the front has room. Empty only
    /// when the buffer holds `capacity` unread bytes.
    #[inline]
    pub fn spare(&mut self) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    /// Records `n` bytes written into [`Buf::spare`].
    #[inline]
    pub fn advance(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_only_when_needed() {
        let mut b = Buf::new(8);
        b.spare()[..6].copy_from_slice(b"abcdef");
        b.advance(6);
        b.consume(4);
        assert_eq!(b.filled(), b"ef");
        assert_eq!(b.spare().len(), 2);
        b.advance(2);
        assert_eq!(b.spare().len(), 4); // compacted: "ef??" moved to front
        assert_eq!(&b.filled()[..2], b"ef");
        b.consume(4);
        assert!(b.is_empty());
        assert_eq!(b.spare().len(), 8);
    }
}
