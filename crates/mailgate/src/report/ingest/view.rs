//! Stored reports as JSON, one shape for `GET /api/v1/reports[/{id}]` and
//! `mailgate reports list/show --json`, and as text lines for the CLI.
//!
//! May import: `store`; crate `mail-parser`.

use serde_json::{Value, json};

use crate::store::{IngestedReport, ReportSummary};

/// A listing entry.
pub fn summary_json(s: &ReportSummary) -> Value {
    json!({
        "id": s.id,
        "kind": s.kind.as_str(),
        "org_name": s.org_name,
        "report_id": s.report_id,
        "policy_domain": s.policy_domain,
        "begin": s.begin,
        "end": s.end,
        "stored": s.stored,
        "messages": s.messages,
    })
}

/// One report whole: the summary's fields, the reporter's address, the
/// policy it saw (DMARC), its rows (DMARC) or policies (TLS-RPT).
pub fn report_json(s: &ReportSummary, r: &IngestedReport) -> Value {
    let mut v = summary_json(s);
    v["email"] = json!(r.email);
    v["policy"] = json!(r.policy);
    v["rows"] = json!(r.rows);
    v["policies"] = json!(r.tls);
    v
}

/// Seconds since the epoch in RFC 3339, UTC.
pub fn utc(t: u64) -> String {
    mail_parser::DateTime::from_timestamp(t.min(i64::MAX as u64) as i64).to_rfc3339()
}

/// One line of `reports list`.
pub fn summary_line(s: &ReportSummary) -> String {
    format!(
        "{:>6}  {:<6}  {:<24}  {:<28}  {}  {} .. {}  {:>8} {}",
        s.id,
        s.kind.as_str(),
        super::unpack::printable(&s.policy_domain),
        super::unpack::printable(&s.org_name),
        super::unpack::printable(&s.report_id),
        utc(s.begin),
        utc(s.end),
        s.messages,
        if s.kind == crate::store::ReportKind::Dmarc { "messages" } else { "sessions" },
    )
}
