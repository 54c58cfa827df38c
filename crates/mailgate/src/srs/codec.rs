//! The Sender Rewriting Scheme's address forms (Shevek's SRS paper, as
//! libsrs2 and Mail::SRS implement it), pure functions of the secrets and
//! the day:
//!
//! - `SRS0=HHHH=TT=orig-domain=orig-local@ours`: a sender we forward for.
//!   `TT` is the day (days since 1970, mod 1024) in two base32 digits;
//!   `HHHH` the first four base64 characters of HMAC-SHA1(secret, the
//!   lower-cased `TT`, `orig-domain` and `orig-local`).
//! - A sender that is already `SRS0...@host1` (mail a forwarder sent us)
//!   becomes `SRS1=HHHH=host1==HHHH=TT=...@ours`, hashed over `host1` and
//!   the rest, so a bounce goes back to host1, which holds the timestamp.
//!   An `SRS1` sender keeps its `host1` and rest, with our hash.
//!
//! Hashes compare without regard to case: some MTAs lower-case whole
//! addresses, and the hash is computed over lower-cased data for the same
//! reason. The separator after the tag may be `=`, `-` or `+` on input.
//!
//! May import: `ring` (HMAC-SHA1), `base64`. Nothing of mailgate.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

/// The base32 digits of the timestamp (RFC 4648's alphabet).
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Characters of base64 kept from the HMAC.
const HASH_LEN: usize = 4;
/// The timestamp counts days modulo this (two base32 digits).
const TIME_SLOTS: u64 = 1024;

/// Why an SRS address does not reverse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrsError {
    #[error("not an SRS address")]
    NotSrs,
    #[error("malformed SRS address: {0}")]
    Malformed(&'static str),
    #[error("the SRS hash does not match (forged or from another secret)")]
    BadHash,
    #[error("the SRS address expired ({0} days old)")]
    Expired(u64),
}

/// The timestamp of `day` (days since the Unix epoch).
pub fn timestamp(day: u64) -> String {
    let t = day % TIME_SLOTS;
    let hi = BASE32[((t >> 5) & 31) as usize] as char;
    let lo = BASE32[(t & 31) as usize] as char;
    format!("{hi}{lo}")
}

/// The day number (mod 1024) of a timestamp, any case.
fn parse_timestamp(tt: &str) -> Option<u64> {
    let b = tt.as_bytes();
    if b.len() != 2 {
        return None;
    }
    let digit = |c: u8| BASE32.iter().position(|&x| x == c.to_ascii_uppercase()).map(|p| p as u64);
    Some(digit(b[0])? << 5 | digit(b[1])?)
}

/// The hash of `parts` with `secret`.
pub fn hash(secret: &[u8], parts: &[&str]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p.to_ascii_lowercase().as_bytes());
    }
    let mut h = STANDARD.encode(ctx.sign().as_ref());
    h.truncate(HASH_LEN);
    h
}

/// Whether `given` is the hash of `parts` with one of `secrets`.
fn hash_ok(secrets: &[Vec<u8>], given: &str, parts: &[&str]) -> bool {
    // Case-insensitive, as the scheme allows; constant-time per secret.
    secrets.iter().any(|s| {
        let want = hash(s, parts);
        want.len() == given.len()
            && subtle::ConstantTimeEq::ct_eq(want.to_ascii_lowercase().as_bytes(), given.to_ascii_lowercase().as_bytes()).into()
    })
}

/// The tag (`SRS0` or `SRS1`, any case) and the rest after its separator.
fn split_tag(local: &str) -> Option<(u8, &str)> {
    let b = local.as_bytes();
    if b.len() < 5 || !b[..3].eq_ignore_ascii_case(b"SRS") || !b"=-+".contains(&b[4]) {
        return None;
    }
    match b[3] {
        b'0' => Some((0, &local[5..])),
        b'1' => Some((1, &local[5..])),
        _ => None,
    }
}

/// The SRS local part for mail from `local@domain` that we forward, on
/// `day`, signed with `secret`.
pub fn forward(secret: &[u8], local: &str, domain: &str, day: u64) -> String {
    match split_tag(local) {
        // Already SRS0 at a forwarder (domain): SRS1 pointing back at it.
        // `rest` keeps its leading separator: `SRS1=HHHH=host1==HHHH=TT=...`.
        Some((0, _)) => {
            let rest = &local[4..];
            format!("SRS1={}={domain}={rest}", hash(secret, &[domain, rest]))
        }
        // SRS1 from another forwarder: keep its first host and the rest.
        Some((1, rest)) => match rest.split_once('=') {
            Some((_hash, tail)) => match tail.split_once('=') {
                // `srs0_rest` starts with the separator of the `==`.
                Some((host1, srs0_rest)) if !host1.is_empty() && srs0_rest.len() > 1 => {
                    format!("SRS1={}={host1}={srs0_rest}", hash(secret, &[host1, srs0_rest]))
                }
                _ => srs0(secret, local, domain, day),
            },
            None => srs0(secret, local, domain, day),
        },
        _ => srs0(secret, local, domain, day),
    }
}

fn srs0(secret: &[u8], local: &str, domain: &str, day: u64) -> String {
    let tt = timestamp(day);
    format!("SRS0={}={tt}={domain}={local}", hash(secret, &[&tt, domain, local]))
}

/// The address an SRS local part stands for, as (local, domain): the
/// original sender for SRS0, the first forwarder's SRS0 address for SRS1.
/// Checks the hash against every secret and SRS0's age on `today`.
pub fn reverse(secrets: &[Vec<u8>], local: &str, today: u64, max_age_days: u64) -> Result<(String, String), SrsError> {
    let (tag, rest) = split_tag(local).ok_or(SrsError::NotSrs)?;
    if tag == 0 {
        let mut parts = rest.splitn(4, '=');
        let (Some(h), Some(tt), Some(host), Some(user)) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(SrsError::Malformed("SRS0 needs a hash, a timestamp, a domain and a local part"));
        };
        if host.is_empty() || user.is_empty() {
            return Err(SrsError::Malformed("SRS0 with an empty domain or local part"));
        }
        let day = parse_timestamp(tt).ok_or(SrsError::Malformed("SRS0 timestamp is not two base32 digits"))?;
        if !hash_ok(secrets, h, &[tt, host, user]) {
            return Err(SrsError::BadHash);
        }
        // Checked after the hash: an unsigned timestamp means nothing.
        let age = (today % TIME_SLOTS + TIME_SLOTS - day) % TIME_SLOTS;
        if age > max_age_days {
            return Err(SrsError::Expired(age));
        }
        Ok((user.to_string(), host.to_string()))
    } else {
        let (h, tail) = rest.split_once('=').ok_or(SrsError::Malformed("SRS1 needs a hash"))?;
        let (host1, srs0_rest) = tail.split_once('=').ok_or(SrsError::Malformed("SRS1 needs a forwarder domain"))?;
        // `srs0_rest` starts with the separator of the `==`.
        if host1.is_empty() || srs0_rest.len() < 2 {
            return Err(SrsError::Malformed("SRS1 with an empty domain or address"));
        }
        if !hash_ok(secrets, h, &[host1, srs0_rest]) {
            return Err(SrsError::BadHash);
        }
        Ok((format!("SRS0{srs0_rest}"), host1.to_string()))
    }
}

#[cfg(test)]
mod tests;
