//! Where a report may go: the `rua` URIs of a DMARC record (with their
//! `!size` limits), the RFC 7489 §7.1 check that an external destination
//! agreed to receive reports about a domain, and a domain's TLS-RPT record
//! (RFC 8460 §3). Every lookup uses the server's resolver.

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::{ReportUri, TlsRpt};

/// One `mailto:` destination of a DMARC `rua`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailto {
    pub address: String,
    /// The domain part, lower-cased.
    pub host: String,
    /// The `!size` limit in octets; 0 for none.
    pub max_size: u64,
}

/// Parses the `rua` URIs as the store keeps them: `mailto:addr[!size]`
/// (a bare address is read as a `mailto:`). Other schemes are skipped: DMARC
/// aggregate reports go by mail only.
pub fn mailtos(rua: &[String]) -> Vec<Mailto> {
    let mut out: Vec<Mailto> = Vec::new();
    for uri in rua {
        let uri = uri.trim();
        let rest = match uri.split_once(':') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mailto") => rest,
            Some((scheme, _)) if !scheme.contains('@') => continue,
            _ => uri,
        };
        let (address, size) = match rest.rsplit_once('!') {
            Some((a, s)) => (a.trim(), parse_size(s.trim())),
            None => (rest.trim(), Some(0)),
        };
        let Some(max_size) = size else {
            tracing::info!(uri, "DMARC rua with an unreadable size limit skipped");
            continue;
        };
        let Some((local, host)) = address.rsplit_once('@') else { continue };
        if local.is_empty() || host.is_empty() {
            continue;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if !out.iter().any(|m| m.address.eq_ignore_ascii_case(address)) {
            out.push(Mailto { address: address.to_string(), host, max_size });
        }
    }
    out
}

/// `10m`, `500k`, `2g`, `1t` or plain octets (RFC 7489 §6.2).
fn parse_size(s: &str) -> Option<u64> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    Some(n.saturating_mul(mult))
}

/// The TXT strings at `name`: `Ok(empty)` when there is none,
/// `Err` when the resolver could not say.
async fn txt(resolver: &TokioResolver, name: &str) -> Result<Vec<String>, String> {
    match resolver.txt_lookup(name).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(t.txt_data.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<String>()),
                _ => None,
            })
            .collect()),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(format!("TXT lookup of {name} failed: {e}")),
    }
}

fn is_dmarc1(record: &str) -> bool {
    let r = record.trim_start();
    r.strip_prefix("v=DMARC1").is_some_and(|rest| rest.trim_start().is_empty() || rest.trim_start().starts_with(';'))
}

/// `a` is `b` or a name under it.
fn within(a: &str, b: &str) -> bool {
    a == b || a.strip_suffix(b).is_some_and(|p| p.ends_with('.'))
}

/// The organisational domain of `domain` by the RFC 9989 DNS tree walk:
/// the shortest name on the way up with a DMARC record, unless a `psd=`
/// tag says otherwise; the domain itself when no name has one.
pub async fn organizational(resolver: &TokioResolver, domain: &str) -> Result<String, String> {
    let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
    let total = labels.len();
    if total < 2 {
        return Ok(domain.to_string());
    }
    let mut found: Vec<(String, Option<bool>)> = Vec::new();
    let mut count = total;
    loop {
        let name = labels[total - count..].join(".");
        let records = txt(resolver, &format!("_dmarc.{name}.")).await?;
        if let Some(r) = records.iter().find(|r| is_dmarc1(r)) {
            let psd = r.split(';').map(str::trim).find_map(|kv| kv.strip_prefix("psd=")).map(|v| v.trim().eq_ignore_ascii_case("y"));
            let stop = psd.is_some();
            found.push((name, psd));
            if stop {
                break;
            }
        }
        if count == 1 {
            break;
        }
        // At most eight queries: from eight labels or more, jump to seven.
        count = if count >= 8 { 7 } else { count - 1 };
    }
    for (name, psd) in &found {
        match psd {
            Some(false) => return Ok(name.clone()),
            Some(true) if name != domain => {
                let depth = name.split('.').count() + 1;
                return Ok(labels[total.saturating_sub(depth)..].join("."));
            }
            _ => {}
        }
    }
    Ok(found.last().map(|(n, _)| n.clone()).unwrap_or_else(|| domain.to_string()))
}

/// Whether reports about `policy_domain` may go to `host` (RFC 7489 §7.1):
/// yes when both have the same organisational domain; otherwise only when
/// `<policy_domain>._report._dmarc.<host>` holds a `v=DMARC1` record.
/// `Err` when DNS could not answer (try again next time).
pub async fn authorized(resolver: &TokioResolver, policy_domain: &str, host: &str) -> Result<bool, String> {
    if within(host, policy_domain) {
        return Ok(true);
    }
    if organizational(resolver, host).await? == organizational(resolver, policy_domain).await? {
        return Ok(true);
    }
    let records = txt(resolver, &format!("{policy_domain}._report._dmarc.{host}.")).await?;
    Ok(records.iter().any(|r| is_dmarc1(r)))
}

/// The `rua` of `domain`'s TLS-RPT record (`_smtp._tls`), `Ok(None)` when
/// it publishes none (or more than one, which RFC 8460 §3 makes none).
pub async fn tlsrpt(resolver: &TokioResolver, domain: &str) -> Result<Option<Vec<ReportUri>>, String> {
    let records = txt(resolver, &format!("_smtp._tls.{domain}.")).await?;
    let ours: Vec<&String> = records.iter().filter(|r| r.trim_start().starts_with("v=TLSRPTv1")).collect();
    let [one] = ours.as_slice() else { return Ok(None) };
    match TlsRpt::parse(one.as_bytes()) {
        Ok(r) if !r.rua.is_empty() => Ok(Some(r.rua)),
        Ok(_) => Ok(None),
        Err(e) => {
            tracing::info!(domain, record = %one, error = ?e, "unreadable TLS-RPT record; no report");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rua_parsing() {
        let m = mailtos(&[
            "mailto:a@Example.com!10m".into(),
            "b@example.net".into(),
            "https://x.example/".into(),
            "mailto:c@example.org!5x".into(),
            "mailto:a@example.com".into(),
        ]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], Mailto { address: "a@Example.com".into(), host: "example.com".into(), max_size: 10 << 20 });
        assert_eq!(m[1].max_size, 0);
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("2k"), Some(2048));
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn dmarc1_and_within() {
        assert!(is_dmarc1("v=DMARC1"));
        assert!(is_dmarc1("v=DMARC1; p=none"));
        assert!(!is_dmarc1("v=DMARC10"));
        assert!(!is_dmarc1("v=spf1"));
        assert!(within("a.example.com", "example.com"));
        assert!(within("example.com", "example.com"));
        assert!(!within("badexample.com", "example.com"));
    }
}
