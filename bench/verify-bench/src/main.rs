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
//!       full-message checks (SPF + DKIM + ARC + DMARC + look-alike) per
//!       second through `checks::verdict::Checker`, as at the end of DATA.

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

/// Full-message checks per second: SPF (MAIL FROM and HELO), DKIM, ARC,
/// the author, DMARC and look-alike domains through
/// `mailgate::checks::verdict::Checker`, the code the gateway runs at the
/// end of DATA, on one message. The DNS server serves RECORDS plus an SPF
/// record naming 127.0.0.1 and a `p=reject` DMARC record for the signing
/// domain; the first check warms the caches. Every check must come out
/// `dmarc=pass`, action accept.
fn full_message_checks(records: &str, message: &str, n: &str, label: &str) -> i32 {
    let raw = std::fs::read(message).expect("message file");
    let n: u64 = n.parse().expect("N");
    let text = std::fs::read_to_string(records).expect("RECORDS");
    let domain = text
        .lines()
        .find_map(|l| l.split_once(' ')?.0.split_once("._domainkey.").map(|(_, d)| d.trim_end_matches('.').to_string()))
        .expect("a DKIM key record in RECORDS");
    let zone = text.lines().filter_map(|l| l.split_once(' ')).fold(Zone::new(), |z, (name, value)| z.txt(name, value.trim()));
    let zone = zone.txt(&domain, "v=spf1 ip4:127.0.0.1 -all").txt(&format!("_dmarc.{domain}"), "v=DMARC1; p=reject");
    let dns = DnsServer::start(zone);
    let dir = std::env::temp_dir().join(format!("verify-bench-{}", std::process::id()));
    let toml = format!(
        "[server]\nhostname = \"mx.bench.test\"\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"{}\"]\n[[domain]]\nname = \"bench-inbox.test\"\ndkim = false\n",
        dir.display(),
        dns.addr()
    );
    let config = mailgate::config::Config::parse(&toml, std::path::Path::new("bench.toml")).expect("config");
    let lookalikes = std::sync::Arc::new(mailgate::server::lookalikes(&config));
    let checker = mailgate::checks::verdict::Checker::new(&config, lookalikes, false).expect("checker");
    let mail_from = format!("bench@{domain}");
    let helo = format!("mail.{domain}");
    let input = mailgate::checks::verdict::Input {
        ip: "127.0.0.1".parse().expect("ip"),
        helo: &helo,
        mail_from: &mail_from,
        message: Some(&raw),
        seal: false,
    };
    let rt = runtime();
    rt.block_on(async {
        let v = checker.check(&input).await;
        eprintln!("  {}", v.authentication_results.replace("\r\n\t", " "));
        if v.dmarc.result != "pass" || v.action != mailgate::config::Action::Accept {
            eprintln!("{label}: warm-up check is not a DMARC pass/accept; not measuring");
            return 1;
        }
        let start = Instant::now();
        for _ in 0..n {
            let v = checker.check(std::hint::black_box(&input)).await;
            if v.dmarc.result != "pass" {
                eprintln!("{label}: a check did not pass DMARC");
                return 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{label} {n} {secs:.4} {:.1}", n as f64 / secs);
        0
    })
}
