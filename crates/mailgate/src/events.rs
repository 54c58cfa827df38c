//! Counters every stage bumps; `/metrics` and the dashboard read them.

use std::sync::atomic::{AtomicU64, Ordering};

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

/// TLS outcomes of outbound connections (RFC 8460 result types), kept for
/// TLS-RPT reports: one JSON line each in `data_dir/reports/tls-events.jsonl`.
pub struct TlsEvents {
    file: std::sync::Mutex<Option<std::fs::File>>,
    pub successes: AtomicU64,
    pub failures: AtomicU64,
}

impl TlsEvents {
    pub fn open(dir: &std::path::Path) -> Self {
        let file = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::OpenOptions::new().create(true).append(true).open(dir.join("tls-events.jsonl")))
            .map_err(|e| tracing::warn!(error = %e, "cannot record TLS events"))
            .ok();
        TlsEvents { file: std::sync::Mutex::new(file), successes: AtomicU64::new(0), failures: AtomicU64::new(0) }
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
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let line = serde_json::json!({"time": now, "domain": domain, "mx": mx, "policy": policy, "result": result});
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            use std::io::Write;
            let _ = writeln!(f, "{line}");
        }
    }
}
