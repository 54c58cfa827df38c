//! The durable outbox of webhook events: `DATA_DIR/webhooks.db`, SQLite in
//! WAL mode with `synchronous = FULL`, so a committed event survives a
//! crash. One row per event and webhook; rows go when sent or given up.
//!
//! Why SQLite and not a journal of our own: retries change a row's
//! `attempts` and `next_try`, and sending removes rows out of order (one
//! message's events wait while others go); SQLite does that in place,
//! with an index that finds each message's oldest event, where a journal
//! would need its own compaction.
//!
//! Every write goes through one writer task ([`start_writer`]) that
//! commits what has gathered (new events, and what the sender finished)
//! in one transaction, so a busy relay pays one fsync per batch, not one
//! per event.
//!
//! May import: `metrics`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// Messages waiting for the writer: about 100k events.
const CHANNEL: usize = 100_000;
/// Most messages one transaction takes.
const BATCH: usize = 4096;
/// How long the writer lets a small batch grow before committing it.
pub const GATHER: Duration = Duration::from_millis(20);

/// A new event for one webhook.
pub struct NewRow {
    pub url: String,
    /// Events of one key are sent in order (the queue id).
    pub key: String,
    /// Unix seconds, for `max_age`.
    pub created: i64,
    pub body: String,
}

/// What the sender decided for a row it tried.
#[derive(Clone, Copy, Debug)]
pub enum Settle {
    /// Sent (2xx), or given up: the row goes.
    Remove(i64),
    /// Failed: try again at `next_try` (Unix milliseconds).
    Retry { seq: i64, attempts: u32, next_try: i64 },
}

impl Settle {
    fn seq(self) -> i64 {
        match self {
            Settle::Remove(s) | Settle::Retry { seq: s, .. } => s,
        }
    }
}

pub enum Msg {
    Insert(Vec<NewRow>),
    Settle(Settle),
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// What one commit did, for the sender: the rows it settled (they may be
/// picked again, or are gone) and the rows it inserted, in the order they
/// were emitted (so a sender that knows the whole outbox can send them
/// without reading it back).
#[derive(Default)]
pub struct Committed {
    pub settled: Vec<i64>,
    /// (the event's key, its row).
    pub rows: Vec<(String, Head)>,
}

/// The oldest unsent event of one (webhook, message).
pub struct Head {
    pub seq: i64,
    pub url: String,
    pub created: i64,
    pub attempts: u32,
    pub body: String,
}

pub struct Outbox {
    conn: Mutex<Connection>,
}

impl Outbox {
    pub fn open(path: &Path) -> rusqlite::Result<Outbox> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL with FULL: each commit is fsync'd before it returns.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS outbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                url TEXT NOT NULL,
                msg TEXT NOT NULL,
                created INTEGER NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_try INTEGER NOT NULL DEFAULT 0,
                body TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS outbox_order ON outbox (url, msg, seq);",
        )?;
        Ok(Outbox { conn: Mutex::new(conn) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events in the outbox.
    pub fn count(&self) -> rusqlite::Result<u64> {
        self.lock().query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0)).map(|n| n.max(0) as u64)
    }

    /// Writes new rows and the sender's decisions in one transaction;
    /// answers how many rows were removed and the new rows' `seq`s.
    pub fn apply(&self, rows: &[NewRow], settles: &[Settle]) -> rusqlite::Result<(u64, Vec<i64>)> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut removed = 0;
        let mut seqs = Vec::with_capacity(rows.len());
        {
            let mut insert = tx.prepare_cached("INSERT INTO outbox (url, msg, created, body) VALUES (?1, ?2, ?3, ?4)")?;
            for r in rows {
                seqs.push(insert.insert(params![r.url, r.key, r.created, r.body])?);
            }
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
            let mut retry = tx.prepare_cached("UPDATE outbox SET attempts = ?2, next_try = ?3 WHERE seq = ?1")?;
            for s in settles {
                match *s {
                    Settle::Remove(seq) => removed += delete.execute(params![seq])? as u64,
                    Settle::Retry { seq, attempts, next_try } => {
                        retry.execute(params![seq, attempts, next_try])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok((removed, seqs))
    }

    /// Whether the outbox holds no event at all (due or not).
    pub fn is_empty(&self) -> rusqlite::Result<bool> {
        self.lock().query_row("SELECT NOT EXISTS (SELECT 1 FROM outbox)", [], |r| r.get(0))
    }

    /// Up to `limit` events that may be sent at `now_ms`: for each
    /// (webhook, message), its oldest event, if its retry time has come.
    pub fn heads(&self, now_ms: i64, limit: usize) -> rusqlite::Result<Vec<Head>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT o.seq, o.url, o.created, o.attempts, o.body FROM outbox o
             JOIN (SELECT MIN(seq) AS seq FROM outbox GROUP BY url, msg) h ON h.seq = o.seq
             WHERE o.next_try <= ?1 ORDER BY o.next_try, o.seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now_ms, limit as i64], |r| {
            Ok(Head {
                seq: r.get(0)?,
                url: r.get(1)?,
                created: r.get(2)?,
                attempts: r.get::<_, i64>(3)?.clamp(0, i64::from(u32::MAX)) as u32,
                body: r.get(4)?,
            })
        })?;
        rows.collect()
    }
}

/// Starts the writer; `depth` is what the outbox holds now. After each
/// commit it tells the sender, on `committed`, what the commit did.
pub fn start_writer(
    outbox: Arc<Outbox>,
    mut depth: u64,
    metrics: Arc<Metrics>,
    committed: mpsc::UnboundedSender<Committed>,
) -> mpsc::Sender<Msg> {
    let (tx, mut rx) = mpsc::channel::<Msg>(CHANNEL);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if rx.recv_many(&mut batch, BATCH).await == 0 {
                return;
            }
            // A transaction per event would cost an fsync each: let a
            // batch gather for a moment, unless someone waits on a flush.
            if batch.len() < BATCH && !batch.iter().any(|m| matches!(m, Msg::Flush(_))) {
                tokio::time::sleep(GATHER).await;
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
            }
            let mut rows = Vec::new();
            let mut settles = Vec::new();
            let mut flushes = Vec::new();
            for m in batch.drain(..) {
                match m {
                    Msg::Insert(r) => rows.extend(r),
                    Msg::Settle(s) => settles.push(s),
                    Msg::Flush(done) => flushes.push(done),
                }
            }
            let mut done = Committed { settled: settles.iter().map(|s| s.seq()).collect(), rows: Vec::new() };
            let inserted = rows.len() as u64;
            if inserted > 0 || !settles.is_empty() {
                let o = outbox.clone();
                match tokio::task::spawn_blocking(move || {
                    let r = o.apply(&rows, &settles);
                    (rows, r)
                })
                .await
                {
                    Ok((rows, Ok((removed, seqs)))) => {
                        metrics.webhook_events("queued", inserted);
                        depth = (depth + inserted).saturating_sub(removed);
                        metrics.set_webhook_outbox(depth);
                        done.rows = rows
                            .into_iter()
                            .zip(seqs)
                            .map(|(r, seq)| (r.key, Head { seq, url: r.url, created: r.created, attempts: 0, body: r.body }))
                            .collect();
                    }
                    Ok((_, Err(e))) => {
                        // The sender's decisions are lost too: those rows
                        // are sent again (at least once, never lost).
                        metrics.webhook_events("lost", inserted);
                        tracing::error!(error = %e, events = inserted, "webhook outbox write failed; events lost");
                    }
                    Err(e) => tracing::error!(error = %e, "webhook outbox writer panicked"),
                }
                let _ = committed.send(done);
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(url: &str, key: &str, body: &str) -> NewRow {
        NewRow { url: url.into(), key: key.into(), created: 1, body: body.into() }
    }

    #[test]
    fn heads_are_the_oldest_event_of_each_message_once_due() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(&dir.path().join("w.db")).unwrap();
        let (_, seqs) = o.apply(&[row("u", "m1", "a"), row("u", "m1", "b"), row("u", "m2", "c"), row("v", "m1", "d")], &[]).unwrap();
        assert_eq!(seqs.len(), 4);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in the order given: {seqs:?}");
        let bodies = |h: Vec<Head>| h.into_iter().map(|h| h.body).collect::<Vec<_>>();
        assert_eq!(bodies(o.heads(0, 10).unwrap()), ["a", "c", "d"]);
        // m1's first event waits: its second is not sent before it.
        let first = o.heads(0, 10).unwrap()[0].seq;
        o.apply(&[], &[Settle::Retry { seq: first, attempts: 1, next_try: 5000 }]).unwrap();
        assert_eq!(bodies(o.heads(4999, 10).unwrap()), ["c", "d"]);
        assert_eq!(bodies(o.heads(5000, 10).unwrap()), ["c", "d", "a"]);
        assert_eq!(o.apply(&[], &[Settle::Remove(first)]).unwrap().0, 1);
        assert_eq!(bodies(o.heads(0, 10).unwrap()), ["b", "c", "d"]);
        assert_eq!(o.count().unwrap(), 3);
        assert!(!o.is_empty().unwrap());
        drop(o);
        // What was committed is there after a reopen.
        let o = Outbox::open(&dir.path().join("w.db")).unwrap();
        assert_eq!(o.count().unwrap(), 3);
        let seqs: Vec<i64> = o.heads(i64::MAX, 10).unwrap().iter().map(|h| h.seq).collect();
        o.apply(&[], &[Settle::Retry { seq: seqs[0], attempts: 2, next_try: 9000 }]).unwrap();
        o.apply(&[], &seqs[1..].iter().map(|&s| Settle::Remove(s)).collect::<Vec<_>>()).unwrap();
        assert!(o.heads(0, 10).unwrap().is_empty(), "nothing due");
        assert!(!o.is_empty().unwrap(), "but a retry waits");
    }
}
