//! Key rotation without a window of unsigned or unverifiable mail:
//! a pending key becomes active only once DNS serves its record; the key it
//! replaces stops signing but stays "retiring" for the overlap, so mail
//! already signed with it still verifies; then the operator is reminded to
//! remove its record.
//!
//! In a cluster the check runs on one node at a time, and [`follow`] makes
//! every node pick up key changes made on any node.
//!
//! May import: `sign`, hickory.

use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

use super::Signer;
use super::store::{KeyInfo, KeyState};

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

/// On a blocking thread: the key store's `Client` (PostgreSQL) must not
/// run on the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| anyhow::anyhow!("key store task: {e}"))?
}

/// One pass over every domain's keys; true if anything changed. DNS is
/// asked outside the domain's lock; the change is made under it, on the
/// list as it is then (another node may have got there first).
pub async fn step(signer: &Arc<Signer>, resolver: &TokioResolver, overlap: Duration) -> anyhow::Result<bool> {
    let mut changed = false;
    for d in signer.domains.iter().filter(|d| d.dkim.sign) {
        let name = d.name.to_string();
        let store = signer.store.clone();
        let n = name.clone();
        let keys = blocking(move || store.snapshot(&n)).await?;
        let mut published = Vec::new();
        for (info, pem) in keys.iter().filter(|(k, _)| k.state == KeyState::Pending) {
            let key = super::key::DkimKey::from_pem(pem).map_err(|e| anyhow::anyhow!("the key {} of {name}: {e}", info.selector))?;
            if dns_matches(resolver, &name, &info.selector, &key.dns_record()).await {
                published.push(info.selector.clone());
            }
        }
        let t = now();
        let overdue = |k: &KeyInfo| k.state == KeyState::Retiring && t.saturating_sub(k.retiring_since.unwrap_or(t)) >= overlap.as_secs();
        if published.is_empty() && !keys.iter().any(|(k, _)| overdue(k)) {
            continue;
        }
        let store = signer.store.clone();
        let overlap_s = overlap.as_secs();
        let dirty = blocking(move || store.update(&name, &mut |keys| apply(&name, keys, &published, t, overlap_s))).await?;
        changed |= dirty;
    }
    if changed {
        signer.reload_async().await?;
    }
    Ok(changed)
}

/// Activates the pending keys whose records DNS serves (`published`),
/// retiring the active key of the same algorithm, and retires keys past
/// the overlap. True if anything changed.
fn apply(name: &str, keys: &mut [KeyInfo], published: &[String], t: u64, overlap: u64) -> bool {
    let mut dirty = false;
    for i in 0..keys.len() {
        if keys[i].state != KeyState::Pending || !published.contains(&keys[i].selector) {
            continue;
        }
        // The new key takes over from the active key of its algorithm.
        let algorithm = keys[i].algorithm.clone();
        for old in keys.iter_mut().filter(|k| k.state == KeyState::Active && k.algorithm == algorithm) {
            old.state = KeyState::Retiring;
            old.retiring_since = Some(t);
            tracing::warn!(
                domain = name, selector = %old.selector, overlap_days = overlap / 86400,
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
        if t.saturating_sub(k.retiring_since.unwrap_or(t)) >= overlap {
            k.state = KeyState::Retired;
            tracing::warn!(domain = name, selector = %k.selector, "DKIM key retired: remove {}._domainkey.{name} from DNS", k.selector);
            dirty = true;
        }
    }
    dirty
}

/// Checks pending keys every `interval`, on one node of a cluster at a
/// time (the others skip their turn while one holds the rotation lock).
pub fn watch(signer: Arc<Signer>, resolver: TokioResolver, interval: Duration, overlap: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let store = signer.store.clone();
            match blocking(move || store.try_lead()).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!("another node is running the DKIM rotation check");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "cannot take the DKIM rotation lock; skipping this check");
                    continue;
                }
            }
            if let Err(e) = step(&signer, &resolver, overlap).await {
                tracing::error!(error = %format!("{e:#}"), "DKIM rotation check failed");
            }
            let store = signer.store.clone();
            let _ = tokio::task::spawn_blocking(move || store.release()).await;
        }
    });
}

/// Polls a shared key store every `interval` and reloads the signer when
/// any key changed on any node. While the store does not answer, the keys
/// in use stay (one warning, and one message when it answers again).
pub fn follow(signer: Arc<Signer>, interval: Duration) {
    tokio::spawn(async move {
        let mut seen: Option<i64> = None;
        let mut down = false;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let store = signer.store.clone();
            let generation = match blocking(move || store.generation()).await {
                Ok(Some(g)) => g,
                Ok(None) => return,
                Err(e) => {
                    if !down {
                        tracing::warn!(error = %format!("{e:#}"), "cluster store unreachable: signing with the DKIM keys loaded last");
                        down = true;
                    }
                    continue;
                }
            };
            if down {
                tracing::info!("cluster store reachable again: following its DKIM keys");
            }
            if seen == Some(generation) && !down {
                continue;
            }
            match signer.reload_async().await {
                Ok(()) => {
                    if seen.is_some() {
                        tracing::info!(generation, "DKIM keys changed in the cluster store; reloaded");
                    }
                    seen = Some(generation);
                    down = false;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "DKIM key reload from the cluster store failed; keeping the keys in use")
                }
            }
        }
    });
}
