//! Counters every stage bumps; `/metrics` and the dashboard read them; and
//! the outbound TLS outcomes, counted and handed to the report store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::{Event, Recorder, TlsSession};

#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub connections_refused: AtomicU64,
    pub messages_accepted: AtomicU64,
    pub messages_refused: AtomicU64,
    pub bytes_accepted: AtomicU64,
    pub spool_errors: AtomicU64,
    pub delivered: AtomicU64,
    pub deferred: AtomicU64,
    pub bounced: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// TLS outcomes of outbound connections (RFC 8460 result types), kept in
/// the report store for TLS-RPT reports.
pub struct TlsEvents {
    recorder: Option<Arc<Recorder>>,
    pub successes: AtomicU64,
    pub failures: AtomicU64,
}

impl TlsEvents {
    pub fn new(recorder: Option<Arc<Recorder>>) -> Self {
        TlsEvents { recorder, successes: AtomicU64::new(0), failures: AtomicU64::new(0) }
    }

    /// `result` is "success" or an RFC 8460 failure type; `policy` is
    /// "sts", "require-tls" or "no-policy-found".
    pub fn record(&self, domain: &str, mx: &str, policy: &str, result: &str) {
        let ok = result == "success";
        Metrics::inc(if ok { &self.successes } else { &self.failures });
        if ok {
            tracing::debug!(domain, mx, policy, "TLS success");
        } else {
            tracing::warn!(domain, mx, policy, result, "TLS failure");
        }
        if let Some(r) = &self.recorder {
            r.record(Event::Tls(TlsSession {
                time: unix_now(),
                policy_domain: domain.to_string(),
                mx_host: mx.to_string(),
                policy_type: policy.to_string(),
                result: result.to_string(),
            }));
        }
    }
}
