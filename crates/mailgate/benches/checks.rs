//! The cost of one full inbound check (`Checker::check`) of a repeated
//! sender (`bench/checks.sh` is not needed: `cargo bench -p mailgate
//! --bench checks`): the message `smtp-source` sends in `bench/accept.sh`
//! (`CHECKS=1`), from an untrusted client, against a loopback DNS server
//! where every name is NXDOMAIN with a SOA (as `bench/nxdns.py`), so the
//! whole path runs: SPF for MAIL FROM and HELO, the DMARC tree walk, the
//! look-alike rules and the `Authentication-Results` field. The first
//! check fills the caches; the figure is the mean of the rest.
//!
//! Environment: CHECKS (20000), SENDERS (1: one sender domain; more
//! spreads the checks over that many domains, round robin).

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Instant;

use mailgate::checks::body::Body;
use mailgate::checks::verdict::{Checker, Input};
use mailgate::config::Config;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// NXDOMAIN for every question, with a SOA whose minimum (3600 s) lets
/// resolvers cache the answer (RFC 2308), as `bench/nxdns.py` does.
fn nxdomain_server() -> std::net::SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let addr = socket.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut soa = vec![0u8]; // owner: the root
        soa.extend_from_slice(&[0, 6, 0, 1, 0, 0, 0x0e, 0x10]); // SOA IN ttl 3600
        let mut rdata = b"\x02ns\x04test\x00\x0ahostmaster\x04test\x00".to_vec();
        for v in [1u32, 3600, 600, 86400, 3600] {
            rdata.extend_from_slice(&v.to_be_bytes());
        }
        soa.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        soa.extend_from_slice(&rdata);
        let mut buf = [0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else { continue };
            let q = &buf[..n];
            if n < 12 {
                continue;
            }
            let mut i = 12;
            while i < n && q[i] != 0 {
                i += 1 + q[i] as usize;
            }
            let end = i + 5;
            if end > n {
                continue;
            }
            let rd = q[2] & 0x01;
            let mut out = vec![q[0], q[1], 0x84 | rd, 0x83, 0, 1, 0, 0, 0, 1, 0, 0];
            out.extend_from_slice(&q[12..end]);
            out.extend_from_slice(&soa);
            let _ = socket.send_to(&out, peer);
        }
    });
    addr
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = env("CHECKS", 20_000);
    let senders = env("SENDERS", 1).max(1);
    let dns = nxdomain_server();
    let dir = tempfile::tempdir()?;
    let text = format!(
        "[server]\nhostname = \"mx.bench.test\"\ndata_dir = {:?}\n[dns]\nnameservers = [\"{dns}\"]\n",
        dir.path().join("data").display().to_string()
    );
    let config = Config::parse(&text, &dir.path().join("mailgate.toml"))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let checker = rt.block_on(async { Checker::new(&config, Arc::new(mailgate::server::lookalikes(&config)), None) })?;
    let messages: Vec<(String, Vec<u8>)> = (0..senders)
        .map(|i| {
            let from = if senders == 1 { "sender@src.test".to_string() } else { format!("sender@src{i}.test") };
            let mut m = format!(
                "From: <{from}>\r\nTo: <rcpt@dst.test>\r\nDate: Sun, 06 Dec 2026 12:00:00 +0000\r\n\
                 Message-Id: <{i}.bench@src.test>\r\nSubject: benchmark\r\n\r\n"
            )
            .into_bytes();
            m.extend(std::iter::repeat_n(b'x', 78).chain(*b"\r\n").cycle().take(5120));
            (from, m)
        })
        .collect();
    let run = |k: usize| {
        let (from, m) = &messages[k % senders];
        let (n_header, body) = Body::split(&Arc::new(m.clone()));
        let input = Input {
            ip: "192.0.2.1".parse().expect("ok: a literal address"),
            helo: "client.src.test",
            mail_from: from,
            message: m.get(..n_header),
            body: Some(body),
            seal: false,
            record: false,
        };
        rt.block_on(checker.check(&input))
    };
    // Warm every cache once per sender.
    for k in 0..senders {
        let v = run(k);
        if k == 0 {
            eprintln!("spf={} dmarc={} action={}", v.spf.result, v.dmarc.result, v.action.as_str());
        }
    }
    let t0 = Instant::now();
    for k in 0..n {
        std::hint::black_box(run(k));
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("checks={n} senders={senders} total={secs:.3}s per_check={:.1}us", secs * 1e6 / n as f64);
    Ok(())
}
