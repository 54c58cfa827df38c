//! Arbitrary bytes as one SMTP command line (without its CRLF), straight
//! into the parser. It must never panic, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate_core::command::{Command, parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(cmd) => {
            // The session relies on these: a parsed command came from valid
            // UTF-8 and names a verb it knows.
            assert!(std::str::from_utf8(data).is_ok(), "parsed invalid UTF-8");
            if let Command::Bdat { size, .. } = cmd {
                // The size is a decimal number taken from the line itself.
                assert!(data.len() >= 6, "BDAT {size} from a too-short line");
            }
            let _ = format!("{cmd:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
