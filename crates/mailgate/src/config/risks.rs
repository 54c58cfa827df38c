//! Risky but valid choices in a validated [`Config`], for `mailgate config
//! check` to warn about. Imports only the parent module and the user
//! look-up of `privileges`.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use mailgate_core::session::Role;

use super::Config;

/// A warning: the dotted key it is about and why it is risky.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub key: String,
    pub message: String,
}

/// Every risky choice in `config`, in the order of the reference.
pub fn warnings(config: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut warn = |key: String, message: String| out.push(Warning { key, message });

    if let Some(user) = &config.user
        && matches!(crate::privileges::lookup(user), Ok(None))
    {
        warn("server.user".into(), format!("no user {user:?} on this system: `serve` started as root would refuse to start"));
    }
    for (i, l) in config.listeners.iter().enumerate() {
        if !is_loopback(l.bind) && config.tls.is_none() {
            warn(
                format!("listener[{i}].bind"),
                format!("{} is reachable from other hosts but [tls] cert is not set: clients get a self-signed certificate", l.bind),
            );
        }
    }
    if config.domains.is_empty()
        && let Some(i) = config.listeners.iter().position(|l| l.role == Role::Mx)
    {
        warn("domain".into(), format!("listener[{i}] is an mx listener but no [[domain]] is configured: it refuses every recipient"));
    }
    for net in &config.trusted_networks {
        let (widest, family) = match net {
            IpNet::V4(_) => (8, "IPv4"),
            IpNet::V6(_) => (16, "IPv6"),
        };
        if net.prefix_len() < widest {
            warn(
                "relay.trusted_networks".into(),
                format!("{net} is wider than a /{widest} ({family}): every host in it may relay mail without AUTH"),
            );
        }
    }
    if let Some(bind) = config.http_bind
        && !is_loopback(bind)
        && !config.http_tls
    {
        warn(
            "http.bind".into(),
            format!("the admin API on {bind} is reachable from other hosts without TLS; set [http] tls = true or bind a loopback address"),
        );
    }
    out
}

/// Loopback only; an unspecified address (0.0.0.0, ::) listens on every
/// interface.
fn is_loopback(addr: SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn keys(text: &str) -> Vec<String> {
        let c = Config::parse(text, Path::new("/etc/mailgate/t.toml")).unwrap(); // ok: test input
        warnings(&c).into_iter().map(|w| w.key).collect()
    }

    #[test]
    fn defaults_warn_only_about_the_missing_domain() {
        assert_eq!(keys(""), vec!["domain".to_string()]);
    }

    #[test]
    fn risky_choices_are_named() {
        let text = "[[listener]]\nrole = \"mx\"\nbind = \"0.0.0.0:25\"\n[[domain]]\nname = \"example.test\"\n\
                    [relay]\ntrusted_networks = [\"10.0.0.0/8\", \"0.0.0.0/0\", \"fd00::/8\", \"fd00::/16\"]\n\
                    [http]\nbind = \"[::]:8025\"\n";
        let k = keys(text);
        assert_eq!(k, vec!["listener[0].bind", "relay.trusted_networks", "relay.trusted_networks", "http.bind"], "{k:?}");
        let with_tls = text.replace("[http]\n", "[http]\ntls = true\n");
        assert!(!keys(&with_tls).contains(&"http.bind".to_string()));
    }
}
