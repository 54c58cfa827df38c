//! Local delivery to a `[reports] ingest` address: the message, read back
//! from the spool, is parsed into the report store. Every recipient is
//! delivered when the report is stored, already there, or malformed and
//! set aside (a report is never bounced back to its sender); only a store
//! that cannot be written defers, so the spooled copy is tried again.
//!
//! May import: `report::ingest`, `spool`, `mailgate-core`.

use std::sync::Arc;

use mailgate_core::client::Outcome;
use mailgate_core::reply::{Reply, StatusCode};

use super::Job;
use crate::report::ingest::unpack::printable;
use crate::report::ingest::{Ingester, Outcome as Ingested};
use crate::spool::Content;

/// Ingests the job's message once and answers one outcome per recipient.
pub async fn deliver(ingester: Option<Arc<Ingester>>, job: &Job, content: Content) -> Vec<Outcome> {
    let n = job.rcpts.len();
    let Some(ingester) = ingester else {
        return vec![temp("report ingestion is not set up in this process"); n];
    };
    let hint = format!("queue id {}", job.id.as_str());
    let done = tokio::task::spawn_blocking(move || ingester.ingest_reader(content, &hint)).await;
    let outcome = match done {
        Ok(Ok(Ingested::Stored { reports, .. })) => {
            let what: Vec<String> = reports
                .iter()
                .map(|r| match r.id {
                    Some(id) => format!("{} report {} stored as {id}", r.kind.as_str(), r.report_id),
                    None => format!("{} report {} already stored", r.kind.as_str(), r.report_id),
                })
                .collect();
            // Report ids are the sender's text: no control characters in a reply.
            Outcome::Delivered(Reply::new(250, StatusCode::new(2, 0, 0), printable(&what.join("; "))))
        }
        Ok(Ok(Ingested::Rejected { reason, .. })) => {
            Outcome::Delivered(Reply::new(250, StatusCode::new(2, 0, 0), printable(&format!("not a readable report, set aside: {reason}"))))
        }
        Ok(Err(e)) => temp(&format!("report store unavailable: {e}")),
        Err(e) => temp(&format!("report ingestion failed: {e}")),
    };
    vec![outcome; n]
}

fn temp(text: &str) -> Outcome {
    Outcome::Temporary(Reply::new(451, StatusCode::new(4, 3, 0), text))
}
