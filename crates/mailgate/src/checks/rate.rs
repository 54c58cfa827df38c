//! Submission rate limits at RCPT: each recipient counts once against the
//! limit of the authenticated user (`[[user]] rate`), of the sender's
//! domain (`[[domain]] rate`) and of the client's network (`[limits]
//! submission_rate_per_network`), all or none (see `ratelimit` for the
//! rule). Over a limit, `451 4.7.0` names it and says when to retry; the
//! first refusal of a key in its window is logged, every refusal counted
//! in `mailgate_rate_limited_total{scope}`.
//!
//! Only submission listeners are limited: the MX receives the world's
//! mail for us and has its own connection limits.
//!
//! May import: `config`, `metrics`, `ratelimit`, `mailgate-core`.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use mailgate_core::reply::{Reply, StatusCode};
use mailgate_core::session::{Role, SessionInfo};
use mailgate_core::{Mailbox, ReversePath};

use crate::config::{NetworkRate, Rate, RateLimits};
use crate::metrics::Metrics;
use crate::ratelimit::{Ask, RateCounter};

/// The limits of the configuration and the counter they are kept in.
pub struct RateLimiter {
    limits: RateLimits,
    counter: Arc<dyn RateCounter>,
    metrics: Arc<Metrics>,
}

/// What one limit applies to: the values of the metric's `scope` label.
#[derive(Clone, Copy)]
enum Scope {
    User,
    Domain,
    Network,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Domain => "domain",
            Scope::Network => "network",
        }
    }
}

impl RateLimiter {
    pub fn new(limits: RateLimits, counter: Arc<dyn RateCounter>, metrics: Arc<Metrics>) -> RateLimiter {
        RateLimiter { limits, counter, metrics }
    }

    /// Counts one recipient of a submission, or the `451 4.7.0` refusing it.
    pub fn check_rcpt(&self, info: &SessionInfo, from: &ReversePath) -> Result<(), Reply> {
        if info.role == Role::Mx || self.limits.is_empty() {
            return Ok(());
        }
        let mut limits: Vec<(Scope, String, String, &Rate)> = Vec::new();
        if let Some(user) = info.authenticated_as.as_deref()
            && let Some(rate) = self.limits.users.get(user)
        {
            limits.push((Scope::User, format!("user:{user}"), user.to_string(), rate));
        }
        if let Some(d) = from.mailbox().and_then(Mailbox::domain)
            && let Some(rate) = self.limits.domain(d)
        {
            let name = d.to_ascii().to_ascii_lowercase();
            limits.push((Scope::Domain, format!("domain:{name}"), name, rate));
        }
        if let Some(n) = &self.limits.network {
            let net = network(info.client_ip, n);
            limits.push((Scope::Network, format!("net:{net}"), net.to_string(), &n.rate));
        }
        if limits.is_empty() {
            return Ok(());
        }
        let asks: Vec<Ask<'_>> = limits.iter().map(|(_, key, _, rate)| Ask { key, rate }).collect();
        let Err(refused) = self.counter.acquire(&asks, 1) else { return Ok(()) };
        let Some((scope, _, name, rate)) = limits.get(refused.ask) else { return Ok(()) };
        // Whole seconds, rounded up; never more than the window (the counter
        // rounds send times up by a tick, which must not show as an extra second).
        let retry = (refused.retry_after.as_secs() + u64::from(refused.retry_after.subsec_nanos() > 0)).min(rate.window.as_secs().max(1));
        self.metrics.rate_limited(scope.as_str());
        if refused.first_in_window {
            tracing::warn!(
                scope = scope.as_str(),
                name = %name,
                limit = %rate,
                client = %info.client_ip,
                user = info.authenticated_as.as_deref().unwrap_or(""),
                retry_s = retry,
                "submission rate limit reached; further refusals in this window are not logged"
            );
        }
        Err(Reply::new(
            451,
            StatusCode::new(4, 7, 0),
            format!("rate limit for {} {name}: {rate} reached, retry in {retry} s", scope.as_str()),
        ))
    }
}

/// The client's network: its address cut to the configured prefix.
fn network(ip: IpAddr, n: &NetworkRate) -> IpNet {
    let prefix = if ip.is_ipv4() { n.v4 } else { n.v6 };
    // The prefixes are checked (at most 32 and 128) in config; the whole
    // address is the fallback all the same.
    IpNet::new(ip, prefix).map(|net| net.trunc()).unwrap_or_else(|_| IpNet::from(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_cut_to_their_prefix() {
        let rate = Rate::parse("1/s", None).unwrap();
        let n = NetworkRate { rate, v4: 24, v6: 56 };
        assert_eq!(network("192.0.2.77".parse().unwrap(), &n).to_string(), "192.0.2.0/24");
        assert_eq!(network("2001:db8:1:2ff::1".parse().unwrap(), &n).to_string(), "2001:db8:1:200::/56");
    }
}
