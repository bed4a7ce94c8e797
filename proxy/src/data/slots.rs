//! A table of per-connection slots (timer deadlines, drain wakers) that gives its memory back.
//! Hot path (per connection, never per request).
//!
//! A new connection takes the lowest free slot, so open connections stay packed at the front; the
//! worker's once-a-second sweep ([`SlotTable::trim`]) drops the free slots at the end and shrinks
//! the table when it is mostly empty. After a crowd of 10,000 connections leaves, the tables
//! shrink back instead of keeping ~0.5 MB per worker for ever (issue 14).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug, Default)]
pub struct SlotTable<T> {
    slots: Vec<T>,
    /// Free slot numbers below `slots.len()`, lowest first.
    free: BinaryHeap<Reverse<usize>>,
}

impl<T: Default> SlotTable<T> {
    /// The lowest free slot, or a new one at the end.
    pub fn register(&mut self) -> usize {
        if let Some(Reverse(i)) = self.free.pop() {
            return i;
        }
        self.slots.push(T::default());
        self.slots.len() - 1
    }

    /// Frees a closed connection's slot (reset to its default).
    pub fn release(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = T::default();
            self.free.push(Reverse(slot));
        }
    }

    #[inline]
    pub fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.slots.get_mut(slot)
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, T> {
        self.slots.iter_mut()
    }

    /// Drops the free slots at the end of the table and gives memory back when less than a
    /// quarter of what the table holds is in use. Off the request path (once a second); returns
    /// the slots still in the table.
    pub fn trim(&mut self) -> usize {
        let in_use = self.slots.len() - self.free.len();
        if in_use == 0 {
            self.slots = Vec::new();
            self.free = BinaryHeap::new();
            return 0;
        }
        // The highest slot in use bounds the table: free slots above it can go.
        let mut end = self.slots.len();
        let mut freed = Vec::new();
        // Free slots are a heap (lowest first); find those at the end by collecting the free set
        // only when the table is worth shrinking.
        if self.slots.capacity() > 4 * in_use.max(16) {
            freed = std::mem::take(&mut self.free).into_sorted_vec(); // descending by slot number
            for Reverse(i) in &freed {
                if *i + 1 == end {
                    end -= 1;
                } else {
                    break;
                }
            }
            self.slots.truncate(end);
            self.slots.shrink_to(end.max(16));
        }
        if !freed.is_empty() {
            self.free = freed.into_iter().filter(|Reverse(i)| *i < end).collect();
            self.free.shrink_to_fit();
        }
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_slot_first() {
        let mut t = SlotTable::<u8>::default();
        let s: Vec<usize> = (0..5).map(|_| t.register()).collect();
        assert_eq!(s, [0, 1, 2, 3, 4]);
        t.release(3);
        t.release(1);
        assert_eq!(t.register(), 1);
        assert_eq!(t.register(), 3);
        assert_eq!(t.register(), 5);
    }

    #[test]
    fn trim_gives_back_a_crowds_slots() {
        let mut t = SlotTable::<Option<u64>>::default();
        for _ in 0..10_000 {
            t.register();
        }
        // The crowd leaves but two connections stay: one early, one in the middle.
        for i in 0..10_000 {
            if i != 7 && i != 4_000 {
                t.release(i);
            }
        }
        assert_eq!(t.trim(), 4_001, "free slots above the highest in use are dropped");
        assert!(t.slots.capacity() < 10_000);
        assert_eq!(t.register(), 0, "the lowest free slot is reused first");
        t.release(0);
        t.release(4_000);
        assert_eq!(t.trim(), 8);
        t.release(7);
        assert_eq!(t.trim(), 0);
        assert_eq!(t.slots.capacity(), 0);
        assert_eq!(t.register(), 0);
    }

    #[test]
    fn trim_keeps_a_busy_table() {
        let mut t = SlotTable::<u8>::default();
        for _ in 0..100 {
            t.register();
        }
        t.release(99);
        assert_eq!(t.trim(), 100, "not worth shrinking: three quarters in use");
        assert_eq!(t.register(), 99);
    }
}
