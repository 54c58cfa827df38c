//! check_host() (RFC 7208 §4): fetch a domain's record over DNS and
//! evaluate it for one client, within the §4.6.4 processing limits.
//!
//! Every DNS answer is hostile input: names from PTR and MX answers are
//! only compared or looked up, never trusted to be well formed.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use super::SpfResult;
use super::macros::{MacroString, Vars};
use super::record::{Cidr, Mechanism, Qualifier, Record, is_spf};

/// DNS-querying terms (include, a, mx, ptr, exists, redirect) per check.
pub const MAX_DNS_TERMS: usize = 10;
/// Terms whose lookup found nothing (NXDOMAIN or no answer) per check.
pub const MAX_VOID_LOOKUPS: usize = 2;
/// MX names an `mx` term may look up; more is a permerror.
pub const MAX_MX_NAMES: usize = 10;
/// PTR names a `ptr` term or `%{p}` looks at; the rest are ignored.
pub const MAX_PTR_NAMES: usize = 10;
/// Longest domain name to query; longer expansions lose labels on the left (§7.3).
const MAX_NAME_LEN: usize = 253;
/// Longest explanation kept: it ends up in a reply and a header field, and
/// a hostile exp= record can expand `%{s}` thousands of times.
const MAX_EXPLANATION_LEN: usize = 512;

/// A check_host() result and, for a fail, the expanded explanation.
pub type Verdict = (SpfResult, Option<String>);

/// What ends an evaluation early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abort {
    Temp,
    Perm,
}

impl Abort {
    fn result(self) -> SpfResult {
        match self {
            Abort::Temp => SpfResult::TempError,
            Abort::Perm => SpfResult::PermError,
        }
    }
}

/// A domain's SPF record as looked up: what [`Evaluation::record`] found,
/// kept for the TTL. Temporary errors are never kept.
#[derive(Clone)]
pub enum Found {
    Record(Arc<Record>),
    /// No SPF record (no TXT records, or none starting `v=spf1`).
    NoRecord,
    /// Several SPF records, or one that does not parse.
    Invalid,
}

/// Parsed SPF records by lower-case domain.
pub type RecordCache = crate::checks::cache::RecordCache<Found>;

/// Why a lookup gave no records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    /// NXDOMAIN or an empty answer: a void lookup.
    Void,
    /// Timeout, SERVFAIL and the like: temperror.
    Error,
}

/// The arguments of check_host() that stay the same through recursion.
pub struct Client<'a> {
    pub ip: IpAddr,
    /// `<sender>`, always with a local-part.
    pub sender: &'a str,
    pub helo: &'a str,
    /// This host's name (`%{r}`).
    pub receiver: &'a str,
}

/// One top-level check with its shared counters (§4.6.4: the limits are
/// global to all evaluations of one check, across include and redirect).
pub struct Evaluation<'a> {
    resolver: &'a TokioResolver,
    records: &'a RecordCache,
    client: &'a Client<'a>,
    local_part: &'a str,
    sender_domain: &'a str,
    now: u64,
    dns_terms: usize,
    void_lookups: usize,
}

type BoxFuture<'b, T> = Pin<Box<dyn Future<Output = T> + Send + 'b>>;

impl<'a> Evaluation<'a> {
    pub fn new(resolver: &'a TokioResolver, records: &'a RecordCache, client: &'a Client<'a>) -> Self {
        let (local_part, sender_domain) = client.sender.rsplit_once('@').unwrap_or(("postmaster", client.sender));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Evaluation { resolver, records, client, local_part, sender_domain, now, dns_terms: 0, void_lookups: 0 }
    }

    /// check_host(<ip>, <domain>, <sender>). `explain`: fetch the exp=
    /// text on a fail (not for an include's inner check, §6.2).
    pub fn check_host(&mut self, domain: String, explain: bool) -> BoxFuture<'_, Verdict> {
        Box::pin(async move {
            let record = match self.record(&domain).await {
                Ok(Some(record)) => record,
                Ok(None) => return (SpfResult::None, None),
                Err(abort) => return (abort.result(), None),
            };
            match self.directives(&record, &domain).await {
                Ok(Some(qualifier)) => {
                    let result = match qualifier {
                        Qualifier::Pass => SpfResult::Pass,
                        Qualifier::Fail => SpfResult::Fail,
                        Qualifier::SoftFail => SpfResult::SoftFail,
                        Qualifier::Neutral => SpfResult::Neutral,
                    };
                    let explanation = if result == SpfResult::Fail && explain { self.explanation(&record, &domain).await } else { None };
                    (result, explanation)
                }
                Err(abort) => (abort.result(), None),
                // No match: redirect= if any (never reached with an `all`, which always matches).
                Ok(None) => match &record.redirect {
                    None => (SpfResult::Neutral, None),
                    Some(spec) => {
                        if let Err(abort) = self.count_dns_term() {
                            return (abort.result(), None);
                        }
                        let Some(target) = self.target(spec, &domain).await else { return (SpfResult::PermError, None) };
                        match self.check_host(target, explain).await {
                            (SpfResult::None, _) => (SpfResult::PermError, None),
                            verdict => verdict,
                        }
                    }
                },
            }
        })
    }

    /// The domain's one SPF record; `None` when it has none (§4.4, §4.5).
    async fn record(&mut self, domain: &str) -> Result<Option<Arc<Record>>, Abort> {
        let key = domain.to_ascii_lowercase();
        let found = match self.records.get(key.as_str()) {
            Some(found) => found,
            None => {
                let (found, until) = self.fetch_record(domain).await?;
                if let Some(until) = until {
                    self.records.insert(key.into_boxed_str(), found.clone(), until);
                }
                found
            }
        };
        match found {
            Found::Record(record) => Ok(Some(record)),
            Found::NoRecord => Ok(None),
            Found::Invalid => Err(Abort::Perm),
        }
    }

    /// Looks the record up: what was found and until when it may be kept
    /// (`None`: not at all).
    async fn fetch_record(&mut self, domain: &str) -> Result<(Found, Option<Instant>), Abort> {
        let (texts, until) = match self.txt_until(domain).await {
            Ok(found) => found,
            Err((Miss::Void, until)) => return Ok((Found::NoRecord, until)),
            Err((Miss::Error, _)) => return Err(Abort::Temp),
        };
        let mut spf = texts.iter().filter(|t| is_spf(t));
        let found = match (spf.next(), spf.next()) {
            (None, _) => Found::NoRecord,
            (Some(text), None) => match Record::parse(text) {
                Ok(record) => Found::Record(Arc::new(record)),
                Err(e) => {
                    tracing::debug!(domain, error = %e, "SPF record does not parse: permerror");
                    Found::Invalid
                }
            },
            (Some(_), Some(_)) => {
                tracing::debug!(domain, "several SPF records: permerror");
                Found::Invalid
            }
        };
        Ok((found, Some(until)))
    }

    /// Evaluates the mechanisms in order; the qualifier of the first match.
    async fn directives(&mut self, record: &Record, domain: &str) -> Result<Option<Qualifier>, Abort> {
        for directive in &record.directives {
            if directive.mechanism.queries_dns() {
                self.count_dns_term()?;
            }
            if self.matches(&directive.mechanism, domain).await? {
                return Ok(Some(directive.qualifier));
            }
        }
        Ok(None)
    }

    async fn matches(&mut self, mechanism: &Mechanism, domain: &str) -> Result<bool, Abort> {
        let ip = self.client.ip;
        match mechanism {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(net, len) => Ok(in_network(ip, IpAddr::V4(*net), *len)),
            Mechanism::Ip6(net, len) => Ok(in_network(ip, IpAddr::V6(*net), *len)),
            Mechanism::A(spec, cidr) => {
                let Some(target) = self.target_or(spec.as_ref(), domain).await else { return Ok(false) };
                match self.addresses(&target).await {
                    Ok(addrs) => Ok(addrs.iter().any(|a| cidr_match(ip, *a, *cidr))),
                    Err(miss) => self.no_match(miss),
                }
            }
            Mechanism::Mx(spec, cidr) => {
                let Some(target) = self.target_or(spec.as_ref(), domain).await else { return Ok(false) };
                let exchanges = match self.mx(&target).await {
                    Ok(exchanges) => exchanges,
                    Err(miss) => return self.no_match(miss),
                };
                if exchanges.len() > MAX_MX_NAMES {
                    return Err(Abort::Perm);
                }
                for exchange in exchanges {
                    match self.addresses(&exchange).await {
                        Ok(addrs) if addrs.iter().any(|a| cidr_match(ip, *a, *cidr)) => return Ok(true),
                        Ok(_) | Err(Miss::Void) => {}
                        Err(Miss::Error) => return Err(Abort::Temp),
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                let Some(target) = self.target_or(spec.as_ref(), domain).await else { return Ok(false) };
                let names = match self.validated_names().await {
                    Ok(names) => names,
                    // §5.5: a DNS error on the PTR lookup means no match.
                    Err(Miss::Void) => return self.no_match(Miss::Void),
                    Err(Miss::Error) => return Ok(false),
                };
                Ok(names.iter().any(|n| is_within(n, &target)))
            }
            Mechanism::Exists(spec) => {
                let Some(target) = self.target(spec, domain).await else { return Ok(false) };
                // §5.7: always an A lookup, whatever the client's family.
                match self.lookup(&target, RecordType::A).await {
                    Ok(records) if records.iter().any(|r| matches!(r, RData::A(_))) => Ok(true),
                    Ok(_) => self.no_match(Miss::Void),
                    Err(miss) => self.no_match(miss),
                }
            }
            Mechanism::Include(spec) => {
                let Some(target) = self.target(spec, domain).await else { return Err(Abort::Perm) };
                match self.check_host(target, false).await.0 {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::TempError => Err(Abort::Temp),
                    SpfResult::PermError | SpfResult::None => Err(Abort::Perm),
                }
            }
        }
    }

    /// A mechanism whose lookup failed: void lookups count (§4.6.4),
    /// errors are a temperror (§5).
    fn no_match(&mut self, miss: Miss) -> Result<bool, Abort> {
        match miss {
            Miss::Void => {
                self.void_lookups += 1;
                if self.void_lookups > MAX_VOID_LOOKUPS { Err(Abort::Perm) } else { Ok(false) }
            }
            Miss::Error => Err(Abort::Temp),
        }
    }

    fn count_dns_term(&mut self) -> Result<(), Abort> {
        self.dns_terms += 1;
        if self.dns_terms > MAX_DNS_TERMS { Err(Abort::Perm) } else { Ok(()) }
    }

    /// The exp= text for a fail; any failure just means no explanation (§6.2).
    async fn explanation(&mut self, record: &Record, domain: &str) -> Option<String> {
        let target = self.target(record.explanation.as_ref()?, domain).await?;
        let texts = self.txt(&target).await.ok()?;
        let [text] = texts.as_slice() else { return None };
        let text = std::str::from_utf8(text).ok().filter(|t| t.is_ascii())?;
        let template = MacroString::parse(text, super::macros::Grammar::Explanation).ok()?;
        let mut explanation = self.expand(&template, domain).await;
        // The sender may be UTF-8 (SMTPUTF8): cut at a char boundary.
        if explanation.len() > MAX_EXPLANATION_LEN {
            let end = (0..=MAX_EXPLANATION_LEN).rev().find(|i| explanation.is_char_boundary(*i)).unwrap_or(0);
            explanation.truncate(end);
        }
        Some(explanation)
    }

    /// A mechanism's target name: its domain-spec expanded, or `<domain>`.
    async fn target_or(&mut self, spec: Option<&MacroString>, domain: &str) -> Option<String> {
        match spec {
            Some(spec) => self.target(spec, domain).await,
            None => Some(domain.to_string()),
        }
    }

    /// An expanded domain-spec as a name to query; `None` when it cannot
    /// be one (empty or over-long label): such a target is treated as not
    /// existing, which RFC 7208 leaves open.
    async fn target(&mut self, spec: &MacroString, domain: &str) -> Option<String> {
        query_name(&self.expand(spec, domain).await)
    }

    async fn expand(&mut self, template: &MacroString, domain: &str) -> String {
        let validated = if template.uses_validated_name() { Some(self.validated_name(domain).await) } else { None };
        let vars = Vars {
            sender: self.client.sender,
            local_part: self.local_part,
            sender_domain: self.sender_domain,
            domain,
            ip: self.client.ip,
            helo: self.client.helo,
            receiver: self.client.receiver,
            validated_name: validated.as_deref(),
            now: self.now,
        };
        template.expand(&vars)
    }

    /// `%{p}` (§7.3): `<domain>` if validated, else a validated subdomain
    /// of it, else any validated name, else "unknown".
    async fn validated_name(&mut self, domain: &str) -> String {
        let names = self.validated_names().await.unwrap_or_default();
        let pick = names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(domain))
            .or_else(|| names.iter().find(|n| is_within(n, domain)))
            .or_else(|| names.first());
        pick.cloned().unwrap_or_else(|| "unknown".to_string())
    }

    /// The client's PTR names (the first 10) whose addresses include the
    /// client (§5.5). Address lookups that fail skip that name.
    async fn validated_names(&mut self) -> Result<Vec<String>, Miss> {
        let reverse = reverse_name(self.client.ip);
        let records = self.lookup(&reverse, RecordType::PTR).await?;
        let names: Vec<String> = records
            .iter()
            .filter_map(|r| match r {
                RData::PTR(ptr) => Some(name_text(&ptr.0)),
                _ => None,
            })
            .filter(|n| !n.is_empty())
            .take(MAX_PTR_NAMES)
            .collect();
        if names.is_empty() {
            return Err(Miss::Void);
        }
        let mut validated = Vec::new();
        for name in names {
            if let Ok(addrs) = self.addresses(&name).await
                && addrs.contains(&self.client.ip)
            {
                validated.push(name);
            }
        }
        Ok(validated)
    }

    /// A or AAAA records of `name`, as the client's family.
    async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, Miss> {
        let (rtype, v4) = if self.client.ip.is_ipv4() { (RecordType::A, true) } else { (RecordType::AAAA, false) };
        let records = self.lookup(name, rtype).await?;
        let addrs: Vec<IpAddr> = records
            .iter()
            .filter_map(|r| match r {
                RData::A(a) if v4 => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) if !v4 => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        if addrs.is_empty() { Err(Miss::Void) } else { Ok(addrs) }
    }

    /// MX exchange names; a null MX (`.`) names no host.
    async fn mx(&self, name: &str) -> Result<Vec<String>, Miss> {
        let records = self.lookup(name, RecordType::MX).await?;
        let mx: Vec<&RData> = records.iter().filter(|r| matches!(r, RData::MX(_))).collect();
        if mx.is_empty() {
            return Err(Miss::Void);
        }
        Ok(mx
            .iter()
            .filter_map(|r| match r {
                RData::MX(mx) => Some(name_text(&mx.exchange)),
                _ => None,
            })
            .filter(|n| !n.is_empty())
            .collect())
    }

    /// TXT records, each one byte string (its character-strings joined, §3.3).
    async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, Miss> {
        self.txt_until(name).await.map(|(texts, _)| texts).map_err(|(miss, _)| miss)
    }

    /// As [`Self::txt`], with until when the answer may be kept.
    async fn txt_until(&self, name: &str) -> Result<(Vec<Vec<u8>>, Instant), (Miss, Option<Instant>)> {
        let (records, until) = self.lookup_until(name, RecordType::TXT).await?;
        let texts = records
            .iter()
            .filter_map(|r| match r {
                RData::TXT(txt) => Some(txt.txt_data.iter().flat_map(|s| s.iter().copied()).collect()),
                _ => None,
            })
            .collect();
        Ok((texts, until))
    }

    async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, Miss> {
        self.lookup_until(name, rtype).await.map(|(records, _)| records).map_err(|(miss, _)| miss)
    }

    /// The records of type `rtype` at `name`, and until when the answer
    /// may be kept; a miss carries until when the absence may be kept
    /// (RFC 2308), `None` for errors and answers without a SOA. A CNAME
    /// loop or over-long chain is an error, not an absence.
    async fn lookup_until(&self, name: &str, rtype: RecordType) -> Result<(Vec<RData>, Instant), (Miss, Option<Instant>)> {
        let Some(name) = dns_name(name) else { return Err((Miss::Void, None)) };
        match self.resolver.lookup(name.clone(), rtype).await {
            Ok(lookup) => {
                let records: Vec<RData> = lookup.answers().iter().filter(|r| r.record_type() == rtype).map(|r| r.data.clone()).collect();
                if records.is_empty() { Err((Miss::Void, None)) } else { Ok((records, lookup.valid_until())) }
            }
            Err(e) => match crate::dns::no_records(&e) {
                Some(no) if matches!(no.response_code, ResponseCode::NXDomain | ResponseCode::NoError) => {
                    match crate::dns::absence(self.resolver, &name, no).await {
                        crate::dns::Absence::NoRecords => Err((Miss::Void, crate::checks::cache::negative_until(no.negative_ttl))),
                        crate::dns::Absence::BrokenChain => {
                            tracing::debug!(%name, "CNAME loop or chain too long: temperror");
                            Err((Miss::Error, None))
                        }
                    }
                }
                _ => Err((Miss::Error, None)),
            },
        }
    }
}

/// §4.3: a `<domain>` check_host() can evaluate at all: a multi-label name
/// without empty or over-long labels (a trailing dot is fine), and not an
/// address literal (`[192.0.2.1]`, or a bare address as some HELOs are).
pub fn is_valid_domain(domain: &str) -> bool {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    !domain.starts_with('[')
        && domain.parse::<IpAddr>().is_err()
        && domain.len() <= MAX_NAME_LEN
        && domain.contains('.')
        && domain.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

/// An expanded target as a name to query (§7.3): over-long names lose
/// labels on the left; a trailing dot is dropped.
fn query_name(expanded: &str) -> Option<String> {
    let mut name = expanded.strip_suffix('.').unwrap_or(expanded);
    while name.len() > MAX_NAME_LEN {
        name = name.split_once('.')?.1;
    }
    let valid = !name.is_empty() && name.split('.').all(|l| !l.is_empty() && l.len() <= 63);
    valid.then(|| name.to_string())
}

/// The wire name for a textual one, any bytes allowed in a label: SPF
/// domain-specs may hold characters hostnames may not (`foo:bar/baz`).
fn dns_name(name: &str) -> Option<Name> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.split('.').any(str::is_empty) {
        return None;
    }
    Name::from_labels(name.split('.').map(str::as_bytes)).ok()
}

/// A name from an answer as text, without the root's trailing dot.
fn name_text(name: &Name) -> String {
    let labels: Vec<String> = name.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
    labels.join(".")
}

/// `name` is `domain` or a subdomain of it, ignoring case.
fn is_within(name: &str, domain: &str) -> bool {
    let (name, domain) = (name.to_ascii_lowercase(), domain.to_ascii_lowercase());
    let domain = domain.strip_suffix('.').unwrap_or(&domain);
    name == domain || name.strip_suffix(domain).is_some_and(|head| head.ends_with('.'))
}

/// in-addr.arpa / ip6.arpa name of an address.
fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                out.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            out.push_str("ip6.arpa");
            out
        }
    }
}

fn cidr_match(ip: IpAddr, addr: IpAddr, cidr: Cidr) -> bool {
    match addr {
        IpAddr::V4(_) => in_network(ip, addr, cidr.v4),
        IpAddr::V6(_) => in_network(ip, addr, cidr.v6),
    }
}

/// Whether `ip` is within `net/len` (same family only).
fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_network(ip("192.0.2.7"), ip("192.0.2.0"), 24));
        assert!(!in_network(ip("192.0.3.7"), ip("192.0.2.0"), 24));
        assert!(in_network(ip("1.2.3.4"), ip("9.9.9.9"), 0));
        assert!(in_network(ip("2001:db8::1"), ip("2001:db8::"), 32));
        assert!(in_network(ip("::1"), ip("2001:db8::"), 0));
        assert!(!in_network(ip("1.2.3.4"), ip("::"), 0));
    }

    #[test]
    fn names() {
        assert_eq!(query_name("a.example.com."), Some("a.example.com".into()));
        assert_eq!(query_name("a..example.com"), None);
        assert_eq!(query_name(&format!("{}.com", "x".repeat(64))), None);
        let long = format!("foobar.{}example.com", "somewhat.long.exp.example.com.".repeat(8));
        assert_eq!(query_name(&long).map(|n| n.len()), Some(251));
        assert!(is_within("mail.Example.com", "example.COM"));
        assert!(is_within("example.com", "example.com."));
        assert!(!is_within("badexample.com", "example.com"));
        assert_eq!(reverse_name("192.0.2.1".parse().unwrap()), "1.2.0.192.in-addr.arpa");
        assert!(reverse_name("2001:db8::cb01".parse().unwrap()).starts_with("1.0.b.c.0.0.0.0"));
        assert!(is_valid_domain("example.com."));
        for bad in ["A2345678", "[1.2.3.5]", "a..b.com", "", "."] {
            assert!(!is_valid_domain(bad), "{bad}");
        }
        assert_eq!(dns_name("foo:bar/baz.example.com").map(|n| n.num_labels()), Some(3));
    }
}
