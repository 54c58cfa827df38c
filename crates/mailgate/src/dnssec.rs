//! DNSSEC-aware lookups for outbound delivery (DANE, RFC 7672): each
//! answer comes with whether it is secure, insecure or bogus. Two ways,
//! chosen by `[dns] dnssec`: `validate` checks the signatures here
//! (hickory's validator, ring, from the trust anchors); `trust-ad` asks the
//! configured resolver with the AD and DO bits set and believes its AD bit.
//!
//! May import: `config`, `dns`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::rdata::{DNSKEY, DNSSECRData};
use hickory_resolver::proto::dnssec::{DigestType, Proof, TrustAnchors};
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::DnssecMode;
use crate::dns::Lookup;

/// What DNSSEC says about an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Signed, and the signatures chain to a trust anchor.
    Secure,
    /// Provably unsigned, or outside every trust anchor.
    Insecure,
    /// Should be signed, but the signatures do not check out.
    Bogus,
}

/// The records of the asked type (empty: the name or type does not exist)
/// and how far they can be trusted.
#[derive(Debug, Clone)]
pub struct Answer {
    pub records: Vec<RData>,
    pub security: Security,
}

/// Lookups that know whether their answer is signed.
pub struct SecureResolver {
    inner: Inner,
}

enum Inner {
    Validate(Box<TokioResolver>),
    TrustAd { servers: Vec<SocketAddr>, lookup: Lookup },
}

/// The root KSKs hickory has built in (2017's 20326 and 2024's 38696),
/// with the keys of `file` added; a file holding a root (".") key
/// replaces them (a private root, or a test's). A DS record in the file
/// stands for the key it digests: that key is fetched from `nameservers`
/// and trusted once its digest matches.
async fn trust_anchors(file: Option<&Path>, nameservers: Option<&[SocketAddr]>, lookup: Lookup) -> anyhow::Result<TrustAnchors> {
    let Some(path) = file else { return Ok(TrustAnchors::default()) };
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read the trust anchor {}: {e}", path.display()))?;
    let (dnskeys, ds) = split_anchor_file(&text).map_err(|e| anyhow::anyhow!("trust anchor {}: {e}", path.display()))?;
    let mut anchors: TrustAnchors = dnskeys.parse().map_err(|e| {
        anyhow::anyhow!("cannot read the trust anchor {}: expected DNSKEY or DS records in zone-file syntax: {e}", path.display())
    })?;
    if !ds.is_empty() {
        let plain = crate::dns::resolver_with(nameservers, lookup)?;
        for d in &ds {
            let key = key_for_ds(&plain, d).await.map_err(|e| anyhow::anyhow!("trust anchor {}: {e}", path.display()))?;
            anchors.insert_with_name(key.public_key(), (&d.name).into());
        }
    }
    if anchors.is_empty() {
        let builtin = TrustAnchors::default();
        for i in 0..builtin.len() {
            if let Some(key) = builtin.get(i) {
                anchors.insert(key);
            }
        }
    }
    Ok(anchors)
}

/// A DS record of a trust anchor file.
struct DsAnchor {
    name: Name,
    key_tag: u16,
    digest_type: u8,
    digest: Vec<u8>,
}

/// The file's DNSKEY lines (for hickory's reader) and its DS records.
fn split_anchor_file(text: &str) -> Result<(String, Vec<DsAnchor>), String> {
    let mut dnskeys = String::new();
    let mut ds = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split(';').next().unwrap_or("").split_whitespace().collect();
        let Some(at) = words.iter().position(|w| w.eq_ignore_ascii_case("DS")) else {
            dnskeys.push_str(line);
            dnskeys.push('\n');
            continue;
        };
        let bad = || format!("expected NAME [TTL] [IN] DS KEYTAG ALGORITHM DIGESTTYPE HEX, not {line:?}");
        let (Some(name), Some(tag), Some(_alg), Some(dtype)) = (words.first(), words.get(at + 1), words.get(at + 2), words.get(at + 3))
        else {
            return Err(bad());
        };
        let hex: String = words[at + 4..].concat();
        let digest = (0..hex.len())
            .step_by(2)
            .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .filter(|d| !d.is_empty())
            .ok_or_else(bad)?;
        ds.push(DsAnchor {
            name: Name::from_ascii(if name.ends_with('.') { name.to_string() } else { format!("{name}.") }).map_err(|_| bad())?,
            key_tag: tag.parse().map_err(|_| bad())?,
            digest_type: dtype.parse().map_err(|_| bad())?,
            digest,
        });
    }
    Ok((dnskeys, ds))
}

/// The zone key of `d.name` whose digest is the DS record's.
async fn key_for_ds(plain: &TokioResolver, d: &DsAnchor) -> Result<DNSKEY, String> {
    let lookup = plain.lookup(d.name.clone(), RecordType::DNSKEY).await.map_err(|e| format!("DNSKEY lookup for {} failed: {e}", d.name))?;
    for r in lookup.answers() {
        let RData::DNSSEC(DNSSECRData::DNSKEY(key)) = &r.data else { continue };
        let matches = key.zone_key()
            && key.calculate_key_tag().ok() == Some(d.key_tag)
            && key.to_digest(&d.name, DigestType::from(d.digest_type)).is_ok_and(|h| h.as_ref() == d.digest.as_slice());
        if matches {
            return Ok(key.clone());
        }
    }
    Err(format!("no DNSKEY of {} matches its DS record (key tag {})", d.name, d.key_tag))
}

/// The owner names of the keys in a trust anchor file, which the start-up
/// self-test asks for: "." when there is no file.
pub fn anchor_names(file: Option<&Path>) -> Vec<String> {
    let Some(text) = file.and_then(|p| std::fs::read_to_string(p).ok()) else { return vec![".".into()] };
    let mut names: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.split(';').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let upper = line.to_ascii_uppercase();
        let is_key = upper.split_whitespace().any(|w| w == "DNSKEY" || w == "DS");
        let (Some(name), true) = (words.next(), is_key) else { continue };
        let name = if name.ends_with('.') { name.to_lowercase() } else { format!("{}.", name.to_lowercase()) };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() { vec![".".into()] } else { names }
}

impl SecureResolver {
    /// `None` when `mode` is off. `nameservers` are the only servers ever
    /// asked (the system's resolver when absent).
    pub async fn new(
        mode: DnssecMode,
        nameservers: Option<&[SocketAddr]>,
        trust_anchor: Option<&Path>,
        lookup: Lookup,
    ) -> anyhow::Result<Option<SecureResolver>> {
        let inner = match mode {
            DnssecMode::Off => return Ok(None),
            DnssecMode::Validate => {
                let anchors = Arc::new(trust_anchors(trust_anchor, nameservers, lookup).await?);
                Inner::Validate(Box::new(crate::dns::validating_resolver(nameservers, lookup, anchors)?))
            }
            DnssecMode::TrustAd => {
                let servers = match nameservers {
                    Some(list) if !list.is_empty() => list.to_vec(),
                    _ => system_nameservers()?,
                };
                Inner::TrustAd { servers, lookup }
            }
        };
        Ok(Some(SecureResolver { inner }))
    }

    /// Looks `name` up. An error is a lookup that failed (a time-out,
    /// SERVFAIL): nothing can be said about the name.
    pub async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Answer, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match &self.inner {
            Inner::Validate(resolver) => validated(resolver, &fqdn, rtype).await,
            Inner::TrustAd { servers, lookup } => trust_ad(servers, *lookup, &fqdn, rtype).await,
        }
    }

    /// The start-up self-test: the DNSKEY set of every trust anchor name
    /// must come back secure. The error says what went wrong.
    pub async fn self_test(&self, names: &[String]) -> Result<(), String> {
        for name in names {
            match self.lookup(name, RecordType::DNSKEY).await {
                Ok(a) if a.security == Security::Secure && !a.records.is_empty() => {}
                Ok(a) if a.records.is_empty() => return Err(format!("no DNSKEY records for {name}")),
                Ok(a) => return Err(format!("the DNSKEY set of {name} is {:?}, expected secure", a.security)),
                Err(e) => return Err(format!("DNSKEY lookup for {name} failed: {e}")),
            }
        }
        Ok(())
    }
}

fn security(proofs: impl Iterator<Item = Proof>) -> Security {
    let mut out = Security::Secure;
    for p in proofs {
        match p {
            Proof::Secure => {}
            Proof::Bogus => return Security::Bogus,
            _ => out = Security::Insecure,
        }
    }
    out
}

async fn validated(resolver: &TokioResolver, fqdn: &str, rtype: RecordType) -> Result<Answer, String> {
    match resolver.lookup(fqdn, rtype).await {
        Ok(lookup) => {
            let wanted: Vec<_> = lookup.answers().iter().filter(|r| r.record_type() == rtype).collect();
            // The CNAMEs on the way count as much as the records.
            let chain = lookup.answers().iter().filter(|r| r.record_type() == RecordType::CNAME);
            let security = security(wanted.iter().map(|r| r.proof).chain(chain.map(|r| r.proof)));
            Ok(Answer { records: wanted.into_iter().map(|r| r.data.clone()).collect(), security })
        }
        Err(e) => negative(&e),
    }
}

/// A "no such record" from the validator: secure when its SOA is.
fn negative(e: &NetError) -> Result<Answer, String> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no)) => {
            let security = match &no.soa {
                Some(soa) => security(std::iter::once(soa.proof)),
                None => Security::Insecure,
            };
            Ok(Answer { records: Vec::new(), security })
        }
        NetError::Dns(DnsError::Nsec { proof, .. }) if *proof == Proof::Bogus => {
            Ok(Answer { records: Vec::new(), security: Security::Bogus })
        }
        NetError::Dns(DnsError::Nsec { .. }) => Ok(Answer { records: Vec::new(), security: Security::Insecure }),
        other if other.to_string().contains("DNSSEC") => Ok(Answer { records: Vec::new(), security: Security::Bogus }),
        other => Err(other.to_string()),
    }
}

fn system_nameservers() -> anyhow::Result<Vec<SocketAddr>> {
    let (config, _) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|e| anyhow::anyhow!("dnssec = \"trust-ad\" needs [dns] nameservers or a readable resolv.conf: {e}"))?;
    let servers: Vec<SocketAddr> = config.name_servers().iter().map(|ns| SocketAddr::new(ns.ip, 53)).collect();
    if servers.is_empty() {
        anyhow::bail!("dnssec = \"trust-ad\": no name server configured");
    }
    Ok(servers)
}

/// One query with AD and DO set (RFC 6840 §5.7), to each server in turn
/// until one answers; TCP when the UDP answer is truncated.
async fn trust_ad(servers: &[SocketAddr], lookup: Lookup, fqdn: &str, rtype: RecordType) -> Result<Answer, String> {
    let name = Name::from_ascii(fqdn).map_err(|e| format!("{fqdn}: not a domain name: {e}"))?;
    let mut last = String::from("no name server");
    for server in servers {
        for _ in 0..lookup.attempts.max(1) {
            match ask(*server, &name, rtype, lookup.timeout).await {
                Ok(m) => return judge_ad(&m, rtype),
                Err(e) => last = format!("{server}: {e}"),
            }
        }
    }
    Err(last)
}

fn judge_ad(m: &Message, rtype: RecordType) -> Result<Answer, String> {
    let security = if m.metadata.authentic_data { Security::Secure } else { Security::Insecure };
    match m.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {
            Ok(Answer { records: m.answers.iter().filter(|r| r.record_type() == rtype).map(|r| r.data.clone()).collect(), security })
        }
        // A validating resolver answers SERVFAIL to what it finds bogus;
        // it cannot be told from any other failure.
        code => Err(format!("the resolver answered {code}")),
    }
}

async fn ask(server: SocketAddr, name: &Name, rtype: RecordType, wait: Duration) -> Result<Message, String> {
    let id: u16 = rand::random();
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(name.clone(), rtype));
    q.metadata.recursion_desired = true;
    q.metadata.authentic_data = true;
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true);
    edns.set_max_payload(1232);
    q.set_edns(edns);
    let bytes = q.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let sock = tokio::net::UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(&bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let answer = loop {
        let n = tokio::time::timeout(wait, sock.recv(&mut buf)).await.map_err(|_| "timed out".to_string())?.map_err(|e| e.to_string())?;
        // Anything but the answer to this query (id and question) is ignored.
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.metadata.id == id && m.queries.first().is_some_and(|x| x.name() == name && x.query_type() == rtype) => break m,
            _ => continue,
        }
    };
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    let mut tcp = tokio::time::timeout(wait, tokio::net::TcpStream::connect(server))
        .await
        .map_err(|_| "TCP connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let len = u16::try_from(bytes.len()).map_err(|_| "query too long".to_string())?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    let exchange = async {
        tcp.write_all(&framed).await?;
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).await?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tcp.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(wait, exchange).await.map_err(|_| "TCP answer timed out".to_string())?.map_err(|e| e.to_string())?;
    let m = Message::from_vec(&body).map_err(|e| format!("bad answer: {e}"))?;
    if m.metadata.id != id {
        return Err("answer to another query".into());
    }
    Ok(m)
}
