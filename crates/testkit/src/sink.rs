//! An SMTP sink that accepts mail on 127.0.0.1 and records every message
//! with its envelope, and a blackhole that accepts TCP but never greets.
//! Both run on plain threads and stop when dropped.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A message as the sink received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The EHLO/HELO argument.
    pub helo: String,
    /// The MAIL FROM path without brackets and parameters ("" for `<>`).
    pub mail_from: String,
    /// RCPT TO paths without brackets and parameters, in order.
    pub rcpt_to: Vec<String>,
    /// Content with the dot-stuffing removed, CRLF line ends, no final dot.
    pub data: Vec<u8>,
    /// The message came over TLS.
    pub tls: bool,
    /// The SASL user the client logged in as.
    pub authenticated: Option<String>,
}

impl ReceivedMessage {
    pub fn data_str(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// Reply lines the sink sends; change them to make it refuse mail.
#[derive(Debug, Clone)]
pub struct SinkReplies {
    pub greeting: String,
    pub mail: String,
    pub rcpt: String,
    /// Sent after the final dot; the message is recorded only when it is 2xx.
    pub data_end: String,
    /// Replies for the first transactions' final dot, before `data_end`
    /// applies (e.g. one 451 to test a retry).
    pub data_end_first: Vec<String>,
    /// RCPT replies for recipients containing the given text.
    pub rcpt_for: Vec<(String, String)>,
    /// Speak LMTP: LHLO, and one reply per accepted recipient after DATA.
    pub lmtp: bool,
    /// LMTP post-DATA replies for recipients containing the given text.
    pub lmtp_data_for: Vec<(String, String)>,
    /// EHLO keywords after the greeting line.
    pub extensions: Vec<String>,
    /// Address to listen on; a free port on 127.0.0.1 when `None`.
    pub bind: Option<SocketAddr>,
    /// Offer STARTTLS with a self-signed certificate.
    pub starttls: bool,
    /// The TLS configuration for STARTTLS instead of the self-signed one.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Offer AUTH PLAIN and LOGIN after TLS, accepting these credentials.
    pub auth: Option<(String, String)>,
}

impl Default for SinkReplies {
    fn default() -> Self {
        SinkReplies {
            greeting: "220 sink.example.test ESMTP testkit sink".into(),
            mail: "250 2.1.0 Ok".into(),
            rcpt: "250 2.1.5 Ok".into(),
            data_end: "250 2.0.0 Ok: stored".into(),
            data_end_first: Vec::new(),
            rcpt_for: Vec::new(),
            lmtp: false,
            lmtp_data_for: Vec::new(),
            extensions: ["PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 104857600"].map(String::from).to_vec(),
            bind: None,
            starttls: false,
            tls: None,
            auth: None,
        }
    }
}

#[derive(Default)]
struct Inbox {
    messages: Mutex<Vec<ReceivedMessage>>,
    arrived: Condvar,
    connections: AtomicUsize,
    transactions: AtomicUsize,
}

/// An SMTP server that records what it receives.
pub struct SmtpSink {
    addr: SocketAddr,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
}

impl SmtpSink {
    /// Listens on 127.0.0.1 on a free port and accepts everything.
    pub fn start() -> SmtpSink {
        Self::with_replies(SinkReplies::default())
    }

    pub fn with_replies(replies: SinkReplies) -> SmtpSink {
        let listener = TcpListener::bind(replies.bind.unwrap_or_else(|| "127.0.0.1:0".parse().expect("address"))).expect("bind sink");
        let addr = listener.local_addr().expect("sink address");
        let inbox = Arc::new(Inbox::default());
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(replies);
        let (inbox2, stop2) = (inbox.clone(), stop.clone());
        thread::Builder::new()
            .name("smtp-sink".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    inbox2.connections.fetch_add(1, Ordering::SeqCst);
                    let (inbox, replies) = (inbox2.clone(), replies.clone());
                    let _ = thread::Builder::new().name("smtp-sink-conn".into()).spawn(move || {
                        let _ = serve(stream, &inbox, &replies);
                    });
                }
            })
            .expect("spawn sink thread");
        SmtpSink { addr, inbox, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://127.0.0.1:PORT`, for `[[domain]].deliver`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Messages received so far.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.inbox.messages.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.inbox.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` messages have arrived; returns them all, or
    /// `None` after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Option<Vec<ReceivedMessage>> {
        let deadline = Instant::now() + timeout;
        let mut messages = self.inbox.messages.lock().unwrap_or_else(|p| p.into_inner());
        while messages.len() < n {
            let left = deadline.checked_duration_since(Instant::now())?;
            messages = self.inbox.arrived.wait_timeout(messages, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        Some(messages.clone())
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Strips `<...>` and anything after it from a MAIL/RCPT argument.
fn path_of(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_string(),
        _ => arg.split_whitespace().next().unwrap_or("").to_string(),
    }
}

fn serve(stream: TcpStream, inbox: &Inbox, replies: &SinkReplies) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut wire = Wire { io: Box::new(stream), buf: Vec::new(), tls: false };
    wire.send(&replies.greeting)?;
    let mut authenticated: Option<String> = None;
    let mut helo = String::new();
    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        let line = wire.read_line()?;
        if line.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "LHLO" => {
                helo = arg.trim().to_string();
                (from, rcpts) = (None, Vec::new());
                let mut lines = vec!["sink.example.test".to_string()];
                lines.extend(replies.extensions.iter().cloned());
                if replies.starttls && !wire.tls {
                    lines.push("STARTTLS".into());
                }
                if replies.auth.is_some() && wire.tls {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                for (i, l) in lines.iter().enumerate() {
                    wire.send(&format!("250{}{l}", if i + 1 == lines.len() { ' ' } else { '-' }))?;
                }
            }
            "HELO" => {
                helo = arg.trim().to_string();
                (from, rcpts) = (None, Vec::new());
                wire.send("250 sink.example.test")?;
            }
            "MAIL" => {
                let Some(path) = arg.get(5..).filter(|_| arg[..5].eq_ignore_ascii_case("FROM:")) else {
                    wire.send("501 5.5.4 Syntax: MAIL FROM:<address>")?;
                    continue;
                };
                if from.is_some() {
                    wire.send("503 5.5.1 Nested MAIL command")?;
                    continue;
                }
                wire.send(&replies.mail)?;
                if replies.mail.starts_with('2') {
                    from = Some(path_of(path));
                }
            }
            "RCPT" => {
                let Some(path) = arg.get(3..).filter(|_| arg[..3].eq_ignore_ascii_case("TO:")) else {
                    wire.send("501 5.5.4 Syntax: RCPT TO:<address>")?;
                    continue;
                };
                if from.is_none() {
                    wire.send("503 5.5.1 Need MAIL first")?;
                    continue;
                }
                let rcpt = path_of(path);
                let reply = replies.rcpt_for.iter().find(|(k, _)| rcpt.contains(k.as_str())).map(|(_, r)| r).unwrap_or(&replies.rcpt);
                wire.send(reply)?;
                if reply.starts_with('2') {
                    rcpts.push(rcpt);
                }
            }
            "DATA" => {
                if from.is_none() || rcpts.is_empty() {
                    wire.send("503 5.5.1 Need MAIL and RCPT first")?;
                    continue;
                }
                wire.send("354 End data with <CR><LF>.<CR><LF>")?;
                let data = read_data(&mut wire)?;
                let n = inbox.transactions.fetch_add(1, Ordering::SeqCst);
                let end = replies.data_end_first.get(n).unwrap_or(&replies.data_end).clone();
                if replies.lmtp {
                    let mut accepted = Vec::new();
                    for r in &rcpts {
                        let reply = replies.lmtp_data_for.iter().find(|(k, _)| r.contains(k.as_str())).map(|(_, v)| v).unwrap_or(&end);
                        wire.send(reply)?;
                        if reply.starts_with('2') {
                            accepted.push(r.clone());
                        }
                    }
                    rcpts = accepted;
                } else {
                    wire.send(&end)?;
                }
                if end.starts_with('2') && !rcpts.is_empty() {
                    let message = ReceivedMessage {
                        tls: wire.tls,
                        authenticated: authenticated.clone(),
                        helo: helo.clone(),
                        mail_from: from.take().unwrap_or_default(),
                        rcpt_to: std::mem::take(&mut rcpts),
                        data,
                    };
                    inbox.messages.lock().unwrap_or_else(|p| p.into_inner()).push(message);
                    inbox.arrived.notify_all();
                }
                (from, rcpts) = (None, Vec::new());
            }
            "RSET" => {
                (from, rcpts) = (None, Vec::new());
                wire.send("250 2.0.0 Ok")?;
            }
            "STARTTLS" if replies.starttls && !wire.tls => {
                wire.send("220 2.0.0 Ready to start TLS")?;
                wire.start_tls(replies.tls.clone())?;
                (from, rcpts, helo) = (None, Vec::new(), String::new());
            }
            "AUTH" if replies.auth.is_some() && wire.tls => {
                let (user, pass) = replies.auth.clone().unwrap_or_default();
                let mut words = arg.split_whitespace();
                let mech = words.next().unwrap_or("").to_ascii_uppercase();
                let given = match mech.as_str() {
                    "PLAIN" => {
                        let token = match words.next() {
                            Some(t) => t.to_string(),
                            None => {
                                wire.send("334 ")?;
                                String::from_utf8_lossy(&wire.read_line()?).trim().to_string()
                            }
                        };
                        let raw = b64d(&token);
                        let parts: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
                        match parts.as_slice() {
                            [_, u, p] => Some((String::from_utf8_lossy(u).into_owned(), String::from_utf8_lossy(p).into_owned())),
                            _ => None,
                        }
                    }
                    "LOGIN" => {
                        wire.send("334 VXNlcm5hbWU6")?;
                        let u = b64d(String::from_utf8_lossy(&wire.read_line()?).trim());
                        wire.send("334 UGFzc3dvcmQ6")?;
                        let p = b64d(String::from_utf8_lossy(&wire.read_line()?).trim());
                        Some((String::from_utf8_lossy(&u).into_owned(), String::from_utf8_lossy(&p).into_owned()))
                    }
                    _ => None,
                };
                if given == Some((user.clone(), pass)) {
                    authenticated = Some(user);
                    wire.send("235 2.7.0 Authentication successful")?;
                } else {
                    wire.send("535 5.7.8 Authentication credentials invalid")?;
                }
            }
            "NOOP" => wire.send("250 2.0.0 Ok")?,
            "QUIT" => {
                wire.send("221 2.0.0 Bye")?;
                return Ok(());
            }
            _ => wire.send("502 5.5.2 Command not recognized")?,
        }
    }
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// The connection, in clear or TLS, read line by line.
struct Wire {
    io: Box<dyn ReadWrite>,
    buf: Vec<u8>,
    tls: bool,
}

impl Wire {
    fn send(&mut self, line: &str) -> io::Result<()> {
        self.io.write_all(format!("{line}\r\n").as_bytes())?;
        self.io.flush()
    }

    /// One line with its ending; empty at end of stream.
    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(p) = self.buf.iter().position(|&b| b == b'\n') {
                return Ok(self.buf.drain(..=p).collect());
            }
            let mut chunk = [0u8; 8192];
            let n = self.io.read(&mut chunk)?;
            if n == 0 {
                return Ok(std::mem::take(&mut self.buf));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn start_tls(&mut self, config: Option<std::sync::Arc<rustls::ServerConfig>>) -> io::Result<()> {
        // Bytes pipelined before the handshake are discarded (RFC 3207).
        self.buf.clear();
        let io = std::mem::replace(&mut self.io, Box::new(io::empty()));
        let conn = rustls::ServerConnection::new(config.unwrap_or_else(crate::tls::server_config)).map_err(io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, io);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        self.io = Box::new(tls);
        self.tls = true;
        Ok(())
    }
}

fn b64d(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s.trim()).unwrap_or_default()
}

/// Reads content up to the lone dot, undoing dot-stuffing.
fn read_data(wire: &mut Wire) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let line = wire.read_line()?;
        if line.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in DATA"));
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(data);
        }
        let start = usize::from(line.first() == Some(&b'.'));
        data.extend_from_slice(&line[start..]);
    }
}

/// Accepts TCP connections and holds them open without ever sending a byte,
/// like a next hop that hangs before its greeting.
pub struct Blackhole {
    addr: SocketAddr,
    held: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind blackhole");
        let addr = listener.local_addr().expect("blackhole address");
        let held = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (held2, accepted2, stop2) = (held.clone(), accepted.clone(), stop.clone());
        thread::Builder::new()
            .name("blackhole".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        accepted2.fetch_add(1, Ordering::SeqCst);
                        held2.lock().unwrap_or_else(|p| p.into_inner()).push(stream);
                    }
                }
            })
            .expect("spawn blackhole thread");
        Blackhole { addr, held, accepted, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://127.0.0.1:PORT`, for `[[domain]].deliver`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for s in self.held.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::SmtpClient;

    #[test]
    fn sink_records_envelope_and_content() {
        let sink = SmtpSink::start();
        let mut c = SmtpClient::connect(sink.addr()).unwrap();
        assert_eq!(c.greeting.code, 220);
        assert_eq!(c.ehlo("client.test").unwrap().code, 250);
        let r = c.send_mail("a@x.test", &["b@y.test", "c@y.test"], "Subject: hi\r\n\r\n.dot\r\nend\r\n").unwrap();
        assert_eq!(r.code, 250, "{r}");
        assert_eq!(c.command("RSET").unwrap().code, 250);
        assert_eq!(c.quit().unwrap().code, 221);
        let got = sink.wait_for(1, Duration::from_secs(5)).expect("one message");
        assert_eq!(got[0].helo, "client.test");
        assert_eq!(got[0].mail_from, "a@x.test");
        assert_eq!(got[0].rcpt_to, ["b@y.test", "c@y.test"]);
        assert_eq!(got[0].data_str(), "Subject: hi\r\n\r\n.dot\r\nend\r\n");
    }

    #[test]
    fn refusing_sink_records_nothing() {
        let sink = SmtpSink::with_replies(SinkReplies { data_end: "451 4.3.0 later".into(), ..SinkReplies::default() });
        let mut c = SmtpClient::connect(sink.addr()).unwrap();
        c.ehlo("client.test").unwrap();
        assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "x\r\n").unwrap().code, 451);
        assert!(sink.wait_for(1, Duration::from_millis(200)).is_none());
    }

    #[test]
    fn blackhole_never_greets() {
        let hole = Blackhole::start();
        let r = SmtpClient::connect_timeout(hole.addr(), Duration::from_millis(300));
        let e = r.err().expect("no greeting");
        assert!(matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{e}");
        assert!(crate::net::wait_until(Duration::from_secs(2), || hole.accepted() == 1));
    }
}
