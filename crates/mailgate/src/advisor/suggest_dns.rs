//! The DNS side of `spf suggest`: the domain's published SPF record, each
//! include's cost in DNS lookups (RFC 7208 §4.6.4, counted as check_host()
//! counts them) and the addresses it resolves to (for flattening), and
//! reverse names of sources with a short timeout.
//!
//! Every answer is hostile input: records are parsed with the checks'
//! strict parser, names and loops are bounded, nothing panics on them.
//!
//! May import: `checks::spf::record`, hickory, ipnet.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use ipnet::IpNet;

use crate::checks::spf::record::{Record, is_spf};

/// One lookup: a silent nameserver must not hold the advisor up.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Reverse names: shorter still, there may be hundreds.
pub const PTR_TIMEOUT: Duration = Duration::from_millis(1500);
/// Reverse names looked up at most (the busiest sources first).
pub const MAX_PTR: usize = 256;
/// Include nesting followed at most (check_host() would stop at 10 terms).
const MAX_DEPTH: usize = 12;
/// MX names an `mx` term resolves at most (§4.6.4).
const MAX_MX: usize = 10;

/// The records of `rtype` at `name`; empty for none, an error, a timeout.
async fn lookup(resolver: &TokioResolver, name: &str, rtype: RecordType) -> Vec<RData> {
    let Ok(name) = Name::from_ascii(format!("{}.", name.trim_end_matches('.'))) else { return Vec::new() };
    match tokio::time::timeout(QUERY_TIMEOUT, resolver.lookup(name, rtype)).await {
        Ok(Ok(l)) => l.answers().iter().filter(|r| r.record_type() == rtype).map(|r| r.data.clone()).collect(),
        _ => Vec::new(),
    }
}

/// The SPF records (`v=spf1 ...`) published at `domain`.
pub async fn spf_records(resolver: &TokioResolver, domain: &str) -> Vec<String> {
    lookup(resolver, domain, RecordType::TXT)
        .await
        .iter()
        .filter_map(|r| match r {
            RData::TXT(t) => Some(t.txt_data.iter().flat_map(|s| s.iter().copied()).collect::<Vec<u8>>()),
            _ => None,
        })
        .filter(|t| is_spf(t))
        .map(|t| String::from_utf8_lossy(&t).into_owned())
        .collect()
}

/// The DMARC record published at `_dmarc.<domain>`, if one.
pub async fn dmarc_record(resolver: &TokioResolver, domain: &str) -> Option<String> {
    lookup(resolver, &format!("_dmarc.{domain}"), RecordType::TXT).await.iter().find_map(|r| match r {
        RData::TXT(t) => {
            let text = String::from_utf8_lossy(&t.txt_data.iter().flat_map(|s| s.iter().copied()).collect::<Vec<u8>>()).into_owned();
            text.to_ascii_lowercase().starts_with("v=dmarc1").then_some(text)
        }
        _ => None,
    })
}

async fn addresses(resolver: &TokioResolver, name: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for rtype in [RecordType::A, RecordType::AAAA] {
        for r in lookup(resolver, name, rtype).await {
            match r {
                RData::A(a) => out.push(IpAddr::V4(a.0)),
                RData::AAAA(a) => out.push(IpAddr::V6(a.0)),
                _ => {}
            }
        }
    }
    out
}

/// The reverse name of `ip`, without the final dot; `None` when there is
/// none or it does not come in time.
pub async fn ptr(resolver: &TokioResolver, ip: IpAddr) -> Option<String> {
    let name = match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    };
    let Ok(name) = Name::from_ascii(format!("{name}.")) else { return None };
    let answer = tokio::time::timeout(PTR_TIMEOUT, resolver.lookup(name, RecordType::PTR)).await.ok()?.ok()?;
    answer.answers().iter().find_map(|r| match &r.data {
        RData::PTR(p) => {
            let text = p.0.to_ascii();
            let text = text.trim_end_matches('.');
            (!text.is_empty()).then(|| text.to_string())
        }
        _ => None,
    })
}

/// What an include (or a whole record) costs and resolves to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walk {
    /// DNS-querying terms, nested includes and redirects included.
    pub lookups: usize,
    /// Every address range it authorises (`+` qualifiers): `ip4`/`ip6`
    /// terms, and `a`/`mx` terms resolved now.
    pub nets: Vec<IpNet>,
    /// Terms that cannot be replaced by addresses (`ptr`, `exists`,
    /// macros), or names that did not resolve to a record: an include
    /// with any cannot be flattened faithfully.
    pub unflattenable: Vec<String>,
}

/// Walks the SPF record at `domain` (the target of an include): counts
/// its lookups and resolves its addresses. The include term itself is not
/// counted; add 1 for it.
pub async fn walk(resolver: &TokioResolver, domain: &str) -> Walk {
    let mut w = Walk::default();
    let mut seen = BTreeSet::new();
    walk_into(resolver, domain, 0, &mut seen, &mut w).await;
    w.nets = IpNet::aggregate(&w.nets);
    w
}

fn walk_into<'a>(
    resolver: &'a TokioResolver,
    domain: &'a str,
    depth: usize,
    seen: &'a mut BTreeSet<String>,
    w: &'a mut Walk,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if depth > MAX_DEPTH || !seen.insert(domain.clone()) {
            w.unflattenable.push(format!("{domain}: include loop or nesting too deep"));
            return;
        }
        let records = spf_records(resolver, &domain).await;
        let [text] = records.as_slice() else {
            w.unflattenable.push(format!("{domain}: {} SPF records", records.len()));
            return;
        };
        if let Err(e) = Record::parse(text.as_bytes()) {
            w.unflattenable.push(format!("{domain}: {e}"));
            return;
        }
        let mut redirect = None;
        for term in text.split(' ').skip(1).filter(|t| !t.is_empty()) {
            let lower = term.to_ascii_lowercase();
            if let Some(target) = lower.strip_prefix("redirect=") {
                redirect = Some(target.to_string());
                continue;
            }
            if lower.contains('=') && !lower.contains(':') {
                continue; // exp= and unknown modifiers cost nothing here
            }
            let (authorises, body) = match lower.as_bytes().first() {
                Some(b'+') => (true, &lower[1..]),
                Some(b'-' | b'~' | b'?') => (false, &lower[1..]),
                _ => (true, lower.as_str()),
            };
            let (name, arg) = match body.find([':', '/']) {
                Some(i) => (&body[..i], &body[i..]),
                None => (body, ""),
            };
            match name {
                "all" => break,
                "ip4" | "ip6" => {
                    let net = arg.trim_start_matches(':');
                    let parsed = if net.contains('/') { net.parse::<IpNet>().ok() } else { net.parse::<IpAddr>().ok().map(IpNet::from) };
                    if let (true, Some(n)) = (authorises, parsed) {
                        w.nets.push(n.trunc());
                    }
                }
                "include" => {
                    w.lookups += 1;
                    let target = arg.trim_start_matches(':');
                    if target.contains('%') {
                        w.unflattenable.push(term.to_string());
                    } else {
                        // A `-include:` removes nothing it would add: its
                        // addresses fail instead of pass, so they are not
                        // authorised, but its lookups still count.
                        let mut inner = Walk::default();
                        walk_into(resolver, target, depth + 1, seen, &mut inner).await;
                        w.lookups += inner.lookups;
                        if authorises {
                            w.nets.extend(inner.nets);
                        }
                        w.unflattenable.extend(inner.unflattenable);
                    }
                }
                "a" | "mx" => {
                    w.lookups += 1;
                    if !authorises {
                        continue;
                    }
                    let (spec, v4, v6) = cidr(arg);
                    let target = spec.unwrap_or(&domain);
                    if target.contains('%') {
                        w.unflattenable.push(term.to_string());
                        continue;
                    }
                    let hosts: Vec<String> = if name == "a" {
                        vec![target.to_string()]
                    } else {
                        lookup(resolver, target, RecordType::MX)
                            .await
                            .iter()
                            .filter_map(|r| match r {
                                RData::MX(mx) => Some(mx.exchange.to_ascii()),
                                _ => None,
                            })
                            .take(MAX_MX)
                            .collect()
                    };
                    for h in hosts {
                        for ip in addresses(resolver, &h).await {
                            let len = if ip.is_ipv4() { v4 } else { v6 };
                            if let Ok(n) = IpNet::new(ip, len) {
                                w.nets.push(n.trunc());
                            }
                        }
                    }
                }
                "ptr" | "exists" => {
                    w.lookups += 1;
                    w.unflattenable.push(term.to_string());
                }
                _ => {}
            }
        }
        if let Some(target) = redirect {
            w.lookups += 1;
            if target.contains('%') {
                w.unflattenable.push(format!("redirect={target}"));
            } else {
                walk_into(resolver, &target, depth + 1, seen, w).await;
            }
        }
    })
}

/// Splits an `a`/`mx` argument (`:domain/24//64`) into the domain-spec and
/// the two prefix lengths.
fn cidr(arg: &str) -> (Option<&str>, u8, u8) {
    let mut head = arg;
    let mut v6 = 128;
    let mut v4 = 32;
    if let Some(i) = head.find("//") {
        v6 = head[i + 2..].parse().unwrap_or(128).min(128);
        head = &head[..i];
    }
    if let Some(i) = head.rfind('/') {
        v4 = head[i + 1..].parse().unwrap_or(32).min(32);
        head = &head[..i];
    }
    let spec = head.strip_prefix(':').filter(|s| !s.is_empty());
    (spec, v4, v6)
}

/// The literal include targets of a record, in order (a target with a
/// macro cannot be judged in advance and is left out).
pub fn includes(record: &str) -> Vec<String> {
    record
        .split(' ')
        .filter_map(|t| {
            let t = t.to_ascii_lowercase();
            let t = t.strip_prefix('+').unwrap_or(&t).to_string();
            t.strip_prefix("include:").filter(|d| !d.contains('%') && !d.is_empty()).map(|d| d.trim_end_matches('.').to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_splits_spec_and_lengths() {
        assert_eq!(cidr(""), (None, 32, 128));
        assert_eq!(cidr(":mail.example.test/24//64"), (Some("mail.example.test"), 24, 64));
        assert_eq!(cidr("/28"), (None, 28, 128));
    }

    #[test]
    fn includes_are_literal_targets_only() {
        assert_eq!(
            includes("v=spf1 ip4:192.0.2.1 include:_spf.a.test +include:B.test. include:%{d}.x.test -include:c.test ~all"),
            vec!["_spf.a.test", "b.test"]
        );
    }
}
