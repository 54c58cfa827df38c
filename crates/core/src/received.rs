//! The `Received:` trace header (RFC 5321 §4.4).

use crate::envelope::{Envelope, QueueId};

/// Builds the `Received:` header field, folded and CRLF-terminated.
/// `date` is an RFC 5322 date-time supplied by the caller (no clock here).
pub fn received_header(hostname: &str, env: &Envelope, id: &QueueId, date: &str) -> String {
    let client = &env.client;
    // RFC 3848 / RFC 6531 protocol names.
    let mut with = String::from(if env.smtputf8 { "UTF8SMTP" } else { "ESMTP" });
    if client.tls.is_some() {
        with.push('S');
    }
    if client.authenticated_as.is_some() {
        with.push('A');
    }
    let ip = match client.ip {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("IPv6:{ip}"),
    };
    let helo: String = client.helo.chars().filter(|c| !c.is_control() && *c != '(' && *c != ')').take(255).collect();
    let mut h = format!("Received: from {helo} ([{ip}])\r\n\tby {hostname} (mailgate) with {with}");
    if let Some(tls) = &client.tls {
        h.push_str(&format!("\r\n\t({tls})"));
    }
    h.push_str(&format!("\r\n\tid {id}"));
    // Name the recipient only when there is one: with several it would leak
    // the other recipients (RFC 5321 §7.2).
    if let [only] = env.recipients.as_slice() {
        h.push_str(&format!("\r\n\tfor <{}>", only.address));
    }
    h.push_str(&format!(";\r\n\t{date}\r\n"));
    h
}
