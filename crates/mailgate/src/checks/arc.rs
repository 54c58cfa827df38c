//! TEMPORARY STUB (replaced by the `arc` branch before landing).

use mail_auth::{ArcOutput, AuthenticatedMessage, DkimResult, MessageAuthenticator};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArcResult {
    None,
    Pass,
    Fail,
}

impl ArcResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ArcResult::None => "none",
            ArcResult::Pass => "pass",
            ArcResult::Fail => "fail",
        }
    }
}

pub struct ArcOutcome<'x> {
    pub result: ArcResult,
    pub output: ArcOutput<'x>,
    pub sealers: Vec<String>,
    pub reason: Option<String>,
}

pub async fn verify<'x>(auth: &MessageAuthenticator, msg: &'x AuthenticatedMessage<'x>) -> ArcOutcome<'x> {
    let output = auth.verify_arc(msg).await;
    let result = match output.result() {
        DkimResult::Pass => ArcResult::Pass,
        DkimResult::None => ArcResult::None,
        _ => ArcResult::Fail,
    };
    let sealers = msg.as_headers.iter().map(|h| h.header.d.to_lowercase()).collect();
    ArcOutcome { result, output, sealers, reason: None }
}
