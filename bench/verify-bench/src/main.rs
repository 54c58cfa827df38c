//! Verifies one DKIM-signed message N times, in-process, with mailgate's
//! verifier (`mailgate::checks::dkim::verify`, mail-auth underneath) and
//! the key records served by a loopback DNS server (testkit's, as in the
//! tests) through mailgate's resolver (`mailgate::dns::resolver`). The
//! first verification warms the resolver's cache; the timed loop then
//! measures parse + verify with DNS answered from that cache, as a busy
//! server sees it. Run it pinned to one core (`taskset -c 0`).
//!
//! Usage:
//!   mailgate-verify-bench sign KEYDIR DOMAIN MESSAGE (ed25519|rsa|both) OUT
//!       signs MESSAGE with mailgate's keys in KEYDIR (data_dir/dkim/DOMAIN)
//!       the way mailgate's signer does, writing OUT;
//!   mailgate-verify-bench verify RECORDS MESSAGE N LABEL
//!       `checks::dkim::verify`: keys from the resolver's cache, parsed
//!       per message. RECORDS: the key records, "NAME VALUE" per line
//!       (OpenDKIM's TestPublicKeys format). Prints `LABEL n secs rate`;
//!       exits non-zero unless every signature passes;
//!   mailgate-verify-bench verify-cached RECORDS MESSAGE N LABEL
//!       the same with `checks::dkim::verify_cached` and one shared
//!       `KeyCache` (parsed keys kept across messages);
//!   mailgate-verify-bench full RECORDS MESSAGE N LABEL
//!       HOOK: full-message checks (SPF + DKIM + DMARC + ARC) per second,
//!       once mailgate::checks exposes the pipeline. Exits 3 until then.

use std::time::Instant;

use mail_auth::{AuthenticatedMessage, MessageAuthenticator};
use mailgate::checks::dkim::{self, DEFAULT_MAX_SIGNATURES, DkimVerdict, KeyCache};
use mailgate::sign::key::DkimKey;
use mailgate::sign::{OVERSIGNED, SIGNED_HEADERS};
use mailgate_core::dkim::{Canon, Params};
use mailgate_testkit::dns::{DnsServer, Zone};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match args.get(1).map(String::as_str) {
        Some("sign") if args.len() == 7 => sign(&args[2], &args[3], &args[4], &args[5], &args[6]),
        Some("verify") if args.len() == 6 => bench(&args[2], &args[3], &args[4], &args[5], None),
        Some("verify-cached") if args.len() == 6 => bench(&args[2], &args[3], &args[4], &args[5], Some(&KeyCache::new(1000))),
        Some("full") if args.len() == 6 => full_message_checks(&args[2], &args[3], &args[4], &args[5]),
        _ => {
            eprintln!("usage: {0} sign KEYDIR DOMAIN MESSAGE MODE OUT | verify[-cached] RECORDS MESSAGE N LABEL | full RECORDS MESSAGE N LABEL", args[0]);
            2
        }
    };
    std::process::exit(code);
}

fn sign(dir: &str, domain: &str, message: &str, mode: &str, out: &str) -> i32 {
    let message = std::fs::read(message).expect("message file");
    let mut keys = Vec::new();
    let mut pems: Vec<_> = std::fs::read_dir(dir).expect("KEYDIR").flatten().map(|e| e.path()).collect();
    pems.sort();
    for p in pems.iter().filter(|p| p.extension().is_some_and(|e| e == "pem")) {
        let key = DkimKey::from_pem(&std::fs::read_to_string(p).expect("key")).expect("a mailgate DKIM key");
        let ed = matches!(key, DkimKey::Ed25519(_));
        if mode == "both" || (mode == "ed25519") == ed {
            keys.push((p.file_stem().expect("file name").to_string_lossy().into_owned(), key));
        }
    }
    // Ed25519 first, as mailgate's default algorithm order.
    keys.sort_by_key(|(_, k)| !matches!(k, DkimKey::Ed25519(_)));
    assert!(!keys.is_empty() && (mode != "both" || keys.len() == 2), "keys for {mode} in {dir}");
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut fields = String::new();
    for (selector, key) in &keys {
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
        let input = mailgate_core::dkim::prepare(&message, &params);
        fields.push_str(&input.finish(&key.sign(&input).expect("signing")));
    }
    std::fs::write(out, [fields.as_bytes(), &message].concat()).expect("OUT");
    0
}

/// The DNS server (kept alive by the caller) and a resolver pointed at it.
fn setup(records: &str) -> (DnsServer, MessageAuthenticator) {
    let text = std::fs::read_to_string(records).expect("RECORDS");
    let zone = text.lines().filter_map(|l| l.split_once(' ')).fold(Zone::new(), |z, (name, value)| z.txt(name, value.trim()));
    let dns = DnsServer::start(zone);
    let resolver = mailgate::dns::resolver(Some(&[dns.addr()])).expect("resolver");
    (dns, MessageAuthenticator(resolver))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// One message: parse, verify every signature; the number that passed.
async fn verify_once(auth: &MessageAuthenticator, keys: Option<&KeyCache>, raw: &[u8], print: bool) -> usize {
    let Some(msg) = AuthenticatedMessage::parse(raw) else { return 0 };
    let checks = match keys {
        Some(keys) => dkim::verify_cached(auth, &msg, DEFAULT_MAX_SIGNATURES, keys).await,
        None => dkim::verify(auth, &msg, DEFAULT_MAX_SIGNATURES).await,
    };
    if print {
        for c in &checks {
            eprintln!("  dkim={} d={} s={} a={} header.b={} {}", c.result, c.domain, c.selector, c.algorithm, c.header_b, c.reason.as_deref().unwrap_or(""));
        }
    }
    checks.iter().filter(|c| c.result == DkimVerdict::Pass).count()
}

fn bench(records: &str, message: &str, n: &str, label: &str, keys: Option<&KeyCache>) -> i32 {
    let raw = std::fs::read(message).expect("message file");
    let n: u64 = n.parse().expect("N");
    let (_dns, auth) = setup(records);
    let rt = runtime();
    rt.block_on(async {
        let want = raw.windows(16).filter(|w| w.eq_ignore_ascii_case(b"DKIM-Signature: ")).count();
        let warm = verify_once(&auth, keys, &raw, true).await;
        if warm == 0 || warm != want {
            eprintln!("{label}: {warm} of {want} signatures pass; not measuring");
            return 1;
        }
        let start = Instant::now();
        for _ in 0..n {
            let passed = verify_once(&auth, keys, std::hint::black_box(&raw), false).await;
            if passed != want {
                eprintln!("{label}: a verification did not pass ({passed} of {want})");
                return 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{label} {n} {secs:.4} {:.1}", n as f64 / secs);
        0
    })
}

/// HOOK for the lead: full-message checks per second (SPF + DKIM + DMARC +
/// ARC through the pipeline the server runs), same message, same DNS set-up
/// (add the SPF and DMARC records to RECORDS). Print `LABEL n secs rate`
/// and return 0; bench/verify.sh then reports it in its
/// "full-message checks" section. Until then: exit 3 = not available.
fn full_message_checks(_records: &str, _message: &str, _n: &str, label: &str) -> i32 {
    eprintln!("{label}: mailgate::checks has no full-message pipeline yet (SPF+DKIM+DMARC+ARC); hook not filled");
    3
}
