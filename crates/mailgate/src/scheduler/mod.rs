//! The scheduler owns the queue: when each message is tried, where its
//! recipients go, what their outcomes mean (retry, bounce, done), and every
//! change an administrator asks for. The admin API and CLI send it commands.
//!
//! It keeps a bounded window of messages in flight (`[delivery].window`);
//! the next ones due wait in a bounded heap of (due time, id) (see [`due`]),
//! and the rest of the queue only in the spool's index: envelopes stay on
//! disk until they are due, and the scheduler's memory does not grow with
//! the queue.
//!
//! May import: `spool`, `outbound`, `config`, `metrics`, `webhook` (delivery events), `suppression`
//! (hard bounces of submitted mail suppress; `action = "drop"` fails a
//! suppressed recipient at once), `srs` (the notice about forwarded mail
//! goes to the original sender), `mailgate-core`.

mod admin;
mod due;
mod queues;

pub use admin::Filter;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailgate_core::bounce::{self, Classification, Kind};
use mailgate_core::client::Outcome;
use mailgate_core::retry::RetryPolicy;
use mailgate_core::{Envelope, QueueId, RecipientStatus, Reply};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::metrics::Metrics;

/// Largest original a delivery notice quotes whole (RET=FULL); past it,
/// the notice carries the header block only.
const NOTICE_QUOTE_LIMIT: u64 = 1024 * 1024;
use crate::outbound::route::{self, Destination};
use crate::outbound::{self, Job, JobResult, Outbound, dsn};
use crate::spool::{Spool, SpoolError};
use crate::webhook::{EventKind, Hooks, WebhookEvent};
use due::DueWindow;
use queues::{Push, Queues};

pub enum Command {
    /// Remove a message from the queue without delivering it.
    Delete { id: QueueId, done: oneshot::Sender<Result<bool, SpoolError>> },
    /// Try a message's pending recipients now.
    Retry { id: QueueId, done: oneshot::Sender<bool> },
    /// Remove every message the filter matches; answers how many.
    DeleteMatching { filter: Filter, done: oneshot::Sender<Result<usize, SpoolError>> },
}

#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    pub async fn delete(&self, id: QueueId) -> Result<bool, SpoolError> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Command::Delete { id, done }).await.map_err(|_| SpoolError::Stopped)?;
        rx.await.map_err(|_| SpoolError::Stopped)?
    }

    pub async fn delete_matching(&self, filter: Filter) -> Result<usize, SpoolError> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Command::DeleteMatching { filter, done }).await.map_err(|_| SpoolError::Stopped)?;
        rx.await.map_err(|_| SpoolError::Stopped)?
    }

    pub async fn retry(&self, id: QueueId) -> bool {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Retry { id, done }).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

/// How many messages the scheduler takes from the spool index at a time.
/// `MAILGATE_SCHEDULER_HORIZON` changes it, for tests that need messages
/// beyond a small horizon; it is not a setting for production.
fn horizon() -> usize {
    std::env::var("MAILGATE_SCHEDULER_HORIZON").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(due::DEFAULT_HORIZON)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Results gathered for a message while its jobs run.
struct InFlight {
    jobs_left: usize,
    results: Vec<JobResult>,
}

struct Scheduler {
    signer: Arc<crate::sign::Signer>,
    config: Arc<Config>,
    spool: Arc<Spool>,
    outbound: Arc<Outbound>,
    queues: Arc<Queues>,
    policy: RetryPolicy,
    metrics: Arc<Metrics>,
    /// The messages due soonest; an entry whose due time the spool index
    /// no longer has is stale and skipped.
    due: DueWindow,
    in_flight: HashMap<QueueId, InFlight>,
    /// Messages whose outcome is being written to the spool.
    settling: std::collections::HashSet<QueueId>,
    results_tx: mpsc::UnboundedSender<JobResult>,
    /// A message's outcome is durable; `true` when recipients are pending.
    settled_tx: mpsc::UnboundedSender<(QueueId, bool)>,
    /// `[[webhook]]`s: delivered, deferred and bounced events.
    hooks: Option<Arc<Hooks>>,
    /// `suppressed` events of recipients dropped at dispatch, emitted with
    /// the message's other events (first: the bounce follows from them).
    suppressed: HashMap<QueueId, Vec<(usize, WebhookEvent)>>,
    /// `[srs]`: a notice about mail we forwarded goes to the original
    /// sender, not to our SRS address.
    srs: Option<Arc<crate::srs::Srs>>,
}

pub fn start(
    config: Arc<Config>,
    spool: Arc<Spool>,
    outbound: Arc<Outbound>,
    metrics: Arc<Metrics>,
    signer: Arc<crate::sign::Signer>,
    hooks: Option<Arc<Hooks>>,
    srs: Option<Arc<crate::srs::Srs>>,
) -> Handle {
    let (tx, commands) = mpsc::channel(64);
    let (results_tx, results) = mpsc::unbounded_channel();
    let (settled_tx, settled) = mpsc::unbounded_channel();
    let new_messages = spool.subscribe();
    let d = &config.delivery;
    let dead_for = Duration::from_secs(d.retry_initial.min(300));
    let queues = Queues::new(d.concurrency_per_destination, d.max_concurrency, dead_for);
    let s = Scheduler {
        signer,
        policy: config.retry_policy(),
        config,
        spool,
        outbound,
        queues,
        metrics,
        due: DueWindow::new(horizon()),
        in_flight: HashMap::new(),
        settling: Default::default(),
        results_tx,
        settled_tx,
        hooks,
        suppressed: HashMap::new(),
        srs,
    };
    // The recovered queue comes in from the index on the first dispatch.
    tokio::spawn(s.run(commands, results, settled, new_messages));
    Handle { tx }
}

impl Scheduler {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut results: mpsc::UnboundedReceiver<JobResult>,
        mut settled: mpsc::UnboundedReceiver<(QueueId, bool)>,
        mut new_messages: Option<mpsc::UnboundedReceiver<Vec<QueueId>>>,
    ) {
        loop {
            self.dispatch_due();
            // Waiting: everything queued that is neither in flight nor
            // being settled (the heap holds only what is due soon).
            let busy = self.in_flight.len() + self.settling.len();
            self.metrics.scheduler_state(self.spool.len().saturating_sub(busy), self.in_flight.len(), self.settling.len());
            let next = self.next_wakeup();
            tokio::select! {
                Some(cmd) = commands.recv() => self.command(cmd).await,
                Some(ids) = async { match new_messages.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                    for id in ids {
                        self.schedule(id);
                    }
                }
                Some(result) = results.recv() => self.result(result).await,
                Some((id, pending)) = settled.recv() => {
                    self.settling.remove(&id);
                    if pending {
                        self.schedule(id);
                    }
                }
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    fn next_wakeup(&self) -> Duration {
        match self.due.peek() {
            Some((due, _)) if self.in_flight.len() < self.config.delivery.window => {
                let now = now_secs();
                Duration::from_secs(due.saturating_sub(now)).max(Duration::from_millis(50))
            }
            _ => Duration::from_secs(60),
        }
    }

    /// Files a message under the due time the spool index has for it.
    fn schedule(&mut self, id: QueueId) {
        if self.in_flight.contains_key(&id) || self.settling.contains(&id) {
            return;
        }
        if let Some(due) = self.spool.due(&id) {
            self.due.push((due, id));
        }
    }

    fn dispatch_due(&mut self) {
        let now = now_secs();
        while self.in_flight.len() < self.config.delivery.window {
            if self.due.needs_refill() {
                let spool = &self.spool;
                let n = self.due.refill(|after, limit| spool.due_after(after, limit));
                tracing::debug!(taken = n, "scheduler: next slice of due messages read from the spool index");
                if n == 0 {
                    break;
                }
            }
            let Some((due, _)) = self.due.peek() else { break };
            if *due > now {
                break;
            }
            let Some((due, id)) = self.due.pop() else { break };
            // Stale: deleted, rescheduled, or already being worked on.
            if self.spool.due(&id) != Some(due) || self.in_flight.contains_key(&id) || self.settling.contains(&id) {
                continue;
            }
            let Some(q) = self.spool.claim(&id) else { continue };
            self.dispatch(id, Arc::new(q.envelope), now);
        }
    }

    /// Groups a message's due recipients by destination and queues a job
    /// for each group.
    fn dispatch(&mut self, id: QueueId, envelope: Arc<Envelope>, now: u64) {
        let mut groups: Vec<(Destination, Vec<usize>)> = Vec::new();
        let mut dropped: Vec<(usize, Reply)> = Vec::new();
        for (i, r) in envelope.recipients.iter().enumerate() {
            if !r.is_pending() || r.next_attempt > now {
                continue;
            }
            if let Some(reply) = self.dropped(&id, &envelope, i, &r.address) {
                dropped.push((i, reply));
                continue;
            }
            let dest = route::destination(&self.config, &r.address, envelope.quarantine);
            match groups.iter_mut().find(|(d, _)| *d == dest) {
                Some((_, v)) => v.push(i),
                None => groups.push((dest, vec![i])),
            }
        }
        if groups.is_empty() && dropped.is_empty() {
            // Nothing due yet: file it under its earliest pending recipient.
            if let Some(due) = envelope.recipients.iter().filter(|r| r.is_pending()).map(|r| r.next_attempt).min() {
                self.spool.set_due(&id, due.max(now + 1));
                self.schedule(id);
            }
            return;
        }
        self.in_flight.insert(id.clone(), InFlight { jobs_left: groups.len() + usize::from(!dropped.is_empty()), results: Vec::new() });
        if !dropped.is_empty() {
            let (rcpts, outcomes) = dropped.into_iter().map(|(i, r)| (i, Outcome::Permanent(r))).unzip();
            let _ = self.results_tx.send(JobResult {
                id: id.clone(),
                rcpts,
                outcomes,
                remote: None,
                remote_dsn: false,
                local: true,
                message_id: None,
            });
        }
        for (dest, rcpts) in groups {
            let job = Job { id: id.clone(), envelope: envelope.clone(), rcpts };
            match self.queues.push(dest.clone(), job.clone()) {
                Push::Spawn => {
                    let source: Arc<dyn outbound::JobSource> = self.queues.clone();
                    tokio::spawn(outbound::worker(self.outbound.clone(), source, dest, self.results_tx.clone()));
                }
                Push::Queued => {}
                Push::Dead(outcome) => {
                    let n = job.rcpts.len();
                    let _ = self.results_tx.send(JobResult {
                        id: job.id,
                        rcpts: job.rcpts,
                        outcomes: vec![outcome; n],
                        remote: None,
                        remote_dsn: false,
                        local: false,
                        message_id: None,
                    });
                }
            }
        }
    }

    /// With `[suppression] action = "drop"`: the refusal a suppressed
    /// recipient of a submitted message gets instead of an attempt; its
    /// `suppressed` event waits in `suppressed` for the message's others.
    fn dropped(&mut self, id: &QueueId, envelope: &Envelope, i: usize, to: &mailgate_core::Mailbox) -> Option<Reply> {
        let (reply, event) = self.outbound.suppressions.as_ref()?.drop_recipient(id, envelope, to)?;
        if let Some(e) = event {
            self.suppressed.entry(id.clone()).or_default().push((i, e));
        }
        Some(reply)
    }

    async fn result(&mut self, result: JobResult) {
        let id = result.id.clone();
        let Some(entry) = self.in_flight.get_mut(&id) else { return };
        entry.jobs_left -= 1;
        entry.results.push(result);
        if entry.jobs_left > 0 {
            return;
        }
        let Some(done) = self.in_flight.remove(&id) else { return };
        self.finish(id, done.results).await;
    }

    /// A failed attempt's classification, counted; the scheduler decided the kind.
    fn classify(&self, kind: Kind, reply: &Reply) -> Classification {
        let c = bounce::classify_as(kind, Some(reply.code), reply.status, &reply.lines.join(" "));
        self.metrics.delivery_failure(c);
        c
    }

    /// Whether a webhook wants events of `kind`.
    fn hook(&self, kind: EventKind) -> bool {
        self.hooks.as_ref().is_some_and(|h| h.wants(kind))
    }

    /// Applies every outcome of an attempt, sends the notices it calls for,
    /// and either removes the message or files its next attempt.
    async fn finish(&mut self, id: QueueId, results: Vec<JobResult>) {
        let suppressed = self.suppressed.remove(&id).unwrap_or_default();
        let Some(q) = self.spool.get(&id) else { return }; // deleted meanwhile
        let mut env: Envelope = q.envelope;
        let now = now_secs();
        let mut failed = Vec::new();
        let mut succeeded = Vec::new();
        // Webhook events, by recipient index.
        let mut events: Vec<(usize, WebhookEvent)> = suppressed;
        // Hard bounces, for the suppression list (submitted mail only).
        let mut hard = Vec::new();
        for res in &results {
            for (&i, outcome) in res.rcpts.iter().zip(&res.outcomes) {
                let Some(r) = env.recipients.get_mut(i) else { continue };
                r.attempts += 1;
                r.last_reply = Some(outcome.reply().to_string());
                r.remote = res.remote.clone();
                let relay = res.remote.as_deref().unwrap_or(if res.local { "local" } else { "none" });
                let mx = res.remote.as_deref().or(res.local.then_some("local"));
                match outcome {
                    Outcome::Delivered(_) => {
                        r.status = RecipientStatus::Delivered;
                        self.metrics.delivered(env.received_at);
                        tracing::info!(queue_id = %id, to = %r.address, relay, reply = %outcome.reply(), "delivered");
                        if self.hook(EventKind::Delivered) {
                            let e = WebhookEvent::attempt(EventKind::Delivered, &id, &env.sender, r, mx, &outcome.reply().to_string());
                            events.push((i, e));
                        }
                        if r.notify.is_some_and(|n| n.success) && !res.remote_dsn {
                            succeeded.push((i, if res.local || res.remote.is_none() { "delivered" } else { "relayed" }));
                        }
                    }
                    Outcome::Permanent(reply) => {
                        r.status = RecipientStatus::Failed;
                        self.metrics.bounced(env.received_at);
                        let c = self.classify(Kind::Hard, reply);
                        let category = c.category.as_str();
                        if self.hook(EventKind::Bounced) {
                            let e = WebhookEvent::attempt(EventKind::Bounced, &id, &env.sender, r, mx, &outcome.reply().to_string());
                            events.push((i, e.classified(Some(c))));
                        }
                        tracing::info!(queue_id = %id, to = %r.address, relay, reply = %outcome.reply(), category, "bounced");
                        hard.push((r.address.to_string(), c, reply.to_string()));
                        failed.push(i);
                    }
                    Outcome::Temporary(reply) => {
                        r.status = RecipientStatus::Deferred;
                        r.next_attempt = now + self.policy.delay(r.attempts, rand::random::<f64>()).as_secs();
                        self.metrics.deferred();
                        let c = self.classify(Kind::Soft, reply);
                        let category = c.category.as_str();
                        if self.hook(EventKind::Deferred) {
                            let e = WebhookEvent::attempt(EventKind::Deferred, &id, &env.sender, r, mx, &outcome.reply().to_string());
                            events.push((i, e.classified(Some(c))));
                        }
                        tracing::info!(queue_id = %id, to = %r.address, relay, reply = %outcome.reply(), category, next_attempt_s = r.next_attempt - now, "deferred");
                    }
                }
            }
        }
        if self.policy.expired(env.received_at, now) {
            for (i, r) in env.recipients.iter_mut().enumerate() {
                if r.status == RecipientStatus::Deferred {
                    r.status = RecipientStatus::Failed;
                    self.metrics.bounced(env.received_at);
                    let last = r.last_reply.take().unwrap_or_default();
                    r.last_reply = Some(format!("{last} (gave up: message expired after {}s in the queue)", now - env.received_at));
                    tracing::info!(queue_id = %id, to = %r.address, "expired");
                    failed.push(i);
                    if self.hook(EventKind::Bounced) {
                        // No retry is scheduled after all: bounced, not deferred.
                        events.retain(|(j, e)| !(*j == i && e.event == EventKind::Deferred));
                        let reply = r.last_reply.clone().unwrap_or_default();
                        let c = bounce::classify_reply(&reply).map(|c| Classification { kind: Kind::Hard, ..c });
                        let e = WebhookEvent::attempt(EventKind::Bounced, &id, &env.sender, r, r.remote.as_deref(), &reply);
                        events.push((i, e.classified(c)));
                    }
                }
            }
        }
        let failure: Vec<(usize, &'static str)> =
            failed.into_iter().filter(|&i| env.recipients[i].notify.is_none_or(|n| n.failure)).map(|i| (i, "failed")).collect();
        let mut delayed = Vec::new();
        if let Some(warn_after) = self.policy.delay_warning
            && !env.delay_warned
            && now.saturating_sub(env.received_at) >= warn_after.as_secs()
        {
            delayed = env
                .recipients
                .iter()
                .enumerate()
                .filter(|(_, r)| r.status == RecipientStatus::Deferred && r.notify.is_none_or(|n| n.delay))
                .map(|(i, _)| (i, "delayed"))
                .collect();
            env.delay_warned = !delayed.is_empty();
        }
        // The writes (notices, then removal or the new state) go to the
        // spool concurrently with other messages', so they share fsyncs;
        // the scheduler moves on and hears back when they are durable.
        self.settling.insert(id.clone());
        // With no notice to store first, the new state goes to the spool
        // writer now, not when the task below gets to run: the window in
        // which a crash makes us deliver again ends microseconds after the
        // next hop's 250 was read, whatever the load.
        let no_notice = failure.is_empty() && succeeded.is_empty() && delayed.is_empty();
        let finished = env.recipients.iter().all(|r| r.status.is_final());
        let early = match (no_notice, finished) {
            (true, true) => Some(self.spool.begin_remove(&id)),
            (true, false) => Some(self.spool.begin_update(&id, &env)),
            (false, _) => None,
        };
        let spool = self.spool.clone();
        let hostname = self.config.hostname.clone();
        let settled = self.settled_tx.clone();
        let signer = self.signer.clone();
        let srs = self.srs.clone();
        let recorder = self.outbound.recorder.clone();
        let hooks = self.hooks.clone().filter(|_| !events.is_empty());
        // As the delivery read it; else (nothing was sent) from the spool.
        let message_id = results.iter().find_map(|r| r.message_id.clone());
        if let Some(sup) = self.outbound.suppressions.clone().filter(|s| !hard.is_empty() && s.submitted(&env.client)) {
            let sender = env.sender.clone();
            tokio::task::spawn_blocking(move || {
                for (rcpt, c, reply) in hard {
                    sup.hard_bounce(&sender, &rcpt, c, &reply, "bounce");
                }
            });
        }
        tokio::spawn(async move {
            // Before the message may be removed: without a delivery that
            // read it, its Message-ID is read from the spool (the header
            // block only).
            if let Some(hooks) = hooks {
                let message_id =
                    message_id.or_else(|| spool.read_limited(&id, 0).ok().flatten().and_then(|h| crate::webhook::message_id(&h)));
                hooks.emit_for_message(events.into_iter().map(|(_, e)| e).collect(), message_id);
            }
            let notices = [(dsn::Kind::Failure, failure), (dsn::Kind::Success, succeeded), (dsn::Kind::Delay, delayed)];
            if notices.iter().any(|(_, which)| !which.is_empty()) {
                // A big message is quoted by its header block only (as Postfix does
                // past bounce_size_limit): the notice is built in memory.
                let original = spool.read_limited(&id, NOTICE_QUOTE_LIMIT).ok().flatten().unwrap_or_default();
                for (kind, which) in notices {
                    let sent = notify_sender(&spool, &signer, srs.as_deref(), &hostname, &id, &env, &original, kind, which).await;
                    if let (Some(recorder), Some(dsn)) = (&recorder, sent) {
                        recorder.record(crate::store::Event::Timeline(Box::new(crate::store::TimelineEvent::Dsn(dsn))));
                    }
                }
            }
            let pending = if finished {
                let removed = match early {
                    Some(tombstone) => spool.finish_remove(&id, tombstone).await,
                    None => spool.remove(&id).await,
                };
                if let Err(e) = removed {
                    tracing::error!(queue_id = %id, error = %e, "cannot remove a finished message; it may be delivered again");
                }
                false
            } else {
                let due = env.recipients.iter().filter(|r| r.is_pending()).map(|r| r.next_attempt).min().unwrap_or(now);
                let updated = match early {
                    Some(update) => update.finish().await,
                    None => spool.update(&id, env).await,
                };
                if let Err(e) = updated {
                    tracing::error!(queue_id = %id, error = %e, "cannot record delivery state; recipients may be tried again");
                    // Try again then, not at once: the index files it there.
                    spool.set_due(&id, due);
                }
                true
            };
            let _ = settled.send((id, pending));
        });
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Delete { id, done } => {
                let result = self.spool.remove(&id).await;
                if matches!(result, Ok(true)) {
                    tracing::info!(queue_id = %id, "deleted by administrator");
                }
                let _ = done.send(result);
            }
            Command::DeleteMatching { filter, done } => {
                let result = self.delete_matching(&filter).await;
                let _ = done.send(result);
            }
            Command::Retry { id, done } => {
                let Some(q) = self.spool.get(&id) else {
                    let _ = done.send(false);
                    return;
                };
                if !self.in_flight.contains_key(&id) && !self.settling.contains(&id) {
                    let mut env = q.envelope;
                    for r in env.recipients.iter_mut().filter(|r| r.is_pending()) {
                        r.next_attempt = 0;
                    }
                    if let Err(e) = self.spool.update(&id, env).await {
                        tracing::error!(queue_id = %id, error = %e, "cannot record the forced retry");
                    }
                    self.queues.revive_all();
                    self.schedule(id.clone());
                    tracing::info!(queue_id = %id, "retry forced by administrator");
                }
                let _ = done.send(true);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn notify_sender(
    spool: &Spool,
    signer: &crate::sign::Signer,
    srs: Option<&crate::srs::Srs>,
    hostname: &str,
    id: &QueueId,
    env: &Envelope,
    original: &[u8],
    kind: dsn::Kind,
    which: Vec<(usize, &'static str)>,
) -> Option<crate::store::timeline::DsnRecord> {
    if which.is_empty() {
        return None;
    }
    // Mail we forwarded has our SRS address as its sender: the notice goes
    // to the address it stands for, as a remote bounce to that address
    // does; a forged or expired one gets none (our MX would refuse it).
    let reversed;
    let env = match (srs, env.sender.mailbox()) {
        (Some(srs), Some(m)) => match srs.reverse(m) {
            None => env,
            Some(Ok(original)) => {
                tracing::info!(queue_id = %id, srs = %m, to = %original, kind = ?kind, "notice about forwarded mail goes to the original sender");
                reversed = Envelope { sender: mailgate_core::ReversePath::Mailbox(original), ..env.clone() };
                &reversed
            }
            Some(Err(e)) => {
                tracing::warn!(queue_id = %id, srs = %m, error = %e, kind = ?kind, "no delivery status notification: the SRS sender does not verify");
                return None;
            }
        },
        _ => env,
    };
    let entries: Vec<dsn::Entry<'_>> = which.iter().map(|&(i, action)| dsn::Entry { recipient: &env.recipients[i], action }).collect();
    // A `<>` sender never gets a notice: that is how bounce loops end.
    let (bounce_env, content) = dsn::build(hostname, id, env, original, kind, &entries, SystemTime::now())?;
    // Our own notices are signed like any outbound mail.
    let content = match signer.sign_message(&content) {
        Ok(Some(sig)) => [sig.into_bytes(), content].concat(),
        Ok(None) => content,
        Err(e) => {
            tracing::warn!(queue_id = %id, error = %e, "cannot sign the notification; sending it unsigned");
            content
        }
    };
    let bounce_id = spool.new_id();
    match spool.store(&bounce_id, bounce_env, &content).await {
        Ok(()) => {
            tracing::info!(queue_id = %id, dsn_id = %bounce_id, kind = ?kind, "sender notified");
            // For the message's timeline on the dashboard.
            Some(crate::store::timeline::DsnRecord {
                time: crate::store::unix_now(),
                queue_id: id.as_str().to_string(),
                dsn_id: bounce_id.as_str().to_string(),
                notice: kind.as_str().to_string(),
                recipients: which.iter().map(|&(i, _)| env.recipients[i].address.to_string()).collect(),
            })
        }
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, kind = ?kind, "cannot queue the delivery status notification");
            None
        }
    }
}
