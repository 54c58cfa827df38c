//! Spool recovery from damaged segment files: the damaged file is moved to
//! `spool/corrupt/` byte for byte, its intact messages stay queued, and the
//! server goes on accepting mail.

use std::fs;
use std::path::{Path, PathBuf};

use mailgate_testkit::process::{segment_records, write_after_records};
use mailgate_testkit::{Server, SmtpClient};
use serde_json::Value;

const DOMAIN: &str = "[[domain]]\nname = \"example.test\"\ndeliver = \"smtp://127.0.0.1:9\"\ndkim = false\n";

fn send(server: &Server, n: usize) -> Vec<String> {
    let mut c = SmtpClient::connect(server.smtp_addr()).expect("connect");
    assert_eq!(c.greeting.code, 220, "{}", c.greeting);
    assert_eq!(c.ehlo("client.example.net").unwrap().code, 250);
    let ids = (0..n)
        .map(|i| {
            let body = format!("Subject: recovery {i}\r\nMessage-ID: <rec-{i}@client.example.net>\r\n\r\nbody {i}\r\n");
            let r = c.send_mail("sender@client.example.net", &["user@example.test"], &body).expect("send");
            r.queue_id().unwrap_or_else(|| panic!("message {i} refused: {r}"))
        })
        .collect();
    c.quit().expect("quit");
    ids
}

fn segments(spool: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = fs::read_dir(spool)
        .expect("read spool dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with("seg-") && name.ends_with(".log")
        })
        .collect();
    segs.sort();
    segs
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Stops the server cleanly, appends `garbage` to the segment holding the
/// messages, restarts, and checks the outcome. Returns the recovery report.
fn damage_tail_and_restart(garbage: &[u8]) -> Value {
    let mut server = Server::start(env!("CARGO_BIN_EXE_mailgate"), DOMAIN);
    let ids = send(&server, 5);
    server.sigterm_and_wait();

    let spool = server.spool_dir();
    let segs = segments(&spool);
    let damaged = segs.last().expect("a segment file").clone();
    let intact = segment_records(&damaged);
    assert!(!intact.is_empty(), "{} holds no record", damaged.display());
    write_after_records(&damaged, garbage);

    server.restart();
    let status = server.spool_status();
    let corrupt = status["recovery"]["corrupt"].as_array().expect("recovery.corrupt array").clone();
    assert_eq!(corrupt.len(), 1, "one damaged segment expected: {status}");
    let report = &corrupt[0];

    // Moved, not deleted: the same bytes, under spool/corrupt/.
    let moved = spool.join("corrupt").join(damaged.file_name().unwrap());
    assert_eq!(Path::new(report["moved_to"].as_str().unwrap()), moved, "{report}");
    assert!(!damaged.exists(), "{} is still in the spool", damaged.display());
    assert!(moved.exists(), "{} is not there", moved.display());
    assert_eq!(segment_records(&moved), [intact.as_slice(), garbage].concat(), "the moved file was changed");
    assert_eq!(report["offset"].as_u64(), Some(intact.len() as u64), "damage found at the wrong offset: {report}");
    assert_eq!(report["rescued"].as_u64(), Some(5), "{report}");

    // The intact messages are still queued, and new mail is accepted.
    assert_eq!(sorted(server.queue_ids()), sorted(ids.clone()));
    let new = send(&server, 1);
    let mut all = ids.clone();
    all.extend(new);
    assert_eq!(sorted(server.queue_ids()), sorted(all.clone()));

    // The rescued copy is itself sound: a further restart finds no damage.
    server.restart();
    let status = server.spool_status();
    assert_eq!(status["recovery"]["corrupt"].as_array().map(Vec::len), Some(0), "{status}");
    assert_eq!(sorted(server.queue_ids()), sorted(all));
    assert!(moved.exists(), "the corrupt file disappeared after a second restart");
    report.clone()
}

#[test]
fn garbage_after_the_last_record_moves_the_segment_aside() {
    let report = damage_tail_and_restart(b"this is not a spool record\n\x00\xff\xfe garbage");
    println!("recovery: {report}");
}

#[test]
fn torn_record_at_the_end_moves_the_segment_aside() {
    // The start of a record whose write never finished.
    let report = damage_tail_and_restart(b"MGR1\x01\xff\x00\x00\x00partial");
    assert!(report["reason"].as_str().unwrap_or_default().contains("incomplete"), "{report}");
}

/// A deletion is a tombstone record in a later segment than the message. If
/// that later segment is damaged and moved aside, the deletion must survive
/// (copied out like the intact messages are); otherwise the deleted message
/// comes back at the next start.
#[test]
fn deletion_recorded_in_a_damaged_segment_stays_deleted() {
    let mut server = Server::start(env!("CARGO_BIN_EXE_mailgate"), DOMAIN);
    let first = send(&server, 2); // both in the first segment
    let (deleted, kept) = (first[0].clone(), first[1].clone());
    server.restart(); // the next writes go to a new segment

    let out = server.cli(&["queue", "delete", &deleted]);
    assert!(out.status.success(), "queue delete failed: {}", String::from_utf8_lossy(&out.stderr));
    let later = send(&server, 1);
    let expected = sorted(vec![kept.clone(), later[0].clone()]);
    assert_eq!(sorted(server.queue_ids()), expected);
    server.sigterm_and_wait();

    let segs = segments(&server.spool_dir());
    assert_eq!(segs.len(), 2, "expected the first segment and the one holding the deletion: {segs:?}");
    write_after_records(&segs[1], b"garbage after the deletion");

    server.restart();
    assert_eq!(server.spool_status()["recovery"]["corrupt"].as_array().map(Vec::len), Some(1));
    assert_eq!(sorted(server.queue_ids()), expected, "right after recovery");

    server.restart();
    assert_eq!(
        sorted(server.queue_ids()),
        expected,
        "one start after recovery: the message deleted with `queue delete` ({deleted}) came back"
    );
}
