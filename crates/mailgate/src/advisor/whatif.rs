//! `mailgate dmarc whatif DOMAIN --policy quarantine|reject`: which
//! senders the policy would have quarantined or rejected over the last N
//! days, from the report store (our inbound evaluations and the aggregate
//! reports received), with the volumes affected, split into legitimate
//! senders to fix first and unauthenticated ones the policy is for; and
//! the staged plan `p=none` → `quarantine` → `reject` with each step's
//! readiness criterion.
//!
//! A message fails DMARC when neither aligned SPF nor aligned DKIM passed
//! (RFC 7489 §4.2): exactly the messages a policy acts on.
//!
//! May import: `store`, `config`, `advisor`, hickory.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use serde::Serialize;

use super::esp;
use super::suggest::{DAY, ptrs};
use super::suggest_dns;
use crate::config::Config;
use crate::store::advice::{Evidence, SenderEvidence};
use crate::store::unix_now;

/// The share of the domain's mail that may still fail from legitimate
/// senders when tightening: 0.1%.
pub const READY_SHARE: f64 = 0.001;
/// Days of reports a step needs before the next.
pub const OBSERVE_DAYS: u64 = 14;
/// Days at `quarantine` before `reject`.
pub const QUARANTINE_DAYS: u64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Quarantine,
    Reject,
}

impl Policy {
    pub fn parse(s: &str) -> Option<Policy> {
        match s.to_ascii_lowercase().as_str() {
            "quarantine" => Some(Policy::Quarantine),
            "reject" => Some(Policy::Reject),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Quarantine => "quarantine",
            Policy::Reject => "reject",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Policy::Quarantine => "quarantined",
            Policy::Reject => "rejected",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Sender {
    pub ip: String,
    /// Its messages that failed DMARC: what the policy would have hit.
    pub volume: u64,
    /// `legitimate` or `unauthenticated`.
    pub class: &'static str,
    pub reason: String,
    pub ptr: Option<String>,
    /// All its messages as the domain, failing or not.
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: usize,
    /// `none`, `quarantine`, `reject`.
    pub policy: &'static str,
    /// The DMARC record to publish at this step.
    pub record: String,
    /// What must hold before moving to this step.
    pub criterion: String,
    /// `done`, `ready`, `not yet`.
    pub status: &'static str,
    /// Where the domain stands against the criterion.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct WhatIf {
    pub domain: String,
    pub policy: Policy,
    pub days: u64,
    /// The DMARC record published now.
    pub published: Option<String>,
    /// Every message seen as the domain (ours, reported, relayed).
    pub messages: u64,
    /// Failing messages: what the policy would have hit.
    pub failing: u64,
    pub legitimate_failing: u64,
    pub unauthenticated_failing: u64,
    /// Days of data behind the figures.
    pub observed_days: u64,
    /// Failing senders, busiest first.
    pub senders: Vec<Sender>,
    pub plan: Vec<Step>,
}

/// Why a failing sender is legitimate, if it is.
fn legitimate(s: &SenderEvidence, ptr: Option<&str>, ours: bool) -> Option<String> {
    if ours {
        return Some("our own egress or a submission client: sign its mail with DKIM as the domain".into());
    }
    if s.dkim_aligned() > 0 {
        return Some(format!(
            "aligned DKIM on {} other message(s) from it: find why {} of its message(s) were not signed as the domain (or were altered)",
            s.dkim_aligned(),
            s.failing()
        ));
    }
    if s.forwarded() > 0 {
        return Some(format!("{} message(s) forwarded (trusted ARC chain or the reporter's override)", s.forwarded()));
    }
    if let Some(e) = ptr.and_then(esp::by_ptr) {
        return Some(format!("known ESP {} (PTR {}): set it up to sign as the domain", e.name, ptr.unwrap_or_default()));
    }
    if let Some((d, e)) = s.other_dkim.iter().chain(&s.other_spf).find_map(|d| esp::by_domain(d).map(|e| (d, e))) {
        return Some(format!("known ESP {} (authenticated as {d}): set it up to sign as the domain", e.name));
    }
    None
}

/// The what-if for `domain` from `ev` (read with `suggest::evidence`).
pub async fn whatif(config: &Config, resolver: &TokioResolver, domain: &str, policy: Policy, days: u64, ev: &Evidence) -> WhatIf {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let failing_ips: Vec<IpAddr> = ev.senders.iter().filter(|s| s.failing() > 0).filter_map(|s| s.ip.parse().ok()).collect();
    let names = ptrs(resolver, failing_ips).await;
    let ours: Vec<String> =
        config.public_addresses.iter().map(|i| i.to_string()).chain(ev.submitters.iter().map(|s| s.ip.clone())).collect();
    let mut senders = Vec::new();
    let (mut legit_failing, mut unauth_failing) = (0, 0);
    for s in ev.senders.iter().filter(|s| s.failing() > 0) {
        let ptr = s.ip.parse::<IpAddr>().ok().and_then(|ip| names.get(&ip).cloned());
        let (class, reason) = match legitimate(s, ptr.as_deref(), ours.contains(&s.ip)) {
            Some(why) => {
                legit_failing += s.failing();
                ("legitimate", why)
            }
            None => {
                unauth_failing += s.failing();
                let why = if s.spf_aligned() > 0 {
                    format!("passed aligned SPF on {} other message(s) only, never aligned DKIM", s.spf_aligned())
                } else {
                    "never passed aligned SPF or DKIM".to_string()
                };
                ("unauthenticated", why)
            }
        };
        senders.push(Sender { ip: s.ip.clone(), volume: s.failing(), class, reason, ptr, total: s.volume() });
    }
    senders.sort_by(|a, b| a.class.cmp(b.class).then(b.volume.cmp(&a.volume)).then_with(|| a.ip.cmp(&b.ip)));
    let messages: u64 = ev.senders.iter().map(|s| s.volume()).sum::<u64>() + ev.relayed();
    let observed_days = ev.first.map_or(0, |f| unix_now().saturating_sub(f) / DAY);
    let published = suggest_dns::dmarc_record(resolver, &domain).await;
    let plan = plan(&domain, published.as_deref(), messages, legit_failing, observed_days);
    WhatIf {
        domain,
        policy,
        days,
        published,
        messages,
        failing: legit_failing + unauth_failing,
        legitimate_failing: legit_failing,
        unauthenticated_failing: unauth_failing,
        observed_days,
        senders,
        plan,
    }
}

/// The `p=` of a DMARC record.
fn published_policy(record: &str) -> Option<String> {
    record.split(';').find_map(|t| {
        let (k, v) = t.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("p")).then(|| v.trim().to_ascii_lowercase())
    })
}

fn plan(domain: &str, published: Option<&str>, messages: u64, legit_failing: u64, observed: u64) -> Vec<Step> {
    let p = published.and_then(published_policy);
    let rank = |p: &str| match p {
        "none" => 1,
        "quarantine" => 2,
        "reject" => 3,
        _ => 0,
    };
    let at = p.as_deref().map_or(0, rank);
    let share = if messages == 0 { 0.0 } else { legit_failing as f64 / messages as f64 };
    let share_text = format!("{legit_failing} of {messages} message(s) ({:.3}%) fail DMARC from legitimate senders", share * 100.0);
    let clean = messages > 0 && share < READY_SHARE;
    let rua = format!("rua=mailto:dmarc-reports@{domain}");
    let status = |step: usize, ready: bool| {
        if at >= step {
            "done"
        } else if ready {
            "ready"
        } else {
            "not yet"
        }
    };
    vec![
        Step {
            step: 1,
            policy: "none",
            record: format!("v=DMARC1; p=none; {rua}"),
            criterion: "publish it and collect aggregate reports; mailgate ingests them (`[reports] ingest`)".into(),
            status: status(1, true),
            detail: match &p {
                Some(p) => format!("published now: p={p}"),
                None => "no DMARC record published".into(),
            },
        },
        Step {
            step: 2,
            policy: "quarantine",
            record: format!("v=DMARC1; p=quarantine; {rua}"),
            criterion: format!(
                "legitimate failing volume < {}% of the domain's mail for {OBSERVE_DAYS} days (fix each legitimate sender: DKIM-sign as the domain, or list it in SPF, see `mailgate spf suggest`)",
                READY_SHARE * 100.0
            ),
            status: status(2, at >= 1 && clean && observed >= OBSERVE_DAYS),
            detail: format!("{share_text}, over {observed} day(s) of data"),
        },
        Step {
            step: 3,
            policy: "reject",
            record: format!("v=DMARC1; p=reject; {rua}"),
            criterion: format!(
                "{QUARANTINE_DAYS} days at p=quarantine with legitimate failing volume still < {}% and no legitimate mail found in quarantine",
                READY_SHARE * 100.0
            ),
            status: status(3, at >= 2 && clean && observed >= QUARANTINE_DAYS),
            detail: format!("{share_text}, over {observed} day(s) of data"),
        },
    ]
}

/// The what-if as an admin reads it.
pub fn render_text(w: &WhatIf) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    // ok (all the writes below): writing to a String cannot fail.
    let _ = writeln!(o, "DMARC what-if for {}: p={} over the last {} days\n", w.domain, w.policy.as_str(), w.days);
    let _ = writeln!(o, "Published now: {}", w.published.as_deref().unwrap_or("no DMARC record"));
    let _ = writeln!(
        o,
        "Messages as the domain: {}; failing DMARC, would have been {}: {} ({} legitimate, {} unauthenticated)\n",
        w.messages,
        w.policy.verb(),
        w.failing,
        w.legitimate_failing,
        w.unauthenticated_failing
    );
    for class in ["legitimate", "unauthenticated"] {
        let list: Vec<&Sender> = w.senders.iter().filter(|s| s.class == class).collect();
        let _ = writeln!(o, "{} senders ({}):", if class == "legitimate" { "Legitimate" } else { "Unauthenticated" }, list.len());
        if !list.is_empty() {
            let _ = writeln!(o, "  {:<39} {:>8} {:>8}  {:<32} REASON", "IP", "FAILING", "TOTAL", "PTR");
        }
        for s in list {
            let _ = writeln!(o, "  {:<39} {:>8} {:>8}  {:<32} {}", s.ip, s.volume, s.total, s.ptr.as_deref().unwrap_or("-"), s.reason);
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "Plan:");
    for s in &w.plan {
        let _ = writeln!(o, "  {}. p={:<11} [{}]  {}", s.step, s.policy, s.status, s.record);
        let _ = writeln!(o, "     when: {}", s.criterion);
        let _ = writeln!(o, "     now:  {}", s.detail);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_steps_follow_the_published_policy() {
        let steps = plan("example.test", Some("v=DMARC1; p=none; rua=mailto:x@example.test"), 10_000, 0, 20);
        assert_eq!(steps.iter().map(|s| s.status).collect::<Vec<_>>(), vec!["done", "ready", "not yet"]);
        let steps = plan("example.test", Some("v=DMARC1; p=none"), 10_000, 50, 20);
        assert_eq!(steps[1].status, "not yet", "0.5% legitimate failing is too much");
        let steps = plan("example.test", None, 0, 0, 0);
        assert_eq!(steps[0].status, "ready");
    }

    #[test]
    fn legitimate_needs_evidence() {
        let spoof = SenderEvidence { ip: "192.0.2.9".into(), inbound: 2, inbound_fail: 2, ..Default::default() };
        assert!(legitimate(&spoof, None, false).is_none());
        assert!(legitimate(&spoof, Some("o1.sendgrid.net"), false).is_some());
        assert!(legitimate(&spoof, None, true).is_some());
        let signer = SenderEvidence { reported: 5, reported_dkim_aligned: 4, reported_fail: 1, ..Default::default() };
        assert!(legitimate(&signer, None, false).is_some());
    }
}
