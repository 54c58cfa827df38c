//! DKIM private keys: Ed25519 (RFC 8463) and RSA, loaded from PEM, and the
//! public `p=` value for DNS.
//!
//! Signatures come from aws-lc-rs, not ring (which TLS uses): its RSA-2048
//! private-key operation is about twice ring's speed and its Ed25519 about
//! three times on x86-64, and RSA is most of the cost of signing a message
//! (BENCHMARKS.md, "Signing").

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mailgate_core::dkim::{Algorithm, SigningInput};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer};

pub enum DkimKey {
    Ed25519(Ed25519KeyPair),
    /// RSA of 2048 bits or more, signed with aws-lc-rs.
    Rsa {
        key: RsaKeyPair,
        spki: Vec<u8>,
    },
    /// RSA under 2048 bits, which aws-lc-rs refuses: only for verifying old
    /// material such as RFC 8463's 1024-bit example key. RFC 8301 forbids
    /// generating such keys; `keygen` never does.
    RsaLegacy {
        key: Box<rsa::RsaPrivateKey>,
        spki: Vec<u8>,
    },
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

impl DkimKey {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            DkimKey::Ed25519(_) => Algorithm::Ed25519Sha256,
            _ => Algorithm::RsaSha256,
        }
    }

    /// Reads a `PRIVATE KEY` (PKCS#8, RSA or Ed25519) or `RSA PRIVATE KEY`
    /// (PKCS#1) PEM.
    pub fn from_pem(pem: &str) -> anyhow::Result<DkimKey> {
        if pem.contains("BEGIN RSA PRIVATE KEY") {
            let key = rsa::RsaPrivateKey::from_pkcs1_pem(pem).map_err(err)?;
            return Self::from_rsa(key);
        }
        let der = pem_body(pem, "PRIVATE KEY")?;
        if let Ok(ed) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            return Ok(DkimKey::Ed25519(ed));
        }
        let key = rsa::RsaPrivateKey::from_pkcs8_der(&der).map_err(err)?;
        Self::from_rsa(key)
    }

    fn from_rsa(key: rsa::RsaPrivateKey) -> anyhow::Result<DkimKey> {
        let spki = key.to_public_key().to_public_key_der().map_err(err)?.as_bytes().to_vec();
        let pkcs8 = key.to_pkcs8_der().map_err(err)?;
        match RsaKeyPair::from_pkcs8(pkcs8.as_bytes()) {
            Ok(fast) => Ok(DkimKey::Rsa { key: fast, spki }),
            Err(_) => Ok(DkimKey::RsaLegacy { key: Box::new(key), spki }),
        }
    }

    /// From a raw 32-byte seed, as RFC 8463's example key is published.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn from_ed25519_seed(seed: &[u8]) -> anyhow::Result<DkimKey> {
        Ok(DkimKey::Ed25519(Ed25519KeyPair::from_seed_unchecked(seed).map_err(err)?))
    }

    /// A new key: Ed25519, or RSA of `bits` (at least 2048).
    pub fn generate(algorithm: Algorithm, bits: usize) -> anyhow::Result<(DkimKey, String)> {
        match algorithm {
            Algorithm::Ed25519Sha256 => {
                // PKCS#8 v1 (RFC 8410), not v2 (RFC 5958, with the public
                // key), which OpenSSL 3.0 tools cannot read.
                let v1 = Ed25519KeyPair::generate().and_then(|k| k.to_pkcs8v1()).map_err(err)?;
                let pem = pem_encode("PRIVATE KEY", v1.as_ref());
                Ok((DkimKey::from_pem(&pem)?, pem))
            }
            Algorithm::RsaSha256 => {
                let mut rng = rsa::rand_core::OsRng;
                let key = rsa::RsaPrivateKey::new(&mut rng, bits.max(2048)).map_err(err)?;
                let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(err)?.to_string();
                Ok((Self::from_rsa(key)?, pem))
            }
        }
    }

    pub fn sign(&self, input: &SigningInput) -> anyhow::Result<Vec<u8>> {
        self.sign_data(&input.data, input.digest())
    }

    /// Signs `data` (whose SHA-256 hash is `digest`) as DKIM and ARC do:
    /// RSA PKCS#1 v1.5 over SHA-256, or Ed25519 over the digest (RFC 8463 §3).
    pub fn sign_data(&self, data: &[u8], digest: [u8; 32]) -> anyhow::Result<Vec<u8>> {
        match self {
            DkimKey::Ed25519(k) => Ok(k.sign(&digest).as_ref().to_vec()),
            DkimKey::Rsa { key, .. } => {
                let mut sig = vec![0; key.public_modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), data, &mut sig).map_err(err)?;
                Ok(sig)
            }
            DkimKey::RsaLegacy { key, .. } => {
                let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new((**key).clone());
                Ok(signer.sign(data).to_vec())
            }
        }
    }

    /// The DNS TXT record value to publish for this key.
    pub fn dns_record(&self) -> String {
        match self {
            DkimKey::Ed25519(k) => format!("v=DKIM1; k=ed25519; p={}", STANDARD.encode(k.public_key().as_ref())),
            DkimKey::Rsa { spki, .. } | DkimKey::RsaLegacy { spki, .. } => format!("v=DKIM1; k=rsa; p={}", STANDARD.encode(spki)),
        }
    }
}

fn pem_body(pem: &str, label: &str) -> anyhow::Result<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).ok_or_else(|| anyhow::anyhow!("no {label} in PEM"))? + begin.len();
    let stop = pem[start..].find(&end).ok_or_else(|| anyhow::anyhow!("unterminated PEM"))? + start;
    let b64: String = pem[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(b64).map_err(err)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
