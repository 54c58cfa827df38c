//! Reads of the hourly aggregates: the DMARC report rows of every domain
//! of a period in one scan, and the dashboard's summaries. A period's
//! whole hours come from `eval_hourly`; its partial first and last hour
//! from the raw rows (indexed by time), so the answer is exact for any
//! bounds while a day's report reads at most 24 rows per group.
//!
//! May import: the rest of `store`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use rusqlite::{Connection, params};

use super::aggregate::HOUR;
use super::*;

/// A time bound as SQLite's signed integer (`u64::MAX` means no bound).
pub(super) fn ts(t: u64) -> i64 {
    t.min(i64::MAX as u64) as i64
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Data(format!("bad JSON in the store: {e}")))
}

pub(super) fn floor_hour(t: u64) -> u64 {
    t - t % HOUR
}

pub(super) fn ceil_hour(t: u64) -> u64 {
    floor_hour(t).saturating_add(if t.is_multiple_of(HOUR) { 0 } else { HOUR })
}

/// A period's whole hours `[?1, ?2)` from the aggregates, for every
/// domain with traffic in them (`?3`: only that one): the domains come
/// from the small per-domain table, and for each the primary key
/// `(header_from, hour, ...)` seeks straight to its rows, so the one
/// statement streams the period domain by domain with no sort.
const HOURLY_SCAN: &str = "SELECT header_from, source_ip, disposition, dkim_aligned, spf_aligned, override_reason, envelope_from,
        dkim, spf_domain, spf_scope, spf_result, policy, count, first, last
    FROM eval_hourly
    WHERE header_from IN (SELECT header_from FROM domain_hourly
                          WHERE hour >= ?1 AND hour < ?2 AND (?3 IS NULL OR header_from = ?3))
      AND hour >= ?1 AND hour < ?2
    ORDER BY header_from";
/// A period's partial first or last hour `[?1, ?2)` from the raw rows.
const RAW_SCAN: &str = "SELECT header_from, source_ip, disposition, dkim_aligned, spf_aligned, override_reason, envelope_from,
        dkim, spf_domain, spf_scope, spf_result, policy, 1, time, time
    FROM evaluations WHERE time >= ?1 AND time < ?2 AND (?3 IS NULL OR header_from = ?3)";

/// A domain's rows as they gather.
pub(super) struct Gathering {
    domain: String,
    rows: Vec<DmarcRow>,
    /// A report record's fields joined → its index in `rows`.
    index: HashMap<String, usize>,
    first: u64,
    /// The newest `rua` policy seen: (last time, policy id).
    policy: Option<(u64, i64)>,
}

impl Gathering {
    fn new(domain: &str) -> Gathering {
        Gathering { domain: domain.to_string(), rows: Vec::new(), index: HashMap::new(), first: u64::MAX, policy: None }
    }
}

/// One row of a report scan (the columns of [`HOURLY_SCAN`] after the
/// domain), as either store reads it.
pub(super) struct ScanRow<'a> {
    pub source_ip: &'a str,
    pub disposition: &'a str,
    pub dkim_aligned: bool,
    pub spf_aligned: bool,
    pub reason: &'a str,
    pub envelope_from: &'a str,
    pub dkim: i64,
    pub spf_domain: &'a str,
    pub spf_scope: &'a str,
    pub spf_result: &'a str,
    pub policy: i64,
    pub count: u64,
    pub first: u64,
    pub last: u64,
}

/// The side tables, read once per scan (they hold one row per distinct
/// DKIM set or policy: small).
pub(super) struct Interned {
    pub dkim: HashMap<i64, Vec<DkimAuth>>,
    /// id → (has_rua, JSON).
    pub policies: HashMap<i64, (bool, String)>,
}

/// Where a report's rows come from: each store reads its tables its own
/// way; the gathering into report rows ([`report_each`]) is shared.
pub(super) trait Scan {
    fn interned(&mut self) -> Result<Interned>;
    /// The raw rows of `[lo, hi)`, `(header_from, row)` each.
    fn raw(&mut self, lo: u64, hi: u64, domain: Option<&str>, f: &mut dyn FnMut(&str, &ScanRow<'_>) -> Result<()>) -> Result<()>;
    /// The aggregates of the whole hours `[a, b)`, in domain order.
    fn hourly(&mut self, a: u64, b: u64, domain: Option<&str>, f: &mut dyn FnMut(&str, &ScanRow<'_>) -> Result<()>) -> Result<()>;
}

impl Interned {
    fn load(c: &Connection) -> Result<Interned> {
        let mut dkim = HashMap::new();
        let mut st = c.prepare_cached("SELECT id, json FROM dkim_sets")?;
        for r in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
            let (id, j) = r?;
            dkim.insert(id, from_json(&j)?);
        }
        let mut policies = HashMap::new();
        let mut st = c.prepare_cached("SELECT id, has_rua, json FROM policies")?;
        for r in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?, r.get::<_, String>(2)?)))? {
            let (id, rua, j) = r?;
            policies.insert(id, (rua, j));
        }
        Ok(Interned { dkim, policies })
    }

    /// Adds one scanned row to `g`.
    fn add(&self, g: &mut Gathering, r: &ScanRow<'_>, key: &mut String) {
        let ScanRow {
            source_ip,
            disposition,
            dkim_aligned,
            spf_aligned,
            reason,
            envelope_from,
            dkim,
            spf_domain,
            spf_scope,
            spf_result,
            policy,
            count,
            first,
            last,
        } = *r;
        g.first = g.first.min(first);
        if self.policies.get(&policy).is_some_and(|p| p.0) && g.policy.is_none_or(|(t, _)| last >= t) {
            g.policy = Some((last, policy));
        }
        key.clear();
        // ok: writing to a String cannot fail.
        let _ = write!(
            key,
            "{source_ip}\0{disposition}\0{dkim_aligned}\0{spf_aligned}\0{reason}\0{envelope_from}\0{dkim}\0\
             {spf_domain}\0{spf_scope}\0{spf_result}"
        );
        match g.index.get(key.as_str()) {
            Some(&i) => g.rows[i].count += count,
            None => {
                g.rows.push(DmarcRow {
                    source_ip: source_ip.to_string(),
                    count,
                    disposition: disposition.to_string(),
                    dkim_aligned,
                    spf_aligned,
                    override_reason: (!reason.is_empty()).then(|| reason.to_string()),
                    header_from: g.domain.clone(),
                    envelope_from: envelope_from.to_string(),
                    dkim: self.dkim.get(&dkim).cloned().unwrap_or_default(),
                    spf: SpfAuth { domain: spf_domain.to_string(), scope: spf_scope.to_string(), result: spf_result.to_string() },
                });
                g.index.insert(key.clone(), g.rows.len() - 1);
            }
        }
    }

    fn finish(&self, mut g: Gathering) -> Result<DomainRows> {
        g.rows.sort_by(|a, b| a.source_ip.cmp(&b.source_ip).then(b.count.cmp(&a.count)));
        let policy = match g.policy.and_then(|(_, id)| self.policies.get(&id)) {
            Some((_, j)) => Some(from_json(j)?),
            None => None,
        };
        Ok(DomainRows { domain: g.domain, policy, rows: g.rows, first: g.first })
    }
}

/// SQLite's reads for [`report_each`].
struct SqliteScan<'c>(&'c Connection);

fn scan_row<'r>(r: &'r rusqlite::Row<'_>) -> Result<(&'r str, ScanRow<'r>)> {
    let text = |i: usize| -> Result<&'r str> {
        r.get_ref(i)?.as_str().map_err(|e| StoreError::Data(format!("column {i} of the aggregates is not text: {e}")))
    };
    Ok((
        text(0)?,
        ScanRow {
            source_ip: text(1)?,
            disposition: text(2)?,
            dkim_aligned: r.get(3)?,
            spf_aligned: r.get(4)?,
            reason: text(5)?,
            envelope_from: text(6)?,
            dkim: r.get(7)?,
            spf_domain: text(8)?,
            spf_scope: text(9)?,
            spf_result: text(10)?,
            policy: r.get(11)?,
            count: r.get(12)?,
            first: r.get(13)?,
            last: r.get(14)?,
        },
    ))
}

impl Scan for SqliteScan<'_> {
    fn interned(&mut self) -> Result<Interned> {
        Interned::load(self.0)
    }

    fn raw(&mut self, lo: u64, hi: u64, domain: Option<&str>, f: &mut dyn FnMut(&str, &ScanRow<'_>) -> Result<()>) -> Result<()> {
        let mut st = self.0.prepare_cached(RAW_SCAN)?;
        let mut rows = st.query(params![ts(lo), ts(hi), domain])?;
        while let Some(r) = rows.next()? {
            let (d, row) = scan_row(r)?;
            f(d, &row)?;
        }
        Ok(())
    }

    fn hourly(&mut self, a: u64, b: u64, domain: Option<&str>, f: &mut dyn FnMut(&str, &ScanRow<'_>) -> Result<()>) -> Result<()> {
        let mut st = self.0.prepare_cached(HOURLY_SCAN)?;
        let mut rows = st.query(params![ts(a), ts(b), domain])?;
        while let Some(r) = rows.next()? {
            let (d, row) = scan_row(r)?;
            f(d, &row)?;
        }
        Ok(())
    }
}

pub(super) fn dmarc_report_each(
    c: &Connection,
    domain: Option<&str>,
    from: u64,
    to: u64,
    each: &mut dyn FnMut(DomainRows) -> Result<()>,
) -> Result<()> {
    report_each(&mut SqliteScan(c), domain, from, to, each)
}

/// Streams each header-from domain's report rows for `[from, to)` to
/// `each`, in domain order: the partial edge hours (raw rows, at most two
/// hours) are gathered first, then the whole hours stream from one scan
/// of the aggregates, a domain at a time.
pub(super) fn report_each(
    scan: &mut dyn Scan,
    domain: Option<&str>,
    from: u64,
    to: u64,
    each: &mut dyn FnMut(DomainRows) -> Result<()>,
) -> Result<()> {
    if from >= to {
        return Ok(());
    }
    let interned = scan.interned()?;
    let (a, b) = (ceil_hour(from), floor_hour(to));
    // Less than a whole hour: all of it from the raw rows.
    let (a, b, edges) = if a < b { (a, b, [(from, a), (b, to)]) } else { (from, from, [(from, to), (to, to)]) };
    let mut key = String::new();
    let mut pending: BTreeMap<String, Gathering> = BTreeMap::new();
    for (lo, hi) in edges.into_iter().filter(|(lo, hi)| lo < hi) {
        scan.raw(lo, hi, domain, &mut |d, r| {
            if !pending.contains_key(d) {
                pending.insert(d.to_string(), Gathering::new(d));
            }
            if let Some(g) = pending.get_mut(d) {
                interned.add(g, r, &mut key);
            }
            Ok(())
        })?;
    }
    let mut current: Option<Gathering> = None;
    scan.hourly(a, b, domain, &mut |d, r| {
        if current.as_ref().is_none_or(|g| g.domain != d) {
            if let Some(g) = current.take() {
                each(interned.finish(g)?)?;
            }
            // Domains seen only at the edges that sort before this one go
            // first, to keep the domain order; this one's edges join it.
            while pending.first_key_value().is_some_and(|(k, _)| k.as_str() < d) {
                if let Some((_, g)) = pending.pop_first() {
                    each(interned.finish(g)?)?;
                }
            }
            current = Some(pending.remove(d).unwrap_or_else(|| Gathering::new(d)));
        }
        if let Some(g) = current.as_mut() {
            interned.add(g, r, &mut key);
        }
        Ok(())
    })?;
    if let Some(g) = current.take() {
        each(interned.finish(g)?)?;
    }
    while let Some((_, g)) = pending.pop_first() {
        each(interned.finish(g)?)?;
    }
    Ok(())
}

pub(super) fn dmarc_report(c: &Connection, domain: Option<&str>, from: u64, to: u64) -> Result<Vec<DomainRows>> {
    let mut out = Vec::new();
    dmarc_report_each(c, domain, from, to, &mut |d| {
        out.push(d);
        Ok(())
    })?;
    Ok(out)
}

/// Domains whose evaluations in `[from, to)` (to the hour) carried a
/// `rua` record, with the newest such record.
pub(super) fn dmarc_domains(c: &Connection, from: u64, to: u64) -> Result<Vec<PolicyPublished>> {
    let mut st = c.prepare_cached(
        "SELECT h.header_from, p.json, max(h.last) FROM domain_hourly h JOIN policies p ON p.id = h.policy
         WHERE h.hour >= ?1 AND h.hour < ?2 AND h.last >= ?3 AND h.first < ?2 AND p.has_rua
         GROUP BY h.header_from, h.policy",
    )?;
    let mut newest: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let rows = st.query_map(params![ts(floor_hour(from)), ts(to), ts(from)], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, u64>(2)?))
    })?;
    for r in rows {
        let (domain, json, last) = r?;
        match newest.get(&domain) {
            Some((t, _)) if *t > last => {}
            _ => {
                newest.insert(domain, (last, json));
            }
        }
    }
    newest.into_values().map(|(_, j)| from_json(&j)).collect()
}

pub(super) fn dmarc_hourly(c: &Connection, domain: Option<&str>, from: u64, to: u64) -> Result<Vec<DmarcHour>> {
    // Two statements: with `?3 IS NULL OR ...` SQLite could not use the
    // (header_from, hour) index for one domain, and would read every
    // domain's hours (hundreds of thousands of rows over 30 days).
    let sql = if domain.is_some() {
        "SELECT hour, header_from, sum(messages), sum(dmarc_pass), sum(spf_aligned), sum(dkim_aligned), sum(rejected),
                sum(quarantined), sum(lookalike)
         FROM domain_hourly INDEXED BY domain_hourly_domain WHERE header_from = ?3 AND hour >= ?1 AND hour < ?2
         GROUP BY hour, header_from ORDER BY hour, header_from"
    } else {
        "SELECT hour, header_from, sum(messages), sum(dmarc_pass), sum(spf_aligned), sum(dkim_aligned), sum(rejected),
                sum(quarantined), sum(lookalike)
         FROM domain_hourly WHERE hour >= ?1 AND hour < ?2 AND ?3 IS NULL
         GROUP BY hour, header_from ORDER BY hour, header_from"
    };
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map(params![ts(floor_hour(from)), ts(to), domain], |r| {
        Ok(DmarcHour {
            hour: r.get(0)?,
            domain: r.get(1)?,
            messages: r.get(2)?,
            dmarc_pass: r.get(3)?,
            spf_aligned: r.get(4)?,
            dkim_aligned: r.get(5)?,
            rejected: r.get(6)?,
            quarantined: r.get(7)?,
            lookalike: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn domains(c: &Connection, from: u64, to: u64) -> Result<Vec<(String, u64)>> {
    let mut st = c.prepare_cached(
        "SELECT header_from, sum(messages) AS n FROM domain_hourly WHERE hour >= ?1 AND hour < ?2
         GROUP BY header_from ORDER BY n DESC, header_from",
    )?;
    let rows = st.query_map(params![ts(floor_hour(from)), ts(to)], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn tls_summary(c: &Connection, from: u64, to: u64) -> Result<Vec<TlsCount>> {
    let mut st = c.prepare_cached(
        "SELECT policy_domain, policy_type, result, sum(count) FROM tls_hourly WHERE hour >= ?1 AND hour < ?2
         GROUP BY policy_domain, policy_type, result ORDER BY policy_domain, policy_type, result",
    )?;
    let rows = st.query_map(params![ts(floor_hour(from)), ts(to)], |r| {
        Ok(TlsCount { policy_domain: r.get(0)?, policy_type: r.get(1)?, result: r.get(2)?, sessions: r.get(3)? })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
