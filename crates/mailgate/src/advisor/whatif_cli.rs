//! `mailgate dmarc whatif`: opens the report store of the config's
//! `data_dir` directly (no server needed), resolves through `[dns]`, and
//! prints the what-if as text or JSON.
//!
//! May import: `config`, `store`, `server::open_store`, `dns`, `advisor`.

use crate::cli::DmarcAction;
use crate::config::Config;

use super::suggest_cli::{domain_arg, runtime};
use super::whatif::Policy;

pub fn dmarc(config: &Config, action: DmarcAction) -> anyhow::Result<()> {
    match action {
        DmarcAction::Whatif { domain, policy, days, json } => {
            let policy = Policy::parse(&policy).ok_or_else(|| anyhow::anyhow!("--policy {policy:?}: expected quarantine or reject"))?;
            let domain = domain_arg(&domain)?;
            let store = crate::server::open_store(config)?;
            let rt = runtime()?;
            let resolver = crate::dns::resolver(config.nameservers.as_deref())?;
            let w = rt.block_on(async {
                let ev = super::suggest::evidence(store, &domain, days).await?;
                anyhow::Ok(super::whatif::whatif(config, &resolver, &domain, policy, days, &ev).await)
            })?;
            if json {
                println!("{}", serde_json::to_string(&w)?);
            } else {
                print!("{}", super::whatif::render_text(&w));
            }
            Ok(())
        }
    }
}
