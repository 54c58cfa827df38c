//! DMARC (RFC 9989) as published: policy discovery by the DNS tree walk
//! (§4.10), the organisational domain (`report::dest::organizational`),
//! the policy that applies to the domain checked (`p` at the record's own
//! name, else `sp`, or `np` for a name that does not exist), alignment
//! modes, `t=y`, the `rua`/`ruf` URIs and the external-destination
//! authorisation records (`<domain>._report._dmarc.<dest>`), and the tags
//! RFC 9989 removed (`pct`, `rf`, `ri`). The record is parsed by
//! mail-auth; the tags it ignores are read here.
//! May import: `report::dest`, `advisor::lookup`.

use hickory_resolver::TokioResolver;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::dmarc::{Alignment, Dmarc, Policy};
use serde::Serialize;

use super::Finding;
use super::lookup::{self, Answer};
use crate::report::dest;

const CHECK: &str = "dmarc";

#[derive(Debug, Clone, Default, Serialize)]
pub struct DmarcReport {
    pub record: Option<String>,
    /// The policy for the domain checked: `none`, `quarantine` or `reject`.
    pub policy: Option<&'static str>,
    pub org_domain: Option<String>,
    /// Where the record was found (the domain or a name above it).
    pub found_at: Option<String>,
    #[serde(skip)]
    pub findings: Vec<Finding>,
}

fn word(p: Policy) -> Option<&'static str> {
    match p {
        Policy::None => Some("none"),
        Policy::Quarantine => Some("quarantine"),
        Policy::Reject => Some("reject"),
        Policy::Unspecified => None,
    }
}

fn is_dmarc1(record: &str) -> bool {
    let r = record.trim_start();
    r.strip_prefix("v=DMARC1").is_some_and(|rest| rest.trim_start().is_empty() || rest.trim_start().starts_with(';'))
}

fn tags(record: &str) -> Vec<(String, String)> {
    record.split(';').filter_map(|t| t.split_once('=')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect()
}

/// The names the §4.10 walk asks, in order: the domain, then (from eight
/// labels or more) its seven-label suffix, then one label fewer each time.
pub fn walk_names(domain: &str) -> Vec<String> {
    let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
    let total = labels.len();
    let mut out = vec![labels.join(".")];
    let mut count = if total >= 8 { 7 } else { total.saturating_sub(1) };
    while count >= 1 {
        out.push(labels[total - count..].join("."));
        count -= 1;
    }
    out
}

/// `mailto:local@host[!size]`; `Err` says what is wrong.
fn mailto(uri: &str) -> Result<String, String> {
    let Some((scheme, rest)) = uri.split_once(':') else { return Err(format!("{uri:?} has no URI scheme (mailto:)")) };
    if !scheme.eq_ignore_ascii_case("mailto") {
        return Err(format!("{uri:?}: only mailto: URIs receive reports"));
    }
    let (address, size) = match rest.rsplit_once('!') {
        Some((a, s)) => (a, Some(s)),
        None => (rest, None),
    };
    if let Some(s) = size {
        let digits = s.trim_end_matches(['k', 'm', 'g', 't', 'K', 'M', 'G', 'T']);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || s.len() > digits.len() + 1 {
            return Err(format!("{uri:?}: the size limit {s:?} is not digits with an optional k, m, g or t"));
        }
    }
    let Some((local, host)) = address.rsplit_once('@') else { return Err(format!("{uri:?}: {address:?} is not an address")) };
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if local.is_empty() || !host_ok || address.contains(char::is_whitespace) {
        return Err(format!("{uri:?}: {address:?} is not an address"));
    }
    Ok(host.trim_end_matches('.').to_ascii_lowercase())
}

pub async fn check(resolver: &TokioResolver, domain: &str) -> DmarcReport {
    let mut report = DmarcReport::default();
    let mut f = Vec::new();
    let mut found: Option<(String, String)> = None;
    for name in walk_names(domain) {
        let records: Vec<String> = match lookup::txt(resolver, &format!("_dmarc.{name}")).await {
            Answer::Found(r) => r.into_iter().filter(|r| is_dmarc1(r)).collect(),
            Answer::Failed(e) => {
                f.push(Finding::error(CHECK, "dmarc-lookup-failed", e, format!("make the name servers of {name} answer TXT queries")));
                report.findings = f;
                return report;
            }
            _ => Vec::new(),
        };
        match records.as_slice() {
            [] => continue,
            [one] => {
                found = Some((name, one.clone()));
                break;
            }
            many => {
                // §4.10: more than one record at a name is no record at all.
                f.push(Finding::error(
                    CHECK,
                    "dmarc-multiple-records",
                    format!("_dmarc.{name} has {} DMARC records: receivers use none of them", many.len()),
                    format!("keep one v=DMARC1 record at _dmarc.{name}"),
                ));
                report.findings = f;
                return report;
            }
        }
    }
    report.org_domain = dest::organizational(resolver, domain).await.ok();
    let Some((at, text)) = found else {
        f.push(Finding::error(
            CHECK,
            "dmarc-missing",
            format!("no DMARC record at _dmarc.{domain} or any name above it"),
            format!("publish \"_dmarc.{domain}. IN TXT \\\"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}\\\"\" and tighten p= as reports allow"),
        ));
        report.findings = f;
        return report;
    };
    report.record = Some(text.clone());
    report.found_at = Some(at.clone());
    let parsed = match Dmarc::parse(text.as_bytes()) {
        Ok(d) => d,
        Err(e) => {
            f.push(Finding::error(
                CHECK,
                "dmarc-syntax",
                format!("_dmarc.{at}: {e}, in \"{text}\""),
                "correct the record: p=none|quarantine|reject, adkim/aspf=r|s, rua=mailto:...",
            ));
            report.findings = f;
            return report;
        }
    };
    let inherited = at != domain;
    let applies = if !inherited {
        parsed.p
    } else if matches!(lookup::addresses(resolver, domain).await, Answer::NoName) {
        parsed.np
    } else {
        parsed.sp
    };
    report.policy = word(applies);
    let source = if inherited { format!(" (inherited from _dmarc.{at})") } else { String::new() };
    f.push(Finding::ok(CHECK, "dmarc-record", format!("\"{text}\"{source}")));
    match applies {
        Policy::Unspecified => f.push(Finding::warning(
            CHECK,
            "dmarc-no-policy",
            format!("the record at _dmarc.{at} has no p= tag"),
            "add p=none to start monitoring, then quarantine or reject",
        )),
        Policy::None => f.push(Finding::warning(
            CHECK,
            "dmarc-policy-none",
            format!("the policy for {domain} is none{source}: spoofed mail is only reported, not stopped"),
            "move to p=quarantine, then p=reject, once the aggregate reports show every legitimate sender aligned",
        )),
        Policy::Quarantine | Policy::Reject => {
            f.push(Finding::ok(CHECK, "dmarc-policy", format!("the policy for {domain} is {}{source}", word(applies).unwrap_or("?"))))
        }
    }
    if parsed.t {
        f.push(Finding::warning(
            CHECK,
            "dmarc-testing",
            "t=y: receivers apply the next-lower policy while you test (RFC 9989)",
            "remove t=y once the reports show the policy is safe",
        ));
    }
    let mode = |a: Alignment| if a == Alignment::Strict { "strict" } else { "relaxed" };
    f.push(Finding::ok(CHECK, "dmarc-alignment", format!("DKIM alignment {}, SPF alignment {}", mode(parsed.adkim), mode(parsed.aspf))));
    let tags = tags(&text);
    for removed in ["pct", "rf", "ri"] {
        if let Some((_, v)) = tags.iter().find(|(k, _)| k == removed) {
            let why = match removed {
                "pct" => "sampling is gone; use t=y to test a policy",
                "rf" => "failure reports have one format",
                _ => "aggregate reports are sent daily",
            };
            f.push(Finding::warning(
                CHECK,
                "dmarc-removed-tag",
                format!("{removed}={v}: RFC 9989 removed this tag ({why}); receivers ignore it"),
                format!("remove {removed}= from the record"),
            ));
        }
    }
    let rua = tags.iter().find(|(k, _)| k == "rua").map(|(_, v)| v.clone());
    if rua.as_deref().is_none_or(|v| v.trim().is_empty()) {
        f.push(Finding::warning(
            CHECK,
            "dmarc-no-rua",
            "no rua=: you get no aggregate reports, so you cannot tell who sends as you",
            format!("add rua=mailto:dmarc-reports@{domain}"),
        ));
    }
    for (tag, value) in tags.iter().filter(|(k, _)| k == "rua" || k == "ruf") {
        for uri in value.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let host = match mailto(uri) {
                Ok(h) => h,
                Err(e) => {
                    f.push(Finding::error(
                        CHECK,
                        "dmarc-uri-syntax",
                        format!("{tag}: {e}"),
                        format!("write {tag}= as mailto:name@domain[!size], separated by commas"),
                    ));
                    continue;
                }
            };
            match dest::authorized(resolver, &at, &host).await {
                Ok(true) => f.push(Finding::ok(CHECK, "dmarc-destination", format!("{tag} {uri} may receive reports for {at}"))),
                Ok(false) => f.push(Finding::warning(
                    CHECK,
                    "dmarc-external-unauthorized",
                    format!("{tag} {uri} is outside {at} and {at}._report._dmarc.{host} has no v=DMARC1 record: receivers will not send it reports"),
                    format!("have {host} publish \"{at}._report._dmarc.{host}. IN TXT \\\"v=DMARC1\\\"\", or report to an address at {at}"),
                )),
                Err(e) => f.push(Finding::error(CHECK, "dmarc-lookup-failed", e, format!("make the name servers of {host} answer TXT queries"))),
            }
        }
    }
    report.findings = f;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk() {
        assert_eq!(walk_names("a.b.example.com"), ["a.b.example.com", "b.example.com", "example.com", "com"]);
        assert_eq!(walk_names("example.com"), ["example.com", "com"]);
        let long = "1.2.3.4.5.6.7.8.9.test";
        let names = walk_names(long);
        assert_eq!(names[1], "4.5.6.7.8.9.test");
        assert_eq!(names.len(), 8);
    }

    #[test]
    fn uris() {
        assert_eq!(mailto("mailto:a@Example.com!10m").as_deref(), Ok("example.com"));
        assert!(mailto("a@example.com").is_err());
        assert!(mailto("https://example.com/").is_err());
        assert!(mailto("mailto:a@example.com!x").is_err());
        assert!(mailto("mailto:example.com").is_err());
    }
}
