//! `mailgate reports send --now` and `mailgate reports preview DOMAIN`:
//! ask the running server to send the reports due up to now, or to show
//! what it would send, through the admin API.
//!
//! May import: `cli::api`.

use anyhow::Context;
use serde_json::{Value, json};

use super::api::Client;

pub fn send(client: &Client, domain: Option<&str>, as_json: bool) -> anyhow::Result<()> {
    let body = json!({ "domain": domain });
    let v = client.call("POST", "/reports/send", Some(body))?;
    if as_json {
        println!("{v}");
        return Ok(());
    }
    let sent = v["sent"].as_array().context("the server's answer has no \"sent\" array")?;
    println!("{:<8} {:<30} {:>8}  {:<36} DESTINATIONS", "KIND", "DOMAIN", "COUNT", "REPORT ID");
    for s in sent {
        let dest: Vec<&str> = s["destinations"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        println!(
            "{:<8} {:<30} {:>8}  {:<36} {}",
            s["kind"].as_str().unwrap_or("?"),
            s["domain"].as_str().unwrap_or("?"),
            s["messages"].as_u64().unwrap_or(0),
            s["report_id"].as_str().unwrap_or("?"),
            if dest.is_empty() { "(none: no destination takes it)".to_string() } else { dest.join(", ") }
        );
    }
    println!("{} report(s)", sent.len());
    Ok(())
}

pub fn preview(client: &Client, domain: &str) -> anyhow::Result<()> {
    let v = client.call("GET", &format!("/reports/preview/{domain}"), None)?;
    if let Some(xml) = v["dmarc"].as_str() {
        print!("{xml}");
    }
    if let Some(tls) = v["tlsrpt"].as_str() {
        println!("{tls}");
    }
    Ok(())
}
