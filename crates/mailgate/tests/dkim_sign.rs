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

fn selectors(data: &str) -> Vec<String> {
    let mut s: Vec<String> = unfolded_signatures(data)
        .iter()
        .filter_map(|sig| sig.split(" s=").nth(1).and_then(|r| r.split(';').next()).map(str::to_string))
        .collect();
    s.sort();
    s
}

/// `name TXT value` pairs from `mailgate records` or `dkim rotate` output.
fn dkim_txt(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter(|l| l.contains("._domainkey.") && l.contains(" TXT "))
        .map(|l| {
            let name = l.split_whitespace().next().unwrap().to_string();
            let value: String = l.split(" TXT ").nth(1).unwrap().split('"').skip(1).step_by(2).collect();
            (name, value)
        })
        .collect()
}

/// Rotation: the pending key is not used while DNS lacks it; once DNS
/// serves it, signing switches and the old key is retiring.
#[test]
fn rotation_waits_for_dns_then_switches() {
    use mailgate_testkit::{DnsServer, Zone};
    let sink = SmtpSink::start();
    let dns = DnsServer::start(Zone::new());
    let config = format!(
        "{}[[domain]]\nname = \"example.test\"\ndeliver = \"{}\"\n[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n[dkim]\ndns_check_interval = 1\n",
        dns.config(),
        sink.url()
    );
    let server = Server::start(BIN, &config);
    let publish = |text: &str| {
        let mut zone = Zone::new();
        for (name, value) in dkim_txt(text) {
            zone = zone.txt(&name, &value);
        }
        dns.add(zone);
    };
    let records = String::from_utf8_lossy(&server.cli(&["records"]).stdout).to_string();
    publish(&records);
    let old = {
        let mut v: Vec<String> = dkim_txt(&records).iter().map(|(n, _)| n.split('.').next().unwrap().to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(old.len(), 2);

    let out = server.cli(&["dkim", "rotate", "--domain", "example.test", "--algorithm", "ed25519"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotate_out = String::from_utf8_lossy(&out.stdout).to_string();
    let new_selector = dkim_txt(&rotate_out)[0].0.split('.').next().unwrap().to_string();
    assert!(!old.contains(&new_selector));

    let send = |n: usize| {
        let mut c = SmtpClient::connect(server.smtp_addr()).unwrap();
        c.ehlo("app.example.test").unwrap();
        let body = format!("From: alice@example.test\r\nSubject: r{n}\r\n\r\nx\r\n");
        assert!(c.send_mail("alice@example.test", &["bob@example.test"], &body).unwrap().queue_id().is_some());
        let got = sink.wait_for(n, Duration::from_secs(20)).expect("delivered");
        selectors(&got[n - 1].data_str())
    };
    // Not published yet: still the old keys, even after a few checks.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(send(1), old);
    let status = String::from_utf8_lossy(&server.cli(&["dkim", "status", "--json"]).stdout).to_string();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let pending = status["keys"].as_array().unwrap().iter().find(|k| k["selector"] == new_selector.as_str()).unwrap().clone();
    assert_eq!(pending["state"], "pending");
    assert_eq!(pending["dns_matches"], false);

    publish(&rotate_out);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = 1;
    loop {
        n += 1;
        let now = send(n);
        if now.contains(&new_selector) {
            assert_eq!(now.len(), 2, "{now:?}");
            break;
        }
        assert_eq!(now, old);
        assert!(std::time::Instant::now() < deadline, "never switched to {new_selector}\n{}", server.log_tail(20));
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = String::from_utf8_lossy(&server.cli(&["dkim", "status", "--json"]).stdout).to_string();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let retiring = status["keys"].as_array().unwrap().iter().filter(|k| k["state"] == "retiring").count();
    assert_eq!(retiring, 1, "{status}");
}
