use std::collections::BTreeMap;
use std::net::IpAddr;

use std::sync::Arc;

use super::pg::Postgres;
use super::sqlite::Sqlite;
use super::*;

fn evaluation(time: u64, ip: &str, from: &str, dkim: &[(&str, &str)], disposition: &str) -> Box<Evaluation> {
    Box::new(Evaluation {
        time,
        source_ip: ip.parse().unwrap(),
        helo: "mail.sender.test".into(),
        envelope_from: from.into(),
        header_from: from.into(),
        spf: SpfAuth { domain: from.into(), scope: "mfrom".into(), result: "pass".into() },
        dkim: dkim.iter().map(|(d, r)| DkimAuth { domain: d.to_string(), selector: "s1".into(), result: r.to_string() }).collect(),
        arc: "none".into(),
        dmarc: "pass".into(),
        spf_aligned: true,
        dkim_aligned: dkim.iter().any(|(_, r)| *r == "pass"),
        disposition: disposition.into(),
        policy: Some(PolicyPublished {
            domain: from.into(),
            p: "reject".into(),
            rua: vec![format!("mailto:dmarc@{from}")],
            ..Default::default()
        }),
        override_reason: None,
        lookalike: Vec::new(),
    })
}

fn open() -> (tempfile::TempDir, Sqlite) {
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open(&dir.path().join(sqlite::FILE), "n1").unwrap();
    (dir, store)
}

/// A PostgreSQL store in a new database of the test server.
fn open_pg() -> Postgres {
    Postgres::connect(&super::pg::testdb::database(), "n1").unwrap()
}

/// Runs each test against both stores: SQLite in a temporary directory,
/// PostgreSQL in a database of its own on the test binary's server.
macro_rules! both {
    (sync: $($name:ident),* ; async: $($async_name:ident),* $(,)?) => {
        mod on_sqlite {
            $( #[test] fn $name() { let (_dir, store) = super::open(); super::$name(&store); } )*
            $( #[tokio::test] async fn $async_name() { let (_dir, store) = super::open(); super::$async_name(std::sync::Arc::new(store)).await; } )*
        }
        mod on_postgres {
            $( #[test] fn $name() { let store = super::open_pg(); super::$name(&store); } )*
            $( #[tokio::test] async fn $async_name() {
                let store = tokio::task::spawn_blocking(super::open_pg).await.unwrap();
                super::$async_name(std::sync::Arc::new(store)).await;
            } )*
        }
    };
}

both!(sync: evaluations_group_into_report_rows, reported_marks_and_retention, dashboard_reads_come_from_the_hourly_aggregates, report_periods_are_exact_at_any_bounds, sources_of_finished_days_are_cached_and_exact, reported_days_sum_received_reports, reports_are_stored_once_and_read_back, nodes_count_messages; async: recorder_batches_and_flushes, recording_off_writes_nothing);

fn evaluations_group_into_report_rows(store: &dyn Store) {
    let mut events = Vec::new();
    for i in 0..5 {
        events.push(Event::Evaluation(evaluation(1000 + i, "192.0.2.1", "a.test", &[("a.test", "pass"), ("esp.test", "pass")], "none")));
    }
    // The same DKIM set in another order is the same row.
    events.push(Event::Evaluation(evaluation(1010, "192.0.2.1", "a.test", &[("esp.test", "pass"), ("a.test", "pass")], "none")));
    events.push(Event::Evaluation(evaluation(1020, "192.0.2.9", "a.test", &[], "reject")));
    events.push(Event::Evaluation(evaluation(1030, "192.0.2.9", "b.test", &[], "none")));
    // Outside the period.
    events.push(Event::Evaluation(evaluation(5000, "192.0.2.1", "a.test", &[], "none")));
    store.write(&events).unwrap();

    let domains: Vec<String> = store.dmarc_domains(1000, 2000).unwrap().into_iter().map(|p| p.domain).collect();
    assert_eq!(domains, ["a.test", "b.test"]);
    let rows = store.dmarc_rows("a.test", 1000, 2000).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].source_ip.as_str(), rows[0].count, rows[0].dkim.len()), ("192.0.2.1", 6, 2));
    assert_eq!((rows[1].source_ip.as_str(), rows[1].count, rows[1].disposition.as_str()), ("192.0.2.9", 1, "reject"));
}

fn reported_marks_and_retention(store: &dyn Store) {
    assert_eq!(store.reported_until(ReportKind::Dmarc, "a.test").unwrap(), None);
    let sent = SentReport {
        kind: ReportKind::Dmarc,
        domain: "a.test".into(),
        report_id: "r1".into(),
        begin: 0,
        end: 86_400,
        destinations: vec!["mailto:d@a.test".into()],
        messages: 3,
    };
    store.mark_reported(&sent).unwrap();
    // A mark never moves back.
    store.mark_reported(&SentReport { end: 100, report_id: "r0".into(), ..sent.clone() }).unwrap();
    assert_eq!(store.reported_until(ReportKind::Dmarc, "a.test").unwrap(), Some(86_400));
    assert_eq!(store.reported_until(ReportKind::Tlsrpt, "a.test").unwrap(), None);
    assert_eq!(store.sent_reports(10).unwrap().len(), 2);

    store.write(&[Event::Evaluation(evaluation(10, "192.0.2.1", "a.test", &[], "none"))]).unwrap();
    store.write(&[Event::Evaluation(evaluation(unix_now(), "192.0.2.1", "a.test", &[], "none"))]).unwrap();
    assert_eq!(store.prune(1000).unwrap(), 1);
    assert_eq!(store.dmarc_rows("a.test", 0, u64::MAX).unwrap().len(), 1);
}

fn reports_are_stored_once_and_read_back(store: &dyn Store) {
    let report = IngestedReport {
        kind: ReportKind::Dmarc,
        org_name: "google.com".into(),
        report_id: "123".into(),
        email: "noreply-dmarc-support@google.com".into(),
        begin: 100,
        end: 200,
        policy_domain: "a.test".into(),
        policy: Some(PolicyPublished { domain: "a.test".into(), p: "none".into(), ..Default::default() }),
        rows: vec![ReportRow {
            source_ip: "192.0.2.1".into(),
            count: 7,
            disposition: "none".into(),
            dkim_evaluated: "pass".into(),
            spf_evaluated: "fail".into(),
            reasons: vec![],
            header_from: "a.test".into(),
            envelope_from: "a.test".into(),
            dkim: vec![DkimAuth { domain: "a.test".into(), selector: "s".into(), result: "pass".into() }],
            spf: vec![SpfAuth { domain: "a.test".into(), scope: "mfrom".into(), result: "fail".into() }],
        }],
        tls: vec![],
    };
    let id = store.insert_report(&report).unwrap().expect("stored");
    assert_eq!(store.insert_report(&report).unwrap(), None, "a duplicate is stored once");
    let (summary, back) = store.get_report(id).unwrap().unwrap();
    assert_eq!(summary.messages, 7);
    assert_eq!(back, report);
    let listed = store.list_reports(&ReportQuery { domain: Some("a.test".into()), limit: 10, ..Default::default() }).unwrap();
    assert_eq!(listed, vec![summary]);
    assert!(store.list_reports(&ReportQuery { domain: Some("b.test".into()), limit: 10, ..Default::default() }).unwrap().is_empty());
}

#[test]
fn reopening_keeps_the_data() {
    let (dir, store) = open();
    store
        .mark_reported(&SentReport {
            kind: ReportKind::Dmarc,
            domain: "a.test".into(),
            report_id: "r1".into(),
            begin: 0,
            end: 500,
            destinations: vec![],
            messages: 0,
        })
        .unwrap();
    drop(store);
    // Reopening runs no migration twice and keeps the data.
    let again = Sqlite::open(&dir.path().join(sqlite::FILE), "n1").unwrap();
    assert_eq!(again.reported_until(ReportKind::Dmarc, "a.test").unwrap(), Some(500));
    let url = super::pg::testdb::database();
    drop(Postgres::connect(&url, "n1").unwrap());
    let again = Postgres::connect(&url, "n1").unwrap();
    assert!(again.reported_until(ReportKind::Dmarc, "a.test").unwrap().is_none());
}

async fn recorder_batches_and_flushes(store: Arc<dyn Store>) {
    let recorder = start_writer(store.clone(), 90, true, None);
    for i in 0..10_000 {
        recorder.record(Event::Evaluation(evaluation(unix_now() - 10 + (i % 5), "192.0.2.2", "c.test", &[], "none")));
    }
    recorder.flush().await;
    assert_eq!(recorder.written(), 10_000);
    assert_eq!(recorder.dropped(), 0);
    let s = store.clone();
    let rows = tokio::task::spawn_blocking(move || s.dmarc_rows("c.test", 0, u64::MAX)).await.unwrap().unwrap();
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 10_000);
}

fn tls(time: u64, domain: &str, result: &str, policy: &str) -> Event {
    Event::Tls(TlsSession {
        time,
        policy_domain: domain.into(),
        mx_host: format!("mx.{domain}"),
        policy_type: if policy.is_empty() { "no-policy-found" } else { "sts" }.into(),
        result: result.into(),
        policy_string: policy.into(),
    })
}

/// 2026-12-06 00:00 UTC, an hour boundary.
const T0: u64 = 1_796_515_200;

fn dashboard_reads_come_from_the_hourly_aggregates(store: &dyn Store) {
    let mut events = Vec::new();
    // Hour 0: a.test, 3 passing from .1, 2 rejected from .9 (one with a
    // look-alike finding); hour 1: a.test 1 from .1, b.test 4 from .5.
    for i in 0..3 {
        events.push(Event::Evaluation(evaluation(T0 + i, "192.0.2.1", "a.test", &[("a.test", "pass")], "none")));
    }
    for i in 0..2 {
        let mut e = evaluation(T0 + 100 + i, "192.0.2.9", "a.test", &[], "reject");
        e.dmarc = "fail".into();
        e.spf_aligned = false;
        if i == 0 {
            e.lookalike = vec!["header_from:substitution:a.test".into()];
        }
        events.push(Event::Evaluation(e));
    }
    events.push(Event::Evaluation(evaluation(T0 + 3600, "192.0.2.1", "a.test", &[("a.test", "pass")], "none")));
    // Written in two batches, so the second upserts into the same hour.
    store.write(&events).unwrap();
    let mut more = Vec::new();
    for i in 0..4 {
        more.push(Event::Evaluation(evaluation(T0 + 3700 + i, "192.0.2.5", "b.test", &[], "quarantine")));
    }
    more.push(Event::Evaluation(evaluation(T0 + 5, "192.0.2.1", "a.test", &[("a.test", "pass")], "none")));
    more.push(tls(T0, "a.test", "success", "version: STSv1\nmode: enforce\nmx: mx.a.test\nmax_age: 86400\n"));
    more.push(tls(T0 + 1, "a.test", "certificate-host-mismatch", "version: STSv1\nmode: enforce\nmx: mx.a.test\nmax_age: 86400\n"));
    more.push(tls(T0 + 3601, "a.test", "success", ""));
    more.push(tls(T0 + 3602, "b.test", "success", ""));
    store.write(&more).unwrap();

    let hours = store.dmarc_hourly(None, T0, T0 + 7200).unwrap();
    let a0 = DmarcHour {
        hour: T0,
        domain: "a.test".into(),
        messages: 6,
        dmarc_pass: 4,
        spf_aligned: 4,
        dkim_aligned: 4,
        rejected: 2,
        quarantined: 0,
        lookalike: 1,
    };
    assert_eq!(hours.len(), 3, "{hours:?}");
    assert_eq!(hours[0], a0);
    assert_eq!((hours[1].hour, hours[1].domain.as_str(), hours[1].messages), (T0 + 3600, "a.test", 1));
    assert_eq!((hours[2].domain.as_str(), hours[2].messages, hours[2].quarantined), ("b.test", 4, 4));
    // One domain, and a range that starts inside the first hour.
    let only_b = store.dmarc_hourly(Some("b.test"), T0 + 10, T0 + 7200).unwrap();
    assert_eq!(only_b.len(), 1);
    assert!(store.dmarc_hourly(None, T0 + 7200, T0 + 9000).unwrap().is_empty());

    assert_eq!(store.domains(T0, T0 + 7200).unwrap(), vec![("a.test".to_string(), 7), ("b.test".to_string(), 4)]);
    assert_eq!(store.domains(T0 + 3600, T0 + 7200).unwrap(), vec![("b.test".to_string(), 4), ("a.test".to_string(), 1)]);

    let sources = store.sources("a.test", T0, T0 + 7200, 10).unwrap();
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[0].source_ip, "192.0.2.1".parse::<IpAddr>().unwrap());
    assert_eq!((sources[0].messages, sources[0].dmarc_pass, sources[0].dkim_aligned), (5, 5, 5));
    assert_eq!(sources[0].helo, "mail.sender.test");
    assert_eq!((sources[1].messages, sources[1].dmarc_pass, sources[1].spf_aligned), (2, 0, 0));
    assert_eq!(sources[1].dispositions, BTreeMap::from([("reject".to_string(), 2)]));
    assert_eq!(store.sources("a.test", T0, T0 + 7200, 1).unwrap().len(), 1, "limit");

    let summary = store.tls_summary(T0, T0 + 7200).unwrap();
    let got: Vec<(&str, &str, &str, u64)> =
        summary.iter().map(|t| (t.policy_domain.as_str(), t.policy_type.as_str(), t.result.as_str(), t.sessions)).collect();
    assert_eq!(
        got,
        [
            ("a.test", "no-policy-found", "success", 1),
            ("a.test", "sts", "certificate-host-mismatch", 1),
            ("a.test", "sts", "success", 1),
            ("b.test", "no-policy-found", "success", 1),
        ]
    );
    // The policy text comes back with the report rows, interned once.
    let rows = store.tls_rows("a.test", 0, u64::MAX).unwrap();
    let sts: Vec<&TlsRow> = rows.iter().filter(|r| r.policy_type == "sts").collect();
    assert_eq!(sts.len(), 2);
    assert!(sts.iter().all(|r| r.policy_string.contains("mode: enforce")), "{rows:?}");
}

/// The report of any period counts exactly the evaluations in it: whole
/// hours from the aggregates, the partial first and last from raw rows.
fn report_periods_are_exact_at_any_bounds(store: &dyn Store) {
    let times: Vec<u64> = (0..400).map(|i| T0 + i * 97).collect(); // about 10.8 hours
    let events: Vec<Event> = times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let ip = if i % 3 == 0 { "192.0.2.1" } else { "192.0.2.2" };
            let domain = if i % 2 == 0 { "a.test" } else { "b.test" };
            Event::Evaluation(evaluation(*t, ip, domain, &[(domain, "pass")], "none"))
        })
        .collect();
    for chunk in events.chunks(50) {
        store.write(chunk).unwrap();
    }
    for (from, to) in [(T0, T0 + 86_400), (T0 + 1234, T0 + 30_001), (T0 + 3601, T0 + 3900), (T0 + 7200, T0 + 10_800), (0, u64::MAX)] {
        let want = times.iter().filter(|t| **t >= from && **t < to).count() as u64;
        let report = store.dmarc_report(None, from, to).unwrap();
        let got: u64 = report.iter().flat_map(|d| &d.rows).map(|r| r.count).sum();
        assert_eq!(got, want, "period {from}..{to}");
        // Equal groups from different hours and scans are one row.
        for d in &report {
            let mut keys: Vec<_> = d.rows.iter().map(|r| (&r.source_ip, &r.disposition)).collect();
            keys.dedup();
            assert_eq!(keys.len(), d.rows.len(), "{d:?}");
            assert_eq!(d.policy.as_ref().map(|p| p.domain.as_str()), Some(d.domain.as_str()));
            assert!(d.first >= from);
        }
        let a: u64 = store.dmarc_rows("a.test", from, to).unwrap().iter().map(|r| r.count).sum();
        assert_eq!(a, times.iter().enumerate().filter(|(i, t)| i % 2 == 0 && **t >= from && **t < to).count() as u64);
    }
    let first = store.dmarc_report(Some("b.test"), T0 + 1234, T0 + 30_001).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].first, *times.iter().enumerate().find(|(i, t)| i % 2 == 1 && **t >= T0 + 1234).unwrap().1);
}

/// A database written by the first schema keeps its evaluations and TLS
/// sessions, now also in the aggregates.
#[test]
fn schema_1_data_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(sqlite::FILE);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(super::schema::MIGRATIONS[0]).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        let policy = r#"{"domain":"a.test","p":"reject","sp":"","np":"","adkim":"","aspf":"","testing":false,"rua":["mailto:d@a.test"]}"#;
        for (t, ip) in [(T0 + 1, "192.0.2.1"), (T0 + 2, "192.0.2.1"), (T0 + 4000, "192.0.2.7")] {
            c.execute(
                "INSERT INTO evaluations VALUES (?1, ?2, 'h', 'a.test', 'a.test', 'a.test', 'mfrom', 'pass',
                 '[{\"domain\":\"a.test\",\"selector\":\"s1\",\"result\":\"pass\"}]', 'none', 'pass', 1, 1, 'none', ?3, 1, NULL, '[]')",
                rusqlite::params![t, ip, policy],
            )
            .unwrap();
        }
        c.execute("INSERT INTO tls_sessions VALUES (?1, 'a.test', 'mx.a.test', 'sts', 'success')", [T0]).unwrap();
    }
    let store = Sqlite::open(&path, "n1").unwrap();
    let report = store.dmarc_report(None, T0, T0 + 86_400).unwrap();
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].policy.as_ref().map(|p| p.p.as_str()), Some("reject"));
    assert_eq!(
        report[0].rows.iter().map(|r| (r.source_ip.as_str(), r.count, r.dkim.len())).collect::<Vec<_>>(),
        [("192.0.2.1", 2, 1), ("192.0.2.7", 1, 1)]
    );
    assert_eq!(store.domains(T0, T0 + 86_400).unwrap(), vec![("a.test".to_string(), 3)]);
    assert_eq!(store.tls_summary(T0, T0 + 86_400).unwrap().len(), 1);
    // New writes after the migration intern the same sets again.
    store.write(&[Event::Evaluation(evaluation(T0 + 5, "192.0.2.1", "a.test", &[("a.test", "pass")], "none"))]).unwrap();
    assert_eq!(store.dmarc_report(None, T0, T0 + 86_400).unwrap()[0].rows.len(), 2);
}

async fn recording_off_writes_nothing(store: Arc<dyn Store>) {
    let recorder = start_writer(store.clone(), 90, false, None);
    for i in 0..100 {
        recorder.record(Event::Evaluation(evaluation(unix_now() - i, "192.0.2.2", "c.test", &[], "none")));
        recorder.record(tls(unix_now(), "c.test", "success", ""));
    }
    recorder.flush().await;
    assert_eq!((recorder.written(), recorder.dropped()), (0, 0));
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        assert!(s.dmarc_rows("c.test", 0, u64::MAX).unwrap().is_empty());
        assert!(s.tls_summary(0, u64::MAX).unwrap().is_empty());
    })
    .await
    .unwrap();
}

/// Finished days come from the in-memory cache of the domain's sources,
/// and still count exactly: a late write into a cached day and pruning
/// both drop it.
fn sources_of_finished_days_are_cached_and_exact(store: &dyn Store) {
    let now = unix_now();
    let today = now - now % 86_400;
    let day = |d: u64| today - d * 86_400 + 3600;
    let mut events = Vec::new();
    for d in 1..=5 {
        for i in 0..d {
            events.push(Event::Evaluation(evaluation(day(d) + i, "192.0.2.1", "a.test", &[("a.test", "pass")], "none")));
        }
        events.push(Event::Evaluation(evaluation(day(d), &format!("192.0.2.{}", 10 + d), "a.test", &[], "reject")));
    }
    store.write(&events).unwrap();
    let from = today - 10 * 86_400;
    let first = store.sources("a.test", from, now + 1, 100).unwrap();
    assert_eq!(first.len(), 6);
    assert_eq!((first[0].messages, first[0].dmarc_pass), (15, 15));
    assert_eq!(first[1].dispositions, BTreeMap::from([("reject".to_string(), 1)]));
    // Again, from the cache: the same.
    assert_eq!(store.sources("a.test", from, now + 1, 100).unwrap(), first);
    // A range starting mid-day counts that day's hours from the table.
    let part = store.sources("a.test", day(5) + 3600, now + 1, 100).unwrap();
    assert_eq!(part[0].messages, 10, "day 5's hour is before the range: {part:?}");
    // Today's traffic and a late write into a finished day both count.
    store.write(&[Event::Evaluation(evaluation(now, "192.0.2.1", "a.test", &[("a.test", "pass")], "none"))]).unwrap();
    store.write(&[Event::Evaluation(evaluation(day(3), "192.0.2.1", "a.test", &[("a.test", "pass")], "none"))]).unwrap();
    assert_eq!(store.sources("a.test", from, now + 1, 100).unwrap()[0].messages, 17);
    store.prune(day(2)).unwrap();
    let after = store.sources("a.test", from, now + 1, 100).unwrap();
    assert_eq!(after[0].messages, 1 + 2 + 1, "days 1 and 2 and today; days 3 to 5 pruned: {after:?}");
}

/// Received reports about a domain, per day: each on the day of its
/// period's middle, passing rows where DKIM or SPF evaluated `pass`.
fn reported_days_sum_received_reports(store: &dyn Store) {
    let row = |count: u64, dkim: &str, spf: &str| ReportRow {
        source_ip: "192.0.2.1".into(),
        count,
        disposition: "none".into(),
        dkim_evaluated: dkim.into(),
        spf_evaluated: spf.into(),
        reasons: vec![],
        header_from: "a.test".into(),
        envelope_from: "a.test".into(),
        dkim: vec![],
        spf: vec![],
    };
    let report = |id: &str, begin: u64, domain: &str, rows: Vec<ReportRow>| IngestedReport {
        kind: ReportKind::Dmarc,
        org_name: "receiver.test".into(),
        report_id: id.into(),
        email: "dmarc@receiver.test".into(),
        begin,
        end: begin + 86_399,
        policy_domain: domain.into(),
        policy: None,
        rows,
        tls: vec![],
    };
    store
        .insert_reports(&[
            report("1", T0, "a.test", vec![row(7, "pass", "fail"), row(3, "fail", "fail")]),
            // Starts at 07:00 UTC: its middle is still on day two.
            report("2", T0 + 86_400 + 7 * 3600, "a.test", vec![row(4, "fail", "pass")]),
            report("3", T0, "b.test", vec![row(9, "pass", "pass")]),
        ])
        .unwrap();
    let days = store.reported_days("a.test", T0, T0 + 3 * 86_400).unwrap();
    assert_eq!(
        days,
        vec![
            ReportedDay { day: T0, reports: 1, messages: 10, dmarc_pass: 7 },
            ReportedDay { day: T0 + 86_400, reports: 1, messages: 4, dmarc_pass: 4 },
        ]
    );
    assert_eq!(store.reported_days("a.test", T0 + 86_400, T0 + 3 * 86_400).unwrap().len(), 1);
    assert!(store.reported_days("c.test", 0, u64::MAX).unwrap().is_empty());
    let sources = store.reported_sources("a.test", T0, T0 + 3 * 86_400, 10).unwrap();
    assert_eq!(
        sources,
        vec![ReportedSource {
            source_ip: "192.0.2.1".into(),
            messages: 14,
            dkim_pass: 7,
            spf_pass: 4,
            dmarc_pass: 11,
            reporters: vec!["receiver.test".into()]
        }]
    );
}

fn message(time: u64, id: &str) -> Event {
    Event::Timeline(Box::new(TimelineEvent::Message(timeline::MessageRecord {
        time,
        event_id: id.into(),
        queue_id: Some(id.into()),
        action: "accepted".into(),
        inbound: true,
        ..Default::default()
    })))
}

fn nodes_count_messages(store: &dyn Store) {
    store.write(&[message(T0, "q1"), message(T0 + 1, "q2"), message(T0 + 7200, "q3")]).unwrap();
    assert_eq!(store.nodes(T0, T0 + 3600).unwrap(), vec![("n1".to_string(), 2)]);
    assert!(store.nodes(T0 + 10_000, T0 + 20_000).unwrap().is_empty());
    let attempt = |code: u16, recipients: u32| {
        Event::Delivery(DeliveryAttempt {
            time: T0 + 5,
            queue_id: "q1".into(),
            recipient_domain: "far.test".into(),
            recipients,
            mx_host: String::new(),
            tls: false,
            reply_code: code,
            reply: String::new(),
        })
    };
    store.write(&[attempt(250, 2), attempt(451, 1), attempt(0, 1), attempt(550, 3)]).unwrap();
    let want = NodeFigures { node: "n1".into(), received: 2, accepted: 2, delivered: 2, deferred: 2, bounced: 3, ..Default::default() };
    assert_eq!(store.node_figures(T0, T0 + 3600).unwrap(), vec![want]);
    assert!(store.node_figures(T0 + 10_000, T0 + 20_000).unwrap().is_empty());
    // The message search's node filter.
    let search = |node: &str, text: &str| {
        store.find_messages(&MessageQuery { node: node.into(), text: text.into(), limit: 10, ..Default::default() })
    };
    assert_eq!(search("n1", "").unwrap().len(), 3);
    assert_eq!(search("n1", "q2").unwrap().len(), 1);
    assert!(search("n2", "").unwrap().is_empty());
    assert!(search("n2", "q2").unwrap().is_empty());
    // One node alone always holds the report lock; a second try while the
    // first is held is refused only where nodes share the store.
    assert!(store.try_report_lock().unwrap().is_some());
}
