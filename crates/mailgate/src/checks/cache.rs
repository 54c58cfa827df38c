//! Parsed DNS records kept for their TTL: the SPF records of `checks::spf`,
//! and (through `checks::dkim::KeyCache`) DKIM keys and DMARC records.
//! Bounded (moka's size-bounded cache, which evicts the least useful
//! entries first), positive answers kept at most [`MAX_TTL`], negative
//! ones (RFC 2308: the SOA minimum) at most [`MAX_NEGATIVE_TTL`], and
//! temporary failures never. Imports std, moka and `dns` (the caps).

use std::borrow::Borrow;
use std::hash::Hash;
use std::time::{Duration, Instant};

pub use crate::dns::{MAX_NEGATIVE_TTL, MAX_TTL};

#[derive(Clone)]
struct Entry<V> {
    value: V,
    until: Instant,
}

/// Each entry lives until its own `until`.
struct UntilExpiry;

impl<K, V> moka::Expiry<K, Entry<V>> for UntilExpiry {
    fn expire_after_create(&self, _key: &K, entry: &Entry<V>, created: Instant) -> Option<Duration> {
        Some(entry.until.saturating_duration_since(created))
    }
}

/// Values by DNS name (lower case), each until its TTL runs out.
pub struct RecordCache<V> {
    entries: moka::sync::Cache<Box<str>, Entry<V>>,
}

impl<V: Clone + Send + Sync + 'static> RecordCache<V> {
    /// At most `capacity` entries.
    pub fn new(capacity: u64) -> Self {
        RecordCache { entries: moka::sync::Cache::builder().max_capacity(capacity.max(1)).expire_after(UntilExpiry).build() }
    }

    pub fn get<Q>(&self, name: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // moka may hand out an entry in the instant it expires.
        self.entries.get(name).filter(|e| e.until > Instant::now()).map(|e| e.value)
    }

    /// Keeps `value` until `until`, but never past [`MAX_TTL`] from now.
    pub fn insert(&self, name: Box<str>, value: V, until: Instant) {
        let until = until.min(Instant::now() + MAX_TTL);
        if until > Instant::now() {
            self.entries.insert(name, Entry { value, until });
        }
    }

    pub fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.remove(name).map(|e| e.value)
    }
}

/// How long to keep a negative answer whose SOA gave `negative_ttl`
/// seconds (RFC 2308 §5); `None` (an answer without a SOA) is not kept.
pub fn negative_until(negative_ttl: Option<u32>) -> Option<Instant> {
    let ttl = Duration::from_secs(u64::from(negative_ttl?)).min(MAX_NEGATIVE_TTL);
    (!ttl.is_zero()).then(|| Instant::now() + ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_for_their_ttl_capped() {
        let c: RecordCache<u32> = RecordCache::new(10);
        c.insert("a.example".into(), 1, Instant::now() + Duration::from_millis(50));
        c.insert("b.example".into(), 2, Instant::now() + Duration::from_secs(86_400));
        c.insert("gone.example".into(), 3, Instant::now());
        assert_eq!(c.get("a.example"), Some(1));
        assert_eq!(c.get("gone.example"), None);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(c.get("a.example"), None);
        assert_eq!(c.get("b.example"), Some(2));
        assert_eq!(negative_until(None), None);
        assert_eq!(negative_until(Some(0)), None);
        let until = negative_until(Some(86_400)).unwrap();
        assert!(until <= Instant::now() + MAX_NEGATIVE_TTL);
    }

    #[test]
    fn size_is_bounded() {
        let c: RecordCache<u32> = RecordCache::new(100);
        for i in 0..10_000 {
            c.insert(format!("n{i}.example").into(), i, Instant::now() + MAX_TTL);
        }
        c.entries.run_pending_tasks();
        assert!(c.entries.entry_count() <= 100, "{}", c.entries.entry_count());
    }
}
