//! The report store in PostgreSQL (`[cluster] store`), shared by several
//! nodes: the same [`Store`] as [`super::sqlite::Sqlite`], table for table
//! (`schema.rs` holds the PG migrations), with every row carrying the node
//! that wrote it.
//!
//! A small pool ([`pool`]): one writer connection (the recorder's batches
//! and the report marks) and a few readers, each reconnected when it
//! breaks. The store can be created while PostgreSQL is away
//! ([`Postgres::lazy`]): every call then fails until a connection works,
//! and the first connection runs the migrations. Callers are blocking
//! threads: the `postgres` crate's client must not run in async code.
//!
//! May import: the rest of `store`, `postgres`.

mod pool;
mod read;
mod reports;
mod schema;
mod suppression;
mod timeline;
mod write;

#[cfg(test)]
pub(crate) mod testdb;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Mutex;

use postgres::Row;
use postgres::types::FromSql;

use super::advice::{AdviceStore, Evidence};
use super::aggregate::Interning;
use super::sources::SourceCache;
use super::*;
use pool::Pool;

pub struct Postgres {
    pool: Pool,
    node: String,
    /// The writer's interning maps (text → id of `dkim_sets`, `policies`,
    /// `tls_policies`), as the SQLite writer keeps them.
    interned: Mutex<Interning>,
    /// Finished days' sources, for the domain page.
    sources: SourceCache,
}

impl Postgres {
    /// Connects to `url` and migrates the schema; rows carry `node`.
    pub fn connect(url: &str, node: &str) -> Result<Postgres> {
        let pg = Postgres::lazy(url, node)?;
        pg.pool.ready()?;
        Ok(pg)
    }

    /// The store without connecting yet: calls fail until PostgreSQL
    /// answers (see [`Postgres::ready`]). Only a malformed URL is an error.
    pub fn lazy(url: &str, node: &str) -> Result<Postgres> {
        Ok(Postgres {
            pool: Pool::new(url)?,
            node: node.to_string(),
            interned: Mutex::new(Interning::default()),
            sources: SourceCache::default(),
        })
    }

    /// Connects (and migrates) if not yet done; `Ok` once the database
    /// answers.
    pub fn ready(&self) -> Result<()> {
        self.pool.ready()
    }
}

/// A column, with a type mismatch as an error rather than a panic.
pub(super) fn col<'a, T: FromSql<'a>>(r: &'a Row, i: usize) -> Result<T> {
    Ok(r.try_get(i)?)
}

/// A count or time column (BIGINT) as unsigned.
pub(super) fn num(r: &Row, i: usize) -> Result<u64> {
    let v: i64 = r.try_get(i)?;
    Ok(v.max(0) as u64)
}

/// A Rust count or time as BIGINT (`u64::MAX` means no bound).
pub(super) fn big(t: u64) -> i64 {
    t.min(i64::MAX as u64) as i64
}

pub(super) use super::aggregate::json;

/// The DKIM result sets by id (small: one row per distinct set).
pub(super) fn dkim_sets(c: &mut postgres::Client) -> Result<HashMap<i64, Vec<DkimAuth>>> {
    let mut out = HashMap::new();
    for r in c.query("SELECT id, json FROM dkim_sets", &[])? {
        let j: &str = col(&r, 1)?;
        out.insert(col(&r, 0)?, read::from_json(j)?);
    }
    Ok(out)
}

impl AdviceStore for Postgres {
    fn advice_evidence(&self, domain: &str, from: u64, to: u64) -> Result<Evidence> {
        timeline::evidence(&mut *self.pool.reader()?, domain, from, to)
    }
}

impl Store for Postgres {
    fn write(&self, events: &[Event]) -> Result<()> {
        self.sources.before_write(events);
        let mut w = self.pool.writer()?;
        let mut interned = self.interned.lock().unwrap_or_else(|p| p.into_inner());
        let r = write::write(w.client(), &mut interned, &self.node, events);
        if r.is_err() {
            // Ids handed out inside a transaction that rolled back name
            // nothing: forget them all.
            *interned = Interning::default();
        }
        w.check(r)
    }

    fn dmarc_report_each(&self, domain: Option<&str>, from: u64, to: u64, each: &mut dyn FnMut(DomainRows) -> Result<()>) -> Result<()> {
        let mut c = self.pool.reader()?;
        let mut emitted = false;
        let r = read::dmarc_report_each(c.client(), domain, from, to, &mut |d| {
            emitted = true;
            each(d)
        });
        // A connection the server cut before anything was read: once more
        // on a new one (see `Pool::read`).
        if let Err(e) = &r
            && !emitted
            && pool::lost_connection(e)
        {
            drop(c);
            let mut c = self.pool.fresh_reader()?;
            let r = read::dmarc_report_each(c.client(), domain, from, to, each);
            return c.check(r);
        }
        c.check(r)
    }

    fn dmarc_hourly(&self, domain: Option<&str>, from: u64, to: u64) -> Result<Vec<DmarcHour>> {
        self.pool.read(|c| read::dmarc_hourly(c, domain, from, to))
    }

    fn sources(&self, domain: &str, from: u64, to: u64, limit: usize) -> Result<Vec<Source>> {
        self.pool.read(|c| {
            super::sources::sources_with(&mut |m, d, a, b| read::add_hours(c, m, d, a, b), &self.sources, domain, from, to, limit)
        })
    }

    fn domains(&self, from: u64, to: u64) -> Result<Vec<(String, u64)>> {
        self.pool.read(|c| read::domains(c, from, to))
    }

    fn tls_summary(&self, from: u64, to: u64) -> Result<Vec<TlsCount>> {
        self.pool.read(|c| read::tls_summary(c, from, to))
    }

    fn dmarc_domains(&self, from: u64, to: u64) -> Result<Vec<PolicyPublished>> {
        self.pool.read(|c| read::dmarc_domains(c, from, to))
    }

    fn dmarc_rows(&self, domain: &str, from: u64, to: u64) -> Result<Vec<DmarcRow>> {
        let mut out = Vec::new();
        self.dmarc_report_each(Some(domain), from, to, &mut |d| {
            out.extend(d.rows);
            Ok(())
        })?;
        Ok(out)
    }

    fn tls_domains(&self, from: u64, to: u64) -> Result<Vec<String>> {
        self.pool.read(|c| read::tls_domains(c, from, to))
    }

    fn tls_rows(&self, domain: &str, from: u64, to: u64) -> Result<Vec<TlsRow>> {
        self.pool.read(|c| read::tls_rows(c, domain, from, to))
    }

    fn first_time(&self, kind: ReportKind, domain: &str, from: u64, to: u64) -> Result<Option<u64>> {
        self.pool.read(|c| read::first_time(c, kind, domain, from, to))
    }

    fn reported_until(&self, kind: ReportKind, domain: &str) -> Result<Option<u64>> {
        self.pool.read(|c| reports::reported_until(c, kind, domain))
    }

    fn mark_reported(&self, report: &SentReport) -> Result<()> {
        let mut w = self.pool.writer()?;
        let r = reports::mark_reported(w.client(), report, &self.node);
        w.check(r)
    }

    fn sent_reports(&self, limit: usize) -> Result<Vec<SentReport>> {
        self.pool.read(|c| reports::sent_reports(c, limit))
    }

    fn insert_report(&self, r: &IngestedReport) -> Result<Option<i64>> {
        Ok(self.insert_reports(std::slice::from_ref(r))?.into_iter().next().flatten())
    }

    fn insert_reports(&self, list: &[IngestedReport]) -> Result<Vec<Option<i64>>> {
        let mut w = self.pool.writer()?;
        let r = reports::insert_reports(w.client(), list);
        w.check(r)
    }

    fn list_reports(&self, q: &ReportQuery) -> Result<Vec<ReportSummary>> {
        self.pool.read(|c| reports::list_reports(c, q))
    }

    fn get_report(&self, id: i64) -> Result<Option<(ReportSummary, IngestedReport)>> {
        self.pool.read(|c| reports::get_report(c, id))
    }

    fn deliveries(&self, queue_id: &str) -> Result<Vec<DeliveryAttempt>> {
        self.pool.read(|c| timeline::deliveries(c, queue_id))
    }

    fn prune(&self, before: u64) -> Result<u64> {
        let mut w = self.pool.writer()?;
        let r = timeline::prune(w.client(), before);
        self.sources.clear();
        w.check(r)
    }

    fn find_messages(&self, query: &MessageQuery) -> Result<Vec<MessageSummary>> {
        self.pool.read(|c| timeline::search(c, query))
    }

    fn timeline(&self, id: &str) -> Result<Option<Timeline>> {
        self.pool.read(|c| timeline::get(c, id))
    }

    fn traffic(&self, from: u64, to: u64) -> Result<Vec<TrafficHour>> {
        self.pool.read(|c| timeline::traffic(c, from, to))
    }

    fn reported_days(&self, domain: &str, from: u64, to: u64) -> Result<Vec<ReportedDay>> {
        self.pool.read(|c| reports::reported_days(c, domain, from, to))
    }

    fn reported_sources(&self, domain: &str, from: u64, to: u64, limit: usize) -> Result<Vec<ReportedSource>> {
        self.pool.read(|c| reports::reported_sources(c, domain, from, to, limit))
    }

    fn lookalikes(&self, resembles: &str, from: u64, to: u64, limit: usize) -> Result<Vec<super::timeline::LookalikeHit>> {
        self.pool.read(|c| timeline::lookalikes(c, resembles, from, to, limit))
    }

    fn nodes(&self, from: u64, to: u64) -> Result<Vec<(String, u64)>> {
        self.pool.read(|c| {
            let sql = pool::placeholders(NODES_SQL);
            c.query(&sql, &[&big(from), &big(to)])?.iter().map(|r| Ok((col(r, 0)?, num(r, 1)?))).collect()
        })
    }

    fn node_figures(&self, from: u64, to: u64) -> Result<Vec<NodeFigures>> {
        self.pool.read(|c| {
            let sql = pool::placeholders(NODE_FIGURES_SQL);
            c.query(&sql, &[&big(from), &big(to)])?
                .iter()
                .map(|r| {
                    Ok(NodeFigures {
                        node: col(r, 0)?,
                        received: num(r, 1)?,
                        accepted: num(r, 2)?,
                        quarantined: num(r, 3)?,
                        refused: num(r, 4)?,
                        evaluated: num(r, 5)?,
                        delivered: num(r, 6)?,
                        deferred: num(r, 7)?,
                        bounced: num(r, 8)?,
                    })
                })
                .collect()
        })
    }

    fn try_report_lock(&self) -> Result<Option<ReportLock>> {
        // A session-level advisory lock on a connection of its own, held
        // (with the connection) as long as the guard lives: if this node
        // dies mid-way, the server ends the session and frees the lock.
        let mut c = self.pool.dedicated()?;
        let row = c.query_one("SELECT pg_try_advisory_lock($1)", &[&schema::REPORT_LOCK])?;
        if col::<bool>(&row, 0)? { Ok(Some(ReportLock::holding(Box::new(c)))) } else { Ok(None) }
    }
}
