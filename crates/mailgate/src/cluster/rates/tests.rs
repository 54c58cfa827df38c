use super::*;
use crate::cluster::testpg::TestPg;

#[test]
fn the_wait_is_until_the_estimate_has_room() {
    // 10 per 100 s window (ms below).
    let w = 100_000;
    assert_eq!(wait_ms(9, 0, 1, 10, w, 10_000), None);
    // Full now: this window must end (90 s), then 1/10 of it slide out (10 s).
    assert_eq!(wait_ms(10, 0, 1, 10, w, 10_000), Some(100_000));
    // Full from the previous window: its share must drop from 10 to 9.
    assert_eq!(wait_ms(0, 10, 1, 10, w, 0), Some(10_000));
    assert_eq!(wait_ms(0, 10, 1, 10, w, 10_000), None);
    // More than the limit at once: a whole window, never.
    assert_eq!(wait_ms(0, 0, 11, 10, w, 0), Some(w));
}

fn rate(text: &str) -> Rate {
    Rate::parse(text, None).unwrap()
}

/// Waits until `node` is synced with the database.
fn synced(node: &SharedRates) {
    assert!(node.wait_synced(Duration::from_secs(10)), "the listener never synced");
}

#[test]
fn two_nodes_share_one_limit_and_fall_back_to_their_own_counts() {
    let pg = TestPg::start();
    let (a, b) = (SharedRates::start(&pg.url).unwrap(), SharedRates::start(&pg.url).unwrap());
    synced(&a);
    synced(&b);
    let r = rate("5/hour");
    let ask = [Ask { key: "user:app", rate: &r }];
    let mut admitted = 0;
    let mut refused = Vec::new();
    for i in 0..12 {
        let node = if i % 2 == 0 { &a } else { &b };
        match node.acquire(&ask, 1) {
            Ok(()) => admitted += 1,
            Err(e) => refused.push(e),
        }
        // The other node hears of it within milliseconds.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(admitted, 5, "5/hour in total over both nodes, not 5 each");
    assert!(refused.iter().all(|e| e.ask == 0 && e.retry_after > Duration::ZERO));
    assert_eq!(refused.iter().filter(|e| e.first_in_window).count(), 2, "one first refusal per node");
    // Another key is untouched; node B hears of node A's send within
    // milliseconds (the window the module header allows over-admission in).
    let started = Instant::now();
    assert!(a.acquire(&[Ask { key: "user:other", rate: &r }], 1).is_ok());
    let now_s = crate::cluster::now();
    loop {
        let seen =
            b.inner.view.lock().unwrap().keys.get(&("rate:user:other".to_string(), 3600)).map_or(0, |s| s.total(now_s - now_s % 3600));
        if seen == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "node B never heard of node A's send");
        std::thread::sleep(Duration::from_millis(1));
    }
    eprintln!("node B saw node A's send after {:?}", started.elapsed());

    // A node started later reads the counts at once.
    let c = SharedRates::start(&pg.url).unwrap();
    synced(&c);
    assert!(c.acquire(&ask, 1).is_err(), "node C knows the key is spent");

    pg.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.is_shared() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!a.is_shared(), "the listener noticed the database went away");
    // Own counts only: node A's 3 (of 5) leave room for 2 more.
    assert!(a.acquire(&ask, 1).is_ok());
    assert!(a.acquire(&ask, 1).is_ok());
    assert!(a.acquire(&ask, 1).is_err(), "node A's own 5 are its limit");

    pg.start_again();
    synced(&a);
    synced(&b);
    // The 2 sent during the outage reach the database.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = b.inner.view.lock().unwrap();
        let now_s = crate::cluster::now();
        let total = view.keys.get(&("rate:user:app".to_string(), 3600)).map_or(0, |s| s.total(now_s - now_s % 3600));
        drop(view);
        if total >= 7 {
            break;
        }
        assert!(Instant::now() < deadline, "node B sees {total} of the 7 sends");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(b.acquire(&ask, 1).is_err());
}
