//! Before the spool: a message with `[[forward]]` recipients is relayed
//! on to their targets from an SRS sender (`srs`). When it also has other
//! recipients, the forwarded copy is stored as a message of its own (the
//! sender differs), from a copy in memory; the rest goes on as usual.

use mailgate_core::reply::Reply;
use mailgate_core::{Envelope, ReversePath};

use super::Inbound;
use super::store::spool_reply;
use crate::checks::body::Body;
use crate::spool::SpoolError;

/// Rewrites `envelope` in place for its forwarded recipients (storing the
/// forwarded copy first when there are others too).
pub async fn apply(ctx: &Inbound, envelope: &mut Envelope, prefix: &[u8], body: &Body) -> Result<(), Reply> {
    let Some(expanded) = ctx.forwarding.as_ref().and_then(|f| f.expand(envelope)) else { return Ok(()) };
    let from = sender(&envelope.sender);
    let (srs, to) = (sender(&expanded.forwarded.sender), recipients(&expanded.forwarded));
    match expanded.rest {
        None => {
            tracing::info!(from = %from, srs = %srs, to = %to, "forwarding with the sender rewritten (SRS)");
            *envelope = expanded.forwarded;
        }
        Some(rest) => {
            let mut content = prefix.to_vec();
            body.for_each_chunk(|chunk| content.extend_from_slice(chunk)).map_err(|e| spool_reply(&SpoolError::Io(e.to_string())))?;
            let id = ctx.spool.new_id();
            if let Err(e) = ctx.spool.store(&id, expanded.forwarded, &content).await {
                ctx.metrics.spool_error();
                tracing::error!(queue_id = %id, error = %e, "spool write of a forwarded copy failed; message refused with 4xx");
                return Err(spool_reply(&e));
            }
            tracing::info!(queue_id = %id, from = %from, srs = %srs, to = %to, "forwarded copy stored with the sender rewritten (SRS)");
            *envelope = rest;
        }
    }
    Ok(())
}

fn sender(s: &ReversePath) -> String {
    match s {
        ReversePath::Null => "<>".into(),
        ReversePath::Mailbox(m) => m.to_string(),
    }
}

fn recipients(e: &Envelope) -> String {
    e.recipients.iter().map(|r| r.address.to_string()).collect::<Vec<_>>().join(",")
}
