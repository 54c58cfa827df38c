//! The report store in one SQLite file (`data_dir/reports.db`), in WAL
//! mode: one connection writes, another reads, so building a report or
//! serving a page never waits for the writer's batches, nor they for it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::aggregate::json;
use super::read::{self, ts};
use super::schema::MIGRATIONS;
use super::write::Writer;
use super::*;

pub struct Sqlite {
    writer: Mutex<Writer>,
    reader: Mutex<Connection>,
    path: std::path::PathBuf,
    node: String,
    /// Finished days' sources, for the domain page.
    sources: super::sources::SourceCache,
}

/// The file name under `data_dir`.
pub const FILE: &str = "reports.db";

impl Sqlite {
    /// Opens (creating if needed) and migrates the store at `path`; rows
    /// it writes carry `node` (`[cluster] node_id`).
    pub fn open(path: &Path, node: &str) -> Result<Sqlite> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut writer = Connection::open(path)?;
        configure(&writer)?;
        // The hourly aggregates take inserts at one point per domain (their
        // key starts with it): a page cache of 16 MiB (SQLite's default is
        // 2 MiB) keeps those pages in memory instead of re-reading them.
        writer.pragma_update(None, "cache_size", -16_384)?;
        migrate(&mut writer)?;
        let reader = Connection::open(path)?;
        configure(&reader)?;
        Ok(Sqlite {
            writer: Mutex::new(Writer::new(writer, node)),
            node: node.to_string(),
            reader: Mutex::new(reader),
            path: path.to_path_buf(),
            sources: Default::default(),
        })
    }

    pub(super) fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn configure(c: &Connection) -> Result<()> {
    // WAL: readers don't block the writer. NORMAL sync: a crash may lose
    // the last batch of statistics, never corrupt the file; the messages
    // themselves are in the spool, which syncs every write.
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(())
}

fn migrate(c: &mut Connection) -> Result<()> {
    let done: usize = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if done > MIGRATIONS.len() {
        return Err(StoreError::Data(format!(
            "the database is at schema version {done}, newer than this mailgate knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = c.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "report store migrated");
    }
    Ok(())
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Data(format!("bad JSON in the store: {e}")))
}

fn summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
}

type SummaryRow = (i64, String, String, String, String, u64, u64, u64, u64);

fn to_summary(s: SummaryRow) -> Result<ReportSummary> {
    let (id, kind, org_name, report_id, policy_domain, begin, end, stored, messages) = s;
    Ok(ReportSummary { id, kind: ReportKind::parse(&kind)?, org_name, report_id, policy_domain, begin, end, stored, messages })
}

const SUMMARY_COLUMNS: &str = "id, kind, org_name, report_id, policy_domain, begin, end, stored, messages";

/// One received report into an open transaction; `None` when it is there
/// already.
fn insert_received(tx: &Transaction<'_>, r: &IngestedReport) -> Result<Option<i64>> {
    let messages: u64 = match r.kind {
        ReportKind::Dmarc => r.rows.iter().map(|row| row.count).sum(),
        ReportKind::Tlsrpt => r.tls.iter().map(|p| p.successes + p.failures).sum(),
    };
    let inserted = tx
        .prepare_cached(
            "INSERT INTO reports (kind, org_name, report_id, email, begin, end, policy_domain, policy, stored, messages)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (kind, org_name, report_id) DO NOTHING",
        )?
        .execute(params![
            r.kind.as_str(),
            r.org_name,
            r.report_id,
            r.email,
            r.begin,
            r.end,
            r.policy_domain,
            r.policy.as_ref().map(json),
            unix_now(),
            messages
        ])?;
    if inserted == 0 {
        return Ok(None);
    }
    let id = tx.last_insert_rowid();
    {
        let mut row = tx.prepare_cached(
            "INSERT INTO report_rows (report, source_ip, count, disposition, dkim_evaluated, spf_evaluated, reasons,
             header_from, envelope_from, dkim, spf) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for x in &r.rows {
            row.execute(params![
                id,
                x.source_ip,
                x.count,
                x.disposition,
                x.dkim_evaluated,
                x.spf_evaluated,
                json(&x.reasons),
                x.header_from,
                x.envelope_from,
                json(&x.dkim),
                json(&x.spf)
            ])?;
        }
        let mut tls = tx.prepare_cached(
            "INSERT INTO report_tls (report, policy_type, policy_domain, successes, failures, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for p in &r.tls {
            tls.execute(params![id, p.policy_type, p.policy_domain, p.successes, p.failures, json(p)])?;
        }
    }
    Ok(Some(id))
}

impl Store for Sqlite {
    fn write(&self, events: &[Event]) -> Result<()> {
        self.sources.before_write(events);
        self.writer().write(events)
    }

    fn dmarc_report_each(&self, domain: Option<&str>, from: u64, to: u64, each: &mut dyn FnMut(DomainRows) -> Result<()>) -> Result<()> {
        let c = Connection::open(&self.path)?;
        configure(&c)?;
        read::dmarc_report_each(&c, domain, from, to, each)
    }

    fn dmarc_hourly(&self, domain: Option<&str>, from: u64, to: u64) -> Result<Vec<DmarcHour>> {
        read::dmarc_hourly(&self.reader(), domain, from, to)
    }

    fn sources(&self, domain: &str, from: u64, to: u64, limit: usize) -> Result<Vec<Source>> {
        super::sources::sources(&self.reader(), &self.sources, domain, from, to, limit)
    }

    fn domains(&self, from: u64, to: u64) -> Result<Vec<(String, u64)>> {
        read::domains(&self.reader(), from, to)
    }

    fn tls_summary(&self, from: u64, to: u64) -> Result<Vec<TlsCount>> {
        read::tls_summary(&self.reader(), from, to)
    }

    fn dmarc_domains(&self, from: u64, to: u64) -> Result<Vec<PolicyPublished>> {
        read::dmarc_domains(&self.reader(), from, to)
    }

    fn dmarc_rows(&self, domain: &str, from: u64, to: u64) -> Result<Vec<DmarcRow>> {
        Ok(read::dmarc_report(&self.reader(), Some(domain), from, to)?.into_iter().flat_map(|d| d.rows).collect())
    }

    fn tls_domains(&self, from: u64, to: u64) -> Result<Vec<String>> {
        let c = self.reader();
        let mut st =
            c.prepare_cached("SELECT DISTINCT policy_domain FROM tls_sessions WHERE time >= ?1 AND time < ?2 ORDER BY policy_domain")?;
        let rows = st.query_map(params![ts(from), ts(to)], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn tls_rows(&self, domain: &str, from: u64, to: u64) -> Result<Vec<TlsRow>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT s.mx_host, s.policy_type, s.result, count(*), coalesce(p.text, '')
             FROM tls_sessions s LEFT JOIN tls_policies p ON p.id = s.policy
             WHERE s.policy_domain = ?1 AND s.time >= ?2 AND s.time < ?3
             GROUP BY s.mx_host, s.policy_type, s.result, s.policy ORDER BY s.policy_type, s.mx_host, s.result",
        )?;
        let rows = st.query_map(params![domain, ts(from), ts(to)], |r| {
            Ok(TlsRow { mx_host: r.get(0)?, policy_type: r.get(1)?, result: r.get(2)?, count: r.get(3)?, policy_string: r.get(4)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn first_time(&self, kind: ReportKind, domain: &str, from: u64, to: u64) -> Result<Option<u64>> {
        let c = self.reader();
        let sql = match kind {
            ReportKind::Dmarc => "SELECT min(time) FROM evaluations WHERE header_from = ?1 AND time >= ?2 AND time < ?3",
            ReportKind::Tlsrpt => "SELECT min(time) FROM tls_sessions WHERE policy_domain = ?1 AND time >= ?2 AND time < ?3",
        };
        Ok(c.query_row(sql, params![domain, ts(from), ts(to)], |r| r.get::<_, Option<u64>>(0))?)
    }

    fn reported_until(&self, kind: ReportKind, domain: &str) -> Result<Option<u64>> {
        let c = self.reader();
        Ok(c.query_row("SELECT until FROM reported WHERE kind = ?1 AND domain = ?2", params![kind.as_str(), domain], |r| r.get(0))
            .optional()?)
    }

    fn mark_reported(&self, report: &SentReport) -> Result<()> {
        let mut w = self.writer();
        let tx = w.conn.transaction()?;
        tx.execute(
            "INSERT INTO reported (kind, domain, until) VALUES (?1, ?2, ?3)
             ON CONFLICT (kind, domain) DO UPDATE SET until = max(until, excluded.until)",
            params![report.kind.as_str(), report.domain, report.end],
        )?;
        tx.execute(
            "INSERT INTO sent_reports (time, kind, domain, report_id, begin, end, destinations, messages, node)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                unix_now(),
                report.kind.as_str(),
                report.domain,
                report.report_id,
                report.begin,
                report.end,
                json(&report.destinations),
                report.messages,
                self.node
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn sent_reports(&self, limit: usize) -> Result<Vec<SentReport>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT kind, domain, report_id, begin, end, destinations, messages FROM sent_reports ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map(params![limit as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, u64>(3)?,
                r.get::<_, u64>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, u64>(6)?,
            ))
        })?;
        rows.map(|row| {
            let (kind, domain, report_id, begin, end, destinations, messages) = row?;
            Ok(SentReport {
                kind: ReportKind::parse(&kind)?,
                domain,
                report_id,
                begin,
                end,
                destinations: from_json(&destinations)?,
                messages,
            })
        })
        .collect()
    }

    fn insert_report(&self, r: &IngestedReport) -> Result<Option<i64>> {
        let mut w = self.writer();
        let tx = w.conn.transaction()?;
        let id = insert_received(&tx, r)?;
        tx.commit()?;
        Ok(id)
    }

    fn insert_reports(&self, reports: &[IngestedReport]) -> Result<Vec<Option<i64>>> {
        let mut w = self.writer();
        let tx = w.conn.transaction()?;
        let ids = reports.iter().map(|r| insert_received(&tx, r)).collect::<Result<Vec<_>>>()?;
        tx.commit()?;
        Ok(ids)
    }

    fn list_reports(&self, q: &ReportQuery) -> Result<Vec<ReportSummary>> {
        let c = self.reader();
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM reports
             WHERE (?1 IS NULL OR policy_domain = ?1) AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR id < ?3)
             ORDER BY id DESC LIMIT ?4"
        );
        let mut st = c.prepare_cached(&sql)?;
        let rows = st.query_map(params![q.domain, q.kind.map(ReportKind::as_str), q.before_id, q.limit.max(1) as i64], summary)?;
        rows.map(|r| to_summary(r?)).collect()
    }

    fn get_report(&self, id: i64) -> Result<Option<(ReportSummary, IngestedReport)>> {
        let c = self.reader();
        let sql = format!("SELECT {SUMMARY_COLUMNS}, email, policy FROM reports WHERE id = ?1");
        let head =
            c.query_row(&sql, params![id], |r| Ok((summary(r)?, r.get::<_, String>(9)?, r.get::<_, Option<String>>(10)?))).optional()?;
        let Some((s, email, policy)) = head else { return Ok(None) };
        let s = to_summary(s)?;
        let mut st = c.prepare_cached(
            "SELECT source_ip, count, disposition, dkim_evaluated, spf_evaluated, reasons, header_from, envelope_from, dkim, spf
             FROM report_rows WHERE report = ?1 ORDER BY rowid",
        )?;
        let raw = st.query_map(params![id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, String>(9)?,
            ))
        })?;
        let mut rows = Vec::new();
        for x in raw {
            let (source_ip, count, disposition, dkim_evaluated, spf_evaluated, reasons, header_from, envelope_from, dkim, spf) = x?;
            rows.push(ReportRow {
                source_ip,
                count,
                disposition,
                dkim_evaluated,
                spf_evaluated,
                reasons: from_json(&reasons)?,
                header_from,
                envelope_from,
                dkim: from_json(&dkim)?,
                spf: from_json(&spf)?,
            });
        }
        let mut st = c.prepare_cached("SELECT detail FROM report_tls WHERE report = ?1 ORDER BY rowid")?;
        let tls =
            st.query_map(params![id], |r| r.get::<_, String>(0))?.map(|d| from_json(&d?)).collect::<Result<Vec<TlsPolicyResult>>>()?;
        let report = s.report(email, policy.map(|p| from_json(&p)).transpose()?, rows, tls);
        Ok(Some((s, report)))
    }

    fn deliveries(&self, queue_id: &str) -> Result<Vec<DeliveryAttempt>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT time, queue_id, recipient_domain, recipients, mx_host, tls, reply_code, reply
             FROM deliveries WHERE queue_id = ?1 ORDER BY rowid",
        )?;
        let rows = st.query_map(params![queue_id], |r| {
            Ok(DeliveryAttempt {
                time: r.get(0)?,
                queue_id: r.get(1)?,
                recipient_domain: r.get(2)?,
                recipients: r.get(3)?,
                mx_host: r.get(4)?,
                tls: r.get(5)?,
                reply_code: r.get(6)?,
                reply: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn prune(&self, before: u64) -> Result<u64> {
        let mut w = self.writer();
        let tx = w.conn.transaction()?;
        let mut n = 0;
        for sql in [
            "DELETE FROM evaluations WHERE time < ?1",
            // An hour goes once all of it is older than the bound.
            "DELETE FROM eval_hourly WHERE hour + 3600 <= ?1",
            "DELETE FROM domain_hourly WHERE hour + 3600 <= ?1",
            "DELETE FROM tls_hourly WHERE hour + 3600 <= ?1",
            "DELETE FROM deliveries WHERE time < ?1",
            "DELETE FROM tls_sessions WHERE time < ?1",
            "DELETE FROM sent_reports WHERE time < ?1",
            "DELETE FROM reports WHERE stored < ?1",
        ] {
            n += tx.execute(sql, params![ts(before)])? as u64;
        }
        n += super::timeline::prune(&tx, before)?;
        tx.commit()?;
        self.sources.clear();
        Ok(n)
    }

    fn find_messages(&self, query: &MessageQuery) -> Result<Vec<MessageSummary>> {
        super::timeline::search(&self.reader(), query)
    }

    fn timeline(&self, id: &str) -> Result<Option<Timeline>> {
        super::timeline::get(&self.reader(), id)
    }

    fn traffic(&self, from: u64, to: u64) -> Result<Vec<TrafficHour>> {
        super::timeline::traffic(&self.reader(), from, to)
    }

    fn reported_days(&self, domain: &str, from: u64, to: u64) -> Result<Vec<ReportedDay>> {
        const DAY: u64 = 86_400;
        let c = self.reader();
        // A report's period may start up to a day before the range's
        // first day and still have its middle in it.
        let mut st = c.prepare_cached(
            "SELECT r.begin, r.end, sum(x.count),
                    sum(CASE WHEN x.dkim_evaluated = 'pass' OR x.spf_evaluated = 'pass' THEN x.count ELSE 0 END)
             FROM reports r JOIN report_rows x ON x.report = r.id
             WHERE r.policy_domain = ?1 AND r.kind = 'dmarc' AND r.end >= ?2 AND r.begin < ?3
             GROUP BY r.id",
        )?;
        let rows = st.query_map(params![domain, ts(from), ts(to)], |r| {
            Ok((r.get::<_, u64>(0)?, r.get::<_, u64>(1)?, r.get::<_, u64>(2)?, r.get::<_, u64>(3)?))
        })?;
        let mut days: BTreeMap<u64, ReportedDay> = BTreeMap::new();
        for row in rows {
            let (begin, end, messages, pass) = row?;
            let mid = begin + (end.saturating_sub(begin)) / 2;
            if mid < from || mid >= to {
                continue;
            }
            let day = mid - mid % DAY;
            let d = days.entry(day).or_insert(ReportedDay { day, reports: 0, messages: 0, dmarc_pass: 0 });
            d.reports += 1;
            d.messages += messages;
            d.dmarc_pass += pass;
        }
        Ok(days.into_values().collect())
    }

    fn reported_sources(&self, domain: &str, from: u64, to: u64, limit: usize) -> Result<Vec<ReportedSource>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT x.source_ip, sum(x.count), sum(CASE WHEN x.dkim_evaluated = 'pass' THEN x.count ELSE 0 END),
                    sum(CASE WHEN x.spf_evaluated = 'pass' THEN x.count ELSE 0 END),
                    sum(CASE WHEN x.dkim_evaluated = 'pass' OR x.spf_evaluated = 'pass' THEN x.count ELSE 0 END),
                    json_group_array(DISTINCT r.org_name) AS orgs
             FROM reports r JOIN report_rows x ON x.report = r.id
             WHERE r.policy_domain = ?1 AND r.kind = 'dmarc' AND r.end >= ?2 AND r.begin < ?3
             GROUP BY x.source_ip ORDER BY 2 DESC, x.source_ip LIMIT ?4",
        )?;
        let rows = st.query_map(params![domain, ts(from), ts(to), limit.max(1) as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u64>(1)?,
                r.get::<_, u64>(2)?,
                r.get::<_, u64>(3)?,
                r.get::<_, u64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        rows.map(|row| {
            let (source_ip, messages, dkim_pass, spf_pass, dmarc_pass, orgs) = row?;
            let mut reporters: Vec<String> = from_json(&orgs)?;
            reporters.sort();
            Ok(ReportedSource { source_ip, messages, dkim_pass, spf_pass, dmarc_pass, reporters })
        })
        .collect()
    }

    fn lookalikes(&self, resembles: &str, from: u64, to: u64, limit: usize) -> Result<Vec<super::timeline::LookalikeHit>> {
        super::timeline::lookalikes(&self.reader(), resembles, from, to, limit)
    }

    fn nodes(&self, from: u64, to: u64) -> Result<Vec<(String, u64)>> {
        let c = self.reader();
        let mut st = c.prepare_cached(NODES_SQL)?;
        let rows = st.query_map(params![ts(from), ts(to)], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn node_figures(&self, from: u64, to: u64) -> Result<Vec<super::NodeFigures>> {
        let c = self.reader();
        let mut st = c.prepare_cached(super::NODE_FIGURES_SQL)?;
        let rows = st.query_map(params![ts(from), ts(to)], |r| {
            let n = |i: usize| r.get::<_, Option<i64>>(i).map(|v| u64::try_from(v.unwrap_or(0)).unwrap_or(0));
            Ok(super::NodeFigures {
                node: r.get(0)?,
                received: n(1)?,
                accepted: n(2)?,
                quarantined: n(3)?,
                refused: n(4)?,
                evaluated: n(5)?,
                delivered: n(6)?,
                deferred: n(7)?,
                bounced: n(8)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn try_report_lock(&self) -> Result<Option<ReportLock>> {
        // One node: nobody else sends this store's reports.
        Ok(Some(ReportLock::local()))
    }
}
