//! RFC 7208 §7 macros: parsing a macro-string once, expanding it per check.
//!
//! Records come from DNS and are hostile: parsing never panics, and every
//! deviation from the §7.1 ABNF is a [`SyntaxError`] (a permerror upstream).

use std::fmt;
use std::net::IpAddr;

/// Why a record, term or macro-string does not follow the RFC 7208 ABNF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// The offending text (a term, or the part of it that failed).
    pub found: String,
    /// What was expected instead.
    pub expected: &'static str,
}

impl SyntaxError {
    pub(super) fn new(found: &str, expected: &'static str) -> Self {
        SyntaxError { found: found.chars().take(80).collect(), expected }
    }
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SPF syntax: expected {}, found {:?}", self.expected, self.found)
    }
}

impl std::error::Error for SyntaxError {}

/// Where a macro-string appears: a domain-spec allows fewer letters than
/// the text of an explanation (§7.2), which also allows spaces (§6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grammar {
    Domain,
    Explanation,
}

/// A parsed macro-string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroString {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `%%`, `%_` or `%-`: a macro-expand in the grammar, constant text here.
    Escape(&'static str),
    Macro(Macro),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Macro {
    letter: Letter,
    /// Upper-case letter: URL-escape the value (§7.3).
    url_escape: bool,
    /// Keep this many right-hand parts.
    keep: Option<usize>,
    reverse: bool,
    /// Split on these; empty means the default `.`.
    delimiters: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Letter {
    Sender,
    LocalPart,
    SenderDomain,
    Domain,
    Ip,
    ValidatedName,
    IpVersion,
    Helo,
    ClientIp,
    Receiver,
    Timestamp,
}

/// The values the letters expand to, for one check_host() call.
#[derive(Debug, Clone)]
pub struct Vars<'a> {
    pub sender: &'a str,
    pub local_part: &'a str,
    pub sender_domain: &'a str,
    pub domain: &'a str,
    pub ip: IpAddr,
    pub helo: &'a str,
    pub receiver: &'a str,
    /// The validated name of the client (`%{p}`), when it was looked up.
    pub validated_name: Option<&'a str>,
    /// Seconds since the epoch (`%{t}`).
    pub now: u64,
}

impl MacroString {
    pub fn parse(s: &str, grammar: Grammar) -> Result<MacroString, SyntaxError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = s;
        while let Some(c) = rest.chars().next() {
            if c == '%' {
                let escape = match rest.as_bytes().get(1) {
                    Some(b'%') => Some("%"),
                    Some(b'_') => Some(" "),
                    Some(b'-') => Some("%20"),
                    Some(b'{') => None,
                    _ => return Err(SyntaxError::new(rest, "'%' followed by '{', '%', '_' or '-'")),
                };
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                match escape {
                    Some(e) => {
                        parts.push(Part::Escape(e));
                        rest = &rest[2..];
                    }
                    None => {
                        let Some(end) = rest.find('}') else { return Err(SyntaxError::new(rest, "a macro closed by '}'")) };
                        parts.push(Part::Macro(Macro::parse(&rest[2..end], grammar)?));
                        rest = &rest[end + 1..];
                    }
                }
                continue;
            }
            let allowed = matches!(c, '\x21'..='\x7e') || (c == ' ' && grammar == Grammar::Explanation);
            if !allowed {
                return Err(SyntaxError::new(rest, "a visible ASCII character"));
            }
            literal.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(MacroString { parts })
    }

    /// Parses a domain-spec (§7.1): a macro-string whose end is a macro or
    /// a top label after a dot.
    pub fn parse_domain_spec(s: &str) -> Result<MacroString, SyntaxError> {
        let spec = MacroString::parse(s, Grammar::Domain)?;
        let valid_end = match spec.parts.last() {
            None => false,
            Some(Part::Escape(_) | Part::Macro(_)) => true,
            Some(Part::Literal(tail)) => {
                let tail = tail.strip_suffix('.').unwrap_or(tail);
                tail.rsplit_once('.').is_some_and(|(_, top)| is_toplabel(top))
            }
        };
        if valid_end { Ok(spec) } else { Err(SyntaxError::new(s, "a domain-spec ending in a macro or '.' and a top label")) }
    }

    /// Whether expanding needs the client's validated name (a PTR lookup).
    pub fn uses_validated_name(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Macro(m) if m.letter == Letter::ValidatedName))
    }

    pub fn expand(&self, vars: &Vars<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Escape(s) => out.push_str(s),
                Part::Macro(m) => out.push_str(&m.expand(vars)),
            }
        }
        out
    }
}

/// toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
fn is_toplabel(s: &str) -> bool {
    let b = s.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else { return false };
    if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if b.contains(&b'-') { first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() } else { b.iter().any(u8::is_ascii_alphabetic) }
}

impl Macro {
    /// The inside of `%{...}`: letter, transformers, delimiters.
    fn parse(inner: &str, grammar: Grammar) -> Result<Macro, SyntaxError> {
        let bad = || SyntaxError::new(inner, "a macro letter, digits, 'r' and delimiters");
        let mut chars = inner.chars().peekable();
        let c = chars.next().ok_or_else(bad)?;
        let letter = match c.to_ascii_lowercase() {
            's' => Letter::Sender,
            'l' => Letter::LocalPart,
            'o' => Letter::SenderDomain,
            'd' => Letter::Domain,
            'i' => Letter::Ip,
            'p' => Letter::ValidatedName,
            'v' => Letter::IpVersion,
            'h' => Letter::Helo,
            'c' if grammar == Grammar::Explanation => Letter::ClientIp,
            'r' if grammar == Grammar::Explanation => Letter::Receiver,
            't' if grammar == Grammar::Explanation => Letter::Timestamp,
            _ => return Err(bad()),
        };
        let mut digits = String::new();
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            digits.push(d);
        }
        let keep = if digits.is_empty() {
            None
        } else {
            // Huge counts keep everything; zero parts is meaningless (RFC 4408 §8.1).
            let n = digits.parse::<usize>().unwrap_or(usize::MAX);
            if n == 0 {
                return Err(bad());
            }
            Some(n)
        };
        let reverse = chars.next_if(|c| c.eq_ignore_ascii_case(&'r')).is_some();
        let delimiters: String = chars.collect();
        if !delimiters.chars().all(|c| ".-+,/_=".contains(c)) {
            return Err(bad());
        }
        Ok(Macro { letter, url_escape: c.is_ascii_uppercase(), keep, reverse, delimiters })
    }

    fn expand(&self, v: &Vars<'_>) -> String {
        let value = match self.letter {
            Letter::Sender => v.sender.to_string(),
            Letter::LocalPart => v.local_part.to_string(),
            Letter::SenderDomain => v.sender_domain.to_string(),
            Letter::Domain => v.domain.to_string(),
            Letter::Ip => dotted_ip(v.ip),
            Letter::ValidatedName => v.validated_name.unwrap_or("unknown").to_string(),
            Letter::IpVersion => if v.ip.is_ipv4() { "in-addr" } else { "ip6" }.to_string(),
            Letter::Helo => v.helo.to_string(),
            Letter::ClientIp => v.ip.to_string(),
            Letter::Receiver => if v.receiver.is_empty() { "unknown" } else { v.receiver }.to_string(),
            Letter::Timestamp => v.now.to_string(),
        };
        let value = if self.keep.is_some() || self.reverse || !self.delimiters.is_empty() { self.transform(&value) } else { value };
        if self.url_escape { url_escape(&value) } else { value }
    }

    /// Split on the delimiters, maybe reverse, keep the right-hand parts,
    /// join with dots (§7.3).
    fn transform(&self, value: &str) -> String {
        let delimiters = if self.delimiters.is_empty() { "." } else { &self.delimiters };
        let mut parts: Vec<&str> = value.split(|c| delimiters.contains(c)).collect();
        if self.reverse {
            parts.reverse();
        }
        let keep = self.keep.unwrap_or(parts.len()).min(parts.len());
        parts[parts.len() - keep..].join(".")
    }
}

/// `%{i}`: dotted quad, or for IPv6 dot-separated nibbles (§7.3), upper
/// case as in the RFC 4408 examples the conformance suite expects.
fn dotted_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(63);
            for byte in v6.octets() {
                for nibble in [byte >> 4, byte & 0xf] {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0').to_ascii_uppercase());
                }
            }
            out
        }
    }
}

/// RFC 3986 escaping of everything but the unreserved characters.
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(ip: &str) -> Vars<'static> {
        Vars {
            sender: "strong-bad@email.example.com",
            local_part: "strong-bad",
            sender_domain: "email.example.com",
            domain: "email.example.com",
            ip: ip.parse().unwrap(),
            helo: "mx.example.org",
            receiver: "mx.example.net",
            validated_name: Some("mx.example.org"),
            now: 1_000_000,
        }
    }

    fn expand(s: &str, ip: &str) -> String {
        MacroString::parse(s, Grammar::Explanation).unwrap().expand(&vars(ip))
    }

    #[test]
    fn rfc7208_section_7_4_examples() {
        let ip4 = "192.0.2.3";
        let cases = [
            ("%{s}", "strong-bad@email.example.com"),
            ("%{o}", "email.example.com"),
            ("%{d}", "email.example.com"),
            ("%{d4}", "email.example.com"),
            ("%{d3}", "email.example.com"),
            ("%{d2}", "example.com"),
            ("%{d1}", "com"),
            ("%{dr}", "com.example.email"),
            ("%{d2r}", "example.email"),
            ("%{l}", "strong-bad"),
            ("%{l-}", "strong.bad"),
            ("%{lr}", "strong-bad"),
            ("%{lr-}", "bad.strong"),
            ("%{l1r-}", "strong"),
            ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
            ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
            ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
            ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
            ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, ip4), want, "{input}");
        }
        // The RFC writes the nibbles in lower case; DNS names compare without case.
        let v6 = expand("%{ir}.%{v}._spf.%{d2}", "2001:db8::cb01");
        assert!(v6.eq_ignore_ascii_case("1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"), "{v6}");
    }

    #[test]
    fn escapes_and_explanation_letters() {
        assert_eq!(expand("a%%b%_c%-d", "192.0.2.3"), "a%b c%20d");
        assert_eq!(expand("%{c} %{r} %{t} %{p}", "2001:db8::cb01"), "2001:db8::cb01 mx.example.net 1000000 mx.example.org");
        assert_eq!(expand("%{S}", "192.0.2.3"), "strong-bad%40email.example.com");
        let mut v = vars("192.0.2.3");
        v.local_part = "~jack&jill=up-a_b3.c";
        v.validated_name = None;
        let m = MacroString::parse("l=%{L} %{p}", Grammar::Explanation).unwrap();
        assert_eq!(m.expand(&v), "l=~jack%26jill%3Dup-a_b3.c unknown");
        assert_eq!(
            MacroString::parse("%{l2r+-}", Grammar::Domain).unwrap().expand(&Vars { local_part: "foo-bar+zip+quux", ..v }),
            "bar.foo"
        );
    }

    #[test]
    fn syntax_errors() {
        for bad in ["%(ir).x.com", "foo%.x.com", "%", "%{", "%{x}", "%{d0}", "%{d2q}", "%{}", "a b", "caf\u{e9}", "a\tb"] {
            assert!(MacroString::parse(bad, Grammar::Domain).is_err(), "{bad:?}");
        }
        // c, r, t only in explanations; spaces too.
        for explain_only in ["%{c}", "%{r}.x.com", "%{t}", "a b"] {
            assert!(MacroString::parse(explain_only, Grammar::Domain).is_err(), "{explain_only}");
            assert!(MacroString::parse(explain_only, Grammar::Explanation).is_ok(), "{explain_only}");
        }
        assert!(MacroString::parse("%{d999999999999999999999999r.-+,/_=}", Grammar::Domain).is_ok());
    }

    #[test]
    fn domain_spec_ends() {
        for good in
            ["example.com", "example.com.", "mail.example...com", "%{d}", "x.%{d}", "a%-", "foo.example.xn--zckzah", "x.1-2", "x.a1"]
        {
            assert!(MacroString::parse_domain_spec(good).is_ok(), "{good}");
        }
        for bad in
            ["", "foo-bar", "museum", "museum.", "abc.123", "example.-com", "example.com-", "example.com:8080", "x.com/24", "x..", "."]
        {
            assert!(MacroString::parse_domain_spec(bad).is_err(), "{bad}");
        }
    }
}
