//! The author: the one mailbox in the one `From:` field that DMARC judges
//! (RFC 7489 §6.6.1, RFC 9989 §4.4). Everything else is refused rather
//! than guessed at, because a guess is how spoofing slips past DMARC
//! ("Composition Kills", USENIX Security 2020): zero or several `From:`
//! fields (also spelled `FROM :` or folded), several mailboxes or a group,
//! an address that does not parse, or a parse that differs from the one
//! mail-auth's DMARC evaluation sees.

use mail_parser::parsers::MessageStream;
use mail_parser::{Address, HeaderValue};
use mailgate_core::Domain;

/// The author of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    /// The address as written (local-part case kept).
    pub address: String,
    /// The domain, lower case, A-labels.
    pub domain: String,
    pub display_name: Option<String>,
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
fn is_from(name: &[u8]) -> bool {
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
    if local.is_empty() || (local.contains('@') && !local.starts_with('"')) {
        return Err(format!("From: address {:?} does not parse", printable(address)));
    }
    let domain = domain.trim_end_matches('.');
    let Ok(parsed_domain) = Domain::parse(domain, true) else {
        return Err(format!("From: domain {:?} is not a domain name", printable(domain)));
    };
    let Ok(domain) = idna::domain_to_ascii(parsed_domain.as_str()) else {
        return Err(format!("From: domain {:?} is not a valid IDN", printable(domain)));
    };
    if !domain.contains('.') {
        return Err(format!("From: domain {:?} is not a fully qualified name", printable(&domain)));
    }
    // mail-auth's DMARC must judge the same mailbox, or a parser
    // difference becomes a bypass.
    let same = match seen_by_dmarc {
        [one] => one
            .rsplit_once('@')
            .is_some_and(|(_, d)| idna::domain_to_ascii(d.trim_end_matches('.')).is_ok_and(|d| d.eq_ignore_ascii_case(&domain))),
        _ => false,
    };
    if !same {
        return Err("From: is ambiguous (parsers disagree on its address)".into());
    }
    Ok(Author { address: address.to_string(), domain, display_name: mailbox.name.as_deref().map(str::to_string) })
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
