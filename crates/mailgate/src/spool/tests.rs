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
    mailgate_testkit::process::write_after_records(&seg, b"MGR1\x01\xff\xff");
    let (spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].reason, "incomplete record at end of file");
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
    mailgate_testkit::process::write_after_records(&segment_path(dir.path(), 2), b"garbage");
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

/// Stages `header` + `body` and stores it with `prefix` in place of `header`.
async fn store_big(spool: &Spool, prefix: &[u8], header: &[u8], body: &[u8]) -> QueueId {
    let id = spool.new_id();
    let mut staged = spool.stage().unwrap();
    staged.write(header).unwrap();
    for chunk in body.chunks(7000) {
        staged.write(chunk).unwrap();
    }
    spool.store_staged(&id, envelope(), prefix, staged, header.len() as u64).await.unwrap();
    id
}

fn msg_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("msg")).unwrap().count()
}

#[tokio::test]
async fn staged_message_is_read_back_streamed_and_freed_on_removal() {
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| b"abcdefgh\r\n"[(i % 10) as usize]).collect();
    let id = {
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        let id = store_big(&spool, b"Received: x\r\nSubject: new\r\n\r\n", b"Subject: old\r\n\r\n", &body).await;
        let expected = [&b"Received: x\r\nSubject: new\r\n\r\n"[..], &body].concat();
        assert_eq!(spool.read_data(&id).unwrap().unwrap(), expected);
        assert_eq!(spool.get(&id).unwrap().size, expected.len() as u64);
        // Read in small pieces, as delivery does.
        let mut content = spool.open_content(&id).unwrap().unwrap();
        assert!(content.in_memory().is_none());
        let mut got = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            let n = std::io::Read::read(&mut content, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, expected);
        // Only the header block for a notice about a big message.
        assert_eq!(spool.read_limited(&id, 1000).unwrap().unwrap(), b"Received: x\r\nSubject: new\r\n\r\n");
        assert_eq!(msg_files(dir.path()), 1);
        assert_eq!(std::fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
        id
    };
    // Across a restart, then removal frees the file at once.
    let (spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((report.messages, report.orphans_removed), (1, 0));
    assert_eq!(spool.read_data(&id).unwrap().unwrap().len(), 29 + body.len());
    assert!(spool.remove(&id).await.unwrap());
    assert_eq!(msg_files(dir.path()), 0);
    drop(spool);
    let (spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.messages, 0);
    assert!(spool.get(&id).is_none());
}

#[tokio::test]
async fn abandoned_staging_files_and_orphans_are_removed_missing_files_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, lost) = {
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        // A transaction that never finished leaves nothing behind...
        let mut staged = spool.stage().unwrap();
        staged.write(b"half a message").unwrap();
        drop(staged);
        assert_eq!(std::fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
        // ...nor does a crash in the middle of one (file left in staging/).
        let staged = spool.stage().unwrap();
        std::mem::forget(staged);
        let kept = store_big(&spool, b"H: 1\r\n\r\n", b"H: 0\r\n\r\n", &[b'k'; 1000]).await;
        let lost = store_big(&spool, b"H: 1\r\n\r\n", b"H: 0\r\n\r\n", &[b'l'; 1000]).await;
        (kept, lost)
    };
    std::fs::write(dir.path().join("msg").join("00000000000000000001"), b"no record names me").unwrap();
    std::fs::remove_file(dir.path().join("msg").join(lost.as_str())).unwrap();
    let (spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(std::fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
    assert_eq!(report.orphans_removed, 1);
    assert_eq!(report.missing_files, vec![lost.to_string()]);
    assert_eq!(report.messages, 1);
    assert!(spool.read_data(&kept).unwrap().is_some());
    assert_eq!(msg_files(dir.path()), 1);
}

#[tokio::test]
async fn compaction_moves_an_external_record_and_keeps_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![b'x'; 700 * 1024];
    let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let keep = store_big(&spool, b"P: 1\r\n\r\n", b"H: 0\r\n\r\n", &[b'b'; 200_000]).await;
    for _ in 0..4 {
        let id = spool.new_id();
        spool.store(&id, envelope(), &big).await.unwrap();
        spool.store(&spool.new_id(), envelope(), b"x\r\n").await.unwrap();
        spool.remove(&id).await.unwrap();
    }
    assert!(segment_path(dir.path(), 1).exists());
    assert_eq!(spool.compact_oldest(100).await.unwrap(), 2, "the external record and one small message");
    assert!(!segment_path(dir.path(), 1).exists());
    let data = spool.read_data(&keep).unwrap().unwrap();
    assert_eq!(data.len(), 8 + 200_000);
    drop(spool);
    let (spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.orphans_removed, 0);
    assert_eq!(spool.read_data(&keep).unwrap().unwrap(), data);
}

/// Pages of `path` in `range` that read as zeros, and its allocated octets.
fn zero_pages_and_allocated(path: &std::path::Path, from: usize, to: usize) -> (usize, u64) {
    use std::os::unix::fs::MetadataExt;
    let bytes = std::fs::read(path).unwrap();
    let first = from.div_ceil(4096) * 4096;
    let zero = bytes[first..to].chunks_exact(4096).filter(|c| c.iter().all(|&b| b == 0)).count();
    (zero, std::fs::metadata(path).unwrap().blocks() * 512)
}

#[tokio::test]
async fn removing_a_small_message_punches_its_content_out_and_recovery_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let body = |i: u8| vec![b'a' + i; 40 * 1024];
    let mut ids = Vec::new();
    {
        let (spool, _) = Spool::open(dir.path(), 1 << 24).unwrap();
        for i in 0..3 {
            let id = spool.new_id();
            spool.store(&id, envelope(), &body(i)).await.unwrap();
            ids.push(id);
        }
        let entry = spool.shared.lock().index.get(&ids[1]).copied().unwrap();
        let seg = segment_path(dir.path(), u64::from(entry.segment));
        let (from, to) = (entry.data_offset as usize, (entry.data_offset + u64::from(entry.data_len)) as usize);
        let (zero_before, allocated_before) = zero_pages_and_allocated(&seg, from, to);
        assert_eq!(zero_before, 0);
        assert!(spool.remove(&ids[1]).await.unwrap());
        let (zero_after, allocated_after) = zero_pages_and_allocated(&seg, from, to);
        if spool.can_punch.load(Ordering::Relaxed) {
            // At least 9 of the 10+ whole pages inside 40 KiB of content.
            assert!(zero_after >= 9, "{zero_after} zero pages");
            assert!(allocated_after + 9 * 4096 <= allocated_before, "{allocated_before} -> {allocated_after} octets");
        } else {
            eprintln!("skipped the punch check: the file system of {} cannot punch holes", dir.path().display());
        }
        // Its neighbours are intact.
        assert_eq!(spool.read_data(&ids[0]).unwrap().unwrap(), body(0));
        assert_eq!(spool.read_data(&ids[2]).unwrap().unwrap(), body(2));
    }
    let (spool, report) = Spool::open(dir.path(), 1 << 24).unwrap();
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(report.messages, 2);
    assert!(spool.get(&ids[1]).is_none());
    assert_eq!(spool.read_data(&ids[0]).unwrap().unwrap(), body(0));
    assert_eq!(spool.read_data(&ids[2]).unwrap().unwrap(), body(2));
}

#[tokio::test]
async fn a_live_record_with_zeroed_content_is_still_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (hit, after) = {
        let (spool, _) = Spool::open(dir.path(), 1 << 24).unwrap();
        let hit = spool.new_id();
        spool.store(&hit, envelope(), &[b'h'; 20 * 1024]).await.unwrap();
        let after = spool.new_id();
        spool.store(&after, envelope(), b"after\r\n").await.unwrap();
        (hit, after)
    };
    // What a punch looks like, but no tombstone says the message is gone.
    let seg = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[8192..12288].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    let (spool, report) = Spool::open(dir.path(), 1 << 24).unwrap();
    assert_eq!(report.corrupt.len(), 1, "{report:?}");
    assert!(report.corrupt[0].reason.contains("checksum"), "{report:?}");
    assert!(spool.get(&hit).is_none());
    // The record after it is framed and intact: rescued.
    assert_eq!(report.corrupt[0].rescued, 1);
    assert_eq!(spool.read_data(&after).unwrap().unwrap(), b"after\r\n");
}

#[tokio::test]
async fn recovery_reads_records_across_and_larger_than_its_window() {
    let dir = tempfile::tempdir().unwrap();
    // 1.5 MiB records straddle the 4 MiB read window; a 9 MiB one is
    // larger than the window.
    let body = |i: usize| vec![b'a' + i as u8; if i == 4 { 9 << 20 } else { 3 << 19 }];
    let mut ids = Vec::new();
    {
        let (spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
        for i in 0..8 {
            let id = spool.new_id();
            spool.store(&id, envelope(), &body(i)).await.unwrap();
            ids.push(id);
        }
        assert!(spool.remove(&ids[6]).await.unwrap());
    }
    let (spool, report) = Spool::open(dir.path(), 1 << 30).unwrap();
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(report.messages, 7);
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != 6) {
        assert_eq!(spool.read_data(id).unwrap().unwrap(), body(i), "message {i}");
    }
}

#[tokio::test]
async fn due_after_answers_the_next_keys_by_due_time_then_id() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let mut ids = Vec::new();
    for _ in 0..6 {
        let id = spool.new_id();
        spool.store(&id, envelope(), b"x\r\n").await.unwrap();
        ids.push(id);
    }
    // Due times 0, 50, 0, 50, 0, 10 (ids ascending within a due time).
    for (i, due) in [0, 50, 0, 50, 0, 10].into_iter().enumerate() {
        spool.set_due(&ids[i], due);
        assert_eq!(spool.due(&ids[i]), Some(due));
    }
    let mut want: Vec<(u64, QueueId)> = ids.iter().map(|id| (spool.due(id).unwrap(), id.clone())).collect();
    want.sort();
    assert_eq!(spool.due_after(None, 100), want);
    assert_eq!(spool.due_after(None, 2), want[..2]);
    assert_eq!(spool.due_after(Some(&want[2]), 2), want[3..5]);
    assert_eq!(spool.due_after(Some(&want[5]), 2), vec![]);
    // A removed message is gone from the index's answers.
    assert!(spool.remove(&ids[5]).await.unwrap());
    assert_eq!(spool.due(&ids[5]), None);
    assert!(!spool.due_after(None, 100).iter().any(|(_, id)| *id == ids[5]));
}

#[tokio::test]
async fn segments_with_no_live_message_are_deleted_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for _ in 0..3 {
            let id = spool.new_id();
            spool.store(&id, envelope(), b"delivered\r\n").await.unwrap();
            spool.remove(&id).await.unwrap();
        }
        // The active segment stays while it is written to.
        assert!(segment_path(dir.path(), 1).exists());
    }
    // A drained queue, stopped or crashed: nothing on disk needs segment 1.
    let (_spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.messages, 0);
    assert!(!segment_path(dir.path(), 1).exists(), "an empty segment outlived the restart");
}

#[tokio::test]
async fn a_new_message_envelope_is_kept_until_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let id = spool.new_id();
    spool.store(&id, envelope(), b"x\r\n").await.unwrap();
    assert!(spool.shared.lock().fresh.contains_key(&id));
    let mut changed = spool.claim(&id).unwrap().envelope;
    assert_eq!(changed, envelope());
    // Claimed: given up, so it is read from disk from now on.
    assert!(!spool.shared.lock().fresh.contains_key(&id));
    assert_eq!(spool.claim(&id).unwrap().envelope, envelope());
    changed.recipients[0].attempts += 3;
    assert!(spool.update(&id, changed.clone()).await.unwrap());
    assert_eq!(spool.claim(&id).unwrap().envelope, changed);
    let other = spool.new_id();
    spool.store(&other, envelope(), b"y\r\n").await.unwrap();
    let mut unclaimed = envelope();
    unclaimed.recipients[0].attempts = 7;
    assert!(spool.update(&other, unclaimed.clone()).await.unwrap());
    // Changed before the scheduler looked: the kept copy went with it.
    assert!(!spool.shared.lock().fresh.contains_key(&other));
    assert_eq!(spool.claim(&other).unwrap().envelope, unclaimed);
    assert!(spool.remove(&other).await.unwrap());
    assert!(spool.claim(&other).is_none());
}

#[tokio::test]
async fn kept_envelopes_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), 1 << 24).unwrap();
    let mut last = None;
    for _ in 0..FRESH_MAX + 50 {
        let id = spool.new_id();
        spool.store(&id, envelope(), b"x\r\n").await.unwrap();
        last = Some(id);
    }
    assert_eq!(spool.shared.lock().fresh.len(), FRESH_MAX);
    // One past the bound is read back from disk, the same.
    let last = last.unwrap();
    assert!(!spool.shared.lock().fresh.contains_key(&last));
    assert_eq!(spool.claim(&last).unwrap().envelope, envelope());
}

// The three tests below make the writer keep zeros ahead of its records
// whatever file system holds the test's directory.

#[tokio::test]
async fn zeros_written_ahead_end_the_segment_at_replay() {
    let dir = tempfile::tempdir().unwrap();
    let seg = segment_path(dir.path(), 1);
    let ids = {
        let (spool, _) = Spool::open_with(dir.path(), 1 << 20, true).unwrap();
        let mut ids = Vec::new();
        for i in 0..3 {
            let id = spool.new_id();
            spool.store(&id, envelope(), format!("message {i}\r\n").as_bytes()).await.unwrap();
            ids.push(id);
        }
        ids
    };
    let records = mailgate_testkit::process::segment_records(&seg).len() as u64;
    let len = std::fs::metadata(&seg).unwrap().len();
    // 1 MiB segments: chunks of 64 KiB, at least two of them ahead.
    assert!((records + 128 * 1024..records + 192 * 1024).contains(&len), "{len} bytes for {records} bytes of records");
    let (spool, report) = Spool::open_with(dir.path(), 1 << 20, true).unwrap();
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(spool.len(), 3);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(spool.read_data(id).unwrap().unwrap(), format!("message {i}\r\n").as_bytes());
    }
}

#[tokio::test]
async fn a_record_cut_short_inside_the_zeros_is_an_incomplete_tail() {
    let dir = tempfile::tempdir().unwrap();
    let seg = segment_path(dir.path(), 1);
    let (kept, torn) = {
        let (spool, _) = Spool::open_with(dir.path(), 1 << 20, true).unwrap();
        let id = spool.new_id();
        spool.store(&id, envelope(), b"keep me\r\n").await.unwrap();
        (id, spool.new_id())
    };
    // What a kill -9 in the middle of the next write leaves: the first part
    // of a record, then the zeros that were there.
    let (whole, _) = record::encode_message(&torn, &envelope(), &[b'x'; 9000]);
    mailgate_testkit::process::write_after_records(&seg, &whole[..4096]);
    let (spool, report) = Spool::open_with(dir.path(), 1 << 20, true).unwrap();
    assert_eq!(report.corrupt.len(), 1, "{:?}", report.corrupt);
    assert_eq!(report.corrupt[0].reason, "incomplete record at end of file");
    assert_eq!(report.corrupt[0].rescued, 1);
    assert_eq!(spool.len(), 1);
    assert_eq!(spool.read_data(&kept).unwrap().unwrap(), b"keep me\r\n");
}

#[tokio::test]
async fn a_full_segment_is_cut_back_to_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open_with(dir.path(), 1 << 20, true).unwrap();
    let big = vec![b'x'; 300 * 1024];
    // Four of them pass 1 MiB: the fifth starts segment 2.
    for _ in 0..5 {
        let id = spool.new_id();
        spool.store(&id, envelope(), &big).await.unwrap();
    }
    let first = segment_path(dir.path(), 1);
    assert!(segment_path(dir.path(), 2).exists());
    let records = mailgate_testkit::process::segment_records(&first).len() as u64;
    assert!(records > 1 << 20);
    assert_eq!(std::fs::metadata(&first).unwrap().len(), records);
}

#[tokio::test]
async fn no_zeros_are_written_ahead_where_they_would_not_pay() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open_with(dir.path(), 1 << 20, false).unwrap();
    let id = spool.new_id();
    spool.store(&id, envelope(), b"no zeros\r\n").await.unwrap();
    let seg = segment_path(dir.path(), 1);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), mailgate_testkit::process::segment_records(&seg).len() as u64);
}
