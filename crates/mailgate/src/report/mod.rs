//! The reports mailgate sends, and reads ([`ingest`]: the reports other
//! receivers send us). Sent: DMARC aggregate reports (RFC 7489 §7.2,
//! RFC 9990) to the author domains that ask for them, and TLS-RPT reports
//! (RFC 8460) to the recipient domains that ask for them, built from the
//! report store.
//!
//! Reports are ordinary mail: they are DKIM-signed like any of our
//! messages (when `[reports] from` is one of our domains) and put on the
//! spool, and the scheduler delivers them; only TLS-RPT's `https:`
//! destinations are POSTed from here. A domain's traffic is reported once:
//! the store's mark for it moves to the end of a report only after the
//! report is safely in the spool (or posted), and the next report starts
//! there. A task ([`start`]) reports every period's traffic when the period
//! ends; [`Reports::send_now`] (`mailgate reports send --now`) reports
//! everything up to now at once.
//!
//! May import: `store`, `spool`, `sign`, `config`, `dns`, `mailgate-core`.

pub mod bounce;
pub mod dest;
pub mod dmarc;
pub mod ingest;
pub mod tlsrpt;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use mail_auth::mta_sts::ReportUri;
use mailgate_core::envelope::ClientInfo;
use mailgate_core::{Envelope, Mailbox, Recipient, ReversePath};
use serde::Serialize;

use crate::config::Config;
use crate::spool::Spool;
use crate::store::{self, ReportKind, SentReport, Store};
use dmarc::{Period, Reporter};

/// What one report was: the answer of `reports send` and the log line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sent {
    pub domain: String,
    pub kind: ReportKind,
    pub report_id: String,
    pub begin: u64,
    /// Exclusive: the next report starts here.
    pub end: u64,
    /// Addresses and URLs it went to; empty when none would take it.
    pub destinations: Vec<String>,
    /// Messages (DMARC) or TLS sessions (TLS-RPT) it counts.
    pub messages: u64,
    /// The queue id of the report message, when one was spooled.
    pub queue_id: Option<String>,
}

/// What `reports preview` shows: the reports that would go now.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Preview {
    pub dmarc: Option<String>,
    pub tlsrpt: Option<String>,
}

pub struct Reports {
    who: Reporter,
    from: Mailbox,
    hostname: String,
    dmarc_interval: u64,
    tlsrpt_interval: u64,
    store: Arc<dyn Store>,
    recorder: Arc<store::Recorder>,
    spool: Arc<Spool>,
    signer: Arc<crate::sign::Signer>,
    resolver: TokioResolver,
    /// What delivery trusts (`[delivery] ca_file`), for `https:` reports.
    tls: Arc<rustls::ClientConfig>,
    metrics: Arc<crate::metrics::Metrics>,
    timeout: Duration,
    /// One run at a time: the periodic task and `send --now` must not
    /// build the same period twice.
    running: tokio::sync::Mutex<()>,
}

/// Everything the reports need from the running server.
pub struct Parts {
    pub store: Arc<dyn Store>,
    pub recorder: Arc<store::Recorder>,
    pub spool: Arc<Spool>,
    pub signer: Arc<crate::sign::Signer>,
    pub resolver: TokioResolver,
    pub tls: Arc<rustls::ClientConfig>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// How far back a run looks for domains with traffic: a domain unseen
/// for longer has nothing worth reporting, and the listing stays a scan of
/// days, not of the whole retention period.
const LOOKBACK: u64 = 7 * 86_400;

fn lookback(until: u64, interval: u64) -> u64 {
    until.saturating_sub(LOOKBACK.max(2 * interval))
}

fn floor(t: u64, interval: u64) -> u64 {
    t - t % interval.max(1)
}

fn report_id(kind: ReportKind, begin: u64) -> String {
    format!("{}-{begin}-{:016x}", kind.as_str(), rand::random::<u64>())
}

impl Reports {
    pub fn new(config: &Config, parts: Parts) -> Reports {
        let r = &config.reports;
        let email = r.from.to_string();
        let submitter = r.from.domain().map(|d| d.to_string()).unwrap_or_else(|| config.hostname.clone());
        Reports {
            who: Reporter { org_name: r.org_name.clone(), email, submitter },
            from: r.from.clone(),
            hostname: config.hostname.clone(),
            dmarc_interval: r.dmarc_interval.max(60),
            tlsrpt_interval: r.tlsrpt_interval.max(60),
            store: parts.store,
            recorder: parts.recorder,
            spool: parts.spool,
            signer: parts.signer,
            resolver: parts.resolver,
            tls: parts.tls,
            metrics: parts.metrics,
            timeout: Duration::from_secs(config.delivery.connect_timeout.max(5)),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Reports everything not yet reported up to now (`domain`: only that
    /// one), at once. Waits for the current second to end and for the
    /// recorder to write what came before, so that nothing of the period
    /// is missing and a later report starts exactly where this one ends.
    pub async fn send_now(&self, domain: Option<&str>) -> Vec<Sent> {
        let until = next_second().await;
        self.recorder.flush().await;
        self.send_until(until, until, domain).await
    }

    /// Reports each domain's traffic from its mark up to `dmarc_until`
    /// (DMARC) and `tls_until` (TLS-RPT). Under the store's report lock:
    /// with several nodes, the one that holds it reports everyone's
    /// traffic, and the others send nothing (the marks it moves are
    /// shared, so whoever comes next finds only what came since).
    pub async fn send_until(&self, dmarc_until: u64, tls_until: u64, domain: Option<&str>) -> Vec<Sent> {
        let _one = self.running.lock().await;
        let s = self.store.clone();
        let _lock = match blocking(move || s.try_report_lock()).await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                tracing::info!("reports: another node holds the report lock and sends them; nothing sent here");
                return Vec::new();
            }
            Err(e) => {
                tracing::warn!(error = %e, "reports: cannot take the report lock; nothing sent");
                return Vec::new();
            }
        };
        let mut sent = self.dmarc_all(dmarc_until, domain).await;
        sent.extend(self.tlsrpt_all(tls_until, domain).await);
        sent
    }

    /// The reports `domain` would get now, marking nothing.
    pub async fn preview(&self, domain: &str) -> Result<Preview, store::StoreError> {
        self.recorder.flush().await;
        let until = store::unix_now() + 1;
        let mut out = Preview::default();
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let s = self.store.clone();
        let d = domain.clone();
        let found = blocking(move || {
            let policy = s.dmarc_domains(lookback(until, 0), until)?.into_iter().find(|p| p.domain == d);
            let Some(policy) = policy else { return Ok(None) };
            let from = s.reported_until(ReportKind::Dmarc, &d)?.unwrap_or(0);
            let Some(rows) = s.dmarc_report(Some(&d), from, until)?.pop() else { return Ok(None) };
            Ok(Some((policy, rows.rows, from, Some(rows.first))))
        })
        .await?;
        if let Some((policy, rows, from, first)) = found.filter(|f| !f.1.is_empty()) {
            let period = Period { begin: begin_of(from, first, self.dmarc_interval), end: until };
            out.dmarc = Some(dmarc::build(&self.who, &policy, &rows, period, "preview").to_xml());
        }
        let s = self.store.clone();
        let d = domain.clone();
        let tls = blocking(move || {
            let from = s.reported_until(ReportKind::Tlsrpt, &d)?.unwrap_or(0);
            Ok((s.tls_rows(&d, from, until)?, from, s.first_time(ReportKind::Tlsrpt, &d, from, until)?))
        })
        .await?;
        if !tls.0.is_empty() {
            let period = Period { begin: begin_of(tls.1, tls.2, self.tlsrpt_interval), end: until };
            let report = tlsrpt::build(&self.who, &domain, &tls.0, period, "preview");
            let pretty: serde_json::Value = serde_json::from_str(&tlsrpt::json(&report)).unwrap_or_default();
            out.tlsrpt = Some(serde_json::to_string_pretty(&pretty).unwrap_or_default());
        }
        Ok(out)
    }

    async fn dmarc_all(&self, until: u64, only: Option<&str>) -> Vec<Sent> {
        let s = self.store.clone();
        let since = lookback(until, self.dmarc_interval);
        let only = only.map(str::to_string);
        // The domains to report, by the mark each is reported up to.
        let marks = blocking(move || {
            let mut marks: BTreeMap<u64, Vec<store::PolicyPublished>> = BTreeMap::new();
            for policy in s.dmarc_domains(since, until)? {
                if only.as_ref().is_some_and(|d| !d.eq_ignore_ascii_case(&policy.domain)) {
                    continue;
                }
                let from = s.reported_until(ReportKind::Dmarc, &policy.domain)?.unwrap_or(0);
                if from < until {
                    marks.entry(from).or_default().push(policy);
                }
            }
            Ok(marks)
        });
        let marks = match marks.await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the domains to send DMARC reports to");
                return Vec::new();
            }
        };
        let mut sent = Vec::new();
        // One grouped scan per distinct mark: normally every domain's mark
        // is the end of the last period, so one scan serves them all. The
        // scan streams a domain at a time; each report goes before the
        // next domain's rows are read.
        for (from, policies) in marks {
            let mut wanted: HashMap<String, store::PolicyPublished> = HashMap::new();
            for p in policies {
                wanted.entry(p.domain.clone()).or_insert(p);
            }
            let names: HashSet<String> = wanted.keys().cloned().collect();
            let one = (names.len() == 1).then(|| names.iter().next().cloned()).flatten();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<store::DomainRows>(2);
            let s = self.store.clone();
            let scan = tokio::task::spawn_blocking(move || {
                s.dmarc_report_each(one.as_deref(), from, until, &mut |d| {
                    if names.contains(&d.domain) {
                        tx.blocking_send(d).map_err(|_| store::StoreError::Data("the report task stopped".into()))?;
                    }
                    Ok(())
                })
            });
            while let Some(d) = rx.recv().await {
                let Some(policy) = wanted.remove(&d.domain) else { continue };
                match self.dmarc_one(policy, from, d.rows, Some(d.first), until).await {
                    Ok(Some(s)) => sent.push(s),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(domain = %d.domain, error = %e, "DMARC report not sent; trying again next time"),
                }
            }
            match scan.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the DMARC report rows; trying again next time"),
                Err(e) => tracing::warn!(error = %e, "the DMARC report scan failed; trying again next time"),
            }
        }
        sent
    }

    async fn dmarc_one(
        &self,
        policy: store::PolicyPublished,
        from: u64,
        rows: Vec<store::DmarcRow>,
        first: Option<u64>,
        until: u64,
    ) -> anyhow::Result<Option<Sent>> {
        // No traffic, no report.
        if rows.is_empty() {
            return Ok(None);
        }
        let domain = policy.domain.clone();
        let period = Period { begin: begin_of(from, first, self.dmarc_interval), end: until };
        let id = report_id(ReportKind::Dmarc, period.begin);
        let report = dmarc::build(&self.who, &policy, &rows, period, &id);
        let messages: u64 = rows.iter().map(|r| r.count).sum();
        let mut to = Vec::new();
        for m in dest::mailtos(&policy.rua) {
            match dest::authorized(&self.resolver, &domain, &m.host).await {
                Ok(true) => to.push(m),
                Ok(false) => tracing::info!(
                    domain = %domain, destination = %m.address,
                    "DMARC report destination outside the domain has not authorised reports for it (RFC 7489 §7.1); skipped"
                ),
                Err(e) => anyhow::bail!("{e}"),
            }
        }
        let message_id = format!("{}@{}", id, self.who.submitter);
        let mut addresses: Vec<String> = to.iter().map(|m| m.address.clone()).collect();
        let mut content = dmarc::message(&self.who, &report, &addresses, &message_id)?;
        // `!size`: a destination that takes less than the report gets none
        // (RFC 7489 §7.2.1.2); the others get it addressed without it.
        let size = content.len() as u64;
        let fits: Vec<String> = to
            .iter()
            .filter(|m| {
                let ok = m.max_size == 0 || size <= m.max_size;
                if !ok {
                    tracing::info!(domain = %domain, destination = %m.address, size, limit = m.max_size,
                        "DMARC report larger than the destination's !size limit; not sent there");
                }
                ok
            })
            .map(|m| m.address.clone())
            .collect();
        if fits != addresses {
            addresses = fits;
            content = dmarc::message(&self.who, &report, &addresses, &message_id)?;
        }
        let queue_id = if addresses.is_empty() { None } else { Some(self.spool_report(&addresses, content).await?) };
        let sent = Sent {
            domain,
            kind: ReportKind::Dmarc,
            report_id: id,
            begin: period.begin,
            end: period.end,
            destinations: addresses,
            messages,
            queue_id,
        };
        self.mark(&sent).await?;
        Ok(Some(sent))
    }

    async fn tlsrpt_all(&self, until: u64, only: Option<&str>) -> Vec<Sent> {
        let s = self.store.clone();
        let since = lookback(until, self.tlsrpt_interval);
        let domains = match blocking(move || s.tls_domains(since, until)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the domains to send TLS-RPT reports to");
                return Vec::new();
            }
        };
        let mut sent = Vec::new();
        for domain in domains {
            if only.is_some_and(|d| !d.eq_ignore_ascii_case(&domain)) {
                continue;
            }
            match self.tlsrpt_one(&domain, until).await {
                Ok(Some(s)) => sent.push(s),
                Ok(None) => {}
                Err(e) => tracing::warn!(domain = %domain, error = %e, "TLS-RPT report not sent; trying again next time"),
            }
        }
        sent
    }

    async fn tlsrpt_one(&self, domain: &str, until: u64) -> anyhow::Result<Option<Sent>> {
        let s = self.store.clone();
        let d = domain.to_string();
        let (from, rows, first) = blocking(move || {
            let from = s.reported_until(ReportKind::Tlsrpt, &d)?.unwrap_or(0);
            if from >= until {
                return Ok((from, Vec::new(), None));
            }
            Ok((from, s.tls_rows(&d, from, until)?, s.first_time(ReportKind::Tlsrpt, &d, from, until)?))
        })
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let period = Period { begin: begin_of(from, first, self.tlsrpt_interval), end: until };
        let id = report_id(ReportKind::Tlsrpt, period.begin);
        let messages: u64 = rows.iter().map(|r| r.count).sum();
        let Some(rua) = dest::tlsrpt(&self.resolver, domain).await.map_err(anyhow::Error::msg)? else {
            // Most domains publish no TLS-RPT record: mark their traffic
            // as handled, quietly, and list nothing.
            let none = SentReport {
                kind: ReportKind::Tlsrpt,
                domain: domain.to_string(),
                report_id: id,
                begin: period.begin,
                end: period.end,
                destinations: Vec::new(),
                messages,
            };
            let s = self.store.clone();
            blocking(move || s.mark_reported(&none)).await?;
            tracing::debug!(domain, "no TLS-RPT record; no report");
            return Ok(None);
        };
        let report = tlsrpt::build(&self.who, domain, &rows, period, &id);
        let gz = dmarc::gzip(tlsrpt::json(&report).as_bytes())?;
        let mut destinations = Vec::new();
        let mut failed = Vec::new();
        let mailto: Vec<String> = rua
            .iter()
            .filter_map(|u| match u {
                ReportUri::Mail(a) => Some(a.clone()),
                ReportUri::Http(_) => None,
            })
            .collect();
        let mut queue_id = None;
        if !mailto.is_empty() {
            let message_id = format!("{}@{}", id, self.who.submitter);
            let content = tlsrpt::message(&self.who, &report, domain, &mailto, &gz, &message_id)?;
            match self.spool_report(&mailto, content).await {
                Ok(id) => {
                    queue_id = Some(id);
                    destinations.extend(mailto.iter().cloned());
                }
                Err(e) => failed.push(e.to_string()),
            }
        }
        for u in &rua {
            if let ReportUri::Http(url) = u {
                match tlsrpt::post(&self.resolver, &self.tls, self.timeout, url, gz.clone()).await {
                    Ok(()) => destinations.push(url.clone()),
                    Err(e) => {
                        tracing::warn!(domain, url = %url, error = %e, "TLS-RPT report POST failed");
                        failed.push(e);
                    }
                }
            }
        }
        // Every destination failed: keep the traffic for the next try.
        if destinations.is_empty() && !failed.is_empty() {
            anyhow::bail!("no destination took the report: {}", failed.join("; "));
        }
        let sent = Sent {
            domain: domain.to_string(),
            kind: ReportKind::Tlsrpt,
            report_id: id,
            begin: period.begin,
            end: period.end,
            destinations,
            messages,
            queue_id,
        };
        self.mark(&sent).await?;
        Ok(Some(sent))
    }

    /// Signs (when `[reports] from` is ours) and spools a report message
    /// to `to`; the scheduler delivers it like any other.
    async fn spool_report(&self, to: &[String], content: Vec<u8>) -> anyhow::Result<String> {
        let recipients: Vec<Recipient> = to
            .iter()
            .filter_map(|a| match Mailbox::parse(a, true) {
                Ok(m) => Some(Recipient::new(m)),
                Err(e) => {
                    tracing::info!(address = %a, error = %e, "report destination is not an address; skipped");
                    None
                }
            })
            .collect();
        if recipients.is_empty() {
            anyhow::bail!("no destination is a valid address");
        }
        let content = match self.signer.sign_message(&content) {
            Ok(Some(sig)) => [sig.into_bytes(), content].concat(),
            Ok(None) => content,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sign the report; sending it unsigned");
                content
            }
        };
        let envelope = Envelope {
            sender: ReversePath::Mailbox(self.from.clone()),
            recipients,
            body: Default::default(),
            smtputf8: false,
            ret: None,
            envid: None,
            client: ClientInfo {
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                helo: self.hostname.clone(),
                authenticated_as: None,
                tls: None,
                listener: "report".into(),
            },
            received_at: store::unix_now(),
            delay_warned: false,
            quarantine: false,
        };
        let id = self.spool.new_id();
        self.spool.store(&id, envelope, &content).await.map_err(|e| anyhow::anyhow!("cannot spool the report: {e}"))?;
        Ok(id.as_str().to_string())
    }

    /// Moves the domain's mark to the report's end and logs it sent.
    async fn mark(&self, sent: &Sent) -> anyhow::Result<()> {
        let record = SentReport {
            kind: sent.kind,
            domain: sent.domain.clone(),
            report_id: sent.report_id.clone(),
            begin: sent.begin,
            end: sent.end,
            destinations: sent.destinations.clone(),
            messages: sent.messages,
        };
        let s = self.store.clone();
        blocking(move || s.mark_reported(&record)).await?;
        if !sent.destinations.is_empty() {
            self.metrics.report_sent(sent.kind);
        }
        tracing::info!(
            domain = %sent.domain, kind = sent.kind.as_str(), report_id = %sent.report_id,
            destinations = %sent.destinations.join(","), count = sent.messages, begin = sent.begin, end = sent.end,
            queue_id = sent.queue_id.as_deref().unwrap_or(""),
            "{}", if sent.destinations.is_empty() { "report not sent: no destination takes it" } else { "report sent" }
        );
        Ok(())
    }
}

/// Where a report starts: the domain's mark, or for its first report the
/// start of the period of its first traffic.
fn begin_of(mark: u64, first: Option<u64>, interval: u64) -> u64 {
    match (mark, first) {
        (0, Some(t)) => floor(t, interval),
        _ => mark,
    }
}

/// Sleeps into the next whole second and answers it.
async fn next_second() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let wait = Duration::from_secs(1).saturating_sub(Duration::from_nanos(now.subsec_nanos() as u64));
    tokio::time::sleep(wait).await;
    now.as_secs() + 1
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, store::StoreError> + Send + 'static) -> Result<T, store::StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| store::StoreError::Data(format!("report task failed: {e}")))?
}

/// Starts the periodic reports: at once for periods that ended while the
/// server was down, then at each period boundary (DMARC and TLS-RPT each
/// on their own interval, aligned on the Unix epoch).
pub fn start(reports: Arc<Reports>) {
    tokio::spawn(async move {
        loop {
            let now = store::unix_now();
            reports.recorder.flush().await;
            reports.send_until(floor(now, reports.dmarc_interval), floor(now, reports.tlsrpt_interval), None).await;
            let next = (floor(now, reports.dmarc_interval) + reports.dmarc_interval)
                .min(floor(now, reports.tlsrpt_interval) + reports.tlsrpt_interval);
            // A moment past the boundary, so the period's last events are
            // recorded before the flush.
            let wait = next.saturating_sub(store::unix_now()) + 2;
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        assert_eq!(floor(86_400 * 3 + 5, 86_400), 86_400 * 3);
        assert_eq!(begin_of(0, Some(86_400 + 10), 86_400), 86_400);
        assert_eq!(begin_of(500, Some(600), 86_400), 500);
        assert_eq!(begin_of(0, None, 3600), 0);
        assert!(report_id(ReportKind::Dmarc, 7).starts_with("dmarc-7-"));
    }
}
