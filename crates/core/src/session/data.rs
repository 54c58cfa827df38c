//! Message content readers for DATA (dot-terminated) and BDAT (counted).
//!
//! Both enforce the same content rules, because mail we accept is relayed to
//! next hops that may speak DATA: a bare CR or LF, or a NUL, that we let
//! through could end a message early somewhere downstream (SMTP smuggling).
//! Offending content is never normalised; the whole message is refused once
//! its true end has been read, so nothing after a fake terminator is ever
//! read as commands.

use crate::reply::Reply;

/// Why a message body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentError {
    TooBig,
    /// The driver refused the content ([`ContentCheck::refused`]).
    Refused,
    BareLineEnding,
    Nul,
    LineTooLong,
}

/// Content checks shared by DATA and BDAT.
#[derive(Debug, Default)]
pub struct ContentCheck {
    pub bare_line_ending: bool,
    pub nul: bool,
    pub line_too_long: bool,
    pub too_big: bool,
    /// The driver refused the content while it arrived (memory budget
    /// exhausted, disk full): it is discarded from then on and the
    /// transaction gets this reply at its end.
    pub refused: Option<Reply>,
    /// A line was longer than RFC 5322's 998 octets + CRLF. Not an error
    /// on its own (submission allows longer lines); the message must be
    /// re-encoded before it is signed and relayed.
    pub long_lines: bool,
}

impl ContentCheck {
    /// The first error found, most serious first: a message over the size
    /// limit is reported as such even if it also has bad line endings.
    pub fn error(&self) -> Option<ContentError> {
        if self.too_big {
            Some(ContentError::TooBig)
        } else if self.refused.is_some() {
            Some(ContentError::Refused)
        } else if self.bare_line_ending {
            Some(ContentError::BareLineEnding)
        } else if self.nul {
            Some(ContentError::Nul)
        } else if self.line_too_long {
            Some(ContentError::LineTooLong)
        } else {
            None
        }
    }
}

/// RFC 5321 §4.5.3.1.6 / RFC 5322 §2.1.1: 998 octets + CRLF. A longer
/// line sets [`ContentCheck::long_lines`].
pub const RFC_LINE: usize = 1000;

/// What feeding bytes to the DATA reader produced.
#[derive(Debug, PartialEq, Eq)]
pub enum DataProgress {
    /// All given bytes were consumed; the terminator has not been seen.
    NeedMore { consumed: usize },
    /// The terminator `CRLF.CRLF` ended at `consumed`; later bytes are commands.
    Done { consumed: usize },
}

/// Reads DATA content line by line, unstuffing dots, until the only valid
/// terminator: `.` CRLF at the start of a line that follows a real CRLF.
#[derive(Debug)]
pub struct DataReader {
    /// Whether the previous line ended with a proper CRLF (the DATA command
    /// line itself did).
    after_crlf: bool,
    /// We are inside a line longer than the limit, dropping its bytes.
    in_long_line: bool,
    max_line: usize,
    max_size: u64,
    /// Content octets accepted so far, including any the driver has
    /// already taken out of `body` (moved to disk).
    size: u64,
    pub check: ContentCheck,
}

impl DataReader {
    pub fn new(max_line: usize, max_size: u64) -> Self {
        DataReader { after_crlf: true, in_long_line: false, max_line, max_size, size: 0, check: ContentCheck::default() }
    }

    /// Content octets accepted so far (unstuffed).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Consumes complete lines from `input`, appending content to `body`.
    /// The driver may take bytes out of `body` between calls (to move them
    /// to disk); the size limit counts everything ever appended.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> DataProgress {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                // An incomplete line: wait for more unless it is already too
                // long, in which case drop what we have and remember.
                self.check.long_lines |= rest.len() > RFC_LINE;
                if rest.len() > self.max_line || self.in_long_line {
                    self.check.line_too_long = true;
                    self.check.bare_line_ending |= has_bare_cr(rest, false);
                    self.check.nul |= rest.contains(&0);
                    self.in_long_line = true;
                    // Keep a trailing CR: it may pair with the next LF.
                    let keep = usize::from(rest.last() == Some(&b'\r'));
                    pos = input.len() - keep;
                    if keep == 1 && rest.len() == 1 {
                        break;
                    }
                    continue;
                }
                break;
            };
            let line = &rest[..=lf];
            pos += lf + 1;
            let crlf = line.len() >= 2 && line[line.len() - 2] == b'\r';
            if self.in_long_line {
                self.in_long_line = false;
                self.check.bare_line_ending |= !crlf || has_bare_cr(line, crlf);
                self.check.nul |= line.contains(&0);
                self.after_crlf = crlf;
                continue;
            }
            if self.after_crlf && line == b".\r\n" {
                return DataProgress::Done { consumed: pos };
            }
            // One pass finds both a bare CR and a NUL (the line ending
            // itself holds neither); only a hit needs telling them apart.
            let end = line.len() - 1 - usize::from(crlf);
            if memchr::memchr2(b'\r', 0, &line[..end]).is_some() {
                self.check.bare_line_ending |= has_bare_cr(line, crlf);
                self.check.nul |= line.contains(&0);
            }
            self.check.bare_line_ending |= !crlf;
            if line.len() > self.max_line {
                self.check.line_too_long = true;
            }
            self.check.long_lines |= line.len() > RFC_LINE;
            let content = if self.after_crlf && line.first() == Some(&b'.') { &line[1..] } else { line };
            if self.size + content.len() as u64 > self.max_size {
                self.check.too_big = true;
            } else if self.check.error().is_none() {
                body.extend_from_slice(content);
                self.size += content.len() as u64;
            }
            self.after_crlf = crlf;
        }
        DataProgress::NeedMore { consumed: pos }
    }
}

/// Whether `line` holds a CR not followed by LF. `crlf` says the line ends
/// in CRLF, whose CR is fine.
fn has_bare_cr(line: &[u8], crlf: bool) -> bool {
    let end = if crlf { line.len() - 2 } else { line.len() };
    memchr::memchr(b'\r', &line[..end]).is_some()
}

/// Checks BDAT chunk content, which may split a CRLF across chunks.
#[derive(Debug, Default)]
pub struct BdatScanner {
    pending_cr: bool,
    line_len: usize,
}

impl BdatScanner {
    pub fn scan(&mut self, bytes: &[u8], max_line: usize, check: &mut ContentCheck) {
        for &b in bytes {
            match b {
                b'\n' => {
                    if !self.pending_cr {
                        check.bare_line_ending = true;
                    }
                    self.pending_cr = false;
                    self.line_len = 0;
                    continue;
                }
                _ if self.pending_cr => check.bare_line_ending = true,
                _ => {}
            }
            self.pending_cr = b == b'\r';
            check.nul |= b == 0;
            self.line_len += 1;
            if self.line_len + 1 > max_line {
                check.line_too_long = true;
            }
            check.long_lines |= self.line_len + 1 > RFC_LINE;
        }
    }

    /// Called at BDAT LAST: a message may not end in a lone CR.
    pub fn finish(&self, check: &mut ContentCheck) {
        if self.pending_cr {
            check.bare_line_ending = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8]) -> (DataProgress, Vec<u8>, Option<ContentError>) {
        let mut r = DataReader::new(1000, 1 << 20);
        let mut body = Vec::new();
        let p = r.feed(input, &mut body);
        (p, body, r.check.error())
    }

    #[test]
    fn unstuffs_and_ends() {
        let (p, body, err) = read(b"a\r\n..b\r\n.\r\nQUIT\r\n");
        assert_eq!(p, DataProgress::Done { consumed: 11 });
        assert_eq!(body, b"a\r\n.b\r\n");
        assert_eq!(err, None);
    }

    #[test]
    fn fake_terminators_do_not_end_data() {
        for fake in [&b"a\n.\nMAIL\r\n"[..], b"a\r.\rMAIL\r\n", b"a\n.\r\nMAIL\r\n", b"a\r\n.\nMAIL\r\n", b"a\r\n\0.\r\nMAIL\r\n"] {
            let (p, _, err) = read(fake);
            assert!(matches!(p, DataProgress::NeedMore { .. }), "{fake:?}");
            assert!(err.is_some(), "{fake:?}");
        }
    }

    #[test]
    fn split_across_feeds() {
        let mut r = DataReader::new(1000, 1 << 20);
        let mut body = Vec::new();
        assert_eq!(r.feed(b"abc\r\n.\r", &mut body), DataProgress::NeedMore { consumed: 5 });
        assert_eq!(r.feed(b".\r\n", &mut body), DataProgress::Done { consumed: 3 });
    }

    #[test]
    fn long_line_flagged() {
        let mut input = vec![b'x'; 2000];
        input.extend_from_slice(b"\r\n.\r\n");
        let mut r = DataReader::new(1000, 1 << 20);
        let mut body = Vec::new();
        let p = r.feed(&input[..1500], &mut body);
        assert_eq!(p, DataProgress::NeedMore { consumed: 1500 });
        assert_eq!(r.feed(&input[1500..], &mut body), DataProgress::Done { consumed: input.len() - 1500 });
        assert_eq!(r.check.error(), Some(ContentError::LineTooLong));
    }

    #[test]
    fn bdat_scanner_handles_split_crlf() {
        let mut s = BdatScanner::default();
        let mut c = ContentCheck::default();
        s.scan(b"a\r", 1000, &mut c);
        s.scan(b"\nb\r\n", 1000, &mut c);
        s.finish(&mut c);
        assert_eq!(c.error(), None);
        s.scan(b"x\ny", 1000, &mut c);
        assert_eq!(c.error(), Some(ContentError::BareLineEnding));
    }
}
