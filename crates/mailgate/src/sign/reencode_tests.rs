//! Tests of the long-line re-encoder: every output line fits, and decoding
//! each re-encoded part (with mail-parser's decoders, not ours) gives back
//! the original bytes.

use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::*;

fn long(c: &str, n: usize) -> String {
    c.repeat(n)
}

/// Every line of `out` is at most 998 octets and ends in CRLF.
fn assert_lines_fit(out: &[u8]) {
    for line in out.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\r\n").expect("every line ends in CRLF");
        assert!(text.len() <= MAX_LINE, "line of {} octets", text.len());
    }
}

/// The decoded body of the first leaf part whose type is `ctype` (after
/// re-encoding), its transfer encoding, and its raw encoded body.
fn part(out: &[u8], ctype: &str) -> (Vec<u8>, String, Vec<u8>) {
    let msg = MessageParser::default().parse(out).expect("output parses");
    fn find(m: &mail_parser::Message<'_>, out: &[u8], ctype: &str) -> Option<(Vec<u8>, String, Vec<u8>)> {
        for p in &m.parts {
            if let PartType::Message(inner) = &p.body {
                if let Some(found) = find(inner, out, ctype) {
                    return Some(found);
                }
                continue;
            }
            if p.is_multipart() {
                continue;
            }
            let t =
                p.content_type().map(|c| format!("{}/{}", c.c_type, c.c_subtype.as_deref().unwrap_or(""))).unwrap_or("text/plain".into());
            if t.eq_ignore_ascii_case(ctype) {
                let raw = out[p.offset_body as usize..p.offset_end as usize].to_vec();
                let cte = p.content_transfer_encoding().unwrap_or("").to_ascii_lowercase();
                let decoded = match cte.as_str() {
                    "quoted-printable" => quoted_printable_decode(&raw).expect("valid QP"),
                    "base64" => base64_decode(&raw).expect("valid base64"),
                    _ => raw.clone(),
                };
                return Some((decoded, cte, raw));
            }
        }
        None
    }
    find(&msg, out, ctype).unwrap_or_else(|| panic!("no {ctype} part"))
}

fn assert_encoded_lines(raw: &[u8]) {
    for line in raw.split(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(text.len() <= 76, "encoded line of {} characters", text.len());
    }
}

#[test]
fn nothing_to_do_without_long_lines() {
    let msg = format!("From: a@example.com\r\nSubject: x\r\n\r\n{}\r\n", long("y", 998));
    assert_eq!(reencode_long_lines(msg.as_bytes()), Ok(None));
}

#[test]
fn plain_message_becomes_quoted_printable() {
    let body = format!("{}\r\nsecond line with = sign and trailing space \r\n{}\r\n", long("abc ", 1500), long("z", 2000));
    let msg = format!("From: a@example.com\r\nSubject: plain\r\n\r\n{body}");
    let out = reencode_long_lines(msg.as_bytes()).unwrap().expect("re-encoded");
    assert_lines_fit(&out);
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        text.starts_with(
            "From: a@example.com\r\nSubject: plain\r\nContent-Transfer-Encoding: quoted-printable\r\nMIME-Version: 1.0\r\n\r\n"
        ),
        "{}",
        &text[..200]
    );
    let (decoded, cte, raw) = part(&out, "text/plain");
    assert_eq!(cte, "quoted-printable");
    assert_encoded_lines(&raw);
    assert_eq!(decoded, body.as_bytes());
    assert!(text.contains("trailing space=20\r\n"), "whitespace before a hard break is encoded");
}

const ALT: &str = "From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nshort text\r\n--b1\r\nContent-Type: text/html; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n";

#[test]
fn multipart_alternative_html_part() {
    let html = format!("<html><body>{}</body></html>\r\n<p>{}</p>", long("<td class=\"x\">cell</td>", 900), long("w ", 600));
    let msg = format!("{ALT}{html}\r\n--b1--\r\nepilogue\r\n");
    let out = reencode_long_lines(msg.as_bytes()).unwrap().expect("re-encoded");
    assert_lines_fit(&out);
    let text = String::from_utf8(out.clone()).unwrap();
    // Everything before the HTML part's CTE is unchanged, and so is the end.
    let head = msg.find("Content-Transfer-Encoding: 7bit").unwrap();
    assert_eq!(&text[..head], &msg[..head]);
    assert!(text.ends_with("\r\n--b1--\r\nepilogue\r\n"));
    assert_eq!(text.matches("Content-Transfer-Encoding").count(), 1);
    assert_eq!(text.matches("MIME-Version").count(), 1);
    let (decoded, cte, raw) = part(&out, "text/html");
    assert_eq!(cte, "quoted-printable");
    assert_encoded_lines(&raw);
    assert_eq!(decoded, html.as_bytes());
    assert_eq!(part(&out, "text/plain").0, b"short text");
}

#[test]
fn nested_multipart_and_message_rfc822() {
    let html = long("<b>bold</b> ", 400);
    let inner_text = long("q", 1200);
    let msg = format!(
        "From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\n\
         Content-Type: multipart/alternative; boundary=inner\r\n\r\n--inner\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
         --inner\r\nContent-Type: text/html\r\n\r\n{html}\r\n--inner--\r\n\r\n--outer\r\nContent-Type: message/rfc822\r\n\r\n\
         From: b@example.org\r\nSubject: forwarded\r\n\r\n{inner_text}\r\n\r\n--outer--\r\n"
    );
    let r = reencode(msg.as_bytes()).unwrap().expect("re-encoded");
    assert_eq!(r.parts, ["text/html quoted-printable", "text/plain quoted-printable"]);
    assert_lines_fit(&r.message);
    assert_eq!(part(&r.message, "text/html").0, html.as_bytes());
    // The forwarded message's body, including the CRLF that ends its text
    // (the next CRLF belongs to the boundary).
    assert_eq!(part(&r.message, "text/plain").0, b"hello");
    let text = String::from_utf8(r.message.clone()).unwrap();
    let fwd = text.find("Subject: forwarded\r\n").unwrap();
    assert!(text[fwd..].starts_with("Subject: forwarded\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"));
    let body_start = fwd + "Subject: forwarded\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n".len();
    let body_end = text.rfind("\r\n--outer--").unwrap();
    assert_eq!(quoted_printable_decode(&text.as_bytes()[body_start..body_end]).unwrap(), format!("{inner_text}\r\n").as_bytes());
    // The outer structure is byte-identical up to the HTML part's body.
    let first_change = msg.find("Content-Type: text/html\r\n").unwrap() + "Content-Type: text/html\r\n".len();
    assert_eq!(&text[..first_change], &msg[..first_change]);
}

#[test]
fn utf8_html_keeps_charset_and_encodes_bytes() {
    let html = format!("<p>{}</p>", long("Grüße, café – ", 200));
    let msg = format!(
        "From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n--b\r\nContent-Type: text/html; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n--b--\r\n"
    );
    let out = reencode_long_lines(msg.as_bytes()).unwrap().expect("re-encoded");
    assert_lines_fit(&out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("Content-Type: text/html; charset=\"utf-8\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"));
    assert!(text.contains("Gr=C3=BC=C3=9Fe, caf=C3=A9 =E2=80=93"), "UTF-8 bytes encoded one by one");
    // The short 8bit part is untouched.
    assert!(text.contains("Content-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n--b\r\n"));
    let (decoded, _, raw) = part(&out, "text/html");
    assert_encoded_lines(&raw);
    assert_eq!(decoded, html.as_bytes());
}

#[test]
fn binary_attachment_becomes_base64() {
    // Bytes 1..=255 without CR and LF: one very long "line".
    let data: Vec<u8> = (0..40u32).flat_map(|_| (1..=255u8).filter(|b| *b != b'\r' && *b != b'\n')).collect();
    let mut msg = b"From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--m\r\nContent-Type: application/octet-stream; name=blob.bin\r\nContent-Disposition: attachment\r\n\r\n".to_vec();
    msg.extend_from_slice(&data);
    msg.extend_from_slice(b"\r\n--m--\r\n");
    let r = reencode(&msg).unwrap().expect("re-encoded");
    assert_eq!(r.parts, ["application/octet-stream base64"]);
    assert_lines_fit(&r.message);
    let (decoded, cte, raw) = part(&r.message, "application/octet-stream");
    assert_eq!(cte, "base64");
    assert_encoded_lines(&raw);
    assert_eq!(decoded, data);
    assert!(String::from_utf8_lossy(&r.message).contains("Content-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n\r\n"));
}

#[test]
fn overlong_quoted_printable_is_decoded_and_reencoded() {
    let original = format!("{}\r\n{}", long("a=b ", 500), long("é", 10));
    // A sloppy encoder: QP escapes but no soft breaks.
    let sloppy = String::from_utf8(quoted_printable(original.as_bytes())).unwrap().replace("=\r\n", "");
    assert!(has_long_line(sloppy.as_bytes()));
    let msg = format!(
        "From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\n{sloppy}\r\n"
    );
    let out = reencode_long_lines(msg.as_bytes()).unwrap().expect("re-encoded");
    assert_lines_fit(&out);
    let (decoded, cte, raw) = part(&out, "text/plain");
    assert_eq!(cte, "quoted-printable");
    assert_encoded_lines(&raw);
    assert_eq!(decoded, format!("{original}\r\n").as_bytes());
    assert_eq!(String::from_utf8_lossy(&out).matches("Content-Transfer-Encoding").count(), 1);
}

#[test]
fn overlong_base64_is_rewrapped() {
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
    let one_line = base64::engine::general_purpose::STANDARD.encode(&data);
    let msg = format!(
        "From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n{one_line}\r\n"
    );
    let out = reencode_long_lines(msg.as_bytes()).unwrap().expect("re-encoded");
    assert_lines_fit(&out);
    let (decoded, _, raw) = part(&out, "image/png");
    assert_encoded_lines(&raw);
    assert_eq!(decoded, data);
}

#[test]
fn long_header_lines_are_folded() {
    let subject = long("word ", 400);
    let subject = subject.trim_end();
    let msg = format!("From: a@example.com\r\nSubject: {subject}\r\nTo: b@example.org\r\n\r\nbody\r\n");
    let r = reencode(msg.as_bytes()).unwrap().expect("re-encoded");
    assert_eq!(r.folded, 1);
    assert!(r.parts.is_empty());
    assert_lines_fit(&r.message);
    let text = String::from_utf8(r.message).unwrap();
    assert!(!text.contains("MIME-Version"), "no part was re-encoded");
    // Unfolding (RFC 5322 §2.2.3) gives back the original.
    assert_eq!(text.replace("\r\n ", " "), msg);
    assert!(text.lines().all(|l| l.len() <= 80), "folded near 78 characters");

    let token = long("x", 1200);
    let msg = format!("From: a@example.com\r\nX-Token: {token}\r\n\r\nbody\r\n");
    assert_eq!(reencode_long_lines(msg.as_bytes()), Err(ReencodeError::UnfoldableHeader { field: "x-token".into() }));
}

#[test]
fn long_line_in_preamble_is_an_error() {
    let msg = format!(
        "From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n{}\r\n--p\r\nContent-Type: text/plain\r\n\r\nhi\r\n--p--\r\n",
        long("p", 1500)
    );
    assert_eq!(reencode_long_lines(msg.as_bytes()), Err(ReencodeError::OutsideParts));
}

#[test]
fn quoted_printable_round_trips_any_bytes() {
    let mut data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    data.extend_from_slice(b"tab\t\r\nspace \r\n.dot\r\n\r\n=\r\nend \t");
    let q = quoted_printable(&data);
    assert_encoded_lines(&q);
    assert!(q.iter().all(|&b| b == b'\r' || b == b'\n' || b == b'\t' || (32..127).contains(&b)), "7-bit output");
    for line in q.split(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(!text.ends_with(b" ") && !text.ends_with(b"\t"), "no trailing whitespace");
    }
    assert_eq!(quoted_printable_decode(&q).unwrap(), data);
}
