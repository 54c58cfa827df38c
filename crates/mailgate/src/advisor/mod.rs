//! The domain advisor: `mailgate check` (a domain's published mail records,
//! judged finding by finding) and, from the report store, `spf suggest`
//! and `dmarc whatif`.
//!
//! May import: `config`, `dns`, `checks` (record parsers), `outbound::tls`
//! and `outbound::mta_sts` (the policy fetch delivery uses), `outbound::dane`
//! (TLSA records and our own key's record), `tls` (the certificate the
//! server loads, for `dane_watch`), `report::dest`
//! (the RFC 9989 tree walk and report authorisation), `sign::store` (our
//! selectors), `store` (read-only, for the report-driven views). Nothing
//! here changes the queue or the spool.

// `mailgate check DOMAIN`: one file per area, `check` runs them.
pub mod bimi;
pub mod check;
pub mod dane;
// The server's own TLSA records against the certificate it loads.
pub mod dane_watch;
pub mod dkim;
pub mod dmarc;
pub mod lookup;
pub mod mtasts;
pub mod mx;
pub mod spf;
pub mod tlsrpt;
// `spf suggest` / `dmarc whatif` modules are declared below this line.
// `spf suggest` / `dmarc whatif`: the report store's evidence judged
// (`suggest`, `whatif`), the ESP table, the DNS walks and the commands.
pub mod esp;
pub mod suggest;
pub mod suggest_cli;
mod suggest_dns;
pub mod whatif;
pub mod whatif_cli;

use serde::Serialize;

/// How bad a finding is; the exit status is the worst one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One verdict. `code` is stable (README "Finding codes"); `fix` is set
/// for every warning and error.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &'static str, code: &'static str, message: impl Into<String>) -> Finding {
        Finding { check, severity: Severity::Ok, code, message: message.into(), fix: None }
    }

    pub fn warning(check: &'static str, code: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check, severity: Severity::Warning, code, message: message.into(), fix: Some(fix.into()) }
    }

    pub fn error(check: &'static str, code: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check, severity: Severity::Error, code, message: message.into(), fix: Some(fix.into()) }
    }
}
