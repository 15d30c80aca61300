//! An intrusive doubly-linked list threaded through flat index arrays.
//!
//! Each element is a `u32` index into a fixed-size universe (block ids, slot ids). Links live in
//! one `Vec` sized to the universe, so push, pop and removal from the middle are O(1) and never
//! allocate. An element is in at most one list at a time; membership is tracked in the links.

const NIL: u32 = u32::MAX;
const DETACHED: u32 = u32::MAX - 1;

/// Largest universe an [`IndexList`] supports.
pub(crate) const MAX_INDEX: usize = (u32::MAX - 2) as usize;

#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

/// Doubly-linked list over indices `0..capacity`.
pub(crate) struct IndexList {
    links: Vec<Link>,
    head: u32,
    tail: u32,
    len: usize,
}

impl IndexList {
    /// An empty list over the universe `0..capacity` (`capacity <= MAX_INDEX`).
    pub(crate) fn new(capacity: usize) -> Self {
        debug_assert!(capacity <= MAX_INDEX);
        Self { links: vec![Link { prev: DETACHED, next: DETACHED }; capacity], head: NIL, tail: NIL, len: 0 }
    }

    /// A list holding `0..capacity` in ascending order.
    #[allow(dead_code)] // used by tests; the free queue is an `IndexRing` now
    pub(crate) fn full(capacity: usize) -> Self {
        let mut links = Vec::with_capacity(capacity);
        for i in 0..capacity as u32 {
            let prev = if i == 0 { NIL } else { i - 1 };
            let next = if i as usize + 1 == capacity { NIL } else { i + 1 };
            links.push(Link { prev, next });
        }
        let (head, tail) = if capacity == 0 { (NIL, NIL) } else { (0, capacity as u32 - 1) };
        Self { links, head, tail, len: capacity }
    }

    /// Number of elements in the list.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// True when the list holds nothing.
    #[inline]
    #[allow(dead_code)] // used by tests and by policies that scan
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `i` is in the list.
    #[inline]
    pub(crate) fn contains(&self, i: u32) -> bool {
        self.links.get(i as usize).is_some_and(|l| l.prev != DETACHED)
    }

    /// First element.
    #[inline]
    pub(crate) fn front(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    /// Element after `i`, for iteration from [`IndexList::front`].
    #[inline]
    #[allow(dead_code)] // used by tests and by policies that scan
    pub(crate) fn next_of(&self, i: u32) -> Option<u32> {
        let n = self.links.get(i as usize)?.next;
        (n != NIL && n != DETACHED).then_some(n)
    }

    /// Appends `i` at the back. Returns false (and does nothing) if it is already linked.
    #[inline]
    pub(crate) fn push_back(&mut self, i: u32) -> bool {
        if self.contains(i) || i as usize >= self.links.len() {
            return false;
        }
        self.links[i as usize] = Link { prev: self.tail, next: NIL };
        if self.tail == NIL {
            self.head = i;
        } else {
            self.links[self.tail as usize].next = i;
        }
        self.tail = i;
        self.len += 1;
        true
    }

    /// Inserts `i` at the front. Returns false (and does nothing) if it is already linked.
    #[inline]
    #[allow(dead_code)] // used by tests and by policies that scan
    pub(crate) fn push_front(&mut self, i: u32) -> bool {
        if self.contains(i) || i as usize >= self.links.len() {
            return false;
        }
        self.links[i as usize] = Link { prev: NIL, next: self.head };
        if self.head == NIL {
            self.tail = i;
        } else {
            self.links[self.head as usize].prev = i;
        }
        self.head = i;
        self.len += 1;
        true
    }

    /// Removes and returns the first element.
    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<u32> {
        let h = self.front()?;
        self.remove(h);
        Some(h)
    }

    /// Unlinks `i` from anywhere in the list. Returns false if it was not linked.
    #[inline]
    pub(crate) fn remove(&mut self, i: u32) -> bool {
        if !self.contains(i) {
            return false;
        }
        let Link { prev, next } = self.links[i as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.links[next as usize].prev = prev;
        }
        self.links[i as usize] = Link { prev: DETACHED, next: DETACHED };
        self.len -= 1;
        true
    }

    /// Bytes of link storage per element.
    pub(crate) const fn bytes_per_element() -> usize {
        std::mem::size_of::<Link>()
    }
}

/// FIFO of indices `0..capacity` in one flat ring buffer (4 bytes per element). Unlike
/// [`IndexList`] it cannot remove from the middle, but popping a run of elements reads
/// consecutive memory instead of chasing links, which matters when the order is random and
/// the universe is far larger than the CPU caches. The caller guarantees an index is queued
/// at most once.
pub(crate) struct IndexRing {
    slots: Vec<u32>,
    head: usize,
    len: usize,
}

impl IndexRing {
    /// An empty ring for up to `capacity` elements.
    pub(crate) fn new(capacity: usize) -> Self {
        debug_assert!(capacity <= MAX_INDEX);
        Self { slots: vec![0; capacity], head: 0, len: 0 }
    }

    /// A ring holding `0..capacity` in ascending order.
    pub(crate) fn full(capacity: usize) -> Self {
        debug_assert!(capacity <= MAX_INDEX);
        Self { slots: (0..capacity as u32).collect(), head: 0, len: capacity }
    }

    /// Number of queued elements.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The element `ahead` places behind the front, if queued.
    #[inline]
    pub(crate) fn peek(&self, ahead: usize) -> Option<u32> {
        if ahead >= self.len {
            return None;
        }
        let mut at = self.head + ahead;
        if at >= self.slots.len() {
            at -= self.slots.len();
        }
        Some(self.slots[at])
    }

    /// Removes and returns the oldest element.
    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let i = self.slots[self.head];
        self.head = if self.head + 1 == self.slots.len() { 0 } else { self.head + 1 };
        self.len -= 1;
        Some(i)
    }

    /// Appends `i` (not already queued) at the back. Returns false if the ring is full.
    #[inline]
    pub(crate) fn push_back(&mut self, i: u32) -> bool {
        let cap = self.slots.len();
        if self.len == cap {
            return false;
        }
        let mut at = self.head + self.len;
        if at >= cap {
            at -= cap;
        }
        self.slots[at] = i;
        self.len += 1;
        true
    }

    /// Queued elements, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let (a, b) = self.slots.split_at(self.head);
        b.iter().chain(a).take(self.len).copied()
    }

    /// Bytes of storage per element.
    pub(crate) const fn bytes_per_element() -> usize {
        std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(l: &IndexList) -> Vec<u32> {
        let mut v = vec![];
        let mut c = l.front();
        while let Some(i) = c {
            v.push(i);
            c = l.next_of(i);
        }
        v
    }

    #[test]
    fn push_pop_remove() {
        let mut l = IndexList::new(8);
        assert!(l.push_back(3));
        assert!(l.push_back(5));
        assert!(l.push_front(1));
        assert!(!l.push_back(5));
        assert!(!l.push_back(8));
        assert_eq!(collect(&l), vec![1, 3, 5]);
        assert!(l.remove(3));
        assert!(!l.remove(3));
        assert_eq!(collect(&l), vec![1, 5]);
        assert_eq!(l.pop_front(), Some(1));
        assert_eq!(l.pop_front(), Some(5));
        assert_eq!(l.pop_front(), None);
        assert!(l.is_empty());
    }

    #[test]
    fn ring_is_fifo_and_wraps() {
        let mut r = IndexRing::full(3);
        assert_eq!(r.pop_front(), Some(0));
        assert!(r.push_back(0));
        assert!(!r.push_back(1));
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!((r.pop_front(), r.pop_front(), r.pop_front(), r.pop_front()), (Some(1), Some(2), Some(0), None));
        assert!(r.push_back(2));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn full_list_is_ascending() {
        let mut l = IndexList::full(4);
        assert_eq!(collect(&l), vec![0, 1, 2, 3]);
        assert!(l.remove(3));
        assert!(l.remove(0));
        assert_eq!(collect(&l), vec![1, 2]);
        assert!(l.push_back(0));
        assert_eq!(collect(&l), vec![1, 2, 0]);
        assert_eq!(l.len(), 3);
    }
}
