//! A header block from anyone through the removal of forged
//! `Authentication-Results` and `X-Mailgate-*` fields (RFC 8601 §5,
//! `checks/auth_results.rs`): what is left must hold none of them, so a
//! second pass finds nothing, and only whole fields are cut out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate::checks::auth_results::strip_forged;

const OURS: &str = "mx.example.test";

fuzz_target!(|data: &[u8]| {
    let Some((out, n)) = strip_forged(data, OURS) else { return };
    assert!(n > 0);
    assert!(out.len() < data.len(), "stripping {n} fields removed nothing");
    if let Some((again, m)) = strip_forged(&out, OURS) {
        panic!("{m} forged field(s) left after stripping: {:?}", String::from_utf8_lossy(&again));
    }
    // What is left is the input with pieces removed, in order.
    let mut rest = &data[..];
    for &b in &out {
        let at = rest.iter().position(|&c| c == b).expect("output byte not from the input");
        rest = &rest[at + 1..];
    }
});
