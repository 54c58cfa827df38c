//! Server-side TLS for the listeners: the certificate from `[tls]`, or a
//! self-signed one generated into `data_dir/tls/` on first start, reloaded
//! on SIGHUP or when the files change, without dropping connections.
//! Each certificate loaded is also published on a watch channel
//! ([`ServerTls::loaded`]), so others can look at it (the TLSA check).
//!
//! May import: `config`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// Serves whatever certificate was loaded last.
#[derive(Debug)]
struct Reloadable {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<Reloadable>,
    /// The certificate in use, announced at start and on every reload.
    loaded: tokio::sync::watch::Sender<Arc<CertifiedKey>>,
}

fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM in {}", cert.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("no certificate in {}", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).with_context(|| format!("cannot read private key {}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key_der).with_context(|| format!("unusable private key {}", key.display()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

/// Writes a self-signed certificate for `hostname` unless one exists.
fn ensure_self_signed(dir: &Path, hostname: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    fs::create_dir_all(dir)?;
    let certified = rcgen::generate_simple_self_signed(vec![hostname.to_string()])?;
    write_private(&key, certified.key_pair.serialize_pem().as_bytes())?;
    fs::write(&cert, certified.cert.pem())?;
    tracing::warn!(
        cert = %cert.display(), hostname,
        "generated a self-signed TLS certificate; set [tls] cert and key to a real one for production"
    );
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

impl ServerTls {
    /// `files` from `[tls]`, or `None` for a generated certificate.
    pub fn new(files: Option<(PathBuf, PathBuf)>, data_dir: &Path, hostname: &str) -> anyhow::Result<Arc<ServerTls>> {
        let (cert, key) = match files {
            Some(pair) => pair,
            None => ensure_self_signed(&data_dir.join("tls"), hostname)?,
        };
        let first = load(&cert, &key)?;
        let (loaded, _) = tokio::sync::watch::channel(first.clone());
        let resolver = Arc::new(Reloadable { current: RwLock::new(first) });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        Ok(Arc::new(ServerTls { acceptor: TlsAcceptor::from(Arc::new(config)), cert, key, resolver, loaded }))
    }

    /// Loads the files again; on error the old certificate stays in use.
    pub fn reload(&self) {
        match load(&self.cert, &self.key) {
            Ok(ck) => {
                *self.resolver.current.write().unwrap_or_else(|p| p.into_inner()) = ck.clone();
                self.loaded.send_replace(ck);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "TLS certificate reload failed; keeping the old one"),
        }
    }

    /// The certificate in use now (marked unseen) and every one loaded
    /// after it.
    pub fn loaded(&self) -> tokio::sync::watch::Receiver<Arc<CertifiedKey>> {
        let mut rx = self.loaded.subscribe();
        rx.mark_changed();
        rx
    }

    /// The certificate file, for messages.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    fn mtime(&self) -> Option<SystemTime> {
        let c = fs::metadata(&self.cert).and_then(|m| m.modified()).ok()?;
        let k = fs::metadata(&self.key).and_then(|m| m.modified()).ok()?;
        Some(c.max(k))
    }

    /// Reloads on SIGHUP and whenever the files change.
    pub fn watch(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGHUP");
                    None
                }
            };
            let mut seen = me.mtime();
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let now = me.mtime();
                        if now.is_some() && now != seen {
                            seen = now;
                            me.reload();
                        }
                    }
                    Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        tracing::info!("SIGHUP: reloading the TLS certificate");
                        seen = me.mtime();
                        me.reload();
                    }
                }
            }
        });
    }
}

/// "TLSv1.3 TLS13_AES_256_GCM_SHA384", for logs and `Received:`.
pub fn describe(conn: &rustls::ServerConnection) -> String {
    let version = conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_else(|| "TLS".into());
    let cipher = conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default();
    format!("version={} cipher={}", version.replace("TLSv1_", "TLSv1."), cipher)
}

/// A connection in clear text or TLS, read and written the same way.
pub enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::TlsStream<tokio::net::TcpStream>>),
    /// Only while switching to TLS.
    Gone,
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => std::task::Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => std::task::Poll::Ready(Ok(())),
        }
    }
}

impl Stream {
    /// Runs the server side of a TLS handshake on a clear-text stream;
    /// returns the TLS stream and its description.
    pub async fn accept_tls(self, tls: &ServerTls, timeout: Duration) -> std::io::Result<(Stream, String)> {
        let Stream::Plain(tcp) = self else { return Err(std::io::ErrorKind::InvalidInput.into()) };
        let accepted = tokio::time::timeout(timeout, tls.acceptor.accept(tcp))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let description = describe(accepted.get_ref().1);
        Ok((Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(accepted))), description))
    }
}
