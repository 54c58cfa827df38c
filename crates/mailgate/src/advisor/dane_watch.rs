//! The running server's DANE self-check: whenever the `[tls]` certificate
//! is loaded (at start, on SIGHUP, when its files change), the published
//! TLSA records of our own MX host (`_25._tcp.<[server] hostname>`, asked
//! through `[dns]`) are compared with the loaded key. When records exist
//! and none pins this key, every DANE sender defers mail to us, so one
//! WARN line names the `3 1 1` record to publish. It only warns: a reload
//! is never refused, and the lookup runs in the background with a
//! timeout, so DNS can never hold up start or reload.
//!
//! May import: `advisor::lookup`, `outbound::dane`, `tls`, `dns`.

use std::net::SocketAddr;
use std::time::Duration;

use super::lookup::{self, Answer};
use crate::tls::ServerTls;

/// How long one check may wait for DNS.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Checks now and after every reload, until the process ends.
pub fn start(tls: &ServerTls, hostname: &str, nameservers: Option<Vec<SocketAddr>>) {
    let mut loaded = tls.loaded();
    let cert = tls.cert_path().display().to_string();
    let host = hostname.trim_end_matches('.').to_ascii_lowercase();
    tokio::spawn(async move {
        while loaded.changed().await.is_ok() {
            let key = loaded.borrow_and_update().clone();
            let Some(ours) = key.cert.first().and_then(crate::outbound::dane::tlsa_311) else {
                tracing::debug!(cert = %cert, "DANE self-check: the certificate has no X.509 end entity to pin");
                continue;
            };
            match tokio::time::timeout(TIMEOUT, check(&host, &ours, nameservers.as_deref())).await {
                Ok(Verdict::Warn { record, published }) => tracing::warn!(
                    cert = %cert,
                    published = %published,
                    "DANE: no TLSA record of our MX host matches the key of the TLS certificate in use, so DANE senders defer mail to us: publish \"{record}\" (keep the old records until the switch is done)"
                ),
                Ok(Verdict::Match) => {
                    tracing::info!(host = %host, "DANE: our MX host's TLSA records match the key of the TLS certificate in use")
                }
                Ok(Verdict::NoDane) => tracing::debug!(host = %host, "DANE self-check: our MX host publishes no TLSA record"),
                Ok(Verdict::Failed(e)) => tracing::info!(host = %host, error = %e, "DANE self-check: cannot look up our TLSA records"),
                Err(_) => tracing::info!(host = %host, "DANE self-check: the TLSA lookup timed out after {}s", TIMEOUT.as_secs()),
            }
        }
    });
}

enum Verdict {
    /// Records exist and none pins our key: the record to publish, and
    /// what is published now.
    Warn {
        record: String,
        published: String,
    },
    Match,
    NoDane,
    Failed(String),
}

/// One look at `_25._tcp.<host>`, with a resolver of its own: a reload
/// right after publishing must not see a cached answer from before.
async fn check(host: &str, ours: &str, nameservers: Option<&[SocketAddr]>) -> Verdict {
    let resolver = match crate::dns::resolver(nameservers) {
        Ok(r) => r,
        Err(e) => return Verdict::Failed(format!("{e:#}")),
    };
    let name = format!("_25._tcp.{host}");
    match lookup::tlsa(&resolver, &name).await {
        Answer::Found(records) if records.iter().any(|r| r.to_string().eq_ignore_ascii_case(ours)) => Verdict::Match,
        Answer::Found(records) => Verdict::Warn {
            record: format!("{name}. IN TLSA {ours}"),
            published: records.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        },
        Answer::NoName | Answer::NoData => Verdict::NoDane,
        Answer::Failed(e) => Verdict::Failed(e),
    }
}
