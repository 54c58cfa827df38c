//! DNS for the domain page: the domain's published records and the
//! reverse (PTR) names of its busiest sources, through the configured
//! resolver with short timeouts, all lookups of a page at once, and the
//! answers kept briefly in memory so that a slow or silent nameserver
//! makes one page load slow, not every one.
//!
//! May import: hickory, tokio.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{Name, RData};
use serde::Serialize;

/// A silent nameserver must not hold the page up.
const TXT_TIMEOUT: Duration = Duration::from_secs(2);
/// Records shown as published "now" may be this old.
const TXT_TTL: Duration = Duration::from_secs(60);
/// A reverse name is a label on a table row: a short wait, a long memory.
const PTR_TIMEOUT: Duration = Duration::from_millis(1500);
const PTR_TTL: Duration = Duration::from_secs(3600);
/// A lookup that failed (timeout, server failure) is tried again sooner.
const PTR_RETRY: Duration = Duration::from_secs(60);
/// Most reverse names kept; past it the memory starts over.
const PTR_ENTRIES: usize = 20_000;
/// Most reverse lookups one page asks for (the busiest sources of its two
/// tables, half each).
pub const PTR_ROWS: usize = 50;

#[derive(Serialize, Clone)]
pub struct Record {
    pub kind: &'static str,
    pub name: String,
    /// The TXT records found there that are of this kind.
    pub records: Vec<String>,
    /// Why there is nothing: `not found`, `timeout`, a resolver error.
    pub error: Option<String>,
}

/// What to look up: kind, name, the prefix its records start with.
pub type Wanted = (&'static str, String, &'static str);

// Process-wide: the dashboard's state is the admin server's, which has no
// place for a cache of its own; these hold public DNS data only.
/// The names looked up → when, and what was found.
type Records = HashMap<String, (Instant, Arc<Vec<Record>>)>;
/// An address → until when its answer holds, and its name if it has one.
type Ptrs = HashMap<IpAddr, (Instant, Option<String>)>;
static RECORDS: LazyLock<Mutex<Records>> = LazyLock::new(Default::default);
static PTRS: LazyLock<Mutex<Ptrs>> = LazyLock::new(Default::default);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The TXT records of `wanted`, in that order, from the last minute's
/// answers or looked up now, all at once.
pub async fn records(resolver: Option<TokioResolver>, wanted: Vec<Wanted>) -> Arc<Vec<Record>> {
    let key = wanted.iter().map(|(_, n, _)| n.as_str()).collect::<Vec<_>>().join(" ");
    if let Some((at, r)) = lock(&RECORDS).get(&key)
        && at.elapsed() < TXT_TTL
    {
        return r.clone();
    }
    let mut set = tokio::task::JoinSet::new();
    for (i, (kind, name, prefix)) in wanted.into_iter().enumerate() {
        let resolver = resolver.clone();
        set.spawn(async move { (i, txt(resolver, kind, name, prefix).await) });
    }
    let mut found: Vec<(usize, Record)> = set.join_all().await;
    found.sort_by_key(|(i, _)| *i);
    let found = Arc::new(found.into_iter().map(|(_, r)| r).collect::<Vec<_>>());
    let mut cache = lock(&RECORDS);
    cache.retain(|_, (at, _)| at.elapsed() < TXT_TTL);
    cache.insert(key, (Instant::now(), found.clone()));
    found
}

async fn txt(resolver: Option<TokioResolver>, kind: &'static str, name: String, prefix: &'static str) -> Record {
    let Some(resolver) = resolver else {
        return Record { kind, name, records: Vec::new(), error: Some("no resolver".into()) };
    };
    let fqdn = format!("{name}.");
    let (records, error) = match tokio::time::timeout(TXT_TIMEOUT, resolver.txt_lookup(fqdn.as_str())).await {
        Err(_) => (Vec::new(), Some("timeout".to_string())),
        Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => (Vec::new(), Some("not found".to_string())),
        Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
        Ok(Ok(lookup)) => {
            let found: Vec<String> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(t.txt_data.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<String>()),
                    _ => None,
                })
                .filter(|t| prefix.is_empty() || t.to_ascii_lowercase().starts_with(&prefix.to_ascii_lowercase()))
                .collect();
            let error = found.is_empty().then(|| "no such record".to_string());
            (found, error)
        }
    };
    Record { kind, name, records, error }
}

/// The reverse names of `ips` (the first [`PTR_ROWS`]): remembered ones
/// at once, the others looked up together. An address without a name, or
/// whose lookup failed, is left out.
pub async fn reverse_names(resolver: Option<TokioResolver>, ips: &[IpAddr]) -> HashMap<IpAddr, String> {
    let ips = &ips[..ips.len().min(PTR_ROWS)];
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    {
        let cache = lock(&PTRS);
        for ip in ips {
            match cache.get(ip) {
                Some((until, name)) if Instant::now() < *until => {
                    if let Some(n) = name {
                        out.insert(*ip, n.clone());
                    }
                }
                _ => missing.push(*ip),
            }
        }
    }
    let Some(resolver) = resolver else { return out };
    if missing.is_empty() {
        return out;
    }
    let mut set = tokio::task::JoinSet::new();
    for ip in missing {
        let resolver = resolver.clone();
        set.spawn(async move { (ip, ptr(&resolver, ip).await) });
    }
    let answers = set.join_all().await;
    let mut cache = lock(&PTRS);
    if cache.len() + answers.len() > PTR_ENTRIES {
        cache.clear();
    }
    for (ip, (name, keep)) in answers {
        if let Some(n) = &name {
            out.insert(ip, n.clone());
        }
        cache.insert(ip, (Instant::now() + keep, name));
    }
    out
}

/// One PTR lookup: the first name, and how long the answer may be kept.
async fn ptr(resolver: &TokioResolver, ip: IpAddr) -> (Option<String>, Duration) {
    let mut name = Name::from(ip);
    name.set_fqdn(true);
    match tokio::time::timeout(PTR_TIMEOUT, resolver.reverse_lookup(name)).await {
        Err(_) => (None, PTR_RETRY),
        Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => (None, PTR_TTL),
        Ok(Err(_)) => (None, PTR_RETRY),
        Ok(Ok(lookup)) => {
            let first = lookup.answers().iter().find_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_string().trim_end_matches('.').to_string()),
                _ => None,
            });
            (first.filter(|n| !n.is_empty()), PTR_TTL)
        }
    }
}
