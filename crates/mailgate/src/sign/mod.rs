//! Central DKIM signing (RFC 6376, RFC 8463): every outbound message whose
//! `From:` domain has keys is signed here, once, just before it is spooled,
//! with each active key (by default Ed25519 and RSA-2048).
//!
//! The header block is held in memory, the body is read as a stream
//! (`checks::body::Body`: memory or a file), so a 20 MB message is hashed
//! chunk by chunk, once per body canonicalization, and never held whole.
//!
//! The keys come from a [`backend::KeyStore`] (files, or PostgreSQL for a
//! cluster) and are cached here: a store that stops answering never stops
//! signing, the last keys loaded stay in use.
//!
//! May import: `config`, `cluster` (through `backend`), `mailgate-core`,
//! `checks::body` (the body type).

pub mod backend;
pub mod key;
pub mod reencode;
pub mod rotation;
pub mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

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
    pub(crate) store: Arc<dyn backend::KeyStore>,
    pub(crate) domains: Vec<DomainConfig>,
    keys: RwLock<HashMap<String, DomainKeys>>,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Signer {
    /// Loads the active keys of every `[[domain]]` from the files in
    /// `data_dir`, first generating keys for domains that have none.
    pub fn start(data_dir: &Path, domains: &[DomainConfig]) -> anyhow::Result<Signer> {
        Self::start_with(Arc::new(backend::Files::new(data_dir)), data_dir, domains)
    }

    /// As [`Signer::start`], with the keys in `store`. A shared store that
    /// does not answer leaves the signer with the copy of its keys in
    /// `data_dir/dkim` (written at every load), with a warning.
    pub fn start_with(store: Arc<dyn backend::KeyStore>, data_dir: &Path, domains: &[DomainConfig]) -> anyhow::Result<Signer> {
        let shared = store.kind() != "files";
        for d in domains.iter().filter(|d| d.dkim.sign) {
            let name = d.name.as_str();
            let added = match backend::ensure(store.as_ref(), name, &d.dkim.algorithms, now()) {
                Ok(added) => added,
                Err(e) if shared => {
                    tracing::warn!(domain = name, error = %format!("{e:#}"), "cannot check the DKIM keys in the cluster store");
                    continue;
                }
                Err(e) => return Err(e),
            };
            for (info, record) in added {
                tracing::warn!(
                    domain = name, selector = %info.selector,
                    "generated a DKIM key; publish: {}._domainkey.{name}. IN TXT \"{record}\"", info.selector
                );
            }
        }
        let signer = Signer { store, domains: domains.to_vec(), keys: RwLock::new(HashMap::new()) };
        if let Err(e) = signer.reload() {
            if !shared {
                return Err(e);
            }
            tracing::warn!(
                error = %format!("{e:#}"),
                "cannot load the DKIM keys from the cluster store; signing with the copy in {} until it answers",
                data_dir.join("dkim").display()
            );
            signer.install(&backend::Files::new(data_dir))?;
        }
        Ok(signer)
    }

    /// Re-reads the keys from the store (SIGHUP, rotation, a change seen by
    /// polling). On an error the keys in use stay. Blocking: from async
    /// code, call it on a blocking thread.
    pub fn reload(&self) -> anyhow::Result<()> {
        self.install(self.store.as_ref())
    }

    fn install(&self, store: &dyn backend::KeyStore) -> anyhow::Result<()> {
        let mut map = HashMap::new();
        for d in self.domains.iter().filter(|d| d.dkim.sign) {
            let name = d.name.as_str();
            let mut keys = Vec::new();
            for (info, pem) in store.snapshot(name)?.into_iter().filter(|(k, _)| k.state == KeyState::Active) {
                let key = DkimKey::from_pem(&pem).map_err(|e| anyhow::anyhow!("the key {} of {name}: {e}", info.selector))?;
                keys.push((info.selector.clone(), key));
            }
            let (hc, bc) = d.dkim.canonicalization;
            let headers = d.dkim.headers.clone();
            map.insert(name.to_string(), DomainKeys { keys, header_canon: hc, body_canon: bc, headers, expire: d.dkim.expire });
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    /// [`Signer::reload`] on a blocking thread.
    pub async fn reload_async(self: &Arc<Self>) -> anyhow::Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.reload()).await.map_err(|e| anyhow::anyhow!("key reload task: {e}"))?
    }

    /// The selectors signing for `domain` now.
    pub fn active_selectors(&self, domain: &str) -> Vec<String> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.get(domain).map(|d| d.keys.iter().map(|(s, _)| s.clone()).collect()).unwrap_or_default()
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
