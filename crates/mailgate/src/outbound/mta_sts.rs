//! MTA-STS (RFC 8461): discover a recipient domain's policy through its
//! `_mta-sts` TXT record, fetch it over verified HTTPS, cache it, and say
//! which MX hosts are allowed and whether TLS must be verified.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use mailgate_core::Domain;

/// RFC 8461 §3.3: a policy body larger than this is invalid.
const MAX_POLICY_SIZE: usize = 64 * 1024;
/// Longest `max_age` honoured (RFC 8461 §3.2: up to 31557600).
const MAX_AGE_CAP: u64 = 31_557_600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub id: String,
    pub mode: Mode,
    pub mx: Vec<String>,
    pub max_age: u64,
    /// The policy as fetched, its lines joined by LF (TLS-RPT reports
    /// quote it: RFC 8460 `policy-string`).
    pub text: String,
}

impl Policy {
    /// Parses a policy body (RFC 8461 §3.2).
    pub fn parse(id: &str, body: &str) -> Result<Policy, String> {
        let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
        for line in body.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else { return Err(format!("malformed line {line:?}")) };
            let value = value.trim();
            match key.trim() {
                "version" => version = Some(value.to_string()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(format!("unknown mode {other:?}")),
                    })
                }
                "max_age" => max_age = Some(value.parse::<u64>().map_err(|_| format!("bad max_age {value:?}"))?.min(MAX_AGE_CAP)),
                "mx" => mx.push(value.to_lowercase()),
                _ => {} // unknown keys are ignored (RFC 8461 §3.2)
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err("missing or unknown version".into());
        }
        let mode = mode.ok_or("missing mode")?;
        let max_age = max_age.ok_or("missing max_age")?;
        if mx.is_empty() && mode != Mode::None {
            return Err("no mx patterns".into());
        }
        let text = body.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("\n");
        Ok(Policy { id: id.to_string(), mode, mx, max_age, text })
    }

    /// RFC 8461 §4.1: `mx.example.com` matches itself; `*.example.com`
    /// matches exactly one more label on the left.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host.split_once('.').is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => *p == host,
        })
    }
}

/// Why no usable policy could be had; these are TLS-RPT result types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    Fetch(String),
    Invalid(String),
}

struct Cached {
    policy: Policy,
    expires: Instant,
}

pub struct MtaSts {
    resolver: TokioResolver,
    tls: Arc<rustls::ClientConfig>,
    port: u16,
    timeout: Duration,
    cache: Mutex<HashMap<Domain, Cached>>,
}

impl MtaSts {
    pub fn new(resolver: TokioResolver, tls: Arc<rustls::ClientConfig>, port: u16, timeout: Duration) -> Self {
        MtaSts { resolver, tls, port, timeout, cache: Mutex::new(HashMap::new()) }
    }

    /// The policy in force for `domain`: `Ok(None)` when the domain has
    /// none. A cached policy is kept while its id is unchanged and it has
    /// not expired, and also when a refresh fails (RFC 8461 §5.1).
    pub async fn policy(&self, domain: &Domain) -> Result<Option<Policy>, PolicyError> {
        let id = match self.txt_id(domain).await {
            Ok(id) => id,
            Err(e) => return self.cached(domain).map(Some).ok_or(e),
        };
        let Some(id) = id else {
            // No TXT record: keep a cached, unexpired policy (an attacker
            // may be hiding the record); otherwise there is no policy.
            return Ok(self.cached(domain));
        };
        if let Some(p) = self.cached(domain).filter(|p| p.id == id) {
            return Ok(Some(p));
        }
        match self.fetch(domain, &id).await {
            Ok(policy) => {
                let expires = Instant::now() + Duration::from_secs(policy.max_age);
                self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(domain.clone(), Cached { policy: policy.clone(), expires });
                tracing::info!(domain = %domain, id = %policy.id, mode = ?policy.mode, "MTA-STS policy fetched");
                Ok(Some(policy))
            }
            Err(e) => self.cached(domain).map(Some).ok_or(e),
        }
    }

    fn cached(&self, domain: &Domain) -> Option<Policy> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(domain).filter(|c| c.expires > Instant::now()).map(|c| c.policy.clone())
    }

    /// `Ok(Some(id))` from a valid `v=STSv1; id=...` record, `Ok(None)` when
    /// there is none.
    async fn txt_id(&self, domain: &Domain) -> Result<Option<String>, PolicyError> {
        let name = format!("_mta-sts.{domain}.");
        let lookup = match self.resolver.txt_lookup(name.as_str()).await {
            Ok(l) => l,
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => return Ok(None),
            Err(e) => return Err(PolicyError::Fetch(format!("TXT lookup failed: {e}"))),
        };
        let records: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(t.txt_data.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<String>()),
                _ => None,
            })
            .filter(|t| t.starts_with("v=STSv1"))
            .collect();
        // RFC 8461 §3.1: more than one record means no policy.
        let [record] = records.as_slice() else { return Ok(None) };
        let id = record.split(';').map(str::trim).find_map(|kv| kv.strip_prefix("id=")).map(str::to_string);
        match id {
            Some(id) if !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()) => Ok(Some(id)),
            _ => Err(PolicyError::Invalid(format!("bad TXT record {record:?}"))),
        }
    }

    async fn fetch(&self, domain: &Domain, id: &str) -> Result<Policy, PolicyError> {
        let host = format!("mta-sts.{domain}");
        let url = if self.port == 443 {
            format!("https://{host}/.well-known/mta-sts.txt")
        } else {
            format!("https://{host}:{}/.well-known/mta-sts.txt", self.port)
        };
        let fetch_err = |e: String| PolicyError::Fetch(format!("{url}: {e}"));
        // Resolve through our resolver, not the system's.
        let addrs = self.resolver.lookup_ip(format!("{host}.").as_str()).await.map_err(|e| fetch_err(e.to_string()))?;
        let ip = addrs.iter().next().ok_or_else(|| fetch_err("no address".into()))?;
        let client = self.client_for(&host, ip)?;
        let mut resp = client.get(&url).send().await.map_err(|e| fetch_err(e.to_string()))?;
        // RFC 8461 §3.3: no redirects, only 200, text/plain, bounded size.
        if resp.status() != reqwest::StatusCode::OK {
            return Err(fetch_err(format!("HTTP status {}", resp.status())));
        }
        let ctype = resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !ctype.to_ascii_lowercase().starts_with("text/plain") {
            return Err(PolicyError::Invalid(format!("content type {ctype:?} is not text/plain")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fetch_err(e.to_string()))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_POLICY_SIZE {
                return Err(PolicyError::Invalid("policy larger than 64 KiB".into()));
            }
        }
        let text = String::from_utf8(body).map_err(|_| PolicyError::Invalid("policy is not UTF-8".into()))?;
        Policy::parse(id, &text).map_err(PolicyError::Invalid)
    }

    fn client_for(&self, host: &str, ip: std::net::IpAddr) -> Result<reqwest::Client, PolicyError> {
        // Pin the host to the address our resolver found: reqwest would
        // otherwise ask the system resolver.
        reqwest::Client::builder()
            .use_preconfigured_tls(self.tls.as_ref().clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .no_proxy()
            .resolve(host, std::net::SocketAddr::new(ip, self.port))
            .build()
            .map_err(|e| PolicyError::Fetch(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let p = Policy::parse("1", "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmx: *.example.net\r\nmax_age: 86400\r\n")
            .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert!(p.allows("mail.example.test"));
        assert!(p.allows("MX1.example.net."));
        assert!(!p.allows("a.b.example.net"));
        assert!(!p.allows("example.net"));
        assert!(!p.allows("evil.test"));
        assert!(Policy::parse("1", "version: STSv1\nmode: enforce\nmax_age: 1\n").is_err());
        assert!(Policy::parse("1", "mode: enforce\nmx: a\nmax_age: 1\n").is_err());
        assert!(Policy::parse("1", "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n").is_err());
    }
}
