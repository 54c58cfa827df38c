//! `mailgate spf suggest DOMAIN`: a strict `-all` SPF record learnt from
//! the traffic the report store has seen, with the evidence for each
//! source it covers and the sources it would fail.
//!
//! Legitimate senders are: our egress (`[server] public_addresses`, which
//! carries what our users and trusted networks hand us), and every source
//! that passed DKIM aligned with the domain, in our own evaluations or in
//! the aggregate reports others sent (a spoofer cannot sign as the domain;
//! a sender that can is one SPF does not cover yet). Their addresses are
//! merged into a CIDR only when every address in it is one of them. An
//! include of the published record that already covers some of them is
//! kept while the record stays within 10 DNS lookups; past that, includes
//! are replaced by the addresses they resolve to now (flattened), with a
//! warning that the record must then be refreshed.
//!
//! May import: `store`, `checks::spf`, `config`, `advisor`, hickory, ipnet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use ipnet::IpNet;
use serde::Serialize;

use super::esp;
use super::suggest_dns::{self as sdns, Walk};
use crate::checks::spf::{SpfChecker, SpfResult};
use crate::config::Config;
use crate::store::advice::{Evidence, SenderEvidence};
use crate::store::{Store, unix_now};

/// RFC 7208 §4.6.4.
pub const MAX_LOOKUPS: usize = 10;
pub const DAY: u64 = 86_400;
/// A record longer than this no longer fits a 512-octet DNS answer with
/// its name; resolvers then need EDNS or TCP.
const LONG_RECORD: usize = 450;

/// A legitimate source and what covers it in the suggested record.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub ip: String,
    /// Messages seen from it as the domain (ours and reported); for our
    /// egress, the messages we relayed as the domain.
    pub volume: u64,
    /// Some of its messages passed DKIM aligned with the domain.
    pub dkim_aligned: bool,
    pub ptr: Option<String>,
    /// The term of the suggested record that passes it (`ip4:...`,
    /// `include:...`, `include:... (flattened)`).
    pub covered_by: String,
    /// Why it counts as legitimate, in words.
    pub evidence: String,
}

/// A source the suggested record would fail.
#[derive(Debug, Clone, Serialize)]
pub struct Failing {
    pub ip: String,
    pub volume: u64,
    /// `spoofer` (nothing ever authenticated from it) or `unknown`.
    pub likely: &'static str,
    pub ptr: Option<String>,
    pub reason: String,
}

/// An include of the published record (or an ESP's), and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Include {
    pub include: String,
    /// Its lookups, the include term itself counted.
    pub lookups: usize,
    /// Legitimate sources it passes.
    pub covers: usize,
    /// `kept`, `flattened`, `dropped` (covers no legitimate source).
    pub action: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Suggestion {
    pub domain: String,
    pub days: u64,
    pub record: String,
    pub lookups: usize,
    /// The SPF record(s) published now.
    pub current: Vec<String>,
    pub sources: Vec<Source>,
    pub would_fail: Vec<Failing>,
    pub includes: Vec<Include>,
    pub warnings: Vec<String>,
}

/// Reads the store (off the async threads) for `domain` over `days`.
pub async fn evidence(store: Arc<dyn Store>, domain: &str, days: u64) -> anyhow::Result<Evidence> {
    let now = unix_now();
    let from = now.saturating_sub(days.saturating_mul(DAY));
    let d = domain.to_string();
    Ok(tokio::task::spawn_blocking(move || store.advice_evidence(&d, from, now + 1)).await??)
}

/// Reverse names of `ips` (the first [`sdns::MAX_PTR`]), all at once.
pub async fn ptrs(resolver: &TokioResolver, ips: impl IntoIterator<Item = IpAddr>) -> BTreeMap<IpAddr, String> {
    let mut set = tokio::task::JoinSet::new();
    for ip in ips.into_iter().take(sdns::MAX_PTR) {
        let r = resolver.clone();
        set.spawn(async move { (ip, sdns::ptr(&r, ip).await) });
    }
    set.join_all().await.into_iter().filter_map(|(ip, p)| p.map(|p| (ip, p))).collect()
}

/// Whether `ip` passes the SPF record at `include` (an include matches
/// exactly when that record passes, RFC 7208 §5.2).
async fn passes(checker: &SpfChecker, include: &str, ip: IpAddr) -> bool {
    checker.check_mail_from(ip, "advisor.invalid", &format!("postmaster@{include}")).await.result == SpfResult::Pass
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

/// The suggestion for `domain` from `ev` (read with [`evidence`]).
pub async fn suggest(config: &Config, resolver: &TokioResolver, domain: &str, days: u64, ev: &Evidence) -> Suggestion {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut warnings = Vec::new();
    let by_ip: BTreeMap<IpAddr, &SenderEvidence> = ev.senders.iter().filter_map(|s| Some((parse_ip(&s.ip)?, s))).collect();

    // Legitimate sources: ip -> (volume, dkim aligned, evidence).
    let mut legit: BTreeMap<IpAddr, (u64, bool, String)> = BTreeMap::new();
    let relayed = ev.relayed();
    for ip in &config.public_addresses {
        let seen = by_ip.get(ip);
        let clients = ev.submitters.len();
        legit.insert(
            *ip,
            (
                relayed + seen.map_or(0, |s| s.volume()),
                seen.is_some_and(|s| s.dkim_aligned() > 0),
                format!("our egress ([server] public_addresses): {relayed} message(s) relayed as the domain from {clients} client(s)"),
            ),
        );
    }
    if config.public_addresses.is_empty() && relayed > 0 {
        warnings.push(format!(
            "{relayed} message(s) were relayed as {domain}, but [server] public_addresses is empty: the record uses `mx` for this gateway instead of its addresses"
        ));
    }
    for (ip, s) in &by_ip {
        if s.dkim_aligned() == 0 || legit.contains_key(ip) {
            continue;
        }
        let mut why = format!("aligned DKIM on {} of {} message(s)", s.dkim_aligned(), s.volume());
        if s.reports > 0 {
            why.push_str(&format!(" ({} in {} aggregate report(s))", s.reported_dkim_aligned, s.reports));
        }
        legit.insert(*ip, (s.volume(), true, why));
    }

    let names = ptrs(resolver, by_ip.keys().copied().chain(legit.keys().copied()).collect::<BTreeSet<_>>()).await;

    // The published record and its includes, plus the include of an ESP
    // whose hosts (by PTR) are among the legitimate sources.
    let current = sdns::spf_records(resolver, &domain).await;
    if current.len() > 1 {
        warnings.push(format!(
            "{domain} publishes {} SPF records: receivers treat that as a permerror; publish only the one below",
            current.len()
        ));
    }
    let mut candidates: Vec<String> = current.first().map(|r| sdns::includes(r)).unwrap_or_default();
    for ip in legit.keys() {
        if let Some(inc) = names.get(ip).and_then(|p| esp::by_ptr(p)).and_then(|e| e.include)
            && !candidates.iter().any(|c| c == inc)
        {
            candidates.push(inc.to_string());
        }
    }
    let checker = SpfChecker::from_resolver(resolver.clone(), &config.hostname);
    let mut walks: Vec<(String, Walk, BTreeSet<IpAddr>)> = Vec::new();
    for inc in candidates {
        let mut covers = BTreeSet::new();
        for ip in legit.keys() {
            if passes(&checker, &inc, *ip).await {
                covers.insert(*ip);
            }
        }
        let walk = sdns::walk(resolver, &inc).await;
        walks.push((inc, walk, covers));
    }

    // Keep the includes that cover someone; flatten the costliest while
    // over the limit.
    let mx_cost = usize::from(config.public_addresses.is_empty() && relayed > 0);
    let mut action: BTreeMap<String, &'static str> = BTreeMap::new();
    for (inc, _, covers) in &walks {
        action.insert(inc.clone(), if covers.is_empty() { "dropped" } else { "kept" });
    }
    let cost = |w: &Walk| w.lookups + 1;
    let total = |action: &BTreeMap<String, &'static str>| {
        mx_cost + walks.iter().filter(|(i, _, _)| action.get(i) == Some(&"kept")).map(|(_, w, _)| cost(w)).sum::<usize>()
    };
    let mut by_cost: Vec<&(String, Walk, BTreeSet<IpAddr>)> = walks.iter().filter(|(_, _, c)| !c.is_empty()).collect();
    by_cost.sort_by_key(|w| std::cmp::Reverse(cost(&w.1)));
    for (inc, walk, _) in by_cost {
        if total(&action) <= MAX_LOOKUPS {
            break;
        }
        if walk.unflattenable.is_empty() {
            action.insert(inc.clone(), "flattened");
            warnings.push(format!(
                "include:{inc} ({} lookups) was flattened into the {} address range(s) it resolves to now: when {inc} changes its record, \
                 this one must be refreshed (run `mailgate spf suggest` again)",
                cost(walk),
                walk.nets.len()
            ));
        } else {
            warnings.push(format!(
                "include:{inc} cannot be flattened ({}): the record stays over {MAX_LOOKUPS} lookups",
                walk.unflattenable.join("; ")
            ));
        }
    }
    let lookups = total(&action);

    // The record's address terms: legitimate addresses not passed by a
    // kept include, and the flattened includes' ranges.
    let kept: Vec<&(String, Walk, BTreeSet<IpAddr>)> = walks.iter().filter(|(i, _, _)| action.get(i) == Some(&"kept")).collect();
    let covered_by_kept = |ip: &IpAddr| kept.iter().find(|(_, _, c)| c.contains(ip)).map(|(i, _, _)| i.clone());
    let mut own: Vec<IpNet> = legit.keys().filter(|ip| covered_by_kept(ip).is_none()).map(|ip| IpNet::from(*ip)).collect();
    let flattened: Vec<&(String, Walk, BTreeSet<IpAddr>)> = walks.iter().filter(|(i, _, _)| action.get(i) == Some(&"flattened")).collect();
    // A flattened include's source is passed by its ranges; ours only
    // where no range does.
    own.retain(|n| !flattened.iter().any(|(_, w, _)| w.nets.iter().any(|f| f.contains(n))));
    let mut nets = own.clone();
    for (_, w, _) in &flattened {
        nets.extend(w.nets.iter().copied());
    }
    // Merges only fully covered blocks: two neighbours become a /31, one
    // address never a /24.
    let nets = IpNet::aggregate(&nets);
    let mut record = String::from("v=spf1");
    for n in nets.iter().filter(|n| matches!(n, IpNet::V4(_))) {
        record.push_str(&term(n));
    }
    for n in nets.iter().filter(|n| matches!(n, IpNet::V6(_))) {
        record.push_str(&term(n));
    }
    for (inc, _, _) in &kept {
        record.push_str(&format!(" include:{inc}"));
    }
    if mx_cost > 0 {
        record.push_str(" mx");
    }
    record.push_str(" -all");
    if record.len() > LONG_RECORD {
        warnings.push(format!(
            "the record is {} characters: publish it as several strings of at most 255 in one TXT record; answers this long need EDNS or TCP",
            record.len()
        ));
    }

    let cover_term = |ip: &IpAddr| -> Option<String> {
        if let Some(inc) = covered_by_kept(ip) {
            return Some(format!("include:{inc}"));
        }
        let n = nets.iter().find(|n| n.contains(ip))?;
        match flattened.iter().find(|(_, w, _)| w.nets.iter().any(|f| f.contains(ip))) {
            Some((inc, _, _)) if !own.iter().any(|o| o.contains(ip)) => Some(format!("include:{inc} (flattened, {})", term(n).trim())),
            _ => Some(term(n).trim().to_string()),
        }
    };
    let mut sources: Vec<Source> = legit
        .iter()
        .map(|(ip, (volume, dkim, why))| Source {
            ip: ip.to_string(),
            volume: *volume,
            dkim_aligned: *dkim,
            ptr: names.get(ip).cloned(),
            covered_by: cover_term(ip).unwrap_or_else(|| "mx".to_string()),
            evidence: why.clone(),
        })
        .collect();

    // Everyone else: passed by a kept include (listed with the sources),
    // or failed.
    let mut would_fail = Vec::new();
    for (ip, s) in &by_ip {
        if legit.contains_key(ip) {
            continue;
        }
        let mut by_include = None;
        for (inc, _, _) in &kept {
            if passes(&checker, inc, *ip).await {
                by_include = Some(inc.clone());
                break;
            }
        }
        let in_nets = nets.iter().any(|n| n.contains(ip));
        if by_include.is_some() || in_nets {
            sources.push(Source {
                ip: ip.to_string(),
                volume: s.volume(),
                dkim_aligned: false,
                ptr: names.get(ip).cloned(),
                covered_by: cover_term(ip).unwrap_or_default(),
                evidence: "passed by an include of the record; no aligned DKIM seen from it".into(),
            });
            continue;
        }
        let ptr = names.get(ip).cloned();
        let (likely, reason) = judge(s, ptr.as_deref());
        would_fail.push(Failing { ip: ip.to_string(), volume: s.volume(), likely, ptr, reason });
    }
    sources.sort_by(|a, b| b.volume.cmp(&a.volume).then_with(|| a.ip.cmp(&b.ip)));
    would_fail.sort_by(|a, b| b.volume.cmp(&a.volume).then_with(|| a.ip.cmp(&b.ip)));
    if ev.senders.is_empty() && relayed == 0 {
        warnings.push(format!("no mail as {domain} was seen in the last {days} day(s): nothing to learn from yet"));
    }
    let includes = walks
        .iter()
        .map(|(inc, w, covers)| Include {
            include: inc.clone(),
            lookups: cost(w),
            covers: covers.len(),
            action: action.get(inc).copied().unwrap_or("dropped"),
        })
        .collect();
    Suggestion { domain, days, record, lookups, current, sources, would_fail, includes, warnings }
}

/// ` ip4:192.0.2.1` or ` ip4:192.0.2.0/31`: a whole address without its
/// length.
fn term(n: &IpNet) -> String {
    match n {
        IpNet::V4(v4) if v4.prefix_len() == 32 => format!(" ip4:{}", v4.addr()),
        IpNet::V4(v4) => format!(" ip4:{v4}"),
        IpNet::V6(v6) if v6.prefix_len() == 128 => format!(" ip6:{}", v6.addr()),
        IpNet::V6(v6) => format!(" ip6:{v6}"),
    }
}

/// Why a source that no legitimate evidence covers is failed: a spoofer
/// when nothing from it ever authenticated in any way; unknown otherwise.
pub fn judge(s: &SenderEvidence, ptr: Option<&str>) -> (&'static str, String) {
    let esp = ptr.and_then(esp::by_ptr).or_else(|| s.other_dkim.iter().chain(&s.other_spf).find_map(|d| esp::by_domain(d)));
    if let Some(e) = esp {
        return ("unknown", format!("a host of {} sending without aligned DKIM: set it up to sign as the domain", e.name));
    }
    if s.forwarded() > 0 {
        return ("unknown", format!("{} message(s) forwarded (ARC or reporter's override): forwarders need no SPF entry", s.forwarded()));
    }
    if s.spf_aligned() > 0 {
        return ("unknown", format!("passed SPF under the published record on {} message(s), never DKIM aligned", s.spf_aligned()));
    }
    if let Some(d) = s.other_dkim.iter().next() {
        return ("unknown", format!("DKIM-signed by {d}, not by the domain"));
    }
    ("spoofer", "never passed aligned SPF or DKIM".to_string())
}

/// The suggestion as an admin reads it.
pub fn render_text(s: &Suggestion) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    // ok (all the writes below): writing to a String cannot fail.
    let _ = writeln!(o, "Suggested SPF record for {} (learnt from the last {} days):\n", s.domain, s.days);
    let _ = writeln!(o, "  {}. IN TXT \"{}\"\n", s.domain, s.record);
    let _ = writeln!(o, "DNS lookups: {} of {MAX_LOOKUPS}", s.lookups);
    if s.current.is_empty() {
        let _ = writeln!(o, "Published now: no SPF record");
    }
    for c in &s.current {
        let _ = writeln!(o, "Published now: {c}");
    }
    for i in &s.includes {
        let _ = writeln!(o, "  include:{} ({} lookups, passes {} legitimate source(s)): {}", i.include, i.lookups, i.covers, i.action);
    }
    let _ = writeln!(o, "\nLegitimate sources it passes ({}):", s.sources.len());
    if !s.sources.is_empty() {
        let _ = writeln!(o, "  {:<39} {:>8}  {:<4} {:<32} {:<28} EVIDENCE", "IP", "VOLUME", "DKIM", "PTR", "COVERED BY");
    }
    for x in &s.sources {
        let _ = writeln!(
            o,
            "  {:<39} {:>8}  {:<4} {:<32} {:<28} {}",
            x.ip,
            x.volume,
            if x.dkim_aligned { "yes" } else { "no" },
            x.ptr.as_deref().unwrap_or("-"),
            x.covered_by,
            x.evidence
        );
    }
    let _ = writeln!(o, "\nSources it would fail ({}):", s.would_fail.len());
    if !s.would_fail.is_empty() {
        let _ = writeln!(o, "  {:<39} {:>8}  {:<8} {:<32} REASON", "IP", "VOLUME", "LIKELY", "PTR");
    }
    for x in &s.would_fail {
        let _ = writeln!(o, "  {:<39} {:>8}  {:<8} {:<32} {}", x.ip, x.volume, x.likely, x.ptr.as_deref().unwrap_or("-"), x.reason);
    }
    if !s.warnings.is_empty() {
        let _ = writeln!(o);
        for w in &s.warnings {
            let _ = writeln!(o, "warning: {w}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_drop_whole_address_lengths() {
        assert_eq!(term(&"192.0.2.1/32".parse().unwrap()), " ip4:192.0.2.1");
        assert_eq!(term(&"192.0.2.0/31".parse().unwrap()), " ip4:192.0.2.0/31");
        assert_eq!(term(&"2001:db8::1/128".parse().unwrap()), " ip6:2001:db8::1");
    }

    #[test]
    fn aggregation_never_widens_past_the_sources() {
        let nets: Vec<IpNet> =
            ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.9"].iter().map(|s| IpNet::from(s.parse::<IpAddr>().unwrap())).collect();
        let got: Vec<String> = IpNet::aggregate(&nets).iter().map(|n| term(n).trim().to_string()).collect();
        assert_eq!(got, vec!["ip4:192.0.2.1", "ip4:192.0.2.2/31", "ip4:192.0.2.9"]);
    }

    #[test]
    fn judge_tells_spoofers_from_unknowns() {
        let spoofer = SenderEvidence { ip: "192.0.2.7".into(), inbound: 3, inbound_fail: 3, ..Default::default() };
        assert_eq!(judge(&spoofer, None).0, "spoofer");
        assert_eq!(judge(&spoofer, Some("o1.sendgrid.net")).0, "unknown");
        let spf_only = SenderEvidence { reported: 2, reported_spf_aligned: 2, ..Default::default() };
        assert_eq!(judge(&spf_only, None).0, "unknown");
    }
}
