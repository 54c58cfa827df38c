//! Cluster services in PostgreSQL (`[cluster] store`): the shared DKIM key
//! store ([`keys`]), shared counters ([`counters`], AUTH throttling) and
//! shared submission rate limits ([`rates`]). This module owns
//! its connections and its schema: tables prefixed `cluster_`, migrated
//! under an advisory lock and recorded in `cluster_schema_version` (the
//! report store in `store/` keeps its own).
//!
//! The `postgres` crate is the blocking wrapper of tokio-postgres: a
//! [`Db`] must only be used from a blocking thread (`spawn_blocking`) or
//! from the CLI, never on the async runtime.
//!
//! May import: `sign::store`, `sign::backend`, `sign::key` (the key types),
//! `ratelimit` (the counter trait [`rates`] implements), `mailgate-core`.

pub mod counters;
pub mod keys;
pub mod rates;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::{Client, NoTls};

pub use counters::Counters;
pub use rates::SharedRates;

/// How long connecting may take: a store that is down must not hold up
/// an AUTH attempt or a key reload for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Advisory lock keys (first of the two-int form): ours, apart from those
/// of other users of the database.
pub(crate) const LOCK_SPACE: i32 = 0x6d67_6b00; // "mgk\0"
const MIGRATE_LOCK: i32 = 1;
pub(crate) const ROTATION_LOCK: i32 = 2;

/// The schema, one entry per version; never edit a released entry, add one.
const MIGRATIONS: &[&str] = &[
    // 1: DKIM keys, the per-domain change counter, counters.
    "CREATE TABLE cluster_dkim_keys (
        domain text NOT NULL,
        selector text NOT NULL,
        algorithm text NOT NULL,
        state text NOT NULL,
        created bigint NOT NULL,
        activated bigint,
        retiring_since bigint,
        pem text NOT NULL,
        PRIMARY KEY (domain, selector)
    );
    CREATE TABLE cluster_key_version (
        domain text PRIMARY KEY,
        version bigint NOT NULL
    );
    CREATE TABLE cluster_counters (
        key text NOT NULL,
        window_s bigint NOT NULL,
        window_start bigint NOT NULL,
        count bigint NOT NULL,
        expires bigint NOT NULL,
        PRIMARY KEY (key, window_s, window_start)
    );
    CREATE INDEX cluster_counters_expires ON cluster_counters (expires);",
];

/// One connection to the cluster store, opened on first use and again
/// after it breaks; the schema is brought up to date on the first connect.
pub struct Db {
    config: postgres::Config,
    client: Mutex<Option<Client>>,
    migrated: AtomicBool,
}

impl Db {
    /// Parses the URL; connects later, on first use.
    pub fn new(url: &str) -> anyhow::Result<Db> {
        let mut config: postgres::Config =
            url.parse().map_err(|e| anyhow::anyhow!("[cluster] store: expected a PostgreSQL URL or key=value string: {e}"))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.application_name("mailgate-cluster");
        Ok(Db { config, client: Mutex::new(None), migrated: AtomicBool::new(false) })
    }

    /// Runs `f` on the connection. Blocking. A broken connection is
    /// dropped, so the next call connects again.
    pub fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> anyhow::Result<T> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let mut client = self.config.connect(NoTls).map_err(|e| anyhow::anyhow!("cannot connect to the cluster store: {e}"))?;
            if !self.migrated.load(Ordering::Relaxed) {
                migrate(&mut client).map_err(|e| anyhow::anyhow!("cannot migrate the cluster store: {e}"))?;
                self.migrated.store(true, Ordering::Relaxed);
            }
            *guard = Some(client);
        }
        let Some(client) = guard.as_mut() else { anyhow::bail!("no connection to the cluster store") };
        match f(client) {
            Ok(v) => Ok(v),
            Err(e) => {
                // A database error (constraint, syntax) leaves the session
                // usable; anything else (I/O, closed) does not.
                if e.as_db_error().is_none() || client.is_closed() {
                    *guard = None;
                }
                Err(anyhow::anyhow!("cluster store: {e}"))
            }
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let client = self.client.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(client) = client
            && tokio::runtime::Handle::try_current().is_ok()
        {
            // Closing a `Client` blocks on its own runtime, which panics on
            // a thread of ours (a server shutting down drops it there).
            let _ = std::thread::Builder::new().name("cluster-db-close".into()).spawn(move || drop(client));
        }
    }
}

/// Brings the schema up to date, one node at a time.
fn migrate(client: &mut Client) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_SPACE, &MIGRATE_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS cluster_schema_version (version integer NOT NULL)")?;
    let have: Option<i32> = tx.query_one("SELECT max(version) FROM cluster_schema_version", &[])?.get(0);
    let have = usize::try_from(have.unwrap_or(0)).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have) {
        tx.batch_execute(sql)?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute("INSERT INTO cluster_schema_version (version) VALUES ($1)", &[&version])?;
        tracing::info!(version, "cluster store schema migrated");
    }
    tx.commit()
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod testpg;
