//! ARC (RFC 8617): validates a message's Authenticated Received Chain and
//! seals it with a new ARC set, through mail-auth 0.13
//! (`MessageAuthenticator::verify_arc`, `ArcSealer`).
//!
//! mail-auth checks the cryptography but reads the chain leniently, so
//! [`verify`] first checks its shape itself (`arc_chain.rs`: RFC 8617 §5.2
//! steps 1–3 and RFC 6376 tag-list syntax). Signature timestamps are not
//! compared with the clock: ARC has no expiry of its own, and mail-auth
//! only honours an AMS `x=`.
//!
//! Results: `none`, `pass`, `fail` (the RFC 8617 §4.4 words), plus
//! `temperror` when a key could not be fetched because of a DNS failure.
//! The chain may well be fine then, so the caller should not treat it as
//! `fail`, and [`seal`] refuses to seal (a seal would have to say cv=fail
//! for good).
//!
//! Both work on a message parsed whole or from its header block alone;
//! for the latter the body hashes come from one streamed pass over the
//! body (`checks::body`, [`body_lanes`]).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_auth::arc::{ArcSealer, ChainValidation, Results, Seal, Set, Signature};
use mail_auth::common::crypto::{Algorithm, CryptoError, HashAlgorithm, Sha256, SigningKey};
use mail_auth::common::headers::{Header, HeaderWriter, Writable};
use mail_auth::dkim::Canonicalization;
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult, MessageAuthenticator};
use sha2::Digest;

use crate::sign::key::DkimKey;

#[path = "arc_chain.rs"]
mod chain;

#[cfg(test)]
#[path = "arc_suite.rs"]
mod suite;

#[cfg(test)]
#[path = "arc_tests.rs"]
mod tests;

/// The chain validation status (RFC 8617 §4.4), as written in `arc=` of
/// Authentication-Results and `cv=` of a new seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArcResult {
    /// No ARC header fields at all.
    None,
    Pass,
    Fail,
    /// A key lookup failed for a DNS reason that may go away: validate
    /// again later (RFC 8601 `temperror`).
    TempError,
}

impl ArcResult {
    /// The RFC 8601 word.
    pub fn as_str(self) -> &'static str {
        match self {
            ArcResult::None => "none",
            ArcResult::Pass => "pass",
            ArcResult::Fail => "fail",
            ArcResult::TempError => "temperror",
        }
    }
}

impl std::fmt::Display for ArcResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone)]
pub struct ArcOutcome<'x> {
    pub result: ArcResult,
    /// mail-auth's view, with its result brought in line with `result`;
    /// [`seal`] and mail-auth's Authentication-Results builder take it.
    pub output: ArcOutput<'x>,
    /// `d=` of each ARC-Seal, instance 1 first, lower case.
    pub sealers: Vec<String>,
    /// Why the result is `fail` or `temperror`.
    pub reason: Option<String>,
}

/// Validates the ARC chain of `msg` (RFC 8617 §5.2).
pub async fn verify<'x>(auth: &MessageAuthenticator, msg: &'x AuthenticatedMessage<'x>) -> ArcOutcome<'x> {
    let sealers = chain::sealers(&msg.headers);
    match chain::check(&msg.headers) {
        Ok(false) => return ArcOutcome { result: ArcResult::None, output: ArcOutput::default(), sealers, reason: None },
        Ok(true) => {}
        Err(reason) => {
            let output = ArcOutput::default().with_result(broken());
            return ArcOutcome { result: ArcResult::Fail, output, sealers, reason: Some(reason) };
        }
    }
    let mut output = auth.verify_arc(msg).await;
    if matches!(output.result(), DkimResult::Fail(_) | DkimResult::Neutral(_)) && relaxed_by_default(auth, msg).await {
        output = output.with_result(DkimResult::Pass);
    }
    let (result, reason) = match output.result() {
        DkimResult::Pass => (ArcResult::Pass, None),
        DkimResult::TempError(e) => (ArcResult::TempError, Some(format!("key lookup failed: {e}"))),
        // The chain check above found sets, so mail-auth must have too.
        DkimResult::None => (ArcResult::Fail, Some("no complete ARC set".to_string())),
        DkimResult::Neutral(e) | DkimResult::Fail(e) | DkimResult::PermError(e) => (ArcResult::Fail, Some(e.to_string())),
    };
    let output = match result {
        ArcResult::Fail if !matches!(output.result(), DkimResult::Fail(_)) => output.with_result(broken()),
        _ => output,
    };
    ArcOutcome { result, output, sealers, reason }
}

/// mail-auth reads an AMS without `c=` as simple/simple, DKIM's default
/// (RFC 6376 §3.5). The ARC drafts allowed relaxed only, and dkimpy and
/// the suite (`ams_fields_c_na`) read a missing `c=` so. When the newest
/// AMS has no `c=` and failed, this validates the chain again with that
/// AMS read as relaxed/relaxed.
async fn relaxed_by_default(auth: &MessageAuthenticator, msg: &AuthenticatedMessage<'_>) -> bool {
    let Some(newest) = msg.ams_headers.iter().enumerate().max_by_key(|(_, h)| h.header.i).map(|(k, _)| k) else { return false };
    let mut patched = msg.clone();
    let Some(ams) = patched.ams_headers.get_mut(newest) else { return false };
    if !chain::no_canonicalization(ams.value) {
        return false;
    }
    ams.header.ch = Canonicalization::Relaxed;
    ams.header.cb = Canonicalization::Relaxed;
    let (hash, l) = (HashAlgorithm::from(ams.header.a), ams.header.l);
    // A message parsed from its header block has this hash already (its
    // streamed lanes include `body_lanes`); one parsed whole has its body.
    if !patched.body_hashes.iter().any(|(c, h, len, _)| *c == Canonicalization::Relaxed && *h == hash && *len == l) {
        let bh = hash.hash(Canonicalization::Relaxed.canonical_body(msg.raw_body(), l)).as_ref().to_vec();
        patched.body_hashes.push((Canonicalization::Relaxed, hash, l, bh));
    }
    let output = auth.verify_arc(&patched).await;
    matches!(output.result(), DkimResult::Pass)
}

/// The body hashes ARC needs beyond those its AMS fields name (which
/// mail-auth's parse lists in `body_hashes`), for a message parsed from its
/// header block whose body is streamed (`checks::body`): the relaxed
/// reading of an AMS without `c=` ([`relaxed_by_default`]), and, when
/// `sealing`, the relaxed/sha256 whole-body hash the new AMS signs (mail-auth's
/// sealer takes it from `body_hashes`; without it, it would hash the empty
/// body of a header block).
pub fn body_lanes(msg: &AuthenticatedMessage<'_>, sealing: bool) -> Vec<super::body::Lane> {
    let mut lanes = Vec::new();
    for ams in &msg.ams_headers {
        if chain::no_canonicalization(ams.value) {
            lanes.push((Canonicalization::Relaxed, HashAlgorithm::from(ams.header.a), ams.header.l));
        }
    }
    if sealing {
        lanes.push(SEAL_LANE);
    }
    lanes
}

/// The body hash a new seal's AMS uses (relaxed, sha256, whole body).
pub const SEAL_LANE: super::body::Lane = (Canonicalization::Relaxed, HashAlgorithm::Sha256, 0);

fn broken() -> DkimResult {
    DkimResult::Fail(mail_auth::Error::Arc(mail_auth::arc::ArcError::BrokenChain))
}

/// A private key for ARC sealing: Ed25519 or RSA, stored as mailgate
/// stores DKIM keys (PKCS#8 PEM; PKCS#1 RSA is read too).
pub struct SealingKey {
    key: DkimKey,
}

impl SealingKey {
    pub fn from_pem(pem: &str) -> anyhow::Result<SealingKey> {
        Ok(SealingKey { key: DkimKey::from_pem(pem)? })
    }

    pub fn load(path: &Path) -> anyhow::Result<SealingKey> {
        let pem = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Self::from_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The TXT record to publish at `<selector>._domainkey.<domain>`.
    pub fn dns_record(&self) -> String {
        self.key.dns_record()
    }

    fn algorithm(&self) -> Algorithm {
        match self.key {
            DkimKey::Ed25519(_) => Algorithm::Ed25519Sha256,
            DkimKey::Rsa { .. } | DkimKey::RsaLegacy { .. } => Algorithm::RsaSha256,
        }
    }

    /// Signs `data` as DKIM does (`sign::key::DkimKey::sign_data`).
    fn sign(&self, data: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.key.sign_data(data, sha2::Sha256::digest(data).into())
    }
}

/// The key as mail-auth's sealer wants it.
struct Signer<'a>(&'a SealingKey);

impl SigningKey for Signer<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(1024);
        input.write(&mut data);
        self.0.sign(&data).map_err(|e| mail_auth::Error::Crypto(CryptoError::Library(e.to_string())))
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

/// Header fields the ARC-Message-Signature covers (those absent are
/// signed as absent, so they cannot be added later).
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "DKIM-Signature",
];

/// Seals `msg` after [`verify`] gave `arc`: returns the new ARC-Seal,
/// ARC-Message-Signature and ARC-Authentication-Results fields, in that
/// order, each ending in CRLF, to prepend to the message. `auth_results`
/// is the Authentication-Results value this hop adds, authserv-id first;
/// it becomes the AAR.
///
/// `msg` and `arc` must be the message and outcome [`verify`] was given
/// and gave. A `msg` parsed from its header block alone must carry the
/// streamed body hash [`SEAL_LANE`] (see [`body_lanes`]). A failed chain gets a cv=fail set that seals only itself
/// (RFC 8617 §5.1.2).
///
/// Errors when no seal may be added: the validation had a temporary
/// error; the chain already ends in cv=fail, so it stays failed and there
/// is nothing to add (RFC 8617 §5.2 step 2; the ValiMail signing suite's
/// `no_additional_sig`); or it already has 50 sets. Also when `domain` or
/// `selector` is not a domain name.
pub fn seal(
    key: &SealingKey,
    domain: &str,
    selector: &str,
    msg: &AuthenticatedMessage<'_>,
    arc: &ArcOutcome<'_>,
    auth_results: &str,
) -> anyhow::Result<String> {
    for (what, name) in [("domain", domain), ("selector", selector)] {
        if !chain::is_domain(name) {
            anyhow::bail!("ARC sealing {what} {name:?} is not a domain name");
        }
    }
    let ar = one_line(auth_results)?;
    let highest = chain::highest_instance(&msg.headers);
    if chain::ends_failed(&msg.headers) {
        anyhow::bail!("the ARC chain already ends in cv=fail; nothing to seal");
    }
    if highest >= chain::MAX_SETS {
        anyhow::bail!("the ARC chain already has {highest} sets, the most allowed");
    }
    let results = AuthenticationResults::new(&ar);
    let sealer = ArcSealer::from_key(Signer(key))
        .domain(domain)
        .selector(selector)
        .headers(SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    let err = |e: mail_auth::Error| anyhow::anyhow!("ARC sealing failed: {e}");
    let fields = match arc.result {
        ArcResult::TempError => anyhow::bail!("ARC validation had a temporary error; not sealing"),
        ArcResult::None if highest > 0 => anyhow::bail!("the message has ARC header fields but the result is none"),
        ArcResult::Pass if arc.output.sets().len() != highest as usize => {
            anyhow::bail!("the ARC outcome does not belong to this message")
        }
        ArcResult::None | ArcResult::Pass => sealer.seal(msg, &results, &arc.output).map_err(err)?.to_header(),
        ArcResult::Fail => {
            // mail-auth would seal a failed chain over all its sets, or as
            // i=1 when it could not read them; RFC 8617 §5.1.2 wants i=N+1
            // and a seal over the new set only. Let mail-auth number and
            // sign the AMS against a stand-in for set N, then seal anew.
            let (sig, prev_seal, prev_results) =
                (Signature::default(), Seal { i: highest, cv: ChainValidation::Pass, ..Default::default() }, Results { i: highest });
            let mut output = ArcOutput::default().with_result(broken());
            if highest > 0 {
                output = output.with_set(Set {
                    signature: Header::new(b"", b"", &sig),
                    seal: Header::new(b"", b"", &prev_seal),
                    results: Header::new(b"", b"", &prev_results),
                });
            }
            let set = sealer.seal(msg, &results, &output).map_err(err)?;
            let text = set.to_header();
            let ams_and_aar = text
                .find("ARC-Message-Signature:")
                .and_then(|at| text.get(at..))
                .ok_or_else(|| anyhow::anyhow!("unexpected ARC set from mail-auth"))?;
            let head = format!(
                "ARC-Seal: i={}; a={}; d={domain}; s={selector}; cv=fail; t={};",
                highest + 1,
                algorithm_tag(key.algorithm()),
                set.signature.t
            );
            let mut signed = Vec::new();
            for (name, value) in split_fields(ams_and_aar).into_iter().rev() {
                relaxed(name, value, &mut signed);
                signed.extend_from_slice(b"\r\n");
            }
            relaxed("ARC-Seal", &format!("{} b=", &head["ARC-Seal:".len()..]), &mut signed);
            let b = STANDARD.encode(key.sign(&signed)?);
            format!("{head}\r\n\tb={}\r\n{ams_and_aar}", fold_base64(&b))
        }
    };
    Ok(fold_results(&fields))
}

fn algorithm_tag(a: Algorithm) -> &'static str {
    match a {
        Algorithm::Ed25519Sha256 => "ed25519-sha256",
        Algorithm::RsaSha1 => "rsa-sha1",
        Algorithm::RsaSha256 => "rsa-sha256",
    }
}

/// The Authentication-Results value on one line, whitespace runs made
/// single spaces: mail-auth writes it into the seal's input unchanged,
/// which must equal its relaxed canonical form.
fn one_line(value: &str) -> anyhow::Result<String> {
    if value.chars().any(|c| c.is_control() && !matches!(c, '\r' | '\n' | '\t')) {
        anyhow::bail!("Authentication-Results value has control characters");
    }
    let line = value.split_ascii_whitespace().collect::<Vec<_>>().join(" ");
    match line.split_once(';') {
        Some((id, _)) if !id.trim().is_empty() => Ok(line),
        None if !line.is_empty() => Ok(line),
        _ => anyhow::bail!("Authentication-Results value has no authserv-id"),
    }
}

/// Splits `Name: value\r\n...` text into (name, value) fields.
fn split_fields(text: &str) -> Vec<(&str, &str)> {
    let mut fields = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (at, _) in text.match_indices("\r\n") {
        let next = bytes.get(at + 2).copied();
        if next != Some(b' ') && next != Some(b'\t') {
            if let Some((name, value)) = text.get(start..at).and_then(|f| f.split_once(':')) {
                fields.push((name, value));
            }
            start = at + 2;
        }
    }
    fields
}

/// RFC 6376 §3.4.2 relaxed header canonicalization, without the CRLF.
fn relaxed(name: &str, value: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(name.trim().to_ascii_lowercase().as_bytes());
    out.push(b':');
    out.extend_from_slice(value.split_ascii_whitespace().collect::<Vec<_>>().join(" ").as_bytes());
}

fn fold_base64(b: &str) -> String {
    b.as_bytes().chunks(72).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("\r\n\t")
}

/// Folds the long one-line ARC-Authentication-Results field at spaces.
/// Safe after signing: the seal uses relaxed canonicalization, to which a
/// fold is the same as a space.
fn fold_results(fields: &str) -> String {
    let mut out = String::with_capacity(fields.len() + 64);
    for line in fields.split_inclusive("\r\n") {
        if line.len() <= 78 || !line.starts_with("ARC-Authentication-Results:") {
            out.push_str(line);
            continue;
        }
        let mut width = 0;
        for (k, word) in line.trim_end_matches("\r\n").split(' ').enumerate() {
            if k > 0 {
                if width + 1 + word.len() > 76 {
                    out.push_str("\r\n\t");
                    width = 1;
                } else {
                    out.push(' ');
                    width += 1;
                }
            }
            out.push_str(word);
            width += word.len();
        }
        out.push_str("\r\n");
    }
    out
}
