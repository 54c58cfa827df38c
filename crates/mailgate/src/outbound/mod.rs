//! Delivery: takes jobs for one destination, connects (reusing connections
//! across messages), and reports one outcome per recipient.
//!
//! Workers pull jobs through [`JobSource`], which the scheduler implements;
//! this stage never imports the scheduler.
//!
//! May import: `spool` (to read content), `config`, `dns`, `report::ingest`
//! (a report address's mail is read into the store, [`ingest`]),
//! `suppression` (VERP senders; bounces and complaints read, not
//! delivered), `mailgate-core`.

pub mod client;
pub mod dane;
pub mod dsn;
pub mod ingest;
pub mod maildir;
pub mod mta_sts;
pub mod route;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use mailgate_core::client::{ClientConfig, OutboundMessage, OutboundRecipient, Outcome, TlsMode};
use mailgate_core::reply::{Reply, StatusCode};
use mailgate_core::{Envelope, QueueId};
use tokio::sync::{Notify, mpsc};

use crate::spool::{Content, Spool};
use client::{Connection, Settings};
use route::Destination;

/// Some recipients of one message, all for one destination.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: QueueId,
    pub envelope: Arc<Envelope>,
    /// Indices into `envelope.recipients`.
    pub rcpts: Vec<usize>,
}

#[derive(Debug)]
pub struct JobResult {
    pub id: QueueId,
    pub rcpts: Vec<usize>,
    pub outcomes: Vec<Outcome>,
    /// The host that answered, for DSNs and logs.
    pub remote: Option<String>,
    /// The next hop accepted DSN duties (it advertised DSN), so we do not
    /// send success notices ourselves.
    pub remote_dsn: bool,
    /// Final delivery here (maildir, LMTP) rather than relaying.
    pub local: bool,
    /// The message's `Message-ID:` as written, when the worker read its
    /// header block (for webhook events, without reading it again).
    pub message_id: Option<String>,
}

/// Where workers get their jobs.
pub trait JobSource: Send + Sync + 'static {
    fn take(&self, dest: &Destination) -> Option<Job>;
    /// Stops the worker if its queue is empty, atomically with the check.
    fn try_exit(&self, dest: &Destination) -> bool;
    fn notify(&self, dest: &Destination) -> Arc<Notify>;
    /// The destination failed as a whole: defer its jobs for a while
    /// without connecting.
    fn mark_dead(&self, dest: &Destination, outcome: &Outcome);
}

pub struct Outbound {
    pub hostname: String,
    pub resolver: TokioResolver,
    pub spool: Arc<Spool>,
    pub mx_port: u16,
    pub max_messages_per_connection: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub tls: Arc<rustls::ClientConfig>,
    /// Credentials for the smart host.
    pub smarthost_auth: Option<(String, String)>,
    pub danger_auth_without_tls: bool,
    pub trust: Arc<tls::Trust>,
    pub mta_sts: Option<mta_sts::MtaSts>,
    /// DANE (`[dns] dnssec` not off): TLSA-pinned TLS for MX hosts with
    /// signed TLSA records, before MTA-STS.
    pub dane: Option<Arc<dane::Dane>>,
    /// Recipient domains whose mail must go over TLS.
    pub require_tls: Vec<String>,
    pub tls_events: Arc<crate::events::TlsEvents>,
    /// Where delivery attempts are recorded (the report store).
    pub recorder: Option<Arc<crate::store::Recorder>>,
    /// Reads the mail of `[reports] ingest` addresses into the store.
    pub ingester: Option<Arc<crate::report::ingest::Ingester>>,
    /// VERP senders, and the reader of bounces and complaints.
    pub suppressions: Option<Arc<crate::suppression::Suppressions>>,
    /// Whether a delivery's `Message-ID:` is wanted (by webhook events).
    pub message_ids: bool,
}

impl Outbound {
    fn settings(&self, dest: &Destination) -> Settings {
        let lmtp = matches!(dest, Destination::Lmtp { .. });
        Settings {
            client: ClientConfig {
                helo: self.hostname.clone(),
                lmtp,
                tls: if lmtp { TlsMode::Off } else { TlsMode::Opportunistic },
                auth: match dest {
                    Destination::Smtp { smarthost: true, .. } => self.smarthost_auth.clone(),
                    _ => None,
                },
                danger_auth_without_tls: self.danger_auth_without_tls,
            },
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            tls: self.tls.clone(),
            check: None,
            report: None,
        }
    }

    /// Resolves and connects, applying the destination's TLS policy:
    /// DANE for hosts with signed TLSA records (RFC 8461 §2: before
    /// MTA-STS; only those hosts for a `dane_required` domain), then `require_tls`, or its MTA-STS policy (enforce: only
    /// matching MX hosts, verified TLS or no delivery; testing: deliver,
    /// but check and report).
    async fn connect(&self, dest: &Destination) -> Result<Connection, Outcome> {
        let mut settings = self.settings(dest);
        let mut candidates = route::resolve(&self.resolver, dest, self.mx_port).await?;
        let Destination::Mx(domain) = dest else { return client::connect(&candidates, &settings).await };
        // DANE's verdict per host, in candidate order (empty without DANE).
        let mut dane_hosts: Vec<(String, dane::HostPolicy)> = Vec::new();
        if let Some(d) = &self.dane {
            let plan = d.plan(domain.as_str(), candidates, self.mx_port).await;
            for (mx, why) in &plan.dropped {
                tracing::warn!(domain = %domain, mx = %mx, reason = %why, "DNSSEC: MX host not used");
                self.tls_events.record(domain.as_str(), mx, "tlsa", "dnssec-invalid");
            }
            if plan.hosts.is_empty() {
                let text = format!("no MX host of {domain} has valid DNSSEC answers");
                return Err(Outcome::Temporary(Reply::new(451, StatusCode::new(4, 7, 5), text)));
            }
            let mut hosts = plan.hosts;
            if d.required(&domain.to_ascii()) {
                hosts = self.dane_required(domain.as_str(), hosts)?;
            }
            dane_hosts = hosts.iter().map(|(c, p)| (c.name.clone(), p.clone())).collect();
            candidates = hosts.into_iter().map(|(c, _)| c).collect();
        }
        let has_tlsa = |name: &str| dane_hosts.iter().any(|(n, p)| n == name && matches!(p, dane::HostPolicy::Tlsa { .. }));
        let mut policy_name = "no-policy-found";
        if self.require_tls.iter().any(|d| d == domain.as_str()) {
            settings.client.tls = TlsMode::Required;
            policy_name = "require-tls";
        }
        let events = self.tls_events.clone();
        // The MTA-STS policy applied, for TLS-RPT's `policy-string`.
        let mut policy_text = String::new();
        if let Some(sts) = &self.mta_sts {
            match sts.policy(domain).await {
                Ok(Some(p)) if p.mode == mta_sts::Mode::Enforce => {
                    policy_name = "sts";
                    policy_text = p.text.clone();
                    for c in candidates.iter().filter(|c| !p.allows(&c.name) && !has_tlsa(&c.name)) {
                        events.record_with_policy(domain.as_str(), &c.name, "sts", "validation-failure", &p.text);
                    }
                    candidates.retain(|c| p.allows(&c.name) || has_tlsa(&c.name));
                    if candidates.is_empty() {
                        let text = format!("no MX host of {domain} matches its MTA-STS policy");
                        return Err(Outcome::Temporary(Reply::new(451, StatusCode::new(4, 7, 5), text)));
                    }
                    settings.client.tls = TlsMode::Required;
                    settings.tls = self.trust.verifying.clone();
                }
                Ok(Some(p)) if p.mode == mta_sts::Mode::Testing => {
                    policy_name = "sts";
                    policy_text = p.text.clone();
                    for c in candidates.iter().filter(|c| !p.allows(&c.name) && !has_tlsa(&c.name)) {
                        events.record_with_policy(domain.as_str(), &c.name, "sts", "validation-failure", &p.text);
                    }
                    settings.check = Some(self.trust.clone());
                }
                Ok(_) => {}
                Err(e) => {
                    let (kind, why) = match e {
                        mta_sts::PolicyError::Fetch(w) => ("sts-policy-fetch-error", w),
                        mta_sts::PolicyError::Invalid(w) => ("sts-policy-invalid", w),
                    };
                    tracing::info!(domain = %domain, reason = %why, "MTA-STS policy unusable; delivering as without one");
                    events.record(domain.as_str(), "", "sts", kind);
                }
            }
        }
        let d = domain.to_string();
        settings.report =
            Some(Arc::new(move |mx: &str, result: &'static str| events.record_with_policy(&d, mx, policy_name, result, &policy_text)));
        if !dane_hosts.iter().any(|(n, p)| matches!(p, dane::HostPolicy::Tlsa { .. }) && candidates.iter().any(|c| &c.name == n)) {
            return client::connect(&candidates, &settings).await;
        }
        // Host by host: a host with TLSA records gets its own settings.
        let mut last = Outcome::Temporary(Reply::new(451, StatusCode::new(4, 4, 1), "no host to connect to"));
        for cand in &candidates {
            let policy = dane_hosts.iter().find(|(n, _)| n == &cand.name).map(|(_, p)| p);
            let host_settings = match policy {
                Some(dane::HostPolicy::Tlsa { usable, text }) => self.dane_settings(&settings, domain.as_str(), &cand.name, usable, text),
                _ => settings.clone(),
            };
            match client::connect(std::slice::from_ref(cand), &host_settings).await {
                Ok(c) => return Ok(c),
                Err(o) => last = o,
            }
        }
        Err(last)
    }

    /// `[delivery] dane_required` (Postfix's `dane-only`): only hosts with
    /// secure, usable TLSA records stay; each other host is recorded as
    /// `dane-required` (RFC 8460 §4.3.2) under policy type `tlsa`, and
    /// with none left the mail is deferred.
    fn dane_required(
        &self,
        domain: &str,
        hosts: Vec<(route::Candidate, dane::HostPolicy)>,
    ) -> Result<Vec<(route::Candidate, dane::HostPolicy)>, Outcome> {
        let mut kept = Vec::with_capacity(hosts.len());
        for (cand, policy) in hosts {
            match &policy {
                dane::HostPolicy::Tlsa { usable, .. } if !usable.is_empty() => kept.push((cand, policy)),
                other => {
                    let why = match other {
                        dane::HostPolicy::Tlsa { .. } => "only TLSA records SMTP cannot use (PKIX-TA/EE)",
                        dane::HostPolicy::None => "no DNSSEC-validated TLSA records",
                    };
                    tracing::warn!(domain = %domain, mx = %cand.name, reason = why, "[delivery] dane_required: MX host not used");
                    self.tls_events.record(domain, &cand.name, "tlsa", "dane-required");
                }
            }
        }
        if kept.is_empty() {
            let text = format!("no MX host of {domain} has DNSSEC-validated usable TLSA records, which [delivery] dane_required demands");
            return Err(Outcome::Temporary(Reply::new(451, StatusCode::new(4, 7, 5), text)));
        }
        Ok(kept)
    }

    /// Settings for a host with secure TLSA records: TLS mandatory, the
    /// certificate checked against the usable records (none usable: TLS
    /// without authentication, RFC 7672 §2.2), outcomes reported under
    /// policy type `tlsa` with the records as the policy string.
    fn dane_settings(&self, base: &Settings, domain: &str, host: &str, usable: &[dane::Tlsa], text: &str) -> Settings {
        let mut s = base.clone();
        s.client.tls = TlsMode::Required;
        s.check = None;
        s.tls = if usable.is_empty() { self.tls.clone() } else { dane::client_config(usable.to_vec(), host, domain) };
        let (events, d, text) = (self.tls_events.clone(), domain.to_string(), text.to_string());
        s.report = Some(Arc::new(move |mx: &str, result: &'static str| events.record_with_policy(&d, mx, "tlsa", result, &text)));
        s
    }
}

impl Outbound {
    /// Hands a job's result to the scheduler, recording the attempt.
    fn finish(&self, dest: &Destination, results: &mpsc::UnboundedSender<JobResult>, envelope: &Envelope, tls: bool, result: JobResult) {
        self.record_attempt(dest, &result, envelope, tls);
        let _ = results.send(result);
    }

    /// One delivery attempt per distinct reply the job's recipients got.
    fn record_attempt(&self, dest: &Destination, result: &JobResult, envelope: &Envelope, tls: bool) {
        let Some(recorder) = &self.recorder else { return };
        let domain = match dest {
            Destination::Mx(d) => d.to_string(),
            _ => result
                .rcpts
                .first()
                .and_then(|&i| envelope.recipients.get(i))
                .and_then(|r| r.address.domain().map(|d| d.to_string()))
                .unwrap_or_else(|| dest.to_string()),
        };
        let mut groups: Vec<(&Reply, u32)> = Vec::new();
        for o in &result.outcomes {
            match groups.iter_mut().find(|(r, _)| *r == o.reply()) {
                Some((_, n)) => *n += 1,
                None => groups.push((o.reply(), 1)),
            }
        }
        let time = crate::store::unix_now();
        record_timeline(recorder, result, envelope, tls, time);
        for (reply, n) in groups {
            recorder.record(crate::store::Event::Delivery(crate::store::DeliveryAttempt {
                time,
                queue_id: result.id.as_str().to_string(),
                recipient_domain: domain.clone(),
                recipients: n,
                mx_host: result.remote.clone().unwrap_or_default(),
                tls,
                reply_code: reply.code,
                reply: reply.to_string(),
            }));
        }
    }
}

/// The attempt on the message's timeline: each recipient with its own
/// outcome and full reply.
fn record_timeline(recorder: &crate::store::Recorder, result: &JobResult, envelope: &Envelope, tls: bool, time: u64) {
    use crate::store::timeline::{AttemptRecord, RecipientResult};
    let recipients = result
        .rcpts
        .iter()
        .zip(&result.outcomes)
        .map(|(&i, o)| RecipientResult {
            address: envelope.recipients.get(i).map(|r| r.address.to_string()).unwrap_or_default(),
            outcome: match o {
                Outcome::Delivered(_) => "delivered",
                Outcome::Permanent(_) => "bounced",
                Outcome::Temporary(_) => "deferred",
            }
            .into(),
            reply: o.reply().to_string().trim_end().to_string(),
        })
        .collect();
    let attempt = AttemptRecord {
        time,
        queue_id: result.id.as_str().to_string(),
        mx_host: result.remote.clone().unwrap_or_default(),
        tls,
        recipients,
    };
    recorder.record(crate::store::Event::Timeline(Box::new(crate::store::TimelineEvent::Attempt(attempt))));
}

fn message_for(job: &Job, size: u64) -> OutboundMessage {
    let env = &job.envelope;
    OutboundMessage {
        sender: env.sender.clone(),
        recipients: job
            .rcpts
            .iter()
            .filter_map(|&i| env.recipients.get(i))
            .map(|r| OutboundRecipient { address: r.address.clone(), notify: r.notify, orcpt: r.orcpt.clone() })
            .collect(),
        size,
        body: env.body,
        smtputf8: env.smtputf8,
        ret: env.ret,
        envid: env.envid.clone(),
    }
}

/// The result of a job that was not sent: every recipient gets `outcome`.
fn unsent(job: &Job, outcome: Outcome) -> JobResult {
    JobResult {
        id: job.id.clone(),
        rcpts: job.rcpts.clone(),
        outcomes: vec![outcome; job.rcpts.len()],
        remote: None,
        remote_dsn: false,
        local: false,
        message_id: None,
    }
}

/// Runs one worker for `dest` until its queue stays empty for the idle time.
pub async fn worker(ob: Arc<Outbound>, source: Arc<dyn JobSource>, dest: Destination, results: mpsc::UnboundedSender<JobResult>) {
    let notify = source.notify(&dest);
    let mut conn: Option<Connection> = None;
    loop {
        let Some(job) = source.take(&dest) else {
            if conn.is_some() {
                let woke = tokio::time::timeout(ob.idle_timeout, notify.notified()).await.is_ok();
                if woke {
                    continue;
                }
                // Idle long enough: close, then exit unless work arrived.
                if let Some(c) = conn.take() {
                    c.quit().await;
                }
                continue;
            }
            if source.try_exit(&dest) {
                return;
            }
            continue;
        };
        let mut content = match ob.spool.open_content(&job.id) {
            Ok(Some(c)) => c,
            Ok(None) => {
                // Deleted meanwhile: the scheduler still counts the job as
                // in flight, so it must hear back (it finds the message gone).
                let o = Outcome::Temporary(Reply::new(451, StatusCode::new(4, 3, 0), "message deleted from the queue"));
                let _ = results.send(unsent(&job, o));
                continue;
            }
            Err(e) => {
                let o = Outcome::Temporary(Reply::new(451, StatusCode::new(4, 3, 0), format!("cannot read the spool: {e}")));
                ob.finish(&dest, &results, &job.envelope, false, unsent(&job, o));
                continue;
            }
        };
        if dest == Destination::Ingest {
            let outcomes = ingest::deliver(ob.ingester.clone(), &job, content).await;
            let result =
                JobResult { id: job.id, rcpts: job.rcpts, outcomes, remote: None, remote_dsn: false, local: true, message_id: None };
            ob.finish(&dest, &results, &job.envelope, false, result);
            continue;
        }
        if matches!(dest, Destination::Bounce | Destination::Complaint) {
            let outcomes = consume(&ob, &job, content, dest == Destination::Complaint).await;
            let result =
                JobResult { id: job.id, rcpts: job.rcpts, outcomes, remote: None, remote_dsn: false, local: true, message_id: None };
            ob.finish(&dest, &results, &job.envelope, false, result);
            continue;
        }
        if let Destination::Maildir(root) = &dest {
            let env = job.envelope.clone();
            let rcpts: Vec<_> = job.rcpts.iter().filter_map(|&i| env.recipients.get(i)).map(|r| r.address.clone()).collect();
            let (root, host) = (root.clone(), ob.hostname.clone());
            let outcomes =
                tokio::task::spawn_blocking(move || outbound_maildir(&root, &host, &env, &rcpts, &mut content)).await.unwrap_or_else(
                    |_| vec![Outcome::Temporary(Reply::new(451, StatusCode::new(4, 3, 0), "maildir delivery crashed")); job.rcpts.len()],
                );
            ob.finish(
                &dest,
                &results,
                &job.envelope,
                false,
                JobResult { id: job.id, rcpts: job.rcpts, outcomes, remote: None, remote_dsn: false, local: true, message_id: None },
            );
            continue;
        }
        // Reuse the connection if it is healthy and under its message cap.
        let reusable = match conn.as_mut() {
            Some(c) if c.sent < ob.max_messages_per_connection => c.reset().await,
            _ => false,
        };
        if !reusable {
            if let Some(c) = conn.take() {
                c.quit().await;
            }
            let connected = ob.connect(&dest).await;
            match connected {
                Ok(c) => conn = Some(c),
                Err(o) => {
                    tracing::info!(destination = %dest, reason = %o.reply(), "destination unreachable; deferring its queue");
                    source.mark_dead(&dest, &o);
                    ob.finish(&dest, &results, &job.envelope, false, unsent(&job, o.clone()));
                    // Everything queued for this destination fails the same way.
                    while let Some(other) = source.take(&dest) {
                        ob.finish(&dest, &results, &other.envelope, false, unsent(&other, o.clone()));
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let size = content.len();
        let outcomes = match verp_senders(&ob, &job) {
            Some(senders) => send_each(c, &job, senders, size, &mut content).await,
            None => c.send(message_for(&job, size), &mut content).await,
        };
        let result = JobResult {
            id: job.id,
            rcpts: job.rcpts,
            outcomes,
            remote: Some(c.remote.clone()),
            remote_dsn: c.supports_dsn(),
            local: matches!(dest, Destination::Lmtp { .. }),
            message_id: if ob.message_ids { crate::webhook::message_id(content.prefix()) } else { None },
        };
        ob.finish(&dest, &results, &job.envelope, c.tls_active(), result);
    }
}

/// The VERP envelope sender of each of the job's recipients, when VERP
/// applies to the message (`[delivery] verp`, submitted mail).
fn verp_senders(ob: &Outbound, job: &Job) -> Option<Vec<mailgate_core::ReversePath>> {
    let sup = ob.suppressions.as_ref()?;
    job.rcpts.iter().map(|&i| sup.verp_sender(&job.id, &job.envelope, i)).collect()
}

/// One transaction per recipient over the same connection (VERP: each
/// has its own envelope sender); RSET between them.
async fn send_each(
    c: &mut Connection,
    job: &Job,
    senders: Vec<mailgate_core::ReversePath>,
    size: u64,
    content: &mut Content,
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(job.rcpts.len());
    for (k, (&i, sender)) in job.rcpts.iter().zip(senders).enumerate() {
        if k > 0 && !c.reset().await {
            let o = Outcome::Temporary(Reply::new(451, StatusCode::new(4, 4, 2), "connection lost between VERP transactions"));
            outcomes.resize(job.rcpts.len(), o);
            break;
        }
        let one = Job { id: job.id.clone(), envelope: job.envelope.clone(), rcpts: vec![i] };
        let mut message = message_for(&one, size);
        message.sender = sender;
        outcomes.extend(c.send(message, content).await.into_iter().take(1));
    }
    outcomes
}

/// Reads a bounce or complaint (its first `READ_LIMIT` octets) and
/// consumes it for every recipient.
async fn consume(ob: &Outbound, job: &Job, content: Content, complaint: bool) -> Vec<Outcome> {
    use crate::suppression::consume;
    let n = job.rcpts.len();
    let Some(sup) = ob.suppressions.clone() else {
        return vec![Outcome::Temporary(Reply::new(451, StatusCode::new(4, 3, 0), "bounce handling is not set up in this process")); n];
    };
    let rcpts: Vec<mailgate_core::Mailbox> =
        job.rcpts.iter().filter_map(|&i| job.envelope.recipients.get(i)).map(|r| r.address.clone()).collect();
    let (spool, recorder) = (ob.spool.clone(), ob.recorder.clone());
    let done = tokio::task::spawn_blocking(move || {
        let mut raw = Vec::new();
        if let Err(e) = std::io::Read::read_to_end(&mut std::io::Read::take(content, consume::READ_LIMIT), &mut raw) {
            return vec![Reply::new(451, StatusCode::new(4, 3, 0), format!("cannot read the spool: {e}")); rcpts.len()];
        }
        rcpts
            .iter()
            .map(|to| match complaint {
                true => consume::complaint(&sup, &spool, recorder.as_deref(), &raw),
                false => consume::bounce(&sup, &spool, recorder.as_deref(), to, &raw),
            })
            .collect()
    })
    .await;
    match done {
        Ok(replies) if replies.len() == n => {
            replies.into_iter().map(|r| if r.code < 400 { Outcome::Delivered(r) } else { Outcome::Temporary(r) }).collect()
        }
        _ => vec![Outcome::Temporary(Reply::new(451, StatusCode::new(4, 3, 0), "bounce handling failed")); n],
    }
}

fn outbound_maildir(
    root: &std::path::Path,
    host: &str,
    env: &Envelope,
    rcpts: &[mailgate_core::Mailbox],
    content: &mut Content,
) -> Vec<Outcome> {
    maildir::deliver(root, host, &env.sender, rcpts, content)
}
