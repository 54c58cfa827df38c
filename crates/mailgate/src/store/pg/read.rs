//! PostgreSQL's reads of the hourly aggregates, the counterpart of
//! `store/read.rs`: the report scan feeds the shared gathering
//! (`read::report_each`), the rest are the same statements with
//! PostgreSQL's types (`sum` of BIGINT is NUMERIC there, so cast back).
//!
//! May import: the rest of `store::pg`, `postgres`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Row};

use super::super::read::{Interned, Scan, ScanRow, floor_hour, report_each};
use super::super::*;
use super::{big, col, num};

pub(super) use super::super::read::from_json;

/// The SQLite scans' columns, the same order.
const HOURLY_SCAN: &str = "SELECT header_from, source_ip, disposition, dkim_aligned, spf_aligned, override_reason, envelope_from,
        dkim, spf_domain, spf_scope, spf_result, policy, count, first, last
    FROM eval_hourly
    WHERE header_from IN (SELECT header_from FROM domain_hourly
                          WHERE hour >= $1 AND hour < $2 AND ($3::text IS NULL OR header_from = $3))
      AND hour >= $1 AND hour < $2
    ORDER BY header_from";
const RAW_SCAN: &str = "SELECT header_from, source_ip, disposition, dkim_aligned, spf_aligned, override_reason, envelope_from,
        dkim, spf_domain, spf_scope, spf_result, policy, 1::bigint, time, time
    FROM evaluations WHERE time >= $1 AND time < $2 AND ($3::text IS NULL OR header_from = $3)";

struct PgScan<'c>(&'c mut Client);

fn scan_row(r: &Row) -> Result<(&str, ScanRow<'_>)> {
    Ok((
        col(r, 0)?,
        ScanRow {
            source_ip: col(r, 1)?,
            disposition: col(r, 2)?,
            dkim_aligned: col(r, 3)?,
            spf_aligned: col(r, 4)?,
            reason: col(r, 5)?,
            envelope_from: col(r, 6)?,
            dkim: col(r, 7)?,
            spf_domain: col(r, 8)?,
            spf_scope: col(r, 9)?,
            spf_result: col(r, 10)?,
            policy: col(r, 11)?,
            count: num(r, 12)?,
            first: num(r, 13)?,
            last: num(r, 14)?,
        },
    ))
}

impl PgScan<'_> {
    /// Streams `sql`'s rows (a report's period may hold many) to `f`.
    fn stream(
        &mut self,
        sql: &str,
        lo: u64,
        hi: u64,
        domain: Option<&str>,
        f: &mut dyn FnMut(&str, &ScanRow<'_>) -> Result<()>,
    ) -> Result<()> {
        let (lo, hi) = (big(lo), big(hi));
        let params: [&(dyn ToSql + Sync); 3] = [&lo, &hi, &domain];
        let mut rows = self.0.query_raw(sql, params)?;
        while let Some(r) = rows.next()? {
            let (d, row) = scan_row(&r)?;
            f(d, &row)?;
        }
        Ok(())
    }
}

impl Scan for PgScan<'_> {
    fn interned(&mut self) -> Result<Interned> {
        let dkim = super::dkim_sets(self.0)?;
        let mut policies = HashMap::new();
        for r in self.0.query("SELECT id, has_rua, json FROM policies", &[])? {
            policies.insert(col::<i64>(&r, 0)?, (col::<bool>(&r, 1)?, col::<String>(&r, 2)?));
        }
        Ok(Interned { dkim, policies })
    }

    fn raw(&mut self, lo: u64, hi: u64, domain: Option<&str>, f: &mut dyn FnMut(&str, &ScanRow<'_>) -> Result<()>) -> Result<()> {
        self.stream(RAW_SCAN, lo, hi, domain, f)
    }

    fn hourly(&mut self, a: u64, b: u64, domain: Option<&str>, f: &mut dyn FnMut(&str, &ScanRow<'_>) -> Result<()>) -> Result<()> {
        self.stream(HOURLY_SCAN, a, b, domain, f)
    }
}

pub(super) fn dmarc_report_each(
    c: &mut Client,
    domain: Option<&str>,
    from: u64,
    to: u64,
    each: &mut dyn FnMut(DomainRows) -> Result<()>,
) -> Result<()> {
    report_each(&mut PgScan(c), domain, from, to, each)
}

pub(super) fn dmarc_domains(c: &mut Client, from: u64, to: u64) -> Result<Vec<PolicyPublished>> {
    let rows = c.query(
        "SELECT h.header_from, p.json, max(h.last) FROM domain_hourly h JOIN policies p ON p.id = h.policy
         WHERE h.hour >= $1 AND h.hour < $2 AND h.last >= $3 AND h.first < $2 AND p.has_rua
         GROUP BY h.header_from, p.json",
        &[&big(floor_hour(from)), &big(to), &big(from)],
    )?;
    let mut newest: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for r in &rows {
        let (domain, json, last): (String, String, u64) = (col(r, 0)?, col(r, 1)?, num(r, 2)?);
        match newest.get(&domain) {
            Some((t, _)) if *t > last => {}
            _ => {
                newest.insert(domain, (last, json));
            }
        }
    }
    newest.into_values().map(|(_, j)| from_json(&j)).collect()
}

pub(super) fn dmarc_hourly(c: &mut Client, domain: Option<&str>, from: u64, to: u64) -> Result<Vec<DmarcHour>> {
    let rows = c.query(
        "SELECT hour, header_from, sum(messages)::bigint, sum(dmarc_pass)::bigint, sum(spf_aligned)::bigint,
                sum(dkim_aligned)::bigint, sum(rejected)::bigint, sum(quarantined)::bigint, sum(lookalike)::bigint
         FROM domain_hourly WHERE hour >= $1 AND hour < $2 AND ($3::text IS NULL OR header_from = $3)
         GROUP BY hour, header_from ORDER BY hour, header_from",
        &[&big(floor_hour(from)), &big(to), &domain],
    )?;
    rows.iter()
        .map(|r| {
            Ok(DmarcHour {
                hour: num(r, 0)?,
                domain: col(r, 1)?,
                messages: num(r, 2)?,
                dmarc_pass: num(r, 3)?,
                spf_aligned: num(r, 4)?,
                dkim_aligned: num(r, 5)?,
                rejected: num(r, 6)?,
                quarantined: num(r, 7)?,
                lookalike: num(r, 8)?,
            })
        })
        .collect()
}

pub(super) fn domains(c: &mut Client, from: u64, to: u64) -> Result<Vec<(String, u64)>> {
    let rows = c.query(
        "SELECT header_from, sum(messages)::bigint AS n FROM domain_hourly WHERE hour >= $1 AND hour < $2
         GROUP BY header_from ORDER BY n DESC, header_from",
        &[&big(floor_hour(from)), &big(to)],
    )?;
    rows.iter().map(|r| Ok((col(r, 0)?, num(r, 1)?))).collect()
}

pub(super) fn tls_summary(c: &mut Client, from: u64, to: u64) -> Result<Vec<TlsCount>> {
    let rows = c.query(
        "SELECT policy_domain, policy_type, result, sum(count)::bigint FROM tls_hourly WHERE hour >= $1 AND hour < $2
         GROUP BY policy_domain, policy_type, result ORDER BY policy_domain, policy_type, result",
        &[&big(floor_hour(from)), &big(to)],
    )?;
    rows.iter()
        .map(|r| Ok(TlsCount { policy_domain: col(r, 0)?, policy_type: col(r, 1)?, result: col(r, 2)?, sessions: num(r, 3)? }))
        .collect()
}

/// `sources::add_hours` for PostgreSQL.
pub(super) fn add_hours(c: &mut Client, m: &mut HashMap<IpAddr, Source>, domain: &str, a: u64, b: u64) -> Result<()> {
    if a >= b {
        return Ok(());
    }
    let rows = c.query(
        "SELECT source_ip, disposition, sum(count)::bigint, sum(CASE WHEN spf_aligned THEN count ELSE 0 END)::bigint,
                sum(CASE WHEN dkim_aligned THEN count ELSE 0 END)::bigint,
                sum(CASE WHEN dmarc = 'pass' THEN count ELSE 0 END)::bigint, max(helo)
         FROM eval_hourly WHERE header_from = $3 AND hour >= $1 AND hour < $2
         GROUP BY source_ip, disposition",
        &[&big(a), &big(b), &domain],
    )?;
    for r in &rows {
        let n = [num(r, 2)?, num(r, 3)?, num(r, 4)?, num(r, 5)?];
        super::super::sources::add_row(m, col(r, 0)?, col(r, 1)?, n, col(r, 6)?)?;
    }
    Ok(())
}

pub(super) fn tls_domains(c: &mut Client, from: u64, to: u64) -> Result<Vec<String>> {
    let rows = c.query(
        "SELECT DISTINCT policy_domain FROM tls_sessions WHERE time >= $1 AND time < $2 ORDER BY policy_domain",
        &[&big(from), &big(to)],
    )?;
    rows.iter().map(|r| col(r, 0)).collect()
}

pub(super) fn tls_rows(c: &mut Client, domain: &str, from: u64, to: u64) -> Result<Vec<TlsRow>> {
    let rows = c.query(
        "SELECT s.mx_host, s.policy_type, s.result, count(*), coalesce(p.text, '')
         FROM tls_sessions s LEFT JOIN tls_policies p ON p.id = s.policy
         WHERE s.policy_domain = $1 AND s.time >= $2 AND s.time < $3
         GROUP BY s.mx_host, s.policy_type, s.result, s.policy, p.text ORDER BY s.policy_type, s.mx_host, s.result",
        &[&domain, &big(from), &big(to)],
    )?;
    rows.iter()
        .map(|r| {
            Ok(TlsRow { mx_host: col(r, 0)?, policy_type: col(r, 1)?, result: col(r, 2)?, count: num(r, 3)?, policy_string: col(r, 4)? })
        })
        .collect()
}

pub(super) fn first_time(c: &mut Client, kind: ReportKind, domain: &str, from: u64, to: u64) -> Result<Option<u64>> {
    let sql = match kind {
        ReportKind::Dmarc => "SELECT min(time) FROM evaluations WHERE header_from = $1 AND time >= $2 AND time < $3",
        ReportKind::Tlsrpt => "SELECT min(time) FROM tls_sessions WHERE policy_domain = $1 AND time >= $2 AND time < $3",
    };
    let r = c.query_one(sql, &[&domain, &big(from), &big(to)])?;
    Ok(col::<Option<i64>>(&r, 0)?.map(|t| t.max(0) as u64))
}
