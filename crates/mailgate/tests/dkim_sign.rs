//! Central DKIM signing end to end: what leaves through mailgate for one of
//! its domains carries an Ed25519 and an RSA signature; inbound mail and
//! mail for foreign `From:` domains are not signed.

use std::time::Duration;

use mailgate_testkit::{Server, SmtpClient, SmtpSink};

const BIN: &str = env!("CARGO_BIN_EXE_mailgate");

fn setup() -> (SmtpSink, Server) {
    let sink = SmtpSink::start();
    // example.test is ours (signed); far.test is delivered to the sink too.
    let config = format!(
        "[[domain]]\nname = \"example.test\"\ndeliver = \"{0}\"\n[[domain]]\nname = \"far.test\"\ndeliver = \"{0}\"\ndkim = false\n[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n",
        sink.url()
    );
    (sink, Server::start(BIN, &config))
}

fn unfolded_signatures(data: &str) -> Vec<String> {
    let unfolded = data.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.lines().filter(|l| l.starts_with("DKIM-Signature:")).map(str::to_string).collect()
}

#[test]
fn outbound_mail_gets_ed25519_and_rsa_signatures() {
    let (sink, server) = setup();
    let mut c = SmtpClient::connect(server.smtp_addr()).unwrap();
    c.ehlo("app.example.test").unwrap();
    let body = "From: Alice <alice@example.test>\r\nTo: bob@far.test\r\nSubject: signed\r\nDate: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <s1@example.test>\r\n\r\nhello\r\n";
    assert!(c.send_mail("alice@example.test", &["bob@far.test"], body).unwrap().queue_id().is_some());
    let got = sink.wait_for(1, Duration::from_secs(20)).expect("delivered");
    let sigs = unfolded_signatures(&got[0].data_str());
    assert_eq!(sigs.len(), 2, "{sigs:?}");
    assert!(sigs.iter().any(|s| s.contains("a=ed25519-sha256;")), "{sigs:?}");
    assert!(sigs.iter().any(|s| s.contains("a=rsa-sha256;")), "{sigs:?}");
    for s in &sigs {
        assert!(s.contains(" d=example.test;") && s.contains(" c=relaxed/relaxed;") && s.contains(" t="), "{s}");
        assert!(!s.contains(" l="), "never l=: {s}");
        // From, Subject, Date, To, Message-ID are oversigned.
        let h = s.split(" h=").nth(1).unwrap().split(';').next().unwrap();
        let names: Vec<&str> = h.split(':').map(str::trim).collect();
        for name in ["from", "subject", "date", "to", "message-id"] {
            assert_eq!(names.iter().filter(|n| **n == name).count(), 2, "{name} in {h}");
        }
    }
    // The key records the server generated on its first start exist.
    let out = server.cli(&["records"]);
    let records = String::from_utf8_lossy(&out.stdout);
    assert_eq!(records.matches("._domainkey.example.test.").count(), 2, "{records}");
}

#[test]
fn foreign_from_and_inbound_mail_are_not_signed() {
    let (sink, server) = setup();
    // A trusted client relaying mail whose From: is not ours.
    let mut c = SmtpClient::connect(server.smtp_addr()).unwrap();
    c.ehlo("app.example.test").unwrap();
    let body = "From: someone@elsewhere.test\r\nSubject: foreign\r\n\r\nx\r\n";
    assert!(c.send_mail("someone@elsewhere.test", &["bob@far.test"], body).unwrap().queue_id().is_some());
    let got = sink.wait_for(1, Duration::from_secs(20)).expect("delivered");
    assert!(unfolded_signatures(&got[0].data_str()).is_empty());
    c.quit().ok();

    // Inbound: an untrusted client (not in trusted_networks) sending to us.
    let sink2 = SmtpSink::start();
    let inbound = Server::start(
        BIN,
        &format!("[[domain]]\nname = \"example.test\"\ndeliver = \"{}\"\n[relay]\ntrusted_networks = [\"10.0.0.0/8\"]\n", sink2.url()),
    );
    let mut c = SmtpClient::connect(inbound.smtp_addr()).unwrap();
    c.ehlo("outside.test").unwrap();
    let body = "From: spoof@example.test\r\nSubject: inbound\r\n\r\nx\r\n";
    assert!(c.send_mail("x@outside.test", &["bob@example.test"], body).unwrap().queue_id().is_some());
    let got = sink2.wait_for(1, Duration::from_secs(20)).expect("delivered");
    assert!(unfolded_signatures(&got[0].data_str()).is_empty(), "inbound mail must never carry our signature");
}
