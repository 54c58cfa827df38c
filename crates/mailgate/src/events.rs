//! Outbound TLS outcomes (RFC 8460 result types): counted in `metrics` and
//! handed to the report store for TLS-RPT reports.
//!
//! May import: `metrics`, `store`.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::store::{Event, Recorder, TlsSession, unix_now};

/// TLS outcomes of outbound connections, kept in the report store for
/// TLS-RPT reports.
pub struct TlsEvents {
    recorder: Option<Arc<Recorder>>,
    metrics: Arc<Metrics>,
}

impl TlsEvents {
    pub fn new(recorder: Option<Arc<Recorder>>, metrics: Arc<Metrics>) -> Self {
        TlsEvents { recorder, metrics }
    }

    /// `result` is "success" or an RFC 8460 failure type; `policy` is
    /// "sts", "require-tls" or "no-policy-found".
    pub fn record(&self, domain: &str, mx: &str, policy: &str, result: &str) {
        self.record_with_policy(domain, mx, policy, result, "");
    }

    /// [`TlsEvents::record`] with the MTA-STS policy text applied (empty
    /// without one), which TLS-RPT reports quote.
    pub fn record_with_policy(&self, domain: &str, mx: &str, policy: &str, result: &str, policy_string: &str) {
        self.metrics.tls_result(policy, result);
        if result == "success" {
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
                policy_string: policy_string.to_string(),
            }));
        }
    }
}
