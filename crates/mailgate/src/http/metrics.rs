//! `GET /metrics`: the registry in `crate::metrics`, with what is read at
//! scrape time: the spool's size and counters, and the recipients still
//! to be delivered. Unauthenticated (see [`super::auth`]).
//!
//! May import: `spool`, `metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;

use super::Api;
use crate::metrics::CONTENT_TYPE;
use crate::spool::Spool;

/// Up to this many queued messages, pending recipients are counted at
/// every scrape (reading each envelope: a few milliseconds).
const COUNT_AT_EVERY_SCRAPE: usize = 10_000;
/// Past that, they are counted in the background at most this often and
/// the scrape shows the last count.
const RECOUNT_LARGE_QUEUE: Duration = Duration::from_secs(300);
/// Envelopes read per step of a count.
const PAGE: usize = 1000;

pub async fn metrics(State(api): State<Arc<Api>>) -> impl IntoResponse {
    let m = &api.metrics;
    let (fsyncs, records) = api.spool.sync_stats();
    let queued = api.spool.len();
    m.set_spool(queued, fsyncs, records);
    let small = queued <= COUNT_AT_EVERY_SCRAPE;
    if m.recipients_due(if small { Duration::ZERO } else { RECOUNT_LARGE_QUEUE }) {
        let (spool, metrics) = (api.spool.clone(), api.metrics.clone());
        let count = tokio::task::spawn_blocking(move || metrics.recipients_counted(Some(pending_recipients(&spool))));
        if small {
            // A failed count leaves the last value; the next scrape retries.
            if count.await.is_err() {
                api.metrics.recipients_counted(None);
            }
        }
    }
    ([("content-type", CONTENT_TYPE)], m.encode())
}

/// Recipients of queued messages that are still to be delivered, read a
/// page of envelopes at a time (the index lock is held only to copy ids).
fn pending_recipients(spool: &Spool) -> u64 {
    let mut n = 0u64;
    let mut after = None;
    loop {
        let (page, next) = spool.page(after.as_ref(), PAGE);
        n += page.iter().map(|q| q.envelope.recipients.iter().filter(|r| r.is_pending()).count() as u64).sum::<u64>();
        match next {
            Some(id) => after = Some(id),
            None => return n,
        }
    }
}
