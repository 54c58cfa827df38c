//! The outbound SMTP/LMTP client as a sans-I/O state machine.
//!
//! The driver connects, feeds every reply with [`Client::on_reply`], and
//! carries out the [`ClientAction`]s: send these bytes, start TLS, send the
//! message content. One connection may carry several messages: after a
//! transaction finishes, [`Client::next_message`] starts another (with RSET
//! first) or [`Client::quit`] ends the session.
//!
//! Per-recipient outcomes are kept as the replies come in, so some
//! recipients can succeed while others fail in the same transaction, and an
//! aborted connection ([`Client::abort`]) still reports every recipient.

use crate::address::{Mailbox, ReversePath};
use crate::envelope::{BodyType, Notify, Orcpt, Ret};
use crate::reply::{Reply, StatusCode};
use crate::xtext;

/// What the server offered in its EHLO/LHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    /// `SIZE n`; `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub chunking: bool,
    pub dsn: bool,
    pub starttls: bool,
    pub auth: Vec<String>,
}

impl Extensions {
    pub fn parse(reply: &Reply) -> Self {
        let mut e = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => e.pipelining = true,
                "SIZE" => e.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => e.eight_bit_mime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "CHUNKING" => e.chunking = true,
                "DSN" => e.dsn = true,
                "STARTTLS" => e.starttls = true,
                "AUTH" => e.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        e
    }
}

/// Whether to use STARTTLS. The outbound TLS policy decides; the client
/// only carries it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Never (e.g. a local LMTP hop).
    Off,
    /// Use it when offered; carry on in clear text if it is not.
    Opportunistic,
    /// Use it or defer the mail.
    Required,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Our name in EHLO/LHLO.
    pub helo: String,
    pub lmtp: bool,
    pub tls: TlsMode,
    /// SASL credentials (user, password) for a smart host.
    pub auth: Option<(String, String)>,
    /// Send credentials over an unencrypted connection. Off by default: a
    /// password in clear text is readable by anyone on the path.
    pub danger_auth_without_tls: bool,
}

#[derive(Clone, Debug)]
pub struct OutboundRecipient {
    pub address: Mailbox,
    pub notify: Option<Notify>,
    pub orcpt: Option<Orcpt>,
}

/// One message to send over the connection.
#[derive(Clone, Debug)]
pub struct OutboundMessage {
    pub sender: ReversePath,
    pub recipients: Vec<OutboundRecipient>,
    /// Content size in octets (before dot-stuffing).
    pub size: u64,
    pub body: BodyType,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
}

/// A recipient's outcome for one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Reply),
    Temporary(Reply),
    Permanent(Reply),
}

impl Outcome {
    pub fn from_reply(reply: Reply) -> Self {
        match reply.code {
            200..=399 => Outcome::Delivered(reply),
            400..=499 => Outcome::Temporary(reply),
            _ => Outcome::Permanent(reply),
        }
    }

    pub fn reply(&self) -> &Reply {
        match self {
            Outcome::Delivered(r) | Outcome::Temporary(r) | Outcome::Permanent(r) => r,
        }
    }
}

/// How the content is to be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentMode {
    /// Dot-stuffed, then `.` CRLF (see [`dot_stuff`]).
    Data,
    /// `BDAT <size> LAST` CRLF, then the raw content.
    BdatLast,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ClientAction {
    Send(Vec<u8>),
    /// Run the TLS handshake now, then call [`Client::tls_established`].
    StartTls,
    /// Send the content of the current message.
    SendContent(ContentMode),
    /// The current message is done; one outcome per recipient, in order.
    Finished(Vec<Outcome>),
    /// The session is usable for [`Client::next_message`].
    Ready,
    /// Close the connection. `Some` when the session failed before or
    /// between messages: the reply explains why.
    Close(Option<Outcome>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt(usize),
    Data,
    /// Final reply after content; for LMTP one per accepted recipient.
    Content,
    Rset,
    Quit,
    /// AUTH PLAIN, or the last step of AUTH LOGIN: 235 expected.
    AuthDone,
    /// AUTH LOGIN: 334 for the user name, then for the password.
    AuthLoginUser,
    AuthLoginPassword,
}

pub struct Client {
    config: ClientConfig,
    ext: Option<Extensions>,
    tls_active: bool,
    expect: std::collections::VecDeque<Expect>,
    message: Option<OutboundMessage>,
    outcomes: Vec<Option<Outcome>>,
    mail_failed: Option<Outcome>,
    /// Recipients accepted at RCPT, waiting for the final reply after the
    /// content (one reply each with LMTP), in order.
    accepted: std::collections::VecDeque<usize>,
    closed: bool,
}

fn local(code: u16, status: StatusCode, text: &str) -> Reply {
    Reply::new(code, status, text)
}

impl Client {
    pub fn new(config: ClientConfig) -> Self {
        let mut expect = std::collections::VecDeque::new();
        expect.push_back(Expect::Greeting);
        Client {
            config,
            ext: None,
            tls_active: false,
            expect,
            message: None,
            outcomes: Vec::new(),
            mail_failed: None,
            accepted: Default::default(),
            closed: false,
        }
    }

    pub fn extensions(&self) -> Option<&Extensions> {
        self.ext.as_ref()
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    fn hello(&self) -> Vec<u8> {
        let verb = if self.config.lmtp { "LHLO" } else { "EHLO" };
        format!("{verb} {}\r\n", self.config.helo).into_bytes()
    }

    pub fn on_reply(&mut self, reply: Reply) -> Vec<ClientAction> {
        let mut out = Vec::new();
        let Some(expect) = self.expect.pop_front() else {
            // A reply nobody asked for: the server is confused or hostile.
            return self.fail(local(421, StatusCode::new(4, 5, 0), "unexpected reply from server"), out);
        };
        match expect {
            Expect::Greeting => {
                if reply.code != 220 {
                    return self.fail(reply, out);
                }
                out.push(ClientAction::Send(self.hello()));
                self.expect.push_back(Expect::Ehlo);
            }
            Expect::Ehlo => {
                if reply.code == 250 {
                    let ext = Extensions::parse(&reply);
                    let want_tls = self.config.tls != TlsMode::Off && !self.tls_active;
                    if want_tls && ext.starttls {
                        out.push(ClientAction::Send(b"STARTTLS\r\n".to_vec()));
                        self.expect.push_back(Expect::StartTls);
                    } else if self.config.tls == TlsMode::Required && !self.tls_active {
                        return self
                            .fail(local(421, StatusCode::new(4, 7, 10), "TLS is required but the server does not offer STARTTLS"), out);
                    } else {
                        self.ext = Some(ext);
                        return self.authenticate_or_ready(out);
                    }
                } else if (500..=504).contains(&reply.code) && !self.config.lmtp && self.config.tls != TlsMode::Required {
                    // An old server: fall back to HELO (RFC 5321 §3.2).
                    out.push(ClientAction::Send(format!("HELO {}\r\n", self.config.helo).into_bytes()));
                    self.expect.push_back(Expect::Helo);
                } else {
                    return self.fail(reply, out);
                }
            }
            Expect::Helo => {
                if reply.code != 250 {
                    return self.fail(reply, out);
                }
                self.ext = Some(Extensions::default());
                out.push(ClientAction::Ready);
            }
            Expect::StartTls => {
                if reply.code == 220 {
                    out.push(ClientAction::StartTls);
                } else if self.config.tls == TlsMode::Required {
                    return self.fail(reply, out);
                } else {
                    // Opportunistic: carry on in clear with what EHLO said.
                    out.push(ClientAction::Send(self.hello()));
                    self.expect.push_back(Expect::Ehlo);
                    self.config.tls = TlsMode::Off;
                }
            }
            Expect::Mail => {
                if reply.code != 250 {
                    self.mail_failed = Some(Outcome::from_reply(reply));
                }
                self.maybe_send_rest(&mut out);
            }
            Expect::Rcpt(i) => {
                let failed = self.mail_failed.clone();
                if let Some(slot) = self.outcomes.get_mut(i) {
                    *slot = Some(match failed {
                        Some(o) => o,
                        None if reply.code == 250 || reply.code == 251 => {
                            // Accepted for now; the final word comes after the content.
                            self.accepted.push_back(i);
                            Outcome::Delivered(reply)
                        }
                        None => Outcome::from_reply(reply),
                    });
                }
                self.maybe_send_rest(&mut out);
            }
            Expect::Data => {
                if reply.code == 354 {
                    if self.accepted.is_empty() {
                        // The server wants data although nobody was accepted
                        // (RFC 2920 §3.1): send an empty message to get out.
                        out.push(ClientAction::Send(b".\r\n".to_vec()));
                        self.expect.push_back(Expect::Content);
                        self.accepted.clear();
                    } else {
                        out.push(ClientAction::SendContent(ContentMode::Data));
                        self.push_content_expects();
                    }
                } else {
                    let outcome = Outcome::from_reply(reply);
                    self.settle_pending(&outcome);
                    self.finish(&mut out);
                }
            }
            Expect::Content => {
                let outcome = Outcome::from_reply(reply);
                if self.config.lmtp {
                    if let Some(i) = self.accepted.pop_front() {
                        self.outcomes[i] = Some(outcome);
                    }
                } else {
                    self.settle_pending(&outcome);
                }
                if !self.expect.contains(&Expect::Content) {
                    self.finish(&mut out);
                }
            }
            Expect::Rset => {
                if reply.code != 250 {
                    return self.fail(reply, out);
                }
                out.push(ClientAction::Ready);
            }
            Expect::Quit => {
                self.closed = true;
                out.push(ClientAction::Close(None));
            }
            Expect::AuthLoginUser | Expect::AuthLoginPassword if reply.code == 334 => {
                let (user, pass) = self.config.auth.clone().unwrap_or_default();
                let (value, next) =
                    if expect == Expect::AuthLoginUser { (user, Expect::AuthLoginPassword) } else { (pass, Expect::AuthDone) };
                out.push(ClientAction::Send(format!("{}\r\n", b64(value.as_bytes())).into_bytes()));
                self.expect.push_back(next);
            }
            Expect::AuthDone if reply.code == 235 => out.push(ClientAction::Ready),
            Expect::AuthDone | Expect::AuthLoginUser | Expect::AuthLoginPassword => {
                // Bad credentials are our configuration's fault, not the
                // message's: defer rather than bounce.
                let text = format!("authentication failed: {reply}");
                return self.fail(local(454, StatusCode::new(4, 7, 8), &text), out);
            }
        }
        out
    }

    /// After the final EHLO: log in to the smart host if configured.
    fn authenticate_or_ready(&mut self, mut out: Vec<ClientAction>) -> Vec<ClientAction> {
        let Some((user, pass)) = self.config.auth.clone() else {
            out.push(ClientAction::Ready);
            return out;
        };
        if !self.tls_active && !self.config.danger_auth_without_tls {
            return self.fail(local(454, StatusCode::new(4, 7, 10), "refusing to send credentials without TLS"), out);
        }
        let mechs = self.ext.as_ref().map(|e| e.auth.clone()).unwrap_or_default();
        if mechs.iter().any(|m| m == "PLAIN") {
            let token = b64(format!("\0{user}\0{pass}").as_bytes());
            out.push(ClientAction::Send(format!("AUTH PLAIN {token}\r\n").into_bytes()));
            self.expect.push_back(Expect::AuthDone);
        } else if mechs.iter().any(|m| m == "LOGIN") {
            out.push(ClientAction::Send(b"AUTH LOGIN\r\n".to_vec()));
            self.expect.push_back(Expect::AuthLoginUser);
        } else {
            return self.fail(local(454, StatusCode::new(4, 7, 0), "the server offers neither AUTH PLAIN nor LOGIN"), out);
        }
        out
    }

    /// The TLS handshake succeeded: start over with EHLO, forgetting
    /// everything the server said in clear text (RFC 3207 §4.2).
    pub fn tls_established(&mut self) -> Vec<ClientAction> {
        self.tls_active = true;
        self.ext = None;
        self.expect.clear();
        self.expect.push_back(Expect::Ehlo);
        vec![ClientAction::Send(self.hello())]
    }

    /// Starts a transaction. Call only after [`ClientAction::Ready`].
    pub fn send_message(&mut self, message: OutboundMessage) -> Vec<ClientAction> {
        let mut out = Vec::new();
        let ext = self.ext.clone().unwrap_or_default();
        let n = message.recipients.len();
        self.outcomes = vec![None; n];
        self.mail_failed = None;
        self.accepted.clear();
        if let Some(limit) = ext.size.filter(|&l| l > 0)
            && message.size > limit
        {
            let o = Outcome::Permanent(local(
                552,
                StatusCode::new(5, 3, 4),
                &format!("message size {} exceeds the server's limit {limit}", message.size),
            ));
            self.message = Some(message);
            self.outcomes = vec![Some(o); n];
            self.finish(&mut out);
            return out;
        }
        if message.smtputf8 && !ext.smtputf8 {
            let o = Outcome::Permanent(local(553, StatusCode::new(5, 6, 7), "the server does not support SMTPUTF8"));
            self.message = Some(message);
            self.outcomes = vec![Some(o); n];
            self.finish(&mut out);
            return out;
        }
        let mut cmds = self.mail_command(&message, &ext);
        self.expect.push_back(Expect::Mail);
        let rcpts: Vec<Vec<u8>> = message.recipients.iter().map(|r| rcpt_command(r, &ext)).collect();
        self.message = Some(message);
        if ext.pipelining {
            for (i, r) in rcpts.into_iter().enumerate() {
                cmds.extend_from_slice(&r);
                self.expect.push_back(Expect::Rcpt(i));
            }
            // With DATA in the group the content waits for 354 anyway
            // (RFC 2920 §3.1); BDAT waits for the RCPT replies instead.
            if !ext.chunking {
                cmds.extend_from_slice(b"DATA\r\n");
                self.expect.push_back(Expect::Data);
            }
        }
        out.push(ClientAction::Send(cmds));
        out
    }

    /// After a pipelined group or a single command: send what comes next
    /// once every outstanding reply is in.
    fn maybe_send_rest(&mut self, out: &mut Vec<ClientAction>) {
        if !self.expect.is_empty() {
            return;
        }
        let ext = self.ext.clone().unwrap_or_default();
        let Some(message) = &self.message else { return };
        // Not pipelining: the next RCPT, one at a time.
        if let Some(i) = self.outcomes.iter().position(Option::is_none) {
            if self.mail_failed.is_some() {
                let o = self.mail_failed.clone();
                for slot in self.outcomes.iter_mut().filter(|s| s.is_none()) {
                    *slot = o.clone();
                }
                self.finish(out);
                return;
            }
            out.push(ClientAction::Send(rcpt_command(&message.recipients[i], &ext)));
            self.expect.push_back(Expect::Rcpt(i));
            return;
        }
        if self.accepted.is_empty() {
            // Nobody accepted (or MAIL failed): nothing to send.
            self.finish(out);
            return;
        }
        if ext.chunking {
            let mut cmd = format!("BDAT {} LAST\r\n", message.size).into_bytes();
            cmd.shrink_to_fit();
            out.push(ClientAction::Send(cmd));
            out.push(ClientAction::SendContent(ContentMode::BdatLast));
            self.push_content_expects();
        } else {
            out.push(ClientAction::Send(b"DATA\r\n".to_vec()));
            self.expect.push_back(Expect::Data);
        }
    }

    fn push_content_expects(&mut self) {
        let n = if self.config.lmtp { self.accepted.len() } else { 1 };
        for _ in 0..n {
            self.expect.push_back(Expect::Content);
        }
    }

    /// Gives recipients accepted at RCPT the final outcome of the message.
    fn settle_pending(&mut self, outcome: &Outcome) {
        for i in self.accepted.drain(..) {
            self.outcomes[i] = Some(outcome.clone());
        }
    }

    fn finish(&mut self, out: &mut Vec<ClientAction>) {
        let temp = Outcome::Temporary(local(451, StatusCode::new(4, 4, 0), "no reply for this recipient"));
        let outcomes = self.outcomes.drain(..).map(|o| o.unwrap_or_else(|| temp.clone())).collect();
        self.message = None;
        self.accepted.clear();
        self.expect.retain(|e| !matches!(e, Expect::Content | Expect::Data));
        out.push(ClientAction::Finished(outcomes));
    }

    /// Prepares the connection for another message.
    pub fn next_message(&mut self) -> Vec<ClientAction> {
        self.expect.push_back(Expect::Rset);
        vec![ClientAction::Send(b"RSET\r\n".to_vec())]
    }

    pub fn quit(&mut self) -> Vec<ClientAction> {
        self.expect.push_back(Expect::Quit);
        vec![ClientAction::Send(b"QUIT\r\n".to_vec())]
    }

    /// The connection broke or timed out. Returns the outcomes of the
    /// current message (undecided recipients get a temporary failure), if
    /// one was in progress.
    pub fn abort(&mut self, why: &str) -> Option<Vec<Outcome>> {
        self.abort_with(StatusCode::new(4, 4, 2), why)
    }

    /// [`Client::abort`] with the enhanced status code of the failure
    /// (e.g. 4.7.5 for a certificate that failed verification).
    pub fn abort_with(&mut self, status: StatusCode, why: &str) -> Option<Vec<Outcome>> {
        self.closed = true;
        self.expect.clear();
        self.message.as_ref()?;
        let temp = Outcome::Temporary(local(451, status, why));
        // Recipients accepted at RCPT but without a final reply are not
        // delivered: the message may or may not have arrived.
        for i in self.accepted.drain(..) {
            self.outcomes[i] = None;
        }
        let outcomes = self.outcomes.drain(..).map(|o| o.unwrap_or_else(|| temp.clone())).collect();
        self.message = None;
        Some(outcomes)
    }

    fn fail(&mut self, reply: Reply, mut out: Vec<ClientAction>) -> Vec<ClientAction> {
        let outcome = Outcome::from_reply(reply);
        if self.message.is_some() {
            let outcomes = vec![outcome.clone(); self.outcomes.len()];
            self.outcomes.clear();
            self.message = None;
            out.push(ClientAction::Finished(outcomes));
        }
        self.closed = true;
        self.expect.clear();
        out.push(ClientAction::Close(Some(outcome)));
        out
    }

    fn mail_command(&self, m: &OutboundMessage, ext: &Extensions) -> Vec<u8> {
        let mut cmd = format!("MAIL FROM:<{}>", m.sender);
        if ext.size.is_some() {
            cmd.push_str(&format!(" SIZE={}", m.size));
        }
        if m.body == BodyType::EightBitMime && ext.eight_bit_mime {
            cmd.push_str(" BODY=8BITMIME");
        }
        if m.smtputf8 {
            cmd.push_str(" SMTPUTF8");
        }
        if ext.dsn {
            if let Some(ret) = m.ret {
                cmd.push_str(if ret == Ret::Full { " RET=FULL" } else { " RET=HDRS" });
            }
            if let Some(envid) = &m.envid {
                cmd.push_str(&format!(" ENVID={}", xtext::encode(envid)));
            }
        }
        cmd.push_str("\r\n");
        cmd.into_bytes()
    }
}

fn rcpt_command(r: &OutboundRecipient, ext: &Extensions) -> Vec<u8> {
    let mut cmd = format!("RCPT TO:<{}>", r.address);
    if ext.dsn {
        if let Some(n) = r.notify {
            let mut words = Vec::new();
            if n.success {
                words.push("SUCCESS");
            }
            if n.failure {
                words.push("FAILURE");
            }
            if n.delay {
                words.push("DELAY");
            }
            let value = if words.is_empty() { "NEVER".to_string() } else { words.join(",") };
            cmd.push_str(&format!(" NOTIFY={value}"));
        }
        if let Some(o) = &r.orcpt {
            cmd.push_str(&format!(" ORCPT={};{}", o.addr_type, xtext::encode(&o.address)));
        }
    }
    cmd.push_str("\r\n");
    cmd.into_bytes()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Dot-stuffs content for DATA and appends the terminator. Content is
/// stored with CRLF line endings; a missing final CRLF is added.
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 64 + 5);
    let mut stuffer = DotStuffer::default();
    stuffer.push(content, &mut out);
    stuffer.finish(&mut out);
    out
}

/// [`dot_stuff`] for content that arrives in pieces: a line may start in
/// one piece and go on in the next.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
    /// The last two octets pushed, to tell whether content ended in CRLF.
    tail: [u8; 2],
    empty: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer { at_line_start: true, tail: [0; 2], empty: true }
    }
}

impl DotStuffer {
    pub fn push(&mut self, content: &[u8], out: &mut Vec<u8>) {
        for &b in content {
            if self.at_line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            self.at_line_start = b == b'\n';
            self.tail = [self.tail[1], b];
        }
        self.empty &= content.is_empty();
    }

    /// The final CRLF if missing, and the terminator.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.empty && self.tail != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests;
