//! Bounces others send us, read into one verdict per recipient: a DSN
//! (RFC 3464: `multipart/report; report-type=delivery-status`, its
//! `message/delivery-status` part) or, failing that, a non-standard
//! bounce in plain text (qmail's "Remote host said:", old Exim's "SMTP
//! error from remote mail server", Exchange's and others' prose), each
//! classified by the rule table of `mailgate_core::bounce`.
//!
//! Everything here is hostile input: any bytes must give an answer
//! (perhaps empty), never a panic.
//!
//! May import: `mailgate-core`.

use mail_parser::{MessageParser, MimeHeaders, PartType};
use mailgate_core::bounce::{self, Classification, Kind};
use mailgate_core::reply::StatusCode;
use serde::Serialize;

/// What a bounce says about one recipient.
#[derive(Debug, Clone, Serialize)]
pub struct Bounced {
    pub recipient: Option<String>,
    /// The DSN's `Action:` (`failed`, `delayed`, ...); `None` in a
    /// non-standard bounce.
    pub action: Option<String>,
    #[serde(serialize_with = "status_str")]
    pub status: Option<StatusCode>,
    /// The remote reply or the bounce's explanation, unfolded.
    pub diagnostic: String,
    pub remote_mta: Option<String>,
    /// `None` for `delivered`, `relayed` and `expanded` recipients.
    pub classification: Option<Classification>,
    /// `dsn` or `text`: where it was read from.
    pub format: &'static str,
}

fn status_str<S: serde::Serializer>(s: &Option<StatusCode>, ser: S) -> Result<S::Ok, S::Error> {
    match s {
        Some(s) => ser.serialize_str(&s.to_string()),
        None => ser.serialize_none(),
    }
}

/// Longest text looked at: diagnostics are short; a bounce that quotes a
/// whole message must not make us scan megabytes for recipient lines.
const MAX_TEXT: usize = 64 * 1024;

/// Reads a bounce message. Empty when it is neither a DSN nor text with a
/// recognisable failure in it.
pub fn read(raw: &[u8]) -> Vec<Bounced> {
    let Some(msg) = MessageParser::default().parse(raw) else { return Vec::new() };
    let mut texts = Vec::new();
    for part in msg.parts.iter() {
        let Some(ct) = part.content_type() else { continue };
        let sub = ct.subtype().unwrap_or("").to_ascii_lowercase();
        let top = ct.ctype().to_ascii_lowercase();
        if top == "message" && (sub == "delivery-status" || sub == "global-delivery-status") {
            let body: &[u8] = match &part.body {
                PartType::Text(t) => t.as_bytes(),
                PartType::Binary(b) | PartType::InlineBinary(b) => b,
                _ => raw.get(part.raw_body_offset() as usize..part.raw_end_offset() as usize).unwrap_or(&[]),
            };
            let found = read_delivery_status(&String::from_utf8_lossy(&body[..body.len().min(MAX_TEXT)]));
            if !found.is_empty() {
                return found;
            }
        } else if top == "text"
            && sub == "plain"
            && let PartType::Text(t) = &part.body
        {
            texts.push(t.to_string());
        }
    }
    if texts.is_empty() {
        // A single-part message without a Content-Type is text/plain too.
        if let Some(t) = msg.body_text(0) {
            texts.push(t.to_string());
        }
    }
    texts.iter().map(|t| read_text(&t[..floor_char(t, MAX_TEXT)])).find(|v| !v.is_empty()).unwrap_or_default()
}

fn floor_char(s: &str, max: usize) -> usize {
    let mut i = max.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// RFC 3464 §2: a per-message block, then one block per recipient, each
/// a set of header-style fields, separated by blank lines.
fn read_delivery_status(body: &str) -> Vec<Bounced> {
    let mut blocks: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in body.lines() {
        if line.trim().is_empty() {
            if blocks.last().is_some_and(|b| !b.is_empty()) {
                blocks.push(Vec::new());
            }
            continue;
        }
        let Some(block) = blocks.last_mut() else { continue };
        if line.starts_with([' ', '\t']) {
            // Folded: continues the previous field.
            if let Some((_, v)) = block.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            block.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let field = |b: &[(String, String)], name: &str| b.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    // After its type (`rfc822;`, `smtp;`, `dns;`).
    let typed = |v: String| match v.split_once(';') {
        Some((_, rest)) => rest.trim().to_string(),
        None => v.trim().to_string(),
    };
    blocks
        .iter()
        .filter(|b| b.iter().any(|(n, _)| n == "final-recipient" || n == "original-recipient"))
        .map(|b| {
            let recipient = field(b, "final-recipient").or_else(|| field(b, "original-recipient")).map(typed);
            let action = field(b, "action").map(|a| a.to_ascii_lowercase());
            let status = field(b, "status").and_then(|s| bounce::find_status(&s));
            let diagnostic = field(b, "diagnostic-code").map(typed).unwrap_or_default();
            let code = bounce::leading_code(&diagnostic);
            let kind = match action.as_deref() {
                Some("failed") => Some(Kind::Hard),
                Some("delayed") => Some(Kind::Soft),
                Some(_) => None,
                None => match (code.map(|c| c / 100), status.map(|s| s.class)) {
                    (Some(5), _) | (None, Some(5)) => Some(Kind::Hard),
                    (Some(4), _) | (None, Some(4)) => Some(Kind::Soft),
                    _ => None,
                },
            };
            let classification = kind.map(|k| bounce::classify_as(k, code, status, &diagnostic));
            Bounced { recipient, action, status, diagnostic, remote_mta: field(b, "remote-mta").map(typed), classification, format: "dsn" }
        })
        .collect()
}

/// An address alone on a line, as qmail (`<a@b>:`) and Exim (`  a@b`)
/// list the failed recipients, or followed by a date, as old Exchange
/// does (`a@b on 12/6/2026 10:00 AM`).
fn address_line(line: &str) -> Option<String> {
    let t = line.trim();
    let t = match t.split_once(" on ") {
        Some((addr, _)) => addr,
        None => t,
    };
    let t = t.trim_end_matches(':').trim();
    let t = t.strip_prefix('<').and_then(|x| x.strip_suffix('>')).unwrap_or(t);
    let ok = !t.is_empty()
        && t.len() <= 320
        && t.matches('@').count() == 1
        && !t.starts_with('@')
        && !t.ends_with('@')
        && !t.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == ',' || c == '(');
    ok.then(|| t.to_string())
}

/// A line carrying a failure: it starts with a reply code, says what the
/// remote host said, or carries an RFC 3463 code (qmail's `(#5.1.1)`).
fn failure_line(line: &str) -> bool {
    let t = line.trim();
    let l = t.to_ascii_lowercase();
    bounce::leading_code(t).is_some_and(|c| c >= 400) || l.contains("said:") || bounce::find_status(t).is_some_and(|s| s.class >= 4)
}

/// A non-standard bounce: each listed address with the failure text that
/// follows it; or, with no address listed, the message's failure lines as
/// one verdict. A bounce message is final unless it says otherwise.
fn read_text(text: &str) -> Vec<Bounced> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let starts: Vec<(usize, String)> = lines.iter().enumerate().filter_map(|(i, l)| address_line(l).map(|a| (i, a))).collect();
    let delayed = {
        let l = text.to_ascii_lowercase();
        l.contains("has not yet been delivered") || l.contains("delivery has been delayed") || l.contains("will keep trying")
    };
    let mut verdict = |recipient: Option<String>, chunk: &[&str]| {
        let failing: Vec<&str> = chunk.iter().copied().filter(|l| failure_line(l)).collect();
        if failing.is_empty() {
            return;
        }
        // What follows the failure line on the same paragraph continues it
        // (a multi-line reply, folded by the bounce's author).
        let diagnostic = failing.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
        let diagnostic = match diagnostic.to_ascii_lowercase().find("said:") {
            Some(i) => diagnostic[i + 5..].trim().to_string(),
            None => diagnostic,
        };
        let code = failing.iter().find_map(|l| {
            let t = l.trim();
            bounce::leading_code(t).or_else(|| t.to_ascii_lowercase().find("said:").and_then(|i| bounce::leading_code(&t[i + 5..])))
        });
        let status = bounce::find_status(&diagnostic);
        let kind = match (delayed, code.map(|c| c / 100), status.map(|s| s.class)) {
            (true, _, _) => Kind::Soft,
            (_, Some(4), _) | (_, None, Some(4)) => Kind::Soft,
            _ => Kind::Hard,
        };
        let classification = Some(bounce::classify_as(kind, code, status, &diagnostic));
        out.push(Bounced { recipient, action: None, status, diagnostic, remote_mta: None, classification, format: "text" });
    };
    if starts.is_empty() {
        verdict(None, &lines);
    } else {
        for (k, (i, addr)) in starts.iter().enumerate() {
            let end = starts.get(k + 1).map(|(j, _)| *j).unwrap_or(lines.len());
            // A quoted original message ends the list.
            let chunk = &lines[i + 1..end];
            let stop = chunk.iter().position(|l| l.starts_with("--- ") || l.starts_with("------")).unwrap_or(chunk.len());
            verdict(Some(addr.clone()), &chunk[..stop]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailgate_core::bounce::Category;

    #[test]
    fn a_dsn_gives_one_verdict_per_recipient() {
        let raw = b"From: MAILER-DAEMON@mx.test\r\nTo: a@b.test\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
--B\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n\
--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.test\r\n\r\n\
Final-Recipient: rfc822; x@y.test\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <x@y.test>:\r\n Recipient address rejected: User unknown\r\n\r\n\
Final-Recipient: rfc822; z@y.test\r\nAction: delayed\r\nStatus: 4.2.2\r\n\r\n--B--\r\n";
        let v = read(raw);
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v[0].recipient.as_deref(), Some("x@y.test"));
        assert!(v[0].diagnostic.ends_with("User unknown"), "{}", v[0].diagnostic);
        let c = v[0].classification.expect("classified"); // ok: test
        assert_eq!((c.kind, c.category), (Kind::Hard, Category::NoSuchUser));
        let c = v[1].classification.expect("classified"); // ok: test
        assert_eq!((c.kind, c.category), (Kind::Soft, Category::MailboxFull));
    }

    #[test]
    fn junk_gives_nothing_and_never_panics() {
        assert!(read(b"").is_empty());
        assert!(read(b"\xff\xfe\x00garbage").is_empty());
        assert!(read(b"Subject: hi\r\n\r\nnothing failed here\r\n").is_empty());
        let big = format!("Subject: x\r\n\r\n<a@b.test>:\r\n{}", "550 5.1.1 ".repeat(100_000));
        assert_eq!(read(big.as_bytes()).len(), 1);
    }
}
