//! Keeping message content out of memory: the in-flight budget shared by
//! every session, and the staging file a message moves to once it outgrows
//! [`SPILL_THRESHOLD`].
//!
//! A session holds at most the threshold (plus one read) of a message in
//! memory; the rest goes to the spool's staging area as it arrives, so a
//! hundred clients sending 20 MB each cost disk, not RAM. What sessions do
//! hold is counted against `[limits] max_inflight_memory`; a transaction
//! that would pass it gets `451 4.3.2` instead of growing the process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::spool::{Spool, SpoolError, Staged};

/// Content kept in memory before a message moves to a staging file.
pub const SPILL_THRESHOLD: usize = 128 * 1024;

/// Once on disk, content is written in pieces of at least this size.
pub const SPILL_CHUNK: usize = 64 * 1024;

/// The longest header block read back into memory for the checks.
pub const MAX_HEADER: u64 = 1024 * 1024;

/// Octets of message content held in memory by all sessions together.
#[derive(Debug)]
pub struct Budget {
    used: AtomicU64,
    max: u64,
}

impl Budget {
    pub fn new(max: u64) -> Arc<Budget> {
        Arc::new(Budget { used: AtomicU64::new(0), max })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether anything is left: checked before a transaction starts.
    pub fn exhausted(&self) -> bool {
        self.used() >= self.max
    }

    fn grow(&self, n: u64) -> bool {
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_add(n).filter(|&total| total <= self.max)).is_ok()
    }

    fn shrink(&self, n: u64) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(n)));
    }
}

/// One session's share of the [`Budget`], given back when dropped.
pub struct Reservation {
    budget: Arc<Budget>,
    held: u64,
}

impl Reservation {
    pub fn new(budget: Arc<Budget>) -> Reservation {
        Reservation { budget, held: 0 }
    }

    /// Holds exactly `n` octets from now on; `false` (and no change) if
    /// growing to `n` would pass the budget.
    pub fn set(&mut self, n: u64) -> bool {
        if n > self.held {
            if !self.budget.grow(n - self.held) {
                return false;
            }
        } else {
            self.budget.shrink(self.held - n);
        }
        self.held = n;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.shrink(self.held);
    }
}

/// The part of a message already on disk, and where its header block ends.
pub struct Spill {
    pub staged: Staged,
    /// The transaction it belongs to ([`mailgate_core::session::Session::transaction_serial`]).
    pub serial: u64,
    scan: HeaderScan,
}

impl Spill {
    pub fn start(spool: &Spool, serial: u64) -> Result<Spill, SpoolError> {
        Ok(Spill { staged: spool.stage()?, serial, scan: HeaderScan::default() })
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        self.scan.feed(bytes);
        self.staged.write(bytes)
    }

    /// The offset just past the empty line that ends the header block,
    /// if it came within [`MAX_HEADER`].
    pub fn header_end(&self) -> Option<u64> {
        self.scan.end
    }
}

/// Finds `CRLF CRLF` in content that arrives in pieces. The message starts
/// as if after a CRLF, so content that begins with CRLF has an empty header.
#[derive(Debug)]
struct HeaderScan {
    seen: u64,
    matched: u8,
    end: Option<u64>,
}

impl Default for HeaderScan {
    fn default() -> Self {
        HeaderScan { seen: 0, matched: 2, end: None }
    }
}

impl HeaderScan {
    fn feed(&mut self, bytes: &[u8]) {
        const PATTERN: &[u8; 4] = b"\r\n\r\n";
        for &b in bytes {
            if self.end.is_some() || self.seen > MAX_HEADER {
                return;
            }
            self.seen += 1;
            self.matched = if b == PATTERN[self.matched as usize] {
                self.matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.matched == 4 {
                self.end = Some(self.seen);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::body::header_end;

    #[test]
    fn header_scan_agrees_with_header_end_at_every_split() {
        for msg in
            [&b"A: 1\r\nB: 2\r\n\r\nbody\r\n"[..], b"\r\nbody", b"A: 1\r\n\r\n", b"A: 1\r\r\n\r\nx", b"A: 1\r\nno end", b"A\n\r\n\r\n"]
        {
            for split in 0..=msg.len() {
                let mut scan = HeaderScan::default();
                scan.feed(&msg[..split]);
                scan.feed(&msg[split..]);
                assert_eq!(scan.end, header_end(msg).map(|e| e as u64), "{msg:?} split at {split}");
            }
        }
    }

    #[test]
    fn reservations_share_one_budget() {
        let budget = Budget::new(100);
        let mut a = Reservation::new(budget.clone());
        let mut b = Reservation::new(budget.clone());
        assert!(a.set(60));
        assert!(!b.set(50), "60 + 50 is over 100");
        assert!(b.set(40));
        assert!(budget.exhausted());
        assert!(a.set(10));
        assert_eq!(budget.used(), 50);
        drop(b);
        assert_eq!(budget.used(), 10);
    }
}
