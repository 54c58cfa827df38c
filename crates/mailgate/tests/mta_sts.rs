//! Outbound TLS policy end to end: MTA-STS (RFC 8461) with a loopback DNS
//! server, an HTTPS policy server and TLS-capable sinks whose certificates
//! come from a test CA that mailgate is configured to trust.

use std::time::{Duration, Instant};

use mailgate_testkit::https::{HttpResponse, HttpsServer};
use mailgate_testkit::sink::SinkReplies;
use mailgate_testkit::tls::TestCa;
use mailgate_testkit::{DnsServer, Server, SmtpClient, SmtpSink, Zone, free_port};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mailgate");
const WAIT: Duration = Duration::from_secs(20);

/// One MTA-STS world: DNS, policy server, and one MX at 127.0.0.<n>.
struct World {
    _dns: DnsServer,
    _policy: HttpsServer,
    sink: SmtpSink,
    server: Server,
}

/// `mx_names` are the names in the MX certificate; `policy` the policy
/// body (or a broken response).
fn world(n: u8, policy: HttpResponse, mx_names: &[&str], extra: &str) -> World {
    let ca = TestCa::new();
    let mx_port = free_port();
    let sts_port = free_port();
    let mx_ip = format!("127.0.0.{n}");
    let web_ip = format!("127.0.1.{n}");
    let dns = DnsServer::start(
        Zone::new()
            .mx("sts.test", 10, "mx.sts.test")
            .a("mx.sts.test", &mx_ip)
            .txt("_mta-sts.sts.test", "v=STSv1; id=20261123")
            .a("mta-sts.sts.test", &web_ip)
            .a("sender.test", "127.0.0.1"),
    );
    let policy = HttpsServer::start(format!("{web_ip}:{sts_port}").parse().unwrap(), ca.server_config(&["mta-sts.sts.test"]), policy);
    let sink = SmtpSink::with_replies(SinkReplies {
        bind: Some(format!("{mx_ip}:{mx_port}").parse().unwrap()),
        starttls: true,
        tls: Some(ca.server_config(mx_names)),
        ..SinkReplies::default()
    });
    let dir = tempfile::tempdir().unwrap().keep();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let config = format!(
        "{}[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n[delivery]\nmx_port = {mx_port}\nmta_sts_port = {sts_port}\nca_file = \"{}\"\nretry_initial = 1\nretry_max = 2\nconnect_timeout = 3\ncommand_timeout = 10\n{extra}",
        dns.config(),
        ca_file.display()
    );
    let server = Server::start(BIN, &config);
    World { _dns: dns, _policy: policy, sink, server }
}

const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n";
const TESTING: &str = "version: STSv1\r\nmode: testing\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n";

fn send(w: &World) -> String {
    let mut c = SmtpClient::connect(w.server.smtp_addr()).unwrap();
    c.ehlo("client.example.net").unwrap();
    let r = c.send_mail("alice@sender.test", &["bob@sts.test"], "Subject: sts\r\n\r\nx\r\n").unwrap();
    c.quit().ok();
    r.queue_id().unwrap_or_else(|| panic!("{r}"))
}

/// The TLS outcomes the server recorded in its report store.
fn tls_events(w: &World) -> Vec<Value> {
    use mailgate::store::Store;
    let path = w.server.data_dir().join(mailgate::store::sqlite::FILE);
    let Ok(store) = mailgate::store::sqlite::Sqlite::open(&path, "test") else { return Vec::new() };
    let mut events = Vec::new();
    for domain in store.tls_domains(0, u64::MAX).unwrap_or_default() {
        for row in store.tls_rows(&domain, 0, u64::MAX).unwrap_or_default() {
            events.push(serde_json::json!({"domain": domain, "mx": row.mx_host, "policy": row.policy_type, "result": row.result}));
        }
    }
    events
}

fn wait_event(w: &World, result: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(e) = tls_events(w).into_iter().find(|e| e["result"] == result) {
            return e;
        }
        assert!(Instant::now() < deadline, "no {result} event: {:?}\n{}", tls_events(w), w.server.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_deferred(w: &World, id: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let q = w.server.queue();
        let r = q["messages"].as_array().and_then(|m| m.iter().find(|m| m["id"] == id)).map(|m| m["recipients"][0].clone());
        if let Some(r) = r.filter(|r| r["status"] == "deferred") {
            return r["last_reply"].as_str().unwrap_or("").to_string();
        }
        assert!(Instant::now() < deadline, "{q}\n{}", w.server.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn enforce_with_a_matching_certificate_delivers() {
    let w = world(30, HttpResponse::policy(ENFORCE), &["mx.sts.test"], "");
    send(&w);
    let got = w.sink.wait_for(1, WAIT).unwrap_or_else(|| panic!("{}", w.server.log_tail(30)));
    assert!(got[0].tls);
    let e = wait_event(&w, "success");
    assert_eq!(e["policy"], "sts");
    assert_eq!(e["mx"], "mx.sts.test");
    assert!(w._policy.requests().iter().any(|r| r.starts_with("GET /.well-known/mta-sts.txt ")), "{:?}", w._policy.requests());
}

#[test]
fn enforce_with_a_mismatched_certificate_defers() {
    let w = world(31, HttpResponse::policy(ENFORCE), &["wrong.example.test"], "");
    let id = send(&w);
    let why = wait_deferred(&w, &id);
    assert!(why.contains("TLS"), "{why}");
    assert!(w.sink.messages().is_empty(), "delivered despite a bad certificate");
    wait_event(&w, "certificate-host-mismatch");
}

#[test]
fn enforce_with_an_mx_outside_the_policy_defers() {
    let policy = "version: STSv1\r\nmode: enforce\r\nmx: mail.elsewhere.test\r\nmax_age: 86400\r\n";
    let w = world(32, HttpResponse::policy(policy), &["mx.sts.test"], "");
    let id = send(&w);
    let why = wait_deferred(&w, &id);
    assert!(why.contains("4.7.5") && why.contains("MTA-STS"), "{why}");
    assert!(w.sink.messages().is_empty());
}

#[test]
fn testing_mode_delivers_and_records_the_failure() {
    let w = world(33, HttpResponse::policy(TESTING), &["wrong.example.test"], "");
    send(&w);
    let got = w.sink.wait_for(1, WAIT).unwrap_or_else(|| panic!("{}", w.server.log_tail(30)));
    assert!(got[0].tls);
    let e = wait_event(&w, "certificate-host-mismatch");
    assert_eq!(e["policy"], "sts");
}

#[test]
fn a_policy_served_as_html_is_invalid_and_mail_flows_without_it() {
    let bad = HttpResponse { status: 200, content_type: "text/html".into(), body: ENFORCE.into() };
    // The MX certificate is wrong: with the policy in force this would defer.
    let w = world(34, bad, &["wrong.example.test"], "");
    send(&w);
    w.sink.wait_for(1, WAIT).unwrap_or_else(|| panic!("{}", w.server.log_tail(30)));
    wait_event(&w, "sts-policy-invalid");
}

#[test]
fn a_redirect_is_not_followed() {
    let redirect = HttpResponse { status: 301, content_type: "text/plain".into(), body: String::new() };
    let w = world(35, redirect, &["wrong.example.test"], "");
    send(&w);
    w.sink.wait_for(1, WAIT).unwrap_or_else(|| panic!("{}", w.server.log_tail(30)));
    wait_event(&w, "sts-policy-fetch-error");
}

#[test]
fn require_tls_defers_when_the_mx_has_no_starttls() {
    let dns = DnsServer::start(Zone::new().mx("bank.test", 10, "mx.bank.test").a("mx.bank.test", "127.0.0.36"));
    let port = free_port();
    let sink = SmtpSink::with_replies(SinkReplies { bind: Some(format!("127.0.0.36:{port}").parse().unwrap()), ..SinkReplies::default() });
    let config = format!(
        "{}[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n[delivery]\nmx_port = {port}\nrequire_tls = [\"bank.test\"]\nretry_initial = 1\nretry_max = 2\n",
        dns.config()
    );
    let server = Server::start(BIN, &config);
    let mut c = SmtpClient::connect(server.smtp_addr()).unwrap();
    c.ehlo("client.example.net").unwrap();
    let id = c.send_mail("alice@sender.test", &["bob@bank.test"], "Subject: tls\r\n\r\nx\r\n").unwrap().queue_id().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let q = server.queue();
        let r = q["messages"].as_array().and_then(|m| m.iter().find(|m| m["id"] == id.as_str())).map(|m| m["recipients"][0].clone());
        if let Some(r) = r.filter(|r| r["status"] == "deferred") {
            assert!(r["last_reply"].as_str().unwrap().contains("STARTTLS"), "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "{q}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sink.messages().is_empty());
}
