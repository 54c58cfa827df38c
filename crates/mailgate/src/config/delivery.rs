//! `[delivery]`: how queued mail leaves (MX port, concurrency, timeouts,
//! retries, TLS requirements, MTA-STS, DANE-only destinations, VERP),
//! with every default. Imports only std, serde, idna and `config::dns`.

use std::path::PathBuf;

use serde::Deserialize;

/// `[delivery]`: how queued mail leaves, with every default.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// TCP port used when delivering to MX hosts.
    pub mx_port: u16,
    /// `smtp://[user:pass@]host:port`: send all non-local mail through it.
    pub smarthost: Option<String>,
    /// Simultaneous connections to one destination.
    pub concurrency_per_destination: usize,
    /// Simultaneous outbound connections in all.
    pub max_concurrency: usize,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
    /// Seconds an idle connection is kept for reuse.
    pub idle_timeout: u64,
    /// Seconds to wait for a TCP connection.
    pub connect_timeout: u64,
    /// Seconds to wait for a reply (RFC 5321 §4.5.3.2 asks for minutes).
    pub command_timeout: u64,
    /// Seconds before the first retry; later retries back off exponentially.
    pub retry_initial: u64,
    /// Longest delay between retries, in seconds.
    pub retry_max: u64,
    /// Seconds after which undelivered mail is bounced.
    pub max_age: u64,
    /// Seconds after which the sender gets a delay warning; 0 turns them off.
    pub delay_warning: u64,
    /// Messages the scheduler keeps in flight at once (its memory window).
    pub window: usize,
    /// Send smart host credentials even when STARTTLS is not available.
    pub danger_smarthost_auth_without_tls: bool,
    /// Recipient domains whose mail must travel over TLS (STARTTLS
    /// required; the certificate is not checked unless MTA-STS says so).
    pub require_tls: Vec<String>,
    /// Recipient domains that must be reached over DANE (RFC 7672), as
    /// Postfix's `dane-only`: `"example.net"`, `"*.example.org"` (every
    /// subdomain, not the domain itself) or `"*"` (every MX destination).
    /// Lower-case without a final dot once validated.
    pub dane_required: Vec<String>,
    /// Honour MTA-STS policies (RFC 8461) of recipient domains.
    pub mta_sts: bool,
    /// HTTPS port for fetching MTA-STS policies (tests use another).
    pub mta_sts_port: u16,
    /// Extra CA certificates (PEM) trusted for MTA-STS, besides the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// Rewrite the envelope sender of submitted mail to a per-recipient
    /// VERP address, so asynchronous bounces find their message.
    pub verp: bool,
    /// The domain of VERP addresses; the sender's domain when unset.
    pub return_path_domain: Option<String>,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            mx_port: 25,
            smarthost: None,
            concurrency_per_destination: 20,
            max_concurrency: 200,
            max_messages_per_connection: 100,
            idle_timeout: 5,
            connect_timeout: 30,
            command_timeout: 300,
            retry_initial: 300,
            retry_max: 4 * 3600,
            max_age: 5 * 24 * 3600,
            delay_warning: 0,
            window: 10_000,
            danger_smarthost_auth_without_tls: false,
            require_tls: Vec::new(),
            dane_required: Vec::new(),
            mta_sts: true,
            mta_sts_port: 443,
            ca_file: None,
            verp: false,
            return_path_domain: None,
        }
    }
}

/// `domain` against `dane_required` patterns (validated: lower-case, no
/// final dot).
pub fn dane_required_matches(patterns: &[String], domain: &str) -> bool {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    patterns.iter().any(|p| {
        if p == "*" {
            return true;
        }
        match p.strip_prefix("*.") {
            // A subdomain at any depth: "a.example.org", "b.a.example.org".
            Some(parent) => domain.strip_suffix(parent).is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => domain == *p,
        }
    })
}

/// `[delivery] dane_required`, checked and normalised: each entry a domain
/// name, `*.` and a domain, or `*`. DANE needs DNSSEC answers, so the list
/// is refused under `[dns] dnssec = "off"` (every listed domain would be
/// deferred for ever), and beside a smart host (mail never goes to MX
/// hosts, so the rule would silently do nothing).
pub(super) fn dane_required(d: &Delivery, dnssec: super::DnssecMode) -> Result<Vec<String>, Vec<(String, String)>> {
    const KEY: &str = "delivery.dane_required";
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for entry in &d.dane_required {
        let p = entry.trim().trim_end_matches('.');
        let (wild, name) = match p.strip_prefix("*.") {
            Some(rest) => ("*.", rest),
            None => ("", p),
        };
        // Recipient domains are compared in their A-label form, as DNS has them.
        let ascii = idna::domain_to_ascii(name).ok().filter(|n| {
            !n.is_empty()
                && n.split('.')
                    .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        });
        if p == "*" {
            out.push(p.to_string());
        } else if let Some(ascii) = ascii {
            out.push(format!("{wild}{ascii}"));
        } else {
            problems.push((KEY.to_string(), format!("expected a domain name, \"*.\" and a domain name, or \"*\", not {entry:?}")));
        }
    }
    if !out.is_empty() && dnssec == super::DnssecMode::Off {
        problems.push((
            KEY.to_string(),
            "needs [dns] dnssec = \"validate\" or \"trust-ad\": without DNSSEC no TLSA record can be trusted, and mail to every listed domain would be deferred".to_string(),
        ));
    }
    if !out.is_empty() && d.smarthost.is_some() {
        problems.push((
            KEY.to_string(),
            "has no effect with [delivery] smarthost: mail goes to the smart host, never to the MX hosts DANE applies to".to_string(),
        ));
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dane_required_patterns() {
        let p = vec!["example.net".to_string(), "*.example.org".to_string()];
        assert!(dane_required_matches(&p, "example.net"));
        assert!(dane_required_matches(&p, "example.net."));
        assert!(!dane_required_matches(&p, "sub.example.net"));
        assert!(dane_required_matches(&p, "a.example.org"));
        assert!(dane_required_matches(&p, "b.a.example.org"));
        assert!(!dane_required_matches(&p, "example.org"));
        assert!(!dane_required_matches(&p, "badexample.org"));
        assert!(dane_required_matches(&["*".to_string()], "anything.test"));
        assert!(!dane_required_matches(&[], "example.net"));
    }

    #[test]
    fn dane_required_is_checked() {
        use super::super::DnssecMode;
        let d = |list: &[&str]| Delivery { dane_required: list.iter().map(|s| s.to_string()).collect(), ..Delivery::default() };
        assert_eq!(
            dane_required(&d(&["Example.NET.", "*.x.test"]), DnssecMode::Validate),
            Ok(vec!["example.net".into(), "*.x.test".into()])
        );
        let off = dane_required(&d(&["example.net"]), DnssecMode::Off).unwrap_err();
        assert!(off[0].1.contains("dnssec"), "{off:?}");
        assert!(dane_required(&d(&["a.*.test"]), DnssecMode::TrustAd).is_err());
        assert!(dane_required(&d(&["exa mple.net"]), DnssecMode::TrustAd).is_err());
        assert_eq!(dane_required(&d(&["Bücher.example"]), DnssecMode::TrustAd), Ok(vec!["xn--bcher-kva.example".into()]));
        assert_eq!(dane_required(&d(&[]), DnssecMode::Off), Ok(vec![]));
        let relay = Delivery { smarthost: Some("smtp://relay.test:25".into()), ..d(&["example.net"]) };
        assert!(dane_required(&relay, DnssecMode::Validate).unwrap_err()[0].1.contains("smarthost"));
    }
}
