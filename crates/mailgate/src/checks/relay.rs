//! Relay control: who may send mail through us and to whom.
//!
//! An `mx` listener accepts recipients only in our `[[domain]]`s, unless the
//! client is trusted (`[relay].trusted_networks`) or authenticated. Any
//! sender-specified routing from an untrusted client is refused, as Postfix
//! does with `allow_untrusted_routing = no`: a next hop might honour it and
//! forward the message on, which would make us an open relay by proxy.
//!
//! Two more kinds of recipient come in at the MX: `[[forward]]` addresses
//! (accepted in any domain) and SRS addresses in our `[srs] domain`, which
//! stand for the original sender a bounce goes back to: a valid one is
//! replaced by that address, a forged or expired one refused. On
//! submission listeners, each accepted recipient then counts against the
//! rate limits (`checks::rate`).
//!
//! With VERP on, a `bounces+...` address of ours is accepted on any
//! listener only when its token verifies; a submitting client's recipient
//! on the sender domain's suppression list is refused
//! ([`crate::suppression`] decides both).

use std::path::PathBuf;
use std::sync::Arc;

use crate::inbound::spill::Budget;
use std::sync::atomic::{AtomicU64, Ordering};

use mailgate_core::address::{Host, Path};
use mailgate_core::reply::{Reply, StatusCode, status};
use mailgate_core::session::{Policy, Role, SessionInfo};
use mailgate_core::{Domain, Mailbox, ReversePath};

pub struct RelayPolicy {
    auth: Arc<super::auth::Authenticator>,
    local_domains: Vec<Domain>,
    /// Free bytes in the spool's filesystem, refreshed in the background.
    free_space: Arc<AtomicU64>,
    min_free_space: u64,
    /// Message content sessions hold in memory, all together.
    budget: Arc<Budget>,
    /// Submission rate limits, when any is configured.
    rate: Option<Arc<super::rate::RateLimiter>>,
    /// `[[forward]]` addresses and SRS, when configured.
    forwarding: Option<Arc<crate::srs::Forwarding>>,
    /// Checks VERP addresses and the suppression list at RCPT TO.
    suppressions: Option<Arc<crate::suppression::Suppressions>>,
}

impl RelayPolicy {
    pub fn new(
        local_domains: Vec<Domain>,
        free_space: Arc<AtomicU64>,
        min_free_space: u64,
        auth: Arc<super::auth::Authenticator>,
        budget: Arc<Budget>,
    ) -> Self {
        RelayPolicy { auth, local_domains, free_space, min_free_space, budget, rate: None, forwarding: None, suppressions: None }
    }

    /// Counts submission recipients against these limits.
    pub fn with_rate_limits(mut self, rate: Arc<super::rate::RateLimiter>) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Accepts forwarding addresses and checks SRS addresses.
    pub fn with_forwarding(mut self, forwarding: Arc<crate::srs::Forwarding>) -> Self {
        self.forwarding = Some(forwarding);
        self
    }

    /// Checks VERP addresses and the suppression list at RCPT TO.
    pub fn with_suppressions(mut self, s: Arc<crate::suppression::Suppressions>) -> Self {
        self.suppressions = Some(s);
        self
    }

    fn may_relay(info: &SessionInfo) -> bool {
        info.trusted || info.authenticated_as.is_some()
    }
}

impl Policy for RelayPolicy {
    fn check_mail(&self, info: &SessionInfo, from: &ReversePath, declared_size: Option<u64>) -> Result<(), Reply> {
        if info.role != Role::Mx && !Self::may_relay(info) {
            let why = if info.tls.is_none() { "Must issue a STARTTLS command first" } else { "Authentication required" };
            return Err(Reply::new(530, status::AUTH_REQUIRED, why));
        }
        // An authenticated user may only use addresses it owns: this is
        // what stops a user from sending as the CEO.
        if let Some(user) = info.authenticated_as.as_deref() {
            // An `@` inside a quoted local part
            // (`"ceo@bank.example"@ours.example`) matches a `*@ours.example`
            // pattern while naming another address: refused like the same
            // trick in `From:` (`checks::sender`).
            if from.mailbox().is_some_and(|m| m.local_part().contains('@')) {
                return Err(Reply::new(553, status::POLICY, "Sender address with an @ in its local part refused"));
            }
            let address = from.mailbox().map(|m| m.to_string()).unwrap_or_default();
            if !self.auth.may_send_as(user, &address) {
                return Err(Reply::new(553, status::POLICY, format!("Sender address <{address}> not owned by user {user}")));
            }
        }
        // Like Postfix's queue_minfree: refuse before the client sends data
        // we could not store.
        let need = self.min_free_space.saturating_add(declared_size.unwrap_or(0));
        if self.free_space.load(Ordering::Relaxed) < need {
            return Err(Reply::new(452, status::NO_SYSTEM_STORAGE, "Insufficient system storage"));
        }
        // No transaction starts while sessions already hold all the memory
        // they may.
        if self.budget.exhausted() {
            return Err(mailgate_core::session::over_budget_reply());
        }
        Ok(())
    }

    fn check_rcpt(&self, info: &SessionInfo, from: &ReversePath, to: &Path) -> Result<Mailbox, Reply> {
        let mailbox = self.recipient(info, to)?;
        // Mail from the internet is never held against the suppression
        // list; a suppressed recipient is not counted by the rate limits.
        if let Some(s) = &self.suppressions
            && Self::may_relay(info)
        {
            s.check_submission(from, &mailbox)?;
        }
        if let Some(rate) = &self.rate {
            rate.check_rcpt(info, from)?;
        }
        Ok(mailbox)
    }
}

impl RelayPolicy {
    /// The mailbox to deliver to, or the refusal.
    fn recipient(&self, info: &SessionInfo, to: &Path) -> Result<Mailbox, Reply> {
        let denied = || Reply::new(554, status::POLICY, "Relay access denied");
        let (mailbox, source_route) = match to {
            Path::Mailbox { mailbox, source_route } => (mailbox, source_route),
            Path::Postmaster => {
                // RFC 5321 §4.5.1: <postmaster> must be accepted.
                let domain = self.local_domains.first().cloned().ok_or_else(denied)?;
                return Mailbox::from_parts("postmaster", domain).map_err(|_| denied());
            }
            Path::Null => return Err(Reply::new(501, status::BAD_DEST_SYNTAX, "Empty recipient")),
        };
        if let Some(fwd) = &self.forwarding
            && let Some(result) = fwd.srs.reverse(mailbox)
        {
            // 5.1.1: the address names no mailbox (a forged hash or a
            // timestamp past max_age_days); the sender's bounce classifier
            // reads it as a bad address, not a policy block, which is what
            // it is for the sender of a forged bounce.
            return result.map_err(|e| {
                tracing::info!(client = %info.client_ip, rcpt = %mailbox, error = %e, "SRS address refused");
                Reply::new(550, StatusCode::new(5, 1, 1), format!("Bad SRS address <{mailbox}>: {e}"))
            });
        }
        if let Some(verdict) = self.suppressions.as_ref().and_then(|s| s.check_verp_rcpt(mailbox)) {
            return verdict.map(|()| mailbox.clone());
        }
        if Self::may_relay(info) {
            return Ok(mailbox.clone());
        }
        if !source_route.is_empty() {
            return Err(Reply::new(550, status::POLICY, "Source routing refused"));
        }
        if let Some(hack) = mailbox.routing_hack() {
            return Err(Reply::new(550, status::POLICY, format!("Sender-specified routing refused: {hack}")));
        }
        if self.forwarding.as_ref().is_some_and(|f| f.is_forward(mailbox)) {
            return Ok(mailbox.clone());
        }
        match mailbox.host() {
            Host::Domain(d) if self.local_domains.iter().any(|l| l.same_name(d)) => Ok(mailbox.clone()),
            _ => Err(denied()),
        }
    }
}

/// Keeps `free` updated with the free space under `dir`, once a second.
pub fn watch_free_space(dir: PathBuf, free: Arc<AtomicU64>, probe: fn(&std::path::Path) -> std::io::Result<u64>) {
    let update = move || match probe(&dir) {
        Ok(n) => free.store(n, Ordering::Relaxed),
        Err(e) => tracing::warn!(error = %e, "cannot read free space of the spool filesystem"),
    };
    update();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            update();
        }
    });
}
