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

use crate::events::Metrics;
use crate::spool::{Spool, SpoolError};

/// What every session of one listener shares.
pub struct Inbound {
    pub session: Arc<SessionConfig>,
    pub policy: Arc<dyn Policy>,
    pub spool: Arc<Spool>,
    pub metrics: Arc<Metrics>,
    pub trusted: Vec<ipnet::IpNet>,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
}

pub async fn run(mut stream: TcpStream, peer: SocketAddr, ctx: Arc<Inbound>, mut shutdown: watch::Receiver<bool>) {
    let trusted = ctx.trusted.iter().any(|n| n.contains(&peer.ip()));
    let mut session = Session::new(ctx.session.clone(), ctx.policy.clone(), peer.ip(), trusted);
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
                        let result = store(&ctx, peer, *incoming).await;
                        next.extend(session.transaction_done(result));
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

async fn store(ctx: &Inbound, peer: SocketAddr, incoming: Incoming) -> Result<QueueId, Reply> {
    let Incoming { mut envelope, data } = incoming;
    let now = SystemTime::now();
    envelope.received_at = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let id = ctx.spool.new_id();
    let date = httpdate::fmt_http_date(now).replace(" GMT", " +0000");
    let header = received_header(&ctx.session.hostname, &envelope, &id, &date);
    let mut content = Vec::with_capacity(header.len() + data.len());
    content.extend_from_slice(header.as_bytes());
    content.extend_from_slice(&data);
    drop(data);
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
