//! The daily report build at scale (`bench/reports.sh`): records 1,000,000
//! DMARC evaluations of one day through the store's API (the writer's
//! batches), spread over a few hundred author domains and a few thousand
//! source addresses, then builds that day's aggregate report for every
//! domain as the report task does (rows, XML, gzip, MIME message), without
//! sending. Prints the time of each phase and the peak RSS.
//!
//! Environment: EVALUATIONS (1000000), DOMAINS (300), SOURCES (3000),
//! BENCH_TMP (parent of the scratch dir, default the system's), KEEP_DB
//! (a database file recorded on the first run and reused after).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use mailgate::report::dmarc::{self, Period, Reporter};
use mailgate::store::sqlite::Sqlite;
use mailgate::store::{DkimAuth, Evaluation, Event, PolicyPublished, SpfAuth, Store};
use rand::{Rng, SeedableRng};

/// 2026-12-06 00:00 UTC.
const DAY: u64 = 1_796_515_200;
/// The recorder's batch size.
const BATCH: usize = 4096;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Peak resident set size of this process, from /proc (kB).
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// CPU seconds (user + system) this process has used: on a shared,
/// loaded machine a fairer figure than the wall time.
fn cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = env("EVALUATIONS", 1_000_000);
    let domains = env("DOMAINS", 300).max(1);
    let sources = env("SOURCES", 3000).max(1);
    let dir = match std::env::var_os("BENCH_TMP") {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir()?,
    };
    // KEEP_DB=FILE: record into FILE once and reuse it on later runs.
    let keep = std::env::var_os("KEEP_DB").map(std::path::PathBuf::from);
    let reuse = keep.as_ref().is_some_and(|p| p.exists());
    let store = Sqlite::open(&keep.clone().unwrap_or_else(|| dir.path().join("reports.db")), "bench")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let policies: Vec<PolicyPublished> = (0..domains)
        .map(|d| PolicyPublished {
            domain: format!("domain{d}.example"),
            p: ["none", "quarantine", "reject"][d % 3].into(),
            sp: String::new(),
            np: String::new(),
            adkim: "r".into(),
            aspf: "r".into(),
            testing: false,
            rua: vec![format!("mailto:dmarc@domain{d}.example")],
        })
        .collect();

    let t = Instant::now();
    let record_cpu = cpu_s();
    let mut batch = Vec::with_capacity(BATCH);
    for i in (0..n).filter(|_| !reuse) {
        let d = rng.random_range(0..domains);
        let s = rng.random_range(0..sources) as u32;
        let policy = &policies[d];
        // Most mail passes; a tenth is spoofed and failing.
        let pass = rng.random_range(0..10) != 0;
        let domain = policy.domain.clone();
        batch.push(Event::Evaluation(Box::new(Evaluation {
            time: DAY + (i as u64 * 86_400 / n as u64),
            source_ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + s)),
            helo: format!("mta{s}.sender.example"),
            envelope_from: if pass { domain.clone() } else { "spoofer.example".into() },
            header_from: domain.clone(),
            spf: SpfAuth {
                domain: if pass { domain.clone() } else { "spoofer.example".into() },
                scope: "mfrom".into(),
                result: if pass { "pass" } else { "fail" }.into(),
            },
            dkim: if pass { vec![DkimAuth { domain: domain.clone(), selector: "s1".into(), result: "pass".into() }] } else { Vec::new() },
            arc: "none".into(),
            dmarc: if pass { "pass" } else { "fail" }.into(),
            spf_aligned: pass,
            dkim_aligned: pass,
            disposition: if pass { "none".into() } else { policy.p.clone() },
            policy: Some(policy.clone()),
            override_reason: None,
            lookalike: Vec::new(),
        })));
        if batch.len() == BATCH {
            store.write(&batch)?;
            batch.clear();
        }
    }
    store.write(&batch)?;
    let record_s = t.elapsed().as_secs_f64();
    if !reuse {
        let cpu = cpu_s() - record_cpu;
        println!(
            "recorded {n} evaluations ({domains} domains, {sources} sources) in {record_s:.2} s ({:.0}/s), CPU {cpu:.2} s ({:.1} µs each)",
            n as f64 / record_s,
            cpu * 1e6 / n as f64
        );
    }

    let who = Reporter { org_name: "Bench".into(), email: "dmarc-reports@bench.example".into(), submitter: "bench.example".into() };
    let period = Period { begin: DAY, end: DAY + 86_400 };
    let t = Instant::now();
    let cpu = cpu_s();
    let found = store.dmarc_domains(period.begin, period.end)?;
    let list_s = t.elapsed().as_secs_f64();
    let policies: std::collections::HashMap<&str, &PolicyPublished> = found.iter().map(|p| (p.domain.as_str(), p)).collect();
    let (mut records, mut counted, mut bytes, mut domains_built) = (0usize, 0u64, 0usize, 0usize);
    let mut mail_s = 0f64;
    // As the report task does: one grouped scan of the day streams each
    // domain's rows, and each report is built as its rows come.
    let q = Instant::now();
    store.dmarc_report_each(None, period.begin, period.end, &mut |d| {
        let Some(policy) = policies.get(d.domain.as_str()) else { return Ok(()) };
        let m = Instant::now();
        records += d.rows.len();
        counted += d.rows.iter().map(|r| r.count).sum::<u64>();
        let report = dmarc::build(&who, policy, &d.rows, period, &format!("bench-{}", policy.domain));
        let msg = dmarc::message(&who, &report, &[format!("dmarc@{}", policy.domain)], "bench@bench.example")
            .map_err(|e| mailgate::store::StoreError::Data(e.to_string()))?;
        bytes += msg.len();
        domains_built += 1;
        mail_s += m.elapsed().as_secs_f64();
        Ok(())
    })?;
    let rows_s = q.elapsed().as_secs_f64() - mail_s;
    let build_s = t.elapsed().as_secs_f64();
    let build_cpu = cpu_s() - cpu;
    assert_eq!(counted, n as u64, "the reports must count every evaluation");
    println!(
        "daily reports: {} domains, {records} records, {counted} messages counted, {:.1} MB of report mail in {build_s:.2} s \
         (listing the domains {list_s:.2} s, the grouped scan of their rows {rows_s:.2} s, XML, gzip and MIME {mail_s:.2} s)",
        domains_built,
        bytes as f64 / 1e6
    );
    println!("daily build CPU time {build_cpu:.2} s (user + system)");
    println!("peak RSS {:.0} MB", peak_rss_kb() as f64 / 1024.0);
    Ok(())
}
