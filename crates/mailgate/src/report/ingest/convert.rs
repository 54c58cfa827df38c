//! mail-auth's parsed reports → the store's [`IngestedReport`], in the words
//! the RFCs use (`quarantine`, `mfrom`, `sts-policy-fetch-error`), and the
//! checks a report must pass to be kept: it names its reporter and its id,
//! which together say whether we already have it.
//!
//! May import: `store`; crate `mail-auth`.

use mail_auth::report::tlsrpt::{FailureDetails, Policy, PolicyType, ResultType, TlsReport};
use mail_auth::report::{
    ActionDisposition, Alignment, Disposition, DkimResult, DmarcResult, PolicyOverride, Record, Report, SPFDomainScope, SpfResult,
};

use crate::store::{DkimAuth, IngestedReport, PolicyPublished, ReportKind, ReportRow, SpfAuth, TlsFailure, TlsPolicyResult};

/// A DMARC aggregate report as the store keeps it.
pub fn dmarc(r: &Report) -> Result<IngestedReport, String> {
    let m = &r.report_metadata;
    let p = &r.policy_published;
    let org_name = m.org_name.trim();
    let report_id = m.report_id.trim();
    // An empty org_name is seen in the wild (and kept: the report id still
    // tells reports apart); an empty report id is not a report.
    if report_id.is_empty() {
        return Err("report_metadata/report_id is missing or empty".into());
    }
    if m.date_range.end == 0 || m.date_range.end < m.date_range.begin {
        return Err(format!("report_metadata/date_range is missing or runs backwards ({} to {})", m.date_range.begin, m.date_range.end));
    }
    Ok(IngestedReport {
        kind: ReportKind::Dmarc,
        org_name: org_name.to_string(),
        report_id: report_id.to_string(),
        email: m.email.trim().to_string(),
        begin: m.date_range.begin,
        end: m.date_range.end,
        policy_domain: p.domain.trim().to_lowercase(),
        policy: Some(PolicyPublished {
            domain: p.domain.trim().to_lowercase(),
            p: disposition(p.p).into(),
            sp: disposition(p.sp).into(),
            np: disposition(p.np).into(),
            adkim: alignment(p.adkim).into(),
            aspf: alignment(p.aspf).into(),
            testing: p.testing,
            rua: Vec::new(),
        }),
        rows: r.record.iter().map(row).collect(),
        tls: Vec::new(),
    })
}

fn row(r: &Record) -> ReportRow {
    let pe = &r.row.policy_evaluated;
    ReportRow {
        source_ip: r.row.source_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        count: u64::from(r.row.count),
        disposition: action(pe.disposition).into(),
        dkim_evaluated: evaluated(pe.dkim).into(),
        spf_evaluated: evaluated(pe.spf).into(),
        reasons: pe.reason.iter().map(|x| override_type(x.type_).to_string()).collect(),
        header_from: r.identifiers.header_from.trim().to_lowercase(),
        envelope_from: r.identifiers.envelope_from.trim().to_lowercase(),
        dkim: r
            .auth_results
            .dkim
            .iter()
            .map(|d| DkimAuth {
                domain: d.domain.trim().to_lowercase(),
                selector: d.selector.trim().into(),
                result: dkim_result(d.result).into(),
            })
            .collect(),
        spf: r
            .auth_results
            .spf
            .iter()
            .map(|s| SpfAuth { domain: s.domain.trim().to_lowercase(), scope: scope(s.scope).into(), result: spf_result(s.result).into() })
            .collect(),
    }
}

fn disposition(d: Disposition) -> &'static str {
    match d {
        Disposition::None => "none",
        Disposition::Quarantine => "quarantine",
        Disposition::Reject => "reject",
        Disposition::Unspecified => "",
    }
}

fn action(d: ActionDisposition) -> &'static str {
    match d {
        ActionDisposition::None => "none",
        ActionDisposition::Pass => "pass",
        ActionDisposition::Quarantine => "quarantine",
        ActionDisposition::Reject => "reject",
        ActionDisposition::Unspecified => "",
    }
}

fn alignment(a: Alignment) -> &'static str {
    match a {
        Alignment::Relaxed => "r",
        Alignment::Strict => "s",
        Alignment::Unspecified => "",
    }
}

fn evaluated(r: DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail => "fail",
        DmarcResult::Unspecified => "",
    }
}

fn override_type(o: PolicyOverride) -> &'static str {
    match o {
        PolicyOverride::LocalPolicy => "local_policy",
        PolicyOverride::MailingList => "mailing_list",
        PolicyOverride::PolicyTestMode => "policy_test_mode",
        PolicyOverride::TrustedForwarder => "trusted_forwarder",
        PolicyOverride::Other => "other",
    }
}

fn dkim_result(r: DkimResult) -> &'static str {
    match r {
        DkimResult::None => "none",
        DkimResult::Pass => "pass",
        DkimResult::Fail => "fail",
        DkimResult::Policy => "policy",
        DkimResult::Neutral => "neutral",
        DkimResult::TempError => "temperror",
        DkimResult::PermError => "permerror",
    }
}

fn spf_result(r: SpfResult) -> &'static str {
    match r {
        SpfResult::None => "none",
        SpfResult::Neutral => "neutral",
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
    }
}

fn scope(s: SPFDomainScope) -> &'static str {
    match s {
        SPFDomainScope::Helo => "helo",
        SPFDomainScope::MailFrom => "mfrom",
        SPFDomainScope::Unspecified => "",
    }
}

/// A TLS-RPT report as the store keeps it. Its policy domain is the first
/// policy's (a report covers one recipient domain, RFC 8460 §4.3).
pub fn tlsrpt(r: &TlsReport) -> Result<IngestedReport, String> {
    let org_name = r.organization_name.as_deref().unwrap_or_default().trim();
    let report_id = r.report_id.trim();
    if org_name.is_empty() {
        return Err("organization-name is missing or empty".into());
    }
    if report_id.is_empty() {
        return Err("report-id is missing or empty".into());
    }
    // mail-auth reads an unparseable date as the epoch.
    let begin = r.date_range.start_datetime.to_timestamp();
    let end = r.date_range.end_datetime.to_timestamp();
    if end <= 0 || end < begin {
        return Err("date-range is missing, not RFC 3339, or runs backwards".into());
    }
    let tls: Vec<TlsPolicyResult> = r.policies.iter().map(policy).collect();
    let policy_domain = tls.iter().map(|p| p.policy_domain.as_str()).find(|d| !d.is_empty()).unwrap_or_default().to_string();
    Ok(IngestedReport {
        kind: ReportKind::Tlsrpt,
        org_name: org_name.to_string(),
        report_id: report_id.to_string(),
        email: r.contact_info.as_deref().unwrap_or_default().trim().to_string(),
        begin: begin.max(0) as u64,
        end: end as u64,
        policy_domain,
        policy: None,
        rows: Vec::new(),
        tls,
    })
}

fn policy(p: &Policy) -> TlsPolicyResult {
    TlsPolicyResult {
        policy_type: policy_type(p.policy.policy_type).into(),
        policy_domain: p.policy.policy_domain.trim().to_lowercase(),
        policy_strings: p.policy.policy_string.clone(),
        mx_hosts: p.policy.mx_host.clone(),
        successes: u64::from(p.summary.total_success),
        failures: u64::from(p.summary.total_failure),
        details: p.failure_details.iter().map(failure).collect(),
    }
}

fn failure(f: &FailureDetails) -> TlsFailure {
    TlsFailure {
        result_type: result_type(f.result_type).into(),
        sending_mta_ip: f.sending_mta_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        receiving_mx_hostname: f.receiving_mx_hostname.clone().unwrap_or_default(),
        receiving_ip: f.receiving_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        count: u64::from(f.failed_session_count),
        reason_code: f.failure_reason_code.clone().unwrap_or_default(),
    }
}

fn policy_type(t: PolicyType) -> &'static str {
    match t {
        PolicyType::Tlsa => "tlsa",
        PolicyType::Sts => "sts",
        PolicyType::NoPolicyFound => "no-policy-found",
        PolicyType::Other => "other",
    }
}

fn result_type(t: ResultType) -> &'static str {
    match t {
        ResultType::StartTlsNotSupported => "starttls-not-supported",
        ResultType::CertificateHostMismatch => "certificate-host-mismatch",
        ResultType::CertificateExpired => "certificate-expired",
        ResultType::CertificateNotTrusted => "certificate-not-trusted",
        ResultType::ValidationFailure => "validation-failure",
        ResultType::TlsaInvalid => "tlsa-invalid",
        ResultType::DnssecInvalid => "dnssec-invalid",
        ResultType::DaneRequired => "dane-required",
        ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
        ResultType::StsPolicyInvalid => "sts-policy-invalid",
        ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        ResultType::Other => "other",
    }
}
