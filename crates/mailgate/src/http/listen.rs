//! Where the admin API listens: plain HTTP on loopback, or HTTPS with the
//! listeners' certificate when `[http] tls = true`. A non-loopback bind
//! without TLS is refused before anything starts.
//!
//! May import: `tls`, `config`, axum, tokio.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use axum::Router;
use axum::serve::{Listener, ListenerExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::config::Config;
use crate::tls::{ServerTls, Stream};

/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the backlog.
const MAX_HANDSHAKES: usize = 64;

/// Refuses an admin API reachable from the network in clear text, where
/// its token could be read off the wire.
pub fn check_bind(config: &Config) -> anyhow::Result<()> {
    if let Some(bind) = config.http_bind
        && !bind.ip().is_loopback()
        && !config.http_tls
    {
        bail!(
            "[http] bind = \"{bind}\" is not a loopback address and [http] tls is false: set [http] tls = true to serve the admin API over HTTPS, or bind it to 127.0.0.1"
        );
    }
    Ok(())
}

/// Accepted connections, clear text or after a finished TLS handshake.
pub enum AdminListener {
    Plain(TcpListener),
    Tls { rx: mpsc::Receiver<(Stream, SocketAddr)>, local: SocketAddr, _acceptor: AbortOnDrop },
}

pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Listener for AdminListener {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        match self {
            AdminListener::Plain(tcp) => loop {
                match TcpListener::accept(tcp).await {
                    Ok((s, peer)) => return (Stream::Plain(s), peer),
                    Err(e) => {
                        // Out of file descriptors and the like: wait, retry.
                        tracing::warn!(error = %e, "http: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
            AdminListener::Tls { rx, .. } => match rx.recv().await {
                Some(conn) => conn,
                // The acceptor task ended (it does not, short of a panic):
                // accept nothing more rather than spin.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            AdminListener::Plain(tcp) => tcp.local_addr(),
            AdminListener::Tls { local, .. } => Ok(*local),
        }
    }
}

/// Handshakes run in their own tasks so that one slow client does not hold
/// up the others.
fn tls_listener(tcp: TcpListener, tls: Arc<ServerTls>) -> std::io::Result<AdminListener> {
    let local = tcp.local_addr()?;
    let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let (tcp_stream, peer) = match TcpListener::accept(&tcp).await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                match Stream::Plain(tcp_stream).accept_tls(&tls, HANDSHAKE_TIMEOUT).await {
                    Ok((stream, _)) => {
                        drop(permit);
                        let _ = tx.send((stream, peer)).await;
                    }
                    Err(e) => tracing::info!(client = %peer.ip(), error = %e, "http: TLS handshake failed"),
                }
            });
        }
    });
    Ok(AdminListener::Tls { rx, local, _acceptor: AbortOnDrop(task) })
}

/// Binds the admin API and serves `app` until `stop` turns true.
pub async fn start(
    socket: TcpListener,
    tls: Option<Arc<ServerTls>>,
    app: Router,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(role = "http", scheme, addr = %socket.local_addr()?, "listening");
    let listener = match tls {
        Some(tls) => tls_listener(socket, tls)?,
        None => AdminListener::Plain(socket),
    };
    // `tap_io` only to reach axum's `ConnectInfo<SocketAddr>` for our own
    // listener type: the auth layer logs and throttles by client address.
    let listener = listener.tap_io(|_| {});
    Ok(tokio::spawn(async move {
        let serve = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "http server failed");
        }
    }))
}
