//! A whole SMTP dialogue into the sans-I/O session, split into reads at
//! positions taken from the input, with invariants checked on every action.
//!
//! Input layout:
//! - byte 0: flags
//!   - bit 0: the client is trusted
//!   - bit 1: submission listener instead of mx
//!   - bit 2: small limits (2 KiB messages, 100-octet text lines, 3 errors)
//!   - bit 3: every other transaction_done reports a 451 instead of a queue id
//!   - bit 4: call shutdown() before the read chosen by byte 1's high nibble
//!   - bit 5: call timeout() after the last read (if not closed yet)
//! - byte 1: low nibble = number N of read boundaries, high nibble = the read
//!   before which shutdown() is called (with bit 4)
//! - N bytes: length of each of the first N reads (the last read gets the rest)
//! - the rest: what the client sends
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mailgate_core::address::{Host, Path};
use mailgate_core::reply::{Reply, status};
use mailgate_core::session::{Action, AuthVerdict, Policy, Role, Session, SessionConfig, SessionInfo, Waiting};
use mailgate_core::{Domain, Mailbox, QueueId, ReversePath};

/// Accepts any sender except at refused.test, and recipients at example.test
/// (plus <postmaster>).
struct TestPolicy;

fn example() -> Domain {
    Domain::parse("example.test", false).unwrap()
}

impl Policy for TestPolicy {
    fn check_mail(&self, _info: &SessionInfo, from: &ReversePath, _size: Option<u64>) -> Result<(), Reply> {
        if let ReversePath::Mailbox(m) = from {
            if m.domain().is_some_and(|d| d.as_str() == "refused.test") {
                return Err(Reply::new(550, status::POLICY, "sender refused"));
            }
        }
        Ok(())
    }

    fn check_rcpt(&self, _info: &SessionInfo, _from: &ReversePath, to: &Path) -> Result<Mailbox, Reply> {
        match to {
            Path::Postmaster => Ok(Mailbox::from_parts("postmaster", example()).unwrap()),
            Path::Mailbox { mailbox, .. } => match mailbox.host() {
                Host::Domain(d) if *d == example() => Ok(mailbox.clone()),
                _ => Err(Reply::new(554, status::POLICY, "Relay access denied")),
            },
            Path::Null => Err(Reply::new(501, status::BAD_DEST_SYNTAX, "Empty recipient")),
        }
    }
}

struct Checker {
    max_size: u64,
    max_line: usize,
    closed: bool,
    enqueues: usize,
    data_go_aheads: usize,
    fail_next: bool,
    fail_alternate: bool,
}

impl Checker {
    fn check_reply(&mut self, r: &Reply) {
        assert!((200..=599).contains(&r.code), "reply code {} out of range", r.code);
        if r.code == 354 {
            self.data_go_aheads += 1;
        }
        if let Some(st) = r.status {
            // RFC 3463 §2: the class of the enhanced code matches the reply.
            assert!(matches!(st.class, 2 | 4 | 5), "status class {} in {r}", st.class);
            assert_eq!(u16::from(st.class), r.code / 100, "status {st} does not match code {}", r.code);
        }
        let wire = r.to_wire();
        assert!(wire.ends_with(b"\r\n"), "reply without CRLF: {wire:?}");
        let code = r.code.to_string();
        let lines: Vec<&[u8]> = wire[..wire.len() - 2].split(|&b| b == b'\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let line = if i + 1 < lines.len() { line.strip_suffix(b"\r").expect("LF without CR in reply") } else { line };
            assert!(!line.contains(&b'\r'), "bare CR in reply {wire:?}");
            assert!(line.starts_with(code.as_bytes()), "reply line without its code: {wire:?}");
            let sep = line.get(3).copied();
            let want = if i + 1 < lines.len() { b'-' } else { b' ' };
            assert_eq!(sep, Some(want), "reply line separator in {wire:?}");
        }
    }

    fn check_message(&self, env: &mailgate_core::Envelope, data: &[u8]) {
        assert!(!env.recipients.is_empty(), "message enqueued without recipients");
        for r in &env.recipients {
            assert!(matches!(r.address.host(), Host::Domain(d) if *d == example()), "recipient {} bypassed policy", r.address);
        }
        assert!(data.len() as u64 <= self.max_size, "message of {} octets over the {} limit", data.len(), self.max_size);
        assert!(!data.contains(&0), "NUL in accepted content");
        for (i, &b) in data.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && data[i - 1] == b'\r', "bare LF at {i} in accepted content");
            }
            if b == b'\r' {
                assert!(data.get(i + 1) == Some(&b'\n'), "bare CR at {i} in accepted content");
            }
        }
        for line in data.split_inclusive(|&b| b == b'\n') {
            assert!(line.len() <= self.max_line, "accepted a {}-octet line (limit {})", line.len(), self.max_line);
        }
    }

    /// Checks one batch of actions and answers any Enqueue, recursively.
    fn drive(&mut self, session: &mut Session, actions: Vec<Action>) {
        if self.closed {
            assert!(actions.is_empty(), "actions after Close: {actions:?}");
            return;
        }
        let n = actions.len();
        let mut enqueue = None;
        let mut follow_up = None;
        for (i, action) in actions.into_iter().enumerate() {
            match action {
                Action::Reply(r) => self.check_reply(&r),
                Action::Close => {
                    assert_eq!(i + 1, n, "actions after Close in the same batch");
                    assert_eq!(session.waiting(), Waiting::Closed);
                    self.closed = true;
                }
                Action::Enqueue(incoming) => {
                    // The session stops at Enqueue until the driver answers.
                    assert_eq!(i + 1, n, "actions after Enqueue in the same batch");
                    assert_eq!(session.waiting(), Waiting::Driver);
                    self.check_message(&incoming.envelope, &incoming.data);
                    // The flag may be set by a dot-stuffed line of 1000
                    // octets, but never missing for a longer one.
                    let long = incoming.data.split_inclusive(|&b| b == b'\n').any(|l| l.len() > 1000);
                    assert!(!long || incoming.long_lines, "a line over 1000 octets not flagged");
                    self.enqueues += 1;
                    enqueue = Some(incoming);
                }
                Action::StartTls => {
                    // The session waits for the handshake; pretend it worked.
                    assert_eq!(i + 1, n, "actions after StartTls in the same batch");
                    assert_eq!(session.waiting(), Waiting::Driver);
                    follow_up = Some(session.tls_established("version=TLSv1.3 cipher=fuzz".into()));
                }
                Action::Authenticate(creds) => {
                    assert_eq!(i + 1, n, "actions after Authenticate in the same batch");
                    assert_eq!(session.waiting(), Waiting::Driver);
                    let verdict = match creds.username.as_str() {
                        "good" => AuthVerdict::Accepted("good".into()),
                        "slow" => AuthVerdict::Throttled,
                        _ => AuthVerdict::Rejected,
                    };
                    follow_up = Some(session.auth_done(verdict));
                }
            }
        }
        if let Some(next) = follow_up {
            self.drive(session, next);
            return;
        }
        if enqueue.is_some() {
            let result = if self.fail_next {
                Err(Reply::new(451, status::SYSTEM_ERROR, "Local error in processing"))
            } else {
                Ok(QueueId::new(1, 1))
            };
            if self.fail_alternate {
                self.fail_next = !self.fail_next;
            }
            let next = session.transaction_done(result);
            assert!(!next.is_empty(), "transaction_done gave no reply");
            self.drive(session, next);
        } else if !self.closed {
            assert_ne!(session.waiting(), Waiting::Driver, "waiting for the driver without an Enqueue");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let flags = data[0];
    let splits = usize::from(data[1] & 0x0f);
    let shutdown_at = usize::from(data[1] >> 4);
    let Some(lengths) = data.get(2..2 + splits) else { return };
    let input = &data[2 + splits..];

    let role = if flags & 2 != 0 { Role::Submission } else { Role::Mx };
    let mut config = SessionConfig::new("mx.example.test", role);
    config.starttls = flags & 8 != 0;
    config.auth = flags & 16 != 0;
    if flags & 4 != 0 {
        config.max_message_size = 2048;
        config.max_text_line = 100;
        config.max_submission_line = 300;
        config.max_errors = 3;
    }
    let mut checker = Checker {
        max_size: config.max_message_size,
        // Submission and trusted clients get the longer line limit.
        max_line: if role != Role::Mx || flags & 1 != 0 {
            config.max_submission_line.max(config.max_text_line)
        } else {
            config.max_text_line
        },
        closed: false,
        enqueues: 0,
        data_go_aheads: 0,
        fail_next: false,
        fail_alternate: flags & 8 != 0,
    };
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut session = Session::new(Arc::new(config), Arc::new(TestPolicy), ip, flags & 1 != 0);

    let greeting = session.greeting();
    assert!(matches!(greeting.first(), Some(Action::Reply(r)) if r.code == 220), "greeting {greeting:?}");
    checker.drive(&mut session, greeting);

    let mut reads: Vec<&[u8]> = Vec::new();
    let mut rest = input;
    for &len in lengths {
        let (a, b) = rest.split_at(usize::from(len).min(rest.len()));
        reads.push(a);
        rest = b;
    }
    reads.push(rest);

    for (i, chunk) in reads.iter().enumerate() {
        if flags & 16 != 0 && i == shutdown_at {
            let actions = session.shutdown();
            checker.drive(&mut session, actions);
        }
        let actions = session.receive(chunk);
        checker.drive(&mut session, actions);
    }
    // Only on a live session, as the driver does: Session::timeout() on a
    // closed session answers again with 421 + Close (findings/
    // session-timeout-after-close), which the check in drive() would flag.
    if flags & 32 != 0 && !checker.closed {
        let actions = session.timeout();
        checker.drive(&mut session, actions);
    }
    if checker.closed {
        assert_eq!(session.waiting(), Waiting::Closed);
        assert!(session.receive(b"NOOP\r\n").is_empty(), "a closed session answered");
    }
    // Every message needs a DATA go-ahead (354) or a BDAT command.
    let bdats = input.windows(4).filter(|w| w.eq_ignore_ascii_case(b"BDAT")).count();
    assert!(
        checker.enqueues <= checker.data_go_aheads + bdats,
        "{} messages from {} DATA and {} BDAT",
        checker.enqueues,
        checker.data_go_aheads,
        bdats
    );
});
