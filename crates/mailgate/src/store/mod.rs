//! The report store: what happened at the edge, kept for reports, the
//! dashboard and the advisor. Inbound DMARC evaluations, outbound delivery
//! attempts, TLS sessions (RFC 8460 outcomes), the reports we sent and the
//! reports other receivers sent us.
//!
//! Callers see only the [`Store`] trait; [`sqlite::Sqlite`] (one file in
//! `data_dir/reports.db`) is the implementation today, and a PostgreSQL one
//! for several nodes can take its place without touching them. Writes from
//! the SMTP and delivery paths go through a [`Recorder`], which batches
//! them on one writer task; reads (report building, API, CLI) call the
//! store directly from a blocking thread.
//!
//! Message bodies never come here: the spool is the only place a message
//! lives.
//!
//! May import: `config`, `mailgate-core`.

pub mod advice;
mod aggregate;
pub mod buffer;
pub mod pg;
mod read;
mod recorder;
mod schema;
mod sources;
pub mod sqlite;
pub mod suppression;
pub mod timeline;
mod write;

pub use recorder::{Recorder, start_writer};
pub use timeline::{MessageQuery, MessageSummary, Timeline, TimelineEvent, TrafficHour};

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// An error of the store: the database could not be opened, read or
/// written, or holds something this version cannot read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("report store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("report store (PostgreSQL): {0}")]
    Postgres(#[from] postgres::Error),
    #[error("report store: {0}")]
    Io(#[from] std::io::Error),
    #[error("report store: {0}")]
    Data(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// One DKIM signature's result, as reports name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DkimAuth {
    pub domain: String,
    pub selector: String,
    /// `pass`, `fail`, `neutral`, `temperror`, `permerror`, `none`, ...
    pub result: String,
}

/// The SPF result DMARC used.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpfAuth {
    pub domain: String,
    /// `mfrom` or `helo`.
    pub scope: String,
    pub result: String,
}

/// The DMARC record as we saw it (RFC 7489 `policy_published`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPublished {
    pub domain: String,
    pub p: String,
    pub sp: String,
    pub np: String,
    pub adkim: String,
    pub aspf: String,
    /// `t=y` (RFC 9989 testing mode).
    pub testing: bool,
    /// The `rua` URIs, as published.
    pub rua: Vec<String>,
}

/// One inbound message's DMARC evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Unix seconds.
    pub time: u64,
    pub source_ip: IpAddr,
    pub helo: String,
    /// The MAIL FROM domain; empty for a null reverse-path.
    pub envelope_from: String,
    pub header_from: String,
    pub spf: SpfAuth,
    pub dkim: Vec<DkimAuth>,
    /// `pass`, `fail`, `none`.
    pub arc: String,
    /// `pass`, `fail`, `none`, `temperror`, `permerror`.
    pub dmarc: String,
    pub spf_aligned: bool,
    pub dkim_aligned: bool,
    /// What we did, in RFC 7489 words: `none`, `quarantine`, `reject`.
    pub disposition: String,
    /// `None` when the author domain publishes no DMARC record.
    pub policy: Option<PolicyPublished>,
    /// RFC 7489 PolicyOverrideType when the disposition differs from the
    /// policy: `trusted_forwarder`, `local_policy`, ...
    pub override_reason: Option<String>,
    /// Look-alike findings, `identity:rule:resembles` each.
    pub lookalike: Vec<String>,
}

/// One outbound delivery attempt of some recipients of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub time: u64,
    pub queue_id: String,
    pub recipient_domain: String,
    pub recipients: u32,
    /// The host that answered (`host[ip]:port`), empty when none did.
    pub mx_host: String,
    /// The message went over TLS (the session's RFC 8460 outcome is in
    /// the TLS sessions).
    pub tls: bool,
    /// The SMTP reply code (0 when there was none, e.g. no connection).
    pub reply_code: u16,
    pub reply: String,
}

/// One outbound TLS session's outcome (RFC 8460).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsSession {
    pub time: u64,
    /// The recipient (policy) domain.
    pub policy_domain: String,
    pub mx_host: String,
    /// `sts`, `no-policy-found`, `require-tls`, `tlsa`.
    pub policy_type: String,
    /// `success` or an RFC 8460 result type (`starttls-not-supported`,
    /// `certificate-host-mismatch`, `validation-failure`, ...).
    pub result: String,
    /// The MTA-STS policy text applied (RFC 8460 `policy-string`); empty
    /// without one.
    #[serde(default)]
    pub policy_string: String,
}

/// What the writer task takes (and the on-disk buffer keeps, as JSON
/// lines, while the database is away).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Event {
    Evaluation(Box<Evaluation>),
    Delivery(DeliveryAttempt),
    Tls(TlsSession),
    /// A message's accept-time record, a delivery attempt or a notice
    /// (the dashboard's timelines, [`timeline`]).
    Timeline(Box<TimelineEvent>),
}

/// Which kind of report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    Dmarc,
    Tlsrpt,
}

impl ReportKind {
    pub const ALL: [ReportKind; 2] = [ReportKind::Dmarc, ReportKind::Tlsrpt];

    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Dmarc => "dmarc",
            ReportKind::Tlsrpt => "tlsrpt",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self> {
        match s {
            "dmarc" => Ok(ReportKind::Dmarc),
            "tlsrpt" => Ok(ReportKind::Tlsrpt),
            other => Err(StoreError::Data(format!("unknown report kind {other:?}"))),
        }
    }
}

/// One row of our DMARC aggregate report: the evaluations of a period that
/// share source IP, disposition and every authentication result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DmarcRow {
    pub source_ip: String,
    pub count: u64,
    pub disposition: String,
    pub dkim_aligned: bool,
    pub spf_aligned: bool,
    pub override_reason: Option<String>,
    pub header_from: String,
    pub envelope_from: String,
    pub dkim: Vec<DkimAuth>,
    pub spf: SpfAuth,
}

/// One row of our TLS-RPT report: sessions of a period that share MX host,
/// policy and result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsRow {
    pub mx_host: String,
    pub policy_type: String,
    pub result: String,
    pub count: u64,
    /// The MTA-STS policy text the sessions applied; empty without one.
    #[serde(default)]
    pub policy_string: String,
}

/// One header-from domain's DMARC report rows for a period, read from the
/// hourly aggregates (whole hours) and the raw rows (the period's partial
/// first and last hour).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainRows {
    pub domain: String,
    /// The newest record seen in the period that asks for aggregate
    /// reports (`rua`); `None` when none did.
    pub policy: Option<PolicyPublished>,
    /// Ordered by source IP, then busiest first.
    pub rows: Vec<DmarcRow>,
    /// The time of the first evaluation counted (Unix seconds).
    pub first: u64,
}

/// Per hour and header-from domain: messages, DMARC pass, and disposition
/// counts (for the dashboard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmarcHour {
    /// Unix seconds, a multiple of 3600.
    pub hour: u64,
    pub domain: String,
    pub messages: u64,
    pub dmarc_pass: u64,
    pub spf_aligned: u64,
    pub dkim_aligned: u64,
    pub rejected: u64,
    pub quarantined: u64,
    /// Messages with some look-alike finding.
    pub lookalike: u64,
}

/// One sending source of a header-from domain over a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub source_ip: IpAddr,
    pub messages: u64,
    pub spf_aligned: u64,
    pub dkim_aligned: u64,
    pub dmarc_pass: u64,
    /// Messages per disposition (`none`, `quarantine`, `reject`).
    pub dispositions: BTreeMap<String, u64>,
    /// One HELO name the source used.
    pub helo: String,
}

/// One UTC day of the DMARC aggregate reports other receivers sent us
/// about one of our domains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedDay {
    /// The day's first second (Unix).
    pub day: u64,
    pub reports: u64,
    pub messages: u64,
    /// Messages whose DKIM or SPF the reporter evaluated `pass` (RFC 7489
    /// `policy_evaluated`): DMARC passed.
    pub dmarc_pass: u64,
}

/// A sending source as the DMARC aggregate reports received about one of
/// our domains show it, summed over the reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedSource {
    pub source_ip: String,
    pub messages: u64,
    /// Messages the reporters evaluated DKIM, SPF, either (DMARC) `pass`.
    pub dkim_pass: u64,
    pub spf_pass: u64,
    pub dmarc_pass: u64,
    /// The reporters' organisation names, sorted.
    pub reporters: Vec<String>,
}

/// TLS sessions per policy domain, policy type and result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsCount {
    pub policy_domain: String,
    /// `sts`, `no-policy-found`, `require-tls`, `tlsa`.
    pub policy_type: String,
    /// `success` or an RFC 8460 result type.
    pub result: String,
    pub sessions: u64,
}

/// A report another receiver sent us (or one we sent), as parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestedReport {
    pub kind: ReportKind,
    pub org_name: String,
    pub report_id: String,
    /// The reporter's contact address.
    pub email: String,
    pub begin: u64,
    pub end: u64,
    pub policy_domain: String,
    /// DMARC: `policy_published` as the reporter saw it.
    pub policy: Option<PolicyPublished>,
    /// DMARC records.
    pub rows: Vec<ReportRow>,
    /// TLS-RPT policies with their counts and failure details.
    pub tls: Vec<TlsPolicyResult>,
}

/// One `record` of a DMARC aggregate report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    pub source_ip: String,
    pub count: u64,
    pub disposition: String,
    /// `policy_evaluated` DKIM and SPF: `pass` or `fail`.
    pub dkim_evaluated: String,
    pub spf_evaluated: String,
    pub reasons: Vec<String>,
    pub header_from: String,
    pub envelope_from: String,
    pub dkim: Vec<DkimAuth>,
    pub spf: Vec<SpfAuth>,
}

/// One `policies[]` entry of a TLS-RPT report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsPolicyResult {
    pub policy_type: String,
    pub policy_domain: String,
    pub policy_strings: Vec<String>,
    pub mx_hosts: Vec<String>,
    pub successes: u64,
    pub failures: u64,
    pub details: Vec<TlsFailure>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsFailure {
    pub result_type: String,
    pub sending_mta_ip: String,
    pub receiving_mx_hostname: String,
    pub receiving_ip: String,
    pub count: u64,
    pub reason_code: String,
}

/// A stored report's summary, for listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportSummary {
    pub id: i64,
    pub kind: ReportKind,
    pub org_name: String,
    pub report_id: String,
    pub policy_domain: String,
    pub begin: u64,
    pub end: u64,
    /// When we stored it.
    pub stored: u64,
    /// Messages (DMARC) or sessions (TLS-RPT) it counts.
    pub messages: u64,
}

impl ReportSummary {
    /// The stored report this summary heads, from the parts each store
    /// reads apart.
    fn report(&self, email: String, policy: Option<PolicyPublished>, rows: Vec<ReportRow>, tls: Vec<TlsPolicyResult>) -> IngestedReport {
        IngestedReport {
            kind: self.kind,
            org_name: self.org_name.clone(),
            report_id: self.report_id.clone(),
            email,
            begin: self.begin,
            end: self.end,
            policy_domain: self.policy_domain.clone(),
            policy,
            rows,
            tls,
        }
    }
}

/// Which stored reports to list: newest first, `after` an id for paging.
#[derive(Debug, Clone, Default)]
pub struct ReportQuery {
    pub domain: Option<String>,
    pub kind: Option<ReportKind>,
    pub limit: usize,
    pub before_id: Option<i64>,
}

/// A report we sent, for the log of sent reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentReport {
    pub kind: ReportKind,
    pub domain: String,
    pub report_id: String,
    pub begin: u64,
    pub end: u64,
    pub destinations: Vec<String>,
    /// Messages or sessions it counts.
    pub messages: u64,
}

/// The report store. All methods block: async callers use
/// `spawn_blocking` (the [`Recorder`] does for writes).
pub trait Store: advice::AdviceStore + suppression::SuppressionStore + Send + Sync + 'static {
    /// Writes a batch of events in one transaction.
    fn write(&self, events: &[Event]) -> Result<()>;

    /// Author domains with evaluations in `[from, to)` whose DMARC record
    /// asks for aggregate reports (`rua`), with the newest record seen.
    fn dmarc_domains(&self, from: u64, to: u64) -> Result<Vec<PolicyPublished>>;

    /// The aggregate rows of `domain`'s evaluations in `[from, to)`.
    fn dmarc_rows(&self, domain: &str, from: u64, to: u64) -> Result<Vec<DmarcRow>>;

    /// Every header-from domain's aggregate rows for `[from, to)` in one
    /// grouped scan (`domain`: only that one), ordered by domain. Whole
    /// hours come from the hourly aggregates, the partial first and last
    /// hour from the raw rows, so any period is counted exactly.
    fn dmarc_report(&self, domain: Option<&str>, from: u64, to: u64) -> Result<Vec<DomainRows>> {
        let mut out = Vec::new();
        self.dmarc_report_each(domain, from, to, &mut |d| {
            out.push(d);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`Store::dmarc_report`] one domain at a time, so that memory holds
    /// one domain's rows, not the period's. Runs on a connection of its
    /// own: `each` may take its time (the report task sends each report
    /// as it comes) without holding up other readers.
    fn dmarc_report_each(&self, domain: Option<&str>, from: u64, to: u64, each: &mut dyn FnMut(DomainRows) -> Result<()>) -> Result<()>;

    /// Per hour and header-from domain (`domain`: only that one): messages,
    /// DMARC pass, and disposition counts, for the hours that overlap
    /// `[from, to)`, oldest first.
    fn dmarc_hourly(&self, domain: Option<&str>, from: u64, to: u64) -> Result<Vec<DmarcHour>>;

    /// Sending sources of one header-from domain over the hours that
    /// overlap `[from, to)`, busiest first, at most `limit`.
    fn sources(&self, domain: &str, from: u64, to: u64, limit: usize) -> Result<Vec<Source>>;

    /// Header-from domains with traffic in the hours that overlap
    /// `[from, to)`, with their message counts, busiest first.
    fn domains(&self, from: u64, to: u64) -> Result<Vec<(String, u64)>>;

    /// TLS outcomes per policy domain, policy type and result type over
    /// the hours that overlap `[from, to)`.
    fn tls_summary(&self, from: u64, to: u64) -> Result<Vec<TlsCount>>;

    /// Recipient domains with TLS sessions in `[from, to)`.
    fn tls_domains(&self, from: u64, to: u64) -> Result<Vec<String>>;

    /// The TLS rows of `domain`'s sessions in `[from, to)`.
    fn tls_rows(&self, domain: &str, from: u64, to: u64) -> Result<Vec<TlsRow>>;

    /// The time of `domain`'s first evaluation (DMARC: author domain) or
    /// TLS session (TLS-RPT: recipient domain) in `[from, to)`, to date a
    /// first report.
    fn first_time(&self, kind: ReportKind, domain: &str, from: u64, to: u64) -> Result<Option<u64>>;

    /// Up to when the traffic of `domain` has been reported (Unix seconds).
    fn reported_until(&self, kind: ReportKind, domain: &str) -> Result<Option<u64>>;

    /// Records that `report` was sent (or deliberately not sent: empty
    /// destinations) and moves the domain's reported mark to its end, in
    /// one transaction, so the same traffic is never reported twice.
    fn mark_reported(&self, report: &SentReport) -> Result<()>;

    /// Reports we sent, newest first.
    fn sent_reports(&self, limit: usize) -> Result<Vec<SentReport>>;

    /// Stores a received report; `None` when the same report (kind, org
    /// name, report id) is already stored.
    fn insert_report(&self, report: &IngestedReport) -> Result<Option<i64>>;

    /// Stores several received reports, one answer each as
    /// [`Store::insert_report`] gives; in one transaction where the store
    /// can (an import of thousands of files commits a few times, not
    /// thousands).
    fn insert_reports(&self, reports: &[IngestedReport]) -> Result<Vec<Option<i64>>> {
        reports.iter().map(|r| self.insert_report(r)).collect()
    }

    fn list_reports(&self, query: &ReportQuery) -> Result<Vec<ReportSummary>>;

    fn get_report(&self, id: i64) -> Result<Option<(ReportSummary, IngestedReport)>>;

    /// Delivery attempts of one message, oldest first.
    fn deliveries(&self, queue_id: &str) -> Result<Vec<DeliveryAttempt>>;

    /// Deletes what is older than `before` (Unix seconds); answers how many
    /// rows went.
    fn prune(&self, before: u64) -> Result<u64>;

    /// Messages matching a search, newest first ([`timeline::search`]).
    fn find_messages(&self, query: &MessageQuery) -> Result<Vec<MessageSummary>>;

    /// The timeline of a queue id or of a refused message's event id.
    fn timeline(&self, id: &str) -> Result<Option<Timeline>>;

    /// Hourly traffic counters in `[from, to)`, oldest first.
    fn traffic(&self, from: u64, to: u64) -> Result<Vec<TrafficHour>>;

    /// Look-alike findings that resembled `resembles`, newest first.
    fn lookalikes(&self, resembles: &str, from: u64, to: u64, limit: usize) -> Result<Vec<timeline::LookalikeHit>>;

    /// The DMARC aggregate reports received about `domain` (their policy
    /// domain), summed per UTC day, oldest first. A report counts on the
    /// day of the middle of its period (most cover one day, not always
    /// midnight to midnight UTC); days in `[from, to)`.
    fn reported_days(&self, domain: &str, from: u64, to: u64) -> Result<Vec<ReportedDay>>;

    /// The sources in the DMARC aggregate reports received about `domain`
    /// whose period overlaps `[from, to)`, busiest first, at most `limit`.
    fn reported_sources(&self, domain: &str, from: u64, to: u64, limit: usize) -> Result<Vec<ReportedSource>>;

    /// Messages received per node (`[cluster] node_id`) in `[from, to)`,
    /// busiest first.
    fn nodes(&self, from: u64, to: u64) -> Result<Vec<(String, u64)>>;

    /// Each node's figures in `[from, to)` (messages, DMARC evaluations,
    /// delivery outcomes), by node name. Reads the raw rows: meant for a
    /// day, not for months.
    fn node_figures(&self, from: u64, to: u64) -> Result<Vec<NodeFigures>>;

    /// The right to build and send reports now: `None` when another node
    /// holds it (it is sending them). Released when the guard drops.
    fn try_report_lock(&self) -> Result<Option<ReportLock>>;
}

/// Messages per node over a range: one statement, the same in both stores.
pub(crate) const NODES_SQL: &str =
    "SELECT node, count(*) AS n FROM messages WHERE time >= ?1 AND time < ?2 GROUP BY node ORDER BY n DESC, node";

/// One node's figures over a period ([`Store::node_figures`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFigures {
    /// `[cluster] node_id`; empty for rows written before nodes had names.
    pub node: String,
    /// Messages whose transaction ended (accepted, quarantined or refused).
    pub received: u64,
    /// Quarantined included.
    pub accepted: u64,
    pub quarantined: u64,
    pub refused: u64,
    /// Inbound DMARC evaluations.
    pub evaluated: u64,
    /// Recipients, by the reply of their delivery attempt: 2xx delivered,
    /// 5xx bounced, anything else (4xx, no answer) deferred.
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
}

impl NodeFigures {
    /// Adds `o`'s figures to these (a total).
    pub fn add(&mut self, o: &NodeFigures) {
        self.received += o.received;
        self.accepted += o.accepted;
        self.quarantined += o.quarantined;
        self.refused += o.refused;
        self.evaluated += o.evaluated;
        self.delivered += o.delivered;
        self.deferred += o.deferred;
        self.bounced += o.bounced;
    }
}

/// Every node's figures over a range, by node: one statement, the same in
/// both stores (CAST: PostgreSQL's sum of a bigint is a numeric).
pub(crate) const NODE_FIGURES_SQL: &str = "
    SELECT node, CAST(sum(received) AS BIGINT), CAST(sum(accepted) AS BIGINT), CAST(sum(quarantined) AS BIGINT),
           CAST(sum(refused) AS BIGINT), CAST(sum(evaluated) AS BIGINT), CAST(sum(delivered) AS BIGINT),
           CAST(sum(deferred) AS BIGINT), CAST(sum(bounced) AS BIGINT)
    FROM (
        SELECT node, 1 AS received,
               CASE WHEN action IN ('accepted', 'quarantined') THEN 1 ELSE 0 END AS accepted,
               CASE WHEN action = 'quarantined' THEN 1 ELSE 0 END AS quarantined,
               CASE WHEN action IN ('accepted', 'quarantined') THEN 0 ELSE 1 END AS refused,
               0 AS evaluated, 0 AS delivered, 0 AS deferred, 0 AS bounced
        FROM messages WHERE time >= ?1 AND time < ?2
        UNION ALL
        SELECT node, 0, 0, 0, 0, 1, 0, 0, 0 FROM evaluations WHERE time >= ?1 AND time < ?2
        UNION ALL
        SELECT node, 0, 0, 0, 0, 0,
               CASE WHEN reply_code BETWEEN 200 AND 299 THEN recipients ELSE 0 END,
               CASE WHEN reply_code BETWEEN 500 AND 599 OR reply_code BETWEEN 200 AND 299 THEN 0 ELSE recipients END,
               CASE WHEN reply_code BETWEEN 500 AND 599 THEN recipients ELSE 0 END
        FROM deliveries WHERE time >= ?1 AND time < ?2
    ) AS rows
    GROUP BY node ORDER BY node";

/// Held while this node builds and sends reports; dropping it lets
/// another node (or a later run) take it.
pub struct ReportLock {
    /// What holds the lock (PostgreSQL: the connection the advisory lock
    /// lives on); nothing for a single node.
    _held: Option<Box<dyn Send>>,
}

impl ReportLock {
    /// The lock of a store no other node shares.
    pub fn local() -> ReportLock {
        ReportLock { _held: None }
    }

    pub(crate) fn holding(what: Box<dyn Send>) -> ReportLock {
        ReportLock { _held: Some(what) }
    }
}

impl Drop for ReportLock {
    fn drop(&mut self) {
        // Closing a PostgreSQL connection blocks: never on an async thread.
        if let Some(held) = self._held.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(move || drop(held));
                }
                Err(_) => drop(held),
            }
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests;
