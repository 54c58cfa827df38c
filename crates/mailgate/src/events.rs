//! Report events kept as JSON lines under `data_dir/reports/` (DMARC
//! evaluations, outbound TLS outcomes). Counters live in `metrics`.
//!
//! May import: `metrics`.

use std::sync::Arc;

use crate::metrics::Metrics;

/// An append-only file of JSON lines under `data_dir/reports/`, the
/// report store that reports are later built from.
pub struct JsonLines {
    file: std::sync::Mutex<Option<std::fs::File>>,
}

impl JsonLines {
    pub fn open(dir: &std::path::Path, name: &str) -> Self {
        let file = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)))
            .map_err(|e| tracing::warn!(error = %e, file = name, "cannot open report store"))
            .ok();
        JsonLines { file: std::sync::Mutex::new(file) }
    }

    /// Appends one line; a failure is logged once per line, never fatal.
    pub fn append(&self, line: &serde_json::Value) {
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            use std::io::Write;
            if let Err(e) = writeln!(f, "{line}") {
                tracing::warn!(error = %e, "cannot append to report store");
            }
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// TLS outcomes of outbound connections (RFC 8460 result types), kept for
/// TLS-RPT reports: one JSON line each in `data_dir/reports/tls-events.jsonl`.
pub struct TlsEvents {
    file: JsonLines,
    metrics: Arc<Metrics>,
}

impl TlsEvents {
    pub fn open(dir: &std::path::Path, metrics: Arc<Metrics>) -> Self {
        TlsEvents { file: JsonLines::open(dir, "tls-events.jsonl"), metrics }
    }

    /// `result` is "success" or an RFC 8460 failure type; `policy` is
    /// "sts", "require-tls" or "no-policy-found".
    pub fn record(&self, domain: &str, mx: &str, policy: &str, result: &str) {
        self.metrics.tls_result(policy, result);
        if result == "success" {
            tracing::debug!(domain, mx, policy, "TLS success");
        } else {
            tracing::warn!(domain, mx, policy, result, "TLS failure");
        }
        self.file.append(&serde_json::json!({"time": unix_now(), "domain": domain, "mx": mx, "policy": policy, "result": result}));
    }
}
