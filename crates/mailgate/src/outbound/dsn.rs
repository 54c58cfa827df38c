//! Delivery status notifications (RFC 3464 reports, RFC 3461 semantics).
//!
//! A DSN is an ordinary message with the null sender, queued like any
//! other, so it is itself never bounced.

use std::net::{IpAddr, Ipv4Addr};
use std::time::SystemTime;

use mailgate_core::envelope::{ClientInfo, Envelope, Recipient, Ret};
use mailgate_core::{QueueId, ReversePath};

/// Originals up to this size are returned whole when the sender did not
/// ask for headers only (as Postfix's `bounce_size_limit`).
const FULL_RETURN_LIMIT: usize = 50_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Failure,
    Delay,
    Success,
}

impl Kind {
    /// As the message timeline names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failure => "failure",
            Kind::Delay => "delay",
            Kind::Success => "success",
        }
    }
}

/// One recipient's line in the report.
pub struct Entry<'a> {
    pub recipient: &'a Recipient,
    /// RFC 3464 `Action`: failed, delayed, delivered, relayed, expanded.
    pub action: &'static str,
}

fn rfc5322_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t).replace(" GMT", " +0000")
}

/// The enhanced status of a recipient's last reply, or one derived from
/// its class.
fn status_of(r: &Recipient, kind: Kind) -> String {
    let reply = r.last_reply.as_deref().unwrap_or("");
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    if let Some(s) = words.next().filter(|w| w.split('.').count() == 3 && w.split('.').all(|p| p.parse::<u16>().is_ok())) {
        return s.to_string();
    }
    match (kind, code.chars().next()) {
        (Kind::Success, _) => "2.0.0".into(),
        (_, Some('4')) | (Kind::Delay, _) => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

fn headers_of(original: &[u8]) -> &[u8] {
    match original.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => &original[..p + 2],
        None => original,
    }
}

/// Builds the DSN for `envelope`'s sender. Returns `None` when the sender
/// is `<>`: a bounce is never bounced.
pub fn build(
    hostname: &str,
    id: &QueueId,
    envelope: &Envelope,
    original: &[u8],
    kind: Kind,
    entries: &[Entry<'_>],
    now: SystemTime,
) -> Option<(Envelope, Vec<u8>)> {
    let sender = envelope.sender.mailbox()?.clone();
    let date = rfc5322_date(now);
    let boundary = format!(
        "=_mailgate_{id}_{}",
        match kind {
            Kind::Failure => "f",
            Kind::Delay => "d",
            Kind::Success => "s",
        }
    );
    let (subject, intro) = match kind {
        Kind::Failure => (
            "Undelivered Mail Returned to Sender",
            "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. The details are below.",
        ),
        Kind::Delay => (
            "Delayed Mail (still being retried)",
            "Your message could not be delivered yet to one or more recipients.\r\nDelivery will be retried; you do not need to resend it.",
        ),
        Kind::Success => ("Successful Mail Delivery Report", "Your message was delivered to the recipients below."),
    };
    let mut m = String::new();
    m.push_str(&format!("From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"));
    m.push_str(&format!("To: <{sender}>\r\n"));
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!("Date: {date}\r\n"));
    m.push_str(&format!("Message-ID: <{id}.{}@{hostname}>\r\n", boundary.rsplit('_').next().unwrap_or("dsn")));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"));
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    m.push_str(&format!("--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"));
    m.push_str(&format!("This is the mail system at host {hostname}.\r\n\r\n{intro}\r\n\r\n"));
    for e in entries {
        let why = e.recipient.last_reply.as_deref().unwrap_or("no details");
        m.push_str(&format!("<{}>: {why}\r\n", e.recipient.address));
    }
    m.push_str("\r\n");

    m.push_str(&format!("--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"));
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    if let Some(envid) = &envelope.envid {
        m.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    m.push_str(&format!(
        "Arrival-Date: {}\r\n",
        rfc5322_date(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(envelope.received_at))
    ));
    for e in entries {
        let r = e.recipient;
        m.push_str("\r\n");
        if let Some(o) = &r.orcpt {
            m.push_str(&format!("Original-Recipient: {}; {}\r\n", o.addr_type, o.address));
        }
        m.push_str(&format!("Final-Recipient: rfc822; {}\r\n", r.address));
        m.push_str(&format!("Action: {}\r\n", e.action));
        m.push_str(&format!("Status: {}\r\n", status_of(r, kind)));
        if let Some(remote) = &r.remote {
            let host = remote.split('[').next().unwrap_or(remote);
            m.push_str(&format!("Remote-MTA: dns; {host}\r\n"));
        }
        if let Some(reply) = &r.last_reply {
            m.push_str(&format!("Diagnostic-Code: smtp; {reply}\r\n"));
        }
        m.push_str(&format!("Last-Attempt-Date: {date}\r\n"));
    }
    m.push_str("\r\n");

    let full = match envelope.ret {
        Some(Ret::Full) => true,
        Some(Ret::Hdrs) => false,
        None => original.len() <= FULL_RETURN_LIMIT && kind == Kind::Failure,
    };
    let mut out = m.into_bytes();
    if full {
        let ctype = if envelope.smtputf8 { "message/global" } else { "message/rfc822" };
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Description: Undelivered Message\r\nContent-Type: {ctype}\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(original);
        if !original.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    } else {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n")
                .as_bytes(),
        );
        out.extend_from_slice(headers_of(original));
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let bounce = Envelope {
        sender: ReversePath::Null,
        recipients: vec![Recipient::new(sender)],
        body: envelope.body,
        smtputf8: envelope.smtputf8,
        ret: None,
        envid: None,
        client: ClientInfo {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            helo: hostname.to_string(),
            authenticated_as: None,
            tls: None,
            listener: "dsn".into(),
        },
        received_at: now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        delay_warned: false,
        quarantine: false,
    };
    Some((bounce, out))
}
