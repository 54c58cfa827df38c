//! Sends the outbox: each (webhook, message)'s oldest event, signed, over
//! HTTP/1.1 with keep-alive, retried with backoff (10 s doubling to 10
//! minutes) until the webhook's `max_age`.
//!
//! The client is hyper's connection API (the HTTP implementation under
//! reqwest, which MTA-STS and TLS-RPT use) with a few kept-alive
//! connections per webhook: a POST per event to one receiver needs no
//! pool keyed by host, redirect or retry layers, nor a URL parsed per
//! request, and those cost as much as the POST's own I/O.
//!
//! Bounded: at most [`READY`] events read ahead (or [`KNOWN_MAX`] taken
//! from the writer while the receivers keep up; see [`run`]),
//! [`MAX_IN_FLIGHT`] POSTs at once ([`PER_URL`] per webhook, so one
//! hanging receiver does not stop the others), each cut off after
//! [`TIMEOUT`]; what waits longer stays in SQLite, not in memory. A
//! message whose event keeps failing holds back only its own later events.
//!
//! May import: `config`, `metrics`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::{FutureExt, future::BoxFuture};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::outbox::{Head, Msg, Note, Outbox, Settle};
use super::{signature, unix_now};
use crate::config::Webhook;
use crate::metrics::Metrics;

/// POSTs under way at once, over every webhook.
const MAX_IN_FLIGHT: usize = 32;
/// Heads read from the outbox at a time (and held, bodies included).
const READY: usize = 256;
/// POSTs under way at once to one webhook (and connections kept open).
const PER_URL: usize = 16;
/// The whole POST, connection to the end of the response.
const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between two attempts of one event.
const MAX_BACKOFF_MS: u64 = 600_000;
/// A response body longer than this is not read: the connection closes.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// One configured webhook, ready to POST to.
pub struct Target {
    hook: Webhook,
    /// `hook.secret`, ready to sign with.
    key: ring::hmac::Key,
    /// The host to resolve (no brackets around an IPv6 address) and port.
    host: String,
    port: u16,
    /// The `Host:` field and the request target.
    authority: String,
    path: String,
    /// For an `https` webhook: what delivery trusts, and the name to check.
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    /// Kept-alive connections not in use.
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

/// A connection's transport: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Sets up each webhook, trusting what delivery trusts. Hosts are
/// resolved by the system resolver: a webhook is usually an internal
/// name (`/etc/hosts`, the site's DNS), not an internet one.
pub fn targets(hooks: &[Webhook], tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Arc<[Target]>> {
    let mut out = Vec::new();
    for h in hooks {
        let bad = |why: &str| anyhow::anyhow!("webhook {}: {why}", h.url);
        let uri: hyper::Uri = h.url.parse().map_err(|e| bad(&format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the URL must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("the URL has no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| bad(&format!("{e}")))?;
            Some((tokio_rustls::TlsConnector::from(tls.clone()), name))
        } else {
            None
        };
        out.push(Target {
            hook: h.clone(),
            key: super::signing_key(&h.secret),
            authority: authority.as_str().to_string(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            host,
            port,
            tls,
            idle: Mutex::new(Vec::new()),
        });
    }
    Ok(out.into())
}

impl Target {
    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if !c.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, c: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < PER_URL {
            idle.push(c);
        }
    }

    /// A new connection, its I/O driven by a task of its own.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let addrs =
            tokio::net::lookup_host((self.host.as_str(), self.port)).await.map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        let mut why = format!("no address for {}", self.host);
        let mut tcp = None;
        for addr in addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => why = format!("cannot connect to {addr}: {e}"),
                Err(_) => why = format!("cannot connect to {addr}: timed out"),
            }
        }
        let tcp = tcp.ok_or(why)?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await.map_err(|e| format!("TLS: {e}"))?),
            None => Box::new(tcp),
        };
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }
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

/// A finished POST: (row, webhook, key hash, attempts before, outcome).
type Posted = (i64, usize, u64, u32, Result<(), String>);

/// Rows held in memory while the sender knows the whole outbox; past
/// this it reads the outbox again instead (see [`run`]).
const KNOWN_MAX: usize = 4096;

/// The sender's loop: picks due heads, POSTs them, and hands every
/// outcome to the writer; a row stays `busy` from being picked until the
/// writer has committed what became of it.
///
/// Two ways to find what to send:
/// - *reading*: the outbox's heads are read back from SQLite, [`READY`]
///   at a time, after each commit and on a timer (retries wait there);
/// - *known*: once a read finds the outbox empty with nothing under way,
///   every row there is one the writer has since told of, so the sender
///   takes new rows from the writer as they come ([`Note::Fresh`], before
///   they are committed: one delivered before its batch is committed is
///   never written) and sends them in the order emitted, one at a time
///   per (webhook, message), with no read at all. A failed POST (its
///   retry waits in SQLite) or more than [`KNOWN_MAX`] rows waiting drops
///   back to reading.
pub async fn run(
    outbox: Arc<Outbox>,
    targets: Arc<[Target]>,
    writer: mpsc::Sender<Msg>,
    mut notes: mpsc::UnboundedReceiver<Note>,
    metrics: Arc<Metrics>,
    timing: Timing,
) {
    let mut busy: HashSet<i64> = HashSet::new();
    let mut per_url: HashMap<usize, usize> = HashMap::new();
    // The POSTs under way, polled by this task (not a task each: one
    // wake-up per response, not two).
    let mut running: FuturesUnordered<BoxFuture<'static, Posted>> = FuturesUnordered::new();
    // What to send next, with its webhook and its key's hash: heads read
    // from the outbox ([`READY`] at a time, not once per POST: each read
    // walks the index), or, when known, every new row not yet started.
    let mut ready: VecDeque<(usize, u64, Head)> = VecDeque::new();
    // (webhook, key hash)s with a POST under way, while known. Two keys
    // with one hash only make one wait for the other, never reorder.
    let mut sending: HashSet<(usize, u64)> = HashSet::new();
    // New rows whose batch is not committed yet.
    let mut uncommitted: HashSet<i64> = HashSet::new();
    // While reading, the new rows a read cannot see yet (not committed),
    // in order: should a read find the outbox empty, they are what the
    // sender must then send itself.
    let mut held: VecDeque<(u64, Head)> = VecDeque::new();
    let mut known = false;
    let mut look = true;
    loop {
        if !known && look && ready.is_empty() {
            look = false;
            let limit = READY + busy.len();
            let o = outbox.clone();
            // Whether it holds anything at all, read after the heads: rows
            // committed after that are still `held`.
            let read = tokio::task::spawn_blocking(move || o.heads(now_ms(), limit).and_then(|h| Ok((h, o.is_empty()?)))).await;
            let (heads, empty) = match read {
                Ok(Ok((h, empty))) => (Some(h), empty),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "webhook outbox unreadable; trying again");
                    (None, false)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook outbox read panicked");
                    (None, false)
                }
            };
            // Known from here: the outbox was empty, nothing under way.
            known = empty && busy.is_empty();
            if known {
                tracing::debug!(held = held.len(), "webhook sender: the outbox is empty; taking new events as they come");
                for (key, head) in std::mem::take(&mut held) {
                    queue(&targets, &writer, &metrics, &mut busy, &mut ready, key, head).await;
                }
            }
            let heads = heads.unwrap_or_default();
            for head in heads {
                // A row for no webhook stays busy until its removal is
                // committed; heads are one per key, so need no key hash.
                if busy.insert(head.seq)
                    && let Some(i) = target_of(&targets, &writer, &metrics, &head).await
                {
                    busy.remove(&head.seq);
                    ready.push_back((i, 0, head));
                }
            }
        }
        // Start what the limits allow, oldest first, skipping webhooks at
        // their own limit (and, when known, messages with a POST under way).
        let mut at = 0;
        while running.len() < MAX_IN_FLIGHT && at < ready.len() && (0..targets.len()).any(|i| per_url.get(&i).is_none_or(|&n| n < PER_URL))
        {
            let (i, key) = (ready[at].0, ready[at].1);
            let n = per_url.entry(i).or_insert(0);
            if *n >= PER_URL || (known && sending.contains(&(i, key))) {
                at += 1;
                continue;
            }
            let Some((i, key, head)) = ready.remove(at) else { break };
            if expired(&targets[i], &head, &metrics) {
                busy.insert(head.seq);
                let _ = writer.send(Msg::Settle(Settle::Remove(head.seq))).await;
                continue;
            }
            *n += 1;
            busy.insert(head.seq);
            if known {
                sending.insert((i, key));
            }
            let target = targets.clone();
            let Head { seq, attempts, body, .. } = head;
            running.push(
                async move {
                    let t = &target[i];
                    // A panic fails this POST, not the sender.
                    let result = std::panic::AssertUnwindSafe(post(t, body))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| Err("the POST panicked".to_string()));
                    (seq, i, key, attempts, result)
                }
                .boxed(),
            );
        }
        tokio::select! {
            Some((seq, i, key, attempts, result)) = running.next(), if !running.is_empty() => {
                if let Some(n) = per_url.get_mut(&i) {
                    *n = n.saturating_sub(1);
                }
                sending.remove(&(i, key));
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
                        if known {
                            // The retry waits in SQLite, and so does every
                            // later event of its message: read from now on.
                            known = false;
                            drop_to_reading(&mut ready, &mut sending, &uncommitted, &mut held);
                        }
                        Settle::Retry { seq, attempts, next_try: now_ms().saturating_add(wait as i64) }
                    }
                };
                // Reading, there is no look at the outbox here: this row
                // stays in it (and its message's next event is no head)
                // until the writer has committed the outcome, which
                // `notes` reports. Looking on every finished POST cost
                // a blocking SQLite read per event.
                if writer.send(Msg::Settle(settle)).await.is_err() {
                    return;
                }
            }
            note = notes.recv() => match note {
                None => return,
                Some(Note::Fresh(rows)) => {
                    for (key, head) in rows {
                        uncommitted.insert(head.seq);
                        let key = key_hash(&key);
                        if known {
                            queue(&targets, &writer, &metrics, &mut busy, &mut ready, key, head).await;
                        } else {
                            held.push_back((key, head));
                        }
                    }
                    if known && ready.len() > KNOWN_MAX {
                        // A receiver that does not keep up: what waits stays
                        // in SQLite, not in memory.
                        known = false;
                        tracing::debug!(waiting = ready.len(), "webhook sender: receivers behind; reading the outbox");
                        drop_to_reading(&mut ready, &mut sending, &uncommitted, &mut held);
                    }
                }
                Some(Note::Committed { settled, resolved }) => {
                    for s in settled {
                        busy.remove(&s);
                    }
                    for s in resolved {
                        uncommitted.remove(&s);
                    }
                    // Committed rows are for a read to find.
                    held.retain(|(_, h)| uncommitted.contains(&h.seq));
                    look = true;
                }
            },
            _ = tokio::time::sleep(timing.poll()), if !known => look = true,
        }
    }
}

/// Leaving known mode: what waits is for reading to find, once its batch
/// is committed; until then it is held.
fn drop_to_reading(
    ready: &mut VecDeque<(usize, u64, Head)>,
    sending: &mut HashSet<(usize, u64)>,
    uncommitted: &HashSet<i64>,
    held: &mut VecDeque<(u64, Head)>,
) {
    sending.clear();
    held.extend(ready.drain(..).filter(|(_, _, h)| uncommitted.contains(&h.seq)).map(|(_, key, h)| (key, h)));
}

/// Queues a row to send while known; a row for no webhook stays busy
/// until its removal is committed.
async fn queue(
    targets: &[Target],
    writer: &mpsc::Sender<Msg>,
    metrics: &Metrics,
    busy: &mut HashSet<i64>,
    ready: &mut VecDeque<(usize, u64, Head)>,
    key: u64,
    head: Head,
) {
    match target_of(targets, writer, metrics, &head).await {
        Some(i) => ready.push_back((i, key, head)),
        None => {
            busy.insert(head.seq);
        }
    }
}

/// The same on every thread (the task moves between workers); keys are
/// our own queue ids, so nobody chooses them to collide.
fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// The webhook a row is for; a row for a webhook no longer configured is
/// discarded.
async fn target_of(targets: &[Target], writer: &mpsc::Sender<Msg>, metrics: &Metrics, head: &Head) -> Option<usize> {
    let i = targets.iter().position(|t| t.hook.url == head.url);
    if i.is_none() {
        tracing::warn!(url = %head.url, "webhook event for a webhook no longer configured; discarded");
        metrics.webhook_events("discarded", 1);
        let _ = writer.send(Msg::Settle(Settle::Remove(head.seq))).await;
    }
    i
}

/// Whether a row has waited past its webhook's `max_age` (then it is
/// dropped, with a log line).
fn expired(t: &Target, head: &Head, metrics: &Metrics) -> bool {
    if (unix_now() as i64) < head.created.saturating_add(t.hook.max_age as i64) {
        return false;
    }
    tracing::warn!(url = %t.hook.url, attempts = head.attempts, max_age_s = t.hook.max_age, event = %head.body,
        "webhook event undelivered for max_age; dropped");
    metrics.webhook_events("expired", 1);
    true
}

/// One POST; `Ok` on a 2xx.
async fn post(t: &Target, body: String) -> Result<(), String> {
    tokio::time::timeout(TIMEOUT, post_within(t, body)).await.unwrap_or_else(|_| Err(format!("no answer within {TIMEOUT:?}")))
}

async fn post_within(t: &Target, body: String) -> Result<(), String> {
    let sig = signature(&t.key, unix_now(), &body);
    let mut request = hyper::Request::post(t.path.as_str())
        .header(hyper::header::HOST, t.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("mailgate/", env!("CARGO_PKG_VERSION")))
        .header("Mailgate-Signature", sig)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    // A kept-alive connection first; should the receiver have closed it
    // before taking the request (hyper gives an unsent request back),
    // the request goes again on a new one.
    let (response, conn) = loop {
        let (mut conn, reused) = match t.take_idle() {
            Some(c) => (c, true),
            None => (t.connect().await?, false),
        };
        if let Err(e) = conn.ready().await {
            if reused {
                continue;
            }
            return Err(format!("HTTP: {e}"));
        }
        match conn.try_send_request(request).await {
            Ok(r) => break (r, conn),
            Err(mut e) => match e.take_message() {
                Some(unsent) if reused => request = unsent,
                _ => return Err(format!("HTTP: {}", e.error())),
            },
        }
    };
    let status = response.status();
    // The body is read (up to a limit) so the connection can carry the
    // next POST; a receiver cannot make us hold more.
    let drained = Limited::new(response.into_body(), MAX_RESPONSE_BODY).collect().await.is_ok();
    if drained && !conn.is_closed() {
        t.put_idle(conn);
    }
    if status.is_success() { Ok(()) } else { Err(format!("HTTP status {status}")) }
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
