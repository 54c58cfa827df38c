//! Mail that is ours to read, not to deliver: an asynchronous bounce to a
//! VERP address, or an ARF complaint to a `[suppression] complaints`
//! address. Delivery calls these (from a blocking thread) with the spooled
//! message; every one is answered with a 2xx (consumed), so nothing is
//! bounced back to the bouncer.
//!
//! A bounce is matched to its message and recipient by the VERP token:
//! the envelope comes from the spool while the message is queued, else
//! from its timeline in the report store. It is classified by the DSN
//! reader (`report::bounce`), recorded (log line, metrics, a line on the
//! message's timeline) and, when hard and of a `[suppression] categories`
//! category, suppresses the recipient for the sender's domain. `Action:
//! delayed` is soft: recorded, never suppressed.
//!
//! A complaint emits a `complained` webhook event once it is recorded.
//!
//! May import: `suppression` (its parent), `store`, `spool`,
//! `report::bounce`, `webhook`, `mailgate-core`.

use mailgate_core::bounce::{self, Category, Kind};
use mailgate_core::reply::{Reply, StatusCode};
use mailgate_core::{Mailbox, QueueId, ReversePath};

use super::Suppressions;
use crate::spool::Spool;
use crate::store::Recorder;
use crate::store::timeline::{AttemptRecord, RecipientResult};
use crate::webhook::{Detail, EventKind, WebhookEvent};

/// Octets of a bounce or complaint read: the parts that matter come first,
/// and a quoted original may be large.
pub const READ_LIMIT: u64 = 4 * 1024 * 1024;

fn consumed(text: String) -> Reply {
    Reply::new(250, StatusCode::new(2, 0, 0), super::clip(&text))
}

/// The message and recipient a bounce or complaint is about: (sender,
/// recipient). Looked up in the spool, then in the report store. A
/// message delivered a moment ago may have left the spool while its record
/// still waits in the recorder's batch: then what is pending is written
/// and the store is asked once more.
fn resolve(sup: &Suppressions, spool: &Spool, recorder: Option<&Recorder>, id: &QueueId, index: usize) -> Option<(ReversePath, String)> {
    lookup(sup, spool, id, index).or_else(|| {
        recorder?.flush_blocking();
        lookup(sup, spool, id, index)
    })
}

fn lookup(sup: &Suppressions, spool: &Spool, id: &QueueId, index: usize) -> Option<(ReversePath, String)> {
    if let Some(q) = spool.get(id) {
        let r = q.envelope.recipients.get(index)?;
        return Some((q.envelope.sender, r.address.to_string()));
    }
    let timeline = sup.store.timeline(id.as_str()).ok()??;
    let m = timeline.message?;
    let rcpt = m.recipients.get(index)?.clone();
    let sender = match m.sender.as_str() {
        "<>" | "" => ReversePath::Null,
        s => ReversePath::Mailbox(Mailbox::parse(s, true).ok()?),
    };
    Some((sender, rcpt))
}

/// Consumes a bounce sent to the VERP address `to`. Blocks.
pub fn bounce(sup: &Suppressions, spool: &Spool, recorder: Option<&Recorder>, to: &Mailbox, raw: &[u8]) -> Reply {
    let (id, index) = match sup.verp_target(to) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            tracing::warn!(to = %to, reason = %e, "bounce to a bad VERP address discarded");
            return consumed(format!("discarded: {e}"));
        }
        None => return consumed("discarded: not a VERP address".into()),
    };
    let Some((sender, recipient)) = resolve(sup, spool, recorder, &id, index) else {
        tracing::warn!(queue_id = %id, index, "asynchronous bounce for a message no longer known; discarded");
        return consumed(format!("bounce for {id} recipient {index}: message unknown, discarded"));
    };
    let verdicts = crate::report::bounce::read(raw);
    // The verdict about our recipient; a DSN to a VERP address is about
    // one recipient, so otherwise the first failure it reports.
    let verdict = verdicts
        .iter()
        .find(|b| b.recipient.as_deref().is_some_and(|r| r.eq_ignore_ascii_case(&recipient)) && b.classification.is_some())
        .or_else(|| verdicts.iter().find(|b| b.classification.is_some()));
    let Some(b) = verdict else {
        // An auto-reply or a delivered/relayed notice: nothing failed.
        tracing::info!(queue_id = %id, to = %recipient, "message to a VERP address is not a failure report; discarded");
        return consumed(format!("bounce for {id} recipient {index}: no failure in it, discarded"));
    };
    let Some(c) = b.classification else { return consumed("discarded".into()) };
    // `Action: delayed` is a warning: soft, whatever its status says.
    let c = if b.action.as_deref().is_some_and(|a| a.eq_ignore_ascii_case("delayed")) {
        bounce::classify_as(Kind::Soft, None, b.status, &b.diagnostic)
    } else {
        c
    };
    sup.metrics.async_bounce(c);
    sup.metrics.delivery_failure(c);
    let reply = if b.diagnostic.is_empty() { b.status.map(|s| s.to_string()).unwrap_or_default() } else { b.diagnostic.clone() };
    let remote = b.remote_mta.clone().unwrap_or_default();
    tracing::info!(
        queue_id = %id, to = %recipient, kind = c.kind.as_str(), category = c.category.as_str(), remote = %remote,
        reply = %super::clip(&reply), "asynchronous bounce"
    );
    if let Some(rec) = recorder {
        let attempt = AttemptRecord {
            time: crate::store::unix_now(),
            queue_id: id.as_str().to_string(),
            mx_host: if remote.is_empty() { "asynchronous bounce".into() } else { format!("asynchronous bounce from {remote}") },
            tls: false,
            recipients: vec![RecipientResult {
                address: recipient.clone(),
                outcome: if c.kind == Kind::Hard { "bounced" } else { "deferred" }.into(),
                reply: super::clip(&reply),
            }],
        };
        rec.record(crate::store::Event::Timeline(Box::new(crate::store::TimelineEvent::Attempt(attempt))));
    }
    sup.hard_bounce(&sender, &recipient, c, &reply, "async-bounce");
    consumed(format!("asynchronous bounce for {id} recipient {index} <{recipient}> recorded: {} {}", c.kind.as_str(), c.category.as_str()))
}

/// Consumes an ARF complaint. Blocks.
pub fn complaint(sup: &Suppressions, spool: &Spool, recorder: Option<&Recorder>, raw: &[u8]) -> Reply {
    let Some(c) = super::arf::read(raw) else {
        tracing::info!("message to the complaints address is not an ARF report; discarded");
        return consumed("not an ARF report, discarded".into());
    };
    // The original's envelope sender may be one of our VERP addresses:
    // then the queue id, recipient and sender are exact.
    let verp = c
        .mail_from
        .as_deref()
        .and_then(|a| Mailbox::parse(a, true).ok())
        .and_then(|m| sup.verp_target(&m))
        .and_then(Result::ok)
        .and_then(|(id, i)| resolve(sup, spool, recorder, &id, i).map(|(s, r)| (id, s, r)));
    let (queue_id, sender, recipient) = match verp {
        Some((id, s, r)) => (Some(id.as_str().to_string()), s.mailbox().map(|m| m.to_string()), Some(r)),
        // The envelope sender's domain is the list the submission path reads.
        None => (None, c.mail_from.clone().or(c.from.clone()), c.recipient.clone()),
    };
    let (Some(sender), Some(recipient)) = (sender, recipient) else {
        tracing::warn!(feedback_type = %c.feedback_type, "complaint without a sender or recipient; discarded");
        return consumed("complaint names no sender or recipient, discarded".into());
    };
    tracing::info!(
        from = %sender, to = %recipient, feedback_type = %c.feedback_type,
        queue_id = queue_id.as_deref().unwrap_or(""), "complaint"
    );
    // A `not-spam` report takes nobody off the list and puts nobody on it.
    let suppress = c.feedback_type != "not-spam";
    let reply = if suppress {
        match sup.complaint(&sender, &recipient, &c.feedback_type) {
            Ok(()) => consumed(format!("complaint about <{recipient}> recorded; suppressed")),
            // The reporter tries again: the event waits for that attempt.
            Err(e) => return Reply::new(451, StatusCode::new(4, 3, 0), format!("suppression list unavailable: {e}")),
        }
    } else {
        consumed(format!("not-spam report for <{recipient}> recorded"))
    };
    if let Some(hooks) = sup.hooks_for(EventKind::Complained) {
        let mut e = WebhookEvent::new(EventKind::Complained, &ReversePath::Null);
        e.sender = sender;
        e.recipient = Some(recipient);
        e.queue_id = queue_id;
        e.message_id = c.message_id.clone();
        // A complaint is a permanent verdict on the mail, of the kind a
        // spam block is: a consumer that stops mailing hard bounces stops
        // here too. A not-spam report is no failure.
        e.classification = suppress.then_some(crate::webhook::EventClass { kind: Kind::Hard, category: Category::PolicyOrSpam });
        e.detail = Some(Detail::Complaint { feedback_type: c.feedback_type.clone(), reporter: c.reporter.clone(), suppressed: suppress });
        hooks.emit(e);
    }
    reply
}
