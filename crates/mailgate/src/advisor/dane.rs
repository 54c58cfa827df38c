//! DANE (RFC 7672): the TLSA records of each MX host (`_25._tcp.<mx>`),
//! whether senders can use them (only DANE-TA 2 and DANE-EE 3 count for
//! SMTP), and, for our own MX host, whether they match the key of the
//! certificate in `[tls] cert`: a certificate with a new key that is not
//! yet published makes every DANE sender defer our mail, so this is the
//! warning before the change. With `--next-cert` the certificate to
//! install next is compared too (`dane-next-ready`/`dane-next-missing`):
//! the warning before the certificate is even installed. DNSSEC itself
//! is not validated here (the records must also be signed; `[dns] dnssec`
//! validates on delivery).
//! May import: `advisor::lookup`, `outbound::dane`.

use hickory_resolver::TokioResolver;

use super::Finding;
use super::lookup::{self, Answer};

const CHECK: &str = "dane";

/// Our own MX host and the `3 1 1` record of the certificate it will serve.
pub struct Ours {
    pub host: String,
    /// `3 1 1 <hex>`, or why it could not be computed.
    pub tlsa: Result<String, String>,
    /// The certificate file, for messages.
    pub cert: String,
    /// `--next-cert`: the certificate to install next.
    pub next: Option<Next>,
}

/// The certificate to install next and its `3 1 1` record.
pub struct Next {
    pub tlsa: String,
    pub cert: String,
}

pub async fn check(resolver: &TokioResolver, hosts: &[String], ours: Option<&Ours>) -> Vec<Finding> {
    let mut findings = Vec::new();
    if hosts.is_empty() {
        findings.push(Finding::ok(CHECK, "dane-absent", "no MX host to look up TLSA records for"));
    }
    for host in hosts {
        let name = format!("_25._tcp.{host}");
        let ours = ours.filter(|o| o.host.eq_ignore_ascii_case(host));
        match lookup::tlsa(resolver, &name).await {
            Answer::Found(records) => {
                let list = records.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                if records.iter().any(|r| r.usable()) {
                    findings.push(Finding::ok(CHECK, "dane-tlsa", format!("{name}: {list}")));
                } else {
                    findings.push(Finding::warning(
                        CHECK,
                        "dane-unusable",
                        format!("{name} has only TLSA records SMTP senders cannot use ({list}): PKIX-TA/EE (0, 1) or unknown parameters (RFC 7672 §3.1); DANE senders insist on TLS but authenticate nothing"),
                        format!("publish a DANE-EE record for the server's key: \"{name}. IN TLSA 3 1 1 <sha-256 of the key>\" (mailgate records prints it for mailgate)"),
                    ));
                }
                if let Some(o) = ours {
                    match &o.tlsa {
                        Ok(mine) if records.iter().any(|r| r.to_string().eq_ignore_ascii_case(mine)) => findings.push(Finding::ok(
                            CHECK,
                            "dane-match",
                            format!("{name} matches the key of {} ({mine})", o.cert),
                        )),
                        Ok(mine) => findings.push(Finding::error(
                            CHECK,
                            "dane-mismatch",
                            format!("no TLSA record of {name} matches the key of {}: once it is served, every DANE sender defers mail to {host}", o.cert),
                            format!("publish \"{name}. IN TLSA {mine}\" beside the current records and wait two TTLs before serving this certificate; remove the old record after the switch"),
                        )),
                        Err(e) => findings.push(Finding::warning(
                            CHECK,
                            "dane-no-certificate",
                            format!("cannot compare {name} with our certificate: {e}"),
                            "set [tls] cert to the certificate the server serves",
                        )),
                    }
                    if let Some(n) = &o.next {
                        findings.push(next_finding(&name, &records, n));
                    }
                }
            }
            Answer::NoName | Answer::NoData => {
                let hint = match ours.map(|o| &o.tlsa) {
                    Some(Ok(mine)) => format!(" (to add DANE, sign the zone and publish \"{name}. IN TLSA {mine}\")"),
                    _ => String::new(),
                };
                findings.push(Finding::ok(CHECK, "dane-absent", format!("{host} publishes no TLSA record: no DANE{hint}")));
            }
            Answer::Failed(e) => findings.push(Finding::warning(
                CHECK,
                "dane-lookup-failed",
                e,
                format!("make the name servers of {host} answer TLSA queries: a DANE sender defers mail while they fail (RFC 7672 §2.2)"),
            )),
        }
    }
    findings
}

/// The rollover check: the next certificate's key must be published (and
/// have been for two TTLs) before that certificate is served.
fn next_finding(name: &str, records: &[crate::outbound::dane::Tlsa], next: &Next) -> Finding {
    if records.iter().any(|r| r.to_string().eq_ignore_ascii_case(&next.tlsa)) {
        Finding::ok(
            CHECK,
            "dane-next-ready",
            format!(
                "{name} already pins the key of the next certificate {} ({}): once the record has been published for two TTLs, install it",
                next.cert, next.tlsa
            ),
        )
    } else {
        Finding::warning(
            CHECK,
            "dane-next-missing",
            format!(
                "no TLSA record of {name} matches the key of the next certificate {}: installing it now would make every DANE sender defer our mail",
                next.cert
            ),
            format!(
                "publish \"{name}. IN TLSA {}\" beside the current records, wait two TTLs, then install the certificate; remove the old record after the switch",
                next.tlsa
            ),
        )
    }
}
