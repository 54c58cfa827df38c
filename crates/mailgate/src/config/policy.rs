//! `[policy]`: what the gateway does with each outcome of the inbound
//! checks (SPF, DKIM, DMARC, ARC, look-alike domains).

use serde::{Deserialize, Serialize};

/// What happens to a message, mildest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Delivered as usual (with `Authentication-Results`).
    #[default]
    Accept,
    /// Delivered with an `X-Mailgate-Action:` header saying why.
    Tag,
    /// Accepted, then delivered to `[policy].quarantine` when set, or
    /// tagged like `tag` otherwise.
    Quarantine,
    /// Refused at the end of DATA with 550 5.7.1 and the reason.
    Reject,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Tag => "tag",
            Action::Quarantine => "quarantine",
            Action::Reject => "reject",
        }
    }
}

/// What a DNS temporary error that leaves DMARC undecided does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TempErrorAction {
    /// 451 4.7.x: the sender retries later, when DNS answers.
    Defer,
    /// Accept, with `temperror` in `Authentication-Results`.
    Accept,
}

/// `[policy]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPolicy {
    pub dmarc_reject: Action,
    pub dmarc_quarantine: Action,
    pub dmarc_none: Action,
    pub spf_fail: Action,
    pub spf_softfail: Action,
    pub lookalike: Action,
    pub invalid_from: Action,
    pub temperror: TempErrorAction,
    pub trusted_arc_sealers: Vec<String>,
    pub quarantine: Option<String>,
    pub max_dkim_signatures: usize,
}

impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            dmarc_reject: Action::Reject,
            dmarc_quarantine: Action::Quarantine,
            dmarc_none: Action::Accept,
            spf_fail: Action::Tag,
            spf_softfail: Action::Accept,
            lookalike: Action::Quarantine,
            invalid_from: Action::Reject,
            temperror: TempErrorAction::Defer,
            trusted_arc_sealers: Vec::new(),
            quarantine: None,
            max_dkim_signatures: 10,
        }
    }
}

/// The validated `[policy]`.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// DMARC fails and the domain asks `p=reject`.
    pub dmarc_reject: Action,
    /// DMARC fails and the domain asks `p=quarantine`.
    pub dmarc_quarantine: Action,
    /// DMARC fails and the domain asks only `p=none` (monitoring).
    pub dmarc_none: Action,
    /// SPF of MAIL FROM fails (`-all`) and DMARC does not pass.
    pub spf_fail: Action,
    /// SPF softfails (`~all`) and DMARC does not pass.
    pub spf_softfail: Action,
    /// A sender domain resembles a protected one.
    pub lookalike: Action,
    /// Zero or several `From:` fields, several mailboxes in one, or an
    /// address that does not parse: DMARC cannot judge such a message.
    pub invalid_from: Action,
    pub temperror: TempErrorAction,
    /// ARC sealers (d= of the newest ARC-Seal) whose valid chain overrides
    /// a DMARC failure caused by forwarding.
    pub trusted_arc_sealers: Vec<String>,
    /// Where quarantined mail goes instead of its recipients' next hop.
    pub quarantine: Option<super::NextHop>,
    /// DKIM signatures verified per message; more are ignored.
    pub max_dkim_signatures: usize,
}

impl RawPolicy {
    /// Validates; an `Err` is (key, message).
    pub(super) fn validate(self, base: &std::path::Path) -> Result<PolicyConfig, (String, String)> {
        let quarantine = match &self.quarantine {
            Some(s) => Some(super::parse_next_hop(s, base).map_err(|m| ("policy.quarantine".to_string(), m))?),
            None => None,
        };
        if self.max_dkim_signatures == 0 || self.max_dkim_signatures > 100 {
            return Err(("policy.max_dkim_signatures".into(), "must be between 1 and 100".into()));
        }
        Ok(self.with_quarantine(quarantine))
    }

    fn with_quarantine(self, quarantine: Option<super::NextHop>) -> PolicyConfig {
        PolicyConfig {
            dmarc_reject: self.dmarc_reject,
            dmarc_quarantine: self.dmarc_quarantine,
            dmarc_none: self.dmarc_none,
            spf_fail: self.spf_fail,
            spf_softfail: self.spf_softfail,
            lookalike: self.lookalike,
            invalid_from: self.invalid_from,
            temperror: self.temperror,
            trusted_arc_sealers: self.trusted_arc_sealers.iter().map(|d| d.trim_end_matches('.').to_lowercase()).collect(),
            quarantine,
            max_dkim_signatures: self.max_dkim_signatures,
        }
    }
}
