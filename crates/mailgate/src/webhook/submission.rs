//! `rejected` events: what an authenticated submitter sent and mailgate
//! refused with a 5xx — a MAIL FROM it may not use, a refused recipient,
//! or a message refused at the end of DATA (a `From:` it may not use,
//! failed checks). One [`Rejections`] per SMTP session follows its
//! transaction (sender, accepted recipients). Transient refusals (4xx)
//! are not events: the client tries again.
//!
//! May import: `mailgate-core` (and the parent module).

use std::sync::{Arc, Mutex};

use mailgate_core::address::Path;
use mailgate_core::reply::Reply;
use mailgate_core::session::SessionInfo;
use mailgate_core::{Mailbox, QueueId, ReversePath};

use super::{EventKind, Hooks, WebhookEvent};

pub struct Rejections {
    hooks: Arc<Hooks>,
    txn: Mutex<Txn>,
}

#[derive(Default)]
struct Txn {
    sender: Option<ReversePath>,
    accepted: Vec<String>,
}

fn refused(reply: &Reply) -> bool {
    (500..600).contains(&reply.code)
}

impl Rejections {
    /// `None` when no webhook receives `rejected`.
    pub fn new(hooks: Arc<Hooks>) -> Option<Rejections> {
        hooks.wants(EventKind::Rejected).then(|| Rejections { hooks, txn: Mutex::new(Txn::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Txn> {
        self.txn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, sender: &ReversePath, recipient: Option<String>, reply: &Reply) {
        let mut e = WebhookEvent::new(EventKind::Rejected, sender);
        e.recipient = recipient;
        e.reply = Some(reply.to_string().trim_end().to_string());
        e.classification = mailgate_core::bounce::classify_reply(&reply.to_string()).map(Into::into);
        self.hooks.emit(e);
    }

    /// MAIL FROM was answered: a new transaction (or a refused one).
    pub fn mail(&self, info: &SessionInfo, from: &ReversePath, result: Option<&Reply>) {
        *self.lock() = Txn { sender: Some(from.clone()), accepted: Vec::new() };
        if let Some(reply) = result
            && info.authenticated_as.is_some()
            && refused(reply)
        {
            self.event(from, None, reply);
        }
    }

    /// RCPT TO was answered by the relay policy.
    pub fn rcpt(&self, info: &SessionInfo, to: &Path, result: Result<&Mailbox, &Reply>) {
        match result {
            Ok(m) => self.lock().accepted.push(m.to_string()),
            Err(reply) if info.authenticated_as.is_some() && refused(reply) => {
                let sender = self.lock().sender.clone().unwrap_or(ReversePath::Null);
                let to = match to {
                    Path::Mailbox { mailbox, .. } => mailbox.to_string(),
                    Path::Postmaster => "postmaster".to_string(),
                    Path::Null => String::new(),
                };
                self.event(&sender, Some(to), reply);
            }
            Err(_) => {}
        }
    }

    /// The end of DATA: a refused message is one event per recipient.
    pub fn message(&self, authenticated: bool, result: &Result<QueueId, Reply>, message_id: Option<&str>) {
        let txn = std::mem::take(&mut *self.lock());
        let Err(reply) = result else { return };
        if !authenticated || !refused(reply) {
            return;
        }
        let sender = txn.sender.unwrap_or(ReversePath::Null);
        for to in txn.accepted {
            let mut e = WebhookEvent::new(EventKind::Rejected, &sender);
            e.recipient = Some(to);
            e.message_id = message_id.filter(|m| !m.is_empty()).map(str::to_string);
            e.reply = Some(reply.to_string().trim_end().to_string());
            e.classification = mailgate_core::bounce::classify_reply(&reply.to_string()).map(Into::into);
            self.hooks.emit(e);
        }
    }
}
