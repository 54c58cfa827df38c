//! Bytes anyone may send us as a report (a file for `reports import`, or a
//! message to the report address) through the one entry point that takes
//! them (`report::ingest::parse`): format sniffing, gzip, zip and MIME
//! unpacking with every expansion capped, then the DMARC XML and TLS-RPT
//! JSON parsers and the checks a report must pass. Smaller caps than the
//! daemon's keep each run fast; the code is the same.
#![no_main]

mod known_panics;

use libfuzzer_sys::fuzz_target;
use mailgate::report::ingest::parse;
use mailgate::report::ingest::unpack::Limits;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_input: 1 << 20, max_expanded: 4 << 20, ratio_floor: 256 << 10, ..Limits::default() };
    known_panics::run(|| {
        if let Ok((reports, _problems)) = parse(data, limits) {
            assert!(!reports.is_empty());
            for r in &reports {
                // The store keeps each report once by (kind, org, id); an
                // empty org name is kept (seen in the wild), an empty id is
                // not a report.
                assert!(!r.report_id.is_empty(), "{r:?}");
            }
        }
    });
});
