//! Writes from the hot path: events go on a bounded channel to one writer
//! task, which writes whatever has gathered in one transaction. Recording
//! never waits: when the channel is full (the disk stalls), the event is
//! dropped, counted and logged, and the SMTP session goes on. The same
//! task prunes what is older than the retention period once a day.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Event, Store, unix_now};

/// Events waiting for the writer; about 100 MB of backlog at most.
const CHANNEL: usize = 100_000;
/// Most events one transaction writes.
const BATCH: usize = 4096;
const DAY: u64 = 86_400;
/// How long the writer lets a small batch grow before writing it.
const GATHER: Duration = Duration::from_millis(100);

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
}

/// Starts the writer task and the daily pruning; `retention_days` of 0
/// keeps everything; `record` false (`[reports] record = false`) records
/// nothing, which is said once here.
pub fn start_writer(store: Arc<dyn Store>, retention_days: u64, record: bool) -> Arc<Recorder> {
    if !record {
        tracing::warn!(
            "[reports] record = false: no DMARC evaluations, delivery attempts or TLS sessions are recorded, \
             so no DMARC or TLS-RPT reports can be sent"
        );
    }
    let (tx, mut rx) = mpsc::channel::<Msg>(CHANNEL);
    let written = Arc::new(AtomicU64::new(0));
    let counted = written.clone();
    let writer_store = store.clone();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if rx.recv_many(&mut batch, BATCH).await == 0 {
                return;
            }
            // Under a steady trickle each wake-up would find one or two
            // events, and a transaction per message costs more than the
            // rows (every touched page goes to the WAL again): let a batch
            // gather for a moment, unless someone waits for a flush.
            if batch.len() < BATCH && !batch.iter().any(|m| matches!(m, Msg::Flush(_))) {
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
            let n = events.len() as u64;
            if n > 0 {
                let store = writer_store.clone();
                match tokio::task::spawn_blocking(move || store.write(&events)).await {
                    Ok(Ok(())) => {
                        counted.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, events = n, "report store write failed; events lost"),
                    Err(e) => tracing::warn!(error = %e, "report store writer panicked"),
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
