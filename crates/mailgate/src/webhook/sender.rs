//! Sends the outbox: each (webhook, message)'s oldest event, signed, over
//! HTTP (reqwest, as MTA-STS and TLS-RPT use), retried with backoff (10 s
//! doubling to 10 minutes) until the webhook's `max_age`.
//!
//! Bounded: at most [`READY`] events read ahead, [`MAX_IN_FLIGHT`] POSTs at once ([`PER_URL`] per
//! webhook, so one hanging receiver does not stop the others), each cut
//! off after [`TIMEOUT`]; what waits stays in SQLite, not in memory. A
//! message whose event keeps failing holds back only its own later events.
//!
//! May import: `config`, `metrics`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::outbox::{Head, Msg, Outbox, Settle};
use super::{signature, unix_now};
use crate::config::Webhook;
use crate::metrics::Metrics;

/// POSTs under way at once, over every webhook.
const MAX_IN_FLIGHT: usize = 32;
/// Heads read from the outbox at a time (and held, bodies included).
const READY: usize = 256;
/// POSTs under way at once to one webhook.
const PER_URL: usize = 16;
/// The whole POST, connection to status line.
const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between two attempts of one event.
const MAX_BACKOFF_MS: u64 = 600_000;

/// One configured webhook, ready to POST to.
pub struct Target {
    hook: Webhook,
    client: reqwest::Client,
}

/// Builds a client per webhook, trusting what delivery trusts. Hosts are
/// resolved by the system resolver: a webhook is usually an internal
/// name (`/etc/hosts`, the site's DNS), not an internet one.
pub fn targets(hooks: &[Webhook], tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Arc<[Target]>> {
    let mut out = Vec::new();
    for h in hooks {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls.as_ref().clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(PER_URL)
            .no_proxy()
            .build()
            .map_err(|e| anyhow::anyhow!("webhook {}: cannot set up an HTTP client: {e}", h.url))?;
        out.push(Target { hook: h.clone(), client });
    }
    Ok(out.into())
}

/// Retry timing: 10 s doubling, or `MAILGATE_WEBHOOK_RETRY_MS` for the
/// first wait (a knob for tests, which cannot wait 10 s per failure; not a
/// setting for production).
#[derive(Clone, Copy)]
pub struct Timing {
    first_ms: u64,
}

impl Timing {
    pub fn from_env() -> Timing {
        let first_ms = std::env::var("MAILGATE_WEBHOOK_RETRY_MS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(10_000);
        Timing { first_ms }
    }

    /// The wait after the `attempts`-th failure.
    fn backoff_ms(self, attempts: u32) -> u64 {
        let doubled = self.first_ms.saturating_mul(1u64 << attempts.saturating_sub(1).min(20));
        doubled.min(MAX_BACKOFF_MS.max(self.first_ms))
    }

    /// How often the outbox is looked at when nothing wakes the sender.
    fn poll(self) -> Duration {
        Duration::from_millis(self.first_ms.clamp(50, 1000))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The sender's loop: picks due heads, POSTs them, and hands every
/// outcome to the writer; a row stays `busy` from being picked until the
/// writer has committed what became of it.
pub async fn run(
    outbox: Arc<Outbox>,
    targets: Arc<[Target]>,
    writer: mpsc::Sender<Msg>,
    mut committed: mpsc::UnboundedReceiver<Vec<i64>>,
    metrics: Arc<Metrics>,
    timing: Timing,
) {
    let mut busy: HashSet<i64> = HashSet::new();
    let mut per_url: HashMap<usize, usize> = HashMap::new();
    let mut running: JoinSet<(i64, usize, u32, Result<(), String>)> = JoinSet::new();
    // Heads read and not yet sent, with their webhook: the outbox is read
    // [`READY`] at a time, not once per POST (each read walks the index).
    let mut ready: VecDeque<(usize, Head)> = VecDeque::new();
    let mut look = true;
    loop {
        if look && ready.is_empty() {
            look = false;
            let limit = READY + busy.len();
            let o = outbox.clone();
            let heads = match tokio::task::spawn_blocking(move || o.heads(now_ms(), limit)).await {
                Ok(Ok(h)) => h,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "webhook outbox unreadable; trying again");
                    Vec::new()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook outbox read panicked");
                    Vec::new()
                }
            };
            for head in heads {
                if busy.contains(&head.seq) {
                    continue;
                }
                busy.insert(head.seq);
                let Some(i) = targets.iter().position(|t| t.hook.url == head.url) else {
                    tracing::warn!(url = %head.url, "webhook event for a webhook no longer configured; discarded");
                    metrics.webhook_events("discarded", 1);
                    let _ = writer.send(Msg::Settle(Settle::Remove(head.seq))).await;
                    continue;
                };
                let t = &targets[i];
                if unix_now() as i64 >= head.created.saturating_add(t.hook.max_age as i64) {
                    tracing::warn!(url = %t.hook.url, attempts = head.attempts, max_age_s = t.hook.max_age, event = %head.body,
                        "webhook event undelivered for max_age; dropped");
                    metrics.webhook_events("expired", 1);
                    let _ = writer.send(Msg::Settle(Settle::Remove(head.seq))).await;
                    continue;
                }
                ready.push_back((i, head));
            }
        }
        // Start what the limits allow, oldest first, skipping webhooks at
        // their own limit.
        let mut at = 0;
        while running.len() < MAX_IN_FLIGHT && at < ready.len() {
            let i = ready[at].0;
            let n = per_url.entry(i).or_insert(0);
            if *n >= PER_URL {
                at += 1;
                continue;
            }
            *n += 1;
            let Some((_, head)) = ready.remove(at) else { break };
            let target = targets.clone();
            let Head { seq, attempts, body, .. } = head;
            running.spawn(async move {
                let t = &target[i];
                (seq, i, attempts, post(t, &body).await)
            });
        }
        tokio::select! {
            Some(done) = running.join_next(), if !running.is_empty() => {
                let Ok((seq, i, attempts, result)) = done else { continue };
                if let Some(n) = per_url.get_mut(&i) {
                    *n = n.saturating_sub(1);
                }
                let settle = match result {
                    Ok(()) => {
                        metrics.webhook_events("sent", 1);
                        Settle::Remove(seq)
                    }
                    Err(why) => {
                        metrics.webhook_events("retried", 1);
                        let attempts = attempts.saturating_add(1);
                        let wait = timing.backoff_ms(attempts);
                        tracing::info!(url = %targets[i].hook.url, attempts, retry_in_ms = wait, error = %why, "webhook POST failed; will retry");
                        Settle::Retry { seq, attempts, next_try: now_ms().saturating_add(wait as i64) }
                    }
                };
                // No look at the outbox here: this row stays in it (and its
                // message's next event is no head) until the writer has
                // committed the outcome, which `committed` reports. Looking
                // on every finished POST cost a blocking SQLite read per
                // event when the receiver keeps up.
                if writer.send(Msg::Settle(settle)).await.is_err() {
                    return;
                }
            }
            seqs = committed.recv() => {
                let Some(seqs) = seqs else { return };
                for s in seqs {
                    busy.remove(&s);
                }
                look = true;
            }
            _ = tokio::time::sleep(timing.poll()) => look = true,
        }
    }
}

/// One POST; `Ok` on a 2xx.
async fn post(t: &Target, body: &str) -> Result<(), String> {
    let sig = signature(&t.hook.secret, unix_now(), body);
    let resp = t
        .client
        .post(&t.hook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Mailgate-Signature", sig)
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| {
            // reqwest's message names only the URL; the cause is in its sources.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why.push_str(&format!(": {s}"));
                source = s.source();
            }
            why
        })?;
    // The response body is not read: a receiver cannot make us hold it.
    if resp.status().is_success() { Ok(()) } else { Err(format!("HTTP status {}", resp.status())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_10_s_to_10_minutes() {
        let t = Timing { first_ms: 10_000 };
        let waits: Vec<u64> = (1..=8).map(|a| t.backoff_ms(a) / 1000).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(t.backoff_ms(u32::MAX), 600_000);
        assert_eq!(Timing { first_ms: 200 }.backoff_ms(2), 400);
    }
}
