//! ARF complaint reports (RFC 5965): `multipart/report;
//! report-type=feedback-report` with a human-readable part, a
//! `message/feedback-report` part (`Feedback-Type`, `Original-Mail-From`,
//! `Original-Rcpt-To`, `Reported-Domain`...) and the original message or
//! its header block (`message/rfc822`, `text/rfc822-headers`).
//!
//! Everything here is hostile input: any bytes give an answer or `None`,
//! never a panic.
//!
//! May import: `mailgate-core`.

use mail_parser::{Addr, MessageParser, MimeHeaders};
use serde::Serialize;

/// Longest feedback-report part looked at.
const MAX_FIELDS: usize = 64 * 1024;

/// What a complaint says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Complaint {
    /// `abuse`, `fraud`, `not-spam`, ... (`abuse` when absent).
    pub feedback_type: String,
    /// The recipient who complained: `Original-Rcpt-To`, else the
    /// original's `To:`.
    pub recipient: Option<String>,
    /// `Original-Mail-From`, else the original's `Return-Path:`.
    pub mail_from: Option<String>,
    /// The original's `From:` address.
    pub from: Option<String>,
    pub message_id: Option<String>,
    /// `Reporting-MTA` or `User-Agent`: who sent the report.
    pub reporter: Option<String>,
}

/// Reads an ARF report; `None` when the message is not one.
pub fn read(raw: &[u8]) -> Option<Complaint> {
    let msg = MessageParser::default().parse(raw)?;
    let ct = msg.content_type()?;
    let is_report = ct.ctype().eq_ignore_ascii_case("multipart")
        && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("report"))
        && ct.attribute("report-type").is_some_and(|t| t.eq_ignore_ascii_case("feedback-report"));
    if !is_report {
        return None;
    }
    let mut out = Complaint::default();
    let mut seen_fields = false;
    for part in msg.parts.iter() {
        let Some(pct) = part.content_type() else { continue };
        let top = pct.ctype().to_ascii_lowercase();
        let sub = pct.subtype().unwrap_or("").to_ascii_lowercase();
        let body = raw.get(part.raw_body_offset() as usize..part.raw_end_offset() as usize).unwrap_or(&[]);
        if top == "message" && sub == "feedback-report" && !seen_fields {
            seen_fields = true;
            let text = String::from_utf8_lossy(&body[..body.len().min(MAX_FIELDS)]);
            for (name, value) in fields(&text) {
                match name.to_ascii_lowercase().as_str() {
                    "feedback-type" if out.feedback_type.is_empty() => out.feedback_type = value.to_ascii_lowercase(),
                    "original-rcpt-to" if out.recipient.is_none() => out.recipient = address(&value),
                    "original-mail-from" if out.mail_from.is_none() => out.mail_from = address(&value),
                    "reporting-mta" | "user-agent" if out.reporter.is_none() => out.reporter = Some(value),
                    _ => {}
                }
            }
        } else if (top == "message" && (sub == "rfc822" || sub == "global")) || (top == "text" && sub == "rfc822-headers") {
            // By offsets: a nested message's own `raw_message` may be
            // the whole outer text.
            original(body, &mut out);
        }
    }
    if !seen_fields {
        return None;
    }
    if out.feedback_type.is_empty() {
        out.feedback_type = "abuse".into();
    }
    Some(out)
}

/// Fills what the field part left out from the original's header block.
fn original(raw: &[u8], out: &mut Complaint) {
    let Some(m) = MessageParser::default().parse_headers(raw) else { return };
    let first = |a: Option<&mail_parser::Address<'_>>| a.and_then(|a| a.first()).and_then(Addr::address).map(|s| s.to_ascii_lowercase());
    if out.recipient.is_none() {
        out.recipient = first(m.to());
    }
    if out.from.is_none() {
        out.from = first(m.from());
    }
    if out.mail_from.is_none() {
        out.mail_from = m.return_path().as_text().and_then(address);
    }
    if out.message_id.is_none() {
        out.message_id = m.message_id().map(|s| format!("<{s}>"));
    }
}

/// Header-style fields, unfolded.
fn fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// The address in `<a@b>`, `rfc822; a@b` or bare form, lower-cased.
fn address(value: &str) -> Option<String> {
    let v = value.rsplit_once(';').map_or(value, |(_, a)| a).trim();
    let v = v.trim_start_matches('<').trim_end_matches('>').trim();
    (v.contains('@') && !v.contains(char::is_whitespace) && v.len() <= 320).then(|| v.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARF: &str = "From: <fbl@isp.example>\r\n\
To: <fbl@example.test>\r\n\
Subject: FW: Sale\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report;\r\n boundary=\"part1\"\r\n\
\r\n\
--part1\r\n\
Content-Type: text/plain\r\n\
\r\n\
This is an email abuse report.\r\n\
--part1\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: SomeGenerator/1.0\r\n\
Version: 1\r\n\
Original-Mail-From: <alice@example.test>\r\n\
Reporting-MTA: dns; mail.isp.example\r\n\
\r\n\
--part1\r\n\
Content-Type: message/rfc822\r\n\
Content-Disposition: inline\r\n\
\r\n\
From: Alice <Alice@Example.test>\r\n\
To: Carol <Carol@ISP.example>\r\n\
Subject: Sale\r\n\
Message-ID: <m1@example.test>\r\n\
\r\n\
Buy now.\r\n\
--part1--\r\n";

    #[test]
    fn reads_the_rfc5965_example_shape() {
        let c = read(ARF.as_bytes()).expect("an ARF report");
        assert_eq!(c.feedback_type, "abuse");
        assert_eq!(c.recipient.as_deref(), Some("carol@isp.example"));
        assert_eq!(c.mail_from.as_deref(), Some("alice@example.test"));
        assert_eq!(c.from.as_deref(), Some("alice@example.test"));
        assert_eq!(c.message_id.as_deref(), Some("<m1@example.test>"));
        assert_eq!(c.reporter.as_deref(), Some("SomeGenerator/1.0"));
    }

    #[test]
    fn original_rcpt_to_wins_over_the_to_header() {
        let with = ARF.replace("Version: 1\r\n", "Version: 1\r\nOriginal-Rcpt-To: <dave@isp.example>\r\n");
        assert_eq!(read(with.as_bytes()).and_then(|c| c.recipient).as_deref(), Some("dave@isp.example"));
    }

    #[test]
    fn not_a_report_is_none() {
        assert!(read(b"Subject: hi\r\n\r\nhello\r\n").is_none());
        assert!(read(ARF.replace("feedback-report;", "delivery-status;").as_bytes()).is_none());
        assert!(read(b"").is_none());
        assert!(read(&[0xff; 300]).is_none());
    }
}
