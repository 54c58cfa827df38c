//! Crash safety: clients send mail without pause while the server is killed
//! with SIGKILL at random moments, many times. After every restart, each
//! message that got 250 must still be queued, with its own envelope.
//!
//! Set `CRASH_SEED` to replay a run's kill timings; `CRASH_KILLS` to change
//! how many kills there are.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use mailgate_testkit::process::was_killed;
use mailgate_testkit::{Blackhole, Server, SmtpClient};
use serde_json::Value;

const CLIENTS: usize = 8;
const DEFAULT_KILLS: usize = 20;
/// Messages sent on one connection before the client reconnects, so that
/// both connection set-up and long sessions are cut by the kills.
const MESSAGES_PER_CONNECTION: usize = 10;
/// Acknowledged messages whose content is compared at the end.
const SAMPLE: usize = 2000;

/// A message the server acknowledged with 250.
#[derive(Clone, Debug)]
struct Acked {
    id: String,
    message_id: String,
    recipient: String,
    /// Which server start acknowledged it (1 = first).
    start: u32,
}

#[derive(Default)]
struct Stats {
    attempts: AtomicU64,
    io_errors: AtomicU64,
    refused: AtomicU64,
}

/// What the client threads share with the test.
struct Shared {
    /// The listener's current address; it changes only if a port was taken.
    smtp: RwLock<SocketAddr>,
    /// The server start the clients are talking to.
    start: AtomicU64,
    stop: AtomicBool,
    acked: Mutex<Vec<Acked>>,
    stats: Stats,
}

/// A small deterministic generator (splitmix64), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn client(n: usize, shared: Arc<Shared>) {
    let recipient = format!("user{n}@example.test");
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let addr = *shared.smtp.read().unwrap();
        let start = shared.start.load(Ordering::SeqCst) as u32;
        let Ok(mut c) = SmtpClient::connect_timeout(addr, Duration::from_secs(5)) else {
            // The server is down: try again shortly.
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        if c.greeting.code != 220 || !c.ehlo("client.example.net").map(|r| r.code == 250).unwrap_or(false) {
            shared.stats.io_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        for _ in 0..MESSAGES_PER_CONNECTION {
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
            seq += 1;
            let message_id = format!("<crash-{n}-{seq}@client.example.net>");
            let body = format!(
                "From: <sender{n}@client.example.net>\r\nTo: <{recipient}>\r\nSubject: crash test {n}/{seq}\r\n\
                 Message-ID: {message_id}\r\n\r\nClient {n}, message {seq}.\r\n"
            );
            shared.stats.attempts.fetch_add(1, Ordering::Relaxed);
            match c.send_mail(&format!("sender{n}@client.example.net"), &[&recipient], &body) {
                Ok(reply) if reply.code == 250 => {
                    let id = reply.queue_id().unwrap_or_else(|| panic!("250 without a queue id: {reply}"));
                    let acked = Acked { id, message_id, recipient: recipient.clone(), start };
                    shared.acked.lock().unwrap().push(acked);
                }
                Ok(_) => {
                    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(_) => {
                    shared.stats.io_errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

/// Every acknowledged message is listed, with the recipient it was sent to.
/// Returns the number of queued messages.
fn check_all_acked_are_queued(server: &Server, acked: &[Acked], when: &str) -> usize {
    let queue = server.queue();
    let messages = queue["messages"].as_array().expect("messages array");
    let by_id: HashMap<&str, &Value> = messages.iter().map(|m| (m["id"].as_str().expect("id"), m)).collect();
    let missing: Vec<&Acked> = acked.iter().filter(|a| !by_id.contains_key(a.id.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{when}: {} of {} acknowledged messages are not in the queue ({} queued); first few: {:#?}\n{}",
        missing.len(),
        acked.len(),
        messages.len(),
        &missing[..missing.len().min(5)],
        server.log_tail(40)
    );
    for a in acked {
        let m = by_id[a.id.as_str()];
        let rcpt = m["recipients"][0]["address"].as_str().unwrap_or_default();
        assert_eq!(rcpt, a.recipient, "{when}: message {} has the wrong recipient: {m}", a.id);
    }
    messages.len()
}

/// Corrupt segments this start reported; each must have been moved aside.
fn check_corrupt_moved_aside(server: &Server) -> Vec<Value> {
    let status = server.spool_status();
    let corrupt = status["recovery"]["corrupt"].as_array().cloned().unwrap_or_default();
    for c in &corrupt {
        let moved = Path::new(c["moved_to"].as_str().expect("moved_to"));
        assert!(moved.starts_with(server.spool_dir().join("corrupt")), "corrupt segment not under spool/corrupt: {c}");
        assert!(moved.exists(), "corrupt segment {} was reported but is not there", moved.display());
    }
    corrupt
}

#[test]
fn acknowledged_mail_survives_kill_9_at_random_moments() {
    let seed = env_u64("CRASH_SEED")
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    let kills = env_u64("CRASH_KILLS").map(|k| k as usize).unwrap_or(DEFAULT_KILLS);
    println!("crash test: seed {seed} (CRASH_SEED={seed} replays the kill timings), {kills} kills, {CLIENTS} clients");
    let mut rng = Rng(seed);
    let began = Instant::now();

    // A next hop that never answers, so mail stays queued once delivery exists.
    let next_hop = Blackhole::start();
    let mut server = Server::builder(env!("CARGO_BIN_EXE_mailgate"))
        .config(&format!("[[domain]]\nname = \"example.test\"\ndeliver = \"{}\"\ndkim = false\n", next_hop.url()))
        .start();

    let shared = Arc::new(Shared {
        smtp: RwLock::new(server.smtp_addr()),
        start: AtomicU64::new(1),
        stop: AtomicBool::new(false),
        acked: Mutex::new(Vec::new()),
        stats: Stats::default(),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let shared = shared.clone();
            thread::spawn(move || client(n, shared))
        })
        .collect();

    let mut corrupt_seen = Vec::new();
    let mut acked_at_kill = Vec::new();
    let (mut restart_time, mut check_time) = (Duration::ZERO, Duration::ZERO);
    for round in 1..=kills {
        thread::sleep(Duration::from_millis(rng.range(20, 300)));
        let status = server.kill9();
        assert!(was_killed(&status), "round {round}: the server had already exited ({status})\n{}", server.log_tail(40));
        acked_at_kill.push(shared.acked.lock().unwrap().len());
        let t = Instant::now();
        server.restart();
        restart_time += t.elapsed();
        *shared.smtp.write().unwrap() = server.smtp_addr();
        shared.start.store(u64::from(server.starts()), Ordering::SeqCst);

        // Everything acknowledged so far was acknowledged by a dead process
        // or by this one after storing it: all of it must be listed now.
        let t = Instant::now();
        let snapshot = shared.acked.lock().unwrap().clone();
        check_all_acked_are_queued(&server, &snapshot, &format!("after kill {round}"));
        corrupt_seen.extend(check_corrupt_moved_aside(&server));
        check_time += t.elapsed();
    }

    shared.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client thread panicked");
    }
    // One last crash with no traffic, then the final count.
    server.kill9();
    server.restart();
    let acked = shared.acked.lock().unwrap().clone();
    let queued = check_all_acked_are_queued(&server, &acked, "final restart");
    corrupt_seen.extend(check_corrupt_moved_aside(&server));
    let via_cli: HashSet<String> = server.queue_ids_via_cli().into_iter().collect();
    let missing_cli = acked.iter().filter(|a| !via_cli.contains(&a.id)).count();
    assert_eq!(missing_cli, 0, "`mailgate queue list --json` misses {missing_cli} acknowledged messages");

    // Queue ids are unique across restarts: two messages never share one.
    let mut seen = HashSet::new();
    let dups: Vec<&Acked> = acked.iter().filter(|a| !seen.insert(a.id.as_str())).collect();
    assert!(dups.is_empty(), "queue ids acknowledged twice: {dups:#?}");

    // Each listed id holds the message it was given for (Message-ID check),
    // for a sample: one GET per message would dominate the run time.
    let sample: Vec<&Acked> = (0..SAMPLE.min(acked.len())).map(|_| &acked[rng.range(0, acked.len() as u64 - 1) as usize]).collect();
    for a in sample {
        let shown = server.api_get(&format!("/api/v1/queue/{}", a.id));
        let headers = shown["headers"].as_str().unwrap_or_default();
        assert!(headers.contains(&a.message_id), "queue id {} holds another message: {headers}", a.id);
    }

    let log = server.log();
    assert!(!log.contains("panicked"), "the server panicked:\n{}", server.log_tail(60));

    let stats = &shared.stats;
    let per_start = acked.iter().fold(HashMap::new(), |mut m, a| {
        *m.entry(a.start).or_insert(0usize) += 1;
        m
    });
    let rounds_with_mail = acked_at_kill.windows(2).filter(|w| w[1] > w[0]).count() + usize::from(acked_at_kill[0] > 0);
    println!(
        "crash test: {kills} kills in {:.1}s (restarts {:.1}s, checks {:.1}s); {} sent, {} acknowledged with 250, {} refused, {} cut off; \
         {queued} recovered after the last restart ({} stored but never acknowledged); \
         acknowledgements in {rounds_with_mail} of {kills} rounds, by {} starts; {} corrupt segments",
        began.elapsed().as_secs_f64(),
        restart_time.as_secs_f64(),
        check_time.as_secs_f64(),
        stats.attempts.load(Ordering::Relaxed),
        acked.len(),
        stats.refused.load(Ordering::Relaxed),
        stats.io_errors.load(Ordering::Relaxed),
        queued - acked.len(),
        per_start.len(),
        corrupt_seen.len(),
    );
    for c in &corrupt_seen {
        println!("crash test: corrupt segment moved aside: {c}");
    }

    // The test means something only if the kills landed while mail flowed.
    assert!(acked.len() >= 100, "only {} messages acknowledged; the clients barely ran", acked.len());
    assert!(rounds_with_mail * 2 >= kills, "mail was acknowledged in only {rounds_with_mail} of {kills} rounds");
    assert!(stats.io_errors.load(Ordering::Relaxed) > 0, "no transaction was ever cut off by a kill");
}
