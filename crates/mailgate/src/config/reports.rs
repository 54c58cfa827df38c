//! `[reports]`: the report store, the DMARC aggregate and TLS-RPT reports
//! mailgate sends, and the addresses whose mail is reports to read.

use mailgate_core::Mailbox;
use serde::Deserialize;

/// `[reports]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawReports {
    pub retention_days: u64,
    pub record: bool,
    pub send: bool,
    pub dmarc_interval: u64,
    pub tlsrpt_interval: u64,
    pub org_name: Option<String>,
    pub from: Option<String>,
    pub ingest: Vec<String>,
}

impl Default for RawReports {
    fn default() -> Self {
        RawReports {
            retention_days: 90,
            record: true,
            send: true,
            dmarc_interval: 86_400,
            tlsrpt_interval: 86_400,
            org_name: None,
            from: None,
            ingest: Vec::new(),
        }
    }
}

/// `[reports]`, checked.
#[derive(Debug, Clone)]
pub struct Reports {
    /// Days evaluations, attempts and received reports are kept; 0 keeps
    /// them for ever.
    pub retention_days: u64,
    /// Record each message's DMARC evaluation, delivery attempts and TLS
    /// sessions; without them no report can be sent.
    pub record: bool,
    /// Send the DMARC aggregate and TLS-RPT reports domains ask for.
    pub send: bool,
    /// Seconds per DMARC report period; periods are aligned on the Unix
    /// epoch, so the default day runs 00:00 to 24:00 UTC.
    pub dmarc_interval: u64,
    /// Seconds per TLS-RPT report period (RFC 8460 asks for a day).
    pub tlsrpt_interval: u64,
    /// `report_metadata/org_name` and `organization-name`.
    pub org_name: String,
    /// The sender and contact address of our reports.
    pub from: Mailbox,
    /// Addresses whose mail is a report to read into the store instead of
    /// delivering it.
    pub ingest: Vec<Mailbox>,
}

impl RawReports {
    /// Checks the section; `hostname` and `first_domain` give the
    /// defaults. Problems are `(key, message)`.
    pub(super) fn validate(self, hostname: &str, first_domain: Option<&str>) -> Result<Reports, Vec<(String, String)>> {
        let mut problems = Vec::new();
        for (key, v) in [("reports.dmarc_interval", self.dmarc_interval), ("reports.tlsrpt_interval", self.tlsrpt_interval)] {
            if v < 60 || 86_400 % v.min(86_400) != 0 && v % 86_400 != 0 {
                problems.push((key.to_string(), format!("{v} must be at least 60 seconds and divide a day or be whole days")));
            }
        }
        let from_text = self.from.unwrap_or_else(|| format!("dmarc-reports@{}", first_domain.unwrap_or(hostname)));
        let from = match Mailbox::parse(&from_text, false) {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(("reports.from".into(), format!("{from_text:?} is not an email address")));
                None
            }
        };
        let mut ingest = Vec::new();
        for (i, a) in self.ingest.iter().enumerate() {
            match Mailbox::parse(a, true) {
                Ok(addr) => ingest.push(addr),
                Err(_) => problems.push((format!("reports.ingest[{i}]"), format!("{a:?} is not an email address"))),
            }
        }
        match from {
            Some(from) if problems.is_empty() => Ok(Reports {
                retention_days: self.retention_days,
                record: self.record,
                send: self.send,
                dmarc_interval: self.dmarc_interval,
                tlsrpt_interval: self.tlsrpt_interval,
                org_name: self.org_name.unwrap_or_else(|| hostname.to_string()),
                from,
                ingest,
            }),
            _ => Err(problems),
        }
    }
}
