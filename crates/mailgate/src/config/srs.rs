//! `[srs]` and `[[forward]]`: forwarding addresses and the Sender
//! Rewriting Scheme their mail is relayed with. Imports only serde and
//! `mailgate-core`.

use std::path::PathBuf;

use mailgate_core::{Domain, Mailbox};
use serde::Deserialize;

/// `[srs]` as written in the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSrs {
    domain: Option<String>,
    secret_file: Option<PathBuf>,
    max_age_days: Option<u64>,
}

/// `[[forward]]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    address: String,
    to: Vec<String>,
}

/// `[srs]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrsConfig {
    /// The domain of rewritten senders (`SRS0=...@domain`); its SPF record
    /// must cover us, and its MX must be us so bounces come back.
    pub domain: Domain,
    /// Secrets, one a line, the first signs: `None` is `data_dir/srs.secret`,
    /// created on first start.
    pub secret_file: Option<PathBuf>,
    /// Bounces to addresses older than this are refused.
    pub max_age_days: u64,
}

/// One `[[forward]]`: mail for `address` goes on to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub address: Mailbox,
    pub to: Vec<Mailbox>,
}

/// Checks both sections. Problems are `(key, message)`.
pub(super) fn validate(
    srs: RawSrs,
    forwards: Vec<RawForward>,
    resolve: impl Fn(PathBuf) -> PathBuf,
) -> Result<(Option<SrsConfig>, Vec<Forward>), Vec<(String, String)>> {
    let mut problems = Vec::new();
    let mut list: Vec<Forward> = Vec::new();
    for (i, f) in forwards.into_iter().enumerate() {
        let address = match Mailbox::parse(&f.address, true) {
            Ok(m) if m.domain().is_some() => m,
            _ => {
                problems.push((format!("forward[{i}].address"), format!("{:?} is not an address local@domain", f.address)));
                continue;
            }
        };
        if list.iter().any(|o| same_address(&o.address, &address)) {
            problems.push((format!("forward[{i}].address"), format!("{address} is listed twice")));
        }
        let mut to = Vec::new();
        for t in &f.to {
            match Mailbox::parse(t, true) {
                Ok(m) if m.domain().is_some() => to.push(m),
                _ => problems.push((format!("forward[{i}].to"), format!("{t:?} is not an address local@domain"))),
            }
        }
        if f.to.is_empty() {
            problems.push((format!("forward[{i}].to"), "needs at least one address".into()));
        }
        list.push(Forward { address, to });
    }
    let max_age_days = srs.max_age_days.unwrap_or(21);
    if !(1..=1000).contains(&max_age_days) {
        // The timestamp is two base32 digits of days: 1024 days wrap.
        problems.push(("srs.max_age_days".into(), "must be between 1 and 1000 (the timestamp wraps after 1024 days)".into()));
    }
    let config = match srs.domain {
        Some(d) => match Domain::parse(&d, false) {
            Ok(domain) => Some(SrsConfig { domain, secret_file: srs.secret_file.map(&resolve), max_age_days }),
            Err(e) => {
                problems.push(("srs.domain".into(), format!("{d:?} is not a domain: {e}")));
                None
            }
        },
        None => {
            if srs.secret_file.is_some() || srs.max_age_days.is_some() {
                problems.push(("srs.domain".into(), "is required when [srs] is set".into()));
            }
            None
        }
    };
    if config.is_none() && !list.is_empty() && problems.is_empty() {
        problems.push((
            "srs.domain".into(),
            "is required with [[forward]]: forwarded mail keeps passing SPF only with its sender rewritten (SRS)".into(),
        ));
    }
    if problems.is_empty() { Ok((config, list)) } else { Err(problems) }
}

/// Local parts compare as written except for case (RFC 5321 lets the
/// receiver decide; every mailbox of ours is case-insensitive).
pub fn same_address(a: &Mailbox, b: &Mailbox) -> bool {
    a.local_part().eq_ignore_ascii_case(b.local_part()) && matches!((a.domain(), b.domain()), (Some(x), Some(y)) if x.same_name(y))
}
