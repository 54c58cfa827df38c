//! Unit tests of the SRS codec: round trips, SRS1, case, expiry, forgery.

use super::*;

const KEY: &[u8] = b"the secret";
const DAY: u64 = 20_428; // 2025-12-06

fn secrets() -> Vec<Vec<u8>> {
    vec![KEY.to_vec()]
}

#[test]
fn srs0_round_trip() {
    let local = forward(KEY, "alice", "origin.example", DAY);
    assert!(local.starts_with("SRS0="), "{local}");
    let parts: Vec<&str> = local.splitn(5, '=').collect();
    assert_eq!(parts.len(), 5, "{local}");
    assert_eq!(parts[1].len(), 4);
    assert_eq!(parts[2], timestamp(DAY));
    assert_eq!(&parts[3..], ["origin.example", "alice"]);
    assert_eq!(reverse(&secrets(), &local, DAY, 21), Ok(("alice".into(), "origin.example".into())));
}

#[test]
fn a_local_part_with_equals_signs_survives() {
    let local = forward(KEY, "a=b=c", "origin.example", DAY);
    assert_eq!(reverse(&secrets(), &local, DAY + 1, 21), Ok(("a=b=c".into(), "origin.example".into())));
}

#[test]
fn timestamps_are_base32_days() {
    assert_eq!(timestamp(0), "AA");
    assert_eq!(timestamp(33), "BB");
    assert_eq!(timestamp(1023), "77");
    assert_eq!(timestamp(1024), "AA");
    assert_eq!(parse_timestamp("bb"), Some(33));
    assert_eq!(parse_timestamp("B1"), None);
}

#[test]
fn hash_compare_ignores_case_and_data_is_lower_cased() {
    let local = forward(KEY, "Alice", "Origin.Example", DAY);
    assert_eq!(reverse(&secrets(), &local.to_ascii_lowercase(), DAY, 21), Ok(("alice".into(), "origin.example".into())));
    assert_eq!(reverse(&secrets(), &local.to_ascii_uppercase(), DAY, 21), Ok(("ALICE".into(), "ORIGIN.EXAMPLE".into())));
}

#[test]
fn expiry_counts_days_across_the_wrap() {
    let local = forward(KEY, "alice", "origin.example", DAY);
    assert!(reverse(&secrets(), &local, DAY + 21, 21).is_ok());
    assert_eq!(reverse(&secrets(), &local, DAY + 22, 21), Err(SrsError::Expired(22)));
    // Day 1023 then day 1025 (slot 1): two days old, not a thousand.
    let old = forward(KEY, "alice", "origin.example", 1023);
    assert!(reverse(&secrets(), &old, 1025, 21).is_ok());
}

#[test]
fn forgery_and_other_secrets_are_refused() {
    let local = forward(KEY, "alice", "origin.example", DAY);
    // Another recipient under the same hash.
    let forged = local.replace("=alice", "=mallory");
    assert_eq!(reverse(&secrets(), &forged, DAY, 21), Err(SrsError::BadHash));
    // A made-up hash.
    let made_up = format!("SRS0=AAAA={}=origin.example=alice", timestamp(DAY));
    assert_eq!(reverse(&secrets(), &made_up, DAY, 21), Err(SrsError::BadHash));
    // Signed with another secret; accepted once that secret is listed.
    let other = forward(b"old secret", "alice", "origin.example", DAY);
    assert_eq!(reverse(&secrets(), &other, DAY, 21), Err(SrsError::BadHash));
    assert!(reverse(&[KEY.to_vec(), b"old secret".to_vec()], &other, DAY, 21).is_ok());
    // A changed timestamp breaks the hash.
    let parts: Vec<&str> = local.splitn(5, '=').collect();
    let shifted = format!("SRS0={}={}={}={}", parts[1], timestamp(DAY - 1), parts[3], parts[4]);
    assert_eq!(reverse(&secrets(), &shifted, DAY, 21), Err(SrsError::BadHash));
}

#[test]
fn malformed_and_plain_addresses() {
    assert_eq!(reverse(&secrets(), "alice", DAY, 21), Err(SrsError::NotSrs));
    assert_eq!(reverse(&secrets(), "SRS2=x", DAY, 21), Err(SrsError::NotSrs));
    assert!(matches!(reverse(&secrets(), "SRS0=abcd=AA=host", DAY, 21), Err(SrsError::Malformed(_))));
    assert!(matches!(reverse(&secrets(), "SRS0=abcd=!!=host=user", DAY, 21), Err(SrsError::Malformed(_))));
    assert!(matches!(reverse(&secrets(), "SRS1=abcd", DAY, 21), Err(SrsError::Malformed(_))));
    assert!(matches!(reverse(&secrets(), "SRS1=abcd=host=", DAY, 21), Err(SrsError::Malformed(_))));
}

#[test]
fn srs0_from_another_forwarder_becomes_srs1_and_reverses_to_it() {
    // fwd1.example rewrote alice's address; we forward it again.
    let first = forward(b"fwd1 secret", "alice", "origin.example", DAY);
    let local = forward(KEY, &first, "fwd1.example", DAY);
    assert!(local.starts_with("SRS1="), "{local}");
    assert!(local.contains("=fwd1.example==") && local.ends_with("=origin.example=alice"), "{local}");
    // A bounce to it goes back to fwd1's SRS0 address, unchanged.
    assert_eq!(reverse(&secrets(), &local, DAY + 100, 21), Ok((first.clone(), "fwd1.example".into())));
    // fwd1 can reverse what it gets back.
    assert_eq!(reverse(&[b"fwd1 secret".to_vec()], &first, DAY, 21), Ok(("alice".into(), "origin.example".into())));
    // Forged SRS1.
    let forged = local.replace("fwd1.example", "evil.example");
    assert_eq!(reverse(&secrets(), &forged, DAY, 21), Err(SrsError::BadHash));
}

#[test]
fn srs1_forwarded_again_keeps_the_first_forwarder() {
    let first = forward(b"fwd1 secret", "alice", "origin.example", DAY);
    let second = forward(b"fwd2 secret", &first, "fwd1.example", DAY);
    // fwd2's SRS1 reaches us from fwd2.example: still points at fwd1.
    let local = forward(KEY, &second, "fwd2.example", DAY);
    assert!(local.starts_with("SRS1=") && local.contains("=fwd1.example=="), "{local}");
    assert!(!local.contains("fwd2.example"), "{local}");
    assert_eq!(reverse(&secrets(), &local, DAY, 21), Ok((first, "fwd1.example".into())));
}
