//! RFC 3461 §4 xtext, used by the DSN `ENVID` and `ORCPT` parameters.

/// Decodes xtext. Returns `None` on a malformed `+HH` escape or a character
/// outside the allowed range.
pub fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if (b'!'..=b'~').contains(&b) && b != b'=' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes a string as xtext.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = "a+b=c d";
        assert_eq!(decode(&encode(s)).as_deref(), Some(s));
        assert_eq!(decode("rfc822;a+2Bb@x.test").as_deref(), Some("rfc822;a+b@x.test"));
    }

    #[test]
    fn rejects_bad_escape() {
        assert_eq!(decode("a+2"), None);
        assert_eq!(decode("a+zz"), None);
        assert_eq!(decode("a b"), None);
    }
}
