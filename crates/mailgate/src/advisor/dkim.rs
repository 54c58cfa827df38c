//! DKIM keys as published: the selectors mailgate signs with (from the
//! key store of `--config`'s `data_dir`) and common selector names, since
//! DNS cannot list a domain's selectors. Per key: type, RSA size from the
//! SubjectPublicKeyInfo (under 1024 bits an error, RFC 8301 §3.2; under
//! 2048 a warning), `t=y`, revoked (`p=` empty, RFC 6376 §3.6.1), and
//! whether mail-auth, the verifier our checks use, accepts the record.
//! May import: `sign::store`, `advisor::lookup`.

use base64::Engine;
use hickory_resolver::TokioResolver;
use mail_auth::common::parse::TxtRecordParser;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;

use super::Finding;
use super::lookup::{self, Answer};

const CHECK: &str = "dkim";

/// Selector names tried on every domain (the defaults of common
/// providers and tools).
pub const COMMON_SELECTORS: &[&str] = &["default", "selector1", "selector2", "google", "dkim", "mail", "s1", "s2", "k1", "k2"];

/// A selector we sign with (or are about to): a missing record is ours to
/// fix.
pub struct Configured {
    pub selector: String,
    /// Active keys sign now; pending ones wait for their record.
    pub active: bool,
}

/// What one key record is.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    Rsa(usize),
    Ed25519,
    Revoked,
}

fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.chars().filter(|c| !c.is_whitespace()).collect()))
        .collect()
}

/// Reads the key out of a record, or says what is wrong with it.
fn key(record: &str) -> Result<Key, String> {
    let tags = tags(record);
    let get = |name: &str| tags.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if let Some(v) = get("v")
        && v != "DKIM1"
    {
        return Err(format!("v={v} where DKIM1 was expected"));
    }
    let Some(p) = get("p") else { return Err("no p= tag (the public key)".into()) };
    if p.is_empty() {
        return Ok(Key::Revoked);
    }
    let der = base64::engine::general_purpose::STANDARD.decode(p).map_err(|e| format!("p= is not base64: {e}"))?;
    match get("k").unwrap_or("rsa").to_ascii_lowercase().as_str() {
        "rsa" => {
            // RFC 6376 §3.6.1: an RSAPublicKey inside a SubjectPublicKeyInfo;
            // some publish the bare PKCS#1 key, which verifiers accept too.
            let key = rsa::RsaPublicKey::from_public_key_der(&der)
                .or_else(|_| rsa::RsaPublicKey::from_pkcs1_der(&der))
                .map_err(|e| format!("p= holds no RSA public key: {e}"))?;
            Ok(Key::Rsa(key.n().bits()))
        }
        "ed25519" if der.len() == 32 => Ok(Key::Ed25519),
        "ed25519" => Err(format!("an Ed25519 key is 32 octets, not {}", der.len())),
        other => Err(format!("unknown key type k={other}")),
    }
}

pub async fn check(resolver: &TokioResolver, domain: &str, configured: &[Configured]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut selectors: Vec<(&str, Option<bool>)> = configured.iter().map(|c| (c.selector.as_str(), Some(c.active))).collect();
    for s in COMMON_SELECTORS {
        if !selectors.iter().any(|(c, _)| c.eq_ignore_ascii_case(s)) {
            selectors.push((s, None));
        }
    }
    let mut found = 0;
    for (selector, ours) in selectors {
        let name = format!("{selector}._domainkey.{domain}");
        let records: Vec<String> = match lookup::txt(resolver, &name).await {
            Answer::Found(r) => r,
            Answer::Failed(e) => {
                findings.push(Finding::error(
                    CHECK,
                    "dkim-lookup-failed",
                    e,
                    format!("make the name servers of {domain} answer TXT queries"),
                ));
                continue;
            }
            Answer::NoName | Answer::NoData => Vec::new(),
        };
        let keys: Vec<&String> = records.iter().filter(|r| r.contains("p=") || r.trim_start().starts_with("v=DKIM1")).collect();
        match (keys.as_slice(), ours) {
            ([], Some(true)) => findings.push(Finding::error(
                CHECK,
                "dkim-key-missing",
                format!("mailgate signs with selector {selector}, but {name} has no key record"),
                format!("publish the record `mailgate records` prints for {name}"),
            )),
            ([], Some(false)) => findings.push(Finding::warning(
                CHECK,
                "dkim-key-missing",
                format!("the pending key {selector} is not published at {name} yet"),
                format!("publish the record `mailgate records` prints for {name}; mailgate switches to it once DNS serves it"),
            )),
            ([], None) => {}
            ([one], _) => {
                found += 1;
                findings.extend(judge(selector, &name, one, ours == Some(true)));
            }
            (many, _) => {
                found += 1;
                findings.push(Finding::error(
                    CHECK,
                    "dkim-multiple-records",
                    format!("{name} has {} key records: verifiers may pick either", many.len()),
                    format!("keep one key record at {name}"),
                ));
            }
        }
    }
    if found == 0 && !findings.iter().any(|f| f.severity != super::Severity::Ok) {
        findings.push(Finding::warning(
            CHECK,
            "dkim-no-keys",
            format!("no DKIM key found at the selectors tried ({})", COMMON_SELECTORS.join(", ")),
            "sign outgoing mail with DKIM and publish the key; give --config so your own selectors are checked",
        ));
    }
    findings
}

fn judge(selector: &str, name: &str, record: &str, signing: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let testing = tags(record).iter().any(|(k, v)| k == "t" && v.split(':').any(|f| f.eq_ignore_ascii_case("y")));
    match key(record) {
        Err(e) => out.push(Finding::error(CHECK, "dkim-syntax", format!("{name}: {e}"), format!("publish a valid key record at {name}"))),
        Ok(Key::Revoked) if signing => out.push(Finding::error(
            CHECK,
            "dkim-key-revoked",
            format!("{name} is revoked (empty p=), yet mailgate signs with selector {selector}"),
            "rotate to a new key (`mailgate dkim rotate`) or publish this key again",
        )),
        Ok(Key::Revoked) => out.push(Finding::warning(
            CHECK,
            "dkim-key-revoked",
            format!("{name} is revoked (empty p=): mail signed with it fails DKIM"),
            format!("make sure nothing signs with selector {selector} any more, then remove the record"),
        )),
        Ok(Key::Rsa(bits)) if bits < 1024 => out.push(Finding::error(
            CHECK,
            "dkim-key-too-short",
            format!("{name}: RSA key of {bits} bits; verifiers ignore keys under 1024 bits (RFC 8301 §3.2)"),
            format!("replace it by a 2048-bit RSA (or Ed25519 plus RSA) key under a new selector"),
        )),
        Ok(Key::Rsa(bits)) if bits < 2048 => out.push(Finding::warning(
            CHECK,
            "dkim-key-weak",
            format!("{name}: RSA key of {bits} bits, under the recommended 2048"),
            "rotate to a 2048-bit RSA key under a new selector",
        )),
        Ok(k) => match mail_auth::common::verify::DomainKey::parse(record.as_bytes()) {
            Err(e) => out.push(Finding::error(
                CHECK,
                "dkim-syntax",
                format!("{name}: the verifier rejects the record: {e}"),
                format!("publish a valid key record at {name}"),
            )),
            Ok(_) => {
                let what = match k {
                    Key::Rsa(bits) => format!("RSA {bits} bits"),
                    _ => "Ed25519".to_string(),
                };
                out.push(Finding::ok(CHECK, "dkim-key-ok", format!("{name}: {what}")));
            }
        },
    }
    if testing {
        out.push(Finding::warning(
            CHECK,
            "dkim-testing",
            format!("{name} has t=y: verifiers may treat its signatures as unsigned mail (RFC 6376 §3.6.1)"),
            format!("remove t=y from {name} once signing works"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        assert_eq!(key("v=DKIM1; k=rsa; p="), Ok(Key::Revoked));
        assert!(key("v=DKIM2; p=AAAA").is_err());
        assert!(key("v=DKIM1; k=ed25519; p=AAAA").is_err());
        let ed = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(key(&format!("v=DKIM1; k=ed25519; p={ed}")), Ok(Key::Ed25519));
        assert!(key("v=DKIM1; k=dsa; p=AAAA").is_err());
        assert!(key("v=DKIM1; p=!!").is_err());
    }
}
