//! Delivery webhooks (`[[webhook]]`): what happened to each message —
//! delivered, deferred, bounced, rejected at submission, complained about
//! (an ARF report, from `suppression::consume`) and suppressed (refused or
//! dropped by the suppression list, from `suppression`) — POSTed as one
//! signed JSON document per event to the applications that sent it.
//!
//! [`Hooks::emit`] never waits: the event goes on a bounded channel to one
//! writer task that commits whatever has gathered in one SQLite
//! transaction in `DATA_DIR/webhooks.db` (the outbox, see [`outbox`]); a
//! sender task ([`sender`]) POSTs from there, oldest first per message,
//! retrying with backoff until `max_age`. Delivery never waits for a
//! receiver, and a receiver that is down loses nothing.
//!
//! Stages call in here; this module calls none of them.
//! May import: `config`, `metrics`, `mailgate-core`.

mod outbox;
mod sender;
pub mod submission;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use mailgate_core::bounce::{Category, Classification, Kind};
use mailgate_core::{QueueId, Recipient, ReversePath};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::Webhook;
use crate::metrics::Metrics;
use outbox::{Msg, NewRow, Outbox};

/// The file of the outbox, in `data_dir`.
pub const OUTBOX_FILE: &str = "webhooks.db";

/// What happened; the `event` field of the JSON document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The next hop accepted the recipient.
    Delivered,
    /// A temporary failure; another attempt is scheduled.
    Deferred,
    /// A permanent failure, or the message expired in the queue.
    Bounced,
    /// The recipient complained (an ARF report; the suppression work).
    Complained,
    /// The recipient was put on (or a submission was refused by) the
    /// suppression list (the suppression work).
    Suppressed,
    /// Mailgate refused with a 5xx what an authenticated submitter sent.
    Rejected,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Bounced => "bounced",
            EventKind::Complained => "complained",
            EventKind::Suppressed => "suppressed",
            EventKind::Rejected => "rejected",
        }
    }
}

/// `{"kind": "hard|soft", "category": ...}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EventClass {
    pub kind: Kind,
    pub category: Category,
}

impl From<Classification> for EventClass {
    fn from(c: Classification) -> EventClass {
        EventClass { kind: c.kind, category: c.category }
    }
}

/// One event: the JSON document a webhook receives, field for field.
/// Fields that do not apply are `null` (a delivered recipient has no
/// `classification`, a refused MAIL FROM no `recipient`).
#[derive(Clone, Debug, Serialize)]
pub struct WebhookEvent {
    pub event: EventKind,
    pub queue_id: Option<String>,
    /// The `Message-ID:` header field as written, with its angle brackets.
    pub message_id: Option<String>,
    /// The envelope sender (MAIL FROM); `""` for `<>`.
    pub sender: String,
    pub recipient: Option<String>,
    /// When it happened, RFC 3339 in UTC.
    pub time: String,
    /// The host that answered (`"local"` for a maildir delivery).
    pub mx: Option<String>,
    /// The SMTP reply as received or sent.
    pub reply: Option<String>,
    pub classification: Option<EventClass>,
    /// Delivery attempts for this recipient so far (0 for a submission
    /// refusal, a complaint or a suppression).
    pub attempt: u32,
    /// The fields only `complained` and `suppressed` events have, after
    /// the common ones; absent from every other event.
    #[serde(flatten)]
    pub detail: Option<Detail>,
}

/// What a `complained` or a `suppressed` event adds to the common fields.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Detail {
    /// `complained`: `"feedback_type"` as the report has it (`abuse`,
    /// `fraud`, `not-spam`, ...), `"reporter"` (its `Reporting-MTA` or
    /// `User-Agent`, or null) and `"suppressed"` (whether the recipient
    /// was put on the sender domain's list: not for `not-spam`).
    Complaint { feedback_type: String, reporter: Option<String>, suppressed: bool },
    /// `suppressed`: `"action"` (`refused` at RCPT, or `dropped` from the
    /// queue with `[suppression] action = "drop"`) and the list entry
    /// that did it.
    Suppression { action: &'static str, suppression: ListEntry },
}

/// A suppression-list entry as a `suppressed` event shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ListEntry {
    /// The sending domain whose list it is on.
    pub domain: String,
    /// `bounce`, `async-bounce`, `complaint` or `manual`.
    pub source: String,
    /// The bounce category, `complaint`, or `manual`.
    pub category: String,
    /// The bounce reply or feedback type it was added for.
    pub reason: String,
    /// When it was added, RFC 3339 in UTC.
    pub since: String,
    /// When it expires (RFC 3339), or null: never.
    pub expires: Option<String>,
}

impl WebhookEvent {
    /// An event of `kind` happening now, every optional field null.
    pub fn new(kind: EventKind, sender: &ReversePath) -> WebhookEvent {
        WebhookEvent {
            event: kind,
            queue_id: None,
            message_id: None,
            sender: match sender {
                ReversePath::Null => String::new(),
                ReversePath::Mailbox(m) => m.to_string(),
            },
            recipient: None,
            time: rfc3339(unix_now()),
            mx: None,
            reply: None,
            classification: None,
            attempt: 0,
            detail: None,
        }
    }

    /// The outcome of one delivery attempt for recipient `r` of message
    /// `id` (the scheduler's events).
    pub fn attempt(kind: EventKind, id: &QueueId, sender: &ReversePath, r: &Recipient, mx: Option<&str>, reply: &str) -> WebhookEvent {
        WebhookEvent {
            queue_id: Some(id.as_str().to_string()),
            recipient: Some(r.address.to_string()),
            mx: mx.map(str::to_string),
            reply: Some(reply.trim_end().to_string()),
            attempt: r.attempts,
            ..WebhookEvent::new(kind, sender)
        }
    }

    pub fn classified(mut self, c: Option<Classification>) -> WebhookEvent {
        self.classification = c.map(EventClass::from);
        self
    }
}

/// The webhooks of the configuration and the way into their outbox.
pub struct Hooks {
    hooks: Vec<Webhook>,
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
    lost: AtomicU64,
}

impl Hooks {
    /// Opens (or creates) the outbox in `data_dir` and starts the writer
    /// and the sender; what an earlier run left in the outbox is sent
    /// first. `None` when no webhook is configured. `tls` is what
    /// delivery trusts, for `https` receivers.
    pub fn start(
        hooks: &[Webhook],
        data_dir: &Path,
        metrics: Arc<Metrics>,
        tls: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Option<Arc<Hooks>>> {
        if hooks.is_empty() {
            return Ok(None);
        }
        let path = data_dir.join(OUTBOX_FILE);
        let outbox = Arc::new(Outbox::open(&path).map_err(|e| anyhow::anyhow!("cannot open the webhook outbox {}: {e}", path.display()))?);
        let depth = outbox.count().map_err(|e| anyhow::anyhow!("cannot read the webhook outbox {}: {e}", path.display()))?;
        metrics.set_webhook_outbox(depth);
        if depth > 0 {
            tracing::info!(events = depth, "webhook outbox: sending what an earlier run left");
        }
        let last_seq = outbox.last_seq().map_err(|e| anyhow::anyhow!("cannot read the webhook outbox {}: {e}", path.display()))?;
        let (notes_tx, notes_rx) = mpsc::unbounded_channel();
        let tx = outbox::start_writer(outbox.clone(), depth, last_seq, metrics.clone(), notes_tx);
        let targets = sender::targets(hooks, tls)?;
        tokio::spawn(sender::run(outbox, targets, tx.clone(), notes_rx, metrics.clone(), sender::Timing::from_env()));
        Ok(Some(Arc::new(Hooks { hooks: hooks.to_vec(), tx, metrics, lost: AtomicU64::new(0) })))
    }

    /// Whether any webhook receives `kind`: callers skip building events
    /// nobody wants.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.hooks.iter().any(|h| h.wants(kind.as_str()))
    }

    /// Queues `event` for every webhook that receives its kind; never
    /// blocks. The event is durable once the writer has committed it
    /// (within about [`outbox::GATHER`] and an fsync), or delivered
    /// before that (then it is never written); events of one
    /// `queue_id` reach each receiver in the order they were emitted.
    /// Only when the outbox writer is a whole channel behind (the disk has
    /// stalled) is an event dropped, counted as `lost` and logged.
    pub fn emit(&self, event: WebhookEvent) {
        let targets: Vec<&Webhook> = self.hooks.iter().filter(|h| h.wants(event.event.as_str())).collect();
        if targets.is_empty() {
            return;
        }
        let body = match serde_json::to_string(&event) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "webhook event not encoded; dropped");
                return;
            }
        };
        // Events without a queue id (a refused submission) are ordered
        // with nothing else.
        let key = event.queue_id.clone().unwrap_or_else(|| format!("r-{:016x}", rand::random::<u64>()));
        let created = unix_now() as i64;
        let rows: Vec<NewRow> =
            targets.iter().map(|h| NewRow { url: h.url.clone(), key: key.clone(), created, body: body.clone() }).collect();
        let n = rows.len() as u64;
        if let Err(e) = self.tx.try_send(Msg::Insert(rows)) {
            self.metrics.webhook_events("lost", n);
            let lost = self.lost.fetch_add(n, Ordering::Relaxed);
            // The first, then about every 1000th: not a line per event.
            if lost.is_multiple_of(1000) || lost / 1000 != (lost + n) / 1000 {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "the outbox writer is behind",
                    mpsc::error::TrySendError::Closed(_) => "the outbox writer has stopped",
                };
                tracing::warn!(lost = lost + n, reason = why, event = event.event.as_str(), "webhook event not written; lost");
            }
        }
    }

    /// Emits delivery events of one message, with its `Message-ID:` (see
    /// [`message_id`]) when it has one.
    pub fn emit_for_message(&self, events: Vec<WebhookEvent>, message_id: Option<String>) {
        for mut e in events {
            e.message_id.clone_from(&message_id);
            self.emit(e);
        }
    }

    /// Waits until everything emitted before the call is committed or
    /// delivered (at shutdown, and for tests).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// The first `Message-ID:` field of a message's header block as written,
/// unfolded, its runs of white space made one space; `header` may go on
/// past the header block (the body is not looked at). A plain scan, not a
/// parse: it runs for every delivery a webhook hears of.
pub fn message_id(header: &[u8]) -> Option<String> {
    const NAME: &[u8] = b"message-id";
    let mut lines = header.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    while let Some(line) = lines.next() {
        if line.is_empty() {
            return None; // the end of the header block
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        if !line[..colon].trim_ascii_end().eq_ignore_ascii_case(NAME) {
            continue;
        }
        let mut value = String::from_utf8_lossy(&line[colon + 1..]).into_owned();
        for more in lines.take_while(|l| l.first().is_some_and(|b| *b == b' ' || *b == b'\t')) {
            value.push(' ');
            value.push_str(&String::from_utf8_lossy(more));
        }
        let v = value.split_whitespace().collect::<Vec<_>>().join(" ");
        return (!v.is_empty()).then_some(v);
    }
    None
}

/// A webhook's `secret` as an HMAC-SHA256 key, prepared once.
pub fn signing_key(secret: &str) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes())
}

/// `Mailgate-Signature: t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(key: &ring::hmac::Key, t: u64, body: &str) -> String {
    let mut ctx = ring::hmac::Context::with_key(key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body.as_bytes());
    let tag = ctx.sign();
    let mut out = String::with_capacity(80);
    let _ = write!(out, "t={t},v1=");
    for b in tag.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Unix seconds as `2026-12-06T17:50:00Z` (the civil-from-days algorithm
/// of H. Hinnant).
pub fn rfc3339(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(86_400 + 3661), "1970-01-02T01:01:01Z");
        assert_eq!(rfc3339(1_709_164_800), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn signature_is_hmac_sha256_of_t_dot_body() {
        // As Python's hmac.new(b"Jefe", b"1700000000.{}", sha256) has it.
        let sig = signature(&signing_key("Jefe"), 1_700_000_000, "{}");
        assert_eq!(sig, "t=1700000000,v1=d3793e2b4103edfbd98cc19591832f5fad701d413db9fcae0ae7dab8184ed207");
        assert_ne!(sig, signature(&signing_key("jefe"), 1_700_000_000, "{}"));
        assert_ne!(sig, signature(&signing_key("Jefe"), 1_700_000_001, "{}"));
    }

    #[test]
    fn message_id_as_written() {
        let h = b"From: a@b.test\r\nMessage-ID:\r\n <abc@b.test>\r\nSubject: x\r\n\r\n";
        assert_eq!(message_id(h).as_deref(), Some("<abc@b.test>"));
        assert_eq!(message_id(b"Subject: x\r\n\r\n"), None);
        // The name in any case, folded over several lines, the first one.
        let h = b"message-id :\t<a\r\n\t b@c.test>  \r\nMessage-Id: <second@c.test>\r\n\r\n";
        assert_eq!(message_id(h).as_deref(), Some("<a b@c.test>"));
        // Only the header block: a body line that looks like one is not it.
        assert_eq!(message_id(b"Subject: x\r\n\r\nMessage-ID: <body@c.test>\r\n"), None);
        assert_eq!(message_id(b"X-Message-ID: <x@c.test>\nMessage-ID:\n\n"), None, "empty, and bare LF lines");
        assert_eq!(message_id(b"Message-ID: <whole@c.test>"), Some("<whole@c.test>".into()), "no header end");
    }

    #[test]
    fn event_json() {
        let e = WebhookEvent::new(EventKind::Rejected, &ReversePath::Null);
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "rejected");
        assert_eq!(v["sender"], "");
        assert!(v["classification"].is_null() && v["recipient"].is_null());
        let c = mailgate_core::bounce::classify_reply("550 5.1.1 no such user");
        let v = serde_json::to_value(e.classified(c)).unwrap();
        assert_eq!(v["classification"], serde_json::json!({"kind": "hard", "category": "no_such_user"}));
        assert!(v.get("feedback_type").is_none() && v.get("action").is_none(), "no detail fields: {v}");
    }

    #[test]
    fn detail_fields_follow_the_common_ones() {
        let mut e = WebhookEvent::new(EventKind::Complained, &ReversePath::Null);
        e.detail = Some(Detail::Complaint { feedback_type: "abuse".into(), reporter: None, suppressed: true });
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!((&v["event"], &v["feedback_type"], &v["suppressed"]), (&"complained".into(), &"abuse".into(), &true.into()));
        assert!(v["reporter"].is_null() && v["queue_id"].is_null());
        e.event = EventKind::Suppressed;
        let entry = ListEntry {
            domain: "example.com".into(),
            source: "manual".into(),
            category: "manual".into(),
            reason: String::new(),
            since: rfc3339(0),
            expires: None,
        };
        e.detail = Some(Detail::Suppression { action: "refused", suppression: entry });
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["action"], "refused");
        assert_eq!(v["suppression"]["since"], "1970-01-01T00:00:00Z");
        assert_eq!(v.as_object().unwrap().len(), 12, "ten common fields and two of its own: {v}");
    }
}
