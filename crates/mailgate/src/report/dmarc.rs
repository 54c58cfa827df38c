//! One DMARC aggregate report (RFC 7489 §7.2, RFC 9990): the store's rows
//! for a domain and period turned into mail-auth's report, its XML (with
//! the `urn:ietf:params:xml:ns:dmarc-2.0` namespace), and the message that
//! carries it gzipped.
//!
//! mail-auth's own `Report::write_rfc5322` names the attachment
//! `submitter!domain!begin!end.xml.gz`, without the unique id RFC 9990
//! §3.1.1.4 puts last, so the message is built here with mail-builder
//! (which mail-auth uses too) around mail-auth's XML; its subject is
//! written raw, since mail-builder turns a subject this long into RFC 2047
//! encoded words, which receivers matching on `Report-ID:` do not decode.

use std::io::Write;
use std::net::IpAddr;

use mail_auth::flate2::{Compression, write::GzEncoder};
use mail_auth::report::{
    ActionDisposition, Alignment, AuthResult, DKIMAuthResult, DateRange, Discovery, Disposition, DkimResult, DmarcResult, Identifier,
    PolicyEvaluated, PolicyOverride, PolicyOverrideReason, PolicyPublished, Record, Report, ReportMetadata, Row, SPFAuthResult,
    SPFDomainScope, SpfResult,
};
use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::address::Address;
use mail_builder::headers::raw::Raw;

use crate::store::{self, DmarcRow};

/// Who reports: `[reports] org_name` and `from`.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub org_name: String,
    /// `[reports] from`: the contact address and the message's sender.
    pub email: String,
    /// The domain of `email`: the "receiver" of RFC 9990's file name and
    /// the `Submitter:` of the subject.
    pub submitter: String,
}

/// The period a report covers: `begin` inclusive, `end` exclusive (the
/// report says `end - 1`, the last second it covers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub begin: u64,
    pub end: u64,
}

/// Builds the report for `policy`'s domain from its `rows`.
pub fn build(who: &Reporter, policy: &store::PolicyPublished, rows: &[DmarcRow], period: Period, report_id: &str) -> Report {
    Report {
        version: 1.0,
        report_metadata: ReportMetadata {
            org_name: who.org_name.clone(),
            email: who.email.clone(),
            extra_contact_info: None,
            report_id: report_id.to_string(),
            date_range: DateRange { begin: period.begin, end: period.end.saturating_sub(1).max(period.begin) },
            error: Vec::new(),
            generator: Some(format!("mailgate {}", env!("CARGO_PKG_VERSION"))),
        },
        policy_published: PolicyPublished {
            domain: policy.domain.clone(),
            version_published: None,
            adkim: alignment(&policy.adkim),
            aspf: alignment(&policy.aspf),
            p: disposition(&policy.p),
            sp: disposition(&policy.sp),
            np: disposition(&policy.np),
            testing: policy.testing,
            // checks::dmarc finds the record by the RFC 9989 tree walk.
            discovery_method: Discovery::Treewalk,
            fo: None,
        },
        record: rows.iter().map(record).collect(),
        extensions: Vec::new(),
    }
}

fn record(r: &DmarcRow) -> Record {
    let action = match r.disposition.as_str() {
        "quarantine" => ActionDisposition::Quarantine,
        "reject" => ActionDisposition::Reject,
        _ => ActionDisposition::None,
    };
    let pass_fail = |aligned: bool| if aligned { DmarcResult::Pass } else { DmarcResult::Fail };
    let reason = r
        .override_reason
        .iter()
        .map(|why| PolicyOverrideReason {
            type_: match why.as_str() {
                "trusted_forwarder" => PolicyOverride::TrustedForwarder,
                "local_policy" => PolicyOverride::LocalPolicy,
                "mailing_list" => PolicyOverride::MailingList,
                "policy_test_mode" => PolicyOverride::PolicyTestMode,
                _ => PolicyOverride::Other,
            },
            comment: None,
        })
        .collect();
    Record {
        row: Row {
            source_ip: r.source_ip.parse::<IpAddr>().ok(),
            count: u32::try_from(r.count).unwrap_or(u32::MAX),
            policy_evaluated: PolicyEvaluated {
                disposition: action,
                dkim: pass_fail(r.dkim_aligned),
                spf: pass_fail(r.spf_aligned),
                reason,
            },
        },
        identifiers: Identifier { envelope_to: None, envelope_from: r.envelope_from.clone(), header_from: r.header_from.clone() },
        auth_results: AuthResult {
            dkim: r
                .dkim
                .iter()
                .map(|d| DKIMAuthResult {
                    domain: d.domain.clone(),
                    selector: d.selector.clone(),
                    result: dkim_result(&d.result),
                    human_result: None,
                })
                .collect(),
            // With a null reverse-path the SPF result is that of the HELO
            // identity, which RFC 7208 §2.4 treats as the MAIL FROM of
            // postmaster@helo: RFC 9990 knows only the `mfrom` scope (and
            // mail-auth writes no SPF result of another scope).
            spf: vec![SPFAuthResult {
                domain: r.spf.domain.clone(),
                scope: SPFDomainScope::MailFrom,
                result: spf_result(&r.spf.result),
                human_result: None,
            }],
        },
        extensions: Vec::new(),
    }
}

fn alignment(s: &str) -> Alignment {
    match s {
        "s" => Alignment::Strict,
        "r" => Alignment::Relaxed,
        _ => Alignment::Unspecified,
    }
}

fn disposition(s: &str) -> Disposition {
    match s {
        "none" => Disposition::None,
        "quarantine" => Disposition::Quarantine,
        "reject" => Disposition::Reject,
        _ => Disposition::Unspecified,
    }
}

fn dkim_result(s: &str) -> DkimResult {
    match s {
        "pass" => DkimResult::Pass,
        "fail" => DkimResult::Fail,
        "policy" => DkimResult::Policy,
        "neutral" => DkimResult::Neutral,
        "temperror" => DkimResult::TempError,
        "permerror" => DkimResult::PermError,
        _ => DkimResult::None,
    }
}

fn spf_result(s: &str) -> SpfResult {
    match s {
        "pass" => SpfResult::Pass,
        "fail" => SpfResult::Fail,
        "softfail" => SpfResult::SoftFail,
        "neutral" => SpfResult::Neutral,
        "temperror" => SpfResult::TempError,
        "permerror" => SpfResult::PermError,
        _ => SpfResult::None,
    }
}

/// RFC 9990 §3.1.1.4: `receiver!policy-domain!begin!end!unique-id.xml.gz`.
pub fn file_name(submitter: &str, report: &Report) -> String {
    let m = &report.report_metadata;
    format!("{submitter}!{}!{}!{}!{}.xml.gz", report.policy_published.domain, m.date_range.begin, m.date_range.end, m.report_id)
}

pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut e = GzEncoder::new(Vec::with_capacity(data.len() / 8 + 64), Compression::default());
    e.write_all(data)?;
    e.finish()
}

/// The report message to `to`: RFC 9990 §3.1.1.3's subject, a short text
/// part, and the gzipped XML as `application/gzip` under the RFC's name.
pub fn message(who: &Reporter, report: &Report, to: &[String], message_id: &str) -> std::io::Result<Vec<u8>> {
    let xml = gzip(report.to_xml().as_bytes())?;
    let domain = &report.policy_published.domain;
    let id = &report.report_metadata.report_id;
    let text = format!(
        "This is a DMARC aggregate report from {org}.\r\n\r\nReport Domain: {domain}\r\nSubmitter: {sub}\r\nReport-ID: {id}\r\n",
        org = who.org_name,
        sub = who.submitter,
    );
    MessageBuilder::new()
        .from(Address::new_address(Some(who.org_name.as_str()), who.email.as_str()))
        .to(Address::new_list(to.iter().map(|a| Address::new_address(None::<&str>, a.as_str())).collect()))
        .header("Auto-Submitted", HeaderType::Text("auto-generated".into()))
        .message_id(message_id)
        // Raw: mail-builder would encode a subject this long as RFC 2047
        // words, and receivers read it as it is.
        .header("Subject", HeaderType::Raw(Raw::new(format!("Report Domain: {domain} Submitter: {} Report-ID: <{id}>", who.submitter))))
        .text_body(text)
        .attachment("application/gzip", file_name(&who.submitter, report), xml)
        .write_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DkimAuth, SpfAuth};

    fn row(ip: &str, count: u64, dkim: bool) -> DmarcRow {
        DmarcRow {
            source_ip: ip.into(),
            count,
            disposition: if dkim { "none" } else { "reject" }.into(),
            dkim_aligned: dkim,
            spf_aligned: false,
            override_reason: (!dkim).then(|| "local_policy".to_string()),
            header_from: "example.org".into(),
            envelope_from: "bounce.example.org".into(),
            dkim: vec![
                DkimAuth { domain: "example.org".into(), selector: "s1".into(), result: if dkim { "pass" } else { "fail" }.into() },
                DkimAuth { domain: "esp.example".into(), selector: "x".into(), result: "pass".into() },
            ],
            spf: SpfAuth { domain: "bounce.example.org".into(), scope: "mfrom".into(), result: "softfail".into() },
        }
    }

    #[test]
    fn xml_and_message() {
        let who = Reporter { org_name: "Gate & Co".into(), email: "dmarc-reports@ours.test".into(), submitter: "ours.test".into() };
        let policy = store::PolicyPublished {
            domain: "example.org".into(),
            p: "reject".into(),
            sp: "quarantine".into(),
            np: String::new(),
            adkim: "r".into(),
            aspf: "s".into(),
            testing: false,
            rua: vec!["mailto:d@example.org".into()],
        };
        let r = build(&who, &policy, &[row("192.0.2.1", 3, true), row("2001:db8::1", 2, false)], Period { begin: 100, end: 200 }, "r1");
        let xml = r.to_xml();
        assert!(xml.contains("<feedback xmlns=\"urn:ietf:params:xml:ns:dmarc-2.0\">"), "{xml}");
        assert!(xml.contains("<org_name>Gate &amp; Co</org_name>"), "{xml}");
        assert!(xml.contains("<begin>100</begin>") && xml.contains("<end>199</end>"), "{xml}");
        assert!(xml.contains("<source_ip>2001:db8::1</source_ip>"), "{xml}");
        assert!(xml.contains("<type>local_policy</type>"), "{xml}");
        assert!(xml.contains("<scope>mfrom</scope>"), "{xml}");
        assert_eq!(xml.matches("<dkim>\n").count() + xml.matches("<dkim>\r\n").count(), 4, "{xml}");
        assert_eq!(file_name("ours.test", &r), "ours.test!example.org!100!199!r1.xml.gz");
        let msg = message(&who, &r, &["d@example.org".into()], "m1@ours.test").unwrap();
        let text = String::from_utf8_lossy(&msg);
        assert!(text.contains("Report Domain: example.org Submitter: ours.test Report-ID: <r1>"), "{text}");
        assert!(text.contains("application/gzip"), "{text}");
        assert!(text.contains("ours.test!example.org!100!199!r1.xml.gz"), "{text}");
    }
}
