//! The DNS resolver every stage shares: `[dns].nameservers`, or the system
//! resolver when that is absent; and the CNAME chain check the inbound
//! checks use to tell a CNAME loop from a name without records.
//!
//! [`validating_resolver`] is the same resolver with hickory's DNSSEC
//! validation on, for DANE (see `dnssec`).
//!
//! May import: `config`. hickory caps what it caches: positive answers at
//! an hour, negative ones at five minutes (RFC 2308 allows three hours).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

/// Longest a positive answer or parsed record is kept, whatever its TTL
/// says: a changed record is seen within the hour.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Longest "no such record" is kept (RFC 2308 §5 suggests 1–3 hours; a
/// domain that starts publishing a record should not wait that long).
pub const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(300);

/// Longest CNAME chain followed (hickory's own depth limit is 8 queries).
pub const MAX_CNAME_CHAIN: usize = 8;

pub fn resolver(nameservers: Option<&[SocketAddr]>) -> anyhow::Result<TokioResolver> {
    resolver_with(nameservers, Lookup::default())
}

/// How each query is made.
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    pub attempts: usize,
    /// Per attempt: a query that is never answered takes `attempts` times this.
    pub timeout: Duration,
    /// Also TCP (for truncated answers), besides UDP.
    pub tcp: bool,
}

impl Default for Lookup {
    fn default() -> Self {
        Lookup { attempts: 2, timeout: Duration::from_secs(5), tcp: true }
    }
}

impl Lookup {
    /// The inbound checks' queries (`[dns] query_timeout`, `query_attempts`).
    pub fn checks(config: &crate::config::Config) -> Lookup {
        Lookup { attempts: config.dns.query_attempts, timeout: config.dns.query_timeout, tcp: true }
    }
}

/// [`resolver`] with other attempts, timeout or transports (tests use
/// short timeouts against their loopback DNS servers).
pub fn resolver_with(nameservers: Option<&[SocketAddr]>, lookup: Lookup) -> anyhow::Result<TokioResolver> {
    Ok(builder(nameservers, lookup)?.build()?)
}

/// A resolver that checks DNSSEC signatures from `anchors` (hickory's
/// validator): every record it returns carries its proof. It asks only
/// `nameservers` (it is a validating stub, not a recursor), so the root
/// servers are never contacted by it.
pub fn validating_resolver(
    nameservers: Option<&[SocketAddr]>,
    lookup: Lookup,
    anchors: std::sync::Arc<hickory_resolver::proto::dnssec::TrustAnchors>,
) -> anyhow::Result<TokioResolver> {
    let mut b = builder(nameservers, lookup)?.with_trust_anchor(anchors);
    b.options_mut().validate = true;
    Ok(b.build()?)
}

fn builder(nameservers: Option<&[SocketAddr]>, lookup: Lookup) -> anyhow::Result<hickory_resolver::ResolverBuilder<TokioRuntimeProvider>> {
    let builder = match nameservers {
        Some(list) => {
            let servers = list
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    let transports = if lookup.tcp { vec![udp, tcp] } else { vec![udp] };
                    NameServerConfig::new(addr.ip(), true, transports)
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), TokioRuntimeProvider::default())
        }
        None => TokioResolver::builder_tokio()?,
    };
    let mut builder = builder;
    let opts: &mut ResolverOpts = builder.options_mut();
    // Mail domains are absolute; never append a search domain.
    opts.ndots = 0;
    opts.attempts = lookup.attempts;
    opts.timeout = lookup.timeout;
    opts.positive_max_ttl = Some(MAX_TTL);
    opts.negative_max_ttl = Some(MAX_NEGATIVE_TTL);
    Ok(builder)
}

/// What a "no records" answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absence {
    /// NXDOMAIN, or a name with other types only (NODATA).
    NoRecords,
    /// The name is a CNAME loop, or a chain longer than
    /// [`MAX_CNAME_CHAIN`]: a temporary error (the zone is broken now; a
    /// resolver cannot tell it from a chain it did not finish).
    BrokenChain,
}

/// Judges a NoRecords answer for `name`. hickory follows CNAMEs itself and,
/// when a chain loops or runs too long, gives up with the same "no
/// records" (NOERROR) a NODATA answer gives; but a real NODATA carries the
/// zone's SOA. Only a NOERROR answer without one costs a look at the chain.
pub async fn absence(resolver: &TokioResolver, name: &Name, no: &NoRecords) -> Absence {
    if no.response_code != ResponseCode::NoError || no.soa.is_some() {
        return Absence::NoRecords;
    }
    if cname_chain_is_broken(resolver, name).await { Absence::BrokenChain } else { Absence::NoRecords }
}

/// Follows the CNAMEs from `name` one query at a time: a name seen twice
/// or more than [`MAX_CNAME_CHAIN`] links is broken. A failed query ends
/// the walk as not broken (the caller's own lookup saw no error).
pub async fn cname_chain_is_broken(resolver: &TokioResolver, name: &Name) -> bool {
    let mut seen = HashSet::new();
    let mut current = name.to_lowercase();
    for _ in 0..=MAX_CNAME_CHAIN {
        if !seen.insert(current.clone()) {
            return true;
        }
        let next = match resolver.lookup(current.clone(), RecordType::CNAME).await {
            Ok(lookup) => lookup.answers().iter().find_map(|r| match &r.data {
                RData::CNAME(c) if r.name.to_lowercase() == current => Some(c.0.to_lowercase()),
                _ => None,
            }),
            Err(_) => None,
        };
        match next {
            Some(target) => current = target,
            None => return false,
        }
    }
    true
}

/// The NoRecords inside a resolver error, if that is what it is.
pub fn no_records(err: &NetError) -> Option<&NoRecords> {
    match err {
        NetError::Dns(DnsError::NoRecordsFound(no)) => Some(no),
        _ => None,
    }
}
