//! What happens to a finished message before the 250: the sender's
//! `From:` rule on submission, the inbound checks, our header fields,
//! re-encoding and DKIM signing for outbound mail, and the spool.
//!
//! The message arrives as a header block in memory and a body in memory
//! or in a staging file ([`Received`]); the checks and the signer read the
//! body as a stream, and a spilled body goes into the spool by renaming its
//! file, so a large message is never held whole in memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mailgate_core::received::received_header;
use mailgate_core::reply::{Reply, StatusCode, status};
use mailgate_core::session::{Incoming, over_budget_reply};
use mailgate_core::{Envelope, QueueId, ReversePath};

use super::Inbound;
use super::spill::{MAX_HEADER, Reservation, Spill};
use super::timeline::Trace;
use crate::checks::body::Body;
use crate::checks::sender;
use crate::checks::verdict::{Input, Verdict};
use crate::config::Action as Disposition;
use crate::spool::{SpoolError, Staged};

/// A finished message: the header block in memory, the body in memory or
/// in the staging file the session's content was spilled to.
pub struct Received {
    pub envelope: Envelope,
    long_lines: bool,
    /// The header fields and the empty line after them (the whole message
    /// when it has no empty line).
    header: Vec<u8>,
    body: Body,
    staged: Option<Staged>,
}

impl Received {
    /// Puts together what the session handed over and, for a big
    /// message, the staging file holding its start.
    pub fn assemble(incoming: Incoming, spill: Option<Spill>) -> Result<Received, Reply> {
        let Incoming { envelope, data, long_lines } = incoming;
        let Some(mut spill) = spill else {
            let whole = Arc::new(data);
            let (header_len, body) = Body::split(&whole);
            let header = whole[..header_len].to_vec();
            return Ok(Received { envelope, long_lines, header, body, staged: None });
        };
        spill.write(&data).map_err(|e| spool_reply(&e))?;
        drop(data);
        let total = spill.staged.len();
        let header_len = match spill.header_end() {
            Some(end) => end,
            None if total <= MAX_HEADER => total,
            None => {
                return Err(Reply::new(
                    552,
                    status::MSG_TOO_BIG,
                    format!("Message refused: header block longer than {} octets", MAX_HEADER),
                ));
            }
        };
        let header = spill.staged.read_at(0, header_len as usize).map_err(|e| spool_reply(&SpoolError::Io(e.to_string())))?;
        let body = Body::File { file: spill.staged.file().clone(), start: header_len, len: total - header_len };
        Ok(Received { envelope, long_lines, header, body, staged: Some(spill.staged) })
    }

    /// Octets of the message held in memory.
    pub fn in_memory(&self) -> u64 {
        let body = if self.staged.is_some() { 0 } else { self.body.len() };
        self.header.len() as u64 + body
    }
}

/// Checks, stamps, signs and stores one message; the 250's queue id, or
/// the reply to give instead.
#[allow(clippy::too_many_arguments)]
pub async fn store(
    ctx: &Inbound,
    peer: SocketAddr,
    helo: &str,
    authenticated_as: Option<&str>,
    received: Received,
    outbound: bool,
    reservation: &mut Reservation,
    trace: &mut Trace,
) -> Result<QueueId, Reply> {
    let Received { mut envelope, long_lines, mut header, mut body, mut staged } = received;
    trace.message(&envelope, &header, header.len() as u64 + body.len());
    check_sender(ctx, authenticated_as, &header)?;
    // Inbound mail is judged as received, before anything is added.
    let (checks, verdict) = if outbound {
        (String::new(), None)
    } else {
        let verdict = check(ctx, peer, helo, &envelope, &header, body.clone(), trace).await?;
        envelope.quarantine = verdict.action == Disposition::Quarantine && ctx.quarantine;
        if let Some((clean, n)) = crate::checks::auth_results::strip_forged(&header, ctx.checker.authserv_id()) {
            tracing::info!(client = %peer, fields = n, "removed incoming header fields claiming our authserv-id");
            header = clean;
        }
        (verdict_headers(&verdict), Some(verdict))
    };
    let now = SystemTime::now();
    envelope.received_at = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let id = ctx.spool.new_id();
    let date = httpdate::fmt_http_date(now).replace(" GMT", " +0000");
    let mut prefix = received_header(&ctx.session.hostname, &envelope, &id, &date).into_bytes();
    prefix.extend_from_slice(checks.as_bytes());
    prefix.extend_from_slice(&header);
    drop(header);
    if outbound {
        if long_lines {
            // Re-encoding rewrites MIME parts anywhere in the message: it
            // needs all of it (a submitter's message, at most the size limit).
            if !reservation.set(prefix.len() as u64 + body.len()) {
                return Err(over_budget_reply());
            }
            let mut whole = prefix;
            body.for_each_chunk(|chunk| whole.extend_from_slice(chunk)).map_err(|e| spool_reply(&SpoolError::Io(e.to_string())))?;
            let content = Arc::new(reencode(&id, whole).await?);
            let (header_len, reencoded) = Body::split(&content);
            prefix = content[..header_len].to_vec();
            body = reencoded;
            // The staging file held the old content: gone with it.
            staged = None;
        }
        // Signing is the last change before the spool (RFC 6376 §5).
        match sign(ctx, &prefix, &body).await {
            Ok(Some(signatures)) => prefix.splice(0..0, signatures.into_bytes()).for_each(drop),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "DKIM signing failed");
                return Err(Reply::new(451, status::SYSTEM_ERROR, "Local error in processing; try again later"));
            }
        }
    }
    super::forward::apply(ctx, &mut envelope, &prefix, &body).await?;
    let sender = match &envelope.sender {
        ReversePath::Null => "<>".to_string(),
        ReversePath::Mailbox(m) => m.to_string(),
    };
    let rcpts = envelope.recipients.iter().map(|r| r.address.to_string()).collect::<Vec<_>>().join(",");
    let size = prefix.len() as u64 + body.len();
    let stored = match (staged, &body) {
        (Some(staged), Body::File { start, .. }) => ctx.spool.store_staged(&id, envelope, &prefix, staged, *start).await,
        _ => {
            let mut content = prefix;
            content.reserve(usize::try_from(body.len()).unwrap_or(0));
            body.for_each_chunk(|chunk| content.extend_from_slice(chunk)).map_err(|e| spool_reply(&SpoolError::Io(e.to_string())))?;
            ctx.spool.store(&id, envelope, &content).await
        }
    };
    match stored {
        Ok(()) => {
            ctx.metrics.message_accepted(size);
            match &verdict {
                // One line per accepted message, with what the checks found.
                Some(v) => tracing::info!(
                    queue_id = %id,
                    client = %peer,
                    from = %sender,
                    to = %rcpts,
                    size,
                    spf = v.spf.result,
                    dkim = %dkim_results(v),
                    arc = v.arc.result,
                    dmarc = v.dmarc.result,
                    header_from = %v.dmarc.from_domain,
                    action = v.action.as_str(),
                    reason = v.reason.as_deref().unwrap_or(""),
                    "accepted"
                ),
                None => tracing::info!(queue_id = %id, client = %peer, from = %sender, to = %rcpts, size, "accepted"),
            }
            Ok(id)
        }
        Err(e) => {
            ctx.metrics.spool_error();
            tracing::error!(queue_id = %id, client = %peer, error = %e, "spool write failed; message refused with 4xx");
            Err(spool_reply(&e))
        }
    }
}

/// The reply for a spool or staging failure: never a 250, always a 4xx.
pub fn spool_reply(e: &SpoolError) -> Reply {
    match e {
        SpoolError::Full(_) => Reply::new(452, status::NO_SYSTEM_STORAGE, "Insufficient system storage"),
        _ => Reply::new(451, status::SYSTEM_ERROR, "Local error in processing; try again later"),
    }
}

/// The DKIM-Signature fields to prepend when the `From:` domain is ours.
/// Hashing the body and RSA signing take a while: off the async threads.
async fn sign(ctx: &Inbound, header: &[u8], body: &Body) -> anyhow::Result<Option<String>> {
    let signer = ctx.signer.clone();
    let (header, body) = (header.to_vec(), body.clone());
    tokio::task::spawn_blocking(move || signer.sign(&header, &body)).await.map_err(|e| anyhow::anyhow!("{e}"))?
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
fn check_sender(ctx: &Inbound, user: Option<&str>, header: &[u8]) -> Result<(), Reply> {
    let Some(user) = user else { return Ok(()) };
    let from = sender::single_from(header)?;
    if ctx.auth.may_send_as(user, &from) {
        Ok(())
    } else {
        tracing::warn!(user, from = %from, "From: header not allowed for this user");
        Err(Reply::new(550, StatusCode::new(5, 7, 1), format!("Message refused: you may not send as {from}")))
    }
}

/// Runs the inbound checks and turns a refusal into its reply.
async fn check(
    ctx: &Inbound,
    peer: SocketAddr,
    helo: &str,
    envelope: &Envelope,
    header: &[u8],
    body: Body,
    trace: &mut Trace,
) -> Result<Verdict, Reply> {
    let mail_from = envelope.sender.mailbox().map(|m| m.to_string()).unwrap_or_default();
    // No report about reports: mail only to our report addresses is not counted.
    let record = !envelope.recipients.iter().all(|r| ctx.checker.is_report_address(&r.address.to_string()));
    let input = Input { ip: peer.ip(), helo, mail_from: &mail_from, message: Some(header), body: Some(body), seal: true, record };
    let started = std::time::Instant::now();
    let verdict = ctx.checker.check(&input).await;
    super::count::verdict(&ctx.metrics, &verdict, started.elapsed().as_secs_f64());
    trace.verdict(&verdict);
    let reason = verdict.reason.as_deref().unwrap_or("");
    // A refusal is logged here; a message kept is logged once, as
    // `accepted`, with the same results.
    if verdict.action == Disposition::Reject {
        tracing::info!(
            client = %peer,
            from = %mail_from,
            spf = verdict.spf.result,
            dkim = %dkim_results(&verdict),
            arc = verdict.arc.result,
            dmarc = verdict.dmarc.result,
            header_from = %verdict.dmarc.from_domain,
            action = verdict.action.as_str(),
            temporary = verdict.temporary,
            reason,
            "checked"
        );
    }
    for f in &verdict.lookalike {
        tracing::warn!(client = %peer, domain = %f.domain, resembles = %f.resembles, rule = %f.rule, identity = f.identity, "look-alike sender domain");
    }
    match verdict.action {
        Disposition::Reject if verdict.temporary => {
            Err(Reply::new(451, StatusCode::new(4, 7, 1), format!("{}; try again later", printable(reason))))
        }
        Disposition::Reject => Err(Reply::new(550, StatusCode::new(5, 7, 1), format!("Message refused: {}", printable(reason)))),
        _ => Ok(verdict),
    }
}

/// The DKIM results for a log line: `domain:result`, comma-separated.
fn dkim_results(verdict: &Verdict) -> String {
    let dkim: Vec<String> = verdict.dkim.iter().map(|d| format!("{}:{}", d.domain, d.result)).collect();
    dkim.join(",")
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
        h.push_str(&format!(
            "X-Mailgate-Lookalike: rule={}; domain={}; resembles={}; identity={}\r\n",
            f.rule,
            ascii(&f.domain),
            ascii(&f.resembles),
            f.identity
        ));
    }
    if verdict.action > Disposition::Accept {
        h.push_str(&format!("X-Mailgate-Action: {} ({})\r\n", verdict.action.as_str(), printable(verdict.reason.as_deref().unwrap_or(""))));
    }
    h
}
