//! Delivery end to end: the real binary, a real DNS server on loopback
//! serving MX/A/null-MX records, and SMTP/LMTP sinks that record what they
//! receive. Remote MX hosts live on distinct loopback addresses
//! (127.0.0.2, 127.0.0.3...) sharing `[delivery].mx_port`.

use std::time::{Duration, Instant};

use mailgate_testkit::sink::SinkReplies;
use mailgate_testkit::{DnsServer, ReceivedMessage, Server, SmtpClient, SmtpSink, Zone, free_port};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mailgate");
const WAIT: Duration = Duration::from_secs(20);

/// Fast retries so deferral tests finish in seconds.
const FAST: &str = "[delivery]\nretry_initial = 1\nretry_max = 2\nidle_timeout = 1\nconnect_timeout = 2\ncommand_timeout = 10\n";

fn sink_on(addr: &str, replies: SinkReplies) -> SmtpSink {
    SmtpSink::with_replies(SinkReplies { bind: Some(addr.parse().unwrap()), ..replies })
}

fn send(server: &Server, from: &str, to: &[&str], body: &str) -> String {
    let mut c = SmtpClient::connect(server.smtp_addr()).expect("connect");
    assert_eq!(c.ehlo("client.example.net").unwrap().code, 250);
    let r = c.send_mail(from, to, body).expect("send");
    let id = r.queue_id().unwrap_or_else(|| panic!("refused: {r}\n{}", server.log_tail(30)));
    c.quit().ok();
    id
}

fn wait_queue_empty(server: &Server) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if server.queue_ids().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("queue not empty: {}\n{}", server.queue(), server.log_tail(40));
}

fn wait_for(sink: &SmtpSink, n: usize, server: &Server) -> Vec<ReceivedMessage> {
    sink.wait_for(n, WAIT).unwrap_or_else(|| panic!("sink got {} of {n} messages\n{}", sink.messages().len(), server.log_tail(40)))
}

fn local(deliver: &str) -> String {
    format!("[[domain]]\nname = \"example.test\"\ndeliver = \"{deliver}\"\ndkim = false\n")
}

/// Config for relaying from loopback clients to remote domains via DNS.
fn relay(dns: &DnsServer, mx_port: u16, bounce_sink: &SmtpSink) -> String {
    format!("{}{}[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n{FAST}mx_port = {mx_port}\n", dns.config(), local(&bounce_sink.url()))
}

fn recipient(queue: &Value, id: &str, addr: &str) -> Value {
    let msgs = queue["messages"].as_array().cloned().unwrap_or_default();
    let m = msgs.iter().find(|m| m["id"] == id).cloned().unwrap_or(Value::Null);
    let rcpts = m["recipients"].as_array().cloned().unwrap_or_default();
    rcpts.into_iter().find(|r| r["address"] == addr).unwrap_or(Value::Null)
}

/// Parses a DSN with Python's `email` package, independently of us, and
/// returns (report-type, per-recipient (Final-Recipient, Action, Status)).
fn python_dsn(raw: &[u8]) -> (String, Vec<(String, String, String)>) {
    let script = r#"
import email, sys, json
from email import policy
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.compat32)
assert m.get_content_type() == "multipart/report", m.get_content_type()
parts = m.get_payload()
assert parts[0].get_content_type() == "text/plain"
ds = parts[1]
assert ds.get_content_type() == "message/delivery-status", ds.get_content_type()
blocks = ds.get_payload()
assert "Reporting-MTA" in blocks[0]
rcpts = [[b["Final-Recipient"], b["Action"], b["Status"]] for b in blocks[1:]]
assert parts[2].get_content_type() in ("message/rfc822", "text/rfc822-headers"), parts[2].get_content_type()
print(json.dumps([m.get_param("report-type"), rcpts]))
"#;
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(raw).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python rejected the DSN: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(raw));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rcpts = v[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_str().unwrap().to_string(), r[2].as_str().unwrap().to_string()))
        .collect();
    (v[0].as_str().unwrap_or("").to_string(), rcpts)
}

#[test]
fn delivers_to_local_smtp_next_hop_with_received_header() {
    let sink = SmtpSink::start();
    let server = Server::start(BIN, &format!("{}{FAST}", local(&sink.url())));
    let id = send(&server, "alice@client.example.net", &["bob@example.test"], "Subject: hi\r\n\r\nhello\r\n");
    let got = wait_for(&sink, 1, &server);
    assert_eq!(got[0].mail_from, "alice@client.example.net");
    assert_eq!(got[0].rcpt_to, ["bob@example.test"]);
    let data = got[0].data_str();
    assert!(data.starts_with("Received: from client.example.net"), "{data}");
    assert!(data.contains(&format!("id {id}")), "{data}");
    assert!(data.ends_with("hello\r\n"), "{data}");
    wait_queue_empty(&server);
    assert_eq!(server.metric("mailgate_delivered_total"), 1);
    assert_eq!(server.metric("mailgate_bounced_total"), 0);
}

#[test]
fn delivers_to_lmtp_with_per_recipient_status() {
    let sink = SmtpSink::with_replies(SinkReplies {
        lmtp: true,
        lmtp_data_for: vec![("full@".into(), "452 4.2.2 mailbox full".into())],
        ..SinkReplies::default()
    });
    let server = Server::start(BIN, &format!("{}{FAST}", local(&format!("lmtp://{}", sink.addr()))));
    let id = send(&server, "alice@client.example.net", &["ok@example.test", "full@example.test"], "Subject: lmtp\r\n\r\nx\r\n");
    let got = wait_for(&sink, 1, &server);
    assert_eq!(got[0].rcpt_to, ["ok@example.test"]);
    assert_eq!(got[0].helo, "mx.example.test");
    // The full mailbox is deferred, the other done.
    let deadline = Instant::now() + WAIT;
    loop {
        let q = server.queue();
        let full = recipient(&q, &id, "full@example.test");
        let ok = recipient(&q, &id, "ok@example.test");
        if full["status"] == "deferred" && ok["status"] == "delivered" {
            assert!(full["last_reply"].as_str().unwrap().contains("4.2.2"), "{full}");
            break;
        }
        assert!(Instant::now() < deadline, "{q}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn delivers_to_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, &format!("{}{FAST}", local(&format!("maildir:{}", dir.path().display()))));
    send(&server, "alice@client.example.net", &["Bob@example.test"], "Subject: md\r\n\r\nin a maildir\r\n");
    wait_queue_empty(&server);
    let new = dir.path().join("bob").join("new");
    let files: Vec<_> = std::fs::read_dir(&new).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.starts_with("Return-Path: <alice@client.example.net>\r\nDelivered-To: Bob@example.test\r\n"), "{text}");
    assert!(text.contains("in a maildir"));
    assert_eq!(std::fs::read_dir(dir.path().join("bob").join("tmp")).unwrap().count(), 0);
}

#[test]
fn mx_preference_order_with_fallback_when_first_refuses_connections() {
    let port = free_port();
    // mx1 (preference 10) has nothing listening; mx2 (20) is the sink.
    let good = sink_on(&format!("127.0.0.3:{port}"), SinkReplies::default());
    let lower = sink_on(&format!("127.0.0.4:{port}"), SinkReplies::default());
    let dns = DnsServer::start(
        Zone::new()
            .mx("remote.test", 10, "mx1.remote.test")
            .mx("remote.test", 20, "mx2.remote.test")
            .mx("remote.test", 30, "mx3.remote.test")
            .a("mx1.remote.test", "127.0.0.2")
            .a("mx2.remote.test", "127.0.0.3")
            .a("mx3.remote.test", "127.0.0.4"),
    );
    let bounces = SmtpSink::start();
    let server = Server::start(BIN, &relay(&dns, port, &bounces));
    send(&server, "alice@example.test", &["carol@remote.test"], "Subject: mx\r\n\r\nvia mx2\r\n");
    let got = wait_for(&good, 1, &server);
    assert_eq!(got[0].rcpt_to, ["carol@remote.test"]);
    assert_eq!(lower.messages().len(), 0, "preference 30 must not be used while 20 works");
    wait_queue_empty(&server);
}

#[test]
fn mx_fallback_when_first_answers_421() {
    let port = free_port();
    let busy = sink_on(&format!("127.0.0.5:{port}"), SinkReplies { greeting: "421 4.3.2 busy, go away".into(), ..SinkReplies::default() });
    let good = sink_on(&format!("127.0.0.6:{port}"), SinkReplies::default());
    let dns = DnsServer::start(
        Zone::new()
            .mx("remote.test", 5, "a.remote.test")
            .mx("remote.test", 50, "b.remote.test")
            .a("a.remote.test", "127.0.0.5")
            .a("b.remote.test", "127.0.0.6"),
    );
    let bounces = SmtpSink::start();
    let server = Server::start(BIN, &relay(&dns, port, &bounces));
    send(&server, "alice@example.test", &["dave@remote.test"], "Subject: 421\r\n\r\nx\r\n");
    wait_for(&good, 1, &server);
    assert!(busy.connections() >= 1, "the preferred MX was not tried first");
    assert_eq!(busy.messages().len(), 0);
}

#[test]
fn implicit_mx_uses_the_domain_address() {
    let port = free_port();
    let sink = sink_on(&format!("127.0.0.7:{port}"), SinkReplies::default());
    let dns = DnsServer::start(Zone::new().a("nomx.test", "127.0.0.7"));
    let bounces = SmtpSink::start();
    let server = Server::start(BIN, &relay(&dns, port, &bounces));
    send(&server, "alice@example.test", &["erin@nomx.test"], "Subject: implicit\r\n\r\nx\r\n");
    wait_for(&sink, 1, &server);
}

#[test]
fn null_mx_bounces_at_once_with_a_dsn() {
    let dns = DnsServer::start(Zone::new().null_mx("nullmx.test").a("nullmx.test", "127.0.0.8"));
    let bounces = SmtpSink::start();
    let server = Server::start(BIN, &relay(&dns, free_port(), &bounces));
    send(&server, "alice@example.test", &["frank@nullmx.test"], "Subject: null\r\n\r\nx\r\n");
    let got = wait_for(&bounces, 1, &server);
    assert_eq!(got[0].mail_from, "", "a DSN has the null sender");
    assert_eq!(got[0].rcpt_to, ["alice@example.test"]);
    let (kind, rcpts) = python_dsn(&got[0].data);
    assert_eq!(kind, "delivery-status");
    assert_eq!(rcpts, [("rfc822; frank@nullmx.test".to_string(), "failed".to_string(), "5.1.10".to_string())]);
    wait_queue_empty(&server);
}

#[test]
fn temporary_failure_is_retried_and_later_succeeds() {
    let sink = SmtpSink::with_replies(SinkReplies { data_end_first: vec!["451 4.3.0 try again later".into()], ..SinkReplies::default() });
    let server = Server::start(BIN, &format!("{}{FAST}", local(&sink.url())));
    let id = send(&server, "alice@client.example.net", &["bob@example.test"], "Subject: retry\r\n\r\nx\r\n");
    // First attempt deferred and visible with its reason.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = recipient(&server.queue(), &id, "bob@example.test");
        if r["status"] == "deferred" {
            assert!(r["last_reply"].as_str().unwrap().starts_with("451 4.3.0"), "{r}");
            assert_eq!(r["attempts"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "never deferred: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = wait_for(&sink, 1, &server);
    assert_eq!(got.len(), 1);
    wait_queue_empty(&server);
    assert_eq!(server.metric("mailgate_deferred_total"), 1);
    assert_eq!(server.metric("mailgate_delivered_total"), 1);
}

#[test]
fn mixed_results_and_permanent_failure_bounce() {
    let sink = SmtpSink::with_replies(SinkReplies {
        rcpt_for: vec![("nobody".into(), "550 5.1.1 no such user".into()), ("later".into(), "450 4.2.1 try later".into())],
        extensions: vec!["PIPELINING".into(), "DSN".into()],
        ..SinkReplies::default()
    });
    let bounces = SmtpSink::start();
    let config = format!("{}[[domain]]\nname = \"sender.test\"\ndeliver = \"{}\"\ndkim = false\n{FAST}", local(&sink.url()), bounces.url());
    let server = Server::start(BIN, &config);
    let body = "Subject: mixed\r\nMessage-ID: <mixed@sender.test>\r\n\r\nbody\r\n";
    let id = send(&server, "alice@sender.test", &["ok@example.test", "nobody@example.test", "later@example.test"], body);
    let got = wait_for(&sink, 1, &server);
    assert_eq!(got[0].rcpt_to, ["ok@example.test"]);
    let dsn = wait_for(&bounces, 1, &server);
    let (_, rcpts) = python_dsn(&dsn[0].data);
    assert_eq!(rcpts, [("rfc822; nobody@example.test".to_string(), "failed".to_string(), "5.1.1".to_string())]);
    assert!(dsn[0].data_str().contains("Message-ID: <mixed@sender.test>"), "original headers are returned");
    let q = server.queue();
    assert_eq!(recipient(&q, &id, "later@example.test")["status"], "deferred", "{q}");
    assert!(recipient(&q, &id, "nobody@example.test").is_object());
}

#[test]
fn connection_reuse_carries_several_messages() {
    let sink = SmtpSink::start();
    let server = Server::start(BIN, &format!("{}[delivery]\nidle_timeout = 5\nconcurrency_per_destination = 1\n", local(&sink.url())));
    let mut c = SmtpClient::connect(server.smtp_addr()).unwrap();
    c.ehlo("client.example.net").unwrap();
    for i in 0..10 {
        let r = c.send_mail("alice@client.example.net", &["bob@example.test"], &format!("Subject: {i}\r\n\r\nx\r\n")).unwrap();
        assert!(r.queue_id().is_some(), "{r}");
    }
    c.quit().ok();
    wait_for(&sink, 10, &server);
    assert!(sink.connections() < 10, "{} connections for 10 messages", sink.connections());
}

#[test]
fn null_sender_is_never_bounced() {
    let sink = SmtpSink::with_replies(SinkReplies { rcpt: "550 5.1.1 no such user".into(), ..SinkReplies::default() });
    let server = Server::start(BIN, &format!("{}{FAST}", local(&sink.url())));
    let mut c = SmtpClient::connect(server.smtp_addr()).unwrap();
    c.ehlo("client.example.net").unwrap();
    assert_eq!(c.command("MAIL FROM:<>").unwrap().code, 250);
    assert_eq!(c.command("RCPT TO:<bob@example.test>").unwrap().code, 250);
    assert_eq!(c.command("DATA").unwrap().code, 354);
    c.send_raw(b"Subject: bounce of a bounce\r\n\r\nx\r\n.\r\n").unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    c.quit().ok();
    wait_queue_empty(&server);
    std::thread::sleep(Duration::from_millis(500));
    assert!(server.queue_ids().is_empty(), "a DSN was queued for <>");
    assert!(server.log().contains("bounced"), "{}", server.log_tail(20));
}

#[test]
fn expired_message_bounces_with_a_dsn() {
    let (_sink, bounces, server) =
        dsn_setup_with(SinkReplies { rcpt: "450 4.2.0 not now".into(), ..SinkReplies::default() }, "max_age = 3");
    send(&server, "alice@sender.test", &["bob@example.test"], "Subject: expire\r\n\r\nx\r\n");
    let dsn = wait_for(&bounces, 1, &server);
    let (_, rcpts) = python_dsn(&dsn[0].data);
    assert_eq!(rcpts[0].1, "failed");
    assert_eq!(rcpts[0].2, "4.2.0", "the last temporary status is reported");
    assert!(dsn[0].data_str().contains("expired"), "{}", dsn[0].data_str());
    wait_queue_empty(&server);
}

#[test]
fn queue_retry_forces_an_attempt() {
    // A long backoff: only `queue retry` can bring the second attempt soon.
    let sink = SmtpSink::with_replies(SinkReplies { data_end_first: vec!["451 4.3.0 later".into()], ..SinkReplies::default() });
    let server = Server::start(BIN, &format!("{}[delivery]\nretry_initial = 3600\nretry_max = 7200\n", local(&sink.url())));
    let id = send(&server, "alice@client.example.net", &["bob@example.test"], "Subject: r\r\n\r\nx\r\n");
    let deadline = Instant::now() + WAIT;
    while recipient(&server.queue(), &id, "bob@example.test")["status"] != "deferred" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let next = recipient(&server.queue(), &id, "bob@example.test")["next_attempt_s"].as_u64().unwrap();
    assert!(next > 1000, "next attempt in {next}s");
    let out = server.cli(&["queue", "retry", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for(&sink, 1, &server);
    wait_queue_empty(&server);
}

#[test]
fn opportunistic_starttls_to_the_next_hop() {
    let sink = SmtpSink::with_replies(SinkReplies { starttls: true, ..SinkReplies::default() });
    let server = Server::start(BIN, &format!("{}{FAST}", local(&sink.url())));
    send(&server, "alice@client.example.net", &["bob@example.test"], "Subject: tls\r\n\r\nx\r\n");
    let got = wait_for(&sink, 1, &server);
    assert!(got[0].tls, "the message did not travel over TLS");
}

#[test]
fn smarthost_auth_after_starttls() {
    let relay_host = SmtpSink::with_replies(SinkReplies {
        starttls: true,
        auth: Some(("relay user".into(), "s3cr:et".into())),
        ..SinkReplies::default()
    });
    let config = format!(
        "[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n{FAST}smarthost = \"smtp://relay%20user:s3cr%3Aet@{}\"\n",
        relay_host.addr()
    );
    let server = Server::start(BIN, &config);
    send(&server, "alice@client.example.net", &["zed@far.test"], "Subject: via relay\r\n\r\nx\r\n");
    let got = wait_for(&relay_host, 1, &server);
    assert!(got[0].tls);
    assert_eq!(got[0].authenticated.as_deref(), Some("relay user"));
    assert_eq!(got[0].rcpt_to, ["zed@far.test"]);
}

#[test]
fn smarthost_password_is_never_sent_without_tls() {
    let relay_host =
        SmtpSink::with_replies(SinkReplies { extensions: vec!["PIPELINING".into(), "AUTH PLAIN LOGIN".into()], ..SinkReplies::default() });
    let config = format!("[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n{FAST}smarthost = \"smtp://user:pw@{}\"\n", relay_host.addr());
    let server = Server::start(BIN, &config);
    let id = send(&server, "alice@client.example.net", &["zed@far.test"], "Subject: no tls\r\n\r\nx\r\n");
    let deadline = Instant::now() + WAIT;
    loop {
        let r = recipient(&server.queue(), &id, "zed@far.test");
        if r["status"] == "deferred" {
            assert!(r["last_reply"].as_str().unwrap().contains("without TLS"), "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(relay_host.messages().is_empty());
}

/// Sends one message with raw DSN parameters; returns the queue id.
fn send_dsn(server: &Server, mail: &str, rcpts: &[&str], body: &str) -> String {
    let mut c = SmtpClient::connect(server.smtp_addr()).unwrap();
    c.ehlo("client.example.net").unwrap();
    assert_eq!(c.command(mail).unwrap().code, 250);
    for r in rcpts {
        assert_eq!(c.command(r).unwrap().code, 250);
    }
    assert_eq!(c.command("DATA").unwrap().code, 354);
    c.send_raw(&mailgate_testkit::smtp::dot_stuff(body)).unwrap();
    let r = c.read_reply().unwrap();
    c.quit().ok();
    r.queue_id().unwrap_or_else(|| panic!("{r}"))
}

/// A next hop answering `sink_replies`, and sender.test (where DSNs go)
/// delivered to a second sink; `delivery` adds `[delivery]` keys.
fn dsn_setup(sink_replies: SinkReplies) -> (SmtpSink, SmtpSink, Server) {
    dsn_setup_with(sink_replies, "max_age = 3")
}

fn dsn_setup_with(sink_replies: SinkReplies, delivery: &str) -> (SmtpSink, SmtpSink, Server) {
    let sink = SmtpSink::with_replies(sink_replies);
    let bounces = SmtpSink::start();
    let config = format!(
        "{}[[domain]]\nname = \"sender.test\"\ndeliver = \"{}\"\ndkim = false\n{FAST}{delivery}\n",
        local(&sink.url()),
        bounces.url()
    );
    let server = Server::start(BIN, &config);
    (sink, bounces, server)
}

#[test]
fn notify_never_suppresses_the_bounce() {
    let (_sink, bounces, server) = dsn_setup(SinkReplies { rcpt: "550 5.1.1 no such user".into(), ..SinkReplies::default() });
    send_dsn(&server, "MAIL FROM:<alice@sender.test>", &["RCPT TO:<bob@example.test> NOTIFY=NEVER"], "Subject: never\r\n\r\nx\r\n");
    wait_queue_empty(&server);
    std::thread::sleep(Duration::from_millis(500));
    assert!(bounces.messages().is_empty(), "NOTIFY=NEVER must not produce a DSN");
}

#[test]
fn dsn_carries_envid_orcpt_and_the_full_message_for_ret_full() {
    let (_sink, bounces, server) = dsn_setup(SinkReplies { rcpt: "550 5.1.1 no such user".into(), ..SinkReplies::default() });
    let body = "Subject: full\r\nMessage-ID: <full@sender.test>\r\n\r\nthe whole body comes back\r\n";
    send_dsn(
        &server,
        "MAIL FROM:<alice@sender.test> RET=FULL ENVID=env+2B42",
        &["RCPT TO:<bob@example.test> NOTIFY=FAILURE ORCPT=rfc822;Bob+40example.test"],
        body,
    );
    let dsn = wait_for(&bounces, 1, &server);
    let text = dsn[0].data_str();
    assert!(text.contains("Original-Envelope-Id: env+42"), "{text}");
    assert!(text.contains("Original-Recipient: rfc822; Bob@example.test"), "{text}");
    assert!(text.contains("Content-Type: message/rfc822"), "{text}");
    assert!(text.contains("the whole body comes back"), "{text}");
    python_dsn(&dsn[0].data);
}

#[test]
fn dsn_returns_headers_only_for_ret_hdrs() {
    let (_sink, bounces, server) = dsn_setup(SinkReplies { rcpt: "550 5.1.1 no such user".into(), ..SinkReplies::default() });
    send_dsn(&server, "MAIL FROM:<alice@sender.test> RET=HDRS", &["RCPT TO:<bob@example.test>"], "Subject: hdrs\r\n\r\nsecret body\r\n");
    let dsn = wait_for(&bounces, 1, &server);
    let text = dsn[0].data_str();
    assert!(text.contains("Content-Type: text/rfc822-headers"), "{text}");
    assert!(text.contains("Subject: hdrs"), "{text}");
    assert!(!text.contains("secret body"), "{text}");
}

#[test]
fn notify_success_gets_a_delivery_report_when_the_next_hop_lacks_dsn() {
    let (sink, bounces, server) = dsn_setup(SinkReplies::default());
    send_dsn(&server, "MAIL FROM:<alice@sender.test>", &["RCPT TO:<bob@example.test> NOTIFY=SUCCESS"], "Subject: ok\r\n\r\nx\r\n");
    wait_for(&sink, 1, &server);
    let dsn = wait_for(&bounces, 1, &server);
    let (_, rcpts) = python_dsn(&dsn[0].data);
    assert_eq!(rcpts[0].1, "relayed");
    assert_eq!(rcpts[0].2, "2.0.0");
}

#[test]
fn delay_warning_after_the_configured_age() {
    let (_sink, bounces, server) =
        dsn_setup_with(SinkReplies { rcpt: "450 4.2.0 not now".into(), ..SinkReplies::default() }, "delay_warning = 2");
    send(&server, "alice@sender.test", &["bob@example.test"], "Subject: slow\r\n\r\nx\r\n");
    let dsn = wait_for(&bounces, 1, &server);
    let (_, rcpts) = python_dsn(&dsn[0].data);
    assert_eq!(rcpts[0].1, "delayed");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(bounces.messages().len(), 1, "only one delay warning per message");
    assert_eq!(server.queue_ids().len(), 1, "the message is still queued");
}
