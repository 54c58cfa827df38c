//! The advisor's DNS questions, each answer sorted into "found", "the name
//! does not exist", "no records of that type" and "could not ask", since
//! the findings differ (an SPF void lookup is the middle two). Every query
//! goes through the one resolver `check` built (`--nameserver`, else
//! `[dns]`, else the system's). May import: `dns`.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};

/// One DNS answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Found(Vec<T>),
    /// NXDOMAIN.
    NoName,
    /// The name exists, with no record of this type.
    NoData,
    /// SERVFAIL, timeout, refused: the resolver could not say.
    Failed(String),
}

impl<T> Answer<T> {
    /// The records, none unless found.
    pub fn records(&self) -> &[T] {
        match self {
            Answer::Found(v) => v,
            _ => &[],
        }
    }

    /// RFC 7208 §4.6.4: a void lookup answers NXDOMAIN or no records.
    pub fn is_void(&self) -> bool {
        matches!(self, Answer::NoName | Answer::NoData) || matches!(self, Answer::Found(v) if v.is_empty())
    }
}

/// Asks `name` (absolute) for `rtype`; `pick` takes the records wanted
/// out of the answer (hickory also hands back the CNAMEs it followed).
async fn ask<T>(resolver: &TokioResolver, name: &str, rtype: RecordType, pick: impl Fn(&RData) -> Option<T>) -> Answer<T> {
    let fqdn = if name.ends_with('.') { name.to_string() } else { format!("{name}.") };
    match resolver.lookup(fqdn.as_str(), rtype).await {
        Ok(lookup) => {
            let found: Vec<T> = lookup.answers().iter().filter_map(|r| pick(&r.data)).collect();
            if found.is_empty() { Answer::NoData } else { Answer::Found(found) }
        }
        Err(e) if e.is_nx_domain() => Answer::NoName,
        Err(e) if e.is_no_records_found() => Answer::NoData,
        Err(e) => Answer::Failed(format!("{rtype} lookup of {name} failed: {e}")),
    }
}

/// The TLSA records at `name` (RFC 6698).
pub async fn tlsa(resolver: &TokioResolver, name: &str) -> Answer<crate::outbound::dane::Tlsa> {
    ask(resolver, name, RecordType::TLSA, crate::outbound::dane::Tlsa::from_rdata).await
}

/// The TXT records at `name`, each one's strings joined (RFC 7208 §3.3).
pub async fn txt(resolver: &TokioResolver, name: &str) -> Answer<String> {
    ask(resolver, name, RecordType::TXT, |d| match d {
        RData::TXT(t) => Some(t.txt_data.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect()),
        _ => None,
    })
    .await
}

/// The MX records at `name`: (preference, exchange without the final dot).
pub async fn mx(resolver: &TokioResolver, name: &str) -> Answer<(u16, String)> {
    ask(resolver, name, RecordType::MX, |d| match d {
        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii().trim_end_matches('.').to_ascii_lowercase())),
        _ => None,
    })
    .await
}

/// The A and AAAA records at `name`. "No such name" wins over "no
/// records"; a failure of either query is a failure.
pub async fn addresses(resolver: &TokioResolver, name: &str) -> Answer<IpAddr> {
    let v4 = ask(resolver, name, RecordType::A, |d| match d {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        _ => None,
    })
    .await;
    if let Answer::NoName | Answer::Failed(_) = v4 {
        return v4;
    }
    let v6 = ask(resolver, name, RecordType::AAAA, |d| match d {
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    })
    .await;
    match (v4, v6) {
        (_, Answer::Failed(e)) => Answer::Failed(e),
        (Answer::Found(mut a), Answer::Found(b)) => {
            a.extend(b);
            Answer::Found(a)
        }
        (Answer::Found(a), _) => Answer::Found(a),
        (_, Answer::Found(b)) => Answer::Found(b),
        (_, Answer::NoName) => Answer::NoName,
        _ => Answer::NoData,
    }
}

/// The target when `name` itself is a CNAME.
pub async fn cname(resolver: &TokioResolver, name: &str) -> Option<String> {
    let wanted = name.trim_end_matches('.').to_ascii_lowercase();
    let fqdn = format!("{wanted}.");
    let lookup = resolver.lookup(fqdn.as_str(), RecordType::CNAME).await.ok()?;
    lookup.answers().iter().find_map(|r| match &r.data {
        RData::CNAME(c) if r.name.to_ascii().trim_end_matches('.').eq_ignore_ascii_case(&wanted) => {
            Some(c.0.to_ascii().trim_end_matches('.').to_ascii_lowercase())
        }
        _ => None,
    })
}

/// Loopback, private (RFC 1918, RFC 4193), link-local, CGNAT or
/// unspecified: not reachable from the Internet.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["192.0.2.1", "8.8.8.8", "2001:db8::1", "100.128.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
