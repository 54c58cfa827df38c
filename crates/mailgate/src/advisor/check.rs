//! `mailgate check DOMAIN`: runs every area (MX, SPF, DKIM, DMARC,
//! MTA-STS, TLS-RPT, BIMI, DANE) against the domain's published records and
//! prints each finding, ok ones too, as text or one JSON document. The
//! exit status is the worst severity: 0 ok, 1 warnings, 2 errors, and 3
//! when the check could not run at all (bad configuration or domain).
//! May import: `config`, `dns`, `outbound::tls`, `outbound::dane`, `sign::store`, `advisor`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::Args;
use hickory_resolver::TokioResolver;
use serde_json::json;

use super::{Finding, Severity, bimi, dane, dkim, dmarc, mtasts, mx, spf, tlsrpt};
use crate::config::Config;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The domain whose records to check.
    pub domain: String,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// DNS server to ask instead of `[dns].nameservers` (and the system's).
    #[arg(long, value_name = "HOST:PORT")]
    pub nameserver: Option<SocketAddr>,
    /// Private and loopback addresses are fine (internal domains, tests).
    #[arg(long)]
    pub allow_private: bool,
    /// The certificate to install next (PEM): whether its key is already
    /// in our MX host's TLSA records (`dane-next-ready`) or not yet
    /// (`dane-next-missing`, with the record to publish).
    #[arg(long, value_name = "FILE")]
    pub next_cert: Option<std::path::PathBuf>,
}

/// Exit status when the check could not run.
const CANNOT_CHECK: u8 = 3;

/// Everything found, as the JSON document is shaped.
pub struct Report {
    pub domain: String,
    pub findings: Vec<Finding>,
    pub spf: spf::SpfReport,
    pub dmarc: dmarc::DmarcReport,
}

impl Report {
    pub fn worst(&self) -> Severity {
        self.findings.iter().map(|f| f.severity).max().unwrap_or(Severity::Ok)
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "domain": self.domain,
            "findings": self.findings,
            "spf": self.spf,
            "dmarc": self.dmarc,
        })
    }
}

/// The entry point: prints the report, returns the exit status.
pub fn main(config_path: Option<&Path>, args: &CheckArgs) -> u8 {
    match run(config_path, args) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", text(&report));
            }
            match report.worst() {
                Severity::Ok => 0,
                Severity::Warning => 1,
                Severity::Error => 2,
            }
        }
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("mailgate: check: {}", chain.join(": "));
            CANNOT_CHECK
        }
    }
}

fn run(config_path: Option<&Path>, args: &CheckArgs) -> anyhow::Result<Report> {
    let config = Config::load(config_path)?;
    let domain = args.domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let parsed = mailgate_core::Domain::parse(&domain, true).map_err(|e| anyhow::anyhow!("{:?} is not a domain name: {e}", args.domain))?;
    // Internationalised names are checked in their A-label form, as DNS holds them.
    let domain = idna::domain_to_ascii(parsed.as_str()).map_err(|e| anyhow::anyhow!("{:?}: {e}", args.domain))?;
    let nameservers = args.nameserver.map(|ns| vec![ns]).or_else(|| config.nameservers.clone());
    let resolver = crate::dns::resolver_with(nameservers.as_deref(), crate::dns::Lookup::checks(&config))?;
    // An unreadable next certificate means the check cannot answer what was asked.
    let next = match &args.next_cert {
        Some(path) => Some(dane::Next {
            tlsa: crate::outbound::dane::tlsa_311_from_pem(path).map_err(|e| e.context("--next-cert"))?,
            cert: path.display().to_string(),
        }),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(report_with(&config, &resolver, &domain, args.allow_private, next))
}

/// Checks `domain` (lower-case A-labels) through `resolver`: what
/// `mailgate check` prints and the dashboard's advice page shows.
pub async fn report(config: &Config, resolver: &TokioResolver, domain: &str, allow_private: bool) -> anyhow::Result<Report> {
    report_with(config, resolver, domain, allow_private, None).await
}

/// [`report`], with the certificate to install next (`--next-cert`)
/// compared with our MX host's TLSA records.
async fn report_with(
    config: &Config,
    resolver: &TokioResolver,
    domain: &str,
    allow_private: bool,
    next: Option<dane::Next>,
) -> anyhow::Result<Report> {
    let trust = crate::outbound::tls::Trust::load(config.delivery.ca_file.as_deref())?;
    let fetch = mtasts::Fetch {
        tls: trust.verifying.clone(),
        port: config.delivery.mta_sts_port,
        timeout: Duration::from_secs(config.delivery.connect_timeout.max(1)),
    };
    let configured = configured_selectors(config, domain);
    let mx = mx::check(resolver, domain, allow_private).await;
    let (spf, dkim, dmarc, mta_sts, tls_rpt) = tokio::join!(
        spf::check(resolver, domain),
        dkim::check(resolver, domain, &configured),
        dmarc::check(resolver, domain),
        mtasts::check(resolver, domain, &mx.hosts, &fetch, allow_private),
        tlsrpt::check(resolver, domain),
    );
    let bimi = bimi::check(resolver, domain, dmarc.policy).await;
    let dane = dane::check(resolver, &mx.hosts, Some(&our_tlsa(config, next))).await;
    let mut findings = mx.findings;
    findings.extend(spf.findings.iter().cloned());
    findings.extend(dkim);
    findings.extend(dmarc.findings.iter().cloned());
    findings.extend(mta_sts);
    findings.extend(tls_rpt);
    findings.extend(bimi);
    findings.extend(dane);
    Ok(Report { domain: domain.to_string(), findings, spf, dmarc })
}

/// Our MX host (`[server] hostname`) and the TLSA record of the
/// certificate it serves after the next start or reload.
fn our_tlsa(config: &Config, next: Option<dane::Next>) -> dane::Ours {
    let cert = config.tls.as_ref().map(|t| t.cert.clone()).unwrap_or_else(|| config.data_dir.join("tls").join("cert.pem"));
    dane::Ours {
        host: config.hostname.trim_end_matches('.').to_ascii_lowercase(),
        tlsa: crate::outbound::dane::tlsa_311_from_pem(&cert).map_err(|e| format!("{e:#}")),
        cert: cert.display().to_string(),
        next,
    }
}

/// The selectors mailgate signs `domain` with, from `data_dir`'s key
/// store: none when the domain is not ours or has no keys yet.
fn configured_selectors(config: &Config, domain: &str) -> Vec<dkim::Configured> {
    use crate::sign::store::{self, KeyState};
    let ours = config.domains.iter().any(|d| d.name.as_str().eq_ignore_ascii_case(domain));
    if !ours {
        return Vec::new();
    }
    store::list(&config.data_dir, domain)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|k| match k.state {
            KeyState::Active => Some(dkim::Configured { selector: k.selector, active: true }),
            KeyState::Pending => Some(dkim::Configured { selector: k.selector, active: false }),
            // Retiring keys stay published but nothing new is signed with them.
            KeyState::Retiring | KeyState::Retired => None,
        })
        .collect()
}

/// The human form: findings grouped by area, each problem with its fix,
/// then the SPF include tree.
pub fn text(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "mailgate check {}", clean(&report.domain));
    let mut area = "";
    for f in &report.findings {
        if f.check != area {
            area = f.check;
            let _ = writeln!(out, "\n{}", area.to_uppercase());
        }
        let _ = writeln!(out, "  {:<8} {:<30} {}", f.severity.as_str(), f.code, clean(&f.message));
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "  {:<8} {:<30} fix: {}", "", "", clean(fix));
        }
    }
    if report.spf.tree.record.is_some() {
        let _ = writeln!(out, "\nSPF TREE ({} DNS lookups, {} void)", report.spf.lookups, report.spf.void_lookups);
        tree(&mut out, &report.spf.tree, 1);
    }
    let count = |s: Severity| report.findings.iter().filter(|f| f.severity == s).count();
    let _ = writeln!(out, "\n{} ok, {} warning(s), {} error(s)", count(Severity::Ok), count(Severity::Warning), count(Severity::Error));
    out
}

/// Records come from DNS: their control characters (a terminal escape
/// sequence, say) are shown escaped, never sent to the terminal.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

fn tree(out: &mut String, node: &spf::Node, depth: usize) {
    use std::fmt::Write;
    let prefix = if node.via == "record" { String::new() } else { format!("{}:", node.via) };
    let note = node.error.as_deref().map(|e| format!(" [{e}]")).unwrap_or_default();
    let _ = writeln!(out, "{}{prefix}{} ({} lookups){}", "  ".repeat(depth), clean(&node.domain), node.total_lookups, clean(&note));
    for c in &node.children {
        tree(out, c, depth + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\n");
    }
}
