//! The spool's in-memory index: queue id → where the message is, ordered by
//! id, for every queued message. The one structure whose size is
//! proportional to the queue, so it is kept compact.
//!
//! A sorted list of chunks of at most [`CHUNK`] entries, keys and entries
//! in separate arrays (no padding between a 20-octet id and an 8-aligned
//! entry). Queue ids grow with time, so nearly every insert appends to the
//! last chunk, and a full last chunk is followed by a new one instead of
//! being split: chunks stay full, about 76 octets per message, where a
//! `BTreeMap` filled in ascending order leaves its nodes about half empty.
//! Lookups are two binary searches; removals shift at most one chunk.
//!
//! May import: `mailgate-core`, std.

use mailgate_core::QueueId;

use super::Entry;

/// Entries per chunk: small enough that shifting one on an insert or a
/// removal is cheap, large enough that the list of chunks is short.
const CHUNK: usize = 512;

#[derive(Default)]
struct Chunk {
    keys: Vec<QueueId>,
    vals: Vec<Entry>,
}

impl Chunk {
    fn with(key: QueueId, val: Entry) -> Chunk {
        let mut c = Chunk { keys: Vec::with_capacity(CHUNK), vals: Vec::with_capacity(CHUNK) };
        c.keys.push(key);
        c.vals.push(val);
        c
    }
}

#[derive(Default)]
pub(crate) struct Index {
    chunks: Vec<Chunk>,
    len: usize,
}

impl Index {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The chunk that holds `key` if anything does: the first whose last
    /// key is not below it.
    fn chunk_of(&self, key: &QueueId) -> usize {
        self.chunks.partition_point(|c| c.keys.last().is_some_and(|last| last < key))
    }

    fn find(&self, key: &QueueId) -> Option<(usize, usize)> {
        let ci = self.chunk_of(key);
        let i = self.chunks.get(ci)?.keys.binary_search(key).ok()?;
        Some((ci, i))
    }

    pub(crate) fn get(&self, key: &QueueId) -> Option<&Entry> {
        self.find(key).map(|(ci, i)| &self.chunks[ci].vals[i])
    }

    pub(crate) fn get_mut(&mut self, key: &QueueId) -> Option<&mut Entry> {
        self.find(key).map(|(ci, i)| &mut self.chunks[ci].vals[i])
    }

    pub(crate) fn contains_key(&self, key: &QueueId) -> bool {
        self.find(key).is_some()
    }

    /// Inserts or replaces; returns the entry replaced.
    pub(crate) fn insert(&mut self, key: QueueId, val: Entry) -> Option<Entry> {
        if self.chunks.is_empty() {
            self.chunks.push(Chunk::with(key, val));
            self.len = 1;
            return None;
        }
        let ci = self.chunk_of(&key).min(self.chunks.len() - 1);
        let last_chunk = ci == self.chunks.len() - 1;
        let chunk = &mut self.chunks[ci];
        let i = match chunk.keys.binary_search(&key) {
            Ok(i) => return Some(std::mem::replace(&mut chunk.vals[i], val)),
            Err(i) => i,
        };
        self.len += 1;
        if chunk.keys.len() < CHUNK {
            chunk.keys.insert(i, key);
            chunk.vals.insert(i, val);
            return None;
        }
        if last_chunk && i == chunk.keys.len() {
            // Appending in id order: start the next chunk, keep this full.
            self.chunks.push(Chunk::with(key, val));
            return None;
        }
        let mut right = Chunk { keys: chunk.keys.split_off(CHUNK / 2), vals: chunk.vals.split_off(CHUNK / 2) };
        let (side, at) = if i <= CHUNK / 2 { (&mut *chunk, i) } else { (&mut right, i - CHUNK / 2) };
        side.keys.insert(at, key);
        side.vals.insert(at, val);
        self.chunks.insert(ci + 1, right);
        None
    }

    pub(crate) fn remove(&mut self, key: &QueueId) -> Option<Entry> {
        let (ci, i) = self.find(key)?;
        let chunk = &mut self.chunks[ci];
        chunk.keys.remove(i);
        let val = chunk.vals.remove(i);
        self.len -= 1;
        if chunk.keys.is_empty() {
            self.chunks.remove(ci);
        } else if chunk.keys.len() * 4 < chunk.keys.capacity() {
            // Mostly emptied (delivered): give the memory back.
            chunk.keys.shrink_to(chunk.keys.len() * 2);
            chunk.vals.shrink_to(chunk.vals.len() * 2);
        }
        Some(val)
    }

    /// Entries in id order with ids after `after` (all when `None`).
    pub(crate) fn iter_after<'a>(&'a self, after: Option<&QueueId>) -> impl Iterator<Item = (&'a QueueId, &'a Entry)> + 'a {
        let (ci, i) = match after {
            None => (0, 0),
            Some(key) => {
                let ci = self.chunk_of(key);
                let i = self.chunks.get(ci).map_or(0, |c| c.keys.partition_point(|k| k <= key));
                (ci, i)
            }
        };
        self.chunks.get(ci..).unwrap_or(&[]).iter().enumerate().flat_map(move |(n, c)| {
            let skip = if n == 0 { i } else { 0 };
            c.keys[skip..].iter().zip(&c.vals[skip..])
        })
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&QueueId, &Entry)> {
        self.iter_after(None)
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&QueueId, &mut Entry)> {
        self.chunks.iter_mut().flat_map(|c| c.keys.iter().zip(c.vals.iter_mut()))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.iter().map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entry(n: u64) -> Entry {
        Entry::at(1, n, 0, 0, 0, n, None)
    }

    /// The same operations on the index and on a `BTreeMap` agree.
    #[test]
    fn behaves_like_an_ordered_map() {
        let mut index = Index::default();
        let mut model = BTreeMap::new();
        let mut x: u64 = 12345;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Mostly ascending ids with some out of order, removals throughout.
        for n in 0..20_000u64 {
            let r = next();
            let id = if r % 5 == 0 { QueueId::new(r % 20_000, 0) } else { QueueId::new(n, 1) };
            if r % 3 == 0 {
                let victim = QueueId::new(next() % 20_000, 1);
                assert_eq!(index.remove(&victim).map(|e| e.due), model.remove(&victim).map(|e: Entry| e.due));
            }
            assert_eq!(index.insert(id.clone(), entry(n)).map(|e| e.due), model.insert(id, entry(n)).map(|e| e.due));
        }
        assert_eq!(index.len(), model.len());
        let got: Vec<(QueueId, u64)> = index.iter().map(|(k, e)| (k.clone(), e.due)).collect();
        let want: Vec<(QueueId, u64)> = model.iter().map(|(k, e)| (k.clone(), e.due)).collect();
        assert_eq!(got, want);
        for after in [QueueId::new(0, 0), QueueId::new(777, 1), QueueId::new(777, 2), QueueId::new(99_999, 0)] {
            let got: Vec<&QueueId> = index.iter_after(Some(&after)).map(|(k, _)| k).take(700).collect();
            let want: Vec<&QueueId> = model
                .range::<QueueId, _>((std::ops::Bound::Excluded(&after), std::ops::Bound::Unbounded))
                .map(|(k, _)| k)
                .take(700)
                .collect();
            assert_eq!(got, want, "after {after}");
        }
        for (k, e) in &model {
            assert_eq!(index.get(k).map(|e| e.due), Some(e.due));
        }
        let keys: Vec<QueueId> = model.keys().cloned().collect();
        for k in keys {
            assert!(index.remove(&k).is_some());
        }
        assert_eq!(index.len(), 0);
        assert!(index.chunks.is_empty());
    }

    #[test]
    fn ascending_inserts_fill_chunks() {
        let mut index = Index::default();
        for n in 0..(10 * CHUNK as u64) {
            index.insert(QueueId::new(n, 0), entry(n));
        }
        assert_eq!(index.chunks.len(), 10);
        assert!(index.chunks.iter().all(|c| c.keys.len() == CHUNK && c.keys.capacity() == CHUNK));
    }
}
