//! Outbound TLS: the rustls client configuration for STARTTLS.
//!
//! Opportunistic STARTTLS (RFC 3207 without a policy) cannot authenticate
//! the server: MX hostnames come from unsigned DNS. It still protects
//! against passive eavesdropping, so certificates are not verified here.
//! MTA-STS and DANE, which do verify, plug in at this seam later.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// Accepts any certificate. Only for opportunistic encryption.
#[derive(Debug)]
struct DangerAcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for DangerAcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration for opportunistic STARTTLS.
pub fn opportunistic() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| b.dangerous().with_custom_certificate_verifier(Arc::new(DangerAcceptAnyCertificate(provider))).with_no_client_auth())
        .unwrap_or_else(|_| {
            // ok: the ring provider supports the default protocol versions
            unreachable!("ring supports TLS 1.2 and 1.3")
        });
    Arc::new(config)
}

/// Certificates we trust when a policy asks us to verify: the system's
/// roots plus `[delivery].ca_file`.
pub struct Trust {
    /// For connections that must verify (MTA-STS enforce, policy fetch).
    pub verifying: Arc<ClientConfig>,
    verifier: Arc<rustls::client::WebPkiServerVerifier>,
}

impl Trust {
    pub fn load(extra_ca: Option<&std::path::Path>) -> anyhow::Result<Trust> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = extra_ca {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))? {
                roots.add(cert.map_err(|e| anyhow::anyhow!("bad PEM in {}: {e}", path.display()))?)?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots);
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let verifying = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Trust { verifying: Arc::new(verifying), verifier })
    }

    /// Checks a chain the server presented, as a verifying client would;
    /// the error is an RFC 8460 result type.
    pub fn check(&self, host: &str, chain: &[CertificateDer<'_>]) -> Result<(), &'static str> {
        let (end, rest) = chain.split_first().ok_or("certificate-not-trusted")?;
        let name = ServerName::try_from(host.to_string()).map_err(|_| "certificate-host-mismatch")?;
        self.verifier.verify_server_cert(end, rest, &name, &[], UnixTime::now()).map(|_| ()).map_err(result_type)
    }
}

/// Maps a rustls certificate error to an RFC 8460 §4.3 result type.
pub fn result_type(e: rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => "certificate-host-mismatch",
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "certificate-expired",
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "certificate-not-trusted",
        // Only the DANE verifier (dane.rs) fails with this: no TLSA record matched.
        rustls::Error::InvalidCertificate(C::ApplicationVerificationFailure) => "tlsa-invalid",
        _ => "validation-failure",
    }
}
