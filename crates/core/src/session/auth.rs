//! STARTTLS (RFC 3207) and SMTP AUTH (RFC 4954) in the session.
//!
//! The session only runs the exchange; the driver runs the TLS handshake
//! and checks credentials (slowly, on purpose: argon2id and throttling),
//! then reports back.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{Action, AuthVerdict, Credentials, Session, State, Step as Input};
use crate::reply::{Reply, status};

/// RFC 4954 §4: a SASL line may be up to 12288 octets.
const MAX_AUTH_LINE: usize = 12288;

/// Where a multi-step SASL exchange stands.
pub(super) enum Step {
    PlainResponse,
    LoginUser,
    LoginPassword { user: String },
}

fn decode(line: &[u8]) -> Option<Vec<u8>> {
    if line == b"=" {
        return Some(Vec::new());
    }
    STANDARD.decode(line).ok()
}

impl Session {
    pub(super) fn auth_offered(&self) -> bool {
        self.config.auth && self.info.tls.is_some() && self.info.authenticated_as.is_none()
    }

    pub(super) fn starttls(&mut self) {
        if self.info.tls.is_some() {
            return self.reply(Reply::new(503, status::INVALID_COMMAND, "TLS is already active"));
        }
        if !self.config.starttls {
            return self.reply(Reply::new(502, status::INVALID_COMMAND, "STARTTLS not available"));
        }
        if !matches!(self.state, State::Ready) {
            return self.reply(Reply::new(503, status::INVALID_COMMAND, "Send EHLO first, and STARTTLS outside a transaction"));
        }
        self.reply(Reply::new(220, status::OK, "Ready to start TLS"));
        self.state = State::Handshake;
        self.actions.push(Action::StartTls);
    }

    /// The handshake succeeded. Everything learnt in clear text is
    /// forgotten; the client must say EHLO again (RFC 3207 §4.2).
    pub fn tls_established(&mut self, description: String) -> Vec<Action> {
        if matches!(self.state, State::Handshake) {
            self.info.tls = Some(description);
            self.info.helo = None;
            self.info.authenticated_as = None;
            self.esmtp = false;
            self.input.clear();
            self.state = State::Greeted;
        }
        self.take()
    }

    /// For listeners that speak TLS from the first byte.
    pub fn set_tls(&mut self, description: String) {
        self.info.tls = Some(description);
    }

    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<String>) {
        if !self.config.auth {
            return self.reply(Reply::new(503, status::INVALID_COMMAND, "AUTH not available on this port"));
        }
        if self.info.tls.is_none() {
            // RFC 4954 §6: 538 for "encryption required".
            return self.reply(Reply::new(
                538,
                crate::reply::StatusCode::new(5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        if self.info.authenticated_as.is_some() {
            return self.reply(Reply::new(503, status::INVALID_COMMAND, "Already authenticated"));
        }
        if !matches!(self.state, State::Ready) {
            return self.reply(Reply::new(503, status::INVALID_COMMAND, "AUTH not allowed during a mail transaction"));
        }
        match (mechanism, initial) {
            ("PLAIN", Some(resp)) => self.plain(resp.as_bytes()),
            ("PLAIN", None) => {
                self.state = State::AuthExchange(Step::PlainResponse);
                self.actions.push(Action::Reply(Reply::bare(334, vec![String::new()])));
            }
            ("LOGIN", Some(user)) => match decode(user.as_bytes()).and_then(|u| String::from_utf8(u).ok()) {
                Some(user) => self.ask_password(user),
                None => self.reply(Reply::new(501, status::SYNTAX, "Invalid base64 data")),
            },
            ("LOGIN", None) => {
                self.state = State::AuthExchange(Step::LoginUser);
                self.actions.push(Action::Reply(Reply::bare(334, vec![STANDARD.encode("Username:")])));
            }
            _ => self.reply(Reply::new(504, status::BAD_ARGS, "Unrecognized authentication mechanism")),
        }
    }

    fn ask_password(&mut self, user: String) {
        self.state = State::AuthExchange(Step::LoginPassword { user });
        self.actions.push(Action::Reply(Reply::bare(334, vec![STANDARD.encode("Password:")])));
    }

    /// `authzid NUL authcid NUL password` (RFC 4616).
    fn plain(&mut self, response: &[u8]) {
        let Some(raw) = decode(response) else {
            self.state = State::Ready;
            return self.reply(Reply::new(501, status::SYNTAX, "Invalid base64 data"));
        };
        let parts: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
        let [authz, user, pass] = parts.as_slice() else {
            self.state = State::Ready;
            return self.reply(Reply::new(501, status::SYNTAX, "Malformed PLAIN response"));
        };
        let (Ok(user), Ok(pass)) = (std::str::from_utf8(user), std::str::from_utf8(pass)) else {
            self.state = State::Ready;
            return self.reply(Reply::new(501, status::SYNTAX, "Malformed PLAIN response"));
        };
        // Acting for someone else is not supported: the authorization
        // identity must be empty or the user's own.
        if !authz.is_empty() && *authz != user.as_bytes() {
            self.state = State::Ready;
            return self.reply(Reply::new(535, crate::reply::StatusCode::new(5, 7, 8), "Authentication credentials invalid"));
        }
        self.verify("PLAIN", user.to_string(), pass.to_string());
    }

    fn verify(&mut self, mechanism: &'static str, username: String, password: String) {
        self.state = State::AuthPending;
        self.actions.push(Action::Authenticate(Credentials { mechanism, username, password }));
    }

    /// Takes one SASL continuation line.
    pub(super) fn next_auth_line(&mut self, pos: usize) -> Input {
        let rest = &self.input[pos..];
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_AUTH_LINE {
                self.state = State::Ready;
                self.reply(Reply::new(500, status::SYNTAX, "Line too long"));
                self.skipping_line = true;
                return Input::Wait(self.input.len());
            }
            return Input::Wait(pos);
        };
        let next = pos + lf + 1;
        let line = rest[..lf].strip_suffix(b"\r").unwrap_or(&rest[..lf]).to_vec();
        let State::AuthExchange(step) = std::mem::replace(&mut self.state, State::Ready) else { return Input::Continue(next) };
        if line == b"*" {
            self.reply(Reply::new(501, crate::reply::StatusCode::new(5, 0, 0), "Authentication cancelled"));
            return Input::Continue(next);
        }
        match step {
            Step::PlainResponse => self.plain(&line),
            Step::LoginUser => match decode(&line).and_then(|u| String::from_utf8(u).ok()) {
                Some(user) => self.ask_password(user),
                None => self.reply(Reply::new(501, status::SYNTAX, "Invalid base64 data")),
            },
            Step::LoginPassword { user } => match decode(&line).and_then(|p| String::from_utf8(p).ok()) {
                Some(pass) => self.verify("LOGIN", user, pass),
                None => self.reply(Reply::new(501, status::SYNTAX, "Invalid base64 data")),
            },
        }
        Input::Continue(next)
    }

    /// The driver's verdict on the credentials.
    pub fn auth_done(&mut self, verdict: AuthVerdict) -> Vec<Action> {
        if !matches!(self.state, State::AuthPending) {
            return self.take();
        }
        self.state = State::Ready;
        match verdict {
            AuthVerdict::Accepted(user) => {
                self.info.authenticated_as = Some(user);
                self.actions.push(Action::Reply(Reply::new(235, crate::reply::StatusCode::new(2, 7, 0), "Authentication successful")));
            }
            AuthVerdict::Rejected => {
                self.reply(Reply::new(535, crate::reply::StatusCode::new(5, 7, 8), "Authentication credentials invalid"))
            }
            // RFC 4954 §6: 454 4.7.0 is a temporary failure, so the client
            // may try later; the connection stays open (max_errors still
            // closes it), and a correct password is not told apart.
            AuthVerdict::Throttled => self.reply(Reply::new(
                454,
                crate::reply::StatusCode::new(4, 7, 0),
                "Temporary authentication failure: too many failures from your address; try again later",
            )),
        }
        self.process();
        self.take()
    }
}
