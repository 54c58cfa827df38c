//! The scheduler keeps only the next messages due in memory (its horizon)
//! and reads the rest from the spool index as it goes. With a horizon of
//! two messages, every one of eight queued and deferred messages must still
//! be delivered when its time comes, before and after a restart.

use std::time::{Duration, Instant};

use mailgate_testkit::sink::SinkReplies;
use mailgate_testkit::{Server, SmtpClient, SmtpSink};

const BIN: &str = env!("CARGO_BIN_EXE_mailgate");
const N: usize = 8;

fn send(server: &Server, i: usize) -> String {
    let mut c = SmtpClient::connect(server.smtp_addr()).expect("connect");
    assert_eq!(c.ehlo("client.example.net").unwrap().code, 250);
    let r = c
        .send_mail("alice@client.example.net", &["bob@example.test"], &format!("Subject: horizon {i}\r\n\r\nmessage {i}\r\n"))
        .expect("send");
    let id = r.queue_id().unwrap_or_else(|| panic!("refused: {r}\n{}", server.log_tail(30)));
    c.quit().ok();
    id
}

/// Waits until every queued message has been tried (and deferred) once.
fn wait_all_deferred(server: &Server, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let queue = server.queue();
        let msgs = queue["messages"].as_array().cloned().unwrap_or_default();
        let tried = msgs
            .iter()
            .filter(|m| ids.iter().any(|id| m["id"] == id.as_str()))
            .filter(|m| m["recipients"].as_array().is_some_and(|r| r.iter().all(|r| r["attempts"].as_u64().unwrap_or(0) >= 1)))
            .count();
        if tried == ids.len() {
            return;
        }
        assert!(Instant::now() < deadline, "only {tried} of {} tried: {queue}\n{}", ids.len(), server.log_tail(40));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn messages_beyond_the_horizon_are_delivered_when_due() {
    // Every first attempt is deferred, so each message comes back later,
    // filed beyond the two-message horizon. The first retry comes after
    // seconds, not one: all eight must be seen deferred at once, and a
    // retry due at the next whole second could come before the last poll.
    let sink = SmtpSink::with_replies(SinkReplies { data_end_first: vec!["451 4.3.0 later".into(); N], ..SinkReplies::default() });
    let config = format!(
        "[[domain]]\nname = \"example.test\"\ndeliver = \"{}\"\ndkim = false\n\
         [delivery]\nretry_initial = 8\nretry_max = 8\nidle_timeout = 1\nconnect_timeout = 2\n",
        sink.url()
    );
    let mut server = Server::builder(BIN).config(&config).env("MAILGATE_SCHEDULER_HORIZON", "2").start();
    let ids: Vec<String> = (0..N).map(|i| send(&server, i)).collect();
    wait_all_deferred(&server, &ids);
    // After a restart the recovered queue is read two messages at a time.
    assert!(server.sigterm_and_wait().success());
    server.restart();
    let got = sink
        .wait_for(N, Duration::from_secs(40))
        .unwrap_or_else(|| panic!("sink got {} of {N} messages\n{}\n{}", sink.messages().len(), server.queue(), server.log_tail(40)));
    let mut subjects: Vec<String> =
        got.iter().map(|m| m.data_str().lines().find(|l| l.starts_with("Subject:")).unwrap_or("").to_string()).collect();
    subjects.sort();
    let want: Vec<String> = (0..N).map(|i| format!("Subject: horizon {i}")).collect();
    assert_eq!(subjects, want);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.queue_ids().is_empty() {
        assert!(Instant::now() < deadline, "queue not empty: {}", server.queue());
        std::thread::sleep(Duration::from_millis(100));
    }
}
