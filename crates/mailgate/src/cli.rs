//! Command-line interface: argument definitions and the subcommands that
//! talk to a running server through its admin API.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::Config;

mod api;
mod bounce;
mod check;
mod reports_ingest;
mod reports_send;
mod suppression;
mod verify;
pub use bounce::classify as bounce_classify;
pub use check::check as config_check;
pub use suppression::{SuppressionAction, run as suppression};
pub use verify::{VerifyArgs, verify};

#[derive(Parser, Debug)]
#[command(name = "mailgate", version, about = "A mail transfer agent for the organisation's edge")]
pub struct Cli {
    /// Configuration file (TOML). Without it, built-in defaults apply.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The admin API token, for `queue` commands (default: the server's
    /// `DATA_DIR/admin.token`).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
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
    /// Manage DKIM signing keys.
    Dkim {
        #[command(subcommand)]
        action: DkimAction,
    },
    /// Print every DNS record to publish for the configured domains.
    Records {
        /// The certificate to install next (PEM): its DANE TLSA `3 1 1`
        /// record is printed beside the current one, to publish two TTLs
        /// before the switch.
        #[arg(long, value_name = "FILE")]
        next_cert: Option<PathBuf>,
    },
    /// Check a domain's published mail records (MX, SPF, DKIM, DMARC,
    /// MTA-STS, TLS-RPT, BIMI) and print a verdict and a fix for each
    /// finding. Exit status: 0 ok, 1 warnings, 2 errors, 3 could not check.
    Check(crate::advisor::check::CheckArgs),
    /// Check a sender (SPF) or a whole message (SPF, DKIM, ARC, DMARC,
    /// look-alike) exactly as the gateway does, and print the action.
    Verify(VerifyArgs),
    /// Manage SMTP AUTH users.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Work with the configuration file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// DMARC aggregate and TLS-RPT reports: send ours (through the running
    /// server), read the ones others send us (from the store directly).
    Reports {
        #[command(subcommand)]
        action: ReportsAction,
    },
    /// Bounces: how a failure reply or a bounce message is classified.
    Bounce {
        #[command(subcommand)]
        action: BounceAction,
    },
    /// The suppression list of a running server: recipients that hard
    /// bounced or complained, per sending domain.
    Suppression {
        #[command(subcommand)]
        action: SuppressionAction,
    },
    /// SPF advice from the report store: a strict record learnt from traffic.
    Spf {
        #[command(subcommand)]
        action: SpfAction,
    },
    /// DMARC advice from the report store: what a stricter policy would do.
    Dmarc {
        #[command(subcommand)]
        action: DmarcAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum BounceAction {
    /// Classify failure replies (`--reply`) and bounce messages (FILE: a
    /// DSN or a non-standard bounce) as hard or soft and by category, with
    /// the rule that decided. Needs no configuration.
    Classify {
        /// A reply as the remote server sent it, e.g. "550 5.1.1 user unknown".
        #[arg(long, value_name = "TEXT")]
        reply: Vec<String>,
        #[arg(value_name = "FILE")]
        files: Vec<std::path::PathBuf>,
        /// Print `{"results": [...]}`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SpfAction {
    /// Propose a strict `-all` record covering the domain's legitimate
    /// senders (our egress, sources passing aligned DKIM), within 10 DNS
    /// lookups, with the evidence for each source and the sources it would
    /// fail. Reads `DATA_DIR/reports.db`; no server needed.
    Suggest {
        domain: String,
        /// Days of traffic to learn from.
        #[arg(long, default_value_t = 30)]
        days: u64,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DmarcAction {
    /// Which senders the policy would have quarantined or rejected over the
    /// last N days, legitimate or unauthenticated, and the staged plan
    /// p=none → quarantine → reject. Reads `DATA_DIR/reports.db`.
    Whatif {
        domain: String,
        /// `quarantine` or `reject`.
        #[arg(long)]
        policy: String,
        #[arg(long, default_value_t = 30)]
        days: u64,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReportsAction {
    /// Report everything not yet reported, up to now, at once, and print
    /// what was sent.
    Send {
        /// Required: now, instead of at the end of the period.
        #[arg(long, required = true)]
        now: bool,
        /// Only this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Print `{"sent": [...]}`.
        #[arg(long)]
        json: bool,
    },
    /// Print the DMARC report XML (and TLS-RPT JSON) DOMAIN would get now;
    /// nothing is sent or marked.
    Preview { domain: String },
    /// Read report files (XML, .xml.gz, .zip, .eml, TLS-RPT JSON plain or
    /// gzipped) into the report store, with or without a running server.
    /// Exits non-zero when any file was rejected.
    Import {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Stored reports, newest first.
    List {
        /// Only reports about this policy domain.
        #[arg(long)]
        domain: Option<String>,
        /// `dmarc` or `tlsrpt`.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One stored report with its rows (DMARC) or policies (TLS-RPT).
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

/// `mailgate check`: loads the configuration itself, so that every
/// failure maps to its own exit status.
pub fn check_domain(config: Option<&std::path::Path>, args: &crate::advisor::check::CheckArgs) -> std::process::ExitCode {
    std::process::ExitCode::from(crate::advisor::check::main(config, args))
}

pub fn reports(config: &Config, token_file: Option<&std::path::Path>, action: ReportsAction) -> anyhow::Result<()> {
    match action {
        ReportsAction::Send { now: _, domain, json } => reports_send::send(&api::Client::new(config, token_file)?, domain.as_deref(), json),
        ReportsAction::Preview { domain } => reports_send::preview(&api::Client::new(config, token_file)?, &domain),
        ReportsAction::Import { files } => reports_ingest::import(config, &files),
        ReportsAction::List { domain, kind, limit, json } => reports_ingest::list(config, domain, kind.as_deref(), limit, json),
        ReportsAction::Show { id, json } => reports_ingest::show(config, id, json),
    }
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Validate the file given with --config: print every error (and exit
    /// non-zero) and warn about risky choices.
    Check,
}

#[derive(Subcommand, Debug)]
pub enum DkimAction {
    /// Create a signing key (works before the first `serve`) and print the
    /// DNS record to publish. A domain's first keys are active at once.
    Keygen {
        #[arg(long)]
        domain: String,
        /// `ed25519` or `rsa2048`; both when absent.
        #[arg(long)]
        algorithm: Option<String>,
        /// Default: dated, e.g. mg202611e / mg202611r.
        #[arg(long)]
        selector: Option<String>,
    },
    /// Create the next key as pending. mailgate switches signing to it once
    /// DNS serves its record, and keeps the old one published for the
    /// overlap.
    Rotate {
        #[arg(long)]
        domain: String,
        /// `ed25519` or `rsa2048`; all the domain's algorithms when absent.
        #[arg(long)]
        algorithm: Option<String>,
    },
    /// Keys per domain: selector, algorithm, state, whether DNS serves the
    /// key, age, and what to do next.
    Status {
        #[arg(long)]
        json: bool,
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
    /// List queued messages with per-recipient status, oldest first,
    /// printed a page at a time as they arrive.
    List {
        /// Print one JSON document `{"messages": [...]}`.
        #[arg(long)]
        json: bool,
    },
    /// Show one message: envelope, recipients and headers.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a message without delivering it, or every message matching
    /// --sender and/or --recipient-domain.
    #[command(group = clap::ArgGroup::new("which").required(true).multiple(true).args(["id", "sender", "recipient_domain"]))]
    Delete {
        #[arg(conflicts_with_all = ["sender", "recipient_domain"])]
        id: Option<String>,
        /// Every message from this envelope sender (`<>` for bounces).
        #[arg(long, value_name = "ADDR")]
        sender: Option<String>,
        /// Every message with a pending recipient at this domain (the whole
        /// message goes, including its other recipients).
        #[arg(long, value_name = "DOMAIN")]
        recipient_domain: Option<String>,
    },
    /// Try a message's pending recipients now, ignoring the backoff.
    Retry { id: String },
}

/// Messages per request while listing: the API's largest page.
const LIST_PAGE: usize = 1000;

pub fn queue(config: &Config, token_file: Option<&std::path::Path>, action: QueueAction) -> anyhow::Result<()> {
    let client = api::Client::new(config, token_file)?;
    match action {
        QueueAction::List { json } => match list(&client, json) {
            // `queue list | head`: the reader has seen enough.
            Err(e) if broken_pipe(&e) => {}
            other => other?,
        },
        QueueAction::Show { id, json } => {
            let v = client.call("GET", &format!("/queue/{id}"), None)?;
            if json {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        QueueAction::Retry { id } => {
            client.call("POST", &format!("/queue/{id}/retry"), None)?;
            println!("retrying {id}");
        }
        QueueAction::Delete { id: Some(id), .. } => {
            client.call("DELETE", &format!("/queue/{id}"), None)?;
            println!("deleted {id}");
        }
        QueueAction::Delete { id: None, sender, recipient_domain } => {
            let filter = serde_json::json!({ "sender": sender, "recipient_domain": recipient_domain });
            let v = client.call("POST", "/queue/delete", Some(filter))?;
            println!("deleted {} message(s)", v["deleted"].as_u64().unwrap_or(0));
        }
    }
    Ok(())
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    let kind = e
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind)
        .or_else(|| e.downcast_ref::<serde_json::Error>().and_then(serde_json::Error::io_error_kind));
    kind == Some(std::io::ErrorKind::BrokenPipe)
}

/// Fetches page after page and prints each as it arrives; `--json` still
/// writes one document, `{"messages": [...]}`, a page at a time.
fn list(client: &api::Client, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after: Option<String> = None;
    let mut count: u64 = 0;
    if json {
        out.write_all(b"{\"messages\":[")?;
    } else {
        writeln!(out, "{:<20} {:>8} {:>9}  {:<30} RECIPIENTS", "ID", "AGE", "SIZE", "SENDER")?;
    }
    loop {
        let path = match &after {
            Some(id) => format!("/queue?limit={LIST_PAGE}&after={id}"),
            None => format!("/queue?limit={LIST_PAGE}"),
        };
        let page = client.call("GET", &path, None)?;
        let messages = page["messages"].as_array().context("the server's page has no \"messages\" array")?;
        for m in messages {
            if json {
                if count > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut out, m)?;
            } else {
                print_row(&mut out, m)?;
            }
            count += 1;
        }
        out.flush()?;
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    if json {
        out.write_all(b"]}\n")?;
    } else {
        writeln!(out, "{count} message(s)")?;
    }
    out.flush()?;
    Ok(())
}

fn print_row(out: &mut impl std::io::Write, m: &Value) -> std::io::Result<()> {
    let empty = Vec::new();
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
    writeln!(
        out,
        "{:<20} {:>7}s {:>9}  {:<30} {}",
        m["id"].as_str().unwrap_or("?"),
        m["age_s"].as_u64().unwrap_or(0),
        m["size"].as_u64().unwrap_or(0),
        sender,
        rcpts.join(", ")
    )
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn configured<'a>(config: &'a Config, domain: &str) -> anyhow::Result<&'a crate::config::DomainConfig> {
    let d = mailgate_core::Domain::parse(domain, true).map_err(|e| anyhow::anyhow!("{domain:?}: {e}"))?;
    config.domain(&d).ok_or_else(|| anyhow::anyhow!("{d} is not a [[domain]] in the configuration"))
}

/// A TXT record's value as zone-file strings of at most 255 octets.
fn txt(value: &str) -> String {
    value.as_bytes().chunks(255).map(|c| format!("\"{}\"", String::from_utf8_lossy(c))).collect::<Vec<_>>().join(" ")
}

pub fn dkim(config: &Config, action: DkimAction) -> anyhow::Result<()> {
    use crate::sign::{backend, parse_algorithm, store};
    // Files in data_dir, or the cluster store shared by every node.
    let keys = backend::open(config)?;
    match action {
        DkimAction::Keygen { domain, algorithm, selector } => {
            let d = configured(config, &domain)?;
            let algorithms = match algorithm {
                Some(a) => vec![parse_algorithm(&a).ok_or_else(|| anyhow::anyhow!("--algorithm {a:?}: use ed25519 or rsa2048"))?],
                None => d.dkim.algorithms.clone(),
            };
            if selector.is_some() && algorithms.len() > 1 {
                bail!("--selector needs --algorithm: one selector names one key");
            }
            for alg in algorithms {
                let (info, record) =
                    backend::create(keys.as_ref(), d.name.as_str(), alg, selector.as_deref(), store::KeyState::Active, now())?;
                println!("{}._domainkey.{}. IN TXT {}", info.selector, d.name, txt(&record));
            }
        }
        DkimAction::Rotate { domain, algorithm } => {
            let d = configured(config, &domain)?;
            let algorithms = match algorithm {
                Some(a) => vec![parse_algorithm(&a).ok_or_else(|| anyhow::anyhow!("--algorithm {a:?}: use ed25519 or rsa2048"))?],
                None => d.dkim.algorithms.clone(),
            };
            let existing = keys.list(d.name.as_str())?;
            println!("; publish these records; mailgate switches to the new keys once DNS serves them");
            for alg in algorithms {
                let name = store::algorithm_name(alg);
                if existing.iter().any(|k| k.state == store::KeyState::Pending && k.algorithm == name) {
                    bail!("{} already has a pending {name} key; publish it or wait", d.name);
                }
                let (info, record) = backend::create(keys.as_ref(), d.name.as_str(), alg, None, store::KeyState::Pending, now())?;
                println!("{}._domainkey.{}. IN TXT {}", info.selector, d.name, txt(&record));
            }
        }
        DkimAction::Status { json } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let resolver = crate::dns::resolver(config.nameservers.as_deref())?;
            let overlap = config.dkim.rotation_overlap;
            let mut all = Vec::new();
            for d in &config.domains {
                for k in keys.list(d.name.as_str())? {
                    let record = keys.load_key(d.name.as_str(), &k.selector)?.dns_record();
                    let dns = runtime.block_on(crate::sign::rotation::dns_matches(&resolver, d.name.as_str(), &k.selector, &record));
                    let advice = match k.state {
                        store::KeyState::Pending if !dns => format!("publish {}._domainkey.{}", k.selector, d.name),
                        store::KeyState::Pending => "DNS matches; mailgate activates it at its next check".to_string(),
                        store::KeyState::Active if !dns => "DNS does not serve this key: receivers cannot verify it".to_string(),
                        store::KeyState::Active => String::new(),
                        store::KeyState::Retiring => {
                            let left = (k.retiring_since.unwrap_or(0) + overlap).saturating_sub(now());
                            format!("keep the record {} more day(s)", left.div_ceil(86400))
                        }
                        store::KeyState::Retired if dns => format!("remove {}._domainkey.{} from DNS", k.selector, d.name),
                        store::KeyState::Retired => String::new(),
                    };
                    all.push(serde_json::json!({
                        "domain": d.name.as_str(),
                        "selector": k.selector,
                        "algorithm": k.algorithm,
                        "state": k.state,
                        "dns_matches": dns,
                        "age_s": now().saturating_sub(k.created),
                        "advice": advice,
                    }));
                }
            }
            if json {
                println!("{}", serde_json::json!({ "keys": all }));
            } else {
                println!("{:<24} {:<14} {:<9} {:<9} {:<4} {:>5}  NEXT", "DOMAIN", "SELECTOR", "ALGO", "STATE", "DNS", "AGE");
                for k in &all {
                    println!(
                        "{:<24} {:<14} {:<9} {:<9} {:<4} {:>4}d  {}",
                        k["domain"].as_str().unwrap_or(""),
                        k["selector"].as_str().unwrap_or(""),
                        k["algorithm"].as_str().unwrap_or(""),
                        k["state"].as_str().unwrap_or(""),
                        if k["dns_matches"].as_bool() == Some(true) { "ok" } else { "no" },
                        k["age_s"].as_u64().unwrap_or(0) / 86400,
                        k["advice"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(())
}

/// Every record the operator must publish, in zone-file syntax.
pub fn records(config: &Config, next_cert: Option<&std::path::Path>) -> anyhow::Result<()> {
    use crate::sign::{backend, store};
    // A next certificate that cannot be read is an error before anything
    // is printed, not a comment at the end of a zone file.
    let next = match next_cert {
        Some(path) => Some((path, crate::outbound::dane::tlsa_311_from_pem(path).context("--next-cert")?)),
        None => None,
    };
    let keys = backend::open(config)?;
    let mx = format!("{}.", config.hostname.trim_end_matches('.'));
    let mut spf = String::from("v=spf1");
    for ip in &config.public_addresses {
        spf.push_str(&match ip {
            std::net::IpAddr::V4(v4) => format!(" ip4:{v4}"),
            std::net::IpAddr::V6(v6) => format!(" ip6:{v6}"),
        });
    }
    if config.public_addresses.is_empty() {
        spf.push_str(" mx");
    }
    spf.push_str(" -all");
    println!("; DNS records for mailgate ({}), generated by `mailgate records`", config.hostname);
    println!("$ORIGIN .");
    for d in &config.domains {
        let name = d.name.as_str();
        println!();
        println!("; ---- {name} ----");
        println!("; MX: mail for {name} comes to this gateway");
        println!("{name}. 3600 IN MX 10 {mx}");
        if config.public_addresses.is_empty() {
            println!("; SPF: set [server].public_addresses to list this gateway's addresses instead of \"mx\"");
        } else {
            println!("; SPF: only this gateway sends mail for {name}");
        }
        println!("{name}. 3600 IN TXT {}", txt(&spf));
        // Retiring keys stay published during the overlap; retired ones go.
        for k in keys.list(name)?.into_iter().filter(|k| k.state != store::KeyState::Retired) {
            let key = keys.load_key(name, &k.selector)?;
            println!("; DKIM: {} key {} ({})", format!("{:?}", k.state).to_lowercase(), k.selector, k.algorithm);
            println!("{}._domainkey.{name}. 3600 IN TXT {}", k.selector, txt(&key.dns_record()));
        }
        println!("; DMARC: start at p=none and read the aggregate reports before tightening");
        println!("_dmarc.{name}. 3600 IN TXT {}", txt(&format!("v=DMARC1; p=none; rua=mailto:dmarc-reports@{name}")));
        let (y, m, day) = store::civil_date(now());
        println!("; MTA-STS: change the id whenever the policy file changes");
        println!("_mta-sts.{name}. 3600 IN TXT {}", txt(&format!("v=STSv1; id={y:04}{m:02}{day:02}01")));
        println!("; TLS-RPT: where senders report TLS problems");
        println!("_smtp._tls.{name}. 3600 IN TXT {}", txt(&format!("v=TLSRPTv1; rua=mailto:tls-reports@{name}")));
        println!("; The MTA-STS policy is not a DNS record: serve this file at");
        println!(";   https://mta-sts.{name}/.well-known/mta-sts.txt");
        println!(";   version: STSv1");
        println!(";   mode: testing");
        println!(";   mx: {}", config.hostname);
        println!(";   max_age: 86400");
    }
    print_tlsa(config, &mx, next);
    Ok(())
}

/// DANE (RFC 7672): the `3 1 1` TLSA record of our MX host, from the
/// `[tls]` certificate (or the one generated in DATA_DIR/tls), and with
/// `--next-cert` the next certificate's record for the rollover.
fn print_tlsa(config: &Config, mx: &str, next: Option<(&std::path::Path, String)>) {
    let cert = config.tls.as_ref().map(|t| t.cert.clone()).unwrap_or_else(|| config.data_dir.join("tls").join("cert.pem"));
    println!();
    println!("; ---- DANE for {mx} (only in a DNSSEC-signed zone) ----");
    let current = crate::outbound::dane::tlsa_311_from_pem(&cert);
    match &current {
        Ok(data) => {
            println!("; TLSA 3 1 1: the SHA-256 of the public key of {}", cert.display());
            println!("_25._tcp.{mx} 3600 IN TLSA {data}");
        }
        Err(e) => println!("; no TLSA record: {e:#} (start the server once to generate a certificate, or set [tls] cert)"),
    }
    match next {
        Some((path, data)) if current.as_ref().is_ok_and(|c| *c == data) => {
            println!("; The next certificate {} keeps the key: its TLSA record is the one above, nothing to change.", path.display());
        }
        Some((path, data)) => {
            println!("; Next certificate {}: publish its record beside the current one now, wait two TTLs", path.display());
            println!("; (2 x 3600 s here), then install the certificate and reload; remove the old record after the switch.");
            println!("_25._tcp.{mx} 3600 IN TLSA {data}");
        }
        None => {
            println!("; Key rollover: before a certificate change with a new key, publish the next key's");
            println!("; TLSA record beside this one and wait two TTLs; remove the old one after the switch");
            println!("; (`mailgate records --next-cert FILE` prints it).");
            println!("; A renewal that keeps the key needs no change (3 1 1 pins the key, not the certificate).");
        }
    }
}
