//! Sans-I/O tests of the session: dialogues as data, no sockets.

use super::*;
use crate::address::Host;

struct TestPolicy;

impl Policy for TestPolicy {
    fn check_mail(&self, _: &SessionInfo, _: &ReversePath, _: Option<u64>) -> Result<(), Reply> {
        Ok(())
    }

    fn check_rcpt(&self, info: &SessionInfo, _: &ReversePath, to: &Path) -> Result<Mailbox, Reply> {
        match to {
            Path::Mailbox { mailbox, source_route } if source_route.is_empty() && mailbox.routing_hack().is_none() => {
                let ours = matches!(mailbox.host(), Host::Domain(d) if d.as_str() == "example.test");
                if ours || info.trusted { Ok(mailbox.clone()) } else { Err(Reply::new(554, status::POLICY, "Relay access denied")) }
            }
            _ => Err(Reply::new(550, status::POLICY, "Sender-specified routing refused")),
        }
    }
}

fn session() -> Session {
    let mut cfg = SessionConfig::new("mx.test", Role::Mx);
    cfg.max_message_size = 1000;
    cfg.max_recipients = 3;
    cfg.max_errors = 5;
    let mut s = Session::new(Arc::new(cfg), Arc::new(TestPolicy), "192.0.2.1".parse().unwrap(), false);
    s.greeting();
    s
}

/// Replies as "CODE" strings; enqueued messages as "ENQUEUE".
fn run(s: &mut Session, input: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut actions = s.receive(input);
    loop {
        let mut next = Vec::new();
        for a in actions {
            match a {
                Action::Reply(r) => out.push(r.code.to_string()),
                Action::Enqueue(_) => {
                    out.push("ENQUEUE".into());
                    next = s.transaction_done(Ok(QueueId::new(1, 1)));
                }
                Action::Close => out.push("CLOSE".into()),
                Action::StartTls => out.push("STARTTLS".into()),
                Action::Authenticate(_) => out.push("AUTH".into()),
            }
        }
        if next.is_empty() {
            return out;
        }
        actions = next;
    }
}

const TX: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n";

#[test]
fn pipelined_transaction_in_one_write() {
    let mut s = session();
    let mut input = TX.to_vec();
    input.extend_from_slice(b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    assert_eq!(run(&mut s, &input), ["250", "250", "250", "354", "ENQUEUE", "250", "221", "CLOSE"]);
}

#[test]
fn enqueue_carries_envelope_and_unstuffed_body() {
    let mut s = session();
    let mut input = TX.to_vec();
    input.extend_from_slice(b"..dot\r\n.\r\n");
    let actions = s.receive(&input);
    let incoming = actions
        .into_iter()
        .find_map(|a| match a {
            Action::Enqueue(m) => Some(m),
            _ => None,
        })
        .unwrap();
    assert_eq!(incoming.data, b".dot\r\n");
    assert_eq!(incoming.envelope.recipients.len(), 1);
    assert_eq!(incoming.envelope.client.helo, "c.test");
}

#[test]
fn waits_for_spool_before_reading_pipelined_commands() {
    let mut s = session();
    let mut input = TX.to_vec();
    input.extend_from_slice(b"x\r\n.\r\nNOOP\r\n");
    let actions = s.receive(&input);
    assert!(matches!(actions.last(), Some(Action::Enqueue(_))));
    assert_eq!(s.waiting(), Waiting::Driver);
    let after = s.transaction_done(Err(Reply::new(451, status::SYSTEM_ERROR, "disk")));
    let codes: Vec<u16> = after
        .iter()
        .filter_map(|a| match a {
            Action::Reply(r) => Some(r.code),
            _ => None,
        })
        .collect();
    assert_eq!(codes, [451, 250]);
}

#[test]
fn smuggling_endings_never_split_a_message() {
    for fake in [&b"\n.\n"[..], b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n\0.\r\n"] {
        let mut s = session();
        let mut input = TX.to_vec();
        input.extend_from_slice(b"first");
        input.extend_from_slice(fake);
        input.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\nsmuggled\r\n.\r\n");
        let out = run(&mut s, &input);
        assert_eq!(out, ["250", "250", "250", "354", "550"], "ending {fake:?}");
    }
}

#[test]
fn bare_lf_command_is_refused() {
    let mut s = session();
    assert_eq!(run(&mut s, b"EHLO c.test\nNOOP\r\n"), ["500", "250"]);
}

#[test]
fn relay_and_routing_refused() {
    let mut s = session();
    let out = run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@other.test>\r\nRCPT TO:<b%other.test@example.test>\r\nRCPT TO:<@example.test:b@other.test>\r\nRCPT TO:<b@example.test.>\r\n",
    );
    assert_eq!(out, ["250", "250", "554", "550", "550", "501"]);
}

#[test]
fn recipient_limit() {
    let mut s = session();
    let out = run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nRCPT TO:<d@example.test>\r\n",
    );
    assert_eq!(out, ["250", "250", "250", "250", "250", "452"]);
}

#[test]
fn size_limits() {
    let mut s = session();
    assert_eq!(run(&mut s, b"EHLO c\r\nMAIL FROM:<a@x.test> SIZE=5000\r\n"), ["250", "552"]);
    let mut input = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n".to_vec();
    for _ in 0..30 {
        input.extend_from_slice(&[b'y'; 60]);
        input.extend_from_slice(b"\r\n");
    }
    input.extend_from_slice(b".\r\n");
    assert_eq!(run(&mut s, &input), ["250", "250", "354", "552"]);
}

#[test]
fn overlong_command_line() {
    let mut s = session();
    let mut input = b"NOOP ".to_vec();
    input.extend(std::iter::repeat_n(b'a', 600));
    input.extend_from_slice(b"\r\nNOOP\r\n");
    assert_eq!(run(&mut s, &input), ["500", "250"]);
    // The same, arriving in pieces.
    let mut s = session();
    let mut out = run(&mut s, &input[..520]);
    out.extend(run(&mut s, &input[520..]));
    assert_eq!(out, ["500", "250"]);
}

#[test]
fn error_limit_closes() {
    let mut s = session();
    let out = run(&mut s, b"X\r\nX\r\nX\r\nX\r\nX\r\nX\r\nNOOP\r\n");
    assert_eq!(out, ["500", "500", "500", "500", "500", "421", "CLOSE"]);
}

#[test]
fn bdat_chunks() {
    let mut s = session();
    let out = run(&mut s, b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.test>\r\nBDAT 4\r\nab\r\nBDAT 3 LAST\r\nc\r\nQUIT\r\n");
    assert_eq!(out, ["250", "250", "250", "250", "ENQUEUE", "250", "221", "CLOSE"]);
}

#[test]
fn bdat_without_transaction_consumes_chunk() {
    let mut s = session();
    // The chunk holds something that looks like a command; it must not run.
    let out = run(&mut s, b"EHLO c\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(out, ["250", "503", "250"]);
}

#[test]
fn bdat_bare_lf_refused() {
    let mut s = session();
    let out = run(&mut s, b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.test>\r\nBDAT 4 LAST\r\na\nb\n");
    assert_eq!(out, ["250", "250", "250", "550"]);
}

#[test]
fn sequence_errors() {
    let mut s = session();
    assert_eq!(run(&mut s, b"MAIL FROM:<a@x.test>\r\n"), ["503"]);
    assert_eq!(run(&mut s, b"HELO c\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"), ["250", "503", "503"]);
    assert_eq!(run(&mut s, b"MAIL FROM:<a@x.test> SIZE=1\r\n"), ["555"]);
    let mut s = session();
    assert_eq!(run(&mut s, b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nDATA\r\nMAIL FROM:<a@x.test>\r\n"), ["250", "250", "554", "503"]);
}

#[test]
fn dsn_parameters_reach_the_envelope() {
    let mut s = session();
    let input = b"EHLO c\r\nMAIL FROM:<a@x.test> RET=HDRS ENVID=e1\r\nRCPT TO:<b@example.test> NOTIFY=FAILURE ORCPT=rfc822;b@example.test\r\nDATA\r\nx\r\n.\r\n";
    let incoming = s
        .receive(input)
        .into_iter()
        .find_map(|a| match a {
            Action::Enqueue(m) => Some(m),
            _ => None,
        })
        .unwrap();
    let env = incoming.envelope;
    assert_eq!(env.ret, Some(crate::envelope::Ret::Hdrs));
    assert_eq!(env.envid.as_deref(), Some("e1"));
    assert!(env.recipients[0].notify.unwrap().failure);
    assert_eq!(env.recipients[0].orcpt.as_ref().unwrap().address, "b@example.test");
}

#[test]
fn shutdown_waits_for_transaction() {
    let mut s = session();
    run(&mut s, b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n");
    assert!(s.shutdown().is_empty());
    let out = run(&mut s, b"RCPT TO:<b@example.test>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(out, ["250", "354", "ENQUEUE", "250", "421", "CLOSE"]);
}

#[test]
fn cross_protocol_closes() {
    let mut s = session();
    assert_eq!(run(&mut s, b"GET / HTTP/1.1\r\n"), ["421", "CLOSE"]);
}

#[test]
fn error_limit_counts_bare_lf_and_long_lines() {
    let mut s = session();
    let out = run(&mut s, b"junk\njunk\njunk\njunk\njunk\njunk\njunk\nNOOP\r\n");
    assert_eq!(out, ["500", "500", "500", "500", "500", "421", "CLOSE"]);
}

#[test]
fn recipients_over_the_limit_keep_the_transaction() {
    let mut s = session();
    let mut input = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n".to_vec();
    for i in 0..10 {
        input.extend_from_slice(format!("RCPT TO:<r{i}@example.test>\r\n").as_bytes());
    }
    input.extend_from_slice(b"DATA\r\nx\r\n.\r\n");
    let out = run(&mut s, &input);
    assert_eq!(out.iter().filter(|c| *c == "452").count(), 7);
    assert!(out.contains(&"ENQUEUE".to_string()), "{out:?}");
}

#[test]
fn http_with_bare_lf_is_dropped() {
    let mut s = session();
    assert_eq!(run(&mut s, b"GET / HTTP/1.0\nHost: x\n\n"), ["421", "CLOSE"]);
}

#[test]
fn twenty_digit_size_is_too_big_not_a_syntax_error() {
    let mut s = session();
    assert_eq!(run(&mut s, b"EHLO c\r\nMAIL FROM:<a@x.test> SIZE=99999999999999999999\r\n"), ["250", "552"]);
}

fn submission() -> Session {
    let mut cfg = SessionConfig::new("mx.test", Role::Submission);
    cfg.starttls = true;
    cfg.auth = true;
    let mut s = Session::new(Arc::new(cfg), Arc::new(TestPolicy), "192.0.2.1".parse().unwrap(), false);
    s.greeting();
    s
}

fn codes_and_actions(actions: Vec<Action>) -> Vec<String> {
    actions
        .into_iter()
        .map(|a| match a {
            Action::Reply(r) => r.code.to_string(),
            Action::StartTls => "STARTTLS".into(),
            Action::Authenticate(c) => format!("AUTH {} {} {}", c.mechanism, c.username, c.password),
            Action::Enqueue(_) => "ENQUEUE".into(),
            Action::Close => "CLOSE".into(),
        })
        .collect()
}

#[test]
fn starttls_discards_pipelined_commands_and_resets_state() {
    let mut s = submission();
    let out = codes_and_actions(s.receive(b"EHLO c\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<a@x.test>\r\n"));
    assert_eq!(out, ["250", "220", "STARTTLS"]);
    assert!(codes_and_actions(s.tls_established("TLSv1.3".into())).is_empty());
    // Fresh EHLO needed; STARTTLS no longer offered or accepted.
    assert_eq!(codes_and_actions(s.receive(b"MAIL FROM:<a@x.test>\r\n")), ["503"]);
    let ehlo = s.receive(b"EHLO c\r\n");
    let Action::Reply(r) = &ehlo[0] else { panic!() };
    assert!(!r.lines.iter().any(|l| l == "STARTTLS"), "{r:?}");
    assert!(r.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"), "{r:?}");
    assert_eq!(codes_and_actions(s.receive(b"STARTTLS\r\n")), ["503"]);
}

#[test]
fn starttls_with_argument_is_a_syntax_error() {
    let mut s = submission();
    assert_eq!(codes_and_actions(s.receive(b"EHLO c\r\nSTARTTLS now\r\n")), ["250", "501"]);
}

#[test]
fn no_auth_before_tls() {
    let mut s = submission();
    let r = s.receive(b"EHLO c\r\n");
    let Action::Reply(r) = &r[0] else { panic!() };
    assert!(!r.lines.iter().any(|l| l.starts_with("AUTH")));
    assert_eq!(codes_and_actions(s.receive(b"AUTH PLAIN AGEAYg==\r\n")), ["538"]);
}

#[test]
fn auth_plain_and_login() {
    let mut s = submission();
    s.receive(b"EHLO c\r\nSTARTTLS\r\n");
    s.tls_established("TLSv1.3".into());
    // \0alice\0secret
    let out = codes_and_actions(s.receive(b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<a@x.test>\r\n"));
    assert_eq!(out, ["250", "AUTH PLAIN alice secret"]);
    let out = codes_and_actions(s.auth_done(AuthVerdict::Accepted("alice".into())));
    assert_eq!(out, ["235", "250"], "the pipelined MAIL runs after the verdict");
    assert_eq!(s.info().authenticated_as.as_deref(), Some("alice"));

    let mut s = submission();
    s.receive(b"EHLO c\r\nSTARTTLS\r\n");
    s.tls_established("TLSv1.3".into());
    assert_eq!(codes_and_actions(s.receive(b"EHLO c\r\nAUTH LOGIN\r\n")), ["250", "334"]);
    assert_eq!(codes_and_actions(s.receive(b"Ym9i\r\n")), ["334"]);
    assert_eq!(codes_and_actions(s.receive(b"d3Jvbmc=\r\n")), ["AUTH LOGIN bob wrong"]);
    assert_eq!(codes_and_actions(s.auth_done(AuthVerdict::Rejected)), ["535"]);
    assert_eq!(codes_and_actions(s.receive(b"AUTH LOGIN\r\n*\r\n")), ["334", "501"]);
    s.receive(b"AUTH PLAIN AGIAeA==\r\n");
    assert_eq!(codes_and_actions(s.auth_done(AuthVerdict::Throttled)), ["454"], "throttled: 454 4.7.0, still open");
    assert_eq!(codes_and_actions(s.receive(b"NOOP\r\n")), ["250"]);
}

#[test]
fn auth_plain_for_another_identity_is_refused() {
    let mut s = submission();
    s.receive(b"EHLO c\r\nSTARTTLS\r\n");
    s.tls_established("TLSv1.3".into());
    // ceo\0alice\0secret: alice asking to act as ceo.
    assert_eq!(codes_and_actions(s.receive(b"EHLO c\r\nAUTH PLAIN Y2VvAGFsaWNlAHNlY3JldA==\r\n")), ["250", "535"]);
}

/// The message a run enqueued, with the body bytes the session still held.
fn enqueued(actions: Vec<Action>) -> Option<Vec<u8>> {
    actions.into_iter().find_map(|a| match a {
        Action::Enqueue(m) => Some(m.data),
        _ => None,
    })
}

#[test]
fn body_taken_by_the_driver_still_counts_and_is_not_handed_over_twice() {
    let mut s = session();
    assert_eq!(run(&mut s, TX), ["250", "250", "250", "354"]);
    s.receive(b"Subject: a\r\n\r\n..first\r\n");
    assert_eq!(s.buffered_body(), b"Subject: a\r\n\r\n.first\r\n".len());
    let taken = s.take_body();
    assert_eq!(taken, b"Subject: a\r\n\r\n.first\r\n");
    assert_eq!(s.buffered_body(), 0);
    let tail = enqueued(s.receive(b"second\r\n.\r\n")).expect("enqueued");
    assert_eq!(tail, b"second\r\n");
}

#[test]
fn taken_body_counts_toward_the_size_limit() {
    let mut s = session();
    run(&mut s, TX);
    // max_message_size is 1000: take 900, then send 200 more.
    s.receive(&[b"x".repeat(898), b"\r\n".to_vec()].concat());
    assert_eq!(s.take_body().len(), 900);
    s.receive(&[b"y".repeat(198), b"\r\n".to_vec()].concat());
    let out: Vec<String> =
        s.receive(b".\r\n").into_iter().filter_map(|a| if let Action::Reply(r) = a { Some(r.code.to_string()) } else { None }).collect();
    assert_eq!(out, ["552"]);
}

#[test]
fn over_budget_during_data_reads_to_the_end_then_451() {
    let mut s = session();
    run(&mut s, TX);
    s.receive(b"Subject: a\r\n\r\npart one\r\n");
    s.over_budget();
    assert_eq!(s.buffered_body(), 0);
    s.receive(b"more content that is dropped\r\n");
    assert_eq!(s.buffered_body(), 0, "content after the budget ran out is not kept");
    // MAIL after the fake end would be a command only after the real one.
    let actions = s.receive(b".\r\nMAIL FROM:<a@x.test>\r\n");
    let replies: Vec<Reply> = actions.into_iter().filter_map(|a| if let Action::Reply(r) = a { Some(r) } else { None }).collect();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!((replies[0].code, replies[0].status), (451, Some(status::OVERLOADED)));
    assert_eq!(replies[1].code, 250, "the session goes on after the 451");
}

#[test]
fn over_budget_during_bdat_fails_the_chunk_and_the_transaction() {
    let mut s = session();
    let out = run(&mut s, b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.test>\r\nBDAT 10\r\n12345");
    assert_eq!(out, ["250", "250", "250"]);
    s.over_budget();
    assert_eq!(run(&mut s, b"67890"), ["451"]);
    // The transaction is gone: the next chunk has none to join.
    assert_eq!(run(&mut s, b"BDAT 3 LAST\r\nabc"), ["503"]);
}

/// Runs one DATA transaction with a `len`-octet line (CRLF excluded) and
/// returns the replies and what was enqueued.
fn long_line_dialogue(role: Role, trusted: bool, len: usize, bdat: bool) -> (Vec<String>, Option<Box<Incoming>>) {
    let mut cfg = SessionConfig::new("mx.test", role);
    cfg.max_submission_line = 4096;
    let mut s = Session::new(Arc::new(cfg), Arc::new(TestPolicy), "192.0.2.1".parse().unwrap(), trusted);
    s.greeting();
    let mut body = b"Subject: x\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'h', len));
    body.extend_from_slice(b"\r\nend\r\n");
    let mut input = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.test>\r\n".to_vec();
    if bdat {
        input.extend_from_slice(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
        input.extend_from_slice(&body);
    } else {
        input.extend_from_slice(b"DATA\r\n");
        input.extend_from_slice(&body);
        input.extend_from_slice(b".\r\n");
    }
    let mut codes = Vec::new();
    let mut incoming = None;
    // Fed in small pieces, as a slow client would send it.
    for piece in input.chunks(700) {
        for a in s.receive(piece) {
            match a {
                Action::Reply(r) => {
                    let status = r.status.map(|st| st.to_string()).unwrap_or_default();
                    codes.push(format!("{} {status} {}", r.code, r.lines.join(" ")))
                }
                Action::Enqueue(m) => incoming = Some(m),
                _ => {}
            }
        }
    }
    (codes, incoming)
}

#[test]
fn mx_refuses_lines_over_1000_octets() {
    for bdat in [false, true] {
        let (codes, incoming) = long_line_dialogue(Role::Mx, false, 999, bdat);
        assert!(incoming.is_none(), "bdat={bdat}");
        let last = codes.last().unwrap();
        assert!(last.starts_with("550 5.6.0") && last.contains("1000 octets"), "bdat={bdat}: {codes:?}");
        // 998 + CRLF is the longest line allowed, and not "long".
        let (_, incoming) = long_line_dialogue(Role::Mx, false, 998, bdat);
        assert!(!incoming.expect("998 octets accepted").long_lines);
    }
}

#[test]
fn submission_and_trusted_accept_long_lines_and_flag_them() {
    for (role, trusted) in [(Role::Submission, false), (Role::Submissions, false), (Role::Mx, true)] {
        for bdat in [false, true] {
            let (codes, incoming) = long_line_dialogue(role, trusted, 3000, bdat);
            let incoming = incoming.unwrap_or_else(|| panic!("{role:?} trusted={trusted} bdat={bdat}: {codes:?}"));
            assert!(incoming.long_lines, "{role:?} bdat={bdat}");
            assert!(incoming.data.windows(3000).any(|w| w.iter().all(|&b| b == b'h')), "line kept whole");
            let (_, incoming) = long_line_dialogue(role, trusted, 998, bdat);
            assert!(!incoming.expect("short lines accepted").long_lines, "{role:?} bdat={bdat}");
        }
    }
}

#[test]
fn submission_refuses_lines_over_max_submission_line() {
    for bdat in [false, true] {
        // 4094 + CRLF is exactly the limit of 4096.
        let (_, incoming) = long_line_dialogue(Role::Submission, false, 4094, bdat);
        assert!(incoming.is_some(), "bdat={bdat}");
        let (codes, incoming) = long_line_dialogue(Role::Submission, false, 4095, bdat);
        assert!(incoming.is_none(), "bdat={bdat}");
        let last = codes.last().unwrap();
        assert!(last.starts_with("550 5.6.0") && last.contains("4096 octets"), "bdat={bdat}: {codes:?}");
    }
}
