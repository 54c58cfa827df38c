//! Routing: which next hop a recipient's mail goes to, and the ordered list
//! of addresses to try for it (RFC 5321 §5.1, RFC 7505 null MX).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use mailgate_core::address::Host;
use mailgate_core::client::Outcome;
use mailgate_core::reply::{Reply, StatusCode};
use mailgate_core::{Domain, Mailbox};
use rand::seq::SliceRandom;

use crate::config::{Config, NextHop};

/// Where a group of recipients is sent: one queue, one concurrency limit
/// and one connection cache per destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A fixed host: a local domain's `smtp://` hop, the smart host, or an
    /// address literal.
    Smtp {
        host: String,
        port: u16,
        smarthost: bool,
    },
    Lmtp {
        host: String,
        port: u16,
    },
    Maildir(PathBuf),
    /// A `[reports] ingest` address: the message is a report to read into
    /// the report store, not to deliver.
    Ingest,
    /// A VERP address of ours: the message is an asynchronous bounce to
    /// read (`suppression::consume`), not to deliver.
    Bounce,
    /// A `[suppression] complaints` address: an ARF complaint to read.
    Complaint,
    /// The recipient domain's MX hosts.
    Mx(Domain),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Smtp { host, port, .. } => write!(f, "smtp:{host}:{port}"),
            Destination::Lmtp { host, port } => write!(f, "lmtp:{host}:{port}"),
            Destination::Maildir(p) => write!(f, "maildir:{}", p.display()),
            Destination::Ingest => write!(f, "ingest"),
            Destination::Bounce => write!(f, "bounce"),
            Destination::Complaint => write!(f, "complaint"),
            Destination::Mx(d) => write!(f, "mx:{d}"),
        }
    }
}

fn split_host_port(s: &str) -> (String, u16) {
    match s.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse().unwrap_or(25)),
        None => (s.to_string(), 25),
    }
}

/// Picks the destination for one recipient of a message, which the inbound
/// checks may have quarantined.
pub fn destination(config: &Config, rcpt: &Mailbox, quarantined: bool) -> Destination {
    if let (true, Some(hop)) = (quarantined, &config.policy.quarantine) {
        return next_hop(hop);
    }
    // After quarantine: a suspect "report" goes where suspect mail goes,
    // not into the statistics.
    if config.reports.ingest.iter().any(|a| same_mailbox(a, rcpt)) {
        return Destination::Ingest;
    }
    if let Some(d) = consumed(config, rcpt) {
        return d;
    }
    let domain = match rcpt.host() {
        Host::Literal(ip) => return Destination::Smtp { host: ip.to_string(), port: config.delivery.mx_port, smarthost: false },
        Host::Domain(d) => d,
    };
    if let Some(hop) = config.domain(domain).and_then(|d| d.deliver.as_ref()) {
        return next_hop(hop);
    }
    if let Some(s) = &config.smarthost {
        return Destination::Smtp { host: s.host.clone(), port: s.port, smarthost: true };
    }
    Destination::Mx(domain.clone())
}

/// A VERP address on one of our return-path domains (its token is checked
/// when it is read), or a complaints address.
fn consumed(config: &Config, rcpt: &Mailbox) -> Option<Destination> {
    if config.suppression.complaints.iter().any(|a| same_mailbox(a, rcpt)) {
        return Some(Destination::Complaint);
    }
    let Host::Domain(d) = rcpt.host() else { return None };
    let ours =
        config.domain(d).is_some() || config.delivery.return_path_domain.as_deref().is_some_and(|rp| d.as_str().eq_ignore_ascii_case(rp));
    (config.delivery.verp && ours && crate::suppression::verp::is_verp(rcpt.local_part())).then_some(Destination::Bounce)
}

/// Domains compare as stored (lower case); local parts without regard to
/// ASCII case, as mail for dmarc@ and DMARC@ is meant for the same box.
fn same_mailbox(a: &Mailbox, b: &Mailbox) -> bool {
    a.host() == b.host() && a.local_part().eq_ignore_ascii_case(b.local_part())
}

fn next_hop(hop: &NextHop) -> Destination {
    match hop {
        NextHop::Smtp(hp) => {
            let (host, port) = split_host_port(hp);
            Destination::Smtp { host, port, smarthost: false }
        }
        NextHop::Lmtp(hp) => {
            let (host, port) = split_host_port(hp);
            Destination::Lmtp { host, port }
        }
        NextHop::Maildir(p) => Destination::Maildir(p.clone()),
    }
}

/// One host to try, with its addresses in order.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
}

fn temp(text: &str) -> Outcome {
    Outcome::Temporary(Reply::new(451, StatusCode::new(4, 4, 3), text))
}

fn perm(code: u16, status: StatusCode, text: &str) -> Outcome {
    Outcome::Permanent(Reply::new(code, status, text))
}

/// Resolves a destination to hosts in the order to try. An error is the
/// outcome every recipient of the destination gets.
pub async fn resolve(resolver: &TokioResolver, dest: &Destination, mx_port: u16) -> Result<Vec<Candidate>, Outcome> {
    match dest {
        Destination::Smtp { host, port, .. } | Destination::Lmtp { host, port } => {
            let addrs = host_addrs(resolver, host, *port).await?;
            Ok(vec![Candidate { name: host.clone(), addrs }])
        }
        Destination::Maildir(_) | Destination::Ingest | Destination::Bounce | Destination::Complaint => Ok(Vec::new()),
        Destination::Mx(domain) => resolve_mx(resolver, domain, mx_port).await,
    }
}

async fn host_addrs(resolver: &TokioResolver, host: &str, port: u16) -> Result<Vec<SocketAddr>, Outcome> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let fqdn = format!("{}.", host.trim_end_matches('.'));
    match resolver.lookup_ip(fqdn.as_str()).await {
        Ok(ips) => {
            let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, port)).collect();
            if addrs.is_empty() { Err(temp(&format!("no address for {host}"))) } else { Ok(addrs) }
        }
        Err(e) if e.is_nx_domain() => Err(temp(&format!("host {host} not found"))),
        Err(e) => Err(temp(&format!("cannot resolve {host}: {e}"))),
    }
}

async fn resolve_mx(resolver: &TokioResolver, domain: &Domain, port: u16) -> Result<Vec<Candidate>, Outcome> {
    let fqdn = format!("{domain}.");
    let mut mxs: Vec<(u16, String)> = match resolver.mx_lookup(fqdn.as_str()).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii().trim_end_matches('.').to_lowercase())),
                _ => None,
            })
            .collect(),
        Err(e) if e.is_nx_domain() => {
            return Err(perm(550, StatusCode::new(5, 1, 2), &format!("domain {domain} does not exist")));
        }
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => return Err(temp(&format!("MX lookup for {domain} failed: {e}"))),
    };
    // RFC 7505: a single MX of "." says the domain accepts no mail.
    if mxs.iter().any(|(_, host)| host.is_empty()) {
        return Err(perm(556, StatusCode::new(5, 1, 10), &format!("domain {domain} does not accept mail (null MX)")));
    }
    if mxs.is_empty() {
        // Implicit MX (RFC 5321 §5.1): the domain's own address records.
        let addrs = host_addrs(resolver, domain.as_str(), port).await.map_err(|o| match o {
            Outcome::Temporary(r) if r.lines.iter().any(|l| l.contains("not found")) => {
                perm(550, StatusCode::new(5, 1, 2), &format!("domain {domain} has no MX and no address"))
            }
            other => other,
        })?;
        return Ok(vec![Candidate { name: domain.to_string(), addrs }]);
    }
    // Preference order; random among equal preferences (RFC 5321 §5.1).
    mxs.shuffle(&mut rand::rng());
    mxs.sort_by_key(|(pref, _)| *pref);
    let mut out = Vec::new();
    let mut last_err = None;
    for (_, host) in mxs {
        match host_addrs(resolver, &host, port).await {
            Ok(addrs) => out.push(Candidate { name: host, addrs }),
            Err(e) => last_err = Some(e),
        }
    }
    if out.is_empty() {
        return Err(last_err.unwrap_or_else(|| temp("no usable MX host")));
    }
    Ok(out)
}
