//! Central DKIM signing (RFC 6376, RFC 8463): every outbound message whose
//! `From:` domain has keys is signed here, once, just before it is spooled,
//! with each active key (by default Ed25519 and RSA-2048).
//!
//! The header block is held in memory, the body is read as a stream
//! (`checks::body::Body`: memory or a file), so a 20 MB message is hashed
//! chunk by chunk, once per body canonicalization, and never held whole.
//!
//! May import: `config`, `mailgate-core`, `checks::body` (the body type).

pub mod key;
pub mod reencode;
pub mod rotation;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};
use mailgate_core::dkim::{self, Algorithm, Canon, Params};

use crate::checks::body::{self, Body};
use crate::config::DomainConfig;
use key::DkimKey;
use store::KeyState;

/// Headers signed when present, in `h=` order.
pub const SIGNED_HEADERS: &[&str] = &[
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "list-unsubscribe",
    "list-unsubscribe-post",
];

/// Signed once more than they occur, so an added copy breaks the
/// signature (the duplicate-header attack).
pub const OVERSIGNED: &[&str] =
    &["from", "reply-to", "subject", "date", "to", "cc", "message-id", "mime-version", "content-type", "content-transfer-encoding"];

struct DomainKeys {
    keys: Vec<(String, DkimKey)>,
    header_canon: Canon,
    body_canon: Canon,
    headers: Option<Vec<String>>,
    expire: Option<u64>,
}

pub struct Signer {
    pub(crate) data_dir: PathBuf,
    pub(crate) domains: Vec<DomainConfig>,
    keys: RwLock<HashMap<String, DomainKeys>>,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Signer {
    /// Loads the active keys of every `[[domain]]`, first generating keys
    /// for domains that have none (logging the records to publish).
    pub fn start(data_dir: &Path, domains: &[DomainConfig]) -> anyhow::Result<Signer> {
        for d in domains.iter().filter(|d| d.dkim.sign) {
            let name = d.name.as_str();
            if !store::list(data_dir, name)?.is_empty() {
                continue;
            }
            for alg in &d.dkim.algorithms {
                let (info, record) = store::create(data_dir, name, *alg, None, KeyState::Active, now())?;
                tracing::warn!(
                    domain = name, selector = %info.selector,
                    "generated a DKIM key; publish: {}._domainkey.{name}. IN TXT \"{record}\"", info.selector
                );
            }
        }
        let signer = Signer { data_dir: data_dir.to_path_buf(), domains: domains.to_vec(), keys: RwLock::new(HashMap::new()) };
        signer.reload()?;
        Ok(signer)
    }

    /// Re-reads the keys from disk (SIGHUP, rotation).
    pub fn reload(&self) -> anyhow::Result<()> {
        let mut map = HashMap::new();
        for d in self.domains.iter().filter(|d| d.dkim.sign) {
            let name = d.name.as_str();
            let mut keys = Vec::new();
            for info in store::list(&self.data_dir, name)?.into_iter().filter(|k| k.state == KeyState::Active) {
                keys.push((info.selector.clone(), store::load_key(&self.data_dir, name, &info.selector)?));
            }
            let (hc, bc) = d.dkim.canonicalization;
            let headers = d.dkim.headers.clone();
            map.insert(name.to_string(), DomainKeys { keys, header_canon: hc, body_canon: bc, headers, expire: d.dkim.expire });
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    /// The `DKIM-Signature` fields to prepend to the message whose header
    /// block (the fields and the empty line) is `header` and whose body is
    /// `body`, or `None` when the `From:` domain is not one we sign for.
    /// Reads the body once, in chunks.
    pub fn sign(&self, header: &[u8], body: &Body) -> anyhow::Result<Option<String>> {
        self.sign_with(header, |feed| body.for_each_chunk(feed))
    }

    /// As [`Signer::sign`], for a message held whole in memory.
    pub fn sign_message(&self, message: &[u8]) -> anyhow::Result<Option<String>> {
        let (header, rest) = message.split_at(body::header_end(message).unwrap_or(message.len()));
        self.sign_with(header, |feed| {
            rest.chunks(body::CHUNK).for_each(feed);
            Ok(())
        })
    }

    /// Signs `header` and the body `read_body` feeds, chunk by chunk.
    fn sign_with(
        &self,
        header: &[u8],
        read_body: impl FnOnce(&mut dyn FnMut(&[u8])) -> std::io::Result<()>,
    ) -> anyhow::Result<Option<String>> {
        let Some(from) = from_domain(header) else { return Ok(None) };
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        // Our domain, or a subdomain of it (bounces from mx.example.com are
        // signed for example.com, which DMARC's relaxed alignment accepts).
        let Some((domain, dk)) = keys.iter().find(|(d, _)| from == **d || from.ends_with(&format!(".{d}"))) else {
            return Ok(None);
        };
        let domain = domain.clone();
        if dk.keys.is_empty() {
            tracing::warn!(domain = %domain, "no active DKIM key: message goes out unsigned");
            return Ok(None);
        }
        // One pass over the body per body canonicalization the keys use
        // (today one per domain). What the signer's header parsing leaves
        // of `header` (normally nothing) is body too.
        let mut hashes: Vec<(Canon, dkim::BodyHash)> = Vec::new();
        for canon in dk.keys.iter().map(|_| dk.body_canon) {
            if !hashes.iter().any(|(c, _)| *c == canon) {
                hashes.push((canon, dkim::BodyHash::new(canon)));
            }
        }
        let mut feed = |chunk: &[u8]| hashes.iter_mut().for_each(|(_, h)| h.update(chunk));
        feed(header.get(dkim::header_len(header)..).unwrap_or_default());
        read_body(&mut feed).map_err(|e| anyhow::anyhow!("cannot read the body to sign: {e}"))?;
        let hashes: Vec<(Canon, [u8; 32])> = hashes.into_iter().map(|(c, h)| (c, h.finish())).collect();

        let t = now();
        let mut out = String::new();
        for (selector, key) in &dk.keys {
            let params = Params {
                algorithm: key.algorithm(),
                domain: domain.clone(),
                selector: selector.clone(),
                header_canon: dk.header_canon,
                body_canon: dk.body_canon,
                headers: dk.headers.clone().unwrap_or_else(|| SIGNED_HEADERS.iter().map(|s| s.to_string()).collect()),
                oversign: OVERSIGNED.iter().map(|s| s.to_string()).collect(),
                timestamp: t,
                expiration: dk.expire.map(|x| t + x),
                identity: None,
            };
            let Some((_, bh)) = hashes.iter().find(|(c, _)| *c == params.body_canon) else {
                anyhow::bail!("no body hash for {:?} canonicalization", params.body_canon);
            };
            let input = dkim::prepare(header, bh, &params);
            out.push_str(&input.finish(&key.sign(&input)?));
        }
        Ok(Some(out))
    }
}

/// The domain of the single `From:` mailbox, lower-cased; `None` if there
/// is not exactly one. Reads the header block only (a whole message
/// works too: parsing stops at the empty line).
pub fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = MessageParser::default().parse_headers(message)?;
    let mut froms = parsed.headers().iter().filter(|h| h.name == HeaderName::From);
    let from = froms.next()?;
    if froms.next().is_some() {
        return None;
    }
    let HeaderValue::Address(Address::List(list)) = &from.value else { return None };
    let [one] = list.as_slice() else { return None };
    let addr = one.address.as_deref()?;
    Some(addr.rsplit_once('@')?.1.trim_end_matches('.').to_lowercase())
}

/// Parses `"relaxed/relaxed"`-style canonicalization.
pub fn parse_canon(s: &str) -> Option<(Canon, Canon)> {
    let one = |w: &str| match w {
        "relaxed" => Some(Canon::Relaxed),
        "simple" => Some(Canon::Simple),
        _ => None,
    };
    let (h, b) = s.split_once('/').unwrap_or((s, "simple"));
    Some((one(h)?, one(b)?))
}

pub fn parse_algorithm(s: &str) -> Option<Algorithm> {
    match s {
        "ed25519" => Some(Algorithm::Ed25519Sha256),
        "rsa2048" | "rsa" => Some(Algorithm::RsaSha256),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
