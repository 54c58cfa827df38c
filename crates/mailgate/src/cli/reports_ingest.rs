//! `mailgate reports import/list/show`: the reports other receivers sent us.
//!
//! These open the configured `data_dir/reports.db` directly rather than
//! going through the admin API: importing must work with no server running
//! (a fresh install, a restore, a batch of archived reports), SQLite in WAL
//! mode lets this process write while the server reads and writes, and
//! reading the store directly needs no token nor `[http] bind`. Run them as
//! the server's user so the files they create stay the server's.
//!
//! May import: `config`, `store`, `report::ingest`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::config::Config;
use crate::report::ingest::unpack::printable;
use crate::report::ingest::{Ingester, Outcome, Prepared, view};
use crate::store::{ReportKind, ReportQuery, Store};

fn open(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    crate::server::open_store(config)
}

pub fn import(config: &Config, files: &[PathBuf]) -> anyhow::Result<()> {
    let ingester = Ingester::new(open(config)?, &config.data_dir);
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let mut counts = Counts::default();
    // Parsed a file at a time, stored a batch at a time: one transaction
    // per batch, not per file.
    let mut batch: Vec<(String, Prepared)> = Vec::with_capacity(BATCH);
    for file in files {
        let name = printable(&file.display().to_string());
        let read = std::fs::File::open(file).and_then(|f| ingester.read(f));
        match read {
            Ok(bytes) => batch.push((name, ingester.prepare(&bytes, &file.display().to_string()))),
            Err(e) => {
                flush(&ingester, &mut batch, &mut out, &mut counts)?;
                counts.rejected += 1;
                writeln!(out, "rejected  {name}: cannot read it: {e}")?;
            }
        }
        if batch.len() >= BATCH {
            flush(&ingester, &mut batch, &mut out, &mut counts)?;
        }
    }
    flush(&ingester, &mut batch, &mut out, &mut counts)?;
    let Counts { stored, duplicates, rejected } = counts;
    writeln!(out, "{stored} stored, {duplicates} duplicate, {rejected} rejected")?;
    out.flush()?;
    if rejected > 0 {
        bail!("{rejected} of {} file(s) rejected", files.len());
    }
    Ok(())
}

/// Files per transaction.
const BATCH: usize = 256;

#[derive(Default)]
struct Counts {
    stored: usize,
    duplicates: usize,
    rejected: usize,
}

/// Stores the batch and prints one line per report or rejected file.
fn flush(ingester: &Ingester, batch: &mut Vec<(String, Prepared)>, out: &mut impl Write, counts: &mut Counts) -> anyhow::Result<()> {
    let (names, prepared): (Vec<String>, Vec<Prepared>) = batch.drain(..).unzip();
    let outcomes = ingester.store_all(prepared).context("cannot store the reports")?;
    for (name, outcome) in names.iter().zip(outcomes) {
        match outcome {
            Outcome::Stored { reports, problems } => {
                for r in reports {
                    let what = format!("{} {} {}", r.kind.as_str(), printable(&r.org_name), printable(&r.report_id));
                    match r.id {
                        Some(id) => {
                            counts.stored += 1;
                            writeln!(out, "stored    {name}: {what} (id {id})")?;
                        }
                        None => {
                            counts.duplicates += 1;
                            writeln!(out, "duplicate {name}: {what}")?;
                        }
                    }
                }
                for p in problems {
                    writeln!(out, "          {name}: skipped a part: {}", printable(&p))?;
                }
            }
            Outcome::Rejected { reason, kept } => {
                counts.rejected += 1;
                let kept = kept.map(|p| format!(" (kept as {})", p.display())).unwrap_or_default();
                writeln!(out, "rejected  {name}: {}{kept}", printable(&reason))?;
            }
        }
    }
    Ok(())
}

pub fn list(config: &Config, domain: Option<String>, kind: Option<&str>, limit: usize, json: bool) -> anyhow::Result<()> {
    let kind = match kind {
        None => None,
        Some("dmarc") => Some(ReportKind::Dmarc),
        Some("tlsrpt") => Some(ReportKind::Tlsrpt),
        Some(other) => bail!("--kind {other:?}: expected dmarc or tlsrpt"),
    };
    let store = open(config)?;
    let query = ReportQuery { domain: domain.map(|d| d.to_lowercase()), kind, limit: limit.max(1), before_id: None };
    let reports = store.list_reports(&query)?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    if json {
        let list: Vec<_> = reports.iter().map(view::summary_json).collect();
        writeln!(out, "{}", serde_json::json!({ "reports": list }))?;
    } else {
        for r in &reports {
            writeln!(out, "{}", view::summary_line(r))?;
        }
    }
    out.flush()?;
    Ok(())
}

pub fn show(config: &Config, id: i64, json: bool) -> anyhow::Result<()> {
    let store = open(config)?;
    let Some((summary, report)) = store.get_report(id)? else { bail!("no stored report with id {id}") };
    if json {
        println!("{}", view::report_json(&summary, &report));
        return Ok(());
    }
    println!("{}", view::summary_line(&summary));
    println!("reporter: {} <{}>", printable(&report.org_name), printable(&report.email));
    if let Some(p) = &report.policy {
        println!("policy: p={} sp={} adkim={} aspf={}", p.p, p.sp, p.adkim, p.aspf);
    }
    for r in &report.rows {
        let dkim: Vec<String> = r.dkim.iter().map(|d| format!("{}={}", printable(&d.domain), d.result)).collect();
        let spf: Vec<String> = r.spf.iter().map(|s| format!("{}={}", printable(&s.domain), s.result)).collect();
        println!(
            "  {:<39} {:>6}  {:<10}  dkim {} ({})  spf {} ({})",
            printable(&r.source_ip),
            r.count,
            r.disposition,
            r.dkim_evaluated,
            dkim.join(" "),
            r.spf_evaluated,
            spf.join(" ")
        );
    }
    for p in &report.tls {
        println!("  {} {}: {} successful, {} failed", p.policy_type, printable(&p.policy_domain), p.successes, p.failures);
        for f in &p.details {
            println!("    {} x{} {} {}", f.result_type, f.count, printable(&f.receiving_mx_hostname), printable(&f.reason_code));
        }
    }
    Ok(())
}
