//! Counters every stage bumps; `/metrics` and the dashboard read them.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub connections_refused: AtomicU64,
    pub messages_accepted: AtomicU64,
    pub messages_refused: AtomicU64,
    pub bytes_accepted: AtomicU64,
    pub spool_errors: AtomicU64,
    pub delivered: AtomicU64,
    pub deferred: AtomicU64,
    pub bounced: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
