//! BIMI (draft-brand-indicators-for-message-identification), when
//! published: the `default._bimi` record's `v=BIMI1`, `l=` (an https SVG
//! URL) and `a=` (an https certificate URL), and the DMARC enforcement
//! BIMI requires. Parsed here: mail-auth has no BIMI parser.
//! May import: `advisor::lookup`.

use hickory_resolver::TokioResolver;

use super::Finding;
use super::lookup::{self, Answer};

const CHECK: &str = "bimi";

/// `dmarc_policy` is the policy that applies to the domain, if any.
pub async fn check(resolver: &TokioResolver, domain: &str, dmarc_policy: Option<&str>) -> Vec<Finding> {
    let name = format!("default._bimi.{domain}");
    let records: Vec<String> = match lookup::txt(resolver, &name).await {
        Answer::Found(r) => r.into_iter().filter(|t| t.trim_start().starts_with("v=BIMI1")).collect(),
        Answer::Failed(e) => {
            return vec![Finding::error(CHECK, "bimi-lookup-failed", e, format!("make the name servers of {domain} answer TXT queries"))];
        }
        _ => Vec::new(),
    };
    let record = match records.as_slice() {
        [] => return vec![Finding::ok(CHECK, "bimi-absent", format!("no BIMI record at {name} (optional)"))],
        [one] => one,
        many => {
            return vec![Finding::error(
                CHECK,
                "bimi-multiple-records",
                format!("{name} has {} v=BIMI1 records", many.len()),
                format!("keep one v=BIMI1 record at {name}"),
            )];
        }
    };
    let mut out = Vec::new();
    let tags: Vec<(String, String)> =
        record.split(';').filter_map(|t| t.split_once('=')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let mut bad = Vec::new();
    for (tag, want) in [("l", "an https:// URL of an SVG logo"), ("a", "an https:// URL of a mark certificate (PEM)")] {
        if let Some((_, v)) = tags.iter().find(|(k, _)| k == tag)
            && !v.is_empty()
            && !v.split(',').all(|u| u.trim().to_ascii_lowercase().starts_with("https://"))
        {
            bad.push(format!("{tag}={v} is not {want}"));
        }
    }
    if !tags.iter().any(|(k, v)| k == "l" && !v.is_empty()) && !tags.iter().any(|(k, v)| k == "a" && !v.is_empty()) {
        bad.push("neither l= nor a= names a logo".to_string());
    }
    if bad.is_empty() {
        out.push(Finding::ok(CHECK, "bimi-record", format!("\"{record}\"")));
    } else {
        out.push(Finding::error(
            CHECK,
            "bimi-syntax",
            format!("{name}: {}", bad.join("; ")),
            "publish \"v=BIMI1; l=https://.../logo.svg; a=https://.../vmc.pem\"",
        ));
    }
    if !matches!(dmarc_policy, Some("quarantine" | "reject")) {
        out.push(Finding::warning(
            CHECK,
            "bimi-needs-dmarc-enforcement",
            "BIMI logos are shown only for domains whose DMARC policy is quarantine or reject",
            "move DMARC to p=quarantine or p=reject",
        ));
    }
    out
}
