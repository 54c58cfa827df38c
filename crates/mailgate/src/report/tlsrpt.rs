//! One TLS-RPT report (RFC 8460 §4): the store's TLS rows for a recipient
//! domain and period turned into mail-auth's `TlsReport`, its JSON, the
//! message that carries it gzipped (RFC 8460 §5.3: `TLS-Report-Domain`,
//! `TLS-Report-Submitter`, `multipart/report; report-type=tlsrpt`,
//! `application/tlsrpt+gzip`), and the HTTPS POST of §5.4.
//!
//! mail-auth serializes absent optional fields as `null`; RFC 8460 leaves
//! them out, so the JSON is written from mail-auth's value with the nulls
//! removed, and the message carries those bytes.

use std::sync::Arc;
use std::time::Duration;

use mail_auth::report::tlsrpt::{DateRange, FailureDetails, Policy, PolicyDetails, PolicyType, ResultType, Summary, TlsReport};
use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};
use serde_json::Value;

use super::dmarc::{Period, Reporter};
use crate::store::TlsRow;

/// Builds the report on `domain` from its `rows`.
pub fn build(who: &Reporter, domain: &str, rows: &[TlsRow], period: Period, report_id: &str) -> TlsReport {
    let mut policies: Vec<Policy> = Vec::new();
    for row in rows {
        // `require-tls` is our own rule, not a published policy: to the
        // domain it is the absence of one.
        let kind = match row.policy_type.as_str() {
            "sts" => PolicyType::Sts,
            "tlsa" => PolicyType::Tlsa,
            _ => PolicyType::NoPolicyFound,
        };
        // One entry per distinct policy (RFC 8460 §4.4): its type and the
        // MTA-STS text applied, quoted line by line as `policy-string`,
        // whose `mx` patterns are the `mx-host` list.
        let lines: Vec<String> = row.policy_string.lines().map(str::to_string).collect();
        let i = match policies.iter().position(|p| p.policy.policy_type == kind && p.policy.policy_string == lines) {
            Some(i) => i,
            None => {
                let mut policy = PolicyDetails::new(kind, domain);
                policy.mx_host = lines.iter().filter_map(|l| l.strip_prefix("mx:")).map(|m| m.trim().to_string()).collect();
                policy.policy_string = lines;
                policies.push(Policy { policy, summary: Summary { total_success: 0, total_failure: 0 }, failure_details: Vec::new() });
                policies.len() - 1
            }
        };
        let p = &mut policies[i];
        let n = u32::try_from(row.count).unwrap_or(u32::MAX);
        // Without the policy text, the hosts we met stand in for its
        // patterns.
        if kind == PolicyType::Sts && row.policy_string.is_empty() && !row.mx_host.is_empty() && !p.policy.mx_host.contains(&row.mx_host) {
            p.policy.mx_host.push(row.mx_host.clone());
        }
        if row.result == "success" {
            p.summary.total_success = p.summary.total_success.saturating_add(n);
            continue;
        }
        p.summary.total_failure = p.summary.total_failure.saturating_add(n);
        let known: ResultType = serde_json::from_value(Value::String(row.result.clone())).unwrap_or(ResultType::Other);
        // mail-auth would write an unknown type as "Other": say
        // `validation-failure` and keep the text as the reason code.
        let result_type = if known == ResultType::Other { ResultType::ValidationFailure } else { known };
        let mut detail = FailureDetails::new(result_type);
        if !row.mx_host.is_empty() {
            detail = detail.with_receiving_mx_hostname(row.mx_host.clone());
        }
        if known == ResultType::Other {
            detail = detail.with_failure_reason_code(row.result.clone());
        }
        detail.failed_session_count = n;
        p.failure_details.push(detail);
    }
    TlsReport {
        organization_name: Some(who.org_name.clone()),
        date_range: DateRange::from_timestamps(period.begin as i64, period.end.saturating_sub(1).max(period.begin) as i64),
        contact_info: Some(who.email.clone()),
        report_id: report_id.to_string(),
        policies,
    }
}

/// The report's JSON without the `null`s mail-auth writes for absent
/// fields.
pub fn json(report: &TlsReport) -> String {
    let mut v = serde_json::to_value(report).unwrap_or(Value::Null);
    strip_nulls(&mut v);
    v.to_string()
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, x| !x.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The report message to `to`, carrying `gz` (the gzipped JSON): RFC 8460
/// §5.3's headers and `multipart/report; report-type=tlsrpt`, as
/// mail-auth's `write_rfc5322_from_bytes` builds it but with the subject
/// written raw (mail-builder would make RFC 2047 encoded words of it) and
/// the unique id in the file name.
pub fn message(who: &Reporter, report: &TlsReport, domain: &str, to: &[String], gz: &[u8], message_id: &str) -> std::io::Result<Vec<u8>> {
    let id = &report.report_id;
    let sub = &who.submitter;
    let text =
        format!("This is a TLS report from {}.\r\n\r\nReport Domain: {domain}\r\nSubmitter: {sub}\r\nReport-ID: {id}\r\n", who.org_name);
    let name = format!(
        "{sub}!{domain}!{}!{}!{id}.json.gz",
        report.date_range.start_datetime.to_timestamp(),
        report.date_range.end_datetime.to_timestamp()
    );
    MessageBuilder::new()
        .from(Address::new_address(Some(who.org_name.as_str()), who.email.as_str()))
        .to(Address::new_list(to.iter().map(|a| Address::new_address(None::<&str>, a.as_str())).collect()))
        .message_id(message_id)
        .header("TLS-Report-Domain", HeaderType::Text(domain.into()))
        .header("TLS-Report-Submitter", HeaderType::Text(sub.as_str().into()))
        .header("Auto-Submitted", HeaderType::Text("auto-generated".into()))
        .header("Subject", HeaderType::Raw(Raw::new(format!("Report Domain: {domain} Submitter: {sub} Report-ID: <{id}>"))))
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "tlsrpt"),
            BodyPart::Multipart(vec![
                MimePart::new(ContentType::new("text/plain"), BodyPart::Text(text.into())),
                MimePart::new(ContentType::new("application/tlsrpt+gzip"), BodyPart::Binary(gz.into())).attachment(name),
            ]),
        ))
        .write_to_vec()
}

/// POSTs the gzipped report to `url` (RFC 8460 §5.4), resolving its host
/// with our resolver and trusting what delivery trusts. `Ok` on 2xx.
pub async fn post(
    resolver: &hickory_resolver::TokioResolver,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
    url: &str,
    gz: Vec<u8>,
) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: not a URL: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("{url}: only https is used for reports"));
    }
    let host = parsed.host_str().ok_or_else(|| format!("{url}: no host"))?.to_string();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls.as_ref().clone())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .no_proxy();
    // Resolve through our resolver, not the system's (as MTA-STS does).
    if host.parse::<std::net::IpAddr>().is_err() {
        let addrs = resolver.lookup_ip(format!("{host}.").as_str()).await.map_err(|e| format!("{url}: {e}"))?;
        let ip = addrs.iter().next().ok_or_else(|| format!("{url}: {host} has no address"))?;
        builder = builder.resolve(&host, std::net::SocketAddr::new(ip, port));
    }
    let client = builder.build().map_err(|e| format!("{url}: {e}"))?;
    let resp = client
        .post(parsed)
        .header(reqwest::header::CONTENT_TYPE, "application/tlsrpt+gzip")
        .body(gz)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if resp.status().is_success() { Ok(()) } else { Err(format!("{url}: HTTP status {}", resp.status())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_json() {
        let who = Reporter { org_name: "Gate".into(), email: "tls@ours.test".into(), submitter: "ours.test".into() };
        let row = |mx: &str, policy: &str, result: &str, count| TlsRow {
            mx_host: mx.into(),
            policy_type: policy.into(),
            result: result.into(),
            count,
            policy_string: String::new(),
        };
        let rows = [
            row("mx.example.net", "sts", "certificate-host-mismatch", 3),
            row("mx.example.net", "sts", "success", 5),
            row("mx2.example.net", "no-policy-found", "starttls-not-supported", 1),
            row("mx2.example.net", "require-tls", "odd-thing", 2),
        ];
        let r = build(&who, "example.net", &rows, Period { begin: 86_400, end: 172_800 }, "t1");
        let v: Value = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(v["report-id"], "t1");
        assert_eq!(v["date-range"]["start-datetime"], "1970-01-02T00:00:00Z");
        assert_eq!(v["date-range"]["end-datetime"], "1970-01-02T23:59:59Z");
        let sts = &v["policies"][0];
        assert_eq!(sts["policy"]["policy-type"], "sts");
        assert_eq!(sts["summary"]["total-successful-session-count"], 5);
        assert_eq!(sts["summary"]["total-failure-session-count"], 3);
        assert_eq!(sts["failure-details"][0]["result-type"], "certificate-host-mismatch");
        assert_eq!(sts["failure-details"][0]["failed-session-count"], 3);
        assert!(sts["failure-details"][0].get("sending-mta-ip").is_none());
        let none = &v["policies"][1];
        assert_eq!(none["policy"]["policy-type"], "no-policy-found");
        assert_eq!(none["summary"]["total-failure-session-count"], 3);
        let msg = message(&who, &r, "example.net", &["tls@example.net".into()], b"gz", "m@ours.test").unwrap();
        let text = String::from_utf8_lossy(&msg);
        assert!(text.contains("TLS-Report-Domain: example.net"), "{text}");
        assert!(text.contains("TLS-Report-Submitter: ours.test"), "{text}");
        assert!(text.contains("application/tlsrpt+gzip"), "{text}");
        assert!(text.contains("report-type=tlsrpt") || text.contains("report-type=\"tlsrpt\""), "{text}");
        assert!(text.contains("Subject: Report Domain: example.net Submitter: ours.test"), "{text}");
        assert!(text.contains("ours.test!example.net!86400!172799!t1.json.gz"), "{text}");
    }

    #[test]
    fn policy_string_and_mx_patterns() {
        let who = Reporter { org_name: "Gate".into(), email: "tls@ours.test".into(), submitter: "ours.test".into() };
        let text = "version: STSv1\nmode: enforce\nmx: *.example.net\nmx: mx.example.org\nmax_age: 86400";
        let row = |policy_string: &str, result: &str| TlsRow {
            mx_host: "mx1.example.net".into(),
            policy_type: "sts".into(),
            result: result.into(),
            count: 2,
            policy_string: policy_string.into(),
        };
        // Two policies of the same type (one changed mid-period) are two
        // entries.
        let rows = [row(text, "success"), row(text, "certificate-expired"), row(&text.replace("86400", "604800"), "success")];
        let r = build(&who, "example.net", &rows, Period { begin: 0, end: 86_400 }, "t2");
        let v: Value = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(v["policies"].as_array().map(Vec::len), Some(2), "{v}");
        let p = &v["policies"][0]["policy"];
        assert_eq!(
            p["policy-string"],
            serde_json::json!(["version: STSv1", "mode: enforce", "mx: *.example.net", "mx: mx.example.org", "max_age: 86400"])
        );
        assert_eq!(p["mx-host"], serde_json::json!(["*.example.net", "mx.example.org"]));
        assert_eq!(v["policies"][0]["summary"]["total-successful-session-count"], 2);
        assert_eq!(v["policies"][0]["summary"]["total-failure-session-count"], 2);
    }
}
