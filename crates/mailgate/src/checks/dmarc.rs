//! DMARC (RFC 7489, RFC 9989) through mail-auth: the policy is found by the
//! RFC 9989 DNS tree walk, identifiers are aligned strictly or relaxed,
//! and `p`, `sp`, `np` and `t` pick the policy that applies. mailgate
//! feeds it only results its own rules let pass (see `checks::dkim`), and
//! only an author that `checks::author` found unambiguous.
//!
//! Policy records are kept parsed in a [`KeyCache`] for their TTL. mail-auth
//! keeps only records it found; the names of the author domain's tree
//! walk it found nothing at are looked at again here (an answer hickory has just cached) and kept
//! as absent for the SOA minimum (RFC 2308, at most five minutes), so a
//! repeated author domain costs no DNS lookup at all. A `_dmarc` name that
//! is a CNAME loop, which hickory reports as "no records", is a temperror.

use hickory_resolver::proto::rr::Name;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{AuthenticatedMessage, DkimOutput, DmarcResult, MessageAuthenticator, SpfOutput};
use mail_auth::{DnsError, Error, Parameters, ResolverCache, Txt};

use super::dkim::KeyCache;
use serde::Serialize;

/// The DMARC verdict on one message.
#[derive(Debug, Clone, Serialize)]
pub struct Dmarc {
    /// `pass`, `fail`, `none`, `temperror` or `permerror`.
    pub result: &'static str,
    pub from_domain: String,
    /// The policy that applies to the author domain after `sp`/`np`/`t`:
    /// `none`, `quarantine`, `reject`, or empty when there is no record.
    pub policy: &'static str,
    pub spf_aligned: bool,
    pub dkim_aligned: bool,
    /// Why the disposition differs from the policy (RFC 7489
    /// PolicyOverrideType): `trusted_forwarder` for a trusted ARC chain,
    /// `local_policy` when `[policy]` asks for less.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<&'static str>,
    /// The published record, for aggregate reports.
    #[serde(skip)]
    pub published: Option<Published>,
}

/// What the policy record said (RFC 7489 `policy_published`).
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub p: &'static str,
    pub sp: &'static str,
    pub np: &'static str,
    pub adkim: &'static str,
    pub aspf: &'static str,
    pub testing: bool,
    pub rua: Vec<String>,
}

fn policy_word(p: Policy) -> &'static str {
    match p {
        Policy::None => "none",
        Policy::Quarantine => "quarantine",
        Policy::Reject => "reject",
        Policy::Unspecified => "",
    }
}

fn alignment_word(a: mail_auth::dmarc::Alignment) -> &'static str {
    match a {
        mail_auth::dmarc::Alignment::Relaxed => "r",
        mail_auth::dmarc::Alignment::Strict => "s",
    }
}

/// Evaluates DMARC for `msg`, whose author `checks::author` has already
/// found. `spf_domain` is the MAIL FROM domain, or the HELO name when the
/// reverse-path is empty (RFC 7489 §4.2), and `spf` its SPF result.
/// `records` keeps parsed DMARC records for their TTL.
pub async fn evaluate(
    auth: &MessageAuthenticator,
    msg: &AuthenticatedMessage<'_>,
    dkim: &[DkimOutput<'_>],
    spf_domain: &str,
    spf: &SpfOutput,
    from_domain: &str,
    records: &KeyCache,
) -> Dmarc {
    let params =
        DmarcParameters { message: msg, dkim_output: dkim, dkim2_output: None, rfc5321_mail_from_domain: spf_domain, spf_output: spf };
    let out = auth.verify_dmarc(Parameters::new(params).with_txt_cache(records)).await;
    let broken = remember_absent(auth, records, from_domain).await;
    let result = match out.result() {
        _ if broken && out.dmarc_record().is_none() => "temperror",
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    };
    let published = out.dmarc_record().map(|r| Published {
        p: policy_word(r.p),
        sp: policy_word(r.sp),
        np: policy_word(r.np),
        adkim: alignment_word(r.adkim),
        aspf: alignment_word(r.aspf),
        testing: r.t,
        // As published: `mailto:` and the `!size` limit, which the
        // report sender honours.
        rua: r
            .rua
            .iter()
            .map(|u| match u.max_size() {
                0 => format!("mailto:{}", u.uri()),
                n => format!("mailto:{}!{n}", u.uri()),
            })
            .collect(),
    });
    Dmarc {
        result,
        from_domain: if out.domain().is_empty() { from_domain.to_string() } else { out.domain().to_string() },
        policy: if published.is_some() { policy_word(out.policy()) } else { "" },
        spf_aligned: *out.spf_result() == DmarcResult::Pass,
        dkim_aligned: *out.dkim_result() == DmarcResult::Pass,
        override_reason: None,
        published,
    }
}

/// The names the RFC 9989 tree walk for `domain` asks for, as mail-auth
/// writes them (`_dmarc.NAME.`): the name itself, then (from eight labels
/// on) the last seven, then one label less each time, down to the TLD.
fn walk_names(domain: &str) -> Vec<String> {
    let domain = idna::domain_to_ascii(domain.trim_end_matches('.')).unwrap_or_else(|_| domain.to_ascii_lowercase());
    let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
    let total = labels.len();
    let mut names = Vec::new();
    if total < 2 {
        return names;
    }
    let mut count = total;
    loop {
        names.push(format!("_dmarc.{}.", labels[total - count..].join(".")));
        if count == 1 {
            break;
        }
        count = if count >= 8 { 7 } else { count - 1 };
    }
    names
}

/// For each name of the walk that mail-auth looked up and did not keep: an absence (NXDOMAIN
/// or NODATA with a SOA) is kept as mail-auth's own "record not found", so
/// the next walk stops at the cache. True when a name is a broken CNAME
/// chain (a loop or too long), which must be a temperror, not "no policy".
async fn remember_absent(auth: &MessageAuthenticator, records: &KeyCache, from_domain: &str) -> bool {
    let mut broken = false;
    for key in walk_names(from_domain) {
        if records.get::<str>(&key).is_some() {
            continue;
        }
        let Ok(name) = Name::from_str_relaxed(&key) else { continue };
        // hickory answers this one from its cache: mail-auth just asked.
        let err = match auth.resolver().txt_lookup(name.clone()).await {
            Ok(_) => continue,
            Err(e) => e,
        };
        let Some(no) = crate::dns::no_records(&err) else { continue };
        match crate::dns::absence(auth.resolver(), &name, no).await {
            crate::dns::Absence::BrokenChain => {
                tracing::debug!(%name, "DMARC record name is a CNAME loop or too long a chain: temperror");
                broken = true;
            }
            crate::dns::Absence::NoRecords => {
                if let Some(until) = crate::checks::cache::negative_until(no.negative_ttl) {
                    records.insert(key.into_boxed_str(), Txt::Error(Error::Dns(DnsError::RecordNotFound(no.response_code))), until);
                }
            }
        }
    }
    broken
}
