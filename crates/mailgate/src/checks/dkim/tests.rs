use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use mailgate_core::dkim::{self as core_dkim, Canon, Params};
use mailgate_testkit::dns::{DnsServer, Zone};

use super::*;
use crate::config::{DkimSettings, DomainConfig};
use crate::sign::key::DkimKey;
use crate::sign::{OVERSIGNED, SIGNED_HEADERS, Signer, store};

fn conformance(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/dkim/rfc8463").join(name)
}

fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/checks/dkim/testdata").join(name)).unwrap()
}

/// `NAME VALUE` lines, as in dns-records.txt.
fn zone_from(records: &str) -> Zone {
    records.lines().filter_map(|l| l.split_once(' ')).fold(Zone::new(), |z, (name, value)| z.txt(name, value))
}

fn authenticator(dns: &DnsServer, timeout: Duration) -> MessageAuthenticator {
    let lookup = crate::dns::Lookup { attempts: 1, timeout, tcp: true };
    MessageAuthenticator(crate::dns::resolver_with(Some(&[dns.addr()]), lookup).expect("resolver"))
}

/// A DkimCheck without the borrow, for asserting on.
#[derive(Debug, Clone)]
struct Seen {
    result: DkimVerdict,
    domain: String,
    selector: String,
    algorithm: String,
    header_b: String,
    reason: Option<String>,
}

/// Verifies `raw` parsed whole, and again as the gateway does (header
/// block parsed alone, body streamed): both must say the same.
async fn run_with(auth: &MessageAuthenticator, raw: &[u8], strict: bool, max: usize) -> Vec<Seen> {
    let whole = run_whole(auth, raw, strict, max).await;
    let shared = std::sync::Arc::new(raw.to_vec());
    let (msg, digest) = crate::checks::body::parse_streamed(&shared, strict, |_| Vec::new()).unwrap();
    let keys = KeyCache::new(PER_MESSAGE_KEYS);
    let streamed: Vec<(DkimVerdict, Option<String>)> =
        verify_streamed(auth, &msg, &digest, max, &keys).await.into_iter().map(|c| (c.result, c.reason)).collect();
    let seen: Vec<(DkimVerdict, Option<String>)> = whole.iter().map(|c| (c.result, c.reason.clone())).collect();
    assert_eq!(streamed, seen, "streamed body differs from the whole message");
    whole
}

async fn run_whole(auth: &MessageAuthenticator, raw: &[u8], strict: bool, max: usize) -> Vec<Seen> {
    let msg = AuthenticatedMessage::parse_with_opts(raw, None, strict).unwrap();
    let checks = verify(auth, &msg, max).await;
    for c in &checks {
        println!(
            "dkim={} d={} s={} a={} header.b={} ({})",
            c.result,
            c.domain,
            c.selector,
            c.algorithm,
            c.header_b,
            c.reason.as_deref().unwrap_or("-")
        );
        // The DMARC-facing output passes exactly when we say pass.
        assert_eq!(c.output.result() == &DkimResult::Pass, c.result == DkimVerdict::Pass, "{c:?}");
        assert_eq!(c.reason.is_none(), c.result == DkimVerdict::Pass, "{c:?}");
    }
    checks
        .into_iter()
        .map(|c| Seen {
            result: c.result,
            domain: c.domain,
            selector: c.selector,
            algorithm: c.algorithm,
            header_b: c.header_b,
            reason: c.reason,
        })
        .collect()
}

async fn run(auth: &MessageAuthenticator, raw: &[u8]) -> Vec<Seen> {
    run_with(auth, raw, true, DEFAULT_MAX_SIGNATURES).await
}

fn results(seen: &[Seen]) -> Vec<DkimVerdict> {
    seen.iter().map(|s| s.result).collect()
}

fn reason(seen: &Seen) -> &str {
    seen.reason.as_deref().unwrap_or("")
}

fn prepend(header: &[u8], message: &[u8]) -> Vec<u8> {
    [header, message].concat()
}

/// Puts `extra` right after the DKIM-Signature fields, above the rest.
fn insert_after_signatures(signed: &[u8], extra: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(signed);
    let at = text.find("\r\nFrom:").unwrap() + 2;
    [&signed[..at], extra, &signed[at..]].concat()
}

const MESSAGE: &[u8] = b"From: Alice <alice@example.test>\r\nTo: bob@far.test\r\nSubject: Lunch\r\n\
Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <lunch-1@example.test>\r\n\r\nShall we meet at noon?\r\n\r\nAlice\r\n";

// ---------------------------------------------------------------- RFC 8463

#[tokio::test]
async fn rfc8463_example_both_signatures_pass_and_a_changed_body_fails_both() {
    let dns = DnsServer::start(zone_from(&std::fs::read_to_string(conformance("dns-records.txt")).unwrap()));
    let auth = authenticator(&dns, Duration::from_secs(2));
    let signed = std::fs::read(conformance("signed.eml")).unwrap();

    let seen = run(&auth, &signed).await;
    assert_eq!(results(&seen), [DkimVerdict::Pass, DkimVerdict::Pass], "{seen:?}");
    assert_eq!((seen[0].algorithm.as_str(), seen[0].selector.as_str()), ("ed25519-sha256", "brisbane"));
    assert_eq!((seen[1].algorithm.as_str(), seen[1].selector.as_str()), ("rsa-sha256", "test"));
    assert!(seen.iter().all(|s| s.domain == "football.example.com"));
    assert_eq!(seen[0].header_b, "/gCrinpc");
    assert_eq!(seen[1].header_b, "F45dVWDf");

    let mut changed = signed.clone();
    let n = changed.len() - 4; // in "Joe."
    changed[n] ^= 0x20;
    let seen = run(&auth, &changed).await;
    assert_eq!(results(&seen), [DkimVerdict::Fail, DkimVerdict::Fail], "{seen:?}");
    assert!(seen.iter().all(|s| reason(s).contains("body hash")), "{seen:?}");
}

// ---------------------------------------------------------------- mailgate's own signer

struct OwnSigner {
    _dir: tempfile::TempDir,
    signer: Signer,
    records: Zone,
}

/// mailgate's Signer with freshly generated Ed25519 and RSA-2048 keys for
/// example.test, and the records it asks to publish.
fn own_signer() -> &'static OwnSigner {
    static SIGNER: OnceLock<OwnSigner> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let domain = DomainConfig {
            name: mailgate_core::address::Domain::parse("example.test", false).unwrap(),
            deliver: None,
            dkim: DkimSettings {
                sign: true,
                algorithms: vec![core_dkim::Algorithm::Ed25519Sha256, core_dkim::Algorithm::RsaSha256],
                canonicalization: (Canon::Relaxed, Canon::Relaxed),
                headers: None,
                expire: None,
            },
        };
        let signer = Signer::start(dir.path(), &[domain]).unwrap();
        let mut records = Zone::new();
        for info in store::list(dir.path(), "example.test").unwrap() {
            let key = store::load_key(dir.path(), "example.test", &info.selector).unwrap();
            records = records.txt(&format!("{}._domainkey.example.test", info.selector), &key.dns_record());
        }
        OwnSigner { _dir: dir, signer, records }
    })
}

fn own_signed(message: &[u8]) -> Vec<u8> {
    let fields = own_signer().signer.sign_message(message).unwrap().expect("example.test is signed");
    prepend(fields.as_bytes(), message)
}

/// Signs with `key` the way the Signer does, with changes.
fn signed_with(key: &DkimKey, selector: &str, message: &[u8], change: impl FnOnce(&mut Params)) -> (Vec<u8>, String) {
    let mut params = Params {
        algorithm: key.algorithm(),
        domain: "example.test".into(),
        selector: selector.into(),
        header_canon: Canon::Relaxed,
        body_canon: Canon::Relaxed,
        headers: SIGNED_HEADERS.iter().map(|s| s.to_string()).collect(),
        oversign: OVERSIGNED.iter().map(|s| s.to_string()).collect(),
        timestamp: 1_795_000_000,
        expiration: None,
        identity: None,
    };
    change(&mut params);
    let input = core_dkim::prepare_message(message, &params);
    let field = input.finish(&key.sign(&input).unwrap());
    (prepend(field.as_bytes(), message), key.dns_record())
}

#[tokio::test]
async fn own_signer_ed25519_and_rsa2048_pass() {
    let dns = DnsServer::start(own_signer().records.clone());
    let auth = authenticator(&dns, Duration::from_secs(2));
    let seen = run(&auth, &own_signed(MESSAGE)).await;
    assert_eq!(results(&seen), [DkimVerdict::Pass, DkimVerdict::Pass], "{seen:?}");
    let mut algorithms: Vec<&str> = seen.iter().map(|s| s.algorithm.as_str()).collect();
    algorithms.sort();
    assert_eq!(algorithms, ["ed25519-sha256", "rsa-sha256"]);
    assert!(seen.iter().all(|s| s.domain == "example.test" && s.header_b.len() >= 8));
}

#[tokio::test]
async fn own_signer_tampered_body_fails() {
    let dns = DnsServer::start(own_signer().records.clone());
    let auth = authenticator(&dns, Duration::from_secs(2));
    let signed = own_signed(MESSAGE);
    let tampered = String::from_utf8(signed).unwrap().replace("at noon", "at nine").into_bytes();
    let seen = run(&auth, &tampered).await;
    assert_eq!(results(&seen), [DkimVerdict::Fail, DkimVerdict::Fail], "{seen:?}");
}

#[tokio::test]
async fn own_signer_tampered_header_fails() {
    let dns = DnsServer::start(own_signer().records.clone());
    let auth = authenticator(&dns, Duration::from_secs(2));
    let signed = own_signed(MESSAGE);
    let tampered = String::from_utf8(signed).unwrap().replace("Subject: Lunch", "Subject: Lunch!").into_bytes();
    let seen = run(&auth, &tampered).await;
    assert_eq!(results(&seen), [DkimVerdict::Fail, DkimVerdict::Fail], "{seen:?}");
    assert!(seen.iter().all(|s| reason(s).contains("did not verify")), "{seen:?}");
}

/// mailgate oversigns From and Subject, so a prepended copy breaks the
/// signature itself.
#[tokio::test]
async fn prepended_from_or_subject_on_oversigned_signature_fails() {
    let dns = DnsServer::start(own_signer().records.clone());
    let auth = authenticator(&dns, Duration::from_secs(2));
    let signed = own_signed(MESSAGE);
    for extra in [&b"From: Mallory <ceo@example.test>\r\n"[..], b"Subject: Urgent: new bank details\r\n"] {
        let seen = run(&auth, &insert_after_signatures(&signed, extra)).await;
        assert_eq!(results(&seen), [DkimVerdict::Fail, DkimVerdict::Fail], "{seen:?}");
    }
}

/// A signer that does not oversign: the signature still verifies over the
/// original (bottom) copy, and our duplicate rule stops the pass.
#[tokio::test]
async fn prepended_from_or_subject_without_oversigning_is_policy() {
    let (key, _) = DkimKey::generate(core_dkim::Algorithm::Ed25519Sha256, 0).unwrap();
    let (signed, record) = signed_with(&key, "plain", MESSAGE, |p| p.oversign.clear());
    let dns = DnsServer::start(Zone::new().txt("plain._domainkey.example.test", &record));
    let auth = authenticator(&dns, Duration::from_secs(2));
    assert_eq!(results(&run(&auth, &signed).await), [DkimVerdict::Pass]);

    for (extra, field) in [(&b"From: Mallory <ceo@example.test>\r\n"[..], "from"), (b"Subject: Urgent: new bank details\r\n", "subject")] {
        let seen = run(&auth, &insert_after_signatures(&signed, extra)).await;
        assert_eq!(results(&seen), [DkimVerdict::Policy], "{seen:?}");
        assert!(reason(&seen[0]).contains(&format!("2 {field} fields in the message, 1 signed")), "{seen:?}");
    }
    // The same with a signature made by another implementation (dkimpy).
    let dns = DnsServer::start(zone_from(&String::from_utf8(testdata("records.txt")).unwrap()));
    let auth = authenticator(&dns, Duration::from_secs(2));
    let control = testdata("control.eml");
    assert_eq!(results(&run(&auth, &control).await), [DkimVerdict::Pass]);
    let seen = run(&auth, &insert_after_signatures(&control, b"From: Mallory <ceo@fixture.test>\r\n")).await;
    assert_eq!(results(&seen), [DkimVerdict::Policy], "{seen:?}");
}

// ---------------------------------------------------------------- RFC 8301

#[tokio::test]
async fn rsa_keys_under_1024_bits_never_pass() {
    let mut zone = Zone::new();
    let mut messages = Vec::new();
    for bits in [512, 768, 1024] {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).unwrap();
        let pem = rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&key, rsa::pkcs8::LineEnding::LF).unwrap();
        let key = DkimKey::from_pem(&pem).unwrap();
        let selector = format!("rsa{bits}");
        let (signed, record) = signed_with(&key, &selector, MESSAGE, |_| {});
        zone = zone.txt(&format!("{selector}._domainkey.example.test"), &record);
        messages.push((bits, signed));
    }
    let dns = DnsServer::start(zone);
    let auth = authenticator(&dns, Duration::from_secs(2));
    for (bits, signed) in messages {
        let seen = run(&auth, &signed).await;
        if bits < 1024 {
            assert_eq!(results(&seen), [DkimVerdict::Policy], "{bits}: {seen:?}");
            assert!(reason(&seen[0]).contains(&format!("RSA key of {bits} bits")), "{seen:?}");
        } else {
            assert_eq!(results(&seen), [DkimVerdict::Pass], "{bits}: {seen:?}");
        }
    }
}

#[tokio::test]
async fn rsa_sha1_never_passes() {
    let dns = DnsServer::start(zone_from(&String::from_utf8(testdata("records.txt")).unwrap()));
    let auth = authenticator(&dns, Duration::from_secs(2));
    // Same key and message, signed by dkimpy with rsa-sha256: passes.
    assert_eq!(results(&run(&auth, &testdata("control.eml")).await), [DkimVerdict::Pass]);
    let seen = run(&auth, &testdata("sha1.eml")).await;
    assert_eq!(results(&seen), [DkimVerdict::Policy], "{seen:?}");
    assert_eq!(seen[0].algorithm, "rsa-sha1");
    assert!(reason(&seen[0]).contains("rsa-sha1"), "{seen:?}");
}

// ---------------------------------------------------------------- l=

#[tokio::test]
async fn body_length_limit_with_unsigned_tail_is_policy() {
    let dns = DnsServer::start(zone_from(&String::from_utf8(testdata("records.txt")).unwrap()));
    let auth = authenticator(&dns, Duration::from_secs(2));
    let tail = testdata("length-tail.eml");
    let exact = testdata("length-exact.eml");

    // Lenient parse: mail-auth verifies l= signatures; we look at the tail.
    let seen = run_with(&auth, &tail, false, DEFAULT_MAX_SIGNATURES).await;
    assert_eq!(results(&seen), [DkimVerdict::Policy], "{seen:?}");
    assert!(reason(&seen[0]).contains("l=40 leaves"), "{seen:?}");
    let seen = run_with(&auth, &exact, false, DEFAULT_MAX_SIGNATURES).await;
    assert_eq!(results(&seen), [DkimVerdict::Pass], "l= covering the whole body: {seen:?}");

    // Strict parse (AuthenticatedMessage::parse): no l= signature is verified.
    for raw in [&tail, &exact] {
        let seen = run(&auth, raw).await;
        assert_eq!(results(&seen), [DkimVerdict::Policy], "{seen:?}");
        assert_eq!((seen[0].domain.as_str(), seen[0].selector.as_str()), ("fixture.test", "len"));
        assert!(reason(&seen[0]).contains("l="), "{seen:?}");
    }
}

// ---------------------------------------------------------------- keys and DNS

#[tokio::test]
async fn missing_revoked_and_unanswered_keys() {
    let (key, _) = DkimKey::generate(core_dkim::Algorithm::Ed25519Sha256, 0).unwrap();
    let dns = DnsServer::start(
        Zone::new()
            .txt("revoked._domainkey.example.test", "v=DKIM1; k=ed25519; p=")
            .txt("garbage._domainkey.example.test", "v=DKIM1; k=ed25519; p=!!!")
            .timeout("slow._domainkey.example.test")
            .txt("other.example.test", "v=spf1 -all"),
    );
    let auth = authenticator(&dns, Duration::from_millis(300));
    let cases = [
        ("missing", DkimVerdict::PermError, "no key"),
        ("revoked", DkimVerdict::PermError, "revoked"),
        ("garbage", DkimVerdict::PermError, ""),
        ("slow", DkimVerdict::TempError, "key lookup failed"),
    ];
    for (selector, want, why) in cases {
        let (signed, _) = signed_with(&key, selector, MESSAGE, |_| {});
        let seen = run(&auth, &signed).await;
        assert_eq!(results(&seen), [want], "{selector}: {seen:?}");
        assert!(reason(&seen[0]).contains(why), "{selector}: {seen:?}");
    }
}

#[tokio::test]
async fn signature_without_from_is_permerror() {
    let (key, _) = DkimKey::generate(core_dkim::Algorithm::Ed25519Sha256, 0).unwrap();
    let (signed, record) = signed_with(&key, "nofrom", MESSAGE, |p| {
        p.headers = vec!["subject".into(), "to".into()];
        p.oversign.clear();
    });
    let dns = DnsServer::start(Zone::new().txt("nofrom._domainkey.example.test", &record));
    let auth = authenticator(&dns, Duration::from_secs(2));
    let seen = run(&auth, &signed).await;
    assert_eq!(results(&seen), [DkimVerdict::PermError], "{seen:?}");
    assert!(reason(&seen[0]).contains("From field not signed"), "{seen:?}");
}

#[tokio::test]
async fn expired_signature_is_policy() {
    let (key, _) = DkimKey::generate(core_dkim::Algorithm::Ed25519Sha256, 0).unwrap();
    let (signed, record) = signed_with(&key, "old", MESSAGE, |p| {
        p.timestamp = 1_600_000_000;
        p.expiration = Some(1_600_086_400);
    });
    let dns = DnsServer::start(Zone::new().txt("old._domainkey.example.test", &record));
    let auth = authenticator(&dns, Duration::from_secs(2));
    let seen = run(&auth, &signed).await;
    assert_eq!(results(&seen), [DkimVerdict::Policy], "{seen:?}");
    assert!(reason(&seen[0]).contains("expired"), "{seen:?}");
}

// ---------------------------------------------------------------- hostile input

#[tokio::test]
async fn signatures_beyond_the_cap_are_not_evaluated() {
    let dns = DnsServer::start(own_signer().records.clone());
    let auth = authenticator(&dns, Duration::from_secs(2));
    let signed = own_signed(MESSAGE); // two signatures
    let junk = b"DKIM-Signature: v=1; a=rsa-sha256; d=junk.test; s=x; h=from; bh=AAAA; b=\r\n";
    // One junk field on top: it is first in message order.
    let raw = prepend(junk, &signed);
    let seen = run_with(&auth, &raw, true, 2).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].domain, "junk.test");
    assert_eq!(seen[0].result, DkimVerdict::Neutral);
    assert_eq!(seen[1].result, DkimVerdict::Pass);
    assert_eq!(results(&run_with(&auth, &raw, true, 0).await), []);

    // Many copies of a valid signature: only the cap is evaluated.
    let fields = &signed[..signed.len() - MESSAGE.len()];
    let many = prepend(&fields.repeat(20), MESSAGE);
    let msg = AuthenticatedMessage::parse(&many).unwrap();
    assert_eq!(signature_fields(&msg), 40);
    let seen = run(&auth, &many).await;
    assert_eq!(seen.len(), DEFAULT_MAX_SIGNATURES);
    assert!(seen.iter().all(|s| s.result == DkimVerdict::Pass), "{seen:?}");
    // Identical signatures: header.b cannot be told apart, and stays whole.
    assert!(seen[0].header_b.len() > 8);
}

#[tokio::test]
async fn malformed_fields_are_neutral_and_never_panic() {
    let dns = DnsServer::start(Zone::new());
    let auth = authenticator(&dns, Duration::from_millis(300));
    let hostile: &[&[u8]] = &[
        b"DKIM-Signature: v=1; a=rsa-sha256; d=bad.test; s=sel; c=relaxed; h=from; bh=!!!; b=????\r\n",
        b"DKIM-Signature: v=2; a=rsa-sha256; d=v2.test; s=sel; h=from; bh=AAAA; b=AAAA\r\n",
        b"DKIM-Signature: v=1; a=rsa-md5; d=md5.test; s=sel; h=from; bh=AAAA; b=AAAA\r\n",
        b"DKIM-Signature: ;;;=;==;d;s=\r\n",
        b"DKIM-Signature:\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=\xff\xfe.test; s=\xc3\x28; h=from; bh=AAAA; b=AAAA\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=big.test; s=sel; l=99999999999999999999999; h=from; bh=AAAA; b=AAAA\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=x.test; s=sel; x=1; t=2; h=from; bh=AAAA; b=AAAA\r\n",
    ];
    for field in hostile {
        let raw = prepend(field, MESSAGE);
        let seen = run(&auth, &raw).await;
        assert_eq!(seen.len(), 1, "{}: {seen:?}", String::from_utf8_lossy(field));
        assert_ne!(seen[0].result, DkimVerdict::Pass);
    }
    let seen = run(&auth, &prepend(hostile[0], MESSAGE)).await;
    assert_eq!((seen[0].result, seen[0].domain.as_str(), seen[0].selector.as_str()), (DkimVerdict::Neutral, "bad.test", "sel"));
    // No signature at all.
    assert_eq!(results(&run(&auth, MESSAGE).await), []);
}

#[test]
fn header_b_grows_until_unique() {
    let all = ["abcdefghXYZ".to_string(), "abcdefghXYQ".to_string(), "zzzzzzzzzzzz".to_string(), "short".to_string()];
    assert_eq!(short_b(&all, 0), "abcdefghXYZ");
    assert_eq!(short_b(&all, 1), "abcdefghXYQ");
    assert_eq!(short_b(&all, 2), "zzzzzzzz");
    assert_eq!(short_b(&all, 3), "short");
    assert_eq!(short_b(&all, 9), "");
}

#[test]
fn verdict_words_are_rfc8601() {
    let all =
        [DkimVerdict::Pass, DkimVerdict::Fail, DkimVerdict::Neutral, DkimVerdict::Policy, DkimVerdict::TempError, DkimVerdict::PermError];
    let words: Vec<String> = all.iter().map(|v| v.to_string()).collect();
    assert_eq!(words, ["pass", "fail", "neutral", "policy", "temperror", "permerror"]);
}

/// The pipeline runs checks inside spawned tasks.
#[tokio::test]
async fn verify_future_is_send() {
    fn send<T: Send>(_: T) {}
    let (dns, msg) = (DnsServer::start(Zone::new()), AuthenticatedMessage::parse(MESSAGE).unwrap());
    let auth = authenticator(&dns, Duration::from_millis(100));
    send(verify(&auth, &msg, DEFAULT_MAX_SIGNATURES));
}

#[tokio::test]
async fn key_cache_serves_later_messages_without_dns() {
    let dns = DnsServer::start(own_signer().records.clone());
    let auth = authenticator(&dns, Duration::from_millis(300));
    let keys = KeyCache::new(100);
    let signed = own_signed(MESSAGE);
    let msg = AuthenticatedMessage::parse(&signed).unwrap();
    let first: Vec<DkimVerdict> = verify_cached(&auth, &msg, DEFAULT_MAX_SIGNATURES, &keys).await.iter().map(|c| c.result).collect();
    assert_eq!(first, [DkimVerdict::Pass, DkimVerdict::Pass]);
    drop(dns);
    // A fresh resolver (empty cache) whose server is gone: only our cache can answer.
    let gone = DnsServer::start(Zone::new());
    let auth = authenticator(&gone, Duration::from_millis(300));
    let again: Vec<DkimVerdict> = verify_cached(&auth, &msg, DEFAULT_MAX_SIGNATURES, &keys).await.iter().map(|c| c.result).collect();
    assert_eq!(again, [DkimVerdict::Pass, DkimVerdict::Pass]);
    let uncached: Vec<DkimVerdict> = verify(&auth, &msg, DEFAULT_MAX_SIGNATURES).await.iter().map(|c| c.result).collect();
    assert_eq!(uncached, [DkimVerdict::PermError, DkimVerdict::PermError]);
}

#[test]
fn key_cache_is_bounded_and_honours_ttl() {
    let cache = KeyCache::new(2);
    let later = std::time::Instant::now() + Duration::from_secs(60);
    let past = std::time::Instant::now() - Duration::from_secs(1);
    let err = || Txt::Error(Error::ParseError);
    cache.insert("a.".into(), err(), later);
    cache.insert("old.".into(), err(), past);
    assert!(cache.get::<str>("a.").is_some());
    assert!(cache.get::<str>("old.").is_none(), "expired");
    cache.insert("b.".into(), err(), later);
    cache.insert("c.".into(), err(), later);
    assert!(cache.lock().len() <= 2);
    assert!(cache.get::<str>("c.").is_some());
}
