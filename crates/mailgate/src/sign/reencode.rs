//! Re-encodes a message with lines over 998 octets (RFC 5322 §2.1.1) so it
//! can be signed and relayed intact: each MIME leaf part holding such a line
//! becomes quoted-printable (`text/*`) or base64 (anything else), and
//! overlong header lines are folded. Everything else is copied byte for
//! byte, so untouched parts, boundaries and preambles stay identical.
//!
//! `mail-parser` finds the parts and their offsets; the output is spliced
//! from the original bytes. May import: `mailgate-core` (nothing today).

use base64::Engine as _;
use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::{Encoding, Message, MessageParser, MimeHeaders, PartType};

/// RFC 5322 §2.1.1: at most 998 octets on a line, CRLF excluded.
pub const MAX_LINE: usize = 998;
/// RFC 2045 §6.7 and §6.8: encoded lines of at most 76 characters.
const ENCODED_LINE: usize = 76;
/// Where header lines are folded when they must be (RFC 5322 §2.1.1's
/// "SHOULD be no more than 78 characters").
const FOLD_AT: usize = 78;

/// Why a message with long lines cannot be made valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReencodeError {
    #[error("header field {field} has a line over 998 octets without whitespace to fold at")]
    UnfoldableHeader { field: String },
    #[error("a {encoding} {content_type} part has lines over 998 octets and cannot be decoded")]
    Undecodable { content_type: String, encoding: &'static str },
    #[error("a {content_type} part has lines over 998 octets but no valid MIME structure")]
    BrokenMultipart { content_type: String },
    #[error("no header block: expected an RFC 5322 message")]
    NotAMessage,
    #[error("a line over 998 octets outside any MIME part body (preamble, epilogue or boundary)")]
    OutsideParts,
}

/// A re-encoded message and what was changed, for the log.
#[derive(Debug)]
pub struct Reencoded {
    pub message: Vec<u8>,
    /// One entry per re-encoded part, e.g. `text/html quoted-printable`.
    pub parts: Vec<String>,
    /// Header fields folded.
    pub folded: usize,
}

/// The message with every line at most 998 octets, or `None` when it
/// already is.
pub fn reencode_long_lines(message: &[u8]) -> Result<Option<Vec<u8>>, ReencodeError> {
    Ok(reencode(message)?.map(|r| r.message))
}

/// Like [`reencode_long_lines`], also saying what was re-encoded.
pub fn reencode(message: &[u8]) -> Result<Option<Reencoded>, ReencodeError> {
    if !has_long_line(message) {
        return Ok(None);
    }
    let parsed = MessageParser::default().parse(message).ok_or(ReencodeError::NotAMessage)?;
    let mut plan = Plan::default();
    plan.walk(&parsed, message)?;
    let mut edits = plan.body_edits;
    let any_part = !plan.parts.is_empty();
    for block in &plan.blocks {
        let raw = message.get(block.start..block.end).ok_or(ReencodeError::NotAMessage)?;
        let mime_version = block.top && any_part;
        if block.cte.is_none() && !mime_version && !has_long_line(raw) {
            continue;
        }
        let (bytes, folded) = rewrite_headers(raw, block.cte, mime_version)?;
        plan.folded += folded;
        if bytes != raw {
            edits.push(Edit { start: block.start, end: block.end, bytes });
        }
    }
    edits.sort_by_key(|e| e.start);
    let mut out = Vec::with_capacity(message.len() + message.len() / 3);
    let mut pos = 0;
    for e in edits {
        // Header blocks and bodies never overlap; a parser surprise must not
        // duplicate or drop bytes, so refuse rather than guess.
        let keep = message.get(pos..e.start).ok_or(ReencodeError::NotAMessage)?;
        out.extend_from_slice(keep);
        out.extend_from_slice(&e.bytes);
        pos = e.end;
    }
    out.extend_from_slice(message.get(pos..).ok_or(ReencodeError::NotAMessage)?);
    if has_long_line(&out) {
        return Err(ReencodeError::OutsideParts);
    }
    Ok(Some(Reencoded { message: out, parts: plan.parts, folded: plan.folded }))
}

/// Whether any line (up to LF, CR and LF excluded) is over 998 octets.
pub fn has_long_line(bytes: &[u8]) -> bool {
    bytes.split(|&b| b == b'\n').any(|l| l.strip_suffix(b"\r").unwrap_or(l).len() > MAX_LINE)
}

struct Edit {
    start: usize,
    end: usize,
    bytes: Vec<u8>,
}

/// A header block (fields and the empty line after them).
struct Block {
    start: usize,
    end: usize,
    /// The new `Content-Transfer-Encoding`, when the part is re-encoded.
    cte: Option<&'static str>,
    /// The top-level header block, where `MIME-Version` belongs.
    top: bool,
}

#[derive(Default)]
struct Plan {
    blocks: Vec<Block>,
    body_edits: Vec<Edit>,
    parts: Vec<String>,
    folded: usize,
}

impl Plan {
    fn walk(&mut self, msg: &Message<'_>, raw: &[u8]) -> Result<(), ReencodeError> {
        let top = self.blocks.is_empty();
        for (i, part) in msg.parts.iter().enumerate() {
            let (head, body, end) = (part.offset_header as usize, part.offset_body as usize, part.offset_end as usize);
            let mut block = Block { start: head, end: body, cte: None, top: top && i == 0 };
            let leaf = match &part.body {
                PartType::Multipart(_) => false,
                // An unencoded message/rfc822 shares our offsets: its parts
                // are handled where they are. An encoded one (not allowed by
                // RFC 2046 §5.2.1) is just a leaf.
                PartType::Message(inner) if part.encoding == Encoding::None => {
                    self.blocks.push(block);
                    self.walk(inner, raw)?;
                    continue;
                }
                _ => true,
            };
            let content = raw.get(body..end.max(body)).unwrap_or_default();
            if leaf && has_long_line(content) {
                let ct = part.content_type();
                let ctype = ct.map(|c| c.c_type.to_ascii_lowercase()).unwrap_or_else(|| "text".into());
                let name = match ct.and_then(|c| c.c_subtype.as_deref()) {
                    Some(sub) => format!("{ctype}/{}", sub.to_ascii_lowercase()),
                    None if ct.is_none() => "text/plain".into(),
                    None => ctype.clone(),
                };
                if ctype == "multipart" {
                    return Err(ReencodeError::BrokenMultipart { content_type: name });
                }
                let decoded = match part.encoding {
                    Encoding::None => Some(content.to_vec()),
                    Encoding::QuotedPrintable => quoted_printable_decode(content),
                    Encoding::Base64 => base64_decode(content),
                };
                let Some(decoded) = decoded else {
                    let encoding = if part.encoding == Encoding::Base64 { "base64" } else { "quoted-printable" };
                    return Err(ReencodeError::Undecodable { content_type: name, encoding });
                };
                let at_end = end >= raw.len();
                let (bytes, cte) = if ctype == "text" {
                    let mut q = quoted_printable(&decoded);
                    if at_end && !q.ends_with(b"\r\n") {
                        // A soft break: ends the message's last line
                        // without adding a line break to the content.
                        q.extend_from_slice(b"=\r\n");
                    }
                    (q, "quoted-printable")
                } else {
                    let mut b = base64_lines(&decoded);
                    if at_end {
                        b.extend_from_slice(b"\r\n");
                    }
                    (b, "base64")
                };
                self.parts.push(format!("{name} {cte}"));
                self.body_edits.push(Edit { start: body, end, bytes });
                block.cte = Some(cte);
            }
            self.blocks.push(block);
        }
        Ok(())
    }
}

/// Rewrites one header block: overlong lines folded, the
/// `Content-Transfer-Encoding` replaced (or added) when `cte` is given, and
/// `MIME-Version: 1.0` added when asked and absent. Returns the block and
/// how many fields were folded.
fn rewrite_headers(raw: &[u8], cte: Option<&str>, mime_version: bool) -> Result<(Vec<u8>, usize), ReencodeError> {
    // Lines, each with its line ending; the empty line ends the block.
    let mut lines: Vec<&[u8]> = raw.split_inclusive(|&b| b == b'\n').collect();
    let tail: Vec<&[u8]> = match lines.last() {
        Some(l) if *l == b"\r\n" || *l == b"\n" => lines.pop().into_iter().collect(),
        _ => Vec::new(),
    };
    // Group into fields: a line starting with WSP continues the field.
    let mut fields: Vec<Vec<&[u8]>> = Vec::new();
    for line in lines {
        match fields.last_mut() {
            Some(f) if line.first().is_some_and(|&b| b == b' ' || b == b'\t') => f.push(line),
            _ => fields.push(vec![line]),
        }
    }
    let name_of = |f: &[&[u8]]| -> String {
        let first = f.first().copied().unwrap_or_default();
        let name = first.split(|&b| b == b':').next().unwrap_or_default();
        String::from_utf8_lossy(name).trim().to_ascii_lowercase()
    };
    let mut out = Vec::with_capacity(raw.len() + 64);
    let mut folded = 0;
    let mut cte_written = false;
    let mut has_mime_version = false;
    for f in &fields {
        let name = name_of(f);
        has_mime_version |= name == "mime-version";
        if let Some(cte) = cte.filter(|_| name == "content-transfer-encoding") {
            // The first one is replaced in place; repeats are dropped.
            if !cte_written {
                out.extend_from_slice(format!("Content-Transfer-Encoding: {cte}\r\n").as_bytes());
                cte_written = true;
            }
            continue;
        }
        let mut any = false;
        for line in f {
            let (text, ending) = split_ending(line);
            if text.len() > MAX_LINE {
                fold_line(text, &mut out).map_err(|()| ReencodeError::UnfoldableHeader { field: name.clone() })?;
                any = true;
            } else {
                out.extend_from_slice(text);
            }
            out.extend_from_slice(ending);
        }
        folded += usize::from(any);
    }
    if let Some(cte) = cte.filter(|_| !cte_written) {
        out.extend_from_slice(format!("Content-Transfer-Encoding: {cte}\r\n").as_bytes());
    }
    if mime_version && !has_mime_version {
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    for t in tail {
        out.extend_from_slice(t);
    }
    Ok((out, folded))
}

/// A line's text and its ending (CRLF, LF or nothing).
fn split_ending(line: &[u8]) -> (&[u8], &[u8]) {
    let n = if line.ends_with(b"\r\n") { 2 } else { usize::from(line.ends_with(b"\n")) };
    line.split_at(line.len() - n)
}

/// Folds one header line (RFC 5322 §2.2.3: CRLF inserted before a WSP) so
/// that each piece is at most 998 octets, preferring pieces of about 78.
/// Unfolding gives back the original line. Fails when some stretch of more
/// than 998 octets has no whitespace to fold at.
fn fold_line(line: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
    let is_wsp = |b: u8| b == b' ' || b == b'\t';
    // Where a fold may go: a WSP right after text, with text somewhere
    // after it (no piece may be whitespace only).
    let last_text = line.iter().rposition(|&b| !is_wsp(b)).unwrap_or(0);
    let points: Vec<usize> = (1..last_text).filter(|&i| is_wsp(line[i]) && !is_wsp(line[i - 1])).collect();
    let mut start = 0;
    while line.len() - start > FOLD_AT {
        let after = points.iter().copied().filter(|&p| p > start);
        let near = after.clone().take_while(|&p| p - start <= FOLD_AT).last();
        let at = match near.or_else(|| after.clone().next()) {
            Some(p) if p - start <= MAX_LINE => p,
            _ if line.len() - start <= MAX_LINE => break,
            _ => return Err(()),
        };
        out.extend_from_slice(&line[start..at]);
        out.extend_from_slice(b"\r\n");
        start = at;
    }
    out.extend_from_slice(&line[start..]);
    Ok(())
}

/// Quoted-printable (RFC 2045 §6.7) that decodes to exactly `data`: only
/// CRLF pairs become hard line breaks; lone CR and LF, `=`, controls,
/// non-ASCII and whitespace at a line's end are encoded; lines are at most
/// 76 characters, with soft breaks (`=` CRLF).
pub fn quoted_printable(data: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(data.len() + data.len() / 8);
    let mut col = 0;
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if b == b'\r' && data.get(i + 1) == Some(&b'\n') {
            out.extend_from_slice(b"\r\n");
            col = 0;
            i += 2;
            continue;
        }
        let line_end = i + 1 == data.len() || (data[i + 1] == b'\r' && data.get(i + 2) == Some(&b'\n'));
        let literal = matches!(b, 33..=60 | 62..=126) || ((b == b' ' || b == b'\t') && !line_end);
        let width = if literal { 1 } else { 3 };
        // Room for the token, and for the `=` of a soft break unless this
        // token ends the line.
        let room = if line_end { ENCODED_LINE } else { ENCODED_LINE - 1 };
        if col + width > room {
            out.extend_from_slice(b"=\r\n");
            col = 0;
        }
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
        col += width;
        i += 1;
    }
    out
}

/// Base64 (RFC 2045 §6.8) in lines of 76 characters joined by CRLF, with
/// no line break after the last.
pub fn base64_lines(data: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / ENCODED_LINE * 2 + 2);
    for (n, chunk) in encoded.as_bytes().chunks(ENCODED_LINE).enumerate() {
        if n > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
#[path = "reencode_tests.rs"]
mod tests;
