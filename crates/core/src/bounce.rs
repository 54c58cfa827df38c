//! Bounce classification: a failure reply, or the status and diagnostic of
//! a DSN, to hard or soft and a category, by an ordered rule table kept as
//! data in `data/bounce-rules.txt` (compiled in). Pure: no I/O.
//!
//! The reply code says hard or soft; the rules say why. The table is data
//! so that a new provider's wording is a one-line change with a test case,
//! not a code change: in the spirit of KumoMTA's bounce classifier and of
//! Postfix's `bounce_notice` categories.

use std::fmt;
use std::sync::LazyLock;

use serde::Serialize;

use crate::reply::StatusCode;

/// The rule table, as shipped.
pub const RULES: &str = include_str!("../data/bounce-rules.txt");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Permanent (5xx): retrying will not help.
    Hard,
    /// Transient (4xx): a later attempt may succeed.
    Soft,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    NoSuchUser,
    MailboxFull,
    MessageTooLarge,
    PolicyOrSpam,
    ReputationOrBlock,
    Dns,
    Tls,
    RateLimited,
    Other,
}

impl Category {
    pub const ALL: [Category; 9] = [
        Category::NoSuchUser,
        Category::MailboxFull,
        Category::MessageTooLarge,
        Category::PolicyOrSpam,
        Category::ReputationOrBlock,
        Category::Dns,
        Category::Tls,
        Category::RateLimited,
        Category::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::NoSuchUser => "no_such_user",
            Category::MailboxFull => "mailbox_full",
            Category::MessageTooLarge => "message_too_large",
            Category::PolicyOrSpam => "policy_or_spam",
            Category::ReputationOrBlock => "reputation_or_block",
            Category::Dns => "dns",
            Category::Tls => "tls",
            Category::RateLimited => "rate_limited",
            Category::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hard => "hard",
            Kind::Soft => "soft",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Classification {
    pub kind: Kind,
    pub category: Category,
    /// The line of `data/bounce-rules.txt` that decided the category.
    pub rule: u32,
}

/// One part of a status pattern: a number, or anything.
#[derive(Clone, Copy, Debug)]
enum Part {
    Is(u16),
    Any,
}

impl Part {
    fn matches(self, n: u16) -> bool {
        match self {
            Part::Is(x) => x == n,
            Part::Any => true,
        }
    }
}

#[derive(Debug)]
struct Rule {
    line: u32,
    /// `None`: any status, or none.
    status: Option<[Part; 3]>,
    /// Reply code: first digit and, when exact, the whole code.
    code: Option<(u8, Option<u16>)>,
    category: Category,
    /// Lowercase alternatives; empty matches anything.
    text: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct RuleError {
    pub line: u32,
    pub why: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bounce rule line {}: {}", self.line, self.why)
    }
}

fn parse_status_pattern(s: &str) -> Option<[Part; 3]> {
    let mut parts = s.split('.');
    let mut next = |first: bool| -> Option<Part> {
        match parts.next()? {
            "x" if first => Some(Part::Any),
            "*" if !first => Some(Part::Any),
            n => n.parse().ok().map(Part::Is),
        }
    };
    let p = [next(true)?, next(false)?, next(false)?];
    parts.next().is_none().then_some(p)
}

fn parse_code_pattern(s: &str) -> Option<(u8, Option<u16>)> {
    let b = s.as_bytes();
    if b.len() != 3 || !(b'2'..=b'5').contains(&b[0]) {
        return None;
    }
    if &s[1..] == "xx" {
        return Some((b[0] - b'0', None));
    }
    s.parse().ok().map(|c| (b[0] - b'0', Some(c)))
}

/// Parses a rule table; every line is checked, so a bad table fails the
/// test that parses the shipped one rather than misfiling bounces.
fn parse_rules(text: &str) -> Result<Vec<Rule>, RuleError> {
    let mut rules = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i as u32 + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let err = |why: &str| RuleError { line, why: why.to_string() };
        let mut words = l.split_whitespace();
        let (Some(st), Some(code), Some(cat)) = (words.next(), words.next(), words.next()) else {
            return Err(err("expected STATUS CODE CATEGORY [TEXT]"));
        };
        let status = match st {
            "-" => None,
            s => Some(parse_status_pattern(s).ok_or_else(|| err("bad status pattern"))?),
        };
        let code = match code {
            "-" => None,
            c => Some(parse_code_pattern(c).ok_or_else(|| err("bad reply code pattern"))?),
        };
        let category = Category::parse(cat).ok_or_else(|| err("unknown category"))?;
        let rest: Vec<&str> = words.collect();
        let text = if rest.is_empty() {
            Vec::new()
        } else {
            rest.join(" ").split('|').map(|t| t.trim().to_ascii_lowercase()).filter(|t| !t.is_empty()).collect()
        };
        rules.push(Rule { line, status, code, category, text });
    }
    Ok(rules)
}

static TABLE: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    // The shipped table is tested (`the_shipped_rules_parse`); should it
    // ever not parse, everything is `other` rather than a panic.
    parse_rules(RULES).unwrap_or_default()
});

/// Finds the first RFC 3463 code (`5.1.1`, also inside `(#5.1.1)`) in `s`.
pub fn find_status(s: &str) -> Option<StatusCode> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let boundary = i == 0 || !(b[i - 1].is_ascii_digit() || b[i - 1] == b'.');
        if boundary
            && matches!(b[i], b'2' | b'4' | b'5')
            && b.get(i + 1) == Some(&b'.')
            && let Some((st, len)) = status_at(&b[i..])
        {
            // Not a prefix of a longer dotted number (a version, an address).
            let after = b.get(i + len);
            if !after.is_some_and(|c| c.is_ascii_digit() || (*c == b'.' && b.get(i + len + 1).is_some_and(u8::is_ascii_digit))) {
                return Some(st);
            }
        }
        i += 1;
    }
    None
}

fn status_at(b: &[u8]) -> Option<(StatusCode, usize)> {
    let class = b[0] - b'0';
    let mut pos = 2;
    let mut nums = [0u16; 2];
    for (k, n) in nums.iter_mut().enumerate() {
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() && pos - start < 3 {
            *n = *n * 10 + u16::from(b[pos] - b'0');
            pos += 1;
        }
        if pos == start {
            return None;
        }
        if k == 0 {
            if b.get(pos) != Some(&b'.') {
                return None;
            }
            pos += 1;
        }
    }
    Some((StatusCode::new(class, nums[0], nums[1]), pos))
}

/// The reply code at the start of `s` (`550 `, `550-`, `550` alone, or
/// `554:` as some bounce messages quote it).
pub fn leading_code(s: &str) -> Option<u16> {
    let b = s.trim_start().as_bytes();
    if b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit) && (b.len() == 3 || matches!(b[3], b' ' | b'-' | b'\t' | b':')) {
        let code = (u16::from(b[0] - b'0')) * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0');
        return (200..600).contains(&code).then_some(code);
    }
    None
}

/// Classifies a failure. `code` is the SMTP reply code if known, `status`
/// the enhanced code if known (else it is looked for in `text`), `text`
/// the whole reply or diagnostic. `None` for a success or when neither
/// code nor status says it failed.
pub fn classify(code: Option<u16>, status: Option<StatusCode>, text: &str) -> Option<Classification> {
    let status = status.or_else(|| find_status(text));
    let kind = match (code.map(|c| c / 100), status.map(|s| s.class)) {
        (Some(5), _) => Kind::Hard,
        (Some(4), _) => Kind::Soft,
        (Some(_), _) => return None,
        (None, Some(5)) => Kind::Hard,
        (None, Some(4)) => Kind::Soft,
        (None, _) => return None,
    };
    Some(classify_as(kind, code, status, text))
}

/// Classifies a failure whose kind is already known (a DSN's `Action:`, or
/// a bounce message that says it is final) by the rules alone.
pub fn classify_as(kind: Kind, code: Option<u16>, status: Option<StatusCode>, text: &str) -> Classification {
    let status = status.or_else(|| find_status(text));
    let lower = text.to_ascii_lowercase();
    let class = code.map(|c| (c / 100) as u8).or(status.map(|s| s.class)).unwrap_or(match kind {
        Kind::Hard => 5,
        Kind::Soft => 4,
    });
    let rule = TABLE.iter().find(|r| {
        let status_ok = match (r.status, status) {
            (None, _) => true,
            (Some(p), Some(s)) => p[0].matches(u16::from(s.class)) && p[1].matches(s.subject) && p[2].matches(s.detail),
            (Some(_), None) => false,
        };
        let code_ok = match r.code {
            None => true,
            Some((first, exact)) => first == class && exact.is_none_or(|e| Some(e) == code),
        };
        status_ok && code_ok && (r.text.is_empty() || r.text.iter().any(|t| lower.contains(t.as_str())))
    });
    match rule {
        Some(r) => Classification { kind, category: r.category, rule: r.line },
        None => Classification { kind, category: Category::Other, rule: 0 },
    }
}

/// Classifies a reply as text: `550 5.1.1 <a@b>: user unknown`, also a
/// multi-line one (`550-5.1.1 ...`).
pub fn classify_reply(reply: &str) -> Option<Classification> {
    classify(leading_code(reply), None, reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(reply: &str) -> (Kind, Category) {
        let c = classify_reply(reply).expect("a failure"); // ok: test
        (c.kind, c.category)
    }

    #[test]
    fn the_shipped_rules_parse() {
        let rules = parse_rules(RULES).expect("shipped rules"); // ok: test
        assert!(rules.len() > 30);
        assert!(rules.last().is_some_and(|r| r.category == Category::Other && r.status.is_none() && r.text.is_empty()));
    }

    #[test]
    fn bad_rules_name_their_line() {
        assert_eq!(parse_rules("x.1.1 - nonsense").unwrap_err().line, 1); // ok: test
        assert!(parse_rules("\n# c\n9.x.1 - other").is_err());
        assert!(parse_rules("- 55 other").is_err());
    }

    #[test]
    fn status_codes_are_found_where_providers_put_them() {
        assert_eq!(find_status("550 5.1.1 user unknown"), Some(StatusCode::new(5, 1, 1)));
        assert_eq!(find_status("Sorry, no mailbox here by that name. (#5.1.1)"), Some(StatusCode::new(5, 1, 1)));
        assert_eq!(find_status("421 4.7.500 Server busy"), Some(StatusCode::new(4, 7, 500)));
        assert_eq!(find_status("host 192.0.2.5 said"), None, "an IP address is not a status");
        assert_eq!(find_status("version 5.1.12.3"), None);
        assert_eq!(find_status("5.1"), None);
    }

    #[test]
    fn hard_or_soft_follows_the_reply_code() {
        assert_eq!(cat("550 5.1.1 <a@b.test>: Recipient address rejected: User unknown"), (Kind::Hard, Category::NoSuchUser));
        assert_eq!(cat("452 4.2.2 The email account that you tried to reach is over quota"), (Kind::Soft, Category::MailboxFull));
        assert_eq!(classify_reply("250 2.0.0 Ok"), None);
        assert_eq!(classify(None, Some(StatusCode::new(5, 3, 4)), "").map(|c| c.kind), Some(Kind::Hard));
        assert_eq!(classify(None, None, "no code at all"), None);
    }

    #[test]
    fn the_status_decides_before_the_text_and_the_text_before_the_class() {
        // 5.1.1 is definitive even where the text says "blocked".
        assert_eq!(cat("550 5.1.1 blocked: no such user").1, Category::NoSuchUser);
        // 5.7.1 says little; the text does.
        assert_eq!(cat("550 5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus").1, Category::ReputationOrBlock);
        assert_eq!(cat("554 5.7.1 <x@y.test>: Relay access denied").1, Category::PolicyOrSpam);
        assert_eq!(cat("550 5.7.1 nothing recognisable").1, Category::PolicyOrSpam);
        assert_eq!(cat("552 Message size exceeds fixed maximum message size").1, Category::MessageTooLarge);
        assert_eq!(cat("552 nothing").1, Category::MessageTooLarge);
        assert_eq!(cat("554 nothing recognisable").1, Category::Other);
    }
}
