//! TEMPORARY STUB (replaced by the `dkim` branch before landing): maps
//! mail-auth's DKIM outputs straight through.

use mail_auth::{AuthenticatedMessage, DkimOutput, DkimResult, MessageAuthenticator};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimVerdict {
    Pass,
    Fail,
    Neutral,
    Policy,
    TempError,
    PermError,
}

impl DkimVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            DkimVerdict::Pass => "pass",
            DkimVerdict::Fail => "fail",
            DkimVerdict::Neutral => "neutral",
            DkimVerdict::Policy => "policy",
            DkimVerdict::TempError => "temperror",
            DkimVerdict::PermError => "permerror",
        }
    }
}

pub struct DkimCheck<'x> {
    pub result: DkimVerdict,
    pub domain: String,
    pub selector: String,
    pub algorithm: String,
    pub header_b: String,
    pub reason: Option<String>,
    pub output: DkimOutput<'x>,
}

pub const DEFAULT_MAX_SIGNATURES: usize = 10;

pub async fn verify<'x>(auth: &MessageAuthenticator, msg: &'x AuthenticatedMessage<'x>, max_signatures: usize) -> Vec<DkimCheck<'x>> {
    let outputs = auth.verify_dkim(msg).await;
    outputs
        .into_iter()
        .take(max_signatures)
        .map(|o| {
            let result = match o.result() {
                DkimResult::Pass => DkimVerdict::Pass,
                DkimResult::Neutral(mail_auth::Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch)) => DkimVerdict::Fail,
                DkimResult::Neutral(_) => DkimVerdict::Neutral,
                DkimResult::Fail(_) => DkimVerdict::Fail,
                DkimResult::PermError(_) => DkimVerdict::PermError,
                DkimResult::TempError(_) => DkimVerdict::TempError,
                DkimResult::None => DkimVerdict::Neutral,
            };
            let (domain, selector, algorithm) = match o.signature() {
                Some(s) => (
                    s.d.clone(),
                    s.s.clone(),
                    match s.a {
                        mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256".to_string(),
                        mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1".to_string(),
                        mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256".to_string(),
                    },
                ),
                None => Default::default(),
            };
            DkimCheck { result, domain, selector, algorithm, header_b: String::new(), reason: None, output: o }
        })
        .collect()
}
