//! SMTP replies carrying RFC 3463 enhanced status codes.

use std::fmt;

/// An RFC 3463 enhanced status code such as `5.7.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl StatusCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self { class, subject, detail }
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply. `status` is `None` only where RFC 2034 leaves the enhanced
/// code out: the greeting, the EHLO/HELO response and intermediate 3xx replies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: Option<StatusCode>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, status: StatusCode, text: impl Into<String>) -> Self {
        Self { code, status: Some(status), lines: vec![text.into()] }
    }

    /// A reply without an enhanced status code (greeting, EHLO, 354, 334).
    pub fn bare(code: u16, lines: Vec<String>) -> Self {
        Self { code, status: None, lines }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// Writes the reply in wire form, CRLF-terminated, multi-line where needed.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let line = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 < n { '-' } else { ' ' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep as u8);
            if let Some(status) = self.status {
                out.extend_from_slice(status.to_string().as_bytes());
                out.push(b' ');
            }
            // Reply text comes from our own code, but some of it echoes client
            // input; never let a CR or LF split the reply.
            for b in line.bytes() {
                out.push(if b == b'\r' || b == b'\n' { b' ' } else { b });
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(status) = self.status {
            write!(f, " {status}")?;
        }
        write!(f, " {}", self.lines.join(" "))
    }
}

/// Enhanced status codes used across mailgate, named for what they mean.
pub mod status {
    use super::StatusCode;
    pub const OK: StatusCode = StatusCode::new(2, 0, 0);
    pub const SENDER_OK: StatusCode = StatusCode::new(2, 1, 0);
    pub const RCPT_OK: StatusCode = StatusCode::new(2, 1, 5);
    pub const MSG_OK: StatusCode = StatusCode::new(2, 6, 0);
    pub const VRFY_CANNOT: StatusCode = StatusCode::new(2, 5, 2);
    pub const BAD_DEST_SYNTAX: StatusCode = StatusCode::new(5, 1, 3);
    pub const BAD_SENDER_SYNTAX: StatusCode = StatusCode::new(5, 1, 7);
    pub const NO_SYSTEM_STORAGE: StatusCode = StatusCode::new(4, 3, 1);
    pub const SYSTEM_ERROR: StatusCode = StatusCode::new(4, 3, 0);
    pub const SHUTTING_DOWN: StatusCode = StatusCode::new(4, 3, 2);
    /// "System not accepting network messages": also for running out of
    /// the in-flight memory budget.
    pub const OVERLOADED: StatusCode = StatusCode::new(4, 3, 2);
    pub const MSG_TOO_BIG: StatusCode = StatusCode::new(5, 3, 4);
    pub const MSG_TOO_BIG_SYSTEM: StatusCode = StatusCode::new(5, 2, 3);
    pub const TIMEOUT: StatusCode = StatusCode::new(4, 4, 2);
    pub const INVALID_COMMAND: StatusCode = StatusCode::new(5, 5, 1);
    pub const SYNTAX: StatusCode = StatusCode::new(5, 5, 2);
    pub const TOO_MANY_RCPTS: StatusCode = StatusCode::new(4, 5, 3);
    pub const BAD_ARGS: StatusCode = StatusCode::new(5, 5, 4);
    pub const MEDIA: StatusCode = StatusCode::new(5, 6, 0);
    pub const NEED_UTF8: StatusCode = StatusCode::new(5, 6, 7);
    pub const POLICY: StatusCode = StatusCode::new(5, 7, 1);
    pub const TEMP_POLICY: StatusCode = StatusCode::new(4, 7, 0);
    pub const AUTH_REQUIRED: StatusCode = StatusCode::new(5, 7, 0);
    pub const CONGESTION: StatusCode = StatusCode::new(4, 4, 5);
}

/// Reads replies from a server, for the outbound client. Bounded: a hostile
/// server cannot make us buffer without limit.
#[derive(Debug, Default)]
pub struct ReplyReader {
    buf: Vec<u8>,
    lines: Vec<String>,
}

/// Longest reply line and most lines in one reply we accept.
const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError(pub &'static str);

impl ReplyReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received but not yet part of a complete reply. After STARTTLS
    /// these must be discarded: they arrived before the handshake.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.lines.clear();
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete reply, if one is buffered.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(lf) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_REPLY_LINE {
                    return Err(ReplyError("reply line too long"));
                }
                return Ok(None);
            };
            let mut line: Vec<u8> = self.buf.drain(..=lf).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > MAX_REPLY_LINE {
                return Err(ReplyError("reply line too long"));
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let b = line.as_bytes();
            if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&b[0]) {
                return Err(ReplyError("malformed reply"));
            }
            let last = match b.get(3) {
                None | Some(b' ') => true,
                Some(b'-') => false,
                _ => return Err(ReplyError("malformed reply")),
            };
            if let Some(first) = self.lines.first()
                && first.as_bytes()[..3] != b[..3]
            {
                return Err(ReplyError("reply code changed inside a multi-line reply"));
            }
            self.lines.push(line);
            if self.lines.len() > MAX_REPLY_LINES {
                return Err(ReplyError("too many reply lines"));
            }
            if last {
                let lines = std::mem::take(&mut self.lines);
                return Ok(Some(assemble(lines)));
            }
        }
    }
}

fn assemble(lines: Vec<String>) -> Reply {
    let code: u16 = lines[0][..3].parse().unwrap_or(500); // ok: checked to be three digits
    let texts: Vec<String> = lines.iter().map(|l| l.get(4..).unwrap_or("").to_string()).collect();
    let status = texts.first().and_then(|t| parse_status(t, code));
    let texts = match status {
        Some(s) => {
            let prefix = format!("{s} ");
            texts.into_iter().map(|t| t.strip_prefix(&prefix).map(str::to_string).unwrap_or(t)).collect()
        }
        None => texts,
    };
    Reply { code, status, lines: texts }
}

fn parse_status(text: &str, code: u16) -> Option<StatusCode> {
    let word = text.split(' ').next()?;
    let mut parts = word.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || u16::from(class) != code / 100 || subject > 999 || detail > 999 {
        return None;
    }
    Some(StatusCode::new(class, subject, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_with_status() {
        let mut r = ReplyReader::new();
        r.feed(b"250-mx.test Hello\r\n250-PIPELINING\r\n250 SIZE 100\r\n550 5.7.1 no\r\n");
        let a = r.next_reply().unwrap().unwrap();
        assert_eq!(a.code, 250);
        assert_eq!(a.lines, ["mx.test Hello", "PIPELINING", "SIZE 100"]);
        let b = r.next_reply().unwrap().unwrap();
        assert_eq!(b.status, Some(StatusCode::new(5, 7, 1)));
        assert_eq!(b.lines, ["no"]);
        assert_eq!(r.next_reply().unwrap(), None);
        assert_eq!(b.to_wire(), b"550 5.7.1 no\r\n");
    }

    #[test]
    fn malformed() {
        let mut r = ReplyReader::new();
        r.feed(b"hello\r\n");
        assert!(r.next_reply().is_err());
        let mut r = ReplyReader::new();
        r.feed(b"250-a\r\n251 b\r\n");
        assert!(r.next_reply().is_err());
    }
}
