//! DANE for outbound SMTP (RFC 7672, RFC 6698, RFC 7671): which MX hosts
//! have DNSSEC-signed TLSA records, and the certificate check that then
//! replaces opportunistic TLS for them (a rustls `ServerCertVerifier`).
//!
//! A host qualifies when its MX and address answers are secure. Its TLSA
//! set at `_<port>._tcp.<host>` then decides: usable records (DANE-TA 2,
//! DANE-EE 3) make TLS mandatory and the certificate must match one;
//! only PKIX-TA/EE (0, 1) records make TLS mandatory but unauthenticated
//! (RFC 7672 §2.2); an insecure or absent set leaves the host to MTA-STS
//! or opportunistic TLS. A bogus answer anywhere takes the host out.
//! For a `[delivery] dane_required` destination a host without usable
//! secure TLSA records is not used either ([`Dane::required`]).
//!
//! May import: `dnssec`, `outbound::route`, `config`.

use std::sync::Arc;

use hickory_resolver::proto::rr::{RData, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::route::Candidate;
use crate::dnssec::{Answer, SecureResolver, Security};

/// One TLSA record (RFC 6698 §2.1), as numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    pub fn from_rdata(r: &RData) -> Option<Tlsa> {
        let RData::TLSA(t) = r else { return None };
        Some(Tlsa { usage: t.cert_usage.into(), selector: t.selector.into(), matching: t.matching.into(), data: t.cert_data.clone() })
    }

    /// RFC 7672 §3.1: only DANE-TA(2) and DANE-EE(3) with a known
    /// selector and matching type can authenticate a server.
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && matches!(self.selector, 0 | 1) && matches!(self.matching, 0..=2)
    }

    /// Whether `cert` (DER) is the one this record describes.
    fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected = match self.selector {
            0 => cert.as_ref().to_vec(),
            1 => match spki(cert) {
                Some(s) => s,
                None => return false,
            },
            _ => return false,
        };
        let digest = match self.matching {
            0 => selected,
            1 => ring::digest::digest(&ring::digest::SHA256, &selected).as_ref().to_vec(),
            2 => ring::digest::digest(&ring::digest::SHA512, &selected).as_ref().to_vec(),
            _ => return false,
        };
        digest == self.data
    }
}

impl std::fmt::Display for Tlsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} {}", self.usage, self.selector, self.matching, hex(&self.data))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The certificate's SubjectPublicKeyInfo, DER with its outer SEQUENCE.
fn spki(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(parsed.subject_public_key_info().as_ref().to_vec())
}

/// The `3 1 1` TLSA record data for our own certificate (PEM file): what
/// `mailgate records` prints.
pub fn tlsa_311_from_pem(path: &std::path::Path) -> anyhow::Result<String> {
    use rustls::pki_types::pem::PemObject;
    let cert = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("cannot read the certificate {}: {e}", path.display()))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no certificate in {}", path.display()))?
        .map_err(|e| anyhow::anyhow!("bad PEM in {}: {e}", path.display()))?;
    tlsa_311(&cert).ok_or_else(|| anyhow::anyhow!("{}: expected an X.509 certificate", path.display()))
}

/// `3 1 1 <hex>`: the DANE-EE record data pinning `cert`'s public key
/// (the end entity, DER), or `None` when it is not an X.509 certificate.
pub fn tlsa_311(cert: &CertificateDer<'_>) -> Option<String> {
    let key = spki(cert)?;
    Some(format!("3 1 1 {}", hex(ring::digest::digest(&ring::digest::SHA256, &key).as_ref())))
}

/// What DANE says about one MX host.
#[derive(Debug, Clone)]
pub enum HostPolicy {
    /// No secure TLSA set: MTA-STS or opportunistic TLS decide.
    None,
    /// Secure TLSA records: TLS is mandatory. `usable` empty means only
    /// PKIX-TA/EE records were published: encrypted but unauthenticated.
    Tlsa { usable: Vec<Tlsa>, text: String },
}

/// The hosts to try, each with its DANE policy, and the hosts taken out
/// because a DNSSEC answer was bogus or failed (host, why).
pub struct Plan {
    pub hosts: Vec<(Candidate, HostPolicy)>,
    pub dropped: Vec<(String, String)>,
}

/// DANE lookups for outbound delivery.
pub struct Dane {
    resolver: SecureResolver,
    /// `[delivery] dane_required`: destinations reached only over DANE.
    required: Vec<String>,
}

fn addresses(answers: &[&Answer], port: u16) -> Vec<std::net::SocketAddr> {
    answers
        .iter()
        .flat_map(|a| a.records.iter())
        .filter_map(|r| match r {
            RData::A(a) => Some(std::net::SocketAddr::new(std::net::IpAddr::V4(a.0), port)),
            RData::AAAA(a) => Some(std::net::SocketAddr::new(std::net::IpAddr::V6(a.0), port)),
            _ => None,
        })
        .collect()
}

/// DANE as `[dns] dnssec` asks (`None` when off), after the start-up
/// self-test: the trust anchors' own DNSKEY sets must validate. Under
/// `validate` a failure refuses to start; under `trust-ad` it is a warning
/// (the resolver may come up later, and then answers carry AD).
pub async fn start(config: &crate::config::Config) -> anyhow::Result<Option<Arc<Dane>>> {
    use crate::config::DnssecMode;
    let mode = config.dnssec.mode;
    let anchor = config.dnssec.trust_anchor.as_deref();
    let lookup = crate::dns::Lookup::checks(config);
    let Some(resolver) = SecureResolver::new(mode, config.nameservers.as_deref(), anchor, lookup).await? else { return Ok(None) };
    let names = crate::dnssec::anchor_names(anchor);
    match resolver.self_test(&names).await {
        Ok(()) => tracing::info!(anchors = %names.join(" "), mode = ?mode, "DNSSEC self-test passed; DANE is on"),
        Err(e) if mode == DnssecMode::Validate => anyhow::bail!(
            "[dns] dnssec = \"validate\": the DNSSEC self-test failed ({e}); the name servers must pass DNSSEC records (RRSIG, DNSKEY, DS, NSEC) through, or set dnssec = \"off\""
        ),
        Err(e) => {
            tracing::warn!(error = %e, "[dns] dnssec = \"trust-ad\": the resolver did not vouch for the trust anchor's DNSKEY set (no AD bit); DANE applies only where it sets AD")
        }
    }
    Ok(Some(Arc::new(Dane { resolver, required: config.delivery.dane_required.clone() })))
}

impl Dane {
    /// Whether `domain` is a `[delivery] dane_required` destination: only
    /// its MX hosts with secure, usable TLSA records may be used.
    pub fn required(&self, domain: &str) -> bool {
        crate::config::dane_required_matches(&self.required, domain)
    }

    /// Judges every candidate of `domain` (in the order given), connecting
    /// on `port`.
    pub async fn plan(&self, domain: &str, candidates: Vec<Candidate>, port: u16) -> Plan {
        let mut plan = Plan { hosts: Vec::new(), dropped: Vec::new() };
        // Implicit MX (RFC 5321 §5.1): the domain is its own host and
        // there is no MX set to be secure.
        let implicit = candidates.len() == 1 && candidates[0].name.eq_ignore_ascii_case(domain);
        let mx_secure = if implicit {
            true
        } else {
            match self.resolver.lookup(domain, RecordType::MX).await {
                Ok(a) if a.security == Security::Bogus => {
                    plan.dropped = candidates.into_iter().map(|c| (c.name, format!("the MX set of {domain} is bogus"))).collect();
                    return plan;
                }
                Ok(a) => a.security == Security::Secure,
                Err(e) => {
                    plan.dropped = candidates.into_iter().map(|c| (c.name, format!("MX lookup for {domain} failed: {e}"))).collect();
                    return plan;
                }
            }
        };
        for cand in candidates {
            match self.host(&cand, mx_secure, port).await {
                Ok((Some(addrs), policy)) => plan.hosts.push((Candidate { name: cand.name, addrs }, policy)),
                Ok((None, policy)) => plan.hosts.push((cand, policy)),
                Err(why) => plan.dropped.push((cand.name, why)),
            }
        }
        plan
    }

    /// The policy for one host, and its addresses from the secure answers
    /// when DANE applies (the ones that were checked). An error takes the
    /// host out.
    async fn host(&self, cand: &Candidate, mx_secure: bool, port: u16) -> Result<(Option<Vec<std::net::SocketAddr>>, HostPolicy), String> {
        let name = cand.name.as_str();
        if cand.name.parse::<std::net::IpAddr>().is_ok() {
            return Ok((None, HostPolicy::None));
        }
        let (a, aaaa) = tokio::join!(self.resolver.lookup(name, RecordType::A), self.resolver.lookup(name, RecordType::AAAA));
        let answers: Vec<&Answer> = [&a, &aaaa].into_iter().filter_map(|r| r.as_ref().ok()).collect();
        if answers.iter().any(|a| a.security == Security::Bogus) {
            return Err(format!("the address records of {name} are bogus"));
        }
        let with_records: Vec<&Answer> = answers.iter().copied().filter(|a| !a.records.is_empty()).collect();
        let secure = mx_secure && !with_records.is_empty() && with_records.iter().all(|a| a.security == Security::Secure);
        if !secure {
            return Ok((None, HostPolicy::None));
        }
        let tlsa_name = format!("_{port}._tcp.{name}");
        let tlsa = match self.resolver.lookup(&tlsa_name, RecordType::TLSA).await {
            Ok(t) => t,
            // RFC 7672 §2.2: a failed TLSA lookup for a secure host must
            // not fall back to cleartext or unauthenticated TLS.
            Err(e) => return Err(format!("TLSA lookup for {tlsa_name} failed: {e}")),
        };
        match tlsa.security {
            Security::Bogus => return Err(format!("the TLSA records of {tlsa_name} are bogus")),
            Security::Insecure => return Ok((None, HostPolicy::None)),
            Security::Secure => {}
        }
        let all: Vec<Tlsa> = tlsa.records.iter().filter_map(Tlsa::from_rdata).collect();
        if all.is_empty() {
            return Ok((None, HostPolicy::None));
        }
        let text = all.iter().map(|t| format!("{tlsa_name}. IN TLSA {t}")).collect::<Vec<_>>().join("\n");
        let usable = all.into_iter().filter(Tlsa::usable).collect();
        let addrs = addresses(&with_records, port);
        Ok((if addrs.is_empty() { None } else { Some(addrs) }, HostPolicy::Tlsa { usable, text }))
    }
}

/// The client configuration that accepts only a certificate matching
/// `records` (all usable). `host` is the MX host name and `domain` the
/// recipient domain: DANE-TA chains must name one of them (RFC 7672
/// §3.2.2); DANE-EE certificates are not name-checked (§3.2.1).
pub fn client_config(records: Vec<Tlsa>, host: &str, domain: &str) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = DaneVerifier { records, names: vec![host.to_string(), domain.to_string()], provider: provider.clone() };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth())
        .unwrap_or_else(|_| {
            // ok: the ring provider supports the default protocol versions
            unreachable!("ring supports TLS 1.2 and 1.3")
        });
    Arc::new(config)
}

/// Checks the server's chain against the TLSA records. A mismatch is
/// `ApplicationVerificationFailure`, which `tls::result_type` reports as
/// `tlsa-invalid`.
#[derive(Debug)]
struct DaneVerifier {
    records: Vec<Tlsa>,
    names: Vec<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl DaneVerifier {
    /// DANE-TA: a certificate of the presented chain matches a `2 x x`
    /// record; the end entity must chain to it and carry one of our names.
    fn trust_anchor_ok(&self, end: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], now: UnixTime) -> bool {
        for record in self.records.iter().filter(|r| r.usage == 2) {
            for ta in intermediates.iter().filter(|c| record.matches(c)) {
                let mut roots = rustls::RootCertStore::empty();
                if roots.add(ta.clone().into_owned()).is_err() {
                    continue;
                }
                let Ok(verifier) =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone()).build()
                else {
                    continue;
                };
                for name in &self.names {
                    let Ok(server) = ServerName::try_from(name.clone()) else { continue };
                    if verifier.verify_server_cert(end, intermediates, &server, &[], now).is_ok() {
                        return true;
                    }
                }
            }
        }
        false
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // DANE-EE: the key or certificate itself; no name or date checks.
        if self.records.iter().any(|r| r.usage == 3 && r.matches(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        if self.trust_anchor_ok(end_entity, intermediates, now) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str) -> CertificateDer<'static> {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
        c.cert.der().clone()
    }

    fn record(usage: u8, selector: u8, matching: u8, cert: &CertificateDer<'_>) -> Tlsa {
        let selected = if selector == 0 { cert.as_ref().to_vec() } else { spki(cert).expect("spki") };
        let data = match matching {
            0 => selected,
            1 => ring::digest::digest(&ring::digest::SHA256, &selected).as_ref().to_vec(),
            _ => ring::digest::digest(&ring::digest::SHA512, &selected).as_ref().to_vec(),
        };
        Tlsa { usage, selector, matching, data }
    }

    fn verify(records: Vec<Tlsa>, chain: &[CertificateDer<'static>]) -> bool {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let v = DaneVerifier { records, names: vec!["mx.example.test".into()], provider };
        let name = ServerName::try_from("mx.example.test").expect("name");
        v.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now()).is_ok()
    }

    #[test]
    fn dane_ee_matches_by_key_or_certificate_with_each_digest() {
        let c = cert("mx.example.test");
        for (s, m) in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)] {
            assert!(verify(vec![record(3, s, m, &c)], std::slice::from_ref(&c)), "3 {s} {m}");
        }
    }

    #[test]
    fn dane_ee_ignores_the_name_but_not_the_key() {
        let c = cert("other.example");
        assert!(verify(vec![record(3, 1, 1, &c)], std::slice::from_ref(&c)));
        let other = cert("mx.example.test");
        assert!(!verify(vec![record(3, 1, 1, &other)], std::slice::from_ref(&c)));
    }

    #[test]
    fn pkix_records_are_not_usable() {
        let c = cert("mx.example.test");
        let pkix = record(1, 1, 1, &c);
        assert!(!pkix.usable());
        assert!(record(3, 1, 1, &c).usable());
        assert!(!Tlsa { usage: 3, selector: 1, matching: 9, data: vec![] }.usable());
    }

    #[test]
    fn dane_ta_needs_the_chain_and_the_name() {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let leaf = |name: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
            params.signed_by(&key, &ca, &ca_key).expect("leaf").der().clone()
        };
        let ca_der = ca.der().clone();
        let ta = record(2, 0, 1, &ca_der);
        assert!(verify(vec![ta.clone()], &[leaf("mx.example.test"), ca_der.clone()]));
        // The wrong name fails (RFC 7672 §3.2.2), and so does a chain
        // without the trust anchor in it.
        assert!(!verify(vec![ta.clone()], &[leaf("elsewhere.example"), ca_der.clone()]));
        assert!(!verify(vec![ta], &[leaf("mx.example.test")]));
    }
}
