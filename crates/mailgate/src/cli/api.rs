//! The CLI's client for the admin API: finds the address and the token,
//! and with `[http] tls = true` speaks HTTPS trusting exactly the
//! certificate the server is configured with.
//!
//! May import: `config`, `http::auth` (the token file format).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;

use crate::config::Config;

pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

/// The certificate file the server presents on its admin API: `[tls] cert`,
/// or the self-signed one it generated into `data_dir/tls/`.
fn cert_file(config: &Config) -> PathBuf {
    match &config.tls {
        Some(t) => t.cert.clone(),
        None => config.data_dir.join("tls").join("cert.pem"),
    }
}

impl Client {
    /// `token_file` overrides `data_dir/admin.token`.
    pub fn new(config: &Config, token_file: Option<&Path>) -> anyhow::Result<Client> {
        let bind = config.http_bind.context("[http] bind is not set; the admin API is disabled")?;
        let host = if bind.ip().is_unspecified() { "127.0.0.1".to_string() } else { bind.ip().to_string() };
        let host = if bind.is_ipv6() && !bind.ip().is_unspecified() { format!("[{host}]") } else { host };
        let scheme = if config.http_tls { "https" } else { "http" };
        let base = format!("{scheme}://{host}:{}/api/v1", bind.port());
        let token_path = token_file.map(Path::to_path_buf).unwrap_or_else(|| crate::http::auth::token_path(&config.data_dir));
        let token = crate::http::auth::read_token(&token_path)
            .map_err(|e| anyhow::anyhow!("{e:#} (run as the server's user, or name another token file with --token-file FILE)"))?;
        let mut builder = ureq::AgentBuilder::new().timeout(Duration::from_secs(120));
        if config.http_tls {
            builder = builder.tls_config(Arc::new(pinned_tls(&cert_file(config))?));
        }
        Ok(Client { agent: builder.build(), base, token })
    }

    /// `method` on `path` under `/api/v1`, with an optional JSON body.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = self.agent.request(method, &url).set("Authorization", &format!("Bearer {}", self.token));
        let sent = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match sent {
            Ok(resp) => resp.into_json().context("the server sent invalid JSON"),
            Err(ureq::Error::Status(code, resp)) => {
                let body: Value = resp.into_json().unwrap_or(Value::Null);
                let why = body["error"].as_str().unwrap_or("request failed").to_string();
                match code {
                    401 => bail!("{why} (HTTP 401): the token does not match the server's admin.token"),
                    _ => bail!("{why} (HTTP {code})"),
                }
            }
            Err(e) => bail!("cannot reach the admin API at {url}: {e}; is `mailgate serve` running?"),
        }
    }
}

/// TLS that accepts exactly the certificates in `cert` (the server's own,
/// by their DER bytes) whatever name they carry: the CLI connects to an IP
/// address the certificate does not name, and a self-signed certificate has
/// no other anchor. The handshake signature is still checked, so only the
/// holder of the key passes.
fn pinned_tls(cert: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let pinned: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the admin API certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM in {}", cert.display()))?;
    if pinned.is_empty() {
        bail!("no certificate in {}", cert.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned { pinned, algorithms: provider.signature_verification_algorithms });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[derive(Debug)]
struct Pinned {
    pinned: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pinned.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the admin API presented a certificate other than the configured one".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
