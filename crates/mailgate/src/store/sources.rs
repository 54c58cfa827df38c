//! The sending sources of one header-from domain (the dashboard's domain
//! page), summed from the hourly aggregates, with finished days' sums kept
//! in memory.
//!
//! With many sources a 30-day range is about 100,000 hourly rows; the days
//! before yesterday no longer change, so each finished day is summed once
//! per source and kept, keyed by (domain, day), and the merged range of
//! finished days is kept too. A page then reads only today's hours. The
//! numbers stay exact: a day counts as finished ten minutes after its end
//! (evaluations are written within a second of the reply), a write of an
//! evaluation older than any cached day drops the cache, and so does
//! pruning.
//!
//! May import: the rest of `store`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, params};

use super::aggregate::HOUR;
use super::read::ts;
use super::{Event, Result, Source, StoreError, unix_now};

const DAY: u64 = 86_400;
/// How long after its end a day is taken as finished.
const SETTLE: u64 = 600;
/// Most (domain, day) entries kept; past it the cache starts over (a few
/// dozen domains of ours × 30 days fit many times).
const MAX_ENTRIES: usize = 8192;

type Sums = Arc<HashMap<IpAddr, Source>>;

#[derive(Default)]
struct Entries {
    days: HashMap<(String, u64), Sums>,
    /// (domain, first day, end day) → the merged sums of those days.
    ranges: HashMap<(String, u64, u64), Sums>,
}

/// Finished days' per-source sums.
#[derive(Default)]
pub(super) struct SourceCache {
    entries: Mutex<Entries>,
    /// Every cached day ends at or before this (Unix seconds).
    until: AtomicU64,
}

impl SourceCache {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops everything cached.
    pub(super) fn clear(&self) {
        let mut e = self.lock();
        e.days.clear();
        e.ranges.clear();
    }

    /// Called before a batch is written: an evaluation dated in a cached
    /// day (a clock step, a backfill) would make the cache wrong.
    pub(super) fn before_write(&self, events: &[Event]) {
        let until = self.until.load(Ordering::Relaxed);
        if until > 0 && events.iter().any(|e| matches!(e, Event::Evaluation(v) if v.time < until)) {
            self.clear();
        }
    }
}

/// One domain's sources over the hours that overlap `[from, to)`, busiest
/// first, at most `limit`.
pub(super) fn sources(c: &Connection, cache: &SourceCache, domain: &str, from: u64, to: u64, limit: usize) -> Result<Vec<Source>> {
    sources_with(&mut |m, d, a, b| add_hours(c, m, d, a, b), cache, domain, from, to, limit)
}

/// Adds the hourly rows of a domain with `hour` in `[a, b)` to a map:
/// each store's read of `eval_hourly`.
pub(super) type AddHours<'a> = dyn FnMut(&mut HashMap<IpAddr, Source>, &str, u64, u64) -> Result<()> + 'a;

/// [`sources`] over any store's read of the aggregates.
pub(super) fn sources_with(
    c: &mut AddHours<'_>,
    cache: &SourceCache,
    domain: &str,
    from: u64,
    to: u64,
    limit: usize,
) -> Result<Vec<Source>> {
    let lo = from - from % HOUR;
    let finished = {
        let t = unix_now().saturating_sub(SETTLE);
        t - t % DAY
    };
    let first_day = lo.div_ceil(DAY).saturating_mul(DAY);
    let end_day = {
        let t = to.min(finished);
        t - t % DAY
    };
    let mut by_ip: HashMap<IpAddr, Source> = if first_day < end_day {
        let cached = range(c, cache, domain, first_day, end_day)?;
        let mut m = (*cached).clone();
        if lo < first_day {
            c(&mut m, domain, lo, first_day)?;
        }
        c(&mut m, domain, end_day, to)?;
        m
    } else {
        let mut m = HashMap::new();
        c(&mut m, domain, lo, to)?;
        m
    };
    let mut out: Vec<Source> = by_ip.drain().map(|(_, s)| s).collect();
    out.sort_by(|a, b| b.messages.cmp(&a.messages).then(a.source_ip.cmp(&b.source_ip)));
    out.truncate(limit);
    Ok(out)
}

/// The merged sums of the finished days `[first, end)`, from the cache or
/// summed now.
fn range(c: &mut AddHours<'_>, cache: &SourceCache, domain: &str, first: u64, end: u64) -> Result<Sums> {
    let key = (domain.to_string(), first, end);
    if let Some(s) = cache.lock().ranges.get(&key) {
        return Ok(s.clone());
    }
    let mut merged: HashMap<IpAddr, Source> = HashMap::new();
    let mut day = first;
    while day < end {
        let sums = day_sums(c, cache, domain, day)?;
        for (ip, s) in sums.iter() {
            match merged.get_mut(ip) {
                Some(m) => merge(m, s),
                None => {
                    merged.insert(*ip, s.clone());
                }
            }
        }
        day += DAY;
    }
    let merged = Arc::new(merged);
    let mut e = cache.lock();
    // Ranges of other days are of no more use once the day has moved on.
    e.ranges.retain(|(d, f, n), _| !(d == domain && (*f, *n) != (first, end)));
    e.ranges.insert(key, merged.clone());
    cache.until.fetch_max(end, Ordering::Relaxed);
    Ok(merged)
}

fn day_sums(c: &mut AddHours<'_>, cache: &SourceCache, domain: &str, day: u64) -> Result<Sums> {
    let key = (domain.to_string(), day);
    if let Some(s) = cache.lock().days.get(&key) {
        return Ok(s.clone());
    }
    let mut m = HashMap::new();
    c(&mut m, domain, day, day + DAY)?;
    let sums = Arc::new(m);
    let mut e = cache.lock();
    if e.days.len() >= MAX_ENTRIES {
        e.days.clear();
    }
    e.days.insert(key, sums.clone());
    cache.until.fetch_max(day + DAY, Ordering::Relaxed);
    Ok(sums)
}

fn merge(into: &mut Source, s: &Source) {
    into.messages += s.messages;
    into.spf_aligned += s.spf_aligned;
    into.dkim_aligned += s.dkim_aligned;
    into.dmarc_pass += s.dmarc_pass;
    for (d, n) in &s.dispositions {
        *into.dispositions.entry(d.clone()).or_default() += n;
    }
    if s.helo > into.helo {
        into.helo = s.helo.clone();
    }
}

/// Adds the hourly rows of `domain` with `hour` in `[a, b)` to `m`.
fn add_hours(c: &Connection, m: &mut HashMap<IpAddr, Source>, domain: &str, a: u64, b: u64) -> Result<()> {
    if a >= b {
        return Ok(());
    }
    let mut st = c.prepare_cached(
        "SELECT source_ip, disposition, sum(count), sum(spf_aligned * count), sum(dkim_aligned * count),
                sum(CASE WHEN dmarc = 'pass' THEN count ELSE 0 END), max(helo)
         FROM eval_hourly WHERE header_from = ?3 AND hour >= ?1 AND hour < ?2
         GROUP BY source_ip, disposition",
    )?;
    let mut rows = st.query(params![ts(a), ts(b), domain])?;
    while let Some(r) = rows.next()? {
        let ip: &str = r.get_ref(0)?.as_str().map_err(|e| StoreError::Data(format!("source_ip is not text: {e}")))?;
        add_row(m, ip, r.get(1)?, [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?], r.get(6)?)?;
    }
    Ok(())
}

/// Adds one `(source_ip, disposition)` group of [`SOURCES_SQL`] to `m`:
/// `n` is messages, SPF aligned, DKIM aligned, DMARC pass.
pub(super) fn add_row(m: &mut HashMap<IpAddr, Source>, ip: &str, disposition: String, n: [u64; 4], helo: String) -> Result<()> {
    let Ok(source_ip) = ip.parse::<IpAddr>() else {
        return Err(StoreError::Data(format!("bad source IP {ip:?} in the store")));
    };
    let s =
        Source { source_ip, messages: n[0], spf_aligned: n[1], dkim_aligned: n[2], dmarc_pass: n[3], dispositions: BTreeMap::new(), helo };
    let messages = s.messages;
    let entry = m.entry(source_ip).or_insert_with(|| Source { messages: 0, spf_aligned: 0, dkim_aligned: 0, dmarc_pass: 0, ..s.clone() });
    merge(entry, &s);
    *entry.dispositions.entry(disposition).or_default() += messages;
    Ok(())
}
