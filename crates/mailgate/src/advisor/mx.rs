//! MX: present, a null MX (RFC 7505), every target resolvable, and no
//! target that is a CNAME (RFC 5321 §5.1, RFC 2181 §10.3), an address
//! literal, or (without `--allow-private`) a private address.
//! May import: `advisor::lookup`.

use hickory_resolver::TokioResolver;

use super::Finding;
use super::lookup::{self, Answer};

const CHECK: &str = "mx";

/// What the MX area found; `hosts` feeds the MTA-STS coverage check.
pub struct Mx {
    pub findings: Vec<Finding>,
    /// The exchanges, by preference; empty for none or a null MX.
    pub hosts: Vec<String>,
}

pub async fn check(resolver: &TokioResolver, domain: &str, allow_private: bool) -> Mx {
    let mut findings = Vec::new();
    let mut records = match lookup::mx(resolver, domain).await {
        Answer::Found(r) => r,
        Answer::Failed(e) => {
            findings.push(Finding::error(CHECK, "mx-lookup-failed", e, "make the domain's name servers answer MX queries"));
            return Mx { findings, hosts: Vec::new() };
        }
        Answer::NoName => {
            findings.push(Finding::error(
                CHECK,
                "domain-not-found",
                format!("{domain} does not exist (NXDOMAIN)"),
                format!("check the spelling, or delegate and publish the zone of {domain}"),
            ));
            return Mx { findings, hosts: Vec::new() };
        }
        Answer::NoData => {
            findings.push(Finding::warning(
                CHECK,
                "mx-missing",
                format!("{domain} has no MX record: senders fall back to its A/AAAA address (RFC 5321 §5.1)"),
                format!("publish \"{domain}. IN MX 10 <your mail host>.\", or a null MX \"{domain}. IN MX 0 .\" if it receives no mail"),
            ));
            return Mx { findings, hosts: Vec::new() };
        }
    };
    records.sort();
    // RFC 7505: a single "0 ." record says the domain accepts no mail.
    if records.iter().any(|(_, host)| host.is_empty()) {
        if records.len() == 1 && records[0].0 == 0 {
            findings.push(Finding::ok(CHECK, "mx-null", format!("{domain} publishes a null MX: it accepts no mail (RFC 7505)")));
        } else {
            findings.push(Finding::error(
                CHECK,
                "mx-null-mixed",
                "a null MX (\".\") is published together with other MX records",
                "publish either the null MX \"0 .\" alone or only real mail hosts (RFC 7505 §3)",
            ));
        }
        return Mx { findings, hosts: Vec::new() };
    }
    let mut hosts = Vec::new();
    for (pref, host) in &records {
        hosts.push(host.clone());
        if host.parse::<std::net::IpAddr>().is_ok()
            || host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok()
        {
            findings.push(Finding::error(
                CHECK,
                "mx-ip-literal",
                format!("MX {pref} {host} is an address, not a host name"),
                "point the MX at a host name that has A/AAAA records (RFC 5321 §5.1)",
            ));
            continue;
        }
        if let Some(target) = lookup::cname(resolver, host).await {
            findings.push(Finding::warning(
                CHECK,
                "mx-cname",
                format!("MX {pref} {host} is a CNAME to {target}"),
                format!("point the MX at {target} directly: an MX target must not be an alias (RFC 2181 §10.3)"),
            ));
        }
        match lookup::addresses(resolver, host).await {
            Answer::Found(ips) => {
                let private: Vec<String> = ips.iter().filter(|ip| lookup::is_private(**ip)).map(|ip| ip.to_string()).collect();
                let list = ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(", ");
                if !private.is_empty() && !allow_private {
                    findings.push(Finding::warning(
                        CHECK,
                        "mx-private-address",
                        format!("MX {pref} {host} resolves to a private or loopback address: {}", private.join(", ")),
                        "publish the host's public address (or run with --allow-private for an internal domain)",
                    ));
                } else {
                    findings.push(Finding::ok(CHECK, "mx-ok", format!("MX {pref} {host}: {list}")));
                }
            }
            Answer::Failed(e) => {
                findings.push(Finding::error(CHECK, "mx-lookup-failed", e, format!("make the name servers of {host} answer")))
            }
            Answer::NoName | Answer::NoData => findings.push(Finding::error(
                CHECK,
                "mx-unresolvable",
                format!("MX {pref} {host} has no A or AAAA record"),
                format!("publish an address for {host}, or remove the MX record"),
            )),
        }
    }
    Mx { findings, hosts }
}
