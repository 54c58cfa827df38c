//! The scheduler's window on the queue: a heap of the messages due soonest,
//! at most a bounded number of them, however large the queue.
//!
//! Order is by key (due time, queue id). The heap covers every key up to a
//! horizon: each queued message whose key in the spool index is at most the
//! horizon has an entry in the heap (or is in flight). Messages past the
//! horizon are known only to the spool index (which has every message's due
//! time); when the heap runs empty the next slice is read from the index.
//! So memory is proportional to what is due soon, not to what is queued.
//!
//! An entry is valid only while the spool index files its message under
//! the same due time; the caller checks that when it pops, so there is no
//! second map of what is scheduled, and a deleted or rescheduled message's
//! old entry is simply skipped.
//!
//! May import: `mailgate-core`, std.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use mailgate_core::QueueId;

/// When a message is due (seconds since the epoch), then its id.
pub(crate) type Key = (u64, QueueId);

/// How many keys one refill takes from the spool index. A million queued
/// messages cost the scheduler at most twice this many entries.
pub(crate) const DEFAULT_HORIZON: usize = 100_000;

/// Which keys the heap covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Horizon {
    /// None yet: the index has not been read.
    Nothing,
    /// Every key up to this one.
    UpTo(Key),
    /// Every key: the index had fewer than `cap` keys left when last read.
    All,
}

pub(crate) struct DueWindow {
    heap: BinaryHeap<Reverse<Key>>,
    horizon: Horizon,
    cap: usize,
}

impl DueWindow {
    /// An empty window that covers nothing yet: the first [`refill`] reads
    /// the index from the start.
    ///
    /// [`refill`]: DueWindow::refill
    pub(crate) fn new(cap: usize) -> DueWindow {
        DueWindow { heap: BinaryHeap::new(), horizon: Horizon::Nothing, cap: cap.max(1) }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn peek(&self) -> Option<&Key> {
        self.heap.peek().map(|Reverse(k)| k)
    }

    pub(crate) fn pop(&mut self) -> Option<Key> {
        self.heap.pop().map(|Reverse(k)| k)
    }

    /// Whether the index may hold keys that the heap does not.
    pub(crate) fn needs_refill(&self) -> bool {
        self.heap.is_empty() && self.horizon != Horizon::All
    }

    fn covers(&self, key: &Key) -> bool {
        match &self.horizon {
            Horizon::Nothing => false,
            Horizon::UpTo(h) => key <= h,
            Horizon::All => true,
        }
    }

    /// Files a message under `key` if the window covers it; otherwise the
    /// index has it and a later refill brings it in.
    pub(crate) fn push(&mut self, key: Key) {
        if !self.covers(&key) {
            return;
        }
        self.heap.push(Reverse(key));
        if self.heap.len() > 2 * self.cap {
            self.shrink();
        }
    }

    /// Keeps the `cap` least keys and moves the horizon down to the last
    /// of them; the index still has the messages dropped here.
    fn shrink(&mut self) {
        let mut keys: Vec<Key> = std::mem::take(&mut self.heap).into_iter().map(|Reverse(k)| k).collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.len() > self.cap {
            keys.truncate(self.cap);
            if let Some(last) = keys.last() {
                self.horizon = Horizon::UpTo(last.clone());
            }
        }
        self.heap = keys.into_iter().map(Reverse).collect();
    }

    /// Takes the next slice from the index: `next(after, limit)` answers
    /// the `limit` least keys greater than `after`, in order.
    pub(crate) fn refill(&mut self, next: impl FnOnce(Option<&Key>, usize) -> Vec<Key>) -> usize {
        let keys = match &self.horizon {
            Horizon::All => return 0,
            Horizon::Nothing => next(None, self.cap),
            Horizon::UpTo(h) => next(Some(h), self.cap),
        };
        let n = keys.len();
        // Fewer than asked for: the index has nothing more past them.
        self.horizon = match keys.last() {
            Some(last) if n >= self.cap => Horizon::UpTo(last.clone()),
            _ => Horizon::All,
        };
        self.heap.extend(keys.into_iter().map(Reverse));
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_next(index: &[Key]) -> impl Fn(Option<&Key>, usize) -> Vec<Key> + '_ {
        move |after, limit| {
            let mut v: Vec<Key> = index.iter().filter(|k| after.is_none_or(|a| *k > a)).cloned().collect();
            v.sort();
            v.truncate(limit);
            v
        }
    }

    #[test]
    fn pops_every_key_in_order_through_refills() {
        let index: Vec<Key> = (0..10u32).map(|i| (u64::from(10 - i), QueueId::new(1, i))).collect();
        let mut w = DueWindow::new(3);
        let mut popped = Vec::new();
        loop {
            if w.needs_refill() && w.refill(index_next(&index)) == 0 {
                break;
            }
            match w.pop() {
                Some(k) => popped.push(k),
                None if w.needs_refill() => continue,
                None => break,
            }
            assert!(w.len() <= 3);
        }
        let mut want = index.clone();
        want.sort();
        assert_eq!(popped, want);
    }

    #[test]
    fn keys_past_the_horizon_wait_for_the_index() {
        let index: Vec<Key> = (0..5u32).map(|i| (0, QueueId::new(1, i))).collect();
        let mut w = DueWindow::new(2);
        w.refill(index_next(&index));
        assert_eq!(w.len(), 2);
        // A later key is left to the index; an earlier one is taken.
        w.push((5, QueueId::new(2, 0)));
        assert_eq!(w.len(), 2);
        w.push((0, QueueId::new(0, 1)));
        assert_eq!(w.peek(), Some(&(0, QueueId::new(0, 1))));
    }

    #[test]
    fn a_growing_heap_is_cut_back_to_its_cap() {
        let mut w = DueWindow::new(2);
        assert_eq!(w.refill(index_next(&[])), 0);
        for i in 0..5u32 {
            w.push((u64::from(i), QueueId::new(1, i)));
        }
        assert!(w.len() <= 4, "{}", w.len());
        // What was cut is beyond the horizon now, so the index is asked again.
        while w.pop().is_some() {}
        assert!(w.needs_refill());
    }
}
