//! Writes from the hot path: events go on a bounded channel to one writer
//! task, which writes whatever has gathered in one transaction. Recording
//! never waits: when the channel is full (the disk stalls), the event is
//! dropped, counted and logged, and the SMTP session goes on. The same
//! task prunes what is older than the retention period once a day.
//!
//! A batch the store refuses (PostgreSQL away, a full disk) is not lost:
//! it goes to the on-disk [`Buffer`], and so does every batch after it
//! while anything waits there (to keep the order); the writer retries the
//! oldest with a backoff from 1 s to 10 s, and once the store takes it,
//! replays the rest in order. The buffer outlives a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::path::Path;

use tokio::sync::{mpsc, oneshot};

use super::buffer::Buffer;
use super::{Event, Store, unix_now};

/// Events waiting for the writer; about 100 MB of backlog at most.
const CHANNEL: usize = 100_000;
/// Most events one transaction writes.
const BATCH: usize = 8192;
const DAY: u64 = 86_400;
/// How long the writer lets a small batch grow before writing it. Each
/// transaction writes the last pages of every table and index again, and
/// commits: at 4,000 messages a second, half a second's batches (about
/// 4,000 events) cost 9.7 µs of CPU per message in all, 0.1 s's 13.7 µs
/// (BENCHMARKS.md, "The allocator, once more").
const GATHER: Duration = Duration::from_millis(500);
/// The retry backoff of a buffered batch.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

pub struct Recorder {
    /// `[reports] record`: false drops every event unseen.
    record: bool,
    tx: mpsc::Sender<Msg>,
    dropped: AtomicU64,
    written: Arc<AtomicU64>,
}

enum Msg {
    Event(Event),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

impl Recorder {
    /// Queues `event` for the writer; never blocks.
    pub fn record(&self, event: Event) {
        if !self.record {
            return;
        }
        if let Err(e) = self.tx.try_send(Msg::Event(event)) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            // Log the first and then every 1000th, not every event.
            if n.is_multiple_of(1000) {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "the writer is behind",
                    mpsc::error::TrySendError::Closed(_) => "the writer has stopped",
                };
                tracing::warn!(dropped = n + 1, reason = why, "report store event dropped");
            }
        }
    }

    /// Events dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Waits until every event recorded before the call is written (for
    /// `reports send --now`, which must see the traffic up to now).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// [`Recorder::flush`] for a blocking thread (never a runtime worker).
    pub fn flush_blocking(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.blocking_send(Msg::Flush(done)).is_ok() {
            let _ = wait.blocking_recv();
        }
    }
}

/// Where the writer's batches go: the store, or the buffer while the
/// store refuses them. Moved to a blocking thread for each batch.
struct Sink {
    store: Arc<dyn Store>,
    buffer: Option<Buffer>,
    /// Batches wait in the buffer.
    pending: bool,
    /// Events written to the store by the last call.
    written: u64,
}

impl Sink {
    /// Writes `events`, or buffers them after a failure or behind batches
    /// already buffered.
    fn take(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        if !self.pending {
            match self.store.write(&events) {
                Ok(()) => {
                    self.written += events.len() as u64;
                    return;
                }
                Err(e) => tracing::warn!(error = %e, events = events.len(), "report store write failed; buffering on disk"),
            }
        }
        let Some(buffer) = self.buffer.as_mut() else {
            tracing::warn!(events = events.len(), "report store write failed and there is no buffer; events lost");
            return;
        };
        match buffer.append(&events) {
            Ok(()) => self.pending = true,
            Err(e) => tracing::error!(error = %e, events = events.len(), "report store buffer: cannot write; events lost"),
        }
    }

    /// Writes the buffered batches oldest first, until one fails; `true`
    /// when none is left.
    fn replay(&mut self) -> bool {
        let Some(buffer) = self.buffer.as_ref() else {
            self.pending = false;
            return true;
        };
        let files = match buffer.files() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "report store buffer: cannot list");
                return false;
            }
        };
        let total = files.len();
        for (i, path) in files.into_iter().enumerate() {
            let events = match Buffer::read(&path) {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, file = %path.display(), "report store buffer: cannot read");
                    return false;
                }
            };
            if let Err(e) = self.store.write(&events) {
                tracing::warn!(error = %e, waiting = total - i, "report store still refuses writes; the buffer waits");
                return false;
            }
            self.written += events.len() as u64;
            if let Err(e) = std::fs::remove_file(&path) {
                // Written but still there: it would be written twice.
                tracing::error!(error = %e, file = %path.display(), "report store buffer: cannot delete a replayed batch");
                return false;
            }
        }
        if total > 0 {
            tracing::info!(batches = total, "report store buffer replayed");
        }
        self.pending = false;
        true
    }
}

/// Starts the writer task and the daily pruning; `retention_days` of 0
/// keeps everything; `record` false (`[reports] record = false`) records
/// nothing, which is said once here. `buffer`: the directory for batches
/// the store refuses (`data_dir/store-buffer`); `None` loses them.
pub fn start_writer(store: Arc<dyn Store>, retention_days: u64, record: bool, buffer: Option<&Path>) -> Arc<Recorder> {
    if !record {
        tracing::warn!(
            "[reports] record = false: no DMARC evaluations, delivery attempts or TLS sessions are recorded, \
             so no DMARC or TLS-RPT reports can be sent"
        );
    }
    let (tx, mut rx) = mpsc::channel::<Msg>(CHANNEL);
    let written = Arc::new(AtomicU64::new(0));
    let counted = written.clone();
    let buffer = buffer.and_then(|dir| match Buffer::open(dir) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(error = %e, dir = %dir.display(), "report store buffer unusable; failed writes will be lost");
            None
        }
    });
    let pending = buffer.as_ref().is_some_and(|b| b.files().is_ok_and(|f| !f.is_empty()));
    let mut sink = Some(Sink { store: store.clone(), buffer, pending, written: 0 });
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        let mut backoff = RETRY_FIRST;
        // Replay what a previous run left at once.
        let mut retry_at = tokio::time::Instant::now();
        loop {
            let waiting = sink.as_ref().is_some_and(|s| s.pending);
            let got = if waiting {
                tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => Some(n),
                    _ = tokio::time::sleep_until(retry_at) => None,
                }
            } else {
                Some(rx.recv_many(&mut batch, BATCH).await)
            };
            if got == Some(0) {
                return;
            }
            // Under a steady trickle each wake-up would find one or two
            // events, and a transaction per message costs more than the
            // rows (every touched page goes to the WAL again): let a batch
            // gather for a moment, unless someone waits for a flush.
            if got.is_some() && batch.len() < BATCH && !batch.iter().any(|m| matches!(m, Msg::Flush(_))) {
                tokio::time::sleep(GATHER).await;
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
            }
            let mut events = Vec::with_capacity(batch.len());
            let mut flushes = Vec::new();
            for m in batch.drain(..) {
                match m {
                    Msg::Event(e) => events.push(e),
                    Msg::Flush(done) => flushes.push(done),
                }
            }
            let retry = waiting && tokio::time::Instant::now() >= retry_at;
            let Some(mut s) = sink.take() else { return };
            let done = tokio::task::spawn_blocking(move || {
                s.written = 0;
                if retry {
                    s.replay();
                }
                s.take(events);
                s
            })
            .await;
            match done {
                Ok(s) => {
                    counted.fetch_add(s.written, Ordering::Relaxed);
                    if s.pending {
                        if retry || !waiting {
                            if !waiting {
                                backoff = RETRY_FIRST;
                            }
                            retry_at = tokio::time::Instant::now() + backoff;
                            backoff = (backoff * 2).min(RETRY_MAX);
                        }
                    } else {
                        backoff = RETRY_FIRST;
                    }
                    sink = Some(s);
                }
                Err(e) => {
                    tracing::error!(error = %e, "report store writer panicked; recording stops");
                    return;
                }
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    });
    if retention_days > 0 {
        tokio::spawn(async move {
            loop {
                let before = unix_now().saturating_sub(retention_days * DAY);
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.prune(before)).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(rows = n, retention_days, "report store pruned"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "report store pruning failed"),
                    Err(e) => tracing::warn!(error = %e, "report store pruning panicked"),
                }
                tokio::time::sleep(Duration::from_secs(DAY)).await;
            }
        });
    }
    Arc::new(Recorder { record, tx, dropped: AtomicU64::new(0), written })
}
