//! Signs one message N times, in-process, with mailgate's own signer: the
//! server's `Signer` (crates/mailgate/src/sign/mod.rs), loaded from a
//! mailgate config and its data_dir's DKIM keys exactly as at start-up,
//! then the fields prepended to a copy of the message as
//! crates/mailgate/src/inbound.rs `sign` does. Run it pinned to one core
//! (`taskset -c 0`).
//!
//! Usage: mailgate-sign-bench CONFIG MESSAGE N LABEL [OUT]
//! Every active key of the `From:` domain signs (as the server). LABEL
//! names the run in the output line: `LABEL n secs rate`. With OUT, the
//! last signed message is written there (for checking it with a verifier).

use std::path::Path;
use std::time::Instant;

use mailgate::config::Config;
use mailgate::sign::Signer;

fn sign_one(signer: &Signer, message: &[u8]) -> Vec<u8> {
    let fields = signer.sign(message).expect("signing").expect("the From: domain has keys");
    let mut signed = Vec::with_capacity(fields.len() + message.len());
    signed.extend_from_slice(fields.as_bytes());
    signed.extend_from_slice(message);
    signed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: {} CONFIG MESSAGE N LABEL [OUT]", args[0]);
        std::process::exit(2);
    }
    let config = Config::load(Some(Path::new(&args[1]))).expect("config");
    let message = std::fs::read(&args[2]).expect("message file");
    let (n, label) = (args[3].parse::<u64>().expect("N"), &args[4]);
    let signer = Signer::start(&config.data_dir, &config.domains).expect("DKIM keys");
    let mut last = sign_one(&signer, &message); // warm-up
    let start = Instant::now();
    for _ in 0..n {
        last = std::hint::black_box(sign_one(&signer, std::hint::black_box(&message)));
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{label} {n} {secs:.4} {:.1}", n as f64 / secs);
    if let Some(out) = args.get(5) {
        std::fs::write(out, &last).expect("OUT");
    }
}
