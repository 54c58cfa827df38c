//! Counters shared by every node of a cluster (`cluster_counters`), with
//! a local fallback: AUTH failure throttling today, per-sender rate limits
//! later.
//!
//! # Semantics
//!
//! A counter is named by a string `key` (callers prefix theirs: `auth:ip:`,
//! `auth:user:`, `rate:...`) and a window length `window`. Time is cut into
//! fixed windows of that length aligned on the Unix epoch (`window_start =
//! now - now % window`), and each window holds a count per key.
//!
//! - [`Counters::add`] adds `n` (negative to take back, never below 0) to
//!   the key's count in the current window and answers the key's count
//!   *over the last `window`* after the change.
//! - [`Counters::read`] answers that count without changing it.
//! - The count over the last `window` is the sliding-window estimate:
//!   `current + ceil(previous * (window - elapsed) / window)`, where
//!   `elapsed` is how far the current window has run. So a hit is counted
//!   for at least `window` and is forgotten after at most `2 * window`.
//! - Adds are atomic per key (one upsert): parallel adds on any nodes
//!   each see a distinct count. A read followed by an add is not atomic:
//!   callers that must not overshoot add first and take back.
//! - Windows are cut by each node's clock: nodes must keep time (NTP).
//! - Rows expire after two windows and are deleted by any node, at most
//!   once a minute.
//!
//! # When PostgreSQL does not answer
//!
//! Every add is also kept in memory. If the database fails (or takes over
//! [`OP_TIMEOUT`]), answers come from memory: this node's own counts only,
//! with one warning; the database is tried again every [`RETRY`], and when
//! it answers there is one message and answers come from it again (adds
//! made meanwhile stay local). Without `[cluster] store` ([`Counters::local`])
//! memory is all there is.
//!
//! May import: `cluster`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Db;

/// Longest wait for the database before answering from memory.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a database that failed is tried again.
pub const RETRY: Duration = Duration::from_secs(5);
/// Windows remembered in memory at most (keys times windows).
const MAX_LOCAL: usize = 200_000;
/// How often expired rows are deleted.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);

pub struct Counters {
    db: Option<Arc<Db>>,
    local: Mutex<HashMap<(String, u64, u64), u64>>,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    down: bool,
    retry_at: Option<Instant>,
    last_cleanup: Option<Instant>,
}

/// `(window_start, window seconds, elapsed in the window)` for `now`.
fn window_of(now: u64, window: Duration) -> (u64, u64, u64) {
    let w = window.as_secs().max(1);
    (now - now % w, w, now % w)
}

/// The sliding-window estimate from the current and previous counts.
fn estimate(current: u64, previous: u64, w: u64, elapsed: u64) -> u64 {
    current + (previous * (w - elapsed.min(w))).div_ceil(w)
}

fn db_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Counters {
    /// Counters in this process only (no `[cluster] store`).
    pub fn local() -> Arc<Counters> {
        Arc::new(Counters { db: None, local: Mutex::new(HashMap::new()), health: Mutex::new(Health::default()) })
    }

    /// Counters in the cluster store at `url` (connected on first use).
    pub fn shared(url: &str) -> anyhow::Result<Arc<Counters>> {
        Ok(Arc::new(Counters {
            db: Some(Arc::new(Db::new(url)?)),
            local: Mutex::new(HashMap::new()),
            health: Mutex::new(Health::default()),
        }))
    }

    /// Adds `n` to `key` in the current window of `window`; answers the
    /// count over the last `window` (see the module header).
    pub async fn add(self: &Arc<Self>, key: &str, n: i64, window: Duration) -> u64 {
        self.add_all(&[key.to_string()], n, window).await.first().copied().unwrap_or(0)
    }

    /// [`Counters::add`] for several keys at once (one round trip to the
    /// database); answers their counts in order.
    pub async fn add_all(self: &Arc<Self>, keys: &[String], n: i64, window: Duration) -> Vec<u64> {
        let now = super::now();
        let local: Vec<u64> = keys.iter().map(|k| self.add_local(k, n, window, now)).collect();
        let (start, w, elapsed) = window_of(now, window);
        let cleanup = self.cleanup_due();
        let owned = keys.to_vec();
        let shared = self
            .on_db(move |db| {
                db.with(|c| {
                    if cleanup {
                        c.execute("DELETE FROM cluster_counters WHERE expires < $1::bigint", &[&db_int(now)])?;
                    }
                    let up = c.prepare(
                        "WITH up AS (
                            INSERT INTO cluster_counters (key, window_s, window_start, count, expires)
                            VALUES ($1::text, $2::bigint, $3::bigint, GREATEST($4::bigint, 0), $5::bigint)
                            ON CONFLICT (key, window_s, window_start)
                            DO UPDATE SET count = GREATEST(cluster_counters.count + $4::bigint, 0)
                            RETURNING count)
                         SELECT (SELECT count FROM up),
                                COALESCE((SELECT count FROM cluster_counters
                                          WHERE key = $1::text AND window_s = $2::bigint
                                            AND window_start = $3::bigint - $2::bigint), 0)",
                    )?;
                    let mut out = Vec::new();
                    for key in &owned {
                        let params: [&(dyn postgres::types::ToSql + Sync); 5] =
                            [key, &db_int(w), &db_int(start), &n, &db_int(start + 2 * w)];
                        let row = c.query_one(&up, &params)?;
                        let (cur, prev): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
                        out.push(estimate(cur.max(0) as u64, prev.max(0) as u64, w, elapsed));
                    }
                    Ok(out)
                })
            })
            .await;
        shared.unwrap_or(local)
    }

    /// The count of `key` over the last `window` (see the module header).
    pub async fn read(self: &Arc<Self>, key: &str, window: Duration) -> u64 {
        let now = super::now();
        let local = self.read_local(key, window, now);
        let (start, w, elapsed) = window_of(now, window);
        let key = key.to_string();
        let shared = self
            .on_db(move |db| {
                let rows = db.with(|c| {
                    c.query(
                        "SELECT window_start, count FROM cluster_counters
                         WHERE key = $1::text AND window_s = $2::bigint AND window_start IN ($3::bigint, $3::bigint - $2::bigint)",
                        &[&key, &db_int(w), &db_int(start)],
                    )
                })?;
                let (mut cur, mut prev) = (0u64, 0u64);
                for row in rows {
                    let (ws, count): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
                    let count = count.max(0) as u64;
                    if ws == db_int(start) { cur = count } else { prev = count }
                }
                Ok(estimate(cur, prev, w, elapsed))
            })
            .await;
        shared.unwrap_or(local)
    }

    /// Whether answers come from the database now (false: from memory).
    pub fn is_shared(&self) -> bool {
        self.db.is_some() && !self.health.lock().unwrap_or_else(|p| p.into_inner()).down
    }

    fn add_local(&self, key: &str, n: i64, window: Duration, now: u64) -> u64 {
        let (start, w, elapsed) = window_of(now, window);
        let mut map = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_LOCAL {
            // Forget what has expired, then the smallest counts.
            map.retain(|(_, w, s), _| s + 2 * w > now);
            if map.len() >= MAX_LOCAL / 2 {
                map.retain(|_, c| *c > 1);
            }
        }
        let count = map.entry((key.to_string(), w, start)).or_insert(0);
        *count = count.saturating_add_signed(n);
        let cur = *count;
        let prev = start.checked_sub(w).and_then(|p| map.get(&(key.to_string(), w, p))).copied().unwrap_or(0);
        estimate(cur, prev, w, elapsed)
    }

    fn read_local(&self, key: &str, window: Duration, now: u64) -> u64 {
        let (start, w, elapsed) = window_of(now, window);
        let map = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let get = |s: u64| map.get(&(key.to_string(), w, s)).copied().unwrap_or(0);
        estimate(get(start), start.checked_sub(w).map_or(0, get), w, elapsed)
    }

    fn cleanup_due(&self) -> bool {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if h.last_cleanup.is_some_and(|t| t.elapsed() < CLEANUP_EVERY) {
            return false;
        }
        h.last_cleanup = Some(Instant::now());
        true
    }

    /// Runs `f` on the database on a blocking thread; `None` (answer from
    /// memory) without a database, while it is marked down, or on failure.
    async fn on_db<T: Send + 'static>(self: &Arc<Self>, f: impl FnOnce(&Db) -> anyhow::Result<T> + Send + 'static) -> Option<T> {
        let db = self.db.clone()?;
        {
            let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
            if h.down && h.retry_at.is_some_and(|t| Instant::now() < t) {
                return None;
            }
        }
        let outcome = tokio::time::timeout(OP_TIMEOUT, tokio::task::spawn_blocking(move || f(&db))).await;
        let error = match outcome {
            Ok(Ok(Ok(v))) => {
                let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
                if h.down {
                    h.down = false;
                    tracing::info!("cluster store reachable again: counters are shared across nodes again");
                }
                return Some(v);
            }
            Ok(Ok(Err(e))) => format!("{e:#}"),
            Ok(Err(e)) => format!("counter task: {e}"),
            Err(_) => format!("no answer within {} s", OP_TIMEOUT.as_secs()),
        };
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if !h.down {
            tracing::warn!(error = %error, "cluster store unreachable: counting on this node only until it answers");
        }
        h.down = true;
        h.retry_at = Some(Instant::now() + RETRY);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testpg::TestPg;

    #[test]
    fn the_estimate_slides() {
        assert_eq!(estimate(3, 0, 60, 10), 3);
        assert_eq!(estimate(0, 10, 60, 0), 10);
        assert_eq!(estimate(0, 10, 60, 30), 5);
        assert_eq!(estimate(0, 10, 60, 59), 1, "rounded up: a hit in the last window still counts");
        assert_eq!(estimate(2, 10, 60, 60), 2);
        assert_eq!(window_of(125, Duration::from_secs(60)), (120, 60, 5));
    }

    #[tokio::test]
    async fn local_counts_add_and_take_back() {
        let c = Counters::local();
        let w = Duration::from_secs(3600);
        assert_eq!(c.add("k", 1, w).await, 1);
        assert_eq!(c.add("k", 2, w).await, 3);
        assert_eq!(c.add("k", -5, w).await, 0, "never below zero");
        assert_eq!(c.add_all(&["k".into(), "j".into()], 1, w).await, vec![1, 1]);
        assert_eq!(c.read("k", w).await, 1);
        assert_eq!(c.read("k", Duration::from_secs(60)).await, 0, "another window length is another counter");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_counts_are_seen_by_every_node_and_fall_back_when_down() {
        let pg = TestPg::start();
        let (a, b) = (Counters::shared(&pg.url).unwrap(), Counters::shared(&pg.url).unwrap());
        let w = Duration::from_secs(3600);
        assert_eq!(a.add("auth:ip:x", 1, w).await, 1);
        assert_eq!(b.add("auth:ip:x", 1, w).await, 2, "node B counts on from node A's count");
        assert_eq!(a.read("auth:ip:x", w).await, 2);
        assert!(a.is_shared());
        // Parallel adds from both nodes each see a distinct count.
        let mut tasks = Vec::new();
        for i in 0..10 {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move { c.add("par", 1, w).await }));
        }
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap());
        }
        seen.sort();
        assert_eq!(seen, (1..=10).collect::<Vec<u64>>());

        pg.stop();
        // Memory: node A's own adds only (2 on "auth:ip:x": one before, one now).
        assert_eq!(a.add("auth:ip:x", 1, w).await, 2);
        assert!(!a.is_shared());
        pg.start_again();
        tokio::time::sleep(RETRY + Duration::from_millis(200)).await;
        assert_eq!(a.add("auth:ip:x", 1, w).await, 3, "back on the shared count");
        assert!(a.is_shared());
    }
}
