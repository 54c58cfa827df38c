//! Sealing: our own validation and an independent one, dkimpy's, must both
//! accept what [`seal`] writes; a failed chain gets a cv=fail seal over the
//! new set only; a DNS failure is temperror and is never sealed.

use std::io::Write;
use std::time::Duration;

use mail_auth::{AuthenticatedMessage, MessageAuthenticator};
use mailgate_core::dkim::Algorithm;
use mailgate_testkit::dns::{DnsServer, Zone};

use super::{ArcResult, SealingKey, seal, verify};
use crate::sign::key::DkimKey;

const MESSAGE: &str = "From: Alice <alice@origin.test>\r\n\
To: list@lists.test\r\n\
Subject: ARC test\r\n\
Date: Mon, 23 Nov 2026 12:00:00 +0000\r\n\
Message-ID: <arc-test@origin.test>\r\n\
\r\n\
Hello,\r\n\
this is the body.\r\n";

/// A freshly generated key, written as mailgate writes keys and loaded
/// back from the file, with its TXT record.
fn key(algorithm: Algorithm) -> (SealingKey, String) {
    let (_, pem) = DkimKey::generate(algorithm, 2048).expect("key generation");
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(pem.as_bytes()).expect("write key");
    let key = SealingKey::load(file.path()).expect("load key");
    let record = key.dns_record();
    (key, record)
}

struct Hop {
    domain: &'static str,
    selector: &'static str,
    key: SealingKey,
    record: String,
}

fn hop(domain: &'static str, selector: &'static str, algorithm: Algorithm) -> Hop {
    let (key, record) = key(algorithm);
    Hop { domain, selector, key, record }
}

impl Hop {
    fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }
}

fn zone(hops: &[&Hop]) -> Zone {
    hops.iter().fold(Zone::new(), |z, h| z.txt(&h.dns_name(), &h.record))
}

fn authenticator(dns: &DnsServer) -> MessageAuthenticator {
    super::suite::authenticator(dns)
}

/// Verifies `message`, seals it as `hop`, and returns the sealed message.
async fn relay(auth: &MessageAuthenticator, hop: &Hop, message: &str, expect: ArcResult) -> String {
    let msg = AuthenticatedMessage::parse(message.as_bytes()).expect("message parses");
    let outcome = verify(auth, &msg).await;
    assert_eq!(outcome.result, expect, "before sealing at {}: {:?}", hop.domain, outcome.reason);
    let ar = format!("mx.{}; spf=pass smtp.mailfrom=alice@origin.test;\r\n\tdkim=none; arc={}", hop.domain, outcome.result);
    let fields = seal(&hop.key, hop.domain, hop.selector, &msg, &outcome, &ar).expect("seal");
    for line in fields.split("\r\n") {
        assert!(line.len() <= 998, "line too long: {line}");
    }
    assert!(fields.ends_with("\r\n"));
    let names: Vec<&str> =
        fields.split("\r\n").filter(|l| !l.is_empty() && !l.starts_with([' ', '\t'])).filter_map(|l| l.split(':').next()).collect();
    assert_eq!(names, ["ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results"]);
    format!("{fields}{message}")
}

/// As [`relay`], the way the gateway does it: the header block parsed
/// alone, the body hashes streamed (with the sealing lane when `seal_lane`).
async fn relay_streamed(auth: &MessageAuthenticator, hop: &Hop, message: &str, expect: ArcResult, seal_lane: bool) -> String {
    let whole = std::sync::Arc::new(message.as_bytes().to_vec());
    let (msg, _) = crate::checks::body::parse_streamed(&whole, true, |m| super::body_lanes(m, seal_lane)).expect("parses");
    let outcome = verify(auth, &msg).await;
    assert_eq!(outcome.result, expect, "before sealing at {}: {:?}", hop.domain, outcome.reason);
    let ar = format!("mx.{}; spf=pass smtp.mailfrom=alice@origin.test; arc={}", hop.domain, outcome.result);
    let fields = seal(&hop.key, hop.domain, hop.selector, &msg, &outcome, &ar).expect("seal");
    format!("{fields}{message}")
}

/// Sealing from the header block and a streamed body gives a chain that
/// we (parsing whole) and dkimpy validate; without the sealing lane the
/// new AMS would hash an empty body, which this shows fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_from_header_block_and_streamed_body() {
    let first = hop("lists.test", "arc1", Algorithm::RsaSha256);
    let second = hop("forwarder.test", "arc2", Algorithm::RsaSha256);
    let dns = DnsServer::start(zone(&[&first, &second]));
    let auth = authenticator(&dns);
    let one = relay_streamed(&auth, &first, MESSAGE, ArcResult::None, true).await;
    let two = relay_streamed(&auth, &second, &one, ArcResult::Pass, true).await;
    let (result, sealers, reason) = verify_text(&auth, &two).await;
    assert_eq!(result, ArcResult::Pass, "{reason:?}\n{two}");
    assert_eq!(sealers, ["lists.test", "forwarder.test"]);
    let (cv, comment) = dkimpy(&two, &[&first, &second]);
    assert_eq!(cv, "pass", "dkimpy: {comment}\n{two}");

    let unhashed = relay_streamed(&auth, &first, MESSAGE, ArcResult::None, false).await;
    assert_eq!(verify_text(&auth, &unhashed).await.0, ArcResult::Fail, "{unhashed}");
}

async fn verify_text(auth: &MessageAuthenticator, message: &str) -> (ArcResult, Vec<String>, Option<String>) {
    let msg = AuthenticatedMessage::parse(message.as_bytes()).expect("message parses");
    let outcome = verify(auth, &msg).await;
    (outcome.result, outcome.sealers, outcome.reason)
}

/// dkimpy's `arc_verify` on `message`, with DNS answered from `hops`:
/// returns its cv ("pass", "fail", "none", or "" for a chain ending in
/// cv=fail) and its comment. Panics when python3 or dkimpy is missing:
/// this cross-check must not pass by being skipped.
fn dkimpy(message: &str, hops: &[&Hop]) -> (String, String) {
    const SCRIPT: &str = r#"
import json, sys
import dkim
records = json.loads(sys.argv[2])
def dnsfunc(name, timeout=5):
    value = records.get(name.decode().rstrip(".").lower())
    return value.encode() if value is not None else None
with open(sys.argv[1], "rb") as f:
    cv, results, comment = dkim.arc_verify(f.read(), dnsfunc=dnsfunc)
print((cv or b"").decode())
print(comment)
"#;
    let records: serde_json::Map<String, serde_json::Value> = hops.iter().map(|h| (h.dns_name(), h.record.clone().into())).collect();
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(message.as_bytes()).expect("write message");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(file.path())
        .arg(serde_json::Value::Object(records).to_string())
        .output()
        .expect("python3 is needed for the dkimpy cross-check (and `pip install dkimpy`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dkimpy failed (is it installed? `pip install dkimpy`): {}", String::from_utf8_lossy(&out.stderr));
    let mut lines = stdout.lines();
    (lines.next().unwrap_or_default().to_string(), lines.collect::<Vec<_>>().join(" "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_new_and_existing_chain() {
    let first = hop("lists.test", "arc1", Algorithm::RsaSha256);
    let second = hop("forwarder.test", "arc2", Algorithm::RsaSha256);
    let third = hop("mx.example.test", "arc3", Algorithm::RsaSha256);
    let dns = DnsServer::start(zone(&[&first, &second, &third]));
    let auth = authenticator(&dns);

    let one = relay(&auth, &first, MESSAGE, ArcResult::None).await;
    assert!(one.starts_with("ARC-Seal: i=1; a=rsa-sha256; s=arc1; d=lists.test; cv=none;"), "{one}");
    let (result, sealers, reason) = verify_text(&auth, &one).await;
    assert_eq!(result, ArcResult::Pass, "{reason:?}\n{one}");
    assert_eq!(sealers, ["lists.test"]);
    assert_eq!(dkimpy(&one, &[&first]).0, "pass", "dkimpy on\n{one}");

    let two = relay(&auth, &second, &one, ArcResult::Pass).await;
    assert!(two.starts_with("ARC-Seal: i=2; a=rsa-sha256; s=arc2; d=forwarder.test; cv=pass;"), "{two}");
    let (result, sealers, reason) = verify_text(&auth, &two).await;
    assert_eq!(result, ArcResult::Pass, "{reason:?}\n{two}");
    assert_eq!(sealers, ["lists.test", "forwarder.test"]);
    let (cv, comment) = dkimpy(&two, &[&first, &second]);
    assert_eq!(cv, "pass", "dkimpy: {comment}\n{two}");

    let three = relay(&auth, &third, &two, ArcResult::Pass).await;
    assert_eq!(verify_text(&auth, &three).await.0, ArcResult::Pass);
    let (cv, comment) = dkimpy(&three, &[&first, &second, &third]);
    assert_eq!(cv, "pass", "dkimpy: {comment}\n{three}");
}

/// Ed25519 seals validate here. dkimpy 1.1.8 knows only rsa-sha256 for
/// ARC (its `ARC_HASH_ALGORITHMS`), and so may other receivers: seal with
/// RSA keys for now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_with_ed25519() {
    let first = hop("lists.test", "arc1", Algorithm::Ed25519Sha256);
    let second = hop("forwarder.test", "arc2", Algorithm::RsaSha256);
    let dns = DnsServer::start(zone(&[&first, &second]));
    let auth = authenticator(&dns);
    let one = relay(&auth, &first, MESSAGE, ArcResult::None).await;
    assert!(one.starts_with("ARC-Seal: i=1; a=ed25519-sha256;"), "{one}");
    let two = relay(&auth, &second, &one, ArcResult::Pass).await;
    let (result, sealers, reason) = verify_text(&auth, &two).await;
    assert_eq!(result, ArcResult::Pass, "{reason:?}");
    assert_eq!(sealers, ["lists.test", "forwarder.test"]);
}

/// dkimpy must also see through a tampered message: the cross-check is
/// only worth something if it can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkimpy_rejects_tampering() {
    let first = hop("lists.test", "arc1", Algorithm::RsaSha256);
    let dns = DnsServer::start(zone(&[&first]));
    let auth = authenticator(&dns);
    let one = relay(&auth, &first, MESSAGE, ArcResult::None).await;
    let tampered = one.replace("this is the body.", "this is another body.");
    assert_eq!(verify_text(&auth, &tampered).await.0, ArcResult::Fail);
    assert_eq!(dkimpy(&tampered, &[&first]).0, "fail");
}

/// RFC 8617 §5.1.2: a hop that finds the chain broken adds i=N+1 with
/// cv=fail, sealing only its own set; after that nobody seals again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_failed_chain() {
    let first = hop("lists.test", "arc1", Algorithm::RsaSha256);
    let second = hop("forwarder.test", "arc2", Algorithm::RsaSha256);
    let dns = DnsServer::start(zone(&[&first, &second]));
    let auth = authenticator(&dns);

    let one = relay(&auth, &first, MESSAGE, ArcResult::None).await;
    let footer = one.replace("this is the body.\r\n", "this is the body.\r\n--\r\nlist footer\r\n");
    // mail-auth's Authentication-Results builder reads the outcome's output.
    let msg = AuthenticatedMessage::parse(footer.as_bytes()).expect("parses");
    let outcome = verify(&auth, &msg).await;
    let ar = mail_auth::AuthenticationResults::new("mx.forwarder.test").with_arc_result(&outcome.output, [192, 0, 2, 1].into());
    assert!(ar.to_string().contains("arc=fail"), "{ar}");
    assert!(seal(&second.key, "bad;domain", second.selector, &msg, &outcome, "mx.test; arc=fail").is_err());
    assert!(seal(&second.key, second.domain, "sel\r\nX-Injected: 1", &msg, &outcome, "mx.test; arc=fail").is_err());
    let two = relay(&auth, &second, &footer, ArcResult::Fail).await;
    assert!(two.starts_with("ARC-Seal: i=2; a=rsa-sha256; d=forwarder.test; s=arc2; cv=fail;"), "{two}");
    let (result, sealers, reason) = verify_text(&auth, &two).await;
    assert_eq!(result, ArcResult::Fail);
    assert_eq!(sealers, ["lists.test", "forwarder.test"]);
    assert!(reason.unwrap_or_default().contains("cv=fail"));
    assert_eq!(dkimpy(&two, &[&first, &second]).0, "", "dkimpy ends a chain at cv=fail");

    // No validator checks a cv=fail seal (they stop at cv=fail), so check
    // its signature directly: over the new set alone.
    let new_set: Vec<&str> = split_fields(&two).into_iter().take(3).collect();
    let mut signed = Vec::new();
    for field in [new_set[2], new_set[1]] {
        let (name, value) = field.split_once(':').expect("field");
        super::relaxed(name, value, &mut signed);
        signed.extend_from_slice(b"\r\n");
    }
    let (name, value) = new_set[0].split_once(':').expect("seal");
    let (head, b) = value.split_once("b=").expect("b=");
    super::relaxed(name, &format!("{head}b="), &mut signed);
    let b: String = b.chars().filter(|c| !c.is_whitespace()).collect();
    let b = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b.trim_end_matches(';')).expect("base64");
    let DkimKey::Rsa { key, .. } = &second.key.key else { panic!("RSA key") };
    let public = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        aws_lc_rs::signature::KeyPair::public_key(key).as_ref(),
    );
    public.verify(&signed, &b).expect("the cv=fail seal signs the new set alone");

    let msg = AuthenticatedMessage::parse(two.as_bytes()).expect("parses");
    let outcome = verify(&auth, &msg).await;
    let err = seal(&first.key, first.domain, first.selector, &msg, &outcome, "mx.lists.test; arc=fail").expect_err("no seal after cv=fail");
    assert!(err.to_string().contains("cv=fail"), "{err}");
}

/// The header fields of `text` (folded lines joined back), up to the body.
fn split_fields(text: &str) -> Vec<&str> {
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut fields = Vec::new();
    let mut start = 0;
    for (at, _) in head.match_indices("\r\n") {
        if !head[at + 2..].starts_with([' ', '\t']) {
            fields.push(&head[start..at]);
            start = at + 2;
        }
    }
    fields.push(&head[start..]);
    fields
}

/// A key that cannot be fetched for a DNS reason gives temperror, with a
/// reason, and such a chain is not sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_failure_is_temperror() {
    let first = hop("lists.test", "arc1", Algorithm::Ed25519Sha256);
    let dns = DnsServer::start(zone(&[&first]));
    let one = relay(&authenticator(&dns), &first, MESSAGE, ArcResult::None).await;

    let broken = DnsServer::start(Zone::new().timeout(&first.dns_name()));
    let lookup = crate::dns::Lookup { attempts: 1, timeout: Duration::from_millis(300), tcp: false };
    let auth = MessageAuthenticator(crate::dns::resolver_with(Some(&[broken.addr()]), lookup).expect("resolver"));

    let msg = AuthenticatedMessage::parse(one.as_bytes()).expect("parses");
    let outcome = verify(&auth, &msg).await;
    assert_eq!(outcome.result, ArcResult::TempError, "{:?}", outcome.reason);
    assert!(outcome.reason.is_some());
    assert!(seal(&first.key, first.domain, first.selector, &msg, &outcome, "mx.test; arc=temperror").is_err());
}

#[test]
fn results_value_is_checked() {
    assert_eq!(super::one_line("mx.test;\r\n\t spf=pass  (ok)").unwrap(), "mx.test; spf=pass (ok)");
    assert_eq!(super::one_line("mx.test").unwrap(), "mx.test");
    assert!(super::one_line("  ").is_err());
    assert!(super::one_line("; spf=pass").is_err());
    assert!(super::one_line("mx.test; spf=pass\0").is_err());
}

#[test]
fn long_results_are_folded() {
    let words: Vec<String> = (0..40).map(|k| format!("x{k}=pass")).collect();
    let line = format!("ARC-Authentication-Results: i=1; mx.test; {}\r\n", words.join(" "));
    let folded = super::fold_results(&line);
    assert!(folded.split("\r\n").all(|l| l.len() <= 78), "{folded}");
    let unfolded: String = folded.replace("\r\n\t", " ");
    assert_eq!(unfolded, line);
}

/// Mangled ARC header fields (cut short, bytes replaced, fields doubled)
/// give a result, never a panic, and sealing answers Ok or Err.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_do_not_panic() {
    let first = hop("lists.test", "arc1", Algorithm::RsaSha256);
    let second = hop("forwarder.test", "arc2", Algorithm::RsaSha256);
    let dns = DnsServer::start(zone(&[&first, &second]));
    let auth = authenticator(&dns);
    let one = relay(&auth, &first, MESSAGE, ArcResult::None).await;
    let two = relay(&auth, &second, &one, ArcResult::Pass).await;
    let head_len = two.find("\r\n\r\n").expect("header end");
    let replacements: &[&str] = &["", ";", "=", ";;", "i=0", "i=99", "cv=fail", "\u{e9}", "\r\n ", ":", "\0", "i=1; i=2"];
    let mut cases = Vec::new();
    for at in (0..head_len).step_by(7) {
        let r = replacements[at % replacements.len()];
        let end = (at + 1 + at % 5).min(head_len);
        if two.is_char_boundary(at) && two.is_char_boundary(end) {
            cases.push(format!("{}{r}{}", &two[..at], &two[end..]));
        }
        cases.push(format!("{}{}", &two[..at], &two[head_len..]));
    }
    let fields = split_fields(&two);
    cases.push(format!("{}\r\n{two}", fields[0]));
    cases.push(format!("{}\r\n{}\r\n{two}", fields[1], fields[2]));
    for case in &cases {
        let Some(msg) = AuthenticatedMessage::parse(case.as_bytes()) else { continue };
        let outcome = verify(&auth, &msg).await;
        if outcome.result == ArcResult::Fail {
            assert!(outcome.reason.is_some());
        }
        let _ = seal(&second.key, second.domain, second.selector, &msg, &outcome, "mx.forwarder.test; arc=fail");
    }
}

/// A message with `n` ARC sets of the right shape whose signatures are
/// junk.
fn fake_chain(n: u32) -> String {
    let mut out = String::new();
    for i in (1..=n).rev() {
        let cv = if i == 1 { "none" } else { "pass" };
        out.push_str(&format!("ARC-Seal: i={i}; a=rsa-sha256; cv={cv}; d=x.test; s=s; b=AAAA\r\n"));
        out.push_str(&format!("ARC-Message-Signature: i={i}; a=rsa-sha256; d=x.test; s=s; h=from; bh=AAAA; b=AAAA\r\n"));
        out.push_str(&format!("ARC-Authentication-Results: i={i}; mx{i}.x.test; none\r\n"));
    }
    out + MESSAGE
}

/// RFC 8617 §4.2.1, §5.2 step 1: at most 50 sets; a 51st is never added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sets_at_most() {
    let sealer = hop("forwarder.test", "arc2", Algorithm::Ed25519Sha256);
    let dns = DnsServer::start(zone(&[&sealer]));
    let auth = authenticator(&dns);

    let fifty = fake_chain(50);
    let msg = AuthenticatedMessage::parse(fifty.as_bytes()).expect("parses");
    let outcome = verify(&auth, &msg).await;
    assert_eq!(outcome.result, ArcResult::Fail, "junk signatures");
    assert_eq!(outcome.sealers.len(), 50);
    let err = seal(&sealer.key, sealer.domain, sealer.selector, &msg, &outcome, "mx.test; arc=fail").expect_err("no 51st set");
    assert!(err.to_string().contains("50 sets"), "{err}");

    let fifty_one = fake_chain(51);
    let msg = AuthenticatedMessage::parse(fifty_one.as_bytes()).expect("parses");
    let outcome = verify(&auth, &msg).await;
    assert_eq!(outcome.result, ArcResult::Fail);
    assert!(outcome.reason.unwrap_or_default().contains("i=51"));

    // Below the limit a failed chain is sealed as i=N+1, cv=fail.
    let three = fake_chain(3);
    let msg = AuthenticatedMessage::parse(three.as_bytes()).expect("parses");
    let outcome = verify(&auth, &msg).await;
    assert_eq!(outcome.result, ArcResult::Fail);
    let fields = seal(&sealer.key, sealer.domain, sealer.selector, &msg, &outcome, "mx.test; arc=fail").expect("seal");
    assert!(fields.starts_with("ARC-Seal: i=4; a=ed25519-sha256; d=forwarder.test; s=arc2; cv=fail;"), "{fields}");
    assert!(fields.contains("ARC-Message-Signature: i=4;"), "{fields}");
    assert!(fields.contains("ARC-Authentication-Results: i=4; mx.test; arc=fail\r\n"), "{fields}");
}
