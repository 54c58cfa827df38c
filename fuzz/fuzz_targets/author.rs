//! A header block from anyone, through the `From:` rules DMARC depends on
//! (`checks/author.rs`): the field splitter, the one-author rule, the
//! canonical domain, and the identities the look-alike rules read. The
//! `From:` list mail-auth's DMARC would judge comes from mail-auth's own
//! parse of the same bytes, as in the daemon.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mail_auth::AuthenticatedMessage;
use mailgate::checks::author::{author, canonical_domain, header_fields, identities, is_from};

fuzz_target!(|data: &[u8]| {
    let fields = header_fields(data);
    for (name, value) in &fields {
        // Fields are pieces of the input, in order, never the empty line.
        assert!(!name.contains(&b':'), "a field name holds a colon");
        assert!(name.len() + value.len() < data.len());
    }
    let seen: Vec<String> = AuthenticatedMessage::parse(data).map(|m| m.from.iter().map(|f| f.to_string()).collect()).unwrap_or_default();
    match author(data, &seen) {
        Ok(a) => {
            // Exactly one From: field, and the domain DMARC judges is the
            // canonical one: lower case ASCII, no trailing dot, stable.
            assert_eq!(fields.iter().filter(|(n, _)| is_from(n)).count(), 1);
            assert!(a.domain.is_ascii() && a.domain == a.domain.to_ascii_lowercase(), "{a:?}");
            assert!(!a.domain.ends_with('.') && a.domain.contains('.'), "{a:?}");
            assert_eq!(canonical_domain(&a.domain, "From:").as_deref(), Ok(a.domain.as_str()));
            assert!(!a.local.is_empty() && !a.local.contains('@'), "{a:?}");
            assert!(a.canonical().ends_with(&format!("@{}", a.domain)));
        }
        Err(why) => assert!(!why.is_empty()),
    }
    for (_, _, address) in identities(data) {
        if let Some((_, domain)) = address.rsplit_once('@') {
            if let Ok(d) = canonical_domain(domain, "x") {
                // Canonical is a fixed point.
                assert_eq!(canonical_domain(&d, "x").as_deref(), Ok(d.as_str()));
            }
        }
    }
});
