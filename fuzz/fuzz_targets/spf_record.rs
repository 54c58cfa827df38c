//! Arbitrary bytes as an SPF TXT record, through mailgate's strict record
//! parser and macro expansion. Anyone can publish a record, so neither may
//! ever panic, whatever the input.
//!
//! The parser's two files are compiled in directly (they depend on std
//! only), which keeps the daemon's async and DNS stack out of this crate.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/mailgate/src/checks/spf/macros.rs"]
mod macros;
#[allow(dead_code)]
#[path = "../../crates/mailgate/src/checks/spf/record.rs"]
mod record;

use libfuzzer_sys::fuzz_target;
use macros::{Grammar, MacroString, Vars};
use record::{Mechanism, Record, is_spf};

fn vars() -> Vars<'static> {
    Vars {
        sender: "f\u{f6}o-bar+baz@mail.example.com",
        local_part: "f\u{f6}o-bar+baz",
        sender_domain: "mail.example.com",
        domain: "example.com",
        ip: "2001:db8::cb01".parse().expect("literal address"),
        helo: "[192.0.2.1]",
        receiver: "mx.example.net",
        validated_name: None,
        now: 1_700_000_000,
    }
}

fn expand(spec: &MacroString) {
    let out = spec.expand(&vars());
    let _ = out.len();
}

fuzz_target!(|data: &[u8]| {
    let spf = is_spf(data);
    match Record::parse(data) {
        Ok(record) => {
            // Only an ASCII `v=spf1` record parses.
            assert!(spf && data.is_ascii(), "parsed a record that is not one");
            for directive in &record.directives {
                match &directive.mechanism {
                    Mechanism::Include(spec) | Mechanism::Exists(spec) => expand(spec),
                    Mechanism::A(spec, cidr) | Mechanism::Mx(spec, cidr) => {
                        assert!(cidr.v4 <= 32 && cidr.v6 <= 128);
                        spec.iter().for_each(expand);
                    }
                    Mechanism::Ptr(spec) => spec.iter().for_each(expand),
                    Mechanism::Ip4(_, len) => assert!(*len <= 32),
                    Mechanism::Ip6(_, len) => assert!(*len <= 128),
                    Mechanism::All => {}
                }
            }
            record.redirect.iter().chain(record.explanation.iter()).for_each(expand);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    // The same bytes as an explanation's text (fetched by exp=).
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(template) = MacroString::parse(text, Grammar::Explanation)
    {
        expand(&template);
    }
});
