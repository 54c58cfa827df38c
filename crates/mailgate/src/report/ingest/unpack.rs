//! From the bytes someone sent to the report documents inside them: sniffs
//! the format by its first bytes (never by a name the sender chose), opens
//! gzip, zip and RFC 5322 messages, and hands back the XML and JSON
//! documents found. Every expansion is capped while it is read: a reader
//! stops at the cap, nothing is decompressed whole and measured after.
//!
//! May import: `mailgate-core`; crates `flate2`, `zip`, `mail-parser`.

use std::io::{Cursor, Read};

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// Bounds on what one input may make us read and hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest input (file or message) read at all.
    pub max_input: usize,
    /// All expanded bytes of one input together.
    pub max_expanded: usize,
    /// An archive member or gzip stream expands to at most this many times
    /// its compressed size...
    pub max_ratio: usize,
    /// ...but may always reach this much, so that a small, very regular
    /// report (which compresses far better than 100:1) still opens.
    pub ratio_floor: usize,
    /// Members of one zip archive.
    pub max_members: usize,
    /// Containers inside containers (a zip in a message is 2).
    pub max_depth: usize,
    /// Report documents in one input.
    pub max_documents: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input: 64 << 20,
            max_expanded: 64 << 20,
            max_ratio: 100,
            ratio_floor: 1 << 20,
            max_members: 32,
            max_depth: 3,
            max_documents: 64,
        }
    }
}

/// What the first bytes say an input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Zip,
    Xml,
    Json,
    Message,
}

impl Format {
    /// The extension a kept copy gets: ours, never the sender's.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Gzip => "gz",
            Format::Zip => "zip",
            Format::Xml => "xml",
            Format::Json => "json",
            Format::Message => "eml",
        }
    }
}

/// Sniffs `bytes`; `None` when it is none of the formats reports come in.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Some(Format::Gzip);
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Some(Format::Zip);
    }
    let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'<') => return Some(Format::Xml),
        Some(b'{') => return Some(Format::Json),
        _ => {}
    }
    // A message starts with a header field: a name of printable ASCII but
    // ':', then ':' (RFC 5322 §2.2); mbox's "From " line is tolerated.
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let name_len = first.iter().take_while(|&&b| b.is_ascii_graphic() && b != b':').count();
    if (name_len > 0 && first.get(name_len) == Some(&b':')) || first.starts_with(b"From ") {
        return Some(Format::Message);
    }
    None
}

/// A report document found in the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Document {
    /// DMARC aggregate report XML.
    Xml(Vec<u8>),
    /// TLS-RPT JSON.
    Json(Vec<u8>),
}

/// Why an input was refused; the text goes into the `.reason` file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Format(String),
    #[error("decompression bomb: {0}")]
    Bomb(String),
    #[error("unsafe archive: {0}")]
    Unsafe(String),
    #[error("too large: {0}")]
    TooLarge(String),
}

/// Walks an input; `spent` counts expanded bytes across all of it.
pub struct Unpacker {
    limits: Limits,
    spent: usize,
    pub documents: Vec<Document>,
    /// Parts of a message that looked like reports but could not be
    /// opened: kept to explain a message in which nothing was found.
    pub skipped: Vec<String>,
}

impl Unpacker {
    pub fn new(limits: Limits) -> Self {
        Unpacker { limits, spent: 0, documents: Vec::new(), skipped: Vec::new() }
    }

    /// Opens `bytes` (of any format) at nesting `depth`.
    pub fn open(&mut self, bytes: &[u8], depth: usize) -> Result<(), Refused> {
        if depth > self.limits.max_depth {
            return Err(Refused::Unsafe(format!("containers nested deeper than {} levels", self.limits.max_depth)));
        }
        match sniff(bytes) {
            Some(Format::Gzip) => {
                let data = self.gunzip(bytes)?;
                self.open(&data, depth + 1)
            }
            Some(Format::Zip) => self.unzip(bytes, depth),
            Some(Format::Xml) => self.push(Document::Xml(bytes.to_vec())),
            Some(Format::Json) => self.push(Document::Json(bytes.to_vec())),
            Some(Format::Message) => self.message(bytes, depth),
            None => Err(Refused::Format(
                "expected DMARC XML, TLS-RPT JSON, gzip, zip or an RFC 5322 message; the first bytes are none of these".into(),
            )),
        }
    }

    fn push(&mut self, d: Document) -> Result<(), Refused> {
        if self.documents.len() >= self.limits.max_documents {
            return Err(Refused::TooLarge(format!("more than {} report documents in one input", self.limits.max_documents)));
        }
        self.documents.push(d);
        Ok(())
    }

    /// How much one stream of `compressed` bytes may expand to: the ratio
    /// (with its floor) and what is left of the input's whole budget.
    fn cap(&self, compressed: usize) -> usize {
        let by_ratio = compressed.saturating_mul(self.limits.max_ratio).max(self.limits.ratio_floor);
        by_ratio.min(self.limits.max_expanded.saturating_sub(self.spent))
    }

    /// Reads at most `cap` bytes from `r`; one more means a bomb.
    fn read_capped(&mut self, r: impl Read, cap: usize, what: &str) -> Result<Vec<u8>, Refused> {
        // Reserved, not touched: only what is read becomes resident, and
        // the buffer never doubles (and copies) on its way to the cap.
        let mut out = Vec::with_capacity(cap.saturating_add(1));
        r.take(cap as u64 + 1).read_to_end(&mut out).map_err(|e| Refused::Format(format!("{what} is corrupt: {e}")))?;
        if out.len() > cap {
            return Err(Refused::Bomb(format!(
                "{what} expands beyond {cap} bytes (at most {}x its size, {} bytes per input)",
                self.limits.max_ratio, self.limits.max_expanded
            )));
        }
        self.spent += out.len();
        Ok(out)
    }

    fn gunzip(&mut self, bytes: &[u8]) -> Result<Vec<u8>, Refused> {
        let cap = self.cap(bytes.len());
        // One member: what some reporters append after it (a stray CRLF
        // from the base64 encoder) is not a second member.
        self.read_capped(flate2::read::GzDecoder::new(bytes), cap, "the gzip stream")
    }

    fn unzip(&mut self, bytes: &[u8], depth: usize) -> Result<(), Refused> {
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| Refused::Format(format!("expected a zip archive: {e}")))?;
        if archive.len() > self.limits.max_members {
            return Err(Refused::Unsafe(format!("{} members, at most {} allowed", archive.len(), self.limits.max_members)));
        }
        // Every name first: one climbing member refuses the whole archive,
        // before anything in it is read.
        for i in 0..archive.len() {
            let member = archive.by_index_raw(i).map_err(|e| Refused::Format(format!("zip member {i} is unreadable: {e}")))?;
            if let Some(why) = unsafe_member_name(member.name_raw()) {
                return Err(Refused::Unsafe(format!("member {:?} {why}", String::from_utf8_lossy(member.name_raw()))));
            }
        }
        for i in 0..archive.len() {
            let member = archive.by_index(i).map_err(|e| Refused::Format(format!("zip member {i} cannot be opened: {e}")))?;
            if member.is_dir() {
                continue;
            }
            let cap = self.cap(bytes.len());
            if member.size() > cap as u64 {
                return Err(Refused::Bomb(format!(
                    "zip member {i} declares {} bytes expanded, more than the {cap} allowed",
                    member.size()
                )));
            }
            let data = self.read_capped(member, cap, "a zip member")?;
            self.open(&data, depth + 1)?;
        }
        Ok(())
    }

    /// Every leaf part that sniffs as a report format is opened; the text
    /// parts around it ("this is a DMARC report") are not reports.
    fn message(&mut self, bytes: &[u8], depth: usize) -> Result<(), Refused> {
        let message = MessageParser::new().parse(bytes).ok_or_else(|| Refused::Format("expected an RFC 5322 message".into()))?;
        for part in &message.parts {
            let body: &[u8] = match &part.body {
                PartType::Text(t) => t.as_bytes(),
                PartType::Binary(b) | PartType::InlineBinary(b) => b,
                PartType::Message(m) => m.raw_message(),
                PartType::Html(_) | PartType::Multipart(_) => continue,
            };
            // A text part that merely starts like a header is prose, not an
            // attached message.
            match sniff(body) {
                Some(Format::Message) if !matches!(part.body, PartType::Message(_)) => continue,
                None => continue,
                Some(_) => {}
            }
            if let Err(e) = self.open(body, depth + 1) {
                match e {
                    // A bomb or a climbing path refuses the whole message.
                    Refused::Bomb(_) | Refused::Unsafe(_) | Refused::TooLarge(_) => return Err(e),
                    Refused::Format(why) => {
                        let name = part.attachment_name().unwrap_or("(unnamed part)");
                        self.skipped.push(format!("{}: {why}", printable(name)));
                    }
                }
            }
        }
        if self.documents.is_empty() {
            let detail = if self.skipped.is_empty() { String::new() } else { format!(" ({})", self.skipped.join("; ")) };
            return Err(Refused::Format(format!("no report (XML, JSON, gzip or zip) found in the message{detail}")));
        }
        Ok(())
    }
}

/// Why a zip member's name is unsafe, if it is: it climbs out (`..`), is
/// absolute (`/x`, `\x`, `C:x`) or holds a NUL.
pub fn unsafe_member_name(name: &[u8]) -> Option<&'static str> {
    if name.contains(&0) {
        return Some("has a NUL in its name");
    }
    if name.starts_with(b"/") || name.starts_with(b"\\") {
        return Some("has an absolute path");
    }
    // ok: both indices are below the length just checked.
    if name.len() >= 2 && name[0].is_ascii_alphabetic() && name[1] == b':' {
        return Some("names a drive");
    }
    if name.split(|&b| b == b'/' || b == b'\\').any(|c| c == b"..") {
        return Some("climbs out of the archive (..)");
    }
    None
}

/// `s` with control characters escaped, for logs and reason files.
pub fn printable(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}
