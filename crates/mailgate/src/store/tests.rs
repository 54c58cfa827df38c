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
    let store = Sqlite::open(&dir.path().join(sqlite::FILE)).unwrap();
    (dir, store)
}

#[test]
fn evaluations_group_into_report_rows() {
    let (_dir, store) = open();
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

#[test]
fn reported_marks_and_retention() {
    let (_dir, store) = open();
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

#[test]
fn reports_are_stored_once_and_read_back() {
    let (dir, store) = open();
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
    drop(store);
    // Reopening runs no migration twice and keeps the data.
    let again = Sqlite::open(&dir.path().join(sqlite::FILE)).unwrap();
    assert!(again.get_report(id).unwrap().is_some());
}

#[tokio::test]
async fn recorder_batches_and_flushes() {
    let (_dir, store) = open();
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(store);
    let recorder = start_writer(store.clone(), 90);
    for i in 0..10_000 {
        recorder.record(Event::Evaluation(evaluation(unix_now() - 10 + (i % 5), "192.0.2.2", "c.test", &[], "none")));
    }
    recorder.flush().await;
    assert_eq!(recorder.written(), 10_000);
    assert_eq!(recorder.dropped(), 0);
    let rows = store.dmarc_rows("c.test", 0, u64::MAX).unwrap();
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 10_000);
}
