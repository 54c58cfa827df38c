//! Command-line interface: argument definitions and the subcommands that
//! talk to a running server through its admin API.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::Config;

#[derive(Parser, Debug)]
#[command(name = "mailgate", version, about = "A mail transfer agent for the organisation's edge")]
pub struct Cli {
    /// Configuration file (TOML). Without it, built-in defaults apply.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: SMTP listeners, spool and admin API.
    Serve,
    /// Inspect and change the queue of a running server.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Manage SMTP AUTH users.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserAction {
    /// Read one password from standard input and print its argon2id hash
    /// for `[[user]].password`. A trailing newline is ignored.
    Hash,
}

pub fn user(action: UserAction) -> anyhow::Result<()> {
    match action {
        UserAction::Hash => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("cannot read the password from standard input")?;
            let password = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
            if password.is_empty() {
                bail!("empty password");
            }
            println!("{}", crate::checks::auth::hash_password(password)?);
            Ok(())
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum QueueAction {
    /// List queued messages with per-recipient status.
    List {
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Show one message: envelope, recipients and headers.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a message without delivering it.
    Delete { id: String },
    /// Try a message's pending recipients now, ignoring the backoff.
    Retry { id: String },
}

fn api_base(config: &Config) -> anyhow::Result<String> {
    let bind = config.http_bind.context("[http].bind is not set; the admin API is disabled")?;
    let host = if bind.ip().is_unspecified() { "127.0.0.1".to_string() } else { bind.ip().to_string() };
    let host = if bind.is_ipv6() && !bind.ip().is_unspecified() { format!("[{host}]") } else { host };
    Ok(format!("http://{host}:{}/api/v1", bind.port()))
}

fn call(method: &str, url: &str) -> anyhow::Result<Value> {
    let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(30)).build();
    match agent.request(method, url).call() {
        Ok(resp) => resp.into_json().context("the server sent invalid JSON"),
        Err(ureq::Error::Status(code, resp)) => {
            let body: Value = resp.into_json().unwrap_or(Value::Null);
            let why = body["error"].as_str().unwrap_or("request failed").to_string();
            bail!("{why} (HTTP {code})")
        }
        Err(e) => bail!("cannot reach the admin API at {url}: {e}; is `mailgate serve` running?"),
    }
}

pub fn queue(config: &Config, action: QueueAction) -> anyhow::Result<()> {
    let base = api_base(config)?;
    match action {
        QueueAction::List { json } => {
            let v = call("GET", &format!("{base}/queue"))?;
            if json {
                println!("{v}");
            } else {
                print_table(&v);
            }
        }
        QueueAction::Show { id, json } => {
            let v = call("GET", &format!("{base}/queue/{id}"))?;
            if json {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        QueueAction::Retry { id } => {
            call("POST", &format!("{base}/queue/{id}/retry"))?;
            println!("retrying {id}");
        }
        QueueAction::Delete { id } => {
            call("DELETE", &format!("{base}/queue/{id}"))?;
            println!("deleted {id}");
        }
    }
    Ok(())
}

fn print_table(v: &Value) {
    let empty = Vec::new();
    let messages = v["messages"].as_array().unwrap_or(&empty);
    println!("{:<20} {:>8} {:>9}  {:<30} RECIPIENTS", "ID", "AGE", "SIZE", "SENDER");
    for m in messages {
        let sender = m["sender"].as_str().filter(|s| !s.is_empty()).unwrap_or("<>");
        let rcpts: Vec<String> = m["recipients"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|r| {
                let mut s = format!("{} ({})", r["address"].as_str().unwrap_or("?"), r["status"].as_str().unwrap_or("?"));
                if let Some(reply) = r["last_reply"].as_str() {
                    s.push_str(&format!(" [{reply}]"));
                }
                s
            })
            .collect();
        println!(
            "{:<20} {:>7}s {:>9}  {:<30} {}",
            m["id"].as_str().unwrap_or("?"),
            m["age_s"].as_u64().unwrap_or(0),
            m["size"].as_u64().unwrap_or(0),
            sender,
            rcpts.join(", ")
        );
    }
    println!("{} message(s)", messages.len());
}
