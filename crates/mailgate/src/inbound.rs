//! The inbound driver: runs one SMTP session over one connection.
//!
//! It moves bytes between the socket and the sans-I/O session in
//! `mailgate-core`, applies timeouts, and carries out the session's actions:
//! replies are written in order, a finished message is stamped with a
//! `Received:` header and stored in the spool, and only the spool's answer
//! decides between 250 and 451/452.
//!
//! May import: `checks`, `spool`, `events`, `config`, `mailgate-core`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailgate_core::received::received_header;
use mailgate_core::reply::{Reply, status};
use mailgate_core::session::{Action, Incoming, Policy, Session, SessionConfig, Waiting};
use mailgate_core::{QueueId, ReversePath};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::checks::auth::Authenticator;
use crate::checks::sender;
use crate::checks::verdict::{Checker, Input, Verdict};
use crate::config::Action as Disposition;
use crate::events::Metrics;
use crate::spool::{Spool, SpoolError};
use crate::tls::{ServerTls, Stream};

/// What every session of one listener shares.
pub struct Inbound {
    pub session: Arc<SessionConfig>,
    pub policy: Arc<dyn Policy>,
    pub spool: Arc<Spool>,
    pub metrics: Arc<Metrics>,
    pub trusted: Vec<ipnet::IpNet>,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// For STARTTLS, or for every connection with `implicit_tls`.
    pub tls: Option<Arc<ServerTls>>,
    pub implicit_tls: bool,
    pub auth: Arc<Authenticator>,
    pub signer: Arc<crate::sign::Signer>,
    /// SPF, DKIM, DMARC, ARC and look-alike checks for inbound mail.
    pub checker: Arc<Checker>,
    /// `[policy].quarantine` is set: quarantined mail goes there.
    pub quarantine: bool,
}

pub async fn run(tcp: TcpStream, peer: SocketAddr, ctx: Arc<Inbound>, mut shutdown: watch::Receiver<bool>) {
    let trusted = ctx.trusted.iter().any(|n| n.contains(&peer.ip()));
    let mut session = Session::new(ctx.session.clone(), ctx.policy.clone(), peer.ip(), trusted);
    let mut stream = Stream::Plain(tcp);
    if ctx.implicit_tls {
        let Some(tls) = ctx.tls.as_ref() else { return };
        match stream.accept_tls(tls, ctx.command_timeout).await {
            Ok((s, description)) => {
                stream = s;
                session.set_tls(description);
            }
            Err(e) => {
                tracing::info!(client = %peer, error = %e, "TLS handshake failed");
                return;
            }
        }
    }
    let mut out = Vec::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = session.greeting();
    tracing::debug!(client = %peer, role = ctx.session.role.as_str(), "connect");
    loop {
        let mut close = false;
        while !pending.is_empty() {
            let mut next = Vec::new();
            for action in pending {
                match action {
                    Action::Reply(r) => r.write_to(&mut out),
                    Action::Close => close = true,
                    Action::Enqueue(incoming) => {
                        // Let the client see earlier replies while we sync.
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                        let info = session.info();
                        // Mail a client may relay is outbound mail: ours to sign.
                        let outbound = info.authenticated_as.is_some() || info.trusted;
                        let result = match check_sender(&ctx, &session, &incoming.data) {
                            Ok(()) => {
                                let helo = info.helo.clone().unwrap_or_default();
                                store(&ctx, peer, &helo, *incoming, outbound).await
                            }
                            Err(reply) => Err(reply),
                        };
                        if result.is_err() {
                            Metrics::inc(&ctx.metrics.messages_refused);
                        }
                        next.extend(session.transaction_done(result));
                    }
                    Action::StartTls => {
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                        let Some(tls) = ctx.tls.as_ref() else { return };
                        match std::mem::replace(&mut stream, Stream::Gone).accept_tls(tls, ctx.command_timeout).await {
                            Ok((s, description)) => {
                                tracing::debug!(client = %peer, tls = %description, "STARTTLS");
                                stream = s;
                                next.extend(session.tls_established(description));
                            }
                            Err(e) => {
                                tracing::info!(client = %peer, error = %e, "TLS handshake failed");
                                return;
                            }
                        }
                    }
                    Action::Authenticate(creds) => {
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                        let (verdict, delay) = ctx.auth.verify(peer.ip(), creds).await;
                        // Slow down a guesser; the delay grows with failures.
                        tokio::time::sleep(delay).await;
                        if let mailgate_core::session::AuthVerdict::Accepted(user) = &verdict {
                            tracing::info!(client = %peer, user = %user, "authenticated");
                        }
                        next.extend(session.auth_done(verdict));
                    }
                }
            }
            pending = next;
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
        let limit = match session.waiting() {
            Waiting::Data => ctx.data_timeout,
            Waiting::Closed => return,
            _ => ctx.command_timeout,
        };
        tokio::select! {
            read = tokio::time::timeout(limit, stream.read(&mut buf)) => {
                pending = match read {
                    Err(_) => {
                        tracing::info!(client = %peer, "timeout");
                        session.timeout()
                    }
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        tracing::debug!(client = %peer, "disconnect");
                        return;
                    }
                    Ok(Ok(n)) => session.receive(&buf[..n]),
                };
            }
            _ = shutdown.changed() => pending = session.shutdown(),
        }
    }
}

/// Prepends DKIM signatures when the `From:` domain is ours. RSA signing
/// takes a while, so it runs off the async threads.
async fn sign(ctx: &Inbound, content: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let signer = ctx.signer.clone();
    tokio::task::spawn_blocking(move || {
        let headers = signer.sign_message(&content)?;
        Ok(match headers {
            Some(h) => {
                let mut out = Vec::with_capacity(h.len() + content.len());
                out.extend_from_slice(h.as_bytes());
                out.extend_from_slice(&content);
                out
            }
            None => content,
        })
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?
}

/// Lines over 998 octets (accepted on submission) are re-encoded before
/// signing: a relay that wrapped them later would break the signature.
async fn reencode(id: &QueueId, content: Vec<u8>) -> Result<Vec<u8>, Reply> {
    let done = tokio::task::spawn_blocking(move || {
        let result = crate::sign::reencode::reencode(&content);
        (content, result)
    })
    .await;
    let refuse = |why: String| Reply::new(550, status::MEDIA, format!("Message refused: {why}"));
    match done {
        Ok((_, Ok(Some(r)))) => {
            tracing::info!(queue_id = %id, parts = %r.parts.join(", "), folded_headers = r.folded, "re-encoded lines over 998 octets");
            Ok(r.message)
        }
        Ok((content, Ok(None))) => Ok(content),
        Ok((_, Err(e))) => {
            tracing::info!(queue_id = %id, error = %e, "message with long lines refused");
            Err(refuse(e.to_string()))
        }
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, "re-encoding failed");
            Err(Reply::new(451, status::SYSTEM_ERROR, "Local error in processing; try again later"))
        }
    }
}

/// On submission: an authenticated user's `From:` must be one mailbox it
/// may send as. Such a message is never signed or relayed otherwise.
fn check_sender(ctx: &Inbound, session: &Session, data: &[u8]) -> Result<(), Reply> {
    let Some(user) = session.info().authenticated_as.as_deref() else { return Ok(()) };
    let from = sender::single_from(data)?;
    if ctx.auth.may_send_as(user, &from) {
        Ok(())
    } else {
        tracing::warn!(user, from = %from, "From: header not allowed for this user");
        Err(Reply::new(550, mailgate_core::reply::StatusCode::new(5, 7, 1), format!("Message refused: you may not send as {from}")))
    }
}

/// Runs the inbound checks and turns a refusal into its reply.
async fn check(ctx: &Inbound, peer: SocketAddr, helo: &str, envelope: &mailgate_core::Envelope, data: &[u8]) -> Result<Verdict, Reply> {
    let mail_from = envelope.sender.mailbox().map(|m| m.to_string()).unwrap_or_default();
    // Until the message streams to disk: a copy split into header block and body.
    let whole = std::sync::Arc::new(data.to_vec());
    let (header_len, body) = crate::checks::body::Body::split(&whole);
    let input = Input { ip: peer.ip(), helo, mail_from: &mail_from, message: whole.get(..header_len), body: Some(body), seal: true };
    let verdict = ctx.checker.check(&input).await;
    let reason = verdict.reason.as_deref().unwrap_or("");
    let dkim: Vec<String> = verdict.dkim.iter().map(|d| format!("{}:{}", d.domain, d.result)).collect();
    tracing::info!(
        client = %peer,
        from = %mail_from,
        spf = verdict.spf.result,
        dkim = %dkim.join(","),
        arc = verdict.arc.result,
        dmarc = verdict.dmarc.result,
        header_from = %verdict.dmarc.from_domain,
        action = verdict.action.as_str(),
        temporary = verdict.temporary,
        reason,
        "checked"
    );
    for f in &verdict.lookalike {
        tracing::warn!(client = %peer, domain = %f.domain, resembles = %f.resembles, rule = %f.rule, "look-alike sender domain");
    }
    match verdict.action {
        Disposition::Reject if verdict.temporary => {
            Err(Reply::new(451, mailgate_core::reply::StatusCode::new(4, 7, 1), format!("{}; try again later", printable(reason))))
        }
        Disposition::Reject => {
            Err(Reply::new(550, mailgate_core::reply::StatusCode::new(5, 7, 1), format!("Message refused: {}", printable(reason))))
        }
        _ => Ok(verdict),
    }
}

fn printable(s: &str) -> String {
    crate::checks::author::printable(s)
}

/// The header fields the checks add: `Authentication-Results`, a finding
/// per look-alike domain, and the action when it is not `accept`.
fn verdict_headers(verdict: &Verdict) -> String {
    let mut h = verdict.arc_seal.clone().unwrap_or_default();
    h.push_str(&verdict.auth_results_header());
    let ascii = |d: &str| idna::domain_to_ascii(d).unwrap_or_else(|_| d.chars().filter(|c| c.is_ascii_graphic() && *c != ';').collect());
    for f in &verdict.lookalike {
        h.push_str(&format!("X-Mailgate-Lookalike: rule={}; domain={}; resembles={}\r\n", f.rule, ascii(&f.domain), ascii(&f.resembles)));
    }
    if verdict.action > Disposition::Accept {
        h.push_str(&format!("X-Mailgate-Action: {} ({})\r\n", verdict.action.as_str(), printable(verdict.reason.as_deref().unwrap_or(""))));
    }
    h
}

async fn store(ctx: &Inbound, peer: SocketAddr, helo: &str, incoming: Incoming, outbound: bool) -> Result<QueueId, Reply> {
    let Incoming { mut envelope, data, long_lines } = incoming;
    // Inbound mail is judged as received, before anything is added.
    let (data, checks) = if outbound {
        (data, String::new())
    } else {
        let verdict = check(ctx, peer, helo, &envelope, &data).await?;
        envelope.quarantine = verdict.action == Disposition::Quarantine && ctx.quarantine;
        let data = match crate::checks::auth_results::strip_forged(&data, ctx.checker.authserv_id()) {
            Some((clean, n)) => {
                tracing::info!(client = %peer, fields = n, "removed incoming header fields claiming our authserv-id");
                clean
            }
            None => data,
        };
        (data, verdict_headers(&verdict))
    };
    let now = SystemTime::now();
    envelope.received_at = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let id = ctx.spool.new_id();
    let date = httpdate::fmt_http_date(now).replace(" GMT", " +0000");
    let mut header = received_header(&ctx.session.hostname, &envelope, &id, &date);
    header.push_str(&checks);
    let mut content = Vec::with_capacity(header.len() + data.len() + 1024);
    content.extend_from_slice(header.as_bytes());
    content.extend_from_slice(&data);
    drop(data);
    if outbound {
        if long_lines {
            content = reencode(&id, content).await?;
        }
        // Signing is the last change before the spool (RFC 6376 §5).
        match sign(ctx, content).await {
            Ok(signed) => content = signed,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "DKIM signing failed");
                return Err(Reply::new(451, status::SYSTEM_ERROR, "Local error in processing; try again later"));
            }
        }
    }
    let sender = match &envelope.sender {
        ReversePath::Null => "<>".to_string(),
        ReversePath::Mailbox(m) => m.to_string(),
    };
    let rcpts = envelope.recipients.iter().map(|r| r.address.to_string()).collect::<Vec<_>>().join(",");
    let size = content.len();
    match ctx.spool.store(&id, envelope, &content).await {
        Ok(()) => {
            Metrics::inc(&ctx.metrics.messages_accepted);
            Metrics::add(&ctx.metrics.bytes_accepted, size as u64);
            tracing::info!(queue_id = %id, client = %peer, from = %sender, to = %rcpts, size, "accepted");
            Ok(id)
        }
        Err(e) => {
            Metrics::inc(&ctx.metrics.spool_errors);
            tracing::error!(queue_id = %id, client = %peer, error = %e, "spool write failed; message refused with 4xx");
            Err(match e {
                SpoolError::Full(_) => Reply::new(452, status::NO_SYSTEM_STORAGE, "Insufficient system storage"),
                _ => Reply::new(451, status::SYSTEM_ERROR, "Local error in processing; try again later"),
            })
        }
    }
}
