//! MTA-STS (RFC 8461): the `_mta-sts` TXT record and its id, the policy
//! fetched as delivery fetches it (`outbound::mta_sts`: verified HTTPS to
//! `mta-sts.DOMAIN`, no redirects, text/plain, `[delivery] ca_file` and
//! `mta_sts_port` honoured), its mode, whether its `mx` patterns cover
//! every real MX host, and `max_age`. The TXT record is parsed by
//! mail-auth. May import: `outbound::mta_sts`, `outbound::tls`,
//! `advisor::lookup`.

use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use mail_auth::common::parse::TxtRecordParser;

use super::Finding;
use super::lookup::{self, Answer};
use crate::outbound::mta_sts::{Mode, MtaSts, PolicyError};

const CHECK: &str = "mta-sts";
/// Under a day a policy protects little between fetches (RFC 8461 §3.2
/// suggests weeks).
const SHORT_MAX_AGE: u64 = 86_400;

/// How the policy is fetched.
pub struct Fetch {
    pub tls: Arc<rustls::ClientConfig>,
    pub port: u16,
    pub timeout: Duration,
}

pub async fn check(resolver: &TokioResolver, domain: &str, mx_hosts: &[String], fetch: &Fetch, allow_private: bool) -> Vec<Finding> {
    let mut f = Vec::new();
    let name = format!("_mta-sts.{domain}");
    let records: Vec<String> = match lookup::txt(resolver, &name).await {
        Answer::Found(r) => r.into_iter().filter(|t| t.trim_start().starts_with("v=STSv1")).collect(),
        Answer::Failed(e) => {
            f.push(Finding::error(CHECK, "mta-sts-lookup-failed", e, format!("make the name servers of {domain} answer TXT queries")));
            return f;
        }
        _ => Vec::new(),
    };
    let record = match records.as_slice() {
        [] => {
            f.push(Finding::warning(
                CHECK,
                "mta-sts-missing",
                format!("{domain} publishes no MTA-STS policy: senders cannot insist on verified TLS to its MX"),
                format!("publish \"{name}. IN TXT \\\"v=STSv1; id=YYYYMMDD01\\\"\" and the policy file (see `mailgate records`)"),
            ));
            return f;
        }
        [one] => one.clone(),
        many => {
            f.push(Finding::error(
                CHECK,
                "mta-sts-multiple-records",
                format!("{name} has {} v=STSv1 records: senders treat that as no policy (RFC 8461 §3.1)", many.len()),
                format!("keep one v=STSv1 record at {name}"),
            ));
            return f;
        }
    };
    let id_ok = mail_auth::mta_sts::MtaSts::parse(record.as_bytes())
        .ok()
        .is_some_and(|r| !r.id.is_empty() && r.id.len() <= 32 && r.id.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !id_ok {
        f.push(Finding::error(
            CHECK,
            "mta-sts-txt-syntax",
            format!("{name}: \"{record}\" is not \"v=STSv1; id=<1 to 32 letters or digits>\""),
            format!("publish \"{name}. IN TXT \\\"v=STSv1; id=YYYYMMDD01\\\"\""),
        ));
        return f;
    }
    f.push(Finding::ok(CHECK, "mta-sts-txt", format!("{name}: \"{record}\"")));
    let host = format!("mta-sts.{domain}");
    if let Answer::Found(ips) = lookup::addresses(resolver, &host).await {
        let private: Vec<String> = ips.iter().filter(|ip| lookup::is_private(**ip)).map(|ip| ip.to_string()).collect();
        if !private.is_empty() && !allow_private {
            f.push(Finding::warning(
                CHECK,
                "mta-sts-private-address",
                format!("{host} resolves to a private or loopback address: {}", private.join(", ")),
                format!("publish {host}'s public address (or run with --allow-private for an internal domain)"),
            ));
        }
    }
    let Ok(parsed) = mailgate_core::Domain::parse(domain, false) else { return f };
    let fetcher = MtaSts::new(resolver.clone(), fetch.tls.clone(), fetch.port, fetch.timeout);
    let policy = match fetcher.policy(&parsed).await {
        Ok(Some(p)) => p,
        Ok(None) => return f,
        Err(PolicyError::Fetch(e)) => {
            f.push(Finding::error(
                CHECK,
                "mta-sts-fetch-failed",
                format!("the policy could not be fetched: {e}"),
                format!("serve the policy at https://{host}/.well-known/mta-sts.txt with a certificate valid for {host}, status 200, no redirect"),
            ));
            return f;
        }
        Err(PolicyError::Invalid(e)) => {
            f.push(Finding::error(
                CHECK,
                "mta-sts-policy-invalid",
                format!("the policy at https://{host}/.well-known/mta-sts.txt is invalid: {e}"),
                "serve text/plain with version: STSv1, mode, one mx: line per MX host, and max_age (RFC 8461 §3.2)",
            ));
            return f;
        }
    };
    match policy.mode {
        Mode::Enforce => f.push(Finding::ok(CHECK, "mta-sts-mode", "mode: enforce")),
        Mode::Testing => f.push(Finding::warning(
            CHECK,
            "mta-sts-testing",
            "mode: testing: senders report TLS failures but deliver anyway",
            "switch to mode: enforce (and change the TXT id) once TLS-RPT reports show no failures",
        )),
        Mode::None => f.push(Finding::warning(
            CHECK,
            "mta-sts-mode-none",
            "mode: none: the policy is withdrawn",
            "publish mode: testing or enforce, or remove the TXT record once caches expire",
        )),
    }
    if policy.mode != Mode::None {
        let missed: Vec<&String> = mx_hosts.iter().filter(|h| !policy.allows(h)).collect();
        if missed.is_empty() {
            if !mx_hosts.is_empty() {
                f.push(Finding::ok(CHECK, "mta-sts-mx", format!("the mx patterns ({}) cover every MX host", policy.mx.join(", "))));
            }
        } else {
            let list = missed.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", ");
            f.push(Finding::error(
                CHECK,
                "mta-sts-mx-mismatch",
                format!(
                    "the mx patterns ({}) do not match the MX host(s) {list}: senders enforcing the policy will not deliver there",
                    policy.mx.join(", ")
                ),
                format!("add \"mx: {}\" to the policy (and change the TXT id)", missed[0]),
            ));
        }
    }
    if policy.max_age < SHORT_MAX_AGE {
        f.push(Finding::warning(
            CHECK,
            "mta-sts-max-age-short",
            format!("max_age: {} seconds: senders forget the policy within a day", policy.max_age),
            "use max_age: 604800 (a week) or more once the policy is stable",
        ));
    } else {
        f.push(Finding::ok(CHECK, "mta-sts-max-age", format!("max_age: {} seconds", policy.max_age)));
    }
    f
}
