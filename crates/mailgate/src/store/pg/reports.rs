//! PostgreSQL's reports: the marks of what was reported (shared by every
//! node, so a second node finds nothing left to report), the log of sent
//! reports, and the reports other receivers sent us, the counterparts of
//! the methods in `store/sqlite.rs`.
//!
//! May import: the rest of `store::pg`, `postgres`.

use std::collections::BTreeMap;

use postgres::{Client, Row, Transaction};

use super::super::*;
use super::read::from_json;
use super::{big, col, json, num};

pub(super) fn reported_until(c: &mut Client, kind: ReportKind, domain: &str) -> Result<Option<u64>> {
    let r = c.query_opt("SELECT until FROM reported WHERE kind = $1 AND domain = $2", &[&kind.as_str(), &domain])?;
    r.map(|r| num(&r, 0)).transpose()
}

pub(super) fn mark_reported(c: &mut Client, report: &SentReport, node: &str) -> Result<()> {
    let mut tx = c.transaction()?;
    tx.execute(
        "INSERT INTO reported (kind, domain, until) VALUES ($1, $2, $3)
         ON CONFLICT (kind, domain) DO UPDATE SET until = greatest(reported.until, excluded.until)",
        &[&report.kind.as_str(), &report.domain, &big(report.end)],
    )?;
    tx.execute(
        "INSERT INTO sent_reports (time, kind, domain, report_id, begin, \"end\", destinations, messages, node)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &big(unix_now()),
            &report.kind.as_str(),
            &report.domain,
            &report.report_id,
            &big(report.begin),
            &big(report.end),
            &json(&report.destinations),
            &big(report.messages),
            &node,
        ],
    )?;
    tx.commit()?;
    Ok(())
}

pub(super) fn sent_reports(c: &mut Client, limit: usize) -> Result<Vec<SentReport>> {
    let rows = c.query(
        "SELECT kind, domain, report_id, begin, \"end\", destinations, messages FROM sent_reports ORDER BY id DESC LIMIT $1",
        &[&(limit as i64)],
    )?;
    rows.iter()
        .map(|r| {
            Ok(SentReport {
                kind: ReportKind::parse(col(r, 0)?)?,
                domain: col(r, 1)?,
                report_id: col(r, 2)?,
                begin: num(r, 3)?,
                end: num(r, 4)?,
                destinations: from_json(col(r, 5)?)?,
                messages: num(r, 6)?,
            })
        })
        .collect()
}

fn insert_received(tx: &mut Transaction<'_>, r: &IngestedReport) -> Result<Option<i64>> {
    let messages: u64 = match r.kind {
        ReportKind::Dmarc => r.rows.iter().map(|row| row.count).sum(),
        ReportKind::Tlsrpt => r.tls.iter().map(|p| p.successes + p.failures).sum(),
    };
    let inserted = tx.query_opt(
        "INSERT INTO reports (kind, org_name, report_id, email, begin, \"end\", policy_domain, policy, stored, messages)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (kind, org_name, report_id) DO NOTHING RETURNING id",
        &[
            &r.kind.as_str(),
            &r.org_name,
            &r.report_id,
            &r.email,
            &big(r.begin),
            &big(r.end),
            &r.policy_domain,
            &r.policy.as_ref().map(json),
            &big(unix_now()),
            &big(messages),
        ],
    )?;
    let Some(row) = inserted else { return Ok(None) };
    let id: i64 = col(&row, 0)?;
    let st = tx.prepare(
        "INSERT INTO report_rows (report, source_ip, count, disposition, dkim_evaluated, spf_evaluated, reasons,
         header_from, envelope_from, dkim, spf) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )?;
    for x in &r.rows {
        tx.execute(
            &st,
            &[
                &id,
                &x.source_ip,
                &big(x.count),
                &x.disposition,
                &x.dkim_evaluated,
                &x.spf_evaluated,
                &json(&x.reasons),
                &x.header_from,
                &x.envelope_from,
                &json(&x.dkim),
                &json(&x.spf),
            ],
        )?;
    }
    let st = tx.prepare(
        "INSERT INTO report_tls (report, policy_type, policy_domain, successes, failures, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )?;
    for p in &r.tls {
        tx.execute(&st, &[&id, &p.policy_type, &p.policy_domain, &big(p.successes), &big(p.failures), &json(p)])?;
    }
    Ok(Some(id))
}

pub(super) fn insert_reports(c: &mut Client, reports: &[IngestedReport]) -> Result<Vec<Option<i64>>> {
    let mut tx = c.transaction()?;
    let ids = reports.iter().map(|r| insert_received(&mut tx, r)).collect::<Result<Vec<_>>>()?;
    tx.commit()?;
    Ok(ids)
}

const SUMMARY_COLUMNS: &str = "id, kind, org_name, report_id, policy_domain, begin, \"end\", stored, messages";

fn summary(r: &Row) -> Result<ReportSummary> {
    Ok(ReportSummary {
        id: col(r, 0)?,
        kind: ReportKind::parse(col(r, 1)?)?,
        org_name: col(r, 2)?,
        report_id: col(r, 3)?,
        policy_domain: col(r, 4)?,
        begin: num(r, 5)?,
        end: num(r, 6)?,
        stored: num(r, 7)?,
        messages: num(r, 8)?,
    })
}

pub(super) fn list_reports(c: &mut Client, q: &ReportQuery) -> Result<Vec<ReportSummary>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM reports
         WHERE ($1::text IS NULL OR policy_domain = $1) AND ($2::text IS NULL OR kind = $2) AND ($3::bigint IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    );
    let rows = c.query(&sql, &[&q.domain, &q.kind.map(ReportKind::as_str), &q.before_id, &(q.limit.max(1) as i64)])?;
    rows.iter().map(summary).collect()
}

pub(super) fn get_report(c: &mut Client, id: i64) -> Result<Option<(ReportSummary, IngestedReport)>> {
    let sql = format!("SELECT {SUMMARY_COLUMNS}, email, policy FROM reports WHERE id = $1");
    let Some(head) = c.query_opt(&sql, &[&id])? else { return Ok(None) };
    let s = summary(&head)?;
    let email: String = col(&head, 9)?;
    let policy: Option<String> = col(&head, 10)?;
    let rows = c
        .query(
            "SELECT source_ip, count, disposition, dkim_evaluated, spf_evaluated, reasons, header_from, envelope_from, dkim, spf
             FROM report_rows WHERE report = $1 ORDER BY id",
            &[&id],
        )?
        .iter()
        .map(|r| {
            Ok(ReportRow {
                source_ip: col(r, 0)?,
                count: num(r, 1)?,
                disposition: col(r, 2)?,
                dkim_evaluated: col(r, 3)?,
                spf_evaluated: col(r, 4)?,
                reasons: from_json(col(r, 5)?)?,
                header_from: col(r, 6)?,
                envelope_from: col(r, 7)?,
                dkim: from_json(col(r, 8)?)?,
                spf: from_json(col(r, 9)?)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let tls = c
        .query("SELECT detail FROM report_tls WHERE report = $1 ORDER BY id", &[&id])?
        .iter()
        .map(|r| from_json(col(r, 0)?))
        .collect::<Result<Vec<TlsPolicyResult>>>()?;
    let report = s.report(email, policy.map(|p| from_json(&p)).transpose()?, rows, tls);
    Ok(Some((s, report)))
}

pub(super) fn reported_days(c: &mut Client, domain: &str, from: u64, to: u64) -> Result<Vec<ReportedDay>> {
    const DAY: u64 = 86_400;
    // As in SQLite: a report counts on the day of the middle of its period.
    let rows = c.query(
        "SELECT r.begin, r.\"end\", sum(x.count)::bigint,
                sum(CASE WHEN x.dkim_evaluated = 'pass' OR x.spf_evaluated = 'pass' THEN x.count ELSE 0 END)::bigint
         FROM reports r JOIN report_rows x ON x.report = r.id
         WHERE r.policy_domain = $1 AND r.kind = 'dmarc' AND r.\"end\" >= $2 AND r.begin < $3
         GROUP BY r.id",
        &[&domain, &big(from), &big(to)],
    )?;
    let mut days: BTreeMap<u64, ReportedDay> = BTreeMap::new();
    for r in &rows {
        let (begin, end, messages, pass) = (num(r, 0)?, num(r, 1)?, num(r, 2)?, num(r, 3)?);
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

pub(super) fn reported_sources(c: &mut Client, domain: &str, from: u64, to: u64, limit: usize) -> Result<Vec<ReportedSource>> {
    let rows = c.query(
        "SELECT x.source_ip, sum(x.count)::bigint, sum(CASE WHEN x.dkim_evaluated = 'pass' THEN x.count ELSE 0 END)::bigint,
                sum(CASE WHEN x.spf_evaluated = 'pass' THEN x.count ELSE 0 END)::bigint,
                sum(CASE WHEN x.dkim_evaluated = 'pass' OR x.spf_evaluated = 'pass' THEN x.count ELSE 0 END)::bigint,
                array_agg(DISTINCT r.org_name)
         FROM reports r JOIN report_rows x ON x.report = r.id
         WHERE r.policy_domain = $1 AND r.kind = 'dmarc' AND r.\"end\" >= $2 AND r.begin < $3
         GROUP BY x.source_ip ORDER BY 2 DESC, x.source_ip LIMIT $4",
        &[&domain, &big(from), &big(to), &(limit.max(1) as i64)],
    )?;
    rows.iter()
        .map(|r| {
            let mut reporters: Vec<String> = col(r, 5)?;
            reporters.sort();
            Ok(ReportedSource {
                source_ip: col(r, 0)?,
                messages: num(r, 1)?,
                dkim_pass: num(r, 2)?,
                spf_pass: num(r, 3)?,
                dmarc_pass: num(r, 4)?,
                reporters,
            })
        })
        .collect()
}
