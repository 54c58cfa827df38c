//! Prometheus metrics: one registry, built once at start, of typed metric
//! families that every stage bumps, and its text encoding for `/metrics`.
//!
//! Every family is registered in [`Metrics::new`] and every known label
//! value is created there too, so a scrape right after start shows each
//! series at 0 (a series that appears only on its first event breaks
//! `rate()` and alerts on absence). Label values are a closed set of words
//! chosen here: never an address, a domain or an IP, so the number of
//! series stays bounded whatever the traffic.
//!
//! Callers pass plain values (a role, a reply, a result word), so this
//! module depends on no stage and any stage may use it.
//!
//! May import: `store` (its report kinds), `mailgate-core`, `prometheus-client`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mailgate_core::reply::Reply;
use mailgate_core::session::Role;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// What `/metrics` answers with: the Prometheus text format 0.0.4, which
/// every scraper and parser reads (see [`Metrics::encode`]).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Listener roles, the only values of the `listener` label.
const ROLES: [Role; 3] = [Role::Mx, Role::Submission, Role::Submissions];

/// Why a message (or one of its recipients) was refused: the values of
/// `mailgate_messages_refused_total{reason}`. See [`refusal_reason`].
pub const REFUSAL_REASONS: [&str; 10] =
    ["relay", "policy", "auth", "size", "content", "syntax", "recipients", "spool", "resources", "other"];

/// Why a connection was refused at accept: the global or the per-IP cap.
pub const CONNECTION_LIMITS: [&str; 2] = ["global", "per-ip"];

/// Results per authentication method, as `Authentication-Results` words.
const AUTH_RESULTS: [(&str, &[&str]); 4] = [
    ("spf", &["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]),
    ("dkim", &["pass", "fail", "neutral", "policy", "none", "temperror", "permerror"]),
    ("arc", &["pass", "fail", "none", "temperror"]),
    ("dmarc", &["pass", "fail", "none", "temperror", "permerror"]),
];

/// RFC 7489 dispositions.
const DISPOSITIONS: [&str; 3] = ["none", "quarantine", "reject"];

/// Look-alike rules (checks/lookalike.rs).
const LOOKALIKE_RULES: [&str; 6] = ["confusable", "substitution", "edit-distance", "embedded", "display-name", "local-part"];

/// RFC 8460 §4.3 result types outbound delivery reports, and `success`.
/// A result outside this list is counted as `validation-failure`, the
/// RFC's catch-all, so the label set stays closed.
const TLS_RESULTS: [&str; 11] = [
    "success",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
];

/// The TLS policy that applied: RFC 8460 policy types (`tlsa` is DANE),
/// and our `[delivery] require_tls`.
const TLS_POLICIES: [&str; 4] = ["sts", "tlsa", "no-policy-found", "require-tls"];

/// The scheduler's view of the queue: the values of
/// `mailgate_queue_state_messages{state}`.
const QUEUE_STATES: [&str; 3] = ["waiting", "in_flight", "settling"];

/// What became of webhook events: the values of
/// `mailgate_webhook_events_total{result}` (see `webhook`).
pub const WEBHOOK_RESULTS: [&str; 6] = ["queued", "sent", "retried", "expired", "discarded", "lost"];

/// Seconds from acceptance to delivery or bounce: from "at once" to the
/// five-day default queue lifetime.
const LATENCY_BUCKETS: [f64; 12] = [0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 24.0 * 3600.0];

/// Seconds the inbound checks take (DNS lookups dominate).
const CHECK_BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

pub use crate::store::ReportKind;
use mailgate_core::bounce::{Category, Classification, Kind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    listener: &'static str,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DispositionLabel {
    disposition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    result: &'static str,
    policy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: &'static str,
    category: &'static str,
}

/// What the suppression list did: a recipient `added` (bounce,
/// complaint), a submission `refused` at RCPT or `dropped` with a notice.
const SUPPRESSION_ACTIONS: [&str; 3] = ["added", "refused", "dropped"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: &'static str,
}

/// What a submission rate limit applies to (`checks::rate`).
const RATE_SCOPES: [&str; 3] = ["user", "domain", "network"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

pub struct Metrics {
    registry: Registry,
    connections: Family<ListenerLabel, Counter>,
    connections_refused: Family<LimitLabels, Counter>,
    open_connections: Family<ListenerLabel, Gauge>,
    messages_received: Counter,
    messages_accepted: Counter,
    messages_refused: Family<ReasonLabel, Counter>,
    accepted_bytes: Counter,
    spool_errors: Counter,
    delivered: Counter,
    deferred: Counter,
    bounced: Counter,
    auth_results: Family<AuthLabels, Counter>,
    dmarc_dispositions: Family<DispositionLabel, Counter>,
    lookalike_hits: Family<RuleLabel, Counter>,
    delivery_failures: Family<FailureLabels, Counter>,
    async_bounces: Family<FailureLabels, Counter>,
    suppressed: Family<ActionLabel, Counter>,
    tls_results: Family<TlsLabels, Counter>,
    reports_sent: Family<KindLabel, Counter>,
    reports_ingested: Family<KindLabel, Counter>,
    queue_messages: Gauge,
    queue_recipients: Gauge,
    queue_state: Family<StateLabel, Gauge>,
    webhook_events: Family<ResultLabel, Counter>,
    webhook_outbox: Gauge,
    /// The three series of `queue_state`, held so the scheduler's loop
    /// sets them without a lookup.
    queue_states: [Gauge; 3],
    spool_fsyncs: Counter,
    spool_records: Counter,
    delivery_latency: Histogram,
    check_duration: Histogram,
    rate_limited: Family<ScopeLabel, Counter>,
    /// When pending recipients were last counted (see
    /// [`Metrics::recipients_due`]), and whether a count is running.
    recipients_counted: Mutex<Option<Instant>>,
    counting_recipients: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every family and creates every known label value at 0.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            connections: Family::default(),
            connections_refused: Family::default(),
            open_connections: Family::default(),
            messages_received: Counter::default(),
            messages_accepted: Counter::default(),
            messages_refused: Family::default(),
            accepted_bytes: Counter::default(),
            spool_errors: Counter::default(),
            delivered: Counter::default(),
            deferred: Counter::default(),
            bounced: Counter::default(),
            auth_results: Family::default(),
            dmarc_dispositions: Family::default(),
            lookalike_hits: Family::default(),
            delivery_failures: Family::default(),
            async_bounces: Family::default(),
            suppressed: Family::default(),
            tls_results: Family::default(),
            reports_sent: Family::default(),
            reports_ingested: Family::default(),
            queue_messages: Gauge::default(),
            queue_recipients: Gauge::default(),
            queue_state: Family::default(),
            webhook_events: Family::default(),
            webhook_outbox: Gauge::default(),
            queue_states: Default::default(),
            spool_fsyncs: Counter::default(),
            spool_records: Counter::default(),
            delivery_latency: Histogram::new(LATENCY_BUCKETS),
            check_duration: Histogram::new(CHECK_BUCKETS),
            rate_limited: Family::default(),
            recipients_counted: Mutex::new(None),
            counting_recipients: AtomicBool::new(false),
        };
        for role in ROLES {
            let listener = role.as_str();
            let _ = m.connections.get_or_create(&ListenerLabel { listener });
            let _ = m.open_connections.get_or_create(&ListenerLabel { listener });
            for limit in CONNECTION_LIMITS {
                let _ = m.connections_refused.get_or_create(&LimitLabels { listener, limit });
            }
        }
        for reason in REFUSAL_REASONS {
            let _ = m.messages_refused.get_or_create(&ReasonLabel { reason });
        }
        for (method, results) in AUTH_RESULTS {
            for &result in results {
                let _ = m.auth_results.get_or_create(&AuthLabels { method, result });
            }
        }
        for disposition in DISPOSITIONS {
            let _ = m.dmarc_dispositions.get_or_create(&DispositionLabel { disposition });
        }
        for rule in LOOKALIKE_RULES {
            let _ = m.lookalike_hits.get_or_create(&RuleLabel { rule });
        }
        for kind in [Kind::Hard, Kind::Soft] {
            for category in Category::ALL {
                let _ = m.delivery_failures.get_or_create(&FailureLabels { kind: kind.as_str(), category: category.as_str() });
                let _ = m.async_bounces.get_or_create(&FailureLabels { kind: kind.as_str(), category: category.as_str() });
            }
        }
        for result in TLS_RESULTS {
            for policy in TLS_POLICIES {
                let _ = m.tls_results.get_or_create(&TlsLabels { result, policy });
            }
        }
        for action in SUPPRESSION_ACTIONS {
            let _ = m.suppressed.get_or_create(&ActionLabel { action });
        }
        for kind in ReportKind::ALL {
            let _ = m.reports_sent.get_or_create(&KindLabel { kind: kind.as_str() });
            let _ = m.reports_ingested.get_or_create(&KindLabel { kind: kind.as_str() });
        }
        for result in WEBHOOK_RESULTS {
            let _ = m.webhook_events.get_or_create(&ResultLabel { result });
        }
        for scope in RATE_SCOPES {
            let _ = m.rate_limited.get_or_create(&ScopeLabel { scope });
        }
        m.queue_states = QUEUE_STATES.map(|state| m.queue_state.get_or_create_owned(&StateLabel { state }));
        m.register()
    }

    /// Names follow the Prometheus conventions: the encoder appends
    /// `_total` to counters and the unit to names registered with one.
    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "mailgate_rate_limited",
            "Submission recipients refused with 451 4.7.0 by a rate limit, by scope (user, domain, network)",
            self.rate_limited.clone(),
        );
        r.register("mailgate_connections", "TCP connections accepted, by listener role", self.connections.clone());
        r.register(
            "mailgate_connections_refused",
            "Connections refused at accept with 421 because a connection cap was reached (limit: global or per-ip)",
            self.connections_refused.clone(),
        );
        r.register("mailgate_open_connections", "SMTP sessions open now, by listener role", self.open_connections.clone());
        r.register(
            "mailgate_messages_received",
            "Messages whose content was received in full (end of DATA or last BDAT), whatever the outcome",
            self.messages_received.clone(),
        );
        r.register("mailgate_messages_accepted", "Messages stored in the spool and answered 250", self.messages_accepted.clone());
        r.register(
            "mailgate_messages_refused",
            "Messages refused, by reason; a refused MAIL or RCPT counts as one refused message",
            self.messages_refused.clone(),
        );
        r.register_with_unit(
            "mailgate_accepted",
            "Octets of accepted messages as stored (with our header fields)",
            Unit::Bytes,
            self.accepted_bytes.clone(),
        );
        r.register("mailgate_spool_errors", "Spool writes that failed, each answered with a 4xx", self.spool_errors.clone());
        r.register("mailgate_delivered", "Recipients delivered (or relayed) to the next hop", self.delivered.clone());
        r.register("mailgate_deferred", "Delivery attempts that failed temporarily, per recipient", self.deferred.clone());
        r.register("mailgate_bounced", "Recipients that failed permanently or expired in the queue", self.bounced.clone());
        r.register(
            "mailgate_delivery_failures",
            "Failed delivery attempts per recipient, by kind (hard, soft) and category of the reply (`mailgate bounce classify`)",
            self.delivery_failures.clone(),
        );
        r.register(
            "mailgate_async_bounces",
            "Asynchronous bounces (DSNs and plain-text bounces to VERP addresses) consumed, by kind and category",
            self.async_bounces.clone(),
        );
        r.register(
            "mailgate_suppression",
            "Suppression list actions: recipients added (bounce, complaint), submissions refused at RCPT or dropped with a notice",
            self.suppressed.clone(),
        );
        r.register(
            "mailgate_auth_results",
            "Inbound authentication results by method (spf, dkim per signature, arc, dmarc) and result",
            self.auth_results.clone(),
        );
        r.register(
            "mailgate_dmarc_dispositions",
            "Messages from domains publishing DMARC, by the disposition we applied (RFC 7489)",
            self.dmarc_dispositions.clone(),
        );
        r.register(
            "mailgate_lookalike_hits",
            "Messages with a look-alike sender domain finding, by rule (once per message and rule)",
            self.lookalike_hits.clone(),
        );
        r.register(
            "mailgate_outbound_tls_results",
            "Outbound TLS outcomes by RFC 8460 result type and policy type",
            self.tls_results.clone(),
        );
        r.register("mailgate_reports_sent", "DMARC aggregate and TLS-RPT reports sent, by kind", self.reports_sent.clone());
        r.register("mailgate_reports_ingested", "DMARC aggregate and TLS-RPT reports ingested, by kind", self.reports_ingested.clone());
        r.register("mailgate_queue_messages", "Messages in the queue", self.queue_messages.clone());
        r.register("mailgate_queue_recipients", "Recipients in the queue still to be delivered", self.queue_recipients.clone());
        r.register(
            "mailgate_queue_state_messages",
            "Queued messages by scheduler state: waiting for their time, in_flight (being delivered), settling (outcome being written)",
            self.queue_state.clone(),
        );
        r.register(
            "mailgate_webhook_events",
            "Webhook events by what became of them: queued (in the outbox), sent (2xx), retried (a failed POST), expired (max_age), discarded (webhook no longer configured), lost (not written)",
            self.webhook_events.clone(),
        );
        r.register("mailgate_webhook_outbox_events", "Webhook events in the outbox, not yet delivered", self.webhook_outbox.clone());
        r.register("mailgate_spool_fsyncs", "fsync calls made by the spool writer", self.spool_fsyncs.clone());
        r.register("mailgate_spool_records", "Records written to the spool", self.spool_records.clone());
        r.register_with_unit(
            "mailgate_delivery_latency",
            "Time from acceptance to delivery or bounce, per recipient",
            Unit::Seconds,
            self.delivery_latency.clone(),
        );
        r.register_with_unit(
            "mailgate_check_duration",
            "Time the inbound checks (SPF, DKIM, ARC, DMARC, look-alike) took per message",
            Unit::Seconds,
            self.check_duration.clone(),
        );
        self
    }

    /// The whole registry in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        openmetrics_to_prometheus(&out)
    }

    // -- listener ---------------------------------------------------------

    pub fn connection(&self, role: Role) {
        self.connections.get_or_create(&ListenerLabel { listener: role.as_str() }).inc();
    }

    /// `limit` is one of [`CONNECTION_LIMITS`].
    pub fn connection_refused(&self, role: Role, limit: &'static str) {
        self.connections_refused.get_or_create(&LimitLabels { listener: role.as_str(), limit }).inc();
    }

    /// Counts an open session until the returned guard is dropped.
    pub fn open_connection(&self, role: Role) -> OpenConnection {
        let gauge = self.open_connections.get_or_create_owned(&ListenerLabel { listener: role.as_str() });
        gauge.inc();
        OpenConnection(gauge)
    }

    // -- inbound ----------------------------------------------------------

    pub fn message_received(&self) {
        self.messages_received.inc();
    }

    pub fn message_accepted(&self, octets: u64) {
        self.messages_accepted.inc();
        self.accepted_bytes.inc_by(octets);
    }

    /// A recipient refused by a submission rate limit of `scope`.
    pub fn rate_limited(&self, scope: &'static str) {
        self.rate_limited.get_or_create(&ScopeLabel { scope }).inc();
    }

    /// Counts a refused message (or RCPT) under the reason its reply gives.
    pub fn message_refused(&self, reply: &Reply) {
        self.messages_refused.get_or_create(&ReasonLabel { reason: refusal_reason(reply) }).inc();
    }

    pub fn spool_error(&self) {
        self.spool_errors.inc();
    }

    /// `method` is spf, dkim, arc or dmarc; `result` its word in
    /// `Authentication-Results`. Anything else is not counted (a label
    /// value outside the documented set would be a new series).
    pub fn auth_result(&self, method: &str, result: &str) {
        let Some((method, results)) = AUTH_RESULTS.iter().find(|(m, _)| *m == method) else { return };
        if let Some(result) = results.iter().find(|r| **r == result) {
            self.auth_results.get_or_create(&AuthLabels { method, result }).inc();
        }
    }

    pub fn dmarc_disposition(&self, disposition: &str) {
        if let Some(disposition) = DISPOSITIONS.iter().find(|d| **d == disposition) {
            self.dmarc_dispositions.get_or_create(&DispositionLabel { disposition }).inc();
        }
    }

    pub fn lookalike_hit(&self, rule: &str) {
        if let Some(rule) = LOOKALIKE_RULES.iter().find(|r| **r == rule) {
            self.lookalike_hits.get_or_create(&RuleLabel { rule }).inc();
        }
    }

    pub fn check_duration(&self, seconds: f64) {
        self.check_duration.observe(seconds);
    }

    // -- scheduler and delivery -------------------------------------------

    /// A recipient delivered; `received_at` is when its message was
    /// accepted (Unix seconds).
    pub fn delivered(&self, received_at: u64) {
        self.delivered.inc();
        self.delivery_latency.observe(seconds_since(received_at));
    }

    /// A recipient failed for good (refused or expired).
    pub fn bounced(&self, received_at: u64) {
        self.bounced.inc();
        self.delivery_latency.observe(seconds_since(received_at));
    }

    pub fn deferred(&self) {
        self.deferred.inc();
    }

    /// A failed attempt for one recipient, classified.
    pub fn delivery_failure(&self, c: Classification) {
        self.delivery_failures.get_or_create(&FailureLabels { kind: c.kind.as_str(), category: c.category.as_str() }).inc();
    }

    /// An asynchronous bounce consumed at a VERP address, classified.
    pub fn async_bounce(&self, c: Classification) {
        self.async_bounces.get_or_create(&FailureLabels { kind: c.kind.as_str(), category: c.category.as_str() }).inc();
    }

    /// The suppression list `added` a recipient, `refused` or `dropped` one.
    pub fn suppression(&self, action: &'static str) {
        self.suppressed.get_or_create(&ActionLabel { action }).inc();
    }

    /// What the scheduler holds: messages filed under a due time, being
    /// delivered, and having their outcome written.
    pub fn scheduler_state(&self, waiting: usize, in_flight: usize, settling: usize) {
        for (gauge, n) in self.queue_states.iter().zip([waiting, in_flight, settling]) {
            gauge.set(n as i64);
        }
    }

    /// The TLS outcome of one outbound connection; `policy` is sts,
    /// no-policy-found or require-tls, `result` success or an RFC 8460
    /// failure type.
    pub fn tls_result(&self, policy: &str, result: &str) {
        let policy = TLS_POLICIES.iter().find(|p| **p == policy).copied().unwrap_or("no-policy-found");
        let result = TLS_RESULTS.iter().find(|r| **r == result).copied().unwrap_or("validation-failure");
        self.tls_results.get_or_create(&TlsLabels { result, policy }).inc();
    }

    // -- reports ----------------------------------------------------------

    /// A report went out (queued to the spool, or POSTed for `https:`
    /// TLS-RPT destinations); one per destination.
    pub fn report_sent(&self, kind: ReportKind) {
        self.reports_sent.get_or_create(&KindLabel { kind: kind.as_str() }).inc();
    }

    /// A report was parsed into the store (not a duplicate, not rejected).
    pub fn report_ingested(&self, kind: ReportKind) {
        self.reports_ingested.get_or_create(&KindLabel { kind: kind.as_str() }).inc();
    }

    // -- webhooks ---------------------------------------------------------

    /// `n` webhook events had `result`, one of [`WEBHOOK_RESULTS`].
    pub fn webhook_events(&self, result: &'static str, n: u64) {
        self.webhook_events.get_or_create(&ResultLabel { result }).inc_by(n);
    }

    /// Events in the webhook outbox now.
    pub fn set_webhook_outbox(&self, n: u64) {
        self.webhook_outbox.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    // -- read at scrape time ----------------------------------------------

    /// The spool's own counters and its size, read when scraped.
    pub fn set_spool(&self, messages: usize, fsyncs: u64, records: u64) {
        self.queue_messages.set(messages as i64);
        // The spool keeps these counters; copy them in (never decreasing).
        self.spool_fsyncs.inner().fetch_max(fsyncs, Ordering::Relaxed);
        self.spool_records.inner().fetch_max(records, Ordering::Relaxed);
    }

    pub fn set_queue_recipients(&self, n: u64) {
        self.queue_recipients.set(i64::try_from(n).unwrap_or(i64::MAX));
        *self.recipients_counted.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether pending recipients should be counted again: a count reads
    /// every queued envelope, so it is redone at most every `every`; and
    /// never two at once. Call [`Metrics::recipients_counted`] when done.
    pub fn recipients_due(&self, every: std::time::Duration) -> bool {
        let last = *self.recipients_counted.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        self.counting_recipients.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Ends a count [`Metrics::recipients_due`] started.
    pub fn recipients_counted(&self, n: Option<u64>) {
        if let Some(n) = n {
            self.set_queue_recipients(n);
        }
        self.counting_recipients.store(false, Ordering::Release);
    }
}

/// Decrements the open-connections gauge of its listener when dropped.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// prometheus-client writes OpenMetrics, whose `# HELP`/`# TYPE` lines name
/// a counter without its `_total` suffix. Parsers of the older Prometheus
/// format (Python's `prometheus_client.parser`, many scrapers' fallbacks)
/// then take `x_total` for an untyped metric of its own. This writes the
/// Prometheus format instead: counters' metadata names the sample
/// (`x_total`), and the OpenMetrics-only `# UNIT` and `# EOF` lines go.
fn openmetrics_to_prometheus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut help: Option<&str> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(h) = help.take() {
                push_line(&mut out, &["# HELP ", h]);
            }
            help = Some(rest);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                push_line(&mut out, &["# HELP ", name, suffix, " ", text]);
            }
            push_line(&mut out, &["# TYPE ", name, suffix, " ", kind]);
        } else if !(line.starts_with("# UNIT ") || line == "# EOF") {
            push_line(&mut out, &[line]);
        }
    }
    out
}

fn push_line(out: &mut String, parts: &[&str]) {
    parts.iter().for_each(|p| out.push_str(p));
    out.push('\n');
}

fn seconds_since(unix: u64) -> f64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    (now - unix as f64).max(0.0)
}

/// The reason a refusal counts under, from the reply where the refusal
/// happens (enhanced status code first, then the words of our own
/// replies where one code covers several reasons):
///
/// | reason | replies |
/// |---|---|
/// | `relay` | `554 5.7.1 Relay access denied`, source routing / `%`-hack refused |
/// | `auth` | `530 5.7.0` (authentication required), a sender address the user does not own, a `From:` the user may not send as |
/// | `policy` | any other `5.7.x` / `4.7.x`: the inbound checks (SPF, DMARC, look-alike) |
/// | `size` | `5.3.4`, `5.2.3` |
/// | `content` | `5.6.x` but `5.6.7`: bare CR/LF, NUL, lines too long |
/// | `syntax` | `5.1.x`, `5.5.x`, `5.6.7` (non-ASCII address without SMTPUTF8) |
/// | `recipients` | `452 4.5.3` too many recipients |
/// | `spool` | `4.3.0`, `4.3.1`: the spool could not store it, the disk is full |
/// | `resources` | `4.3.2`: the in-flight memory budget is exhausted |
/// | `other` | anything else |
pub fn refusal_reason(reply: &Reply) -> &'static str {
    let Some(s) = reply.status else { return "other" };
    let text = reply.lines.join(" ");
    match (s.class, s.subject, s.detail) {
        (_, 7, _) if text.contains("Relay access denied") || text.contains("routing refused") => "relay",
        (_, 7, 0) => "auth",
        (_, 7, _) if text.contains("not owned by user") || text.contains("may not send as") => "auth",
        (_, 7, _) => "policy",
        (_, 3, 4) | (_, 2, 3) => "size",
        (_, 6, 7) => "syntax",
        (_, 6, _) => "content",
        (_, 5, 3) => "recipients",
        (_, 1, _) | (_, 5, _) => "syntax",
        (_, 3, 2) => "resources",
        (_, 3, _) => "spool",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailgate_core::reply::{StatusCode, status};

    fn reason(code: u16, s: StatusCode, text: &str) -> &'static str {
        refusal_reason(&Reply::new(code, s, text))
    }

    #[test]
    fn refusals_are_classified_by_their_reply() {
        assert_eq!(reason(554, status::POLICY, "Relay access denied"), "relay");
        assert_eq!(reason(550, status::POLICY, "Source routing refused"), "relay");
        assert_eq!(reason(550, status::POLICY, "Sender-specified routing refused: %"), "relay");
        assert_eq!(reason(530, status::AUTH_REQUIRED, "Authentication required"), "auth");
        assert_eq!(reason(553, status::POLICY, "Sender address <a@b> not owned by user u"), "auth");
        assert_eq!(reason(550, StatusCode::new(5, 7, 1), "Message refused: you may not send as x@y"), "auth");
        assert_eq!(reason(550, StatusCode::new(5, 7, 1), "Message refused: DMARC policy of x is p=reject"), "policy");
        assert_eq!(reason(451, StatusCode::new(4, 7, 1), "temporary DNS failure; try again later"), "policy");
        assert_eq!(reason(552, status::MSG_TOO_BIG, "Message size exceeds fixed maximum message size"), "size");
        assert_eq!(reason(550, status::MEDIA, "Message refused: NUL character in content"), "content");
        assert_eq!(reason(553, status::NEED_UTF8, "Non-ASCII address requires SMTPUTF8"), "syntax");
        assert_eq!(reason(501, status::BAD_DEST_SYNTAX, "Empty recipient"), "syntax");
        assert_eq!(reason(452, status::TOO_MANY_RCPTS, "Too many recipients"), "recipients");
        assert_eq!(reason(452, status::NO_SYSTEM_STORAGE, "Insufficient system storage"), "spool");
        assert_eq!(reason(451, status::SYSTEM_ERROR, "Local error in processing"), "spool");
        assert_eq!(refusal_reason(&mailgate_core::session::over_budget_reply()), "resources");
        assert_eq!(refusal_reason(&Reply::bare(550, vec!["no".into()])), "other");
        for r in ["relay", "auth", "policy", "size", "content", "syntax", "recipients", "spool", "resources", "other"] {
            assert!(REFUSAL_REASONS.contains(&r), "{r} is not pre-created");
        }
    }

    #[test]
    fn every_family_is_exported_at_zero_from_the_start() {
        let text = Metrics::new().encode();
        for name in [
            "mailgate_connections_total{listener=\"submissions\"} 0",
            "mailgate_messages_refused_total{reason=\"relay\"} 0",
            "mailgate_auth_results_total{method=\"dkim\",result=\"pass\"} 0",
            "mailgate_outbound_tls_results_total{result=\"certificate-host-mismatch\",policy=\"sts\"} 0",
            "mailgate_reports_sent_total{kind=\"tlsrpt\"} 0",
            "mailgate_reports_ingested_total{kind=\"dmarc\"} 0",
            "mailgate_accepted_bytes_total 0",
            "mailgate_messages_accepted_total 0",
            "mailgate_queue_state_messages{state=\"in_flight\"} 0",
            "mailgate_delivery_latency_seconds_count 0",
            "mailgate_check_duration_seconds_count 0",
        ] {
            assert!(text.lines().any(|l| l == name), "missing {name:?} in\n{text}");
        }
        assert!(text.contains("# TYPE mailgate_delivery_latency_seconds histogram"));
        assert!(text.contains("# TYPE mailgate_connections_total counter\n"));
        assert!(text.contains("# HELP mailgate_accepted_bytes_total Octets"));
        assert!(text.contains("# TYPE mailgate_queue_messages gauge\n"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }

    #[test]
    fn unknown_label_values_do_not_make_new_series() {
        let m = Metrics::new();
        let before = m.encode().lines().count();
        m.auth_result("spf", "192.0.2.1");
        m.auth_result("bimi", "pass");
        m.lookalike_hit("evil.test");
        m.dmarc_disposition("a@b.test");
        m.tls_result("mx.evil.test", "odd");
        let text = m.encode();
        assert_eq!(text.lines().count(), before);
        assert!(text.contains("mailgate_outbound_tls_results_total{result=\"validation-failure\",policy=\"no-policy-found\"} 1"));
    }
}
