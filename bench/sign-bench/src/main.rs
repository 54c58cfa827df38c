//! Signs one message N times, in-process, the way mailgate's signer does
//! (crates/mailgate/src/sign/mod.rs `Signer::sign` and
//! crates/mailgate/src/inbound.rs `sign`): find the single `From:` domain,
//! then per active key `dkim::prepare` + ring signature + `finish`, then
//! prepend the fields to a copy of the message. Run it pinned to one core
//! (`taskset -c 0`).
//!
//! Usage: mailgate-sign-bench KEYDIR DOMAIN MESSAGE N (ed25519|rsa|both) [OUT]
//! KEYDIR holds mailgate's keys (`data_dir/dkim/DOMAIN`: keys.json and
//! SELECTOR.pem). Prints one line: `mode n secs rate`. With OUT, the last
//! signed message is written there (for checking it with a verifier).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};
use mailgate_core::dkim::{self, Algorithm, Canon, Params, SigningInput};
use ring::signature::{Ed25519KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};

// crates/mailgate/src/sign/mod.rs
const SIGNED_HEADERS: &[&str] = &[
    "from", "reply-to", "subject", "date", "to", "cc", "message-id", "in-reply-to", "references", "mime-version",
    "content-type", "content-transfer-encoding", "content-disposition", "list-unsubscribe", "list-unsubscribe-post",
];
const OVERSIGNED: &[&str] =
    &["from", "reply-to", "subject", "date", "to", "cc", "message-id", "mime-version", "content-type", "content-transfer-encoding"];

enum Key {
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

impl Key {
    fn from_pem(pem: &str) -> Key {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD.decode(body.trim()).expect("PEM base64");
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            return Key::Ed25519(k);
        }
        Key::Rsa(RsaKeyPair::from_pkcs8(&der).expect("a PKCS#8 Ed25519 or RSA (>= 2048 bits) key"))
    }

    fn algorithm(&self) -> Algorithm {
        match self {
            Key::Ed25519(_) => Algorithm::Ed25519Sha256,
            Key::Rsa(_) => Algorithm::RsaSha256,
        }
    }

    // crates/mailgate/src/sign/key.rs `DkimKey::sign`
    fn sign(&self, input: &SigningInput, rng: &ring::rand::SystemRandom) -> Vec<u8> {
        match self {
            Key::Ed25519(k) => k.sign(&input.digest()).as_ref().to_vec(),
            Key::Rsa(key) => {
                let mut sig = vec![0; key.public().modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, rng, &input.data, &mut sig).expect("RSA signing");
                sig
            }
        }
    }
}

// crates/mailgate/src/sign/mod.rs `from_domain`
fn from_domain(message: &[u8]) -> Option<String> {
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

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn sign_one(message: &[u8], domain: &str, keys: &[(String, Key)], rng: &ring::rand::SystemRandom) -> Vec<u8> {
    let from = from_domain(message).expect("one From: mailbox");
    assert!(from == domain || from.ends_with(&format!(".{domain}")), "From: {from} is not {domain}");
    let t = now();
    let mut out = String::new();
    for (selector, key) in keys {
        let params = Params {
            algorithm: key.algorithm(),
            domain: domain.to_string(),
            selector: selector.clone(),
            header_canon: Canon::Relaxed,
            body_canon: Canon::Relaxed,
            headers: SIGNED_HEADERS.iter().map(|s| s.to_string()).collect(),
            oversign: OVERSIGNED.iter().map(|s| s.to_string()).collect(),
            timestamp: t,
            expiration: None,
            identity: None,
        };
        let input = dkim::prepare(message, &params);
        out.push_str(&input.finish(&key.sign(&input, rng)));
    }
    let mut signed = Vec::with_capacity(out.len() + message.len());
    signed.extend_from_slice(out.as_bytes());
    signed.extend_from_slice(message);
    signed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: {} KEYDIR DOMAIN MESSAGE N (ed25519|rsa|both) [OUT]", args[0]);
        std::process::exit(2);
    }
    let (dir, domain, n, mode) = (&args[1], &args[2], args[4].parse::<u64>().expect("N"), args[5].as_str());
    let message = std::fs::read(&args[3]).expect("message file");
    let mut keys = Vec::new();
    let mut pems: Vec<_> = std::fs::read_dir(dir).expect("KEYDIR").flatten().map(|e| e.path()).collect();
    pems.sort();
    for p in pems.iter().filter(|p| p.extension().is_some_and(|e| e == "pem")) {
        let key = Key::from_pem(&std::fs::read_to_string(p).expect("key"));
        let want = match mode {
            "ed25519" => matches!(key, Key::Ed25519(_)),
            "rsa" => matches!(key, Key::Rsa(_)),
            "both" => true,
            _ => panic!("mode {mode}"),
        };
        if want {
            keys.push((p.file_stem().unwrap().to_string_lossy().into_owned(), key));
        }
    }
    // ed25519 first, as mailgate's default algorithm order.
    keys.sort_by_key(|(_, k)| !matches!(k, Key::Ed25519(_)));
    assert!(!keys.is_empty() && (mode != "both" || keys.len() == 2), "keys for {mode} in {dir}");
    let rng = ring::rand::SystemRandom::new();
    let mut last = sign_one(&message, domain, &keys, &rng); // warm-up
    let start = Instant::now();
    for _ in 0..n {
        last = std::hint::black_box(sign_one(std::hint::black_box(&message), domain, &keys, &rng));
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{mode} {n} {secs:.4} {:.1}", n as f64 / secs);
    if let Some(out) = args.get(6) {
        std::fs::write(out, &last).expect("OUT");
    }
}
