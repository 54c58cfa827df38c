//! Bytes anyone may send us as a bounce: `report::bounce::read` (MIME, the
//! RFC 3464 delivery-status fields, the plain-text heuristics) and the
//! classifier over the same bytes as a reply. Nothing may panic; every
//! verdict must carry a kind and a category from the closed sets.
#![no_main]

mod known_panics;

use libfuzzer_sys::fuzz_target;
use mailgate::report::bounce::read;
use mailgate_core::bounce::classify_reply;

fuzz_target!(|data: &[u8]| {
    known_panics::run(|| {
        for b in read(data) {
            if let Some(r) = &b.recipient {
                assert!(r.contains('@') || b.format == "dsn");
            }
        }
        let text = String::from_utf8_lossy(data);
        if let Some(c) = classify_reply(&text) {
            assert!(!c.category.as_str().is_empty());
        }
    });
});
