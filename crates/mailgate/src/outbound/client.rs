//! The SMTP/LMTP client driver: runs the sans-I/O client of
//! `mailgate-core` over TCP (and TLS after STARTTLS) with timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailgate_core::client::{Client, ClientAction, ClientConfig, ContentMode, DotStuffer, OutboundMessage, Outcome};
use mailgate_core::reply::{Reply, ReplyReader, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::route::Candidate;
use crate::spool::Content;
use crate::tls::Stream;

/// Octets of message content read from the spool and written at a time.
const CONTENT_CHUNK: usize = 64 * 1024;

/// Told the TLS outcome of each connection: the MX host and "success" or
/// an RFC 8460 failure type.
pub type TlsReport = Arc<dyn Fn(&str, &'static str) + Send + Sync>;

#[derive(Clone)]
pub struct Settings {
    pub client: ClientConfig,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// Used for STARTTLS: the opportunistic or the verifying config.
    pub tls: Arc<rustls::ClientConfig>,
    /// Verify the certificate after an unverified handshake, for reports.
    pub check: Option<Arc<super::tls::Trust>>,
    pub report: Option<TlsReport>,
}

/// An open, greeted session ready for messages.
pub struct Connection {
    stream: Stream,
    reader: ReplyReader,
    client: Client,
    settings: Settings,
    server_name: String,
    /// `host[ip]:port`, for logs and DSN `Remote-MTA`.
    pub remote: String,
    pub sent: usize,
    broken: bool,
    /// Buffers kept for the connection's life (it carries many messages):
    /// replies are read into `replies`, content into `chunk`, and DATA's
    /// dot-stuffed copy goes to `stuffed`. Allocated once, not zeroed again
    /// for every command and message.
    replies: Vec<u8>,
    chunk: Vec<u8>,
    stuffed: Vec<u8>,
}

/// Octets of replies read at a time.
const REPLY_CHUNK: usize = 16 * 1024;

fn temp(code: StatusCode, text: String) -> Outcome {
    Outcome::Temporary(Reply::new(451, code, text))
}

enum Stop {
    Ready,
    Finished(Vec<Outcome>),
    Closed(Option<Outcome>),
}

/// Connects to the first candidate that greets us and completes EHLO.
/// Tries every address of every host, in order (RFC 5321 §5.1).
pub async fn connect(candidates: &[Candidate], settings: &Settings) -> Result<Connection, Outcome> {
    let mut last = temp(StatusCode::new(4, 4, 1), "no host to connect to".into());
    for cand in candidates {
        for addr in &cand.addrs {
            match connect_one(&cand.name, *addr, settings).await {
                Ok(c) => return Ok(c),
                Err(o) => {
                    tracing::info!(host = %cand.name, addr = %addr, reason = %o.reply(), "connection attempt failed");
                    last = o;
                }
            }
        }
    }
    Err(last)
}

async fn connect_one(name: &str, addr: SocketAddr, settings: &Settings) -> Result<Connection, Outcome> {
    let stream = match timeout(settings.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(temp(StatusCode::new(4, 4, 1), format!("connect to {name}[{}]:{} failed: {e}", addr.ip(), addr.port()))),
        Err(_) => return Err(temp(StatusCode::new(4, 4, 1), format!("connect to {name}[{}]:{} timed out", addr.ip(), addr.port()))),
    };
    let _ = stream.set_nodelay(true);
    let mut conn = Connection {
        stream: Stream::Plain(stream),
        reader: ReplyReader::new(),
        client: Client::new(settings.client.clone()),
        settings: settings.clone(),
        server_name: name.to_string(),
        remote: format!("{name}[{}]:{}", addr.ip(), addr.port()),
        sent: 0,
        broken: false,
        replies: vec![0; REPLY_CHUNK],
        chunk: Vec::new(),
        stuffed: Vec::new(),
    };
    let result = conn.run(Vec::new(), None).await;
    if let (Some(report), false) = (settings.report.as_ref(), conn.tls_active())
        && let Stop::Closed(Some(o)) = &result
        && o.reply().status == Some(StatusCode::new(4, 7, 10))
    {
        report(name, "starttls-not-supported");
    }
    match result {
        Stop::Ready => Ok(conn),
        Stop::Closed(o) => Err(o.unwrap_or_else(|| temp(StatusCode::new(4, 4, 2), "connection closed during greeting".into()))),
        Stop::Finished(_) => Err(temp(StatusCode::new(4, 4, 2), "unexpected state".into())),
    }
}

impl Connection {
    /// Whether the server offered DSN, so it takes over DSN duties.
    pub fn supports_dsn(&self) -> bool {
        self.client.extensions().is_some_and(|e| e.dsn)
    }

    pub fn tls_active(&self) -> bool {
        self.client.tls_active()
    }

    /// Sends one message; returns one outcome per recipient. Call on a
    /// fresh connection or after [`Connection::reset`] succeeded.
    pub async fn send(&mut self, message: OutboundMessage, content: &mut Content) -> Vec<Outcome> {
        let n = message.recipients.len();
        self.sent += 1;
        content.rewind();
        let actions = self.client.send_message(message);
        match self.run(actions, Some(content)).await {
            Stop::Finished(outcomes) => outcomes,
            Stop::Closed(o) => {
                self.broken = true;
                vec![o.unwrap_or_else(|| temp(StatusCode::new(4, 4, 2), "connection closed".into())); n]
            }
            Stop::Ready => vec![temp(StatusCode::new(4, 4, 2), "no reply to the message".into()); n],
        }
    }

    /// Readies the connection for another message (RSET). `false` if it
    /// cannot be reused.
    pub async fn reset(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let actions = self.client.next_message();
        match self.run(actions, None).await {
            Stop::Ready => true,
            _ => {
                self.broken = true;
                false
            }
        }
    }

    pub async fn quit(mut self) {
        if !self.broken {
            let actions = self.client.quit();
            let _ = timeout(Duration::from_secs(5), self.run(actions, None)).await;
        }
        let _ = self.stream.shutdown().await;
    }

    /// Carries out actions and feeds replies until the client is ready,
    /// has finished a message, or the connection ends.
    async fn run(&mut self, mut actions: Vec<ClientAction>, mut content: Option<&mut Content>) -> Stop {
        let mut finished = None;
        loop {
            let mut ready = false;
            for action in std::mem::take(&mut actions) {
                match action {
                    ClientAction::Send(bytes) => {
                        if let Err(e) = self.write(&bytes).await {
                            return self.abort(&format!("write to {} failed: {e}", self.remote));
                        }
                    }
                    ClientAction::SendContent(mode) => {
                        let result = match content.as_deref_mut() {
                            Some(content) => self.write_content(mode, content).await,
                            None => Err(std::io::Error::other("no content to send")),
                        };
                        if let Err(e) = result {
                            return self.abort(&format!("write to {} failed: {e}", self.remote));
                        }
                    }
                    ClientAction::StartTls => {
                        if let Err(e) = self.start_tls().await {
                            // A certificate that failed verification (PKIX,
                            // MTA-STS or DANE) is a cryptographic failure
                            // (RFC 3463 X.7.5), as Postfix reports it; any
                            // other handshake failure a connection failure.
                            let cert = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                            let status = match cert {
                                Some(rustls::Error::InvalidCertificate(_)) => StatusCode::new(4, 7, 5),
                                _ => StatusCode::new(4, 4, 2),
                            };
                            return self.abort_with(status, &format!("TLS handshake with {} failed: {e}", self.remote));
                        }
                        actions.extend(self.client.tls_established());
                    }
                    ClientAction::Finished(o) => finished = Some(o),
                    ClientAction::Ready => ready = true,
                    ClientAction::Close(o) => {
                        self.broken = true;
                        return match finished {
                            Some(f) => Stop::Finished(f),
                            None => Stop::Closed(o),
                        };
                    }
                }
            }
            if !actions.is_empty() {
                continue;
            }
            if let Some(f) = finished.take() {
                return Stop::Finished(f);
            }
            if ready {
                return Stop::Ready;
            }
            // Wait for the next reply.
            let reply = loop {
                match self.reader.next_reply() {
                    Ok(Some(r)) => break r,
                    Ok(None) => {}
                    Err(e) => return self.abort(&format!("{}: {}", self.remote, e.0)),
                }
                match timeout(self.settings.command_timeout, self.stream.read(&mut self.replies)).await {
                    Ok(Ok(0)) => return self.abort(&format!("{} closed the connection", self.remote)),
                    Ok(Ok(n)) => self.reader.feed(&self.replies[..n]),
                    Ok(Err(e)) => return self.abort(&format!("read from {} failed: {e}", self.remote)),
                    Err(_) => return self.abort(&format!("timeout waiting for {}", self.remote)),
                }
            };
            actions = self.client.on_reply(reply);
        }
    }

    /// Streams the content from the spool, a chunk at a time, so a large
    /// message is never held whole in memory (dot-stuffed for DATA).
    async fn write_content(&mut self, mode: ContentMode, content: &mut Content) -> std::io::Result<()> {
        let mut chunk = std::mem::take(&mut self.chunk);
        let mut stuffed = std::mem::take(&mut self.stuffed);
        chunk.resize(CONTENT_CHUNK, 0);
        let result = self.write_chunks(mode, content, &mut chunk, &mut stuffed).await;
        self.chunk = chunk;
        self.stuffed = stuffed;
        result
    }

    async fn write_chunks(
        &mut self,
        mode: ContentMode,
        content: &mut Content,
        chunk: &mut [u8],
        stuffed: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let mut stuffer = DotStuffer::default();
        loop {
            let n = std::io::Read::read(content, chunk)?;
            if n == 0 {
                break;
            }
            match mode {
                ContentMode::BdatLast => self.write(&chunk[..n]).await?,
                ContentMode::Data => {
                    stuffed.clear();
                    stuffer.push(&chunk[..n], stuffed);
                    self.write(stuffed).await?;
                }
            }
        }
        if matches!(mode, ContentMode::Data) {
            stuffed.clear();
            stuffer.finish(stuffed);
            self.write(stuffed).await?;
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match timeout(self.settings.command_timeout, self.stream.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    async fn start_tls(&mut self) -> std::io::Result<()> {
        // Anything the server sent after its 220 and before the handshake
        // is an injection attempt: drop it.
        self.reader.clear();
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
        let name = rustls::pki_types::ServerName::try_from(self.server_name.clone())
            .or_else(|_| rustls::pki_types::ServerName::try_from("invalid.invalid".to_string()))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let connector = TlsConnector::from(self.settings.tls.clone());
        let handshake = timeout(self.settings.command_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
            .and_then(|r| r);
        let tls = match handshake {
            Ok(tls) => tls,
            Err(e) => {
                if let Some(report) = &self.settings.report {
                    let kind = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                        .map(|r| super::tls::result_type(r.clone()))
                        .unwrap_or("validation-failure");
                    report(&self.server_name, kind);
                }
                return Err(e);
            }
        };
        if let Some(report) = &self.settings.report {
            let result = match (&self.settings.check, tls.get_ref().1.peer_certificates()) {
                (Some(trust), Some(chain)) => trust.check(&self.server_name, chain).err().unwrap_or("success"),
                _ => "success",
            };
            report(&self.server_name, result);
        }
        self.stream = Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)));
        Ok(())
    }

    fn abort(&mut self, why: &str) -> Stop {
        self.abort_with(StatusCode::new(4, 4, 2), why)
    }

    fn abort_with(&mut self, status: StatusCode, why: &str) -> Stop {
        self.broken = true;
        match self.client.abort_with(status, why) {
            Some(outcomes) => Stop::Finished(outcomes),
            None => Stop::Closed(Some(temp(status, why.to_string()))),
        }
    }
}
