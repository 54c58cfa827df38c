//! The SMTP command line parser (RFC 5321 §4.1) and ESMTP parameters:
//! SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531), DSN (RFC 3461),
//! AUTH= (RFC 4954) and BDAT (RFC 3030).
//!
//! Input is one command line without its CRLF. Line framing (and refusing
//! bare CR or LF) happens in the session before a line gets here.

use thiserror::Error;

use crate::address::{AddressError, Path, parse_path};
use crate::envelope::{BodyType, Notify, Orcpt, Ret};
use crate::xtext;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail(Path, MailParams),
    Rcpt(Path, RcptParams),
    Data,
    Bdat { size: u64, last: bool },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth { mechanism: String, initial: Option<String> },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// RFC 4954 `AUTH=`; `Some(None)` is `AUTH=<>`.
    pub auth: Option<Option<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    pub orcpt: Option<Orcpt>,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CommandError {
    #[error("command unrecognized")]
    Unknown,
    /// A verb used by other protocols (HTTP), a sign of a cross-protocol attack.
    #[error("command from another protocol")]
    Forbidden,
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    #[error("parameter not recognized: {0}")]
    UnknownParam(String),
    #[error("bad address: {0}")]
    Address(#[from] AddressError),
}

/// Verbs that only appear when a web client or proxy has been pointed at an
/// SMTP port; Postfix drops these connections too.
const FORBIDDEN_VERBS: &[&str] = &["GET", "POST", "PUT", "HEAD", "CONNECT", "OPTIONS", "USER-AGENT:", "HOST:"];

pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::Syntax("invalid UTF-8"))?;
    let (verb, arg) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let upper = verb.to_ascii_uppercase();
    let no_arg = |cmd: Command| {
        if arg.trim().is_empty() { Ok(cmd) } else { Err(CommandError::Syntax("no parameters allowed")) }
    };
    match upper.as_str() {
        "EHLO" => Ok(Command::Ehlo(parse_helo(arg)?)),
        "HELO" => Ok(Command::Helo(parse_helo(arg)?)),
        "MAIL" => parse_mail(arg),
        "RCPT" => parse_rcpt(arg),
        "DATA" => no_arg(Command::Data),
        "BDAT" => parse_bdat(arg),
        "RSET" => no_arg(Command::Rset),
        // NOOP, HELP and VRFY may carry an argument that is ignored.
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_arg(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_arg(Command::StartTls),
        "AUTH" => parse_auth(arg),
        v if FORBIDDEN_VERBS.contains(&v) => Err(CommandError::Forbidden),
        _ => Err(CommandError::Unknown),
    }
}

fn parse_helo(arg: &str) -> Result<String, CommandError> {
    let arg = arg.trim();
    if arg.is_empty() {
        return Err(CommandError::Syntax("EHLO/HELO needs a hostname"));
    }
    if arg.contains(' ') || !arg.bytes().all(|b| b.is_ascii_graphic() || b >= 0x80) {
        return Err(CommandError::Syntax("invalid hostname"));
    }
    Ok(arg.to_string())
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

fn params(rest: &str) -> impl Iterator<Item = (String, Option<&str>)> {
    rest.split(' ').filter(|p| !p.is_empty()).map(|p| match p.find('=') {
        Some(i) => (p[..i].to_ascii_uppercase(), Some(&p[i + 1..])),
        None => (p.to_ascii_uppercase(), None),
    })
}

fn parse_mail(arg: &str) -> Result<Command, CommandError> {
    let rest = strip_prefix_ci(arg, "FROM:").ok_or(CommandError::Syntax("expected MAIL FROM:<address>"))?;
    let (path, rest) = parse_path(rest, true)?;
    let mut p = MailParams::default();
    for (key, value) in params(rest) {
        let dup = || CommandError::Syntax("duplicate parameter");
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                // RFC 1870 allows 20 digits; anything beyond u64 is simply too big.
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CommandError::Syntax("SIZE needs a number"));
                }
                let n = v.parse().unwrap_or(u64::MAX);
                if p.size.replace(n).is_some() {
                    return Err(dup());
                }
            }
            ("BODY", Some(v)) => {
                let body = match v.to_ascii_uppercase().as_str() {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    _ => return Err(CommandError::UnknownParam(format!("BODY={v}"))),
                };
                if p.body.replace(body).is_some() {
                    return Err(dup());
                }
            }
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("RET", Some(v)) => {
                let ret = match v.to_ascii_uppercase().as_str() {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Hdrs,
                    _ => return Err(CommandError::Syntax("RET must be FULL or HDRS")),
                };
                if p.ret.replace(ret).is_some() {
                    return Err(dup());
                }
            }
            ("ENVID", Some(v)) => {
                // RFC 3461 §4.4: at most 100 characters of xtext.
                if v.len() > 100 {
                    return Err(CommandError::Syntax("ENVID too long"));
                }
                let id = xtext::decode(v).ok_or(CommandError::Syntax("ENVID is not valid xtext"))?;
                if p.envid.replace(id).is_some() {
                    return Err(dup());
                }
            }
            ("AUTH", Some(v)) => {
                let who = if v == "<>" { None } else { Some(xtext::decode(v).ok_or(CommandError::Syntax("AUTH= is not valid xtext"))?) };
                p.auth = Some(who);
            }
            _ => return Err(CommandError::UnknownParam(key)),
        }
    }
    if !p.smtputf8
        && let Path::Mailbox { mailbox, .. } = &path
        && !mailbox.is_ascii()
    {
        return Err(AddressError::NeedsUtf8.into());
    }
    Ok(Command::Mail(path, p))
}

fn parse_rcpt(arg: &str) -> Result<Command, CommandError> {
    let rest = strip_prefix_ci(arg, "TO:").ok_or(CommandError::Syntax("expected RCPT TO:<address>"))?;
    let (path, rest) = parse_path(rest, true)?;
    if path == Path::Null {
        return Err(AddressError::Empty.into());
    }
    let mut p = RcptParams::default();
    for (key, value) in params(rest) {
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => {
                let n = Notify::parse(v).ok_or(CommandError::Syntax("NOTIFY must be NEVER or SUCCESS,FAILURE,DELAY"))?;
                if p.notify.replace(n).is_some() {
                    return Err(CommandError::Syntax("duplicate parameter"));
                }
            }
            ("ORCPT", Some(v)) => {
                let (kind, addr) = v.split_once(';').ok_or(CommandError::Syntax("ORCPT needs addr-type;address"))?;
                if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Err(CommandError::Syntax("bad ORCPT address type"));
                }
                let addr = xtext::decode(addr).ok_or(CommandError::Syntax("ORCPT is not valid xtext"))?;
                let orcpt = Orcpt { addr_type: kind.to_ascii_lowercase(), address: addr };
                if p.orcpt.replace(orcpt).is_some() {
                    return Err(CommandError::Syntax("duplicate parameter"));
                }
            }
            _ => return Err(CommandError::UnknownParam(key)),
        }
    }
    Ok(Command::Rcpt(path, p))
}

fn parse_bdat(arg: &str) -> Result<Command, CommandError> {
    let mut parts = arg.split(' ').filter(|s| !s.is_empty());
    let size = parts
        .next()
        .filter(|s| s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or(CommandError::Syntax("BDAT needs a chunk size"))?;
    let last = match parts.next() {
        None => false,
        Some(s) if s.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("expected BDAT size [LAST]")),
    };
    if parts.next().is_some() {
        return Err(CommandError::Syntax("expected BDAT size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(arg: &str) -> Result<Command, CommandError> {
    let mut parts = arg.split(' ').filter(|s| !s.is_empty());
    let mechanism = parts.next().ok_or(CommandError::Syntax("AUTH needs a mechanism"))?;
    let initial = parts.next().map(str::to_string);
    if parts.next().is_some() {
        return Err(CommandError::Syntax("expected AUTH mechanism [initial-response]"));
    }
    Ok(Command::Auth { mechanism: mechanism.to_ascii_uppercase(), initial })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_with_dsn_params() {
        let c = parse(b"MAIL FROM:<a@x.test> SIZE=100 RET=HDRS ENVID=ab+2Bc BODY=8BITMIME").unwrap();
        let Command::Mail(_, p) = c else { panic!() };
        assert_eq!(p.size, Some(100));
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("ab+c"));
        assert_eq!(p.body, Some(BodyType::EightBitMime));
    }

    #[test]
    fn rcpt_with_dsn_params() {
        let c = parse(b"rcpt to:<b@y.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+40y.test").unwrap();
        let Command::Rcpt(_, p) = c else { panic!() };
        let n = p.notify.unwrap();
        assert!(n.success && n.delay && !n.failure);
        assert_eq!(p.orcpt.unwrap().address, "b@y.test");
    }

    #[test]
    fn errors() {
        assert_eq!(parse(b"FOO"), Err(CommandError::Unknown));
        assert_eq!(parse(b"GET / HTTP/1.1"), Err(CommandError::Forbidden));
        assert!(matches!(parse(b"MAIL FROM:<a@x.test> FOO=1"), Err(CommandError::UnknownParam(_))));
        assert!(matches!(parse(b"MAIL FROM:<a@x.test> BODY=BINARYMIME"), Err(CommandError::UnknownParam(_))));
        assert!(matches!(parse(b"RCPT TO:<b@y.test> NOTIFY=NEVER,SUCCESS"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse(b"BDAT x"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse(b"STARTTLS now"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse(b"MAIL FROM:<\xce\xb4@x.test>"), Err(CommandError::Address(AddressError::NeedsUtf8))));
        assert!(parse("MAIL FROM:<δ@x.test> SMTPUTF8".as_bytes()).is_ok());
    }

    #[test]
    fn bdat() {
        assert_eq!(parse(b"BDAT 10 LAST"), Ok(Command::Bdat { size: 10, last: true }));
        assert_eq!(parse(b"BDAT 0"), Ok(Command::Bdat { size: 0, last: false }));
        assert!(parse(b"BDAT 99999999999999999999999").is_err());
    }
}
