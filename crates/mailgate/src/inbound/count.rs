//! Counting what the inbound side refuses and what the checks find.
//!
//! A refusal is counted once, where it is decided: MAIL and RCPT refusals
//! of the relay policy by [`Counting`], the end of a transaction by the
//! driver, and the refusals the sans-I/O session makes itself (size,
//! content, too many recipients, content the driver gave up on) by the
//! driver when it writes the reply ([`refused_by_session`]).
//!
//! May import: `checks`, `config`, `metrics`, `mailgate-core`.

use std::sync::Arc;

use mailgate_core::address::Path;
use mailgate_core::reply::Reply;
use mailgate_core::session::{Policy, SessionInfo};
use mailgate_core::{Mailbox, ReversePath};

use crate::checks::verdict::Verdict;
use crate::config::Action;
use crate::metrics::Metrics;

/// The relay policy, counting what it refuses (and, one per session,
/// keeping the refusals for the message timeline).
pub struct Counting {
    pub inner: Arc<dyn Policy>,
    pub metrics: Arc<Metrics>,
    /// `None` without a report store.
    pub refusals: Option<super::timeline::Refusals>,
}

impl Counting {
    fn count<T>(&self, result: Result<T, Reply>) -> Result<T, Reply> {
        if let Err(reply) = &result
            && !refused_by_session(reply)
        {
            self.metrics.message_refused(reply);
        }
        result
    }
}

impl Policy for Counting {
    fn check_mail(&self, info: &SessionInfo, from: &ReversePath, declared_size: Option<u64>) -> Result<(), Reply> {
        let result = self.count(self.inner.check_mail(info, from, declared_size));
        if let Some(r) = &self.refusals {
            r.mail(info, from, result.as_ref().err());
        }
        result
    }

    fn check_rcpt(&self, info: &SessionInfo, to: &Path) -> Result<Mailbox, Reply> {
        let result = self.count(self.inner.check_rcpt(info, to));
        if let (Some(r), Err(reply)) = (&self.refusals, &result) {
            r.rcpt(info, to, reply);
        }
        result
    }

    fn check_rcpt_from(&self, info: &SessionInfo, from: &ReversePath, to: &Mailbox) -> Result<(), Reply> {
        let result = self.count(self.inner.check_rcpt_from(info, from, to));
        if let (Some(r), Err(reply)) = (&self.refusals, &result) {
            let path = Path::Mailbox { mailbox: to.clone(), source_route: Vec::new() };
            r.rcpt(info, &path, reply);
        }
        result
    }
}

/// Refusals the driver counts when it writes them: those the session
/// makes itself, with codes nothing else gives at MAIL or RCPT. The policy
/// also refuses MAIL with `452 4.3.1` and `451 4.3.2`; those pass here
/// too, and [`Counting`] leaves them to the driver.
pub fn refused_by_session(reply: &Reply) -> bool {
    let Some(s) = reply.status else { return false };
    match (s.subject, s.detail) {
        // Size, content (bare CR/LF, NUL, long lines, 8-bit address), too many recipients.
        (3, 4) | (2, 3) | (6, _) | (5, 3) => reply.code >= 400,
        // Content refused while it arrived (disk, memory); 421 4.3.2 is a shutdown.
        (3, _) => matches!(reply.code, 451 | 452),
        _ => false,
    }
}

/// Counts what the checks found for one message and how long they took.
pub fn verdict(metrics: &Metrics, v: &Verdict, seconds: f64) {
    metrics.check_duration(seconds);
    metrics.auth_result("spf", v.spf.result);
    if v.dkim.is_empty() {
        metrics.auth_result("dkim", "none");
    }
    for d in &v.dkim {
        metrics.auth_result("dkim", d.result);
    }
    metrics.auth_result("arc", v.arc.result);
    metrics.auth_result("dmarc", v.dmarc.result);
    // As the evaluation is recorded for aggregate reports: only domains
    // that publish a policy have a disposition.
    if v.dmarc.published.is_some() {
        metrics.dmarc_disposition(match v.action {
            Action::Accept | Action::Tag => "none",
            Action::Quarantine => "quarantine",
            Action::Reject => "reject",
        });
    }
    // Once per message and rule, however many identities matched it.
    let mut rules: Vec<&str> = v.lookalike.iter().map(|f| f.rule.as_str()).collect();
    rules.sort_unstable();
    rules.dedup();
    for rule in rules {
        metrics.lookalike_hit(rule);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailgate_core::reply::{StatusCode, status};

    #[test]
    fn session_refusals_are_told_apart_from_policy_ones() {
        assert!(refused_by_session(&Reply::new(552, status::MSG_TOO_BIG, "too big")));
        assert!(refused_by_session(&Reply::new(550, status::MEDIA, "NUL")));
        assert!(refused_by_session(&Reply::new(553, status::NEED_UTF8, "utf8")));
        assert!(refused_by_session(&Reply::new(452, status::TOO_MANY_RCPTS, "too many")));
        assert!(refused_by_session(&Reply::new(452, status::NO_SYSTEM_STORAGE, "full")));
        assert!(refused_by_session(&mailgate_core::session::over_budget_reply()));
        assert!(!refused_by_session(&Reply::new(421, status::SHUTTING_DOWN, "bye")));
        assert!(!refused_by_session(&Reply::new(554, status::POLICY, "Relay access denied")));
        assert!(!refused_by_session(&Reply::new(530, status::AUTH_REQUIRED, "auth")));
        assert!(!refused_by_session(&Reply::new(500, status::INVALID_COMMAND, "what")));
        assert!(!refused_by_session(&Reply::new(550, StatusCode::new(5, 7, 1), "DMARC")));
    }
}
