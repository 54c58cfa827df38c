//! Sender identity on submission: the `From:` header of an authenticated
//! user's message must be exactly one mailbox the user may send as.
//!
//! May import: `checks::author` (the field splitter), `mailgate-core`.

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};
use mailgate_core::reply::{Reply, StatusCode};

fn refuse(why: &str) -> Reply {
    Reply::new(550, StatusCode::new(5, 7, 1), why)
}

/// The single `From:` address of `data` (the header block; a whole
/// message works too, parsing stops at the empty line), or the reply
/// refusing it.
pub fn single_from(data: &[u8]) -> Result<String, Reply> {
    let Some(message) = MessageParser::default().parse_headers(data) else {
        return Err(refuse("Message refused: unparsable header"));
    };
    let froms: Vec<&HeaderValue> = message.headers().iter().filter(|h| h.name == HeaderName::From).map(|h| &h.value).collect();
    // Every spelling of the field name counts (`FROM :`, folded), as in
    // `checks::author`: a second author mail-parser does not recognise is
    // still one a reader's client may show.
    let spelled = super::author::header_fields(data).iter().filter(|(n, _)| super::author::is_from(n)).count();
    if spelled != froms.len() {
        return Err(refuse(&format!("Message refused: {spelled} From: headers; exactly one is required")));
    }
    let [from] = froms.as_slice() else {
        return Err(refuse(&format!("Message refused: {} From: headers; exactly one is required", froms.len())));
    };
    let addresses: Vec<String> = match from {
        HeaderValue::Address(Address::List(list)) => list.iter().map(|a| a.address.as_deref().unwrap_or("").to_string()).collect(),
        HeaderValue::Address(Address::Group(_)) => return Err(refuse("Message refused: a group in From: is not allowed")),
        _ => return Err(refuse("Message refused: unparsable From: header")),
    };
    match addresses.as_slice() {
        // Exactly one `@`: one hidden in a quoted local part
        // (`"ceo@bank.example"@ours.example`) would pass a `*@ours.example`
        // pattern while a reader sees the other address.
        // mail-parser reads a bare `"ceo@bank.example"@ours.example` as a
        // display name and `@ours.example`: an empty local part is refused.
        [one] if one.matches('@').count() == 1 && !one.starts_with('@') && !one.contains(char::is_whitespace) => Ok(one.clone()),
        [_] => Err(refuse("Message refused: unparsable From: address")),
        _ => Err(refuse("Message refused: From: must hold exactly one mailbox")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mailbox_only() {
        assert_eq!(single_from(b"From: Alice <alice@example.test>\r\n\r\nx").unwrap(), "alice@example.test");
        assert!(single_from(b"From: a@example.test\r\nFrom: ceo@example.test\r\n\r\nx").is_err());
        assert!(single_from(b"From: a@example.test, ceo@example.test\r\n\r\nx").is_err());
        assert!(single_from(b"Subject: none\r\n\r\nx").is_err());
        assert!(single_from(b"From: undisclosed:;\r\n\r\nx").is_err());
        assert!(single_from(b"From: not an address\r\n\r\nx").is_err());
        assert!(single_from(b"From: \"ceo@bank.example\"@example.test\r\n\r\nx").is_err());
        assert!(single_from(b"From: ceo@bank.example@example.test\r\n\r\nx").is_err());
        assert!(single_from(b"From: a@example.test\r\nFROM : ceo@example.test\r\n\r\nx").is_err());
        assert!(single_from(b"From: a@example.test\r\nFrom\r\n : ceo@example.test\r\n\r\nx").is_err());
    }
}
