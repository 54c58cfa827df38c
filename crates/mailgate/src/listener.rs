//! Listeners: accept TCP connections, enforce connection caps and the
//! per-address connection rate, and hand each connection to the inbound
//! driver.
//!
//! A refused connection costs one accept and one write: the `421` goes out
//! before any TLS, DNS or session work, and no task is started for it.
//!
//! Sessions run on their own threads ([`Receivers`], `[server]
//! smtp_threads`), not on the main runtime's work-stealing pool. A session
//! is a string of short steps (read a command, write a reply, wait for the
//! spool), each a few microseconds of work. Spread over a pool, each step
//! tends to wake a parked worker on another core, and on a small machine
//! those wake-ups cost more than the steps: on 2 cores the accept benchmark
//! ran 6 to 14 % faster with its sessions on one thread of their own than
//! on the pool of two (BENCHMARKS.md, "Session threads"). A session stays
//! on the thread that accepted it, from the greeting to the close.
//!
//! May import: `inbound`, `metrics`, `mailgate-core`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailgate_core::reply::{Reply, status};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::inbound::{self, Inbound};
use crate::metrics::Metrics;

/// Connection caps shared by all listeners.
pub struct Limits {
    global: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
    rate: Mutex<Rate>,
}

impl Limits {
    /// `per_minute` is `[limits] connections_per_ip_per_minute` (0 = off).
    pub fn new(max_connections: usize, max_per_ip: usize, per_minute: u32) -> Arc<Self> {
        Arc::new(Limits {
            global: Arc::new(Semaphore::new(max_connections)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
            rate: Mutex::new(Rate::new(per_minute, MAX_TRACKED)),
        })
    }

    fn admit_rate(&self, ip: IpAddr) -> bool {
        self.rate.lock().unwrap_or_else(|p| p.into_inner()).admit(ip, Instant::now())
    }

    fn admit_ip(&self, ip: IpAddr) -> bool {
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return false;
        }
        *n += 1;
        true
    }

    fn release_ip(&self, ip: IpAddr) {
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// Addresses the rate table follows at most (about 48 octets each); past
/// it, after pruning, the table starts over rather than grow.
const MAX_TRACKED: usize = 100_000;

/// New connections per minute per client address, as a token bucket per
/// address: it holds up to a minute's worth and refills continuously, so a
/// burst of a minute's allowance passes and then one per 60/N s.
struct Rate {
    per_minute: u32,
    buckets: HashMap<IpAddr, Bucket>,
    last_prune: Instant,
    max_tracked: usize,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Rate {
    fn new(per_minute: u32, max_tracked: usize) -> Self {
        Rate { per_minute, buckets: HashMap::new(), last_prune: Instant::now(), max_tracked }
    }

    fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        if now.duration_since(self.last_prune) >= Duration::from_secs(60) || self.buckets.len() >= self.max_tracked {
            self.prune(now);
        }
        let full = f64::from(self.per_minute);
        let b = self.buckets.entry(rate_key(ip)).or_insert(Bucket { tokens: full, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * full / 60.0).min(full);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A bucket that has refilled is the same as none: dropped. If every
    /// address is still active, the table starts over (fail open: an
    /// attacker with that many addresses is for the global cap).
    fn prune(&mut self, now: Instant) {
        let (full, before) = (f64::from(self.per_minute), self.buckets.len());
        self.buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * full / 60.0 < full);
        if self.buckets.len() >= self.max_tracked {
            tracing::warn!(addresses = self.buckets.len(), "connection rate table full; starting it over");
            self.buckets.clear();
        }
        tracing::debug!(before, after = self.buckets.len(), "connection rate table pruned");
        self.last_prune = now;
    }
}

/// An IPv6 client usually holds a whole /64: it is counted as one.
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)),
        v4 => v4,
    }
}

/// Accepts connections until `shutdown` turns true; returns once every
/// session it started has finished.
async fn serve(listener: TcpListener, ctx: Arc<Inbound>, limits: Arc<Limits>, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    let mut sessions = JoinSet::new();
    let role = ctx.session.role;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                metrics.connection(role);
                let _ = stream.set_nodelay(true);
                // Trusted networks (`[relay] trusted_networks`) are exempt
                // from the rate, not from the caps; loopback is not special.
                let trusted = ctx.trusted.iter().any(|n| n.contains(&peer.ip()));
                if !trusted && !limits.admit_rate(peer.ip()) {
                    metrics.connection_refused(role, "rate");
                    refuse(stream, peer, status::TEMP_POLICY, "Too many connections from your address per minute; try again later");
                    continue;
                }
                let Ok(permit) = limits.global.clone().try_acquire_owned() else {
                    metrics.connection_refused(role, "global");
                    refuse(stream, peer, status::CONGESTION, "Too many connections; try again later");
                    continue;
                };
                if !limits.admit_ip(peer.ip()) {
                    metrics.connection_refused(role, "per-ip");
                    drop(permit);
                    refuse(stream, peer, status::TEMP_POLICY, "Too many connections from your address");
                    continue;
                }
                let ctx = ctx.clone();
                let limits = limits.clone();
                let shutdown = shutdown.clone();
                let open = metrics.open_connection(role);
                // A session's future is large (11 KiB: every state of the
                // dialogue and the checks). Boxed once here, the task moves
                // a pointer instead of copying it at each step of spawning,
                // finishing and joining.
                let session = Box::pin(inbound::run(stream, peer, ctx, shutdown));
                sessions.spawn(async move {
                    session.await;
                    limits.release_ip(peer.ip());
                    drop(permit);
                    drop(open);
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    while sessions.join_next().await.is_some() {}
}

/// The threads that accept and run SMTP sessions: each a single-threaded
/// runtime that accepts on every listener and runs the sessions it
/// accepted. The threads share each listening socket: a new connection
/// wakes them all and goes to whichever accepts it first (no
/// `SO_REUSEPORT`, so a second server on the same port still fails to
/// bind instead of silently taking half the connections). Their spool writes,
/// DNS queries and report events go to the same spool, resolver and
/// recorder as everything else. Dropping this stops the threads; sessions
/// still running then are cut off, as they are when the main runtime stops.
pub struct Receivers {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<oneshot::Sender<()>>,
}

impl Receivers {
    /// Starts `n` threads (at least one), named `smtp-N`.
    pub fn start(n: usize) -> std::io::Result<Receivers> {
        let mut receivers = Receivers { handles: Vec::new(), stops: Vec::new() };
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            receivers.handles.push(runtime.handle().clone());
            receivers.stops.push(stop);
            std::thread::Builder::new().name(format!("smtp-{i}")).spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Blocking tasks still running (a password hash, a
                // signature) end on their own; nobody waits for them.
                runtime.shutdown_background();
            })?;
        }
        Ok(receivers)
    }

    /// Accepts on `listener` in every thread, until `shutdown` turns true.
    /// Each handle ends once its thread's sessions from this listener have.
    pub fn serve(
        &self,
        listener: std::net::TcpListener,
        ctx: &Arc<Inbound>,
        limits: &Arc<Limits>,
        metrics: &Arc<Metrics>,
        shutdown: &watch::Receiver<bool>,
    ) -> std::io::Result<Vec<JoinHandle<()>>> {
        listener.set_nonblocking(true)?;
        let mut served = Vec::new();
        for handle in &self.handles {
            let socket = listener.try_clone()?;
            let (ctx, limits, metrics, shutdown) = (ctx.clone(), limits.clone(), metrics.clone(), shutdown.clone());
            // Registered with this thread's reactor: made inside it.
            served.push(handle.spawn(async move {
                match TcpListener::from_std(socket) {
                    Ok(socket) => serve(socket, ctx, limits, metrics, shutdown).await,
                    Err(e) => tracing::error!(error = %e, "cannot accept on this thread"),
                }
            }));
        }
        Ok(served)
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

/// `421` and close, without a task: a fresh socket's send buffer always
/// takes one short line, so the write never has to wait. Under a flood the
/// log line is debug, or the log would be the next thing to flood.
fn refuse(stream: TcpStream, peer: SocketAddr, code: mailgate_core::reply::StatusCode, why: &str) {
    tracing::debug!(client = %peer, reason = why, "connection refused");
    let reply = Reply::new(421, code, why);
    let _ = stream.try_write(&reply.to_wire());
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_allows_a_minute_then_refills() {
        let t0 = Instant::now();
        let mut r = Rate::new(60, 1000);
        let a: IpAddr = "192.0.2.1".parse().unwrap(); // ok: literal
        let b: IpAddr = "192.0.2.2".parse().unwrap(); // ok: literal
        assert!((0..60).all(|_| r.admit(a, t0)));
        assert!(!r.admit(a, t0), "the 61st within the minute");
        assert!(r.admit(b, t0), "another address has its own");
        assert!(!r.admit(a, t0 + Duration::from_millis(500)));
        assert!(r.admit(a, t0 + Duration::from_millis(1100)), "one a second comes back");
        assert!(Rate::new(0, 10).admit(a, t0), "0 is off");
    }

    #[test]
    fn ipv6_counts_per_64_and_the_table_stays_bounded() {
        let t0 = Instant::now();
        let mut r = Rate::new(2, 100);
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap(); // ok: literal
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap(); // ok: literal
        assert!(r.admit(x, t0) && r.admit(y, t0));
        assert!(!r.admit(x, t0), "same /64");
        for i in 0..1000u32 {
            r.admit(IpAddr::V4(i.into()), t0);
            assert!(r.buckets.len() <= 100, "{} entries", r.buckets.len());
        }
        // Refilled buckets are pruned.
        r.prune(t0 + Duration::from_secs(61));
        assert!(r.buckets.is_empty());
    }
}
