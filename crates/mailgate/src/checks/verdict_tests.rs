//! `Checker::check` on a message whose body is a file: a ~20 MB message
//! signed by our signer (reading the file) and one signed by dkimpy pass
//! DKIM; a changed body octet fails; an unreadable body is a temporary
//! refusal. dkimpy also verifies what our signer wrote.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use mailgate_core::dkim::{Algorithm, Canon};
use mailgate_testkit::dns::{DnsServer, Zone};

use super::*;
use crate::config::{DkimSettings, DomainConfig};
use crate::sign::{Signer, store};

const HEADER: &[u8] = b"From: Alice <alice@example.test>\r\nTo: bob@far.test\r\nSubject: a big one\r\n\
Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <big-1@example.test>\r\n\r\n";

/// About `size` octets of body with the white space canonicalization
/// cares about: runs of spaces and tabs, trailing blanks, empty lines,
/// and a run of empty lines at the end.
fn big_body(size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size + 100);
    let mut n = 0u64;
    while body.len() < size {
        n += 1;
        match n % 7 {
            0 => body.extend_from_slice(b"\r\n"),
            1 => body.extend_from_slice(format!("line {n}:  two  spaces\tand a tab \t\r\n").as_bytes()),
            _ => body.extend_from_slice(format!("{n:>10} lorem ipsum dolor sit amet, consectetur adipiscing  \r\n").as_bytes()),
        }
    }
    body.extend_from_slice(b"\r\n\r\n\r\n");
    body
}

/// `prefix` then `body` in a file; the body as a `Body::File`.
fn file_body(prefix: &[u8], body: &[u8]) -> (Body, tempfile::NamedTempFile) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(prefix).unwrap();
    file.write_all(body).unwrap();
    file.flush().unwrap();
    let handle = std::fs::File::open(file.path()).unwrap();
    (Body::File { file: Arc::new(handle), start: prefix.len() as u64, len: body.len() as u64 }, file)
}

fn signer(dir: &std::path::Path) -> (Signer, Vec<(String, String)>) {
    let domain = DomainConfig {
        name: mailgate_core::address::Domain::parse("example.test", false).unwrap(),
        deliver: None,
        dkim: DkimSettings {
            sign: true,
            algorithms: vec![Algorithm::Ed25519Sha256, Algorithm::RsaSha256],
            canonicalization: (Canon::Relaxed, Canon::Relaxed),
            headers: None,
            expire: None,
        },
    };
    let signer = Signer::start(dir, &[domain]).unwrap();
    let records = store::list(dir, "example.test")
        .unwrap()
        .into_iter()
        .map(|info| {
            let key = store::load_key(dir, "example.test", &info.selector).unwrap();
            (format!("{}._domainkey.example.test", info.selector), key.dns_record())
        })
        .collect();
    (signer, records)
}

fn checker(dns: &DnsServer, dir: &std::path::Path) -> Checker {
    let text = format!(
        "[server]\nhostname = \"mx.test\"\ndata_dir = {:?}\n[dns]\nnameservers = [\"{}\"]\n",
        dir.join("checker").display().to_string(),
        dns.addr()
    );
    let config = Config::parse(&text, &dir.join("mailgate.toml")).unwrap();
    Checker::new(&config, Arc::new(crate::server::lookalikes(&config)), None).unwrap()
}

async fn check(checker: &Checker, header: &[u8], body: Body) -> Verdict {
    let input = Input {
        ip: "192.0.2.1".parse().unwrap(),
        helo: "client.test",
        mail_from: "alice@example.test",
        message: Some(header),
        body: Some(body),
        seal: false,
        record: true,
    };
    checker.check(&input).await
}

fn dkim_results(v: &Verdict) -> Vec<&'static str> {
    v.dkim.iter().map(|d| d.result).collect()
}

/// dkimpy's verdict on every DKIM signature of the message in `path`.
fn dkimpy_verify(path: &std::path::Path, records: &[(String, String)]) -> Vec<String> {
    const SCRIPT: &str = r#"
import json, sys
import dkim
records = json.loads(sys.argv[2])
def dnsfunc(name, timeout=5):
    value = records.get(name.decode().rstrip(".").lower())
    return value.encode() if value is not None else None
message = open(sys.argv[1], "rb").read()
d = dkim.DKIM(message)
n = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
for i in range(n):
    print("pass" if d.verify(idx=i, dnsfunc=dnsfunc) else "fail")
"#;
    let records: serde_json::Map<String, serde_json::Value> = records.iter().map(|(n, v)| (n.clone(), v.clone().into())).collect();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .arg(serde_json::Value::Object(records).to_string())
        .output()
        .expect("python3 with dkimpy is needed (pip install -r tests/requirements.txt)");
    assert!(out.status.success(), "dkimpy failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_signed_from_a_file_pass_here_and_in_dkimpy() {
    let dir = tempfile::tempdir().unwrap();
    let (signer, records) = signer(dir.path());
    let dns = DnsServer::start(records.iter().fold(Zone::new(), |z, (n, v)| z.txt(n, v)));
    let checker = checker(&dns, dir.path());
    let body = big_body(20 * 1024 * 1024);
    let (on_disk, _file) = file_body(HEADER, &body);

    let started = Instant::now();
    let fields = signer.sign(HEADER, &on_disk).unwrap().expect("example.test is ours");
    println!("signed {} MB from a file in {:?}", body.len() >> 20, started.elapsed());
    let header = [fields.as_bytes(), HEADER].concat();

    // What the signer read from the file equals signing the whole message.
    let whole = [header.as_slice(), &body].concat();
    let msg = AuthenticatedMessage::parse(&whole).unwrap();
    for (_, _, _, bh) in &msg.body_hashes {
        let field = fields.replace("\r\n ", " ");
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bh);
        assert!(field.contains(&format!("bh={b64};")), "bh {b64} not in {field}");
    }
    drop(msg);

    let started = Instant::now();
    let lanes = [(mail_auth::dkim::Canonicalization::Relaxed, mail_auth::common::crypto::HashAlgorithm::Sha256, 0)];
    body::digest(b"", &on_disk, &lanes).unwrap();
    println!("hashed {} MB from a file (relaxed, sha256) in {:?}", body.len() >> 20, started.elapsed());
    let started = Instant::now();
    let verdict = check(&checker, &header, on_disk.clone()).await;
    println!("checked {} MB from a file in {:?}", body.len() >> 20, started.elapsed());
    assert_eq!(dkim_results(&verdict), ["pass", "pass"], "{:?}", verdict.dkim);
    assert!(verdict.authentication_results.contains("dkim=pass"), "{}", verdict.authentication_results);
    // The author and DMARC read the header block alone.
    assert_eq!(verdict.dmarc.from_domain, "example.test");
    assert!(verdict.authentication_results.contains("header.from=example.test"), "{}", verdict.authentication_results);

    // dkimpy agrees on the whole message.
    let mut signed = tempfile::NamedTempFile::new().unwrap();
    signed.write_all(&whole).unwrap();
    signed.flush().unwrap();
    assert_eq!(dkimpy_verify(signed.path(), &records), ["pass", "pass"]);
    drop(whole);

    // One octet changed deep in the file: both fail on the body hash.
    let mut changed = body.clone();
    let at = changed.len() / 2 + 3;
    changed[at] = if changed[at] == b'x' { b'y' } else { b'x' };
    let (changed_body, _changed_file) = file_body(b"", &changed);
    let verdict = check(&checker, &header, changed_body).await;
    assert_eq!(dkim_results(&verdict), ["fail", "fail"], "{:?}", verdict.dkim);
    assert!(verdict.dkim.iter().all(|d| d.reason.as_deref().is_some_and(|r| r.contains("body hash"))), "{:?}", verdict.dkim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_signed_by_dkimpy_pass_from_a_file() {
    const SIGN: &str = r#"
import sys
import dkim
message = open(sys.argv[1], "rb").read()
pem = open(sys.argv[2], "rb").read()
for canon in (b"simple", b"relaxed"):
    sig = dkim.sign(message, b"py", b"example.test", pem, canonicalize=(b"relaxed", canon), include_headers=[b"from", b"to", b"subject"])
    sys.stdout.buffer.write(sig)
"#;
    let (key, pem) = crate::sign::key::DkimKey::generate(Algorithm::RsaSha256, 2048).unwrap();
    let mut pem_file = tempfile::NamedTempFile::new().unwrap();
    pem_file.write_all(pem.as_bytes()).unwrap();
    pem_file.flush().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body = big_body(20 * 1024 * 1024);
    let mut unsigned = tempfile::NamedTempFile::new().unwrap();
    unsigned.write_all(HEADER).unwrap();
    unsigned.write_all(&body).unwrap();
    unsigned.flush().unwrap();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(SIGN)
        .arg(unsigned.path())
        .arg(pem_file.path())
        .output()
        .expect("python3 with dkimpy is needed (pip install -r tests/requirements.txt)");
    assert!(out.status.success() && !out.stdout.is_empty(), "dkimpy signing failed: {}", String::from_utf8_lossy(&out.stderr));
    let dns = DnsServer::start(Zone::new().txt("py._domainkey.example.test", &key.dns_record()));
    let checker = checker(&dns, dir.path());

    let header = [out.stdout.as_slice(), HEADER].concat();
    let (on_disk, _file) = file_body(HEADER, &body);
    let verdict = check(&checker, &header, on_disk).await;
    assert_eq!(dkim_results(&verdict), ["pass", "pass"], "{:?}", verdict.dkim);
}

#[tokio::test]
async fn an_unreadable_body_is_a_temporary_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(Zone::new());
    let checker = checker(&dns, dir.path());
    // The file is shorter than the body claims.
    let (short, _file) = file_body(b"", b"only this\r\n");
    let Body::File { file, .. } = short else { unreachable!() };
    let verdict = check(&checker, HEADER, Body::File { file, start: 0, len: 1000 }).await;
    assert!(verdict.temporary && verdict.action == Action::Reject, "{verdict:?}");
    assert_eq!(verdict.reason.as_deref(), Some("cannot read the message body"));
}
