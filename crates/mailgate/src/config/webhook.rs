//! `[[webhook]]`: where delivery events are POSTed, which ones, the HMAC
//! secret, and how long an undeliverable event is kept. Imports nothing
//! but serde.

use serde::Deserialize;

/// Every event name a webhook can ask for, in the order of the README.
pub const EVENTS: [&str; 6] = ["delivered", "deferred", "bounced", "complained", "suppressed", "rejected"];

/// A day: how long an event is retried by default.
const DEFAULT_MAX_AGE: u64 = 86_400;

/// `max_age` as written: seconds, or a string such as `"12h"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawDuration {
    Seconds(u64),
    Text(String),
}

/// One `[[webhook]]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    url: String,
    events: Option<Vec<String>>,
    #[serde(default)]
    secret: String,
    max_age: Option<RawDuration>,
}

/// One `[[webhook]]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// An `http` or `https` URL.
    pub url: String,
    /// The event names it receives (a subset of [`EVENTS`]).
    pub events: Vec<String>,
    /// The HMAC-SHA256 key of the `Mailgate-Signature` header.
    pub secret: String,
    /// Seconds an event is retried before it is dropped.
    pub max_age: u64,
}

impl Webhook {
    /// Whether this webhook receives `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }
}

/// Checks every `[[webhook]]`; problems are `(key, message)`.
pub(super) fn validate(raw: Vec<RawWebhook>) -> Result<Vec<Webhook>, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let mut hooks = Vec::new();
    for (i, w) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("webhook[{i}].{k}");
        let scheme_ok = w.url.strip_prefix("https://").or_else(|| w.url.strip_prefix("http://")).is_some_and(|rest| {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !host.contains(char::is_whitespace)
        });
        if !scheme_ok {
            problems.push((key("url"), format!("{:?} must be an http:// or https:// URL with a host", w.url)));
        }
        let events = w.events.unwrap_or_else(|| EVENTS.iter().map(|e| e.to_string()).collect());
        for e in &events {
            if !EVENTS.contains(&e.as_str()) {
                problems.push((key("events"), format!("{e:?} is not an event; expected some of {}", EVENTS.join(", "))));
            }
        }
        if events.is_empty() {
            problems.push((key("events"), "must name at least one event (leave it out for all)".into()));
        }
        if w.secret.is_empty() {
            problems.push((key("secret"), "must be set: receivers verify each POST's signature with it".into()));
        }
        let max_age = match w.max_age {
            None => DEFAULT_MAX_AGE,
            Some(RawDuration::Seconds(s)) => s,
            Some(RawDuration::Text(t)) => parse_duration(&t).unwrap_or_else(|| {
                problems.push((key("max_age"), format!("{t:?} must be seconds or a duration such as \"90s\", \"30m\", \"12h\", \"1d\"")));
                DEFAULT_MAX_AGE
            }),
        };
        if max_age == 0 {
            problems.push((key("max_age"), "must be positive".into()));
        }
        if hooks.iter().any(|h: &Webhook| h.url == w.url) {
            problems.push((key("url"), format!("{:?} is listed twice", w.url)));
        }
        hooks.push(Webhook { url: w.url, events, secret: w.secret, max_age });
    }
    if problems.is_empty() { Ok(hooks) } else { Err(problems) }
}

/// `"90"`, `"90s"`, `"30m"`, `"12h"`, `"1d"` (and `"2 days"`) in seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..digits].parse().ok()?;
    let unit = match t[digits..].trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url: &str, events: Option<&[&str]>, secret: &str, max_age: Option<RawDuration>) -> RawWebhook {
        RawWebhook { url: url.into(), events: events.map(|e| e.iter().map(|s| s.to_string()).collect()), secret: secret.into(), max_age }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("30m"), Some(1800));
        assert_eq!(parse_duration("12h"), Some(43_200));
        assert_eq!(parse_duration("1d"), Some(86_400));
        assert_eq!(parse_duration("2 days"), Some(172_800));
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration("h"), None);
    }

    #[test]
    fn defaults_and_problems() {
        let ok = validate(vec![raw("https://hooks.example/x", None, "k", None)]).unwrap();
        assert_eq!(ok[0].events.len(), EVENTS.len());
        assert_eq!(ok[0].max_age, 86_400);
        let text = validate(vec![raw("http://127.0.0.1:9/", Some(&["bounced"]), "k", Some(RawDuration::Text("2h".into())))]).unwrap();
        assert_eq!(text[0].max_age, 7200);
        assert!(text[0].wants("bounced") && !text[0].wants("delivered"));
        let bad = validate(vec![raw("ftp://x/", Some(&["opened"]), "", Some(RawDuration::Text("soon".into())))]).unwrap_err();
        let keys: Vec<&str> = bad.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["webhook[0].url", "webhook[0].events", "webhook[0].secret", "webhook[0].max_age"]);
    }
}
