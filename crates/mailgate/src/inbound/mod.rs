//! The inbound driver: runs one SMTP session over one connection.
//!
//! It moves bytes between the socket and the sans-I/O session in
//! `mailgate-core`, applies timeouts, and carries out the session's actions:
//! replies are written in order, a finished message is stamped with a
//! `Received:` header and stored in the spool, and only the spool's answer
//! decides between 250 and 451/452.
//!
//! Deadlines against slow clients (a command line, the content rate, the
//! whole session) are kept by [`clock`].
//!
//! Content past a small threshold is moved to a staging file as it
//! arrives (see [`spill`]), and what sessions hold in memory is counted
//! against one budget; [`store`] takes a finished message from there.
//!
//! May import: `checks`, `srs`, `spool`, `store` (timeline records), `webhook` (rejected events), `metrics`, `config`, `mailgate-core`.

pub mod clock;
mod count;
mod forward;
pub mod spill;
mod store;
pub mod timeline;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mailgate_core::session::{Action, Policy, Session, SessionConfig, Waiting, over_budget_reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::checks::auth::Authenticator;
use crate::checks::verdict::Checker;
use crate::metrics::Metrics;
use crate::spool::Spool;
use crate::tls::{ServerTls, Stream};
use clock::{Clock, Deadlines};
use spill::{Budget, Reservation, SPILL_CHUNK, SPILL_THRESHOLD, Spill};
use store::{Received, spool_reply};

/// What every session of one listener shares.
pub struct Inbound {
    pub session: Arc<SessionConfig>,
    pub policy: Arc<dyn Policy>,
    pub spool: Arc<Spool>,
    pub metrics: Arc<Metrics>,
    pub trusted: Vec<ipnet::IpNet>,
    /// `[limits]` command and data timeouts, minimum rate, session cap.
    pub deadlines: Deadlines,
    /// For STARTTLS, or for every connection with `implicit_tls`.
    pub tls: Option<Arc<ServerTls>>,
    pub implicit_tls: bool,
    pub auth: Arc<Authenticator>,
    pub signer: Arc<crate::sign::Signer>,
    /// SPF, DKIM, DMARC, ARC and look-alike checks for inbound mail.
    pub checker: Arc<Checker>,
    /// `[policy].quarantine` is set: quarantined mail goes there.
    pub quarantine: bool,
    /// `[limits] max_inflight_memory`, shared by every listener.
    pub budget: Arc<Budget>,
    /// Where each message's timeline record goes (the report store).
    pub recorder: Option<Arc<crate::store::Recorder>>,
    /// `[[webhook]]`s, for `rejected` events of authenticated submitters.
    pub hooks: Option<Arc<crate::webhook::Hooks>>,
    /// `[[forward]]` and SRS: forwarded recipients are expanded before the
    /// spool.
    pub forwarding: Option<Arc<crate::srs::Forwarding>>,
}

pub async fn run(tcp: TcpStream, peer: SocketAddr, ctx: Arc<Inbound>, mut shutdown: watch::Receiver<bool>) {
    let trusted = ctx.trusted.iter().any(|n| n.contains(&peer.ip()));
    let policy = Arc::new(count::Counting {
        inner: ctx.policy.clone(),
        metrics: ctx.metrics.clone(),
        refusals: ctx.recorder.clone().map(timeline::Refusals::new),
        rejections: ctx.hooks.clone().and_then(crate::webhook::submission::Rejections::new),
    });
    let mut session = Session::new(ctx.session.clone(), policy.clone(), peer.ip(), trusted);
    let mut stream = Stream::Plain(tcp);
    if ctx.implicit_tls {
        let Some(tls) = ctx.tls.as_ref() else { return };
        match stream.accept_tls(tls, ctx.deadlines.command_timeout).await {
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
    // Small while idle: thousands of waiting sessions must cost little.
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut clock = Clock::new(ctx.deadlines, Instant::now());
    let mut pending = session.greeting();
    let mut spill: Option<Spill> = None;
    let mut reservation = Reservation::new(ctx.budget.clone());
    tracing::debug!(client = %peer, role = ctx.session.role.as_str(), "connect");
    loop {
        let mut close = false;
        while !pending.is_empty() {
            let mut next = Vec::new();
            for action in pending {
                match action {
                    Action::Reply(r) => {
                        if count::refused_by_session(&r) {
                            ctx.metrics.message_refused(&r);
                        }
                        r.write_to(&mut out)
                    }
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
                        let (helo, user) = (info.helo.clone().unwrap_or_default(), info.authenticated_as.clone());
                        let mut trace = timeline::Trace::new(peer, info, ctx.session.role, outbound);
                        if let Some(r) = &policy.refusals {
                            r.into_trace(&mut trace);
                        }
                        let spilled = spill.take().filter(|s| s.serial == session.transaction_serial());
                        let result = match Received::assemble(*incoming, spilled) {
                            Ok(received) if reservation.set(received.in_memory()) => {
                                store::store(&ctx, peer, &helo, user.as_deref(), received, outbound, &mut reservation, &mut trace).await
                            }
                            Ok(_) => Err(over_budget_reply()),
                            Err(reply) => Err(reply),
                        };
                        if let Some(w) = &policy.rejections {
                            w.message(user.is_some(), &result, Some(trace.message_id()));
                        }
                        trace.record(ctx.recorder.as_deref(), &result);
                        reservation.set(0);
                        ctx.metrics.message_received();
                        if let Err(reply) = &result {
                            ctx.metrics.message_refused(reply);
                        }
                        // The first reply answers this transaction and is
                        // counted above: written here, not by the arm that
                        // counts the session's own refusals.
                        for (i, action) in session.transaction_done(result).into_iter().enumerate() {
                            match action {
                                Action::Reply(r) if i == 0 => r.write_to(&mut out),
                                other => next.push(other),
                            }
                        }
                    }
                    Action::StartTls => {
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                        let Some(tls) = ctx.tls.as_ref() else { return };
                        match std::mem::replace(&mut stream, Stream::Gone).accept_tls(tls, ctx.deadlines.command_timeout).await {
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
        keep_content_in_bounds(&ctx, &mut session, &mut spill, &mut reservation);
        let waiting = session.waiting();
        if waiting == Waiting::Closed {
            return;
        }
        let (mut due, mut expired) = clock.wait(waiting, session.line_pending(), Instant::now());
        size_read_buffer(&mut buf, waiting);
        pending = loop {
            tokio::select! {
                read = tokio::time::timeout_at(due.into(), stream.read_buf(&mut buf)) => match read {
                    Err(_) => {
                        // A rate window that ended well just starts the next.
                        if let Some(next) = clock.fired(expired, Instant::now()) {
                            (due, expired) = next;
                            continue;
                        }
                        tracing::info!(client = %peer, deadline = expired.as_str(), "timeout");
                        break session.timeout_because(&expired.why(&ctx.deadlines));
                    }
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        tracing::debug!(client = %peer, "disconnect");
                        return;
                    }
                    Ok(Ok(n)) => {
                        clock.received(waiting, n, Instant::now());
                        break session.receive(&buf[..n]);
                    }
                },
                _ = shutdown.changed() => break session.shutdown(),
            }
        };
    }
}

/// A read buffer for what the session waits for: commands come in small
/// pieces, content in larger ones. Shrunk again after content, so an idle
/// session holds 4 KiB, not 32. 32 KiB is the largest size jemalloc keeps
/// in its per-thread cache: a larger buffer per message went through its
/// slower large-allocation path.
fn size_read_buffer(buf: &mut Vec<u8>, waiting: Waiting) {
    const COMMANDS: usize = 4 * 1024;
    const CONTENT: usize = 32 * 1024;
    let want = if waiting == Waiting::Data { CONTENT } else { COMMANDS };
    buf.clear();
    // Capacity only: `read_buf` fills it without zeroing it first.
    if buf.capacity() != want {
        *buf = Vec::with_capacity(want);
    }
}

/// Moves what the session holds of a large message to its staging file,
/// drops the staging file of a transaction that has ended, and counts what
/// stays in memory against the budget: over it, the transaction gets
/// `451 4.3.2` at its end instead of growing the process.
fn keep_content_in_bounds(ctx: &Inbound, session: &mut Session, spill: &mut Option<Spill>, reservation: &mut Reservation) {
    let serial = session.transaction_serial();
    if spill.as_ref().is_some_and(|s| s.serial != serial || !session.in_transaction()) {
        // RSET, a refused message, a new MAIL: its file goes with it.
        *spill = None;
    }
    let due = if spill.is_some() { SPILL_CHUNK } else { SPILL_THRESHOLD };
    if session.buffered_body() >= due {
        let written = match spill {
            Some(s) => Ok(s),
            None => Spill::start(&ctx.spool, serial).map(|s| spill.insert(s)),
        }
        .and_then(|s| s.write(&session.take_body()));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write message content to the staging area");
            session.refuse_content(spool_reply(&e));
            *spill = None;
        }
    }
    if !reservation.set(session.buffered_body() as u64) {
        tracing::warn!(used = ctx.budget.used(), "in-flight memory budget exhausted; transaction refused with 451 4.3.2");
        session.over_budget();
        reservation.set(0);
    }
}
