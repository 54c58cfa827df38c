//! `Authentication-Results` (RFC 8601): the header mailgate adds, and the
//! removal of incoming ones that claim to be ours (§5), so that the next
//! hop can trust every result under our authserv-id.

use super::author::header_fields;

/// One `method=result` entry with its comment and properties.
pub struct ResInfo {
    pub method: &'static str,
    pub result: String,
    pub comment: Option<String>,
    /// (ptype.property, value)
    pub props: Vec<(&'static str, String)>,
}

impl ResInfo {
    pub fn new(method: &'static str, result: &str) -> Self {
        ResInfo { method, result: result.to_string(), comment: None, props: Vec::new() }
    }

    pub fn comment(mut self, c: impl Into<String>) -> Self {
        self.comment = Some(c.into());
        self
    }

    pub fn prop(mut self, name: &'static str, value: &str) -> Self {
        if !value.is_empty() {
            self.props.push((name, value.to_string()));
        }
        self
    }
}

/// The header field value: `authserv-id;` then one resinfo per line.
pub fn value(authserv_id: &str, results: &[ResInfo]) -> String {
    let mut out = authserv_id.to_string();
    if results.is_empty() {
        out.push_str("; none");
        return out;
    }
    for r in results {
        out.push_str(";\r\n\t");
        out.push_str(r.method);
        out.push('=');
        out.push_str(&r.result);
        if let Some(c) = &r.comment {
            out.push_str(" (");
            out.push_str(&comment_text(c));
            out.push(')');
        }
        for (name, v) in &r.props {
            out.push(' ');
            out.push_str(name);
            out.push('=');
            out.push_str(&pvalue(v));
        }
    }
    out
}

/// The whole header field, ending in CRLF.
pub fn header(authserv_id: &str, results: &[ResInfo]) -> String {
    format!("Authentication-Results: {}\r\n", value(authserv_id, results))
}

/// RFC 8601 `pvalue`: a token or addr-spec as is, anything else quoted.
fn pvalue(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.@".contains(c))
        && v.matches('@').count() <= 1
        && !v.starts_with('@');
    if plain {
        return v.to_string();
    }
    let mut q = String::with_capacity(v.len() + 2);
    q.push('"');
    for c in v.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// Comment text (RFC 5322 `ctext`): no control characters, parentheses
/// and backslashes escaped.
pub fn comment_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|c| !c.is_control()) {
        if matches!(c, '(' | ')' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The authserv-id of an `Authentication-Results` value: the first token
/// after any comments and white space.
fn authserv_id(value: &[u8]) -> String {
    let mut depth = 0u32;
    let mut escaped = false;
    let mut id = Vec::new();
    for &b in value {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if depth > 0 => escaped = true,
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            b' ' | b'\t' | b'\r' | b'\n' if id.is_empty() => {}
            b' ' | b'\t' | b'\r' | b'\n' | b';' => break,
            _ => id.push(b),
        }
    }
    String::from_utf8_lossy(&id).trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a header field must not pass through inbound: an
/// `Authentication-Results` claiming our authserv-id, or one of our own
/// `X-Mailgate-*` verdict fields, both forgeable by a sender.
fn is_forged(name: &[u8], value: &[u8], ours: &str) -> bool {
    let name: Vec<u8> = name.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    if name.eq_ignore_ascii_case(b"authentication-results") {
        return authserv_id(value) == ours.trim_end_matches('.').to_ascii_lowercase();
    }
    name.len() > 11 && name[..11].eq_ignore_ascii_case(b"x-mailgate-")
}

/// The header block `header` (the fields and the empty line) without the
/// fields that claim to be ours, and how many went; `None` when there are
/// none (the common case, which costs no copy). Reads nothing past the
/// first empty line; anything after it is copied unchanged, so a whole
/// message works too.
pub fn strip_forged(header: &[u8], authserv_id: &str) -> Option<(Vec<u8>, usize)> {
    let raw = header;
    let fields = header_fields(raw);
    let base = raw.as_ptr() as usize;
    let mut cut: Vec<(usize, usize)> = Vec::new();
    for (name, value) in fields {
        if is_forged(name, value, authserv_id) {
            let start = name.as_ptr() as usize - base;
            let end = value.as_ptr() as usize - base + value.len();
            cut.push((start, end));
        }
    }
    if cut.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut pos = 0;
    for (start, end) in &cut {
        out.extend_from_slice(&raw[pos..*start]);
        pos = *end;
    }
    out.extend_from_slice(&raw[pos..]);
    Some((out, cut.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_results() {
        let v = value(
            "mx.example.test",
            &[
                ResInfo::new("spf", "pass").prop("smtp.mailfrom", "a@b.test"),
                ResInfo::new("dmarc", "fail").comment("p=reject (x)").prop("header.from", "b.test"),
                ResInfo::new("x", "none").prop("header.from", "we ird\"@b.test"),
            ],
        );
        assert_eq!(
            v,
            "mx.example.test;\r\n\tspf=pass smtp.mailfrom=a@b.test;\r\n\tdmarc=fail (p=reject \\(x\\)) header.from=b.test;\r\n\tx=none header.from=\"we ird\\\"@b.test\""
        );
    }

    #[test]
    fn strips_only_ours() {
        let raw = b"Authentication-Results: (c) MX.example.test;\r\n spf=pass\r\nAuthentication-Results: other.test; spf=fail\r\nX-Mailgate-Action: accept\r\nauthentication-results : mx.example.test. 1; dkim=pass\r\nSubject: x\r\n\r\nAuthentication-Results: mx.example.test; body\r\n";
        let (out, n) = strip_forged(raw, "mx.example.test").unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            out,
            b"Authentication-Results: other.test; spf=fail\r\nSubject: x\r\n\r\nAuthentication-Results: mx.example.test; body\r\n"
        );
        assert!(strip_forged(b"Subject: x\r\n\r\nbody", "mx.example.test").is_none());
        // A header block alone, as the gateway holds it.
        let block = b"X-Mailgate-Action: accept\r\nSubject: x\r\n\r\n";
        assert_eq!(strip_forged(block, "mx.example.test").unwrap(), (b"Subject: x\r\n\r\n".to_vec(), 1));
    }
}
