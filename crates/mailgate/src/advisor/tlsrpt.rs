//! TLS-RPT (RFC 8460): the `_smtp._tls` record's syntax, parsed by
//! mail-auth, and its `rua` URIs (mailto: or https:).
//! May import: `advisor::lookup`.

use hickory_resolver::TokioResolver;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::{ReportUri, TlsRpt};

use super::Finding;
use super::lookup::{self, Answer};

const CHECK: &str = "tls-rpt";

pub async fn check(resolver: &TokioResolver, domain: &str) -> Vec<Finding> {
    let name = format!("_smtp._tls.{domain}");
    let records: Vec<String> = match lookup::txt(resolver, &name).await {
        Answer::Found(r) => r.into_iter().filter(|t| t.trim_start().to_ascii_lowercase().starts_with("v=tlsrptv1")).collect(),
        Answer::Failed(e) => {
            return vec![Finding::error(
                CHECK,
                "tls-rpt-lookup-failed",
                e,
                format!("make the name servers of {domain} answer TXT queries"),
            )];
        }
        _ => Vec::new(),
    };
    let record = match records.as_slice() {
        [] => {
            return vec![Finding::warning(
                CHECK,
                "tls-rpt-missing",
                format!("{domain} publishes no TLS-RPT record: nobody tells you when TLS to your MX fails"),
                format!("publish \"{name}. IN TXT \\\"v=TLSRPTv1; rua=mailto:tls-reports@{domain}\\\"\""),
            )];
        }
        [one] => one,
        many => {
            return vec![Finding::error(
                CHECK,
                "tls-rpt-multiple-records",
                format!("{name} has {} v=TLSRPTv1 records: senders use none (RFC 8460 §3)", many.len()),
                format!("keep one v=TLSRPTv1 record at {name}"),
            )];
        }
    };
    match TlsRpt::parse(record.as_bytes()) {
        Ok(r) if !r.rua.is_empty() => {
            let list: Vec<String> = r
                .rua
                .iter()
                .map(|u| match u {
                    ReportUri::Mail(a) => format!("mailto:{a}"),
                    ReportUri::Http(h) => h.clone(),
                })
                .collect();
            vec![Finding::ok(CHECK, "tls-rpt-ok", format!("reports go to {}", list.join(", ")))]
        }
        _ => vec![Finding::error(
            CHECK,
            "tls-rpt-syntax",
            format!("{name}: \"{record}\" is not \"v=TLSRPTv1; rua=mailto:...\" (or https:)"),
            format!("publish \"{name}. IN TXT \\\"v=TLSRPTv1; rua=mailto:tls-reports@{domain}\\\"\""),
        )],
    }
}
