//! Look-alike sender domains on inbound mail: flagged in a header and in
//! the log with the rule that fired, even though nothing else is wrong.

use std::time::Duration;

use mailgate_testkit::{Server, SmtpClient, SmtpSink};

const BIN: &str = env!("CARGO_BIN_EXE_mailgate");

fn deliver(server: &Server, sink: &SmtpSink, from: &str, header_from: &str, n: usize) -> String {
    let mut c = SmtpClient::connect(server.smtp_addr()).unwrap();
    c.ehlo("outside.test").unwrap();
    let body = format!("From: {header_from}\r\nSubject: lookalike {n}\r\n\r\nx\r\n");
    let mail = format!("MAIL FROM:<{from}> SMTPUTF8");
    assert_eq!(c.command(&mail).unwrap().code, 250);
    assert_eq!(c.command("RCPT TO:<bob@example.test>").unwrap().code, 250);
    assert_eq!(c.command("DATA").unwrap().code, 354);
    c.send_raw(&mailgate_testkit::smtp::dot_stuff(&body)).unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    c.quit().ok();
    let got = sink.wait_for(n, Duration::from_secs(20)).expect("delivered");
    got[n - 1].data_str()
}

#[test]
fn lookalikes_are_flagged_with_their_rule() {
    let sink = SmtpSink::start();
    let config = format!(
        "[[domain]]\nname = \"example.test\"\ndeliver = \"{}\"\ndkim = false\n[lookalike]\nprotect = [\"paypal.com\"]\n",
        sink.url()
    );
    let server = Server::start(BIN, &config);

    // Cyrillic а (U+0430) in the From: domain.
    let data = deliver(&server, &sink, "news@other.test", "CEO <ceo@exаmple.test>", 1);
    assert!(data.contains("X-Mailgate-Lookalike: rule=confusable; domain=xn--exmple-4nf.test; resembles=example.test"), "{data}");

    let data = deliver(&server, &sink, "billing@exmaple.test", "billing@exmaple.test", 2);
    assert!(data.contains("rule=edit-distance; domain=exmaple.test; resembles=example.test"), "{data}");

    let data = deliver(&server, &sink, "x@evil.test", "PayPal Service <x@evil.test>", 3);
    assert!(data.contains("rule=display-name; domain=evil.test; resembles=paypal.com"), "{data}");

    let data = deliver(&server, &sink, "a@example.test.evil.test", "a@example.test.evil.test", 4);
    assert!(data.contains("rule=embedded"), "{data}");

    let data = deliver(&server, &sink, "friend@unrelated.test", "Friend <friend@unrelated.test>", 5);
    assert!(!data.contains("X-Mailgate-Lookalike"), "{data}");
    assert!(server.log().contains("look-alike sender domain"));
}
