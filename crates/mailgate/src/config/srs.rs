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

/// `[srs]` (if set) and the `[[forward]]`s.
type Forwarding = (Option<SrsConfig>, Vec<Forward>);

/// Checks both sections. Problems are `(key, message)`.
pub(super) fn validate(
    srs: RawSrs,
    forwards: Vec<RawForward>,
    resolve: impl Fn(PathBuf) -> PathBuf,
) -> Result<Forwarding, Vec<(String, String)>> {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/mailgate/test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn forwarding_rates_and_srs_parse() {
        let c = parse(
            "[srs]\ndomain = \"srs.example.com\"\nsecret_file = \"srs.key\"\n\
             [[forward]]\naddress = \"team@example.com\"\nto = [\"a@elsewhere.example\", \"b@other.example\"]\n\
             [[domain]]\nname = \"example.com\"\nrate = \"20000/day\"\n\
             [[user]]\nname = \"app1\"\npassword = \"$argon2id$x\"\nrate = \"1000/hour\"\nburst = 50\n\
             [limits]\nsubmission_rate_per_network = \"5000/hour\"\nsubmission_network_prefix_v6 = 48\n",
        )
        .unwrap();
        let srs = c.srs.unwrap();
        assert_eq!((srs.domain.as_str(), srs.max_age_days), ("srs.example.com", 21));
        assert_eq!(srs.secret_file.unwrap(), Path::new("/etc/mailgate/srs.key"));
        assert_eq!(c.forwards.len(), 1);
        assert_eq!(c.forwards[0].to.len(), 2);
        assert_eq!(c.rates.users["app1"].to_string(), "1000/hour");
        assert_eq!(c.rates.users["app1"].burst, Some(50));
        assert_eq!(c.rates.domains[0].1.to_string(), "20000/day");
        let net = c.rates.network.unwrap();
        assert_eq!((net.v4, net.v6, net.rate.count), (24, 48, 5000));
    }

    #[test]
    fn mistakes_name_their_key() {
        let forward = "[[forward]]\naddress = \"team@example.com\"\nto = [\"a@elsewhere.example\"]\n";
        assert!(parse(forward).unwrap_err().contains("srs.domain: is required with [[forward]]"));
        let e = parse("[srs]\ndomain = \"srs.example.com\"\n[[forward]]\naddress = \"nobody\"\nto = []\n").unwrap_err();
        assert!(e.contains("forward[0].address"), "{e}");
        let e = parse("[[user]]\nname = \"a\"\npassword = \"$argon2id$x\"\nrate = \"10/fortnight\"\n").unwrap_err();
        assert!(e.contains("user[0].rate"), "{e}");
        let e = parse("[[domain]]\nname = \"example.com\"\nrate = \"10/hour\"\nburst = 11\n").unwrap_err();
        assert!(e.contains("domain[0].rate") && e.contains("between 1 and 10"), "{e}");
        let e = parse("[limits]\nsubmission_rate_per_network = \"many\"\n").unwrap_err();
        assert!(e.contains("limits.submission_rate_per_network"), "{e}");
        let e = parse("[srs]\ndomain = \"srs.example.com\"\nmax_age_days = 2000\n").unwrap_err();
        assert!(e.contains("srs.max_age_days"), "{e}");
    }
}
