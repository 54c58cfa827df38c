//! Mailboxes, domains and SMTP paths (RFC 5321 §4.1.2, RFC 6531 for UTF-8).
//!
//! Addresses are parsed once, at the edge, into typed values. The parser is
//! strict where leniency has historically opened relays: a trailing dot, an
//! empty label or a stray `@` is a syntax error, never "fixed up".

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest mailbox we accept, in octets. RFC 5321 §4.5.3.1 sets 64 for the
/// local part and 255 for the domain; real SRS and VERP addresses exceed the
/// local-part limit, so only the sum is enforced.
pub const MAX_MAILBOX_LEN: usize = 320;
pub const MAX_DOMAIN_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AddressError {
    #[error("address must be enclosed in <>")]
    MissingBrackets,
    #[error("empty address")]
    Empty,
    #[error("missing @domain")]
    MissingDomain,
    #[error("invalid local part")]
    BadLocalPart,
    #[error("invalid domain")]
    BadDomain,
    #[error("invalid address literal")]
    BadLiteral,
    #[error("invalid source route")]
    BadRoute,
    #[error("address too long")]
    TooLong,
    #[error("non-ASCII address without SMTPUTF8")]
    NeedsUtf8,
}

/// A domain name, stored lower-case and without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Domain(String);

impl Domain {
    /// Parses a domain per RFC 5321 `Domain`, allowing U-labels when `utf8`.
    pub fn parse(s: &str, utf8: bool) -> Result<Self, AddressError> {
        if s.is_empty() || s.len() > MAX_DOMAIN_LEN {
            return Err(AddressError::BadDomain);
        }
        for label in s.split('.') {
            check_label(label, utf8)?;
        }
        Ok(Domain(s.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_ascii(&self) -> bool {
        self.0.is_ascii()
    }

    /// The name in A-labels (`bücher.example` → `xn--bcher-kva.example`);
    /// a name IDNA refuses stays as written.
    pub fn to_ascii(&self) -> std::borrow::Cow<'_, str> {
        if (!self.0.is_ascii() || self.0.contains("xn--"))
            && let Ok(ascii) = idna::domain_to_ascii(&self.0)
        {
            return std::borrow::Cow::Owned(ascii);
        }
        std::borrow::Cow::Borrowed(&self.0)
    }

    /// Whether both name the same DNS domain: a U-label and its A-label
    /// are one name, so a local domain or a `send_as` pattern written one
    /// way also covers the other.
    pub fn same_name(&self, other: &Domain) -> bool {
        self == other || self.to_ascii() == other.to_ascii()
    }
}

fn check_label(label: &str, utf8: bool) -> Result<(), AddressError> {
    if label.is_empty() || label.len() > MAX_LABEL_LEN {
        return Err(AddressError::BadDomain);
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && !c.is_control());
    if !label.chars().all(ok_char) || label.starts_with('-') || label.ends_with('-') {
        return Err(AddressError::BadDomain);
    }
    if !label.is_ascii() && !utf8 {
        return Err(AddressError::NeedsUtf8);
    }
    Ok(())
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The part of a mailbox after the `@`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Host {
    Domain(Domain),
    /// An address literal such as `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
    Literal(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => write!(f, "{d}"),
            Host::Literal(IpAddr::V4(ip)) => write!(f, "[{ip}]"),
            Host::Literal(IpAddr::V6(ip)) => write!(f, "[IPv6:{ip}]"),
        }
    }
}

/// A mailbox `local@host`. The local part keeps its case and, when it had to
/// be quoted on the wire, is stored unquoted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mailbox {
    local: String,
    host: Host,
    /// Whether the local part arrived as an RFC 5321 quoted-string.
    #[serde(default, skip_serializing_if = "is_false")]
    quoted: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Mailbox {
    pub fn local_part(&self) -> &str {
        &self.local
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The domain, or `None` for an address literal.
    pub fn domain(&self) -> Option<&Domain> {
        match &self.host {
            Host::Domain(d) => Some(d),
            Host::Literal(_) => None,
        }
    }

    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii()
            && match &self.host {
                Host::Domain(d) => d.is_ascii(),
                Host::Literal(_) => true,
            }
    }

    /// Names the sender-specified routing this mailbox carries, if any:
    /// `%` and `!` hacks or an `@` hidden in a quoted local part. Next hops
    /// may interpret these as "forward to the host named here", so an
    /// untrusted client must not be able to send them through us.
    pub fn routing_hack(&self) -> Option<&'static str> {
        if self.local.contains('@') {
            Some("an @ inside the local part")
        } else if self.local.contains('%') {
            Some("a % in the local part")
        } else if self.local.contains('!') {
            Some("a ! path in the local part")
        } else {
            None
        }
    }

    /// Parses a bare mailbox (no angle brackets).
    pub fn parse(s: &str, utf8: bool) -> Result<Self, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if s.len() > MAX_MAILBOX_LEN {
            return Err(AddressError::TooLong);
        }
        let (local, quoted, rest) = if let Some(body) = s.strip_prefix('"') {
            let (local, rest) = parse_quoted(body, utf8)?;
            (local, true, rest)
        } else {
            let at = s.rfind('@').ok_or(AddressError::MissingDomain)?;
            let local = &s[..at];
            check_dot_string(local, utf8)?;
            (local.to_string(), false, &s[at..])
        };
        let host = rest.strip_prefix('@').ok_or(AddressError::MissingDomain)?;
        let host = if host.starts_with('[') { Host::Literal(parse_literal(host)?) } else { Host::Domain(Domain::parse(host, utf8)?) };
        Ok(Mailbox { local, host, quoted })
    }

    /// Builds a mailbox from parts that are already known to be valid.
    pub fn from_parts(local: &str, domain: Domain) -> Result<Self, AddressError> {
        Mailbox::parse(&format!("{}@{}", quote_local(local), domain), true)
    }
}

fn quote_local(local: &str) -> String {
    if check_dot_string(local, true).is_ok() {
        local.to_string()
    } else {
        let mut s = String::from("\"");
        for c in local.chars() {
            if c == '"' || c == '\\' {
                s.push('\\');
            }
            s.push(c);
        }
        s.push('"');
        s
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.quoted { write!(f, "{}@{}", quote_local(&self.local), self.host) } else { write!(f, "{}@{}", self.local, self.host) }
    }
}

fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (utf8 && !c.is_ascii() && !c.is_control())
}

fn check_dot_string(s: &str, utf8: bool) -> Result<(), AddressError> {
    if s.is_empty() {
        return Err(AddressError::BadLocalPart);
    }
    for atom in s.split('.') {
        if atom.is_empty() {
            return Err(AddressError::BadLocalPart);
        }
        if let Some(c) = atom.chars().find(|&c| !is_atext(c, true)) {
            let _ = c;
            return Err(AddressError::BadLocalPart);
        }
    }
    if !utf8 && !s.is_ascii() {
        return Err(AddressError::NeedsUtf8);
    }
    Ok(())
}

/// Parses the body of a quoted string (after the opening quote); returns the
/// unquoted content and the rest after the closing quote.
fn parse_quoted(body: &str, utf8: bool) -> Result<(String, &str), AddressError> {
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
            '\\' => match chars.next() {
                Some((_, q)) if (' '..='~').contains(&q) => out.push(q),
                _ => return Err(AddressError::BadLocalPart),
            },
            ' '..='~' => out.push(c),
            c if !c.is_ascii() && !c.is_control() => {
                if !utf8 {
                    return Err(AddressError::NeedsUtf8);
                }
                out.push(c)
            }
            _ => return Err(AddressError::BadLocalPart),
        }
    }
    Err(AddressError::BadLocalPart)
}

fn parse_literal(s: &str) -> Result<IpAddr, AddressError> {
    let inner = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).ok_or(AddressError::BadLiteral)?;
    if let Some(v6) = inner.strip_prefix("IPv6:").or_else(|| inner.strip_prefix("ipv6:")) {
        return v6.parse::<std::net::Ipv6Addr>().map(IpAddr::V6).map_err(|_| AddressError::BadLiteral);
    }
    inner.parse::<std::net::Ipv4Addr>().map(IpAddr::V4).map_err(|_| AddressError::BadLiteral)
}

/// The argument of `MAIL FROM`: a mailbox or the null path `<>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReversePath {
    Null,
    Mailbox(Mailbox),
}

impl ReversePath {
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => write!(f, "{m}"),
        }
    }
}

/// A parsed `<path>` from MAIL or RCPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Path {
    /// `<>`.
    Null,
    /// `<postmaster>` without a domain (RFC 5321 §4.5.1).
    Postmaster,
    Mailbox {
        mailbox: Mailbox,
        /// The obsolete source route `@a,@b:` in front of the mailbox.
        /// Kept so policy can refuse it; never used for routing.
        source_route: Vec<Domain>,
    },
}

/// Splits `<path> params` into the parsed path and the parameter text.
/// A single space after the colon is tolerated, as most MTAs do.
pub fn parse_path(s: &str, utf8: bool) -> Result<(Path, &str), AddressError> {
    let s = s.trim_start_matches(' ');
    let body = s.strip_prefix('<').ok_or(AddressError::MissingBrackets)?;
    // Find the closing '>' outside a quoted string.
    let mut in_quote = false;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in body.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quote && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quote = !in_quote;
        } else if c == '>' && !in_quote {
            end = Some(i);
            break;
        }
    }
    let end = end.ok_or(AddressError::MissingBrackets)?;
    let inner = &body[..end];
    let rest = &body[end + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(AddressError::MissingBrackets);
    }
    let rest = rest.trim_start_matches(' ');
    if inner.is_empty() {
        return Ok((Path::Null, rest));
    }
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok((Path::Postmaster, rest));
    }
    let (route, mailbox) = if inner.starts_with('@') {
        let colon = inner.find(':').ok_or(AddressError::BadRoute)?;
        let mut route = Vec::new();
        for hop in inner[..colon].split(',') {
            let hop = hop.strip_prefix('@').ok_or(AddressError::BadRoute)?;
            route.push(Domain::parse(hop, utf8).map_err(|_| AddressError::BadRoute)?);
        }
        (route, &inner[colon + 1..])
    } else {
        (Vec::new(), inner)
    };
    let mailbox = Mailbox::parse(mailbox, utf8)?;
    Ok((Path::Mailbox { mailbox, source_route: route }, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Result<Mailbox, AddressError> {
        Mailbox::parse(s, false)
    }

    #[test]
    fn u_label_and_a_label_are_the_same_name() {
        let u = Domain::parse("bücher.example", true).unwrap();
        let a = Domain::parse("XN--BCHER-KVA.example", false).unwrap();
        assert!(u.same_name(&a) && a.same_name(&u));
        assert_eq!(u.to_ascii(), "xn--bcher-kva.example");
        assert!(!u.same_name(&Domain::parse("bucher.example", false).unwrap()));
        // A name IDNA refuses compares only as written.
        let bad = Domain::parse("xn--zz.example", false).unwrap();
        assert!(bad.same_name(&bad.clone()) && !bad.same_name(&a));
    }

    #[test]
    fn plain_mailbox() {
        let m = mb("User.Name+tag@Example.TEST").unwrap();
        assert_eq!(m.local_part(), "User.Name+tag");
        assert_eq!(m.domain().unwrap().as_str(), "example.test");
        assert_eq!(m.routing_hack(), None);
    }

    #[test]
    fn trailing_dot_and_empty_labels_are_errors() {
        assert_eq!(mb("a@example.test."), Err(AddressError::BadDomain));
        assert_eq!(mb("a@example..test"), Err(AddressError::BadDomain));
        assert_eq!(mb("a.@example.test"), Err(AddressError::BadLocalPart));
        assert_eq!(mb("a@-x.test"), Err(AddressError::BadDomain));
    }

    #[test]
    fn routing_hacks_are_named() {
        assert!(mb("a%b.test@example.test").unwrap().routing_hack().is_some());
        assert!(mb("b.test!a@example.test").unwrap().routing_hack().is_some());
        assert!(mb("\"a@b.test\"@example.test").unwrap().routing_hack().is_some());
        // An unquoted second @ is a syntax error, not a hack to resolve.
        assert!(mb("a@b.test@example.test").is_err());
    }

    #[test]
    fn literals() {
        let m = mb("a@[192.0.2.1]").unwrap();
        assert!(matches!(m.host(), Host::Literal(_)));
        assert!(mb("a@[IPv6:2001:db8::1]").is_ok());
        assert!(mb("a@[300.1.1.1]").is_err());
        assert!(mb("a@[foo:bar]").is_err());
    }

    #[test]
    fn paths() {
        let (p, rest) = parse_path("<a@example.test> SIZE=10", false).unwrap();
        assert!(matches!(p, Path::Mailbox { .. }));
        assert_eq!(rest, "SIZE=10");
        assert_eq!(parse_path("<>", false).unwrap().0, Path::Null);
        assert_eq!(parse_path("<Postmaster>", false).unwrap().0, Path::Postmaster);
        let (p, _) = parse_path("<@relay.test,@b.test:a@example.test>", false).unwrap();
        match p {
            Path::Mailbox { source_route, .. } => assert_eq!(source_route.len(), 2),
            _ => panic!("expected mailbox"),
        }
        assert!(parse_path("a@example.test", false).is_err());
        assert!(parse_path("<a@example.test", false).is_err());
        assert!(parse_path("<\"a>b\"@example.test>", false).is_ok());
    }

    #[test]
    fn utf8_needs_smtputf8() {
        assert_eq!(Mailbox::parse("δοκιμή@παράδειγμα.δοκιμή", false), Err(AddressError::NeedsUtf8));
        assert!(Mailbox::parse("δοκιμή@παράδειγμα.δοκιμή", true).is_ok());
    }
}
