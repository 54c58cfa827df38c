//! A header block from anyone through mailgate's own reading of an ARC
//! chain's shape (`checks/arc_chain.rs`: RFC 8617 §5.2 steps 1-3 and the
//! RFC 6376 §3.2 tag-list syntax), run before any cryptography. The file
//! is compiled in directly (it uses std only). Also the same bytes through
//! mail-auth's DKIM-Signature and ARC parsing, which the daemon runs on
//! every message.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/mailgate/src/checks/arc_chain.rs"]
mod chain;

use libfuzzer_sys::fuzz_target;
use mail_auth::AuthenticatedMessage;
use mailgate::checks::author::header_fields;

fuzz_target!(|data: &[u8]| {
    let fields = header_fields(data);
    let highest = chain::highest_instance(&fields);
    let failed = chain::ends_failed(&fields);
    let sealers = chain::sealers(&fields);
    for (_, value) in &fields {
        let _ = chain::no_canonicalization(value);
    }
    match chain::check(&fields) {
        Ok(true) => {
            // A well-formed chain: sets 1..=N, each seal readable, the last
            // one not cv=fail.
            assert!(highest >= 1, "a chain with no instance");
            assert!(!failed, "a valid chain that ends failed");
            assert_eq!(sealers.len() as u32, highest, "one sealer per set");
        }
        Ok(false) => assert_eq!(highest, 0, "no ARC field, but instance {highest}"),
        Err(why) => assert!(!why.is_empty()),
    }
    if let Some(msg) = AuthenticatedMessage::parse(data) {
        let _ = msg.body_hashes.len();
        let _ = msg.from.len();
    }
});
