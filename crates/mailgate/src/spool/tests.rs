use super::record::tests::envelope;
use super::*;

#[tokio::test]
async fn store_recover_remove() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    {
        let (spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(report.messages, 0);
        for i in 0..5 {
            let id = spool.new_id();
            spool.store(&id, envelope(), format!("msg {i}\r\n").as_bytes()).await.unwrap();
            ids.push(id);
        }
        assert!(spool.remove(&ids[0]).await.unwrap());
        assert!(!spool.remove(&ids[0]).await.unwrap());
    }
    let (spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.messages, 4);
    assert!(report.corrupt.is_empty());
    assert_eq!(spool.read_data(&ids[3]).unwrap().unwrap(), b"msg 3\r\n");
    assert!(spool.get(&ids[0]).is_none());
}

#[tokio::test]
async fn concurrent_stores_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), 1 << 24).unwrap();
    let spool = Arc::new(spool);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let id = spool.new_id();
            spool.store(&id, envelope(), &[b'x'; 5000]).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (fsyncs, records) = spool.sync_stats();
    assert_eq!(records, 200);
    assert!(fsyncs < records, "{fsyncs} fsyncs for {records} records");
}

#[tokio::test]
async fn torn_tail_is_moved_aside_and_intact_messages_kept() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        let id = spool.new_id();
        spool.store(&id, envelope(), b"keep me\r\n").await.unwrap();
        id
    };
    let seg = segment_path(dir.path(), 1);
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, b"MGR1\x01\xff\xff").unwrap();
    drop(f);
    let (spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].rescued, 1);
    assert!(report.corrupt[0].moved_to.exists());
    assert!(!seg.exists());
    assert_eq!(spool.read_data(&id).unwrap().unwrap(), b"keep me\r\n");
    drop(spool);
    // A second restart finds everything clean.
    let (spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert!(report.corrupt.is_empty());
    assert_eq!(spool.len(), 1);
}

#[tokio::test]
async fn empty_old_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let big = vec![b'x'; 600 * 1024];
    let a = spool.new_id();
    spool.store(&a, envelope(), &big).await.unwrap();
    let b = spool.new_id();
    spool.store(&b, envelope(), &big).await.unwrap();
    // The third store starts segment 2 (the first passed 1 MiB).
    let c = spool.new_id();
    spool.store(&c, envelope(), &big).await.unwrap();
    assert!(segment_path(dir.path(), 1).exists());
    spool.remove(&a).await.unwrap();
    spool.remove(&b).await.unwrap();
    assert!(!segment_path(dir.path(), 1).exists());
    assert_eq!(spool.read_data(&c).unwrap().unwrap().len(), big.len());
}

#[tokio::test]
async fn update_in_a_damaged_segment_survives_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        let id = spool.new_id();
        spool.store(&id, envelope(), b"data\r\n").await.unwrap();
        id
    };
    {
        // A new start writes to segment 2: two updates for a message in 1.
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for attempts in 1..=2 {
            let mut env = spool.get(&id).unwrap().envelope;
            env.recipients[0].attempts = attempts;
            env.recipients[0].status = mailgate_core::RecipientStatus::Deferred;
            spool.update(&id, env).await.unwrap();
        }
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(segment_path(dir.path(), 2)).unwrap();
    std::io::Write::write_all(&mut f, b"garbage").unwrap();
    drop(f);
    for _ in 0..2 {
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        let q = spool.get(&id).expect("message still queued");
        assert_eq!(q.envelope.recipients[0].attempts, 2);
        assert_eq!(spool.read_data(&id).unwrap().unwrap(), b"data\r\n");
    }
}

#[tokio::test]
async fn compaction_frees_old_segments_held_by_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![b'x'; 700 * 1024];
    let keep = {
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        let keep = spool.new_id();
        spool.store(&keep, envelope(), b"long-deferred\r\n").await.unwrap();
        // Fill and empty a few more segments behind it.
        for _ in 0..4 {
            let id = spool.new_id();
            spool.store(&id, envelope(), &big).await.unwrap();
            spool.remove(&id).await.unwrap();
        }
        assert!(segment_path(dir.path(), 1).exists(), "segment 1 is pinned by one message");
        assert_eq!(spool.compact_oldest(100).await.unwrap(), 1);
        assert!(!segment_path(dir.path(), 1).exists());
        keep
    };
    let (spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.messages, 1);
    assert_eq!(spool.read_data(&keep).unwrap().unwrap(), b"long-deferred\r\n");
}
