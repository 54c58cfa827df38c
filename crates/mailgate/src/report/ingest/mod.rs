//! Reading the reports other receivers send us (DMARC aggregate, RFC 7489
//! §7.2 / RFC 9990; TLS-RPT, RFC 8460) into the report store.
//!
//! One entry point, [`Ingester::ingest`]: bytes (a file, or a message from
//! the spool) → [`unpack`] finds the report documents (XML, JSON, inside
//! gzip, zip or a message, every expansion capped) → mail-auth parses them
//! → [`convert`] turns them into [`IngestedReport`]s → the store keeps each
//! once (kind, org name, report id). An input that yields no report is
//! copied into `data_dir/reports/rejected/` under a name of ours with a
//! `.reason` file beside it ([`rejected`]); nothing here panics or waits on
//! the network.
//!
//! XML goes through quick-xml (inside mail-auth), which does not expand DTD
//! entities nor fetch external ones: a billion-laughs document costs what
//! its bytes cost (see the tests). A document whose DTD declares entities
//! is refused before that all the same: no report needs one.
//!
//! May import: `store`, `metrics`, `mailgate-core`; crates `mail-auth`, `mail-parser`,
//! `flate2`, `zip`.

pub mod convert;
pub mod rejected;
pub mod unpack;
pub mod view;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mail_auth::report::Report;
use mail_auth::report::tlsrpt::TlsReport;

use crate::store::{IngestedReport, ReportKind, Store, StoreError};
pub use unpack::Limits;
use unpack::{Document, Refused, Unpacker};

/// Where rejected inputs go, under `data_dir`.
pub const REJECTED_DIR: &str = "reports/rejected";

/// One report of an input, once stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub kind: ReportKind,
    pub org_name: String,
    pub report_id: String,
    pub policy_domain: String,
    /// The store's id; `None` when the report was already there.
    pub id: Option<i64>,
}

/// What became of one input.
#[derive(Debug)]
pub enum Outcome {
    /// One or more reports, each new or a duplicate. `problems` lists parts
    /// of the input that were not reports (an unreadable second member).
    Stored { reports: Vec<Stored>, problems: Vec<String> },
    /// Not a report: set aside (`kept`, when the copy could be written).
    Rejected { reason: String, kept: Option<PathBuf> },
}

/// One input's reports (and what else was found) ready to store, or the
/// outcome of its rejection.
pub struct Prepared(std::result::Result<(Vec<IngestedReport>, Vec<String>), Outcome>);

/// The store failed: the input is fine, try again later.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failed(#[from] StoreError);

pub struct Ingester {
    store: Arc<dyn Store>,
    rejected_dir: PathBuf,
    limits: Limits,
    /// The server's counters (`mailgate_reports_ingested_total`); `None`
    /// for `reports import`, a process of its own.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Ingester {
    /// Stores into `store`; rejected inputs go to `data_dir/reports/rejected`.
    pub fn new(store: Arc<dyn Store>, data_dir: &Path) -> Self {
        Ingester { store, rejected_dir: data_dir.join(REJECTED_DIR), limits: Limits::default(), metrics: None }
    }

    /// Counts each newly stored report in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Ingests one input; `hint` (a file name, a queue id) only labels the
    /// reason file, it never decides the format nor names a file.
    /// Blocking: async callers use `spawn_blocking`.
    pub fn ingest(&self, bytes: &[u8], hint: &str) -> Result<Outcome, Failed> {
        let mut out = self.store_all(vec![self.prepare(bytes, hint)])?;
        // ok: store_all answers one outcome per input, and there was one.
        Ok(out.remove(0))
    }

    /// Finds and parses the reports of one input without storing them; a
    /// rejected input is set aside here.
    pub fn prepare(&self, bytes: &[u8], hint: &str) -> Prepared {
        if bytes.len() > self.limits.max_input {
            let reason = format!("too large: more than {} bytes", self.limits.max_input);
            // ok: the slice ends below the length just compared.
            return Prepared(Err(self.reject(&bytes[..self.limits.max_input], hint, reason)));
        }
        match parse(bytes, self.limits) {
            Ok(found) => Prepared(Ok(found)),
            Err(reason) => Prepared(Err(self.reject(bytes, hint, reason))),
        }
    }

    /// Stores what several inputs held in one transaction; one outcome per
    /// input, in order.
    pub fn store_all(&self, inputs: Vec<Prepared>) -> Result<Vec<Outcome>, Failed> {
        let all: Vec<IngestedReport> = inputs.iter().filter_map(|p| p.0.as_ref().ok()).flat_map(|(r, _)| r.iter().cloned()).collect();
        let mut ids = self.store.insert_reports(&all)?.into_iter();
        let mut outcomes = Vec::with_capacity(inputs.len());
        for p in inputs {
            outcomes.push(match p.0 {
                Err(rejected) => rejected,
                Ok((reports, problems)) => Outcome::Stored {
                    reports: reports
                        .into_iter()
                        .map(|r| Stored {
                            id: ids.next().flatten().inspect(|_| {
                                if let Some(m) = &self.metrics {
                                    m.report_ingested(r.kind);
                                }
                            }),
                            kind: r.kind,
                            org_name: r.org_name,
                            report_id: r.report_id,
                            policy_domain: r.policy_domain,
                        })
                        .collect(),
                    problems,
                },
            });
        }
        Ok(outcomes)
    }

    /// Reads at most `max_input + 1` bytes of `r` (one byte more than
    /// allowed is enough to say it is too large).
    pub fn read(&self, r: impl Read) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        r.take(self.limits.max_input as u64 + 1).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// [`Ingester::read`], then [`Ingester::ingest`].
    pub fn ingest_reader(&self, r: impl Read, hint: &str) -> Result<Outcome, Failed> {
        let bytes = self.read(r).map_err(|e| Failed(StoreError::Io(e)))?;
        self.ingest(&bytes, hint)
    }

    fn reject(&self, bytes: &[u8], hint: &str, reason: String) -> Outcome {
        let kept = match rejected::keep(&self.rejected_dir, bytes, hint, &reason) {
            Ok(path) => Some(path),
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.rejected_dir.display(), "cannot keep a rejected report");
                None
            }
        };
        tracing::info!(input = %unpack::printable(hint), reason = %reason, "report rejected");
        Outcome::Rejected { reason, kept }
    }
}

/// Finds and parses every report in `bytes`: the reports, and what else
/// was found but could not be read; `Err` (the reason) when no report is
/// there at all.
pub fn parse(bytes: &[u8], limits: Limits) -> Result<(Vec<IngestedReport>, Vec<String>), String> {
    let mut unpacker = Unpacker::new(limits);
    unpacker.open(bytes, 0).map_err(|e: Refused| e.to_string())?;
    let mut reports = Vec::new();
    let mut problems = std::mem::take(&mut unpacker.skipped);
    for doc in &unpacker.documents {
        match parse_document(doc) {
            Ok(r) => reports.push(r),
            Err(why) => problems.push(why),
        }
    }
    if reports.is_empty() {
        return Err(problems.join("; "));
    }
    Ok((reports, problems))
}

fn parse_document(doc: &Document) -> Result<IngestedReport, String> {
    match doc {
        Document::Xml(xml) => {
            // quick-xml reads text as UTF-8 (lossily when it must): say so
            // rather than store mangled names.
            if std::str::from_utf8(xml).is_err() {
                return Err("invalid DMARC report: the XML is not valid UTF-8".into());
            }
            // quick-xml would not expand them (see the tests), but a report
            // has no business declaring entities: say what it is.
            let rest = skip_prolog(xml);
            // ok: `rest` is a suffix of `xml`, so the prolog is its head.
            if xml[..xml.len() - rest.len()].windows(8).any(|w| w == b"<!ENTITY") {
                return Err("invalid DMARC report: its DTD declares entities (billion laughs or external entities?)".into());
            }
            let report = Report::parse_xml(feedback(xml)).map_err(|e| format!("invalid DMARC report XML: {e}"))?;
            convert::dmarc(&report).map_err(|e| format!("invalid DMARC report: {e}"))
        }
        Document::Json(json) => {
            let report = tls_json(json)?;
            convert::tlsrpt(&report).map_err(|e| format!("invalid TLS-RPT report: {e}"))
        }
    }
}

/// The `<feedback>` document in `xml`. Some reporters wrap it in an
/// element that is never closed (`<xs:schema ...><feedback>...`), which
/// mail-auth refuses: when the first element is not `feedback`, start at
/// the first `<feedback`. The prolog (declaration, comments, DOCTYPE) is
/// left alone, so quick-xml still sees any DTD.
pub fn feedback(xml: &[u8]) -> &[u8] {
    let rest = skip_prolog(xml);
    let is_feedback =
        |s: &[u8]| s.starts_with(b"<feedback") && s.get(9).is_none_or(|c| matches!(c, b'>' | b'/' | b' ' | b'\t' | b'\r' | b'\n'));
    if is_feedback(rest) {
        return xml;
    }
    match rest.windows(9).position(|w| w == b"<feedback") {
        Some(at) if is_feedback(&rest[at..]) => &rest[at..],
        _ => xml,
    }
}

fn skip_prolog(mut s: &[u8]) -> &[u8] {
    fn after<'a>(s: &'a [u8], end: &[u8]) -> &'a [u8] {
        s.windows(end.len()).position(|w| w == end).map_or(&[][..], |p| &s[p + end.len()..])
    }
    loop {
        s = s.strip_prefix(b"\xef\xbb\xbf").unwrap_or(s);
        let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
        s = &s[start..];
        if s.starts_with(b"<?") {
            s = after(s, b"?>");
        } else if s.starts_with(b"<!--") {
            s = after(s, b"-->");
        } else if s.starts_with(b"<!") {
            // A DOCTYPE, with an internal subset in [...] or without.
            let gt = s.iter().position(|&b| b == b'>').unwrap_or(s.len());
            s = if s[..gt].contains(&b'[') { after(s, b"]>") } else { after(s, b">") };
        } else {
            return s;
        }
    }
}

/// A TLS-RPT report through mail-auth, after widening what RFC 8460's own
/// example writes as a single string where the schema has an array
/// (`mx-host`, `policy-string`).
fn tls_json(json: &[u8]) -> Result<TlsReport, String> {
    let parsed = |bytes: &[u8]| {
        TlsReport::parse_json(bytes).map_err(|e| match e {
            mail_auth::report::Error::ReportParseError(why) => format!("invalid TLS-RPT report: {why}"),
            other => format!("invalid TLS-RPT report: {other:?}"),
        })
    };
    let mut v: serde_json::Value = serde_json::from_slice(json).map_err(|e| format!("invalid TLS-RPT JSON: {e}"))?;
    let mut widened = false;
    if let Some(policies) = v.get_mut("policies").and_then(|p| p.as_array_mut()) {
        for p in policies {
            if let Some(details) = p.get_mut("policy").and_then(|d| d.as_object_mut()) {
                for key in ["mx-host", "policy-string"] {
                    if let Some(one) = details.get(key).filter(|x| x.is_string()).cloned() {
                        details.insert(key.to_string(), serde_json::Value::Array(vec![one]));
                        widened = true;
                    }
                }
            }
        }
    }
    if !widened {
        return parsed(json);
    }
    // mail-auth borrows its dates from the input, so it reads bytes.
    let bytes = serde_json::to_vec(&v).map_err(|e| format!("invalid TLS-RPT JSON: {e}"))?;
    parsed(&bytes)
}

#[cfg(test)]
mod tests;
