//! A small connection pool: one writer connection (batches must not
//! interleave their interning) and up to [`READERS`] idle readers; a
//! reader is opened when none is idle. A connection found broken after an
//! error is dropped, and the next call opens a new one, so the store
//! comes back by itself when PostgreSQL does. The first connection that
//! works runs the migrations.
//!
//! May import: the rest of `store::pg`, `postgres`.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use postgres::{Client, Config, NoTls};

use super::super::{Result, StoreError};

/// Idle readers kept.
const READERS: usize = 4;

pub(super) struct Pool {
    config: Config,
    writer: Mutex<Option<Client>>,
    readers: Mutex<Vec<Client>>,
    migrated: AtomicBool,
    migrating: Mutex<()>,
}

/// SQLite's `?N` placeholders as PostgreSQL's `$N`, so one statement's
/// text serves both stores.
pub(crate) fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl Pool {
    pub fn new(url: &str) -> Result<Pool> {
        let mut config: Config =
            url.parse().map_err(|e| StoreError::Data(format!("[cluster] store: expected a PostgreSQL connection string: {e}")))?;
        config.connect_timeout(Duration::from_secs(5));
        config.keepalives_idle(Duration::from_secs(30));
        config.application_name("mailgate");
        Ok(Pool {
            config,
            writer: Mutex::new(None),
            readers: Mutex::new(Vec::new()),
            migrated: AtomicBool::new(false),
            migrating: Mutex::new(()),
        })
    }

    /// A new connection, migrating the schema first if this pool has not.
    fn open(&self) -> Result<Client> {
        let mut c = self.config.connect(NoTls)?;
        if !self.migrated.load(Ordering::Acquire) {
            let _one = self.migrating.lock().unwrap_or_else(|p| p.into_inner());
            if !self.migrated.load(Ordering::Acquire) {
                super::schema::migrate(&mut c)?;
                self.migrated.store(true, Ordering::Release);
            }
        }
        Ok(c)
    }

    /// Connects (and migrates) if needed.
    pub fn ready(&self) -> Result<()> {
        let mut r = self.reader()?;
        let ok = r.client().simple_query("SELECT 1").map(|_| ()).map_err(StoreError::from);
        r.check(ok)
    }

    pub fn writer(&self) -> Result<WriterConn<'_>> {
        let mut g = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().is_none_or(Client::is_closed) {
            g.take().into_iter().for_each(discard);
            *g = Some(self.open()?);
        }
        Ok(WriterConn(g))
    }

    pub fn reader(&self) -> Result<ReaderConn<'_>> {
        let idle = {
            let mut r = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            let mut found = None;
            while let Some(c) = r.pop() {
                if !c.is_closed() {
                    found = Some(c);
                    break;
                }
                discard(c);
            }
            found
        };
        let c = match idle {
            Some(c) => c,
            None => self.open()?,
        };
        Ok(ReaderConn { pool: self, client: Some(c) })
    }

    /// A new reader, after one was found cut: the other idle connections
    /// are as old (a restart of the server cut them all), so they go too.
    pub fn fresh_reader(&self) -> Result<ReaderConn<'_>> {
        let idle = std::mem::take(&mut *self.readers.lock().unwrap_or_else(|p| p.into_inner()));
        idle.into_iter().for_each(discard);
        Ok(ReaderConn { pool: self, client: Some(self.open()?) })
    }

    /// A connection outside the pool (the report lock lives on one).
    pub fn dedicated(&self) -> Result<Client> {
        self.open()
    }

    /// Runs `f` on a reader; once more on a new connection when the idle
    /// one it took turns out to have been closed by the server (a restart
    /// of PostgreSQL closes every idle connection, which the pool only
    /// learns by using it).
    pub fn read<T>(&self, f: impl Fn(&mut Client) -> Result<T>) -> Result<T> {
        let mut c = self.reader()?;
        let r = f(c.client());
        if let Err(e) = &r
            && (c.client().is_closed() || lost_connection(e))
        {
            c.client.take().into_iter().for_each(discard);
            let mut c = self.fresh_reader()?;
            let r = f(c.client());
            return c.check(r);
        }
        c.check(r)
    }
}

/// The error says the connection is gone (the server shut it, or it
/// broke), not that the query was wrong: the client may not know yet.
pub(super) fn lost_connection(e: &StoreError) -> bool {
    match e {
        StoreError::Postgres(e) => {
            e.is_closed()
                || e.code().is_some_and(|c| {
                    let code = c.code();
                    // 57P01-57P03: administrator or crash shutdown; 08: connection exception.
                    code.starts_with("57P") || code.starts_with("08")
                })
        }
        _ => false,
    }
}

/// Closes `c` where that may block: `postgres`'s client runs its own
/// runtime to say goodbye, which must not happen on an async thread.
pub(super) fn discard(c: Client) {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::spawn(move || drop(c));
    } else {
        drop(c);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let w = self.writer.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        let idle = std::mem::take(self.readers.get_mut().unwrap_or_else(|p| p.into_inner()));
        w.into_iter().chain(idle).for_each(discard);
    }
}

pub(super) struct WriterConn<'a>(MutexGuard<'a, Option<Client>>);

impl WriterConn<'_> {
    pub fn client(&mut self) -> &mut Client {
        // ok: `Pool::writer` put a client in before handing this out, and
        // only `check` takes it out, consuming `self`.
        self.0.as_mut().expect("the writer connection is open")
    }

    /// Passes `r` on, dropping the connection if it broke.
    pub fn check<T>(mut self, r: Result<T>) -> Result<T> {
        if r.is_err() && self.0.as_ref().is_some_and(Client::is_closed) {
            self.0.take().into_iter().for_each(discard);
        }
        r
    }
}

pub(super) struct ReaderConn<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl ReaderConn<'_> {
    pub fn client(&mut self) -> &mut Client {
        // ok: set when made, taken only by `Drop`.
        self.client.as_mut().expect("the reader connection is open")
    }

    pub fn check<T>(mut self, r: Result<T>) -> Result<T> {
        if r.is_err() && self.client.as_ref().is_some_and(Client::is_closed) {
            self.client.take().into_iter().for_each(discard);
        }
        r
    }
}

impl Deref for ReaderConn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // ok: as in `client`.
        self.client.as_ref().expect("the reader connection is open")
    }
}

impl DerefMut for ReaderConn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client()
    }
}

impl Drop for ReaderConn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let mut idle = self.pool.readers.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < READERS && !c.is_closed() {
                idle.push(c);
            } else {
                drop(idle);
                discard(c);
            }
        }
    }
}
