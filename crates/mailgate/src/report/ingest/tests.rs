use std::io::Write;
use std::time::{Duration, Instant};

use super::*;
use crate::store::sqlite::Sqlite;

fn conformance() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/reports")
}

/// Every report file of the conformance set; a `.json` beside a report of
/// the same stem is mail-auth's expectation, not a report.
fn samples() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![conformance()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let ext = p.extension().and_then(|x| x.to_str()).unwrap_or_default();
            if p.is_dir() {
                stack.push(p);
            } else if ["xml", "gz", "zip", "eml"].contains(&ext) || (ext == "json" && !d.ends_with("mail-auth-dmarc")) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

const BROKEN: [&str; 2] = ["invalid_utf_8.xml", "invalid_xml.xml"];

const REPORT: &str = r#"<?xml version="1.0"?><feedback><report_metadata><org_name>Example</org_name>
<email>r@example.net</email><report_id>r-1</report_id><date_range><begin>1000</begin><end>2000</end></date_range>
</report_metadata><policy_published><domain>example.com</domain><p>reject</p></policy_published>
<record><row><source_ip>192.0.2.1</source_ip><count>3</count><policy_evaluated><disposition>none</disposition>
<dkim>pass</dkim><spf>fail</spf></policy_evaluated></row><identifiers><header_from>example.com</header_from></identifiers>
<auth_results><dkim><domain>example.com</domain><selector>s</selector><result>pass</result></dkim>
<spf><domain>example.com</domain><scope>mfrom</scope><result>fail</result></spf></auth_results></record></feedback>"#;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in members {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn one(bytes: &[u8]) -> Result<IngestedReport, String> {
    let (mut reports, _) = parse(bytes, Limits::default())?;
    assert_eq!(reports.len(), 1);
    Ok(reports.remove(0))
}

#[test]
fn every_sample_parses_and_the_broken_ones_do_not() {
    let all = samples();
    assert!(all.len() >= 30, "{all:?}");
    for p in all {
        let name = p.file_name().unwrap().to_str().unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let got = parse(&bytes, Limits::default());
        if BROKEN.contains(&name) {
            assert!(got.is_err(), "{name} should be refused");
        } else {
            let (reports, _) = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!reports[0].report_id.is_empty(), "{name}");
        }
    }
}

/// mail-auth's own expectations (`NNN.json` beside `NNN.xml`/`.eml`),
/// converted the same way, equal what we read.
#[test]
fn mail_auth_expectations_hold() {
    let dir = conformance().join("mail-auth-dmarc");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let expected: mail_auth::report::Report = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let input = ["xml", "eml"].iter().map(|x| p.with_extension(x)).find(|x| x.exists()).unwrap();
        let got = one(&std::fs::read(&input).unwrap()).unwrap();
        assert_eq!(got, convert::dmarc(&expected).unwrap(), "{}", input.display());
        checked += 1;
    }
    assert_eq!(checked, 10);
}

#[test]
fn a_report_reads_into_the_store_words() {
    let r = one(REPORT.as_bytes()).unwrap();
    assert_eq!((r.org_name.as_str(), r.report_id.as_str(), r.begin, r.end), ("Example", "r-1", 1000, 2000));
    assert_eq!(r.policy_domain, "example.com");
    assert_eq!(r.policy.as_ref().unwrap().p, "reject");
    let row = &r.rows[0];
    assert_eq!((row.source_ip.as_str(), row.count, row.disposition.as_str()), ("192.0.2.1", 3, "none"));
    assert_eq!((row.dkim_evaluated.as_str(), row.spf_evaluated.as_str()), ("pass", "fail"));
    assert_eq!((row.spf[0].scope.as_str(), row.spf[0].result.as_str()), ("mfrom", "fail"));
    // The same in every container.
    assert_eq!(one(&gzip(REPORT.as_bytes())).unwrap(), r);
    assert_eq!(one(&zip_of(&[("report.xml", REPORT.as_bytes())])).unwrap(), r);
    let msg = format!(
        "From: r@example.net\r\nSubject: Report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nA report.\r\n--b\r\nContent-Type: application/gzip\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"../../etc/passwd\"\r\n\r\n{}\r\n--b--\r\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, gzip(REPORT.as_bytes()))
    );
    assert_eq!(one(msg.as_bytes()).unwrap(), r);
}

#[test]
fn zip_members_that_climb_out_refuse_the_archive() {
    for name in ["../evil.xml", "a/../../evil.xml", "/etc/evil.xml", "\\evil.xml", "C:evil.xml", "a\\..\\evil.xml"] {
        let z = zip_of(&[("good.xml", REPORT.as_bytes()), (name, REPORT.as_bytes())]);
        let err = parse(&z, Limits::default()).unwrap_err();
        assert!(err.contains("unsafe archive"), "{name}: {err}");
    }
    assert!(unsafe_member_name_ok("dir/report.xml"));
    assert!(unsafe_member_name_ok("report..xml"));
}

fn unsafe_member_name_ok(n: &str) -> bool {
    unpack::unsafe_member_name(n.as_bytes()).is_none()
}

#[test]
fn too_many_members_or_too_deep_is_refused() {
    let many: Vec<(String, &[u8])> = (0..40).map(|i| (format!("r{i}.xml"), REPORT.as_bytes())).collect();
    let refs: Vec<(&str, &[u8])> = many.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    assert!(parse(&zip_of(&refs), Limits::default()).unwrap_err().contains("members"));
    let mut nested = REPORT.as_bytes().to_vec();
    for _ in 0..6 {
        nested = gzip(&nested);
    }
    assert!(parse(&nested, Limits::default()).unwrap_err().contains("nested"));
}

#[test]
fn gzip_bomb_stops_at_the_cap() {
    // 1 GB of zeros, compressed as a stream (never held whole).
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    let start = Instant::now();
    let err = parse(&bomb, Limits::default()).unwrap_err();
    assert!(err.contains("decompression bomb"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // The ratio trips long before the absolute cap for a small bomb.
    let small = gzip(&vec![b' '; 8 << 20]);
    assert!(small.len() < 80 << 10);
    assert!(parse(&small, Limits::default()).unwrap_err().contains("decompression bomb"));
}

#[test]
fn zip_bomb_and_forged_sizes_are_refused() {
    let big = vec![b' '; 8 << 20];
    let z = zip_of(&[("r.xml", &big)]);
    assert!(parse(&z, Limits::default()).unwrap_err().contains("decompression bomb"));
    // A member whose header lies about its size is still read only to the cap.
    let tight = Limits { max_expanded: 500, ratio_floor: 500, ..Limits::default() };
    assert!(parse(&zip_of(&[("r.xml", REPORT.as_bytes())]), tight).unwrap_err().contains("decompression bomb"));
}

/// quick-xml (inside mail-auth) does not expand entities: the classic
/// billion laughs is refused at once and costs nothing like 3 GB.
#[test]
fn billion_laughs_is_not_expanded() {
    let mut xml = String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE feedback [\n<!ENTITY lol \"lol\">\n");
    xml.push_str("<!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\n");
    for i in 2..=9 {
        let p = i - 1;
        xml.push_str(&format!("<!ENTITY lol{i} \"{}\">\n", format!("&lol{p};").repeat(10)));
    }
    xml.push_str("]>\n");
    let laughs = REPORT.replace("<?xml version=\"1.0\"?>", &xml).replace("<org_name>Example</org_name>", "<org_name>&lol9;</org_name>");
    let start = Instant::now();
    // mail-auth alone reads it with the entity left as it is...
    let raw = mail_auth::report::Report::parse_xml(laughs.as_bytes()).unwrap();
    assert!(raw.report_metadata.org_name.len() < 16, "an entity was expanded");
    // ...and we refuse it.
    let err = parse(laughs.as_bytes(), Limits::default()).unwrap_err();
    assert!(err.contains("declares entities"), "{err}");
    // External entities are not fetched either.
    let external = REPORT
        .replace("<?xml version=\"1.0\"?>", "<?xml version=\"1.0\"?><!DOCTYPE f [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>")
        .replace("<email>r@example.net</email>", "<email>&x;</email>");
    let raw = mail_auth::report::Report::parse_xml(external.as_bytes()).unwrap();
    assert!(!raw.report_metadata.email.contains("root:"));
    assert!(parse(external.as_bytes(), Limits::default()).is_err());
    assert!(start.elapsed() < Duration::from_secs(1));
}

/// Truncated and garbled inputs of every kind are refused, never panic.
#[test]
fn truncated_and_garbled_inputs_never_panic() {
    let mut inputs: Vec<Vec<u8>> = samples().iter().map(|p| std::fs::read(p).unwrap()).collect();
    inputs.push(gzip(REPORT.as_bytes()));
    inputs.push(zip_of(&[("r.xml", REPORT.as_bytes())]));
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for input in &inputs {
        let n = input.len();
        for cut in [0, 1, 2, 3, 4, 10, n / 3, n / 2, n.saturating_sub(1)] {
            let _ = parse(&input[..cut.min(n)], Limits::default());
        }
        for _ in 0..40 {
            let mut g = input.clone();
            for _ in 0..1 + rand() % 8 {
                let i = (rand() as usize) % g.len().max(1);
                if let Some(b) = g.get_mut(i) {
                    *b = rand() as u8;
                }
            }
            let _ = parse(&g, Limits::default());
        }
    }
    for junk in [&b""[..], b"\x1f", b"\x1f\x8b", b"PK\x03\x04", b"<", b"{", b"From: x\r\n\r\n", b"\xff\xfe\x00"] {
        assert!(parse(junk, Limits::default()).is_err(), "{junk:?}");
    }
}

#[test]
fn ingester_stores_once_and_keeps_rejects_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(Sqlite::open(&dir.path().join("reports.db"), "n1").unwrap());
    let ing = Ingester::new(store.clone(), dir.path());
    let Outcome::Stored { reports, .. } = ing.ingest(REPORT.as_bytes(), "a.xml").unwrap() else { panic!() };
    assert!(reports[0].id.is_some());
    let Outcome::Stored { reports, .. } = ing.ingest(&gzip(REPORT.as_bytes()), "a.xml.gz").unwrap() else { panic!() };
    assert_eq!(reports[0].id, None, "the same report twice is stored once");

    let Outcome::Rejected { reason, kept } = ing.ingest(b"<feedback><bad", "../../evil name\n.xml").unwrap() else { panic!() };
    let kept = kept.unwrap();
    assert!(reason.contains("DMARC"), "{reason}");
    assert_eq!(kept.parent().unwrap(), dir.path().join(REJECTED_DIR));
    let name = kept.file_name().unwrap().to_str().unwrap();
    assert!(name.ends_with(".xml") && !name.contains("evil"), "{name}");
    let why = std::fs::read_to_string(kept.with_file_name(format!("{name}.reason"))).unwrap();
    assert!(why.contains("reason: invalid DMARC") && why.contains("evil name\\n.xml"), "{why}");
    assert_eq!(std::fs::read(&kept).unwrap(), b"<feedback><bad");

    let small = ing.with_limits(Limits { max_input: 10, ..Limits::default() });
    let Outcome::Rejected { reason, kept } = small.ingest(REPORT.as_bytes(), "big").unwrap() else { panic!() };
    assert!(reason.contains("too large"));
    assert_eq!(std::fs::read(kept.unwrap()).unwrap().len(), 10);
}

#[test]
fn feedback_is_found_inside_a_stray_wrapper() {
    assert_eq!(feedback(b"<?xml version=\"1.0\"?> <xs:schema x=\"1\">\n<feedback>x</feedback>"), b"<feedback>x</feedback>");
    assert_eq!(feedback(b"<!-- c --><feedback>x</feedback>"), b"<!-- c --><feedback>x</feedback>");
    assert_eq!(feedback(b"<!DOCTYPE a [<!ENTITY b \"<feedback>\">]><feedback/>"), b"<!DOCTYPE a [<!ENTITY b \"<feedback>\">]><feedback/>");
}
