use super::*;
use crate::reply::ReplyReader;

fn reply(s: &str) -> Reply {
    let mut r = ReplyReader::new();
    r.feed(s.as_bytes());
    r.next_reply().unwrap().unwrap()
}

fn message(rcpts: &[&str]) -> OutboundMessage {
    OutboundMessage {
        sender: ReversePath::Mailbox(Mailbox::parse("a@x.test", false).unwrap()),
        recipients: rcpts
            .iter()
            .map(|r| OutboundRecipient { address: Mailbox::parse(r, false).unwrap(), notify: None, orcpt: None })
            .collect(),
        size: 10,
        body: BodyType::SevenBit,
        smtputf8: false,
        ret: None,
        envid: None,
    }
}

fn client(lmtp: bool) -> Client {
    Client::new(ClientConfig { helo: "me.test".into(), lmtp, tls: TlsMode::Opportunistic, auth: None, danger_auth_without_tls: false })
}

fn auth_client() -> Client {
    let auth = Some(("user".to_string(), "secret".to_string()));
    Client::new(ClientConfig { helo: "me.test".into(), lmtp: false, tls: TlsMode::Opportunistic, auth, danger_auth_without_tls: false })
}

fn sent(actions: &[ClientAction]) -> String {
    actions
        .iter()
        .filter_map(|a| match a {
            ClientAction::Send(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

fn finished(actions: Vec<ClientAction>) -> Option<Vec<Outcome>> {
    actions.into_iter().find_map(|a| match a {
        ClientAction::Finished(o) => Some(o),
        _ => None,
    })
}

fn ready(c: &mut Client, ehlo: &str) {
    assert_eq!(sent(&c.on_reply(reply("220 hi\r\n"))), "EHLO me.test\r\n");
    assert!(c.on_reply(reply(ehlo)).contains(&ClientAction::Ready));
}

#[test]
fn pipelined_mixed_recipients() {
    let mut c = client(false);
    ready(&mut c, "250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n");
    let a = c.send_message(message(&["a@y.test", "b@y.test", "c@y.test"]));
    assert_eq!(sent(&a), "MAIL FROM:<a@x.test> SIZE=10\r\nRCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n");
    assert!(c.on_reply(reply("250 ok\r\n")).is_empty());
    c.on_reply(reply("250 ok\r\n"));
    c.on_reply(reply("550 5.1.1 no such user\r\n"));
    c.on_reply(reply("450 4.2.0 later\r\n"));
    assert_eq!(c.on_reply(reply("354 go\r\n")), vec![ClientAction::SendContent(ContentMode::Data)]);
    let o = finished(c.on_reply(reply("250 2.0.0 queued\r\n"))).unwrap();
    assert!(matches!(o[0], Outcome::Delivered(_)));
    assert!(matches!(o[1], Outcome::Permanent(_)));
    assert!(matches!(o[2], Outcome::Temporary(_)));
    assert_eq!(sent(&c.next_message()), "RSET\r\n");
    assert!(c.on_reply(reply("250 ok\r\n")).contains(&ClientAction::Ready));
}

#[test]
fn without_pipelining_one_command_at_a_time() {
    let mut c = client(false);
    ready(&mut c, "250 mx\r\n");
    assert_eq!(sent(&c.send_message(message(&["a@y.test", "b@y.test"]))), "MAIL FROM:<a@x.test>\r\n");
    assert_eq!(sent(&c.on_reply(reply("250 ok\r\n"))), "RCPT TO:<a@y.test>\r\n");
    assert_eq!(sent(&c.on_reply(reply("250 ok\r\n"))), "RCPT TO:<b@y.test>\r\n");
    assert_eq!(sent(&c.on_reply(reply("250 ok\r\n"))), "DATA\r\n");
    assert_eq!(c.on_reply(reply("354 go\r\n")), vec![ClientAction::SendContent(ContentMode::Data)]);
    let o = finished(c.on_reply(reply("451 4.3.0 disk\r\n"))).unwrap();
    assert!(o.iter().all(|o| matches!(o, Outcome::Temporary(_))));
}

#[test]
fn all_recipients_refused_sends_no_data() {
    let mut c = client(false);
    ready(&mut c, "250-mx\r\n250 CHUNKING\r\n");
    c.send_message(message(&["a@y.test"]));
    c.on_reply(reply("250 ok\r\n"));
    let o = finished(c.on_reply(reply("550 5.1.1 unknown\r\n"))).unwrap();
    assert!(matches!(o[0], Outcome::Permanent(_)));
}

#[test]
fn bdat_when_chunking() {
    let mut c = client(false);
    ready(&mut c, "250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
    assert_eq!(sent(&c.send_message(message(&["a@y.test"]))), "MAIL FROM:<a@x.test>\r\nRCPT TO:<a@y.test>\r\n");
    c.on_reply(reply("250 ok\r\n"));
    let a = c.on_reply(reply("250 ok\r\n"));
    assert_eq!(sent(&a), "BDAT 10 LAST\r\n");
    assert!(a.contains(&ClientAction::SendContent(ContentMode::BdatLast)));
    assert!(finished(c.on_reply(reply("250 ok\r\n"))).is_some());
}

#[test]
fn lmtp_per_recipient_after_data() {
    let mut c = client(true);
    assert_eq!(sent(&c.on_reply(reply("220 lmtp\r\n"))), "LHLO me.test\r\n");
    c.on_reply(reply("250-lmtp\r\n250 PIPELINING\r\n"));
    c.send_message(message(&["a@y.test", "b@y.test", "c@y.test"]));
    c.on_reply(reply("250 ok\r\n"));
    c.on_reply(reply("250 ok\r\n"));
    c.on_reply(reply("550 no\r\n"));
    c.on_reply(reply("250 ok\r\n"));
    c.on_reply(reply("354 go\r\n"));
    assert!(c.on_reply(reply("250 a done\r\n")).is_empty());
    let o = finished(c.on_reply(reply("452 4.2.2 c over quota\r\n"))).unwrap();
    assert!(matches!(o[0], Outcome::Delivered(_)));
    assert!(matches!(o[1], Outcome::Permanent(_)));
    assert!(matches!(o[2], Outcome::Temporary(_)));
}

#[test]
fn helo_fallback_and_size_check() {
    let mut c = client(false);
    c.on_reply(reply("220 old\r\n"));
    assert_eq!(sent(&c.on_reply(reply("502 what\r\n"))), "HELO me.test\r\n");
    assert!(c.on_reply(reply("250 ok\r\n")).contains(&ClientAction::Ready));
    let mut c = client(false);
    ready(&mut c, "250-mx\r\n250 SIZE 5\r\n");
    let o = finished(c.send_message(message(&["a@y.test"]))).unwrap();
    assert_eq!(o[0].reply().code, 552);
}

#[test]
fn greeting_failure_closes_with_reason() {
    let mut c = client(false);
    let a = c.on_reply(reply("421 4.3.2 busy\r\n"));
    assert!(matches!(&a[..], [ClientAction::Close(Some(Outcome::Temporary(_)))]));
}

#[test]
fn starttls_then_fresh_ehlo() {
    let mut c = client(false);
    c.on_reply(reply("220 hi\r\n"));
    assert_eq!(sent(&c.on_reply(reply("250-mx\r\n250 STARTTLS\r\n"))), "STARTTLS\r\n");
    assert_eq!(c.on_reply(reply("220 go\r\n")), vec![ClientAction::StartTls]);
    assert_eq!(sent(&c.tls_established()), "EHLO me.test\r\n");
    assert!(c.on_reply(reply("250-mx\r\n250 PIPELINING\r\n")).contains(&ClientAction::Ready));
    assert!(c.tls_active());
    assert!(c.extensions().unwrap().pipelining);
}

#[test]
fn abort_mid_transaction_is_temporary() {
    let mut c = client(false);
    ready(&mut c, "250-mx\r\n250 PIPELINING\r\n");
    c.send_message(message(&["a@y.test", "b@y.test"]));
    c.on_reply(reply("250 ok\r\n"));
    c.on_reply(reply("550 no\r\n"));
    let o = c.abort("connection lost").unwrap();
    assert!(matches!(o[0], Outcome::Permanent(_)));
    assert!(matches!(o[1], Outcome::Temporary(_)));
}

#[test]
fn dot_stuffing() {
    assert_eq!(dot_stuff(b".a\r\nb\r\n..c\r\n"), b"..a\r\nb\r\n...c\r\n.\r\n");
    assert_eq!(dot_stuff(b"x"), b"x\r\n.\r\n");
    assert_eq!(dot_stuff(b""), b".\r\n");
    // Fed in pieces that split lines, CRLFs and dots: the same bytes.
    let content = b".a\r\n..b\r\nc.\r\n.\r\nend\r";
    for split in 0..content.len() {
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::new();
        stuffer.push(&content[..split], &mut out);
        stuffer.push(&content[split..], &mut out);
        stuffer.finish(&mut out);
        assert_eq!(out, dot_stuff(content), "split at {split}");
    }
    assert_eq!(dot_stuff(b"x\r"), b"x\r\r\n.\r\n");
}

#[test]
fn auth_plain_only_after_tls() {
    let mut c = auth_client();
    c.on_reply(reply("220 hi\r\n"));
    // No STARTTLS offered: credentials are never sent in clear.
    let a = c.on_reply(reply("250-relay\r\n250 AUTH PLAIN LOGIN\r\n"));
    assert!(sent(&a).is_empty());
    assert!(matches!(&a[..], [ClientAction::Close(Some(Outcome::Temporary(_)))]));

    let mut c = auth_client();
    c.on_reply(reply("220 hi\r\n"));
    c.on_reply(reply("250-relay\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"));
    c.on_reply(reply("220 go\r\n"));
    c.tls_established();
    let a = c.on_reply(reply("250-relay\r\n250 AUTH PLAIN LOGIN\r\n"));
    assert_eq!(sent(&a), "AUTH PLAIN AHVzZXIAc2VjcmV0\r\n");
    assert!(c.on_reply(reply("235 2.7.0 ok\r\n")).contains(&ClientAction::Ready));
}

#[test]
fn auth_login_and_failure_defers() {
    let mut c = auth_client();
    c.on_reply(reply("220 hi\r\n"));
    c.on_reply(reply("250-relay\r\n250 STARTTLS\r\n"));
    c.on_reply(reply("220 go\r\n"));
    c.tls_established();
    assert_eq!(sent(&c.on_reply(reply("250-relay\r\n250 AUTH LOGIN\r\n"))), "AUTH LOGIN\r\n");
    assert_eq!(sent(&c.on_reply(reply("334 VXNlcm5hbWU6\r\n"))), "dXNlcg==\r\n");
    assert_eq!(sent(&c.on_reply(reply("334 UGFzc3dvcmQ6\r\n"))), "c2VjcmV0\r\n");
    let a = c.on_reply(reply("535 5.7.8 bad credentials\r\n"));
    assert!(matches!(&a[..], [ClientAction::Close(Some(Outcome::Temporary(_)))]));
}
