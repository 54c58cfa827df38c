//! `[[forward]]`: which recipients are forwarding addresses, and the
//! envelope their mail is relayed on with (targets, SRS sender).

use std::sync::Arc;

use mailgate_core::envelope::Recipient;
use mailgate_core::{Envelope, Mailbox, ReversePath};

use super::Srs;
use crate::config::{Forward, same_address};

/// The forwarding addresses and the rewriter their mail goes out with.
pub struct Forwarding {
    pub srs: Arc<Srs>,
    forwards: Vec<Forward>,
}

/// A message with forwarded recipients, split in two.
#[derive(Debug)]
pub struct Expanded {
    /// To the targets, from the rewritten sender (a null sender stays
    /// null: a bounce is forwarded as a bounce).
    pub forwarded: Envelope,
    /// The other recipients, with the sender unchanged, if there are any.
    pub rest: Option<Envelope>,
}

impl Forwarding {
    pub fn new(srs: Arc<Srs>, forwards: Vec<Forward>) -> Forwarding {
        Forwarding { srs, forwards }
    }

    /// Whether `rcpt` is a forwarding address (accepted at the MX even in
    /// a domain that is not ours).
    pub fn is_forward(&self, rcpt: &Mailbox) -> bool {
        self.find(rcpt).is_some()
    }

    fn find(&self, rcpt: &Mailbox) -> Option<&Forward> {
        self.forwards.iter().find(|f| same_address(&f.address, rcpt))
    }

    /// `None` when no recipient of `envelope` is forwarded.
    pub fn expand(&self, envelope: &Envelope) -> Option<Expanded> {
        let mut targets: Vec<Recipient> = Vec::new();
        let mut rest: Vec<Recipient> = Vec::new();
        for r in &envelope.recipients {
            match self.find(&r.address) {
                Some(f) => {
                    for t in &f.to {
                        if !targets.iter().any(|x| x.address == *t) {
                            let mut out = Recipient::new(t.clone());
                            out.notify = r.notify;
                            targets.push(out);
                        }
                    }
                }
                None => rest.push(r.clone()),
            }
        }
        if targets.is_empty() {
            return None;
        }
        let sender = match &envelope.sender {
            ReversePath::Null => ReversePath::Null,
            ReversePath::Mailbox(m) => ReversePath::Mailbox(self.srs.rewrite(m)),
        };
        let forwarded = Envelope { sender, recipients: targets, ..envelope.clone() };
        let rest = (!rest.is_empty()).then(|| Envelope { recipients: rest, ..envelope.clone() });
        Some(Expanded { forwarded, rest })
    }
}
