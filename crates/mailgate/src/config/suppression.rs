//! `[suppression]`: the per-sending-domain list of recipients that hard
//! bounced or complained, and what later submissions to them get; and the
//! VERP settings of `[delivery]` checked with it.

use mailgate_core::bounce::Category;
use mailgate_core::{Domain, Mailbox};
use serde::Deserialize;

/// `[suppression]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSuppression {
    pub categories: Vec<String>,
    pub expire_days: u64,
    pub complaints: Vec<String>,
    pub action: String,
}

impl Default for RawSuppression {
    fn default() -> Self {
        RawSuppression { categories: vec!["no_such_user".into()], expire_days: 0, complaints: Vec::new(), action: "refuse".into() }
    }
}

/// What a submission to a suppressed address gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuppressAction {
    /// `550 5.1.1` at RCPT TO.
    Refuse,
    /// Accepted, then failed at once with a DSN to the sender.
    Drop,
}

/// `[suppression]`, checked.
#[derive(Debug, Clone)]
pub struct Suppression {
    /// Hard-bounce categories that suppress the recipient.
    pub categories: Vec<Category>,
    /// Days an automatic entry (bounce, complaint) lasts; 0: for ever.
    pub expire_days: u64,
    /// Addresses whose mail is an ARF complaint report to consume.
    pub complaints: Vec<Mailbox>,
    pub action: SuppressAction,
}

impl Default for Suppression {
    fn default() -> Self {
        RawSuppression::default().validate().unwrap_or(Suppression {
            categories: vec![Category::NoSuchUser],
            expire_days: 0,
            complaints: Vec::new(),
            action: SuppressAction::Refuse,
        })
    }
}

impl RawSuppression {
    /// Checks the section. Problems are `(key, message)`.
    pub(super) fn validate(self) -> Result<Suppression, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut categories = Vec::new();
        for (i, c) in self.categories.iter().enumerate() {
            match Category::ALL.iter().find(|k| k.as_str() == c) {
                Some(k) => categories.push(*k),
                None => {
                    let all: Vec<&str> = Category::ALL.iter().map(|k| k.as_str()).collect();
                    problems.push((format!("suppression.categories[{i}]"), format!("{c:?} is not one of {}", all.join(", "))));
                }
            }
        }
        let mut complaints = Vec::new();
        for (i, a) in self.complaints.iter().enumerate() {
            match Mailbox::parse(a, true) {
                Ok(m) => complaints.push(m),
                Err(_) => problems.push((format!("suppression.complaints[{i}]"), format!("{a:?} is not an email address"))),
            }
        }
        let action = match self.action.as_str() {
            "refuse" => SuppressAction::Refuse,
            "drop" => SuppressAction::Drop,
            other => {
                problems.push(("suppression.action".into(), format!("{other:?} must be \"refuse\" or \"drop\"")));
                SuppressAction::Refuse
            }
        };
        if problems.is_empty() { Ok(Suppression { categories, expire_days: self.expire_days, complaints, action }) } else { Err(problems) }
    }
}

/// `[delivery] return_path_domain`, lower-cased, or the problem with it.
pub(super) fn return_path_domain(value: Option<&str>) -> Result<Option<String>, (String, String)> {
    match value {
        None => Ok(None),
        Some(v) => match Domain::parse(v.trim_end_matches('.'), true) {
            Ok(d) => Ok(Some(d.as_str().to_ascii_lowercase())),
            Err(e) => Err(("delivery.return_path_domain".into(), format!("{v:?} is not a domain: {e}"))),
        },
    }
}
