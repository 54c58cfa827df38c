//! Administrator commands that touch many messages at once: deleting every
//! message that matches a filter (sender, recipient domain).
//!
//! May import: `spool`, `mailgate-core`.

use mailgate_core::{Envelope, QueueId};
use serde::Deserialize;
use tokio::task::JoinSet;

use super::Scheduler;
use crate::spool::SpoolError;

/// Which messages `queue delete --sender/--recipient-domain` removes. Every
/// given field must match; an empty filter matches nothing (deleting the
/// whole queue by accident is not a thing a filter should do).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// The envelope sender, compared without regard to case; `<>` or an
    /// empty string for the null sender (bounces).
    #[serde(default)]
    pub sender: Option<String>,
    /// A message matches when one of its pending recipients is at this
    /// domain; the whole message is deleted, as `postsuper -d` does.
    #[serde(default)]
    pub recipient_domain: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.sender.is_none() && self.recipient_domain.is_none()
    }

    pub fn matches(&self, env: &Envelope) -> bool {
        if self.is_empty() {
            return false;
        }
        if let Some(sender) = &self.sender {
            let want = sender.trim().trim_start_matches('<').trim_end_matches('>');
            if !env.sender.to_string().eq_ignore_ascii_case(want) {
                return false;
            }
        }
        if let Some(domain) = &self.recipient_domain {
            let want = domain.trim().trim_end_matches('.');
            let hit = env
                .recipients
                .iter()
                .filter(|r| r.is_pending())
                .any(|r| r.address.domain().is_some_and(|d| d.as_str().trim_end_matches('.').eq_ignore_ascii_case(want)));
            if !hit {
                return false;
            }
        }
        true
    }
}

/// Ids are collected a page at a time so the scan never holds every
/// envelope; removals run this many at once so they share fsyncs.
const SCAN_PAGE: usize = 1000;
const REMOVE_BATCH: usize = 512;

impl Scheduler {
    /// Deletes every queued message that `filter` matches; returns how many.
    pub(super) async fn delete_matching(&mut self, filter: &Filter) -> Result<usize, SpoolError> {
        let mut doomed: Vec<QueueId> = Vec::new();
        let mut after: Option<QueueId> = None;
        loop {
            let (page, next) = self.spool.page(after.as_ref(), SCAN_PAGE);
            doomed.extend(page.into_iter().filter(|q| filter.matches(&q.envelope)).map(|q| q.id));
            match next {
                Some(id) => after = Some(id),
                None => break,
            }
        }
        let mut deleted = 0;
        let mut failure = None;
        // Removals the full disk refused (see below).
        let mut refused: Vec<QueueId> = Vec::new();
        for chunk in doomed.chunks(REMOVE_BATCH) {
            let mut set = JoinSet::new();
            for id in chunk {
                let (spool, id) = (self.spool.clone(), id.clone());
                set.spawn(async move {
                    let result = spool.remove(&id).await;
                    (id, result)
                });
            }
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok((_, Ok(true))) => deleted += 1,
                    Ok((_, Ok(false))) => {} // gone meanwhile (delivered)
                    Ok((id, Err(SpoolError::Full(_)))) => refused.push(id),
                    Ok((_, Err(e))) => failure = Some(e),
                    Err(e) => failure = Some(SpoolError::Io(format!("removal task failed: {e}"))),
                }
            }
        }
        // On a full disk a batch of tombstones can fail (ENOSPC) as a whole
        // before any removal has freed space. One at a time, the first that
        // fits in what is left punches its message out of its segment, and
        // that makes room for the rest: retry while that makes progress.
        let mut retried_on_full_disk = 0usize;
        while !refused.is_empty() {
            let before = refused.len();
            let mut again = Vec::new();
            let mut last = None;
            for id in std::mem::take(&mut refused) {
                match self.spool.remove(&id).await {
                    Ok(true) => {
                        deleted += 1;
                        retried_on_full_disk += 1;
                    }
                    Ok(false) => {}
                    Err(e @ SpoolError::Full(_)) => {
                        last = Some(e);
                        again.push(id);
                    }
                    Err(e) => failure = Some(e),
                }
            }
            if again.len() == before {
                // Not one fitted: nothing more will.
                tracing::error!(left = again.len(), "the disk is full: some matching messages could not be deleted");
                failure = last.or(failure);
                break;
            }
            refused = again;
        }
        tracing::info!(
            deleted,
            retried_on_full_disk,
            sender = ?filter.sender,
            recipient_domain = ?filter.recipient_domain,
            "deleted by administrator (filter)"
        );
        match failure {
            Some(e) if deleted == 0 => Err(e),
            Some(e) => {
                tracing::error!(error = %e, deleted, "some matching messages could not be deleted");
                Ok(deleted)
            }
            None => Ok(deleted),
        }
    }
}
