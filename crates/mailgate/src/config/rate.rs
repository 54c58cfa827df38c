//! Rate limit settings: `rate = "1000/hour"` and `burst = N` on `[[user]]`
//! and `[[domain]]`, and the per-client-network limit in `[limits]`,
//! parsed and checked. Imports only the parent module and `mailgate-core`.

use std::collections::HashMap;
use std::time::Duration;

use mailgate_core::Domain;

/// One limit: at most `count` recipients in any `window`, and, with a
/// `burst`, at most `burst` at once (a bucket refilled at `count` per
/// `window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub window: Duration,
    pub burst: Option<u64>,
}

impl Rate {
    /// Parses `N/unit` or `N/<k><unit>`: `1000/hour`, `5/10s`, `20/2m`.
    /// Units: `s`, `sec`, `second(s)`, `m`, `min`, `minute(s)`, `h`,
    /// `hour(s)`, `d`, `day(s)`. `burst` must be between 1 and N: more
    /// than N at once could never pass the window.
    pub fn parse(text: &str, burst: Option<u64>) -> Result<Rate, String> {
        let expected = || format!("{text:?} must look like \"1000/hour\" or \"5/10s\" (units: second, minute, hour, day)");
        let (n, per) = text.split_once('/').ok_or_else(expected)?;
        let count: u64 = n.trim().parse().map_err(|_| expected())?;
        let per = per.trim();
        let digits = per.bytes().take_while(u8::is_ascii_digit).count();
        let k: u64 = if digits == 0 { 1 } else { per[..digits].parse().map_err(|_| expected())? };
        let unit = match per[digits..].trim() {
            "s" | "sec" | "second" | "seconds" => 1,
            "m" | "min" | "minute" | "minutes" => 60,
            "h" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86400,
            _ => return Err(expected()),
        };
        if count == 0 || k == 0 {
            return Err(format!("{text:?}: the count and the window must be positive"));
        }
        let secs =
            k.checked_mul(unit).filter(|&s| s <= 366 * 86400).ok_or_else(|| format!("{text:?}: the window may be at most 366 days"))?;
        if let Some(b) = burst
            && (b == 0 || b > count)
        {
            return Err(format!("burst = {b} must be between 1 and {count} (at most the rate's count: more could never pass the window)"));
        }
        Ok(Rate { count, window: Duration::from_secs(secs), burst })
    }
}

impl std::fmt::Display for Rate {
    /// As a person would write it: `1000/hour`, `5/10s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.window.as_secs();
        match s {
            86400 => write!(f, "{}/day", self.count),
            3600 => write!(f, "{}/hour", self.count),
            60 => write!(f, "{}/minute", self.count),
            1 => write!(f, "{}/second", self.count),
            _ if s.is_multiple_of(86400) => write!(f, "{}/{}d", self.count, s / 86400),
            _ if s.is_multiple_of(3600) => write!(f, "{}/{}h", self.count, s / 3600),
            _ if s.is_multiple_of(60) => write!(f, "{}/{}m", self.count, s / 60),
            _ => write!(f, "{}/{}s", self.count, s),
        }
    }
}

/// The per-client-network limit: one counter per IPv4 /`v4` and per IPv6
/// /`v6` network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkRate {
    pub rate: Rate,
    pub v4: u8,
    pub v6: u8,
}

/// Every submission rate limit of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// By `[[user]] name`.
    pub users: HashMap<String, Rate>,
    /// By `[[domain]] name`: all mail submitted with that domain as sender.
    pub domains: Vec<(Domain, Rate)>,
    pub network: Option<NetworkRate>,
}

impl RateLimits {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.domains.is_empty() && self.network.is_none()
    }

    pub fn domain(&self, d: &Domain) -> Option<&Rate> {
        self.domains.iter().find(|(n, _)| n.same_name(d)).map(|(_, r)| r)
    }
}

/// `rate` and `burst` of one section, or the problem (`burst` needs a rate).
pub(super) fn optional(rate: Option<&str>, burst: Option<u64>) -> Result<Option<Rate>, String> {
    match (rate, burst) {
        (Some(r), b) => Rate::parse(r, b).map(Some),
        (None, Some(_)) => Err("burst needs a rate".into()),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_multiples() {
        let r = Rate::parse("1000/hour", None).unwrap();
        assert_eq!((r.count, r.window.as_secs()), (1000, 3600));
        assert_eq!(Rate::parse("5/10s", Some(2)).unwrap().window.as_secs(), 10);
        assert_eq!(Rate::parse("20 / 2m", None).unwrap().window.as_secs(), 120);
        assert_eq!(Rate::parse("1/day", None).unwrap().window.as_secs(), 86400);
        assert_eq!(Rate::parse("5/10s", None).unwrap().to_string(), "5/10s");
        assert_eq!(Rate::parse("1000/hours", None).unwrap().to_string(), "1000/hour");
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["", "1000", "x/hour", "10/fortnight", "0/hour", "5/0s", "5/400d", "-1/s"] {
            assert!(Rate::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Rate::parse("5/s", Some(6)).unwrap_err().contains("between 1 and 5"));
        assert!(Rate::parse("5/s", Some(0)).is_err());
        assert!(optional(None, Some(3)).is_err());
    }
}
