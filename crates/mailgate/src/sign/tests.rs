use super::*;
use base64::Engine;
use std::path::PathBuf;

fn conformance(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/dkim/rfc8463").join(name)
}

fn b_value(signed: &str, selector: &str) -> String {
    // Unfold each DKIM-Signature field and take its b= tag.
    let unfolded = signed.replace("\r\n ", " ").replace("\r\n\t", " ");
    let field = unfolded.lines().find(|l| l.starts_with("DKIM-Signature:") && l.contains(&format!("s={selector};"))).unwrap();
    let b = field.split("b=").last().unwrap();
    b.chars().filter(|c| !c.is_whitespace()).collect()
}

fn vector_params(algorithm: Algorithm, selector: &str) -> Params {
    Params {
        algorithm,
        domain: "football.example.com".into(),
        selector: selector.into(),
        header_canon: Canon::Relaxed,
        body_canon: Canon::Relaxed,
        headers: ["from", "to", "subject", "date", "message-id"].map(String::from).to_vec(),
        oversign: ["from", "subject", "date"].map(String::from).to_vec(),
        timestamp: 1528637909,
        expiration: None,
        identity: Some("@football.example.com".into()),
    }
}

/// RFC 8463 appendix A: byte-identical b= for both signatures.
#[test]
fn rfc8463_example_signatures_are_reproduced_exactly() {
    let unsigned = std::fs::read(conformance("unsigned.eml")).unwrap();
    let signed = std::fs::read_to_string(conformance("signed.eml")).unwrap();

    let seed = base64::engine::general_purpose::STANDARD
        .decode(std::fs::read_to_string(conformance("brisbane.ed25519.seed.b64")).unwrap().trim())
        .unwrap();
    let ed = DkimKey::from_ed25519_seed(&seed).unwrap();
    let input = dkim::prepare_message(&unsigned, &vector_params(Algorithm::Ed25519Sha256, "brisbane"));
    let header = input.finish(&ed.sign(&input).unwrap());
    assert_eq!(b_value(&header, "brisbane"), b_value(&signed, "brisbane"), "{header}");
    assert!(ed.dns_record().ends_with("p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="), "{}", ed.dns_record());

    let rsa = DkimKey::from_pem(&std::fs::read_to_string(conformance("test.rsa1024.private.pem")).unwrap()).unwrap();
    let input = dkim::prepare_message(&unsigned, &vector_params(Algorithm::RsaSha256, "test"));
    let header = input.finish(&rsa.sign(&input).unwrap());
    assert_eq!(b_value(&header, "test"), b_value(&signed, "test"), "{header}");
    let records = std::fs::read_to_string(conformance("dns-records.txt")).unwrap();
    let p = rsa.dns_record();
    let p = p.split("p=").last().unwrap();
    assert!(records.contains(p), "{p}");

    // The body hash too, and a one-byte change alters it.
    let bh = |h: &str| h.replace("\r\n ", " ").split("bh=").nth(1).unwrap().split(';').next().unwrap().to_string();
    assert_eq!(bh(&header), "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
    let mut changed = unsigned.clone();
    let n = changed.len() - 3;
    changed[n] ^= 1;
    let other = dkim::prepare_message(&changed, &vector_params(Algorithm::RsaSha256, "test"));
    assert_ne!(bh(&other.finish(&[0])), bh(&header));
}

#[test]
fn generated_keys_sign_and_publish() {
    for alg in [Algorithm::Ed25519Sha256, Algorithm::RsaSha256] {
        let (key, pem) = DkimKey::generate(alg, 2048).unwrap();
        let again = DkimKey::from_pem(&pem).unwrap();
        assert_eq!(key.dns_record(), again.dns_record());
        let input = dkim::prepare_message(b"From: a@x.test\r\n\r\nhi\r\n", &vector_params(alg, "s"));
        assert!(!again.sign(&input).unwrap().is_empty());
        assert!(matches!(again, DkimKey::Ed25519(_) | DkimKey::Rsa { .. }), "2048-bit RSA must use aws-lc-rs");
    }
}

/// Ed25519 keys are written as PKCS#8 v1, which OpenSSL 3.0 reads.
#[test]
fn ed25519_key_files_are_readable_by_openssl() {
    let (_, pem) = DkimKey::generate(Algorithm::Ed25519Sha256, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pem");
    std::fs::write(&path, &pem).unwrap();
    let Ok(out) = std::process::Command::new("openssl").args(["pkey", "-in"]).arg(&path).arg("-noout").output() else {
        eprintln!("openssl not installed; skipping");
        return;
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn from_domain_needs_exactly_one_mailbox() {
    assert_eq!(from_domain(b"From: A <a@Example.TEST>\r\n\r\n").as_deref(), Some("example.test"));
    assert_eq!(from_domain(b"From: a@x.test\r\nFrom: b@y.test\r\n\r\n"), None);
    assert_eq!(from_domain(b"From: a@x.test, b@y.test\r\n\r\n"), None);
}

/// RFC 8463 appendix A again, the way a spilled message is signed: the
/// header block apart, the body fed in small chunks from a file.
#[test]
fn rfc8463_signatures_from_a_streamed_file_body() {
    use std::io::Write;
    let unsigned = std::fs::read(conformance("unsigned.eml")).unwrap();
    let signed = std::fs::read_to_string(conformance("signed.eml")).unwrap();
    let n = crate::checks::body::header_end(&unsigned).unwrap();
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&unsigned).unwrap();
    let body = crate::checks::body::Body::File { file: std::sync::Arc::new(file), start: n as u64, len: (unsigned.len() - n) as u64 };
    for chunk in [1, 3, 64 * 1024] {
        let mut bh = dkim::BodyHash::new(Canon::Relaxed);
        body.for_each_chunk_sized(chunk, |c| bh.update(c)).unwrap();
        let bh = bh.finish();
        let rsa = DkimKey::from_pem(&std::fs::read_to_string(conformance("test.rsa1024.private.pem")).unwrap()).unwrap();
        let input = dkim::prepare(&unsigned[..n], &bh, &vector_params(Algorithm::RsaSha256, "test"));
        let header = input.finish(&rsa.sign(&input).unwrap());
        assert_eq!(b_value(&header, "test"), b_value(&signed, "test"), "chunks of {chunk}: {header}");
    }
}
