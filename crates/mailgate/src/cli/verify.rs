//! `mailgate verify`: the administrator's "why was this rejected?" tool.
//! It runs the very checks the gateway runs (`checks::verdict`), with the
//! same configuration, and prints what each found and the action.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::checks::verdict::{Checker, Input, Verdict};
use crate::config::Config;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The client's IP address.
    #[arg(long)]
    pub ip: IpAddr,
    /// The name the client gave in HELO/EHLO.
    #[arg(long)]
    pub helo: String,
    /// The MAIL FROM address; empty or `<>` for a bounce.
    #[arg(long, value_name = "ADDR")]
    pub mail_from: String,
    /// DNS server to ask instead of `[dns].nameservers`.
    #[arg(long, value_name = "HOST:PORT")]
    pub nameserver: Option<SocketAddr>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The message (`-` for standard input). Without it, only SPF is checked.
    #[arg(value_name = "MESSAGE_FILE")]
    pub message: Option<PathBuf>,
}

pub fn verify(config: &Config, args: VerifyArgs) -> anyhow::Result<()> {
    let mut config = config.clone();
    if let Some(ns) = args.nameserver {
        config.nameservers = Some(vec![ns]);
    }
    let message = match &args.message {
        None => None,
        Some(p) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("cannot read the message from standard input")?;
            Some(buf)
        }
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
    };
    // Over SMTP every line ends in CRLF; files on disk often use LF.
    let message = message.map(|m| Arc::new(crlf(&m)));
    let split = message.as_ref().map(crate::checks::body::Body::split);
    let mail_from = args.mail_from.trim().trim_start_matches('<').trim_end_matches('>').to_string();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let verdict = runtime.block_on(async {
        let checker = Checker::new(&config, Arc::new(crate::server::lookalikes(&config)), None)?;
        let input = Input {
            ip: args.ip,
            helo: &args.helo,
            mail_from: &mail_from,
            message: message.as_ref().zip(split.as_ref()).and_then(|(m, (n, _))| m.get(..*n)),
            body: split.as_ref().map(|(_, b)| b.clone()),
            seal: false,
            record: false,
        };
        anyhow::Ok(checker.check(&input).await)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    } else {
        print_text(&verdict, message.is_some());
    }
    Ok(())
}

/// Bare LF line ends become CRLF; existing CRLF stays.
fn crlf(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + m.len() / 32);
    let mut prev = 0u8;
    for &b in m {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

fn print_text(v: &Verdict, with_message: bool) {
    let spf = |label: &str, r: &crate::checks::verdict::SpfReport| {
        let exp = r.explanation.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
        println!("{label:<16} {:<10} {}{exp}", r.result, r.domain);
    };
    spf("spf (mail from)", &v.spf);
    spf("spf (helo)", &v.spf_helo);
    if with_message {
        if v.dkim.is_empty() {
            println!("{:<16} none", "dkim");
        }
        for d in &v.dkim {
            let why = d.reason.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
            println!("{:<16} {:<10} d={} s={} a={}{why}", "dkim", d.result, d.domain, d.selector, d.algorithm);
        }
        println!("{:<16} {:<10} {}", "arc", v.arc.result, v.arc.sealers.join(" "));
        let yn = |b: bool| if b { "yes" } else { "no" };
        println!(
            "{:<16} {:<10} from={} policy={} spf_aligned={} dkim_aligned={}",
            "dmarc",
            v.dmarc.result,
            v.dmarc.from_domain,
            if v.dmarc.policy.is_empty() { "-" } else { v.dmarc.policy },
            yn(v.dmarc.spf_aligned),
            yn(v.dmarc.dkim_aligned)
        );
    }
    for f in &v.lookalike {
        println!("{:<16} {} resembles {} ({})", "look-alike", f.domain, f.resembles, f.rule);
    }
    let action = if v.temporary { "reject (temporary, 451)" } else { v.action.as_str() };
    match &v.reason {
        Some(r) => println!("{:<16} {action}: {r}", "action"),
        None => println!("{:<16} {action}", "action"),
    }
    print!("{}", v.auth_results_header());
}
