//! Unit tests of the in-memory counter: window edges, burst, all-or-nothing
//! asks, the once-per-window report and the memory bound.

use super::*;

fn rate(text: &str, burst: Option<u64>) -> Rate {
    Rate::parse(text, burst).expect("a valid rate")
}

fn one(c: &MemoryCounter, r: &Rate, now: u64) -> Result<(), Refused> {
    c.acquire_at(&[Ask { key: "k", rate: r }], 1, now)
}

#[test]
fn at_most_n_in_any_window_and_the_slot_frees_at_the_edge() {
    let c = MemoryCounter::new();
    let r = rate("5/10s", None);
    for i in 0..5 {
        assert!(one(&c, &r, 1000 + 100 * i).is_ok(), "send {i}");
    }
    let refused = one(&c, &r, 1500).unwrap_err();
    // The first send (at 1000 ms) leaves the window at 11000 ms.
    assert_eq!(refused.retry_after, Duration::from_millis(9_500));
    assert!(one(&c, &r, 10_999).is_err(), "just before the edge");
    assert!(one(&c, &r, 11_000).is_ok(), "at the edge");
    assert!(one(&c, &r, 11_001).is_err(), "only the first send left");
    assert!(one(&c, &r, 11_100).is_ok(), "the second leaves at 11100");
}

#[test]
fn no_two_n_across_a_boundary() {
    // Fixed buckets would allow 5 at 9.9 s and 5 more at 10.1 s.
    let c = MemoryCounter::new();
    let r = rate("5/10s", None);
    for _ in 0..5 {
        assert!(one(&c, &r, 9_900).is_ok());
    }
    assert!(one(&c, &r, 10_100).is_err());
    assert!(one(&c, &r, 19_000).is_err());
    assert!(one(&c, &r, 19_910).is_ok());
}

#[test]
fn burst_allows_that_many_at_once_then_the_steady_rate() {
    let c = MemoryCounter::new();
    // Steady: one per second; three at once.
    let r = rate("10/10s", Some(3));
    for _ in 0..3 {
        assert!(one(&c, &r, 0).is_ok());
    }
    let refused = one(&c, &r, 0).unwrap_err();
    assert_eq!(refused.retry_after, Duration::from_secs(1));
    assert!(one(&c, &r, 999).is_err());
    assert!(one(&c, &r, 1000).is_ok());
    assert!(one(&c, &r, 1500).is_err());
    // After a quiet spell the bucket is full again, but never above burst.
    for _ in 0..3 {
        assert!(one(&c, &r, 60_000).is_ok());
    }
    assert!(one(&c, &r, 60_000).is_err());
}

#[test]
fn the_window_still_caps_a_bucket_that_refills() {
    // 4 per 10 s with a burst of 2: the bucket alone would let 2 + 4 pass
    // in 10 s; the window keeps it at 4.
    let c = MemoryCounter::new();
    let r = rate("4/10s", Some(2));
    let mut passed = 0;
    for t in (0..10_000).step_by(100) {
        if one(&c, &r, t).is_ok() {
            passed += 1;
        }
    }
    assert_eq!(passed, 4);
}

#[test]
fn asks_are_all_or_nothing() {
    let c = MemoryCounter::new();
    let wide = rate("100/hour", None);
    let narrow = rate("2/hour", None);
    let asks = [Ask { key: "user:a", rate: &wide }, Ask { key: "net:n", rate: &narrow }];
    assert!(c.acquire_at(&asks, 1, 0).is_ok());
    assert!(c.acquire_at(&asks, 1, 1).is_ok());
    let refused = c.acquire_at(&asks, 1, 2).unwrap_err();
    assert_eq!(refused.ask, 1);
    // The refused send was not counted against the user: 98 more fit.
    let user_only = [Ask { key: "user:a", rate: &wide }];
    assert!(c.acquire_at(&user_only, 98, 3).is_ok());
    assert!(c.acquire_at(&user_only, 1, 4).is_err());
}

#[test]
fn a_refusal_is_reported_once_per_window() {
    let c = MemoryCounter::new();
    let r = rate("1/10s", None);
    assert!(one(&c, &r, 0).is_ok());
    assert!(one(&c, &r, 1).unwrap_err().first_in_window);
    assert!(!one(&c, &r, 2).unwrap_err().first_in_window);
    assert!(!one(&c, &r, 9_000).unwrap_err().first_in_window);
    assert!(one(&c, &r, 10_020).is_ok());
    assert!(one(&c, &r, 10_030).unwrap_err().first_in_window);
}

#[test]
fn more_than_the_limit_at_once_never_passes() {
    let c = MemoryCounter::new();
    let r = rate("3/s", None);
    assert!(c.acquire_at(&[Ask { key: "k", rate: &r }], 4, 0).is_err());
    assert!(c.acquire_at(&[Ask { key: "k", rate: &r }], 3, 0).is_ok());
}

#[test]
fn idle_keys_are_dropped_and_entries_are_bounded() {
    let c = MemoryCounter::new();
    let r = rate("1000000/10s", None);
    // A million sends over the window: at most 1025 entries.
    for t in 0..20_000u64 {
        c.acquire_at(&[Ask { key: "busy", rate: &r }], 1, t / 2).unwrap();
    }
    {
        let state = c.state.lock().unwrap();
        assert!(state.keys["busy"].sends.len() <= 1025, "{}", state.keys["busy"].sends.len());
    }
    let short = rate("5/s", None);
    for i in 0..SWEEP_EVERY {
        let key = format!("k{i}");
        c.acquire_at(&[Ask { key: &key, rate: &short }], 1, 100_000).unwrap();
    }
    assert!(c.keys() > 4000);
    // Long after every window: the next sweep drops them all.
    for i in 0..SWEEP_EVERY {
        c.acquire_at(&[Ask { key: "late", rate: &short }], 0, 200_000 + i).unwrap();
    }
    assert!(c.keys() <= 2, "{}", c.keys());
}
