//! `[dns]`: the resolver's name servers, how long the inbound checks
//! may wait for DNS, and DNSSEC for outbound lookups (`dnssec`,
//! `trust_anchor`; validated, with defaults). Imports only std and serde.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    pub(super) nameservers: Option<Vec<SocketAddr>>,
    /// Seconds for all the inbound checks of one message.
    pub(super) check_timeout: Option<f64>,
    /// Seconds per attempt of one query.
    pub(super) query_timeout: Option<f64>,
    pub(super) query_attempts: Option<usize>,
    /// Parsed records kept (SPF, DMARC, DKIM keys: each this many).
    pub(super) cache_size: Option<u64>,
    /// "validate", "trust-ad" or "off" (DANE for outbound TLS).
    pub(super) dnssec: Option<String>,
    /// DNSKEY records in zone-file syntax: the anchors DNSSEC validation starts from.
    pub(super) trust_anchor: Option<PathBuf>,
}

/// How outbound lookups learn that an answer is DNSSEC-signed, which DANE
/// (RFC 7672) needs before it may trust a TLSA record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnssecMode {
    /// No DNSSEC and so no DANE: delivery as before (MTA-STS or opportunistic TLS).
    #[default]
    Off,
    /// mailgate validates the signatures itself, from the trust anchors.
    Validate,
    /// The configured resolver validates; mailgate trusts its AD bit.
    TrustAd,
}

/// `[dns] dnssec` and `trust_anchor`.
#[derive(Debug, Clone, Default)]
pub struct DnssecSettings {
    pub mode: DnssecMode,
    /// Replaces the built-in root KSKs when it holds a root (".") key;
    /// otherwise its keys are added to them (islands of trust).
    pub trust_anchor: Option<PathBuf>,
}

/// `[dns] dnssec` and `trust_anchor`, checked.
pub(super) fn dnssec_settings(raw: &RawDns, problems: &mut Problems) -> DnssecSettings {
    let mode = match raw.dnssec.as_deref() {
        None | Some("off") => DnssecMode::Off,
        Some("validate") => DnssecMode::Validate,
        Some("trust-ad") => DnssecMode::TrustAd,
        Some(other) => {
            problems.add("dns.dnssec", format!("expected \"validate\", \"trust-ad\" or \"off\", not {other:?}"));
            DnssecMode::Off
        }
    };
    if raw.trust_anchor.is_some() && mode != DnssecMode::Validate {
        problems.add("dns.trust_anchor", "only used with dnssec = \"validate\"".into());
    }
    DnssecSettings { mode, trust_anchor: raw.trust_anchor.clone() }
}

/// `[dns]`: how long the inbound checks may wait for DNS.
#[derive(Debug, Clone, Copy)]
pub struct DnsSettings {
    /// One deadline for all the checks of a message (SPF, DKIM, ARC,
    /// DMARC): what has not finished by then is a temperror.
    pub check_timeout: Duration,
    pub query_timeout: Duration,
    pub query_attempts: usize,
    /// Entries per parsed-record cache.
    pub cache_size: u64,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings { check_timeout: Duration::from_secs(15), query_timeout: Duration::from_secs(3), query_attempts: 2, cache_size: 10_000 }
    }
}

/// `[dns]` with its defaults; a timeout must be a positive number of
/// seconds, at most an hour.
pub(super) fn dns_settings(raw: &RawDns, problems: &mut Problems) -> DnsSettings {
    let mut out = DnsSettings::default();
    let mut seconds = |key: &str, value: Option<f64>, into: &mut Duration| {
        if let Some(v) = value {
            match Duration::try_from_secs_f64(v) {
                Ok(d) if !d.is_zero() && d <= Duration::from_secs(3600) => *into = d,
                _ => problems.add(format!("dns.{key}"), format!("expected seconds between 0 and 3600, not {v}")),
            }
        }
    };
    seconds("check_timeout", raw.check_timeout, &mut out.check_timeout);
    seconds("query_timeout", raw.query_timeout, &mut out.query_timeout);
    match raw.query_attempts {
        Some(n @ 1..=5) => out.query_attempts = n,
        Some(n) => problems.add("dns.query_attempts", format!("expected 1 to 5, not {n}")),
        None => {}
    }
    match raw.cache_size {
        Some(n) if n > 0 => out.cache_size = n,
        Some(_) => problems.add("dns.cache_size", "must be positive".into()),
        None => {}
    }
    out
}
