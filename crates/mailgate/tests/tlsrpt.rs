//! TLS-RPT reports end to end (RFC 8460): mail to a loopback domain whose
//! MTA-STS policy is `enforce` and whose MX presents a certificate for
//! another name is deferred; the domain publishes `_smtp._tls` with a
//! `mailto:` and an `https:` destination; `mailgate reports send --now`
//! sends the report by mail (through the spool, to the sink the report
//! domain's MX points to) and by HTTPS POST (to a loopback server with a
//! certificate from the test CA that `[delivery] ca_file` trusts). The
//! JSON must list the failure with its result type and counts, and parse
//! with parsedmarc's TLS-RPT parser.

use std::io::Read;
use std::time::{Duration, Instant};

use mail_parser::MimeHeaders;
use mailgate_testkit::https::{HttpResponse, HttpsServer};
use mailgate_testkit::sink::SinkReplies;
use mailgate_testkit::tls::TestCa;
use mailgate_testkit::{DnsServer, Server, SmtpClient, SmtpSink, Zone, free_port};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mailgate");
const WAIT: Duration = Duration::from_secs(30);

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    mail_auth::flate2::read::GzDecoder::new(data).read_to_end(&mut out).expect("gzip");
    out
}

/// Sessions with `result` the server recorded for `domain`.
fn recorded(server: &Server, domain: &str, result: &str) -> u64 {
    use mailgate::store::Store;
    let path = server.data_dir().join(mailgate::store::sqlite::FILE);
    let Ok(store) = mailgate::store::sqlite::Sqlite::open(&path, "test") else { return 0 };
    store.tls_rows(domain, 0, u64::MAX).unwrap_or_default().iter().filter(|r| r.result == result).map(|r| r.count).sum()
}

fn wait_deferred(server: &Server, ids: &[String]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let q = server.queue();
        let deferred = q["messages"]
            .as_array()
            .map(|m| m.iter().filter(|m| ids.iter().any(|i| m["id"] == i.as_str()) && m["recipients"][0]["status"] == "deferred").count())
            .unwrap_or(0);
        if deferred == ids.len() {
            return;
        }
        assert!(Instant::now() < deadline, "{q}\n{}", server.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn enforce_with_a_mismatched_certificate_is_reported_by_mail_and_https() {
    let ca = TestCa::new();
    let mx_port = free_port();
    let sts_port = free_port();
    let rpt_port = free_port();
    let url = format!("https://tlsrpt.reports.test:{rpt_port}/v1/tlsrpt");
    let dns = DnsServer::start(
        Zone::new()
            .mx("sts.test", 10, "mx.sts.test")
            .a("mx.sts.test", "127.0.0.40")
            .txt("_mta-sts.sts.test", "v=STSv1; id=20261206")
            .a("mta-sts.sts.test", "127.0.1.40")
            .txt("_smtp._tls.sts.test", &format!("v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,{url}"))
            .mx("reports.test", 10, "mx.reports.test")
            .a("mx.reports.test", "127.0.2.40")
            .a("tlsrpt.reports.test", "127.0.3.40")
            .a("sender.test", "127.0.0.1"),
    );
    let policy = "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n";
    let _policy = HttpsServer::start(
        format!("127.0.1.40:{sts_port}").parse().unwrap(),
        ca.server_config(&["mta-sts.sts.test"]),
        HttpResponse::policy(policy),
    );
    let collector = HttpsServer::start(
        format!("127.0.3.40:{rpt_port}").parse().unwrap(),
        ca.server_config(&["tlsrpt.reports.test"]),
        HttpResponse { status: 201, content_type: "text/plain".into(), body: "thanks".into() },
    );
    // sts.test's MX: STARTTLS with a certificate for another name.
    let bad_mx = SmtpSink::with_replies(SinkReplies {
        bind: Some(format!("127.0.0.40:{mx_port}").parse().unwrap()),
        starttls: true,
        tls: Some(ca.server_config(&["wrong.example.test"])),
        ..SinkReplies::default()
    });
    // reports.test's MX: where the mailed report arrives.
    let reports_mx =
        SmtpSink::with_replies(SinkReplies { bind: Some(format!("127.0.2.40:{mx_port}").parse().unwrap()), ..SinkReplies::default() });
    let dir = tempfile::tempdir().unwrap().keep();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let config = format!(
        "{}[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n[delivery]\nmx_port = {mx_port}\nmta_sts_port = {sts_port}\nca_file = \"{}\"\n\
         retry_initial = 3600\nretry_max = 7200\nconnect_timeout = 3\ncommand_timeout = 10\n\
         [reports]\norg_name = \"Mailgate Test\"\nfrom = \"reports@example.test\"\n",
        dns.config(),
        ca_file.display()
    );
    let server = Server::start(BIN, &config);

    let mut ids = Vec::new();
    for i in 0..3 {
        let mut c = SmtpClient::connect(server.smtp_addr()).unwrap();
        c.ehlo("client.example.net").unwrap();
        let r = c.send_mail("alice@sender.test", &["bob@sts.test"], &format!("Subject: sts {i}\r\n\r\nx\r\n")).unwrap();
        c.quit().ok();
        ids.push(r.queue_id().unwrap_or_else(|| panic!("{r}")));
    }
    wait_deferred(&server, &ids);
    assert!(bad_mx.messages().is_empty(), "delivered despite a bad certificate");

    let out = server.cli(&["reports", "send", "--now", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // What the store holds once `send --now` flushed it: the ground truth.
    let failures = recorded(&server, "sts.test", "certificate-host-mismatch");
    assert!(failures >= 1, "{}", server.log_tail(30));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent: Vec<&Value> =
        answer["sent"].as_array().unwrap().iter().filter(|s| s["kind"] == "tlsrpt" && s["domain"] == "sts.test").collect();
    assert_eq!(sent.len(), 1, "{answer}");
    assert_eq!(sent[0]["destinations"], serde_json::json!(["tlsrpt@reports.test", url]), "{answer}");
    assert_eq!(sent[0]["messages"], failures);

    // By mail: RFC 8460 §5.3 headers and the gzipped JSON.
    let got = reports_mx.wait_for(1, WAIT).unwrap_or_else(|| panic!("{}", server.log_tail(30)));
    assert_eq!(got[0].rcpt_to, vec!["tlsrpt@reports.test".to_string()]);
    assert_eq!(got[0].mail_from, "reports@example.test");
    let msg = mail_parser::MessageParser::default().parse(&got[0].data).expect("report message parses");
    // Unfolded: a long subject is folded at a space.
    let header = |name: &str| msg.header_raw(name).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" ")).unwrap_or_default();
    assert_eq!(header("TLS-Report-Domain"), "sts.test");
    assert_eq!(header("TLS-Report-Submitter"), "example.test");
    let subject = header("Subject");
    assert!(subject.starts_with("Report Domain: sts.test Submitter: example.test Report-ID: <"), "{subject}");
    let ctype = msg.content_type().expect("content type");
    assert_eq!((ctype.ctype(), ctype.subtype()), ("multipart", Some("report")));
    assert_eq!(ctype.attribute("report-type"), Some("tlsrpt"));
    let part = msg.attachments().next().expect("an attachment");
    let pt = part.content_type().expect("attachment type");
    assert_eq!((pt.ctype(), pt.subtype()), ("application", Some("tlsrpt+gzip")));
    let name = part.attachment_name().unwrap_or_default().to_string();
    assert!(name.starts_with("example.test!sts.test!") && name.ends_with(".json.gz"), "{name}");
    let json = gunzip(part.contents());
    let report: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(report["organization-name"], "Mailgate Test");
    assert_eq!(report["contact-info"], "reports@example.test");
    assert_eq!(report["report-id"], sent[0]["report_id"]);
    assert!(subject.contains(&format!("<{}>", sent[0]["report_id"].as_str().unwrap())), "{subject}");
    let policies = report["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{report}");
    let p = &policies[0];
    assert_eq!(p["policy"]["policy-type"], "sts");
    assert_eq!(p["policy"]["policy-domain"], "sts.test");
    // RFC 8460 §4.4: the policy as fetched, a line an element, and its mx
    // patterns.
    assert_eq!(
        p["policy"]["policy-string"],
        serde_json::json!(["version: STSv1", "mode: enforce", "mx: mx.sts.test", "max_age: 86400"]),
        "{report}"
    );
    assert_eq!(p["policy"]["mx-host"], serde_json::json!(["mx.sts.test"]), "{report}");
    assert_eq!(p["summary"]["total-successful-session-count"], 0);
    assert_eq!(p["summary"]["total-failure-session-count"], failures);
    let details = p["failure-details"].as_array().unwrap();
    assert_eq!(details.len(), 1, "{report}");
    assert_eq!(details[0]["result-type"], "certificate-host-mismatch");
    assert_eq!(details[0]["receiving-mx-hostname"], "mx.sts.test");
    assert_eq!(details[0]["failed-session-count"], failures);

    // By HTTPS: the same gzipped JSON, as application/tlsrpt+gzip.
    let posts = collector.received();
    assert_eq!(posts.len(), 1, "{:?}", collector.requests());
    assert!(posts[0].head.starts_with("POST /v1/tlsrpt HTTP/1.1"), "{}", posts[0].head);
    assert!(posts[0].head.to_ascii_lowercase().contains("content-type: application/tlsrpt+gzip"), "{}", posts[0].head);
    assert_eq!(gunzip(&posts[0].body), json);

    // parsedmarc's TLS-RPT parser reads it with the same counts.
    let file = dir.join("report.json");
    std::fs::write(&file, &json).unwrap();
    let py = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, parsedmarc\nr = parsedmarc.parse_smtp_tls_report_json(open(sys.argv[1]).read())\nprint(json.dumps(r, default=str))",
        ])
        .arg(&file)
        .output()
        .expect("python3 runs");
    assert!(py.status.success(), "parsedmarc (pip install parsedmarc): {}", String::from_utf8_lossy(&py.stderr));
    let parsed: Value = serde_json::from_slice(&py.stdout).unwrap();
    let pp = &parsed["policies"][0];
    assert_eq!(pp["policy_domain"], "sts.test", "{parsed}");
    assert_eq!(pp["policy_type"], "sts", "{parsed}");
    assert_eq!(pp["failed_session_count"], failures, "{parsed}");
    assert_eq!(pp["failure_details"][0]["result_type"], "certificate-host-mismatch", "{parsed}");
    assert_eq!(pp["failure_details"][0]["failed_session_count"], failures, "{parsed}");

    // The same sessions are never reported twice.
    let again = server.cli(&["reports", "send", "--now", "--domain", "sts.test", "--json"]);
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["sent"], serde_json::json!([]), "{again}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(collector.received().len(), 1);
}
