//! Sender identity on submission: the `From:` header of an authenticated
//! user's message must be exactly one mailbox the user may send as.

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
    let [from] = froms.as_slice() else {
        return Err(refuse(&format!("Message refused: {} From: headers; exactly one is required", froms.len())));
    };
    let addresses: Vec<String> = match from {
        HeaderValue::Address(Address::List(list)) => list.iter().map(|a| a.address.as_deref().unwrap_or("").to_string()).collect(),
        HeaderValue::Address(Address::Group(_)) => return Err(refuse("Message refused: a group in From: is not allowed")),
        _ => return Err(refuse("Message refused: unparsable From: header")),
    };
    match addresses.as_slice() {
        [one] if one.contains('@') && !one.contains(char::is_whitespace) => Ok(one.clone()),
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
    }
}
