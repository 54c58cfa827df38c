//! Key rotation without a window of unsigned or unverifiable mail:
//! a pending key becomes active only once DNS serves its record; the key it
//! replaces stops signing but stays "retiring" for the overlap, so mail
//! already signed with it still verifies; then the operator is reminded to
//! remove its record.

use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

use super::Signer;
use super::store::{self, KeyInfo, KeyState};

/// Whether DNS serves `record`'s public key at the key's selector.
pub async fn dns_matches(resolver: &TokioResolver, domain: &str, selector: &str, record: &str) -> bool {
    let name = format!("{selector}._domainkey.{domain}.");
    // A silent nameserver must not hang `dkim status` or the rotation check.
    let lookup = tokio::time::timeout(Duration::from_secs(5), resolver.txt_lookup(name.as_str())).await;
    let Ok(Ok(lookup)) = lookup else { return false };
    let want = p_value(record);
    lookup.answers().iter().any(|r| match &r.data {
        RData::TXT(t) => {
            let text: String = t.txt_data.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
            want.is_some() && p_value(&text) == want
        }
        _ => false,
    })
}

fn p_value(record: &str) -> Option<String> {
    record.split(';').map(str::trim).find_map(|t| t.strip_prefix("p=")).map(|p| p.chars().filter(|c| !c.is_whitespace()).collect())
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One pass over every domain's keys; true if anything changed.
pub async fn step(signer: &Signer, resolver: &TokioResolver, overlap: Duration) -> anyhow::Result<bool> {
    let mut changed = false;
    for d in signer.domains.iter().filter(|d| d.dkim.sign) {
        let name = d.name.as_str();
        let mut keys = store::list(&signer.data_dir, name)?;
        let mut dirty = false;
        let t = now();
        for i in 0..keys.len() {
            if keys[i].state != KeyState::Pending {
                continue;
            }
            let key = store::load_key(&signer.data_dir, name, &keys[i].selector)?;
            if !dns_matches(resolver, name, &keys[i].selector, &key.dns_record()).await {
                continue;
            }
            // The new key takes over from the active key of its algorithm.
            let algorithm = keys[i].algorithm.clone();
            for old in keys.iter_mut().filter(|k| k.state == KeyState::Active && k.algorithm == algorithm) {
                old.state = KeyState::Retiring;
                old.retiring_since = Some(t);
                tracing::warn!(
                    domain = name, selector = %old.selector, overlap_days = overlap.as_secs() / 86400,
                    "DKIM key retiring: keep its DNS record published until the overlap ends"
                );
            }
            let new: &mut KeyInfo = &mut keys[i];
            new.state = KeyState::Active;
            new.activated = Some(t);
            tracing::info!(domain = name, selector = %new.selector, "DKIM key active: its DNS record matches; signing with it now");
            dirty = true;
        }
        for k in keys.iter_mut().filter(|k| k.state == KeyState::Retiring) {
            if t.saturating_sub(k.retiring_since.unwrap_or(t)) >= overlap.as_secs() {
                k.state = KeyState::Retired;
                tracing::warn!(domain = name, selector = %k.selector, "DKIM key retired: remove {}._domainkey.{name} from DNS", k.selector);
                dirty = true;
            }
        }
        if dirty {
            store::save(&signer.data_dir, name, keys)?;
            changed = true;
        }
    }
    if changed {
        signer.reload()?;
    }
    Ok(changed)
}

/// Checks pending keys every `interval`.
pub fn watch(signer: Arc<Signer>, resolver: TokioResolver, interval: Duration, overlap: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            if let Err(e) = step(&signer, &resolver, overlap).await {
                tracing::error!(error = %format!("{e:#}"), "DKIM rotation check failed");
            }
        }
    });
}
