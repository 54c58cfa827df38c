//! A strict parser for SPF records (RFC 7208 §4.5, §4.6, §5, §6, §12).
//!
//! The whole record is parsed before anything is evaluated, so a syntax
//! error anywhere is a permerror even after a matching term (§4.6).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::macros::{Grammar, MacroString, SyntaxError};

/// A parsed `v=spf1` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub directives: Vec<Directive>,
    pub redirect: Option<MacroString>,
    pub explanation: Option<MacroString>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub qualifier: Qualifier,
    pub mechanism: Mechanism,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

/// Prefix lengths of a dual-cidr-length; absent means a whole address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub v4: u8,
    pub v6: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include(MacroString),
    A(Option<MacroString>, Cidr),
    Mx(Option<MacroString>, Cidr),
    Ptr(Option<MacroString>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(MacroString),
}

impl Mechanism {
    /// The terms counted against the limit of 10 DNS-querying terms (§4.6.4).
    pub fn queries_dns(&self) -> bool {
        matches!(self, Mechanism::Include(_) | Mechanism::A(..) | Mechanism::Mx(..) | Mechanism::Ptr(_) | Mechanism::Exists(_))
    }
}

/// Whether a TXT record is an SPF record at all: `v=spf1` (any case) alone
/// or followed by a space (§4.5). Other TXT records are none of our business.
pub fn is_spf(txt: &[u8]) -> bool {
    txt.len() >= 6 && txt[..6].eq_ignore_ascii_case(b"v=spf1") && txt.get(6).is_none_or(|b| *b == b' ')
}

impl Record {
    /// Parses an SPF record (one for which [`is_spf`] holds).
    pub fn parse(txt: &[u8]) -> Result<Record, SyntaxError> {
        let Ok(text) = std::str::from_utf8(txt) else {
            return Err(SyntaxError::new(&String::from_utf8_lossy(txt), "an ASCII record"));
        };
        if !text.is_ascii() {
            return Err(SyntaxError::new(text, "an ASCII record"));
        }
        if !is_spf(txt) {
            return Err(SyntaxError::new(text, "v=spf1"));
        }
        let mut record = Record { directives: Vec::new(), redirect: None, explanation: None };
        // terms = *( 1*SP ( directive / modifier ) ), then *SP.
        for term in text[6..].split(' ').filter(|t| !t.is_empty()) {
            if let Some((name, value)) = term.split_once('=')
                && is_modifier_name(name)
            {
                record.modifier(term, name, value)?;
            } else {
                record.directives.push(directive(term)?);
            }
        }
        Ok(record)
    }

    fn modifier(&mut self, term: &str, name: &str, value: &str) -> Result<(), SyntaxError> {
        let slot = if name.eq_ignore_ascii_case("redirect") {
            &mut self.redirect
        } else if name.eq_ignore_ascii_case("exp") {
            &mut self.explanation
        } else {
            // Unknown modifiers are ignored, but must still be well formed (§6).
            MacroString::parse(value, Grammar::Domain)?;
            return Ok(());
        };
        if slot.is_some() {
            return Err(SyntaxError::new(term, "at most one redirect= and one exp="));
        }
        *slot = Some(MacroString::parse_domain_spec(value)?);
        Ok(())
    }
}

/// name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
fn is_modifier_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn directive(term: &str) -> Result<Directive, SyntaxError> {
    let (qualifier, rest) = match term.as_bytes().first() {
        Some(b'+') => (Qualifier::Pass, &term[1..]),
        Some(b'-') => (Qualifier::Fail, &term[1..]),
        Some(b'~') => (Qualifier::SoftFail, &term[1..]),
        Some(b'?') => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let name_end = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, args) = rest.split_at(name_end);
    let name = name.to_ascii_lowercase();
    let required_spec = |args: &str| match args.strip_prefix(':') {
        Some(spec) => MacroString::parse_domain_spec(spec),
        None => Err(SyntaxError::new(term, "':' and a domain-spec")),
    };
    let optional_spec = |args: &str| match args {
        "" => Ok(None),
        _ => required_spec(args).map(Some),
    };
    let mechanism = match name.as_str() {
        "all" if args.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(required_spec(args)?),
        "exists" => Mechanism::Exists(required_spec(args)?),
        "ptr" => Mechanism::Ptr(optional_spec(args)?),
        "a" | "mx" => {
            let (spec, cidr) = dual_cidr(args)?;
            let spec = optional_spec(spec)?;
            if name == "a" { Mechanism::A(spec, cidr) } else { Mechanism::Mx(spec, cidr) }
        }
        "ip4" | "ip6" => {
            let Some(network) = args.strip_prefix(':') else { return Err(SyntaxError::new(term, "':' and an address")) };
            let (addr, len) = match network.split_once('/') {
                Some((addr, len)) => (addr, Some(len)),
                None => (network, None),
            };
            if name == "ip4" {
                let addr: Ipv4Addr = addr.parse().map_err(|_| SyntaxError::new(addr, "an IPv4 address"))?;
                Mechanism::Ip4(addr, len.map_or(Ok(32), |l| prefix_length(l, 32))?)
            } else {
                let addr: Ipv6Addr = addr.parse().map_err(|_| SyntaxError::new(addr, "an IPv6 address"))?;
                Mechanism::Ip6(addr, len.map_or(Ok(128), |l| prefix_length(l, 128))?)
            }
        }
        _ => return Err(SyntaxError::new(term, "a mechanism (all, include, a, mx, ptr, ip4, ip6, exists) or a modifier")),
    };
    Ok(Directive { qualifier, mechanism })
}

/// Splits `[":" domain-spec] [ "/" ip4-len ] [ "//" ip6-len ]` into the
/// part before the lengths and the lengths. A `/` not followed by digits up
/// to the end belongs to the domain-spec (a macro-literal).
fn dual_cidr(args: &str) -> Result<(&str, Cidr), SyntaxError> {
    let mut head = args;
    let mut cidr = Cidr { v4: 32, v6: 128 };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(i) = head.rfind("//")
        && digits(&head[i + 2..])
    {
        cidr.v6 = prefix_length(&head[i + 2..], 128)?;
        head = &head[..i];
    }
    if let Some(i) = head.rfind('/')
        && digits(&head[i + 1..])
    {
        cidr.v4 = prefix_length(&head[i + 1..], 32)?;
        head = &head[..i];
    }
    Ok((head, cidr))
}

/// ip4-cidr-length / ip6-cidr-length: decimal without leading zeros, at
/// most `max`.
fn prefix_length(s: &str, max: u8) -> Result<u8, SyntaxError> {
    let bad = || SyntaxError::new(s, "a prefix length without leading zeros");
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return Err(bad());
    }
    match s.parse::<u8>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Record, SyntaxError> {
        Record::parse(s.as_bytes())
    }

    fn mechanisms(s: &str) -> Vec<Mechanism> {
        parse(s).unwrap().directives.into_iter().map(|d| d.mechanism).collect()
    }

    #[test]
    fn selects_spf_records() {
        assert!(is_spf(b"v=spf1"));
        assert!(is_spf(b"V=SpF1 -all"));
        assert!(!is_spf(b"v=spf10"));
        assert!(!is_spf(b"v=spf1mx"));
        assert!(!is_spf(b"\x96"));
        assert!(!is_spf(b""));
    }

    #[test]
    fn parses_every_mechanism() {
        let r = parse("v=spf1 +all -include:_spf.example.com ~a ?a:x.example.com/24//64 mx//0 ptr ptr:example.com ip4:192.0.2.0/24 ip6:2001:db8::/32 exists:%{ir}.bl.example.com  ").unwrap();
        let q: Vec<Qualifier> = r.directives.iter().map(|d| d.qualifier).collect();
        assert_eq!(&q[..4], &[Qualifier::Pass, Qualifier::Fail, Qualifier::SoftFail, Qualifier::Neutral]);
        assert_eq!(r.directives.len(), 10);
        assert!(matches!(r.directives[3].mechanism, Mechanism::A(Some(_), Cidr { v4: 24, v6: 64 })));
        assert!(matches!(r.directives[4].mechanism, Mechanism::Mx(None, Cidr { v4: 32, v6: 0 })));
        assert_eq!(r.directives[7].mechanism, Mechanism::Ip4(Ipv4Addr::new(192, 0, 2, 0), 24));
        assert_eq!(r.directives.iter().filter(|d| d.mechanism.queries_dns()).count(), 7);
        assert_eq!(
            mechanisms("V=SPF1 ALL A:X.COM"),
            vec![Mechanism::All, Mechanism::A(MacroString::parse_domain_spec("X.COM").ok(), Cidr { v4: 32, v6: 128 })]
        );
    }

    #[test]
    fn modifiers() {
        let r = parse("v=spf1 redirect=_spf.example.com exp=why.%{d} moo.cow-far_out=man:dog/cat default=pass").unwrap();
        assert!(r.directives.is_empty());
        assert!(r.redirect.is_some() && r.explanation.is_some());
        // A slash in a domain-spec that is not a prefix length.
        assert!(parse("v=spf1 a:foo:bar/baz.example.com").is_ok());
    }

    #[test]
    fn syntax_errors() {
        let bad = [
            "v=spf1 ip4:1.2.3.4 -all moo",
            "v=spf1 moo.cow/far_out=man:dog/cat",
            "v=spf1 redirect:example.com",
            "v=spf1 -all.",
            "v=spf1 -all:foo",
            "v=spf1 -all/8",
            "v=spf1 ptr/0",
            "v=spf1 ptr:",
            "v=spf1 a/33",
            "v=spf1 a//129",
            "v=spf1 a/24/64",
            "v=spf1 a:",
            "v=spf1 a:foo-bar",
            "v=spf1 a:museum.",
            "v=spf1 a:abc.123",
            "v=spf1 a:example.com:8080",
            "v=spf1 a:foo.example.com\0",
            "v=spf1 include",
            "v=spf1 include:x.example.com/24",
            "v=spf1 exists",
            "v=spf1 exists:x.example.com/24",
            "v=spf1 ip4",
            "v=spf1 ip4:1.2.3",
            "v=spf1 ip4:1.2.3.4/33",
            "v=spf1 ip4:1.2.3.4/032",
            "v=spf1 ip4:1.2.3.4//32",
            "v=spf1 ip4:1.2.3.4:8080",
            "v=spf1 ip6",
            "v=spf1 ip6::CAFE::BABE",
            "v=spf1 ip6:::1/129",
            "v=spf1 1up=foo",
            "v=spf1 =all",
            "v=spf1 foo=%abc",
            "v=spf1 exp=",
            "v=spf1 exp=-all",
            "v=spf1 exp=%{r}.example.com",
            "v=spf1 redirect=a.example.com redirect=a.example.com",
            "v=spf1 exp=a.example.com exp=b.example.com",
            "v=spf1 a:ctrl.example.com\rptr",
            "v=spf1 ip4:192.0.2.5\n include:x.example.com",
            "v=spf1 \u{80}a:example.net",
            "v=spf1 a:\u{ef}\u{bb}\u{bf}garbage.example.net",
            "v=spf10",
        ];
        for s in bad {
            assert!(parse(s).is_err(), "{s:?}");
        }
        assert!(Record::parse(b"v=spf1 a:\xff.example.com").is_err());
    }

    #[test]
    fn error_names_the_term() {
        let e = parse("v=spf1 a ip4:300.1.1.1").unwrap_err();
        assert_eq!(e.found, "300.1.1.1");
        assert!(e.to_string().contains("IPv4"), "{e}");
    }
}
