//! `/metrics` for outbound TLS: each MX connection's outcome is counted by
//! RFC 8460 result type and policy type, against a loopback DNS zone and
//! sinks with and without STARTTLS (certificates from a test CA). The
//! inbound counters are tested black-box in `tests/test_metrics.py`.

use std::time::{Duration, Instant};

use mailgate_testkit::https::{HttpResponse, HttpsServer};
use mailgate_testkit::sink::SinkReplies;
use mailgate_testkit::tls::TestCa;
use mailgate_testkit::{DnsServer, Server, SmtpClient, SmtpSink, Zone, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_mailgate");
const WAIT: Duration = Duration::from_secs(20);

fn tls(result: &str, policy: &str) -> String {
    format!("mailgate_outbound_tls_results_total{{result=\"{result}\",policy=\"{policy}\"}}")
}

fn send(server: &Server, to: &str) {
    let mut c = SmtpClient::connect(server.smtp_addr()).unwrap();
    c.ehlo("client.example.net").unwrap();
    let r = c.send_mail("alice@sender.test", &[to], "Subject: tls\r\n\r\nx\r\n").unwrap();
    c.quit().ok();
    assert!(r.queue_id().is_some(), "{r}");
}

/// Waits until `name` reads `want`, then checks it stays there a moment
/// (one attempt must count once).
fn wait_metric(server: &Server, name: &str, want: u64) {
    let deadline = Instant::now() + WAIT;
    while server.metric(name) != want {
        assert!(Instant::now() < deadline, "{name} = {}, want {want}\n{}", server.metric(name), server.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.metric(name), want, "{name}");
}

#[test]
fn require_tls_without_starttls_counts_starttls_not_supported() {
    let dns = DnsServer::start(Zone::new().mx("bank.test", 10, "mx.bank.test").a("mx.bank.test", "127.0.0.46"));
    let port = free_port();
    let _sink = SmtpSink::with_replies(SinkReplies { bind: Some(format!("127.0.0.46:{port}").parse().unwrap()), ..SinkReplies::default() });
    // The default retry_initial (300 s): one attempt during the test.
    let config = format!(
        "{}[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n[delivery]\nmx_port = {port}\nrequire_tls = [\"bank.test\"]\n",
        dns.config()
    );
    let server = Server::start(BIN, &config);
    assert_eq!(server.metric(&tls("starttls-not-supported", "require-tls")), 0);
    send(&server, "bob@bank.test");
    wait_metric(&server, "mailgate_deferred_total", 1);
    assert_eq!(server.metric(&tls("starttls-not-supported", "require-tls")), 1);
    assert_eq!(server.metric(&tls("success", "require-tls")), 0);
}

#[test]
fn mta_sts_outcomes_are_counted_by_result_type() {
    let ca = TestCa::new();
    let sts_port = free_port();
    // Two policy domains on one MX port per address: good.test's MX
    // presents its own name, bad.test's a certificate for another name.
    let port = free_port();
    let dns = DnsServer::start(
        Zone::new()
            .mx("good.test", 10, "mx.good.test")
            .a("mx.good.test", "127.0.0.47")
            .txt("_mta-sts.good.test", "v=STSv1; id=1")
            .a("mta-sts.good.test", "127.0.1.47")
            .mx("bad.test", 10, "mx.bad.test")
            .a("mx.bad.test", "127.0.0.48")
            .txt("_mta-sts.bad.test", "v=STSv1; id=1")
            .a("mta-sts.bad.test", "127.0.1.48"),
    );
    let policy = |mx: &str| HttpResponse::policy(&format!("version: STSv1\r\nmode: enforce\r\nmx: {mx}\r\nmax_age: 86400\r\n"));
    let _good_policy = HttpsServer::start(
        format!("127.0.1.47:{sts_port}").parse().unwrap(),
        ca.server_config(&["mta-sts.good.test"]),
        policy("mx.good.test"),
    );
    let _bad_policy = HttpsServer::start(
        format!("127.0.1.48:{sts_port}").parse().unwrap(),
        ca.server_config(&["mta-sts.bad.test"]),
        policy("mx.bad.test"),
    );
    let sink = |ip: &str, names: &[&str]| {
        SmtpSink::with_replies(SinkReplies {
            bind: Some(format!("{ip}:{port}").parse().unwrap()),
            starttls: true,
            tls: Some(ca.server_config(names)),
            ..SinkReplies::default()
        })
    };
    let good = sink("127.0.0.47", &["mx.good.test"]);
    let _bad = sink("127.0.0.48", &["wrong.example.test"]);
    let dir = tempfile::tempdir().unwrap().keep();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let config = format!(
        "{}[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n[delivery]\nmx_port = {port}\nmta_sts_port = {sts_port}\nca_file = \"{}\"\nconnect_timeout = 3\ncommand_timeout = 10\n",
        dns.config(),
        ca_file.display()
    );
    let server = Server::start(BIN, &config);
    send(&server, "bob@good.test");
    good.wait_for(1, WAIT).unwrap_or_else(|| panic!("{}", server.log_tail(30)));
    wait_metric(&server, &tls("success", "sts"), 1);
    send(&server, "bob@bad.test");
    wait_metric(&server, &tls("certificate-host-mismatch", "sts"), 1);
    wait_metric(&server, "mailgate_deferred_total", 1);
    assert_eq!(server.metric(&tls("success", "sts")), 1);
    assert_eq!(server.metric(&tls("starttls-not-supported", "no-policy-found")), 0);
    assert_eq!(server.metric("mailgate_delivered_total"), 1);
}
