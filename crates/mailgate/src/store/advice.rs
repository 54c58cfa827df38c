//! The advisor's reads (`mailgate spf suggest`, `mailgate dmarc whatif`
//! and the dashboard's advice page): everything the store knows about who
//! sends as one header-from domain over a period, per source address, from
//! three places:
//!
//! - our own inbound evaluations (the hourly aggregates `eval_hourly`);
//! - the DMARC aggregate reports other receivers sent us (`report_rows`);
//! - the mail our users and trusted networks handed us to relay (the
//!   timeline's `messages`, whose `From:` is the domain): it leaves
//!   through our egress, `[server] public_addresses`.
//!
//! Only counts and result words come out; what they mean (legitimate,
//! spoofer) is the advisor's business.
//!
//! May import: the rest of `store`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::{Connection, params};
use serde::Serialize;

use super::read::ts;
use super::sqlite::Sqlite;
use super::{DkimAuth, Result, SpfAuth, StoreError};

/// What the store saw of one source address sending as the domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SenderEvidence {
    pub ip: String,
    /// Messages we received ourselves (our inbound evaluations).
    pub inbound: u64,
    pub inbound_spf_aligned: u64,
    pub inbound_dkim_aligned: u64,
    /// Neither aligned SPF nor aligned DKIM passed: DMARC fail.
    pub inbound_fail: u64,
    /// Failing messages we let through for a trusted ARC chain.
    pub inbound_forwarded: u64,
    /// Messages other receivers reported (DMARC aggregate reports).
    pub reported: u64,
    pub reported_spf_aligned: u64,
    pub reported_dkim_aligned: u64,
    pub reported_fail: u64,
    /// Failing messages a reporter said were forwarded or from a mailing
    /// list (override reason `forwarded`, `mailing_list`, `trusted_forwarder`).
    pub reported_forwarded: u64,
    /// How many distinct reports named this source.
    pub reports: u64,
    /// One HELO name seen (our own traffic only).
    pub helo: String,
    /// Domains whose DKIM signature passed without aligning with the
    /// domain (an ESP's own `d=`, a forwarder's).
    pub other_dkim: BTreeSet<String>,
    /// Envelope (SPF) domains that passed without aligning.
    pub other_spf: BTreeSet<String>,
}

impl SenderEvidence {
    pub fn volume(&self) -> u64 {
        self.inbound + self.reported
    }

    pub fn dkim_aligned(&self) -> u64 {
        self.inbound_dkim_aligned + self.reported_dkim_aligned
    }

    pub fn spf_aligned(&self) -> u64 {
        self.inbound_spf_aligned + self.reported_spf_aligned
    }

    /// Messages that failed DMARC (neither aligned SPF nor DKIM).
    pub fn failing(&self) -> u64 {
        self.inbound_fail + self.reported_fail
    }

    pub fn forwarded(&self) -> u64 {
        self.inbound_forwarded + self.reported_forwarded
    }
}

/// A client that handed us mail as the domain to relay (an authenticated
/// submission user, or a trusted network).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Submitter {
    pub ip: String,
    pub messages: u64,
    /// The AUTH users seen from it; empty for a trusted network.
    pub users: BTreeSet<String>,
}

/// Everything the advisor reads for one domain and period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// Busiest first.
    pub senders: Vec<SenderEvidence>,
    /// Busiest first.
    pub submitters: Vec<Submitter>,
    /// The earliest time anything counted was seen (Unix seconds); `None`
    /// when nothing was.
    pub first: Option<u64>,
}

impl Evidence {
    /// Messages we relayed as the domain: they left through our egress.
    pub fn relayed(&self) -> u64 {
        self.submitters.iter().map(|s| s.messages).sum()
    }
}

/// The advisor's queries; every [`super::Store`] has them.
pub trait AdviceStore {
    /// Who sent as `domain` (header-from) in `[from, to)`: our inbound
    /// evaluations (to the hour), the aggregate reports received whose
    /// period overlaps it, and the mail relayed for it.
    fn advice_evidence(&self, domain: &str, from: u64, to: u64) -> Result<Evidence>;
}

impl AdviceStore for Sqlite {
    fn advice_evidence(&self, domain: &str, from: u64, to: u64) -> Result<Evidence> {
        evidence(&self.reader(), domain, from, to)
    }
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Data(format!("bad JSON in the store: {e}")))
}

/// A DKIM or SPF domain aligns (relaxed, RFC 7489 §3.1): the same domain
/// or one under the other. The organisational-domain walk is not needed
/// to tell "aligned" from "someone else's": an ESP's `d=` shares nothing.
fn relaxed(a: &str, domain: &str) -> bool {
    let a = a.trim_end_matches('.').to_ascii_lowercase();
    a == domain || a.ends_with(&format!(".{domain}")) || domain.ends_with(&format!(".{a}"))
}

/// The domain as the advisor's queries compare it.
pub(super) fn normalize(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// An `eval_hourly` group: source IP, SPF aligned, DKIM aligned, override
/// reason, DKIM set id, SPF domain, SPF result, a HELO, count, first time.
pub(super) type InboundRow = (String, bool, bool, String, i64, String, String, String, u64, u64);
/// A received report row: report id, its begin, source IP, count, DKIM
/// and SPF evaluated, reasons, DKIM and SPF results (JSON).
pub(super) type ReportedRow = (i64, u64, String, u64, String, String, String, String, String);
/// Relayed mail: client IP, AUTH user, `From:`, count, first time.
pub(super) type SubmitterRow = (String, String, Option<String>, u64, u64);

/// What a store reads for [`evidence_from`].
pub(super) struct EvidenceRows {
    pub dkim_sets: HashMap<i64, Vec<DkimAuth>>,
    pub inbound: Vec<InboundRow>,
    pub reported: Vec<ReportedRow>,
    pub submitters: Vec<SubmitterRow>,
}

fn evidence(c: &Connection, domain: &str, from: u64, to: u64) -> Result<Evidence> {
    let domain = normalize(domain);
    let rows = EvidenceRows {
        dkim_sets: dkim_sets(c)?,
        inbound: inbound(c, &domain, from, to)?,
        reported: reported(c, &domain, from, to)?,
        submitters: submitters(c, &domain, from, to)?,
    };
    evidence_from(&domain, rows)
}

/// The evidence from the rows a store read for `domain` (normalized).
pub(super) fn evidence_from(domain: &str, rows: EvidenceRows) -> Result<Evidence> {
    let mut by_ip: BTreeMap<String, SenderEvidence> = BTreeMap::new();
    let mut first: Option<u64> = None;
    add_inbound(&rows.dkim_sets, rows.inbound, domain, &mut by_ip, &mut first);
    add_reported(rows.reported, domain, &mut by_ip, &mut first);
    let submitters = add_submitters(rows.submitters, domain, &mut first);
    let mut senders: Vec<SenderEvidence> = by_ip.into_values().collect();
    senders.sort_by(|a, b| b.volume().cmp(&a.volume()).then_with(|| a.ip.cmp(&b.ip)));
    Ok(Evidence { senders, submitters, first })
}

fn entry<'a>(by_ip: &'a mut BTreeMap<String, SenderEvidence>, ip: &str) -> &'a mut SenderEvidence {
    by_ip.entry(ip.to_string()).or_insert_with(|| SenderEvidence { ip: ip.to_string(), ..Default::default() })
}

fn dkim_sets(c: &Connection) -> Result<HashMap<i64, Vec<DkimAuth>>> {
    let mut dkim_sets: HashMap<i64, Vec<DkimAuth>> = HashMap::new();
    let mut st = c.prepare_cached("SELECT id, json FROM dkim_sets")?;
    for r in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
        let (id, j) = r?;
        dkim_sets.insert(id, from_json(&j)?);
    }
    Ok(dkim_sets)
}

fn inbound(c: &Connection, domain: &str, from: u64, to: u64) -> Result<Vec<InboundRow>> {
    let floor = from - from % 3600;
    let mut st = c.prepare_cached(
        "SELECT source_ip, spf_aligned, dkim_aligned, override_reason, dkim, spf_domain, spf_result, max(helo), sum(count), min(first)
         FROM eval_hourly WHERE header_from = ?1 AND hour >= ?2 AND hour < ?3
         GROUP BY source_ip, spf_aligned, dkim_aligned, override_reason, dkim, spf_domain, spf_result",
    )?;
    let rows = st.query_map(params![domain, ts(floor), ts(to)], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, bool>(1)?,
            r.get::<_, bool>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, u64>(8)?,
            r.get::<_, u64>(9)?,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn add_inbound(
    dkim_sets: &HashMap<i64, Vec<DkimAuth>>,
    rows: Vec<InboundRow>,
    domain: &str,
    by_ip: &mut BTreeMap<String, SenderEvidence>,
    first: &mut Option<u64>,
) {
    for (ip, spf_aligned, dkim_aligned, reason, dkim, spf_domain, spf_result, helo, count, seen) in rows {
        *first = Some(first.map_or(seen, |f| f.min(seen)));
        let s = entry(by_ip, &ip);
        s.inbound += count;
        if spf_aligned {
            s.inbound_spf_aligned += count;
        }
        if dkim_aligned {
            s.inbound_dkim_aligned += count;
        }
        if !spf_aligned && !dkim_aligned {
            s.inbound_fail += count;
            if reason == "trusted_forwarder" {
                s.inbound_forwarded += count;
            }
        }
        if s.helo.is_empty() {
            s.helo = helo;
        }
        for d in dkim_sets.get(&dkim).into_iter().flatten() {
            if d.result == "pass" && !relaxed(&d.domain, domain) {
                s.other_dkim.insert(d.domain.to_ascii_lowercase());
            }
        }
        if spf_result == "pass" && !spf_domain.is_empty() && !relaxed(&spf_domain, domain) {
            s.other_spf.insert(spf_domain.to_ascii_lowercase());
        }
    }
}

fn reported(c: &Connection, domain: &str, from: u64, to: u64) -> Result<Vec<ReportedRow>> {
    // A report row is about the domain when its header-from is (an empty
    // one, seen from some reporters, falls back to the policy domain).
    let mut st = c.prepare_cached(
        "SELECT r.id, r.begin, x.source_ip, x.count, x.dkim_evaluated, x.spf_evaluated, x.reasons, x.dkim, x.spf
         FROM report_rows x JOIN reports r ON r.id = x.report
         WHERE r.kind = 'dmarc' AND r.end > ?2 AND r.begin < ?3
           AND (lower(x.header_from) = ?1 OR (x.header_from = '' AND r.policy_domain = ?1))",
    )?;
    let rows = st.query_map(params![domain, ts(from), ts(to)], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, u64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, u64>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, String>(8)?,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn add_reported(rows: Vec<ReportedRow>, domain: &str, by_ip: &mut BTreeMap<String, SenderEvidence>, first: &mut Option<u64>) {
    let mut reports_per_ip: HashMap<String, BTreeSet<i64>> = HashMap::new();
    for (id, begin, ip, count, dkim_eval, spf_eval, reasons, dkim, spf) in rows {
        // A row without a source address says nothing about a sender.
        let Ok(addr) = ip.parse::<std::net::IpAddr>() else { continue };
        let ip = addr.to_string();
        *first = Some(first.map_or(begin, |f| f.min(begin)));
        reports_per_ip.entry(ip.clone()).or_default().insert(id);
        let reasons: Vec<String> = from_json(&reasons).unwrap_or_default();
        let dkim: Vec<DkimAuth> = from_json(&dkim).unwrap_or_default();
        let spf: Vec<SpfAuth> = from_json(&spf).unwrap_or_default();
        let s = entry(by_ip, &ip);
        s.reported += count;
        // policy_evaluated is the reporter's alignment verdict; a reporter
        // that leaves it out still shows a passing aligned signature.
        let dkim_aligned = dkim_eval == "pass" || dkim.iter().any(|d| d.result == "pass" && relaxed(&d.domain, domain));
        let spf_aligned = spf_eval == "pass";
        if dkim_aligned {
            s.reported_dkim_aligned += count;
        }
        if spf_aligned {
            s.reported_spf_aligned += count;
        }
        if !dkim_aligned && !spf_aligned {
            s.reported_fail += count;
            if reasons.iter().any(|r| matches!(r.as_str(), "forwarded" | "mailing_list" | "trusted_forwarder")) {
                s.reported_forwarded += count;
            }
        }
        for d in &dkim {
            if d.result == "pass" && !relaxed(&d.domain, domain) {
                s.other_dkim.insert(d.domain.to_ascii_lowercase());
            }
        }
        for x in &spf {
            if x.result == "pass" && !x.domain.is_empty() && !relaxed(&x.domain, domain) {
                s.other_spf.insert(x.domain.to_ascii_lowercase());
            }
        }
    }
    for (ip, ids) in reports_per_ip {
        entry(by_ip, &ip).reports = ids.len() as u64;
    }
}

/// The domain of a `From:` field as the timeline keeps it (`Name <a@d>`
/// or `a@d`), lower case.
fn from_domain(from: &str) -> Option<String> {
    let addr = match (from.rfind('<'), from.rfind('>')) {
        (Some(a), Some(b)) if a < b => &from[a + 1..b],
        _ => from,
    };
    addr.rsplit_once('@').map(|(_, d)| d.trim().trim_end_matches('.').to_ascii_lowercase())
}

fn submitters(c: &Connection, domain: &str, from: u64, to: u64) -> Result<Vec<SubmitterRow>> {
    // `inbound` is false for mail handed to us to relay (submission, a
    // trusted network). The LIKE only narrows the scan; the domain is
    // compared exactly below.
    let mut st = c.prepare_cached(
        "SELECT client_ip, coalesce(json_extract(detail, '$.auth_user'), ''), json_extract(detail, '$.from'), count(*), min(time)
         FROM messages
         WHERE time >= ?1 AND time < ?2 AND action <> 'refused' AND json_extract(detail, '$.inbound') = 0
           AND json_extract(detail, '$.from') LIKE ?3
         GROUP BY 1, 2, 3",
    )?;
    let rows = st.query_map(params![ts(from), ts(to), format!("%@{domain}%")], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, u64>(3)?, r.get::<_, u64>(4)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn add_submitters(rows: Vec<SubmitterRow>, domain: &str, first: &mut Option<u64>) -> Vec<Submitter> {
    let mut by_ip: BTreeMap<String, Submitter> = BTreeMap::new();
    for (ip, user, from_field, count, seen) in rows {
        if from_field.as_deref().and_then(from_domain).as_deref() != Some(domain) {
            continue;
        }
        *first = Some(first.map_or(seen, |f| f.min(seen)));
        let s = by_ip.entry(ip.clone()).or_insert_with(|| Submitter { ip, ..Default::default() });
        s.messages += count;
        if !user.is_empty() {
            s.users.insert(user);
        }
    }
    let mut out: Vec<Submitter> = by_ip.into_values().collect();
    out.sort_by(|a, b| b.messages.cmp(&a.messages).then_with(|| a.ip.cmp(&b.ip)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::timeline::MessageRecord;
    use crate::store::{Evaluation, Event, IngestedReport, ReportKind, ReportRow, Store, TimelineEvent, sqlite::FILE, sqlite::Sqlite};

    fn eval(time: u64, ip: &str, dkim: &[(&str, &str)], spf_aligned: bool, reason: Option<&str>) -> Event {
        let dkim: Vec<DkimAuth> =
            dkim.iter().map(|(d, r)| DkimAuth { domain: d.to_string(), selector: "s".into(), result: r.to_string() }).collect();
        let dkim_aligned = dkim.iter().any(|d| d.result == "pass" && relaxed(&d.domain, "a.test"));
        Event::Evaluation(Box::new(Evaluation {
            time,
            source_ip: ip.parse().unwrap(),
            helo: "h.test".into(),
            envelope_from: "a.test".into(),
            header_from: "a.test".into(),
            spf: SpfAuth { domain: "a.test".into(), scope: "mfrom".into(), result: if spf_aligned { "pass" } else { "fail" }.into() },
            dkim,
            arc: "none".into(),
            dmarc: if spf_aligned || dkim_aligned { "pass" } else { "fail" }.into(),
            spf_aligned,
            dkim_aligned,
            disposition: "none".into(),
            policy: None,
            override_reason: reason.map(str::to_string),
            lookalike: Vec::new(),
        }))
    }

    fn row(ip: &str, count: u64, dkim: (&str, &str), dkim_eval: &str, header_from: &str) -> ReportRow {
        ReportRow {
            source_ip: ip.into(),
            count,
            disposition: "none".into(),
            dkim_evaluated: dkim_eval.into(),
            spf_evaluated: "fail".into(),
            reasons: Vec::new(),
            header_from: header_from.into(),
            envelope_from: String::new(),
            dkim: vec![DkimAuth { domain: dkim.0.into(), selector: "s".into(), result: dkim.1.into() }],
            spf: Vec::new(),
        }
    }

    #[test]
    fn evidence_joins_evaluations_reports_and_relayed_mail() {
        let dir = tempfile::tempdir().unwrap();
        let store = Sqlite::open(&dir.path().join(FILE), "n1").unwrap();
        let t = 10 * 3600;
        store
            .write(&[
                eval(t, "192.0.2.1", &[("a.test", "pass")], false, None),
                eval(t + 1, "192.0.2.1", &[], false, None),
                eval(t + 2, "192.0.2.2", &[("esp.test", "pass")], false, Some("trusted_forwarder")),
                eval(t + 3, "192.0.2.3", &[], true, None),
                // Outside the period.
                eval(t + 5000, "192.0.2.9", &[], false, None),
                Event::Timeline(Box::new(TimelineEvent::Message(MessageRecord {
                    time: t,
                    event_id: "q1".into(),
                    client_ip: "10.0.0.5".into(),
                    auth_user: Some("alice".into()),
                    from: "Alice <alice@A.test>".into(),
                    action: "accepted".into(),
                    inbound: false,
                    ..Default::default()
                }))),
                Event::Timeline(Box::new(TimelineEvent::Message(MessageRecord {
                    time: t,
                    event_id: "q2".into(),
                    client_ip: "10.0.0.6".into(),
                    from: "x@a.test.evil.test".into(),
                    action: "accepted".into(),
                    inbound: false,
                    ..Default::default()
                }))),
            ])
            .unwrap();
        store
            .insert_report(&IngestedReport {
                kind: ReportKind::Dmarc,
                org_name: "big".into(),
                report_id: "1".into(),
                email: String::new(),
                begin: t - 100,
                end: t + 100,
                policy_domain: "a.test".into(),
                policy: None,
                rows: vec![
                    row("192.0.2.1", 4, ("a.test", "pass"), "pass", "a.test"),
                    row("198.51.100.7", 3, ("other.test", "fail"), "fail", "a.test"),
                    row("198.51.100.8", 9, ("a.test", "pass"), "pass", "b.test"),
                ],
                tls: Vec::new(),
            })
            .unwrap();
        let ev = store.advice_evidence("a.test", t, t + 3600).unwrap();
        let by: BTreeMap<&str, &SenderEvidence> = ev.senders.iter().map(|s| (s.ip.as_str(), s)).collect();
        assert_eq!(by.keys().copied().collect::<Vec<_>>(), ["192.0.2.1", "192.0.2.2", "192.0.2.3", "198.51.100.7"]);
        let one = by["192.0.2.1"];
        assert_eq!((one.inbound, one.inbound_dkim_aligned, one.inbound_fail, one.reported, one.reported_dkim_aligned), (2, 1, 1, 4, 4));
        assert_eq!((one.volume(), one.dkim_aligned(), one.failing(), one.reports), (6, 5, 1, 1));
        let fwd = by["192.0.2.2"];
        assert_eq!((fwd.inbound_fail, fwd.inbound_forwarded), (1, 1));
        assert!(fwd.other_dkim.contains("esp.test"));
        assert_eq!((by["192.0.2.3"].inbound_spf_aligned, by["192.0.2.3"].failing()), (1, 0));
        assert_eq!(by["198.51.100.7"].reported_fail, 3);
        assert_eq!(ev.submitters.len(), 1, "{:?}", ev.submitters);
        assert_eq!((ev.submitters[0].ip.as_str(), ev.relayed()), ("10.0.0.5", 1));
        assert!(ev.submitters[0].users.contains("alice"));
        assert_eq!(ev.first, Some(t - 100));
    }

    #[test]
    fn from_domain_reads_both_forms() {
        assert_eq!(from_domain("News <news@Example.TEST>").as_deref(), Some("example.test"));
        assert_eq!(from_domain("news@example.test").as_deref(), Some("example.test"));
        assert_eq!(from_domain("no address"), None);
    }

    #[test]
    fn relaxed_alignment() {
        assert!(relaxed("mail.example.test", "example.test"));
        assert!(relaxed("EXAMPLE.test", "example.test"));
        assert!(!relaxed("sendgrid.net", "example.test"));
        assert!(!relaxed("badexample.test", "example.test"));
    }
}
