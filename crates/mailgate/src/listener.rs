//! Listeners: accept TCP connections, enforce connection caps, and hand
//! each connection to the inbound driver.
//!
//! May import: `inbound`, `metrics`, `mailgate-core`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use mailgate_core::reply::{Reply, status};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::inbound::{self, Inbound};
use crate::metrics::Metrics;

/// Connection caps shared by all listeners.
pub struct Limits {
    global: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

impl Limits {
    pub fn new(max_connections: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Limits { global: Arc::new(Semaphore::new(max_connections)), per_ip: Mutex::new(HashMap::new()), max_per_ip })
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

/// Accepts connections until `shutdown` turns true; returns once every
/// session it started has finished.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<Inbound>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
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
                let Ok(permit) = limits.global.clone().try_acquire_owned() else {
                    metrics.connection_refused(role, "global");
                    sessions.spawn(refuse(stream, peer, "Too many connections; try again later"));
                    continue;
                };
                if !limits.admit_ip(peer.ip()) {
                    metrics.connection_refused(role, "per-ip");
                    drop(permit);
                    sessions.spawn(refuse(stream, peer, "Too many connections from your address"));
                    continue;
                }
                let ctx = ctx.clone();
                let limits = limits.clone();
                let shutdown = shutdown.clone();
                let open = metrics.open_connection(role);
                sessions.spawn(async move {
                    inbound::run(stream, peer, ctx, shutdown).await;
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

async fn refuse(mut stream: TcpStream, peer: SocketAddr, why: &str) {
    tracing::info!(client = %peer, reason = why, "connection refused");
    let reply = Reply::new(421, status::CONGESTION, why);
    let _ = stream.write_all(&reply.to_wire()).await;
    let _ = stream.shutdown().await;
}
