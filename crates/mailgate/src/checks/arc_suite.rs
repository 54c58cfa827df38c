//! The ValiMail ARC validation suite (171 tests), run through [`verify`]
//! twice: with each message parsed whole, and parsed from its header block
//! with the body hashes streamed (`checks::body`, as the gateway does),
//! against a loopback DNS server serving each scenario's `txt-records`
//! (format in `tests/conformance/README.md`). `ARC_SUITE_VERBOSE=1`
//! prints every test's result and reason.

use std::collections::{BTreeMap, BTreeSet};

use std::time::Instant;

use mail_auth::{AuthenticatedMessage, MessageAuthenticator};
use mailgate_testkit::dns::{DnsServer, Zone};
use serde_yaml::Value;

use super::{ArcResult, verify};

const SUITE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/conformance/arc/arc-draft-validation-tests.yml"));

/// Tests expected to fail, each with why. A test listed here that passes
/// fails the run, so the list cannot go stale.
const KNOWN: &[(&str, &str)] = &[(
    "ams_fields_h_empty",
    "the suite (and dkimpy) pass an AMS with an empty h=, which signs no header field, not even From:. \
     The AMS has DKIM-Signature semantics (RFC 8617 §4.1.2) and RFC 6376 §6.1.1 makes a signature \
     that does not sign From: invalid; accepting it would let anyone rewrite From: under an arc=pass \
     chain. We (and mail-auth) fail it.",
)];

struct Case {
    name: String,
    /// A later test of the same name replaces this one in the suite.
    shadowed: bool,
    message: String,
    /// `None` for the suite's empty `cv:` (see [`expected`]).
    cv: ArcResult,
}

struct Scenario {
    description: String,
    zone: Zone,
    cases: Vec<Case>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => panic!("unexpected YAML value {other:?}"),
    }
}

/// A YAML mapping read as a list, keeping duplicate keys: four test names
/// occur twice in the suite's `Arc Seal Fields` scenario. PyYAML, which
/// the suite's own harness uses, keeps the last of each; those are the
/// 171. The earlier four run too, reported apart.
struct Pairs(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    pairs.push(entry);
                }
                Ok(Pairs(pairs))
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[derive(serde::Deserialize)]
struct Document {
    description: String,
    tests: Pairs,
    #[serde(rename = "txt-records")]
    txt_records: Pairs,
}

/// The suite's `cv`. Three tests (`cv_fail_i1_as_cv_fail`,
/// `cv_fail_i2_as2_fail`, `cv_fail_i2_as1_fail`) leave it empty: their
/// chains carry an ARC-Seal with cv=fail, for which the suite's reference,
/// dkimpy, prints no result at all. RFC 8617 §5.2 steps 2 and 3 make such
/// a chain "fail", so that is what we expect.
fn expected(cv: &str) -> ArcResult {
    match cv.trim().to_ascii_lowercase().as_str() {
        "none" => ArcResult::None,
        "pass" => ArcResult::Pass,
        "fail" | "" => ArcResult::Fail,
        other => panic!("unknown cv {other:?}"),
    }
}

fn load() -> Vec<Scenario> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(SUITE) {
        let doc = <Document as serde::Deserialize>::deserialize(doc).expect("valid YAML");
        let mut zone = Zone::new();
        for (name, value) in &doc.txt_records.0 {
            zone = zone.txt(name, &text(value));
        }
        let mut cases = Vec::new();
        for (k, (name, t)) in doc.tests.0.iter().enumerate() {
            let shadowed = doc.tests.0[k + 1..].iter().any(|(later, _)| later == name);
            cases.push(Case {
                name: name.clone(),
                shadowed,
                // The suite writes messages with LF; SMTP carries CRLF.
                message: text(t.get("message").expect("message")).replace('\n', "\r\n"),
                cv: expected(&text(t.get("cv").expect("cv"))),
            });
        }
        out.push(Scenario { description: doc.description.trim().to_string(), zone, cases });
    }
    out
}

pub(super) fn authenticator(dns: &DnsServer) -> MessageAuthenticator {
    MessageAuthenticator(crate::dns::resolver(Some(&[dns.addr()])).expect("resolver"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arc_validation_suite() {
    run_suite(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arc_validation_suite_streamed() {
    run_suite(true).await;
}

async fn run_suite(streamed: bool) {
    let known: BTreeMap<&str, &str> = KNOWN.iter().copied().collect();
    assert_eq!(known.len(), KNOWN.len(), "duplicate KNOWN entries");
    let started = Instant::now();
    let (mut passed, mut total) = (0, 0);
    let mut failures = Vec::new();
    let mut known_but_passed = Vec::new();
    let mut names = BTreeSet::new();
    let mut shadowed = (0, 0);
    for scenario in load() {
        let dns = DnsServer::start(scenario.zone.clone());
        let auth = authenticator(&dns);
        for case in &scenario.cases {
            if !case.shadowed {
                total += 1;
                names.insert(case.name.clone());
            }
            // A message without a header field has no ARC set: "none".
            let whole = std::sync::Arc::new(case.message.clone().into_bytes());
            let parsed = if streamed {
                crate::checks::body::parse_streamed(&whole, true, |m| super::body_lanes(m, false)).map(|(m, _)| m)
            } else {
                AuthenticatedMessage::parse(&whole)
            };
            let (got, reason) = match parsed {
                Some(msg) => {
                    let outcome = verify(&auth, &msg).await;
                    (outcome.result, outcome.reason)
                }
                None => (ArcResult::None, Some("no header fields".to_string())),
            };
            let ok = got == case.cv;
            let line =
                format!("{} / {}: got {got} ({}), expected {}", scenario.description, case.name, reason.unwrap_or_default(), case.cv);
            if std::env::var_os("ARC_SUITE_VERBOSE").is_some() {
                eprintln!("  {} {line}", if ok { "ok" } else { "MISMATCH" });
            }
            if case.shadowed {
                shadowed.1 += 1;
                if ok {
                    shadowed.0 += 1;
                } else {
                    eprintln!("  FAILED (shadowed duplicate) {line}");
                    failures.push(format!("{} (shadowed duplicate)", case.name));
                }
                continue;
            }
            match (ok, known.get(case.name.as_str())) {
                (true, None) => passed += 1,
                (true, Some(_)) => {
                    passed += 1;
                    known_but_passed.push(case.name.clone());
                }
                (false, Some(why)) => eprintln!("  known failure {line}: {why}"),
                (false, None) => {
                    eprintln!("  FAILED {line}");
                    failures.push(case.name.clone());
                }
            }
        }
    }
    println!(
        "ARC validation suite ({}): {passed}/{total} passed ({} known failures; shadowed duplicates {}/{}; {:.1} s)",
        if streamed { "header block + streamed body" } else { "whole message" },
        known.len(),
        shadowed.0,
        shadowed.1,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(total, 171, "the suite has 171 validation tests");
    let unknown: Vec<&str> = known.keys().filter(|k| !names.contains(**k)).copied().collect();
    assert!(unknown.is_empty(), "KNOWN names tests the suite does not have: {unknown:?}");
    assert!(failures.is_empty(), "failed: {failures:?}");
    assert!(known_but_passed.is_empty(), "known failures now pass, remove them from KNOWN: {known_but_passed:?}");
}
