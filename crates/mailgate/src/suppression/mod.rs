//! Bounces, VERP and the suppression list: what the gateway does for the
//! applications that send through it so they stop mailing addresses that
//! bounce or complain.
//!
//! - [`verp`]: per-recipient envelope senders of submitted mail, and their
//!   authenticated tokens;
//! - [`arf`]: complaint reports (RFC 5965);
//! - [`consume`]: mail to a VERP address or a `[suppression] complaints`
//!   address, read instead of delivered (called by delivery);
//! - [`Suppressions`]: the list itself, kept in the report store
//!   ([`crate::store::suppression`]) with an in-memory copy the SMTP path
//!   reads without waiting on the store (re-read every
//!   [`REFRESH`], so nodes sharing a store see each other's entries).
//!
//! `complained` and `suppressed` webhook events start here (see
//! [`Suppressions::set_hooks`]).
//!
//! May import: `store`, `config`, `metrics`, `spool` (the envelope of a
//! message a bounce names), `report::bounce`, `webhook` (events),
//! `mailgate-core`.

pub mod arf;
pub mod consume;
pub mod verp;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use ipnet::IpNet;
use mailgate_core::bounce::Classification;
use mailgate_core::envelope::ClientInfo;
use mailgate_core::reply::{Reply, StatusCode};
use mailgate_core::{Domain, Mailbox, QueueId, ReversePath};

use crate::config::{Config, SuppressAction, Suppression};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::suppression::Suppressed;
use crate::webhook::{Detail, EventKind, Hooks, ListEntry, WebhookEvent};

/// How often the in-memory copy is re-read from the store (and expired
/// entries deleted there).
pub const REFRESH: Duration = Duration::from_secs(10);
/// How long a VERP token stays good after its message arrived, beyond
/// `[delivery] max_age`: receivers retry for days before they bounce.
const VERP_GRACE: u64 = 7 * 86_400;

/// The suppression list, VERP codec and settings, shared by the SMTP
/// path, the scheduler, delivery and the admin API.
pub struct Suppressions {
    store: Arc<dyn Store>,
    settings: Suppression,
    verp: Option<verp::Verp>,
    return_path_domain: Option<String>,
    local_domains: Vec<Domain>,
    trusted: Vec<IpNet>,
    metrics: Arc<Metrics>,
    /// (domain, address), lower-cased: the entries in force when read.
    cache: RwLock<HashMap<(String, String), Suppressed>>,
    /// `[[webhook]]`s, set once they are started (after the list, which
    /// delivery needs first).
    hooks: OnceLock<Arc<Hooks>>,
}

impl Suppressions {
    /// Reads the list and, with `[delivery] verp`, the VERP secret
    /// (created on first start).
    pub fn new(config: &Config, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Suppressions>> {
        let verp = match config.delivery.verp {
            true => Some(verp::Verp::new(&verp::load_or_create(&config.data_dir)?, config.delivery.max_age.saturating_add(VERP_GRACE))),
            false => None,
        };
        let s = Suppressions {
            store,
            settings: config.suppression.clone(),
            verp,
            return_path_domain: config.delivery.return_path_domain.clone(),
            local_domains: config.domains.iter().map(|d| d.name.clone()).collect(),
            trusted: config.trusted_networks.clone(),
            metrics,
            cache: RwLock::new(HashMap::new()),
            hooks: OnceLock::new(),
        };
        // A store that cannot be read yet (PostgreSQL still down) must not
        // stop mail: the list is read again every REFRESH.
        if let Err(e) = s.reload() {
            tracing::warn!(error = %e, "cannot read the suppression list yet; starting with none, retrying in the background");
        }
        Ok(Arc::new(s))
    }

    /// Re-reads the store now and every [`REFRESH`].
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                let s = me.clone();
                let done = tokio::task::spawn_blocking(move || {
                    s.store.suppression_expire(crate::store::unix_now())?;
                    s.reload()
                })
                .await;
                if let Ok(Err(e)) = done {
                    tracing::warn!(error = %e, "cannot re-read the suppression list; using the copy in memory");
                }
            }
        });
    }

    fn reload(&self) -> crate::store::Result<()> {
        let entries = self.store.suppression_list(None, crate::store::unix_now())?;
        let map = entries.into_iter().map(|e| ((e.domain.clone(), e.address.clone()), e)).collect();
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    /// From now on `complained` and `suppressed` events go to `hooks`.
    pub fn set_hooks(&self, hooks: Arc<Hooks>) {
        let _ = self.hooks.set(hooks);
    }

    /// The webhooks, if any receives events of `kind`.
    pub fn hooks_for(&self, kind: EventKind) -> Option<&Hooks> {
        self.hooks.get().map(Arc::as_ref).filter(|h| h.wants(kind))
    }

    pub fn settings(&self) -> &Suppression {
        &self.settings
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The entry in force for `address` in `domain`'s list.
    pub fn lookup(&self, domain: &str, address: &str) -> Option<Suppressed> {
        let key = (domain.to_lowercase(), address.to_lowercase());
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.get(&key).filter(|e| e.active(crate::store::unix_now())).cloned()
    }

    /// Adds an entry to the store and the copy in memory. Blocks.
    pub fn add(&self, entry: Suppressed) -> crate::store::Result<()> {
        self.store.suppression_add(&entry)?;
        let mut e = entry;
        e.domain = e.domain.to_lowercase();
        e.address = e.address.to_lowercase();
        self.cache.write().unwrap_or_else(|p| p.into_inner()).insert((e.domain.clone(), e.address.clone()), e);
        Ok(())
    }

    /// Removes `address` from one domain's list or all. Blocks.
    pub fn remove(&self, address: &str, domain: Option<&str>) -> crate::store::Result<u64> {
        let n = self.store.suppression_remove(address, domain)?;
        let (address, domain) = (address.to_lowercase(), domain.map(str::to_lowercase));
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(d, a), _| !(a == &address && domain.as_ref().is_none_or(|want| want == d)));
        Ok(n)
    }

    /// The entries in force (one domain's, or all). Blocks.
    pub fn list(&self, domain: Option<&str>) -> crate::store::Result<Vec<Suppressed>> {
        self.store.suppression_list(domain, crate::store::unix_now())
    }

    /// When an automatic entry made now expires (0: never).
    fn expiry(&self, now: u64) -> u64 {
        match self.settings.expire_days {
            0 => 0,
            d => now.saturating_add(d.saturating_mul(86_400)),
        }
    }

    /// A hard bounce for `recipient` of mail from `sender`: suppressed when
    /// its category is one of `[suppression] categories` and it is not on
    /// the list already (the first reason and date stay). Blocks.
    pub fn hard_bounce(&self, sender: &ReversePath, recipient: &str, c: Classification, reply: &str, source: &'static str) {
        if c.kind != mailgate_core::bounce::Kind::Hard || !self.settings.categories.contains(&c.category) {
            return;
        }
        let Some(domain) = sender.mailbox().map(|m| m.host().to_string()) else { return };
        if self.lookup(&domain, recipient).is_some() {
            return;
        }
        let now = crate::store::unix_now();
        let entry = Suppressed {
            domain: domain.clone(),
            address: recipient.to_string(),
            category: c.category.as_str().into(),
            reason: clip(reply),
            source: source.into(),
            created: now,
            expires: self.expiry(now),
        };
        match self.add(entry) {
            Ok(()) => {
                self.metrics.suppression("added");
                tracing::info!(domain = %domain, to = %recipient, category = c.category.as_str(), source, "suppressed");
            }
            Err(e) => tracing::error!(domain = %domain, to = %recipient, error = %e, "cannot add to the suppression list"),
        }
    }

    /// A complaint (of `feedback_type`) about mail from `sender` to
    /// `recipient`. Blocks.
    pub fn complaint(&self, sender: &str, recipient: &str, feedback_type: &str) -> crate::store::Result<()> {
        let domain = sender.rsplit_once('@').map_or(sender, |(_, d)| d).to_string();
        let now = crate::store::unix_now();
        self.add(Suppressed {
            domain,
            address: recipient.to_string(),
            category: "complaint".into(),
            reason: clip(&format!("feedback type {feedback_type}")),
            source: "complaint".into(),
            created: now,
            expires: self.expiry(now),
        })?;
        self.metrics.suppression("added");
        Ok(())
    }

    /// Mail from this client was submitted (an authenticated user or a
    /// trusted network), not received from the internet.
    pub fn submitted(&self, client: &ClientInfo) -> bool {
        client.authenticated_as.is_some() || self.trusted.iter().any(|n| n.contains(&client.ip))
    }

    /// The VERP envelope sender for recipient `index` of a submitted
    /// message; `None` when VERP is off, the message was not submitted or
    /// its sender is `<>`.
    pub fn verp_sender(&self, id: &QueueId, envelope: &mailgate_core::Envelope, index: usize) -> Option<ReversePath> {
        let verp = self.verp.as_ref()?;
        if !self.submitted(&envelope.client) {
            return None;
        }
        let sender = envelope.sender.mailbox()?;
        let domain = match &self.return_path_domain {
            Some(d) => Domain::parse(d, true).ok()?,
            None => match sender.host() {
                mailgate_core::address::Host::Domain(d) => d.clone(),
                mailgate_core::address::Host::Literal(_) => return None,
            },
        };
        Mailbox::from_parts(&verp.local_part(id, index), domain).ok().map(ReversePath::Mailbox)
    }

    /// The message and recipient index a VERP address names, if it is a
    /// good token of ours for one of our return-path domains.
    pub fn verp_target(&self, to: &Mailbox) -> Option<Result<(QueueId, usize), verp::VerpError>> {
        let verp = self.verp.as_ref()?;
        if !verp::is_verp(to.local_part()) || !self.return_path_host(to) {
            return None;
        }
        Some(verp.decode(to.local_part(), crate::store::unix_now()))
    }

    fn return_path_host(&self, to: &Mailbox) -> bool {
        let mailgate_core::address::Host::Domain(d) = to.host() else { return false };
        match &self.return_path_domain {
            Some(rp) => d.as_str().eq_ignore_ascii_case(rp) || self.local_domains.iter().any(|l| l.same_name(d)),
            None => self.local_domains.iter().any(|l| l.same_name(d)),
        }
    }

    /// `to` is a `[suppression] complaints` address.
    pub fn is_complaints_address(&self, to: &Mailbox) -> bool {
        self.settings.complaints.iter().any(|a| a.host() == to.host() && a.local_part().eq_ignore_ascii_case(to.local_part()))
    }

    /// RCPT TO on any listener: a VERP address of ours is accepted when its
    /// token verifies and refused (`550 5.1.1`) when forged or expired;
    /// `None` for any other address.
    pub fn check_verp_rcpt(&self, to: &Mailbox) -> Option<Result<(), Reply>> {
        match self.verp_target(to)? {
            Ok(_) => Some(Ok(())),
            Err(e) => {
                tracing::info!(to = %to, reason = %e, "VERP address refused");
                Some(Err(Reply::new(550, StatusCode::new(5, 1, 1), format!("<{to}>: no such bounce address ({e})"))))
            }
        }
    }

    /// RCPT TO from a submitting client: a recipient on the list of the
    /// sender's domain is refused (`[suppression] action = "refuse"`).
    pub fn check_submission(&self, from: &ReversePath, to: &Mailbox) -> Result<(), Reply> {
        if self.settings.action != SuppressAction::Refuse {
            return Ok(());
        }
        let Some(sender) = from.mailbox() else { return Ok(()) };
        let Some(entry) = self.lookup(&sender.host().to_string(), &to.to_string()) else { return Ok(()) };
        let reply = refusal(&entry);
        self.metrics.suppression("refused");
        tracing::info!(from = %sender, to = %to, reason = %reply.lines.join(" "), "suppressed recipient refused");
        if let Some(hooks) = self.hooks_for(EventKind::Suppressed) {
            hooks.emit(suppressed_event(from, to, &entry, &reply, None, "refused"));
        }
        Err(reply)
    }

    /// With `[suppression] action = "drop"`: the refusal that makes the
    /// scheduler fail this recipient of a submitted message at once (with
    /// a notice), and the `suppressed` event to emit with the message's
    /// other events (when a webhook wants it).
    pub fn drop_recipient(&self, id: &QueueId, envelope: &mailgate_core::Envelope, to: &Mailbox) -> Option<(Reply, Option<WebhookEvent>)> {
        if self.settings.action != SuppressAction::Drop || !self.submitted(&envelope.client) {
            return None;
        }
        let sender = envelope.sender.mailbox()?;
        let entry = self.lookup(&sender.host().to_string(), &to.to_string())?;
        let reply = refusal(&entry);
        self.metrics.suppression("dropped");
        tracing::info!(queue_id = %id, from = %sender, to = %to, reason = %reply.lines.join(" "), "suppressed recipient dropped");
        let event =
            self.hooks_for(EventKind::Suppressed).map(|_| suppressed_event(&envelope.sender, to, &entry, &reply, Some(id), "dropped"));
        Some((reply, event))
    }
}

/// The `suppressed` event of a recipient `action` (`refused`, `dropped`)
/// for being on the list as `entry`.
fn suppressed_event(
    sender: &ReversePath,
    to: &Mailbox,
    entry: &Suppressed,
    reply: &Reply,
    id: Option<&QueueId>,
    action: &'static str,
) -> WebhookEvent {
    let mut e = WebhookEvent::new(EventKind::Suppressed, sender);
    e.queue_id = id.map(|i| i.as_str().to_string());
    e.recipient = Some(to.to_string());
    e.reply = Some(reply.to_string().trim_end().to_string());
    e.detail = Some(Detail::Suppression {
        action,
        suppression: ListEntry {
            domain: entry.domain.clone(),
            source: entry.source.clone(),
            category: entry.category.clone(),
            reason: entry.reason.clone(),
            since: crate::webhook::rfc3339(entry.created),
            expires: (entry.expires != 0).then(|| crate::webhook::rfc3339(entry.expires)),
        },
    });
    e
}

/// The `550 5.1.1` a suppressed recipient gets, saying why and since when.
pub fn refusal(e: &Suppressed) -> Reply {
    let why = match e.source.as_str() {
        "complaint" => format!("complaint ({})", e.reason.trim_start_matches("feedback type ")),
        "manual" if e.reason.is_empty() => "added by an administrator".to_string(),
        "manual" => format!("added by an administrator ({})", e.reason),
        _ => format!("hard bounce ({})", e.category),
    };
    Reply::new(
        550,
        StatusCode::new(5, 1, 1),
        format!("<{}> is on the suppression list of {}: {why} on {}", e.address, e.domain, date(e.created)),
    )
}

/// `YYYY-MM-DD` (UTC) of Unix seconds.
pub fn date(secs: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Reply texts are the remote's: one line, printable, bounded.
fn clip(s: &str) -> String {
    let one: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    one.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_796_515_200), "2026-12-06");
        assert_eq!(date(951_782_400), "2000-02-29");
    }

    #[test]
    fn refusal_names_list_reason_and_date() {
        let e = Suppressed {
            domain: "example.com".into(),
            address: "x@y.test".into(),
            category: "no_such_user".into(),
            reason: "550 5.1.1 unknown".into(),
            source: "bounce".into(),
            created: 1_796_515_200,
            expires: 0,
        };
        let r = refusal(&e);
        assert_eq!(r.code, 550);
        assert_eq!(r.lines.join(""), "<x@y.test> is on the suppression list of example.com: hard bounce (no_such_user) on 2026-12-06");
    }
}
