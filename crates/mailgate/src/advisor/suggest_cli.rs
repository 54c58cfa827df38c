//! `mailgate spf suggest`: opens the report store of the config's
//! `data_dir` directly (no server needed, as `reports import`), resolves
//! through `[dns]`, and prints the suggestion as text or JSON.
//!
//! May import: `config`, `store`, `server::open_store`, `dns`, `advisor`.

use anyhow::Context;

use crate::cli::SpfAction;
use crate::config::Config;

/// A current-thread runtime for one command's lookups.
pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime for DNS lookups")
}

/// The domain argument as a name, lower case, without the final dot.
pub(super) fn domain_arg(domain: &str) -> anyhow::Result<String> {
    let d = mailgate_core::Domain::parse(domain.trim_end_matches('.'), true).map_err(|e| anyhow::anyhow!("{domain:?}: {e}"))?;
    Ok(d.as_str().to_ascii_lowercase())
}

pub fn spf(config: &Config, action: SpfAction) -> anyhow::Result<()> {
    match action {
        SpfAction::Suggest { domain, days, json } => {
            let domain = domain_arg(&domain)?;
            let store = crate::server::open_store(config)?;
            let rt = runtime()?;
            let resolver = crate::dns::resolver(config.nameservers.as_deref())?;
            let s = rt.block_on(async {
                let ev = super::suggest::evidence(store, &domain, days).await?;
                anyhow::Ok(super::suggest::suggest(config, &resolver, &domain, days, &ev).await)
            })?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                print!("{}", super::suggest::render_text(&s));
            }
            Ok(())
        }
    }
}
