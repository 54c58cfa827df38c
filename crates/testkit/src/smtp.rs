//! A minimal raw SMTP client for tests: send lines, read (multi-line)
//! replies, and run whole MAIL/RCPT/DATA transactions. It checks nothing on
//! its own, so tests can send exactly the bytes they want.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One SMTP reply, possibly of several lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of each line, without code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// All lines' text joined with newlines.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// The id from "250 2.0.0 Ok: queued as <id>".
    pub fn queue_id(&self) -> Option<String> {
        if self.code != 250 {
            return None;
        }
        let text = self.text();
        let rest = &text[text.find("queued as ")? + "queued as ".len()..];
        let id: String = rest.chars().take_while(char::is_ascii_alphanumeric).collect();
        (!id.is_empty()).then_some(id)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

pub struct SmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The server's greeting, read by [`SmtpClient::connect`].
    pub greeting: Reply,
}

impl SmtpClient {
    /// Connects and reads the greeting. Reads and writes time out after 10 s.
    pub fn connect(addr: SocketAddr) -> io::Result<SmtpClient> {
        Self::connect_timeout(addr, Duration::from_secs(10))
    }

    /// As [`SmtpClient::connect`], with `timeout` for connecting, reading
    /// and writing.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<SmtpClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let greeting = read_reply(&mut reader)?;
        Ok(SmtpClient { reader, writer, greeting })
    }

    /// Reads one reply, following continuation lines (`250-...`).
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        read_reply(&mut self.reader)
    }

    /// Sends `line` followed by CRLF.
    pub fn send_line(&mut self, line: &str) -> io::Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\r\n");
        self.writer.write_all(&buf)
    }

    /// Sends raw bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Sends a command line and reads its reply.
    pub fn command(&mut self, line: &str) -> io::Result<Reply> {
        self.send_line(line)?;
        self.read_reply()
    }

    /// `EHLO name`.
    pub fn ehlo(&mut self, name: &str) -> io::Result<Reply> {
        self.command(&format!("EHLO {name}"))
    }

    /// One transaction: MAIL FROM, RCPT TO for each recipient, DATA and the
    /// dot-stuffed `message`. Returns the reply to the end of data, or the
    /// first negative reply on the way.
    pub fn send_mail(&mut self, from: &str, to: &[&str], message: &str) -> io::Result<Reply> {
        let reply = self.command(&format!("MAIL FROM:<{from}>"))?;
        if !reply.is_positive() {
            return Ok(reply);
        }
        let mut accepted = 0;
        let mut last = reply;
        for rcpt in to {
            last = self.command(&format!("RCPT TO:<{rcpt}>"))?;
            if last.is_positive() {
                accepted += 1;
            }
        }
        if accepted == 0 {
            return Ok(last);
        }
        let reply = self.command("DATA")?;
        if reply.code != 354 {
            return Ok(reply);
        }
        self.send_raw(&dot_stuff(message))?;
        self.read_reply()
    }

    /// `QUIT` and its reply.
    pub fn quit(mut self) -> io::Result<Reply> {
        self.command("QUIT")
    }
}

fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed while waiting for a reply"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("not an SMTP reply line: {line:?}"));
        if line.len() < 3 || !line.is_char_boundary(3) {
            return Err(bad());
        }
        let code: u16 = line[..3].parse().map_err(|_| bad())?;
        let (more, text) = match line.as_bytes().get(3) {
            None => (false, ""),
            Some(b' ') => (false, &line[4..]),
            Some(b'-') => (true, &line[4..]),
            Some(_) => return Err(bad()),
        };
        lines.push(text.to_string());
        if !more {
            return Ok(Reply { code, lines });
        }
    }
}

/// The message with CRLF line ends and leading dots doubled, followed by the
/// end-of-data line.
pub fn dot_stuff(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let body = message.strip_suffix("\r\n").or_else(|| message.strip_suffix('\n')).unwrap_or(message);
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_reply() {
        let mut input = &b"250-mx.example.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n"[..];
        let r = read_reply(&mut input).unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.lines, ["mx.example.test", "PIPELINING", "SIZE 100"]);
    }

    #[test]
    fn queue_id_from_reply() {
        let r = Reply { code: 250, lines: vec!["2.0.0 Ok: queued as 0123456789ABCDEF0123".into()] };
        assert_eq!(r.queue_id().as_deref(), Some("0123456789ABCDEF0123"));
        let r = Reply { code: 451, lines: vec!["4.3.0 try again".into()] };
        assert_eq!(r.queue_id(), None);
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff("a\n.b\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff("a\r\nb"), b"a\r\nb\r\n.\r\n");
    }
}
