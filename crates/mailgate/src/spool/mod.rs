//! The durable spool: every accepted message and its envelope, on stable
//! storage before the client hears 250.
//!
//! Messages are appended as self-validating records (see [`record`]) to
//! segment files `spool/seg-NNNNNNNNNN.log`, through one group-commit writer
//! thread. Removal appends a tombstone, and once it is durable the removed
//! record's content is punched out of its segment (see [`punch`]), so that
//! deleting or delivering messages frees disk space at once, even on a full
//! disk (and a [`reserve`] file keeps room for the tombstones when the
//! disk is full to its last block). A segment file is deleted once it is
//! the oldest and holds no live message; segments are deleted oldest first
//! so that a tombstone is never deleted before the message it cancels. On
//! start-up every segment is replayed; a damaged one has its intact
//! messages copied to a fresh segment and is moved to `spool/corrupt/`.
//!
//! Large messages live in files of their own (see [`external`]): received
//! into `spool/staging/` as they arrive, renamed into `spool/msg/` when
//! stored, unlinked as soon as they are removed. Delivery reads every
//! message through [`Content`], a chunk at a time.
//!
//! May import: `mailgate-core`, std, tokio channels. Knows nothing of SMTP.

mod external;
mod index;
mod punch;
mod record;
mod recover;
mod reserve;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mailgate_core::{Envelope, QueueId};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

pub use external::{Content, Staged};
pub use recover::Recovery;

#[derive(Debug, Error, Clone)]
pub enum SpoolError {
    /// The disk is full (or the quota is reached).
    #[error("insufficient storage: {0}")]
    Full(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("the spool writer has stopped")]
    Stopped,
}

/// A record handed to the writer: `finish` answers once it is durable
/// (`false`: there was nothing to write, the message was not queued).
#[must_use = "a record is durable only once finish() answers"]
pub struct Pending(Option<Result<oneshot::Receiver<Result<(), SpoolError>>, SpoolError>>);

impl Pending {
    pub async fn finish(self) -> Result<bool, SpoolError> {
        match self.0 {
            None => Ok(false),
            Some(sent) => {
                sent?.await.map_err(|_| SpoolError::Stopped)??;
                Ok(true)
            }
        }
    }
}

impl SpoolError {
    fn from_io(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => SpoolError::Full(e.to_string()),
            _ => SpoolError::Io(e.to_string()),
        }
    }
}

/// Where a stored message lives: a few dozen bytes per queued message.
/// Envelopes and content stay on disk and are read when needed, so a large
/// queue does not cost memory for what is not being worked on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    /// Segment numbers fit 32 bits (4 billion segments of 64 MiB); the
    /// index holds one entry per queued message, so every octet counts.
    segment: u32,
    data_offset: u64,
    data_len: u32,
    /// The latest envelope: in the message record, or in a later update.
    env_segment: u32,
    env_offset: u64,
    env_len: u32,
    /// Earliest next attempt among pending recipients (0: at once).
    due: u64,
    /// For a message in a file of its own: the range of that file that
    /// follows the `data` prefix.
    external: Option<Ext>,
}

impl Entry {
    /// The entry for a message record that starts at `base` in `segment`,
    /// its envelope from `env_offset` to `data_offset` and then `data_len`
    /// octets of content (offsets within the record).
    fn at(
        segment: u64,
        base: u64,
        env_offset: usize,
        data_offset: usize,
        data_len: usize,
        due: u64,
        external: Option<(u64, u64)>,
    ) -> Entry {
        let segment = segment as u32; // see the field's comment
        Entry {
            segment,
            data_offset: base + data_offset as u64,
            data_len: data_len as u32,
            env_segment: segment,
            env_offset: base + env_offset as u64,
            env_len: (data_offset - env_offset) as u32,
            due,
            external: Ext::new(external),
        }
    }

    fn size(&self) -> u64 {
        u64::from(self.data_len) + self.external.map_or(0, |e| e.len.get())
    }

    fn external(&self) -> Option<(u64, u64)> {
        self.external.map(|e| (u64::from(e.start), e.len.get()))
    }
}

/// The file range of a message in a file of its own: `len` octets from
/// `start` (the end of the received header block, at most 1 MiB). Packed
/// so that an index entry stays at 56 octets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ext {
    len: std::num::NonZeroU64,
    start: u32,
}

impl Ext {
    /// None for a range no external message has (empty, or starting past
    /// 4 GiB): such messages are stored in the segment instead.
    pub(crate) fn new(range: Option<(u64, u64)>) -> Option<Ext> {
        let (start, len) = range?;
        Some(Ext { len: std::num::NonZeroU64::new(len)?, start: u32::try_from(start).ok()? })
    }
}

/// A queued message as the API and scheduler see it.
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: QueueId,
    pub envelope: Envelope,
    pub size: u64,
}

/// The earliest next attempt among a message's pending recipients.
pub fn due_of(envelope: &Envelope) -> u64 {
    envelope.recipients.iter().filter(|r| r.is_pending()).map(|r| r.next_attempt).min().unwrap_or(0)
}

#[derive(Default)]
struct State {
    /// Ordered by queue id (time-ordered), so the API can page through a
    /// large queue from any id without sorting or copying every key.
    index: index::Index,
    /// Live messages per segment; every existing segment has an entry.
    live: BTreeMap<u64, usize>,
    active: u64,
    /// The envelopes of new messages the scheduler has not yet looked at
    /// ([`Spool::claim`]), so that it does not read back from disk what was
    /// written a moment ago. At most [`FRESH_MAX`]; any change of the
    /// message drops its entry.
    fresh: HashMap<QueueId, Envelope>,
}

/// The most envelopes [`State::fresh`] holds; beyond, they are read back.
/// The scheduler claims a new message within milliseconds unless its
/// delivery window is full; then this bounds what waits (about 2 MB).
pub(super) const FRESH_MAX: usize = 1024;

pub(crate) struct Shared {
    state: Mutex<State>,
    fsyncs: AtomicU64,
    records: AtomicU64,
    /// Told the ids of newly stored messages (the scheduler listens), by
    /// the syncer: once for each group it makes durable, not once for each
    /// message, so a busy receiver wakes the scheduler a few times less.
    new_messages: std::sync::OnceLock<mpsc::UnboundedSender<Vec<QueueId>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the index half-updated
        // in a way that matters more than stopping would; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Spool {
    dir: PathBuf,
    writer: mpsc::UnboundedSender<writer::WriteOp>,
    shared: Arc<Shared>,
    seq: AtomicU32,
    /// Cleared when the file system cannot punch holes.
    can_punch: AtomicBool,
    /// Space held back for tombstones on a full disk.
    reserve: Arc<reserve::Reserve>,
}

impl Spool {
    /// Opens the spool under `dir`, recovering what a previous run left.
    pub fn open(dir: &Path, segment_size: u64) -> io::Result<(Spool, Recovery)> {
        std::fs::create_dir_all(dir)?;
        Spool::open_with(dir, segment_size, overwrites_in_place(dir))
    }

    /// [`Spool::open`], saying whether the writer keeps zeros written
    /// ahead of its records (see `writer`).
    pub(crate) fn open_with(dir: &Path, segment_size: u64, zeros_ahead: bool) -> io::Result<(Spool, Recovery)> {
        std::fs::create_dir_all(dir)?;
        external::prepare(dir)?;
        let recovered = recover::recover(dir)?;
        let mut state = State::default();
        for (segment, _) in &recovered.segments {
            state.live.insert(*segment, 0);
        }
        for entry in recovered.index.values() {
            *state.live.entry(u64::from(entry.segment)).or_insert(0) += 1;
        }
        // Recovery builds the ordered index itself: no second copy of a
        // large queue's index at start-up.
        state.index = recovered.index;
        // Every recovered segment is older than the one the writer will open
        // next: those left with no live message (the queue drained before a
        // stop or crash) can go now, not only after the first new write.
        state.active = recovered.next_segment;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            fsyncs: AtomicU64::new(0),
            records: AtomicU64::new(0),
            new_messages: std::sync::OnceLock::new(),
        });
        let writer = writer::spawn(dir.to_path_buf(), recovered.next_segment, segment_size, zeros_ahead, shared.clone())?;
        let spool = Spool {
            dir: dir.to_path_buf(),
            writer,
            shared,
            seq: AtomicU32::new(rand::random::<u32>() & 0xFFFF),
            can_punch: AtomicBool::new(true),
            reserve: Arc::new(reserve::Reserve::open(dir)),
        };
        spool.collect_segments();
        Ok((spool, recovered.report))
    }

    /// Subscribes to the ids of messages stored from now on, in groups
    /// (those made durable by one fsync). Only the first caller gets them.
    pub fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<Vec<QueueId>>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.new_messages.set(tx).ok().map(|_| rx)
    }

    /// A fresh queue id. Time-ordered; unique within this process and, by
    /// the microsecond clock, across restarts.
    pub fn new_id(&self) -> QueueId {
        let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        QueueId::new(micros, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Stores a message durably. Returns once data and directory entry are
    /// on stable storage.
    pub async fn store(&self, id: &QueueId, envelope: Envelope, data: &[u8]) -> Result<(), SpoolError> {
        let (bytes, data_offset) = record::encode_message(id, &envelope, data);
        let env_offset = record::MESSAGE_ENV_OFFSET;
        let change = writer::IndexChange::Insert {
            id: id.clone(),
            data_offset,
            data_len: data.len(),
            env_offset,
            due: due_of(&envelope),
            external: None,
            envelope: Box::new(envelope),
        };
        self.write(bytes, change).await
    }

    /// A staging file for content that is too large to hold in memory.
    pub fn stage(&self) -> Result<Staged, SpoolError> {
        Staged::create(&self.dir).map_err(|e| SpoolError::from_io(&e))
    }

    /// Stores a message whose content is `prefix` followed by the staged
    /// file from offset `start` (the file's first `start` octets, the
    /// header block as received, are replaced by `prefix`). Returns once
    /// the file, its name and the record are on stable storage.
    pub async fn store_staged(
        &self,
        id: &QueueId,
        envelope: Envelope,
        prefix: &[u8],
        mut staged: Staged,
        start: u64,
    ) -> Result<(), SpoolError> {
        let len = staged.len().checked_sub(start).ok_or_else(|| SpoolError::Io("body starts past the end of the staged file".into()))?;
        if Ext::new(Some((start, len))).is_none() {
            // No body after the header block: the prefix is all of it.
            return self.store(id, envelope, prefix).await;
        }
        let dir = self.dir.clone();
        let commit_id = id.clone();
        let staged = tokio::task::spawn_blocking(move || staged.commit(&dir, &commit_id).map(|_| staged))
            .await
            .map_err(|e| SpoolError::Io(e.to_string()))?
            .map_err(|e| SpoolError::from_io(&e))?;
        let (bytes, data_offset) = record::encode_external(id, &envelope, prefix, start, len);
        let env_offset = record::EXTERNAL_ENV_OFFSET;
        let change = writer::IndexChange::Insert {
            id: id.clone(),
            data_offset,
            data_len: prefix.len(),
            env_offset,
            due: due_of(&envelope),
            external: Some((start, len)),
            envelope: Box::new(envelope),
        };
        // On failure `staged` is dropped and takes the renamed file along.
        self.write(bytes, change).await?;
        staged.keep();
        Ok(())
    }

    /// Records a new envelope state (recipient statuses) for a message.
    pub async fn update(&self, id: &QueueId, envelope: Envelope) -> Result<bool, SpoolError> {
        self.begin_update(id, &envelope).finish().await
    }

    /// Hands the new envelope state of a message to the writer before it
    /// returns (see [`Spool::begin_remove`]); `finish` waits until it is
    /// durable.
    pub fn begin_update(&self, id: &QueueId, envelope: &Envelope) -> Pending {
        if !self.about_to_change(id) {
            return Pending(None);
        }
        let bytes = record::encode_update(id, envelope);
        let env_offset = record::UPDATE_ENV_OFFSET;
        let env_len = bytes.len() - env_offset - (record::OVERHEAD - 9);
        let change = writer::IndexChange::Envelope { id: id.clone(), env_offset, env_len, due: due_of(envelope) };
        Pending(Some(self.send(bytes, change)))
    }

    /// Whether `id` is queued, before a record changes it: the envelope
    /// kept for the scheduler (if any) is dropped, since it is stale now.
    fn about_to_change(&self, id: &QueueId) -> bool {
        let mut state = self.shared.lock();
        state.fresh.remove(id);
        state.index.contains_key(id)
    }

    /// Removes a message; `false` if it was not queued.
    pub async fn remove(&self, id: &QueueId) -> Result<bool, SpoolError> {
        let tombstone = self.begin_remove(id);
        self.finish_remove(id, tombstone).await
    }

    /// Hands a message's tombstone to the writer before it returns, so
    /// that it is in the segment within microseconds even if the caller's
    /// task runs later: a delivery's record must not wait for a busy
    /// runtime, since a crash in between delivers the message again.
    /// [`Spool::finish_remove`] waits for it and frees the space.
    pub fn begin_remove(&self, id: &QueueId) -> Pending {
        if !self.about_to_change(id) {
            return Pending(None);
        }
        Pending(Some(self.send(record::encode_remove(id), writer::IndexChange::None)))
    }

    /// The rest of [`Spool::remove`] once its tombstone was handed over.
    pub async fn finish_remove(&self, id: &QueueId, tombstone: Pending) -> Result<bool, SpoolError> {
        let written = match tombstone.finish().await {
            // The disk is full to the last block: give up the reserve (if
            // another removal has not already) and try once more, so that
            // what frees space is not what the full disk stops.
            Err(SpoolError::Full(_)) => {
                self.reserve.release();
                self.begin_remove(id).finish().await?
            }
            done => done?,
        };
        if !written {
            return Ok(false);
        }
        let removed = {
            let mut state = self.shared.lock();
            match state.index.remove(id) {
                Some(entry) => {
                    if let Some(n) = state.live.get_mut(&u64::from(entry.segment)) {
                        *n = n.saturating_sub(1);
                    }
                    Some(entry)
                }
                None => None,
            }
        };
        // The tombstone is durable: the space can go now. A crash before
        // the unlink leaves an orphan that recovery removes; one before the
        // punch leaves the record, which the tombstone cancels.
        match removed {
            Some(Entry { external: Some(_), .. }) => {
                if let Err(e) = std::fs::remove_file(external::message_path(&self.dir, id)) {
                    tracing::warn!(queue_id = %id, error = %e, "spool: cannot delete a message file");
                }
            }
            Some(entry) => self.punch(id, &entry),
            None => {}
        }
        let removed = removed.is_some();
        self.collect_segments();
        if self.reserve.restore_due() {
            let reserve = self.reserve.clone();
            tokio::task::spawn_blocking(move || reserve.restore());
        }
        Ok(removed)
    }

    /// Frees the content of a removed message's record (its envelope, in
    /// front of it, and the record's edges stay; they are small).
    fn punch(&self, id: &QueueId, entry: &Entry) {
        if !self.can_punch.load(Ordering::Relaxed) {
            return;
        }
        // The record ends with its checksum and end marker.
        let end = entry.data_offset + u64::from(entry.data_len) + 8;
        match punch::punch(&segment_path(&self.dir, u64::from(entry.segment)), entry.data_offset, end) {
            Ok(true) => {}
            Ok(false) => {
                self.can_punch.store(false, Ordering::Relaxed);
                tracing::info!(
                    "spool: the file system cannot punch holes; removed messages free their space when their segment is compacted"
                );
            }
            // A segment deleted meanwhile has nothing left to free.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(queue_id = %id, error = %e, "spool: cannot free a removed message's space"),
        }
    }

    async fn write(&self, bytes: Vec<u8>, change: writer::IndexChange) -> Result<(), SpoolError> {
        Pending(Some(self.send(bytes, change))).finish().await.map(|_| ())
    }

    fn send(&self, bytes: Vec<u8>, change: writer::IndexChange) -> Result<oneshot::Receiver<Result<(), SpoolError>>, SpoolError> {
        let (ack, done) = oneshot::channel();
        self.writer.send(writer::WriteOp { bytes, change, ack }).map_err(|_| SpoolError::Stopped)?;
        Ok(done)
    }

    /// Copies the live messages of the oldest segment forward, so that a
    /// few long-deferred messages do not keep whole old segments (and every
    /// newer one, since segments go oldest first) on disk. Returns how many
    /// messages moved.
    pub async fn compact_oldest(&self, max: usize) -> Result<usize, SpoolError> {
        let (oldest, ids) = {
            let state = self.shared.lock();
            let Some((&oldest, _)) = state.live.iter().next() else { return Ok(0) };
            if oldest >= state.active || state.live.len() < 3 {
                return Ok(0);
            }
            let ids: Vec<QueueId> =
                state.index.iter().filter(|(_, e)| u64::from(e.segment) == oldest).map(|(id, _)| id.clone()).take(max).collect();
            (oldest, ids)
        };
        let mut moved = 0;
        for id in ids {
            let Some(entry) = self.shared.lock().index.get(&id).copied() else { continue };
            let Ok(envelope) = self.read_envelope(&entry) else { continue };
            // Only the record moves; an external message's file stays.
            let Ok(data) = self.read_prefix(&id, &entry) else { continue };
            let (bytes, data_offset, env_offset) = match entry.external() {
                Some((start, len)) => {
                    let (b, o) = record::encode_external(&id, &envelope, &data, start, len);
                    (b, o, record::EXTERNAL_ENV_OFFSET)
                }
                None => {
                    let (b, o) = record::encode_message(&id, &envelope, &data);
                    (b, o, record::MESSAGE_ENV_OFFSET)
                }
            };
            let change = writer::IndexChange::Move {
                id: id.clone(),
                from: oldest,
                data_offset,
                data_len: data.len(),
                env_offset,
                due: due_of(&envelope),
                external: entry.external(),
            };
            self.write(bytes, change).await?;
            if !self.shared.lock().index.contains_key(&id) {
                // Removed while we copied it: the copy must not come back.
                self.write(record::encode_remove(&id), writer::IndexChange::None).await?;
            }
            moved += 1;
        }
        self.collect_segments();
        if moved > 0 {
            tracing::info!(segment = oldest, moved, "spool: compacted the oldest segment");
        }
        Ok(moved)
    }

    /// Compacts once a minute.
    pub fn start_maintenance(self: &Arc<Self>) {
        let spool = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Err(e) = spool.compact_oldest(10_000).await {
                    tracing::warn!(error = %e, "spool: compaction failed");
                }
            }
        });
    }

    /// Deletes segments that are oldest and empty.
    fn collect_segments(&self) {
        let mut doomed = Vec::new();
        {
            let mut state = self.shared.lock();
            let active = state.active;
            while let Some((&number, &live)) = state.live.iter().next() {
                if live > 0 || number >= active {
                    break;
                }
                state.live.remove(&number);
                doomed.push(number);
            }
        }
        for number in &doomed {
            if let Err(e) = std::fs::remove_file(segment_path(&self.dir, *number)) {
                tracing::warn!(segment = number, error = %e, "spool: cannot delete empty segment");
            }
        }
        if !doomed.is_empty() {
            let _ = sync_dir(&self.dir);
        }
    }

    /// Up to `limit` messages with ids after `after` (from the start when
    /// `None`), in queue-id order, envelopes read from disk; and the id to
    /// continue after when more follow. Holds the index lock only to copy
    /// the page's ids.
    pub fn page(&self, after: Option<&QueueId>, limit: usize) -> (Vec<Queued>, Option<QueueId>) {
        let (ids, more) = {
            let state = self.shared.lock();
            let mut range = state.index.iter_after(after).map(|(id, _)| id.clone());
            let ids: Vec<QueueId> = range.by_ref().take(limit).collect();
            (ids, range.next().is_some())
        };
        let next = if more { ids.last().cloned() } else { None };
        // A message removed between the two steps is simply left out.
        (ids.iter().filter_map(|id| self.get(id)).collect(), next)
    }

    /// The `limit` least (due time, id) keys greater than `after`, in
    /// order: the scheduler's next slice of the queue. Reads the index a
    /// page at a time so that sessions storing messages never wait for a
    /// scan of a large queue; a message stored or rescheduled meanwhile
    /// reaches the scheduler anyway, through its announcement or outcome.
    pub fn due_after(&self, after: Option<&(u64, QueueId)>, limit: usize) -> Vec<(u64, QueueId)> {
        const PAGE: usize = 16 * 1024;
        let mut best: std::collections::BinaryHeap<(u64, QueueId)> = std::collections::BinaryHeap::with_capacity(limit + 1);
        let mut from: Option<QueueId> = None;
        loop {
            let state = self.shared.lock();
            let mut last = None;
            for (id, e) in state.index.iter_after(from.as_ref()).take(PAGE) {
                last = Some(id);
                if after.is_some_and(|a| (e.due, id) <= (a.0, &a.1)) {
                    continue;
                }
                if best.len() == limit && best.peek().is_some_and(|worst| (e.due, id) >= (worst.0, &worst.1)) {
                    continue;
                }
                best.push((e.due, id.clone()));
                if best.len() > limit {
                    best.pop();
                }
            }
            match last {
                Some(id) => from = Some(id.clone()),
                None => break,
            }
        }
        best.into_sorted_vec()
    }

    /// When the scheduler is to try a message next, as the index has it.
    pub fn due(&self, id: &QueueId) -> Option<u64> {
        self.shared.lock().index.get(id).map(|e| e.due)
    }

    /// Files a message under another due time in memory only (the spool
    /// records it with the next envelope update): when that update could not
    /// be written, or nothing is due yet after all.
    pub fn set_due(&self, id: &QueueId, due: u64) {
        if let Some(e) = self.shared.lock().index.get_mut(id) {
            e.due = due;
        }
    }

    /// [`Spool::get`] for the scheduler's first look at a message: a new
    /// message's envelope comes from memory (the copy kept when it was
    /// stored, given up now) instead of being read back from disk.
    pub fn claim(&self, id: &QueueId) -> Option<Queued> {
        {
            let mut state = self.shared.lock();
            let size = state.index.get(id)?.size();
            if let Some(envelope) = state.fresh.remove(id) {
                return Some(Queued { id: id.clone(), envelope, size });
            }
        }
        self.get(id)
    }

    /// One message with its current envelope, read from disk.
    pub fn get(&self, id: &QueueId) -> Option<Queued> {
        let entry = *self.shared.lock().index.get(id)?;
        match self.read_envelope(&entry) {
            Ok(envelope) => Some(Queued { id: id.clone(), envelope, size: entry.size() }),
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "spool: cannot read envelope");
                None
            }
        }
    }

    fn read_envelope(&self, entry: &Entry) -> io::Result<Envelope> {
        let file = File::open(segment_path(&self.dir, u64::from(entry.env_segment)))?;
        let mut buf = vec![0; entry.env_len as usize];
        file.read_exact_at(&mut buf, entry.env_offset)?;
        serde_json::from_slice(&buf).map_err(io::Error::other)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.shared.lock().index.len()
    }

    /// Reads a message's whole content (with our `Received:` header) into
    /// memory. Delivery uses [`Spool::open_content`], which does not.
    pub fn read_data(&self, id: &QueueId) -> io::Result<Option<Vec<u8>>> {
        let Some(mut content) = self.open_content(id)? else { return Ok(None) };
        let mut buf = Vec::with_capacity(content.len() as usize);
        std::io::Read::read_to_end(&mut content, &mut buf)?;
        Ok(Some(buf))
    }

    /// The content when it is at most `limit` octets; otherwise only its
    /// header block. For notices that quote the message.
    pub fn read_limited(&self, id: &QueueId, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(entry) = self.shared.lock().index.get(id).copied() else { return Ok(None) };
        if entry.size() <= limit {
            return self.read_data(id);
        }
        // An external message's prefix is its whole header block.
        let mut data = self.read_prefix(id, &entry)?;
        if entry.external.is_none()
            && let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n")
        {
            data.truncate(end + 4);
        }
        Ok(Some(data))
    }

    /// A reader over a message's content that holds at most the header
    /// block in memory.
    pub fn open_content(&self, id: &QueueId) -> io::Result<Option<Content>> {
        let Some(entry) = self.shared.lock().index.get(id).copied() else { return Ok(None) };
        let prefix = self.read_prefix(id, &entry)?;
        Ok(Some(match entry.external() {
            Some((start, len)) => Content::external(prefix, File::open(external::message_path(&self.dir, id))?, start, len),
            None => Content::memory(prefix),
        }))
    }

    /// The part of the content kept in the segment record.
    fn read_prefix(&self, id: &QueueId, entry: &Entry) -> io::Result<Vec<u8>> {
        let file = File::open(segment_path(&self.dir, u64::from(entry.segment)))?;
        let mut buf = vec![0; entry.data_len as usize];
        file.read_exact_at(&mut buf, entry.data_offset)?;
        // A removal punches the record only after taking it out of the
        // index: if the message is still indexed now, what was read is
        // the content, not the zeros of a hole punched meanwhile.
        if entry.external.is_none() && !self.shared.lock().index.contains_key(id) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("message {id} was removed while being read")));
        }
        Ok(buf)
    }

    /// fsync calls made and records written since start: their ratio shows
    /// group commit at work.
    pub fn sync_stats(&self) -> (u64, u64) {
        (self.shared.fsyncs.load(Ordering::Relaxed), self.shared.records.load(Ordering::Relaxed))
    }
}

pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("seg-{number:010}.log"))
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Free bytes available to us on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() }; // SAFETY: plain C struct, all-zero is valid
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Whether records written over zeros spare the syncs an inode update on
/// the file system holding `dir`: only where an overwrite stays in place
/// (ext4, XFS). On tmpfs a sync writes nothing; on a copy-on-write file
/// system (btrfs, ZFS) every write goes to new blocks, so zeros written
/// ahead would only double the writes.
fn overwrites_in_place(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() }; // SAFETY: plain C struct, all-zero is valid
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    matches!(st.f_type as i64, EXT4 | XFS)
}

#[cfg(test)]
mod tests;
