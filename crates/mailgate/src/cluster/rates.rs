//! Submission rate limits counted across the cluster: [`SharedRates`], a
//! [`RateCounter`] that answers each RCPT at once from a local view of the
//! cluster's counts, which two background threads keep in step with
//! PostgreSQL.
//!
//! # How
//!
//! The RCPT check is synchronous (the SMTP session is sans-I/O), so it
//! never waits for the database. A send is admitted when
//!
//! - this node's own [`MemoryCounter`] admits it (the exact sliding window
//!   and the `burst` bucket, over this node's sends), and
//! - the cluster's count of the key over the last window, as this node
//!   knows it, has room: the counts of fixed windows aligned on the epoch
//!   in `cluster_counters` (keys `rate:<key>`), the current window plus the
//!   previous one weighted by how much of it the sliding window still
//!   covers (the estimate [`super::counters`] uses for AUTH throttling).
//!
//! An admitted send is added to the view at once (as *pending*) and handed
//! to the writer thread, which adds it to PostgreSQL (one upsert per key
//! and window, several sends in one transaction) and announces the new
//! count with `NOTIFY mailgate_rates`. The listener thread `LISTEN`s on
//! its own connection and folds the other nodes' announcements into the
//! view; it also reads every live `rate:` row when it (re)connects and
//! every [`PULL_EVERY`], so nothing missed while away stays missed.
//!
//! # What it allows
//!
//! A node learns of another node's send a moment after it was admitted:
//! that node's writer commit plus the notification's trip, a few
//! milliseconds on a LAN. Sends of one key arriving on several nodes
//! closer together than that can each be admitted, so a limit can be
//! overrun by about one send per other node per such moment (never by a
//! whole window's worth). `burst` is a per-node bucket: across `k` nodes
//! up to `k * burst` may go at once, within the shared `N` per window.
//!
//! # When PostgreSQL does not answer
//!
//! While the listener has no connection, the cluster's view is not used:
//! each node counts its own sends only (one warning; one message when it
//! is back), so mail keeps flowing and a cluster of `k` nodes may admit up
//! to `k * N` per window meanwhile. The sends admitted meanwhile are kept
//! (per key and window) and written when the database returns, so the
//! shared counts include them afterwards.
//!
//! May import: `ratelimit`, `cluster`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use super::Db;
use crate::ratelimit::{Ask, MemoryCounter, Rate, RateCounter, Refused};

/// The `NOTIFY` channel of new counts.
const CHANNEL: &str = "mailgate_rates";
/// How often the listener reads every live row again, and forgets windows
/// that have ended.
pub const PULL_EVERY: Duration = Duration::from_secs(10);
/// How long the listener waits for notifications before looking at its
/// connection and its stop flag.
const LISTEN_SLICE: Duration = Duration::from_millis(250);
/// How often a database that failed is tried again.
const RETRY: Duration = Duration::from_secs(2);
/// How often expired rows are deleted.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);

/// Rate limits counted across the cluster (see the module header).
pub struct SharedRates {
    local: MemoryCounter,
    inner: Arc<Inner>,
    sends: Mutex<Sender<Delta>>,
}

struct Inner {
    view: Mutex<View>,
    /// The listener is connected and has read the rows: the view is live.
    synced: AtomicBool,
    stop: AtomicBool,
    /// Tells this process's own notifications apart from other nodes'.
    instance: String,
}

#[derive(Default)]
struct View {
    /// By database key (`rate:...`) and window length (s).
    keys: HashMap<(String, u64), Slot>,
}

#[derive(Default)]
struct Slot {
    /// By window start (Unix s).
    windows: HashMap<u64, Cell>,
    /// When a refusal of this key by the cluster's count was last
    /// reported (Unix ms).
    reported: Option<u64>,
}

#[derive(Default, Clone, Copy)]
struct Cell {
    /// The count as the database last told it (every node's sends that
    /// reached it).
    db: u64,
    /// This node's sends not yet acknowledged by the database.
    pending: u64,
}

/// Sends to add to one key's window.
struct Delta {
    key: String,
    window: u64,
    start: u64,
    n: u64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn window_s(rate: &Rate) -> u64 {
    rate.window.as_secs().max(1)
}

fn db_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Milliseconds until `n` more fit under `count`, given the current and
/// previous windows' counts; `None` when they fit now.
fn wait_ms(cur: u64, prev: u64, n: u64, count: u64, w_ms: u64, elapsed_ms: u64) -> Option<u64> {
    let elapsed = elapsed_ms.min(w_ms);
    let estimate = cur + (prev * (w_ms - elapsed)).div_ceil(w_ms);
    if estimate + n <= count {
        return None;
    }
    if n > count {
        return Some(w_ms);
    }
    let room = count - n;
    if cur > room {
        // This window must end, then enough of it slide out of the next.
        let after = w_ms - room * w_ms / cur;
        Some(w_ms - elapsed + after)
    } else {
        // The previous window's share must shrink to what is left.
        let left = room - cur;
        let at = w_ms - left * w_ms / prev.max(1);
        Some(at.saturating_sub(elapsed).max(1))
    }
}

impl Slot {
    fn total(&self, start: u64) -> u64 {
        self.windows.get(&start).map_or(0, |c| c.db + c.pending)
    }
}

impl SharedRates {
    /// Counts in the cluster store at `url`; starts the writer and the
    /// listener threads (they connect in the background).
    pub fn start(url: &str) -> anyhow::Result<Arc<SharedRates>> {
        let (writer_db, listener_db) = (Db::new(url)?, Db::new(url)?);
        let inner = Arc::new(Inner {
            view: Mutex::new(View::default()),
            synced: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            instance: format!("{:016x}", rand::random::<u64>()),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let inner = inner.clone();
            std::thread::Builder::new().name("rates-writer".into()).spawn(move || writer(&writer_db, &inner, &rx))?;
        }
        {
            let inner = inner.clone();
            std::thread::Builder::new().name("rates-listener".into()).spawn(move || listener(&listener_db, &inner))?;
        }
        Ok(Arc::new(SharedRates { local: MemoryCounter::new(), inner, sends: Mutex::new(tx) }))
    }

    /// Whether the cluster's counts are in use now (false: this node's).
    pub fn is_shared(&self) -> bool {
        self.inner.synced.load(Ordering::Relaxed)
    }

    /// Blocks until the view is live or `timeout` has passed (startup: the
    /// first RCPT should see the counts the cluster already has).
    pub fn wait_synced(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while !self.is_shared() {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// [`RateCounter::acquire`] at `now_ms` (Unix milliseconds).
    fn acquire_at(&self, asks: &[Ask<'_>], n: u64, now_ms: u64) -> Result<(), Refused> {
        let now_s = now_ms / 1000;
        // One lock over check and count: this node's RCPTs are counted one
        // after the other, as on a single node.
        let mut view = self.inner.view.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_shared() {
            for (i, ask) in asks.iter().enumerate() {
                let w = window_s(ask.rate);
                let start = now_s - now_s % w;
                let key = (format!("rate:{}", ask.key), w);
                let (cur, prev) = view.keys.get(&key).map_or((0, 0), |s| (s.total(start), s.total(start.saturating_sub(w))));
                let Some(wait) = wait_ms(cur, prev, n, ask.rate.count, w * 1000, now_ms - start * 1000) else { continue };
                let slot = view.keys.entry(key).or_default();
                let first_in_window = slot.reported.is_none_or(|t| now_ms.saturating_sub(t) >= w * 1000);
                if first_in_window {
                    slot.reported = Some(now_ms);
                }
                return Err(Refused { ask: i, retry_after: Duration::from_millis(wait), first_in_window });
            }
        }
        self.local.acquire(asks, n)?;
        let sends = self.sends.lock().unwrap_or_else(|p| p.into_inner());
        for ask in asks {
            let w = window_s(ask.rate);
            let start = now_s - now_s % w;
            let key = format!("rate:{}", ask.key);
            view.keys.entry((key.clone(), w)).or_default().windows.entry(start).or_default().pending += n;
            // The writer only stops with the process.
            let _ = sends.send(Delta { key, window: w, start, n });
        }
        Ok(())
    }
}

impl RateCounter for SharedRates {
    fn acquire(&self, asks: &[Ask<'_>], n: u64) -> Result<(), Refused> {
        self.acquire_at(asks, n, unix_ms())
    }
}

impl Drop for SharedRates {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

impl Inner {
    /// Folds a count the database gave into the view (counts only grow,
    /// so an older answer arriving late changes nothing).
    fn learn(&self, key: String, window: u64, start: u64, count: u64) {
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        let cell = view.keys.entry((key, window)).or_default().windows.entry(start).or_default();
        cell.db = cell.db.max(count);
    }

    /// The writer's acknowledgement of `n` of our sends: they are in `count`.
    fn acknowledge(&self, key: &str, window: u64, start: u64, n: u64, count: u64) {
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cell) = view.keys.get_mut(&(key.to_string(), window)).and_then(|s| s.windows.get_mut(&start)) {
            cell.pending = cell.pending.saturating_sub(n);
            cell.db = cell.db.max(count);
        }
    }

    /// Forgets windows that no longer count (two window lengths old).
    fn forget_ended(&self, now_s: u64) {
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        view.keys.retain(|(_, w), slot| {
            slot.windows.retain(|start, _| start + 2 * w > now_s);
            !slot.windows.is_empty() || slot.reported.is_some_and(|t| t / 1000 + w > now_s)
        });
    }
}

/// The writer thread: adds this node's sends to the database, several at
/// a time, and announces the new counts. Sends that cannot be written are
/// kept (merged per key and window) until they can.
fn writer(db: &Db, inner: &Inner, sends: &Receiver<Delta>) {
    let mut waiting: HashMap<(String, u64, u64), u64> = HashMap::new();
    let mut down_since: Option<Instant> = None;
    let mut last_cleanup: Option<Instant> = None;
    loop {
        let next = if waiting.is_empty() { sends.recv().map_err(|_| RecvTimeoutError::Disconnected) } else { sends.recv_timeout(RETRY) };
        match next {
            Ok(d) => *waiting.entry((d.key, d.window, d.start)).or_default() += d.n,
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        while let Ok(d) = sends.try_recv() {
            *waiting.entry((d.key, d.window, d.start)).or_default() += d.n;
        }
        if down_since.is_some_and(|t| t.elapsed() < RETRY) {
            continue;
        }
        let now_s = super::now();
        // Windows that ended long ago count nowhere any more.
        waiting.retain(|(_, w, start), _| start + 2 * w > now_s);
        let batch: Vec<((String, u64, u64), u64)> = waiting.iter().map(|(k, n)| (k.clone(), *n)).collect();
        let cleanup = last_cleanup.is_none_or(|t| t.elapsed() >= CLEANUP_EVERY);
        let instance = inner.instance.clone();
        let written = db.with(|c| {
            let mut tx = c.transaction()?;
            if cleanup {
                tx.execute("DELETE FROM cluster_counters WHERE expires < $1::bigint", &[&db_int(now_s)])?;
            }
            let up = tx.prepare(
                "INSERT INTO cluster_counters (key, window_s, window_start, count, expires)
                 VALUES ($1::text, $2::bigint, $3::bigint, $4::bigint, $5::bigint)
                 ON CONFLICT (key, window_s, window_start)
                 DO UPDATE SET count = cluster_counters.count + excluded.count
                 RETURNING count",
            )?;
            let mut counts = Vec::with_capacity(batch.len());
            for ((key, w, start), n) in &batch {
                let row = tx.query_one(&up, &[key, &db_int(*w), &db_int(*start), &db_int(*n), &db_int(start + 2 * w)])?;
                let count: i64 = row.try_get(0)?;
                let count = u64::try_from(count).unwrap_or(0);
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &format!("{instance}\t{w}\t{start}\t{count}\t{key}")])?;
                counts.push(count);
            }
            tx.commit()?;
            Ok(counts)
        });
        match written {
            Ok(counts) => {
                if cleanup {
                    last_cleanup = Some(Instant::now());
                }
                for (((key, w, start), n), count) in batch.iter().zip(counts) {
                    inner.acknowledge(key, *w, *start, *n, count);
                    if let Some(left) = waiting.get_mut(&(key.clone(), *w, *start)) {
                        *left -= n;
                        if *left == 0 {
                            waiting.remove(&(key.clone(), *w, *start));
                        }
                    }
                }
                if down_since.take().is_some() {
                    tracing::info!("cluster store reachable again: the rate-limit sends counted meanwhile are written");
                }
            }
            Err(e) => {
                if down_since.is_none() {
                    tracing::warn!(error = %format!("{e:#}"), "cannot write rate-limit counts to the cluster store; kept until it answers");
                }
                down_since = Some(Instant::now());
            }
        }
    }
}

/// The listener thread: keeps the view in step with the database, and
/// says whether it is.
fn listener(db: &Db, inner: &Inner) {
    // Warned that the view is not live; cleared (with a message) when it is again.
    let mut down = false;
    while !inner.stop.load(Ordering::Relaxed) {
        let outcome = db.with(|c| {
            c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            pull(c, inner)?;
            inner.synced.store(true, Ordering::Relaxed);
            if down {
                tracing::info!("cluster store reachable again: rate limits are counted across nodes again");
                down = false;
            }
            let mut pulled = Instant::now();
            while !inner.stop.load(Ordering::Relaxed) && !c.is_closed() {
                {
                    let mut notes = c.notifications();
                    let mut it = notes.timeout_iter(LISTEN_SLICE);
                    while let Some(note) = it.next()? {
                        apply(inner, note.payload());
                        if pulled.elapsed() >= PULL_EVERY {
                            break;
                        }
                    }
                }
                if pulled.elapsed() >= PULL_EVERY && !c.is_closed() {
                    pull(c, inner)?;
                    pulled = Instant::now();
                }
            }
            Ok(())
        });
        inner.synced.store(false, Ordering::Relaxed);
        if inner.stop.load(Ordering::Relaxed) {
            return;
        }
        if !down {
            let error = match outcome {
                Err(e) => format!("{e:#}"),
                Ok(()) => "connection closed".to_string(),
            };
            tracing::warn!(error = %error, "cluster store unreachable: rate limits count this node's sends only until it answers");
            down = true;
        }
        std::thread::sleep(RETRY);
    }
}

/// Reads every live `rate:` row into the view and forgets ended windows.
fn pull(c: &mut postgres::Client, inner: &Inner) -> Result<(), postgres::Error> {
    let now_s = super::now();
    let rows = c.query(
        "SELECT key, window_s, window_start, count FROM cluster_counters WHERE key LIKE 'rate:%' AND expires > $1::bigint",
        &[&db_int(now_s)],
    )?;
    for row in rows {
        let (key, w, start, count): (String, i64, i64, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        let as_u = |v: i64| u64::try_from(v).unwrap_or(0);
        inner.learn(key, as_u(w), as_u(start), as_u(count));
    }
    inner.forget_ended(now_s);
    Ok(())
}

/// One notification: `instance \t window \t start \t count \t key`.
fn apply(inner: &Inner, payload: &str) {
    let mut parts = payload.splitn(5, '\t');
    let (Some(instance), Some(w), Some(start), Some(count), Some(key)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    if instance == inner.instance {
        // Our own: the writer has acknowledged it already.
        return;
    }
    if let (Ok(w), Ok(start), Ok(count)) = (w.parse(), start.parse(), count.parse()) {
        inner.learn(key.to_string(), w, start, count);
    }
}

#[cfg(test)]
mod tests;
