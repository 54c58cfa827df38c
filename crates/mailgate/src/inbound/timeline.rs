//! The timeline record of one finished transaction: what the session knew
//! (client, HELO, TLS, AUTH user, envelope), a few header fields, every
//! check's result and the action, gathered as the message goes through
//! [`super::store`] and recorded once, when the client has its reply. One
//! event per message, none per command: the hot path stays cheap.
//! Transactions refused at MAIL FROM or RCPT TO get one too
//! ([`Refusals`]), by sender, recipients and client as the others.
//!
//! May import: `checks`, `store`, `mailgate-core`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use mailgate_core::address::Path;
use mailgate_core::reply::Reply;
use mailgate_core::session::{Role, SessionInfo};
use mailgate_core::{Envelope, QueueId, ReversePath};

use crate::checks::verdict::Verdict;
use crate::config::Action as Disposition;
use crate::store::timeline::{CheckRecord, LookalikeHit, MessageRecord};
use crate::store::{Event, Recorder, TimelineEvent, unix_now};

/// Longest header value kept: a Subject is for finding the message, not
/// for storing its text.
const MAX_FIELD: usize = 512;

/// Filled in as the transaction goes on; [`Trace::record`] sends it.
#[derive(Default)]
pub struct Trace {
    rec: MessageRecord,
    quarantined: bool,
}

impl Trace {
    pub fn new(peer: SocketAddr, info: &SessionInfo, role: Role, outbound: bool) -> Trace {
        Trace {
            rec: MessageRecord {
                client_ip: peer.ip().to_string(),
                helo: info.helo.clone().unwrap_or_default(),
                tls: info.tls.clone(),
                auth_user: info.authenticated_as.clone(),
                role: role.as_str().to_string(),
                inbound: !outbound,
                ..Default::default()
            },
            quarantined: false,
        }
    }

    /// The envelope and the header fields worth searching for.
    pub fn message(&mut self, envelope: &Envelope, header: &[u8], size: u64) {
        self.rec.sender = path_text(&envelope.sender);
        self.rec.recipients = envelope.recipients.iter().map(|r| r.address.to_string()).collect();
        self.rec.size = size;
        if let Some(m) = mail_parser::MessageParser::new().parse_headers(&searched_fields(header)) {
            // As written (unfolded): what the operator searches for and
            // sees, even when it is not a well-formed msg-id.
            let raw = m.header_raw(mail_parser::HeaderName::MessageId).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "));
            self.rec.message_id = match (raw, m.message_id()) {
                (Some(raw), _) if !raw.is_empty() => clip(&raw),
                (_, Some(id)) => format!("<{}>", clip(id)),
                _ => String::new(),
            };
            self.rec.subject = m.subject().map(clip).unwrap_or_default();
            self.rec.from = m
                .from()
                .and_then(|a| a.first())
                .map(|a| match (a.name(), a.address()) {
                    (Some(n), Some(addr)) => format!("{} <{}>", clip(n), clip(addr)),
                    (None, Some(addr)) => clip(addr),
                    (Some(n), None) => clip(n),
                    (None, None) => String::new(),
                })
                .unwrap_or_default();
        }
    }

    /// The `Message-ID:` as written, once [`Trace::message`] has seen it.
    pub fn message_id(&self) -> &str {
        &self.rec.message_id
    }

    /// Every check's result, and the policy's action with its reason.
    pub fn verdict(&mut self, v: &Verdict) {
        let mut push = |name: &str, result: &str, detail: String| {
            self.rec.checks.push(CheckRecord { name: name.into(), result: result.into(), detail });
        };
        let spf_detail = |s: &crate::checks::verdict::SpfReport| match &s.explanation {
            Some(e) => format!("{} ({e})", s.domain),
            None => s.domain.clone(),
        };
        push("spf", v.spf.result, spf_detail(&v.spf));
        if v.dkim.is_empty() {
            push("dkim", "none", "no signature".into());
        }
        for d in &v.dkim {
            let why = d.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            push("dkim", d.result, format!("d={} s={} a={}{why}", d.domain, d.selector, d.algorithm));
        }
        push("arc", v.arc.result, v.arc.reason.clone().unwrap_or_else(|| v.arc.sealers.join(", ")));
        let d = &v.dmarc;
        let policy = if d.policy.is_empty() { "no record".to_string() } else { format!("p={}", d.policy) };
        let aligned = format!("spf aligned: {}, dkim aligned: {}", yes(d.spf_aligned), yes(d.dkim_aligned));
        let over = d.override_reason.map(|o| format!(", override: {o}")).unwrap_or_default();
        push("dmarc", d.result, format!("{} {policy}; {aligned}{over}", d.from_domain));
        for f in &v.lookalike {
            push("lookalike", &f.rule, format!("{} ({}) resembles {}", f.domain, f.identity, f.resembles));
        }
        let reason = v.reason.clone().unwrap_or_default();
        push("policy", v.action.as_str(), if v.temporary { format!("{reason} (temporary)") } else { reason });
        self.quarantined = v.action == Disposition::Quarantine;
        self.rec.lookalike = v
            .lookalike
            .iter()
            .map(|f| LookalikeHit {
                domain: f.domain.clone(),
                resembles: f.resembles.to_lowercase(),
                rule: f.rule.clone(),
                identity: f.identity.to_string(),
                ..Default::default()
            })
            .collect();
    }

    /// Sends the record: accepted (with its queue id), quarantined, or
    /// refused with the reply the client got.
    pub fn record(mut self, recorder: Option<&Recorder>, result: &Result<QueueId, Reply>) {
        let Some(recorder) = recorder else { return };
        self.rec.time = unix_now();
        match result {
            Ok(id) => {
                self.rec.event_id = id.as_str().to_string();
                self.rec.queue_id = Some(self.rec.event_id.clone());
                self.rec.action = if self.quarantined { "quarantined" } else { "accepted" }.into();
                self.rec.reply = format!("250 2.0.0 Ok: queued as {}", id.as_str());
            }
            Err(reply) => {
                self.rec.event_id = event_id();
                self.rec.action = "refused".into();
                self.rec.reply = reply.to_string().trim_end().to_string();
            }
        }
        recorder.record(Event::Timeline(Box::new(TimelineEvent::Message(self.rec))));
    }
}

/// The `Message-ID:`, `Subject:` and `From:` of a header block (the last
/// of each, as mail-parser picks from a whole header), as a header block
/// of their own: parsing only these is a fraction of parsing every field
/// (the `Received:` chain, DKIM signatures, dates), which the record does
/// not keep.
fn searched_fields(header: &[u8]) -> Vec<u8> {
    const NAMES: [&[u8]; 3] = [b"message-id", b"subject", b"from"];
    let mut last: [Option<(&[u8], &[u8])>; 3] = [None; 3];
    for (name, value) in crate::checks::author::header_fields(header) {
        let name = name.trim_ascii();
        if let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)) {
            last[i] = Some((name, value));
        }
    }
    let mut out = Vec::with_capacity(256);
    for (name, value) in last.into_iter().flatten() {
        out.extend_from_slice(name);
        out.push(b':');
        out.extend_from_slice(value);
        if !value.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_FIELD) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A refused message's id: `r-` and 16 random hex digits, never a queue id.
fn event_id() -> String {
    format!("r-{:016x}", rand::random::<u64>())
}

/// The refusals at MAIL FROM and RCPT TO of one session's transaction
/// under way (relay denied, AUTH required, a sender the user may not use,
/// source routing, storage short, ...), recorded as one timeline event
/// when the transaction ends: at the next MAIL, at the end of the
/// connection, or joined to the message's own record at the end of DATA.
/// Costs nothing while nothing is refused but keeping the sender.
pub struct Refusals {
    recorder: Arc<Recorder>,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// The transaction's sender, as MAIL FROM gave it.
    sender: Option<String>,
    /// Refused recipients, and the checks' rows saying why.
    recipients: Vec<String>,
    checks: Vec<CheckRecord>,
    /// The session as it was at the first refusal.
    rec: Option<MessageRecord>,
}

impl Refusals {
    pub fn new(recorder: Arc<Recorder>) -> Refusals {
        Refusals { recorder, pending: Mutex::new(Pending::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// MAIL FROM was answered: the previous transaction is over, and a
    /// refused MAIL is a transaction of its own, recorded now.
    pub fn mail(&self, info: &SessionInfo, from: &ReversePath, refused: Option<&Reply>) {
        let sender = path_text(from);
        let mut p = self.lock();
        let previous = std::mem::take(&mut *p);
        match refused {
            None => p.sender = Some(sender),
            Some(reply) => {
                let mut rec = record_of(info);
                rec.sender = sender.clone();
                rec.checks.push(CheckRecord { name: "mail".into(), result: "refused".into(), detail: format!("<{sender}>") });
                rec.reply = reply_text(reply);
                drop(p);
                self.emit(previous);
                self.send(rec);
                return;
            }
        }
        drop(p);
        self.emit(previous);
    }

    /// A recipient was refused.
    pub fn rcpt(&self, info: &SessionInfo, to: &Path, reply: &Reply) {
        let address = match to {
            Path::Mailbox { mailbox, .. } => mailbox.to_string(),
            Path::Postmaster => "postmaster".to_string(),
            Path::Null => "<>".to_string(),
        };
        let mut p = self.lock();
        let reply = reply_text(reply);
        p.checks.push(CheckRecord { name: "rcpt".into(), result: "refused".into(), detail: format!("<{address}>: {reply}") });
        p.recipients.push(address);
        let rec = p.rec.get_or_insert_with(|| record_of(info));
        rec.reply = reply;
    }

    /// At the end of DATA: the transaction's refused recipients go on the
    /// message's own record instead of one of their own.
    pub fn into_trace(&self, trace: &mut Trace) {
        let p = std::mem::take(&mut *self.lock());
        trace.rec.checks.extend(p.checks);
        trace.rec.refused_recipients = p.recipients;
    }

    /// The transaction under way, if it refused something.
    fn emit(&self, p: Pending) {
        let Some(mut rec) = p.rec else { return };
        rec.sender = p.sender.unwrap_or_default();
        rec.recipients = p.recipients;
        rec.checks = p.checks;
        self.send(rec);
    }

    fn send(&self, mut rec: MessageRecord) {
        rec.event_id = event_id();
        rec.action = "refused".into();
        self.recorder.record(Event::Timeline(Box::new(TimelineEvent::Message(rec))));
    }
}

impl Drop for Refusals {
    /// The connection is over: so is its transaction.
    fn drop(&mut self) {
        let p = std::mem::take(&mut *self.lock());
        self.emit(p);
    }
}

fn record_of(info: &SessionInfo) -> MessageRecord {
    MessageRecord {
        time: unix_now(),
        client_ip: info.client_ip.to_string(),
        helo: info.helo.clone().unwrap_or_default(),
        tls: info.tls.clone(),
        auth_user: info.authenticated_as.clone(),
        role: info.role.as_str().to_string(),
        inbound: !(info.trusted || info.authenticated_as.is_some()),
        ..Default::default()
    }
}

fn path_text(from: &ReversePath) -> String {
    match from {
        ReversePath::Null => "<>".to_string(),
        ReversePath::Mailbox(m) => m.to_string(),
    }
}

fn reply_text(reply: &Reply) -> String {
    clip(reply.to_string().trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{HeaderName, MessageParser};

    /// The three fields parsed alone give what the whole header gives:
    /// the encoded Subject decoded, the folded Message-ID as written, the
    /// From with its display name, and the same one of a repeated field.
    #[test]
    fn searched_fields_parse_as_in_the_whole_header() {
        let header = b"Received: from a.example by mx.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
            DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s;\r\n\tb=abc\r\n\
            From: \"Ann Example\" <ann@example.com>\r\n\
            Subject: =?utf-8?q?caf=C3=A9?= menu\r\n\
            message-id :\r\n <abc@example.com>\r\n\
            Subject: second\r\n\
            To: bob@example.org\r\n\r\n";
        let full = MessageParser::new().parse_headers(header).unwrap();
        let fields = searched_fields(header);
        let part = MessageParser::new().parse_headers(&fields).unwrap();
        assert_eq!(part.subject(), full.subject());
        assert_eq!(part.subject(), Some("second"));
        assert_eq!(part.message_id(), Some("abc@example.com"));
        assert_eq!(part.message_id(), full.message_id());
        assert_eq!(part.header_raw(HeaderName::MessageId), full.header_raw(HeaderName::MessageId));
        let from = part.from().and_then(|a| a.first()).unwrap();
        assert_eq!((from.name(), from.address()), (Some("Ann Example"), Some("ann@example.com")));
        assert!(!fields.windows(8).any(|w| w == b"Received"), "only the searched fields: {}", String::from_utf8_lossy(&fields));

        // A header block without any of them, or with a last field that
        // lacks its line end, still parses.
        assert!(MessageParser::new().parse_headers(&searched_fields(b"To: x@example.org\r\n\r\n")).is_none_or(|m| m.subject().is_none()));
        let encoded = searched_fields(b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n menu\r\n\r\n");
        assert_eq!(MessageParser::new().parse_headers(&encoded).unwrap().subject(), Some("café menu"));
        let cut = searched_fields(b"Subject: cut");
        let part = MessageParser::new().parse_headers(&cut).unwrap();
        assert_eq!(part.subject(), Some("cut"));
    }
}
