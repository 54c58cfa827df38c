//! Fills a data directory's report store for the dashboard speed bench
//! (`bench/dashboard.sh`): 1,000,000 DMARC evaluations over the last 30
//! days through the store's API (the writer's batches), spread over a few
//! hundred author domains (the first one is "ours" in the bench's config)
//! and a few thousand source addresses, plus per-message timeline records
//! so the traffic counters and look-alike table have rows. The script then
//! starts the real server on that directory and times the pages.
//!
//! Environment: DATA_DIR (required), EVALUATIONS (1000000), DOMAINS (300),
//! SOURCES (3000), MESSAGES (100000).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use mailgate::store::sqlite::Sqlite;
use mailgate::store::timeline::{LookalikeHit, MessageRecord};
use mailgate::store::{DkimAuth, Evaluation, Event, PolicyPublished, SpfAuth, Store, TimelineEvent};
use rand::{Rng, SeedableRng};

const BATCH: usize = 4096;
const DAYS: u64 = 30;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dir) = std::env::var_os("DATA_DIR") else {
        return Err("set DATA_DIR to the data directory to fill".into());
    };
    let n = env("EVALUATIONS", 1_000_000);
    let domains = env("DOMAINS", 300).max(1);
    let sources = env("SOURCES", 3000).max(1);
    let messages = env("MESSAGES", 100_000);
    let store = Sqlite::open(&std::path::Path::new(&dir).join(mailgate::store::sqlite::FILE), "bench")?;
    let now = mailgate::store::unix_now();
    let start = now - DAYS * 86_400;
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let policies: Vec<PolicyPublished> = (0..domains)
        .map(|d| PolicyPublished {
            domain: format!("domain{d}.example"),
            p: ["reject", "quarantine", "none"][d % 3].into(),
            adkim: "r".into(),
            aspf: "r".into(),
            rua: vec![format!("mailto:dmarc@domain{d}.example")],
            ..Default::default()
        })
        .collect();
    let t = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..n {
        // A tenth of the mail is "ours" (domain0), as at a real site.
        let d = if rng.random_range(0..10) == 0 { 0 } else { rng.random_range(0..domains) };
        let s = rng.random_range(0..sources) as u32;
        let policy = &policies[d];
        let pass = rng.random_range(0..10) != 0;
        let domain = policy.domain.clone();
        batch.push(Event::Evaluation(Box::new(Evaluation {
            time: start + (i as u64 * DAYS * 86_400 / n as u64),
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
    batch.clear();
    let eval_s = t.elapsed().as_secs_f64();
    println!("recorded {n} evaluations ({domains} domains, {sources} sources, 30 days) in {eval_s:.1} s");
    let t = Instant::now();
    for i in 0..messages {
        let refused = rng.random_range(0..10) == 0;
        let lookalike = rng.random_range(0..100) == 0;
        batch.push(Event::Timeline(Box::new(TimelineEvent::Message(MessageRecord {
            time: start + (i as u64 * DAYS * 86_400 / messages.max(1) as u64),
            event_id: format!("r-{i:016x}"),
            queue_id: None,
            inbound: true,
            role: "mx".into(),
            client_ip: format!("10.0.{}.{}", i / 250 % 250, i % 250),
            sender: format!("user{i}@sender.example"),
            recipients: vec![format!("rcpt{}@domain0.example", i % 1000)],
            message_id: format!("<{i}@sender.example>"),
            subject: format!("Message {i}"),
            action: if refused { "refused" } else { "accepted" }.into(),
            lookalike: if lookalike {
                vec![LookalikeHit {
                    domain: "dornain0.example".into(),
                    resembles: "domain0.example".into(),
                    rule: "confusable".into(),
                    identity: "from".into(),
                    ..Default::default()
                }]
            } else {
                Vec::new()
            },
            ..Default::default()
        }))));
        if batch.len() == BATCH {
            store.write(&batch)?;
            batch.clear();
        }
    }
    store.write(&batch)?;
    println!("recorded {messages} message timelines in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}
