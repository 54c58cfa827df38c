//! The group-commit writer: one thread appends records to the active segment.
//!
//! Sessions send records over a channel and wait for an acknowledgement.
//! The thread takes everything that is waiting, writes it with one `write`,
//! makes it durable with one `fdatasync`, and only then acknowledges each
//! record. While it syncs, new records queue up and form the next batch, so
//! concurrent sessions share fsyncs without any added delay.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use super::{Entry, Shared, SpoolError, segment_path, sync_dir};
use mailgate_core::QueueId;

/// Most bytes gathered into one batch before it is written.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// What the writer indexes once a message record is durable.
/// How the index changes once a record is durable. Offsets are relative
/// to the start of the record's bytes.
pub(super) enum IndexChange {
    None,
    Insert {
        id: QueueId,
        data_offset: usize,
        data_len: usize,
        env_offset: usize,
        due: u64,
        external: Option<(u64, u64)>,
    },
    Envelope {
        id: QueueId,
        env_offset: usize,
        env_len: usize,
        due: u64,
    },
    /// A copy of a message from segment `from`, written by compaction; it
    /// takes over only if the message is still there.
    Move {
        id: QueueId,
        from: u64,
        data_offset: usize,
        data_len: usize,
        env_offset: usize,
        due: u64,
        external: Option<(u64, u64)>,
    },
}

pub(super) struct WriteOp {
    pub bytes: Vec<u8>,
    pub change: IndexChange,
    pub ack: oneshot::Sender<Result<(), SpoolError>>,
}

struct Segment {
    number: u64,
    file: File,
    len: u64,
    /// An fsync failed: what the kernel holds for this file is unknown, so
    /// nothing more is written to it (the "fsyncgate" lesson).
    poisoned: bool,
}

pub(super) fn spawn(dir: PathBuf, next_segment: u64, segment_size: u64, shared: Arc<Shared>) -> io::Result<mpsc::UnboundedSender<WriteOp>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new().name("spool-writer".into()).spawn(move || run(dir, next_segment, segment_size, shared, rx))?;
    Ok(tx)
}

fn run(dir: PathBuf, mut next_segment: u64, segment_size: u64, shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<WriteOp>) {
    let mut segment: Option<Segment> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        let mut bytes = batch[0].bytes.len();
        while bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(op) => {
                    bytes += op.bytes.len();
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        let needs_new = segment.as_ref().is_none_or(|s| s.poisoned || s.len >= segment_size);
        if needs_new {
            match open_segment(&dir, next_segment, &shared) {
                Ok(s) => {
                    next_segment += 1;
                    segment = Some(s);
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool: cannot start a new segment");
                    fail(batch, &e);
                    continue;
                }
            }
        }
        let Some(seg) = segment.as_mut() else {
            continue;
        };
        let result = write_batch(seg, &batch);
        match result {
            Ok(start) => {
                shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                shared.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
                index_batch(&shared, seg.number, start, &mut batch);
                for op in batch {
                    let _ = op.ack.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, segment = seg.number, "spool: write failed; the batch is refused");
                fail(batch, &e);
            }
        }
    }
}

/// Writes and syncs the batch; returns the segment offset where it starts.
fn write_batch(seg: &mut Segment, batch: &[WriteOp]) -> io::Result<u64> {
    let start = seg.len;
    let mut buf = Vec::with_capacity(batch.iter().map(|op| op.bytes.len()).sum());
    for op in batch {
        buf.extend_from_slice(&op.bytes);
    }
    if let Err(e) = seg.file.write_all(&buf) {
        // Cut off the partial batch so the segment ends on a record boundary.
        if seg.file.set_len(start).is_err() {
            seg.poisoned = true;
        }
        return Err(e);
    }
    seg.len += buf.len() as u64;
    if let Err(e) = seg.file.sync_data() {
        seg.poisoned = true;
        return Err(e);
    }
    Ok(start)
}

fn index_batch(shared: &Shared, segment: u64, start: u64, batch: &mut [WriteOp]) {
    let mut state = shared.lock();
    let mut next = start;
    let seg = segment as u32; // see Entry::segment
    for op in batch.iter_mut() {
        let base = next;
        next += op.bytes.len() as u64;
        let at = |offset: usize| base + offset as u64;
        match std::mem::replace(&mut op.change, IndexChange::None) {
            IndexChange::None => {}
            IndexChange::Insert { id, data_offset, data_len, env_offset, due, external } => {
                *state.live.entry(segment).or_insert(0) += 1;
                state.index.insert(id, Entry::at(segment, base, env_offset, data_offset, data_len, due, external));
            }
            IndexChange::Move { id, from, data_offset, data_len, env_offset, due, external } => {
                let Some(e) = state.index.get_mut(&id).filter(|e| u64::from(e.segment) == from) else { continue };
                *e = Entry::at(segment, base, env_offset, data_offset, data_len, due, external);
                if let Some(n) = state.live.get_mut(&from) {
                    *n = n.saturating_sub(1);
                }
                *state.live.entry(segment).or_insert(0) += 1;
            }
            IndexChange::Envelope { id, env_offset, env_len, due } => {
                if let Some(e) = state.index.get_mut(&id) {
                    e.env_segment = seg;
                    e.env_offset = at(env_offset);
                    e.env_len = env_len as u32;
                    e.due = due;
                }
            }
        }
    }
}

fn open_segment(dir: &std::path::Path, number: u64, shared: &Shared) -> io::Result<Segment> {
    let path = segment_path(dir, number);
    let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
    // The new name must be durable before any record in it is acknowledged.
    sync_dir(dir)?;
    let mut state = shared.lock();
    state.live.entry(number).or_insert(0);
    state.active = number;
    Ok(Segment { number, file, len: 0, poisoned: false })
}

fn fail(batch: Vec<WriteOp>, e: &io::Error) {
    for op in batch {
        let _ = op.ack.send(Err(SpoolError::from_io(e)));
    }
}
