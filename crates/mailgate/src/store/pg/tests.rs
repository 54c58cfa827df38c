//! Tests of what only a shared store does: several nodes on one database
//! (migrations at once, shared aggregates and marks, per-node counts, the
//! report lock), and the recorder's buffer while the database is away.

use std::sync::Arc;

use super::Postgres;
use super::testdb::database;
use crate::store::timeline::{MessageRecord, TimelineEvent};
use crate::store::*;

const T0: u64 = 1_796_515_200;

fn evaluation(time: u64, from: &str) -> Event {
    Event::Evaluation(Box::new(Evaluation {
        time,
        source_ip: "192.0.2.1".parse().unwrap(),
        helo: "h.test".into(),
        envelope_from: from.into(),
        header_from: from.into(),
        spf: SpfAuth { domain: from.into(), scope: "mfrom".into(), result: "pass".into() },
        dkim: vec![],
        arc: "none".into(),
        dmarc: "pass".into(),
        spf_aligned: true,
        dkim_aligned: false,
        disposition: "none".into(),
        policy: Some(PolicyPublished { domain: from.into(), p: "none".into(), rua: vec!["mailto:d@x.test".into()], ..Default::default() }),
        override_reason: None,
        lookalike: vec![],
    }))
}

fn message(time: u64, id: &str) -> Event {
    Event::Timeline(Box::new(TimelineEvent::Message(MessageRecord {
        time,
        event_id: id.into(),
        action: "accepted".into(),
        inbound: true,
        ..Default::default()
    })))
}

#[test]
fn two_nodes_share_one_database() {
    let url = database();
    // Both start at once: the migrations run once, under the lock.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Postgres::connect(&url, "node-a"));
        let b = s.spawn(|| Postgres::connect(&url, "node-b"));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    a.write(&[evaluation(T0, "a.test"), evaluation(T0 + 1, "a.test"), message(T0, "qa1"), message(T0 + 1, "qa2")]).unwrap();
    b.write(&[evaluation(T0 + 2, "a.test"), message(T0 + 2, "qb1")]).unwrap();
    // The aggregates add up both nodes' rows, seen from either.
    for s in [&a, &b] {
        let rows = s.dmarc_rows("a.test", T0, T0 + 3600).unwrap();
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 3, "{rows:?}");
        assert_eq!(s.domains(T0, T0 + 3600).unwrap(), vec![("a.test".to_string(), 3)]);
        assert_eq!(s.traffic(T0, T0 + 3600).unwrap()[0].accepted, 3);
    }
    assert_eq!(a.nodes(T0, T0 + 3600).unwrap(), vec![("node-a".to_string(), 2), ("node-b".to_string(), 1)]);
    let figures = b.node_figures(T0, T0 + 3600).unwrap();
    let pick = |f: &NodeFigures| (f.node.clone(), f.received, f.accepted, f.evaluated);
    assert_eq!(figures.iter().map(pick).collect::<Vec<_>>(), vec![("node-a".into(), 2, 2, 2), ("node-b".into(), 1, 1, 1)]);
    // One node reports; the mark it moves is the other's too.
    let lock = a.try_report_lock().unwrap().expect("the first node gets the lock");
    assert!(b.try_report_lock().unwrap().is_none(), "the second must not while the first holds it");
    a.mark_reported(&SentReport {
        kind: ReportKind::Dmarc,
        domain: "a.test".into(),
        report_id: "r".into(),
        begin: T0,
        end: T0 + 3600,
        destinations: vec![],
        messages: 3,
    })
    .unwrap();
    drop(lock);
    assert_eq!(b.reported_until(ReportKind::Dmarc, "a.test").unwrap(), Some(T0 + 3600));
    let again = (0..50).find_map(|_| {
        // The lock's connection closes on another thread: wait for it.
        std::thread::sleep(std::time::Duration::from_millis(50));
        b.try_report_lock().unwrap()
    });
    assert!(again.is_some(), "the lock is free once the guard is dropped");
}

/// The database refuses connections for a while: the recorder buffers on
/// disk, and writes everything, in order and once, when it is back; a
/// buffer left by a stopped node is replayed at start, into any store.
#[tokio::test]
async fn records_wait_on_disk_while_the_database_is_away() {
    // The test server's set-up connects with the blocking client.
    let url = tokio::task::spawn_blocking(database).await.unwrap();
    let name = url.rsplit('/').next().unwrap().to_string();
    let admin = url.replace(&format!("/{name}"), "/postgres");
    let admin_sql = move |sql: String| {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
            c.batch_execute(&sql).unwrap();
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let buffer = dir.path().join(buffer::DIR);
    let u = url.clone();
    let store: Arc<dyn Store> = Arc::new(tokio::task::spawn_blocking(move || Postgres::connect(&u, "n1")).await.unwrap().unwrap());
    let recorder = start_writer(store.clone(), 0, true, Some(&buffer));
    recorder.record(evaluation(T0, "a.test"));
    recorder.flush().await;
    assert_eq!(recorder.written(), 1);
    // Away: no new connections, the open ones cut.
    admin_sql(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
    ))
    .await
    .unwrap();
    for i in 1..=50 {
        recorder.record(evaluation(T0 + i, "a.test"));
        if i % 10 == 0 {
            recorder.flush().await;
        }
    }
    recorder.flush().await;
    assert_eq!(recorder.written(), 1, "nothing can be written while the database is away");
    let waiting = std::fs::read_dir(&buffer).unwrap().count();
    assert!(waiting >= 1, "the batches wait on disk");
    admin_sql(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true;")).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(40);
    while recorder.written() < 51 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(recorder.written(), 51, "every buffered event is written once the database is back");
    assert_eq!(std::fs::read_dir(&buffer).unwrap().count(), 0, "the buffer is emptied");
    let s = store.clone();
    let rows = tokio::task::spawn_blocking(move || s.dmarc_rows("a.test", 0, u64::MAX)).await.unwrap().unwrap();
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 51);

    // A node that stopped with batches on disk: its successor replays
    // them at start (here into SQLite: the buffer is the store's events).
    let dir2 = tempfile::tempdir().unwrap();
    let buffer2 = dir2.path().join(buffer::DIR);
    let down: Arc<dyn Store> = Arc::new(Postgres::lazy("postgres://postgres@127.0.0.1:1/none", "n1").unwrap());
    let first = start_writer(down, 0, true, Some(&buffer2));
    for i in 0..20 {
        first.record(evaluation(T0 + i, "b.test"));
    }
    first.flush().await;
    assert_eq!(first.written(), 0);
    let sqlite: Arc<dyn Store> = Arc::new(crate::store::sqlite::Sqlite::open(&dir2.path().join("reports.db"), "n1").unwrap());
    let second = start_writer(sqlite.clone(), 0, true, Some(&buffer2));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while second.written() < 20 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(second.written(), 20);
    assert_eq!(sqlite.dmarc_rows("b.test", 0, u64::MAX).unwrap().iter().map(|r| r.count).sum::<u64>(), 20);
}
