//! The author: the one mailbox in the one `From:` field that DMARC judges
//! (RFC 7489 §6.6.1, RFC 9989 §4.4). Everything else is refused rather
//! than guessed at, because a guess is how spoofing slips past DMARC
//! ("Composition Kills", USENIX Security 2020): zero or several `From:`
//! fields (also spelled `FROM :` or folded), several mailboxes or a group,
//! an address that does not parse, or a parse that differs from the one
//! mail-auth's DMARC evaluation sees.
//!
//! A domain written in a non-canonical form is judged as the domain it
//! denotes, never as "no domain": the caller hands mail-auth the canonical
//! address ([`Author::canonical`]) so that DMARC looks up the policy of
//! the domain a reader and the DNS see. See [`author`] for the choice made
//! for each spelling.
//!
//! May import: `checks::lookalike` (identities), `mailgate-core`.

use mail_parser::parsers::MessageStream;
use mail_parser::{Address, HeaderValue};
use mailgate_core::Domain;

use super::lookalike::Identity;

/// The author of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    /// The address as written (local-part case kept).
    pub address: String,
    /// The local part as the parser returned it.
    pub local: String,
    /// The domain, lower case, A-labels, no trailing dot.
    pub domain: String,
    pub display_name: Option<String>,
}

impl Author {
    /// `local@domain` with the canonical domain: what DMARC must judge.
    pub fn canonical(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

/// The canonical form of a domain from a header, or why it has none:
/// lower case, A-labels (UTS #46 mapping: full-width letters and dots,
/// ignorable code points), at most one trailing dot removed. `what` names
/// the field for the error.
pub fn canonical_domain(domain: &str, what: &str) -> Result<String, String> {
    // One trailing dot is the same DNS name written absolutely
    // (`bank.example.`): judged as `bank.example`, so it cannot escape that
    // domain's policy. Two or more are no name at all.
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let Ok(parsed) = Domain::parse(domain, true) else {
        return Err(format!("{what} domain {:?} is not a domain name", printable(domain)));
    };
    // Case and U-label/A-label differences denote the same DNS name:
    // canonical, so `BANK.example` and `bänk.example`/`xn--bnk-qla.example`
    // each meet their one policy. A name IDNA refuses is refused here.
    let Ok(ascii) = idna::domain_to_ascii(parsed.as_str()) else {
        return Err(format!("{what} domain {:?} is not a valid IDN", printable(domain)));
    };
    // The mapping may have produced dots or an empty label (`a．．b`).
    if Domain::parse(&ascii, false).is_err() {
        return Err(format!("{what} domain {:?} is not a domain name", printable(domain)));
    }
    if !ascii.contains('.') {
        return Err(format!("{what} domain {:?} is not a fully qualified name", printable(&ascii)));
    }
    Ok(ascii)
}

/// The mailboxes of every `From:`, `Reply-To:` and `Sender:` field
/// (however the name is spelled), for the look-alike rules: (identity,
/// display name, address as parsed). Groups are opened; what does not
/// parse is skipped: these lists decide no DMARC, they only show what a
/// reader may see (also when [`author`] found no single author).
pub fn identities(raw: &[u8]) -> Vec<(Identity, Option<String>, String)> {
    let mut out = Vec::new();
    for (name, value) in header_fields(raw) {
        let name: Vec<u8> = name.iter().copied().filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n')).collect();
        let identity = if name.eq_ignore_ascii_case(b"from") {
            Identity::From
        } else if name.eq_ignore_ascii_case(b"reply-to") {
            Identity::ReplyTo
        } else if name.eq_ignore_ascii_case(b"sender") {
            Identity::Sender
        } else {
            continue;
        };
        let parsed = MessageStream::new(value).parse_address();
        let HeaderValue::Address(address) = &parsed else { continue };
        let mailboxes: Vec<&mail_parser::Addr> = match address {
            Address::List(list) => list.iter().collect(),
            Address::Group(groups) => groups.iter().flat_map(|g| g.addresses.iter()).collect(),
        };
        for m in mailboxes.into_iter().take(50) {
            if let Some(a) = m.address.as_deref() {
                out.push((identity, m.name.as_deref().map(str::to_string), a.trim().to_string()));
            }
        }
    }
    out
}

/// The header fields of `raw`: (name, value) with the value's raw bytes
/// after the colon, folding included. Stops at the first empty line.
pub fn header_fields(raw: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let line_end = |from: usize| raw[from..].iter().position(|&b| b == b'\n').map_or(raw.len(), |i| from + i + 1);
        let mut end = line_end(pos);
        let first = &raw[pos..end];
        if first == b"\r\n" || first == b"\n" {
            break;
        }
        // A field continues on lines that start with white space.
        while end < raw.len() && matches!(raw[end], b' ' | b'\t') {
            end = line_end(end);
        }
        let field = &raw[pos..end];
        // A line without a colon is not a field; skip it.
        if let Some(colon) = field.iter().position(|&b| b == b':') {
            fields.push((&field[..colon], &field[colon + 1..]));
        }
        pos = end;
    }
    fields
}

/// Whether a field name means `From`, however it is spelled: any case,
/// white space before the colon (RFC 5322 obsolete syntax), or folded.
pub fn is_from(name: &[u8]) -> bool {
    let trimmed: Vec<u8> = name.iter().copied().filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n')).collect();
    trimmed.eq_ignore_ascii_case(b"from")
}

/// Finds the author in `raw`, the header block (only the fields before the
/// first empty line are read), or says why there is no single one.
pub fn author(raw: &[u8], seen_by_dmarc: &[String]) -> Result<Author, String> {
    let froms: Vec<&[u8]> = header_fields(raw).into_iter().filter(|(n, _)| is_from(n)).map(|(_, v)| v).collect();
    let value = match froms.as_slice() {
        [] => return Err("no From: header".into()),
        [one] => *one,
        many => return Err(format!("{} From: headers; exactly one is allowed", many.len())),
    };
    let parsed = MessageStream::new(value).parse_address();
    let mailbox = match &parsed {
        HeaderValue::Address(Address::List(list)) => match list.as_slice() {
            [one] => one,
            [] => return Err("From: holds no mailbox".into()),
            many => return Err(format!("From: holds {} mailboxes; exactly one is allowed", many.len())),
        },
        HeaderValue::Address(Address::Group(_)) => return Err("From: holds a group; exactly one mailbox is allowed".into()),
        _ => return Err("From: does not parse".into()),
    };
    let address = mailbox.address.as_deref().unwrap_or("").trim();
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err(format!("From: address {:?} has no domain", printable(address)));
    };
    if local.is_empty() {
        return Err(format!("From: address {:?} does not parse", printable(address)));
    }
    // An `@` inside the local part (`"ceo@bank.example"@evil.example`, or
    // unquoted) moves where a reader, or another parser, thinks the domain
    // starts: refused, as no legitimate author needs it. `%` and `!` are
    // plain local-part characters every parser agrees on: the domain after
    // the last `@` is judged, and `lookalike`'s `local-part` rule flags a
    // protected domain written there.
    if local.contains('@') {
        return Err(format!("From: address {:?} has an @ in its local part", printable(address)));
    }
    let domain = canonical_domain(domain, "From:")?;
    // mail-auth's DMARC must judge the same mailbox, or a parser
    // difference becomes a bypass.
    let same = match seen_by_dmarc {
        [one] => one.rsplit_once('@').is_some_and(|(_, d)| canonical_domain(d, "From:").is_ok_and(|d| d == domain)),
        _ => false,
    };
    if !same {
        return Err("From: is ambiguous (parsers disagree on its address)".into());
    }
    Ok(Author { address: address.to_string(), local: local.to_string(), domain, display_name: mailbox.name.as_deref().map(str::to_string) })
}

/// Text safe for a log line or an SMTP reply.
pub fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str) -> Result<Author, String> {
        let msg = mail_auth::AuthenticatedMessage::parse(raw.as_bytes()).ok_or("unparsable")?;
        author(raw.as_bytes(), &msg.from)
    }

    #[test]
    fn one_mailbox() {
        let a = check("From: Alice <Alice@Example.TEST>\r\nSubject: x\r\n\r\nbody").unwrap();
        assert_eq!(a.domain, "example.test");
        assert_eq!(a.display_name.as_deref(), Some("Alice"));
        let a = check("From: alice@b\u{fc}cher.test\r\n\r\nx").unwrap();
        assert_eq!(a.domain, "xn--bcher-kva.test");
    }

    #[test]
    fn non_canonical_domains_denote_their_canonical_domain() {
        for (raw, want) in [
            ("From: ceo@bank.example.\r\n\r\nx", "bank.example"),
            ("From: ceo@BANK.Example\r\n\r\nx", "bank.example"),
            ("From: ceo@BANK.EXAMPLE.\r\n\r\nx", "bank.example"),
            ("From: <ceo@bank.example.>\r\n\r\nx", "bank.example"),
            ("From: ceo@b\u{e4}nk.example\r\n\r\nx", "xn--bnk-qla.example"),
            ("From: ceo@B\u{c4}NK.example.\r\n\r\nx", "xn--bnk-qla.example"),
            ("From: ceo@xn--bnk-qla.example\r\n\r\nx", "xn--bnk-qla.example"),
            ("From: ceo@XN--BNK-QLA.EXAMPLE\r\n\r\nx", "xn--bnk-qla.example"),
            // Full-width letters and an ignorable soft hyphen map to ASCII.
            ("From: ceo@\u{ff42}\u{ff41}\u{ff4e}\u{ff4b}.example\r\n\r\nx", "bank.example"),
            ("From: ceo@ba\u{ad}nk.example\r\n\r\nx", "bank.example"),
            // % and ! are local-part characters; the domain is after the @.
            ("From: ceo%bank.example@evil.example\r\n\r\nx", "evil.example"),
            ("From: bank.example!ceo@evil.example\r\n\r\nx", "evil.example"),
        ] {
            let a = check(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            assert_eq!(a.domain, want, "{raw:?}");
            assert_eq!(a.canonical().rsplit_once('@').map(|(_, d)| d), Some(want));
        }
    }

    #[test]
    fn local_parts_that_move_the_domain_are_refused() {
        for raw in [
            "From: \"ceo@bank.example\"@evil.example\r\n\r\nx",
            "From: <\"ceo@bank.example\"@evil.example>\r\n\r\nx",
            "From: \"ceo\\@bank.example\"@evil.example\r\n\r\nx",
            "From: ceo@bank.example..\r\n\r\nx",
            "From: ceo@.bank.example\r\n\r\nx",
            "From: ceo@xn--zz.example\r\n\r\nx",
        ] {
            assert!(check(raw).is_err(), "accepted {raw:?}: {:?}", check(raw));
        }
    }

    #[test]
    fn reply_to_and_sender_identities() {
        let raw = b"From: a@x.example\r\nReply-To: Bank <pay@b4nk.example>, b@y.example\r\nsender : s@z.example\r\n\
REPLY-TO: team: c@w.example;\r\n\r\nbody";
        let got = identities(raw);
        let short: Vec<(&str, &str)> = got.iter().map(|(i, _, a)| (i.as_str(), a.as_str())).collect();
        assert_eq!(
            short,
            [
                ("from", "a@x.example"),
                ("reply_to", "pay@b4nk.example"),
                ("reply_to", "b@y.example"),
                ("sender", "s@z.example"),
                ("reply_to", "c@w.example")
            ]
        );
        assert_eq!(got[1].1.as_deref(), Some("Bank"));
    }

    #[test]
    fn hostile_headers_never_panic() {
        use crate::checks::auth_results::strip_forged;
        let base = b"From: \"A (x)\" <a@b\xc3\xbccher.test>\r\nAuthentication-Results: mx.test; spf=pass\r\nSubject: =?utf-8?q?x?=\r\n\r\nbody\r\n";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut m = base.to_vec();
            for _ in 0..(next() % 6 + 1) {
                let i = (next() as usize) % m.len();
                match next() % 3 {
                    0 => m[i] = next() as u8,
                    1 => m.insert(i, b":<>@\"()\\\r\n\t ,;"[(next() % 14) as usize]),
                    _ => {
                        m.remove(i);
                    }
                }
            }
            let from = mail_auth::AuthenticatedMessage::parse(&m).map(|a| a.from).unwrap_or_default();
            let _ = author(&m, &from);
            let _ = identities(&m);
            let _ = strip_forged(&m, "mx.test");
        }
    }

    #[test]
    fn ambiguous_authors_are_refused() {
        for raw in [
            "Subject: no author\r\n\r\nx",
            "From: a@evil.test\r\nFrom: a@bank.test\r\n\r\nx",
            "From: a@evil.test\r\nFROM: a@bank.test\r\n\r\nx",
            "From : a@bank.test\r\nFrom: a@evil.test\r\n\r\nx",
            "From: a@evil.test\r\nFrom\r\n : a@bank.test\r\n\r\nx",
            "From: a@evil.test, a@bank.test\r\n\r\nx",
            "From: <a@evil.test>, <a@bank.test>\r\n\r\nx",
            "From: friends: a@bank.test;\r\n\r\nx",
            "From: undisclosed:;\r\n\r\nx",
            "From: not an address\r\n\r\nx",
            "From: <>\r\n\r\nx",
            "From: a@\r\n\r\nx",
            "From: a@localhost\r\n\r\nx",
            "From: a@bank.test\u{0}.evil.test\r\n\r\nx",
            "From: a@bank..test\r\n\r\nx",
            // An encoded-word is text, never an address.
            "From: =?utf-8?B?Y2VvQGJhbmsudGVzdA==?=\r\n\r\nx",
            // A source route hides the real address behind another.
            "From: <@evil.test:ceo@bank.test>\r\n\r\nx",
            "From: ceo@bank.test@evil.test\r\n\r\nx",
            "From: <ceo@bank.test>, \r\n <a@evil.test>\r\n\r\nx",
        ] {
            assert!(check(raw).is_err(), "accepted {raw:?}: {:?}", check(raw));
        }
    }
}
