//! `mailgate suppression list/add/remove`: the suppression list of a
//! running server, through its admin API (`/api/v1/suppression`), so the
//! server's copy changes at once.
//!
//! May import: `config`, `cli::api`.

use anyhow::bail;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum SuppressionAction {
    /// Every entry in force (or one sending domain's): domain, address,
    /// source, category, created, expires, reason.
    List {
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
        /// Print `{"entries": [...]}`.
        #[arg(long)]
        json: bool,
    },
    /// Put ADDRESS on the suppression list of DOMAIN (a sending domain).
    Add {
        address: String,
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Seconds until the entry expires (default: never).
        #[arg(long, value_name = "SECONDS")]
        expires_in: Option<u64>,
    },
    /// Take ADDRESS off DOMAIN's list, or off every list.
    Remove {
        address: String,
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
    },
}

/// Percent-encodes a query value (an address's `+` is not a space).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn when(v: &Value) -> String {
    v.as_u64().map_or_else(|| "never".to_string(), crate::suppression::date)
}

pub fn run(config: &Config, token_file: Option<&std::path::Path>, action: SuppressionAction) -> anyhow::Result<()> {
    let client = super::api::Client::new(config, token_file)?;
    match action {
        SuppressionAction::List { domain, json } => {
            let path = match domain {
                Some(d) => format!("/suppression?domain={}", enc(&d)),
                None => "/suppression".to_string(),
            };
            let doc = client.call("GET", &path, None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(());
            }
            let entries = doc["entries"].as_array().cloned().unwrap_or_default();
            for e in &entries {
                println!(
                    "{}\t{}\t{}\t{}\tadded {}\texpires {}\t{}",
                    e["domain"].as_str().unwrap_or(""),
                    e["address"].as_str().unwrap_or(""),
                    e["source"].as_str().unwrap_or(""),
                    e["category"].as_str().unwrap_or(""),
                    when(&e["created"]),
                    when(&e["expires"]),
                    e["reason"].as_str().unwrap_or(""),
                );
            }
            println!("{} entr{}", entries.len(), if entries.len() == 1 { "y" } else { "ies" });
        }
        SuppressionAction::Add { address, domain, reason, expires_in } => {
            let body = json!({ "address": address, "domain": domain, "reason": reason, "expires_in": expires_in });
            let e = client.call("POST", "/suppression", Some(body))?;
            println!(
                "suppressed {} for {} (expires {})",
                e["address"].as_str().unwrap_or(""),
                e["domain"].as_str().unwrap_or(""),
                when(&e["expires"])
            );
        }
        SuppressionAction::Remove { address, domain } => {
            let mut path = format!("/suppression?address={}", enc(&address));
            if let Some(d) = &domain {
                path.push_str(&format!("&domain={}", enc(d)));
            }
            let doc = client.call("DELETE", &path, None)?;
            let n = doc["removed"].as_u64().unwrap_or(0);
            if n == 0 {
                bail!("{address} is not on the suppression list");
            }
            println!("removed {address} from {n} list(s)");
        }
    }
    Ok(())
}
