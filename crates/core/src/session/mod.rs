//! The inbound SMTP session as a sans-I/O state machine (RFC 5321).
//!
//! The driver feeds bytes with [`Session::receive`] and gets back
//! [`Action`]s: replies to send, a message to store, a connection to close.
//! When the session asks for a message to be stored it stops reading until
//! the driver reports the outcome with [`Session::transaction_done`]; bytes
//! the client pipelined meanwhile stay buffered here. Decisions that need
//! configuration (which recipients we accept) go through the [`Policy`]
//! trait, so this module never touches the network, files or the clock.

mod auth;
mod content;
mod data;

use std::net::IpAddr;
use std::sync::Arc;

pub use data::{BdatScanner, ContentCheck, ContentError, DataProgress, DataReader};

use crate::address::{AddressError, Mailbox, Path, ReversePath};
use crate::command::{self, Command, CommandError, MailParams};
use crate::envelope::{BodyType, ClientInfo, Envelope, QueueId, Recipient};
use crate::reply::{Reply, status};

/// What the listener is for; it decides which commands and policies apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Inbound from the internet: no AUTH, mail for our domains only.
    Mx,
    /// Submission with STARTTLS (port 587 style).
    Submission,
    /// Submission with implicit TLS (port 465 style).
    Submissions,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mx => "mx",
            Role::Submission => "submission",
            Role::Submissions => "submissions",
        }
    }
}

/// Limits and identity for one listener's sessions.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub hostname: String,
    pub role: Role,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Errors tolerated before the session is closed with 421.
    pub max_errors: u32,
    /// RFC 5321 §4.5.3.1.4: 512 octets including CRLF.
    pub max_command_line: usize,
    /// RFC 5321 §4.5.3.1.6: 1000 octets including CRLF.
    pub max_text_line: usize,
    /// The text line limit, in octets including CRLF, for submission
    /// listeners and trusted clients: applications send HTML with lines of
    /// thousands of characters, which are re-encoded before signing.
    pub max_submission_line: usize,
    /// Offer STARTTLS (RFC 3207) until TLS is active.
    pub starttls: bool,
    /// Offer AUTH PLAIN and LOGIN (RFC 4954), only once TLS is active.
    pub auth: bool,
}

impl SessionConfig {
    pub fn new(hostname: impl Into<String>, role: Role) -> Self {
        SessionConfig {
            hostname: hostname.into(),
            role,
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 1000,
            max_errors: 10,
            max_command_line: 512,
            max_text_line: 1000,
            max_submission_line: 64 * 1024,
            starttls: false,
            auth: false,
        }
    }
}

/// What policy may look at when deciding on MAIL and RCPT.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub role: Role,
    pub client_ip: IpAddr,
    /// The client is in `[relay].trusted_networks`.
    pub trusted: bool,
    pub helo: Option<String>,
    pub authenticated_as: Option<String>,
    pub tls: Option<String>,
}

/// Decisions that depend on configuration or on the state of the system.
pub trait Policy: Send + Sync {
    /// Called for MAIL FROM after it parsed.
    fn check_mail(&self, info: &SessionInfo, from: &ReversePath, declared_size: Option<u64>) -> Result<(), Reply>;
    /// Called for RCPT TO after it parsed; returns the mailbox to deliver to.
    fn check_rcpt(&self, info: &SessionInfo, to: &Path) -> Result<Mailbox, Reply>;
    /// Called for a recipient [`Policy::check_rcpt`] accepted, with the
    /// transaction's sender (the suppression list is per sending domain).
    fn check_rcpt_from(&self, _info: &SessionInfo, _from: &ReversePath, _to: &Mailbox) -> Result<(), Reply> {
        Ok(())
    }
}

/// Something the driver must do.
#[derive(Debug)]
pub enum Action {
    Reply(Reply),
    /// Store this message durably, then call [`Session::transaction_done`].
    Enqueue(Box<Incoming>),
    /// Flush pending replies and close the connection.
    Close,
    /// Flush pending replies, then run the TLS handshake and call
    /// [`Session::tls_established`]. Nothing more is read in clear text.
    StartTls,
    /// Check these credentials, then call [`Session::auth_done`].
    Authenticate(Credentials),
}

/// What the client presented with AUTH.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub mechanism: &'static str,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password, not even in a debug log.
        write!(f, "Credentials {{ mechanism: {}, username: {:?} }}", self.mechanism, self.username)
    }
}

/// The driver's verdict on [`Action::Authenticate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    /// The user is who they claim; the name to record.
    Accepted(String),
    /// Wrong user or password (never says which).
    Rejected,
    /// Too many failures: `454 4.7.0` without checking the password.
    Throttled,
}

/// A complete message handed over for storage. `envelope.received_at` is
/// zero: the driver owns the clock.
#[derive(Debug)]
pub struct Incoming {
    pub envelope: Envelope,
    pub data: Vec<u8>,
    /// Some line is longer than 998 octets + CRLF (only possible where
    /// [`SessionConfig::max_submission_line`] applies): the message must be
    /// re-encoded before it is signed or relayed.
    pub long_lines: bool,
}

/// Which timeout applies while the session waits for input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    Command,
    Data,
    /// Waiting for the driver, not the client.
    Driver,
    Closed,
}

enum Step {
    /// Input was consumed up to here; keep going.
    Continue(usize),
    /// Need more input; bytes before this index are consumed.
    Wait(usize),
}

struct Transaction {
    sender: ReversePath,
    params: MailParams,
    recipients: Vec<Recipient>,
    /// Content not yet taken by the driver (see [`Session::take_body`]).
    body: Vec<u8>,
    /// BDAT octets received so far, including what the driver took.
    size: u64,
    check: ContentCheck,
    bdat: Option<BdatScanner>,
}

enum State {
    /// No EHLO/HELO yet.
    Greeted,
    Ready,
    Mail(Transaction),
    Data(Transaction, DataReader),
    /// Reading a BDAT chunk; `tx` is `None` when the chunk is only being
    /// skipped because the command was refused.
    Chunk {
        tx: Option<Transaction>,
        remaining: u64,
        last: bool,
        refusal: Option<Reply>,
    },
    Enqueuing,
    /// STARTTLS accepted; waiting for the driver's handshake.
    Handshake,
    /// Waiting for the client's next SASL line.
    AuthExchange(auth::Step),
    /// Waiting for the driver to check credentials.
    AuthPending,
    Closed,
}

pub struct Session {
    config: Arc<SessionConfig>,
    policy: Arc<dyn Policy>,
    info: SessionInfo,
    esmtp: bool,
    state: State,
    input: Vec<u8>,
    /// Dropping the rest of an overlong command line.
    skipping_line: bool,
    errors: u32,
    /// MAIL commands accepted so far.
    serial: u64,
    shutting_down: bool,
    actions: Vec<Action>,
}

impl Session {
    pub fn new(config: Arc<SessionConfig>, policy: Arc<dyn Policy>, client_ip: IpAddr, trusted: bool) -> Self {
        let info = SessionInfo { role: config.role, client_ip, trusted, helo: None, authenticated_as: None, tls: None };
        Session {
            config,
            policy,
            info,
            esmtp: false,
            state: State::Greeted,
            input: Vec::new(),
            skipping_line: false,
            errors: 0,
            serial: 0,
            shutting_down: false,
            actions: Vec::new(),
        }
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// The 220 greeting, or a 421 when the server is refusing this client.
    pub fn greeting(&mut self) -> Vec<Action> {
        let text = format!("{} ESMTP mailgate", self.config.hostname);
        self.reply(Reply::bare(220, vec![text]));
        self.take()
    }

    pub fn waiting(&self) -> Waiting {
        match self.state {
            State::Closed => Waiting::Closed,
            State::Enqueuing | State::Handshake | State::AuthPending => Waiting::Driver,
            State::Data(..) | State::Chunk { .. } => Waiting::Data,
            _ => Waiting::Command,
        }
    }

    /// Feeds bytes read from the client.
    pub fn receive(&mut self, bytes: &[u8]) -> Vec<Action> {
        self.input.extend_from_slice(bytes);
        self.process();
        self.take()
    }

    /// Reports the outcome of an [`Action::Enqueue`]: the queue id, or the
    /// reply to send instead (a 451 on a write failure, a 550 from checks).
    pub fn transaction_done(&mut self, result: Result<QueueId, Reply>) -> Vec<Action> {
        if !matches!(self.state, State::Enqueuing) {
            return self.take();
        }
        self.state = State::Ready;
        match result {
            Ok(id) => self.reply(Reply::new(250, status::OK, format!("Ok: queued as {id}"))),
            Err(reply) => self.reply(reply),
        }
        if self.shutting_down {
            self.close_with(Reply::new(421, status::SHUTTING_DOWN, format!("{} Service shutting down", self.config.hostname)));
        } else {
            self.process();
        }
        self.take()
    }

    /// The client said nothing for too long (RFC 5321 §4.5.3.2).
    pub fn timeout(&mut self) -> Vec<Action> {
        self.timeout_because("Timeout exceeded")
    }

    /// A deadline passed (`why` says which): `421 4.4.2` and close.
    pub fn timeout_because(&mut self, why: &str) -> Vec<Action> {
        if matches!(self.state, State::Closed) {
            return self.take();
        }
        self.close_with(Reply::new(421, status::TIMEOUT, format!("{} {why}, closing connection", self.config.hostname)));
        self.take()
    }

    /// Part of a command (or SASL) line has arrived but not its end: the
    /// driver's command deadline runs from its first byte.
    pub fn line_pending(&self) -> bool {
        !self.input.is_empty() || self.skipping_line
    }

    /// The server is stopping: close now if idle, else after the current
    /// transaction completes.
    pub fn shutdown(&mut self) -> Vec<Action> {
        self.shutting_down = true;
        if matches!(self.state, State::Greeted | State::Ready) {
            self.close_with(Reply::new(421, status::SHUTTING_DOWN, format!("{} Service shutting down", self.config.hostname)));
        }
        self.take()
    }

    /// Octets of message content the session holds in memory for the
    /// current transaction.
    pub fn buffered_body(&self) -> usize {
        self.transaction().map_or(0, |tx| tx.body.len())
    }

    /// Takes the content buffered so far, so the driver can move it to
    /// disk; later content is appended after it. The message the session
    /// finally hands over ([`Incoming::data`]) holds only what was not taken.
    pub fn take_body(&mut self) -> Vec<u8> {
        self.transaction_mut().map(|tx| std::mem::take(&mut tx.body)).unwrap_or_default()
    }

    /// The driver cannot keep this transaction's content (its memory
    /// budget ran out, the disk is full): what is buffered is dropped, the
    /// rest is read and discarded, and the client gets `reply` where the
    /// transaction would have ended (after DATA's end, or for the current
    /// or next BDAT chunk).
    pub fn refuse_content(&mut self, reply: Reply) {
        let check = match &mut self.state {
            State::Data(tx, reader) => {
                tx.body = Vec::new();
                &mut reader.check
            }
            State::Chunk { tx: Some(tx), .. } => {
                tx.body = Vec::new();
                &mut tx.check
            }
            State::Mail(tx) if tx.bdat.is_some() => {
                tx.body = Vec::new();
                &mut tx.check
            }
            _ => return,
        };
        check.refused.get_or_insert(reply);
    }

    /// [`Session::refuse_content`] for an exhausted memory budget: `451 4.3.2`.
    pub fn over_budget(&mut self) {
        self.refuse_content(over_budget_reply());
    }

    /// Counts accepted MAIL commands: tells the driver whether content it
    /// moved to disk still belongs to the current transaction.
    pub fn transaction_serial(&self) -> u64 {
        self.serial
    }

    /// A transaction (MAIL accepted, not yet finished) is open.
    pub fn in_transaction(&self) -> bool {
        self.transaction().is_some()
    }

    fn transaction(&self) -> Option<&Transaction> {
        match &self.state {
            State::Mail(tx) | State::Data(tx, _) | State::Chunk { tx: Some(tx), .. } => Some(tx),
            _ => None,
        }
    }

    fn transaction_mut(&mut self) -> Option<&mut Transaction> {
        match &mut self.state {
            State::Mail(tx) | State::Data(tx, _) | State::Chunk { tx: Some(tx), .. } => Some(tx),
            _ => None,
        }
    }

    /// The longest text line accepted in DATA and BDAT, CRLF included:
    /// longer on submission and from trusted networks, RFC 5321's 1000
    /// octets for anyone else.
    fn line_limit(&self) -> usize {
        if self.config.role != Role::Mx || self.info.trusted {
            self.config.max_submission_line.max(self.config.max_text_line)
        } else {
            self.config.max_text_line
        }
    }

    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    fn reply(&mut self, reply: Reply) {
        if reply.code >= 400 {
            self.errors += 1;
        }
        self.actions.push(Action::Reply(reply));
    }

    fn close_with(&mut self, reply: Reply) {
        self.actions.push(Action::Reply(reply));
        self.actions.push(Action::Close);
        self.state = State::Closed;
        self.input.clear();
    }

    fn process(&mut self) {
        let mut pos = 0;
        let keep_from = loop {
            let step = match self.state {
                State::Closed => break self.input.len(),
                // RFC 3207 §5: whatever was pipelined after STARTTLS
                // arrived in clear text before the handshake. Drop it.
                State::Handshake => break self.input.len(),
                State::Enqueuing | State::AuthPending => break pos,
                State::AuthExchange(_) => self.next_auth_line(pos),
                State::Data(..) => self.feed_data(pos),
                State::Chunk { .. } => self.feed_chunk(pos),
                _ => self.next_command(pos),
            };
            match step {
                Step::Continue(next) => pos = next,
                Step::Wait(keep_from) => break keep_from,
            }
        };
        if matches!(self.state, State::Closed) {
            self.input.clear();
        } else {
            self.input.drain(..keep_from.min(self.input.len()));
        }
    }

    /// Takes one command line starting at `pos`.
    fn next_command(&mut self, pos: usize) -> Step {
        // Closing after repeated errors also stops cross-protocol attacks
        // that shovel junk at us line by line, whatever the junk looks like.
        if self.errors >= self.config.max_errors && pos < self.input.len() {
            self.close_with(Reply::new(421, status::TEMP_POLICY, format!("{} Too many errors, closing connection", self.config.hostname)));
            return Step::Wait(self.input.len());
        }
        let rest = &self.input[pos..];
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > self.config.max_command_line || self.skipping_line {
                if !self.skipping_line {
                    self.reply(Reply::new(500, status::SYNTAX, "Line too long"));
                }
                // Drop the partial line; the rest of it is dropped when it comes.
                self.skipping_line = true;
                return Step::Wait(self.input.len());
            }
            return Step::Wait(pos);
        };
        let next = pos + lf + 1;
        if std::mem::take(&mut self.skipping_line) {
            return Step::Continue(next);
        }
        let line = &rest[..lf];
        let Some(line) = line.strip_suffix(b"\r") else {
            // A web client speaks with bare LFs too: drop it like one.
            if command::parse(line) == Err(CommandError::Forbidden) {
                self.close_with(Reply::new(
                    421,
                    status::TEMP_POLICY,
                    format!("{} This is an SMTP server, closing connection", self.config.hostname),
                ));
                return Step::Continue(next);
            }
            self.reply(Reply::new(500, status::SYNTAX, "Bare LF received; commands must end with CRLF"));
            return Step::Continue(next);
        };
        if line.len() + 2 > self.config.max_command_line {
            self.reply(Reply::new(500, status::SYNTAX, "Line too long"));
            return Step::Continue(next);
        }
        if line.contains(&b'\r') || line.contains(&0) {
            self.reply(Reply::new(500, status::SYNTAX, "Bare CR or NUL in command"));
            return Step::Continue(next);
        }
        let line = line.to_vec();
        if self.shutting_down && matches!(self.state, State::Greeted | State::Ready) {
            self.close_with(Reply::new(421, status::SHUTTING_DOWN, format!("{} Service shutting down", self.config.hostname)));
            return Step::Continue(next);
        }
        self.command(&line);
        Step::Continue(next)
    }

    fn command(&mut self, line: &[u8]) {
        let is_mail = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"MAIL");
        match command::parse(line) {
            Ok(cmd) => self.execute(cmd),
            Err(CommandError::Unknown) => self.reply(Reply::new(500, status::INVALID_COMMAND, "Command unrecognized")),
            Err(CommandError::Forbidden) => self.close_with(Reply::new(
                421,
                status::TEMP_POLICY,
                format!("{} This is an SMTP server, closing connection", self.config.hostname),
            )),
            Err(CommandError::Syntax(why)) => self.reply(Reply::new(501, status::BAD_ARGS, format!("Syntax error: {why}"))),
            Err(CommandError::UnknownParam(p)) => self.reply(Reply::new(555, status::BAD_ARGS, format!("Parameter not recognized: {p}"))),
            Err(CommandError::Address(AddressError::NeedsUtf8)) => {
                self.reply(Reply::new(553, status::NEED_UTF8, "Non-ASCII address requires SMTPUTF8"))
            }
            Err(CommandError::Address(e)) => {
                let code = if is_mail { status::BAD_SENDER_SYNTAX } else { status::BAD_DEST_SYNTAX };
                self.reply(Reply::new(501, code, format!("Bad address syntax: {e}")))
            }
        }
    }

    fn execute(&mut self, cmd: Command) {
        match cmd {
            Command::Ehlo(name) => self.helo(name, true),
            Command::Helo(name) => self.helo(name, false),
            Command::Mail(path, params) => self.mail(path, params),
            Command::Rcpt(path, params) => self.rcpt(path, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                if !matches!(self.state, State::Greeted) {
                    self.state = State::Ready;
                }
                self.reply(Reply::new(250, status::OK, "Ok"));
            }
            Command::Noop => self.reply(Reply::new(250, status::OK, "Ok")),
            Command::Quit => self.close_with(Reply::new(221, status::OK, format!("{} Bye", self.config.hostname))),
            Command::Vrfy => {
                self.reply(Reply::new(252, status::VRFY_CANNOT, "Cannot VRFY user, but will accept message and attempt delivery"))
            }
            Command::Expn => self.reply(Reply::new(502, status::INVALID_COMMAND, "EXPN is not supported")),
            Command::Help => {
                self.reply(Reply::new(214, status::OK, "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP; see RFC 5321"))
            }
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial),
        }
    }

    fn helo(&mut self, name: String, extended: bool) {
        self.state = State::Ready;
        self.esmtp = extended;
        let host = &self.config.hostname;
        let first = format!("{host} Hello {name} [{}]", self.info.client_ip);
        self.info.helo = Some(name);
        if !extended {
            self.reply(Reply::bare(250, vec![first]));
            return;
        }
        let mut lines = vec![
            first,
            "PIPELINING".into(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if self.config.starttls && self.info.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        self.reply(Reply::bare(250, lines));
    }

    fn mail(&mut self, path: Path, params: MailParams) {
        match self.state {
            State::Greeted => {
                return self.reply(Reply::new(503, status::INVALID_COMMAND, "Send EHLO or HELO first"));
            }
            State::Ready => {}
            _ => {
                return self.reply(Reply::new(503, status::INVALID_COMMAND, "Nested MAIL command"));
            }
        }
        let extended = params != MailParams::default();
        if extended && !self.esmtp {
            return self.reply(Reply::new(555, status::BAD_ARGS, "MAIL parameters need EHLO"));
        }
        let sender = match path {
            Path::Null => ReversePath::Null,
            // The source route is ignored, as RFC 5321 §4.1.1.2 says.
            Path::Mailbox { mailbox, .. } => ReversePath::Mailbox(mailbox),
            Path::Postmaster => {
                return self.reply(Reply::new(501, status::BAD_SENDER_SYNTAX, "Bad sender address syntax"));
            }
        };
        if params.size.is_some_and(|s| s > self.config.max_message_size) {
            return self.reply(Reply::new(552, status::MSG_TOO_BIG, "Message size exceeds fixed maximum message size"));
        }
        if let Err(reply) = self.policy.check_mail(&self.info, &sender, params.size) {
            return self.reply(reply);
        }
        self.serial += 1;
        self.state = State::Mail(Transaction {
            sender,
            params,
            recipients: Vec::new(),
            body: Vec::new(),
            size: 0,
            check: ContentCheck::default(),
            bdat: None,
        });
        self.reply(Reply::new(250, status::SENDER_OK, "Ok"));
    }

    fn rcpt(&mut self, path: Path, params: command::RcptParams) {
        let State::Mail(tx) = &self.state else {
            return self.reply(Reply::new(503, status::INVALID_COMMAND, "Need MAIL command"));
        };
        if tx.bdat.is_some() {
            return self.reply(Reply::new(503, status::INVALID_COMMAND, "RCPT not allowed after BDAT"));
        }
        if tx.recipients.len() >= self.config.max_recipients {
            // 452 makes the client send the rest in another transaction
            // (RFC 5321 §4.5.3.1.10).
            // Not counted as an error: the client is doing what RFC 5321
            // asks and will send the rest in another transaction.
            self.actions.push(Action::Reply(Reply::new(452, status::TOO_MANY_RCPTS, "Too many recipients")));
            return;
        }
        if let Path::Mailbox { mailbox, .. } = &path
            && !mailbox.is_ascii()
            && !tx.params.smtputf8
        {
            return self.reply(Reply::new(553, status::NEED_UTF8, "Non-ASCII address requires SMTPUTF8"));
        }
        let mailbox = match self.policy.check_rcpt(&self.info, &path) {
            Ok(m) => m,
            Err(reply) => return self.reply(reply),
        };
        if let Err(reply) = self.policy.check_rcpt_from(&self.info, &tx.sender, &mailbox) {
            return self.reply(reply);
        }
        let State::Mail(tx) = &mut self.state else {
            return;
        };
        if !tx.recipients.iter().any(|r| r.address == mailbox) {
            let mut r = Recipient::new(mailbox);
            r.notify = params.notify;
            r.orcpt = params.orcpt;
            tx.recipients.push(r);
        }
        self.reply(Reply::new(250, status::RCPT_OK, "Ok"));
    }
}

/// `451 4.3.2`: the server's in-flight memory budget is exhausted.
pub fn over_budget_reply() -> Reply {
    Reply::new(451, status::OVERLOADED, "Insufficient system resources for this message now; try again later")
}

#[cfg(test)]
mod tests;
