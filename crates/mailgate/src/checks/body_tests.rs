//! The streamed body hashes against RFC 6376 §3.4 applied line by line to
//! the whole body (and against hand-computed canonical forms), split and
//! chunked every way.

use std::io::Write;
use std::path::Path;

use mail_auth::AuthenticatedMessage;
use rand::{Rng, SeedableRng};

use super::*;

fn dkim_testdata() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/checks/dkim/testdata");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "eml") {
            out.push(std::fs::read(path).unwrap());
        }
    }
    let rfc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/dkim/rfc8463");
    out.push(std::fs::read(rfc.join("signed.eml")).unwrap());
    out.push(std::fs::read(rfc.join("unsigned.eml")).unwrap());
    assert!(out.len() >= 6, "DKIM test messages missing");
    out
}

/// DKIM-Signature fields asking for every (c, a, l) there is: both body
/// canonicalizations, sha1 and sha256, whole body and `l=` cuts.
fn signature_fields(body_len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in ["simple", "relaxed"] {
        for a in ["rsa-sha1", "rsa-sha256"] {
            for l in [None, Some(0), Some(1), Some(body_len / 2), Some(body_len), Some(body_len + 7)] {
                let l = l.map(|l| format!(" l={l};")).unwrap_or_default();
                out.extend_from_slice(
                    format!("DKIM-Signature: v=1; a={a}; c=relaxed/{c}; d=x.test; s=s; h=from;{l} bh=AAAA; b=AAAA\r\n").as_bytes(),
                );
            }
        }
    }
    out
}

/// The message with signature fields asking for every lane on top.
fn with_all_lanes(message: &[u8]) -> Vec<u8> {
    let body = header_end(message).map_or(0, |n| message.len() - n);
    [signature_fields(body).as_slice(), message].concat()
}

/// RFC 6376 §3.4.3/§3.4.4 as written, line by line, on a body held whole
/// (lines end at CRLF only), then cut at `l` canonical octets (§3.4.5; 0:
/// all).
fn reference(body: &[u8], c: Canonicalization, l: u64) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (line, next) = match rest.windows(2).position(|w| w == b"\r\n") {
            Some(p) => (&rest[..p], &rest[p + 2..]),
            None => (rest, &rest[rest.len()..]),
        };
        let line = match c {
            Canonicalization::Simple => line.to_vec(),
            Canonicalization::Relaxed => {
                // Reduce WSP runs to one SP, then drop the one at the end.
                let mut l = Vec::new();
                for &b in line {
                    let wsp = b == b' ' || b == b'\t';
                    if !(wsp && l.last() == Some(&b' ')) {
                        l.push(if wsp { b' ' } else { b });
                    }
                }
                if l.last() == Some(&b' ') {
                    l.pop();
                }
                l
            }
        };
        lines.push(line);
        rest = next;
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut out: Vec<u8> = lines.iter().flat_map(|l| [l.as_slice(), b"\r\n"].concat()).collect();
    if out.is_empty() && c == Canonicalization::Simple {
        out.extend_from_slice(b"\r\n");
    }
    if l > 0 {
        out.truncate(usize::try_from(l).unwrap_or(usize::MAX));
    }
    out
}

fn hash(h: HashAlgorithm, data: &[u8]) -> Vec<u8> {
    let alg = match h {
        HashAlgorithm::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        HashAlgorithm::Sha256 => &ring::digest::SHA256,
    };
    ring::digest::digest(alg, data).as_ref().to_vec()
}

/// The reference hashes of every lane `whole`'s signatures ask for.
fn reference_hashes(whole: &[u8]) -> BodyHashes {
    let body = &whole[header_end(whole).unwrap_or(whole.len())..];
    let lanes = AuthenticatedMessage::parse_with_opts(whole, None, false).expect("parses").body_hashes;
    lanes.into_iter().map(|(c, h, l, _)| (c, h, l, hash(h, &reference(body, c, l)))).collect()
}

/// The streamed hashes: the header block parsed alone, the body split at
/// `at` (the part before it handed over as the prefix) and fed in chunks
/// of `chunk` octets.
fn streamed(whole: &[u8], at: usize, chunk: usize) -> (BodyDigest, BodyHashes) {
    let whole = Arc::new(whole.to_vec());
    let (n, _) = Body::split(&whole);
    let header = &whole[..n];
    let mut msg = AuthenticatedMessage::parse_with_opts(header, None, false).expect("header parses");
    let mut prefix = header.get(msg.body_offset()..).unwrap_or_default().to_vec();
    let at = (n + at).min(whole.len());
    prefix.extend_from_slice(&whole[n..at]);
    let body = Body::Memory { data: Arc::clone(&whole), start: at };
    let lanes = lanes(&msg, &[]);
    let d = digest_sized(&prefix, &body, &lanes, chunk).unwrap();
    d.apply(&mut msg);
    (d, msg.body_hashes)
}

/// Every lane the signatures ask for, streamed, is the reference hash.
fn assert_parity(whole: &[u8], at: usize, chunk: usize) {
    let want = reference_hashes(whole);
    assert!(!want.is_empty());
    let (_, got) = streamed(whole, at, chunk);
    for w in &want {
        assert!(got.contains(w), "lane {:?} {:?} l={} differs (split at {at}, chunks of {chunk})", w.0, w.1, w.2);
    }
}

#[test]
fn testdata_and_rfc8463_messages_hash_as_the_rfc_says() {
    for message in dkim_testdata() {
        let whole = with_all_lanes(&message);
        let body = whole.len() - header_end(&whole).unwrap();
        for chunk in [1, 2, 3, 5, 64, CHUNK] {
            assert_parity(&whole, 0, chunk);
        }
        for at in 0..=body {
            assert_parity(&whole, at, CHUNK);
        }
        // The messages' own signatures parsed strictly, as the checker
        // does: real bodies, on which mail-auth's own hasher is right too.
        let (_, got) = streamed(&message, 0, 7);
        for w in AuthenticatedMessage::parse(&message).unwrap().body_hashes {
            assert!(got.contains(&w));
        }
    }
}

/// Bodies made of the octets canonicalization cares about.
fn generated_body(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    let alphabet: &[&[u8]] =
        &[b" ", b"\t", b"\r\n", b"\r\n\r\n\r\n", b"\r", b"\n", b"word", b"x", b" \t \r\n", b"\t\r\n", b"  ", b".", b"\r\n "];
    let mut body = Vec::new();
    for _ in 0..rng.random_range(0..60) {
        body.extend_from_slice(alphabet[rng.random_range(0..alphabet.len())]);
    }
    match rng.random_range(0..4) {
        0 => body.extend_from_slice(b"\r\n"),
        1 => body.extend_from_slice(&b"\r\n".repeat(rng.random_range(2..6))),
        2 => body.extend_from_slice(b"no final line break \t "),
        _ => {}
    }
    body
}

#[test]
fn generated_bodies_hash_as_the_rfc_says_split_anywhere() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..300 {
        let body = generated_body(&mut rng);
        let message = [b"From: a@x.test\r\nSubject: s\r\n\r\n".as_slice(), &body].concat();
        let whole = with_all_lanes(&message);
        // Every two-piece split, then one-octet chunks, then random ones.
        for at in 0..=body.len() {
            assert_parity(&whole, at, CHUNK);
        }
        assert_parity(&whole, 0, 1);
        for _ in 0..8 {
            assert_parity(&whole, rng.random_range(0..=body.len()), rng.random_range(1..=body.len().max(1)));
        }
    }
}

#[test]
fn length_facts_match_the_whole_body() {
    let message = b"From: a@x.test\r\n\r\nline  one \r\n\r\n\t\r\nend\r\n\r\n\r\n";
    let whole = with_all_lanes(message);
    let (d, _) = streamed(&whole, 3, 2);
    let body = &message[header_end(message).unwrap()..];
    assert_eq!(d.len, body.len() as u64);
    for c in [Canonicalization::Simple, Canonicalization::Relaxed] {
        for l in [0, 1, body.len() as u64 / 2, body.len() as u64] {
            let want = reference(body, c, l).len() as u64;
            assert_eq!(d.canonical_len(c, l), Some(want), "{c:?} l={l}");
            assert_eq!(canonical_len(c, body, l), want, "{c:?} l={l}");
        }
    }
}

/// Bodies whose canonical forms were worked out by hand from RFC 6376
/// §3.4.3/§3.4.4: (body, simple, relaxed). The first four are the bodies
/// mail-auth 0.13's relaxed hasher got wrong (dkimpy and the RFC agree).
const CANONICAL_TABLE: &[(&[u8], &[u8], &[u8])] = &[
    (b"Hello.\r\n \r\n\r\n", b"Hello.\r\n \r\n", b"Hello.\r\n"),
    (b"Hello.\r\n\t\r\n\r\n\r\n", b"Hello.\r\n\t\r\n", b"Hello.\r\n"),
    (b"\t\r\n\r\n\r\n", b"\t\r\n", b""),
    (b" \r\n", b" \r\n", b""),
    (b"Hello.\r\n", b"Hello.\r\n", b"Hello.\r\n"),
    (b"Hello. \t\r\n\r\n", b"Hello. \t\r\n", b"Hello.\r\n"),
    (b"", b"\r\n", b""),
    (b"\r\n\r\n\r\n", b"\r\n", b""),
    (b" a  b\t\r\n \t\r\nc\r\n  \r\n", b" a  b\t\r\n \t\r\nc\r\n  \r\n", b" a b\r\n\r\nc\r\n"),
    (b"no final CRLF \t", b"no final CRLF \t\r\n", b"no final CRLF\r\n"),
];

#[test]
fn canonical_table_simple_and_relaxed_with_and_without_l() {
    for &(body, simple, relaxed) in CANONICAL_TABLE {
        let message = [b"From: a@x.test\r\n\r\n".as_slice(), body].concat();
        for (c, canonical) in [(Canonicalization::Simple, simple), (Canonicalization::Relaxed, relaxed)] {
            assert_eq!(reference(body, c, 0), canonical, "reference {c:?} {body:?}");
            // Without l=, with l= the whole canonical body (what dkimpy
            // signs with length=True), and with l= cutting it short.
            let ls = [0, canonical.len() as u64, (canonical.len() as u64).saturating_sub(3).max(1)];
            let lanes: Vec<Lane> = ls.iter().flat_map(|&l| [(c, HashAlgorithm::Sha256, l), (c, HashAlgorithm::Sha1, l)]).collect();
            let whole = Arc::new(message.clone());
            let (n, streamed_body) = Body::split(&whole);
            assert_eq!(n, 18);
            for chunk in [1, 2, 5, CHUNK] {
                let d = digest_sized(b"", &streamed_body, &lanes, chunk).unwrap();
                for &l in &ls {
                    let cut = if l == 0 { canonical } else { &canonical[..canonical.len().min(l as usize)] };
                    for h in [HashAlgorithm::Sha256, HashAlgorithm::Sha1] {
                        let got = d.hashes.iter().find(|x| x.0 == c && x.1 == h && x.2 == l).map(|x| x.3.clone());
                        assert_eq!(got, Some(hash(h, cut)), "{c:?} {h:?} l={l} chunk {chunk} body {body:?}");
                    }
                    assert_eq!(d.canonical_len(c, l), Some(cut.len() as u64), "{c:?} l={l} {body:?}");
                }
            }
        }
    }
}

#[test]
fn a_file_body_is_the_same_as_a_memory_body() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut file = tempfile::tempfile().unwrap();
    let junk = b"JUNK BEFORE\r\n  \r\n";
    let mut body = Vec::new();
    while body.len() < 3 * CHUNK + 123 {
        body.extend(generated_body(&mut rng));
    }
    file.write_all(junk).unwrap();
    file.write_all(&body).unwrap();
    file.write_all(b"JUNK AFTER \r\n").unwrap();
    let lanes: Vec<Lane> = [Canonicalization::Simple, Canonicalization::Relaxed]
        .into_iter()
        .flat_map(|c| [(c, HashAlgorithm::Sha256, 0), (c, HashAlgorithm::Sha1, 0), (c, HashAlgorithm::Sha256, 1000)])
        .collect();
    let on_disk = Body::File { file: Arc::new(file), start: junk.len() as u64, len: body.len() as u64 };
    let in_memory = Body::Memory { data: Arc::new([b"head\r\n\r\n".as_slice(), &body].concat()), start: 8 };
    assert_eq!(on_disk.len(), in_memory.len());
    for chunk in [1000, CHUNK] {
        let a = digest_sized(b"", &on_disk, &lanes, chunk).unwrap();
        let b = digest_sized(b"", &in_memory, &lanes, CHUNK).unwrap();
        assert_eq!(a.hashes, b.hashes);
        assert_eq!(a.len, body.len() as u64);
    }
    let mut seen = 0;
    on_disk
        .for_each_chunk(|c| {
            assert!(c.len() <= CHUNK);
            seen += c.len();
        })
        .unwrap();
    assert_eq!(seen, body.len());
    // A file shorter than it claims is an error, not a panic.
    let short = Body::File { file: Arc::new(tempfile::tempfile().unwrap()), start: 0, len: 10 };
    assert!(digest(b"", &short, &lanes).is_err());
}

#[test]
fn header_end_and_split() {
    assert_eq!(header_end(b"A: b\r\n\r\nbody\r\n\r\n"), Some(8));
    assert_eq!(header_end(b"\r\nbody"), Some(2));
    assert_eq!(header_end(b"A: b\r\nC: d\r\n"), None);
    let whole = Arc::new(b"A: b\r\n\r\nbody".to_vec());
    let (n, body) = Body::split(&whole);
    assert_eq!((n, body.len()), (8, 4));
    let whole = Arc::new(b"A: b\r\n".to_vec());
    let (n, body) = Body::split(&whole);
    assert_eq!((n, body.len()), (6, 0));
}
