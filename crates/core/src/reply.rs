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
