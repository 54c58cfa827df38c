//! DKIM verification (RFC 6376, RFC 8463 Ed25519, RFC 8301) on top of
//! mail-auth's `verify_dkim`, with mailgate's own rules on top of
//! cryptographic validity. One [`DkimCheck`] per evaluated signature.
//!
//! May import: `mail-auth`, `checks::body`, `dns` (the CNAME chain check).
//! Never the spool or anything downstream of it.
//!
//! Two ways in: [`verify`]/[`verify_cached`] take a message parsed whole;
//! [`verify_streamed`] one parsed from its header block alone, with the
//! body hashes and lengths of its streamed body (`checks::body`).
//!
//! Result words (RFC 8601 §2.7.1) and what gives them:
//! - `pass`: the signature verifies, and none of the rules below objects.
//! - `fail`: the body hash or the signature does not verify (mail-auth
//!   calls a body-hash mismatch "neutral"; RFC 6376 §6.1.3 makes it a
//!   failure), `i=` is outside `d=` or the key's `t=s` forbids it, or the
//!   key type does not fit `a=`.
//! - `policy`: cryptographically fine (or not checkable), but not
//!   acceptable here:
//!   - `a=rsa-sha1` (RFC 8301 §3.1: never valid);
//!   - an RSA key under [`MIN_RSA_BITS`] (RFC 8301 §3.2: never valid;
//!     ring refuses to verify with such keys, so these arrive as failures
//!     and are reported as `policy` with the key size);
//!   - `l=` that leaves body content unsigned (content appended after
//!     signing), or an `l=` longer than the body. When the message was
//!     parsed strictly (`AuthenticatedMessage::parse`), mail-auth rejects
//!     every `l=` signature unverified; those are `policy` too;
//!   - a duplicated RFC 5322 singleton field ([`SINGLETON_FIELDS`]) that
//!     occurs more often in the message than in the signature's `h=`, so
//!     at least one copy is unsigned (a second `From:` or `Subject:`
//!     prepended above a signature). Properly oversigned signatures, as
//!     mailgate's signer makes, already fail the cryptography then;
//!   - an expired signature (`x=` in the past).
//! - `neutral`: the `DKIM-Signature` field does not parse (syntax error,
//!   unknown version or algorithm): RFC 8601 says neutral for these.
//! - `permerror`: no key record (NXDOMAIN, no TXT, or no TXT that parses as
//!   a key), or the key is revoked (`p=` empty): RFC 6376 §6.1.2 PERMFAIL;
//!   and `h=` without From (§6.1.1 PERMFAIL; mail-auth does not check it,
//!   and we skip the key lookup).
//! - `temperror`: the key lookup failed for a transient reason (DNS
//!   timeout, SERVFAIL), or the key name is a CNAME loop or too long a
//!   CNAME chain (as for SPF and DMARC: the zone is broken now).
//!
//! A key design decision: `output`, the value DMARC and mail-auth's
//! Authentication-Results builder see, is rebuilt from our verdict, so it is
//! a pass exactly when `result` is [`DkimVerdict::Pass`]. Our `policy`
//! becomes a mail-auth `fail` there (mail-auth has no policy result).
//!
//! Body hashes: on the daemon's path ([`verify_streamed`]) they come from
//! `checks::body`, canonicalized by mailgate's own RFC 6376 canonicalizer
//! (`l=` counts canonical octets), because mail-auth 0.13's hasher keeps
//! white-space-only lines at the end of a relaxed body and cuts `l=` on
//! the raw body. [`verify`]/[`verify_cached`] (tests only) keep the
//! hashes mail-auth's whole-message parse computed.
//!
//! At most `max_signatures` `DKIM-Signature` fields are evaluated: the
//! first ones in message order (topmost, i.e. most recently added).
//! Fields beyond the cap are not evaluated and not reported, so a message
//! carrying hundreds of signatures costs no more than one carrying ten and
//! cannot inflate the Authentication-Results header. Compare
//! [`signature_fields`] with the cap to log what was dropped.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_auth::common::crypto::Algorithm;
use mail_auth::common::verify::VerifySignature;
use mail_auth::dkim::{DkimError, Signature};
use mail_auth::{AuthenticatedMessage, DkimOutput, DkimResult, DnsError, Error, MessageAuthenticator, Parameters, ResolverCache, Txt};

use super::body::{self, BodyDigest};

/// Signatures evaluated per message unless the caller says otherwise.
pub const DEFAULT_MAX_SIGNATURES: usize = 10;

/// RFC 8301 §3.2: RSA keys under this many bits never verify.
pub const MIN_RSA_BITS: usize = 1024;

/// RFC 5322 §3.6 fields that may occur at most once.
pub const SINGLETON_FIELDS: &[&str] =
    &["from", "sender", "reply-to", "to", "cc", "bcc", "message-id", "in-reply-to", "references", "subject", "date"];

/// The RFC 8601 DKIM result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimVerdict {
    Pass,
    Fail,
    Neutral,
    Policy,
    TempError,
    PermError,
}

impl DkimVerdict {
    /// The RFC 8601 word, lower case.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimVerdict::Pass => "pass",
            DkimVerdict::Fail => "fail",
            DkimVerdict::Neutral => "neutral",
            DkimVerdict::Policy => "policy",
            DkimVerdict::TempError => "temperror",
            DkimVerdict::PermError => "permerror",
        }
    }
}

impl fmt::Display for DkimVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome for one `DKIM-Signature` field.
#[derive(Debug, Clone)]
pub struct DkimCheck<'x> {
    pub result: DkimVerdict,
    /// `d=` (empty if the field does not say).
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// `a=`: "rsa-sha256", "ed25519-sha256", "rsa-sha1", or as written in a
    /// field that did not parse.
    pub algorithm: String,
    /// The start of `b=` (base64), at least 8 characters and long enough to
    /// tell this signature from the others in the message (RFC 6008).
    pub header_b: String,
    /// Why the result is not `pass`, for a comment in
    /// Authentication-Results and the logs.
    pub reason: Option<String>,
    /// What DMARC sees: a pass exactly when `result` is `Pass`.
    pub output: DkimOutput<'x>,
}

/// How many `DKIM-Signature` fields the message has, parsed or not.
pub fn signature_fields(msg: &AuthenticatedMessage<'_>) -> usize {
    msg.dkim_headers.len() + msg.errors.iter().filter(|e| is_dkim_field(e.name)).count()
}

/// Verifies the first `max_signatures` DKIM signatures of `msg`, in message
/// order. Never panics on hostile input.
///
/// Key records come from `auth`'s resolver (and its cache) and are parsed
/// afresh for every message; [`verify_cached`] keeps parsed keys.
pub async fn verify<'x>(auth: &MessageAuthenticator, msg: &'x AuthenticatedMessage<'x>, max_signatures: usize) -> Vec<DkimCheck<'x>> {
    verify_cached(auth, msg, max_signatures, &KeyCache::new(PER_MESSAGE_KEYS)).await
}

/// As [`verify`], with parsed key records kept in `keys` (shared across
/// messages, TTLs honoured): a busy server saves the resolver round and
/// the key parsing per signature.
pub async fn verify_cached<'x>(
    auth: &MessageAuthenticator,
    msg: &'x AuthenticatedMessage<'x>,
    max_signatures: usize,
    keys: &KeyCache,
) -> Vec<DkimCheck<'x>> {
    verify_with(auth, msg, BodyView::Whole, max_signatures, keys, None).await
}

/// As [`verify_cached`], for a message parsed from its header block alone
/// whose body was streamed: `msg.body_hashes` come from `digest`
/// ([`BodyDigest::apply`]), and the `l=` rules read the body's lengths
/// from `digest` instead of `msg.raw_body()`.
pub async fn verify_streamed<'x>(
    auth: &MessageAuthenticator,
    msg: &'x AuthenticatedMessage<'x>,
    digest: &BodyDigest,
    max_signatures: usize,
    keys: &KeyCache,
) -> Vec<DkimCheck<'x>> {
    verify_with(auth, msg, BodyView::Streamed(digest), max_signatures, keys, None).await
}

/// As [`verify_streamed`], giving up on key lookups at `deadline`: every
/// signature still waiting for its key is then a `temperror`.
pub async fn verify_streamed_until<'x>(
    auth: &MessageAuthenticator,
    msg: &'x AuthenticatedMessage<'x>,
    digest: &BodyDigest,
    max_signatures: usize,
    keys: &KeyCache,
    deadline: tokio::time::Instant,
) -> Vec<DkimCheck<'x>> {
    verify_with(auth, msg, BodyView::Streamed(digest), max_signatures, keys, Some(deadline)).await
}

/// Where the `l=` rules find the body.
#[derive(Clone, Copy)]
enum BodyView<'a> {
    /// `msg` was parsed from the whole message.
    Whole,
    /// `msg` was parsed from the header block; the body was streamed.
    Streamed(&'a BodyDigest),
}

async fn verify_with<'x>(
    auth: &MessageAuthenticator,
    msg: &'x AuthenticatedMessage<'x>,
    body: BodyView<'_>,
    max_signatures: usize,
    keys: &KeyCache,
    deadline: Option<tokio::time::Instant>,
) -> Vec<DkimCheck<'x>> {
    let selected = select(msg, max_signatures);
    // A signature that does not sign From: is not worth a key lookup.
    let valid: Vec<usize> = selected
        .iter()
        .filter_map(|f| if let Field::Parsed(i) = f { Some(*i) } else { None })
        .filter(|i| msg.dkim_headers.get(*i).is_some_and(|h| signs_from(&h.header)))
        .collect();
    let outcomes = match deadline {
        None => verify_parsed(auth, msg, &valid, keys).await,
        Some(at) => match tokio::time::timeout_at(at, verify_parsed(auth, msg, &valid, keys)).await {
            Ok(outcomes) => outcomes,
            Err(_) => {
                let late = || DkimResult::TempError(Error::Dns(DnsError::Resolver("no key before the check deadline".into())));
                valid.iter().map(|i| (*i, (late(), None, None))).collect()
            }
        },
    };

    let b_values: Vec<String> = selected.iter().map(|f| full_b(msg, *f)).collect();
    let mut checks = Vec::with_capacity(selected.len());
    for (n, field) in selected.iter().enumerate() {
        let header_b = short_b(&b_values, n);
        let check = match *field {
            Field::Parsed(i) => {
                let Some(header) = msg.dkim_headers.get(i) else { continue };
                let (result, report, key_bits) = outcomes.get(&i).cloned().unwrap_or((DkimResult::None, None, None));
                judge(msg, body, &header.header, result, report, key_bits, header_b)
            }
            Field::Malformed(j) => {
                let Some(header) = msg.errors.get(j) else { continue };
                malformed(header.value, &header.header, header_b)
            }
        };
        checks.push(check);
    }
    checks
}

#[derive(Debug, Clone, Copy)]
enum Field {
    /// Index into `msg.dkim_headers`.
    Parsed(usize),
    /// Index into `msg.errors`.
    Malformed(usize),
}

fn is_dkim_field(name: &[u8]) -> bool {
    name.trim_ascii().eq_ignore_ascii_case(b"DKIM-Signature")
}

/// The first `max` DKIM-Signature fields, in message order.
fn select(msg: &AuthenticatedMessage<'_>, max: usize) -> Vec<Field> {
    let raw = msg.raw_message.as_ptr_range();
    // Fields outside raw_message (prepended headers) come first.
    let offset = |field: &[u8]| {
        let p = field.as_ptr();
        if raw.contains(&p) { p as usize - raw.start as usize + 1 } else { 0 }
    };
    let mut fields: Vec<(usize, Field)> = msg.dkim_headers.iter().enumerate().map(|(i, h)| (offset(h.value), Field::Parsed(i))).collect();
    for (j, e) in msg.errors.iter().enumerate() {
        if is_dkim_field(e.name) {
            fields.push((offset(e.value), Field::Malformed(j)));
        }
    }
    fields.sort_by_key(|(o, _)| *o);
    fields.into_iter().take(max).map(|(_, f)| f).collect()
}

/// Per `msg.dkim_headers` index: mail-auth's result, its failure-report
/// address, and the RSA key size if a key was fetched.
type Outcomes = HashMap<usize, (DkimResult, Option<String>, Option<usize>)>;

/// Runs mail-auth on the selected parsed signatures. mail-auth verifies
/// every signature it is given, so over the cap it gets a trimmed copy.
async fn verify_parsed(auth: &MessageAuthenticator, msg: &AuthenticatedMessage<'_>, valid: &[usize], keys: &KeyCache) -> Outcomes {
    let mut outcomes = Outcomes::new();
    if valid.is_empty() {
        return outcomes;
    }
    let trimmed;
    let target: &AuthenticatedMessage<'_> = if valid.len() == msg.dkim_headers.len() {
        msg
    } else {
        let mut copy = msg.clone();
        copy.dkim_headers = valid.iter().filter_map(|i| msg.dkim_headers.get(*i).cloned()).collect();
        copy.errors.clear();
        trimmed = copy;
        &trimmed
    };
    let outputs = auth.verify_dkim(Parameters::new(target).with_txt_cache(keys)).await;
    // Signatures whose key was not found: is the key name a broken chain?
    let mut no_key: Vec<(usize, String)> = Vec::new();
    for output in &outputs {
        // Outputs without a signature are mail-auth's reports of
        // unparsable fields, which `malformed` handles.
        let Some(sig) = output.signature() else { continue };
        let Some(pos) = target.dkim_headers.iter().position(|h| std::ptr::eq(&h.header, sig)) else { continue };
        let Some(&index) = valid.get(pos) else { continue };
        let bits = keys.rsa_bits(&sig.domain_key());
        if matches!(output.result(), DkimResult::PermError(Error::Dns(DnsError::RecordNotFound(_)))) {
            no_key.push((index, sig.domain_key()));
        }
        outcomes.insert(index, (output.result().clone(), output.failure_report_addr().map(str::to_string), bits));
    }
    for (index, key) in no_key {
        if key_name_is_broken_chain(auth, &key).await {
            tracing::debug!(%key, "DKIM key name is a CNAME loop or too long a chain: temperror");
            let e = Error::Dns(DnsError::Resolver("the key name is a CNAME loop or too long a CNAME chain".into()));
            outcomes.insert(index, (DkimResult::TempError(e), None, None));
        }
    }
    outcomes
}

/// hickory reports a CNAME loop (or a chain over the limit) at a key name
/// as "no records", which mail-auth makes "no key" (permerror); like the
/// SPF and DMARC lookups, that is a temperror (`crate::dns::absence`).
/// The TXT lookup is answered from hickory's cache: mail-auth just asked.
async fn key_name_is_broken_chain(auth: &MessageAuthenticator, key: &str) -> bool {
    let Ok(name) = hickory_resolver::proto::rr::Name::from_str_relaxed(key) else { return false };
    let err = match auth.resolver().txt_lookup(name.clone()).await {
        Ok(_) => return false,
        Err(e) => e,
    };
    match crate::dns::no_records(&err) {
        Some(no) => crate::dns::absence(auth.resolver(), &name, no).await == crate::dns::Absence::BrokenChain,
        None => false,
    }
}

/// Applies our rules to mail-auth's result for one parsed signature.
#[allow(clippy::too_many_arguments)]
fn judge<'x>(
    msg: &AuthenticatedMessage<'_>,
    body: BodyView<'_>,
    sig: &'x Signature,
    result: DkimResult,
    report: Option<String>,
    key_bits: Option<usize>,
    header_b: String,
) -> DkimCheck<'x> {
    use DkimVerdict::*;
    let is_rsa = matches!(sig.a, Algorithm::RsaSha1 | Algorithm::RsaSha256);
    // 0: the key did not parse as RSA; ring rejects it anyway.
    let small_key = key_bits.filter(|bits| is_rsa && *bits > 0 && *bits < MIN_RSA_BITS);
    let (verdict, reason, err): (DkimVerdict, Option<String>, Option<Error>) = match result {
        _ if !signs_from(sig) => (PermError, Some("From field not signed (RFC 6376 §6.1.1)".into()), Some(Error::MissingParameters)),
        DkimResult::Pass => match pass_objection(msg, body, sig, small_key) {
            Some((reason, err)) => (Policy, Some(reason), Some(err)),
            None => (Pass, None, None),
        },
        DkimResult::Fail(Error::Crypto(e)) if small_key.is_some() => {
            let bits = small_key.unwrap_or_default();
            (Policy, Some(format!("RSA key of {bits} bits, under the {MIN_RSA_BITS}-bit minimum (RFC 8301)")), Some(Error::Crypto(e)))
        }
        DkimResult::Fail(e) => (Fail, Some(describe(&e)), Some(e)),
        DkimResult::Neutral(Error::Dkim(DkimError::FailedBodyHashMatch)) => {
            (Fail, Some("body hash did not verify".into()), Some(Error::Dkim(DkimError::FailedBodyHashMatch)))
        }
        DkimResult::Neutral(Error::Dkim(DkimError::SignatureExpired)) => {
            (Policy, Some(format!("signature expired (x={})", sig.x)), Some(Error::Dkim(DkimError::SignatureExpired)))
        }
        DkimResult::Neutral(e) => (Neutral, Some(describe(&e)), Some(e)),
        DkimResult::PermError(e) => (PermError, Some(describe(&e)), Some(e)),
        DkimResult::TempError(e) => (TempError, Some(describe(&e)), Some(e)),
        DkimResult::None => (Neutral, Some("not evaluated".into()), Some(Error::MissingParameters)),
    };
    let mut output = match (verdict, err) {
        (Pass, _) => {
            let out = DkimOutput::pass();
            if is_atps_pass(msg, sig) { out.with_atps() } else { out }
        }
        (Neutral, Some(e)) => DkimOutput::neutral(e),
        (PermError, Some(e)) => DkimOutput::perm_err(e),
        (TempError, Some(e)) => DkimOutput::temp_err(e),
        (_, e) => DkimOutput::fail(e.unwrap_or(Error::MissingParameters)),
    }
    .with_signature(sig);
    if let Some(report) = report {
        output = output.with_report(report);
    }
    DkimCheck {
        result: verdict,
        domain: sig.d.clone(),
        selector: sig.s.clone(),
        algorithm: algorithm_name(sig.a).into(),
        header_b,
        reason,
        output,
    }
}

/// RFC 6376 §5.4: From is always signed; §6.1.1: ignore signatures that
/// do not (mail-auth 0.13 does not check).
fn signs_from(sig: &Signature) -> bool {
    sig.h.iter().any(|h| h.trim().eq_ignore_ascii_case("from"))
}

/// Why a cryptographically valid signature must still not pass, with the
/// error mail-auth's `fail` output carries.
fn pass_objection(
    msg: &AuthenticatedMessage<'_>,
    body: BodyView<'_>,
    sig: &Signature,
    small_key: Option<usize>,
) -> Option<(String, Error)> {
    if sig.a == Algorithm::RsaSha1 {
        return Some(("rsa-sha1 is not accepted (RFC 8301)".into(), Error::Dkim(DkimError::UnsupportedAlgorithm)));
    }
    if let Some(bits) = small_key {
        let reason = format!("RSA key of {bits} bits, under the {MIN_RSA_BITS}-bit minimum (RFC 8301)");
        return Some((reason, Error::Dkim(DkimError::UnsupportedKeyType)));
    }
    if sig.l > 0 {
        // The canonical body length in full and as hashed for l= (RFC 6376
        // §3.4.5 counts canonical octets).
        let (full, signed) = match body {
            BodyView::Whole => {
                let raw = msg.raw_body();
                (Some(body::canonical_len(sig.cb, raw, 0)), Some(body::canonical_len(sig.cb, raw, sig.l)))
            }
            BodyView::Streamed(d) => (d.canonical_len(sig.cb, 0), d.canonical_len(sig.cb, sig.l)),
        };
        let (Some(full), Some(signed)) = (full, signed) else {
            return Some((format!("l={}: the body was not measured", sig.l), Error::Dkim(DkimError::SignatureLength)));
        };
        if sig.l > full {
            let reason = format!("l={} is longer than the {full}-byte canonical body", sig.l);
            return Some((reason, Error::Dkim(DkimError::SignatureLength)));
        }
        let unsigned = full.saturating_sub(signed);
        if unsigned > 0 {
            return Some((format!("l={} leaves {unsigned} bytes of the body unsigned", sig.l), Error::Dkim(DkimError::SignatureLength)));
        }
    }
    if let Some(reason) = unsigned_duplicate(msg, sig) {
        return Some((reason, Error::NotAligned));
    }
    None
}

/// A singleton field present more often than `h=` signs it.
fn unsigned_duplicate(msg: &AuthenticatedMessage<'_>, sig: &Signature) -> Option<String> {
    let mut present = [0usize; SINGLETON_FIELDS.len()];
    for (name, _) in &msg.headers {
        let name = name.trim_ascii();
        if let Some(k) = SINGLETON_FIELDS.iter().position(|s| name.eq_ignore_ascii_case(s.as_bytes())) {
            present[k] += 1;
        }
    }
    for (k, field) in SINGLETON_FIELDS.iter().enumerate() {
        if present[k] < 2 {
            continue;
        }
        let signed = sig.h.iter().filter(|h| h.trim().eq_ignore_ascii_case(field)).count();
        if signed < present[k] {
            return Some(format!("{} {field} fields in the message, {signed} signed: an unsigned copy", present[k]));
        }
    }
    None
}

/// mail-auth's ATPS (RFC 6541) pass condition, which its output records
/// and ours must keep.
fn is_atps_pass(msg: &AuthenticatedMessage<'_>, sig: &Signature) -> bool {
    sig.atps.as_ref().is_some_and(|atps| msg.from.iter().any(|f| f.rsplit_once('@').is_some_and(|(_, d)| d == atps)))
}

fn describe(e: &Error) -> String {
    match e {
        Error::Dns(DnsError::RecordNotFound(code)) => format!("no key for signature ({code})"),
        Error::Dns(DnsError::InvalidRecordType) => "no usable key record".into(),
        Error::Dns(DnsError::Resolver(e)) => format!("key lookup failed: {e}"),
        Error::Dkim(DkimError::RevokedPublicKey) => "key revoked (empty p=)".into(),
        Error::Dkim(DkimError::FailedAuidMatch) => "i= is not within d= or the key forbids subdomains".into(),
        Error::Crypto(mail_auth::common::crypto::CryptoError::IncompatibleAlgorithms) => "key type does not match a=".into(),
        Error::Crypto(_) => "signature did not verify".into(),
        other => other.to_string(),
    }
}

/// A DKIM-Signature field that did not parse.
fn malformed<'x>(value: &[u8], err: &Error, header_b: String) -> DkimCheck<'x> {
    let tags = Tags(String::from_utf8_lossy(value).into_owned());
    let (result, reason) = match err {
        Error::Dkim(DkimError::SignatureLength) => {
            (DkimVerdict::Policy, "l= (body length limit) is not accepted: signature not verified".to_string())
        }
        e => (DkimVerdict::Neutral, format!("malformed signature: {e}")),
    };
    let output = if result == DkimVerdict::Policy { DkimOutput::fail(err.clone()) } else { DkimOutput::neutral(err.clone()) };
    DkimCheck {
        result,
        domain: tags.get("d").unwrap_or_default(),
        selector: tags.get("s").unwrap_or_default(),
        algorithm: tags.get("a").unwrap_or_default(),
        header_b,
        reason: Some(reason),
        output,
    }
}

/// A lenient `tag=value;` reader for fields mail-auth could not parse.
struct Tags(String);

impl Tags {
    fn get(&self, tag: &str) -> Option<String> {
        self.0.split(';').find_map(|item| {
            let (t, v) = item.split_once('=')?;
            (t.trim() == tag).then(|| v.chars().filter(|c| !c.is_whitespace()).take(255).collect())
        })
    }
}

fn full_b(msg: &AuthenticatedMessage<'_>, field: Field) -> String {
    match field {
        Field::Parsed(i) => msg.dkim_headers.get(i).map(|h| STANDARD.encode(&h.header.b)).unwrap_or_default(),
        Field::Malformed(j) => {
            msg.errors.get(j).and_then(|h| Tags(String::from_utf8_lossy(h.value).into_owned()).get("b")).unwrap_or_default()
        }
    }
}

/// At least 8 characters of `b=`, more while another signature shares them.
fn short_b(all: &[String], n: usize) -> String {
    let Some(mine) = all.get(n) else { return String::new() };
    let mut len = 8.min(mine.len());
    while len < mine.len() && all.iter().enumerate().any(|(k, other)| k != n && other.get(..len) == mine.get(..len)) {
        len += 1;
    }
    mine.get(..len).unwrap_or(mine).to_string()
}

fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RsaSha1 => "rsa-sha1",
        Algorithm::RsaSha256 => "rsa-sha256",
        Algorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

/// Enough for the signatures of one message ([`DEFAULT_MAX_SIGNATURES`]
/// plus report-address records).
const PER_MESSAGE_KEYS: usize = 2 * DEFAULT_MAX_SIGNATURES;

/// Parsed `_domainkey` records as mail-auth looked them up, until their
/// DNS TTL runs out. Besides sparing lookups, it lets us read the RSA key
/// size afterwards (RFC 8301) without a second lookup. When full, expired
/// entries go first, then everything (a crude bound, not an LRU).
pub struct KeyCache {
    entries: Mutex<HashMap<Box<str>, (Txt, Instant)>>,
    capacity: usize,
}

impl KeyCache {
    pub fn new(capacity: usize) -> KeyCache {
        KeyCache { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, (Txt, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rsa_bits(&self, name: &str) -> Option<usize> {
        match self.lock().get(name)? {
            (Txt::DomainKey(key), _) => Some(key.p.public_key_bits()),
            _ => None,
        }
    }
}

impl ResolverCache<Box<str>, Txt> for KeyCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut entries = self.lock();
        match entries.get(name) {
            Some((value, until)) if *until > Instant::now() => Some(value.clone()),
            Some(_) => {
                entries.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().remove(name).map(|(value, _)| value)
    }

    fn insert(&self, key: Box<str>, value: Txt, valid_until: Instant) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, valid_until));
    }
}

#[cfg(test)]
mod tests;
