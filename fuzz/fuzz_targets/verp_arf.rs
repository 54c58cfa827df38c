//! Bytes anyone may send us at a VERP or complaints address: the VERP
//! token decoder (any local part) and the ARF complaint reader
//! (`suppression::arf::read`). Nothing may panic; a decoded token must
//! re-encode to the same queue id and index.
#![no_main]

mod known_panics;

use libfuzzer_sys::fuzz_target;
use mailgate::suppression::{arf, verp::Verp};

fuzz_target!(|data: &[u8]| {
    known_panics::run(|| {
        let v = Verp::new(b"fuzzing secret 0123456789", u64::MAX);
        let text = String::from_utf8_lossy(data);
        if let Ok((id, index)) = v.decode(&text, 1_800_000_000) {
            assert_eq!(v.decode(&v.local_part(&id, index), 1_800_000_000), Ok((id, index)));
        }
        if let Some(c) = arf::read(data) {
            assert!(!c.feedback_type.is_empty());
        }
    });
});
