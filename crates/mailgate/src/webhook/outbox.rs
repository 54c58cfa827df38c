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
//! per event. A new event goes to the sender as soon as the writer has
//! numbered it, while it waits for that commit: one the sender has
//! already delivered by then is never written at all, so a receiver that
//! keeps up costs no SQLite work. An event is never less durable for
//! this: it is in SQLite by the end of the batch it came in (within
//! [`GATHER`] and an fsync), unless it has been delivered by then.
//!
//! May import: `metrics`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Messages waiting for the writer: about 100k events.
const CHANNEL: usize = 100_000;
/// Most messages one transaction takes.
const BATCH: usize = 4096;
/// The longest a new row waits in memory before it is committed.
pub const GATHER: Duration = Duration::from_millis(20);
/// A commit writes only rows at least this old (unless flushing): the
/// younger ones wait for the next, so that every row has had time to be
/// delivered (and need not be written) while it waits.
const MIN_AGE: Duration = Duration::from_millis(10);

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

/// What the writer tells the sender, in this order for any one row: the
/// row as soon as it is numbered, then the commit that settled its fate.
pub enum Note {
    /// New rows, in the order they were emitted, each with its event's key
    /// (a sender that knows the whole outbox sends them without reading
    /// it back). They are not durable yet: see [`Note::Committed`].
    Fresh(Vec<(String, Head)>),
    /// What one commit did: `settled` are the rows whose [`Settle`] it
    /// applied (they may be picked again, or are gone); `resolved` are the
    /// fresh rows it took care of, each now either in SQLite or (already
    /// removed by a settle in the same batch) never to be written.
    Committed { settled: Vec<i64>, resolved: Vec<i64> },
}

/// The oldest unsent event of one (webhook, message).
#[derive(Clone)]
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

    /// The highest `seq` ever handed out (AUTOINCREMENT's record of it, as
    /// rows removed since may have held it): the writer numbers new rows
    /// from here.
    pub fn last_seq(&self) -> rusqlite::Result<i64> {
        let conn = self.lock();
        let kept: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM outbox", [], |r| r.get(0))?;
        let ever: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'", [], |r| r.get(0)).unwrap_or(0);
        Ok(kept.max(ever))
    }

    /// Writes new rows (numbered by the writer, some already tried) and
    /// the sender's decisions about rows written earlier in one
    /// transaction; answers how many rows were removed.
    pub fn apply(&self, rows: &[Pending], settles: &[Settle]) -> rusqlite::Result<u64> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut removed = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO outbox (seq, url, msg, created, attempts, next_try, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for p in rows {
                let r = &p.row;
                insert.execute(params![p.seq, r.url, r.key, r.created, p.attempts, p.next_try, r.body])?;
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
        Ok(removed)
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

/// A new row waiting for the end of its batch.
pub struct Pending {
    pub seq: i64,
    pub row: NewRow,
    /// Set when a POST of the row failed before it was written.
    pub attempts: u32,
    pub next_try: i64,
    /// When the writer took it in.
    pub born: Instant,
}

/// What has come in since the last commit.
#[derive(Default)]
struct Batch {
    /// In `seq` order.
    rows: Vec<Pending>,
    settles: Vec<Settle>,
    flushes: Vec<oneshot::Sender<()>>,
}

impl Batch {
    fn len(&self) -> usize {
        self.rows.len() + self.settles.len()
    }
}

/// Starts the writer; `depth` is what the outbox holds now and `last_seq`
/// the highest row number ever given ([`Outbox::last_seq`]). It tells the
/// sender, on `notes`, of each new row at once and of each commit.
pub fn start_writer(
    outbox: Arc<Outbox>,
    depth: u64,
    last_seq: i64,
    metrics: Arc<Metrics>,
    notes: mpsc::UnboundedSender<Note>,
) -> mpsc::Sender<Msg> {
    let (tx, mut rx) = mpsc::channel::<Msg>(CHANNEL);
    tokio::spawn(async move {
        let mut writer = Writer { outbox, depth, metrics, notes };
        let mut next_seq = last_seq;
        let mut incoming = Vec::with_capacity(BATCH);
        let mut batch = Batch::default();
        // When the batch is committed: a transaction per event would cost
        // an fsync each, so a batch gathers for a moment (and meanwhile
        // the sender may deliver its rows, which then are never written).
        // At most [`GATHER`] after its oldest row came in.
        let mut deadline: Option<Instant> = None;
        loop {
            tokio::select! {
                n = rx.recv_many(&mut incoming, BATCH) => {
                    if n == 0 {
                        writer.commit(&mut batch, Instant::now()).await;
                        return;
                    }
                    let mut fresh = Vec::new();
                    let now = Instant::now();
                    for m in incoming.drain(..) {
                        match m {
                            Msg::Insert(rows) => {
                                for row in rows {
                                    next_seq += 1;
                                    let head = Head { seq: next_seq, url: row.url.clone(), created: row.created, attempts: 0, body: row.body.clone() };
                                    fresh.push((row.key.clone(), head));
                                    batch.rows.push(Pending { seq: next_seq, row, attempts: 0, next_try: 0, born: now });
                                }
                            }
                            Msg::Settle(s) => batch.settles.push(s),
                            Msg::Flush(done) => batch.flushes.push(done),
                        }
                    }
                    if !fresh.is_empty() {
                        writer.metrics.webhook_events("queued", fresh.len() as u64);
                        let _ = writer.notes.send(Note::Fresh(fresh));
                    }
                    deadline.get_or_insert(now + GATHER);
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
            }
            let now = Instant::now();
            let flush = !batch.flushes.is_empty() || batch.len() >= BATCH;
            if flush || deadline.is_some_and(|d| d <= now) {
                let cut = if flush { now } else { now.checked_sub(MIN_AGE).unwrap_or(now) };
                deadline = writer.commit(&mut batch, cut).await;
            }
        }
    });
    tx
}

struct Writer {
    outbox: Arc<Outbox>,
    /// Rows in SQLite.
    depth: u64,
    metrics: Arc<Metrics>,
    notes: mpsc::UnboundedSender<Note>,
}

impl Writer {
    /// Commits a batch's settles, and its new rows that came in by `cut`:
    /// those the sender has already removed (delivered or given up) are
    /// dropped, not written; those it tried and failed are written with
    /// their retry state; younger ones stay in the batch. Answers when the
    /// next commit is due.
    async fn commit(&mut self, batch: &mut Batch, cut: Instant) -> Option<Instant> {
        let settles = std::mem::take(&mut batch.settles);
        let flushes = std::mem::take(&mut batch.flushes);
        let settled: Vec<i64> = settles.iter().map(|s| s.seq()).collect();
        let mut gone = vec![false; batch.rows.len()];
        let mut earlier = Vec::new();
        for s in settles {
            match batch.rows.binary_search_by_key(&s.seq(), |p| p.seq) {
                Ok(i) => match s {
                    Settle::Remove(_) => gone[i] = true,
                    Settle::Retry { attempts, next_try, .. } => {
                        batch.rows[i].attempts = attempts;
                        batch.rows[i].next_try = next_try;
                    }
                },
                Err(_) => earlier.push(s),
            }
        }
        let mut resolved = Vec::new();
        let mut rows = Vec::new();
        let mut young = Vec::new();
        for (p, gone) in batch.rows.drain(..).zip(gone) {
            if gone {
                resolved.push(p.seq);
            } else if p.born <= cut {
                resolved.push(p.seq);
                rows.push(p);
            } else {
                young.push(p);
            }
        }
        batch.rows = young;
        let inserted = rows.len() as u64;
        if inserted > 0 || !earlier.is_empty() {
            let o = self.outbox.clone();
            match tokio::task::spawn_blocking(move || o.apply(&rows, &earlier)).await {
                Ok(Ok(removed)) => {
                    self.metrics.webhook_events("stored", inserted);
                    self.depth = (self.depth + inserted).saturating_sub(removed);
                    self.metrics.set_webhook_outbox(self.depth);
                }
                Ok(Err(e)) => {
                    // The sender's decisions are lost too: those rows
                    // are sent again (at least once, never lost).
                    self.metrics.webhook_events("lost", inserted);
                    tracing::error!(error = %e, events = inserted, "webhook outbox write failed; events lost");
                }
                Err(e) => tracing::error!(error = %e, "webhook outbox writer panicked"),
            }
        }
        if !settled.is_empty() || !resolved.is_empty() {
            let _ = self.notes.send(Note::Committed { settled, resolved });
        }
        for done in flushes {
            let _ = done.send(());
        }
        batch.rows.first().map(|p| p.born + GATHER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(from: i64, rows: &[(&str, &str, &str)]) -> Vec<Pending> {
        (from..)
            .zip(rows)
            .map(|(seq, (url, key, body))| Pending {
                seq,
                row: NewRow { url: (*url).into(), key: (*key).into(), created: 1, body: (*body).into() },
                attempts: 0,
                next_try: 0,
                born: Instant::now(),
            })
            .collect()
    }

    #[test]
    fn heads_are_the_oldest_event_of_each_message_once_due() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(&dir.path().join("w.db")).unwrap();
        assert_eq!(o.last_seq().unwrap(), 0);
        o.apply(&rows(1, &[("u", "m1", "a"), ("u", "m1", "b"), ("u", "m2", "c"), ("v", "m1", "d")]), &[]).unwrap();
        assert_eq!(o.last_seq().unwrap(), 4);
        let bodies = |h: Vec<Head>| h.into_iter().map(|h| h.body).collect::<Vec<_>>();
        assert_eq!(bodies(o.heads(0, 10).unwrap()), ["a", "c", "d"]);
        // m1's first event waits: its second is not sent before it.
        let first = o.heads(0, 10).unwrap()[0].seq;
        o.apply(&[], &[Settle::Retry { seq: first, attempts: 1, next_try: 5000 }]).unwrap();
        assert_eq!(bodies(o.heads(4999, 10).unwrap()), ["c", "d"]);
        assert_eq!(bodies(o.heads(5000, 10).unwrap()), ["c", "d", "a"]);
        assert_eq!(o.apply(&[], &[Settle::Remove(first)]).unwrap(), 1);
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

    #[test]
    fn numbering_goes_on_past_removed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(&dir.path().join("w.db")).unwrap();
        o.apply(&rows(7, &[("u", "m1", "a"), ("u", "m2", "b")]), &[]).unwrap();
        o.apply(&[], &[Settle::Remove(7), Settle::Remove(8)]).unwrap();
        assert!(o.is_empty().unwrap());
        assert_eq!(o.last_seq().unwrap(), 8, "a number once given is not given again");
    }

    /// The writer hands rows to the sender before writing them; what the
    /// sender settles within the batch is written as settled (a removed
    /// row not at all), what it settles later is changed in SQLite.
    #[tokio::test]
    async fn rows_settled_within_their_batch_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let o = Arc::new(Outbox::open(&dir.path().join("w.db")).unwrap());
        let (notes_tx, mut notes) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::new());
        let tx = start_writer(o.clone(), 0, 41, metrics, notes_tx);
        let new = |key: &str, body: &str| NewRow { url: "u".into(), key: key.into(), created: 1, body: body.into() };
        // One batch (the writer, on this one-thread runtime, runs only
        // once the test waits): three new rows, then the sender's verdict
        // on the first two, before the batch is committed: delivered,
        // failed; the third is not tried.
        tx.send(Msg::Insert(vec![new("m1", "a"), new("m2", "b"), new("m3", "c")])).await.unwrap();
        tx.send(Msg::Settle(Settle::Remove(42))).await.unwrap();
        tx.send(Msg::Settle(Settle::Retry { seq: 43, attempts: 1, next_try: 5000 })).await.unwrap();
        let Some(Note::Fresh(fresh)) = notes.recv().await else { panic!("no fresh rows") };
        let seqs: Vec<i64> = fresh.iter().map(|(_, h)| h.seq).collect();
        assert_eq!(seqs, [42, 43, 44], "numbered on from last_seq, in order");
        assert_eq!(fresh[1].0, "m2");
        assert_eq!(fresh[1].1.body, "b");
        let Some(Note::Committed { settled, resolved }) = notes.recv().await else { panic!("no commit") };
        assert_eq!(settled, [42, 43]);
        assert_eq!(resolved, [42, 43, 44]);
        assert_eq!(o.count().unwrap(), 2, "the delivered row was never written");
        let heads = o.heads(i64::MAX, 10).unwrap();
        let got: Vec<(i64, u32, &str)> = heads.iter().map(|h| (h.seq, h.attempts, h.body.as_str())).collect();
        assert_eq!(got, [(44, 0, "c"), (43, 1, "b")], "the failed row waits with its retry time");
        assert_eq!(o.heads(4999, 10).unwrap().len(), 1);
        // Settled after its commit: changed in SQLite.
        tx.send(Msg::Settle(Settle::Remove(44))).await.unwrap();
        let (done, wait) = oneshot::channel();
        tx.send(Msg::Flush(done)).await.unwrap();
        wait.await.unwrap();
        let Some(Note::Committed { settled, resolved }) = notes.recv().await else { panic!("no commit") };
        assert_eq!((settled, resolved), (vec![44], vec![]));
        assert_eq!(o.count().unwrap(), 1);
    }
}
